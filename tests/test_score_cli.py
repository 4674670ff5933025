"""`contentiqa score`: inputs, bad files, exit codes, output formats, resume, batching."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from contentiqa.cli.main import main
from contentiqa.reporting.results import read_results
from tiny_models import cached_loader, one_torch_thread, tiny_checkpoint  # noqa: F401


def rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def save(arr_or_img, path: Path, **kw) -> Path:
    im = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kw)
    return path


@pytest.fixture
def ckpt(monkeypatch) -> str:
    import contentiqa.models.registry as registry

    monkeypatch.setattr(registry, "load_checkpoint", cached_loader(registry.load_checkpoint))
    return tiny_checkpoint()


def run(*argv) -> int:
    return main([str(a) for a in argv])


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def by_name(rows) -> dict[str, dict]:
    return {Path(r["path"]).name: r for r in rows}


def ok_folder(root: Path, n: int = 3, size=(64, 80)) -> Path:
    for i in range(n):
        save(rgb(*size, seed=i), root / f"img{i}.jpg", quality=92)
    return root


# -- bad inputs -----------------------------------------------------------------------------
@pytest.fixture
def zoo(tmp_path: Path) -> dict[str, Path]:
    """One file per odd case, in a folder (plus a few that are passed explicitly)."""
    d = tmp_path / "zoo"
    files: dict[str, Path] = {}
    files["good"] = save(rgb(64, 80, 1), d / "good.jpg", quality=92)
    # truncated JPEG and PNG
    full = io.BytesIO()
    Image.fromarray(rgb(96, 96, 2)).save(full, format="JPEG", quality=95)
    (d / "trunc.jpg").write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    files["trunc_jpg"] = d / "trunc.jpg"
    full = io.BytesIO()
    Image.fromarray(rgb(96, 96, 3)).save(full, format="PNG")
    (d / "trunc.png").write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    files["trunc_png"] = d / "trunc.png"
    (d / "empty.jpg").write_bytes(b"")
    files["empty"] = d / "empty.jpg"
    files["gray"] = save(Image.fromarray(rgb(64, 64, 4)[..., 0], "L"), d / "gray.png")
    files["palette"] = save(Image.fromarray(rgb(64, 64, 5)).convert("P"), d / "palette.png")
    rgba = np.dstack([rgb(64, 64, 6), np.full((64, 64), 128, np.uint8)])
    files["rgba"] = save(Image.fromarray(rgba, "RGBA"), d / "rgba.png")
    arr16 = np.random.default_rng(7).integers(0, 65536, size=(64, 72), dtype=np.uint16)
    files["png16"] = save(Image.fromarray(arr16), d / "deep16.png")
    assert Image.open(files["png16"]).mode.startswith("I")
    files["cmyk"] = save(Image.fromarray(rgb(64, 64, 8)).convert("CMYK"), d / "cmyk.jpg", quality=92)
    # EXIF orientation 6 (display = stored pixels rotated 90 degrees clockwise)
    exif = Image.Exif()
    exif[0x0112] = 6
    files["exif"] = save(rgb(64, 96, 9), d / "exif.jpg", quality=92, exif=exif)
    stored = np.asarray(Image.open(files["exif"]).convert("RGB"))  # decoded, orientation not applied
    files["exif_manual"] = save(np.ascontiguousarray(np.rot90(stored, k=-1)), d / "exif_manual.png")
    frames = [Image.fromarray(rgb(64, 64, 10 + k)).convert("P") for k in range(3)]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    files["gif"] = d / "anim.gif"
    files["small"] = save(rgb(16, 20, 11), d / "small.png")
    # a decompression bomb: a tiny file that decodes to 2 megapixels
    files["bomb"] = save(Image.new("L", (2000, 1000)), d / "bomb.png")
    assert files["bomb"].stat().st_size < 20_000
    (d / "readme.txt").write_text("not an image, skipped inside folders")
    files["unreadable"] = save(rgb(64, 64, 12), d / "locked.png")
    os.chmod(files["unreadable"], 0)
    # passed explicitly
    files["text"] = tmp_path / "notes.txt"
    files["text"].write_text("hello")
    files["dir_as_file"] = tmp_path / "folder.jpg"
    files["dir_as_file"].mkdir()
    files["missing"] = tmp_path / "missing.jpg"
    yield files
    os.chmod(files["unreadable"], 0o644)


def test_every_bad_input_gets_a_row(zoo, ckpt, tmp_path, capsys):
    out = tmp_path / "res.csv"
    rc = run("score", zoo["good"].parent, zoo["text"], zoo["dir_as_file"], zoo["missing"],
             "--model", ckpt, "-o", out, "--max-pixels", 1, "--batch-size", 4)
    assert rc == 1  # some inputs failed
    rows = read_csv(out)
    names = by_name(rows)
    assert "readme.txt" not in names  # non-images inside folders are skipped by extension
    folder_files = [p for p in zoo["good"].parent.iterdir() if p.suffix != ".txt"]
    assert len(rows) == len(folder_files) + 3  # every input has exactly one row

    def err(key):
        return names[zoo[key].name]["error"]

    def ok(key):
        r = names[zoo[key].name]
        assert r["error"] == "", f"{key}: {r['error']}"
        assert math.isfinite(float(r["score"]))  # a random tiny model: any finite score
        return r

    assert "not an image" in err("text")
    assert "truncated" in err("trunc_jpg").lower()
    assert "truncated" in err("trunc_png").lower() or "corrupt" in err("trunc_png").lower()
    assert "empty" in err("empty")
    assert "no image files" in err("dir_as_file")
    assert "does not exist" in err("missing")
    assert "smaller than the minimum" in err("small")
    assert re.search(r"limit of 1(\.0)? MP", err("bomb"))  # names the limit
    assert "--max-pixels" in err("bomb") and "max_pixels" not in err("bomb")  # the option, not the attribute
    if os.geteuid() != 0:
        assert "permission" in err("unreadable")
    for key in ("good", "gray", "palette", "rgba", "png16", "cmyk", "exif", "exif_manual", "gif"):
        ok(key)
    assert "16-bit" in ok("png16")["notes"]
    assert "CMYK" in ok("cmyk")["notes"]
    assert "transparent" in ok("rgba")["notes"]
    assert "first frame" in ok("gif")["notes"]
    assert "EXIF orientation 6 applied" in ok("exif")["notes"]
    # orientation applied: same pixels as the manually rotated (lossless) copy -> same score
    assert float(ok("exif")["score"]) == pytest.approx(float(ok("exif_manual")["score"]), abs=1e-6)
    table = capsys.readouterr().out
    assert "not an image" in table and "good.jpg" in table


def test_directory_item_via_api(tmp_path):
    from tiny_models import tiny_model

    model = tiny_model()
    pred = model.predict(str(tmp_path))
    assert pred.score is None and "directory" in pred.error


# -- exit codes, formats ----------------------------------------------------------------------
def test_all_ok_exit_0_and_csv_columns(tmp_path, ckpt):
    d = ok_folder(tmp_path / "imgs")
    out = tmp_path / "out.csv"
    assert run("score", d, "--model", ckpt, "-o", out, "-q") == 0
    with open(out, newline="") as f:
        header = next(csv.reader(f))
    assert header[:5] == ["path", "score", "category", "category_confidence", "error"]
    assert header[5:] == ["notes", "model", "weights_tag", "weights", "weights_sha256", "precision", "contentiqa_version",
                          "start_folder"]
    rows = read_csv(out)
    assert len(rows) == 3 and all(r["error"] == "" and r["category"] for r in rows)
    import hashlib

    assert {r["weights_sha256"] for r in rows} == {hashlib.sha256(Path(ckpt).read_bytes()).hexdigest()}
    assert {r["model"] for r in rows} == {"iqa-cr"}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # atomic: no temp left


def test_json_and_jsonl(tmp_path, ckpt):
    d = ok_folder(tmp_path / "imgs")
    missing = tmp_path / "nope.png"
    assert run("score", d, missing, "--model", ckpt, "-o", tmp_path / "r.json", "-q") == 1
    data = json.loads((tmp_path / "r.json").read_text())
    assert isinstance(data, list) and len(data) == 4
    assert {"path", "score", "category", "category_confidence", "error"} <= set(data[0])
    assert sum(r["error"] is not None for r in data) == 1
    assert run("score", d, "--model", ckpt, "-o", tmp_path / "r.jsonl", "-q") == 0
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    objs = [json.loads(line) for line in lines]
    assert len(objs) == 3 and all(isinstance(o["score"], float) for o in objs)


def test_usage_errors(tmp_path, ckpt, capsys):
    d = ok_folder(tmp_path / "imgs", n=1)
    assert run("score") == 2
    assert run("score", d, "--model", "no-such-model") == 2
    assert "unknown model" in capsys.readouterr().err
    assert run("score", d, "--model", ckpt, "-o", tmp_path / "out.xlsx") == 2
    assert run("score", d, "--model", ckpt, "--resume") == 2
    assert run("score", d, "--model", tmp_path / "missing.pt") == 2
    assert run("score", d, "--model", ckpt, "--batch-size", 0) == 2
    assert run("score", d, "--model", ckpt, "--explain", "-o", tmp_path / "x.csv") == 2
    assert not (tmp_path / "x.csv").exists()


def test_default_model_without_weights_exits_2(tmp_path, capsys, monkeypatch):
    import contentiqa.models.registry as registry

    # An install whose weights file is missing (e.g. a source checkout without the LFS files).
    monkeypatch.setattr(registry, "shipped_weights_path", lambda *a, **k: None)
    d = ok_folder(tmp_path / "imgs", n=1)
    assert run("score", d) == 2
    err = capsys.readouterr().err
    assert "no trained weights" in err and "a model file" in err and "contentiqa train" not in err  # (an ensemble)


def test_quiet_prints_only_errors(tmp_path, ckpt, capsys):
    d = ok_folder(tmp_path / "imgs", n=2)
    assert run("score", d, tmp_path / "gone.jpg", "--model", ckpt, "--quiet") == 1
    cap = capsys.readouterr()
    assert cap.out == ""
    assert "gone.jpg" in cap.err and "does not exist" in cap.err
    assert "img0" not in cap.err and "scoring" not in cap.err  # no progress bar


# -- path handling --------------------------------------------------------------------------------
def test_globs_and_recursion(tmp_path, ckpt, monkeypatch, capsys):
    root = tmp_path / "shoot"
    ok_folder(root, n=2)
    ok_folder(root / "sub", n=1)
    save(rgb(64, 64), root / ".hidden.jpg")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "g.csv"
    assert run("score", "shoot/*.jpg", "--model", ckpt, "-o", out, "-q") == 0  # quoted glob
    assert sorted(by_name(read_csv(out))) == ["img0.jpg", "img1.jpg"]
    assert run("score", root, "--model", ckpt, "-o", out, "--force") == 0
    assert len(read_csv(out)) == 2  # no subfolders, no hidden files
    notes = capsys.readouterr().err
    assert "1 subfolder(s) not searched" in notes
    assert "1 hidden file(s) or folder(s) skipped" in notes and ".hidden.jpg" in notes  # never without a word
    assert run("score", root, "--recursive", "--model", ckpt, "-o", out, "-q", "--force") == 0
    assert len(read_csv(out)) == 3
    assert run("score", root / "sub", root / "sub" / "img0.jpg", "--model", ckpt, "-o", out, "-q", "--force") == 0
    assert len(read_csv(out)) == 1  # the same file twice is scored once
    assert run("score", "nothing-*.jpg", "--model", ckpt, "-o", out, "-q", "--force") == 1
    assert "no files match" in read_csv(out)[0]["error"]
    only_sub = tmp_path / "only_sub"
    ok_folder(only_sub / "inner", n=1)
    assert run("score", only_sub, "--model", ckpt, "-o", out, "-q", "--force") == 1
    assert "--recursive" in read_csv(out)[0]["error"]


# -- batching, sorting ------------------------------------------------------------------------------
def test_batched_equals_one_at_a_time(tmp_path, ckpt):
    d = ok_folder(tmp_path / "imgs", n=5)
    save(rgb(72, 96, 20), d / "other_size.png")
    save(rgb(96, 64, 21), d / "third_size.png")
    res = {}
    for bs in (1, 4):
        out = tmp_path / f"b{bs}.json"
        assert run("score", d, "--model", ckpt, "-o", out, "-q", "--batch-size", bs, "--workers", 1) == 0
        res[bs] = {r["path"]: r for r in json.loads(out.read_text())}
    assert set(res[1]) == set(res[4]) and len(res[1]) == 7
    for p, r in res[1].items():
        # 1e-5 on the normalised [0, 1] score, i.e. 1e-5 of the 0..100 MOS range
        assert r["score"] == pytest.approx(res[4][p]["score"], abs=1e-5 * 100)
        assert r["category"] == res[4][p]["category"]


def test_sort_orders(tmp_path, ckpt, capsys):
    d = ok_folder(tmp_path / "imgs", n=4)
    bad = tmp_path / "aaa_missing.jpg"
    for order in ("worst", "best", "path", "=-score", "=score"):  # --sort=-score: the old spelling still works
        out = tmp_path / f"s{order}.csv"
        flag = ["--sort" + order] if order.startswith("=") else ["--sort", order]
        assert run("score", bad, d, "--model", ckpt, "-o", out, *flag) == 1
        rows = read_csv(out)
        scored = [r for r in rows if r["score"]]
        assert rows[-1]["error"]  # failed inputs last, as the help says ('aaa_missing' came first by path)
        if order == "path":
            assert [r["path"] for r in scored] == sorted(r["path"] for r in scored)
        else:
            vals = [float(r["score"]) for r in scored]
            assert vals == sorted(vals, reverse=order in ("best", "=-score"))
        table = capsys.readouterr().out.splitlines()
        listed = [Path(line.split()[0]).name for line in table[2:2 + len(rows)]]
        assert listed == [Path(r["path"]).name for r in rows]  # the table is in the same order
    out = tmp_path / "bare.csv"
    assert run("score", bad, d, "--model", ckpt, "-o", out, "-q", "--sort") == 1  # bare --sort: best first
    vals = [float(r["score"]) for r in read_csv(out) if r["score"]]
    assert vals == sorted(vals, reverse=True)


def test_a_glob_that_names_the_output_does_not_score_it(tmp_path, ckpt, capsys):
    """`score 'p/*' -o p/out.csv --resume`: the output itself was an input, a failed row
    ('not an image') and exit 1 on every rerun."""
    d = ok_folder(tmp_path / "imgs", n=2)
    out = d / "out.csv"
    assert run("score", d, "--model", ckpt, "-o", out, "-q") == 0
    assert run("score", str(d / "*"), "--model", ckpt, "-o", out, "--resume") == 0
    assert sorted(Path(r["path"]).name for r in read_csv(out)) == ["img0.jpg", "img1.jpg"]
    assert "out.csv is this run's --output: not scored" in capsys.readouterr().err


def test_the_thread_plan_counts_the_photos_to_score_not_every_input(tmp_path, ckpt, monkeypatch):
    """Inputs that are errors already, and rows a resume keeps, were counted: a few photos left
    were planned as many, and ran on one thread of two."""
    import contentiqa.cli.score as score_cli

    planned: list[int] = []
    real = score_cli.load_scorer
    monkeypatch.setattr(score_cli, "load_scorer", lambda kw, notes, images, **k: planned.append(images) or real(kw, notes, images=images, **k))
    d = ok_folder(tmp_path / "imgs", n=3)
    os.symlink("gone.jpg", d / "broken.jpg")
    out = tmp_path / "s.csv"
    assert run("score", d / "img0.jpg", d / "broken.jpg", "--model", ckpt, "-o", out, "-q") == 1
    assert run("score", d, "--model", ckpt, "-o", out, "-q", "--resume") == 1
    assert planned == [1, 2]  # img0 (the link is an error row); then img1 and img2 (img0 kept, the link again)


def test_best_first_is_the_lowest_score_first_where_lower_is_better():
    """--sort best put a DMOS model's worst photos first (the report's cards were right)."""
    from contentiqa.cli.score import sort_order

    assert [sort_order(w, True) for w in ("best", "worst", "path", None)] == ["-score", "score", "path", None]
    assert [sort_order(w, False) for w in ("best", "worst", "-score")] == ["score", "-score", "-score"]


def test_an_empty_shard_writes_the_same_columns_as_the_others(tmp_path, ckpt):
    """The cluster recipe joins the parts under the first one's header: an empty part wrote 6
    columns over the others' 12, and pandas read the joined file shifted."""
    d = ok_folder(tmp_path / "imgs", n=1)
    heads = []
    for i in range(2):
        out = tmp_path / f"part{i}.csv"
        assert run("score", d, "--model", ckpt, "--shard", f"{i}/2", "-o", out, "-q") == 0
        heads.append(out.read_text().splitlines()[0])
    assert heads[0] == heads[1] and "weights_sha256" in heads[0]


