"""Experiments: a YAML config names the model rows, training settings, data, split protocol,
seeds and test sets of a results table; :func:`run_experiment` trains every row on every split
(resuming what was interrupted) and writes per-split metrics, the mean ± std table and the
provenance. ``contentiqa experiment CONFIG.yaml`` is the command; ``configs/`` ships the papers'
tables and the schema (``configs/README.md``)."""
from .config import ConfigError, DataSpec, ExperimentConfig, RunSpec, data_missing, experiment_missing, load_config, run_missing
from .runner import (ExperimentResult, ExperimentSkipped, StartMissing, check_before_training, data_absent, default_out_dir,
                     provenance, run_experiment)

__all__ = [
    "ConfigError",
    "DataSpec",
    "ExperimentConfig",
    "ExperimentResult",
    "ExperimentSkipped",
    "RunSpec",
    "StartMissing",
    "check_before_training",
    "data_absent",
    "data_missing",
    "default_out_dir",
    "experiment_missing",
    "load_config",
    "provenance",
    "run_experiment",
    "run_missing",
]
