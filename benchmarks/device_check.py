"""One check of an accelerator (a GPU or TPU) in one run: one markdown table, in minutes.

What it measures, in this order, each as ratios within the run:

1. **CorGrad update alone** on ResNet-18's parameter shapes (11.7M parameters, D = 3
   and 5 stacked float32 gradients): the jitted ``corgrad_jax.corgrad()`` update against
   the device's memory floor, a jitted sum ``g[0] + g[1] + ...`` of the stacked
   gradients (read D x P floats, write P: what any aggregation must pay);
2. **input pipeline**: training batches (JPEG decode + DomainBed's augmentation) and an
   evaluation pass from generated JPEGs
   (:func:`experiments.data.folder.load_folder_dataset`) with all the host's cores;
3. **RotatedMNIST**, ERM and CorGrad, 1,000 steps each through
   :func:`experiments.training.run`: the test-domain accuracy and wall time;
4. **the training step** (the trainer's jitted ``train_step``: per-domain gradients, the
   algorithm, Adam) of ERM, CorGrad and PCGrad on ResNet-18 with 3 domains x 32 images
   at 224x224, per-domain gradients by ``loop`` and ``vmap``, in float32 and bfloat16
   (``--dtype``): median step times, ERM against ERM in float32 with ``loop``, the
   others against ERM with the same method and dtype.

The whole run keeps to a time budget (``--budget_s``, 7 minutes by default, compilation
included): a check whose estimated cost no longer fits is listed in the table as
skipped, with the time it lacked; the training steps run in order of priority (``loop``
before ``vmap``, ERM and CorGrad before PCGrad), so a slow compiler costs the last rows.
A watchdog prints what was measured and exits with code 3 if the run is still going
``--hard_limit_s`` after its start (default: the budget + 50 s). Progress goes to
stderr, the table to stdout::

    python benchmarks/device_check.py            # on a GPU or TPU host: under 8 minutes
    python benchmarks/device_check.py --quick    # tiny sizes (MNIST_CNN steps) on a CPU
    python benchmarks/device_check.py --checks pipeline   # one check again

A check that raises is a row saying why (the traceback goes to stderr), the others still
run, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import operator
import os
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from bench_input_pipeline import make_folder  # noqa: E402
from common import resnet18_shapes  # noqa: E402

ALGORITHMS = {"erm": "ERM", "corgrad": "CorGrad", "pcgrad": "PCGrad"}
STEP_PRIORITY = (  # (algorithm, gradient method, dtype), most wanted first
    ("erm", "loop", "float32"), ("corgrad", "loop", "float32"),
    ("erm", "loop", "bfloat16"), ("corgrad", "loop", "bfloat16"),
    ("erm", "vmap", "float32"), ("erm", "vmap", "bfloat16"),
    ("pcgrad", "loop", "float32"), ("corgrad", "vmap", "float32"),
    ("corgrad", "vmap", "bfloat16"), ("pcgrad", "loop", "bfloat16"),
    ("pcgrad", "vmap", "float32"), ("pcgrad", "vmap", "bfloat16"),
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How big each check is."""

    model: str  # of the training steps: resnet18 or mnist_cnn
    input_shape: tuple[int, int, int]
    num_domains: int
    batch_size: int
    step_repeats: int
    update_repeats: int
    mnist_steps: int
    mnist_checkpoint_freq: int
    mnist_eval_examples: int | None
    mnist_batch_size: int | None  # None: DomainBed's 64 per domain
    jpegs_per_class: int  # x 3 classes x 4 domains
    pipeline_steps: int
    pipeline_resolution: int


FULL = Sizes("resnet18", (224, 224, 3), 3, 32, 10, 20, 1000, 500, None, None, 24, 4, 224)
QUICK = Sizes("mnist_cnn", (28, 28, 1), 3, 4, 2, 2, 20, 10, 64, 8, 2, 2, 32)


