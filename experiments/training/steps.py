"""The pure functions of training: ``create_train_state``, ``train_step``, ``eval_step``.

As in flax/examples: the state is a :class:`flax.training.train_state.TrainState`
(``apply_fn`` and ``tx`` are static fields), the steps are pure functions of it, jitted
once per process (:data:`jitted_train_step`, :data:`jitted_eval_step`), on one device or
on a mesh (:mod:`experiments.training.parallel`).

One training step: every training domain's minibatch (stacked on axis 0) gives one loss
and one gradient, stacked ``(D, *param.shape)`` by
:func:`corgrad_jax.per_domain_gradients`; ``tx`` (the algorithm chained with Adam)
turns them into one update. BatchNorm statistics (ResNet-18) are frozen: they live in
``batch_stats``, outside the optimizer and outside the stacked gradients.

Mixed precision (``--dtype bfloat16``): the model computes its convolutions and dense
layers in bfloat16 from float32 parameters; the logits are cast to float32 before the
loss, and the gradients with respect to the float32 parameters are float32, so the
algorithm, Adam and the checkpoints see float32 only.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

import corgrad_jax
from experiments.training.optimizer import diagnostics
from experiments.training.parallel import ShardingPlan

PyTree = Any


class Probe(Hashable, Protocol):
    """Extra statistics of every step's stacked per-domain gradients, computed inside the
    jitted step (e.g. the analysis's diagnostics of every granularity at once).

    A probe is hashable (a static argument of the step); its state travels with the
    loop, not with the checkpoints.
    """

    def init(self, params: PyTree) -> PyTree:
        """The probe's first state."""
        ...

    def __call__(
        self, grads: PyTree, params: PyTree, state: PyTree
    ) -> tuple[PyTree, dict[str, jax.Array]]:
        """``(new state, named scalar statistics)`` of one step's stacked gradients."""
        ...


class TrainState(train_state.TrainState):
    """Flax's ``TrainState`` plus the frozen ``batch_stats`` (empty for MNIST_CNN)."""

    batch_stats: PyTree


@functools.partial(jax.jit, static_argnums=(0, 1))
def init_variables(model: nn.Module, input_shape: tuple[int, ...], key: jax.Array) -> PyTree:
    """``model``'s variables for inputs of ``input_shape`` (H, W, C), in one compilation."""
    return model.init(key, jnp.zeros((1, *input_shape), jnp.float32), train=False)


def create_train_state(
    key: jax.Array,
    model: nn.Module,
    tx: optax.GradientTransformation,
    input_shape: tuple[int, ...],
    variables: PyTree | None = None,
    *,
    init_tx: optax.GradientTransformation | None = None,
) -> TrainState:
    """Initializes the model on ``input_shape`` (H, W, C) and the optimizer.

    Args:
        key: PRNG key of the initialization.
        model: a Flax module called as ``model.apply(variables, x, train=...)``.
        tx: the optimizer, taking stacked per-domain gradients.
        input_shape: one example's shape.
        variables: ready-made variables (e.g. pretrained) to use instead of ``key``'s.
        init_tx: the transformation whose ``init`` makes the optimizer state, when not
            ``tx``: the same algorithm with another ``seed``, whose ``update`` is the
            same function, so that runs with different seeds share one compilation.
    """
    if variables is None:
        variables = init_variables(model, tuple(input_shape), key)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        apply_fn=model.apply,
        params=params,
        tx=tx,
        opt_state=(init_tx or tx).init(params),
        batch_stats=variables.get("batch_stats", {}),
    )


