"""Tiny trainer configurations shared by the trainer's tests (kept small for 2 cores)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from experiments.training import TrainConfig

TINY_HPARAMS = {"batch_size": 8}


def tiny_config(output_dir: Path, algorithm: str = "erm", **overrides: Any) -> TrainConfig:
    """A few steps on RotatedMNIST with 8 examples per domain and small evaluations."""
    values: dict[str, Any] = dict(
        dataset="RotatedMNIST",
        algorithm=algorithm,
        test_envs=(0,),
        output_dir=str(output_dir),
        steps=4,
        checkpoint_freq=2,
        hparams=dict(TINY_HPARAMS),
        max_eval_examples=32,
    )
    values.update(overrides)
    return TrainConfig(**values)


def comparable(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records without their wall-clock fields."""
    return [{k: v for k, v in record.items() if k != "step_time"} for record in records]