# -- resume and partial progress ----------------------------------------------------------------------
def test_resume_skips_done_and_retries_failures(tmp_path, ckpt, monkeypatch):
    import contentiqa.inference.engine as engine

    d = ok_folder(tmp_path / "imgs", n=3)
    late = tmp_path / "late.jpg"
    out = tmp_path / "r.csv"
    assert run("score", d, late, "--model", ckpt, "-o", out, "-q") == 1
    rows = read_csv(out)
    assert len(rows) == 4 and "does not exist" in by_name(rows)["late.jpg"]["error"]
    # tamper with a done row: --resume must keep it as is
    rows[0]["score"] = "12.5"
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    save(rgb(64, 64, 30), late)
    seen: list = []
    real = engine.Engine.run

    def spy(self, items, *a, **kw):
        seen.extend(items)
        return real(self, items, *a, **kw)

    monkeypatch.setattr(engine.Engine, "run", spy)
    assert run("score", d, late, "--model", ckpt, "-o", out, "--resume", "-q") == 0
    assert [Path(p).name for p in seen] == ["late.jpg"]  # only the previously failed input
    after = by_name(read_csv(out))
    assert len(after) == 4
    assert after[Path(rows[0]["path"]).name]["score"] == "12.5"
    assert after["late.jpg"]["error"] == "" and math.isfinite(float(after["late.jpg"]["score"]))


