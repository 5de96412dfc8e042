"""Each dataset reader on a tiny, format-exact fake copy of its dataset (tests/dataset_writers.py)."""

from __future__ import annotations

import pytest

import dataset_writers as w
from conftest import SMALL_SYNTHETIC
from datamodules.records import UNLABELED, DatasetError, LesionTable
from datamodules.sources import DATASETS, READERS, read_table, read_unlabeled
from datamodules.sources.reading import image_folder_table

MISSING = {"", "UNK", "unknown"}


def expected_number(raw: str):
    return None if raw in MISSING else float(raw)


def expected_category(raw: str):
    if raw in MISSING:
        return None
    return str(int(float(raw))) if raw.replace(".", "", 1).isdigit() else raw


def test_reader_registry():
    assert set(READERS) == {"pad_ufes20", "isic2019", "isic2020", "ham10000", "isic2017", "ph2", "derm7pt", "ddi",
                            "fitzpatrick17k", "isic2024"}
    assert DATASETS[0] == "synthetic" and set(DATASETS[1:]) == set(READERS)


# --------------------------------------------------------------------------------------------
# PAD-UFES-20
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["images", "parts"])
def test_pad_ufes20_records(tmp_path, layout):
    ds = w.write_pad_ufes20(tmp_path, n=12, layout=layout)
    table = read_table("pad_ufes20", tmp_path)
    assert isinstance(table, LesionTable)
    assert table.dataset == "pad_ufes20"
    assert table.csv_path == tmp_path / "metadata.csv"
    assert table.class_names == ["ACK", "BCC", "MEL", "NEV", "SCC", "SEK"]
    assert len(table.records) == 12
    for i, (record, row) in enumerate(zip(table.records, ds.rows)):
        assert record.line == i + 2
        assert record.image_id == row["img_id"][: -len(".png")]
        assert record.label == table.class_names.index(row["diagnostic"])
        assert record.group == f"patient:{row['patient_id']}"
        assert record.image_path == ds.images[row["img_id"]]
        assert record.image_path.is_file()
        assert record.mask_path is None
    folders = {r.image_path.parent.name for r in table.records}
    assert folders == ({"images"} if layout == "images" else {"imgs_part_1", "imgs_part_2", "imgs_part_3"})
    # 3 images per patient: 4 patients, and a patient's images share one group
    assert len({r.group for r in table.records}) == 4
    assert table.records[0].group == table.records[2].group != table.records[3].group


def test_pad_ufes20_metadata_parsing(tmp_path):
    ds = w.write_pad_ufes20(tmp_path, n=12)
    table = read_table("pad_ufes20", tmp_path)
    assert table.numeric_columns == ["age", "diameter_1", "diameter_2"]
    assert set(table.categorical_columns) == set(w.PAD_COLUMNS) - {
        "patient_id", "lesion_id", "age", "diameter_1", "diameter_2", "diagnostic", "img_id", "biopsed",
    }  # fmt: skip
    for record, row in zip(table.records, ds.rows):
        for column in table.numeric_columns:
            assert record.meta[column] == expected_number(row[column]), (record.line, column)
        for column in table.categorical_columns:
            assert record.meta[column] == expected_category(row[column]), (record.line, column)
        assert set(record.meta) == set(table.numeric_columns) | set(table.categorical_columns)

    first, second = table.records[0].meta, table.records[1].meta  # biopsied / not biopsied
    assert first["age"] == 20.0 and isinstance(first["age"], float)
    assert first["diameter_1"] == 5.0 and first["diameter_2"] == 4.0
    assert first["fitspatrick"] == "1"  # written as "1.0"
    assert table.records[4].meta["fitspatrick"] == "5"  # "5.0"
    assert first["gender"] == "MALE" and first["smoke"] == "True" and first["skin_cancer_history"] == "False"
    assert first["region"] == "ABDOMEN" and first["background_father"] == "POMERANIA"
    assert first["itch"] is None and first["elevation"] is None  # "UNK"
    assert first["grew"] == "True" and first["hurt"] == "False"
    # a non-biopsied row: history, Fitzpatrick and diameters are blank -> None, never 0 or ""
    for column in ("gender", "smoke", "cancer_history", "fitspatrick", "diameter_1", "diameter_2"):
        assert second[column] is None, column
    assert second["age"] == 23.0 and second["region"] == "ARM" and second["bleed"] is None


def test_pad_ufes20_rgba_images_are_listed(tmp_path):
    ds = w.write_pad_ufes20(tmp_path, n=6, n_rgba=2)
    from PIL import Image

    modes = [Image.open(p).mode for p in ds.images.values()]
    assert modes == ["RGBA", "RGBA", "RGB", "RGB", "RGB", "RGB"]
    assert len(read_table("pad_ufes20", tmp_path).records) == 6


