"""Experiment configuration files: parsing, validation, paths and what a config needs to run.

The schema is documented in ``configs/README.md``. In short::

    name: clive_iqa_cr                 # optional; default: the file's stem
    description: free text
    data:      {name: csv, root: PATH, label: CLIVE, args: {}, labels: PATH|auto, skip_missing: false, protocol: ...}
               # or a list of such mappings: one model trained on several datasets at once
    protocol:  iqa-cr | ie-iqa | official   # official: the dataset's own 'split' column
    seeds:     10 | [0, 1, 2]
    splits:    PATH                    # optional ready-made split file
    test:      [split, {name: spaq, root: PATH, label: SPAQ}, ...]
    model: NAME, model_args: {...}, train: {...}   # shared by every run
    runs:      [{name: ROW, model: NAME, model_args: {...}, train: {...}, seeds: [...], requires: [...]}]
    requires:  [PATH, ...]             # other files every run needs (weights)
    cache_dir: PATH                    # frozen-encoding cache (default OUT/cache)
    cache_limit: 40G                   # after each split, evict least recently used cache entries beyond this
    checkpoint: auto | best | last     # which weights are tested (auto: best with a val part)

Strings may use ``${VAR}`` and ``${VAR:-default}`` (defaults may nest; a default is only read when
VAR is unset or empty). Relative paths are relative to the config
file's folder, except that an environment variable holding a relative path is relative to the
working directory.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INTRA = "split"
"""A ``test`` entry meaning: the split's own test part (intra-dataset)."""

TOP_KEYS = {"name", "description", "data", "protocol", "seeds", "splits", "test", "model", "model_args", "train",
            "runs", "requires", "cache_dir", "cache_limit", "checkpoint", "out"}
DATA_KEYS = {"name", "root", "label", "args", "labels", "skip_missing", "protocol", "val_fraction"}
RUN_KEYS = {"name", "model", "model_args", "train", "seeds", "requires"}
CHECKPOINTS = ("auto", "best", "last")

_REF = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.S)  # what is between ``${`` and its ``}``


class ConfigError(ValueError):
    """An invalid experiment config (the message names the file and the entry)."""


def expand_vars(text: str, where: str = "", path: bool = False) -> str:
    """``${VAR}`` / ``${VAR:-default}`` -> the environment's value (or the default). With
    ``path``, a relative path coming from the environment at the start of the string is made
    absolute against the working directory (a default is left as written: relative to the
    config file).

    References are expanded outermost first, matching braces, so that a nested default
    (``${A:-${B}/x}``) is only read, and ``B`` only needed, when ``A`` is unset or empty, as in
    the shell; an environment value is used as it is, never expanded again. Text that is not a
    reference (``${1}``, a ``${`` without its ``}``) is kept as written."""
    out: list[str] = []
    i = 0
    while (start := text.find("${", i)) >= 0:
        end = _closing_brace(text, start + 2)
        m = _REF.fullmatch(text, start + 2, end) if end is not None else None
        if m is None:
            out.append(text[i:start + 2])
            i = start + 2
            continue
        out.append(text[i:start])
        name, default = m.group(1), m.group(2)
        value = os.environ.get(name)
        if value:
            if path and start == 0 and not os.path.isabs(os.path.expanduser(value)):
                value = os.path.abspath(os.path.expanduser(value))
            out.append(value)
        elif default is not None:
            # The default stands where the reference stood: at the start only if it did.
            out.append(expand_vars(default, where, path=path and start == 0))
        else:
            raise ConfigError(f"{where + ': ' if where else ''}environment variable {name} is not set (write ${{{name}:-default}} for a fallback)")
        i = end + 1
    out.append(text[i:])
    return "".join(out)


def _closing_brace(text: str, pos: int) -> int | None:
    """Index of the ``}`` closing the ``${`` that ends just before ``pos`` (None: unclosed)."""
    depth = 1
    j = pos
    while j < len(text):
        if text.startswith("${", j):
            depth += 1
            j += 2
            continue
        if text[j] == "}":
            depth -= 1
            if depth == 0:
                return j
        j += 1
    return None


