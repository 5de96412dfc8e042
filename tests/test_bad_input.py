"""Every bad input stops with a DatasetError naming the dataset, the file and the line/column."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import dataset_writers as w
from datamodules.dataset import LesionDataset
from datamodules.lesion_datamodule import LesionDataModule
from datamodules.metadata import MetadataEncoder
from datamodules.records import DatasetError, LesionRecord
from datamodules.sources import read_table
from datamodules.splits import assign_folds, split_indices
from datamodules.transforms import build_transforms

WRITERS = {
    "pad_ufes20": w.write_pad_ufes20,
    "isic2019": w.write_isic2019,
    "isic2020": w.write_isic2020,
    "ham10000": w.write_ham10000,
}


def esc(value) -> str:
    return re.escape(str(value))


# --------------------------------------------------------------------------------------------
# Folders and files
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", sorted(WRITERS))
def test_data_dir_missing(tmp_path, dataset):
    missing = tmp_path / "not-here"
    with pytest.raises(DatasetError, match=f"^{dataset}: data_dir {esc(missing)} does not exist"):
        read_table(dataset, missing)
    with pytest.raises(DatasetError, match=f"^{dataset}: no data_dir given"):
        read_table(dataset, None)


@pytest.mark.parametrize(
    "dataset, name",
    [
        ("pad_ufes20", "metadata.csv"),
        ("isic2019", "ISIC_2019_Training_GroundTruth.csv"),
        ("isic2019", "ISIC_2019_Training_Metadata.csv"),
        ("isic2020", "train.csv"),
        ("ham10000", "HAM10000_metadata.csv"),
    ],
)
def test_csv_missing(tmp_path, dataset, name):
    WRITERS[dataset](tmp_path, n=4)
    (tmp_path / name).unlink()
    with pytest.raises(DatasetError, match=f"^{dataset}: none of .*{esc(name)}.* found in {esc(tmp_path)}"):
        read_table(dataset, tmp_path)


@pytest.mark.parametrize(
    "dataset, csv_name, column",
    [
        ("pad_ufes20", "metadata.csv", "diagnostic"),
        ("pad_ufes20", "metadata.csv", "patient_id"),
        ("isic2019", "ISIC_2019_Training_GroundTruth.csv", "SCC"),
        ("isic2019", "ISIC_2019_Training_Metadata.csv", "age_approx"),
        ("isic2020", "train.csv", "target"),
        ("isic2020", "train.csv", "patient_id"),
        ("ham10000", "HAM10000_metadata.csv", "lesion_id"),
        ("ham10000", "HAM10000_metadata.csv", "localization"),
    ],
)
def test_csv_missing_required_column(tmp_path, dataset, csv_name, column):
    WRITERS[dataset](tmp_path, n=4)
    w.edit_csv(tmp_path / csv_name, lambda columns, rows: [c for c in columns if c != column])
    with pytest.raises(
        DatasetError, match=f"^{dataset}: {esc(tmp_path / csv_name)} lacks required column\\(s\\) \\['{column}'\\]"
    ):
        read_table(dataset, tmp_path)


def test_csv_with_header_only(tmp_path):
    ds = w.write_pad_ufes20(tmp_path, n=3)
    w.write_csv(ds.csv_path, w.PAD_COLUMNS, [])
    with pytest.raises(DatasetError, match=f"pad_ufes20: {esc(ds.csv_path)} has no data rows"):
        read_table("pad_ufes20", tmp_path)


def test_image_folder_missing(tmp_path):
    ds = w.write_pad_ufes20(tmp_path, n=3)
    for path in ds.images.values():
        path.unlink()
    (tmp_path / "images").rmdir()
    with pytest.raises(DatasetError, match=r"pad_ufes20: no image folder found .*'imgs_part_1'"):
        read_table("pad_ufes20", tmp_path)


@pytest.mark.parametrize("dataset", sorted(WRITERS))
def test_missing_image_file_names_image_and_line(tmp_path, dataset):
    ds = WRITERS[dataset](tmp_path, n=6)
    victim = list(ds.images)[3]  # row 3 -> CSV line 5
    ds.images[victim].unlink()
    stem = Path(victim).stem if dataset == "pad_ufes20" else victim
    with pytest.raises(
        DatasetError, match=f"^{dataset}: 1 image\\(s\\) listed in {esc(ds.csv_path)} are missing .*{esc(stem)}.* \\(line 5\\)"
    ):
        read_table(dataset, tmp_path)


def test_several_missing_images_are_all_reported(tmp_path):
    ds = w.write_pad_ufes20(tmp_path, n=9, layout="parts")
    names = [row["img_id"] for row in ds.rows]
    for j in (1, 4, 8):
        ds.images[names[j]].unlink()
    with pytest.raises(DatasetError, match=r"pad_ufes20: 3 image\(s\)") as info:
        read_table("pad_ufes20", tmp_path)
    message = str(info.value)
    for j in (1, 4, 8):
        assert f"{names[j]} (line {j + 2})" in message
    assert names[0] not in message
    assert "imgs_part_1" in message and "imgs_part_3" in message  # where it looked


def test_more_than_ten_missing_images_are_counted(tmp_path):
    ds = w.write_ham10000(tmp_path, n=14)
    for path in ds.images.values():
        path.unlink()
    with pytest.raises(DatasetError, match=r"ham10000: 14 image\(s\) .*ISIC_0027419 \(line 2\).*, \.\.\.$"):
        read_table("ham10000", tmp_path)


# --------------------------------------------------------------------------------------------
# Corrupt images: found at read time, reported when the item is loaded
# --------------------------------------------------------------------------------------------


def _dataset_of(table) -> LesionDataset:
    encoder = MetadataEncoder(*table.split_features()).fit(table.records)
    return LesionDataset(table.records, encoder, build_transforms(False, 16, "none"), table.dataset)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image_raises_on_load(tmp_path, damage):
    ds = w.write_isic2020(tmp_path, n=4)
    victim = ds.images[ds.rows[2]["image_name"]]
    data = victim.read_bytes()
    victim.write_bytes(b"this is not a JPEG at all" if damage == "garbage" else data[: len(data) // 2])
    table = read_table("isic2020", tmp_path)  # the file exists: reading the table is fine
    dataset = _dataset_of(table)
    assert dataset[1]["image"].shape == (3, 16, 16)  # the others load
    with pytest.raises(DatasetError, match=f"^isic2020: cannot read image {esc(victim)} \\(listed on line 4\\)"):
        dataset[2]


def test_image_deleted_after_reading_names_path_and_line(tmp_path):
    ds = w.write_pad_ufes20(tmp_path, n=4)
    table = read_table("pad_ufes20", tmp_path)
    dataset = _dataset_of(table)
    victim = table.records[3].image_path
    victim.unlink()
    with pytest.raises(DatasetError, match=f"pad_ufes20: image file {esc(victim)} does not exist \\(listed on line 5\\)"):
        dataset[3]
    assert ds.csv_path.is_file()


def test_a_far_too_small_image_is_an_error_in_training_and_a_warning_in_predict(tmp_path):
    """A 1 x 1 px file resized to 64 px would be trained on (or predicted) without a word."""
    from PIL import Image

    w.write_pad_ufes20(tmp_path, n=4)
    table = read_table("pad_ufes20", tmp_path)
    victim = table.records[2].image_path
    Image.new("RGB", (1, 1), (200, 100, 50)).save(victim)
    encoder = MetadataEncoder(*table.split_features()).fit(table.records)
    transform = build_transforms(False, 64, "none")
    training = LesionDataset(table.records, encoder, transform, table.dataset, image_size=64)
    assert training[1]["image"].shape == (3, 64, 64)  # 32-40 px files are fine at 64 px
    with pytest.raises(DatasetError, match=f"pad_ufes20: {esc(victim)} \\(CSV line 4\\) is 1 x 1 px, far smaller "
                                           "than the 64 px it is resized to; remove it"):
        training[2]
    predicting = LesionDataset(table.records, encoder, transform, table.dataset, image_size=64, small_images="warn")
    with pytest.warns(UserWarning, match=f"{esc(victim)} \\(CSV line 4\\) is 1 x 1 px"):
        assert predicting[2]["image"].shape == (3, 64, 64)


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dataset, column, value, csv_name",
    [
        ("pad_ufes20", "diagnostic", "MELANOMA", "metadata.csv"),
        ("ham10000", "dx", "melanoma", "HAM10000_metadata.csv"),
        ("isic2020", "target", "2", "train.csv"),
    ],
)
def test_unknown_label(tmp_path, dataset, column, value, csv_name):
    WRITERS[dataset](tmp_path, n=6)
    w.set_cell(tmp_path / csv_name, 5, column, value)
    with pytest.raises(
        DatasetError,
        match=f"^{dataset}: {esc(tmp_path / csv_name)} column '{column}' has 1 unknown label\\(s\\) \\(line 5: '{value}'\\)",
    ):
        read_table(dataset, tmp_path)


def test_unknown_diagnosis_isic2020(tmp_path):
    ds = w.write_isic2020(tmp_path, n=6)
    w.set_cell(ds.csv_path, 3, "diagnosis", "basal cell carcinoma")
    read_table("isic2020", tmp_path)  # the default task ignores the diagnosis column
    with pytest.raises(DatasetError, match=r"column 'diagnosis' has 1 unknown label\(s\) \(line 3: 'basal cell carcinoma'\)"):
        read_table("isic2020", tmp_path, task="diagnosis")
    with pytest.raises(DatasetError, match=r"isic2020: task must be 'target' or 'diagnosis', got 'dx'"):
        read_table("isic2020", tmp_path, task="dx")


def test_blank_labels_all_listed(tmp_path):
    ds = w.write_pad_ufes20(tmp_path, n=8)
    w.set_cell(ds.csv_path, 4, "diagnostic", "")
    w.set_cell(ds.csv_path, 7, "diagnostic", "UNK")  # UNK is missing metadata, never a label
    with pytest.raises(
        DatasetError, match=r"pad_ufes20: .*metadata\.csv column 'diagnostic' has 2 unknown label\(s\) \(line 4: '', line 7: 'UNK'\)"
    ):
        read_table("pad_ufes20", tmp_path)


def test_isic2019_two_hot_row(tmp_path):
    ds = w.write_isic2019(tmp_path, n=6)
    w.set_cell(ds.csv_path, 3, "BCC", "1.0")  # row 1 is NV already
    with pytest.raises(
        DatasetError,
        match=f"^isic2019: {esc(ds.csv_path)} line 3: expected exactly one of .* to be 1.0, found \\['NV', 'BCC'\\]",
    ):
        read_table("isic2019", tmp_path)


def test_isic2019_unk_row(tmp_path):
    ds = w.write_isic2019(tmp_path, n=6)

    def unk(columns, rows):
        for c in w.ISIC2019_CLASSES:
            rows[2][c] = "0.0"
        rows[2]["UNK"] = "1.0"

    w.edit_csv(ds.csv_path, unk)
    with pytest.raises(DatasetError, match=r"isic2019: .*GroundTruth\.csv line 4: .*found \['UNK'\]"):
        read_table("isic2019", tmp_path)


def test_isic2019_all_zero_and_non_numeric_rows(tmp_path):
    ds = w.write_isic2019(tmp_path, n=6)
    w.set_cell(ds.csv_path, 6, "BKL", "0.0")  # row 4 was BKL
    with pytest.raises(DatasetError, match=r"isic2019: .*GroundTruth\.csv line 6: .*found none"):
        read_table("isic2019", tmp_path)
    w.set_cell(ds.csv_path, 6, "BKL", "yes")
    with pytest.raises(DatasetError, match=r"GroundTruth\.csv line 6, column 'BKL': expected 0.0/1.0, got 'yes'"):
        read_table("isic2019", tmp_path)


def test_isic2019_ground_truth_row_without_metadata(tmp_path):
    ds = w.write_isic2019(tmp_path, n=6)
    w.edit_csv(ds.extra["meta_path"], lambda columns, rows: rows.pop(4) and None)
    with pytest.raises(
        DatasetError,
        match=f"^isic2019: 1 image\\(s\\) of {esc(ds.csv_path)} have no row in {esc(ds.extra['meta_path'])}: "
        "ISIC_0000004 \\(line 6\\)",
    ):
        read_table("isic2019", tmp_path)


# --------------------------------------------------------------------------------------------
# Metadata values
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dataset, csv_name, column, value",
    [
        ("pad_ufes20", "metadata.csv", "region", "ARMM"),
        ("pad_ufes20", "metadata.csv", "gender", "M"),
        ("pad_ufes20", "metadata.csv", "bleed", "yes"),
        ("pad_ufes20", "metadata.csv", "fitspatrick", "7.0"),
        ("isic2019", "ISIC_2019_Training_Metadata.csv", "anatom_site_general", "torso"),  # 2020's word
        ("isic2020", "train.csv", "anatom_site_general_challenge", "anterior torso"),  # 2019's word
        ("ham10000", "HAM10000_metadata.csv", "localization", "leg"),
        ("ham10000", "HAM10000_metadata.csv", "sex", "x"),
    ],
)
def test_unknown_category_names_line_and_column(tmp_path, dataset, csv_name, column, value):
    WRITERS[dataset](tmp_path, n=6)
    w.set_cell(tmp_path / csv_name, 3, column, value)
    shown = str(int(float(value))) if value == "7.0" else value
    with pytest.raises(
        DatasetError,
        match=f"^{dataset}: {esc(tmp_path / csv_name)} line 3, column '{column}': unknown category '{esc(shown)}'",
    ):
        read_table(dataset, tmp_path)


def test_category_case_is_normalised_to_the_vocabulary(tmp_path):
    ds = w.write_pad_ufes20(tmp_path, n=4)
    w.set_cell(ds.csv_path, 2, "region", " face ")
    w.set_cell(ds.csv_path, 3, "itch", "true")
    meta = [r.meta for r in read_table("pad_ufes20", tmp_path).records]
    assert meta[0]["region"] == "FACE" and meta[1]["itch"] == "True"


@pytest.mark.parametrize(
    "dataset, csv_name, column",
    [
        ("pad_ufes20", "metadata.csv", "age"),
        ("pad_ufes20", "metadata.csv", "diameter_1"),
        ("isic2020", "train.csv", "age_approx"),
        ("ham10000", "HAM10000_metadata.csv", "age"),
        ("isic2019", "ISIC_2019_Training_Metadata.csv", "age_approx"),
    ],
)
def test_non_numeric_age(tmp_path, dataset, csv_name, column):
    WRITERS[dataset](tmp_path, n=6)
    w.set_cell(tmp_path / csv_name, 5, column, "forty")
    with pytest.raises(
        DatasetError,
        match=f"^{dataset}: {esc(tmp_path / csv_name)} line 5, column '{column}': expected a number, got 'forty'",
    ):
        read_table(dataset, tmp_path)


def test_isic2019_metadata_error_names_the_metadata_files_line(tmp_path):
    ds = w.write_isic2019(tmp_path, n=10)

    def reverse_and_break(columns, rows):
        rows.reverse()  # ISIC_0000002 (ground truth line 4) is now metadata line 9
        rows[7]["age_approx"] = "forty"

    w.edit_csv(ds.extra["meta_path"], reverse_and_break)
    with pytest.raises(DatasetError, match=r"Metadata\.csv line 9, column 'age_approx': expected a number"):
        read_table("isic2019", tmp_path)


def test_fractional_fitzpatrick_is_rejected(tmp_path):
    ds = w.write_pad_ufes20(tmp_path, n=4)
    w.set_cell(ds.csv_path, 2, "fitspatrick", "2.5")
    with pytest.raises(DatasetError, match=r"line 2, column 'fitspatrick': unknown category '2\.5'"):
        read_table("pad_ufes20", tmp_path)


# --------------------------------------------------------------------------------------------
# Ids
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dataset, csv_name, column",
    [
        ("pad_ufes20", "metadata.csv", "img_id"),
        ("isic2019", "ISIC_2019_Training_GroundTruth.csv", "image"),
        ("isic2019", "ISIC_2019_Training_Metadata.csv", "image"),
        ("isic2020", "train.csv", "image_name"),
        ("ham10000", "HAM10000_metadata.csv", "image_id"),
    ],
)
def test_duplicate_image_id(tmp_path, dataset, csv_name, column):
    WRITERS[dataset](tmp_path, n=6)
    path = tmp_path / csv_name
    _, rows = w.read_csv_rows(path)
    w.set_cell(path, 6, column, rows[1][column])  # line 6 repeats line 3
    with pytest.raises(
        DatasetError,
        match=f"^{dataset}: {esc(path)} column '{column}' has duplicate ids \\(line 3: '{esc(rows[1][column])}', line 6:",
    ):
        read_table(dataset, tmp_path)


@pytest.mark.parametrize(
    "dataset, column",
    [("pad_ufes20", "patient_id"), ("isic2020", "patient_id"), ("ham10000", "lesion_id"), ("pad_ufes20", "img_id")],
)
def test_blank_group_or_image_id(tmp_path, dataset, column):
    ds = WRITERS[dataset](tmp_path, n=6)
    w.set_cell(ds.csv_path, 4, column, "")
    with pytest.raises(DatasetError, match=f"^{dataset}: {esc(ds.csv_path)} column '{column}' is blank on line\\(s\\) \\[4\\]"):
        read_table(dataset, tmp_path)


@pytest.mark.parametrize("dataset", sorted(WRITERS))
def test_truncated_row_is_an_error(tmp_path, dataset):
    """pandas would pad a short row with blanks, i.e. silently missing metadata."""
    ds = WRITERS[dataset](tmp_path, n=6)
    lines = ds.csv_path.read_text().splitlines()
    lines[4] = ",".join(lines[4].split(",")[:3])  # line 5 cut after three fields
    ds.csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=f"^{dataset}: {esc(ds.csv_path)}: row\\(s\\) with fewer .* \\(line 5 has 3\\)"):
        read_table(dataset, tmp_path)


def test_image_in_two_folders_is_reported(tmp_path):
    """ISIC 2020 with both the full-size ``jpeg/train`` and a resized ``train`` copy: the first
    folder of the reader's list wins, and a warning says which file was used."""
    ds = w.write_isic2020(tmp_path, n=4)
    name = ds.rows[2]["image_name"]
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / f"{name}.jpg").write_bytes(ds.images[name].read_bytes())
    with pytest.warns(UserWarning, match=f"1 image\\(s\\) of .* more than one file.*{name}: {esc(ds.images[name])}"):
        table = read_table("isic2020", tmp_path)
    assert table.records[2].image_path == ds.images[name]


