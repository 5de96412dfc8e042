"""The built-in synthetic dataset: deterministic, PAD-UFES-20's exact format, and the stated rules."""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dataset_writers as w
from conftest import SMALL_SYNTHETIC
from datamodules import synthetic
from datamodules.dataset import load_rgb
from datamodules.sources import pad_ufes20

TINY = dict(n_patients=12, min_size=40, max_size=48)
PAD_SHARE = {"ACK": 730 / 2298, "BCC": 845 / 2298, "MEL": 52 / 2298, "NEV": 244 / 2298, "SCC": 192 / 2298, "SEK": 235 / 2298}


@pytest.fixture(scope="module")
def many_rows():
    """Metadata only (no pictures: fast) for PAD's number of patients."""
    return synthetic.sample_metadata(synthetic.SyntheticConfig(n_patients=1373, seed=0))


def pixels(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def test_generation_is_deterministic(tmp_path):
    config = synthetic.SyntheticConfig(**TINY, seed=3)
    synthetic.generate(config, tmp_path / "a")
    synthetic.generate(config, tmp_path / "b")
    synthetic.generate(synthetic.SyntheticConfig(**TINY, seed=4), tmp_path / "c")
    a, b, c = ((tmp_path / x / "metadata.csv").read_bytes() for x in "abc")
    assert a == b
    assert a != c
    for folder in ("images", "masks"):
        pa, pb = pixels(tmp_path / "a" / folder), pixels(tmp_path / "b" / folder)
        assert list(pa) == list(pb) and len(pa) >= 12
        for name in pa:
            np.testing.assert_array_equal(pa[name], pb[name], err_msg=name)
    # same file names need not exist under another seed; compare the first image's pixels
    first_a = next(iter(pixels(tmp_path / "a" / "images").values()))
    first_c = next(iter(pixels(tmp_path / "c" / "images").values()))
    assert first_a.shape != first_c.shape or not np.array_equal(first_a, first_c)


def test_dataset_dir_depends_on_config(tmp_path):
    one = synthetic.dataset_dir(synthetic.SyntheticConfig(seed=1), tmp_path)
    assert one == synthetic.dataset_dir(synthetic.SyntheticConfig(seed=1), tmp_path)
    assert one != synthetic.dataset_dir(synthetic.SyntheticConfig(seed=2), tmp_path)
    assert one.parent == tmp_path and one.name.startswith(f"synthetic-v{synthetic.GENERATOR_VERSION}-")


def test_exact_pad_ufes20_columns(synthetic_dir):
    with open(synthetic_dir / "metadata.csv", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = list(reader)
    assert header == w.PAD_COLUMNS == pad_ufes20.COLUMNS
    assert len(header) == 26
    assert all(len(row) == 26 for row in rows)
    by_column = {c: [row[i] for row in rows] for i, c in enumerate(header)}
    # PAD's format quirks
    assert set(by_column["fitspatrick"]) <= {"", "1.0", "2.0", "3.0", "4.0", "5.0", "6.0"}
    assert "" in by_column["fitspatrick"] and "" in by_column["smoke"]  # blank history fields
    for q in ("itch", "grew", "hurt", "changed", "bleed", "elevation"):
        assert set(by_column[q]) <= {"True", "False", "UNK"}
    assert "UNK" in {v for q in ("itch", "grew", "bleed") for v in by_column[q]}
    assert set(by_column["gender"]) <= {"", "MALE", "FEMALE"}
    assert set(by_column["region"]) <= set(w.PAD_REGIONS)
    assert set(by_column["diagnostic"]) == set(w.PAD_CLASSES)
    for pid, lid, img in zip(by_column["patient_id"], by_column["lesion_id"], by_column["img_id"]):
        assert re.fullmatch(r"PAT_\d+_\d+_\d+\.png", img) and img.startswith(f"{pid}_{lid}_")


def test_every_image_has_a_same_sized_binary_mask(synthetic_dir):
    images = sorted((synthetic_dir / "images").glob("*.png"))
    masks = sorted((synthetic_dir / "masks").glob("*.png"))
    assert [p.name for p in images] == [p.name for p in masks] and len(images) > 200
    modes = Counter()
    for image_path, mask_path in zip(images, masks):
        with Image.open(image_path) as image:
            modes[image.mode] += 1
            size = image.size
            assert size[0] == size[1] and SMALL_SYNTHETIC["min_size"] <= size[0] <= SMALL_SYNTHETIC["max_size"]
        mask = np.asarray(Image.open(mask_path))
        assert mask.shape == (size[1], size[0])
        values = set(np.unique(mask).tolist())
        assert values == {0, 255}, (mask_path.name, values)  # a lesion, and skin around it
        assert 0.02 < (mask > 0).mean() < 0.8
    assert set(modes) == {"RGB", "RGBA"} and modes["RGBA"] < 0.1 * len(images)  # a few RGBA PNGs


def test_rgba_synthetic_images_load_as_rgb(synthetic_dir):
    for path in sorted((synthetic_dir / "images").glob("*.png")):
        if Image.open(path).mode == "RGBA":
            out = load_rgb(path)
            assert out.dtype == np.uint8 and out.shape[2] == 3
            np.testing.assert_array_equal(out, np.asarray(Image.open(path))[..., :3])  # opaque alpha
            break
    else:
        pytest.fail("no RGBA image in the synthetic data")


def test_class_frequencies_are_pad_like(many_rows):
    counts = Counter(row["diagnostic"] for row in many_rows)
    share = {c: counts[c] / len(many_rows) for c in PAD_SHARE}
    ranked = sorted(share, key=share.get, reverse=True)
    assert set(ranked[:2]) == {"BCC", "ACK"}
    assert ranked[-1] == "MEL"
    for c, expected in PAD_SHARE.items():
        assert abs(share[c] - expected) < 0.05, (c, share[c], expected)
    # patients -> lesions -> images, as in PAD (1,373 patients, 1,641 lesions, 2,298 images)
    patients = {row["patient_id"] for row in many_rows}
    lesions = {row["lesion_id"] for row in many_rows}
    assert len(patients) == 1373
    assert 1.1 < len(lesions) / len(patients) < 1.35
    assert 1.2 < len(many_rows) / len(lesions) < 1.45


def test_patient_fields_are_constant_within_a_patient(many_rows):
    by_patient: dict[str, set] = {}
    for row in many_rows:
        key = tuple(row[c] for c in ("age", "gender", "smoke", "fitspatrick", "cancer_history"))
        by_patient.setdefault(row["patient_id"], set()).add(key)
    assert all(len(v) == 1 for v in by_patient.values())


def test_ack_and_scc_pictures_are_drawn_identically(many_rows):
    config = synthetic.SyntheticConfig(min_size=48, max_size=64)
    ack = next(row for row in many_rows if row["diagnostic"] == "ACK" and row["fitspatrick"])
    scc = {**ack, "diagnostic": "SCC"}
    image_ack, mask_ack = synthetic.render_lesion(ack, np.random.default_rng(123), config)
    image_scc, mask_scc = synthetic.render_lesion(scc, np.random.default_rng(123), config)
    assert image_ack.dtype == np.uint8 and image_ack.ndim == 3 and image_ack.shape[2] == 3
    np.testing.assert_array_equal(image_ack, image_scc)
    np.testing.assert_array_equal(mask_ack, mask_scc)
    # ...whereas another class with the same random state is drawn differently
    image_bcc, _ = synthetic.render_lesion({**ack, "diagnostic": "BCC"}, np.random.default_rng(123), config)
    assert image_bcc.shape != image_ack.shape or not np.array_equal(image_bcc, image_ack)


def test_scc_bleeds_and_is_raised_more_often_than_ack(many_rows):
    def p_true(cls: str, question: str) -> float:
        answers = [row[question] for row in many_rows if row["diagnostic"] == cls and row[question] != "UNK"]
        return sum(a == "True" for a in answers) / len(answers)

    assert p_true("SCC", "bleed") > p_true("ACK", "bleed") + 0.4
    assert p_true("SCC", "elevation") > p_true("ACK", "elevation") + 0.3
    assert p_true("SCC", "grew") > p_true("ACK", "grew") + 0.3
    scc_age = np.mean([float(r["age"]) for r in many_rows if r["diagnostic"] == "SCC"])
    nev_age = np.mean([float(r["age"]) for r in many_rows if r["diagnostic"] == "NEV"])
    assert scc_age > nev_age + 20


def test_ensure_generated_is_idempotent(tmp_path):
    config = synthetic.SyntheticConfig(**TINY, seed=9)
    folder = synthetic.ensure_generated(config, tmp_path)
    assert folder == synthetic.dataset_dir(config, tmp_path)
    csv_path = folder / "metadata.csv"
    first_image = sorted((folder / "images").iterdir())[0]
    stamps = (csv_path.stat().st_mtime_ns, first_image.stat().st_mtime_ns)
    assert synthetic.ensure_generated(config, tmp_path) == folder
    assert (csv_path.stat().st_mtime_ns, first_image.stat().st_mtime_ns) == stamps
    # no staging folders left behind: just the dataset and its lock file
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([folder.name, f".{folder.name}.lock"])
    info = (folder / "generator.json").read_text()
    assert '"seed": 9' in info and f'"version": {synthetic.GENERATOR_VERSION}' in info


def test_ensure_generated_reuses_the_session_cache(synthetic_cache, synthetic_dir):
    stamp = (synthetic_dir / "metadata.csv").stat().st_mtime_ns
    assert synthetic.ensure_generated(synthetic.SyntheticConfig(**SMALL_SYNTHETIC), synthetic_cache) == synthetic_dir
    assert (synthetic_dir / "metadata.csv").stat().st_mtime_ns == stamp


def test_small_images_can_be_generated(tmp_path):
    synthetic.generate(synthetic.SyntheticConfig(n_patients=10, min_size=32, max_size=32), tmp_path)
    assert len(list((tmp_path / "images").glob("*.png"))) >= 10
