"""ISIC 2024 at its real size: the datamodule's setup on 401,059 rows, HDF5 reading, ``make preprocess``.

    python -m experiments.bench_isic2024 [--rows 25000 100000 401059] [--folder DIR] [--quick]

Reports rates, times and memory, never pass/fail (machines are noisy); the targets it prints
beside them are the project's (``docs/datasets.md``):

- setup (read ``train-metadata.csv``, split, fit the metadata encoder, build the training
  sampler and draw its epoch's order) on a generated table in the real 55-column layout at each size,
  each in its own process so its peak memory (``ru_maxrss``) is its own: aim <= 60 s and
  <= 3 GB at 401,059 rows, growing linearly; the epoch's sampler <= 1 s (also: listing every key
  of the epoch, and a whole-split epoch without negative subsampling);
- images/s of one worker reading crops from an HDF5 file against the same crops as JPEG files
  (decode alone, and the whole training item at 224 px with the ``isic`` augmentation);
- ``make preprocess`` images/s with 1 and 2 workers on generated full-size photos, and the CPU
  time per image (which the sharing of a busy machine does not distort).

The table's values are synthetic but of the real types and vocabularies (blanks in sex and age,
hospitals with commas, ``Unknown`` locations, the training-only columns filled as the real file
fills them); every ``isic_id`` of the HDF5 file is a hard link to one of a few real JPEG crops,
so a 401,059-image file is written in seconds and takes a few MB.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402

from datamodules.sources import isic2024  # noqa: E402

FULL_SIZE = 401_059
PATIENTS, MALIGNANT, HOSPITALS = 1_042, 393, 7
SIZES = (25_000, 100_000, FULL_SIZE)
SETUP_SECONDS, SETUP_GB, SAMPLER_SECONDS = 60.0, 3.0, 1.0
#: Hospital names as the file writes them: an open vocabulary, several with commas (quoted).
ATTRIBUTIONS = [f"Department of Dermatology, Hospital {k}" if k % 2 else f"Skin Cancer Centre {k}"
                for k in range(HOSPITALS)]
#: (tbp_lv_location, tbp_lv_location_simple, anatom_site_general), as the file pairs them.
PLACES = [
    ("Torso Back Top Third", "Torso Back", "posterior torso"),
    ("Torso Back Middle Third", "Torso Back", "posterior torso"),
    ("Torso Back Bottom Third", "Torso Back", "posterior torso"), ("Torso Back", "Torso Back", "posterior torso"),
    ("Torso Front Top Half", "Torso Front", "anterior torso"),
    ("Torso Front Bottom Half", "Torso Front", "anterior torso"),
    ("Torso Front", "Torso Front", "anterior torso"), ("Left Leg - Lower", "Left Leg", "lower extremity"),
    ("Left Leg - Upper", "Left Leg", "lower extremity"), ("Left Leg", "Left Leg", "lower extremity"),
    ("Right Leg - Lower", "Right Leg", "lower extremity"), ("Right Leg - Upper", "Right Leg", "lower extremity"),
    ("Right Leg", "Right Leg", "lower extremity"), ("Left Arm - Upper", "Left Arm", "upper extremity"),
    ("Left Arm - Lower", "Left Arm", "upper extremity"), ("Left Arm", "Left Arm", "upper extremity"),
    ("Right Arm - Upper", "Right Arm", "upper extremity"), ("Right Arm - Lower", "Right Arm", "upper extremity"),
    ("Right Arm", "Right Arm", "upper extremity"), ("Head & Neck", "Head & Neck", "head/neck"),
    ("Unknown", "Unknown", ""),
]  # fmt: skip


# -- the generated dataset ----------------------------------------------------------------------
def _quote(value: str) -> str:
    return f'"{value}"' if "," in value or '"' in value else value


def _pool(rng: np.random.Generator, mean: float, scale: float, n: int = 1 << 14) -> np.ndarray:
    """Number strings in the file's style (7 significant digits, e-notation for small values)."""
    values = rng.normal(mean, scale, n)
    return np.array([f"{v:.7g}" for v in values], dtype=object)


