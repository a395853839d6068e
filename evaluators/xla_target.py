"""One XLA CPU target for every x86-64 machine, so that JAX's arithmetic is the same on AVX2 and AVX-512 CPUs.

XLA compiles for the host's widest vectors by default; a reduction vectorised over 512 bits adds its terms in
another order than over 256, so the same training would differ between an AVX-512 and an AVX2 machine in the
last bits and, through training, in the scores (``benchmarks/jax_isa.py``: DPO trained one candidate per
call scores 44.13 under an AVX-512 cap and 42.51 under the AVX2 cap on the same seed units). Capping the
target at AVX2 (with FMA: x86-64-v3) costs no measurable speed here (``benchmarks/trainer.py``). Every
package of the project pins it on import, before JAX's CPU backend starts; ``XLA_FLAGS`` with its own
``--xla_cpu_max_isa`` wins.
"""

from __future__ import annotations

import os
import platform

XLA_CPU_ISA = "AVX2"


def pin_xla_cpu_isa() -> None:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_cpu_max_isa" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_max_isa={XLA_CPU_ISA}".strip()


def xla_cpu_isa() -> str:
    """The instruction-set cap XLA compiles CPU code for in this process ("native" where none is set)."""
    for flag in os.environ.get("XLA_FLAGS", "").split():
        if flag.startswith("--xla_cpu_max_isa="):
            return flag.split("=", 1)[1]
    return "native"
