"""Images stored as encoded bytes inside an HDF5 file, one dataset per image id (ISIC 2024's
``train-image.hdf5``: 401,059 JPEGs in one file).

Only the requested image's bytes are read. Each process opens a file once, lazily, on its first
read, and keeps it open: DataLoader workers and DDP processes each get their own handle. An HDF5
handle must not cross a ``fork`` (the child would share the parent's open-file state in the HDF5
library), so handles are keyed on the process id and every handle of a process is closed just
before it forks (``os.register_at_fork``); the parent reopens on its next read.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np

from datamodules.atomic_files import PROCESS_UMASK
from datamodules.records import DatasetError

#: pid -> {file: open h5py.File}. A forked child starts a new entry and never uses (or closes) the
#: entries it inherited.
_handles: dict[int, dict[str, object]] = {}


def _open(path: Path):
    import h5py  # only datasets stored in HDF5 need it

    handles = _handles.setdefault(os.getpid(), {})
    key = str(path)
    handle = handles.get(key)
    if handle is None:
        try:
            handle = h5py.File(path, "r")
        except FileNotFoundError:
            raise DatasetError(f"HDF5 file {path} does not exist") from None
        except OSError as err:
            raise DatasetError(f"cannot open HDF5 file {path}: {err}") from err
        handles[key] = handle
    return handle


def close_all() -> None:
    """Close this process's HDF5 handles (the next read reopens them)."""
    for handle in _handles.pop(os.getpid(), {}).values():
        try:
            handle.close()
        except Exception:  # noqa: BLE001 - closing a file that is already gone must not stop a fork
            pass


os.register_at_fork(before=close_all)


def open_handles() -> list[str]:
    """The files this process holds open (for tests)."""
    return sorted(_handles.get(os.getpid(), {}))


def read_bytes(path: str | Path, key: str) -> bytes:
    """The encoded image stored under ``key``: a scalar of bytes (as ISIC ships it), opaque bytes
    or a 1-D ``uint8`` array. A missing file or key, or another kind of dataset, is a
    ``DatasetError``. The ISIC layout is read through h5py's low-level API (a third of the time
    of ``file[key][()]``, which matters next to decoding a 150-px crop)."""
    import h5py

    path = Path(path)
    handle = _open(path)
    try:
        dataset = h5py.h5d.open(handle.id, key.encode("utf-8"))
    except KeyError:
        if key in handle:
            raise DatasetError(f"{path}::{key} is an HDF5 group, not an image") from None
        raise DatasetError(f"HDF5 file {path} has no image {key!r}") from None
    if dataset.dtype.kind == "S" and dataset.shape == ():
        value = np.empty((), dataset.dtype)
        dataset.read(h5py.h5s.ALL, h5py.h5s.ALL, value)
        return bytes(value[()])  # as h5py's own reading gives it
    node = h5py.Dataset(dataset)
    value = node[()]
    if isinstance(value, bytes):  # variable-length bytes
        return bytes(value)
    if isinstance(value, np.void):  # opaque type
        return value.tobytes()
    if isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 1:
        return value.tobytes()
    raise DatasetError(f"{path}::{key} holds {node.dtype} of shape {node.shape}, not the bytes of an encoded image")


def keys(path: str | Path) -> set[str]:
    """Every dataset name at the top of ``path`` (opened and closed here: the reader calls this in the
    parent process, which must not keep a handle across the DataLoader's fork)."""
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as handle:
            names: list[bytes] = []
            handle.id.links.iterate(names.append)  # the link names, without a Python object per link first
            return {name.decode("utf-8") for name in names}
    except OSError as err:
        raise DatasetError(f"cannot open HDF5 file {path}: {err}") from err


def write_images(path: str | Path, images: Iterable[tuple[str, bytes]]) -> Path:
    """An HDF5 file in the ISIC layout: one scalar bytes dataset per ``(key, encoded image)``,
    written beside ``path`` and renamed over it when complete."""
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as handle:
            for key, data in images:
                handle.create_dataset(key, data=np.bytes_(data))
        os.chmod(tmp, 0o666 & ~PROCESS_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
