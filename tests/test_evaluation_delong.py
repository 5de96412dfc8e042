"""DeLong's interval and paired test against R's pROC 1.18.0 (R 4.2.2, Debian ``r-cran-proc``).

The reference values below were printed by this R script (levels and direction set explicitly:
controls = 0, cases = 1, a case scores higher):

    library(pROC)
    for (name in names(sets)) {   # sets: the y / a / b vectors of DATA below
      s <- sets[[name]]
      ra <- roc(s$y, s$a, levels = c(0, 1), direction = "<", quiet = TRUE)
      rb <- roc(s$y, s$b, levels = c(0, 1), direction = "<", quiet = TRUE)
      ca <- ci.auc(ra, method = "delong", conf.level = 0.95)
      t <- roc.test(ra, rb, method = "delong", paired = TRUE, conf.level = 0.95)
      cat(sprintf('"%s": {"ci_a": [%.17g, %.17g, %.17g], "var_a": %.17g, "z": %.17g, "p": %.17g, "diff_ci": [%.17g, %.17g], "auc_b": %.17g},\\n',
                  name, ca[1], ca[2], ca[3], var(ra, method = "delong"), t$statistic, t$p.value,
                  t$conf.int[1], t$conf.int[2], as.numeric(rb$auc)))
    }

``ci_a`` is (lower, AUC, upper) of ``a``; ``z``, ``p`` and ``diff_ci`` are of AUC(a) - AUC(b).
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from lightning_modules.evaluation.delong import (
    delong_ci,
    delong_ci_per_class,
    delong_test,
    delong_test_per_class,
)

TIES_Y = [0, 0, 0, 1, 0, 1, 0, 0, 1, 0, 1, 0, 0, 1, 0, 0, 1, 0, 1, 0]
TIES_A = [0.1, 0.3, 0.2, 0.6, 0.4, 0.4, 0.1, 0.5, 0.9, 0.3, 0.7, 0.2, 0.6, 0.4, 0.3, 0.8, 0.5, 0.2, 0.9, 0.4]
DATA = {
    # Scores on a 0.1 grid: many ties, inside and across the classes; 7 cases, 13 controls.
    "ties": dict(y=TIES_Y, a=TIES_A,
                 b=[0.2, 0.1, 0.4, 0.5, 0.3, 0.7, 0.2, 0.2, 0.6, 0.5, 0.5, 0.1, 0.3, 0.8, 0.6, 0.4, 0.5, 0.3, 0.4, 0.2]),
    # 12 cases, 18 controls.
    "unequal": dict(
        y=[0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 1, 0, 0, 1, 1, 1, 0, 0, 1, 0, 1, 0, 1, 1, 0, 1, 1],
        a=[0.75, 0.31, 0.23, 0.84, 0.06, 0.28, 0.78, 0.81, 0.16, 0.0, 0.48, 0.55, 0.27, 0.74, 0.39, 0.41, 0.56, 0.91,
           0.95, 0.36, 0.26, 0.8, 0.45, 0.44, 0.26, 0.86, 0.63, 0.28, 0.69, 0.64],
        b=[0.27, 0.0, 0.44, 0.31, 0.1, 0.35, 0.82, 0.28, 0.35, 0.48, 0.32, 0.95, 0.5, 0.65, 0.17, 0.34, 0.54, 0.76, 0.96,
           0.37, 0.3, 0.54, 0.54, 0.81, 0.32, 0.85, 0.55, 0.05, 0.62, 1.0]),
    # Upper limit clipped at 1.
    "clipped": dict(y=[0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1], a=[0.1, 0.2, 0.3, 0.35, 0.4, 0.8, 0.5, 0.7, 0.9, 0.95, 0.99],
                    b=[0.2, 0.1, 0.5, 0.3, 0.6, 0.4, 0.55, 0.45, 0.7, 0.9, 0.6]),
    # Neither limit clipped; 10 cases, 18 controls.
    "moderate": dict(
        y=[0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 1, 0, 0, 1, 0, 0, 0, 0, 1, 1, 0, 1, 1, 1, 1, 0],
        a=[0.04, 0.54, 0.12, 0.37, 0.11, 0.4, 0.36, 0.44, 0.99, 0.39, 0.69, 0.14, 0.46, 0.53, 0.38, 0.59, 0.42, 0.2, 0.51,
           0.24, 0.89, 0.42, 0.54, 0.52, 0.71, 0.4, 0.72, 0.38],
        b=[0.65, 0.52, 0.43, 0.24, 0.55, 0.49, 0.81, 0.32, 0.51, 0.5, 0.54, 0.44, 0.52, 0.28, 0.2, 0.4, 0.52, 0.7, 0.6,
           0.61, 0.64, 0.62, 0.44, 0.63, 0.83, 0.41, 0.34, 0.79]),
    # AUROC below 0.5 (direction fixed): lower limit clipped at 0.
    "reversed": dict(y=[0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1], a=[0.9, 0.8, 0.7, 0.65, 0.6, 0.2, 0.5, 0.3, 0.1, 0.05, 0.01],
                     b=[0.2, 0.1, 0.5, 0.3, 0.6, 0.4, 0.55, 0.45, 0.7, 0.9, 0.6]),
    # The same scores twice: difference 0 with standard error 0 -> z = 0, p = 1 in pROC.
    "identical": dict(y=TIES_Y, a=TIES_A, b=TIES_A),
}

PROC = {
    "ties": {"ci_a": [0.69674812316559165, 0.8571428571428571, 1], "var_a": 0.0066970575212333457, "z": -0.46332391679941937, "p": 0.64313220500364143, "diff_ci": [-0.28737494884043813, 0.17748483895032799], "auc_b": 0.91208791208791207},  # noqa: E501
    "unequal": {"ci_a": [0.74310538896922274, 0.875, 1], "var_a": 0.0045285370040271996, "z": -1.7804405083099746, "p": 0.075003897325051916, "diff_ci": [-0.25287779739786165, 0.012137056657120754], "auc_b": 0.99537037037037035},  # noqa: E501
    "clipped": {"ci_a": [0.78011590063711667, 0.93333333333333324, 1], "var_a": 0.0061111111111111106, "z": 0.40017789638415557, "p": 0.68902549358910359, "diff_ci": [-0.1948865869716303, 0.29488658697163017], "auc_b": 0.8833333333333333},  # noqa: E501
    "moderate": {"ci_a": [0.5976497263585, 0.77777777777777779, 0.95790582919705558], "var_a": 0.0084463003308319212, "z": 0.79916470872550427, "p": 0.4241949124960504, "diff_ci": [-0.19366875824897639, 0.46033542491564322], "auc_b": 0.64444444444444438},  # noqa: E501
    "reversed": {"ci_a": [0, 0.066666666666666666, 0.21988409936288322], "var_a": 0.0061111111111111106, "z": -6.040642490838839, "p": 1.5350175630862808e-09, "diff_ci": [-1.0816446481427349, -0.55168868519059855], "auc_b": 0.8833333333333333},  # noqa: E501
    "identical": {"ci_a": [0.69674812316559165, 0.8571428571428571, 1], "var_a": 0.0066970575212333457, "z": 0, "p": 1, "diff_ci": [0, 0], "auc_b": 0.85714285714285721},  # noqa: E501
}


@pytest.mark.parametrize("name", list(DATA))
def test_ci_matches_proc(name):
    data, ref = DATA[name], PROC[name]
    result = delong_ci(np.array(data["y"]) == 1, data["a"])
    assert result["auc"] == pytest.approx(ref["ci_a"][1], abs=1e-12)
    assert result["se"] ** 2 == pytest.approx(ref["var_a"], abs=1e-12)
    assert result["ci"] == pytest.approx([ref["ci_a"][0], ref["ci_a"][2]], abs=1e-6)


@pytest.mark.parametrize("name", list(DATA))
def test_paired_test_matches_proc(name):
    data, ref = DATA[name], PROC[name]
    result = delong_test(np.array(data["y"]) == 1, data["a"], data["b"])
    assert result["auc_b"] == pytest.approx(ref["auc_b"], abs=1e-12)
    assert result["difference"] == pytest.approx(ref["ci_a"][1] - ref["auc_b"], abs=1e-12)
    assert result["z"] == pytest.approx(ref["z"], abs=1e-6)
    assert result["p"] == pytest.approx(ref["p"], abs=1e-6)
    assert result["ci"] == pytest.approx(ref["diff_ci"], abs=1e-6)


def test_per_class_is_one_vs_rest_and_swapping_models_flips_the_sign():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 120)
    a, b = rng.dirichlet(np.ones(3), 120), rng.dirichlet(np.ones(3), 120)
    a[np.arange(120), labels] += 0.5
    cis = delong_ci_per_class(labels, a, ["x", "y", "z"])
    tests = delong_test_per_class(labels, a, b, ["x", "y", "z"])
    back = delong_test_per_class(labels, b, a, ["x", "y", "z"])
    for c, name in enumerate(["x", "y", "z"]):
        assert cis[name]["auc"] == pytest.approx(roc_auc_score(labels == c, a[:, c]), abs=1e-12)
        assert cis[name]["ci"] == pytest.approx(delong_ci(labels == c, a[:, c])["ci"])
        assert tests[name]["z"] == pytest.approx(-back[name]["z"])
        assert tests[name]["p"] == pytest.approx(back[name]["p"])


def test_too_few_images_of_a_class_is_said_not_faked():
    result = delong_ci([1, 0, 0, 0], [0.9, 0.1, 0.2, 0.3])
    assert result["auc"] is None and result["ci"] == [None, None]
    assert "1 and 3" in result["note"]
    assert delong_test([0, 0, 0], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])["p"] is None
