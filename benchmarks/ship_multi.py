"""Kept for the commands recorded in the shipped `*_clive-biq2021` model cards and checkpoints:
the same as ``python benchmarks/ship.py`` (which ships a row of any experiment config)."""
from __future__ import annotations

from ship import main

if __name__ == "__main__":
    main()