def test_resume_retries_a_folder_or_pattern_that_held_no_image(tmp_path, ckpt, monkeypatch):
    """Their error rows name the PATH argument, not a file: kept for good on --resume, they said
    the folder was empty after it had been scored, and the summary said 0 failed beside them."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    out = tmp_path / "s.csv"
    assert run("score", "photos", "*.png", "--model", ckpt, "-o", out, "-q") == 1
    assert sorted(r["path"] for r in read_csv(out)) == ["*.png", "photos"]
    save(rgb(64, 64, 1), tmp_path / "photos" / "a.jpg")
    save(rgb(64, 64, 2), tmp_path / "u.png")
    assert run("score", "photos", "*.png", "--model", ckpt, "-o", out, "--resume", "-q") == 0
    rows = read_csv(out)
    assert sorted(Path(r["path"]).name for r in rows) == ["a.jpg", "u.png"] and not any(r["error"] for r in rows)
    # a folder of another run (not asked for now) keeps its row
    (tmp_path / "other").mkdir()
    assert run("score", "other", "--model", ckpt, "-o", out, "--resume", "-q") == 1
    assert run("score", "photos", "--model", ckpt, "-o", out, "--resume", "-q") == 0
    assert "other" in [r["path"] for r in read_csv(out)]


def test_the_librarys_advice_is_said_in_the_commands_options(tmp_path, ckpt):
    """A photo too thin once downscaled: the row says the option that scores it."""
    thin = save(rgb(40, 160), tmp_path / "thin.png")
    out = tmp_path / "s.csv"
    assert run("score", thin, "--model", ckpt, "--max-side", "64", "-o", out, "-q") == 1
    error = read_csv(out)[0]["error"]
    assert "downscaled to 64x16" in error and error.endswith("--max-side 0 scores it at full size")


def test_a_max_side_below_what_the_model_reads_is_refused_before_any_photo(tmp_path, ckpt, capsys):
    """--max-side 20 (for 2000) downscaled every photo below the model's 32 px, and each failed."""
    d = ok_folder(tmp_path / "imgs", n=2)
    out = tmp_path / "s.csv"
    assert run("score", d, "--model", ckpt, "--max-side", "20", "-o", out, "-q") == 2
    assert "--max-side 20 would downscale every photo below the 32 px this model needs of its short side" in \
        capsys.readouterr().err
    assert not out.exists()
    assert run("score", d, "--model", ckpt, "--max-side", "40", "-o", out, "-q") == 0  # 64x80 -> 32x40


def test_commands_without_the_option_point_to_the_one_that_has_it(tmp_path, ckpt, capsys):
    """evaluate and explain printed the library's 'a max_side of None' to command-line users, and
    evaluate its 'raise max_pixels' for a photo over the pixel limit it has no option for."""
    from conftest import png_header_only

    thin = save(rgb(40, 6144), tmp_path / "thin.png")
    huge = tmp_path / "huge.png"  # its header claims 400 MP
    huge.write_bytes(png_header_only(20000, 20000))
    good = [save(rgb(64, 64, s), tmp_path / f"{s}.png") for s in (1, 2, 3)]
    (tmp_path / "d.csv").write_text("image,mos\n" + "".join(f"{p},{10 * i}\n" for i, p in enumerate([thin, huge, *good])))
    run("evaluate", "--model", ckpt, "--data", tmp_path / "d.csv", "--quiet")
    run("explain", thin, huge, "--model", ckpt, "--out-dir", tmp_path / "ex")
    err = capsys.readouterr().err
    assert err.count("`contentiqa score --max-side 0` scores it at full size") == 2 and "max_side" not in err
    assert err.count("decompression-bomb guard; use a smaller copy of it)") == 1  # evaluate
    assert err.count("decompression-bomb guard; explain a smaller copy of it)") == 1
    assert "max_pixels" not in err


