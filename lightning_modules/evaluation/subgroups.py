"""Does the model work equally well across skin types, sexes, ages, body sites and centres?

For each value of each subgroup field (the raw metadata value; numbers such as age cut into
bands) one row: images, patients, images per class, macro AUROC and balanced accuracy with
grouped-bootstrap intervals, and sensitivity / specificity at thresholds chosen on the
validation split. Per field, the largest gap between two scored groups, with an interval for that
difference.

A subgroup's scores come from the same patient resamples as everything else (the whole test set
is resampled and each subgroup scored on the images that fall in it), so the groups' intervals
and the gap's interval are joint. Only a group that can be scored gets a number: with fewer than
``min_images`` images, or a class with no image in it (its AUROC and recall do not exist, and a
mean over the other classes is not comparable with the other groups), the value is ``None`` and
``note`` says why, with the counts in the row. A missing metadata value is a group of its own,
``<missing>``: missingness is often not random.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from datamodules.sources.reading import is_missing
from lightning_modules.evaluation.bootstrap import (
    DEFAULT_N_BOOT,
    ClassificationMetrics,
    GroupBootstrap,
    GroupSums,
    percentile_interval,
    safe_ratio,
    to_float,
)
from lightning_modules.evaluation.inputs import check_scores
from lightning_modules.utils.atomic_io import atomic_write

MISSING = "<missing>"
AGE_BANDS = (30, 45, 60, 75)
#: Numeric fields cut into bands by default (PAD-UFES-20 and HAM10000 ``age``, ISIC ``age_approx``,
#: ISIC 2017 ``age_approximate``).
DEFAULT_BANDS = {"age": AGE_BANDS, "age_approx": AGE_BANDS, "age_approximate": AGE_BANDS}
MIN_IMAGES = 20

#: An operating point: the classes that count as positive and the threshold on the sum of their probabilities.
Threshold = tuple[Sequence[int], float]


def band_names(edges: Sequence[float]) -> list[str]:
    """``(30, 45)`` -> ``["<30", "30-44", ">=45"]`` (integer edges read as whole years)."""
    edges = list(edges)
    fmt = lambda v: f"{v:g}"  # noqa: E731
    names = [f"<{fmt(edges[0])}"]
    for low, high in zip(edges[:-1], edges[1:]):
        upper = f"{high - 1:g}" if float(low).is_integer() and float(high).is_integer() else f"<{fmt(high)}"
        names.append(f"{fmt(low)}-{upper}")
    return names + [f">={fmt(edges[-1])}"]


def subgroup_values(field: str, values: Sequence, edges: Optional[Sequence[float]] = None
                    ) -> tuple[np.ndarray, list[str]]:
    """``(value of each image as a string, the values in display order)``; numbers cut by ``edges``."""
    raw = [None if v is None or (isinstance(v, float) and math.isnan(v)) or is_missing(str(v)) else v for v in values]
    if edges is None:
        labels = np.array([MISSING if v is None else str(v).strip() for v in raw], dtype=object)
        present = sorted({v for v in labels if v != MISSING}, key=_natural)
    else:
        if list(edges) != sorted(edges) or len(edges) == 0:
            raise ValueError(f"subgroup bands of {field!r} must be increasing numbers, got {list(edges)}")
        names = band_names(edges)
        labels = np.empty(len(raw), dtype=object)
        for i, v in enumerate(raw):
            if v is None:
                labels[i] = MISSING
                continue
            try:
                number = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"subgroup field {field!r} is cut into bands {list(edges)} but image {i} has the "
                                 f"non-numeric value {v!r}") from None
            labels[i] = names[int(np.searchsorted(edges, number, side="right"))]
        present = [n for n in names if n in set(labels)]
    return labels, present + ([MISSING] if MISSING in set(labels) else [])


def _natural(value: str):
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def subgroup_report(labels, probs, class_names: Sequence[str], groups, metadata: Mapping[str, Sequence],
                    fields: Sequence[str], thresholds: Optional[Mapping[str, Threshold]] = None,
                    bands: Optional[Mapping[str, Sequence[float]]] = None, min_images: int = MIN_IMAGES,
                    n_boot: int = DEFAULT_N_BOOT, seed: int = 0, level: float = 0.95) -> dict:
    """``{"rows": [...], "gaps": [...]}``: a row per (field, value) and per field the largest gap of
    each metric. ``metadata``: field -> one raw value per image (a dict of lists or a DataFrame);
    ``thresholds``: operating point name -> (class indices, threshold chosen on validation);
    ``bands``: field -> band edges (default: ages in :data:`AGE_BANDS`)."""
    labels, probs = check_scores(labels, probs, class_names)
    bands = DEFAULT_BANDS if bands is None else bands
    thresholds = dict(thresholds or {})
    boot = GroupBootstrap(groups, len(labels), n_boot, seed)
    k = len(class_names)
    cells, rows = [], []  # cells: (row index, image mask) of the scorable groups
    for field in fields:
        if field not in metadata:
            raise ValueError(f"subgroup field {field!r} is not in the metadata; it has {sorted(metadata)}")
        column = list(metadata[field])
        if len(column) != len(labels):
            raise ValueError(f"metadata field {field!r} has {len(column)} values for {len(labels)} images")
        values, order = subgroup_values(field, column, bands.get(field))
        for value in order:
            mask = values == value
            counts = np.bincount(labels[mask], minlength=k)
            row = {"field": field, "value": value, "images": int(mask.sum()),
                   "patients": int(np.unique(boot.codes[mask]).size),
                   **{f"n_{name}": int(counts[c]) for c, name in enumerate(class_names)},
                   "auroc": None, "auroc_ci_low": None, "auroc_ci_high": None,
                   "bacc": None, "bacc_ci_low": None, "bacc_ci_high": None}
            for name in thresholds:
                row.update({f"sensitivity_{name}": None, f"sensitivity_{name}_ci_low": None,
                            f"sensitivity_{name}_ci_high": None, f"specificity_{name}": None,
                            f"specificity_{name}_ci_low": None, f"specificity_{name}_ci_high": None})
            absent = [name for c, name in enumerate(class_names) if counts[c] == 0]
            if row["images"] < min_images:
                row["note"] = f"not scored: {row['images']} images < minimum {min_images}"
            elif absent:
                row["note"] = f"AUROC and balanced accuracy not scored: no image of {', '.join(absent)}"
            else:
                row["note"] = ""
            if row["images"] >= min_images:
                cells.append((len(rows), mask))
            rows.append(row)
    draws = _score_cells(labels, probs, boot, cells, thresholds)
    for (index, _), cell in zip(cells, draws):
        row = rows[index]
        if not row["note"]:
            row["auroc"], row["bacc"] = cell["auroc"][0], cell["bacc"][0]
            row["auroc_ci_low"], row["auroc_ci_high"] = percentile_interval(cell["auroc"][1], level)
            row["bacc_ci_low"], row["bacc_ci_high"] = percentile_interval(cell["bacc"][1], level)
        for name in thresholds:
            for metric in ("sensitivity", "specificity"):
                point, resampled = cell[f"{metric}_{name}"]
                if point is None:
                    side = "positive" if metric == "sensitivity" else "negative"
                    row["note"] = "; ".join(filter(None, [row["note"], f"no {side} image for {name}: no {metric}"]))
                    continue
                row[f"{metric}_{name}"] = point
                row[f"{metric}_{name}_ci_low"], row[f"{metric}_{name}_ci_high"] = percentile_interval(resampled, level)
    return {"rows": rows, "gaps": _gaps(rows, cells, draws, thresholds, level),
            "method": boot.method(level) + "; each subgroup scored on its images within every resample",
            "min_images": min_images}


def _score_cells(labels, probs, boot: GroupBootstrap, cells, thresholds) -> list[dict]:
    """For each cell: metric -> (point estimate, resampled values)."""
    kernels = []
    for _, mask in cells:
        codes = boot.codes[mask]
        metrics = ClassificationMetrics(labels[mask], probs[mask], codes, boot.n_groups)
        columns = []
        for classes, threshold in thresholds.values():
            positive = np.isin(labels[mask], classes)
            called = probs[mask][:, list(classes)].sum(axis=1) >= threshold
            columns.append(np.column_stack([positive & called, positive, ~positive & ~called, ~positive]))
        sums = GroupSums(np.hstack(columns).astype(np.float64), codes, boot.n_groups) if columns else None
        kernels.append((metrics, sums))

    def strict(weights):
        out = {}
        for i, (metrics, sums) in enumerate(kernels):
            scores = metrics(weights)
            # Every class must be scorable: a mean over fewer classes is another metric.
            out[f"{i}/auroc"] = scores["auroc_per_class"].mean(axis=1)
            out[f"{i}/bacc"] = scores["recall_per_class"].mean(axis=1)
            if sums is not None:
                out[f"{i}/sums"] = sums(weights)
        return out

    point, resampled = strict(boot.ones()), boot.collect(strict) if cells else {}
    results = []
    for i in range(len(cells)):
        cell = {m: (to_float(point[f"{i}/{m}"][0]), resampled[f"{i}/{m}"]) for m in ("auroc", "bacc")}
        for j, name in enumerate(thresholds):
            ps, rs = point.get(f"{i}/sums"), resampled.get(f"{i}/sums")
            for metric, (num, den) in (("sensitivity", (0, 1)), ("specificity", (2, 3))):
                value = to_float(safe_ratio(ps[:, 4 * j + num], ps[:, 4 * j + den])[0])
                cell[f"{metric}_{name}"] = (value, safe_ratio(rs[:, 4 * j + num], rs[:, 4 * j + den]))
        results.append(cell)
    return results


def _gaps(rows, cells, draws, thresholds, level) -> list[dict]:
    """Per field and metric: the highest minus the lowest scored group, with the interval of that
    difference over the joint resamples."""
    metrics = ["auroc", "bacc"] + [f"{m}_{name}" for name in thresholds for m in ("sensitivity", "specificity")]
    by_cell = {index: cell for (index, _), cell in zip(cells, draws)}
    gaps = []
    for field in dict.fromkeys(row["field"] for row in rows):
        for metric in metrics:
            scored = [(rows[i]["value"], by_cell[i][metric]) for i in by_cell
                      if rows[i]["field"] == field and rows[i][metric] is not None]
            gap = {"field": field, "metric": metric, "groups_scored": len(scored), "gap": None, "gap_ci_low": None,
                   "gap_ci_high": None, "high_group": None, "high_value": None, "low_group": None, "low_value": None}
            if len(scored) >= 2:
                (high_name, (high, high_draws)), (low_name, (low, low_draws)) = (
                    max(scored, key=lambda s: s[1][0]), min(scored, key=lambda s: s[1][0]))
                gap.update(gap=high - low, high_group=high_name, high_value=high, low_group=low_name, low_value=low)
                gap["gap_ci_low"], gap["gap_ci_high"] = percentile_interval(high_draws - low_draws, level)
            gaps.append(gap)
    return gaps


def _text(value, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _interval(row: dict, key: str) -> str:
    if row.get(key) is None:
        return "n/a"
    low, high = row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")
    return f"{row[key]:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else "")


def subgroups_markdown(subgroups: dict) -> str:
    """The rows (counts, AUROC and balanced accuracy with intervals, operating points) and the gaps."""
    rows, gaps = subgroups["rows"], subgroups["gaps"]
    if not rows:
        return "No subgroup fields were given.\n"
    ops = [k[len("sensitivity_"):] for k in rows[0]
           if k.startswith("sensitivity_") and not k.endswith(("_ci_low", "_ci_high"))]
    head = ["field", "value", "images", "patients", "AUROC [95 % CI]", "balanced acc. [95 % CI]"]
    head += [f"sens. / spec. {name}" for name in ops] + ["note"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in rows:
        cells = [row["field"], row["value"], str(row["images"]), str(row["patients"]), _interval(row, "auroc"),
                 _interval(row, "bacc")]
        cells += [f"{_text(row[f'sensitivity_{n}']) or 'n/a'} / {_text(row[f'specificity_{n}']) or 'n/a'}" for n in ops]
        lines.append("| " + " | ".join(cells + [row["note"]]) + " |")
    lines += ["", "Largest gap per field (highest minus lowest scored group; interval over the joint resamples):", "",
              "| field | metric | gap [95 % CI] | highest | lowest | groups scored |", "|" + " --- |" * 6]
    for gap in gaps:
        if gap["gap"] is None:
            lines.append(f"| {gap['field']} | {gap['metric']} | n/a | | | {gap['groups_scored']} |")
            continue
        lines.append(f"| {gap['field']} | {gap['metric']} | {gap['gap']:.3f} [{_text(gap['gap_ci_low'])}, "
                     f"{_text(gap['gap_ci_high'])}] | {gap['high_group']} ({gap['high_value']:.3f}) | "
                     f"{gap['low_group']} ({gap['low_value']:.3f}) | {gap['groups_scored']} |")
    method = subgroups.get("method", "")
    return "\n".join(lines) + f"\n\nIntervals: {method}. Groups with fewer than {subgroups.get('min_images')} " \
                              "images, or without every class, are not scored.\n"


def write_subgroups(subgroups: dict, folder: str | Path) -> tuple[Path, Path]:
    """``subgroups.csv`` (every column; blank = not scored) and ``subgroups.md`` in ``folder``."""
    folder = Path(folder)
    rows = subgroups["rows"]
    columns = list(dict.fromkeys(key for row in rows for key in row))

    def write_csv(handle) -> None:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else (repr(row[c]) if isinstance(row[c], float) else row[c])
                             for c in columns])

    return (atomic_write(folder / "subgroups.csv", write_csv),
            atomic_write(folder / "subgroups.md", lambda handle: handle.write(subgroups_markdown(subgroups))))
