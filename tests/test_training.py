"""The trainer: losses, cached vs image paths, checkpoints, exact resume, the CLI."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import write_image
from contentiqa.data.table import MOSScale
from contentiqa.models import IQA_CR_CATEGORIES, create_model, load_checkpoint
from contentiqa.models.layers import FocalLoss
from contentiqa.training.config import TrainConfig
from contentiqa.training.losses import MultiTaskLoss
from contentiqa.training.trainer import Trainer, TrainingDiverged

TINY = dict(backbone_pretrained=False, dim=16, heads=2, mlp_dim=32, grid=(2, 2), depth=1)


@pytest.fixture
def tiny_table(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        h, w = (64, 64) if i % 3 else (64, 96)  # two sizes: batches are grouped by shape
        p = write_image(tmp_path / "img" / f"{i}.png", h, w, seed=i)
        rows.append({"image": str(p), "mos": float(rng.uniform(0, 100)), "category": IQA_CR_CATEGORIES[i % 3]})
    return pd.DataFrame(rows)


def _trainer(model, table, tmp_path, name="run", **cfg):
    base = dict(epochs=2, batch_size=4, crop=48, lr=1e-3, patience=0, warmup_epochs=0.5)
    base.update(cfg)
    return Trainer(model, table.iloc[:9], table.iloc[9:], MOSScale(0, 100), TrainConfig(**base), tmp_path / name,
                   progress=False, cache_dir=tmp_path / "cache", log=lambda *a: None)


def test_focal_loss_matches_formula_and_cross_entropy():
    torch.manual_seed(0)
    logits, target = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, -1, 1])
    fl = FocalLoss(gamma=2.0)(logits, target)
    valid = target >= 0
    p = logits[valid].softmax(-1)[torch.arange(int(valid.sum())), target[valid]]
    assert torch.allclose(fl, (-(1 - p) ** 2 * p.log()).mean(), atol=1e-6)
    ce = torch.nn.functional.cross_entropy(logits[valid], target[valid])
    assert torch.allclose(FocalLoss(gamma=0.0)(logits, target), ce, atol=1e-6)


@pytest.mark.parametrize("weighting", ["sum", "dwa", "uncertainty"])
def test_multitask_loss_weightings(weighting):
    loss = MultiTaskLoss(weighting=weighting, category_weight=0.5)
    out = {"score": torch.tensor([0.2, 0.8], requires_grad=True), "logits": torch.randn(2, 10, requires_grad=True)}
    total, parts = loss(out, torch.tensor([0.3, 0.5]), torch.tensor([1, -1]))
    total.backward()
    assert set(parts) == {"score", "category"} and total.requires_grad is True
    assert out["score"].grad is not None and out["logits"].grad[1].abs().sum() == 0  # unlabelled item: no CE gradient
    if weighting == "sum":
        assert total.item() == pytest.approx(parts["score"] + 0.5 * parts["category"], rel=1e-5)


def test_dwa_weights_follow_loss_ratios():
    loss = MultiTaskLoss(weighting="dwa")
    loss.epoch_losses = [[1.0, 1.0], [0.5, 1.0]]  # score loss halved, category loss flat
    ws, wc = loss.dwa_weights()
    assert ws + wc == pytest.approx(2.0) and wc > ws


def test_focal_loss_below_gamma_one_keeps_finite_gradients_for_a_sure_prediction():
    """The power's gradient at 1 - p = 0 is infinite for gamma < 1: inf x log(1) made every weight NaN."""
    logits = torch.tensor([[20.0, 0.0, 0.0], [0.0, 1.0, 0.0]], requires_grad=True)
    FocalLoss(gamma=0.5)(logits, torch.tensor([0, 1])).backward()
    assert torch.isfinite(logits.grad).all()


def test_a_task_weighted_zero_adds_nothing_under_uncertainty_weighting():
    """Its log variance was still added, fell without bound and in the end overflowed."""
    loss = MultiTaskLoss(weighting="uncertainty", category_weight=0.0)
    out = {"score": torch.tensor([0.2, 0.8], requires_grad=True), "logits": torch.randn(2, 10, requires_grad=True)}
    total, _ = loss(out, torch.tensor([0.3, 0.5]), torch.tensor([1, 2]))
    total.backward()
    assert loss.log_vars.grad[1] == 0 and loss.log_vars.grad[0] != 0


def test_dwa_leaves_a_single_task_alone():
    """A model without a content head has one task: DWA scaled its loss by 1.2-1.26 all the same."""
    loss = MultiTaskLoss(weighting="dwa")
    loss.epoch_losses = [[0.3, 0.0], [0.2, 0.0], [0.1, 0.0]]
    assert loss.dwa_weights() == (1.0, 1.0)


def test_a_batch_without_labels_costs_a_content_only_model_nothing(tiny_table, tmp_path):
    """It raised mid-epoch, depending on the shuffle; damage, anchors and ranking need a score."""
    loss = MultiTaskLoss()
    logits = torch.randn(2, 10, requires_grad=True)
    total, parts = loss({"logits": logits}, torch.tensor([0.3, 0.5]), torch.tensor([-1, -1]))
    total.backward()
    assert total.item() == 0 and parts == {} and logits.grad.abs().sum() == 0
    model = create_model("iqa-cr-c", pretrained=False, **TINY)
    with pytest.raises(ValueError, match="predicts no score: rank_weight"):
        _trainer(model, tiny_table.assign(category="animal"), tmp_path, rank_weight=1.0)


@pytest.mark.parametrize("cache_stages", [0, 3])
def test_trainer_runs_and_writes_checkpoints(tiny_table, tmp_path, cache_stages):
    torch.manual_seed(0)
    model = create_model("iqa-cr", pretrained=False, **TINY)
    tr = _trainer(model, tiny_table, tmp_path, cache_stages=cache_stages)
    best = tr.fit()
    out = tmp_path / "run"
    assert (out / "last.pt").is_file() and (out / "best.pt").is_file() and (out / "config.json").is_file()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and "val_srocc" in json.loads(lines[0])
    assert best["epoch"] in (1, 2)
    m = load_checkpoint(out / "best.pt")
    assert m.categories == list(IQA_CR_CATEGORIES) and m.score_range == (0.0, 100.0)


