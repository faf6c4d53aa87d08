"""Minibatch indices as a pure function of (seed, environment, step).

Each environment's examples are visited in epochs, each a fresh permutation drawn from
``seed_hash(seed, env, epoch)``; the batch of step ``t`` is positions
``[t * B, (t + 1) * B)`` of the endless concatenation of those permutations. So a run
resumed at step ``t`` draws exactly the batches an uninterrupted run draws, with no
iterator state to checkpoint.
"""

from __future__ import annotations

import functools

import numpy as np

from experiments.seeding import seed_hash


@functools.lru_cache(maxsize=256)
def _epoch_permutation(num_examples: int, seed: int, env: int, epoch: int) -> np.ndarray:
    rng = np.random.default_rng(seed_hash(seed, env, epoch))
    permutation = rng.permutation(num_examples)
    permutation.setflags(write=False)
    return permutation


def batch_indices(
    num_examples: int, batch_size: int, step: int, *, seed: int, env: int
) -> np.ndarray:
    """Indices into an environment's ``in`` split of the minibatch of step ``step``.

    Args:
        num_examples: size of the split sampled from.
        batch_size: examples per minibatch.
        step: the training step, from 0.
        seed: the run's seed.
        env: the environment's index (each environment shuffles independently).

    Returns:
        ``batch_size`` indices in ``[0, num_examples)``; every index appears once per
        epoch of ``num_examples`` consecutive positions.
    """
    if num_examples < 1:
        raise ValueError(f"environment {env} has no training examples to sample from")
    start = step * batch_size
    positions = np.arange(start, start + batch_size)
    epochs, offsets = np.divmod(positions, num_examples)
    indices = np.empty(batch_size, np.int64)
    for epoch in np.unique(epochs):
        chosen = epochs == epoch
        indices[chosen] = _epoch_permutation(num_examples, seed, env, int(epoch))[offsets[chosen]]
    return indices


def position_index(num_examples: int, position: int, *, seed: int, env: int) -> int:
    """The index at ``position`` of the endless stream of epochs :func:`batch_indices`
    walks: ``batch_indices(n, B, t)[i] == position_index(n, t * B + i)``.

    Example:
      >>> stream = [position_index(5, p, seed=0, env=1) for p in range(10)]
      >>> sorted(stream[:5]) == sorted(stream[5:]) == [0, 1, 2, 3, 4]
      True
    """
    if num_examples < 1:
        raise ValueError(f"environment {env} has no training examples to sample from")
    epoch, offset = divmod(position, num_examples)
    return int(_epoch_permutation(num_examples, seed, env, epoch)[offset])
