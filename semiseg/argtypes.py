"""Argument types for the command line: numbers checked when the command line is parsed, so a bad value is one
line naming its option (``argument --iterations: must be an integer >= 1, got '0'``) before any work starts.

Torch-free and imported by every CLI module (``semiseg.cli`` and the stage plugins)."""
from __future__ import annotations

import argparse
from typing import Callable


def int_at_least(low: int) -> Callable[[str], int]:
    """An ``int`` option that must be >= ``low`` (1 for counts, 0 for seeds)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got '{text}'") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got '{text}'")
        return value

    parse.__name__ = f"int >= {low}"
    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)


def float_in(low: float, high: float | None = None, low_open: bool = False) -> Callable[[str], float]:
    """A finite ``float`` option in [low, high] ((low, high] with ``low_open``)."""
    bounds = f"{'(' if low_open else '['}{low:g}, {'inf)' if high is None else f'{high:g}]'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number in {bounds}, got '{text}'") from None
        ok = value == value and (value > low if low_open else value >= low) and (high is None or value <= high)
        if not ok:
            raise argparse.ArgumentTypeError(f"must be a number in {bounds}, got '{text}'")
        return value

    parse.__name__ = f"number in {bounds}"
    return parse


positive_float = float_in(0.0, None, low_open=True)
unit_fraction = float_in(0.0, 1.0, low_open=True)  # (0, 1]: a window step, a share of cases


def fold(text: str) -> str:
    """``all`` or a fold number (checked against ``--k`` once both are known: semiseg.run.check_fold)."""
    if text == "all" or (text.isdigit() and str(int(text)) == text):
        return text
    raise argparse.ArgumentTypeError(f"must be a fold number 0..k-1 or 'all', got '{text}'")
