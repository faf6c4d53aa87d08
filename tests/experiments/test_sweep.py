"""Tests of :mod:`experiments.sweep`: the run list, test-env combinations, flags, skipping
and resuming runs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from trainer_helpers import TINY_HPARAMS, comparable

from experiments import collect_results, sweep
from experiments import run_dir as outputs
from experiments.seeding import seed_hash
from experiments.sweep import SweepConfig, all_test_env_combinations, make_configs, run_sweep
from experiments.training import DeviceLayout, TrainConfig


def _sweep(output_dir: Path) -> SweepConfig:
    return SweepConfig(
        output_dir=str(output_dir),
        algorithms=("erm", "corgrad"),
        test_env_choices=(0, 1),
        single_test_envs=True,
        n_trials=1,
        run=TrainConfig(steps=4, checkpoint_freq=2, hparams=dict(TINY_HPARAMS),
                        max_eval_examples=32),
    )


def test_every_test_env_algorithm_hparams_draw_and_trial_is_a_run(tmp_path: Path) -> None:
    configs = make_configs(
        SweepConfig(
            output_dir=str(tmp_path),
            datasets=("ColoredMNIST",),
            algorithms=("erm", "pcgrad"),
            n_hparams=2,
            n_trials=3,
        )
    )
    # ColoredMNIST has 3 environments: a pair would leave 1 training domain, so singles
    assert len(configs) == 3 * 2 * 3 * 2  # test envs x algorithms x hparams x trials
    assert len({c.output_dir for c in configs}) == len(configs)
    keys = {(c.test_envs, c.algorithm, c.hparams_seed, c.trial_seed) for c in configs}
    assert len(keys) == len(configs)
    for config in configs:  # DomainBed's seed of a run
        assert config.seed == seed_hash(
            "ColoredMNIST",
            config.algorithm,
            list(config.test_envs),
            config.hparams_seed,
            config.trial_seed,
        )
    assert [c.trial_seed for c in configs] == sorted(c.trial_seed for c in configs)


def test_a_sweep_skips_finished_runs_and_resumes_interrupted_ones(tmp_path: Path) -> None:
    lines: list[str] = []
    run_dirs = run_sweep(_sweep(tmp_path), log=lines.append)
    assert len(run_dirs) == 4 and all((d / outputs.DONE).exists() for d in run_dirs)
    records = {d: outputs.read_records(d / outputs.RESULTS) for d in run_dirs}
    table = collect_results.results_table(collect_results.load_runs(tmp_path))
    assert "| ERM |" in table and "| CorGrad |" in table and "| Algorithm | 0 | 15 | Avg |" in table

    # Interrupt one run after its checkpoint of step 2, then sweep again.
    interrupted = run_dirs[1]
    (interrupted / outputs.DONE).unlink()
    shutil.rmtree(interrupted / outputs.CHECKPOINTS / "3")
    mtimes = {d: os.stat(d / outputs.RESULTS).st_mtime_ns for d in run_dirs}
    lines.clear()
    run_sweep(_sweep(tmp_path), log=lines.append)
    assert sum("finished already" in line for line in lines) == 3
    assert sum("resumed from the checkpoint of step 2" in line for line in lines) == 1
    for d in run_dirs:
        assert comparable(outputs.read_records(d / outputs.RESULTS)) == comparable(records[d])
        if d != interrupted:
            assert os.stat(d / outputs.RESULTS).st_mtime_ns == mtimes[d]


def test_the_device_layout_reaches_every_run_but_not_its_arguments(tmp_path: Path) -> None:
    layout = DeviceLayout(num_devices=4, param_sharding="fsdp", distributed="off")
    configs = make_configs(SweepConfig(output_dir=str(tmp_path), algorithms=("erm",),
                                       n_trials=1, test_env_choices=(0, 1),
                                       single_test_envs=True, run=TrainConfig(layout=layout)))
    assert len(configs) == 2
    for config in configs:
        assert config.layout == layout
        assert "layout" not in config.run_args() and "num_devices" not in config.run_args()


def test_by_default_each_environment_is_held_out_alone_and_in_pairs(tmp_path: Path) -> None:
    assert list(all_test_env_combinations(4)) == [
        (0,), (0, 1), (0, 2), (0, 3), (1,), (1, 2), (1, 3), (2,), (2, 3), (3,)]  # DomainBed's
    assert list(all_test_env_combinations(6, (0, 3))) == [(0,), (0, 3), (3,)]
    assert list(all_test_env_combinations(6, (0, 3), single=True)) == [(0,), (3,)]
    configs = make_configs(SweepConfig(output_dir=str(tmp_path), algorithms=("erm",),
                                       n_trials=1))
    assert len(configs) == 6 + 15  # RotatedMNIST: 6 singles, 15 pairs
    assert configs[1].test_envs == (0, 1)
    assert configs[1].output_dir.endswith("RotatedMNIST-erm-env0_1-hp0-trial0")


def test_the_sweep_takes_the_flags_of_train_with_their_meaning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = sweep.build_parser().parse_args([
        "--output_dir", str(tmp_path), "--steps", "7", "--hparams", '{"lr": 0.01}',
        "--num_devices", "2", "--test_env_choices", "1", "2", "--single_test_envs",
    ])  # fmt: skip
    config = sweep.sweep_from_args(args)
    assert config.run == TrainConfig(steps=7, hparams={"lr": 0.01},
                                     layout=DeviceLayout(num_devices=2))
    assert config.test_env_choices == (1, 2) and config.single_test_envs
    legacy = sweep.sweep_from_args(sweep.build_parser().parse_args(
        ["--output_dir", str(tmp_path), "--test_envs", "0", "3"]))
    assert legacy.test_env_choices == (0, 3) and legacy.single_test_envs
    assert "--test_envs is deprecated" in capsys.readouterr().err
