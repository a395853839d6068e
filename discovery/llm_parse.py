"""Parse an LLM answer into grammar `Objective`s, with a precise reason for everything rejected.

The answer should hold one JSON object `{"objectives": [...]}` (see `prompts/propose_v1.md`); one bare
objective object, or a bare list of them, is accepted too, and `read_answer` says which layout arrived
(`ANSWER_SHAPES`).  An objective without "shape" takes it from its keys ("loss": free, else mpo).  A ```json
fence or prose around the JSON is tolerated; nothing is repaired (no trailing commas, quotes or Python
literals).  Every expression goes through the grammar's safe parser (`grammar.parser.parse`), never
eval/exec/sympify, then through `grammar.validity.check`.  Before that, a syntax-only screen (`ast`, nothing
evaluated) rejects numeric sub-expressions whose exact value would have more than `MAX_NUMBER_DIGITS`
digits: sympy folds numbers exactly while building the tree, so `((999999**4)**4)...**4` would otherwise
take minutes and gigabytes inside the parser.  Nothing here raises on bad LLM output: each problem becomes
a `(snippet, reason)` rejection.
"""
from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass
from typing import Any, NamedTuple

import sympy

from grammar.canonical import complexity
from grammar.language import CONSTANTS_BY_NAME, POW_LIMIT, GrammarError
from grammar.objective import MPO_PARTS, Objective
from grammar.parser import MAX_DEPTH, MAX_TEXT_CHARS, parse
from grammar.validity import check
from discovery.text import printable

