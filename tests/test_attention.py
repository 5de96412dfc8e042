"""Trainable attention: scoring functions, attention blocks, the lesion-mass score, Grad-CAM."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from lightning_modules.analysis.gradcam import grad_cam
from lightning_modules.contracts import AttentionNet, EmbeddingNet, GradCamNet, PrototypeNet
from lightning_modules.metrics.lesion_mass import LesionMass, lesion_mass
from lightning_modules.modules.classifier import LesionClassifier, mask_dice_loss
from lightning_modules.nets.abe import ABE
from lightning_modules.nets.attn_vgg import AttentionBlock, AttnVGG
from lightning_modules.nets.fusion_classifier import FusionClassifier
from lightning_modules.nets.protopnet import ProtoPNet
from lightning_modules.nets.soft_attention import (
    ConcatScore,
    DotScore,
    GeneralScore,
    SoftAttention,
    SoftAttentionClassifier,
)
from lightning_modules.utils.images import normalise, upsample

QUERY = torch.tensor([[1.0, 2.0]])
CELLS = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # 3 cells of 2 channels


def test_dot_score_by_hand():
    scores = DotScore(2, 2)(QUERY, CELLS)
    assert torch.allclose(scores, torch.tensor([[1.0, 2.0, 3.0]]) / math.sqrt(2))


def test_general_score_by_hand():
    score = GeneralScore(2, 2)
    with torch.no_grad():
        score.weight.copy_(torch.tensor([[1.0, 0.5], [0.0, -1.0]]))
    # h^T W = [1*1 + 2*0, 1*0.5 + 2*-1] = [1, -1.5]; . e -> [1, -1.5, -0.5]
    assert torch.allclose(score(QUERY, CELLS), torch.tensor([[1.0, -1.5, -0.5]]))


def test_concat_score_by_hand():
    score = ConcatScore(2, 2, attention_dim=1)
    with torch.no_grad():
        score.query_proj.weight.copy_(torch.tensor([[0.5, 0.0]]))
        score.query_proj.bias.copy_(torch.tensor([0.1]))
        score.cell_proj.weight.copy_(torch.tensor([[1.0, -1.0]]))
        score.v.weight.copy_(torch.tensor([[2.0]]))
    # v * tanh(0.5 * 1 + 0.1 + (e0 - e1)) for e = (1,0), (0,1), (1,1)
    expected = [2 * math.tanh(0.6 + 1), 2 * math.tanh(0.6 - 1), 2 * math.tanh(0.6)]
    assert torch.allclose(score(QUERY, CELLS), torch.tensor([expected]), atol=1e-6)


@pytest.mark.parametrize("scoring", ["dot", "general", "concat"])
@pytest.mark.parametrize("grid", [(1, 1), (3, 5), (7, 7)])
def test_soft_attention_is_a_distribution_and_context_its_mean(scoring, grid):
    torch.manual_seed(0)
    attention = SoftAttention(scoring, query_dim=6, cell_dim=4)
    fmap = torch.randn(2, 4, *grid)
    context, weights = attention(torch.randn(2, 6), fmap)
    assert weights.shape == (2, *grid)
    assert torch.allclose(weights.flatten(1).sum(1), torch.ones(2))
    expected = (weights[:, None] * fmap).flatten(2).sum(2)
    assert torch.allclose(context, expected, atol=1e-6)


def test_attention_block_softmax_and_sigmoid():
    torch.manual_seed(0)
    local, global_map = torch.randn(3, 8, 6, 5), torch.randn(3, 16, 2, 2)
    a, feature = AttentionBlock(8, 16, 4, normalize_attn=True)(local, global_map)
    assert a.shape == (3, 6, 5) and torch.allclose(a.flatten(1).sum(1), torch.ones(3))
    assert torch.allclose(feature, (a[:, None] * local).flatten(2).sum(2), atol=1e-6)
    a, feature = AttentionBlock(8, 16, 4, normalize_attn=False)(local, global_map)
    assert bool(((a > 0) & (a < 1)).all())
    assert torch.allclose(feature, (a[:, None] * local).mean(dim=(2, 3)), atol=1e-6)


@pytest.mark.parametrize("backbone,size", [("resnet10t", 64), ("resnet10t", 97), ("test_efficientnet", 80),
                                           ("vgg11_bn", 64)])
def test_attn_vgg_shapes_for_backbones_and_sizes(backbone, size):
    net = AttnVGG(num_classes=3, backbone=backbone).eval()
    logits, maps = net.forward_with_attention(torch.randn(1, 3, size, size))  # a batch of one
    assert logits.shape == (1, 3)
    assert set(maps) == {"attn1", "attn2"}
    h1, h2 = maps["attn1"].shape[-1], maps["attn2"].shape[-1]
    assert h1 == math.ceil(size / 8) or h1 == size // 8
    assert h2 == math.ceil(size / 16) or h2 == size // 16
    for a in maps.values():
        assert torch.allclose(a.flatten(1).sum(1), torch.ones(1), atol=1e-5)


def test_attn_vgg_uses_pool3_pool4_on_vgg():
    net = AttnVGG(num_classes=2, backbone="vgg11_bn")
    channels = net.backbone.feature_info.channels()
    assert net.pool_local and [channels[i] for i in net.local_stages] == [256, 512]  # pool-3, pool-4
    assert net.classifier.in_features == 512 + 256 + 512


@pytest.mark.parametrize("backbone", ["vgg11_bn", "resnet10t"])
def test_gradcam_lies_on_the_grid_of_the_finest_attention_map(backbone):
    """For VGG the attended maps are the stages max-pooled by 2: Grad-CAM must use that grid too,
    or its lesion mass is scored at twice the attention's resolution."""
    net = AttnVGG(num_classes=3, backbone=backbone).eval()
    image = torch.randn(2, 3, 64, 64)
    _, maps = net.forward_with_attention(image)
    layer, select = net.gradcam_target
    cam = grad_cam(lambda x, m: net(x), layer, image, None, select=select)
    assert cam.shape == maps["attn1"].shape


