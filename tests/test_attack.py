"""PGD prototype attacks: constraints hold exactly, the similarity moves the asked way, and the paper's attack
reproduces the reference's steps."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
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


def test_improved_paper_objective_raises_the_targets_and_suppresses_the_original_evidence(setup):
    """``paper_attack_improved``: targets (a set of cells) rise while the clean image's
    high-activation cells fall; random start inside the budget; mask and budget still hold."""
    from lightning_modules.protopnet.attack import high_activation_cells, paper_attack_improved

    net, _, image, mask = setup
    net.eval()
    with torch.no_grad():
        clean = net.distance_to_similarity(net(image).distances[0, 2])
    net.train()
    top = divmod(int(clean.argmax()), 2)
    targets = [c for c in [(0, 0), (0, 1), (1, 0), (1, 1)] if c[0] != top[0]]  # the other row
    result = paper_attack_improved(net, image, prototype=2, region_mask=mask, target_cells=targets,
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


# -- the paper's attack, step for step ----------------------------------------------------------
# A transcription of the reference's steps (https://github.com/fanconic/this-does-not-look-like-that,
# commit 77c0e99d61db882fd8c7bb0eb2ddb4e46179556b: ``pgd`` and ``similarity_score`` in
# src/utils/attack1.py, ``find_high_activation_crop`` and ``get_all_xy`` in src/utils/helpers.py,
# ``ctx_noparamgrad_and_eval`` in src/utils/ct.py), with cfchen-duke/ProtoPNet's network methods
# it calls (``push_forward``, ``_l2_convolution``, ``distance_2_similarity`` in model.py of
# https://github.com/cfchen-duke/ProtoPNet at 81bf2b70cb60e4f36e25e8be386eb616b7459321) holding our
# network's weights. Where the reference cannot run as written, the intended computation:
# ``similarity_score``'s ``linear`` branch adds an undefined ``max_dist`` (unused: the activation
# is ``log``); ``pgd`` takes ``grid=7``, here the map's size; ``uniform_`` draws from a seeded
# generator instead of the global CUDA one; ``.cuda()`` tensors stay on the CPU.


class ReferencePPNet(torch.nn.Module):
    """The reference network's methods the attack calls, on our modules (ported weights)."""

    def __init__(self, net: ProtoPNet):
        super().__init__()
        self.net = net
        self.epsilon = 1e-4
        self.prototype_activation_function = "log"

    def push_forward(self, x):
        conv_output = self.net.add_on_layers(self.net.backbone(x)[-1])
        p = self.net.prototype_vectors
        x2_patch_sum = torch.nn.functional.conv2d(conv_output**2, torch.ones_like(p))
        p2_reshape = torch.sum(p**2, dim=(1, 2, 3)).view(-1, 1, 1)
        intermediate_result = -2 * torch.nn.functional.conv2d(conv_output, p) + p2_reshape
        return conv_output, torch.nn.functional.relu(x2_patch_sum + intermediate_result)

    def distance_2_similarity(self, distances):
        return torch.log((distances + 1) / (distances + self.epsilon))


def find_high_activation_crop(activation_map, percentile=95):
    threshold = np.percentile(activation_map, percentile)
    mask = np.ones(activation_map.shape)
    mask[activation_map < threshold] = 0
    lower_y, upper_y, lower_x, upper_x = 0, 0, 0, 0
    for i in range(mask.shape[0]):
        if np.amax(mask[i]) > 0.5:
            lower_y = i
            break
    for i in reversed(range(mask.shape[0])):
        if np.amax(mask[i]) > 0.5:
            upper_y = i
            break
    for j in range(mask.shape[1]):
        if np.amax(mask[:, j]) > 0.5:
            lower_x = j
            break
    for j in reversed(range(mask.shape[1])):
        if np.amax(mask[:, j]) > 0.5:
            upper_x = j
            break
    return lower_y, upper_y + 1, lower_x, upper_x + 1


def get_all_xy(loc, grid):
    xs, ys = [l[1] for l in loc], [l[0] for l in loc]
    xmin, ymin = max(np.min(xs), 0), max(np.min(ys), 0)
    xmax, ymax = min(np.max(xs) + 1, grid), min(np.max(ys) + 1, grid)
    return [ymin, ymax, xmin, xmax], list(itertools.product(np.arange(ymin, ymax), np.arange(xmin, xmax)))


