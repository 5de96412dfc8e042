"""ISIC 2024 (SLICE-3D) on a format-exact fixture (tests/dataset_writers.py): the reader, its strict
errors, images inside HDF5, the patient-relative features, hospital-held-out splits and a short
training run that selects checkpoints by the challenge metric."""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import dataset_writers as w
from datamodules import hdf5_images
from datamodules.dataset import load_rgb
from datamodules.lesion_datamodule import LesionDataModule
from datamodules.meta_columns import MetaRow
from datamodules.records import UNLABELED, DatasetError
from datamodules.sources import isic2024, read_table, read_unlabeled
from datamodules.sources.cleaning import verify_images
from datamodules.splits import split_groups

REPO = Path(__file__).resolve().parents[1]


def esc(value) -> str:
    return re.escape(str(value))


def number(raw: str):
    return None if raw == "" else float(raw)


def category(raw: str):
    return None if raw in ("", "Unknown") else raw


@pytest.fixture(scope="module")
def fixture_hdf5(tmp_path_factory):
    return w.write_isic2024(tmp_path_factory.mktemp("isic2024-hdf5"), images="hdf5")


# --------------------------------------------------------------------------------------------
# The files as distributed
# --------------------------------------------------------------------------------------------


def test_writer_matches_the_distributed_layout(fixture_hdf5):
    """The fixture itself: 55 / 44 columns in order, hospitals with commas quoted, blanks."""
    with open(fixture_hdf5.csv_path, newline="") as handle:
        header = next(csv.reader(handle))
    assert header == isic2024.TRAIN_COLUMNS and len(header) == 55
    with open(fixture_hdf5.root / "test-metadata.csv", newline="") as handle:
        assert next(csv.reader(handle)) == isic2024.TEST_COLUMNS and len(isic2024.TEST_COLUMNS) == 44
    text = fixture_hdf5.csv_path.read_text()
    assert '"Department of Dermatology, Hospital Clínic de Barcelona"' in text
    assert any(r["sex"] == "" for r in fixture_hdf5.rows) and any(r["age_approx"] == "" for r in fixture_hdf5.rows)
    with h5py.File(fixture_hdf5.extra["hdf5"], "r") as handle:
        assert set(handle) == {r["isic_id"] for r in fixture_hdf5.rows}
        first = fixture_hdf5.rows[0]["isic_id"]
        assert handle[first][()] == fixture_hdf5.extra["jpegs"][first]  # the JPEG file's bytes


@pytest.mark.parametrize("images", ["hdf5", "jpeg"])
def test_records(tmp_path, images):
    ds = w.write_isic2024(tmp_path, images=images)
    table = read_table("isic2024", tmp_path)
    assert table.dataset == "isic2024" and table.class_names == ["benign", "malignant"]
    assert table.csv_path == tmp_path / "train-metadata.csv"
    assert len(table.records) == len(ds.rows) == 36
    for i, (record, row) in enumerate(zip(table.records, ds.rows)):
        assert record.line == i + 2 and record.image_id == row["isic_id"]
        assert record.label == int(row["target"])
        assert record.group == f"patient:{row['patient_id']}"
        if images == "hdf5":
            assert (record.image_path, record.image_key) == (tmp_path / "train-image.hdf5", row["isic_id"])
            assert record.original_path == Path(f"{tmp_path / 'train-image.hdf5'}::{row['isic_id']}")
        else:
            assert record.image_path == ds.images[row["isic_id"]] and record.image_key is None
            assert record.original_path == record.image_path
    assert sum(r.label for r in table.records) == 7
    # 15 patients, 1-4 lesions each; every lesion of a patient in one group
    assert len({r.group for r in table.records}) == 15


def test_both_distributions_present_reads_the_hdf5(tmp_path):
    w.write_isic2024(tmp_path, images="both")
    table = read_table("isic2024", tmp_path)
    assert {r.image_key is not None for r in table.records} == {True}


