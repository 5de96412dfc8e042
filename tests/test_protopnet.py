"""ProtoPNet network and its costs, against hand-computed values."""

from __future__ import annotations

import io
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lightning_modules.nets.backbones import feature_shapes
from lightning_modules.training.losses import (
    avg_separation_cost,
    cluster_cost,
    last_layer_l1,
    protopnet_loss,
    separation_cost,
)
from lightning_modules.nets.protopnet import ProtoPNet, ProtoPNetOutput


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def net() -> ProtoPNet:
    torch.manual_seed(0)
    return ProtoPNet(3, backbone="test_resnet", prototypes_per_class=2, prototype_dim=4)


def test_prototypes_classes_and_last_layer(net):
    assert net.prototype_shape == (6, 4, 1, 1)
    assert net.prototype_class_identity.tolist() == [
        [1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1],
    ]  # fmt: skip
    assert net.prototype_classes.tolist() == [0, 0, 1, 1, 2, 2]
    assert net.last_layer.bias is None
    assert net.last_layer.weight.tolist() == [
        [1.0, 1.0, -0.5, -0.5, -0.5, -0.5],
        [-0.5, -0.5, 1.0, 1.0, -0.5, -0.5],
        [-0.5, -0.5, -0.5, -0.5, 1.0, 1.0],
    ]
    p = net.prototype_vectors
    assert 0 <= p.min() and p.max() < 1  # uniform [0, 1), like z after the sigmoid


