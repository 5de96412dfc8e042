"""ProtoPNet push (prototype projection): replace every prototype by its nearest latent patch.

    p_j <- argmin over patches z of training images (of p_j's class, if class-specific) |z - p_j|^2

The reference code (https://github.com/cfchen-duke/ProtoPNet/blob/81bf2b70cb60e4f36e25e8be386eb616b7459321/push.py)
runs this as a Python loop over prototypes inside the loop over batches, with
numpy ``argmin`` per prototype (``brute_force_search`` below does the same, for tests;
``experiments/bench_push.py`` times a stand-in for its whole per-batch work). ``PushSearch`` keeps the running minimum of all prototypes at once with a few tensor
ops per batch, on the device the distances live on, and its state is a plain dict of tensors, so
it can be merged across DDP processes and stored in a checkpoint.

Two other departures from the reference: ties are broken deterministically by the smallest
(image index, row, column), so every process and every batch order gives the same answer; and a
prototype for which no eligible image was seen keeps its vector (the reference overwrites it with
zeros).

Usage (``net.eval()``, no augmentation, every training image once, ``index`` = dataset index):

    search = PushSearch.for_net(net)
    for batch in loader:
        out = net(batch["image"])
        search.update(out.distances, out.features, batch["label"], batch["index"])
    search.reduce(lightning_module.all_gather)  # under DDP
    unchanged = search.project(net)
"""

from __future__ import annotations

import warnings
from typing import Callable, Iterable, NamedTuple, Optional, Union

import numpy as np
import torch
from torch import nn

_NO_KEY = torch.iinfo(torch.int64).max


class PushResult(NamedTuple):
    distance: torch.Tensor  # (m,) float32 squared distance of the best patch; +inf if none
    image_index: torch.Tensor  # (m,) int64 dataset index of its image; -1 if none
    h: torch.Tensor  # (m,) int64 row of the patch in the feature map; -1 if none
    w: torch.Tensor  # (m,) int64 column; -1 if none
    latent: torch.Tensor  # (m, D) float32 the patch's latent vector (zeros if none)

    @property
    def found(self) -> torch.Tensor:
        return self.image_index >= 0


def _precedes(d1, i1, h1, w1, d2, i2, h2, w2) -> torch.Tensor:
    """(d1, i1, h1, w1) < (d2, i2, h2, w2) lexicographically: a total order, so merging in any
    order gives the same result."""
    return (d1 < d2) | (
        (d1 == d2) & ((i1 < i2) | ((i1 == i2) & ((h1 < h2) | ((h1 == h2) & (w1 < w2)))))
    )


