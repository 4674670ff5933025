"""Package attributes imported on first use (PEP 562), so a package's ``__init__`` stays
cheap: ``contentiqa models`` and cached-ONNX scoring must not pay for torch or pandas."""
from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, table: dict[str, str], namespace: dict[str, Any]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``table`` maps each public name to the
    submodule defining it; a name is imported when first asked for and then kept in
    ``namespace`` (the package's globals), so later lookups are plain."""

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        try:
            imported = importlib.import_module(f"{package}.{module}")
        except ModuleNotFoundError as exc:  # an optional dependency: the one line naming its extra
            from .extras import as_extra_missing

            missing = as_extra_missing(exc, f"{package}.{name}")
            if missing is None:
                raise
            raise missing from None
        value = getattr(imported, name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(table))

    return __getattr__, __dir__
