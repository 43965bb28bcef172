"""A folder of single-frame image files read as one :class:`~perovstem.Series`.

In-situ acquisition software writes one file per frame: a flat folder of ``.tif`` or
``.dm4`` files, or, for Gatan's In-Situ datasets (GMS 3, OneView/K3 IS and DigiScan),
nested folders ``Hour_HH/Minute_MM/Second_SS/*.dm4`` whose frame files carry time stamps
to the second only.  Frames are read in natural path order; with ``lazy=True`` each frame
file is read when its frame is computed, so a long recording needs the memory of one frame.
"""

from __future__ import annotations

import os
import re
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from perovstem._data import Image, Series
from perovstem.errors import CalibrationError, DataError, FileFormatError, ParameterError
from perovstem.io.read import SUPPORTED_SUFFIXES, _natural_key, quietly_replacing_pixel_size

# one level of a Gatan In-Situ dataset (GMS 3): Hour_00/Minute_01/Second_02
_GMS_LEVEL = re.compile(r"^(hour|minute|second)_(\d+)$", re.IGNORECASE)
_SIDE_FILES = {".rawtlt", ".tlt", ".mdoc"}


def _is_frame_file(f: Path) -> bool:
    return (
        f.is_file()
        and not f.name.startswith(".")
        and f.suffix.lower() in SUPPORTED_SUFFIXES
        and f.suffix.lower() not in _SIDE_FILES
    )


