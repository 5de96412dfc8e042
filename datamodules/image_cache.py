"""Resized copies of a dataset's images, so that an epoch does not decode full-resolution photos.

``build_cache`` writes them once (``make preprocess``, ``datamodules/preprocess.py``) and
``LesionDataModule`` reads them through ``find_cache`` / ``apply_cache``. Layout, formats and the
measured gain are in ``docs/datasets.md``. ``manifest.json`` is written last and records every
source and cached file: a folder without one is a partial build and never used, and any file that
changed since makes ``apply_cache`` raise ``StaleCache``: a cache is used whole or not at all.

Images stored inside an HDF5 file (``LesionRecord.image_key``) are cached like files: the
manifest's key is ``<file.hdf5>::<key>``, the cached file ``<file>/<key>.jpg``, and a change of
the HDF5 file makes every one of its images stale. ``build_cache`` encodes with a pool of
``workers`` processes; each image is encoded alone, so the files are the same bytes whatever the
number of workers.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import multiprocessing
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

from PIL import Image

from datamodules.atomic_files import atomic_write, write_json
from datamodules.dataset import load_rgb
from datamodules.records import KEY_SEPARATOR, DatasetError, LesionTable, split_location
from datamodules.synthetic.config import default_cache_root

MANIFEST = "manifest.json"
#: Bump when what a cached file holds changes (resampling, colour handling): old caches are then
#: refused by ``apply_cache`` instead of silently read as the new kind.
CACHE_VERSION = 2
SUBFOLDER = "resized"
IMAGE_FORMATS = ("jpeg", "png")
DEFAULT_FORMAT = "jpeg"
DEFAULT_QUALITY = 95


# -- where a cache lives ----------------------------------------------------------------------
def data_folder(table: LesionTable) -> Path:
    """The dataset's folder as read (``LesionTable.folder``): the folder of its CSV, which every
    reader finds at the top of ``data_dir`` but Derm7pt (its ``release_v0/``); for ``synthetic``
    it is the generated dataset's own folder, so each generator config has its own cache."""
    return table.folder.expanduser()


def folder_prefix(table: LesionTable) -> str:
    key = hashlib.sha1(str(data_folder(table).resolve()).encode()).hexdigest()[:10]
    return f"{table.dataset}-{key}-"


def cache_dir(table: LesionTable, size: int, cache_root: Optional[str | Path] = None) -> Path:
    root = Path(cache_root).expanduser() if cache_root else default_cache_root()
    return root / SUBFOLDER / f"{folder_prefix(table)}{int(size)}"


def find_cache(table: LesionTable, image_size: int, cache_root: Optional[str | Path] = None) -> Optional[Path]:
    """The complete cache (one with a manifest) of this dataset and data folder with the smallest
    size >= ``image_size``; ``None`` if there is none."""
    root = (Path(cache_root).expanduser() if cache_root else default_cache_root()) / SUBFOLDER
    if not root.is_dir():
        return None
    prefix = folder_prefix(table)
    found = []
    for folder in root.iterdir():
        suffix = folder.name[len(prefix):]
        if folder.name.startswith(prefix) and suffix.isdigit() and (folder / MANIFEST).is_file():
            if int(suffix) >= image_size:
                found.append((int(suffix), folder))
    return min(found)[1] if found else None


def relative(path: Path, folder: Path) -> str:
    """``path`` relative to the data folder, as a POSIX string (the manifest's key)."""
    path = Path(path).expanduser()
    for a, b in ((path, folder), (path.absolute(), folder.absolute()), (path.resolve(), folder.resolve())):
        try:
            return a.relative_to(b).as_posix()
        except ValueError:
            continue
    raise DatasetError(f"{path} is outside the data folder {folder}; it cannot be cached")


def source_rel(path: Path, key: Optional[str], folder: Path, known: Optional[dict[Path, str]] = None) -> str:
    """The manifest's key of an image: its file :func:`relative` to the data folder, followed by
    ``::<key>`` for an image inside an HDF5 file. ``known``: files already made relative (the
    401,059 images of one HDF5 file share one)."""
    if key is None:
        return relative(path, folder)
    if known is None or path not in known:
        rel = relative(path, folder)
        if known is None:
            return f"{rel}{KEY_SEPARATOR}{key}"
        known[path] = rel
    return f"{known[path]}{KEY_SEPARATOR}{key}"


