"""MetaBlock against hand computation, and a public re-implementation's reshape bug it must not have."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.nets.metablock import MetaBlock


def _linear_block(meta_dim: int, channels: int, f_w, f_b, g_w, g_b) -> MetaBlock:
    block = MetaBlock(meta_dim, channels, batch_norm=False)
    with torch.no_grad():
        block.f_b[0].weight.copy_(torch.tensor(f_w))
        block.f_b[0].bias.copy_(torch.tensor(f_b))
        block.g_b[0].weight.copy_(torch.tensor(g_w))
        block.g_b[0].bias.copy_(torch.tensor(g_b))
    return block


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_metablock_matches_hand_computation_on_a_feature_map():
    # meta_dim 1, 2 channels: f = [2m, -m + 0.5], g = [0.1, m]
    block = _linear_block(1, 2, [[2.0], [-1.0]], [0.0, 0.5], [[0.0], [1.0]], [0.1, 0.0])
    meta = torch.tensor([[1.0]])
    x = torch.tensor([[[[0.5, -1.0]], [[2.0, 0.0]]]])  # (1, 2, 1, 2)
    out = block(x, meta)
    # channel 0: f=2, g=0.1 -> sigmoid(tanh(2*x) + 0.1); channel 1: f=-0.5, g=1 -> sigmoid(tanh(-0.5x)+1)
    expected = [
        [sigmoid(math.tanh(2 * 0.5) + 0.1), sigmoid(math.tanh(2 * -1.0) + 0.1)],
        [sigmoid(math.tanh(-0.5 * 2.0) + 1.0), sigmoid(math.tanh(0.0) + 1.0)],
    ]
    assert out.shape == x.shape
    assert torch.allclose(out[0, :, 0, :], torch.tensor(expected), atol=1e-6)


def test_metablock_broadcasts_per_sample_and_channel():
    torch.manual_seed(0)
    batch, channels, meta_dim = 3, 5, 4  # batch != channels: a (W, H, k, B) reshape would mix them up
    block = MetaBlock(meta_dim, channels, batch_norm=False)
    x = torch.randn(batch, channels, 2, 3)
    meta = torch.randn(batch, meta_dim)
    out = block(x, meta)
    f, g = block.f_b(meta), block.g_b(meta)
    for b in range(batch):
        for c in range(channels):
            ref = torch.sigmoid(torch.tanh(f[b, c] * x[b, c]) + g[b, c])
            assert torch.allclose(out[b, c], ref, atol=1e-6)


def test_axis_reshape_scrambles_samples_but_broadcasting_does_not():
    torch.manual_seed(1)
    batch, channels = 2, 3
    block = MetaBlock(4, channels, batch_norm=False)
    x = torch.randn(batch, channels, 2, 2)
    meta = torch.randn(batch, 4)
    f, g = block.f_b(meta), block.g_b(meta)
    # The buggy public snippet (see nets/metablock.py): reshape x to (W, H, k, B) and f, g to (k, B), multiply, reshape back.
    xr = x.reshape(x.shape[3], x.shape[2], x.shape[1], x.shape[0])
    reshaped = torch.sigmoid(torch.tanh(f.reshape(channels, batch) * xr) + g.reshape(channels, batch))
    reshaped = reshaped.reshape(batch, channels, 2, 2)
    assert not torch.allclose(reshaped, block(x, meta))


def test_metablock_on_pooled_vectors_and_with_batchnorm():
    block = MetaBlock(3, 4, batch_norm=True).eval()  # the official code's variant
    out = block(torch.randn(5, 4), torch.randn(5, 3))
    assert out.shape == (5, 4)
    assert bool(((out > 0) & (out < 1)).all())  # a sigmoid gate


def test_metablock_rejects_bad_inputs():
    with pytest.raises(ValueError, match="metadata"):
        MetaBlock(0, 4)
    with pytest.raises(ValueError, match=r"\(B, k\)"):
        MetaBlock(3, 4, batch_norm=False)(torch.randn(2, 4, 3), torch.randn(2, 3))


def test_official_grouped_arrangement_with_ported_weights():
    """``metablock_groups=V``: pool, regroup into V groups of consecutive channels, one gate per
    group, BatchNorm after f and g. Weights shaped as the official code's (``fb``/``gb``:
    Linear(U, V) + BatchNorm1d(V)) are ported by renaming, and the classifier's fused features
    equal a hand-written version of that arrangement."""
    from lightning_modules.nets.fusion_classifier import FusionClassifier

    torch.manual_seed(3)
    meta_dim, groups = 5, 8
    net = FusionClassifier(4, meta_dim, backbone="test_resnet", metablock_batch_norm=True, metablock_groups=groups)
    channels = net.classifier.in_features
    official = {}
    for name in ("fb", "gb"):
        official.update({f"{name}.0.weight": torch.randn(groups, meta_dim), f"{name}.0.bias": torch.randn(groups),
                         f"{name}.1.weight": torch.rand(groups) + 0.5, f"{name}.1.bias": torch.randn(groups),
                         f"{name}.1.running_mean": torch.randn(groups), f"{name}.1.running_var": torch.rand(groups) + 0.5,
                         f"{name}.1.num_batches_tracked": torch.tensor(7)})  # fmt: skip
    net.metablock.load_state_dict({k.replace("fb.", "f_b.").replace("gb.", "g_b."): v for k, v in official.items()})
    net.eval()
    image, meta = torch.randn(3, 3, 32, 32), torch.randn(3, meta_dim)

    def linear_bn(prefix: str, u: torch.Tensor) -> torch.Tensor:
        y = u @ official[f"{prefix}.0.weight"].T + official[f"{prefix}.0.bias"]
        y = (y - official[f"{prefix}.1.running_mean"]) / torch.sqrt(official[f"{prefix}.1.running_var"] + 1e-5)
        return y * official[f"{prefix}.1.weight"] + official[f"{prefix}.1.bias"]

    with torch.no_grad():
        pooled = net.backbone(image)[-1].mean(dim=(2, 3))  # (B, k)
        grouped = pooled.reshape(3, groups, channels // groups)  # consecutive channels per group
        t1, t2 = linear_bn("fb", meta), linear_bn("gb", meta)
        expected = torch.sigmoid(torch.tanh(grouped * t1.unsqueeze(-1)) + t2.unsqueeze(-1)).reshape(3, -1)
        assert torch.allclose(net.features(image, meta), expected, atol=1e-6)
    with pytest.raises(ValueError, match="metablock_groups=7 must divide the 96 feature channels"):
        FusionClassifier(4, meta_dim, backbone="test_resnet", metablock_groups=7)


class OfficialMetaBlock(nn.Module):
    """raug's MetaBlock, transcribed from
    https://github.com/paaatcha/raug/blob/32b4596ec602f173222039e2aa0b1117a05b9a50/raug/models/metablock.py:
    ``T1``/``T2`` are Linear(U, V) + BatchNorm1d(V); the pooled features arrive as (B, V, 32)."""

    def __init__(self, V: int, U: int):
        super().__init__()
        self.T1 = nn.Sequential(nn.Linear(U, V), nn.BatchNorm1d(V))
        self.T2 = nn.Sequential(nn.Linear(U, V), nn.BatchNorm1d(V))

    def forward(self, V: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
        t1, t2 = self.T1(U), self.T2(U)
        return torch.sigmoid(torch.tanh(V * t1.unsqueeze(-1)) + t2.unsqueeze(-1))


def ported_official_metablock(net, meta_dim: int, seed: int = 0) -> OfficialMetaBlock:
    """Our MetaBlock's weights (made non-trivial: random BatchNorm statistics and affines) in the
    official module, renamed ``f_b`` -> ``T1``, ``g_b`` -> ``T2``."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for projection in (net.metablock.f_b, net.metablock.g_b):
            bn = projection[1]
            bn.weight.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)
            bn.bias.copy_(torch.randn(bn.num_features, generator=generator))
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=generator))
            bn.running_var.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)
    official = OfficialMetaBlock(net.metablock.groups, meta_dim)
    official.T1.load_state_dict(net.metablock.f_b.state_dict())
    official.T2.load_state_dict(net.metablock.g_b.state_dict())
    return official.eval()