def test_distances_hand_computed(net):
    with torch.no_grad():
        saved = net.prototype_vectors.clone()
        net.prototype_vectors.zero_()
        net.prototype_vectors[0, :, 0, 0] = torch.tensor([1.0, 0.0, 0.0, 0.0])
        net.prototype_vectors[1, :, 0, 0] = torch.tensor([0.5, 0.5, 0.5, 0.5])
    try:
        # one image, a 1x2 map: cell (0, 0) = (1, 1, 0, 0), cell (0, 1) = (0, 0, 0, 0)
        z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])[None, :, None, :]
        d = net.distances(z)
        assert d.shape == (1, 6, 1, 2)
        # p0 = (1, 0, 0, 0): |(0, 1, 0, 0)|^2 = 1 ; |(-1, 0, 0, 0)|^2 = 1
        # p1 = (.5, .5, .5, .5): 4 * 0.25 = 1 ; 4 * 0.25 = 1
        # p2..p5 = 0: |z|^2 = 2 ; 0
        expected = [[1.0, 1.0], [1.0, 1.0], [2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [2.0, 0.0]]
        assert torch.allclose(d[0, :, 0], torch.tensor(expected), atol=1e-6)
        # similarity log((d + 1) / (d + 1e-4)): d = 0 -> log(1e4) = 9.2103; d = 1 -> log(2 / 1.0001)
        sim = net.distance_to_similarity(torch.tensor([0.0, 1.0]))
        assert sim.tolist() == pytest.approx([math.log(1e4), math.log(2 / 1.0001)], rel=1e-6)
    finally:
        with torch.no_grad():
            net.prototype_vectors.copy_(saved)


def test_distances_equal_the_direct_difference(net):
    torch.manual_seed(1)
    z = torch.rand(2, 4, 3, 5)
    direct = ((z[:, None] - net.prototype_vectors[None]) ** 2).sum(dim=2)  # (B, m, H, W)
    assert torch.allclose(net.distances(z), direct, atol=1e-5)
    assert (net.distances(z) >= 0).all()


def test_forward_chains_min_pooling_similarity_and_last_layer(net):
    net.eval()
    torch.manual_seed(2)
    out = net(torch.randn(2, 3, 64, 64))
    assert isinstance(out, ProtoPNetOutput)
    assert out.features.shape == (2, 4, 2, 2) and 0 <= out.features.min() and out.features.max() <= 1
    assert out.distances.shape == (2, 6, 2, 2)
    assert torch.equal(out.min_distances, out.distances.amin(dim=(2, 3)))
    similarity = torch.log((out.min_distances + 1) / (out.min_distances + 1e-4))
    assert torch.allclose(out.logits, similarity @ net.last_layer.weight.t(), atol=1e-5)
    assert torch.equal(net.latent(torch.zeros(1, 3, 64, 64)), net(torch.zeros(1, 3, 64, 64)).features)


@pytest.mark.parametrize("backbone", ["test_resnet", "test_efficientnet", "test_convnext"])
def test_any_backbone_size_and_batch_of_one(backbone):
    model = ProtoPNet(2, backbone=backbone, prototypes_per_class=3, prototype_dim=8).eval()
    for size in ((32, 32), (80, 48)):
        out = model(torch.randn(1, 3, *size))
        h, w = model.backbone(torch.zeros(1, 3, *size))[-1].shape[-2:]
        assert out.logits.shape == (1, 2) and out.min_distances.shape == (1, 6)
        assert out.distances.shape == (1, 6, h, w) and out.features.shape == (1, 8, h, w)


def test_single_class_earlier_stage_and_not_class_specific():
    model = ProtoPNet(1, backbone="test_resnet", prototypes_per_class=2, prototype_dim=8,
                      class_specific=False, feature_stage=-2)  # fmt: skip
    assert model.last_layer.weight.tolist() == [[1.0, 1.0]]  # no other class, no -0.5
    (c, h, w), = feature_shapes(model.backbone, 64)
    out = model(torch.randn(2, 3, 64, 64))
    assert out.distances.shape == (2, 2, h, w) == (2, 2, 4, 4)  # stage -2: stride 16
    total, terms = protopnet_loss(out, torch.zeros(2, dtype=torch.long), model, class_specific=False)
    assert terms["sep"].item() == 0.0
    total.backward()
    assert model.prototype_vectors.grad is not None and model.prototype_vectors.grad.abs().sum() > 0


def test_distances_stay_float32_under_autocast(net):
    torch.manual_seed(3)
    z = torch.rand(1, 4, 3, 3).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d = net.distances(z)
    assert d.dtype == torch.float32
    assert torch.equal(d, net.distances(z.float()))


def test_receptive_field_of_the_prototype_layer(net):
    rf = net.receptive_field(224)
    assert rf.n == (7, 7) and rf.jump == (32, 32)


# --------------------------------------------------------------------------------------------
# Costs. Two classes, two prototypes each: p0, p1 -> class 0; p2, p3 -> class 1.
# --------------------------------------------------------------------------------------------

IDENTITY = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
MIN_DISTANCES = torch.tensor([[1.0, 4.0, 2.0, 0.5], [3.0, 0.25, 6.0, 5.0]])
LABELS = torch.tensor([0, 1])
WEIGHT = torch.tensor([[0.9, 1.2, -0.3, 0.4], [-0.5, 0.1, 1.0, -2.0]])  # (K, m)
LOGITS = torch.tensor([[2.0, 0.0], [0.0, 1.0]])


def test_cluster_and_separation_costs():
    # own class: image 0 -> min(1, 4) = 1; image 1 -> min(6, 5) = 5; mean 3
    assert cluster_cost(MIN_DISTANCES, LABELS, IDENTITY).item() == pytest.approx(3.0)
    # other classes: image 0 -> min(2, 0.5) = 0.5; image 1 -> min(3, 0.25) = 0.25; mean 0.375
    assert separation_cost(MIN_DISTANCES, LABELS, IDENTITY).item() == pytest.approx(0.375)
    # any prototype: 0.5 and 0.25
    assert cluster_cost(MIN_DISTANCES, LABELS, None).item() == pytest.approx(0.375)
    # mean over other-class prototypes: (2 + 0.5) / 2 = 1.25 and (3 + 0.25) / 2 = 1.625
    assert avg_separation_cost(MIN_DISTANCES, LABELS, IDENTITY).item() == pytest.approx(1.4375)


def test_cluster_gradient_flows_to_the_selected_prototype_only():
    d = MIN_DISTANCES.clone().requires_grad_(True)
    cluster_cost(d, LABELS, IDENTITY).backward()
    assert d.grad.tolist() == [[0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.5]]


def test_last_layer_l1():
    # wrong connections: class 0 <- p2, p3: 0.3 + 0.4; class 1 <- p0, p1: 0.5 + 0.1 -> 1.3
    assert last_layer_l1(WEIGHT, IDENTITY).item() == pytest.approx(1.3)
    # every weight: 0.9 + 1.2 + 0.3 + 0.4 + 0.5 + 0.1 + 1.0 + 2.0 = 6.4
    assert last_layer_l1(WEIGHT, None).item() == pytest.approx(6.4)


def fake_net():
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(WEIGHT)
    return SimpleNamespace(prototype_class_identity=IDENTITY, last_layer=layer)


def test_protopnet_loss_totals():
    output = SimpleNamespace(logits=LOGITS, min_distances=MIN_DISTANCES)
    # CE: image 0 -> log(1 + e^-2) = 0.126928; image 1 -> log(1 + e^-1) = 0.313262
    ce = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2
    total, terms = protopnet_loss(output, LABELS, fake_net())
    assert terms["crs_ent"].item() == pytest.approx(ce, rel=1e-6)
    assert {k: round(v.item(), 6) for k, v in terms.items() if k != "crs_ent"} == {"clst": 3.0, "sep": 0.375, "l1": 1.3}
    # 0.220095 + 0.8 * 3 - 0.08 * 0.375 + 1e-4 * 1.3
    assert total.item() == pytest.approx(ce + 2.4 - 0.03 + 1.3e-4, rel=1e-6)

    total, terms = protopnet_loss(output, LABELS, fake_net(), class_specific=False)
    assert terms["clst"].item() == pytest.approx(0.375) and terms["sep"].item() == 0.0
    assert terms["l1"].item() == pytest.approx(6.4)
    assert total.item() == pytest.approx(ce + 0.8 * 0.375 + 6.4e-4, rel=1e-6)

    total, _ = protopnet_loss(output, LABELS, fake_net(), weights={"clst": 0.0, "l1": 0.0})
    assert total.item() == pytest.approx(ce - 0.03, rel=1e-6)  # other weights keep their defaults
    with pytest.raises(ValueError, match="unknown"):
        protopnet_loss(output, LABELS, fake_net(), weights={"cluster": 1.0})


def test_protopnet_loss_custom_ce_and_single_class():
    output = SimpleNamespace(logits=LOGITS, min_distances=MIN_DISTANCES)
    weighted = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 3.0]))
    _, terms = protopnet_loss(output, LABELS, fake_net(), ce_loss=weighted)
    ce0, ce1 = math.log(1 + math.exp(-2)), math.log(1 + math.exp(-1))
    assert terms["crs_ent"].item() == pytest.approx((ce0 + 3 * ce1) / 4, rel=1e-6)
    # one class: every prototype is the image's own, separation has nothing to measure
    one = torch.ones(4, 1)
    assert separation_cost(MIN_DISTANCES, torch.zeros(2, dtype=torch.long), one).item() == 0.0
    assert cluster_cost(MIN_DISTANCES, torch.zeros(2, dtype=torch.long), one).item() == pytest.approx(0.375)


