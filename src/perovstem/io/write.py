"""Writers: images/stacks, tables, volumes, meshes, JSON and figures (all atomic)."""

from __future__ import annotations

import base64
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from perovstem._data import Image, Series, TiltSeries
from perovstem.errors import CalibrationError, DataError, FileFormatError, ParameterError
from perovstem.io._write import _check_target, atomic_path, atomic_write

__all__ = [
    "save_image",
    "save_table",
    "read_table",
    "save_volume",
    "read_volume",
    "save_mesh",
    "save_json",
    "save_figure",
]

#: suffixes :func:`save_image` writes
IMAGE_SUFFIXES = (".npz", ".zarr", ".tif", ".tiff", ".mrc", ".hspy")
#: suffixes :func:`save_table` writes
TABLE_SUFFIXES = (".parquet", ".csv")
#: suffixes :func:`save_volume` writes
VOLUME_SUFFIXES = (".mrc", ".tif", ".tiff", ".zarr", ".npz", ".vti")
#: suffixes :func:`save_mesh` writes
MESH_SUFFIXES = (".ply", ".stl", ".obj")

_PER_FRAME = ("time_s", "dose_e_per_A2", "temperature_K", "pressure_Pa", "angles_deg", "shifts_px")
# largest numerator of a TIFF RATIONAL (unsigned 32-bit): the resolution tag's pixels per cm
_TIFF_MAX_RATIONAL = 2**32 - 1


def _tiff_pixels_per_cm(path: Path, pixel_A: float) -> float:
    """The TIFF resolution of a ``pixel_A`` (Å) pixel, pixels per cm; refused (naming
    ``path``) where the tag cannot hold it (tifffile raised a bare ValueError)."""
    per_cm = 1e8 / float(pixel_A)
    if per_cm > _TIFF_MAX_RATIONAL:
        raise FileFormatError(
            f"{str(path)!r}: a TIFF cannot record a pixel of {float(pixel_A):g} Å (its "
            f"resolution tag holds at most {_TIFF_MAX_RATIONAL} pixels per cm, i.e. pixels "
            f">= {1e8 / _TIFF_MAX_RATIONAL:.3g} Å): write .npz, .zarr, .mrc or .hspy"
        )
    return per_cm


def _meta_of(obj: Image | Series | TiltSeries) -> dict[str, Any]:
    kind = {Image: "image", Series: "series", TiltSeries: "tilt"}[type(obj)]
    meta: dict[str, Any] = {
        "kind": kind,
        "pixel_size_A": obj.pixel_size_A,
        "metadata": _json_safe(obj.metadata),
    }
    if isinstance(obj, Image):
        meta["dose_e_per_A2"] = obj.dose_e_per_A2
        meta["time_s_scalar"] = obj.time_s
    if isinstance(obj, Series):
        meta["gas"] = obj.gas
        meta["initial_dose_e_per_A2"] = float(obj.initial_dose_e_per_A2)
    if isinstance(obj, TiltSeries):
        meta["tilt_axis_deg"] = obj.tilt_axis_deg
    return meta


def projection_dose_e_per_A2(obj: TiltSeries) -> np.ndarray | None:
    """The dose of each projection of a tilt series, e⁻/Å² (kept in its metadata as read
    from an .mdoc or FEI header), or None when unknown or not one finite value ≥ 0 per
    projection."""
    v = obj.metadata.get("dose_per_projection_e_per_A2")
    if v is None:
        return None
    try:
        d = np.asarray(v, dtype=float).ravel()
    except (TypeError, ValueError):
        return None
    if d.shape != (obj.n_angles,) or not np.all(np.isfinite(d) & (d >= 0)):
        return None
    return d


def _json_safe(d: Any) -> Any:
    from perovstem.io.read import _jsonable

    return _jsonable(d)


def _per_frame_arrays(obj: Any) -> dict[str, np.ndarray]:
    out = {}
    for k in _PER_FRAME:
        v = getattr(obj, k, None)
        if v is not None and not isinstance(obj, Image):
            out[k] = np.asarray(v)
    return out


