"""Split a scoring job over N machines (e.g. a SLURM array): shard ``I/N`` takes the inputs
whose stable hash falls in ``I``.

The hash is SHA-1 of the input's resolved path (``os.path.abspath``, case-folded where the
file system is), so:

- every input belongs to exactly one shard, and the shards' outputs concatenate to one table
  with every input once;
- the assignment of a file does not depend on the other files (a folder that gains or loses
  files between the start of task 0 and task 9 still puts each file in one shard) nor on the
  order of the PATH arguments, nor on the machine, as long as the files are reached by the
  same path (same mount point) from the same working directory;
- shards are balanced in expectation (a hash, not a position: a few inputs may leave a
  shard empty).
"""
from __future__ import annotations

import hashlib
import os
import re
from typing import Callable, Iterable, Sequence, TypeVar

T = TypeVar("T")

_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(spec: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``; ValueError (saying why) otherwise."""
    m = _SPEC.match(str(spec))
    if not m:
        raise ValueError(f"shard must be I/N with whole numbers, e.g. 0/4 (got {spec!r})")
    index, count = int(m.group(1)), int(m.group(2))
    if count < 1:
        raise ValueError(f"shard {spec!r}: the number of shards N must be at least 1")
    if index >= count:
        raise ValueError(f"shard {spec!r}: the index I counts from 0 and must be below N={count}")
    return index, count


def resolved_key(path: str) -> str:
    """The string an input is hashed by: its absolute, normalised path."""
    return os.path.normcase(os.path.abspath(os.path.expanduser(str(path))))


def shard_of(path: str, count: int) -> int:
    """The shard (0..count-1) that ``path`` belongs to."""
    digest = hashlib.sha1(resolved_key(path).encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % count


def select_shard(items: Sequence[T] | Iterable[T], index: int, count: int, key: Callable[[T], str] = str) -> list[T]:
    """The items of shard ``index`` of ``count``, in their original order."""
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} out of range for {count} shards")
    if count == 1:
        return list(items)
    return [it for it in items if shard_of(key(it), count) == index]