def _variables(state: TrainState, params: PyTree) -> dict[str, PyTree]:
    variables = {"params": params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    return variables


def domain_gradients(
    state: TrainState,
    batch: dict[str, jax.Array],
    dropout_key: jax.Array,
    *,
    gradient_method: str = "loop",
    plan: ShardingPlan | None = None,
) -> tuple[jax.Array, PyTree]:
    """The cross-entropy of every training domain and its gradient, stacked ``(D, ...)``.

    Domain d's dropout uses the d-th split of ``dropout_key``; ``gradient_method`` is that
    of :func:`corgrad_jax.per_domain_gradients`. On a ``plan`` whose mesh splits the
    domain axis, each group of devices computes the gradients of its own domains
    (:meth:`~experiments.training.parallel.ShardingPlan.map_domains`).
    """
    num_domains = batch["y"].shape[0]
    stacked = {**batch, "dropout_key": jax.random.split(dropout_key, num_domains)}

    def domain_loss(params: PyTree, domain_batch: dict[str, jax.Array]) -> jax.Array:
        logits = state.apply_fn(
            _variables(state, params),
            domain_batch["x"],
            train=True,
            rngs={"dropout": domain_batch["dropout_key"]},
        ).astype(jnp.float32)  # the loss is float32 whatever the model's compute dtype
        return optax.softmax_cross_entropy_with_integer_labels(logits, domain_batch["y"]).mean()

    def gradients(params: PyTree, domains: dict[str, jax.Array]) -> tuple[jax.Array, PyTree]:
        return corgrad_jax.per_domain_gradients(
            domain_loss, params, domains, method=gradient_method
        )

    if plan is not None:  # each group of devices takes its own domains
        gradients = plan.map_domains(gradients)
    return gradients(state.params, stacked)


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    dropout_key: jax.Array,
    probe_state: PyTree = None,
    *,
    gradient_method: str = "loop",
    plan: ShardingPlan | None = None,
    probe: Probe | None = None,
) -> tuple[TrainState, dict[str, jax.Array], PyTree]:
    """One update from one minibatch per training domain.

    Args:
        state: the train state.
        batch: ``{"x": (D, B, H, W, C), "y": (D, B)}``.
        dropout_key: this step's key; domain d's dropout uses its d-th split.
        probe_state: the state of ``probe``.
        gradient_method: how :func:`corgrad_jax.per_domain_gradients` computes the
            per-domain gradients (``"loop"``, ``"vmap"`` or ``"vjp"``).
        plan: where the arrays live on a device mesh (:mod:`experiments.training.
            parallel`): the domains are split over its domain axis, the algorithm runs
            under its mesh (so :func:`corgrad_jax.partitioned` splits the stacked
            gradients over all devices) and the new state is pinned to its state specs;
            None leaves placement to XLA (one device).
        probe: statistics of the stacked gradients to add to the metrics.

    Returns:
        The new state; the metrics ``loss`` (mean of the domain losses), the algorithm's
        diagnostics (modification frequency and ratio, dominant fraction) and the
        probe's; and the probe's new state.
    """
    losses, grads = domain_gradients(
        state, batch, dropout_key, gradient_method=gradient_method, plan=plan
    )
    probed: dict[str, jax.Array] = {}
    if probe is not None:
        probe_state, probed = probe(grads, state.params, probe_state)
    if plan is None:
        state = state.apply_gradients(grads=grads)
    else:  # the algorithm splits the stacked gradients over the mesh (partitioned)
        with jax.sharding.use_abstract_mesh(plan.mesh.abstract_mesh):
            state = state.apply_gradients(grads=grads)
        state = plan.constrain_state(state)
    return state, {"loss": jnp.mean(losses), **diagnostics(state.opt_state), **probed}, probe_state


def eval_step(state: TrainState, batch: dict[str, jax.Array]) -> jax.Array:
    """The number of correct predictions in ``batch`` (``x``, ``y``, 0/1 ``mask``)."""
    logits = state.apply_fn(_variables(state, state.params), batch["x"], train=False)
    logits = logits.astype(jnp.float32)
    correct = (jnp.argmax(logits, axis=-1) == batch["y"]) & batch["mask"]
    return jnp.sum(correct, dtype=jnp.int32)


jitted_train_step = jax.jit(
    train_step, static_argnames=("gradient_method", "plan", "probe"), donate_argnums=0
)
""":func:`train_step`, compiled once per process for each model, algorithm and layout."""
jitted_eval_step = jax.jit(eval_step)
""":func:`eval_step`, compiled once per process for each model (the state's optimizer
removed, so every algorithm shares it)."""
