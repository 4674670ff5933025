"""benchmarks/peers.py's parts that need no pyiqa: the missing-pyiqa exit, the targets' verdict,
the results page, contentiqa's accuracy read from the results files, the parameter count. (The
race itself is run by hand: `python benchmarks/peers.py --pyiqa-python PYIQA_VENV/bin/python`.)"""
from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def peers(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("peers", None)
    return importlib.import_module("peers")


def test_missing_pyiqa_says_how_to_install_and_exits_2(tmp_path):
    missing = tmp_path / "no-such-venv" / "bin" / "python"
    results = BENCHMARKS / "results" / "peers.json"
    stamp = results.stat().st_mtime_ns if results.exists() else None
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "peers.py"), "--pyiqa-python", str(missing)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert str(missing) in proc.stderr and "pip install" in proc.stderr and "pyiqa" in proc.stderr
    assert (results.stat().st_mtime_ns if results.exists() else None) == stamp  # nothing written


def test_pyiqa_versions_none_where_pyiqa_is_absent(peers, tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'No module named pyiqa' >&2\nexit 1\n")
    fake.chmod(0o755)
    assert peers.pyiqa_versions(str(fake)) is None
    assert peers.pyiqa_versions(str(tmp_path / "absent")) is None


def _rows(ours_ips: float) -> dict:
    return {
        "contentiqa score": {"kind": "contentiqa", "label": "ours", "ips": ours_ips, "ms_per_image": 1000 / ours_ips,
                             "n_timed": 4, "params": 5_000_000, "gflops": 3.2, "srocc": 0.80, "plcc": 0.81,
                             "acc_ref": "x.json"},
        "paq2piq": {"kind": "pyiqa", "label": "pyiqa `paq2piq`", "ips": 4.0, "ms_per_image": 250.0, "n_timed": 4,
                    "params": 11_700_000, "gflops": 18.5, "srocc": 0.7188, "plcc": 0.7542, "acc_ref": "pyiqa"},
        "topiq_nr": {"kind": "pyiqa", "label": "pyiqa `topiq_nr`", "ips": 1.0, "ms_per_image": 1000.0, "n_timed": 4,
                     "params": 45_000_000, "gflops": 60.0, "srocc": 0.8106, "plcc": 0.8261, "acc_ref": "pyiqa"},
        "brisque": {"kind": "pyiqa", "label": "pyiqa `brisque` (classical)", "ips": 50.0, "ms_per_image": 20.0,
                    "n_timed": 4, "params": 0, "gflops": 0.07, "srocc": 0.31, "plcc": 0.35, "acc_ref": "pyiqa"},
    }


def test_verdict_compares_with_the_fastest_learned_metric_not_the_classical_one(peers):
    met = peers.verdict(_rows(8.0), "contentiqa score")
    assert "paq2piq" in met[0] and "2.00x" in met[0] and "(target >= 1.5x: met)" in met[0]
    assert "topiq_nr" in met[1] and "8.00x" in met[1] and ": met)" in met[1]
    assert any("vs paq2piq: 0.800 vs 0.719 (higher" in line for line in met)
    assert any("vs topiq_nr: 0.800 vs 0.811 (NOT higher" in line for line in met)
    slow = peers.verdict(_rows(5.0), "contentiqa score")
    assert "NOT met" in slow[0] and "NOT met" in slow[1]
    assert peers.verdict({}, "contentiqa score") == ["targets not checked: missing rows"]


def test_markdown_names_the_command_load_and_every_row(peers):
    rows = _rows(8.0)
    payload = {"rows": rows, "verdict": peers.verdict(rows, "contentiqa score"), "machine": "test box",
               "torch_contentiqa": "2.x", "torch_pyiqa": "2.x", "pyiqa": "0.1", "n_images": 4,
               "load_before": [1.0, 1.0, 1.0], "load_after": [2.0, 2.0, 2.0], "network_attempts": 0, "budget_s": 90,
               "contentiqa_model": "ie-iqa", "contentiqa_acc_note": "from a file."}
    md = peers.render_markdown(payload, "python benchmarks/peers.py --pyiqa-python X")
    assert "`python benchmarks/peers.py --pyiqa-python X`" in md and "before: [1.0, 1.0, 1.0]" in md
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(rows)  # header + one line per row
    brisque = next(line for line in table if "brisque" in line)
    assert "n/a (classical)" in brisque and "50.00" in brisque
    assert "0.719 / 0.754" in next(line for line in table if "paq2piq" in line)
    assert "| 11.7 |" in next(line for line in table if "paq2piq" in line)  # params in millions


def test_contentiqa_accuracy_is_read_from_the_results_files(peers, tmp_path):
    """Every shipped tag of the default model, its figures where benchmarks/docs.py's SHIPPED points
    (one list for the README's models table and this page): the ship gate's candidate, per seed,
    for a gated ensemble; an experiment's summary otherwise."""
    import contentiqa
    from contentiqa.models.registry import list_pretrained

    acc = peers.contentiqa_accuracy()
    assert [a["weights"] for a in acc] == [t for t in list_pretrained() if t.startswith(contentiqa.DEFAULT_MODEL + ".")]
    assert peers.default_weights() in [a["weights"] for a in acc]
    for a in acc:
        data = json.loads((BENCHMARKS.parent / a["file"]).read_text())
        if a["row"] == "candidate":
            by = {r["measure"]: r for r in data["rows"]}
            assert a["srocc"] == pytest.approx(by["CLIVE SROCC"]["candidate"], abs=1e-12)
            assert a["plcc"] == pytest.approx(by["CLIVE PLCC"]["candidate"], abs=1e-12)
            continue
        summary = data["runs"][a["row"]]["summary"]["CLIVE"]
        assert a["srocc"] == summary["srocc"]["mean"] and a["plcc"] == summary["plcc"]["mean"]
    missing = peers.contentiqa_accuracy(tmp_path)
    assert missing and all(a["srocc"] is None and a["how"].startswith("not read") for a in missing)


def test_parameters_of_modules_kept_in_plain_lists_are_counted(peers):
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(3, 2)  # 8 parameters
            self.hidden = [torch.nn.Linear(4, 4)]  # 20, outside the module tree (as pyiqa keeps CLIP)

    net = Net()
    assert sum(p.numel() for p in net.parameters()) == 8
    assert peers.all_parameters(net) == 28


def test_time_loop_stops_at_the_budget_after_two_images(peers):
    seen = []
    r = peers.time_loop(seen.append, ["a", "b", "c", "d"], budget_s=0.0)
    assert seen == ["a", "a", "b"] and r["n_timed"] == 2 and r["ips"] > 0


def test_cited_accuracy_leaves_unsourced_rows_blank(peers):
    assert peers.cited_accuracy("paq2piq")["srocc"] == peers.PUBLISHED["paq2piq"]["srocc"]
    assert "pyiqa NR benchmark" in peers.cited_accuracy("paq2piq")["acc_ref"]
    liqe = peers.cited_accuracy("liqe")
    assert liqe["srocc"] is None and liqe["plcc"] is None and liqe["acc_ref"].startswith("none found")
    assert all(p["source"] for p in peers.PUBLISHED.values())  # every row says where its figure is from
