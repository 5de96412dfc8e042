"""Cascading model-parameter randomisation: the order of the blocks, the similarity measures, and
maps that decorrelate once the model is randomised."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from lightning_modules.explain.maps import compute_maps
from lightning_modules.explain.randomisation import OWN_PARAMETERS, cascade, cascade_blocks, spearman, ssim
from lightning_modules.explain.target import grid_shape
from lightning_modules.nets.abe import ABE
from lightning_modules.nets.attn_vgg import AttnVGG
from lightning_modules.nets.protopnet import ProtoPNet


def run(net):
    return net(torch.zeros(1, 3, 32, 32), torch.zeros(1, 0))


def test_blocks_go_from_the_output_down():
    names = [name for name, _ in cascade_blocks(AttnVGG(2, backbone="resnet10t").eval(), run)]
    assert names[:3] == ["classifier", "attention.1", "attention.0"]
    assert names[3:] == ["backbone.layer4", "backbone.layer3", "backbone.layer2", "backbone.layer1", "backbone.bn1",
                         "backbone.conv1"]  # fmt: skip
    names = [name for name, _ in cascade_blocks(ProtoPNet(2, backbone="resnet10t", feature_stage=-2).eval(), run)]
    # the prototypes sit under the last layer; the add-on Sequential goes one convolution at a time
    assert names[:4] == ["last_layer", OWN_PARAMETERS, "add_on_layers.2", "add_on_layers.0"]
    # ABE-M: G (the embedding head) runs after the learners' attention masks, so it is randomised first
    names = [name for name, _ in cascade_blocks(ABE(backbone="resnet10t", embedding_dim=16, num_learners=2).eval(), run)]
    assert names.index("embedding_head.3") < names.index("embedding_head.0") < names.index("attention.1")
    assert names.index("attention.0") < names.index("spatial.0")


def test_cascade_randomises_cumulatively_and_leaves_the_model_alone():
    torch.manual_seed(0)
    net = AttnVGG(2, backbone="resnet10t").eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    changed = []
    for _, copy in cascade(net, run, seed=0):
        changed.append(sum(not torch.equal(before[k], v) for k, v in copy.state_dict().items()))
    assert changed == sorted(changed) and changed[0] > 0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_spearman_and_ssim_against_scipy_and_skimage():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(3, 4, 4, generator=generator)
    b = a + 0.3 * torch.rand(3, 4, 4, generator=generator)
    b[1, 0, :2] = b[1, 0, 2]  # ties
    expected = [spearmanr(x.flatten(), y.flatten()).statistic for x, y in zip(a.numpy(), b.numpy())]
    assert np.allclose(spearman(a, b).numpy(), expected, atol=1e-6)
    assert spearman(a, a).tolist() == pytest.approx([1.0] * 3)
    assert torch.isnan(spearman(torch.ones(1, 4, 4), a[:1])).all()
    x = torch.rand(2, 8, 8, generator=generator)
    y = torch.rand(2, 8, 8, generator=generator)
    from lightning_modules.utils.images import normalise, upsample

    ours = ssim(x, y, (32, 32)).numpy()
    theirs = [skimage_metrics.structural_similarity(p.numpy(), q.numpy(), data_range=1.0, gaussian_weights=True,
                                                    sigma=1.5, use_sample_covariance=False)
              for p, q in zip(normalise(upsample(x, (32, 32))), normalise(upsample(y, (32, 32))))]  # fmt: skip
    assert np.allclose(ours, theirs, atol=1e-5)
    assert np.allclose(ssim(x, x, (32, 32)).numpy(), 1.0, atol=1e-5)


def test_a_fully_randomised_model_gives_maps_that_decorrelate(one_thread):
    """Every map of the trained model agrees with itself (Spearman 1); once every block is
    randomised, attention and Grad-CAM do not any more (mean Spearman over the images well below
    1). EigenCAM, which follows the activations' main direction whatever the class, stays close
    to its old map: the failure the check exists to show (Adebayo et al.'s edge detectors)."""
    torch.manual_seed(0)
    net = AttnVGG(2, backbone="resnet10t").eval()
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(6, 3, 32, 32, generator=generator)
    meta = torch.zeros(6, 0)
    classes = net(image).argmax(dim=1)
    methods = ["attention", "gradcam", "eigencam"]
    grid = grid_shape(net, image, meta)
    original = compute_maps(net, image, meta, classes, methods, grid)
    for name, m in original.items():
        assert spearman(m, m).nanmean().item() == pytest.approx(1.0)
    *_, (_, randomised) = cascade(net, run, seed=0)
    after = compute_maps(randomised, image, meta, classes, methods, grid)
    rho = {name: spearman(original[name], after[name]).nan_to_num(0.0).mean().item() for name in original}
    assert rho["attn1"] < 0.5 and rho["attn2"] < 0.5 and rho["gradcam"] < 0.5, rho
    assert rho["eigencam"] > 0.5, rho
