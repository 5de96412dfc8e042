"""How every command-line entry point ends when something goes wrong: the one-line message last.

On the lowest floor, as every floor has entry points (``python -m datamodules.preprocess``, the
``experiments`` commands). An error the user can act on (a bad option, bad data, a bad or
diverged checkpoint, a full disk, a run folder in use: :data:`USER_ERRORS`) prints ``error: <message>`` and, where a resume can
continue the run, the command that does, with no traceback above them. Anything else is a bug
(or a failure of a library underneath): its traceback is printed, then the same one-line summary,
so the last line says what happened even when the traceback is long. ``DERMATTN_DEBUG=1`` in the
environment, or ``--debug`` on the command line, prints the traceback of every error (and is
handed to the training runs that ``cv``, ``compare`` and ``sweep`` start). The exit code is 1.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any, Callable, Optional, Sequence

from datamodules.atomic_files import DiskFullError

DEBUG_ENV = "DERMATTN_DEBUG"
DEBUG_FLAG = "--debug"
_ADVICE = "dermattn_advice"


class UserFacing:
    """Mixin of errors whose message says all the user needs (a diverged run, a run folder in use)."""


#: Errors whose message says all the user needs. ValueError covers the project's own input errors
#: (ConfigError, DatasetError, CheckpointError, InvalidOption, ...) and the argument checks of classes.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, DiskFullError, UserFacing)


def advise(error: BaseException, advice: str) -> None:
    """Attach what the user can do about ``error`` (one line, e.g. the command that resumes the
    run), for :func:`run` to print after the error's own line."""
    setattr(error, _ADVICE, advice)


def advice_of(error: BaseException) -> Optional[str]:
    return getattr(error, _ADVICE, None)


def debugging(argv: list[str]) -> bool:
    """Whether tracebacks are wanted; removes ``--debug`` from ``argv`` (before a ``--``, after
    which the arguments belong to another command)."""
    end = argv.index("--") if "--" in argv else len(argv)
    if DEBUG_FLAG in argv[:end]:
        argv.remove(DEBUG_FLAG)
        os.environ[DEBUG_ENV] = "1"  # the runs this command starts show theirs too
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def summary(error: BaseException, user: bool) -> str:
    text = str(error).strip() or type(error).__name__
    return text if user else f"{type(error).__name__}: {text}"


def run(main: Callable[[list[str]], Any], argv: Optional[Sequence[str]] = None) -> Any:
    """``main(argv)``, with any error reported as the module docstring says."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debugging(argv)
    try:
        return main(argv)
    except SystemExit:
        raise
    except KeyboardInterrupt:  # outside training (which handles its own Ctrl-C): nothing to save
        print("\ninterrupted", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    except BaseException as error:  # noqa: BLE001 - every error ends the command the same way
        user = isinstance(error, USER_ERRORS)
        if debug or not user:
            traceback.print_exc()
        lines = [f"error: {summary(error, user)}"]
        advice = advice_of(error)
        if advice:
            lines.append(advice)
        sys.stderr.flush()
        print("\n" + "\n".join(lines), file=sys.stderr, flush=True)
        raise SystemExit(1) from None