def test_metadata_values(fixture_hdf5):
    table = read_table("isic2024", fixture_hdf5.root)
    assert table.numeric_columns == isic2024.NUMERIC and len(isic2024.NUMERIC) == 34
    assert table.categorical_columns == ["sex", "anatom_site_general", "tbp_tile_type", "tbp_lv_location",
                                         "tbp_lv_location_simple", "attribution"]
    assert table.default_features == ["age_approx", "sex", "anatom_site_general", "clin_size_long_diam_mm",
                                      "tbp_tile_type", *[c for c in isic2024.NUMERIC if c.startswith("tbp_lv_")]]
    for record, row in zip(table.records, fixture_hdf5.rows):
        assert isinstance(record.meta, MetaRow)
        assert set(record.meta) == set(table.numeric_columns) | set(table.categorical_columns)
        for column in table.numeric_columns:
            assert record.meta[column] == number(row[column]), (record.line, column)
            assert record.meta[column] is None or type(record.meta[column]) is float
        for column in table.categorical_columns:
            assert record.meta[column] == category(row[column]), (record.line, column)
        assert not set(record.meta) & {"target", "image_type", "copyright_license", *isic2024.LEAK_COLUMNS}
    first = table.records[0].meta
    assert first["attribution"] == "Memorial Sloan Kettering Cancer Center"
    assert table.records[3].meta["attribution"] == "Department of Dermatology, Hospital Clínic de Barcelona"
    assert table.records[5].meta["tbp_lv_location"] is None  # "Unknown" is a missing value
    assert table.records[5].meta["sex"] is None and table.records[6].meta["age_approx"] is None
    assert first.get("no such column", "x") == "x" and "tbp_lv_A" in first


def test_numbers_read_by_pandas_equal_pythons_float(tmp_path):
    """The fast path (pandas parses the number columns) gives float(cell) exactly, e-notation,
    17-digit reprs and subnormals included."""
    ds = w.write_isic2024(tmp_path, n=12)
    rng = np.random.default_rng(5)
    cells = [repr(float(v)) for v in rng.normal(0, 1, 12) * 10.0 ** rng.integers(-300, 300, 12)]
    cells[:3] = ["4.9e-324", "2.2250738585072011e-308", "0.1"]

    def edit(columns, rows):
        for row, cell in zip(rows, cells):
            row["tbp_lv_A"] = cell

    w.edit_csv(ds.csv_path, edit)
    table = read_table("isic2024", tmp_path)
    assert [r.meta["tbp_lv_A"] for r in table.records] == [float(c) for c in cells]


def test_unlabeled_test_set(fixture_hdf5):
    table = read_unlabeled("isic2024", fixture_hdf5.root)
    rows = fixture_hdf5.extra["test_rows"]
    assert [r.image_id for r in table.records] == [r["isic_id"] for r in rows]
    assert all(r.label == UNLABELED for r in table.records) and table.class_names == []
    assert table.records[0].image_path == fixture_hdf5.root / "test-image.hdf5"
    # the patient-relative columns are always there (a model trained with them reads this set)
    assert set(isic2024.RELATIVE) <= set(table.numeric_columns)
    assert table.records[0].meta["tbp_lv_A"] == float(rows[0]["tbp_lv_A"])
    assert load_rgb(table.records[0].image_path, key=table.records[0].image_key).shape == (40, 36, 3)


def test_leak_columns_are_refused_with_the_reason(fixture_hdf5):
    table = read_table("isic2024", fixture_hdf5.root)
    with pytest.raises(DatasetError,
                       match=r"'lesion_id' cannot be a metadata feature: set only"):
        table.split_features(["age_approx", "lesion_id"])
    dm = LesionDataModule(dataset="isic2024", data_dir=str(fixture_hdf5.root), n_folds=3, num_workers=0,
                          meta_features=["iddx_1", "tbp_lv_dnn_lesion_confidence"], image_cache=False)
    with pytest.raises(DatasetError, match="'iddx_1' cannot be a metadata feature: the histopathological diagnosis "
                                           "itself; 'tbp_lv_dnn_lesion_confidence' cannot be a metadata "
                                           "feature: a lesion-classifier score"):
        _ = dm.encoder


# --------------------------------------------------------------------------------------------
# Patient-relative features
# --------------------------------------------------------------------------------------------


