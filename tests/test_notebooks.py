"""Every notebook runs headless, top to bottom (they are committed without outputs)."""

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name}: strip outputs"


# The two notebooks that train a model when there is no run execute in `make test-slow`.
TRAINING = ("attention_maps", "prototypes")


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.slow) if p.stem in TRAINING else p
                                  for p in NOTEBOOKS], ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_and_shows_its_figures(path, tmp_path, monkeypatch):
    """Run as Jupyter runs it, from the notebook's own folder (its paths must still resolve), and
    with Jupyter's inline backend: every notebook must show at least one picture."""
    notebook = nbformat.read(path, as_version=4)
    # Notebooks that need a trained model train a tiny one here instead of using runs/.
    monkeypatch.setenv("DERMATTN_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("DERMATTN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel picks Jupyter's inline backend itself
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError, with the failing cell, on any error
    pictures = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
                if "image/png" in output.get("data", {})]  # fmt: skip
    assert pictures, f"{path.name} showed no figure"


@pytest.mark.parametrize("chosen, expected", [(None, "agg"), ("module://matplotlib_inline.backend_inline",
                                                               "module://matplotlib_inline.backend_inline")])
def test_the_library_draws_headless_unless_a_backend_was_chosen(chosen, expected):
    """Training must never open a window; a notebook (whose kernel sets MPLBACKEND) must keep its
    inline figures when it imports the library's plotting code."""
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"} | ({"MPLBACKEND": chosen} if chosen else {})
    code = "import lightning_modules.utils.plots, matplotlib; print(matplotlib.get_backend().lower())"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected
