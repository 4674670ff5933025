"""The training benchmarks are experiment configs run by the package's runner: a tiny config goes
through benchmarks/common.run_config_benchmark (what benchmarks/iqa_cr.py and ie_iqa.py call)
end to end: the runner's table copied to the results folder, labels joined by dataset-relative
key, and one row shipped (benchmarks/ship.py) as a self-describing weights tag."""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO_ROOT
from contentiqa.experiments import load_config
from test_experiment import TINY_ARGS, write_csv

BENCH = REPO_ROOT / "benchmarks"
PASSED = {"part": "test", "seeds": [0, 1, 2], "rows": [{"measure": "damage tau blur", "verdict": "better"}]}
"""What a passing gate file holds beside its verdict: the published seeds' test parts, a measure better."""


@pytest.fixture
def common(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCH))
    for mod in ("common", "ship", "ship_gate"):
        sys.modules.pop(mod, None)
    import common as mod

    monkeypatch.setattr(mod, "RESULTS", tmp_path / "results")  # never the repository's results
    (tmp_path / "results").mkdir()
    return mod


def test_benchmark_runs_a_config_and_ships_a_row(common, tmp_path):
    data = tmp_path / "data"
    csv = write_csv(data, 30, (0, 100), seed=3, categories=False)
    # content labels in their own file, keyed by the dataset-relative path (the join the runner does)
    labels = tmp_path / "labels" / "content.csv"
    labels.parent.mkdir()
    table = pd.read_csv(csv, comment="#")
    pd.DataFrame({"image": [f"../data/{p}" for p in table["image"]],
                  "category": ["animal", "human", "plant"] * 10}).to_csv(labels, index=False)
    cfg = {
        "name": "tiny_bench", "data": {"name": "csv", "root": str(csv), "label": "TINY", "labels": str(labels)},
        "protocol": "ie-iqa", "seeds": 1, "test": ["split"], "model_args": TINY_ARGS,
        "train": {"epochs": 1, "batch_size": 4, "crop": 48, "cache_stages": 3, "lr": 1e-3, "warmup_epochs": 0.5},
        "runs": [{"name": "IQA-CR", "model": "iqa-cr"}],
    }
    path = tmp_path / "tiny_bench.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out, weights = tmp_path / "exp", tmp_path / "weights"
    # another config than the benchmark's own (and --only): a check run, written beside the published
    # "tiny" table, and the card's figures are read from what it wrote
    rc = common.run_config_benchmark(path, "tiny", "doc", [str(path), "--only", "IQA-CR", "--out", str(out),
                                                            "--ship", "IQA-CR", "--tag", "t", "--weights-dir",
                                                            str(weights), "--quiet"])
    assert rc == 0
    assert not (tmp_path / "results" / "tiny.json").exists()
    res = json.loads((tmp_path / "results" / "tiny_quick.json").read_text())
    runner = json.loads((out / "results.json").read_text())
    assert res["runs"] == runner["runs"]  # the table's figures are the runner's
    md = (tmp_path / "results" / "tiny_quick.md").read_text()
    assert md.startswith((out / "results.md").read_text()) and "Command:" in md
    split = runner["runs"]["IQA-CR"]["splits"][0]
    assert "accuracy" in split["test"]["TINY"]  # the labels were joined: the content head was scored

    from contentiqa.models import load_checkpoint

    shipped = load_checkpoint(weights / "iqa-cr_t.pt")
    info = shipped.checkpoint_info
    assert info["tag"] == "t" and info["train_config"]["epochs"] == 1
    # IE-IQA protocol (no validation part): every image trains the shipped model
    assert info["trained_on"] == "TINY: 30 images"
    card = (weights / "iqa-cr_t.md").read_text()
    assert "Row \"IQA-CR\"" in card and "SROCC" in card  # figures from the benchmark's results file
    import ship
    import ship_gate

    # what a later gate's baseline is held to: the row's hashes as it shipped
    assert ship.card_recipe(weights / "iqa-cr_t.md") == {"recipe_sha256": ship_gate.row_recipe(out, "IQA-CR"),
                                                        "data_sha256": ship_gate.row_data(out, "IQA-CR")}


def test_shipped_benchmark_configs_parse_and_name_the_published_splits():
    for name, protocol in (("clive_iqa_cr", "iqa-cr"), ("clive_ie_iqa", "ie-iqa"), ("clive_iqa_cr_loss", "iqa-cr"),
                           ("clive_iqa_cr_sweep", "iqa-cr")):
        cfg = load_config(REPO_ROOT / "configs" / f"{name}.yaml")
        assert cfg.protocol == protocol and cfg.splits == BENCH / "results" / f"splits_clive_{protocol}.json"
        from contentiqa.data import load_splits

        have = {s.seed for s in load_splits(cfg.splits) if s.protocol == protocol}
        assert set(cfg.seeds) <= have
    sweep = load_config(REPO_ROOT / "configs" / "clive_iqa_cr_sweep.yaml")
    shipped = next(r for r in sweep.runs if "D = 128" in r.name)
    from contentiqa.models.registry import shipped_weights_path
    from contentiqa.utils.checkpoint_io import load_torch_file

    stored = load_torch_file(shipped_weights_path("iqa-cr.clive"), "checkpoint")
    # the sweep's last row is how iqa-cr.clive was trained
    assert stored["config"]["dim"] == shipped.model_args["dim"] and stored["config"]["mlp_dim"] == shipped.model_args["mlp_dim"]
    for k, v in {**sweep.runs[0].train, **shipped.train}.items():
        assert stored["extra"]["train_config"][k] == v, k


def test_shipping_holds_out_the_validation_and_official_test_parts(common, tmp_path):
    import ship

    csv = write_csv(tmp_path / "d", 20, (0, 100), seed=4, categories=False)
    table = pd.read_csv(csv, comment="#")
    table["split"] = ["test"] * 5 + ["train"] * 15
    table.to_csv(csv, index=False)
    cfg = load_config({"data": {"name": "csv", "root": str(csv), "label": "D"}, "protocol": "official",
                       "model": "iqa-cr-q"}, tmp_path)
    train, val, scales, used = ship.shipping_data(cfg, tmp_path / "work")
    names = lambda t: {p.rsplit("/", 1)[-1] for p in t["image"]}  # noqa: E731
    test_names = {f"{i}.png" for i in range(5)}
    assert not names(train) & test_names and not names(val) & test_names and not names(train) & names(val)
    assert len(train) + len(val) == 15 and len(val) >= 1 and used == [f"D: {len(train)} images (+{len(val)} held out for validation)"]


def test_ship_starts_a_row_from_another_experiments_row_only_from_shipped_weights(common, tmp_path):
    """A row whose ``init_from`` is another experiment's run (a split's model) ships from that row's
    shipped weights, given with --init-from, and never from the split's run."""
    import ship
    import torch

    from contentiqa.models import load_checkpoint

    csv = write_csv(tmp_path / "d", 20, (0, 100), seed=5, categories=False)
    train = {"epochs": 1, "batch_size": 4, "crop": 48, "cache_stages": 3, "lr": 1e-3, "warmup_epochs": 0.5}
    cfg = {"name": "tiny", "data": {"name": "csv", "root": str(csv), "label": "D"}, "protocol": "ie-iqa",
           "seeds": 1, "test": ["split"], "model_args": TINY_ARGS, "train": train,
           "runs": [{"name": "first", "model": "iqa-cr-q"},
                    {"name": "then", "model": "iqa-cr-q",
                     "train": {**train, "lr": 0.0, "init_from": "../other/runs/first/seed{seed}/best.pt"}}]}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    weights = tmp_path / "weights"
    with pytest.raises(SystemExit, match="another experiment's run"):
        ship.ship_row(path, "then", "t", weights_dir=weights, work_dir=tmp_path / "w0")
    with pytest.raises(SystemExit, match="no init_from"):
        ship.ship_row(path, "first", "t", weights_dir=weights, work_dir=tmp_path / "w1", init_from=tmp_path / "x.pt")
    start = ship.ship_row(path, "first", "a", weights_dir=weights, work_dir=tmp_path / "w2")
    shipped = ship.ship_row(path, "then", "b", weights_dir=weights, work_dir=tmp_path / "w3", init_from=start)
    a, b = load_checkpoint(start), load_checkpoint(shipped)
    assert "starting from `iqa-cr-q_a.pt`" in b.checkpoint_info["trained_on"]
    assert b.checkpoint_info["init_from"]["file"] == "iqa-cr-q_a.pt"
    card = (weights / "iqa-cr-q_b.md").read_text()
    # the card says what it started from, and carries that start's own card
    assert "the weights of `iqa-cr-q_a.pt`" in card and "## Started from `iqa-cr-q_a.pt`" in card
    assert "### Model card: `iqa-cr-q.a`" in card
    # at learning rate 0 the shipped head is the one it started from
    head = [k for k in a.state_dict() if "head" in k or "regressor" in k]
    assert head and all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in head)
    # its work folder holds a run of other settings (the row edited since): one line, not a traceback
    cfg["runs"][0]["train"] = {"lr": 5e-4}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    with pytest.raises(SystemExit, match="ship.py: cannot go on training 'first': .*was trained with"):
        ship.ship_row(path, "first", "c", weights_dir=weights, work_dir=tmp_path / "w2")


def test_ship_gate_judges_by_the_seeds_spread(common):
    import ship_gate

    base = [{"CLIVE SROCC": v, "damage tau blur": t, "clipped %": 2.0} for v, t in ((0.78, -0.7), (0.80, -0.8), (0.79, -0.75))]
    same_but_better_damage = [{"CLIVE SROCC": v, "damage tau blur": -0.99, "clipped %": 0.0} for v in (0.79, 0.78, 0.80)]
    rows, verdict = ship_gate.compare(base, same_but_better_damage)
    by = {r["measure"]: r for r in rows}
    assert by["CLIVE SROCC"]["verdict"] == "same" and by["damage tau blur"]["verdict"] == "better"  # lower tau is better
    assert by["clipped %"]["verdict"] == "better" and by["clipped %"]["target_met"]
    assert verdict == "PASS"
    worse = [{**r, "CLIVE SROCC": r["CLIVE SROCC"] - 0.05} for r in same_but_better_damage]
    rows, verdict = ship_gate.compare(base, worse)
    assert verdict == "FAIL" and {r["measure"]: r["verdict"] for r in rows}["CLIVE SROCC"] == "WORSE"
    assert {r["measure"]: r for r in rows}["CLIVE SROCC"]["target"] == ">= 0.84"  # the product default's
    # iqa-cr's quality target is the 0.82, and the default's PLCC and BIQ2021 ones are not its
    by = {r["measure"]: r for r in ship_gate.compare(base, worse, ship_gate.targets_for("iqa-cr"))[0]}
    assert by["CLIVE SROCC"]["target"] == ">= 0.82"
    assert "CLIVE PLCC" not in ship_gate.targets_for("iqa-cr") and "CLIVE PLCC" in ship_gate.targets_for("ie-iqa")
    rows, verdict = ship_gate.compare(base, base)
    assert verdict == "FAIL"  # better on nothing
    # the table says which photos judged: a verdict on validation parts is a choice, never a gate
    payload = {"name": "m", "verdict": verdict, "rows": rows, "seeds": [0, 1, 2], "command": "c", "minutes": 1.0,
               "provenance": {"machine": "x", "date": "d"}, "candidate": {"row": "a", "runs": "r", "precision": "fp32"},
               "baseline": {"row": "b", "runs": "r", "precision": "fp32"}}
    test_md, val_md = ship_gate.markdown({**payload, "part": "test"}), ship_gate.markdown({**payload, "part": "val"})
    assert "test part (20 %)" in test_md and "validation" not in test_md
    assert "validation parts: choosing" in val_md and "test part" not in val_md


