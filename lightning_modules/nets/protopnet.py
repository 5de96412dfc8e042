"""ProtoPNet ("This Looks Like That", Chen et al., NeurIPS 2019): classify by similarity to
learned prototypical parts.

    image -> backbone stage map -> add-on (1x1 conv, ReLU, 1x1 conv, Sigmoid) -> z (B, D, H, W)
          -> squared L2 distance of every prototype p_j (D, 1, 1) to every cell of z -> (B, m, H, W)
          -> global min pooling -> min_distances (B, m)
          -> similarity log((d + 1) / (d + eps)) -> last layer (no bias) -> logits (B, K)

The training recipe (warm-up, joint, push, last-layer-only), the costs (``losses.protopnet_loss``)
and the push (``analysis.push.PushSearch``) live elsewhere; this module is the network only.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.nets.backbones import create_backbone, feature_channels
from lightning_modules.protopnet.receptive_field import ReceptiveField, receptive_field


class ProtoPNetOutput(NamedTuple):
    logits: torch.Tensor  # (B, K)
    min_distances: torch.Tensor  # (B, m): squared L2 distance to the closest cell, per prototype
    distances: torch.Tensor  # (B, m, H, W): squared L2 distance to every cell
    features: torch.Tensor  # (B, D, H, W): the add-on output z that prototypes live in


class ProtoPNet(nn.Module):
    #: Similarity maps offered as attention (``forward_with_attention``).
    attention_names = ("top_prototype", "predicted_class")

    def __init__(
        self,
        num_classes: int,
        meta_dim: int = 0,
        backbone: str = "resnet18",
        prototypes_per_class: int = 10,
        prototype_dim: int = 128,
        pretrained: bool = False,
        weights_path: Optional[str] = None,
        class_specific: bool = True,
        feature_stage: int = -1,
        incorrect_class_connection: float = -0.5,
        epsilon: float = 1e-4,
    ):
        """``m = num_classes * prototypes_per_class`` prototypes; prototype ``j`` is assigned to
        class ``j // prototypes_per_class`` (``prototype_class_identity``). ``meta_dim`` is
        accepted and unused (image only).

        ``class_specific`` does not change the network: every prototype still has a class, which
        only sets the initial +1 / ``incorrect_class_connection`` pattern of the last layer. It is
        stored for the training code (``protopnet_loss``, ``PushSearch.for_net``), where
        ``False`` means: cluster cost to the closest prototype of any class, no separation cost,
        L1 on every last-layer weight, and a push that may take patches from images of any class.
        (The reference code's non-class-specific path crashes on an undefined ``separation_cost``,
        https://github.com/cfchen-duke/ProtoPNet/blob/81bf2b70cb60e4f36e25e8be386eb616b7459321/train_and_test.py;
        here it is tested.)

        ``feature_stage`` picks the backbone stage (timm ``out_indices``, negative counts from the
        deepest). For timm VGG the last stage is pool-5, as in the paper.
        """
        super().__init__()
        if num_classes < 1 or prototypes_per_class < 1 or prototype_dim < 1:
            raise ValueError("num_classes, prototypes_per_class and prototype_dim must be positive")
        self.num_classes = num_classes
        self.prototypes_per_class = prototypes_per_class
        self.num_prototypes = num_classes * prototypes_per_class
        self.prototype_dim = prototype_dim
        self.class_specific = class_specific
        self.epsilon = epsilon

        self.backbone = create_backbone(backbone, pretrained, weights_path, out_indices=(feature_stage,))
        channels = feature_channels(self.backbone)[-1]
        self.add_on_layers = nn.Sequential(
            nn.Conv2d(channels, prototype_dim, kernel_size=1),
            nn.ReLU(),
            nn.Conv2d(prototype_dim, prototype_dim, kernel_size=1),
            nn.Sigmoid(),
        )
        for layer in self.add_on_layers:
            if isinstance(layer, nn.Conv2d):  # the paper's Kaiming initialisation
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(layer.bias)

        # z lies in [0, 1]^D (sigmoid), so prototypes start uniformly in the same cube.
        self.prototype_vectors = nn.Parameter(torch.rand(self.num_prototypes, prototype_dim, 1, 1))
        identity = torch.zeros(self.num_prototypes, num_classes)
        identity[torch.arange(self.num_prototypes), torch.arange(self.num_prototypes) // prototypes_per_class] = 1
        self.register_buffer("prototype_class_identity", identity)

        self.last_layer = nn.Linear(self.num_prototypes, num_classes, bias=False)
        self.set_last_layer_incorrect_connection(incorrect_class_connection)

    @property
    def prototype_shape(self) -> tuple[int, int, int, int]:
        return tuple(self.prototype_vectors.shape)

    @property
    def prototype_classes(self) -> torch.Tensor:
        """(m,) class index of every prototype."""
        return self.prototype_class_identity.argmax(dim=1)

    @torch.no_grad()
    def set_last_layer_incorrect_connection(self, incorrect_class_connection: float = -0.5) -> None:
        """+1 from each prototype to its own class, ``incorrect_class_connection`` to the others."""
        own = self.prototype_class_identity.t()  # (K, m)
        self.last_layer.weight.copy_(own + incorrect_class_connection * (1 - own))

    def latent(self, image: torch.Tensor) -> torch.Tensor:
        """z = add-on(backbone stage map), (B, D, H, W) in [0, 1]."""
        return self.add_on_layers(self.backbone(image)[-1])

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """Squared L2 distance from every prototype to every cell of z, (B, m, H, W).

        Expanded as |z|^2 - 2 z.p + |p|^2, the middle term being a 1x1 convolution. The
        expansion cancels large terms, so it runs in float32 even under autocast (in bf16 the
        distances of nearby vectors are mostly rounding error), and it is clamped at 0.
        """
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.float()
            prototypes = self.prototype_vectors.float()
            z2 = (z * z).sum(dim=1, keepdim=True)  # (B, 1, H, W)
            p2 = (prototypes * prototypes).sum(dim=(1, 2, 3))  # (m,)
            zp = F.conv2d(z, prototypes)  # (B, m, H, W)
            return (z2 - 2 * zp + p2[None, :, None, None]).clamp(min=0)

    def distance_to_similarity(self, distances: torch.Tensor) -> torch.Tensor:
        """log((d + 1) / (d + eps)): large near 0, decreasing in d."""
        return torch.log((distances + 1) / (distances + self.epsilon))

    def forward(self, image: torch.Tensor, meta: Optional[torch.Tensor] = None) -> ProtoPNetOutput:
        """``meta`` is accepted for the same call signature as the fusion classifier and unused."""
        z = self.latent(image)
        distances = self.distances(z)
        min_distances = distances.flatten(2).amin(dim=2)  # global min pooling, (B, m)
        logits = self.last_layer(self.distance_to_similarity(min_distances))
        return ProtoPNetOutput(logits, min_distances, distances, z)

    def attention_from_output(self, output: ProtoPNetOutput) -> dict[str, torch.Tensor]:
        """Similarity maps: of the most activated prototype, and the last-layer-weighted sum over
        the prototypes of the predicted class (where the evidence for the prediction lies)."""
        similarity = self.distance_to_similarity(output.distances).detach()  # (B, m, H, W)
        top = self.distance_to_similarity(output.min_distances).argmax(dim=1)
        rows = torch.arange(similarity.shape[0], device=similarity.device)
        weights = self.last_layer.weight[output.logits.argmax(dim=1)].clamp_min(0).detach()  # (B, m)
        return {
            "top_prototype": similarity[rows, top],
            "predicted_class": (weights[:, :, None, None] * similarity).sum(dim=1),
        }

    def forward_with_attention(self, image: torch.Tensor, meta: Optional[torch.Tensor] = None):
        """``(ProtoPNetOutput, similarity maps)``."""
        output = self(image, meta)
        return output, self.attention_from_output(output)

    def receptive_field(self, image_size: int = 224) -> ReceptiveField:
        """Receptive field of a cell of z (the 1x1 add-on layers do not change it); use with
        ``receptive_field.cell_box`` to find the image box of a prototype's patch."""
        return receptive_field(self.backbone, image_size)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The groups of the paper's schedule: warm-up trains ``add_on`` + ``prototypes`` (backbone
        frozen); joint adds ``backbone`` at a lower rate (last layer kept at its initial pattern);
        after each push only ``last_layer`` is trained."""
        return {
            "backbone": list(self.backbone.parameters()),
            "add_on": list(self.add_on_layers.parameters()),
            "prototypes": [self.prototype_vectors],
            "last_layer": list(self.last_layer.parameters()),
        }
