"""experiments.training.parallel: meshes, domain-parallel gradients, multi-process runs,
dry runs.

Every multi-device check runs the trainer in a fresh process
(``tests/experiments/parallel_helpers.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P
from parallel_helpers import ROOT, result, run_processes, run_worker
from parallel_helpers import environment as _environment

from experiments.training import parallel

TINY = dict(
    dataset="RotatedMNIST",
    algorithm="corgrad",
    test_envs=[0, 1],  # 4 training domains
    steps=4,
    checkpoint_freq=2,
    hparams={"batch_size": 8},
    max_eval_examples=32,
)


def assert_same_metrics(records: list[dict], reference: list[dict]) -> None:
    """Same steps and accuracies, losses and diagnostics equal up to float rounding."""
    assert [r["step"] for r in records] == [r["step"] for r in reference]
    for record, expected in zip(records, reference, strict=True):
        assert record["loss"] == pytest.approx(expected["loss"], rel=2e-3)
        for key in expected:
            if key.endswith("_acc"):  # 32 examples: at most one near-tie prediction flips
                assert abs(record[key] - expected[key]) <= 1 / 32 + 1e-9, key
        # the modification frequency counts sign tests: rounding may flip a near-zero one
        assert record["modification_frequency"] == pytest.approx(
            expected["modification_frequency"], abs=0.02)
        assert record["args"] == expected["args"]


# -- the plan's rules, on this process's single device --------------------------------


def test_fsdp_splits_the_largest_divisible_dimension_of_large_leaves_only() -> None:
    plan = parallel.ShardingPlan(AbstractMesh((2, 4), ("domain", "data")), "fsdp")  # type: ignore[arg-type]
    assert plan.param_spec((3, 3, 64, 128)) == P(None, None, None, "data")
    assert plan.param_spec((4096, 10)) == P("data", None)
    assert plan.param_spec((9, 4999)) == P()  # large, but no dimension divisible by 4
    assert plan.param_spec((128,)) == P()  # small: replicated
    replicated = parallel.ShardingPlan(AbstractMesh((2, 4), ("domain", "data")))  # type: ignore[arg-type]
    assert replicated.param_spec((3, 3, 64, 128)) == P()


def test_the_algorithm_reads_contiguous_ranges_of_every_leaf_over_all_devices() -> None:
    plan = parallel.ShardingPlan(AbstractMesh((2, 4), ("domain", "data")))  # type: ignore[arg-type]
    everywhere = P(None, ("domain", "data"))
    assert plan.gradient_layout((5, 3, 3, 64, 128)) == ((5, 576, 128), everywhere)
    assert plan.gradient_layout((5, 24)) == ((5, 24, 1), everywhere)
    assert plan.gradient_layout((5, 10)) == ((5, 10), P())  # 8 divides no prefix: whole
    # the official variant cuts rows of axis 0 (PyTorch layout): only that axis is split
    assert plan.gradient_layout((5, 128, 64, 3, 3), keep_leading_axis=True) == (
        (5, 128, 576), everywhere)
    assert plan.gradient_layout((5, 3, 3, 64, 128), keep_leading_axis=True) == (
        (5, 3, 3, 64, 128), P())


def test_the_default_device_count_is_the_most_that_divide_the_batch() -> None:
    assert parallel.fitting_device_count(8, 64) == 8
    assert parallel.fitting_device_count(3, 64) == 2  # 3 GPUs, 64 examples: 2 of them
    assert parallel.fitting_device_count(6, 30, domain_parallel=2) == 6  # (2, 3) | 30
    assert parallel.fitting_device_count(6, 32, domain_parallel=2) == 4  # (2, 2)
    assert parallel.fitting_device_count(1, 8, domain_parallel=2) == 0
    with pytest.raises(parallel.PlanError, match="domain_parallel 2 does not divide the 1 dev"):
        parallel.make_plan(num_domains=4, batch_size=8, domain_parallel=2)


def test_plans_that_do_not_fit_are_refused_with_the_reason() -> None:
    four = [jax.devices()[0]] * 4  # only counted: every check fails before a mesh is built
    with pytest.raises(parallel.PlanError, match="does not divide the 5 training domains"):
        parallel.make_plan(num_domains=5, batch_size=8, domain_parallel=2, devices=four)
    with pytest.raises(parallel.PlanError, match="batch_size 6 .* not divisible by the 4"):
        parallel.make_plan(num_domains=4, batch_size=6, num_devices=4, devices=four)
    with pytest.raises(parallel.PlanError, match=r"num_devices 8 is not in \[1, 4\]"):
        parallel.make_plan(num_domains=4, batch_size=8, num_devices=8, devices=four)
    with pytest.raises(parallel.PlanError, match="domain_parallel 3 does not divide the 4 dev"):
        parallel.make_plan(num_domains=3, batch_size=8, num_devices=4, domain_parallel=3,
                           devices=four)
    with pytest.raises(parallel.PlanError, match="unknown param_sharding 'zero'"):
        parallel.make_plan(num_domains=4, batch_size=8, param_sharding="zero", devices=four)


def test_a_single_device_plan_loads_the_whole_batch() -> None:
    plan = parallel.make_plan(num_domains=3, batch_size=4)
    assert plan.local_rows(3, 4) == (slice(0, 3), slice(0, 4))
    batch = plan.global_batch(
        lambda d, e: {"y": np.arange(12, dtype=np.int32).reshape(3, 4)[d, e]}, 3, 4)
    np.testing.assert_array_equal(np.asarray(batch["y"]), np.arange(12).reshape(3, 4))


# -- training on 4 and 8 virtual devices -----------------------------------------------


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One 1-device run and three layouts on 4 devices, in one process."""
    root = tmp_path_factory.mktemp("four")
    layouts = {
        "one": dict(num_devices=1),
        "data": {},
        "domain2_fsdp": dict(domain_parallel=2, param_sharding="fsdp"),
        "domain4": dict(domain_parallel=4),
        "saved_on_four": dict(domain_parallel=2, param_sharding="fsdp", stop_after=3),
        "saved_on_one": dict(num_devices=1, stop_after=3),
    }
    runs = [dict(TINY, output_dir=str(root / name), **layout) for name, layout in layouts.items()]
    result = run_worker(4, runs)
    assert result["devices"] == 4 and result["processes"] == 1
    return {"root": root, **dict(zip(layouts, result["runs"], strict=True))}


