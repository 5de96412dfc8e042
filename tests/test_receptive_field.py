"""Receptive fields against hand derivations.

Notation: (j, r, start) = jump, size, centre of cell 0, in input pixels (pixel i spans [i, i+1)).
A layer (kernel k, dilation d, stride s, padding p; k_eff = d (k - 1) + 1) maps
    j -> j s,   r -> r + (k_eff - 1) j,   start -> start + ((k_eff - 1) / 2 - p) j,
starting from the image's (1, 1, 0.5).
"""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.protopnet.receptive_field import cell_box, receptive_field, receptive_fields


def meta_backbone(name: str, **kwargs) -> nn.Module:
    """A timm features_only model without allocating or initialising weights."""
    with torch.device("meta"):
        return timm.create_model(name, features_only=True, pretrained=False, **kwargs)


def chain(pool: nn.Module) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 2, kernel_size=3, stride=1, padding=1),
        pool,
        nn.Conv2d(2, 2, kernel_size=5, stride=2, padding=0),
        nn.Conv2d(2, 2, kernel_size=3, stride=1, padding=2, dilation=2),
        nn.AvgPool2d(kernel_size=3, stride=2, padding=1),
    )


def test_hand_built_chain():
    # conv k3 s1 p1        : r = 1 + 2*1  = 3,   j = 1, start = 0.5 + (1 - 1)*1   = 0.5
    # maxpool k2 s2        : r = 3 + 1*1  = 4,   j = 2, start = 0.5 + (0.5 - 0)*1 = 1.0
    # conv k5 s2 p0        : r = 4 + 4*2  = 12,  j = 4, start = 1.0 + (2 - 0)*2   = 5.0
    # conv k3 d2 p2 (k_eff 5): r = 12 + 4*4 = 28, j = 4, start = 5.0 + (2 - 2)*4  = 5.0
    # avgpool k3 s2 p1     : r = 28 + 2*4 = 36,  j = 8, start = 5.0 + (1 - 1)*4   = 5.0
    # sizes at 64 px: 64 -> 32 -> (32-5)//2+1 = 14 -> 14 -> (14+2-3)//2+1 = 7
    rf = receptive_field(chain(nn.MaxPool2d(2, 2)), image_size=64, in_chans=1)
    assert rf.n == (7, 7)
    assert rf.jump == (8, 8) and rf.size == (36, 36) and rf.start == (5.0, 5.0)
    assert rf.global_context == ()
    # cell (0, 0): [5 - 18, 5 + 18) = [-13, 23) -> clipped (0, 23)
    assert cell_box(rf, 0, 0) == (0, 23, 0, 23)
    # cell (6, 2): rows centred at 5 + 6*8 = 53 -> [35, 71) -> (35, 64); cols 5 + 16 = 21 -> [3, 39)
    assert cell_box(rf, 6, 2) == (35, 64, 3, 39)
    with pytest.raises(IndexError):
        cell_box(rf, 7, 0)


def test_gradient_support_equals_the_computed_field():
    """Independent check: with positive weights and only linear layers, the input pixels that
    influence a cell are exactly its receptive field."""
    net = chain(nn.AvgPool2d(2, 2))
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.constant_(m.weight, 1.0)
            nn.init.zeros_(m.bias)
    rf = receptive_field(net, image_size=64, in_chans=1)
    x = torch.ones(1, 1, 64, 64, requires_grad=True)
    net(x)[0, 0, 3, 3].backward()
    rows = torch.nonzero(x.grad[0, 0].abs().sum(1)).flatten()
    cols = torch.nonzero(x.grad[0, 0].abs().sum(0)).flatten()
    # centre 5 + 3*8 = 29, size 36: pixels 11 .. 46
    assert cell_box(rf, 3, 3) == (11, 47, 11, 47)
    assert (rows.min().item(), rows.max().item() + 1) == (11, 47)
    assert (cols.min().item(), cols.max().item() + 1) == (11, 47)


class Residual(nn.Module):
    def __init__(self, shortcut: nn.Module, main: nn.Module):
        super().__init__()
        self.main, self.shortcut = main, shortcut

    def forward(self, x):
        return self.main(x) + self.shortcut(x)


def test_residual_branches_are_parallel_not_serial():
    # main: conv k3 s2 p1 (r 3, j 2, start 0.5), conv k3 s1 p1 (r 3 + 2*2 = 7, j 2, start 0.5)
    # shortcut: 1x1 stride 2 (r 1, j 2, start 0.5) -> the union is the main path.
    # A walk over named_modules() would apply the 1x1 stride-2 conv after the main path: j = 4.
    block = Residual(
        shortcut=nn.Conv2d(1, 1, 1, stride=2),
        main=nn.Sequential(nn.Conv2d(1, 1, 3, stride=2, padding=1), nn.Conv2d(1, 1, 3, padding=1)),
    )
    rf = receptive_field(block, image_size=16, in_chans=1)
    assert rf.n == (8, 8) and rf.jump == (2, 2) and rf.size == (7, 7) and rf.start == (0.5, 0.5)


