"""Which files a command's PATH arguments stand for: image files, folders, glob patterns.

Globs are expanded here, like the shell would, so quoted patterns work. Inside folders only
files with an image extension are taken (every format Pillow opens); a file named explicitly is
always attempted. Every argument yields something: what cannot be scored (a glob matching
nothing, a folder without images, an unreadable folder, a broken or looping link) becomes an
entry with its error, so it gets a row; what is passed over on purpose (subfolders without
``recursive``, non-image files, hidden files, a folder reached twice through links) is summarised in notes.
"""
from __future__ import annotations

import errno
import fnmatch
import glob
import os
import stat
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable

from .imageio import is_image_file


def path_key(path: str) -> str:
    """How two spellings of one file are recognised as the same input."""
    return os.path.normcase(os.path.abspath(os.path.expanduser(path)))


def _relative_parts(path: str) -> tuple[int, str] | None:
    """A relative path as (how many leading '..', the rest), or None (absolute, or no rest)."""
    if os.path.isabs(path):
        return None
    parts = os.path.normpath(path).split(os.sep)
    ups = 0
    while parts and parts[0] == os.pardir:
        parts, ups = parts[1:], ups + 1
    if not parts or parts == [os.curdir]:
        return None
    return ups, os.path.normcase(os.path.join(*parts))


def relative_resolver(paths: Iterable[str], keys: set[str]) -> Callable[[str], str | None] | None:
    """How the relative ``paths`` of an earlier run's file, written from a folder this run does
    not know, map onto this run's input ``keys`` (:func:`path_key`): the one start folder under
    which most of them name an input, found from the ends of the paths. None when no start
    folder names any, or two name equally many (then nothing is guessed)."""
    by_name: dict[str, list[str]] = {}
    for k in keys:
        by_name.setdefault(os.path.basename(k), []).append(k)
    votes: Counter[tuple[str, int]] = Counter()
    for p in paths:
        rel = _relative_parts(p)
        if rel is None:
            continue
        ups, tail = rel
        for k in by_name.get(os.path.basename(tail), ()):
            if k.endswith(os.sep + tail):
                votes[(k[: -len(tail) - 1], ups)] += 1
    top = votes.most_common(2)
    if not top or (len(top) == 2 and top[0][1] == top[1][1]):
        return None
    (root, ups), _ = top[0]

    def resolve(path: str) -> str | None:
        rel = _relative_parts(path)
        if rel is None or rel[0] != ups:
            return None
        return os.path.join(root, rel[1])

    return resolve


def _hidden(name: str) -> bool:
    return name.startswith(".")


@dataclass
class FolderScan:
    """What scanning one folder found: image files, the problems that must become rows
    (unreadable folders, broken or looping links: their images cannot be scored) and what was
    passed over on purpose (summarised on stderr, so nothing is skipped without a word)."""

    files: list[str] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    subfolders_skipped: list[str] = field(default_factory=list)
    not_images: list[str] = field(default_factory=list)
    links_seen: list[str] = field(default_factory=list)
    hidden: list[str] = field(default_factory=list)


def _classify(scan: FolderScan, folder: str, name: str, recursive: bool) -> str | None:
    """Add the entry ``name`` of ``folder`` to ``scan``; returns its path when it is a folder
    to descend into."""
    path = os.path.normpath(os.path.join(folder, name))
    try:
        st = os.stat(path)  # follows links
    except OSError as exc:
        if os.path.islink(path):
            reason = "symbolic link loop" if exc.errno == errno.ELOOP else "broken symbolic link"
            if is_image_file(name) or exc.errno == errno.ELOOP:
                scan.problems.append((path, f"{reason} ({exc.strerror})"))
            else:
                scan.not_images.append(path)
        else:
            scan.problems.append((path, f"cannot read: {exc.strerror or exc}"))
        return None
    if stat.S_ISDIR(st.st_mode):
        if recursive:
            return path
        scan.subfolders_skipped.append(path)
    elif is_image_file(name):
        scan.files.append(path)
    else:
        scan.not_images.append(path)
    return None


def list_folder(folder: str, recursive: bool, seen: set[tuple[int, int]] | None = None) -> FolderScan:
    """Image files in ``folder`` (sorted; hidden files and folders skipped), descending into
    subfolders (and linked folders, each real folder once, so link loops end) with
    ``recursive``. Files are recognised by extension: every format Pillow can open. ``seen``:
    the real folders scanned already (by device and inode), shared across calls."""
    scan = FolderScan()
    seen = set() if seen is None else seen
    stack = [os.path.normpath(folder)]
    while stack:
        d = stack.pop()
        try:
            st = os.stat(d)
            if (st.st_dev, st.st_ino) in seen:
                scan.links_seen.append(d)
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(d) as it:
                names = sorted(e.name for e in it)
        except OSError as exc:
            scan.problems.append((d, f"folder cannot be read: {exc.strerror or exc}; its images were not scored"))
            continue
        scan.hidden += [os.path.join(d, n) for n in names if _hidden(n)]
        subdirs = [_classify(scan, d, n, recursive) for n in names if not _hidden(n)]
        stack.extend(reversed([s for s in subdirs if s is not None]))
    return scan


