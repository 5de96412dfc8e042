"""The resized-image cache (``datamodules/image_cache.py``, ``make preprocess``): what the datamodule
reads with it equals (or, when it downscales, nearly equals) what it reads without; a stale or
partial cache is refused or ignored, never half-used."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SMALL_SYNTHETIC
from dataset_writers import write_isic2020, write_pad_ufes20
from datamodules import image_cache
from datamodules.lesion_datamodule import LesionDataModule
from datamodules.preprocess import main as preprocess_main
from datamodules.preprocess import preprocess_command
from datamodules.records import DatasetError
from datamodules.sources import read_table

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cache_root(tmp_path, monkeypatch) -> Path:
    """The datamodule looks in ``$DERMATTN_CACHE``: point it at a fresh folder."""
    root = tmp_path / "cache"
    monkeypatch.setenv("DERMATTN_CACHE", str(root))
    return root


def synthetic_dm(synthetic_cache, image_cache: bool, **overrides) -> LesionDataModule:
    kwargs = dict(dataset="synthetic", data_dir=str(synthetic_cache), source_options=dict(SMALL_SYNTHETIC),
                  image_size=32, batch_size=16, num_workers=0, image_cache=image_cache)
    kwargs.update(overrides)
    return LesionDataModule(**kwargs)


def synthetic_table(synthetic_cache):
    return read_table("synthetic", synthetic_cache, **SMALL_SYNTHETIC)


def eval_images(dm: LesionDataModule) -> torch.Tensor:
    return torch.cat([batch["image"] for batch in dm.eval_dataloader("train")])


def first_training_batch(dm: LesionDataModule) -> dict:
    torch.manual_seed(0)
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def test_lossless_cache_without_downscaling_is_byte_identical(synthetic_cache, cache_root, one_thread):
    table = synthetic_table(synthetic_cache)
    folder = image_cache.build_cache(table, SMALL_SYNTHETIC["max_size"], cache_root,  # no image is larger
                                     image_format="png")
    assert (folder / "manifest.json").is_file()
    assert folder.parent == cache_root / "resized" and folder.name.startswith("synthetic-")
    assert folder.name.endswith(f"-{SMALL_SYNTHETIC['max_size']}")

    cached = synthetic_dm(synthetic_cache, True, load_masks=True)
    plain = synthetic_dm(synthetic_cache, False, load_masks=True)
    assert all(str(r.image_path).startswith(str(folder)) for r in cached.table.records)
    assert all(str(r.mask_path).startswith(str(folder)) for r in cached.table.records)
    assert not any(str(r.image_path).startswith(str(cache_root)) for r in plain.table.records)
    # What users are shown (retrieval neighbours, prototype sources) names the downloaded file.
    assert [r.original_path for r in cached.table.records] == [r.image_path for r in plain.table.records]
    assert all(r.source_path is None and r.original_path == r.image_path for r in plain.table.records)
    assert torch.equal(eval_images(cached), eval_images(plain))
    a, b = first_training_batch(cached), first_training_batch(plain)
    for key in ("image", "mask", "meta", "label", "index"):
        assert torch.equal(a[key], b[key]), key


def test_downscaled_cache_is_close_to_full_resolution(synthetic_cache, cache_root, one_thread):
    """A 40-px cache read at 32 px is two resizes (Lanczos to 40, then INTER_AREA to 32) where the
    original path does one (INTER_AREA from 48-64 px straight to 32). Measured on the small
    synthetic set (deterministic): max abs difference 1.30 in the normalised tensor (76/255 in one
    channel of one pixel: the synthetic photos have 1-px-sharp hairs and edges, and at 48-64 px
    the two filters place them differently), mean 0.023 (1.3 grey levels), 99th percentile 16 grey
    levels. A Lanczos 512-px copy of a 6000 x 4000 photo read at 224-384 px differs far less; the
    bounds below are a bit above the measurement."""
    folder = image_cache.build_cache(synthetic_table(synthetic_cache), 40, cache_root, image_format="png")
    cached = synthetic_dm(synthetic_cache, True)
    plain = synthetic_dm(synthetic_cache, False)
    record = cached.table.records[0]
    assert str(record.image_path).startswith(str(folder)) and record.image_path.suffix == ".png"
    assert min(Image.open(record.image_path).size) == 40
    a, b = eval_images(cached), eval_images(plain)
    assert a.shape == b.shape
    diff = (a - b).abs()
    levels = diff * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255  # in 0-255 grey levels
    assert diff.max() < 1.45
    assert diff.mean() < 0.03
    assert levels.flatten().kthvalue(int(0.99 * levels.numel())).values < 20


def test_jpeg_cache_is_within_jpeg_quantisation_of_the_lossless_one(synthetic_cache, cache_root, one_thread,
                                                                   monkeypatch):
    """The default cache stores images as JPEG (quality 95, 4:4:4): lossy, so instead of byte
    identity it is bounded against the lossless cache of the same size, which isolates the JPEG
    step. Measured on the small synthetic set at 40 px (deterministic): max abs difference
    0.209 in the normalised tensor (12 grey levels), mean 0.021 (1.2 grey levels); the
    bounds below are a bit above. Masks stay PNG, exactly equal."""
    table = synthetic_table(synthetic_cache)
    root_png, root_jpeg = cache_root / "png", cache_root / "jpeg"
    png = image_cache.build_cache(table, 40, root_png, image_format="png")
    jpeg = image_cache.build_cache(table, 40, root_jpeg)
    manifest = json.loads((jpeg / "manifest.json").read_text())
    assert (manifest["format"], manifest["quality"]) == ("jpeg", 95)
    record = image_cache.apply_cache(table, jpeg).records[0]
    assert record.image_path.suffix == ".jpg" and record.mask_path.suffix == ".png"
    with Image.open(record.image_path) as im:
        assert im.format == "JPEG" and min(im.size) == 40

    def images_and_masks(root):
        monkeypatch.setenv("DERMATTN_CACHE", str(root))  # where the datamodule looks for caches
        dm = synthetic_dm(synthetic_cache, True, load_masks=True)
        assert str(dm.table.records[0].image_path).startswith(str(root))
        return eval_images(dm), first_training_batch(dm)["mask"]  # masks come with training batches

    a, mask_a = images_and_masks(root_jpeg)
    b, mask_b = images_and_masks(root_png)
    assert torch.equal(mask_a, mask_b)
    diff = (a - b).abs()
    levels = diff * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
    print(f"jpeg vs png cache: max {diff.max():.3f}, mean {diff.mean():.4f}, mean grey levels {levels.mean():.2f}")
    assert 0 < diff.mean()  # it is lossy
    assert diff.max() < 0.3
    assert diff.mean() < 0.03


def test_rebuilding_in_another_format_replaces_the_files(tmp_path, cache_root):
    fake = write_isic2020(tmp_path / "isic", n=4)
    table = read_table("isic2020", fake.root)
    folder = image_cache.build_cache(table, 16, cache_root, image_format="png")
    pngs = sorted(folder.rglob("*.png"))
    assert len(pngs) == 4
    assert image_cache.build_cache(table, 16, cache_root) == folder  # now JPEG: every file re-encoded
    assert not any(p.exists() for p in pngs)
    assert len(list(folder.rglob("*.jpg"))) == 4
    assert all(str(r.image_path).endswith(".jpg") for r in image_cache.apply_cache(table, folder).records)
    with pytest.raises(ValueError, match="image_format"):
        image_cache.build_cache(table, 16, cache_root, image_format="webp")


def test_smallest_sufficient_complete_cache_is_chosen(synthetic_cache, cache_root):
    table = synthetic_table(synthetic_cache)
    f40 = image_cache.build_cache(table, 40, cache_root)
    f48 = image_cache.build_cache(table, 48, cache_root)
    assert image_cache.find_cache(table, 32, cache_root) == f40
    assert image_cache.find_cache(table, 41, cache_root) == f48
    assert image_cache.find_cache(table, 49, cache_root) is None
    (f40 / "manifest.json").unlink()  # partial: never used
    assert image_cache.find_cache(table, 32, cache_root) == f48


def test_changed_source_image_is_an_error_naming_file_and_command(tmp_path, cache_root):
    fake = write_pad_ufes20(tmp_path / "pad", n=12)
    table = read_table("pad_ufes20", fake.root)
    image_cache.build_cache(table, 16, cache_root)  # 32/40-px images: downscaled
    dm = LesionDataModule(dataset="pad_ufes20", data_dir=str(fake.root), image_size=16, num_workers=0)
    assert all(str(r.image_path).startswith(str(cache_root)) for r in dm.table.records)

    changed = Path(table.records[3].image_path)
    before = os.stat(changed)
    rng = np.random.default_rng(99)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(changed)
    if os.stat(changed).st_mtime_ns == before.st_mtime_ns:  # a coarse-clock filesystem
        os.utime(changed, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    dm = LesionDataModule(dataset="pad_ufes20", data_dir=str(fake.root), image_size=16, num_workers=0)
    with pytest.raises(DatasetError) as err:
        _ = dm.table
    message = str(err.value)
    assert str(changed) in message
    assert f"make preprocess DATA=pad_ufes20 DATA_DIR={fake.root.absolute()} SIZE=16" in message
    assert f"DERMATTN_CACHE={cache_root.absolute()}" not in message  # it is the default root now
    assert "--data.image_cache=false" in message
    # ... which does read the originals
    dm = LesionDataModule(dataset="pad_ufes20", data_dir=str(fake.root), image_size=16, num_workers=0,
                          image_cache=False)
    assert Path(dm.table.records[3].image_path) == changed

    # Re-running the build re-encodes the changed image and the cache is used again.
    image_cache.build_cache(table, 16, cache_root)
    dm = LesionDataModule(dataset="pad_ufes20", data_dir=str(fake.root), image_size=16, num_workers=0)
    assert all(str(r.image_path).startswith(str(cache_root)) for r in dm.table.records)


def test_missing_or_modified_files_and_records_are_errors(tmp_path, cache_root):
    fake = write_isic2020(tmp_path / "isic", n=8)
    table = read_table("isic2020", fake.root)
    folder = image_cache.build_cache(replace(table, records=table.records[:-1]), 16, cache_root)
    cached = folder / "jpeg" / "train" / f"{table.records[0].image_id}.jpg"
    assert cached.is_file() and min(Image.open(cached).size) == 16 and Image.open(cached).size == (21, 16)
    with pytest.raises(image_cache.StaleCache, match=f"{table.records[-1].image_path}.*is not in it") as err:
        image_cache.apply_cache(table, folder)
    # The library says what is stale and how it was built; the entry point words the command.
    assert (err.value.dataset, err.value.folder) == ("isic2020", folder)
    assert err.value.build == image_cache.CacheBuild("isic2020", fake.root.absolute(), 16, cache_root)
    assert isinstance(err.value, DatasetError)

    subset = replace(table, records=table.records[:-1])
    assert image_cache.apply_cache(subset, folder).records[0].image_path == cached
    cached.unlink()
    with pytest.raises(DatasetError, match=f"cached file {cached}.*missing"):
        image_cache.apply_cache(subset, folder)
    gone = Path(table.records[0].image_path)
    gone.unlink()
    with pytest.raises(DatasetError, match=f"source file {gone} no longer exists"):
        image_cache.apply_cache(subset, folder)


def test_folder_without_manifest_is_not_used(tmp_path, cache_root):
    fake = write_isic2020(tmp_path / "isic", n=8)
    table = read_table("isic2020", fake.root)
    folder = image_cache.build_cache(table, 16, cache_root)
    (folder / "manifest.json").unlink()
    dm = LesionDataModule(dataset="isic2020", data_dir=str(fake.root), image_size=16, num_workers=0)
    assert [r.image_path for r in dm.table.records] == [r.image_path for r in table.records]


def test_preprocess_cli(tmp_path, capsys):
    fake = write_pad_ufes20(tmp_path / "pad", n=6)
    root = tmp_path / "elsewhere"
    assert preprocess_main(["--dataset", "pad_ufes20", "--data-dir", str(fake.root), "--size", "20",
                            "--cache-root", str(root)]) == 0
    out = capsys.readouterr()
    folder = Path(out.out.strip().splitlines()[-1])
    assert folder.parent == root / "resized" and folder.name.endswith("-20")
    assert "6/6" in out.err and "cached 6 images at 20 px (jpeg, " in out.err
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["size"] == 20 and len(manifest["files"]) == 6
    entry = next(iter(manifest["files"].values()))
    assert set(entry) >= {"cached", "bytes", "mtime_ns"}
    assert manifest["source_options"] == {}
    table = read_table("pad_ufes20", fake.root)
    command = preprocess_command(image_cache.recorded_build(table, folder))
    assert command == f"DERMATTN_CACHE={root} make preprocess DATA=pad_ufes20 DATA_DIR={fake.root} SIZE=20"
    assert preprocess_main(["--dataset", "pad_ufes20", "--data-dir", str(fake.root), "--size", "20",
                            "--cache-root", str(root), "--format", "png"]) == 0
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format"] == "png"
    assert preprocess_command(image_cache.recorded_build(table, folder)).endswith("SIZE=20 FORMAT=png")
    assert all(entry["cached"].endswith(".png") for entry in manifest["files"].values())


def test_make_preprocess_prints_the_command():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(["make", "-n", "preprocess", "DATA=isic2020", "DATA_DIR=/x"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    lines = [line.strip() for line in out.splitlines()]
    assert (".venv/bin/python -m datamodules.preprocess --dataset isic2020 --data-dir /x --size 512 --format jpeg "
            "--quality 95") in lines
    out = subprocess.run(["make", "-n", "preprocess", "DATA=isic2020", "DATA_DIR=/x", "SIZE=768"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert "--size 768" in out


@pytest.mark.parametrize("options", [{"task": "diagnosis"}, {"note": "it's $HOME `x` \\ \"q\""}])
def test_rebuild_command_survives_the_shell_twice(options, tmp_path):
    """make pastes ``ARGS`` into its recipe's shell line: the user's shell unquotes the command
    line once, that shell line a second time, and the reader options must arrive intact."""
    build = image_cache.CacheBuild("isic2020", tmp_path / "my data", 512, tmp_path / "cache root", "jpeg", 90, options)
    words = shlex.split(preprocess_command(build))
    assert words[:6] == [f"DERMATTN_CACHE={tmp_path / 'cache root'}", "make", "preprocess", "DATA=isic2020",
                         f"DATA_DIR={tmp_path / 'my data'}", "SIZE=512"]
    assert words[6] == "QUALITY=90" and words[7].startswith("ARGS=")
    assert shlex.split(words[7][len("ARGS="):])[0] == "--source-options"
    assert json.loads(shlex.split(words[7][len("ARGS="):])[1]) == options
    assert preprocess_command(None) == "make preprocess DATA=... DATA_DIR=... SIZE=..."


def test_stale_synthetic_cache_names_the_generator_root_and_options(synthetic_cache, cache_root):
    """A synthetic dataset's folder is named by its generator options under the cache root: the
    rebuild command passes both, and they read the very same dataset."""
    table = synthetic_table(synthetic_cache)
    folder = image_cache.build_cache(table, 40, cache_root)
    build = image_cache.recorded_build(table, folder)
    assert build.data_dir == synthetic_cache.absolute() and build.source_options.items() >= SMALL_SYNTHETIC.items()
    assert read_table("synthetic", build.data_dir, **build.source_options).csv_path == table.csv_path
    (folder / "manifest.json").write_text(json.dumps({**json.loads((folder / "manifest.json").read_text()),
                                                      "version": 1}))
    with pytest.raises(DatasetError, match="written by cache version 1") as err:
        _ = synthetic_dm(synthetic_cache, True).table
    assert f"Re-run `{preprocess_command(build)}` to rebuild it" in str(err.value)


def test_cache_is_byte_identical_whatever_the_number_of_workers(synthetic_cache, tmp_path, one_thread):
    """Images and masks encoded by 1 or 2 worker processes: the same files, byte for byte, and
    the same manifest entries in the same (record) order."""
    table = synthetic_table(synthetic_cache)
    table = replace(table, records=table.records[:24])
    seen, names = [], []
    folders = [image_cache.build_cache(table, 24, tmp_path / f"w{n}", workers=n,
                                       progress=lambda done, total: seen.append((done, total))) for n in (1, 2)]
    files = []
    for folder in folders:
        manifest = json.loads((folder / "manifest.json").read_text())
        names.append(list(manifest["files"]))
        files.append({entry["cached"]: (folder / entry["cached"]).read_bytes() for entry in manifest["files"].values()})
    assert names[0] == names[1] and len(names[0]) == 48  # 24 images and their masks
    assert files[0] == files[1]
    assert seen.count((24, 24)) == 2  # progress reaches the total once in each build


def test_an_interrupted_parallel_build_leaves_no_manifest(tmp_path, cache_root):
    """A worker's error stops the build: no manifest, so the partial folder is never used; the
    error names the file and its line."""
    fake = write_isic2020(tmp_path / "isic", n=8)
    bad = fake.images[fake.rows[5]["image_name"]]
    bad.write_bytes(b"not a jpeg")
    table = read_table("isic2020", fake.root)
    with pytest.raises(DatasetError, match=f"cannot read image {re.escape(str(bad))} \\(listed on line 7\\)"):
        image_cache.build_cache(table, 16, cache_root, workers=2)
    folder = image_cache.cache_dir(table, 16, cache_root)
    assert folder.is_dir() and not (folder / "manifest.json").exists()
    assert image_cache.find_cache(table, 16, cache_root) is None


def test_preprocess_workers_option(tmp_path, capsys):
    fake = write_pad_ufes20(tmp_path / "pad", n=4)
    assert preprocess_main(["--dataset", "pad_ufes20", "--data-dir", str(fake.root), "--size", "20",
                            "--cache-root", str(tmp_path / "c"), "--workers", "2"]) == 0
    assert "cached 4 images at 20 px (jpeg, 2 workers) in" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        preprocess_main(["--dataset", "pad_ufes20", "--data-dir", str(fake.root), "--workers", "0"])
    assert "--workers must be at least 1, got 0" in capsys.readouterr().err
