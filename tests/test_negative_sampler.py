"""``--data.negatives_per_epoch``: every positive, a fresh seeded draw of negatives each epoch, the
same draws after a resume, split over DDP ranks like the plain sampler; and ``val/pauc_tpr80``,
the ISIC 2024 metric, logged for binary tasks only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.lesion_datamodule import LesionDataModule
from datamodules.samplers import NegativeSubsampler, SeededSampler, TrainingSampling
from datamodules.seeding import TrainPosition

# 6 positives (class 1) among 60: the largest class (0) is the negatives.
LABELS = np.array([1 if i % 10 == 3 else 0 for i in range(60)])


def indices(sampler) -> list[int]:
    return [key.index for key in sampler]


def test_every_positive_and_n_negatives_each_epoch():
    sampler = NegativeSubsampler(LABELS, negatives=9, seed=4)
    assert sampler.negative_class == 0 and len(sampler) == 6 + 9
    drawn = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        epoch_indices = indices(sampler)
        assert len(epoch_indices) == len(set(epoch_indices)) == 15  # no repeats within an epoch
        assert sorted(i for i in epoch_indices if LABELS[i] == 1) == list(np.flatnonzero(LABELS == 1))
        negatives = sorted(i for i in epoch_indices if LABELS[i] == 0)
        assert len(negatives) == 9
        assert sorted(epoch_indices) == sampler.epoch_indices(epoch).tolist()
        drawn.append(negatives)
    assert len({tuple(n) for n in drawn}) == 4  # a different set of negatives every epoch
    assert len(set().union(*drawn)) > 9
    sampler.set_epoch(1)
    assert sorted(i for i in indices(sampler) if LABELS[i] == 0) == drawn[1]  # a function of (seed, epoch)
    other_seed = NegativeSubsampler(LABELS, negatives=9, seed=5)
    assert sorted(i for i in indices(other_seed) if LABELS[i] == 0) != drawn[0]


def test_more_negatives_than_there_are_takes_them_all_and_the_largest_class_is_the_negative_one():
    everything = NegativeSubsampler(LABELS, negatives=1000, seed=0)
    assert sorted(indices(everything)) == list(range(60))
    multiclass = np.array([0] * 5 + [1] * 20 + [2] * 3)  # class 1 is the largest: the "negatives"
    sampler = NegativeSubsampler(multiclass, negatives=4, seed=0)
    assert sampler.negative_class == 1 and len(sampler) == 5 + 3 + 4
    assert sorted(multiclass[indices(sampler)].tolist()) == [0] * 5 + [1] * 4 + [2] * 3


def test_a_mid_epoch_resume_draws_the_same_negatives_in_the_same_order():
    whole = NegativeSubsampler(LABELS, negatives=9, seed=4)
    whole.set_epoch(2)
    resumed = NegativeSubsampler(LABELS, negatives=9, seed=4, resume_at=(2, 5))
    assert list(resumed) == list(whole)[5:]  # same images and augmentation seeds
    whole.set_epoch(3)
    resumed.set_epoch(3)
    assert list(resumed) == list(whole)


def test_ddp_ranks_split_the_one_process_epoch():
    single = NegativeSubsampler(LABELS, negatives=10, seed=4)
    ranks = [NegativeSubsampler(LABELS, negatives=10, seed=4, num_replicas=3, rank=r) for r in range(3)]
    for sampler in (single, *ranks):
        sampler.set_epoch(1)
    assert [len(r) for r in ranks] == [6, 6, 6]  # 16 images padded to 18
    interleaved = [key for triple in zip(*ranks) for key in triple]
    assert interleaved[:16] == list(single)
    assert {k.index for k in interleaved} == set(single.epoch_indices(1).tolist())


def test_policy_builds_it_and_refuses_other_samplers():
    common = dict(num_samples=60, batch_size=4, seed=5, position=TrainPosition(3, 2), world_size=2, rank=1,
                  class_names=["benign", "malignant"], dataset="toy")
    arguments = TrainingSampling(negatives_per_epoch=10).loader_arguments(LABELS, **common)
    sampler = arguments["sampler"]
    assert isinstance(sampler, NegativeSubsampler) and isinstance(sampler, SeededSampler)
    assert (sampler.seed, sampler.rank, sampler.num_replicas, sampler.resume_at) == (5, 1, 2, (3, 8))
    assert len(sampler) == 8 and arguments["batch_size"] == 4 and arguments["drop_last"]
    for options in (dict(balanced_sampler=True), dict(oversample={"malignant": 4}), dict(pk_batches=(2, 2))):
        with pytest.raises(ValueError, match="negatives_per_epoch draws its own training images"):
            LesionDataModule(data_dir="/nonexistent", negatives_per_epoch=10, **options)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="--data.negatives_per_epoch must be a positive number of images"):
            LesionDataModule(data_dir="/nonexistent", negatives_per_epoch=bad)


def test_datamodule_resume_mid_epoch(tmp_path):
    import dataset_writers as w

    data = w.write_isic2024(tmp_path, n=60)
    kwargs = dict(dataset="isic2024", data_dir=str(data.root), n_folds=3, num_workers=0, image_size=32, batch_size=4,
                  negatives_per_epoch=6, image_cache=False)
    whole = LesionDataModule(**kwargs)
    whole.setup("fit")
    sampler = whole.train_dataloader().sampler
    sampler.set_epoch(2)
    epoch = list(sampler)
    labels = [r.label for r in whole.records("train")]
    assert len(epoch) == sum(labels) + 6
    resumed = LesionDataModule(**kwargs)
    resumed.setup("fit")
    resumed.resume_training_at(TrainPosition(2, 1))
    assert list(resumed.train_dataloader().sampler) == epoch[4:]


# --------------------------------------------------------------------------------------------
# The ISIC 2024 metric
# --------------------------------------------------------------------------------------------


def test_partial_auc_metric_is_the_challenge_formula():
    """Against the competition's own computation (scikit-learn's standardised partial AUC,
    rescaled), over two updates."""
    from sklearn.metrics import roc_auc_score

    from lightning_modules.metrics.partial_auc import PartialAUROC

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.clip(0.3 * y + rng.uniform(0, 1, 300), 0, 1)
    metric = PartialAUROC()
    probs = torch.tensor(np.stack([1 - p, p], 1), dtype=torch.float32)
    metric.update(probs[:120], torch.tensor(y[:120]))
    metric.update(probs[120:], torch.tensor(y[120:]))
    s = roc_auc_score(1 - y, 1 - probs[:, 1].double().numpy(), max_fpr=0.2)
    expected = 0.5 * 0.2**2 + (0.2 - 0.5 * 0.2**2) / 0.5 * (s - 0.5)
    assert float(metric.compute()) == pytest.approx(expected, abs=1e-6)
    empty = PartialAUROC()
    empty.update(probs[:5], torch.zeros(5, dtype=torch.long))
    assert torch.isnan(empty.compute())


def test_partial_auc_only_for_binary_tasks_and_not_in_the_scalar_collections():
    from lightning_modules.modules.scores import ClassificationScores

    six = ClassificationScores(6, list("abcdef"))
    assert six.partial_auc("val") is None and six.partial_auc("test") is None and len(six.pauc) == 0
    two = ClassificationScores(2, ["benign", "malignant"])
    assert two.partial_auc("train") is None and two.partial_auc("val") is not None
    assert set(two.scalars_of("val").keys()) == set(six.scalars_of("val").keys())  # nothing else changes
    assert two.state_dict().keys() == ClassificationScores(2, ["benign", "malignant"]).state_dict().keys()
    assert not any("pauc" in key for key in two.state_dict())  # checkpoints keep their keys
