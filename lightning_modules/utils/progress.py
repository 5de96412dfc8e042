"""Progress bars for long work that runs inside a training epoch (the ProtoPNet push), shown
below Lightning's own bar and only when the trainer shows one (``enable_progress_bar``), on the
process of global rank 0."""

from __future__ import annotations

import sys
from typing import Iterable, Optional, TypeVar

from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

T = TypeVar("T")


def shows_progress(trainer) -> bool:
    bar = getattr(trainer, "progress_bar_callback", None) if trainer is not None else None
    return bar is not None and bool(getattr(bar, "is_enabled", False)) and trainer.is_global_zero


def progress(trainer, iterable: Iterable[T], desc: str, total: Optional[int] = None) -> Iterable[T]:
    """``iterable``, drawn as a bar labelled ``desc`` when ``trainer`` shows progress bars."""
    if not shows_progress(trainer):
        return iterable
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    # Lightning's own bar class (console or notebook, as its bars are), on stdout as they are;
    # tqdm stacks a bar below those already open.
    return Tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, file=sys.stdout)
