"""Times the trainer's step on device meshes, as ratios to the step without a mesh.

One training step of CorGrad (MNIST_CNN, 4 training domains x 32 examples, Adam), run
the way ``experiments.train`` runs it: the batch assembled by
:meth:`~experiments.training.parallel.ShardingPlan.global_batch` and the jitted ``train_step``
with the plan. Layouts:

* ``no mesh``: ``train_step`` without a plan, the batch passed as NumPy (the reference);
* ``1 device``: the same on a 1-device mesh (what a CPU run uses): its overhead;
* ``data`` / ``domain`` / ``fsdp``: N devices as data-parallel, domain-parallel, or
  data-parallel with the train state split over the data axis.

Each device count needs its own process (fixed at JAX's start), so the script re-runs
itself per count on virtual CPU devices unless the machine has real ones. **On a CPU,
virtual devices share the same cores**: their ratios measure what partitioning costs
(collectives, smaller kernels), not a speed-up; on GPUs or TPUs the same script measures
scaling. Timings are medians after warm-up. Run::

    python benchmarks/bench_parallel.py [--devices 1 2 4] [--repeats 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

NUM_DOMAINS, BATCH_SIZE = 4, 32


def _measure(layouts: list[tuple[str, int, str]], repeats: int) -> dict[str, float]:
    import jax
    import numpy as np

    from benchmarks.common import median_time
    from experiments.hparams_registry import default_hparams
    from experiments.models import get_model
    from experiments.training import parallel
    from experiments.training import steps as trainer
    from experiments.training.optimizer import build_optimizer

    hparams = default_hparams("corgrad", "RotatedMNIST")
    model = get_model("mnist_cnn", 10, hparams)
    tx = build_optimizer("corgrad", hparams, seed=0, total_steps=1000, num_domains=NUM_DOMAINS)
    fresh = trainer.create_train_state(jax.random.PRNGKey(0), model, tx, (28, 28, 1))
    rng = np.random.default_rng(0)
    batch = {
        "x": rng.random((NUM_DOMAINS, BATCH_SIZE, 28, 28, 1), np.float32),
        "y": rng.integers(0, 10, (NUM_DOMAINS, BATCH_SIZE)).astype(np.int32),
    }
    step = jax.jit(trainer.train_step, static_argnames=("plan",), donate_argnums=0)
    key = jax.random.PRNGKey(1)

    def rows(domains: slice, examples: slice) -> dict[str, np.ndarray]:
        return {name: value[domains, examples] for name, value in batch.items()}

    def time_layout(plan: parallel.ShardingPlan | None) -> float:
        state = jax.tree.map(jax.numpy.copy, fresh)  # donated below
        holder = [state if plan is None else plan.put_state(state)]

        def one_step() -> None:
            placed = batch if plan is None else plan.global_batch(rows, NUM_DOMAINS, BATCH_SIZE)
            holder[0], metrics, _ = step(holder[0], placed, key, plan=plan)
            jax.block_until_ready(metrics)

        for _ in range(3):
            one_step()
        return median_time(one_step, repeats)

    times = {}
    for name, domain_parallel, param_sharding in layouts:
        plan = None
        if name != "no mesh":
            plan = parallel.make_plan(
                num_domains=NUM_DOMAINS,
                batch_size=BATCH_SIZE,
                domain_parallel=domain_parallel,
                param_sharding=param_sharding,
            )
        times[name] = time_layout(plan)
    return times


def _child(devices: int, repeats: int) -> dict[str, float]:
    environment = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    environment["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    command = [sys.executable, "-m", "benchmarks.bench_parallel", "--child", str(devices),
               "--repeats", str(repeats)]
    done = subprocess.run(command, env=environment, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        n = args.child
        layouts = [("data", 1, "replicated"), ("fsdp", 1, "fsdp")]
        if n > 1:
            layouts.insert(1, ("domain", min(n, NUM_DOMAINS), "replicated"))
        if n == 1:
            layouts = [("no mesh", 1, ""), ("1 device", 1, "replicated")]
        print(json.dumps(_measure(layouts, args.repeats)))
        return
    results = {1: _child(1, args.repeats)}
    for devices in args.devices:
        results[devices] = _child(devices, args.repeats)
    reference = results[1]["no mesh"]
    print(f"CorGrad train step, MNIST_CNN, {NUM_DOMAINS} domains x {BATCH_SIZE}; "
          f"no mesh: {1000 * reference:.1f} ms (ratios to it)")
    print("| devices | layout | mesh (domain, data) | step / no mesh |")
    print("|---|---|---|---|")
    print(f"| 1 | 1-device mesh | (1, 1) | {results[1]['1 device'] / reference:.2f}x |")
    for devices in args.devices:
        for name, seconds in results[devices].items():
            domain = min(devices, NUM_DOMAINS) if name == "domain" else 1
            mesh = f"({domain}, {devices // domain})"
            print(f"| {devices} | {name} | {mesh} | {seconds / reference:.2f}x |")


if __name__ == "__main__":
    main()
