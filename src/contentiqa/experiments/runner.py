"""Running an experiment config: every run (table row) on every split, then the results folder.

Results folder (``out``)::

    config.yaml                  the config as written (config.json when given as a mapping)
    provenance.json              resolved config, package version, git commit, torch, date, command
    splits.json                  the splits (made once, from the protocol and seeds)
    content_labels_<data>.csv    pseudo content labels, for ``labels: auto``
    runs/<run>/seed<S>/          the trainer's folder: last.pt, best.pt, metrics.jsonl, config.json, and tested.pt
                                 (the model the test figures come from: chosen epoch, calibrated)
    metrics/<run>/seed<S>.json   that split's test metrics (one entry per test set) + provenance
    results.json                 per run: per-split metrics and mean/std/n per test set and metric
    results.md                   the mean ± std table

A split whose metrics JSON exists is not run again; an interrupted one continues from its
``last.pt`` (the trainer's exact resume). So rerunning a config after a crash, or after adding
seeds or rows, only does the missing work.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from ..data.imageio import ImageLoadError
from ..data.splits import OFFICIAL_VAL_FRACTION, check_held_out_across_sets
from ..training.config import RUNTIME_SETTINGS, finite_above_zero
from ..utils.io import file_sha256
from .config import (INTRA, ConfigError, DataSpec, ExperimentConfig, RunSpec, experiment_missing, load_config, run_missing,
                     slugify, weights_missing)

EXPERIMENT_LOCK = ".experiment.lock"
"""The lock file :func:`run_experiment` holds in its output folder (one experiment per folder)."""
EXPERIMENT_FILES = ("results.json", "results.md", "config.yaml", "config.json", "provenance.json")
"""The experiment folder's own files, written atomically (a killed run's temporaries are removed)."""
UNCHECKED_WEIGHTS = ("{name}: its finished splits are listed as recorded (that they were trained from the same "
                     "weights, and on the same data, could not be compared without those weights)")
TABLE_METRICS = ("plcc", "srocc", "rmse", "accuracy", "acceptable")
SUMMARY_METRICS = ("plcc", "srocc", "krocc", "rmse", "accuracy", "acceptable")
METRIC_NAMES = {"plcc": "PLCC", "srocc": "SROCC", "krocc": "KROCC", "rmse": "RMSE", "accuracy": "acc.",
                "acceptable": "acc. (any label)"}


class ExperimentSkipped(RuntimeError):
    """Raised instead of skipping when ``strict``: something the config needs is missing."""


@dataclass
class ExperimentResult:
    out_dir: Path
    config: ExperimentConfig
    results: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    """Why the whole experiment did not run (empty when it ran)."""
    skipped_runs: dict[str, list[str]] = field(default_factory=dict)
    """Rows that did not run, with what they lacked."""
    markdown: str = ""

    @property
    def ran(self) -> bool:
        return not self.skipped


# -- provenance ---------------------------------------------------------------------------------
def _git(args: list[str], cwd: Path) -> str:
    import subprocess

    try:
        r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return ""
    return r.stdout.strip() if r.returncode == 0 else ""


def provenance() -> dict[str, Any]:
    """What produced a result: package version, git commit (of the source tree the package
    runs from, if any), torch, Python, machine (and GPU), date and command line."""
    import platform

    import torch

    from .. import __version__

    src = Path(__file__).resolve().parents[1]
    commit = _git(["rev-parse", "HEAD"], src)
    return {
        "contentiqa": __version__,
        "git_commit": commit or None,
        "git_dirty": bool(_git(["status", "--porcelain", "--untracked-files=no"], src)) if commit else None,
        "torch": str(torch.__version__),  # a plain str: checkpoints hold only plain data
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": list(sys.argv),
    }


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None  # JSON has no NaN (a collapsed model's correlations): null, which tables leave out
    return obj


def resolved_config(cfg: ExperimentConfig) -> dict[str, Any]:
    """The config after defaults, variables and paths: what actually ran."""
    from dataclasses import asdict

    d = asdict(cfg)
    for k in ("text", "raw", "source"):
        d.pop(k, None)
    d["source"] = str(cfg.source) if cfg.source else None
    return _jsonable(d)


# -- data ----------------------------------------------------------------------------------------
def _dataset_root(spec: DataSpec) -> Path:
    """The folder dataset keys are relative to (a CSV dataset's folder)."""
    return spec.root.parent if spec.root.is_file() or spec.name == "csv" else spec.root


def apply_labels(table: pd.DataFrame, spec: DataSpec, out_dir: Path, progress: bool = False, log: Callable = print) -> pd.DataFrame:
    """``table`` with the content labels of ``spec.labels``, joined on the dataset-relative key
    (see :mod:`contentiqa.data.labels`: pseudo-labels or human scene labels). With no file yet,
    pseudo-labels are made with the offline ImageNet labeller and written there."""
    from ..data.labels import LabelsError, join_labels
    from ..utils.io import atomic_write_text

    path = spec.labels if spec.labels is not None else out_dir / f"content_labels_{slugify(spec.label)}.csv"
    if not path.is_file():
        from ..data.content_labels import label_table

        log(f"pseudo-labelling the content of {len(table)} images of {spec.label} -> {path}")
        done = label_table(table, progress=progress)
        cols = [c for c in ("key", "mos", "category", "category_confidence", "category_source") if c in done]
        rows = done[cols].rename(columns={"key": "image"})
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, rows.to_csv(index=False))
    try:
        out = join_labels(table, path, _dataset_root(spec))
    except LabelsError as exc:
        raise ConfigError(str(exc)) from None
    lacking = int(out["category"].isna().sum())
    if lacking:
        log(f"{spec.label}: {lacking} of {len(out)} images have no content label in {path.name} (no content loss for them)")
    return out


def _about(spec: DataSpec) -> str:
    """How messages name a dataset: its label and the file (or folder) it is read from."""
    return f"dataset {spec.label} ({spec.root})"


def load_data(spec: DataSpec, out_dir: Path | None = None, progress: bool = False, log: Callable = print):
    """(table, scale) of a dataset spec (labels applied when the spec has them). A table that
    cannot be used (unparsable or empty MOS, an image listed twice, loader arguments it does
    not take) is a :class:`ConfigError` naming the dataset's file: the data layer's own message
    does not say which of a config's datasets it read. Absent data stay a FileNotFoundError (a
    :class:`~contentiqa.data.MissingFilesError` for absent images; fewer than 2 images left by
    ``skip_missing``): a config whose data is absent is skipped."""
    table, scale = _load_table(spec)
    if spec.labels is not None or spec.labels_auto:
        table = apply_labels(table, spec, out_dir or Path.cwd(), progress, log)
    return table.reset_index(drop=True), scale


def _load_table(spec: DataSpec):
    """(table, scale) of a dataset as its loader reads it, without content labels (see
    :func:`load_data`): whether its images exist is looked up, none is opened."""
    from ..data import load_dataset

    try:
        ds = load_dataset(spec.name, spec.root, on_missing="skip" if spec.skip_missing else "error", **spec.args)
    except TypeError as exc:  # an ``args`` key the loader does not take
        raise ConfigError(f"{_about(spec)}: args {spec.args} do not suit loader {spec.name}: {exc}") from None
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(f"{_about(spec)}: {exc}") from None
    if spec.skip_missing and len(ds.table) < 2:  # nothing to train or measure on: data absent, said before training
        raise FileNotFoundError(f"{_about(spec)}: {len(ds.table)} image(s) left once skip_missing dropped the missing ones")
    return ds.table, ds.scale


def _splits(cfg: ExperimentConfig, table: pd.DataFrame, out: Path, progress: bool, spec: DataSpec | None = None):
    """The seeded splits of one training set (``spec``, default the first): from the config's
    split file (first set only), else made once into ``splits.json`` (``splits_<label>.json``
    for further sets)."""
    from ..data import make_split_set, save_splits

    spec = spec or cfg.data
    protocol = cfg.protocol_of(spec)
    first = spec is cfg.data
    if cfg.splits is not None and first:
        have = {s.seed: s for s in _read_splits(cfg.splits) if s.protocol == protocol}
        lacking = [s for s in cfg.seeds if s not in have]
        if lacking:
            raise ConfigError(f"split file {cfg.splits} has no {protocol} split for seed(s) {lacking}")
        return _check_splits({s: have[s] for s in cfg.seeds}, table, spec, cfg.splits)
    path = out / ("splits.json" if first else f"splits_{slugify(spec.label)}.json")
    have = {}
    if path.is_file():
        have = {s.seed: s for s in _read_splits(path) if s.protocol == protocol}
    if not all(s in have for s in cfg.seeds):
        try:
            made = make_split_set(table, protocol, seeds=[s for s in cfg.seeds if s not in have], progress=progress)
        except ValueError as exc:  # too few images, no 'split' column for 'official'
            raise ConfigError(f"{_about(spec)}: {exc}") from None
        have.update({s.seed: s for s in made})
        save_splits([have[s] for s in sorted(have)], path)
    return _check_splits({s: have[s] for s in cfg.seeds}, table, spec, path, complete=True)


