"""The data at a glance: the first few images of every class with their lesion mask outline. Used
by ``make figures`` and ``notebooks/synthetic_lesions.ipynb``."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt

from datamodules.dataset import load_mask, load_rgb
from lightning_modules.utils.plots import figure_to_array  # noqa: F401  (its import chooses the backend)


def lesion_examples(records, class_names: Sequence[str], per_class: int = 4, cell: float = 1.5):
    """The first ``per_class`` records of every class, in record order, each with its mask outline
    (cyan) when it has one: a pyplot ``Figure`` (inline in a notebook; ``figure_to_array`` for a file)."""
    fig, axes = plt.subplots(len(class_names), per_class, figsize=(cell * per_class, cell * len(class_names)),
                             squeeze=False)  # fmt: skip
    for k, name in enumerate(class_names):
        for ax, record in zip(axes[k], [r for r in records if r.label == k][:per_class]):
            ax.imshow(load_rgb(Path(record.image_path)))
            if record.mask_path is not None:
                ax.contour(load_mask(Path(record.mask_path)), levels=[0.5], colors="cyan", linewidths=0.8)
        for ax in axes[k]:
            ax.set_xticks([])
            ax.set_yticks([])
        axes[k][0].set_ylabel(name)
    fig.tight_layout()
    return fig
