"""A run writing to Cloud Storage (``--output_dir gs://...``), against a local emulator.

The emulator (``gcp-storage-emulator``, in memory, on 127.0.0.1) serves both clients of a
run: ``etils.epath`` through ``gcsfs`` (args.json, results.jsonl, done, the damaged
checkpoints' moves, orbax's metadata) and tensorstore's ``gcs`` driver (orbax's arrays).
Both are pointed at it by environment variables, read when a client is first made: so
one emulator serves the whole module, and nothing else in the process may open ``gs://``
before it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from trainer_helpers import comparable, tiny_config

from experiments import collect_results, train
from experiments import run_dir as outputs
from experiments.cli import ConfigError

pytest.importorskip("gcsfs")
emulator = pytest.importorskip("gcp_storage_emulator.server")

ALGORITHM = "corgrad_no_smoothing"  # random domain orders: the PRNG key must resume too


def _download_with_generation(download: Callable[..., None]) -> Callable[..., None]:
    """The emulator's object download, adding the ``x-goog-generation`` header that Cloud
    Storage sends and tensorstore reads (without it, a re-read of an OCDBT manifest
    fails now and then with "Malformed StorageGeneration")."""

    def handler(request: Any, response: Any, storage: Any, *args: Any, **kwargs: Any) -> None:
        download(request, response, storage, *args, **kwargs)
        try:
            found = storage.get_file_obj(request.params["bucket_name"],
                                         request.params["object_id"])
        except Exception:  # not found: the 404 goes out as it is
            return
        response["x-goog-generation"] = found["generation"]

    return handler


@pytest.fixture(scope="module")
def bucket() -> Iterator[str]:
    """``gs://bucket`` on an in-memory emulator, for this module."""
    from gcp_storage_emulator.handlers import objects

    download = objects.download
    objects.download = _download_with_generation(download)  # read by objects.get
    server = emulator.create_server("127.0.0.1", 0, in_memory=True, default_bucket="bucket")
    server.start()
    url = f"http://127.0.0.1:{server._api._httpd.server_address[1]}"
    variables = {
        "STORAGE_EMULATOR_HOST": url,  # gcsfs
        "TENSORSTORE_GCS_HTTP_URL": url,  # orbax's arrays
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",  # tensorstore: no credentials lookup
    }
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)
    try:
        yield "gs://bucket"
    finally:
        server.stop()
        objects.download = download
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _quiet(line: str) -> None:
    del line


def test_the_run_files_on_an_object_store(bucket: str) -> None:
    run_dir = outputs.as_path(f"{bucket}/files/run")
    assert not outputs.is_local(run_dir) and str(run_dir) == "gs://bucket/files/run"
    assert not outputs.check_output_dir(run_dir, {"seed": 1})  # new
    outputs.create_output_dir(run_dir, {"seed": 1})
    assert outputs.check_output_dir(run_dir, {"seed": 1})  # the same run
    with pytest.raises(ConfigError, match="seed 2 here, 1 there"):
        outputs.check_output_dir(run_dir, {"seed": 2})

    results = run_dir / outputs.RESULTS
    for step in range(4):
        outputs.append_record(results, {"step": step, "loss": 1.0 / (step + 1)})
    assert [r["step"] for r in outputs.read_records(results)] == [0, 1, 2, 3]
    results.write_text(results.read_text() + '{"step": 4, "lo')  # a torn last line
    assert [r["step"] for r in outputs.read_records(results)] == [0, 1, 2, 3]
    assert [r["step"] for r in outputs.truncate_records(results, 1)] == [0, 1]
    assert results.read_text().count("\n") == 2 and outputs.read_records(results)[1]["step"] == 1

    outputs.write_atomically(run_dir / outputs.DONE, "done\n")
    assert (run_dir / outputs.DONE).read_text() == "done\n"
    assert outputs.find_runs(f"{bucket}/files") == [run_dir]

    source = outputs.as_path(f"{bucket}/files/tree")
    for name in ("a", "b/c", "b/d/e"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(name)
    target = outputs.as_path(f"{bucket}/files/moved")
    outputs.move_tree(source, target)
    assert not source.exists()
    assert [(target / name).read_text() for name in ("a", "b/c", "b/d/e")] == ["a", "b/c", "b/d/e"]
    with pytest.raises(ConfigError, match="not an empty directory"):
        outputs.check_output_dir(target, {"seed": 1})


def _damage(checkpoint: outputs.epath.Path) -> int:
    """Overwrites every object of ``checkpoint`` with random bytes; returns their count."""
    rng = np.random.default_rng(0)
    files = list(outputs.files_under(checkpoint))
    for path in files:
        path.write_bytes(rng.bytes(100))
    return len(files)


def test_a_run_trains_resumes_and_passes_over_a_damaged_checkpoint_on_gcs(
    bucket: str, tmp_path: Path
) -> None:
    options = dict(steps=4, checkpoint_freq=1, seed=3)
    local = train.run(tiny_config(tmp_path / "local", ALGORITHM, **options), log=_quiet)
    config = tiny_config(f"{bucket}/runs/run", ALGORITHM, **options)
    run_dir = outputs.as_path(config.output_dir)

    # A fresh run: the records of the same run on a local disk, every file in the bucket.
    assert comparable(train.run(config, log=_quiet)) == comparable(local)
    assert sorted(path.name for path in run_dir.iterdir()) == [
        outputs.ARGS, outputs.CHECKPOINTS, outputs.DONE, outputs.RESULTS]
    assert json.loads((run_dir / outputs.ARGS).read_text()) == config.run_args()
    checkpoints = run_dir / outputs.CHECKPOINTS
    assert sorted(path.name for path in checkpoints.iterdir()) == ["2", "3"]
    assert (checkpoints / "3" / "commit_success.txt").exists()  # orbax's mark on GCS

    # Killed after the checkpoint of step 2: the record of step 3 written, its checkpoint
    # not, a torn line, no done.
    (run_dir / outputs.DONE).unlink()
    (checkpoints / "3").rmtree()
    results = run_dir / outputs.RESULTS
    results.write_text(results.read_text() + json.dumps(local[-1])[:50])
    lines: list[str] = []
    resumed = train.run(config, log=lines.append)
    assert "resumed from the checkpoint of step 2" in lines[0]
    assert comparable(resumed) == comparable(local)
    assert comparable(outputs.read_records(results)) == comparable(local)

    # The newest checkpoint damaged: the run resumes from the one before and moves the
    # damaged one aside, by copies.
    (run_dir / outputs.DONE).unlink()
    damaged_files = _damage(checkpoints / "3")
    lines.clear()
    resumed = train.run(config, log=lines.append)
    assert lines[0].startswith(f"checkpoint {checkpoints / '3'} does not restore (")
    assert "resumed from the checkpoint of step 2" in lines[1]
    assert comparable(resumed) == comparable(local)
    assert comparable(outputs.read_records(results)) == comparable(local)
    assert sorted(path.name for path in checkpoints.iterdir()) == ["2", "3"]
    kept = run_dir / outputs.DAMAGED_CHECKPOINTS / "3"
    assert len(list(outputs.files_under(kept))) == damaged_files

    lines.clear()  # finished: left as it is
    assert comparable(train.run(config, log=lines.append)) == comparable(local)
    assert "finished already" in lines[0]
    [result] = collect_results.load_runs(f"{bucket}/runs")
    assert result.finished and result.algorithm == ALGORITHM