def test_pad_ufes20_accepts_flattened_and_parts_mixed(tmp_path):
    """A user who flattened only some of the parts: images found wherever they are."""
    ds = w.write_pad_ufes20(tmp_path, n=9, layout="parts")
    moved = ds.images[ds.rows[4]["img_id"]]
    (tmp_path / "images").mkdir()
    moved.rename(tmp_path / "images" / moved.name)
    table = read_table("pad_ufes20", tmp_path)
    assert table.records[4].image_path == tmp_path / "images" / moved.name


# --------------------------------------------------------------------------------------------
# ISIC 2019
# --------------------------------------------------------------------------------------------


def test_isic2019_records(tmp_path):
    ds = w.write_isic2019(tmp_path, n=10, n_without_lesion=3)
    table = read_table("isic2019", tmp_path)
    assert table.class_names == ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]
    assert table.csv_path.name == "ISIC_2019_Training_GroundTruth.csv"
    assert len(table.records) == 10
    for i, (record, row) in enumerate(zip(table.records, ds.rows)):
        hot = [c for c in w.ISIC2019_CLASSES if row[c] == "1.0"]
        assert record.label == table.class_names.index(hot[0])
        assert record.image_id == row["image"]
        assert record.image_path == ds.images[row["image"]]
        assert record.image_path.parent == tmp_path / "ISIC_2019_Training_Input" / "ISIC_2019_Training_Input"
        assert record.line == i + 2
    assert [r.label for r in table.records] == [0, 1, 2, 3, 4, 5, 6, 7, 0, 1]
    assert table.records[1].image_id == "ISIC_0000001_downsampled"
    assert table.records[1].image_path.name == "ISIC_0000001_downsampled.jpg"


def test_isic2019_groups_lesion_or_image(tmp_path):
    w.write_isic2019(tmp_path, n=10, n_without_lesion=3)
    groups = [r.group for r in read_table("isic2019", tmp_path).records]
    # blank lesion_id: every such image is its own group
    assert groups[:3] == ["image:ISIC_0000000", "image:ISIC_0000001_downsampled", "image:ISIC_0000002"]
    assert groups[3:] == [
        "lesion:BCN_0000000", "lesion:BCN_0000000", "lesion:BCN_0000001", "lesion:BCN_0000001",
        "lesion:BCN_0000002", "lesion:BCN_0000002", "lesion:BCN_0000003",
    ]  # fmt: skip


def test_isic2019_metadata_parsing(tmp_path):
    ds = w.write_isic2019(tmp_path, n=10)
    table = read_table("isic2019", tmp_path)
    assert (table.numeric_columns, table.categorical_columns) == (["age_approx"], ["anatom_site_general", "sex"])
    for record, row in zip(table.records, ds.extra["meta_rows"]):
        assert record.meta == {
            "age_approx": expected_number(row["age_approx"]),
            "anatom_site_general": expected_category(row["anatom_site_general"]),
            "sex": expected_category(row["sex"]),
        }
    meta = [r.meta for r in table.records]
    assert meta[0] == {"age_approx": 30.0, "anatom_site_general": "anterior torso", "sex": "male"}
    assert meta[3]["age_approx"] is None  # blank age, never 0
    assert meta[4]["anatom_site_general"] is None and meta[2]["sex"] is None


def test_isic2019_metadata_in_another_order_is_matched_by_image(tmp_path):
    ds = w.write_isic2019(tmp_path, n=10)
    w.edit_csv(ds.extra["meta_path"], lambda columns, rows: rows.reverse())
    table = read_table("isic2019", tmp_path)
    by_image = {row["image"]: row for row in ds.extra["meta_rows"]}
    for record in table.records:
        assert record.meta["age_approx"] == expected_number(by_image[record.image_id]["age_approx"])
        assert record.meta["sex"] == expected_category(by_image[record.image_id]["sex"])
    assert table.records[5].group == "lesion:BCN_0000001"


def test_isic2019_metadata_without_lesion_id_column(tmp_path):
    """Older metadata files have no ``lesion_id``: every image is then its own group."""
    ds = w.write_isic2019(tmp_path, n=6)
    w.edit_csv(ds.extra["meta_path"], lambda columns, rows: [c for c in columns if c != "lesion_id"])
    table = read_table("isic2019", tmp_path)
    assert [r.group for r in table.records] == [f"image:{row['image']}" for row in ds.rows]


# --------------------------------------------------------------------------------------------
# ISIC 2020
# --------------------------------------------------------------------------------------------


