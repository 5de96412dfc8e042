"""Argument checks that name the option and the values it allows, run when a class is built.

A bad value should be refused before a run folder exists and before any data are read, in words
that name the command-line option (``--data.batch_size``), rather than surface later from deep
inside a library (an albumentations validation error for ``image_size=0``, a DataLoader error
for ``batch_size=-1`` once training starts). Both floors use these helpers.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Sequence


class InvalidOption(ValueError):
    """An argument outside the values its option allows."""


def _refuse(option: str, value: Any, allowed: str) -> InvalidOption:
    return InvalidOption(f"{option}={value!r}: must be {allowed}")


def check_int(option: str, value: Any, minimum: Optional[int] = None, maximum: Optional[int] = None,
              optional: bool = False) -> None:
    """``value`` is an integer in ``[minimum, maximum]`` (or ``None`` when ``optional``)."""
    if value is None and optional:
        return
    bounds = " and ".join(b for b in (f">= {minimum}" if minimum is not None else "",
                                      f"<= {maximum}" if maximum is not None else "") if b)
    allowed = f"an integer{' ' + bounds if bounds else ''}{' (or null)' if optional else ''}"
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise _refuse(option, value, allowed)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise _refuse(option, value, allowed)


def check_number(option: str, value: Any, minimum: Optional[float] = None, above: Optional[float] = None,
                 maximum: Optional[float] = None) -> None:
    """``value`` is a finite number ``>= minimum``, ``> above`` and ``<= maximum`` (those given)."""
    bounds = [f">= {minimum}" if minimum is not None else "", f"> {above}" if above is not None else "",
              f"<= {maximum}" if maximum is not None else ""]  # fmt: skip
    allowed = "a number" + (" " + " and ".join(b for b in bounds if b) if any(bounds) else "")
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        raise _refuse(option, value, allowed)
    if ((minimum is not None and value < minimum) or (above is not None and value <= above)
            or (maximum is not None and value > maximum)):
        raise _refuse(option, value, allowed)


def check_choice(option: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise _refuse(option, value, "one of " + ", ".join(repr(c) for c in choices))
