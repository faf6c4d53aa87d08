"""Reading run directories: this trainer's and DomainBed's, side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments import run_dir as outputs
from experiments.results import records
from experiments.results.records import RecordError, load_sweep
from experiments.results.summary import environment_names


def domainbed_line(step: int, test_envs: list[int], accs: list[float]) -> str:
    """A line of DomainBed's ``train.py``: its keys, no ``environments``."""
    record = {
        "args": {
            "algorithm": "ERM", "checkpoint_freq": None, "data_dir": "/data", "dataset": "VLCS",
            "holdout_fraction": 0.2, "hparams": None, "hparams_seed": 0, "output_dir": "x",
            "save_model_every_checkpoint": False, "seed": 1, "skip_model_save": False,
            "steps": 5001, "task": "domain_generalization", "test_envs": test_envs,
            "trial_seed": 0, "uda_holdout_fraction": 0,
        },
        "epoch": 0.0, "hparams": {"batch_size": 32}, "loss": 1.6, "mem_gb": 7.5, "step": step,
        "step_time": 0.9,
    }  # fmt: skip
    for env, acc in enumerate(accs):
        record[f"env{env}_in_acc"] = acc
        record[f"env{env}_out_acc"] = acc / 2
    return json.dumps(record, sort_keys=True) + "\n"


def ours(step: int, test_envs: list[int]) -> dict:
    """A record of this trainer: lowercase algorithm, ``environments``, diagnostics."""
    return {
        "step": step, "epoch": 1.0, "loss": 0.5, "step_time": 0.1,
        "environments": ["0", "15", "30"], "modification_frequency": 0.25,
        "env0_in_acc": 0.5, "env0_out_acc": 0.4, "env1_in_acc": 0.9, "env1_out_acc": 0.8,
        "env2_in_acc": 0.7, "env2_out_acc": 0.6,
        "args": {"dataset": "RotatedMNIST", "algorithm": "corgrad", "test_envs": test_envs,
                 "hparams_seed": 0, "trial_seed": 1},
    }  # fmt: skip


def test_domainbed_runs_are_read_next_to_ours(tmp_path: Path) -> None:
    domainbed_run = tmp_path / "sweep" / "0657090f9a83ff76efe083a104fde93a"
    domainbed_run.mkdir(parents=True)
    (domainbed_run / "results.jsonl").write_text(
        domainbed_line(0, [1, 2], [0.6, 0.4, 0.3, 0.5])
        + domainbed_line(300, [1, 2], [1, 0.5, 0.7, 0.9])
    )
    (domainbed_run / "done").write_text("done")  # DomainBed writes no newline
    (domainbed_run / "out.txt").write_text("...")
    our_run = tmp_path / "sweep" / "RotatedMNIST" / "corgrad_env0"  # a level deeper
    our_run.mkdir(parents=True)
    outputs.append_record(our_run / outputs.RESULTS, ours(0, [0]))
    (tmp_path / "sweep" / "crashed_before_a_record").mkdir()

    sweep = load_sweep([tmp_path / "sweep"])
    assert [run.directory for run in sweep.runs] == [domainbed_run, our_run]
    assert [run.finished for run in sweep.runs] == [True, False]
    first, second, third = sweep.records
    assert (first.dataset, first.algorithm, first.test_envs, first.step) == (
        "VLCS",
        "ERM",
        (1, 2),
        0,
    )
    assert second.in_accuracy == (1.0, 0.5, 0.7, 0.9) and second.out_accuracy == (
        0.5,
        0.25,
        0.35,
        0.45,
    )
    assert first.environments is None and third.environments == ("0", "15", "30")
    assert (third.algorithm, third.trial_seed, third.num_environments) == ("corgrad", 1, 3)
    assert environment_names("VLCS", sweep.records) == ("C", "L", "S", "V")  # DomainBed's
    assert environment_names("RotatedMNIST", sweep.records) == ("0", "15", "30")  # the record's
    # A run directory given itself, or twice, is read once.
    assert len(load_sweep([our_run, tmp_path / "sweep"]).runs) == 2


def test_a_torn_last_line_is_skipped_and_a_bad_line_elsewhere_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "run" / "results.jsonl"
    path.parent.mkdir()
    full = json.dumps(ours(0, [0])) + "\n"
    path.write_text(full + full[:40])  # killed in the middle of a write
    assert len(records.read_records(path)) == 1
    path.write_text(full + full[:40] + "\n")  # a torn line that ends a file all the same
    assert len(records.read_records(path)) == 1
    path.write_text(full[:40] + "\n" + full)
    with pytest.raises(RecordError, match=r"results.jsonl:1: not a JSON line"):
        load_sweep([tmp_path])
    path.write_text(full + json.dumps({"step": 3}) + "\n")
    with pytest.raises(RecordError, match=r"results.jsonl:2: not a results record .*'args'"):
        load_sweep([tmp_path])
    bad = ours(0, [3])
    path.write_text(json.dumps(bad) + "\n")
    with pytest.raises(RecordError, match=r"test_envs \[3\] do not fit the record's 3"):
        load_sweep([tmp_path])
    path.write_text("")
    assert load_sweep([tmp_path]).runs == ()
    with pytest.raises(RecordError, match="is not a directory"):
        load_sweep([tmp_path / "nowhere"])