def _expand_all(obj: Any, where: str) -> Any:
    if isinstance(obj, str):
        return expand_vars(obj, where)
    if isinstance(obj, dict):
        return {k: _expand_all(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, list):
        return [_expand_all(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    return obj


def _train_values(train: dict[str, Any], where: str) -> dict[str, Any]:
    """A row's training settings with ``${VAR}`` expanded; ``init_from`` as a path (a relative one
    from the environment is the working directory's, ``~`` the home folder, as every other path of
    a config), its ``{seed}`` left for each split."""
    return {k: os.path.expanduser(expand_vars(str(v), f"{where}.{k}", path=True)) if k == "init_from" and v is not None
            else _expand_all(v, f"{where}.{k}") for k, v in train.items()}


def resolve_path(value: Any, base: Path, where: str) -> Path:
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise ConfigError(f"{where}: expected a path, got {value!r}")
    p = Path(os.path.expanduser(expand_vars(str(value), where, path=True)))
    if not p.is_absolute():
        p = base / p
    return Path(os.path.normpath(p))


SLUG_MAX = 200
"""Longest folder name a row gets: file systems refuse names over 255 bytes, and a row named
after the rows it combines (an ensemble's) grows past that."""


def slugify(text: str) -> str:
    """A row's folder name: its name with every run of other characters made one '_'; a name
    longer than :data:`SLUG_MAX` keeps its start and ends in a hash of the whole name (shorter
    names keep the folder they always had)."""
    s = re.sub(r"[^A-Za-z0-9._+-]+", "_", text.strip()).strip("_")
    if len(s) > SLUG_MAX:
        s = s[:SLUG_MAX - 13].rstrip("_") + "_" + hashlib.sha1(text.strip().encode()).hexdigest()[:12]
    return s if s.strip(".") else "run"  # '.' and '..' name no folder of their own


@dataclass
class DataSpec:
    """A dataset: loader ``name`` reading ``root`` (a CSV file for ``csv``)."""

    name: str
    root: Path
    label: str
    args: dict = field(default_factory=dict)
    labels: Path | None = None
    """Content labels CSV (``image``, ``category``; paths relative to it), made if absent."""
    labels_auto: bool = False
    """``labels: auto``: pseudo-labels made into the results folder."""
    skip_missing: bool = False
    protocol: str | None = None
    """This training set's split protocol (None: the experiment's ``protocol``)."""
    val_fraction: float | None = None
    """For a protocol without a validation part (``ie-iqa``): the share of each split's train
    part held out as one, drawn per seed. Model selection, early stopping and calibration then
    see validation photos only, never the test part."""


@dataclass
class RunSpec:
    """One row of the results table: a model and its settings, trained on every split."""

    name: str
    slug: str
    model: str
    model_args: dict
    train: dict
    seeds: list[int]
    requires: list[Path]

    @property
    def recipe_sha256(self) -> str:
        """What the row trains, as one hash: its model, model arguments and training settings (the
        experiment's merged with its own), not its name. A ship gate records it so that a row edited
        after it was judged is not shipped under the old verdict."""
        recipe = {"model": self.model, "model_args": self.model_args, "train": self.train}
        return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class ExperimentConfig:
    name: str
    description: str
    data: DataSpec
    protocol: str
    seeds: list[int]
    tests: list[DataSpec | str]
    runs: list[RunSpec]
    splits: Path | None = None
    requires: list[Path] = field(default_factory=list)
    cache_dir: Path | None = None
    cache_limit: int | None = None
    """Bytes the shared cache may hold after a split (:func:`contentiqa.utils.disk_cache.prune`)."""
    checkpoint: str = "auto"
    out: Path | None = None
    source: Path | None = None
    """The config file (None for a dict)."""
    text: str | None = None
    """The config file's text, as written."""
    raw: dict = field(default_factory=dict)
    more_data: list[DataSpec] = field(default_factory=list)
    """Further training datasets (``data`` given as a list): one model is trained on all."""

    @property
    def train_sets(self) -> list[DataSpec]:
        return [self.data, *self.more_data]

    @property
    def data_sha256(self) -> str:
        """What the rows train on, as one hash: each training set's name, loader arguments, labels,
        protocol and validation share, and the splits file's name (not where the photos lie on
        this machine). A ship gate records it beside the row's :attr:`RunSpec.recipe_sha256`:
        the same row trained on other photos, or split otherwise, is another candidate."""
        sets = [{"label": d.label, "args": d.args, "labels": d.labels.name if d.labels else None,
                 "labels_auto": d.labels_auto, "skip_missing": d.skip_missing, "protocol": self.protocol_of(d),
                 "val_fraction": d.val_fraction} for d in self.train_sets]
        data = {"sets": sets, "splits": self.splits.name if self.splits else None}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()

    def protocol_of(self, spec: DataSpec) -> str:
        return spec.protocol or self.protocol

    @property
    def training_sets_said(self) -> str:
        """Each training set with its split protocol, for messages (a multi-dataset config's sets
        may each have their own)."""
        return " + ".join(f"{s.label} ({self.protocol_of(s)})" for s in self.train_sets)

    @property
    def cross_tests(self) -> list[DataSpec]:
        return [t for t in self.tests if isinstance(t, DataSpec)]

    @property
    def intra(self) -> bool:
        return INTRA in self.tests

    def test_labels(self) -> list[str]:
        """Column-group labels of the results table, in order (with no test sets: the training
        sets' validation parts, ``"<label> val"``)."""
        if not self.tests:
            return [f"{d.label} val" for d in self.train_sets]
        out: list[str] = []
        for t in self.tests:
            out += [d.label for d in self.train_sets] if t == INTRA else [t.label]  # type: ignore[union-attr]
        return out


MAX_SEED_COUNT = 1000
"""A count of seeds beyond it is a typo, not a plan: each seed is a training run."""


def _seeds(value: Any, where: str) -> list[int]:
    from ..training.config import SEED_LIMIT

    if isinstance(value, bool):
        raise ConfigError(f"{where}: seeds must be a count or a list of integers")
    if isinstance(value, int):
        if not 1 <= value <= MAX_SEED_COUNT:
            raise ConfigError(f"{where}: a count of seeds is 1 to {MAX_SEED_COUNT}, not {value}")
        return list(range(value))
    if isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) for s in value):
        if len(set(value)) != len(value):
            raise ConfigError(f"{where}: seeds repeat: {value}")
        if any(s < 0 for s in value):  # numpy and torch refuse them, but only once a split is drawn
            raise ConfigError(f"{where}: seeds must be 0 or more, got {value}")
        if any(s >= SEED_LIMIT for s in value):  # a traceback at the first draw, after the runs before it
            raise ConfigError(f"{where}: seeds must be below 2**63, got {value}")
        return list(value)
    raise ConfigError(f"{where}: seeds must be a count or a non-empty list of integers, not {value!r}")


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    return dict(value)


def _data(d: Any, base: Path, where: str) -> DataSpec:
    from ..data import list_datasets

    if isinstance(d, str):
        raise ConfigError(f"{where}: expected a mapping with name and root (or '{INTRA}' for the split's test part)")
    d = _mapping(d, where)
    unknown = sorted(map(str, set(d) - DATA_KEYS))  # str: YAML reads 'on:' as True, unsortable among str
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(DATA_KEYS)}")
    name = expand_vars(str(d.get("name", "csv")), f"{where}.name")
    if name not in list_datasets():
        raise ConfigError(f"{where}.name: unknown dataset loader {name!r}; known: {', '.join(list_datasets())}")
    if "root" not in d:
        raise ConfigError(f"{where}: 'root' (the dataset folder, or the CSV file for name: csv) is required")
    root = resolve_path(d["root"], base, f"{where}.root")
    label = expand_vars(str(d["label"]), f"{where}.label") if d.get("label") else (root.stem if name == "csv" else name)
    labels, auto = None, False
    if d.get("labels") is not None:
        if expand_vars(str(d["labels"]), f"{where}.labels").strip().lower() == "auto":
            auto = True
        else:
            labels = resolve_path(d["labels"], base, f"{where}.labels")
    args = _expand_all(_mapping(d.get("args"), f"{where}.args"), f"{where}.args")
    protocol = expand_vars(str(d["protocol"]), f"{where}.protocol") if d.get("protocol") else None
    val_fraction = None
    if d.get("val_fraction") is not None:
        try:
            val_fraction = float(d["val_fraction"])
        except (TypeError, ValueError):
            raise ConfigError(f"{where}.val_fraction: expected a number in (0, 0.5], got {d['val_fraction']!r}") from None
        if not 0 < val_fraction <= 0.5:
            raise ConfigError(f"{where}.val_fraction: expected a number in (0, 0.5], got {val_fraction}")
    skip_missing = d.get("skip_missing")
    if skip_missing is None:
        skip_missing = False
    elif not isinstance(skip_missing, bool):  # bool("false") is True: a quoted value would silently skip images
        raise ConfigError(f"{where}.skip_missing: expected true or false, got {skip_missing!r}")
    return DataSpec(name, root, label, args, labels, auto, skip_missing, protocol, val_fraction)


