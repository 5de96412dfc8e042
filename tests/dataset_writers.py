"""Write tiny but format-exact fake copies of the public datasets (see docs/datasets.md).

Plain helpers (not tests). Every writer is deterministic, writes small random-colour images and
returns a :class:`FakeDataset` with the rows it wrote (dicts of the exact CSV strings, in file
order) and where each image went, so tests can assert against them. ``edit_csv`` / ``read_csv_rows``
let bad-input tests corrupt one cell of a file that was written correctly.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image

# --------------------------------------------------------------------------------------------
# Column orders, exactly as distributed
# --------------------------------------------------------------------------------------------

PAD_COLUMNS = [
    "patient_id", "lesion_id", "smoke", "drink", "background_father", "background_mother", "age",
    "pesticide", "gender", "skin_cancer_history", "cancer_history", "has_piped_water",
    "has_sewage_system", "fitspatrick", "region", "diameter_1", "diameter_2", "diagnostic", "itch",
    "grew", "hurt", "changed", "bleed", "elevation", "img_id", "biopsed",
]  # fmt: skip
PAD_CLASSES = ["ACK", "BCC", "MEL", "NEV", "SCC", "SEK"]
PAD_REGIONS = [
    "ABDOMEN", "ARM", "BACK", "CHEST", "EAR", "FACE", "FOOT", "FOREARM", "HAND", "LIP", "NECK",
    "NOSE", "SCALP", "THIGH",
]  # fmt: skip
PAD_QUESTIONS = ["itch", "grew", "hurt", "changed", "bleed", "elevation"]

ISIC2019_CLASSES = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]
ISIC2019_GT_COLUMNS = ["image", *ISIC2019_CLASSES, "UNK"]
ISIC2019_META_COLUMNS = ["image", "age_approx", "anatom_site_general", "lesion_id", "sex"]
ISIC2019_SITES = [
    "anterior torso", "upper extremity", "posterior torso", "lower extremity", "lateral torso",
    "head/neck", "palms/soles", "oral/genital",
]  # fmt: skip
ISIC2019_GT = "ISIC_2019_Training_GroundTruth.csv"
ISIC2019_META = "ISIC_2019_Training_Metadata.csv"
ISIC2019_IMAGES = "ISIC_2019_Training_Input/ISIC_2019_Training_Input"  # nested, as the zip ships

ISIC2020_COLUMNS = [
    "image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge", "diagnosis",
    "benign_malignant", "target",
]  # fmt: skip
ISIC2020_SITES = ["head/neck", "upper extremity", "lower extremity", "torso", "palms/soles", "oral/genital"]
ISIC2020_DIAGNOSES = [
    "unknown", "nevus", "melanoma", "seborrheic keratosis", "lentigo NOS", "lichenoid keratosis",
    "solar lentigo", "cafe-au-lait macule", "atypical melanocytic proliferation",
]  # fmt: skip

HAM_COLUMNS = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset"]
HAM_CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
HAM_LOCALIZATIONS = [
    "abdomen", "acral", "back", "chest", "ear", "face", "foot", "genital", "hand",
    "lower extremity", "neck", "scalp", "trunk", "unknown", "upper extremity",
]  # fmt: skip


@dataclass
class FakeDataset:
    root: Path
    #: The main CSV (PAD metadata.csv, ISIC 2019 ground truth, ISIC 2020 train.csv, HAM metadata).
    csv_path: Path
    #: Rows of ``csv_path`` as written (column -> exact string), in file order: row i is line i + 2.
    rows: list[dict[str, str]]
    #: image id as it appears in the CSV -> file written.
    images: dict[str, Path]
    #: Extra files (e.g. the ISIC 2019 metadata CSV and its rows).
    extra: dict = field(default_factory=dict)

    def line_of(self, image_id: str) -> int:
        """CSV line (header = 1) of the row naming ``image_id``."""
        for i, row in enumerate(self.rows):
            if image_id in row.values():
                return i + 2
        raise KeyError(image_id)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def write_csv(path: Path, columns: list[str], rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
    return path


def read_csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def edit_csv(path: Path, edit: Callable[[list[str], list[dict[str, str]]], Optional[list[str]]]) -> None:
    """Rewrite ``path`` after ``edit(columns, rows)`` mutated the rows in place (it may return
    a new column list, e.g. to drop a column)."""
    columns, rows = read_csv_rows(path)
    new_columns = edit(columns, rows) or columns
    write_csv(path, new_columns, [{c: r.get(c, "") for c in new_columns} for r in rows])


def set_cell(path: Path, line: int, column: str, value: str) -> None:
    """Set one cell, addressed like an error message does: CSV line (header = line 1)."""

    def edit(columns, rows):
        rows[line - 2][column] = value

    edit_csv(path, edit)


def random_image(rng: np.random.Generator, size=(32, 32), mode: str = "RGB") -> Image.Image:
    """A random-colour image: a flat background and a random rectangle (``size`` is (w, h))."""
    w, h = size
    array = np.empty((h, w, 3), np.uint8)
    array[:] = rng.integers(0, 256, 3, dtype=np.uint8)
    y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
    array[y0 : y0 + h // 2, x0 : x0 + w // 2] = rng.integers(0, 256, 3, dtype=np.uint8)
    if mode == "RGBA":
        alpha = np.full((h, w, 1), 255, np.uint8)
        alpha[0, 0] = 0  # one fully transparent pixel: it must load as white
        return Image.fromarray(np.concatenate([array, alpha], axis=2), "RGBA")
    return Image.fromarray(array, "RGB")


def _save(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.save(path, quality=90)
    else:
        image.save(path)
    return path


# --------------------------------------------------------------------------------------------
# PAD-UFES-20
# --------------------------------------------------------------------------------------------


def pad_row(j: int) -> dict[str, str]:
    """Row ``j`` of the fake PAD-UFES-20: 3 images per patient, 2 per lesion, classes cycling;
    even rows biopsied (history filled), odd rows not (history and diameters blank)."""
    patient = 10 + j // 3
    lesion = 100 + j // 2
    biopsied = j % 2 == 0
    b = lambda flag: ("True" if flag else "False") if biopsied else ""  # noqa: E731
    answer = lambda k: "UNK" if (j + k) % 5 == 0 else ("True" if (j + k) % 2 else "False")  # noqa: E731
    return {
        "patient_id": f"PAT_{patient}",
        "lesion_id": str(lesion),
        "smoke": b(j % 4 == 0),
        "drink": b(j % 3 == 0),
        "background_father": ["POMERANIA", "GERMANY", "BRAZIL"][j % 3] if biopsied else "",
        "background_mother": ["ITALY", "POMERANIA"][(j // 2) % 2] if biopsied else "",
        "age": str(20 + 3 * j),
        "pesticide": b(j % 5 == 0),
        "gender": ["MALE", "FEMALE"][(j // 2) % 2] if biopsied else "",
        "skin_cancer_history": b(j % 4 == 2),
        "cancer_history": b(True),
        "has_piped_water": b(True),
        "has_sewage_system": b(False),
        "fitspatrick": f"{float(1 + j % 6):.1f}" if biopsied else "",
        "region": PAD_REGIONS[j % len(PAD_REGIONS)],
        "diameter_1": f"{5 + j}.0" if biopsied else "",
        "diameter_2": f"{4 + j}.0" if biopsied else "",
        "diagnostic": PAD_CLASSES[j % len(PAD_CLASSES)],
        **{q: answer(k) for k, q in enumerate(PAD_QUESTIONS)},
        "img_id": f"PAT_{patient}_{lesion}_{500 + j}.png",
        "biopsed": "True" if biopsied or PAD_CLASSES[j % 6] in ("BCC", "MEL", "SCC") else "False",
    }


def write_pad_ufes20(
    root: Path, n: int = 12, layout: str = "images", n_rgba: int = 2, seed: int = 0
) -> FakeDataset:
    """``metadata.csv`` (26 columns in order) and ``n`` PNGs in ``images/`` (the usual flattened
    layout) or spread over ``imgs_part_1..3`` (as shipped). The first ``n_rgba`` images are RGBA
    with pixel (0, 0) fully transparent."""
    if layout not in ("images", "parts"):
        raise ValueError(layout)
    root = Path(root)
    rng = np.random.default_rng([seed, 20])
    rows = [pad_row(j) for j in range(n)]
    images = {}
    for j, row in enumerate(rows):
        folder = "images" if layout == "images" else f"imgs_part_{1 + j % 3}"
        size = 32 + 8 * (j % 2)  # square, varying size, as in PAD
        image = random_image(rng, (size, size), "RGBA" if j < n_rgba else "RGB")
        images[row["img_id"]] = _save(image, root / folder / row["img_id"])
    csv_path = write_csv(root / "metadata.csv", PAD_COLUMNS, rows)
    return FakeDataset(root, csv_path, rows, images)


# --------------------------------------------------------------------------------------------
# ISIC 2019
# --------------------------------------------------------------------------------------------


def isic2019_image_name(j: int) -> str:
    name = f"ISIC_{j:07d}"
    return f"{name}_downsampled" if j == 1 else name


def write_isic2019(root: Path, n: int = 10, n_without_lesion: int = 3, seed: int = 0) -> FakeDataset:
    """Ground truth (one-hot ``1.0``/``0.0`` with the all-zero ``UNK`` column), metadata (blank
    ``lesion_id`` for the first ``n_without_lesion`` rows, later rows in pairs sharing a lesion,
    some blank ages/sites/sexes) and JPEGs nested in ``ISIC_2019_Training_Input/`` twice, as the
    zip unpacks. Image 1 is named ``ISIC_0000001_downsampled``. ``extra``: ``meta_path`` and
    ``meta_rows``."""
    root = Path(root)
    rng = np.random.default_rng([seed, 2019])
    truth, meta, images = [], [], {}
    for j in range(n):
        name = isic2019_image_name(j)
        label = ISIC2019_CLASSES[j % len(ISIC2019_CLASSES)]
        truth.append({"image": name, **{c: "1.0" if c == label else "0.0" for c in ISIC2019_GT_COLUMNS[1:]}})
        meta.append({
            "image": name,
            "age_approx": "" if j % 4 == 3 else f"{30 + 5 * j}.0",
            "anatom_site_general": "" if j % 5 == 4 else ISIC2019_SITES[j % len(ISIC2019_SITES)],
            "lesion_id": "" if j < n_without_lesion else f"BCN_{(j - n_without_lesion) // 2:07d}",
            "sex": ["male", "female", ""][j % 3],
        })  # fmt: skip
        images[name] = _save(random_image(rng, (32, 24)), root / ISIC2019_IMAGES / f"{name}.jpg")
    (root / ISIC2019_IMAGES / "LICENSE.txt").write_text("CC BY-NC 4.0\n")
    (root / ISIC2019_IMAGES / "ATTRIBUTION.txt").write_text("fake\n")
    csv_path = write_csv(root / ISIC2019_GT, ISIC2019_GT_COLUMNS, truth)
    meta_path = write_csv(root / ISIC2019_META, ISIC2019_META_COLUMNS, meta)
    return FakeDataset(root, csv_path, truth, images, {"meta_path": meta_path, "meta_rows": meta})


def write_isic2019_test(root: Path, n: int = 4, seed: int = 0) -> FakeDataset:
    """The challenge test set: ``ISIC_2019_Test_Metadata.csv`` (no ``lesion_id``, some blanks)
    and JPEGs in ``ISIC_2019_Test_Input/``; no ground truth."""
    root = Path(root)
    rng = np.random.default_rng([seed, 2019, 1])
    rows, images = [], {}
    for j in range(n):
        name = f"ISIC_{60000 + j:07d}"
        rows.append({
            "image": name,
            "age_approx": "" if j == 1 else f"{40 + 5 * j}.0",
            "anatom_site_general": "" if j == 2 else ISIC2019_SITES[j % len(ISIC2019_SITES)],
            "sex": ["female", "male", ""][j % 3],
        })  # fmt: skip
        images[name] = _save(random_image(rng, (32, 24)), root / "ISIC_2019_Test_Input" / f"{name}.jpg")
    csv_path = write_csv(root / "ISIC_2019_Test_Metadata.csv", ["image", "age_approx", "anatom_site_general", "sex"], rows)
    return FakeDataset(root, csv_path, rows, images)


# --------------------------------------------------------------------------------------------
# ISIC 2020
# --------------------------------------------------------------------------------------------


def write_isic2020(root: Path, n: int = 10, seed: int = 0) -> FakeDataset:
    """``train.csv`` (exact 8 columns; 2 images per patient; every 4th row a melanoma, target 1;
    some blank sex/age/site) with JPEGs in ``jpeg/train/``; also ``test.csv`` and one test image
    in ``jpeg/test/`` (which the reader must not pick up)."""
    root = Path(root)
    rng = np.random.default_rng([seed, 2020])
    rows, images = [], {}
    non_mel = [d for d in ISIC2020_DIAGNOSES if d != "melanoma"]
    for j in range(n):
        name = f"ISIC_{2637011 + 7 * j}"
        melanoma = j % 4 == 1
        rows.append({
            "image_name": name,
            "patient_id": f"IP_{7279968 + j // 2}",
            "sex": ["male", "female", ""][j % 3],
            "age_approx": "" if j % 5 == 4 else f"{45 + 5 * (j % 6)}.0",
            "anatom_site_general_challenge": "" if j % 6 == 5 else ISIC2020_SITES[j % len(ISIC2020_SITES)],
            "diagnosis": "melanoma" if melanoma else non_mel[j % len(non_mel)],
            "benign_malignant": "malignant" if melanoma else "benign",
            "target": "1" if melanoma else "0",
        })  # fmt: skip
        images[name] = _save(random_image(rng, (40, 30)), root / "jpeg" / "train" / f"{name}.jpg")
    csv_path = write_csv(root / "train.csv", ISIC2020_COLUMNS, rows)
    write_csv(
        root / "test.csv",
        ISIC2020_COLUMNS[:5],
        [{"image_name": "ISIC_0052060", "patient_id": "IP_3579794", "sex": "male", "age_approx": "70.0",
          "anatom_site_general_challenge": ""}],
    )  # fmt: skip
    _save(random_image(rng, (40, 30)), root / "jpeg" / "test" / "ISIC_0052060.jpg")
    return FakeDataset(root, csv_path, rows, images)


# --------------------------------------------------------------------------------------------
# HAM10000
# --------------------------------------------------------------------------------------------


def write_ham10000(root: Path, n: int = 14, part_style: str = "part1", seed: int = 0) -> FakeDataset:
    """``HAM10000_metadata.csv`` with the newer 8th column ``dataset``; lesions of 1-3 images;
    images split between ``HAM10000_images_part1`` and ``_part2`` (``part_style="part_1"``:
    ``..._part_1`` / ``..._part_2``). Some ages blank, sex/localization sometimes ``unknown``."""
    root = Path(root)
    rng = np.random.default_rng([seed, 10000])
    rows, images = [], {}
    lesion, left = 0, 0
    pattern = [3, 1, 2]  # images per lesion, cycling
    for j in range(n):
        if left == 0:
            lesion += 1
            left = pattern[lesion % 3]
        left -= 1
        image_id = f"ISIC_{27419 + j:07d}"
        rows.append({
            "lesion_id": f"HAM_{lesion:07d}",
            "image_id": image_id,
            "dx": HAM_CLASSES[lesion % len(HAM_CLASSES)],
            "dx_type": ["histo", "follow_up", "consensus", "confocal"][lesion % 4],
            "age": "" if j % 7 == 6 else f"{float(40 + 5 * (j % 9)):.1f}",
            "sex": ["male", "female", "unknown"][j % 3],
            "localization": HAM_LOCALIZATIONS[j % len(HAM_LOCALIZATIONS)],
            "dataset": ["vidir_modern", "rosendahl", "vienna_dias", "vidir_molemax"][j % 4],
        })  # fmt: skip
        part = 1 if j < n // 2 else 2
        folder = f"HAM10000_images_part{part}" if part_style == "part1" else f"HAM10000_images_part_{part}"
        images[image_id] = _save(random_image(rng, (40, 30)), root / folder / f"{image_id}.jpg")
    csv_path = write_csv(root / "HAM10000_metadata.csv", HAM_COLUMNS, rows)
    return FakeDataset(root, csv_path, rows, images)


def lesion_image(rng: np.random.Generator, size=(40, 30)) -> tuple[Image.Image, Image.Image]:
    """A random-colour photo with an elliptic "lesion" and its mask (``L``, 0/255), both ``size`` (w, h)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = h * rng.uniform(0.35, 0.65), w * rng.uniform(0.35, 0.65)
    inside = ((yy - cy) / (0.3 * h)) ** 2 + ((xx - cx) / (0.3 * w)) ** 2 <= 1
    array = np.empty((h, w, 3), np.uint8)
    array[:] = rng.integers(120, 256, 3, dtype=np.uint8)
    array[inside] = rng.integers(0, 110, 3, dtype=np.uint8)
    return Image.fromarray(array, "RGB"), Image.fromarray((inside * 255).astype(np.uint8), "L")


