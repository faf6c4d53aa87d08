"""Runs tiny trainer configurations in a fresh process, whose device count (and, for a
multi-process job, distributed runtime) is fixed by the environment at start-up.

Usage: ``python -m tests.experiments.parallel_worker SPEC_JSON``, where the spec is
``{"runs": [{"output_dir": ..., "stop_after": step or null, **TrainConfig and
DeviceLayout fields}],
"row_log": path or null}``. Prints one line ``RESULT <json>``: every run's records
(without wall-clock fields), the device and process counts, and this process's index.
With ``row_log``, every ``train_batch`` call appends the rows it was asked for.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any


class Stop(Exception):
    """Raised after a step to simulate a run killed after its checkpoint."""


def main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    from experiments.training import parallel, processes

    processes.initialize_distributed(spec.get("distributed", "auto"))
    import jax

    from experiments.data import mnist
    from experiments.training import Hooks, TrainConfig, run

    if spec.get("row_log"):
        original = mnist.InMemoryEnvironments.train_batch

        def logged(self: Any, step: int, domains: slice = slice(None),
                   examples: slice = slice(None)) -> Any:
            with open(spec["row_log"], "a", encoding="utf-8") as log:
                rows = [domains.start, domains.stop, examples.start, examples.stop]
                log.write(json.dumps({"process": jax.process_index(), "rows": rows}) + "\n")
            return original(self, step, domains, examples)

        mnist.InMemoryEnvironments.train_batch = logged  # type: ignore[method-assign]

    results = []
    for values in spec["runs"]:
        values = dict(values)
        stop_after = values.pop("stop_after", None)
        values["test_envs"] = tuple(values["test_envs"])
        names = [field.name for field in dataclasses.fields(parallel.DeviceLayout)]
        layout = {name: values.pop(name) for name in names if name in values}
        values["layout"] = parallel.DeviceLayout(**layout)

        def after_step(step: int, metrics: Any, stop_after: int | None = stop_after) -> None:
            del metrics
            if stop_after is not None and step == stop_after:
                raise Stop

        try:
            records = run(TrainConfig(**values), hooks=Hooks(after_step=after_step),
                          log=lambda _: None)
        except Stop:
            records = []
        results.append([{k: v for k, v in r.items() if k != "step_time"} for r in records])
    print("RESULT " + json.dumps({
        "runs": results,
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "process": jax.process_index(),
    }), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
