"""The shipped models keep producing the scores recorded before a refactor.

tests/data/recorded_scores.json was written by tools/record_scores.py (torch, CPU, float32, one
photo per pass) from the commit it names (a tag shipped later: from the commit "added" names for it); every shipped ``name.tag`` must still give the same
normalised score and category probabilities on the example photos within 1e-4. (The tolerance is
on the normalised [0, 1] score: recomputing with 1 vs 2 threads moved MOS-scale scores by up to
2.4e-5 on this machine, so a tolerance on the 0-100 scale would test the CPU's kernels.)
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from contentiqa.models.registry import list_pretrained

REPO = Path(__file__).resolve().parents[1]
RECORDED = REPO / "tests" / "data" / "recorded_scores.json"
TOL = 1e-4


def _tool():
    spec = importlib.util.spec_from_file_location("record_scores", REPO / "tools" / "record_scores.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _recorded() -> dict:
    return json.loads(RECORDED.read_text())["models"]


def test_every_shipped_tag_has_a_recording():
    assert set(_recorded()) == set(list_pretrained())


@pytest.mark.parametrize("name", sorted(_recorded()))
def test_shipped_model_reproduces_its_recorded_scores(name):
    rec = _recorded()[name]
    tool = _tool()
    now = tool.score_shipped(name, tool.example_photos())
    assert now["scale"] == rec["scale"] and now["categories"] == rec["categories"]
    assert set(now["photos"]) == set(rec["photos"])
    for photo, want in rec["photos"].items():
        got = now["photos"][photo]
        assert got["normalized"] == pytest.approx(want["normalized"], abs=TOL), (name, photo)
        if want["probabilities"] is None:
            assert got["probabilities"] is None
        else:
            assert got["probabilities"].keys() == want["probabilities"].keys()
            for cat, p in want["probabilities"].items():
                assert got["probabilities"][cat] == pytest.approx(p, abs=TOL), (name, photo, cat)


def test_record_tool_refuses_to_overwrite_without_force(tmp_path, capsys):
    out = tmp_path / "rec.json"
    out.write_text("{}")
    assert _tool().main(["--out", str(out)]) == 2
    assert out.read_text() == "{}" and "--force" in capsys.readouterr().err


def test_record_tool_adds_one_tag_and_keeps_the_others(tmp_path, monkeypatch):
    """--add records a newly shipped tag without re-recording (and so hiding changes in) the rest."""
    tool = _tool()
    name = sorted(list_pretrained())[0]
    out = tmp_path / "rec.json"
    out.write_text(json.dumps({"commit": "abc", "models": {"other.tag": {"kept": True}}}))
    monkeypatch.setattr(tool, "score_shipped", lambda n, photos: {"scored": n})
    assert tool.main(["--out", str(out), "--add", name]) == 0
    data = json.loads(out.read_text())
    assert data["models"] == {"other.tag": {"kept": True}, name: {"scored": name}}
    assert list(data["added"]) == [name] and data["commit"] == "abc"
    # Adding it again, or a name that is not shipped, is refused and leaves the file alone.
    before = out.read_text()
    assert tool.main(["--out", str(out), "--add", name]) == 2
    assert tool.main(["--out", str(out), "--add", "no-such.tag"]) == 2
    assert out.read_text() == before
