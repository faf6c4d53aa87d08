"""Table 2: the ablation ERM, PCGrad, L, L+S, L+S+D, on the embedded datasets.

The runs are a sweep of the trainer (:func:`experiments.sweep.run_sweep`, one sweep per
dataset, each run in its own directory), and the table is
:func:`experiments.collect_results.results_table`: DomainBed's training-domain
validation, mean ± std over trials. This module adds what the comparison with the
paper needs: per-trial averages, paired differences between consecutive rows of the
ablation, the smoothing statistics that show whether "D" ever fired, and a figure of the
gains over ERM next to the paper's.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments import collect_results, outputs
from experiments.sweep import SweepConfig, make_configs, run_sweep

ABLATION = ("erm", "pcgrad", "corgrad_layer", "corgrad_no_smoothing", "corgrad")
"""The rows of Table 2, in the paper's order."""

LABELS = {
    "erm": "ERM",
    "pcgrad": "PCGrad",
    "corgrad_layer": "L (corgrad_layer)",
    "corgrad_no_smoothing": "L+S (corgrad_no_smoothing)",
    "corgrad": "L+S+D (corgrad)",
}

PAPER_TABLE2 = {
    "erm": 50.0,
    "pcgrad": 50.9,
    "corgrad_layer": 51.6,
    "corgrad_no_smoothing": 52.4,
    "corgrad": 53.0,
}
"""The paper's Table 2: average accuracy (%) over VLCS, TerraIncognita and DomainNet
(ResNet-18, training-domain validation)."""


@dataclasses.dataclass(frozen=True)
class AblationSettings:
    """What the ablation runs.

    Attributes:
      test_envs: dataset -> the test environments held out (one at a time).
      trials: trial seeds 0 .. trials - 1 (data splits and seeds).
      steps: training steps per run.
      batch_size: examples per domain and step.
      checkpoint_freq: steps between evaluations (the trainer also evaluates step 0
        and the last step); training-domain validation picks among them.
      max_eval_examples: examples evaluated per split (None: all).
    """

    test_envs: Mapping[str, tuple[int, ...]]
    trials: int
    steps: int
    batch_size: int
    checkpoint_freq: int
    max_eval_examples: int | None


@dataclasses.dataclass(frozen=True)
class AblationResult:
    """The selected accuracies of every run and what the report says about them.

    Attributes:
      settings: what ran.
      table: the markdown of :func:`experiments.collect_results.results_table`.
      accuracies: ``(dataset, algorithm, test_env, trial) -> test accuracy`` (fraction)
        of the checkpoint chosen by training-domain validation.
      diagnostics: ``(dataset, algorithm) -> {name: mean over all training steps}`` for
        ``modification_frequency``, ``modification_ratio`` and ``dominant_fraction``.
      num_domains: dataset -> number of training domains N.
      reused_runs: runs found finished in the output folder and not trained again.
      total_runs: runs in the sweep.
      seconds: wall time of the sweep and the collection.
    """

    settings: AblationSettings
    table: str
    accuracies: dict[tuple[str, str, int, int], float]
    diagnostics: dict[tuple[str, str], dict[str, float]]
    num_domains: dict[str, int]
    reused_runs: int
    total_runs: int
    seconds: float

    @property
    def trials(self) -> list[int]:
        """The trial seeds that ran."""
        return sorted({key[3] for key in self.accuracies})

    def env_accuracies(self, dataset: str, algorithm: str, env: int) -> np.ndarray:
        """Test accuracies (%) of one setting, one per trial."""
        return np.array(
            [
                100 * self.accuracies[(dataset, algorithm, env, t)]
                for t in self.trials
                if (dataset, algorithm, env, t) in self.accuracies
            ]
        )

    def trial_averages(self, algorithm: str, datasets: Sequence[str] | None = None) -> np.ndarray:
        """Per trial: the accuracy (%) averaged over test envs, then over ``datasets``
        (all by default); trials missing a run are left out."""
        datasets = list(datasets or self.settings.test_envs)
        averages = []
        for trial in self.trials:
            per_dataset = []
            for dataset in datasets:
                values = [
                    self.accuracies.get((dataset, algorithm, env, trial))
                    for env in self.settings.test_envs[dataset]
                ]
                if any(v is None for v in values):
                    break
                per_dataset.append(100 * float(np.mean(values)))
            else:
                averages.append(float(np.mean(per_dataset)))
        return np.array(averages)


