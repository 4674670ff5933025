"""Keeping a command's output safe: writable before work starts, one writer at a time, a
rescue file when the output cannot be written, and SIGTERM handled like Ctrl-C.

Not a command (main.py imports only the modules it lists)."""
from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

from ..utils.io import Busy, exclusive_lock, remove_stale_temporaries, temporary_prefix, through_links
from .main import UsageError

EXIT_NOT_WRITTEN = 3
"""Exit code of ``score`` when --output could not be written (results went to a rescue file)."""


class Stopped(BaseException):
    """SIGTERM / SIGINT / SIGHUP arrived; ``signum`` says which (exit code 128 + signum)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


_made_folders: list[Path] = []
"""Folders the checks below created in this command: removed again while still empty when the
command is refused (a refusal leaves nothing behind, not an empty --out-dir)."""
_made_locks: set[Path] = set()
"""Lock files :func:`output_lock` created in this command (another process's are never ours)."""


def _make_folder(folder: Path) -> None:
    """``folder.mkdir(parents=True, exist_ok=True)``, remembering each level this call created
    (a level another process made meanwhile is its, not ours)."""
    for level in [*reversed(folder.parents), folder]:  # outermost first
        try:
            level.mkdir()
        except FileExistsError:
            continue
        except FileNotFoundError:  # a level above was removed meanwhile: mkdir's own error below
            break
        _made_folders.append(Path(os.path.abspath(level)))  # (absolute: ordered by depth below)
    folder.mkdir(parents=True, exist_ok=True)  # (raises what stops it: a file in the way, permissions)


def forget_made_folders() -> None:
    """A new command starts: the folders an earlier one made in this process are kept."""
    _made_folders.clear()
    _made_locks.clear()


def remove_made_folders() -> None:
    """Remove the folders this command's checks created and nothing was written in; called
    when it is refused. One that holds anything but lock files this command made (released by
    then, and taken by no one since) stays, and so does one that cannot be removed."""
    for folder in sorted(_made_folders, key=lambda p: len(p.parts), reverse=True):  # deepest first
        with contextlib.suppress(OSError, Busy):
            children = list(folder.iterdir())
            if all(Path(os.path.abspath(c)) in _made_locks for c in children):
                for child in children:  # held while removed: a process that took it since keeps it
                    with exclusive_lock(child, "in use"):
                        child.unlink()
            folder.rmdir()  # only an empty folder goes
    _made_folders.clear()
    _made_locks.clear()


def check_writable(path: Path, option: str = "--output") -> None:
    """Fail before any work if ``path`` cannot be written: its folder is created if needed and
    a probe file is made and removed there (atomic writes need exactly that). A symlink is
    followed: its target's folder is where the file is written. ``option`` names it in the error."""
    path = through_links(path)
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder: name a file")
    # a file where a folder of the path should be: mkdir's "File exists" would not say which
    blocking = next((p for p in path.parents if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise UsageError(f"cannot write {option} {path}: {blocking} is a file, not a folder")
    try:
        _make_folder(path.parent)
        fd, probe = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=".probe", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"cannot write {option} {path}: {exc.strerror or exc}; choose a writable place") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"cannot write {option} {path}: the file is read-only")


def check_writable_folder(folder: Path, option: str) -> Path:
    """``folder``, created if needed, or a UsageError naming ``option`` when it is a file or
    cannot be written in: checked before any work, like :func:`check_writable` for a file."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{option} {folder} is a file: name a folder")
    try:
        _make_folder(folder)
    except OSError as exc:
        raise UsageError(f"cannot create {option} {folder}: {exc.strerror or exc}") from None
    try:  # a probe, not os.access: root passes that on a read-only mount or /proc
        fd, probe = tempfile.mkstemp(prefix=".contentiqa-", suffix=".probe", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"cannot write in {option} {folder}: {exc.strerror or exc}") from None
    return folder


@contextlib.contextmanager
def output_lock(path: Path, option: str = "--output") -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (through ``.<name>.lock`` beside it) for the block;
    a second writer of the same file gets a UsageError at once instead of erasing rows.
    It is taken by the real path (symlinks followed), so writers of one file through different
    names exclude each other (:func:`contentiqa.utils.io.exclusive_lock`)."""
    path = through_links(path)
    lock = path.parent / f"{temporary_prefix(path)}lock"
    new = not lock.exists()
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(exclusive_lock(lock, f"another process is writing {path}"))
        except Busy as exc:
            raise UsageError(f"{exc}; wait for it to finish, or write to another {option}") from None
        except OSError as exc:
            # a lock file another user left in a shared folder (locks stay: removing one is racy)
            why = f"; {lock} is another user's: remove it if no run writes {path}" if isinstance(exc, PermissionError) \
                and lock.exists() else ""
            raise UsageError(f"cannot lock {option} {path}: {exc.strerror or exc}{why}") from None
        if new:
            _made_locks.add(Path(os.path.abspath(lock)))
        remove_stale_temporaries(path, (".tmp", ".probe"))  # with the lock held, every one is stale
        yield


def rescue_path(path: Path, fmt: str) -> Path:
    """Where results go when ``path`` cannot be written: a new file in the temporary folder, same
    format (an HTML report's rows as JSON Lines: smaller, and what --resume reads). Made here,
    private and under a name no one can guess: a name known in advance in a shared /tmp could be
    a link another user planted, and the rows would overwrite what it points at."""
    suffix = ".jsonl" if fmt == "html" else path.suffix
    stamp = time.strftime("%Y%m%d-%H%M%S")
    fd, made = tempfile.mkstemp(prefix=f"contentiqa-rescued-{path.stem[:60]}-{stamp}-", suffix=suffix)
    os.close(fd)
    return Path(made)


_TERMINATED_BY: list[int] = []
"""The signal :func:`terminate_as_interrupt` last turned into a KeyboardInterrupt (commands
re-raise it with their own message, so the exception cannot carry it)."""


def interrupt_exit_code() -> int:
    """128 + the signal that interrupted the command: SIGTERM/SIGHUP when
    :func:`terminate_as_interrupt` turned one into the KeyboardInterrupt, else Ctrl-C's SIGINT
    (what a batch script that requeues on 143 tells apart)."""
    code = 128 + (_TERMINATED_BY[0] if _TERMINATED_BY else int(signal.SIGINT))
    _TERMINATED_BY.clear()
    return code


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP (a scheduler stopping or requeueing the job, a closed terminal) end a
    long command as Ctrl-C does: a KeyboardInterrupt, which the command turns into what was kept
    and how to go on, instead of a silent death (the exit code still names the signal:
    :func:`interrupt_exit_code`). Other threads: no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame) -> None:
        _TERMINATED_BY[:] = [signum]
        raise KeyboardInterrupt

    saved = {s: signal.signal(s, interrupt) for s in StopSignals.SIGNALS if s != signal.SIGINT}
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


class StopSignals:
    """SIGTERM, SIGHUP and SIGINT raise :class:`Stopped` in the main thread, except while a
    ``critical()`` block runs (a save): then the stop is raised when the block ends, so a
    save is never cut short by the signal that asked for it. Other threads: no-op."""

    SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None), signal.SIGINT) if s)

    def __init__(self) -> None:
        self.pending: int | None = None
        self.depth = 0
        self.ignoring = False
        self.saved: dict[int, object] = {}

    def ignore_further(self) -> None:
        """Stopping already: later signals are ignored (the stop in progress saves)."""
        self.ignoring = True
        self.pending = None

    def _handler(self, signum, frame) -> None:
        if self.ignoring:
            return
        if self.depth:
            self.pending = signum
            return
        raise Stopped(signum)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self.saved[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self.saved.items():
            signal.signal(s, h)

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if not self.depth and self.pending is not None and not self.ignoring:
                signum, self.pending = self.pending, None
                raise Stopped(signum)
