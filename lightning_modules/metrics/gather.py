"""Per-batch outputs of every process as one set: one row per dataset image.

Under DDP each process evaluates its shard, and ``DistributedSampler`` pads the last batch with
repeats so that every process gets the same number of batches; scores computed from the gathered,
de-duplicated rows are exactly what one process would report.
"""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import torch


def gather_unique_tensors(pl_module: L.LightningModule, chunks: dict[str, list[torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate per-batch tensors, gather them from every process and drop the repeats
    DistributedSampler pads with: one row per dataset ``index``, in index order. A collective
    under DDP: every rank must call it."""
    local = {k: torch.cat(v) if v else torch.empty(0) for k, v in chunks.items()}
    if pl_module.trainer.world_size > 1:
        local = {k: pl_module.all_gather(v).flatten(0, 1) for k, v in local.items()}
    index = local["index"]
    order = torch.argsort(index, stable=True)
    keep = torch.ones_like(order, dtype=torch.bool)
    keep[1:] = index[order][1:] != index[order][:-1]
    return {k: v.detach()[order[keep]] for k, v in local.items()}


def gather_unique(pl_module: L.LightningModule, chunks: dict[str, list[torch.Tensor]]) -> dict[str, np.ndarray]:
    """:func:`gather_unique_tensors` as numpy arrays."""
    return {k: v.cpu().numpy() for k, v in gather_unique_tensors(pl_module, chunks).items()}


def shard_indices(n: int, world_size: int, rank: int) -> list[int]:
    """Process ``rank``'s share of ``range(n)``, as ``DistributedSampler`` deals it: every ``world_size``-th
    index, the list padded with repeats from its start so that every process gets as many (the
    gathers need equal sizes; :func:`gather_unique` drops the repeats)."""
    per_rank = math.ceil(n / world_size)
    padded = [i % n for i in range(per_rank * world_size)] if n else []
    return padded[rank::world_size]
