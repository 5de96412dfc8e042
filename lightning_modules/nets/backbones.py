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


def normalisation_mismatch(name: str, mean: Sequence[float], std: Sequence[float]) -> Optional[str]:
    """Why ``mean``/``std`` differ from those ``name``'s pretrained weights were trained with
    (e.g. 0.5/0.5 for ``inception_v3.tf_in1k`` or ViTs, not ImageNet's), or ``None``."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None or cfg.mean is None or cfg.std is None:
        return None
    close = lambda a, b: len(a) == len(b) and all(abs(x - y) < 1e-3 for x, y in zip(a, b))  # noqa: E731
    if close(cfg.mean, mean) and close(cfg.std, std):
        return None
    return (f"backbone {name} was pretrained on images normalised with mean {list(cfg.mean)}, std {list(cfg.std)}, "
            f"but the data is normalised with mean {list(mean)}, std {list(std)}; to match, set "
            f"--data.normalize_mean='{list(cfg.mean)}' --data.normalize_std='{list(cfg.std)}'")


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
