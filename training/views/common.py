"""Formatting shared by the training pages: percentages with one decimal, AP differences
in percentage points. Formatted on the server so the page shows exactly what the tests
compare with the database (no second rounding rule in JavaScript)."""

from __future__ import annotations


def pct(value: float | None) -> str:
    """``0.8765`` → ``"87.7 %"``; ``None`` → ``"—"``."""
    return "—" if value is None else f"{100 * value:.1f} %"


def pct_number(value: float | None) -> str:
    """``0.8765`` → ``"87.7"`` (table cells, where the header carries the unit)."""
    return "—" if value is None else f"{100 * value:.1f}"


def pp(diff: float | None) -> str:
    """A difference of two APs in percentage points with its sign: ``"+3.2"``."""
    if diff is None:
        return "—"
    text = f"{100 * diff:+.1f}"
    return "±0.0" if text in ("+0.0", "-0.0") else text


def diff_class(diff: float | None) -> str:
    """CSS class of a difference: better, worse, or the same at the shown precision."""
    if diff is None or pp(diff) == "±0.0":
        return "same"
    return "better" if diff > 0 else "worse"


def gib(value: int | None) -> str:
    return "—" if value is None else f"{value / 2**30:.1f} GiB"
