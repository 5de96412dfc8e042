"""Where a metadata column becomes a number.

Fitted on the training split only, so no statistic of validation or test rows leaks into the
features. Categories become one-hot columns plus one explicit ``<missing>`` column that also takes
values never seen in training; numbers are standardised with the training mean and standard
deviation, and a missing number is 0 with a ``<missing>`` indicator set (never a silent age 0).
The state is plain lists and floats, saved in checkpoints and reloaded for evaluation/prediction.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from datamodules.meta_columns import ColumnReader
from datamodules.records import LesionRecord

MISSING = "<missing>"


class MetadataEncoder:
    def __init__(self, numeric: Sequence[str] = (), categorical: Sequence[str] = ()):
        self.numeric = list(numeric)
        self.categorical = list(categorical)
        self.mean: dict[str, float] = {}
        self.std: dict[str, float] = {}
        self.categories: dict[str, list[str]] = {}
        self.fitted = False

    # -- fitting ---------------------------------------------------------------------------
    def fit(self, records: Sequence[LesionRecord]) -> "MetadataEncoder":
        columns = ColumnReader([r.meta for r in records])
        for column in self.numeric:
            values = np.array([v for v in columns.values(column) if v is not None], float)
            self.mean[column] = float(values.mean()) if len(values) else 0.0
            std = float(values.std()) if len(values) > 1 else 0.0
            self.std[column] = std if std > 1e-8 else 1.0
        for column in self.categorical:
            seen = set(columns.values(column)) - {None}
            self.categories[column] = sorted(str(v) for v in seen)
        self.fitted = True
        return self

    # -- encoding --------------------------------------------------------------------------
    @property
    def feature_names(self) -> list[str]:
        names: list[str] = []
        for column in self.numeric:
            names += [column, f"{column}={MISSING}"]
        for column in self.categorical:
            names += [f"{column}={v}" for v in self.categories[column]] + [f"{column}={MISSING}"]
        return names

    @property
    def dim(self) -> int:
        return 2 * len(self.numeric) + sum(len(self.categories[c]) + 1 for c in self.categorical)

    def encode(self, meta: Mapping[str, Any]) -> np.ndarray:
        """The feature vector of one record's raw metadata."""
        if not self.fitted:
            raise RuntimeError("MetadataEncoder.encode called before fit/load_state_dict")
        out = np.zeros(self.dim, np.float32)
        i = 0
        for column in self.numeric:
            value = meta.get(column)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                out[i + 1] = 1.0
            else:
                out[i] = (float(value) - self.mean[column]) / self.std[column]
            i += 2
        for column in self.categorical:
            categories = self.categories[column]
            value = meta.get(column)
            # Unseen-in-training values share the missing state: the model has no weight for them.
            k = categories.index(value) if value in categories else len(categories)
            out[i + k] = 1.0
            i += len(categories) + 1
        return out

    def encode_all(self, records: Sequence[LesionRecord]) -> np.ndarray:
        return np.stack([self.encode(r.meta) for r in records]) if records else np.zeros((0, self.dim), np.float32)

    # -- persistence (plain Python types: loadable with torch.load(weights_only=True)) ----------
    def state_dict(self) -> dict[str, Any]:
        return {
            "numeric": list(self.numeric),
            "categorical": list(self.categorical),
            "mean": dict(self.mean),
            "std": dict(self.std),
            "categories": {k: list(v) for k, v in self.categories.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> "MetadataEncoder":
        self.numeric = list(state["numeric"])
        self.categorical = list(state["categorical"])
        self.mean = dict(state["mean"])
        self.std = dict(state["std"])
        self.categories = {k: list(v) for k, v in state["categories"].items()}
        self.fitted = True
        return self

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> "MetadataEncoder":
        return cls().load_state_dict(state)
