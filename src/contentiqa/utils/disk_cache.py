"""Keeping cache folders within bounds: what is in them, and least-recently-used eviction.

The frozen-encoding cache (:mod:`contentiqa.training.cache`) and the ONNX export cache
(:mod:`contentiqa.inference.onnx_runtime`) only grow: every model whose frozen weights differ
(each seed of a fine-tuned specialist) gets its own entry, several GB at native resolution, and
a long series of runs fills a disk. An *entry* is one top-level item of a cache folder: a
folder of per-image encodings, or one file. Users mark an entry as used with :func:`touch`
(reads alone do not change modification times), and :func:`prune` removes the least recently
used ones, never those used since ``keep_since`` (the entries a running job needs) nor those
a running process holds with :func:`using` (a training filling an entry).
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .io import is_temporary

ABOUT = "about.json"
"""A small file in an entry folder saying what it holds, for a person listing the cache."""

IN_USE = ".in-use"
"""A file in an entry folder that the processes filling the entry hold a shared lock on
(:func:`using`); the lock goes with its process, however that ends."""

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([KMGT])(?:I?B)?|B)?\s*$", re.IGNORECASE)


def parse_size(text: str | int | float) -> int:
    """Bytes from ``"40G"``, ``"500MB"``, ``"1.5TiB"`` or a plain number of bytes (binary units)."""
    if isinstance(text, bool):
        raise ValueError(f"not a size: {text!r}")
    if isinstance(text, (int, float)):
        if text < 0:
            raise ValueError(f"a size cannot be negative: {text!r}")
        return int(text)
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"not a size: {text!r} (e.g. 40G, 500M, 1.5T or a number of bytes)")
    size = float(m.group(1)) * _UNITS[(m.group(2) or "").upper()]
    if not math.isfinite(size):  # hundreds of digits: int() of an infinite float raises OverflowError
        raise ValueError(f"not a size: {text!r} is too large")
    return int(size)


def format_size(n: int) -> str:
    if abs(n) < 1024:
        return f"{n} B"
    size = n / 1024
    for unit in ("K", "M"):
        if abs(size) < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} G"


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    bytes: int
    files: int
    last_used: float
    """Seconds since the epoch: the entry's modification time, which :func:`touch` moves on use."""
    about: str
    """What it holds (from its ``about.json``), or '' when it does not say."""
    known: bool
    """Whether it looks like something contentiqa writes: :func:`prune` refuses a folder holding
    anything else (a mistyped folder must not lose a user's files)."""
    leftover: bool = False
    """A temporary of a write that a killed run never finished (older than :data:`STALE_TEMPORARY_S`):
    listed, counted, and always removed by :func:`prune`."""
    linked: bool = False
    """A link to an entry kept elsewhere: counted as nothing here, removed only for its age."""
    in_use: bool = False
    """Held by a running process (:func:`using`): listed, never removed."""

    @property
    def name(self) -> str:
        return self.path.name


def touch(path: str | os.PathLike) -> None:
    """Mark a cache entry as used now. A read-only cache is left as it is: marking is advice."""
    try:
        os.utime(path)
    except OSError:
        pass


