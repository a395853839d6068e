"""Render the LLM proposer's prompt from a versioned template in `prompts/`.

A template holds two sections, each opened by a marker line: `=== system ===` (the system message) and
`=== user ===` (the user message), with `string.Template` placeholders.  The grammar and constraints
sections are generated from `grammar.language` (operators with their safe domains, variables, constants
with defaults and ranges, parser limits) at render time, so the prompt never drifts from what the parser
accepts.  The context (elites, inspirations, rejection reasons, the best baseline) comes from the archive
through `PromptContext`.  Rendering is a pure function of (context, version, n_wanted): the same context
gives the same text, byte for byte (descriptors are listed in name order, numbers printed with a fixed
format), which is what lets a run be replayed from its stored exchanges.
"""
from __future__ import annotations

import json
import math
import numbers
import re
import string
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Sequence

import prompts
from discovery.llm_parse import MAX_OBJECTIVES
from discovery.text import printable
from grammar.language import (
    CONSTANTS, MAX_LITERAL, OPERATORS, PART_NAMES, POW_LIMIT, SIDE_NAMES, VARIABLE_DOCS,
)
from grammar.objective import Objective
from grammar.parser import MAX_DEPTH, MAX_NODES, MAX_TEXT_CHARS
from grammar.probes import LENGTH_RANGE, LOGP_MEAN_RANGE, LOGP_SUM_RANGE

PROMPT_VERSION = "propose_v1"
DEFAULT_N_WANTED = 4
MAX_ENTRIES = 10  # elites and inspirations shown
MAX_REJECTIONS = 12  # rejection lines shown, the most recent
MAX_LINE_CHARS = 300
_SECTION = re.compile(r"^=== (system|user) ===[ \t]*$", re.MULTILINE)

_PART_HEADINGS = {
    "phi_inv": "phi_inv (mpo)", "psi": "psi (mpo)", "g": "g (mpo)", "imitation": "imitation (mpo)",
    "loss": "loss (free)",
}
_NAME_DOCS = {
    "u": "the log-likelihood phi_inv is applied to",
    "z": "the reward margin psi_w - psi_l",
    **{n: f"one segment's {n} ({n}_w or {n}_l, see below)" for n in SIDE_NAMES},
}


@dataclass(frozen=True)
class PromptContext:
    """What the archive tells the LLM.

    elites / inspirations: mappings with `formula` (grammar text, an `Objective` or its `to_dict()`),
    `fitness` (mean normalised return), `ci` (half-width, or a (low, high) pair), `descriptors`
    (name -> value) and optionally `name`.  rejections: recent reasons, as text or (snippet, reason)
    (the search passes a few grouped kinds per proposer).
    best_baseline: (name, score).  n_wanted: objectives asked for (None: the proposer's default).
    """

    task: str
    dataset: str
    elites: Sequence[Mapping[str, Any]] = ()
    inspirations: Sequence[Mapping[str, Any]] = ()
    rejections: Sequence[str | tuple[str, str]] = ()
    best_baseline: tuple[str, float] | None = None
    n_wanted: int | None = None
    max_complexity: float | None = None


class RenderedPrompt(NamedTuple):
    version: str
    system: str
    prompt: str


def render_prompt(context: PromptContext, version: str = PROMPT_VERSION, *,
                  n_wanted: int | None = None) -> RenderedPrompt:
    """The system and user messages for `context` with the template `prompts/<version>.md`.
    `n_wanted` is used when the context does not set it (default `DEFAULT_N_WANTED`)."""
    n_wanted = max(1, int(context.n_wanted or n_wanted or DEFAULT_N_WANTED))
    values = {
        "version": version,
        "task": _line(context.task),
        "dataset": _line(context.dataset),
        "grammar": grammar_section(),
        "constraints": constraints_section(n_wanted, context.max_complexity),
        "elites": _entries(context.elites),
        "inspirations": _entries(context.inspirations),
        "rejections": _rejections(context.rejections),
        "baseline": _baseline(context.best_baseline),
        "n_wanted": str(min(n_wanted, MAX_OBJECTIVES)),
    }
    system, user = split_template(prompts.load(version), version)
    try:
        return RenderedPrompt(version, string.Template(system).substitute(values).strip(),
                              string.Template(user).substitute(values).strip() + "\n")
    except (KeyError, ValueError) as e:
        raise ValueError(f"prompt template {version!r} is broken: {type(e).__name__}: {e}") from None


def split_template(text: str, version: str = "?") -> tuple[str, str]:
    """(system, user) sections of a template."""
    marks = list(_SECTION.finditer(text))
    if [m.group(1) for m in marks] != ["system", "user"] or text[:marks[0].start()].strip():
        raise ValueError(f"prompt template {version!r} is broken: it must hold a '=== system ===' line "
                         f"then a '=== user ===' line, with nothing before the first")
    return text[marks[0].end():marks[1].start()], text[marks[1].end():]


