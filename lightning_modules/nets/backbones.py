"""Any timm model as a feature extractor (``features_only=True``), with its ``feature_info``.

Heads attach to feature maps by stage (``feature_info.channels()``, ``.reduction()``), never to
hard-coded layer indices, so every architecture here works with every timm backbone.

``head_features=True`` returns instead the one map timm's ``forward_features`` ends with: the last
stage followed by the architecture's head convolution where it has one (EfficientNet-B4: 448
channels at its last stage, 1,792 after the head's 1x1 convolution, BatchNorm and SiLU; ResNets
have no head convolution, so both are the same 2,048 for ResNet-50). Networks that only pool the
deepest map use it to see the features a classifier on that backbone sees.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import timm
import torch
from timm.models._features import FeatureInfo
from torch import nn


class HeadFeatures(nn.Module):
    """A whole timm model (classifier removed) returning ``[forward_features(x)]``, with a one-entry
    ``feature_info`` like a ``features_only`` model's: its final map's channels
    (``num_features``) and the last stage's reduction."""

    def __init__(self, model: nn.Module, name: str):
        super().__init__()
        stages = getattr(model, "feature_info", None)
        if not stages:
            raise ValueError(f"head_features=True needs a timm model that describes its stages; {name} does not")
        self.model = model
        self.name = name
        self.feature_info = FeatureInfo(
            [{"num_chs": int(model.num_features), "reduction": stages[-1]["reduction"], "module": "forward_features"}],
            out_indices=(0,),
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.model.forward_features(x)
        if features.dim() != 4:
            raise ValueError(f"head_features=True needs a convolutional backbone; {self.name}'s final features "
                             f"have shape {tuple(features.shape)}, not (B, C, H, W)")  # fmt: skip
        return [features]


def create_backbone(
    name: str,
    pretrained: bool = False,
    weights_path: Optional[str] = None,
    out_indices: Optional[Sequence[int]] = None,
    in_chans: int = 3,
    head_features: bool = False,
) -> nn.Module:
    """A timm ``features_only`` model returning a list of feature maps (shallow to deep).

    ``pretrained=True`` downloads the timm weights (needs a network); ``weights_path`` loads a
    local file instead (``.safetensors`` or a PyTorch state dict), for offline machines.
    ``out_indices`` picks stages (negative counts from the deepest); default: all.
    ``head_features=True``: one map, the model's final features (``HeadFeatures``).
    """
    if head_features:
        if out_indices is not None and tuple(out_indices) != (-1,):
            raise ValueError(f"head_features=True returns the final map only; out_indices={tuple(out_indices)} "
                             "cannot apply")  # fmt: skip
        kwargs: dict = {"num_classes": 0, "in_chans": in_chans}
    else:
        kwargs = {"features_only": True, "in_chans": in_chans}
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"backbone weights file {path} does not exist")
        # timm loads the file through its own pretrained path (weights_only for .pth files).
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
        return HeadFeatures(model, name) if head_features else model
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except RuntimeError as err:
        if "features_only" in str(err):
            raise ValueError(f"timm model {name!r} does not support features_only=True") from err
        raise
    return HeadFeatures(model, name) if head_features else model


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