def metadata_lines(rows: int, seed: int = 0) -> list[str]:
    """``train-metadata.csv``'s lines (header first) for ``rows`` lesions, patients and malignant
    lesions in the real proportions."""
    rng = np.random.default_rng([seed, rows])
    n_patients = max(10, round(rows * PATIENTS / FULL_SIZE))
    n_malignant = max(10, round(rows * MALIGNANT / FULL_SIZE))
    patient = rng.integers(0, n_patients, rows)
    malignant = np.zeros(rows, bool)
    malignant[rng.choice(rows, n_malignant, replace=False)] = True
    hospital = rng.integers(0, HOSPITALS, n_patients)[patient]
    place = rng.integers(0, len(PLACES), rows)
    interesting = malignant | (rng.random(rows) < 0.055)  # lesion_id on about 22,000 of 401,059 rows
    # Blank on about 0.7 % (age) and 2.9 % (sex) of the rows, as in the real file.
    ages = np.array([f"{a}.0" for a in range(5, 90, 5)], dtype=object)
    age = np.where(rng.random(rows) < 0.007, "", ages[rng.integers(0, len(ages), n_patients)][patient])
    sexes = np.array(["male", "female"], dtype=object)
    sex = np.where(rng.random(rows) < 0.029, "", sexes[rng.integers(0, 2, n_patients)][patient])
    columns: dict[str, np.ndarray] = {
        "isic_id": np.array([f"ISIC_{i:07d}" for i in range(rows)], dtype=object),
        "target": np.where(malignant, "1", "0").astype(object),
        "patient_id": np.array([f"IP_{1000000 + p:07d}" for p in range(n_patients)], dtype=object)[patient],
        "age_approx": age,
        "sex": sex,
        "anatom_site_general": np.array([p[2] for p in PLACES], dtype=object)[place],
        "image_type": np.full(rows, "TBP tile: close-up", dtype=object),
        "tbp_tile_type": np.array(isic2024.TILE_TYPES, dtype=object)[rng.integers(0, 2, rows)],
        "tbp_lv_location": np.array([p[0] for p in PLACES], dtype=object)[place],
        "tbp_lv_location_simple": np.array([p[1] for p in PLACES], dtype=object)[place],
        "attribution": np.array([_quote(a) for a in ATTRIBUTIONS], dtype=object)[hospital],
        "copyright_license": np.array(["CC-BY", "CC-BY-NC", "CC-0"], dtype=object)[hospital % 3],
        "lesion_id": np.where(interesting, np.array([f"IL_{i:07d}" for i in range(rows)], dtype=object), ""),
        "iddx_full": np.where(malignant, "Malignant::Malignant melanocytic proliferations (Melanoma)::"
                              "Melanoma Invasive", "Benign").astype(object),
        "iddx_1": np.where(malignant, "Malignant", "Benign").astype(object),
        "iddx_2": np.where(malignant, "Malignant melanocytic proliferations (Melanoma)", "").astype(object),
        "iddx_3": np.where(malignant, "Melanoma Invasive", "").astype(object),
        "iddx_4": np.full(rows, "", dtype=object),
        "iddx_5": np.full(rows, "", dtype=object),
        "mel_mitotic_index": np.where(malignant, "<1/mm^2", "").astype(object),
        "mel_thick_mm": np.where(malignant, "0.5", "").astype(object),
    }
    for k, name in enumerate([*isic2024.MEASUREMENTS, *isic2024.POSITION, "tbp_lv_dnn_lesion_confidence"]):
        columns[name] = _pool(rng, 10.0 + k, 3.0)[rng.integers(0, 1 << 14, rows)]
    ordered = [columns[c] for c in isic2024.TRAIN_COLUMNS]
    return [",".join(isic2024.TRAIN_COLUMNS), *(",".join(row) for row in zip(*ordered))]


def crops(n: int, seed: int = 0) -> list[bytes]:
    """``n`` JPEG crops of the dataset's sizes (100-250 px a side), photo-like content."""
    from PIL import Image

    from experiments.bench import synthetic_photo

    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        width, height = (int(v) for v in rng.integers(100, 251, 2))
        buffer = io.BytesIO()
        Image.fromarray(synthetic_photo(width, height, seed * 100_003 + k)).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def generate(folder: Path, rows: int, seed: int = 0, distinct: int = 16) -> Path:
    """``train-metadata.csv`` and ``train-image.hdf5`` of ``rows`` lesions in ``folder``: the first
    ``distinct`` ids hold real JPEG crops, every other id is a hard link to one of them."""
    import h5py

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = metadata_lines(rows, seed)
    (folder / isic2024.METADATA).write_text("\n".join(lines) + "\n")
    ids = [line.split(",", 1)[0] for line in lines[1:]]
    with h5py.File(folder / isic2024.HDF5, "w") as handle:
        stored = [handle.create_dataset(ids[k], data=np.bytes_(data)) for k, data in enumerate(crops(distinct, seed))]
        for k in range(distinct, rows):
            handle[ids[k]] = stored[k % distinct]
    return folder


