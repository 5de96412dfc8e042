"""The evaluation library wired into the tools: CV's pooled out-of-fold report, compare's per-model
intervals and Holm-adjusted differences, ``make evaluate`` (one file and a paired comparison), the
options of a run's report, and the predictions file written with groups and metadata. Fast: fake
run folders, no training (the training-run checks are in tests/test_experiments.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from experiments import compare, cv, evaluate
from lightning_modules.evaluation import (
    EvaluationOptions,
    compare_model_scores,
    compare_models,
    evaluate_predictions,
    holm,
    read_predictions,
)
from lightning_modules.evaluation import compare as compare_files
from lightning_modules.evaluation.bootstrap import ClassificationMetrics, GroupBootstrap, percentile_interval
from lightning_modules.utils.predictions_csv import write_predictions
from tests.test_experiments import REPO

NAMES = ["ACK", "BCC", "MEL"]
N_BOOT = 200


def fake_split(seed: int, n: int = 120, patients: int = 60, offset: int = 0):
    """Labels, patients and metadata of ``n`` images (image ids from ``offset``)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    labels[:3] = [0, 1, 2]
    ids = [f"img{offset + i}" for i in range(n)]
    groups = [f"patient:{offset + int(p)}" for p in rng.integers(0, patients, n)]
    meta = {"fitspatrick": [str(v) for v in rng.choice([1, 2, 3], n)],
            "age": [float(v) if v > 25 else None for v in rng.integers(20, 90, n)]}
    return ids, labels, groups, meta


def fake_probs(labels, skill: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(labels), 3))
    logits[np.arange(len(labels)), labels] += skill
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def write_run(folder: Path, split, skill: float, seed: int, val_split=None) -> Path:
    ids, labels, groups, meta = split
    write_predictions(folder / "predictions.csv", ids, fake_probs(labels, skill, seed), NAMES, labels, groups, meta)
    if val_split is not None:
        vids, vlabels, vgroups, vmeta = val_split
        write_predictions(folder / "val_predictions.csv", vids, fake_probs(vlabels, skill, seed + 100), NAMES, vlabels,
                          vgroups, vmeta)
    return folder / "predictions.csv"


def test_predictions_file_round_trip(tmp_path):
    """What the runs write (group, metadata; a missing value blank, whole numbers without .0) is
    what read_predictions reads; the report of the file equals the report of the arrays."""
    ids, labels, groups, meta = fake_split(0)
    probs = fake_probs(labels, 1.0, 0)
    path = write_predictions(tmp_path / "p.csv", ids, probs, NAMES, labels, groups, meta)
    header = path.read_text().splitlines()[0]
    assert header == "image_id,label,prediction,group,prob_ACK,prob_BCC,prob_MEL,fitspatrick,age"
    read = read_predictions(path)
    assert read.image_ids == ids and read.groups == groups and list(read.labels) == list(labels)
    assert np.allclose(read.probs, probs, atol=5e-7)
    assert read.metadata["fitspatrick"] == meta["fitspatrick"]
    assert read.metadata["age"] == [None if a is None else str(int(a)) for a in meta["age"]]
    with pytest.raises(ValueError, match="clash"):
        write_predictions(tmp_path / "q.csv", ids, probs, NAMES, labels, groups, {"group": groups})


def test_evaluation_options_check_what_the_user_typed():
    options = EvaluationOptions(subgroups=["fitspatrick"], age_bands=[40, 60], positive=["MEL"])
    assert options.fields("synthetic", {"fitspatrick", "age"}) == ["fitspatrick"]
    assert options.bands() == {"age": (40, 60), "age_approx": (40, 60), "age_approximate": (40, 60)}
    assert EvaluationOptions().fields("synthetic", {"fitspatrick", "age", "gender", "region", "smoke"}) == \
        ["fitspatrick", "gender", "age", "region"]
    assert EvaluationOptions().fields("isic2019", {"sex", "age_approx", "anatom_site_general"}) == \
        ["sex", "age_approx", "anatom_site_general"]
    assert EvaluationOptions().fields("somewhere_new", {"sex"}) == []
    with pytest.raises(ValueError, match=r"--eval.subgroups: \['skin'\] are not metadata columns of synthetic"):
        EvaluationOptions(subgroups=["skin"]).fields("synthetic", {"fitspatrick"})
    with pytest.raises(ValueError, match=r"--eval.positive: \['MELANOMA'\] are not classes"):
        EvaluationOptions(positive=["MELANOMA"]).check_positive(NAMES)
    with pytest.raises(ValueError, match="--eval.age_bands must be increasing"):
        EvaluationOptions(age_bands=[60, 40])
    with pytest.raises(ValueError, match="--calibrate must be one of"):
        EvaluationOptions(calibrate="platt")