# --------------------------------------------------------------------------------------------
# HAM10000 lesion masks
# --------------------------------------------------------------------------------------------

HAM_MASKS = "HAM10000_segmentations_lesion_tschandl"


def write_ham10000_masks(ds: FakeDataset) -> dict[str, Path]:
    """``HAM10000_segmentations_lesion_tschandl/<image_id>_segmentation.png`` (0/255, the image's
    size) for every image of a fake HAM10000."""
    masks = {}
    for image_id, image_path in ds.images.items():
        with Image.open(image_path) as image:
            w, h = image.size
        mask = np.zeros((h, w), np.uint8)
        mask[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 255
        masks[image_id] = _save(Image.fromarray(mask, "L"), ds.root / HAM_MASKS / f"{image_id}_segmentation.png")
    return masks


# --------------------------------------------------------------------------------------------
# ISIC 2017
# --------------------------------------------------------------------------------------------

ISIC2017_PARTS = ["Training", "Validation", "Test_v2"]
ISIC2017_LABEL_COLUMNS = ["image_id", "melanoma", "seborrheic_keratosis"]
ISIC2017_META_COLUMNS = ["image_id", "age_approximate", "sex"]


def isic2017_paths(root: Path, part: str) -> dict[str, Path]:
    root = Path(root)
    data = root / f"ISIC-2017_{part}_Data"
    return {
        "data": data,
        "masks": root / f"ISIC-2017_{part}_Part1_GroundTruth",
        "truth": root / f"ISIC-2017_{part}_Part3_GroundTruth.csv",
        "meta": data / f"ISIC-2017_{part}_Data_metadata.csv",
    }


def write_isic2017(root: Path, sizes=(9, 6, 6), large_first: bool = True, seed: int = 0) -> FakeDataset:
    """The three parts (``sizes`` images each): JPEGs with an elliptic lesion, a
    ``<id>_superpixels.png`` label map beside each, 0/255 ``<id>_segmentation.png`` masks, the
    ``Part3`` labels as ``0.0``/``1.0`` flags (classes cycle melanoma / seborrheic keratosis / nevus)
    and the metadata with some ``unknown`` ages and sexes. The first training image is 256 x 192 px
    (``large_first``: decoded at a reduced scale, so its full-size mask is resized), the others
    40 x 30 or 48 x 36. ``rows``: the labels, all parts in order; ``extra``: ``parts`` (part ->
    rows), ``meta_rows`` (part -> rows), ``masks`` (id -> file), ``split`` (id -> train/val/test)."""
    root = Path(root)
    rng = np.random.default_rng([seed, 2017])
    rows, images, masks, parts, meta_rows, split = [], {}, {}, {}, {}, {}
    number = 0
    for part, n, name in zip(ISIC2017_PARTS, sizes, ("train", "val", "test")):
        paths = isic2017_paths(root, part)
        parts[part], meta_rows[part] = [], []
        for j in range(n):
            image_id = f"ISIC_{number:07d}"
            number += 1
            kind = j % 3  # melanoma, seborrheic keratosis, nevus
            parts[part].append({"image_id": image_id, "melanoma": "1.0" if kind == 0 else "0.0",
                                "seborrheic_keratosis": "1.0" if kind == 1 else "0.0"})  # fmt: skip
            age = "unknown" if j % 4 == 3 else str(30 + 5 * j)
            meta_rows[part].append({"image_id": image_id, "age_approximate": age,
                                    "sex": ["male", "female", "unknown"][j % 3]})  # fmt: skip
            size = (256, 192) if (large_first and part == "Training" and j == 0) else [(40, 30), (48, 36)][j % 2]
            photo, mask = lesion_image(rng, size)
            images[image_id] = _save(photo, paths["data"] / f"{image_id}.jpg")
            superpixels = rng.integers(0, 4, (size[1], size[0], 3), dtype=np.uint8)  # a label map, not a photo
            _save(Image.fromarray(superpixels, "RGB"), paths["data"] / f"{image_id}_superpixels.png")
            masks[image_id] = _save(mask, paths["masks"] / f"{image_id}_segmentation.png")
            split[image_id] = name
        write_csv(paths["truth"], ISIC2017_LABEL_COLUMNS, parts[part])
        write_csv(paths["meta"], ISIC2017_META_COLUMNS, meta_rows[part])
        rows += parts[part]
    return FakeDataset(root, isic2017_paths(root, "Training")["truth"], rows, images,
                       {"parts": parts, "meta_rows": meta_rows, "masks": masks, "split": split})


# --------------------------------------------------------------------------------------------
# PH2
# --------------------------------------------------------------------------------------------

PH2_HEADER = (
    "||   Name || Histological Diagnosis || Clinical Diagnosis || Asymmetry | Pigment Network | Dots/Globules | "
    "Streaks | Regression Areas | Blue-Whitish Veil ||           Colors ||"
)
PH2_LEGEND = """
Legends:

Clinical Diagnosis:
    0 - Common Nevus
    1 - Atypical Nevus
    2 - Melanoma

Asymmetry:
    0 - Fully Symmetric
    1 - Symetric in 1 axis
    2 - Fully Asymmetric

Pigment Network, Dots/Globules, Streaks, Regression Areas, Blue-Whitish Veil:
    A  - Absent
    AT - Atypical
    P  - Present
    T  - Typical

Colors:
    1 - White
    2 - Red
    3 - Light-Brown
    4 - Dark-Brown
    5 - Blue-Gray
    6 - Black
"""


def ph2_row(j: int) -> dict[str, str]:
    """Case ``j``: diagnoses cycle 0 / 1 / 2; melanomas have a histological diagnosis, the
    others a blank one; every fourth case lists no colour."""
    diagnosis = j % 3
    return {
        "Name": f"IMD{3 + 7 * j:03d}",
        "Histological Diagnosis": "Melanoma" if diagnosis == 2 else "",
        "Clinical Diagnosis": str(diagnosis),
        "Asymmetry": str((j + diagnosis) % 3),
        "Pigment Network": ["T", "AT", "A"][j % 3],
        "Dots/Globules": ["A", "T", "AT"][j % 3],
        "Streaks": "P" if diagnosis == 2 else "A",
        "Regression Areas": ["A", "P"][j % 2],
        "Blue-Whitish Veil": "P" if diagnosis == 2 and j % 2 else "A",
        "Colors": "" if j % 4 == 3 else "  ".join(str(c) for c in sorted({1 + j % 6, 4, 3 + diagnosis})),
    }


def ph2_line(row: dict[str, str]) -> str:
    """One row as the file pads it: ``||`` between cells, single ``|`` between the six criteria."""
    cells = list(row.values())
    return (f"|| {cells[0]} || {cells[1]:>22} || {cells[2]:>18} || "
            + " | ".join(f"{c:>9}" for c in cells[3:9]) + f" || {cells[9]:>16} ||")


def write_ph2(root: Path, n: int = 12, seed: int = 0) -> FakeDataset:
    """``PH2Dataset/PH2_dataset.txt`` (header, ``n`` rows, then the legend) and per case
    ``PH2 Dataset images/IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp``, the 1-bit lesion mask
    ``IMDxxx_lesion/IMDxxx_lesion.bmp`` and one ``IMDxxx_roi/`` colour mask. ``csv_path`` is the
    table (the header is line 1, row i line i + 2); ``extra["masks"]``: id -> mask file."""
    base = Path(root) / "PH2Dataset"
    rng = np.random.default_rng([seed, 2])
    rows = [ph2_row(j) for j in range(n)]
    images, masks = {}, {}
    for j, row in enumerate(rows):
        name = row["Name"]
        case = base / "PH2 Dataset images" / name
        photo, mask = lesion_image(rng, [(40, 30), (48, 36)][j % 2])
        images[name] = _save(photo, case / f"{name}_Dermoscopic_Image" / f"{name}.bmp")
        masks[name] = _save(mask.convert("1"), case / f"{name}_lesion" / f"{name}_lesion.bmp")
        _save(mask.convert("1"), case / f"{name}_roi" / f"{name}_R1_Label4.bmp")
    table = base / "PH2_dataset.txt"
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text("\n".join([PH2_HEADER, *(ph2_line(r) for r in rows)]) + "\n" + PH2_LEGEND)
    return FakeDataset(base, table, rows, images, {"masks": masks})


# --------------------------------------------------------------------------------------------
# Derm7pt
# --------------------------------------------------------------------------------------------

DERM7PT_COLUMNS = [
    "case_num", "diagnosis", "seven_point_score", "pigment_network", "streaks", "pigmentation",
    "regression_structures", "dots_and_globules", "blue_whitish_veil", "vascular_structures",
    "level_of_diagnostic_difficulty", "elevation", "location", "sex", "management", "clinic", "derm", "case_id",
    "notes",
]  # fmt: skip
#: Raw diagnoses cycling over the five groups (BCC, NEV, MEL, MISC, SK), several spellings each.
DERM7PT_DIAGNOSES = [
    "basal cell carcinoma", "clark nevus", "melanoma (in situ)", "dermatofibroma", "seborrheic keratosis",
    "basal cell carcinoma", "reed or spitz nevus", "melanoma (less than 0.76 mm)", "vascular lesion",
    "seborrheic keratosis", "basal cell carcinoma", "blue nevus", "melanoma", "miscellaneous", "seborrheic keratosis",
]  # fmt: skip
DERM7PT_FOLDERS = ["NEL", "Fgl", "Gzl"]


def derm7pt_row(j: int) -> dict[str, str]:
    folder = DERM7PT_FOLDERS[j % 3]
    upper = j % 4 == 0  # the files mix .JPG and .jpg
    clinic = f"{folder}/{folder.upper() if upper else folder}{2 * j + 25:03d}.{'JPG' if upper else 'jpg'}"
    derm = f"{folder}/{folder}{2 * j + 26:03d}.jpg"
    return {
        "case_num": str(j + 1),
        "diagnosis": DERM7PT_DIAGNOSES[j % len(DERM7PT_DIAGNOSES)],
        "seven_point_score": str(j % 6),
        "pigment_network": ["absent", "typical", "atypical"][j % 3],
        "streaks": ["absent", "regular", "irregular"][j % 3],
        "pigmentation": ["absent", "diffuse regular", "localized irregular"][j % 3],
        "regression_structures": ["absent", "blue areas", "combinations", "white areas"][j % 4],
        "dots_and_globules": ["irregular", "regular", "absent"][j % 3],
        "blue_whitish_veil": ["absent", "present"][j % 2],
        "vascular_structures": ["absent", "arborizing", "dotted", "within regression"][j % 4],
        "level_of_diagnostic_difficulty": ["low", "medium", "high"][j % 3],
        "elevation": ["flat", "palpable", "nodular"][j % 3],
        "location": ["back", "lower limbs", "head neck", "genital areas", "acral"][j % 5],
        "sex": ["female", "male"][j % 2],
        "management": ["excision", "clinical follow up", "no further examination"][j % 3],
        "clinic": derm if j == 7 else clinic,  # "Clinical missing and replaced with derm"
        "derm": derm,
        "case_id": "1d171819" if j == 5 else "",
        "notes": "Clinical missing and replaced with derm" if j == 7 else "",
    }


def write_derm7pt(root: Path, n: int = 15, seed: int = 0) -> FakeDataset:
    """``release_v0/meta/meta.csv`` (19 columns), the clinical and dermoscopic JPEGs under
    ``release_v0/images/<folder>/`` and the official ``{train,valid,test}_indexes.csv`` (one column
    ``indexes`` of 0-based row numbers: rows 0-4 train, 5-9 valid, 10-14 test for ``n=15``, each
    holding all five classes). ``extra``: ``split`` (row -> train/val/test), ``clinic``/``derm``
    (row -> file)."""
    release = Path(root) / "release_v0"
    rng = np.random.default_rng([seed, 7])
    rows = [derm7pt_row(j) for j in range(n)]
    clinic, derm = {}, {}
    for j, row in enumerate(rows):
        for column, files in (("derm", derm), ("clinic", clinic)):
            path = release / "images" / row[column]
            if not path.exists():
                _save(lesion_image(rng, [(40, 30), (36, 48)][j % 2])[0], path)
            files[j] = path
    csv_path = write_csv(release / "meta" / "meta.csv", DERM7PT_COLUMNS, rows)
    third = n // 3
    split = {}
    for name, split_name, indexes in (("train", "train", range(third)), ("valid", "val", range(third, 2 * third)),
                                      ("test", "test", range(2 * third, n))):
        write_csv(release / "meta" / f"{name}_indexes.csv", ["indexes"], [{"indexes": str(i)} for i in indexes])
        split.update({i: split_name for i in indexes})
    return FakeDataset(release, csv_path, rows, {r["derm"]: derm[j] for j, r in enumerate(rows)},
                       {"split": split, "clinic": clinic, "derm": derm})


# --------------------------------------------------------------------------------------------
# DDI
# --------------------------------------------------------------------------------------------

DDI_COLUMNS = ["DDI_ID", "DDI_file", "skin_tone", "malignant", "disease"]
DDI_DISEASES = {
    True: ["melanoma-in-situ", "basal-cell-carcinoma", "squamous-cell-carcinoma-in-situ"],
    False: ["seborrheic-keratosis", "verruca-vulgaris", "melanocytic-nevi", "epidermal-cyst"],
}


def write_ddi(root: Path, n: int = 12, seed: int = 0) -> FakeDataset:
    """``ddi_metadata.csv`` (5 columns; ``malignant`` True/False, every third image malignant;
    ``skin_tone`` cycling 12 / 34 / 56) and ``000001.png`` ... flat beside it, as downloaded."""
    root = Path(root)
    rng = np.random.default_rng([seed, 656])
    rows, images = [], {}
    for j in range(n):
        malignant = j % 3 == 0
        name = f"{j + 1:06d}.png"
        rows.append({"DDI_ID": str(j + 1), "DDI_file": name, "skin_tone": ["12", "34", "56"][(j // 2) % 3],
                     "malignant": str(malignant), "disease": DDI_DISEASES[malignant][j % len(DDI_DISEASES[malignant])]})
        images[name] = _save(random_image(rng, (36, 36)), root / name)
    csv_path = write_csv(root / "ddi_metadata.csv", DDI_COLUMNS, rows)
    return FakeDataset(root, csv_path, rows, images)


# --------------------------------------------------------------------------------------------
# Fitzpatrick17k
# --------------------------------------------------------------------------------------------

FITZ_COLUMNS = [
    "md5hash", "fitzpatrick_scale", "fitzpatrick_centaur", "label", "nine_partition_label",
    "three_partition_label", "qc", "url", "url_alphanum",
]  # fmt: skip
#: (label, nine-partition label, three-partition label), cycling.
FITZ_LABELS = [
    ("psoriasis", "inflammatory", "non-neoplastic"),
    ("melanoma", "malignant melanoma", "malignant"),
    ("seborrheic keratosis", "benign epidermal", "benign"),
    ("basal cell carcinoma", "malignant epidermal", "malignant"),
    ("dermatofibroma", "benign dermal", "benign"),
    ("lichen planus", "inflammatory", "non-neoplastic"),
]  # fmt: skip


def write_fitzpatrick17k(root: Path, n: int = 17, n_missing: int = 2, seed: int = 0) -> FakeDataset:
    """``fitzpatrick17k.csv`` (9 columns; ``fitzpatrick_scale`` 1-6 or ``-1``; ``qc`` mostly blank)
    and ``images/<md5hash>.jpg`` for all rows but the last ``n_missing`` (never downloaded: one with
    a dead URL, one with none)."""
    import hashlib

    root = Path(root)
    rng = np.random.default_rng([seed, 17])
    rows, images = [], {}
    for j in range(n):
        label, nine, three = FITZ_LABELS[j % len(FITZ_LABELS)]
        url = f"https://www.dermaamin.com/site/images/clinical-pic/{label.replace(' ', '-')}/{j}.jpg"
        if j == n - 1 and n_missing:
            url = ""
        md5 = hashlib.md5(url.encode() or str(j).encode()).hexdigest()
        rows.append({
            "md5hash": md5, "fitzpatrick_scale": "-1" if j % 7 == 6 else str(1 + j % 6),
            "fitzpatrick_centaur": str(1 + (j + 1) % 6), "label": label, "nine_partition_label": nine,
            "three_partition_label": three, "qc": "1 Diagnostic" if j == 2 else "", "url": url,
            "url_alphanum": "".join(ch for ch in url if ch.isalnum()) + ".jpg",
        })  # fmt: skip
        if j < n - n_missing:
            images[md5] = _save(random_image(rng, (40, 32)), root / "images" / f"{md5}.jpg")
    csv_path = write_csv(root / "fitzpatrick17k.csv", FITZ_COLUMNS, rows)
    return FakeDataset(root, csv_path, rows, images)
# --------------------------------------------------------------------------------------------
# ISIC 2024 (SLICE-3D)
# --------------------------------------------------------------------------------------------

ISIC2024_COLUMNS = [
    "isic_id", "target", "patient_id", "age_approx", "sex", "anatom_site_general", "clin_size_long_diam_mm",
    "image_type", "tbp_tile_type", "tbp_lv_A", "tbp_lv_Aext", "tbp_lv_B", "tbp_lv_Bext", "tbp_lv_C", "tbp_lv_Cext",
    "tbp_lv_H", "tbp_lv_Hext", "tbp_lv_L", "tbp_lv_Lext", "tbp_lv_areaMM2", "tbp_lv_area_perim_ratio",
    "tbp_lv_color_std_mean", "tbp_lv_deltaA", "tbp_lv_deltaB", "tbp_lv_deltaL", "tbp_lv_deltaLB",
    "tbp_lv_deltaLBnorm", "tbp_lv_eccentricity", "tbp_lv_location", "tbp_lv_location_simple", "tbp_lv_minorAxisMM",
    "tbp_lv_nevi_confidence", "tbp_lv_norm_border", "tbp_lv_norm_color", "tbp_lv_perimeterMM",
    "tbp_lv_radial_color_std_max", "tbp_lv_stdL", "tbp_lv_stdLExt", "tbp_lv_symm_2axis", "tbp_lv_symm_2axis_angle",
    "tbp_lv_x", "tbp_lv_y", "tbp_lv_z", "attribution", "copyright_license", "lesion_id", "iddx_full", "iddx_1",
    "iddx_2", "iddx_3", "iddx_4", "iddx_5", "mel_mitotic_index", "mel_thick_mm", "tbp_lv_dnn_lesion_confidence",
]  # fmt: skip
ISIC2024_TRAIN_ONLY = ["target", "lesion_id", "iddx_full", "iddx_1", "iddx_2", "iddx_3", "iddx_4", "iddx_5",
                       "mel_mitotic_index", "mel_thick_mm", "tbp_lv_dnn_lesion_confidence"]  # fmt: skip
ISIC2024_TEST_COLUMNS = [c for c in ISIC2024_COLUMNS if c not in ISIC2024_TRAIN_ONLY]
#: Hospitals as the file names them: several contain commas (the CSV quotes them).
ISIC2024_ATTRIBUTIONS = [
    "Memorial Sloan Kettering Cancer Center",
    "Department of Dermatology, Hospital Clínic de Barcelona",
    "University Hospital of Basel",
    "Frazer Institute, The University of Queensland, Dermatology Research Centre",
    "ACEMID MIA",
    "ViDIR Group, Department of Dermatology, Medical University of Vienna",
    "Department of Dermatology, University of Athens, Andreas Syggros Hospital of Skin and Venereal Diseases, "
    "Alexandra Hospital",
]
ISIC2024_LOCATIONS = [
    ("Torso Back Top Third", "Torso Back", "posterior torso"),
    ("Torso Front Top Half", "Torso Front", "anterior torso"),
    ("Left Leg - Lower", "Left Leg", "lower extremity"), ("Right Arm - Upper", "Right Arm", "upper extremity"),
    ("Head & Neck", "Head & Neck", "head/neck"), ("Unknown", "Unknown", ""),
]  # fmt: skip
ISIC2024_MEASUREMENTS = [c for c in ISIC2024_COLUMNS[9:43] if c not in ("tbp_lv_location", "tbp_lv_location_simple")]


def isic2024_row(j: int, patient: int, centre: int, malignant: bool, rng: np.random.Generator) -> dict[str, str]:
    """Row ``j``: every measurement a number in the file's style (some in e-notation), sex / age
    blank on some rows, the location ``Unknown`` on some; the training-only columns filled the
    way the real file fills them (lesion id and diagnosis for the lesions of interest only)."""
    location, simple, site = ISIC2024_LOCATIONS[j % len(ISIC2024_LOCATIONS)]
    interesting = malignant or j % 5 == 0
    row = {
        "isic_id": f"ISIC_{15670 + 13 * j:07d}",
        "target": "1" if malignant else "0",
        "patient_id": f"IP_{1235828 + 17 * patient}",
        "age_approx": "" if j % 7 == 6 else f"{40 + 5 * (patient % 9)}.0",
        "sex": "" if j % 6 == 5 else ["male", "female"][patient % 2],
        "anatom_site_general": site,
        "clin_size_long_diam_mm": f"{2.5 + 0.37 * (j % 11):.2f}",
        "image_type": "TBP tile: close-up",
        "tbp_tile_type": ["3D: white", "3D: XP"][j % 2],
        "tbp_lv_location": location,
        "tbp_lv_location_simple": simple,
        "attribution": ISIC2024_ATTRIBUTIONS[centre % len(ISIC2024_ATTRIBUTIONS)],
        "copyright_license": ["CC-BY", "CC-BY-NC", "CC-0"][centre % 3],
        "lesion_id": f"IL_{7000000 + j}" if interesting else "",
        "iddx_full": "Malignant::Malignant melanocytic proliferations (Melanoma)::Melanoma Invasive" if malignant
        else "Benign",
        "iddx_1": "Malignant" if malignant else "Benign",
        "iddx_2": "Malignant melanocytic proliferations (Melanoma)" if malignant else "",
        "iddx_3": "Melanoma Invasive" if malignant else "",
        "iddx_4": "", "iddx_5": "",
        "mel_mitotic_index": "<1/mm^2" if malignant else "",
        "mel_thick_mm": "0.4" if malignant else "",
        "tbp_lv_dnn_lesion_confidence": f"{rng.uniform(0, 100):.6g}",
    }  # fmt: skip
    for k, column in enumerate(ISIC2024_MEASUREMENTS):
        value = float(rng.normal(10 + k, 3))
        row[column] = f"{value:.6e}" if k % 9 == 4 else f"{value:.7g}"
    return row


def write_isic2024(root: Path, n: int = 36, images: str = "hdf5", n_test: int = 3, seed: int = 0) -> FakeDataset:
    """``train-metadata.csv`` (the 55 columns in order) with images in ``train-image.hdf5`` (one
    scalar-bytes dataset per ``isic_id``, the JPEG file's bytes), in ``train-image/image/`` (the
    JPEG distribution) or both; plus ``test-metadata.csv`` (44 columns) and ``test-image.hdf5`` /
    ``test-image/image/`` with ``n_test`` images. Patients have 1-4 lesions (lesion counts
    cycle 3, 1, 4, 2); patient k is treated at hospital k mod 5; the first lesion of every second
    patient is malignant. ``extra``: ``hdf5`` (or None), ``jpegs`` (id -> bytes), ``test_rows``."""
    from datamodules.hdf5_images import write_images

    if images not in ("hdf5", "jpeg", "both"):
        raise ValueError(images)
    root = Path(root)
    rng = np.random.default_rng([seed, 2024])
    rows, patient, left = [], -1, 0
    for j in range(n):
        first = left == 0
        if first:
            patient += 1
            left = [3, 1, 4, 2][patient % 4]
        left -= 1
        rows.append(isic2024_row(j, patient, patient % 5, first and patient % 2 == 1, rng))
    test_rows = [{c: r[c] for c in ISIC2024_TEST_COLUMNS}
                 for r in (isic2024_row(n + j, 1000 + j // 2, j, False, rng) for j in range(n_test))]
    written, jpegs = {}, {}
    for split, split_rows in (("train", rows), ("test", test_rows)):
        encoded = {}
        for row in split_rows:
            size = (36 + 4 * (len(encoded) % 3), 40)  # crops of a few sizes
            buffer = io.BytesIO()
            random_image(rng, size).save(buffer, format="JPEG", quality=90)
            encoded[row["isic_id"]] = buffer.getvalue()
        jpegs.update(encoded)
        if images in ("hdf5", "both"):
            write_images(root / f"{split}-image.hdf5", encoded.items())
        if images in ("jpeg", "both"):
            for image_id, data in encoded.items():
                path = root / f"{split}-image" / "image" / f"{image_id}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                written[image_id] = path
    csv_path = write_csv(root / "train-metadata.csv", ISIC2024_COLUMNS, rows)
    write_csv(root / "test-metadata.csv", ISIC2024_TEST_COLUMNS, test_rows)
    hdf5 = root / "train-image.hdf5" if images != "jpeg" else None
    return FakeDataset(root, csv_path, rows, written, {"hdf5": hdf5, "jpegs": jpegs, "test_rows": test_rows})
