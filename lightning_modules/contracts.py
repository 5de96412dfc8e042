"""What a network, a module and the data may offer, declared once.

A network is a plain ``nn.Module`` built as ``net(num_classes, meta_dim, **its own options)``
(the YAML's ``model.init_args.net``). A classifier network maps ``(image, meta)`` to logits
``(B, K)``; everything beyond that is a capability below, which callbacks, the test writer and
the analysis tools check with ``isinstance``. A network that lacks one simply gets no panel.

    AttentionNet      attention_names + forward_with_attention -> (output, {name: (B, h, w)})
    GradCamNet        gradcam_target -> (layer, select): the grid Grad-CAM is taken on
    EmbeddingNet      embed(image, meta) -> (B, D)
    PrototypeNet      prototypes, their classes, distances and the last layer (ProtoPNet)

    PredictsClasses   a module's class_probabilities(image, meta) -> (B, K)
    ScoresBatches     a module's test_probabilities(batch) -> (B, K), as its test step scores
    ReportsEvaluation a module's evaluation_report(stage): per-class AUROC, confusion matrix, ROC
    EvaluationData    what modules and callbacks may ask of a datamodule
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Sequence, runtime_checkable

import torch
from torch import nn

from datamodules.description import DataDescription

#: ``net`` in a module's arguments: a callable of ``(num_classes, meta_dim)`` returning the network
#: (LightningCLI turns a ``class_path``/``init_args`` config into one, as for ``OptimizerCallable``).
NetFactory = Callable[[int, int], nn.Module]


@runtime_checkable
class AttentionNet(Protocol):
    """A network whose forward pass also yields non-negative attention maps ``{name: (B, h, w)}``
    on whatever grid it attends over. ``output`` is what ``forward`` returns."""

    attention_names: Sequence[str]

    def forward_with_attention(self, image: torch.Tensor, meta: torch.Tensor) -> tuple[Any, dict[str, torch.Tensor]]: ...


@runtime_checkable
class GradCamNet(Protocol):
    """``(layer, select)``: Grad-CAM hooks ``layer`` and takes ``select(layer output)`` as its map
    (the grid of the network's finest attention map, so the two are compared cell for cell)."""

    @property
    def gradcam_target(self) -> tuple[nn.Module, Callable[[Any], torch.Tensor]]: ...


@runtime_checkable
class EmbeddingNet(Protocol):
    """A network that embeds images for retrieval: ``(B, D)`` vectors compared by L2 distance."""

    def embed(self, image: torch.Tensor, meta: Optional[torch.Tensor] = None) -> torch.Tensor: ...


@runtime_checkable
class PrototypeNet(Protocol):
    """Prototypical parts (ProtoPNet): ``m`` prototypes of shape (D, 1, 1) in the latent space,
    each assigned to a class, compared to every latent cell by squared L2 distance."""

    prototype_vectors: nn.Parameter
    prototype_class_identity: torch.Tensor  # (m, K) one-hot
    last_layer: nn.Linear

    def latent(self, image: torch.Tensor) -> torch.Tensor: ...

    def distances(self, z: torch.Tensor) -> torch.Tensor: ...

    def distance_to_similarity(self, distances: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class PredictsClasses(Protocol):
    """A module that gives class probabilities on its own (a k-NN embedding model does not)."""

    class_names: list[str]

    def class_probabilities(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class ScoresBatches(Protocol):
    """A module that scores any batch as its test step does: ``(B, K)`` class probabilities, never
    temperature-scaled (the test report fits its operating points and temperature on the
    validation split's)."""

    def test_probabilities(self, batch: dict) -> torch.Tensor: ...


@dataclass
class EvaluationReport:
    """One evaluated split at epoch end: what the figures and ``metrics.json`` draw on."""

    auroc_per_class: dict[str, float]
    confusion_matrix: list[list[int]]  # rows: true class
    roc: Optional[list[tuple[Any, Any]]] = None  # per class (fpr, tpr) arrays; test split only


@runtime_checkable
class ReportsEvaluation(Protocol):
    class_names: list[str]

    def evaluation_report(self, stage: str) -> Optional[EvaluationReport]: ...


@dataclass
class StepResult:
    """One batch through a module: the loss, class probabilities when the model classifies, the
    extra loss terms to log (``<stage>/<name>``), and attention maps when the network has them."""

    loss: torch.Tensor
    probs: Optional[torch.Tensor] = None
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    maps: Optional[dict[str, torch.Tensor]] = None


@runtime_checkable
class EvaluationData(Protocol):
    """What a module or callback may ask of the datamodule (never its internals)."""

    def describe(self) -> DataDescription: ...

    def records(self, split: str) -> list: ...

    def eval_dataloader(self, split: str) -> Any: ...

    def eval_batch(self, split: str, indices: Sequence[int]) -> dict: ...

    def group_ids(self, split: str) -> torch.Tensor: ...


def evaluation_data(trainer: Any) -> Optional[EvaluationData]:
    """The trainer's datamodule when it offers :class:`EvaluationData`, else ``None``."""
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    return datamodule if isinstance(datamodule, EvaluationData) else None