def test_make_evaluate_one_file_and_a_paired_comparison(tmp_path, capsys):
    """The tool's JSON is the library's answer: the report of each file (with the validation file
    found beside it and the run's options) and ``compare`` of the two on their common images."""
    split, val_split = fake_split(1), fake_split(2, offset=1000)
    a = write_run(tmp_path / "a", split, 1.5, 1, val_split)
    (tmp_path / "a" / "metrics.json").write_text(json.dumps({"evaluation": {"positive": ["BCC", "MEL"],
                                                                            "n_boot": N_BOOT, "seed": 3}}))
    ids, labels, groups, meta = split
    b = write_run(tmp_path / "b", (ids[10:], labels[10:], groups[10:], {k: v[10:] for k, v in meta.items()}), 0.7, 2)
    out = evaluate.main([str(a), str(b), "--out", str(tmp_path / "out")])
    result = json.loads((out / "evaluation.json").read_text())
    assert result["a"]["val"] == str(tmp_path / "a" / "val_predictions.csv") and result["b"]["val"] is None
    assert result["options"]["positive"] == ["BCC", "MEL"] and result["options"]["seed"] == 3
    expected_a = evaluate_predictions(read_predictions(a), read_predictions(tmp_path / "a" / "val_predictions.csv"),
                                      positive=["BCC", "MEL"], subgroup_fields=["fitspatrick", "age"],
                                      n_boot=N_BOOT, seed=3)  # fmt: skip
    expected_a["subgroups"] = {**{k: v for k, v in expected_a["subgroups"].items() if k != "rows"},
                               "file": "subgroups.csv"}
    assert result["a"]["report"] == expected_a
    expected = compare_files(read_predictions(a), read_predictions(b), n_boot=N_BOOT, seed=3, positive=["BCC", "MEL"])
    assert result["comparison"] == json.loads(json.dumps(expected))
    assert result["comparison"]["images"] == {"common": 110, "only_in_a": 10, "only_in_b": 0}
    assert result["comparison"]["auroc"]["difference"] > 0 and result["comparison"]["auroc"]["p"] < 0.05
    for name in ("evaluation.md", "subgroups.csv", "subgroups.md", "reliability.png", "b/subgroups.csv",
                 "b/reliability.png"):
        assert (out / name).is_file(), name
    printed = capsys.readouterr().out
    assert "| macro AUROC |" in printed and "A - B [95 % CI], p" in printed
    assert "| A: a/predictions.csv | B: b/predictions.csv |" in printed
    # Two runs whose folders share a name are told apart by one more part of their paths.
    assert evaluate.short_names([Path("x/seed1/predictions.csv"), Path("y/seed1/predictions.csv")]) == [
        "x/seed1/predictions.csv", "y/seed1/predictions.csv"]

    line = subprocess.run(["make", "-n", "-W", "pyproject.toml", "evaluate", "PRED=a.csv", "PRED2=b.csv", "VAL=v.csv",
                           "OUT=o"], cwd=REPO, capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "-m experiments.evaluate a.csv b.csv --val v.csv --out o" in " ".join(line.split())
    with pytest.raises(SystemExit, match="--subgroups: \\['skin'\\] are not columns"):
        evaluate.main([str(a), "--subgroups", "skin", "--out", str(tmp_path / "bad")])


def test_compare_model_scores_averages_seeds_on_joint_resamples():
    """Each model's value is the mean over its seeds; the intervals and paired differences come from
    the same patient resamples for every seed of every model (recomputed here by hand), and the p
    values of the models against the best are Holm-adjusted together."""
    ids, labels, groups, _ = fake_split(4, n=200, patients=80)
    probs = {"strong": [fake_probs(labels, 2.0, s) for s in (1, 2)],
             "weak": [fake_probs(labels, 0.5, s) for s in (3, 4)], "middle": [fake_probs(labels, 1.2, 5)]}
    result = compare_model_scores(labels, probs, NAMES, groups, n_boot=N_BOOT, seed=7)
    assert result["best"] == "strong" and result["models"]["strong"]["vs_best"] is None
    boot = GroupBootstrap(groups, len(labels), N_BOOT, 7)
    draws = {}
    for name, seeds in probs.items():
        per_seed = [boot.collect(ClassificationMetrics(labels, p, boot.codes, boot.n_groups))["auroc"] for p in seeds]
        draws[name] = np.mean(per_seed, axis=0)
        points = [ClassificationMetrics(labels, p, boot.codes, boot.n_groups)(boot.ones())["auroc"][0] for p in seeds]
        assert result["models"][name]["auroc"] == pytest.approx(np.mean(points), abs=1e-12)
        assert result["models"][name]["auroc_ci"] == pytest.approx(percentile_interval(draws[name]), abs=1e-12)
    weak = result["models"]["weak"]["vs_best"]["auroc"]
    assert weak["ci"] == pytest.approx(percentile_interval(draws["weak"] - draws["strong"]), abs=1e-12)
    assert weak["difference"] < 0 and weak["ci"][1] < 0
    raw = [result["models"][n]["vs_best"]["auroc"]["p"] for n in ("weak", "middle")]
    assert [result["models"][n]["vs_best"]["auroc"]["p_holm"] for n in ("weak", "middle")] == holm(raw)


def test_compare_models_aligns_files_on_common_labelled_images(tmp_path):
    split = fake_split(5)
    ids, labels, groups, meta = split
    a = read_predictions(write_run(tmp_path / "a1", split, 1.5, 1))
    b = read_predictions(write_run(tmp_path / "b1", (ids[::-1], labels[::-1], groups[::-1],
                                                     {k: v[::-1] for k, v in meta.items()}), 0.5, 2))
    result = compare_models({"A": [a], "B": [b]}, n_boot=N_BOOT)
    flipped = b.take(list(range(len(b)))[::-1])
    direct = compare_model_scores(a.labels, {"A": [a.probs], "B": [flipped.probs]}, NAMES, a.groups, n_boot=N_BOOT)
    assert result["models"] == direct["models"] and result["images"]["common"] == len(ids)


def test_cv_summary_has_the_pooled_out_of_fold_report(tmp_path, monkeypatch):
    """Five fake folds: the summary keeps mean ± std over folds and adds the pooled out-of-fold
    report (intervals, operating points from the pooled validation predictions, subgroups)."""
    n_folds, per_fold = 5, 40
    splits = [fake_split(10 + k, n=per_fold, patients=20, offset=per_fold * k) for k in range(n_folds)]

    def fake_train(run_dir, args):
        k = int(next(a for a in args if a.startswith("--data.fold=")).split("=")[1])
        write_run(run_dir, splits[k], 1.5, k, splits[(k + 1) % n_folds])
        return {"test": {"auroc": 0.8 + k / 100, "bacc": 0.6, "acc": 0.7, "n_images": per_fold},
                "evaluation": {"subgroups": ["fitspatrick"], "n_boot": N_BOOT, "seed": 0, "positive": None,
                               "age_bands": None}}

    monkeypatch.setattr(cv, "train_once", fake_train)
    out = cv.main(["--config", str(REPO / "experiments" / "metablock.yaml"), "--dir", str(tmp_path / "cv")])
    summary = json.loads((out / "summary.json").read_text())
    pooled = summary["out_of_fold"]
    assert summary["metrics"]["auroc"]["mean"] == pytest.approx(0.82)
    assert pooled["n_images"] == n_folds * per_fold and pooled["n_groups"] == n_folds * 20 - sum(
        20 - len(set(s[2])) for s in splits)  # fmt: skip
    low, high = pooled["auroc_ci"]
    assert low < pooled["auroc"] < high
    expected = evaluate_predictions(read_predictions(out / "oof_predictions.csv"),
                                    read_predictions(out / "oof_val_predictions.csv"),
                                    subgroup_fields=["fitspatrick"], n_boot=N_BOOT)  # fmt: skip
    assert pooled["auroc_ci"] == expected["auroc_ci"] and pooled["operating_points"] == expected["operating_points"]
    assert pooled["calibration"]["temperature_scaling"]["fitted_on"] == "val"
    rows = (out / "subgroups.csv").read_text().splitlines()
    assert [r.split(",")[:2] for r in rows[1:]] == [["fitspatrick", "1"], ["fitspatrick", "2"], ["fitspatrick", "3"]]
    text = (out / "summary.md").read_text()
    assert "| **mean ± std** |" in text and f"| **pooled out-of-fold [95 % CI]** | **{pooled['auroc']:.3f} [" in text
    assert "percentile bootstrap" in text and (out / "oof_reliability.png").is_file()


def test_compare_summary_has_intervals_and_holm_p_values(tmp_path, monkeypatch):
    split = fake_split(20, n=150, patients=70)
    skills = {"image only": 0.4, "concat": 1.0, "MetaBlock": 2.0}

    def fake_train(run_dir, args):
        name = next(n for n in skills if compare.slug(n) in run_dir.name)
        seed = int(run_dir.name.rsplit("-s", 1)[1])
        write_run(run_dir, split, skills[name], seed)
        (run_dir / "explanations.json").write_text(json.dumps({"deletion": {"auc": 0.1 * seed}, "note": "text"}))
        return {"test": {"auroc": 0.7 + skills[name] / 10, "bacc": 0.5}, "parameters": 1000, "wall_seconds": 60}

    monkeypatch.setattr(compare, "train_once", fake_train)
    monkeypatch.setattr(compare, "inference_ms_per_image", lambda d: 1.0)
    out = compare.main(["--seeds", "1", "2", "--models", *skills, "--dir", str(tmp_path / "cmp"), "--n-boot",
                        str(N_BOOT), "--no-wandb"])
    summary = json.loads((out / "summary.json").read_text())
    rows, evaluation = summary["models"], summary["evaluation"]
    assert evaluation["best"] == "MetaBlock" and rows["MetaBlock"]["vs_best"] is None
    expected = compare_models({n: [read_predictions(out / f"{compare.slug(n)}-s{s}" / "predictions.csv")
                                   for s in (1, 2)] for n in skills}, n_boot=N_BOOT)  # fmt: skip
    for name in skills:
        assert rows[name]["auroc_ci"] == expected["models"][name]["auroc_ci"]
        assert rows[name]["explanations"] == {"deletion/auc": {"mean": pytest.approx(0.15), "std": pytest.approx(
            0.0707107, abs=1e-6), "runs": [0.1, 0.2]}}
    raw = [rows[n]["vs_best"]["auroc"]["p"] for n in ("image only", "concat")]
    assert [rows[n]["vs_best"]["auroc"]["p_holm"] for n in ("image only", "concat")] == holm(raw)
    text = (out / "summary.md").read_text()
    assert text.startswith("| model |") and text.count("\n| ") == 3
    assert "deletion/auc" in text and "| best |" in text and "Holm" in text
    assert "p 0.020 |" in text  # 200 resamples: p >= 2 / 201, times 2 (Holm)
    assert (out / "auroc.png").stat().st_size > 0


def test_wandb_summary_names_the_interval_ends():
    from lightning_modules.callbacks.wandb_panels import summary_scores

    test = {"auroc": 0.8, "auroc_ci": [0.7, 0.9], "bacc_ci": [None, 0.5], "n_images": 10, "flag": True,
            "calibration": {"temperature_scaling": {"temperature": 1.5, "ece_after": 0.02, "fitted_on": "val"}}}
    assert summary_scores(test) == {"best/test/auroc": 0.8, "best/test/n_images": 10, "best/test/auroc_ci_low": 0.7,
                                    "best/test/auroc_ci_high": 0.9, "best/test/bacc_ci_high": 0.5,
                                    "best/test/temperature_scaling/temperature": 1.5,
                                    "best/test/temperature_scaling/ece_after": 0.02}
