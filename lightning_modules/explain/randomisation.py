"""Sanity check: cascading model-parameter randomisation (Adebayo et al. 2018).

A map that explains the model must change when the model does. The network's parameters are
randomised block by block from the top (the output layer) down, cumulatively, and after each
block every map is recomputed (for the class the trained model predicted) and compared with the
trained model's map of the same image:

- Spearman rank correlation of the two maps' cell values (ties ranked by their average);
- SSIM of the two maps, each scaled to [0, 1] and resized to the image (Wang et al. 2004:
  Gaussian window, sigma 1.5, the mean over the pixels a whole window covers; torchmetrics'
  SSIM map averaged as scikit-image's ``structural_similarity`` averages it).

Values near 1 after the network is randomised mean the map does not depend on what the network
learned. Blocks: the network's parametrised children, with a backbone (a timm feature extractor),
a ``Sequential`` or a ``ModuleList`` split into its children; ordered top-down by when they run
in a forward pass (last first); parameters owned by the network itself (ProtoPNet's prototypes,
soft attention's learned query) form one block just below the output layer. Randomising draws
each parameter tensor anew from a normal distribution with its trained mean and standard
deviation (so activations keep their scale while the learned structure is gone); running
statistics are kept.

The other test of Adebayo et al., data randomisation (retraining on permuted labels), is out of
scope for trainable attention: it needs a second training run per model; it is not run here.
"""

from __future__ import annotations

import copy
from typing import Callable, Iterator

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure

from lightning_modules.utils.images import normalise, upsample

DATA_RANDOMISATION = ("out of scope: data randomisation (Adebayo et al. 2018) retrains the model on permuted labels, "
                      "a second training run per model; only the model-parameter cascade is run")  # fmt: skip
OWN_PARAMETERS = "parameters"  # the block of parameters the network holds itself


def _expandable(module: nn.Module) -> bool:
    return isinstance(module, (nn.Sequential, nn.ModuleList)) or hasattr(module, "feature_info")


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _candidate_blocks(net: nn.Module) -> list[tuple[str, nn.Module]]:
    blocks = []
    for name, child in net.named_children():
        if not _has_parameters(child):
            continue
        if _expandable(child):
            blocks += [(f"{name}.{n}", c) for n, c in child.named_children() if _has_parameters(c)]
        else:
            blocks.append((name, child))
    return blocks


def cascade_blocks(net: nn.Module, run: Callable[[nn.Module], object]) -> list[tuple[str, list[nn.Parameter]]]:
    """``[(block name, its parameters)]`` from the top down; ``run(net)`` does one forward pass
    (the order blocks run in decides the order)."""
    blocks = _candidate_blocks(net)
    first_call: dict[str, int] = {}

    def recorder(name: str):
        def record(*_) -> None:
            first_call.setdefault(name, len(first_call))
        return record

    handles = [module.register_forward_hook(recorder(name)) for name, module in blocks]
    try:
        with torch.no_grad():
            run(net)
    finally:
        for handle in handles:
            handle.remove()
    ran = sorted((name for name, _ in blocks if name in first_call), key=first_call.get)
    modules = dict(blocks)
    cascade = [(name, list(modules[name].parameters())) for name in reversed(ran)]
    own = list(net.parameters(recurse=False))
    if own:
        cascade.insert(1 if cascade else 0, (OWN_PARAMETERS, own))
    return cascade


@torch.no_grad()
def randomise_(parameters: list[nn.Parameter], generator: torch.Generator) -> None:
    """Each tensor redrawn from N(its mean, its std) (a single value: N(0, |value|))."""
    for p in parameters:
        if p.numel() > 1:
            mean, std = p.mean(), p.std()
        else:
            mean, std = torch.zeros((), dtype=p.dtype), p.abs().reshape(())
        noise = torch.randn(p.shape, generator=generator, dtype=p.dtype)
        p.copy_((mean + std * noise.to(p.device)).to(p.dtype))


def cascade(net: nn.Module, run: Callable[[nn.Module], object], seed: int = 0) -> Iterator[tuple[str, nn.Module]]:
    """A copy of ``net`` with its blocks randomised cumulatively from the top: yields ``(name of
    the block just randomised, the copy)`` after each block (the same copy, changed in place)."""
    randomised = copy.deepcopy(net).eval()
    generator = torch.Generator().manual_seed(seed)
    for name, parameters in cascade_blocks(randomised, run):
        randomise_(parameters, generator)
        yield name, randomised


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-map Spearman rank correlation of two ``(B, h, w)`` batches (NaN where a map is constant)."""
    ra = rankdata(a.flatten(1).double().cpu().numpy(), axis=1)
    rb = rankdata(b.flatten(1).double().cpu().numpy(), axis=1)
    ra, rb = ra - ra.mean(axis=1, keepdims=True), rb - rb.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (ra * rb).sum(1) / np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
    return torch.from_numpy(rho).float()


SSIM_SIGMA = 1.5
SSIM_BORDER = int(3.5 * SSIM_SIGMA + 0.5)  # the Gaussian window's radius (truncated at 3.5 sigma)


def ssim(a: torch.Tensor, b: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Per-map SSIM of two ``(B, h, w)`` batches, each map scaled to [0, 1] and resized to ``size``
    (at least 2 window radii + 1 pixels a side)."""
    x = normalise(upsample(a.float().cpu(), size))[:, None].double()
    y = normalise(upsample(b.float().cpu(), size))[:, None].double()
    _, full = structural_similarity_index_measure(x, y, data_range=1.0, sigma=SSIM_SIGMA, reduction="none",
                                                  return_full_image=True)  # fmt: skip
    r = SSIM_BORDER
    return full[..., r:-r, r:-r].mean(dim=(1, 2, 3)).float()
