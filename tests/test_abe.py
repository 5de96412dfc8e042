"""ABE-M: losses by hand, Recall@K on a hand-made embedding set, the P x K sampler, the network."""

import pytest
import torch

from datamodules.samplers import ClassBalancedBatchSampler
from lightning_modules.training.losses import contrastive_loss, divergence_loss
from lightning_modules.nets.abe import ABE, split_backbone
from lightning_modules.nets.backbones import create_backbone
from lightning_modules.metrics.retrieval import knn_probabilities, recall_at_k


def test_contrastive_loss_by_hand():
    e = torch.tensor([[0.0, 0.0], [0.6, 0.0], [0.0, 2.0], [3.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # positive pairs: (0,1) d2 = 0.36; (2,3) d2 = 9 + 4 = 13 -> mean 6.68
    # negative pairs with margin 1: (0,2) 4, (0,3) 9, (1,2) 0.36+4, (1,3) 5.76 -> all beyond the margin: 0
    assert contrastive_loss(e, labels, margin=1.0).item() == pytest.approx((0.36 + 13) / 2)
    # margin 5: relu(5 - [4, 9, 4.36, 5.76]) = [1, 0, 0.64, 0] -> mean 0.41
    assert contrastive_loss(e, labels, margin=5.0).item() == pytest.approx((0.36 + 13) / 2 + 0.41)


def test_divergence_loss_pairs_learners_of_the_same_image_only():
    # image 0: learners at distance^2 0.25 -> each ordered pair relu(1 - 0.25) = 0.75
    # image 1: learners 4 apart -> 0. Image 0's learner 0 equals image 1's learner 0: no pair across images.
    x = torch.tensor([[[0.0, 0.0], [0.5, 0.0]], [[0.0, 0.0], [2.0, 0.0]]])
    assert divergence_loss(x, margin=1.0).item() == pytest.approx((0.75 + 0.75 + 0 + 0) / 4)
    # learners far apart within each image, but image 0's learners sit next to image 1's: a version
    # that paired different images would see distance^2 0.01 and a loss near 0.99
    apart = torch.tensor([[[0.0, 0.0], [3.0, 0.0]], [[0.1, 0.0], [3.1, 0.0]]])
    assert divergence_loss(apart, 1.0).item() == 0.0
    assert divergence_loss(x[:, :1]).item() == 0.0


def test_recall_at_k_on_a_hand_made_set():
    # 1-D embeddings: items 0,1 class A close together; 2 (class B) near 0; 3,4 class B far away.
    e = torch.tensor([[0.0], [1.0], [0.4], [10.0], [11.0]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    r = recall_at_k(e, labels, ks=(1, 2))
    # nearest of 0 is 2 (B): miss; of 1: 2 (0.6) vs 0 (1.0) -> miss; of 2: 0 -> miss; 3 -> 4 hit; 4 -> 3 hit
    assert r[1] == pytest.approx(2 / 5)
    # two nearest: 0 -> {2, 1} hit; 1 -> {2, 0} hit; 2 -> {0, 1} miss; 3, 4 hit
    assert r[2] == pytest.approx(4 / 5)
    # another set: A at 0, 1; B at 5.8, 10, 11. Every nearest neighbour shares the class...
    e = torch.tensor([[0.0], [1.0], [5.8], [10.0], [11.0]])
    assert recall_at_k(e, labels, ks=(1,))[1] == pytest.approx(1.0)
    # ...but if 5.8 and 10 are photos of one lesion, 5.8 may not retrieve 10: its nearest is 1 (A)
    groups = torch.tensor([0, 1, 2, 2, 3])
    assert recall_at_k(e, labels, groups, ks=(1,))[1] == pytest.approx(4 / 5)


def test_recall_at_k_needs_more_than_k_images():
    """On n images each query has n - 1 others: Recall@K for K >= n would be Recall@(n - 1) under
    another name, so it is NaN (with a warning naming K and the split's size)."""
    import math
    import warnings

    e = torch.tensor([[0.0], [1.0], [5.0], [6.0]])
    labels = torch.tensor([0, 1, 0, 1])  # every nearest neighbour is of the other class
    with pytest.warns(UserWarning, match=r"Recall@K for K in \[4, 8\] needs more than K images, and the val split has 4"):
        r = recall_at_k(e, labels, ks=(1, 3, 4, 8), name="the val split")
    assert r[1] == 0.0 and r[3] == 1.0 and math.isnan(r[4]) and math.isnan(r[8])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert recall_at_k(e, labels, ks=(1, 3)) == {1: 0.0, 3: 1.0}


def test_a_nan_test_metric_is_null_in_metrics_json(tmp_path):
    """Recall@8 of a test split of 8 images is logged as NaN; metrics.json stays valid JSON."""
    import json
    from types import SimpleNamespace

    import numpy as np

    from lightning_modules.callbacks.results_writer import ResultsWriter

    writer = ResultsWriter(str(tmp_path))
    writer._gathered = {"index": np.arange(4), "probs": np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]]),
                        "label": np.array([0, 1, 0, 1])}  # fmt: skip
    trainer = SimpleNamespace(is_global_zero=True, checkpoint_callback=None, ckpt_path=None, datamodule=None, loggers=[],
                              default_root_dir=str(tmp_path),
                              callback_metrics={"test/recall@1": torch.tensor(0.5), "test/recall@8": torch.tensor(float("nan"))})  # fmt: skip
    module = SimpleNamespace(class_names=["a", "b"], parameters=lambda: iter([torch.zeros(3)]))
    writer.on_test_end(trainer, module)
    test = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))["test"]
    assert test["recall@1"] == 0.5 and test["recall@8"] is None and test["auroc"] == 1.0


