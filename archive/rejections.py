"""Kinds of rejection: every refusal reason (screening, validity, LLM answer parsing) maps to a short kind,
so that reports count "g increasing: 14" instead of fourteen messages that differ in their probe values."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

# (kind, pattern), first match wins; patterns see the reason without its "objective N: " / "invalid: " prefix
KINDS: tuple[tuple[str, str], ...] = (
    ("duplicate behaviour", r"^duplicate .*same gradients"),
    ("duplicate", r"^duplicate"),
    ("label-blind", r"^label-blind"),
    ("loss not finite", r"^loss is not finite"),
    ("gradient not finite", r"^gradient .*not finite"),
    ("phi_inv not finite", r"^phi_inv\(u\) or its derivative is not finite"),
    ("phi_inv not increasing", r"^phi_inv (must be increasing|is constant)"),
    ("g increasing", r"^g must be non-increasing"),
    ("non-monotone in logp_w", r"^the loss increases with logp_w"),
    ("non-monotone in logp_l", r"^the loss decreases with logp_l"),
    ("policy not used", r"does not depend on the policy"),
    ("descriptor undefined", r"^descriptor"),
    ("not encodable", r"^not encodable"),
    ("too complex", r"^complexity .* exceeds"),
    ("too many proposals", r"^beyond the limit"),
    ("bad constant", r"^(unknown constant|constant )"),
    ("parse error", r"^(phi_inv|psi|g|imitation|loss): "),
    ("malformed proposal", r"^(must be a JSON object|'shape'|unknown key|missing '|'rationale'|cannot tell)"),
    ("unusable answer", r"^(empty answer|no JSON object|malformed JSON|the answer|unknown top-level|missing key"
                        r"|'objectives'|answer is)"),
)
_PREFIX = re.compile(r"^(objectives? [\d-]+: )?(invalid: )?")
_COMPILED = tuple((kind, re.compile(pattern)) for kind, pattern in KINDS)


def rejection_kind(reason: str) -> str:
    """The kind of a rejection reason; an unknown reason's kind is its first words."""
    text = _PREFIX.sub("", " ".join((reason.strip().splitlines() or [""])[0].split()))
    for kind, pattern in _COMPILED:
        if pattern.search(text):
            return kind
    return re.split(r"[:;,(\d'\"]", text, maxsplit=1)[0].strip() or "other"


@dataclass(frozen=True)
class RejectionGroup:
    kind: str
    count: int
    example: str  # the latest reason of this kind, whole
    snippet: str  # what was refused, for that example
    sources: tuple[str, ...]  # proposers that produced this kind (gp, es, llm, ...)


def group_rejections(rows: Iterable[tuple[str, str, str]]) -> list[RejectionGroup]:
    """(source, reason, snippet) rows, oldest first -> groups by kind, most frequent first."""
    counts: dict[str, int] = {}
    latest: dict[str, tuple[str, str]] = {}
    sources: dict[str, set[str]] = {}
    for source, reason, snippet in rows:
        kind = rejection_kind(reason)
        counts[kind] = counts.get(kind, 0) + 1
        latest[kind] = (reason, snippet)
        sources.setdefault(kind, set()).add(source)
    return [RejectionGroup(k, n, *latest[k], tuple(sorted(sources[k])))
            for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
