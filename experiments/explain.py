"""Do the explanations hold? Score every map a trained model offers, on its test split.

    python -m experiments.explain --run runs/attn_vgg/<run> [--limit N] [--methods attention gradcam ...]
    python -m experiments.explain --ckpt runs/protopnet/<run>/checkpoints/best-epoch011.ckpt
    make explain RUN=runs/attn_vgg/<run> [LIMIT=32] [ARGS="--checks localisation deletion"]

Maps: the network's own (attention, ProtoPNet similarity), Grad-CAM, Grad-CAM++, Score-CAM,
EigenCAM (pytorch-grad-cam) and Integrated Gradients (captum), all on the grid of the network's
finest attention map, beside uniform, centre-prior and random baselines. Scores: localisation
against lesion masks (lesion mass, pointing game, rank accuracy), faithfulness (deletion,
insertion, ROAD), the cascading randomisation sanity check and, for ProtoPNet, the success rate
of the "this does not look like that" attack (``lightning_modules/explain``; definitions in
docs/explanations.md).

Writes ``explanations.json``, ``explanations.md`` and ``explanations/*.png`` into the run folder
(``--out`` elsewhere), each file whole or not at all, logs them to the run's W&B run when it has
one (offline unless ``WANDB_MODE=online``), and prints the table. ``explanations.json``'s
``headline`` holds the few scores ``make compare`` shows beside accuracy. The run folder is locked
meanwhile (a run still training there, or a second ``make explain``, is refused).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Optional, Sequence

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

from datamodules.arguments import check_int  # noqa: E402
from datamodules.checkpoint_data import build_datamodule  # noqa: E402
from experiments.run_lock import RunLock  # noqa: E402
from lightning_modules.explain.maps import METHODS  # noqa: E402
from lightning_modules.explain.report import (  # noqa: E402
    curves_figure,
    examples_figure,
    final_randomisation,
    headline,
    markdown_table,
    ordered_maps,
    randomisation_figure,
)
from lightning_modules.explain.suite import CHECKS, Explanations, Settings, explain_model  # noqa: E402
from lightning_modules.modules.loading import load_module, read_checkpoint  # noqa: E402
from lightning_modules.utils.atomic_io import atomic_write, write_json, write_png  # noqa: E402

RESULTS = "explanations.json"
SPLIT_STAGE = {"test": "test", "val": "validate"}


def run_checkpoint(run: str | Path) -> Path:
    """The checkpoint a run was tested with: its ``best-*.ckpt``, else ``last.ckpt``."""
    if not Path(run).is_dir():
        raise FileNotFoundError(f"--run {run}: no such folder (a training run's folder, e.g. runs/attn_vgg/<run>)")
    folder = Path(run) / "checkpoints"
    best = sorted(folder.glob("best-*.ckpt"))
    if best:
        return best[-1]
    if (folder / "last.ckpt").is_file():
        return folder / "last.ckpt"
    raise FileNotFoundError(f"--run {run}: no checkpoints/best-*.ckpt or checkpoints/last.ckpt in it")


def limited(loader, limit: Optional[int]) -> Iterator[dict]:
    """The loader's batches, cut after ``limit`` images."""
    seen = 0
    for batch in loader:
        if limit is not None:
            if seen >= limit:
                return
            room = limit - seen
            if len(batch["image"]) > room:
                batch = {k: v[:room] for k, v in batch.items()}
        seen += len(batch["image"])
        yield batch