def save_image(
    obj: Image | Series | TiltSeries, path: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Write an :class:`Image`, :class:`Series` or :class:`TiltSeries` with its calibration.

    Formats by suffix: ``.npz`` and ``.zarr`` (lossless, everything kept), ``.tif``
    (tifffile, calibration as resolution + JSON description), ``.mrc`` (mrcfile, float32/int16,
    voxel size in Å; tilt angles also in a ``.rawtlt`` side file), ``.hspy`` (RosettaSciIO).

    ``.mrc`` files get an FEI1 extended header (Thermo Fisher MRC2014 layout, SI units) with
    one record per image: pixel size, dose per frame, frame time stamps, HT (from metadata
    ``high_tension_kV`` / ``voltage_kV``), tilt angles and tilt axis, read back by
    :func:`perovstem.load`. Temperature, pressure, gas, the dose before the first frame,
    alignment shifts and free-form metadata have no FEI1 field and are lost in ``.mrc``.
    """
    if not isinstance(obj, (Image, Series, TiltSeries)):
        raise ParameterError(
            f"`obj` must be an Image, Series or TiltSeries, got {type(obj).__name__}"
        )
    path = Path(path)
    suffix = path.suffix.lower()
    data = np.asarray(obj.data.compute() if hasattr(obj.data, "dask") else obj.data)
    meta = _meta_of(obj)
    frames = _per_frame_arrays(obj)
    # metadata and per-frame conditions as one JSON-able dict (zarr, tif, hspy)
    full = {**meta, **{k: v.tolist() for k, v in frames.items()}}
    if suffix == ".npz":
        with atomic_write(path, overwrite=overwrite) as fh:
            np.savez_compressed(fh, data=data, perovstem_meta=np.array(json.dumps(meta)), **frames)
    elif suffix == ".zarr":
        import zarr

        with atomic_path(path, overwrite=overwrite) as tmp:
            g = zarr.open_group(str(tmp), mode="w")
            chunks = (1, *data.shape[1:]) if data.ndim == 3 else data.shape
            arr = g.create_array("data", shape=data.shape, dtype=data.dtype, chunks=chunks)
            arr[...] = data
            g.attrs["perovstem"] = full
    elif suffix in (".tif", ".tiff"):
        import tifffile

        per_cm = _tiff_pixels_per_cm(path, obj.pixel_size_A)
        with atomic_path(path, overwrite=overwrite) as tmp:
            tifffile.imwrite(
                tmp,
                data,
                metadata={"perovstem": json.dumps(full)},
                resolution=(per_cm, per_cm),
                resolutionunit="CENTIMETER",
            )
    elif suffix == ".mrc":
        if isinstance(obj, TiltSeries):
            # both files checked before either is written: a refused .rawtlt left the new
            # .mrc beside the old angles, which then replaced the header's on reading
            _check_target(path.with_suffix(".rawtlt"), overwrite)
            _check_target(path, overwrite)
        _warn_mrc_losses(obj, path)
        _save_mrc(data, path, voxel_A=obj.pixel_size_A, overwrite=overwrite, fei=_fei_fields(obj))
        if isinstance(obj, TiltSeries):
            with atomic_write(path.with_suffix(".rawtlt"), mode="w", overwrite=overwrite) as fh:
                fh.write("".join(f"{a:.4f}\n" for a in obj.angles_deg))
    elif suffix == ".hspy":
        _save_hspy(obj, data, path, overwrite=overwrite, meta=full)
    else:
        what = (
            "is a directory; give a file name in it"
            if path.is_dir()
            else "has no file extension"
            if not suffix
            else f"cannot write {suffix!r}"
        )
        raise FileFormatError(f"{str(path)!r}: {what} (use .npz, .zarr, .tif, .mrc or .hspy)")
    return path


# metadata an analysis reads back and an FEI1 header cannot hold: said when dropped
_MRC_LOST_KEYS = (
    "gain",
    "offset",
    "beam_current_A",
    "detector_mrad",  # the counting libraries are the detector's (65-131 vs 65-200 mrad)
    "semiangle_mrad",
)


def _warn_mrc_losses(obj: Image | Series | TiltSeries, path: Path) -> None:
    """Warn when writing ``.mrc`` drops what a later analysis of the file would need."""
    import warnings

    md = obj.metadata or {}
    lost = [k for k in _MRC_LOST_KEYS if md.get(k) is not None]
    for k in ("temperature_K", "pressure_Pa"):
        if getattr(obj, k, None) is not None:
            lost.append(k)
    if getattr(obj, "gas", None):
        lost.append("gas")
    if lost:
        warnings.warn(
            f"{str(path)!r}: MRC (FEI1 header) keeps pixel size, dose, time and tilts but not "
            f"{', '.join(lost)}; a later analysis of this file will not know them (the "
            "detector gain and offset set the Pb-cluster counts, the detector and probe angles "
            "the atom-counting library): write .hspy, .zarr, .tif or .npz to keep them",
            UserWarning,
            stacklevel=3,
        )


def _fei_fields(obj: Image | Series | TiltSeries) -> dict[str, Any]:
    """What an FEI1 extended header can carry for ``obj`` (see ``_mrc.fei1_extended_header``).

    Temperature, pressure, gas, alignment shifts and free-form metadata have no FEI1 field
    and are not written to ``.mrc``; use ``.npz``, ``.zarr``, ``.tif`` or ``.hspy`` for them.
    """
    from perovstem import __version__

    md = obj.metadata or {}
    ht_V = None
    for key in ("high_tension_kV", "voltage_kV"):  # read from a file / set by simulate
        try:
            v = float(md[key]) * 1e3
        except (KeyError, TypeError, ValueError):
            continue
        if np.isfinite(v) and v > 0:
            ht_V = v
            break
    out: dict[str, Any] = {"high_tension_V": ht_V, "app_version": str(__version__)}
    for key in ("dwell_time_s", "frame_time_s"):  # STEM scan times, s: FEI1 fields
        try:
            v = float(md[key])
        except (KeyError, TypeError, ValueError):
            continue
        if np.isfinite(v) and v > 0:
            out[key] = v
    if isinstance(obj, TiltSeries):
        out.update(angles_deg=obj.angles_deg, tilt_axis_deg=obj.tilt_axis_deg)
        dose = projection_dose_e_per_A2(obj)
        if dose is not None:
            out["dose_e_per_A2"] = dose
    else:
        out.update(dose_e_per_A2=obj.dose_e_per_A2, time_s=obj.time_s)
        if isinstance(obj, Series) and obj.exposure_s is not None:
            out["exposure_time_s"] = obj.exposure_s  # keeps the dose rate rule of the frames
    return out


_MRC_LABEL = "perovstem: voxel size set"


def _save_mrc(
    data: np.ndarray,
    path: Path,
    *,
    voxel_A: float,
    overwrite: bool,
    fei: dict[str, Any] | None = None,
) -> None:
    """MRC2014 file; with ``fei`` (images and stacks, not volumes) an FEI1 extended header
    with one record per image carries pixel size, dose, time stamps, tilts and HT."""
    import mrcfile

    from perovstem.io._mrc import fei1_extended_header

    if data.dtype == np.float64:
        data = data.astype(np.float32)
    if data.dtype not in (np.float32, np.int16, np.uint16, np.int8, np.uint8, np.float16):
        raise DataError(f"{str(path)!r}: MRC cannot store dtype {data.dtype}")
    with atomic_path(path, overwrite=overwrite) as tmp:
        with mrcfile.new(tmp, overwrite=True) as m:
            m.set_data(data)
            m.voxel_size = voxel_A
            # marks the voxel size as set: most writers leave 0 or 1 Å for "unknown", so a
            # reader cannot otherwise trust a true 1 Å voxel (read_volume)
            m.add_label(_MRC_LABEL)
            if fei is not None:
                n = data.shape[0] if data.ndim == 3 else 1
                # same byte order as the data: mrcfile reads the extended header with it
                ext = fei1_extended_header(
                    n, byte_order=m.header.mode.dtype.byteorder, pixel_size_A=voxel_A, **fei
                )
                m.set_extended_header(ext)
                m.header.exttyp = b"FEI1"


def _save_hspy(
    obj: Any, data: np.ndarray, path: Path, *, overwrite: bool, meta: dict[str, Any]
) -> None:
    """HyperSpy file; perovstem's calibration and per-frame conditions (dose, time,
    temperature, ...) as a JSON string under ``metadata.perovstem``, read back by
    :func:`perovstem.load`; a uniformly timed series also gets a time axis (s)."""
    from rsciio.hspy import file_writer

    nav = []
    if data.ndim == 3:
        nav = [
            {
                "name": "tilt" if isinstance(obj, TiltSeries) else "frame",
                "size": data.shape[0],
                "scale": 1.0,
                "offset": 0.0,
                "units": "",
                "navigate": True,
            }
        ]
        t = getattr(obj, "time_s", None)
        if isinstance(obj, Series) and t is not None and len(t) > 1:
            dt = np.diff(np.asarray(t, float))
            if np.allclose(dt, dt[0], rtol=1e-9, atol=0.0):
                nav[0].update(name="time", scale=float(dt[0]), offset=float(t[0]), units="s")
    axes = [
        *nav,
        {
            "name": "y",
            "size": data.shape[-2],
            "scale": obj.pixel_size_A,
            "offset": 0.0,
            "units": "Å",
            "navigate": False,
        },
        {
            "name": "x",
            "size": data.shape[-1],
            "scale": obj.pixel_size_A,
            "offset": 0.0,
            "units": "Å",
            "navigate": False,
        },
    ]
    md: dict[str, Any] = {
        "General": {"title": path.stem},
        "Signal": {"signal_type": ""},
        "perovstem": json.dumps(meta),
    }
    if isinstance(obj, TiltSeries):
        md["Tomography"] = {"tilts": obj.angles_deg, "tiltaxis": obj.tilt_axis_deg}
        if obj.shifts_px is not None:
            md["Tomography"]["shifts"] = obj.shifts_px
    with atomic_path(path, overwrite=overwrite) as tmp:
        signal = {
            "data": data,
            "axes": axes,
            "metadata": md,
            "original_metadata": {},
            "tmp_parameters": {},
            "attributes": {"_lazy": False},
            "learning_results": {},
            "models": {},
            "package_info": {"package": "perovstem", "package_version": "0.1.0"},
        }
        file_writer(str(tmp), signal)


# --------------------------------------------------------------------------- tables
def save_table(df: Any, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Write a DataFrame as Parquet (``df.attrs`` kept) or CSV (attrs in a ``.json`` sidecar)."""
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        raise ParameterError(f"`df` must be a pandas DataFrame, got {type(df).__name__}")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        df = df.copy()
        df.attrs = _json_safe(df.attrs)
        with atomic_path(path, overwrite=overwrite) as tmp:
            df.to_parquet(tmp, index=False)
    elif suffix == ".csv":
        with atomic_write(path, mode="w", overwrite=overwrite, newline="") as fh:
            df.to_csv(fh, index=False)
        if df.attrs:
            with atomic_write(path.with_suffix(".csv.json"), mode="w", overwrite=True) as fh:
                json.dump(_json_safe(df.attrs), fh, indent=1)
    else:
        raise FileFormatError(f"{str(path)!r}: tables are written as .parquet or .csv")
    return path