def similarity_score(ppnet, preprocess_fn, x, pid, loc, act_loc=None, grid=7):
    _, loc = get_all_xy(loc, grid)
    x = preprocess_fn(x.squeeze(0)).unsqueeze(0)
    _, distances = ppnet.push_forward(x)  # (the reference also runs the full forward; its outputs go unused)
    patterns = ppnet.distance_2_similarity(distances)
    sim = torch.zeros(len(loc))
    p_act = patterns[0][pid].clone()
    for i, l in enumerate(loc):
        sim[i] = patterns[0][pid][l[0], l[1]]
        p_act[l[0], l[1]] = 0
    if act_loc is not None:
        act_loc = list(itertools.product(np.arange(act_loc[0], min(act_loc[1] + 1, grid)),
                                         np.arange(act_loc[2], min(act_loc[3] + 1, grid))))  # fmt: skip
        act_sim = torch.zeros(len(act_loc))
        for i, l in enumerate(act_loc):
            act_sim[i] = p_act[l[0], l[1]]
        return torch.mean(sim) - torch.mean(act_sim), act_loc, patterns
    return torch.mean(sim), None, patterns[0]


def reference_pgd(ppnet, x, mask, pid, loc, preprocess_fn, seed, attack_steps=40, attack_lr=2 / 255,
                  attack_eps=8 / 255, clip_min=0.0, clip_max=1.0, grid=7):
    img_size = x.shape[-1]
    for param in ppnet.parameters():  # ctx_noparamgrad_and_eval
        param.requires_grad = False
    ppnet.eval()
    x_adv = x.clone()
    noise = torch.empty_like(x).uniform_(-attack_eps, attack_eps, generator=torch.Generator().manual_seed(seed))
    x_adv = torch.clamp(x_adv + noise, clip_min, clip_max)
    _, _, patterns = similarity_score(ppnet, preprocess_fn, x, pid, loc, grid=grid)
    activation_pattern = patterns[pid].detach().cpu().numpy()
    upsampled = cv2.resize(activation_pattern, dsize=(img_size, img_size), interpolation=cv2.INTER_CUBIC)
    high = find_high_activation_crop(upsampled)
    step = img_size // grid
    act_loc = [high[0] // step, high[1] // step, high[2] // step, high[3] // step]
    for _ in range(attack_steps):
        x_adv.requires_grad = True
        sim_score, act_cells, _ = similarity_score(ppnet, preprocess_fn, x_adv, pid, loc, act_loc=act_loc, grid=grid)
        loss = -sim_score
        loss.backward()
        grad = x_adv.grad.detach().sign()
        x_adv = x_adv - attack_lr * grad * mask
        x_adv = x + torch.clamp(x_adv - x, min=-attack_eps, max=attack_eps) * mask
        x_adv = x_adv.detach()
        x_adv = torch.clamp(x_adv, clip_min, clip_max)
    for param in ppnet.parameters():
        param.requires_grad = True
    return x_adv, x_adv - x, [tuple(int(v) for v in c) for c in act_cells]


@pytest.fixture(scope="module")
def grid7():
    """test_resnet's 1/16 stage at 112 px: the paper's 7 x 7 grid, 16 px cells. Prototype 1 is a
    latent patch of another image, so its map on this one has a clear peak."""
    torch.manual_seed(5)
    net = ProtoPNet(2, backbone="test_resnet", prototypes_per_class=2, prototype_dim=16, feature_stage=-2)
    pixels = torch.rand(1, 3, 112, 112)
    with torch.no_grad():
        net.eval()
        net.prototype_vectors[1] = net.latent(normalise(torch.rand(1, 3, 112, 112)))[0, :, 3, 4, None, None]
    return net, pixels


def test_paper_attack_reproduces_the_reference_pgd(grid7):
    from lightning_modules.protopnet.attack import box_cells, high_activation_cells, paper_attack, paper_attack_improved
    from lightning_modules.protopnet.pictures import upsample_map

    net, pixels = grid7
    image = normalise(pixels)
    with torch.no_grad():
        net.eval()
        clean = net.distance_to_similarity(net(image).distances[0, 1])
    peak = divmod(int(clean.argmax()), 7)
    # Targets: the rectangle from the peak's row to two rows below, one column to its right: it
    # overlaps the suppressed box (the peak), which the reference counts as zero.
    loc = [peak, (min(peak[0] + 2, 6), min(peak[1] + 1, 6))]
    rows = range(min(r for r, _ in loc), max(r for r, _ in loc) + 1)
    cols = range(min(c for _, c in loc), max(c for _, c in loc) + 1)
    region = torch.zeros(112, 112, dtype=torch.bool)
    region[rows[0] * 16:(rows[-1] + 1) * 16, cols[0] * 16:(cols[-1] + 1) * 16] = True  # get_image_patch_position
    mean_t, std_t = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    x = image * std_t + mean_t

    expected_image, expected_delta, act_cells = reference_pgd(
        ReferencePPNet(net), x[0][None], region[None].expand(3, -1, -1), 1, loc,
        lambda t: (t - mean_t) / std_t, seed=3, grid=7)  # fmt: skip
    net.train()
    result = paper_attack(net, image, 1, region, loc, seed=3, mean=MEAN, std=STD)

    # The same cells: the box of the cv2-upsampled map, mapped back with the end row/column included.
    np.testing.assert_allclose(upsample_map(clean, (112, 112)),
                               cv2.resize(clean.numpy(), (112, 112), interpolation=cv2.INTER_CUBIC), atol=1e-6)
    assert result.suppressed_cells == act_cells == box_cells(clean, (112, 112))
    assert peak in result.target_cells and peak in act_cells  # a target inside the box (counted as 0)
    assert act_cells != high_activation_cells(clean)  # the box is not the latent percentile
    # The same perturbation, to float tolerance (here bit for bit), on the whole image.
    assert torch.allclose(result.perturbation, expected_delta, atol=1e-6)
    # The whole-image start is projected away outside the mask by the first step.
    assert result.perturbation.abs().amax() > 7.9 / 255 and (result.perturbation[..., ~region] == 0).all()
    assert torch.allclose(result.image * std_t + mean_t, expected_image, atol=1e-6)
    assert net.training  # mode restored
    # The objective went up (targets raised, the box's evidence lowered).
    assert result.similarity_after - result.suppressed_after > result.similarity_before - result.suppressed_before

    improved = paper_attack_improved(net, image, 1, region, loc, seed=3, mean=MEAN, std=STD)
    assert improved.suppressed_cells == [c for c in high_activation_cells(clean) if c not in loc]
    assert not torch.allclose(improved.perturbation, result.perturbation, atol=1e-3)


def test_the_batched_paper_attack_is_each_images_own(grid7):
    """Three images attacked together (each its own prototype, region and target) end where each
    one's ``paper_attack`` ends: the same pixels changed by the same steps, the same similarities."""
    from lightning_modules.protopnet.attack import paper_attack, paper_attack_batch

    net, _ = grid7
    torch.manual_seed(11)
    images = normalise(torch.rand(3, 3, 112, 112))
    regions = torch.zeros(3, 112, 112, dtype=torch.bool)
    regions[0, :16, :16] = regions[1, 48:80, 32:48] = regions[2, 96:, 96:] = True
    prototypes, targets = [1, 0, 1], [[(0, 0)], [(3, 2), (4, 2)], [(6, 6)]]
    net.train()
    together = paper_attack_batch(net, images, prototypes, regions, targets, steps=10, seed=4, mean=MEAN, std=STD)
    assert net.training  # mode restored
    for i, result in enumerate(together):
        alone = paper_attack(net, images[i:i + 1], prototypes[i], regions[i], targets[i], steps=10, seed=4,
                             mean=MEAN, std=STD)  # fmt: skip
        assert result.target_cells == alone.target_cells and result.suppressed_cells == alone.suppressed_cells
        assert torch.allclose(result.perturbation, alone.perturbation, atol=1e-6)
        assert (result.perturbation[..., ~regions[i]] == 0).all() and result.perturbation.abs().amax() > 0
        assert result.similarity_after == pytest.approx(alone.similarity_after, abs=1e-5)
        assert result.similarity_before == pytest.approx(alone.similarity_before, abs=1e-5)
    with pytest.raises(ValueError, match="3 images need 3 prototypes"):
        paper_attack_batch(net, images, [1, 0], regions, targets)