@contextlib.contextmanager
def using(folder: str | os.PathLike):
    """Hold the entry folder ``folder`` as in use while the block runs (a training writing its
    encodings): :func:`prune` leaves it alone, where evicting it would lose every encoding
    written so far. Advisory, where the system has file locks (POSIX); a cache that cannot be
    written is used unheld."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): nothing held
        yield
        return
    try:  # never through a link planted under the name (a shared cache)
        fd = os.open(Path(folder) / IN_USE, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError:  # a filesystem without locks (Lustre without -o flock): used unheld
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


def _held(folder: Path) -> bool:
    """Whether a running process holds ``folder`` with :func:`using`."""
    try:
        import fcntl
    except ImportError:
        return False
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    try:  # writable where it can be: NFS places an exclusive lock only on a file open for writing
        fd = os.open(folder / IN_USE, os.O_RDWR | nofollow)
    except OSError:
        try:
            fd = os.open(folder / IN_USE, os.O_RDONLY | nofollow)
        except OSError:  # none: nobody ever held it
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError as exc:  # held shared by a running process; any other failure says nothing of use
        return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
    finally:
        os.close(fd)


def describe(folder: str | os.PathLike, about: dict) -> None:
    """Write ``about.json`` into an entry folder once (the first writer wins; errors ignored)."""
    path = Path(folder) / ABOUT
    if os.path.lexists(path):
        return
    try:
        from .io import atomic_write_text

        atomic_write_text(path, json.dumps(about, indent=1, sort_keys=True) + "\n", follow_links=False)
    except OSError:
        pass


def _about(path: Path) -> str:
    try:
        about = json.loads((path / ABOUT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    if not isinstance(about, dict):
        return ""
    return ", ".join(f"{k}: {v}" for k, v in about.items() if k != "created")


_ENCODING = re.compile(r"^[0-9a-f]{24}\.pt$")  # training/cache.py: one image's encodings
# stage features; an exported graph, named as inference.onnx_runtime.cache_filename names it
# (any other .onnx, e.g. a user's own export, is not the cache's to remove)
_FILE = re.compile(r"^(features_.*\.pt|.+-[a-z0-9]+-[0-9a-f]{20}\.onnx)$")


STALE_TEMPORARY_S = 3600.0
"""A temporary this old is no write in progress (an export takes minutes, an encoding a moment)
but a killed one's; cache folders are shared by processes, so younger ones are left alone."""


def _is_hidden(name: str) -> bool:
    # ".name.*.tmp": an atomic write in progress; ".deleting-*": an eviction in progress.
    return name.startswith(".")