def test_patient_relative_features_by_hand(tmp_path):
    ds = w.write_isic2024(tmp_path)
    # patient 0: lesions 0-2 (3 lesions); give lesion 1 no value; patient 2 (rows 4-7): all equal
    w.set_cell(ds.csv_path, 3, "tbp_lv_areaMM2", "")
    for line in range(6, 10):
        w.set_cell(ds.csv_path, line, "tbp_lv_areaMM2", "7.1")
    table = read_table("isic2024", tmp_path, patient_relative=True)
    assert table.numeric_columns == [*isic2024.NUMERIC, *isic2024.RELATIVE]
    assert table.default_features[-len(isic2024.RELATIVE):] == isic2024.RELATIVE
    z = [r.meta["tbp_lv_areaMM2_patient_z"] for r in table.records]
    a, c = float(ds.rows[0]["tbp_lv_areaMM2"]), float(ds.rows[2]["tbp_lv_areaMM2"])
    mean, std = (a + c) / 2, abs(a - c) / 2  # population std over the two lesions with a value
    assert z[0] == pytest.approx((a - mean) / std) and z[2] == pytest.approx((c - mean) / std)
    assert z[1] is None  # no value of its own
    assert z[3] is None  # patient 1 has one lesion: nothing to compare with
    assert z[4:8] == [0.0, 0.0, 0.0, 0.0]  # all equal: does not stand out
    # every measurement (not age, not the body position) gets one; computed from metadata alone
    assert "age_approx_patient_z" not in table.numeric_columns and "tbp_lv_x_patient_z" not in table.numeric_columns
    flipped = w.write_isic2024(tmp_path / "flipped")
    w.edit_csv(flipped.csv_path, lambda columns, rows: [r.update(target="0") for r in rows] and None)
    w.set_cell(flipped.csv_path, 3, "tbp_lv_areaMM2", "")
    for line in range(6, 10):
        w.set_cell(flipped.csv_path, line, "tbp_lv_areaMM2", "7.1")
    other = read_table("isic2024", tmp_path / "flipped", patient_relative=True)
    assert [r.meta["tbp_lv_areaMM2_patient_z"] for r in other.records] == z


def test_patient_relative_option_must_be_a_boolean(fixture_hdf5):
    with pytest.raises(DatasetError, match="patient_relative must be true or false, got 'yes'"):
        read_table("isic2024", fixture_hdf5.root, patient_relative="yes")


# --------------------------------------------------------------------------------------------
# Strict errors
# --------------------------------------------------------------------------------------------


@pytest.fixture
def writable(tmp_path):
    return w.write_isic2024(tmp_path, n=12)


def test_missing_metadata_file(writable):
    writable.csv_path.unlink()
    with pytest.raises(DatasetError,
                       match=f"^isic2024: none of \\['train-metadata.csv'\\] found in {esc(writable.root)}"):
        read_table("isic2024", writable.root)


def test_missing_required_column(writable):
    w.edit_csv(writable.csv_path, lambda columns, rows: [c for c in columns if c != "patient_id"])
    with pytest.raises(DatasetError, match=f"{esc(writable.csv_path)} lacks required column\\(s\\) \\['patient_id'\\]"):
        read_table("isic2024", writable.root)


def test_bad_number_names_line_and_column(writable):
    w.set_cell(writable.csv_path, 5, "tbp_lv_deltaLB", "12,5mm")
    with pytest.raises(DatasetError, match=f"{esc(writable.csv_path)} line 5, column 'tbp_lv_deltaLB': expected a "
                                           f"number, got '12,5mm'"):
        read_table("isic2024", writable.root)


def test_missing_tokens_in_a_number_column_are_missing(writable):
    w.set_cell(writable.csv_path, 4, "clin_size_long_diam_mm", "UNK")
    table = read_table("isic2024", writable.root)
    assert table.records[2].meta["clin_size_long_diam_mm"] is None
    assert table.records[3].meta["clin_size_long_diam_mm"] == float(writable.rows[3]["clin_size_long_diam_mm"])


@pytest.mark.parametrize("column, value", [("tbp_tile_type", "3D: blue"), ("sex", "m"),
                                           ("tbp_lv_location", "Left Foot")])
def test_unknown_category_names_line_and_column(writable, column, value):
    w.set_cell(writable.csv_path, 7, column, value)
    with pytest.raises(DatasetError, match=f"line 7, column '{column}': unknown category '{value}'"):
        read_table("isic2024", writable.root)


@pytest.mark.parametrize("value", ["2", "", "malignant?"])
def test_bad_target(writable, value):
    w.set_cell(writable.csv_path, 3, "target", value)
    with pytest.raises(DatasetError, match=f"column 'target' has 1 unknown label\\(s\\) \\(line 3: '{esc(value)}'\\)"):
        read_table("isic2024", writable.root)


