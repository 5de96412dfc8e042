"""Shared test set-up: offline W&B, no albumentations update check, a small synthetic dataset."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

#: A small synthetic dataset (about 240 images): big enough for 5 grouped folds with every class.
SMALL_SYNTHETIC = {"n_patients": 160, "seed": 7, "min_size": 48, "max_size": 64}


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory) -> Path:
    """Cache root holding the small synthetic dataset, generated once per test session."""
    from datamodules import synthetic

    root = tmp_path_factory.mktemp("synthetic-cache")
    synthetic.ensure_generated(synthetic.SyntheticConfig(**SMALL_SYNTHETIC), root)
    return root


@pytest.fixture(scope="session")
def synthetic_dir(synthetic_cache) -> Path:
    """The PAD-UFES-20-format folder of the small synthetic dataset."""
    from datamodules import synthetic

    return synthetic.dataset_dir(synthetic.SyntheticConfig(**SMALL_SYNTHETIC), synthetic_cache)


@pytest.fixture(scope="module")
def one_thread():
    """For tests of tiny tensors: intra-op threads gain nothing there, and next to another job on
    the same cores they oversubscribe the CPU and run ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
