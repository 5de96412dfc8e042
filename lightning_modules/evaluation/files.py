"""The files that go beside a report: ``subgroups.csv`` / ``.md`` (the rows) and the reliability
diagram, written the same way by a run's test, ``make cv`` and ``make evaluate``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lightning_modules.evaluation.calibration import reliability_figure
from lightning_modules.evaluation.subgroups import write_subgroups
from lightning_modules.utils.atomic_io import write_png


def write_report_files(report: dict, folder: str | Path, reliability: str = "reliability.png", title: str = "",
                       prefix: str = "") -> tuple[dict, np.ndarray]:
    """Write ``subgroups.csv``/``.md`` (when the report has subgroups) and the reliability diagram
    ``reliability`` into ``folder``; return the report with ``subgroups`` keeping its gaps and
    method and naming the CSV (``prefix``: the folder as the report's reader sees it), and the
    diagram as an RGB array."""
    folder = Path(folder)
    subgroups = report.get("subgroups")
    if subgroups is not None:
        write_subgroups(subgroups, folder)
        report = {**report, "subgroups": {**{k: v for k, v in subgroups.items() if k != "rows"},
                                          "file": f"{prefix}subgroups.csv"}}
    picture = reliability_figure(report["calibration"]["reliability"], title, report["ece"])
    write_png(folder / reliability, picture)
    return report, picture
