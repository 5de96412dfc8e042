"""Backbones, the fusion classifier's three switches, schedules, and checkpoint safety."""

from functools import partial

import lightning
import pytest
import timm
import torch

from lightning_modules.modules.classifier import LesionClassifier
from lightning_modules.nets.backbones import create_backbone, feature_channels, feature_shapes
from lightning_modules.nets.fusion_classifier import FusionClassifier
from lightning_modules.training.schedules import WarmupCosine

FUSION = partial(FusionClassifier, backbone="test_resnet")


@pytest.mark.parametrize("name", ["resnet10t", "test_efficientnet", "test_convnext"])
def test_backbone_feature_info_matches_real_maps(name):
    backbone = create_backbone(name)
    shapes = feature_shapes(backbone, 64)
    assert [s[0] for s in shapes] == feature_channels(backbone)
    for (c, h, w), reduction in zip(shapes, backbone.feature_info.reduction()):
        assert h == w == 64 // reduction


def test_backbone_loads_a_local_weights_file(tmp_path):
    source = timm.create_model("resnet10t", pretrained=False)
    path = tmp_path / "resnet10t.pth"
    torch.save(source.state_dict(), path)
    backbone = create_backbone("resnet10t", weights_path=str(path))
    assert torch.equal(backbone.conv1[0].weight, source.conv1[0].weight)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_backbone("resnet10t", weights_path=str(tmp_path / "missing.pth"))


def test_head_features_are_the_final_map_after_the_head_convolution(tmp_path):
    """``head_features``: timm's ``forward_features`` map (test_efficientnet's head convolution
    widens its last stage), with a matching ``feature_info``; local weights load the same way."""
    stage = create_backbone("test_efficientnet", out_indices=(-1,))
    final = create_backbone("test_efficientnet", head_features=True)
    (c, h, w), = feature_shapes(final, 64)
    assert feature_channels(final) == [c] == [final.model.num_features] and c > feature_channels(stage)[0]
    assert h == w == 64 // final.feature_info.reduction()[-1]
    source = timm.create_model("resnet10t", pretrained=False)
    torch.save(source.state_dict(), tmp_path / "resnet10t.pth")
    loaded = create_backbone("resnet10t", weights_path=str(tmp_path / "resnet10t.pth"), head_features=True)
    assert torch.equal(loaded.model.conv1[0].weight, source.conv1[0].weight)
    with pytest.raises(ValueError, match="out_indices"):
        create_backbone("resnet10t", out_indices=(1,), head_features=True)


def test_fusion_switches():
    torch.manual_seed(0)
    image, meta = torch.randn(3, 3, 32, 32), torch.randn(3, 7)
    other_meta = torch.randn(3, 7)
    for fusion in ("none", "concat", "metablock"):
        net = FusionClassifier(4, 7, backbone="test_resnet", fusion=fusion).eval()
        with torch.no_grad():
            a, b = net(image, meta), net(image, other_meta)
        assert a.shape == (3, 4)
        # image-only ignores the metadata; both fusions use it
        assert torch.allclose(a, b) == (fusion == "none"), fusion
    concat = FusionClassifier(4, 7, backbone="test_resnet", fusion="concat")
    assert concat.classifier.in_features == feature_channels(concat.backbone)[-1] + 7
    with pytest.raises(ValueError, match="needs metadata"):
        FusionClassifier(4, 0, backbone="test_resnet", fusion="metablock")
    with pytest.raises(ValueError, match="fusion must be"):
        FusionClassifier(4, 3, backbone="test_resnet", fusion="gate")


def test_reducer_and_batch_of_one():
    net = FusionClassifier(3, 2, backbone="test_resnet", fusion="metablock", reducer_dim=16).eval()
    assert net(torch.randn(1, 3, 40, 40), torch.randn(1, 2)).shape == (1, 3)


def test_warmup_cosine_schedule_values():
    """The rate each of 5 epochs trains at: warm-up 1/2, then a cosine from 1 at epoch 1 to
    ``min_factor`` at the last epoch (4): 0.1 + 0.9 * (1 + cos(pi * k / 3)) / 2 for k = 0..3."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupCosine(opt, warmup_epochs=1, total_epochs=5, min_factor=0.1)
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.5, 1.0, 0.775, 0.325, 0.1], abs=1e-12)
    assert lrs[-1] == 0.1  # exactly the floor
    single = WarmupCosine(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), warmup_epochs=1,
                          total_epochs=2)  # fmt: skip
    assert [single.factor(e) for e in range(2)] == [0.5, 1.0]  # one epoch after warm-up: no room to decay


def test_hand_built_module_checkpoint_is_weights_only(tmp_path):
    """A module built in Python (the network a callable) saves plain values only; Lightning's
    ``load_from_checkpoint`` rebuilds it when given the network again. (Runs of the CLI store the
    network's config too: ``test_experiments`` loads those without it.)"""
    module = LesionClassifier(net=FUSION, num_classes=3, meta_dim=4, class_names=["a", "b", "c"],
                              class_weights=[1.0, 2.0, 3.0])
    assert "net" not in module.hparams and module.hparams.class_weights == [1.0, 2.0, 3.0]
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                  "pytorch-lightning_version": lightning.__version__}  # fmt: skip
    path = tmp_path / "m.ckpt"
    torch.save(checkpoint, path)
    torch.load(path, weights_only=True)
    rebuilt = LesionClassifier.load_from_checkpoint(path, weights_only=True, net=FUSION)
    x, m = torch.randn(2, 3, 32, 32), torch.randn(2, 4)
    assert torch.allclose(rebuilt.eval()(x, m), module.eval()(x, m))