def cached_name(rel: str, image_format: str = "png") -> str:
    """The cached file's name for source ``rel``: ``.jpg`` for JPEG-cached images, ``.png`` for
    PNG-cached images and for masks; ``<file>/<key>.<ext>`` for ``<file.hdf5>::<key>``."""
    suffix = ".jpg" if image_format == "jpeg" else ".png"
    path, key = split_location(rel)
    if key is not None:
        return (path.with_suffix("") / f"{key}{suffix}").as_posix()
    return Path(rel).with_suffix(suffix).as_posix()


def default_workers() -> int:
    """Every core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# -- writing ------------------------------------------------------------------------------------
def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(w, h) with the shorter side ``size``, aspect kept; never larger than the original."""
    short = min(width, height)
    if short <= size:
        return width, height
    scale = size / short
    if width <= height:
        return size, max(size, int(round(height * scale)))
    return max(size, int(round(width * scale))), size


def _stat(path: Path) -> dict[str, int]:
    st = os.stat(path)
    return {"bytes": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def _save(path: Path, image: Image.Image, image_format: str = "png", quality: int = DEFAULT_QUALITY) -> None:
    if image_format == "jpeg":
        # subsampling=0 (4:4:4): full-resolution colour; lesion colour is diagnostic, and 4:2:0
        # would halve it on top of the resize.
        atomic_write(path, lambda f: image.save(f, format="JPEG", quality=quality, subsampling=0), mode="wb")
    else:
        atomic_write(path, lambda f: image.save(f, format="PNG"), mode="wb")


class _Job(NamedTuple):
    """One image (and its mask) to encode: plain values, cheap to send to a worker process."""

    dataset: str
    line: Optional[int]
    image_path: Path
    image_key: Optional[str]
    mask_path: Optional[Path]
    dst: Path
    mask_dst: Optional[Path]
    size: int
    image_format: str
    quality: int


def _encode(job: _Job) -> tuple[dict[str, int], Optional[dict[str, int]]]:
    """Write one job's cached image (and mask); their stats, for the manifest."""
    source_size = _cache_image(job)
    mask_stat = None
    if job.mask_path is not None:
        _cache_mask(Path(job.mask_path), job.dataset, source_size, job.size, job.mask_dst)
        mask_stat = _stat(job.mask_dst)
    return _stat(job.dst), mask_stat


def _cache_image(job: _Job) -> tuple[int, int]:
    # Decoded as training decodes it (EXIF rotation, RGBA on white, 16-bit); JPEGs at a DCT scale
    # keeping both sides >= 2 * size, as LesionDataset does, so the Lanczos step still anti-aliases.
    # A mask must match the full-resolution image, so images with one are decoded in full.
    array = load_rgb(job.image_path, job.dataset, job.line, None if job.mask_path is not None else 2 * job.size,
                     job.image_key)
    image = Image.fromarray(array)
    target = resized_size(image.width, image.height, job.size)
    if target != image.size:
        image = image.resize(target, Image.LANCZOS)
    _save(job.dst, image, job.image_format, job.quality)
    return array.shape[1], array.shape[0]


def _cache_mask(mask_path: Path, dataset: str, source_size: tuple[int, int], size: int, dst: Path) -> None:
    try:
        with Image.open(mask_path) as mask:
            mask = mask.convert("L")
    except (OSError, ValueError) as err:
        raise DatasetError(f"{dataset}: cannot read lesion mask {mask_path}: {err}") from err
    if mask.size != source_size:
        raise DatasetError(f"{dataset}: mask {mask_path} is {mask.size[1]} x {mask.size[0]} px, its image "
                           f"{source_size[1]} x {source_size[0]}")
    target = resized_size(*source_size, size)
    if target != mask.size:
        mask = mask.resize(target, Image.NEAREST)
    _save(dst, mask, "png")


def build_cache(
    table: LesionTable,
    size: int,
    cache_root: Optional[str | Path] = None,
    *,
    source_options: Optional[dict[str, Any]] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    image_format: str = DEFAULT_FORMAT,
    quality: int = DEFAULT_QUALITY,
    workers: int = 1,
) -> Path:
    """Write every record's image (and mask) with its shorter side ``size`` px into the cache
    folder, then ``manifest.json``; return the folder. Files whose source is unchanged since a
    previous complete build of the same format are kept; files of a previous build that this one
    does not list are deleted. ``source_options`` (the reader options that gave ``table``) are
    recorded so a stale cache can say how to rebuild it; ``progress(done, total)`` is called after
    every image (in the order they finish). ``workers`` processes encode the images (fork start:
    they share the table without copying it).
    ``image_format`` is ``"jpeg"`` (at ``quality``, 4:4:4) or ``"png"`` (lossless)."""
    if int(size) < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    if int(workers) < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    size, quality = int(size), int(quality)
    source_root = data_folder(table)
    folder = cache_dir(table, size, cache_root)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time per folder
        old = _read_manifest(folder)
        (folder / MANIFEST).unlink(missing_ok=True)  # from here on the folder is a partial cache
        same_kind = (old.get("version"), old.get("format"), old.get("quality")) == \
            (CACHE_VERSION, image_format, quality if image_format == "jpeg" else None)
        old_files = old.get("files", {}) if same_kind else {}
        files: dict[str, Optional[dict[str, Any]]] = {}  # in record order; None until encoded
        owner: dict[str, str] = {}  # cached name -> source, to catch x.jpg and x.png side by side
        stats = _StatCache()

        def claim(rel: str, is_mask: bool = False) -> tuple[str, Optional[dict]]:
            name = cached_name(rel, "png" if is_mask else image_format)
            if owner.setdefault(name, rel) != rel:
                raise DatasetError(f"{table.dataset}: {owner[name]} and {rel} would both be cached as {name}")
            entry = old_files.get(rel)
            if entry and entry.get("cached") == name and _current(source_root / split_location(rel)[0],
                                                                  folder / name, entry, stats):
                return name, entry
            return name, None

        # Plan in record order: entries still current are kept, the rest become jobs.
        jobs: list[tuple[_Job, str, dict, Optional[str], Optional[dict]]] = []
        total, done, containers = len(table.records), 0, {}
        for record in table.records:
            rel = source_rel(record.image_path, record.image_key, source_root, containers)
            if rel in files:
                done += 1
                continue
            name, entry = claim(rel)
            mask_rel = relative(record.mask_path, source_root) if record.mask_path is not None else None
            mask_name, mask_entry = claim(mask_rel, is_mask=True) if mask_rel else (None, None)
            files[rel] = entry
            if mask_rel:
                files[mask_rel] = mask_entry
            if entry is None or (mask_rel and mask_entry is None):
                # Sources are stat-ed before decoding: a change while the cache is built is then caught.
                job = _Job(table.dataset, record.line, Path(record.image_path), record.image_key,
                           Path(record.mask_path) if mask_rel else None, folder / name,
                           folder / mask_name if mask_rel else None, size, image_format, quality)
                jobs.append((job, rel, {"cached": name, **stats.get(record.image_path)}, mask_rel,
                             {"cached": mask_name, **stats.get(record.mask_path)} if mask_rel else None))
            else:
                done += 1
        if progress is not None and done:
            progress(done, total)
        for (job, rel, entry, mask_rel, mask_entry), (cached_stat, mask_stat) in zip(
                jobs, _run(_encode, [j[0] for j in jobs], int(workers))):
            files[rel] = {**entry, "cached_stat": cached_stat}
            if mask_rel:
                files[mask_rel] = {**mask_entry, "cached_stat": mask_stat}
            done += 1
            if progress is not None:
                progress(done, total)
        manifest = {
            "version": CACHE_VERSION,
            "dataset": table.dataset,
            "data_dir": str(source_root.resolve()),
            "size": size,
            "format": image_format,
            "quality": quality if image_format == "jpeg" else None,
            "resample": "PIL LANCZOS (masks: NEAREST), shorter side = size, never upscaled",
            "source_options": source_options,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "files": files,
        }
        write_json(folder / MANIFEST, manifest)  # last: its presence means the folder is complete
        # Files of an earlier build that this one does not list (another format, dropped records).
        kept = {entry["cached"] for entry in files.values()}
        for entry in (old.get("files") or {}).values():
            name = entry.get("cached") if isinstance(entry, dict) else None
            if name and name not in kept and ".." not in Path(name).parts:
                (folder / name).unlink(missing_ok=True)
    return folder


def _run(function: Callable, jobs: list, workers: int):
    """``function`` over ``jobs``, results in job order: in this process for one worker, else in a
    pool of ``workers`` processes (stopped with the build, e.g. on Ctrl-C: the manifest is then
    not written and the folder stays a partial cache)."""
    if workers == 1 or len(jobs) < 2:
        yield from map(function, jobs)
        return
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    chunk = max(1, min(32, len(jobs) // (8 * workers)))
    with context.Pool(min(workers, len(jobs))) as pool:
        yield from pool.imap(function, jobs, chunksize=chunk)


class _StatCache:
    """``_stat`` of each file once per build (the images of one HDF5 file share its stat)."""

    def __init__(self) -> None:
        self.stats: dict[Path, dict[str, int]] = {}

    def get(self, path: Path) -> dict[str, int]:
        path = Path(path)
        if path not in self.stats:
            self.stats[path] = _stat(path)
        return self.stats[path]


def _current(source: Path, cached: Path, entry: dict, stats: "_StatCache") -> bool:
    try:
        return stats.get(source) == {"bytes": entry["bytes"], "mtime_ns": entry["mtime_ns"]} and \
            _stat(cached) == entry["cached_stat"]
    except (OSError, KeyError, TypeError):
        return False


def _read_manifest(folder: Path) -> dict:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


# -- reading ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CacheBuild:
    """How a cache was built: what ``make preprocess`` needs to build it again."""

    dataset: str
    #: The reader's ``data_dir`` (for ``synthetic``, the generator's cache root).
    data_dir: Path
    size: int
    cache_root: Path
    image_format: str = DEFAULT_FORMAT
    quality: int = DEFAULT_QUALITY
    #: Reader options; ``None`` where the build did not record them.
    source_options: Optional[dict[str, Any]] = None


class StaleCache(DatasetError):
    """A cache that no longer matches its source files or this code: ``reason`` says what
    changed; ``build`` (``None`` without a readable manifest) how to rebuild it."""

    def __init__(self, dataset: str, folder: Path, reason: str, build: Optional[CacheBuild]):
        super().__init__(f"{dataset}: the resized image cache {folder} is out of date: {reason}")
        self.dataset, self.folder, self.reason, self.build = dataset, folder, reason, build

    def __reduce__(self):
        return type(self), (self.dataset, self.folder, self.reason, self.build)


def recorded_build(table: LesionTable, folder: str | Path) -> Optional[CacheBuild]:
    """How the cache ``folder`` of ``table`` was built, from its manifest; ``None`` without one."""
    folder = Path(folder)
    manifest = _read_manifest(folder)
    if not isinstance(manifest.get("size"), int):
        return None
    data_dir = data_folder(table).absolute()
    options = manifest.get("source_options")
    if table.dataset == "synthetic":  # the data folder is named by the generator's options under its root
        data_dir = data_dir.parent
        if options is None:
            try:
                options = json.loads((data_folder(table) / "generator.json").read_text())
                options = {k: v for k, v in options.items() if k not in ("version", "images")}
            except (OSError, ValueError):
                pass
    return CacheBuild(table.dataset, data_dir, manifest["size"], folder.parent.parent,
                      manifest.get("format") or DEFAULT_FORMAT, manifest.get("quality") or DEFAULT_QUALITY, options)


def apply_cache(table: LesionTable, folder: str | Path) -> LesionTable:
    """``table`` with every record's image (and mask) pointing into the cache ``folder`` (the
    original file stays in ``source_path``), after checking each source and cached file against
    the manifest; any difference raises ``StaleCache`` naming the file."""
    folder = Path(folder)
    manifest = _read_manifest(folder)

    def stale(what: str) -> StaleCache:
        return StaleCache(table.dataset, folder, what, recorded_build(table, folder))

    if not manifest:
        raise stale(f"{folder / MANIFEST} is missing or unreadable")
    if manifest.get("version") != CACHE_VERSION:
        raise stale(f"it was written by cache version {manifest.get('version')}, this code reads {CACHE_VERSION}")
    files = manifest.get("files") or {}
    source_root = data_folder(table)
    checked: dict[str, Path] = {}
    stats, containers = _StatCache(), {}

    def cached(path: Path, key: Optional[str] = None) -> Path:
        rel = source_rel(path, key, source_root, containers)
        if rel in checked:
            return checked[rel]
        entry = files.get(rel)
        if entry is None:
            raise stale(f"{path}{KEY_SEPARATOR + key if key is not None else ''} is not in it")
        try:
            now = stats.get(path)
        except FileNotFoundError:
            raise stale(f"source file {path} no longer exists") from None
        if now != {"bytes": entry.get("bytes"), "mtime_ns": entry.get("mtime_ns")}:
            raise stale(f"source file {path} changed since it was cached "
                        f"({entry.get('bytes')} -> {now['bytes']} bytes, mtime {entry.get('mtime_ns')} -> "
                        f"{now['mtime_ns']} ns)")
        target = folder / entry["cached"]
        try:
            if _stat(target) != entry.get("cached_stat"):
                raise stale(f"cached file {target} (of {path}) was modified")
        except FileNotFoundError:
            raise stale(f"cached file {target} (of {path}) is missing") from None
        checked[rel] = target
        return target

    records = [
        replace(r, image_path=cached(r.image_path, r.image_key), image_key=None, source_path=r.original_path,
                mask_path=cached(r.mask_path) if r.mask_path is not None else None)
        for r in table.records
    ]
    return replace(table, records=records)
