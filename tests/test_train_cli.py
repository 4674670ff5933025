"""`contentiqa train` / `evaluate` as a researcher meets them on their own table: a rerun never
silently restarts a run, one seed gives one model, and a table, split or output that cannot work
is a one-line usage error (exit 2) naming what to change, before hours of work, not a traceback."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from contentiqa.cli.main import main

from conftest import write_image

TINY = ["--model", "iqa-cr-q", "--recipe", "none", "--set", "model.backbone_pretrained=false", "--set", "model.dim=16",
        "--set", "model.heads=2", "--set", "model.mlp_dim=32", "--set", "model.grid=[2, 2]", "--set", "model.depth=1",
        "--set", "crop=48", "--batch-size", "4", "--epochs", "1", "--quiet"]


def table(folder: Path, n: int = 12, **columns) -> Path:
    rng = np.random.default_rng(0)
    rows = {"image": [str(write_image(folder / "img" / f"{i}.png", 56, 64, seed=i)) for i in range(n)],
            "mos": rng.uniform(0, 100, n).round(2)}
    rows.update(columns)
    path = folder / "data.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def train(data: Path, out: Path, *extra: str) -> int:
    return main(["train", "--data", str(data), "--out", str(out), "--protocol", "ie-iqa", *TINY, *extra])


def test_a_training_photo_over_the_pixel_limit_gets_advice_train_can_follow(tmp_path, capsys):
    """train said the library's "raise max_pixels to allow it", an option it does not have."""
    from conftest import png_header_only

    data = table(tmp_path)
    for i in range(6):  # headers claiming 400 MP, in the train part whichever way it is drawn
        (tmp_path / "img" / f"{i}.png").write_bytes(png_header_only(20000, 20000))
    assert train(data, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "decompression-bomb guard; use a smaller copy of it" in err and "max_pixels" not in err, err


def test_a_rerun_without_resume_is_refused_and_resume_continues(tmp_path, capsys):
    data, out = table(tmp_path), tmp_path / "run"
    assert train(data, out) == 0
    assert "best epoch 1: lowest training loss" in capsys.readouterr().out  # no validation part ("val SROCC nan")
    first = (out / "metrics.jsonl").read_text()
    assert train(data, out, "--epochs", "2") == 2
    err = capsys.readouterr().err
    assert "holds a run already (1 epoch(s) done)" in err and "--resume" in err
    assert (out / "metrics.jsonl").read_text() == first  # untouched
    assert train(data, out, "--epochs", "2", "--resume") == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_ctrl_c_says_what_was_kept_and_how_to_go_on(tmp_path, capsys, monkeypatch):
    """It printed only "interrupted"."""
    from contentiqa.training.trainer import Trainer

    data, out = table(tmp_path), tmp_path / "run"
    assert train(data, out) == 0
    capsys.readouterr()
    fit = Trainer.fit

    def fit_then_ctrl_c(self, resume=False):
        self.cfg.epochs = 2
        fit(self, resume)  # epoch 2 done, then Ctrl-C in epoch 3
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "fit", fit_then_ctrl_c)
    assert train(data, out, "--epochs", "3", "--resume") == 130
    err = capsys.readouterr().err
    assert f"interrupted during epoch 3: {out / 'last.pt'} holds epoch 2" in err and "--resume" in err


@pytest.mark.parametrize("when", ["caching", "testing"])
def test_sigterm_outside_an_epoch_says_how_to_go_on(tmp_path, capsys, monkeypatch, when):
    """A scheduler's SIGTERM killed train without a word; Ctrl-C while caching or testing said
    only "interrupted"."""
    import os
    import signal

    import contentiqa.cli.train as cli_train
    from contentiqa.training.trainer import Trainer

    def terminated(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the run")

    if when == "caching":
        monkeypatch.setattr(Trainer, "__init__", terminated)
    else:
        monkeypatch.setattr(cli_train, "_test", terminated)
    def unhandled(signum, frame):  # what the test process does if train leaves SIGTERM alone
        raise RuntimeError("SIGTERM reached the caller: train did not handle it")

    before = signal.signal(signal.SIGTERM, unhandled)
    try:
        data, out = table(tmp_path, n=20), tmp_path / "run"
        assert train(data, out) == 143  # 128 + SIGTERM
        assert signal.getsignal(signal.SIGTERM) is unhandled  # put back
    finally:
        signal.signal(signal.SIGTERM, before)
    err = capsys.readouterr().err
    assert "interrupted: rerun the same command with --resume" in err and str(out) in err


def test_one_seed_trains_one_model(tmp_path):
    data = table(tmp_path)
    losses = []
    for name in ("a", "b"):
        assert train(data, tmp_path / name, "--seed", "3") == 0
        losses.append(json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[0])["loss"])
    assert losses[0] == losses[1]


def test_resume_with_other_settings_is_a_usage_error(tmp_path, capsys):
    data, out = table(tmp_path), tmp_path / "run"
    assert train(data, out) == 0
    assert train(data, out, "--resume", "--epochs", "2", "--set", "ema_decay=0.99") == 2
    assert "--resume:" in capsys.readouterr().err


