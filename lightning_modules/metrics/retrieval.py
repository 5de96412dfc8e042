"""Retrieval and nearest-neighbour evaluation of embeddings (ABE-M and any embedding model)."""

from __future__ import annotations

import warnings
from typing import Optional, Sequence

import torch


def neighbour_distances(queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    return torch.cdist(queries.float(), bank.float())


def recall_at_k(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    groups: Optional[torch.Tensor] = None,
    ks: Sequence[int] = (1, 2, 4, 8),
    name: str = "the set",
) -> dict[int, float]:
    """Recall@K within one set: each item queries all the others, except itself and (when
    ``groups`` is given) every item of its own patient/lesion group, which would be a
    near-duplicate; a hit is a same-class item among the K nearest. Queries with nothing left to
    retrieve are skipped. A K that needs more images than the set has (K + 1: a query and K others)
    is NaN, with a warning naming ``name``: on fewer it would be Recall@(n - 1) under another name."""
    n = embeddings.shape[0]
    too_few = [k for k in ks if k > n - 1]
    if too_few:
        warnings.warn(f"Recall@K for K in {too_few} needs more than K images, and {name} has {n}: "
                      "reported as NaN", stacklevel=2)  # fmt: skip
    d = neighbour_distances(embeddings, embeddings)
    excluded = torch.eye(n, dtype=torch.bool, device=d.device)
    if groups is not None:
        excluded |= groups[:, None] == groups[None, :]
    d = d.masked_fill(excluded, float("inf"))
    valid = (~excluded).any(dim=1)
    k_max = min(max(ks), n - 1) if n > 1 else 0
    if k_max == 0 or not valid.any():
        return {k: float("nan") for k in ks}
    nearest = d.topk(k_max, dim=1, largest=False).indices  # (n, k_max)
    reachable = torch.gather(~excluded, 1, nearest)  # excluded items never count, even if near
    hits = (labels[nearest] == labels[:, None]) & reachable
    return {k: float("nan") if k in too_few else float(hits[valid, :k].any(dim=1).float().mean()) for k in ks}


def knn_probabilities(
    queries: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, num_classes: int, k: int = 10
) -> torch.Tensor:
    """Class probabilities of each query from its ``k`` nearest bank items: votes weighted by
    ``1 / (distance + 1e-6)``, normalised (continuous scores, so AUROC is meaningful)."""
    k = min(k, bank.shape[0])
    d, idx = neighbour_distances(queries, bank).topk(k, dim=1, largest=False)
    weights = 1.0 / (d + 1e-6)
    votes = torch.zeros(queries.shape[0], num_classes, device=queries.device)
    votes.scatter_add_(1, bank_labels[idx], weights)
    return votes / votes.sum(dim=1, keepdim=True)