def read_table(path: str | os.PathLike) -> Any:
    """Read a table written by :func:`save_table` (attrs restored)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"no such table file: {str(path)!r}")
    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        if path.suffix.lower() == ".csv":
            df = pd.read_csv(path)
            side = path.with_suffix(".csv.json")
            if side.is_file():
                df.attrs = json.loads(side.read_text())
            _refuse_text_in_numbers(df, path)
            return df
    except DataError:
        raise
    except Exception as exc:
        raise FileFormatError(f"{str(path)!r}: not a readable table ({exc})") from None
    raise FileFormatError(f"{str(path)!r}: tables are read from .parquet or .csv")


# columns of labels in the project's tables and in common user tables: their values may
# look like numbers in some rows (facet family "100" beside "other", atom type "1")
_LABEL_COLUMNS = frozenset(
    "family type label name origin event kind method model mechanism flag reason note "
    "notes parent parents file source element species status condition gas id".split()
)
_LABEL_SUFFIXES = ("_flag", "_reason", "_name", "_type", "_label", "_kind", "_family")


def _is_label_column(name: str) -> bool:
    """Whether a column holds labels (text that may look numeric), not numbers."""
    n = name.strip().lower()
    return n in _LABEL_COLUMNS or n.endswith(_LABEL_SUFFIXES)


def _refuse_text_in_numbers(df: Any, path: Path) -> None:
    """Refuse a CSV column of numbers with text in some cells (``abc``, ``0,5``, ``12 Å``).

    pandas reads such a column as text; the analysis then failed far from the file with
    ``could not convert string to float``. A column of text only (``type``) is text; an
    empty cell, ``NA`` or ``n/a`` is a missing value, not text; a column of labels
    (``family``: ``100``, ``110``, ``other``; :func:`_is_label_column`) is not checked.
    """
    import pandas as pd

    for c in df.columns:
        col = df[c]
        if col.dtype.kind not in "OSU" and str(col.dtype) not in ("string", "str"):
            continue
        if _is_label_column(str(c)):
            continue
        num = pd.to_numeric(col, errors="coerce")
        text = col.notna().to_numpy() & num.isna().to_numpy()
        if not text.any() or num.notna().sum() == 0:
            continue
        rows = np.flatnonzero(text)
        vals = list(dict.fromkeys(str(v) for v in col.to_numpy()[rows]))[:3]
        raise DataError(
            f"{str(path)!r}: column {str(c)!r} holds text where numbers are expected "
            f"({', '.join(map(repr, vals))} in {rows.size} of {len(df)} data row(s), first "
            f"{rows[:5].tolist()}; rows count from 0): write numbers only (a missing value "
            "as an empty cell)"
        )


# --------------------------------------------------------------------------- volumes and meshes
def save_volume(
    volume: Any,
    path: str | os.PathLike,
    *,
    voxel_size_A: float,
    metadata: dict | None = None,
    overwrite: bool = True,
) -> Path:
    """Write a 3-D volume ``(z, y, x)`` with its voxel size (Å).

    ``.mrc`` (mrcfile), ``.tif`` (tifffile stack), ``.zarr``, ``.vti`` (VTK XML ImageData for
    ParaView/Tomviz), ``.npz``.
    """
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise DataError(f"`volume` must be 3-D, got shape {vol.shape}")
    if not (np.isfinite(voxel_size_A) and voxel_size_A > 0):
        raise ParameterError(f"`voxel_size_A` must be > 0, got {voxel_size_A!r}")
    path = Path(path)
    suffix = path.suffix.lower()
    meta = {
        "kind": "volume",
        "voxel_size_A": float(voxel_size_A),
        "metadata": _json_safe(metadata or {}),
    }
    if suffix == ".mrc":
        _save_mrc(vol, path, voxel_A=voxel_size_A, overwrite=overwrite)
    elif suffix in (".tif", ".tiff"):
        import tifffile

        per_cm = _tiff_pixels_per_cm(path, voxel_size_A)
        with atomic_path(path, overwrite=overwrite) as tmp:
            tifffile.imwrite(
                tmp,
                vol,
                metadata={"perovstem": json.dumps(meta)},
                resolution=(per_cm, per_cm),
                resolutionunit="CENTIMETER",
            )
    elif suffix == ".zarr":
        import zarr

        with atomic_path(path, overwrite=overwrite) as tmp:
            g = zarr.open_group(str(tmp), mode="w")
            arr = g.create_array(
                "data",
                shape=vol.shape,
                dtype=vol.dtype,
                chunks=(min(64, vol.shape[0]), *vol.shape[1:]),
            )
            arr[...] = vol
            g.attrs["perovstem"] = meta
    elif suffix == ".npz":
        with atomic_write(path, overwrite=overwrite) as fh:
            np.savez_compressed(fh, data=vol, perovstem_meta=np.array(json.dumps(meta)))
    elif suffix == ".vti":
        _save_vti(vol, path, voxel_size_A, overwrite=overwrite)
    else:
        raise FileFormatError(
            f"{str(path)!r}: volumes are written as .mrc, .tif, .zarr, .npz or .vti"
        )
    return path


def _save_vti(vol: np.ndarray, path: Path, voxel_A: float, *, overwrite: bool) -> None:
    # VTK XML ImageData, one point-data array, inline base64 binary with a UInt64 header.
    vtk_types = {
        np.dtype(np.float32): "Float32",
        np.dtype(np.float64): "Float64",
        np.dtype(np.uint8): "UInt8",
        np.dtype(np.int16): "Int16",
        np.dtype(np.uint16): "UInt16",
        np.dtype(np.int32): "Int32",
    }
    if vol.dtype == bool:
        vol = vol.astype(np.uint8)
    if vol.dtype not in vtk_types:
        vol = vol.astype(np.float32)
    nz, ny, nx = vol.shape
    raw = np.ascontiguousarray(vol).astype(vol.dtype.newbyteorder("<")).tobytes()  # x fastest
    payload = base64.b64encode(np.uint64(len(raw)).tobytes() + raw).decode("ascii")
    xml = (
        '<?xml version="1.0"?>\n'
        '<VTKFile type="ImageData" version="1.0" byte_order="LittleEndian" header_type="UInt64">\n'
        f'  <ImageData WholeExtent="0 {nx - 1} 0 {ny - 1} 0 {nz - 1}" Origin="0 0 0" '
        f'Spacing="{voxel_A} {voxel_A} {voxel_A}">\n'
        f'    <Piece Extent="0 {nx - 1} 0 {ny - 1} 0 {nz - 1}">\n'
        '      <PointData Scalars="density">\n'
        f'        <DataArray type="{vtk_types[vol.dtype]}" Name="density" format="binary">'
        f"{payload}</DataArray>\n"
        "      </PointData>\n    </Piece>\n  </ImageData>\n</VTKFile>\n"
    )
    with atomic_write(path, mode="w", overwrite=overwrite) as fh:
        fh.write(xml)


def _read_vti(path: Path) -> tuple[np.ndarray, float]:
    import re
    import xml.etree.ElementTree as ET

    root = ET.parse(path).getroot()
    img = root.find("ImageData")
    ext = [int(v) for v in img.get("WholeExtent").split()]
    spacing = float(img.get("Spacing").split()[0])
    da = root.find(".//DataArray")
    types = {
        "Float32": np.float32,
        "Float64": np.float64,
        "UInt8": np.uint8,
        "Int16": np.int16,
        "UInt16": np.uint16,
        "Int32": np.int32,
    }
    blob = base64.b64decode(re.sub(r"\s", "", da.text))
    n = int(np.frombuffer(blob[:8], dtype="<u8")[0])
    arr = np.frombuffer(blob[8 : 8 + n], dtype=np.dtype(types[da.get("type")]).newbyteorder("<"))
    shape = (ext[5] - ext[4] + 1, ext[3] - ext[2] + 1, ext[1] - ext[0] + 1)
    return arr.reshape(shape).astype(types[da.get("type")]), spacing


def read_volume(
    path: str | os.PathLike, *, voxel_size_A: float | None = None
) -> tuple[np.ndarray, float]:
    """Read a volume written by :func:`save_volume` (or an MRC volume or ImageJ/OME tif stack
    of another program); returns ``(volume, voxel_size_A)``.

    Parameters
    ----------
    path : path-like
    voxel_size_A : float, optional
        Voxel edge, Å: overrides the file's and is required for an MRC volume without one
        (a header voxel of 0 or 1 Å, "not set" for most writers, unless perovstem wrote it).

    Raises
    ------
    CalibrationError
        An MRC volume or tif stack without a voxel size, or with voxels that are not cubes
        (x, y, z sizes differ: facets and volumes assume cubes; resample it), and no
        ``voxel_size_A``.
    """
    path = Path(path)
    if voxel_size_A is not None and not (np.isfinite(voxel_size_A) and voxel_size_A > 0):
        raise ParameterError(f"`voxel_size_A` must be > 0, got {voxel_size_A!r}")
    if not path.exists():
        raise FileFormatError(f"no such volume file: {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix not in (".vti", ".mrc", ".tif", ".tiff", ".zarr", ".npz"):
        raise FileFormatError(f"{str(path)!r}: unsupported volume format {suffix!r}")
    try:
        vol, voxel = _read_volume(path, suffix, given=voxel_size_A is not None)
    except (FileFormatError, CalibrationError):
        raise
    except (OSError, ValueError, KeyError, TypeError, IndexError, zipfile.BadZipFile) as exc:
        # a text file renamed .npz, an image saved by save_image, a cut file ...
        raise FileFormatError(
            f"{str(path)!r}: not a volume written by perovstem "
            f"({type(exc).__name__}: {str(exc)[:120]})"
        ) from None
    if np.ndim(vol) != 3:
        raise FileFormatError(
            f"{str(path)!r}: a volume must be 3-D, got shape {tuple(np.shape(vol))}"
        )
    if voxel_size_A is not None:
        return vol, float(voxel_size_A)
    if voxel is None:
        raise CalibrationError(
            f"{str(path)!r}: no usable voxel size in the file (a tif without a calibration, "
            "or 0 or 1 Å in an MRC header, which most writers leave for 'not set'); give it "
            "in Å (Python: voxel_size_A=; command line: --pixel-size-A)"
        )
    return vol, voxel


def _read_volume(path: Path, suffix: str, *, given: bool = False) -> tuple[np.ndarray, Any]:
    """``(volume, voxel size Å or None)``; ``given``: a voxel size was given (no checks)."""
    if suffix == ".vti":
        return _read_vti(path)
    if suffix == ".mrc":
        import mrcfile

        from perovstem.io._mrc import read_mrc

        rec = read_mrc(path)
        with mrcfile.open(path, mode="r", header_only=True, permissive=True) as m:
            sizes = [float(m.voxel_size.x), float(m.voxel_size.y), float(m.voxel_size.z)]
        ours = _MRC_LABEL in rec["metadata"].get("mrc_labels", [])
        voxel = sizes[0] if ours else rec["pixel_size_A"]
        other = [z for z in sizes[1:] if z > 0]  # 0: not set (taken to be cubes)
        data = rec["data"]
        if (
            not given
            and voxel is not None
            and np.ndim(data) == 3
            and any(abs(z - sizes[0]) > 1e-3 * sizes[0] for z in other)
        ):
            raise _non_cubic(path, sizes)
        return np.asarray(data), voxel
    if suffix in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            shaped = tif.shaped_metadata
            if shaped and "perovstem" in shaped[0]:
                meta = json.loads(shaped[0]["perovstem"])
                return tif.asarray(), _meta_voxel_A(path, meta)
            arr = tif.asarray()
        return arr, _plain_tif_voxel_A(path, given=given)
    if suffix == ".zarr":
        import zarr

        g = zarr.open_group(str(path), mode="r")
        return g["data"][...], _meta_voxel_A(path, dict(g.attrs["perovstem"]))
    if suffix == ".npz":
        with np.load(path) as z:
            meta = json.loads(str(z["perovstem_meta"]))
            if "angles_deg" in z.files:
                meta["angles_deg"] = z["angles_deg"].tolist()
            return z["data"], _meta_voxel_A(path, meta)
    raise AssertionError(suffix)  # pragma: no cover - suffixes checked by read_volume


def _meta_voxel_A(path: Path, meta: dict[str, Any]) -> float:
    """Voxel edge (Å) from perovstem's metadata: a volume's ``voxel_size_A``, or the
    ``pixel_size_A`` of a 3-D stack that ``perovstem convert`` wrote from a volume (e.g. an
    MRC reconstruction: cubic voxels, as the MRC reader takes them).  A tilt series (tilt
    angles recorded) is not a volume."""
    if "voxel_size_A" in meta:
        return float(meta["voxel_size_A"])
    if meta.get("angles_deg") is not None:
        raise FileFormatError(
            f"{str(path)!r}: holds a tilt series (tilt angles recorded), not a volume: "
            "reconstruct it first (perovstem tomo reconstruct)"
        )
    return float(meta["pixel_size_A"])


def _plain_tif_voxel_A(path: Path, *, given: bool) -> float | None:
    """Voxel edge (Å) of a tif stack of another program (ImageJ/Fiji, OME): x and y from its
    calibration, z from ImageJ's ``spacing`` (taken equal to x when absent); None without a
    calibration.  Non-cubic voxels are refused (unless a voxel size is ``given``)."""
    from perovstem.io.read import _tiff_calibration_A, _tiff_header

    tif = _tiff_header(path)
    px, py = _tiff_calibration_A(path, tif) if tif is not None else (None, None)
    if px is None or given:
        return px
    sizes = [px, py if py is not None else px]
    ij = (tif or {}).get("imagej") or {}
    if ij.get("spacing") and px is not None:
        # ImageJ's z spacing is in the unit of x and y: the ratio carries over
        xres = tif["xres"]
        sizes.append(float(ij["spacing"]) * px * xres[0] / xres[1])
    if any(abs(z - px) > 1e-3 * px for z in sizes[1:]):
        raise _non_cubic(path, sizes)
    return px


def _non_cubic(path: Path, sizes: list[float]) -> CalibrationError:
    """The error for a volume file whose voxel sizes (x, y[, z], Å) differ."""
    dims = " × ".join(f"{z:.4g}" for z in sizes)
    return CalibrationError(
        f"{str(path)!r}: voxels of {dims} Å (x, y{', z' if len(sizes) > 2 else ''}) are not "
        "cubes, which the surfaces, facets and volumes assume; resample the volume to cubic "
        "voxels, or give one voxel size (Python: voxel_size_A=; command line: "
        "--pixel-size-A) to read them as cubes"
    )


def save_mesh(
    vertices_A: Any, faces: Any, path: str | os.PathLike, *, overwrite: bool = True
) -> Path:
    """Write a triangle mesh (vertices in Å) as ``.ply`` or ``.stl`` through trimesh."""
    import trimesh

    path = Path(path)
    if path.suffix.lower() not in (".ply", ".stl", ".obj"):
        raise FileFormatError(f"{str(path)!r}: meshes are written as .ply, .stl or .obj")
    v = np.asarray(vertices_A, dtype=float)
    f = np.asarray(faces, dtype=np.int64)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
        raise DataError(f"mesh needs (N,3) vertices and (M,3) faces, got {v.shape} and {f.shape}")
    if not np.all(np.isfinite(v)):
        raise DataError(f"{str(path)!r}: mesh vertices contain non-finite values")
    if f.size and (f.min() < 0 or f.max() >= len(v)):
        raise DataError(
            f"{str(path)!r}: mesh faces index vertices {int(f.min())}…{int(f.max())}, "
            f"but there are {len(v)} vertices"
        )
    mesh = trimesh.Trimesh(vertices=v, faces=f, process=False)
    with atomic_path(path, overwrite=overwrite) as tmp:
        mesh.export(tmp, file_type=path.suffix.lower().lstrip("."))
    return path


def save_json(obj: Any, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Write ``obj`` as pretty JSON (numpy values converted)."""
    with atomic_write(path, mode="w", overwrite=overwrite) as fh:
        # NaN/Infinity are not JSON (RFC 8259): other readers (jq, browsers) refuse the file
        json.dump(_finite_or_null(_json_safe(obj)), fh, indent=2, allow_nan=False)
    return Path(path)


def _finite_or_null(d: Any) -> Any:
    """``d`` with every non-finite float replaced by ``None`` (JSON ``null``)."""
    if isinstance(d, dict):
        return {k: _finite_or_null(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_finite_or_null(v) for v in d]
    if isinstance(d, float) and not np.isfinite(d):
        return None
    return d


def save_figure(
    fig: Any, path: str | os.PathLike, *, dpi: int = 120, overwrite: bool = True
) -> Path:
    """Save a matplotlib figure atomically (format from the suffix)."""
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    return path
