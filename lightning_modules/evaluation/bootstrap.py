"""Percentile bootstrap confidence intervals, resampling groups (patients or lesions), not images.

Photos of one lesion, and the lesions of one patient, are near duplicates: resampling images
treats them as independent and gives intervals that are too narrow. Here each resample draws
the G groups with replacement, and every image of a drawn group enters with the group's
multiplicity (0, 1, 2, ...). A statistic is then a function of the (resamples, G) matrix of
multiplicities, computed for a block of resamples at once:

* sums over images (correct predictions per class, positives above a threshold, ...) are one
  matrix product with the per-group sums;
* AUROC is a weighted Mann-Whitney statistic. The scores never change between resamples, so
  they are sorted once; the weights of positives and negatives at each distinct score are a
  sparse product, and the AUROC of every resample is one cumulative sum over the sorted scores
  (ties count one half, as in the Mann-Whitney statistic and in scikit-learn).

Intervals are percentile intervals (the 2.5th and 97.5th percentiles of the resampled values
for 95 %). Point estimates are computed by the same code with every multiplicity 1, so an
interval and its estimate always use one definition.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
from scipy import sparse
from threadpoolctl import ThreadpoolController

from lightning_modules.evaluation.inputs import check_scores, group_codes

DEFAULT_N_BOOT = 2000
#: Resamples drawn and scored together: memory stays near BLOCK x (groups + distinct scores)
#: doubles per statistic, and the results depend on the seed only, not on the machine.
BLOCK = 100

Statistic = Callable[[np.ndarray], dict[str, np.ndarray]]


class GroupBootstrap:
    """Draws the multiplicity of every group in each resample, ``n_boot`` resamples from ``seed``.

    ``groups=None`` resamples images (each image its own group)."""

    def __init__(self, groups: Optional[Sequence], n_images: int, n_boot: int = DEFAULT_N_BOOT, seed: int = 0):
        if int(n_boot) < 1:
            raise ValueError(f"n_boot must be at least 1, got {n_boot}")
        self.codes, self.n_groups = group_codes(groups, n_images)
        self.grouped = groups is not None
        self.n_boot, self.seed = int(n_boot), int(seed)

    def method(self, level: float = 0.95) -> str:
        unit = "groups (patients or lesions)" if self.grouped else "images (no group ids given)"
        return (f"percentile bootstrap, {100 * level:g} % interval: {self.n_boot} resamples of the "
                f"{self.n_groups} {unit} with replacement, seed {self.seed}")

    def blocks(self) -> Iterator[np.ndarray]:
        """``(G, b)`` float64 multiplicities of each group (rows) in ``b <= BLOCK`` resamples (columns)."""
        rng = np.random.default_rng(self.seed)
        g = self.n_groups
        for start in range(0, self.n_boot, BLOCK):
            b = min(BLOCK, self.n_boot - start)
            draws = rng.integers(0, g, size=(b, g)) + (np.arange(b) * g)[:, None]
            yield np.ascontiguousarray(np.bincount(draws.ravel(), minlength=b * g).reshape(b, g).T, dtype=np.float64)

    def collect(self, statistic: Statistic) -> dict[str, np.ndarray]:
        """Every value ``statistic(multiplicities)`` returns, over all resamples (first axis).

        The products here are tall and thin (groups x 100): one BLAS thread is faster than
        several, which mostly wait on each other (several times slower on a busy machine)."""
        parts: dict[str, list[np.ndarray]] = {}
        with _blas_controller().limit(limits=1, user_api="blas"):
            for weights in self.blocks():
                for key, value in statistic(weights).items():
                    parts.setdefault(key, []).append(value)
        return {key: np.concatenate(value) for key, value in parts.items()}

    def ones(self) -> np.ndarray:
        """The multiplicities of the data itself (every group once): point estimates."""
        return np.ones((self.n_groups, 1))


@functools.lru_cache(maxsize=1)
def _blas_controller() -> ThreadpoolController:
    """Made once: finding the loaded BLAS libraries takes milliseconds, limiting them microseconds."""
    return ThreadpoolController()


class GroupSums:
    """Column sums of per-image values under the resample weights: ``(b, J)``."""

    def __init__(self, values: np.ndarray, codes: np.ndarray, n_groups: int):
        values = np.asarray(values, dtype=np.float64).reshape(len(codes), -1)
        # Only the groups these images belong to (a subgroup holds few of them).
        self.groups, local = np.unique(codes, return_inverse=True)
        self.per_group = np.zeros((len(self.groups), values.shape[1]))
        np.add.at(self.per_group, local.reshape(-1), values)
        self.all_groups = len(self.groups) == n_groups

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        return (weights if self.all_groups else weights[self.groups]).T @ self.per_group


class WeightedAUROC:
    """AUROC of ``scores`` for ``positive`` vs the rest under resample weights: ``(b,)``, NaN where a
    resample has no positive or no negative image.

    Distinct scores are merged into runs where that loses nothing: consecutive scores held only by
    positives (or only by negatives) contribute as one, so a rare class costs little. A score
    held by both stays alone (the tie counts one half)."""

    def __init__(self, scores: np.ndarray, positive: np.ndarray, codes: np.ndarray, n_groups: int):
        positive = np.asarray(positive, dtype=bool)
        _, distinct = np.unique(np.asarray(scores, dtype=np.float64), return_inverse=True)
        distinct = distinct.reshape(-1)
        n_distinct = int(distinct.max()) + 1
        has_pos = np.bincount(distinct[positive], minlength=n_distinct) > 0
        has_neg = np.bincount(distinct[~positive], minlength=n_distinct) > 0
        kind = has_pos.astype(np.int8) + 2 * has_neg.astype(np.int8)  # 1 positives, 2 negatives, 3 both
        starts = np.ones(n_distinct, dtype=bool)
        starts[1:] = (kind[1:] != kind[:-1]) | (kind[1:] == 3)
        run = (np.cumsum(starts) - 1)[distinct]
        shape = (int(run.max()) + 1, n_groups)
        self.pos = sparse.csr_matrix((np.ones(int(positive.sum())), (run[positive], codes[positive])), shape=shape)
        self.neg = sparse.csr_matrix((np.ones(int((~positive).sum())), (run[~positive], codes[~positive])), shape=shape)

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        pos = np.asarray(self.pos @ weights)  # (runs, b): weight of the positives at each run of scores
        neg = np.asarray(self.neg @ weights)
        below = np.cumsum(neg, axis=0)
        below -= 0.5 * neg  # negatives strictly below, plus half of those tied
        wins = np.einsum("rb,rb->b", pos, below)
        pairs = pos.sum(axis=0) * neg.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(pairs > 0, wins / np.where(pairs > 0, pairs, 1), np.nan)


def nanmean_rows(values: np.ndarray) -> np.ndarray:
    """Row means over the finite entries; NaN (no warning) for a row with none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=1)


def safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


class ClassificationMetrics:
    """Per-class one-vs-rest AUROC, macro AUROC (mean over the classes the resample can score),
    balanced accuracy (mean recall of the argmax over the classes present) and accuracy."""

    def __init__(self, labels: np.ndarray, probs: np.ndarray, codes: np.ndarray, n_groups: int):
        k = probs.shape[1]
        self.k = k
        self.aurocs = [WeightedAUROC(probs[:, c], labels == c, codes, n_groups) for c in range(k)]
        onehot = np.eye(k)[labels]
        correct = (np.argmax(probs, axis=1) == labels)[:, None]
        self.sums = GroupSums(np.hstack([onehot, onehot * correct]), codes, n_groups)

    def __call__(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        per_class = np.stack([auroc(weights) for auroc in self.aurocs], axis=1)
        sums = self.sums(weights)
        total, correct = sums[:, : self.k], sums[:, self.k:]
        recall = safe_ratio(correct, total)
        return {
            "auroc_per_class": per_class,
            "auroc": nanmean_rows(per_class),
            "recall_per_class": recall,
            "bacc": nanmean_rows(recall),
            "acc": safe_ratio(correct.sum(axis=1), total.sum(axis=1)),
        }


def to_float(value) -> Optional[float]:
    """A Python float, or ``None`` for NaN/inf (JSON has no NaN)."""
    value = float(value)
    return value if np.isfinite(value) else None


def percentile_interval(values: np.ndarray, level: float = 0.95) -> list[Optional[float]]:
    """``[low, high]`` percentiles of the finite resampled values; ``[None, None]`` if none is finite."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return [None, None]
    low, high = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return [float(low), float(high)]


def bootstrap_p_value(differences: np.ndarray) -> Optional[float]:
    """Two-sided p of "difference = 0" from resampled differences: twice the smaller tail beyond 0,
    with the +1 correction of Davison & Hinkley (a p-value of 0 is never reported). It is the
    p-value the percentile interval inverts: the interval excludes 0 about when p < 1 - level."""
    d = np.asarray(differences, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return None
    tail = min(np.count_nonzero(d <= 0), np.count_nonzero(d >= 0))
    return float(min(1.0, 2 * (tail + 1) / (d.size + 1)))


def classification_cis(labels, probs, class_names: Sequence[str], groups=None, n_boot: int = DEFAULT_N_BOOT,
                       seed: int = 0, level: float = 0.95) -> dict:
    """Point estimates and percentile intervals of macro AUROC, per-class AUROC, balanced accuracy
    and accuracy, with the resampling described in ``method``."""
    labels, probs = check_scores(labels, probs, class_names)
    boot = GroupBootstrap(groups, len(labels), n_boot, seed)
    metrics = ClassificationMetrics(labels, probs, boot.codes, boot.n_groups)
    point = metrics(boot.ones())
    draws = boot.collect(metrics)
    per_class = draws["auroc_per_class"]
    return {
        "auroc": to_float(point["auroc"][0]),
        "bacc": to_float(point["bacc"][0]),
        "acc": to_float(point["acc"][0]),
        "auroc_per_class": {name: to_float(point["auroc_per_class"][0, c]) for c, name in enumerate(class_names)},
        "auroc_ci": percentile_interval(draws["auroc"], level),
        "bacc_ci": percentile_interval(draws["bacc"], level),
        "acc_ci": percentile_interval(draws["acc"], level),
        "auroc_per_class_ci": {name: percentile_interval(per_class[:, c], level) for c, name in enumerate(class_names)},
        # A rare class may be absent from some resamples; its interval then rests on the others.
        "auroc_per_class_unscorable_resamples": {name: int(np.count_nonzero(~np.isfinite(per_class[:, c])))
                                                 for c, name in enumerate(class_names)},
        "n_groups": boot.n_groups,
        "method": boot.method(level),
    }


def paired_classification_bootstrap(labels, probs_a, probs_b, class_names: Sequence[str], groups=None,
                                    n_boot: int = DEFAULT_N_BOOT, seed: int = 0, level: float = 0.95) -> dict:
    """A - B for macro AUROC, balanced accuracy and accuracy on the same images, both scored on the
    same resamples (groups drawn jointly): difference, percentile interval, two-sided p."""
    labels, probs_a = check_scores(labels, probs_a, class_names)
    _, probs_b = check_scores(labels, probs_b, class_names)
    boot = GroupBootstrap(groups, len(labels), n_boot, seed)
    a = ClassificationMetrics(labels, probs_a, boot.codes, boot.n_groups)
    b = ClassificationMetrics(labels, probs_b, boot.codes, boot.n_groups)
    keys = ("auroc", "bacc", "acc")

    def both(weights: np.ndarray) -> dict[str, np.ndarray]:
        first, second = a(weights), b(weights)
        return {key: first[key] - second[key] for key in keys}

    point_a, point_b = a(boot.ones()), b(boot.ones())
    draws = boot.collect(both)
    result = {
        key: {
            "a": to_float(point_a[key][0]),
            "b": to_float(point_b[key][0]),
            "difference": to_float(point_a[key][0] - point_b[key][0]),
            "ci": percentile_interval(draws[key], level),
            "p": bootstrap_p_value(draws[key]),
        }
        for key in keys
    }
    return {**result, "n_groups": boot.n_groups, "method": "paired " + boot.method(level) + "; p: two-sided, "
            "twice the smaller share of resampled differences beyond 0"}