def _read_splits(path: Path) -> list:
    """``load_splits``, with a damaged or foreign file as a one-line :class:`ConfigError`."""
    from ..data import load_splits

    try:
        return load_splits(path)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"split file {path} cannot be read: {exc}") from None


def _check_test_parts(cfg: ExperimentConfig, sets: list[TrainSet]) -> None:
    """ConfigError, before any training, when the config tests on the splits' test parts and a
    split has none (too few photos for the protocol): it was found after the split had trained."""
    if INTRA not in cfg.tests:
        return
    for ts in sets:
        for seed, split in ts.splits.items():
            if not split.parts.get("test"):
                protocol = cfg.protocol_of(next(s for s in cfg.train_sets if s.label == ts.label))
                why = (" (its 10 cells, SI x MOS quintile, need about 60 images before each gives one; 'ie-iqa' "
                       "keeps 20 % for testing)") if protocol == "iqa-cr" else ""
                raise ConfigError(f"protocol {protocol} gives split seed {seed} of {ts.label} no test part{why}; "
                                  f"drop '{INTRA}' from test")


def _check_cross_tests(sets: list[TrainSet], tests: Sequence[dict[str, Any]]) -> None:
    """ConfigError, before any training, when a cross-dataset test set holds a photo a split
    trains or validates on (the same file, by its real path): its figures, called cross-dataset,
    would be measured on photos the model learnt (the training CSV itself given as a test set)."""
    cross = [t for t in tests if t["spec"] != INTRA]
    if not cross:
        return
    learnt: dict[str, tuple[str, int]] = {}
    for ts in sets:
        for seed, split in ts.splits.items():
            for part in ("train", "val"):
                if split.parts.get(part):
                    for image in ts.table["image"].iloc[split.indices(ts.table, part)]:
                        learnt.setdefault(os.path.realpath(str(image)), (ts.label, seed))
    for t in cross:
        shared = [str(p) for p in t["table"]["image"] if os.path.realpath(str(p)) in learnt]
        if shared:
            label, seed = learnt[os.path.realpath(shared[0])]
            raise ConfigError(f"test set {t['label']}: {len(shared)} of its photos train or validate in {label}'s "
                              f"splits (e.g. {shared[0]}, split seed {seed}): its cross-dataset figures would be "
                              "measured on photos the model learnt; drop them from the test set, or test on the "
                              f"splits' own test parts ('{INTRA}')")


def _check_splits(splits: dict[int, Any], table: pd.DataFrame, spec: DataSpec, path: Path,
                  complete: bool = False) -> dict[int, Any]:
    """``splits`` when every image they name is in ``table`` (and, ``complete``, every image of
    the table is in one of their parts: a split made here, for the whole table); else a
    :class:`ConfigError` now, not a KeyError once training starts or photos left out unsaid (a
    split file made for another table, or a dataset edited since its ``splits.json`` was made)."""
    for seed, split in splits.items():
        covered = 0
        for part in split.parts:
            try:
                covered += len(split.indices(table, part))
            except KeyError as exc:
                raise ConfigError(f"split file {path} does not match {_about(spec)}: {exc.args[0]}; "
                                  "use the split file made for this table (or a new results folder)") from None
        if complete and covered < len(table):
            raise ConfigError(f"split file {path} (seed {seed}) holds {covered} of the {len(table)} images of "
                              f"{_about(spec)}: the table grew since it was made; use a new results folder")
    return splits


# -- one split ----------------------------------------------------------------------------------
def _evaluate(trainer, table: pd.DataFrame, scale, model) -> dict[str, float]:
    """Metrics on ``table`` (MOS on ``scale``: RMSE in that dataset's units), through the
    trainer's cached frozen stages when it used them."""
    return trainer.evaluate_table(table, model, scale=scale)


def _shared_cache_ok(model) -> bool:
    """Frozen encodings may be shared between seeds only when the frozen weights are the same
    for every seed (pretrained or from a file), not a seed's random initialisation."""
    return not model.backbone_from_seed


@dataclass
class TrainSet:
    """One training dataset of an experiment: its table, scale and seeded splits."""

    label: str
    table: pd.DataFrame
    scale: Any
    splits: dict[int, Any]
    val_fraction: float | None = None


def val_positions(n: int, fraction: float, seed: int) -> np.ndarray:
    """The sorted positions, among ``n`` rows, of the ``fraction`` held out for validation under
    ``seed``: the one rule for experiments (:func:`carve_val`) and for shipping (benchmarks/ship.py),
    so that shipped weights hold out the photos seed 0's experiment did."""
    order = np.random.default_rng([seed, 17]).permutation(n)
    return np.sort(order[:max(1, int(round(fraction * n)))])