def test_ship_gate_proves_no_worse_on_every_measure_or_fails(common):
    import ship_gate

    base = [{"CLIVE SROCC": v, "damage tau blur": -0.8, "CLIVE content top-1": 0.7} for v in (0.78, 0.80, 0.79)]
    better = [{**r, "damage tau blur": -0.99} for r in base]
    assert ship_gate.compare(base, better)[1] == "PASS"
    no_content = [{k: v for k, v in r.items() if "content" not in k} for r in better]
    rows, verdict = ship_gate.compare(base, no_content)  # the default would lose its content
    assert verdict == "FAIL" and {r["measure"]: r["verdict"] for r in rows}["CLIVE content top-1"] == "WORSE"
    nan_seed = [{**r, "CLIVE SROCC": x} for r, x in zip(better, (0.5, float("nan"), 0.5))]
    rows, verdict = ship_gate.compare(base, nan_seed)  # a NaN must not hide a loss
    assert verdict == "FAIL" and {r["measure"]: r["verdict"] for r in rows}["CLIVE SROCC"] == "WORSE"
    with pytest.raises(ValueError, match="two seeds"):
        ship_gate.compare(base[:1], better[:1])  # no spread: any difference would decide


def test_ship_reads_only_a_test_part_gate_of_the_published_seeds(common, tmp_path):
    import ship

    row = {"measure": "damage tau blur", "verdict": "better"}
    gate = {"name": "ie-iqa", "part": "test", "seeds": [0, 1, 2], "verdict": "PASS", "candidate": {"row": "R"}, "rows": [row]}
    path = tmp_path / "g.json"
    for change, ok in (({}, True), ({"part": "val"}, False), ({"seeds": [0]}, False),
                       ({"rows": [row, {"measure": "CLIVE SROCC", "verdict": "WORSE"}]}, False),
                       ({"rows": [{"measure": "CLIVE SROCC", "verdict": "same"}]}, False)):
        path.write_text(json.dumps({**gate, **change}))
        assert ship.gate_verdict("ie-iqa", "R", path)[0] is ok, change


def test_ship_refuses_a_row_edited_or_weights_retrained_since_the_gate_judged_them(common, tmp_path):
    import ship
    import ship_gate

    def row(**train):
        cfg = {"data": {"name": "csv", "root": "d.csv"}, "protocol": "official", "train": {"lr": 0.01, "epochs": 3},
               "runs": [{"name": "R", "model": "ie-iqa", "model_args": {"input_size": 64}, "train": train}]}
        (tmp_path / "runs").mkdir(exist_ok=True)
        (tmp_path / "runs" / "config.yaml").write_text(yaml.safe_dump(cfg))
        return ship_gate.row_recipe(tmp_path / "runs", "R")

    judged = row(rank_weight=1.0)
    assert judged == row(rank_weight=1.0) and ship_gate.row_recipe(tmp_path / "runs", "other row") is None
    assert row(rank_weight=0.5) != judged and row(rank_weight=1.0, epochs=4) != judged  # the merged settings count
    gate = {**PASSED, "verdict": "PASS", "candidate": {"row": "R", "recipe_sha256": judged,
                                                       "tested_sha256": {"0": "a" * 64, "1": "b" * 64}}}
    path = tmp_path / "g.json"
    path.write_text(json.dumps(gate))
    assert ship.gate_verdict("ie-iqa", "R", path, recipe=judged, tested=(1, "b" * 64))[0]
    ok, why = ship.gate_verdict("ie-iqa", "R", path, recipe=row(rank_weight=0.5))
    assert not ok and "row changed since" in why
    ok, why = ship.gate_verdict("ie-iqa", "R", path, recipe=judged, tested=(0, "c" * 64))
    assert not ok and "seed 0" in why and "retrained since" in why
    # a gate written before it recorded what it judged: passes, and says what was not compared
    del gate["candidate"]["recipe_sha256"]
    path.write_text(json.dumps(gate))
    ok, why = ship.gate_verdict("ie-iqa", "R", path, recipe=judged)
    assert ok and "not compared" in why
    # --from-run: the weights it ships are hashed from the run folder
    run = tmp_path / "exp" / "runs" / "r" / "seed1"
    run.mkdir(parents=True)
    (run / "best.pt").write_bytes(b"best")
    with pytest.raises(SystemExit, match="config.json is missing"):  # the card's settings: said before any work
        ship.shipped_weights(run)
    (run / "config.json").write_text("{}")
    (run / "metrics.jsonl").write_text("")
    assert ship.shipped_weights(run)[0] == 1 and ship.run_weights(run).name == "best.pt"
    (run / "tested.pt").write_bytes(b"tested")
    import hashlib

    assert ship.run_weights(run).name == "tested.pt"
    assert ship.shipped_weights(run) == (1, hashlib.sha256(b"tested").hexdigest()) and ship.shipped_weights(None) is None
    with pytest.raises(SystemExit, match="not an experiment's run folder"):
        ship.shipped_weights(tmp_path / "exp")


def test_ship_gates_the_package_folder_however_it_is_spelt(common, monkeypatch):
    import ship

    monkeypatch.chdir(REPO_ROOT)
    argv = ["configs/multi_finetune.yaml", "--row", "IE-IQA, linear probe", "--tag", "x", "--default"]
    for spelling in ("src/contentiqa/weights", "src/contentiqa/../contentiqa/weights"):
        with pytest.raises(SystemExit, match="refusing to replace the default"):
            ship.main(argv + ["--weights-dir", spelling])


def test_ship_gate_judges_a_content_model_by_peoples_labels_too(common):
    import os

    import ship_gate

    clive = [(f"/p/c{i}.png", float(i)) for i in range(6)]
    biq = [(f"/p/b{i}.png", float(i)) for i in range(6)]
    labels = {os.path.abspath(p): (main, every) for (p, _), main, every in zip(
        clive, ["human", "animal", "plant", "human", "others", "cityscape"],
        [{"human"}, {"animal", "plant"}, {"plant"}, {"human", "others"}, {"others"}, {"cityscape"}])}
    images = {"clive": clive, "damage": [], "bad": [], "labels": labels}
    scores = {os.path.abspath(p): m for p, m in clive + biq}
    said = ["human", "plant", "plant", "others", "animal", "cityscape"]  # top-1: 3 of 6; any label: 5 of 6
    content = {**scores, **{"category:" + os.path.abspath(p): c for (p, _), c in zip(clive, said)}}
    got = ship_gate.measures(content, images, biq)
    assert got["CLIVE content top-1"] == pytest.approx(0.5) and got["CLIVE content any label"] == pytest.approx(5 / 6)
    plain = ship_gate.measures(scores, images, biq)  # a model without a content head has no such measure
    assert "CLIVE content top-1" not in plain
    rows, _ = ship_gate.compare([got] * 3, [got] * 3)
    assert {r["measure"]: r.get("target") for r in rows}["CLIVE content top-1"] == ">= 0.72"
    rows, _ = ship_gate.compare([plain] * 3, [got] * 3)  # compared on what both sides have
    assert "CLIVE content top-1" not in {r["measure"] for r in rows}


def test_ship_gate_rescores_when_its_stored_scores_miss_an_image(common, tmp_path, monkeypatch):
    import subprocess

    import ship_gate

    calls = []

    def fake_score(cmd, **kwargs):
        out = cmd[cmd.index("-o") + 1]
        files = cmd[cmd.index("-q") + 1:]
        calls.append(files)
        broken = [f for f in files if f.endswith("bad.png")] if len(calls) == 1 else []
        rows = ["path,score,precision,error"] + [f"{f},,fp32,cannot identify image file" if f in broken
                                                 else f"{f},{i}.0,fp32," for i, f in enumerate(files)]
        Path(out).write_text("\n".join(rows) + "\n")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(ship_gate.subprocess, "run", fake_score)
    out = tmp_path / "scores.csv"
    val = [str(tmp_path / "v0.png"), str(tmp_path / "v1.png")]
    test = [str(tmp_path / "t0.png")]
    assert set(ship_gate.score_files(Path("m.pt"), val, out)) == {*val, "__precision__"}
    ship_gate.score_files(Path("m.pt"), val, out)
    assert len(calls) == 1  # the same images: the stored scores serve
    got = ship_gate.score_files(Path("m.pt"), test, out)  # other images (another part): scored afresh
    assert len(calls) == 2 and str(tmp_path / "t0.png") in got
    # a photo that failed (unreadable then) is scored again on the next run, not failed from the table
    calls.clear()
    bad = [str(tmp_path / "bad.png")]
    out2 = tmp_path / "bad_scores.csv"
    with pytest.raises(SystemExit, match="bad.png could not be scored.*bad_scores.csv"):
        ship_gate.score_files(Path("m.pt"), [*test, *bad], out2)
    # the failed photo not asked for again (another part): the stored scores of the rest serve
    assert str(tmp_path / "t0.png") in ship_gate.score_files(Path("m.pt"), test, out2) and len(calls) == 1
    assert bad[0] in ship_gate.score_files(Path("m.pt"), bad, out2) and len(calls) == 2


