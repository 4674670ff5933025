"""Experiment configs: schema and paths, a tiny end-to-end experiment (repeatable, resumable,
cross-dataset), skipping what is missing, the CLI and the shipped configs."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO_ROOT, write_image
from contentiqa.experiments import ConfigError, ExperimentSkipped, load_config, run_experiment
from contentiqa.models import IQA_CR_CATEGORIES, load_checkpoint

CONFIGS = REPO_ROOT / "configs"
TINY_ARGS = {"backbone_pretrained": False, "dim": 16, "heads": 2, "mlp_dim": 32, "grid": [2, 2], "depth": 1}


def write_csv(folder: Path, n: int, mos_range: tuple[float, float], seed: int, categories: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        h, w = (56, 56) if i % 3 else (56, 72)  # two shapes
        write_image(folder / "img" / f"{i}.png", h, w, seed=seed * 100 + i)
        row = {"image": f"img/{i}.png", "mos": round(float(rng.uniform(*mos_range)), 3)}
        if categories:
            row["category"] = IQA_CR_CATEGORIES[i % 3]
        rows.append(row)
    csv = folder / "scores.csv"
    lo, hi = mos_range
    csv.write_text(f"# mos_range: {lo} {hi}\n" + pd.DataFrame(rows).to_csv(index=False))
    return csv


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny experiment: 12 training images, a 6-image cross-dataset set on another MOS scale."""
    root = tmp_path_factory.mktemp("exp")
    write_csv(root / "train", 12, (0, 100), seed=1)
    write_csv(root / "other", 6, (1, 5), seed=2)
    cfg = {
        "name": "tiny",
        "description": "tests",
        "data": {"name": "csv", "root": "train/scores.csv", "label": "TINY"},
        "protocol": "ie-iqa",
        "seeds": 2,
        "test": ["split", {"name": "csv", "root": "${TINY_OTHER_ROOT:-other}/scores.csv", "label": "OTHER"}],
        "model_args": TINY_ARGS,
        "train": {"epochs": 1, "batch_size": 4, "crop": 48, "cache_stages": 3, "lr": 1e-3, "warmup_epochs": 0.5},
        "runs": [
            {"name": "IQA-CR-Q", "model": "iqa-cr-q"},
            {"name": "IQA-CR", "model": "iqa-cr", "seeds": [1]},
            {"name": "needs weights", "model": "iqa-cr-q", "model_args": {"backbone_checkpoint": "weights/nope.pt"}},
        ],
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return root, path, cfg


@pytest.fixture(scope="module")
def first_run(tiny):
    root, path, _ = tiny
    lines = []
    res = run_experiment(path, root / "out1", progress=False, log=lambda *a: lines.append(" ".join(map(str, a))))
    return res, lines


def metrics_files(out: Path) -> dict[str, dict]:
    return {str(p.relative_to(out)): json.loads(p.read_text()) for p in sorted((out / "metrics").rglob("*.json"))}


def test_experiment_writes_the_results_folder(tiny, first_run):
    root, path, cfg = tiny
    res, lines = first_run
    out = root / "out1"
    assert res.ran and set(res.skipped_runs) == {"needs weights"}
    assert "nope.pt" in res.skipped_runs["needs weights"][0]
    files = metrics_files(out)
    assert set(files) == {"metrics/IQA-CR-Q/seed0.json", "metrics/IQA-CR-Q/seed1.json", "metrics/IQA-CR/seed1.json"}
    m = files["metrics/IQA-CR/seed1.json"]
    assert m["seed"] == 1 and m["train_config"]["seed"] == 1 and m["checkpoint"] == "last"  # ie-iqa: no val part
    assert set(m["test"]) == {"TINY", "OTHER"}
    assert m["test"]["TINY"]["n"] == 2 and m["test"]["OTHER"]["n"] == 6  # 20 % test part; all of the cross set
    assert {"plcc", "srocc", "rmse", "accuracy"} <= set(m["test"]["TINY"])
    # cross-dataset metrics are those of scoring the files, RMSE in the other set's 1-5 units
    from contentiqa.data import load_dataset
    from contentiqa.models import load_checkpoint
    from contentiqa.training.evaluate import evaluate_model

    other = load_dataset("csv", root / "other" / "scores.csv")
    assert other.scale.high == 5
    direct, _ = evaluate_model(load_checkpoint(out / "runs" / "IQA-CR" / "seed1" / "best.pt"), other.table, other.scale, workers=0)
    for k in ("plcc", "srocc", "rmse"):
        assert m["test"]["OTHER"][k] == pytest.approx(direct[k], abs=2e-3), k
    assert m["provenance"]["contentiqa"] and m["provenance"]["torch"]
    for f in ("config.yaml", "provenance.json", "splits.json", "results.json", "results.md"):
        assert (out / f).is_file(), f
    assert (out / "config.yaml").read_text() == path.read_text()
    prov = json.loads((out / "provenance.json").read_text())
    assert {"contentiqa", "git_commit", "torch", "date", "config"} <= set(prov)
    assert prov["config"]["data"]["root"] == str(root / "train" / "scores.csv")
    assert prov["config"]["tests"][1]["root"] == str(root / "other" / "scores.csv")
    results = json.loads((out / "results.json").read_text())
    s = results["runs"]["IQA-CR-Q"]["summary"]
    assert s["TINY"]["srocc"]["n"] == 2 and s["OTHER"]["plcc"]["n"] == 2
    md = (out / "results.md").read_text()
    assert "| model | splits | min/epoch | TINY PLCC | TINY SROCC | TINY RMSE | TINY acc. | OTHER PLCC | OTHER SROCC | OTHER RMSE | OTHER acc. |" in md
    row = next(line for line in md.splitlines() if line.startswith("| IQA-CR-Q |"))
    assert row.count("±") == 6 and "| 2 |" in row  # no accuracy for the quality-only model
    assert float(row.split("|")[3]) > 0  # minutes per epoch: seconds-long epochs do not round to 0
    assert next(line for line in md.splitlines() if line.startswith("| needs weights |")).count("skipped") == 1
    assert "Skipped needs weights: backbone_checkpoint" in md and "protocol IE-IQA" in md
    assert f"Command: `contentiqa experiment {path} --out {out}`" in md  # the table names what makes it
    assert any("IQA-CR seed 1" in line for line in lines)


def test_seed_option_trains_only_those_splits(tiny):
    from contentiqa.experiments import ConfigError

    root, path, _ = tiny
    out = root / "out_seed"
    res = run_experiment(path, out, progress=False, log=None, only=["IQA-CR-Q"], seeds=[0])
    assert set(metrics_files(out)) == {"metrics/IQA-CR-Q/seed0.json"}
    assert res.results["IQA-CR-Q"]["seeds"] == [0]
    with pytest.raises(ConfigError, match=r"no split seed \[7\]"):
        run_experiment(path, out, progress=False, log=None, seeds=[7])


def test_cache_limit_evicts_old_entries_after_each_split_and_keeps_the_splits_own(tiny, tmp_path):
    """A series of rows whose frozen networks differ fills a disk unless old cache entries go:
    with cache_limit, the least recently used leave after each split; the split's own stay."""
    import torch

    from contentiqa.models import create_model

    root, path, cfg = tiny
    # Frozen weights from a file, the same for every seed: the shared cache is used.
    torch.save(create_model("iqa-cr-q", pretrained=False, **TINY_ARGS).backbone.state_dict(), tmp_path / "b.pt")
    cache = tmp_path / "cache"
    stale = cache / "backbone_0123456789ab"
    stale.mkdir(parents=True)
    (stale / ("0" * 24 + ".pt")).write_bytes(b"\0" * 100_000)
    os.utime(stale, (1_000_000_000, 1_000_000_000))
    limited = {**cfg, "cache_dir": str(cache), "cache_limit": "1K",
               "runs": [{**cfg["runs"][0], "model_args": {"backbone_checkpoint": str(tmp_path / "b.pt")}}]}
    lines = []
    run_experiment(limited, tmp_path / "out", progress=False, log=lambda *a: lines.append(" ".join(map(str, a))),
                   base_dir=root, seeds=[0])
    assert not stale.exists()
    assert any("cache_limit 1.0 K: removed the 1 entry least recently used" in line for line in lines)
    kept = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert kept and all((p / "about.json").is_file() for p in kept)  # this split's encodings, over the limit or not
    with pytest.raises(ConfigError, match="cache_limit: not a size"):
        load_config({**limited, "cache_limit": "plenty"}, base_dir=root)


def test_table_merges_another_sessions_results_without_training(tiny, first_run):
    root, path, cfg = tiny
    res, _ = first_run
    out = root / "out_merged"
    nothing = run_experiment(path, out, progress=False, log=None, train=False)
    assert nothing.results["IQA-CR-Q"]["seeds"] == [] and not (out / "runs").exists()
    lines: list[str] = []
    merged = run_experiment(path, out, progress=False, log=lambda *a: lines.append(" ".join(map(str, a))),
                            imports=[root / "out1" / "results.json"], train=False)
    assert not (out / "runs").exists()  # nothing trained: the figures are the other session's
    for row in ("IQA-CR-Q", "IQA-CR"):
        assert merged.results[row]["summary"] == res.results[row]["summary"]
    taken = metrics_files(out)
    assert {k: {f: v for f, v in m.items() if f != "imported_from"} for k, m in taken.items()} == metrics_files(root / "out1")
    assert {m["imported_from"] for m in taken.values()} == {str(root / "out1" / "results.json")}
    assert any("IQA-CR-Q: seeds [0, 1]" in line for line in lines)
    assert "results.json` (`contentiqa experiment CONFIG --import" in merged.markdown
    assert json.loads((out / "results.json").read_text())["imported"] == [str(root / "out1" / "results.json")]
    # the table rebuilt later (no --import then) still says where those splits came from
    rebuilt = run_experiment(path, out, progress=False, log=None, train=False)
    assert "results.json` (`contentiqa experiment CONFIG --import" in rebuilt.markdown
    assert json.loads((out / "results.json").read_text())["imported"] == [str(root / "out1" / "results.json")]
    # a row whose settings changed since keeps none of the old figures
    changed = {**cfg, "runs": [{**r, "train": {"epochs": 2}} if r["name"] == "IQA-CR" else r for r in cfg["runs"]]}
    lines.clear()
    again = run_experiment(changed, root / "out_changed", progress=False, base_dir=root,
                           log=lambda *a: lines.append(" ".join(map(str, a))),
                           imports=[root / "out1" / "results.json"], train=False)
    assert again.results["IQA-CR"]["seeds"] == [] and again.results["IQA-CR-Q"]["seeds"] == [0, 1]
    assert any("'IQA-CR' not taken: its train changed since" in line for line in lines)
    # where it trains is not what it learns (results from a GPU machine, imported into a CPU config)
    elsewhere = {**cfg, "train": {**cfg["train"], "num_workers": 1, "cache_runtime": "onnx"}}
    lines.clear()
    moved = run_experiment(elsewhere, root / "out_moved", progress=False, base_dir=root,
                           log=lambda *a: lines.append(" ".join(map(str, a))),
                           imports=[root / "out1" / "results.json"], train=False)
    assert moved.results["IQA-CR"]["seeds"] == [1] and moved.results["IQA-CR-Q"]["seeds"] == [0, 1], lines


def test_same_config_twice_gives_the_same_metrics(tiny, first_run):
    root, path, _ = tiny
    run_experiment(path, root / "out2", progress=False, log=None)
    a, b = metrics_files(root / "out1"), metrics_files(root / "out2")
    assert a.keys() == b.keys()
    for k in a:
        assert a[k]["test"] == b[k]["test"], k
        assert a[k]["val"] == b[k]["val"]


def test_finished_splits_are_skipped_and_interrupted_ones_resume(tiny, first_run):
    root, path, cfg = tiny
    out = root / "out1"
    before = metrics_files(out)
    stamp = (out / "runs" / "IQA-CR-Q" / "seed0" / "last.pt").stat().st_mtime_ns
    # one split "interrupted" after its training: its metrics are gone, its trainer folder kept
    (out / "metrics" / "IQA-CR-Q" / "seed1.json").unlink()
    lines = []
    res = run_experiment(cfg, out, progress=False, log=lambda *a: lines.append(" ".join(map(str, a))), base_dir=root)
    assert (out / "runs" / "IQA-CR-Q" / "seed0" / "last.pt").stat().st_mtime_ns == stamp  # not retrained
    assert any("resumed from" in line and "after epoch 1" in line for line in lines)
    after = metrics_files(out)
    assert after["metrics/IQA-CR-Q/seed0.json"] == before["metrics/IQA-CR-Q/seed0.json"]
    assert after["metrics/IQA-CR-Q/seed1.json"]["test"] == before["metrics/IQA-CR-Q/seed1.json"]["test"]
    assert res.results["IQA-CR-Q"]["seeds"] == [0, 1]
    assert (out / "config.json").is_file()  # a mapping config is recorded as JSON


def test_a_row_edited_after_some_seeds_finished_is_never_averaged_with_them(tiny, first_run):
    """Finished splits are found by row and seed: one trained with other settings, data or
    protocol, or for another row whose name gives the same folder, must not join this row's
    mean ± std (the table would average two experiments); nor may a split interrupted before an
    edit resume under the new settings."""
    root, path, cfg = tiny
    out = root / "out1"
    before = metrics_files(out)
    longer = {**cfg, "train": {**cfg["train"], "epochs": 2}}
    with pytest.raises(ConfigError, match=r"seed0.json: split seed 0 of row 'IQA-CR-Q' was trained with another recipe"):
        run_experiment(longer, out, progress=False, base_dir=root)
    with pytest.raises(ConfigError, match="trained with another recipe"):
        run_experiment(longer, out, progress=False, base_dir=root, train=False)  # the table alone too
    renamed = {**cfg, "runs": [{**r, "name": r["name"] + "!"} if r["name"] == "IQA-CR-Q" else r for r in cfg["runs"]]}
    with pytest.raises(ConfigError, match=r"for row 'IQA-CR-Q' \(the same folder name\)"):
        run_experiment(renamed, out, progress=False, base_dir=root)
    (out / "metrics" / "IQA-CR-Q" / "seed1.json").unlink()  # interrupted before its end, then the row edited
    (out / "metrics" / "IQA-CR-Q" / "seed0.json").unlink()
    with pytest.raises(ConfigError, match=r"recipe.json: split seed 0 of row 'IQA-CR-Q' was trained with another"):
        run_experiment(longer, out, progress=False, base_dir=root)
    assert metrics_files(out) == {k: v for k, v in before.items() if "IQA-CR-Q" not in k}  # nothing was mixed in
    run_experiment(cfg, out, progress=False, base_dir=root)  # the row as it was: its splits finish as before
    assert {k: v["test"] for k, v in metrics_files(out).items()} == {k: v["test"] for k, v in before.items()}
    # where a split runs is no part of what it learns: finishing on another machine is allowed
    elsewhere = {**cfg, "train": {**cfg["train"], "device": "cpu:0", "num_workers": 0}}
    assert run_experiment(elsewhere, out, progress=False, base_dir=root, train=False).results["IQA-CR-Q"]["seeds"] == [0, 1]


@pytest.mark.parametrize("edit,said", [("tested checkpoint", "with another recipe or data"),
                                       ("test set", None),
                                       ("test set's loader arguments", None),
                                       ("rating scale", "with another recipe or data")])
def test_a_split_tested_or_rated_otherwise_is_never_averaged_with_them(tiny, first_run, edit, said, tmp_path):
    """The fingerprint left out the tested checkpoint, the test sets' rows and the training sets'
    rating scale (and labels, loader arguments, split parts): splits of two experiments were
    averaged into one mean ± std without a word. A test set changed since is no other training:
    the old set's figures are left out (tested again by a run that may train)."""
    import shutil

    root, path, cfg = tiny
    data = root / "train" / "scores.csv"
    edited = {"tested checkpoint": {**cfg, "checkpoint": "last"},
              "test set": {**cfg, "test": ["split", {"name": "csv", "root": str(data), "label": "OTHER"}]},
              # the same rows and scale read through other loader arguments (KonIQ's resolution: other pixels)
              "test set's loader arguments": {**cfg, "test": ["split", {**cfg["test"][1], "args": {"mos_range": [1, 5]}}]},
              "rating scale": {**cfg, "data": {**cfg["data"], "args": {"mos_range": [0, 200]}}}}[edit]
    if said is None:
        shutil.copytree(root / "out1", tmp_path / "out")
        res = run_experiment(edited, tmp_path / "out", progress=False, base_dir=root, train=False)
        assert [r["seeds"] for r in res.results.values()] == [[0, 1], [1], []]
        assert all("OTHER" not in r["summary"] and "TINY" in r["summary"] for r in res.results.values() if r["seeds"])
        return
    recorded = {f: (root / "out1" / f).read_bytes() for f in ("provenance.json", "config.yaml")}
    with pytest.raises(ConfigError, match=said):
        run_experiment(edited, root / "out1", progress=False, base_dir=root, train=False)
    # a refused run leaves the folder's config and provenance describing its results (it rewrote them)
    assert {f: (root / "out1" / f).read_bytes() for f in recorded} == recorded


def test_a_results_table_keeps_its_columns_and_its_command_pastes(tiny, first_run, tmp_path):
    """A '|' in a row name shifted every later cell under another header; a path with a space made
    the Command line two arguments; a run of seconds read "0.0 min"."""
    import shutil

    from contentiqa.experiments.runner import _train_time, md_table

    assert md_table(["model", "x"], [["A | lr 1e-3", 1]]).splitlines()[-1] == "| A \\| lr 1e-3 | 1 |"
    assert _train_time({"r": {"splits": [{"train_seconds": 2.5}]}}) == "2 s"
    assert _train_time({"r": {"splits": [{"train_seconds": 90}]}}) == "1.5 min"
    root, path, cfg = tiny
    spaced = tmp_path / "my tiny.yaml"
    shutil.copy(path, spaced)
    out = tmp_path / "out 5"
    res = run_experiment(spaced, out, progress=False, log=None, base_dir=root, imports=[root / "out1" / "results.json"],
                         train=False)
    assert f"Command: `contentiqa experiment '{spaced}' --out '{out}'`" in res.markdown


def test_a_full_disk_while_testing_a_split_is_one_line_and_the_split_resumes(tiny, tmp_path, capsys, monkeypatch):
    """The test parts are encoded through the cache after training: a full disk there was a traceback."""
    import errno

    import contentiqa.utils.io as uio
    from contentiqa.cli.main import main
    from contentiqa.training.trainer import Trainer

    root, path, cfg = tiny
    real_fit, real_save = Trainer.fit, uio.atomic_torch_save

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    def fit_then_fill(self, *a, **k):
        best = real_fit(self, *a, **k)
        monkeypatch.setattr(uio, "atomic_torch_save", full)  # the disk fills once training is done
        return best

    monkeypatch.setattr(Trainer, "fit", fit_then_fill)
    out = tmp_path / "o"
    assert main(["experiment", str(path), "--out", str(out), "--only", "IQA-CR-Q", "--seed", "0", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err and "rerun" in err
    monkeypatch.setattr(uio, "atomic_torch_save", real_save)
    monkeypatch.setattr(Trainer, "fit", real_fit)
    assert main(["experiment", str(path), "--out", str(out), "--only", "IQA-CR-Q", "--seed", "0", "--quiet"]) == 0


def test_weights_a_model_argument_names_are_fingerprinted_by_content_not_path(tmp_path):
    """Weights retrained in place at the same path joined the splits made with the old ones in one
    mean ± std; the same weights in a project moved elsewhere (or a GPU run's results imported) were
    refused as another recipe."""
    from contentiqa.experiments.runner import split_fingerprints

    def fingerprint(project: Path, version: int = 3) -> str:
        cfg = load_config({"name": "w", "data": {"name": "csv", "root": "d.csv"}, "protocol": "ie-iqa",
                           "runs": [{"name": "A", "model": "iqa-cr-q", "model_args": {"backbone_checkpoint": "w/b.pt"}}]},
                          base_dir=project)
        return split_fingerprints(cfg, [], version)["A"]

    weights = tmp_path / "one" / "w" / "b.pt"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"first weights")
    first = fingerprint(tmp_path / "one")
    weights.write_bytes(b"retrained weights")
    assert fingerprint(tmp_path / "one") != first
    weights.write_bytes(b"first weights")
    moved = tmp_path / "two" / "w" / "b.pt"
    moved.parent.mkdir(parents=True)
    moved.write_bytes(b"first weights")
    assert fingerprint(tmp_path / "two") == first
    assert fingerprint(tmp_path / "two", 2) != fingerprint(tmp_path / "one", 2)  # version 2 records: by path, as made


def test_config_mistakes_name_what_they_mean(tiny, tmp_path, monkeypatch):
    """``test: []`` scored the test parts (read as the default); an unset variable in ``checkpoint``
    named neither file nor key; ``init_from: ~/...`` was read under the results folder."""
    root, path, cfg = tiny
    with pytest.raises(ConfigError, match=r"test is an empty list: write 'none'"):
        load_config({**cfg, "test": []}, base_dir=root)
    monkeypatch.delenv("NOPE_VAR", raising=False)
    with pytest.raises(ConfigError, match=r": checkpoint: environment variable NOPE_VAR is not set"):
        load_config({**cfg, "checkpoint": "${NOPE_VAR}"}, base_dir=root)
    with pytest.raises(ConfigError, match=r"^[^:].*cache_limit: environment variable NOPE_VAR is not set"):
        load_config({**cfg, "cache_limit": "${NOPE_VAR}"}, base_dir=root)
    monkeypatch.setenv("HOME", str(tmp_path))
    row = {**cfg["runs"][0], "train": {"init_from": "~/w/seed{seed}/best.pt"}}
    got = load_config({**cfg, "runs": [row]}, base_dir=root).runs[0].train["init_from"]
    assert got == f"{tmp_path}/w/seed{{seed}}/best.pt"


def test_mistakes_that_could_only_fail_later_are_said_before_any_row_trains(tiny, tmp_path, monkeypatch):
    """--only ROW --seed S trained nothing (exit 0) when ROW lacks S; a dataset_ratio that names
    no training set failed at its row's turn, after the rows before it had trained."""
    root, path, cfg = tiny
    with pytest.raises(ConfigError, match=r"row\(s\) \['IQA-CR'\]: no split seed \[0\]; seeds: \[1\]"):
        run_experiment(path, tmp_path / "a", progress=False, log=None, only=["IQA-CR"], seeds=[0])
    ratio = {**cfg, "runs": [{**cfg["runs"][0], "train": {"dataset_ratio": {"TINY": 1, "tiny": 2}}}]}
    with pytest.raises(ConfigError, match="dataset_ratio draws from several training sets: this run has one"):
        run_experiment(ratio, tmp_path / "b", progress=False, log=None, base_dir=root)
    assert not (tmp_path / "b" / "runs").exists()
    monkeypatch.setenv("CKPT", "last")  # every string may use ${VAR}: checkpoint too
    assert load_config({**cfg, "checkpoint": "${CKPT}"}, base_dir=root).checkpoint == "last"


def test_more_seeds_or_another_test_set_keep_the_splits_finished_before(tiny, first_run):
    """What a split is checked on is its own seed's parts and the test sets it was tested on."""
    root, path, cfg = tiny
    more = {**cfg, "seeds": 3, "test": [*cfg["test"], {"name": "csv", "root": "train/scores.csv", "label": "THIRD"}]}
    res = run_experiment(more, root / "out1", progress=False, base_dir=root, train=False)
    assert res.results["IQA-CR-Q"]["seeds"] == [0, 1]


def test_a_test_set_added_to_a_finished_experiment_is_tested_on_its_finished_splits(tiny, first_run, tmp_path):
    """It was never scored, its column left out of the table, while the notes named it as tested."""
    import shutil

    from contentiqa.data import load_dataset
    from contentiqa.training.evaluate import evaluate_model

    root, path, cfg = tiny
    out = tmp_path / "out"
    shutil.copytree(root / "out1", out)
    write_csv(tmp_path / "third", 5, (0, 100), seed=3)
    third = {"name": "csv", "root": str(tmp_path / "third" / "scores.csv"), "label": "THIRD"}
    lines: list[str] = []
    more = {**cfg, "test": [*cfg["test"], third]}
    run_experiment(more, out, progress=False, base_dir=root, train=False, log=lambda *a: lines.append(" ".join(map(str, a))))
    assert any("not tested on THIRD" in line for line in lines)
    # the table the notes call THIRD tested in says it is not yet (it has no column)
    assert "Not tested yet: THIRD: no finished split has been scored on it" in (out / "results.md").read_text()
    res = run_experiment(more, out, progress=False, base_dir=root, log=lambda *a: lines.append(" ".join(map(str, a))))
    m = json.loads((out / "metrics" / "IQA-CR" / "seed1.json").read_text())
    data = load_dataset("csv", tmp_path / "third" / "scores.csv")
    direct, _ = evaluate_model(load_checkpoint(out / "runs" / "IQA-CR" / "seed1" / "tested.pt"), data.table, data.scale,
                               workers=0)
    assert m["test"]["THIRD"]["srocc"] == pytest.approx(direct["srocc"]) and "THIRD" in m["test_sha256"]
    assert "THIRD" in (out / "results.md").read_text() and any("tested on THIRD" in line for line in lines)
    assert "Not tested yet" not in (out / "results.md").read_text()
    assert res.results["IQA-CR-Q"]["seeds"] == [0, 1]


def test_a_row_that_cannot_train_here_still_lists_its_finished_splits(tiny, first_run, tmp_path, monkeypatch):
    """A row whose required file or named weights are absent (finished splits imported from a
    machine that had them), or whose weights turned out unavailable at one seed, lost every
    finished split from the table and results.json, `--table-only` too."""
    import shutil

    root, path, cfg = tiny
    out = tmp_path / "out"
    shutil.copytree(root / "out1", out)
    rows = {r["name"]: r for r in cfg["runs"]}
    needs = {**cfg, "runs": [{**rows["IQA-CR-Q"], "requires": ["absent.txt"]}, rows["IQA-CR"]]}
    for train in (False, True):
        res = run_experiment(needs, out, progress=False, base_dir=root, train=train, log=lambda *a: None)
        assert res.results["IQA-CR-Q"]["seeds"] == [0, 1] and "absent.txt" in res.skipped_runs["IQA-CR-Q"][0]
        stored = json.loads((out / "results.json").read_text())["runs"]["IQA-CR-Q"]
        assert stored["seeds"] == [0, 1] and stored["summary"]
        assert "| IQA-CR-Q | 2 |" in (out / "results.md").read_text()
    # weights the row names absent: the splits are listed as recorded, and the notes say so
    named = {**cfg, "runs": [{**rows["IQA-CR-Q"], "model_args": {**TINY_ARGS, "backbone_checkpoint": "gone.pt"}}]}
    res = run_experiment(named, out, progress=False, base_dir=root, train=False, log=lambda *a: None)
    assert res.results["IQA-CR-Q"]["seeds"] == [0, 1]
    assert "listed as recorded" in (out / "results.md").read_text()
    # weights unavailable when seed 0's turn came: seed 1, finished, stays in the table
    (out / "metrics" / "IQA-CR-Q" / "seed0.json").unlink()
    shutil.rmtree(out / "runs" / "IQA-CR-Q" / "seed0")
    import contentiqa.models
    from contentiqa.backbones import WeightsUnavailableError

    def unavailable(*a, **k):
        raise WeightsUnavailableError("weight package not installed")

    monkeypatch.setattr(contentiqa.models, "create_model", unavailable)
    res = run_experiment({**cfg, "runs": [rows["IQA-CR-Q"]]}, out, progress=False, base_dir=root, log=lambda *a: None)
    assert res.results["IQA-CR-Q"]["seeds"] == [1] and "weight package" in res.skipped_runs["IQA-CR-Q"][0]


def test_a_cross_dataset_set_changed_since_is_tested_again_not_trained_again(tiny, first_run, tmp_path, monkeypatch):
    """A split interrupted after training was refused once a cross-dataset test set changed (one
    MOS corrected), though training does not depend on it, and a finished split could only be
    trained again: the first finishes, the other is tested again from its tested.pt (on the CPU,
    wherever it trained). Where it cannot be tested again (--table-only, its tested.pt gone, the
    row's files absent), its figures on the old set are left out of the table, not the experiment
    refused."""
    import shutil

    from contentiqa.data import load_dataset
    from contentiqa.training.evaluate import evaluate_model

    root, path, cfg = tiny
    out = tmp_path / "out"
    shutil.copytree(root / "out1", out)
    shutil.copytree(root / "other", tmp_path / "other")
    csv = tmp_path / "other" / "scores.csv"
    table = pd.read_csv(csv, comment="#")
    table.loc[0, "mos"] = 4.9 if table.loc[0, "mos"] != 4.9 else 1.1  # one MOS corrected
    csv.write_text("# mos_range: 1 5\n" + table.to_csv(index=False))
    monkeypatch.setenv("TINY_OTHER_ROOT", str(tmp_path / "other"))
    (out / "metrics" / "IQA-CR-Q" / "seed0.json").unlink()  # trained, not yet tested: interrupted
    seed1 = out / "metrics" / "IQA-CR-Q" / "seed1.json"
    seed1.write_text(json.dumps({**json.loads(seed1.read_text()), "device": "cuda"}))  # trained on a GPU machine
    lines: list[str] = []
    res = run_experiment(path, out, progress=False, log=lambda *a: lines.append(" ".join(map(str, a))), train=False)
    assert res.results["IQA-CR-Q"]["seeds"] == [1] and "OTHER" not in res.results["IQA-CR-Q"]["summary"]
    assert any("IQA-CR-Q seed 1: not tested on OTHER (added or changed after it finished): run the experiment without "
               "--table-only" in line for line in lines)
    needs = {**cfg, "runs": [{**r, "requires": ["absent.txt"]} for r in cfg["runs"] if r["name"] == "IQA-CR-Q"]}
    res = run_experiment(needs, out, progress=False, base_dir=root, log=lambda *a: lines.append(" ".join(map(str, a))))
    assert res.results["IQA-CR-Q"]["seeds"] == [1] and "OTHER" not in res.results["IQA-CR-Q"]["summary"]
    kept = out / "runs" / "IQA-CR" / "seed1" / "tested.pt"
    kept.rename(kept.with_suffix(".away"))
    res = run_experiment(path, out, progress=False, log=lambda *a: lines.append(" ".join(map(str, a))), only=["IQA-CR-Q"])
    assert "OTHER" not in res.results["IQA-CR"]["summary"] and any("tested.pt is gone" in line for line in lines)
    kept.with_suffix(".away").rename(kept)
    # that run finished seed 0 and tested seed 1 again (the GPU it trained on is not here)
    assert res.results["IQA-CR-Q"]["seeds"] == [0, 1]
    other = load_dataset("csv", csv)
    for seed in (0, 1):
        m = json.loads((out / "metrics" / "IQA-CR-Q" / f"seed{seed}.json").read_text())
        direct, _ = evaluate_model(load_checkpoint(out / "runs" / "IQA-CR-Q" / f"seed{seed}" / "tested.pt"), other.table,
                                   other.scale, workers=0)
        assert m["test"]["OTHER"]["rmse"] == pytest.approx(direct["rmse"], abs=1e-4), seed
    assert any("IQA-CR-Q seed 1: tested on OTHER (added or changed since it finished)" in line for line in lines)
    run_experiment(path, out, progress=False, log=None, train=False)  # the table now rebuilds


def test_a_split_column_the_protocol_does_not_use_is_said(tmp_path):
    """The experiment re-split a table with a 'split' column without a word, while `evaluate`
    then scored the column's test rows, which the split had trained on."""
    csv = write_csv(tmp_path / "d", 12, (0, 100), seed=1)
    df = pd.read_csv(csv, comment="#")
    df["split"] = ["train"] * 9 + ["test"] * 3
    csv.write_text("# mos_range: 0 100\n" + df.to_csv(index=False))
    cfg = {"name": "col", "data": {"name": "csv", "root": str(csv), "label": "D"}, "protocol": "ie-iqa", "seeds": [0],
           "test": ["split"], "model_args": TINY_ARGS, "train": {"epochs": 1}, "runs": [{"name": "Q", "model": "iqa-cr-q"}]}
    lines: list[str] = []
    run_experiment(cfg, tmp_path / "out", progress=False, train=False, log=lambda *a: lines.append(" ".join(map(str, a))))
    assert any("D's 'split' column is not used: protocol ie-iqa" in line for line in lines), lines


def test_the_table_names_the_machines_the_splits_trained_on():
    """It named the machine that built the table, also for splits imported from a GPU session."""
    from contentiqa.experiments.runner import _machines

    prov = {"machine": "x86_64, 2 CPUs, Linux", "gpu": None}
    gpu = {"machine": "x86_64, 16 CPUs, Linux", "gpu": "NVIDIA H100"}
    results = {"A": {"splits": [{"provenance": gpu}, {"provenance": gpu}]}, "B": {"splits": [{"provenance": {}}]}}
    assert _machines(results, prov) == ("a machine not recorded (older records) (1 split(s)); "
                                        "x86_64, 16 CPUs, Linux, GPU NVIDIA H100 (2 split(s))")
    assert _machines({"A": {"splits": [{"provenance": gpu}]}}, prov) == "x86_64, 16 CPUs, Linux, GPU NVIDIA H100"


def test_splits_recorded_before_the_fingerprint_covered_more_still_count(tiny, tmp_path, monkeypatch):
    """A split records the fingerprint version it was made with: results folders of earlier
    versions are checked as they were, not refused as another experiment."""
    import contentiqa.experiments.runner as runner

    root, path, cfg = tiny
    monkeypatch.setattr(runner, "FINGERPRINT_VERSION", 1)
    run_experiment(path, tmp_path / "old", progress=False, log=None, only=["IQA-CR-Q"], seeds=[0])
    assert json.loads((tmp_path / "old" / "metrics" / "IQA-CR-Q" / "seed0.json").read_text())["fingerprint_version"] == 1
    monkeypatch.undo()
    again = run_experiment(path, tmp_path / "old", progress=False, log=None, train=False)
    assert again.results["IQA-CR-Q"]["seeds"] == [0]
    longer = {**cfg, "train": {**cfg["train"], "epochs": 2}}  # what version 1 covered is still checked
    with pytest.raises(ConfigError, match="trained with another recipe"):
        run_experiment(longer, tmp_path / "old", progress=False, base_dir=root, train=False)


def test_a_cross_dataset_test_set_holding_training_photos_is_refused(tiny, tmp_path):
    """The training CSV itself given as a test set was scored as 'cross-dataset', its training
    photos among the figures, without a word."""
    root, path, cfg = tiny
    leaky = {**cfg, "test": ["split", {"name": "csv", "root": "train/scores.csv", "label": "ALL"}]}
    with pytest.raises(ConfigError, match=r"test set ALL: \d+ of its photos train or validate in TINY's splits"):
        run_experiment(leaky, tmp_path / "o", progress=False, base_dir=root, log=None)
    assert not (tmp_path / "o" / "metrics").exists()  # before any training


def test_a_registry_default_that_moved_is_another_recipe(tiny, tmp_path, monkeypatch):
    """Fingerprints hashed a row's model arguments as written: iqa-cr's default content head moved
    (tokens, then levels), and a rerun averaged splits of the two models without a word."""
    from contentiqa.models.registry import model_entry

    root, path, cfg = tiny
    run_experiment(path, tmp_path / "o", progress=False, log=None, only=["IQA-CR-Q"], seeds=[0])
    monkeypatch.setitem(model_entry("iqa-cr-q").defaults, "content_from", "levels")
    with pytest.raises(ConfigError, match="trained with another recipe"):
        run_experiment(path, tmp_path / "o", progress=False, log=None, train=False)


def test_splits_of_before_version_4_count_for_a_row_that_now_names_its_content_head(tiny, tmp_path, monkeypatch):
    """Rows of earlier versions left content_from to the registry: a config pinning the head they
    trained with (as the shipped configs now do) keeps their splits, on import too."""
    import contentiqa.experiments.runner as runner

    root, path, cfg = tiny
    monkeypatch.setattr(runner, "FINGERPRINT_VERSION", 3)
    run_experiment(path, tmp_path / "old", progress=False, log=None, only=["IQA-CR-Q"], seeds=[0])
    monkeypatch.undo()
    pinned = {**cfg, "runs": [{**cfg["runs"][0], "model_args": {"content_from": "tokens"}}]}
    again = run_experiment(pinned, tmp_path / "old", progress=False, base_dir=root, train=False)
    assert again.results["IQA-CR-Q"]["seeds"] == [0]
    notes = []
    imported = run_experiment(pinned, tmp_path / "new", progress=False, base_dir=root, train=False,
                              imports=[tmp_path / "old" / "results.json"], log=lambda *a: notes.append(" ".join(map(str, a))))
    assert imported.results["IQA-CR-Q"]["seeds"] == [0], notes
    # and a row that named it already then (the KonIQ and SPAQ configs) keeps its splits too: their
    # fingerprints hashed it as written
    monkeypatch.setattr(runner, "FINGERPRINT_VERSION", 3)
    monkeypatch.setattr(runner, "_fingerprinted_args", lambda run, version, pinned=False: run.model_args)
    run_experiment(pinned, tmp_path / "named", progress=False, base_dir=root, log=None, seeds=[0])
    monkeypatch.undo()
    assert run_experiment(pinned, tmp_path / "named", progress=False, base_dir=root, train=False).results[
        "IQA-CR-Q"]["seeds"] == [0]


def test_a_split_that_could_not_be_measured_is_left_out_of_the_cell_and_said_so(tiny, first_run):
    """A collapsed model's correlations are NaN: the table must not turn the row into "nan ± nan",
    nor show a one-split cell with a spread of 0, and results.json must stay JSON (no NaN)."""
    root, path, cfg = tiny
    out = root / "out1"
    mfile = out / "metrics" / "IQA-CR-Q" / "seed1.json"
    kept = mfile.read_text()
    try:
        split = json.loads(kept)
        split["test"]["TINY"]["srocc"] = float("nan")  # what evaluate records for a collapsed model
        mfile.write_text(json.dumps(split))
        res = run_experiment(path, out, progress=False, train=False)
        text = (out / "results.json").read_text()
        json.loads(text, parse_constant=lambda c: pytest.fail(f"results.json holds {c}"))
        row = next(line for line in res.markdown.splitlines() if line.startswith("| IQA-CR-Q |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        header = [c.strip() for c in res.markdown.split("\n")[next(i for i, line in enumerate(res.markdown.split("\n"))
                                                                   if line.startswith("| model |"))].strip("|").split("|")]
        srocc = cells[header.index("TINY SROCC")]
        assert "nan" not in row and srocc.endswith("(1 split)") and "±" not in srocc, row
        assert cells[header.index("TINY PLCC")].count("±") == 1  # the other metrics keep both splits
        iqa_cr = next(line for line in res.markdown.splitlines() if line.startswith("| IQA-CR |"))
        assert "± 0.000" not in iqa_cr  # a row of one split shows no spread
        # a split another session's code trained is named: the table's own line is its builder's
        assert "The splits were trained by" not in res.markdown
        split["provenance"] = {**split["provenance"], "git_commit": "0123456789abcdef", "date": "2026-01-02T00:00:00"}
        mfile.write_text(json.dumps(split))
        again = run_experiment(path, out, progress=False, train=False).markdown
        assert "The splits were trained by" in again and "git 0123456789ab" in again and "2026-01-02 to" in again
    finally:
        mfile.write_text(kept)


def test_a_metric_no_split_could_measure_is_named_not_dropped_silently(tiny, first_run):
    root, path, _ = tiny
    out = root / "out1"
    kept = {p: p.read_text() for p in (out / "metrics").rglob("*.json")}
    try:
        for p, text in kept.items():
            split = json.loads(text)
            split["test"]["TINY"]["srocc"] = float("nan")
            p.write_text(json.dumps(split))
        md = run_experiment(path, out, progress=False, train=False).markdown
        assert "| TINY SROCC |" not in md and "TINY PLCC" in md
        assert "Not in the table: TINY SROCC: no split could measure it" in md
    finally:
        for p, text in kept.items():
            p.write_text(text)
    assert "Not in the table" not in run_experiment(path, out, progress=False, train=False).markdown


def test_missing_data_skips_with_a_message(tmp_path, tiny, capsys):
    _, _, cfg = tiny
    bad = {**cfg, "data": {"name": "koniq10k", "root": "nowhere/koniq10k"}}
    res = run_experiment(bad, tmp_path / "out", progress=False, base_dir=tmp_path)
    assert not res.ran and "koniq10k" in res.skipped[0] and str(tmp_path / "nowhere" / "koniq10k") in res.skipped[0]
    assert "skipped tiny" in capsys.readouterr().out and not (tmp_path / "out").exists()
    with pytest.raises(ExperimentSkipped, match="nowhere"):
        run_experiment(bad, tmp_path / "out", progress=False, base_dir=tmp_path, strict=True, log=None)


def bad_table_config(folder: Path, rows: list[tuple[str, str]], **data) -> tuple[dict, Path]:
    """A config training on the CSV of ``rows`` (image, mos as written), its images made."""
    for i in range(12):
        write_image(folder / "img" / f"{i}.png", 56, 56, seed=i)
    csv = folder / "scores.csv"
    csv.write_text("image,mos\n" + "".join(f"{image},{mos}\n" for image, mos in rows))
    cfg = {"name": "bad", "data": {"name": "csv", "root": str(csv), **data}, "protocol": "ie-iqa", "model": "iqa-cr-q",
           "model_args": TINY_ARGS, "train": {"epochs": 1, "batch_size": 4, "crop": 48}}
    return cfg, csv


GOOD_ROWS = [(f"img/{i}.png", str(10.0 + 7 * i)) for i in range(12)]


@pytest.mark.parametrize("rows, problem", [
    ([*GOOD_ROWS[:3], ("img/3.png", "abc"), *GOOD_ROWS[4:]], "MOS"),
    ([*GOOD_ROWS[:3], ("img/3.png", ""), *GOOD_ROWS[4:]], "MOS"),
    ([*GOOD_ROWS[:3], ("img/2.png", "40"), *GOOD_ROWS[4:]], "same image twice"),
    ([], "cannot split 0 images"),
    (GOOD_ROWS[:5], "cannot split 5 images"),
], ids=["non-numeric-mos", "empty-mos", "duplicate-image", "header-only", "too-few"])
def test_a_dataset_table_that_cannot_be_used_is_a_config_error_naming_its_file(tmp_path, rows, problem):
    cfg, csv = bad_table_config(tmp_path / "d", rows)
    with pytest.raises(ConfigError, match=problem) as err:
        run_experiment(cfg, tmp_path / "out", progress=False, log=None)
    assert str(csv) in str(err.value) and "\n" not in str(err.value)


def test_a_bad_dataset_table_is_one_line_from_the_cli(tmp_path, capsys):
    from contentiqa.cli.main import main

    cfg, csv = bad_table_config(tmp_path / "d", [*GOOD_ROWS[:3], ("img/2.png", "40"), *GOOD_ROWS[4:]])
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["experiment", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert str(csv) in err and "same image twice" in err


def test_loader_args_it_does_not_take_are_a_config_error(tmp_path):
    cfg, csv = bad_table_config(tmp_path / "d", GOOD_ROWS, args={"bogus": 1})
    with pytest.raises(ConfigError, match="bogus") as err:
        run_experiment(cfg, tmp_path / "out", progress=False, log=None)
    assert str(csv) in str(err.value)


def test_missing_images_are_named_in_the_skip_message(tmp_path):
    rows = [(f"img/{i}.png" if i < 5 else f"img/gone{i}.png", mos) for i, (_, mos) in enumerate(GOOD_ROWS)]
    cfg, csv = bad_table_config(tmp_path / "d", rows)
    said: list[str] = []
    res = run_experiment(cfg, tmp_path / "out", progress=False, log=said.append)
    gone = [str(tmp_path / "d" / "img" / f"gone{i}.png") for i in range(5, 12)]
    assert not res.ran and len(res.skipped) == 1
    reason = res.skipped[0]
    assert str(csv) in reason and "7 image file(s) missing" in reason
    assert all(p in reason for p in gone[:5]) and not any(p in reason for p in gone[5:])
    assert "and 2 more" in reason and "skip_missing: true" in reason
    assert any(reason in line for line in said)
    with pytest.raises(ExperimentSkipped, match="gone5.png"):
        run_experiment(cfg, tmp_path / "out", progress=False, log=None, strict=True)


def test_a_split_file_that_does_not_fit_the_data_is_a_config_error(tmp_path):
    from contentiqa.data import make_splits, save_splits

    cfg, csv = bad_table_config(tmp_path / "d", GOOD_ROWS)
    damaged = tmp_path / "damaged.json"
    damaged.write_text("{not json")
    with pytest.raises(ConfigError, match="damaged.json"):
        run_experiment({**cfg, "splits": str(damaged)}, tmp_path / "out", progress=False, log=None)
    other = pd.DataFrame({"image": [f"/elsewhere/photo{i}.png" for i in range(12)], "mos": np.arange(12.0)})
    foreign = save_splits(make_splits(other, "ie-iqa", 0), tmp_path / "foreign.json")
    with pytest.raises(ConfigError, match="does not match") as err:
        run_experiment({**cfg, "splits": str(foreign)}, tmp_path / "out", progress=False, log=None)
    assert str(foreign) in str(err.value) and str(csv) in str(err.value)


def test_a_diverging_run_is_a_config_error_naming_the_row(tmp_path):
    cfg, _ = bad_table_config(tmp_path / "d", GOOD_ROWS)
    cfg["train"] = {**cfg["train"], "lr": 1e9}
    with pytest.raises(ConfigError, match="run iqa-cr-q, split seed 0: training loss diverged at epoch 1"):
        run_experiment(cfg, tmp_path / "out", progress=False, log=None)


def test_config_validation_and_paths(tmp_path, monkeypatch):
    base = {"data": {"name": "csv", "root": "d.csv"}, "model": "iqa-cr-q", "seeds": [3, 5]}
    cfg = load_config(base, tmp_path)
    assert cfg.seeds == [3, 5] and cfg.runs[0].name == "iqa-cr-q" and cfg.tests == ["split"]
    assert cfg.data.root == tmp_path / "d.csv" and cfg.data.label == "d"
    bad = [
        ({**base, "bogus": 1}, "unknown key"),
        ({**base, "train": {"epochz": 1}}, "epochz"),
        ({**base, "train": {"seed": 1}}, "seed"),
        ({**base, "train": {"epochs": 0}}, "epochs must be a whole number of at least 1"),
        ({**base, "train": {"batch_size": 0}}, "batch_size must be a whole number of at least 1"),
        ({**base, "model": "nope"}, "unknown model"),
        ({**base, "protocol": "x"}, "protocol"),
        ({**base, "seeds": 0}, "seeds"),
        ({**base, "data": {"name": "csv"}}, "root"),
        ({**base, "runs": [{"name": "a"}, {"name": "a"}]}, "distinct"),
        ({**base, "runs": [{"model": "iqa-cr", "seeds": [7]}]}, "not among"),
        ({**base, "data": {"root": "${UNSET_VAR_FOR_TEST}/d.csv"}}, "UNSET_VAR_FOR_TEST"),
    ]
    monkeypatch.delenv("UNSET_VAR_FOR_TEST", raising=False)
    for raw, msg in bad:
        with pytest.raises(ConfigError, match=msg):
            load_config(raw, tmp_path)
    # ${VAR:-default} (relative default: from the config's folder); a relative env value: from the cwd
    raw = {**base, "data": {"root": "${MY_DATA:-data}/d.csv"},
           "runs": [{"model": "iqa-cr", "model_args": {"backbone_checkpoint": "${MY_W:-w}/b.pt"}}]}
    monkeypatch.delenv("MY_DATA", raising=False)
    assert load_config(raw, tmp_path).data.root == tmp_path / "data" / "d.csv"
    monkeypatch.setenv("MY_DATA", "elsewhere")
    monkeypatch.chdir(tmp_path / "..")
    cfg = load_config(raw, tmp_path)
    assert cfg.data.root == Path(os.getcwd()) / "elsewhere" / "d.csv"
    assert cfg.runs[0].model_args["backbone_checkpoint"] == str(tmp_path / "w" / "b.pt")
    f = tmp_path / "c.yaml"
    f.write_text("data: {root: ../d.csv}\nmodel: iqa-cr\n")
    assert load_config(f).data.root == tmp_path.parent / "d.csv" and load_config(f).name == "c"


def _check_line(path: Path, capsys) -> tuple[int, str]:
    """``contentiqa experiment --check PATH``: exit status and its one line of output."""
    from contentiqa.cli.main import main

    rc = main(["experiment", "--check", str(path)])
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1, out
    return rc, out.strip()


def test_a_key_given_twice_is_an_error_naming_it_and_its_lines(tmp_path, capsys):
    """Plain YAML keeps the last of two ``train:`` sections: the first would silently not apply."""
    f = tmp_path / "dup.yaml"
    f.write_text("data: {root: d.csv}\nmodel: iqa-cr-q\ntrain: {epochs: 1}\nseeds: 2\ntrain: {epochs: 3}\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml:5: duplicate key 'train' \(first on line 3\)$"):
        load_config(f)
    f.write_text("data: {root: d.csv, label: A, label: B}\nmodel: iqa-cr-q\n")  # nested, on one line
    with pytest.raises(ConfigError, match=r"dup\.yaml:1: duplicate key 'label'"):
        load_config(f)
    rc, line = _check_line(f, capsys)
    assert rc == 2 and line.startswith("invalid") and "duplicate key 'label'" in line
    # A merge key's entries may be overridden: that is what merge keys are for, not a repeat.
    f.write_text("model_args: &a {dim: 16}\nruns:\n  - {model: iqa-cr-q, model_args: {<<: *a, dim: 8}}\n"
                 "data: {root: d.csv}\n")
    assert load_config(f).runs[0].model_args == {"dim": 8}


def test_invalid_yaml_is_one_line_naming_file_and_line(tmp_path, capsys):
    f = tmp_path / "bad.yaml"
    f.write_text("data: {root: d.csv}\nmodel: iqa-cr-q\ntrain: {epochs: 1\nseeds: 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(f"{f}:4: invalid YAML: "), str(err.value)
    rc, line = _check_line(f, capsys)
    assert rc == 2 and f"{f}:4: invalid YAML" in line


def test_a_config_of_aliases_of_aliases_is_refused_before_it_is_expanded(tmp_path):
    """A few hundred bytes of aliases ('billion laughs') expanded to gigabytes while ${VAR}s were
    expanded, already under --check; the configs' own anchors (a shared train section) still load."""
    import time

    lines = ['l0: &a0 "lol"'] + [f"l{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]" for n in range(1, 10)]
    f = tmp_path / "laughs.yaml"
    f.write_text("data: {name: csv, root: x.csv}\nmodel: iqa-cr\nmodel_args:\n" + "".join(f"  {x}\n" for x in lines))
    t = time.monotonic()
    with pytest.raises(ConfigError, match="billion laughs"):
        load_config(f)
    assert time.monotonic() - t < 5
    assert load_config(REPO_ROOT / "configs" / "ie_iqa_koniq_tasks.yaml").runs  # anchors and merge keys


def test_config_values_of_the_wrong_kind_are_errors(tmp_path, capsys):
    base = {"data": {"name": "csv", "root": "d.csv"}, "model": "iqa-cr-q"}
    # bool("false") is True: a quoted false would skip missing images
    with pytest.raises(ConfigError, match=r"data\.skip_missing: expected true or false, got 'false'"):
        load_config({**base, "data": {**base["data"], "skip_missing": "false"}}, tmp_path)
    assert load_config({**base, "data": {**base["data"], "skip_missing": True}}, tmp_path).data.skip_missing is True
    assert load_config(base, tmp_path).data.skip_missing is False
    # a negative seed passed --check and failed only when a split was drawn
    with pytest.raises(ConfigError, match=r"config: seeds: seeds must be 0 or more, got \[0, -1\]"):
        load_config({**base, "seeds": [0, -1]}, tmp_path)
    with pytest.raises(ConfigError, match=r"runs\[0\]\.seeds: seeds must be 0 or more"):
        load_config({**base, "seeds": [0, 1], "runs": [{"model": "iqa-cr-q", "seeds": [-1]}]}, tmp_path)
    # a seed of 2**63 passed --check and was torch's traceback after the runs before it; a count of
    # a billion seeds built a list of a billion runs
    with pytest.raises(ConfigError, match=r"config: seeds: seeds must be below 2\*\*63, got \[0, 9223372036854775808\]"):
        load_config({**base, "seeds": [0, 2**63]}, tmp_path)
    assert load_config({**base, "seeds": [2**63 - 1]}, tmp_path).seeds == [2**63 - 1]
    with pytest.raises(ConfigError, match=r"config: seeds: a count of seeds is 1 to 1000, not 1000000000"):
        load_config({**base, "seeds": 10**9}, tmp_path)
    # 'on:' is a boolean key in YAML: sorting it among other unknown keys raised TypeError
    f = tmp_path / "on.yaml"
    f.write_text("data: {root: d.csv}\nmodel: iqa-cr-q\non: 1\nzzz: 2\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['True', 'zzz'\]"):
        load_config(f)
    rc, line = _check_line(f, capsys)
    assert rc == 2 and "unknown key(s) ['True', 'zzz']" in line
    for where, raw in (("data", {**base, "data": {**base["data"], True: 1, "zz": 2}}),
                       ("runs[0]", {**base, "runs": [{"model": "iqa-cr-q", True: 1, "zz": 2}]})):
        with pytest.raises(ConfigError, match=rf"{re.escape(where)}: unknown key\(s\) \['True', 'zz'\]"):
            load_config(raw, tmp_path)


def test_nested_defaults_are_read_only_when_needed(tmp_path, monkeypatch, capsys):
    """``${A:-${B}/x}`` with A set must not need B (it was expanded first, innermost)."""
    from contentiqa.experiments.config import expand_vars

    monkeypatch.delenv("CIQA_SHARED", raising=False)
    monkeypatch.delenv("CIQA_EMPTY", raising=False)
    monkeypatch.setenv("CIQA_DATA", "d.csv")
    assert expand_vars("${CIQA_DATA:-${CIQA_SHARED}/d.csv}") == "d.csv"
    assert expand_vars("a/${CIQA_DATA:-${CIQA_SHARED:-${CIQA_EMPTY}}}/b") == "a/d.csv/b"
    with pytest.raises(ConfigError, match="CIQA_SHARED is not set"):
        expand_vars("${CIQA_EMPTY:-${CIQA_SHARED}/d.csv}")
    monkeypatch.setenv("CIQA_EMPTY", "")  # empty counts as unset, as ':-' says
    monkeypatch.setenv("CIQA_SHARED", "/s")
    assert expand_vars("${CIQA_EMPTY:-${CIQA_SHARED}/d.csv}") == "/s/d.csv"
    assert expand_vars("${CIQA_EMPTY:-${CIQA_NOPE:-x}/${CIQA_SHARED}}!") == "x//s!"
    assert expand_vars("$HOME ${1x} ${CIQA_DATA") == "$HOME ${1x} ${CIQA_DATA"  # not references: as written
    monkeypatch.setenv("CIQA_SHARED", "${CIQA_DATA}")
    assert expand_vars("${CIQA_SHARED}") == "${CIQA_DATA}"  # a value is used as it is
    # the repro: --check, with the file absent, names the data file, not CIQA_SHARED
    monkeypatch.delenv("CIQA_SHARED")
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "nested.yaml"
    f.write_text('data: {name: csv, root: "${CIQA_DATA:-${CIQA_SHARED}/d.csv}"}\nmodel: iqa-cr-q\n')
    assert load_config(f).data.root == tmp_path / "d.csv"
    rc, line = _check_line(f, capsys)
    assert rc == 1 and line.startswith("missing") and "CIQA_SHARED" not in line


def test_labels_file_is_merged(tmp_path):
    from contentiqa.experiments.config import DataSpec
    from contentiqa.experiments.runner import apply_labels, load_data

    csv = write_csv(tmp_path / "d", 4, (0, 100), seed=3, categories=False)
    labels = tmp_path / "lab" / "labels.csv"
    labels.parent.mkdir()
    labels.write_text("image,category\n" + "".join(f"../d/img/{i}.png,{IQA_CR_CATEGORIES[i]}\n" for i in range(4)))
    spec = DataSpec("csv", csv, "d", labels=labels)
    table, scale = load_data(spec)
    assert list(table["category"]) == list(IQA_CR_CATEGORIES[:4]) and scale.high == 100
    # A file covering part of the data (human labels rarely cover all): the rest is
    # unlabelled (no content loss), and said so.
    labels.write_text("image,category\n../d/img/0.png,animal\n")
    said = []
    part = apply_labels(table, spec, tmp_path, log=said.append)
    assert part["category"].iloc[0] == "animal" and part["category"].iloc[1:].isna().all()
    assert any("3 of 4 images have no content label" in m for m in said)
    # Keys relative to the dataset (what label files written by contentiqa hold) join the same,
    # wherever the data and the label file are.
    labels.write_text("image,category\n" + "".join(f"img/{i}.png,{IQA_CR_CATEGORIES[i]}\n" for i in range(4)))
    assert list(apply_labels(table, spec, tmp_path)["category"]) == list(IQA_CR_CATEGORIES[:4])
    labels.write_text("image,category\nelsewhere/0.png,animal\n")
    with pytest.raises(ConfigError, match="none of its 1 images is in the dataset"):
        apply_labels(table, spec, tmp_path)


def test_experiment_folder_takes_one_run_at_a_time_and_clears_a_killed_runs_temporaries(tiny, first_run, capsys):
    """A second `experiment --out` on a folder in use is refused before it touches anything (it
    would train the same splits and replace the first's files); once the folder is free, a
    temporary a killed run left beside results.json is removed, and no other."""
    from filelock import FileLock

    from contentiqa.cli.main import main

    root, path, _ = tiny
    out = root / "out1"
    before = (out / "results.json").read_bytes()
    stale, other = out / ".results.json.abc123xy.tmp", out / ".notes.txt.abc123xy.tmp"
    stale.write_text("{half")
    other.write_text("not the experiment's")
    with FileLock(str(out / ".experiment.lock")):  # what a running experiment holds
        assert main(["experiment", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "another process is running an experiment in" in err and "Traceback" not in err
    assert stale.exists() and (out / "results.json").read_bytes() == before  # untouched while busy
    assert main(["experiment", str(path), "--out", str(out), "--quiet"]) == 0
    assert not stale.exists() and other.exists()
    # killed while writing a split's figures, or a split's recipe.json: those are cleared too
    mfile = sorted((out / "metrics").glob("*/seed0.json"))[0]
    run_dir = out / "runs" / mfile.parent.name / "seed0"
    mfile.unlink()
    stale_m, stale_r = mfile.with_name(".seed0.json.abc123xy.tmp"), run_dir / ".recipe.json.abc123xy.tmp"
    stale_m.write_text("{half")
    stale_r.write_text("{half")
    assert main(["experiment", str(path), "--out", str(out), "--quiet"]) == 0
    assert mfile.is_file() and not stale_m.exists() and not stale_r.exists()


def test_experiment_cli(tiny, first_run, tmp_path, capsys):
    from contentiqa.cli.main import main

    root, path, cfg = tiny
    # the finished results folder: nothing to train, the table again
    assert main(["experiment", str(path), "--out", str(root / "out1"), "--quiet"]) == 0
    out = capsys.readouterr()
    assert "results.md" in out.out and "skipped run needs weights" in out.err and "nope.pt" in out.err
    assert main(["experiment", str(path), "--out", str(root / "out1"), "--quiet", "--strict"]) == 1
    capsys.readouterr()
    # --strict fails a pass for the rows it asks for only (another row's missing weights are no
    # failure of a GPU lease training one row)
    assert main(["experiment", str(path), "--out", str(tmp_path / "one"), "--quiet", "--strict", "--only", "IQA-CR-Q",
                 "--seed", "0"]) == 0
    assert (tmp_path / "one" / "metrics" / "IQA-CR-Q" / "seed0.json").is_file()
    capsys.readouterr()
    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump({**cfg, "name": "m", "data": {"name": "spaq", "root": "/nonexistent/spaq"}}))
    assert main(["experiment", str(missing), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert "/nonexistent/spaq" in capsys.readouterr().err
    assert main(["experiment", "--check", str(path), str(missing)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("partial") and "nope.pt" in out[0]
    assert out[1].startswith("missing") and "/nonexistent/spaq" in out[1]
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text("data: {root: x.csv}\nmodel: iqa-cr\ntrain: {epochz: 3}\n")
    assert main(["experiment", str(invalid)]) == 2
    assert main(["experiment", "--check", str(invalid)]) == 2
    assert main(["experiment", str(path), str(missing), "--out", "x"]) == 2


def test_check_says_ready_only_for_what_the_run_would_start(tiny, tmp_path, capsys, monkeypatch):
    """--check said "ready" for a misspelt model argument, a dataset_ratio naming no set and an
    init_from not there (each refused as soon as the run began), and where PyTorch is missing."""
    from contentiqa.cli.main import main

    root, path, cfg = tiny
    ready = [r for r in cfg["runs"] if r["name"] != "needs weights"]

    def check(**edit) -> tuple[int, str]:
        p = tmp_path / "c.yaml"
        p.write_text(yaml.safe_dump({**cfg, "name": "c", "runs": ready, **edit}).replace(
            "${TINY_OTHER_ROOT:-other}", str(root / "other")).replace("train/scores.csv", str(root / "train/scores.csv")))
        rc = main(["experiment", "--check", str(p)])
        return rc, capsys.readouterr().out

    rc, out = check()
    assert rc == 0 and out.startswith("ready"), out
    rc, out = check(runs=[{**ready[0], "model_args": {**TINY_ARGS, "dimm": 16}}])
    assert rc == 2 and out.startswith("invalid") and "cannot build iqa-cr-q" in out and "dimm" in out
    rc, out = check(runs=[{**ready[0], "train": {"dataset_ratio": {"TINYY": 1}}}])
    assert rc == 2 and out.startswith("invalid") and "dataset_ratio" in out
    rc, out = check(runs=[{**ready[0], "train": {"init_from": str(tmp_path / "nowhere" / "seed{seed}" / "best.pt")}}])
    assert rc == 1 and out.startswith("missing") and "nowhere/seed0/best.pt does not exist" in out
    # settings the Trainer refuses, said only at the row's turn (after the rows before it trained):
    # IE-IQA's protocol has no validation part to calibrate or monitor on
    for train, said in (({"calibrate": True}, "calibrate fits on the validation part, and there is none"),
                        ({"monitor": "val/srocc"}, "needs a validation part: there is none"),
                        ({"device": "cuda:7"}, "device 'cuda:7'"),
                        ({"rank_weight": 1.0}, "iqa-cr-c predicts no score: rank_weight")):
        model = {"model": "iqa-cr-c"} if "rank_weight" in train else {}
        rc, out = check(runs=[ready[0], {**ready[1], **model, "train": train}])
        assert rc == 2 and out.startswith("invalid") and "run IQA-CR: " in out and said in out, (train, out)
    rc, out = check(runs=[ready[0], {**ready[1], "train": {"calibrate": True}}],
                    data={**cfg["data"], "val_fraction": 0.25})
    assert rc == 0 and out.startswith("ready"), out  # a validation part carved from the train part
    # weights a row's model needs and this machine lacks (not a file the config names): the run skips it
    scene = {"name": "scene", "model": "ie-iqa", "model_args": {"intelligibility_task": "scene",
                                                                "distortion_pretrained": False, "hidden": [8, 4]}}
    monkeypatch.setattr("torch.hub.get_dir", lambda: str(tmp_path / "empty-hub"))
    rc, out = check(model_args={}, runs=[{**ready[0], "model_args": TINY_ARGS}, scene])
    assert rc == 1 and out.startswith("partial") and "1/2 run(s) can run" in out and "scene: intelligibility task" in out
    from contentiqa.utils import extras

    real = extras.have
    monkeypatch.setattr(extras, "have", lambda m: m != "torch" and real(m))
    rc, out = check()
    assert rc == 1 and out.startswith("missing") and "PyTorch (pip install 'contentiqa[torch]')" in out


def test_check_reads_the_tables_and_looks_up_the_images(tiny, tmp_path, capsys):
    """--check said "ready" for a BIQ2021 folder without its annotation sheets and for a CSV
    listing an image that is not there: the run then skipped the config for missing data."""
    from contentiqa.cli.main import main

    root, path, cfg = tiny
    ready = [r for r in cfg["runs"] if r["name"] != "needs weights"]

    def check(name: str, data: dict) -> tuple[int, str]:
        p = tmp_path / f"{name}.yaml"
        p.write_text(yaml.safe_dump({**cfg, "name": name, "runs": ready, "test": ["split"], "data": data}))
        rc = main(["experiment", "--check", str(p)])
        return rc, capsys.readouterr().out

    (tmp_path / "biq").mkdir()
    rc, out = check("biq", {"name": "biq2021", "root": str(tmp_path / "biq")})
    assert rc == 1 and out.startswith("missing") and "Train (Images and MOS).csv" in out, out
    table = (root / "train" / "scores.csv").read_text()
    gone = tmp_path / "gone" / "scores.csv"
    gone.parent.mkdir()
    gone.write_text(table.replace("img/", str(root / "train" / "img") + "/").replace("/3.png", "/nothere.png"))
    rc, out = check("gone", {"name": "csv", "root": str(gone), "label": "G"})
    assert rc == 1 and out.startswith("missing") and "1 image file(s) missing" in out and "nothere.png" in out, out
    rc, out = check("kept", {"name": "csv", "root": str(gone), "label": "G", "skip_missing": True})
    assert rc == 0 and out.startswith("ready"), out  # the run drops it, as the config asks
    # ... unless nothing is left: the run trained, then failed measuring an empty set
    (tmp_path / "none").mkdir()
    empty = tmp_path / "none" / "scores.csv"
    empty.write_text("image,mos\na.png,1\nb.png,2\n")
    rc, out = check("none", {"name": "csv", "root": str(empty), "label": "N", "skip_missing": True})
    assert rc == 1 and out.startswith("missing") and "0 image(s) left once skip_missing dropped" in out, out
    broken = tmp_path / "broken.csv"
    broken.write_text("image,mos\nimg/0.png,high\n")
    rc, out = check("broken", {"name": "csv", "root": str(broken), "label": "B"})
    assert rc == 2 and out.startswith("invalid") and "broken.csv" in out, out


def test_check_counts_what_configs_before_write_and_the_out_given(tiny, tmp_path, capsys, monkeypatch):
    """A row starting from a row of a config checked before it (one command runs them in turn), or
    from a results folder given with --out, was said missing: the run itself trains it."""
    from contentiqa.cli.main import main

    root, path, cfg = tiny
    monkeypatch.chdir(tmp_path)
    base = {**cfg, "data": {**cfg["data"], "root": str(root / "train" / "scores.csv")}, "test": ["split"], "seeds": 1}
    one, two = tmp_path / "one.yaml", tmp_path / "two.yaml"
    one.write_text(yaml.safe_dump({**base, "name": "one", "runs": [{"name": "A", "model": "iqa-cr-q"}]}))
    two.write_text(yaml.safe_dump({**base, "name": "two", "runs": [
        {"name": "B", "model": "iqa-cr-q", "train": {"init_from": "../one/runs/A/seed{seed}/best.pt"}}]}))
    assert main(["experiment", "--check", str(one), str(two)]) == 0, capsys.readouterr().out
    assert main(["experiment", "--check", str(two)]) == 1  # alone, nothing writes A's weights
    done = tmp_path / "elsewhere" / "one" / "runs" / "A" / "seed0" / "best.pt"
    done.parent.mkdir(parents=True)
    done.write_bytes(b"weights")
    capsys.readouterr()
    assert main(["experiment", "--check", str(two), "--out", str(tmp_path / "elsewhere" / "two")]) == 0
    assert f"-> {tmp_path / 'elsewhere' / 'two'}" in capsys.readouterr().out


def test_several_configs_refuse_a_row_without_the_seed_asked_before_any_trains(tiny, tmp_path, capsys):
    """--only X --seed 1 over two configs, X lacking seed 1, trained nothing and exited 0."""
    from contentiqa.cli.main import main

    root, path, cfg = tiny
    one, two = tmp_path / "one.yaml", tmp_path / "two.yaml"
    base = {**cfg, "data": {**cfg["data"], "root": str(root / "train" / "scores.csv")}, "test": ["split"]}
    one.write_text(yaml.safe_dump({**base, "name": "one", "runs": [{"name": "X", "model": "iqa-cr-q", "seeds": [0]},
                                                                   {"name": "Z", "model": "iqa-cr-q"}]}))
    two.write_text(yaml.safe_dump({**base, "name": "two", "runs": [{"name": "Y", "model": "iqa-cr-q"}]}))
    assert main(["experiment", str(one), str(two), "--only", "X", "--seed", "1", "--quiet"]) == 2
    assert "row(s) ['X'] have no split seed [1]; seeds: [0]" in capsys.readouterr().err
    assert main(["experiment", str(one), str(two), "--seed", "7", "--quiet"]) == 2
    assert "--seed: no config has split seed(s) [7]; seeds: [0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not any(tmp_path.glob("**/metrics"))


# -- the shipped configs ---------------------------------------------------------------------
def shipped() -> list[Path]:
    return sorted(CONFIGS.glob("*.yaml"))


def test_shipped_configs_parse_and_name_what_they_need(monkeypatch, tmp_path):
    assert {p.name for p in shipped()} >= {"clive_iqa_cr.yaml", "clive_ie_iqa.yaml", "iqa_cr_spaq.yaml", "iqa_cr_koniq.yaml",
                                            "ie_iqa_koniq_tasks.yaml", "ie_iqa_koniq_selection.yaml",
                                            "ie_iqa_koniq_ratios.yaml", "ie_iqa_koniq_scratch.yaml"}
    from contentiqa.experiments import experiment_missing, run_missing

    monkeypatch.setenv("CONTENTIQA_SHARED", str(tmp_path / "shared"))  # an empty shared folder
    monkeypatch.setenv("CONTENTIQA_BIQ2021", str(tmp_path / "biq2021"))  # BIQ2021 lives outside shared
    monkeypatch.delenv("CONTENTIQA_WEIGHTS", raising=False)
    for p in shipped():
        cfg = load_config(p)
        missing = experiment_missing(cfg)
        assert missing and all(str(tmp_path / "shared" / "data") in m or str(tmp_path / "biq2021") in m
                               for m in missing), p
    tasks = load_config(CONFIGS / "ie_iqa_koniq_tasks.yaml")
    assert tasks.test_labels() == ["KonIQ-10k", "SPAQ", "LIVEW", "CID2013", "BID"] and tasks.protocol == "ie-iqa"
    lacking = {r.name: run_missing(tasks, r) for r in tasks.runs}
    assert not lacking["distortion only"] and not lacking["recognition"]
    assert "resnet18_places365" in lacking["scene"][0] and str(tmp_path / "shared" / "weights") in lacking["scene"][0]
    for name in ("iqa_cr_spaq", "iqa_cr_koniq"):
        c = load_config(CONFIGS / f"{name}.yaml")
        assert [r.model for r in c.runs] == ["iqa-cr", "iqa-cr-q", "iqa-cr-c", "mtl-transformer", "mtl-pooled"]
        assert c.seeds == list(range(10)) and c.protocol == "iqa-cr"


def test_clive_configs_match_the_benchmarks():
    """The CLIVE configs reproduce the benchmark tables: same settings as the results files record."""
    results = REPO_ROOT / "benchmarks" / "results"
    iqa = load_config(CONFIGS / "clive_iqa_cr.yaml")
    assert [r.model for r in iqa.runs] == ["iqa-cr", "iqa-cr-q", "iqa-cr-c", "mtl-transformer", "mtl-pooled", "iqa-cr"]
    bench = json.loads((results / "iqa_cr.json").read_text())
    if "runs" in bench:  # regenerated by benchmarks/iqa_cr.py: the runner's results of this very config
        assert {r.name: r.train for r in iqa.runs} == {n: r["train"] for n, r in bench["runs"].items()}
        return
    # the tables published before the benchmarks became configs: same settings as recorded there
    # (content from the pooled tokens: the only head then, pinned since iqa-cr's default reads the levels)
    for r in iqa.runs[:5]:
        assert r.model_args == {"content_from": "tokens"} and r.train == {k: bench["train_config"][k] for k in r.train}
    shipped = json.loads((results / "iqa_cr_sweep_cw0.05_d128.json").read_text())
    assert iqa.runs[5].model_args == {**shipped["model_args"], "content_from": "tokens"}
    assert iqa.runs[5].train == {k: shipped["train_config"][k] for k in iqa.runs[5].train}
    assert iqa.protocol == "iqa-cr" and iqa.seeds == list(range(bench["seeds"]))
    assert iqa.data.labels == REPO_ROOT / "benchmarks" / "results" / "clive_content_labels.csv"
    # keyed by the dataset (images/t1.png): paths from the results folder joined only a checkout beside ../shared
    assert pd.read_csv(iqa.data.labels)["image"].str.fullmatch(r"images/[^/]+").all()
    ie = load_config(CONFIGS / "clive_ie_iqa.yaml")
    recipe = dict(optimizer="sgd", lr=0.03, backbone_lr_scale=0.1, momentum=0.9, weight_decay=1e-4, batch_size=16,
                  score_loss="mse", head_only_epochs=2, warmup_epochs=1, patience=0, crop=None, hflip=True)
    rows = {r.name: r for r in ie.runs}
    assert rows["distortion only"].train == {**recipe, "epochs": 10, "cache_stages": 6}
    ie_bench = json.loads((results / "ie_iqa.json").read_text())["results"]
    k5 = ie_bench["IE-IQA, contribution selection k=5% | distortion backbone pretrained"]
    assert rows["IE-IQA, contribution selection k=5%"].model_args == {"bn_eval": True, **k5["model_args"]}
    assert ie.seeds == list(range(len(k5["runs"])))
    scratch = rows["IE-IQA, contribution selection k=5%, from scratch"]
    scratch_bench = ie_bench["IE-IQA, contribution selection k=5% | distortion backbone scratch"]
    assert scratch.train["cache_stages"] == 0 and scratch.model_args["distortion_pretrained"] is False
    assert scratch.model_args["bn_eval"] is False and scratch.seeds == list(range(len(scratch_bench["runs"])))
    assert ie.protocol == "ie-iqa" and len(ie.runs) == 8


@pytest.mark.shared
def test_clive_configs_are_ready_with_the_shared_data(shared_dir):
    from contentiqa.experiments import experiment_missing, run_missing

    # the configs look where conftest does: $CONTENTIQA_SHARED, else ../shared next to the repository
    for name in ("clive_iqa_cr", "clive_ie_iqa"):
        cfg = load_config(CONFIGS / f"{name}.yaml")
        assert not experiment_missing(cfg) and not any(run_missing(cfg, r) for r in cfg.runs)


def test_a_row_can_start_from_an_earlier_row_of_the_same_split(tmp_path):
    """Linear probing then fine-tuning: row B starts from row A's weights of the same seed, with a
    validation part held out of the train part (val_fraction) that calibrates B."""
    csv = write_csv(tmp_path / "d", 24, (0, 100), seed=5, categories=False)
    train = {"epochs": 1, "batch_size": 4, "crop": None, "cache_stages": 3, "lr": 1e-3, "warmup_epochs": 0.5}
    cfg = {"name": "lpft", "data": {"name": "csv", "root": str(csv), "label": "T", "val_fraction": 0.4},
           "protocol": "ie-iqa", "seeds": [1], "test": ["split"], "model_args": TINY_ARGS, "train": train,
           "runs": [{"name": "A", "model": "iqa-cr-q"},
                    {"name": "B", "model": "iqa-cr-q", "train": {"init_from": "runs/A/seed{seed}/best.pt", "calibrate": True}}]}
    res = run_experiment(cfg, tmp_path / "out", progress=False, log=None)
    b = res.results["runs"]["B"]["splits"][0] if "runs" in res.results else res.results["B"]["splits"][0]
    assert b["train_config"]["init_from"] == str(tmp_path / "out" / "runs" / "A" / "seed1" / "best.pt")
    assert b["calibration"] is not None and b["n_val"] > 0 and b["minutes_per_epoch"] is not None
    md = (tmp_path / "out" / "results.md").read_text()  # it said "80/20, no val part"
    assert "IE-IQA (80/20; 40% of the train part drawn per seed for validation)" in md and "no val part" not in md
    tested = load_checkpoint(tmp_path / "out" / "runs" / "B" / "seed1" / "tested.pt")
    assert tested.cfg.calibration == b["calibration"]
    assert run_experiment(cfg, tmp_path / "out", progress=False, log=None, train=False).results["B"]["seeds"] == [1]
    # A retrained (its best.pt replaced): B's figures came from the old A and are not counted as B's now
    from contentiqa.models.registry import save_checkpoint

    a_best = tmp_path / "out" / "runs" / "A" / "seed1" / "best.pt"
    a = load_checkpoint(a_best)
    # the same weights in another file (the slimmed copy a GPU machine trained B from): still A's
    save_checkpoint(a, a_best, extra={"copied": "elsewhere"})
    assert run_experiment(cfg, tmp_path / "out", progress=False, log=None, train=False).results["B"]["seeds"] == [1]
    with __import__("torch").no_grad():
        next(a.parameters()).add_(0.01)
    save_checkpoint(a, a_best)
    with pytest.raises(ConfigError, match=r"split seed 1 of row 'B' started from .*best.pt as it was before it was replaced"):
        run_experiment(cfg, tmp_path / "out", progress=False, log=None, train=False)
    bad = {**cfg, "runs": [{"name": "C", "model": "iqa-cr-q", "model_args": {**TINY_ARGS, "dim": 32},
                            "train": {"init_from": "runs/A/seed{seed}/best.pt"}}]}
    with pytest.raises(ConfigError, match="another architecture"):
        run_experiment(bad, tmp_path / "out", progress=False, log=None)


def test_validation_table_shows_the_mixed_model_not_the_epoch_before_the_mix(tmp_path):
    """A validation-only config (`test: none`) tables each row's final model: for a row that mixes
    its weights back with its start (``interpolate``), the mix's figures. Mixed at 0 only, row B is
    row A's model again, so it must table A's figures, whatever B's own best epoch scored."""
    csv = write_csv(tmp_path / "d", 24, (0, 100), seed=5, categories=False)
    train = {"epochs": 1, "batch_size": 4, "crop": None, "cache_stages": 3, "lr": 1e-3, "warmup_epochs": 0.5}
    cfg = {"name": "mix", "data": {"name": "csv", "root": str(csv), "label": "T", "val_fraction": 0.4},
           "protocol": "ie-iqa", "seeds": [1], "test": "none", "model_args": TINY_ARGS, "train": train,
           "runs": [{"name": "A", "model": "iqa-cr-q"},
                    {"name": "B", "model": "iqa-cr-q", "train": {"init_from": "runs/A/seed{seed}/best.pt", "lr": 0.05,
                                                                 "interpolate": [0.0]}}]}
    res = run_experiment(cfg, tmp_path / "out", progress=False, log=None).results
    a, b = res["A"]["splits"][0], res["B"]["splits"][0]
    assert b["interpolated"] == 0.0
    assert b["val"]["srocc"] != pytest.approx(a["val"]["srocc"])  # B's epoch moved away from A
    assert b["val_interpolated"]["srocc"] == pytest.approx(a["val"]["srocc"], abs=1e-6)
    table = res["B"]["summary"]["T val"]
    assert table["srocc"]["mean"] == pytest.approx(a["val"]["srocc"], abs=1e-6)


def test_validation_table_shows_the_calibrated_model_and_the_epoch_checkpoint_chose(tmp_path):
    """The validation-only table showed the best epoch's figures from before the calibration (the
    RMSE of the uncalibrated outputs) and, with checkpoint: last, the best epoch's, not the last's:
    not the model the split ends with (tested.pt), which the table is there to choose."""
    from contentiqa.data import load_dataset
    from contentiqa.data.splits import load_splits
    from contentiqa.experiments.runner import carve_val
    from contentiqa.training.evaluate import evaluate_model

    csv = write_csv(tmp_path / "d", 30, (0, 100), seed=6, categories=False)
    train = {"epochs": 3, "batch_size": 4, "crop": None, "cache_stages": 3, "lr": 3e-2, "warmup_epochs": 0.5}
    cfg = {"name": "val", "data": {"name": "csv", "root": str(csv), "label": "T", "val_fraction": 0.4},
           "protocol": "ie-iqa", "seeds": [1], "test": "none", "model_args": TINY_ARGS, "train": train, "checkpoint": "last",
           "runs": [{"name": "calibrated", "model": "iqa-cr-q", "train": {"calibrate": True}},
                    {"name": "last", "model": "iqa-cr-q"}]}
    out = tmp_path / "out"
    res = run_experiment(cfg, out, progress=False, log=None).results
    data = load_dataset("csv", csv)
    split = load_splits(out / "splits.json")[0]
    _, val = carve_val(data.table.iloc[split.indices(data.table, "train")], 0.4, 1)
    for row in ("calibrated", "last"):
        tested = load_checkpoint(out / "runs" / row / "seed1" / "tested.pt")
        direct, _ = evaluate_model(tested, val, data.scale, workers=0)
        table = res[row]["summary"]["T val"]
        for k in ("plcc", "srocc", "rmse"):
            assert table[k]["mean"] == pytest.approx(direct[k], abs=1e-4), (row, k)
    assert res["calibrated"]["splits"][0]["val"]["rmse"] != pytest.approx(res["calibrated"]["summary"]["T val"]["rmse"]["mean"])
    # a split recorded before: the table says what its cells hold, and a run scores it as it ends
    mfile = out / "metrics" / "calibrated" / "seed1.json"
    record = json.loads(mfile.read_text())
    mfile.write_text(json.dumps({k: v for k, v in record.items() if k != "val_tested"}))
    assert "1 split(s) were recorded before" in run_experiment(cfg, out, progress=False, log=None, train=False).markdown
    again = run_experiment(cfg, out, progress=False, log=None)
    assert "recorded before" not in again.markdown
    assert json.loads(mfile.read_text())["val_tested"]["rmse"] == pytest.approx(record["val_tested"]["rmse"], abs=1e-3)


def test_row_folders_stay_short_enough_for_any_file_system():
    from contentiqa.experiments.config import SLUG_MAX, slugify

    assert slugify("IQA-CR, probe + anchors 0.1, calibrated") == "IQA-CR_probe_+_anchors_0.1_calibrated"  # as it always was
    long_a = "Ensemble (harmonic mean) at 512 px: " + "row with a long name, " * 12 + "A"
    long_b = long_a[:-1] + "B"
    a, b = slugify(long_a), slugify(long_b)
    assert len(a) <= SLUG_MAX and len(b) <= SLUG_MAX and a != b  # names differing only at their end
    assert a == slugify(long_a) and a.startswith("Ensemble_harmonic_mean_at_512_px")


def test_validation_share_is_one_rule_for_experiments_and_shipping():
    """carve_val (an experiment's per-seed validation part) and val_positions (what benchmarks/ship.py
    holds out of all the photos) draw the same rows, the rest train, and the draw is the one the
    shipped weights were made with (a change here would change which photos they held out)."""
    from contentiqa.experiments.runner import carve_val, val_positions

    table = pd.DataFrame({"image": [f"{i}.png" for i in range(40)], "mos": np.arange(40.0)})
    for seed in (0, 1, 2):
        train, val = carve_val(table, 0.15, seed)
        assert val["image"].tolist() == table["image"].iloc[val_positions(40, 0.15, seed)].tolist()
        assert sorted(train["image"].tolist() + val["image"].tolist()) == sorted(table["image"].tolist())
        assert len(val) == 6 and train.index.is_monotonic_increasing
        order = np.random.default_rng([seed, 17]).permutation(40)  # the draw as first written
        assert val_positions(40, 0.15, seed).tolist() == sorted(order[:6].tolist())
    assert len(val_positions(3, 0.01, 0)) == 1  # never an empty validation part


def test_a_split_whose_recipe_changed_under_it_is_a_config_error(tiny, tmp_path, capsys):
    """A split resumed with settings its last.pt was not trained with (past the experiment's
    own fingerprint check: here its recipe.json is gone) is one line naming the split."""
    import torch

    from contentiqa.cli.main import main

    root, path, _ = tiny
    out = tmp_path / "out"
    assert main(["experiment", str(path), "--out", str(out), "--quiet"]) in (0, 1)
    last = sorted(out.glob("runs/*/seed0/last.pt"))[0]
    st = torch.load(last, weights_only=False)
    st["train_config"]["lr"] = 123.0
    st["epoch"] = 0 if st["epoch"] > 1 else st["epoch"]
    torch.save(st, last)
    (last.parent / "recipe.json").unlink()
    for f in out.glob("metrics/*/seed0.json"):
        f.unlink()
    capsys.readouterr()
    assert main(["experiment", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "split seed 0" in err and "lr 123.0" in err and "train the split afresh" in err and "Traceback" not in err


def test_sigterm_ends_an_experiment_as_ctrl_c_does(tmp_path, capsys, monkeypatch):
    """A scheduler's SIGTERM (a requeue) killed `experiment` without a word."""
    import os
    import signal

    import contentiqa.experiments as experiments
    from contentiqa.cli.main import main

    def terminated(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the run")

    def unhandled(signum, frame):
        raise RuntimeError("SIGTERM reached the caller: experiment did not handle it")

    monkeypatch.setattr(experiments, "run_experiment", terminated)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {name: csv, root: d.csv}\nmodel: iqa-cr-q\n")
    before = signal.signal(signal.SIGTERM, unhandled)
    try:
        assert main(["experiment", str(cfg), "--out", str(tmp_path / "out"), "--quiet"]) == 143
        assert signal.getsignal(signal.SIGTERM) is unhandled
    finally:
        signal.signal(signal.SIGTERM, before)
    assert "interrupted: rerun the same command to go on" in capsys.readouterr().err


def test_labels_and_row_names_that_meet_as_file_names_are_refused(tiny):
    """Labels 'B C' and 'B_C' shared one split file (8 of 20 photos were in no part); a row
    named '..' wrote beside the experiment's folder, an experiment named '..' beside
    runs/experiments."""
    from contentiqa.experiments import default_out_dir

    _, _, cfg = tiny
    data = [cfg["data"], {**cfg["data"], "label": "B C"}, {**cfg["data"], "label": "B_C"}]
    with pytest.raises(ConfigError, match="distinct as file names"):
        load_config({**cfg, "data": data})
    with pytest.raises(ConfigError, match="distinct as folder names"):
        load_config({**cfg, "runs": [{"name": n, "model": "iqa-cr-q"} for n in ["A B", "A_B"]]})
    # validation parts only, and the ie-iqa protocol draws none: every row trained, the table empty
    with pytest.raises(ConfigError, match="test: none reports validation parts only, .* none for TINY: give it a val_fraction"):
        load_config({**cfg, "test": "none"})
    assert load_config({**cfg, "test": "none", "data": {**cfg["data"], "val_fraction": 0.2}}).tests == []
    for dots in (".", ".."):
        loaded = load_config({**cfg, "name": dots, "runs": [{"name": dots, "model": "iqa-cr-q"}]})
        assert default_out_dir(loaded) == Path("runs/experiments/run") and loaded.runs[0].slug == "run"


def test_several_configs_are_all_read_before_any_trains(tiny, tmp_path, capsys, monkeypatch):
    """A typo in the second config, or --only naming a row of none, surfaced after the first
    had trained."""
    import contentiqa.experiments as experiments
    from contentiqa.cli.main import main

    root, path, cfg = tiny
    ran = []
    monkeypatch.setattr(experiments, "run_experiment", lambda p, *a, **k: ran.append((p, k["only"])) or 1 / 0)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**cfg, "modle": "x"}, sort_keys=False))
    assert main(["experiment", str(path), str(bad), "--quiet"]) == 2
    assert "unknown key" in capsys.readouterr().err and ran == []
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**cfg, "runs": [{"name": "R", "model": "iqa-cr-q"}]}, sort_keys=False)
                     .replace("train/scores.csv", str(root / "train" / "scores.csv"))
                     .replace("${TINY_OTHER_ROOT:-other}", str(root / "other")))
    # both named 'tiny': one results folder, the second's table replacing the first's
    assert main(["experiment", str(path), str(other), "--quiet"]) == 2
    assert "both write runs/experiments/tiny: give one a 'name:'" in capsys.readouterr().err and ran == []
    assert main(["experiment", "--check", str(path), str(other)]) == 2
    assert "invalid  together: " in capsys.readouterr().out
    # the same config named twice runs once, and --check says the same
    monkeypatch.chdir(path.parent)
    assert main(["experiment", "--check", path.name, f"./{path.name}"]) == 1  # its row needing weights: partial
    said = capsys.readouterr().out.splitlines()
    assert len(said) == 1 and said[0].startswith("partial"), said
    other.write_text(other.read_text().replace("name: tiny", "name: other"))
    # a row of the second config whose model cannot be built: refused before the first trains, naming its file
    typo = tmp_path / "typo.yaml"
    typo.write_text(other.read_text().replace("name: other", "name: typo").replace("model: iqa-cr-q", "model: iqa-cr-q\n  model_args: {dimm: 16}"))
    assert main(["experiment", str(path), str(typo), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{typo}: " in err and "dimm" in err and ran == []
    assert main(["experiment", str(path), str(other), "--only", "nope", "--quiet"]) == 2
    assert "no config has row(s) ['nope']" in capsys.readouterr().err and ran == []
    with pytest.raises(ZeroDivisionError):  # only the config that has row R runs, asked for R
        main(["experiment", str(path), str(other), "--only", "R", "--quiet"])
    assert ran == [(other, ["R"])]


def test_rows_that_could_only_fail_later_are_refused_before_any_trains(tmp_path):
    """A misspelt model argument, or init_from weights that no row writes (--only on an LP-FT
    config), failed when that row's turn came: after the rows before it had trained, or as a
    traceback."""
    csv = write_csv(tmp_path / "d", 24, (0, 100), seed=5, categories=False)
    train = {"epochs": 1, "batch_size": 4, "crop": None, "cache_stages": 3, "lr": 1e-3, "warmup_epochs": 0.5}
    cfg = {"name": "early", "data": {"name": "csv", "root": str(csv), "label": "T"}, "protocol": "ie-iqa",
           "seeds": [1], "model_args": TINY_ARGS, "train": train,
           "runs": [{"name": "A", "model": "iqa-cr-q"},
                    {"name": "B", "model": "iqa-cr-q", "model_args": {**TINY_ARGS, "dimm": 8}}]}
    with pytest.raises(ConfigError, match=r"run B: model_args .* cannot build iqa-cr-q: .*dimm"):
        run_experiment(cfg, tmp_path / "out", progress=False, log=None)
    assert not (tmp_path / "out" / "runs" / "A").exists()  # nothing trained
    lpft = {**cfg, "runs": [{"name": "P", "model": "iqa-cr-q"},
                            {"name": "F", "model": "iqa-cr-q", "train": {"init_from": "runs/P/seed{seed}/best.pt"}}]}
    with pytest.raises(ConfigError, match=r"run F, split seed 1: init_from .*best.pt does not exist"):
        run_experiment(lpft, tmp_path / "out2", progress=False, log=None, only=["F"])
    res = run_experiment(lpft, tmp_path / "out2", progress=False, log=None)  # P first, then F: fine
    assert res.results["F"]["seeds"] == [1]


def test_validation_parts_of_a_splits_file_count_as_validation_parts(tmp_path):
    """test: none and monitor were refused before any row trained ("the ie-iqa protocol draws no
    validation part") when the config's splits file held one; a file without one still is."""
    from contentiqa.data import Split, load_dataset, make_splits, save_splits

    csv = write_csv(tmp_path / "d", 24, (0, 100), seed=5, categories=False)
    table = load_dataset("csv", csv).table
    drawn = make_splits(table, "ie-iqa", 1)
    train = drawn.parts["train"]
    held = save_splits(Split("ie-iqa", 1, {"train": train[4:], "val": train[:4], "test": drawn.parts["test"]}),
                       tmp_path / "held.json")
    plain = save_splits(drawn, tmp_path / "plain.json")
    cfg = {"name": "held", "data": {"name": "csv", "root": str(csv), "label": "T"}, "protocol": "ie-iqa",
           "seeds": [1], "splits": str(held), "model_args": TINY_ARGS,
           "train": {"epochs": 1, "batch_size": 4, "crop": None, "cache_stages": 3, "monitor": "srocc"},
           "runs": [{"name": "A", "model": "iqa-cr-q"}]}
    res = run_experiment({**cfg, "test": "none"}, tmp_path / "out", progress=False, log=None)
    assert res.results["A"]["seeds"] == [1] and "srocc" in res.results["A"]["summary"]["T val"]
    with pytest.raises(ConfigError, match="run A: monitor 'srocc' needs a validation part: there is none"):
        run_experiment({**cfg, "splits": str(plain)}, tmp_path / "out2", progress=False, log=None)
    plain_cfg = {**cfg, "splits": str(plain), "test": "none", "train": {**cfg["train"], "monitor": None}}
    with pytest.raises(ConfigError, match="test: none reports validation parts only, and the splits give none for T"):
        run_experiment(plain_cfg, tmp_path / "out2", progress=False, log=None)
    assert not (tmp_path / "out2" / "runs").exists()  # refused before any row trained


def test_a_table_grown_since_its_splits_were_made_is_refused(tmp_path):
    """12 photos appended to the CSV were in no part of the seeds' splits, while the table
    said it was trained on all of them."""
    csv = write_csv(tmp_path / "d", 24, (0, 100), seed=5, categories=False)
    cfg = {"name": "grow", "data": {"name": "csv", "root": str(csv), "label": "T"}, "protocol": "ie-iqa",
           "seeds": [1], "model_args": TINY_ARGS, "train": {"epochs": 1, "batch_size": 4, "crop": None, "cache_stages": 3},
           "runs": [{"name": "A", "model": "iqa-cr-q"}]}
    run_experiment(cfg, tmp_path / "out", progress=False, log=None, train=False)
    bigger = write_csv(tmp_path / "d2", 30, (0, 100), seed=5, categories=False)
    with pytest.raises(ConfigError, match=r"holds 24 of the 30 images .* the table grew"):
        run_experiment({**cfg, "data": {**cfg["data"], "root": str(bigger)}}, tmp_path / "out", progress=False, log=None)


def test_every_string_of_a_config_may_use_environment_variables(tmp_path, monkeypatch):
    """configs/README.md says strings may use ${VAR}: name, label, description, the labels
    switch and training settings were taken as written (init_from even crashed on its {seed})."""
    monkeypatch.delenv("CIQA_NAME", raising=False)
    monkeypatch.setenv("CIQA_DEVICE", "cpu")
    monkeypatch.setenv("CIQA_RUNS", "elsewhere/probe")
    raw = {"name": "${CIQA_NAME:-tiny}", "description": "on ${CIQA_DEVICE}",
           "data": {"name": "csv", "root": "d.csv", "label": "${CIQA_LABEL:-TINY}", "labels": "${CIQA_L:-auto}"},
           "protocol": "${CIQA_PROTOCOL:-ie-iqa}",
           "runs": [{"name": "${CIQA_ROW:-probe}", "model": "${CIQA_MODEL:-iqa-cr-q}", "train": {"device": "${CIQA_DEVICE}"}},
                    {"name": "ft", "model": "iqa-cr-q", "train": {"init_from": "${CIQA_RUNS}/seed{seed}/best.pt"}}]}
    cfg = load_config(raw, tmp_path)
    assert (cfg.name, cfg.description, cfg.data.label, cfg.data.labels_auto) == ("tiny", "on cpu", "TINY", True)
    probe, ft = cfg.runs
    assert (probe.name, probe.model, probe.train["device"], cfg.protocol) == ("probe", "iqa-cr-q", "cpu", "ie-iqa")
    from contentiqa.experiments.runner import _init_file

    assert _init_file(ft, 2, tmp_path / "out") == Path.cwd() / "elsewhere" / "probe" / "seed2" / "best.pt"


@pytest.mark.parametrize("data, protocol", [({"protocol": "official"}, "ie-iqa"), ({}, "iqa-cr")])
def test_a_val_fraction_that_would_do_nothing_is_refused(tmp_path, data, protocol):
    raw = {"protocol": protocol, "data": {"name": "csv", "root": "d.csv", "val_fraction": 0.15, **data},
           "model": "iqa-cr-q"}
    with pytest.raises(ConfigError, match="val_fraction carves a validation part"):
        load_config(raw, tmp_path)
    raw["data"].pop("val_fraction")
    raw["test"] = [{"name": "csv", "root": "o.csv", "val_fraction": 0.1}]
    with pytest.raises(ConfigError, match="val_fraction is for training data"):
        load_config(raw, tmp_path)


def test_a_cache_limit_applied_in_part_says_what_went(tmp_path, monkeypatch):
    import contentiqa.utils.disk_cache as disk_cache
    from contentiqa.experiments.runner import _evict
    from contentiqa.utils.disk_cache import CacheEntry, PruneIncomplete

    gone = CacheEntry(tmp_path / "a", 2048, 1, 0.0, "", True)
    stuck = CacheEntry(tmp_path / "b", 1024, 1, 0.0, "", True)

    def partly(*a, **k):
        raise PruneIncomplete([gone], [(stuck, PermissionError(1, "Operation not permitted"))])

    monkeypatch.setattr(disk_cache, "prune", partly)
    said: list[str] = []
    with pytest.warns(UserWarning, match="could not be removed"):  # said under --quiet too
        _evict(tmp_path, 0, 0.0, said.append)
    assert any("removed the 1 entry" in s for s in said)
    (tmp_path / "mine.txt").write_text("x")  # not a cache folder: nothing removed, and said as a warning
    monkeypatch.undo()
    with pytest.warns(UserWarning, match="cache_limit: not applied: .*does not look like a contentiqa cache"):
        _evict(tmp_path, 0, 0.0, said.append)


def test_a_run_tested_on_its_last_epoch_with_ema_tests_the_moving_average(tmp_path):
    """Without a validation part the experiment tested the last step's raw weights, where
    `contentiqa train` (and best.pt) keep the moving average ema_decay asks for."""
    import torch

    write_csv(tmp_path / "d", 12, (0, 100), seed=1)
    cfg = {"name": "ema", "data": {"name": "csv", "root": str(tmp_path / "d" / "scores.csv"), "label": "D"},
           "protocol": "ie-iqa", "seeds": [0], "test": ["split"], "model_args": TINY_ARGS,
           "train": {"epochs": 2, "batch_size": 4, "crop": 48, "cache_stages": 3, "lr": 1e-2, "ema_decay": 0.5},
           "runs": [{"name": "Q", "model": "iqa-cr-q"}]}
    path = tmp_path / "ema.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    run_experiment(path, tmp_path / "out", progress=False, log=lambda *a: None)
    run = tmp_path / "out" / "runs" / "Q" / "seed0"
    assert json.loads((tmp_path / "out" / "metrics" / "Q" / "seed0.json").read_text())["checkpoint"] == "last"
    tested = load_checkpoint(run / "tested.pt").state_dict()
    last = torch.load(run / "last.pt", weights_only=True)
    ema = {k.removeprefix("module."): v for k, v in last["ema_state"].items() if k.startswith("module.")}
    trained = [k for k, p in load_checkpoint(run / "tested.pt").named_parameters() if p.requires_grad]
    assert trained and all(torch.equal(tested[k], ema[k]) for k in trained)
    assert any(not torch.equal(tested[k], last["model_state"][k]) for k in trained)  # not the raw weights


def test_an_experiment_whose_epochs_were_all_head_only_records_the_head_alone(tmp_path):
    """The results said "backbone stages 3-8 and the head" of a row whose head_only_epochs
    covered every epoch (the backbone at learning rate 0 throughout), as train's run.json did."""
    write_csv(tmp_path / "train", 10, (0, 100), seed=3)
    cfg = {"name": "ho", "data": {"name": "csv", "root": "train/scores.csv", "label": "TINY"}, "protocol": "ie-iqa",
           "seeds": 1, "test": ["split"], "model_args": TINY_ARGS,
           "train": {"epochs": 1, "batch_size": 4, "crop": 48, "cache_stages": 3, "lr": 1e-3, "warmup_epochs": 0.5,
                     "head_only_epochs": 2},
           "runs": [{"name": "IQA-CR-Q", "model": "iqa-cr-q"}]}
    (tmp_path / "ho.yaml").write_text(yaml.safe_dump(cfg))
    run_experiment(tmp_path / "ho.yaml", tmp_path / "out", progress=False, log=None)
    said = json.loads((tmp_path / "out" / "metrics" / "IQA-CR-Q" / "seed0.json").read_text())["trained"]
    assert said.startswith("head only (the backbone's learning rate 0 in all 1 epoch(s)"), said


def test_a_split_that_cannot_be_finished_is_one_error_naming_it(tmp_path, monkeypatch):
    """A calibration refused after training (outputs constant on the validation photos) was a
    traceback that ended the whole experiment."""
    from contentiqa.training.trainer import Trainer

    write_csv(tmp_path / "train", 10, (0, 100), seed=4)
    cfg = {"name": "fin", "data": {"name": "csv", "root": "train/scores.csv", "label": "TINY"}, "protocol": "ie-iqa",
           "seeds": 1, "test": ["split"], "model_args": TINY_ARGS,
           "train": {"epochs": 1, "batch_size": 4, "crop": 48, "cache_stages": 3, "lr": 1e-3, "warmup_epochs": 0.5},
           "runs": [{"name": "IQA-CR-Q", "model": "iqa-cr-q"}]}
    (tmp_path / "fin.yaml").write_text(yaml.safe_dump(cfg))

    def refused(self, model):
        raise ValueError("the model's outputs are constant on the 2 calibration photos (0.5)")

    def replaced(self, model):  # as interpolate() says of a replaced init_from, in the words the runner gave it
        raise ValueError(f"init_from s.pt was replaced since the run started from it: put that file back, or "
                         f"{self.without_the_mix}")

    monkeypatch.setattr(Trainer, "finish", replaced)
    # an experiment's split cannot go on without the mix its row holds: not advised to
    with pytest.raises(ConfigError, match=r"put that file back, or delete .*seed0 to train the split afresh \(the trained epochs"):
        run_experiment(tmp_path / "fin.yaml", tmp_path / "out", progress=False, log=None)
    monkeypatch.setattr(Trainer, "finish", refused)
    with pytest.raises(ConfigError, match=r"run IQA-CR-Q, split seed 0: cannot finish the run: the model's outputs "
                                          r"are constant .* \(the trained epochs are kept for a rerun once the cause "
                                          r"is fixed; to change calibrate or interpolate, rename the row, or delete "
                                          r".*seed0: it is another recipe"):
        run_experiment(tmp_path / "fin.yaml", tmp_path / "out", progress=False, log=None)
