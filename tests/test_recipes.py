"""Registry entries own their architecture defaults and training recipe; `train --model NAME` uses them.

The recipes are checked against what the shipped checkpoints say they were trained with
(``extra.train_config``), and the defaults against the default tag's stored architecture, so
neither can drift from the weights without a test failing.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import fields

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import write_image
from contentiqa.models import create_model
from contentiqa.models.ie_iqa import IEIQAConfig
from contentiqa.models import recipes
from contentiqa.models.recipes import IE_IQA_PAPER_ARGS, IE_IQA_RECIPE, IQA_CR_CLIVE_RECIPE, IQA_CR_RECIPE, TrainRecipe
from contentiqa.models.registry import list_models, model_entry, model_recipe, resolve_tag, shipped_weights_path
from contentiqa.training.config import TrainConfig
from contentiqa.utils.checkpoint_io import load_torch_file

SHIPPED = [n for n in list_models(pretrained_only=True) if model_entry(n).trainable]  # ensembles: no recipe
# Keys of a stored config that are not architecture: the weights' provenance and training state.
NOT_ARCHITECTURE = {"scale", "backbone_pretrained", "distortion_pretrained", "intelligibility_pretrained",
                    "frozen_stages", "categories", "num_categories", "calibration"}


def _default_tag_payload(name: str) -> dict:
    return load_torch_file(shipped_weights_path(name), "checkpoint")


@pytest.mark.parametrize("recipe", [getattr(recipes, n) for n in dir(recipes) if n.endswith("_RECIPE")])
def test_a_recipe_is_a_partial_train_config(recipe):
    assert recipe.train_args() and set(recipe.train_args()) <= {f.name for f in fields(TrainConfig)}
    cfg = TrainConfig.from_dict(recipe.train_args())  # a valid training config; the rest TrainConfig's defaults
    assert {k: getattr(cfg, k) for k in recipe.train_args()} == recipe.train_args()


def test_every_registered_model_has_a_recipe_but_ensembles():
    for name in list_models():
        if not model_entry(name).trainable:  # made from trained models: saying so is its answer
            with pytest.raises(ValueError, match="not trained itself"):
                model_recipe(name)
            continue
        assert isinstance(model_recipe(name), TrainRecipe) and model_recipe(name).source


@pytest.mark.parametrize("name", SHIPPED)
def test_recipe_is_how_the_default_tag_was_trained(name):
    stored = _default_tag_payload(name)["extra"]["train_config"]
    recipe = model_recipe(name).train_args()
    if recipe["score_loss"] == "model" and stored["score_loss"] != "model":
        # the model's own loss, which an older checkpoint names by what it computes (IE-IQA's MSE)
        m = create_model(name, pretrained=False, distortion_pretrained=False, intelligibility_pretrained=False,
                         hidden=(8, 4), input_size=64)
        a, b = torch.rand(5), torch.rand(5)
        assert stored["score_loss"] == "mse"
        torch.testing.assert_close(m.loss({"score": a}, b), torch.nn.functional.mse_loss(a, b))
        recipe["score_loss"] = "mse"
    for key in ("rank_weight", "rank_sigma"):  # older checkpoints predate the ranking loss (= off)
        stored.setdefault(key, 0.0 if key == "rank_weight" else 0.05)
    assert {k: stored[k] for k in recipe} == recipe


@pytest.mark.parametrize("name", SHIPPED)
def test_untrained_name_is_the_default_tags_architecture(name):
    payload = _default_tag_payload(name)
    off = {"ie-iqa": dict(intelligibility_pretrained=False), "ie-iqa-distortion": {}}.get(
        name, dict(backbone_pretrained=False))
    built = create_model(name, pretrained=False, **off).cfg.to_dict()
    stored = payload["config"]
    diff = {k: (built.get(k), v) for k, v in stored.items() if k not in NOT_ARCHITECTURE and built.get(k) != v}
    assert not diff, f"{name}: create_model(pretrained=False) differs from {resolve_tag(name)[1]} in {diff}"


def test_ie_iqa_defaults_are_the_shipped_ones_and_the_paper_is_explicit():
    off = dict(distortion_pretrained=False, intelligibility_pretrained=False, hidden=(8, 4))
    shipped = create_model("ie-iqa", pretrained=False, **off).cfg
    assert (shipped.strategy, shipped.input_size, shipped.train_resize, shipped.bn_eval) == ("none", 384, 416, False)
    paper = create_model("ie-iqa", pretrained=False, **off, **IE_IQA_PAPER_ARGS).cfg
    ref = IEIQAConfig()
    assert (paper.strategy, paper.selection_ratio, paper.input_size, paper.train_resize) == \
           ("contribution", 5.0, ref.input_size, ref.train_resize)
    assert paper.distortion_levels is None  # the paper's g: the last map pooled, not four levels
    # BatchNorm statistics: fixed for trained backbone weights, learnt from scratch, or as given
    assert create_model("ie-iqa-distortion", pretrained=False, hidden=(8, 4)).cfg.bn_eval is True
    assert create_model("ie-iqa-distortion", pretrained=False, distortion_pretrained=False, hidden=(8, 4),
                        bn_eval=True).cfg.bn_eval is True


def test_a_tags_recipe_is_read_from_its_checkpoint():
    from contentiqa.models.recipes import IE_IQA_PAPER_RECIPE

    # ie-iqa.clive was trained with the paper's SGD recipe (MSE written as 'mse')
    clive = model_recipe("ie-iqa.clive").train_args()
    assert {k: clive[k] for k in IE_IQA_PAPER_RECIPE.train_args()} == {**IE_IQA_PAPER_RECIPE.train_args(), "score_loss": "mse"}
    assert model_recipe("iqa-cr.clive").train_args()["category_weight"] == 0.05  # the sweep's shipped recipe
    for name in list_models():  # every shipped tag's recipe trains as it is (run-only fields dropped)
        if not model_entry(name).trainable:
            continue
        for tag in model_entry(name).tags:
            args = model_recipe(f"{name}.{tag}").train_args()
            assert "seed" not in args and "device" not in args
            TrainConfig.from_dict(args)
    assert model_recipe("ie-iqa.clive-biq2021-v3") is model_recipe("ie-iqa")  # the default tag: the entry's
    with pytest.raises(ValueError, match="no weights tagged"):
        model_recipe("ie-iqa.nope")


def test_pretrained_loads_the_stored_architecture_not_the_defaults():
    m = create_model("iqa-cr.clive")  # a wider tag than the entry's default architecture
    assert m.cfg.dim == 128 and model_entry("iqa-cr").defaults.get("dim", 64) == 64


# -- train --model NAME ---------------------------------------------------------------------------
def _args(argv: list[str]) -> argparse.Namespace:
    from contentiqa.cli.main import build_parser

    return build_parser().parse_args(["train", "--data", "x.csv", *argv])


@pytest.mark.parametrize("name,recipe", [("ie-iqa", IE_IQA_RECIPE), ("iqa-cr", IQA_CR_RECIPE),
                                         ("iqa-cr-q", IQA_CR_CLIVE_RECIPE)])
def test_train_starts_from_the_models_recipe(name, recipe):
    from contentiqa.cli.train import build_configs

    model, _, train, record = build_configs(_args(["--model", name]))
    assert model == name and train == recipe.train_args()
    assert record["name"] == name and record["source"] == recipe.source and record["overrides"] == {}


def test_config_flags_and_recipe_choice_override_the_recipe(tmp_path):
    from contentiqa.cli.main import UsageError
    from contentiqa.cli.train import build_configs

    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: ie-iqa\ntrain: {epochs: 3, optimizer: sgd}\n")
    _, _, train, record = build_configs(_args(["--config", str(cfg), "--lr", "0.5", "--set", "score_loss=mse"]))
    assert train == {**IE_IQA_RECIPE.train_args(), "epochs": 3, "optimizer": "sgd", "lr": 0.5, "score_loss": "mse"}
    assert record["overrides"] == {"epochs": 3, "optimizer": "sgd", "lr": 0.5, "score_loss": "mse"}
    _, _, train, _ = build_configs(_args(["--model", "ie-iqa", "--recipe", "iqa-cr-q"]))
    assert train == IQA_CR_CLIVE_RECIPE.train_args()
    _, _, train, record = build_configs(_args(["--model", "ie-iqa", "--recipe", "none", "--epochs", "2"]))
    assert train == {"epochs": 2} and record["name"] is None
    with pytest.raises(UsageError, match="unknown model"):
        build_configs(_args(["--model", "ie-iqa", "--recipe", "nope"]))


def _spy_loss(model):
    calls = []
    real = model.loss

    def loss(outputs, target):
        calls.append(len(target))
        return real(outputs, target)

    model.loss = loss  # instance attribute: the trainer reaches it through the contract
    return calls


@pytest.fixture
def tiny_csv(tmp_path):
    rng = np.random.default_rng(0)
    rows = [{"image": str(write_image(tmp_path / "img" / f"{i}.png", 64, 64, seed=i)), "mos": float(rng.uniform(0, 100))}
            for i in range(10)]
    path = tmp_path / "data.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_trainer_uses_the_models_own_loss_and_the_recipes_optimizer(tiny_csv, tmp_path):
    from contentiqa.data.table import MOSScale
    from contentiqa.training.losses import MultiTaskLoss
    from contentiqa.training.trainer import Trainer

    table = pd.read_csv(tiny_csv)
    torch.manual_seed(0)
    model = create_model("ie-iqa-distortion", pretrained=False, distortion_pretrained=False, bn_eval=True,
                         hidden=(8, 4), input_size=64)
    calls = _spy_loss(model)
    # the loss and the optimizer are what is checked: no validation part to calibrate on, no anchors
    cfg = TrainConfig.from_dict({**model_recipe("ie-iqa-distortion").train_args(), "epochs": 1, "batch_size": 4,
                                 "cache_stages": 3, "calibrate": False, "anchor_weight": 0.0})
    tr = Trainer(model, table.iloc[:8], None, MOSScale(0, 100), cfg, tmp_path / "run", progress=False,
                 cache_dir=tmp_path / "cache", log=lambda *a: None)
    assert isinstance(tr.loss_fn, MultiTaskLoss) and tr.loss_fn.score_loss == "model"
    assert isinstance(tr.optimizer, torch.optim.AdamW)
    tr.fit()
    assert calls and sum(calls) == 8  # every training image went through IEIQA.loss
    sgd = TrainConfig.from_dict({**cfg.to_dict(), "optimizer": "sgd"})
    tr2 = Trainer(model, table.iloc[:8], None, MOSScale(0, 100), sgd, tmp_path / "run2", progress=False,
                  cache_dir=tmp_path / "cache", log=lambda *a: None)
    assert isinstance(tr2.optimizer, torch.optim.SGD)


def test_iqa_cr_recipe_trains_with_damage_and_anchors_on_one_dataset(tmp_path):
    """The default tag's recipe names no training set (its damage comes from any photo), so a
    user's single CSV trains with it as it is: damage ranking and bad-frame anchors included."""
    from contentiqa.cli.main import main

    rng = np.random.default_rng(1)
    rows = [{"image": str(write_image(tmp_path / "img" / f"{i}.png", 48, 48, seed=i)), "mos": float(rng.uniform(0, 100)),
             "category": ("animal", "human", "plant")[i % 3]} for i in range(12)]
    pd.DataFrame(rows).to_csv(tmp_path / "data.csv", index=False)
    out = tmp_path / "run"
    tiny = ["--set", "model.backbone_pretrained=false", "--set", "model.dim=16", "--set", "model.heads=2",
            "--set", "model.mlp_dim=32", "--set", "model.grid=[2, 2]", "--set", "model.depth=1"]
    rc = main(["train", "--model", "iqa-cr", "--data", str(tmp_path / "data.csv"), "--out", str(out),
               "--protocol", "iqa-cr", "--epochs", "1", "--batch-size", "4", "--set", "calibrate=false",
               "--set", "anchor_photos=3", "--set", "damage_photos=2", *tiny, "--quiet"])
    assert rc == 0
    run = json.loads((out / "config.json").read_text())
    assert run["train_config"]["damage_weight"] == IQA_CR_RECIPE.values["damage_weight"] > 0
    assert run["train_config"]["anchor_weight"] == IQA_CR_RECIPE.values["anchor_weight"] > 0
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"loss_damage", "loss_anchor"} <= set(history[-1]) and np.isfinite(history[-1]["loss"])


