"""Random draws for the element-wise rules: Threefry written out, both words of each block.

GradDrop draws one uniform number per parameter and Agr-Rand one normal number, 11.7M
of them a step for ResNet18. JAX's default generator, Threefry-2x32 (Salmon et al.
2011), is a keyed block cipher: one evaluation (20 rounds of adds, rotations and xors)
maps a pair of 32-bit counters to a pair of 32-bit words. ``jax.random.uniform`` took
121 ms for those 11.7M numbers on the README's 2-core CPU, most of GradDrop's time, for
two reasons:

- on the CPU, JAX lowers the cipher as a loop over its five groups of rounds, which
  reads and writes the whole arrays of words at every group (memory-bound);
- since jax 0.5 (``jax_threefry_partitionable``) it evaluates the cipher once per
  number and keeps the xor of the two words.

Here :func:`threefry2x32` is the same function written out, which XLA fuses into one
elementwise pass, and the counters :math:`(0, c)`, :math:`c = 0, \\dots, m - 1` with
:math:`m = \\lceil n/2 \\rceil`, give both words,

.. math::  (w_c, w_{m + c}) = \\operatorname{threefry}_k(0, c),

so n numbers take m evaluations. The 11.7M uniform numbers then take 19 ms. Every word
is the cipher's output at its own counter, so the numbers are as uniform and independent
as JAX's, but they are other numbers than ``jax.random.uniform(key, ...)``. Each is an
elementwise function of its index, so a sharded draw needs no communication. Keys of
other generators (``impl="rbg"``, or ``jax_default_prng_impl``), float types other than
float32, and draws of 2^33 numbers or more go to ``jax.random``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

_MANTISSA_BITS = 23
_ONE_BITS = np.uint32(0x3F800000)  # the bits of 1.0f
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def threefry2x32(key: tuple[jax.Array, jax.Array], counters: tuple[jax.Array, jax.Array]
                 ) -> tuple[jax.Array, jax.Array]:
    r"""Threefry-2x32 with 20 rounds (Salmon et al. 2011, Fig. 2): uint32 words in and out.

    Five groups of four rounds :math:`x_0 \leftarrow x_0 + x_1,\ x_1 \leftarrow
    (x_1 \lll r) \oplus x_0`, with the key schedule :math:`(k_0, k_1, k_0 \oplus k_1
    \oplus \mathtt{0x1BD11BDA})` added after each group. The same function as JAX's
    ``threefry2x32`` primitive, unrolled: on the README's CPU, 5.8M blocks took 19 ms
    where the primitive's loop took 65 ms.

    Example:
      >>> import jax.numpy as jnp
      >>> from corgrad_jax._src.draws import threefry2x32
      >>> zero = jnp.uint32(0)
      >>> words = threefry2x32((zero, zero), (zero, zero))
      >>> [hex(int(w)) for w in words]  # Random123's known answer
      ['0x6b200159', '0x99ba4efe']
    """
    schedule = (key[0], key[1], key[0] ^ key[1] ^ _PARITY)
    x0, x1 = counters[0] + schedule[0], counters[1] + schedule[1]
    for group in range(5):
        for r in _ROTATIONS[group % 2]:
            x0 = x0 + x1
            x1 = ((x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r))) ^ x0
        x0 = x0 + schedule[(group + 1) % 3]
        x1 = x1 + schedule[(group + 2) % 3] + np.uint32(group + 1)
    return x0, x1


def _words(key: jax.Array, n: int) -> jax.Array | None:
    """n uint32 words from both halves of ceil(n/2) threefry blocks; None where the
    key's generator is not threefry2x32 or n needs more than 2^32 blocks."""
    if str(jax.random.key_impl(key)) != "threefry2x32":
        return None
    data = jax.random.key_data(key)
    blocks = -(-n // 2)
    if data.shape != (2,) or blocks >= 2**32:
        return None
    counters = jax.lax.iota(jnp.uint32, blocks)
    first, second = threefry2x32((data[0], data[1]), (jnp.zeros_like(counters), counters))
    return jnp.concatenate([first, second])[:n]


def _unit_floats(words: jax.Array) -> jax.Array:
    """float32 in [0, 1) from the top 23 bits of each word, as ``jax.random.uniform``."""
    bits = jax.lax.shift_right_logical(words, np.uint32(32 - _MANTISSA_BITS)) | _ONE_BITS
    return jax.lax.bitcast_convert_type(bits, jnp.float32) - np.float32(1)


def uniform(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype = jnp.float32
            ) -> jax.Array:
    r"""Uniform numbers in [0, 1), two per threefry evaluation (see the module's doc).

    The same distribution as :func:`jax.random.uniform` (23 random mantissa bits), other
    values.

    Example:
      >>> import jax
      >>> from corgrad_jax._src.draws import uniform
      >>> u = uniform(jax.random.key(0), (1000,))
      >>> bool((u >= 0).all() & (u < 1).all()), u.dtype
      (True, dtype('float32'))
    """
    words = _words(key, math.prod(shape)) if jnp.dtype(dtype) == jnp.float32 else None
    if words is None:
        return jax.random.uniform(key, shape, dtype)
    return _unit_floats(words).reshape(shape)


def normal(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype = jnp.float32
           ) -> jax.Array:
    r"""Standard normal numbers, two per threefry evaluation (see the module's doc).

    As :func:`jax.random.normal`: :math:`\sqrt2\, \operatorname{erf}^{-1}(v)` of v
    uniform in (-1, 1).

    Example:
      >>> import jax
      >>> from corgrad_jax._src.draws import normal
      >>> z = normal(jax.random.key(0), (100_000,))
      >>> abs(float(z.mean())) < 0.02, abs(float(z.std()) - 1) < 0.02
      (True, True)
    """
    words = _words(key, math.prod(shape)) if jnp.dtype(dtype) == jnp.float32 else None
    if words is None:
        return jax.random.normal(key, shape, dtype)
    low = np.nextafter(np.float32(-1), np.float32(np.inf))
    v = jnp.maximum(low, _unit_floats(words) * (np.float32(1) - low) + low)
    return (np.float32(np.sqrt(2)) * jax.lax.erf_inv(v)).reshape(shape)
