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


def test_isic2024_bench_generates_the_real_layout_and_measures_each_step(tmp_path, one_thread):
    """The generated table is a valid ISIC 2024 download (55 columns, every id an HDF5 image, the
    real proportions); the setup, image and preprocess measurements report what they name."""
    import csv

    import h5py

    from datamodules.sources import isic2024, read_table
    from experiments import bench_isic2024 as bench24

    folder = bench24.generate(tmp_path / "data", 2_000, distinct=3)
    with open(folder / "train-metadata.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == isic2024.TRAIN_COLUMNS and {len(r) for r in rows} == {55} and len(rows) == 2_001
    assert any("," in r[isic2024.TRAIN_COLUMNS.index("attribution")] for r in rows[1:])  # hospitals with commas, quoted
    table = read_table("isic2024", folder)
    assert len(table.records) == 2_000 and sum(r.label for r in table.records) == 10
    assert any(r.meta["sex"] is None for r in table.records)
    assert any(r.meta["age_approx"] is None for r in table.records)
    with h5py.File(folder / "train-image.hdf5", "r") as handle:
        assert len(handle) == 2_000
        assert handle["ISIC_0000005"][()] == handle["ISIC_0000002"][()]  # a hard link to one of 3 crops
    setup = bench24.setup_child(str(folder), {"negatives_per_epoch": 50})
    assert setup["rows"] == 2_000 and 50 < setup["epoch_samples"] <= 60  # the train split's positives + 50
    for key in ("read_s", "split_s", "encode_s", "sampler_s", "epoch_keys_s", "full_epoch_sampler_s"):
        assert 0 <= setup[key] <= setup["setup_s"] + setup["full_epoch_sampler_s"] + setup["epoch_keys_s"], key
    assert setup["peak_rss_gb"] > 0
    assert setup["full_epoch_samples"] == setup["train"]
    rates = bench24.image_rates(tmp_path / "crops", n=4, image_size=32)
    assert set(rates) == {"hdf5 decode", "jpeg decode", "hdf5 item@32", "jpeg item@32"}
    assert all(v > 0 for v in rates.values())
    built = bench24.preprocess_rates(tmp_path, images=3, shape=(64, 48), size=16)
    assert set(built) == {1, 2}
    assert all(row["images_per_s"] > 0 and row["cpu_ms_per_image"] > 0 for row in built.values())
    one, two = (sorted((tmp_path / f"cache-{n}").rglob("*.jpg")) for n in (1, 2))
    assert [p.read_bytes() for p in one] == [p.read_bytes() for p in two] and len(one) == 3
