"""Proposers (emitters, in pyribs' words): one module each, registered by name for the scheduler.

`base` defines the protocol (`Proposer.ask/tell` with explicit JSON state) and the read-only
`ArchiveView`; `zoo` makes generation 0; `gp`, `es` and `llm` are scheduled by their weights.
"""

from discovery.proposers import gp, es, llm  # noqa: F401, I001 - registers them, in this order
from discovery.proposers.base import REGISTRY, ArchiveView, Asked, Proposed, Proposer, register
from discovery.proposers.zoo import ZooProposer

__all__ = ["REGISTRY", "ArchiveView", "Asked", "Proposed", "Proposer", "ZooProposer", "register"]
