"""Losses: classification (cross-entropy, focal), ProtoPNet costs, and the metric-learning losses of ABE-M."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class FocalLoss(nn.Module):
    """Multi-class focal loss (Lin et al. 2017), ``-w_y (1 - p_y)^gamma log p_y``.

    With class weights, the mean is taken over the weights of the targets, exactly like
    ``F.cross_entropy(weight=...)``, so ``gamma=0`` reproduces weighted cross-entropy and the
    loss scale does not change when weights are switched on. Computed from logits with
    ``log_softmax`` (never from probabilities: a common mistake in public AttnVGG code feeds sigmoid
    outputs to a loss that applies its own).
    """

    def __init__(self, gamma: float = 2.0, weight: Optional[torch.Tensor] = None):
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
        loss = -((1 - log_p.exp()) ** self.gamma) * log_p
        if self.weight is None:
            return loss.mean()
        w = self.weight[target]
        return (w * loss).sum() / w.sum()


def classification_loss(kind: str, class_weights: Optional[list[float]], gamma: float = 2.0) -> nn.Module:
    weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
    if kind == "ce":
        return nn.CrossEntropyLoss(weight=weight)
    if kind == "focal":
        return FocalLoss(gamma=gamma, weight=weight)
    raise ValueError(f"loss must be 'ce' or 'focal', got {kind!r}")


# --------------------------------------------------------------------------------------------
# ProtoPNet costs (Chen et al. 2019). ``min_distances`` (B, m) are squared L2 distances from each
# image's closest latent patch to each prototype; ``prototype_class_identity`` (m, K) is one-hot.
# The reference code (https://github.com/cfchen-duke/ProtoPNet/blob/81bf2b70cb60e4f36e25e8be386eb616b7459321/train_and_test.py)
# takes its minima as ``max_dist - max((max_dist - d) * mask)``, which is only
# right while every distance stays below ``max_dist = D``; a masked minimum with +inf has no such
# assumption and the same gradient.
# --------------------------------------------------------------------------------------------

PROTOPNET_LOSS_WEIGHTS = {"crs_ent": 1.0, "clst": 0.8, "sep": -0.08, "l1": 1e-4}


def _own_prototypes(labels: torch.Tensor, prototype_class_identity: torch.Tensor) -> torch.Tensor:
    """(B, m) bool: prototype j belongs to the class of image b."""
    return prototype_class_identity[:, labels].t() > 0


def _masked_min(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row-wise min of ``values`` over ``mask`` (B, m); +inf for rows with nothing selected."""
    return values.masked_fill(~mask, float("inf")).amin(dim=1)


def cluster_cost(
    min_distances: torch.Tensor, labels: torch.Tensor, prototype_class_identity: Optional[torch.Tensor]
) -> torch.Tensor:
    """Mean over the batch of the distance to the closest prototype of the image's own class.

    ``prototype_class_identity=None`` is the non-class-specific variant: the closest prototype
    of any class.
    """
    if prototype_class_identity is None:
        return min_distances.amin(dim=1).mean()
    return _masked_min(min_distances, _own_prototypes(labels, prototype_class_identity)).mean()


def separation_cost(
    min_distances: torch.Tensor, labels: torch.Tensor, prototype_class_identity: torch.Tensor
) -> torch.Tensor:
    """Mean over the batch of the distance to the closest prototype of any *other* class
    (enters the total with a negative weight). 0 when there is a single class."""
    other = ~_own_prototypes(labels, prototype_class_identity)
    if not other.any():
        return min_distances.sum() * 0.0  # one class: nothing to separate from (keeps the graph)
    return _masked_min(min_distances, other).mean()


def avg_separation_cost(
    min_distances: torch.Tensor, labels: torch.Tensor, prototype_class_identity: torch.Tensor
) -> torch.Tensor:
    """Mean distance to the prototypes of other classes (the reference logs it; not a loss term)."""
    other = (~_own_prototypes(labels, prototype_class_identity)).to(min_distances.dtype)
    return ((min_distances * other).sum(dim=1) / other.sum(dim=1).clamp(min=1)).mean()


def last_layer_l1(weight: torch.Tensor, prototype_class_identity: Optional[torch.Tensor]) -> torch.Tensor:
    """L1 norm of the last-layer weights (K, m) from prototypes to classes other than their own;
    of all weights when ``prototype_class_identity`` is None (non-class-specific)."""
    if prototype_class_identity is None:
        return weight.abs().sum()
    return (weight * (1 - prototype_class_identity.t().to(weight.dtype))).abs().sum()


