"""Figures for dashboards and run folders, returned as RGB uint8 arrays (logger-agnostic).

Importing this module selects matplotlib's headless Agg backend (training never opens a window)
unless a backend was chosen through ``MPLBACKEND``, as Jupyter's kernel does for its inline
figures: a notebook that imports the library keeps showing its pictures.
"""

from __future__ import annotations

import os
from typing import Sequence

import matplotlib

if not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def figure_to_array(fig) -> np.ndarray:
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


def confusion_matrix_figure(matrix: np.ndarray, class_names: Sequence[str], title: str = "") -> np.ndarray:
    """Rows: true class, columns: predicted; colour by row-normalised recall, text = counts."""
    matrix = np.asarray(matrix, dtype=float)
    recall = matrix / np.clip(matrix.sum(axis=1, keepdims=True), 1, None)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * k, 0.8 + 0.6 * k), dpi=100)
    ax.imshow(recall, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center",
                    color="white" if recall[i, j] > 0.5 else "black", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return figure_to_array(fig)


def roc_figure(curves: Sequence[tuple[np.ndarray, np.ndarray]], aucs: Sequence[float],
               class_names: Sequence[str], title: str = "") -> np.ndarray:
    """One-vs-rest ROC curve per class."""
    fig, ax = plt.subplots(figsize=(4.5, 4.0), dpi=100)
    for (fpr, tpr), auc, name in zip(curves, aucs, class_names):
        ax.plot(fpr, tpr, label=f"{name} ({auc:.3f})", linewidth=1.2)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return figure_to_array(fig)
