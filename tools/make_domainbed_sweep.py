"""Writes a synthetic DomainBed sweep and DomainBed's own report of it (golden fixtures).

The sweep has the layout and record format of DomainBed's ``sweep.py``/``train.py``
(one directory per run named by an md5 hash, ``results.jsonl`` with DomainBed's keys,
``done``), over five of DomainBed's datasets and several of its algorithms plus one it
does not know, runs with one and with two test environments, several hparams draws and
trial seeds. Accuracies are ``correct / total`` counts drawn around realistic learning
curves. It is built to exercise what model selection is sensitive to:

* ties: equal validation accuracy at two checkpoints of a run (the first one wins),
  between two hparams draws (the highest ``hparams_seed`` wins; this also ties the
  oracle), and between two steps of leave-one-out (the earliest wins);
* missing data: runs killed early (no ``done``, last checkpoints missing), runs with two
  test environments missing entirely or missing a record in the middle (that step of
  leave-one-out does not count), runs with one test environment missing, a run whose
  ``results.jsonl`` is empty and one without it, an algorithm absent from some
  datasets, a trial seed with only some test environments (DomainBed's averages table
  averages it over those), a dataset with only single-test-env runs (leave-one-out: X).

Outputs (``tests/fixtures``):

* ``domainbed_sweep.json``: the sweep, compact (split sizes and correct counts);
  :func:`expand_sweep` writes it out as run directories;
* ``domainbed_results.txt``, ``domainbed_results.tex``: what DomainBed's
  ``domainbed/scripts/collect_results.py`` prints for it, plain and ``--latex``.

DomainBed's reporting path needs numpy, tqdm and torch (CPU) but none of torchvision,
wilds, timm, backpack or PIL, which DomainBed imports at module level; the runner below
puts empty stand-ins for those five in ``sys.modules`` before running
``collect_results.py``. It runs DomainBed several times with ``os.listdir`` shuffled
(DomainBed reads runs in directory order) and checks that the output does not depend on
that order, so the expected text holds on any filesystem. In a separate venv::

    pip install numpy tqdm torch==2.13.0
    python tools/make_domainbed_sweep.py --domainbed PATH/TO/DomainBed \\
        --python PATH/TO/venv/bin/python

The fixtures of this repository were made with DomainBed at commit
``b93c22a1cfc3b2428398272c1a116c8de1f4139e``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
SWEEP_FILE = "domainbed_sweep.json"
TEXT_FILE = "domainbed_results.txt"
LATEX_FILE = "domainbed_results.tex"

# name: (images per environment, classes, test accuracy per environment at the end of
# training, validation accuracy of the training environments, steps, checkpoint_freq)
DATASETS: dict[str, tuple[tuple[int, ...], int, tuple[float, ...], float, int, int]] = {
    "ColoredMNIST": ((23334, 23333, 23333), 2, (0.72, 0.73, 0.10), 0.74, 5000, 1000),
    "VLCS": ((1415, 2656, 3282, 3376), 5, (0.975, 0.64, 0.73, 0.77), 0.85, 5000, 1000),
    "PACS": ((2048, 2344, 1670, 3929), 7, (0.85, 0.80, 0.96, 0.77), 0.95, 5000, 1000),
    "OfficeHome": ((2427, 4365, 4439, 4357), 65, (0.61, 0.53, 0.75, 0.77), 0.80, 5000, 1000),
    "TerraIncognita": ((4741, 9736, 3970, 5883), 10, (0.50, 0.43, 0.56, 0.38), 0.90, 5000, 1000),
}
# dataset: (algorithms in the order the sweep runs them, hparams draws, trial seeds,
# with runs of two test environments)
PLAN: dict[str, tuple[tuple[str, ...], int, int, bool]] = {
    "VLCS": (("SANDMask", "CorGrad", "ERM", "CORAL", "IRM"), 3, 3, True),
    "ColoredMNIST": (("IRM", "ERM", "CorGrad"), 3, 3, True),
    "PACS": (("CORAL", "ERM", "CorGrad"), 2, 3, True),
    "OfficeHome": (("ERM", "IRM"), 2, 2, True),
    "TerraIncognita": (("ERM",), 2, 2, False),
}
ALGORITHM_OFFSETS = {"ERM": 0.0, "IRM": -0.015, "CORAL": 0.008, "SANDMask": -0.01, "CorGrad": 0.01}
HOLDOUT_FRACTION = 0.2


def split_sizes(images: int) -> tuple[int, int]:
    """DomainBed's split of an environment: ``out`` holds ``int(images * 0.2)``."""
    out = int(images * HOLDOUT_FRACTION)
    return images - out, out


