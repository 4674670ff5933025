"""The shipped weights: they load offline, are small, and are trained (not random).

The bundled example photos are CLIVE images the shipped models were trained on, with their
human MOS (examples/images/scores.csv): a trained model ranks them like people do, a model
with a broken or random head does not (8 photos: |SROCC| of a random ranking exceeds 0.8
with probability < 1 %).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

import contentiqa
from contentiqa.models.registry import list_pretrained, resolve_tag, shipped_weights_path

SHIPPED = contentiqa.list_models(pretrained_only=True)
TAGGED = list_pretrained()  # every name.tag, not only the default weights


def test_the_default_and_both_papers_models_are_shipped():
    assert contentiqa.DEFAULT_MODEL in SHIPPED
    assert {"iqa-cr", "ie-iqa"} <= set(SHIPPED)


def test_models_lists_the_tags_that_run_int8(capsys):
    """``score --help`` sends users here to learn which tags have an int8 calibration."""
    from contentiqa.cli.main import main

    assert main(["models"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("with an int8 calibration"))
    listed = set(line.split(": ", 1)[1].split(", "))
    weights = {t: shipped_weights_path(t) for t in TAGGED}
    assert listed == {t for t, w in weights.items() if w.with_name(w.stem + ".int8.json").is_file()}
    assert contentiqa.DEFAULT_MODEL + "." + resolve_tag(contentiqa.DEFAULT_MODEL)[1] in listed
    assert "ie-iqa.clive-biq2021-v4" not in listed  # shipped without one


def test_models_shows_plain_descriptions_and_an_ensemble_without_weights_says_how_one_is_made(capsys):
    """Docstrings' ``literals`` were printed with their backticks; `score -m ensemble` advised
    `contentiqa train`, which refuses ensembles."""
    from contentiqa.cli.main import main

    assert main(["models"]) == 0
    assert "``" not in capsys.readouterr().out
    assert main(["score", "x.png", "-m", "ensemble"]) == 2
    err = capsys.readouterr().err
    assert "made from trained members: contentiqa.models.ensemble.build_ensemble" in err and "contentiqa train" not in err


def test_models_says_why_a_torch_free_install_lists_no_backbone(capsys, monkeypatch):
    """"backbones with offline ImageNet weights: none" read like a broken install."""
    import contentiqa.backbones
    from contentiqa.cli.main import main
    from contentiqa.utils import extras

    real = extras.have
    monkeypatch.setattr(extras, "have", lambda m: m != "torch" and real(m))
    monkeypatch.setattr(contentiqa.backbones, "list_backbones", lambda **k: [])  # what a torch-free install finds
    assert main(["models"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("backbones with offline"))
    assert line.endswith("none: they come with PyTorch (pip install 'contentiqa[torch]')")


@pytest.mark.parametrize("name", TAGGED)
def test_shipped_model_loads_offline_and_ranks_the_examples_like_people(name, examples_dir):
    path = shipped_weights_path(name)
    assert path.stat().st_size < 30e6  # the pretrained backbone is not stored
    model = contentiqa.create_model(name)  # pretrained=True: the shipped weights, no network
    table = pd.read_csv(examples_dir / "scores.csv")
    preds = model.predict([str(examples_dir / f) for f in table["image"]])
    assert all(p.ok for p in preds), [p.error for p in preds if not p.ok]
    scores = np.array([p.score for p in preds])
    assert np.isfinite(scores).all()
    assert spearmanr(scores, table["mos"]).statistic > 0.8
    # on the MOS scale (0-100): the fitted scores stay near the people's
    assert np.abs(scores - table["mos"]).mean() < 15
    if model.categories:
        assert all(p.category in model.categories and 0 < p.category_confidence <= 1 for p in preds)
    entry, tag = resolve_tag(name)
    assert entry.tags[tag] == path.name and model.weights_tag == tag
