"""Patient-grouped stratified folds, and the metadata encoder (fitted on the training split only)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SMALL_SYNTHETIC
from datamodules.lesion_datamodule import LesionDataModule
from datamodules.metadata import MISSING, MetadataEncoder
from datamodules.records import LesionRecord
from datamodules.sources import read_table
from datamodules.splits import assign_folds, split_indices


@pytest.fixture(scope="module")
def synthetic_records(synthetic_cache):
    return read_table("synthetic", synthetic_cache, **SMALL_SYNTHETIC).records


def random_records(n_groups: int = 120, n_classes: int = 4, seed: int = 3) -> list[LesionRecord]:
    """Groups of 1-6 images; a group's images mostly share a label (as a patient's lesions do)."""
    rng = np.random.default_rng(seed)
    prior = np.array([0.5, 0.3, 0.15, 0.05])[:n_classes]
    records = []
    for g in range(n_groups):
        base = int(rng.choice(n_classes, p=prior / prior.sum()))
        for _ in range(int(rng.integers(1, 7))):
            label = base if rng.random() < 0.8 else int(rng.integers(n_classes))
            i = len(records)
            records.append(LesionRecord(f"img{i}", Path(f"img{i}.png"), label, f"patient:{g}", {}, i + 2))
    return records


def _check_partition(records, n_folds: int, seed: int, tolerance: float) -> None:
    labels = np.array([r.label for r in records])
    groups = np.array([r.group for r in records])
    n_classes = labels.max() + 1
    overall = np.bincount(labels, minlength=n_classes) / len(labels)
    test_cover = np.zeros(len(records), int)
    for fold in range(n_folds):
        split = split_indices(records, fold, n_folds, seed)
        assert set(split) == {"train", "val", "test"}
        together = np.concatenate(list(split.values()))
        assert len(together) == len(records) and set(together.tolist()) == set(range(len(records)))
        seen = {name: set(groups[idx]) for name, idx in split.items()}
        assert not seen["train"] & seen["val"]
        assert not seen["train"] & seen["test"]
        assert not seen["val"] & seen["test"]
        for name, idx in split.items():
            share = np.bincount(labels[idx], minlength=n_classes) / len(idx)
            assert np.abs(share - overall).max() <= tolerance, (fold, name, share, overall)
        test_cover[split["test"]] += 1
        # the next fold is validation
        assert np.array_equal(split["val"], split_indices(records, (fold + 1) % n_folds, n_folds, seed)["test"])
    assert (test_cover == 1).all()  # the K test folds cover every record exactly once


def test_synthetic_splits_are_grouped_complete_and_stratified(synthetic_records):
    assert len({r.group for r in synthetic_records}) < len(synthetic_records)  # multi-image patients
    _check_partition(synthetic_records, n_folds=5, seed=0, tolerance=0.05)


def test_random_table_splits_are_grouped_complete_and_stratified():
    records = random_records()
    sizes = np.bincount(np.unique([r.group for r in records], return_inverse=True)[1])
    assert (sizes >= 3).sum() > 40  # many multi-image groups
    _check_partition(records, n_folds=5, seed=11, tolerance=0.08)
    _check_partition(records, n_folds=3, seed=0, tolerance=0.08)


def test_folds_are_group_constant_and_balanced_in_size():
    records = random_records(seed=5)
    folds = assign_folds([r.label for r in records], [r.group for r in records], 5, seed=1)
    by_group: dict[str, set] = {}
    for record, fold in zip(records, folds):
        by_group.setdefault(record.group, set()).add(int(fold))
    assert all(len(f) == 1 for f in by_group.values())
    counts = np.bincount(folds, minlength=5)
    assert counts.min() > 0.6 * len(records) / 5 and counts.max() < 1.4 * len(records) / 5


def test_splits_are_deterministic_for_a_seed(synthetic_records):
    a = split_indices(synthetic_records, 2, 5, seed=4)
    b = split_indices(synthetic_records, 2, 5, seed=4)
    c = split_indices(synthetic_records, 2, 5, seed=5)
    for name in a:
        assert np.array_equal(a[name], b[name])
    assert any(not np.array_equal(a[name], c[name]) for name in a)


# --------------------------------------------------------------------------------------------
# MetadataEncoder
# --------------------------------------------------------------------------------------------


def rec(meta: dict) -> LesionRecord:
    return LesionRecord("x", Path("x.png"), 0, "g", meta, 2)


def hand_encoder() -> tuple[MetadataEncoder, list[LesionRecord]]:
    records = [
        rec({"age": 20.0, "sex": "male", "site": "face"}),
        rec({"age": 40.0, "sex": None, "site": "back"}),
        rec({"age": None, "sex": "female", "site": "face"}),
    ]
    return MetadataEncoder(["age"], ["sex", "site"]).fit(records), records


def test_encoder_hand_computed_example():
    encoder, records = hand_encoder()
    assert encoder.mean == {"age": 30.0}
    assert encoder.std == {"age": 10.0}  # population std of [20, 40]; None is not an age of 0
    assert encoder.categories == {"sex": ["female", "male"], "site": ["back", "face"]}  # sorted
    assert encoder.feature_names == [
        "age", f"age={MISSING}",
        "sex=female", "sex=male", f"sex={MISSING}",
        "site=back", "site=face", f"site={MISSING}",
    ]  # fmt: skip
    assert encoder.dim == len(encoder.feature_names) == 8
    expected = np.array([
        [-1.0, 0, 0, 1, 0, 0, 1, 0],
        [1.0, 0, 0, 0, 1, 1, 0, 0],
        [0.0, 1, 1, 0, 0, 0, 1, 0],
    ], np.float32)  # fmt: skip
    encoded = encoder.encode_all(records)
    assert encoded.dtype == np.float32 and encoded.shape == (3, 8)
    np.testing.assert_array_equal(encoded, expected)
    np.testing.assert_allclose(encoder.encode({"age": 35.0, "sex": "male", "site": "back"})[:2], [0.5, 0.0])


def test_encoder_unseen_category_goes_to_missing():
    encoder, _ = hand_encoder()
    vector = encoder.encode({"age": 30.0, "sex": "other", "site": "scalp"})
    np.testing.assert_array_equal(vector, [0, 0, 0, 0, 1, 0, 0, 1])
    # an absent key and a NaN number are missing too
    np.testing.assert_array_equal(encoder.encode({"age": float("nan")}), [0, 1, 0, 0, 1, 0, 0, 1])
    assert encoder.encode_all([]).shape == (0, 8)


def test_encoder_degenerate_columns():
    encoder = MetadataEncoder(["age", "size"], ["sex"]).fit([rec({"age": 50.0, "sex": None}), rec({"age": 50.0})])
    assert encoder.mean == {"age": 50.0, "size": 0.0}
    assert encoder.std == {"age": 1.0, "size": 1.0}  # constant / empty: no division by zero
    assert encoder.categories == {"sex": []} and encoder.dim == 5
    np.testing.assert_array_equal(encoder.encode({"age": 52.0, "size": 3.0, "sex": "male"}), [2, 0, 3, 0, 1])


def test_encoder_requires_fit():
    with pytest.raises(RuntimeError, match="before fit"):
        MetadataEncoder(["age"], []).encode({"age": 1.0})


def test_encoder_state_dict_round_trip():
    encoder, records = hand_encoder()
    buffer = io.BytesIO()
    torch.save({"encoder": encoder.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)["encoder"]
    assert state == encoder.state_dict()
    restored = MetadataEncoder.from_state_dict(state)
    assert restored.feature_names == encoder.feature_names and restored.dim == encoder.dim
    np.testing.assert_array_equal(restored.encode_all(records), encoder.encode_all(records))
    # the state is a copy: changing the encoder afterwards does not change a saved state
    state_before = encoder.state_dict()
    encoder.categories["sex"].append("x")
    assert state_before["categories"]["sex"] == ["female", "male"]


def test_datamodule_encoder_is_fitted_on_training_split_only(synthetic_cache):
    dm = LesionDataModule(
        dataset="synthetic", data_dir=str(synthetic_cache), source_options=SMALL_SYNTHETIC, num_workers=0
    )
    train_ages = [r.meta["age"] for r in dm.records("train") if r.meta["age"] is not None]
    all_ages = [r.meta["age"] for r in dm.records("all") if r.meta["age"] is not None]
    assert dm.encoder.mean["age"] == pytest.approx(np.mean(train_ages))
    assert dm.encoder.std["age"] == pytest.approx(np.std(train_ages))
    assert abs(np.mean(all_ages) - np.mean(train_ages)) > 1e-6
    assert dm.encoder.mean["age"] != pytest.approx(np.mean(all_ages), abs=1e-6)
    for column in dm.encoder.categorical:
        assert dm.encoder.categories[column] == sorted(
            {r.meta[column] for r in dm.records("train")} - {None}
        ), column
