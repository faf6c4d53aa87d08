"""The element-wise rules' random draws: jax.random's numbers, bit for bit.

Two independent references: a NumPy Threefry-2x32 written here from the cipher's
definition (Salmon et al. 2011) in uint64 arithmetic, checked against Random123's known
answers; and ``jax.random`` itself, whose numbers the draws must equal exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import random as jax_random

import corgrad_jax as cg
from corgrad_jax._src import draws

MASK = np.uint64(0xFFFFFFFF)


def reference_threefry(key: tuple[int, int], c0: np.ndarray, c1: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Threefry-2x32-20 in NumPy uint64, reduced mod 2^32 after every add."""
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    schedule = (k0, k1, k0 ^ k1 ^ np.uint64(0x1BD11BDA))
    x0 = (c0.astype(np.uint64) + schedule[0]) & MASK
    x1 = (c1.astype(np.uint64) + schedule[1]) & MASK
    rotations = ((13, 15, 26, 6), (17, 29, 16, 24))
    for group in range(5):
        for r in rotations[group % 2]:
            x0 = (x0 + x1) & MASK
            x1 = (((x1 << np.uint64(r)) | (x1 >> np.uint64(32 - r))) & MASK) ^ x0
        x0 = (x0 + schedule[(group + 1) % 3]) & MASK
        x1 = (x1 + schedule[(group + 2) % 3] + np.uint64(group + 1)) & MASK
    return x0.astype(np.uint32), x1.astype(np.uint32)


# Random123's known-answer tests for threefry2x32_20: key, counter, output.
KNOWN = [((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
         ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
         ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0))]


@pytest.mark.parametrize("key, counter, expected", KNOWN)
def test_the_reference_and_the_cipher_give_the_known_answers(key, counter, expected):
    c0, c1 = (np.array([c], np.uint32) for c in counter)
    assert [int(w[0]) for w in reference_threefry(key, c0, c1)] == list(expected)
    words = draws.threefry2x32(tuple(jnp.uint32(k) for k in key),
                               tuple(jnp.asarray(c) for c in (c0, c1)))
    assert [int(w[0]) for w in words] == list(expected)


def test_the_cipher_equals_jax_primitive_on_a_million_random_blocks(rng):
    key = rng.integers(0, 2**32, 2, dtype=np.uint32)
    c0, c1 = (rng.integers(0, 2**32, 1_000_003, dtype=np.uint32) for _ in range(2))
    mine = jax.jit(draws.threefry2x32)((key[0], key[1]), (c0, c1))
    theirs = jax_random.threefry2x32_p.bind(jnp.asarray(key[0]), jnp.asarray(key[1]),
                                            jnp.asarray(c0), jnp.asarray(c1))
    for a, b in zip(mine, theirs, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_uniform_is_the_top_23_bits_of_the_xor_of_the_words_at_each_index():
    key, n = jax.random.PRNGKey(11), 1_000_001
    k0, k1 = (int(k) for k in np.asarray(key))
    counters = np.arange(n, dtype=np.uint32)
    first, second = reference_threefry((k0, k1), np.zeros_like(counters), counters)
    expected = ((first ^ second) >> 9).astype(np.float64) / 2.0**23
    got = np.asarray(jax.jit(draws.uniform, static_argnums=(1, 2))(key, (n,), jnp.float32))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.astype(np.float64), expected)


SHAPES = [(1,), (2,), (7,), (3, 5, 7), (3, 3, 64, 64), (11_689_512,)]  # the last: ResNet18


@pytest.mark.parametrize("draw, reference", [(draws.uniform, jax.random.uniform),
                                             (draws.normal, jax.random.normal)])
@pytest.mark.parametrize("shape", SHAPES)
def test_the_draws_equal_jax_random_bit_for_bit(draw, reference, shape):
    # The key as the transformations hold it (raw uint32) and as a typed key; eagerly,
    # jitted, and jitted with the compiler options that reorder float arithmetic (which
    # change jax.random.normal's erf^-1 in the last bits: against jax.random compiled so).
    reassociate = cg.compiler_options()
    for key in (jax.random.PRNGKey(5), jax.random.key(6)):
        expected = np.asarray(reference(key, shape, jnp.float32))
        for fn in (draw, jax.jit(draw, static_argnums=(1, 2))):
            got = np.asarray(fn(key, shape, jnp.float32))
            assert got.shape == shape and got.dtype == np.float32
            np.testing.assert_array_equal(got, expected)
        got, expected = (np.asarray(jax.jit(f, static_argnums=(1, 2), compiler_options=reassociate)(
            key, shape, jnp.float32)) for f in (draw, reference))
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("draw, reference", [(draws.uniform, jax.random.uniform),
                                             (draws.normal, jax.random.normal)])
def test_other_generators_and_dtypes_go_to_jax_random(draw, reference):
    rbg = jax.random.key(2, impl="rbg")
    np.testing.assert_array_equal(draw(rbg, (1000,), jnp.float32),
                                  reference(rbg, (1000,), jnp.float32))
    key = jax.random.PRNGKey(2)
    np.testing.assert_array_equal(draw(key, (1000,), jnp.bfloat16),
                                  reference(key, (1000,), jnp.bfloat16))
    with jax.enable_x64(True):
        np.testing.assert_array_equal(draw(key, (1000,), jnp.float64),
                                      reference(key, (1000,), jnp.float64))
    with jax.threefry_partitionable(False):  # JAX's other layout of the counters
        np.testing.assert_array_equal(draw(key, (1000,), jnp.float32),
                                      reference(key, (1000,), jnp.float32))
