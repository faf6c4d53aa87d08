"""Times one training step of ERM against CorGrad, in the same run.

Two settings: ResNet-18 on 3 domains x 8 images of 64x64 (DomainBed's image datasets,
downsized for a CPU), and MNIST_CNN on RotatedMNIST's shapes (5 training domains x 64).
Each step is the trainer's own jitted ``train_step``: per-domain losses and gradients
(``corgrad_jax.per_domain_gradients``, by each of its methods), the algorithm, Adam.
ERM is ``mean_gradients`` on the same stacked gradients; "ERM, one gradient" is
DomainBed's ERM, one backward pass of the mean loss, the floor of any per-domain method.

Timings are medians of repeated steps after warm-up, ERM and CorGrad interleaved so
that both see the same machine load. ``--dtypes float32 bfloat16`` measures every
setting in both compute dtypes (``--dtype``), interleaved too; ``--jit default
reassociate`` compiles every step both as it is and with
``corgrad_jax.compiler_options()`` (the README's Performance section). Run::

    python benchmarks/bench_train_step.py [--repeats 10] [--dtypes float32 bfloat16]
        [--jit default reassociate]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import corgrad_jax
from experiments.data import get_dataset_spec
from experiments.hparams_registry import default_hparams
from experiments.models import get_model
from experiments.training import steps as trainer
from experiments.training.optimizer import build_optimizer

METHODS = ("loop", "vmap", "vjp")


@dataclasses.dataclass(frozen=True)
class Setting:
    """A model and the shapes of one step's stacked batch."""

    name: str
    dataset: str  # for the hparams registry
    num_domains: int
    batch_size: int
    input_shape: tuple[int, int, int]
    num_classes: int
    dtype: str = "float32"  # the model's compute dtype (--dtype)
    jit: str = "default"  # how the step is compiled (JITS)


SETTINGS = (
    Setting("ResNet-18, 3 domains x 8, 64x64", "PACS", 3, 8, (64, 64, 3), 7),
    Setting("MNIST_CNN, 5 domains x 64, 28x28", "RotatedMNIST", 5, 64, (28, 28, 1), 10),
)


def _one_gradient_erm_step(state: trainer.TrainState, batch: dict[str, jax.Array], key: jax.Array):
    """DomainBed's ERM: one gradient of the loss over the concatenated batch."""
    flat = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), batch)

    def loss_fn(params: Any) -> jax.Array:
        logits = state.apply_fn(
            {"params": params, **({"batch_stats": state.batch_stats} if state.batch_stats else {})},
            flat["x"],
            train=True,
            rngs={"dropout": key},
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, flat["y"]).mean()

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    return state.replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state), {
        "loss": loss
    }


JITS = ("default", "reassociate")
_OPTIONS = {jit: {"compiler_options": corgrad_jax.compiler_options()} if jit == "reassociate"
            else {} for jit in JITS}
_TRAIN_STEPS = {  # the trainer's step, compiled as it is or with corgrad_jax.compiler_options()
    jit: jax.jit(trainer.train_step, static_argnames=("gradient_method",), donate_argnums=0,
                 **_OPTIONS[jit]) for jit in JITS
}
_ONE_GRADIENT_STEPS = {jit: jax.jit(_one_gradient_erm_step, donate_argnums=0, **_OPTIONS[jit])
                       for jit in JITS}


def _runner(setting: Setting, algorithm: str, method: str | None) -> Callable[[], float]:
    """A function that runs one step and returns its wall time in seconds."""
    hparams = default_hparams(algorithm, setting.dataset)
    model = get_model(get_dataset_spec(setting.dataset).model, setting.num_classes, hparams,
                      dtype=setting.dtype)
    if method is None:  # one gradient of the mean loss, plain Adam
        tx = optax.adam(hparams["lr"])
    else:
        tx = build_optimizer(algorithm, hparams, seed=0, total_steps=5000,
                             num_domains=setting.num_domains)
    state = trainer.create_train_state(jax.random.key(0), model, tx, setting.input_shape)
    rng = np.random.default_rng(0)
    shape = (setting.num_domains, setting.batch_size)
    batch = {
        "x": jnp.asarray(rng.standard_normal((*shape, *setting.input_shape)), jnp.float32),
        "y": jnp.asarray(rng.integers(0, setting.num_classes, shape), jnp.int32),
    }
    key = jax.random.key(1)
    holder = {"state": state}

    def step() -> float:
        start = time.perf_counter()
        if method is None:
            holder["state"], metrics = _ONE_GRADIENT_STEPS[setting.jit](
                holder["state"], batch, key)
        else:
            holder["state"], metrics, _ = _TRAIN_STEPS[setting.jit](
                holder["state"], batch, key, gradient_method=method
            )
        jax.block_until_ready((holder["state"].params, metrics))
        return time.perf_counter() - start

    return step


