"""The scores of :func:`~lightning_modules.explain.suite.explain_model` as a Markdown table and
figures (RGB arrays): example maps over their images with the lesion outlined, the mean
deletion / insertion curves, and the randomisation curves."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from lightning_modules.explain.localisation import dilate  # noqa: E402
from lightning_modules.utils.images import denormalise, grid, normalise, overlay, upsample  # noqa: E402
from lightning_modules.utils.plots import figure_to_array  # noqa: E402

#: (key, column title): the table's score columns; arrows say which way is better.
COLUMNS = (
    ("lesion_mass", "lesion mass ↑"),
    ("pointing_game", "pointing game ↑"),
    ("rank_accuracy", "rank accuracy ↑"),
    ("deletion_auc", "deletion AUC ↓"),
    ("insertion_auc", "insertion AUC ↑"),
    ("road", "ROAD ↑"),
    ("spearman", "Spearman, randomised ↓"),
    ("ssim", "SSIM, randomised ↓"),
)
KIND_ORDER = {"attention": 0, "post-hoc": 1, "baseline": 2}


def ordered_maps(scores: dict[str, Any]) -> list[str]:
    """Attention maps first, then the post-hoc methods, then the baselines (each in scoring order)."""
    names = list(scores["maps"])
    return sorted(names, key=lambda n: (KIND_ORDER[scores["maps"][n]["kind"]], names.index(n)))


def final_randomisation(scores: dict[str, Any], name: str) -> dict[str, Optional[float]]:
    """Spearman and SSIM of ``name`` with the trained map once every block is randomised."""
    check = scores.get("randomisation", {}).get("maps", {}).get(name)
    if not check:
        return {}
    return {key: values[-1] if values else None for key, values in check.items()}


#: The few scores a table of models shows (``make compare``): (title, map, key). "attention" is the
#: network's first own map (AttnVGG's attn1, soft attention's map, ProtoPNet's top-prototype map,
#: ABE-M's first learner mask), so one column holds every model's.
HEADLINE = (
    ("pointing game: attention", "attention", "pointing_game"),
    ("pointing game: Grad-CAM", "gradcam", "pointing_game"),
    ("pointing game: centre prior", "centre", "pointing_game"),
    ("deletion AUC: attention", "attention", "deletion_auc"),
    ("deletion AUC: random", "random", "deletion_auc"),
    ("ROAD: attention", "attention", "road"),
    ("Spearman, randomised: attention", "attention", "spearman"),
)


def headline(scores: dict[str, Any]) -> dict[str, float]:
    """``{title: value}`` of :data:`HEADLINE` (scores the run has), plus the ProtoPNet attack's
    success rate; what ``explanations.json`` offers a comparison of models under ``headline``."""
    first = next((n for n in scores["maps"] if scores["maps"][n]["kind"] == "attention"), None)
    out = {}
    for title, name, key in HEADLINE:
        name = first if name == "attention" else name
        if name is None or name not in scores["maps"]:
            continue
        value = {**scores["maps"][name], **final_randomisation(scores, name)}.get(key)
        if value is not None:
            out[title] = value
    if scores.get("attack", {}).get("success_rate") is not None:
        out["attack success rate"] = scores["attack"]["success_rate"]
    return out


def markdown_table(scores: dict[str, Any]) -> str:
    def cell(value) -> str:
        return "-" if value is None else f"{value:.3f}"

    keys = [k for k, _ in COLUMNS if any(k in scores["maps"][n] or k in final_randomisation(scores, n)
                                         for n in scores["maps"])]  # fmt: skip
    titles = dict(COLUMNS)
    lines = ["| map | kind | " + " | ".join(titles[k] for k in keys) + " |", "|---|---|" + "---|" * len(keys)]
    for name in ordered_maps(scores):
        row = {**scores["maps"][name], **final_randomisation(scores, name)}
        lines.append(f"| {name} | {row['kind']} | " + " | ".join(cell(row.get(k)) for k in keys) + " |")
    notes = [
        "",
        f"{scores['images']} images ({scores['images_with_masks']} with lesion masks), {scores['image_size'][0]} px; "
        f"post-hoc maps and baselines on the {scores['grid'][0]}x{scores['grid'][1]} grid of the network's finest "
        f"attention map; every map explains the predicted class. Pointing game: {scores['pointing_tolerance_px']} px "
        "tolerance (15 px at 224 px). Deletion / insertion: "
        f"{scores['settings']['steps']} steps toward a blurred image (area under the class probability).",
    ]
    if "road" in scores:
        notes.append(f"ROAD on the first {scores['road']['images']} images: (LeRF - MoRF) / 2 of the class probability "
                     f"at {', '.join(f'{f:.0%}' for f in scores['road']['fractions'])} of the pixels imputed.")
    if "randomisation" in scores:
        r = scores["randomisation"]
        notes.append(f"Randomised: every block of the network randomised ({len(r['blocks'])} blocks, top down), "
                     f"on the first {r['images']} images; {r['data_randomisation']}.")
    if "attack" in scores:
        a = scores["attack"]
        notes.append(f"ProtoPNet attack (\"this does not look like that\", L-inf {a['epsilon'] * 255:.0f}/255, "
                     f"{a['steps']} steps; region: {a['region']}): success rate {a['success_rate']:.3f} over "
                     f"{a['images']} images, mean change in the predicted class's probability "
                     f"{a['probability_change']:+.3f}.")
    for check, reason in scores.get("not_scored", {}).items():
        notes.append(f"Not scored ({check}): {reason}.")
    return "\n".join(lines + notes)


def _outline(masks: torch.Tensor) -> torch.Tensor:
    inside = masks > 0.5
    return dilate(inside, 1.0) & ~inside


def examples_figure(examples: dict[str, Any], mean: Sequence[float], std: Sequence[float],
                    names: Sequence[str]) -> np.ndarray:
    """One row per example image: the image (lesion outlined), then each map over it."""
    images = examples["image"]
    pictures = denormalise(images, mean, std)
    if examples.get("mask") is not None:
        edge = _outline(examples["mask"]).numpy()
        pictures[edge] = (0, 255, 0)
    tiles = []
    for i in range(len(images)):
        tiles.append(pictures[i])
        for name in names:
            heat = normalise(upsample(examples["maps"][name][i:i + 1], images.shape[-2:]))[0].numpy()
            tile = overlay(pictures[i:i + 1], heat[None])[0]
            tiles.append(tile)
    picture = grid(tiles, 1 + len(names))
    fig, ax = plt.subplots(figsize=(1.1 * (1 + len(names)) + 0.2, 1.1 * len(images) + 0.6), dpi=110)
    ax.imshow(picture)
    step = picture.shape[1] / (1 + len(names))
    ax.set_xticks([step * (k + 0.5) for k in range(1 + len(names))], ["image"] + list(names), rotation=30,
                  ha="right", fontsize=7)  # fmt: skip
    ax.set_yticks([])
    fig.tight_layout()
    return figure_to_array(fig)


def curves_figure(scores: dict[str, Any]) -> Optional[np.ndarray]:
    """Mean deletion and insertion curves of every map."""
    names = [n for n in ordered_maps(scores) if n in scores.get("curves", {})]
    if not names:
        return None
    x = scores["curves"]["fractions"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=100)
    for ax, kind in zip(axes, ("deletion", "insertion")):
        for name in names:
            style = "--" if scores["maps"][name]["kind"] == "baseline" else "-"
            ax.plot(x, scores["curves"][name][kind], style, label=f"{name} ({np.trapezoid(scores['curves'][name][kind], x):.3f})")
        ax.set_xlabel(f"fraction of pixels {'removed' if kind == 'deletion' else 'revealed'}")
        ax.set_ylabel("probability of the explained class")
        ax.set_title(kind, fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return figure_to_array(fig)


def randomisation_figure(scores: dict[str, Any]) -> Optional[np.ndarray]:
    """Spearman and SSIM with the trained maps as the blocks are randomised, top down."""
    check = scores.get("randomisation")
    if not check or not check["blocks"]:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    steps = range(len(check["blocks"]))
    for ax, key in zip(axes, ("spearman", "ssim")):
        for name, values in check["maps"].items():
            ax.plot(steps, [np.nan if v is None else v for v in values[key]], marker=".", label=name)
        ax.set_xticks(list(steps), check["blocks"], rotation=60, ha="right", fontsize=6)
        ax.set_ylabel(f"{'Spearman' if key == 'spearman' else 'SSIM'} with the trained map")
        ax.set_xlabel("randomised down to")
        ax.legend(fontsize=6)
    fig.tight_layout()
    return figure_to_array(fig)