def test_blank_and_duplicate_ids(writable):
    w.set_cell(writable.csv_path, 4, "patient_id", " ")
    with pytest.raises(DatasetError, match=r"column 'patient_id' is blank on line\(s\) \[4\]"):
        read_table("isic2024", writable.root)
    w.set_cell(writable.csv_path, 4, "patient_id", "IP_1")
    w.set_cell(writable.csv_path, 6, "isic_id", writable.rows[0]["isic_id"])
    first = writable.rows[0]["isic_id"]
    with pytest.raises(DatasetError, match=f"column 'isic_id' has duplicate ids \\(line 2: '{first}'"):
        read_table("isic2024", writable.root)


def test_truncated_row_names_its_line(writable):
    lines = writable.csv_path.read_text().splitlines()
    lines[4] = ",".join(lines[4].split(",")[:20])
    writable.csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"row\(s\) with fewer than the header's 55 fields \(line 5 has 20\)"):
        read_table("isic2024", writable.root)


def test_image_missing_from_the_hdf5(writable):
    missing = writable.rows[3]["isic_id"]
    train = {r["isic_id"] for r in writable.rows}
    kept = [(k, v) for k, v in writable.extra["jpegs"].items() if k != missing and k in train]
    hdf5_images.write_images(writable.extra["hdf5"], kept)
    with pytest.raises(DatasetError, match=f"1 image\\(s\\) listed in {esc(writable.csv_path)} are missing from "
                                           f"{esc(writable.extra['hdf5'])}: {missing} \\(line 5\\)"):
        read_table("isic2024", writable.root)


def test_image_missing_from_the_jpeg_folder(tmp_path):
    ds = w.write_isic2024(tmp_path, n=12, images="jpeg")
    ds.images[ds.rows[2]["isic_id"]].unlink()
    with pytest.raises(DatasetError, match=f"1 image\\(s\\) listed in .* are missing from .*train-image.*: "
                                           f"{ds.rows[2]['isic_id']} \\(line 4\\)"):
        read_table("isic2024", tmp_path)


def test_unreadable_hdf5_entries_are_reported_with_their_line(writable):
    """Corrupt bytes, a group instead of an image, a number array: all found by verify_images,
    each named ``file.hdf5::id`` with its CSV line."""
    ids = [r["isic_id"] for r in writable.rows]
    with h5py.File(writable.extra["hdf5"], "a") as handle:
        del handle[ids[1]], handle[ids[2]], handle[ids[3]]
        handle.create_dataset(ids[1], data=np.bytes_(b"not a jpeg"))
        handle.create_group(ids[2])
        handle.create_dataset(ids[3], data=np.zeros((4, 4), np.float32))
    table = read_table("isic2024", writable.root)
    with pytest.raises(DatasetError) as err:
        verify_images(table)
    message = str(err.value)
    hdf5 = writable.extra["hdf5"]
    assert message.startswith("isic2024: 3 unreadable image(s)")
    assert f"cannot read image {hdf5}::{ids[1]} (listed on line 3)" in message
    assert f"{hdf5}::{ids[2]} is an HDF5 group, not an image (listed on line 4)" in message
    assert f"{hdf5}::{ids[3]} holds float32 of shape (4, 4), not the bytes of an encoded image (listed on line 5)" \
        in message
    with pytest.raises(DatasetError, match=f"HDF5 file {esc(hdf5)} has no image 'ISIC_9'"):
        load_rgb(hdf5, key="ISIC_9")
    with pytest.raises(DatasetError, match="HDF5 file .*nowhere.hdf5 does not exist"):
        load_rgb(Path(f"{writable.root / 'nowhere.hdf5'}::ISIC_1"))


# --------------------------------------------------------------------------------------------
# Images inside HDF5
# --------------------------------------------------------------------------------------------


