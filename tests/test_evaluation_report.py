"""The whole report: fixed keys, JSON-safe, the same scores as metrics.json today; comparing two
predictions files; Holm; reading predictions files."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from lightning_modules.metrics.classification import classification_scores
from lightning_modules.utils.predictions_csv import write_predictions
from lightning_modules.evaluation import (
    REPORT_KEYS,
    PredictionsError,
    align,
    compare,
    evaluate,
    evaluate_predictions,
    holm,
    json_safe,
    read_predictions,
)
from lightning_modules.evaluation.challenge import pauc_above_tpr
from lightning_modules.evaluation.delong import delong_test

NAMES = ["ACK", "BCC", "MEL", "NEV"]


def sample(seed, n=300, k=4, shift=1.2):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), labels] += shift
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probs, rng


@pytest.mark.filterwarnings("ignore:No positive samples in targets")  # torchmetrics, in today's scores
def test_report_keys_json_safety_and_todays_scores():
    labels, probs, rng = sample(0)
    val_labels, val_probs, _ = sample(1, n=200)
    labels[labels == 0] = 1  # ACK absent from the test images: its AUROC does not exist
    patients = [f"patient:{i}" for i in rng.integers(0, 120, len(labels))]
    meta = {"fitspatrick": rng.choice(["1.0", "2.0", "3.0", ""], len(labels)).tolist()}
    with pytest.warns(UserWarning, match="ACK"):
        today = classification_scores(probs, labels, NAMES)
    with pytest.warns(UserWarning, match="not in y_true"):
        sklearn_bacc = balanced_accuracy_score(labels, probs.argmax(axis=1))
    report = evaluate(labels, probs, NAMES, patients, meta, val=(val_labels, val_probs), positive=["BCC", "MEL"],
                      subgroup_fields=["fitspatrick"], n_boot=200)
    assert tuple(report) == REPORT_KEYS
    json.dumps(report, allow_nan=False)  # raises on NaN / inf
    assert report["auroc_per_class"]["ACK"] is None and report["auroc_per_class_ci"]["ACK"] == [None, None]
    assert report["auroc_per_class_delong"]["ACK"]["auc"] is None
    for key in ("auroc", "bacc", "acc"):
        low, high = report[f"{key}_ci"]
        assert low < report[key] < high
    assert report["auroc"] == pytest.approx(today["auroc"], abs=1e-6)  # metrics.json today: torchmetrics, float32
    assert report["acc"] == pytest.approx(today["acc"], abs=1e-6)
    # Balanced accuracy is the mean recall over the classes present (scikit-learn, ISIC 2019);
    # torchmetrics' macro recall counts ACK, absent but predicted, as recall 0.
    assert report["bacc"] == pytest.approx(sklearn_bacc, abs=1e-12)
    assert today["bacc"] == pytest.approx(report["bacc"] * 3 / 4, abs=1e-6)
    assert report["n_groups"] == len(set(patients))
    assert "groups (patients or lesions)" in report["ci_method"]["bootstrap"]
    assert report["pauc_tpr80"] is None  # multiclass: per class only
    assert report["pauc_tpr80_per_class"]["MEL"] == pytest.approx(pauc_above_tpr(labels == 2, probs[:, 2]))
    assert report["calibration"]["temperature_scaling"]["fitted_on"] == "val"
    sets = {row["positive"] for row in report["operating_points"]}
    assert sets == set(NAMES) | {"BCC+MEL"}
    subgroups = report["subgroups"]
    assert [r["value"] for r in subgroups["rows"]] == ["1.0", "2.0", "3.0", "<missing>"]
    assert "sensitivity_BCC+MEL" in subgroups["rows"][0] and "0.9" in subgroups["operating_point"]


def test_binary_report():
    labels, probs, _ = sample(2, k=2, shift=1.0)
    report = evaluate(labels, probs, ["benign", "malignant"], n_boot=100)
    today = classification_scores(probs, labels, ["benign", "malignant"])
    for key in ("auroc", "bacc", "acc"):  # every class present: the same numbers as metrics.json today
        assert report[key] == pytest.approx(today[key], abs=1e-6)
    assert report["pauc_tpr80"] == pytest.approx(pauc_above_tpr(labels == 1, probs[:, 1]))
    assert report["challenge"]["isic2024"] == {"positive": "malignant", "pauc_tpr80": report["pauc_tpr80"]}
    assert report["subgroups"] is None and report["calibration"]["temperature_scaling"] is None
    assert "images (no group ids given)" in report["ci_method"]["bootstrap"]


def test_json_safe():
    value = {"a": np.float32(0.5), "b": [np.nan, np.inf, 1], "c": np.array([1.0, np.nan]), "d": np.int64(3),
             "e": (np.bool_(True), None, "x")}
    assert json_safe(value) == {"a": 0.5, "b": [None, None, 1], "c": [1.0, None], "d": 3, "e": [True, None, "x"]}


def test_holm_by_hand():
    # Sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04 -> running max 0.06.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.2, None, 0.01, float("nan")]) == [pytest.approx(0.2), None, pytest.approx(0.02), None]
    assert holm([0.6, 0.7]) == [1.0, 1.0]
    assert holm([]) == []
    with pytest.raises(ValueError, match="1.5"):
        holm([1.5])


def write_file(path, ids, labels, probs, names, groups=None, meta=None):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_id", "label", "prediction"] + (["group"] if groups else [])
                        + list(meta or {}) + [f"prob_{n}" for n in names])
        for i, image_id in enumerate(ids):
            writer.writerow([image_id, names[labels[i]] if labels[i] >= 0 else "", names[int(np.argmax(probs[i]))]]
                            + ([groups[i]] if groups else []) + [v[i] for v in (meta or {}).values()]
                            + [f"{p:.6f}" for p in probs[i]])


def test_compare_two_files_on_their_common_images(tmp_path):
    labels, probs, rng = sample(3, n=260)
    worse = np.abs(probs + rng.normal(0, 0.25, probs.shape))
    worse /= worse.sum(axis=1, keepdims=True)
    ids = [f"img{i}" for i in range(260)]
    groups = [f"patient:{i // 2}" for i in range(260)]
    a_path = tmp_path / "a.csv"
    write_file(a_path, ids[:250], labels[:250], probs[:250], NAMES, groups[:250], {"sex": ["f"] * 250})
    # b: another class order, images 10..259, written by today's writer (no group column).
    order = [2, 0, 3, 1]
    b_path = write_predictions(tmp_path / "b.csv", ids[10:], worse[10:][:, order], [NAMES[c] for c in order],
                               [order.index(c) for c in labels[10:]])
    a, b = read_predictions(a_path), read_predictions(b_path)
    assert a.metadata == {"sex": ["f"] * 250} and b.groups is None and b.class_names == ["MEL", "ACK", "NEV", "BCC"]
    a2, b2, counts = align(a, b)
    assert counts == {"common": 240, "only_in_a": 10, "only_in_b": 10}
    assert b2.class_names == NAMES and np.allclose(b2.probs, np.round(worse[10:250], 6))
    assert b2.groups == groups[10:250] and np.array_equal(b2.labels, labels[10:250])
    result = compare(a, b, n_boot=300)
    json.dumps(result, allow_nan=False)
    assert result["images"] == counts and result["n_groups"] == 120  # images 10..249: patients 5..124
    mel = delong_test(labels[10:250] == 2, a2.probs[:, 2], b2.probs[:, 2])
    assert result["delong_per_class"]["MEL"] == mel
    assert result["delong_binary"] is None
    assert result["auroc"]["difference"] > 0 and result["auroc"]["p"] < 0.05


def test_evaluate_a_predictions_file_with_unlabelled_rows(tmp_path):
    labels, probs, rng = sample(4, n=120)
    labels[:5] = -1
    path = tmp_path / "p.csv"
    write_file(path, [f"i{i}" for i in range(120)], labels, probs, NAMES, [f"g{i % 50}" for i in range(120)],
               {"age": rng.integers(20, 80, 120).astype(str).tolist()})
    report = evaluate_predictions(read_predictions(path), subgroup_fields=["age"], n_boot=50)
    assert report["n_images"] == 115 and report["n_groups"] == 50
    assert [r["value"] for r in report["subgroups"]["rows"]] == ["<30", "30-44", "45-59", "60-74", ">=75"]


@pytest.mark.parametrize("body, message", [
    ("label,prob_a,prob_b\na,0.5,0.5\n", "no 'image_id' column"),
    ("image_id,prob_a\nx,1.0\n", "at least two 'prob_<class>' columns"),
    ("image_id,label,prob_a,prob_b\nx,a,0.5,0.5\nx,b,0.5,0.5\n", "line 3: image_id 'x' already on line 2"),
    ("image_id,label,prob_a,prob_b\nx,a,0.5,high\n", "line 2, column 'prob_b': expected a probability"),
    ("image_id,label,prob_a,prob_b\nx,a,1.5,-0.5\n", "line 2, column 'prob_a': probability '1.5' is outside"),
    ("image_id,label,prob_a,prob_b\nx,c,0.5,0.5\n", "line 2, column 'label': 'c' is not one of the classes"),
    ("image_id,group,prob_a,prob_b\nx,,0.5,0.5\n", "line 2, column 'group': blank group id"),
    ("image_id,prob_a,prob_b\nx,0.5\n", "line 2: 2 fields, the header has 3"),
    ("image_id,prob_a,prob_b\n", "no data rows"),
])
def test_bad_predictions_files_name_the_line_and_column(tmp_path, body, message):
    path = tmp_path / "bad.csv"
    path.write_text(body)
    with pytest.raises(PredictionsError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        read_predictions(path)


def test_align_rejects_disagreeing_files(tmp_path):
    (tmp_path / "a.csv").write_text("image_id,label,group,prob_a,prob_b\nx,a,p1,0.6,0.4\ny,b,p2,0.3,0.7\n")
    (tmp_path / "b.csv").write_text("image_id,label,prob_a,prob_b\nx,b,0.6,0.4\n")
    (tmp_path / "c.csv").write_text("image_id,label,group,prob_a,prob_b\ny,b,p9,0.6,0.4\n")
    (tmp_path / "d.csv").write_text("image_id,label,prob_a,prob_c\nx,a,0.6,0.4\n")
    (tmp_path / "e.csv").write_text("image_id,label,prob_a,prob_b\nz,a,0.6,0.4\n")
    a = read_predictions(tmp_path / "a.csv")
    for other, message in (("b", "'x' is labelled 'a' in one and 'b'"), ("c", "'y' is in group 'p2' in one and 'p9'"),
                           ("d", "different classes"), ("e", "no image id in common")):
        with pytest.raises(PredictionsError, match=message):
            align(a, read_predictions(tmp_path / f"{other}.csv"))
    with pytest.warns(UserWarning, match="do not sum to 1"):
        (tmp_path / "f.csv").write_text("image_id,prob_a,prob_b\nx,0.6,0.6\n")
        read_predictions(tmp_path / "f.csv")


@pytest.mark.parametrize("args, message", [
    (([0, 1], [[0.5, 0.5]]), r"labels must be \(images,\) = \(1,\)"),
    (([0], [0.5, 0.5]), "probs must be \\(images, classes\\)"),
    ((["a"], [[0.5, 0.5]]), "class indices"),
    (([2], [[0.5, 0.5]]), r"labels must lie in \[0, 2\); row 0 has 2"),
    (([0], [[np.nan, 0.5]]), "probs must be finite; row 0"),
])
def test_bad_arrays_are_named(args, message):
    with pytest.raises(ValueError, match=message):
        evaluate(*args, ["a", "b"], n_boot=2)


def test_blank_group_ids_are_an_error():
    with pytest.raises(ValueError, match="image 1 has no group id"):
        evaluate([0, 1], [[0.6, 0.4], [0.3, 0.7]], ["a", "b"], groups=["p1", None], n_boot=2)
