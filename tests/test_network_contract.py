"""Every network the registry names (``experiments/registry.yaml``: each experiment and variant, as
its YAML and overrides configure it) keeps the contract of ``lightning_modules.contracts``: it builds
without downloads, maps ``(image, meta)`` to ``(B, K)`` logits (or ``(B, D)`` embeddings) at every
input size the experiments use, keeps the batch axis for a batch of one, and offers what its
capabilities declare. A new registry entry is tested here without writing a test for it."""

from __future__ import annotations

import importlib
import inspect
import math
import re

import pytest
import torch

from experiments import registry
from lightning_modules.analysis.gradcam import grad_cam
from lightning_modules.contracts import AttentionNet, EmbeddingNet, GradCamNet, PrototypeNet

VARIANTS = registry.variants()
CLASSES, META = 3, 5
#: Square inputs, as the datamodule resizes them: 32 (the tests' runs), 48, 64 (the experiments').
SIZES = (32, 48, 64)


class Case:
    """A registered variant's network, built as its config says (untrained: ``pretrained=False``)."""

    def __init__(self, variant: registry.Variant):
        config = registry.network_config(variant)
        module_name, _, name = config["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module_name), name)
        self.options = {**{k: p.default for k, p in inspect.signature(cls).parameters.items()}, **config["init_args"]}
        torch.manual_seed(0)
        self.net = cls(CLASSES, META, **{**config["init_args"], "pretrained": False}).eval()

    def width(self) -> int:
        """The declared width of the output: the embedding's dimension, or one logit per class."""
        return self.options["embedding_dim"] if isinstance(self.net, EmbeddingNet) else CLASSES


def inputs(batch: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(size)
    return torch.randn(batch, 3, size, size, generator=generator), torch.randn(batch, META, generator=generator)


def logits_of(output) -> torch.Tensor:
    return output.logits if hasattr(output, "logits") else output  # ProtoPNet returns its distances too


def prediction(net, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """What the network gives per image: its embedding (EmbeddingNet) or its logits."""
    return net.embed(image, meta) if isinstance(net, EmbeddingNet) else logits_of(net(image, meta))


@pytest.fixture(scope="module", params=VARIANTS, ids=[re.sub(r"[^a-z0-9]+", "-", v.name.lower()).strip("-")
                                                       for v in VARIANTS])
def case(request, one_thread) -> Case:
    return Case(request.param)


@torch.no_grad()
def test_output_shape_at_every_size_and_for_a_batch_of_one(case):
    net, width = case.net, case.width()
    for size in SIZES:
        image, meta = inputs(2, size)
        out = prediction(net, image, meta)
        assert out.shape == (2, width) and out.dtype == torch.float32 and torch.isfinite(out).all(), size
        one = prediction(net, image[:1], meta[:1])  # eval mode: nothing mixes images of a batch
        assert one.shape == (1, width)
        assert torch.allclose(one, out[:1], atol=1e-5), size


def test_declared_capabilities(case):
    """Each capability the network offers (``lightning_modules.contracts``) does what it declares."""
    net = case.net
    checks = {AttentionNet: check_attention_maps, GradCamNet: check_gradcam_target,
              EmbeddingNet: check_embeddings, PrototypeNet: check_prototype_layer}  # fmt: skip
    for capability, check in checks.items():
        if isinstance(net, capability):
            check(net)


@torch.no_grad()
def check_attention_maps(net) -> None:
    """``forward_with_attention`` gives ``forward``'s output and one non-negative ``(B, h, w)`` map
    per declared name (``B`` = 1 too), on a grid that scales with the input: ``h == w == ceil(size / r)`` with the
    same reduction ``r`` (a power of two) at every size."""
    reductions: dict[str, set[int]] = {}
    for size in SIZES:
        image, meta = inputs(2, size)
        output, maps = net.forward_with_attention(image, meta)
        assert torch.allclose(logits_of(output), logits_of(net(image, meta)))
        assert list(maps) == list(net.attention_names)
        for name, attention in maps.items():
            b, h, w = attention.shape
            assert b == 2 and h == w and torch.isfinite(attention).all() and (attention >= 0).all(), (name, size)
            found = {r for r in (2, 4, 8, 16, 32) if h == math.ceil(size / r)}
            reductions[name] = reductions.get(name, found) & found
        _, single = net.forward_with_attention(image[:1], meta[:1])  # a batch of one keeps its batch axis
        assert {n: a.shape for n, a in single.items()} == {n: (1, *a.shape[1:]) for n, a in maps.items()}
    assert all(len(r) == 1 for r in reductions.values()), reductions


def check_gradcam_target(net) -> None:
    """Grad-CAM on the declared layer gives the grid of the finest attention map."""
    image, meta = inputs(2, 64)
    with torch.no_grad():
        _, maps = net.forward_with_attention(image, meta)
    finest = max((m.shape[-2:] for m in maps.values()), key=lambda shape: shape.numel())
    layer, select = net.gradcam_target
    cam = grad_cam(net, layer, image, meta, select=select)
    assert cam.shape == (2, *finest) and (cam >= 0).all()


@torch.no_grad()
def check_embeddings(net) -> None:
    """The embedding is the learners' L2-normalised vectors, concatenated."""
    image, meta = inputs(3, 64)
    learners = net(image, meta)  # (B, M, D / M), each L2-normalised
    embedding = net.embed(image, meta)
    assert embedding.shape == (3, learners.shape[1] * learners.shape[2])
    assert torch.allclose(learners.norm(dim=-1), torch.ones(3, learners.shape[1]), atol=1e-5)
    assert torch.allclose(embedding.norm(dim=1), torch.full((3,), math.sqrt(learners.shape[1])), atol=1e-5)


@torch.no_grad()
def check_prototype_layer(net) -> None:
    """Prototypes of shape (D, 1, 1), one class each; squared distances to every latent cell; the
    logits are the last layer of the similarity of the closest cell; the maps lie on the latent grid."""
    image, meta = inputs(2, 64)
    m, d = net.prototype_vectors.shape[:2]
    assert net.prototype_vectors.shape == (m, d, 1, 1)
    assert net.prototype_class_identity.shape == (m, CLASSES) and (net.prototype_class_identity.sum(1) == 1).all()
    assert tuple(net.last_layer.weight.shape) == (CLASSES, m)
    z = net.latent(image)
    assert z.shape[:2] == (2, d) and (z >= 0).all() and (z <= 1).all()
    distances = net.distances(z)
    direct = ((z[:, None] - net.prototype_vectors[None]) ** 2).sum(dim=2)  # (B, m, h, w)
    assert distances.shape == (2, m, *z.shape[-2:]) and torch.allclose(distances, direct, atol=1e-4)
    similarity = net.distance_to_similarity(distances.flatten(2).amin(dim=2))
    assert torch.allclose(logits_of(net(image, meta)), net.last_layer(similarity), atol=1e-5)
    _, maps = net.forward_with_attention(image, meta)
    assert all(a.shape[-2:] == z.shape[-2:] for a in maps.values())
