"""``perovstem simulate series``: an in-situ HAADF series of a degrading nanocrystal + truth.

Builds a nanocrystal, runs the degradation kinetic Monte Carlo and images every frame;
writes the series through :func:`perovstem.io.save_image` and the truth tables (drift,
clusters, frames, events) as Parquet/CSV through :func:`perovstem.io.save_table`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from perovstem._limits import check_image_px
from perovstem.cli._common import (
    MAX_DOSE_E_PER_A2,
    MAX_TEMPERATURE_K,
    check_at_most,
    data_stem,
    detector_pair,
    examples,
    flag_names,
)
from perovstem.cli.simulate import CRYSTAL_FLAGS, check_thickness_flag, simulate_app
from perovstem.errors import ParameterError

# truth tables written next to the series (keys of simulate.series.insitu_series' truth)
_TRUTH_TABLES = ("drift", "clusters", "frames", "events")


def _parse_params(items: list[str]):
    from perovstem.simulate.kmc_params import KineticParameters

    fields = {f.name: f.type for f in dataclasses.fields(KineticParameters)}
    kw = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in fields:
            raise ParameterError(
                f"`--param` must be NAME=VALUE with NAME a KineticParameters field "
                f"({', '.join(sorted(fields))}), got {item!r}"
            )
        kind = fields[key]
        try:
            if kind in (bool, "bool"):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                kw[key] = value.lower() in ("true", "1", "yes")
            elif kind in (int, "int"):
                kw[key] = int(value)
            else:
                kw[key] = float(value)
        except ValueError:
            raise ParameterError(f"`--param {key}` has a bad value {value!r}") from None
    return KineticParameters(**kw)


@simulate_app.command(
    "series",
    epilog=examples(
        "perovstem simulate series -o run.zarr --frames 20 --dose-rate-e-per-A2-s 2e3",
    ),
)
def series(
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Series file (.zarr, .npz, .tif, .mrc, .hspy). Missing parent folders are created.",
    ),
    truth_prefix: Path = typer.Option(
        None,
        "--truth",
        help="Prefix of the truth tables: <prefix>_drift|_clusters|_frames|_events.parquet "
        "(default: next to --out).",
    ),
    table_format: str = typer.Option("parquet", "--table-format", help="parquet | csv."),
    edge_A: float = typer.Option(60.0, "--edge-A", help="NC edge length, Å."),
    shape: str = typer.Option("cube", "--shape", help="cube | cuboid | platelet."),
    thickness_A: float = typer.Option(
        None, "--thickness-A", help="Platelet thickness, Å (default 30)."
    ),
    phase: str = typer.Option("cubic", "--phase", help="cubic | orthorhombic."),
    termination: str = typer.Option("CsBr", "--termination", help="CsBr | PbBr2."),
    cd_fraction: float = typer.Option(0.0, "--cd-fraction", help="Cd fraction x on Pb sites."),
    zone_axis: str = typer.Option("001", "--zone-axis", help="001 | 011 | 111."),
    frames: int = typer.Option(20, "--frames", "-n", help="Number of frames."),
    frame_time_s: float = typer.Option(1.0, "--frame-time-s", help="Frame time, s."),
    dose_rate: float = typer.Option(
        5e3,
        "--dose-rate-e-per-A2-s",
        help="Dose rate, e⁻/Å²/s (frame dose = rate × frame time).",
    ),
    temperature_K: float = typer.Option(300.0, "--temperature-K", help="Temperature, K."),
    temperature_end_K: float = typer.Option(
        None, "--temperature-end-K", help="Linear temperature ramp to this value, K."
    ),
    atmosphere: str = typer.Option(
        "vacuum", "--atmosphere", help="vacuum | N2 | Ar | O2 | H2O | air."
    ),
    pressure_Pa: float = typer.Option(None, "--pressure-Pa", help="Gas pressure, Pa."),
    param: list[str] = typer.Option(
        [], "--param", help="Kinetic parameter NAME=VALUE (repeatable), e.g. D_Br_e_per_A2=2e4."
    ),
    pixel_size_A: float = typer.Option(0.5, "--pixel-size-A", help="Pixel size, Å."),
    size: int = typer.Option(
        None, "--size-px", help="Square frame size, px (default: fit the NC)."
    ),
    drift: tuple[float, float] = typer.Option(
        (0.0, 0.0), "--drift-A-per-s", help="Linear drift vx vy, Å/s."
    ),
    jitter_A: float = typer.Option(0.1, "--jitter-A", help="rms random shift per frame, Å."),
    scan_drift: bool = typer.Option(False, "--scan-drift", help="Drift within each frame too."),
    voltage_kV: float = typer.Option(300.0, "--voltage-kV", help="300 or 200 kV."),
    detector_mrad: str = typer.Option(
        "65,200", "--detector-mrad", help="INNER,OUTER annular detector, mrad: 65,200 or 65,131."
    ),
    gain: float = typer.Option(1.0, "--gain", help="Detector counts per electron."),
    offset: float = typer.Option(0.0, "--offset", help="Detector offset, counts."),
    no_noise: bool = typer.Option(False, "--no-noise", help="Noise-free expectation frames."),
    seed: int = typer.Option(None, "--seed", min=0, help="Random seed (reproducible output)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
) -> None:
    """Simulate an in-situ series of a nanocrystal degrading under the beam, with truth tables.

    With a .zarr output the frames are rendered and written one at a time (long series do not
    need to fit in memory).
    """
    import numpy as np

    from perovstem._validation import check_choice
    from perovstem.errors import OutputExistsError
    from perovstem.io import save_image, save_table
    from perovstem.simulate.kmc import degradation_kmc
    from perovstem.simulate.series import insitu_series
    from perovstem.simulate.structures import composition, nanocrystal

    check_choice("--table-format", table_format, ("parquet", "csv"))
    prefix = truth_prefix if truth_prefix is not None else out.with_name(data_stem(out))
    for p in (out, *(Path(f"{prefix}_{n}.{table_format}") for n in _TRUTH_TABLES)):
        if p.exists() and not overwrite:  # the truth tables are outputs too
            raise OutputExistsError(f"{str(p)!r} exists (use --overwrite to replace it)")
    if isinstance(frames, bool) or frames < 1:
        raise ParameterError(f"`--frames` must be >= 1, got {frames!r}")
    from perovstem._validation import check_positive

    check_positive("--temperature-K", temperature_K)
    if temperature_end_K is not None:  # np.linspace(300, inf) made the ramp NaN
        check_positive("--temperature-end-K", temperature_end_K)
    why_t = "beyond any heating holder; CsPbBr3 melts at ~840 K"
    from perovstem.simulate.scs import _check_detector

    detector = _check_detector(detector_pair(detector_mrad))  # before the KMC runs
    check_at_most("--temperature-K", temperature_K, MAX_TEMPERATURE_K, "K", why_t)
    check_at_most("--temperature-end-K", temperature_end_K, MAX_TEMPERATURE_K, "K", why_t)
    check_thickness_flag(thickness_A, shape)
    if dose_rate == 0:
        # (0 wrote a series of empty frames, cumulative dose 0, without a word)
        raise ParameterError(
            "`--dose-rate-e-per-A2-s` must be > 0, got 0: the frames are images made by the "
            "beam, and at 0 e⁻/Å²/s they hold no electrons (for a heating run without the beam, "
            "the Python function perovstem.simulate.degradation_kmc takes a zero dose rate)"
        )
    from perovstem.simulate.haadf import check_detector_response

    with flag_names({"gain": "--gain", "offset": "--offset"}):  # before the KMC, the slow part
        check_detector_response(gain=gain, offset=offset)
    if np.isfinite(dose_rate) and np.isfinite(frame_time_s) and frame_time_s > 0:
        # (a dose rate of 1e17 e⁻/Å²/s ran the kinetic Monte Carlo for ever)
        check_at_most(
            "--dose-rate-e-per-A2-s",
            dose_rate,
            MAX_DOSE_E_PER_A2 / frame_time_s,
            "e⁻/Å²/s",
            f"a frame dose of {MAX_DOSE_E_PER_A2:g} e⁻/Å² at --frame-time-s {frame_time_s:g}",
        )
    if size is not None:
        check_image_px((size, size), name="--size-px", why="the largest simulated frame")
    if size is not None:  # before the kinetic Monte Carlo, the slow part
        from perovstem.simulate.haadf import check_frame_shape

        check_frame_shape((size, size), pixel_size_A, name="--size-px")
        if out.suffix.lower() != ".zarr":  # held in memory whole (a .zarr is streamed)
            from perovstem._limits import check_stack_px

            # (100000 frames of 512² ran the kinetic Monte Carlo for half a minute, then
            # failed for 195 GiB, naming a --bin this command does not have)
            check_stack_px(
                frames,
                (size, size),
                names=("--frames", "--size-px"),
                what="frames",
                fix="write a .zarr (frames streamed to disk one at a time), or use fewer or "
                "smaller frames",
            )
    params = _parse_params(param)
    rng = np.random.default_rng(seed)
    with flag_names(CRYSTAL_FLAGS):
        atoms = nanocrystal(
            edge_A,
            shape=shape,
            phase=phase,
            termination=termination,
            cd_fraction=cd_fraction,
            zone_axis=zone_axis,
            thickness_A=thickness_A,
            rng=rng,
        )
    temps = (
        temperature_K
        if temperature_end_K is None
        else np.linspace(temperature_K, temperature_end_K, frames)
    )
    traj = degradation_kmc(
        atoms,
        n_frames=frames,
        frame_time_s=frame_time_s,
        dose_rate_e_per_A2_s=dose_rate,
        temperature_K=temps,
        atmosphere=atmosphere,
        pressure_Pa=pressure_Pa,
        params=params,
        rng=rng,
    )
    stream = out.suffix.lower() == ".zarr"  # frames rendered and written one at a time
    flags = {
        "pixel_size_A": "--pixel-size-A",
        "shape": "--size-px",
        "drift_A_per_s": "--drift-A-per-s",
    }
    try:
        with flag_names(flags):
            ser, truth = insitu_series(
                traj,
                lazy=stream,
                pixel_size_A=pixel_size_A,
                shape=None if size is None else (size, size),
                drift_A_per_s=drift,
                jitter_A=jitter_A,
                scan_drift=scan_drift,
                voltage_kV=voltage_kV,
                detector_mrad=detector,
                gain=gain,
                offset=offset,
                noise=not no_noise,
                rng=rng,
            )
    except ParameterError as exc:
        carried = float(np.hypot(*drift)) * frame_time_s * frames
        if carried > 0 and "px" in str(exc):
            # (1e6 Å/s blamed --pixel-size-A and the shape, never the drift)
            raise ParameterError(
                f"{exc} (the drift `--drift-A-per-s` carries the crystal {carried:.3g} Å over "
                "the series)"
            ) from None
        raise
    ser.metadata["structure"] = {
        "edge_A": edge_A,
        "shape": shape,
        "thickness_A": thickness_A,
        "phase": phase,
        "termination": termination,
        "cd_fraction": cd_fraction,
        # Cd is placed at random on the B sites: x = 0.1 gave 0.055 on 343 sites
        "cd_fraction_realised": composition(atoms)["cd_fraction"],
        "zone_axis": zone_axis,
        "seed": seed,
    }
    if stream:
        from perovstem.io.series_stream import save_series_streaming

        save_series_streaming(ser, out, overwrite=overwrite)
    else:
        save_image(ser, out, overwrite=overwrite)
    written = []
    for name, df in truth.items():
        df = df.copy()
        if name == "events":  # list column → text for CSV readers
            df["parents"] = [" ".join(map(str, p)) for p in df["parents"]]
        path = Path(f"{prefix}_{name}.{table_format}")
        save_table(df, path, overwrite=True)  # refused above unless --overwrite
        written.append(str(path))
    ft = truth["frames"]
    typer.echo(
        f"series: {out} ({ser.n_frames} frames of {ser.shape[1]}x{ser.shape[2]} px, "
        f"cumulative dose {ft['cumulative_dose_e_per_A2'].iloc[-1]:.3g} e⁻/Å², "
        f"Pb clusters at the end: {int(ft['n_clusters'].iloc[-1])})"
    )
    typer.echo("truth: " + ", ".join(written))