def carve_val(train: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(train, val)``: a ``fraction`` of a split's train part held out as its validation part,
    drawn per seed (``val_fraction``), so the test part stays untouched."""
    val = val_positions(len(train), fraction, seed)
    return train.iloc[np.setdiff1d(np.arange(len(train)), val)], train.iloc[val]


def _parts(sets: list[TrainSet], seed: int) -> tuple[dict[str, pd.DataFrame], dict[str, dict[str, pd.DataFrame]]]:
    """The split ``seed`` of every training set: the combined train/val parts (with a
    ``dataset`` column when there are several sets) and each set's own parts."""
    own: dict[str, dict[str, pd.DataFrame]] = {}
    for ts in sets:
        split = ts.splits[seed]
        own[ts.label] = {p: ts.table.iloc[split.indices(ts.table, p)] for p in ("train", "val", "test") if split.parts.get(p)}
        if "train" not in own[ts.label]:
            raise ConfigError(f"{ts.label}: split seed {seed} has no train part")
        if ts.val_fraction and "val" not in own[ts.label]:
            own[ts.label]["train"], own[ts.label]["val"] = carve_val(own[ts.label]["train"], ts.val_fraction, seed)
    if len(sets) == 1:
        return dict(own[sets[0].label]), own
    try:
        check_held_out_across_sets(own)
    except ValueError as exc:
        raise ConfigError(f"split seed {seed}: {exc}") from None
    combined = {}
    for p in ("train", "val"):
        chunks = [own[ts.label][p].assign(dataset=ts.label) for ts in sets if p in own[ts.label]]
        if chunks:
            combined[p] = pd.concat(chunks, ignore_index=True)
    return combined, own


FINGERPRINT_VERSION = 4
"""What :func:`split_fingerprints` covers; a split records the version it was fingerprinted
with, and is checked against that version's (records without one: version 1)."""
FINGERPRINT_VERSIONS = (1, 2, 3, 4)


def _table_hash(table: pd.DataFrame, with_labels: bool = False) -> str:
    """The rows as file names and MOS (moving the data elsewhere keeps it), and their content
    labels when asked."""
    cats = table["category"] if with_labels and "category" in table else [None] * len(table)
    return hashlib.sha256("\n".join(f"{Path(str(p)).name}\t{float(m)!r}" + (f"\t{c}" if with_labels else "")
                                     for p, m, c in zip(table["image"], table["mos"], cats)).encode()).hexdigest()


def _scale(scale: Any) -> list:
    return [float(scale.low), float(scale.high), bool(scale.higher_is_better)]


def _named_weights(value: Any) -> Any:
    """Model arguments with each ``*_checkpoint`` path cut to its file name (other values as they are)."""
    if not isinstance(value, dict):
        return value
    return {k: (Path(str(v)).name if k.endswith("_checkpoint") and v is not None else v) for k, v in value.items()}


def _weights_by_content(model_args: dict[str, Any]) -> dict[str, Any]:
    """``model_args`` with each ``*_checkpoint`` path replaced by its file's SHA-256: weights
    retrained in place are other weights, and the same file on another machine (the project
    moved, a GPU run imported) the same ones."""
    return {k: (file_sha256(v) if k.endswith("_checkpoint") and v is not None and Path(str(v)).is_file() else v)
            for k, v in model_args.items()}


def _fingerprinted_args(run: RunSpec, version: int, pinned: bool = False) -> dict[str, Any]:
    """A row's model arguments as a fingerprint of ``version`` covers them. Before version 4,
    also as the row would have been written before it named ``content_from`` (``pinned``)."""
    from ..models.registry import model_entry

    args = run.model_args if version < 3 else _weights_by_content(run.model_args)
    if version < 4:
        # these versions' rows mostly left `content_from` to the registry, whose default moved
        # (iqa-cr's content from the tokens, then the levels): a row naming it now, as its splits
        # were trained, is the recipe they recorded (Fingerprints.differs takes either)
        return {k: v for k, v in args.items() if k != "content_from"} if pinned else args
    return {**model_entry(run.model).defaults, **args}


def _test_set_hashes(tests: Sequence[dict[str, Any]], version: int) -> dict[str, str]:
    """Label -> what a cross-dataset test set's figures depend on: its rows (file names and
    MOS), labels and rating scale, and from version 3 its loader and loader arguments (KonIQ's
    ``resolution`` reads other pixels under the same file names)."""
    return {t["label"]: hashlib.sha256(json.dumps(
                [_table_hash(t["table"], with_labels=True), _scale(t["scale"])]
                + ([t["spec"].name, t["spec"].args] if version >= 3 else []), sort_keys=True, default=str).encode()
            ).hexdigest() for t in tests if t["spec"] != INTRA}


def split_fingerprints(cfg: ExperimentConfig, sets: list[TrainSet], version: int = FINGERPRINT_VERSION,
                       pinned: bool = False) -> dict[str, str]:
    """Row name -> what its splits' figures depend on besides the seed: the row's recipe (its
    model, model arguments and training settings, not its name; where it runs — device, loader
    workers, the cache's runtime — is no part of it), each training set's protocol, validation
    share and rows (file names and MOS: moving the data elsewhere keeps it), and from version 2
    each set's content labels, rating scale and loader arguments, and which checkpoint is
    tested; from version 3 the weights a ``*_checkpoint`` model argument names by their content,
    not their path; from version 4 the model arguments as the registry builds them (its defaults
    under the row's own: a changed default builds another model). A finished split whose fingerprint differs was trained or tested for another
    experiment, and is not averaged into this one (:class:`Fingerprints`)."""
    data = []
    for ts, spec in zip(sets, cfg.train_sets):  # hashed once for every row
        entry: dict[str, Any] = {"label": ts.label, "protocol": cfg.protocol_of(spec), "val_fraction": ts.val_fraction,
                                 "n": len(ts.table), "rows": _table_hash(ts.table)}
        if version >= 2:
            entry.update(labels=_table_hash(ts.table, with_labels=True), scale=_scale(ts.scale), args=spec.args)
        data.append(entry)
    out = {}
    for run in cfg.runs:
        train = {k: v for k, v in run.train.items() if k not in RUNTIME_SETTINGS}
        head = {"model": run.model, "model_args": _fingerprinted_args(run, version, pinned), "train": train, "data": data}
        if version >= 2:
            head["checkpoint"] = cfg.checkpoint
        out[run.name] = hashlib.sha256(json.dumps(head, sort_keys=True, default=str).encode()).hexdigest()
    return out


def _record_config(cfg: ExperimentConfig, out: Path, prov: dict[str, Any]) -> None:
    """The experiment's config (as written) and provenance (resolved) in its results folder."""
    from ..utils.io import atomic_write_text

    if cfg.text is not None:
        atomic_write_text(out / "config.yaml", cfg.text)
    else:
        atomic_write_text(out / "config.json", json.dumps(_jsonable(cfg.raw), indent=1))
    atomic_write_text(out / "provenance.json", json.dumps({**prov, "config": resolved_config(cfg)}, indent=1))


@dataclass
class Fingerprints:
    """What a finished split is checked against before it counts: its row's fingerprint (by the
    version the split was recorded with), its seed's split parts, and the cross-dataset test sets
    it was tested on. The last two are per seed and per set, so that adding seeds or a test set
    keeps the splits finished before."""

    rows: dict[int, dict[str, str]]
    splits: dict[int, str]
    tests: dict[int, dict[str, str]]
    """Fingerprint version -> test set label -> its hash."""
    unpinned: dict[int, dict[str, str]] = field(default_factory=dict)
    """Before version 4: the rows' fingerprints without the ``content_from`` they now name."""

    @classmethod
    def of(cls, cfg: ExperimentConfig, sets: list[TrainSet], tests: Sequence[dict[str, Any]]) -> "Fingerprints":
        seeds = sorted({s for ts in sets for s in ts.splits})
        parts = {s: json.dumps([ts.splits[s].to_dict() for ts in sets if s in ts.splits], sort_keys=True) for s in seeds}
        return cls(rows={v: split_fingerprints(cfg, sets, v) for v in FINGERPRINT_VERSIONS},
                   splits={s: hashlib.sha256(text.encode()).hexdigest() for s, text in parts.items()},
                   tests={v: _test_set_hashes(tests, v) for v in FINGERPRINT_VERSIONS},
                   unpinned={v: split_fingerprints(cfg, sets, v, pinned=True) for v in FINGERPRINT_VERSIONS if v < 4})

    def tests_of(self, stored: dict[str, Any]) -> dict[str, str]:
        """The test sets' hashes as a split recorded in ``stored`` made them (its version's)."""
        return self.tests.get(int(stored.get("fingerprint_version", 1)), {})

    def record(self, run: RunSpec, seed: int) -> dict[str, Any]:
        """What a split of ``run`` records of them (in its metrics file and recipe.json)."""
        return {"fingerprint": self.rows[FINGERPRINT_VERSION][run.name], "fingerprint_version": FINGERPRINT_VERSION,
                "split_sha256": self.splits.get(seed), "test_sha256": self.tests[FINGERPRINT_VERSION]}

    def changed_tests(self, stored: dict[str, Any]) -> list[str]:
        """The cross-dataset test sets the split recorded in ``stored`` was tested on as they were
        then, and which have changed since (rows, labels, scale or loader)."""
        now = self.tests_of(stored)
        return [label for label, sha in (stored.get("test_sha256") or {}).items() if label in now and now[label] != sha]

    def differs(self, stored: dict[str, Any], run: RunSpec, seed: int, recipe: bool = True,
                tests: bool = True) -> str | None:
        """How the split recorded in ``stored`` was made otherwise than the row as the config now
        gives it, or None. Records older than a check pass it. ``recipe=False``: all but the row's
        recipe and data (whose fingerprint needs the weights it names); ``tests=False``: all but the
        cross-dataset test sets (what training does not depend on: they can be tested again)."""
        if stored.get("run", run.name) != run.name:
            return f"for row {stored.get('run')!r} (the same folder name)"
        version = int(stored.get("fingerprint_version", 1))
        rows = {self.rows.get(version, {}).get(run.name), self.unpinned.get(version, {}).get(run.name)}
        if recipe and "fingerprint" in stored and stored["fingerprint"] not in rows:
            return ("with another recipe or data than the row now gives (model, its arguments or the weights they name, "
                    "training settings, protocol, rows, labels, rating scale or tested checkpoint)")
        if stored.get("split_sha256") not in (None, self.splits.get(seed)):
            return "on other split parts than the config now gives (its splits file, or the table, changed)"
        other = self.changed_tests(stored) if tests else []
        if other:
            return f"and tested on another {', '.join(other)} set than the config now names"
        return None


def _check_same_split(stored: dict[str, Any], where: Path, run: RunSpec, seed: int, fingerprints: Fingerprints,
                      redo: str, weights_checked: bool = True) -> None:
    """ConfigError unless the split recorded in ``where`` is this row's with this recipe and data
    (a row renamed to a name with the same folder, or edited after some seeds finished, would
    otherwise mix two experiments in one mean ± std). Records older than fingerprints: the name only.
    ``weights_checked=False``: the weights the row names are absent here (a finished split taken
    from another machine), so its recipe cannot be compared; the rest still is. The cross-dataset
    test sets are not compared: training does not depend on them, and a split tested on a set that
    changed since is tested again (its figures on the old set are never tabled)."""
    why = fingerprints.differs(stored, run, seed, recipe=weights_checked, tests=False)
    if why is None:
        return
    raise ConfigError(f"{where}: split seed {seed} of row {run.name!r} was trained {why}; rename the row to keep "
                      f"both, or delete {redo} to train it again")


class StartMissing(ConfigError):
    """A row starts from weights (``init_from``) not there yet: another experiment's run to train first."""


def check_before_training(cfg: ExperimentConfig, out: Path, only: list[str] | None, seeds: list[int] | None,
                          built: dict[str, bool] | None = None, unavailable: dict[str, str] | None = None,
                          coming: set[Path] | None = None, device: str | None = None,
                          sets: list[TrainSet] | None = None) -> None:
    """ConfigError, before any row trains, for a row that could only fail when its turn came
    (hours in): its model cannot be built from its ``model_args`` (a misspelt or mistyped
    argument), its training settings cannot train it on these parts (a device this machine
    lacks, calibrate without a validation part: :func:`~contentiqa.training.trainer.check_settings`),
    or (:class:`StartMissing`) it starts from weights (``init_from``) that neither exist nor
    come from a row trained before it in this run. ``built``: the models (and arguments)
    already built by an earlier call, with whether each predicts a score, not built again
    (``experiment --check`` of many configs). ``unavailable``: filled with the rows whose model
    needs weights this machine lacks (a run skips them when their turn comes; ``--check`` says
    so). ``coming``: the files rows trained before these will write (configs run before this
    one), added to. ``device``: the one the command gives every row. ``sets``: the training sets
    as read, whose splits say which have a validation part (without them: the protocols do, and a
    ``splits`` file is taken to hold one)."""
    from ..backbones import WeightsUnavailableError
    from ..models import create_model
    from ..training.config import TrainConfig
    from ..training.trainer import check_settings

    built = {} if built is None else built
    if sets is not None:
        validated = [ts.label for ts in sets if ts.val_fraction or any(s.parts.get("val") for s in ts.splits.values())]
        unvalidated = [ts.label for ts in sets if ts.label not in validated]
        if not cfg.tests and unvalidated:  # (config.py says so of the protocols; a splits file is known now)
            raise ConfigError(f"test: none reports validation parts only, and the splits give none for "
                              f"{', '.join(unvalidated)}: give it a val_fraction, splits with validation parts, "
                              "or name test sets")
    elif cfg.splits is not None:  # the file's parts are read with the data
        validated = [ts.label for ts in cfg.train_sets]
    else:
        validated = [ts.label for ts in cfg.train_sets if cfg.protocol_of(ts) != "ie-iqa" or ts.val_fraction]
    coming = set() if coming is None else coming  # what the rows before this one will write (best.pt, tested.pt)
    for run in cfg.runs:
        if (only and run.name not in only) or run_missing(cfg, run):
            continue
        asked = [s for s in run.seeds if not seeds or s in seeds]
        if not asked or all(_metrics_file(out, run, s).is_file() for s in asked):
            continue
        key = json.dumps([run.model, run.model_args], sort_keys=True, default=str)
        try:
            if key not in built:
                made = create_model(run.model, pretrained=False, **run.model_args)
                built[key] = (made.predicts_score, made.has_content_head)
        except (WeightsUnavailableError, FileNotFoundError) as exc:
            if unavailable is not None:  # else said when the row's turn comes (it is skipped then)
                unavailable[run.name] = str(exc)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"run {run.name}: model_args {run.model_args} cannot build {run.model}: {exc}") from None
        if key in built:
            settings = TrainConfig.from_dict({**run.train, **({"device": device} if device is not None else {})})
            try:
                check_settings(settings, run.model, built[key][0], bool(validated),
                               set(validated) if len(cfg.train_sets) > 1 else None, built[key][1],
                               [ts.label for ts in cfg.train_sets] if len(cfg.train_sets) > 1 else None)
            except ValueError as exc:
                raise ConfigError(f"run {run.name}: {exc}") from None
        ratio = run.train.get("dataset_ratio")
        if ratio:  # the Trainer says so too, but only at the row's turn, after the rows before it trained
            labels = [ts.label for ts in cfg.train_sets]
            if len(labels) < 2 or not isinstance(ratio, dict) or set(ratio) - set(labels) \
                    or not all(finite_above_zero(v) for v in ratio.values()):
                raise ConfigError(f"run {run.name}: dataset_ratio {ratio} must give a positive draw to training sets of "
                                  f"this experiment ({', '.join(labels)}), and there must be several")
        for seed in asked:
            init = _init_file(run, seed, out)
            # resolved: before the results folder exists (--check) 'OUT/../other/...' has no OUT to pass through
            if init is not None and not init.resolve().is_file() and init.resolve() not in coming:
                raise StartMissing(f"run {run.name}, split seed {seed}: init_from {init} does not exist, and no row "
                                  "before it in this run writes it: train that row first (or with it)")
            coming |= {(out / "runs" / run.slug / f"seed{seed}" / name).resolve()
                       for name in ("best.pt", "tested.pt", "last.pt")}