def test_ship_gate_writes_a_rejected_candidate_beside_the_passing_record(common, tmp_path, monkeypatch):
    import ship_gate

    monkeypatch.setattr(ship_gate, "RESULTS", tmp_path)
    base = [{"CLIVE SROCC": 0.80 + 0.01 * i} for i in range(3)]
    rows, verdict = ship_gate.compare(base, base)
    payload = {"name": "m", "verdict": "PASS", "rows": rows, "seeds": [0, 1, 2], "command": "c", "minutes": 1.0,
               "provenance": {"machine": "x", "date": "d"}, "candidate": {"row": "passed", "runs": "r", "precision": "fp32"},
               "baseline": {"row": "b", "runs": "r", "precision": "fp32"}, "part": "test"}
    assert ship_gate.write_results(payload) == tmp_path / "ship_gate_m"
    record = (tmp_path / "ship_gate_m.json").read_text()
    assert "passed" in (tmp_path / "ship_gate.md").read_text()
    rejected = {**payload, "verdict": "FAIL", "candidate": {**payload["candidate"], "row": "rejected"}}
    stem = ship_gate.write_results(rejected, tmp_path / "ship_gate_m_rejected_x.md")
    assert stem == tmp_path / "ship_gate_m_rejected_x"
    assert "rejected" in (tmp_path / "ship_gate_m_rejected_x.md").read_text()
    assert json.loads((tmp_path / "ship_gate_m_rejected_x.json").read_text())["verdict"] == "FAIL"
    # the passing gate's record and the summary ship.py and readers use are untouched
    assert (tmp_path / "ship_gate_m.json").read_text() == record
    assert "rejected" not in (tmp_path / "ship_gate.md").read_text()
    # a newer gate that passed, written beside the record with --out (a default may ship under it): the
    # summary shows it in the record's place, and the record itself stays
    newer = {**payload, "candidate": {**payload["candidate"], "row": "newer"}, "provenance": {"machine": "x", "date": "e"}}
    ship_gate.write_results(newer, tmp_path / "ship_gate_m_512")
    summary = (tmp_path / "ship_gate.md").read_text()
    assert "newer" in summary and "passed" not in summary and "rejected" not in summary
    assert (tmp_path / "ship_gate_m.json").read_text() == record
    # validation parts go to selection_<name> unless told otherwise
    assert ship_gate.write_results({**payload, "part": "val"}) == tmp_path / "selection_m"
    # a dot inside the stem is kept (not taken for a suffix)
    ship_gate.write_results({**payload, "part": "val"}, tmp_path / "selection_m_anchors0.3")
    assert (tmp_path / "selection_m_anchors0.3.md").is_file() and (tmp_path / "selection_m_anchors0.3.json").is_file()


def test_ship_gate_reads_the_defaults_measures_from_an_earlier_gate(common, tmp_path):
    import ship_gate

    earlier = {"part": "test", "seeds": [0, 1, 2], "provenance": {"git_commit": "abc"},
               "candidate": {"row": "default recipe", "precision": "fp32", "recipe_sha256": "r" * 64},
               "baseline": {"row": "older", "precision": "int8"},
               "per_seed": {"candidate": [{"CLIVE SROCC": 0.79}] * 3, "baseline": [{"CLIVE SROCC": 0.78}] * 3}}
    path = tmp_path / "ship_gate_m.json"
    path.write_text(json.dumps(earlier))
    measures, precision, where, identity = ship_gate.recorded_measures(path, "default recipe", [0, 1, 2], "test")
    assert measures == earlier["per_seed"]["candidate"] and precision == "fp32" and "abc" in where
    assert identity == {"recipe_sha256": "r" * 64}  # carried into the new gate's baseline, for ship.py
    assert ship_gate.recorded_measures(path, "older", [0, 1, 2], "test")[3] == {}
    assert ship_gate.recorded_measures(path, "older", [0, 1, 2], "test")[1] == "int8"
    with pytest.raises(SystemExit, match="no side of it is the row"):
        ship_gate.recorded_measures(path, "another", [0, 1, 2], "test")
    with pytest.raises(SystemExit, match="needs part 'val'"):  # validation measures never stand in for test ones
        ship_gate.recorded_measures(path, "default recipe", [0, 1, 2], "val")
    with pytest.raises(SystemExit, match="seeds"):
        ship_gate.recorded_measures(path, "default recipe", [0, 1], "test")
    # a side that was itself read from an earlier gate names that gate and the commit that scored it
    carried = {**earlier, "provenance": {"git_commit": "later"},
               "baseline": {"row": "older", "precision": "int8", "runs": "ship_gate_x.json (candidate there, scored at "
                                                                          "commit first)"}}
    path.write_text(json.dumps(carried))
    assert ship_gate.recorded_measures(path, "older", [0, 1, 2], "test")[2] == carried["baseline"]["runs"]
    assert "scored at commit later" in ship_gate.recorded_measures(path, "default recipe", [0, 1, 2], "test")[2]


def test_ship_refuses_to_replace_a_default_the_gate_did_not_pass(common, tmp_path, monkeypatch):
    import ship

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"name": "c", "data": {"name": "csv", "root": str(tmp_path / "none.csv")},
                                   "protocol": "ie-iqa", "runs": [{"name": "R", "model": "ie-iqa"}]}))
    shipped = []
    monkeypatch.setattr(ship, "ship_row", lambda *a, **k: shipped.append(a))
    monkeypatch.setattr(ship, "WEIGHTS", tmp_path / "weights")
    (tmp_path / "weights").mkdir()
    argv = [str(cfg), "--row", "R", "--tag", "new", "--default", "--weights-dir", str(tmp_path / "weights")]
    with pytest.raises(SystemExit, match="no ship gate has been run"):
        ship.main(argv)
    gate = common.RESULTS / "ship_gate_ie-iqa.json"
    gate.write_text(json.dumps({"verdict": "FAIL", "candidate": {"row": "R"},
                                "rows": [{"measure": "CLIVE SROCC", "verdict": "WORSE"}]}))
    with pytest.raises(SystemExit, match="worse on: CLIVE SROCC"):
        ship.main(argv)
    assert not shipped
    ship.main(argv + ["--override-gate"])
    gate.write_text(json.dumps({"verdict": "PASS", "candidate": {"row": "R"}, **PASSED}))
    ship.main(argv)
    assert len(shipped) == 2
    assert json.loads((tmp_path / "weights" / "defaults.json").read_text()) == {"ie-iqa": "new"}
    elsewhere = tmp_path / "ship_gate_elsewhere.json"  # a gate written with --out: read where it is
    elsewhere.write_text(json.dumps({"verdict": "PASS", "candidate": {"row": "S"}, **PASSED}))
    assert ship.gate_verdict("ie-iqa", "S", elsewhere)[0] and not ship.gate_verdict("ie-iqa", "S")[0]


def test_every_script_that_ships_over_a_default_asks_the_gate_first(common, tmp_path, monkeypatch):
    """benchmarks/iqa_cr.py / ie_iqa.py --ship and content_head.py --ship wrote over a model's
    default tag without the gate ship.py asks for: they ask the same, before any training."""
    import ship

    from contentiqa.models.registry import model_entry

    monkeypatch.setattr(ship, "WEIGHTS", tmp_path / "weights")
    (tmp_path / "weights").mkdir()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"name": "c", "data": {"name": "csv", "root": str(tmp_path / "none.csv")},
                                   "protocol": "ie-iqa", "runs": [{"name": "R", "model": "ie-iqa"}]}))
    argv = [str(cfg), "--results", "t", "--out", str(tmp_path / "exp"), "--ship", "R", "--weights-dir",
            str(tmp_path / "weights")]
    with pytest.raises(SystemExit, match="refusing to replace the default of ie-iqa: no ship gate"):
        common.run_config_benchmark(cfg, "t", "doc", argv + ["--tag", model_entry("ie-iqa").default_tag])
    with pytest.raises(SystemExit, match="no row 'Q' to --ship"):
        common.run_config_benchmark(cfg, "t", "doc", argv[:-3] + ["Q", "--tag", "beside"])
    assert not (tmp_path / "exp").exists()  # refused before the experiment ran
    import content_head

    with pytest.raises(SystemExit, match="refusing to replace the default of iqa-cr"):
        content_head.main(["--ship", "--row", "R", "--tag", model_entry("iqa-cr").default_tag,
                           "--weights-dir", str(tmp_path / "weights"), "--work", str(tmp_path / "work")])
    assert not list((tmp_path / "weights").iterdir())


def test_ensemble_ships_only_a_gated_recipe_and_can_make_it_the_default(common, tmp_path):
    """benchmarks/ensemble.py --ship refuses a recipe its gate did not pass; with --default the tag
    becomes the name's default in the weights folder it wrote to."""
    sys.modules.pop("ensemble", None)
    import ensemble as ens_bench

    from contentiqa.models import load_checkpoint

    weights = tmp_path / "weights"
    weights.mkdir()
    gate = tmp_path / "ship_gate_pair"
    # the row the gate judged is the one the members' cards, weights, mean and size make
    R = ens_bench.built_row(["ie-iqa-distortion", "iqa-cr"], "harmonic", 64, [2, 1])
    assert R.startswith("Ensemble (harmonic mean, weights 2:1) at 64 px: ") and "?" not in R
    gate.with_suffix(".json").write_text(json.dumps({"verdict": "FAIL", "candidate": {"row": R}, "rows": []}))
    argv = ["--ship", "--name", "ie-iqa-distortion+iqa-cr", "--tag", "t", "--members", "ie-iqa-distortion",
            "iqa-cr", "--weights", "2", "1", "--input-size", "64", "--row", R, "--gate", str(gate), "--default"]
    with pytest.raises(SystemExit, match="refusing to ship.*better on nothing"):
        ens_bench.main(argv)
    assert not list(weights.iterdir())
    gate.with_suffix(".json").write_text(json.dumps({"verdict": "PASS", "candidate": {"row": R}, **PASSED}))
    # a passed row shipped with other weights (or size, mean, members) is another model: refused
    with pytest.raises(SystemExit, match="refusing to ship.*is not the gated row"):
        ens_bench.main([*argv[:8], "--weights", "1", "1", *argv[11:]])
    assert not list(weights.iterdir())
    ens_bench.ship("ie-iqa-distortion+iqa-cr", "t", ["ie-iqa-distortion", "iqa-cr"], R, weights=[2, 1],
                   input_size=64, gate=gate, default=True, weights_dir=weights)
    assert json.loads((weights / "defaults.json").read_text()) == {"ie-iqa-distortion+iqa-cr": "t"}
    built = load_checkpoint(weights / "ie-iqa-distortion+iqa-cr_t.pt")
    assert built.fixed_input_size == (64, 64) and [m.model_name for m in built.members] == ["ie-iqa-distortion",
                                                                                             "iqa-cr"]
    assert "`ie-iqa-distortion` (0.67), `iqa-cr` (0.33)" in (weights / "ie-iqa-distortion+iqa-cr_t.md").read_text()