def commit() -> Optional[str]:
    """The source tree's git commit (with ``-dirty`` when it has uncommitted changes), if any."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha


def explain_run(ckpt: Path, split: str = "test", limit: Optional[int] = None, settings: Optional[Settings] = None,
                batch_size: Optional[int] = None, progress: bool = True, dataset: Optional[str] = None,
                data_dir: Optional[str] = None) -> Explanations:
    """:func:`explain_model` of the checkpoint on ``split`` of the data it was trained on (or of
    ``dataset`` / ``data_dir``), the first ``limit`` images, with the data's evaluation transform
    and its lesion masks where every image has one."""
    if split not in SPLIT_STAGE:
        raise ValueError(f"--split must be one of {sorted(SPLIT_STAGE)}, got {split!r}")
    checkpoint = read_checkpoint(ckpt)
    module = load_module(ckpt)
    datamodule = build_datamodule(checkpoint, dataset, data_dir, split, batch_size=batch_size, num_workers=0,
                                  load_masks=True)  # fmt: skip
    datamodule.prepare_data()
    datamodule.setup(SPLIT_STAGE[split])
    loader = datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()
    hp = datamodule.hparams
    settings = replace(settings or Settings(), normalize_mean=tuple(hp.normalize_mean),
                       normalize_std=tuple(hp.normalize_std))
    total = len(loader) if limit is None else -(-min(limit, len(loader.dataset)) // loader.batch_size)
    with torch.inference_mode(False):
        return explain_model(module, limited(loader, limit), settings, total=total, progress=progress)


def write_results(out: Path, results: Explanations, mean: Sequence[float], std: Sequence[float],
                  command: str) -> dict[str, Path]:
    """``explanations.json`` / ``.md`` and the figures under ``out``; returns the figures' paths."""
    scores = results.scores
    write_json(out / RESULTS, scores)
    text = f"{markdown_table(scores)}\n\n`{command}` at commit {scores.get('commit') or 'unknown'}\n"
    atomic_write(out / "explanations.md", lambda f: f.write(text))
    figures = {"examples": examples_figure(results.examples, mean, std, ordered_maps(scores)),
               "curves": curves_figure(scores), "randomisation": randomisation_figure(scores)}  # fmt: skip
    paths = {}
    for name, picture in figures.items():
        if picture is not None:
            paths[name] = write_png(out / "explanations" / f"{name}.png", picture)
    return paths


