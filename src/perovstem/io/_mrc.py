"""MRC/CCP4 stacks with FEI extended headers, SerialEM .mdoc and .rawtlt/.tlt side files."""

from __future__ import annotations

import re
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from perovstem.errors import CalibrationError, DataError, FileFormatError
from perovstem.io._write import protect

_FEI_RECORD_FLOATS = 32  # old-style FEI extended header: 1024 records × 128 bytes

# FEI1/FEI2 (Thermo Fisher "MRC2014 with FEI extended header", one 768/888-byte record per
# image; field layout from mrcfile.dtypes). A field is valid only when its bit is set in the
# little-endian bitmask that covers it: (bitmask field, bit) per field we use. Units are SI:
# HT in V, dose in e⁻/m², pixel size in m, tilts in degrees, times in s; the timestamp is a
# day count (OLE Automation date: days since 1899-12-30).
_FEI_BITS = {
    "Timestamp": ("Bitmask 1", 0),
    "Application": ("Bitmask 1", 3),
    "Application version": ("Bitmask 1", 4),
    "HT": ("Bitmask 1", 5),
    "Dose": ("Bitmask 1", 6),
    "Alpha tilt": ("Bitmask 1", 7),
    "Tilt axis angle": ("Bitmask 1", 12),
    "Pixel size X": ("Bitmask 1", 14),
    "Pixel size Y": ("Bitmask 1", 15),
    "Magnification": ("Bitmask 1", 31),
    "Integration time": ("Bitmask 2", 16),
    "Dwell time": ("Bitmask 3", 15),
    "Frame time": ("Bitmask 3", 16),
}
_SECONDS_PER_DAY = 86400.0
# perovstem writes frame times on a clock that starts at day 0 (1899-12-30), i.e. the
# timestamp is time_s / 86400; a vendor file carries real dates (~40 000+ days). Stamps below
# this many days (~10 years) are therefore read as that relative clock.
_RELATIVE_CLOCK_MAX_DAYS = 3653.0
_FEI_APPLICATION = b"perovstem"
# Angles spanning less than this are a stage tilt held still: a frame series, not a tilt series.
_MIN_TILT_SPAN_DEG = 0.5
# a side file whose angles differ more from the header's is said (files write 0.01°; IMOD's
# refined .tlt differs by tenths)
_ANGLES_AGREE_DEG = 0.1


def read_fei_extended_header(ext: np.ndarray, n_images: int) -> dict[str, np.ndarray] | None:
    """Parse the FEI (Xplore3D/TIA) extended header of float32 records.

    Record layout (FEI "EM Tomography" MRC format, 128 bytes per image): a_tilt, b_tilt,
    x_stage, y_stage, z_stage, x_shift, y_shift, defocus, exp_time, mean_int, tilt_axis,
    pixel_size (m), magnification, ht (V), binning, applied_defocus.
    """
    raw = np.asarray(ext).tobytes()
    if len(raw) < 128 * n_images or n_images < 1:
        return None
    rec = np.frombuffer(raw[: 128 * n_images], dtype="<f4").reshape(n_images, _FEI_RECORD_FLOATS)
    names = [
        "a_tilt_deg",
        "b_tilt_deg",
        "x_stage",
        "y_stage",
        "z_stage",
        "x_shift",
        "y_shift",
        "defocus",
        "exposure_time_s",
        "mean_intensity",
        "tilt_axis_deg",
        "pixel_size_m",
        "magnification",
        "high_tension_V",
        "binning",
        "applied_defocus",
    ]
    out = {n: rec[:, i].astype(float) for i, n in enumerate(names)}
    px = out["pixel_size_m"]
    # A real FEI record has a plausible pixel size (1e-13…1e-5 m) and tilts within ±90°.
    if not (np.all(np.isfinite(px)) and np.all((px > 1e-13) & (px < 1e-5))):
        return None
    if not np.all(np.abs(out["a_tilt_deg"]) <= 90.0):
        return None
    return out