def test_isic2020_target_task(tmp_path):
    ds = w.write_isic2020(tmp_path, n=10)
    table = read_table("isic2020", tmp_path)
    assert table.class_names == ["benign", "malignant"]
    assert len(table.records) == 10  # the jpeg/test image is not a training record
    assert [r.label for r in table.records] == [int(row["target"]) for row in ds.rows]
    assert sum(r.label for r in table.records) == 3  # rows 1, 5, 9
    for record, row in zip(table.records, ds.rows):
        assert record.group == f"patient:{row['patient_id']}"
        assert record.image_id == row["image_name"]
        assert record.image_path == tmp_path / "jpeg" / "train" / f"{row['image_name']}.jpg"
        assert record.meta == {
            "age_approx": expected_number(row["age_approx"]),
            "anatom_site_general_challenge": expected_category(row["anatom_site_general_challenge"]),
            "sex": expected_category(row["sex"]),
        }
    assert len({r.group for r in table.records}) == 5  # two images per patient
    assert table.records[0].meta == {"age_approx": 45.0, "anatom_site_general_challenge": "head/neck", "sex": "male"}
    assert table.records[4].meta["age_approx"] is None
    assert table.records[5].meta["anatom_site_general_challenge"] is None
    assert table.default_features == ["age_approx", "anatom_site_general_challenge", "sex"]


def test_isic2020_diagnosis_task(tmp_path):
    ds = w.write_isic2020(tmp_path, n=10)
    table = read_table("isic2020", tmp_path, task="diagnosis")
    assert table.class_names == w.ISIC2020_DIAGNOSES
    assert [table.class_names[r.label] for r in table.records] == [row["diagnosis"] for row in ds.rows]
    assert table.class_names[table.records[1].label] == "melanoma"
    assert table.class_names[table.records[0].label] == "unknown"  # a class here, not "missing"
    assert table.class_names[table.records[3].label] == "lentigo NOS"  # case kept from the docs


def test_isic2020_target_accepts_float_strings(tmp_path):
    ds = w.write_isic2020(tmp_path, n=6)

    def to_float(columns, rows):
        for row in rows:
            row["target"] = f"{float(row['target']):.1f}"

    w.edit_csv(ds.csv_path, to_float)
    assert [r.label for r in read_table("isic2020", tmp_path).records] == [0, 1, 0, 0, 0, 1]


# --------------------------------------------------------------------------------------------
# Unlabeled test sets and image folders (prediction only)
# --------------------------------------------------------------------------------------------


def test_isic2019_unlabeled_test_set(tmp_path):
    ds = w.write_isic2019_test(tmp_path, n=4)
    table = read_unlabeled("isic2019", tmp_path)
    assert [r.image_id for r in table.records] == [row["image"] for row in ds.rows]
    assert all(r.label == UNLABELED for r in table.records)
    assert [r.image_path for r in table.records] == [ds.images[row["image"]] for row in ds.rows]
    assert table.records[0].meta == {"age_approx": 40.0, "anatom_site_general": "anterior torso", "sex": "female"}
    assert table.records[1].meta["age_approx"] is None and table.records[2].meta["anatom_site_general"] is None
    assert table.records[2].meta["sex"] is None
    assert len({r.group for r in table.records}) == 4  # no lesion ids: every image its own group


def test_isic2020_unlabeled_test_set(tmp_path):
    w.write_isic2020(tmp_path, n=4)  # also writes test.csv with one row and jpeg/test/ISIC_0052060.jpg
    table = read_unlabeled("isic2020", tmp_path)
    (record,) = table.records
    assert record.image_id == "ISIC_0052060" and record.label == UNLABELED
    assert record.image_path == tmp_path / "jpeg" / "test" / "ISIC_0052060.jpg"
    assert record.meta == {"age_approx": 70.0, "anatom_site_general_challenge": None, "sex": "male"}


def test_unlabeled_test_set_errors_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match="pad_ufes20 ships no unlabeled test set"):
        read_unlabeled("pad_ufes20", tmp_path)
    ds = w.write_isic2019_test(tmp_path, n=3)
    ds.images[ds.rows[1]["image"]].unlink()
    with pytest.raises(DatasetError, match=r"ISIC_0060001 \(line 3\)"):
        read_unlabeled("isic2019", tmp_path)
    w.set_cell(ds.csv_path, 2, "sex", "Male-ish")
    with pytest.raises(DatasetError, match=r"ISIC_2019_Test_Metadata.csv line 2, column 'sex'"):
        read_unlabeled("isic2019", tmp_path)