def test_train_cli_writes_the_recipe_into_the_run_and_checkpoint(tiny_csv, tmp_path):
    from contentiqa.cli.main import main
    from contentiqa.models import load_checkpoint

    out = tmp_path / "run"
    tiny = ["--set", "model.distortion_pretrained=false", "--set", "model.intelligibility_pretrained=false",
            "--set", "model.bn_eval=true", "--set", "model.hidden=[8, 4]", "--set", "model.input_size=64",
            "--set", "model.intelligibility_input_size=64"]
    args = ["train", "--model", "ie-iqa", "--data", str(tiny_csv), "--out", str(out), "--protocol", "iqa-cr",
            "--epochs", "1", "--batch-size", "4", *tiny, "--quiet"]
    assert main(args) == 2  # the recipe calibrates, on a validation part this small split lacks: said up front
    rc = main(args + ["--set", "calibrate=false"])
    assert rc == 0
    run = json.loads((out / "config.json").read_text())
    assert run["train_config"]["score_loss"] == "model" and run["train_config"]["optimizer"] == "adamw"
    assert run["train_config"]["cache_stages"] == IE_IQA_RECIPE.values["cache_stages"]
    assert run["train_config"]["rank_weight"] == IE_IQA_RECIPE.values["rank_weight"]
    assert run["recipe"]["name"] == "ie-iqa" and run["recipe"]["overrides"] == {"epochs": 1, "batch_size": 4,
                                                                                 "calibrate": False}
    assert run["model_config"]["selection"] == "none"  # the registered architecture
    best = load_checkpoint(out / "best.pt")
    assert best.checkpoint_info["recipe"] == run["recipe"]
    assert best.checkpoint_info["train_config"]["score_loss"] == "model"


