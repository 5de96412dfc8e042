"""Post-hoc maps from pytorch-grad-cam and captum on the grid of each network's attention."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_modules.explain.attention import attention_maps
from lightning_modules.explain.cams import cam_maps
from lightning_modules.explain.integrated_gradients import integrated_gradients, pool_to_grid
from lightning_modules.explain.maps import METHODS, compute_maps, offered
from lightning_modules.explain.target import ClassScores, grid_shape, grid_target, tapped
from lightning_modules.nets.abe import ABE
from lightning_modules.nets.attn_vgg import AttnVGG
from lightning_modules.nets.protopnet import ProtoPNet
from lightning_modules.nets.soft_attention import SoftAttentionClassifier

NETS = {
    "attn_vgg": lambda: AttnVGG(3, backbone="resnet10t"),
    "soft_attention": lambda: SoftAttentionClassifier(3, 4, backbone="resnet10t", feature_stage=-2),
    "protopnet": lambda: ProtoPNet(3, backbone="resnet10t", feature_stage=-2, prototypes_per_class=2, prototype_dim=16),
    "abe": lambda: ABE(backbone="resnet10t", num_learners=2, embedding_dim=16),
}


@pytest.mark.parametrize("name", list(NETS))
def test_post_hoc_maps_lie_on_the_finest_attention_grid(name, one_thread):
    torch.manual_seed(0)
    net = NETS[name]().eval()
    image, meta = torch.randn(2, 3, 32, 32), torch.randn(2, 4)
    own = attention_maps(net, image, meta)
    finest = max((m.shape[-2:] for m in own.values()), key=lambda s: s[0] * s[1])
    grid = grid_shape(net, image, meta)
    assert grid == tuple(finest)
    classifies = name != "abe"
    methods = offered(net, classifies)
    assert methods == (list(METHODS) if classifies else ["attention", "eigencam"])
    classes = torch.tensor([0, 2]) if classifies else None
    maps = compute_maps(net, image, meta, classes, methods, grid, ig_steps=4)
    assert set(maps) == set(own) | set(methods) - {"attention"}
    for method in set(methods) - {"attention"}:
        assert maps[method].shape == (2, *grid) and (maps[method] >= 0).all(), method
    # no hook outlives the maps
    assert not any(m._forward_hooks for m in net.modules())


def test_library_grad_cam_on_the_grid_is_the_formula():
    """relu(sum_k mean_hw(dy_c/dA_k) A_k), with A the grid the attention sees, by hand."""
    torch.manual_seed(0)
    net = AttnVGG(3, backbone="resnet10t").eval()
    image, meta = torch.randn(3, 3, 32, 32), torch.zeros(3, 0)
    classes = torch.tensor([2, 0, 1])
    layer, select = grid_target(net)
    cams = cam_maps("gradcam", ClassScores(net), layer, select, image, meta, classes)
    stored = {}
    handle = layer.register_forward_hook(lambda _m, _i, out: stored.setdefault("a", out))
    logits = net(image)
    handle.remove()
    (gradient,) = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), stored["a"])
    expected = torch.relu((gradient.mean(dim=(2, 3), keepdim=True) * stored["a"]).sum(dim=1))
    assert torch.allclose(cams, expected.detach(), rtol=1e-5, atol=1e-7)


def test_the_default_class_is_the_predicted_one():
    torch.manual_seed(1)
    net = SoftAttentionClassifier(3, 4, backbone="resnet10t", feature_stage=-2).eval()
    image, meta = torch.randn(2, 3, 32, 32), torch.randn(2, 4)
    model = ClassScores(net)
    layer, select = grid_target(net)
    predicted = model(image, meta).argmax(dim=1)
    assert torch.equal(cam_maps("gradcam", model, layer, select, image, meta),
                       cam_maps("gradcam", model, layer, select, image, meta, predicted))  # fmt: skip


def test_a_frozen_layer_and_a_list_output_still_give_gradients():
    """The tap makes a frozen stage's output (one entry of a timm feature list) require grad."""
    torch.manual_seed(0)
    net = SoftAttentionClassifier(3, 4, backbone="resnet10t", feature_stage=-2).eval()
    for p in net.backbone.parameters():
        p.requires_grad_(False)
    layer, select = grid_target(net)
    cams = cam_maps("gradcam", ClassScores(net), layer, select, torch.randn(2, 3, 32, 32), torch.randn(2, 4))
    assert cams.shape == (2, 2, 2) and cams.abs().sum() > 0


def test_tapped_releases_its_hook_on_error():
    layer = nn.Conv2d(3, 4, 1)
    with pytest.raises(RuntimeError, match="inside"):
        with tapped(layer):
            raise RuntimeError("inside")
    assert not layer._forward_hooks


def test_class_scores_binds_and_broadcasts_metadata():
    seen = []

    class Net(nn.Module):
        def forward(self, image, meta):
            seen.append(meta)
            return image.flatten(1)[:, :2]

    model = ClassScores(Net())
    with model.bound(torch.ones(1, 3)):
        model(torch.zeros(5, 1, 2, 2))
    assert seen[-1].shape == (5, 3)
    with model.bound(torch.ones(2, 3)), pytest.raises(ValueError, match="2 images bound, but 5"):
        model(torch.zeros(5, 1, 2, 2))
    assert model.meta is None


class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, image, meta=None):
        return self.body(image)


def test_integrated_gradients_pooled_keeps_completeness():
    """IG's attributions sum to f(x) - f(baseline) (zeros); pooling onto the grid keeps the sum,
    and the grid map is its positive part."""
    from captum.attr import IntegratedGradients

    torch.manual_seed(0)
    net = Plain()
    image, classes = torch.randn(2, 3, 8, 8), torch.tensor([0, 1])
    pixels = IntegratedGradients(net).attribute(image, target=classes, n_steps=64).sum(dim=1)
    logit = lambda x: net(x).gather(1, classes[:, None])[:, 0]  # noqa: E731
    assert torch.allclose(pixels.sum(dim=(1, 2)), logit(image) - logit(torch.zeros_like(image)), atol=1e-3)
    pooled = pool_to_grid(pixels, (2, 4))
    assert torch.allclose(pooled.sum(dim=(1, 2)), pixels.sum(dim=(1, 2)), atol=1e-5)
    grid = integrated_gradients(ClassScores(net), image, None, classes, (2, 4), steps=64)
    assert torch.allclose(grid, pooled.clamp_min(0), atol=1e-5)
