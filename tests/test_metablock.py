"""MetaBlock against hand computation, and a public re-implementation's reshape bug it must not have."""

import math

import pytest
import torch

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
    with pytest.raises(ValueError, match="groups must divide"):
        FusionClassifier(4, meta_dim, backbone="test_resnet", metablock_groups=7)
