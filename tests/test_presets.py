"""The paper presets build and run (one batch each, on the synthetic data, no downloads), so they
never rot."""

from __future__ import annotations

import json

import pytest

import dataset_writers as w
from experiments.train import main as train
from tests.test_experiments import REPO, quick_args

PRESETS = sorted((REPO / "experiments" / "paper").glob("*.yaml"))


@pytest.mark.parametrize("config", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_paper_preset_runs_one_batch(config, tmp_path, synthetic_cache):
    extra = ["--data.dataset=synthetic", "--trainer.fast_dev_run=true", "--model.init_args.pretrained=false",
             "--data.batch_size=8"]  # fmt: skip
    if "abe" in config.stem:
        extra.append("--data.pk_batches=[6, 2]")  # the synthetic data has 6 classes
    if config.stem == "attnmel_paper":  # the paper's data, split and task, as the preset names them
        w.write_isic2017(tmp_path / "isic2017")
        extra = [*extra[1:], f"--data.data_dir={tmp_path / 'isic2017'}", '--data.source_options={"task": "melanoma"}']
    header = config.read_text().splitlines()[:12]
    assert any("reported" in line for line in header) and any("not run to completion" in line for line in header)
    run_dir = train(quick_args(config, tmp_path, synthetic_cache, *extra))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"]["n_images"] > 0 and 0.0 <= metrics["test"]["bacc"] <= 1.0


# -- each preset builds the network the paper's code builds -------------------------------------
# Networks from the preset files (pretrained: false) against transcriptions of the official
# forwards holding the same weights; what each checks is stated in the preset's header.


def preset_net(stem: str, **data):
    """The network a preset configures, built as the CLI would (no download: pretrained=false),
    with the data-dependent arguments (``num_classes``, ``meta_dim``) given."""
    import importlib

    import yaml

    net = yaml.safe_load((REPO / "experiments" / "paper" / f"{stem}.yaml").read_text())["model"]["init_args"]["net"]
    module, _, name = net["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**{**net["init_args"], "pretrained": False, **data})


@pytest.mark.parametrize("stem", ["metablock_pad", "metablock_isic2019"])
def test_metablock_presets_gate_efficientnet_b4s_1792_final_features_in_56_groups_of_32(stem, one_thread):
    """raug's MyEffnet on efficientnet_pytorch's ``extract_features`` (head convolution included):
    1792 features = 56 x 32; the preset's network gives the official logits."""
    import torch

    from tests.test_metablock import effnet_extract_features, official_metablock_head, ported_official_metablock

    torch.manual_seed(0)
    net = preset_net(stem, num_classes=8, meta_dim=45)
    official = ported_official_metablock(net, 45)
    net.eval()
    image, meta = torch.randn(2, 3, 64, 64), torch.randn(2, 45)
    with torch.no_grad():
        features = effnet_extract_features(net.backbone.model, image)
        assert features.shape[1] == 1792 == 56 * 32 and net.metablock.groups == 56
        assert torch.equal(net.backbone(image)[0], features)
        expected = official_metablock_head(features, official, 56, net.classifier, meta)
        assert torch.allclose(net(image, meta), expected, atol=1e-5)


def test_metablock_preset_refuses_efficientnets_last_stage(one_thread):
    """Without the head convolution EfficientNet-B4 ends at 448 channels: 56 groups would be
    groups of 8, which the preset's ``metablock_group_size: 32`` refuses."""
    with pytest.raises(ValueError, match=r"has 448 \(56 groups of 8\)"):
        preset_net("metablock_pad", num_classes=8, meta_dim=45, head_features=False)


def test_protopnet_preset_is_the_reference_resnet34_protopnet(one_thread):
    """cfchen-duke/ProtoPNet (https://github.com/cfchen-duke/ProtoPNet/blob/81bf2b70cb60e4f36e25e8be386eb616b7459321,
    model.py and resnet_features.py), transcribed: ResNet-34 features are conv1 .. layer4 (512
    channels, a 7 x 7 grid at 224 px); the add-on input is the last Conv2d's out_channels (512);
    add-on 'regular' (1x1 conv to 128, ReLU, 1x1 conv, Sigmoid); 10 prototypes of 128 x 1 x 1 per
    class; ``_l2_convolution``, min pooling, log activation, last layer +1 / -0.5."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(0)
    num_classes = 8
    net = preset_net("protopnet_paper", num_classes=num_classes).eval()
    body = net.backbone  # its conv1 .. layer4 are the reference's ``features``
    convs = [m for m in body.modules() if isinstance(m, nn.Conv2d)]
    assert net.add_on_layers[0].in_channels == convs[-1].out_channels == 512
    assert [type(m) for m in net.add_on_layers] == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.Sigmoid]
    assert net.add_on_layers[2].out_channels == 128 and net.prototype_shape == (num_classes * 10, 128, 1, 1)
    own = net.prototype_class_identity.t()
    assert torch.equal(net.last_layer.weight, own - 0.5 * (1 - own))
    image = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        x = body.maxpool(body.act1(body.bn1(body.conv1(image))))
        features = body.layer4(body.layer3(body.layer2(body.layer1(x))))
        assert features.shape[1:] == (512, 7, 7)
        z = net.add_on_layers(features)
        p = net.prototype_vectors
        x2_patch_sum = F.conv2d(z**2, torch.ones_like(p))
        distances = F.relu(x2_patch_sum + (-2 * F.conv2d(z, p) + (p**2).sum(dim=(1, 2, 3)).view(-1, 1, 1)))
        min_distances = -F.max_pool2d(-distances, kernel_size=(7, 7)).view(-1, net.num_prototypes)
        logits = net.last_layer(torch.log((min_distances + 1) / (min_distances + 1e-4)))
        out = net(image)
    assert torch.allclose(out.min_distances, min_distances, rtol=1e-5, atol=1e-5)
    assert torch.allclose(out.logits, logits, rtol=1e-5, atol=1e-4)


def test_attnmel_preset_is_the_reference_attnvgg(one_thread):
    """SaoYan/IPMI2019-AttnMel (https://github.com/SaoYan/IPMI2019-AttnMel/blob/e214a3797a04e66647844e582ee10b4833342759/networks.py),
    ``AttnVGG(attention=True, normalize_attn=False)`` transcribed on the same VGG-16-BN layers
    (``features[0:6]``, ``[7:13]``, ``[14:23]``, ``[24:33]``, ``[34:43]`` with max pooling between):
    attention on pool-3 (256 channels, global feature upsampled x4) and pool-4 (512, x2), sigmoid
    attention, average-pooled attended features, [g, g1, g2] = 1280 -> classifier. At 64 px (the
    reference's fixed x4 / x2 upsampling fits any multiple of 32; its ``AvgPool2d(7)`` is the global
    average of the 7 x 7 pool-5 map at 224 px, written as that average here)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(0)
    net = preset_net("attnmel_paper", num_classes=2).eval()
    layers = [getattr(net.backbone, f"features_{i}") for i in range(43)]
    blocks = [nn.Sequential(*layers[a:b]) for a, b in ((0, 6), (7, 13), (14, 23), (24, 33), (34, 43))]
    assert net.classifier.in_features == 512 + 512 + 256

    def attention(block, up_factor, l, g):  # AttentionBlock.forward with normalize_attn=False
        g_ = F.interpolate(block.W_g(g), scale_factor=up_factor, mode="bilinear", align_corners=False)
        c = block.phi(F.relu(block.W_l(l) + g_))
        a = torch.sigmoid(c)
        return a, F.adaptive_avg_pool2d(a.expand_as(l) * l, (1, 1)).view(l.shape[0], l.shape[1])

    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        pools, x = [], image
        for block in blocks:
            x = F.max_pool2d(block(x), 2, 2)
            pools.append(x)
        pool3, pool4, pool5 = pools[2], pools[3], pools[4]
        assert pool3.shape[1:] == (256, 8, 8) and pool4.shape[1:] == (512, 4, 4) and pool5.shape[1:] == (512, 2, 2)
        g = pool5.mean(dim=(2, 3))
        a1, g1 = attention(net.attention[0], 4, pool3, pool5)
        a2, g2 = attention(net.attention[1], 2, pool4, pool5)
        logits = net.classifier(torch.cat((g, g1, g2), dim=1))
        ours, maps = net.forward_with_attention(image)
    assert torch.allclose(ours, logits, rtol=1e-5, atol=1e-5)
    assert torch.allclose(maps["attn1"], a1[:, 0], atol=1e-6) and torch.allclose(maps["attn2"], a2[:, 0], atol=1e-6)
