"""``perovstem info`` and ``perovstem convert``."""

from __future__ import annotations

from pathlib import Path

import typer

from perovstem.cli._common import examples
from perovstem.cli.main import app


def describe(obj) -> list[tuple[str, str]]:
    """Rows (field, value) describing a loaded Image/Series/TiltSeries."""
    import numpy as np

    from perovstem._data import Image, Series, TiltSeries
    from perovstem.io.read import radian_angles_note
    from perovstem.io.write import projection_dose_e_per_A2

    rows = [
        ("type", type(obj).__name__),
        ("shape", " × ".join(map(str, obj.shape))),
        ("dtype", str(obj.data.dtype)),
        ("pixel size", f"{obj.pixel_size_A:.6g} Å"),
    ]
    if isinstance(obj, Image):
        ny, nx = obj.shape
        rows.append(
            (
                "field of view",
                f"{nx * obj.pixel_size_A / 10:.4g} × {ny * obj.pixel_size_A / 10:.4g} nm",
            )
        )
        if obj.dose_e_per_A2 is not None:
            rows.append(("dose", f"{obj.dose_e_per_A2:.4g} e⁻/Å²"))
    if isinstance(obj, Series):
        md = obj.metadata
        if "frame_files" in md:  # a folder of frame files
            rows.append(("files", f"{len(md['frame_files'])}, {md.get('format', 'folder')}"))
        if obj.time_s is not None:
            rows.append(("time", f"{obj.time_s[0]:.4g} … {obj.time_s[-1]:.4g} s"))
            if md.get("time_source"):
                rows.append(("time from", str(md["time_source"])))
        elif md.get("time_note"):
            rows.append(("time", str(md["time_note"])))
        if md.get("frames_differ"):  # not kept for the series: the files disagree
            rows.append(("differs by frame", ", ".join(map(str, md["frames_differ"]))))
        if obj.dose_e_per_A2 is not None:
            rows.append(("cumulative dose", f"{obj.cumulative_dose_e_per_A2[-1]:.4g} e⁻/Å²"))
        if obj.temperature_K is not None:
            rows.append(
                (
                    "temperature",
                    f"{np.nanmin(obj.temperature_K):.4g} … {np.nanmax(obj.temperature_K):.4g} K",
                )
            )
        if obj.pressure_Pa is not None:
            rows.append(
                (
                    "pressure",
                    f"{np.nanmin(obj.pressure_Pa):.4g} … {np.nanmax(obj.pressure_Pa):.4g} Pa",
                )
            )
        if obj.gas:
            rows.append(("gas", obj.gas))
    if isinstance(obj, TiltSeries):
        a = obj.angles_deg
        srt = np.sort(a)
        d = np.diff(srt) if a.size > 1 else np.zeros(1)
        step = float(np.median(d))
        if a.size > 2 and d.max() > 1.5 * max(step, 1e-9):
            # non-uniform steps or a missing range: the median step alone hides the gap
            i = int(np.argmax(d))
            steps = (
                f"steps {d.min():.3g}–{d.max():.3g}°, largest gap {srt[i]:.4g} … {srt[i + 1]:.4g}°"
            )
        else:
            steps = f"step {step:.3g}°"
        radians = radian_angles_note(a, "")
        rows.append(
            (
                "tilt angles",
                f"{a.min():.4g} … {a.max():.4g}° ({a.size}, {steps})"
                + (" — radians? read as degrees" if radians else ""),
            )
        )
        applied = obj.metadata.get("tilt_axis_applied_deg")
        rows.append(
            (
                "tilt axis",
                f"{obj.tilt_axis_deg:.4g}°"
                + (
                    f" (the aligning program turned the data by {float(applied):.4g}° to put "
                    "it there)"
                    if applied is not None and float(applied) != 0.0
                    else ""
                ),
            )
        )
        if obj.shifts_px is not None:
            rows.append(("shifts", f"stored, max |shift| {np.abs(obj.shifts_px).max():.3g} px"))
        dose = projection_dose_e_per_A2(obj)
        if dose is not None:
            rows.append(
                (
                    "dose",
                    f"{dose.sum():.4g} e⁻/Å² in all ({dose.min():.4g} … {dose.max():.4g} per "
                    "projection)",
                )
            )
    md = obj.metadata
    title = (md.get("original") or {}).get("General", {}).get("title")
    if title:
        rows.append(("signal", str(title)))
    if md.get("acquisition_start_utc"):  # to align a holder log (perovstem insitu)
        start = str(md["acquisition_start_utc"]).replace("T", " ").replace("+00:00", " UTC")
        zone = str(md.get("acquisition_time_zone") or "")
        if zone.startswith("UTC") and md.get("acquisition_start"):  # the acquisition PC's
            local = str(md["acquisition_start"]).partition("T")[2][:8]
            start += f" ({local} local, {md['acquisition_time_zone']})"
        rows.append(("acquired", start))
    # where the dose comes from: I·t_dwell/e/px², each factor from a named metadata field
    for key, label, unit in (
        ("beam_current_A", "beam current", "A"),
        ("dwell_time_s", "dwell", "s"),
    ):
        if key in md:
            src = md.get(f"{key}_source")
            rows.append((label, f"{md[key]:.4g} {unit}" + (f" ({src})" if src else "")))
    if md.get("semiangle_mrad") is not None:
        rows.append(("probe semi-angle", f"{float(md['semiangle_mrad']):.4g} mrad"))
    if md.get("detector_mrad") is not None:
        inner, outer = (float(v) for v in md["detector_mrad"])
        rows.append(("detector", f"{inner:.4g}–{outer:.4g} mrad"))
    for key, label in (("high_tension_kV", "high tension"), ("magnification", "magnification")):
        if key in md:
            rows.append((label, f"{md[key]:.6g}" + (" kV" if key == "high_tension_kV" else "")))
    # the detector's gain and offset set every normalised cross-section and Pb⁰ count; a
    # file without them is said, as the commands assume 1 and 0
    det = [
        f"{name} {float(md[name]):.4g}" + (" counts/e⁻" if name == "gain" else " counts")
        for name in ("gain", "offset")
        if md.get(name) is not None
    ]
    if md.get("counts_per_electron") is not None:
        det.append(f"SerialEM CountsPerElectron {float(md['counts_per_electron']):.4g}")
    rows.append(("detector gain", ", ".join(det) if det else "not recorded (assumed 1, offset 0)"))
    return rows


