"""Files written whole or not at all: a temp file in the same folder, then rename.

Shared by both floors (the image cache here, results and checkpoints in ``lightning_modules``).
A write that fails leaves the earlier file as it was; one that fails because the disk is full
raises :class:`DiskFullError`, which says so, names the file and gives the space it needed and
the space left. JSON is written strictly: a non-finite number becomes ``null`` (JSON has no NaN).
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

#: What a write fails with when there is no room: the disk is full, or the user's quota is.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """A write that did not fit. ``path``: the file; ``needed``: the bytes being written (or, when
    the size was not known in advance, at least those written before the failure; ``None``: not
    known); ``free``: the bytes left on its filesystem."""

    def __init__(self, path: Path, needed: Optional[int], free: Optional[int], at_least: bool = False,
                 atomic: bool = True):
        self.path, self.needed, self.free = Path(path), needed, free
        left = f"{format_bytes(free)} free" if free is not None else "free space unknown"
        need = f" needed {'at least ' if at_least else ''}{format_bytes(needed)}," if needed is not None else ";"
        kept = "; the file was not written and the earlier one, if any, is intact" if atomic else ""
        super().__init__(errno.ENOSPC, f"the disk is full: writing {self.path}{need} {left} on its filesystem{kept}")

    @classmethod
    def from_error(cls, error: BaseException, folder: Path) -> "DiskFullError":
        """The same for a "no space left" raised by another writer (a library's log file, say): its
        file if the error names one, else ``folder``."""
        while error is not None and not (isinstance(error, OSError) and error.errno in NO_SPACE):
            error = error.__cause__ or error.__context__
        path = Path(error.filename) if error is not None and error.filename else Path(folder)
        return cls(path, None, free_bytes(path.parent if path != Path(folder) else path), atomic=False)

    def __str__(self) -> str:
        return self.strerror


def format_bytes(n: Optional[int]) -> str:
    if n is None:
        return "?"
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def out_of_space(error: BaseException) -> bool:
    """Whether ``error`` or an error it was raised from is "no space left" (libraries such as
    torch's zip writer re-raise it as a RuntimeError with the OSError as its context)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno in NO_SPACE:
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def free_bytes(folder: Path) -> Optional[int]:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None

import numpy as np
from PIL import Image


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "w", size: Optional[int] = None) -> Path:
    """Call ``write(handle)`` on a temp file beside ``path``, then rename it over ``path``.

    The temp file lives in the target's folder (a rename across filesystems would be a copy, not
    atomic); it gets the permissions a plain ``open`` would give (mkstemp makes it 0600), and the
    folder is synced after the rename so the new name survives a crash. ``size``: the bytes about
    to be written, when known, for the message of a :class:`DiskFullError`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as err:
        if out_of_space(err):
            raise DiskFullError(path, size or 0, free_bytes(path.parent), at_least=size is None) from err
        raise
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~PROCESS_UMASK)
        os.replace(tmp, path)
    except BaseException as err:
        written = Path(tmp).stat().st_size if Path(tmp).exists() else 0
        Path(tmp).unlink(missing_ok=True)
        if out_of_space(err):  # measured after the partial file is gone: the space the user has
            raise DiskFullError(path, size or written, free_bytes(path.parent), at_least=size is None) from err
        raise
    _sync_dir(path.parent)
    return path


def _read_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it; done once, at import
    os.umask(mask)
    return mask


PROCESS_UMASK = _read_umask()


def _sync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json(path: str | Path, data: Any) -> Path:
    """``data`` as strict JSON: NaN and infinities (a score that could not be computed) become
    ``null``, and anything that would still write a bare ``NaN`` token is refused."""
    text = json.dumps(finite_or_none(data), indent=2, sort_keys=False, default=_plain, allow_nan=False)
    return atomic_write(path, lambda f: f.write(text), size=len(text.encode()))


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float (also in numpy scalars and arrays) replaced by ``None``."""
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    if isinstance(value, np.ndarray):
        return finite_or_none(value.tolist())
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # tensors, numpy scalars
        return finite_or_none(value.tolist())
    return value


def write_png(path: str | Path, image: np.ndarray) -> Path:
    return atomic_write(path, lambda f: Image.fromarray(image).save(f, format="PNG"), mode="wb")


def _plain(value: Any) -> Any:
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
