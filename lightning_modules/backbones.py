"""Any timm model as a feature extractor (``features_only=True``), with its ``feature_info``.

Heads attach to feature maps by stage (``feature_info.channels()``, ``.reduction()``), never to
hard-coded layer indices, so every architecture here works with every timm backbone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import timm
import torch
from torch import nn


def create_backbone(
    name: str,
    pretrained: bool = False,
    weights_path: Optional[str] = None,
    out_indices: Optional[Sequence[int]] = None,
    in_chans: int = 3,
) -> nn.Module:
    """A timm ``features_only`` model returning a list of feature maps (shallow to deep).

    ``pretrained=True`` downloads the timm weights (needs a network); ``weights_path`` loads a
    local file instead (``.safetensors`` or a PyTorch state dict), for offline machines.
    ``out_indices`` picks stages (negative counts from the deepest); default: all.
    """
    kwargs: dict = {"features_only": True, "in_chans": in_chans}
    if out_indices is not None:
        kwargs["out_indices"] = tuple(out_indices)
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"backbone weights file {path} does not exist")
        # timm loads the file through its own pretrained path (weights_only for .pth files).
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except RuntimeError as err:
        if "features_only" in str(err):
            raise ValueError(f"timm model {name!r} does not support features_only=True") from err
        raise


def feature_channels(backbone: nn.Module) -> list[int]:
    return list(backbone.feature_info.channels())


@torch.no_grad()
def feature_shapes(backbone: nn.Module, image_size: int, in_chans: int = 3) -> list[tuple[int, int, int]]:
    """(C, H, W) of every returned map for a square input, by a dry run (sizes are not always
    ``image_size / reduction``: padding and odd sizes round differently per architecture)."""
    was_training = backbone.training
    backbone.eval()
    maps = backbone(torch.zeros(1, in_chans, image_size, image_size))
    backbone.train(was_training)
    return [tuple(m.shape[1:]) for m in maps]
