"""PGD prototype attack: constraints hold exactly, and the similarity moves the asked way."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.protopnet.attack import prototype_attack
from lightning_modules.nets.protopnet import ProtoPNet

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
EPSILON = 8 / 255


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup():
    """A random test_resnet ProtoPNet (64 px -> 2x2 cells), an image in [0, 1] and a mask on the
    top-left quadrant (in the receptive field of every cell, as for any deep CNN). Prototype 2 is
    set, as a push would, to the latent patch at cell (1, 0) of *another* image."""
    torch.manual_seed(0)
    net = ProtoPNet(3, backbone="test_resnet", prototypes_per_class=2, prototype_dim=16)
    pixels = torch.rand(1, 3, 64, 64)
    image = normalise(pixels)
    with torch.no_grad():
        net.eval()
        net.prototype_vectors[2] = net.latent(normalise(torch.rand(1, 3, 64, 64)))[0, :, 1, 0, None, None]
    net.train()  # the attack must switch to eval and restore this
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[:32, :32] = True
    return net, pixels, image, mask


def normalise(pixels):
    return (pixels - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def attack(setup, mode, target_cell=(1, 0)):
    net, _, image, mask = setup
    return prototype_attack(net, image, prototype=2, region_mask=mask, target_cell=target_cell, mode=mode,
                            epsilon=EPSILON, steps=8, mean=MEAN, std=STD)  # fmt: skip


@pytest.fixture(scope="module")
def raised(setup):
    return attack(setup, "raise")


def test_perturbation_respects_mask_budget_and_pixel_range(setup, raised):
    _, pixels, image, mask = setup
    delta = raised.perturbation
    assert delta.shape == (1, 3, 64, 64)
    assert (delta[..., ~mask] == 0).all()  # exactly zero outside the region
    assert delta[..., mask].abs().max() > 0
    assert raised.linf <= EPSILON and delta.abs().max().item() <= EPSILON
    assert raised.l2 == pytest.approx(delta.flatten().norm().item())
    attacked = pixels + delta
    assert attacked.min() >= -1e-6 and attacked.max() <= 1 + 1e-6  # up to the normalisation round trip
    back = raised.image * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]
    assert torch.allclose(back, attacked, atol=1e-5)  # the returned image is normalised
    assert torch.equal(raised.image[..., ~mask], image[..., ~mask])  # untouched outside, bit for bit


def test_raise_increases_the_similarity_at_the_target_cell(setup, raised):
    net = setup[0]
    assert raised.cell_before == raised.cell_after == (1, 0)
    assert raised.similarity_after > raised.similarity_before + 0.5  # about 6.2 -> 7.5
    assert raised.similarity_map_before[1, 0].item() == pytest.approx(raised.similarity_before)
    # the result agrees with a fresh forward pass on the returned image
    net.eval()
    with torch.no_grad():
        d = net(raised.image).distances[0, 2, 1, 0]
    net.train()
    assert net.distance_to_similarity(d).item() == pytest.approx(raised.similarity_after, rel=1e-4)
    assert net.training and net.backbone.training  # mode restored
    assert all(p.grad is None for p in net.parameters())  # no gradient left on the weights


def test_lower_decreases_the_similarity_at_the_target_cell(setup):
    result = attack(setup, "lower")
    assert result.similarity_after < result.similarity_before - 0.5  # about 6.2 -> 5.1
    assert result.linf <= EPSILON


def test_without_target_cell_the_best_cell_is_attacked(setup):
    result = attack(setup, "lower", target_cell=None)
    before, after = result.similarity_map_before, result.similarity_map_after
    assert result.similarity_before == pytest.approx(before.max().item())
    assert result.cell_before == divmod(int(before.argmax()), 2)
    assert result.similarity_after == pytest.approx(after.max().item())
    assert result.cell_after == divmod(int(after.argmax()), 2)
    assert result.similarity_after < result.similarity_before - 0.5


def test_empty_mask_changes_nothing(setup):
    net, _, image, _ = setup
    empty = torch.zeros(64, 64, dtype=torch.bool)
    result = prototype_attack(net, image, 0, empty, mode="raise", steps=2, mean=MEAN, std=STD)
    assert (result.perturbation == 0).all() and result.linf == 0.0
    assert result.similarity_after == result.similarity_before
    with pytest.raises(ValueError, match="mode"):
        prototype_attack(net, image, 0, empty, mode="up")


def test_paper_objective_raises_the_targets_and_suppresses_the_original_evidence(setup):
    """The paper's first attack: targets (a set of cells) rise while the clean image's
    high-activation cells fall; random start inside the budget; mask and budget still hold."""
    from lightning_modules.protopnet.attack import high_activation_cells, paper_attack

    net, _, image, mask = setup
    net.eval()
    with torch.no_grad():
        clean = net.distance_to_similarity(net(image).distances[0, 2])
    net.train()
    top = divmod(int(clean.argmax()), 2)
    targets = [c for c in [(0, 0), (0, 1), (1, 0), (1, 1)] if c[0] != top[0]]  # the other row
    result = paper_attack(net, image, prototype=2, region_mask=mask, target_cells=targets,
                          epsilon=EPSILON, steps=10, mean=MEAN, std=STD)  # fmt: skip
    assert torch.allclose(result.similarity_map_before, clean)
    suppressed = [c for c in high_activation_cells(clean) if c not in targets]
    assert suppressed == [top]  # the clean image fired there
    assert result.suppressed_before == pytest.approx(float(clean[top]))
    assert result.similarity_before == pytest.approx(sum(float(clean[c]) for c in targets) / 2)
    assert result.similarity_after > result.similarity_before  # the targets rise
    assert result.suppressed_after < result.suppressed_before  # the original evidence falls
    assert (result.perturbation[..., ~mask] == 0).all() and result.linf <= EPSILON
    without = prototype_attack(net, image, 2, mask, targets, epsilon=EPSILON, steps=10, step_size=2 / 255,
                               mean=MEAN, std=STD, random_start=True)  # fmt: skip
    assert result.suppressed_after < float(without.similarity_map_after[top])  # the suppression term lowers it
