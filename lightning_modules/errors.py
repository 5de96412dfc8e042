"""Errors a run reports to the user as one line, and the advice that goes with them.

A failure a resume can cross (a crash mid-training) carries the resume command as its *advice*
(:func:`advise`); the entry point prints it after the error's own line, so the last thing the
user reads is what to do. A failure a resume cannot fix (a diverged run) carries none.
"""

from __future__ import annotations

from typing import Optional

_ADVICE = "dermattn_advice"


class NonFiniteError(RuntimeError):
    """The run diverged: a loss, the model's outputs or its weights are NaN or infinite. Resuming
    would diverge again (the resumed run is the same run); the message says where it happened."""


def advise(error: BaseException, advice: str) -> None:
    """Attach what the user can do about ``error`` (one line), for the entry point to print last."""
    setattr(error, _ADVICE, advice)


def advice_of(error: BaseException) -> Optional[str]:
    return getattr(error, _ADVICE, None)