# --------------------------------------------------------------------------------------------
# Data module arguments and splits
# --------------------------------------------------------------------------------------------


def test_pk_batches_and_balanced_sampler_conflict():
    with pytest.raises(ValueError, match="pk_batches .* already balances the classes"):
        LesionDataModule(pk_batches=(6, 8), balanced_sampler=True)


def test_unknown_dataset_name():
    with pytest.raises(DatasetError, match=r"unknown dataset 'nope'; choose one of \['synthetic', 'pad_ufes20'"):
        LesionDataModule(dataset="nope")
    with pytest.raises(DatasetError, match=r"unknown dataset 'nope'"):
        read_table("nope", "/tmp")


def test_unknown_metadata_feature(tmp_path):
    w.write_pad_ufes20(tmp_path, n=12)
    dm = LesionDataModule(dataset="pad_ufes20", data_dir=str(tmp_path), meta_features=["age", "shoe_size"], num_workers=0)
    with pytest.raises(
        DatasetError,
        match=f"^pad_ufes20: metadata feature\\(s\\) \\['shoe_size'\\] are not columns of {esc(tmp_path / 'metadata.csv')}",
    ):
        dm.meta_dim


def _records(labels, groups) -> list[LesionRecord]:
    return [
        LesionRecord(f"img{i}", Path(f"img{i}.png"), int(y), str(g), {}, i + 2)
        for i, (y, g) in enumerate(zip(labels, groups))
    ]


