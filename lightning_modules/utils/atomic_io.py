"""Checkpoints written whole or not at all. The atomic writes themselves live in
``datamodules/atomic_files.py`` (both floors use them) and are re-exported here."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from datamodules.atomic_files import DiskFullError, atomic_write, write_json, write_png

__all__ = ["AtomicCheckpointIO", "DiskFullError", "atomic_write", "intact_checkpoints", "write_json", "write_png"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints (``last.ckpt`` above all) written whole or not at all, with :func:`atomic_write`.

    Lightning's own save stages the file in ``$TMPDIR`` and moves it; when ``$TMPDIR`` is on
    another filesystem than the run folder (common on clusters) the move is a copy over the old
    checkpoint, and an interruption leaves it truncated. Remote URLs keep Lightning's path.
    A checkpoint that does not fit raises :class:`DiskFullError` naming it, the space it needed,
    and the checkpoints beside it, which the failed write left intact.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        try:
            atomic_write(path, lambda f: torch.save(checkpoint, f), mode="wb", size=tensor_bytes(checkpoint))
        except DiskFullError as err:
            err.strerror += "; " + intact_checkpoints(Path(path).parent)
            raise


def tensor_bytes(value: Any) -> int:
    """The bytes of every tensor in ``value`` (what a checkpoint file mostly is)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def intact_checkpoints(folder: Path) -> str:
    """Which checkpoints ``folder`` holds, in words: written atomically, every one present is whole."""
    names = sorted(p.name for p in Path(folder).glob("*.ckpt"))
    return f"intact checkpoints in {folder}: {', '.join(names)}" if names else f"no checkpoint in {folder} yet"