def official_metablock_head(features: torch.Tensor, comb: OfficialMetaBlock, comb_feat_maps: int,
                            classifier: nn.Module, meta: torch.Tensor) -> torch.Tensor:
    """The MetaBlock branch of raug's ``MyEffnet.forward`` / ``MyResnet.forward`` after the
    backbone (raug/models/effnet.py, resnet.py at the commit above), with ``neurons_reducer_block=0``
    as the MetaBlock benchmarks set: average pool, ``view(B, V, 32, -1).squeeze(-1)`` (fails
    unless the features have V x 32 channels), MetaBlock, flatten, classifier."""
    x = F.adaptive_avg_pool2d(features, 1)  # MyResnet's features end with the avgpool: the same
    x = x.view(x.size(0), comb_feat_maps, 32, -1).squeeze(-1)
    x = comb(x, meta.float())
    x = x.view(x.size(0), -1)
    return classifier(x)


def effnet_extract_features(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """efficientnet_pytorch's ``EfficientNet.extract_features`` (what raug's ``MyEffnet`` calls;
    https://github.com/lukemelas/EfficientNet-PyTorch/blob/7e8b0d312162f335785fb5dcfa1df29a75a1783a/efficientnet_pytorch/model.py)
    on timm's EfficientNet modules: swish(bn(stem conv)), the blocks, swish(bn(head conv))."""
    assert isinstance(model.bn1.act, nn.SiLU) and isinstance(model.bn2.act, nn.SiLU)  # timm's BN + swish
    x = model.bn1(model.conv_stem(image))
    for block in model.blocks:
        x = block(x)
    return model.bn2(model.conv_head(x))


def resnet_features(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """raug's ``MyResnet`` features: torchvision's ResNet children up to (without) ``fc``, i.e.
    conv1, bn1, relu, maxpool, layer1-4 (its avgpool is in ``official_metablock_head``)."""
    x = model.maxpool(model.act1(model.bn1(model.conv1(image))))
    return model.layer4(model.layer3(model.layer2(model.layer1(x))))


def test_resnet50_official_metablock_is_64_groups_of_32_with_ported_weights():
    """The MetaBlock benchmarks' default network (ResNet-50, ``comb_config=[64, 45]``): 2048
    pooled features = 64 groups of 32; our grouped FusionClassifier gives the official logits.
    ResNets have no head convolution, so the last stage and the final features are the same map."""
    from lightning_modules.nets.backbones import feature_channels
    from lightning_modules.nets.fusion_classifier import FusionClassifier

    torch.manual_seed(4)
    net = FusionClassifier(6, 45, backbone="resnet50", head_features=True, metablock_groups=64,
                           metablock_group_size=32, metablock_batch_norm=True)  # fmt: skip
    assert feature_channels(net.backbone) == [2048] == [net.backbone.model.feature_info[-1]["num_chs"]]  # last stage
    official = ported_official_metablock(net, 45)
    net.eval()
    image, meta = torch.randn(2, 3, 64, 64), torch.randn(2, 45)
    with torch.no_grad():
        features = resnet_features(net.backbone.model, image)
        assert features.shape[1] == 64 * 32
        expected = official_metablock_head(features, official, 64, net.classifier, meta)
        assert torch.allclose(net(image, meta), expected, atol=1e-5)


def test_group_size_is_checked_against_the_channels_with_the_numbers():
    from lightning_modules.nets.fusion_classifier import FusionClassifier

    # test_resnet's last stage has 96 channels: 8 groups divide it, but not into groups of 32.
    with pytest.raises(ValueError, match=r"metablock_groups=8 x metablock_group_size=32 = 256 channels, but "
                                         r"test_resnet's last stage \(head_features=false\) has 96 \(8 groups of 12\)"):
        FusionClassifier(4, 3, backbone="test_resnet", metablock_groups=8, metablock_group_size=32)
    with pytest.raises(ValueError, match="metablock_group_size needs metablock_groups"):
        FusionClassifier(4, 3, backbone="test_resnet", metablock_group_size=32)
    net = FusionClassifier(4, 3, backbone="test_resnet", metablock_groups=3, metablock_group_size=32)
    assert net.metablock.groups == 3
