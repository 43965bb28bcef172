"""Atomic writes that never overwrite an input file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from perovstem.errors import FileFormatError, OutputExistsError

__all__ = ["atomic_write", "atomic_path", "protect", "is_protected", "check_writable_place"]

_PROTECTED: set[Path] = set()


def protect(path: str | os.PathLike) -> None:
    """Register ``path`` as an input: later writes to it are refused."""
    _PROTECTED.add(Path(path).resolve())


def is_protected(path: str | os.PathLike) -> bool:
    return Path(path).resolve() in _PROTECTED


def _check_target(path: Path, overwrite: bool) -> None:
    if is_protected(path):
        raise OutputExistsError(f"refusing to overwrite input file {str(path)!r}")
    if path.exists() and not overwrite:
        raise OutputExistsError(
            f"output {str(path)!r} already exists (choose another name, or allow overwriting:"
            " --overwrite, Python overwrite=True)"
        )
    parent = path.parent
    if not parent.exists():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FileFormatError(
                f"cannot write {str(path)!r}: cannot create {str(parent)!r} ({exc.strerror})"
            ) from None
    if not parent.is_dir():
        raise FileFormatError(f"cannot write {str(path)!r}: {str(parent)!r} is not a directory")


def check_writable_place(path: str | os.PathLike, *, what: str = "", folder: bool = False) -> None:
    """Refuse, before any work, an output ``path`` that cannot be written: a folder on its
    way that is a file, or a nearest existing folder that is not writable.

    Writers check this when they write, which for a command is after its analysis (a
    21 s alignment lost for a typo in ``-o``); a folder output (``insitu -o``, ``demo -o``)
    failed with a raw ``NotADirectoryError``. ``what`` (e.g. ``"--out"``) names the option;
    ``folder``: ``path`` is a folder to write into (an existing file there is refused).
    """
    path = Path(path)
    label = f"{what} {str(path)!r}" if what else repr(str(path))
    for anc in [path, *path.parents] if folder else path.parents:
        if anc.exists():
            if not anc.is_dir():
                raise FileFormatError(f"cannot write {label}: {str(anc)!r} is not a directory")
            if not os.access(anc, os.W_OK | os.X_OK):
                raise FileFormatError(
                    f"cannot write {label}: {str(anc)!r} is not writable (permission denied)"
                )
            return


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    The temporary keeps the suffix of ``path`` so that format writers that look at the
    extension behave.  On error the temporary is removed and ``path`` is untouched.
    """
    path = Path(path)
    _check_target(path, overwrite)
    try:
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.stem}.", suffix=path.suffix + ".part" + path.suffix, dir=path.parent
        )
    except OSError as exc:  # read-only or special directory: one clear line, no traceback
        raise FileFormatError(
            f"cannot write {str(path)!r}: {str(path.parent)!r} is not writable ({exc.strerror})"
        ) from None
    os.close(fd)
    os.unlink(tmp)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.is_dir() and path.is_dir():
            import shutil

            shutil.rmtree(path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            if tmp_path.is_dir():
                import shutil

                shutil.rmtree(tmp_path, ignore_errors=True)
            else:
                tmp_path.unlink()


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike, *, mode: str = "wb", overwrite: bool = True, **kwargs: Any
) -> Iterator[IO]:
    """Open a temporary file for writing; it replaces ``path`` only when the block succeeds."""
    with atomic_path(path, overwrite=overwrite) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh
