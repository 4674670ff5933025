"""Checks of a config dataclass's fields for what YAML files and ``--set`` give wrongly.

``hflip: "false"`` (quoted in YAML) is a non-empty string, so truthy: the option would silently
be on. Every dataclass field annotated ``bool`` must hold a real boolean.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any


def check_booleans(config: Any, what: str) -> None:
    """ValueError naming the first ``bool`` field of the dataclass ``config`` that holds
    something else (``what``: how the message names the options, e.g. "training option")."""
    for f in fields(config):
        value = getattr(config, f.name)
        if f.type in ("bool", bool) and not isinstance(value, bool):
            raise ValueError(f"{what} {f.name} is true or false, not {value!r}")
