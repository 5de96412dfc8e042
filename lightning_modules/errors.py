"""Errors a run reports to the user as one line, and the advice that goes with them.

A failure a resume can cross (a crash mid-training) carries the resume command as its *advice*
(:func:`advise`); the entry point (``datamodules/entry_point.py``) prints it after the error's
own line, so the last thing the user reads is what to do. A failure a resume cannot fix (a
diverged run) carries none.
"""

from __future__ import annotations

from datamodules.entry_point import UserFacing, advice_of, advise

__all__ = ["NonFiniteError", "advice_of", "advise"]


class NonFiniteError(UserFacing, RuntimeError):
    """The run diverged: a loss, the model's outputs or its weights are NaN or infinite. Resuming
    would diverge again (the resumed run is the same run); the message says where it happened."""