def test_cached_and_image_paths_agree_at_evaluation(tiny_table, tmp_path):
    """The cache is an optimisation only: scoring through cached frozen stages equals scoring
    the image files."""
    torch.manual_seed(0)
    model = create_model("iqa-cr-q", pretrained=False, **TINY)
    tr = _trainer(model, tiny_table, tmp_path, cache_stages=4, epochs=1)
    tr.fit()
    cached = tr.evaluate_table(tiny_table)
    from contentiqa.training.evaluate import evaluate_model

    direct, _ = evaluate_model(tr.model, tiny_table, MOSScale(0, 100), workers=0)
    for k in ("plcc", "srocc", "rmse"):
        assert cached[k] == pytest.approx(direct[k], abs=2e-3)


def test_loss_decreases_on_a_small_batch(tiny_table, tmp_path):
    torch.manual_seed(0)
    model = create_model("iqa-cr", pretrained=False, **TINY)
    table = tiny_table[tiny_table.index % 3 != 0].iloc[:4]  # one shape, one batch
    tr = Trainer(model, table, None, MOSScale(0, 100), TrainConfig(epochs=25, batch_size=4, crop=None, hflip=False, lr=3e-3,
                 warmup_epochs=0, scheduler="none", patience=0, weight_decay=0.0), tmp_path / "overfit", progress=False, log=lambda *a: None)
    tr.fit()
    losses = [h["loss"] for h in tr.history]
    assert losses[-1] < 0.5 * losses[0]


def test_resume_continues_exactly(tiny_table, tmp_path):
    def run(name, epochs_first, resume_to=None):
        torch.manual_seed(0)
        model = create_model("iqa-cr", pretrained=False, **TINY)
        tr = _trainer(model, tiny_table, tmp_path, name=name, epochs=epochs_first if resume_to is None else resume_to)
        if resume_to is not None:
            # emulate an interruption: a first run stopped after `epochs_first` epochs
            torch.manual_seed(0)
            first = _trainer(create_model("iqa-cr", pretrained=False, **TINY), tiny_table, tmp_path, name=name, epochs=resume_to)
            first.cfg.epochs = epochs_first
            first.fit()
            first.cfg.epochs = resume_to
            tr.fit(resume=True)
        else:
            tr.fit()
        return tr

    straight = run("straight", 3)
    resumed = run("resumed", 1, resume_to=3)
    assert len(resumed.history) == 3
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k
    assert straight.history[-1]["loss"] == pytest.approx(resumed.history[-1]["loss"], rel=1e-6)


def test_a_resume_with_another_architecture_is_refused_naming_what_changed(tiny_table, tmp_path):
    """Trainer.fit(resume=True) compared the model's name only: a model of other settings with the
    same tensor shapes went on training (config.json then claimed the new ones for the whole run),
    and other shapes were torch's load_state_dict traceback."""
    from contentiqa.training.trainer import ResumeMismatch

    torch.manual_seed(0)
    first = _trainer(create_model("iqa-cr", pretrained=False, **TINY), tiny_table, tmp_path, epochs=1)
    first.fit()
    for changed, said in (({"merge": "mean", "dropout": 0.5}, "dropout 0.1 (now 0.5); merge 'sum' (now 'mean')"),
                          ({"dim": 8}, "dim 16 (now 8)")):
        again = _trainer(create_model("iqa-cr", pretrained=False, **{**TINY, **changed}), tiny_table, tmp_path, epochs=2)
        with pytest.raises(ResumeMismatch, match=re.escape(f"trained with model setting(s) {said}")):
            again.fit(resume=True)
    # the file weights started from, named at another path (a moved project): the same model goes on
    again = _trainer(create_model("iqa-cr", pretrained=False, **TINY), tiny_table, tmp_path, epochs=2)
    again.model.cfg.backbone_checkpoint = str(tmp_path / "moved" / "bb.pt")
    again.fit(resume=True)
    assert len(again.history) == 2


def test_a_seed_near_torchs_limit_trains(tiny_table, tmp_path):
    """seed * 100003 + epoch overflowed torch's 64-bit seed for any seed above about 9e13: a
    traceback at the first epoch, after setup (an experiment's split seed, after the rows before)."""
    tr = _trainer(create_model("iqa-cr", pretrained=False, **TINY), tiny_table, tmp_path, epochs=1, seed=2**63 - 1)
    tr.fit()
    assert len(tr.history) == 1


def test_a_content_only_model_without_labelled_validation_photos_is_refused_before_training(tiny_table, tmp_path):
    """Every epoch's validation accuracy was NaN, never better than the first: best.pt stayed epoch 1
    and the rest of training was thrown away without a word."""
    unlabelled = tiny_table.assign(category=[*tiny_table["category"][:9], None, None, None])
    with pytest.raises(ValueError, match=r"none of its 3 photos is labelled with one of"):
        _trainer(create_model("iqa-cr-c", pretrained=False, **TINY), unlabelled, tmp_path)
    _trainer(create_model("iqa-cr-c", pretrained=False, **TINY), tiny_table, tmp_path)  # labelled: trains


def test_the_logged_learning_rate_is_the_epochs_own(tiny_table, tmp_path):
    """The log read the rate after the epoch's last step: the next epoch's, and 0.0 for the last
    epoch (a 1-epoch run looked as if it trained at lr 0)."""
    torch.manual_seed(0)
    tr = _trainer(create_model("iqa-cr", pretrained=False, **TINY), tiny_table, tmp_path)
    tr.fit()
    per_epoch = len(tr.train_loader)  # the rate of each step, as the schedule gives it
    seen = [tr.scheduler.base_lrs[0] * tr.scheduler.lr_lambdas[0](k) for k in range(2 * per_epoch)]
    half = per_epoch
    assert [h["lr"] for h in tr.history] == pytest.approx([np.mean(seen[:half]), np.mean(seen[half:])])
    assert tr.history[-1]["lr"] > 0


