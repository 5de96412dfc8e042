"""Checkpoints written whole or not at all. The atomic writes themselves live in
``datamodules/atomic_files.py`` (both floors use them) and are re-exported here."""

from __future__ import annotations

from typing import Any, Optional

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from datamodules.atomic_files import atomic_write, write_json, write_png

__all__ = ["AtomicCheckpointIO", "atomic_write", "write_json", "write_png"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints (``last.ckpt`` above all) written whole or not at all, with :func:`atomic_write`.

    Lightning's own save stages the file in ``$TMPDIR`` and moves it; when ``$TMPDIR`` is on
    another filesystem than the run folder (common on clusters) the move is a copy over the old
    checkpoint, and an interruption leaves it truncated. Remote URLs keep Lightning's path.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_write(path, lambda f: torch.save(checkpoint, f), mode="wb")