@dataclasses.dataclass
class Table:
    """The rows of the one table, and the clock."""

    budget_s: float
    started: float = dataclasses.field(default_factory=time.perf_counter)
    rows: list[tuple[str, ...]] = dataclasses.field(default_factory=list)

    def remaining(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    def lacks(self, estimate_s: float) -> str | None:
        """None if ``estimate_s`` fits the budget left, else why the check is skipped."""
        if estimate_s <= self.remaining():
            return None
        return (f"skipped: needs about {estimate_s:.0f} s, {max(self.remaining(), 0):.0f} s "
                "of the budget left")

    def add(self, check: str, case: str, result: str, ratio: str = "", to: str = "") -> None:
        self.rows.append((check, case, result, ratio, to))
        _progress(f"{check} | {case} | {result} | {ratio} {to}")

    def markdown(self) -> str:
        lines = ["| check | case | result | ratio | ratio to |", "|---|---|---|---:|---|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _median_time(run: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def check_corgrad_update(sizes: Sizes, table: Table) -> None:
    """The corgrad update alone on ResNet-18's shapes, against a jitted sum."""
    shapes = resnet18_shapes()
    size = sum(int(np.prod(shape)) for shape in shapes)
    check = f"CorGrad update alone, ResNet-18 shapes ({size / 1e6:.1f}M params)"
    for num_domains in (3, 5):
        if skipped := table.lacks(30.0):
            table.add(check, f"D={num_domains}", skipped)
            continue
        update_s, floor_s = _time_update(shapes, num_domains, sizes.update_repeats)
        bandwidth = (num_domains + 1) * size * 4 / floor_s / 1e9
        table.add(check, f"D={num_domains}",
                  f"{1e3 * update_s:.2f} ms (floor {1e3 * floor_s:.2f} ms, {bandwidth:.0f} GB/s)",
                  f"{update_s / floor_s:.1f}x", "memory floor: jitted sum of the gradients")


def _time_update(shapes: list[tuple[int, ...]], num_domains: int, repeats: int
                 ) -> tuple[float, float]:
    """Median seconds of the jitted corgrad update and of the jitted sum, on random
    stacked gradients of ``shapes``."""
    import corgrad_jax

    keys = jax.random.split(jax.random.key(0), len(shapes))
    grads = {f"p{index:02d}": jax.random.normal(key, (num_domains, *shape))
             for index, (key, shape) in enumerate(zip(keys, shapes, strict=True))}
    tx = corgrad_jax.corgrad(10, 0.6)
    state = tx.init(None)
    update = jax.jit(tx.update)
    floor = jax.jit(lambda stacked: jax.tree.map(  # explicit adds: x.sum(0) is slow on CPU
        lambda leaf: functools.reduce(operator.add, list(leaf)), stacked))
    jax.block_until_ready((update(grads, state), floor(grads)))  # compile
    return (_median_time(lambda: update(grads, state), repeats),
            _median_time(lambda: floor(grads), repeats))


def check_input_pipeline(sizes: Sizes, table: Table) -> None:
    """Images per second of the folder pipeline on generated 227x227 JPEGs."""
    from experiments.data.folder import load_folder_dataset

    threads = os.cpu_count() or 1
    check = (f"input pipeline, 227x227 JPEGs to {sizes.pipeline_resolution}, "
             f"{threads} threads")
    train_case = f"train batches, {sizes.num_domains} x {sizes.batch_size} (decode + augment)"
    eval_case = "evaluation pass (read + resize), compiled"
    if skipped := table.lacks(60.0):
        table.add(check, train_case, skipped)
        table.add(check, eval_case, skipped)
        return
    with tempfile.TemporaryDirectory() as workdir:
        root = make_folder(os.path.join(workdir, "jpegs"), (227, 227), sizes.jpegs_per_class)
        with contextlib.redirect_stdout(sys.stderr):  # the cache build's messages
            dataset = load_folder_dataset(
                root, None, test_envs=[0], holdout_fraction=0.2, trial_seed=0,
                batch_size=sizes.batch_size, seed=0, resolution=sizes.pipeline_resolution,
                num_workers=threads, cache_dir=os.path.join(workdir, "cache"),
            )  # fmt: skip
        dataset.train_batch(0)  # starts the threads
        start, cpu = time.perf_counter(), time.process_time()
        count = 0
        for step in range(1, sizes.pipeline_steps + 1):
            count += dataset.train_batch(step)["y"].size
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        table.add(check, train_case, _throughput(count, wall, cpu))

        def eval_pass() -> int:
            count = 0
            for env in range(len(dataset.environments)):
                for batch in dataset.eval_batches(env, "in", 64):
                    count += len(batch["y"])
            return count

        eval_pass()  # compiles the resize for each batch shape (the trainer pads instead)
        start, cpu = time.perf_counter(), time.process_time()
        count = eval_pass()
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        table.add(check, eval_case, _throughput(count, wall, cpu))


def _throughput(count: int, wall: float, cpu: float) -> str:
    return f"{count / wall:.0f} images/s, {1e3 * cpu / count:.1f} CPU ms/image"


def check_rotated_mnist(sizes: Sizes, table: Table) -> None:
    """ERM and CorGrad on RotatedMNIST through the trainer: accuracy and wall time."""
    from experiments.training import TrainConfig, run

    check = f"RotatedMNIST, {sizes.mnist_steps:,} steps, test env 0 (0 degrees)"
    erm_s = None
    with tempfile.TemporaryDirectory() as workdir:
        for algorithm in ("erm", "corgrad"):
            estimate = 60.0 if erm_s is None else 1.2 * erm_s
            if skipped := table.lacks(estimate):
                table.add(check, ALGORITHMS[algorithm], skipped)
                continue
            config = TrainConfig(
                dataset="RotatedMNIST", algorithm=algorithm, test_envs=(0,),
                steps=sizes.mnist_steps, checkpoint_freq=sizes.mnist_checkpoint_freq,
                max_eval_examples=sizes.mnist_eval_examples,
                hparams=None if sizes.mnist_batch_size is None else {
                    "batch_size": sizes.mnist_batch_size},
                output_dir=os.path.join(workdir, algorithm),
            )  # fmt: skip
            start = time.perf_counter()
            last = run(config, log=lambda line: None)[-1]
            wall = time.perf_counter() - start
            validation = np.mean([last[f"env{env}_out_acc"] for env in range(1, 6)])
            result = (f"test {100 * last['env0_in_acc']:.1f}%, train-domain val "
                      f"{100 * validation:.1f}%, {wall:.0f} s with compilation")
            if erm_s is None:
                erm_s = wall
                table.add(check, ALGORITHMS[algorithm], result)
            else:
                table.add(check, ALGORITHMS[algorithm], result, f"{wall / erm_s:.2f}x",
                          "ERM's wall time")


def _step_runner(sizes: Sizes, algorithm: str, method: str, dtype: str
                 ) -> tuple[Callable[[], Any], float]:
    """One training step of the trainer (a callable), and its compile time."""
    from experiments.hparams_registry import default_hparams
    from experiments.models import get_model
    from experiments.training import steps
    from experiments.training.optimizer import build_optimizer

    dataset = "PACS" if sizes.model == "resnet18" else "RotatedMNIST"
    hparams = default_hparams(algorithm, dataset)
    model = get_model(sizes.model, 7, hparams, dtype=dtype)
    tx = build_optimizer(algorithm, hparams, seed=0, total_steps=5000,
                         num_domains=sizes.num_domains)
    state = steps.create_train_state(jax.random.key(0), model, tx, sizes.input_shape)
    shape = (sizes.num_domains, sizes.batch_size)
    batch = {"x": jax.random.normal(jax.random.key(1), (*shape, *sizes.input_shape)),
             "y": jax.random.randint(jax.random.key(2), shape, 0, 7)}
    key = jax.random.key(3)
    start = time.perf_counter()
    compiled = steps.jitted_train_step.lower(
        state, batch, key, None, gradient_method=method).compile()
    compile_s = time.perf_counter() - start
    holder = {"state": state}

    def step() -> Any:
        holder["state"], metrics, _ = compiled(holder["state"], batch, key, None)
        return holder["state"].params, metrics

    return step, compile_s


def check_train_steps(sizes: Sizes, table: Table) -> None:
    """The trainer's step for every algorithm, gradient method and dtype."""
    height, width, _ = sizes.input_shape
    check = (f"train step, {'ResNet-18' if sizes.model == 'resnet18' else 'MNIST_CNN'}, "
             f"{sizes.num_domains} x {sizes.batch_size} at {height}x{width}")
    times: dict[tuple[str, str, str], float] = {}
    rows: dict[tuple[str, str, str], tuple[str, ...]] = {}
    compile_s: list[float] = []
    for variant in STEP_PRIORITY:
        algorithm, method, dtype = variant
        case = f"{ALGORITHMS[algorithm]}, {method}, {dtype}"
        estimate = 1.3 * max(compile_s, default=30.0) + 20 * min(times.values(), default=1.0)
        if skipped := table.lacks(estimate):
            rows[variant] = (check, case, skipped, "", "")
            _progress(f"{case}: {skipped}")
            continue
        try:
            step, seconds = _step_runner(sizes, algorithm, method, dtype)
            compile_s.append(seconds)
            jax.block_until_ready(step())  # warm-up
            times[variant] = _median_time(step, sizes.step_repeats)
            del step
        except Exception as error:  # noqa: BLE001 - one failed row, the others still run
            traceback.print_exc()
            rows[variant] = (check, case, _failure(error), "", "")
            _progress(f"{case}: {_failure(error)}")
            continue
        reference = ("erm", "loop", "float32") if algorithm == "erm" else ("erm", method, dtype)
        ratio, to = "", ""
        if reference in times:
            ratio = f"{times[variant] / times[reference]:.2f}x"
            to = f"ERM, {reference[1]}, {reference[2]}"
        rows[variant] = (check, case, f"{1e3 * times[variant]:.1f} ms/step, compiled in "
                         f"{seconds:.0f} s", ratio, to)
        _progress(" | ".join(rows[variant]))
    for method in ("loop", "vmap"):  # the table in reading order
        for dtype in ("float32", "bfloat16"):
            for algorithm in ALGORITHMS:
                table.rows.append(rows[(algorithm, method, dtype)])


CHECKS: dict[str, Callable[[Sizes, Table], None]] = {
    "update": check_corgrad_update, "pipeline": check_input_pipeline,
    "mnist": check_rotated_mnist, "steps": check_train_steps,
}  # fmt: skip


def _failure(error: BaseException) -> str:
    """One table cell for a check that raised: its type and first line."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"failed: {type(error).__name__}: {first[:200]}".replace("|", "/")


def _header(sizes: Sizes, quick: bool, budget_s: float) -> str:
    import jaxlib

    devices = jax.devices()
    kinds = sorted({device.device_kind for device in devices})
    return (
        f"device_check{' --quick' if quick else ''}: {len(devices)} x {', '.join(kinds)} "
        f"({jax.default_backend()}), jax {jax.__version__}, jaxlib {jaxlib.__version__}, "
        f"{os.cpu_count()} host cores; default matmul precision "
        f"{jax.config.jax_default_matmul_precision or 'default'}; budget {budget_s:.0f} s"
    )


def main(argv: list[str] | None = None) -> int:
    """Runs every check that fits the budget and prints the table; returns 1 if a check
    failed (its row says why; the other checks still run), else 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and few steps, for a CPU (MNIST_CNN steps)")
    parser.add_argument("--budget_s", type=float, default=None,
                        help="time for all the checks (default 420; --quick 600)")
    parser.add_argument("--hard_limit_s", type=float, default=None,
                        help="print what was measured and exit 3 after this long "
                        "(default: the budget + 50 s)")
    parser.add_argument("--checks", nargs="+", choices=sorted(CHECKS), default=list(CHECKS),
                        help="which checks to run (default: all, in this order: "
                        f"{', '.join(CHECKS)})")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    budget = args.budget_s if args.budget_s is not None else (600.0 if args.quick else 420.0)
    hard_limit = budget + 50 if args.hard_limit_s is None else args.hard_limit_s
    table = Table(budget)
    header = _header(sizes, args.quick, budget)
    _progress(header)

    def stop() -> None:
        print(header + "\n\n" + table.markdown(), flush=True)
        print(f"\nstopped by the watchdog after {hard_limit:.0f} s; the rows above "
              "are what was measured", flush=True)
        os._exit(3)

    watchdog = threading.Timer(hard_limit, stop)
    watchdog.daemon = True
    watchdog.start()
    for name in (name for name in CHECKS if name in args.checks):
        try:
            CHECKS[name](sizes, table)
        except Exception as error:  # noqa: BLE001 - a failed check is a row; the next runs
            traceback.print_exc()
            table.add(f"{name} check", "", _failure(error))
    watchdog.cancel()
    skipped = sum(row[2].startswith("skipped") for row in table.rows)
    failed = sum(row[2].startswith("failed") for row in table.rows)
    print(header + "\n\n" + table.markdown())
    print(f"\n{time.perf_counter() - table.started:.0f} s; "
          f"{len(table.rows) - skipped - failed} rows measured, {skipped} skipped (time "
          f"budget), {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
