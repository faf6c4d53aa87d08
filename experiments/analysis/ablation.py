"""Table 2: the ablation ERM, PCGrad, L, L+S, L+S+D, on the embedded datasets.

The runs are sweeps of the trainer (:class:`experiments.sweep.SweepConfig`, one per
dataset, each test environment held out alone, each run in its own directory), and the
table is :func:`experiments.collect_results.results_table`: DomainBed's
training-domain validation, mean ± std over trials. This module adds what the
comparison with the paper (``docs/algorithm.md``, Sec. 10) needs: per-trial averages,
paired differences between consecutive rows of the ablation, the smoothing statistics
that show whether "D" ever fired, and a figure of the gains over ERM next to the
paper's. The rows' labels come from the algorithm registry (``paper_label``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments import collect_results
from experiments import run_dir as files
from experiments.algorithms import get_algorithm
from experiments.analysis import paper
from experiments.data import get_dataset_spec
from experiments.sweep import SweepConfig, make_configs, run_sweep
from experiments.training import TrainConfig

ABLATION = ("erm", "pcgrad", "corgrad_layer", "corgrad_no_smoothing", "corgrad")
"""The rows of Table 2, in the paper's order."""


def paper_label(algorithm: str) -> str:
    """The algorithm's row in the paper's Table 2 (``L+S``), from its registry entry."""
    entry = get_algorithm(algorithm)
    return entry.paper_label or entry.display_name


def label(algorithm: str) -> str:
    """The paper's label, with the algorithm's name where they differ
    (``L+S (corgrad_no_smoothing)``, ``ERM``)."""
    short = paper_label(algorithm)
    return short if short.lower() == algorithm else f"{short} ({algorithm})"


