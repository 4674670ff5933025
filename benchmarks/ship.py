"""Train one row of an experiment config on all its training data and ship it as a weights tag
inside the package (src/contentiqa/weights/<model>_<tag>.pt), with a model card.

    python benchmarks/ship.py configs/clive_iqa_cr.yaml --row "IQA-CR, content loss 0.05, D=128" --tag clive \\
        [--results benchmarks/results/iqa_cr.json] [--from-run RUN_DIR] [--weights-dir DIR]
    CONTENTIQA_BIQ2021=/path/to/BIQ2021 python benchmarks/ship.py configs/multi_clive_biq2021.yaml \\
        --row "IE-IQA, normalised + ranking" --tag clive-biq2021

The row's model, model arguments and training settings are the config's (the same code path as
``contentiqa experiment``: :func:`contentiqa.experiments.runner.load_data` for data and labels,
joined by dataset-relative key). Which images train: every image of each training set, except
its split seed 0's validation part (kept for early stopping: the IQA-CR protocol's 10 %, an
official split's validation share) and an official split's own test part. Protocols without a
validation part (IE-IQA's 80/20) train on all images for the configured epochs. The figures on
the model card come from the experiment's held-out test parts (``--results``: its results.json
or a benchmark's results file), not from this run, which has no test part.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import time
from pathlib import Path

import numpy as np

from common import ROOT, command_line, provenance

WEIGHTS = ROOT / "src" / "contentiqa" / "weights"


def shipping_data(cfg, out: Path):
    """(train, val or None, scales, description) over every training set of ``cfg``."""
    import pandas as pd

    from contentiqa.data import make_splits
    from contentiqa.experiments.runner import load_data, val_positions

    train_parts, val_parts, used, scales = [], [], [], {}
    several = len(cfg.train_sets) > 1
    for spec in cfg.train_sets:
        table, scale = load_data(spec, out, progress=True)
        scales[spec.label] = scale
        protocol = cfg.protocol_of(spec)
        split = make_splits(table, protocol, 0)
        va = split.indices(table, "val") if split.parts.get("val") else np.array([], dtype=int)
        if not len(va) and spec.val_fraction:
            # A protocol without a validation part: the same share the experiment held out of each
            # split's train part, held out of all the photos (epoch choice and calibration).
            va = val_positions(len(table), spec.val_fraction, 0)
        held = set(va.tolist()) | (set(split.indices(table, "test").tolist()) if protocol == "official" else set())
        tr = np.array([i for i in range(len(table)) if i not in held], dtype=int)
        train_parts.append(table.iloc[tr].assign(dataset=spec.label) if several else table.iloc[tr])
        if len(va):
            val_parts.append(table.iloc[va].assign(dataset=spec.label) if several else table.iloc[va])
        used.append(f"{spec.label}: {len(tr)} images" + (f" (+{len(va)} held out for validation)" if len(va) else ""))
    val = pd.concat(val_parts, ignore_index=True) if val_parts else None
    return pd.concat(train_parts, ignore_index=True), val, scales, used


def figures_from(results: Path | None, row: str) -> str:
    """The row's held-out test figures from an experiment's results.json (or a benchmark's copy)."""
    if results is None or not results.is_file():
        return "see the experiment's table"
    from contentiqa.metrics import format_mean_std

    res = json.loads(results.read_text()).get("runs", {}).get(row, {})
    return "; ".join(  # one split: the figure alone (a spread of 0 was never measured)
        f"{label}: " + ", ".join(f"{k.upper()} {v}" for k, v in format_mean_std(s).items()
                                 if k in ("plcc", "srocc", "accuracy", "acceptable"))
        for label, s in res.get("summary", {}).items()) + f" ({len(res.get('seeds', []))} split(s))"


def gate_file(stem: Path) -> Path:
    """The gate JSON of ``--gate STEM`` (ship_gate.py --out STEM; a .md or .json suffix dropped)."""
    return Path(f"{stem.with_suffix('') if stem.suffix in ('.md', '.json') else stem}.json")


def check_results(results: Path, row: str) -> None:
    """SystemExit unless ``results`` is an experiment's results.json holding ``row``'s figures."""
    try:
        runs = json.loads(results.read_text()).get("runs", {})
    except (OSError, ValueError, AttributeError) as exc:
        raise SystemExit(f"--results {results}: cannot read it as an experiment's results.json ({exc})") from None
    entry = runs.get(row) if isinstance(runs, dict) else None
    if not isinstance(entry, dict) or not entry.get("summary"):
        raise SystemExit(f"--results {results}: no figures for row {row!r} (it has {sorted(runs) if isinstance(runs, dict) else []})")


def on_each_set(tcfg, cfg) -> bool:
    """Whether the output calibration was fitted on every training set's validation photos."""
    return tcfg.calibrate_on == "each" and len(cfg.train_sets) > 1


def make_trainer(cfg, run, settings: dict, work: Path, train, val, scales, cache: str | None):
    """A Trainer of ``run``'s model (seed 0's initial weights) with ``settings`` on the shipping photos."""
    import torch

    from contentiqa.models import create_model
    from contentiqa.training.config import TrainConfig
    from contentiqa.training.trainer import Trainer

    torch.manual_seed(0)
    model = create_model(run.model, pretrained=False, **run.model_args)
    trainer = Trainer(model, train, val, scales if len(scales) > 1 else next(iter(scales.values())),
                      TrainConfig.from_dict(settings), work, progress=True, cache_dir=cache or cfg.cache_dir or work / "cache")
    trainer.without_the_mix = f"delete {work} to train the row afresh"  # (the row holds its mix, and its card the row)
    return trainer


def fit(trainer, row: str) -> dict:
    """``trainer.fit(resume=True)``; a resume it refuses (another init_from, other settings) is one
    line naming the row, not a traceback."""
    from contentiqa.training.trainer import ResumeMismatch

    try:
        return trainer.fit(resume=True)
    except ResumeMismatch as exc:
        raise SystemExit(f"ship.py: cannot go on training {row!r}: {exc}") from None


def train_first(cfg, run, work: Path, train, val, scales, cache: str | None) -> Path:
    """Train ``run`` (a row another row starts from) on the shipping photos; its best.pt."""
    trainer = make_trainer(cfg, run, {**run.train, "seed": 0}, work, train, val, scales, cache)
    fit(trainer, run.name)
    if val is not None:
        return work / "best.pt"
    from contentiqa.models.registry import save_checkpoint

    return save_checkpoint(trainer.last_model(), work / "trained.pt")  # with ema_decay, its average


def ship_row(config: Path, row: str, tag: str, results: Path | None = None, cache: str | None = None,
             from_run: Path | None = None, weights_dir: Path = WEIGHTS, work_dir: Path | None = None,
             init_from: Path | None = None, gate: str | None = None) -> Path:
    """Train (or take ``from_run``'s best.pt) and write ``<model>_<tag>.pt`` + its card; returns the path.
    ``init_from``: the weights to start from where the row starts from another experiment's run
    (its ``init_from`` outside this config's rows): that row shipped first on the same photos.
    ``gate``: what the ship gate said of the row (and whether it was overridden), kept in the
    checkpoint and on the card."""
    from contentiqa.experiments import load_config
    from contentiqa.models.registry import model_entry, save_checkpoint
    from contentiqa.training.config import TrainConfig
    from contentiqa.utils.io import atomic_write_text, file_sha256

    cfg = load_config(config)
    run = next((r for r in cfg.runs if r.name == row), None)
    if run is None:
        raise SystemExit(f"{config}: no row {row!r}; rows: {[r.name for r in cfg.runs]}")
    if from_run is not None and init_from is not None:
        raise SystemExit("--from-run ships a run's weights as they are: --init-from is for training")
    started: dict | None = None  # the weights an external init_from named, for the card
    t0 = time.time()
    work = work_dir or ROOT / "benchmarks" / "runs" / f"ship_{run.model}_{tag}"
    if from_run is not None:
        from contentiqa.models import load_checkpoint

        best_model = load_checkpoint(run_weights(from_run))
        tcfg = TrainConfig.from_dict(json.loads((from_run / "config.json").read_text())["train_config"])
        history = [json.loads(line) for line in (from_run / "metrics.jsonl").read_text().splitlines()]
        monitor = f"val_{tcfg.monitor or 'srocc'}"  # what chose the epoch
        best = max(history, key=lambda r: r.get(monitor, float("-inf")))
        seed = from_run.name.removeprefix("seed")
        used = [f"the training parts of split seed {seed} of `{config}` (the experiment's run "
                f"{from_run.parent.name}/{from_run.name}; its test parts were held out)"]
    else:
        train, val, scales, used = shipping_data(cfg, work)
        settings = {**run.train, "seed": 0}
        if settings.get("init_from"):
            # An earlier row of the config (``runs/<row>/seed{seed}/...``): trained first on the same
            # photos, as the experiment did per split; a file otherwise.
            parts = Path(str(settings["init_from"])).parts
            first = next((r for r in cfg.runs if len(parts) > 1 and parts[0] == "runs" and r.slug == parts[1]), None)
            if first is not None:
                if init_from is not None:
                    raise SystemExit(f"row {row!r} starts from row {first.name!r} of the same config, which ships "
                                     "first on the same photos: drop --init-from")
                settings["init_from"] = str(train_first(cfg, first, work.parent / f"{work.name}_{first.slug}", train, val,
                                                        scales, cache))
                used.append(f"starting from row \"{first.name}\" trained first on the same photos")
            elif init_from is None:
                # A split's run of another experiment: never what shipping should start from.
                raise SystemExit(f"row {row!r} starts from {settings['init_from']!r}, another experiment's run: "
                                 "ship that row first and give its weights with --init-from")
            else:
                settings["init_from"] = str(init_from)
                card_file = init_from.with_suffix(".md")
                started = {"file": init_from.name, "sha256": file_sha256(init_from),
                           "card": card_file.read_text() if card_file.is_file() else None}
                used.append(f"starting from `{init_from.name}` (its row shipped first on the same photos: "
                            "its card is at the end of this one)")
        elif init_from is not None:
            raise SystemExit(f"row {row!r} has no init_from: --init-from is for rows that start from another's weights")
        trainer = make_trainer(cfg, run, settings, work, train, val, scales, cache)
        tcfg = trainer.cfg
        best = fit(trainer, row)
        best_model = trainer.load_best() if val is not None else trainer.last_model()
        try:
            finished = trainer.finish(best_model)
        except ValueError as exc:  # e.g. outputs constant on the validation photos: nothing shipped
            raise SystemExit(f"ship.py: cannot finish {row!r}: {exc} (the trained epochs are kept in {work})") from None
        if "interpolated" in finished:
            alpha = finished["interpolated"]
            used.append(f"weights mixed with those it started from: {1 - alpha:g} x start + {alpha:g} x trained "
                        "(chosen on the validation photos)")
        if "calibration" in finished:
            whose = (" and ".join(s.label for s in cfg.train_sets) + ", each set weighing the same"
                     if on_each_set(tcfg, cfg) else cfg.train_sets[0].label)
            used.append(f"output calibrated on the validation photos of {whose}: logistic {finished['calibration']}")
    weights_dir.mkdir(parents=True, exist_ok=True)
    name = f"{run.model}_{tag}.pt"
    path = weights_dir / name
    save_checkpoint(best_model, path, omit_pretrained_backbone=True, extra={
        "trained_on": "; ".join(used), "tag": tag, "train_config": tcfg.to_dict(), "best_epoch": best.get("epoch"),
        "val_srocc": best.get("val_srocc"), "provenance": provenance(), **({"ship_gate": gate} if gate else {}),
        **({"init_from": {k: v for k, v in started.items() if k != "card"}} if started else {}),
    })
    seconds = time.time() - t0
    prov = provenance()
    scale = best_model.scale
    frozen_all = tcfg.cache_stages >= best_model.feature_end > 0
    head_only = "only the head was trained, on cached pooled features"
    rest = f"the rest fine-tuned at {tcfg.backbone_lr_scale:g} x the head's learning rate"
    if started:
        backbone = (f"the weights of `{started['file']}` (it started from them: the end of this card says how they were "
                    "trained), " + (f"frozen; {head_only}" if frozen_all else
                                    f"first {tcfg.cache_stages} stages frozen (cached), {rest}")
                    + "; the tensors still equal to the pip package's ImageNet weights are not stored here (rebuilt at "
                    "load time)")
    else:
        backbone = (f"frozen, with ImageNet weights from the pip package (not stored here: rebuilt at load time); {head_only}"
                    if frozen_all else
                    f"ImageNet weights from the pip package, first {tcfg.cache_stages} stages frozen (cached, not stored "
                    f"here), {rest}")
    several = len(cfg.train_sets) > 1
    scale_text = ("where the training sets' raters, each on their own scale mapped onto the first's range, would "
                  "place the photo (the calibration weighs every set the same)"
                  if tcfg.calibrate and on_each_set(tcfg, cfg) else
                  f"on {'the first dataset' + chr(39) + 's' if several else 'its'} MOS scale")
    card = f"""# Model card: `{run.model}.{tag}` ({name})

- **What**: {model_entry(run.model).description}
  Row "{run.name}" of `{config}`.
  Recipe sha256 `{run.recipe_sha256}`, data sha256 `{cfg.data_sha256}` (what a ship gate's baseline is held to).
- **Backbone**: {backbone}.
- **Trained on**: {'; '.join(used)}.{' Several datasets at once: each dataset' + "'" + 's MOS mapped linearly onto [0, 1] by its own range' + (', plus a fidelity ranking loss on pairs within one dataset' if tcfg.rank_weight else '') + '.' if several else ''}
- **Scores**: {scale_text}, {scale.low:g}-{scale.high:g}, higher is better.
{f"- **Content categories**: {', '.join(best_model.categories)}." + chr(10) if best_model.categories else ''}- **Measured** (held-out test parts of the experiment's splits, same recipe, not this run): {figures_from(results, run.name)}.
{CARD_CAVEAT}- **Training configuration**: `{json.dumps(tcfg.to_dict())}`; model arguments `{json.dumps(run.model_args)}`.
- **Reproduce**: `{command_line()}` ({seconds / 60:.1f} min on {prov['machine']}{', ' + prov['gpu'] if prov.get('gpu') else ''}).
- **Size**: {path.stat().st_size / 1e6:.1f} MB.
{f"- **Ship gate**: {gate}." + chr(10) if gate else ""}"""
    if started:
        # The start's own card, headings one level down: how the weights this one froze were made.
        earlier = "\n".join(("###" + line[1:]) if line.startswith("# ") else line
                             for line in (started["card"] or "(no card beside it)").splitlines())
        card += f"\n## Started from `{started['file']}` (sha256 {started['sha256'][:16]}…)\n\n{earlier}\n"
    atomic_write_text(weights_dir / f"{run.model}_{tag}.md", card)
    print(card)
    return path


CARD_CAVEAT = (
    "- **Read with**: recipes were compared on these test parts before shipping (the ship gate reads them, and "
    "choices made on validation parts pooled seeds whose training photos hold other seeds' test photos), so "
    "the figures are slightly optimistic; docs/results.md says where.\n")
"""The Measured line's caveat on every card a gated recipe's weights get."""


def card_row(card: Path) -> str | None:
    """The experiment row a shipped tag's card says trained it: ship.py's 'Row "..." of' line, or
    the ``--row`` of the command on its Reproduce line (ensemble.py, content_head.py). None: unsaid."""
    text = card.read_text(encoding="utf-8") if card.is_file() else ""
    said = re.search(r'^  Row "(.+)" of `', text, re.M)
    if said:
        return said.group(1)
    command = re.search(r"^- \*\*Reproduce\*\*: `(.+?)` \(", text, re.M)
    try:
        words = shlex.split(command.group(1)) if command else []
    except ValueError:
        return None
    return words[words.index("--row") + 1] if "--row" in words[:-1] else None


def card_recipe(card: Path) -> dict[str, str] | None:
    """What the row that trained a shipped tag hashes to (``recipe_sha256``, ``data_sha256``): as
    its card recorded them when it shipped; for a card from before they were recorded, as the
    config it names reads now (an edit since may train otherwise: the best there is). None:
    neither is known."""
    text = card.read_text(encoding="utf-8") if card.is_file() else ""
    own = text.split("\n## Started from ", 1)[0]  # not the card of the weights it started from
    said = re.search(r"^  Recipe sha256 `([0-9a-f]+)`, data sha256 `([0-9a-f]+)`", own, re.M)
    if said:
        return {"recipe_sha256": said.group(1), "data_sha256": said.group(2)}
    row = re.search(r'^  Row "(.+)" of `(.+)`\.$', own, re.M)
    if row and (ROOT / row.group(2)).is_file():
        from contentiqa.experiments import load_config
        from contentiqa.experiments.config import ConfigError

        try:
            cfg = load_config(ROOT / row.group(2))
        except ConfigError:
            return None
        run = next((r for r in cfg.runs if r.name == row.group(1)), None)
        if run is not None:
            return {"recipe_sha256": run.recipe_sha256, "data_sha256": cfg.data_sha256}
    return None


def replaced_default(model: str, weights_dir: Path) -> tuple[str, str | None] | None:
    """(``name.tag``, its recipe row or None) of the default a new default of ``model`` replaces:
    ``model``'s own where it has one (``weights_dir``'s defaults.json, else the registry's first
    tag, as `contentiqa score -m MODEL` reads it), else contentiqa's default model's (a new model
    made the default replaces what `contentiqa score` ran). None: no default to name."""
    from contentiqa import DEFAULT_MODEL
    from contentiqa.models.registry import DEFAULT_TAGS_FILE, model_entry

    path = weights_dir / DEFAULT_TAGS_FILE
    defaults = json.loads(path.read_text()) if path.is_file() else {}

    def default_of(name: str) -> str | None:
        if name in defaults:
            return defaults[name]
        try:
            entry = model_entry(name)
        except ValueError:  # a model not registered (yet)
            return None
        # a tag whose weights are not shipped yet (a new ensemble is registered with the tag it is
        # about to ship) is no default to replace: contentiqa's default model is
        tag = entry.default_tag
        return tag if tag and (weights_dir / entry.tags[tag]).is_file() else None

    name = model if default_of(model) else DEFAULT_MODEL
    tag = default_of(name)
    if tag is None:
        return None
    return f"{name}.{tag}", card_row(weights_dir / f"{name}_{tag}.md")


def gate_verdict(model: str, row: str, path: Path | None = None, recipe: str | None = None,
                 tested: tuple[int, str] | None = None, data: str | None = None,
                 weights_dir: Path | None = None) -> tuple[bool, str]:
    """Whether benchmarks/ship_gate.py passed ``row`` as ``model``'s new default, and why not.
    ``path``: the gate's JSON when it was written elsewhere (ship_gate.py --out). ``recipe``: the
    row's ``recipe_sha256`` as it is to be shipped; ``data``: its experiment's ``data_sha256``
    (what it trains on); ``tested``: (seed, sha256) of a run's weights shipped as they are;
    ``weights_dir``: where the weights go, whose default (the package's) the gate's baseline must
    be the recipe of. Each must be what the gate judged, where the gate recorded it; what it did
    not record is said."""
    from common import RESULTS

    path = path if path is not None else RESULTS / f"ship_gate_{model}.json"
    if not path.is_file():
        return False, f"no ship gate has been run for {model} ({path} is missing): run benchmarks/ship_gate.py"
    from ship_gate import SEEDS

    try:
        gate = json.loads(path.read_text())
        if not isinstance(gate, dict) or not isinstance(gate.get("candidate"), dict):
            raise ValueError("not a gate record (no candidate)")
    except (OSError, ValueError) as exc:  # a hand edit, a merge conflict: refused, naming the file
        return False, f"{path}: not a readable ship gate record ({exc})"
    if gate.get("candidate", {}).get("row") != row:
        return False, f"{path.name} judged row {gate.get('candidate', {}).get('row')!r}, not {row!r}"
    worse = [r["measure"] for r in gate.get("rows", []) if r.get("verdict") == "WORSE"]
    better = [r["measure"] for r in gate.get("rows", []) if r.get("verdict") == "better"]
    if gate.get("verdict") != "PASS" or worse or not better:  # the rows decide, not the verdict string alone
        return False, (f"{path.name}: the gate FAILED" + (f" (worse on: {', '.join(worse)})" if worse
                                                           else " (better on nothing)"))
    # Only a gate on the test parts of the published seeds decides a default: a validation-part
    # selection (ship_gate.py --part val) is no verdict on it.
    if gate.get("part", "test") != "test":
        return False, f"{path.name} judged the {gate.get('part')} parts: choosing a recipe, not gating it"
    if sorted(gate.get("seeds", [])) != sorted(SEEDS):
        return False, f"{path.name} judged seeds {gate.get('seeds')}, not the published {list(SEEDS)}"
    judged = gate["candidate"].get("recipe_sha256")
    if recipe is not None and judged is not None and judged != recipe:
        return False, (f"{path.name} judged other settings for row {row!r} (recipe {judged[:12]}, "
                       f"now {recipe[:12]}): the row changed since; run the gate again")
    judged_data = gate["candidate"].get("data_sha256")
    if data is not None and judged_data is not None and judged_data != data:
        return False, (f"{path.name} judged row {row!r} trained on other data (training sets, protocol, validation "
                       "share or splits differ): run the gate on this experiment")
    hashes = gate["candidate"].get("tested_sha256")
    if tested is not None and hashes is not None:
        seed, sha = tested
        scored = hashes.get(str(seed))
        if scored is None:
            return False, f"{path.name} scored no weights of seed {seed} (it scored seeds {sorted(hashes)})"
        if scored != sha:
            return False, (f"{path.name} scored other weights for seed {seed} of row {row!r} (sha256 "
                           f"{scored[:12]}, these are {sha[:12]}): retrained since; run the gate again")
    unchecked = [what for what, given, recorded in (("the row's settings", recipe, judged),
                                                    ("its training data", data, judged_data),
                                                    ("the weights", tested, hashes))
                 if given is not None and recorded is None]
    against = gate.get("baseline", {}).get("row")
    # A gate won against an older recipe says nothing of the default shipped since (shipping the
    # default's own recipe again, its gate was the one against the recipe before it).
    current = (replaced_default(model, weights_dir) if weights_dir is not None and weights_dir.resolve() == WEIGHTS.resolve()
               else None)
    if current is not None and current[1] not in (None, row, against):
        return False, (f"{path.name} judged row {row!r} against {against!r}, but the default it would replace, "
                       f"{current[0]}, was trained by row {current[1]!r}: run the gate against that row")
    if current is not None and current[1] is None:
        unchecked.append(f"the baseline with the current default's recipe ({current[0]}'s card names no row)")
    elif current is not None and current[1] == against and against != row:
        # the same row name in another config (or the config since) may be another recipe: a gate
        # won against that stand-in says nothing of the default
        card = weights_dir / f"{current[0].replace('.', '_', 1)}.md"
        shipped, judged_base = card_recipe(card), gate.get("baseline", {})
        for key, what in (("recipe_sha256", "settings"), ("data_sha256", "training data")):
            recorded = judged_base.get(key)
            if shipped is None or recorded is None:
                unchecked.append(f"the baseline's {what} with those of the current default {current[0]}")
            elif recorded != shipped[key]:
                return False, (f"{path.name} judged row {row!r} against a row {against!r} with other {what} than "
                               f"the current default {current[0]} was trained with ({key} {recorded[:12]}; its card "
                               f"says {shipped[key][:12]}): run the gate against the default's own recipe")
    caveat = f" (the record does not say, so these were not compared: {', '.join(unchecked)})" if unchecked else ""
    return True, (f"{path.name}: PASS" + (f" against {against!r}" if against else "")
                  + f" (better on: {', '.join(better)}){caveat}")


def gate_for(model: str, row: str, tag: str, weights_dir: Path, *, default: bool, override: bool,
             path: Path | None = None, recipe: str | None = None, tested: tuple[int, str] | None = None,
             data: str | None = None) -> str | None:
    """What the ship gate says of shipping ``row`` as ``model.tag`` into ``weights_dir`` (for the
    card), when that replaces ``model``'s default in the package: ``default`` asked for, or the tag
    the default already is. SystemExit when the gate did not pass it, unless ``override``. None: no
    default is replaced (a tag beside it, or another folder), so no gate is needed. Every script
    that ships weights asks here: a second way to a default would be a way around the gate."""
    from contentiqa.models.registry import model_entry

    replaces = default or model_entry(model).default_tag == tag
    # however the package folder is spelt (relative, through '..' or a link): the gate decides
    if not replaces or weights_dir.resolve() != WEIGHTS.resolve():
        return None
    ok, why = gate_verdict(model, row, path, recipe=recipe, tested=tested, data=data, weights_dir=weights_dir)
    if not ok and not override:
        raise SystemExit(f"refusing to replace the default of {model}: {why} (--override-gate to ship anyway)")
    verdict = f"{why}{' (OVERRIDDEN with --override-gate)' if not ok else ''}"
    print(f"ship gate: {verdict}")
    return verdict


def run_weights(run_dir: Path) -> Path:
    """What ``--from-run`` ships of a run: ``tested.pt`` (the weights the experiment tested and the
    ship gate judged: mixed with the starting weights and calibrated, where the row does either),
    else ``best.pt``."""
    return run_dir / ("tested.pt" if (run_dir / "tested.pt").is_file() else "best.pt")


def shipped_weights(run_dir: Path | None) -> tuple[int, str] | None:
    """(seed, sha256) of the weights ``--from-run`` ships, for the gate to compare; None when training."""
    if run_dir is None:
        return None
    from contentiqa.utils.io import file_sha256

    seed = run_dir.name.removeprefix("seed")
    if not seed.isdigit() or not run_weights(run_dir).is_file():
        raise SystemExit(f"--from-run {run_dir}: not an experiment's run folder (runs/<row>/seed<S> with tested.pt or best.pt)")
    # the card and checkpoint are written from the run's settings and epochs: read them before any work
    for needed in ("config.json", "metrics.jsonl"):
        if not (run_dir / needed).is_file():
            raise SystemExit(f"--from-run {run_dir}: {needed} is missing (the run's settings and epochs, for the card)")
    return int(seed), file_sha256(run_weights(run_dir))


def set_default_tag(model: str, tag: str, weights_dir: Path) -> None:
    from contentiqa.models.registry import DEFAULT_TAGS_FILE
    from contentiqa.utils.io import atomic_write_text

    path = weights_dir / DEFAULT_TAGS_FILE
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[model] = tag
    atomic_write_text(path, json.dumps(dict(sorted(data.items())), indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", type=Path)
    ap.add_argument("--row", required=True, help="the config's row to train")
    ap.add_argument("--tag", required=True, help="weights tag, e.g. clive-biq2021 -> <model>_clive-biq2021.pt")
    ap.add_argument("--results", type=Path, default=None, help="the experiment's results.json (figures for the card)")
    ap.add_argument("--cache", default=None, help="frozen-encoding cache (default: the config's cache_dir)")
    ap.add_argument("--from-run", type=Path, default=None, metavar="RUN_DIR",
                    help="ship the model this experiment split tested (runs/<row>/seed<S>) instead of training on all "
                         "the data (when the full run would take too long: the card then says which images it saw)")
    ap.add_argument("--weights-dir", type=Path, default=WEIGHTS, help="where the .pt and card go (default: the package)")
    ap.add_argument("--init-from", type=Path, default=None, metavar="WEIGHTS.pt",
                    help="where the row starts from another experiment's run: the weights that row shipped as "
                         "(trained by this script on the same photos)")
    ap.add_argument("--default", action="store_true",
                    help="make the tag its model's default (weights/defaults.json): only when benchmarks/ship_gate.py "
                         "passed this row")
    ap.add_argument("--gate", type=Path, default=None, metavar="STEM",
                    help="the gate's results when ship_gate.py wrote them elsewhere (its --out STEM; default: "
                         "benchmarks/results/ship_gate_<model>)")
    ap.add_argument("--override-gate", action="store_true",
                    help="replace a default although the ship gate did not pass this row (say why in the commit)")
    args = ap.parse_args(argv)
    if args.from_run is not None:  # its folder names (row, seed) are read: `--from-run .` has none
        args.from_run = args.from_run.resolve()
    from contentiqa.experiments import load_config

    cfg = load_config(args.config)
    run = next((r for r in cfg.runs if r.name == args.row), None)
    if run is None:
        raise SystemExit(f"{args.config}: no row {args.row!r}; rows: {[r.name for r in cfg.runs]}")
    if args.results is not None:  # the card's figures: a misspelt file or row would ship a card without them
        check_results(args.results, args.row)
    gate = gate_for(run.model, args.row, args.tag, args.weights_dir, default=args.default, override=args.override_gate,
                    path=None if args.gate is None else gate_file(args.gate), recipe=run.recipe_sha256, tested=shipped_weights(args.from_run), data=cfg.data_sha256)
    ship_row(args.config, args.row, args.tag, args.results, args.cache, args.from_run, args.weights_dir,
             init_from=args.init_from, gate=gate)
    if args.default:
        set_default_tag(run.model, args.tag, args.weights_dir)
        print(f"{run.model}: default tag is now {args.tag} ({args.weights_dir / 'defaults.json'})")


if __name__ == "__main__":
    main()
