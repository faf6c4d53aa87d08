"""A DomainBed-style Flax trainer for CorGrad and the gradient-aggregation family.

Commands (DomainBed's names)::

    python -m experiments.train            # one run
    python -m experiments.sweep            # every test-env combination x algorithm x trial
    python -m experiments.collect_results DIR   # the results tables
    python -m experiments.main_job         # a short ERM vs CorGrad comparison on CPU
    python -m experiments.train --num_devices 8 --dry_run   # the sharding plan of a run
    python -m experiments.download         # DomainBed's image datasets
    python -m experiments.analysis         # the paper's Figures 3, 6, 7 and Table 2

Layers, each importing only those above it:

1. :mod:`corgrad_jax`, the library;
2. shared pieces: :mod:`experiments.cli` (configs to flags, one error path),
   :mod:`experiments.hparams`, :mod:`experiments.registry` (named entries),
   :mod:`experiments.seeding`, :mod:`experiments.run_dir` (the files of a run);
3. registries: :mod:`experiments.algorithms`, :mod:`experiments.data`,
   :mod:`experiments.models`, and :mod:`experiments.hparams_registry` over them;
4. :mod:`experiments.training`: the config, pure steps, one loop with hooks, evaluation,
   checkpoints, the device mesh;
5. results: :mod:`experiments.results` (no JAX);
6. commands: :mod:`experiments.train`, :mod:`experiments.sweep`,
   :mod:`experiments.main_job`, :mod:`experiments.dry_run`, :mod:`experiments.download`,
   :mod:`experiments.analysis`.

A new algorithm, dataset or model is one entry of its registry.
"""
