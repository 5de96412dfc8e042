"""Evaluate any predictions file, and compare two on the images they share.

    python -m experiments.evaluate runs/metablock/<run>/predictions.csv [other.csv] [--val val.csv] \\
        [--out dir] [--positive MEL BCC SCC] [--subgroups fitspatrick age] [--age-bands 30 45 60 75] \\
        [--n-boot 2000] [--seed 0]
    make evaluate PRED=runs/.../predictions.csv [PRED2=other.csv] [OUT=dir] [VAL=val_predictions.csv] [ARGS=...]

A file is ours (a run's ``predictions.csv``, ``make predict``, a CV's ``oof_predictions.csv``) or
an external model's with the same columns (``docs/evaluation.md``): ``image_id``, ``prob_<class>``,
``label``, and ideally ``group`` (patient) and metadata columns. Each file gets the whole report
(``lightning_modules.evaluation.evaluate``); two files are also compared on their common labelled
images: paired DeLong test per class (and for a binary task), paired patient bootstrap of the
macro AUROC, balanced accuracy and accuracy differences.

Defaults taken from beside the first file: the validation predictions (``val_predictions.csv``
beside ``predictions.csv``, ``oof_val_predictions.csv`` beside ``oof_predictions.csv``) for the
operating points and temperature scaling, and the options the run used (``metrics.json``'s
``evaluation``: positive set, age bands, resamples, seed), so that a run's file gives its
``metrics.json`` report again. Subgroups: every metadata column of the file unless ``--subgroups``.

Writes to ``--out`` (default: ``evaluation/`` beside the first file, ``comparison-<second>/`` for
two): ``evaluation.json`` (``a``, ``b``: the reports; ``comparison``), ``evaluation.md``,
``subgroups.csv``/``.md`` and ``reliability.png`` (the second file's in ``b/``); prints the table.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Optional

from lightning_modules.evaluation import PredictionsError, compare, evaluate_predictions, read_predictions
from lightning_modules.evaluation.bootstrap import DEFAULT_N_BOOT
from lightning_modules.evaluation.files import write_report_files
from lightning_modules.evaluation.markdown import comparison_markdown, difference, headline_rows, report_markdown
from lightning_modules.evaluation.options import EvaluationOptions
from lightning_modules.utils.atomic_io import atomic_write, write_json


def sibling_val(path: Path) -> Optional[Path]:
    """The validation predictions written beside a predictions file (``predictions`` ->
    ``val_predictions`` in its name), if there are any."""
    stem = path.stem
    at = stem.rfind("predictions")
    if at < 0:
        return None
    candidate = path.with_name(stem[:at] + "val_" + stem[at:] + path.suffix)
    return candidate if candidate.is_file() and candidate != path else None


def run_options(path: Path) -> dict:
    """The ``evaluation`` options a training run (or CV) used, from ``metrics.json`` / ``summary.json``
    beside the file; ``{}`` when there is none."""
    for name in ("metrics.json", "summary.json"):
        candidate = path.parent / name
        if candidate.is_file():
            try:
                found = json.loads(candidate.read_text()).get("evaluation")
            except (ValueError, AttributeError):
                continue
            if isinstance(found, dict):
                return found
    return {}


def options_for(args: argparse.Namespace, path: Path) -> EvaluationOptions:
    """The command line's options, the run's where the command line says nothing."""
    used = run_options(path)
    pick = lambda given, key, default=None: given if given is not None else used.get(key, default)  # noqa: E731
    return EvaluationOptions(subgroups=args.subgroups, age_bands=pick(args.age_bands, "age_bands"),
                             positive=pick(args.positive, "positive"),
                             n_boot=pick(args.n_boot, "n_boot", DEFAULT_N_BOOT), seed=pick(args.seed, "seed", 0))


def evaluate_file(path: Path, val: Optional[Path], options: EvaluationOptions, out: Path, title: str,
                  name: str = "") -> dict:
    """The report of one file; its subgroups and reliability diagram written to ``out`` (``name``:
    that folder relative to the JSON's)."""
    predictions = read_predictions(path)
    fields = list(predictions.metadata) if options.subgroups is None else list(options.subgroups)
    unknown = [f for f in fields if f not in predictions.metadata]
    if unknown:
        raise PredictionsError(f"--subgroups: {unknown} are not columns of {path}; its metadata columns are "
                               f"{list(predictions.metadata)}")
    report = evaluate_predictions(predictions, read_predictions(val) if val else None, positive=options.positive,
                                  subgroup_fields=fields, bands=options.bands(), n_boot=options.n_boot,
                                  seed=options.seed)  # fmt: skip
    return write_report_files(report, out, "reliability.png", title, prefix=name)[0]


def short_names(paths: list[Path]) -> list[str]:
    """The files' last path parts, as few as tell them apart (``run/predictions.csv``, or
    ``soft_attention/evidence/predictions.csv`` when two runs share a folder name)."""
    for depth in range(2, max(len(p.parts) for p in paths) + 1):
        names = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def slug(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", f"{path.parent.name}-{path.stem}").strip("-")


def short_table(reports: dict[str, dict], comparison: Optional[dict]) -> str:
    names = list(reports)
    rows = [dict(headline_rows(report)) for report in reports.values()]
    keys = list(dict.fromkeys(k for row in rows for k in row))
    head = ["", *names] + (["A - B [95 % CI], p"] if comparison else [])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    paired = {"macro AUROC": "auroc", "balanced accuracy": "bacc", "accuracy": "acc"}
    for key in keys:
        cells = [key, *[row.get(key, "") for row in rows]]
        if comparison:
            cells.append(difference(comparison[paired[key]]) if key in paired else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("predictions", nargs="+", metavar="PRED", help="one predictions file, or two to compare")
    parser.add_argument("--val", default=None, help="validation predictions of the first file's model "
                                                    "(default: val_predictions.csv beside it, if any)")
    parser.add_argument("--val2", default=None, help="the same for the second file")
    parser.add_argument("--no-val", action="store_true", help="no validation predictions (no operating points, "
                                                              "no temperature scaling)")
    parser.add_argument("--out", default=None, help="output folder (default: beside the first file)")
    parser.add_argument("--positive", nargs="+", default=None, help="classes scored together, e.g. MEL BCC SCC")
    parser.add_argument("--subgroups", nargs="*", default=None,
                        help="metadata columns reported per value (default: every metadata column; none: no "
                             "subgroups)")
    parser.add_argument("--age-bands", nargs="+", type=float, default=None, help="age band edges (30 45 60 75)")
    parser.add_argument("--n-boot", type=int, default=None, help=f"bootstrap resamples ({DEFAULT_N_BOOT})")
    parser.add_argument("--seed", type=int, default=None, help="bootstrap seed (0)")
    args = parser.parse_args(argv)
    if len(args.predictions) > 2:
        parser.error(f"one or two predictions files, got {len(args.predictions)}")
    paths = [Path(p) for p in args.predictions]
    vals = [None if args.no_val else Path(v) if v else sibling_val(p) for p, v in zip(paths, (args.val, args.val2))]
    out = Path(args.out) if args.out else paths[0].parent / ("evaluation" if len(paths) == 1
                                                               else f"comparison-{slug(paths[1])}")
    options = options_for(args, paths[0])
    reports = {}
    titles = short_names(paths)
    try:
        for role, path, val, title in zip("ab", paths, vals, titles):
            if val is not None:
                print(f"{path}: operating points and temperature from {val}")
            name = "" if role == "a" else "b/"
            reports[role] = evaluate_file(path, val, options, out / name, title, name)
        comparison = (compare(read_predictions(paths[0]), read_predictions(paths[1]), n_boot=options.n_boot,
                              seed=options.seed, positive=options.positive) if len(paths) == 2 else None)  # fmt: skip
    except (PredictionsError, ValueError) as err:
        sys.exit(f"error: {err}")
    command = " ".join(["python -m experiments.evaluate", *(argv if argv is not None else sys.argv[1:])])
    result = {"a": {"file": str(paths[0]), "val": str(vals[0]) if vals[0] else None, "report": reports["a"]},
              **({"b": {"file": str(paths[1]), "val": str(vals[1]) if vals[1] else None, "report": reports["b"]},
                  "comparison": comparison} if comparison else {}),
              "options": options.as_dict(), "command": command}  # fmt: skip
    write_json(out / "evaluation.json", result)
    text = [report_markdown(reports["a"], f"A: {paths[0]}")]
    if comparison:
        text += [report_markdown(reports["b"], f"B: {paths[1]}"), "## A vs B", "", comparison_markdown(comparison)]
    text.append(f"`{command}`\n")
    atomic_write(out / "evaluation.md", lambda f: f.write("\n".join(text)))
    print(short_table({f"A: {titles[0]}": reports["a"], **({f"B: {titles[1]}": reports["b"]} if comparison else {})},
                      comparison))
    print(f"\nwrote {out / 'evaluation.json'}, {out / 'evaluation.md'}")
    return out


if __name__ == "__main__":
    main()
