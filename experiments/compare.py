"""Every architecture on the same data, split and seeds, in one table and one figure.

    python -m experiments.compare [--seeds 1 2 3] [--models MetaBlock ProtoPNet ...] [--dir runs/compare/<stamp>] \\
        [-- --data.dataset=pad_ufes20 --config experiments/data/pad_ufes20.yaml --data.data_dir=... ]
    make compare [DATA=... DATA_DIR=...] [SEEDS="1 2 3"]

Each (model, seed) is a normal training run of its experiment config in ``<dir>/<model>-s<seed>/``
(a finished one is reused, an interrupted one resumed, so ``--dir`` of an earlier comparison
continues it). ``<dir>/summary.md`` / ``summary.json``: test macro AUROC and balanced accuracy
(mean ± sample std over seeds), lesion mass of the attention maps and of Grad-CAM where the
model has them, parameters, training minutes and inference milliseconds per image (a forward
pass over one batch at the data's image size, on this machine); ``<dir>/auroc.png`` the AUROC of
every model with error bars, also logged to W&B (job type ``compare``) unless ``--no-wandb``.
ABE-M classifies by k nearest training neighbours of its embedding.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from experiments import registry  # noqa: E402
from experiments.runs import mean_std, train_once  # noqa: E402
from lightning_modules.utils.atomic_io import atomic_write, write_json, write_png  # noqa: E402
from lightning_modules.utils.plots import figure_to_array  # noqa: E402

#: name -> (experiment config, overrides): the rows of the table, in order (experiments/registry.yaml).
MODELS: dict[str, tuple[str, list[str]]] = {v.name: (v.config, list(v.overrides)) for v in registry.variants()}


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


@torch.no_grad()
def inference_ms_per_image(run_dir: Path, batch: int = 32, repeats: int = 3) -> float:
    """Milliseconds per image of the trained module's forward pass on one batch."""
    from lightning_modules.modules.loading import load_module, read_checkpoint

    ckpt = next((run_dir / "checkpoints").glob("best-*.ckpt"), run_dir / "checkpoints" / "last.ckpt")
    module = load_module(ckpt)
    state = read_checkpoint(ckpt)
    size = int(state["datamodule_hyper_parameters"]["image_size"])
    images = torch.randn(batch, 3, size, size)
    meta = torch.zeros(batch, int(module.hparams.meta_dim))
    module(images, meta)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        module(images, meta)
    return 1000 * (time.perf_counter() - start) / (repeats * batch)


def summarise(name: str, runs: list[dict], dirs: list[Path]) -> dict:
    tests = [r["test"] for r in runs]
    row = {
        "auroc": mean_std([t.get("auroc") for t in tests]),
        "bacc": mean_std([t.get("bacc") for t in tests]),
        "parameters": runs[0].get("parameters"),
        "train_minutes": mean_std([r.get("wall_seconds", float("nan")) / 60 for r in runs]),
        "inference_ms_per_image": inference_ms_per_image(dirs[0]),
    }
    for key in ("lesion_mass", "gradcam_lesion_mass"):
        if all(key in t for t in tests):
            row[key] = mean_std([t[key] for t in tests])
    return row


def table(rows: dict[str, dict]) -> str:
    def cell(value) -> str:
        return f"{value['mean']:.3f} ± {value['std']:.3f}" if value and value.get("mean") is not None else "-"

    lines = ["| model | test macro AUROC | test balanced accuracy | lesion mass: attention | Grad-CAM | parameters "
             "| training minutes | inference ms/image |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in rows.items():
        lines.append(f"| {name} | {cell(r['auroc'])} | {cell(r['bacc'])} | {cell(r.get('lesion_mass'))} | "
                     f"{cell(r.get('gradcam_lesion_mass'))} | {r['parameters'] / 1e6:.2f} M | "
                     f"{r['train_minutes']['mean']:.1f} | {r['inference_ms_per_image']:.2f} |")  # fmt: skip
    return "\n".join(lines)


def figure(rows: dict[str, dict], title: str):
    names = list(rows)
    means = [rows[n]["auroc"]["mean"] or 0.0 for n in names]
    stds = [rows[n]["auroc"]["std"] or 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.2), dpi=100)
    ax.barh(range(len(names)), means, xerr=stds, color="#4c78a8", capsize=3)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    low = min(m - s for m, s in zip(means, stds))
    ax.set_xlim(max(0.0, low - 0.05), 1.0)
    ax.set_xlabel("test macro AUROC (mean ± std over seeds)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return figure_to_array(fig)


def log_to_wandb(out: Path, rows: dict[str, dict], picture, project: str) -> None:
    import wandb

    run = wandb.init(project=project, name=f"compare/{out.name}", job_type="compare", dir=str(out),
                     mode=os.environ.get("WANDB_MODE", "offline"), reinit="finish_previous")  # fmt: skip
    columns = ["model", "auroc_mean", "auroc_std", "bacc_mean", "bacc_std", "parameters", "train_minutes",
               "inference_ms_per_image"]  # fmt: skip
    data = [[n, r["auroc"]["mean"], r["auroc"]["std"], r["bacc"]["mean"], r["bacc"]["std"], r["parameters"],
             r["train_minutes"]["mean"], r["inference_ms_per_image"]] for n, r in rows.items()]  # fmt: skip
    run.log({"compare/auroc": wandb.Image(picture), "compare/table": wandb.Table(columns=columns, data=data)})
    run.finish()


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), metavar="MODEL")
    parser.add_argument("--dir", default=None, help="the comparison's folder; an existing one is resumed")
    parser.add_argument("--no-wandb", action="store_true", help="do not log the table and figure to W&B")
    parser.add_argument("--wandb-project", default="dermattn")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="overrides for every run (data, budget, ...)")
    args = parser.parse_args(argv)
    extra = [a for a in args.extra if a != "--"]
    out = Path(args.dir) if args.dir else Path("runs") / "compare" / time.strftime("%Y%m%d-%H%M%S")
    rows: dict[str, dict] = {}
    for name in args.models:
        config, overrides = MODELS[name]
        dirs = [out / f"{slug(name)}-s{seed}" for seed in args.seeds]
        runs = [train_once(d, ["--config", config, *overrides, f"--seed_everything={seed}", *extra,
                               "--run.wandb_job_type=compare", f"--run.wandb_group=compare-{out.name}"])
                for d, seed in zip(dirs, args.seeds)]  # fmt: skip
        rows[name] = summarise(name, runs, dirs)
    text = table(rows)
    command = " ".join(["python -m experiments.compare", *(argv if argv is not None else sys.argv[1:])])
    footer = f"\n\nmean ± sample std over seeds {args.seeds}; `{command}`\n"
    atomic_write(out / "summary.md", lambda f: f.write(text + footer))
    write_json(out / "summary.json", {"seeds": args.seeds, "overrides": extra, "models": rows})
    picture = figure(rows, f"seeds {args.seeds}")
    write_png(out / "auroc.png", picture)
    if not args.no_wandb and "--run.wandb=false" not in extra:
        log_to_wandb(out, rows, picture, args.wandb_project)
    print(text + footer)
    return out


if __name__ == "__main__":
    main()