def fei1_extended_header(
    n_images: int,
    *,
    byte_order: str,
    pixel_size_A: float,
    dose_e_per_A2: Any = None,
    time_s: Any = None,
    angles_deg: Any = None,
    tilt_axis_deg: float | None = None,
    high_tension_V: float | None = None,
    exposure_time_s: Any = None,
    dwell_time_s: float | None = None,
    frame_time_s: float | None = None,
    app_version: str = "",
) -> np.ndarray:
    """One FEI1 extended-header record per image with the conditions perovstem knows.

    Written: pixel size (m), per-image dose (e⁻/m², from e⁻/Å² × 10²⁰), timestamp (days;
    ``time_s / 86400`` on a clock starting at day 0, see :func:`read_fei1_extended_header`),
    alpha tilt and tilt-axis angle (degrees; the axis in perovstem's convention, counter-
    clockwise from the image x axis), HT (V), the exposure (beam-on) time of each image
    (s, as "Integration time"), the STEM dwell and frame times (s, one value) and the
    application name ``perovstem``. Only the
    bits of the fields written are set, so other readers ignore the rest.
    """
    from mrcfile.dtypes import get_ext_header_dtype

    dtype = get_ext_header_dtype(b"FEI1", byte_order)
    rec = np.zeros(n_images, dtype=dtype)
    rec["Metadata size"] = dtype.itemsize
    rec["Metadata version"] = 0
    masks = {"Bitmask 1": 0, "Bitmask 2": 0, "Bitmask 3": 0, "Bitmask 4": 0}

    def put(field: str, values: Any) -> None:
        rec[field] = values
        mask, bit = _FEI_BITS[field]
        masks[mask] |= 1 << bit

    put("Application", _FEI_APPLICATION)
    if app_version:
        put("Application version", app_version.encode("ascii", "replace")[:16])
    put("Pixel size X", float(pixel_size_A) / 1e10)
    put("Pixel size Y", float(pixel_size_A) / 1e10)
    if dose_e_per_A2 is not None:
        put("Dose", np.broadcast_to(np.asarray(dose_e_per_A2, dtype=float), (n_images,)) * 1e20)
    if time_s is not None:
        put("Timestamp", np.asarray(time_s, dtype=float) / _SECONDS_PER_DAY)
    if angles_deg is not None:
        put("Alpha tilt", np.asarray(angles_deg, dtype=float))
    if tilt_axis_deg is not None:
        put("Tilt axis angle", float(tilt_axis_deg))
    if high_tension_V is not None:
        put("HT", float(high_tension_V))
    if exposure_time_s is not None:  # the beam-on time of each image, s
        put("Integration time", np.broadcast_to(np.asarray(exposure_time_s, float), (n_images,)))
    if dwell_time_s is not None:  # STEM pixel dwell time, s
        put("Dwell time", float(dwell_time_s))
    if frame_time_s is not None:  # STEM frame time, s
        put("Frame time", float(frame_time_s))
    for mask, value in masks.items():
        rec[mask] = value
    return rec


