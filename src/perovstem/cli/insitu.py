"""``perovstem insitu SERIES``: drift, dose, clusters, tracking, kinetics of an in-situ series.

Parses options, calls :func:`perovstem.insitu.analyze_series`, and writes the tables
(``frames, drift, clusters, lineage, events, summary``), figures and a ``summary.json`` into
the output folder through :mod:`perovstem.io`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import typer

from perovstem._limits import check_current_pA
from perovstem._validation import check_positive, check_range
from perovstem.cli._common import (
    MAX_DOSE_E_PER_A2,
    MAX_TEMPERATURE_K,
    check_at_most,
    detector_pair,
    examples,
)
from perovstem.cli.main import app
from perovstem.errors import FileFormatError, OutputExistsError, ParameterError


def _crystal_frames(res: Any) -> Any:
    """The frames table when it holds a crystal area (None in a field without a crystal)."""
    f = res.frames
    return f if "area_A2" in f and f["area_A2"].notna().any() else None


#: figure file stem -> (plot function of perovstem.plot.insitu, its data from the result;
#: None: no such figure for this run); the stems are known before the analysis runs
_FIGURES: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "clusters_vs_dose": ("plot_cluster_kinetics", lambda r: r.frames),
    "drift": ("plot_drift", lambda r: r.drift),
    "lineage": ("plot_lineage", lambda r: r.lineage if len(r.lineage) else None),
    "size_distribution": ("plot_size_distribution", lambda r: r.clusters),
    "crystal_area": ("plot_crystal_area", _crystal_frames),
    "atoms_lost": ("plot_atoms_lost_map", lambda r: r.columns),
}
FIGURE_NAMES = tuple(_FIGURES)


def _figures(res: Any) -> dict[str, Any]:
    """The figures of a run by file name (None where the data for one are missing)."""
    from perovstem.plot import insitu as pl

    figs = {}
    for name, (plot, data) in _FIGURES.items():
        d = data(res)
        figs[name] = None if d is None else getattr(pl, plot)(d)
    return figs


def _skipped_note(res: Any) -> str:
    """The frames the analysis left out and why (a blank, corrupt or zero-dose frame in the
    middle of a series was only a row of the frames table and an index in summary.json)."""
    if not res.skipped:
        return ""
    f = res.frames
    why: dict[str, list[int]] = {}
    for k in sorted(res.skipped):
        r = f.loc[f["frame"] == k, "reason"] if "reason" in f else []
        reason = str(r.iloc[0]) if len(r) and isinstance(r.iloc[0], str) and r.iloc[0] else "?"
        why.setdefault(reason, []).append(int(k))
    parts = [
        f"frame{'s' if len(ks) > 1 else ''} {', '.join(map(str, ks))}: {w}" for w, ks in why.items()
    ]
    n = len(res.skipped)
    return f"{n} of {len(f)} frames skipped ({'; '.join(parts)}); frames table: skipped, reason"


# the options of insitu.prepare_series as this command spells them (in its messages)
_FLAGS = {
    "dose_e_per_A2": "--dose-e-per-A2",
    "current_pA": "--current-pA",
    "dwell_us": "--dwell-us",
    "frame_time_s": "--frame-time-s",
    "conditions": "--conditions",
    "time_offset_s": "--time-offset-s",
    "log_utc_offset_h": "--log-utc-offset-h",
    "temperature_K": "--temperature-K",
    "voltage_kV": "--voltage-kV",
    "detector_mrad": "--detector-mrad",
    "gain": "--gain",
}


def _earlier_outputs(out: Path) -> list[Path]:
    """The files of an earlier ``perovstem insitu`` run in ``out`` (only names it writes)."""
    from perovstem.insitu.analysis import InsituResult

    names = [f"{t}.{ext}" for t in InsituResult.TABLE_NAMES for ext in ("parquet", "csv")]
    names += [f"{f}.png" for f in FIGURE_NAMES] + ["summary.json"]
    return [out / n for n in names if (out / n).is_file()]


@app.command(
    "insitu",
    epilog=examples(
        "perovstem insitu series.emd -o series_insitu",
        "perovstem insitu series.emd --current-pA 20 --dwell-us 5 --conditions T.csv",
        "perovstem insitu stack.tif --dose-e-per-A2 500 --frame-time-s 2 --gain auto",
        "perovstem insitu field.tif --temperature-K 265 -o T265_a",
    ),
)
def insitu(
    series: Path = typer.Argument(
        ...,
        help="In-situ series file (any format perovstem.io.load reads), or a folder of "
        "one file per frame (e.g. a Gatan In-Situ dataset, Hour_*/Minute_*/Second_*).",
    ),
    conditions: Path = typer.Option(
        None, "--conditions", help="Holder log (DENSsolutions, Protochips or CSV) for T/pressure."
    ),
    out: Path = typer.Option(
        None,
        "--out",
        "-o",
        help="Output folder (default: <SERIES>_insitu). Missing parent folders are created.",
    ),
    pixel_size_A: float = typer.Option(None, "--pixel-size-A", help="Override the calibration, Å."),
    gain: str = typer.Option(
        None,
        "--gain",
        help="Detector counts per detected electron (overrides the file's; atom counts scale "
        "with 1/gain), or 'auto': measured from the shot noise of up to 8 frames "
        "(perovstem.atoms.estimate_noise_model; refused when the data cannot identify it).",
    ),
    offset: float = typer.Option(
        None, "--offset", help="Detector counts of no signal (overrides the file's)."
    ),
    current_pA: float = typer.Option(None, "--current-pA", help="Probe current, pA."),
    dwell_us: float = typer.Option(None, "--dwell-us", help="Dwell time per pixel, µs."),
    frame_time_s: float = typer.Option(None, "--frame-time-s", help="Frame time, s."),
    dose: float = typer.Option(
        None, "--dose-e-per-A2", help="Dose per frame, e⁻/Å² (overrides --current-pA)."
    ),
    time_offset_s: float = typer.Option(
        None,
        "--time-offset-s",
        help="Log time of the first frame, s (default: from the file's acquisition time and "
        "the log's start time where both are recorded, else 0).",
    ),
    log_utc_offset_h: float = typer.Option(
        None,
        "--log-utc-offset-h",
        help="UTC offset of the holder PC's clock, h (e.g. 1 for CET): aligns --conditions "
        "by the two clocks (default: the acquisition PC's zone, which DM files record).",
    ),
    temperature_K: float = typer.Option(
        None,
        "--temperature-K",
        help="Specimen temperature of the whole series, K (replaces the file's; a ramp or "
        "steps come from --conditions). Sets the series' condition for the kinetics and "
        "for `perovstem kinetics`.",
    ),
    voltage_kV: float = typer.Option(
        None,
        "--voltage-kV",
        help="Beam energy, kV (200 or 300; replaces the file's high tension): the "
        "cross-section libraries of the Pb⁰ atom counts, the Br loss and --columns are made "
        "at it (a 200 kV series counted at 300 kV reads about twice the Pb⁰).",
    ),
    detector_mrad: str = typer.Option(
        None,
        "--detector-mrad",
        help="INNER,OUTER annular detector, mrad (replaces the file's): the cross-section "
        "libraries are those of 65,200 or 65,131 (another is noted: Pb⁰ counts off by its "
        "scale).",
    ),
    no_register: bool = typer.Option(False, "--no-register", help="Skip drift correction."),
    max_lag: int = typer.Option(3, "--max-lag", help="Frames each frame is registered to."),
    threshold_sigma: float = typer.Option(
        6.0, "--threshold-sigma", help="Cluster detection threshold, noise σ."
    ),
    lattice_A: float = typer.Option(5.87, "--lattice-A", help="Host lattice spacing, Å."),
    table_format: str = typer.Option("parquet", "--table-format", help="parquet | csv."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write PNG figures."),
    ci: str = typer.Option("profile", "--ci", help="Kinetic CIs: profile | bootstrap | wald."),
    columns: bool = typer.Option(
        False,
        "--columns/--no-columns",
        help="Fit every atomic column in every frame and count its atoms by a hidden Markov "
        "model: per-column atoms-lost table (columns, column_counts) and map (needs the dose).",
    ),
    hmm_model: str = typer.Option(
        "loss", "--hmm-model", help="Column-count transitions: loss | free | dose."
    ),
    cd_fraction: float = typer.Option(
        0.0,
        "--cd-fraction",
        help="Cd fraction x of the crystal: Pb-Br column library (--columns) and the "
        "structural template of --br-loss.",
    ),
    br_loss: bool = typer.Option(
        False,
        "--br-loss/--no-br-loss",
        help="Measure the Br loss from the images (total cross-section of every frame mapped "
        "onto a structural KMC template, perovstem.quantify.br_loss_from_images) and fit "
        "D_Br of the exposed-Br hazard for the summary's Br-loss row (table br_loss; "
        "frames gain n_Br_lost_image, n_Br_exposed_image, n_Br_bulk_image). Needs the dose. "
        "Assumes (not checked): CsCd_xPb_1-xBr3 of known x (--cd-fraction) viewed along [001], a "
        "CsBr-terminated "
        "cuboid; the whole crystal and all its Pb0 inside the field of view, vacuum or "
        "support at the frame border; a pristine first frame; a known bulk/surface ratio "
        "--f-bulk.",
    ),
    f_bulk: float = typer.Option(
        0.1,
        "--f-bulk",
        help="Bulk/surface Br desorption ratio f of --br-loss (docs/kmc.md: Br desorption).",
    ),
    termination: str | None = typer.Option(
        None,
        "--termination",
        help="Outer layer of the crystal's {100} facets for --br-loss: CsBr or PbBr2 "
        "(default CsBr, with a note; a CsBr template on PbBr2-terminated crystals reads D_Br "
        "20-30 % high).",
    ),
    scan_correction: bool = typer.Option(
        False,
        "--scan-correction/--no-scan-correction",
        help="Also remove the fast-scan line jitter of every aligned frame (against the mean "
        "of the others); frames gain scan_rms_line_offset_px.",
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace the results of an earlier run in --out (its tables and figures that "
        "this run does not write are removed, so the folder holds one run).",
    ),
) -> None:
    """Analyse an in-situ series (drift, dose, Pb clusters, tracks, kinetics) into a folder.

    Writes the tables frames, drift, clusters, lineage, events and summary, PNG figures and
    summary.json to --out (default: SERIES_insitu next to SERIES).
    """
    from perovstem.atoms.noise import parse_gain
    from perovstem.cli._common import about_file, check_outputs, console
    from perovstem.insitu import analyze_series
    from perovstem.insitu.prepare import prepare_series
    from perovstem.io import load, save_figure, save_json, save_table
    from perovstem.quantify.mechanism import summary_lines

    if hmm_model not in ("loss", "free", "dose"):
        raise ParameterError(f"`--hmm-model` must be loss, free or dose, got {hmm_model!r}")
    if table_format not in ("parquet", "csv"):
        raise ParameterError(f"`--table-format` must be parquet or csv, got {table_format!r}")
    check_range("--cd-fraction", cd_fraction, 0.0, 1.0)
    check_positive("--f-bulk", f_bulk, allow_zero=True)
    # an option of --columns / --br-loss given without them would be silently ignored
    for flag, value, given, needs, on in (
        (
            "--cd-fraction",
            cd_fraction,
            cd_fraction != 0.0,
            "--columns or --br-loss",
            columns or br_loss,
        ),
        ("--hmm-model", hmm_model, hmm_model != "loss", "--columns", columns),
        ("--f-bulk", f_bulk, f_bulk != 0.1, "--br-loss", br_loss),
        ("--termination", termination, termination is not None, "--br-loss", br_loss),
    ):
        if given and not on:
            raise ParameterError(
                f"`{flag}` {value} acts only with {needs}, which was not given: add it, or "
                f"leave `{flag}` out"
            )
    gain = parse_gain(gain, name="--gain")
    # a dose (or current) of 0 was refused only after the series was read, naming the
    # Python API's allow_zero_dose=, which the command line does not have
    for name, value in (("--frame-time-s", frame_time_s), ("--dwell-us", dwell_us)):
        if value is not None:
            check_positive(name, value)
    check_at_most("--dose-e-per-A2", dose, MAX_DOSE_E_PER_A2, "e⁻/Å²", "per frame")
    check_current_pA(current_pA, name="--current-pA")
    for name, value in (("--dose-e-per-A2", dose), ("--current-pA", current_pA)):
        if value == 0:  # (a negative or NaN value is refused by assign_dose, naming the flag)
            raise ParameterError(
                f"`{name}` must be > 0, got {value:g} (every frame would be skipped as "
                "recorded with the beam blanked); give the dose, or leave it out"
            )
    if offset is not None and not np.isfinite(offset):
        raise ParameterError(f"`--offset` must be finite, got {offset}")
    if time_offset_s is not None and not np.isfinite(time_offset_s):
        raise ParameterError(f"`--time-offset-s` must be finite, got {time_offset_s}")
    if log_utc_offset_h is not None:
        if not (np.isfinite(log_utc_offset_h) and -14 <= log_utc_offset_h <= 14):
            raise ParameterError(
                f"`--log-utc-offset-h` must be within -14…14 h, got {log_utc_offset_h}"
            )
        if conditions is None:
            raise ParameterError(
                f"`--log-utc-offset-h` {log_utc_offset_h:g} aligns a holder log: give "
                "--conditions LOG with it (it was ignored)"
            )
        if time_offset_s is not None:
            raise ParameterError(
                f"`--log-utc-offset-h` {log_utc_offset_h:g} and `--time-offset-s` "
                f"{time_offset_s:g} both place the log: give one"
            )
    if temperature_K is not None:
        check_positive("--temperature-K", temperature_K)
        why_t = "beyond any heating holder; CsPbBr3 melts at ~840 K"
        check_at_most("--temperature-K", temperature_K, MAX_TEMPERATURE_K, "K", why_t)
        if conditions is not None:
            raise ParameterError(
                f"`--temperature-K` {temperature_K:g} and `--conditions` {str(conditions)!r} "
                "both give the temperature: give one"
            )
    detector = None if detector_mrad is None else detector_pair(detector_mrad)
    if voltage_kV is not None and voltage_kV not in (200.0, 300.0):
        raise ParameterError(
            f"`--voltage-kV` must be 200 or 300 (the calibrated cross-section libraries), got "
            f"{voltage_kV:g}"
        )
    if not series.exists():
        raise FileFormatError(f"series {str(series)!r} does not exist")
    out = out or series.with_name(series.stem + "_insitu")
    if out.exists() and not out.is_dir():
        # found only when writing, after the whole analysis (a raw FileExistsError)
        raise OutputExistsError(f"`--out` {str(out)!r} is a file; give a folder")
    from perovstem.io._write import check_writable_place

    check_writable_place(out, what="--out", folder=True)
    earlier = _earlier_outputs(out)
    check_outputs(*earlier, overwrite=overwrite)  # before any work: a rerun must not mix runs
    s = load(series, lazy=True, pixel_size=pixel_size_A)
    from perovstem._data import Series, voltage_kV_of

    if not isinstance(s, Series):
        raise FileFormatError(
            f"{str(series)!r} holds one {type(s).__name__.lower()}, not an in-situ series (T, M, N)"
        )
    notes = []
    # (a gain or offset still missing is said by analyze_series, with the estimate)
    s, said = prepare_series(
        s,
        dose_e_per_A2=dose,
        current_pA=current_pA,
        dwell_us=dwell_us,
        frame_time_s=frame_time_s,
        conditions=conditions,
        time_offset_s=time_offset_s,
        log_utc_offset_h=log_utc_offset_h,
        temperature_K=temperature_K,
        voltage_kV=voltage_kV,
        detector_mrad=detector,
        gain=gain,
        offset=offset,
        what=repr(str(series)),
        names=_FLAGS,
    )
    notes += said
    with about_file(series):  # "every frame of the series is unusable": which series
        res = analyze_series(
            s,
            register=not no_register,
            max_lag=max_lag,
            detect={"threshold_sigma": threshold_sigma},
            lattice_A=lattice_A,
            ci=ci,
            columns=columns,
            column_options={"hmm_model": hmm_model, "cd_fraction": cd_fraction},
            br_loss=br_loss,
            br_loss_options={
                "f_bulk": f_bulk,
                "cd_fraction": cd_fraction,
                **({} if termination is None else {"termination": termination}),
            },
            scan_correction=scan_correction,
        )
    notes += res.notes
    skipped = _skipped_note(res)
    if skipped:
        notes.append(skipped)
    out.mkdir(parents=True, exist_ok=True)
    # summary.json is written last and marks a finished run: an earlier run's goes first,
    # so that a rerun killed while writing leaves no summary beside its new tables
    (out / "summary.json").unlink(missing_ok=True)
    written = []
    for name, df in res.tables().items():
        df = df.copy()
        for c in df.columns:  # list-valued columns (parents) as text for portability
            if df[c].dtype == object and df[c].map(lambda v: isinstance(v, list)).any():
                df[c] = df[c].map(lambda v: ",".join(map(str, v)) if isinstance(v, list) else v)
        written.append(save_table(df, out / f"{name}.{table_format}"))
    if plots:
        for name, ax in _figures(res).items():
            if ax is not None:
                written.append(save_figure(ax.figure, out / f"{name}.png"))
    summary = {
        "series": str(series),
        "n_frames": s.n_frames,
        "pixel_size_A": s.pixel_size_A,
        # the beam energy of the cross-section libraries (None: not recorded, 300 kV used)
        "voltage_kV": voltage_kV_of(s.metadata),
        "skipped_frames": res.skipped,
        # how frames.dose_rate_e_per_A2_s was computed (the dose rate sets the conditions)
        "dose_rate_rule": s.dose_rate_rule,
        "drift_residual_rms_px": res.drift.attrs.get("residual_rms_px"),
        # host column σ (probe and column, Å) of the first usable frame: the imaging
        # on-crystal cluster detection was validated for is 0.38 Å at 0.4-0.5 Å/px
        "column_sigma_A": res.frames.attrs.get("column_sigma_A"),
        # the holder log's time of the series' t = 0 (given, from the clocks, or 0)
        "conditions_time_offset_s": s.metadata.get("conditions_time_offset_s"),
        "notes": notes,
        # each line with its condition where the series spans several (e.g. a holder log)
        "mechanisms": summary_lines(res.summary),
    }
    if res.br_loss is not None:
        b = res.br_loss
        summary["br_loss_from_images"] = {
            "D_Br_e_per_A2": b.D_Br_e_per_A2,
            "ci_low": b.ci_low,
            "ci_high": b.ci_high,
            "level": b.level,
            "n_Br_lost": b.n_lost,
            "f_bulk": b.f_bulk,
            "frames_used": int(b.info.get("n_frames_used", len(b.frames))),
            "cells": list(b.info.get("cells", ())),
        }
    if scan_correction:
        summary["scan_correction"] = True
    if res.columns is not None:
        c = res.columns
        summary["atoms_lost"] = {
            str(t): {"columns": int(len(g)), "atoms_lost": int(g["atoms_lost"].sum())}
            for t, g in c.groupby("type")
        }
        summary["atoms_lost_hmm_model"] = hmm_model
    written.append(save_json(summary, out / "summary.json"))
    kept = {Path(w).resolve() for w in written}
    for p in earlier:  # results of the earlier run that this run did not replace
        if p.resolve() not in kept:
            p.unlink(missing_ok=True)
    for line in summary["mechanisms"]:
        console.print(line)
    for n in notes:
        console.print(f"note: {n}")
    console.print(f"wrote {len(written)} files to {out}")
