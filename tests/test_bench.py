"""``make bench``'s full-resolution data path measures what it says: every source and cache it
names is timed, and each cache really is the file kind and size it is labelled with (rates are
never asserted: machines are noisy)."""

from __future__ import annotations

import json

from experiments import bench


def test_full_resolution_rates_time_originals_and_both_cache_formats(tmp_path, one_thread):
    rates = bench.full_resolution_rates(tmp_path, sizes=(32,), shapes=((96, 64),), files=1, images=2)
    assert set(rates) == {"96x64@32", "jpeg 32 cache 96x64@32", "png 32 cache 96x64@32"}
    assert all(rate > 0 for rate in rates.values())
    for image_format, suffix in (("jpeg", ".jpg"), ("png", ".png")):
        (manifest,) = (tmp_path / f"cache96-{image_format}").rglob("manifest.json")
        content = json.loads(manifest.read_text())
        assert content["format"] == image_format and content["size"] == 32
        assert {entry["cached"][-4:] for entry in content["files"].values()} == {suffix}


def test_push_bench_compares_the_same_push_on_both_sides(one_thread):
    from experiments import bench_push

    rows = bench_push.main(["--backbone", "resnet10t", "--images", "12", "--image-size", "32", "--batch-size", "6",
                            "--classes", "3", "--prototypes-per-class", "2", "--prototype-dim", "8",
                            "--repeats", "1", "--pictures", "--device", "cpu"])
    (row,) = rows
    assert row["prototypes"] == 6 and row["images"] == 12
    assert row["same_prototypes_as_reference"] is True  # our search finds the stand-in's patches
    for key in ("forward_images_per_s", "push_images_per_s", "reference_push_images_per_s", "pictures_per_s",
                "after_forward_ms", "reference_after_forward_ms"):
        assert row[key] > 0, key


def test_push_stand_in_keeps_the_references_boxes():
    """The stand-in for the reference push computes, per improvement, the receptive-field box and
    the percentile box of the upsampled map before projection: the same boxes as our push's
    records (``before`` activation boxes, the module's default)."""
    import copy
    from types import SimpleNamespace

    import torch

    from experiments import bench_push
    from lightning_modules.nets.protopnet import ProtoPNet

    torch.manual_seed(0)
    net = ProtoPNet(3, backbone="test_resnet", prototypes_per_class=4, prototype_dim=8).eval()
    batches = bench_push.synthetic_batches(12, 6, 64, 3)
    with torch.no_grad():
        outputs = [(o.distances, o.features) for o in (net(b["image"]) for b in batches)]
    push = bench_push.ReferencePush(net, bench_push.reference_rf_info(net, 64))
    for batch, (distances, features) in zip(batches, outputs):
        push.update_batch(batch["image"], batch["label"], distances, features)
    records = [SimpleNamespace(image_id=f"i{i}", image_path="x", original_path="x", label=i % 3) for i in range(12)]
    result, described, _ = bench_push.our_push(copy.deepcopy(net), batches, torch.device("cpu"), 64, records,
                                               ["a", "b", "c"], outputs)  # fmt: skip
    assert torch.equal(push.finish(torch.device("cpu")).image_index, result.image_index)
    assert all(e["activation_box"] == push.proto_bound_boxes[e["prototype"], 1:5].tolist() for e in described)
    assert all(e["receptive_field_box"] == push.proto_rf_boxes[e["prototype"], 1:5].tolist() for e in described)


def test_gpu_bench_skips_without_a_gpu_and_measures_on_the_cpu(capsys, one_thread):
    import torch

    from experiments import bench_gpu

    if not torch.cuda.is_available():
        assert bench_gpu.main([]) == []
        assert "no CUDA device here; skipped" in capsys.readouterr().out
    rows = bench_gpu.main(["--device", "cpu", "--configs", "metablock", "--image-size", "32", "--batch-size", "4",
                           "--steps", "4", "--warmup", "1", "--push-backbone", "resnet10t", "--push-images", "8",
                           "--push-classes", "2"])  # fmt: skip
    assert [(r["config"], r["variant"]) for r in rows] == [("metablock", "fp32"), ("metablock", "bf16-mixed"),
                                                           ("protopnet push", "fp32")]  # fmt: skip
    assert all(r["images_per_s"] > 0 for r in rows)
    push = rows[-1]
    assert push["prototypes"] == 20 and push["same_prototypes_as_reference"] is True
    assert push["after_forward_ms"] > 0 and push["reference_after_forward_ms"] > 0
    assert "push (resnet10t, 20 prototypes, 8 images at 32px, fp32): ours" in capsys.readouterr().out