def test_a_resume_takes_up_the_schedule_in_its_own_steps_per_epoch(tiny_table, tmp_path):
    """A last.pt saved by another number of processes counted other steps per epoch: its count
    taken as it was, a run from one process on two trained its last epochs at lr 0."""
    torch.manual_seed(0)
    straight = _trainer(create_model("iqa-cr", pretrained=False, **TINY), tiny_table, tmp_path, name="a", epochs=3)
    straight.fit()
    torch.manual_seed(0)
    first = _trainer(create_model("iqa-cr", pretrained=False, **TINY), tiny_table, tmp_path, name="b", epochs=3)
    first.cfg.epochs = 1
    first.fit()
    state = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    state["scheduler"]["last_epoch"] *= 2  # as if saved with twice the steps per epoch
    torch.save(state, tmp_path / "b" / "last.pt")
    torch.manual_seed(0)
    resumed = _trainer(create_model("iqa-cr", pretrained=False, **TINY), tiny_table, tmp_path, name="b", epochs=3)
    resumed.fit(resume=True)
    assert [h["lr"] for h in resumed.history] == pytest.approx([h["lr"] for h in straight.history])


def test_a_run_killed_between_last_pt_and_its_log_gets_its_log_back_on_resume(tiny_table, tmp_path):
    """last.pt is saved before metrics.jsonl: killed between them after the final epoch, the run
    was complete, so --resume trained nothing and never wrote the missing line."""
    torch.manual_seed(0)
    first = _trainer(create_model("iqa-cr", pretrained=False, **TINY), tiny_table, tmp_path, name="r", epochs=2)
    first.fit()
    log = first.out / "metrics.jsonl"
    lines = log.read_text().splitlines()
    log.write_text(lines[0] + "\n")  # the kill
    again = _trainer(create_model("iqa-cr", pretrained=False, **TINY), tiny_table, tmp_path, name="r", epochs=2)
    again.fit(resume=True)
    assert log.read_text().splitlines() == lines
    # the epochs trained before this process count towards the run's time (the experiment's train_seconds)
    assert again.earlier_seconds() == pytest.approx(sum(h["time_s"] for h in first.history)) and first.earlier_seconds() == 0


def test_trainer_refuses_content_model_without_labels(tiny_table, tmp_path):
    model = create_model("iqa-cr", pretrained=False, **TINY)
    with pytest.raises(ValueError, match="label-content"):
        _trainer(model, tiny_table.drop(columns=["category"]), tmp_path)


def test_trainer_refuses_names_that_are_no_category_and_says_which_its_head_lacks(tiny_table, tmp_path):
    from contentiqa.data.labels import HUMAN_LABEL_CATEGORIES

    typo = tiny_table.assign(category=["animals"] + tiny_table["category"].tolist()[1:])
    with pytest.raises(ValueError, match=r"training data's 'category' column has 1 name\(s\) that are no category: \['animals'\]"):
        _trainer(create_model("iqa-cr", pretrained=False, **TINY), typo, tmp_path)
    vehicle = tiny_table.assign(category=tiny_table["category"].tolist()[:-1] + ["vehicle"])  # a validation row
    logged: list[str] = []
    nine = create_model("iqa-cr", pretrained=False, categories=HUMAN_LABEL_CATEGORIES, **TINY)
    Trainer(nine, vehicle.iloc[:9], vehicle.iloc[9:], MOSScale(0, 100), TrainConfig(epochs=1, batch_size=4, crop=48),
            tmp_path / "nine", progress=False, cache_dir=tmp_path / "cache", log=logged.append)
    assert any("1 validation photo(s) are labelled ['vehicle']" in m for m in logged)


def test_ie_iqa_trains_through_cache(tiny_table, tmp_path):
    torch.manual_seed(0)
    model = create_model("ie-iqa", pretrained=False, distortion_pretrained=False, input_size=64, train_resize=72,
                         bn_eval=True, hidden=(32, 16))
    tr = _trainer(model, tiny_table, tmp_path, cache_stages=3, optimizer="sgd", lr=0.01, head_only_epochs=1)
    intel_before = {k: v.clone() for k, v in model.intelligibility.state_dict().items()}
    tr.fit()
    assert all(torch.equal(v, model.intelligibility.state_dict()[k]) for k, v in intel_before.items())
    enc = tr.train_ds.encodings[0]
    assert enc["x"].shape[0] == 2 and enc["f"].shape == (2, 1280)  # the image and its mirror, raw features
    m = tr.evaluate_table(tiny_table)
    assert np.isfinite(m["srocc"])
    assert tr.training_record()["trained"].endswith("; the head alone in the first 1 epoch(s)")


def test_a_run_whose_epochs_are_all_head_only_says_the_backbone_did_not_train(tiny_table, tmp_path):
    """The record said "backbone stages 3-… and the head" when head_only_epochs covered every
    epoch (the backbone at learning rate 0 throughout): its stages came out as they went in."""
    torch.manual_seed(0)
    model = create_model("ie-iqa", pretrained=False, distortion_pretrained=False, input_size=64, train_resize=72,
                         bn_eval=True, hidden=(32, 16))
    tr = _trainer(model, tiny_table, tmp_path, epochs=1, cache_stages=3, optimizer="sgd", lr=0.01, head_only_epochs=2)
    stages = [p.detach().clone() for s in model.stages for p in s.parameters()]
    tr.fit()
    assert all(torch.equal(a, b) for a, b in zip(stages, [p for s in model.stages for p in s.parameters()]))
    said = tr.training_record()["trained"]
    assert said.startswith("head only (the backbone's learning rate 0 in all 1 epoch(s): head_only_epochs=2"), said


