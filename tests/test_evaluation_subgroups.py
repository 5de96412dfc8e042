"""Subgroup rows: bands, missing values, groups too small to score, gaps, files."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from lightning_modules.evaluation.bootstrap import classification_cis
from lightning_modules.evaluation.subgroups import (
    MISSING,
    band_names,
    subgroup_report,
    subgroup_values,
    write_subgroups,
)

NAMES = ["mel", "nev", "bcc"]


def sample(seed=0, n=600):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), labels] += 1.2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    patients = [f"p{i}" for i in rng.integers(0, 250, n)]
    return labels, probs, patients, rng


def test_band_names_and_values():
    assert band_names((30, 45, 60, 75)) == ["<30", "30-44", "45-59", "60-74", ">=75"]
    assert band_names((0.5,)) == ["<0.5", ">=0.5"]
    ages = ["29", "30", 44, "45.0", "", "UNK", None, 90, float("nan")]
    values, order = subgroup_values("age", ages, (30, 45, 60, 75))
    assert list(values) == ["<30", "30-44", "30-44", "45-59", MISSING, MISSING, MISSING, ">=75", MISSING]
    assert order == ["<30", "30-44", "45-59", ">=75", MISSING]
    values, order = subgroup_values("fitspatrick", ["2.0", "10", "3.0", "unknown"])
    assert order == ["2.0", "3.0", "10", MISSING]  # numbers in numeric order, then text, missing last
    with pytest.raises(ValueError, match="'age'.*'forty'"):
        subgroup_values("age", ["forty"], (30,))


def test_scored_groups_match_the_subset_and_small_groups_say_why():
    labels, probs, patients, rng = sample()
    site = np.where(np.arange(600) < 300, "back", "face").astype(object)
    site[:12] = "scalp"  # 12 images: below the minimum
    site[300:340] = "palm"
    labels[300:340] = np.where(labels[300:340] == 2, 0, labels[300:340])  # no bcc on the palm
    result = subgroup_report(labels, probs, NAMES, patients, {"site": list(site)}, ["site"], min_images=20, n_boot=300)
    rows = {r["value"]: r for r in result["rows"]}
    assert list(rows) == ["back", "face", "palm", "scalp"]
    scalp = rows["scalp"]
    assert scalp["images"] == 12 and scalp["auroc"] is None and scalp["bacc"] is None
    assert "12 images < minimum 20" in scalp["note"]
    assert scalp["n_mel"] + scalp["n_nev"] + scalp["n_bcc"] == 12
    palm = rows["palm"]
    assert palm["n_bcc"] == 0 and palm["auroc"] is None and "no image of bcc" in palm["note"]
    back = rows["back"]
    mask = site == "back"
    expected = classification_cis(labels[mask], probs[mask], NAMES, n_boot=1)
    assert back["auroc"] == pytest.approx(expected["auroc"]) and back["bacc"] == pytest.approx(expected["bacc"])
    assert back["auroc_ci_low"] < back["auroc"] < back["auroc_ci_high"]
    assert back["patients"] == len({p for p, m in zip(patients, mask) if m})
    assert back["note"] == ""


def test_operating_point_columns_and_gaps():
    labels, probs, patients, rng = sample(1)
    sex = rng.choice(["male", "female"], 600)
    probs[sex == "female"] = probs[sex == "female"] ** 0.3  # flatter: worse ranking for women
    probs /= probs.sum(axis=1, keepdims=True)
    thresholds = {"mel": ([0], 0.3)}
    result = subgroup_report(labels, probs, NAMES, patients, {"sex": sex}, ["sex"], thresholds, n_boot=300)
    rows = {r["value"]: r for r in result["rows"]}
    female = rows["female"]
    is_mel, called = labels[sex == "female"] == 0, probs[sex == "female", 0] >= 0.3
    assert female["sensitivity_mel"] == pytest.approx(called[is_mel].mean())
    assert female["specificity_mel"] == pytest.approx((~called[~is_mel]).mean())
    assert female["sensitivity_mel_ci_low"] <= female["sensitivity_mel"] <= female["sensitivity_mel_ci_high"]
    gaps = {g["metric"]: g for g in result["gaps"]}
    auroc = gaps["auroc"]
    assert auroc["high_group"] == "male" and auroc["low_group"] == "female"
    assert auroc["gap"] == pytest.approx(rows["male"]["auroc"] - rows["female"]["auroc"])
    assert auroc["gap_ci_low"] < auroc["gap"] < auroc["gap_ci_high"]
    assert set(gaps) == {"auroc", "bacc", "sensitivity_mel", "specificity_mel"}


def test_one_scored_group_has_no_gap_and_unknown_field_is_an_error():
    labels, probs, patients, _ = sample(2, n=100)
    result = subgroup_report(labels, probs, NAMES, patients, {"c": ["x"] * 100}, ["c"], n_boot=50)
    assert all(g["gap"] is None and g["groups_scored"] == 1 for g in result["gaps"])
    with pytest.raises(ValueError, match="'site' is not in the metadata"):
        subgroup_report(labels, probs, NAMES, patients, {"c": ["x"] * 100}, ["site"], n_boot=5)
    with pytest.raises(ValueError, match="3 values for 100 images"):
        subgroup_report(labels, probs, NAMES, patients, {"c": ["x"] * 3}, ["c"], n_boot=5)


def test_write_subgroups(tmp_path):
    labels, probs, patients, rng = sample(3, n=200)
    meta = {"age": rng.integers(18, 90, 200).astype(str).tolist(), "sex": rng.choice(["m", "f", ""], 200).tolist()}
    result = subgroup_report(labels, probs, NAMES, patients, meta, ["age", "sex"], min_images=40, n_boot=50)
    csv_path, md_path = write_subgroups(result, tmp_path)
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["value"] for r in rows] == [r["value"] for r in result["rows"]]
    small = next(r for r in rows if r["note"].startswith("not scored"))
    assert small["auroc"] == "" and int(small["images"]) < 40
    text = md_path.read_text()
    assert "| age | <30 |" in text and "Largest gap" in text and "<missing>" in text