def test_lesion_mass_on_hand_made_maps():
    mask = torch.zeros(1, 4, 4)
    mask[0, :2, :2] = 1  # a quarter of the image
    inside = torch.zeros(1, 4, 4)
    inside[0, 0, 0] = 1.0
    assert lesion_mass(inside, mask).item() == pytest.approx(1.0)
    assert lesion_mass(torch.ones(1, 4, 4), mask).item() == pytest.approx(0.25)
    split = torch.zeros(1, 4, 4)
    split[0, 0, 0], split[0, 3, 3] = 3.0, 1.0
    assert lesion_mass(split, mask).item() == pytest.approx(0.75)
    # a 2x2 map is resized to the 4x4 mask first
    coarse = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    assert 0.5 < lesion_mass(coarse, mask).item() <= 1.0
    metric = LesionMass()
    metric.update(torch.cat([inside, torch.ones(1, 4, 4)]), torch.cat([mask, mask]))
    assert metric.compute().item() == pytest.approx((1.0 + 0.25) / 2)


def test_upsample_and_normalise():
    maps = torch.tensor([[[0.0, 2.0], [4.0, 8.0]]])
    assert torch.equal(normalise(maps), maps / 8)
    assert upsample(maps, (6, 6)).shape == (1, 6, 6)


def test_mask_dice_loss():
    mask = torch.zeros(1, 4, 4)
    mask[0, :2, :2] = 1
    perfect = torch.zeros(1, 2, 2)
    perfect[0, 0, 0] = 0.7  # on the lesion's cell of a 2x2 grid; scaled to a peak of 1
    assert mask_dice_loss(perfect, mask).item() == pytest.approx(0.0, abs=1e-6)
    wrong = torch.zeros(1, 2, 2)
    wrong[0, 1, 1] = 1.0
    assert mask_dice_loss(wrong, mask).item() == pytest.approx(1.0)


class LinearOnMap(nn.Module):
    """logits_c = sum_k w_ck * mean(A_k): Grad-CAM's weights are w_ck / (H*W), by hand."""

    def __init__(self, weight):
        super().__init__()
        self.features = nn.Identity()
        self.weight = nn.Parameter(torch.tensor(weight))

    def forward(self, image, meta):
        a = self.features(image)
        return a.mean(dim=(2, 3)) @ self.weight.T


