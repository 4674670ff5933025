"""Text a spreadsheet would run: a CSV cell starting ``=``, ``+``, ``-``, ``@`` (or a tab or a
carriage return before one) is read as a formula when the table is opened (CSV injection).
Names that come from files (a photo's, a model file's categories) can start so."""
from __future__ import annotations

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""How a cell a spreadsheet would run as a formula begins."""


def looks_like_formula(text: str) -> bool:
    return text[:1] in FORMULA_START