def test_the_default_tag_is_what_defaults_json_names(monkeypatch):
    from contentiqa.models import registry

    monkeypatch.setattr(registry, "shipped_default_tags", lambda: {"toy": "b"})

    @registry.register_model("toy", weights={"a": "toy_a.pt", "b": "toy_b.pt"})
    def toy(**kw):  # pragma: no cover - never built
        """A toy entry."""
        raise AssertionError

    try:
        assert registry._REGISTRY["toy"].default_tag == "b"
    finally:
        registry._REGISTRY.pop("toy", None)


def test_gpu_collect_carries_models_both_ways_without_the_imagenet_weights(monkeypatch, tmp_path):
    """benchmarks/gpu/collect.py: a row's checkpoints, slimmed under the device's transfer
    limits and joined back where a results folder (or a GPU row's init_from) looks for them,
    score exactly as before; only what the pip-installed weights re-create is left out."""
    import torch

    from contentiqa.experiments.config import slugify
    from contentiqa.models import create_model
    from contentiqa.models.registry import load_checkpoint, save_checkpoint

    monkeypatch.syspath_prepend(str(BENCH / "gpu"))
    sys.modules.pop("collect", None)
    import collect

    torch.manual_seed(0)
    model = create_model("ie-iqa", pretrained=False, hidden=(16, 8), fusion="add", fusion_layer=2)
    with torch.no_grad():
        for p in model.head_parameters():
            p.add_(0.01 * torch.randn_like(p))
    row = "A probe, then more"
    there = tmp_path / "there"
    for seed in (0, 1, 2):
        save_checkpoint(model, there / "runs" / slugify(row) / f"seed{seed}" / "best.pt")
    for seed in (0, 1):  # seed 2 is unfinished: its best.pt must not travel as a start
        (there / "metrics" / slugify(row)).mkdir(parents=True, exist_ok=True)
        (there / "metrics" / slugify(row) / f"seed{seed}.json").write_text("{}")
    full = (there / "runs" / slugify(row) / "seed0" / "best.pt").stat().st_size
    collect.slim(there, [row], tmp_path / "pieces", name="best.pt")
    pieces = sorted((tmp_path / "pieces").glob("weights.tar.*"))
    assert pieces and sum(p.stat().st_size for p in pieces) < full / 4
    collect.join(tmp_path / "pieces", tmp_path / "here")
    assert not (tmp_path / "here" / "runs" / slugify(row) / "seed2").exists()
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    for seed in (0, 1):
        back = load_checkpoint(tmp_path / "here" / "runs" / slugify(row) / f"seed{seed}" / "best.pt")
        with torch.no_grad():
            torch.testing.assert_close(back(x)["score"], model(x)["score"], rtol=0, atol=0)
    assert not list((tmp_path / "here" / "runs").rglob("tested.pt"))  # only what was asked for
    # a split finished here is kept (the table's figures and the gated model would come from two
    # trainings); a damaged or incomplete archive puts nothing in place
    here = tmp_path / "here2"
    (here / "metrics" / slugify(row)).mkdir(parents=True)
    (here / "metrics" / slugify(row) / "seed0.json").write_text('{"mine": 1}')
    collect.join(tmp_path / "pieces", here)
    assert not (here / "runs" / slugify(row) / "seed0" / "best.pt").exists()
    assert (here / "runs" / slugify(row) / "seed1" / "best.pt").is_file()
    # an interrupted split here (a partial best.pt's folder, no metrics) becomes the archive's whole
    (here / "runs" / slugify(row) / "seed1" / "last.pt").write_bytes(b"partial")
    collect.join(tmp_path / "pieces", here, replace=True)
    assert (here / "runs" / slugify(row) / "seed0" / "best.pt").is_file()
    assert not (here / "metrics" / slugify(row) / "seed0.json").exists()  # the split is the GPU's whole
    assert not (here / "runs" / slugify(row) / "seed1" / "last.pt").exists()
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "weights.tar.00").write_bytes(pieces[0].read_bytes()[:2000])
    with pytest.raises(SystemExit, match="damaged or incomplete archive"):
        collect.join(cut, tmp_path / "here3")
    assert not (tmp_path / "here3" / "runs").exists()
    (cut / "weights.tar.00").rename(cut / "weights.tar.01")
    with pytest.raises(SystemExit, match="not 00..NN"):
        collect.join(cut, tmp_path / "here3")


def test_gpu_pack_lists_the_files_the_loaders_read(monkeypatch, tmp_path):
    """pack.py named BIQ2021's CSV itself (a Test.csv the loader reads was a traceback) and
    required clive-dev's scene labels (made where absent), after deleting the old chunks."""
    from conftest import write_image
    from test_generalization import make_biq2021

    monkeypatch.syspath_prepend(str(BENCH / "gpu"))
    sys.modules.pop("pack", None)
    import pack

    biq = tmp_path / "biq"
    make_biq2021(biq)
    (biq / "Test (Images and MOS).csv").rename(biq / "Test.csv")
    clive = tmp_path / "shared" / "data" / "clive-dev"
    write_image(clive / "images" / "1.png", 32, 32)
    (clive / "scores.csv").write_text("image,mos\nimages/1.png,50\n")
    listed = dict((rel, src) for src, rel in pack.files(tmp_path / "shared", biq))
    assert listed["biq2021/Test.csv"] == biq / "Test.csv" and "shared/data/clive-dev/scene_labels.csv" not in listed
    (clive / "scores.csv").unlink()
    with pytest.raises(FileNotFoundError, match="scores.csv"):
        pack.files(tmp_path / "shared", biq)


def test_ensemble_rows_become_a_gateable_folder_and_cores_counts_each_members_passes(common, tmp_path):
    """benchmarks/ensemble.py turns two rows' tested models into each seed's ensemble, where the ship
    gate looks for a row's models; cores.py times one backbone pass per member input size."""
    import torch

    from contentiqa.experiments.config import slugify
    from contentiqa.models import build_ensemble, create_model, load_checkpoint
    from contentiqa.models.registry import save_checkpoint

    sys.modules.pop("ensemble", None)
    sys.modules.pop("cores", None)
    import cores
    import ensemble as ens_bench

    torch.manual_seed(0)
    ie = create_model("ie-iqa-distortion", pretrained=False, distortion_pretrained=False, hidden=(8, 4), input_size=64)
    cr = create_model("iqa-cr", pretrained=False, backbone_pretrained=False, dim=16, heads=2, mlp_dim=32, grid=(2, 2),
                      depth=1)
    runs = tmp_path / "runs"
    for row, model in (("A", ie), ("B", cr)):
        for seed in (0, 1):
            save_checkpoint(model, runs / "runs" / slugify(row) / f"seed{seed}" / "tested.pt")
    (runs / "config.yaml").write_text("data: []\n")
    row = ens_bench.build_from_runs(runs, ["A", "B"], "ie-iqa-distortion+iqa-cr", tmp_path / "out")
    for seed in (0, 1):
        built = load_checkpoint(tmp_path / "out" / "runs" / slugify(row) / f"seed{seed}" / "tested.pt")
        assert [m.model_name for m in built.members] == ["ie-iqa-distortion", "iqa-cr"]
    assert (tmp_path / "out" / "config.yaml").is_file()
    with pytest.raises(SystemExit, match="train the row"):
        ens_bench.build_from_runs(runs, ["A", "missing"], "ensemble", tmp_path / "out2")
    # A row of another experiment on the same splits joins through its own folder; other splits do not.
    other = tmp_path / "other"
    for seed in (0, 1):
        save_checkpoint(ie, other / "runs" / slugify("C") / f"seed{seed}" / "tested.pt")
    (runs / "config.yaml").write_text("splits: s.json\ndata: []\n")
    (other / "config.yaml").write_text("splits: s.json\n")
    three = ens_bench.build_from_runs(runs, ["A", "B", "C"], "ensemble", tmp_path / "out3", weights=[2, 1, 1],
                                      member_runs=[runs, runs, other])
    built = load_checkpoint(tmp_path / "out3" / "runs" / slugify(three) / "seed1" / "tested.pt")
    assert [m.model_name for m in built.members] == ["ie-iqa-distortion", "iqa-cr", "ie-iqa-distortion"]
    (other / "config.yaml").write_text("splits: t.json\n")
    with pytest.raises(SystemExit, match="held out different photos"):
        ens_bench.build_from_runs(runs, ["A", "B", "C"], "ensemble", tmp_path / "out4", member_runs=[runs, runs, other])
    # Validation parts judged (runs carves 0.15): a member that carved another share is refused.
    (runs / "config.yaml").write_text("splits: s.json\ndata: [{val_fraction: 0.15}]\n")
    (other / "config.yaml").write_text("splits: s.json\ndata: {val_fraction: 0.1}\n")
    with pytest.raises(SystemExit, match="held out different photos"):
        ens_bench.build_from_runs(runs, ["A", "B", "C"], "ensemble", tmp_path / "out6", member_runs=[runs, runs, other])
    with pytest.raises(SystemExit, match="3 rows but 2"):
        ens_bench.build_from_runs(runs, ["A", "B", "C"], "ensemble", tmp_path / "out5", member_runs=[runs, other])
    def sizes(model):
        return [p.size for p in cores.backbone_passes(model)]

    assert sizes(ie) == [64] and sizes(cr) == [cores.PHOTO_SIDE]
    assert sizes(build_ensemble([ie, cr])) == [64, cores.PHOTO_SIDE]
    assert sizes(build_ensemble([ie, cr], input_size=64)) == [64, 64]  # other weights: two passes
    shared_cr = copy.deepcopy(cr)
    shared_cr.backbone.load_state_dict(ie.distortion.state_dict())
    assert sizes(build_ensemble([ie, shared_cr], input_size=64)) == [64]  # one shared pass
    ie96 = create_model("ie-iqa-distortion", pretrained=False, distortion_pretrained=False, hidden=(8, 4), input_size=96)
    # a member of another size gets the input resized and makes its own pass
    assert sizes(build_ensemble([ie, shared_cr, ie96], input_size=64)) == [64, 96]
    # a member sharing only its first stages runs only its own deep stages, from the shared ones' output
    tuned = copy.deepcopy(ie)
    with torch.no_grad():
        for p in tuned.stages[-1].parameters():
            p.add_(0.05)
    passes = cores.backbone_passes(build_ensemble([ie, shared_cr, tuned], input_size=64))
    last = len(tuned.stages) - 1
    assert [(p.size, p.start) for p in passes] == [(64, 0), (64, last)]
    assert passes[1].partial and list(passes[1].stages[passes[1].start:passes[1].end]) == [tuned.stages[last]]
    sessions = cores.backbone_sessions(tmp_path, passes[1:])  # the tail alone: one stage's graph
    ((session, feed),) = sessions["1 thread"]
    (x,) = feed.values()
    with torch.no_grad():
        h = torch.zeros(1, 3, 64, 64)
        for stage in tuned.stages[:last]:
            h = stage(h)
    assert x.shape == tuple(h.shape)
    assert set(cores.limit_ips(sessions, 2, 2)) == {"default", "1 thread", "2 at once, 1 thread each"}
    at64 = ens_bench.build_from_runs(runs, ["A", "B"], "ie-iqa-distortion+iqa-cr", tmp_path / "out64", input_size=64)
    assert "at 64 px" in at64
    built = load_checkpoint(tmp_path / "out64" / "runs" / slugify(at64) / "seed0" / "tested.pt")
    assert built.fixed_input_size == (64, 64)