def test_data_parallel_training_matches_one_device(four_devices: dict[str, Any]) -> None:
    reference = four_devices["one"]
    assert len(reference) == 3  # records at steps 0, 2, 3
    assert_same_metrics(four_devices["data"], reference)


def test_domain_parallel_training_matches_one_device(four_devices: dict[str, Any]) -> None:
    assert_same_metrics(four_devices["domain2_fsdp"], four_devices["one"])
    assert_same_metrics(four_devices["domain4"], four_devices["one"])


def test_eight_devices_domain_and_data_parallel_match_one_device(
    tmp_path: Path, four_devices: dict[str, Any]
) -> None:
    runs = [dict(TINY, output_dir=str(tmp_path / "eight"), domain_parallel=4,
                 param_sharding="fsdp")]  # mesh (4, 2): a domain per pair of devices
    result = run_worker(8, runs)
    assert result["devices"] == 8
    assert_same_metrics(result["runs"][0], four_devices["one"])


def test_a_checkpoint_saved_on_four_devices_resumes_on_one(four_devices: dict[str, Any]) -> None:
    run_dir = four_devices["root"] / "saved_on_four"
    assert four_devices["saved_on_four"] == []  # stopped after step 3, before its record
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["0", "2"]
    resumed = run_worker(1, [dict(TINY, output_dir=str(run_dir))])
    assert resumed["devices"] == 1
    assert_same_metrics(resumed["runs"][0], four_devices["one"])


def test_a_checkpoint_saved_on_one_device_resumes_on_four_with_fsdp(
    four_devices: dict[str, Any]
) -> None:
    run_dir = four_devices["root"] / "saved_on_one"
    assert four_devices["saved_on_one"] == []
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["0", "2"]
    resumed = run_worker(4, [dict(TINY, output_dir=str(run_dir), domain_parallel=2,
                                  param_sharding="fsdp")])
    assert resumed["devices"] == 4
    assert_same_metrics(resumed["runs"][0], four_devices["one"])


