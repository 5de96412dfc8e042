"""LesionDataModule on the small synthetic dataset: batches, class weights, sampler, checkpoint
state and the augmentation recipes."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from conftest import SMALL_SYNTHETIC
from datamodules.dataset import load_mask, load_rgb
from datamodules.lesion_datamodule import LesionDataModule
from datamodules.metadata import MetadataEncoder
from datamodules.records import DatasetError
from datamodules.transforms import IMAGENET_MEAN, IMAGENET_STD, RECIPES, build_transforms

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def make_dm(synthetic_cache, **overrides) -> LesionDataModule:
    kwargs = dict(
        dataset="synthetic",
        data_dir=str(synthetic_cache),
        source_options=dict(SMALL_SYNTHETIC),
        image_size=32,
        batch_size=8,
        num_workers=0,
    )
    kwargs.update(overrides)
    return LesionDataModule(**kwargs)


@pytest.fixture(scope="module")
def dm(synthetic_cache):
    module = make_dm(synthetic_cache, load_masks=True)
    module.prepare_data()
    module.setup("fit")
    return module


def test_batch_keys_and_shapes(dm):
    torch.manual_seed(0)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "meta", "label", "index", "mask"}
    assert batch["image"].shape == (8, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["meta"].shape == (8, dm.meta_dim) and batch["meta"].dtype == torch.float32
    assert batch["label"].shape == (8,) and batch["label"].dtype == torch.long
    assert batch["index"].shape == (8,) and batch["index"].dtype == torch.long
    assert batch["mask"].shape == (8, 32, 32) and batch["mask"].dtype == torch.float32
    assert set(torch.unique(batch["mask"]).tolist()) <= {0.0, 1.0}
    assert batch["mask"].sum() > 0
    train = dm.records("train")
    for k in range(8):
        record = train[int(batch["index"][k])]
        assert int(batch["label"][k]) == record.label
        np.testing.assert_array_equal(batch["meta"][k].numpy(), dm.encoder.encode(record.meta))


def test_eval_batch_matches_files(dm):
    batch = next(iter(dm.val_dataloader()))
    record = dm.records("val")[int(batch["index"][0])]
    mask = load_mask(record.mask_path)
    image = load_rgb(record.image_path)
    assert batch["mask"][0].mean().item() == pytest.approx(mask.mean(), abs=0.05)
    # the eval transform only resizes and normalises: the mean colour survives
    colour = (batch["image"][0] * STD + MEAN).mean(dim=(1, 2)).numpy()
    np.testing.assert_allclose(colour, image.reshape(-1, 3).mean(0) / 255, atol=0.02)


def test_classes_and_meta_dim(dm):
    assert dm.num_classes == 6
    assert dm.class_names == ["ACK", "BCC", "MEL", "NEV", "SCC", "SEK"]
    assert dm.meta_dim == dm.encoder.dim == len(dm.encoder.feature_names)
    assert dm.encoder.numeric == ["age"]
    assert "region=FACE" in dm.encoder.feature_names and "fitspatrick=<missing>" in dm.encoder.feature_names
    sizes = {s: len(dm.records(s)) for s in ("train", "val", "test")}
    assert sum(sizes.values()) == len(dm.records("all"))
    assert 0.5 < sizes["train"] / len(dm.records("all")) < 0.7
    summary = dm.summary()
    assert summary["split_sizes"] == sizes and summary["meta_features"] == dm.encoder.feature_names
    assert summary["groups"] == len({r.group for r in dm.records("all")})


def test_no_metadata_features(synthetic_cache):
    module = make_dm(synthetic_cache, meta_features=[])
    assert module.meta_dim == 0 and module.encoder.feature_names == []


def test_class_weights(dm):
    labels = [r.label for r in dm.records("train")]
    counts = np.bincount(labels, minlength=6)
    n, k = len(labels), 6
    weights = dm.class_weights
    assert len(weights) == 6
    mel = dm.class_names.index("MEL")
    assert weights[mel] == pytest.approx(n / (k * counts[mel]))  # hand check: the rarest class
    np.testing.assert_allclose(weights, n / (k * counts))
    assert max(weights) == weights[mel]
    assert sum(w * c for w, c in zip(weights, counts)) == pytest.approx(n)  # balanced total mass


def test_balanced_sampler_oversamples_rare_classes(synthetic_cache):
    module = make_dm(synthetic_cache, balanced_sampler=True)
    module.setup("fit")
    loader = module.train_dataloader()
    sampler = loader.sampler
    assert sampler.weights is not None
    labels = np.array([r.label for r in module.records("train")])
    drawn = np.concatenate([labels[[k.index for k in sampler]] for epoch in range(20) if sampler.set_epoch(epoch) is None])
    frequency = np.bincount(labels, minlength=6) / len(labels)
    share = np.bincount(drawn, minlength=6) / len(drawn)
    mel = module.class_names.index("MEL")
    assert frequency[mel] < 0.06
    assert share[mel] > 3 * frequency[mel]
    np.testing.assert_allclose(share, 1 / 6, atol=0.05)  # about uniform over classes
    # without the option: plain shuffling, the data's own frequencies
    plain = make_dm(synthetic_cache)
    plain.setup("fit")
    order = [k.index for k in plain.train_dataloader().sampler]
    assert plain.train_dataloader().sampler.weights is None and sorted(order) == list(range(len(labels)))


def test_state_dict_round_trip(synthetic_cache, dm):
    state = dm.state_dict()
    assert state["class_names"] == dm.class_names and state["feature_names"] == dm.encoder.feature_names
    buffer = io.BytesIO()
    torch.save({"datamodule": state}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)["datamodule"]

    # fresh module: the encoder comes from the checkpoint, not from fitting a split
    fresh = make_dm(synthetic_cache, fold=3)
    fresh.load_state_dict(loaded)
    assert fresh.encoder.state_dict() == dm.encoder.state_dict()

    # a module already set up on another fold: updated in place, so its datasets use it too
    other = make_dm(synthetic_cache, fold=2)
    other.setup("fit")
    assert other.encoder.mean["age"] != pytest.approx(dm.encoder.mean["age"])
    other.load_state_dict(loaded)
    assert other.encoder.mean == dm.encoder.mean and other.encoder.categories == dm.encoder.categories
    assert other.datasets["train"].encoder is other.encoder
    record = other.records("val")[0]
    np.testing.assert_array_equal(other.datasets["val"][0]["meta"].numpy(), dm.encoder.encode(record.meta))


def test_load_state_dict_rejects_other_classes(synthetic_cache, dm):
    state = dm.state_dict()
    state["class_names"] = ["benign", "malignant"]
    fresh = make_dm(synthetic_cache)
    with pytest.raises(DatasetError, match=r"checkpoint was trained on classes \['benign', 'malignant'\]"):
        fresh.load_state_dict(state)


def test_load_state_dict_rejects_unknown_columns(synthetic_cache, dm):
    state = dm.state_dict()
    encoder = MetadataEncoder.from_state_dict(state["encoder"])
    encoder.numeric = ["age_approx"]  # an ISIC column
    state["encoder"] = encoder.state_dict()
    with pytest.raises(DatasetError, match=r"metadata feature\(s\) \['age_approx'\]"):
        make_dm(synthetic_cache).load_state_dict(state)


# --------------------------------------------------------------------------------------------
# Augmentation recipes
# --------------------------------------------------------------------------------------------


def half_red_image(size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Left half pure red with mask 1; right half blue with mask 0."""
    image = np.zeros((size, size, 3), np.uint8)
    image[:, : size // 2] = (255, 0, 0)
    image[:, size // 2 :] = (0, 0, 255)
    mask = np.zeros((size, size), np.uint8)
    mask[:, : size // 2] = 1
    return image, mask


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("train", [True, False])
def test_recipes_give_normalised_tensors(recipe, train):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (50, 40, 3), dtype=np.uint8)
    mask = (rng.random((50, 40)) > 0.5).astype(np.uint8)
    transform = build_transforms(train, 32, recipe)
    out = transform(image=image, mask=mask)
    assert out["image"].shape == (3, 32, 32) and out["image"].dtype == torch.float32
    assert tuple(out["mask"].shape) == (32, 32)
    assert set(np.unique(np.asarray(out["mask"])).tolist()) <= {0, 1}
    low = ((0 - MEAN) / STD).min().item()
    high = ((1 - MEAN) / STD).max().item()
    assert low - 1e-4 <= out["image"].min().item() and out["image"].max().item() <= high + 1e-4


def test_none_recipe_normalises_exactly():
    image = np.full((40, 40, 3), (128, 64, 255), np.uint8)
    for train in (True, False):
        out = build_transforms(train, 16, "none")(image=image)["image"]
        expected = (torch.tensor([128, 64, 255]) / 255.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
        torch.testing.assert_close(out, expected.view(3, 1, 1).expand(3, 16, 16), atol=1e-5, rtol=0)


def test_eval_transform_is_deterministic():
    image, mask = half_red_image()
    transform = build_transforms(False, 32, "isic")
    a, b = transform(image=image, mask=mask), transform(image=image, mask=mask)
    assert torch.equal(a["image"], b["image"])
    np.testing.assert_array_equal(np.asarray(a["mask"]), np.asarray(b["mask"]))
    np.testing.assert_array_equal(np.asarray(a["mask"])[:, :16], 1)
    np.testing.assert_array_equal(np.asarray(a["mask"])[:, 16:], 0)


def test_unknown_recipe():
    with pytest.raises(ValueError, match="augmentation recipe must be one of"):
        build_transforms(True, 32, "heavy")


@pytest.mark.parametrize("recipe", ["light", "isic"])
def test_train_transform_keeps_mask_aligned(recipe):
    image, mask = half_red_image()
    transform = build_transforms(True, 32, recipe)
    transform.set_random_seed(0)  # reproducible draws
    moved = 0
    for _ in range(25):
        out = transform(image=image, mask=mask)
        rgb = (out["image"] * STD + MEAN).clamp(0, 1)
        m = np.asarray(out["mask"]).astype(bool)
        redness = (rgb[0] - rgb[2]).numpy()
        red, blue = redness > 0.3, redness < -0.3
        assert m.sum() > 0
        if recipe == "light":
            assert red[m].mean() > 0.9  # masked pixels are the red ones...
            assert red[~m].mean() < 0.1  # ...and no unmasked pixel is red
        else:  # the ISIC recipe also distorts, blurs, shifts hue and drops out a square (image only)
            assert red[m].mean() > 0.4 and blue[m].mean() < 0.15  # a misaligned mask covers ~50 % blue
            assert red[~m].mean() < 0.15
        moved += not np.array_equal(m[:, :16], np.ones((32, 16), bool))
    assert moved > 5  # the geometry really changed in most draws (flips, transposes, affine)


def test_masks_are_only_loaded_on_request(synthetic_cache):
    module = make_dm(synthetic_cache)
    module.setup("fit")
    assert "mask" not in module.datasets["train"][0]


def test_augmentations_do_not_depend_on_workers_or_rank(synthetic_cache):
    """Each training sample carries its own augmentation seed, drawn from (run seed, epoch,
    position): the same image repeated gets different augmentations, the batches are the same
    with 0 or 2 workers, and two DDP ranks draw different samples and augmentations."""
    from types import SimpleNamespace

    from lightning.pytorch import seed_everything

    def batches(num_workers: int, rank: int = 0, world_size: int = 1) -> list[torch.Tensor]:
        seed_everything(3)
        module = make_dm(synthetic_cache, num_workers=num_workers, batch_size=4)
        module.trainer = SimpleNamespace(global_rank=rank, world_size=world_size, current_epoch=0)
        module.setup("fit")
        module.datasets["train"].records = module.datasets["train"].records[:1] * 16  # one image, 16 times
        return [b["image"] for b in module.train_dataloader()]

    plain = batches(0)
    assert not torch.allclose(plain[0][0], plain[0][1])  # the same image, augmented differently
    workers = batches(2)
    assert len(plain) == len(workers) == 4 and all(torch.equal(a, b) for a, b in zip(plain, workers))
    rank0, rank1 = batches(0, 0, 2), batches(0, 1, 2)
    assert len(rank0) == len(rank1) == 2 and not torch.allclose(rank0[0], rank1[0])


def test_min_class_images_drops_and_relabels(synthetic_cache):
    from datamodules.sources import read_table

    full = read_table("synthetic", str(synthetic_cache), **SMALL_SYNTHETIC)
    counts = {name: sum(r.label == k for r in full.records) for k, name in enumerate(full.class_names)}
    threshold = counts["MEL"] + 1
    module = make_dm(synthetic_cache, min_class_images=threshold)
    kept = [n for n in full.class_names if counts[n] >= threshold]
    assert module.class_names == kept and "MEL" not in kept
    assert len(module.table.records) == sum(counts[n] for n in kept)
    by_id = {r.image_id: full.class_names[r.label] for r in full.records}
    assert all(module.class_names[r.label] == by_id[r.image_id] for r in module.table.records)


def test_class_missing_from_a_split_is_an_error(synthetic_cache):
    module = make_dm(synthetic_cache, n_folds=12)  # MEL has fewer patients than folds
    with pytest.raises(DatasetError, match=r"class\(es\) \['MEL'\] have no image in the (val|test|train) split"):
        module.split_records


def test_verify_images_reports_every_unreadable_file(tmp_path, synthetic_dir):
    import shutil

    copy = tmp_path / "pad"
    shutil.copytree(synthetic_dir, copy)
    images = sorted((copy / "images").iterdir())
    for path in images[:2]:
        path.write_bytes(b"not a png")
    module = LesionDataModule(dataset="pad_ufes20", data_dir=str(copy), verify_images=True)
    with pytest.raises(DatasetError, match="2 unreadable image") as info:
        module.prepare_data()
    assert images[0].name in str(info.value) and images[1].name in str(info.value)


def test_oversampling_one_class(synthetic_cache):
    """AttnMel's melanoma x4: MEL images drawn four times as often as any other image."""
    dm = LesionDataModule(data_dir=str(synthetic_cache), source_options=SMALL_SYNTHETIC, image_size=32,
                          num_workers=0, oversample={"MEL": 4})
    factors = dm.oversampling_factors()
    assert factors.tolist() == [1, 1, 4, 1, 1, 1]
    dm.setup("fit")
    sampler = dm.train_dataloader().sampler
    labels = np.array([r.label for r in dm.records("train")])
    weights = sampler.weights
    assert len(sampler) == len(labels)
    assert set(weights[labels == 2]) == {4.0} and set(weights[labels != 2]) == {1.0}
    with pytest.raises(DatasetError, match="has no class 'melanoma'"):
        LesionDataModule(data_dir=str(synthetic_cache), source_options=SMALL_SYNTHETIC,
                         oversample={"melanoma": 4}).oversampling_factors()
    with pytest.raises(ValueError, match="oversample draws its own"):
        LesionDataModule(oversample={"MEL": 4}, balanced_sampler=True)


def test_training_sampling_policies_build_their_samplers():
    """Each option picks its sampler with the batch size, resume position and rank the datamodule
    passes; weights by hand: 1/count for balanced, the class factor for oversample."""
    from datamodules.samplers import ClassBalancedBatchSampler, SeededSampler, TrainingSampling
    from datamodules.seeding import TrainPosition

    labels = [0, 0, 0, 1, 2, 2]
    common = dict(num_samples=6, batch_size=2, seed=5, position=TrainPosition(3, 1), world_size=2, rank=1,
                  class_names=["a", "b", "c"], dataset="toy")
    plain = TrainingSampling().loader_arguments(labels, **common)
    assert set(plain) == {"sampler", "batch_size", "drop_last"} and plain["batch_size"] == 2
    sampler = plain["sampler"]
    assert isinstance(sampler, SeededSampler) and sampler.weights is None and len(sampler) == 3
    assert (sampler.seed, sampler.rank, sampler.num_replicas, sampler.resume_at) == (5, 1, 2, (3, 2))
    assert plain["drop_last"]  # 3 samples per rank > batch of 2
    balanced = TrainingSampling(balanced=True).loader_arguments(labels, **common)["sampler"]
    np.testing.assert_allclose(balanced.weights, [1 / 3, 1 / 3, 1 / 3, 1, 1 / 2, 1 / 2])
    over = TrainingSampling(oversample={"c": 2.5}).loader_arguments(labels, **common)["sampler"]
    np.testing.assert_allclose(over.weights, [1, 1, 1, 1, 2.5, 2.5])
    pk = TrainingSampling(pk_batches=(2, 3)).loader_arguments(labels, **common)
    assert set(pk) == {"batch_sampler"}
    batches = pk["batch_sampler"]
    assert isinstance(batches, ClassBalancedBatchSampler)
    assert (batches.p, batches.k, batches.num_batches, batches.seed, batches.resume_at) == (2, 3, 1, 5, (3, 1))
    with pytest.raises(DatasetError, match=r"toy has no class 'd'; its classes are \['a', 'b', 'c'\]"):
        TrainingSampling(oversample={"d": 2}).loader_arguments(labels, **common)


@pytest.mark.parametrize("options,message", [
    (dict(oversample={"MEL": 4}, pk_batches=(2, 2)), "oversample draws its own training batches"),
    (dict(oversample={"MEL": 0}), "the factor of MEL must be positive, got 0"),
    (dict(pk_batches=(0, 4)), r"pk_batches must be \[P, K\] with P, K >= 1, got \[0, 4\]"),
])
def test_bad_sampling_options_fail_before_reading_data(options, message):
    with pytest.raises(ValueError, match=message):
        LesionDataModule(data_dir="/nonexistent", **options)


def test_resume_training_at_starts_the_sampler_mid_epoch(synthetic_cache):
    """A resumed run's training loader skips the batches already trained in its epoch; the
    position comes from ``resume_training_at`` (older checkpoints: the datamodule's own state)."""
    from datamodules.seeding import TrainPosition

    whole = make_dm(synthetic_cache, batch_size=4)
    whole.setup("fit")
    sampler = whole.train_dataloader().sampler
    sampler.set_epoch(2)
    epoch = list(sampler)
    resumed = make_dm(synthetic_cache, batch_size=4)
    resumed.setup("fit")
    resumed.resume_training_at(TrainPosition(2, 3))
    assert list(resumed.train_dataloader().sampler) == epoch[12:]
    assert "train_position" not in resumed.state_dict()
    old = make_dm(synthetic_cache, batch_size=4)
    old.setup("fit")
    old.load_state_dict({**whole.state_dict(), "train_position": [2, 3]})
    assert list(old.train_dataloader().sampler) == epoch[12:]
