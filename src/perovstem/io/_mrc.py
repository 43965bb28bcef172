"""MRC/CCP4 stacks with FEI extended headers, SerialEM .mdoc and .rawtlt/.tlt side files."""

from __future__ import annotations

import re
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from perovstem.errors import FileFormatError

_FEI_RECORD_FLOATS = 32  # old-style FEI extended header: 1024 records × 128 bytes


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
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        m = re.match(r"\[ZValue\s*=\s*(\d+)\]", line)
        if m:
            cur = {"ZValue": m.group(1)}
            sections.append(cur)
            continue
        if line.startswith("[") or "=" not in line:
            continue
        k, v = (s.strip() for s in line.split("=", 1))
        cur[k] = v
    return {"global": glob, "sections": sections}


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
        voxel = float(mrc.voxel_size.x)
        nz = int(hdr.nz)
        exttyp = bytes(hdr.exttyp).decode("ascii", "replace").strip("\x00 ")
        labels = [
            bytes(lbl).decode("ascii", "replace").strip() for lbl in hdr.label[: int(hdr.nlabl)]
        ]
        fei = None
        if int(hdr.nsymbt) >= 128 * nz and exttyp in ("", "FEI1", "FEI2"):
            fei = read_fei_extended_header(mrc.extended_header, nz)
        arr = data if lazy else np.array(data)
    finally:
        if not lazy:
            mrc.close()
    if lazy:
        import dask.array as da

        arr = da.from_array(data, chunks=(1, *data.shape[1:]) if data.ndim == 3 else data.shape)
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
    if fei is not None:
        out["pixel_size_A"] = float(np.median(fei["pixel_size_m"]) * 1e10)
        if np.ptp(fei["a_tilt_deg"]) > 0.5:
            out["angles_deg"] = fei["a_tilt_deg"]
        md["fei"] = {k: v.tolist() for k, v in fei.items()}
        md["high_tension_kV"] = float(np.median(fei["high_tension_V"]) / 1e3)
        md["magnification"] = float(np.median(fei["magnification"]))
    # Side files beside the stack override or complete the header.
    for suffix in (".rawtlt", ".tlt"):
        side = path.with_suffix(suffix)
        if side.is_file():
            ang = read_angle_file(side)
            if arr.ndim == 3 and ang.size != arr.shape[0]:
                raise FileFormatError(
                    f"{str(side)!r}: {ang.size} tilt angles for {arr.shape[0]} images in {str(path)!r}"
                )
            out["angles_deg"] = ang
            md["angles_source"] = str(side)
            break
    for mdoc_path in (Path(str(path) + ".mdoc"), path.with_suffix(".mdoc")):
        if mdoc_path.is_file():
            mdoc = read_mdoc(mdoc_path)
            md["mdoc"] = mdoc
            secs = mdoc["sections"]
            ps = mdoc["global"].get("PixelSpacing") or (
                secs[0].get("PixelSpacing") if secs else None
            )
            if ps is not None:
                out["pixel_size_A"] = float(ps)  # SerialEM writes Å
            if secs and all("TiltAngle" in s for s in secs):
                ang = np.array([float(s["TiltAngle"]) for s in secs])
                if np.ptp(ang) > 0.5:
                    out["angles_deg"] = ang
            if secs:
                out["time_s"] = _mdoc_times(secs)
                exp = [s.get("ExposureTime") for s in secs]
                if all(e is not None for e in exp):
                    md["exposure_time_s"] = [float(e) for e in exp]
                if "Voltage" in mdoc["global"]:
                    md["high_tension_kV"] = float(mdoc["global"]["Voltage"])
                if "CountsPerElectron" in secs[0]:
                    md["counts_per_electron"] = float(secs[0]["CountsPerElectron"])
            break
    return out
