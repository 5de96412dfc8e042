"""Score every map a trained model offers over a split: localisation against lesion masks,
faithfulness (deletion, insertion, ROAD), the randomisation sanity check and, for ProtoPNet, the
"this does not look like that" attack.

    results = explain_model(module, batches, Settings(road_images=32))
    results.scores          # JSON-ready: per map, per metric; curves; randomisation; attack
    results.examples        # the first images, masks and maps (for figures)

Every map explains the class the model predicts on the clean image. The baselines (``uniform``,
``centre``, ``random``; :mod:`~lightning_modules.explain.baselines`) are scored beside the maps:
the localisation scores against all three, the faithfulness scores against ``random``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Optional, Sequence

import torch
from tqdm.auto import tqdm

from lightning_modules.contracts import PredictsClasses, PrototypeNet
from lightning_modules.explain.attack_success import attack_images
from lightning_modules.explain.attention import attention_names
from lightning_modules.explain.baselines import CENTRE_SIGMA, centre_map, random_map, uniform_map
from lightning_modules.explain.deletion import BLUR_SIGMA, STEPS, area, blurred, curves, end_points
from lightning_modules.explain.integrated_gradients import STEPS as IG_STEPS
from lightning_modules.explain.localisation import LOCALISATION, pointing_tolerance
from lightning_modules.explain.maps import METHODS, compute_maps, offered
from lightning_modules.explain.randomisation import DATA_RANDOMISATION, cascade, spearman, ssim
from lightning_modules.explain.road import FRACTIONS, road
from lightning_modules.explain.target import ClassScores, grid_shape

CHECKS = ("localisation", "deletion", "road", "randomisation", "attack")
BASELINES = ("uniform", "centre", "random")
#: Baselines that a faithfulness curve is drawn for (the uniform and centre maps order nothing).
FAITHFULNESS_BASELINES = ("random",)


@dataclass
class Settings:
    """What to score and how much of it. ``None`` image counts mean every image."""

    methods: Sequence[str] = METHODS
    checks: Sequence[str] = CHECKS
    steps: int = STEPS  # deletion / insertion steps
    blur_sigma: float = BLUR_SIGMA  # the deletion substrate's blur, fraction of the side
    road_fractions: Sequence[float] = FRACTIONS
    road_images: Optional[int] = 16  # ROAD solves a sparse system per image, fraction and order
    sanity_images: Optional[int] = 8  # each randomisation step recomputes every map
    attack_images: Optional[int] = 64  # 40 PGD steps per image
    attack_batch: int = 32  # images attacked together (one forward and backward pass per step for all)
    attack_epsilon: float = 8 / 255
    attack_steps: int = 40
    attack_step_size: float = 2 / 255
    ig_steps: int = IG_STEPS
    examples: int = 6
    seed: int = 0
    chunk: int = 512  # images per forward pass in the deletion curves
    normalize_mean: Sequence[float] = (0.485, 0.456, 0.406)  # the data's normalisation (the attack's budget
    normalize_std: Sequence[float] = (0.229, 0.224, 0.225)  # is in [0, 1] pixel units)

    def __post_init__(self):
        unknown = sorted(set(self.checks) - set(CHECKS))
        if unknown:
            raise ValueError(f"unknown check(s) {unknown}; choose from {list(CHECKS)}")


@dataclass
class Explanations:
    scores: dict[str, Any]
    examples: dict[str, Any] = field(default_factory=dict)


class _Scores:
    """Per-image values of every (map, metric), and summed curves."""

    def __init__(self):
        self.values: dict[str, dict[str, list[torch.Tensor]]] = {}
        self.curves: dict[str, dict[str, list[torch.Tensor]]] = {}

    def add(self, name: str, metric: str, values: torch.Tensor) -> None:
        self.values.setdefault(name, {}).setdefault(metric, []).append(values.detach().float().cpu())

    def add_curve(self, name: str, kind: str, values: torch.Tensor) -> None:
        self.curves.setdefault(name, {}).setdefault(kind, []).append(values.detach().float().cpu())

    @staticmethod
    def mean(parts: list[torch.Tensor]) -> Optional[float]:
        values = torch.cat(parts)
        values = values[~values.isnan()]
        return float(values.mean()) if len(values) else None

    def summary(self) -> dict[str, dict[str, Optional[float]]]:
        return {name: {metric: self.mean(parts) for metric, parts in metrics.items()}
                for name, metrics in self.values.items()}  # fmt: skip

    def mean_curves(self) -> dict[str, dict[str, list[float]]]:
        return {name: {kind: [round(float(v), 6) for v in torch.cat(parts).nanmean(dim=0)] for kind, parts in kinds.items()}
                for name, kinds in self.curves.items()}  # fmt: skip


def _kind(name: str, net) -> str:
    if name in BASELINES:
        return "baseline"
    return "attention" if name in attention_names(net) else "post-hoc"


def explain_model(module, batches: Iterable[dict], settings: Settings = Settings(), total: Optional[int] = None,
                  progress: bool = True) -> Explanations:
    """Scores of every map ``module``'s network offers over ``batches`` (dicts with ``image``,
    ``meta`` and, for localisation, ``mask``); ``total``: the number of batches (progress bar)."""
    net = module.net.eval()
    classifies = isinstance(module, PredictsClasses)
    methods = offered(net, classifies, settings.methods)
    checks = [c for c in settings.checks if c != "attack" or isinstance(net, PrototypeNet)]
    if not classifies:
        checks = [c for c in checks if c not in ("deletion", "road", "attack")]
    model = ClassScores(net).eval()
    generator = torch.Generator().manual_seed(settings.seed)
    scores, road_scores = _Scores(), _Scores()
    kept: dict[str, list[torch.Tensor]] = {"image": [], "meta": [], "classes": [], "mask": []}
    seconds: dict[str, float] = {"maps": 0.0, "localisation": 0.0, "deletion": 0.0, "road": 0.0}
    n_images, with_masks, grid, image_size = 0, 0, None, None

    bar = tqdm(batches, total=total, desc="explain: maps, localisation, deletion", unit="batch", disable=not progress)
    for batch in bar:
        device = next(net.parameters()).device
        image, meta = batch["image"].to(device), batch["meta"].to(device)
        mask = batch.get("mask")
        if grid is None:
            grid, image_size = grid_shape(net, image, meta), tuple(image.shape[-2:])
        b = len(image)
        with torch.no_grad():
            classes = model(image, meta).argmax(dim=1) if classifies else None
        start = time.perf_counter()
        maps = compute_maps(net, image, meta, classes, methods, grid, settings.ig_steps)
        maps.update(uniform=uniform_map(b, grid), centre=centre_map(b, grid), random=random_map(b, grid, generator))
        seconds["maps"] += time.perf_counter() - start

        start = time.perf_counter()
        if mask is not None and "localisation" in checks:
            with_masks += b
            for name, m in maps.items():
                for metric, score in LOCALISATION.items():
                    scores.add(name, metric, score(m, mask.cpu()))
        seconds["localisation"] += time.perf_counter() - start

        faithful = {n: m for n, m in maps.items() if n not in BASELINES or n in FAITHFULNESS_BASELINES}
        if "deletion" in checks:
            start = time.perf_counter()
            substrate = blurred(image, settings.blur_sigma)
            ends = end_points(model, image, meta, classes, substrate, settings.chunk)
            for name, m in faithful.items():
                result = curves(model, image, meta, classes, m, generator, substrate, settings.steps, settings.chunk,
                                ends)  # fmt: skip
                for kind, curve in result.items():
                    scores.add(name, f"{kind}_auc", area(curve))
                    scores.add_curve(name, kind, curve)
            seconds["deletion"] += time.perf_counter() - start

        room = b if settings.road_images is None else max(0, min(b, settings.road_images - n_images))
        if "road" in checks and room:
            start = time.perf_counter()
            part = slice(0, room)
            for name, m in faithful.items():
                result = road(model, image[part], meta[part], classes[part], m[part], generator,
                              settings.road_fractions, settings.seed)  # fmt: skip
                for kind, values in result.items():
                    road_scores.add(name, f"road_{kind}", values.mean(dim=1))
                    road_scores.add_curve(name, kind, values)
                road_scores.add(name, "road", (result["lerf"] - result["morf"]).mean(dim=1) / 2)
            seconds["road"] += time.perf_counter() - start

        kept["image"].append(image.cpu())
        kept["meta"].append(meta.cpu())
        if classes is not None:
            kept["classes"].append(classes.cpu())
        if mask is not None:
            kept["mask"].append(mask.cpu())
        if n_images < settings.examples:
            take = min(b, settings.examples - n_images)
            for name, m in maps.items():
                kept.setdefault(f"map:{name}", []).append(m[:take])
        n_images += b
    if not n_images:
        raise ValueError("no images to explain")

    images = torch.cat(kept["image"])
    metas = torch.cat(kept["meta"])
    classes_all = torch.cat(kept["classes"]) if kept["classes"] else None
    summary = scores.summary()
    for name, values in road_scores.summary().items():
        summary.setdefault(name, {}).update(values)
    maps_out = {name: {"kind": _kind(name, net), **values} for name, values in summary.items()}
    result: dict[str, Any] = {
        "images": n_images,
        "images_with_masks": with_masks,
        "image_size": list(image_size),
        "grid": list(grid),
        "explained_class": "predicted" if classifies else None,
        "methods": methods,
        "checks": checks,
        "settings": {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in asdict(settings).items()},
        "pointing_tolerance_px": round(pointing_tolerance(max(image_size)), 3),
        "centre_sigma": CENTRE_SIGMA,
        "maps": maps_out,
        "curves": {"fractions": [k / settings.steps for k in range(settings.steps + 1)], **scores.mean_curves()},
    }
    if "road" in checks:
        result["road"] = {"images": min(n_images, settings.road_images or n_images),
                          "fractions": list(settings.road_fractions), **road_scores.mean_curves()}  # fmt: skip
    if not classifies:
        result["not_scored"] = {"faithfulness": f"{type(net).__name__} gives no class scores: no deletion, insertion, "
                                                "ROAD or class-explaining post-hoc maps"}  # fmt: skip
    if "randomisation" in checks:
        start = time.perf_counter()
        count = n_images if settings.sanity_images is None else min(n_images, settings.sanity_images)
        result["randomisation"] = randomisation_check(
            net, images[:count], metas[:count], None if classes_all is None else classes_all[:count], methods, grid,
            settings, progress)  # fmt: skip
        seconds["randomisation"] = time.perf_counter() - start
    if "attack" in checks:
        start = time.perf_counter()
        count = n_images if settings.attack_images is None else min(n_images, settings.attack_images)
        result["attack"] = attack_check(net, images[:count], metas[:count], settings, progress)
        seconds["attack"] = time.perf_counter() - start
    result["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    examples = {"image": images[:settings.examples],
                "mask": torch.cat(kept["mask"])[:settings.examples] if kept["mask"] else None,
                "maps": {k[4:]: torch.cat(v) for k, v in kept.items() if k.startswith("map:")}}  # fmt: skip
    return Explanations(scores=result, examples=examples)


def randomisation_check(net, image: torch.Tensor, meta: torch.Tensor, classes: Optional[torch.Tensor],
                        methods: Sequence[str], grid: tuple[int, int], settings: Settings,
                        progress: bool = True) -> dict[str, Any]:
    """Spearman and SSIM of every map with the trained network's, after each block randomised."""
    original = compute_maps(net, image, meta, classes, methods, grid, settings.ig_steps)
    size = tuple(image.shape[-2:])
    blocks: list[str] = []
    per_map: dict[str, dict[str, list[Optional[float]]]] = {n: {"spearman": [], "ssim": []} for n in original}
    run = lambda copy: copy(image[:1], meta[:1])  # noqa: E731
    steps = cascade(net, run, settings.seed)
    for block, randomised in tqdm(steps, desc="explain: randomisation", unit="block", disable=not progress):
        blocks.append(block)
        maps = compute_maps(randomised, image, meta, classes, methods, grid, settings.ig_steps)
        for name, before in original.items():
            rho = spearman(before, maps[name])
            rho = rho[~rho.isnan()]
            per_map[name]["spearman"].append(round(float(rho.mean()), 4) if len(rho) else None)
            per_map[name]["ssim"].append(round(float(ssim(before, maps[name], size).mean()), 4))
    return {"images": len(image), "blocks": blocks, "maps": per_map, "data_randomisation": DATA_RANDOMISATION}


