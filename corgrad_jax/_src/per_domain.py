"""Per-domain losses and gradients, stacked on a leading axis.

Three ways compute the same thing; which is fastest depends on the model and the
backend (``benchmarks/bench_train_step.py`` measures them in the trainer's step):

* ``"loop"``: ``jax.value_and_grad`` per domain, unrolled at trace time (D static), then
  stacked. On a 2-core CPU it measured fastest for ResNet18 and the MNIST CNN: XLA
  compiles D small backward passes that reuse one set of buffers.
* ``"vmap"``: ``jax.vmap(jax.value_and_grad(loss_fn))`` over the domain axis: one batched
  forward and backward; usually best on GPU/TPU where the larger batched kernels fill
  the device.
* ``"vjp"``: one forward pass over all domains (the loss vmapped over the domain axis),
  then ``jax.vjp`` pulled back with the D unit cotangents under ``vmap``.

All three need the loss of one domain to depend only on that domain's batch (true for
per-example losses and for frozen BatchNorm, not for BatchNorm in training mode across
a concatenated batch).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp

METHODS = ("loop", "vmap", "vjp")


def per_domain_gradients(
    loss_fn: Callable[..., Any],
    params: chex.ArrayTree,
    batch: chex.ArrayTree,
    *,
    method: str = "loop",
    has_aux: bool = False,
) -> tuple[Any, chex.ArrayTree]:
    """Losses and gradients of ``loss_fn`` for each of D domains, stacked on axis 0.

    Args:
      loss_fn: ``loss_fn(params, domain_batch) -> loss`` (or ``(loss, aux)`` with
        ``has_aux``), where ``domain_batch`` is one domain's slice of ``batch``.
      params: the parameters (any pytree).
      batch: a pytree whose leaves are stacked ``(D, B, ...)``.
      method: ``"loop"``, ``"vmap"`` or ``"vjp"`` (see the module docstring).
      has_aux: whether ``loss_fn`` returns ``(loss, aux)``; aux comes back stacked.

    Returns:
      ``(losses, grads)`` with ``losses`` of shape ``(D,)`` (or ``((D,), aux)`` with
      ``has_aux``) and every leaf of ``grads`` shaped ``(D, *param.shape)``: the input
      of :func:`corgrad` and the other aggregators.

    Example:
      >>> import jax.numpy as jnp
      >>> from corgrad_jax import per_domain_gradients
      >>> loss = lambda w, b: jnp.mean((b["x"] @ w - b["y"]) ** 2)
      >>> batch = {"x": jnp.ones((3, 8, 2)), "y": jnp.zeros((3, 8))}
      >>> losses, grads = per_domain_gradients(loss, jnp.ones(2), batch)
      >>> losses.shape, grads.shape
      ((3,), (3, 2))
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; expected one of {METHODS}.")
    sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None
             for leaf in jax.tree_util.tree_leaves(batch)}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            "per_domain_gradients: every leaf of `batch` must be stacked (D, B, ...) with "
            f"the same D; got leading sizes {sorted(sizes, key=str)}.")
    (num_domains,) = sizes
    value_and_grad = jax.value_and_grad(loss_fn, has_aux=has_aux)

    if method == "loop":
        results = [value_and_grad(params, jax.tree_util.tree_map(lambda x, d=d: x[d], batch))
                   for d in range(num_domains)]
        return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *results)
    if method == "vmap":
        return jax.vmap(value_and_grad, in_axes=(None, 0))(params, batch)

    def all_losses(p: chex.ArrayTree) -> Any:
        return jax.vmap(loss_fn, in_axes=(None, 0))(p, batch)

    if has_aux:
        losses, pullback, aux = jax.vjp(all_losses, params, has_aux=True)
    else:
        losses, pullback = jax.vjp(all_losses, params)
    (grads,) = jax.vmap(pullback)(jnp.eye(num_domains, dtype=losses.dtype))
    return ((losses, aux) if has_aux else losses), grads