# -- setup time and memory, one process per size --------------------------------------------------
def setup_child(folder: str, options: dict) -> dict:
    """Runs in its own process: times each setup step and reports this process's peak memory."""
    from datamodules.lesion_datamodule import LesionDataModule

    timings = {}
    start = time.perf_counter()
    datamodule = LesionDataModule(dataset="isic2024", data_dir=folder, image_cache=False, num_workers=0,
                                  image_size=224, **options)
    table = datamodule.table
    timings["read_s"] = time.perf_counter() - start
    mark = time.perf_counter()
    splits = datamodule.split_records
    timings["split_s"] = time.perf_counter() - mark
    mark = time.perf_counter()
    encoder = datamodule.encoder
    timings["encode_s"] = time.perf_counter() - mark
    mark = time.perf_counter()
    datamodule.setup("fit")
    sampler = datamodule.train_dataloader().sampler
    first = next(iter(sampler))  # the epoch's order is drawn when its iterator is made
    timings["sampler_s"] = time.perf_counter() - mark
    timings["setup_s"] = time.perf_counter() - start
    mark = time.perf_counter()
    keys = [first, *list(sampler)[1:]]
    timings["epoch_keys_s"] = time.perf_counter() - mark
    # A whole-split epoch (no negative subsampling): the largest sampler there is.
    from datamodules.samplers import SeededSampler

    mark = time.perf_counter()
    whole = SeededSampler(len(splits["train"]), seed=0)
    next(iter(whole))
    timings["full_epoch_sampler_s"] = time.perf_counter() - mark
    mark = time.perf_counter()
    n_whole = sum(1 for _ in whole)
    timings["full_epoch_keys_s"] = time.perf_counter() - mark
    return {
        "rows": len(table.records), "features": encoder.dim, "train": len(splits["train"]),
        "epoch_samples": len(keys), "full_epoch_samples": n_whole, **{k: round(v, 3) for k, v in timings.items()},
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3),
    }


def measure_setup(folder: Path, options: dict) -> dict:
    out = subprocess.run([sys.executable, "-m", "experiments.bench_isic2024", "--setup-child", str(folder),
                          "--options", json.dumps(options)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"setup on {folder} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- HDF5 against JPEG files ----------------------------------------------------------------------
def image_rates(folder: Path, n: int = 300, image_size: int = 224) -> dict[str, float]:
    """Images/s of one process reading the same ``n`` crops from an HDF5 file and from JPEG files:
    ``decode`` (``load_rgb``) and ``item`` (the training item: decode, ``isic`` augmentation at
    ``image_size``, metadata)."""
    from datamodules.dataset import LesionDataset, load_rgb
    from datamodules.hdf5_images import close_all, write_images
    from datamodules.metadata import MetadataEncoder
    from datamodules.records import LesionRecord
    from datamodules.seeding import SampleKey
    from datamodules.transforms import build_transforms

    data = crops(n, seed=1)
    ids = [f"ISIC_{k:07d}" for k in range(n)]
    hdf5 = write_images(folder / "crops.hdf5", zip(ids, data))
    for image_id, blob in zip(ids, data):
        (folder / f"{image_id}.jpg").write_bytes(blob)
    sources = {
        "hdf5": [LesionRecord(i, hdf5, 0, i, {}, None, image_key=i) for i in ids],
        "jpeg": [LesionRecord(i, folder / f"{i}.jpg", 0, i, {}, None) for i in ids],
    }
    rates = {}
    for repeat in range(2):  # the first pass warms the page cache for both
        for name, records in sources.items():
            close_all()
            start = time.perf_counter()
            for r in records:
                load_rgb(r.image_path, "bench", key=r.image_key)
            rates[f"{name} decode"] = n / (time.perf_counter() - start)
            dataset = LesionDataset(records, MetadataEncoder().fit(records), build_transforms(True, image_size, "isic"),
                                    "bench", False, image_size)
            start = time.perf_counter()
            for k in range(n):
                dataset[SampleKey(k, k)]
            rates[f"{name} item@{image_size}"] = n / (time.perf_counter() - start)
    return rates


# -- make preprocess with 1 and 2 workers -----------------------------------------------------------
def preprocess_rates(folder: Path, images: int = 48, shape=(1024, 1024), size: int = 256,
                     workers=(1, 2)) -> dict[int, dict[str, float]]:
    """``build_cache`` on ``images`` generated JPEG photos (q90) of ``shape``, per number of workers
    (a fresh cache each: nothing is reused): images/s, and the CPU time spent per image by this
    process and its workers together (on a machine shared with other jobs the wall-clock rate
    says little about parallelism; the CPU time per image says whether the pool adds work)."""
    from PIL import Image

    from datamodules.image_cache import build_cache
    from datamodules.records import LesionRecord, LesionTable
    from experiments.bench import synthetic_photo

    width, height = shape
    records = []
    for k in range(images):
        path = folder / "photos" / f"photo_{k}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(synthetic_photo(width, height, k)).save(path, quality=90)
        records.append(LesionRecord(f"p{k}", path, 0, f"g{k}", {}, None))
    table = LesionTable("bench", folder / "photos" / "bench.csv", ["c"], records, [], [])

    def cpu_seconds() -> float:
        return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                       resource.getrusage(resource.RUSAGE_CHILDREN)))

    rates = {}
    for n in workers:
        start, cpu = time.perf_counter(), cpu_seconds()
        build_cache(table, size, folder / f"cache-{n}", workers=n)  # the pool's workers are reaped when it ends
        rates[n] = {"images_per_s": images / (time.perf_counter() - start),
                    "cpu_ms_per_image": 1000 * (cpu_seconds() - cpu) / images}
    return rates