def _init_file(run: RunSpec, seed: int, out: Path) -> Path | None:
    """The weights a split of ``run`` starts from (``init_from``, ``{seed}`` filled in, relative to ``out``)."""
    if not run.train.get("init_from"):
        return None
    init = Path(str(run.train["init_from"]).replace("{seed}", str(seed)))
    return init if init.is_absolute() else out / init


def _init_weights(path: Path) -> str:
    """A hash of the weights a checkpoint loads as (the tensors it left out, rebuilt): one model
    saved whole or slimmed gives the same, where the files' SHA-256 differ."""
    from ..models.registry import load_checkpoint
    from ..training.cache import weights_fingerprint

    return weights_fingerprint([load_checkpoint(path)])


def _check_same_start(stored: dict[str, Any], where: Path, run: RunSpec, seed: int, out: Path, redo: str) -> None:
    """ConfigError when the split in ``where`` started from weights (``init_from``) that have been
    replaced since (the row it starts from was retrained): its figures are another model's."""
    init = _init_file(run, seed, out)
    then, weights = stored.get("init_from_sha256"), stored.get("init_from_weights")
    if init is None or (then is None and weights is None) or not init.is_file() or file_sha256(init) == then:
        return
    if weights is not None and _init_weights(init) == weights:
        return  # the same weights in another file: the slimmed copy a GPU machine trained from (benchmarks/gpu)
    raise ConfigError(f"{where}: split seed {seed} of row {run.name!r} started from {init} as it was before it was "
                      f"replaced (its row retrained?); delete {redo} to train it again from the new weights")


