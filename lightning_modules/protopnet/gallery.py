"""A gallery of ProtoPNet prototypes from the pictures ``PrototypePush`` wrote: for each class, its
closest prototypes, each shown on its source image (receptive field and top-activation boxes) and
as a heat map. Used by ``make figures`` and ``notebooks/prototypes.ipynb``.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from lightning_modules.utils.plots import figure_to_array  # noqa: F401  (its import chooses the backend)

#: The pictures shown per prototype, as named by ``PrototypePush`` (``prototypeNNNN_<kind>.png``).
KINDS = ("boxes", "heatmap")


def push_folders(run_dir: str | Path) -> list[Path]:
    """The run's push folders (``prototypes/epochNNN/`` with a ``prototypes.json``), oldest first."""
    return sorted(p.parent for p in Path(run_dir).glob("prototypes/epoch*/prototypes.json"))


def push_folder(run_dir: str | Path, record: list[dict] | None = None) -> Path:
    """The push folder whose record is ``record`` (the push a checkpoint holds: the tested model's
    prototypes), else the newest one."""
    folders = push_folders(run_dir)
    if not folders:
        raise FileNotFoundError(f"{run_dir}: no prototypes/epoch*/prototypes.json (not a ProtoPNet run, or no "
                                "push yet)")
    for folder in reversed(folders):
        if record is not None and json.loads((folder / "prototypes.json").read_text())["prototypes"] == record:
            return folder
    return folders[-1]


def chosen_prototypes(record: list[dict], per_class: int) -> dict[str, list[dict]]:
    """Per class (in record order), its ``per_class`` prototypes nearest to their source patch."""
    by_class: dict[str, list[dict]] = {}
    for entry in record:
        if "image_id" in entry:  # a prototype the push found no patch for has no pictures
            by_class.setdefault(entry["class"], []).append(entry)
    return {name: sorted(entries, key=lambda e: (e["distance"], e["prototype"]))[:per_class]
            for name, entries in by_class.items()}  # fmt: skip


def prototype_gallery(folder: str | Path, per_class: int = 2, cell: float = 1.5):
    """The figure (a pyplot ``Figure``): one row per class, ``per_class`` prototypes x ``KINDS``."""
    folder = Path(folder)
    chosen = chosen_prototypes(json.loads((folder / "prototypes.json").read_text())["prototypes"], per_class)
    if not chosen:
        raise ValueError(f"{folder}: the push recorded no prototype with a source image")
    columns = per_class * len(KINDS)
    fig, axes = plt.subplots(len(chosen), columns, figsize=(cell * columns, cell * len(chosen) + 0.3), squeeze=False)
    for ax_row, (name, entries) in zip(axes, chosen.items()):
        for k, entry in enumerate(entries):
            for i, kind in enumerate(KINDS):
                ax = ax_row[k * len(KINDS) + i]
                ax.imshow(np.asarray(plt.imread(folder / f"prototype{entry['prototype']:04d}_{kind}.png")))
                if i == 0:
                    ax.set_title(f"p{entry['prototype']}  d={entry['distance']:.3f}", fontsize=7, loc="left")
        ax_row[0].set_ylabel(name, fontsize=9)
        for ax in ax_row:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.spines[:].set_visible(False)
    fig.suptitle(f"push after {folder.name}: receptive field (yellow), top 5 % activation (cyan)", fontsize=8)
    fig.tight_layout()
    return fig
