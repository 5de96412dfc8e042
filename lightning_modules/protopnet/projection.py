"""The push itself: project every prototype onto its nearest training patch, then optimise the
last layer alone. ``ProtoPNetModule.push_prototypes`` runs these in order; the callback only
decides when and draws the result.

1. one pass over the un-augmented training set: every prototype's nearest latent patch among
   images of its own class, all prototypes at once (:class:`~lightning_modules.protopnet.push.PushSearch`),
   the running minima reduced across processes under DDP;
2. projection: each prototype becomes that patch;
3. last-layer-only optimisation (convex): the network below the last layer is now fixed, so the
   training images' similarity vectors are computed once and the last layer is fitted on them with
   the run's last-layer optimiser (Adam), the classification loss + L1 on wrong-class connections.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
from torch import nn

from lightning_modules.protopnet.push import PushSearch
from lightning_modules.training.losses import last_layer_l1

AllGather = Callable[[torch.Tensor], torch.Tensor]


def broadcast_buffers_from_rank0(net: nn.Module) -> None:
    """DDP broadcasts buffers (BatchNorm statistics) from rank 0 at the start of every training
    forward, after which each rank's step updated its own copy. The push runs the bare network, so
    it syncs them itself: every rank must compute the same features, or a patch found on rank 1 is
    not at distance 0 in rank 0's checkpoint."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        for buffer in net.buffers():
            torch.distributed.broadcast(buffer.data, src=0)


@torch.no_grad()
def search_nearest_patches(net: nn.Module, batches: Iterable[dict], device: torch.device,
                           all_gather: Optional[AllGather] = None, keep_source_maps: bool = False) -> PushSearch:
    """Every prototype's nearest eligible training patch (reduced across processes when
    ``all_gather`` is given); with ``keep_source_maps``, also its source image's latent map."""
    search = PushSearch.for_net(net, keep_source_maps=keep_source_maps).to(device)
    for batch in batches:
        out = net(batch["image"].to(device))
        search.update(out.distances, out.features, batch["label"].to(device), batch["index"].to(device))
    if all_gather is not None:
        if keep_source_maps:  # a process that saw no batch allocates the grid the others saw
            local = torch.tensor(search.source_maps.shape[-2:] if search.source_maps is not None else (0, 0),
                                 device=device)  # fmt: skip
            height, width = all_gather(local).view(-1, 2).amax(dim=0).tolist()
            search.ensure_map_shape(int(height), int(width))
        search.reduce(all_gather)
    return search


@torch.no_grad()
def similarity_vectors(net: nn.Module, batches: Iterable[dict], device: torch.device,
                       all_gather: Optional[AllGather] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(similarities (N, m), labels (N,))`` of every training image once, in dataset-index order
    (the same order on every process, so every process fits an identical last layer)."""
    sims, labels, index = [], [], []
    for batch in batches:
        out = net(batch["image"].to(device))
        sims.append(net.distance_to_similarity(out.min_distances))
        labels.append(batch["label"].to(device))
        index.append(batch["index"].to(device))
    sims, labels, index = torch.cat(sims), torch.cat(labels), torch.cat(index)
    if all_gather is not None:
        sims, labels, index = (all_gather(t).flatten(0, 1) for t in (sims, labels, index))
    order = torch.argsort(index)
    keep = torch.ones_like(order, dtype=torch.bool)
    keep[1:] = index[order][1:] != index[order][:-1]  # DistributedSampler's padded repeats
    return sims[order][keep], labels[order][keep]


def fit_last_layer(layer: nn.Linear, similarities: torch.Tensor, labels: torch.Tensor, criterion: nn.Module,
                   l1_weight: float, prototype_class_identity: Optional[torch.Tensor], epochs: int,
                   optimizer: torch.optim.Optimizer, batch_size: int, seed: int,
                   progress: Callable[[Iterable[int]], Iterable[int]] = iter) -> float:
    """``optimizer`` (over ``layer``'s parameters, kept for the whole run: its state carries over
    from one push to the next) on ``criterion(layer(similarities)) + l1_weight * L1`` (wrong-class
    weights when ``prototype_class_identity`` is given, every weight otherwise) for ``epochs``
    shuffled passes (shuffled by ``seed``); the final batch loss. The layer is left frozen.
    ``progress`` wraps the passes (a progress bar)."""
    layer.weight.requires_grad_(True)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    loss = torch.zeros(())
    with torch.enable_grad():
        for _ in progress(range(epochs)):
            order = torch.randperm(len(labels), generator=generator).to(labels.device)
            for chunk in order.split(batch_size):
                logits = layer(similarities[chunk])
                loss = criterion(logits, labels[chunk]) + l1_weight * last_layer_l1(layer.weight, prototype_class_identity)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    layer.weight.requires_grad_(False)
    return float(loss.detach())
