"""One run at a time in a run folder: an exclusive lock, held while the run lives.

Two runs writing one folder (the same ``--run.dir``, or a resume of a run that is still going)
overwrite each other's checkpoints, share a W&B id and truncate ``metrics.csv``. A run takes an
exclusive ``flock`` on ``<run>/.run.lock`` before it writes anything there; a second run is
refused with the first one's process id and host, which the lock file records. The lock goes
with the process: released by :meth:`RunLock.release` at the end of the run, and by the
operating system when the process dies, however it dies, so a lock is never stale (the file that
stays behind is not the lock). Under DDP only the process of global rank 0 locks; the others
join its folder (``experiments/run_folder.py``).
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from pathlib import Path
from typing import Optional

from datamodules.entry_point import UserFacing

try:
    import fcntl
except ImportError:  # Windows: no flock; runs go unprotected (with a warning)
    fcntl = None

LOCK_FILE = ".run.lock"


class RunFolderBusy(UserFacing, RuntimeError):
    """Another live process holds the run folder."""


class RunLock:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        if fcntl is None:
            warnings.warn("this platform has no flock: nothing stops a second run from writing into "
                          f"{self.path.parent}", stacklevel=2)
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held by a live process
            holder = self.path.read_text(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunFolderBusy(f"{self.path.parent} is in use by {holder}: two runs in one folder would overwrite "
                                "each other. Wait for it to finish (or stop it), or use another folder") from None
        except OSError as err:  # a filesystem without locks (some network mounts): run, unprotected
            os.close(fd)
            warnings.warn(f"cannot lock the run folder {self.path.parent} ({err}); nothing stops a second run "
                          "from writing into it", stacklevel=2)
            return self
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()} (since {time.strftime('%Y-%m-%d %H:%M:%S')})\n"
                 .encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            # Unlocked explicitly: DataLoader workers forked meanwhile share the descriptor, and a
            # close alone would leave the lock held until the last of them exits.
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __del__(self) -> None:  # a CLI object dropped without ending its run (tests, notebooks)
        self.release()
