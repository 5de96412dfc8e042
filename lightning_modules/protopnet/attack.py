""""This Does Not Look Like That" (Hoffmann et al., 2021): a small perturbation confined to a
region of the image changes how strongly a ProtoPNet prototype fires.

Projected gradient descent with sign steps (Madry et al. 2018) on the prototype's similarity:

- ``paper_attack``: the paper's first attack exactly as its code runs it (``pgd`` and
  ``similarity_score`` in ``src/utils/attack1.py`` of
  https://github.com/fanconic/this-does-not-look-like-that at commit
  77c0e99d61db882fd8c7bb0eb2ddb4e46179556b): raise the mean similarity over a rectangle of
  target cells minus the mean similarity over the cells under the clean image's high-activation
  box, from a uniform random start on the whole image, and return the last iterate;
  ``paper_attack_batch`` runs it on many images at once;
- ``paper_attack_improved``: the same objective with four deliberate changes (its docstring);
- ``prototype_attack``: one cell (or the best cell), raised or lowered from the clean image.

Units: ``epsilon``, ``step_size``, the returned perturbation and its norms are in [0, 1] pixel
units (``8 / 255`` is a typical budget), not in normalised units, whose scale differs per channel.
The network still receives normalised images: ``x_norm = (x - mean) / std``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from lightning_modules.protopnet.pictures import activation_box, upsample_map


@dataclass
class AttackResult:
    image: torch.Tensor  # (1, 3, H, W) perturbed image, normalised like the input (equal to it outside the mask)
    perturbation: torch.Tensor  # (1, 3, H, W) in [0, 1] pixel units, zero outside the mask
    similarity_before: float  # at target_cell, or the maximum over cells
    similarity_after: float
    cell_before: tuple[int, int]  # the cell the similarity was read at
    cell_after: tuple[int, int]
    similarity_map_before: torch.Tensor  # (h, w) similarity of the prototype at every cell
    similarity_map_after: torch.Tensor
    linf: float
    l2: float
    suppressed_before: Optional[float] = None  # the paper objective's suppressed term (see each attack)
    suppressed_after: Optional[float] = None
    target_cells: Optional[list[tuple[int, int]]] = None  # the paper objective's cells
    suppressed_cells: Optional[list[tuple[int, int]]] = None


def _similarity_map(net: nn.Module, image: torch.Tensor, prototype: int) -> torch.Tensor:
    distances = net.distances(net.latent(image))[0, prototype]  # (h, w)
    return net.distance_to_similarity(distances)


def _mean_at(similarity: torch.Tensor, cells: Sequence[tuple[int, int]]) -> torch.Tensor:
    rows, cols = zip(*cells)
    return similarity[list(rows), list(cols)].mean()


def _read(similarity: torch.Tensor, target_cell) -> tuple[torch.Tensor, tuple[int, int]]:
    """The similarity at ``target_cell`` (a cell, or a list of cells: their mean, reported at the
    first), or the maximum over cells."""
    if isinstance(target_cell, list):
        return _mean_at(similarity, target_cell), tuple(target_cell[0])
    if target_cell is not None:
        return similarity[target_cell], tuple(target_cell)
    flat = int(similarity.flatten().argmax())
    return similarity.flatten()[flat], divmod(flat, similarity.shape[1])


def prototype_attack(
    net: nn.Module,
    image: torch.Tensor,
    prototype: int,
    region_mask: torch.Tensor,
    target_cell: Optional[tuple[int, int] | list[tuple[int, int]]] = None,
    mode: str = "raise",
    epsilon: float = 8 / 255,
    steps: int = 40,
    step_size: Optional[float] = None,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
    suppress_cells: Optional[Sequence[tuple[int, int]]] = None,
    random_start: bool = False,
    seed: int = 0,
) -> AttackResult:
    """Raise (``mode="raise"``) or lower (``"lower"``) the similarity of ``prototype`` by
    perturbing only the pixels where ``region_mask`` (H, W) is True.

    ``image`` (1, 3, H, W) is normalised with ``mean``/``std``. ``target_cell`` (row, col) of the
    feature map is the cell whose similarity is attacked; without it, the best cell (recomputed
    every step). ``step_size`` defaults to ``2.5 * epsilon / steps``. The iterate with the best
    objective is returned, so the attack never does worse than the unperturbed image. Pixels that
    are already outside [0, 1] in the input are never pushed further out. The network is run in
    eval mode and its parameters receive no gradient. A mask outside the receptive field of
    ``target_cell`` (``receptive_field.cell_box``) has no effect at all; with ImageNet-depth
    backbones every cell sees most of the image, which is what makes the attack work.

    ``target_cell`` may be a list of cells (their mean similarity is attacked); ``suppress_cells``
    subtracts the mean similarity over those cells from the objective (raised targets, lowered
    original evidence); ``random_start`` begins from a uniform draw inside the budget (seeded by
    ``seed``) instead of the clean image.
    """
    if mode not in ("raise", "lower"):
        raise ValueError(f"mode must be 'raise' or 'lower', got {mode!r}")
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"image must be (1, C, H, W), got {tuple(image.shape)}")
    if region_mask.shape != image.shape[-2:]:
        raise ValueError(f"region_mask {tuple(region_mask.shape)} does not match the image {tuple(image.shape[-2:])}")
    step_size = 2.5 * epsilon / max(steps, 1) if step_size is None else step_size
    sign = 1.0 if mode == "raise" else -1.0

    device, dtype = image.device, image.dtype
    mean_t = torch.as_tensor(mean, device=device, dtype=dtype)[None, :, None, None]
    std_t = torch.as_tensor(std, device=device, dtype=dtype)[None, :, None, None]
    image = image.detach()
    pixels = image * std_t + mean_t  # [0, 1] units, for the range bounds only
    mask = region_mask.to(device=device, dtype=dtype)[None, None]
    # epsilon in the image dtype, rounded down so that ``linf <= epsilon`` holds exactly.
    eps = torch.tensor(epsilon, dtype=dtype)
    if eps.item() > epsilon:
        eps = torch.nextafter(eps, torch.zeros_like(eps))
    epsilon = eps.item()
    # Per-pixel bounds of the perturbation: the epsilon ball intersected with the valid range.
    # For a pixel outside [0, 1] the bound towards the range is kept (it may move inwards only).
    low = (-pixels).clamp(-epsilon, 0.0) * mask
    high = (1.0 - pixels).clamp(0.0, epsilon) * mask

    if isinstance(target_cell, list):  # a set of cells: their mean similarity
        target_cell = [tuple(c) for c in target_cell]

    def objective(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        similarity = _similarity_map(net, image + delta / std_t, prototype)
        value, _ = _read(similarity, target_cell)
        if suppress_cells:
            value = value - _mean_at(similarity, suppress_cells)
        return value, similarity

    training = {m: m.training for m in net.modules()}
    net.eval()
    try:
        delta = torch.zeros_like(pixels)
        if random_start:
            generator = torch.Generator(device="cpu").manual_seed(seed)
            uniform = (torch.rand(pixels.shape, generator=generator, dtype=dtype) * 2 - 1).to(device) * epsilon
            delta = torch.minimum(torch.maximum(uniform, low), high)
        best_value, best_delta = -float("inf"), delta
        for step in range(steps + 1):  # step 0 scores the start (the clean image unless random_start)
            delta.requires_grad_(True)
            value, similarity = objective(delta)
            if step == 0:
                with torch.no_grad():
                    map_before = _similarity_map(net, image, prototype).detach() if random_start else similarity.detach()
            if sign * value.item() > best_value:
                best_value, best_delta = sign * value.item(), delta.detach().clone()
            if step == steps:
                break
            (grad,) = torch.autograd.grad(sign * value, delta)
            with torch.no_grad():
                delta = torch.minimum(torch.maximum(delta + step_size * grad.sign(), low), high)
        with torch.no_grad():
            _, map_after = objective(best_delta)
    finally:
        for m, was_training in training.items():
            m.training = was_training

    before, cell_before = _read(map_before, target_cell)
    after, cell_after = _read(map_after, target_cell)
    return AttackResult(
        image=(image + best_delta / std_t).detach(),
        perturbation=best_delta.detach(),
        similarity_before=float(before),
        similarity_after=float(after),
        cell_before=cell_before,
        cell_after=cell_after,
        similarity_map_before=map_before.detach(),
        similarity_map_after=map_after.detach(),
        linf=float(best_delta.abs().max()),
        l2=float(best_delta.flatten().norm()),
        suppressed_before=float(_mean_at(map_before, suppress_cells)) if suppress_cells else None,
        suppressed_after=float(_mean_at(map_after, suppress_cells)) if suppress_cells else None,
    )


def high_activation_cells(similarity: torch.Tensor, percentile: float = 95.0) -> list[tuple[int, int]]:
    """The cells where a clean image's similarity map reaches its ``percentile`` (at least the
    maximum): where the prototype fired, the evidence the paper's attack suppresses."""
    threshold = torch.quantile(similarity.flatten().float(), percentile / 100)
    return [tuple(c) for c in torch.nonzero(similarity >= threshold).tolist()]


def paper_attack_improved(net: nn.Module, image: torch.Tensor, prototype: int, region_mask: torch.Tensor,
                          target_cells: Sequence[tuple[int, int]], epsilon: float = 8 / 255, steps: int = 40,
                          step_size: float = 2 / 255, percentile: float = 95.0, seed: int = 0,
                          mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                          std: Sequence[float] = IMAGENET_DEFAULT_STD) -> AttackResult:
    """The paper's objective (raise the mean similarity over ``target_cells``, lower it where the
    clean image fired) with four changes from ``paper_attack``:

    - the suppressed cells are those whose latent similarity reaches the clean map's
      ``percentile`` (``high_activation_cells``), not the cells under the upsampled map's
      percentile box, a rectangle that takes in every cell between separate peaks;
    - target cells among them are left out of the suppressed mean, rather than counted as zero;
    - the random start is drawn inside the mask only (the reference adds it to the whole image
      and takes its first gradient there, though the first projection removes it outside);
    - the best iterate is returned (never worse than the start), not the last.

    ``suppressed_before``/``after`` are the mean similarity over the suppressed cells."""
    with torch.no_grad():
        was_training = net.training
        net.eval()
        clean = _similarity_map(net, image.detach(), prototype)
        net.train(was_training)
    targets = [tuple(c) for c in target_cells]
    suppressed = [c for c in high_activation_cells(clean, percentile) if c not in targets]
    result = prototype_attack(net, image, prototype, region_mask, list(targets), mode="raise", epsilon=epsilon,
                              steps=steps, step_size=step_size, mean=mean, std=std, suppress_cells=suppressed,
                              random_start=True, seed=seed)  # fmt: skip
    result.target_cells, result.suppressed_cells = targets, suppressed
    return result