@dataclasses.dataclass(frozen=True)
class AblationResult:
    """The selected accuracies of every run and what the report says about them.

    Attributes:
      sweeps: what ran: one sweep per dataset, of the :data:`ABLATION` algorithms, each
        test environment of ``test_env_choices`` held out alone, sharing one ``run``.
      table: the markdown of :func:`experiments.collect_results.results_table`.
      accuracies: ``(dataset, algorithm, test_env, trial) -> test accuracy`` (fraction)
        of the checkpoint chosen by training-domain validation.
      diagnostics: ``(dataset, algorithm) -> {name: mean over all training steps}`` for
        ``modification_frequency``, ``modification_ratio`` and ``dominant_fraction``.
      num_domains: dataset -> number of training domains N.
      reused_runs: runs found finished in the output folder and not trained again.
      total_runs: runs in the sweeps.
      seconds: wall time of the sweeps and the collection.
    """

    sweeps: tuple[SweepConfig, ...]
    table: str
    accuracies: dict[tuple[str, str, int, int], float]
    diagnostics: dict[tuple[str, str], dict[str, float]]
    num_domains: dict[str, int]
    reused_runs: int
    total_runs: int
    seconds: float

    @property
    def test_envs(self) -> dict[str, tuple[int, ...]]:
        """Dataset -> the test environments held out (one at a time)."""
        return {
            sweep.datasets[0]: tuple(
                sweep.test_env_choices
                if sweep.test_env_choices is not None
                else range(len(get_dataset_spec(sweep.datasets[0]).environments))
            )
            for sweep in self.sweeps
        }

    @property
    def run(self) -> TrainConfig:
        """The arguments every run shares (steps, batch size, evaluation)."""
        return self.sweeps[0].run

    @property
    def n_trials(self) -> int:
        """The number of trial seeds asked for."""
        return self.sweeps[0].n_trials

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
        test_envs = self.test_envs
        datasets = list(datasets or test_envs)
        averages = []
        for trial in self.trials:
            per_dataset = []
            for dataset in datasets:
                values = [
                    self.accuracies.get((dataset, algorithm, env, trial))
                    for env in test_envs[dataset]
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


def _collect_diagnostics(
    configs: Sequence[TrainConfig],
) -> tuple[dict[tuple[str, str], dict[str, float]], dict[str, int]]:
    """Per (dataset, algorithm): the runs' mean diagnostics; per dataset: N."""
    per_run: dict[tuple[str, str], list[dict[str, float]]] = {}
    num_domains: dict[str, int] = {}
    for config in configs:
        records = files.read_records(Path(config.output_dir) / files.RESULTS)
        if records:
            per_run.setdefault((config.dataset, config.algorithm), []).append(
                _run_diagnostics(records)
            )
            num_domains[config.dataset] = len(records[0]["environments"]) - len(config.test_envs)
    diagnostics = {
        key: {name: float(np.mean([d[name] for d in values])) for name in values[0]}
        for key, values in per_run.items()
    }
    return diagnostics, num_domains


def run_ablation(
    sweeps: Sequence[SweepConfig], *, log: Callable[[str], None] | None = None
) -> AblationResult:
    """Runs (or finishes) the ablation's sweeps and collects them.

    Args:
      sweeps: one per dataset (see :attr:`AblationResult.sweeps`); each has one hparams
        draw (the defaults), so each run is its setting's result. Finished runs found in
        their directories are not trained again (counted in ``reused_runs``).
      log: extra sink for the trainer's progress lines (they also go to stderr).
    """
    start = time.perf_counter()
    configs = [config for sweep in sweeps for config in make_configs(sweep)]
    reused = sum((Path(c.output_dir) / files.DONE).exists() for c in configs)
    for sweep in sweeps:
        run_sweep(sweep, log=log)
    wanted = {(c.dataset, c.algorithm, tuple(c.test_envs), c.trial_seed) for c in configs}
    runs = [
        run
        for sweep in sweeps
        for run in collect_results.load_runs(sweep.output_dir)
        if (run.dataset, run.algorithm, tuple(run.test_envs), run.trial_seed) in wanted
    ]
    accuracies = {
        (run.dataset, run.algorithm, run.test_envs[0], run.trial_seed): run.test_acc
        for run in runs
    }
    diagnostics, num_domains = _collect_diagnostics(configs)
    return AblationResult(
        sweeps=tuple(sweeps),
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


def paired_gain(result: AblationResult, before: str, after: str) -> np.ndarray:
    """Per trial present for both: ``after``'s average accuracy minus ``before``'s."""
    a, b = result.trial_averages(before), result.trial_averages(after)
    count = min(len(a), len(b))
    return b[:count] - a[:count]


def ablation_steps(result: AblationResult) -> list[Step]:
    """Paired differences between consecutive rows, and from ERM to L+S+D."""
    pairs = [*zip(ABLATION[:-1], ABLATION[1:], strict=True), ("erm", "corgrad")]
    steps = []
    for before, after in pairs:
        differences = paired_gain(result, before, after)
        count = len(differences)
        steps.append(
            Step(
                before=before,
                after=after,
                paper=paper.TABLE2[after] - paper.TABLE2[before],
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
    gains = [paired_gain(result, "erm", algorithm) for algorithm in ABLATION]
    ours = [float(gain.mean()) if len(gain) else float("nan") for gain in gains]
    spread = [float(gain.std()) if len(gain) else 0.0 for gain in gains]
    gains_in_paper = [paper.TABLE2[a] - paper.TABLE2["erm"] for a in ABLATION]
    ax.bar(positions - 0.2, gains_in_paper, 0.4, color="tab:grey",
           label=f"paper ({paper.TABLE2_DATA})")
    datasets = ", ".join(f"{d} envs {list(e)}" for d, e in result.test_envs.items())
    ax.bar(positions + 0.2, ours, 0.4, yerr=spread, capsize=3, color="tab:green",
           label=f"this run ({datasets}; ± std over trials)")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(positions, [paper_label(a) for a in ABLATION])
    ax.set_ylabel("accuracy gain over ERM (points)")
    ax.set_title("Table 2 (ablation): gain over ERM, paired by trial")
    ax.legend(fontsize=8)
    path = output_dir / "table2_ablation.png"
    figure.savefig(path, dpi=110)
    return path


def summary(result: AblationResult) -> dict[str, Any]:
    """The numbers of Table 2, for JSON."""
    run = result.run
    return {
        "settings": {
            "test_envs": {k: list(v) for k, v in result.test_envs.items()},
            "trials": result.n_trials,
            "steps": run.steps,
            "batch_size": (run.hparams or {}).get("batch_size"),
            "checkpoint_freq": run.checkpoint_freq,
            "max_eval_examples": run.max_eval_examples,
        },
        "accuracies": [
            {"dataset": d, "algorithm": a, "test_env": e, "trial": t, "test_acc": acc}
            for (d, a, e, t), acc in sorted(result.accuracies.items())
        ],
        "averages": {a: result.trial_averages(a).tolist() for a in ABLATION},
        "paper": paper.TABLE2,
        "steps": [dataclasses.asdict(s) for s in ablation_steps(result)],
        "diagnostics": {f"{d}/{a}": v for (d, a), v in result.diagnostics.items()},
        "reused_runs": result.reused_runs,
        "total_runs": result.total_runs,
        "seconds": result.seconds,
    }