def test_env_combinations(num_environments: int, pairs: bool) -> list[list[int]]:
    """DomainBed's ``all_test_env_combinations`` order: [0], [0, 1], [0, 2], ..., [1], ..."""
    combinations = []
    for i in range(num_environments):
        combinations.append([i])
        if pairs:
            combinations += [[i, j] for j in range(i + 1, num_environments)]
    return combinations


def _counts(rng: np.random.Generator, sizes: list[int], accuracies: list[float]) -> list[int]:
    return [
        int(rng.binomial(n, min(max(p, 0.0), 1.0))) for n, p in zip(sizes, accuracies, strict=True)
    ]


def _curve(step: int, steps: int, chance: float, final: float) -> float:
    return chance + (final - chance) * (1.0 - math.exp(-5.0 * step / steps))


def build_sweep(seed: int = 0) -> dict[str, Any]:
    """The compact sweep: split sizes per dataset and, per run, correct counts."""
    rng = np.random.default_rng(seed)
    sweep: dict[str, Any] = {"splits": {}, "runs": []}
    for dataset, (algorithms, n_hparams, n_trials, pairs) in PLAN.items():
        images, classes, test_final, val_final, steps, freq = DATASETS[dataset]
        num_envs = len(images)
        sizes = [split_sizes(n) for n in images]
        in_sizes, out_sizes = [s[0] for s in sizes], [s[1] for s in sizes]
        sweep["splits"][dataset] = {"in": in_sizes, "out": out_sizes}
        chance = 1.0 / classes
        checkpoints = list(range(0, steps, freq)) + [steps - 1]
        for trial in range(n_trials):
            for algorithm in algorithms:
                quality = rng.normal(0.0, 0.02, size=n_hparams)
                tie_hparams = n_hparams >= 3 and rng.random() < 0.35
                if tie_hparams:  # the tied draws are the best ones
                    quality[0] = quality[2] = quality.max() + 0.01
                for test_envs in test_env_combinations(num_envs, pairs):
                    per_seed = []
                    for hparams_seed in range(n_hparams):
                        offset = ALGORITHM_OFFSETS[algorithm] + quality[hparams_seed]
                        overfit = rng.uniform(0.0, 0.04)
                        records = []
                        for step in checkpoints:
                            t = step / steps
                            in_acc, out_acc = [], []
                            for env in range(num_envs):
                                if env in test_envs:
                                    final = test_final[env] + offset - 0.02 * (len(test_envs) - 1)
                                    acc = _curve(step, steps, chance, final) - overfit * t
                                    acc += rng.normal(0.0, 0.01)
                                    in_acc.append(acc)
                                    out_acc.append(acc + rng.normal(0.0, 0.01))
                                else:
                                    in_acc.append(_curve(step, steps, chance, 0.995))
                                    out_acc.append(
                                        _curve(step, steps, chance, val_final + offset)
                                        + rng.normal(0.0, 0.01)
                                    )
                            records.append(
                                [
                                    step,
                                    _counts(rng, in_sizes, in_acc),
                                    _counts(rng, out_sizes, out_acc),
                                ]
                            )
                        per_seed.append(records)
                    if tie_hparams:  # draw 2 copies draw 0, but for the test env's in split
                        for source, target in zip(per_seed[0], per_seed[2], strict=True):
                            kept = (
                                {e: target[1][e] for e in test_envs} if len(test_envs) == 1 else {}
                            )
                            target[1][:] = source[1]
                            target[2][:] = source[2]
                            for e, count in kept.items():
                                target[1][e] = count
                    for hparams_seed, records in enumerate(per_seed):
                        sweep["runs"].append(
                            {
                                "dataset": dataset,
                                "algorithm": algorithm,
                                "test_envs": test_envs,
                                "hparams_seed": hparams_seed,
                                "trial_seed": trial,
                                "records": records,
                                "done": True,
                            }
                        )
    _add_checkpoint_ties(sweep, rng)
    _add_leave_one_out_ties(sweep, rng)
    _remove_data(sweep, rng)
    for run in sweep["runs"]:
        run["dir"] = run_directory_name(run)
    sweep["runs"].sort(key=lambda run: run["dir"])
    return sweep


