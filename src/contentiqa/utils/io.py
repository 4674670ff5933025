"""Atomic output: results are written to a temporary file in the same folder, then renamed,
so an interrupted run never leaves a half-written CSV, JSON or checkpoint behind."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator


def through_links(path: str | os.PathLike) -> Path:
    """The file ``path`` names once symlinks are followed (a dangling link: the file it will
    create); ``path`` itself, unchanged, when no link is involved, so messages keep the name
    the user typed. Locks and atomic replaces act on this: renaming onto a link would replace
    the link by a regular file, and a lock taken by the link's name would not see a writer of
    its target."""
    path = Path(path)
    real = Path(os.path.realpath(path))
    return path if real == Path(os.path.abspath(path)) else real


NAME_MAX = 255
"""Bytes a file name may hold on the usual file systems (ext4, XFS, APFS, NTFS in UTF-16)."""


def temporary_prefix(path: Path) -> str:
    """``.<name>.``: how the temporaries of ``path`` begin (:func:`atomic_write`, probes). A
    name near the file system's limit is shortened with a hash of it, so that a legal output
    name keeps a legal temporary (tempfile adds 8 characters and the suffix)."""
    name = path.name
    if len(os.fsencode(name)) <= NAME_MAX - 24:
        return f".{name}."
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:8]
    while len(os.fsencode(name)) > NAME_MAX - 48:
        name = name[:-1]
    return f".{name}~{digest}."


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], *, follow_links: bool = True) -> Path:
    """Call ``write(tmp_path)`` then move ``tmp_path`` onto ``path`` atomically (onto the file a
    symlink ``path`` points to: the link stays). ``follow_links=False``: onto the name itself, a
    link there replaced, never followed: a shared cache's entries, whose predictable names
    anyone who can write the folder could point at any file of this user."""
    path = through_links(path) if follow_links else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        _fsync(tmp)  # on disk before it takes the name: a crash never leaves a torn file under it
        # mkstemp makes the file private (0600); give it the permissions a plain open() would
        # (or keep those of the file it replaces).
        try:
            replaced = path.exists() and not path.is_symlink()
            os.chmod(tmp, path.stat().st_mode & 0o7777 if replaced else 0o666 & ~_umask())
        except OSError:
            pass
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _fsync(path: str) -> None:
    """Flush a written file to disk; a write error that shows only now (a full disk, a network
    file system) is raised, a file system without fsync (EINVAL) is let be."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


_RANDOM = r"[a-z0-9_]{8}"
"""tempfile's random part of a name (a fixed-length run of [a-z0-9_])."""


def is_temporary(name: str) -> bool:
    """Whether ``name`` is that of a temporary :func:`atomic_write` makes (``.<name>.<random>.tmp``)."""
    return re.fullmatch(r"\..+\." + _RANDOM + r"\.tmp", name) is not None


def remove_stale_temporaries(path: str | os.PathLike, suffixes: tuple[str, ...] = (".tmp",)) -> list[Path]:
    """Remove the temporary files of ``path`` that a writer killed mid-save (SIGKILL, power
    cut) left beside it: :func:`atomic_write`'s ``.<name>.<random>.tmp``, and other
    ``mkstemp`` files named the same way with one of ``suffixes``. A live writer's
    temporary is named the same, so call this only where no other process can be writing
    ``path`` (a lock held, or the one writer starting). Returns what was removed."""
    path = through_links(path)
    # Exactly tempfile's random part (a fixed-length run of [a-z0-9_]): the temporary of a
    # file whose name extends this one's ('.last.pt.bak.<random>.tmp') does not match.
    pattern = re.compile(re.escape(temporary_prefix(path)) + _RANDOM + "(" + "|".join(map(re.escape, suffixes)) + ")")
    removed = []
    try:
        names = os.listdir(path.parent)
    except OSError:
        return removed
    for name in names:
        tmp = path.parent / name
        if pattern.fullmatch(name) and tmp.is_file() and not tmp.is_symlink():
            try:
                tmp.unlink()
            except OSError:
                continue
            removed.append(tmp)
    return removed


class Busy(RuntimeError):
    """Another process holds the lock :func:`exclusive_lock` asked for (``lock``: its file)."""

    def __init__(self, message: str, lock: Path):
        super().__init__(message)
        self.lock = lock


@contextlib.contextmanager
def exclusive_lock(lock: str | os.PathLike, busy: str) -> Iterator[Path]:
    """Hold ``lock`` (a file, created if needed) exclusively for the block, or raise
    :class:`Busy` at once with ``busy`` and the lock's name: two writers of one output would
    interleave their files, and the second would remove the first's live temporaries
    (:func:`remove_stale_temporaries` assumes one writer). The kernel's flock: a killed process
    releases it. The lock file itself stays, as flock files must (removing one lets a third
    process lock a new file while the second still holds the old)."""
    from filelock import FileLock, Timeout

    lock = Path(lock)
    fl = FileLock(str(lock))
    try:
        fl.acquire(timeout=0)
    except Timeout:
        raise Busy(f"{busy} (lock {lock})", lock) from None
    try:
        yield lock
    finally:
        fl.release()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_head(path: str | os.PathLike, n: int) -> bytes:
    """A file's first ``n`` bytes, to tell what it is (none when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8", errors: str = "strict", *,
                      follow_links: bool = True) -> Path:
    """``errors``: as for :func:`open`; e.g. ``surrogateescape`` writes a file name that is not
    valid UTF-8 (which Python holds as lone surrogates) back as its own bytes. ``follow_links``:
    see :func:`atomic_write`."""
    def _write(tmp: str) -> None:
        with open(tmp, "w", encoding=encoding, errors=errors) as f:
            f.write(text)

    return atomic_write(path, _write, follow_links=follow_links)


def atomic_torch_save(obj, path: str | os.PathLike, *, follow_links: bool = True) -> Path:
    """``torch.save`` of ``obj`` reduced to plain data (see :mod:`.checkpoint_io`), so the file
    loads back under ``weights_only=True`` (``follow_links``: see :func:`atomic_write`)."""
    import torch

    from .checkpoint_io import plain_data

    data = plain_data(obj)

    def write(tmp: str) -> None:
        # Serialized in memory, then written by Python: a full disk is an OSError naming the
        # file (ENOSPC), where torch.save's own writer says "unexpected pos".
        buf = io.BytesIO()
        torch.save(data, buf)
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())

    return atomic_write(path, write, follow_links=follow_links)


_SHA256_SEEN: dict[tuple, str] = {}
_SHA256_SETTLE_NS = 2_000_000_000


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (weights files, calibration files: what identifies a model).

    Remembered for this process by the file's identity and stat (device, inode, size,
    modification and change times): one ``score`` start-up asks for the weights' hash three
    times (default precision, export cache key, result rows). A file that is rewritten gets a new
    stat, so it is hashed again; one changed in the last :data:`_SHA256_SETTLE_NS` is not
    remembered at all, since a second write within the clock's granularity could keep its stat
    (git's "racy" entries)."""
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        known = _SHA256_SEEN.get(key)
        if known is not None:
            return known
        h = hashlib.sha256()
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > _SHA256_SETTLE_NS:
        _SHA256_SEEN[key] = digest
    return digest
