"""Trainable attention next to Grad-CAM of the same network, on the same images, with the lesion
outline drawn over every panel: the picture that shows whether a model looks at the lesion.

One row per image (the image, then each attention map, then Grad-CAM of the predicted class on the
grid of the finest attention map), captioned with the true and the predicted class. Used by
``make figures`` and ``notebooks/attention_maps.ipynb``.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import torch
from torch.utils.data import default_collate

from lightning_modules.analysis.gradcam import grad_cam
from lightning_modules.callbacks.attention_maps import balanced_indices
from lightning_modules.contracts import AttentionNet, GradCamNet, PredictsClasses
from lightning_modules.utils.images import denormalise, normalise, overlay, upsample
from lightning_modules.utils.plots import figure_to_array  # noqa: F401  (its import chooses the backend)


#: Colour of the lesion outline (white reads on the jet overlays and on skin alike).
OUTLINE = "white"


def balanced_batch(datamodule, split: str = "test", per_class: int = 1) -> dict:
    """The first ``per_class`` images of every class of ``split`` (``test`` or ``val``: the
    evaluation transform), collated, with their lesion masks when the data has them."""
    stages = {"test": "test", "val": "validate"}
    if split not in stages:
        raise ValueError(f"split must be one of {sorted(stages)}, got {split!r}")
    records = datamodule.records(split)
    datamodule.hparams.load_masks = all(r.mask_path is not None for r in records)
    datamodule.setup(stages[split])
    dataset = datamodule.datasets[split]
    return default_collate([dataset[i] for i in balanced_indices([r.label for r in records], per_class)])


@torch.no_grad()
def attention_maps(module, batch: dict) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """``{map name: (B, h, w)}`` for every attention map and Grad-CAM (when the network names its
    target), and the class probabilities (``None`` for a module that gives none)."""
    net = module.net
    if not isinstance(net, AttentionNet):
        raise TypeError(f"{type(net).__name__} has no attention maps to draw")
    module.eval()
    image, meta = batch["image"].to(module.device), batch["meta"].to(module.device)
    maps = dict(net.forward_with_attention(image, meta)[1])
    if isinstance(net, GradCamNet):
        layer, select = net.gradcam_target
        maps["Grad-CAM"] = grad_cam(module, layer, image, meta, select=select)
    probs = module.class_probabilities(image, meta) if isinstance(module, PredictsClasses) else None
    return {name: m.float().cpu() for name, m in maps.items()}, None if probs is None else probs.cpu()


def attention_figure(module, batch: dict, class_names: Sequence[str], mean: Sequence[float], std: Sequence[float],
                     alpha: float = 0.5, cell: float = 1.9):
    """The figure (a pyplot ``Figure``: shown inline in a notebook; ``figure_to_array`` for a file)."""
    maps, probs = attention_maps(module, batch)
    pictures = denormalise(batch["image"], mean, std)
    size = pictures.shape[1:3]
    masks = batch.get("mask")
    columns = ["image", *maps]
    rows = len(pictures)
    fig, axes = plt.subplots(rows, len(columns), figsize=(cell * len(columns), cell * rows), squeeze=False)
    for row in range(rows):
        panels = [pictures[row]] + [overlay(pictures[row:row + 1], normalise(upsample(m[row:row + 1], size)).numpy(),
                                            alpha)[0] for m in maps.values()]  # fmt: skip
        for ax, panel in zip(axes[row], panels):
            ax.imshow(panel)
            if masks is not None:
                ax.contour(masks[row].numpy(), levels=[0.5], colors=OUTLINE, linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
        label = class_names[int(batch["label"][row])]
        if probs is not None:
            p = probs[row]
            label += f" -> {class_names[int(p.argmax())]} ({float(p.max()):.2f})"
        axes[row][0].set_ylabel(label, fontsize=8)
    for ax, name in zip(axes[0], columns):
        ax.set_title(name, fontsize=9)
    fig.tight_layout()
    return fig