def test_resume_takes_a_larger_patience_up_and_refuses_fewer_epochs_than_done(tmp_path, capsys, monkeypatch):
    """Both were a silent no-op while config.json recorded the new value for the whole run."""
    from contentiqa.training.trainer import Trainer

    monkeypatch.setattr(Trainer, "_monitor", lambda self, metrics: 0.5)  # never better after the first epoch
    data, out = table(tmp_path, n=20, split=["train"] * 12 + ["val"] * 4 + ["test"] * 4), tmp_path / "run"
    assert train(data, out, "--epochs", "4", "--set", "patience=1") == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2  # stopped early after epoch 2
    before = (out / "config.json").read_text()
    assert train(data, out, "--epochs", "1", "--set", "patience=1", "--resume") == 2
    assert "has trained 2 epochs already: epochs 1 is fewer" in capsys.readouterr().err
    assert (out / "config.json").read_text() == before
    assert train(data, out, "--epochs", "4", "--set", "patience=1", "--resume") == 0  # the same: finished
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert train(data, out, "--epochs", "4", "--set", "patience=3", "--resume") == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[-1])["stopped"]  # went on until 3 epochs without a better one


@pytest.mark.parametrize("changed", [["--seed", "5"], ["--lr", "0.01"], ["--set", "crop=32"], ["--batch-size", "2"],
                                     ["--set", "score_loss=mse"]])
def test_resume_refuses_every_change_of_recipe(tmp_path, capsys, changed):
    """Each was accepted (lr with a warning), and config.json then claimed the new value for
    the whole run; a changed seed even trained on another model's cached features."""
    data, out = table(tmp_path), tmp_path / "run"
    assert train(data, out) == 0
    before = (out / "config.json").read_text()
    assert train(data, out, "--resume", "--epochs", "2", *changed) == 2
    err = capsys.readouterr().err
    assert "--resume:" in err and "was trained with" in err and "only epochs, patience" in err
    assert (out / "config.json").read_text() == before
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_a_finished_run_given_more_epochs_drops_its_old_test_figures(tmp_path):
    """They described epoch 1's model while best.pt moved on (a run stopped before its new end
    kept them)."""
    from contentiqa.training.trainer import Trainer

    data, out = table(tmp_path, n=20), tmp_path / "run"
    assert train(data, out) == 0
    assert (out / "test_metrics.json").is_file()
    # what the figures were measured on, and by what: recorded beside them
    run = json.loads((out / "run.json").read_text())
    assert run["data"] == [{"data": str(data.resolve()), "dataset": "csv", "split": {"protocol": "ie-iqa", "seed": 0,
                                                                                       "file": None},
                            "parts": {"train": 16, "test": 4}}]
    assert run["tested"] in ("best.pt", "tested.pt") and run["provenance"]["contentiqa"]
    # how it trained, as an experiment's results say it
    assert run["minutes_per_epoch"] > 0 and run["trained"] and run["device"] == "cpu" and run["processes"] == 1
    real = Trainer._judge_epoch

    def stop_after_one_more(self, record, t0):
        got = real(self, record, t0)
        if self.epoch == 1:  # epoch 2 judged: the run is killed before it ends
            raise KeyboardInterrupt
        return got

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "_judge_epoch", stop_after_one_more)
        assert train(data, out, "--resume", "--epochs", "3") == 130
    assert not (out / "test_metrics.json").exists() and not (out / "run.json").exists()
    assert train(data, out, "--resume", "--epochs", "3") == 0
    assert (out / "test_metrics.json").is_file()