def test_backbone_probe_scores_out_of_fold_and_caches_features(common, tmp_path):
    """benchmarks/backbone_probe.py: every photo is predicted by a ridge fit that never saw it (a
    target the features explain ranks well, a shuffled one does not), and the features of a
    backbone are computed once per photo list (a rerun reads them back)."""
    import numpy as np

    sys.modules.pop("backbone_probe", None)
    import backbone_probe as probe
    from PIL import Image

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6))
    y = x @ rng.normal(size=6) + 0.1 * rng.normal(size=200)
    good = probe.scored([(x, y, 0), (x, y, 1)])
    noise = probe.scored([(x, rng.permutation(y), 0), (x, rng.permutation(y), 1)])
    assert good["srocc"]["mean"] > 0.95 and abs(noise["srocc"]["mean"]) < 0.3 and good["alpha"] in probe.ALPHAS
    overfit = probe.cv_predictions(np.eye(50), np.arange(50.0), 1.0, 0)  # one feature per row: nothing carries over
    assert np.abs(overfit - np.arange(50.0)).mean() > 10

    photos = []
    for i in range(3):
        photos.append(str(tmp_path / f"p{i}.png"))
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(photos[-1])
    feats, sec = probe.features("efficientnet_lite0", 64, photos, tmp_path / "cache", "t")
    assert feats.shape[0] == 3 and sec > 0 and np.isfinite(feats).all()
    again, _ = probe.features("efficientnet_lite0", 64, photos, tmp_path / "cache", "t")
    np.testing.assert_array_equal(again, feats)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    six, _ = probe.features("efficientnet_lite0", 64, photos, tmp_path / "cache", "t", levels=6)
    assert six.shape[1] > feats.shape[1] and len(list((tmp_path / "cache").glob("*.npz"))) == 2


def test_content_probe_scores_every_labelled_photo_out_of_fold(common):
    """benchmarks/content_probe.py: each photo's category comes from a head fitted without it:
    classes the features separate are named right, shuffled labels at about chance, and one
    feature per photo (nothing to carry over) not at all."""
    import numpy as np

    sys.modules.pop("content_probe", None)
    import content_probe

    rng = np.random.default_rng(0)
    cats = ["a", "b", "c"]
    main = [cats[i % 3] for i in range(150)]
    x = np.eye(3)[[i % 3 for i in range(150)]] * 3 + rng.normal(size=(150, 3))
    sets = [{m} for m in main]
    top1, anyl = content_probe.cv_accuracy(x, main, sets, cats, 1e-2, 0)
    assert top1 > 0.85 and anyl == top1  # one label each: "any" is top-1
    shuffled = list(rng.permutation(main))
    assert content_probe.cv_accuracy(x, shuffled, [{m} for m in shuffled], cats, 1e-2, 0)[0] < 0.5
    assert content_probe.cv_accuracy(np.eye(150), main, sets, cats, 1e-2, 0)[0] < 0.5
    # a second acceptable label counts for "any", not for top-1
    wide = [{m, "c"} for m in main]
    top1_w, any_w = content_probe.cv_accuracy(x, main, wide, cats, 1e-2, 0)
    assert top1_w == top1 and any_w >= top1_w


def test_content_probe_level_statistics_are_the_models_levels_read_once(common, tmp_path):
    """benchmarks/content_probe.py's richer pooling: each level's spatial spread and maximum over
    the photo as the model reads it, cached (a second call reads the file, not the photos)."""
    import numpy as np
    import torch
    from PIL import Image
    from tiny_models import tiny_model

    sys.modules.pop("content_probe", None)
    import content_probe

    model = tiny_model("iqa-cr", categories=["a", "b"], content_from="tokens").eval()
    rng = np.random.default_rng(0)
    photos = []
    for i in range(2):
        photos.append(str(tmp_path / f"p{i}.png"))
        Image.fromarray(rng.integers(0, 256, (40 + 8 * i, 56, 3), dtype=np.uint8)).save(photos[-1])
    got = content_probe.level_stats(model, photos, tmp_path / "cache", ["std", "max"])
    with torch.no_grad():
        maps = model.features(model.preprocess(Image.open(photos[1]).convert("RGB")).unsqueeze(0))
    np.testing.assert_allclose(got["std"][1], torch.cat([m.flatten(2).std(2) for m in maps], 1)[0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["max"][1], torch.cat([m.amax((2, 3)) for m in maps], 1)[0].numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(got["std"][0], got["std"][1])
    for p in photos:
        Path(p).unlink()  # cached: the photos are not read again
    again = content_probe.level_stats(model, photos, tmp_path / "cache", ["max"])
    assert list(again) == ["max"]
    np.testing.assert_array_equal(again["max"], got["max"])


def test_content_head_benchmark_measures_how_far_confidence_is_from_accuracy(common):
    """benchmarks/content_head.py's calibration: the mean softmax confidence of the named category and
    its ECE against the main label: near 0 when a confidence of c is right a fraction c of the time,
    large when a head is sure and often wrong."""
    import numpy as np

    sys.modules.pop("content_head", None)
    import content_head

    cats = ["a", "b"]
    # Confidence 0.75 for "a" on every photo, right on 3 of 4: calibrated.
    logit = np.log(3.0)
    conf, ece = content_head.calibration(np.array([[logit, 0.0]] * 4), ["a", "a", "a", "b"], cats)
    assert conf == pytest.approx(0.75) and ece == pytest.approx(0.0, abs=1e-6)
    # Sure (0.99) and right on half: overconfident by about 0.49.
    conf, ece = content_head.calibration(np.array([[np.log(99.0), 0.0]] * 4), ["a", "a", "b", "b"], cats)
    assert conf == pytest.approx(0.99) and ece == pytest.approx(0.49, abs=1e-6)


def test_content_head_benchmark_fits_on_training_photos_and_reports_both_heads(common, tmp_path):
    """benchmarks/content_head.py's fit_on (what per-seed and --ship both call): the head is fitted on
    both flips of the labelled training photos, and it reports the tokens' accuracy, the photo counts
    and both heads' calibration on the labelled validation photos (unlabelled ones are left out)."""
    import numpy as np
    import pandas as pd
    from conftest import write_image
    from tiny_models import tiny_model

    from contentiqa.data.labels import CATEGORY_SEPARATOR

    sys.modules.pop("content_head", None)
    import content_head

    cats = ["a", "b", "c"]
    model = tiny_model("iqa-cr", categories=cats, content_from="tokens").eval()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(16):
        main = cats[i % 3] if i != 15 else None  # one photo people did not label
        rows.append({"image": str(write_image(tmp_path / f"{i}.png", 40, 48, seed=i)), "category": main,
                     "categories": None if main is None else main + CATEGORY_SEPARATOR + cats[(i + 1) % 3]})
    table = pd.DataFrame(rows)
    dim = sum(model.level_channels)
    feats = {flip: {r["image"]: rng.normal(size=dim) + 3 * (i % 3) for i, r in enumerate(rows)} for flip in (False, True)}
    fit, (tok_top1, tok_any), counts, conf = content_head.fit_on(model, feats, table.iloc[:10], table.iloc[10:])
    assert counts == (10, 5)  # the unlabelled photo is not counted
    assert fit.weight.shape == (3, dim) and 0.0 <= tok_top1 <= tok_any <= 1.0
    assert set(conf) == {"levels", "tokens"}
    for confidence, ece in conf.values():
        assert 1 / 3 <= confidence <= 1.0 and 0.0 <= ece <= 1.0


def test_ship_gate_suite_never_leaves_a_torn_photo_for_later_runs(common, tmp_path, monkeypatch):
    """The gate reuses the damage photos it finds: one cut short by a kill failed every later run."""
    import ship_gate
    from conftest import write_image

    from contentiqa.data import degrade as degrade_module

    test = pd.DataFrame({"image": [str(write_image(tmp_path / f"{i}.png", 64, 64, seed=i)) for i in range(2)],
                         "mos": [50.0, 60.0]})

    class KilledWhileSaving:
        def save(self, fp, format=None):
            with open(fp, "wb") as f:
                f.write(b"\x89PNG\r\n\x1a\n")  # the start of the file
            raise KeyboardInterrupt

    monkeypatch.setattr(degrade_module, "degrade", lambda *a, **k: KilledWhileSaving())
    with pytest.raises(KeyboardInterrupt):
        ship_gate.suite(0, test, tmp_path / "suite")
    assert not list((tmp_path / "suite").rglob("*.png")) and not list((tmp_path / "suite").rglob("*.tmp"))


@pytest.mark.parametrize("seeds", [["0"], ["0", "7"], ["0", "1", "1"]])  # a repeat counted twice, narrowing the spread
def test_ship_gate_refuses_seeds_it_cannot_judge_before_scoring_anything(common, tmp_path, seeds, capsys):
    import shutil

    import ship_gate

    shutil.copy(BENCH / "results" / "splits_clive_ie-iqa.json", common.RESULTS)  # the published splits
    with pytest.raises(SystemExit):
        ship_gate.main(["--candidate", str(tmp_path), "--candidate-row", "C", "--baseline", str(tmp_path),
                        "--baseline-row", "B", "--work", str(tmp_path / "work"), "--seeds", *seeds, "--name", "ie-iqa"])
    assert "two or more of the published splits' seeds" in capsys.readouterr().err


def test_ship_from_run_given_as_a_relative_path_names_its_row_and_seed(common, tmp_path, monkeypatch):
    import ship

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"name": "c", "data": {"name": "csv", "root": str(tmp_path / "none.csv")},
                                   "protocol": "ie-iqa", "runs": [{"name": "R", "model": "ie-iqa"}]}))
    run = tmp_path / "exp" / "runs" / "R" / "seed1"
    run.mkdir(parents=True)
    (run / "tested.pt").write_bytes(b"weights")
    (run / "config.json").write_text("{}")
    (run / "metrics.jsonl").write_text("")
    shipped = []
    monkeypatch.setattr(ship, "ship_row", lambda *a, **k: shipped.append(a))
    monkeypatch.chdir(run)
    ship.main([str(cfg), "--row", "R", "--tag", "beside", "--from-run", ".", "--weights-dir", str(tmp_path / "w")])
    assert shipped[0][5] == run  # the folder itself, whose names the card reads


