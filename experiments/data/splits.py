"""The ``in``/``out`` split of an environment, as DomainBed's ``misc.split_dataset``."""

from __future__ import annotations

import numpy as np


def holdout_split(
    num_examples: int, holdout_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(in indices, out indices)`` of an environment of ``num_examples``, sorted.

    A permutation from ``np.random.RandomState(seed)``; its first
    ``int(num_examples * holdout_fraction)`` entries are the held-out ``out`` split,
    the rest the ``in`` split. DomainBed seeds it with ``seed_hash(trial_seed, env)``.

    Example:
      >>> [part.tolist() for part in holdout_split(5, 0.4, seed=0)]
      [[1, 3, 4], [0, 2]]
    """
    keys = np.arange(num_examples)
    np.random.RandomState(seed).shuffle(keys)
    num_out = int(num_examples * holdout_fraction)
    return np.sort(keys[num_out:]), np.sort(keys[:num_out])