def log_to_wandb(run_dir: Path, scores: dict, figures: dict[str, Path]) -> bool:
    """Log the table and figures to the run's own W&B run (``wandb_id.txt``); ``False`` if it has none."""
    id_file = run_dir / "wandb_id.txt"
    if not id_file.is_file():
        return False
    import wandb
    import yaml

    config = run_dir / "config.yaml"
    project = "dermattn"
    if config.is_file():
        project = ((yaml.safe_load(config.read_text()) or {}).get("run") or {}).get("wandb_project") or project
    run = wandb.init(project=project, id=id_file.read_text().strip(), resume="allow", dir=str(run_dir),
                     mode=os.environ.get("WANDB_MODE", "offline"), reinit="finish_previous")  # fmt: skip
    columns = ["map", "kind", "lesion_mass", "pointing_game", "rank_accuracy", "deletion_auc", "insertion_auc", "road",
               "spearman_randomised", "ssim_randomised"]  # fmt: skip
    rows = []
    for name in ordered_maps(scores):
        row = {**scores["maps"][name], **final_randomisation(scores, name)}
        rows.append([name, row["kind"], *(row.get(k) for k in columns[2:8]), row.get("spearman"), row.get("ssim")])
    logged = {"explain/table": wandb.Table(columns=columns, data=rows)}
    logged.update({f"explain/{name}": wandb.Image(str(path)) for name, path in figures.items()})
    if "attack" in scores:
        logged.update({f"explain/attack_{k}": scores["attack"][k] for k in ("success_rate", "probability_change")})
    run.log(logged)
    run.finish()
    return True


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="a training run's folder (its best-*.ckpt is explained)")
    source.add_argument("--ckpt", help="a checkpoint file")
    parser.add_argument("--split", default="test", choices=sorted(SPLIT_STAGE))
    parser.add_argument("--dataset", default=None, help="default: the dataset the model was trained on")
    parser.add_argument("--data-dir", default=None, help="default: the training data folder")
    parser.add_argument("--limit", type=int, default=None, help="score the first N images only")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), metavar="METHOD",
                        help=f"maps to score, of {', '.join(METHODS)} (default: all the model offers)")
    parser.add_argument("--checks", nargs="+", default=list(CHECKS), choices=list(CHECKS), metavar="CHECK",
                        help=f"checks to run, of {', '.join(CHECKS)} (default: all that apply)")
    parser.add_argument("--steps", type=int, default=Settings.steps, help="deletion / insertion steps")
    parser.add_argument("--road-images", type=int, default=Settings.road_images,
                        help="images ROAD is scored on (the first N; 0: all)")
    parser.add_argument("--sanity-images", type=int, default=Settings.sanity_images,
                        help="images the randomisation check uses (the first N; 0: all)")
    parser.add_argument("--attack-images", type=int, default=Settings.attack_images,
                        help="images ProtoPNet is attacked on (the first N; 0: all)")
    parser.add_argument("--ig-steps", type=int, default=Settings.ig_steps, help="Integrated Gradients steps")
    parser.add_argument("--batch-size", type=int, default=None, help="images per batch (default: the run's)")
    parser.add_argument("--seed", type=int, default=Settings.seed)
    parser.add_argument("--out", default=None, help="folder for the results (default: the run's folder)")
    parser.add_argument("--no-wandb", action="store_true", help="do not log to the run's W&B run")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    for option in ("limit", "steps", "ig_steps", "batch_size"):
        if getattr(args, option) is not None:  # None: the default (every image, the run's batch size)
            check_int(f"--{option.replace('_', '-')}", getattr(args, option), minimum=1)
    for option in ("road_images", "sanity_images", "attack_images"):  # 0: every image
        check_int(f"--{option.replace('_', '-')}", getattr(args, option), minimum=0)
    ckpt = run_checkpoint(args.run) if args.run else Path(args.ckpt)
    if not ckpt.is_file():
        raise FileNotFoundError(f"--ckpt {ckpt}: no such file")
    run_dir = Path(args.run) if args.run else ckpt.resolve().parent.parent
    out = Path(args.out) if args.out else run_dir
    out.mkdir(parents=True, exist_ok=True)
    lock = RunLock(out).acquire()
    try:
        return explain_and_write(args, ckpt, run_dir, out, argv)
    finally:
        lock.release()


def explain_and_write(args: argparse.Namespace, ckpt: Path, run_dir: Path, out: Path,
                      argv: Optional[Sequence[str]]) -> dict:
    settings = Settings(methods=args.methods, checks=args.checks, steps=args.steps,
                        road_images=args.road_images or None, sanity_images=args.sanity_images or None,
                        attack_images=args.attack_images or None, ig_steps=args.ig_steps, seed=args.seed)  # fmt: skip
    start, cpu = time.perf_counter(), time.process_time()
    results = explain_run(ckpt, args.split, args.limit, settings, args.batch_size, not args.quiet, args.dataset,
                          args.data_dir)  # fmt: skip
    command = " ".join(["python -m experiments.explain", *(argv if argv is not None else sys.argv[1:])])
    results.scores.update(checkpoint=str(ckpt), split=args.split, commit=commit(), command=command,
                          wall_seconds=round(time.perf_counter() - start, 1),
                          cpu_seconds=round(time.process_time() - cpu, 1), threads=torch.get_num_threads())  # fmt: skip
    results.scores["headline"] = headline(results.scores)
    hp = results.scores["settings"]
    figures = write_results(out, results, hp["normalize_mean"], hp["normalize_std"], command)
    if not args.no_wandb and log_to_wandb(run_dir, results.scores, figures):
        print(f"logged to the run's W&B run ({run_dir / 'wandb'})")
    print(markdown_table(results.scores))
    print(f"\n{results.scores['wall_seconds']:.0f} s; {out / RESULTS}, {out / 'explanations.md'}, "
          f"{out / 'explanations'}/")
    return results.scores


if __name__ == "__main__":
    from datamodules.entry_point import run

    run(main)