def test_the_record_says_what_a_learning_rate_of_0_and_a_frozen_branch_left_untrained(tiny_table, tmp_path):
    """backbone_lr_scale=0 (a linear probe) and lr=0 were recorded as everything trained, and so was an
    uncached IE-IQA, whose intelligibility network is frozen by design."""
    def record(model, **cfg) -> str:
        tr = _trainer(model, tiny_table, tmp_path, name=str(len(list(tmp_path.iterdir()))), epochs=1, **cfg)
        return tr.training_record()["trained"]

    iqa = create_model("iqa-cr", pretrained=False, **TINY)
    assert record(iqa) == "everything (nothing cached)"
    said = record(iqa, backbone_lr_scale=0.0)
    assert said == "head only (the backbone's learning rate 0: backbone_lr_scale=0; otherwise everything (nothing cached))"
    assert record(iqa, lr=0.0).startswith("nothing (learning rate 0: lr=0;")
    ie = create_model("ie-iqa", pretrained=False, distortion_pretrained=False, input_size=64, train_resize=72,
                      bn_eval=True, hidden=(32, 16))
    assert record(ie, crop=None) == "everything but intelligibility (frozen; nothing cached)"
    assert record(ie, crop=None, cache_stages=3).endswith("(stages 0-2 frozen and cached; intelligibility frozen)")
    from torchvision.transforms.functional import pil_to_tensor

    from contentiqa.models.base import IQAModel

    class Own(IQAModel):  # a model of one's own: no backbone group, all of it at the head's rate
        def __init__(self):
            super().__init__()
            self.conv, self.fc = torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 1)

        def preprocess(self, image):
            return pil_to_tensor(image.convert("RGB")).float() / 255

        def forward(self, x):
            return {"score": self.fc(self.conv(x).mean((2, 3))).squeeze(1)}

    for cfg in ({"backbone_lr_scale": 0.0}, {"head_only_epochs": 1}):
        assert record(Own(), **cfg) == "everything (nothing cached)", cfg


def test_train_cli_end_to_end(tiny_table, tmp_path):
    from contentiqa.cli.main import main

    csv = tmp_path / "data.csv"
    t = tiny_table.copy()
    t["image"] = [str(p) for p in t["image"]]
    t.to_csv(csv, index=False)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model: iqa-cr-q\nmodel_args:\n  backbone_pretrained: false\n  dim: 16\n  heads: 2\n  mlp_dim: 32\n"
                   "  grid: [2, 2]\n  depth: 1\ntrain:\n  epochs: 1\n  batch_size: 4\n  crop: 48\n")
    out = tmp_path / "cli_run"
    rc = main(["train", "--data", str(csv), "--config", str(cfg), "--out", str(out), "--protocol", "ie-iqa", "--quiet"])
    assert rc == 0
    assert (out / "best.pt").is_file() and (out / "split.json").is_file() and (out / "test_metrics.json").is_file()
    rc = main(["train", "--data", str(csv), "--config", str(cfg), "--out", str(out), "--resume", "--epochs", "2", "--quiet"])
    assert rc == 0 and len((out / "metrics.jsonl").read_text().splitlines()) == 2
    rc = main(["evaluate", "--model", str(out / "best.pt"), "--data", str(csv), "--json", str(tmp_path / "m.json"), "--quiet"])
    assert rc == 0 and "srocc" in json.loads((tmp_path / "m.json").read_text())
    assert main(["train", "--data", str(tmp_path / "nope.csv"), "--quiet"]) == 2
    assert main(["train", "--data", str(csv), "--set", "bogus=1", "--quiet"]) == 2


def test_train_cli_finishes_the_recipe_with_calibration(tmp_path, capsys):
    """A recipe with ``calibrate`` (the default IE-IQA's): ``contentiqa train`` calibrates the chosen
    model on the validation part as an experiment does, and writes it to OUT/tested.pt."""
    from contentiqa.cli.main import main

    rng = np.random.default_rng(1)
    rows = [{"image": str(write_image(tmp_path / "img" / f"{i}.png", 64, 64, seed=i)), "mos": float(rng.uniform(0, 100)),
             "split": "train" if i < 12 else "val"} for i in range(20)]
    csv = tmp_path / "data.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    args = ["train", "--model", "ie-iqa", "--data", str(csv), "--epochs", "1", "--batch-size", "4", "--quiet",
            "--set", "cache_stages=3", "--set", "calibrate=true", "--set", "model.input_size=64", "--set",
            "model.distortion_pretrained=false", "--set", "model.intelligibility_pretrained=false",
            "--set", "model.hidden=[32, 16]", "--set", "model.bn_eval=true"]  # (a narrower head could die: constant outputs)
    assert main(args + ["--out", str(tmp_path / "run")]) == 0
    assert "output calibrated on the validation part" in capsys.readouterr().out
    finished = load_checkpoint(tmp_path / "run" / "tested.pt")
    assert finished.cfg.calibration is not None and load_checkpoint(tmp_path / "run" / "best.pt").cfg.calibration is None
    # no validation part to calibrate on: a clear error, not a model that silently skipped it
    pd.DataFrame(rows).drop(columns="split").to_csv(csv, index=False)
    assert main(args + ["--out", str(tmp_path / "run2"), "--protocol", "ie-iqa"]) == 2
    err = capsys.readouterr().err  # said before any work, with how to get a validation part or turn it off
    assert "calibrate fit(s) on the validation part, and this split has none" in err and "--set calibrate=false" in err
    assert not (tmp_path / "run2" / "last.pt").exists()


def test_monitor_improved_ranks_nan_below_every_score():
    from contentiqa.training.trainer import monitor_improved

    nan = float("nan")
    assert monitor_improved(0.1, nan) and monitor_improved(-0.5, nan)
    assert not monitor_improved(nan, 0.1) and not monitor_improved(nan, nan)
    assert monitor_improved(0.2, 0.1) and not monitor_improved(0.1, 0.2)


def test_collapsed_validation_epoch_is_recorded_not_fatal(tiny_table, tmp_path):
    """A model predicting one constant: correlations NaN, RMSE kept, training finishes."""
    torch.manual_seed(0)
    model = create_model("iqa-cr-q", pretrained=False, **TINY)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.fill_(0.5)
    tr = _trainer(model, tiny_table, tmp_path, lr=0.0, cache_stages=3)  # lr 0: it stays collapsed
    best = tr.fit()
    hist = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(hist) == 2
    for h in hist:
        assert np.isnan(h["val_srocc"]) and np.isnan(h["val_plcc"]) and h["val_collapsed"] == 1.0
        assert np.isfinite(h["val_rmse"])
    assert best["epoch"] == 1 and (tmp_path / "run" / "best.pt").is_file()


def test_final_evaluation_of_a_collapsed_model_still_raises(tiny_table):
    from contentiqa.metrics import MetricInputError
    from contentiqa.training.evaluate import metrics_from_predictions

    const = np.full(len(tiny_table), 0.5)
    with pytest.raises(MetricInputError, match="constant"):
        metrics_from_predictions(const, tiny_table, MOSScale(0, 100))
    m = metrics_from_predictions(const, tiny_table, MOSScale(0, 100), undefined="nan")
    assert np.isnan(m["srocc"]) and m["collapsed"] == 1.0 and m["rmse"] > 0


