"""A new algorithm, dataset or model is one registry entry: the CLI, the hparams registry,
the trainer, the sweep and the results table take it with no other change."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import pytest

import corgrad_jax
from experiments import algorithms, collect_results, data, models, sweep, train
from experiments.data.mnist import load_mnist_environments
from experiments.hparams import PROBABILITY, HParam
from experiments.hparams_registry import get_hparams
from experiments.training import TrainConfig


class TinyLinear(nn.Module):
    """A linear classifier on flattened images: the smallest model a run can train."""

    num_classes: int

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        del train
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


def _load_half_rotated(spec: data.DatasetSpec, data_dir: str | None, **options: Any) -> Any:
    del data_dir
    return dataclasses.replace(load_mnist_environments("RotatedMNIST", **options),
                               name=spec.name, environments=spec.environments)


@pytest.fixture
def registered() -> Iterator[None]:
    """One new entry in each registry, removed afterwards."""
    algorithms.register(algorithms.Algorithm(
        name="damped_mean",
        display_name="Damped mean",
        transformation="mean_gradients() scaled by damping",
        build=lambda hparams, *, seed, total_steps, num_domains: optax.chain(
            corgrad_jax.mean_gradients(), optax.scale(float(hparams["damping"]))),
        hparams={"damping": HParam(0.5, lambda r: float(r.uniform(0.1, 1.0)), PROBABILITY)},
    ))
    models.register(models.Model(
        name="tiny_linear", build=lambda num_classes, hparams, *, dtype: TinyLinear(num_classes)))
    data.register(dataclasses.replace(
        data.get_dataset_spec("RotatedMNIST"), name="HalfRotated", load=_load_half_rotated,
        model="tiny_linear", checkpoint_freq=3))
    try:
        yield
    finally:
        del algorithms.ALGORITHMS["damped_mean"]
        del models.MODELS["tiny_linear"]
        del data.DATASETS["HalfRotated"]


def test_a_new_entry_of_each_registry_trains_sweeps_and_reports(
    registered: None, tmp_path: Path
) -> None:
    hparams = get_hparams("damped_mean", "HalfRotated", hparams_seed=0, trial_seed=0)
    assert hparams["damping"] == 0.5 and hparams["batch_size"] == 64  # entry + dataset's
    argv = ["--dataset", "HalfRotated", "--algorithm", "damped_mean", "--steps", "4",
            "--hparams", json.dumps({"damping": 0.25, "batch_size": 8}),
            "--max_eval_examples", "16", "--output_dir", str(tmp_path / "run")]
    assert train.main(argv) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").open()]
    assert [r["step"] for r in records] == [0, 3]  # the dataset's checkpoint_freq
    assert records[0]["hparams"]["damping"] == 0.25
    assert "model" not in records[0]["args"]  # the dataset's default model: tiny_linear

    config = sweep.SweepConfig(
        output_dir=str(tmp_path / "sweep"), datasets=("HalfRotated",),
        algorithms=("damped_mean",), test_env_choices=(0,), n_trials=1,
        run=TrainConfig(steps=2, hparams={"batch_size": 8}, max_eval_examples=16))
    sweep.run_sweep(config)
    table = collect_results.results_table(collect_results.load_runs(tmp_path / "sweep"))
    assert "| Damped mean |" in table and "HalfRotated" in table


def test_a_model_is_chosen_by_name(tmp_path: Path, registered: None) -> None:
    config = TrainConfig(dataset="RotatedMNIST", model="tiny_linear", steps=2,
                         hparams={"batch_size": 8}, max_eval_examples=16,
                         output_dir=str(tmp_path))
    records = train.run(config, log=lambda line: None)
    assert records[-1]["args"]["model"] == "tiny_linear"
    params = models.get_model("tiny_linear", 10, {}).init(
        jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    assert [leaf.shape for leaf in jax.tree.leaves(params)] == [(10,), (784, 10)]
