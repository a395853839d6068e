"""Population kernel: a loss is DATA, so new expressions never trigger recompilation.

A loss is encoded as a fixed-length register program (`Program`), one instruction per sympy node in
post-order with common subexpressions shared.  The interpreter keeps a value buffer of shape
[N_SLOTS, batch]:

    slot 0 .. 10            the variables, in `grammar.language.VARIABLES` order
    slot 11 .. 26           the constants, in `grammar.language.CONSTANT_NAMES` order (one float vector
                            per program: an evolution strategy varies it without recompiling)
    slot 27 + i             the result of instruction i

Instruction i reads slots `a[i]`, `b[i]` (and `value[i]` for a literal), applies opcode `op[i]` and
writes slot 27 + i.  Programs are padded with `nop` (copy the previous slot), so the last slot holds the
loss.  `lax.scan` runs the instructions; every step computes every opcode on sanitised operands and
selects one, so the interpreter is jit-able, vmappable over programs (`evaluate_population`) and
differentiable w.r.t. the variables and the constants.
"""
from __future__ import annotations

from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import sympy
from jax import lax

from grammar import ops_jax
from grammar.compile import make_inputs
from grammar.language import (
    CONSTANT_NAMES, CONSTANTS_BY_NAME, PROTECTED, VARIABLES, GrammarError, check_tree,
)
from grammar.objective import Objective

MAX_INSTRUCTIONS = 64
N_VARIABLES = len(VARIABLES)
N_CONSTANTS = len(CONSTANT_NAMES)
FIRST_RESULT_SLOT = N_VARIABLES + N_CONSTANTS

_UNARY = {"neg": jnp.negative, "square": jnp.square, "abs": jnp.abs, "tanh": jnp.tanh,
          **{c.__name__: getattr(ops_jax, c.__name__) for c in PROTECTED if max(c.nargs) == 1}}
_BINARY = {"add": jnp.add, "sub": jnp.subtract, "mul": jnp.multiply, "min": jnp.minimum,
           "max": jnp.maximum,
           **{c.__name__: getattr(ops_jax, c.__name__) for c in PROTECTED if max(c.nargs) == 2}}
OPCODES: tuple[str, ...] = ("nop", "lit", *_UNARY, *_BINARY)
OPCODE = {name: code for code, name in enumerate(OPCODES)}
_NODE_OPCODE = {sympy.Abs: "abs", sympy.tanh: "tanh", sympy.Min: "min", sympy.Max: "max",
                **{c: c.__name__ for c in PROTECTED}}


class Program(NamedTuple):
    """A loss as data.  Fields are arrays of length `max_instructions` (leading axes for populations)."""

    op: np.ndarray  # int32 opcode, index into OPCODES
    a: np.ndarray  # int32 slot of the first operand
    b: np.ndarray  # int32 slot of the second operand
    value: np.ndarray  # float64 literal (opcode "lit")

    @property
    def length(self) -> int:
        """Number of real (non-padding) instructions of a single program."""
        return int(np.count_nonzero(np.asarray(self.op) != OPCODE["nop"])) or 1


