"""The fault suite: what a hostile or unlucky user can do, and what must happen (issue 14).

Model files are data (a payload never runs), nothing is lost by `contentiqa score`
(unwritable output, full disk, signals, two writers, model mix-ups, odd folders), the Python
API rejects inputs it would score wrongly, and data-file mistakes get messages, not tracebacks.
Every file is generated here and tiny."""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_image
from contentiqa.cli.main import main
from tiny_models import TINY, cached_loader, tiny_checkpoint, tiny_model  # noqa: F401

REPO = Path(__file__).resolve().parents[1]


def run(*argv) -> int:
    return main([str(a) for a in argv])


# -- model files are data --------------------------------------------------------------------
class _Payload:
    """Unpickling this creates the file ``marker``: what an attacker's code would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def hostile(tmp_path):
    """``(make, marker)``: ``make(name, payload_dict)`` writes a .pt whose pickle would create
    ``marker``; the tests check that the file never appears."""
    marker = tmp_path / "PWNED"

    def make(name: str, payload: dict) -> Path:
        path = tmp_path / name
        torch.save({**payload, "extra": {"x": _Payload(marker)}}, path)
        return path

    return make, marker


def _real_checkpoint_payload() -> dict:
    return torch.load(tiny_checkpoint(), weights_only=True)


def test_hostile_checkpoint_refused_by_api(hostile):
    from contentiqa.models import create_model, load_checkpoint

    make, marker = hostile
    bad = make("model.pt", _real_checkpoint_payload())  # a working checkpoint plus a payload
    for load in (lambda: load_checkpoint(bad), lambda: create_model(str(bad))):
        with pytest.raises(ValueError, match=r"refusing to load checkpoint .*model\.pt.*(?s:Nothing in it was executed)"):
            load()
    assert not marker.exists()


@pytest.mark.parametrize("command", ["score", "explain", "export", "evaluate"])
def test_hostile_checkpoint_refused_by_every_command(hostile, tmp_path, command, capsys):
    make, marker = hostile
    bad = make("model.pt", _real_checkpoint_payload())
    img = write_image(tmp_path / "a.png", 48, 48)
    img2 = write_image(tmp_path / "b.png", 48, 48, seed=1)
    csv = tmp_path / "d.csv"
    csv.write_text(f"image,mos\n{img},50\n{img2},40\n")
    argv = {
        "score": ["score", img, "--model", bad, "-o", tmp_path / "o.csv"],
        "explain": ["explain", img, "--model", bad, "--out", tmp_path / "e.png"],
        "export": ["export", bad, "--out", tmp_path / "m.onnx"],
        "evaluate": ["evaluate", "--model", bad, "--data", csv],
    }[command]
    assert run(*argv) == 2
    err = capsys.readouterr().err
    assert "refusing to load" in err and "model.pt" in err and "Traceback" not in err
    assert not marker.exists()


def test_hostile_last_pt_refused_by_train_resume(hostile, tmp_path, capsys):
    make, marker = hostile
    imgs = [write_image(tmp_path / "img" / f"{i}.png", 40, 40, seed=i) for i in range(6)]
    csv = tmp_path / "d.csv"
    csv.write_text("image,mos,split\n" + "".join(f"{p},{10 * i},{'train' if i < 4 else 'val'}\n" for i, p in enumerate(imgs)))
    out = tmp_path / "run"
    out.mkdir()
    make("run/last.pt", {"model_state": {}, "optimizer": {}, "scheduler": {}, "epoch": 1, "model_name": "iqa-cr-q"})
    args = ["train", "--model", "iqa-cr-q", "--data", csv, "--out", out, "--resume", "--epochs", 1, "--batch-size", 2, "--quiet",
            "--set", "crop=32"] + [x for k, v in TINY.items() if k != "pretrained" for x in ("--set", f"model.{k}={json.dumps(v)}")]
    assert run(*args) == 2
    err = capsys.readouterr().err
    assert "refusing to load trainer state" in err and "last.pt" in err
    assert not marker.exists()
    # A truncated last.pt (a run killed mid-copy) is a message too, not a traceback.
    good = out / "last.pt"
    torch.save({"model_state": {"w": torch.zeros(1000)}, "optimizer": {}, "scheduler": {}, "epoch": 1}, good)
    good.write_bytes(good.read_bytes()[:500])
    assert run(*args) == 2
    err = capsys.readouterr().err
    assert "not a readable PyTorch file" in err and "delete it to start over" in err


def test_a_second_training_into_the_same_folder_is_refused(tmp_path, capsys):
    """Two `train --out RUN` at once would interleave checkpoints and logs, and the second
    would delete the first's live temporaries: the second stops before reading or writing."""
    from filelock import FileLock

    imgs = [write_image(tmp_path / "img" / f"{i}.png", 40, 40, seed=i) for i in range(6)]
    csv = tmp_path / "d.csv"
    csv.write_text("image,mos,split\n" + "".join(f"{p},{10 * i},{'train' if i < 4 else 'val'}\n" for i, p in enumerate(imgs)))
    out = tmp_path / "run"
    args = ["train", "--model", "iqa-cr-q", "--data", csv, "--out", out, "--resume", "--epochs", 1, "--batch-size", 2, "--quiet",
            "--set", "crop=32", "--set", "calibrate=false"] + [
        x for k, v in TINY.items() if k != "pretrained" for x in ("--set", f"model.{k}={json.dumps(v)}")]
    out.mkdir()
    with FileLock(str(out / ".train.lock")):  # what a running `train --out run` holds
        assert run(*args) == 2
    err = capsys.readouterr().err
    assert "another process is training in" in err and "choose another --out" in err and "Traceback" not in err
    assert not (out / "config.json").exists() and not (out / "last.pt").exists()
    assert run(*args) == 0  # released: the next run trains
    assert (out / "last.pt").is_file() and (out / "best.pt").is_file()


def test_a_raw_pickle_is_refused_as_unsafe_and_other_files_are_simply_not_checkpoints(tmp_path):
    import pickle

    from contentiqa.models import load_checkpoint

    marker = tmp_path / "PWNED"
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"x": _Payload(marker)}, protocol=4))  # not torch.save's layout
    with pytest.raises(ValueError, match="refusing to load checkpoint"):
        load_checkpoint(raw)
    assert not marker.exists()
    photo = write_image(tmp_path / "photo.png", 40, 40)
    for name, data in (("photo.pt", photo.read_bytes()), ("table.pt", b"image,mos\na.png,3\n")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=r"is not a PyTorch checkpoint") as info:
            load_checkpoint(tmp_path / name)
        assert "refusing" not in str(info.value) and ".onnx" not in str(info.value)
    # an exported graph renamed without its extension: says what is wrong with the name
    graph = tmp_path / "mymodel"
    graph.write_bytes(b"\x08\x08\x12\x07pytorch\x1a\x062.14.1" + bytes(200))
    with pytest.raises(ValueError, match=r"not a PyTorch checkpoint.*ends in \.onnx"):
        load_checkpoint(graph)
    # a few junk bytes, and a legacy (non-zip) torch.save file cut short: struct.error's traceback from
    # inside torch's unpickler
    import torch

    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(3)}, legacy, _use_new_zipfile_serialization=False)
    whole = legacy.read_bytes()
    for name, data in (("junk.pt", b"junk"), ("cut.pt", whole[:19]), ("cut2.pt", whole[:51])):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=f"{name}"):
            load_checkpoint(tmp_path / name)
    (tmp_path / "folder.pt").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        load_checkpoint(tmp_path / "folder.pt")
    # timm's hub weights (model.safetensors) and NumPy archives are other formats, not damaged files
    import io
    import json
    import zipfile

    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(4))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.npy", b"\x93NUMPY")
    (tmp_path / "w.npz").write_bytes(buf.getvalue())
    for name, kind in (("model.safetensors", "a safetensors file"), ("w.npz", "a NumPy archive")):
        with pytest.raises(ValueError, match=f"is {kind}.*, not a PyTorch file"):
            load_checkpoint(tmp_path / name)


@pytest.mark.parametrize("damage", ["no model_name", "config key", "no config", "state not tensors", "unknown model",
                                    "tensor shape"])
def test_a_checkpoint_of_the_wrong_structure_is_a_clear_error(tmp_path, damage, capsys):
    from contentiqa.models import load_checkpoint

    payload = _real_checkpoint_payload()
    state = payload["state_dict"]
    first = next(k for k, v in state.items() if v.ndim == 2)
    payload = {
        "no model_name": lambda p: {k: v for k, v in p.items() if k != "model_name"},
        "config key": lambda p: {**p, "config": {**p["config"], "bogus": 1}},
        "no config": lambda p: {**p, "config": None},
        "state not tensors": lambda p: {**p, "state_dict": {"a": 1}},
        "unknown model": lambda p: {**p, "model_name": "nope"},
        "tensor shape": lambda p: {**p, "state_dict": {**state, first: torch.zeros(3, 3)}},
    }[damage](payload)
    path = tmp_path / "bad.pt"
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"bad\.pt"):
        load_checkpoint(path)
    assert run("score", write_image(tmp_path / "a.png", 48, 48), "--model", path) == 2
    assert "bad.pt" in capsys.readouterr().err


