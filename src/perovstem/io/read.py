"""``load``: one entry point for every supported file format."""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from perovstem._data import Image, Series, TiltSeries
from perovstem.errors import (
    CalibrationError,
    DataError,
    FileFormatError,
    OptionalDependencyError,
    ParameterError,
    PerovstemError,
)
from perovstem.io._mrc import (  # a stack axis spanning less than the first is no tilt series
    _ANGLES_AGREE_DEG,
    _MIN_TILT_SPAN_DEG,
    angle_file_candidates,
    mdoc_candidates,
)
from perovstem.io._units import is_reciprocal_length, length_to_A
from perovstem.io._write import protect

__all__ = ["load", "SUPPORTED_SUFFIXES"]

# suffix -> rsciio plugin module
_RSCIIO = {
    ".dm3": "digitalmicrograph",
    ".dm4": "digitalmicrograph",
    ".emd": "emd",
    ".ser": "tia",
    ".emi": "tia",
    ".hspy": "hspy",
    ".hdf5": "hspy",
    ".tif": "tiff",
    ".tiff": "tiff",
}
_MRC = {".mrc", ".ali", ".st", ".rec", ".mrcs", ".map"}
SUPPORTED_SUFFIXES = sorted({*_RSCIIO, *_MRC, ".npz", ".mat", ".zarr"})

E_CHARGE = 1.602176634e-19  # C
# Pixel sizes a file may claim: 1 pm (below any STEM sampling) to 1 mm (survey images, as
# for the pixel_size= parameter); outside is a unit mistake in the file.
_FILE_PIXEL_A = (1e-2, 1e7)
# set by a folder read, which says once for the whole folder that the given pixel size
# replaces the frames' own; a context variable, not a warnings filter, because dask reads
# lazy frames in threads and warnings filters are process-wide (a thread restoring them let
# another thread's frame warning through)
quiet_pixel_replacement: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "quiet_pixel_replacement", default=False
)


@contextlib.contextmanager
def quietly_replacing_pixel_size() -> Any:
    """Within: :func:`load` records a replaced pixel size without warning (this thread
    only): a folder says it once for all its frames, `perovstem info` gives a stand-in."""
    token = quiet_pixel_replacement.set(True)
    try:
        yield
    finally:
        quiet_pixel_replacement.reset(token)


# what a file's first bytes say it is: (family, suffixes of that family)
_FAMILIES = {
    "DigitalMicrograph": (".dm3", ".dm4"),
    "HDF5 (Velox emd or HyperSpy hspy)": (".emd", ".hspy", ".hdf5"),
    "TIFF": (".tif", ".tiff"),
    "TIA ser": (".ser",),
    "MRC": tuple(sorted(_MRC)),
    "zip (.npz)": (".npz",),
    "MATLAB": (".mat",),
    # not readable under any name: a picture exported for display, a document, text
    "PNG picture": (),
    "JPEG picture": (),
    "GIF picture": (),
    "BMP picture": (),
    "PDF document": (),
    "text": (),
}