def test_hdf5_image_decodes_like_its_file(fixture_hdf5, tmp_path):
    """Same bytes, same pixels, including EXIF rotation and draft scaling; uint8 arrays and opaque
    data work too."""
    image_id = fixture_hdf5.rows[0]["isic_id"]
    data = fixture_hdf5.extra["jpegs"][image_id]
    as_file = tmp_path / "x.jpg"
    as_file.write_bytes(data)
    hdf5 = fixture_hdf5.extra["hdf5"]
    assert np.array_equal(load_rgb(hdf5, key=image_id), load_rgb(as_file))
    assert np.array_equal(load_rgb(f"{hdf5}::{image_id}", min_side=8), load_rgb(as_file, min_side=8))
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8))
    exif = big.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buffer = io.BytesIO()
    big.save(buffer, format="JPEG", exif=exif)
    (tmp_path / "r.jpg").write_bytes(buffer.getvalue())
    packed = tmp_path / "more.hdf5"
    with h5py.File(packed, "w") as handle:
        handle.create_dataset("rotated", data=np.bytes_(buffer.getvalue()))
        handle.create_dataset("array", data=np.frombuffer(buffer.getvalue(), np.uint8))
        handle.create_dataset("opaque", data=np.void(buffer.getvalue()))
    rotated = load_rgb(packed, key="rotated")
    assert rotated.shape == (96, 64, 3) and np.array_equal(rotated, load_rgb(tmp_path / "r.jpg"))
    assert np.array_equal(load_rgb(packed, key="array"), rotated)
    assert np.array_equal(load_rgb(packed, key="opaque"), rotated)
    assert np.array_equal(load_rgb(packed, key="array", min_side=16), load_rgb(tmp_path / "r.jpg", min_side=16))


def _child_reads(path, key, queue):
    array = load_rgb(path, key=key)
    queue.put((os.getpid(), hdf5_images.open_handles(), int(array.sum())))


def test_hdf5_handles_are_per_process_and_closed_before_fork(fixture_hdf5):
    hdf5 = fixture_hdf5.extra["hdf5"]
    key = fixture_hdf5.rows[1]["isic_id"]
    hdf5_images.close_all()
    assert hdf5_images.open_handles() == []
    total = int(load_rgb(hdf5, key=key).sum())
    assert hdf5_images.open_handles() == [str(hdf5)]  # opened lazily, kept open
    queue = multiprocessing.get_context("fork").Queue()
    child = multiprocessing.get_context("fork").Process(target=_child_reads, args=(hdf5, key, queue))
    child.start()
    pid, handles, child_total = queue.get(timeout=60)
    child.join(timeout=60)
    assert pid != os.getpid() and handles == [str(hdf5)] and child_total == total
    assert hdf5_images.open_handles() == []  # the parent's handle was closed before the fork
    assert int(load_rgb(hdf5, key=key).sum()) == total  # and reopens on the next read


def test_dataloader_workers_read_the_hdf5(fixture_hdf5):
    dm = LesionDataModule(dataset="isic2024", data_dir=str(fixture_hdf5.root), n_folds=3, num_workers=2,
                          image_size=32, batch_size=4, image_cache=False)
    dm.setup("validate")
    single = torch.cat([b["image"] for b in torch.utils.data.DataLoader(dm.datasets["val"], batch_size=4)])
    workers = torch.cat([b["image"] for b in dm.val_dataloader()])
    assert torch.equal(single, workers)


def test_cache_and_verify_hdf5_records(fixture_hdf5, tmp_path):
    """``make preprocess`` caches HDF5 images as ``<file>/<id>.jpg``; the cached table names the
    HDF5 image as the original; a changed HDF5 file makes the cache stale."""
    from datamodules.image_cache import StaleCache, apply_cache, build_cache

    table = read_table("isic2024", fixture_hdf5.root)
    verify_images(table)
    folder = build_cache(table, 24, tmp_path / "cache", workers=2)
    manifest = json.loads((folder / "manifest.json").read_text())
    first = table.records[0]
    entry = manifest["files"][f"train-image.hdf5::{first.image_id}"]
    assert entry["cached"] == f"train-image/{first.image_id}.jpg"
    cached = apply_cache(table, folder)
    record = cached.records[0]
    assert record.image_path == folder / entry["cached"] and record.image_key is None
    assert record.original_path == Path(f"{fixture_hdf5.extra['hdf5']}::{first.image_id}")
    assert load_rgb(record.image_path).shape == (round(40 * 24 / 36), 24, 3)  # a 36 x 40 crop, shorter side 24
    os.utime(fixture_hdf5.extra["hdf5"], ns=(1, 1))
    with pytest.raises(StaleCache, match="source file .*train-image.hdf5 changed since it was cached"):
        apply_cache(table, folder)


# --------------------------------------------------------------------------------------------
# Splits by hospital
# --------------------------------------------------------------------------------------------