def measure(
    settings: list[Setting], methods: tuple[str, ...], repeats: int, warmup: int
) -> list[dict]:
    """Median step times of ERM and CorGrad for every setting (the dtypes of one model)
    and method, all interleaved."""
    variants: list[tuple[Setting, str, str | None]] = []
    for setting in settings:
        variants += [(setting, "erm", None)]
        variants += [(setting, algorithm, m) for m in methods for algorithm in ("erm", "corgrad")]
    runners, compile_s = {}, {}
    for variant in variants:
        runner = _runner(*variant)
        compile_s[variant] = runner()  # compilation and the first step
        for _ in range(warmup):
            runner()
        runners[variant] = runner
    times: dict[tuple[Setting, str, str | None], list[float]] = {v: [] for v in variants}
    for _ in range(repeats):
        for variant, runner in runners.items():
            times[variant].append(runner())
    return [
        {
            "setting": setting.name,
            "algorithm": algorithm,
            "method": method,
            "median_s": statistics.median(times[(setting, algorithm, method)]),
            "first_step_s": compile_s[(setting, algorithm, method)],
        }
        for setting, algorithm, method in variants
    ]


def tables(rows: list[dict]) -> str:
    """The markdown tables: CorGrad against ERM, and the per-domain gradient methods."""
    lines = [
        "CorGrad step / ERM step (same per-domain gradients, same run; medians):",
        "",
        "| setting | per-domain gradients | ERM step | CorGrad step | CorGrad - ERM | "
        "CorGrad / ERM |",
        "|---|---|---|---|---|---|",
    ]
    by_key = {(r["setting"], r["algorithm"], r["method"]): r for r in rows}
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] is not None))
    for setting in settings:
        for method in methods:
            erm = by_key[(setting, "erm", method)]["median_s"]
            corgrad = by_key[(setting, "corgrad", method)]["median_s"]
            lines.append(
                f"| {setting} | {method} | {1e3 * erm:.0f} ms | {1e3 * corgrad:.0f} ms | "
                f"{1e3 * (corgrad - erm):+.0f} ms | {corgrad / erm:.2f}x |"
            )
    lines += [
        "",
        "Ways to get per-domain gradients, step time relative to DomainBed's ERM (one "
        "gradient of the mean loss over the concatenated batch; first step includes "
        "compilation):",
        "",
        "| setting | step | time | vs one-gradient ERM | first step |",
        "|---|---|---|---|---|",
    ]
    for setting in settings:
        floor = by_key[(setting, "erm", None)]["median_s"]
        first = by_key[(setting, "erm", None)]["first_step_s"]
        lines.append(
            f"| {setting} | ERM, one gradient | {1e3 * floor:.0f} ms | 1.00x | {first:.1f} s |"
        )
        for method in methods:
            for algorithm in ("erm", "corgrad"):
                row = by_key[(setting, algorithm, method)]
                name = f"{'ERM' if algorithm == 'erm' else 'CorGrad'}, {method}"
                lines.append(
                    f"| {setting} | {name} | {1e3 * row['median_s']:.0f} ms | "
                    f"{row['median_s'] / floor:.2f}x | {row['first_step_s']:.1f} s |"
                )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Measures every setting and prints the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument(
        "--settings", nargs="+", default=["resnet", "mnist"], choices=["resnet", "mnist"]
    )
    parser.add_argument("--dtypes", nargs="+", default=["float32"],
                        choices=["float32", "bfloat16"],
                        help="compute dtypes of the model (--dtype); each is a setting")
    parser.add_argument("--jit", nargs="+", default=["default"], choices=JITS,
                        help="compile the step as it is, or with corgrad_jax.compiler_options() "
                             "(XLA may reorder float sums); each is a setting")
    parser.add_argument("--markdown", default=None, help="also write the tables here")
    args = parser.parse_args()
    rows = []
    for base, key in zip(SETTINGS, ("resnet", "mnist"), strict=True):
        if key not in args.settings:
            continue
        print(f"measuring {base.name} ...", flush=True)
        settings = [
            dataclasses.replace(base, dtype=dtype, jit=jit, name=", ".join(
                [base.name] + ([dtype] if len(args.dtypes) > 1 else [])
                + ([jit] if len(args.jit) > 1 else [])))
            for dtype in args.dtypes for jit in args.jit
        ]
        rows += measure(settings, tuple(args.methods), args.repeats, args.warmup)
    devices = ", ".join(str(d) for d in jax.devices())
    header = f"jax {jax.__version__} on {devices}, {args.repeats} timed steps after warm-up.\n\n"
    text = header + tables(rows)
    print()
    print(text)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as file:
            file.write(text)


if __name__ == "__main__":
    main()
