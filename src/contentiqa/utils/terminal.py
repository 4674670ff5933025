"""Names from the file system shown on a terminal.

A photo folder is someone else's data: a file named ``a\\x1b[2J.jpg`` must not clear the screen
(or set the window title) when its row is printed, a newline in a name must not forge a line of
the table, and a right-to-left override must not make ``x\\u202egpj.exe`` read as ``xexe.jpg``.
Written outputs (CSV, JSON, HTML) keep names as they are: they are data, escaped by their format.
"""
from __future__ import annotations

_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """``text`` with every character Python calls non-printable (controls, format marks such as
    bidirectional overrides, undecodable bytes kept as surrogates, separators but the space)
    written as its escape, as ``repr`` writes it; printable text is returned as is."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _SHORT.get(c) or repr(c)[1:-1] for c in text)
