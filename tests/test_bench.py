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
    assert row["same_prototypes_as_reference"] is True  # our search finds the reference loop's patches
    for key in ("forward_images_per_s", "push_images_per_s", "reference_push_images_per_s", "pictures_per_s"):
        assert row[key] > 0, key


def test_gpu_bench_skips_without_a_gpu_and_measures_on_the_cpu(capsys, one_thread):
    import torch

    from experiments import bench_gpu

    if not torch.cuda.is_available():
        assert bench_gpu.main([]) == []
        assert "no CUDA device here; skipped" in capsys.readouterr().out
    rows = bench_gpu.main(["--device", "cpu", "--configs", "metablock", "--image-size", "32", "--batch-size", "4",
                           "--steps", "4", "--warmup", "1"])
    assert [(r["config"], r["variant"]) for r in rows] == [("metablock", "fp32"), ("metablock", "bf16-mixed")]
    assert all(r["images_per_s"] > 0 for r in rows)
