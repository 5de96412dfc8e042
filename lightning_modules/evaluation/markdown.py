"""The report and a comparison as Markdown tables: what ``make evaluate`` prints and writes, and
the cells ``make cv`` and ``make compare`` put in their summaries."""

from __future__ import annotations

from typing import Optional, Sequence


def number(value: Optional[float], digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def with_ci(value: Optional[float], ci: Optional[Sequence[Optional[float]]] = None, digits: int = 3) -> str:
    """``0.812 [0.780, 0.845]``; the value alone without a (complete) interval; ``n/a`` without a value."""
    if value is None:
        return "n/a"
    if ci is None or len(ci) != 2 or ci[0] is None or ci[1] is None:
        return number(value, digits)
    return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def p_value(p: Optional[float]) -> str:
    if p is None:
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def difference(entry: Optional[dict], digits: int = 3) -> str:
    """``+0.021 [-0.010, 0.050], p 0.190`` from a paired result (``difference``, ``ci``, ``p``)."""
    if not entry or entry.get("difference") is None:
        return "n/a"
    low, high = entry.get("ci") or (None, None)
    interval = f" [{low:+.{digits}f}, {high:+.{digits}f}]" if low is not None and high is not None else ""
    return f"{entry['difference']:+.{digits}f}{interval}, p {p_value(entry.get('p'))}"


def headline_rows(report: dict) -> list[tuple[str, str]]:
    """(name, value with interval) of the report's main numbers."""
    rows = [("images / groups", f"{report['n_images']} / {report['n_groups']}"),
            ("macro AUROC", with_ci(report["auroc"], report["auroc_ci"])),
            ("balanced accuracy", with_ci(report["bacc"], report["bacc_ci"])),
            ("accuracy", with_ci(report["acc"], report["acc_ci"])),
            ("ECE (top-label, 15 bins)", number(report["ece"]))]
    scaling = (report.get("calibration") or {}).get("temperature_scaling")
    if scaling:
        after = f"{number(scaling['ece_after'])} (T = {scaling['temperature']:.3g}, fitted on validation)"
        rows.append(("ECE after temperature scaling", after))
    if report.get("pauc_tpr80") is not None:
        rows.append(("pAUC above 80 % TPR (ISIC 2024)", number(report["pauc_tpr80"], 4)))
    return rows


def report_markdown(report: dict, title: str = "") -> str:
    """The headline numbers, per-class scores and the operating points chosen on validation."""
    lines = [f"## {title}", ""] if title else []
    lines += ["| | value [95 % CI] |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in headline_rows(report)]
    lines += ["", "| class | images | AUROC [95 % CI] | DeLong interval | ECE (one-vs-rest) | pAUC above 80 % TPR |",
              "| --- | --- | --- | --- | --- | --- |"]
    for name in report["class_names"]:
        delong = report["auroc_per_class_delong"].get(name) or {}
        lines.append(f"| {name} | {report['class_counts'][name]} | "
                     f"{with_ci(report['auroc_per_class'][name], report['auroc_per_class_ci'][name])} | "
                     f"{with_ci(delong.get('auc'), delong.get('ci'))} | {number(report['ece_per_class'].get(name))} | "
                     f"{number(report['pauc_tpr80_per_class'].get(name), 4)} |")
    chosen = [row for row in report["operating_points"] if row["chosen_on"] == "val"]
    if chosen:
        lines += ["", "Operating points (threshold chosen on the validation split, applied to these images):", "",
                  "| positive | target sensitivity | threshold | sensitivity [95 % CI] | specificity [95 % CI] |",
                  "| --- | --- | --- | --- | --- |"]
        for row in chosen:
            lines.append(f"| {row['positive']} | {row['target_sensitivity']:.2f} | {number(row['threshold'], 4)} | "
                         f"{with_ci(row['sensitivity'], row['sensitivity_ci'])} | "
                         f"{with_ci(row['specificity'], row['specificity_ci'])} |")
    method = report.get("ci_method") or {}
    lines += ["", f"Intervals: {method.get('bootstrap', '')}.", ""]
    return "\n".join(lines)


def comparison_markdown(result: dict, name_a: str = "A", name_b: str = "B") -> str:
    """The paired comparison: bootstrap differences (A - B) and DeLong's test per class."""
    images = result.get("images") or {}
    lines = [f"Paired comparison on {result['n_images']} common images ({result['n_groups']} groups)"
             + (f"; only in {name_a}: {images['only_in_a']}, only in {name_b}: {images['only_in_b']}" if images else "")
             + ".", "",
             f"| metric | {name_a} | {name_b} | {name_a} - {name_b} [95 % CI], p |", "| --- | --- | --- | --- |"]
    for key, label in (("auroc", "macro AUROC"), ("bacc", "balanced accuracy"), ("acc", "accuracy")):
        entry = result[key]
        lines.append(f"| {label} | {number(entry['a'])} | {number(entry['b'])} | {difference(entry)} |")
    lines += ["", f"| class (one-vs-rest) | AUROC {name_a} | AUROC {name_b} | DeLong {name_a} - {name_b} [95 % CI], p |",
              "| --- | --- | --- | --- |"]
    tests = dict(result["delong_per_class"])
    if result.get("delong_binary"):
        tests = {f"{result['delong_binary']['positive']} (binary task)": result["delong_binary"]}
    for name, test in tests.items():
        lines.append(f"| {name} | {number(test.get('auc_a'))} | {number(test.get('auc_b'))} | {difference(test)} |")
    method = result.get("method") or {}
    lines += ["", f"Bootstrap: {method.get('bootstrap', '')}. DeLong: {method.get('delong', '')}.", ""]
    return "\n".join(lines)