def test_faults_counts_a_missing_score_as_differing_and_zero_as_a_score(common):
    import faults

    assert faults.differs(None, 42.0) and faults.differs(0.0, 42.0) and faults.differs(42.0, None)
    assert not faults.differs(0.0, 0.0) and not faults.differs(None, None) and not faults.differs(42.0, 42.00001)


def test_ship_gate_never_writes_over_the_baseline_record_it_reads(common, tmp_path, capsys):
    """The GPU README's command (--part val --baseline-from selection_ie-iqa.json, no --out)
    replaced the default's passing record with the candidate's verdict."""
    import ship_gate

    record = ship_gate.result_stem("ie-iqa", "val")
    with pytest.raises(SystemExit):
        ship_gate.main(["--part", "val", "--candidate", str(tmp_path), "--candidate-row", "C", "--name", "ie-iqa",
                        "--baseline-from", str(record.parent / f"{record.name}.json"), "--baseline-row", "B"])
    assert "would write its verdict over --baseline-from" in capsys.readouterr().err


def test_ship_refuses_a_gate_on_other_data_unjudged_seeds_and_a_damaged_record(common, tmp_path):
    """The same row trained on other photos (another set, protocol or validation share), weights
    of a seed the gate never scored, and an unreadable record are each refused; what a record does
    not say is named."""
    import ship
    import ship_gate

    def experiment(**data):
        cfg = {"data": {"name": "csv", "root": "d.csv", **data}, "protocol": "ie-iqa",
               "runs": [{"name": "R", "model": "ie-iqa", "model_args": {"input_size": 64}}]}
        folder = tmp_path / "runs"
        folder.mkdir(exist_ok=True)
        (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
        return ship_gate.row_recipe(folder, "R"), ship_gate.row_data(folder, "R")

    recipe, data = experiment()
    assert ship_gate.row_data(tmp_path / "runs", "no such row") is None
    for change in ({"label": "other set"}, {"protocol": "official"}, {"val_fraction": 0.3}):
        other_recipe, other_data = experiment(**change)
        assert other_recipe == recipe and other_data != data, change  # the row's own hash cannot tell
    gate = {**PASSED, "verdict": "PASS", "baseline": {"row": "B"},
            "candidate": {"row": "R", "recipe_sha256": recipe, "data_sha256": data, "tested_sha256": {"0": "a" * 64}}}
    path = tmp_path / "g.json"
    path.write_text(json.dumps(gate))
    ok, why = ship.gate_verdict("ie-iqa", "R", path, recipe=recipe, data=data, tested=(0, "a" * 64))
    assert ok and "against 'B'" in why and "not compared" not in why
    ok, why = ship.gate_verdict("ie-iqa", "R", path, recipe=recipe, data=experiment(val_fraction=0.3)[1])
    assert not ok and "other data" in why
    ok, why = ship.gate_verdict("ie-iqa", "R", path, tested=(3, "a" * 64))
    assert not ok and "no weights of seed 3" in why
    del gate["candidate"]["tested_sha256"], gate["candidate"]["data_sha256"]
    path.write_text(json.dumps(gate))
    ok, why = ship.gate_verdict("ie-iqa", "R", path, recipe=recipe, data=data, tested=(0, "a" * 64))
    assert ok and "not compared: its training data, the weights" in why
    path.write_text('{"name": "ie-iqa", "verd')
    ok, why = ship.gate_verdict("ie-iqa", "R", path)
    assert not ok and str(path) in why and "not a readable ship gate record" in why


def test_ship_refuses_a_gate_won_against_another_recipe_than_the_default_it_replaces(common, tmp_path, monkeypatch):
    """A gate passed against an older default's recipe said nothing of the default shipped since, and
    ship.py replaced that one on it: the gate's baseline must be the row the replaced default's card names."""
    import ship

    from contentiqa import DEFAULT_MODEL

    weights = tmp_path / "weights"
    weights.mkdir()
    monkeypatch.setattr(ship, "WEIGHTS", weights)
    (weights / "defaults.json").write_text(json.dumps({"ie-iqa": "now", DEFAULT_MODEL: "d"}))
    (weights / "ie-iqa_now.md").write_text('# Model card\n\n- **What**: x.\n  Row "Now" of `c.yaml`.\n')
    (weights / f"{DEFAULT_MODEL}_d.md").write_text(
        "# Model card\n\n- **Reproduce**: `python benchmarks/ensemble.py --ship --row 'Ens, \"2:1\"' --default` (1 min).\n")
    path = tmp_path / "g.json"

    def verdict(model, row, against, where=weights):
        path.write_text(json.dumps({**PASSED, "verdict": "PASS", "baseline": {"row": against}, "candidate": {"row": row}}))
        return ship.gate_verdict(model, row, path, weights_dir=where)

    ok, why = verdict("ie-iqa", "New", "Older")
    assert not ok and "against 'Older'" in why and "ie-iqa.now, was trained by row 'Now'" in why
    assert verdict("ie-iqa", "New", "Now")[0]
    assert verdict("ie-iqa", "Now", "Older")[0]  # the default's own recipe shipped again
    assert verdict("ie-iqa", "New", "Older", where=tmp_path / "elsewhere")[0]  # no default replaced
    # a model without a default of its own replaces contentiqa's default model: its card's --row
    ok, why = verdict("brand-new", "New", "Older")
    assert not ok and f"{DEFAULT_MODEL}.d, was trained by row 'Ens, \"2:1\"'" in why
    assert verdict("brand-new", "New", 'Ens, "2:1"')[0]
    # a registered model whose tag is not shipped yet (a new ensemble is registered with the tag it is
    # about to ship) replaces contentiqa's default model too: it was judged against its own missing card
    ok, why = verdict("iqa-cr-q", "New", "Older")
    assert not ok and f"{DEFAULT_MODEL}.d, was trained by row 'Ens, \"2:1\"'" in why
    # a registered model that defaults.json leaves out has the registry's default (its first tag), not the package's
    (weights / "iqa-cr-q_clive.md").write_text('# Model card\n\n- **What**: x.\n  Row "Q" of `c.yaml`.\n')
    (weights / "iqa-cr-q_clive.pt").write_bytes(b"")
    assert verdict("iqa-cr-q", "New", "Q")[0]
    ok, why = verdict("iqa-cr-q", "New", 'Ens, "2:1"')
    assert not ok and "iqa-cr-q.clive, was trained by row 'Q'" in why
    (weights / "ie-iqa_now.md").write_text("# Model card\n")  # a card that names no row: said, not compared
    ok, why = verdict("ie-iqa", "New", "Older")
    assert ok and "not compared: the baseline with the current default's recipe (ie-iqa.now's card names no row)" in why
    with pytest.raises(SystemExit, match="was trained by row 'Ens"):
        ship.gate_for("brand-new", "New", "t", weights, default=True, override=False, path=path)


def test_ship_refuses_a_gate_won_against_a_same_named_row_of_another_recipe(common, tmp_path, monkeypatch):
    """A gate whose baseline had the default's row name, but from another config (other settings,
    other data), passed: the baseline's recorded recipe and data must be those the default's card
    recorded when it shipped (for a card from before they were recorded: its config's as it reads now)."""
    import ship
    import ship_gate

    def config(name, **train):
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / "config.yaml").write_text(yaml.safe_dump({
            "data": {"name": "csv", "root": "d.csv"}, "protocol": "ie-iqa",
            "runs": [{"name": "Now", "model": "ie-iqa", "model_args": {"input_size": 64}, "train": train}]}))
        return tmp_path / name

    shipped, stand_in = config("shipped", lr=1e-3), config("stand_in", lr=1e-4)
    weights = tmp_path / "weights"
    weights.mkdir()
    monkeypatch.setattr(ship, "WEIGHTS", weights)
    (weights / "defaults.json").write_text(json.dumps({"ie-iqa": "now"}))
    recorded = (f"  Recipe sha256 `{ship_gate.row_recipe(shipped, 'Now')}`, data sha256 "
                f"`{ship_gate.row_data(shipped, 'Now')}` (what a ship gate's baseline is held to).\n")
    (weights / "ie-iqa_now.md").write_text('# Model card\n\n- **What**: x.\n  Row "Now" of `c.yaml`.\n' + recorded)
    path = tmp_path / "g.json"

    def verdict(runs):
        base = {"row": "Now", **({"recipe_sha256": ship_gate.row_recipe(runs, "Now"),
                                  "data_sha256": ship_gate.row_data(runs, "Now")} if runs else {})}
        path.write_text(json.dumps({**PASSED, "verdict": "PASS", "baseline": base, "candidate": {"row": "New"}}))
        return ship.gate_verdict("ie-iqa", "New", path, weights_dir=weights)

    ok, why = verdict(stand_in)
    assert not ok and "with other settings than the current default ie-iqa.now" in why
    ok, why = verdict(shipped)
    assert ok and "not compared" not in why
    ok, why = verdict(None)  # an older record that does not say: named, not compared
    assert ok and "not compared: the baseline's settings with those of the current default ie-iqa.now" in why
    # the config edited since: what the card recorded decides, not the row as it reads now (an edit
    # may train otherwise; a gate against the default's own runs, or its recorded gate, still passes)
    monkeypatch.setattr(ship, "ROOT", tmp_path)
    edited = config("edited", lr=1e-4)
    (weights / "ie-iqa_now.md").write_text('# Model card\n\n  Row "Now" of `edited/config.yaml`.\n' + recorded)
    assert not verdict(edited)[0] and verdict(shipped)[0]
    # a card from before the hashes were recorded: its config as it reads now
    (weights / "ie-iqa_now.md").write_text('# Model card\n\n  Row "Now" of `shipped/config.yaml`.\n')
    assert verdict(shipped)[0] and not verdict(stand_in)[0]
    # neither (only its start's card has them, and no config to read): not compared
    (weights / "ie-iqa_now.md").write_text('# Model card\n\n  Row "Now" of `c.yaml`.\n\n## Started from `x.pt`\n\n'
                                           + recorded)
    ok, why = verdict(stand_in)
    assert ok and "not compared: the baseline's settings" in why


