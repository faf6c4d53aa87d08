"""Bad input gets one clear error line and exit code 2, and overwrites nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from trainer_helpers import tiny_config

from experiments import collect_results, sweep, train

REPO = Path(__file__).resolve().parents[2]


def _fails(main, argv: list[str], capsys: pytest.CaptureFixture[str], message: str) -> str:
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "error:" in lines[0] and message in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--dataset", "MNIST-M"], "unknown dataset 'MNIST-M'"),
        (["--algorithm", "fishr"], "unknown algorithm 'fishr'"),
        (["--test_envs", "6"], "test env 6 is out of range: RotatedMNIST has 6 environments"),
        (["--dataset", "ColoredMNIST", "--test_envs", "-1"], "test env -1 is out of range"),
        (["--dataset", "ColoredMNIST", "--test_envs", "0", "1"], "fewer than 2"),
        (["--dataset", "PACS"], "dataset PACS is read from disk: pass --data_dir"),
        (["--dataset", "PACS", "--data_dir", "/no/such/dir"], "/no/such/dir does not exist"),
        (["--dataset", "PACS", "--data_dir", ".", "--test_envs", "4"], "test env 4"),
        (["--steps", "0"], "steps must be at least 1"),
        (["--steps", "ten"], "invalid int value: 'ten'"),
        (["--hparams", "{lr: 1}"], "not valid JSON"),
        (["--hparams", '{"momentum": 0.9}'], "unknown hparams momentum"),
        (["--hparams", '{"lr": "abc"}'], "hparam lr: 'abc' is not a float > 0"),
        (["--hparams", '{"lr": -0.1}'], "hparam lr: -0.1 is not a float > 0"),
        (["--hparams", '{"batch_size": 6.5}'], "hparam batch_size: 6.5 is not an integer >= 1"),
        (["--hparams", '{"batch_size": 0}'], "hparam batch_size: 0 is not an integer >= 1"),
        (["--hparams", '{"weight_decay": null}'], "hparam weight_decay: None is not a float >= 0"),
        (["--hparams", '{"resnet_dropout": 1}'], "resnet_dropout: 1 is not a float in [0, 1)"),
        (["--algorithm", "corgrad", "--hparams", '{"alpha": 1.5}'],
         "hparam alpha: 1.5 is not a float in [0, 1]"),
        (["--algorithm", "corgrad", "--hparams", '{"num_slices": true}'],
         "hparam num_slices: True is not an integer >= 1"),
        (["--algorithm", "corgrad", "--hparams", '{"alpha_schedule": "cosine"}'],
         "hparam alpha_schedule: 'cosine' is not one of 'log_decay', 'constant'"),
        (["--algorithm", "and_mask", "--hparams", '{"tau": "1"}'],
         "hparam tau: '1' is not a float in [0, 1]"),
        (["--holdout_fraction", "1.5"], "holdout_fraction must lie in (0, 1)"),
        (["--gradient_method", "jvp"], "unknown gradient method 'jvp'"),
        (["--dtype", "float16"], "unknown dtype 'float16'; expected one of float32, bfloat16"),
        (["--augmentation", "gpu"], "unknown augmentation 'gpu'; expected one of device, host"),
        (["--param_sharding", "zero"], "unknown param_sharding 'zero'"),
        (["--distributed", "maybe"], "unknown distributed mode 'maybe'"),
        (["--distributed", "on"], "--distributed on: jax.distributed.initialize() failed"),
        (["--num_devices", "0"], "num_devices must be at least 1"),
        (["--num_devices", "2"], "num_devices 2 is not in [1, 1]: this job sees 1 device"),
        (["--domain_parallel", "2"], "domain_parallel 2 does not divide the 1 devices"),
        (["--model", "vit"], "unknown model 'vit'; expected one of mnist_cnn, resnet18"),
        (["--pretrained", "w.safetensors"], "--pretrained needs a model with weights; mnist_cnn"),
    ],
)
def test_train_rejects_bad_input_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    output_dir = tmp_path / "run"
    _fails(train.main, [*flags, "--output_dir", str(output_dir)], capsys, message)
    assert not output_dir.exists()  # nothing written


def test_a_malformed_distributed_environment_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    _fails(train.main, ["--output_dir", str(tmp_path / "run")], capsys,
           "JAX_NUM_PROCESSES='two' is not a non-negative integer")
    assert not (tmp_path / "run").exists()


def test_a_finished_run_is_not_clobbered_by_other_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train.run(tiny_config(tmp_path, "erm"), log=lambda line: None)
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    argv = ["--algorithm", "erm", "--steps", "5", "--checkpoint_freq", "2",
            "--hparams", '{"batch_size": 8}', "--max_eval_examples", "32",
            "--output_dir", str(tmp_path)]  # fmt: skip
    line = _fails(train.main, argv, capsys, "holds a run with different arguments")
    assert "steps 5 here, 4 there" in line
    after = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    assert after == before


def test_a_directory_holding_something_else_is_not_written_into(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("precious")
    _fails(train.main, ["--output_dir", str(tmp_path)], capsys, "is not an empty directory")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_sweep_and_collect_results_reject_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fails(
        sweep.main,
        ["--output_dir", str(tmp_path / "s"), "--algorithms", "erm", "sgd"],
        capsys,
        "unknown algorithm 'sgd'",
    )
    _fails(
        sweep.main,
        ["--output_dir", str(tmp_path / "s"), "--test_env_choices", "9"],
        capsys,
        "test env 9 is out of range",
    )
    _fails(
        sweep.main,
        ["--output_dir", str(tmp_path / "s"), "--datasets", "Nope"],
        capsys,
        "unknown dataset 'Nope'",
    )
    assert not (tmp_path / "s").exists()
    _fails(collect_results.main, [str(tmp_path / "missing")], capsys, "is not a directory")


def test_the_command_exits_with_code_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "experiments.train", "--dataset", "Nope"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "python -m experiments.train: error: unknown dataset 'Nope'; expected one of "
        + result.stderr.split("expected one of ")[1].strip()
    ]
    assert result.stdout == ""