def _train_split(cfg: ExperimentConfig, run: RunSpec, seed: int, sets: list[TrainSet], tests, out: Path,
                 device: str | None, progress: bool, log: Callable, main: bool,
                 fingerprints: Fingerprints) -> dict[str, Any] | None:
    from ..backbones import WeightsUnavailableError
    from ..models import create_model
    from ..models.registry import save_checkpoint
    from ..training.config import TrainConfig
    from ..training.cache import CacheWriteError
    from ..training.trainer import ResumeMismatch, Trainer, TrainingDiverged, seed_everything

    parts, own = _parts(sets, seed)
    scale = sets[0].scale if len(sets) == 1 else {ts.label: ts.scale for ts in sets}
    train = {**run.train, "seed": seed}
    if device is not None:
        train["device"] = device
    init = _init_file(run, seed, out)
    if init is not None:  # this split's own earlier row (never another split's test photos)
        train["init_from"] = str(init)
    tcfg = TrainConfig.from_dict(train)
    seed_everything(seed)  # the model's initial weights are the split seed's too
    try:
        model = create_model(run.model, pretrained=False, **run.model_args)
    except (WeightsUnavailableError, FileNotFoundError) as exc:
        raise _RunUnavailable(f"{run.name}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"run {run.name}: cannot build {run.model} with {run.model_args}: {exc}") from None
    run_dir = out / "runs" / run.slug / f"seed{seed}"
    if main:  # a split interrupted and resumed after an edit would change recipe partway through
        begun = run_dir / "recipe.json"
        if (run_dir / "last.pt").is_file() and begun.is_file():
            _check_same_split(json.loads(begun.read_text()), begun, run, seed, fingerprints, str(run_dir))
        elif not (run_dir / "last.pt").is_file():
            from ..utils.io import atomic_write_text

            atomic_write_text(begun, json.dumps({"run": run.name, **fingerprints.record(run, seed)}, indent=1))
    cache = cfg.cache_dir or out / "cache"
    if not _shared_cache_ok(model):
        cache = run_dir / "cache"
    t0 = time.time()
    try:
        trainer = Trainer(model, parts["train"], parts.get("val"), scale, tcfg, run_dir, progress=progress,
                          cache_dir=cache, log=log, test_table=parts.get("test"))
    except (ValueError, CacheWriteError) as exc:
        raise ConfigError(f"run {run.name}: {exc}") from None
    trainer.without_the_mix = f"delete {run_dir} to train the split afresh"  # (the row holds its mix: no going on without)
    try:
        best = trainer.fit(resume=True)
    except (TrainingDiverged, CacheWriteError) as exc:  # its learning rate cannot train; the cache cannot be written
        raise ConfigError(f"run {run.name}, split seed {seed}: {exc}") from None
    except ImageLoadError as exc:  # damaged data behind a good header, met while training
        raise ConfigError(f"run {run.name}, split seed {seed}: {exc}; replace the file or drop its row "
                          "(the run resumes from its last epoch)") from None
    except ResumeMismatch as exc:  # e.g. the folder moved: a path in the recipe changed
        afresh = "" if str(exc).endswith(trainer.without_the_mix) else f"; delete {run_dir} to train the split afresh"
        raise ConfigError(f"run {run.name}, split seed {seed}: {exc}{afresh}") from None
    train_s = time.time() - t0 + trainer.earlier_seconds()  # a resumed split: its earlier sessions' epochs too
    if not main:
        return None
    # After training: finishing (calibration, mixing) and testing encode photos through the cache,
    # and tested.pt is written: a full disk there is one line, and the split resumes from its epochs.
    try:
        use_best = cfg.checkpoint == "best" or (cfg.checkpoint == "auto" and "val" in parts)
        chosen = trainer.load_best() if use_best else trainer.last_model()
        try:
            finished = trainer.finish(chosen)
        except ValueError as exc:  # e.g. outputs constant on the validation photos: nothing to calibrate
            raise ConfigError(f"run {run.name}, split seed {seed}: cannot finish the run: {exc} (the trained epochs "
                              "are kept for a rerun once the cause is fixed; to change calibrate or interpolate, rename "
                              f"the row, or delete {run_dir}: it is another recipe, whose splits train again)") from None
        # The exact model the split's test figures come from (chosen epoch, calibrated): what a
        # later check scores through the CLI (benchmarks/ship_gate.py).
        save_checkpoint(chosen, run_dir / "tested.pt", extra={
            "train_config": tcfg.to_dict(), "checkpoint": "best" if use_best else "last", "best_epoch": best.get("epoch")})
        res: dict[str, Any] = {
            "run": run.name, "model": run.model, "model_args": run.model_args, "train_config": tcfg.to_dict(),
            "protocol": cfg.protocol, "seed": seed, **fingerprints.record(run, seed),
            **({"init_from_sha256": file_sha256(init), "init_from_weights": _init_weights(init)}
               if init is not None and init.is_file() else {}), "checkpoint": "best" if use_best else "last",
            "best_epoch": best.get("epoch"), "epochs_run": len(trainer.history), "train_seconds": round(train_s, 1),
            "minutes_per_epoch": trainer.epoch_minutes(), "trained": trainer.training_record()["trained"],
            "device": tcfg.device, "calibration": finished.get("calibration"), **finished,
            "n_train": len(parts["train"]), "n_val": len(parts.get("val", [])),
            "n_test": sum(len(o.get("test", [])) for o in own.values()),
            "val": {k[4:]: v for k, v in best.items() if k.startswith("val_")},
            "test": {},
        }
        by_label = {ts.label: ts for ts in sets}
        if not tests:
            # a validation-only table (model selection) shows the model the split ends with: the
            # best epoch's record is before the calibration (PLCC, RMSE) and, with checkpoint: last,
            # another epoch's
            res["val_tested"] = {_val_key(sets, ts, k): v for ts in sets if "val" in own[ts.label]
                                 for k, v in _evaluate(trainer, own[ts.label]["val"], ts.scale, chosen).items()}
        for t in tests:
            if t["spec"] == INTRA:  # every split has a test part (_check_test_parts, before any training)
                res["test"][t["label"]] = _evaluate(trainer, own[t["label"]]["test"], by_label[t["label"]].scale, chosen)
            else:
                res["test"][t["label"]] = _evaluate(trainer, t["table"], t["scale"], chosen)
    except OSError as exc:  # CacheWriteError, or tested.pt not written
        raise ConfigError(f"run {run.name}, split seed {seed}: after training: {exc} (the trained epochs are kept: "
                          "rerun the same command to finish and test it)") from None
    res["provenance"] = {k: v for k, v in provenance().items()
                         if k in ("contentiqa", "git_commit", "git_dirty", "torch", "date", "machine", "gpu")}
    return res


def _val_key(sets: list[TrainSet], ts: TrainSet, metric: str) -> str:
    """A validation figure's key in a split's record: the metric alone with one training set, after
    its set's label with several (as :func:`_scored` reads them)."""
    return metric if len(sets) == 1 else f"{ts.label}/{metric}"


def _score_val_parts(stored: dict[str, Any], mfile: Path, run_dir: Path, sets: list[TrainSet], seed: int,
                     device: str | None, say: Callable) -> dict[str, Any]:
    """A split recorded before ``val_tested`` (a validation-only table's figures of the model the
    split ends with) scored so from its tested.pt, its metrics file rewritten: its cells would
    otherwise mix the chosen epoch's uncalibrated figures into the others' mean ± std."""
    from ..models.registry import load_checkpoint
    from ..training.evaluate import NotMeasurable, evaluate_model
    from ..utils.io import atomic_write_text, remove_stale_temporaries

    tested = run_dir / "tested.pt"
    if not tested.is_file():
        return stored  # (the table's notes say which splits show the chosen epoch's figures)
    model = load_checkpoint(tested, device or "cpu")
    _, own = _parts(sets, seed)
    scored: dict[str, Any] = {}
    for ts in sets:
        if "val" not in own[ts.label]:
            continue
        try:
            metrics, _ = evaluate_model(model, own[ts.label]["val"].drop(columns=["dataset"], errors="ignore"), ts.scale,
                                        workers=0)
        except NotMeasurable as exc:
            say(f"{mfile}: cannot score its validation part of {ts.label}: {exc}")
            return stored
        scored.update({_val_key(sets, ts, k): v for k, v in metrics.items()})
    stored = {**stored, "val_tested": scored}
    remove_stale_temporaries(mfile)
    atomic_write_text(mfile, json.dumps(_jsonable(stored), indent=1))
    say(f"{stored.get('run')} seed {stored.get('seed')}: validation parts scored as the split ends (recorded before)")
    return stored


def _test_on_added_sets(stored: dict[str, Any], mfile: Path, run_dir: Path, added: list[dict[str, Any]],
                        fingerprints: "Fingerprints", device: str | None, say: Callable) -> dict[str, Any]:
    """A finished split tested on the cross-dataset sets added to the config since (its tested.pt
    scored on them), its metrics file rewritten: the table had left them out while its notes named
    them as tested."""
    from ..models.registry import load_checkpoint
    from ..training.evaluate import NotMeasurable, evaluate_model
    from ..utils.io import atomic_write_text, remove_stale_temporaries

    tested = run_dir / "tested.pt"
    names = ", ".join(t["label"] for t in added)
    if not tested.is_file():
        say(f"{mfile}: not tested on {names} (added or changed after it finished), and {tested} is gone: delete "
            f"{mfile} to train the split again")
        return stored
    model = load_checkpoint(tested, device or "cpu")  # (testing is inference: where it trained need not be here)
    stored = {**stored, "test": dict(stored.get("test") or {}), "test_sha256": dict(stored.get("test_sha256") or {})}
    for t in added:
        try:
            metrics, _ = evaluate_model(model, t["table"].drop(columns=["dataset"], errors="ignore"), t["scale"],
                                        workers=0)
        except NotMeasurable as exc:
            say(f"{mfile}: cannot test on {t['label']}: {exc}")
            stored["test"].pop(t["label"], None)  # figures of the set as it was before it changed
            stored["test_sha256"].pop(t["label"], None)
            continue
        stored["test"][t["label"]] = metrics
        stored["test_sha256"][t["label"]] = fingerprints.tests_of(stored)[t["label"]]
        say(f"{stored.get('run')} seed {stored.get('seed')}: tested on {t['label']} (added or changed since it finished)")
    remove_stale_temporaries(mfile)
    atomic_write_text(mfile, json.dumps(_jsonable(stored), indent=1))
    return stored


class _RunUnavailable(Exception):
    pass


class _DataAbsent(Exception):
    """A dataset's file or some of its images are not there: the experiment is skipped (the
    message says why), as for a config whose data folder is absent."""


MISSING_SHOWN = 5
"""Absent images a skip message names before counting the rest."""


def _absent_said(spec: DataSpec, exc: FileNotFoundError) -> str:
    """One line naming the dataset and what of it is absent (the images, or a release's sheet)."""
    from ..data import MissingFilesError

    if isinstance(exc, MissingFilesError):
        paths = [str(p) for p in exc.paths]
        shown = ", ".join(paths[:MISSING_SHOWN])
        more = f" and {len(paths) - MISSING_SHOWN} more" if len(paths) > MISSING_SHOWN else ""
        return (f"{_about(spec)}: {len(paths)} image file(s) missing or unreadable: {shown}{more} "
                "(set skip_missing: true to drop them)")
    return str(exc).splitlines()[0]


def _read_data(spec: DataSpec, out: Path, progress: bool, log: Callable):
    """:func:`load_data` for an experiment: absent data become :class:`_DataAbsent` with a
    one-line reason naming the dataset and what of it is missing."""
    try:
        return load_data(spec, out, progress, log)
    except FileNotFoundError as exc:
        raise _DataAbsent(_absent_said(spec, exc)) from None


def data_absent(cfg: ExperimentConfig) -> list[str]:
    """Why a run of ``cfg`` would be skipped once it reads its data: a dataset's annotation files
    or images absent, found as the run finds them (the tables read, each image looked up, none
    opened). A table that cannot be used is a :class:`ConfigError`, as in the run.
    :func:`~contentiqa.experiments.config.experiment_missing` only looks for the datasets' roots."""
    out = []
    for spec in (*cfg.train_sets, *cfg.cross_tests):
        try:
            _load_table(spec)
        except FileNotFoundError as exc:
            out.append(_absent_said(spec, exc))
    return out


def _evict(cache: Path, limit: int, used_since: float, say: Callable) -> None:
    """Keep a shared cache within ``limit`` bytes once a split is done. Each seed of a row that
    starts from that seed's own fine-tuned network caches its own encodings (several GB at
    native resolution), so a long series of rows fills a disk unless old entries go. Entries
    used since ``used_since`` (this split's) stay; a process beside this one that loses an
    entry recomputes it when next needed (removal renames first: nothing is read half-deleted).
    A limit not kept is a warning, which --quiet does not hide: the disk it guards still fills."""
    import warnings

    from ..utils.disk_cache import PruneIncomplete, entries_word, format_size, prune

    try:
        gone = prune(cache, max_bytes=limit, keep_since=used_since)
    except PruneIncomplete as exc:  # applied in part: what went is said too
        warnings.warn(f"cache_limit: {exc}", stacklevel=2)
        gone = exc.removed
    except (ValueError, OSError) as exc:
        warnings.warn(f"cache_limit: not applied: {exc}", stacklevel=2)
        return
    if gone:
        say(f"cache_limit {format_size(limit)}: removed the {entries_word(len(gone))} least recently used "
            f"({format_size(sum(e.bytes for e in gone))}) from {cache}")


# -- tables -------------------------------------------------------------------------------------
def _scored(split: dict[str, Any], label: str) -> dict[str, float]:
    """One split's metrics for a table column group: a test set's, or (a config with no test
    sets, for model selection) a training set's validation metrics, of the model the split ends
    with (``val_tested``: calibrated, the epoch ``checkpoint`` chose); in records from before it,
    after a weight mix (``interpolate``) the mix's, not the best epoch's before it."""
    if label in split["test"] or not label.endswith(" val"):
        return split["test"].get(label, {})
    name = label[:-len(" val")]
    val = split.get("val_tested") or split.get("val_interpolated") or split.get("val", {})
    own = {k.split("/", 1)[1]: v for k, v in val.items() if k.startswith(f"{name}/")}
    return own or {k: v for k, v in val.items() if "/" not in k}
def summarize(cfg: ExperimentConfig, per_run: dict[str, list[dict]]) -> dict[str, Any]:
    from ..metrics import mean_std

    out = {}
    for run in cfg.runs:
        splits = per_run.get(run.name, [])
        summary = {}
        for label in cfg.test_labels():
            # a metric a split could not measure (a collapsed model's correlations: NaN, or null
            # once written) is left out of the mean, and the table says how many splits it has
            rows = [{k: v for k in SUMMARY_METRICS if (v := _scored(s, label).get(k)) is not None
                     and np.isfinite(float(v))} for s in splits]
            rows = [r for r in rows if r]
            if rows:
                summary[label] = mean_std(rows)
        out[run.name] = {"model": run.model, "model_args": run.model_args, "train": run.train,
                         "seeds": [s["seed"] for s in splits], "summary": summary, "splits": splits}
    return out


def _metrics_file(out: Path, run: RunSpec, seed: int) -> Path:
    """Where a finished split's metrics live: their presence is what marks the split done."""
    return out / "metrics" / run.slug / f"seed{seed}.json"


def import_results(cfg: ExperimentConfig, out: Path, path: str | os.PathLike, log: Callable = print,
                   fingerprints: Fingerprints | None = None) -> dict[str, list[int]]:
    """Take the finished splits of ``path`` (a results.json of this config) into ``out`` as if they
    had run here, for rows whose model, model arguments and training settings are still the
    config's; a split already in ``out`` stays. ``fingerprints`` (:func:`split_fingerprints`):
    a split recorded with another one (other data, protocol or recipe) is not taken. Returns the
    seeds taken per row."""
    from ..utils.io import atomic_write_text

    try:
        stored = json.loads(Path(path).read_text())["runs"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not an experiment's results.json ({exc})") from None
    taken: dict[str, list[int]] = {}
    for run in cfg.runs:
        if run.name not in stored:
            continue
        there, here = stored[run.name], _jsonable({"model": run.model, "model_args": run.model_args, "train": run.train})
        # where a run trained (device, workers, the cache's runtime) is not what it learnt, as
        # for the splits' fingerprints: results from a GPU machine import into a CPU config
        there, here = ({**d, "train": {k: v for k, v in d["train"].items() if k not in RUNTIME_SETTINGS}}
                       if isinstance(d.get("train"), dict) else d for d in (there, here))
        if isinstance(there.get("model_args"), dict) and "content_from" not in there["model_args"]:
            # a row naming the content head its splits trained with (iqa-cr's default moved) is the
            # row that left it to the registry: the splits' fingerprints tell the heads apart
            here = {**here, "model_args": {k: v for k, v in here["model_args"].items() if k != "content_from"}}
        # weights a model argument names sit elsewhere on the machine that trained: their files'
        # contents are compared by the splits' fingerprints below, so only their names here
        changed = [k for k in here if _named_weights(there.get(k)) != _named_weights(here[k])]
        if changed:
            log(f"import {path}: row {run.name!r} not taken: its {', '.join(changed)} changed since")
            continue
        for split in there.get("splits", []):
            seed = split.get("seed")
            mfile = _metrics_file(out, run, seed)
            if seed not in run.seeds or mfile.is_file():
                continue
            why = fingerprints.differs(split, run, seed) if fingerprints else \
                (None if split.get("run", run.name) == run.name else f"for row {split.get('run')!r}")
            if why is not None:
                log(f"import {path}: row {run.name!r} seed {seed} not taken: trained {why}")
                continue
            mfile.parent.mkdir(parents=True, exist_ok=True)
            # the split's own record says where it came from: a later rebuild of the table (--table-only,
            # a resume) has only the records, not this session's --import
            split = {**split, "imported_from": split.get("imported_from") or str(path)}
            atomic_write_text(mfile, json.dumps(split, indent=1))
            taken.setdefault(run.name, []).append(seed)
    for name, got in taken.items():
        log(f"import {path}: {name}: seeds {got}")
    return taken


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table (cells formatted with ``str``; a '|' in a row name escaped, which would
    otherwise shift every later cell under another column's header)."""
    def cell(c: Any) -> str:
        return str(c).replace("|", "\\|")

    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(cell, r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _train_time(results: dict[str, Any]) -> str:
    total = sum(float(sp.get("train_seconds") or 0) for r in results.values() for sp in r.get("splits", []))
    return f"{total / 3600:.1f} h" if total >= 3600 else f"{total / 60:.1f} min" if total >= 60 else f"{total:.0f} s"


def _split_provenances(results: dict[str, Any]) -> list[dict]:
    """Each split's own provenance record (empty where an older record has none)."""
    return [sp.get("provenance") or {} for r in results.values() for sp in r.get("splits", [])]


def _machines(results: dict[str, Any], prov: dict) -> str:
    """Where the splits trained, from their own records: a table built elsewhere (--import,
    --table-only) must not credit its builder's machine with them."""
    def where(p: dict) -> str:
        return f"{p.get('machine')}{', GPU ' + str(p.get('gpu')) if p.get('gpu') else ''}"

    counts = Counter(where(p) if p.get("machine") else "a machine not recorded (older records)"
                     for p in _split_provenances(results))
    if len(counts) <= 1:
        return next(iter(counts), where(prov))
    return "; ".join(f"{k} ({n} split(s))" for k, n in sorted(counts.items()))


def _training_sessions(results: dict[str, Any], prov: dict) -> str:
    """Which code trained the table's splits (commit, dirty, version; dates), unless all of them
    were this session's code: a table rebuilt or resumed later must not pass for its builder's."""
    def code(p: dict) -> str:
        return f"git {str(p.get('git_commit') or '?')[:12]}{' (dirty)' if p.get('git_dirty') else ''}, " \
               f"contentiqa {p.get('contentiqa', '?')}"

    provs = _split_provenances(results)
    counts = Counter(code(p) for p in provs)
    dates = [str(p["date"])[:10] for p in provs if p.get("date")]
    if set(counts) <= {code(prov)}:
        return ""
    when = f" ({min(dates)} to {max(dates)})" if dates else ""
    return "; ".join(f"{k}: {n} split(s)" for k, n in sorted(counts.items())) + when


def markdown(cfg: ExperimentConfig, results: dict[str, Any], skipped_runs: dict[str, list[str]], prov: dict,
             n_images: int | None = None, imported: list[str] | None = None, out: Path | None = None) -> str:
    from ..metrics import format_mean_std

    labels = cfg.test_labels()
    cols: list[tuple[str, str]] = []
    for label in labels:
        for m in TABLE_METRICS:
            if any(m in r["summary"].get(label, {}) for r in results.values()):
                cols.append((label, m))
    header = ["model", "splits", "min/epoch"] + [f"{label} {METRIC_NAMES[m]}" for label, m in cols]
    rows = []
    trained_parts = []
    for run in cfg.runs:
        r = results.get(run.name)
        if run.name in skipped_runs and not (r and r["splits"]):
            rows.append([run.name, "0", "–"] + ["skipped"] + ["–"] * (len(cols) - 1) if cols else [run.name, "skipped", "–"])
            continue
        splits = r["splits"] if r else []
        mins = [float(sp["minutes_per_epoch"]) for sp in splits if sp.get("minutes_per_epoch") is not None]
        what = sorted({f"{sp['trained']} on {sp.get('device', 'cpu')}" for sp in splits if sp.get("trained")})
        if what:
            trained_parts.append(f"{run.name}: {'; '.join(what)}")
        # two figures: a head-only epoch takes seconds, which one decimal would show as 0.0
        mean = sum(mins) / len(mins) if mins else None
        done = len(r["seeds"]) if r else 0
        cells = [run.name, f"{done} of {len(run.seeds)}" if 0 < done < len(run.seeds) else str(done),
                 "–" if mean is None else f"{mean:.2g}" if mean < 10 else f"{mean:.0f}"]
        for label, m in cols:
            s = r["summary"].get(label, {}).get(m) if r else None
            if s is None:
                cells.append("–")
            else:
                fewer = "" if s["n"] >= done else " (1 split)" if s["n"] == 1 else f" (n={s['n']})"
                cells.append(format_mean_std({m: s}, [m])[m] + fewer)
        rows.append(cells)
    if not cols:
        header = header[:3]
    parts = [f"# {cfg.name}\n"]
    if cfg.description:
        parts.append(cfg.description + "\n")
    parts.append(md_table(header, rows))
    names = {"iqa-cr": "IQA-CR (80/10/10, stratified by spatial information x MOS; val part for early stopping)",
             "ie-iqa": "IE-IQA (80/20, no val part)",
             "official": f"the release's own train/test split ({OFFICIAL_VAL_FRACTION:.0%} of its train part, drawn per seed, for early stopping)"}
    where = [] if cfg.tests else ["nothing: validation parts only (model selection)"]
    for t in cfg.tests:
        where += ([f"{d.label}: the split's test part" for d in cfg.train_sets] if t == INTRA
                  else [f"{t.label}: all of it (cross-dataset)"])
    n = f", {n_images} images" if n_images else ""
    def protocol(d: DataSpec) -> str:
        said = names[cfg.protocol_of(d)]
        if d.val_fraction and cfg.protocol_of(d) == "ie-iqa":  # a val part carved from the train part
            said = f"IE-IQA (80/20; {d.val_fraction:.0%} of the train part drawn per seed for validation)"
        return said

    trained = "; ".join(f"{d.label} (`{d.name}`, protocol {protocol(d)})" for d in cfg.train_sets)
    notes = [
        f"Trained on {trained}{n}, seeds {', '.join(map(str, cfg.seeds))}; "
        f"mean ± std (sample std) over splits (n=K: the splits a cell has, when a split could not be measured there, "
        f"e.g. a collapsed model's correlations; 'K of N': a row with N splits planned). Tested on {'; '.join(where)}. "
        f"RMSE in each test set's MOS units; acc. = content category accuracy where the test set has categories "
        f"(against the main label); acc. (any label) = the prediction is one of the photo's labels (multi-label sets).",
        f"Ran on {_machines(results, prov)}: {_train_time(results)} of training and testing over all rows and splits.",
        (f"Command: `contentiqa experiment {shlex.quote(str(cfg.source))} --out {shlex.quote(str(out))}` (it trains "
         "only the splits that folder lacks, "
         "then writes this table). " if cfg.source and out is not None else "")
        + f"Config `{cfg.source or 'mapping'}`; contentiqa {prov.get('contentiqa')}, git {str(prov.get('git_commit') or '?')[:12]}"
        f"{' (dirty)' if prov.get('git_dirty') else ''}, torch {prov.get('torch')}, {prov.get('date')}.",
    ]
    trained_by = _training_sessions(results, prov)
    if trained_by:
        notes.append(f"The splits were trained by {trained_by}: the table's own line above is the session that "
                     "built it (each split's record in metrics/ keeps its own).")
    if imported:
        notes.append("Finished splits of earlier sessions taken from " + ", ".join(f"`{p}`" for p in imported)
                     + " (`contentiqa experiment CONFIG --import RESULTS.json`); each split keeps its own provenance.")
    if trained_parts:
        notes.append("What trained (min/epoch: mean wall-clock minutes per epoch, validation included): "
                     + ". ".join(trained_parts) + ".")
    for name, why in skipped_runs.items():
        notes.append("Skipped " + "; ".join(why))
    # a metric no split could measure has no column: say so, or its absence reads as never asked for
    tried = {(label, m) for label in labels for r in results.values() for s in r.get("splits", [])
             for m in _scored(s, label)}
    lost = [f"{label} {METRIC_NAMES[m]}" for label in labels for m in TABLE_METRICS
            if (label, m) in tried and (label, m) not in cols]
    if lost:
        notes.append(f"Not in the table: {', '.join(lost)}: no split could measure it (e.g. a collapsed model's "
                     "correlations; each split's record in metrics/ has it as NaN or null).")
    older = sum(1 for r in results.values() for sp in r.get("splits", []) if "val_tested" not in sp)
    if not cfg.tests and older:
        notes.append(f"{older} split(s) were recorded before the model each split ends with was scored on its "
                     "validation part: their cells hold the chosen epoch's figures (before any calibration); run the "
                     "experiment without --table-only to score them so.")
    # a set the notes call tested that no split has been scored on (added after the splits finished)
    untested = [label for label in labels if not any(lab == label for lab, _ in tried)]
    if untested and any(r.get("splits") for r in results.values()):
        notes.append(f"Not tested yet: {', '.join(untested)}: no finished split has been scored on it (added after "
                     "they finished; run the experiment without --table-only to test them, as its log says).")
    return "\n".join(parts) + "\n" + "\n\n".join(notes) + "\n"


# -- the experiment -----------------------------------------------------------------------------
def default_out_dir(cfg: ExperimentConfig) -> Path:
    return cfg.out or Path("runs") / "experiments" / slugify(cfg.name)


def run_experiment(
    config: str | os.PathLike | dict | ExperimentConfig,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    log: Callable[..., None] | None = print,
    strict: bool = False,
    base_dir: str | os.PathLike | None = None,
    device: str | None = None,
    only: list[str] | None = None,
    seeds: list[int] | None = None,
    imports: list[str | os.PathLike] | None = None,
    train: bool = True,
    cache_limit: int | None = None,
) -> ExperimentResult:
    """Run every row of ``config`` on every split and write the results folder.

    ``config`` is a YAML file, a mapping with the same keys (relative paths from ``base_dir``,
    default the working directory) or a loaded config. Returns an :class:`ExperimentResult`.
    When the training data, a test set or the split file is missing, nothing runs and
    ``result.skipped`` says what is missing; a row whose weights are missing is skipped
    (``result.skipped_runs``) and the others run. ``strict=True`` raises
    :class:`ExperimentSkipped` instead of skipping anything. ``device`` overrides every run's
    ``train.device``. Under ``torchrun`` (WORLD_SIZE > 1) each split trains with
    DistributedDataParallel (``cuda`` meaning each process's own GPU); rank 0 evaluates and writes.
    ``only`` (row names) trains just those rows and ``seeds`` just those split seeds; the table
    still shows every row's finished splits. ``imports``: results.json files of earlier runs of
    this config (e.g. another machine's, or a committed benchmarks/results table) whose finished
    splits count as done here (:func:`import_results`); ``train=False`` trains nothing and only
    rebuilds the table, so a table merged from several sessions is one rerunnable command.
    ``cache_limit`` (bytes; default the config's ``cache_limit``): after each split, the shared
    cache's least recently used entries beyond it are removed, never those the split used
    (:func:`_evict`).
    """
    from ..training import distributed as dist_utils
    from ..utils.io import atomic_write_text, exclusive_lock, remove_stale_temporaries

    cfg = load_config(config, base_dir)
    unknown = sorted(set(only or ()) - {r.name for r in cfg.runs})
    if unknown:
        raise ConfigError(f"{cfg.name}: no row named {unknown}; rows: {[r.name for r in cfg.runs]}")
    asked_rows = [r for r in cfg.runs if not only or r.name in only]
    stray = sorted(set(seeds or ()) - {s for r in asked_rows for s in r.seeds})
    if stray:  # of the rows asked for: --only ROW --seed S trained nothing when ROW lacks S
        which = f"row(s) {only}" if only else cfg.name
        raise ConfigError(f"{which}: no split seed {stray}; seeds: {sorted({s for r in asked_rows for s in r.seeds})}")
    out = Path(out_dir) if out_dir is not None else default_out_dir(cfg)
    say = log or (lambda *a, **k: None)
    result = ExperimentResult(out, cfg)
    missing = experiment_missing(cfg)
    if missing:
        if strict:
            raise ExperimentSkipped(f"{cfg.name}: " + "; ".join(missing))
        say(f"skipped {cfg.name}: " + "; ".join(missing))
        result.skipped = missing
        return result

    devices = {device} if device else {str(r.train.get("device", "cpu")) for r in cfg.runs}
    try:
        info = dist_utils.init_from_env(sorted(devices)[0])
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if info.distributed and len(devices) == 1:
        device = dist_utils.device_for(next(iter(devices)), info.local_rank)
    main = info.rank == 0
    if not main:
        say, progress = (lambda *a, **k: None), False
    held = contextlib.ExitStack()
    try:
        prov = provenance()
        if main:
            out.mkdir(parents=True, exist_ok=True)
            # One experiment per folder: a second one would train the same splits and replace the
            # first's files. With the lock held, a temporary beside a table is a killed run's.
            held.enter_context(exclusive_lock(out / EXPERIMENT_LOCK, f"another process is running an experiment in {out}"))
            for name in EXPERIMENT_FILES:
                remove_stale_temporaries(out / name)
            # The config beside the results describes them: a folder that holds an earlier run's
            # gets this one's with its table, once no finished split refused it.
            if not any((out / name).is_file() for name in ("config.yaml", "config.json")):
                _record_config(cfg, out, prov)
        with dist_utils.main_first():  # rank 0 makes labels and splits; the others read them
            try:
                loaded = [(spec, *_read_data(spec, out, progress, say)) for spec in cfg.train_sets]
                tests = []
                for t in cfg.tests:
                    if t == INTRA:
                        tests += [{"spec": INTRA, "label": spec.label} for spec in cfg.train_sets]
                    else:
                        tt, ts = _read_data(t, out, progress, say)
                        tests.append({"spec": t, "label": t.label, "table": tt, "scale": ts})
            except _DataAbsent as exc:
                reason = str(exc)
                if strict:
                    raise ExperimentSkipped(f"{cfg.name}: {reason}") from None
                say(f"skipped {cfg.name}: {reason}")
                result.skipped = [reason]
                return result
            sets = [TrainSet(spec.label, t, sc, _splits(cfg, t, out, progress, spec), spec.val_fraction)
                    for spec, t, sc in loaded]
            for spec, t, _ in loaded:
                if "split" in t and cfg.protocol_of(spec) != "official":
                    # `evaluate` and `train` keep such a column: the split's test figures and theirs would differ
                    say(f"note: {spec.label}'s 'split' column is not used: protocol {cfg.protocol_of(spec)} draws the "
                        "experiment's own seeded splits (protocol: official keeps the column; `contentiqa evaluate "
                        "--split` with the experiment's splits file scores its test parts)")
        say(f"experiment {cfg.name}: {len(cfg.runs)} run(s) x seeds {cfg.seeds} on "
            f"{' + '.join(f'{ts.label} ({len(ts.table)} images, protocol {cfg.protocol_of(spec)})' for ts, spec in zip(sets, cfg.train_sets))}"
            f"{f' on {info.world_size} processes' if info.distributed else ''}; results in {out}")

        if train:
            _check_test_parts(cfg, sets)
            _check_cross_tests(sets, tests)
        fingerprints = Fingerprints.of(cfg, sets, tests)
        if main and imports:
            for path in imports:
                import_results(cfg, out, path, say, fingerprints)
        if train:  # on every process: each would otherwise wait for rank 0 at the first barrier
            check_before_training(cfg, out, only, seeds, device=device, sets=sets)
        per_run: dict[str, list[dict]] = {}
        for run in cfg.runs:
            lacking = run_missing(cfg, run)
            if lacking:
                if strict and (not only or run.name in only):  # a row not asked for is no failure of this pass
                    raise ExperimentSkipped("; ".join(lacking))
                say("skipped " + "; ".join(lacking))
                result.skipped_runs[run.name] = lacking
            # a row that cannot train here (its files absent, its weights unavailable) still lists the
            # splits it finished before (on another machine, imported): only its training is skipped
            untrainable = bool(lacking)
            unchecked = bool(weights_missing(run))  # its recipe's fingerprint needs those weights
            done = []
            for seed in run.seeds:
                mfile = _metrics_file(out, run, seed)
                have = dist_utils.broadcast_object(mfile.is_file() if main else None)
                if have:
                    if main:
                        stored = json.loads(mfile.read_text())
                        run_dir = out / "runs" / run.slug / f"seed{seed}"
                        redo = f"{run_dir} and {mfile}"
                        _check_same_split(stored, mfile, run, seed, fingerprints, redo, weights_checked=not unchecked)
                        _check_same_start(stored, mfile, run, seed, out, redo)
                        # figures on a cross-dataset set changed since (a MOS corrected) are the old set's: never
                        # tabled; the set is tested again as one added since
                        changed = fingerprints.changed_tests(stored)
                        stored = {**stored, "test": {k: v for k, v in (stored.get("test") or {}).items() if k not in changed}}
                        added = [t for t in tests if t["spec"] != INTRA and t["label"] not in stored["test"]]
                        if added and lacking:
                            say(f"{run.name} seed {seed}: not tested on {', '.join(t['label'] for t in added)} (added "
                                "or changed after it finished): the files the row needs are absent")
                        elif added and train:
                            stored = _test_on_added_sets(stored, mfile, run_dir, added, fingerprints, device, say)
                        elif added:
                            say(f"{run.name} seed {seed}: not tested on {', '.join(t['label'] for t in added)} (added "
                                "or changed after it finished): run the experiment without --table-only to test it")
                        if not tests and "val_tested" not in stored and train and not lacking:
                            stored = _score_val_parts(stored, mfile, run_dir, sets, seed, device, say)
                        done.append(stored)
                    continue
                if untrainable or not train or (only and run.name not in only) or (seeds and seed not in seeds):
                    continue  # not asked for this time, or not possible here
                t0 = time.time()
                try:
                    res = _train_split(cfg, run, seed, sets, tests, out, device, progress, say, main, fingerprints)
                except _RunUnavailable as exc:
                    if strict:
                        raise ExperimentSkipped(str(exc)) from None
                    say(f"skipped {exc}")
                    result.skipped_runs[run.name] = [str(exc)]
                    untrainable = True
                    continue
                if main and res is not None:
                    remove_stale_temporaries(mfile)  # a run killed while writing it left one
                    atomic_write_text(mfile, json.dumps(_jsonable(res), indent=1))
                    done.append(res)
                    limit = cache_limit if cache_limit is not None else cfg.cache_limit
                    if limit is not None:
                        _evict(cfg.cache_dir or out / "cache", limit, t0, say)
                    first = res["test"].get(tests[0]["label"], {}) if tests else {}
                    say(f"{run.name} seed {seed}: " + " ".join(f"{k}={first[k]:.4f}" for k in ("plcc", "srocc", "rmse", "accuracy") if k in first)
                        + f" on {tests[0]['label'] if tests else '-'} ({time.time() - t0:.0f}s)")
                dist_utils.barrier()
            if unchecked and done:
                result.skipped_runs[run.name].append(UNCHECKED_WEIGHTS.format(name=run.name))
            per_run[run.name] = done
        if main:
            result.results = summarize(cfg, per_run)
            imported = sorted({str(sp["imported_from"]) for r in result.results.values() for sp in r["splits"]
                               if sp.get("imported_from")})
            result.markdown = markdown(cfg, result.results, result.skipped_runs, prov, sum(len(ts.table) for ts in sets),
                                       imported, out_dir if out_dir is not None else out)
            payload = {"name": cfg.name, "description": cfg.description, "protocol": cfg.protocol, "seeds": cfg.seeds,
                       "data": [{"label": ts.label, "name": spec.name, "root": str(spec.root), "n": len(ts.table),
                                 "protocol": cfg.protocol_of(spec)} for ts, spec in zip(sets, cfg.train_sets)],
                       "tests": cfg.test_labels(), "runs": result.results, "skipped_runs": result.skipped_runs,
                       "imported": imported, "provenance": prov}
            _record_config(cfg, out, prov)
            atomic_write_text(out / "results.json", json.dumps(_jsonable(payload), indent=1))
            atomic_write_text(out / "results.md", result.markdown)
        dist_utils.barrier()
        return result
    finally:
        held.close()
        dist_utils.cleanup(info)