def test_ship_gate_suite_makes_new_images_for_other_photos_in_a_shared_work_folder(common, tmp_path):
    import numpy as np
    import ship_gate
    from conftest import write_image
    from PIL import Image

    def table(prefix, seed):
        return pd.DataFrame({"image": [str(write_image(tmp_path / f"{prefix}{i}.png", 64, 64, seed=seed + i))
                                       for i in range(2)], "mos": [50.0, 60.0]})

    first = ship_gate.suite(0, table("a", 0), tmp_path / "suite")
    second = ship_gate.suite(0, table("b", 10), tmp_path / "suite")
    level0 = [d["path"] for d in second["damage"] if d["level"] == 0 and d["kind"] == "blur"]
    assert not {d["path"] for d in first["damage"]} & {d["path"] for d in second["damage"]}
    assert not {b["path"] for b in first["bad"]} & {b["path"] for b in second["bad"]}
    best = np.asarray(Image.open(tmp_path / "b1.png").convert("RGB"))
    assert any(np.array_equal(np.asarray(Image.open(p).convert("RGB")), best) for p in level0)


def test_a_check_run_never_writes_over_the_published_figures(common, capsys):
    """speed.py --quick (its documented check) wrote speed.json, and docs.py then put 2-photo,
    1-repeat figures in the README."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--models", nargs="+", default=["a", "b"])
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    assert common.results_name("speed", ap, ap.parse_args([])) == "speed"
    for argv in (["--quick"], ["--images", "2"], ["--models", "a"]):
        assert common.results_name("speed", ap, ap.parse_args(argv)) == "speed_quick", argv
    assert "results go to speed_quick" in capsys.readouterr().out
    # a script whose option names its file: the name given is kept (a deliberate record), its
    # default is the published file only with the published settings (cores --photos 2, int8
    # --models one, backbone_probe --biq 0 wrote over theirs)
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="probe")
    ap.add_argument("--biq", type=int, default=2000)
    assert common.results_stem(ap, ap.parse_args([]), "out") == "probe"
    assert common.results_stem(ap, ap.parse_args(["--biq", "0"]), "out") == "probe_quick"
    assert common.results_stem(ap, ap.parse_args(["--biq", "0", "--out", "probe_nobiq"]), "out") == "probe_nobiq"
    ap.add_argument("--quick", action="store_true")  # a check of a named record (int8_older_tags) is still a check
    assert common.results_stem(ap, ap.parse_args(["--out", "probe_x", "--quick"]), "out") == "probe_x_quick"


@pytest.mark.parametrize("script, argv, said", [
    ("cores.py", ["--model", "bogus"], "unknown model 'bogus'"),
    ("large_photos.py", ["--models", "ie-iqa.nope"], "has no weights tagged 'nope'"),
    ("startup.py", ["--runs", "0"], "--runs: must be at least 1, not 0"),
    ("int8.py", ["--rounds", "0"], "--rounds: must be at least 1, not 0"),
])
def test_benchmark_options_that_cannot_run_are_usage_errors_before_any_work(script, argv, said):
    """An unknown model was a traceback after the photos were made; a count of 0 a median of
    nothing after the setup (startup --runs 0, serve_load --lone 0, int8 --rounds 0)."""
    import subprocess

    proc = subprocess.run([sys.executable, str(BENCH / script), *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and said in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-800:]


def test_a_check_runs_seeds_are_split_beside_the_published_splits(common, tmp_path, monkeypatch):
    """floor.py --seeds 11 rewrote the published splits file with seeds it lacked."""
    import pandas as pd

    monkeypatch.setattr(common, "CACHE", tmp_path / "cache")
    table = pd.DataFrame({"image": [f"/p/{i}.png" for i in range(40)], "mos": [float(i) for i in range(40)]})
    splits, path = common.clive_splits("ie-iqa", [0, 1], table)
    assert path == common.RESULTS / "splits_clive_ie-iqa.json"
    published = path.read_bytes()
    more, other = common.clive_splits("ie-iqa", [0, 5], table)
    assert other.parent == tmp_path / "cache" and [s.seed for s in more] == [0, 5]
    assert path.read_bytes() == published
    assert common.clive_splits("ie-iqa", [1], table)[1] == path


def test_no_benchmark_with_options_writes_its_results_under_a_fixed_name():
    """peers.py --quick, floor.py --seeds 2, memory.py --sizes, faults.py --photos and collection.py
    --limit wrote over the published files (docs.py copies some into the docs)."""
    import ast

    # install.py --skip-torch publishes a new torch-free row beside the earlier [torch] one, marked as
    # such (its --ci run writes nothing)
    published_whatever_the_options = {"install.py"}
    fixed = []
    for script in sorted((REPO_ROOT / "benchmarks").glob("*.py")):
        if script.name in published_whatever_the_options:
            continue
        source = script.read_text()
        if "add_argument(" not in source:
            continue  # no options: every run is the published one
        for node in ast.walk(ast.parse(source)):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "write_results" and node.args):
                continue
            name = node.args[0]
            # a name from results_name / results_stem (or a variable holding one); a constant, an
            # option's value (args.out) or a suffix rule of its own ("_quick" if --quick) bypassed them
            named = isinstance(name, ast.Call) and getattr(name.func, "id", None) in ("results_name", "results_stem")
            if not (named or isinstance(name, ast.Name)):
                fixed.append(f"{script.name}:{node.lineno}")
    assert not fixed, f"results written under a fixed name whatever the options: {fixed}"


def test_results_say_when_the_source_changed_during_the_run(common, monkeypatch):
    """Provenance was read at the end: a commit made while a long benchmark ran was recorded as
    what all of it ran."""
    monkeypatch.setattr(common, "provenance", lambda: {"git_commit": "end"})
    states = iter([{"commit": "b", "changed_files": []}, {"commit": "a", "changed_files": []}])
    monkeypatch.setattr(common, "_source_state", lambda: next(states))
    monkeypatch.setattr(common, "_STARTED", {"commit": "a", "changed_files": []})
    common.write_results("one", {}, "x")
    assert json.loads((common.RESULTS / "one.json").read_text())["provenance"]["source"] == {
        "at_start": {"commit": "a", "changed_files": []}, "at_end": {"commit": "b", "changed_files": []}}
    common.write_results("two", {}, "x")
    assert json.loads((common.RESULTS / "two.json").read_text())["provenance"]["source"] == {"commit": "a",
                                                                                             "changed_files": []}


def test_int8_stored_calibrations_are_keyed_by_the_recipe_not_its_label(common):
    import int8

    from contentiqa.inference.quantize import Int8Recipe

    kw = next(iter(int8.RECIPES["iqa-cr"].values()))
    edited = {**kw, "exclude": ["^/model/(conv_stem|bn1|blocks\\.[0-5])/"]}
    assert int8._recipe_key(Int8Recipe(**kw)) == int8._recipe_key(Int8Recipe(**kw))
    assert int8._recipe_key(Int8Recipe(**kw)) != int8._recipe_key(Int8Recipe(**edited))


def _collection_without_scoring(collection, monkeypatch, tmp_path, score_segment, photos) -> list:
    """collection.py with ``score_segment`` for `contentiqa score`, nothing timed; the payloads it
    would write come in the list returned."""
    written: list = []
    monkeypatch.setattr(collection, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(collection, "score_segment", score_segment)
    monkeypatch.setattr(collection, "settings", lambda device: ({"device_name": "cpu", "model": "m", "runtime": "onnx",
                                                                 "batch_size": 1, "workers": 1}, None))
    monkeypatch.setattr(collection, "decode_only_ips", lambda *a: 1.0)
    monkeypatch.setattr(collection, "write_results", lambda name, payload, md: written.append(payload))
    monkeypatch.setattr(sys, "argv", ["collection.py", "--images", str(photos), "--quick"])
    return written


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_collection_on_a_gpu_that_is_not_here_is_one_line_before_any_state(common, tmp_path, monkeypatch, capsys):
    import collection

    monkeypatch.setattr(collection, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(sys, "argv", ["collection.py", "--images", str(tmp_path), "--device", "cuda"])
    with pytest.raises(SystemExit) as stopped:
        collection.main()
    assert stopped.value.code == 2 and "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()
    # the CPU's run (ONNX Runtime) on an install without PyTorch: no device check needs it
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setattr(sys, "argv", ["collection.py", "--images", str(tmp_path / "none")])
    with pytest.raises(SystemExit, match="benchmark skipped: no photos"):
        collection.main()


def test_a_finished_collection_run_is_measured_again_not_reported_again(common, tmp_path, monkeypatch):
    """Run again with the same options, the finished run's throughput was written anew under the
    new date and commit, nothing measured."""
    import collection
    from conftest import write_image

    photos = tmp_path / "photos"
    for i in range(2):
        write_image(photos / f"{i}.png", 64, 64, seed=i)
    segments = []

    def score_segment(folder, out_csv, device, extra):
        out_csv.write_text("path,score\n" + "".join(f"{p},50\n" for p in sorted(folder.iterdir())))
        segments.append(folder)
        return 1.0, 2, ""

    written = _collection_without_scoring(collection, monkeypatch, tmp_path, score_segment, photos)
    collection.main()
    collection.main()
    assert len(segments) == 2 and [len(p["segments"]) for p in written] == [1, 1]
    # scored but stopped before its report: the next run reports it, without scoring again
    monkeypatch.setattr(collection, "write_results", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        collection.main()
    monkeypatch.setattr(collection, "write_results", lambda name, payload, md: written.append(payload))
    collection.main()
    assert len(segments) == 3 and len(written[-1]["segments"]) == 1


def test_a_collection_run_with_an_unreadable_photo_is_finished(common, tmp_path, monkeypatch):
    """Only scored rows counted as done: one unreadable photo made a finished run look unfinished,
    an empty segment's start-up was added to its time, and every rerun added another."""
    import collection
    from conftest import write_image

    photos = tmp_path / "photos"
    for i in range(2):
        write_image(photos / f"{i}.png", 64, 64, seed=i)
    (photos / "2.png").write_bytes(b"not a photo")
    segments = []

    def score_segment(folder, out_csv, device, extra):  # as the real one counts what it added
        files = sorted(folder.iterdir())
        before = collection.count_rows(out_csv)
        out_csv.write_text("path,score,error\n" + "".join(f"{p},{'' if p.name == '2.png' else 50},"
                                                           f"{'not an image' if p.name == '2.png' else ''}\n"
                                                           for p in files))
        segments.append(folder)
        return 1.0, collection.count_rows(out_csv) - before, ""

    written = _collection_without_scoring(collection, monkeypatch, tmp_path, score_segment, photos)
    collection.main()
    collection.main()
    assert len(segments) == 2 and [len(p["segments"]) for p in written] == [1, 1]
    assert written[-1]["scored"] == 2 and written[-1]["images_per_s"] == 3.0
    # options passed through to `contentiqa score` (another batch, model, runtime): a check, not the figure
    names = []
    monkeypatch.setattr(collection, "write_results", lambda name, payload, md: names.append(name))
    monkeypatch.setattr(collection, "default_images", lambda: photos)  # the published photos, no option
    monkeypatch.setattr(sys, "argv", ["collection.py", "--batch-size", "1"])
    collection.main()
    assert names == ["collection_cpu_quick"]


