"""A new architecture is one network file plus one YAML: these networks live only here, and no
LightningModule subclass is written for them."""

from __future__ import annotations

import csv
import json

import torch
import torch.nn.functional as F
from torch import nn

from experiments.train import main as train
from tests.test_experiments import quick_args


class ToyAttentionNet(nn.Module):
    """One strided convolution, a softmax attention over its grid, a linear head on
    ``[attended feature, metadata]``: enough to declare attention (``AttentionNet``)."""

    attention_names = ("toy",)

    def __init__(self, num_classes: int, meta_dim: int, width: int = 8):
        super().__init__()
        self.features = nn.Conv2d(3, width, kernel_size=3, stride=4, padding=1)
        self.score = nn.Conv2d(width, 1, kernel_size=1)
        self.head = nn.Linear(width + meta_dim, num_classes)

    def forward_with_attention(self, image: torch.Tensor, meta: torch.Tensor):
        features = F.relu(self.features(image))
        b, _, h, w = features.shape
        attention = self.score(features).flatten(1).softmax(dim=1).view(b, h, w)
        attended = (features * attention[:, None]).sum(dim=(2, 3))
        return self.head(torch.cat([attended, meta.to(attended.dtype)], dim=1)), {"toy": attention}

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return self.forward_with_attention(image, meta)[0]


class ToyPlainNet(nn.Module):
    """Logits from the mean colour and the metadata: no capability beyond classifying."""

    def __init__(self, num_classes: int, meta_dim: int):
        super().__init__()
        self.head = nn.Linear(3 + meta_dim, num_classes)

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([image.mean(dim=(2, 3)), meta.to(image.dtype)], dim=1))


def toy_config(tmp_path, net: str) -> str:
    path = tmp_path / f"{net}.yaml"
    path.write_text(f"""
run:
  name: toy
data:
  load_masks: true
model:
  class_path: lightning_modules.modules.classifier.LesionClassifier
  init_args:
    net:
      class_path: tests.test_new_architecture.{net}
""")
    return str(path)


def test_a_network_with_attention_trains_and_gets_its_panels(tmp_path, synthetic_cache):
    run_dir = train(quick_args(toy_config(tmp_path, "ToyAttentionNet"), tmp_path, synthetic_cache,
                               "--trainer.fast_dev_run=true", "--model.init_args.width=4"))  # fmt: skip
    test = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert 0.0 <= test["auroc"] <= 1.0 and 0.0 <= test["bacc"] <= 1.0
    assert 0.0 <= test["lesion_mass_toy"] <= 1.0  # attention scored against the lesion masks
    assert "gradcam_lesion_mass" not in test  # it names no Grad-CAM target
    assert (run_dir / "attention" / "epoch000_toy.png").stat().st_size > 0
    rows = list(csv.DictReader(open(run_dir / "predictions.csv")))
    assert len(rows) == test["n_images"] > 0 and "prob_SCC" in rows[0]


def test_a_plain_network_trains_without_attention_panels(tmp_path, synthetic_cache):
    run_dir = train(quick_args(toy_config(tmp_path, "ToyPlainNet"), tmp_path, synthetic_cache,
                               "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
                               "--trainer.limit_val_batches=1", "--run.wandb=false"))  # fmt: skip
    test = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert 0.0 <= test["auroc"] <= 1.0 and not any(k.startswith("lesion_mass") for k in test)
    assert not (run_dir / "attention").exists()
    saved = (run_dir / "config.yaml").read_text()
    assert "class_path: tests.test_new_architecture.ToyPlainNet" in saved

    from experiments.predict import predict

    best = next((run_dir / "checkpoints").glob("best-*.ckpt"))
    out = predict(str(best), split="test", out=str(tmp_path / "p.csv"), num_workers=0, accelerator="cpu")
    fresh = {r["image_id"]: r for r in csv.DictReader(open(out))}
    for row in csv.DictReader(open(run_dir / "predictions.csv")):
        assert abs(float(fresh[row["image_id"]]["prob_ACK"]) - float(row["prob_ACK"])) < 1e-5

    # The mean colour does not change under flips and transposes: TTA changes nothing; an ensemble
    # of one checkpoint twice is that checkpoint; checkpoints of other classes are refused.
    read = lambda p: {r["image_id"]: [float(r[f"prob_{c}"]) for c in ("ACK", "BCC", "SCC")] for r in csv.DictReader(open(p))}  # noqa: E731
    plain = read(out)
    for kwargs in ({"tta": 8}, {"ckpt": [str(best), str(best)]}):
        args = {"ckpt": str(best), "split": "test", "num_workers": 0, "accelerator": "cpu", **kwargs}
        other = read(predict(**args, out=str(tmp_path / f"{len(kwargs['ckpt']) if 'ckpt' in kwargs else 'tta'}.csv")))
        assert other.keys() == plain.keys()
        # 1e-5: a flipped image's mean sums the same pixels in another order (float32 rounding).
        assert all(abs(a - b) < 1e-5 for k in plain for a, b in zip(plain[k], other[k]))
    state = torch.load(best, map_location="cpu", weights_only=True)
    state["LesionDataModule"]["class_names"] = ["a", "b", "c", "d", "e", "f"]
    renamed = tmp_path / "renamed.ckpt"
    torch.save(state, renamed)
    import pytest

    with pytest.raises(ValueError, match=f"cannot average {best} and {renamed}: they predict other classes"):
        predict([str(best), str(renamed)], split="test", num_workers=0, accelerator="cpu")


def test_dihedral_views_are_the_eight_symmetries_of_the_square():
    from lightning_modules.modules.ensemble import dihedral_views

    image = torch.arange(9.0).view(1, 1, 3, 3)
    views = dihedral_views(image, 8)
    rotations = [torch.rot90(image, k, dims=(-2, -1)) for k in range(4)]
    expected = rotations + [r.transpose(-2, -1) for r in rotations]
    key = lambda t: tuple(t.flatten().tolist())  # noqa: E731
    assert len({key(v) for v in views}) == 8 and {key(v) for v in views} == {key(e) for e in expected}
    assert [key(v) for v in dihedral_views(image, 2)] == [key(image), key(image.flip(-1))]
