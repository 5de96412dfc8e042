"""The readers of ISIC 2017, PH2, Derm7pt, DDI, Fitzpatrick17k and the HAM10000 lesion masks on
format-exact fixtures (tests/dataset_writers.py): records, metadata, masks, official splits, and
every strict error (naming the file, the line, the column)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dataset_writers as w
from datamodules.checkpoint_data import build_datamodule
from datamodules.dataset import LesionDataset, load_mask, load_rgb
from datamodules.lesion_datamodule import LesionDataModule
from datamodules.metadata import MetadataEncoder
from datamodules.records import DatasetError, LesionRecord
from datamodules.sources import OFFICIAL_SPLITS, read_table
from datamodules.sources.derm7pt import DIAGNOSES
from datamodules.splits import official_indices
from datamodules.transforms import build_transforms


def esc(value) -> str:
    return re.escape(str(value))


# --------------------------------------------------------------------------------------------
# ISIC 2017
# --------------------------------------------------------------------------------------------


def test_isic2017_records_labels_masks_and_parts(tmp_path):
    ds = w.write_isic2017(tmp_path)
    table = read_table("isic2017", tmp_path)
    assert table.class_names == ["melanoma", "seborrheic_keratosis", "nevus"]
    assert table.csv_path == tmp_path / "ISIC-2017_Training_Part3_GroundTruth.csv"
    assert [r.image_id for r in table.records] == [row["image_id"] for row in ds.rows]  # no superpixel maps
    assert (ds.images["ISIC_0000000"].parent / "ISIC_0000000_superpixels.png").is_file()  # though beside them
    assert len(table.records) == 21
    assert [r.label for r in table.records] == [j % 3 for j in (*range(9), *range(6), *range(6))]
    assert [r.official_split for r in table.records] == ["train"] * 9 + ["val"] * 6 + ["test"] * 6
    for record in table.records:
        assert record.image_path == ds.images[record.image_id]
        assert record.mask_path == ds.extra["masks"][record.image_id]
        assert record.group == f"image:{record.image_id}"  # no patient or lesion id
    assert [r.line for r in table.records[8:10]] == [10, 2]  # lines of each part's own CSV
    assert table.records[0].meta == {"age_approximate": 30.0, "sex": "male"}
    assert table.records[2].meta == {"age_approximate": 40.0, "sex": None}  # "unknown"
    assert table.records[3].meta["age_approximate"] is None  # "unknown"
    assert table.subgroup_fields == ["sex", "age_approximate"]
    assert table.split_features() == (["age_approximate"], ["sex"])


def test_isic2017_melanoma_task_and_missing_parts(tmp_path):
    w.write_isic2017(tmp_path)
    table = read_table("isic2017", tmp_path, task="melanoma")
    assert table.class_names == ["non-melanoma", "melanoma"]
    assert [r.label for r in table.records][:6] == [1, 0, 0, 1, 0, 0]
    for name in ("ISIC-2017_Validation_Part3_GroundTruth.csv", "ISIC-2017_Test_v2_Part3_GroundTruth.csv"):
        (tmp_path / name).unlink()
    assert {r.official_split for r in read_table("isic2017", tmp_path).records} == {"train"}  # the parts present


def test_isic2017_without_the_mask_download_has_no_masks(tmp_path):
    import shutil

    w.write_isic2017(tmp_path)
    for part in w.ISIC2017_PARTS:
        shutil.rmtree(w.isic2017_paths(tmp_path, part)["masks"])
    assert all(r.mask_path is None for r in read_table("isic2017", tmp_path).records)


def _list_twice(paths: dict[str, Path], image_id: str) -> None:
    """Put validation image ``image_id`` into the training part too (files and rows), as line 2."""
    import shutil

    other = w.isic2017_paths(paths["data"].parent, "Validation")
    shutil.copy(other["data"] / f"{image_id}.jpg", paths["data"] / f"{image_id}.jpg")
    shutil.copy(other["masks"] / f"{image_id}_segmentation.png", paths["masks"] / f"{image_id}_segmentation.png")
    for name in ("truth", "meta"):
        w.set_cell(paths[name], 2, "image_id", image_id)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda p: p["truth"].unlink(), None),  # -> only the other parts are read
        (lambda p: w.set_cell(p["truth"], 3, "melanoma", "2.0"),
         r"Training_Part3_GroundTruth.csv column 'melanoma' must be 0/1 .*line 3: '2.0'"),
        (lambda p: w.set_cell(p["truth"], 3, "melanoma", "1.0"),  # line 3 is a seborrheic keratosis
         r"Training_Part3_GroundTruth.csv line\(s\) \[3\]: melanoma and seborrheic_keratosis are both 1"),
        (lambda p: w.edit_csv(p["truth"], lambda c, r: [x for x in c if x != "seborrheic_keratosis"]),
         r"lacks required column\(s\) \['seborrheic_keratosis'\]"),
        (lambda p: p["meta"].unlink(), r"none of .*ISIC-2017_Training_Data_metadata.csv.* found"),
        (lambda p: w.set_cell(p["meta"], 5, "sex", "M"),
         r"ISIC-2017_Training_Data_metadata.csv line 5, column 'sex': unknown category 'M'"),
        (lambda p: w.set_cell(p["meta"], 6, "age_approximate", "fifty"),
         r"Training_Data_metadata.csv line 6, column 'age_approximate': expected a number, got 'fifty'"),
        (lambda p: w.edit_csv(p["meta"], lambda c, r: r.pop(2)),
         r"1 image\(s\) of .*Training_Part3_GroundTruth.csv have no row in .*metadata.csv: ISIC_0000002 \(line 4\)"),
        (lambda p: (p["data"] / "ISIC_0000004.jpg").unlink(),
         r"1 image\(s\) listed in .*Training_Part3_GroundTruth.csv are missing .*ISIC_0000004 \(line 6\)"),
        (lambda p: (p["masks"] / "ISIC_0000005_segmentation.png").unlink(),
         r"1 lesion mask\(s\) listed in .*Training_Part3_GroundTruth.csv are missing .*"
         r"ISIC_0000005_segmentation \(line 7\)"),
        (lambda p: _list_twice(p, "ISIC_0000010"),
         r"ISIC_0000010 is listed in the (train and the val|val and the train) ground truth"),
    ],
)
def test_isic2017_errors_name_file_line_and_column(tmp_path, corrupt, message):
    w.write_isic2017(tmp_path)
    corrupt(w.isic2017_paths(tmp_path, "Training"))
    if message is None:
        assert {r.official_split for r in read_table("isic2017", tmp_path).records} == {"val", "test"}
        return
    with pytest.raises(DatasetError, match=f"^isic2017: .*{message}"):
        read_table("isic2017", tmp_path)


def test_isic2017_no_part_and_bad_task(tmp_path):
    with pytest.raises(DatasetError, match=r"isic2017: none of \['ISIC-2017_Training_Part3_GroundTruth.csv'"):
        read_table("isic2017", tmp_path)
    with pytest.raises(DatasetError, match=r"isic2017: task must be one of \['diagnosis', 'melanoma'\]"):
        read_table("isic2017", tmp_path, task="nevus")


# --------------------------------------------------------------------------------------------
# PH2
# --------------------------------------------------------------------------------------------


def test_ph2_table_images_masks_and_criteria(tmp_path):
    ds = w.write_ph2(tmp_path, n=12)
    for data_dir in (tmp_path, tmp_path / "PH2Dataset"):  # the folder holding PH2Dataset/, or it
        table = read_table("ph2", data_dir)
        assert table.class_names == ["common nevus", "atypical nevus", "melanoma"]
        assert [r.image_id for r in table.records] == [row["Name"] for row in ds.rows]  # the legend is no row
        assert [r.label for r in table.records] == [j % 3 for j in range(12)]
        assert [r.line for r in table.records] == list(range(2, 14))
        for record in table.records:
            assert record.image_path == ds.images[record.image_id] and record.image_path.suffix == ".bmp"
            assert record.mask_path == ds.extra["masks"][record.image_id]
            assert record.group == f"image:{record.image_id}"
    first, melanoma, blank = (table.records[j].meta for j in (0, 2, 3))
    assert first == {
        "asymmetry": "0", "pigment_network": "T", "dots_globules": "A", "streaks": "A", "regression_areas": "A",
        "blue_whitish_veil": "A", "color_white": "True", "color_red": "False", "color_light_brown": "True",
        "color_dark_brown": "True", "color_blue_gray": "False", "color_black": "False",
    }  # fmt: skip  (colours "1  3  4")
    assert melanoma["streaks"] == "P" and melanoma["color_black"] == "False" and melanoma["color_blue_gray"] == "True"
    assert all(blank[f"color_{c}"] is None for c in ("white", "red", "black"))  # no colour listed: missing
    assert table.split_features()[1] == list(table.categorical_columns)
    with pytest.raises(DatasetError, match="'histological_diagnosis' cannot be a metadata feature"):
        table.split_features(["histological_diagnosis"])


def test_ph2_header_with_double_bars_everywhere(tmp_path):
    """The header may separate the criteria with ``||`` too; the cells are the same."""
    ds = w.write_ph2(tmp_path, n=6)
    text = ds.csv_path.read_text().replace(w.PH2_HEADER, w.PH2_HEADER.replace(" | ", " || "))
    ds.csv_path.write_text(text)
    assert len(read_table("ph2", tmp_path).records) == 6


def _edit_line(path: Path, line: int, edit) -> None:
    lines = path.read_text().split("\n")
    lines[line - 1] = edit(lines[line - 1])
    path.write_text("\n".join(lines))


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda ds: _edit_line(ds.csv_path, 1, lambda s: s.replace("Colors", "Colours")),
         r"PH2_dataset.txt line 1: expected the header \['Name', .*'Colors'\]"),
        (lambda ds: _edit_line(ds.csv_path, 4, lambda s: s.replace(" | ", " ", 1)),
         r"PH2_dataset.txt line 4 has 9 cells, the header 10"),
        (lambda ds: _edit_line(ds.csv_path, 3, lambda s: s.replace("       AT |", "        X |", 1)),
         r"PH2_dataset.txt line 3, column 'pigment_network': unknown category 'X'"),
        (lambda ds: _edit_line(ds.csv_path, 4, lambda s: s.replace("  2 ||", "  3 ||", 1)),
         r"PH2_dataset.txt column 'clinical_diagnosis' has 1 unknown label\(s\) \(line 4: '3'\)"),
        (lambda ds: _edit_line(ds.csv_path, 2, lambda s: s.replace("1  3  4", "1  3  9")),
         r"PH2_dataset.txt line 2, column 'Colors': unknown colour code\(s\) \['9'\]"),
        (lambda ds: ds.images["IMD024"].unlink(),
         r"1 image\(s\) listed in .*PH2_dataset.txt are missing .*IMD024 \(line 5\)"),
        (lambda ds: ds.extra["masks"]["IMD010"].unlink(),
         r"1 lesion mask\(s\) listed in .*PH2_dataset.txt are missing .*IMD010_lesion \(line 3\)"),
        (lambda ds: ds.csv_path.write_text("Name\tClinical Diagnosis\nIMD003\t0\n"),
         r"PH2_dataset.txt holds no '\|\|' table"),
    ],
)
def test_ph2_errors_name_the_line(tmp_path, corrupt, message):
    ds = w.write_ph2(tmp_path, n=6)
    corrupt(ds)
    with pytest.raises(DatasetError, match=f"^ph2: .*{message}"):
        read_table("ph2", tmp_path)


# --------------------------------------------------------------------------------------------
# Derm7pt
# --------------------------------------------------------------------------------------------


def test_derm7pt_cases_five_classes_and_official_split(tmp_path):
    ds = w.write_derm7pt(tmp_path, n=15)
    for data_dir in (tmp_path, tmp_path / "release_v0"):
        table = read_table("derm7pt", data_dir)
        assert table.class_names == ["BCC", "NEV", "MEL", "MISC", "SK"]
        assert [table.class_names[r.label] for r in table.records] == ["BCC", "NEV", "MEL", "MISC", "SK"] * 3
        assert [r.official_split for r in table.records] == [ds.extra["split"][j] for j in range(15)]
        assert [r.image_path for r in table.records] == [ds.extra["derm"][j] for j in range(15)]
        assert [r.group for r in table.records] == [f"case:{j + 1}" for j in range(15)]
    assert table.records[0].image_id == "NEL026"  # file names are the ids
    assert table.records[0].meta == {
        "seven_point_score": 0.0, "pigment_network": "absent", "streaks": "absent", "pigmentation": "absent",
        "regression_structures": "absent", "dots_and_globules": "irregular", "blue_whitish_veil": "absent",
        "vascular_structures": "absent", "level_of_diagnostic_difficulty": "low", "elevation": "flat",
        "location": "back", "sex": "female",
    }  # fmt: skip
    assert table.split_features() == ([], ["elevation", "location", "sex"])
    assert table.subgroup_fields == ["sex", "location"]
    with pytest.raises(DatasetError, match=r"derm7pt: 'management' cannot be a metadata feature: the treatment"):
        table.split_features(["sex", "management"])


def test_derm7pt_clinical_image_and_raw_diagnoses(tmp_path):
    ds = w.write_derm7pt(tmp_path, n=15)
    clinic = read_table("derm7pt", tmp_path, image="clinic", task="diagnosis")
    assert [r.image_path for r in clinic.records] == [ds.extra["clinic"][j] for j in range(15)]
    assert clinic.records[0].image_path.name == "NEL025.JPG"  # the file's own (upper-case) extension
    assert clinic.records[7].image_path == ds.extra["derm"][7]  # the case whose clinical photo was replaced
    assert clinic.class_names == DIAGNOSES and len(DIAGNOSES) == 20
    assert [clinic.class_names[r.label] for r in clinic.records] == [row["diagnosis"] for row in ds.rows]


def test_derm7pt_without_index_files_has_no_official_split(tmp_path):
    w.write_derm7pt(tmp_path, n=15)
    for name in ("train", "valid", "test"):
        (tmp_path / "release_v0" / "meta" / f"{name}_indexes.csv").unlink()
    assert {r.official_split for r in read_table("derm7pt", tmp_path).records} == {None}


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda meta: w.set_cell(meta / "meta.csv", 4, "diagnosis", "nevus spilus"),
         r"meta.csv column 'diagnosis' has 1 unknown label\(s\) \(line 4: 'nevus spilus'\)"),
        (lambda meta: w.set_cell(meta / "meta.csv", 6, "elevation", "raised"),
         r"meta.csv line 6, column 'elevation': unknown category 'raised'"),
        (lambda meta: w.set_cell(meta / "meta.csv", 3, "derm", "Gzl/missing.jpg"),
         r"1 file\(s\) named in column 'derm' of .*meta.csv are missing from .*images: Gzl/missing.jpg \(line 3\)"),
        (lambda meta: w.set_cell(meta / "meta.csv", 5, "case_num", "1"),
         r"meta.csv column 'case_num' has duplicate ids"),
        (lambda meta: w.set_cell(meta / "valid_indexes.csv", 3, "indexes", "15"),
         r"valid_indexes.csv line 3, column 'indexes': expected a row number of meta.csv \(0 to 14\), got '15'"),
        (lambda meta: w.set_cell(meta / "test_indexes.csv", 2, "indexes", "4"),
         r"test_indexes.csv line 2: row 4 of meta.csv is already in the train split"),
        (lambda meta: w.edit_csv(meta / "test_indexes.csv", lambda c, r: r.pop()),
         r"1 row\(s\) of meta.csv \(lines \[16\]\) are in none of"),
        (lambda meta: (meta / "valid_indexes.csv").unlink(),
         r"but not \['valid_indexes.csv'\]; the official split needs all three"),
    ],
)
def test_derm7pt_errors_name_file_line_and_column(tmp_path, corrupt, message):
    w.write_derm7pt(tmp_path, n=15)
    corrupt(tmp_path / "release_v0" / "meta")
    with pytest.raises(DatasetError, match=f"^derm7pt: .*{message}"):
        read_table("derm7pt", tmp_path)


def test_derm7pt_bad_options(tmp_path):
    w.write_derm7pt(tmp_path, n=15)
    with pytest.raises(DatasetError, match=r"derm7pt: image must be one of \['derm', 'clinic'\], got 'both'"):
        read_table("derm7pt", tmp_path, image="both")
    with pytest.raises(DatasetError, match=r"derm7pt: task must be one of \['grouped', 'diagnosis'\]"):
        read_table("derm7pt", tmp_path, task="five")


# --------------------------------------------------------------------------------------------
# DDI and Fitzpatrick17k: skin tones
# --------------------------------------------------------------------------------------------


def test_ddi_records_skin_tone_and_disease(tmp_path):
    ds = w.write_ddi(tmp_path, n=12)
    table = read_table("ddi", tmp_path)
    assert table.class_names == ["benign", "malignant"]
    assert [r.label for r in table.records] == [int(j % 3 == 0) for j in range(12)]
    assert [r.meta for r in table.records][:4] == [{"skin_tone": "12"}, {"skin_tone": "12"}, {"skin_tone": "34"},
                                                   {"skin_tone": "34"}]  # fmt: skip
    assert [r.image_path for r in table.records] == list(ds.images.values())
    assert [r.image_id for r in table.records][:2] == ["000001", "000002"]
    assert table.subgroup_fields == ["skin_tone"] and table.split_features() == ([], ["skin_tone"])
    with pytest.raises(DatasetError, match="ddi: 'disease' cannot be a metadata feature: it names the diagnosis"):
        table.split_features(["skin_tone", "disease"])
    by_disease = read_table("ddi", tmp_path, task="disease")
    assert by_disease.class_names == sorted({row["disease"] for row in ds.rows})
    assert [by_disease.class_names[r.label] for r in by_disease.records] == [row["disease"] for row in ds.rows]


def test_ddi_pandas_index_column_older_label_column_and_images_folder(tmp_path):
    ds = w.write_ddi(tmp_path, n=6)

    def older(columns, rows):
        for k, row in enumerate(rows):
            row[""], row["malignancy(malig=1)"] = str(k), "1" if row["malignant"] == "True" else "0"
        return ["", "DDI_ID", "DDI_file", "skin_tone", "malignancy(malig=1)", "disease"]

    w.edit_csv(ds.csv_path, older)
    (tmp_path / "images").mkdir()
    for path in ds.images.values():
        path.rename(tmp_path / "images" / path.name)
    table = read_table("ddi", tmp_path)
    assert [r.label for r in table.records] == [1, 0, 0, 1, 0, 0]
    assert all(r.image_path.parent == tmp_path / "images" for r in table.records)


@pytest.mark.parametrize(
    "column, line, value, message",
    [
        ("malignant", 4, "maybe",
         r"column 'malignant' must be 0/1 \(or True/False\); 1 cell\(s\) are not \(line 4: 'maybe'\)"),
        ("skin_tone", 3, "78", r"line 3, column 'skin_tone': unknown category '78'"),
        ("DDI_file", 5, "000001.png", r"column 'DDI_file' has duplicate ids"),
        ("DDI_file", 6, "000099.png", r"1 image\(s\) listed in .*ddi_metadata.csv are missing .*000099.png \(line 6\)"),
    ],
)
def test_ddi_errors(tmp_path, column, line, value, message):
    ds = w.write_ddi(tmp_path, n=6)
    w.set_cell(ds.csv_path, line, column, value)
    with pytest.raises(DatasetError, match=f"^ddi: .*{message}"):
        read_table("ddi", tmp_path)


def test_fitzpatrick17k_missing_downloads_are_listed_or_dropped_with_a_warning(tmp_path):
    ds = w.write_fitzpatrick17k(tmp_path, n=17, n_missing=2)
    dead, none = ds.rows[15], ds.rows[16]
    with pytest.raises(DatasetError) as info:
        read_table("fitzpatrick17k", tmp_path)
    message = str(info.value)
    assert message.startswith(f"fitzpatrick17k: 2 of 17 images listed in {ds.csv_path} are not under")
    assert f"{dead['md5hash']} (line 17, {dead['url']})" in message
    assert f"{none['md5hash']} (line 18, no url)" in message
    assert "--data.allow_missing_images=true" in message
    with pytest.warns(UserWarning, match=r"fitzpatrick17k: 2 of 17 images .* never downloaded"):
        table = read_table("fitzpatrick17k", tmp_path, allow_missing_images=True)
    assert [r.image_id for r in table.records] == [row["md5hash"] for row in ds.rows[:15]]
    assert [r.line for r in table.records] == list(range(2, 17))
    from datamodules.lesion_datamodule import LesionDataModule

    with pytest.warns(UserWarning, match="never downloaded"):  # the datamodule option is the reader's
        dm = LesionDataModule(dataset="fitzpatrick17k", data_dir=str(tmp_path), allow_missing_images=True,
                              image_cache=False, n_folds=3)
        assert len(dm.table.records) == 15
    assert dm.hparams.source_options == {"allow_missing_images": True}
    with pytest.raises(ValueError, match=r"--data.allow_missing_images=true: ddi's reader needs every listed image"):
        LesionDataModule(dataset="ddi", data_dir=str(tmp_path), allow_missing_images=True)


def test_fitzpatrick17k_partitions_and_skin_types(tmp_path):
    ds = w.write_fitzpatrick17k(tmp_path, n=12, n_missing=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing missing: no warning
        table = read_table("fitzpatrick17k", tmp_path)
    assert table.class_names == ["benign", "malignant", "non-neoplastic"]
    assert [table.class_names[r.label] for r in table.records] == [row["three_partition_label"] for row in ds.rows]
    assert table.records[0].meta == {"fitzpatrick_scale": "1", "fitzpatrick_centaur": "2"}
    assert table.records[6].meta["fitzpatrick_scale"] is None  # -1: unknown
    assert table.subgroup_fields == ["fitzpatrick_scale"]
    nine = read_table("fitzpatrick17k", tmp_path, task="nine_partition")
    assert [nine.class_names[r.label] for r in nine.records] == [row["nine_partition_label"] for row in ds.rows]
    raw = read_table("fitzpatrick17k", tmp_path, task="label")
    assert raw.class_names == sorted({row["label"] for row in ds.rows})
    with pytest.raises(DatasetError, match="'three_partition_label' cannot be a metadata feature: it is the label"):
        table.split_features(["three_partition_label"])
    w.set_cell(ds.csv_path, 3, "fitzpatrick_scale", "7")
    with pytest.raises(DatasetError, match=r"fitzpatrick17k.csv line 3, column 'fitzpatrick_scale': unknown category"):
        read_table("fitzpatrick17k", tmp_path)
    with pytest.raises(DatasetError, match=r"task must be one of \['three_partition', 'nine_partition', 'label'\]"):
        read_table("fitzpatrick17k", tmp_path, task="binary")


# --------------------------------------------------------------------------------------------
# HAM10000 lesion masks
# --------------------------------------------------------------------------------------------


def test_ham10000_masks_when_downloaded(tmp_path):
    ds = w.write_ham10000(tmp_path, n=8, part_style="part_1")
    assert all(r.mask_path is None for r in read_table("ham10000", tmp_path).records)
    masks = w.write_ham10000_masks(ds)
    table = read_table("ham10000", tmp_path)
    assert [r.mask_path for r in table.records] == [masks[row["image_id"]] for row in ds.rows]
    masks[ds.rows[3]["image_id"]].unlink()
    with pytest.raises(DatasetError, match=r"ham10000: 1 lesion mask\(s\) listed in .* are missing .*"
                                           rf"{ds.rows[3]['image_id']}_segmentation \(line 5\)"):
        read_table("ham10000", tmp_path)
    with pytest.raises(DatasetError, match="'dx_type' cannot be a metadata feature: how the diagnosis was confirmed"):
        table.split_features(["dx_type"])


# --------------------------------------------------------------------------------------------
# Masks reach the batches, the right way round
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset, writer", [("isic2017", w.write_isic2017), ("ph2", w.write_ph2)])
def test_masks_cover_the_lesion_in_the_batch(tmp_path, dataset, writer):
    """The fixtures' lesions are darker than the skin: after the evaluation transform, the image is
    darker inside the mask than outside, for every image (ISIC 2017's first JPEG is decoded at a
    reduced scale and its full-size mask resized to it; PH2's masks are 1-bit BMPs)."""
    writer(tmp_path)
    records = read_table(dataset, tmp_path).records
    if dataset == "isic2017":  # decoded at half size (both sides >= 2 x 32 px), its mask at full size
        assert load_rgb(records[0].image_path, min_side=64).shape[:2] == (96, 128)
        assert Image.open(records[0].mask_path).size == (256, 192)
    data = LesionDataset(records, MetadataEncoder().fit(records), build_transforms(False, 32, "none"), dataset,
                         load_masks=True, image_size=32)
    for k in range(len(records)):
        item = data[k]
        mask, grey = item["mask"], item["image"].mean(0)
        assert mask.shape == (32, 32) and set(mask.unique().tolist()) == {0.0, 1.0}
        assert grey[mask == 1].mean() < grey[mask == 0].mean() - 0.5, records[k].image_id


def test_load_mask_resizes_the_same_picture_and_refuses_another(tmp_path):
    mask = np.zeros((30, 40), np.uint8)
    mask[10:20, 10:30] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    half = load_mask(tmp_path / "m.png", "x", (15, 20))
    assert half.shape == (15, 20) and half.sum() == 5 * 10 and half[5:10, 5:15].all()
    with pytest.raises(DatasetError, match=r"x: mask .*m.png is 30 x 40 px, its image 30 x 30 px \(another aspect"):
        load_mask(tmp_path / "m.png", "x", (30, 30))


# --------------------------------------------------------------------------------------------
# --data.split=official
# --------------------------------------------------------------------------------------------


def test_official_split_is_the_shipped_one_and_ignores_folds(tmp_path):
    ds = w.write_isic2017(tmp_path)
    for fold in (0, 2):
        dm = LesionDataModule("isic2017", str(tmp_path), split="official", fold=fold, n_folds=3, image_cache=False)
        assert {s: [r.image_id for r in dm.records(s)] for s in ("train", "val", "test")} == {
            s: [i for i, v in ds.extra["split"].items() if v == s] for s in ("train", "val", "test")}
    summary = dm.summary()
    assert summary["split"] == "official" and summary["fold"] is None and summary["n_folds"] is None
    assert summary["split_sizes"] == {"train": 9, "val": 6, "test": 6}
    folds = LesionDataModule("isic2017", str(tmp_path), n_folds=3, image_cache=False)
    assert folds.summary()["split"] == "folds" and sum(folds.summary()["split_sizes"].values()) == 21


def test_official_split_refused_for_datasets_without_one(tmp_path):
    assert OFFICIAL_SPLITS == ("isic2017", "derm7pt")
    with pytest.raises(DatasetError, match=r"ph2 ships no official split; datasets that do: \['isic2017', 'derm7pt'\]"):
        LesionDataModule("ph2", str(tmp_path), split="official")
    with pytest.raises(ValueError, match=r"--data.split='paper': must be one of 'folds', 'official'"):
        LesionDataModule("isic2017", str(tmp_path), split="paper")


def test_official_indices_errors():
    def record(i, split, group=None):
        return LesionRecord(f"x{i}", Path(f"x{i}.png"), 0, group or f"image:x{i}", {}, line=i + 2, official_split=split)

    records = [record(0, "train"), record(1, "val"), record(2, "test")]
    assert {k: v.tolist() for k, v in official_indices(records).items()} == {"train": [0], "val": [1], "test": [2]}
    with pytest.raises(DatasetError, match=r"d: records without an official split \(\['None'\], e.g. CSV lines \[5\]\)"):
        official_indices([*records, record(3, None)], "d")
    with pytest.raises(DatasetError, match="d: the official val split has no image"):
        official_indices([records[0], records[2]], "d")
    with pytest.raises(DatasetError, match=r"d: the official split puts one patient/lesion group in two splits"):
        official_indices([*records, record(3, "test", "image:x0")], "d")


def test_official_split_class_absent_names_the_split(tmp_path):
    w.write_isic2017(tmp_path, sizes=(9, 2, 6))  # validation: melanoma and keratosis only
    dm = LesionDataModule("isic2017", str(tmp_path), split="official", image_cache=False)
    with pytest.raises(DatasetError, match=r"isic2017: class\(es\) \['nevus'\] have no image in the official val split;"):
        dm.split_records


def test_prediction_on_another_dataset_leaves_the_official_split(tmp_path):
    w.write_ddi(tmp_path / "ddi", n=12)
    hparams = LesionDataModule("isic2017", str(tmp_path), split="official").hparams
    checkpoint = {"datamodule_hyper_parameters": dict(hparams)}
    dm = build_datamodule(checkpoint, "ddi", str(tmp_path / "ddi"), "all", load_state=False)
    assert dm.hparams.split == "folds" and len(dm.records("all")) == 12
    same = build_datamodule(checkpoint, None, None, "test", load_state=False)
    assert same.hparams.split == "official"


def test_resume_refuses_another_split_and_reads_older_runs_as_folds(tmp_path):
    from types import SimpleNamespace

    import yaml

    from experiments.resume import DATA_IDENTITY, check_same_data

    assert "split" in DATA_IDENTITY
    data = {"dataset": "isic2017", "data_dir": "/d", "source_options": None, "meta_features": None, "fold": 0,
            "n_folds": 5, "split_seed": 0, "min_class_images": 0}  # fmt: skip
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump({"data": data}))  # saved before --data.split existed
    check_same_data(saved, SimpleNamespace(data={**data, "split": "folds"}))
    with pytest.raises(ValueError, match=r"data.split: 'folds' -> 'official'"):
        check_same_data(saved, SimpleNamespace(data={**data, "split": "official"}))