def _content_family(path: Path) -> str | None:
    """The file family that the first bytes of ``path`` identify, if any."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(1024)
    except OSError:
        return None
    if head.startswith(b"\x89HDF\r\n\x1a\n") or head[512:520] == b"\x89HDF\r\n\x1a\n":
        return "HDF5 (Velox emd or HyperSpy hspy)"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[:4] == b"II\x97\x01":
        return "TIA ser"
    if head[:4] in (b"\x00\x00\x00\x03", b"\x00\x00\x00\x04"):
        return "DigitalMicrograph"
    if head[208:212] == b"MAP ":
        return "MRC"
    if head.startswith(b"PK\x03\x04"):
        return "zip (.npz)"
    if head.startswith(b"MATLAB"):
        return "MATLAB"
    for magic, fam in (
        (b"\x89PNG\r\n\x1a\n", "PNG picture"),
        (b"\xff\xd8\xff", "JPEG picture"),
        (b"GIF8", "GIF picture"),
        (b"BM", "BMP picture"),
        (b"%PDF", "PDF document"),
    ):
        if head.startswith(magic):
            return fam
    if head:
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError:  # a multi-byte character cut at 1024 bytes is still text
            try:
                text = head[:-3].decode("utf-8", errors="strict") if len(head) > 3 else ""
            except UnicodeDecodeError:  # binary (e.g. a truncated MRC header): no family
                return None
        if text and all(c.isprintable() or c in "\t\r\n" for c in text):
            return "text"
    return None


def _extension_hint(path: Path) -> str:
    """'; its content is a TIFF file: wrong extension? ...' when the bytes disagree with the
    suffix (a .dm3 renamed .emd failed with "file signature not found")."""
    fam = _content_family(path)
    if fam is None or path.suffix.lower() in _FAMILIES[fam]:
        return ""
    if not _FAMILIES[fam]:
        return (
            f"; its content is {'' if fam == 'text' else 'a '}{fam}, not a {path.suffix} file "
            "(a picture exported for display has lost the detector counts and the calibration: "
            "read the microscope's own file, e.g. .dm4, .emd, .ser or .tif)"
            if fam != "text"
            else f"; its content is text, not a {path.suffix} file"
        )
    return (
        f"; its content is {'an' if fam.startswith(('HDF5', 'MRC')) else 'a'} {fam} file, "
        f"not {path.suffix}: wrong extension? (rename it to "
        f"{' or '.join(_FAMILIES[fam])})"
    )


def _check_path(path: Path) -> None:
    if not path.exists():
        raise FileFormatError(f"no such file: {str(path)!r}")
    if path.is_dir() and path.suffix != ".zarr":
        raise FileFormatError(f"{str(path)!r} is a directory, not an image file")
    if path.is_file() and path.stat().st_size == 0:
        raise FileFormatError(f"{str(path)!r} is empty (0 bytes)")
    if not os.access(path, os.R_OK):
        # the readers said "not a readable dm3 file (PermissionError ...)": a format problem
        raise FileFormatError(
            f"{str(path)!r}: permission denied (the file exists but this user cannot read it)"
        )


def load(
    path: str | os.PathLike,
    *,
    lazy: bool = False,
    pixel_size: float | None = None,
    kind: str | None = None,
    signal: str | None = None,
) -> Image | Series | TiltSeries:
    """Load a microscopy file as a calibrated :class:`Image`, :class:`Series` or :class:`TiltSeries`.

    Formats: dm3/dm4, Velox emd (incl. frame series), ser/emi, tif, hspy/hdf5 (through
    RosettaSciIO), MRC (mrcfile; FEI extended headers: the old 128-byte records and FEI1/FEI2
    with per-image dose and time stamps; SerialEM ``.mdoc``, ``.rawtlt``/``.tlt`` side files),
    perovstem ``.npz``/``.zarr`` and the StatSTEM example ``.npz``/``.mat`` files.

    Parameters
    ----------
    path : path-like
        The file; or a folder of single-frame image files of one format (one file per
        frame, as in-situ software exports them), read as a :class:`Series` in natural name
        order, with frame times from the files' time stamps when every file has one and
        they increase, and the dose per frame when every file gives one.  A Gatan In-Situ
        dataset (``Hour_HH/Minute_MM/Second_SS/*.dm4``, given at any level) is one such
        series; its frame times come from the folders when the stamps are to the second.
    lazy : bool
        Return frames as a dask array where the format allows it (a folder: one chunk per
        file, read when computed).
    pixel_size : float, optional
        Pixel size in Å; overrides the file's calibration and is required when the file has none.
    kind : {"image", "series", "tilt"}, optional
        Force the type of the result for a 3-D stack (default: tilt when the file carries
        varying tilt angles, else series).
    signal : str, optional
        Title of the image to read from a file that holds several (e.g. ``"DF4-A"`` or
        ``"iDPC"`` in a Velox emd; case-insensitive, a unique part of the title will do).
        Default: the HAADF image, or the only real-space image; several images without a
        HAADF one is an error that lists their titles.

    Returns
    -------
    Image, Series or TiltSeries

    Raises
    ------
    FileFormatError
        Missing, empty, truncated or unrecognised file.
    CalibrationError
        No usable calibration and no ``pixel_size``.
    DataError
        NaNs, wrong dimensionality; an RGB(A) colour tif (8-bit or interleaved samples).

    Notes
    -----
    A tif of 3 or 4 *separate* non-8-bit sample planes tagged RGB(A) (what tifffile writes
    for a ``(3 | 4, M, N)`` array without ``photometric=``) is read as 3 or 4 frames.
    """
    path = Path(path)
    if kind not in (None, "image", "series", "tilt"):
        raise ParameterError(f"`kind` must be 'image', 'series' or 'tilt', got {kind!r}")
    if pixel_size is not None:
        try:
            # 1 pm to 1 mm, as a file may claim: survey images are µm per pixel; beyond is a
            # unit mistake (2e-11, metres typed for Å, was taken as 2e-11 Å)
            ok = _FILE_PIXEL_A[0] <= float(pixel_size) <= _FILE_PIXEL_A[1]
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ParameterError(
                f"`pixel_size` must be a number of Å from {_FILE_PIXEL_A[0]:g} (1 pm) to "
                f"{_FILE_PIXEL_A[1]:g} (1 mm), got {pixel_size!r}"
            )
    if path.is_dir() and path.suffix.lower() != ".zarr":
        from perovstem.io._folder import load_folder

        return load_folder(path, pixel_size=pixel_size, kind=kind, signal=signal, lazy=lazy)
    _check_path(path)
    suffix = path.suffix.lower()
    try:
        with _quiet_tifffile():
            rec = _read_record(path, suffix, lazy=lazy, signal=signal)
    except FileFormatError as exc:
        hint = _extension_hint(path) if path.is_file() else ""
        if not hint:
            raise
        raise FileFormatError(f"{exc}{hint}") from None
    try:
        obj = _build(path, rec, pixel_size=pixel_size, kind=kind)
    except ParameterError as exc:
        # the data model checks what the file holds (time stamps out of order, one angle
        # per image, ...): say which file it came from
        raise DataError(f"{str(path)!r}: {exc}") from None
    except DataError as exc:  # e.g. an empty (0 x 0) image: "`data` is empty"
        if str(path) in str(exc):
            raise
        raise DataError(f"{str(path)!r}: {exc}") from None
    protect(path)
    return obj


def _natural_key(name: str) -> list[Any]:
    """Sort key that puts frame_2 before frame_10."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _read_record(path: Path, suffix: str, *, lazy: bool, signal: str | None) -> dict[str, Any]:
    """The reader of ``suffix``'s raw record (data, calibration, metadata) of ``path``."""
    if suffix in _MRC:
        from perovstem.io._mrc import read_mrc

        return read_mrc(path, lazy=lazy)
    own = {
        ".npz": lambda: _read_npz(path),
        ".mat": lambda: _read_statstem_mat(path),
        ".zarr": lambda: _read_zarr(path, lazy=lazy),
    }
    if suffix in (".tif", ".tiff") and _is_perovstem_tiff(path):
        own[suffix] = lambda: _read_perovstem_tiff(path)
    if suffix in own:
        try:
            return own[suffix]()
        except PerovstemError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            # a damaged or hand-edited file (metadata without a pixel size, bad JSON, a
            # StatSTEM dx that is an array or text) ended in "unexpected KeyError"
            raise FileFormatError(
                f"{str(path)!r}: damaged, or not the layout perovstem writes or reads for "
                f"{suffix} ({type(exc).__name__}: {str(exc)[:160]})"
            ) from None
    if suffix in _RSCIIO:
        return _read_rsciio(path, _RSCIIO[suffix], lazy=lazy, signal=signal)
    raise FileFormatError(
        f"{str(path)!r}: unsupported file type {suffix!r} (supported: "
        f"{', '.join(SUPPORTED_SUFFIXES)})"
    )


@contextlib.contextmanager
def _quiet_tifffile() -> Any:
    """Silence tifffile's logged complaints about a damaged file (four lines of
    "<TiffTag.fromfile> raised TiffFileError(...)" before perovstem's own error)."""
    import logging

    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _finite_box(finite: np.ndarray) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """Rows and columns ``(r0, r1), (c0, c1)`` (end exclusive) of a 2-D image whose
    non-finite pixels fill whole rows and columns at its border only (a registered or
    drift-corrected export pads shifted frames with NaN), else None (NaN inside, a
    non-rectangular border, or nothing finite)."""
    rows = np.flatnonzero(finite.any(axis=1))
    cols = np.flatnonzero(finite.any(axis=0))
    if len(rows) == 0 or len(cols) == 0:
        return None
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    if not finite[r0:r1, c0:c1].all():
        return None
    return (r0, r1), (c0, c1)


def _build(path: Path, rec: dict[str, Any], *, pixel_size: float | None, kind: str | None) -> Any:
    data = rec["data"]
    md = dict(rec.get("metadata", {}))
    # `source` names the file read; a stored one (the file or simulator a saved object came
    # from) is kept as `original_source` (the first one, through any number of re-saves)
    stored = md.get("source")
    if stored is not None and str(stored) != str(path):
        md.setdefault("original_source", stored)
    md["source"] = str(path)
    if pixel_size is not None:
        px = float(pixel_size)
        md["pixel_size_source"] = "user"
        try:
            px_file = float(rec.get("pixel_size_A"))
        except (TypeError, ValueError):
            px_file = float("nan")
        if (
            np.isfinite(px_file)
            and _FILE_PIXEL_A[0] <= px_file <= _FILE_PIXEL_A[1]
            and abs(px - px_file) > 1e-3 * px_file
        ):
            # meant for a file without a calibration: replacing one is said (it was not)
            if not quiet_pixel_replacement.get():
                warnings.warn(
                    f"{str(path)!r}: the pixel size given ({px:.6g} Å) replaces the file's "
                    f"({px_file:.6g} Å)",
                    UserWarning,
                    stacklevel=3,
                )
            md["pixel_size_file_A"] = px_file
    elif rec.get("pixel_size_A") is not None:
        try:
            px = float(rec["pixel_size_A"])
        except (TypeError, ValueError):
            px = float("nan")
        if not np.isfinite(px):
            raise CalibrationError(
                f"{str(path)!r}: the file's pixel size {rec['pixel_size_A']!r} is not a finite "
                "number; give the pixel size in Å (Python: pixel_size=; command line: "
                "--pixel-size-A)"
            )
        if not (_FILE_PIXEL_A[0] <= px <= _FILE_PIXEL_A[1]):
            # e.g. metres written where Å belong (MRC voxel 2e-11), or "1 m" for "uncalibrated"
            raise CalibrationError(
                f"{str(path)!r}: the file's pixel size {px:.4g} Å is outside "
                f"{_FILE_PIXEL_A[0]:g}–{_FILE_PIXEL_A[1]:g} Å (a unit mistake in the file?); "
                "give the pixel size in Å (Python: pixel_size=; command line: --pixel-size-A)"
            )
        py = rec.get("pixel_size_y_A")
        if py is not None and abs(float(py) - px) > 1e-3 * px:
            # everything downstream assumes square pixels: refuse rather than silently take
            # the y scale to equal the x scale
            raise CalibrationError(
                f"{str(path)!r}: non-square pixels ({px:.6g} Å in x, {float(py):.6g} Å in y) "
                "are not supported; resample to square pixels, or pass pixel_size= (Å; "
                "command line: --pixel-size-A) to use one size for both axes"
            )
    else:
        raise CalibrationError(
            f"{str(path)!r}: no usable spatial calibration in the file; give the pixel size "
            "in Å (Python: pixel_size=; command line: --pixel-size-A)"
        )
    if data.ndim not in (2, 3):
        raise DataError(
            f"{str(path)!r}: expected a 2-D image or a 3-D stack, got shape {data.shape}"
        )
    origin = (0.0, 0.0)
    if not hasattr(data, "dask"):
        a = np.asarray(data)
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            fin = np.isfinite(a)
            n_bad = int((~fin).sum())
            box = _finite_box(fin) if a.ndim == 2 and kind in (None, "image") else None
            if box is None:
                if a.ndim == 3:  # say which frames: a stack is fixed frame by frame
                    frames = np.flatnonzero(~fin.reshape(a.shape[0], -1).all(axis=1))
                    where = (
                        f" in {frames.size} of {a.shape[0]} frames (frame(s) "
                        + ", ".join(map(str, frames[:5]))
                        + (" …" if frames.size > 5 else "")
                        + "; frames count from 0)"
                    )
                else:
                    where = (
                        " (not only in whole border rows/columns, which are cropped): crop "
                        "the image to its finite part"
                    )
                raise DataError(f"{str(path)!r}: image contains {n_bad} NaN/inf value(s){where}")
            (r0, r1), (c0, c1) = box
            data = a[r0:r1, c0:c1]
            origin = (c0 * px, r0 * px)
            md = {
                **md,
                "cropped_nonfinite_border": {
                    "file_shape": [int(v) for v in a.shape],
                    "rows": [r0, r1],
                    "cols": [c0, c1],
                    "n_nonfinite": n_bad,
                },
            }
            warnings.warn(
                f"{str(path)!r}: {n_bad} NaN/inf value(s) fill whole border rows/columns (a "
                f"drift-corrected or registered export?): the image is cropped to its finite "
                f"part, rows {r0}–{r1 - 1} and columns {c0}–{c1 - 1} of {a.shape[0]}×"
                f"{a.shape[1]} px; positions stay in the file's frame (origin "
                f"{origin[0]:.4g}, {origin[1]:.4g} Å)",
                UserWarning,
                stacklevel=3,
            )
        if a.dtype.kind not in "biuf":
            raise DataError(f"{str(path)!r}: unsupported data type {a.dtype}")
    if data.ndim == 2 or kind == "image":
        if data.ndim == 3:
            raise DataError(
                f"{str(path)!r}: kind='image' but the file holds {data.shape[0]} frames"
            )
        return Image(
            data,
            px,
            dose_e_per_A2=rec.get("dose_e_per_A2"),
            time_s=_one_time(rec),
            origin_A=origin,
            metadata=md,
        )
    angles = rec.get("angles_deg")
    if kind == "tilt" or (kind is None and angles is not None):
        if angles is None and md.get("dropped_tilt_angles"):
            raise FileFormatError(
                f"{str(path)!r}: kind='tilt', but {md['dropped_tilt_angles']}; load it with "
                "kind='series', or give the angles in a .rawtlt/.tlt side file"
            )
        if angles is None:
            raise FileFormatError(
                f"{str(path)!r}: no tilt angles in the file or a .rawtlt/.tlt/.mdoc side file"
            )
        dose = rec.get("dose_e_per_A2")
        if dose is not None:
            # a TiltSeries has no dose field: kept in its metadata (the .mdoc's or FEI
            # header's dose was dropped while `dose_source` still named it)
            per = np.broadcast_to(np.asarray(dose, dtype=float), (data.shape[0],))
            md = {**md, "dose_per_projection_e_per_A2": per.tolist()}
        return TiltSeries(
            data,
            angles,
            px,
            tilt_axis_deg=rec.get("tilt_axis_deg", 0.0),
            shifts_px=rec.get("shifts_px"),
            metadata=md,
        )
    return Series(
        data,
        px,
        time_s=_frame_times(path, rec.get("time_s"), data.shape[0]),
        dose_e_per_A2=rec.get("dose_e_per_A2"),
        temperature_K=rec.get("temperature_K"),
        pressure_Pa=rec.get("pressure_Pa"),
        gas=rec.get("gas"),
        initial_dose_e_per_A2=rec.get("initial_dose_e_per_A2"),
        metadata=md,
    )


def _frame_times(path: Path, t: Any, n: int) -> Any:
    """A stack's frame times, or None (with a warning) where every frame has the same one:
    a writer that did not update them (FEI stamps all equal, a HyperSpy time axis of scale
    0) gave time 0 to every frame, and the per-second results came from no interval."""
    if t is None or n < 2:
        return t
    try:
        a = np.ravel(np.asarray(t, dtype=float))
    except (TypeError, ValueError):  # the data model names the problem
        return t
    if a.size == n and np.all(np.isfinite(a)) and np.ptp(a) == 0:
        warnings.warn(
            f"{str(path)!r}: every frame has the same time stamp ({a[0]:g} s): the frame "
            "times are not used (give the frame interval: --frame-time-s, frame_time_s)",
            UserWarning,
            stacklevel=4,
        )
        return None
    return t


def _one_time(rec: dict[str, Any]) -> float | None:
    """The time stamp of a single image (s), when the record holds exactly one finite one."""
    t = rec.get("time_s")
    if t is None:
        return None
    try:
        a = np.ravel(np.asarray(t, dtype=float))
    except (TypeError, ValueError):  # load() names the file
        raise ParameterError(f"`time_s` must be a number in s, got {t!r}") from None
    if a.size != 1 or np.isnan(a[0]):  # NaN: not recorded
        return None
    if not np.isfinite(a[0]):  # inf is a corrupt stamp, not a missing one
        raise ParameterError(f"`time_s` must be finite (s), got {t!r}")
    return float(a[0])


# --------------------------------------------------------------------------- rsciio formats
def _title(s: dict) -> str:
    return str(_get(s.get("metadata", {}), "General", "title") or "")


def _pick_signal(path: Path, sigs: list[dict], signal: str | None = None) -> dict:
    """The image to analyse among a file's signals.

    ``signal`` (a title, or the .ser name of an untitled TIA image; case-insensitive, a
    unique substring will do) picks one; else the
    HAADF image; else the only real-space image (diffraction patterns and FFTs in
    reciprocal units do not count).  Several candidates and no HAADF (e.g. Velox DF4
    segments, BF and iDPC, or a TIA .emi with a BF and a DF .ser) is an error listing them:
    taking the first would analyse an arbitrary detector.
    """
    from perovstem.io._units import is_reciprocal_length

    sigs = [_stack_of_flat_signal(s) for s in sigs]
    images = [s for s in sigs if sum(not a.get("navigate", False) for a in s["axes"]) == 2]
    if not images:
        shapes = [tuple(np.shape(s["data"])) for s in sigs]
        volume = any(
            len(s["axes"]) == 3 and all(_is_length_unit(a.get("units")) for a in s["axes"])
            for s in sigs
        )
        what = (
            "a 3-D volume (three length axes), not an image or a stack of frames"
            if volume
            else "no 2-D image signal in the file"
        )
        raise DataError(f"{str(path)!r}: {what} (signals: {shapes})")

    def label(s: dict) -> str:
        return _title(s) or str(_get(s.get("metadata", {}), "General", "original_filename"))

    if signal is not None:
        want = str(signal).strip().lower()
        hits = [s for s in images if label(s).lower() == want]
        hits = hits or [s for s in images if want in label(s).lower()]
        if len(hits) != 1:
            raise ParameterError(
                f"`signal`={signal!r} matches {len(hits)} of the images in {str(path)!r} "
                f"(titles: {[label(s) for s in images]})"
            )
        return hits[0]
    for s in images:
        if "HAADF" in _title(s).upper():
            return s
    if len(images) == 1:
        return images[0]
    real = [
        s
        for s in images
        if np.dtype(getattr(s["data"], "dtype", float)).kind != "c"
        and not any(
            is_reciprocal_length(a.get("units")) for a in s["axes"] if not a.get("navigate")
        )
    ]
    if len(real) == 1:
        return real[0]
    shapes = [tuple(np.shape(s["data"]))[-2:] for s in images]
    if len({label(s) for s in images}) == 1 and len(set(shapes)) > 1:
        # the untitled pages of one stack (a multi-page tif) whose sizes differ: not a choice
        # of detector but frames that cannot form one (T, M, N) stack
        pages: dict[tuple, list[int]] = {}
        for i, sh in enumerate(shapes):
            pages.setdefault(sh, []).append(i)
        desc = "; ".join(
            f"{'×'.join(map(str, sh))} px: page{'s' if len(ix) > 1 else ''} "
            + ", ".join(map(str, ix[:10]))
            + (f", ... ({len(ix)})" if len(ix) > 10 else "")
            for sh, ix in sorted(pages.items(), key=lambda kv: -len(kv[1]))
        )
        raise DataError(
            f"{str(path)!r}: {len(images)} frames of different shapes ({desc}; pages count "
            "from 0): not one stack of frames; a series or tilt series needs frames of one "
            "size (crop or pad them to one shape and write the stack again)"
        )
    raise DataError(
        f"{str(path)!r}: {len(images)} images and none is titled HAADF "
        f"({[label(s) for s in images]}); choose one with signal= (one of these; command "
        "line: --signal of perovstem info / convert)"
    )


def _image_axes_A(path: Path, sig_axes: list[dict]) -> tuple[float | None, float | None]:
    """Pixel sizes (x, y), Å, of a RosettaSciIO signal's image axes (x the last).

    An axis without a unit beside one in a length unit takes that unit for its scale: a
    HyperSpy image with units set on x only (0.05 nm in x, 0.1 "<undefined>" in y) read as
    square 0.5 Å pixels; now its y scale is 1 Å and the non-square pixels are refused.  A
    unitless scale of 1 (never calibrated) is taken to equal the other, with a warning.
    """
    from perovstem.io._units import _UNDEFINED, length_to_A

    def size(a: dict) -> float | None:
        try:
            return length_to_A(a.get("scale", 1.0), a.get("units"), what=str(path))
        except CalibrationError:
            return None

    px = size(sig_axes[-1])
    if len(sig_axes) != 2:
        return px, None
    py = size(sig_axes[0])
    if (px is None) == (py is None):
        return px, py
    known, other = (sig_axes[-1], sig_axes[0]) if px is not None else (sig_axes[0], sig_axes[-1])
    if str(other.get("units") or "").strip().lower() not in _UNDEFINED:
        return px, py  # a physical unit that is no length: the other axis' size is used
    scale = float(other.get("scale", 1.0))
    got = px if px is not None else py
    if scale == 1.0 and float(known.get("scale", 1.0)) != 1.0:
        warnings.warn(
            f"{str(path)!r}: the image axis {other.get('name')!r} has no calibration (scale 1, "
            f"no unit): its pixel size is taken equal to that of axis {known.get('name')!r}, "
            f"{got:.4g} Å",
            UserWarning,
            stacklevel=4,
        )
        return got, got
    both = length_to_A(scale, known.get("units"), what=str(path))
    return (got, both) if px is not None else (both, got)


def radian_angles_note(angles_deg: Any, what: str) -> str | None:
    """A note when tilt angles look like radians (every |θ| ≤ π over a span of ≥ 1 and
    more than two directions: ±1.22 was aligned and reconstructed as degrees without a
    word), else None.  ``what`` names the file."""
    ang = np.asarray(angles_deg, float).ravel()
    if ang.size == 0 or not np.all(np.isfinite(ang)):
        return None
    span = float(np.ptp(ang))
    directions = np.unique(np.round(ang, 6)).size
    if directions > 2 and np.abs(ang).max() <= np.pi + 1e-6 and span >= 1.0:
        return (
            f"{what}: its tilt angles run from {ang.min():.4g} to {ang.max():.4g}, a span of "
            f"{span:.3g}°: radians? perovstem reads tilt angles in degrees (a tilt series "
            f"in radians: multiply by {180 / np.pi:.5g})"
        )
    return None


def _is_length_unit(units: Any) -> bool:
    from perovstem.io._units import length_to_A

    try:
        length_to_A(1.0, units, what="axis")
    except CalibrationError:
        return False
    return True


def _stack_of_flat_signal(s: dict) -> dict:
    """A 3-D signal whose axes are all signal axes (the Berkeley EMD reader marks none as
    navigation) read as a stack: its first axis navigates when it is in time or angle units
    or has none, and the image axes are not.  Such a series or tilt series was refused as
    holding "no 2-D image signal"."""
    axes = s.get("axes", [])
    if len(axes) != 3 or any(a.get("navigate", False) for a in axes):
        return s
    axes = sorted(axes, key=lambda a: a.get("index_in_array", 0))
    kind, _ = _nav_unit(axes[0].get("units"))
    if kind not in (None, "time", "angle") or _is_length_unit(axes[0].get("units")):
        return s
    if any(_nav_unit(a.get("units"))[0] in ("time", "angle") for a in axes[1:]):
        return s
    return {**s, "axes": [{**axes[0], "navigate": True}, *axes[1:]]}


def _get(d: dict, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def side_files(path: str | os.PathLike) -> list[Path]:
    """The files beside ``path`` that :func:`load` reads with it: tilt angles (.rawtlt,
    .tlt), a SerialEM .mdoc, a Direct Electron info file, a table's .json attrs."""
    from perovstem.io._mrc import _de_info_file

    p = Path(path)
    if p.is_dir():
        return []
    found = [*angle_file_candidates(p), *mdoc_candidates(p), Path(str(p) + ".json")]
    if p.suffix.lower() == ".mrc":
        de = _de_info_file(p)
        if de is not None:
            found.append(de)
    return [f for f in dict.fromkeys(found) if f != p and f.is_file()]


def _uniform_axis(path: Path, axis: dict[str, Any]) -> dict[str, Any]:
    """A RosettaSciIO axis with ``scale`` and ``offset``: a HyperSpy data axis (values in
    ``axis``, no scale) that is uniform gets them; a non-uniform one keeps its ``values``
    (a stack axis: times or tilt angles as recorded) or is refused (an image axis); a
    functional axis is refused.  Read with the defaults 1 and 0, a 0.02 nm data axis gave
    10 Å pixels and tilts of -70…66° read 0…4°."""
    name = axis.get("name")
    if "expression" in axis and "scale" not in axis:
        raise FileFormatError(
            f"{str(path)!r}: axis {name!r} is a HyperSpy functional axis "
            f"({axis['expression']!r}), which perovstem does not evaluate; convert it in "
            "HyperSpy (axis.convert_to_non_uniform_axis()) and save again"
        )
    if "axis" not in axis or "scale" in axis:
        return axis
    v = np.asarray(axis["axis"], dtype=float).ravel()
    out = {k: val for k, val in axis.items() if k != "axis"}
    if v.size == 0 or not np.all(np.isfinite(v)):
        raise FileFormatError(f"{str(path)!r}: axis {name!r} holds non-finite or no values")
    if v.size == 1:
        return {**out, "offset": float(v[0]), "scale": 1.0}
    step = np.diff(v)
    mean = float(np.mean(step))
    if mean != 0 and np.max(np.abs(step - mean)) <= 1e-4 * abs(mean):
        return {**out, "offset": float(v[0]), "scale": mean}
    if not axis.get("navigate", False):
        raise CalibrationError(
            f"{str(path)!r}: image axis {name!r} is not uniform (steps {step.min():.4g} to "
            f"{step.max():.4g} {axis.get('units')}): pixels of one size are needed"
        )
    return {**out, "offset": float(v[0]), "scale": mean, "values": v}


def _read_rsciio(
    path: Path, plugin: str, *, lazy: bool, signal: str | None = None
) -> dict[str, Any]:
    try:
        mod = importlib.import_module(f"rsciio.{plugin}")
    except ImportError as exc:  # pragma: no cover - rosettasciio is a core dependency
        raise FileFormatError(
            f"cannot read {str(path)!r}: rosettasciio plugin {plugin!r} unavailable ({exc})"
        ) from None
    planes = _tiff_sample_planes(path) if plugin == "tiff" else None
    try:
        # Velox: images only (HAADF, other detectors, EDS maps); the spectrum stream of a
        # spectrum image would be decoded in full and then thrown away
        kw = {"select_type": "images"} if plugin == "emd" else {}
        sigs = [planes] if planes is not None else mod.file_reader(str(path), lazy=lazy, **kw)
    except ImportError as exc:
        # RosettaSciIO refuses a whole Velox file holding an EDS spectrum image when 'sparse'
        # is missing, although with images only the stream is never decoded: read the images
        velox = _velox_images_only(path, lazy=lazy) if plugin == "emd" else None
        if velox is not None:
            sigs = velox
        else:
            m = re.search(r"'([\w.-]+)'", str(exc))
            name = getattr(exc, "name", None) or (m.group(1) if m else "the missing package")
            raise OptionalDependencyError(
                f"{str(path)!r}: RosettaSciIO needs the optional package {name!r} to read "
                f"this file (pip install {name}): {str(exc)[:200]}"
            ) from None
    except Exception as exc:
        fam = _content_family(path)
        damaged = (
            f"; it starts as {'an' if fam.startswith(('HDF5', 'MRC')) else 'a'} {fam} file should ({path.stat().st_size} bytes): truncated "
            "(an interrupted copy?) or damaged"
            if fam is not None and path.suffix.lower() in _FAMILIES[fam]
            else ""
        )
        if damaged and isinstance(exc, KeyError) and plugin == "emd":
            # the HDF5 file opened: a metadata entry the reader looks up is absent (e.g. a
            # Velox frame stack without Scan.FrameTime or the detector's ExposureTime)
            damaged = (
                f"; the file opens, but RosettaSciIO's reader needs the metadata entry {exc} "
                "that it lacks (written by other software, or a layout this RosettaSciIO "
                "does not know); export the images to .tif/.hspy with their calibration"
            )
        raise FileFormatError(
            f"{str(path)!r}: not a readable {path.suffix.lstrip('.')} file "
            f"({type(exc).__name__}: {str(exc)[:200]}){damaged}"
        ) from None
    if not sigs:
        raise FileFormatError(f"{str(path)!r}: the file holds no data")
    s = _pick_signal(path, sigs, signal)
    data = s["data"]
    # what rsciio drops from tif files, read once from the header (None for other formats)
    tif = _tiff_header(path) if plugin == "tiff" else None
    if tif is not None:
        _refuse_cut_imagej_stack(path, tif, data)
    if tif is not None and getattr(data, "ndim", 0) == 3:
        _refuse_channel_stack(path, tif)
    if lazy:
        _probe_lazy(path, data)
    axes = sorted(s["axes"], key=lambda a: a.get("index_in_array", 0))
    axes = [_uniform_axis(path, a) for a in axes]
    sig_axes = [a for a in axes if not a.get("navigate", False)]
    nav_axes = [a for a in axes if a.get("navigate", False)]
    om = s.get("original_metadata", {})
    md = _with_mapping(s.get("metadata", {}), om, s.get("mapping"))
    out: dict[str, Any] = {"data": data, "metadata": {"format": plugin, "original": _jsonable(md)}}
    ax = sig_axes[-1]
    if any(is_reciprocal_length(a.get("units")) for a in sig_axes):
        # a diffraction pattern or FFT: refused even with pixel_size=, which cannot fix it
        length_to_A(ax.get("scale", 1.0), ax.get("units"), what=repr(str(path)))
    out["pixel_size_A"], py = _image_axes_A(path, sig_axes)
    if py is not None:
        out["pixel_size_y_A"] = py
    if out["pixel_size_A"] is None and tif is not None:
        # rsciio drops the unit of ImageJ tifs in nm/Å/escaped µm and ignores OME PhysicalSize
        out["pixel_size_A"], out["pixel_size_y_A"] = _tiff_calibration_A(path, tif)
    if nav_axes:
        nav = nav_axes[0]
        n = data.shape[0]
        ticks = nav.get("offset", 0.0) + nav.get("scale", 1.0) * np.arange(n)
        if nav.get("values") is not None and len(nav["values"]) == n:
            ticks = np.asarray(nav["values"], float)  # a non-uniform (data) axis
        kind_, factor = _nav_unit(nav.get("units"))
        if kind_ == "angle" and n > 1 and np.ptp(ticks * factor) < _MIN_TILT_SPAN_DEG:
            kind_ = "other"  # e.g. a detector's scattering-angle bins in mrad, not tilts
        if kind_ == "other" and data.ndim == 3:
            # a spectrum image (energy loss in eV), a line scan (nm) or a depth/detector
            # stack is not a series of frames: refuse instead of analysing 2048 "frames"
            raise DataError(
                f"{str(path)!r}: the stack axis {nav.get('name')!r} is in {nav.get('units')!r} "
                f"({n} steps from {ticks[0]:.4g} to {ticks[-1]:.4g}), neither time (frames) "
                "nor tilt angles: a spectrum image, line scan or detector/depth stack is not "
                "an image series; extract the image(s) first"
            )
        if kind_ == "time":
            out["time_s"] = ticks * factor
        elif kind_ == "angle":
            out["angles_deg"] = ticks * factor
        elif tif is not None and data.ndim == 3:
            # ImageJ/Fiji keep the frame interval in their description; rsciio drops it
            dt = _imagej_frame_interval_s(tif)
            if dt is not None:
                out["time_s"] = dt * np.arange(n)
    if plugin == "tia":
        _tia_times(om, data.shape[0] if nav_axes else 1, out)
    if plugin == "digitalmicrograph" and nav_axes and not {"time_s", "angles_deg"} & set(out):
        found = _dm_plane_times_s(om, data.shape[0])
        if found is not None:
            out["time_s"], out["metadata"]["time_source"] = found
    tomo = _get(md, "Tomography")
    if isinstance(tomo, dict):
        # HyperSpy/ETSpy keep tilts and shifts either as arrays or as nested signals.
        def _arr(key: str) -> Any:
            v = tomo.get(key)
            if v is None and isinstance(tomo.get(f"_sig_{key}"), dict):
                v = tomo[f"_sig_{key}"].get("data")
            return None if v is None else np.asarray(v, dtype=float)

        tilts = _arr("tilts")
        n_img = data.shape[0] if data.ndim == 3 else 1
        if tilts is not None and tilts.size == n_img:
            axis = out.get("angles_deg")
            diff = np.abs(np.asarray(axis) - tilts.ravel()) if axis is not None else None
            if diff is not None and np.max(diff) > _ANGLES_AGREE_DEG:
                # (HyperSpy's stack axis and ETSpy's tilts disagreeing: the tilts won silently)
                warnings.warn(
                    f"{str(path)!r}: its Tomography.tilts ({tilts.min():g}…{tilts.max():g}°) "
                    f"replace the stack axis's angles ({np.min(axis):g}…{np.max(axis):g}°)",
                    UserWarning,
                    stacklevel=3,
                )
            out["angles_deg"] = tilts.ravel()
        elif tilts is not None:
            warnings.warn(
                f"{str(path)!r}: its Tomography.tilts hold {tilts.size} angles for {n_img} "
                "images: not used",
                UserWarning,
                stacklevel=3,
            )
        if "tiltaxis" in tomo:
            # ETSpy's tiltaxis is the rotation its alignment applied to the data (trans_stack
            # adds each rotation to it), not the axis of the data, which that rotation put
            # along image x: kept as history.  Read as the data's axis, the aligned needle
            # was turned a second time on the advice of `tomo reconstruct` (+2.70° after).
            applied = float(tomo.get("tiltaxis") or 0.0)
            out["tilt_axis_deg"] = 0.0
            out["metadata"]["tilt_axis_applied_deg"] = applied
        sh = _arr("shifts")
        if sh is not None and sh.shape == (data.shape[0], 2):
            out["shifts_px"] = sh
        for key in ("xshift", "yshift"):
            if key in tomo:
                out["metadata"][f"tomography_{key}_px"] = float(tomo[key])
    own = md.get("perovstem") if isinstance(md, dict) else None
    if isinstance(own, str):
        # written by perovstem.io.save_image: calibration and per-frame conditions kept
        try:
            rec = _record_from_meta(data, json.loads(own))
        except (ValueError, KeyError, TypeError) as exc:
            raise FileFormatError(
                f"{str(path)!r}: unreadable perovstem metadata block ({type(exc).__name__}: {exc})"
            ) from None
        rec["metadata"] = {**rec["metadata"], "format": plugin}
        return rec
    out["metadata"].update(_acquisition_start(md, om))
    sources: dict[str, str] = {}
    beam = beam_conditions(md, om, what=repr(str(path)), sources=sources)
    out["metadata"].update(beam)
    out["metadata"].update({f"{k}_source": v for k, v in sources.items()})
    out["metadata"].update(imaging_angles(md, om))
    summed = _digiscan_summed_frames(om)
    if summed and beam.get("beam_current_A") and beam.get("dwell_time_s"):
        # each pixel was scanned `summed` times: one pass's dwell time is not the dose
        _ignore_value(
            repr(str(path)),
            "the dwell time",
            beam["dwell_time_s"],
            f"DigiScan summed {summed} frames into this image (Integrate Frames on); give the "
            "dose per image",
        )
    elif beam.get("beam_current_A") and beam.get("dwell_time_s") and out.get("pixel_size_A"):
        dose = dose_per_frame(beam["beam_current_A"], beam["dwell_time_s"], out["pixel_size_A"])
        if dose > MAX_FRAME_DOSE_E_PER_A2:
            _ignore_value(
                repr(str(path)),
                "the dose per frame",
                dose,
                f"{beam['beam_current_A']:.3g} A × {beam['dwell_time_s']:.3g} s over "
                f"({out['pixel_size_A']:.3g} Å)² is above {MAX_FRAME_DOSE_E_PER_A2:g} e⁻/Å²",
            )
        else:
            out["dose_e_per_A2"] = dose
            # dose = I·t_dwell/e/px², from the fields named in *_source and the x calibration
            out["metadata"]["dose_source"] = "beam_current_A × dwell_time_s / e / pixel_size_A²"
    return out


def _dm_image_tags(om: dict) -> list[dict]:
    """The ``ImageTags`` of each image of a DM file's original metadata."""
    groups = (_get(om, "ImageList") or {}).values()
    return [g["ImageTags"] for g in groups if isinstance(_get(g, "ImageTags"), dict)]


# a Unix time (s) outside 1990-2100 is an unset (0) or foreign field, not an acquisition
def _plausible_unix_s(t: float) -> bool:
    return bool(np.isfinite(t)) and 631_152_000 < t < 4_102_444_800


def _digiscan_summed_frames(om: dict) -> int | None:
    """Frames DigiScan summed into a DM image (``DigiScan.Integrate Frames`` on, ``Number
    Summing Frames`` > 1), else None."""
    for it in _dm_image_tags(om):
        ds = it.get("DigiScan")
        if not isinstance(ds, dict):
            continue
        try:
            on = bool(float(ds.get("Integrate Frames", 0)))
            n = int(round(float(ds.get("Number Summing Frames", 1))))
        except (TypeError, ValueError):
            continue
        if on and n > 1:
            return n
    return None


def _tia_times(om: dict, n: int, out: dict[str, Any]) -> None:
    """Acquisition time (and frame times) of a TIA ser file from its per-element ``Time``
    (Unix seconds, to the second): ``acquisition_start_utc`` from the first; frame times
    when the file has n > 1 and they increase (ties: frames faster than 1 s, none)."""
    from datetime import UTC, datetime

    t = _get(om, "ser_header_parameters", "Time")
    try:
        t = np.asarray(t, dtype=float).ravel()
    except (TypeError, ValueError):
        return
    if t.size < 1 or not _plausible_unix_s(t[0]):
        return
    out["metadata"]["acquisition_start_utc"] = datetime.fromtimestamp(t[0], tz=UTC).isoformat()
    if n > 1 and t.size == n and "time_s" not in out and np.all(np.diff(t) > 0):
        out["time_s"] = t - t[0]
        out["metadata"]["time_source"] = "the elements' Time (TIA, to the second)"


def _with_mapping(md: dict, om: dict, mapping: Any) -> dict:
    """``md`` with the instrument entries RosettaSciIO's ``mapping`` names filled in.

    RosettaSciIO returns, beside the metadata, a ``mapping`` (original-metadata path →
    (metadata path, conversion)) that HyperSpy applies on loading and ``file_reader``
    does not: the beam energy, probe current, dwell time and magnification of DM and TIA
    (ser) files were left in the original metadata, so a 200 kV DM series was counted with
    the 300 kV libraries.  Only ``Acquisition_instrument`` entries are taken (the DM date
    strings are in the acquisition PC's locale: :func:`_dm_acquisition_time` reads the
    time instead); entries the metadata already has are kept.
    """
    if not isinstance(mapping, dict) or not mapping:
        return md
    import copy

    out = copy.deepcopy(md) if isinstance(md, dict) else {}
    for src, spec in mapping.items():
        try:
            target, convert = spec
        except (TypeError, ValueError):
            continue
        if not str(target).startswith("Acquisition_instrument."):
            continue
        v = _get(om, *str(src).split("."))
        if v is None or (isinstance(v, dict) and not str(target).endswith("microscope")):
            continue
        try:
            v = convert(v) if convert is not None else v
        except Exception:  # noqa: BLE001 - a reader's conversion of a malformed tag
            continue
        if v is None:
            continue
        *parents, leaf = str(target).split(".")
        node = out
        for k in parents:
            nxt = node.get(k)
            if not isinstance(nxt, dict):
                nxt = node[k] = {}
            node = nxt
        node.setdefault(leaf, v)
    return out


def _velox_images_only(path: Path, *, lazy: bool) -> list[dict[str, Any]] | None:
    """The image signals of a Velox emd, read by RosettaSciIO's Velox reader without its
    spectrum stream; None when the file is no Velox file or the reader cannot be used so.

    RosettaSciIO (0.6-0.15) raises ModuleNotFoundError for a Velox file holding an EDS
    spectrum image when the optional package ``sparse`` is missing, even with
    ``select_type="images"`` (after reading the images, before the stream it would skip).
    The images read here are the ones it returns when ``sparse`` is installed (for the images
    of a spectrum-image acquisition: the first frame, as ``load_SI_image_stack=False``).
    """
    try:
        import h5py
        from rsciio.emd._api import is_EMD_Velox
        from rsciio.emd._emd_velox import FeiEMDReader
    except ImportError:
        return None

    class _ImagesOnly(FeiEMDReader):  # type: ignore[misc]
        def _read_data(self, select_type: Any) -> None:
            self.load_images, self.load_SI, self.load_single_spectrum = True, False, False
            self._read_images()

    try:
        f = h5py.File(path, "r")
    except Exception:
        return None
    try:
        if not is_EMD_Velox(f):
            return None
        reader = _ImagesOnly(lazy=lazy, select_type="images")
        reader.read_file(f)
        sigs = list(reader.dictionaries)
    except Exception:
        return None  # the caller reports the original error
    finally:
        if not lazy:
            f.close()
    return sigs or None


def _acquisition_start(md: dict, om: dict) -> dict[str, str]:
    """When the acquisition started, for aligning a holder log (:func:`read_holder_log`).

    Velox keeps a Unix time (``Acquisition.AcquisitionStartDatetime.DateTime``, s): that is
    ``acquisition_start_utc``.  RosettaSciIO's ``General.date``/``time`` of a Velox file are
    in the time zone of the computer *reading* it, of DM/TIA files the acquisition PC's local
    time: kept as ``acquisition_start`` with ``acquisition_time_zone`` when one is given.
    """
    from datetime import UTC, datetime

    out: dict[str, str] = {}
    unix = _get(om, "Acquisition", "AcquisitionStartDatetime", "DateTime")
    try:
        t = float(unix)
        if np.isfinite(t) and t > 0:
            out["acquisition_start_utc"] = datetime.fromtimestamp(t, tz=UTC).isoformat()
    except (TypeError, ValueError, OverflowError, OSError):
        pass
    if not out:
        out.update(_dm_acquisition_time(om))
        if out:
            return out  # RosettaSciIO's General.date of a DM file is a locale's string
    gen = _get(md, "General") or {}
    if gen.get("date"):
        out["acquisition_start"] = str(gen["date"]) + (f"T{gen['time']}" if gen.get("time") else "")
        if gen.get("time_zone"):
            out["acquisition_time_zone"] = str(gen["time_zone"])
    return out


_FILETIME_UNIX_S = 11_644_473_600.0  # 1601-01-01 (Windows FILETIME epoch) to 1970-01-01, s


def _dm_acquisition_time(om: dict) -> dict[str, str]:
    """When a DigitalMicrograph image was acquired, to the microsecond.

    GMS keeps ``ImageTags.DataBar.Acquisition Time (OS)``, a Windows FILETIME (100 ns
    ticks since 1601, UTC), beside ``Acquisition Date`` / ``Acquisition Time`` strings in
    the acquisition PC's locale and zone (27/08/2016 or 08/27/2016: not parsed, and
    RosettaSciIO leaves them out of ``General``).  K2/K3 frame sequences also keep
    ``Acquisition.Frame.Sequence.Acquisition Start Time (epoch)`` in ms.  The local clock
    time, when its string reads as a time of day, gives the PC's UTC offset
    (``acquisition_time_zone``), which a holder log written on the same PC shares.
    """
    from datetime import UTC, datetime, timedelta, timezone

    def seconds(v: Any, per_s: float, epoch_s: float) -> float | None:
        try:
            t = float(v) / per_s - epoch_s
        except (TypeError, ValueError):
            return None
        return t if _plausible_unix_s(t) else None

    for it in _dm_image_tags(om):
        local = _get(it, "DataBar", "Acquisition Time")
        unix = seconds(_get(it, "DataBar", "Acquisition Time (OS)"), 1e7, _FILETIME_UNIX_S)
        if unix is None:
            local = None
            seq = _get(it, "Acquisition", "Frame", "Sequence", "Acquisition Start Time (epoch)")
            unix = seconds(seq, 1e3, 0.0)
        if unix is None:
            continue
        t = datetime.fromtimestamp(unix, tz=UTC)
        out = {"acquisition_start_utc": t.isoformat()}
        local_s = _clock_s(local)
        if local_s is not None:
            utc_s = t.hour * 3600 + t.minute * 60 + t.second
            diff = (local_s - utc_s + 12 * 3600) % 86400 - 12 * 3600
            zone = round(diff / 900) * 900  # zones are whole quarter hours
            if abs(diff - zone) <= 2:  # the string is the same instant, to the second
                lt = t.astimezone(timezone(timedelta(seconds=zone))).isoformat()
                out["acquisition_start"] = lt
                out["acquisition_time_zone"] = "UTC" + lt[-6:]
        return out
    return {}


def _clock_s(text: Any) -> float | None:
    """Seconds of the day of a clock string ``17:00:27`` or ``5:00:27 PM`` (else None)."""
    m = re.fullmatch(r"\s*(\d{1,2}):(\d{2}):(\d{2})\s*([AaPp][Mm])?\s*", str(text or ""))
    if not m:
        return None
    h, mi, s = (int(v) for v in m.groups()[:3])
    if m.group(4):
        h = h % 12 + (12 if m.group(4).lower() == "pm" else 0)
    return float(h * 3600 + mi * 60 + s)


def _dm_plane_times_s(om: dict, n: int) -> tuple[np.ndarray, str] | None:
    """Frame times of a DM stack built by GMS's stack builder (DigiScan time series).

    Such a stack keeps, per plane, ``ImageTags.plane info.TagGroupK.added @ tick`` (the
    PC's millisecond tick count when the frame was added) and ``added @ time`` (its clock
    time to the second); its stack axis has no unit.  The ticks give the frame times
    when they increase and agree with the clock strings (within 1.5 s: the tick unit is
    checked, not assumed).
    """
    for it in _dm_image_tags(om):
        planes = it.get("plane info")
        if not isinstance(planes, dict):
            continue
        rows = [planes.get(f"TagGroup{k}") for k in range(n)]
        if not all(isinstance(r, dict) for r in rows):
            return None
        try:
            ticks = np.array([float(r["added @ tick"]) for r in rows])
        except (KeyError, TypeError, ValueError):
            return None
        t = (ticks - ticks[0]) / 1e3
        if n < 2 or not np.all(np.isfinite(t)) or not np.all(np.diff(t) > 0):
            return None
        clock = [_clock_s(r.get("added @ time")) for r in rows]
        if any(c is None for c in clock):
            return None
        dc = (np.array(clock, float) - clock[0]) % 86400  # across midnight
        if np.max(np.abs(dc - t)) > 1.5:
            return None
        return t, (
            "the stack's plane stamps ('added @ tick', ms, when each frame was added to "
            f"the stack; {float(np.median(np.diff(t))):.4g} s apart)"
        )
    return None


def _nav_unit(units: Any) -> tuple[str | None, float]:
    """Classify a navigation-axis unit: ``("time", to_s)``, ``("angle", to_deg)``,
    ``("other", 1.0)`` for any other physical unit (eV, nm, ...) or ``(None, 1.0)`` when
    there is none; any pint time or angle unit is accepted (µs, min, h, rad, mrad, ...)."""
    from perovstem.io._units import _ureg

    u = str(units or "").strip()
    if u in ("°", "deg", "degree", "degrees"):
        return "angle", 1.0
    if u in ("µs", "μs", "us"):
        u = "microsecond"
    if not u or u.lower() in ("<undefined>", "undefined", "none"):
        return None, 1.0
    try:
        q = _ureg().Quantity(1.0, u)
    except Exception:
        return None, 1.0
    try:
        return "time", float(q.to("second").magnitude)
    except Exception:
        pass
    # angles are dimensionless in pint, as are "counts" or "percent": ask for an angle unit
    if re.search(r"radian|degree|arc", str(q.units)) and not q.dimensionality:
        # (not degree_Celsius / degree_Fahrenheit: a temperature ramp's stack axis failed
        # the conversion to degrees with an "unexpected DimensionalityError")
        return "angle", float(q.to("degree").magnitude)
    return ("other" if q.dimensionality else None), 1.0


def _refuse_cut_imagej_stack(path: Path, tif: dict[str, Any], data: Any) -> None:
    """An ImageJ stack whose header announces more images than the file holds was cut
    short (a copy interrupted): tifffile reads what is left, down to its first page as one
    image, and only logs it (a 6-frame series cut in half read as one 128×128 image)."""
    ij = tif.get("imagej") or {}
    try:
        announced = int(ij.get("images", 1))
    except (TypeError, ValueError):
        return
    shape = getattr(data, "shape", ())
    held = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    if announced > held:
        raise FileFormatError(
            f"{str(path)!r}: truncated or damaged: its ImageJ header announces {announced} "
            f"images, the file holds {held}"
        )


def _tiff_header(path: Path) -> dict[str, Any] | None:
    """The tif metadata rsciio does not pass on: series axes and shape, ImageJ and OME
    metadata, first-page resolution tags (None when tifffile cannot read the header)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            tags = tif.pages[0].tags
            return {
                "axes": tif.series[0].axes,
                "shape": tif.series[0].shape,
                "imagej": tif.imagej_metadata,
                "ome": tif.ome_metadata,
                "xres": tags["XResolution"].value if "XResolution" in tags else None,
                "yres": tags["YResolution"].value if "YResolution" in tags else None,
            }
    except Exception:
        return None


def _tiff_sample_planes(path: Path) -> dict[str, Any] | None:
    """Decide from the TIFF tags (not from the array shape) whether the samples of a pixel
    are colour channels or frames.

    tifffile writes any ``(3 | 4, M, N)`` array without ``photometric=`` as one page tagged
    PhotometricInterpretation RGB with 3 or 4 *separate* sample planes (PlanarConfiguration
    2), so a 3- or 4-frame stack of counts without metadata looks like RGB(A). Returns the
    planes as a frame series (an rsciio-like signal dict) for such a file whose samples are
    not 8-bit; refuses an 8-bit or pixel-interleaved RGB(A) picture (colours are not detector
    counts); None for any other tif (rsciio reads it).
    """
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            rgb = page.photometric == tifffile.PHOTOMETRIC.RGB and page.samplesperpixel in (3, 4)
            if not rgb:
                return None
            separate = page.planarconfig == tifffile.PLANARCONFIG.SEPARATE
            n_pages = len(tif.pages)
            if separate and page.dtype != np.uint8 and n_pages == 1:
                data = page.asarray()
            else:
                data = None
            info = (page.samplesperpixel, page.dtype, separate)
    except Exception:
        return None  # rsciio reports what is wrong with the file
    spp, dtype, separate = info
    if data is None:
        raise DataError(
            f"{str(path)!r}: an RGB{'A' if spp == 4 else ''} colour image (TIFF photometric "
            f"RGB, {spp} {dtype} samples per pixel, "
            f"{'separate planes' if separate else 'interleaved'}), not detector counts; save "
            "the grey-scale HAADF data"
            + (
                " (if the planes are frames of a series, write them with photometric='minisblack')"
                if separate
                else ""
            )
        )
    axes = [
        {"name": name, "size": size, "scale": 1.0, "offset": 0.0, "units": None}
        | {"navigate": name == "frame", "index_in_array": i}
        for i, (name, size) in enumerate(zip(("frame", "y", "x"), data.shape, strict=True))
    ]
    return {"data": data, "axes": axes, "metadata": {}}


def _refuse_channel_stack(path: Path, tif: dict[str, Any]) -> None:
    """A tif whose stack axis is channels (ImageJ/OME 'C', e.g. HAADF + ABF + BF detectors)
    is not a series of frames: refuse it instead of analysing the detectors as time steps."""
    axes, shape = tif["axes"], tif["shape"]
    if "C" in axes:
        raise DataError(
            f"{str(path)!r}: holds {shape[axes.index('C')]} channels (axes {axes!r}), e.g. "
            "several detectors, not frames of a series; save the HAADF channel on its own"
        )


def _imagej_frame_interval_s(tif: dict[str, Any]) -> float | None:
    """Frame interval (s) of an ImageJ hyperstack with a time axis (``finterval``, ``tunit``)."""
    ij, axes = tif["imagej"] or {}, tif["axes"]
    fi = ij.get("finterval")
    if fi is None or "T" not in axes or "Z" in axes or "C" in axes:
        return None
    kind_, factor = _nav_unit(ij.get("tunit") or "s")
    try:
        dt = float(fi) * factor
    except (TypeError, ValueError):
        return None
    return dt if kind_ == "time" and np.isfinite(dt) and dt > 0 else None


def _tiff_calibration_A(path: Path, tif: dict[str, Any]) -> tuple[float | None, float | None]:
    """Pixel sizes (x, y) in Å from ImageJ (``unit`` + resolution) or OME (``PhysicalSizeX/Y``)
    tif metadata, or (None, None)."""
    ij, ome, xres, yres = tif["imagej"], tif["ome"], tif["xres"], tif["yres"]
    sizes: tuple[Any, Any, Any, Any] | None = None
    if ij and ij.get("unit") and xres and yres and xres[0] and yres[0]:
        # ImageJ writes non-ASCII units as Java escapes, e.g. "\\u00B5m", "\\u00C5"
        unit = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), ij["unit"])
        unit = {"micron": "µm", "microns": "µm"}.get(unit.strip(), unit.strip())
        sizes = (xres[1] / xres[0], unit, yres[1] / yres[0], unit)
    elif ome:
        m = re.search(r"<Pixels\b[^>]*>", ome)
        if m is not None:
            att = dict(re.findall(r'(\w+)="([^"]*)"', m.group(0)))
            if "PhysicalSizeX" in att:
                ux = att.get("PhysicalSizeXUnit", "µm")  # the OME schema's default unit
                sizes = (
                    att["PhysicalSizeX"],
                    ux,
                    att.get("PhysicalSizeY", att["PhysicalSizeX"]),
                    att.get("PhysicalSizeYUnit", ux),
                )
    if sizes is None:
        return None, None
    try:
        px = length_to_A(float(sizes[0]), sizes[1], what=str(path))
        py = length_to_A(float(sizes[2]), sizes[3], what=str(path))
    except (CalibrationError, ValueError):
        return None, None
    return px, py


def _probe_lazy(path: Path, data: Any) -> None:
    """Read the last frame of lazily opened data now: a truncated file (the data block cut
    short) then fails here, naming the file, instead of deep inside a later computation."""
    if getattr(data, "size", 1) == 0:
        return
    last = (-1,) * max(getattr(data, "ndim", 0) - 2, 0)
    try:
        np.asarray(data[last])
    except Exception as exc:
        raise FileFormatError(
            f"{str(path)!r}: truncated or corrupted file: its last frame cannot be read "
            f"({type(exc).__name__}: {str(exc)[:200]})"
        ) from None


def dose_per_frame(beam_current_A: float, dwell_time_s: float, pixel_size_A: float) -> float:
    """Dose of one scanned frame, e⁻/Å²: electrons per pixel (I·t_dwell/e) over the pixel area."""
    return float(beam_current_A) * float(dwell_time_s) / E_CHARGE / float(pixel_size_A) ** 2


# Where the beam current and dwell time come from, in order of preference: (metadata tree,
# key path, factor to SI). HyperSpy/RosettaSciIO map DM's "Probe Current (nA)" and JEOL's
# BeamCurrent to TEM.beam_current in nA and DigiScan's "Sample Time" to dwell_time in s;
# Velox keeps the screen current (A) and the dwell time (s) in its original metadata.
_BEAM_FIELDS: dict[str, tuple[tuple[str, tuple[str, ...], float], ...]] = {
    "beam_current_A": (
        ("metadata", ("Acquisition_instrument", "TEM", "beam_current"), 1e-9),
        ("original_metadata", ("Optics", "LastMeasuredScreenCurrent"), 1.0),
    ),
    "dwell_time_s": (
        ("metadata", ("Acquisition_instrument", "TEM", "Detector", "dwell_time"), 1.0),
        ("metadata", ("Acquisition_instrument", "TEM", "dwell_time"), 1.0),
        ("original_metadata", ("Scan", "DwellTime"), 1.0),
    ),
}
# Beyond these the value is a unit or entry mistake, not a measurement: STEM probe and TEM
# screen currents are fA–nA (1 µA is a gun emission current); pixel dwell times are ns–ms.
_BEAM_MAX = {"beam_current_A": 1e-6, "dwell_time_s": 1.0}
# One scanned frame above this dose (e⁻/Å²) is not a usable acquisition of any material.
MAX_FRAME_DOSE_E_PER_A2 = 1e8


def _ignore_value(what: str, field: str, value: Any, why: str) -> None:
    warnings.warn(
        f"{what}: ignoring {field} = {value!r} ({why}); no dose is computed from it",
        UserWarning,
        stacklevel=4,
    )


def beam_conditions(
    md: dict, om: dict, *, what: str = "metadata", sources: dict[str, str] | None = None
) -> dict[str, float]:
    """Beam current (A), dwell time (s), high tension (kV) and magnification from metadata.

    Reads HyperSpy-style mapped metadata (``Acquisition_instrument.TEM``: beam_current in nA,
    dwell_time in s, beam_energy in kV) and, failing that, Velox original metadata
    (``Optics.LastMeasuredScreenCurrent`` in A, ``Scan.DwellTime`` in s).  A zero value
    counts as not recorded (GMS writes 0 when the microscope does not report it); a
    negative, non-finite or absurd one (current above 1 µA, dwell above 1 s) is ignored
    with a warning naming the field and ``what`` (the file).  ``sources``, when given,
    receives the field each value was taken from.
    """
    trees = {"metadata": md, "original_metadata": om}
    out: dict[str, float] = {}
    for name, candidates in _BEAM_FIELDS.items():
        for tree, keys, factor in candidates:
            raw = _get(trees[tree], *keys)
            if raw is None:
                continue
            field = f"{tree}.{'.'.join(keys)}"
            try:
                v = float(raw) * factor
            except (TypeError, ValueError):
                _ignore_value(what, field, raw, "not a number")
                continue
            if v == 0:
                continue
            if not np.isfinite(v) or v < 0:
                _ignore_value(what, field, raw, "negative or not finite")
                continue
            if v > _BEAM_MAX[name]:
                _ignore_value(what, field, raw, f"{name} = {v:.3g} is above {_BEAM_MAX[name]:g}")
                continue
            out[name] = v
            if sources is not None:
                sources[name] = field
            break
    tem = _get(md, "Acquisition_instrument", "TEM") or {}
    for key, name in (("beam_energy", "high_tension_kV"), ("magnification", "magnification")):
        try:
            v = float(tem.get(key))
        except (TypeError, ValueError):
            continue
        if np.isfinite(v) and v > 0:
            out[name] = v
    return out


def imaging_angles(md: dict, om: dict) -> dict[str, Any]:
    """Probe semi-angle and annular-detector range (mrad) of a STEM image from its metadata.

    Velox: ``Optics.BeamConvergence`` and the image's detector
    (``BinaryResult.DetectorIndex``) ``Detectors.Detector-N.CollectionAngleRange`` begin/end,
    all in rad; HyperSpy-style metadata: ``Acquisition_instrument.TEM.convergence_angle``
    (mrad).  Values outside 1–200 mrad (semi-angle) or 0 ≤ inner < outer ≤ 1000 mrad
    (detector) are not taken.  Column cross-sections scale with both: a library must be
    simulated at the image's.

    Returns
    -------
    dict
        ``semiangle_mrad`` (float) and ``detector_mrad`` ([inner, outer]) where found.
    """
    out: dict[str, Any] = {}
    conv = _get(om, "Optics", "BeamConvergence")
    scale = 1e3
    if conv is None:
        conv, scale = _get(md, "Acquisition_instrument", "TEM", "convergence_angle"), 1.0
    try:
        a = float(conv) * scale
        if 1.0 <= a <= 200.0:
            out["semiangle_mrad"] = a
    except (TypeError, ValueError):
        pass
    index = _get(om, "BinaryResult", "DetectorIndex")
    rng = _get(om, "Detectors", f"Detector-{index}", "CollectionAngleRange")
    if isinstance(rng, dict):
        try:
            inner, outer = float(rng.get("begin")) * 1e3, float(rng.get("end")) * 1e3
            if 0.0 <= inner < outer <= 1000.0:
                out["detector_mrad"] = [inner, outer]
        except (TypeError, ValueError):
            pass
    return out


def _jsonable(d: Any, depth: int = 0) -> Any:
    if depth > 8:
        return None
    if isinstance(d, dict):
        return {str(k): _jsonable(v, depth + 1) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in d][:1000]
    if isinstance(d, np.ndarray):
        return d.tolist() if d.size <= 1000 else f"<array {d.shape} {d.dtype}>"
    if isinstance(d, (np.generic,)):
        return d.item()
    if isinstance(d, (str, int, float, bool)) or d is None:
        return d
    return str(d)


# --------------------------------------------------------------------------- npz / mat / zarr / tif
def _read_npz(path: Path) -> dict[str, Any]:
    try:
        with np.load(path, allow_pickle=False) as z:
            files = {k: z[k] for k in z.files}
    except Exception as exc:
        raise FileFormatError(f"{str(path)!r}: not a readable .npz archive ({exc})") from None
    if "perovstem_meta" in files:
        meta = json.loads(str(files["perovstem_meta"]))
        rec = {
            "data": files["data"],
            "pixel_size_A": _meta_pixel_A(meta),
            "metadata": meta.get("metadata", {}),
        }
        for k in (
            "angles_deg",
            "time_s",
            "dose_e_per_A2",
            "temperature_K",
            "pressure_Pa",
            "shifts_px",
        ):
            if k in files:
                rec[k] = files[k]
        for k in ("tilt_axis_deg", "gas", "initial_dose_e_per_A2"):
            if meta.get(k) is not None:
                rec[k] = meta[k]
        if meta.get("kind") == "image" and meta.get("dose_e_per_A2") is not None:
            rec["dose_e_per_A2"] = meta["dose_e_per_A2"]
        if meta.get("kind") == "image" and meta.get("time_s_scalar") is not None:
            rec["time_s"] = meta["time_s_scalar"]
        return rec
    if "obs" in files and "dx_angstrom" in files:  # StatSTEM example (converted from .mat)
        return _statstem_record(files["obs"], float(files["dx_angstrom"]), files)
    if "obs_T" in files:
        raise FileFormatError(
            f"{str(path)!r}: StatSTEM HMM input has no pixel size; use "
            "perovstem.io.load_statstem_hmm()"
        )
    arrays = [k for k, v in files.items() if v.ndim in (2, 3)]
    if len(arrays) == 1:
        return {"data": files[arrays[0]], "pixel_size_A": None, "metadata": {"npz_key": arrays[0]}}
    raise FileFormatError(f"{str(path)!r}: .npz without a recognised layout (keys {sorted(files)})")


def _statstem_record(obs: np.ndarray, dx: float, extra: dict[str, Any]) -> dict[str, Any]:
    keys = sorted(k for k in extra if k not in ("obs", "dx_angstrom"))
    return {
        "data": np.asarray(obs, dtype=float),
        "pixel_size_A": dx,
        "metadata": {
            "format": "statstem",
            "statstem_keys": keys,
            "pixel_convention": "converted to 0-based (StatSTEM x = (j+1)·dx)",
        },
    }


def _read_statstem_mat(path: Path) -> dict[str, Any]:
    import scipy.io as sio

    try:
        m = sio.loadmat(path, squeeze_me=True, struct_as_record=False)
    except Exception as exc:
        raise FileFormatError(
            f"{str(path)!r}: not a readable MATLAB v5 file (StatSTEM 2017 "
            f"format); newer class-based files need mat-io ({exc})"
        ) from None
    inp = m.get("input")
    if inp is None or not hasattr(inp, "obs"):
        names = sorted(k for k in m if not k.startswith("__"))
        if not names or names == ["None"]:
            # scipy shows MATLAB class objects (MCOS, StatSTEM >= 2018 files) as one 'None'
            raise FileFormatError(
                f"{str(path)!r}: holds MATLAB class objects (newer StatSTEM files), which "
                "cannot be read here; in MATLAB save the image and pixel size as plain "
                "variables (obs, dx) in a struct 'input', or export them to .npz/.tif"
            )
        raise FileFormatError(
            f"{str(path)!r}: no StatSTEM 'input' struct with 'obs' (variables: {names})"
        )
    return _statstem_record(np.asarray(inp.obs, dtype=float), float(inp.dx), {})


def _read_zarr(path: Path, *, lazy: bool) -> dict[str, Any]:
    import zarr

    try:
        g = zarr.open_group(str(path), mode="r")
        arr = g["data"]
        meta = dict(g.attrs["perovstem"])
    except Exception as exc:
        raise FileFormatError(f"{str(path)!r}: not a perovstem Zarr store ({exc})") from None
    if lazy:
        import dask.array as da

        data = da.from_zarr(arr)
    else:
        data = arr[...]
    return _record_from_meta(data, meta)


def _meta_pixel_A(meta: dict[str, Any]) -> Any:
    """The pixel size of perovstem's JSON metadata; a volume (``save_volume``) records its
    voxel edge instead and is read as a stack of that pixel size."""
    return meta["pixel_size_A"] if "pixel_size_A" in meta else meta["voxel_size_A"]


def _record_from_meta(data: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """A load record from the JSON metadata that perovstem writes into zarr/tif files."""
    rec = {"data": data, "pixel_size_A": _meta_pixel_A(meta), "metadata": meta.get("metadata", {})}
    for k in (
        "angles_deg",
        "time_s",
        "dose_e_per_A2",
        "temperature_K",
        "pressure_Pa",
        "shifts_px",
        "tilt_axis_deg",
        "gas",
        "initial_dose_e_per_A2",
    ):
        if meta.get(k) is not None:
            rec[k] = np.asarray(meta[k]) if isinstance(meta[k], list) else meta[k]
    if meta.get("kind") == "image" and meta.get("time_s_scalar") is not None:
        rec["time_s"] = meta["time_s_scalar"]
    return rec


def _is_perovstem_tiff(path: Path) -> bool:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            md = tif.shaped_metadata
            return bool(md) and "perovstem" in md[0]
    except Exception:
        return False


def _read_perovstem_tiff(path: Path) -> dict[str, Any]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            meta = json.loads(tif.shaped_metadata[0]["perovstem"])
            data = tif.asarray()
    except Exception as exc:
        raise FileFormatError(
            f"{str(path)!r}: truncated or corrupted tif file ({type(exc).__name__}: "
            f"{str(exc)[:200]})"
        ) from None
    return _record_from_meta(data, meta)