# ------------------------------------------------------------------------------------------ encoding
class _Encoder:
    def __init__(self):
        self.instructions: list[tuple[int, int, int, float]] = []
        self.by_instruction: dict[tuple, int] = {}
        self.by_expr: dict[sympy.Expr, int] = {}

    def emit(self, op: str, a: int = 0, b: int = 0, value: float = 0.0) -> int:
        key = (OPCODE[op], a, b, value)
        if key not in self.by_instruction:
            self.by_instruction[key] = FIRST_RESULT_SLOT + len(self.instructions)
            self.instructions.append(key)
        return self.by_instruction[key]

    def slot(self, e: sympy.Expr) -> int:
        if e not in self.by_expr:
            self.by_expr[e] = self._slot(e)
        return self.by_expr[e]

    def _slot(self, e: sympy.Expr) -> int:
        if e.is_Symbol:
            return VARIABLES.index(e.name) if e.name in VARIABLES else N_VARIABLES + CONSTANT_NAMES.index(e.name)
        if e.is_Number or not e.free_symbols:  # fold constant subtrees (mpmath, via the definitions)
            return self.emit("lit", value=float(e.evalf(30)))
        if e.is_Add:
            positive = [t for t in e.args if not _is_negative(t)]
            negative = [-t for t in e.args if _is_negative(t)]
            acc = self.slot(positive[0]) if positive else self.emit("neg", self.slot(negative.pop(0)))
            for term in positive[1:]:
                acc = self.emit("add", acc, self.slot(term))
            for term in negative:
                acc = self.emit("sub", acc, self.slot(term))
            return acc
        if e.is_Mul:
            coeff, factors = e.as_coeff_mul()
            acc = self.slot(factors[0])
            for f in factors[1:]:
                acc = self.emit("mul", acc, self.slot(f))
            if coeff == -1:
                return self.emit("neg", acc)
            return acc if coeff == 1 else self.emit("mul", self.slot(coeff), acc)
        if e.is_Pow:
            return self._integer_power(self.slot(e.base), int(e.exp))
        op = _NODE_OPCODE[type(e)]
        args = [self.slot(a) for a in e.args]
        if len(args) == 1:
            return self.emit(op, args[0])
        acc = args[0]
        for arg in args[1:]:  # n-ary Min/Max fold left; protected binaries have exactly two
            acc = self.emit(op, acc, arg)
        return acc

    def _integer_power(self, base: int, n: int) -> int:
        if n == 1:
            return base
        half = self.emit("square", self._integer_power(base, n // 2))
        return self.emit("mul", half, base) if n % 2 else half


def _is_negative(term: sympy.Expr) -> bool:
    return term.as_coeff_Mul()[0].is_negative


def encode(source: Objective | sympy.Expr, max_instructions: int = MAX_INSTRUCTIONS) -> Program:
    """Encode a loss over the variables and constants as a padded `Program`.

    Raises GrammarError when the expression is outside the language or needs more instructions than
    `max_instructions` (programs of different lengths are different shapes: keep one length per run).
    """
    expr = source.loss_expr() if isinstance(source, Objective) else source
    check_tree(expr, "loss")
    encoder = _Encoder()
    result = encoder.slot(expr)
    if result < FIRST_RESULT_SLOT:  # a bare variable or constant
        encoder.instructions.append((OPCODE["nop"], result, 0, 0.0))
    n = len(encoder.instructions)
    if n > max_instructions:
        raise GrammarError(f"the loss needs {n} kernel instructions; the kernel holds {max_instructions}")
    rows = encoder.instructions + [(OPCODE["nop"], FIRST_RESULT_SLOT + i - 1, 0, 0.0)
                                   for i in range(n, max_instructions)]
    op, a, b, value = zip(*rows)
    return Program(np.array(op, np.int32), np.array(a, np.int32), np.array(b, np.int32),
                   np.array(value, np.float64))


def stack(programs: list[Program]) -> Program:
    """A population: the fields of equal-length programs stacked along a new leading axis."""
    return Program(*(np.stack(field) for field in zip(*programs)))


def constant_vector(constants: Objective | Mapping[str, float]) -> np.ndarray:
    """float64[N_CONSTANTS] in slot order; constants not given take their table default."""
    given = constants.constants if isinstance(constants, Objective) else constants
    unknown = set(given) - set(CONSTANT_NAMES)
    if unknown:
        raise KeyError(f"unknown constant(s) {sorted(unknown)}")
    return np.array([given.get(n, CONSTANTS_BY_NAME[n].default) for n in CONSTANT_NAMES], np.float64)


def disassemble(program: Program) -> str:
    """Readable listing of a single program (padding omitted)."""
    names = [*VARIABLES, *CONSTANT_NAMES]

    def slot(s: int) -> str:
        return names[s] if s < FIRST_RESULT_SLOT else f"%{s - FIRST_RESULT_SLOT}"

    lines = []
    for i, (op, a, b, value) in enumerate(zip(*(np.asarray(f).tolist() for f in program))):
        name = OPCODES[op]
        if name == "nop" and i and a == FIRST_RESULT_SLOT + i - 1:
            continue
        operands = (repr(value) if name == "lit" else slot(a) if name in _UNARY or name == "nop"
                    else f"{slot(a)}, {slot(b)}")
        lines.append(f"%{i} = {name} {operands}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- interpreter
def _step(buffer: jnp.ndarray, instruction) -> tuple[jnp.ndarray, None]:
    slot, op, a, b, value = instruction
    x, y = buffer[a], buffer[b]
    one = jnp.ones_like(x)
    results = [x, jnp.full_like(x, value)]
    for code, fn in enumerate(_UNARY.values(), start=2):
        results.append(fn(jnp.where(op == code, x, one)))  # unselected ops see 1.0: no NaN gradients
    for code, fn in enumerate(_BINARY.values(), start=2 + len(_UNARY)):
        selected = op == code
        results.append(fn(jnp.where(selected, x, one), jnp.where(selected, y, one)))
    out = lax.select_n(op, *results)
    return lax.dynamic_update_index_in_dim(buffer, out, slot, 0), None


def interpret(program: Program, variables: Mapping[str, jnp.ndarray], constants: jnp.ndarray) -> jnp.ndarray:
    """The loss of one program on a batch (pure function: jit, vmap and grad it freely).

    `variables` maps every name in VARIABLES to an array (broadcastable to one batch shape; see
    `grammar.compile.make_inputs`); `constants` is float[N_CONSTANTS] (`constant_vector`).  Computes in
    the floating dtype of the variables (float64 under `jax.enable_x64`).
    """
    missing = [n for n in VARIABLES if n not in variables]
    if missing:
        raise KeyError(f"missing variable(s) {missing}")
    values = [jnp.asarray(variables[n]) for n in VARIABLES]
    dtype = jnp.result_type(*values, jnp.float32)
    shape = jnp.broadcast_shapes(*(v.shape for v in values))
    rows = jnp.stack([jnp.broadcast_to(v.astype(dtype), shape).reshape(-1) for v in values])
    batch = rows.shape[1]
    length = program.op.shape[-1]
    buffer = jnp.concatenate([
        rows,
        jnp.broadcast_to(jnp.asarray(constants, dtype)[:, None], (N_CONSTANTS, batch)),
        jnp.zeros((length, batch), dtype),
    ])
    slots = FIRST_RESULT_SLOT + jnp.arange(length, dtype=jnp.int32)
    buffer, _ = lax.scan(_step, buffer, (slots, program.op, program.a, program.b,
                                         jnp.asarray(program.value, dtype)))
    return buffer[-1].reshape(shape)


def _loss_and_slopes(program: Program, sums: Mapping[str, jnp.ndarray], constants: jnp.ndarray):
    def total(logp_w, logp_l):
        inputs = make_inputs(logp_w, logp_l, sums["ref_w"], sums["ref_l"], sums["len_w"], sums["len_l"],
                             sums["t"])
        loss = interpret(program, inputs, constants)
        return loss.sum(), loss

    (d_w, d_l), loss = jax.grad(total, argnums=(0, 1), has_aux=True)(sums["logp_w"], sums["logp_l"])
    return loss, d_w, d_l


evaluate = jax.jit(interpret)
"""`evaluate(program, variables, constants)`: jitted `interpret`; compiles once per input shape/dtype."""

evaluate_population = jax.jit(jax.vmap(interpret, in_axes=(0, None, 0)))
"""`evaluate_population(programs, variables, constants[P, N_CONSTANTS]) -> [P, *batch]`: P different
programs (see `stack`) on shared inputs in one call.  For per-program inputs, vmap `interpret` yourself."""

loss_and_slopes = jax.jit(_loss_and_slopes)
"""`loss_and_slopes(program, sums, constants) -> (loss, d loss/d logp_w, d loss/d logp_l)`, per pair.

`sums` maps logp_w, logp_l, ref_w, ref_l, len_w, len_l, t to arrays: the TRL-style inputs; per-step
means are derived inside (`make_inputs`), so the slopes include the path through them."""


# --------------------------------------------------------------------------------- compilation counter
_COUNTS = {"compiles": 0, "traces": 0}


def _count(event: str, duration: float, **_) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        _COUNTS["compiles"] += 1
    elif event == "/jax/core/compile/jaxpr_trace_duration":
        _COUNTS["traces"] += 1


jax.monitoring.register_event_duration_secs_listener(_count)


def compilation_count() -> int:
    """XLA backend compilations in this process since `grammar.kernel` was imported (all functions)."""
    return _COUNTS["compiles"]


def trace_count() -> int:
    """JAX traces (jit cache misses) in this process since `grammar.kernel` was imported."""
    return _COUNTS["traces"]


def cache_sizes() -> dict[str, int]:
    """Number of compiled variants held by each kernel entry point."""
    return {"evaluate": evaluate._cache_size(), "evaluate_population": evaluate_population._cache_size(),
            "loss_and_slopes": loss_and_slopes._cache_size()}