def _visible_dirs(path: Path) -> list[Path]:
    return [d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")]


def _gms_files(path: Path) -> list[Path]:
    """Frame files of a Gatan In-Situ dataset under ``path`` (its root or any level)."""
    files = []
    for root, dirs, names in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = Path(root).relative_to(path).parts
        if not all(_GMS_LEVEL.match(p) for p in rel):
            continue  # e.g. an export or analysis folder next to Hour_00
        files += [Path(root) / n for n in names if _is_frame_file(Path(root) / n)]
    return files


def _frame_files(path: Path) -> tuple[list[Path], str]:
    """The frame files of ``path`` in frame order and the layout's name."""
    gms = bool(_GMS_LEVEL.match(path.name)) or any(
        _GMS_LEVEL.match(d.name) for d in _visible_dirs(path)
    )
    if gms:
        files = _gms_files(path)
        layout = "Gatan In-Situ dataset (Hour/Minute/Second folders)"
    else:
        files = [f for f in path.iterdir() if _is_frame_file(f)]
        layout = "folder"
    if not files:
        with_images = [d.name for d in _visible_dirs(path) if any(map(_is_frame_file, d.iterdir()))]
        hint = (
            f"; its subfolder(s) {', '.join(sorted(with_images)[:3])} do: give one of them"
            if with_images
            else ""
        )
        raise FileFormatError(
            f"{str(path)!r} is a directory holding no image files (a series given as a "
            f"folder needs one image file per frame: {', '.join(SUPPORTED_SUFFIXES)}){hint}"
        )
    files.sort(key=lambda f: [_natural_key(p) for p in f.relative_to(path).parts])
    if not gms:
        _warn_unread_frames(path, files)
    return files, layout


# companions a frame folder may hold beside its images (not frames in another format)
_COMPANION_SUFFIXES = {".txt", ".json", ".xml", ".log", ".csv", ".md", ".ini", ".yaml", ".yml"}


def _stem_pattern(name: str) -> str:
    return re.sub(r"\d+", "#", Path(name).stem.lower())


def _warn_unread_frames(path: Path, files: list[Path]) -> None:
    """Warn about files named as the frames but in a format that is not read as one
    (``frame_003.npy`` among ``frame_000.tif`` …): they were left out without a word, and
    the series has a gap there."""
    patterns = {_stem_pattern(f.name) for f in files}
    odd = sorted(
        (
            f
            for f in path.iterdir()
            if f.is_file()
            and not f.name.startswith(".")
            and f not in files
            and f.suffix.lower() not in _SIDE_FILES | _COMPANION_SUFFIXES
            and _stem_pattern(f.name) in patterns
        ),
        key=lambda f: _natural_key(f.name),
    )
    if odd:
        names = ", ".join(repr(f.name) for f in odd[:3]) + (" …" if len(odd) > 3 else "")
        warnings.warn(
            f"{str(path)!r}: {len(odd)} file(s) named as the frames are not in a format read "
            f"as a frame ({names}) and are left out: the series has a gap there (convert "
            f"them to {files[0].suffix} or move them out)",
            UserWarning,
            stacklevel=3,
        )


def _frame_stamp_s(img: Image) -> float | None:
    """A frame's acquisition time (s since the epoch, or since its own day's start for a
    naive local time) from its file: ``time_s``, else ``acquisition_start_utc``, else
    ``acquisition_start`` (ISO 8601)."""
    if img.time_s is not None:
        return float(img.time_s)
    for key in ("acquisition_start_utc", "acquisition_start"):
        v = img.metadata.get(key)
        if not v:
            continue
        try:
            t = datetime.fromisoformat(str(v))
        except ValueError:
            continue
        if t.tzinfo is None:
            t = t.replace(tzinfo=UTC)  # naive local times: differences are still right
        return t.timestamp()
    return None


def gms_frame_times(files: list[Path]) -> tuple[np.ndarray, float] | None:
    """Frame times (s after the first frame) of a Gatan In-Situ dataset from its folders.

    Each frame file lies in the folder of the second it was recorded in
    (``Hour_HH/Minute_MM/Second_SS``); frames of one second are spread evenly over it.  The
    frame rate is the median number of frames of the full seconds (all but the first and
    the last, which the recording starts and stops inside): the first second's frames are
    its last ones, the last second's its first ones.  Accurate to about one frame period.

    Parameters
    ----------
    files : list of Path
        Frame files in frame order.

    Returns
    -------
    (ndarray, float) or None
        Times (s) and the frame rate (frames/s); None when a file lies outside a
        ``Second_SS`` folder, the seconds do not increase in frame order, or the recording
        has no full second (its frame rate is then unknown).
    """
    secs = []
    for f in files:
        level = {}
        for part in f.parent.parts:
            m = _GMS_LEVEL.match(part)
            if m:
                level[m.group(1).lower()] = int(m.group(2))
        if "second" not in level:
            return None
        secs.append(3600 * level.get("hour", 0) + 60 * level.get("minute", 0) + level["second"])
    sec = np.asarray(secs, dtype=float)
    if np.any(np.diff(sec) < 0):
        return None
    _, start, counts = np.unique(sec, return_index=True, return_counts=True)
    if counts.size < 3:
        return None
    rate = float(np.median(counts[1:-1]))
    j = np.arange(sec.size) - np.repeat(start, counts)
    t = sec + j / np.repeat(counts, counts)  # full seconds: their own frame count
    first = slice(0, counts[0])
    t[first] = sec[first] + 1.0 - (counts[0] - j[first]) / max(rate, counts[0])
    last = slice(start[-1], None)
    t[last] = sec[last] + j[last] / max(rate, counts[-1])
    return t - t[0], rate


def load_folder(
    path: Path,
    *,
    pixel_size: float | None,
    kind: str | None,
    signal: str | None,
    lazy: bool,
) -> Series:
    """A folder of single-frame image files as one :class:`Series` (see :func:`load`).

    Frame times come from each file's time stamp (relative to the first frame) when every
    file has one and they increase; for a Gatan In-Situ dataset whose stamps are to the
    second, from its Hour/Minute/Second folders and the frame order
    (:func:`gms_frame_times`).  The dose per frame comes from the files when every file
    gives one.
    """
    from perovstem.io.read import load

    if kind in ("image", "tilt"):
        raise FileFormatError(
            f"{str(path)!r} is a folder: read as a series of frames (one image file per "
            f"frame), not kind={kind!r}"
            + (
                "; a tilt series needs its angles: write it as one stack (.mrc + .rawtlt, .hspy)"
                if kind == "tilt"
                else ""
            )
        )
    if not os.access(path, os.R_OK | os.X_OK):
        raise FileFormatError(f"{str(path)!r}: permission denied (cannot list the folder)")
    files, layout = _frame_files(path)
    kinds = sorted({f.suffix.lower() for f in files})
    if len(kinds) > 1:
        raise FileFormatError(
            f"{str(path)!r}: a folder read as a series must hold one kind of image file, "
            f"it holds {', '.join(kinds)} files; move the others out"
        )
    names = [str(f.relative_to(path)) for f in files]
    # every file's header (lazily: its data stay on disk); only what the series needs is
    # kept, so a long recording does not hold a thousand open readers
    first: Image | None = None
    stamps: list[float | None] = []
    doses: list[float | None] = []
    instrument: list[dict[str, Any]] = []
    dtypes = []
    eager = None
    replaced: set[float] = set()
    for k, f in enumerate(files):
        # a given pixel size replacing each frame's calibration is said once for the folder
        # below, not once per frame (a thousand lines)
        with quietly_replacing_pixel_size():
            img = load(f, pixel_size=pixel_size, signal=signal, lazy=lazy)
        if img.metadata.get("pixel_size_file_A") is not None:
            replaced.add(float(img.metadata["pixel_size_file_A"]))
        if not isinstance(img, Image):
            raise DataError(
                f"{str(path)!r}: a folder read as a series needs one image per file; "
                f"{names[k]!r} holds {img.data.shape[0]} frames ({type(img).__name__})"
            )
        if first is None:
            first = img
        else:
            if img.data.shape != first.data.shape:
                raise DataError(
                    f"{str(path)!r}: frames of different shapes ({names[0]!r} "
                    f"{first.data.shape[0]}×{first.data.shape[1]} px, {names[k]!r} "
                    f"{img.data.shape[0]}×{img.data.shape[1]} px): not one series"
                )
            if abs(img.pixel_size_A - first.pixel_size_A) > 1e-3 * first.pixel_size_A:
                raise CalibrationError(
                    f"{str(path)!r}: frames of different pixel sizes ({names[0]!r} "
                    f"{first.pixel_size_A:.6g} Å, {names[k]!r} {img.pixel_size_A:.6g} Å): "
                    "not one series (or pass --pixel-size-A / pixel_size= to use one size)"
                )
        stamps.append(_frame_stamp_s(img))
        doses.append(img.dose_e_per_A2)
        instrument.append({key: img.metadata.get(key) for key in _CARRIED})
        dtypes.append(np.dtype(img.data.dtype))
        if not lazy:
            if eager is None:  # filled in place: no second copy of the whole series
                eager = np.empty((len(files), *img.data.shape), dtype=img.data.dtype)
            elif np.result_type(eager.dtype, img.data.dtype) != eager.dtype:
                eager = eager.astype(np.result_type(eager.dtype, img.data.dtype))
            eager[k] = np.asarray(img.data)
    assert first is not None
    md: dict[str, Any] = {
        "source": str(path),
        "format": f"{layout} of {kinds[0]} files",
        "frame_files": names,
    }
    if pixel_size is not None:
        md["pixel_size_source"] = "user"
    if replaced:
        shown = ", ".join(f"{v:.6g}" for v in sorted(replaced))
        warnings.warn(
            f"{str(path)!r}: the pixel size given ({float(pixel_size):.6g} Å) replaces the "
            f"frames' ({shown} Å)",
            UserWarning,
            stacklevel=3,
        )
        md["pixel_size_file_A"] = sorted(replaced)[0]
    for key in ("acquisition_start_utc", "acquisition_start", "acquisition_time_zone"):
        if first.metadata.get(key) is not None:
            md[key] = first.metadata[key]
    md.update(_same_in_every_frame(instrument))
    time_s = _times(path, files, names, stamps, md, gms=layout != "folder")
    dose = np.asarray(doses, dtype=float) if all(d is not None for d in doses) else None
    if lazy:
        data = _lazy_stack(files, first.data.shape, np.result_type(*dtypes), pixel_size, signal)
    else:
        data = eager
    try:
        return Series(data, first.pixel_size_A, time_s=time_s, dose_e_per_A2=dose, metadata=md)
    except (ParameterError, DataError) as exc:
        raise DataError(f"{str(path)!r}: {exc}") from None


# instrument entries of the frame files that the series keeps when every frame has the
# same: the beam energy and the probe / detector angles choose the cross-section libraries
_CARRIED = (
    "high_tension_kV",
    "magnification",
    "semiangle_mrad",
    "detector_mrad",
    "beam_current_A",
    "beam_current_A_source",
    "dwell_time_s",
    "dwell_time_s_source",
)


def _same_in_every_frame(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The entries of :data:`_CARRIED` that every frame file records alike (numbers to
    1e-6), and ``frames_differ``: those recorded differently (when any)."""
    out: dict[str, Any] = {}
    differ = []
    for key in _CARRIED:
        vals = [r.get(key) for r in rows]
        if all(v is None for v in vals):
            continue
        v0 = vals[0]
        try:
            same = all(
                v is not None and np.allclose(np.asarray(v, float), np.asarray(v0, float),
                                              rtol=1e-6, atol=0)
                for v in vals
            )  # fmt: skip
        except (TypeError, ValueError):
            same = all(v == v0 for v in vals)
        if same:
            out[key] = v0
        elif not key.endswith("_source"):
            differ.append(key)
    if differ:
        out["frames_differ"] = differ
    return out


def _times(
    path: Path,
    files: list[Path],
    names: list[str],
    stamps: list[float | None],
    md: dict[str, Any],
    *,
    gms: bool,
) -> np.ndarray | None:
    """Frame times of the folder's frames (None when not known), their source in ``md``."""
    n = len(files)
    if n < 2:
        return None
    stamped = all(t is not None for t in stamps)
    if stamped:
        t = np.asarray(stamps, dtype=float) - float(stamps[0])  # type: ignore[arg-type]
        if np.all(np.diff(t) > 0):
            md["time_source"] = "the frame files' time stamps"
            return t
    found = gms_frame_times(files) if gms else None
    if found is not None:
        md["time_source"] = (
            "the Hour/Minute/Second folders and the frame order in each second "
            f"({found[1]:.4g} frames/s; to about one frame period)"
        )
        md["frame_rate_hz"] = found[1]
        return found[0]
    if stamped:
        i = int(np.argmax(np.diff(t) <= 0))
        warnings.warn(
            f"{str(path)!r}: the frame files' time stamps do not increase in name order "
            f"({names[i]!r} {t[i]:.6g} s, {names[i + 1]!r} {t[i + 1]:.6g} s "
            "after the first; e.g. stamps to the second only): the series has no frame "
            "times (give the frame time with --frame-time-s, or time_s=)",
            UserWarning,
            stacklevel=4,
        )
    elif gms:
        md["time_note"] = (
            "no frame times from the Hour/Minute/Second folders: no full second (a "
            "Second_SS folder between the first and the last) to find the frame rate "
            "from, or frames outside Second_SS folders (give --frame-time-s)"
        )
    elif any(t is not None for t in stamps):
        missing = [nm for nm, t in zip(names, stamps, strict=True) if t is None]
        md["time_note"] = (
            f"no frame times: {len(missing)} of {n} files have no time stamp (e.g. {missing[0]!r})"
        )
    return None


def _read_frame(f: Path, dtype: np.dtype, pixel_size: float | None, signal: str | None) -> Any:
    from perovstem.io.read import load

    # the folder said once that the given pixel size replaces the frames' own
    with quietly_replacing_pixel_size():
        return np.asarray(load(f, pixel_size=pixel_size, signal=signal).data, dtype=dtype)


def _lazy_stack(
    files: list[Path],
    shape: tuple[int, ...],
    dtype: np.dtype,
    pixel_size: float | None,
    signal: str | None,
) -> Any:
    """Frames as a dask array, one chunk per file, each file read when computed."""
    import dask
    import dask.array as da

    read = dask.delayed(_read_frame, pure=True)
    return da.stack(
        [
            da.from_delayed(read(f, dtype, pixel_size, signal), shape=shape, dtype=dtype)
            for f in files
        ]
    )