def load_average() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=list(SIZES), help="table sizes to set up")
    parser.add_argument("--folder", default=None, help="keep the generated data here (default: a temp folder)")
    parser.add_argument("--negatives-per-epoch", type=int, default=20_000,
                        help="the training sampler's negatives per epoch (experiments/data/isic2024.yaml's)")
    parser.add_argument("--patient-relative", action="store_true", help="also set up the largest size with them")
    parser.add_argument("--quick", action="store_true", help="small sizes only (a smoke run)")
    parser.add_argument("--setup-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.setup_child:
        result = setup_child(args.setup_child, json.loads(args.options))
        print(json.dumps(result))
        return result
    if args.quick:
        args.rows = [2_000, 8_000]
    print(f"\n== bench: ISIC 2024 at scale ({os.cpu_count()} CPUs, load average {load_average()} at start) ==")
    result: dict = {"cpus": os.cpu_count(), "load_average_start": load_average(), "setup": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.folder) if args.folder else Path(tmp)
        options = {"negatives_per_epoch": args.negatives_per_epoch}
        runs = [(rows, options) for rows in args.rows]
        if args.patient_relative:
            runs.append((max(args.rows), {**options, "source_options": {"patient_relative": True}}))
        for rows, run_options in runs:
            folder = root / f"isic2024-{rows}"
            if not (folder / isic2024.HDF5).is_file():
                start = time.perf_counter()
                generate(folder, rows)
                print(f"generated {rows:>7,} rows in {time.perf_counter() - start:5.1f} s", flush=True)
            row = {**measure_setup(folder, run_options), "options": run_options}
            result["setup"].append(row)
            print(f"setup {row['rows']:>7,} rows: {row['setup_s']:6.1f} s (read {row['read_s']:.1f}, split "
                  f"{row['split_s']:.1f}, encode {row['encode_s']:.1f}, sampler {row['sampler_s']:.2f}), peak "
                  f"{row['peak_rss_gb']:.2f} GB, {row['features']} features"
                  f"{', patient_relative' if 'source_options' in run_options else ''}; epoch of "
                  f"{row['epoch_samples']:,} keys listed in {row['epoch_keys_s']:.2f} s; a whole-split epoch "
                  f"({row['full_epoch_samples']:,}) drawn in {row['full_epoch_sampler_s']:.2f} s, listed in "
                  f"{row['full_epoch_keys_s']:.2f} s", flush=True)
        largest = max(result["setup"], key=lambda r: r["rows"])
        print(f"aim at {FULL_SIZE:,} rows: setup <= {SETUP_SECONDS:.0f} s, <= {SETUP_GB:.0f} GB, an epoch's sampler "
              f"<= {SAMPLER_SECONDS:.0f} s; largest here: {largest['setup_s']:.1f} s, {largest['peak_rss_gb']:.2f} GB, "
              f"{largest['sampler_s']:.2f} s")
        images = root / "crops"
        images.mkdir(parents=True, exist_ok=True)
        result["image_rates"] = {k: round(v, 1) for k, v in image_rates(images, n=100 if args.quick else 300).items()}
        for kind in ("decode", "item@224"):
            hdf5, jpeg = result["image_rates"][f"hdf5 {kind}"], result["image_rates"][f"jpeg {kind}"]
            print(f"one worker, {kind:<9} HDF5 {hdf5:7.1f} images/s, JPEG files {jpeg:7.1f} images/s "
                  f"({hdf5 / jpeg:.2f}x)")
        rates = preprocess_rates(root, images=16 if args.quick else 160)
        result["preprocess"] = {str(k): {m: round(v, 1) for m, v in row.items()} for k, row in rates.items()}
        one, two = rates[1], rates[2]
        print(f"make preprocess  1 worker {one['images_per_s']:6.1f} images/s, 2 workers {two['images_per_s']:6.1f} "
              f"images/s ({two['images_per_s'] / one['images_per_s']:.2f}x; aim >= 1.8x on 2 free cores; "
              f"1024 x 1024 JPEG -> 256 px); CPU per image {one['cpu_ms_per_image']:.1f} ms and "
              f"{two['cpu_ms_per_image']:.1f} ms", flush=True)
    result["load_average_end"] = load_average()
    print(f"load average at the end: {result['load_average_end']}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