def test_merge_takes_the_union_of_regions():
    # main: 1x1 stride 2 -> cell 0 covers [0, 1); shortcut: avgpool 2x2 s2 -> [0, 2)
    # union [0, 2): r = 2, start = 1.0 (neither branch alone is the answer if they were offset;
    # here the pool contains the conv).
    rf = receptive_field(Residual(nn.AvgPool2d(2, 2), nn.Conv2d(1, 1, 1, stride=2)), image_size=8, in_chans=1)
    assert rf.jump == (2, 2) and rf.size == (2, 2) and rf.start == (1.0, 1.0)
    # Offset branches: main = crop the last 2 rows/cols, 3x3 s2 conv -> cell 0 covers [0, 3);
    # shortcut = crop the first 2 rows/cols (start 0.5 + 2 = 2.5), 3x3 s2 conv -> [2, 5).
    # Union [0, 5): r = 5, start = 2.5. 11 px -> 9 px -> (9 - 3) // 2 + 1 = 4 cells each.
    main = nn.Sequential(Crop(end=-2), nn.Conv2d(1, 1, 3, stride=2))
    shortcut = nn.Sequential(Crop(begin=2), nn.Conv2d(1, 1, 3, stride=2))
    rf = receptive_field(Residual(shortcut, main), image_size=11, in_chans=1)
    assert rf.n == (4, 4) and rf.jump == (2, 2) and rf.size == (5, 5) and rf.start == (2.5, 2.5)


class Crop(nn.Module):
    def __init__(self, begin: int = 0, end=None):
        super().__init__()
        self.begin, self.end = begin, end

    def forward(self, x):
        return x[:, :, self.begin : self.end, self.begin : self.end]


def test_resnets_at_224():
    # ResNet-18: conv 7x7 s2 (r 7, j 2), maxpool 3x3 s2 (r 7 + 2*2 = 11, j 4);
    # layer1: 4 convs 3x3 (+2*4 each): 43; layer2: 3x3 s2 (+8 -> 51, j 8) + 3 convs (+16 each): 99;
    # layer3: +16 -> 115 (j 16), + 3*32 -> 211; layer4: +32 -> 243 (j 32), + 3*64 -> 435.
    # ResNet-50 (timm = torchvision v1.5: the stride sits on the 3x3 conv of a bottleneck,
    # 1x1 convs add nothing): after the stem 11 (j 4); layer1: 3 blocks +8 each -> 35;
    # layer2: +8 (s2, j 8) + 3*16 -> 91; layer3: +16 (j 16) + 5*32 -> 267;
    # layer4: +32 (j 32) + 2*64 -> 427. Every padding is (k - 1) / 2, so start stays 0.5.
    fields = {}
    for name, size in (("resnet18", 435), ("resnet50", 427)):
        rf = fields[name] = receptive_field(meta_backbone(name, out_indices=(-1,)), image_size=224)
        assert rf.n == (7, 7) and rf.jump == (32, 32), name
        assert rf.size == (size, size) and rf.start == (0.5, 0.5), name
    # The reference's own ResNet-18 example: cell (0, 0) spans [0.5 - 217.5, 0.5 + 217.5) -> [0, 218).
    assert cell_box(fields["resnet18"], 0, 0) == (0, 218, 0, 218)
    # ResNet-50 cell (0, 6): rows [0.5 - 213.5, 0.5 + 213.5) = [-213, 214); cols centred on
    # 0.5 + 6*32 = 192.5: [-21, 406). Clipped: (0, 214, 0, 224).
    assert cell_box(fields["resnet50"], 0, 6) == (0, 214, 0, 224)
    # Stride-2 3x3 convs with padding 1 on even inputs sample the top-left: centre cell (3, 3)
    # is centred on 0.5 + 96 = 96.5, not on 112, but its 427-pixel field covers the image.
    assert fields["resnet50"].centre(3, 3) == (96.5, 96.5)
    assert cell_box(fields["resnet50"], 3, 3) == (0, 224, 0, 224)


def test_vgg16_pool5_and_conv5():
    # Pairs of 3x3/p1 convs grow r by 2j each; 2x2/s2 pools by j and shift start by j/2.
    # conv1_1-2: 5 (j 1); pool1: 6 (j 2, start 1); conv2_x: 14; pool2: 16 (j 4, start 2);
    # conv3_x: 40; pool3: 44 (j 8, start 4); conv4_x: 92; pool4: 100 (j 16, start 8);
    # conv5_x: 196; pool5: 212 (j 32, start 16).
    fields = receptive_fields(meta_backbone("vgg16"), image_size=224)
    conv5, pool5 = fields[-2], fields[-1]
    assert conv5.n == (14, 14) and conv5.jump == (16, 16) and conv5.size == (196, 196) and conv5.start == (8, 8)
    assert pool5.n == (7, 7) and pool5.jump == (32, 32) and pool5.size == (212, 212) and pool5.start == (16, 16)
    # VGG is symmetric at 224 px: the centre cell is centred, 112 +- 106.
    assert cell_box(pool5, 3, 3) == (6, 218, 6, 218)
    y0, y1, x0, x1 = cell_box(conv5, 7, 7)  # even map: cell 7 is just below the middle
    assert (y0, y1) == (8 + 7 * 16 - 98, 8 + 7 * 16 + 98) == (22, 218)


