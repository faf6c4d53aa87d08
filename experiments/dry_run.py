"""The dry run: ``python -m experiments.train ... --num_devices N --dry_run [compile]``.

Prints the sharding plan of a run (the mesh, then every array of a step with its shape,
dtype, partition spec and bytes per device) without data or training, from abstract
shapes. A machine with fewer than N devices plans on N virtual CPU devices: a plan
depends on the device count, not the device kind.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import PartitionSpec

from experiments.cli import ConfigError
from experiments.training import TrainConfig, parallel
from experiments.training.loop import build_model_and_optimizer, make_plan
from experiments.training.optimizer import stacked_layout
from experiments.training.steps import create_train_state, jitted_train_step


def plan_lines(config: TrainConfig, *, compile_step: bool = False) -> list[str]:
    """The sharding plan of ``config``'s run, without data or training.

    The mesh, then every array of a step (the train state, one batch, the stacked
    per-domain gradients) with its shape, dtype, partition spec and bytes per device,
    all from abstract shapes (:func:`jax.eval_shape`): nothing is allocated and folder
    datasets known by name need no files. ``compile_step`` also compiles the train step
    for the mesh and adds XLA's memory analysis per device.

    Raises:
        ConfigError: invalid arguments, or a layout that does not fit.
    """
    config = config.resolved(check_files=False)
    hparams = config.run_hparams()
    shape = config.dataset_spec()
    num_domains, batch_size = len(shape.train_envs(config.test_envs)), int(hparams["batch_size"])
    plan = make_plan(config, num_domains, batch_size)
    model, tx = build_model_and_optimizer(config, shape, hparams)
    abstract = jax.eval_shape(
        lambda key: create_train_state(key, model, tx, shape.input_shape),
        jax.random.PRNGKey(0),
    )

    def placed(leaf: Any, spec: PartitionSpec) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=plan.sharding(spec))

    state = jax.tree.map(lambda leaf: placed(leaf, plan.param_spec(leaf.shape)), abstract)
    batch = {
        "x": jax.ShapeDtypeStruct((num_domains, batch_size, *shape.input_shape), np.float32),
        "y": jax.ShapeDtypeStruct((num_domains, batch_size), np.int32),
    }
    batch = {name: placed(leaf, plan.batch_sharding.spec) for name, leaf in batch.items()}
    def read_by_algorithm(path: tuple[Any, ...], leaf: Any) -> jax.ShapeDtypeStruct:
        read_shape, keep_leading_axis = stacked_layout(
            config.algorithm, path, (num_domains, *leaf.shape)
        )
        read_shape, spec = plan.gradient_layout(read_shape, keep_leading_axis=keep_leading_axis)
        return placed(jax.ShapeDtypeStruct(read_shape, leaf.dtype), spec)

    gradients = jax.tree_util.tree_map_with_path(read_by_algorithm, abstract.params)
    parameters = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(abstract.params))
    lines = [
        f"run: {config.algorithm} on {shape.name} ({len(shape.environments)} environments, "
        f"test envs {list(config.test_envs)}), {num_domains} training domains x "
        f"{batch_size} examples of {shape.input_shape}, {parameters:,} parameters, "
        f"gradient_method={config.gradient_method}",
        *plan.describe({
            "params": state.params,
            "optimizer state": state.opt_state,
            "batch_stats": state.batch_stats,
            "batch": batch,
            "stacked gradients": gradients,
        }),
    ]
    if compile_step:
        key = placed(jax.ShapeDtypeStruct((2,), np.uint32), PartitionSpec())
        compiled = jitted_train_step.lower(
            state, batch, key, gradient_method=config.gradient_method, plan=plan
        ).compile()
        memory = compiled.memory_analysis()
        if memory is None:
            lines.append("XLA memory analysis: not available on this backend")
        else:
            sizes = {
                "arguments": memory.argument_size_in_bytes,
                "outputs": memory.output_size_in_bytes,
                "aliased": memory.alias_size_in_bytes,
                "temporaries": memory.temp_size_in_bytes,
                "code": memory.generated_code_size_in_bytes,
            }
            lines.append("XLA memory analysis of the compiled step, per device: " + ", ".join(
                f"{name} {parallel.format_bytes(size)}" for name, size in sizes.items()
            ))
    return lines


_DRY_RUN_CHILD = "CORGRAD_JAX_DRY_RUN_DEVICES"


def dry_run(config: TrainConfig, argv: Sequence[str], compile_step: bool) -> int:
    """Prints the plan; re-runs itself on virtual CPU devices when this machine has fewer
    than ``--num_devices`` (a plan depends on the device count, not the device kind)."""
    wanted = config.layout.num_devices
    if wanted is not None and wanted > jax.device_count() and not os.environ.get(_DRY_RUN_CHILD):
        if jax.process_count() > 1:
            raise ConfigError(f"num_devices {wanted} exceeds the {jax.device_count()} devices")
        environment = dict(
            os.environ,
            JAX_PLATFORMS="cpu",
            XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "
            f"--xla_force_host_platform_device_count={wanted}".strip(),
            **{_DRY_RUN_CHILD: str(wanted)},
        )
        print(f"planning on {wanted} virtual CPU devices (this machine has "
              f"{jax.device_count()} {jax.devices()[0].platform} device(s))", flush=True)
        command = [sys.executable, "-m", "experiments.train", *argv]
        return subprocess.run(command, env=environment, check=False).returncode
    for line in plan_lines(config, compile_step=compile_step):
        print(line)
    return 0