MAX_ANSWER_CHARS = 100_000
MAX_OBJECTIVES = 16  # per answer; the rest are rejected
MAX_RATIONALE_CHARS = 500
SNIPPET_CHARS = 160
MAX_NUMBER_DIGITS = 1000  # bound on the digits of any number sympy would fold while parsing an expression
MAX_JSON_STARTS = 20  # places in the answer where the JSON object is looked for
REQUIRED = {"mpo": ("g",), "free": ("loss",)}  # phi_inv, psi, imitation default as in `Objective.mpo`
EXPRESSION_KEYS = {"mpo": MPO_PARTS, "free": ("loss",)}
OTHER_KEYS = ("shape", "constants", "rationale", "name")  # a proposal's own name is not used
ANSWER_SHAPES = ("wrapper", "bare", "list")  # {"objectives": [...]}, one objective object, [objective, ...]

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_-]*)[ \t]*\n(.*?)```", re.DOTALL)
_OBJECT_START = re.compile(r'\{\s*"(objectives|shape|name|loss|%s)"\s*:' % "|".join(MPO_PARTS))

Rejection = tuple[str, str]  # (snippet of the offending text, reason)


@dataclass(frozen=True)
class ParsedObjective:
    """An objective read from an LLM answer, with the rationale the model gave for it."""

    objective: Objective
    rationale: str


class ParsedAnswer(NamedTuple):
    candidates: list[ParsedObjective]
    rejections: list[Rejection]
    shape: str | None  # one of ANSWER_SHAPES, None when no JSON of any of them was found


class _Reject(Exception):
    pass


class _ExtraData(_Reject):
    def __init__(self, message: str, data: Any):
        super().__init__(message)
        self.data = data


def parse_answer(text: str, *, name_prefix: str = "llm", max_complexity: float | None = None,
                 validate: bool = True) -> tuple[list[Objective], list[Rejection]]:
    """Objectives proposed in an LLM answer, and `(snippet, reason)` for each one (or the whole answer)
    rejected.  Objectives are named `{name_prefix}-{i}` (i: 1-based position in the answer)."""
    candidates, rejections = parse_candidates(text, name_prefix=name_prefix, max_complexity=max_complexity,
                                              validate=validate)
    return [c.objective for c in candidates], rejections


def parse_candidates(text: str, *, name_prefix: str = "llm", max_complexity: float | None = None,
                     validate: bool = True) -> tuple[list[ParsedObjective], list[Rejection]]:
    """As `parse_answer`, keeping each objective's rationale."""
    return read_answer(text, name_prefix=name_prefix, max_complexity=max_complexity, validate=validate)[:2]


def read_answer(text: str, *, name_prefix: str = "llm", max_complexity: float | None = None,
                validate: bool = True) -> ParsedAnswer:
    """As `parse_candidates`, and the layout the answer came in."""
    try:
        items, shape = _objective_items(text)
    except _Reject as e:
        return ParsedAnswer([], [(_snippet(text), str(e))], None)
    except Exception as e:  # noqa: BLE001 - a bad answer must never crash the search
        return ParsedAnswer([], [(_snippet(text), f"internal error reading the answer: {type(e).__name__}: {e}")],
                            None)
    candidates, rejections = [], []
    for i, item in enumerate(items, 1):
        if i > MAX_OBJECTIVES:
            rejections.append((_snippet(item), f"objectives {i}-{len(items)}: beyond the limit of {MAX_OBJECTIVES} "
                                               f"objectives per answer"))
            break
        try:
            candidates.append(_candidate(item, f"{name_prefix}-{i}", max_complexity, validate))
        except _Reject as e:
            rejections.append((_snippet(item), f"objective {i}: {e}"))
        except Exception as e:  # noqa: BLE001 - a bad answer must never crash the search
            rejections.append((_snippet(item), f"objective {i}: internal error: {type(e).__name__}: {e}"))
    return ParsedAnswer(candidates, rejections, shape)


# ---------------------------------------------------------------------------------------- the JSON
def _objective_items(text: Any) -> tuple[list, str]:
    if not isinstance(text, str):
        raise _Reject(f"the answer is not text but {type(text).__name__}")
    if not text.strip():
        raise _Reject("empty answer")
    if len(text) > MAX_ANSWER_CHARS:  # the same words for a capped stored answer: replay gives the same reason
        raise _Reject(f"answer is longer than the limit of {MAX_ANSWER_CHARS} characters")
    data = _load_answer(text)
    if isinstance(data, list) and _is_answer(data):
        return data, "list"
    if not isinstance(data, dict):
        raise _Reject(f"the answer must be a JSON object {{\"objectives\": [...]}}, got {_kind(data)}")
    if "objectives" not in data and _looks_like_objective(data):
        return [data], "bare"
    unknown = sorted(set(data) - {"objectives"})
    if unknown:
        raise _Reject(f"unknown top-level key(s) {', '.join(map(repr, unknown))}; only 'objectives' is allowed")
    if "objectives" not in data:
        raise _Reject("missing key 'objectives'")
    items = data["objectives"]
    if not isinstance(items, list):
        raise _Reject(f"'objectives' must be a list, got {_kind(items)}")
    if not items:
        raise _Reject("'objectives' is empty")
    return items, "wrapper"


def _is_answer(data: Any) -> bool:
    """The wrapper object, or a list of objectives."""
    if isinstance(data, list):
        return bool(data) and all(_looks_like_objective(item) for item in data)
    return isinstance(data, dict) and "objectives" in data


def _looks_like_objective(data: Any) -> bool:
    return isinstance(data, dict) and any(k in data for k in ("shape", *MPO_PARTS, "loss"))


def _regions(text: str) -> list[str]:
    """Where the JSON may start, in order: the body of each ```json (or bare) fence holding a '{'; the first
    '[' when it comes before the first '{'; each `{"objectives":` or `{"<objective key>":` in the text (prose
    before the object may hold braces too); the first '{'."""
    regions = [m.group(2).strip() for m in _FENCE.finditer(text)
               if m.group(1).lower() in ("", "json") and "{" in m.group(2)]
    brace, bracket = text.find("{"), text.find("[")
    if 0 <= bracket and (brace < 0 or bracket < brace):
        regions.append(text[bracket:])
    regions += [text[m.start():] for m in _OBJECT_START.finditer(text)]
    if brace >= 0:
        regions.append(text[brace:])
    if not regions:
        raise _Reject("no JSON object in the answer")
    return regions[:MAX_JSON_STARTS]


def _load_answer(text: str) -> Any:
    """The first region that decodes to an object with 'objectives' or a list of objectives; else the first
    that decodes at all; else the first region's decoding error.  An answer or an objective followed by more
    JSON is an error at once."""
    first_error, first_data = None, None
    for region in _regions(text):
        try:
            data = _load_json(region)
        except _ExtraData as e:
            if _is_answer(e.data) or _looks_like_objective(e.data):
                raise
            first_error = first_error or e
            continue
        except _Reject as e:
            first_error = first_error or e
            continue
        if _is_answer(data):
            return data
        if first_data is None:
            first_data = (data,)
    if first_data is not None:
        return first_data[0]
    raise first_error


def _load_json(region: str) -> Any:
    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        for k in keys:
            if keys.count(k) > 1:
                raise _Reject(f"malformed JSON: duplicate key {k!r}")
        return dict(pairs)

    def no_special(name):
        raise _Reject(f"malformed JSON: {name} is not a JSON number")

    decoder = json.JSONDecoder(object_pairs_hook=no_duplicates, parse_constant=no_special)
    try:
        data, end = decoder.raw_decode(region)
    except json.JSONDecodeError as e:
        raise _Reject(f"malformed JSON: {e.msg} at line {e.lineno} col {e.colno}") from None
    except RecursionError:
        raise _Reject("malformed JSON: nested too deeply") from None
    except ValueError as e:  # e.g. an integer literal longer than Python's int-conversion limit
        raise _Reject(f"malformed JSON: {e}") from None
    rest = region[end:].strip()
    if rest.startswith(("{", "[", ",")):  # more JSON after the object: not prose
        raise _ExtraData("malformed JSON: extra data after the object; answer with exactly one JSON object",
                         data)
    return data


# ------------------------------------------------------------------------------------ one objective
def _candidate(item: Any, name: str, max_complexity: float | None, validate: bool) -> ParsedObjective:
    if not isinstance(item, dict):
        raise _Reject(f"must be a JSON object, got {_kind(item)}")
    shape = item.get("shape", "free" if "loss" in item else "mpo" if any(k in item for k in MPO_PARTS) else None)
    if shape is None:
        raise _Reject("cannot tell the shape: give \"shape\" with \"g\" (mpo) or \"loss\" (free)")
    if shape not in EXPRESSION_KEYS:
        raise _Reject(f"'shape' must be \"mpo\" or \"free\", got {json.dumps(shape)}")
    allowed = (*OTHER_KEYS, *EXPRESSION_KEYS[shape])
    unknown = [k for k in item if k not in allowed]
    if unknown:
        raise _Reject(f"unknown key(s) {', '.join(map(repr, unknown))} for shape {shape!r}; allowed: "
                      f"{', '.join(allowed)}")
    missing = [k for k in REQUIRED[shape] if k not in item]
    if missing:
        raise _Reject(f"missing {', '.join(map(repr, missing))} for shape {shape!r}")
    parts: dict[str, sympy.Expr] = {}
    for part in EXPRESSION_KEYS[shape]:
        if part in item:
            parts[part] = _expression(item[part], part)
    constants = _constants(item.get("constants", {}))
    rationale = item.get("rationale", "")
    if not isinstance(rationale, str):
        raise _Reject(f"'rationale' must be a string, got {_kind(rationale)}")
    try:
        if shape == "mpo":
            objective = Objective.mpo(name, **parts, constants=constants)
        else:
            objective = Objective.free(name, parts["loss"], constants=constants)
    except GrammarError as e:
        raise _Reject(_grammar_reason(e)) from None
    if max_complexity is not None:
        size = complexity(objective)
        if size > max_complexity:
            raise _Reject(f"complexity {size:g} exceeds the limit {max_complexity:g}")
    if validate:
        verdict = check(objective)
        if not verdict.ok:
            raise _Reject(f"invalid: {verdict.reason}")
    return ParsedObjective(objective, rationale.strip()[:MAX_RATIONALE_CHARS])


def _expression(value: Any, part: str) -> sympy.Expr:
    if not isinstance(value, str):
        raise _Reject(f"{part}: expressions must be JSON strings, got {_kind(value)} {json.dumps(value)[:40]}")
    reason = _number_blowup(value)
    if reason:
        raise _Reject(f"{part}: {reason}")
    try:
        return parse(value, part)
    except GrammarError as e:
        raise _Reject(f"{part}: {_grammar_reason(e)}") from None
    except (ValueError, ArithmeticError, RecursionError, MemoryError) as e:  # defence in depth
        raise _Reject(f"{part}: cannot build the expression: {type(e).__name__}") from None


def _number_blowup(text: str) -> str | None:
    """A reason when folding the numbers of `text` could produce a number with more than
    `MAX_NUMBER_DIGITS` digits, else None.  Only the syntax tree is read (nothing is evaluated); texts
    that do not parse, or are too long or deep, are left to `grammar.parser.parse` to reject."""
    if len(text) > MAX_TEXT_CHARS:
        return None
    try:
        tree = ast.parse(text.replace("\r", " ").replace("\n", " "), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    try:
        digits = _digits(tree.body, 0)
    except _TooDeep:
        return None
    if digits > MAX_NUMBER_DIGITS:
        return (f"its numbers would fold to a value with about {digits:.3g} digits (limit "
                f"{MAX_NUMBER_DIGITS}); write smaller literals or fewer nested powers")
    return None


class _TooDeep(Exception):
    pass


def _digits(node: ast.AST, depth: int) -> float:
    """An upper bound on the digits (numerator + denominator) of any number sympy may fold in `node`:
    sums and products add digits, an integer power multiplies them; names count as 0."""
    if depth > MAX_DEPTH + 1:
        raise _TooDeep
    if isinstance(node, ast.Constant):
        value = node.value
        return float(len(repr(value))) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0
    if isinstance(node, ast.UnaryOp):
        return _digits(node.operand, depth + 1)
    if isinstance(node, ast.BinOp):
        left = _digits(node.left, depth + 1)
        if isinstance(node.op, ast.Pow):
            exponent = node.right
            if isinstance(exponent, ast.UnaryOp):
                exponent = exponent.operand
            k = exponent.value if isinstance(exponent, ast.Constant) else None
            if isinstance(k, (int, float)) and not isinstance(k, bool) and abs(k) <= POW_LIMIT:  # else refused
                return max(left, 1.0) * max(abs(k), 1.0) + _digits(node.right, depth + 1)
            return left + _digits(node.right, depth + 1)
        return left + _digits(node.right, depth + 1) + 1.0
    if isinstance(node, ast.Call):
        if len(node.args) == 2 and isinstance(node.func, ast.Name) and node.func.id == "pow":
            return _digits(ast.BinOp(node.args[0], ast.Pow(), node.args[1]), depth)
        return sum((_digits(a, depth + 1) for a in node.args), 0.0)
    return 0.0


def _constants(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        raise _Reject(f"'constants' must be an object of name: number, got {_kind(value)}")
    out = {}
    for name, v in value.items():
        if name not in CONSTANTS_BY_NAME:
            raise _Reject(f"unknown constant {name!r}; known: {', '.join(CONSTANTS_BY_NAME)}")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _Reject(f"constant {name} must be a number, got {_kind(v)}")
        try:
            x = float(v)
        except OverflowError:
            x = math.inf if v > 0 else -math.inf
        c = CONSTANTS_BY_NAME[name]
        if not (math.isfinite(x) and c.low <= x <= c.high):
            raise _Reject(f"constant {name} = {x:g} is outside its range [{c.low:g}, {c.high:g}]")
        out[name] = x
    return out


def _grammar_reason(e: GrammarError) -> str:
    return e.reason if e.position is None else f"{e.reason} at column {e.position + 1}"


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _snippet(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = " ".join(printable(text).split())
    return text if len(text) <= SNIPPET_CHARS else text[:SNIPPET_CHARS - 3] + "..."