def test_dynamic_same_padding_and_channels_last_blocks():
    # tf_efficientnet pads like TensorFlow: a 3x3 stride-2 conv on 224 px pads 0 before and 1
    # after, so cell 0 is centred on pixel 1 (start 1.5 instead of 0.5); the stage-0 block is a
    # 3x3 depthwise conv (r = 3 + 2*2 = 7). Its SE gate (a spatial mean) is reported.
    rf = receptive_field(meta_backbone("tf_efficientnet_b0", out_indices=(0,)), image_size=224)
    assert rf.n == (112, 112) and rf.jump == (2, 2) and rf.size == (7, 7) and rf.start == (1.5, 1.5)
    assert "aten.mean" in rf.global_context
    # ConvNeXt-T runs LayerNorm and its MLP (nn.Linear on a (B*H*W, C) view) channels-last:
    # stem 4x4 s4 (r 4, j 4, start 0.5 + 1.5*1 = 2) + 3 blocks of 7x7 depthwise (+6*4 each) = 76.
    rf = receptive_field(meta_backbone("convnext_tiny", out_indices=(0,)), image_size=224)
    assert rf.n == (56, 56) and rf.jump == (4, 4) and rf.size == (76, 76) and rf.start == (2, 2)


def test_real_run_matches_meta_run_and_restores_modes():
    net = timm.create_model("test_resnet", features_only=True, pretrained=False, out_indices=(-1,))
    net.train()
    net.layer1.eval()  # e.g. a frozen part: its mode must survive
    on_meta = receptive_field(net, image_size=64)
    for_real = receptive_field(net, image_size=64, device=None)
    assert on_meta == for_real
    assert net.training and not net.layer1.training and net.layer2.training


class ChannelShuffle(nn.Module):
    """ShuffleNet's shuffle: 5-D view, transpose of the channel groups, view back."""

    def forward(self, x):
        b, c, h, w = x.shape
        return x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)


class UnregisteredScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.full((1, 4, 1, 1), 2.0)  # a plain attribute: not moved to meta

    def forward(self, x):
        return x * self.scale


def test_views_and_plain_tensors_keep_the_geometry():
    # conv 3x3 (r 3) -> shuffle -> conv 3x3 s2 (r 3 + 2 = 5, j 2) -> scale (no change)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), ChannelShuffle(), nn.Conv2d(4, 4, 3, stride=2, padding=1), UnregisteredScale()
    )
    rf = receptive_field(net, image_size=16, in_chans=1)  # meta fails on the attribute: real run
    assert rf.n == (8, 8) and rf.jump == (2, 2) and rf.size == (5, 5) and rf.start == (0.5, 0.5)


class RadixSum(nn.Module):
    """ResNeSt-style split attention: a conv producing 2 groups, summed over the group axis."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 5, padding=2)

    def forward(self, x):
        y = self.conv(x)
        return y.view(y.shape[0], 2, 2, *y.shape[2:]).sum(dim=1)


class Scrambled(nn.Module):
    """A residual branch whose cells are shuffled by a space-to-depth style reshape."""

    def forward(self, x):
        b, c, h, w = x.shape
        shuffled = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c, h, w)
        return x + shuffled


def test_non_spatial_reductions_keep_cells_and_unknown_branches_are_not_dropped():
    # The 5x5 conv's radix sum must not be mistaken for global pooling (or the field would come
    # from the 1x1 shortcut alone): union of r = 5 and r = 1 is 5.
    block = Residual(shortcut=nn.Conv2d(1, 2, 1), main=RadixSum())
    rf = receptive_field(block, image_size=8, in_chans=1)
    assert rf.size == (5, 5) and rf.jump == (1, 1) and rf.global_context == ()
    # A branch the tracer cannot follow poisons the merge instead of being ignored.
    with pytest.raises(ValueError, match="lost its spatial geometry"):
        receptive_field(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), Scrambled()), image_size=8, in_chans=1)


def test_unsupported_ops_raise():
    class Upsampler(nn.Module):
        def forward(self, x):
            return F.interpolate(x, scale_factor=2.0)

    with pytest.raises(NotImplementedError, match="upsample"):
        receptive_field(nn.Sequential(nn.Conv2d(1, 1, 3), Upsampler()), image_size=16, in_chans=1)
    with pytest.raises(ValueError, match="lost its spatial geometry"):
        receptive_field(nn.Sequential(nn.Conv2d(1, 1, 3), nn.AdaptiveAvgPool2d(1)), image_size=16, in_chans=1)
