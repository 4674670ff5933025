"""``contentiqa train``: train a registered model on a dataset, with checkpoints and resume."""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from .common import (add_data_args, add_split_args, check_rated, check_split_index, each_dataset, finite_float, load_data,
                     model_spec, resolve_split, say_failed, split_parts, user_path)
from .main import UsageError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (IQA-CR, IE-IQA, ...) on a human-rated dataset",
        description=(
            "Train a model on a dataset split. Checkpoints go to OUT/last.pt every epoch and "
            "OUT/best.pt (the best validation epoch); a recipe that mixes or calibrates the weights "
            "afterwards (interpolate, calibrate) writes the finished model to OUT/tested.pt. "
            "--resume continues an interrupted run exactly. "
            "By default the model is built with its registered architecture and trained with its "
            "registered recipe (how its shipped default weights were trained; see "
            "src/contentiqa/models/recipes.py); --recipe takes another model's or none (the "
            "plain TrainConfig defaults). "
            "A YAML --config may hold `model: NAME`, `model_args: {...}` and `train: {...}` "
            "(TrainConfig fields) over the recipe; command-line flags override both. The recipe used "
            "and the overrides are written to OUT/config.json and the checkpoints. Under `torchrun --nproc_per_node N "
            "-m contentiqa train ...` it trains with DistributedDataParallel on N processes (gloo on "
            "CPU, nccl and one GPU per process with --device cuda); --batch-size is then per process."
        ),
    )
    p.add_argument("--model", "-m", default=None, type=model_spec, help="registered model name (see `contentiqa models`); default iqa-cr")
    add_data_args(p, several=True)
    add_split_args(p)
    p.add_argument("--config", type=user_path, default=None, help="YAML file with model, model_args and train sections")
    p.add_argument("--recipe", default=None, metavar="NAME|none",
                   help="training recipe to start from: a registered model's (default: --model's own), a "
                        "shipped NAME.TAG's (how that tag was trained, e.g. ie-iqa.clive), or 'none' for the "
                        "plain TrainConfig defaults")
    p.add_argument("--out", type=user_path, default=None, help="output folder (default runs/<model>): checkpoints, metrics.jsonl, "
                                               "test_metrics.json and run.json (what trained and tested, and what ran it)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=finite_float, default=None)
    p.add_argument("--cache-stages", type=int, default=None, help="cache the first N (frozen) backbone stages")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ...")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a TrainConfig field or model argument (model.KEY=VALUE); repeatable")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _parse_value(text: str, item: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:  # `--set model.grid=[2,2`: a typo, said as one
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UsageError(f"--set {item!r}: {text!r} is not a value YAML can read ({problem}); "
                         "close brackets and quotes, or quote text") from None


def recipe_record(recipe_name: str | None, base: dict, train_args: dict) -> dict:
    """What the run's training config came from: the recipe (its name, source and values)
    and the fields set over it (config file, flags)."""
    from ..models.registry import model_recipe

    if recipe_name is None:
        return {"name": None, "source": "TrainConfig defaults", "values": {}, "overrides": dict(train_args)}
    recipe = model_recipe(recipe_name)
    return {"name": recipe_name, "source": recipe.source, "values": recipe.train_args(),
            "overrides": {k: v for k, v in train_args.items() if k not in base or base[k] != v}}


def describe_recipe(recipe: dict | None) -> str:
    """One line naming the recipe a run starts from and what was changed."""
    if not recipe:
        return "training settings: TrainConfig defaults"
    changed = ", ".join(f"{k}={v}" for k, v in recipe["overrides"].items() if k not in ("seed", "device")) or "none"
    return f"recipe: {recipe['name'] or 'TrainConfig defaults'}; changed: {changed}"


def _same_value(v):
    """A model argument as a config keeps it, for comparing what was asked with what was saved: a
    tuple is its JSON list, 1 is 1.0, "none" is None (the configs read these alike)."""
    if isinstance(v, str) and v.strip() in ("", "none", "None", "null"):
        return None
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, (list, tuple)):
        return [_same_value(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _same_value(x) for k, x in v.items()}
    return v


def _resumed_model_args(args: argparse.Namespace, out: Path, model_args: dict) -> dict:
    """The model arguments of the run to continue: those ``last.pt`` was trained with (its
    ``config.json``), and a UsageError when the command asks for others (they were dropped
    without a word: a resumed run cannot change its architecture)."""
    if not (args.resume and (out / "last.pt").is_file()):
        return model_args
    saved = json.loads((out / "config.json").read_text()) if (out / "config.json").is_file() else {}
    trained = dict(saved.get("model_config") or {})
    if not trained:
        return model_args

    # a weight file's path is where it is, not what it is (a moved project): the path given now
    # wins, and last.pt holds every weight the run trained
    moved = {k: v for k, v in model_args.items() if k.endswith("_checkpoint")}
    changed = [f"{k} {trained[k]!r} (now {v!r})" if k in trained else f"no {k} (now {v!r})"
               for k, v in model_args.items()
               if k not in moved and (k not in trained or _same_value(v) != _same_value(trained[k]))]
    if changed:
        raise UsageError(f"--resume: {out / 'last.pt'} was trained with model argument(s) {'; '.join(changed)}: "
                         "resume without changing them, or train afresh in another --out")
    return {**trained, **moved}


def build_configs(args: argparse.Namespace) -> tuple[str, dict, dict, dict]:
    """(model name, model arguments, TrainConfig arguments, recipe record): the model's recipe
    (or --recipe's), then the --config file's sections, then the flags."""
    from ..models.registry import model_recipe
    from ..training.config import load_yaml

    model_name, model_args, train_args = "iqa-cr", {}, {}
    if args.config:
        try:
            cfg = load_yaml(args.config)
        except (FileNotFoundError, ValueError) as exc:
            raise UsageError(str(exc)) from None
        unknown = set(cfg) - {"model", "model_args", "train"}
        if unknown:
            raise UsageError(f"{args.config}: unknown section(s) {sorted(map(str, unknown))}; use model, model_args, train")
        for section in ("model_args", "train"):
            if cfg.get(section) is not None and not isinstance(cfg[section], dict):
                raise UsageError(f"{args.config}: '{section}' must be a mapping of names to values, "
                                 f"not {type(cfg[section]).__name__}")
        model_name = cfg.get("model", model_name)
        model_args = dict(cfg.get("model_args") or {})
        train_args = dict(cfg.get("train") or {})
    if args.model:
        model_name = args.model
    from ..models.registry import model_entry

    try:  # the model first: a mistyped one is the model's mistake, not --recipe's
        model_entry(str(model_name))
    except ValueError as exc:
        raise UsageError(f"{'--model' if args.model else f'{args.config}: model'}: {exc}") from None
    recipe_name = getattr(args, "recipe", None) or model_name
    base: dict = {}
    if str(recipe_name).lower() != "none":
        try:
            base = model_recipe(recipe_name).train_args()
        except ValueError as exc:
            raise UsageError(f"--recipe: {exc}") from None
    else:
        recipe_name = None
    train_args = {**base, **train_args}
    for flag, key in (("epochs", "epochs"), ("batch_size", "batch_size"), ("lr", "lr"), ("cache_stages", "cache_stages"),
                      ("seed", "seed"), ("device", "device")):
        v = getattr(args, flag)
        if v is not None:
            train_args[key] = v
    for item in args.set:
        if "=" not in item:
            raise UsageError(f"--set {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        if k.startswith("model."):
            model_args[k[6:]] = _parse_value(v, item)
        else:
            train_args[k] = _parse_value(v, item)
    return model_name, model_args, train_args, recipe_record(recipe_name, base, train_args)


def run(args: argparse.Namespace) -> int:
    from ..training import distributed as dist_utils
    from ..training.config import TrainConfig
    from ._output import terminate_as_interrupt

    model_name, model_args, train_args, recipe = build_configs(args)
    try:
        cfg = TrainConfig.from_dict(train_args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    # Launched by torchrun (WORLD_SIZE > 1): join the process group; one GPU per local rank.
    try:
        info = dist_utils.init_from_env(cfg.device)
    except ValueError as exc:  # (processes that never met too)
        raise UsageError(str(exc)) from None
    if info.distributed:
        cfg.device = dist_utils.device_for(cfg.device, info.local_rank)
    if info.rank != 0:  # rank 0 speaks for the run: the others' notes and warnings would repeat each once per process
        args.quiet = True
        warnings.filterwarnings("ignore")
    try:
        with terminate_as_interrupt():
            return _train(args, model_name, model_args, cfg, info, recipe)
    except KeyboardInterrupt as exc:
        if str(exc):  # said already (during an epoch: which one, and what last.pt holds)
            raise
        raise KeyboardInterrupt(f"interrupted: rerun the same command with --resume to go on "
                                f"({args.out or f'runs/{model_name}'} keeps "
                                "the finished epochs and the cached stages; a finished run is tested then)") from None
    except RuntimeError as exc:
        said = dist_utils.lost_peer(exc)
        if said is None:
            raise
        print(f"contentiqa train: error: lost another process of the run ({said}); once the others have stopped, "
              "rerun the same command with --resume to go on from the last finished epoch", file=sys.stderr)
        return 1
    finally:
        dist_utils.cleanup(info)


def _train(args: argparse.Namespace, model_name: str, model_args: dict, cfg, info, recipe: dict | None = None) -> int:
    from ..backbones import WeightsUnavailableError
    from ..models import create_model
    from ..training import distributed as dist_utils
    from ..training.cache import CacheWriteError
    from ..training.trainer import Trainer, seed_everything
    from ..utils.io import atomic_write_text

    check_split_index(args, draws=True)
    sets = each_dataset(args)
    out = _output_folder(args, model_name)
    if len(sets) > 1:
        return _train_several(args, sets, out, model_name, model_args, cfg, info, recipe)
    args = sets[0]
    ds = load_data(args)
    check_rated(ds.table, args.data, "training")
    resuming = _resuming(args, out)
    own = resuming and (out / "split.json").is_file() and not args.split
    if own:
        args.split = str(out / "split.json")
    with dist_utils.main_first():  # rank 0 makes and saves the split; the others read it
        if info.rank != 0 and not args.split and "split" not in ds.table and (out / "split.json").is_file():
            args.split = str(out / "split.json")
        # a run resumed keeps the parts it started with: one begun before the draw saved no split.json
        split = resolve_split(args, ds.table, out if info.rank == 0 else None, training=True, draw_val=not resuming)
        if info.rank == 0 and not resuming:
            _keep_split_file_only_if_drawn(split, args, out / "split.json")
    table = ds.table
    parts = split_parts(split, table, args, own=own)
    model_args = _resumed_model_args(args, out, model_args)
    if info.rank == 0:
        _say_missing_parts({"": parts}, {"": split.protocol})
    _check_validation_needs(cfg, "val" in parts)
    seed_everything(cfg.seed)  # the initial weights too: one seed, one model (and one cache key on resume)
    try:
        model = create_model(model_name, pretrained=False, **model_args)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"cannot build {model_name} with {model_args}: {exc}") from None
    except (WeightsUnavailableError, FileNotFoundError) as exc:  # a branch's weights not on this machine
        raise UsageError(f"cannot build {model_name}: {exc}") from None
    if "test" in parts and model.predicts_score:  # found now, not after the training it would cost
        check_rated(parts["test"], args.data, "the test part")
    quiet = args.quiet or info.rank != 0  # rank 0 speaks for the run
    log = (lambda *a, **k: None) if info.rank != 0 else _notes_only if quiet else print
    procs = f" on {info.world_size} processes" if info.distributed else ""
    log(describe_recipe(recipe))
    log(f"training {model_name} on {len(parts['train'])} images (val {len(parts.get('val', []))}, "
        f"test {len(parts.get('test', []))}){procs}; output {out}")
    try:
        trainer = Trainer(model, parts["train"], parts.get("val"), ds.scale, cfg, out, progress=not quiet,
                          cache_dir=out / "cache", log=log, recipe=recipe, test_table=parts.get("test"))
    except (ValueError, CacheWriteError, FileNotFoundError) as exc:  # e.g. init_from names no file
        raise UsageError(str(exc)) from None
    best = _fit(trainer, args, out)
    if info.rank != 0:
        return 0  # rank 0 reports and tests the best checkpoint
    _say_best(best, out, trainer.monitored)
    m = _finish(trainer, trainer.load_best(), out)
    _write_run_record(out, [(args, split, parts)], trainer)
    if "test" in parts:
        metrics, preds = _test(m, parts["test"], ds.scale, batch_size=cfg.batch_size, progress=not quiet)
        atomic_write_text(out / "test_metrics.json", json.dumps(metrics, indent=1))
        return _say_tested("test", metrics, preds)
    return 0


def _resuming(args: argparse.Namespace, out: Path) -> bool:
    """--resume of a run that has epochs to resume (without last.pt it starts afresh)."""
    return bool(args.resume) and (out / "last.pt").is_file()


def _keep_split_file_only_if_drawn(split, args: argparse.Namespace, path: Path) -> None:
    """A fresh run's split.json is the split it drew (resolve_split saved it); one its 'split'
    column or --split file gives is not drawn, and a split.json an earlier attempt left there
    would be read back on --resume, or by `evaluate --split`, as this run's: removed."""
    if args.split and os.path.realpath(args.split) == os.path.realpath(path):
        return  # the file it was given (an earlier attempt's, passed back): never removed
    if args.split or split.protocol == "column":
        path.unlink(missing_ok=True)


def _say_tested(label: str, metrics: dict, preds) -> int:
    """The test line, and the test photos that could not be scored (their figures leave them
    out: said, as `evaluate` says it, with exit code 1)."""
    from ..training.evaluate import COUNTS

    failed = int(metrics.get("n_failed") or 0)
    say_failed(preds, "`contentiqa evaluate --predictions FILE` lists them all")
    print(f"{label}: " + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k not in (*COUNTS, "n_failed"))
          + f"  ({int(metrics.get('n', 0))} images" + (f", {failed} failed" if failed else "") + ")")
    return 1 if failed else 0


def _notes_only(*parts: object, **kwargs: object) -> None:
    """The trainer's log under --quiet: its notes (labels a head lacks, sets left out of the
    validation mean) still reach stderr, as the command's own notes do; progress lines do not."""
    text = " ".join(map(str, parts))
    if text.startswith("note:"):
        print(text, file=sys.stderr)


def _write_run_record(out: Path, sets: list[tuple[argparse.Namespace, Any, dict]], trainer) -> None:
    """OUT/run.json: what the finished run trained and was tested on (each dataset, its split and
    parts), which checkpoint test_metrics.json scored, how it trained (minutes per epoch, which
    stages, device, processes) and what ran it (command, code version, machine): the figures
    stay tied to their data when the folder is copied elsewhere."""
    from ..experiments import provenance
    from ..utils.io import atomic_write_text

    data = [{"data": str(Path(a.data).resolve()), "dataset": a.dataset or "csv",
             "split": {"protocol": split.protocol, "seed": split.seed,
                       "file": str(Path(a.split).resolve()) if a.split else None},
             "parts": {name: len(rows) for name, rows in parts.items()}} for a, split, parts in sets]
    tested = "tested.pt" if (out / "tested.pt").is_file() else "best.pt"
    atomic_write_text(out / "run.json", json.dumps({"data": data, "tested": tested, **trainer.training_record(),
                                                    "cwd": os.getcwd(), "provenance": provenance()}, indent=1))


def _fit(trainer, args: argparse.Namespace, out: Path) -> dict:
    """``trainer.fit``, with a damaged ``last.pt`` under --resume (the only file it reads) as a
    usage error naming what to do."""
    from ..data.imageio import ImageLoadError
    from ..training.cache import CacheWriteError
    from ..training.trainer import TrainingDiverged
    from ..utils.checkpoint_io import CheckpointReadError
    from ..utils.io import Busy

    try:
        return trainer.fit(resume=args.resume)
    except KeyboardInterrupt:
        # the epoch last.pt holds, not the trainer's count: a stop while saving it is before that epoch
        kept = (f"{out / 'last.pt'} holds epoch {trainer.saved_epoch}; rerun the same command with --resume to "
                "continue" if trainer.saved_epoch else "no epoch had finished")
        raise KeyboardInterrupt(f"interrupted during epoch {trainer.saved_epoch + 1}: {kept}") from None
    except (TrainingDiverged, CacheWriteError) as exc:
        raise UsageError(str(exc)) from None
    except Busy as exc:
        raise UsageError(f"{exc}: wait for it to finish, or choose another --out") from None
    except CheckpointReadError as exc:
        raise UsageError(f"--resume: {exc}. Restore a good copy of {out / 'last.pt'}, or delete it to start over") from None
    except ImageLoadError as exc:  # met while training (damaged data behind a good header)
        raise UsageError(f"{exc}; replace the file or remove its row (then --resume continues)") from None
    except ValueError as exc:
        if not args.resume:
            raise
        raise UsageError(f"--resume: {exc}; resume with the run's own settings, or choose another --out") from None


def _say_best(best: dict, out: Path, monitored: str | None, several: bool = False) -> None:
    """Which epoch best.pt keeps (the model that is finished and tested), and what chose it
    (``Trainer.monitored``; with several sets a bare metric is their mean)."""
    if monitored is None:
        chosen_by = f"lowest training loss, {best.get('loss', float('nan')):.4f} (no validation part)"
    else:
        mean = "mean " if several and "/" not in monitored else ""
        chosen_by = f"{mean}val {monitored} {best.get('val_' + monitored, float('nan')):.4f}"
    print(f"best epoch {best.get('epoch')}: {chosen_by} -> {out / 'best.pt'}")


def _test(model, table, scale, **kw):
    """The test part's metrics; when it cannot be measured (no image scored, one prediction for
    all) the run is still there, and the error says so."""
    from ..metrics import MetricInputError
    from ..training.evaluate import evaluate_model

    try:
        return evaluate_model(model, table, scale, **kw)
    except MetricInputError as exc:
        raise UsageError(f"the model is trained, but its test part cannot be measured: {exc}") from None


def _output_folder(args: argparse.Namespace, model_name: str) -> Path:
    """--out, created; a folder that already holds a run is continued only with --resume, so
    that rerunning a command never silently restarts (and overwrites) a long training."""
    from ._output import check_writable_folder

    out = check_writable_folder(Path(args.out or f"runs/{model_name}"), "--out")
    if (out / "last.pt").is_file() and not args.resume:
        history = out / "metrics.jsonl"
        done = sum(1 for line in history.read_text().splitlines() if line.strip()) if history.is_file() else None
        held = f"{done} epoch(s) done" if done is not None else "a checkpoint"
        raise UsageError(f"--out {out} holds a run already ({held}): pass --resume to continue it, or choose "
                         "another --out (or delete that folder) to start over")
    return out


def _say_missing_parts(parts: dict[str, dict], made_by: dict[str, str]) -> None:
    """A split with no validation or no test part trains all the same, but says so (even with
    --quiet), with what it changes. ``made_by``: each split's protocol ('column' for a table's
    own, whatever a split file says for one read back)."""
    validated = [label for label, p in parts.items() if "val" in p]
    for label, p in parts.items():
        name = f"{label}: " if label else ""
        small = (" (--protocol iqa-cr cuts the table into 10 cells and needs about 60 images; --protocol "
                 "ie-iqa keeps 20 % for testing)") if made_by[label] == "iqa-cr" else ""
        if "val" not in p and validated:  # several sets: the others' validation parts choose the epoch
            print(f"note: {label} has no validation part: {', '.join(validated)} choose"
                  f"{'s' if len(validated) == 1 else ''} the best epoch", file=sys.stderr)
        elif "val" not in p:
            print(f"note: {name}the split has no validation part: best.pt is the epoch with the lowest training "
                  f"loss, and steps that need one (calibrate, interpolate) cannot run{small}", file=sys.stderr)
        if "test" not in p:
            print(f"note: {name}the split has no test part: no test metrics will be written{small}", file=sys.stderr)


def _check_validation_needs(cfg, has_val: bool) -> None:
    """Before any work: a recipe step that fits on the validation part (the default recipes
    calibrate) cannot run without one; say how to get one or turn the step off."""
    steps = (("calibrate", cfg.calibrate, "false"), ("interpolate", cfg.interpolate, "null"))
    needs = [name for name, on, _ in steps if on]
    if needs and not has_val:
        off = " ".join(f"--set {name}={value}" for name, on, value in steps if on)
        raise UsageError(f"the recipe's {' and '.join(needs)} fit(s) on the validation part, and this split has none: "
                         "give a split with a val part (--split; a 'split' column gets one drawn from its train rows; "
                         "--protocol iqa-cr makes one from about 60 photos up, --protocol ie-iqa never does), or turn "
                         f"it off with {off}")


def _finish(trainer, model, out: Path):
    """``model`` (the chosen epoch's) mixed and calibrated as the recipe asks (``Trainer.finish``);
    when that changed it, saved as OUT/tested.pt, the model to use and the one the test part scores."""
    from ..models.registry import save_checkpoint

    try:
        done = trainer.finish(model)
    except ValueError as exc:
        raise UsageError(f"cannot finish the run: {exc}") from None
    # this finish made its model: an earlier finish's figures go, so that a stop before the test
    # part is scored again leaves none beside another model (they are written anew after it)
    (out / "test_metrics.json").unlink(missing_ok=True)
    if not done and (out / "tested.pt").exists():
        # a run finished before with a mix or calibration, resumed without them: that tested.pt is
        # not this finish's model, and run.json would name it as the one the figures are of
        (out / "tested.pt").unlink()
        print(f"note: {out / 'tested.pt'} removed: this finish neither mixes nor calibrates (best.pt is the model)",
              file=sys.stderr)
    if done:
        # the model to use says how it was made as best.pt does: the recipe, and the epoch it
        # finished from with that epoch's record (its figures before the mix and calibration)
        save_checkpoint(model, out / "tested.pt", extra={
            "train_config": trainer.cfg.to_dict(), **({"recipe": trainer.recipe} if trainer.recipe is not None else {}),
            "best": trainer.best, **done})
        what = (["weights mixed"] if "interpolated" in done else []) + (["output calibrated"] if "calibration" in done else [])
        print(f"{' and '.join(what)} on the validation part -> {out / 'tested.pt'}")
    return model


def _label(args: argparse.Namespace) -> str:
    path = Path(args.data)
    return path.stem if (args.dataset or "csv") == "csv" else f"{args.dataset}:{path.name}"


def _train_several(args: argparse.Namespace, sets: list[argparse.Namespace], out: Path, model_name: str,
                   model_args: dict, cfg, info, recipe: dict | None = None) -> int:
    """One model on several datasets: each split on its own (its 'split' column, else
    --protocol/--split-seed; saved under OUT/splits/<label>/), MOS normalised per dataset,
    batches within one dataset, early stopping on the mean validation SROCC of the datasets
    that have a validation part; each dataset's test part is reported on its own."""
    import pandas as pd

    from ..backbones import WeightsUnavailableError
    from ..data.splits import check_held_out_across_sets
    from ..models import create_model
    from ..training import distributed as dist_utils
    from ..training.evaluate import evaluate_model
    from ..training.cache import CacheWriteError
    from ..training.trainer import Trainer, seed_everything
    from ..utils.io import atomic_write_text

    if info.distributed:
        raise UsageError("several --data: train them on one process (DDP takes one dataset)")
    if args.split:
        raise UsageError("--split names one split file; with several --data each dataset's split is made or read on its own")
    labels = [_label(a) for a in sets]
    if len(set(labels)) != len(labels):
        raise UsageError(f"several --data with the same name {labels}: rename a CSV or use another folder name")
    parts: dict[str, dict] = {}
    splits: dict[str, Any] = {}
    made_by: dict[str, str] = {}
    scales = {}
    for label, a in zip(labels, sets):
        ds = load_data(a)
        check_rated(ds.table, a.data, "training")
        folder = out / "splits" / label.replace(":", "_")
        folder.mkdir(parents=True, exist_ok=True)
        own = _resuming(args, out) and (folder / "split.json").is_file()
        a.split = str(folder / "split.json") if own else None
        split = resolve_split(a, ds.table, folder, training=True)
        if not _resuming(args, out):
            _keep_split_file_only_if_drawn(split, a, folder / "split.json")
        splits[label] = split
        parts[label] = {p: rows.assign(dataset=label) for p, rows in split_parts(split, ds.table, a, own=own).items()}
        made_by[label] = split.protocol
        scales[label] = ds.scale
    try:
        check_held_out_across_sets(parts)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    train = pd.concat([p["train"] for p in parts.values()], ignore_index=True)
    vals = [p["val"] for p in parts.values() if "val" in p]
    val = pd.concat(vals, ignore_index=True) if vals else None
    _say_missing_parts(parts, made_by)
    _check_validation_needs(cfg, val is not None)
    model_args = _resumed_model_args(args, out, model_args)
    seed_everything(cfg.seed)
    try:
        model = create_model(model_name, pretrained=False, **model_args)
        log = _notes_only if args.quiet else print
        sizes = " + ".join(f"{k} ({len(p['train'])})" for k, p in parts.items())
        log(describe_recipe(recipe))
        log(f"training {model_name} on {sizes} images "
            f"(val {0 if val is None else len(val)}); scores on {labels[0]}'s scale; output {out}")
        tests = [p["test"] for p in parts.values() if "test" in p]
        trainer = Trainer(model, train, val, scales, cfg, out, progress=not args.quiet, cache_dir=out / "cache", log=log,
                          recipe=recipe, test_table=pd.concat(tests, ignore_index=True) if tests else None)
    except CacheWriteError as exc:
        raise UsageError(str(exc)) from None
    except (TypeError, ValueError, WeightsUnavailableError, FileNotFoundError) as exc:
        raise UsageError(f"cannot train {model_name}: {exc}") from None
    if model.predicts_score:  # found now, not after the training it would cost
        for label, a in zip(labels, sets):
            if "test" in parts[label]:
                check_rated(parts[label]["test"], a.data, "the test part")
    best = _fit(trainer, args, out)
    _say_best(best, out, trainer.monitored, several=True)
    m = _finish(trainer, trainer.load_best(), out)  # what best.pt keeps, as for one dataset
    _write_run_record(out, [(a, splits[label], parts[label]) for label, a in zip(labels, sets)], trainer)
    results, failed = {}, 0
    for label, p in parts.items():
        if "test" in p:
            metrics, preds = _test(m, p["test"].drop(columns=["dataset"]), scales[label],
                                   batch_size=cfg.batch_size, progress=not args.quiet)
            results[label] = metrics
            failed += _say_tested(f"test {label}", metrics, preds)
    if results:
        atomic_write_text(out / "test_metrics.json", json.dumps(results, indent=1))
    dist_utils.barrier()
    return 1 if failed else 0
