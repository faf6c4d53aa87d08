"""XLA options under which the engine's float sums run at memory speed on a CPU.

Every Gram rule reads the data once for the piece Gram matrices
(docs/aggregators.md; ``_src/pieces.py``),

.. math::  G^k_{ab} = \\sum_{p \\in k} g_a[p]\\, g_b[p], \\qquad 1 \\le a \\le b \\le D,

that is D(D+1)/2 multiply-adds per parameter. Float addition is not associative, so by
default XLA:CPU adds the terms in the order written, each add waiting for the one
before, and cannot split a sum over SIMD lanes: the Gram pass is then bound by the
arithmetic, not by memory (1.1x the memory floor at D=3, 1.5x at D=5 on the 2-core CPU
of the README). Allowing reassociation lets LLVM keep one partial sum per SIMD lane;
the pass then runs at memory speed (0.6x the one-core NumPy floor on both cores).

XLA sets such options per compiled program, not per operation, and an optax
transformation runs inside its user's ``jax.jit``: so they are offered here, for the
user to pass to the ``jax.jit`` that compiles the training step.
"""

from __future__ import annotations

import jax

_REASSOCIATE_ON_CPU: dict[str, bool] = {
    "xla_cpu_enable_fast_math": True,
    # Of fast math, keep only reassociation, contraction into fused multiply-adds and
    # the sign of zero; NaN and Inf semantics, division and functions stay exact.
    "xla_cpu_fast_math_honor_nans": True,
    "xla_cpu_fast_math_honor_infs": True,
    "xla_cpu_fast_math_honor_division": True,
    "xla_cpu_fast_math_honor_functions": True,
}


def compiler_options(backend: str | None = None) -> dict[str, bool]:
    """Options for ``jax.jit(fn, compiler_options=...)`` that let XLA:CPU reorder float sums.

    On the CPU these allow the compiler to *reassociate* float additions and
    multiplications and to contract them into fused multiply-adds (and to ignore the
    sign of zero). NaN and Inf propagate as before; division, square roots and
    transcendental functions are not approximated. Results then differ from the
    default compilation in the last bits, as any reordered float sum does, and stay
    deterministic from run to run of the same program. On a GPU or TPU, where
    reductions already run as parallel trees, nothing is needed: ``{}``.

    What it buys (``benchmarks/bench_corgrad.py``, ResNet18's 11.7M parameters, two
    cores; the README's tables): the Gram pass runs at memory speed instead of being
    bound by dependent float adds. In one run, corgrad (slice) went from 2.08x to 1.74x
    the memory floor at D=3 and from 2.60x to 1.92x at D=5, corgrad (layer) from 2.25x
    to 1.48x at D=5. The options apply to the whole program they compile, the model's
    forward and backward passes included.

    Args:
      backend: ``"cpu"``, ``"gpu"`` or ``"tpu"``; None for ``jax.default_backend()``.

    Returns:
      A new dict of XLA debug options (empty off the CPU).

    Example:
      >>> import jax, optax
      >>> import corgrad_jax as cg
      >>> tx = optax.chain(cg.corgrad(), optax.adam(1e-3))
      >>> update = jax.jit(tx.update, compiler_options=cg.compiler_options())
    """
    backend = jax.default_backend() if backend is None else backend
    return dict(_REASSOCIATE_ON_CPU) if backend == "cpu" else {}
