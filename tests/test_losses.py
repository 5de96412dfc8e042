import math

import pytest
import torch
import torch.nn.functional as F

from lightning_modules.training.losses import FocalLoss, classification_loss


def test_focal_loss_against_direct_formula():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    target = torch.tensor([0, 2])
    gamma = 2.0
    losses = []
    for row, t in zip(logits.tolist(), target.tolist()):
        z = sum(math.exp(v) for v in row)
        p = math.exp(row[t]) / z
        losses.append(-((1 - p) ** gamma) * math.log(p))
    assert FocalLoss(gamma)(logits, target).item() == pytest.approx(sum(losses) / 2, rel=1e-6)


def test_weighted_focal_loss_normalises_by_target_weights():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [0.0, 1.0, 0.0]])
    target = torch.tensor([0, 2, 1])
    weight = torch.tensor([1.0, 3.0, 0.5])
    p = logits.softmax(1)[torch.arange(3), target]
    per = -((1 - p) ** 2) * p.log()
    w = weight[target]
    expected = (w * per).sum() / w.sum()
    assert FocalLoss(2.0, weight)(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_focal_with_gamma_zero_is_weighted_cross_entropy():
    torch.manual_seed(0)
    logits, target = torch.randn(16, 6), torch.randint(0, 6, (16,))
    weight = torch.rand(6) + 0.1
    focal = FocalLoss(0.0, weight)(logits, target)
    assert focal.item() == pytest.approx(F.cross_entropy(logits, target, weight=weight).item(), rel=1e-5)


def test_focal_down_weights_easy_examples():
    easy = torch.tensor([[6.0, 0.0]])
    hard = torch.tensor([[0.2, 0.0]])
    t = torch.tensor([0])
    ratio_focal = FocalLoss(2.0)(easy, t) / FocalLoss(2.0)(hard, t)
    ratio_ce = F.cross_entropy(easy, t) / F.cross_entropy(hard, t)
    assert ratio_focal < ratio_ce / 10


def test_classification_loss_factory():
    assert isinstance(classification_loss("focal", [1.0, 2.0]), FocalLoss)
    ce = classification_loss("ce", [1.0, 2.0])
    assert torch.equal(ce.weight, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="loss"):
        classification_loss("hinge", None)


def test_auroc_leaves_out_classes_that_cannot_be_scored():
    """A class without positives in the evaluated images is NaN (with a warning naming it) and
    the macro AUROC averages the others; with every class present it is torchmetrics' value."""
    from torchmetrics.classification import MulticlassAUROC

    from lightning_modules.metrics.auroc import ScorableAUROC

    torch.manual_seed(0)
    probs = torch.randn(12, 3).softmax(1)
    present = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    ours, reference = ScorableAUROC(3), MulticlassAUROC(3, average="macro")
    ours.update(probs, present)
    reference.update(probs, present)
    assert torch.equal(ours.compute(), reference.compute())

    absent = torch.tensor([0, 1, 0, 0, 1, 1, 0, 1, 0, 0, 1, 1])  # class "c" never occurs
    per_class = ScorableAUROC(3, average=None, class_names=["a", "b", "c"])
    macro = ScorableAUROC(3, class_names=["a", "b", "c"])
    for metric in (per_class, macro):
        metric.update(probs, absent)
    with pytest.warns(UserWarning, match=r"class\(es\) \['c'\] have no positive or no negative .* other 2 of 3"):
        values = per_class.compute()
    assert math.isnan(values[2]) and not math.isnan(values[0])
    with pytest.warns(UserWarning):
        assert macro.compute() == pytest.approx(float(values[:2].mean()))
    torchmetrics_macro = MulticlassAUROC(3, average="macro")
    torchmetrics_macro.update(probs, absent)
    assert torchmetrics_macro.compute() < macro.compute()  # the 0.0 it reports drags the mean down