def test_hostile_backbone_and_intelligibility_checkpoints_refused(hostile):
    from contentiqa.backbones import create_backbone
    from contentiqa.models.intelligibility import load_unrecognizability, read_state_dict

    make, marker = hostile
    bad = make("bb.pth", {"state_dict": {"w": torch.zeros(1)}})
    with pytest.raises(ValueError, match=r"refusing to load backbone 'resnet18' checkpoint .*bb\.pth"):
        create_backbone("resnet18", checkpoint_path=bad)
    for read in (read_state_dict, load_unrecognizability):  # no fallback to unsafe loading
        with pytest.raises(ValueError, match=r"refusing to load intelligibility checkpoint .*bb\.pth"):
            read(bad)
    assert not marker.exists()


def test_saved_files_are_plain_data(tmp_path):
    """What contentiqa writes loads with weights_only=True: no numpy scalars or other objects."""
    from contentiqa.models.registry import save_checkpoint
    from contentiqa.utils.checkpoint_io import plain_data

    path = save_checkpoint(tiny_model(), tmp_path / "m.pt",
                           extra={"val": {"srocc": np.float64(0.5), "n": np.int64(3)}, "torch": torch.__version__,
                                  "where": tmp_path})
    extra = torch.load(path, weights_only=True)["extra"]
    assert extra == {"val": {"srocc": 0.5, "n": 3}, "torch": str(torch.__version__), "where": str(tmp_path)}
    assert type(extra["val"]["srocc"]) is float and type(extra["torch"]) is str
    with pytest.raises(TypeError, match="cannot store"):
        plain_data({"obj": object()})


# -- nothing lost: contentiqa score ------------------------------------------------------------
@pytest.fixture
def ckpt(monkeypatch) -> str:
    import contentiqa.models.registry as registry

    monkeypatch.setattr(registry, "load_checkpoint", cached_loader(registry.load_checkpoint))
    return tiny_checkpoint()


def _folder(root: Path, n: int = 3) -> Path:
    for i in range(n):
        write_image(root / f"img{i}.jpg", 40, 48, seed=i)
    return root


