"""The evaluation a reviewer expects, computed in one place: grouped-bootstrap intervals, DeLong's
test, calibration, operating points chosen on validation, the ISIC challenges' metrics and
subgroup reports (``docs/evaluation.md``). Entry points: :func:`evaluate`, :func:`compare`,
:func:`compare_models` (several models over seeds), :func:`holm`, :func:`read_predictions`."""

from lightning_modules.evaluation.models import compare_model_scores, compare_models
from lightning_modules.evaluation.options import EvaluationOptions
from lightning_modules.evaluation.predictions import Predictions, PredictionsError, align, read_predictions
from lightning_modules.evaluation.report import (
    REPORT_KEYS,
    compare,
    compare_scores,
    evaluate,
    evaluate_predictions,
    holm,
    json_safe,
)
from lightning_modules.evaluation.subgroups import write_subgroups

__all__ = [
    "REPORT_KEYS",
    "EvaluationOptions",
    "Predictions",
    "PredictionsError",
    "align",
    "compare",
    "compare_model_scores",
    "compare_models",
    "compare_scores",
    "evaluate",
    "evaluate_predictions",
    "holm",
    "json_safe",
    "read_predictions",
    "write_subgroups",
]
