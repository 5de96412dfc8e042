"""Result files and checkpoints are written whole or not at all, with ordinary permissions."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from lightning_modules.utils.atomic_io import PROCESS_UMASK, AtomicCheckpointIO, atomic_write, write_json


def test_atomic_write_replaces_whole_files_with_plain_permissions(tmp_path):
    path = write_json(tmp_path / "metrics.json", {"auroc": 0.9})
    assert json.loads(path.read_text()) == {"auroc": 0.9}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~PROCESS_UMASK  # not mkstemp's 0600
    with pytest.raises(RuntimeError):
        atomic_write(path, lambda f: (f.write('{"auroc": 0.'), (_ for _ in ()).throw(RuntimeError("killed"))))
    assert json.loads(path.read_text()) == {"auroc": 0.9}  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left behind


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