def test_paths_after_an_option_are_paths_too(tmp_path, ckpt, capsys):
    """`score a.png -m M b.png` was "contentiqa: error: unrecognized arguments: b.png" (argparse
    stops taking a command's positionals at its first option), with the top-level usage."""
    a, b = (save(rgb(64, 64, s), tmp_path / f"{s}.png") for s in (1, 2))
    out = tmp_path / "s.csv"
    assert run("score", a, "--model", ckpt, b, "-o", out, "-q") == 0
    assert [Path(r["path"]).name for r in read_csv(out)] == ["1.png", "2.png"]
    with pytest.raises(SystemExit) as info:
        run("score", a, "--model", ckpt, b, "--bogus")
    assert info.value.code == 2 and "contentiqa score: error: unrecognized arguments: --bogus" in capsys.readouterr().err
    for argv in (("--quiet", "models"), ("-q", "score", a), ("--quiet",)):  # before the command: not dropped
        with pytest.raises(SystemExit) as info:
            run(*argv)
        assert info.value.code == 2 and "contentiqa: error: unrecognized arguments: -" in capsys.readouterr().err
    # the unknown option alone is named, not the good paths after the command with it
    with pytest.raises(SystemExit) as info:
        run("--quiet", "score", a, "-m", ckpt, b)
    assert info.value.code == 2 and capsys.readouterr().err.endswith("unrecognized arguments: --quiet\n")
    # a command of one positional keeps argparse's '--': the file named '-x.csv' is its DATA, 'extra' the stray one
    with pytest.raises(SystemExit) as info:
        run("label-content", "-o", tmp_path / "o.csv", "--", "-x.csv", "extra")
    assert info.value.code == 2 and capsys.readouterr().err.endswith("unrecognized arguments: extra\n")


@pytest.mark.parametrize("argv, said", [
    (["cache", ""], "argument FOLDER: an empty path"),  # was the current folder: --max-size pruned it
    (["explain", "", "-m", "ie-iqa"], "argument IMAGE: an empty path"),  # was exit 1 after loading the model
    (["label-content", "d.csv", "-o", "l.csv", "-m", ""], "argument --model/-m: an empty model name"),  # ImageNet's ran
    (["train", "--data", "d.csv", "-m", ""], "argument --model/-m: an empty model name"),  # iqa-cr trained
    (["label-content", "", "-o", "l.csv"], "argument DATA.csv: an empty path"),  # was ". is not a file"
    (["analyze-intelligibility", "", "--out", "a.csv"], "argument data: an empty path"),
    (["experiment", ""], "argument CONFIG.yaml: an empty path"),  # was ". is a folder, not a config file"
])
def test_an_empty_argument_is_a_usage_error_not_the_default(argv, said, capsys):
    """An unset shell variable's empty word was taken for "not given" (or for '.')."""
    with pytest.raises(SystemExit) as info:
        run(*argv)
    assert info.value.code == 2 and said in capsys.readouterr().err


def test_run_as_the_cli_module_a_usage_error_is_one_line_and_exit_2(tmp_path):
    """`python -m contentiqa.cli.main` (benchmarks ran it so) made the module __main__ and the
    commands imported it again: their UsageError was another class, a traceback with exit 1."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "contentiqa.cli.main", "score", str(tmp_path), "--batch-size", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == "contentiqa score: error: --batch-size must be at least 1"


def test_a_misspelt_model_is_said_before_the_output_folder_is_made(tmp_path, ckpt):
    d = ok_folder(tmp_path / "imgs", n=1)
    assert run("score", d, "--model", "nosuch", "-o", tmp_path / "out" / "deep" / "x.csv", "-q") == 2
    assert run("score", d, "--model", tmp_path / "gone.pt", "-o", tmp_path / "out" / "deep" / "x.csv", "-q") == 2
    image = next(d.iterdir())
    (tmp_path / "d.csv").write_text(f"image,mos\n{image},50\n{image.with_name('b.png')},60\n")
    assert run("explain", image, "--model", "nosuch", "--out", tmp_path / "out" / "deep" / "x.png") == 2
    assert run("evaluate", "--model", "nosuch", "--data", tmp_path / "d.csv", "--json", tmp_path / "out" / "deep" / "x.json") == 2
    assert run("label-content", tmp_path / "d.csv", "--model", "nosuch", "--out", tmp_path / "out" / "deep" / "x.csv") == 2
    assert not (tmp_path / "out").exists()


def test_an_output_option_written_with_equals_tilde_goes_home(tmp_path, ckpt, monkeypatch):
    """The shell leaves the ~ of --output=~/x.csv alone: the file landed in a folder named '~'."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    d = ok_folder(tmp_path / "imgs", n=1)
    assert run("score", d, "--model", ckpt, "--output=~/x.csv", "-q") == 0
    assert (tmp_path / "home" / "x.csv").is_file() and not (tmp_path / "~").exists()


def test_resume_from_another_folder_finds_the_rows_of_a_run_started_beside_the_output(tmp_path, ckpt, monkeypatch):
    ok_folder(tmp_path / "imgs", n=2)
    monkeypatch.chdir(tmp_path)
    assert run("score", "imgs", "--model", ckpt, "-o", "r.csv", "-q") == 0  # rows say imgs/...
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert run("score", "../imgs", "--model", ckpt, "-o", "../r.csv", "--resume", "-q") == 0
    assert sorted(r["path"] for r in read_csv(tmp_path / "r.csv")) == ["imgs/img0.jpg", "imgs/img1.jpg"]


