"""k-fold cross-validation: every fold a normal training run, then the paper-style table.

    python -m experiments.cv --config experiments/metablock.yaml [--dir runs/metablock-cv/<stamp>] \\
        [--metrics auroc bacc acc] [-- --data.n_folds=5 --trainer.max_epochs=30 ...]
    make cv EXP=metablock [DATA=pad_ufes20 DATA_DIR=...] [CV_DIR=runs/metablock-cv/<stamp>]

Fold ``k`` trains with ``--data.fold=k`` in ``<dir>/fold<k>/`` (test split: fold k, validation:
fold k+1, training: the rest; patient-grouped). Giving the ``--dir`` of an earlier CV resumes it:
finished folds are not retrained, an interrupted one continues from its ``last.ckpt``. The folds
share a W&B group (``<name>-cv-<stamp>``, job type ``cv``). ``<dir>/summary.md`` and ``summary.json``
hold each metric's mean and sample standard deviation over folds and the per-fold rows;
``<dir>/oof_predictions.csv`` has every image once, predicted by the fold that held it out (with
its group and subgroup metadata), ``<dir>/oof_val_predictions.csv`` every fold's validation
predictions. The pooled out-of-fold estimate is evaluated on those files with the evaluation
library (``docs/evaluation.md``): macro AUROC, balanced accuracy and accuracy with patient
bootstrap intervals, calibration, operating points chosen on the pooled validation predictions,
and ``subgroups.csv``/``.md``, with the options the folds used (``--eval.*``).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

from experiments.net_options import ConfigError
from experiments.runs import mean_std, train_once
from lightning_modules.evaluation import evaluate_predictions, read_predictions
from lightning_modules.evaluation.files import write_report_files
from lightning_modules.evaluation.markdown import report_markdown, with_ci
from lightning_modules.evaluation.options import EvaluationOptions
from lightning_modules.metrics.classification import classification_scores
from lightning_modules.utils.atomic_io import atomic_write, write_json

METRICS = ("auroc", "bacc", "acc")


def data_option(config: str, extra: list[str], name: str, default):
    """``--data.<name>`` as the folds will see it: the last override, else the config's value."""
    for arg in reversed(extra):
        if arg.startswith(f"--data.{name}="):
            return arg.split("=", 1)[1]
    return (yaml.safe_load(Path(config).read_text()) or {}).get("data", {}).get(name, default)


def n_folds_of(config: str, extra: list[str]) -> int:
    return int(data_option(config, extra, "n_folds", 5))


def check_folds_split(config: str, extra: list[str]) -> None:
    """An official split is one fixed train/val/test partition: every "fold" would train the same
    run, so a cross-validation of it is refused rather than reported as n agreeing folds."""
    if data_option(config, extra, "split", "folds") == "official":
        raise ConfigError(f"make cv: {config} uses --data.split=official (one fixed partition); cross-validation "
                         "needs --data.split=folds (patient-grouped folds) — pass it after --, or use make train")


def concatenate(dir_: Path, n_folds: int, name: str, out: str) -> tuple[Optional[Path], list[dict], list[str]]:
    """Every fold's ``name`` in ``<dir>/<out>`` with a ``fold`` column first: ``(path, rows,
    header)``; no file when a fold lacks one (folds trained before validation predictions were
    written)."""
    rows, header = [], None
    for k in range(n_folds):
        path = dir_ / f"fold{k}" / name
        if not path.is_file():
            return None, [], []
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            if header is not None and ["fold", *reader.fieldnames] != header:
                raise ValueError(f"{path}: columns {reader.fieldnames} differ from fold 0's {header[1:]}")
            header = header or ["fold", *reader.fieldnames]
            rows += [{"fold": k, **row} for row in reader]
    ids = [r["image_id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{dir_}: an image is in {name} of two folds; the folds do not partition the data")
    target = dir_ / out

    def write(handle) -> None:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)

    atomic_write(target, write)
    return target, rows, header


def out_of_fold(dir_: Path, n_folds: int) -> tuple[Path, dict]:
    """Every fold's test predictions in one file (a ``fold`` column added), and their pooled scores."""
    path, rows, header = concatenate(dir_, n_folds, "predictions.csv", "oof_predictions.csv")
    if path is None:
        raise FileNotFoundError(f"{dir_}: a fold has no predictions.csv")
    names = [c[len("prob_"):] for c in header if c.startswith("prob_")]
    pooled = {}
    if "label" in header:
        probs = np.array([[float(r[f"prob_{n}"]) for n in names] for r in rows])
        labels = np.array([names.index(r["label"]) for r in rows])
        pooled = classification_scores(probs, labels, names)
    return path, {"n_images": len(rows), **{k: v for k, v in pooled.items() if k in ("auroc", "bacc", "acc")}}


