"""Result files are written whole or not at all, with ordinary permissions."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
from PIL import Image

from datamodules.atomic_files import PROCESS_UMASK, atomic_write, write_json, write_png


def test_atomic_write_replaces_whole_files_with_plain_permissions(tmp_path):
    path = write_json(tmp_path / "metrics.json", {"auroc": 0.9})
    assert json.loads(path.read_text()) == {"auroc": 0.9}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~PROCESS_UMASK  # not mkstemp's 0600
    with pytest.raises(RuntimeError):
        atomic_write(path, lambda f: (f.write('{"auroc": 0.'), (_ for _ in ()).throw(RuntimeError("killed"))))
    assert json.loads(path.read_text()) == {"auroc": 0.9}  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left behind


def test_json_of_numpy_values_and_png_round_trip(tmp_path):
    path = write_json(tmp_path / "a" / "values.json", {"n": np.int64(3), "x": np.array([0.5, 1.0])})
    assert json.loads(path.read_text()) == {"n": 3, "x": [0.5, 1.0]}
    image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    with Image.open(write_png(tmp_path / "image.png", image)) as png:
        np.testing.assert_array_equal(np.asarray(png), image)


def test_lightning_modules_reexports_the_same_functions():
    from lightning_modules.utils import atomic_io
    from datamodules import atomic_files

    assert (atomic_io.atomic_write, atomic_io.write_json, atomic_io.write_png) == \
        (atomic_files.atomic_write, atomic_files.write_json, atomic_files.write_png)