def test_ema_keeps_the_average_in_best_pt_and_trains_on_from_its_own_weights(tiny_table, tmp_path):
    """ema_decay: validation and best.pt see the moving average of the steps' weights, while the
    optimiser continues from the trained weights; a resumed run continues the same average."""
    def trainer(name, epochs):
        torch.manual_seed(0)
        tr = _trainer(create_model("iqa-cr-q", pretrained=False, **TINY), tiny_table, tmp_path, name=name,
                      epochs=epochs, ema_decay=0.5, lr=1e-2)
        scores = iter([0.1, 0.2, 0.3])  # every epoch improves: best.pt is the last epoch's
        seen = []

        def validate(shared=False):
            seen.append({k: p.detach().clone() for k, p in tr.model.named_parameters()})
            return {"srocc": next(scores)}

        tr.validate = validate
        return tr, seen

    tr, seen = trainer("straight", 3)
    start = {k: p.detach().clone() for k, p in tr.model.named_parameters()}
    tr.fit()
    trained = dict(tr.model.named_parameters())
    averaged = dict(tr.ema.module.named_parameters())
    moved = [k for k in trained if not torch.equal(trained[k], start[k])]
    assert moved, "nothing trained"
    # Validation saw the average, which lags behind the weights training continued from.
    assert any(not torch.allclose(trained[k], averaged[k]) for k in moved)
    for k in moved:
        assert torch.allclose(seen[-1][k], averaged[k]), k
    best = load_checkpoint(tmp_path / "straight" / "best.pt").state_dict()
    for k in moved:
        assert torch.allclose(best[k], averaged[k]), k
    # Stopped after epoch 1 and resumed: the same average and weights as three epochs straight.
    first, _ = trainer("resumed", 3)
    first.cfg.epochs = 1
    first.fit()
    resumed, _ = trainer("resumed", 3)
    resumed.validate = lambda shared=False: {"srocc": 0.2 + 0.1 * resumed.epoch}
    resumed.fit(resume=True)
    for k, p in resumed.ema.module.named_parameters():
        assert torch.allclose(p, averaged[k], atol=1e-6), k
    for k, p in resumed.model.named_parameters():
        assert torch.allclose(p, trained[k], atol=1e-6), k


def test_ema_decay_outside_zero_one_is_refused(tiny_table, tmp_path):
    model = create_model("iqa-cr-q", pretrained=False, **TINY)
    with pytest.raises(ValueError, match="ema_decay .* in \\(0, 1\\)"):
        _trainer(model, tiny_table, tmp_path, ema_decay=1.0)


@pytest.mark.parametrize("field", ["epochs", "batch_size"])
@pytest.mark.parametrize("value", [0, -1, 2.5, True])
def test_epochs_and_batch_size_must_be_at_least_one(field, value):
    with pytest.raises(ValueError, match=f"{field} must be a whole number of at least 1"):
        TrainConfig.from_dict({field: value})
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})
    assert getattr(TrainConfig.from_dict({field: 1}), field) == 1


def test_train_cli_refuses_zero_epochs_and_batch_size_in_one_line(tiny_table, tmp_path, capsys):
    from contentiqa.cli.main import main

    csv = tmp_path / "data.csv"
    tiny_table.to_csv(csv, index=False)
    for flags, field in ((["--epochs", "0"], "epochs"), (["--batch-size", "0"], "batch_size")):
        assert main(["train", "--data", str(csv), "--out", str(tmp_path / "run"), "--quiet", *flags]) == 2
        err = capsys.readouterr().err
        assert f"{field} must be a whole number of at least 1" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_a_diverging_loss_stops_training_and_saves_nothing(tiny_table, tmp_path):
    torch.manual_seed(0)
    tr = _trainer(create_model("iqa-cr-q", pretrained=False, **TINY), tiny_table, tmp_path, epochs=3, lr=1e9,
                  cache_stages=3)
    with pytest.raises(TrainingDiverged, match="diverged at epoch 1 .*lower learning rate") as err:
        tr.fit()
    assert err.value.epoch == 1 and tr.history == []
    assert not (tmp_path / "run" / "last.pt").exists() and not (tmp_path / "run" / "best.pt").exists()


@pytest.mark.parametrize("broken", ["loss", "weights"])
def test_divergence_keeps_the_checkpoints_of_the_last_good_epoch(tiny_table, tmp_path, broken):
    """The epoch after a good one diverges (its loss, or the weights its last step left): fit
    stops there, and last.pt, best.pt and metrics.jsonl are still the good epoch's."""
    torch.manual_seed(0)
    tr = _trainer(create_model("iqa-cr-q", pretrained=False, **TINY), tiny_table, tmp_path, epochs=3, cache_stages=3)
    real = tr.train_epoch

    out = tmp_path / "run"
    saved: dict[str, bytes] = {}

    def train_epoch(epoch):
        if epoch == 1:  # epoch 1's saves are done
            saved["best.pt"] = (out / "best.pt").read_bytes()
        record = real(epoch)
        if epoch == 1:
            if broken == "loss":
                record["loss"] = float("nan")
            else:
                with torch.no_grad():
                    tr.model.head.weight.fill_(float("inf"))
        return record

    tr.train_epoch = train_epoch
    with pytest.raises(TrainingDiverged, match="diverged at epoch 2") as err:
        tr.fit()
    assert err.value.epoch == 2 and "after epoch 1" in str(err.value) and str(out / "last.pt") in str(err.value)
    assert (out / "best.pt").read_bytes() == saved["best.pt"]
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model_state"].values() if v.is_floating_point())


