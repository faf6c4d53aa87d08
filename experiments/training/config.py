"""The arguments of one run, validated in one place: :class:`TrainConfig`.

Every command composes it: ``python -m experiments.train`` takes its fields as flags,
the sweep takes the fields that are not per run (:mod:`experiments.sweep`), and the
analysis builds its runs from it. :meth:`TrainConfig.resolved` checks every field once
and fills in the dataset's defaults; a :class:`~experiments.cli.ConfigError` names the
field and what was expected.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from experiments import data, models
from experiments.algorithms import ALGORITHMS, Algorithm, get_algorithm
from experiments.cli import ConfigError
from experiments.hparams import HParams
from experiments.hparams_registry import get_hparams
from experiments.training import parallel

GRADIENT_METHODS = ("loop", "vmap", "vjp")
DTYPES = ("float32", "bfloat16")
"""Compute dtypes of the convolutions and dense layers (``--dtype``)."""
LOCATION_FIELDS = ("output_dir", "data_dir", "layout")
"""Fields that do not change the results, so not in ``args.json``: where the files and
the arrays live."""
LATER_FIELDS = {"model": None, "dtype": "float32", "augmentation": "host"}
"""Fields added after runs were first written, with the value those runs had: recorded
in ``args.json`` only when it differs, so that the run directories of earlier versions
resume. (``augmentation``'s default is ``"device"``: a run of an image folder written
before it existed resumes with ``--augmentation host``, and one started without it is
told so by the arguments' difference.)"""
NOT_RECORDED_WITHOUT_IMAGE_FILES = ("augmentation",)
"""Fields that change nothing for a dataset not read from image files (MNIST), left out
of its ``args.json``."""


def _field(default: Any, help_text: str, **metadata: Any) -> Any:
    return dataclasses.field(default=default, metadata={"help": help_text, **metadata})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The arguments of one run: the flags of ``python -m experiments.train``
    (DomainBed's names).

    Attributes:
        dataset: a registered dataset (``RotatedMNIST``, ``ColoredMNIST``, ``PACS``,
            ``VLCS``, ``OfficeHome``, ``TerraIncognita``, ``DomainNet``) or the path of a
            folder of domain folders.
        algorithm: a registered algorithm (:data:`experiments.algorithms.ALGORITHMS`).
        test_envs: indices of the environments held out together.
        output_dir: the run directory (results, checkpoints, ``done``).
        data_dir: root of the datasets read from disk (unused for the embedded ones).
        steps: number of updates; None for the dataset's (DomainBed's 5,000).
        checkpoint_freq: steps between evaluations and checkpoints; None for the
            dataset's (100 for MNIST, 300 for images).
        hparams: values replacing the registry's (``--hparams`` JSON).
        hparams_seed: 0 for the default hparams, otherwise a random-search draw.
        trial_seed: seeds the data splits (and the embedded data's construction).
        seed: seeds initialization, minibatch order, dropout and the algorithm.
        holdout_fraction: share of every environment held out as its ``out`` split.
        pretrained: weights to start from (a model that has them: ResNet-18).
        gradient_method: how per-domain gradients are computed: ``loop`` (fastest on
            CPU), ``vmap`` or ``vjp``.
        max_eval_examples: evaluate at most this many examples per split (None: all);
            for quick tests.
        model: a registered model (:data:`experiments.models.MODELS`); None for the
            dataset's.
        dtype: the compute dtype of the convolutions and dense layers (:data:`DTYPES`);
            parameters, optimizer state, BatchNorm statistics, per-domain gradients and
            the loss stay float32 (README, "Mixed precision").
        augmentation: for a dataset read from image files, where training images are
            augmented: ``device`` (decoded once into the cache as uint8 squares,
            cropped, jittered and normalised by jitted JAX on the accelerator;
            :mod:`experiments.data.device_images`) or ``host`` (decoded and augmented
            with PIL on the host for every example, as before this field existed).
        layout: the devices and hosts the run uses (the device flags).
    """

    dataset: str = _field("RotatedMNIST", "a registered dataset, or a folder of domain folders")
    algorithm: str = _field("erm", "one of " + ", ".join(ALGORITHMS))
    test_envs: tuple[int, ...] = _field((0,), "environments held out together")
    output_dir: str = _field("train_output", "the run directory")
    data_dir: str | None = _field(None, "root of the datasets read from disk")
    steps: int | None = _field(None, "updates (default: the dataset's, 5000 for most)")
    checkpoint_freq: int | None = _field(None, "steps between checkpoints (default: dataset's)")
    hparams: dict[str, Any] | None = _field(None, "JSON overrides of the hparams")
    hparams_seed: int = _field(0, "0: the default hparams; else a random-search draw")
    trial_seed: int = _field(0, "seeds the data splits")
    seed: int = _field(0, "seeds everything else")
    holdout_fraction: float = _field(0.2, "share of every environment held out")
    pretrained: str | None = _field(None, "weights to start from (ResNet-18: torchvision's)")
    gradient_method: str = _field("loop", ", ".join(GRADIENT_METHODS))
    max_eval_examples: int | None = _field(None, "evaluate at most this many per split")
    model: str | None = _field(None, "a registered model (default: the dataset's)")
    dtype: str = _field("float32", "compute dtype of convolutions and dense layers: "
                        + ", ".join(DTYPES))
    augmentation: str = _field(
        "device", "device or host: where image folders are augmented (JAX or PIL)")
    layout: parallel.DeviceLayout = _field(
        parallel.DeviceLayout(), "devices (do not change the results)")

    # -- the registries' entries --

    def dataset_spec(self) -> data.DatasetSpec:
        """The dataset's entry (a folder given by path: made from its folder names).

        Raises:
            ConfigError: unknown dataset.
        """
        try:
            return data.get_dataset_spec(self.dataset, self.data_dir)
        except ValueError as error:
            raise ConfigError(str(error)) from None

    def algorithm_entry(self) -> Algorithm:
        """The algorithm's entry.

        Raises:
            ConfigError: unknown algorithm.
        """
        try:
            return get_algorithm(self.algorithm)
        except ValueError as error:
            raise ConfigError(str(error)) from None

    def model_name(self) -> str:
        """``model``, or the dataset's default."""
        return self.model or self.dataset_spec().model

    def run_hparams(self) -> HParams:
        """The run's hyperparameters: the registry's for the seeds, with the overrides.

        Raises:
            ConfigError: an override names a hyperparameter the run lacks, or gives it
                a value of the wrong type or out of range.
        """
        try:
            return get_hparams(
                self.algorithm_entry(),
                self.dataset_spec(),
                hparams_seed=self.hparams_seed,
                trial_seed=self.trial_seed,
                overrides=self.hparams,
            )
        except ValueError as error:
            raise ConfigError(str(error)) from None

    # -- validation --

    def resolved(self, *, check_files: bool = True) -> TrainConfig:
        """This config with the dataset defaults filled in, after checking every field.

        ``check_files=False`` skips the checks of ``data_dir`` and ``pretrained`` (a dry
        run plans a folder dataset known by name without its files).

        Raises:
            ConfigError: a field is invalid (one line, naming it and what was expected).
        """
        self.algorithm_entry()
        spec = self.dataset_spec()
        try:
            spec.check_test_envs(tuple(self.test_envs))
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if check_files and spec.needs_data_dir:
            if self.data_dir is None:
                raise ConfigError(f"dataset {spec.name} is read from disk: pass --data_dir")
            if not Path(self.data_dir).is_dir():
                raise ConfigError(f"data_dir {self.data_dir} does not exist or is not a directory")
        if self.augmentation not in data.AUGMENTATIONS:
            raise ConfigError(
                f"unknown augmentation {self.augmentation!r}; expected one of "
                f"{', '.join(data.AUGMENTATIONS)}"
            )
        if self.gradient_method not in GRADIENT_METHODS:
            raise ConfigError(
                f"unknown gradient method {self.gradient_method!r}; expected one of "
                f"{', '.join(GRADIENT_METHODS)}"
            )
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}; expected one of {', '.join(DTYPES)}")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ConfigError(f"holdout_fraction must lie in (0, 1), got {self.holdout_fraction}")
        try:
            self.layout.check()
        except parallel.PlanError as error:
            raise ConfigError(str(error)) from None
        for name in ("steps", "checkpoint_freq", "max_eval_examples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")
        try:
            model = models.get_model_entry(self.model_name())
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if self.pretrained is not None:
            if model.load_pretrained is None:
                raise ConfigError(f"--pretrained needs a model with weights; {model.name} has "
                                  "none")
            if check_files and not Path(self.pretrained).is_file():
                raise ConfigError(f"pretrained weights {self.pretrained} do not exist")
        self.run_hparams()
        return dataclasses.replace(
            self,
            test_envs=tuple(int(env) for env in self.test_envs),
            steps=self.steps or spec.steps,
            checkpoint_freq=self.checkpoint_freq or spec.checkpoint_freq,
        )

    def run_args(self) -> dict[str, Any]:
        """The arguments that define the run's results: all but where files and arrays
        live (:data:`LOCATION_FIELDS`), the :data:`LATER_FIELDS` left at the value of
        earlier runs, and those of :data:`NOT_RECORDED_WITHOUT_IMAGE_FILES` for a
        dataset not read from image files."""
        args = dataclasses.asdict(self)
        for name in LOCATION_FIELDS:
            args.pop(name)
        for name, default in LATER_FIELDS.items():
            if args[name] == default:
                args.pop(name)
        if not self.dataset_spec().reads_image_files:
            for name in NOT_RECORDED_WITHOUT_IMAGE_FILES:
                args.pop(name, None)
        args["test_envs"] = list(self.test_envs)
        return args
