"""Explain and probe a trained ProtoPNet from its checkpoint.

    python -m experiments.prototypes explain --ckpt CKPT --image IMG [--top-k 3] [--out FIG.png]
        "this looks like that": the most activated prototypes for one image
    python -m experiments.prototypes nearest --ckpt CKPT [--k 5] [--out TABLE.json]
        global analysis: each prototype's k nearest training patches, as a JSON table
    python -m experiments.prototypes attack --ckpt CKPT --image IMG --prototype J \
        --region Y0 Y1 X0 X1 [--objective paper|paper_improved|cell] [--mode raise|lower] [--epsilon 0.03] [--steps 40]
        "this does not look like that": PGD inside the region (pixels of the resized image); the
        paper's objective makes prototype J fire over the region while suppressing where it fired
        on the clean image, exactly as the paper's code (``paper``) or with the changes
        ``attack.paper_attack_improved`` lists (``paper_improved``); ``cell`` raises one cell (or
        lowers it where it fires, ``--mode lower``)

Figures and tables go to ``<run>/analysis/`` (the checkpoint's run folder) unless ``--out`` says
otherwise; each command prints where. A new attack figure never replaces an earlier one: the
default name gets a number (``..._2.png``) when taken, and an ``--out`` that exists is refused
(called from Python, ``attack(out=...)`` writes where it is told and says when it replaced a file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from datamodules.checkpoint_data import build_datamodule  # noqa: E402
from datamodules.dataset import load_rgb  # noqa: E402
from lightning_modules.modules.loading import load_module, read_checkpoint  # noqa: E402
from lightning_modules.protopnet.attack import paper_attack, paper_attack_improved, prototype_attack  # noqa: E402
from lightning_modules.protopnet.analysis import (  # noqa: E402
    attack_figure,
    local_analysis,
    nearest_patches,
    push_record,
    region_cell,
    region_cells,
    region_mask,
)
from lightning_modules.utils.atomic_io import write_json, write_png  # noqa: E402
from lightning_modules.utils.images import denormalise  # noqa: E402


def load(ckpt: str):
    checkpoint = read_checkpoint(ckpt)
    module = load_module(ckpt)
    datamodule = build_datamodule(checkpoint, None, None, "train", num_workers=0)
    return checkpoint, module, datamodule


def prepare(datamodule, image_path: str) -> tuple[torch.Tensor, np.ndarray]:
    """The image as the network sees it (1, 3, S, S) and as a picture (S, S, 3)."""
    hp = datamodule.hparams
    tensor = datamodule.eval_transform()(image=load_rgb(Path(image_path)))["image"][None]
    return tensor, denormalise(tensor, hp.normalize_mean, hp.normalize_std)[0]


def default_out(ckpt: str, name: str) -> Path:
    return Path(ckpt).resolve().parent.parent / "analysis" / name


def unused(path: Path) -> Path:
    """``path``, or ``<stem>_2<suffix>``, ``_3``, ... when taken."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
    return candidate


def check_prototype(module, prototype: int) -> None:
    count = module.net.prototype_vectors.shape[0]
    if not 0 <= prototype < count:
        raise ValueError(f"--prototype {prototype}: this model has {count} prototypes, 0 to {count - 1}")


def check_region(region: tuple[int, int, int, int], size: tuple[int, int]) -> None:
    """``(y0, y1, x0, x1)`` must be a non-empty box inside the (resized) image."""
    y0, y1, x0, x1 = region
    height, width = size
    if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
        raise ValueError(f"--region {y0} {y1} {x0} {x1}: must be a box Y0 Y1 X0 X1 with 0 <= Y0 < Y1 <= {height} and "
                         f"0 <= X0 < X1 <= {width}, in pixels of the image resized to {height}x{width} as the model sees it")


def explain(ckpt: str, image: str, top_k: int = 3, out: str | None = None) -> list[dict]:
    checkpoint, module, datamodule = load(ckpt)
    tensor, picture = prepare(datamodule, image)
    rows, figure = local_analysis(module.net, tensor, picture, push_record(checkpoint), module.class_names, top_k)
    path = write_png(Path(out) if out else default_out(ckpt, f"explain_{Path(image).stem}.png"), figure)
    print(f"figure: {path}", file=sys.stderr)
    return rows


def nearest(ckpt: str, k: int = 5, out: str | None = None) -> dict:
    if out is not None and Path(out).suffix.lower() != ".json":
        raise ValueError(f"--out {out}: nearest writes a JSON table (each prototype's nearest training patches); "
                         "name a .json file")
    _, module, datamodule = load(ckpt)
    found = nearest_patches(module.net, datamodule.eval_dataloader("train"), k)
    records = datamodule.records("train")
    table = {
        j: [{"image_id": records[int(i)].image_id, "class": module.class_names[records[int(i)].label],
             "distance": float(d), "cell": [int(h), int(w)]}
            for d, i, h, w in zip(found["distance"][j], found["image_index"][j], found["h"][j], found["w"][j])]
        for j in range(found["distance"].shape[0])
    }  # fmt: skip
    path = write_json(Path(out) if out else default_out(ckpt, "nearest_patches.json"), table)
    print(f"table: {path}", file=sys.stderr)
    return table


