"""MPO Discover grammar: the expression language of preference-optimisation objectives.

    language   variables, constants, protected operators (one table: OPERATORS)
    parser     safe text -> sympy (no eval), and sympy -> text
    objective  Objective: the structured MPO shape and the free shape
    canonical  canonical form, structural hash, complexity, behaviour fingerprint
    compile    per-expression JAX / NumPy functions (lambdify), make_inputs
    kernel     population kernel: losses as data, evaluated without recompilation
    validity   finite / monotone checks before training
    zoo        published baselines, with citations
    export     standalone PyTorch / JAX / LaTeX / sympy code
"""
import evaluators  # noqa: F401  (pins XLA's CPU target: evaluators/xla_target.py)
from grammar.canonical import canonical_form, complexity, fingerprint, structure_hash
from grammar.compile import compile_jax, compile_numpy, make_inputs
from grammar.export import export
from grammar.kernel import (
    MAX_INSTRUCTIONS, Program, constant_vector, encode, evaluate, evaluate_population, interpret, stack,
)
from grammar.language import (
    CONSTANT_NAMES, CONSTANTS, OPERATORS, VARIABLES, GrammarError,
)
from grammar.objective import Objective
from grammar.parser import parse, to_text
from grammar.validity import Verdict, check
from grammar.zoo import ZOO, baseline

__all__ = [
    "CONSTANTS", "CONSTANT_NAMES", "GrammarError", "MAX_INSTRUCTIONS", "OPERATORS", "Objective", "Program",
    "VARIABLES", "Verdict", "ZOO", "baseline", "canonical_form", "check", "compile_jax", "compile_numpy",
    "complexity", "constant_vector", "encode", "evaluate", "evaluate_population", "export", "fingerprint",
    "interpret", "make_inputs", "parse", "stack", "structure_hash", "to_text",
]
