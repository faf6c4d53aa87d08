"""Kernels in PyTorch's layout, for the algorithms that cut them as the official code does.

The official CorGrad code slices each parameter with ``torch.chunk`` along axis 0, the
output channels of PyTorch's ``(out, in, kh, kw)`` layout; a Flax kernel is
``(kh, kw, in, out)``. An algorithm entry with ``torch_layout=True``
(``corgrad_official``) is run inside :func:`in_torch_layout`, so that it cuts the same
pieces as the official code (docs/algorithm.md, Sec. 6). Per-leaf algorithms are
otherwise unaffected by a transposition.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

# Flax kernel layouts -> PyTorch's, behind the leading domain axis:
# conv (D, H, W, I, O) -> (D, O, I, H, W); dense (D, I, O) -> (D, O, I).
_TO_TORCH = {5: (0, 4, 3, 1, 2), 3: (0, 2, 1)}


def _torch_permutation(path: tuple[Any, ...], ndim: int) -> tuple[int, ...] | None:
    """The transposition of the stacked leaf at ``path`` with ``ndim`` axes, or None."""
    name = getattr(path[-1], "key", None) if path else None
    return _TO_TORCH.get(ndim) if name == "kernel" else None


def in_torch_layout(
    inner: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
    """Runs ``inner`` on stacked gradients whose kernels are laid out as in PyTorch.

    The official CorGrad code slices each parameter with ``torch.chunk`` along axis 0,
    the output channels in PyTorch's ``(out, in, kh, kw)`` layout; a Flax kernel is
    ``(kh, kw, in, out)``. This wrapper transposes every stacked ``kernel`` leaf to
    PyTorch's layout, applies ``inner`` and transposes the result back, so
    ``corgrad(variant="official")`` cuts the same pieces as the official code.
    Per-leaf algorithms are otherwise unaffected by a transposition.
    """

    def transpose(tree: Any, inverse: bool, stacked: bool) -> Any:
        def one(path: tuple[Any, ...], leaf: jax.Array) -> jax.Array:
            perm = _torch_permutation(path, leaf.ndim + (not stacked))
            if perm is None:
                return leaf
            if not stacked:
                perm = tuple(p - 1 for p in perm[1:])
            if inverse:
                perm = tuple(sorted(range(len(perm)), key=perm.__getitem__))
            return jnp.transpose(leaf, perm)

        return jax.tree_util.tree_map_with_path(one, tree)

    def update_fn(
        updates: Any, state: Any, params: Any = None, **extra_args: Any
    ) -> tuple[Any, Any]:
        del params  # only used by `inner` to check shapes, which transposing would copy
        torch_updates, state = inner.update(
            transpose(updates, False, True), state, None, **extra_args
        )
        return transpose(torch_updates, True, False), state

    return optax.GradientTransformationExtraArgs(inner.init, update_fn)


def torch_shape(path: tuple[Any, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of the stacked leaf at ``path`` of ``shape`` ``(D, ...)`` as
    :func:`in_torch_layout` hands it to its inner transformation."""
    permutation = _torch_permutation(path, len(shape))
    if permutation is None:
        return shape
    return tuple(shape[axis] for axis in permutation)