def test_resume_from_an_unrelated_folder_matches_the_rows_by_their_path_ends(tmp_path, ckpt, monkeypatch, capsys):
    """The first run's folder is neither this one nor the output's: its rows still name this
    run's inputs, so they are skipped, not scored and listed a second time."""
    import contentiqa.inference.engine as engine

    ok_folder(tmp_path / "imgs", n=3)
    (tmp_path / "res").mkdir()
    monkeypatch.chdir(tmp_path)
    assert run("score", "imgs/img0.jpg", "imgs/img1.jpg", "--model", ckpt, "-o", "res/out.csv", "-q") == 0
    # rows that do not say their start folder (an older contentiqa wrote them, or a hand edit)
    rows = [{k: v for k, v in r.items() if k != "start_folder"} for r in read_csv(tmp_path / "res" / "out.csv")]
    with open(tmp_path / "res" / "out.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    seen: list = []
    real = engine.Engine.run
    monkeypatch.setattr(engine.Engine, "run", lambda self, items, *a, **kw: (seen.extend(items), real(self, items, *a, **kw))[1])
    monkeypatch.chdir(tmp_path / "res")
    assert run("score", "../imgs", "--model", ckpt, "-o", "out.csv", "--resume") == 0
    assert [Path(p).name for p in seen] == ["img2.jpg"]
    assert sorted(r["path"] for r in read_csv(tmp_path / "res" / "out.csv")) == [
        "../imgs/img2.jpg", "imgs/img0.jpg", "imgs/img1.jpg"]
    assert "2 row(s) of out.csv name their photos from the folder an earlier run started in" in capsys.readouterr().err


def test_resume_from_another_folder_never_takes_a_photo_of_the_same_name_for_done(tmp_path, ckpt, monkeypatch):
    """Camera names repeat (IMG_0001.jpg of two days): a resume from day2 took day1's row, written
    from day1, for day2's photo, which was never scored; the run said all were."""
    import contentiqa.inference.engine as engine

    for day, n in (("day1", 2), ("day2", 2)):
        ok_folder(tmp_path / day, n=n)
    save(rgb(64, 48, seed=9), tmp_path / "day2" / "img0.jpg", quality=92)  # another photo, same name
    monkeypatch.chdir(tmp_path / "day1")
    assert run("score", ".", "--model", ckpt, "-o", "../all.csv", "-q") == 0
    seen: list = []
    real = engine.Engine.run
    monkeypatch.setattr(engine.Engine, "run", lambda self, items, *a, **kw: (seen.extend(items), real(self, items, *a, **kw))[1])
    monkeypatch.chdir(tmp_path / "day2")
    assert run("score", ".", "--model", ckpt, "-o", "../all.csv", "-q", "--resume") == 0
    assert sorted(Path(p).name for p in seen) == ["img0.jpg", "img1.jpg"]
    rows = read_csv(tmp_path / "all.csv")  # day2's by their whole path: one row per name
    assert sorted((Path(r["start_folder"]).name, r["path"]) for r in rows) == [
        ("day1", "img0.jpg"), ("day1", "img1.jpg"), ("day2", str(tmp_path / "day2" / "img0.jpg")),
        ("day2", str(tmp_path / "day2" / "img1.jpg"))]
    # and a third run from day1 finds its own rows done: nothing scored again
    seen.clear()
    monkeypatch.chdir(tmp_path / "day1")
    assert run("score", ".", "--model", ckpt, "-o", "../all.csv", "-q", "--resume") == 0
    assert seen == [] and len(read_csv(tmp_path / "all.csv")) == 4
    # the report: day2's photos are written by their whole path (one row per name), each card its own picture
    monkeypatch.chdir(tmp_path / "day1")
    assert run("score", ".", "--model", ckpt, "-o", "../all.html", "-q") == 0
    monkeypatch.chdir(tmp_path / "day2")
    assert run("score", ".", "--model", ckpt, "-o", "../all.html", "-q", "--resume") == 0
    from contentiqa.reporting.html import make_thumbnail, read_html_rows, read_html_thumbnails

    text = (tmp_path / "all.html").read_text()
    paths = sorted(r["path"] for r in read_html_rows(text))
    assert paths == sorted(["img0.jpg", "img1.jpg", str(tmp_path / "day2" / "img0.jpg"), str(tmp_path / "day2" / "img1.jpg")])
    thumbs = read_html_thumbnails(text)
    with Image.open(tmp_path / "day1" / "img0.jpg") as a, Image.open(tmp_path / "day2" / "img0.jpg") as b:
        assert thumbs["img0.jpg"] == make_thumbnail(a) and thumbs[str(tmp_path / "day2" / "img0.jpg")] == make_thumbnail(b)
    seen.clear()
    # day1's photo deleted since (its folder still there): its row is still not day2's photo
    (tmp_path / "day1" / "img0.jpg").unlink()
    (tmp_path / "day3").mkdir()
    shutil.copy(tmp_path / "day2" / "img0.jpg", tmp_path / "day3" / "img0.jpg")
    table = read_csv(tmp_path / "all.csv")
    monkeypatch.chdir(tmp_path / "day3")
    assert run("score", ".", "--model", ckpt, "-o", "../all.csv", "-q", "--resume") == 0
    assert [Path(p).name for p in seen] == ["img0.jpg"] and len(read_csv(tmp_path / "all.csv")) == len(table) + 1


def test_resume_after_the_photos_moved_from_a_start_folder_that_stayed_skips_them(tmp_path, ckpt, monkeypatch):
    """`cd ~; score trip -o trip.csv`, then trip/ moved elsewhere: the start folder (home) is still
    there, and its rows were pinned to photos gone; every photo was scored again and listed twice."""
    import contentiqa.inference.engine as engine

    ok_folder(tmp_path / "home" / "trip", n=2)
    monkeypatch.chdir(tmp_path / "home")
    assert run("score", "trip", "--model", ckpt, "-o", "trip.csv", "-q") == 0
    (tmp_path / "backup").mkdir()
    (tmp_path / "home" / "trip").rename(tmp_path / "backup" / "trip")
    seen: list = []
    real = engine.Engine.run
    monkeypatch.setattr(engine.Engine, "run", lambda self, items, *a, **kw: (seen.extend(items), real(self, items, *a, **kw))[1])
    monkeypatch.chdir(tmp_path / "backup")
    assert run("score", "trip", "--model", ckpt, "-o", "../home/trip.csv", "-q", "--resume") == 0
    assert seen == [] and [r["path"] for r in read_csv(tmp_path / "home" / "trip.csv")] == ["trip/img0.jpg", "trip/img1.jpg"]


def test_resume_through_a_linked_folder_finds_the_rows_written_from_its_target(tmp_path, ckpt, monkeypatch):
    """Rows written from inside a folder reached by a symbolic link say its real path: a resume through the
    link scored every photo again and listed each twice."""
    import contentiqa.inference.engine as engine

    ok_folder(tmp_path / "disk" / "photos", n=2)
    (tmp_path / "link").symlink_to(tmp_path / "disk" / "photos")
    monkeypatch.chdir(tmp_path / "link")
    assert run("score", ".", "--model", ckpt, "-o", str(tmp_path / "s.csv"), "-q") == 0
    seen: list = []
    real = engine.Engine.run
    monkeypatch.setattr(engine.Engine, "run", lambda self, items, *a, **kw: (seen.extend(items), real(self, items, *a, **kw))[1])
    monkeypatch.chdir(tmp_path)
    assert run("score", "link", "--model", ckpt, "-o", "s.csv", "-q", "--resume") == 0
    assert seen == [] and len(read_csv(tmp_path / "s.csv")) == 2


def test_resume_of_parts_joined_after_scoring_in_two_precisions_says_so(tmp_path, ckpt, capsys):
    """Shards scored in fp32 and bf16, then joined: each run was told to pass the other precision."""
    d = ok_folder(tmp_path / "imgs", n=2)
    out = tmp_path / "all.csv"
    assert run("score", d, "--model", ckpt, "-o", out, "-q") == 0
    rows = read_csv(out)
    rows[1]["precision"] = "bf16"  # as a part scored with --precision bf16 writes it
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for precision in ((), ("--precision", "bf16", "--runtime", "torch")):
        assert run("score", d, "--model", ckpt, "-o", out, "-q", "--resume", *precision) == 2
        assert "its rows were scored in bf16 and fp32 (its parts were scored differently)" in capsys.readouterr().err


def test_resume_refuses_a_json_file_that_holds_no_results(tmp_path, ckpt):
    """Another tool's JSON is not overwritten by --resume (a CSV without 'path' is refused alike)."""
    d = ok_folder(tmp_path / "imgs", n=1)
    for name, text in (("list.json", '[{"file": "a.jpg", "mos": 3.2}]'), ("mixed.json", '[1, 2, "x"]'),
                       ("rows.jsonl", '{"file": "a.jpg", "mos": 3.2}\n')):
        other = tmp_path / name
        other.write_text(text)
        assert run("score", d, "--model", ckpt, "-o", other, "-q", "--resume") == 2
        assert other.read_text() == text, name


def test_resume_keeps_the_columns_a_user_added_to_a_csv(tmp_path, ckpt):
    d = ok_folder(tmp_path / "imgs", n=2)
    out = tmp_path / "r.csv"
    assert run("score", d / "img0.jpg", "--model", ckpt, "-o", out, "-q") == 0
    rows = read_csv(out)
    rows[0]["my_label"] = "keep me"
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert run("score", d, "--model", ckpt, "-o", out, "-q", "--resume") == 0
    after = by_name(read_csv(out))
    assert after["img0.jpg"]["my_label"] == "keep me" and after["img1.jpg"]["my_label"] == ""
    assert list(read_csv(out)[0])[-1] == "my_label"  # after the standard columns


def test_non_utf8_file_names_are_written_and_resumed_in_every_format(tmp_path, ckpt):
    d = ok_folder(tmp_path / "imgs", n=1)
    odd = os.fsdecode(b"x\xff.png")
    save(rgb(64, 64, 30), d / odd)
    for fmt in ("csv", "json", "jsonl", "html"):
        out = tmp_path / f"r.{fmt}"
        assert run("score", d, "--model", ckpt, "-o", out, "-q") == 0
        assert run("score", d, "--model", ckpt, "-o", out, "-q", "--resume") == 0
        rows = read_results(out)
        assert len(rows) == 2 and any(Path(r["path"]).name == odd for r in rows), fmt
    assert (b"x\xff.png") in (tmp_path / "r.csv").read_bytes()  # the name's own bytes


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl", "html"])
def test_names_that_hold_line_breaks_are_written_and_resumed_as_one_row(tmp_path, ckpt, fmt):
    """A carriage return went unquoted into the CSV (two rows, the photo scored again on every
    --resume); U+0085/U+2028/U+2029 broke a JSON Lines record in two (the file could not be resumed)."""
    d = tmp_path / "imgs"
    names = ["a\rb.png", "c\r\nd.png", "e\nf.png", "g\u0085h.png", "i\u2028j.png", "k\u2029l.png", "plain.png"]
    for i, name in enumerate(names):
        save(rgb(64, 64, i), d / name)
    out = tmp_path / f"r.{fmt}"
    assert run("score", d, "--model", ckpt, "-o", out, "-q") == 0
    assert sorted(Path(r["path"]).name for r in read_results(out)) == sorted(names)
    before = out.read_bytes()
    assert run("score", d, "--model", ckpt, "-o", out, "-q", "--resume") == 0
    assert sorted(Path(r["path"]).name for r in read_results(out)) == sorted(names)
    if fmt == "csv":  # nothing scored again, and any CSV reader gets the names back
        assert out.read_bytes() == before
        assert sorted(Path(r["path"]).name for r in read_csv(out)) == sorted(names)


def test_an_empty_path_argument_is_a_usage_error(tmp_path, ckpt, capsys):
    """`score "$PHOTOS"` with the variable unset: a row without a path made the output unresumable."""
    d = ok_folder(tmp_path / "imgs", n=1)
    out = tmp_path / "r.csv"
    assert run("score", "", d, "--model", ckpt, "-o", out, "-q") == 2
    assert "empty PATH argument" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("fmt,text", [("json", '[{"path": "imgs/img0.jpg", "score": [3.5]}]\n'),
                                      ("csv", "path,score\nimgs/img0.jpg,n/a\n")])
def test_resume_names_the_row_a_hand_edit_broke(tmp_path, ckpt, capsys, fmt, text):
    """A list as a score raised a traceback (exit 1, "some photos failed"); a CSV cell "n/a" gave an
    error naming neither the file nor the row."""
    d = ok_folder(tmp_path / "imgs", n=1)
    out = tmp_path / f"r.{fmt}"
    out.write_text(text)
    assert run("score", d, "--model", ckpt, "-o", out, "-q", "--resume") == 2
    err = capsys.readouterr().err
    assert str(out) in err and "row 1 ('imgs/img0.jpg')" in err and "Traceback" not in err
    assert out.read_text() == text


@pytest.mark.parametrize("order", ["best", "path"])
def test_content_only_rows_sort_before_failed_inputs(tmp_path, monkeypatch, capsys, order):
    """A content-only model's rows have no score: --sort put failed inputs among them."""
    import contentiqa.models.registry as registry

    monkeypatch.setattr(registry, "load_checkpoint", cached_loader(registry.load_checkpoint))
    d = ok_folder(tmp_path / "imgs", n=2)
    (d / "a_broken.jpg").write_bytes(b"not a photo")
    save(rgb(64, 64, 9), d / "z.png")
    out = tmp_path / "r.csv"
    assert run("score", d, "--model", tiny_checkpoint("iqa-cr-c"), "-o", out, "--sort", order) == 1
    names = [Path(r["path"]).name for r in read_csv(out)]
    assert names == ["img0.jpg", "img1.jpg", "z.png", "a_broken.jpg"], names
    summary = capsys.readouterr().out
    assert "3 of 4 input(s) scored" in summary and "content categories only" in summary and "scores on" not in summary


def test_names_that_hold_terminal_controls_are_printed_escaped_and_written_as_they_are(tmp_path, ckpt, capsys):
    d = tmp_path / "imgs"
    names = {"esc\x1b[2J.jpg": "esc\\x1b[2J.jpg", "rtl\u202egpj.exe.jpg": "rtl\\u202egpj.exe.jpg"}
    for i, name in enumerate(names):
        save(rgb(64, 64, i), d / name)
    (d / "new\nline.jpg").write_bytes(b"not a photo")
    out = tmp_path / "r.csv"
    assert run("score", d, "--model", ckpt, "-o", out) == 1
    cap = capsys.readouterr()
    assert "\x1b" not in cap.out + cap.err and "\u202e" not in cap.out + cap.err
    for shown in names.values():
        assert shown in cap.out
    assert "new\\nline.jpg" in cap.out and "new\nline" not in cap.out  # one table row, not two lines
    assert run("score", d / "new\nline.jpg", "--model", ckpt, "-q") == 1
    assert "new\\nline.jpg: " in capsys.readouterr().err
    assert sorted(Path(r["path"]).name for r in read_csv(out)) == sorted([*names, "new\nline.jpg"])
    # the summary names the model file: escaped too
    odd = tmp_path / "m\x1b[2J.pt"
    shutil.copy(ckpt, odd)
    assert run("score", d / "esc\x1b[2J.jpg", "--model", odd) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "m\\x1b[2J.pt" in out


def test_csv_cells_never_start_a_spreadsheet_formula(tmp_path, ckpt, monkeypatch):
    for name in ("=cmd|calc!A1.png", "+SUM(1+1).png", "@x.png", "-y.png"):
        save(rgb(64, 64, 3), tmp_path / name)
    monkeypatch.chdir(tmp_path)
    assert run("score", ".", "--model", ckpt, "-o", "out.csv", "-q") == 0
    assert run("score", ".", "--model", ckpt, "-o", "out.csv", "-q", "--resume") == 0
    paths = [r["path"] for r in read_csv(tmp_path / "out.csv")]
    assert len(paths) == 4 and all(p[:1] not in "=+-@" for p in paths), paths
    # other text cells too (a model file's own category or name); a negative score stays a number
    from contentiqa.reporting.results import rows_to_csv

    row = {"path": "a.png", "score": -3.5, "category": '=HYPERLINK("http://x","y")', "error": None, "notes": "",
           "model": "@SUM(1)"}
    cells = next(csv.DictReader(io.StringIO(rows_to_csv([row]))))
    assert cells["category"] == "'" + row["category"] and cells["model"] == "'@SUM(1)" and cells["score"] == "-3.5"
    # read back as written (--resume matches the model's name), and a number of one's own column stays one
    from contentiqa.reporting.results import read_results

    (tmp_path / "r.csv").write_text(rows_to_csv([{**row, "offset": "-1.5"}]))
    back = read_results(tmp_path / "r.csv")[0]
    assert back["model"] == "@SUM(1)" and back["category"] == row["category"]
    assert rows_to_csv([back]).splitlines()[1].endswith(",-1.5")
    values = ["-", "'-", "'=x", "''=x", "-1.5", "'-1.5", "@x", "'hello", "'"]  # an apostrophe of one's own is kept
    (tmp_path / "r.csv").write_text(rows_to_csv([{**row, "path": f"{i}.png", "col": v} for i, v in enumerate(values)]))
    for _ in range(2):  # written back as read, read again
        back = read_results(tmp_path / "r.csv")
        assert [r["col"] for r in back] == values
        (tmp_path / "r.csv").write_text(rows_to_csv(back))
    # a model's own category names never reach label-content's or evaluate's tables as formulas
    from contentiqa.models import create_model

    with pytest.raises(ValueError, match="start as a spreadsheet formula does"):
        create_model("iqa-cr-c", pretrained=False, backbone_pretrained=False, categories=["+SUM(1)", "plant"])


def test_resume_reads_a_table_a_spreadsheet_saved_with_a_byte_order_mark(tmp_path, ckpt):
    d = ok_folder(tmp_path / "imgs", n=2)
    out = tmp_path / "r.csv"
    assert run("score", d, "--model", ckpt, "-o", out, "-q") == 0
    out.write_bytes(b"\xef\xbb\xbf" + out.read_bytes())
    assert run("score", d, "--model", ckpt, "-o", out, "-q", "--resume") == 0
    assert len(read_csv(out)) == 2


def test_killed_run_keeps_flushed_progress_then_resumes(tmp_path, ckpt, monkeypatch):
    import contentiqa.inference.engine as engine

    d = ok_folder(tmp_path / "imgs", n=5)
    out = tmp_path / "r.jsonl"
    real = engine.Engine.run

    def dies_after_three(self, items, on_result=None, **kw):
        count = {"n": 0}

        def cb(i, pred):
            on_result(i, pred)
            count["n"] += 1
            if count["n"] == 3:
                raise RuntimeError("power cut")

        return real(self, items, on_result=cb, **kw)

    monkeypatch.setattr(engine.Engine, "run", dies_after_three)
    with pytest.raises(RuntimeError, match="power cut"):
        run("score", d, "--model", ckpt, "-o", out, "-q", "--flush-every", 2, "--batch-size", 1)
    partial = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(partial) == 2  # the flush after two results survived
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(engine.Engine, "run", real)
    assert run("score", d, "--model", ckpt, "-o", out, "-q", "--resume") == 0
    final = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(final) == 5 and final[:2] == partial


def test_interrupt_saves_progress(tmp_path, ckpt, monkeypatch, capsys):
    import contentiqa.inference.engine as engine

    d = ok_folder(tmp_path / "imgs", n=4)
    out = tmp_path / "r.csv"
    real = engine.Engine.run

    def ctrl_c(self, items, on_result=None, **kw):
        def cb(i, pred):
            on_result(i, pred)
            raise KeyboardInterrupt

        return real(self, items, on_result=cb, **kw)

    monkeypatch.setattr(engine.Engine, "run", ctrl_c)
    assert run("score", d, "--model", ckpt, "-o", out, "-q", "--batch-size", 1) == 130
    assert len(read_csv(out)) == 1
    assert "--resume" in capsys.readouterr().err


# -- GPU settings (decided without a GPU: what auto picks, and what a CPU run keeps) -----------------
def test_precision_and_decoding_defaults(monkeypatch, ckpt):
    """What the scoring layer picks when nothing is asked for: bf16 autocast on a CUDA GPU (fp16
    on one without bf16), fp32 on the CPU; the CPUs only decode for a GPU; ONNX Runtime decodes
    on 2 threads; a GPU batch is 32; autocast asked for by name chooses PyTorch."""
    import torch

    from contentiqa.inference import torch_runtime
    from contentiqa.inference.scorer import choose_runtime, load_scorer

    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert torch_runtime.default_precision(cuda) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert torch_runtime.default_precision(cuda) == "fp16"  # a GPU without bf16
    assert torch_runtime.default_precision(torch.device("cpu")) == "fp32"  # CPU: full precision
    assert choose_runtime("auto", None, "cuda") == "torch" and choose_runtime("auto", None, "cpu") == "onnx"
    assert choose_runtime("auto", "bf16", "cpu") == "torch"  # autocast by name: PyTorch, on the CPU too
    gpu = torch_runtime.TorchScorer(contentiqa_model(ckpt), precision="bf16")
    gpu.device = cuda  # what matters for the defaults (no GPU needed)
    monkeypatch.setattr(torch_runtime, "usable_cpus", lambda: 16)
    assert gpu.default_workers() == 15 and gpu.default_batch_size() == 32
    assert load_scorer(ckpt, threads=1).default_workers() == 2
    # the cores this process may use (taskset, a batch job's), not the machine's: it took a
    # decoding thread beside the model on a one-core affinity of a two-core machine
    monkeypatch.setattr(torch_runtime, "usable_cpus", lambda: 1)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert load_scorer(ckpt, threads=1, runtime="torch").default_workers() == 0


def contentiqa_model(ckpt):
    from contentiqa.models.registry import load_checkpoint

    return load_checkpoint(ckpt)


def test_folder_scans_know_every_pillow_format_but_load_its_plugins_only_when_needed(monkeypatch):
    from contentiqa.data import imageio

    assert imageio.is_image_file("a.jfif") and imageio.is_image_file("b.dib")  # Pillow's own, beyond the common list
    assert not imageio.is_image_file("notes.txt") and not imageio.is_image_file("scores.csv")
    monkeypatch.setattr(imageio, "image_extensions", lambda: pytest.fail("every plugin loaded for a .jpg"))
    assert imageio.is_image_file("photo.JPG") and imageio.is_image_file("x.png")


@pytest.mark.parametrize("argv", [("score", "x.jpg", "--max-pixels", "inf"), ("serve", "--timeout", "inf"),
                                  ("serve", "--max-pixels", "nan"), ("explain", "x.jpg", "--max-pixels", "inf"),
                                  ("cache", ".", "--older-than", "nan")])
def test_number_options_refuse_inf_and_nan_as_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as info:
        run(*argv)
    assert info.value.code == 2
    assert "must be a finite number" in capsys.readouterr().err


@pytest.mark.parametrize("command", [("score", "x.jpg"), ("serve",), ("explain", "x.jpg")])
def test_a_pixel_limit_past_any_photo_is_a_usage_error(command, capsys):
    """explain's --max-pixels 1e303 overflowed to infinity once counted in pixels: a traceback
    after the model had loaded."""
    with pytest.raises(SystemExit) as info:
        run(*command, "--max-pixels", "1e303")
    assert info.value.code == 2 and "--max-pixels: at most 1e+06 megapixels, not '1e303'" in capsys.readouterr().err


def test_a_stop_while_the_model_loads_ends_like_ctrl_c(tmp_path, ckpt, monkeypatch, capsys):
    """SIGTERM during a first use's export killed score outright, leaving a graph-sized temporary
    in the export cache; it now unwinds the export as Ctrl-C does, and exits 143 (128 + SIGTERM),
    as the help says: it said 130, Ctrl-C's, to a batch script that requeues on 143."""
    import signal

    import contentiqa.cli.score as score_cli

    class Unhandled(Exception):
        pass

    def guard(signum, frame):  # reached only if score installs no handler of its own
        raise Unhandled

    def load_then_stopped(self, n_inputs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    import time

    previous = signal.signal(signal.SIGTERM, guard)
    try:
        monkeypatch.setattr(score_cli._Scoring, "_load", load_then_stopped)
        assert run("score", ok_folder(tmp_path / "imgs", n=1), "--model", ckpt, "-q") == 143
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_decoders_warning_names_the_file_it_is_about_every_time(tmp_path, ckpt, capsys):
    """Pillow warns of damaged EXIF mid-read: the message alone did not say which photo of a
    folder it was, and a second photo with the same damage said nothing."""
    import sys
    import warnings

    bad_exif = (b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05"  # five entries declared, one there
                b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x01\x00\x00")
    for name in ("a.jpg", "b.jpg"):
        Image.fromarray(rgb(64, 80, seed=1)).save(tmp_path / name, exif=bad_exif)
    save(rgb(64, 80, seed=2), tmp_path / "fine.jpg")
    with warnings.catch_warnings():  # shown as a terminal shows them (pytest records them instead)
        warnings.showwarning = lambda m, c, f, n, file=None, line=None: sys.stderr.write(
            warnings.formatwarning(m, c, f, n, line))
        assert run("score", tmp_path / "a.jpg", tmp_path / "b.jpg", tmp_path / "fine.jpg", "--model", ckpt,
                   "-o", tmp_path / "out.csv", "-q") == 0
    err = capsys.readouterr().err
    for name in ("a.jpg", "b.jpg"):
        assert f"warning: {tmp_path / name}: Corrupt EXIF data" in err
    assert "fine.jpg" not in err


def test_a_model_that_gives_nan_fails_its_rows_instead_of_scoring_them(tmp_path, capsys):
    """Broken weights give NaN: the row was a 'clipped' score of nothing, and once a category
    counted as a result it was reported scored (and --explain sorted None scores and crashed)."""
    import torch

    from contentiqa.models.registry import save_checkpoint
    from tiny_models import tiny_model

    model = tiny_model(seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    ckpt = save_checkpoint(model, tmp_path / "nan.pt")
    for i in range(2):
        save(rgb(64, 80, seed=i), tmp_path / f"p{i}.jpg")
    out = tmp_path / "r.html"
    assert run("score", tmp_path / "p0.jpg", tmp_path / "p1.jpg", "--model", ckpt, "--runtime", "torch", "-o", out,
               "--explain") == 1
    said = capsys.readouterr()
    assert "0 of 2 input(s) scored, 2 failed" in said.out + said.err and "NaN" in said.out + said.err
    assert out.is_file()


def test_mistyped_values_found_by_fuzzing_are_usage_errors(tmp_path, ckpt, capsys):
    """Each was a traceback, a hang or a silently lost result: --threads 5000000000 (onnxruntime's
    int overflow; 100000 threads ran for minutes on 16 GB), -o "" (an unset variable: nothing
    written, exit 0), a device given as the model ('does not exist')."""
    d = ok_folder(tmp_path / "imgs", n=1)
    os.mkfifo(tmp_path / "pipe.pt")
    for argv, words in [(["--threads", "5000000000"], "--threads must be a whole number from 1 to"),
                        (["--threads", "100000"], "per CPU of this machine"),
                        (["-o", ""], "an empty path"),
                        (["--model", str(tmp_path / "pipe.pt")], "is not a regular file")]:
        try:
            rc = run("score", d, *(["--model", ckpt] if "--model" not in argv else []), *argv, "-q")
        except SystemExit as exc:  # argparse's own usage error
            rc = exc.code
        assert rc == 2, argv
        assert words in capsys.readouterr().err, argv
    assert run("score", d, "--model", ckpt, "--threads", "2", "-q") == 0


def test_serve_and_experiment_refuse_values_that_break_them_later(tmp_path, capsys):
    from contentiqa.cli.main import main as cli

    for argv, words in [(["--max-wait-ms", "1e13"], "--max-wait-ms must be 0 or more and below --timeout"),  # the batcher died
                        (["--timeout", "1e10"], "at most a day"),  # shutdown's join overflowed
                        (["--host", ""], "--host is empty")]:  # listened on every interface
        assert cli(["serve", "--model", "missing/ckpt.pt", *argv]) == 2, argv
        assert words in capsys.readouterr().err, argv
    (tmp_path / "plain.txt").write_text("x")
    (tmp_path / "c.yaml").write_text("name: x\n")
    assert cli(["experiment", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "plain.txt")]) == 2
    assert "is a file: name a folder" in capsys.readouterr().err


def test_a_refused_command_leaves_none_of_the_folders_it_made(tmp_path, capsys, monkeypatch):
    """score refused once the model failed to load left its new --output folder holding only the
    lock file; evaluate's two outputs in nested new folders left the outer one; a folder that
    was there before, or holds anything else, stays."""
    d = ok_folder(tmp_path / "imgs", n=1)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert run("score", d, "--model", bad, "-o", tmp_path / "rows" / "deeper" / "s.csv", "-q") == 2
    assert "not a PyTorch checkpoint" in capsys.readouterr().err and not (tmp_path / "rows").exists()
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "mine.txt").write_text("x")
    assert run("score", d, "--model", bad, "-o", tmp_path / "kept" / "s.csv", "-q") == 2
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == [".s.csv.lock", "mine.txt"]
    data = tmp_path / "d.csv"
    data.write_text("image,mos\n" + "".join(f"{p.name},{i}\n" for i, p in enumerate(sorted(d.iterdir()))))
    assert run("evaluate", "--data", data, "--model", tiny_checkpoint(), "--part", "test",
               "--json", tmp_path / "out" / "m.json", "--predictions", tmp_path / "out" / "sub" / "p.csv") == 2
    assert not (tmp_path / "out").exists()
    monkeypatch.chdir(tmp_path)  # one output named relatively, the other absolutely: the outer folder still goes
    assert run("evaluate", "--data", data, "--model", tiny_checkpoint(), "--part", "test",
               "--json", tmp_path / "out" / "m.json", "--predictions", "out/sub/p.csv") == 2
    assert not (tmp_path / "out").exists()


def test_a_refusal_never_removes_a_lock_another_process_holds(tmp_path, monkeypatch, capsys):
    """The folder a refused command made held another run's lock, taken meanwhile: it was
    deleted with the folder, and a third run could then write the same file beside the second."""
    import contentiqa.cli._output as output
    from contentiqa.utils.io import exclusive_lock

    d = ok_folder(tmp_path / "imgs", n=1)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    real = output.check_writable
    held = []

    def then_another_run_locks_beside_it(path, option="--output"):
        real(path, option)
        lock = exclusive_lock(path.parent / ".b.csv.lock", "busy")
        lock.__enter__()
        held.append(lock)

    monkeypatch.setattr(output, "check_writable", then_another_run_locks_beside_it)
    assert run("score", d, "--model", bad, "-o", tmp_path / "shared" / "a.csv", "-q") == 2
    assert (tmp_path / "shared" / ".b.csv.lock").is_file()  # the other run's, kept with its folder
    held[0].__exit__(None, None, None)
