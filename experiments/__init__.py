"""A DomainBed-style Flax trainer for CorGrad and the gradient-surgery family.

Commands (DomainBed's names)::

    python -m experiments.train            # one run
    python -m experiments.sweep            # every test env x algorithm x trial
    python -m experiments.collect_results DIR   # the results table, in markdown
    python -m experiments.main_job         # a short ERM vs CorGrad comparison on CPU
    python -m experiments.train --num_devices 8 --dry_run   # the sharding plan of a run

A run uses every device on a ``(domain, data)`` mesh, on one host or many
(:mod:`experiments.parallel`).

Every algorithm is an optax transformation of stacked per-domain gradients from
:mod:`corgrad_jax`, chained with Adam (:mod:`experiments.algorithms`).
"""

from corgrad_jax._src._version_check import require_jax

MINIMUM_JAX = "0.8.0"
"""The oldest JAX the trainer runs on, as in ``pyproject.toml``'s ``experiments`` extra (a
test keeps them equal): its step constrains shardings under ``use_abstract_mesh``."""

require_jax(
    "experiments", MINIMUM_JAX,
    "jax.lax.with_sharding_constraint under jax.sharding.use_abstract_mesh",
)