def test_too_few_groups_for_n_folds():
    records = _records([0, 1, 0, 1, 0, 1], ["a", "a", "b", "b", "c", "c"])
    with pytest.raises(DatasetError, match=r"cannot make 5 folds from 3 patient/lesion groups"):
        split_indices(records, 0, 5, 0, "pad_ufes20")
    with pytest.raises(DatasetError, match=r"n_folds must be at least 3"):
        split_indices(records, 0, 2, 0, "pad_ufes20")
    with pytest.raises(DatasetError, match=r"fold must be in \[0, 2\], got 3"):
        split_indices(records, 3, 3, 0, "pad_ufes20")


def test_empty_split():
    """Four groups, four folds, and the stratification leaves fold 2 empty (sklearn 1.x greedy)."""
    labels = [2, 2, 2, 2, 0, 1, 2, 2, 0, 0, 1, 1, 0]
    groups = ["g0", "g0", "g1", "g1", "g2", "g2", "g2", "g2", "g2", "g3", "g3", "g3", "g3"]
    folds = assign_folds(labels, groups, 4, 41)
    empty = [k for k in range(4) if not (folds == k).any()]
    assert empty == [2], "the example no longer produces an empty fold"
    records = _records(labels, groups)
    with pytest.raises(DatasetError, match=r"^pad_ufes20: the val split of fold 1/4 is empty"):
        split_indices(records, 1, 4, 41, "pad_ufes20")
    with pytest.raises(DatasetError, match=r"^pad_ufes20: the test split of fold 2/4 is empty"):
        split_indices(records, 2, 4, 41, "pad_ufes20")
    assert all(len(v) for v in split_indices(records, 0, 4, 41, "pad_ufes20").values())


