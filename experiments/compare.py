"""Every architecture on the same data, split and seeds, in one table and one figure.

    python -m experiments.compare [--seeds 1 2 3] [--models MetaBlock ProtoPNet ...] [--dir runs/compare/<stamp>] \\
        [-- --data.dataset=pad_ufes20 --config experiments/data/pad_ufes20.yaml --data.data_dir=... ]
    make compare [DATA=... DATA_DIR=...] [SEEDS="1 2 3"]

Each (model, seed) is a normal training run of its experiment config in ``<dir>/<model>-s<seed>/``
(a finished one is reused, an interrupted one resumed, so ``--dir`` of an earlier comparison
continues it). ``<dir>/summary.md`` / ``summary.json``: test macro AUROC and balanced accuracy
(mean ± sample std over seeds) with the 95 % interval of the seed-averaged score and, for each
model against the best, the paired difference with its Holm-adjusted p-value, both from a patient
bootstrap on the same test images over all seeds (``lightning_modules.evaluation.models``: every
seed of every model scored on the same resamples of patients); lesion mass of the attention maps
and of Grad-CAM where the model has them; the runs' explanation scores where they wrote
``explanations.json`` (:func:`explanation_columns`); parameters, training minutes and inference
milliseconds per image (a forward pass over one batch at the data's image size, on this machine).
``<dir>/auroc.png``: the seed-averaged AUROC of every model with its interval, also logged to W&B
(job type ``compare``) unless ``--no-wandb``. ABE-M classifies by k nearest training neighbours of
its embedding.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Optional

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from experiments import registry  # noqa: E402
from experiments.runs import mean_std, train_once  # noqa: E402
from lightning_modules.evaluation import compare_models, read_predictions  # noqa: E402
from lightning_modules.evaluation.bootstrap import DEFAULT_N_BOOT  # noqa: E402
from lightning_modules.evaluation.markdown import p_value  # noqa: E402
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


#: What a run may write for the comparison's explanation columns (``lightning_modules/explain``).
EXPLANATIONS_FILE = "explanations.json"


def explanation_columns(dirs: list[Path]) -> dict[str, dict]:
    """Extra columns from the runs' own files: every number of ``explanations.json``'s ``headline``
    (``make explain`` writes the few scores a table of models shows there; a file without one: all
    its numbers, nested keys joined by ``/``) that every seed's run has, as mean ± std over seeds;
    none when a run lacks the file. The place for per-model scores computed after training."""
    found = []
    for d in dirs:
        path = d / EXPLANATIONS_FILE
        if not path.is_file():
            return {}
        scores = json.loads(path.read_text())
        found.append(flat_numbers(scores.get("headline", scores)))
    keys = [k for k in found[0] if all(k in f for f in found[1:])]
    return {k: mean_std([f[k] for f in found]) for k in keys}


def flat_numbers(data: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flat_numbers(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


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
    explanations = explanation_columns(dirs)
    if explanations:
        row["explanations"] = explanations
    return row


def add_intervals(rows: dict[str, dict], dirs: dict[str, list[Path]], n_boot: int, seed: int) -> dict:
    """Each row's seed-averaged AUROC and balanced accuracy with intervals and its paired difference
    from the best model (Holm-adjusted p), from the runs' ``predictions.csv`` on their common test
    images; the method and counts are returned."""
    predictions = {name: [read_predictions(d / "predictions.csv") for d in dirs[name]] for name in rows}
    result = compare_models(predictions, n_boot=n_boot, seed=seed)
    for name, row in rows.items():
        scored = result["models"][name]
        row.update({"auroc_ci": scored["auroc_ci"], "bacc_ci": scored["bacc_ci"],
                    "seed_averaged": {m: scored[m] for m in ("auroc", "bacc", "acc")},
                    "vs_best": scored["vs_best"]})  # fmt: skip
    return {k: v for k, v in result.items() if k != "models"}


def table(rows: dict[str, dict], best: Optional[str] = None) -> str:
    def cell(value) -> str:
        return f"{value['mean']:.3f} ± {value['std']:.3f}" if value and value.get("mean") is not None else "-"

    def interval(r: dict, metric: str) -> str:
        ci = r.get(f"{metric}_ci")
        return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci and ci[0] is not None and ci[1] is not None else "-"

    def versus(name: str, r: dict, metric: str) -> str:
        if name == best:
            return "best"
        entry = (r.get("vs_best") or {}).get(metric)
        if not entry or entry.get("difference") is None:
            return "-"
        low, high = entry["ci"]
        ci = f" [{low:+.3f}, {high:+.3f}]" if low is not None and high is not None else ""
        return f"{entry['difference']:+.3f}{ci}, p {p_value(entry.get('p_holm'))}"

    extra = list(dict.fromkeys(k for r in rows.values() for k in r.get("explanations", {})))
    head = ["model", "test macro AUROC", "95 % CI", "vs best: difference [95 % CI], Holm p", "test balanced accuracy",
            "95 % CI", "vs best: difference [95 % CI], Holm p", "lesion mass: attention", "Grad-CAM", *extra,
            "parameters", "training minutes", "inference ms/image"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        cells = [name, cell(r["auroc"]), interval(r, "auroc"), versus(name, r, "auroc"), cell(r["bacc"]),
                 interval(r, "bacc"), versus(name, r, "bacc"), cell(r.get("lesion_mass")),
                 cell(r.get("gradcam_lesion_mass")), *[cell(r.get("explanations", {}).get(k)) for k in extra],
                 f"{r['parameters'] / 1e6:.2f} M", f"{r['train_minutes']['mean']:.1f}",
                 f"{r['inference_ms_per_image']:.2f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(rows: dict[str, dict], title: str):
    """The seed-averaged AUROC of each model with its 95 % interval (± std over seeds for a row
    without one)."""
    names = list(rows)
    means, errors = [], [[], []]
    for n in names:
        mean = rows[n].get("seed_averaged", {}).get("auroc") or rows[n]["auroc"]["mean"] or 0.0
        ci = rows[n].get("auroc_ci") or [None, None]
        std = rows[n]["auroc"]["std"] or 0.0
        means.append(mean)
        errors[0].append(mean - ci[0] if ci[0] is not None else std)
        errors[1].append(ci[1] - mean if ci[1] is not None else std)
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.2), dpi=100)
    ax.barh(range(len(names)), means, xerr=errors, color="#4c78a8", capsize=3)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    low = min(m - e for m, e in zip(means, errors[0]))
    ax.set_xlim(max(0.0, low - 0.05), 1.0)
    ax.set_xlabel("test macro AUROC, mean over seeds, 95 % patient-bootstrap interval")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return figure_to_array(fig)


def log_to_wandb(out: Path, rows: dict[str, dict], picture, project: str) -> None:
    import wandb

    run = wandb.init(project=project, name=f"compare/{out.name}", job_type="compare", dir=str(out),
                     mode=os.environ.get("WANDB_MODE", "offline"), reinit="finish_previous")  # fmt: skip
    columns = ["model", "auroc_mean", "auroc_std", "auroc_ci_low", "auroc_ci_high", "auroc_vs_best", "auroc_p_holm",
               "bacc_mean", "bacc_std", "bacc_ci_low", "bacc_ci_high", "bacc_vs_best", "bacc_p_holm", "parameters",
               "train_minutes", "inference_ms_per_image"]  # fmt: skip

    def paired(r: dict, metric: str) -> list:
        entry = (r.get("vs_best") or {}).get(metric) or {}
        return [entry.get("difference"), entry.get("p_holm")]

    data = [[n, r["auroc"]["mean"], r["auroc"]["std"], *(r.get("auroc_ci") or [None, None]), *paired(r, "auroc"),
             r["bacc"]["mean"], r["bacc"]["std"], *(r.get("bacc_ci") or [None, None]), *paired(r, "bacc"),
             r["parameters"], r["train_minutes"]["mean"], r["inference_ms_per_image"]]
            for n, r in rows.items()]  # fmt: skip
    run.log({"compare/auroc": wandb.Image(picture), "compare/table": wandb.Table(columns=columns, data=data)})
    run.finish()


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), metavar="MODEL")
    parser.add_argument("--dir", default=None, help="the comparison's folder; an existing one is resumed")
    parser.add_argument("--no-wandb", action="store_true", help="do not log the table and figure to W&B")
    parser.add_argument("--wandb-project", default="dermattn")
    parser.add_argument("--n-boot", type=int, default=DEFAULT_N_BOOT, help="bootstrap resamples of the patients")
    parser.add_argument("--bootstrap-seed", type=int, default=0, help="the bootstrap's seed")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="overrides for every run (data, budget, ...)")
    args = parser.parse_args(argv)
    extra = [a for a in args.extra if a != "--"]
    out = Path(args.dir) if args.dir else Path("runs") / "compare" / time.strftime("%Y%m%d-%H%M%S")
    rows: dict[str, dict] = {}
    dirs: dict[str, list[Path]] = {}
    for name in args.models:
        config, overrides = MODELS[name]
        dirs[name] = [out / f"{slug(name)}-s{seed}" for seed in args.seeds]
        runs = [train_once(d, ["--config", config, *overrides, f"--seed_everything={seed}", *extra,
                               "--run.wandb_job_type=compare", f"--run.wandb_group=compare-{out.name}"])
                for d, seed in zip(dirs[name], args.seeds)]  # fmt: skip
        rows[name] = summarise(name, runs, dirs[name])
    evaluation = add_intervals(rows, dirs, args.n_boot, args.bootstrap_seed)
    text = table(rows, evaluation["best"])
    command = " ".join(["python -m experiments.compare", *(argv if argv is not None else sys.argv[1:])])
    footer = (f"\n\nmean ± sample std over seeds {args.seeds}. 95 % CI: of the seed-averaged score; vs best: the "
              f"model minus {evaluation['best']} (paired), p Holm-adjusted across the table, per metric. "
              f"Method: {evaluation['method']}. `{command}`\n")
    atomic_write(out / "summary.md", lambda f: f.write(text + footer))
    write_json(out / "summary.json", {"seeds": args.seeds, "overrides": extra, "evaluation": evaluation,
                                      "models": rows})
    picture = figure(rows, f"seeds {args.seeds}")
    write_png(out / "auroc.png", picture)
    if not args.no_wandb and "--run.wandb=false" not in extra:
        log_to_wandb(out, rows, picture, args.wandb_project)
    print(text + footer)
    return out


if __name__ == "__main__":
    from datamodules.entry_point import run

    run(main)