def test_fit_removes_the_temporaries_a_killed_save_left(tiny_table, tmp_path):
    """A process killed while saving a checkpoint leaves '.last.pt.<random>.tmp' beside it; the
    next fit on the folder (resumed or not) removes those of its own files, nothing else."""
    out = tmp_path / "run"
    torch.manual_seed(0)
    first = _trainer(create_model("iqa-cr-q", pretrained=False, **TINY), tiny_table, tmp_path, epochs=1, cache_stages=3)
    first.fit()
    stale = [out / f".{name}.{rand}.tmp" for name, rand in
             (("last.pt", "k2j_9xq1"), ("best.pt", "abcdefgh"), ("metrics.jsonl", "0a1b2c3d"), ("tested.pt", "zzzz_zzz"))]
    kept = [out / ".notes.txt.abcdefgh.tmp",  # another file's temporary
            out / ".last.pt.bak.abcdefgh.tmp",  # last.pt.bak's, not last.pt's
            out / "last.pt.tmp", out / ".last.pt.abcdefgh.json"]
    for p in stale + kept:
        p.write_bytes(b"x" * 1000)
    torch.manual_seed(0)
    resumed = _trainer(create_model("iqa-cr-q", pretrained=False, **TINY), tiny_table, tmp_path, epochs=2, cache_stages=3)
    resumed.fit(resume=True)
    assert [p.name for p in stale if p.exists()] == []
    assert all(p.exists() for p in kept)
    assert len(resumed.history) == 2 and (out / "last.pt").is_file()


def test_only_rank_zero_removes_temporaries(tiny_table, tmp_path):
    """Under several processes rank 0 alone writes the folder: another rank must not remove a
    temporary rank 0 may be writing at that moment."""
    torch.manual_seed(0)
    tr = _trainer(create_model("iqa-cr-q", pretrained=False, **TINY), tiny_table, tmp_path, epochs=1, cache_stages=3)
    out = tmp_path / "run"
    tmp = out / ".config.json.abcdefgh.tmp"
    tmp.write_text("rank 0 writing")
    tr.rank = 1
    tr.fit()
    assert tmp.exists() and not (out / "last.pt").exists()


def test_a_model_of_its_own_vocabulary_finds_its_rows_in_any_spelling(tiny_table, tmp_path):
    """Tables' categories are read in IQA-CR's spelling (Human -> human): a model whose own
    categories are spelt otherwise (['Human', 'Animal']) lost every labelled row."""
    from contentiqa.training.evaluate import category_indices

    assert category_indices(["human", "Animal", " ANIMAL ", None, "spaceship"], ["Human", "Animal"]).tolist() == [0, 1, 1, -1, -1]
    own = create_model("iqa-cr", pretrained=False, categories=("Human", "Animal"), **TINY)
    table = tiny_table.assign(category=["human", "animal", ""] * 4)  # "": a photo without a label, as ever
    _trainer(own, table, tmp_path)  # refused before: "no 'category' column with any of ['Human', 'Animal']"


def test_an_rmse_monitor_keeps_the_epoch_with_the_lowest_rmse(tiny_table, tmp_path):
    """Epochs were ranked by the monitor's value, higher first: monitor=rmse kept the worst."""
    from contentiqa.training.trainer import monitor_improved

    tr = _trainer(create_model("iqa-cr", pretrained=False, **TINY), tiny_table, tmp_path, monitor="rmse")
    assert tr.monitored == "rmse"
    assert monitor_improved(tr._monitor({"rmse": 5.0}), tr._monitor({"rmse": 10.0}))
    assert not monitor_improved(tr._monitor({"rmse": 10.0}), tr._monitor({"rmse": 5.0}))
    plain = _trainer(create_model("iqa-cr", pretrained=False, **TINY), tiny_table, tmp_path, name="b")
    assert plain.monitored == "srocc" and plain._monitor({"srocc": 0.5, "rmse": 3.0}) == 0.5


@pytest.mark.parametrize("val_mos", [[50.0], [50.0, 50.0, 50.0]], ids=["one photo", "rated alike"])
def test_a_validation_part_without_correlations_is_refused_before_any_work(tiny_table, tmp_path, val_mos):
    """It failed after the first epoch, with a MetricInputError traceback and no checkpoint."""
    val = tiny_table.iloc[9:9 + len(val_mos)].assign(mos=val_mos)
    with pytest.raises(ValueError, match="the validation part has .*at least 2 photos rated differently"):
        Trainer(create_model("iqa-cr", pretrained=False, **TINY), tiny_table.iloc[:9], val, MOSScale(0, 100),
                TrainConfig(epochs=1, batch_size=4, crop=48), tmp_path / "run", progress=False, log=lambda *a: None)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_a_set_too_small_to_validate_is_said_and_left_out_of_the_mean(tiny_table, tmp_path):
    """With several sets, one with fewer than 3 validation photos was dropped from the mean
    without a word (and a monitor naming it failed mid-training)."""
    scales = {"A": MOSScale(0, 100), "B": MOSScale(0, 100)}
    table = tiny_table.assign(dataset=["A"] * 6 + ["B"] * 6)
    train, val = table.iloc[[0, 1, 2, 6, 7, 8, 9]], table.iloc[[3, 4, 5, 10]]
    said: list[str] = []
    cfg = dict(epochs=1, batch_size=4, crop=48)
    tr = Trainer(create_model("iqa-cr", pretrained=False, **TINY), train, val, scales, TrainConfig(**cfg),
                 tmp_path / "run", progress=False, log=lambda *a: said.append(" ".join(map(str, a))))
    assert tr.val_sets == ["A"] and any("leave out B" in s for s in said)
    metrics = tr.validate()
    assert {k.split("/")[0] for k in metrics if "/" in k} == {"A"}
    assert {"A/rmse", "A/krocc"} <= set(metrics)  # a monitor may name them: they failed after the first epoch
    with pytest.raises(ValueError, match="monitor 'B/srocc': that set has fewer than 3"):
        Trainer(create_model("iqa-cr", pretrained=False, **TINY), train, val, scales,
                TrainConfig(**cfg, monitor="B/srocc"), tmp_path / "run2", progress=False, log=lambda *a: None)