def test_group_by_attribution_holds_out_whole_hospitals(fixture_hdf5):
    dm = LesionDataModule(dataset="isic2024", data_dir=str(fixture_hdf5.root), n_folds=3, num_workers=0,
                          group_by="attribution", image_cache=False)
    splits = dm.split_records
    hospitals = {name: {r.meta["attribution"] for r in records} for name, records in splits.items()}
    patients = {name: {r.group for r in records} for name, records in splits.items()}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not hospitals[a] & hospitals[b] and not patients[a] & patients[b]
    assert set().union(*hospitals.values()) == set(w.ISIC2024_ATTRIBUTIONS[:5])
    assert dm.summary()["group_by"] == "attribution"
    plain = LesionDataModule(dataset="isic2024", data_dir=str(fixture_hdf5.root), n_folds=3, num_workers=0,
                             image_cache=False)
    assert "group_by" not in plain.summary()


def test_group_by_keeps_patients_whole_when_their_hospital_changes():
    from datamodules.records import LesionRecord

    def record(group, centre):
        return LesionRecord("i", Path("x"), 0, group, {"attribution": centre}, None)

    records = [record("p1", "A"), record("p1", "B"), record("p2", "C"), record("p3", None), record("p4", "C"),
               record("p5", "D"), record("p5", None)]
    assert split_groups(records, "attribution") == ["A + B", "A + B", "C", "<missing> + D", "C", "<missing> + D",
                                                    "<missing> + D"]
    assert split_groups(records) == ["p1", "p1", "p2", "p3", "p4", "p5", "p5"]


def test_group_by_unknown_column_and_too_few_groups(fixture_hdf5):
    dm = LesionDataModule(dataset="isic2024", data_dir=str(fixture_hdf5.root), group_by="hospital",
                          num_workers=0, image_cache=False)
    with pytest.raises(DatasetError, match="--data.group_by: isic2024 has no metadata column 'hospital'"):
        _ = dm.split_records
    # Every patient has lesions of both tile types: nested in patients, the two values are one group.
    dm = LesionDataModule(dataset="isic2024", data_dir=str(fixture_hdf5.root), group_by="tbp_tile_type", n_folds=3,
                          num_workers=0, image_cache=False)
    with pytest.raises(DatasetError, match="cannot make 3 folds from 1 'tbp_tile_type' groups"):
        _ = dm.split_records


def test_group_by_is_part_of_the_data_a_resume_must_keep():
    from experiments.resume import DATA_IDENTITY

    assert "group_by" in DATA_IDENTITY


# --------------------------------------------------------------------------------------------
# One short training run
# --------------------------------------------------------------------------------------------


def test_one_epoch_on_the_fixture_selects_by_the_challenge_metric(tmp_path, one_thread):
    """metablock on ISIC 2024 (HDF5 images, patient-relative features, 8 negatives per epoch):
    val/pauc_tpr80 is logged and selects the checkpoint; the model then predicts the unlabeled
    test set, whose metadata it reads with the same columns."""
    from experiments.predict import predict
    from experiments.train import main as train

    data = w.write_isic2024(tmp_path / "data")
    run_dir = train([
        "--config", str(REPO / "experiments" / "metablock.yaml"),
        "--config", str(REPO / "experiments" / "data" / "isic2024.yaml"),
        f"--data.data_dir={data.root}", f"--run.root={tmp_path / 'runs'}", "--run.wandb=false",
        "--data.image_size=32", "--data.batch_size=4", "--data.num_workers=0", "--data.n_folds=3",
        "--data.negatives_per_epoch=8", '--data.source_options={"patient_relative": true}',
        "--model.init_args.monitor=val/pauc_tpr80", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
    ])  # fmt: skip
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["checkpoint"]["monitor"] == "val/pauc_tpr80"
    assert 0.0 <= metrics["test"]["pauc_tpr80"] <= 0.2
    assert any(name.endswith("_patient_z") for name in metrics["data"]["meta_features"])
    with open(run_dir / "metrics.csv") as handle:
        logged = next(csv.DictReader(handle)).keys()
    assert "val/pauc_tpr80" in logged
    best = next((run_dir / "checkpoints").glob("best-epoch*.ckpt"))
    out = tmp_path / "unlabeled.csv"
    predict(str(best), dataset="isic2024", data_dir=str(data.root), split="unlabeled", num_workers=0,
            accelerator="cpu", out=str(out))
    with open(out) as handle:
        rows = list(csv.DictReader(handle))
    assert [r["image_id"] for r in rows] == [r["isic_id"] for r in data.extra["test_rows"]]
    assert all(0.0 <= float(r["prob_malignant"]) <= 1.0 for r in rows)