def test_subgroup_fields_of_the_existing_readers(tmp_path):
    w.write_pad_ufes20(tmp_path / "pad", n=6)
    w.write_isic2020(tmp_path / "i20", n=4)
    assert read_table("pad_ufes20", tmp_path / "pad").subgroup_fields == ["fitspatrick", "gender", "age", "region"]
    table = read_table("isic2020", tmp_path / "i20")
    assert table.subgroup_fields == ["sex", "age_approx", "anatom_site_general_challenge"]
    with pytest.raises(DatasetError, match="isic2020: 'benign_malignant' cannot be a metadata feature: it is the label"):
        table.split_features(["benign_malignant"])


@pytest.mark.parametrize("dataset, writer, options", [
    ("isic2017", w.write_isic2017, {}), ("ph2", w.write_ph2, {}), ("derm7pt", w.write_derm7pt, {}),
    ("ddi", w.write_ddi, {}), ("fitzpatrick17k", w.write_fitzpatrick17k, {"allow_missing_images": True}),
])  # fmt: skip
def test_resized_image_cache_of_each_layout(tmp_path, dataset, writer, options):
    """``make preprocess`` mirrors each dataset's folder (Derm7pt's is ``release_v0/``, its CSV
    in ``meta/``), masks included, and the cached table reads like the original."""
    from datamodules.image_cache import apply_cache, build_cache

    writer(tmp_path / "data")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Fitzpatrick17k's missing downloads
        table = read_table(dataset, tmp_path / "data", **options)
    cached = apply_cache(table, build_cache(table, 24, tmp_path / "cache", source_options=options))
    for before, after in zip(table.records, cached.records):
        assert after.source_path == before.image_path and after.image_path.is_file()
        assert (after.mask_path is None) == (before.mask_path is None)
        assert min(Image.open(after.image_path).size) == 24
    if dataset == "derm7pt":
        assert table.folder == tmp_path / "data" / "release_v0"
        assert cached.records[0].image_path.relative_to(tmp_path / "cache").parts[2:] == ("images", "NEL", "NEL026.jpg")
    data = LesionDataset(cached.records, MetadataEncoder().fit(cached.records), build_transforms(False, 16, "none"),
                         dataset, load_masks=True, image_size=16)
    assert data[0]["image"].shape == (3, 16, 16) and ("mask" in data[0]) == (dataset in ("isic2017", "ph2"))