class PushSearch:
    """Running nearest-patch search for every prototype (see module doc)."""

    def __init__(
        self,
        prototype_class_identity: torch.Tensor,
        class_specific: bool = True,
        prototype_dim: Optional[int] = None,
        keep_source_maps: bool = False,
    ):
        """``prototype_class_identity`` (m, K): prototype j may take patches from images of the
        classes where row j is nonzero. ``prototype_dim`` allocates the latent store up front;
        pass it under DDP, where a process may see no batch (otherwise it is set by the first
        ``update``). ``keep_source_maps`` also keeps each prototype's source image's whole latent
        map (``source_maps``, (m, D, H, W)), so that its activation map can be computed without
        another pass through the network."""
        identity = torch.as_tensor(prototype_class_identity).detach().float()
        if identity.dim() != 2:
            raise ValueError(f"prototype_class_identity must be (m, K), got {tuple(identity.shape)}")
        self.prototype_class_identity = identity
        self.class_specific = bool(class_specific)
        self._per_class = self._prototypes_per_class()
        m = identity.shape[0]
        self.distance = torch.full((m,), float("inf"))
        self.image_index = torch.full((m,), -1, dtype=torch.long)
        self.h = torch.full((m,), -1, dtype=torch.long)
        self.w = torch.full((m,), -1, dtype=torch.long)
        self.latent = torch.zeros(m, prototype_dim or 0)
        self.keep_source_maps = keep_source_maps
        self.source_maps: Optional[torch.Tensor] = None

    @classmethod
    def for_net(cls, net: nn.Module, class_specific: Optional[bool] = None, keep_source_maps: bool = False) -> "PushSearch":
        """A search for ``net``'s prototypes (``class_specific`` defaults to the net's)."""
        specific = net.class_specific if class_specific is None else class_specific
        return cls(net.prototype_class_identity, specific, net.prototype_dim, keep_source_maps)

    @property
    def num_prototypes(self) -> int:
        return self.prototype_class_identity.shape[0]

    def to(self, device: Union[str, torch.device]) -> "PushSearch":
        """Move the state (``update`` does it by itself; call it before ``reduce`` on a process
        that saw no batch, since NCCL gathers CUDA tensors only)."""
        for name in ("prototype_class_identity", "distance", "image_index", "h", "w", "latent"):
            setattr(self, name, getattr(self, name).to(device))
        if self.source_maps is not None:
            self.source_maps = self.source_maps.to(device)
        if self._per_class is not None:
            self._per_class = self._per_class.to(device)
        return self

    def ensure_map_shape(self, height: int, width: int) -> None:
        """Allocate the source maps for (H, W) grids (a process that saw no batch must, before
        ``reduce``: every process packs the same shapes)."""
        if self.keep_source_maps and self.source_maps is None:
            self.source_maps = torch.zeros(self.num_prototypes, self.latent.shape[1], height, width,
                                           device=self.latent.device)  # fmt: skip

    def _ensure_dim(self, dim: int) -> None:
        if self.latent.shape[1] == 0 and dim > 0:
            self.latent = torch.zeros(self.num_prototypes, dim, device=self.latent.device)
        elif self.latent.shape[1] != dim:
            raise ValueError(f"latent dimension {dim} does not match the search's {self.latent.shape[1]}")

    @torch.no_grad()
    def update(
        self,
        distances: torch.Tensor,
        features: torch.Tensor,
        labels: torch.Tensor,
        image_indices: torch.Tensor,
    ) -> None:
        """Fold one batch in: ``distances`` (B, m, H, W), ``features`` z (B, D, H, W), ``labels``
        (B,), ``image_indices`` (B,) dataset indices (what ``result().image_index`` reports)."""
        if distances.dim() != 4 or distances.shape[1] != self.num_prototypes:
            raise ValueError(f"distances must be (B, {self.num_prototypes}, H, W), got {tuple(distances.shape)}")
        batch, m, height, width = distances.shape
        if features.dim() != 4 or features.shape[0] != batch or features.shape[2:] != distances.shape[2:]:
            raise ValueError(f"features {tuple(features.shape)} do not match distances {tuple(distances.shape)}")
        device = distances.device
        self.to(device)
        self._ensure_dim(features.shape[1])
        labels = labels.to(device).long().reshape(batch)
        image_indices = image_indices.to(device).long().reshape(batch)
        per_class = self._per_class
        if self.class_specific and per_class is not None:
            best, b, cell = self._class_specific_candidates(distances, labels, image_indices, per_class)
        else:
            best, b, cell = self._all_candidates(distances, labels, image_indices)
        h, w = cell // width, cell % width
        images = image_indices[b]

        improved = torch.isfinite(best) & _precedes(
            best, images, h, w, self.distance, self.image_index, self.h, self.w
        )
        latent = features.detach().float()[b, :, h, w]  # (m, D)
        self.distance = torch.where(improved, best, self.distance)
        self.image_index = torch.where(improved, images, self.image_index)
        self.h = torch.where(improved, h, self.h)
        self.w = torch.where(improved, w, self.w)
        self.latent = torch.where(improved[:, None], latent, self.latent)
        if self.keep_source_maps:
            self.ensure_map_shape(height, width)
            changed = torch.nonzero(improved).flatten()
            self.source_maps[changed] = features.detach().float()[b[changed]]

    def _prototypes_per_class(self) -> Optional[torch.Tensor]:
        """(K, P) prototype ids of each class when every prototype has one class and every class
        the same number of prototypes (ProtoPNet's layout); ``None`` otherwise."""
        identity = self.prototype_class_identity > 0
        if not bool((identity.sum(dim=1) == 1).all()):
            return None
        counts = identity.sum(dim=0)
        if not bool((counts == counts[0]).all()) or int(counts[0]) == 0:
            return None
        return identity.t().nonzero()[:, 1].view(identity.shape[1], int(counts[0]))

    def _class_specific_candidates(self, distances, labels, image_indices, per_class):
        """Best candidate of this batch per prototype, looking only at each image's own class's
        prototypes: (B, P, H*W) instead of (B, m, H*W), the saving that matters with many classes.
        Returns ``(distance (m,) [+inf: no eligible image], batch position (m,), cell (m,))``."""
        batch, m = distances.shape[:2]
        flat = distances.detach().flatten(2)
        protos = per_class[labels]  # (B, P)
        chosen = flat.gather(1, protos[:, :, None].expand(-1, -1, flat.shape[2])).float()
        values, cells = chosen.min(dim=2)  # (B, P): first minimal cell on ties
        proto, values, cells = protos.flatten(), values.flatten(), cells.flatten()
        positions = torch.arange(batch, device=distances.device).repeat_interleave(protos.shape[1])
        best = torch.full((m,), float("inf"), device=distances.device).scatter_reduce(
            0, proto, values, reduce="amin", include_self=True
        )
        # Among the images holding the minimum, the smallest dataset index (see _all_candidates).
        at_best = values == best[proto]
        key = torch.where(at_best, image_indices[positions], _NO_KEY)
        smallest = torch.full((m,), _NO_KEY, device=distances.device).scatter_reduce(
            0, proto, key, reduce="amin", include_self=True
        )
        winner = at_best & (key == smallest[proto])
        entry = torch.zeros(m, dtype=torch.long, device=distances.device)
        entry[proto[winner]] = torch.nonzero(winner).flatten()
        return best, positions[entry], cells[entry]

    def _all_candidates(self, distances, labels, image_indices):
        """Best candidate per prototype over every (image, prototype) pair of the batch."""
        m = distances.shape[1]
        # Per image and prototype, the closest cell: one pass over (B, m, H*W). ``min(dim)``
        # returns the first minimal index, i.e. the smallest cell (row-major) on ties.
        per_image, cell = distances.detach().float().flatten(2).min(dim=2)  # (B, m)
        if self.class_specific:
            eligible = self.prototype_class_identity[:, labels].t() > 0  # (B, m)
            per_image = per_image.masked_fill(~eligible, float("inf"))
        best = per_image.amin(dim=0)  # (m,)
        # Among the images holding the minimum, the smallest dataset index: a choice that does
        # not depend on the order of the images in the batch or of the batches.
        candidates = torch.where(per_image == best, image_indices[:, None], _NO_KEY)
        b = candidates.argmin(dim=0)  # (m,) batch position
        return best, b, cell[b, torch.arange(m, device=distances.device)]

    @torch.no_grad()
    def merge(self, other: Union["PushSearch", dict]) -> None:
        """Keep, per prototype, the better of this search and ``other`` (a search or a state)."""
        state = other.state_dict() if isinstance(other, PushSearch) else other
        device = self.distance.device
        d, i, h, w = (state[k].to(device) for k in ("distance", "image_index", "h", "w"))
        latent = state["latent"].to(device).float()
        if d.shape != self.distance.shape:
            raise ValueError(f"cannot merge a search over {d.shape[0]} prototypes into one over {self.num_prototypes}")
        if latent.shape[1] == 0:  # the other search never saw a batch
            return
        self._ensure_dim(latent.shape[1])
        improved = (i >= 0) & _precedes(d, i, h, w, self.distance, self.image_index, self.h, self.w)
        self.distance = torch.where(improved, d.float(), self.distance)
        self.image_index = torch.where(improved, i.long(), self.image_index)
        self.h = torch.where(improved, h.long(), self.h)
        self.w = torch.where(improved, w.long(), self.w)
        self.latent = torch.where(improved[:, None], latent, self.latent)
        if self.keep_source_maps and state.get("source_maps") is not None:
            maps = state["source_maps"].to(device).float()
            self.ensure_map_shape(*maps.shape[-2:])
            changed = torch.nonzero(improved).flatten()
            self.source_maps[changed] = maps[changed]

    @torch.no_grad()
    def reduce(self, all_gather_fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Combine the searches of all processes into the global minimum, on every process.

        ``all_gather_fn(t)`` returns the tensors of all processes stacked on a new first dim,
        or ``t`` itself in a single process (``LightningModule.all_gather`` does both). The state
        travels as one float64 (m, 4 + D) tensor (exact for float32 distances and latents and
        for indices below 2^53); every process must have the same ``prototype_dim``.
        """
        if self.latent.shape[1] == 0:
            raise RuntimeError("reduce() needs the latent dimension: pass prototype_dim to PushSearch")
        parts = [torch.stack([self.distance.double(), self.image_index.double(), self.h.double(), self.w.double()], 1),
                 self.latent.double()]  # fmt: skip
        if self.keep_source_maps:
            if self.source_maps is None:
                raise RuntimeError("reduce() with source maps needs their grid: call ensure_map_shape(H, W)")
            parts.append(self.source_maps.double().flatten(1))
        packed = torch.cat(parts, dim=1)
        dim = self.latent.shape[1]
        gathered = all_gather_fn(packed)
        if gathered.dim() == packed.dim():
            gathered = gathered[None]
        for part in gathered:
            part = part.to(self.distance.device)
            self.merge(
                {
                    "distance": part[:, 0].float(),
                    "image_index": part[:, 1].long(),
                    "h": part[:, 2].long(),
                    "w": part[:, 3].long(),
                    "latent": part[:, 4:4 + dim].float(),
                    "source_maps": part[:, 4 + dim:].float().view_as(self.source_maps) if self.keep_source_maps else None,
                }
            )

    def activation_maps(self, prototypes: torch.Tensor) -> torch.Tensor:
        """(m, H, W) squared distances from each of ``prototypes`` (m, D, 1, 1) to every cell of its
        source image's latent map (the same expansion as ``ProtoPNet.distances``)."""
        if self.source_maps is None:
            raise RuntimeError("the search kept no source maps (keep_source_maps=False, or no batch was seen)")
        z = self.source_maps
        p = prototypes.detach().float().to(z.device).flatten(1)[:, :, None, None]  # (m, D, 1, 1)
        return ((z * z).sum(1) - 2 * (z * p).sum(1) + (p * p).sum(1)).clamp(min=0)

    def result(self) -> PushResult:
        return PushResult(
            self.distance.clone(), self.image_index.clone(), self.h.clone(), self.w.clone(), self.latent.clone()
        )

    @torch.no_grad()
    def project(self, net: nn.Module) -> list[int]:
        """Copy the found latent vectors into ``net.prototype_vectors``; return the prototypes
        left unchanged because no eligible image was seen (also warned about)."""
        vectors = net.prototype_vectors
        found = self.image_index >= 0
        if found.any():
            if self.latent.shape[1] != vectors.shape[1]:
                raise ValueError(f"latent dimension {self.latent.shape[1]} != prototype dimension {vectors.shape[1]}")
            new = self.latent.to(vectors)[:, :, None, None].expand_as(vectors)
            vectors.copy_(torch.where(found.to(vectors.device)[:, None, None, None], new, vectors))
        unchanged = torch.nonzero(~found).flatten().tolist()
        if unchanged:
            warnings.warn(
                f"push: no eligible training image for prototypes {unchanged}; they keep their vectors",
                stacklevel=2,
            )
        return unchanged

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Plain tensors on the CPU, for checkpoints."""
        return {
            "distance": self.distance.cpu().clone(),
            "image_index": self.image_index.cpu().clone(),
            "h": self.h.cpu().clone(),
            "w": self.w.cpu().clone(),
            "latent": self.latent.cpu().clone(),
            "prototype_class_identity": self.prototype_class_identity.cpu().clone(),
            "class_specific": torch.tensor(self.class_specific),
            **({"source_maps": self.source_maps.cpu().clone()} if self.source_maps is not None else {}),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        identity = state["prototype_class_identity"].float()
        if identity.shape != self.prototype_class_identity.shape:
            raise ValueError(
                f"state is for {tuple(identity.shape)} prototypes x classes, "
                f"not {tuple(self.prototype_class_identity.shape)}"
            )
        device = self.distance.device
        self.prototype_class_identity = identity.to(device)
        self._per_class = self._prototypes_per_class()
        self.class_specific = bool(state["class_specific"])
        self.distance = state["distance"].float().to(device)
        self.image_index = state["image_index"].long().to(device)
        self.h = state["h"].long().to(device)
        self.w = state["w"].long().to(device)
        self.latent = state["latent"].float().to(device)


def brute_force_search(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
    prototype_class_identity: torch.Tensor,
    class_specific: bool = True,
) -> PushResult:
    """The reference algorithm: for each batch ``(distances, features, labels, image_indices)``,
    for each prototype, numpy ``argmin`` over the eligible images; replace on a strict
    improvement. Slow; for tests only."""
    identity = np.asarray(torch.as_tensor(prototype_class_identity).detach().cpu())
    m = identity.shape[0]
    best = np.full(m, np.inf, dtype=np.float32)
    image = np.full(m, -1, dtype=np.int64)
    rows_h = np.full(m, -1, dtype=np.int64)
    cols_w = np.full(m, -1, dtype=np.int64)
    latent: Optional[np.ndarray] = None
    for distances, features, labels, indices in batches:
        d = distances.detach().float().cpu().numpy()
        z = features.detach().float().cpu().numpy()
        labels = np.asarray(labels.cpu()).reshape(-1)
        indices = np.asarray(indices.cpu()).reshape(-1)
        if latent is None:
            latent = np.zeros((m, z.shape[1]), dtype=np.float32)
        for j in range(m):
            if class_specific:
                rows = np.flatnonzero(identity[j, labels] > 0)
                if rows.size == 0:
                    continue
            else:
                rows = np.arange(d.shape[0])
            dj = d[rows, j]
            if dj.min() < best[j]:
                r, h, w = np.unravel_index(np.argmin(dj), dj.shape)
                best[j] = dj[r, h, w]
                image[j], rows_h[j], cols_w[j] = indices[rows[r]], h, w
                latent[j] = z[rows[r], :, h, w]
    if latent is None:
        latent = np.zeros((m, 0), dtype=np.float32)
    return PushResult(
        torch.from_numpy(best), torch.from_numpy(image), torch.from_numpy(rows_h), torch.from_numpy(cols_w),
        torch.from_numpy(latent),
    )