def cell_rectangle(cells: Sequence[tuple[int, int]], grid: tuple[int, int]) -> list[tuple[int, int]]:
    """Every cell of the rectangle spanned by ``cells``, clipped to the ``grid`` (as the reference's
    ``get_all_xy`` turns its target locations into cells)."""
    rows, cols = zip(*cells)
    r0, r1 = max(min(rows), 0), min(max(rows) + 1, grid[0])
    c0, c1 = max(min(cols), 0), min(max(cols) + 1, grid[1])
    return [(r, c) for r in range(r0, r1) for c in range(c0, c1)]


def box_cells(similarity: torch.Tensor, image_size: tuple[int, int], percentile: float = 95.0) -> list[tuple[int, int]]:
    """The cells the reference attack suppresses: the clean similarity map upsampled bicubically
    to the image (``upsample_map``: the same a = -0.75 kernel as the reference's ``cv2.resize``
    with ``INTER_CUBIC``, equal to float rounding), the box of its top ``100 - percentile`` %
    (``activation_box``, its ``find_high_activation_crop``), each edge divided by the cell size
    ``image // grid`` and the end row and column *included* (so a box ending on a cell boundary
    takes the next row or column too), clipped to the grid."""
    h, w = similarity.shape
    y0, y1, x0, x1 = activation_box(upsample_map(similarity.detach(), image_size), percentile)
    step_h, step_w = image_size[0] // h, image_size[1] // w
    rows = range(y0 // step_h, min(y1 // step_h + 1, h))
    cols = range(x0 // step_w, min(x1 // step_w + 1, w))
    return [(r, c) for r in rows for c in cols]


def _paper_terms(similarity: torch.Tensor, targets: list[tuple[int, int]],
                 suppressed: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference objective's two means: over the targets, and over the suppressed cells of
    the map with the targets set to zero (a target inside the box counts as 0 in that mean)."""
    rows, cols = map(list, zip(*targets))
    raised = similarity[rows, cols].mean()
    zeroed = similarity.clone()
    zeroed[rows, cols] = 0
    s_rows, s_cols = map(list, zip(*suppressed))
    return raised, zeroed[s_rows, s_cols].mean()


def paper_attack(net: nn.Module, image: torch.Tensor, prototype: int, region_mask: torch.Tensor,
                 target_cells: Sequence[tuple[int, int]], epsilon: float = 8 / 255, steps: int = 40,
                 step_size: float = 2 / 255, percentile: float = 95.0, seed: int = 0,
                 mean: Sequence[float] = IMAGENET_DEFAULT_MEAN, std: Sequence[float] = IMAGENET_DEFAULT_STD) -> AttackResult:
    """"This Does Not Look Like That"'s first attack, step for step as its ``pgd`` (module
    docstring): on the [0, 1] image ``x`` (``image`` is normalised with ``mean``/``std``),

        targets    = the rectangle spanned by ``target_cells``          (``cell_rectangle``)
        suppressed = the cells under the clean map's percentile box     (``box_cells``)
        objective  = mean(s[targets]) - mean(s'[suppressed]),  s' = s with the targets set to 0
        x_adv      = clamp(x + U(-epsilon, epsilon), 0, 1)       (whole image; seeded by ``seed``)
        ``steps`` times: x_adv += step_size * sign(grad objective) * mask
                         x_adv  = clamp(x + clamp(x_adv - x, -epsilon, epsilon) * mask, 0, 1)

    and the last iterate is the result. ``region_mask`` (H, W) is where pixels may change.
    ``suppressed_before``/``after`` are the objective's second term. The reference's similarity
    function also has a ``linear`` activation branch that uses an undefined ``max_dist``; ProtoPNet's
    ``log`` activation, the only one this network has, is what it computes. Where the reference
    draws its start from the global CUDA generator, a CPU generator seeded with ``seed`` draws it
    here, so that a run can be repeated. Several images at once: :func:`paper_attack_batch`."""
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"image must be (1, C, H, W), got {tuple(image.shape)}")
    if region_mask.shape != image.shape[-2:]:
        raise ValueError(f"region_mask {tuple(region_mask.shape)} does not match the image {tuple(image.shape[-2:])}")
    return paper_attack_batch(net, image, [prototype], region_mask[None], [target_cells], epsilon, steps, step_size,
                              percentile, seed, mean, std)[0]  # fmt: skip


def paper_attack_batch(net: nn.Module, images: torch.Tensor, prototypes: Sequence[int], region_masks: torch.Tensor,
                       target_cells: Sequence[Sequence[tuple[int, int]]], epsilon: float = 8 / 255, steps: int = 40,
                       step_size: float = 2 / 255, percentile: float = 95.0, seed: int = 0,
                       mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                       std: Sequence[float] = IMAGENET_DEFAULT_STD) -> list[AttackResult]:
    """:func:`paper_attack` on ``B`` images at once, image ``i`` with its own ``prototypes[i]``,
    ``region_masks[i]`` (``(B, H, W)``) and ``target_cells[i]``: one forward and backward pass per
    step for the whole batch instead of one per image. The network runs in eval mode, where images
    do not interact (BatchNorm uses its running statistics), so the gradient of the summed
    objectives is each image's own; every image starts from the random draw that
    :func:`paper_attack` with ``seed`` gives a single image. Each result is therefore
    :func:`paper_attack`'s on that image, up to the float rounding of batched kernels (bit for bit
    with one image)."""
    b = len(images)
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
    if len(prototypes) != b or len(target_cells) != b or tuple(region_masks.shape) != (b, *images.shape[-2:]):
        raise ValueError(f"{b} images need {b} prototypes, {b} lists of target cells and region masks of shape "
                         f"{(b, *images.shape[-2:])}; got {len(prototypes)}, {len(target_cells)} and "
                         f"{tuple(region_masks.shape)}")  # fmt: skip
    device, dtype = images.device, images.dtype
    size = tuple(images.shape[-2:])
    mean_t = torch.as_tensor(mean, device=device, dtype=dtype)[:, None, None]
    std_t = torch.as_tensor(std, device=device, dtype=dtype)[:, None, None]
    x = images.detach() * std_t + mean_t  # the [0, 1] pictures the reference attacks
    mask = region_masks.to(device=device, dtype=dtype)[:, None]
    rows = torch.arange(b, device=device)
    chosen = torch.as_tensor([int(p) for p in prototypes], device=device)

    def similarity_of(pixels: torch.Tensor) -> torch.Tensor:  # (B, h, w): image i's map of prototype i
        distances = net.distances(net.latent((pixels - mean_t) / std_t))
        return net.distance_to_similarity(distances[rows, chosen])

    def objective(similarity: torch.Tensor) -> torch.Tensor:
        terms = [_paper_terms(similarity[i], targets[i], suppressed[i]) for i in range(b)]
        return torch.stack([raised - lowered for raised, lowered in terms]).sum()

    training = {m: m.training for m in net.modules()}
    net.eval()
    try:
        with torch.no_grad():
            clean = similarity_of(x)
        grid = tuple(clean.shape[-2:])
        targets = [cell_rectangle([tuple(c) for c in cells], grid) for cells in target_cells]
        suppressed = [box_cells(clean[i], size, percentile) for i in range(b)]
        generator = torch.Generator().manual_seed(seed)
        start = torch.empty((1, *x.shape[1:]), dtype=dtype).uniform_(-epsilon, epsilon, generator=generator).to(device)
        x_adv = torch.clamp(x + start, 0.0, 1.0)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(-objective(similarity_of(x_adv)), x_adv)
            with torch.no_grad():
                x_adv = x_adv - step_size * grad.sign() * mask
                x_adv = x + torch.clamp(x_adv - x, min=-epsilon, max=epsilon) * mask
                x_adv = torch.clamp(x_adv, 0.0, 1.0)
        x_adv = x_adv.detach()
        with torch.no_grad():
            after = similarity_of(x_adv)
    finally:
        for m, was_training in training.items():
            m.training = was_training

    results = []
    for i in range(b):
        perturbation = x_adv[i:i + 1] - x[i:i + 1]
        raised_before, lowered_before = _paper_terms(clean[i], targets[i], suppressed[i])
        raised_after, lowered_after = _paper_terms(after[i], targets[i], suppressed[i])
        results.append(AttackResult(
            image=((x_adv[i:i + 1] - mean_t) / std_t).detach(),
            perturbation=perturbation,
            similarity_before=float(raised_before),
            similarity_after=float(raised_after),
            cell_before=targets[i][0],
            cell_after=targets[i][0],
            similarity_map_before=clean[i],
            similarity_map_after=after[i],
            linf=float(perturbation.abs().max()),
            l2=float(perturbation.flatten().norm()),
            suppressed_before=float(lowered_before),
            suppressed_after=float(lowered_after),
            target_cells=targets[i],
            suppressed_cells=suppressed[i],
        ))  # fmt: skip
    return results