@app.command(
    epilog=examples(
        "perovstem info tilt_series.mrc",
        "perovstem info raw_stack.tif --pixel-size-A 0.21",
    ),
)
def info(
    file: Path = typer.Argument(
        ..., help="Image, series or tilt-series file (or a holder log or table)."
    ),
    pixel_size: float = typer.Option(
        None,
        "--pixel-size-A",
        help="Pixel size in Å (for a file without one; replaces the file's with a warning).",
    ),
    signal: str = typer.Option(
        None,
        "--signal",
        help="Title of the image to read from a file with several detectors (e.g. DF4-A).",
    ),
) -> None:
    """Show shape, dtype, calibration, dose, conditions and tilt angles of FILE (writes nothing).

    A holder log (.log, .dat, .csv, .txt) shows its time span, its start on the holder
    PC's clock and its channels; another table (.csv, .parquet) its columns.
    """
    from rich.table import Table

    from perovstem.cli._common import console
    from perovstem.errors import CalibrationError
    from perovstem.io import load

    if Path(file).suffix.lower() in _TEXT_SUFFIXES and Path(file).is_file():
        console.print(str(file))
        table = Table(show_header=False)
        for k, v in _describe_text_file(Path(file)):
            table.add_row(k, v)
        console.print(table)
        return
    try:
        obj = load(file, pixel_size=pixel_size, lazy=True, signal=signal)
        missing = None
    except CalibrationError as e:
        if pixel_size is not None:
            raise
        # what the file holds is still worth showing (that is what info is for); the error
        # follows, and the exit status stays that of the error
        from perovstem.io.read import quietly_replacing_pixel_size

        # (its stand-in 1 Å is no size the user gave: not "the pixel size given replaces")
        with quietly_replacing_pixel_size():
            obj, missing = load(file, pixel_size=1.0, lazy=True, signal=signal), e
    console.print(str(file))
    table = Table(show_header=False)
    for k, v in describe(obj):
        if missing is not None and k == "field of view":
            continue
        table.add_row(
            k, "none usable in the file" if missing is not None and k == "pixel size" else v
        )
    console.print(table)
    if missing is not None:
        raise missing


_TEXT_SUFFIXES = (".log", ".dat", ".csv", ".txt", ".parquet")


def _describe_text_file(path: Path) -> list[tuple[str, str]]:
    """Rows of ``perovstem info`` for a holder log or, failing that, a table."""
    import numpy as np

    from perovstem.errors import FileFormatError
    from perovstem.io import read_table
    from perovstem.io.holder_logs import read_holder_log

    why = None
    if path.suffix.lower() != ".parquet":
        try:
            log = read_holder_log(path)
        except FileFormatError as exc:
            why = str(exc)
        else:
            t = log["time_s"].to_numpy(float)
            rows = [
                ("type", f"holder log ({log.attrs.get('reader', '?')})"),
                ("samples", f"{len(log)}, {t[0]:.4g} … {t[-1]:.4g} s"),
            ]
            if log.attrs.get("t0_time"):  # to align it with a series (perovstem insitu)
                import pandas as pd

                t0 = pd.Timestamp(log.attrs["t0_time"]).round("ms").isoformat()
                rows.append(("time 0 at", f"{t0} (holder PC's clock)"))
            for c in log.columns:
                if c != "time_s" and np.issubdtype(log[c].dtype, np.number):
                    v = log[c].to_numpy(float)
                    rows.append((c, f"{np.nanmin(v):.6g} … {np.nanmax(v):.6g}"))
            return rows
    if path.suffix.lower() not in (".csv", ".parquet"):
        raise FileFormatError(why or f"{str(path)!r}: not a holder log")
    df = read_table(path)
    rows = [("type", "table"), ("rows", str(len(df))), ("columns", ", ".join(map(str, df.columns)))]
    return rows


@app.command(
    epilog=examples(
        "perovstem convert image.dm4 image.tif",
        "perovstem convert stack.tif stack.zarr --pixel-size-A 0.3",
    ),
)
def convert(
    src: Path = typer.Argument(..., help="Input file."),
    dst: Path = typer.Argument(..., help="Output file (.npz, .zarr, .tif, .mrc, .hspy)."),
    pixel_size: float = typer.Option(
        None,
        "--pixel-size-A",
        help="Pixel size in Å (for an input without one; replaces the input's with a warning).",
    ),
    signal: str = typer.Option(
        None,
        "--signal",
        help="Title of the image to read from a file with several detectors (e.g. DF4-A).",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace DST if it exists."),
) -> None:
    """Convert SRC to DST (.npz, .zarr, .tif, .mrc, .hspy) keeping the calibration; never SRC."""
    from perovstem.errors import OutputExistsError
    from perovstem.io import load, save_image

    if dst.resolve() == src.resolve():
        raise OutputExistsError(f"refusing to overwrite the input {str(src)!r}")
    obj = load(src, pixel_size=pixel_size, signal=signal)
    save_image(obj, dst, overwrite=overwrite)
    typer.echo(f"wrote {dst}")