def expand_glob(pattern: str) -> list[str]:
    """The paths ``pattern`` matches, sorted, as ``glob.glob(pattern, recursive=True)`` gives
    them except that ``**`` descends no symbolic link to a folder, as bash's globstar and
    pathlib do: glob's follows them, so a link loop gave each photo below it some forty
    spellings, and two loops an expansion that did not end. Hidden names match only a pattern
    that starts with a dot, as in glob."""
    if "**" not in pattern:
        return sorted(glob.glob(pattern))
    if os.altsep:
        pattern = pattern.replace(os.altsep, os.sep)
    parts = pattern.split(os.sep)
    fixed = 0
    while fixed < len(parts) - 1 and not glob.has_magic(parts[fixed]):
        fixed += 1
    base = os.sep.join(parts[:fixed]) or (os.sep if pattern.startswith(os.sep) else os.curdir)
    found: set[str] = set()

    def entries(folder: str) -> list[os.DirEntry]:
        try:
            with os.scandir(folder) as it:
                return list(it)
        except OSError:
            return []

    def shown(name: str, part: str) -> bool:
        return not name.startswith(".") or part.startswith(".")

    def walk(folder: str, rest: list[str], shown_as: str) -> None:
        if not rest:
            if shown_as:  # "**" from here matches the folder itself: glob lists no "" for it
                found.add(shown_as)
            return
        head, tail = rest[0], rest[1:]
        if head == "**":
            walk(folder, tail, shown_as)  # no folder at all
            for e in entries(folder):
                if not shown(e.name, ""):
                    continue
                if e.is_dir(follow_symlinks=False):
                    walk(e.path, rest, os.path.join(shown_as, e.name))
                elif not tail:
                    found.add(os.path.join(shown_as, e.name))
        elif glob.has_magic(head):
            for e in entries(folder):
                if shown(e.name, head) and fnmatch.fnmatchcase(e.name, head) and (not tail or e.is_dir()):
                    walk(e.path, tail, os.path.join(shown_as, e.name))
        else:
            nxt = os.path.join(folder, head)
            if (os.path.isdir(nxt) if tail else os.path.lexists(nxt)):
                walk(nxt, tail, os.path.join(shown_as, head))

    walk(base, parts[fixed:], os.sep.join(parts[:fixed]) or (os.sep if pattern.startswith(os.sep) else ""))
    return sorted(found)


def collect_inputs(args_paths: list[str], recursive: bool, notes: list[str] | None = None) -> list[tuple[str, str | None]]:
    """``[(path, error_or_None)]`` in order, duplicates removed. Entries with an error are
    PATH arguments (or parts of folders) that yield nothing to score: a glob matching nothing,
    a folder without images, an unreadable folder, a broken or looping link; a path that does
    not exist is passed on and reported by the image reader. What was passed over on purpose
    (subfolders without --recursive, non-image files, a folder reached twice through links)
    is summarised in ``notes``."""
    out: list[tuple[str, str | None]] = []
    seen: set[str] = set()
    folders: set[tuple[int, int]] = set()  # every PATH's: a folder given again, or reached by a link, once
    notes = notes if notes is not None else []

    def add(path: str, error: str | None = None) -> None:
        k = path_key(path)
        if k not in seen:
            seen.add(k)
            out.append((path, error))

    def expand(arg: str, from_glob: bool, passed: list[str] | None = None) -> bool:
        """Add what ``arg`` stands for; whether it stood for anything (rows, or a folder scanned
        already). ``passed``: a pattern's folders with subfolders not searched, to note after it."""
        p = os.path.expanduser(arg)
        if os.path.isdir(p):
            st = os.stat(p)
            if (st.st_dev, st.st_ino) in folders:
                if not from_glob:
                    notes.append(f"{p}: scanned already (an earlier PATH, or a link to it), not repeated")
                return True
            scan = list_folder(p, recursive, folders)
            for f in scan.files:
                add(f)
            for f, err in scan.problems:
                add(f, err)
            found = bool(scan.files or scan.problems)
            if not found and not from_glob:
                hint = " (it has subfolders: add --recursive)" if scan.subfolders_skipped else ""
                add(p, f"folder contains no image files{hint}")
            elif scan.subfolders_skipped and (found or passed is None):
                notes.append(f"{p}: {len(scan.subfolders_skipped)} subfolder(s) not searched "
                             f"(e.g. {scan.subfolders_skipped[0]}): add --recursive to score their images")
            elif scan.subfolders_skipped:
                # a folder a pattern matched (the levels above the photos 'photos/**' covers) is no
                # input of its own: its subfolders are noted unless the pattern reached them
                passed.extend(scan.subfolders_skipped)
            if scan.not_images:
                notes.append(f"{p}: {len(scan.not_images)} file(s) without an image extension skipped "
                             f"(e.g. {scan.not_images[0]}); name a file to have it attempted anyway")
            if scan.hidden:
                notes.append(f"{p}: {len(scan.hidden)} hidden file(s) or folder(s) skipped (e.g. {scan.hidden[0]}); "
                             "name a file to have it attempted anyway")
            if scan.links_seen:
                notes.append(f"{p}: {len(scan.links_seen)} folder(s) scanned already (an earlier PATH, or a link "
                             f"to it), not repeated (e.g. {scan.links_seen[0]})")
            return found or not from_glob
        if not os.path.lexists(p) and not from_glob and glob.has_magic(p):
            matches = expand_glob(p)
            passed: list[str] = []
            if not any([expand(m, True, passed) for m in matches]):
                folders_only = not recursive and any(os.path.isdir(m) for m in matches)
                add(arg, "no files match this pattern" if not matches else "no image files match this pattern"
                    + (" (it matches folders: --recursive scores what is in their subfolders)" if folders_only else ""))
            else:
                reached = {path_key(m) for m in matches}
                missed = [d for d in passed if path_key(d) not in reached]
                if missed:
                    notes.append(f"{arg}: {len(missed)} subfolder(s) of the folders it matches not searched "
                                 f"(e.g. {missed[0]}): add --recursive to score their images")
            return True
        if os.path.islink(p) and not os.path.exists(p):
            add(p, "broken symbolic link or link loop")
        else:
            add(p)  # a file (always attempted) or a missing path (an error row)
        return True

    for a in args_paths:
        expand(a, False)
    return out
