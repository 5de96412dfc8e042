"""Write the resized-image cache that training then reads (``datamodules/image_cache.py``).

    python -m datamodules.preprocess --dataset isic2020 --data-dir /data/isic2020 --size 512 \
        [--format jpeg|png] [--quality 95] [--workers N] [--cache-root ~/.cache/dermattn] \
        [--source-options '{"task": "diagnosis"}']
    make preprocess DATA=isic2020 DATA_DIR=/data/isic2020 SIZE=512 [FORMAT=png] [WORKERS=N]

Images are cached as JPEG (quality 95, 4:4:4) unless ``--format png`` (lossless, slower to
decode, about 3x the disk); masks always as PNG. ``--workers`` processes encode them (default:
every core); the files are the same whatever their number.

Shows a progress bar with the rate and time left, then the total time, and last the cache
folder. Re-running after some source files changed re-encodes only those. ``preprocess_command``
words this command line for a stale cache's error.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from datamodules.image_cache import (  # noqa: E402
    DEFAULT_FORMAT, DEFAULT_QUALITY, IMAGE_FORMATS, CacheBuild, build_cache, default_workers,
)
from datamodules.records import DatasetError  # noqa: E402
from datamodules.sources import DATASETS, read_table  # noqa: E402
from datamodules.synthetic.config import default_cache_root  # noqa: E402

def preprocess_command(build: Optional[CacheBuild]) -> str:
    """The ``make preprocess`` line that (re)builds a cache, quoted for the shell; a template
    where the build is unknown."""
    if build is None:
        return "make preprocess DATA=... DATA_DIR=... SIZE=..."
    parts = []
    root = Path(build.cache_root).expanduser().absolute()
    if root != default_cache_root().expanduser().absolute():
        parts.append(f"DERMATTN_CACHE={shlex.quote(str(root))}")
    parts += ["make", "preprocess", f"DATA={build.dataset}", f"DATA_DIR={shlex.quote(str(build.data_dir))}",
              f"SIZE={int(build.size)}"]
    if build.image_format != DEFAULT_FORMAT:
        parts.append(f"FORMAT={build.image_format}")
    if build.image_format == "jpeg" and int(build.quality) != DEFAULT_QUALITY:
        parts.append(f"QUALITY={int(build.quality)}")
    if build.source_options:
        # make pastes ARGS into the recipe's shell line, so the JSON needs quoting twice.
        options = json.dumps(build.source_options, sort_keys=True, separators=(",", ":"))
        if any(c in options for c in "'$`\\"):
            parts.append(f"ARGS={shlex.quote('--source-options ' + shlex.quote(options))}")
        else:
            escaped = options.replace('"', '\\"')
            parts.append(f'ARGS="--source-options \'{escaped}\'"')
    return " ".join(parts)


class ProgressBar:
    """``build_cache``'s ``progress(done, total)`` as a tqdm bar on stderr (rate, elapsed, time left)."""

    def __init__(self, description: str):
        self.description = description
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.description, unit="img", file=sys.stderr, dynamic_ncols=True)
        self.bar.update(done - self.bar.n)

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datamodules.preprocess", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--data-dir", default=None,
                        help="the dataset's folder as downloaded (synthetic: the generator's cache root)")
    parser.add_argument("--size", type=int, default=512, help="shorter side of the cached images, px")
    parser.add_argument("--format", default=DEFAULT_FORMAT, choices=IMAGE_FORMATS,
                        help="how cached images are stored: jpeg (lossy, fast to decode) or png (lossless)")
    parser.add_argument("--quality", type=int, default=DEFAULT_QUALITY, help="JPEG quality, 1-100")
    parser.add_argument("--workers", type=int, default=None,
                        help=f"processes encoding images (default: every core, here {default_workers()})")
    parser.add_argument("--cache-root", default=None, help="default: $DERMATTN_CACHE or ~/.cache/dermattn")
    parser.add_argument("--source-options", default=None, type=json.loads,
                        help='reader options as JSON, e.g. \'{"task": "diagnosis"}\'')
    args = parser.parse_args(argv)
    if args.size < 1:
        parser.error(f"--size must be positive, got {args.size}")
    if not 1 <= args.quality <= 100:
        parser.error(f"--quality must be in 1..100, got {args.quality}")
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    workers = args.workers or default_workers()
    options = args.source_options or {}
    if not isinstance(options, dict):
        parser.error("--source-options must be a JSON object")
    start = time.perf_counter()
    try:
        table = read_table(args.dataset, args.data_dir, **options)
        with ProgressBar(f"caching {args.dataset} at {args.size} px") as progress:
            folder = build_cache(table, args.size, args.cache_root, source_options=options, progress=progress,
                                 image_format=args.format, quality=args.quality, workers=workers)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    minutes, seconds = divmod(time.perf_counter() - start, 60)
    print(f"cached {len(table.records)} images at {args.size} px ({args.format}, {workers} worker"
          f"{'s' if workers > 1 else ''}) in {int(minutes)} min {seconds:.1f} s", file=sys.stderr)
    print(folder)
    return 0


if __name__ == "__main__":
    from datamodules.entry_point import run

    sys.exit(run(main))