def test_class_without_training_image(tmp_path):
    """A class missing from any split stops the data module (it would score AUROC 0 there)."""
    ds = w.write_pad_ufes20(tmp_path, n=60)

    def one_mel(columns, rows):  # a single MEL image: wherever it lands, some fold trains without it
        for row in rows:
            if row["diagnostic"] == "MEL":
                row["diagnostic"] = "NEV"
        rows[0]["diagnostic"] = "MEL"

    w.edit_csv(ds.csv_path, one_mel)
    errors = []
    for fold in range(5):
        dm = LesionDataModule(dataset="pad_ufes20", data_dir=str(tmp_path), fold=fold, num_workers=0)
        try:
            dm.records("train")
        except DatasetError as err:
            errors.append(str(err))
    # one image can be in one split only: every fold misses MEL in two of its three splits
    assert len(errors) == 5
    pattern = r"pad_ufes20: class\(es\) \['MEL'\] have no image in the (train|val|test) split of fold \d/5"
    assert all(re.match(pattern, e) for e in errors)


def test_every_class_smaller_than_n_folds():
    records = _records([0, 0, 1, 1], ["a", "b", "c", "d"])
    with pytest.raises(DatasetError, match="pad_ufes20"):
        split_indices(records, 0, 3, 0, "pad_ufes20")


def test_too_few_groups_message_names_dataset():
    records = _records([0, 1, 0], ["a", "b", "c"])
    with pytest.raises(DatasetError, match=r"^pad_ufes20: cannot make 5 folds"):
        split_indices(records, 0, 5, 0, "pad_ufes20")


def test_rows_are_never_dropped(tmp_path):
    """Sanity: with nothing wrong, every CSV row becomes exactly one record."""
    for dataset, writer in WRITERS.items():
        ds = writer(tmp_path / dataset, n=7)
        table = read_table(dataset, tmp_path / dataset)
        assert [r.line for r in table.records] == list(range(2, 9))
        assert np.all(np.array([r.image_path.is_file() for r in table.records]))
        assert len(ds.rows) == 7