def test_out_that_is_a_file_is_a_usage_error(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("hi")
    assert train(table(tmp_path), afile) == 2
    assert "is a file" in capsys.readouterr().err


def test_a_split_without_validation_or_test_part_says_so(tmp_path, capsys):
    data = table(tmp_path)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--protocol", "iqa-cr", *TINY]) == 0
    err = capsys.readouterr().err
    assert "no validation part" in err and "no test part" in err and "about 60 images" in err


@pytest.mark.parametrize("mos,words", [
    (["abc"], ["non-numeric", "0.png ('abc')"]),
    ([float("inf")], ["infinite", "0.png"]),
    ([1000.0], ["outside the scales guessed", "mos_range"]),
])
def test_bad_mos_values_are_named(tmp_path, capsys, mos, words):
    data = table(tmp_path)
    df = pd.read_csv(data)
    df["mos"] = df["mos"].astype(object)
    df.loc[0, "mos"] = mos[0]
    df.to_csv(data, index=False)
    assert train(data, tmp_path / "run") == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err, err


def test_a_declared_range_the_values_leave_is_an_error(tmp_path, capsys):
    data = table(tmp_path)
    data.write_text("# mos_range: 1 5\n" + data.read_text())
    assert train(data, tmp_path / "run") == 2
    assert "outside the declared range 1 to 5" in capsys.readouterr().err


def test_unknown_split_column_values_are_refused(tmp_path, capsys):
    data = table(tmp_path, split=["train"] * 8 + ["validation"] * 2 + ["testing"] * 2)
    assert train(data, tmp_path / "run") == 2
    assert "['testing', 'validation']" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused after --out was made: not left behind empty


def test_evaluate_reads_the_split_column_names_failures_and_checks_outputs_first(tmp_path, capsys):
    data = table(tmp_path, split=["train"] * 7 + ["val"] * 2 + ["test"] * 3)
    out = tmp_path / "run"
    assert train(data, out) == 0
    ckpt = str(out / "best.pt")
    capsys.readouterr()
    (tmp_path / "adir").mkdir()
    assert main(["evaluate", "--model", ckpt, "--data", str(data), "--json", str(tmp_path / "adir"), "--quiet"]) == 2
    assert "--json" in capsys.readouterr().err
    df = pd.read_csv(data)
    Path(df.loc[11, "image"]).write_text("not an image")
    assert main(["evaluate", "--model", ckpt, "--data", str(data), "--quiet"]) == 1
    cap = capsys.readouterr()
    assert "(2 images, 1 failed)" in cap.out and "whose 'split' is 'test'" in cap.out
    assert "11.png: not an image" in cap.err


def test_evaluate_that_cannot_measure_names_the_failed_images_and_keeps_the_rows(tmp_path, capsys):
    """It said only "need at least 2 values, got 1", and --predictions was not written."""
    from tiny_models import tiny_checkpoint

    data = table(tmp_path, n=3)
    df = pd.read_csv(data)
    for i in (1, 2):
        Path(df.loc[i, "image"]).write_text("not an image")
    preds = tmp_path / "p.csv"
    assert main(["evaluate", "--model", tiny_checkpoint(), "--data", str(data), "--quiet", "--predictions", str(preds)]) == 2
    err = capsys.readouterr().err
    assert "need at least 2 values, got 1 (2 of 3 image(s) could not be scored)" in err
    assert "1.png: not an image" in err and "2.png: not an image" in err
    assert len(pd.read_csv(preds)) == 3


def test_evaluate_says_which_labels_top1_could_not_count(tmp_path, capsys):
    from contentiqa.data.categories import IQA_CR_CATEGORIES
    from tiny_models import tiny_checkpoint

    cats = [IQA_CR_CATEGORIES[i % 3] for i in range(10)] + ["spaceship", "spaceship"]
    data = table(tmp_path, n=12, category=cats)
    assert main(["evaluate", "--model", tiny_checkpoint(), "--data", str(data), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "(on the 10 of 12 labelled images whose label the model knows; not: spaceship)" in out


def test_a_split_file_for_another_table_is_a_usage_error(tmp_path, capsys):
    data, out = table(tmp_path), tmp_path / "run"
    assert train(data, out) == 0
    df = pd.read_csv(data)
    df.iloc[:6].to_csv(tmp_path / "fewer.csv", index=False)
    assert main(["evaluate", "--model", str(out / "best.pt"), "--data", str(tmp_path / "fewer.csv"),
                 "--split", str(out / "split.json"), "--quiet"]) == 2
    assert "made for another table" in capsys.readouterr().err


def test_a_diverging_training_is_one_line(tmp_path, capsys):
    assert train(table(tmp_path), tmp_path / "run", "--lr", "1e9", "--epochs", "2") == 2
    assert "training loss diverged at epoch" in capsys.readouterr().err


@pytest.mark.parametrize("setting, words", [
    ("hflip=\"false\"", "hflip is true or false, not 'false'"),  # in quotes: truthy, mirroring stayed on
    ("scheduler=constant", "scheduler is one of cosine, none, not 'constant'"),  # ran cosine
    ("optimizer=adam", "optimizer is one of adamw, sgd"),
    ("calibrate_on=all", "calibrate_on is one of first, each"),
    ("monitor=srcc", "monitor 'srcc' is no validation metric"),  # found after a whole epoch
    ("device=gpu", "unknown device 'gpu'"),  # a torch traceback
])
def test_a_mistyped_setting_is_refused_before_any_work(tmp_path, capsys, setting, words):
    assert train(table(tmp_path), tmp_path / "run", "--set", setting) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_yaml_numbers_without_a_dot_are_numbers_and_words_are_refused(tmp_path, capsys):
    """YAML reads 1e-4 as the string '1e-4': it is the learning rate all the same."""
    data = table(tmp_path)
    good = tmp_path / "good.yaml"
    good.write_text("train: {lr: 1e-4}\n")
    assert train(data, tmp_path / "a", "--config", str(good)) == 0
    assert json.loads((tmp_path / "a" / "config.json").read_text())["train_config"]["lr"] == 1e-4
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lr: fast}\n")
    assert train(data, tmp_path / "b", "--config", str(bad)) == 2
    assert "training option lr must be a number, not 'fast'" in capsys.readouterr().err
    # a folder given as --config was called "not a UTF-8 text file"
    assert train(data, tmp_path / "c", "--config", str(tmp_path)) == 2
    assert f"{tmp_path} is a folder, not a config file" in capsys.readouterr().err


def test_an_experiment_whose_protocol_leaves_no_test_part_says_why(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CONTENTIQA_CACHE", str(tmp_path / "cache"))
    data = table(tmp_path)
    cfg = tmp_path / "x.yaml"
    cfg.write_text(f"""name: x
data: {{name: csv, root: {data}}}
protocol: iqa-cr
seeds: 1
test: [split]
runs:
  - {{name: q, model: iqa-cr-q, model_args: {{backbone_pretrained: false, dim: 16, heads: 2, mlp_dim: 32, grid: [2, 2],
      depth: 1}}, train: {{epochs: 1, batch_size: 4, crop: 48}}}}
""")
    assert main(["experiment", str(cfg), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "no test part (its 10 cells" in capsys.readouterr().err
    assert not (tmp_path / "out" / "runs").exists()  # said before the split trained, not after


def test_a_training_config_with_a_key_given_twice_is_refused(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train: {epochs: 3}\ntrain: {lr: 0.001}\n")
    assert train(table(tmp_path), tmp_path / "run", "--config", str(cfg)) == 2
    assert "c.yaml:2: duplicate key 'train' (first on line 1)" in capsys.readouterr().err


def test_a_fresh_start_in_a_used_folder_leaves_nothing_of_the_earlier_run(tmp_path, capsys):
    """Deleting last.pt to start over (or --resume with none) trains afresh: the earlier run's
    tested.pt (the model to use) and test metrics must not stay beside the new run's best.pt."""
    data = table(tmp_path, n=20, split=["train"] * 9 + ["val"] * 8 + ["test"] * 3)
    out = tmp_path / "run"
    assert train(data, out, "--set", "calibrate=true") == 0
    assert (out / "tested.pt").is_file() and (out / "test_metrics.json").is_file()
    (out / "last.pt").unlink()
    capsys.readouterr()
    assert train(data, out, "--split", str(tmp_path / "none.json"), "--seed", "5") == 2  # a usage error touches nothing
    assert (out / "tested.pt").is_file()
    data_no_test = table(tmp_path / "b", split=["train"] * 9 + ["val"] * 3)
    assert train(data_no_test, out, "--seed", "5") == 0
    assert not (out / "tested.pt").exists() and not (out / "test_metrics.json").exists()
    assert (out / "best.pt").is_file()


def test_mistakes_in_the_model_the_settings_or_a_config_are_usage_errors(tmp_path, capsys):
    data = table(tmp_path / "d")
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "a"), "--model", "iqa_cr"]) == 2
    err = capsys.readouterr().err
    assert "--model:" in err and "--recipe" not in err  # no --recipe was given
    assert train(data, tmp_path / "b", "--set", "monitor=123") == 2
    assert "training option monitor must be text, not 123" in capsys.readouterr().err
    assert train(data, tmp_path / "c", "--set", f"init_from={tmp_path / 'missing.pt'}") == 2
    assert "missing.pt" in capsys.readouterr().err
    for section in ("train: [1]", "model_args: 5"):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"model: iqa-cr-q\n{section}\n")
        assert main(["train", "--data", str(data), "--out", str(tmp_path / "d"), "--config", str(cfg)]) == 2
        assert "must be a mapping" in capsys.readouterr().err


def test_evaluate_predictions_are_on_the_scale_rmse_reads_and_never_replace_the_data(tmp_path, capsys):
    """A model on 0-100 against a 1-5 table: `pred` was the model's 0-100 score beside 1-5 MOS,
    so the file's RMSE was not the reported one."""
    from tiny_models import tiny_checkpoint

    data = table(tmp_path, n=6)
    df = pd.read_csv(data)
    df["mos"] = np.linspace(1.2, 4.8, len(df))
    df.to_csv(data, index=False)
    preds, metrics = tmp_path / "p.csv", tmp_path / "m.json"
    assert main(["evaluate", "--model", tiny_checkpoint(), "--data", str(data), "--quiet",
                 "--predictions", str(preds), "--json", str(metrics)]) == 0
    p = pd.read_csv(preds)
    rmse = float(np.sqrt(((p["pred"] - p["mos"]) ** 2).mean()))
    assert rmse == pytest.approx(json.loads(metrics.read_text())["rmse"], rel=1e-6)
    assert "pred_model_scale" in p and (p["pred_model_scale"] != p["pred"]).all()
    before = data.read_bytes()
    assert main(["evaluate", "--model", tiny_checkpoint(), "--data", str(data), "--predictions", str(data)]) == 2
    assert "is the file the data come from" in capsys.readouterr().err and data.read_bytes() == before
    weights = Path(tiny_checkpoint())  # one slip of a name: the trained weights replaced by the metrics
    kept = weights.read_bytes()
    assert main(["evaluate", "--model", str(weights), "--data", str(data), "--json", str(weights)]) == 2
    assert "is the --model checkpoint" in capsys.readouterr().err and weights.read_bytes() == kept
    # one file for both outputs: the predictions replaced the metrics
    assert main(["evaluate", "--model", tiny_checkpoint(), "--data", str(data), "--predictions", str(metrics),
                 "--json", str(metrics)]) == 2
    assert "name one file" in capsys.readouterr().err
    # what was measured is in the metrics file: every row, no split, no logistic fit
    assert {k: json.loads(metrics.read_text())[k] for k in ("part", "split", "fit_logistic")} == \
        {"part": None, "split": None, "fit_logistic": False}
    # --part without a split was ignored: every row's figures, looking like one part's
    assert main(["evaluate", "--model", tiny_checkpoint(), "--data", str(data), "--quiet", "--part", "val"]) == 2
    assert "--part needs a split" in capsys.readouterr().err
    # --split-index picks a split of a file: with none, or a 'split' column (one split), it was ignored
    with_column = tmp_path / "with_column.csv"
    pd.read_csv(data).assign(split=["train", "test"] * (len(pd.read_csv(data)) // 2)).to_csv(with_column, index=False)
    for d in (data, with_column):
        assert main(["evaluate", "--model", tiny_checkpoint(), "--data", str(d), "--quiet", "--split-index", "1",
                     "--json", str(tmp_path / "new" / "m.json")]) == 2
        err = capsys.readouterr().err
        assert "--split-index 1 picks a split of a --split FILE" in err and "--split-seed" not in err  # (train's)
        assert not (tmp_path / "new").exists()  # refused before its folder was made


def test_a_row_removed_as_advised_lets_resume_continue_on_the_runs_own_split(tmp_path, capsys):
    """'replace the file or remove its row (then --resume continues)': with a split made by
    --protocol, removing the row made the run's own split.json name an image the table lacked."""
    data, out = table(tmp_path), tmp_path / "run"
    assert train(data, out) == 0
    df = pd.read_csv(data)
    df.drop(index=3).to_csv(data, index=False)
    capsys.readouterr()
    assert train(data, out, "--epochs", "2", "--resume") == 0
    assert "1 image(s) of" in capsys.readouterr().err and len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_resume_refuses_a_test_part_holding_photos_it_trained_on(tmp_path, capsys):
    """Fewer training photos are taken (a damaged one's row removed); training photos moved into the
    test part were taken too, and best.pt, which trained on them, was 'tested' on them."""
    data, out = table(tmp_path, n=12, split=["train"] * 8 + ["val"] * 2 + ["test"] * 2), tmp_path / "run"
    assert train(data, out) == 0
    df = pd.read_csv(data)
    df.loc[:2, "split"] = "test"
    df.to_csv(data, index=False)
    capsys.readouterr()
    assert train(data, out, "--epochs", "2", "--resume") == 2
    assert "was trained or validated on 3 photo(s) of this run's test part" in capsys.readouterr().err
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize("setting, said", [
    ("monitor=accuracy", "monitor 'accuracy': iqa-cr-q gives no category to measure it on"),  # after epoch 1, lost
    ("dataset_ratio={TINY: 1}", "dataset_ratio draws from several training sets: this run has one"),  # after caching
    ("dataset_ratio={A: .inf}", "dataset_ratio maps training sets to draws above 0"),  # an OverflowError
    ("dataset_ratio=2", "dataset_ratio maps training sets to draws above 0"),  # "'int' object is not iterable"
    ("dataset_ratio={A: 1" + "0" * 400 + "}", "dataset_ratio maps training sets to draws above 0"),  # OverflowError
    ("score_weight=0", "every loss term of this model is weighted 0"),  # trained nothing, said nothing
])
def test_settings_that_fail_late_or_train_nothing_are_refused_first(tmp_path, capsys, setting, said):
    data = table(tmp_path, n=12, split=["train"] * 8 + ["val"] * 2 + ["test"] * 2)
    assert train(data, tmp_path / "run", "--set", setting) == 2
    assert said in capsys.readouterr().err
    assert not (tmp_path / "run" / "cache").exists()  # before any photo is encoded


def test_resume_refuses_another_mos_scale(tmp_path, capsys):
    """One dataset's scale was not compared: its guess changed with the rows (or a declared range),
    and the run went on learning other targets, its config claiming the new scale for all of it."""
    data, out = table(tmp_path), tmp_path / "run"
    assert train(data, out) == 0
    data.write_text("# mos_range: 0 200\n" + data.read_text())
    capsys.readouterr()
    assert train(data, out, "--epochs", "2", "--resume") == 2
    assert "was trained on MOS scale 0-100; this run's data are on 0-200" in capsys.readouterr().err


def test_a_fresh_start_in_a_used_folder_keeps_no_earlier_epochs(tmp_path):
    """With last.pt deleted (as the divergence advice says), the old run's metrics.jsonl stayed
    beside the new run's config.json until the new run's first epoch ended, for good if it never did."""
    from contentiqa.training.trainer import Trainer

    data, out = table(tmp_path), tmp_path / "run"
    assert train(data, out) == 0
    (out / "last.pt").unlink()

    def interrupted(self, epoch):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "train_epoch", interrupted)
        assert train(data, out) == 130
    assert (out / "config.json").is_file() and not (out / "metrics.jsonl").exists()


def test_resume_on_another_split_is_refused(tmp_path, capsys):
    """A split file's other split (or none: a new draw) was taken up without a word: the run went on
    training on photos it was then tested on."""
    from contentiqa.data import load_dataset, make_split_set, save_splits

    data, out = table(tmp_path, n=20), tmp_path / "run"
    splits = tmp_path / "splits.json"
    save_splits(make_split_set(load_dataset("csv", data).table, "ie-iqa", seeds=[0, 1], progress=False), splits)
    assert train(data, out, "--split", str(splits), "--split-index", "1") == 0
    capsys.readouterr()
    for other in (["--split", str(splits), "--split-index", "0"], ["--split-seed", "5"]):
        assert train(data, out, "--epochs", "2", "--resume", *other) == 2
        err = capsys.readouterr().err
        assert "--resume:" in err and "was trained on other photos" in err and "part were not in it" in err, err
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert train(data, out, "--epochs", "2", "--resume", "--split", str(splits), "--split-index", "1") == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_evaluate_names_the_seed_of_the_split_it_measured(tmp_path, capsys):
    """--split-index is a position: taken for a seed, it measured another split's test part (photos the
    model may have trained on) and nothing said which seed it was; the metrics file named no scale."""
    from tiny_models import tiny_checkpoint

    from contentiqa.data import load_dataset, make_split_set, save_splits

    data = table(tmp_path, n=20)
    splits = tmp_path / "splits.json"
    save_splits(make_split_set(load_dataset("csv", data).table, "ie-iqa", seeds=[3, 7], progress=False), splits)
    metrics = tmp_path / "m.json"
    assert main(["evaluate", "--model", tiny_checkpoint(), "--data", str(data), "--split", str(splits), "--split-index",
                 "1", "--json", str(metrics)]) == 0
    assert "split 1: seed 7, ie-iqa" in capsys.readouterr().out
    got = json.loads(metrics.read_text())
    assert got["split_seed"] == 7 and got["split_index"] == 1 and got["mos_scale"]["high"] == 100
    # which weights were measured, by file and SHA-256 as score's rows say it (a name's tag moves)
    ckpt = Path(tiny_checkpoint())
    assert got["weights"] == str(ckpt) and got["weights_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert got["model_spec"] == str(ckpt) and got["contentiqa_version"]


def test_quiet_hides_progress_not_the_trainers_notes(tmp_path, capsys):
    """--quiet ("no progress bars") also hid the notes on labels a content head has no category for."""
    data = table(tmp_path, n=20, category=["animal", "vehicle", "human", "plant"] * 5)
    assert train(data, tmp_path / "run", "--model", "iqa-cr", "--set", "model.categories=[animal, human, plant]") == 0
    said = capsys.readouterr()
    assert "labelled ['vehicle'], which the content head has no category for" in said.err
    assert "training iqa-cr" not in said.out + said.err  # the progress lines stay quiet


def test_evaluate_takes_a_held_out_file_whose_split_column_is_all_test(tmp_path, capsys):
    """'the split column marks no row as train': evaluating needs no training rows."""
    from tiny_models import tiny_checkpoint

    data = table(tmp_path, split=["test"] * 12)
    assert main(["evaluate", "--model", tiny_checkpoint(), "--data", str(data), "--quiet"]) == 0
    assert "(12 images" in capsys.readouterr().out
    assert train(table(tmp_path / "t", split=["test"] * 12), tmp_path / "run") == 2  # training does need them


def test_resume_on_another_table_is_refused_not_emptied(tmp_path, capsys):
    data, out = table(tmp_path / "a"), tmp_path / "run"
    assert train(data, out) == 0
    other = tmp_path / "b.csv"  # none of the run's photos
    pd.DataFrame({"image": [str(write_image(tmp_path / "b" / f"x{i}.png", 56, 64, seed=i)) for i in range(12)],
                  "mos": np.linspace(0, 100, 12)}).to_csv(other, index=False)
    capsys.readouterr()
    assert train(other, out, "--epochs", "2", "--resume") == 2
    assert "made for another table" in capsys.readouterr().err


def test_a_table_with_only_train_and_test_rows_gets_a_validation_part_for_its_calibration(tmp_path, capsys):
    """A release's own split (BIQ2021's) has train and test rows only: the default recipes
    calibrate on a validation part, so training refused it with advice that changed nothing.
    It gets one drawn from the training rows per --split-seed (the `official` protocol of
    experiments), saved as the run's split.json; the test part stays the table's."""
    from contentiqa.data import load_splits

    data = table(tmp_path, n=90, split=["train"] * 80 + ["test"] * 10)
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(out), *TINY, "--set", "calibrate=true",
                 "--split-seed", "3"]) == 0
    assert (out / "tested.pt").is_file() and (out / "test_metrics.json").is_file()
    from contentiqa.models import load_checkpoint

    # the model to use says how it was made, as best.pt does
    info = load_checkpoint(out / "tested.pt").checkpoint_info
    assert info["recipe"] == load_checkpoint(out / "best.pt").checkpoint_info["recipe"] and info["best"]["epoch"] == 1
    assert "val_srocc" in info["best"] and "calibration" in info
    split = load_splits(out / "split.json")[0]
    assert (split.protocol, split.seed) == ("official", 3)
    assert len(split.parts["val"]) == 8 and len(split.parts["train"]) == 72
    names = pd.read_csv(data)["image"].map(lambda p: Path(p).name)
    assert sorted(Path(k).name for k in split.parts["test"]) == sorted(names[80:])
    assert main(["train", "--data", str(table(tmp_path / "c")), "--out", str(tmp_path / "c" / "run"), *TINY,
                 "--protocol", "official"]) == 2
    assert "has no 'split' column" in capsys.readouterr().err


def test_the_best_epoch_line_names_the_metric_that_chose_it(tmp_path, capsys):
    """It always printed the epoch's val SROCC, also when --set monitor=plcc had chosen it."""
    data = table(tmp_path, split=["train"] * 7 + ["val"] * 3 + ["test"] * 2)
    assert train(data, tmp_path / "run", "--set", "monitor=plcc") == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("best epoch"))
    best = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert f"val plcc {best['val_plcc']:.4f}" in line, line


def test_a_resumed_run_keeps_the_parts_it_started_with(tmp_path):
    """A run begun before a 'split' column's validation draw saved no split.json: resumed, it
    would have drawn a validation part out of the rows it was training on."""
    import argparse

    from contentiqa.cli.common import resolve_split

    data = pd.read_csv(table(tmp_path, n=40, split=["train"] * 35 + ["test"] * 5))
    args = argparse.Namespace(split=None, protocol=None, split_seed=0, quiet=True, data="d.csv")
    assert set(resolve_split(args, data, training=True).parts) == {"train", "val", "test"}
    kept = resolve_split(args, data, training=True, draw_val=False)
    assert kept.protocol == "column" and len(kept.parts["train"]) == 35 and "val" not in kept.parts


def test_resume_refuses_model_arguments_other_than_the_runs(tmp_path, capsys):
    """They were replaced by the saved ones without a word: the user thought the architecture changed."""
    data, out = table(tmp_path), tmp_path / "run"
    assert train(data, out) == 0
    assert train(data, out, "--resume", "--epochs", "2", "--set", "model.dim=32") == 2
    err = capsys.readouterr().err
    assert "--resume:" in err and "model argument(s) dim 16 (now 32)" in err
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert train(data, out, "--resume", "--epochs", "2") == 0  # the same arguments (the flags repeat them): goes on
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_resume_takes_model_arguments_as_the_config_keeps_them(tmp_path):
    """'none' is None, 1 is 1.0, a tuple its list: the unchanged command was refused."""
    import argparse
    import json as _json

    from contentiqa.cli.train import _resumed_model_args

    (tmp_path / "last.pt").write_bytes(b"")
    (tmp_path / "config.json").write_text(_json.dumps({"model_config": {
        "intelligibility_task": None, "calibration": [0.0, 1.0, 0.5, 0.2], "hidden": [8, 4]}}))
    args = argparse.Namespace(resume=True)
    asked = {"intelligibility_task": "none", "calibration": [0, 1, 0.5, 0.2], "hidden": (8, 4)}
    assert _resumed_model_args(args, tmp_path, asked)["hidden"] == [8, 4]
    from contentiqa.cli.main import UsageError

    with pytest.raises(UsageError, match="hidden"):
        _resumed_model_args(args, tmp_path, {"hidden": (16, 4)})
    # a weight file moved with its project: the path given now is where it is (it was refused, and
    # without it the old path failed to build the model: the run could not go on)
    (tmp_path / "config.json").write_text(_json.dumps({"model_config": {"hidden": [8, 4],
                                                                        "backbone_checkpoint": "projA/bb.pt"}}))
    got = _resumed_model_args(args, tmp_path, {"hidden": [8, 4], "backbone_checkpoint": "projB/bb.pt"})
    assert got == {"hidden": [8, 4], "backbone_checkpoint": "projB/bb.pt"}


def test_a_split_file_an_earlier_attempt_left_is_not_taken_for_the_runs_own(tmp_path, capsys):
    """An attempt that failed after drawing its split left split.json: a later run on the table's
    own 'split' column (or a --split file) was then refused on --resume ("trained on other
    photos"), and `evaluate --split OUT/split.json` measured photos the model had trained on."""
    out = tmp_path / "run"
    data = table(tmp_path, n=20)
    assert train(data, out, "--set", "calibrate=true") == 2  # ie-iqa has no val part: refused after the draw
    assert (out / "split.json").is_file()
    # passed back as --split (data.md: share the split file): it is the run's input, never removed
    kept = (out / "split.json").read_text()
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "given"), *TINY, "--split", str(out / "split.json")]) == 0
    assert main(["train", "--data", str(data), "--out", str(out), *TINY, "--split", str(out / "split.json")]) == 0
    assert (out / "split.json").read_text() == kept
    assert main(["train", "--data", str(data), "--out", str(out), *TINY, "--split", str(out / "split.json"),
                 "--epochs", "2", "--resume"]) == 0
    import shutil

    shutil.rmtree(out)
    assert train(data, out, "--set", "calibrate=true") == 2
    capsys.readouterr()
    column = table(tmp_path, n=20, split=["train"] * 12 + ["val"] * 4 + ["test"] * 4)
    assert main(["train", "--data", str(column), "--out", str(out), *TINY]) == 0
    assert not (out / "split.json").exists()
    assert main(["train", "--data", str(column), "--out", str(out), *TINY, "--epochs", "2", "--resume"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_test_photo_that_could_not_be_scored_is_said_and_exits_1(tmp_path, capsys):
    data = table(tmp_path, n=20, split=["train"] * 12 + ["val"] * 4 + ["test"] * 4)
    bad = Path(pd.read_csv(data)["image"][19])
    bad.write_bytes(bad.read_bytes()[:200])  # a damaged test photo: the training still runs
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), *TINY]) == 1
    captured = capsys.readouterr()
    assert f"{bad}: truncated" in captured.err and "(3 images, 1 failed)" in captured.out  # as evaluate says it