def scan(folder: str | os.PathLike, now: float | None = None) -> list[CacheEntry]:
    """The entries of a cache folder, least recently used first (a missing folder: none); the
    temporaries killed writes left (a graph's size each) are entries too, marked ``leftover``."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    now = time.time() if now is None else now
    entries = []
    for child in folder.iterdir():
        if _is_hidden(child.name):
            try:
                st = child.lstat()
            except OSError:
                continue
            if is_temporary(child.name) and stat.S_ISREG(st.st_mode) and now - st.st_mtime > STALE_TEMPORARY_S:
                entries.append(CacheEntry(child, st.st_size, 1, st.st_mtime, "unfinished write of a stopped run",
                                          True, leftover=True))
            continue
        try:
            st = child.lstat()
        except OSError:  # removed meanwhile
            continue
        if stat.S_ISLNK(st.st_mode):
            # an entry moved to another disk and linked back: its bytes are not this folder's, and
            # removing the link to bring the folder under a size would free nothing here
            try:
                used = child.stat().st_mtime
            except OSError:  # a broken link
                used = st.st_mtime
            entries.append(CacheEntry(child, 0, 0, used, f"link to {os.readlink(child)} (its size not counted here)", True,
                                      linked=True, in_use=_held(child)))
            continue
        if stat.S_ISDIR(st.st_mode):
            size = files = 0
            used = st.st_mtime  # (touch marks an entry's use on its folder; an export's use is its file's)
            # only what the cache writes makes a folder one of its entries: a user's dotfiles
            # (a folder holding .env) are never the cache's to remove
            known = True
            for root, dirs, names in os.walk(child):
                known = known and not dirs
                for n in names:
                    if n == IN_USE:  # the users' lock, no content of the entry
                        continue
                    # (a folder of exports too: the ONNX export cache, where CONTENTIQA_CACHE_DIR
                    # names the training cache's folder as well)
                    known = known and (n == ABOUT or is_temporary(n) or bool(_ENCODING.match(n) or _FILE.match(n)))
                    try:  # a link inside an entry holds its own few bytes here, not its target's
                        file_st = os.lstat(os.path.join(root, n))
                    except OSError:
                        continue
                    size += file_st.st_size
                    files += 1
                    used = max(used, file_st.st_mtime)
            entries.append(CacheEntry(child, size, files, used, _about(child), known, in_use=_held(child)))
        else:
            entries.append(CacheEntry(child, st.st_size, 1, st.st_mtime, "", bool(_FILE.match(child.name))))
    return sorted(entries, key=lambda e: (e.last_used, e.name))


_EVICTING = ".deleting-"
"""The name an entry is renamed to while an eviction deletes it (hidden: never half an entry)."""


def _remove(entry: CacheEntry) -> None:
    """Rename first, so that a reader never sees half an entry under its real name."""
    gone = entry.path.with_name(f"{_EVICTING}{uuid.uuid4().hex[:8]}-{entry.name}")
    try:
        os.replace(entry.path, gone)
    except FileNotFoundError:
        return
    # Errors are raised, not ignored: a folder that could not be emptied is not freed space, and
    # prune says so (the hidden remains are finished by the next prune).
    if gone.is_dir() and not gone.is_symlink():
        shutil.rmtree(gone)
    else:
        gone.unlink(missing_ok=True)


def _finish_evictions(folder: Path) -> None:
    """Delete what evictions killed before they were done left under :data:`_EVICTING` names:
    hidden from :func:`scan`, so nothing else would ever free that space (several GB an entry)."""
    if not folder.is_dir():
        return
    for child in folder.iterdir():
        if child.name.startswith(_EVICTING):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)


class PruneIncomplete(OSError):
    """Some entries could not be removed (permissions, a busy mount): the others were, and
    ``removed`` says which, ``failed`` which not and why."""

    def __init__(self, removed: list[CacheEntry], failed: list[tuple[CacheEntry, OSError]]):
        self.removed, self.failed = removed, failed
        shown = "; ".join(f"{e.path}: {exc.strerror or exc}" for e, exc in failed[:3])
        super().__init__(f"{entries_word(len(failed))} could not be removed ({shown}"
                         f"{f' and {len(failed) - 3} more' if len(failed) > 3 else ''})")


def prune(folder: str | os.PathLike, max_bytes: int | None = None, older_than_s: float | None = None,
          keep_since: float | None = None, dry_run: bool = False, now: float | None = None,
          entries: list[CacheEntry] | None = None) -> list[CacheEntry]:
    """Remove entries unused for ``older_than_s`` seconds, then the least recently used until the
    folder holds at most ``max_bytes``; an entry used at or after ``keep_since``, or held by a running
    process (:func:`using`), stays whatever
    the bounds say. Returns what was (``dry_run``: would be) removed, oldest first. ``entries``:
    the folder's :func:`scan` when the caller has just made one (a large cache takes seconds to
    walk, so it is walked once). :class:`PruneIncomplete` when an entry could not be removed: the
    others were still tried."""
    if max_bytes is not None and max_bytes < 0:
        raise ValueError(f"max_bytes cannot be negative: {max_bytes}")
    now = time.time() if now is None else now
    entries = scan(folder, now) if entries is None else entries
    foreign = [e.name for e in entries if not e.known]
    if foreign:
        shown = ", ".join(repr(n) for n in foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ValueError(f"{folder}: does not look like a contentiqa cache (it holds {shown}); nothing removed")
    if not dry_run:
        _finish_evictions(Path(folder))
    total = sum(e.bytes for e in entries)
    removed: list[CacheEntry] = []
    failed: list[tuple[CacheEntry, OSError]] = []
    for e in entries:  # least recently used first
        if (keep_since is not None and e.last_used >= keep_since) or e.in_use:
            continue
        stale = e.leftover or (older_than_s is not None and now - e.last_used > older_than_s)
        over = max_bytes is not None and total > max_bytes and not e.linked  # removing a link frees nothing here
        if not (stale or over):
            continue
        if not dry_run:
            try:
                _remove(e)
            except OSError as exc:  # one entry that cannot go stops none of the others
                failed.append((e, exc))
                continue
        removed.append(e)
        total -= e.bytes
    if failed:
        raise PruneIncomplete(removed, failed)
    return removed


def entries_word(n: int) -> str:
    return f"{n} entry" if n == 1 else f"{n} entries"