def protopnet_loss(
    output,
    labels: torch.Tensor,
    net: nn.Module,
    weights: Optional[dict[str, float]] = None,
    class_specific: bool = True,
    ce_loss: Optional[nn.Module] = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``crs_ent * CE + clst * cluster + sep * separation + l1 * L1`` and the unweighted terms.

    ``output`` is a ``ProtoPNetOutput`` (``logits``, ``min_distances``); ``net`` provides
    ``last_layer.weight`` and ``prototype_class_identity``. ``weights`` override
    ``PROTOPNET_LOSS_WEIGHTS`` key by key (the separation weight is negative: separation is
    maximised). ``ce_loss`` replaces plain cross-entropy (e.g. class-weighted or focal).
    With ``class_specific=False`` the cluster cost is the distance to the closest prototype of any
    class, the separation term is 0 and the L1 covers every last-layer weight.
    """
    w = {**PROTOPNET_LOSS_WEIGHTS, **(weights or {})}
    unknown = set(w) - set(PROTOPNET_LOSS_WEIGHTS)
    if unknown:
        raise ValueError(f"unknown ProtoPNet loss weights {sorted(unknown)}")
    logits, min_distances = output.logits.float(), output.min_distances.float()
    identity = net.prototype_class_identity
    terms = {"crs_ent": ce_loss(logits, labels) if ce_loss is not None else F.cross_entropy(logits, labels)}
    if class_specific:
        terms["clst"] = cluster_cost(min_distances, labels, identity)
        terms["sep"] = separation_cost(min_distances, labels, identity)
        terms["l1"] = last_layer_l1(net.last_layer.weight, identity)
    else:
        terms["clst"] = cluster_cost(min_distances, labels, None)
        terms["sep"] = torch.zeros((), device=logits.device)
        terms["l1"] = last_layer_l1(net.last_layer.weight, None)
    total = sum(w[name] * value for name, value in terms.items())
    return total, terms


# -- ABE-M: metric learning ----------------------------------------------------------------------


def pairwise_squared_distances(embeddings: torch.Tensor) -> torch.Tensor:
    """(B, B) squared Euclidean distances, clamped at 0 (rounding can make them slightly negative)."""
    squared = (embeddings * embeddings).sum(dim=1)
    return (squared[:, None] + squared[None, :] - 2 * embeddings @ embeddings.T).clamp_min(0)


def contrastive_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Contrastive loss on squared distances over every pair in the batch:
    mean over positive pairs of ``d^2`` + mean over negative pairs of ``max(0, margin - d^2)``.

    Averaging each side separately keeps the two balanced whatever the batch's class make-up (a
    P x K batch has far more negative than positive pairs). Deviation from ABE-M, on purpose: the
    paper samples 16 positive + 16 negative pairs per 32 images; every pair is used here, with the
    same positive/negative balance and no sampling noise."""
    d2 = pairwise_squared_distances(embeddings.float())
    same = labels[:, None] == labels[None, :]
    upper = torch.triu(torch.ones_like(same), diagonal=1)  # each unordered pair once, no self-pairs
    positive, negative = same & upper, ~same & upper
    loss = embeddings.new_zeros(())
    if positive.any():
        loss = loss + d2[positive].mean()
    if negative.any():
        loss = loss + F.relu(margin - d2[negative]).mean()
    return loss


def divergence_loss(learner_embeddings: torch.Tensor, margin: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """ABE-M's divergence loss, ``max(0, m_div - ||B_p(x) - B_q(x)||^2)`` over pairs of learners
    ``p != q`` **of the same image** (the paper's terms ``d(B_p(x_i), B_q(x_i))``: pairing different
    images' embeddings, as an unofficial version might, is another loss; no official code exists),
    averaged over images and learner pairs. ``learner_embeddings``: (B, M, d).

    The paper writes a sum over images and pairs; the mean makes ``lambda_div`` independent of the
    batch size and of M (the sum equals this times ``B * M * (M - 1)``), so ``lambda_div = 1`` here
    is not the paper's ``lambda_div = 1``; ``reduction="sum"`` is the paper's form."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    b, m, _ = learner_embeddings.shape
    if m < 2:
        return learner_embeddings.new_zeros(())
    x = learner_embeddings.float()
    squared = (x * x).sum(-1)
    d2 = (squared[:, :, None] + squared[:, None, :] - 2 * x @ x.transpose(1, 2)).clamp_min(0)  # (B, M, M)
    off_diagonal = ~torch.eye(m, dtype=torch.bool, device=x.device)
    hinge = F.relu(margin - d2[:, off_diagonal])
    return hinge.sum() if reduction == "sum" else hinge.mean()