def test_mistakes_found_before_training_not_after(tmp_path, capsys):
    data = table(tmp_path, n=20, split=["train"] * 15 + ["val"] * 4 + ["test"])
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(out), *TINY]) == 2  # one test photo: no correlation
    assert "the test part needs at least 2 rated images" in capsys.readouterr().err and not (out / "last.pt").exists()
    assert train(data, out, "--set", "model.grid=[2,2") == 2  # a typo YAML cannot read: no traceback
    assert "--set 'model.grid=[2,2': '[2,2' is not a value YAML can read" in capsys.readouterr().err
    assert train(table(tmp_path, n=20), out, "--split-index", "2") == 2  # no --split: it would be ignored
    err = capsys.readouterr().err
    assert "--split-index 2 picks a split of a --split FILE" in err and "to draw another split, use --split-seed" in err
    assert train(table(tmp_path, n=20), out, "--seed", str(2**63)) == 2  # torch's seeds are 64-bit: a traceback
    assert "seed must be below 2**63" in capsys.readouterr().err
    for bad in ("model.dim=0", "model.heads=0", "model.grid=[2,-2]", "model.depth=-1"):  # tracebacks, or no Transformer
        assert train(table(tmp_path, n=20), out, "--set", bad) == 2, bad
        assert "every size of the model must be at least 1" in capsys.readouterr().err, bad