def attack_check(net, image: torch.Tensor, meta: torch.Tensor, settings: Settings, progress: bool = True) -> dict:
    """Success rate of the "this does not look like that" attack and the mean change in the
    probability of the predicted class, over the images."""
    outcomes = []
    chunk = max(1, settings.attack_batch)
    for start in tqdm(range(0, len(image), chunk), desc="explain: ProtoPNet attack", unit="batch", disable=not progress):
        part = slice(start, start + chunk)
        outcomes += attack_images(net, image[part], meta[part], settings.attack_epsilon, settings.attack_steps,
                                  settings.attack_step_size, settings.normalize_mean, settings.normalize_std,
                                  settings.seed)  # fmt: skip
    n = len(outcomes)
    mean = lambda values: sum(values) / n if n else math.nan  # noqa: E731
    return {
        "images": n,
        "success_rate": mean([float(o.success) for o in outcomes]),
        "probability_change": mean([o.probability_after - o.probability_before for o in outcomes]),
        "similarity_clean_top": mean([o.similarity_clean_top for o in outcomes]),
        "similarity_region_before": mean([o.similarity_region_before for o in outcomes]),
        "similarity_region_after": mean([o.similarity_region_after for o in outcomes]),
        "epsilon": settings.attack_epsilon,
        "steps": settings.attack_steps,
        "region": "the grid cell farthest from the top prototype's clean top cell (one cell's pixel box)",
    }