def test_gate_validation_parts_leave_out_every_seeds_test_photos(common, tmp_path, monkeypatch):
    """Chosen on the mean over seeds, a seed's validation part held a fifth of the other seeds'
    test photos, whose figures are published."""
    import argparse

    import ship_gate

    from contentiqa.data import make_split_set

    clive = pd.DataFrame({"image": [f"/p/{i}.png" for i in range(200)], "mos": np.linspace(0, 100, 200)})
    splits = {s.seed: s for s in make_split_set(clive, "ie-iqa", seeds=[0, 1, 2], progress=False)}
    folder = tmp_path / "cand"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump({"data": {"name": "csv", "root": "x", "val_fraction": 0.3}}))

    class AllVal:
        def indices(self, table, part):
            return np.arange(len(table))

    monkeypatch.setattr("contentiqa.data.load_splits", lambda path: [type("S", (AllVal,), {"seed": s})() for s in splits])
    biq = pd.DataFrame({"image": ["/b/0.png"], "mos": [1.0]})
    tested = frozenset(p for s in splits.values() for p in clive.iloc[s.indices(clive, "test")]["image"])
    args = argparse.Namespace(part="val", candidate=folder)
    for seed in splits:
        val, _ = ship_gate.parts(args, seed, clive, splits[seed], biq, tested)
        assert len(val) and not set(val["image"]) & tested
        assert set(ship_gate.parts(args, seed, clive, splits[seed], biq)[0]["image"]) & tested  # what it read before


def test_the_gate_runs_end_to_end_and_records_the_weights_it_judged(common, tmp_path, monkeypatch):
    """One name held the judged weights' hashes and then every seed's test photos: every gate run
    stopped with a TypeError before its first score (no test called main())."""
    import os
    import types

    import ship_gate

    from contentiqa.data import make_split_set

    clive = pd.DataFrame({"image": [f"/p/{i}.png" for i in range(60)], "mos": np.linspace(0, 100, 60)})
    splits = make_split_set(clive, "ie-iqa", seeds=[0, 1, 2], progress=False)
    biq = pd.DataFrame({"image": [f"/b/{i}.png" for i in range(12)], "mos": np.linspace(1, 5, 12), "split": "test"})
    monkeypatch.setattr(ship_gate, "clive_table", lambda: clive)
    monkeypatch.setattr(ship_gate, "biq_root", lambda: tmp_path)
    monkeypatch.setattr("contentiqa.data.load_splits", lambda path: splits)
    monkeypatch.setattr("contentiqa.data.load_dataset", lambda name, root: types.SimpleNamespace(table=biq))
    monkeypatch.setattr(ship_gate, "suite", lambda seed, test, work: {
        "clive": list(zip(test["image"], test["mos"])), "damage": [], "bad": [], "labels": {}})
    models = {}

    def tested_model(runs, row, seed):
        path = tmp_path / runs.name / f"{seed}.pt"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(f"{runs.name} {seed}".encode())
        models[(runs.name, seed)] = path
        return path

    def score_files(model, files, out):  # the candidate ranks better: a noisier baseline
        rng = np.random.default_rng(len(str(model)))
        noise = 5.0 if "base" in str(model) else 0.5
        mos = dict(zip(clive["image"], clive["mos"])) | dict(zip(biq["image"], biq["mos"] * 20))
        mixed = "int8" if str(model).endswith("cand/0.pt") else "fp32"  # one seed at another precision
        return {**{os.path.abspath(f): mos[f] + rng.normal(0, noise) for f in files}, "__precision__": mixed}

    written = []
    monkeypatch.setattr(ship_gate, "tested_model", tested_model)
    monkeypatch.setattr(ship_gate, "score_files", score_files)
    monkeypatch.setattr(ship_gate, "write_results", lambda payload, out=None: written.append(payload))
    for side in ("cand", "base"):
        (tmp_path / side).mkdir()
    ship_gate.main(["--candidate", str(tmp_path / "cand"), "--candidate-row", "C", "--baseline", str(tmp_path / "base"),
                    "--baseline-row", "B", "--work", str(tmp_path / "work"), "--name", "ie-iqa"])
    (payload,) = written
    from contentiqa.utils.io import file_sha256

    assert payload["candidate"]["tested_sha256"] == {str(s): file_sha256(models[("cand", s)]) for s in (0, 1, 2)}
    assert payload["baseline"]["tested_sha256"]["0"] == file_sha256(models[("base", 0)])
    # every seed's precision is recorded, not the last one's
    assert payload["candidate"]["precision"] == "fp32,int8" and payload["baseline"]["precision"] == "fp32"
    assert {r["measure"] for r in payload["rows"]} >= {"CLIVE SROCC", "BIQ2021 SROCC", "clipped %"}


def test_an_install_row_carried_from_an_earlier_run_says_when_it_was_measured(common):
    """--skip-torch kept the [torch] row of an earlier run, and the page and README dated it today."""
    import install

    res = {"when": "2026-12-06 23:18", "python": "3.11.7", "load": [1.0], "command": "python benchmarks/install.py --skip-torch",
           "installs": {"torch_free": {"seconds": 25, "size_mb": 526, "packages": 28, "when": "2026-12-06 23:18"},
                        "torch": {"seconds": 124, "size_mb": 6520, "packages": 77, "torch": "2.14.1",
                                  "when": "2026-12-03 10:50", "carried": True}},
           "score": {"photos": 8, "seconds": 0.9}}
    md = install.markdown(res)
    assert "| 2026-12-03 10:50 (an earlier run's, kept by --skip-torch) |" in md and "--skip-torch` (2026-12-06" in md


def test_the_gate_finds_every_seeds_weights_and_its_models_name_before_scoring(common, tmp_path, monkeypatch, capsys):
    """A candidate missing a seed's weights was said after the seeds before it were scored (many
    minutes each); the gate of an iqa-cr row run without --name was filed as ie-iqa's, over the
    record ie-iqa's default shipped under, and judged by ie-iqa's targets."""
    import shutil

    import ship_gate

    from contentiqa.experiments.config import slugify

    shutil.copy(BENCH / "results" / "splits_clive_ie-iqa.json", common.RESULTS)  # the published splits
    cfg = {"data": {"name": "csv", "root": "d.csv"}, "protocol": "official",
           "runs": [{"name": "C", "model": "iqa-cr"}]}
    for side in ("cand", "base"):
        (tmp_path / side).mkdir()
        (tmp_path / side / "config.yaml").write_text(yaml.safe_dump(cfg))
    for side, seeds in (("cand", [0]), ("base", [0, 1, 2])):
        for seed in seeds:
            run = tmp_path / side / "runs" / slugify("C") / f"seed{seed}"
            run.mkdir(parents=True)
            (run / "tested.pt").write_bytes(b"w")
    scored = []
    monkeypatch.setattr(ship_gate, "score_files", lambda *a: scored.append(a))
    monkeypatch.setattr(ship_gate, "clive_table", lambda: scored.append("clive") or pytest.fail("read data"))
    argv = ["--candidate", str(tmp_path / "cand"), "--candidate-row", "C", "--baseline", str(tmp_path / "base"),
            "--baseline-row", "C", "--work", str(tmp_path / "work")]
    with pytest.raises(SystemExit, match="seed1/tested.pt is missing"):
        ship_gate.main(argv)
    assert scored == []
    with pytest.raises(SystemExit):
        ship_gate.main([*argv, "--name", "ie-iqa"])
    assert "--name ie-iqa: the candidate row 'C' trains iqa-cr" in capsys.readouterr().err
    # the row's model is the default name (ship.py reads ship_gate_<the row's model>.json)
    assert ship_gate.gate_name(None, tmp_path / "cand", "C") == "iqa-cr"
    assert ship_gate.gate_name("iqa-cr", tmp_path / "cand", "C") == "iqa-cr"
    with pytest.raises(ValueError, match="say which model's default is at stake"):  # an ensemble's folder
        ship_gate.gate_name(None, tmp_path / "cand", "not a row there")
    assert ship_gate.gate_name("ensemble", tmp_path / "cand", "not a row there") == "ensemble"


def test_the_gates_stored_scores_are_keyed_by_the_scoring_code(common, monkeypatch):
    import ship_gate

    before = ship_gate.scoring_fingerprint()
    import contentiqa

    monkeypatch.setattr(contentiqa, "__version__", "0.0.0-other")
    assert ship_gate.scoring_fingerprint() != before


def test_ship_reads_a_gate_written_elsewhere(common, tmp_path):
    """ship.py read only ship_gate_<model>.json, so the GPU README's test gate wrote its verdict
    over the default's passing record."""
    import ship

    assert ship.gate_file(Path("r/ship_gate_ie-iqa_blocks3_gpu")) == Path("r/ship_gate_ie-iqa_blocks3_gpu.json")
    assert ship.gate_file(Path("r/g.v5.md")) == Path("r/g.v5.json") and ship.gate_file(Path("r/g.v5")) == Path("r/g.v5.json")


def test_ship_refuses_a_results_file_without_the_rows_figures_before_any_work(common, tmp_path):
    import ship

    results = tmp_path / "results.json"
    results.write_text(json.dumps({"runs": {"R": {"summary": {"clive": {"srocc": [0.8]}}, "seeds": [0]}}}))
    ship.check_results(results, "R")
    with pytest.raises(SystemExit, match="no figures for row 'Other'"):
        ship.check_results(results, "Other")
    with pytest.raises(SystemExit, match="cannot read it"):
        ship.check_results(tmp_path / "resluts.json", "R")
