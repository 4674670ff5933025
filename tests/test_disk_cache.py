"""Cache housekeeping (contentiqa.utils.disk_cache and `contentiqa cache`): sizes, least recently
used eviction, what a running job uses stays, and a folder that is not a cache is never pruned."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from contentiqa.cli.main import main
from contentiqa.utils.disk_cache import ABOUT, describe, format_size, parse_size, prune, scan, touch

NOW = 2_000_000_000.0


def entry(cache: Path, name: str, nbytes: int, used: float, about: dict | None = None) -> Path:
    """An encodings folder in the real layout: one 24-hex-digit .pt file per image."""
    folder = cache / name
    folder.mkdir(parents=True)
    (folder / f"{abs(hash(name)) % 16**24:024x}.pt").write_bytes(b"\0" * nbytes)
    if about:
        describe(folder, about)
    os.utime(folder, (used, used))
    return folder


@pytest.mark.parametrize("text, expected", [
    ("40G", 40 * 1024**3), ("500M", 500 * 1024**2), ("1.5T", int(1.5 * 1024**4)), ("2gib", 2 * 1024**3),
    ("10KB", 10240), ("123", 123), (" 7 G ", 7 * 1024**3), (0, 0), (4096, 4096), ("12B", 12),
])
def test_sizes_parse(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "-1G", "3X", "ten", True, -5, "1iB"])  # 1iB: read as 1 byte
def test_bad_sizes_are_refused(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_format_size():
    assert format_size(512) == "512 B"
    assert format_size(1536) == "1.5 K"
    assert format_size(3 * 1024**3) == "3.0 G"
    assert format_size(5000 * 1024**3) == "5000.0 G"


def test_scan_lists_entries_least_recently_used_first(tmp_path):
    entry(tmp_path, "new", 300, NOW - 10, {"model": "IQACR", "part": "backbone"})
    entry(tmp_path, "old", 100, NOW - 1000)
    (tmp_path / "features_backbone_s6_abc.pt").write_bytes(b"\0" * 50)
    os.utime(tmp_path / "features_backbone_s6_abc.pt", (NOW - 500, NOW - 500))
    (tmp_path / ".x.pt.123.tmp").write_bytes(b"\0" * 999)  # a write in progress: not an entry
    entries = scan(tmp_path)
    assert [e.name for e in entries] == ["old", "features_backbone_s6_abc.pt", "new"]
    assert [e.bytes for e in entries] == [100, 50, 300 + len((tmp_path / "new" / ABOUT).read_bytes())]
    assert entries[2].files == 2 and "model: IQACR" in entries[2].about and "created" not in entries[2].about
    assert all(e.known for e in entries)
    assert scan(tmp_path / "missing") == []


def test_prune_removes_least_recently_used_until_within_the_limit(tmp_path):
    for i, name in enumerate(["a", "b", "c", "d"]):
        entry(tmp_path, name, 100, NOW - 1000 + i * 100)  # a oldest
    gone = prune(tmp_path, max_bytes=250, now=NOW)
    assert [e.name for e in gone] == ["a", "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "d"]  # nothing hidden left behind either
    assert prune(tmp_path, max_bytes=250, now=NOW) == []


def test_prune_keeps_what_was_used_since_and_honours_age(tmp_path):
    entry(tmp_path, "stale", 10, NOW - 40 * 86400)
    entry(tmp_path, "recent", 10, NOW - 86400)
    entry(tmp_path, "in_use_a", 500, NOW - 60)
    entry(tmp_path, "in_use_b", 500, NOW - 30)
    gone = prune(tmp_path, max_bytes=100, keep_since=NOW - 100, now=NOW)
    assert [e.name for e in gone] == ["stale", "recent"]  # over the limit, yet the running job's stay
    assert {p.name for p in tmp_path.iterdir()} == {"in_use_a", "in_use_b"}
    entry(tmp_path, "month_old", 10, NOW - 31 * 86400)
    assert [e.name for e in prune(tmp_path, older_than_s=30 * 86400, now=NOW)] == ["month_old"]


def test_prune_finishes_an_eviction_that_was_killed(tmp_path):
    """An eviction renames its entry to a hidden .deleting-* name, then deletes it: killed in
    between, the space stayed taken, unseen by scan and untouched by every later prune."""
    entry(tmp_path, "a", 100, NOW - 100)
    killed = entry(tmp_path, "b", 100, NOW - 200)
    killed.rename(tmp_path / ".deleting-0123abcd-b")
    (tmp_path / ".deleting-89abcdef-features_x.pt").write_bytes(b"\0" * 10)
    assert [e.name for e in scan(tmp_path)] == ["a"]
    prune(tmp_path, max_bytes=0, dry_run=True, now=NOW)
    assert len(list(tmp_path.iterdir())) == 3  # a dry run removes nothing
    assert prune(tmp_path, max_bytes=10**6, now=NOW) == []  # nothing over the limit: still the leftovers go
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_dry_run_removes_nothing(tmp_path):
    entry(tmp_path, "a", 100, NOW - 100)
    entry(tmp_path, "b", 100, NOW)
    assert [e.name for e in prune(tmp_path, max_bytes=0, dry_run=True, now=NOW)] == ["a", "b"]
    assert {p.name for p in tmp_path.iterdir()} == {"a", "b"}


def test_a_folder_that_is_not_a_cache_is_never_pruned(tmp_path):
    entry(tmp_path, "a", 100, NOW - 100)
    (tmp_path / "thesis.docx").write_bytes(b"years of work")
    with pytest.raises(ValueError, match=r"does not look like a contentiqa cache.*'thesis.docx'.*nothing removed"):
        prune(tmp_path, max_bytes=0)
    sub = tmp_path / "photos"
    sub.mkdir()
    (sub / "me.jpg").write_bytes(b"x")
    (tmp_path / ".deleting-draft").write_bytes(b"a user's own hidden file")  # not ours to finish deleting
    with pytest.raises(ValueError, match="not look like"):
        prune(tmp_path, max_bytes=0)
    assert (tmp_path / "a").is_dir() and (tmp_path / "thesis.docx").is_file() and (sub / "me.jpg").is_file()
    assert (tmp_path / ".deleting-draft").is_file()


def test_the_export_cache_inside_a_training_cache_is_an_entry_of_it(tmp_path):
    """With CONTENTIQA_CACHE_DIR and CONTENTIQA_CACHE naming one folder, the exports' onnx/ folder
    was listed as not written by contentiqa, and every prune (cache_limit too) refused the folder."""
    entry(tmp_path, "a", 100, NOW - 100)
    exports = tmp_path / "onnx"
    exports.mkdir()
    graph = exports / f"best-fp32-{'8f' * 10}.onnx"
    graph.write_bytes(b"\0" * 50)
    os.utime(graph, (NOW - 1, NOW - 1))  # scored with today: a graph's use touches the file, not its folder
    os.utime(exports, (NOW - 40 * 86400, NOW - 40 * 86400))  # the folder's own date: its last export
    assert all(e.known for e in scan(tmp_path, NOW))
    assert prune(tmp_path, older_than_s=30 * 86400, now=NOW, dry_run=True) == []
    assert [e.name for e in prune(tmp_path, max_bytes=60, now=NOW)] == ["a"]
    (exports / "notes.txt").write_text("mine")  # anything else in it is still not ours
    with pytest.raises(ValueError, match="not look like a contentiqa cache.*'onnx'"):
        prune(tmp_path, max_bytes=0)


def test_a_folder_of_dotfiles_is_not_a_cache_entry(tmp_path):
    """A user's settings folder holding only .env was taken for an entry (any dotfile counted as
    a write in progress) and removed by a prune."""
    entry(tmp_path, "a", 100, NOW - 100)
    settings = tmp_path / "settings"
    settings.mkdir()
    (settings / ".env").write_text("SECRET=1")
    with pytest.raises(ValueError, match=r"not look like a contentiqa cache.*'settings'"):
        prune(tmp_path, max_bytes=0)
    assert (settings / ".env").is_file()
    (settings / ".env").unlink()
    (settings / ".x.pt.abc123xy.tmp").write_bytes(b"")  # what an atomic write in progress looks like
    assert sorted(e.name for e in prune(tmp_path, max_bytes=0)) == ["a", "settings"]


def test_touch_marks_use_and_describe_writes_once(tmp_path):
    folder = entry(tmp_path, "a", 10, NOW - 1000)
    before = time.time() - 1
    touch(folder)
    assert folder.stat().st_mtime >= before
    touch(tmp_path / "missing")  # advice only: no error
    describe(folder, {"part": "first"})
    describe(folder, {"part": "second"})
    assert json.loads((folder / ABOUT).read_text())["part"] == "first"


def test_cache_command_lists_and_prunes(tmp_path, capsys):
    entry(tmp_path, "backbone_old", 2000, NOW - 1000, {"model": "IEIQA", "part": "distortion"})
    entry(tmp_path, "backbone_new", 2000, NOW)
    assert main(["cache", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2 entries" in out and out.index("backbone_old") < out.index("backbone_new")
    assert "model: IEIQA, part: distortion" in out
    # what an entry's about.json says is printed escaped (a shared cache's files are anyone's)
    entry(tmp_path, "backbone_odd", 10, NOW - 2000, {"model": "x\x1b]0;TITLE\x07"})
    assert main(["cache", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "model: x\\x1b]0;TITLE\\x07" in out
    shutil.rmtree(tmp_path / "backbone_odd")
    new_bytes = next(e.bytes for e in scan(tmp_path) if e.name == "backbone_new")
    assert main(["cache", str(tmp_path), "--max-size", "3K", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would remove" in out and (tmp_path / "backbone_old").exists()
    assert f"; {format_size(new_bytes)} left" in out  # what a real prune would leave
    assert main(["cache", str(tmp_path), "--max-size", "3K"]) == 0
    out = capsys.readouterr().out
    assert "removed 1 entry," in out and not (tmp_path / "backbone_old").exists() and (tmp_path / "backbone_new").exists()
    assert f"; {format_size(new_bytes)} left" in out and sum(e.bytes for e in scan(tmp_path)) == new_bytes


def test_cache_command_errors_name_the_folder(tmp_path, capsys):
    assert main(["cache", str(tmp_path / "nope")]) == 1
    assert f"{tmp_path / 'nope'}: no such folder" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["cache", str(tmp_path), "--older-than", "0"]) == 1
    assert "does not look like a contentiqa cache" in capsys.readouterr().err and (tmp_path / "notes.txt").exists()
    # a bad size is a usage error naming the option, worded as experiment's --cache-limit is
    for argv in (["cache", str(tmp_path), "--max-size", "lots"], ["experiment", "x.yaml", "--cache-limit", "lots"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert f"argument {argv[-2]}: not a size: 'lots'" in capsys.readouterr().err
    assert main(["cache", str(tmp_path), "--dry-run"]) == 2
    # a name's control characters are escaped, not sent to the terminal (as score prints paths)
    assert main(["cache", str(tmp_path / "a\x1b[2Jb")]) == 1
    assert "a\\x1b[2Jb: no such folder" in capsys.readouterr().err
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x\x1b]0;y").mkdir()
    assert main(["cache", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "x\\x1b]0;y" in out
    (tmp_path / "c" / "x\x1b]0;y" / "f.txt").write_text("mine")
    (tmp_path / "c").rename(tmp_path / "c\x1b[2J")
    assert main(["cache", str(tmp_path / "c\x1b[2J"), "--max-size", "0"]) == 1  # not a cache: its refusal too
    err = capsys.readouterr().err
    assert "\x1b" not in err and "does not look like a contentiqa cache" in err


def test_cache_command_names_a_folder_it_cannot_read(tmp_path, monkeypatch, capsys):
    import contentiqa.utils.disk_cache as dc

    def unreadable(folder):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(dc, "scan", unreadable)
    for argv in (["cache", str(tmp_path)], ["cache", str(tmp_path), "--max-size", "1G"]):
        assert main(argv) == 1
        assert f"{tmp_path}: cannot be read (Permission denied)" in capsys.readouterr().err


def test_cache_command_defaults_to_the_export_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CONTENTIQA_CACHE_DIR", str(tmp_path))
    assert main(["cache"]) == 0
    assert f"{tmp_path / 'onnx'}: empty" in capsys.readouterr().out
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "ie-iqa-fp32-0123456789abcdef0123.onnx").write_bytes(b"\0" * 10)
    assert main(["cache"]) == 0
    assert "ie-iqa-fp32-0123456789abcdef0123.onnx" in capsys.readouterr().out


def test_a_users_own_onnx_file_is_not_a_cache_entry(tmp_path, capsys):
    """Only the export cache's own names count: a folder of someone's models is never pruned."""
    (tmp_path / "production.onnx").write_bytes(b"\0" * 4096)
    assert main(["cache", str(tmp_path), "--max-size", "1K"]) == 1
    assert "does not look like a contentiqa cache" in capsys.readouterr().err
    assert (tmp_path / "production.onnx").is_file()


def test_an_entry_that_cannot_be_removed_stops_none_of_the_others(tmp_path, monkeypatch, capsys):
    for i, name in enumerate(("a", "b", "c")):
        entry(tmp_path, name, 100, NOW - 300 + i)
    real = os.replace

    def refuse_a(src, dst):
        if Path(src).name == "a":
            raise PermissionError(13, "Permission denied")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", refuse_a)
    assert main(["cache", str(tmp_path), "--max-size", "0"]) == 1
    cap = capsys.readouterr()
    assert "cannot remove" in cap.err and "a: Permission denied" in cap.err
    assert "removed 2 entries" in cap.out  # b and c went, and are said
    assert {p.name for p in tmp_path.iterdir()} == {"a"}


def test_the_temporaries_of_killed_writes_are_listed_and_always_pruned(tmp_path):
    entry(tmp_path, "a", 100, NOW - 10)
    old, fresh = tmp_path / ".m-fp32-0123.onnx.abcd1234.tmp", tmp_path / ".m-fp32-4567.onnx.efgh5678.tmp"
    for path, age in ((old, 7200), (fresh, 60)):
        path.write_bytes(b"\0" * 500)
        os.utime(path, (NOW - age, NOW - age))
    (leftover,) = [e for e in scan(tmp_path, now=NOW) if e.leftover]
    assert leftover.path == old and leftover.bytes == 500 and leftover.known
    gone = prune(tmp_path, max_bytes=10**6, now=NOW)  # under the limit: still the killed write's goes
    assert [e.path for e in gone] == [old] and fresh.exists() and (tmp_path / "a").exists()  # a write in progress stays


def test_a_folder_entry_that_cannot_be_emptied_is_not_said_to_be_removed(tmp_path, monkeypatch, capsys):
    import shutil

    entry(tmp_path, "a", 100, NOW - 100)

    def refuse(path, ignore_errors=False, **k):  # a folder whose files cannot be deleted
        if not ignore_errors:
            raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(shutil, "rmtree", refuse)
    assert main(["cache", str(tmp_path), "--max-size", "0"]) == 1
    cap = capsys.readouterr()
    assert "cannot remove" in cap.err and "removed 0 entries" in cap.out


def test_an_entry_linked_from_another_disk_counts_nothing_here_and_is_not_removed_for_size(tmp_path):
    """A link's entry was counted at its target's size: a size bound removed it (freeing nothing
    here, orphaning its data elsewhere) and the summary said its bytes were freed."""
    cache, elsewhere = tmp_path / "cache", tmp_path / "other-disk"
    entry(cache, "a", 300, NOW - 1000)
    moved = entry(elsewhere, "b", 300, NOW - 900)
    (cache / "b").symlink_to(moved, target_is_directory=True)
    entry(cache, "c", 400, NOW - 10)
    (cache / "c" / f"{1:024x}.pt").symlink_to(moved / next(p.name for p in moved.iterdir()))  # a link inside an entry
    os.utime(cache / "c", (NOW - 10, NOW - 10))
    by = {e.name: e for e in scan(cache)}
    assert by["b"].bytes == 0 and "link to" in by["b"].about and by["b"].known
    assert by["c"].bytes < 400 + 300
    gone = prune(cache, max_bytes=by["c"].bytes, now=NOW)  # within it once "a" goes: "b" adds nothing here
    assert [e.name for e in gone] == ["a"] and (cache / "b").is_symlink() and (moved / next(iter(os.listdir(moved)))).exists()
    assert [e.name for e in prune(cache, older_than_s=100, now=NOW)] == ["b"]  # unused: its link goes, its data stays
    assert moved.is_dir() and any(moved.iterdir())


def test_an_absurd_size_is_refused_not_a_traceback():
    with pytest.raises(ValueError, match="too large"):
        parse_size("9" * 400)


def test_a_link_planted_under_an_entrys_name_is_replaced_never_written_through(tmp_path):
    """Entry names are predictable: whoever can write a shared cache folder could link one to any
    file of this user, and the next export or encoding replaced that file (a 16 MB int8 graph
    over ~/.bashrc)."""
    import torch

    from contentiqa.inference.onnx_runtime import write_into_cache
    from contentiqa.training.cache import cached_encodings
    from contentiqa.utils.io import atomic_write_text

    from tiny_models import tiny_model
    from conftest import write_image

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "entry.onnx").symlink_to(victim)
    write_into_cache("entry.onnx", "k", lambda path, key: path.write_bytes(b"graph"), cache)
    assert victim.read_text() == "precious" and not (cache / "entry.onnx").is_symlink()
    assert (cache / "entry.onnx").read_bytes() == b"graph"
    folder = tmp_path / "about"
    folder.mkdir()
    (folder / ABOUT).symlink_to(tmp_path / "made-elsewhere.json")  # dangling: would create its target
    describe(folder, {"model": "x"})
    assert not (tmp_path / "made-elsewhere.json").exists()
    link = tmp_path / "user-link.txt"  # a user's own output through a link: still written where it points
    link.symlink_to(victim)
    atomic_write_text(link, "new")
    assert victim.read_text() == "new" and link.is_symlink()
    victim.write_text("precious")
    image = str(write_image(tmp_path / "img" / "0.png", 64, 64, seed=1))
    enc = tmp_path / "enc"
    model = tiny_model("iqa-cr")
    cached_encodings(model, [image], 3, True, cache_dir=enc)
    entry = next(p for p in enc.rglob("*.pt"))
    entry.unlink()
    entry.symlink_to(victim)
    cached_encodings(model, [image], 3, True, cache_dir=enc)
    assert victim.read_text() == "precious" and not entry.is_symlink() and torch.load(entry, weights_only=True)


def test_an_entry_a_running_process_fills_is_never_pruned_and_is_said_in_use(tmp_path, capsys):
    """`contentiqa cache --max-size` removed the folder a training was filling: every encoding
    written so far was lost (encoded again by the next run), without a word."""
    from contentiqa.utils.disk_cache import using

    old = entry(tmp_path, "backbone_busy", 2000, NOW - 1000)
    entry(tmp_path, "backbone_idle", 2000, NOW - 500)
    with using(old):
        assert [e.in_use for e in scan(tmp_path)] == [True, False]
        assert main(["cache", str(tmp_path)]) == 0
        assert "(in use by a running process)" in capsys.readouterr().out
        assert main(["cache", str(tmp_path), "--max-size", "0"]) == 0
        out = capsys.readouterr().out
        assert "removed 1 entry," in out and "kept 1 entry in use by a running process (backbone_busy)" in out
        assert old.is_dir() and not (tmp_path / "backbone_idle").exists()
    # the lock goes with its holder: the entry is an ordinary one again
    assert [e.in_use for e in scan(tmp_path)] == [False]
    assert [e.name for e in prune(tmp_path, max_bytes=0)] == ["backbone_busy"]


def test_cached_encodings_hold_their_folders_while_filling_them(tmp_path, monkeypatch):
    import contentiqa.training.cache as cache_mod
    from contentiqa.utils.disk_cache import scan as scan_cache

    from tiny_models import tiny_model
    from conftest import write_image

    images = [str(write_image(tmp_path / "img" / f"{i}.png", 64, 64, seed=i)) for i in range(2)]
    enc = tmp_path / "enc"
    seen = []
    real = cache_mod.load_image

    def load_and_look(path, *a, **k):  # while encoding: what an eviction would find
        seen.append([e.in_use for e in scan_cache(enc)])
        return real(path, *a, **k)

    monkeypatch.setattr(cache_mod, "load_image", load_and_look)
    cache_mod.cached_encodings(tiny_model("iqa-cr"), images, 3, True, cache_dir=enc)
    assert seen and all(flags and all(flags) for flags in seen)
    assert not any(e.in_use for e in scan_cache(enc)) and all(e.known for e in scan_cache(enc))


def test_the_in_use_hold_fails_open_on_filesystems_without_locks(tmp_path, monkeypatch):
    """Lustre without -o flock: using() raised ENOSYS out of every training with a cache. NFS:
    an exclusive lock on a file opened read-only fails with EBADF, which counted every entry
    ever filled as in use, so nothing was evicted again."""
    import errno
    import fcntl

    from contentiqa.utils.disk_cache import using

    folder = entry(tmp_path, "backbone_a", 100, NOW - 1000)
    real = fcntl.flock

    def no_locks(fd, op):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with using(folder):  # used unheld
        pass
    assert [e.in_use for e in scan(tmp_path)] == [False]

    def nfs(fd, op):
        if op & fcntl.LOCK_EX and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EBADF, "Bad file descriptor")
        return real(fd, op)

    monkeypatch.setattr(fcntl, "flock", nfs)
    assert [e.in_use for e in scan(tmp_path)] == [False]
    with using(folder):
        assert [e.in_use for e in scan(tmp_path)] == [True]
    # a cache another user filled: its lock file read-only here (refused as root is not), and not held
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, flags, *a: (_ for _ in ()).throw(PermissionError(13, "denied"))
                        if str(path).endswith(".in-use") and flags & os.O_RDWR else real_open(path, flags, *a))
    assert [e.in_use for e in scan(tmp_path)] == [False]


def test_a_linked_entry_a_process_fills_is_in_use_too(tmp_path):
    from contentiqa.utils.disk_cache import using

    elsewhere = entry(tmp_path / "other-disk", "backbone_moved", 100, NOW - 1000)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "backbone_moved").symlink_to(elsewhere)
    with using(cache / "backbone_moved"):
        (e,) = scan(cache)
        assert e.linked and e.in_use
        assert prune(cache, older_than_s=0) == [] and (cache / "backbone_moved").is_symlink()
