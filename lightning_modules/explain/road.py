"""ROAD, RemOve And Debias (Rong et al. 2022), from pytorch-grad-cam.

Deletion replaces pixels by a fixed substrate, and the pattern of replaced pixels can itself move
the prediction (the inputs leave the training distribution, and the mask's shape leaks which
pixels were chosen). ROAD instead fills each removed pixel by a noisy linear interpolation of its
neighbours (``NoisyLinearImputer``: a sparse linear system per image), then asks the model again:

    MoRF  remove the most relevant fraction f of the pixels   the class probability should drop
    LeRF  remove the least relevant fraction f                it should stay
    score (LeRF - MoRF) / 2, averaged over the fractions      (the library's ``ROADCombined``)

The library thresholds a map at a percentile, so a map with ties (a ReLU's zeros, a uniform
map) would remove more or fewer pixels than asked, or all of them (a system with no known pixel
to interpolate from). It is handed the map's rank order instead (ties broken at random, as for
deletion), which removes exactly the asked fraction. The imputer's noise is drawn from a seeded
generator. Cost: one sparse solve per image, fraction and order, which is why ``make explain``
scores ROAD on a subset of the images by default.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

from lightning_modules.explain.deletion import relevance_ranks
from lightning_modules.explain.target import ClassScores

#: Fractions of the pixels removed (the ROAD paper's curves run from 10 % to 90 %).
FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)


def road(model: ClassScores, image: torch.Tensor, meta: Optional[torch.Tensor], classes: torch.Tensor,
         maps: torch.Tensor, generator: torch.Generator, fractions: Sequence[float] = FRACTIONS,
         seed: int = 0) -> dict[str, torch.Tensor]:
    """``{"morf": (B, F), "lerf": (B, F)}``: the probability of ``classes`` with the most / least
    relevant ``fractions`` of the pixels removed and imputed."""
    b, _, h, w = image.shape
    ranks = relevance_ranks(maps, (h, w), generator).float()
    relevance = (1.0 - ranks / (h * w)).view(b, h, w).numpy()  # distinct values, most relevant highest
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in classes]
    scores: dict[str, list] = {"morf": [], "lerf": []}
    with torch.random.fork_rng(devices=[]), model.bound(meta):
        torch.manual_seed(seed)  # the imputer's noise
        for fraction in fractions:
            percentile = 100.0 * (1.0 - fraction)  # pixels below it are kept (MoRF), above it (LeRF)
            for key, metric in (("morf", ROADMostRelevantFirst), ("lerf", ROADLeastRelevantFirst)):
                kept = metric(percentile=percentile)(image, relevance, targets, model, return_diff=False)
                scores[key].append(torch.as_tensor(kept, dtype=torch.float32).view(b))
    return {key: torch.stack(values, dim=1) for key, values in scores.items()}
