"""Checkpoints are written whole or not at all (the atomic writes themselves: test_atomic_files.py)."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.utils.atomic_io import AtomicCheckpointIO


def test_checkpoint_io_is_atomic_and_loads_weights_only(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 1}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 1

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("interrupted mid-save")

    with pytest.raises(RuntimeError, match="interrupted"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 2, "bad": Unpicklable()}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]