def read_fei1_extended_header(rec: np.ndarray, *, what: str = "MRC file") -> dict[str, Any]:
    """Conditions from an indexed FEI1/FEI2 extended header (``MrcFile.indexed_extended_header``).

    Returns only fields whose bitmask bit is set, converted to perovstem units: ``pixel_size_A``,
    ``dose_e_per_A2`` (from e⁻/m²), ``time_s`` (relative to the first image; a perovstem clock
    that starts at day 0 keeps its offset), ``angles_deg``, ``tilt_axis_deg``,
    ``high_tension_V``, ``magnification``, ``dwell_time_s``, ``frame_time_s``,
    ``integration_time_s`` and ``application``; values are per image arrays.  Absurd doses
    (negative, not finite, above 1e8 e⁻/Å² per image) are dropped with a warning naming
    ``what`` (the file).
    """
    out: dict[str, Any] = {}

    def has(field: str) -> bool:
        mask, bit = _FEI_BITS[field]
        return bool(np.all((rec[mask].astype(np.uint32) >> bit) & 1))

    def col(field: str) -> np.ndarray:
        return np.asarray(rec[field], dtype=float)

    if has("Application"):
        out["application"] = bytes(rec["Application"][0]).decode("ascii", "replace").strip("\x00 ")
    if has("Pixel size X"):
        px = col("Pixel size X")
        if np.all(np.isfinite(px)) and np.all((px > 1e-13) & (px < 1e-3)):
            out["pixel_size_A"] = px * 1e10
            if has("Pixel size Y"):
                py = col("Pixel size Y")
                if np.all(np.isfinite(py)) and np.all((py > 1e-13) & (py < 1e-3)):
                    out["pixel_size_y_A"] = py * 1e10
    if has("Dose"):
        from perovstem.io.read import MAX_FRAME_DOSE_E_PER_A2

        dose = col("Dose") / 1e20
        bad = ~np.isfinite(dose) | (dose < 0) | (dose > MAX_FRAME_DOSE_E_PER_A2)
        if not bad.any():
            out["dose_e_per_A2"] = dose
        else:
            # a negative, NaN or > 1e8 e⁻/Å² image dose is a writer's unit or entry mistake
            k = int(np.flatnonzero(bad)[0])
            warnings.warn(
                f"{what}: ignoring the FEI extended header's Dose of image {k} "
                f"({col('Dose')[k]:.4g} e⁻/m² = {dose[k]:.4g} e⁻/Å²; {int(bad.sum())} of "
                f"{dose.size} images negative, not finite or above "
                f"{MAX_FRAME_DOSE_E_PER_A2:g} e⁻/Å²); no dose is read from the file",
                UserWarning,
                stacklevel=2,
            )
    if has("Timestamp"):
        days = col("Timestamp")
        if np.all(np.isfinite(days)):
            if np.all(np.abs(days) < _RELATIVE_CLOCK_MAX_DAYS):
                out["time_s"] = days * _SECONDS_PER_DAY
            else:
                out["time_s"] = (days - days[0]) * _SECONDS_PER_DAY
                out["timestamp_days"] = days
    if has("Alpha tilt"):
        a = col("Alpha tilt")
        if np.all(np.abs(a) <= 90.0):
            out["angles_deg"] = a
        else:  # (dropped without a word: the tilt series became a frame series)
            k = int(np.flatnonzero(~(np.abs(a) <= 90.0))[0])
            warnings.warn(
                f"{what}: the FEI extended header's Alpha tilt of image {k} is {float(a[k])!r}° "
                "(beyond ±90°): its tilt angles are not used (give them in a .rawtlt side "
                "file)",
                UserWarning,
                stacklevel=3,
            )
    if has("Tilt axis angle"):
        out["tilt_axis_deg"] = col("Tilt axis angle")
    for field, key in (
        ("HT", "high_tension_V"),
        ("Magnification", "magnification"),
        ("Dwell time", "dwell_time_s"),
        ("Frame time", "frame_time_s"),
        ("Integration time", "integration_time_s"),
    ):
        if has(field):
            out[key] = col(field)
    return out


def read_angle_file(path: Path) -> np.ndarray:
    """Read a ``.rawtlt`` / ``.tlt`` file (one angle in degrees per line)."""
    try:
        vals = [float(line.split()[0]) for line in path.read_text().splitlines() if line.strip()]
    except (ValueError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"{str(path)!r}: not a list of tilt angles ({exc})") from None
    return np.asarray(vals, dtype=float)


def read_mdoc(path: Path) -> dict[str, Any]:
    """Parse a SerialEM ``.mdoc`` file into global keys and a list of per-section dicts."""
    glob: dict[str, str] = {}
    sections: list[dict[str, str]] = []
    cur = glob
    for i, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        m = re.match(r"\[ZValue\s*=\s*(\d+)\]", line)
        if m:
            cur = {"ZValue": m.group(1)}
            sections.append(cur)
            continue
        t = re.search(r"Tilt axis angle\s*=\s*([-+0-9.eE]+)", line)
        if line.startswith("[T") and t and "TiltAxisAngle" not in glob:
            # title line "[T = Tilt axis angle = -90.0, binning = 2 ...]"
            glob["TiltAxisAngle"] = t.group(1)
        if line.startswith("[") or "=" not in line:
            continue
        k, v = (s.strip() for s in line.split("=", 1))
        if k in _MDOC_NUMBERS:
            # ("PixelSpacing = 0.788 nm", "TiltAngle = nan": a bare ValueError, or nan
            # angles that made a tilt series a frame series)
            try:
                ok = np.isfinite(float(v))
            except ValueError:
                ok = False
            if not ok:
                raise FileFormatError(
                    f"{str(path)!r} line {i}: {k} = {v!r} is not a finite number (SerialEM "
                    "writes one number in its unit: Å, °, s, kV)"
                )
        cur[k] = v
    return {"global": glob, "sections": sections}