def _run_diagnostics(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Means over the run's steps of its logged diagnostics: each record holds the mean
    over the steps since the previous record, so records are weighted by that count."""
    previous, weights = -1, []
    for record in records:
        weights.append(record["step"] - previous)
        previous = record["step"]
    return {
        name: float(np.average([r[name] for r in records], weights=weights))
        for name in ("modification_frequency", "modification_ratio", "dominant_fraction")
    }


def run_ablation(
    settings: AblationSettings, output_dir: Path, *, log: Callable[[str], None] | None = None
) -> AblationResult:
    """Runs (or finishes) the ablation sweep under ``output_dir`` and collects it.

    Args:
      settings: what to run.
      output_dir: one sub-folder per dataset, one run directory per run; finished runs
        found there are not trained again (counted in ``reused_runs``).
      log: extra sink for the trainer's progress lines (they also go to stderr).
    """
    start = time.perf_counter()
    sweeps = [
        SweepConfig(
            output_dir=str(output_dir / dataset),
            datasets=(dataset,),
            algorithms=ABLATION,
            test_envs=tuple(envs),
            n_hparams=1,
            n_trials=settings.trials,
            steps=settings.steps,
            checkpoint_freq=settings.checkpoint_freq,
            hparams={"batch_size": settings.batch_size},
            max_eval_examples=settings.max_eval_examples,
        )
        for dataset, envs in settings.test_envs.items()
    ]
    configs = [config for sweep in sweeps for config in make_configs(sweep)]
    reused = sum((Path(c.output_dir) / outputs.DONE).exists() for c in configs)
    for sweep in sweeps:
        run_sweep(sweep, log=log)

    runs = [
        run
        for run in collect_results.load_runs(output_dir)
        if run.dataset in settings.test_envs
        and run.algorithm in ABLATION
        and run.test_envs[0] in settings.test_envs[run.dataset]
        and run.trial_seed < settings.trials
    ]
    selected = collect_results.select_hparams(runs)
    accuracies = {
        (dataset, algorithm, envs[0], trial): acc
        for (dataset, algorithm, envs, trial), acc in selected.items()
    }
    per_run: dict[tuple[str, str], list[dict[str, float]]] = {}
    num_domains: dict[str, int] = {}
    for config in configs:
        records = outputs.read_records(Path(config.output_dir) / outputs.RESULTS)
        if records:
            per_run.setdefault((config.dataset, config.algorithm), []).append(
                _run_diagnostics(records)
            )
            num_domains[config.dataset] = len(records[0]["environments"]) - len(config.test_envs)
    diagnostics = {
        key: {name: float(np.mean([d[name] for d in values])) for name in values[0]}
        for key, values in per_run.items()
    }
    return AblationResult(
        settings=settings,
        table=collect_results.results_table(runs),
        accuracies=accuracies,
        diagnostics=diagnostics,
        num_domains=num_domains,
        reused_runs=int(reused),
        total_runs=len(configs),
        seconds=time.perf_counter() - start,
    )


@dataclasses.dataclass(frozen=True)
class Step:
    """One row-to-row comparison of the ablation (e.g. L -> L+S).

    Attributes:
      before, after: the algorithms compared.
      paper: the paper's difference (points).
      mean, std: mean and std over trials of our paired per-trial differences (points).
      trials: number of paired trials.
    """

    before: str
    after: str
    paper: float
    mean: float
    std: float
    trials: int

    @property
    def standard_error(self) -> float:
        """``std / sqrt(trials - 1)``: the standard error of the mean difference
        (``std`` is the population std, as in the results table)."""
        return self.std / math.sqrt(self.trials - 1) if self.trials > 1 else float("nan")

    @property
    def resolved(self) -> bool:
        """Whether the difference is beyond twice its standard error (needs 2+ trials)."""
        return self.trials > 1 and abs(self.mean) > 2 * self.standard_error

    @property
    def same_direction(self) -> bool:
        """Whether our mean difference has the paper's sign."""
        return math.copysign(1.0, self.mean) == math.copysign(1.0, self.paper) and self.mean != 0


def ablation_steps(result: AblationResult) -> list[Step]:
    """Paired differences between consecutive rows, and from ERM to L+S+D."""
    pairs = [*zip(ABLATION[:-1], ABLATION[1:], strict=True), ("erm", "corgrad")]
    steps = []
    for before, after in pairs:
        a, b = result.trial_averages(before), result.trial_averages(after)
        count = min(len(a), len(b))
        differences = b[:count] - a[:count]
        steps.append(
            Step(
                before=before,
                after=after,
                paper=PAPER_TABLE2[after] - PAPER_TABLE2[before],
                mean=float(differences.mean()) if count else float("nan"),
                std=float(differences.std()) if count else float("nan"),
                trials=count,
            )
        )
    return steps


def plot_ablation(result: AblationResult, output_dir: Path) -> Path:
    """Writes ``table2_ablation.png``: gains over ERM (points), ours next to the paper's."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.2), layout="constrained")
    ax = figure.subplots()
    positions = np.arange(len(ABLATION))
    erm = result.trial_averages("erm")
    ours, spread = [], []
    for algorithm in ABLATION:
        values = result.trial_averages(algorithm)
        count = min(len(values), len(erm))
        gain = values[:count] - erm[:count]
        ours.append(float(gain.mean()) if count else float("nan"))
        spread.append(float(gain.std()) if count else 0.0)
    paper = [PAPER_TABLE2[a] - PAPER_TABLE2["erm"] for a in ABLATION]
    ax.bar(positions - 0.2, paper, 0.4, color="tab:grey", label="paper (VLCS/TerraInc/DomainNet)")
    datasets = ", ".join(f"{d} envs {list(e)}" for d, e in result.settings.test_envs.items())
    ax.bar(
        positions + 0.2,
        ours,
        0.4,
        yerr=spread,
        capsize=3,
        color="tab:green",
        label=f"this run ({datasets}; ± std over trials)",
    )
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(positions, [LABELS[a].split(" (")[0] for a in ABLATION])
    ax.set_ylabel("accuracy gain over ERM (points)")
    ax.set_title("Table 2 (ablation): gain over ERM, paired by trial")
    ax.legend(fontsize=8)
    path = output_dir / "table2_ablation.png"
    figure.savefig(path, dpi=110)
    return path


def summary(result: AblationResult) -> dict[str, Any]:
    """The numbers of Table 2, for JSON."""
    return {
        "settings": {
            **dataclasses.asdict(result.settings),
            "test_envs": {k: list(v) for k, v in result.settings.test_envs.items()},
        },
        "accuracies": [
            {"dataset": d, "algorithm": a, "test_env": e, "trial": t, "test_acc": acc}
            for (d, a, e, t), acc in sorted(result.accuracies.items())
        ],
        "averages": {a: result.trial_averages(a).tolist() for a in ABLATION},
        "paper": PAPER_TABLE2,
        "steps": [dataclasses.asdict(s) for s in ablation_steps(result)],
        "diagnostics": {f"{d}/{a}": v for (d, a), v in result.diagnostics.items()},
        "reused_runs": result.reused_runs,
        "total_runs": result.total_runs,
        "seconds": result.seconds,
    }
