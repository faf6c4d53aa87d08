"""``--dtype bfloat16``: convolutions and dense layers compute in bfloat16; parameters,
optimizer state, BatchNorm statistics, per-domain gradients and the loss stay float32."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from trainer_helpers import tiny_config

from experiments import run_dir as outputs
from experiments import train
from experiments.cli import ConfigError
from experiments.models import get_model
from experiments.training import TrainConfig, steps
from experiments.training.checkpoints import Checkpoints
from experiments.training.loop import build_model_and_optimizer

MODELS = [("mnist_cnn", (28, 28, 1)), ("resnet18", (32, 32, 3))]


def _quiet(line: str) -> None:
    del line


def _state_and_batch(name: str, shape: tuple[int, ...], dtype: str) -> tuple[Any, dict]:
    model = get_model(name, 10, {}, dtype=dtype)
    state = steps.create_train_state(jax.random.key(0), model, optax.adam(1e-3), shape)
    rng = np.random.default_rng(0)
    batch = {
        "x": jnp.asarray(rng.standard_normal((3, 8, *shape)), jnp.float32),
        "y": jnp.asarray(rng.integers(0, 10, (3, 8)), jnp.int32),
    }
    return state, batch


def _operand_dtypes(jaxpr: jax.extend.core.ClosedJaxpr, primitive: str) -> set[str]:
    """The dtypes of the operands of every ``primitive`` equation, nested jaxprs too."""
    found: set[str] = set()

    def visit(inner: jax.extend.core.Jaxpr) -> None:
        for equation in inner.eqns:
            if equation.primitive.name == primitive:
                found.update(str(var.aval.dtype) for var in equation.invars)
        for sub in jax.extend.core.subjaxprs(inner):
            visit(sub)

    visit(jaxpr.jaxpr)
    return found


@pytest.mark.parametrize("name, shape", MODELS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_train_step_computes_convolutions_and_matmuls_in_the_dtype(
    name: str, shape: tuple[int, ...], dtype: str
) -> None:
    state, batch = _state_and_batch(name, shape, dtype)
    jaxpr = jax.make_jaxpr(steps.train_step)(state, batch, jax.random.key(1))
    assert _operand_dtypes(jaxpr, "conv_general_dilated") == {dtype}  # forward and backward
    assert _operand_dtypes(jaxpr, "dot_general") >= {dtype}  # the classifier
    leaves = jax.tree.leaves((state.params, state.opt_state, state.batch_stats))
    assert {leaf.dtype for leaf in leaves if jnp.issubdtype(leaf.dtype, jnp.floating)} == {
        jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("name, shape", MODELS)
def test_bfloat16_per_domain_gradients_and_losses_are_float32_near_the_float32_ones(
    name: str, shape: tuple[int, ...]
) -> None:
    results = {}
    for dtype in ("float32", "bfloat16"):
        state, batch = _state_and_batch(name, shape, dtype)
        losses, grads = jax.jit(steps.domain_gradients)(state, batch, jax.random.key(1))
        assert losses.dtype == jnp.float32
        assert {leaf.dtype for leaf in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
        flat = np.concatenate([np.asarray(leaf, np.float64).reshape(3, -1)
                               for leaf in jax.tree.leaves(grads)], axis=1)
        results[dtype] = np.asarray(losses, np.float64), flat
    (losses32, grads32), (losses16, grads16) = results["float32"], results["bfloat16"]
    np.testing.assert_allclose(losses16, losses32, rtol=2e-2)
    error = np.linalg.norm(grads16 - grads32, axis=1) / np.linalg.norm(grads32, axis=1)
    # bfloat16 keeps 8 bits of mantissa: each domain's gradient differs from the float32
    # one by a few percent (about 10% measured on random data), and is not the same.
    assert np.all(error < 0.25) and np.all(error > 1e-3), error


def test_a_bfloat16_run_trains_and_writes_the_records_of_a_float32_run(tmp_path: Path) -> None:
    # As test_train's ColoredMNIST test: the loss falls within a few steps.
    options: dict[str, Any] = dict(dataset="ColoredMNIST", test_envs=(2,), steps=25,
                                   checkpoint_freq=24, hparams={"batch_size": 32},
                                   max_eval_examples=128)
    half = train.run(tiny_config(tmp_path / "bf16", "corgrad", dtype="bfloat16", **options),
                     log=_quiet)
    options.update(steps=2, checkpoint_freq=1)  # records of the same keys, sooner
    full = train.run(tiny_config(tmp_path / "f32", "corgrad", **options), log=_quiet)
    assert half[-1]["loss"] < half[0]["loss"] - 0.1
    assert np.mean([half[-1]["env0_out_acc"], half[-1]["env1_out_acc"]]) > 0.7
    assert sorted(half[0]) == sorted(half[-1]) == sorted(full[0]) == sorted(full[-1])
    assert half[0]["args"]["dtype"] == "bfloat16"
    assert "dtype" not in full[0]["args"]  # the default: args.json as before the flag
    assert half[0]["loss"] == pytest.approx(full[0]["loss"], rel=2e-2)


def _initial_state(config: TrainConfig) -> steps.TrainState:
    """The train state a run of ``config`` starts from (its model, its optimizer)."""
    config = config.resolved()
    spec = config.dataset_spec()
    model, tx = build_model_and_optimizer(config, spec, config.run_hparams())
    return steps.create_train_state(jax.random.key(0), model, tx, spec.input_shape)


def test_checkpoints_restore_across_dtypes_but_a_run_resumes_in_its_own(
    tmp_path: Path,
) -> None:
    config = tiny_config(tmp_path / "run", "erm", steps=2, checkpoint_freq=1)
    train.run(config, log=_quiet)
    # The state is float32 whatever the compute dtype: a float32 run's checkpoint
    # restores into the state of a bfloat16 model, array for array.
    half = _initial_state(dataclasses.replace(config, dtype="bfloat16"))
    checkpoints = Checkpoints(tmp_path / "run" / outputs.CHECKPOINTS)
    step, restored = checkpoints.restore_newest(half, log=_quiet)
    reference = checkpoints.restore(1, _initial_state(config))
    checkpoints.close()
    assert step == 1
    jax.tree.map(np.testing.assert_array_equal, (restored.params, restored.opt_state),
                 (reference.params, reference.opt_state))
    assert not np.array_equal(restored.params["Dense_0"]["kernel"],
                              half.params["Dense_0"]["kernel"])
    assert restored.apply_fn(
        {"params": restored.params}, jnp.zeros((1, 28, 28, 1)), train=False
    ).dtype == jnp.bfloat16  # the bfloat16 model, with the float32 run's weights
    # The dtype changes the results, so it is one of the run's arguments: the trainer
    # refuses to resume the float32 run in bfloat16.
    with pytest.raises(ConfigError, match="dtype 'bfloat16' here, None there"):
        train.run(dataclasses.replace(config, dtype="bfloat16"), log=_quiet)