def test_grad_cam_by_hand_and_hooks_released():
    model = LinearOnMap([[1.0, -2.0], [0.5, 0.5]])
    image = torch.tensor([[[[1.0, 0.0], [0.0, 3.0]], [[0.0, 1.0], [1.0, 0.0]]]])  # (1, 2, 2, 2)
    cam = grad_cam(model, model.features, image, None, class_index=torch.tensor([0]))
    expected = torch.relu((1.0 * image[0, 0] - 2.0 * image[0, 1]) / 4)
    assert torch.allclose(cam[0], expected)
    assert not model.features._forward_hooks


def test_networks_declare_their_capabilities():
    """Each network offers exactly the capabilities its callbacks and tools look for."""
    attn = AttnVGG(3, 4, backbone="resnet10t")
    soft = SoftAttentionClassifier(3, 4, backbone="resnet10t", feature_stage=-2)
    fusion = FusionClassifier(3, 4, backbone="resnet10t")
    abe = ABE(3, 4, backbone="resnet10t", num_learners=2, embedding_dim=16)
    protopnet = ProtoPNet(3, 4, backbone="resnet10t", prototypes_per_class=1, prototype_dim=8)
    offers = lambda net: {p.__name__ for p in (AttentionNet, GradCamNet, EmbeddingNet, PrototypeNet)  # noqa: E731
                          if isinstance(net, p)}
    assert offers(attn) == offers(soft) == {"AttentionNet", "GradCamNet"}
    assert offers(fusion) == set()
    assert offers(abe) == {"AttentionNet", "EmbeddingNet"}
    assert offers(protopnet) == {"AttentionNet", "PrototypeNet"}
    assert attn.attention_names == ("attn1", "attn2") and soft.attention_names == ("soft",)
    logits, maps = soft.forward_with_attention(torch.randn(2, 3, 64, 64), torch.randn(2, 4))
    assert logits.shape == (2, 3) and maps["soft"].shape == (2, 4, 4)


def test_soft_attention_query_follows_the_metadata():
    with pytest.raises(ValueError, match="learned"):
        SoftAttentionClassifier(3, 0, backbone="resnet10t", query="metadata")
    assert SoftAttentionClassifier(3, 0, backbone="resnet10t").query_kind == "learned"
    assert SoftAttentionClassifier(3, 5, backbone="resnet10t").query_kind == "metadata"


def test_mask_regulariser_needs_a_network_with_attention():
    from functools import partial

    with pytest.raises(ValueError, match="needs a network with attention maps; FusionClassifier has none"):
        LesionClassifier(net=partial(FusionClassifier, backbone="test_resnet"), num_classes=3, meta_dim=2,
                         mask_loss_weight=0.01)  # fmt: skip


def test_an_empty_map_scores_like_a_uniform_one():
    mask = torch.zeros(2, 4, 4)
    mask[:, :2, :2] = 1
    assert torch.allclose(lesion_mass(torch.zeros(2, 4, 4), mask), torch.full((2,), 0.25))


def test_attn_vgg_official_initialisation():
    torch.manual_seed(0)
    net = AttnVGG(3, backbone="resnet10t", init="official")
    assert float(net.classifier.weight.std()) == pytest.approx(0.01, rel=0.1) and not net.classifier.bias.any()
    phi = net.attention[0].phi
    fan_in = phi.weight[0].numel()
    assert float(phi.weight.std()) == pytest.approx(math.sqrt(2 / fan_in), rel=0.5) and not phi.bias.any()
    with pytest.raises(ValueError, match="init must be"):
        AttnVGG(3, backbone="resnet10t", init="xavier")


def test_mask_outline_by_hand():
    """The outline is the mask's own border pixels (4-neighbourhood), drawn in the given colour."""
    from lightning_modules.utils.images import mask_edges, outline

    mask = np.zeros((1, 5, 6))
    mask[0, 1:4, 1:5] = 1  # a 3 x 4 block: its 10 border pixels, the 2 inner ones not
    edges = mask_edges(mask)[0]
    expected = mask[0].astype(bool)
    expected[2, 2:4] = False
    assert (edges == expected).all() and edges.sum() == 10
    touching = np.ones((1, 3, 3))  # a lesion filling the image is closed along the border
    assert mask_edges(touching)[0].sum() == 8
    pictures = np.zeros((1, 5, 6, 3), np.uint8)
    drawn = outline(pictures, mask, colour=(255, 0, 0))
    assert (drawn[0][edges] == [255, 0, 0]).all() and (drawn[0][~edges] == 0).all() and pictures.max() == 0