def test_one_last_layer_optimiser_for_the_run_and_its_checkpoint():
    """The last layer's Adam outlives a push (its step count and moments go on), travels in the
    checkpoint, and a resumed module's next push goes on from the saved moments."""
    from functools import partial

    from lightning_modules.modules.protopnet import ProtoPNetModule
    from lightning_modules.protopnet.projection import fit_last_layer

    net = partial(ProtoPNet, backbone="test_resnet", prototypes_per_class=2, prototype_dim=4)
    module = ProtoPNetModule(net=lambda k, m: net(k), num_classes=3)
    sims, labels = torch.rand(10, 6), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    layer = module.net.last_layer

    def push(m: ProtoPNetModule, seed: int) -> None:  # the last-layer fit of a push: 2 passes of 3 batches
        fit_last_layer(m.net.last_layer, sims, labels, nn.CrossEntropyLoss(), 1e-4, None, 2, m.last_layer_optimizer(),
                       4, seed)  # fmt: skip

    push(module, 0)
    assert module.last_layer_optimizer() is module.last_layer_optimizer()
    assert int(module.last_layer_optimizer().state[layer.weight]["step"]) == 6
    checkpoint, buffer = {}, io.BytesIO()
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    resumed = ProtoPNetModule(net=lambda k, m: net(k), num_classes=3)
    resumed.net.load_state_dict(module.net.state_dict())
    resumed.on_load_checkpoint(torch.load(buffer, weights_only=True))
    push(module, 1)
    push(resumed, 1)
    assert int(resumed.last_layer_optimizer().state[resumed.net.last_layer.weight]["step"]) == 12
    assert torch.equal(resumed.net.last_layer.weight, layer.weight)  # the same second push
