"""Retrieval and nearest-neighbour evaluation of embeddings (ABE-M and any embedding model)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch


def neighbour_distances(queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    return torch.cdist(queries.float(), bank.float())


def recall_at_k(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    groups: Optional[torch.Tensor] = None,
    ks: Sequence[int] = (1, 2, 4, 8),
) -> dict[int, float]:
    """Recall@K within one set: each item queries all the others, except itself and (when
    ``groups`` is given) every item of its own patient/lesion group, which would be a
    near-duplicate; a hit is a same-class item among the K nearest. Queries with nothing left to
    retrieve are skipped."""
    n = embeddings.shape[0]
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
    out = {}
    for k in ks:
        kk = min(k, k_max)
        out[k] = float(hits[valid, :kk].any(dim=1).float().mean())
    return out


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