def test_image_folder_table(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    for name in ("b.png", "sub/a.jpg", "notes.txt"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".txt"):
            path.write_text("not an image")
        else:
            w.random_image(rng).save(path)
    table = image_folder_table(tmp_path)
    assert [r.image_id for r in table.records] == ["b", "a"]  # sorted paths: b.png < sub/a.jpg
    assert all(r.label == UNLABELED and r.meta == {} and r.line is None for r in table.records)
    w.random_image(rng).save(tmp_path / "sub" / "b.jpg")
    with pytest.raises(DatasetError, match="share the id 'b'"):
        image_folder_table(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no image files"):
        image_folder_table(tmp_path / "empty")


# --------------------------------------------------------------------------------------------
# HAM10000
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("part_style", ["part1", "part_1"])
def test_ham10000_records(tmp_path, part_style):
    ds = w.write_ham10000(tmp_path, n=14, part_style=part_style)
    table = read_table("ham10000", tmp_path)
    assert table.class_names == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert len(table.records) == 14
    for record, row in zip(table.records, ds.rows):
        assert record.label == table.class_names.index(row["dx"])
        assert record.group == f"lesion:{row['lesion_id']}"
        assert record.image_id == row["image_id"]
        assert record.image_path == ds.images[row["image_id"]]
        assert record.meta == {
            "age": expected_number(row["age"]),
            "sex": expected_category(row["sex"]),
            "localization": expected_category(row["localization"]),
        }
        assert "dx_type" not in record.meta and "dataset" not in record.meta  # label leak / provenance
    parents = {r.image_path.parent.name for r in table.records}
    suffix = "" if part_style == "part1" else "_"
    assert parents == {f"HAM10000_images_part{suffix}1", f"HAM10000_images_part{suffix}2"}
    # several images per lesion: fewer groups than images, all images of a lesion in one group
    groups = [r.group for r in table.records]
    assert len(set(groups)) == 8 and groups.count("lesion:HAM_0000003") == 3


def test_ham10000_unknown_is_missing(tmp_path):
    w.write_ham10000(tmp_path, n=14)
    meta = [r.meta for r in read_table("ham10000", tmp_path).records]
    assert meta[2]["sex"] is None  # "unknown"
    assert meta[13]["localization"] is None  # "unknown"
    assert meta[6]["age"] is None  # blank
    assert meta[0] == {"age": 40.0, "sex": "male", "localization": "abdomen"}


def test_ham10000_older_seven_column_release(tmp_path):
    ds = w.write_ham10000(tmp_path, n=8)
    w.edit_csv(ds.csv_path, lambda columns, rows: columns[:7])
    assert len(read_table("ham10000", tmp_path).records) == 8


# --------------------------------------------------------------------------------------------
# Synthetic and LesionTable.split_features
# --------------------------------------------------------------------------------------------


def test_read_table_synthetic_has_masks(synthetic_cache, synthetic_dir):
    table = read_table("synthetic", synthetic_cache, **SMALL_SYNTHETIC)
    assert table.dataset == "synthetic"
    assert table.class_names == ["ACK", "BCC", "MEL", "NEV", "SCC", "SEK"]
    assert table.csv_path == synthetic_dir / "metadata.csv"
    n_rows = len(table.csv_path.read_text().strip().splitlines()) - 1
    assert len(table.records) == n_rows > 200
    for record in table.records:
        assert record.mask_path == synthetic_dir / "masks" / f"{record.image_id}.png"
        assert record.image_path == synthetic_dir / "images" / f"{record.image_id}.png"
        assert record.mask_path.is_file()
        assert record.group.startswith("patient:PAT_")


def test_split_features_defaults(tmp_path):
    w.write_pad_ufes20(tmp_path / "pad", n=6)
    w.write_isic2019(tmp_path / "i19", n=4)
    w.write_ham10000(tmp_path / "ham", n=4)
    pad = read_table("pad_ufes20", tmp_path / "pad")
    assert pad.split_features() == (
        ["age"],
        ["gender", "skin_cancer_history", "cancer_history", "fitspatrick", "region",
         "itch", "grew", "hurt", "changed", "bleed", "elevation"],
    )  # fmt: skip
    assert pad.split_features(None) == pad.split_features()
    assert pad.split_features([]) == ([], [])
    # order follows the request; numbers and categories separated
    assert pad.split_features(["region", "diameter_2", "smoke", "age"]) == (["diameter_2", "age"], ["region", "smoke"])
    assert read_table("isic2019", tmp_path / "i19").split_features() == (["age_approx"], ["anatom_site_general", "sex"])
    assert read_table("ham10000", tmp_path / "ham").split_features() == (["age"], ["sex", "localization"])
    with pytest.raises(DatasetError, match=r"pad_ufes20: metadata feature\(s\) \['dx_type'\]"):
        pad.split_features(["age", "dx_type"])
