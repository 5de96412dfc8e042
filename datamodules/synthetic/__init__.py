"""The built-in synthetic lesion dataset, written in PAD-UFES-20's on-disk format.

A newcomer without data trains on it; tests use it. It is generated deterministically from a
seed into a cache folder on first use (a few seconds), and read back by the real PAD-UFES-20
reader, plus a lesion mask per image (``masks/``) for scoring attention maps. Photos of one lesion
are near-duplicates, which is what makes patient-grouped splits matter; SCC and ACK are drawn
alike, so only the metadata tells them apart. The rules are also in the README.

``config`` writes the files, ``metadata`` the rows, ``render`` the pictures; everything other code
uses is importable from here (``from datamodules import synthetic``).
"""

from datamodules.synthetic.config import (
    GENERATOR_VERSION,
    MASK_FOLDER,
    SyntheticConfig,
    dataset_dir,
    default_cache_root,
    ensure_generated,
    generate,
)
from datamodules.synthetic.metadata import CLASS_METADATA, CLASS_PRIOR, sample_metadata
from datamodules.synthetic.render import draw_lesion, photograph, render_lesion

__all__ = [
    "CLASS_METADATA",
    "CLASS_PRIOR",
    "GENERATOR_VERSION",
    "MASK_FOLDER",
    "SyntheticConfig",
    "dataset_dir",
    "default_cache_root",
    "draw_lesion",
    "ensure_generated",
    "generate",
    "photograph",
    "render_lesion",
    "sample_metadata",
]