def test_domain_parallel_gradients_are_computed_and_kept_per_domain_group() -> None:
    script = textwrap.dedent(
        """
        import jax, numpy as np
        from experiments.training import parallel, steps as trainer
        from experiments.training.optimizer import build_optimizer
        from experiments.hparams_registry import get_hparams
        from experiments.models import get_model
        hparams = get_hparams("corgrad", "RotatedMNIST", hparams_seed=0, trial_seed=0)
        model = get_model("mnist_cnn", 10, hparams)
        tx = build_optimizer("corgrad", hparams, seed=0, total_steps=10, num_domains=4)
        state = trainer.create_train_state(jax.random.PRNGKey(0), model, tx, (28, 28, 1))
        rng = np.random.default_rng(0)
        batch = {"x": rng.random((4, 8, 28, 28, 1), np.float32),
                 "y": rng.integers(0, 10, (4, 8)).astype(np.int32)}
        key = jax.random.PRNGKey(1)
        one = jax.jit(trainer.domain_gradients)(state, batch, key)
        plan = parallel.make_plan(num_domains=4, batch_size=8, domain_parallel=4)
        gradients = jax.jit(trainer.domain_gradients, static_argnames="plan")
        losses, grads = gradients(plan.put_state(state),
                                  jax.device_put(batch, plan.batch_sharding), key, plan=plan)
        for leaf in jax.tree.leaves(grads):
            assert leaf.sharding.spec[0] == "domain", leaf.sharding
            shards = leaf.addressable_shards
            assert len(shards) == 8 and {s.data.shape[0] for s in shards} == {1}
            assert sorted({s.index[0].start for s in shards}) == [0, 1, 2, 3]
        for a, b in zip(jax.tree.leaves((losses, grads)), jax.tree.leaves(one)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
        print("RESULT {}")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], env=_environment(8), cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert result(done.stdout) == {}


def test_the_partitioned_algorithm_moves_a_fraction_of_the_stacked_gradients() -> None:
    """Communication of the compiled step (elements of every collective's result), with
    the algorithm split over the devices (``corgrad_jax.partitioned``, the trainer's)
    and without: unsplit, every domain group receives the other groups' leaves to cut
    their pieces, several times the stacked tree."""
    script = textwrap.dedent(
        r"""
        import json, math, re
        import jax, numpy as np
        import corgrad_jax
        from experiments.training import optimizer as algorithms, parallel, steps as trainer
        from experiments.hparams_registry import get_hparams
        from experiments.models import get_model
        split = corgrad_jax.partitioned
        def volume(hlo):
            total = 0
            for line in hlo.splitlines():
                match = re.search(r"= (.*?) (all-gather|all-reduce|reduce-scatter|all-to-all|"
                                  r"collective-permute)(-start)?\(", line)
                for dims in re.findall(r"f32\[([0-9,]*)\]", match.group(1) if match else ""):
                    total += math.prod(int(d) for d in dims.split(",") if d)
            return total
        report = {}
        for algorithm, domain_parallel, param_sharding in [
                ("corgrad", 4, "replicated"), ("corgrad", 2, "fsdp"),
                ("corgrad_official", 2, "replicated"), ("corgrad", 1, "replicated")]:
            for partitioned in (True, False):
                algorithms.corgrad_jax.partitioned = (
                    split if partitioned else lambda tx, *args, **kwargs: tx)
                hparams = get_hparams(algorithm, "RotatedMNIST", hparams_seed=0, trial_seed=0)
                model = get_model("mnist_cnn", 10, hparams)
                tx = algorithms.build_optimizer(algorithm, hparams, seed=0, total_steps=10,
                                                num_domains=4)
                state = trainer.create_train_state(jax.random.PRNGKey(0), model, tx,
                                                   (28, 28, 1))
                plan = parallel.make_plan(num_domains=4, batch_size=8,
                                          domain_parallel=domain_parallel,
                                          param_sharding=param_sharding)
                shape = lambda *s: jax.ShapeDtypeStruct(
                    s[:-1], s[-1], sharding=plan.batch_sharding)
                batch = {"x": shape(4, 8, 28, 28, 1, np.float32), "y": shape(4, 8, np.int32)}
                step = jax.jit(trainer.train_step, static_argnames="plan")
                hlo = step.lower(plan.put_state(state), batch, jax.random.PRNGKey(1),
                                 plan=plan).compile().as_text()
                stacked = 4 * sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(state.params))
                report[f"{algorithm} {domain_parallel} {param_sharding} {partitioned}"] = (
                    volume(hlo) / stacked)
        print("RESULT " + json.dumps(report))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], env=_environment(4), cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    report = result(done.stdout)  # volume / (D x params), per layout and partitioned
    assert len(report) == 8
    for layout in ("corgrad 4 replicated", "corgrad 2 fsdp", "corgrad_official 2 replicated"):
        assert report[f"{layout} True"] < 2.5, report  # measured: 0.6 to 2.2
        assert report[f"{layout} True"] * 3 < report[f"{layout} False"], report  # about 8
    # data-parallel: the gradients' all-reduce is the stacked tree either way
    assert report["corgrad 1 replicated True"] < 2.5, report


# -- two processes ----------------------------------------------------------------------


def test_two_processes_train_as_one_job_and_only_process_0_writes(
    tmp_path: Path, four_devices: dict[str, Any]
) -> None:
    row_log = tmp_path / "rows.jsonl"
    spec = {"runs": [dict(TINY, output_dir=str(tmp_path / "data_parallel")),
                     dict(TINY, output_dir=str(tmp_path / "domain_parallel"),
                          domain_parallel=2, param_sharding="fsdp")],
            "row_log": str(row_log)}
    results = run_processes(2, 2, spec)
    assert [(r["devices"], r["processes"], r["process"]) for r in results] == [(4, 2, 0),
                                                                               (4, 2, 1)]
    for name, records in zip(("data_parallel", "domain_parallel"), results[0]["runs"], strict=True):
        assert_same_metrics(records, four_devices["one"])
        assert results[1]["runs"] == results[0]["runs"]
        written = (tmp_path / name / "results.jsonl").read_text().splitlines()
        assert len(written) == 3  # one writer: no duplicated records
    # Each process loaded only the rows its own devices hold, never the whole batch.
    rows: dict[int, set[tuple]] = {0: set(), 1: set()}
    for line in row_log.read_text().splitlines():
        entry = json.loads(line)
        rows[entry["process"]].add(tuple(entry["rows"]))
    data_rows = {(0, 4, 0, 4), (0, 4, 4, 8)}  # all domains, half the examples each
    domain_rows = {(0, 2, 0, 8), (2, 4, 0, 8)}  # half the domains, all their examples
    assert rows[0] | rows[1] == data_rows | domain_rows
    assert len(rows[0]) == len(rows[1]) == 2 and not rows[0] & rows[1]


# -- the dry run ------------------------------------------------------------------------


def _dry_run(*flags: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "experiments.train", "--dry_run", *flags]
    return subprocess.run(command, env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_dry_run_prints_the_plan_for_eight_devices_without_training(tmp_path: Path) -> None:
    done = _dry_run("--algorithm", "corgrad", "--test_envs", "0", "1", "--num_devices", "8",
                    "--domain_parallel", "2", "--param_sharding", "fsdp",
                    "--output_dir", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout.replace("PartitionSpec(", "P(")  # JAX < 0.9.2 spells specs in full
    assert "mesh: 8 devices (cpu), axes (domain=2, data=4); param_sharding=fsdp" in out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("  [")}
    # x: (4 domains, 64, 28, 28, 1) float32 over 2 x 4 devices = 4 * 64 * 784 * 4 / 8 bytes
    assert lines["['x']"][-2:] == ["98.0", "KiB"] and "P('domain'," in " ".join(lines["['x']"])
    stacked = [line for line in out.splitlines() if line.startswith("  ['Conv_1']['kernel']")]
    params = stacked[0]  # (3, 3, 64, 128), fsdp over "data"
    assert "P(None, None, None, 'data')" in params and params.endswith("72.0 KiB")
    # the stacked gradient (4, 3, 3, 64, 128) as the algorithm reads it: (4, 576, 128),
    # contiguous ranges over all 8 devices: 4 * 294,912 bytes / 8
    assert "(4, 576, 128)" in stacked[-1] and "P(None, ('domain', 'data'))" in stacked[-1]
    assert stacked[-1].endswith("144.0 KiB")
    assert not (tmp_path / "run").exists()


def test_dry_run_plans_a_folder_dataset_known_by_name_without_its_files() -> None:
    done = _dry_run("--dataset", "PACS", "--algorithm", "erm", "--num_devices", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "11,180,103 parameters" in done.stdout  # ResNet-18 with a 7-class head
    assert "axes (domain=1, data=2)" in done.stdout


def test_dry_run_refuses_a_layout_that_does_not_fit() -> None:
    done = _dry_run("--num_devices", "2", "--domain_parallel", "2")  # 5 training domains
    assert done.returncode == 2
    assert "domain_parallel 2 does not divide the 5 training domains" in done.stderr