def attack(ckpt: str, image: str, prototype: int, region: tuple[int, int, int, int], mode: str = "raise",
           epsilon: float = 8 / 255, steps: int = 40, out: str | None = None, objective: str = "paper",
           seed: int = 0):
    """``objective="paper"``: the paper's attack as its code runs it (raise the prototype over every
    cell under the region, suppress where it fired on the clean image, random start, 2/255 steps,
    last iterate); ``"paper_improved"``: the same objective with ``paper_attack_improved``'s
    changes (latent-percentile suppression, masked start, best iterate); ``"cell"``:
    raise it at the one cell under the region's centre (``mode="raise"``) or lower it where it
    fires most (``"lower"``), from the clean image."""
    _, module, datamodule = load(ckpt)
    check_prototype(module, prototype)
    tensor, picture = prepare(datamodule, image)
    check_region(region, tuple(tensor.shape[-2:]))
    hp = datamodule.hparams
    mask = region_mask(tensor.shape[-2:], region)
    if objective in ("paper", "paper_improved"):
        if mode != "raise":
            raise ValueError("the paper's objective raises the prototype; use objective='cell' to lower it")
        run = paper_attack if objective == "paper" else paper_attack_improved
        result = run(module.net, tensor, prototype, mask, region_cells(module.net, tensor, region),
                     epsilon=epsilon, steps=steps, seed=seed, mean=hp.normalize_mean, std=hp.normalize_std)
    elif objective == "cell":
        target = region_cell(module.net, tensor, region) if mode == "raise" else None
        result = prototype_attack(module.net, tensor, prototype, mask, target, mode=mode, epsilon=epsilon,
                                  steps=steps, mean=hp.normalize_mean, std=hp.normalize_std)  # fmt: skip
    else:
        raise ValueError(f"objective must be 'paper', 'paper_improved' or 'cell', got {objective!r}")
    attacked = denormalise(result.image, hp.normalize_mean, hp.normalize_std)[0]
    kind = objective if objective != "cell" else f"cell_{mode}"
    path = Path(out) if out else unused(default_out(ckpt, f"attack_{Path(image).stem}_p{prototype}_{kind}.png"))
    replaced = path.exists()  # only an `out` named by the caller (the command line refuses one that exists)
    write_png(path, attack_figure(picture, attacked, result, region))
    print(f"figure: {path}{' (replaced the earlier one)' if replaced else ''}", file=sys.stderr)
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("explain")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--out", help="the figure (default: <run>/analysis/explain_<image>.png)")
    p = sub.add_parser("nearest")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--out", help="the JSON table (default: <run>/analysis/nearest_patches.json)")
    p = sub.add_parser("attack")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--prototype", type=int, required=True)
    p.add_argument("--region", type=int, nargs=4, required=True, metavar=("Y0", "Y1", "X0", "X1"))
    p.add_argument("--objective", choices=["paper", "paper_improved", "cell"], default="paper",
                   help="paper: the paper's attack as its code runs it (raise over the region's cells minus the "
                        "cells under the clean high-activation box, whole-image random start, 2/255 steps, last "
                        "iterate); paper_improved: latent-percentile suppression, masked start, best iterate; "
                        "cell: one cell, from the clean image")
    p.add_argument("--mode", choices=["raise", "lower"], default="raise", help="with --objective cell")
    p.add_argument("--seed", type=int, default=0, help="the random start of the paper objectives")
    p.add_argument("--epsilon", type=float, default=8 / 255, help="L-inf budget in [0, 1] pixel units")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--out", help="the figure, a new file (default: <run>/analysis/attack_<image>_p<J>_<objective>.png, "
                                  "numbered when taken)")
    args = parser.parse_args(argv)
    if args.command == "explain":
        for row in explain(args.ckpt, args.image, args.top_k, args.out):
            print(json.dumps(row))
    elif args.command == "nearest":
        print(json.dumps(nearest(args.ckpt, args.k, args.out))[:2000])
    else:
        if args.out and Path(args.out).exists():
            raise FileExistsError(f"--out {args.out} exists: a new attack figure does not replace an earlier one; "
                                  "name a new file (or leave --out out: default names are numbered)")
        r = attack(args.ckpt, args.image, args.prototype, tuple(args.region), args.mode, args.epsilon, args.steps,
                   args.out, args.objective, args.seed)  # fmt: skip
        print(f"similarity {r.similarity_before:.3f} -> {r.similarity_after:.3f} at cell {r.cell_after}; "
              f"L-inf {r.linf:.4f}, L2 {r.l2:.4f}")


if __name__ == "__main__":
    from datamodules.entry_point import run

    run(main)