# the single-number .mdoc keys read (a value that is no number is refused)
_MDOC_NUMBERS = frozenset(
    {"PixelSpacing", "TiltAngle", "ExposureTime", "Voltage", "CountsPerElectron",
     "TiltAxisAngle", "ExposureDose"}
)  # fmt: skip


def _mdoc_times(sections: list[dict[str, str]]) -> np.ndarray | None:
    stamps = []
    for s in sections:
        d = s.get("DateTime")
        if d is None:
            return None
        for fmt in ("%d-%b-%y  %H:%M:%S", "%d-%b-%y %H:%M:%S", "%d-%b-%Y  %H:%M:%S"):
            try:
                stamps.append(datetime.strptime(d, fmt))
                break
            except ValueError:
                continue
        else:
            return None
    t0 = stamps[0]
    return np.array([(t - t0).total_seconds() for t in stamps])


def read_mrc(path: Path, *, lazy: bool = False) -> dict[str, Any]:
    """Read an MRC file into ``{data, pixel_size_A, angles_deg, time_s, metadata}``."""
    import mrcfile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if lazy:
                mrc = mrcfile.mmap(path, mode="r", permissive=True)
            else:
                mrc = mrcfile.open(path, mode="r", permissive=True)
    except Exception as exc:  # mrcfile raises ValueError for truncated/garbage files
        raise FileFormatError(f"{str(path)!r}: not a readable MRC file ({exc})") from None
    try:
        data = mrc.data
        if data is None:
            raise FileFormatError(
                f"{str(path)!r}: MRC header present but the data block is missing or truncated"
            )
        hdr = mrc.header
        expected = int(hdr.nx) * int(hdr.ny) * int(hdr.nz)
        if data.size != expected:
            raise FileFormatError(f"{str(path)!r}: truncated MRC, {data.size} of {expected} values")
        axes = (int(hdr.mapc), int(hdr.mapr), int(hdr.maps))
        if axes not in ((1, 2, 3), (2, 1, 3), (0, 0, 0)):
            # (the order was ignored: the stack was read with its axes mixed)
            raise FileFormatError(
                f"{str(path)!r}: MRC axis order mapc, mapr, maps = {axes}: the sections are "
                "not the images (only 1, 2, 3 or 2, 1, 3 are read); reorder it, e.g. with "
                "IMOD's trimvol -yz"
            )
        swapped = axes == (2, 1, 3)  # columns along y: each image is transposed
        voxel = float(mrc.voxel_size.x)
        voxel_y = float(mrc.voxel_size.y)
        if swapped:
            voxel, voxel_y = voxel_y, voxel
        nz = int(hdr.nz)
        exttyp = bytes(hdr.exttyp).decode("ascii", "replace").strip("\x00 ")
        labels = [
            bytes(lbl).decode("ascii", "replace").strip() for lbl in hdr.label[: int(hdr.nlabl)]
        ]
        fei = fei1 = None
        if exttyp in ("FEI1", "FEI2"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                indexed = mrc.indexed_extended_header
            if indexed is not None and len(indexed) >= nz:
                fei1 = read_fei1_extended_header(indexed[:nz], what=repr(str(path)))
        if fei1 is None and int(hdr.nsymbt) >= 128 * nz and exttyp in ("", "FEI1", "FEI2"):
            fei = read_fei_extended_header(mrc.extended_header, nz)
        arr = data if lazy else np.array(data)
        if swapped and not lazy:
            arr = np.ascontiguousarray(np.swapaxes(arr, -1, -2))
    finally:
        if not lazy:
            mrc.close()
    if lazy:
        import dask.array as da

        arr = da.from_array(data, chunks=(1, *data.shape[1:]) if data.ndim == 3 else data.shape)
        if swapped:
            arr = da.swapaxes(arr, -1, -2)
    md: dict[str, Any] = {
        "source": str(path),
        "format": "mrc",
        "mrc_labels": labels,
        "mrc_exttyp": exttyp,
    }
    out: dict[str, Any] = {
        "data": arr,
        "pixel_size_A": None,
        "angles_deg": None,
        "time_s": None,
        "metadata": md,
    }
    # Header voxel size 0 or 1 Å usually means "not set" (many writers leave 1.0).
    if voxel > 0 and not np.isclose(voxel, 1.0):
        out["pixel_size_A"] = voxel
        if voxel_y > 0:  # non-square pixels are refused by load() unless pixel_size= is given
            out["pixel_size_y_A"] = voxel_y
    if fei is not None:
        _take_header_pixel_size(out, np.asarray(fei["pixel_size_m"]) * 1e10, None, md)
        if np.ptp(fei["a_tilt_deg"]) > _MIN_TILT_SPAN_DEG:
            out["angles_deg"] = fei["a_tilt_deg"]
        else:
            _note_flat_angles(md, f"{str(path)!r} (FEI extended header)", fei["a_tilt_deg"])
        md["fei"] = {k: v.tolist() for k, v in fei.items()}
        _put_exposures(md, fei["exposure_time_s"], is_stack=arr.ndim == 3)
        md["high_tension_kV"] = float(np.median(fei["high_tension_V"]) / 1e3)
        md["magnification"] = float(np.median(fei["magnification"]))
    if fei1:
        _apply_fei1(fei1, out, md, is_stack=arr.ndim == 3)
    _apply_de_info(path, out, md, n_frames=arr.shape[0] if arr.ndim == 3 else 0)
    # Side files beside the stack override or complete the header.
    sides = [f for f in angle_file_candidates(path) if f.is_file()]
    for side in sides[:1]:
        ang = read_angle_file(side)
        if arr.ndim == 3 and ang.size != arr.shape[0]:
            raise FileFormatError(
                f"{str(side)!r}: {ang.size} tilt angles for {arr.shape[0]} images in {str(path)!r}"
            )
        _take_angles(out, md, ang, str(side))
        protect(side)  # an input: `convert X.ali X.mrc --overwrite` rewrote it
        if len(sides) > 1:
            other = read_angle_file(sides[1])
            if other.size != ang.size or np.max(np.abs(other - ang)) > _ANGLES_AGREE_DEG:
                # (the .rawtlt was taken beside an .ali's refined .tlt without a word)
                warnings.warn(
                    f"{str(side)!r} gives the tilt angles; {str(sides[1])!r} beside it holds "
                    "others (IMOD: the .tlt holds the angles refined for the aligned .ali "
                    "stack, the .rawtlt those of the raw stack)",
                    UserWarning,
                    stacklevel=3,
                )
    for mdoc_path in mdoc_candidates(path):
        if mdoc_path.is_file():
            mdoc = read_mdoc(mdoc_path)
            md["mdoc"] = mdoc
            secs = mdoc["sections"]
            n_img = arr.shape[0] if arr.ndim == 3 else 1
            if secs and len(secs) != n_img:
                # which section belongs to which image is then unknown (aborted acquisition,
                # stack edited after the fact): refuse rather than mis-assign times/angles
                raise FileFormatError(
                    f"{str(mdoc_path)!r}: {len(secs)} [ZValue] sections for {n_img} images in "
                    f"{str(path)!r}; the stack and its .mdoc do not match (move the .mdoc "
                    "away to load the stack without it)"
                )
            ps = mdoc["global"].get("PixelSpacing") or (
                secs[0].get("PixelSpacing") if secs else None
            )
            if ps is not None:
                _take_pixel_size(out, float(ps), repr(str(mdoc_path)))  # SerialEM writes Å
            if secs and all("TiltAngle" in s for s in secs):
                ang = np.array([float(s["TiltAngle"]) for s in secs])
                if np.ptp(ang) > _MIN_TILT_SPAN_DEG:
                    _take_angles(out, md, ang, str(mdoc_path))
                elif out.get("angles_deg") is None:
                    _note_flat_angles(md, repr(str(mdoc_path)), ang)
            if secs:
                out["time_s"] = _mdoc_times(secs)
                exp = [s.get("ExposureTime") for s in secs]
                if all(e is not None for e in exp):
                    md["exposure_time_s"] = [float(e) for e in exp]
                if "Voltage" in mdoc["global"]:
                    md["high_tension_kV"] = float(mdoc["global"]["Voltage"])
                if "TiltAxisAngle" in mdoc["global"]:
                    # SerialEM/IMOD convention (from the image Y axis, counterclockwise with
                    # Y up): kept as written, not converted to tomo.align's angle, whose
                    # sign convention against SerialEM's is not verified on a real series
                    md["serialem_tilt_axis_angle_deg"] = float(mdoc["global"]["TiltAxisAngle"])
                _mdoc_dose(secs, mdoc_path, out, md, is_stack=arr.ndim == 3)
                if "CountsPerElectron" in secs[0]:
                    md["counts_per_electron"] = float(secs[0]["CountsPerElectron"])
                    # SerialEM halves the counts to fit 16 bits and says so (DividedBy2)
                    half = str(secs[0].get("DividedBy2", "0")).strip() == "1"
                    md["counts_per_electron_in_file"] = md["counts_per_electron"] / (
                        2.0 if half else 1.0
                    )
            break
    return out


def angle_file_candidates(path: Path) -> list[Path]:
    """The tilt-angle side files read beside ``path``, in the order they are taken.

    IMOD: the .tlt beside an aligned .ali holds the angles tiltalign refined for it, the
    .rawtlt those of the raw stack; other stacks take the .rawtlt first."""
    order = (".tlt", ".rawtlt") if path.suffix.lower() == ".ali" else (".rawtlt", ".tlt")
    return [path.with_suffix(sfx) for sfx in order]


def mdoc_candidates(path: Path) -> list[Path]:
    """The SerialEM .mdoc files read beside ``path`` (``x.mrc.mdoc``, then ``x.mdoc``)."""
    return [Path(str(path) + ".mdoc"), path.with_suffix(".mdoc")]


def _take_header_pixel_size(
    out: dict[str, Any], px_A: np.ndarray, py_A: np.ndarray | None, md: dict[str, Any]
) -> None:
    """The FEI extended header's per-image pixel sizes: one size for the stack, or refused
    (0.2 then 0.4 Å, a magnification changed mid-series, read as 0.4 Å for every image);
    a Y size other than X is kept for load's non-square refusal (Y was not read)."""
    where = f"{md.get('source', 'MRC file')!r} (FEI extended header)"
    px = np.asarray(px_A, float).ravel()
    med = float(np.median(px))
    if np.ptp(px) > 1e-3 * med:
        k = int(np.flatnonzero(np.abs(px - px[0]) > 1e-3 * med)[0])
        raise CalibrationError(
            f"{where}: the pixel size changes between images ({px[0]:.6g} Å for image 0, "
            f"{px[k]:.6g} Å for image {k}; a magnification changed): not one series; split "
            "it, or pass `--pixel-size-A` (Python: pixel_size=) to use one size"
        )
    _take_pixel_size(out, med, where)
    if py_A is not None:
        py = float(np.median(np.asarray(py_A, float)))
        if abs(py - med) > 1e-3 * med:
            out["pixel_size_y_A"] = py


def _take_pixel_size(out: dict[str, Any], px_A: float, source: str) -> None:
    """A square pixel size from ``source`` (a SerialEM .mdoc, an FEI extended header)
    replaces the MRC header's voxel size in x and y; a header that disagrees is said.  (It
    replaced x only, and the header's y made a "non-square pixels" refusal.)"""
    before = out.get("pixel_size_A")
    if before is not None and abs(before - px_A) > 1e-3 * px_A:
        warnings.warn(
            f"{source}: its pixel size ({px_A:.6g} Å) replaces the MRC header's voxel size "
            f"({before:.6g} Å)",
            UserWarning,
            stacklevel=4,
        )
    out["pixel_size_A"] = px_A
    out.pop("pixel_size_y_A", None)


def _take_angles(out: dict[str, Any], md: dict[str, Any], ang: np.ndarray, source: str) -> None:
    """Angles of a side file replace those read so far; a disagreement is said.

    A .rawtlt beside an FEI stack replaced the header's angles without a word, also when
    the two differed by degrees (another series' file) or by units (radians)."""
    before = out.get("angles_deg")
    if before is not None:
        diff = np.abs(np.asarray(ang, float) - np.asarray(before, float))
        k = int(np.argmax(diff))
        if diff[k] > _ANGLES_AGREE_DEG:
            was = md.get("angles_source", "the file's header")
            warnings.warn(
                f"{source!r}: its tilt angles replace those of {was} ({before[k]:g}° → "
                f"{ang[k]:g}° at image {k}, {int(np.sum(diff > _ANGLES_AGREE_DEG))} of "
                f"{diff.size} differ by more than {_ANGLES_AGREE_DEG:g}°); move it away to use "
                "the others",
                UserWarning,
                stacklevel=4,
            )
    out["angles_deg"] = ang
    md["angles_source"] = source


def _de_info_file(path: Path) -> Path | None:
    """The Direct Electron ``<YYYYMMDD_acq>[_...]_info.txt`` beside a DE-Server ``.mrc``."""
    m = re.match(r"(\d{8}_\d+)", path.stem)
    if m is None:
        # custom DE names: "<name>_movie.mrc" / "<name>_final.mrc" beside "<name>_info.txt"
        m = re.match(r"(.+?)_(movie|final|sum|Virt.*|ext\d.*)$", path.stem)
    if m is None:
        return None
    hits = sorted(path.parent.glob(f"{m.group(1)}*_info.txt"))
    return hits[0] if hits else None


def _apply_de_info(path: Path, out: dict[str, Any], md: dict[str, Any], *, n_frames: int) -> None:
    """Calibration and frame times of a Direct Electron movie from its ``_info.txt`` (keys
    as RosettaSciIO's DE reader reads them): ``Specimen Pixel Size X/Y (nanometers)``
    (-1 = not calibrated), ``Frames Per Second`` and ``Autosave Movie Sum Count`` (camera
    frames summed into one saved frame, so a saved frame lasts count/fps).  Used only when
    the MRC header has no pixel size.  A movie of a STEM scan or in diffraction holds
    diffraction patterns, not images: refused."""
    info_path = _de_info_file(path)
    if info_path is None or out.get("pixel_size_A") is not None:
        return
    info: dict[str, str] = {}
    for line in info_path.read_text(errors="replace").splitlines():
        k, sep, v = line.partition("=")
        if sep:
            info[k.strip()] = v.strip()

    def num(key: str, default: float = -1.0) -> float:
        try:
            return float(info.get(key, default))
        except ValueError:
            return default

    md["de_info"] = str(info_path)
    scanning = info.get("Scan - Enable", "").lower() == "enable"
    diffracting = num("Instrument Project Camera Length (centimeters)") != -1
    if path.stem.endswith("_movie") and (scanning or diffracting):
        raise DataError(
            f"{str(path)!r}: a Direct Electron movie of a "
            f"{'STEM scan' if scanning else 'diffraction acquisition'} ({info_path.name}): its "
            "frames are diffraction patterns, not images; load a virtual image "
            "(..._Virt N_sum.mrc) or a TEM movie instead"
        )
    sx = num("Specimen Pixel Size X (nanometers)")
    sy = num("Specimen Pixel Size Y (nanometers)")
    if sx > 0:
        out["pixel_size_A"] = sx * 10.0
        if sy > 0:
            out["pixel_size_y_A"] = sy * 10.0
        md["pixel_size_source"] = f"{info_path.name}: Specimen Pixel Size (nm)"
    fps, n_sum = num("Frames Per Second"), num("Autosave Movie Sum Count", 1.0)
    if n_frames and path.stem.endswith("_movie") and fps > 0 and n_sum >= 1:
        out["time_s"] = np.arange(n_frames) * n_sum / fps
        md["frame_time_s"] = n_sum / fps


def _mdoc_dose(
    secs: list[dict[str, str]],
    mdoc_path: Path,
    out: dict[str, Any],
    md: dict[str, Any],
    *,
    is_stack: bool,
) -> None:
    """Per-image dose from SerialEM's ``ExposureDose`` (e⁻/Å², written when the camera's
    dose is calibrated; all zero when it is not).  Negative, non-finite or above-1e8 values
    are dropped with a warning naming the file."""
    from perovstem.io.read import MAX_FRAME_DOSE_E_PER_A2

    raw = [s.get("ExposureDose") for s in secs]
    if any(v is None for v in raw):
        return
    try:
        dose = np.array([float(v) for v in raw])
    except ValueError:
        dose = np.array([np.nan])
    if dose.size and np.all(dose == 0):
        return
    if not np.all(np.isfinite(dose) & (dose >= 0) & (dose <= MAX_FRAME_DOSE_E_PER_A2)):
        warnings.warn(
            f"{str(mdoc_path)!r}: ignoring ExposureDose values {raw[:5]}"
            f"{' ...' if len(raw) > 5 else ''} (negative, not a number or above "
            f"{MAX_FRAME_DOSE_E_PER_A2:g} e⁻/Å²); no dose is read from the file",
            UserWarning,
            stacklevel=3,
        )
        return
    out["dose_e_per_A2"] = dose if is_stack else float(dose[0])
    md["dose_source"] = f"{mdoc_path.name}: ExposureDose (e⁻/Å² per image)"


def _note_flat_angles(md: dict[str, Any], where: str, angles: np.ndarray) -> None:
    """Record tilt angles dropped because they all lie within ``_MIN_TILT_SPAN_DEG``, so that
    ``kind='tilt'`` can say what it found instead of 'no tilt angles'."""
    a = np.asarray(angles, dtype=float).ravel()
    md["dropped_tilt_angles"] = (
        f"{where} holds {a.size} tilt angle(s), all within {_MIN_TILT_SPAN_DEG:g}° "
        f"({a.min():.3g}° to {a.max():.3g}°): a frame series at one tilt, not a tilt series"
    )


def _put_exposures(md: dict[str, Any], exposure_s: Any, *, is_stack: bool) -> None:
    """``md["exposure_time_s"]`` (s, one per image of a stack) from a header's exposure
    times, when every one is finite and positive (0 is "not recorded")."""
    e = np.asarray(exposure_s, dtype=float).ravel()
    if e.size and np.all(np.isfinite(e)) and np.all(e > 0):
        md["exposure_time_s"] = e.tolist() if is_stack else float(e[0])


def _apply_fei1(
    fei1: dict[str, Any], out: dict[str, Any], md: dict[str, Any], *, is_stack: bool
) -> None:
    """Put what an FEI1/FEI2 header holds into a load record (units already converted)."""
    ours = fei1.get("application") == _FEI_APPLICATION.decode()
    md["fei"] = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in fei1.items()}
    if "integration_time_s" in fei1:  # the exposure time of each image (FEI1 format)
        _put_exposures(md, fei1["integration_time_s"], is_stack=is_stack)
    # STEM pixel dwell and frame times (s), put where the Velox/DM readers put the dwell
    # time, for the dose bookkeeping; absurd values are ignored with a warning
    for key, top in (("dwell_time_s", 1.0), ("frame_time_s", 1e4)):
        if key in fei1:
            v = np.asarray(fei1[key], float)
            good = np.isfinite(v) & (v > 0) & (v <= top)
            if np.all(good):
                md[key] = float(np.median(v))
            elif np.any(v != 0):  # 0: not recorded
                k = int(np.flatnonzero(~good)[0])
                warnings.warn(
                    f"{md.get('source', 'MRC file')!r}: ignoring the FEI extended header's "
                    f"{key.replace('_s', '').replace('_', ' ').capitalize()} of image {k} "
                    f"({float(v[k])!r} s; expected above 0 and at most {top:g} s)",
                    UserWarning,
                    stacklevel=3,
                )
    if "pixel_size_A" in fei1:
        _take_header_pixel_size(out, fei1["pixel_size_A"], fei1.get("pixel_size_y_A"), md)
    if "angles_deg" in fei1 and np.ptp(fei1["angles_deg"]) > _MIN_TILT_SPAN_DEG:
        out["angles_deg"] = fei1["angles_deg"]
    elif "angles_deg" in fei1:
        _note_flat_angles(md, "the FEI extended header", fei1["angles_deg"])
    if "dose_e_per_A2" in fei1:
        d = fei1["dose_e_per_A2"]
        out["dose_e_per_A2"] = d if is_stack else float(d[0])
    if "time_s" in fei1 and is_stack:
        out["time_s"] = fei1["time_s"]
    elif "time_s" in fei1 and ours:
        # one image: only perovstem's own clock is absolute (a vendor date reads as 0 s)
        out["time_s"] = float(np.ravel(fei1["time_s"])[0])
    if "high_tension_V" in fei1:
        md["high_tension_kV"] = float(np.median(fei1["high_tension_V"]) / 1e3)
    if "magnification" in fei1:
        md["magnification"] = float(np.median(fei1["magnification"]))
    # The tilt-axis field is in perovstem's convention only when perovstem wrote the file.
    if "tilt_axis_deg" in fei1 and ours:
        out["tilt_axis_deg"] = float(np.median(fei1["tilt_axis_deg"]))
