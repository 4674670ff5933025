"""YAML files read as data with one-line errors, and a key given twice refused: plain PyYAML
keeps the last of two ``train:`` sections without a word. Experiment configs and training
configs both read through here."""
from __future__ import annotations

import functools
import os
from typing import Any


def parse_yaml(text: str, source: str | os.PathLike = "<yaml>") -> Any:
    """``text`` parsed with a safe loader that refuses duplicate keys; ValueError on one line,
    ``SOURCE:LINE: problem``, for anything it cannot read."""
    import yaml  # here: importing this module stays cheap

    try:
        data = yaml.load(text, Loader=_unique_key_loader())
    except yaml.MarkedYAMLError as exc:
        # PyYAML's own message spans several lines with the offending text quoted.
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "cannot be parsed"
        if not isinstance(exc, _DuplicateKey):
            problem = f"invalid YAML: {problem}"
        raise ValueError(f"{source}:{mark.line + 1}: {problem}" if mark else f"{source}: {problem}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{source}: invalid YAML: {' '.join(str(exc).split())}") from None
    if _expands_past(data, MAX_VALUES):
        raise ValueError(f"{source}: expands to more than {MAX_VALUES:,} values (aliases of aliases, "
                         "a 'billion laughs'): not a config")
    return data


def read_config_text(path: str | os.PathLike) -> str:
    """A config file's text, or one line saying why not (``FileNotFoundError`` or ``ValueError``):
    a folder or a binary file given as a config is a usage slip, not a traceback."""
    try:
        return open(path, encoding="utf-8").read()
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a folder, not a config file") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a UTF-8 text file") from None


MAX_VALUES = 100_000
"""Values a YAML file may expand to, each alias counted where it is used: a config has hundreds;
a few lines of aliases of aliases expand exponentially, and whatever walks the result (expanding
``${VAR}``) would take the machine's memory."""


def _expands_past(data: Any, limit: int) -> bool:
    """Whether walking ``data`` as a tree (shared parts once per use) meets more than ``limit``
    values; stops as soon as it does."""
    stack, seen = [data], 0
    while stack:
        seen += 1
        if seen > limit:
            return True
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


class _DuplicateKey(Exception):
    """Marker base: a mapping repeats a key (the message is ours, not a parse error)."""


@functools.lru_cache(maxsize=None)
def _unique_key_loader() -> type:
    """A ``yaml.SafeLoader`` that refuses a key given twice in one mapping: plain PyYAML keeps
    the last one, so a second ``train:`` section would silently replace the first."""
    import yaml  # here: importing this module stays cheap

    class DuplicateKeyError(_DuplicateKey, yaml.constructor.ConstructorError):
        pass

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):  # type: ignore[no-untyped-def]
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # '<<: *base' then overriding one of its keys is what merge keys are for
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # unhashable: PyYAML's own error follows
                if first is not None:
                    raise DuplicateKeyError(None, None, f"duplicate key {key!r} (first on line {first + 1})",
                                            key_node.start_mark)
                seen[key] = key_node.start_mark.line
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader
