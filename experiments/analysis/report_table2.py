"""The REPORT's section on Table 2 (the ablation ERM, PCGrad, L, L+S, L+S+D), in
markdown, built from :func:`experiments.analysis.verdicts.ablation_findings`."""

from __future__ import annotations

from experiments.analysis import paper
from experiments.analysis.ablation import ABLATION, AblationResult, label, paired_gain, paper_label
from experiments.analysis.report_format import number, plus_minus, signed
from experiments.analysis.verdicts import AblationFindings, ablation_findings
from experiments.data import get_dataset_spec


def _setup(result: AblationResult) -> str:
    """What ran, in one paragraph."""
    run, trials = result.run, result.n_trials
    test_envs = {d: list(e) for d, e in result.test_envs.items()}
    return (
        f"{len(test_envs)} dataset(s), test envs {test_envs}, {trials} trials (trial seeds "
        f"0-{trials - 1}: data splits, initialization, minibatches), {run.steps} steps of "
        f"{(run.hparams or {}).get('batch_size')} examples per domain, default hparams, "
        f"checkpoints every {run.checkpoint_freq} steps, at most "
        f"{run.max_eval_examples or 'all'} examples evaluated per split; {result.total_runs} "
        f"runs ({result.reused_runs} found finished in the output folder and not trained "
        "again). Model selection: training-domain validation (`experiments.collect_results`)."
    )


def _side_by_side(result: AblationResult) -> list[str]:
    """Every row's accuracies next to the paper's."""
    columns = [(d, e) for d, envs in result.test_envs.items() for e in envs]
    names = {d: get_dataset_spec(d).environments for d in result.test_envs}
    header = [
        f"{d} test env {e}" + (f' ("{names[d][e]}")' if e < len(names[d]) else "")
        for d, e in columns
    ]
    lines = [
        "| Algorithm | " + " | ".join(header) + " | Avg (this run) | gain over ERM | "
        f"Paper avg ({paper.TABLE2_DATA}) | paper gain |",
        "|---" * (5 + len(columns)) + "|",
    ]
    for algorithm in ABLATION:
        gain = paired_gain(result, "erm", algorithm)
        cells = [label(algorithm)]
        cells += [plus_minus(result.env_accuracies(d, algorithm, e)) for d, e in columns]
        cells.append(plus_minus(result.trial_averages(algorithm)))
        cells.append(f"{gain.mean():+.1f} ± {gain.std():.1f}" if len(gain) else "X")
        cells.append(f"{paper.TABLE2[algorithm]:.1f}")
        cells.append(f"{paper.TABLE2[algorithm] - paper.TABLE2['erm']:+.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _steps_table(found: AblationFindings) -> list[str]:
    lines = [
        "| step | paper | this run (mean ± std) | s.e. | same direction as the paper? | "
        "resolved? |",
        "|---|---:|---:|---:|---|---|",
    ]
    for s in found.steps:
        lines.append(
            f"| {paper_label(s.before)} → {paper_label(s.after)} | {s.paper:+.1f} | "
            f"{signed(s.mean)} ± {number(s.std, 1)} | {number(s.standard_error, 1)} | "
            f"{'yes' if s.same_direction else 'no'} | "
            f"{'yes' if s.resolved else 'no, within noise'} |"
        )
    return lines


def _order(found: AblationFindings) -> str:
    return " < ".join(paper_label(a) for a in found.order)


def _agreement(result: AblationResult, found: AblationFindings) -> list[str]:
    """What agrees with the paper and what does not."""
    total = found.total
    lines = [
        "",
        "What agrees and what does not:",
        "",
        f"- The paper's rows improve monotonically (ERM < PCGrad < L < L+S < L+S+D, each step "
        f"+0.6 to +0.9 points). Here {found.agree} of the 4 steps go in the paper's direction; "
        f"{found.resolved_agree} of them by more than two standard errors, and "
        f"{found.resolved_against} step(s) go against it by more than two standard errors "
        f"(with {len(result.trials)} trials per mean, a rough criterion).",
        f"- L+S+D against ERM: paper {total.paper:+.1f} points, this run "
        f"{signed(total.mean)} ± {number(total.std, 1)} (s.e. "
        f"{number(total.standard_error, 1)}): "
        + ("same direction" if total.same_direction else "opposite direction")
        + (", resolved." if total.resolved else ", within trial-to-trial noise."),
        f"- Ordering by average accuracy here: {_order(found)}"
        + (" — the paper's order." if found.paper_order else " — not the paper's order."),
    ]
    for dataset in result.test_envs:
        diagnostics = result.diagnostics.get((dataset, "corgrad"))
        if diagnostics is None:
            continue
        fired = diagnostics["dominant_fraction"]
        lines.append(
            f"- Smoothing (D) on {dataset} (N = {result.num_domains.get(dataset)} training "
            f"domains): CorGrad marked {100 * fired:.2f}% of the (domain, layer) pairs as "
            f"dominant, on average over its steps"
            + (" — it never fired, so L+S+D differs from L+S only through chance."
               if fired == 0 else ".")
        )
    lines.append(
        "- Absolute accuracies are not comparable: the paper's are ResNet-18 on VLCS, "
        "TerraIncognita and DomainNet after 5,000+ steps; these are MNIST_CNN on "
        f"{', '.join(result.test_envs)} after {result.run.steps} steps. Only the direction "
        "and size of the differences between rows can be compared."
    )
    return lines


def table2_section(result: AblationResult) -> tuple[list[str], list[str]]:
    """Markdown of Table 2 next to the paper's, and the one-line finding."""
    found = ablation_findings(result)
    total = found.total
    lines = [
        "## 3. Table 2: the ablation",
        "",
        _setup(result),
        "",
        "The table of `python -m experiments.collect_results` on these runs:",
        "",
        result.table.replace("### ", "#### "),
        "",
        "Side by side with the paper (accuracy %, mean ± std over trials; 'gain' is paired "
        "by trial against ERM):",
        "",
        *_side_by_side(result),
        "",
        "![ablation](table2_ablation.png)",
        "",
        "Each step of the ablation (paired differences of the per-trial averages; 'resolved' "
        "means beyond two standard errors of the mean difference):",
        "",
        *_steps_table(found),
        *_agreement(result, found),
    ]
    findings = [
        f"Table 2: {found.agree} of the 4 ablation steps go in the paper's direction "
        f"({found.resolved_agree} resolved beyond 2 s.e., {found.resolved_against} resolved "
        f"against); L+S+D − ERM = {signed(total.mean)} ± {number(total.std, 1)} points here vs "
        f"{total.paper:+.1f} in the paper; order here {_order(found)}"
        + (" (the paper's)." if found.paper_order else " (not the paper's)."),
    ]
    return lines, findings