def test_a_resumed_best_is_ranked_as_this_code_ranks(tiny_table, tmp_path):
    """A run saved while monitor=rmse ranked a higher RMSE first keeps its best as a positive
    RMSE: resumed, no epoch (ranked by the negative now) could ever beat it."""
    from contentiqa.utils.checkpoint_io import load_torch_file

    torch.manual_seed(0)
    _trainer(create_model("iqa-cr", pretrained=False, **TINY), tiny_table, tmp_path, monitor="rmse", epochs=1).fit()
    last = tmp_path / "run" / "last.pt"
    st = load_torch_file(last)
    st["best"]["monitor"] = st["best"]["val_rmse"]  # as the earlier code stored it
    torch.save(st, last)
    again = _trainer(create_model("iqa-cr", pretrained=False, **TINY), tiny_table, tmp_path, monitor="rmse", epochs=1)
    again.fit(resume=True)
    assert again.best["monitor"] == -again.best["val_rmse"]


@pytest.mark.parametrize("options", [
    {"rank_sigma": -0.05}, {"rank_sigma": 0}, {"rank_weight": -1}, {"score_weight": -2}, {"category_weight": -0.2},
    {"backbone_lr_scale": -1}, {"patience": -1}, {"smooth_l1_beta": -1}, {"focal_gamma": -1}, {"lr": -1},
    {"crop": 0}, {"crop": -5}, {"warmup_epochs": -1}, {"ema_decay": 1.5}, {"monitor": "sroc"},
    {"interpolate": 0.5, "init_from": "x.pt"}, {"interpolate": [0.5, "x"], "init_from": "x.pt"},
    {"interpolate": [1.5], "init_from": "x.pt"}, {"interpolate": [], "init_from": "x.pt"}, {"interpolate": [0.5]},
], ids=str)
def test_settings_that_would_train_wrongly_or_fail_later_are_refused_when_read(options):
    """A negative spread or weight reversed its objective without a word, a negative patience
    stopped after one epoch, a bad interpolate failed only after the last epoch (and the
    corrected value was then refused on resume), a crop of 0 was a traceback mid-epoch."""
    with pytest.raises(ValueError):
        TrainConfig.from_dict(options)


def test_interpolate_is_read_as_numbers_and_yaml_boolean_keys_are_named():
    assert TrainConfig(interpolate=["0.5", 1], init_from="x.pt").interpolate == [0.5, 1.0]
    with pytest.raises(ValueError, match=r"unknown training option\(s\) \['True', 'foo'\] \(YAML reads on"):
        TrainConfig.from_dict({True: 1, "foo": 2})


def test_a_damaged_validation_photo_is_named_as_a_training_photo_is(tiny_table, tmp_path):
    """It ended in a RuntimeError traceback, where a damaged training photo gets one line."""
    from contentiqa.data.imageio import ImageLoadError

    bad = Path(tiny_table["image"].iloc[10])
    bad.write_bytes(bad.read_bytes()[:200])
    tr = _trainer(create_model("iqa-cr", pretrained=False, **TINY), tiny_table, tmp_path, epochs=1)
    with pytest.raises(ImageLoadError, match=re.escape(str(bad))):
        tr.fit()


def test_a_damaged_photo_read_by_a_loader_worker_is_named_as_in_the_main_process(tiny_table, tmp_path):
    """With num_workers, torch rebuilds a worker's error from its message alone, which the
    two-argument ImageLoadError refused: a RuntimeError traceback, the file named only inside it."""
    from contentiqa.data.imageio import ImageLoadError

    bad = Path(tiny_table["image"].iloc[2])
    bad.write_bytes(bad.read_bytes()[:200])
    tr = _trainer(create_model("iqa-cr", pretrained=False, **TINY), tiny_table, tmp_path, epochs=1, num_workers=2)
    with pytest.raises(ImageLoadError) as caught:
        tr.fit()
    assert caught.value.path == str(bad) and str(caught.value).startswith(f"{bad}: ")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("stop_at", ["last.pt", "best.pt"])
def test_a_stop_between_the_end_of_epoch_saves_keeps_best_pt_with_last_pt(tiny_table, tmp_path, monkeypatch, stop_at):
    """best.pt was saved before last.pt: a stop between the two left best.pt holding an epoch that
    last.pt and the logs lacked (and the CLI said last.pt held it). Staged, best.pt follows last.pt,
    and a resume ends as the run left alone does."""
    import contentiqa.training.trainer as trainer_module

    def run(name):
        torch.manual_seed(0)  # the same initial weights each time
        return _trainer(create_model("iqa-cr", pretrained=False, **TINY), tiny_table, tmp_path, name=name, epochs=2)

    ref = run("ref")
    ref.fit()
    real_save, real_replace = trainer_module.atomic_torch_save, trainer_module.os.replace

    def save(state, path, *a, **k):
        if Path(path).name == "last.pt" and stop_at == "last.pt":
            raise KeyboardInterrupt  # the stop while last.pt of epoch 1 is written
        return real_save(state, path, *a, **k)

    def replace(src, dst):
        if Path(dst).name == "best.pt" and stop_at == "best.pt":
            raise KeyboardInterrupt  # last.pt of epoch 1 written, best.pt not yet
        return real_replace(src, dst)

    monkeypatch.setattr(trainer_module, "atomic_torch_save", save)
    monkeypatch.setattr(trainer_module.os, "replace", replace)
    stopped = run("run")
    with pytest.raises(KeyboardInterrupt):
        stopped.fit()
    monkeypatch.undo()
    out = tmp_path / "run"
    assert stopped.saved_epoch == (0 if stop_at == "last.pt" else 1)
    assert not (out / "best.pt").exists()  # never ahead of last.pt
    resumed = run("run")
    resumed.fit(resume=True)
    assert not list(out.glob(".*best.pt.epoch*"))
    a, b = load_checkpoint(out / "best.pt").state_dict(), load_checkpoint(tmp_path / "ref" / "best.pt").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_uncertainty_weighting_with_no_task_on_still_backpropagates():
    """score_weight 0 on a batch without labels: the total had no graph and backward raised."""
    loss = MultiTaskLoss(weighting="uncertainty", score_weight=0.0)
    out = {"score": torch.tensor([0.2, 0.8], requires_grad=True), "logits": torch.randn(2, 10, requires_grad=True)}
    total, _ = loss(out, torch.tensor([0.3, 0.5]), torch.tensor([-1, -1]))
    total.backward()
    assert total.item() == 0


