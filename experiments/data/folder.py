"""Image datasets read from folders (PACS, VLCS, OfficeHome, TerraIncognita, DomainNet, or
any folder with their layout, :mod:`experiments.data.folder_layout`).

Pipeline:

1. **Build once** (:mod:`experiments.data.folder_cache`): the images go into a
   fingerprinted ArrayRecord cache, one split per domain: decoded and resized to uint8
   squares of side ``stored_size`` (the device path), or as their encoded files (the
   host path).
2. **Read** with ``tfds.builder_from_directory(...).as_data_source()`` (random access,
   no TensorFlow): each training domain's ``in`` split is an endless stream of epochs,
   each a fresh permutation (device path: NumPy's, drawn from ``seed_hash(seed, env,
   epoch)`` as for the in-memory datasets, :mod:`experiments.data.sampling`; host path:
   Grain's ``MapDataset.source(in split).shuffle(seed).repeat()``), so the element at
   position ``p`` of domain ``d`` depends on (seed, d, p) only; step ``t`` takes
   positions ``t * B ... t * B + B - 1`` of every training domain. A Grain
   ``IterDataset`` reads ahead on ``num_workers`` threads.
3. **Augment** as DomainBed, by one of two paths (``augmentation``):

   * ``"device"``: the host gathers the stored uint8 squares (``stored_train_batch``,
     ``stored_eval_batches``); the accelerator crops, flips, jitters, normalises and,
     for evaluation, resizes them (:attr:`FolderDataset.device_transform`,
     :mod:`experiments.data.device_images`), keyed by (seed, step, domain, example);
   * ``"host"``: each element is decoded and augmented with PIL on the host
     (:mod:`experiments.data.images`, ``random_map`` seeded per domain), 3-5 ms of CPU
     per image.

   Either way ``train_batch(step)`` is a pure function of (seed, step): a resumed run
   sees the batches of an uninterrupted one. Evaluation is never augmented (DomainBed
   evaluates training environments through their augmenting transform).

Splits follow DomainBed's ``train.py`` (:func:`experiments.data.splits.holdout_split`
seeded by ``seed_hash(trial_seed, i)``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from experiments.data.base import Batch, Split
from experiments.data.device_images import DeviceTransform, default_stored_size
from experiments.data.folder_cache import default_cache_root, ensure_cache
from experiments.data.folder_layout import Layout, dataset_root, scan
from experiments.data.images import augment_image, eval_transform
from experiments.data.registry import AUGMENTATIONS, DatasetSpec, get_dataset_spec
from experiments.data.sampling import position_index
from experiments.data.splits import holdout_split
from experiments.seeding import seed_hash


class _Subset(Sequence):
    """Random access to ``source[keys[i]]``."""

    def __init__(self, source: Sequence[Any], keys: np.ndarray) -> None:
        self._source = source
        self._keys = keys

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, index: int) -> Any:  # type: ignore[override]
        return self._source[int(self._keys[index])]


class _EpochOrder:
    """Position ``p`` of an endless stream of epochs of ``source``, each a fresh NumPy
    permutation (:func:`experiments.data.sampling.position_index`), mapped by ``read``."""

    def __init__(
        self, source: Sequence[Any], seed: int, env: int, read: Callable[[Any], Any]
    ) -> None:
        self._source = source
        self._seed = seed
        self._env = env
        self._read = read

    def __getitem__(self, position: int) -> Any:
        index = position_index(len(self._source), position, seed=self._seed, env=self._env)
        return self._read(self._source[index])


class FolderDataset:
    """A folder dataset split into environments (:class:`~experiments.data.EnvironmentSplits`).

    Built by :func:`load_folder_dataset`. Attributes as the protocol, plus ``classes``
    (class folder names, label order), ``root`` and ``augmentation`` (``"device"`` or
    ``"host"``). ``device_transform`` is None on the host path.
    """

    def __init__(
        self,
        *,
        name: str,
        layout: Layout,
        sources: Sequence[Sequence[dict[str, Any]]],
        test_envs: Sequence[int],
        holdout_fraction: float,
        trial_seed: int,
        batch_size: int,
        seed: int,
        augment: bool,
        resolution: int,
        fast_decode: bool,
        num_workers: int,
        augmentation: str,
        stored_size: int | None,
    ) -> None:
        import grain

        self._grain = grain
        self.name = name
        self.root = layout.root
        self.environments = layout.environments
        self.classes = layout.classes
        self.num_classes = len(layout.classes)
        self.input_shape = (resolution, resolution, 3)
        self.train_envs = tuple(i for i in range(len(self.environments)) if i not in test_envs)
        self.batch_size = batch_size
        self.seed = seed
        self.resolution = resolution
        self._augment = augment
        self.augmentation = augmentation
        self.device_transform: DeviceTransform | None = None
        if augmentation == "device":
            assert stored_size is not None
            self.device_transform = DeviceTransform(
                resolution=resolution, stored_size=stored_size, seed=seed, augment=augment
            )
        self._fast_decode = fast_decode
        self._num_workers = num_workers
        self._sources = sources
        self._splits: list[dict[str, np.ndarray]] = []
        for index, source in enumerate(sources):
            in_keys, out_keys = holdout_split(
                len(source), holdout_fraction, seed_hash(trial_seed, index)
            )
            self._splits.append({"in": in_keys, "out": out_keys})
        for index in self.train_envs:
            if len(self._splits[index]["in"]) == 0:
                raise ValueError(
                    f"training environment {self.environments[index]!r} has no examples "
                    f"left after holding out {holdout_fraction:.0%} of {len(sources[index])}"
                )
        self._train_elements = [self._train_dataset(index) for index in self.train_envs]
        self._iterator: Any = None
        self._next_step = -1
        self._rows: tuple[range, range] = (range(0), range(0))

    # -- elements --

    def _eval_element(self, record: dict[str, Any]) -> dict[str, np.ndarray]:
        path = os.path.join(self.root, _text(record["path"]))
        x = eval_transform(record["image"], path, self.resolution, fast_decode=self._fast_decode)
        return {"x": x, "y": np.int32(record["label"])}

    def _train_element(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        path = os.path.join(self.root, _text(record["path"]))
        x = augment_image(
            record["image"], path, self.resolution, rng, fast_decode=self._fast_decode
        )
        return {"x": x, "y": np.int32(record["label"])}

    @staticmethod
    def _stored_eval_element(record: dict[str, Any]) -> dict[str, np.ndarray]:
        return {"x": record["pixels"], "y": np.int32(record["label"])}

    @staticmethod
    def _stored_train_element(record: dict[str, Any]) -> dict[str, np.ndarray]:
        return {"x": record["pixels"], "y": np.int32(record["label"]), "size": record["size"]}

    def _train_dataset(self, env: int) -> Any:
        """Infinite, per-epoch reshuffled ``in`` split of environment ``env``: stored
        squares (device path: each epoch a NumPy permutation, as the in-memory datasets)
        or augmented model inputs (host path: Grain's shuffle, whose index shuffle costs
        as much as reading a stored square on small domains)."""
        if self.device_transform is not None:
            return _EpochOrder(
                self._split_source(env, "in"), self.seed, env, self._stored_train_element
            )
        dataset = self._grain.MapDataset.source(self._split_source(env, "in"))
        dataset = dataset.shuffle(seed=seed_hash("shuffle", self.seed, env) % 2**32).repeat()
        if self._augment:
            return dataset.random_map(
                self._train_element, seed=seed_hash("augment", self.seed, env) % 2**32
            )
        return dataset.map(self._eval_element)

    def _split_source(self, env: int, split: Split) -> _Subset:
        if not 0 <= env < len(self.environments):
            raise ValueError(f"environment {env} out of range [0, {len(self.environments)})")
        if split not in ("in", "out"):
            raise ValueError(f"split must be 'in' or 'out', got {split!r}")
        return _Subset(self._sources[env], self._splits[env][split])

    def split_size(self, env: int, split: Split) -> int:
        """Number of examples in environment ``env``'s ``split``."""
        return len(self._split_source(env, split))

    def split_keys(self, env: int, split: Split) -> np.ndarray:
        """Indices (ImageFolder order within the domain) of environment ``env``'s split."""
        self._split_source(env, split)
        return self._splits[env][split].copy()

    # -- the protocol --

    def _element(self, rows: tuple[range, range], index: int) -> dict[str, Any]:
        """Element ``index`` of the flattened stream ``(step, domain, position)`` of ``rows``."""
        domains, positions = rows
        per_step = len(domains) * len(positions)
        step, rest = divmod(index, per_step)
        domain, position = divmod(rest, len(positions))
        return self._train_elements[domains[domain]][step * self.batch_size + positions[position]]

    def _start(self, step: int, rows: tuple[range, range]) -> None:
        per_step = len(rows[0]) * len(rows[1])
        element = functools.partial(self._element, rows)
        dataset = self._grain.MapDataset.range(step * per_step, sys.maxsize).map(element)
        options = self._grain.ReadOptions(
            num_threads=self._num_workers, prefetch_buffer_size=2 * per_step
        )
        self._iterator = iter(dataset.to_iter_dataset(options).batch(per_step))
        self._next_step = step
        self._rows = rows

    def _batch_rows(self, domains: slice, examples: slice) -> tuple[range, range]:
        rows = (range(len(self.train_envs))[domains], range(self.batch_size)[examples])
        if not rows[0] or not rows[1]:
            raise ValueError(f"rows [{domains}, {examples}] of the batch are empty")
        return rows

    def stored_train_batch(
        self, step: int, domains: slice = slice(None), examples: slice = slice(None)
    ) -> Batch:
        """Rows ``[domains, examples]`` of step ``step``'s batch as stored: on the device
        path x ``(D, B, S, S, 3)`` uint8, y ``(D, B)`` int32 and size ``(D, B, 2)`` int32
        (original width, height), which :attr:`device_transform` turns into model
        inputs; on the host path the model inputs (:meth:`train_batch`).

        Only the selected rows are read. Sequential calls (with the same rows) are served
        by a thread pool that reads ahead; any other step restarts it there. The result
        depends on (seed, step) only.
        """
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}")
        rows = self._batch_rows(domains, examples)
        if self._iterator is None or step != self._next_step or rows != self._rows:
            self._start(step, rows)
        batch = next(self._iterator)
        self._next_step = step + 1
        shape = (len(rows[0]), len(rows[1]))
        return {key: value.reshape(shape + value.shape[1:]) for key, value in batch.items()}

    def train_batch(
        self, step: int, domains: slice = slice(None), examples: slice = slice(None)
    ) -> Batch:
        """The minibatches of step ``step``: x ``(D, B, H, W, 3)`` float32, y ``(D, B)`` int32.

        ``domains`` and ``examples`` select rows of that batch; only those are read. On
        the device path the stored rows go through :attr:`device_transform` on the
        default device and come back (the trainer keeps them there instead). The
        result depends on (seed, step) only.
        """
        batch = self.stored_train_batch(step, domains, examples)
        if self.device_transform is None:
            return batch
        domain_ids, example_ids = self._batch_rows(domains, examples)
        inputs = self.device_transform.train(
            batch, step, np.asarray(domain_ids, np.int32), np.asarray(example_ids, np.int32)
        )
        return {"x": np.asarray(inputs["x"]), "y": batch["y"]}

    def stored_eval_batches(
        self, env: int, split: Split, batch_size: int, start: int = 0, stop: int | None = None
    ) -> Iterator[Batch]:
        """Every example of ``env``'s ``split`` once (positions ``[start, stop)`` of it),
        in index order, as stored: x ``(N, S, S, 3)`` uint8 on the device path (for
        :meth:`DeviceTransform.eval <experiments.data.device_images.DeviceTransform.eval>`),
        the model inputs on the host path (:meth:`eval_batches`)."""
        self._split_source(env, split)  # checks env and split
        keys = self._splits[env][split][start:stop]
        if len(keys) == 0:
            return
        source = _Subset(self._sources[env], keys)
        element = self._eval_element if self.device_transform is None else (
            self._stored_eval_element)
        dataset = self._grain.MapDataset.source(source).map(element)
        options = self._grain.ReadOptions(
            num_threads=self._num_workers, prefetch_buffer_size=2 * batch_size
        )
        yield from dataset.to_iter_dataset(options).batch(batch_size)

    def eval_batches(
        self, env: int, split: Split, batch_size: int, start: int = 0, stop: int | None = None
    ) -> Iterator[Batch]:
        """Every example of ``env``'s ``split`` once (positions ``[start, stop)`` of it),
        in index order, un-augmented: x ``(N, H, W, 3)`` float32, y ``(N,)`` int32."""
        for batch in self.stored_eval_batches(env, split, batch_size, start, stop):
            if self.device_transform is not None:
                batch = {**batch, "x": np.asarray(self.device_transform.eval(batch)["x"])}
            yield batch


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def load_folder_dataset(
    dataset: str | DatasetSpec,
    data_dir: str | None,
    *,
    test_envs: Sequence[int],
    holdout_fraction: float,
    trial_seed: int,
    batch_size: int,
    seed: int,
    augment: bool = True,
    resolution: int = 224,
    augmentation: str = "device",
    stored_size: int | None = None,
    fast_decode: bool = True,
    num_workers: int | None = None,
    cache_dir: str | None = None,
) -> FolderDataset:
    """A DomainBed image dataset from ``<data_dir>/<name>/<domain>/<class>/<image>``.

    Args:
        dataset: a registered dataset's name or entry (:mod:`experiments.data.registry`:
            PACS, VLCS, OfficeHome, TerraIncognita, DomainNet), or a folder (a path, or
            a name under ``data_dir``) with that layout; its domains are then its
            sorted sub-folders.
        data_dir: the folder holding the datasets (may be None when ``name`` is a path).
        test_envs: environments left out of training.
        holdout_fraction: fraction of each environment held out as its ``out`` split.
        trial_seed: seeds the ``in``/``out`` splits (DomainBed's ``trial_seed``).
        batch_size: examples per training environment and step.
        seed: seeds minibatch order and augmentation.
        augment: DomainBed's ``data_augmentation``: augment training minibatches.
        resolution: image side (DomainBed: 224); small values make quick tests.
        augmentation: ``"device"``: the cache holds decoded uint8 squares and the
            accelerator augments (:mod:`experiments.data.device_images`); ``"host"``:
            the cache holds the encoded files, decoded and augmented with PIL on the
            host for every example.
        stored_size: the side of the device path's stored squares (default
            :func:`~experiments.data.device_images.default_stored_size`: 256 for 224).
        fast_decode: (host path) decode JPEGs at a reduced DCT scale where the output
            keeps at least ``resolution`` pixels a side (much faster on large photos).
        num_workers: reading (and, for the host path, decoding) threads (default: the
            number of CPUs).
        cache_dir: where the ArrayRecord copies live (default ``<data_dir>/.tfds_cache``,
            or ``~/.cache/corgrad_jax/folder_datasets`` if ``data_dir`` is None or
            read-only).

    Returns:
        A :class:`FolderDataset` (an ``EnvironmentSplits``).

    Raises:
        FileNotFoundError: when the dataset folder does not exist.
        ValueError: for an unknown name, a malformed layout (missing or empty domains,
            class folders that differ across domains), an image that does not decode
            (naming the file), or bad arguments (test envs as
            :meth:`~experiments.data.registry.DatasetSpec.check_test_envs`).
    """
    if batch_size <= 0 or resolution <= 0:
        raise ValueError(
            f"batch_size and resolution must be positive, got {batch_size} and {resolution}"
        )
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    if augmentation not in AUGMENTATIONS:
        raise ValueError(
            f"augmentation must be one of {', '.join(AUGMENTATIONS)}, got {augmentation!r}"
        )
    if augmentation == "host":
        stored_size = None  # the encoded files
    elif stored_size is None:
        stored_size = default_stored_size(resolution)
    spec = dataset if isinstance(dataset, DatasetSpec) else get_dataset_spec(dataset, data_dir)
    if spec.root is not None:
        root, expected = spec.root, None
    else:
        root, expected = dataset_root(spec.name, spec.folders, data_dir), spec.environments
    layout = scan(root, expected)
    spec = dataclasses.replace(spec, environments=layout.environments)
    spec.check_test_envs(tuple(test_envs))
    workers = num_workers or os.cpu_count() or 1
    cache_root = cache_dir or default_cache_root(data_dir)
    version_dir = ensure_cache(layout, spec.name, cache_root, workers, stored_size)

    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(version_dir)
    decoders = None if stored_size is not None else {"image": tfds.decode.SkipDecoding()}
    splits = builder.as_data_source(decoders=decoders)
    sources = [splits[f"env{index}"] for index in range(len(layout.environments))]
    return FolderDataset(
        name=spec.name,
        layout=layout,
        sources=sources,
        test_envs=tuple(test_envs),
        holdout_fraction=holdout_fraction,
        trial_seed=trial_seed,
        batch_size=batch_size,
        seed=seed,
        augment=augment,
        resolution=resolution,
        fast_decode=fast_decode,
        num_workers=workers,
        augmentation=augmentation,
        stored_size=stored_size,
    )
