"""Running a stacked-gradient transformation on gradients split across devices.

CorGrad cuts each layer's *flattened* gradient into contiguous pieces (the paper's
Section 3.4) and reads every piece in two passes: its D x D Gram matrix, then a linear
combination (``_src/pieces.py``). Both passes partition across devices for free when
each device holds *contiguous ranges of the flattened leaf* for all D domains: each
device computes partial Gram matrices of the pieces it holds, one all-reduce adds the
tiny ``(pieces, D, D)`` arrays, and each device writes its own range of the output.
A leaf split along any other axis (a Flax kernel ``(kh, kw, in, out)`` split over
``out``) is not contiguous when flattened, and XLA gathers the whole stacked leaf on
every device to cut its pieces.

:func:`partitioned` puts every leaf in that layout: it views ``(D, *shape)`` as
``(D, m, rest)``, with ``m`` the shortest product of leading dimensions divisible by
the device count of the given mesh axes (a free reshape: the flattened order is
unchanged, so are the pieces), pins the view to ``P(None, axes)``, runs the wrapped
transformation and reshapes its update back. Gradients that arrive split over the
domain axis (domain-parallel training) move by one all-to-all; nothing of size
``D x leaf`` is gathered.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import chex
import jax
import optax
from jax.sharding import PartitionSpec


def partitioned(
    inner: optax.GradientTransformation,
    axis_names: str | Sequence[str],
    *,
    keep_leading_axis: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""Runs ``inner`` with every stacked leaf split into contiguous ranges over devices.

    For a stacked leaf :math:`g \in \mathbb{R}^{D \times d_1 \times \dots \times d_r}`
    and a device count :math:`N` over ``axis_names``, let :math:`m = \prod_{i \le j}
    d_i` for the smallest :math:`j` with :math:`N \mid m`. ``inner`` receives
    :math:`g` reshaped to :math:`(D, m, \prod_{i > j} d_i)` and split over its second
    axis: device :math:`k` holds the flattened elements :math:`[k P/N, (k+1) P/N)`,
    :math:`P = \prod_i d_i`, of every domain. Leaves with no such :math:`j` are passed
    as they are. The update is reshaped back to :math:`(d_1, \dots, d_r)`.

    The flattened order is unchanged, so the result equals ``inner``'s for every
    transformation whose pieces are ranges of the flattened leaf: :func:`corgrad` with
    ``variant="paper"`` (any granularity), :func:`pcgrad`, and the element-wise
    baselines. ``corgrad(variant="official")`` cuts rows of the leaf's axis 0: pass
    ``keep_leading_axis=True`` so that only leaves whose first dimension is divisible
    by :math:`N` are viewed, as :math:`(D, d_1, \dots)`.

    The mesh is the one JAX traces under: :func:`jax.set_mesh` around ``jit``
    (``jax.sharding.use_mesh`` before JAX 0.7.1) or, from JAX 0.8,
    :func:`jax.sharding.use_abstract_mesh` inside it. Without one, or when it lacks
    ``axis_names`` or spans one device, ``inner`` runs unchanged, so the same optimizer
    serves single- and multi-device runs.

    Args:
      inner: a transformation of stacked per-domain gradients (e.g. :func:`corgrad`).
      axis_names: the mesh axis (or axes) to split the leaves over, e.g.
        ``("domain", "data")`` to use every device of a 2-D mesh.
      keep_leading_axis: view leaves only along their first dimension (for
        transformations that cut along axis 0, like the official CorGrad).

    Returns:
      A transformation with ``inner``'s state.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from corgrad_jax import corgrad, partitioned
      >>> tx = partitioned(corgrad(num_slices=4), ("data",))
      >>> grads = {"w": jnp.arange(24.0).reshape(2, 3, 4) * jnp.array([1.0, -1.0])[:, None, None]}
      >>> update, _ = tx.update(grads, tx.init({"w": jnp.zeros((3, 4))}))  # no mesh: as inner
      >>> update["w"].shape
      (3, 4)
    """
    names = (axis_names,) if isinstance(axis_names, str) else tuple(axis_names)

    def init_fn(params: chex.ArrayTree) -> Any:
        return inner.init(params)

    def update_fn(
        updates: chex.ArrayTree, state: Any, params: chex.ArrayTree | None = None,
        **extra_args: Any,
    ) -> tuple[chex.ArrayTree, Any]:
        mesh = jax.sharding.get_abstract_mesh()
        if mesh.empty or not set(names) <= set(mesh.axis_names):
            return inner.update(updates, state, params, **extra_args)
        devices = math.prod(mesh.shape[name] for name in names)
        if devices == 1:
            return inner.update(updates, state, params, **extra_args)
        del params  # ``inner`` would check them against the viewed shapes

        def view(leaf: jax.Array) -> jax.Array:
            shape = contiguous_split(leaf.shape[1:], devices, keep_leading_axis=keep_leading_axis)
            if shape is None:
                return leaf
            leaf = leaf.reshape(leaf.shape[0], *shape)
            return jax.lax.with_sharding_constraint(leaf, PartitionSpec(None, names))

        viewed = jax.tree.map(view, updates)
        out, state = inner.update(viewed, state, None, **extra_args)
        out = jax.tree.map(lambda o, leaf: o.reshape(leaf.shape[1:]), out, updates)
        return out, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def contiguous_split(
    shape: Sequence[int], num_devices: int, *, keep_leading_axis: bool = False
) -> tuple[int, int] | None:
    """The ``(m, rest)`` view of a leaf of ``shape`` that :func:`partitioned` splits.

    ``m`` is the product of the fewest leading dimensions that ``num_devices`` divides
    (only the first dimension with ``keep_leading_axis``), ``rest`` the product of the
    others; None when there is no such product (the leaf stays whole).

    Example:
      >>> from corgrad_jax import contiguous_split
      >>> contiguous_split((3, 3, 64, 128), 4)  # a Flax conv kernel over 4 devices
      (576, 128)
      >>> contiguous_split((3, 3, 64, 128), 4, keep_leading_axis=True) is None
      True
    """
    length = 1
    for axis, size in enumerate(shape):
        length *= size
        if length % num_devices == 0:
            return length, math.prod(shape[axis + 1 :])
        if keep_leading_axis and axis == 0:
            return None
    return None
