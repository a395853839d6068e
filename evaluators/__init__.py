"""MPO Discover: evaluators."""
from evaluators.xla_target import pin_xla_cpu_isa

pin_xla_cpu_isa()
