"""MPO Discover archive: everything a search found, and the quality-diversity view of it.

    store        ArchiveStore: the SQLite file (runs, candidates, scores, LLM exchanges, resume state)
    qd           QDArchive (MAP-Elites grid) and HallOfFame (per-complexity Pareto front), rebuilt from
                 the store
    descriptors  behavioural descriptors of a loss: the grid's axes
    plots        PNG figures: heat map, fitness over time, loss shape
    rejections   kinds of rejection reason, and refusals grouped by kind
"""
import evaluators  # noqa: F401  (pins XLA's CPU target: evaluators/xla_target.py)
from archive.qd import AddStatus, DescriptorSpec, Elite, HallOfFame, QDArchive
from archive.store import ArchiveError, ArchiveStore

__all__ = ["AddStatus", "ArchiveError", "ArchiveStore", "DescriptorSpec", "Elite", "HallOfFame", "QDArchive"]