def test_knn_probabilities():
    bank = torch.tensor([[0.0], [1.0], [5.0]])
    probs = knn_probabilities(torch.tensor([[0.1]]), bank, torch.tensor([0, 0, 1]), num_classes=2, k=2)
    assert probs[0, 0].item() == pytest.approx(1.0) and probs.sum().item() == pytest.approx(1.0)
    # query 4.0: neighbours 5.0 (class 1, distance 1) and 1.0 (class 0, distance 3): votes 1 : 1/3
    probs = knn_probabilities(torch.tensor([[4.0]]), bank, torch.tensor([0, 0, 1]), num_classes=2, k=2)
    assert probs[0, 1].item() == pytest.approx(1.0 / (1.0 + 1 / 3), rel=1e-4)


def test_pk_sampler_batches():
    labels = [0] * 10 + [1] * 3 + [2] * 6 + [3] * 8
    sampler = ClassBalancedBatchSampler(labels, classes_per_batch=3, images_per_class=4, num_batches=5, seed=1)
    batches = [[key.index for key in batch] for batch in sampler]  # keys: (index, augmentation seed)
    assert len(batches) == 5
    for batch in batches:
        assert len(batch) == 12
        classes = [labels[i] for i in batch]
        assert len(set(classes)) == 3 and all(classes.count(c) == 4 for c in set(classes))
        for c in set(classes):  # without replacement where the class has enough images
            chosen = [i for i in batch if labels[i] == c]
            if labels.count(c) >= 4:
                assert len(set(chosen)) == 4
    assert batches == [[key.index for key in batch] for batch in sampler]  # same epoch, same batches
    sampler.set_epoch(1)
    assert batches != [[key.index for key in batch] for batch in sampler]



def test_pk_sampler_with_the_distributed_sampler_lightning_injects():
    """Under DDP Lightning re-creates every BatchSampler subclass with ``sampler=DistributedSampler``
    (the end-to-end path runs in the slow DDP test); each rank then draws its own half of the
    batches, and the epoch set on that sampler moves the stream on."""
    from torch.utils.data import DistributedSampler

    labels = [0] * 10 + [1] * 3 + [2] * 6 + [3] * 8
    samplers = [ClassBalancedBatchSampler(labels, 3, 4, 6, seed=1,
                                          sampler=DistributedSampler(range(len(labels)), num_replicas=2, rank=rank,
                                                                     shuffle=True, seed=0))
                for rank in (0, 1)]  # fmt: skip
    assert [(s.rank, s.world_size, len(s)) for s in samplers] == [(0, 2, 3), (1, 2, 3)]
    assert all(len(set(labels[k.index] for k in batch)) == 3 for s in samplers for batch in s)
    first = [list(s) for s in samplers]
    assert first[0] != first[1]
    samplers[0].sampler.set_epoch(1)  # what Lightning's fit loop does at each epoch start
    assert list(samplers[0]) != first[0]