def _rows(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_unwritable_output_refused_before_scoring(tmp_path, ckpt, capsys, monkeypatch):
    import contentiqa.inference.engine as engine

    d = _folder(tmp_path / "imgs")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(engine.Engine, "run", lambda *a, **k: pytest.fail("scored before checking the output"))
    assert run("score", d, "--model", ckpt, "-o", blocker / "sub" / "out.csv") == 2
    assert f"cannot write --output {blocker / 'sub' / 'out.csv'}: {blocker} is a file, not a folder" in \
        capsys.readouterr().err  # not mkdir's "File exists"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_refused_before_scoring(tmp_path, ckpt, capsys):
    d = _folder(tmp_path / "imgs")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert run("score", d, "--model", ckpt, "-o", ro / "out.csv") == 2
    finally:
        ro.chmod(0o755)
    assert "cannot write --output" in capsys.readouterr().err


def test_full_disk_keeps_results_in_rescue_file(tmp_path, ckpt, capsys, monkeypatch):
    import contentiqa.reporting.results as results

    d = _folder(tmp_path / "imgs", n=4)
    out = tmp_path / "out.csv"
    real = results.atomic_write_text

    def disk_full(path, text, *a, **k):
        if Path(path) == out:
            raise OSError(28, "No space left on device")
        return real(path, text, *a, **k)

    monkeypatch.setattr(results, "atomic_write_text", disk_full)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    assert run("score", d, "--model", ckpt, "-o", out, "-q", "--flush-every", 1) == 3
    err = capsys.readouterr().err
    rescued = list((tmp_path / "tmp").glob("contentiqa-rescued-out-*.csv"))
    assert len(rescued) == 1 and str(rescued[0]) in err and "No space left" in err
    assert len(_rows(rescued[0])) == 4 and not out.exists()
    # made anew under a name no one could plant a link at beforehand, readable by its owner only
    assert not rescued[0].is_symlink() and rescued[0].stat().st_mode & 0o077 == 0
    assert re.fullmatch(r"contentiqa-rescued-out-\d{8}-\d{6}-\w{8}\.csv", rescued[0].name)
    assert err.count("warning: cannot write") == 1  # warned once, not once per flush
    # no rescue file can be made either (a full or unwritable temporary folder): the rows go to stdout
    import contentiqa.cli._output as output_module

    def no_temp(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(output_module, "rescue_path", no_temp)
    assert run("score", d, "--model", ckpt, "-o", out, "-q") == 3
    cap = capsys.readouterr()
    assert "nor a rescue file" in cap.err and cap.out.count("\n") == 5  # header and four rows


def test_existing_output_needs_force_or_resume(tmp_path, ckpt, capsys):
    d = _folder(tmp_path / "imgs")
    out = tmp_path / "out.csv"
    out.write_text("precious\n")
    assert run("score", d, "--model", ckpt, "-o", out, "-q") == 2
    assert "--force" in capsys.readouterr().err and out.read_text() == "precious\n"
    assert run("score", d, "--model", ckpt, "-o", out, "-q", "--force") == 0
    assert len(_rows(out)) == 3
    assert run("score", d, "--model", ckpt, "-o", out, "-q", "--force", "--resume") == 2


def test_resume_refused_across_models(tmp_path, ckpt, capsys):
    from contentiqa.models.registry import save_checkpoint

    d = _folder(tmp_path / "imgs")
    out = tmp_path / "out.csv"
    assert run("score", d, "--model", ckpt, "-o", out, "-q") == 0
    other = save_checkpoint(tiny_model(seed=1), tmp_path / "other.pt")
    write_image(d / "late.jpg", 40, 40, seed=9)
    before = out.read_text()
    assert run("score", d, "--model", other, "-o", out, "-q", "--resume") == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "other.pt" in err and out.read_text() == before
    # the same model resumes, and the new row records it
    assert run("score", d, "--model", ckpt, "-o", out, "-q", "--resume") == 0
    rows = _rows(out)
    assert len(rows) == 4 and len({r["weights_sha256"] for r in rows}) == 1
    assert rows[0]["weights_sha256"] == hashlib.sha256(Path(ckpt).read_bytes()).hexdigest()
    # a file without a model record (an older contentiqa) cannot be resumed blindly
    legacy = tmp_path / "legacy.csv"
    legacy.write_text(f"path,score,category,category_confidence,error,notes\n{d / 'img0.jpg'},50.0,,,,\n")
    assert run("score", d, "--model", ckpt, "-o", legacy, "-q", "--resume") == 2
    assert "do not say which model" in capsys.readouterr().err


def test_second_writer_gets_a_clear_error(tmp_path, ckpt, capsys):
    from filelock import FileLock

    d = _folder(tmp_path / "imgs")
    out = tmp_path / "out.csv"
    with FileLock(str(tmp_path / ".out.csv.lock")):  # what a running `score -o out.csv` holds
        assert run("score", d, "--model", ckpt, "-o", out, "-q") == 2
    assert "another process is writing" in capsys.readouterr().err and not out.exists()
    assert run("score", d, "--model", ckpt, "-o", out, "-q") == 0  # released: the next run goes


def test_a_lock_file_another_user_left_is_named(tmp_path, ckpt, capsys, monkeypatch):
    """'cannot lock --output out.csv: Permission denied' for good, with no word of the hidden
    .out.csv.lock a user of another umask left in a shared folder."""
    import contentiqa.cli._output as output

    def not_ours(path, message):
        raise PermissionError(13, "Permission denied", str(path))

    d = _folder(tmp_path / "imgs")
    (tmp_path / ".out.csv.lock").write_text("")
    monkeypatch.setattr(output, "exclusive_lock", not_ours)
    assert run("score", d, "--model", ckpt, "-o", tmp_path / "out.csv", "-q") == 2
    assert f"{tmp_path / '.out.csv.lock'} is another user's: remove it if no run writes" in capsys.readouterr().err


def test_output_through_a_symlink_is_locked_and_written_as_its_target(tmp_path, ckpt, capsys):
    """One file under two names (out.csv, link.csv -> out.csv) is one output: one lock, and
    writing through the link keeps the link and gives the rows to its target (issue 22)."""
    from filelock import FileLock

    first, second = _folder(tmp_path / "first", n=2), _folder(tmp_path / "second", n=2)
    for i, p in enumerate(sorted(second.iterdir())):
        p.rename(second / f"late{i}.jpg")
    out = tmp_path / "real" / "out.csv"
    out.parent.mkdir()
    link = tmp_path / "link.csv"
    link.symlink_to(out)
    assert run("score", first, "--model", ckpt, "-o", out, "-q") == 0
    with FileLock(str(out.parent / ".out.csv.lock")):  # what a running `score -o out.csv` holds
        assert run("score", second, "--model", ckpt, "-o", link, "-q", "--resume") == 2
    assert "another process is writing" in capsys.readouterr().err
    assert run("score", second, "--model", ckpt, "-o", link, "-q", "--resume") == 0
    assert link.is_symlink() and link.resolve() == out.resolve()
    assert sorted(Path(r["path"]).name for r in _rows(out)) == ["img0.jpg", "img1.jpg", "late0.jpg", "late1.jpg"]
    assert run("score", first, "--model", ckpt, "-o", link, "-q", "--force") == 0
    assert link.is_symlink() and len(_rows(out)) == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no lock beside the link
    # a dangling link: the run creates the file it points to
    dangling = tmp_path / "dangling.csv"
    dangling.symlink_to(tmp_path / "real" / "new.csv")
    assert run("score", first, "--model", ckpt, "-o", dangling, "-q") == 0
    assert dangling.is_symlink() and len(_rows(tmp_path / "real" / "new.csv")) == 2


def _score_subprocess(args: list, tmp_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests")])}
    code = ("import sys, time; import contentiqa.inference.engine as e; real = e.Engine.run\n"
            "def slow(self, items, on_result=None, **k):\n"
            "    def cb(i, p):\n"
            "        on_result(i, p); print('scored', flush=True); time.sleep(0.2)\n"
            "    return real(self, items, on_result=cb, **k)\n"
            "e.Engine.run = slow\n"
            "from contentiqa.cli.main import main; sys.exit(main(sys.argv[1:]))\n")
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_progress(tmp_path, sig):
    d = _folder(tmp_path / "imgs", n=30)
    out = tmp_path / "out.csv"
    p = _score_subprocess(["score", d, "--model", tiny_checkpoint(), "-o", out, "-q", "--batch-size", 1,
                           "--workers", 0, "--flush-every", 1000], tmp_path)
    for _ in range(3):
        assert p.stdout.readline().strip() == "scored"
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 128 + sig, err
    rows = _rows(out)
    assert 3 <= len(rows) < 30 and all(r["score"] for r in rows), err  # unsaved progress kept on the signal
    assert f"interrupted ({sig.name})" in err and "--resume" in err


def test_symlink_loops_unreadable_folders_and_hints(tmp_path, ckpt, capsys, monkeypatch):
    root = _folder(tmp_path / "shoot", n=2)
    _folder(root / "sub", n=1)
    (root / "sub" / "up").symlink_to(root, target_is_directory=True)  # a loop through a folder link
    os.symlink("b.jpg", root / "a.jpg")
    os.symlink("a.jpg", root / "b.jpg")  # a link loop named like an image
    (root / "notes.txt").write_text("x")
    locked = root / "locked"
    _folder(locked, n=1)
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    out = tmp_path / "out.csv"
    assert run("score", root, "--model", ckpt, "-o", out, "-q") == 1
    err = capsys.readouterr().err
    rows = {Path(r["path"]).name: r for r in _rows(out)}
    assert rows["img0.jpg"]["score"] and rows["img1.jpg"]["score"]
    assert "link loop" in rows["a.jpg"]["error"] and "link loop" in rows["b.jpg"]["error"]
    assert "subfolder(s) not searched" in err and "--recursive" in err and "notes.txt" in err
    assert run("score", root, "-r", "--model", ckpt, "-o", out, "-q", "--force") == 1
    err = capsys.readouterr().err
    rows = {Path(r["path"]).relative_to(root).as_posix(): r for r in _rows(out)}
    assert rows["sub/img0.jpg"]["score"] and "sub/up/img0.jpg" not in rows  # the loop is entered once
    assert "folder cannot be read" in rows["locked"]["error"] and "Permission denied" in rows["locked"]["error"]
    assert "scanned already (an earlier PATH, or a link to it), not repeated" in err


def test_a_recursive_glob_enters_no_linked_folder_and_ends(tmp_path, monkeypatch):
    """glob's ** follows links to folders: one loop gave a photo forty spellings (forty rows of
    one photo), two loops an expansion that ran for minutes. Bash's globstar and pathlib do not
    descend into them; nor does the scan of a folder with --recursive."""
    import glob
    import time

    from contentiqa.data.inputs import collect_inputs, expand_glob

    root = tmp_path / "t"
    for rel in ("a/b/y.png", "c/w.png", "x.png", ".h/z.png", "a/q.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    for pattern in ("t/**/*.png", "t/*/*.png", "t/**/b/*.png", "t/**/*", "t/a/**/*.jpg", "t/**/.h*"):
        full = str(tmp_path / pattern)
        assert expand_glob(full) == sorted(glob.glob(full, recursive=True)), pattern  # as glob without links
    monkeypatch.chdir(root)  # "**" from here: no "" entry for the folder itself (a failed row)
    assert expand_glob("**") == sorted(glob.glob("**", recursive=True)) and "" not in expand_glob("**/")
    top = str(tmp_path).split(os.sep)[1]  # an absolute pattern whose first wildcard is under /
    pattern = os.sep + top[:-1] + "*" + str(tmp_path)[len(top) + 1:] + "/t/**/*.png"
    assert expand_glob(pattern) == sorted(glob.glob(pattern, recursive=True)) and expand_glob(pattern)[0].startswith(os.sep)
    (root / "a" / "b" / "up").symlink_to("..", target_is_directory=True)
    (root / "c" / "up").symlink_to("..", target_is_directory=True)
    t0 = time.time()
    found = [Path(p).relative_to(root).as_posix() for p, _ in collect_inputs([str(root / "**" / "*.png")], False)]
    assert sorted(found) == ["a/b/y.png", "c/w.png", "x.png"] and time.time() - t0 < 5


def test_folders_a_pattern_covers_and_folders_given_twice_are_no_rows_of_their_own(tmp_path, monkeypatch):
    """'photos/**' gave the folders above the photos failed rows ("add --recursive"): exit 1 after
    scoring every photo. A folder reached again through a link under another PATH was scanned twice,
    its photos scored twice, while the note said they were not."""
    from contentiqa.data.inputs import collect_inputs

    for rel in ("photos/2023/01/a.jpg", "photos/2023/02/b.png", "lib/2024/c.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    (tmp_path / "lib" / "latest").symlink_to("2024", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    assert collect_inputs(["photos/**"], False) == [("photos/2023/01/a.jpg", None), ("photos/2023/02/b.png", None)]
    for args in (["lib/**"], ["lib", "lib/latest"]):
        notes: list[str] = []
        assert collect_inputs(args, True, notes) == [("lib/2024/c.jpg", None)], args
        assert any("not repeated" in n for n in notes)
    # a pattern that yields nothing still gets its row, saying why
    assert collect_inputs(["photos/*"], False) == [
        ("photos/*", "no image files match this pattern (it matches folders: --recursive scores what is in their "
                     "subfolders)")]
    # ... and none when what it matches was given already; a matched folder's subfolders left unsearched are said
    assert collect_inputs(["photos/2023/01", "photos/2023/0[1]"], False) == [("photos/2023/01/a.jpg", None)]
    (tmp_path / "photos" / "2022").mkdir()
    (tmp_path / "photos" / "2022" / "d.jpg").write_bytes(b"")
    notes = []
    assert collect_inputs(["photos/*"], False, notes) == [("photos/2022/d.jpg", None)]
    assert notes == ["photos/*: 2 subfolder(s) of the folders it matches not searched (e.g. photos/2023/01): "
                     "add --recursive to score their images"]


def test_folder_scan_takes_every_pillow_format(tmp_path, ckpt):
    from PIL import features

    d = tmp_path / "fmt"
    want = ["x.jfif", "x.jpe", "x.qoi", "x.tga"]
    if features.check("jpg_2000"):
        want.append("x.jp2")
    if features.check("avif"):
        want.append("x.avif")
    try:
        import pillow_heif  # noqa: F401

        want.append("x.heic")
    except ImportError:
        pass
    for i, name in enumerate(want):
        fmt = {"jfif": "JPEG", "jpe": "JPEG", "heic": "HEIF"}.get(name.split(".")[1])
        write_image(d / name, 48, 48, seed=i, fmt=fmt)
    out = tmp_path / "out.csv"
    assert run("score", d, "--model", ckpt, "-o", out, "-q") == 0
    assert sorted(Path(r["path"]).name for r in _rows(out)) == sorted(want)


def test_explain_never_overwrites_its_own_output(tmp_path, ckpt, monkeypatch, capsys):
    a = write_image(tmp_path / "a" / "x.JPG", 48, 48, seed=1, fmt="JPEG")
    b = write_image(tmp_path / "b" / "x.JPG", 48, 48, seed=2, fmt="JPEG")
    monkeypatch.chdir(tmp_path)
    assert run("explain", a, b, "--model", ckpt, "--target", "quality") == 0
    written = sorted(p.name for p in tmp_path.glob("*.png"))
    assert len(written) == 2, written
    out_dir = tmp_path / "maps"
    assert run("explain", a, b, "--model", ckpt, "--target", "quality", "--out-dir", out_dir) == 0
    assert len(list(out_dir.glob("*.png"))) == 2


# -- no silent wrong scores: the Python API ----------------------------------------------------
@pytest.fixture(scope="module")
def api_model():
    return tiny_model("iqa-cr-q")


def _pixels(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(40, 48, 3), dtype=np.uint8)


def test_every_input_kind_of_the_same_pixels_scores_the_same(api_model):
    a8 = _pixels()
    ref = api_model.predict(a8).score
    same = {
        "float array [0,1]": a8 / 255.0,
        "float32 tensor [0,1]": torch.from_numpy(a8).permute(2, 0, 1).float() / 255,
        "uint8 tensor": torch.from_numpy(a8).permute(2, 0, 1),
        "int64 tensor 0-255": torch.from_numpy(a8).permute(2, 0, 1).long(),
        "int32 array 0-255": a8.astype(np.int32),
        "uint16 array (16-bit range)": a8.astype(np.uint16) * 257,
        "PIL": Image.fromarray(a8),
    }
    for what, x in same.items():
        assert api_model.predict(x).score == pytest.approx(ref, abs=1e-4), what


def test_an_rgba_array_scores_as_the_same_rgba_file_and_image(api_model, tmp_path):
    rgba = np.dstack([_pixels(), np.full((40, 48), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    preds = [api_model.predict(x) for x in (rgba, Image.fromarray(rgba, "RGBA"), str(tmp_path / "t.png"))]
    for p in preds:
        assert p.score == pytest.approx(preds[2].score, abs=1e-4)
        assert "transparent pixels composited on white" in p.notes


@pytest.mark.parametrize("case", ["float tensor 0-255", "float array 0-255", "nan", "inf", "all nan", "bool",
                                  "negative float", "int32 tensor over 255", "negative int"])
def test_inputs_that_would_score_wrongly_are_errors(api_model, case):
    a8 = _pixels()
    f = a8 / 255.0
    bad = {
        "float tensor 0-255": torch.from_numpy(a8).permute(2, 0, 1).float(),
        "float array 0-255": a8.astype(np.float32),
        "nan": np.where(np.arange(f.size).reshape(f.shape) == 5, np.nan, f),
        "inf": np.where(np.arange(f.size).reshape(f.shape) == 5, np.inf, f),
        "all nan": np.full(f.shape, np.nan),
        "bool": a8 > 127,
        "negative float": f - 0.5,
        "int32 tensor over 255": torch.from_numpy(a8).permute(2, 0, 1).int() + 200,
        "negative int": a8.astype(np.int16) - 10,
    }[case]
    with pytest.raises(ValueError):
        api_model.predict(bad)
    with pytest.raises(ValueError):
        api_model.predict([_pixels(1), bad])  # before anything is scored


def test_pixel_limit_and_batch_size_apply_to_every_input(api_model, tmp_path):
    from contentiqa.inference.torch_runtime import TorchScorer

    a8 = _pixels()
    api_model.max_pixels = 1000
    try:
        for x in (a8, Image.fromarray(a8), torch.from_numpy(a8).permute(2, 0, 1)):
            with pytest.raises(ValueError, match="over the limit"):
                api_model.predict(x)
        path = write_image(tmp_path / "big.png", 40, 48)
        assert "over the limit" in api_model.predict(str(path)).error  # a file: an error row, as always
    finally:
        api_model.max_pixels = 100_000_000
    for bs in (0, -1):
        with pytest.raises(ValueError, match="batch_size"):
            api_model.predict(a8, batch_size=bs)
        with pytest.raises(ValueError, match="batch_size"):
            TorchScorer(api_model).run([a8], batch_size=bs)


def test_an_image_without_pixels_is_never_scored():
    """A scorer's min_size set to 0 ("no minimum") scored a 0x0 image: a fixed-size model resized
    it to a black square."""
    import contentiqa

    model = contentiqa.create_model("ie-iqa-distortion", pretrained=False, distortion_pretrained=False,
                                    input_size=64).eval()
    model.min_size = 0
    pred = model.predict(np.zeros((0, 0, 3), np.uint8))
    assert pred.score is None and "smaller than the minimum side of 1 px" in pred.error


# -- bounded memory --------------------------------------------------------------------------
def test_native_resolution_inputs_are_downscaled_to_max_side(tmp_path):
    from contentiqa.models.scoring import DEFAULT_MAX_SIDE

    model = tiny_model("iqa-cr-q")
    assert model.native_resolution and model.max_side == DEFAULT_MAX_SIDE
    seen = []
    real = model.preprocess
    model.preprocess = lambda img: seen.append(img.size) or real(img)
    model.max_side = 64
    big = write_image(tmp_path / "big.png", 100, 160)
    pred = model.predict(str(big))
    assert seen == [(64, 40)] and "downscaled from 160x100 to 64x40" in "; ".join(pred.notes)
    small = model.predict(np.asarray(Image.open(big).resize((64, 40), Image.LANCZOS, reducing_gap=3.0)))
    assert pred.score == pytest.approx(small.score, abs=1e-4)
    thin = write_image(tmp_path / "thin.png", 40, 160)  # 160x40, under max_side 64: 64x16
    pred = model.predict(str(thin))
    assert pred.score is None and "smaller than the minimum side" in pred.error and "downscaled to 64x16" in pred.error
    assert pred.error.endswith("a max_side of None (never downscale) reads it at full size")  # the way out, said
    model.max_side = None
    seen.clear()
    assert not model.predict(str(big)).notes and seen == [(160, 100)]


# -- messages, not tracebacks, for data files --------------------------------------------------
@pytest.mark.parametrize("command", ["evaluate", "train"])
@pytest.mark.parametrize("case", ["header only", "one row", "constant MOS", "missing file"])
def test_bad_data_files_get_messages(tmp_path, capsys, command, case):
    imgs = [write_image(tmp_path / f"{i}.png", 40, 40, seed=i) for i in range(3)]
    body = {
        "header only": "",
        "one row": f"{imgs[0]},50\n",
        "constant MOS": "".join(f"{p},50\n" for p in imgs),
        "missing file": "".join(f"{p},{i}\n" for i, p in enumerate(imgs)) + f"{tmp_path / 'gone.png'},9\n",
    }[case]
    csv = tmp_path / "d.csv"
    csv.write_text("image,mos\n" + body)
    model = ["--model", tiny_checkpoint()] if command == "evaluate" else ["--model", "iqa-cr-q", "--out", tmp_path / "run"]
    assert run(command, *model, "--data", csv, "--quiet") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and ("d.csv" in err or "gone.png" in err)
    expect = {"header only": "only a header", "one row": "only 1 image", "constant MOS": "same MOS (50)",
              "missing file": "Pass --skip-missing"}[case]
    assert expect in err and "on_missing" not in err


def test_stale_temporaries_of_a_killed_save_are_removed(tmp_path, ckpt):
    d = _folder(tmp_path / "imgs", n=1)
    out = tmp_path / "out.csv"
    stale = tmp_path / ".out.csv.abc123xy.tmp"  # what SIGKILL during an atomic write leaves (mkstemp: 8 characters)
    stale.write_text("path,score\n/half")
    other = tmp_path / ".other.csv.abc123xy.tmp"  # another output's: not ours to remove
    other.write_text("x")
    assert run("score", d, "--model", ckpt, "-o", out, "-q") == 0
    assert not stale.exists() and other.exists()


def test_an_output_name_near_the_file_systems_limit_is_written(tmp_path, ckpt):
    """A legal name of 242-255 bytes made a temporary name over the limit: 'File name too long'
    for --output, and for every atomic write of the library (reports, results, checkpoints)."""
    from contentiqa.utils.io import remove_stale_temporaries, temporary_prefix

    d = _folder(tmp_path / "imgs", n=1)
    out = tmp_path / ("é" * 120 + ".csv")  # 244 bytes
    stale = tmp_path / f"{temporary_prefix(out)}abc123xy.tmp"  # a killed save's, named as this code names it
    stale.write_text("x")
    assert len(os.fsencode(stale.name)) <= 255
    assert run("score", d, "--model", ckpt, "-o", out, "-q") == 0
    assert out.read_text().count("\n") == 2 and not stale.exists()
    assert remove_stale_temporaries(out) == []


def test_file_hash_is_remembered_until_the_file_changes(tmp_path, monkeypatch):
    """One start-up asks for the weights' SHA-256 several times: it is read once. A file rewritten
    in place (even with its size and modification time put back) is hashed again, and a file
    changed in the last seconds is never remembered (a second write could keep its stat)."""
    import contentiqa.utils.io as uio

    first, second = hashlib.sha256(b"a" * 1000).hexdigest(), hashlib.sha256(b"b" + b"a" * 999).hexdigest()
    reads = []
    real = uio.hashlib.sha256
    monkeypatch.setattr(uio.hashlib, "sha256", lambda *a: reads.append(1) or real(*a))
    f = tmp_path / "w.pt"
    f.write_bytes(b"a" * 1000)
    monkeypatch.setattr(uio.time, "time_ns", lambda: f.stat().st_ctime_ns + 10**8)  # a tenth of a second later
    assert uio.file_sha256(f) == uio.file_sha256(f) == first
    assert len(reads) == 2  # just written: not remembered
    old = f.stat().st_mtime_ns - 10**10
    os.utime(f, ns=(old, old))
    monkeypatch.setattr(uio.time, "time_ns", lambda: f.stat().st_ctime_ns + 10**10)  # ten seconds later
    reads.clear()
    assert uio.file_sha256(f) == uio.file_sha256(f) and len(reads) == 1  # remembered
    with open(f, "r+b") as fh:  # the same size, then the old times put back
        fh.write(b"b")
    os.utime(f, ns=(old, old))
    assert uio.file_sha256(f) == second


def test_a_pickle_of_plain_data_is_not_said_to_hold_code(tmp_path, recwarn):
    """pickle.dump({'a': 1}) was "Python objects other than tensors and plain data, which could
    run code", with torch's advice to file an issue about its pickle protocol."""
    import pickle

    from contentiqa.models import load_checkpoint

    plain = tmp_path / "plain.pt"
    plain.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with pytest.raises(ValueError, match="it is a Python pickle, not a file `torch.save` wrote") as info:
        load_checkpoint(plain)
    assert "other than tensors" not in str(info.value)
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]
