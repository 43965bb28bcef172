"""File access for pipeline run folders: artefact cache, JSON state, checksums.

The pipeline (``perovstem.pipeline``) never opens files itself; it stores and reloads the
artefacts that flow between steps through this module.  Every write is atomic (temporary
file + rename), so a run killed at any instant leaves either the old or the new file,
never a truncated one.

Artefact kinds and on-disk formats
----------------------------------
* ``pandas.DataFrame`` → ``<name>.parquet`` (``df.attrs`` kept).
* ``numpy.ndarray`` → ``<name>.npy``.
* ``dict`` of DataFrames → folder ``<name>.tables/`` with one Parquet per key.
* JSON-serialisable scalars/dicts/lists → ``<name>.json``.
* anything else (Image, Series, TiltSeries, ase.Atoms, trajectories, ...) → ``<name>.pkl``
  (an internal cache format; public outputs are written as Parquet/NPY/PNG/HTML).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from perovstem.errors import FileFormatError

__all__ = [
    "sha256_file",
    "write_bytes",
    "write_text",
    "write_json",
    "read_json",
    "read_bytes",
    "write_artefact",
    "read_artefact",
    "artefact_files",
    "write_table",
    "read_table",
    "dir_is_empty",
    "remove_tree",
    "acquire_lock",
    "release_lock",
]

_SUFFIXES = (".parquet", ".npy", ".tables", ".json", ".pkl")


def sha256_file(
    path: str | os.PathLike, *, chunk: int = 1 << 20, exclude: str | os.PathLike | None = None
) -> str:
    """SHA-256 hex digest of a file (or of all files below a folder, in sorted order;
    those below ``exclude`` left out: a run folder inside its input folder changed the
    input's digest at every run, which then never came from the cache)."""
    p = Path(path)
    h = hashlib.sha256()
    if p.is_dir():
        skip = Path(exclude).resolve() if exclude is not None else None
        files = (q for q in p.rglob("*") if q.is_file())
        if skip is not None:
            files = (q for q in files if not q.resolve().is_relative_to(skip))
        for f in sorted(files):
            h.update(str(f.relative_to(p)).encode())
            h.update(sha256_file(f).encode())
        return h.hexdigest()
    try:
        with open(p, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    except OSError as exc:
        raise FileFormatError(f"cannot read input file {str(p)!r}: {exc.strerror}") from None
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _tmp_next_to(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    # mkstemp creates the file 0600; the renamed result (report, tables, plots) must get the
    # permissions of any new file (0644 under umask 022) so that colleagues can read it
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    return Path(tmp)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    path = Path(path)
    tmp = _tmp_next_to(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (numpy values converted)."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default))


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file (``FileFormatError`` when unreadable)."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FileFormatError(f"cannot read JSON file {str(p)!r}: {exc}") from None


def read_bytes(path: str | os.PathLike) -> bytes:
    """Read a whole file as bytes."""
    p = Path(path)
    try:
        return p.read_bytes()
    except OSError as exc:
        raise FileFormatError(f"cannot read {str(p)!r}: {exc.strerror}") from None


def _clean_attrs(attrs: dict) -> dict:
    """JSON-safe copy of ``df.attrs`` (numpy → lists, unknown objects → repr)."""
    return json.loads(json.dumps(attrs, default=_json_default))


def write_table(df: Any, path: str | os.PathLike) -> Path:
    """Write a DataFrame as Parquet (or CSV by suffix) atomically, keeping ``df.attrs``."""
    path = Path(path)
    out = df.copy(deep=False)
    out.attrs = _clean_attrs(dict(df.attrs))
    tmp = _tmp_next_to(path)
    try:
        if path.suffix == ".csv":
            out.to_csv(tmp, index=False)
        else:
            out.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_table(path: str | os.PathLike) -> Any:
    """Read a Parquet/CSV table written by :func:`write_table`."""
    import pandas as pd

    p = Path(path)
    try:
        return pd.read_csv(p) if p.suffix == ".csv" else pd.read_parquet(p)
    except (OSError, ValueError) as exc:
        raise FileFormatError(f"cannot read table {str(p)!r}: {exc}") from None


def _is_json_like(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float | str):
        return True
    if isinstance(value, list | tuple):
        return all(_is_json_like(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json_like(v) for k, v in value.items())
    return False


def artefact_files(folder: str | os.PathLike, name: str) -> list[Path]:
    """Existing files/folders holding artefact ``name`` in ``folder``."""
    folder = Path(folder)
    return [folder / f"{name}{s}" for s in _SUFFIXES if (folder / f"{name}{s}").exists()]


def remove_tree(path: str | os.PathLike) -> None:
    """Remove a file or a folder tree (no error when absent)."""
    import shutil

    p = Path(path)
    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists():
        p.unlink()


def write_artefact(value: Any, folder: str | os.PathLike, name: str) -> Path:
    """Store one artefact in ``folder`` (format chosen by type, see module docstring).

    Returns the path written.  An older copy of the same artefact (in any format) is replaced.
    """
    import pandas as pd

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in artefact_files(folder, name):
        remove_tree(old)
    if isinstance(value, pd.DataFrame):
        return write_table(value, folder / f"{name}.parquet")
    if isinstance(value, np.ndarray) and value.dtype.kind in "biufc":
        tmp = _tmp_next_to(folder / f"{name}.npy")
        try:
            with open(tmp, "wb") as fh:
                np.save(fh, value, allow_pickle=False)
            os.replace(tmp, folder / f"{name}.npy")
        finally:
            if tmp.exists():
                tmp.unlink()
        return folder / f"{name}.npy"
    if (
        isinstance(value, dict)
        and value
        and all(isinstance(k, str) and isinstance(v, pd.DataFrame) for k, v in value.items())
    ):
        final = folder / f"{name}.tables"
        tmpdir = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".part", dir=folder))
        try:
            order = []
            for i, (k, df) in enumerate(value.items()):
                write_table(df, tmpdir / f"{i:03d}.parquet")
                order.append(k)
            write_json(tmpdir / "keys.json", order)
            os.replace(tmpdir, final)
        finally:
            remove_tree(tmpdir)
        return final
    if _is_json_like(value):
        return write_json(folder / f"{name}.json", {"value": value})
    return write_bytes(
        folder / f"{name}.pkl", pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    )


def read_artefact(folder: str | os.PathLike, name: str) -> Any:
    """Load an artefact stored by :func:`write_artefact`."""
    files = artefact_files(folder, name)
    if not files:
        raise FileFormatError(f"artefact {name!r} is missing from {str(folder)!r}")
    p = files[0]
    if p.suffix == ".parquet":
        return read_table(p)
    if p.suffix == ".npy":
        return np.load(p, allow_pickle=False)
    if p.suffix == ".tables":
        keys = read_json(p / "keys.json")
        return {k: read_table(p / f"{i:03d}.parquet") for i, k in enumerate(keys)}
    if p.suffix == ".json":
        return read_json(p)["value"]
    try:
        return pickle.loads(read_bytes(p))
    except Exception as exc:  # stale cache from another version
        raise FileFormatError(
            f"cannot read cached artefact {str(p)!r}: {exc}; delete the folder "
            f"{str(Path(folder))!r} and run again (the step that made it then runs again)"
        ) from None


def dir_is_empty(path: str | os.PathLike) -> bool:
    """True when ``path`` does not exist or is an empty folder."""
    p = Path(path)
    return not p.exists() or (p.is_dir() and not any(p.iterdir()))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def acquire_lock(folder: str | os.PathLike) -> Path:
    """Take ``<folder>/.lock`` for this process (a stale lock of a dead process is taken over).

    Raises
    ------
    OutputExistsError
        Another live process holds the lock.
    """
    from perovstem.errors import OutputExistsError

    lock = Path(folder) / ".lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _pid_alive(pid):
                raise OutputExistsError(
                    f"run folder {str(folder)!r} is in use by another perovstem process "
                    f"(pid {pid}); wait for it or choose another --out"
                ) from None
            lock.unlink(missing_ok=True)  # stale: the process was killed
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        return lock
    raise OutputExistsError(f"cannot lock run folder {str(folder)!r}")


def release_lock(lock: str | os.PathLike) -> None:
    """Remove a lock taken by :func:`acquire_lock` (no error when already gone)."""
    Path(lock).unlink(missing_ok=True)