def test_pk_sampler_follows_the_epoch_a_real_fit_sets():
    """Lightning sets the epoch on ``batch_sampler.sampler``: in a real ``Trainer.fit`` the batches
    of epoch 1 differ from epoch 0's."""
    import lightning as L
    from torch.utils.data import DataLoader

    labels = [0] * 10 + [1] * 3 + [2] * 6 + [3] * 8

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.seen: dict[int, list] = {}

        def training_step(self, batch, batch_idx):
            self.seen.setdefault(self.current_epoch, []).append(batch.tolist())
            return (self.weight * 0).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class Indices(torch.utils.data.Dataset):  # the sampler yields (index, augmentation seed) keys
        def __getitem__(self, key):
            return key.index

    loader = DataLoader(Indices(), batch_sampler=ClassBalancedBatchSampler(labels, 3, 4, 5, seed=1))
    module = Recorder()
    L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False).fit(module, train_dataloaders=loader)  # fmt: skip
    assert len(module.seen[0]) == len(module.seen[1]) == 5
    assert module.seen[0] != module.seen[1]


@pytest.mark.parametrize("backbone", ["resnet10t", "efficientnet_b0", "vgg11_bn"])
def test_split_backbone_reproduces_the_backbone(backbone):
    full = create_backbone(backbone).eval()
    s, g, _, _ = split_backbone(full, -2)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        maps = full(x)
        assert torch.allclose(s(x), maps[-2], atol=1e-5)
        assert torch.allclose(g(s(x)), maps[-1], atol=1e-5)


def test_abe_learners_and_heads():
    torch.manual_seed(0)
    net = ABE(backbone="resnet10t", num_learners=4, embedding_dim=64).eval()
    emb, maps = net.forward_with_attention(torch.randn(3, 3, 64, 64))
    assert emb.shape == (3, 4, 16)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3, 4), atol=1e-5)
    assert set(maps) == {f"learner{m}" for m in range(4)} and maps["learner0"].shape == (3, 4, 4)
    assert not torch.allclose(emb[:, 0], emb[:, 1])  # different attention modules, different learners
    heads = ABE(backbone="resnet10t", num_learners=4, embedding_dim=64, ensemble="heads")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(heads) > 2 * count(net)  # M-heads copies G; ABE-M shares it


def test_m_heads_are_different_learners():
    """Each head copies G but owns an independently initialised embedding layer: identical heads
    would get identical gradients and stay one learner M times (a bug this guards against)."""
    torch.manual_seed(0)
    heads = ABE(backbone="resnet10t", num_learners=3, embedding_dim=48, ensemble="heads")
    first, second = heads.heads[0], heads.heads[1]
    assert all(torch.equal(a, b) for a, b in zip(first[0].parameters(), second[0].parameters()))  # G copied
    assert not torch.equal(first[-1].weight, second[-1].weight)  # own embedding layers
    images, labels = torch.randn(8, 3, 64, 64), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    optimizer = torch.optim.SGD(heads.parameters(), lr=0.5)
    for _ in range(2):
        loss = sum(contrastive_loss(e, labels) for e in heads(images).unbind(1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert not torch.allclose(next(first[0].parameters()), next(second[0].parameters()))  # the G's diverge too
    heads.eval()
    embeddings = heads(images)
    assert not torch.allclose(embeddings[:, 0], embeddings[:, 1], atol=1e-3)
    with pytest.raises(ValueError, match="divisible"):
        ABE(backbone="resnet10t", num_learners=3, embedding_dim=64)


def test_divergence_sum_is_the_mean_times_the_pairs():
    torch.manual_seed(0)
    learners = torch.nn.functional.normalize(torch.randn(5, 3, 4), dim=-1)
    mean, total = divergence_loss(learners, 1.0), divergence_loss(learners, 1.0, reduction="sum")
    assert float(total) == pytest.approx(float(mean) * 5 * 3 * 2, rel=1e-5)
