"""The trainer's algorithms: a registry of entries (:mod:`experiments.algorithms.registry`).

Every entry (:mod:`experiments.algorithms.entries`) builds a :mod:`corgrad_jax`
transformation of the per-domain gradients stacked on axis 0; the trainer chains it
with Adam (:mod:`experiments.training.optimizer`). Importing this package imports no
JAX.
"""

from experiments.algorithms import entries as _entries  # noqa: F401  (registers them)
from experiments.algorithms.registry import ALGORITHMS as ALGORITHMS
from experiments.algorithms.registry import Algorithm as Algorithm
from experiments.algorithms.registry import display_name as display_name
from experiments.algorithms.registry import get_algorithm as get_algorithm
from experiments.algorithms.registry import register as register

__all__ = ["ALGORITHMS", "Algorithm", "display_name", "get_algorithm", "register"]
