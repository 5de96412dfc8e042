"""What a run's evaluation reports on: the ``--eval.*`` options of training and each dataset's
subgroup fields.

The subgroup fields are raw metadata columns (the reader's own names) reported per value, and
written to ``predictions.csv`` beside each image's group, so that a predictions file is enough
to evaluate it again (``make evaluate``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Collection, Optional, Sequence

from datamodules.sources import SUBGROUP_FIELDS
from lightning_modules.evaluation.bootstrap import DEFAULT_N_BOOT
from lightning_modules.evaluation.subgroups import AGE_BANDS, DEFAULT_BANDS

CALIBRATIONS = ("none", "temperature")


def default_subgroup_fields(dataset: str, available: Collection[str]) -> list[str]:
    """The dataset's subgroup fields that its metadata has (a file may lack a column)."""
    return [f for f in SUBGROUP_FIELDS.get(dataset, ()) if f in available]


@dataclass(frozen=True)
class EvaluationOptions:
    """The evaluation of a run's test split (``docs/evaluation.md``).

    Args:
        subgroups: metadata fields reported per value (``[]``: none); default: the dataset's
            (each reader's, ``datamodules.sources.SUBGROUP_FIELDS``).
        age_bands: band edges for ``age`` / ``age_approx`` (default ``[30, 45, 60, 75]``: <30,
            30-44, 45-59, 60-74, >=75).
        positive: classes scored together for operating points and subgroup sensitivity, e.g.
            ``[MEL, BCC, SCC]`` (malignant).
        n_boot: bootstrap resamples (patients) for the 95 % intervals.
        seed: the bootstrap's seed.
        calibrate: ``temperature``: store the temperature fitted on the validation split in the
            tested checkpoint, so that prediction applies it; ``none`` (default): report only.
    """

    subgroups: Optional[tuple[str, ...]] = None
    age_bands: Optional[tuple[float, ...]] = None
    positive: Optional[tuple[str, ...]] = None
    n_boot: int = DEFAULT_N_BOOT
    seed: int = 0
    calibrate: str = "none"

    def __post_init__(self) -> None:
        for name in ("subgroups", "age_bands", "positive"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))
        if self.calibrate not in CALIBRATIONS:
            raise ValueError(f"--calibrate must be one of {CALIBRATIONS}, got {self.calibrate!r}")
        if int(self.n_boot) < 1:
            raise ValueError(f"--eval.n_boot must be at least 1, got {self.n_boot}")
        if self.age_bands is not None and (not self.age_bands or list(self.age_bands) != sorted(set(self.age_bands))):
            raise ValueError(f"--eval.age_bands must be increasing numbers, got {list(self.age_bands)}")

    def bands(self) -> dict[str, Sequence[float]]:
        """Band edges per numeric field (the library's default edges unless ``age_bands`` is given)."""
        edges = tuple(self.age_bands) if self.age_bands is not None else AGE_BANDS
        return {field: edges for field in DEFAULT_BANDS}

    def fields(self, dataset: str, available: Collection[str]) -> list[str]:
        """The subgroup fields: the ones given (each must be a metadata column), else the dataset's."""
        if self.subgroups is None:
            return default_subgroup_fields(dataset, available)
        unknown = [f for f in self.subgroups if f not in available]
        if unknown:
            raise ValueError(f"--eval.subgroups: {unknown} are not metadata columns of {dataset}; it has "
                             f"{sorted(available)}")
        return list(dict.fromkeys(self.subgroups))

    def check_positive(self, class_names: Sequence[str]) -> None:
        unknown = [c for c in self.positive or () if c not in class_names]
        if unknown:
            raise ValueError(f"--eval.positive: {unknown} are not classes of the data; they are {list(class_names)}")

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
