"""Checks of a config dataclass's fields for what YAML files and ``--set`` give wrongly.

``hflip: "false"`` (quoted in YAML) is a non-empty string, so truthy: the option would silently
be on. Every dataclass field annotated ``bool`` must hold a real boolean. YAML reads ``1e-4``
(no dot) as text, and ``heads: 2.0`` is a float: a number field takes the number such text
spells, a whole float where it wants an int, and refuses anything else when read, not as a
TypeError deep in a layer after a long caching pass.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import fields
from typing import Any, Collection


def check_numbers(config: Any, what: str, at_least_one: Collection[str] = ()) -> None:
    """Each field of the dataclass ``config`` annotated ``int`` or ``float`` (or ``... | None``,
    left None) as a finite number of that kind, text spelling one converted, a whole float made
    an int; ValueError naming the first that is not (``what``: e.g. "training option";
    ``at_least_one``: int fields whose message says so)."""
    for f in fields(config):
        kind = f.type.replace(" | None", "") if isinstance(f.type, str) else None
        if kind not in ("int", "float"):
            continue
        value = getattr(config, f.name)
        if value is None and f.type.endswith("| None"):
            continue
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = None
            if number is not None and (kind == "float" or number.is_integer()):
                value = int(number) if kind == "int" else number
                setattr(config, f.name, value)
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or (kind == "int" and not float(value).is_integer()):
            said = "a whole number" + (" of at least 1" if f.name in at_least_one else "") if kind == "int" else "a number"
            raise ValueError(f"{what} {f.name} must be {said}, not {value!r}")
        if kind == "int" and not isinstance(value, int):
            setattr(config, f.name, int(value))  # 448.0 from a YAML or JSON file


def check_booleans(config: Any, what: str) -> None:
    """ValueError naming the first ``bool`` field of the dataclass ``config`` that holds
    something else (``what``: how the message names the options, e.g. "training option")."""
    for f in fields(config):
        value = getattr(config, f.name)
        if f.type in ("bool", bool) and not isinstance(value, bool):
            raise ValueError(f"{what} {f.name} is true or false, not {value!r}")