def _validation(run: dict[str, Any], record: list[Any], splits: dict[str, list[int]]) -> float:
    envs = [e for e in range(len(record[2])) if e not in run["test_envs"]]
    return float(np.mean([record[2][e] / splits["out"][e] for e in envs]))


def _add_checkpoint_ties(sweep: dict[str, Any], rng: np.random.Generator) -> None:
    """In some runs, the best checkpoint's out counts repeat at a neighbour."""
    for run in sweep["runs"]:
        if len(run["test_envs"]) != 1 or rng.random() > 0.15:
            continue
        splits = sweep["splits"][run["dataset"]]
        records = run["records"]
        best = max(range(len(records)), key=lambda i: _validation(run, records[i], splits))
        other = best + 1 if best + 1 < len(records) else best - 1
        records[other][2] = list(records[best][2])


def _add_leave_one_out_ties(sweep: dict[str, Any], rng: np.random.Generator) -> None:
    """For some (dataset, algorithm, hparams, trial), the runs with two test envs reach
    their best in accuracies at both of their last two checkpoints."""
    keys = {
        (r["dataset"], r["algorithm"], r["hparams_seed"], r["trial_seed"])
        for r in sweep["runs"]
        if len(r["test_envs"]) == 2
    }
    chosen = {key for key in sorted(keys) if rng.random() < 0.2}
    for run in sweep["runs"]:
        key = (run["dataset"], run["algorithm"], run["hparams_seed"], run["trial_seed"])
        if len(run["test_envs"]) != 2 or key not in chosen:
            continue
        for env in run["test_envs"]:
            best = max(record[1][env] for record in run["records"])
            for record in run["records"][-2:]:
                record[1][env] = best


def _remove_data(sweep: dict[str, Any], rng: np.random.Generator) -> None:
    """Killed runs, missing runs, a lost record, an empty and a missing results file."""
    kept = []
    for run in sweep["runs"]:
        pair = len(run["test_envs"]) == 2
        draw = rng.random()
        if run["dataset"] == "PACS" and run["trial_seed"] == 2 and run["test_envs"][0] >= 2:
            continue  # trial 2 of PACS only reached test envs 0 and 1
        if draw < (0.03 if pair else 0.02):
            continue  # never ran
        if draw < 0.08:  # killed: the last checkpoints are missing, and done
            cut = int(rng.integers(1, len(run["records"])))
            run["records"] = run["records"][:cut]
            run["done"] = False
        elif pair and draw < 0.10 and len(run["records"]) > 3:  # a record lost mid-run
            del run["records"][int(rng.integers(1, len(run["records"]) - 1))]
        kept.append(run)
    sweep["runs"] = kept
    sweep["runs"].append(_empty_run(kept[0], "empty", []))
    sweep["runs"].append(_empty_run(kept[1], "missing", None))


def _empty_run(like: dict[str, Any], tag: str, records: list[Any] | None) -> dict[str, Any]:
    run = dict(like, records=records, done=False, hparams_seed=like["hparams_seed"] + 100)
    run["tag"] = tag
    return run


def run_args(run: dict[str, Any]) -> dict[str, Any]:
    """The ``args`` of a run as DomainBed's ``train.py`` records them."""
    steps = DATASETS[run["dataset"]][4]
    return {
        "algorithm": run["algorithm"],
        "checkpoint_freq": None,
        "data_dir": "./domainbed/data/",
        "dataset": run["dataset"],
        "holdout_fraction": HOLDOUT_FRACTION,
        "hparams": None,
        "hparams_seed": run["hparams_seed"],
        "output_dir": "",
        "save_model_every_checkpoint": False,
        "seed": int(
            hashlib.md5(
                str((run["dataset"], run["algorithm"], run["test_envs"], run["hparams_seed"],
                     run["trial_seed"])).encode()
            ).hexdigest(),
            16,
        ) % (2**31),
        "skip_model_save": False,
        "steps": steps,
        "task": "domain_generalization",
        "test_envs": run["test_envs"],
        "trial_seed": run["trial_seed"],
        "uda_holdout_fraction": 0,
    }  # fmt: skip


def run_directory_name(run: dict[str, Any]) -> str:
    """An md5 hash of the run's arguments, as DomainBed's sweep names run directories."""
    text = str(sorted(run_args(run).items())) + run.get("tag", "")
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def expand_sweep(sweep: dict[str, Any], directory: Path) -> None:
    """Writes the compact ``sweep`` as DomainBed run directories under ``directory``."""
    for run in sweep["runs"]:
        run_dir = directory / run["dir"]
        run_dir.mkdir(parents=True)
        (run_dir / "out.txt").write_text("Environment:\n")
        if run["records"] is None:
            continue
        splits = sweep["splits"][run["dataset"]]
        args = dict(run_args(run), output_dir=f"sweep/{run['dir']}")
        lines = []
        for step, in_counts, out_counts in run["records"]:
            record: dict[str, Any] = {
                "args": args,
                "epoch": step / 150.0,
                "hparams": {"batch_size": 32, "lr": 5e-05, "resnet_dropout": 0.0},
                "loss": 1.0 / (1.0 + step / 500.0),
                "mem_gb": 7.5,
                "step": step,
                "step_time": 0.25,
            }
            for env, (correct_in, correct_out) in enumerate(
                zip(in_counts, out_counts, strict=True)
            ):
                record[f"env{env}_in_acc"] = correct_in / splits["in"][env]
                record[f"env{env}_out_acc"] = correct_out / splits["out"][env]
            lines.append(json.dumps(record, sort_keys=True) + "\n")
        (run_dir / "results.jsonl").write_text("".join(lines))
        if run["done"]:
            (run_dir / "done").write_text("done")


_RUNNER = r"""
import importlib.abc, importlib.machinery, os, random, runpy, sys, types

class _Empty(types.ModuleType):
    __path__ = []
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {})

class _StandIns(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    NAMES = ("torchvision", "wilds", "timm", "backpack", "PIL")
    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in self.NAMES:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None
    def create_module(self, spec):
        return _Empty(spec.name)
    def exec_module(self, module):
        pass

sys.meta_path.insert(0, _StandIns())
domainbed, order, *flags = sys.argv[1:]
sys.path.insert(0, domainbed)
if order != "listdir":
    listdir = os.listdir
    def shuffled(path="."):
        names = sorted(listdir(path))
        random.Random(int(order)).shuffle(names)
        return names
    os.listdir = shuffled
sys.argv = ["collect_results.py", *flags]
runpy.run_module("domainbed.scripts.collect_results", run_name="__main__")
"""


def run_domainbed(python: str, domainbed: Path, sweep_dir: Path, order: str, latex: bool) -> str:
    """DomainBed's ``collect_results.py`` output for ``sweep_dir``.

    Args:
      order: ``"listdir"``, or a seed by which the run directories are shuffled.
    """
    flags = ["--input_dir", str(sweep_dir)] + (["--latex"] if latex else [])
    result = subprocess.run(
        [python, "-c", _RUNNER, str(domainbed), order, *flags],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, PYTHONHASHSEED="0"),
    )
    return result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domainbed", type=Path, required=True, help="a DomainBed checkout")
    parser.add_argument("--python", required=True, help="a Python with numpy, tqdm, torch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--orders", type=int, default=5, help="shuffled orders to check")
    args = parser.parse_args()

    sweep = build_sweep(args.seed)
    FIXTURES.mkdir(exist_ok=True)
    text = json.dumps(sweep, separators=(",", ":"))
    (FIXTURES / SWEEP_FILE).write_text(text.replace('},{"', '},\n{"') + "\n")
    with tempfile.TemporaryDirectory() as temporary:
        sweep_dir = Path(temporary) / "sweep"
        expand_sweep(json.loads((FIXTURES / SWEEP_FILE).read_text()), sweep_dir)
        for latex, name in ((False, TEXT_FILE), (True, LATEX_FILE)):
            outputs = {
                order: run_domainbed(args.python, args.domainbed, sweep_dir, order, latex)
                for order in ["listdir", *map(str, range(args.orders))]
            }
            if len(set(outputs.values())) != 1:
                raise SystemExit(f"DomainBed's {name} depends on the order of the runs")
            (FIXTURES / name).write_text(outputs["listdir"])
            print(f"{name}: the same for {len(outputs)} orders of the run directories")
    print(
        f"{len(sweep['runs'])} runs, {sum(len(r['records'] or []) for r in sweep['runs'])} records"
    )


if __name__ == "__main__":
    main()
