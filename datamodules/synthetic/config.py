"""What to generate and where it lives: ``SyntheticConfig``, the cache folder, and writing the
dataset to disk in PAD-UFES-20's files.

A config names one dataset: its folder under the cache root (``$DERMATTN_CACHE``, else
``$XDG_CACHE_HOME/dermattn``, else ``~/.cache/dermattn``) is keyed by the generator version and
a hash of the config, so a cached copy is reused only if it is exactly what the config asks
for. ``ensure_generated`` writes it once (a few seconds) and is safe when several processes
start at the same time; ``generate`` writes ``metadata.csv`` (PAD-UFES-20's 26 columns, in
order), ``images/`` (PNGs, a few RGBA as in PAD), ``masks/`` and ``generator.json``.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from datamodules.sources import pad_ufes20
from datamodules.synthetic.metadata import sample_metadata
from datamodules.synthetic.render import draw_lesion, photograph

#: Part of the cache folder's name: bump it whenever a change to ``metadata`` or ``render`` changes
#: what a config generates, or caches made by the old code would be read as the new data.
GENERATOR_VERSION = 2
#: The folder of lesion masks beside ``images/`` (PAD-UFES-20 itself has none).
MASK_FOLDER = "masks"


@dataclass(frozen=True)
class SyntheticConfig:
    """One synthetic dataset. Every field goes into the cache folder's name (as a hash), so adding
    a field renames every folder and each cache is generated afresh."""

    n_patients: int = 1200
    seed: int = 0
    #: Photos are squares of a random side in ``[min_size, max_size]`` pixels, as PAD's vary.
    min_size: int = 112
    max_size: int = 176
    #: Share of photos saved as RGBA PNGs, a quirk of PAD the image loader must handle.
    rgba_fraction: float = 0.03


def default_cache_root() -> Path:
    root = os.environ.get("DERMATTN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "dermattn"
    )
    return Path(root)


def dataset_dir(config: SyntheticConfig, cache_root: Optional[Path] = None) -> Path:
    key = hashlib.sha1(json.dumps(asdict(config), sort_keys=True).encode()).hexdigest()[:10]
    return Path(cache_root or default_cache_root()) / f"synthetic-v{GENERATOR_VERSION}-{key}"


def ensure_generated(config: SyntheticConfig, cache_root: Optional[Path] = None) -> Path:
    """Generate the dataset unless the cache has it; safe when several processes race (DDP)."""
    target = dataset_dir(config, cache_root)
    if (target / "metadata.csv").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "metadata.csv").is_file():
            staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
            try:
                generate(config, staging)
                if target.exists():  # a half-written folder from an interrupted older version
                    shutil.rmtree(target)
                os.rename(staging, target)  # atomic: readers see all of it or nothing
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return target


def generate(config: SyntheticConfig, out_dir: Path) -> None:
    """Write ``metadata.csv``, ``images/``, ``masks/`` and ``generator.json`` for ``config`` into
    ``out_dir``. Each lesion and each photo has its own random generator seeded from
    ``config.seed``, so the output does not depend on anything but the config."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / MASK_FOLDER).mkdir(parents=True, exist_ok=True)
    rows = sample_metadata(config)
    lesions: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for i, row in enumerate(rows):
        lesion_id = row["lesion_id"]
        # A lesion is drawn once; each of its photos re-frames it. Rows come lesion by lesion, so
        # only the current lesion's drawing is kept.
        if lesion_id not in lesions:
            lesions = {lesion_id: draw_lesion(row, np.random.default_rng([config.seed, 1, int(lesion_id)]))}
        rng = np.random.default_rng([config.seed, 2, i])
        image, mask = photograph(*lesions[lesion_id], rng, config)
        name = row["img_id"]
        if rng.random() < config.rgba_fraction:
            alpha = np.full(image.shape[:2] + (1,), 255, np.uint8)
            picture = Image.fromarray(np.concatenate([image, alpha], axis=2), "RGBA")
        else:
            picture = Image.fromarray(image)
        picture.save(out_dir / "images" / name, compress_level=1)  # speed over file size
        Image.fromarray(mask * 255).save(out_dir / MASK_FOLDER / name, compress_level=1)
    with open(out_dir / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=pad_ufes20.COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row[k] for k in pad_ufes20.COLUMNS})
    (out_dir / "generator.json").write_text(
        json.dumps({"version": GENERATOR_VERSION, **asdict(config), "images": len(rows)}, indent=2)
    )