def _paths(values: Any, base: Path, where: str) -> list[Path]:
    if values is None:
        return []
    if not isinstance(values, list):
        values = [values]
    return [resolve_path(v, base, f"{where}[{i}]") for i, v in enumerate(values)]


def parse_config(raw: dict, base: Path, source: Path | None = None, text: str | None = None) -> ExperimentConfig:
    """Validate a config mapping; ``base`` is the folder relative paths start from."""
    from ..data import PROTOCOLS
    from ..models.registry import model_entry
    from ..training.config import TrainConfig

    where = str(source) if source is not None else "config"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    unknown = sorted(map(str, set(raw) - TOP_KEYS))  # str: YAML reads 'on:' as True, unsortable among str
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(TOP_KEYS)}")
    name = expand_vars(str(raw["name"]), f"{where}: name") if raw.get("name") else \
        (source.stem if source is not None else "experiment")
    if "data" not in raw:
        raise ConfigError(f"{where}: 'data' (the training dataset) is required")
    data_list = raw["data"] if isinstance(raw["data"], list) else [raw["data"]]
    if not data_list:
        raise ConfigError(f"{where}: 'data' is an empty list")
    datasets = [_data(d, base, f"{where}: data" + (f"[{i}]" if isinstance(raw["data"], list) else ""))
                for i, d in enumerate(data_list)]
    data = datasets[0]
    protocol = expand_vars(str(raw.get("protocol", "iqa-cr")), f"{where}: protocol")
    for p in [protocol] + [d.protocol for d in datasets if d.protocol]:
        if p not in PROTOCOLS:
            raise ConfigError(f"{where}: protocol must be one of {PROTOCOLS}, not {p!r}")
    train_labels = [d.label for d in datasets]
    if len({slugify(label) for label in train_labels}) != len(train_labels):  # each names its split file
        raise ConfigError(f"{where}: training datasets need labels that stay distinct as file names (splits_<label>.json; "
                          f"give each a 'label'); got {train_labels}")
    seeds = _seeds(raw.get("seeds", 1), f"{where}: seeds")

    tests: list[DataSpec | str] = []
    raw_tests = raw.get("test")
    if raw_tests is None:
        raw_tests = [INTRA]
    elif raw_tests == []:  # read as "no test sets": scoring the test parts would show what was meant unseen
        raise ConfigError(f"{where}: test is an empty list: write 'none' for validation parts only, or name the "
                          f"test sets ('{INTRA}' for each split's test part)")
    if isinstance(raw_tests, str) and raw_tests.strip().lower() == "none":
        raw_tests = []  # model selection: validation parts only, no test part is scored
    elif not isinstance(raw_tests, list):
        raise ConfigError(f"{where}: test must be a list (or 'none' for validation only), not {raw_tests!r}")
    for i, t in enumerate(raw_tests):
        if isinstance(t, str) and t.strip().lower() in (INTRA, "intra", "test"):
            if INTRA in tests:
                raise ConfigError(f"{where}: test[{i}]: '{INTRA}' listed twice")
            tests.append(INTRA)
        else:
            tests.append(_data(t, base, f"{where}: test[{i}]"))
    labels = [x for t in tests for x in (train_labels if t == INTRA else [t.label])]  # type: ignore[union-attr]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{where}: test sets need distinct labels (give each a 'label'); got {labels}")

    shared_model = raw.get("model")
    shared_args = _mapping(raw.get("model_args"), f"{where}: model_args")
    shared_train = _mapping(raw.get("train"), f"{where}: train")
    run_list = raw.get("runs")
    if run_list is None:
        if not shared_model:
            raise ConfigError(f"{where}: give 'model' (one run) or a 'runs' list")
        run_list = [{"name": str(shared_model)}]
    if not isinstance(run_list, list) or not run_list:
        raise ConfigError(f"{where}: 'runs' must be a non-empty list")
    runs: list[RunSpec] = []
    for i, r in enumerate(run_list):
        rw = f"{where}: runs[{i}]"
        r = _mapping(r, rw)
        bad = sorted(map(str, set(r) - RUN_KEYS))
        if bad:
            raise ConfigError(f"{rw}: unknown key(s) {bad}; known: {sorted(RUN_KEYS)}")
        model = r.get("model") or shared_model
        if not model:
            raise ConfigError(f"{rw}: no model (set 'model' in the run or at the top level)")
        model = expand_vars(str(model), f"{rw}.model")
        try:
            model_entry(str(model))
        except ValueError as exc:
            raise ConfigError(f"{rw}: {exc}") from None
        model_args = _expand_all({**shared_args, **_mapping(r.get("model_args"), f"{rw}.model_args")}, f"{rw}.model_args")
        for k, v in list(model_args.items()):
            if k.endswith("_checkpoint") and v is not None:
                model_args[k] = str(resolve_path(v, base, f"{rw}.model_args.{k}"))
        train = _train_values({**shared_train, **_mapping(r.get("train"), f"{rw}.train")}, f"{rw}.train")
        if "seed" in train:
            raise ConfigError(f"{rw}.train: 'seed' is set per split (the split's seed); list seeds under 'seeds'")
        try:
            TrainConfig.from_dict(train)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{rw}.train: {exc}") from None
        run_seeds = _seeds(r["seeds"], f"{rw}.seeds") if "seeds" in r else list(seeds)
        extra = sorted(set(run_seeds) - set(seeds))
        if extra:
            raise ConfigError(f"{rw}.seeds: {extra} not among the experiment's seeds {seeds}")
        run_name = expand_vars(str(r["name"]), f"{rw}.name") if r.get("name") else str(model)
        runs.append(RunSpec(run_name, slugify(run_name), str(model), model_args, train, run_seeds,
                            _paths(r.get("requires"), base, f"{rw}.requires")))
    slugs = [r.slug for r in runs]
    if len(set(slugs)) != len(slugs):  # each names a folder
        raise ConfigError(f"{where}: run names must stay distinct as folder names ({[r.name for r in runs]} give "
                          f"{slugs})")
    cache_limit = None
    if raw.get("cache_limit") is not None:
        from ..utils.disk_cache import parse_size

        try:
            cache_limit = parse_size(expand_vars(raw["cache_limit"], "") if isinstance(raw["cache_limit"], str) else raw["cache_limit"])
        except ValueError as exc:
            raise ConfigError(f"{where}: cache_limit: {exc}") from None
    checkpoint = expand_vars(str(raw.get("checkpoint", "auto")), f"{where}: checkpoint")  # every string may use ${VAR}, as the README says
    if checkpoint not in CHECKPOINTS:
        raise ConfigError(f"{where}: checkpoint must be one of {CHECKPOINTS}, not {checkpoint!r}")
    for d in datasets:  # it is read only where a split has no validation part: elsewhere it did nothing, unsaid
        if d.val_fraction is not None and (d.protocol or protocol) != "ie-iqa":
            raise ConfigError(f"{where}: data {d.label}: val_fraction carves a validation part from the ie-iqa "
                              f"protocol's train part; protocol {d.protocol or protocol} has its own")
    for t in tests:
        if isinstance(t, DataSpec) and t.val_fraction is not None:
            raise ConfigError(f"{where}: test set {t.label}: val_fraction is for training data (a test set is all tested)")
    unvalidated = [d.label for d in datasets if (d.protocol or protocol) == "ie-iqa" and d.val_fraction is None]
    if not tests and unvalidated and not raw.get("splits"):  # every row trained and the table held no figure
        # (a splits file may hold validation parts: the run checks them once it is read)
        raise ConfigError(f"{where}: test: none reports validation parts only, and the ie-iqa protocol draws none for "
                          f"{', '.join(unvalidated)}: give it a val_fraction, or name test sets")
    return ExperimentConfig(
        name=name,
        description=expand_vars(str(raw.get("description") or ""), f"{where}: description").strip(),
        data=data,
        protocol=protocol,
        seeds=seeds,
        tests=tests,
        runs=runs,
        splits=resolve_path(raw["splits"], base, f"{where}: splits") if raw.get("splits") else None,
        requires=_paths(raw.get("requires"), base, f"{where}: requires"),
        cache_dir=resolve_path(raw["cache_dir"], base, f"{where}: cache_dir") if raw.get("cache_dir") else None,
        cache_limit=cache_limit,
        checkpoint=checkpoint,
        out=resolve_path(raw["out"], base, f"{where}: out") if raw.get("out") else None,
        source=source,
        text=text,
        raw=raw,
        more_data=datasets[1:],
    )