def pooled_report(dir_: Path, n_folds: int, oof_path: Path, folds: list[dict]) -> dict:
    """The evaluation report of the out-of-fold predictions, with the options the folds used;
    operating points and temperature from every fold's validation predictions pooled (each fold's
    model scored its own validation split). Writes ``subgroups.csv``/``.md`` and
    ``oof_reliability.png``; the report keeps the subgroup gaps and names the file."""
    used = folds[0].get("evaluation") or {}
    options = EvaluationOptions(age_bands=used.get("age_bands"), positive=used.get("positive"),
                                n_boot=used.get("n_boot", EvaluationOptions.n_boot), seed=used.get("seed", 0))
    val_path, _, _ = concatenate(dir_, n_folds, "val_predictions.csv", "oof_val_predictions.csv")
    predictions = read_predictions(oof_path)
    fields = [f for f in used.get("subgroups", list(predictions.metadata)) if f in predictions.metadata]
    report = evaluate_predictions(predictions, read_predictions(val_path) if val_path else None,
                                  positive=options.positive, subgroup_fields=fields, bands=options.bands(),
                                  n_boot=options.n_boot, seed=options.seed)  # fmt: skip
    report, _ = write_report_files(report, dir_, "oof_reliability.png", "out-of-fold, top-label")
    report["val_predictions"] = str(val_path) if val_path else None
    return report


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
    check_folds_split(args.config, extra)
    n_folds = n_folds_of(args.config, extra)
    group = f"{name}-cv-{dir_.name}"
    folds = [train_once(dir_ / f"fold{k}", ["--config", args.config, *extra, f"--data.fold={k}",
                                             f"--data.n_folds={n_folds}", f"--run.wandb_group={group}",
                                             "--run.wandb_job_type=cv"])
             for k in range(n_folds)]  # fmt: skip
    summary = {m: mean_std([f["test"].get(m) for f in folds]) for m in args.metrics}
    oof_path, pooled = out_of_fold(dir_, n_folds)
    # Today's pooled scores keep their definitions (torchmetrics'); the report adds the rest.
    report = pooled_report(dir_, n_folds, oof_path, folds)
    pooled.update({k: v for k, v in report.items() if k not in pooled})

    lines = ["| fold | " + " | ".join(f"test {m}" for m in args.metrics) + " | images |",
             "|---" * (len(args.metrics) + 2) + "|"]
    for k, fold in enumerate(folds):
        cells = [f"{fold['test'][m]:.3f}" if fold["test"].get(m) is not None else "-" for m in args.metrics]
        lines.append(f"| {k} | " + " | ".join(cells) + f" | {fold['test'].get('n_images', '-')} |")
    lines.append("| **mean ± std** | " + " | ".join(
        f"**{summary[m]['mean']:.3f} ± {summary[m]['std']:.3f}**" if summary[m]["mean"] is not None else "-"
        for m in args.metrics) + " | |")  # fmt: skip
    lines.append("| **pooled out-of-fold [95 % CI]** | " + " | ".join(
        f"**{with_ci(pooled.get(m), pooled.get(f'{m}_ci'))}**" if pooled.get(m) is not None else "-"
        for m in args.metrics) + f" | {pooled['n_images']} |")  # fmt: skip
    table = "\n".join(lines)
    command = " ".join(["python -m experiments.cv", *(argv if argv is not None else sys.argv[1:])])
    footer = (f"\n\n{n_folds}-fold cross-validation of {args.config}: mean ± sample std over folds, and the pooled "
              f"out-of-fold estimate ({pooled['n_images']} images, {pooled['n_groups']} groups, each predicted by the "
              f"fold that held it out; the folds' models differ, so pooling also mixes their score scales) with "
              f"its interval: {pooled['ci_method']['bootstrap']}. Subgroups: subgroups.md.\n`{command}`\n")
    details = "\n## Pooled out-of-fold report\n\n" + report_markdown(pooled)
    atomic_write(dir_ / "summary.md", lambda f: f.write(table + footer + details))
    write_json(dir_ / "summary.json", {"config": args.config, "n_folds": n_folds, "overrides": extra,
                                       "metrics": summary, "out_of_fold": pooled, "oof_predictions": str(oof_path),
                                       "evaluation": folds[0].get("evaluation"),
                                       "folds": [{"fold": k, "run_dir": str(dir_ / f"fold{k}"), "test": f["test"]}
                                                 for k, f in enumerate(folds)]})  # fmt: skip
    print(table + footer)
    return dir_


if __name__ == "__main__":
    from datamodules.entry_point import run

    run(main)