def test_resume_of_a_folder_without_a_run_says_it_starts_afresh_under_quiet(tmp_path, capsys):
    """A mistyped --out under --quiet started a new run without a word."""
    assert train(table(tmp_path), tmp_path / "typo", "--resume") == 0
    assert "note: --resume: no" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["evaluate", "--data", "d.csv"], ["train", "--data", "d.csv"]])
def test_model_takes_its_short_form_in_every_command(command):
    """The README gives `--model` (`-m`) for every command: evaluate and train refused -m."""
    from contentiqa.cli.main import build_parser

    assert build_parser().parse_args([*command, "-m", "iqa-cr"]).model == "iqa-cr"


def test_a_run_whose_calibration_was_refused_is_finished_without_it_on_resume(tmp_path, capsys, monkeypatch):
    """The refusal advised turning calibrate off, which --resume then refused as another recipe:
    the trained epochs could never be tested, only trained again from scratch."""
    from contentiqa.training.trainer import Trainer

    data = table(tmp_path, n=30, split=["train"] * 18 + ["val"] * 8 + ["test"] * 4)
    out = tmp_path / "run"

    def constant(self, model):
        raise ValueError("the model's outputs are constant on the 8 calibration photos: nothing to calibrate; "
                         "check the training, or turn calibrate off")

    with monkeypatch.context() as m:
        m.setattr(Trainer, "calibrate", constant)
        assert main(["train", "--data", str(data), "--out", str(out), *TINY, "--set", "calibrate=true"]) == 2
    assert "turn calibrate off" in capsys.readouterr().err and not (out / "test_metrics.json").exists()
    assert main(["train", "--data", str(data), "--out", str(out), *TINY, "--set", "calibrate=false", "--resume"]) == 0
    assert (out / "test_metrics.json").is_file() and not (out / "tested.pt").exists()
    assert json.loads((out / "config.json").read_text())["train_config"]["calibrate"] is False  # the record says what was done
    # calibrated, then resumed with calibration off: the calibrated tested.pt is not left as the model to use
    assert main(["train", "--data", str(data), "--out", str(out), *TINY, "--set", "calibrate=true", "--resume"]) == 0
    assert (out / "tested.pt").is_file()
    # a finish refused on resume made no model: the figures of the one there stay
    kept = (out / "test_metrics.json").read_text()
    with monkeypatch.context() as m:
        m.setattr(Trainer, "calibrate", constant)
        assert main(["train", "--data", str(data), "--out", str(out), *TINY, "--set", "calibrate=true", "--resume"]) == 2
    assert (out / "test_metrics.json").read_text() == kept
    # stopped before its test part was scored again: no figures of the calibrated model are left beside best.pt
    import contentiqa.cli.train as train_cli

    with monkeypatch.context() as m:
        m.setattr(train_cli, "_test", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
        assert main(["train", "--data", str(data), "--out", str(out), *TINY, "--set", "calibrate=false",
                     "--resume"]) == 130
    assert not (out / "tested.pt").exists() and not (out / "test_metrics.json").exists()
    assert main(["train", "--data", str(data), "--out", str(out), *TINY, "--set", "calibrate=false", "--resume"]) == 0
    assert not (out / "tested.pt").exists() and json.loads((out / "run.json").read_text())["tested"] == "best.pt"
    assert (out / "test_metrics.json").is_file()
