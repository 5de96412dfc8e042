"""k-fold cross-validation: every fold a normal training run, then the paper-style table.

    python -m experiments.cv --config experiments/metablock.yaml [--dir runs/metablock-cv/<stamp>] \\
        [--metrics auroc bacc acc] [-- --data.n_folds=5 --trainer.max_epochs=30 ...]
    make cv EXP=metablock [DATA=pad_ufes20 DATA_DIR=...] [CV_DIR=runs/metablock-cv/<stamp>]

Fold ``k`` trains with ``--data.fold=k`` in ``<dir>/fold<k>/`` (test split: fold k, validation:
fold k+1, training: the rest; patient-grouped). Giving the ``--dir`` of an earlier CV resumes it:
finished folds are not retrained, an interrupted one continues from its ``last.ckpt``. The folds
share a W&B group (``<name>-cv-<stamp>``, job type ``cv``). ``<dir>/summary.md`` and ``summary.json``
hold each metric's mean and sample standard deviation over folds and the per-fold rows;
``<dir>/oof_predictions.csv`` has every image once, predicted by the fold that held it out, and
the pooled out-of-fold scores are in the summary too.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from experiments.runs import mean_std, train_once
from lightning_modules.metrics.classification import classification_scores
from lightning_modules.utils.atomic_io import atomic_write, write_json

METRICS = ("auroc", "bacc", "acc")


def n_folds_of(config: str, extra: list[str]) -> int:
    for arg in reversed(extra):
        if arg.startswith("--data.n_folds="):
            return int(arg.split("=", 1)[1])
    return int((yaml.safe_load(Path(config).read_text()) or {}).get("data", {}).get("n_folds", 5))


def out_of_fold(dir_: Path, n_folds: int) -> tuple[Path, dict]:
    """Every fold's test predictions in one file (a ``fold`` column added), and their pooled scores."""
    rows, header = [], None
    for k in range(n_folds):
        with open(dir_ / f"fold{k}" / "predictions.csv", newline="") as handle:
            reader = csv.DictReader(handle)
            header = header or ["fold", *reader.fieldnames]
            rows += [{"fold": k, **row} for row in reader]
    ids = [r["image_id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{dir_}: an image was predicted by two folds; the folds do not partition the data")
    path = dir_ / "oof_predictions.csv"

    def write(handle) -> None:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)

    atomic_write(path, write)
    names = [c[len("prob_"):] for c in header if c.startswith("prob_")]
    pooled = {}
    if "label" in header:
        probs = np.array([[float(r[f"prob_{n}"]) for n in names] for r in rows])
        labels = np.array([names.index(r["label"]) for r in rows])
        pooled = classification_scores(probs, labels, names)
    return path, {"n_images": len(rows), **{k: v for k, v in pooled.items() if k in ("auroc", "bacc", "acc")}}


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--dir", default=None, help="the CV's folder; an existing one is resumed")
    parser.add_argument("--metrics", nargs="+", default=list(METRICS), help="test metrics to tabulate")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="further --key=value overrides for every fold")
    args = parser.parse_args(argv)
    extra = [a for a in args.extra if a != "--"]
    name = (yaml.safe_load(Path(args.config).read_text()) or {}).get("run", {}).get("name", Path(args.config).stem)
    dir_ = Path(args.dir) if args.dir else Path("runs") / f"{name}-cv" / time.strftime("%Y%m%d-%H%M%S")
    n_folds = n_folds_of(args.config, extra)
    group = f"{name}-cv-{dir_.name}"
    folds = [train_once(dir_ / f"fold{k}", ["--config", args.config, *extra, f"--data.fold={k}",
                                             f"--data.n_folds={n_folds}", f"--run.wandb_group={group}",
                                             "--run.wandb_job_type=cv"])
             for k in range(n_folds)]  # fmt: skip
    summary = {m: mean_std([f["test"].get(m) for f in folds]) for m in args.metrics}
    oof_path, pooled = out_of_fold(dir_, n_folds)

    lines = ["| fold | " + " | ".join(f"test {m}" for m in args.metrics) + " | images |",
             "|---" * (len(args.metrics) + 2) + "|"]
    for k, fold in enumerate(folds):
        cells = [f"{fold['test'][m]:.3f}" if fold["test"].get(m) is not None else "-" for m in args.metrics]
        lines.append(f"| {k} | " + " | ".join(cells) + f" | {fold['test'].get('n_images', '-')} |")
    lines.append("| **mean ± std** | " + " | ".join(
        f"**{summary[m]['mean']:.3f} ± {summary[m]['std']:.3f}**" if summary[m]["mean"] is not None else "-"
        for m in args.metrics) + " | |")  # fmt: skip
    table = "\n".join(lines)
    command = " ".join(["python -m experiments.cv", *(argv if argv is not None else sys.argv[1:])])
    footer = (f"\n\n{n_folds}-fold cross-validation of {args.config}, mean ± sample std over folds; "
              f"out-of-fold ({pooled['n_images']} images): "
              + ", ".join(f"{k} {v:.3f}" for k, v in pooled.items() if k != "n_images") + f".\n`{command}`\n")
    atomic_write(dir_ / "summary.md", lambda f: f.write(table + footer))
    write_json(dir_ / "summary.json", {"config": args.config, "n_folds": n_folds, "overrides": extra,
                                       "metrics": summary, "out_of_fold": pooled, "oof_predictions": str(oof_path),
                                       "folds": [{"fold": k, "run_dir": str(dir_ / f"fold{k}"), "test": f["test"]}
                                                 for k, f in enumerate(folds)]})  # fmt: skip
    print(table + footer)
    return dir_


if __name__ == "__main__":
    from datamodules.entry_point import run

    run(main)