def load_config(config: str | os.PathLike | dict, base_dir: str | os.PathLike | None = None) -> ExperimentConfig:
    """An :class:`ExperimentConfig` from a YAML file or a mapping (relative paths of a mapping
    start at ``base_dir``, default the working directory)."""
    from ..utils.yamlfile import parse_yaml, read_config_text

    if isinstance(config, ExperimentConfig):
        return config
    if isinstance(config, dict):
        return parse_config(config, Path(base_dir or os.getcwd()).absolute(), None, None)
    path = Path(config)
    try:
        text = read_config_text(path)
        raw = parse_yaml(text, path) or {}
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    return parse_config(raw, Path(base_dir).absolute() if base_dir else path.absolute().parent, path, text)


# -- what a config needs ----------------------------------------------------------------------
def data_missing(spec: DataSpec) -> list[str]:
    """Why ``spec`` cannot be read (empty when its root is there)."""
    if spec.name == "csv":
        if not spec.root.exists():
            return [f"dataset {spec.label}: CSV {spec.root} not found"]
        return []
    if not spec.root.is_dir():
        return [f"dataset {spec.label} ({spec.name}): folder {spec.root} not found"]
    return []


def weights_missing(run: RunSpec) -> list[str]:
    """The weights ``run``'s model_args name (``*_checkpoint``) that are absent."""
    return [f"{run.name}: {k} {v} not found" for k, v in run.model_args.items()
            if k.endswith("_checkpoint") and v is not None and not Path(v).is_file()]


def run_missing(cfg: ExperimentConfig, run: RunSpec) -> list[str]:
    """Files ``run`` needs that are absent: weights in its model_args and ``requires``."""
    out = weights_missing(run)
    for p in cfg.requires + run.requires:
        if not p.exists():
            out.append(f"{run.name}: required file {p} not found")
    return out


def experiment_missing(cfg: ExperimentConfig) -> list[str]:
    """Why no run of ``cfg`` can start: its training data, a test set or its split file absent."""
    out = [m for d in cfg.train_sets for m in data_missing(d)]
    for t in cfg.cross_tests:
        out += data_missing(t)
    if cfg.splits is not None and not cfg.splits.is_file():
        out.append(f"split file {cfg.splits} not found")
    return out