def test_training_reads_photos_as_scoring_does_and_ie_iqa_honours_hflip(tmp_path):
    """A native-resolution model trained on photos over max_side at full size while validation and
    scoring shrink them; IE-IQA's own transform flipped whatever hflip said."""
    from PIL import Image

    from contentiqa.training.data import TrainImages

    wide = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 300, 3), dtype=np.uint8)).save(wide)
    model = create_model("iqa-cr", pretrained=False, **TINY)
    model.max_side = 150
    ds = TrainImages([str(wide)], [0.5], [0], model.preprocess, None, False, train=True, max_side=model.max_side)
    assert tuple(ds[0][0].shape[-2:]) == (32, 150) and ds.shapes() == [(32, 150)]
    assert tuple(model.cache_views(Image.open(wide).convert("RGB"))[0].shape[-2:]) == (32, 150)
    assert "150" in model.cache_view_names()  # the cache key knows the bound
    ie = create_model("ie-iqa", pretrained=False, distortion_pretrained=False, intelligibility_task=None, input_size=32,
                      train_resize=40, hidden=(8, 4))
    half = np.zeros((40, 40, 3), np.uint8)
    half[:, 20:] = 255
    Image.fromarray(half).save(tmp_path / "half.png")
    ds = TrainImages([str(tmp_path / "half.png")], [0.5], [0], ie.preprocess, None, False, train=True,
                     transform=ie.train_transform)
    for epoch in range(12):
        ds.set_epoch(epoch)
        x = ds[0][0]
        assert x[:, :, :4].mean() < x[:, :, -4:].mean(), epoch  # dark left, bright right: never mirrored


def test_evaluating_a_content_only_model_needs_labels_and_a_broken_head_fails_its_rows(tiny_table, tmp_path):
    """Without labels to meet it measured nothing and said so by silence (exit 0); with NaN
    weights every photo became the first category, and an accuracy was reported."""
    from contentiqa.training.evaluate import NotMeasurable, evaluate_model

    model = create_model("iqa-cr-c", pretrained=False, **TINY).eval()
    with pytest.raises(NotMeasurable, match="predicts categories only, and the data have no 'category' column"):
        evaluate_model(model, tiny_table.drop(columns=["category"], errors="ignore"), workers=0)
    labelled = tiny_table.assign(category="animal")
    assert "accuracy" in evaluate_model(model, labelled, workers=0)[0]
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    with pytest.raises(NotMeasurable, match="no image could be scored.*no category \\(NaN\\)"):
        evaluate_model(model, labelled, workers=0)


def test_evaluate_measures_a_content_only_model_on_a_placeholder_mos(tiny_table, tmp_path, capsys):
    """Its data were refused for a constant MOS, which it does not read."""
    from contentiqa.cli.main import main
    from contentiqa.models.registry import save_checkpoint

    ckpt = save_checkpoint(create_model("iqa-cr-c", pretrained=False, **TINY), tmp_path / "c.pt")
    csv = tmp_path / "labels.csv"
    tiny_table.assign(mos=50.0, category="animal").to_csv(csv, index=False)
    assert main(["evaluate", "--model", str(ckpt), "--data", str(csv), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "top-1 acc" in out and "any label" not in out
    # people's several labels of a photo: the any-label accuracy is printed too, not only in --json
    tiny_table.assign(mos=50.0, category="animal", categories="animal;landscape").to_csv(csv, index=False)
    assert main(["evaluate", "--model", str(ckpt), "--data", str(csv), "--quiet"]) == 0
    assert "  any label" in capsys.readouterr().out
    # counted on the photos with a label the model knows: said with the figure
    labels = ["animal;landscape", "spaceship;rocket"] * (len(tiny_table) // 2) + ["animal"] * (len(tiny_table) % 2)
    tiny_table.assign(mos=50.0, category=[x.split(";")[0] for x in labels], categories=labels).to_csv(csv, index=False)
    assert main(["evaluate", "--model", str(ckpt), "--data", str(csv), "--quiet"]) == 0
    known = sum("animal" in x for x in labels)
    assert f"(on the {known} images with a label the model knows)" in capsys.readouterr().out


def test_evaluate_says_when_no_label_is_one_of_the_models_categories(tiny_table, tmp_path, capsys):
    """Labels the model has no category for left the accuracy line out without a word."""
    from contentiqa.cli.main import main
    from contentiqa.models.registry import save_checkpoint

    ckpt = save_checkpoint(create_model("iqa-cr", pretrained=False, **TINY), tmp_path / "c.pt")
    csv = tmp_path / "labels.csv"
    tiny_table.assign(category="spaceship").to_csv(csv, index=False)
    assert main(["evaluate", "--model", str(ckpt), "--data", str(csv), "--quiet"]) == 0
    assert "top-1 acc  not measured: no main label is one of the model's categories (labels: spaceship)" in \
        capsys.readouterr().out


def test_a_cached_crop_is_measured_on_the_photo_as_cached(tiny_table, tmp_path):
    """The crop's cells came from the first photo's own height: a first photo over max_side made
    every crop a fraction of the size asked for (2 cells instead of 8 here)."""
    big = write_image(tmp_path / "big.png", 256, 256, seed=50)
    table = pd.concat([pd.DataFrame([{"image": str(big), "mos": 50.0, "category": IQA_CR_CATEGORIES[0]}]), tiny_table],
                      ignore_index=True)
    cells = []
    for rows in (table, table.iloc[1:]):  # the large photo first, then not at all
        model = create_model("iqa-cr", pretrained=False, **TINY)
        model.max_side = 64
        cells.append(_trainer(model, rows, tmp_path, name=f"r{len(cells)}", cache_stages=3, crop=32).train_ds.crop_cells)
    assert cells[0] == cells[1] == 8


def test_a_table_with_a_missing_mos_is_refused_naming_its_rows(tiny_table, tmp_path):
    """A NaN MOS trained an epoch and then read as a diverged loss (advice: lower the learning rate)."""
    bad = tiny_table.copy()
    bad.loc[2, "mos"] = float("nan")
    model = create_model("iqa-cr", pretrained=False, **TINY)
    with pytest.raises(ValueError, match=r"training table: 1 row\(s\) have no finite MOS, e.g. \['.*2\.png'\]"):
        _trainer(model, bad, tmp_path)
    with pytest.raises(ValueError, match="seed"):
        TrainConfig(seed=-1)