def test_warmup_cosine_follows_a_longer_resumed_run():
    """The run length is not part of the scheduler's saved state: resuming with more epochs
    stretches the schedule instead of keeping the floor learning rate."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupCosine(opt, warmup_epochs=0, min_factor=0.0)
    sched.run_epochs = 2
    for _ in range(2):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    resumed = WarmupCosine(opt2, warmup_epochs=0, min_factor=0.0)
    resumed.run_epochs = 4
    resumed.load_state_dict(sched.state_dict())
    assert resumed.run_epochs == 4 and resumed.factor(2) == pytest.approx(0.25)  # (1 + cos(2 pi / 3)) / 2
    assert resumed.factor(3) == 0.0  # the longer run's last epoch is at the floor


def test_plateau_scheduler_must_match_the_monitor():
    module = LesionClassifier(net=FUSION, num_classes=3, meta_dim=2,
                              scheduler=partial(torch.optim.lr_scheduler.ReduceLROnPlateau, factor=0.1))
    with pytest.raises(ValueError, match="mode: max"):
        module.configure_optimizers()
    module.scheduler_factory = partial(torch.optim.lr_scheduler.ReduceLROnPlateau, mode="max")
    config = module.configure_optimizers()
    assert config["lr_scheduler"]["monitor"] == "val/auroc" and module.monitor_mode == "max"
    assert LesionClassifier(net=FUSION, num_classes=3, meta_dim=2, monitor="val/loss").monitor_mode == "min"


def test_normalisation_mismatch_with_the_pretrained_weights():
    from datamodules.transforms import IMAGENET_MEAN, IMAGENET_STD
    from lightning_modules.nets.backbones import normalisation_mismatch

    assert normalisation_mismatch("resnet10t", IMAGENET_MEAN, IMAGENET_STD) is None
    message = normalisation_mismatch("inception_v3.tf_in1k", IMAGENET_MEAN, IMAGENET_STD)
    assert "mean [0.5, 0.5, 0.5]" in message and "--data.normalize_mean='[0.5, 0.5, 0.5]'" in message
    assert normalisation_mismatch("inception_v3.tf_in1k", (0.5,) * 3, (0.5,) * 3) is None


def test_pretrained_backbone_with_other_normalisation_warns_at_start(tmp_path, synthetic_cache):
    """The CLI compares the network's pretrained backbone with the data's normalisation before
    training (weights from a local file; the short option name reaches the network)."""
    from safetensors.torch import save_file

    from experiments.cli import DermCLI
    from tests.test_experiments import REPO, quick_args

    weights = tmp_path / "resnet10t.safetensors"
    save_file(timm.create_model("resnet10t").state_dict(), str(weights))
    args = quick_args(REPO / "experiments" / "metablock.yaml", tmp_path, synthetic_cache, "--run.wandb=false",
                      f"--model.init_args.weights_path={weights}", "--data.normalize_mean=[0.5, 0.5, 0.5]",
                      "--data.normalize_std=[0.5, 0.5, 0.5]")  # fmt: skip
    with pytest.warns(UserWarning, match="backbone resnet10t was pretrained .* mean \\[0.485"):
        cli = DermCLI(args=args)
    assert cli.config.model.init_args.net.init_args.weights_path == str(weights)


def test_channels_last_and_compile_change_no_result_and_no_checkpoint_key():
    """The GPU options (``--model.init_args.channels_last`` / ``compile``) are memory layout and
    compilation only: the same weights give the same logits, and the state dict keeps its keys
    (``nn.Module.compile`` compiles in place, unlike ``torch.compile(module)``'s ``_orig_mod``)."""
    torch.manual_seed(0)
    plain = LesionClassifier(net=FUSION, num_classes=3, meta_dim=2).eval()
    fast = LesionClassifier(net=FUSION, num_classes=3, meta_dim=2, channels_last=True, compile=True).eval()
    fast.load_state_dict(plain.state_dict())
    fast.configure_model()
    fast.configure_model()  # Lightning may call it again (resume): compiled once
    assert list(fast.state_dict()) == list(plain.state_dict())
    assert fast.net._compiled_call_impl is not None and plain.net._compiled_call_impl is None
    conv = next(m for m in fast.net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    batch = fast.on_after_batch_transfer({"image": torch.randn(2, 3, 32, 32), "meta": torch.randn(2, 2)}, 0)
    assert batch["image"].is_contiguous(memory_format=torch.channels_last)
    fast.net._compiled_call_impl = None  # run eagerly here: compiling needs a C++ toolchain, not CPU tests
    with torch.no_grad():
        assert torch.allclose(fast(batch["image"], batch["meta"]), plain(batch["image"].contiguous(), batch["meta"]),
                              atol=1e-5)