def test_load_checkpoint_takes_a_home_relative_path_and_checks_the_device_first(tmp_path, monkeypatch):
    """Not through the scorer tests' cached loader: the real one."""
    from contentiqa.models import create_model, load_checkpoint
    from contentiqa.models.registry import save_checkpoint
    from tiny_models import tiny_model

    monkeypatch.setenv("HOME", str(tmp_path))
    save_checkpoint(tiny_model("iqa-cr"), tmp_path / "mine.pt")
    assert load_checkpoint("~/mine.pt").model_name == "iqa-cr"
    assert create_model("iqa-cr", checkpoint_path="~/mine.pt").model_name == "iqa-cr"
    with pytest.raises(ValueError, match="unknown device 'gpu'"):  # torch's RuntimeError, after reading the file
        load_checkpoint("~/mine.pt", device="gpu")



def test_a_model_built_from_a_backbone_file_loads_after_that_file_is_gone(tmp_path):
    """The saved config names the file the backbone started from; rebuilding read it again, so
    a trained model moved to another machine (or whose start file was cleaned up) never
    loaded: the state dict holds every tensor, and the file is not needed."""
    from contentiqa.backbones import create_backbone
    from contentiqa.models import load_checkpoint
    from contentiqa.models.registry import save_checkpoint
    from tiny_models import tiny_model

    torch.manual_seed(3)
    start = tmp_path / "start.pth"
    torch.save(create_backbone("efficientnet_lite0", pretrained=False).state_dict(), start)
    model = tiny_model("iqa-cr", backbone_checkpoint=str(start))
    saved = save_checkpoint(model, tmp_path / "trained.pt")
    start.unlink()
    loaded = load_checkpoint(saved)
    assert loaded.cfg.backbone_checkpoint == str(start)  # kept as the record of where it started
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k


def test_a_model_without_shipped_weights_says_how_to_get_them_in_the_commands_terms_too():
    """The message named pretrained=False only, which a command's user cannot pass."""
    from contentiqa.models import create_model

    with pytest.raises(FileNotFoundError, match="contentiqa train --model mtl-pooled"):
        create_model("mtl-pooled")
    with pytest.raises(FileNotFoundError, match="made from trained members"):  # not trained itself
        create_model("ensemble")