def grammar_section() -> str:
    """Operators, names per part, variables and constants, from the `grammar.language` tables."""
    lines = ["Operators (nothing else can be written or called):"]
    for op in OPERATORS.values():
        lines.append(f"- `{_usage(op.name, op.arity)}`: {op.domain}")
    lines += ["", "Names each part may use (besides the constants):"]
    for part, names in PART_NAMES.items():
        lines.append(f"- {_PART_HEADINGS.get(part, part)}: {', '.join(names)}")
    lines += ["", "Names:"]
    lines += [f"- {n}: {doc}" for n, doc in _NAME_DOCS.items()]
    lines += [f"- {n}: {doc}" for n, doc in VARIABLE_DOCS.items()]
    lines += ["", "Named constants (usable in every part; value default, range [low, high]):"]
    lines += [f"- {c.name}: default {c.default:g}, range [{c.low:g}, {c.high:g}]; {c.doc}" for c in CONSTANTS]
    return "\n".join(lines)


def constraints_section(n_wanted: int, max_complexity: float | None = None) -> str:
    lines = [
        f"- Each expression: at most {MAX_TEXT_CHARS} characters, {MAX_NODES} nodes and nesting depth "
        f"{MAX_DEPTH}; numeric literals within +-{MAX_LITERAL:g}; exponents are a numeric literal or a "
        f"named constant within [-{POW_LIMIT:g}, {POW_LIMIT:g}].",
        "- No other functions, attributes, subscripts, strings, comparisons or lambdas: the text is parsed "
        "by a whitelist, never executed.",
        "- phi_inv must be increasing in u; g must be non-increasing in z; the whole loss must not increase "
        "when logp_w rises or when logp_l falls; the policy (logp_w / logp_l) must enter the loss.",
        f"- Loss and gradient must be finite on all data: log-likelihood sums in [{LOGP_SUM_RANGE[0]:g}, "
        f"{LOGP_SUM_RANGE[1]:g}], per-step means in [{LOGP_MEAN_RANGE[0]:g}, {LOGP_MEAN_RANGE[1]:g}], "
        f"lengths {LENGTH_RANGE[0]}..{LENGTH_RANGE[1]}, t in [0, 1].",
    ]
    if max_complexity is not None:
        lines.append(f"- Complexity (operator-weighted node count of the whole loss) at most {max_complexity:g}.")
    lines.append(f"- At most {min(n_wanted, MAX_OBJECTIVES)} objectives.")
    return "\n".join(lines)


def objective_json(objective: Objective) -> str:
    """An objective in the answer format (what the LLM is asked to write)."""
    data = {"shape": objective.shape, **objective.to_dict()["parts"]}
    if objective.constants:
        data["constants"] = {k: float(f"{v:.6g}") for k, v in objective.constants.items()}
    return json.dumps(data, ensure_ascii=False)


def _usage(name: str, arity: int) -> str:
    if name == "neg":
        return "-a"
    if not name.isidentifier():
        return f"a {name} b"
    return f"{name}({'a, b' if arity == 2 else 'x'})"


def _formula(value: Any) -> str:
    if isinstance(value, Objective):
        return objective_json(value)
    if isinstance(value, Mapping) and "parts" in value:
        try:
            return objective_json(Objective.from_dict(value))
        except (ValueError, KeyError, TypeError):
            pass
    return _line(str(value), 2 * MAX_LINE_CHARS)


def _number(x: Any) -> str:
    if isinstance(x, numbers.Real) and not isinstance(x, bool):
        x = float(x)
        return f"{x:.4g}" if math.isfinite(x) else str(x)
    return _line(str(x), 40)


def _entries(entries: Sequence[Mapping[str, Any]]) -> str:
    if not entries:
        return "(none yet)"
    lines = []
    for i, e in enumerate(list(entries)[:MAX_ENTRIES], 1):
        head = f"{i}."
        if e.get("name"):
            head += f" {_line(str(e['name']), 60)}"
        if e.get("fitness") is not None:
            head += f" fitness {_number(e['fitness'])}"
            ci = e.get("ci")
            if isinstance(ci, (tuple, list)) and len(ci) == 2:
                head += f" (CI [{_number(ci[0])}, {_number(ci[1])}])"
            elif ci is not None:
                head += f" ± {_number(ci)}"
        if e.get("descriptors"):
            head += " | " + ", ".join(f"{_line(str(k), 40)}={_number(v)}"
                                      for k, v in sorted(dict(e["descriptors"]).items(), key=lambda kv: str(kv[0])))
        lines += [head, f"   {_formula(e.get('formula', ''))}"]
    return "\n".join(lines)


def _rejections(rejections: Sequence[str | tuple[str, str]]) -> str:
    if not rejections:
        return "(none)"
    lines: list[str] = []
    for r in reversed(list(rejections)):  # the most recent first, each distinct line once
        text = f"{r[0]} -> {r[1]}" if isinstance(r, (tuple, list)) and len(r) == 2 else str(r)
        line = f"- {_line(text)}"
        if line not in lines:
            lines.append(line)
        if len(lines) == MAX_REJECTIONS:
            break
    return "\n".join(reversed(lines))


def _baseline(best: tuple[str, float] | None) -> str:
    if best is None:
        return "(not measured yet)"
    name, score = best
    return f"{_line(str(name), 60)}, fitness {_number(score)}"


def _line(text: str, limit: int = MAX_LINE_CHARS) -> str:
    text = " ".join(printable(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
