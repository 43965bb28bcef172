"""``perovstem tomo align|reconstruct|facets`` and ``perovstem simulate tilt``.

Commands only parse arguments, call :mod:`perovstem.tomo` / :mod:`perovstem.simulate`, and
write through :mod:`perovstem.io`.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import typer

from perovstem._validation import check_int, check_positive
from perovstem.cli._common import (
    MAX_COUNTS_PER_A,
    MAX_CUMULATIVE_DOSE_E_PER_A2,
    check_at_most,
    check_image_px,
    check_outputs,
    check_stack_px,
    data_stem,
    examples,
    flag_names,
    print_warnings,
)
from perovstem.cli.main import app
from perovstem.errors import ParameterError
from perovstem.io.write import IMAGE_SUFFIXES, MESH_SUFFIXES, TABLE_SUFFIXES, VOLUME_SUFFIXES

tomo_app = typer.Typer(
    name="tomo",
    help="Electron tomography: align, reconstruct, facets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(tomo_app, name="tomo")


_PIXEL_SIZE_HELP = "Pixel size in Å (override; needed when the file has none)."
_SIGMA_HELP = (
    "Smoothing before meshing, voxels (default: from the volume's noise, "
    "perovstem.tomo.mesh_sigma_px; 1 for all but noisy volumes)."
)


def _load_tilt(
    path: Path,
    pixel_size_A: float | None = None,
    volume_option: str = "",
    *,
    axis_along_x: bool = False,
    later: list[str] | None = None,
):
    """The tilt series of ``path``; ``axis_along_x``: refused (naming `tomo align`) when its
    tilt axis is not along the image x, as the reconstruction needs.  ``later`` receives the
    warning on a series without an alignment record, for the command to give once its
    other checks have passed (an error is then the only line)."""
    from perovstem._data import TiltSeries
    from perovstem.io import load

    obj = load(path, pixel_size=pixel_size_A)
    if not isinstance(obj, TiltSeries):
        hint = ""
        if volume_option and getattr(obj, "data", None) is not None and obj.data.ndim == 3:
            hint = f"; a reconstructed volume? give {volume_option}"
        found = "no tilt angles found"
        dropped = (getattr(obj, "metadata", None) or {}).get("dropped_tilt_angles")
        if dropped:  # e.g. a SerialEM frame series at one stage tilt (angles ≈ 0)
            found = dropped
        raise ParameterError(
            f"{str(path)!r} is not a tilt series ({found}; add a .rawtlt side file{hint})"
        )
    import numpy as np

    lo, hi = float(np.min(obj.data)), float(np.max(obj.data))
    # (a single direction is refused by the reconstruction itself, saying so)
    directions = np.unique(np.round(np.asarray(obj.angles_deg, float), 6)).size
    if lo == hi and directions > 1:  # reconstruct / facets wrote an empty volume silently
        from perovstem._validation import warn

        warn(
            f"{str(path)!r}: every pixel of every projection is {lo:g}: a constant tilt "
            "series holds no object (a blank or saturated acquisition?); the volume and "
            "anything measured on it are featureless"
        )
    from perovstem.io.read import radian_angles_note

    radians = radian_angles_note(obj.angles_deg, repr(str(path)))
    notes = [radians] if radians else []
    axis = float(obj.tilt_axis_deg)
    aligned = (
        obj.shifts_px is not None
        or "alignment" in obj.metadata
        or obj.metadata.get("tilt_axis_applied_deg") is not None
    )
    if axis_along_x and not aligned and abs(axis) <= 1e-6:
        # a raw series went through reconstruct and facets without a word (drift 3 px:
        # surface 2.5x the truth, {100} 31 % for 69 %)
        notes.append(
            f"{str(path)!r} records no alignment (no shifts, no applied axis): if it was not "
            "aligned (perovstem tomo align, or another program), drift between its "
            "projections and a tilted axis blur the volume and bias its facets"
        )
    if axis_along_x and abs(axis) > 1e-6:
        # the reconstruction's own refusal named a Python function
        raise ParameterError(
            f"{str(path)!r}: its tilt axis is at {axis:.4g}° (from the file), the "
            "reconstruction needs it along the image x: run `perovstem tomo align` on it "
            f"first (it rotates the series; `--tilt-axis {axis:.4g}` keeps this axis)"
        )
    if later is None:
        _warn_later(notes)
    else:
        later.extend(notes)
    return obj


def _warn_later(texts: list[str]) -> None:
    """Give the warnings :func:`_load_tilt` kept for after the command's checks."""
    from perovstem._validation import warn

    for text in texts:
        warn(text)


def _parse_axis(value: str) -> bool | float | str:
    v = value.strip().lower()
    if v == "auto":
        return True
    if v == "com":
        return "com"
    if v == "search":
        return "search"
    if v in ("none", "off", "0"):
        return False
    try:
        return float(v)
    except ValueError:
        raise ParameterError(
            f"`--tilt-axis` must be auto, com, search, none or an angle in degrees, got {value!r}"
        ) from None


@tomo_app.command(
    "align",
    epilog=examples(
        "perovstem tomo align ts.npz -o aligned.npz",
    ),
)
def align_cmd(
    tiltseries: Path = typer.Argument(
        ..., help="Raw tilt series (.mrc + angles, .hspy, .npz ...)."
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Aligned tilt series (.npz, .mrc, .hspy ...). Missing parent folders are created.",
    ),
    shifts: Path = typer.Option(
        None, "--shifts", help="Shift table (.csv/.parquet; default: <OUT>_shifts.csv)."
    ),
    tilt_axis: str = typer.Option(
        "auto", "--tilt-axis", help="auto (reprojection criterion) | com | search | none | <deg>."
    ),
    matching_iter: int = typer.Option(
        3, "--matching-iter", help="Projection-matching iterations (0: no projection matching)."
    ),
    axis_refine: int = typer.Option(
        6,
        "--axis-refine",
        help="At most this many rounds of alternating shift/axis refinement (auto axis; "
        "stops when the axis moves < 0.25°).",
    ),
    no_xcorr: bool = typer.Option(False, "--no-xcorr", help="Skip cross-correlation."),
    no_com: bool = typer.Option(False, "--no-com", help="Skip centre-of-mass centring."),
    pixel_size_A: float = typer.Option(None, "--pixel-size-A", help=_PIXEL_SIZE_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
) -> None:
    """Align a tilt series (cross-correlation, tilt axis, projection matching); writes it."""
    from perovstem.io import save_image, save_table
    from perovstem.tomo import align, apply_alignment, preprocess

    shifts = shifts or out.with_name(data_stem(out) + "_shifts.csv")
    check_outputs(
        out,
        shifts,
        overwrite=overwrite,
        # (a --shifts .xlsx was refused after the whole alignment, beside the written series)
        suffixes={"--out": (IMAGE_SUFFIXES, out), "--shifts": (TABLE_SUFFIXES, shifts)},
    )
    later: list[str] = []
    ts = _load_tilt(tiltseries, pixel_size_A, later=later)
    al = align(
        ts,
        xcorr=not no_xcorr,
        com=not no_com,
        tilt_axis=_parse_axis(tilt_axis),
        matching_iter=matching_iter,
        axis_refine=axis_refine,
    )
    _warn_later(later)
    aligned = apply_alignment(ts.replace(data=preprocess(ts.data)), al)
    save_image(aligned, out, overwrite=overwrite)
    table = al.to_frame(ts.angles_deg)
    save_table(table, shifts, overwrite=overwrite)
    # without projection matching there is no re-projection residual ("residual nan")
    fit = (
        f"residual {al.residual:.4f}"
        if matching_iter > 0
        else "no projection matching (--matching-iter 0)"
    )
    err = "" if not math.isfinite(al.tilt_axis_err_deg) else f" ± {al.tilt_axis_err_deg:.2f}°"
    typer.echo(
        f"aligned {ts.n_angles} projections: tilt axis {al.tilt_axis_deg:.2f}°{err}, "
        f"max |shift| {abs(al.shifts_px).max():.1f} px, {fit} → {out}"
    )


@tomo_app.command(
    "reconstruct",
    epilog=examples(
        "perovstem tomo reconstruct aligned.npz -o vol.mrc --method sirt --n-iter 100",
    ),
)
def reconstruct_cmd(
    tiltseries: Path = typer.Argument(..., help="Aligned tilt series (axis along x)."),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Volume (.mrc, .tif, .zarr, .vti, .npz). Missing parent folders are created.",
    ),
    method: str = typer.Option("sirt", "--method", "-m", help="fbp|wbp|sirt|sart|cgls|tv|dart."),
    n_iter: int = typer.Option(None, "--n-iter", help="Iterations (algorithm default if unset)."),
    tv_weight: float = typer.Option(
        None, "--tv-weight", help="TV strength (method tv; default 0.5)."
    ),
    thickness_px: int = typer.Option(
        None, "--thickness-px", help="Volume thickness nz, px (default: the projection height)."
    ),
    backend: str = typer.Option(
        "numba", "--backend", help="numba | astra | cupy (GPU, sirt only)."
    ),
    no_nonneg: bool = typer.Option(False, "--no-nonneg", help="Allow negative densities."),
    bin_factor: int = typer.Option(1, "--bin", help="Bin projections N×N before reconstructing."),
    pixel_size_A: float = typer.Option(None, "--pixel-size-A", help=_PIXEL_SIZE_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
) -> None:
    """Reconstruct a volume from an aligned tilt series (FBP, SIRT, TV, DART ...); writes it."""
    from perovstem.io import save_volume
    from perovstem.tomo import bin_tilt_series, reconstruct

    if n_iter is not None and method in ("fbp", "wbp"):
        raise ParameterError(f"--n-iter does not apply to --method {method} (not iterative)")
    if tv_weight is not None:
        if method != "tv":
            raise ParameterError(
                f"`--tv-weight` {tv_weight} applies to --method tv only, got --method {method}"
            )
        check_positive("--tv-weight", tv_weight, allow_zero=True)
    # (-o vol.xyz was refused after the whole reconstruction)
    check_outputs(out, overwrite=overwrite, suffixes={"--out": (VOLUME_SUFFIXES, out)})
    later: list[str] = []
    ts = bin_tilt_series(
        _load_tilt(tiltseries, pixel_size_A, axis_along_x=True, later=later), bin_factor
    )
    _warn_later(later)
    kw: dict = {"thickness_px": thickness_px}
    if n_iter is not None and method not in ("fbp", "wbp"):
        kw["n_iter"] = n_iter
    if method == "tv":
        kw["tv_weight"] = 0.5 if tv_weight is None else tv_weight
    if method in ("sirt", "sart", "tv"):
        kw["nonneg"] = not no_nonneg
    rec = reconstruct(ts, method=method, backend=backend, **kw)
    save_volume(
        rec.volume,
        out,
        voxel_size_A=rec.voxel_size_A,
        metadata={"method": rec.method, "n_iter": rec.n_iter, "source": str(tiltseries)},
        overwrite=overwrite,
    )
    typer.echo(f"{rec.method}: {rec.n_iter} iterations, volume {rec.volume.shape} → {out}")


@tomo_app.command(
    "facets",
    epilog=examples(
        "perovstem tomo facets aligned.npz -o facets.csv --mesh nc.ply",
        "perovstem tomo facets vol.mrc --volume --tilt-range-deg 70 -o facets_vol.csv",
    ),
)
def facets_cmd(
    source: Path = typer.Argument(..., help="Aligned tilt series, or a volume with --volume."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Facet table (.csv/.parquet). Missing parent folders are created."
    ),
    volume: bool = typer.Option(False, "--volume", help="SOURCE is a reconstructed volume."),
    tilt_range_deg: float = typer.Option(
        None, "--tilt-range-deg", help="Max |tilt| of the series, ° (with --volume)."
    ),
    method: str = typer.Option("sirt", "--method", "-m", help="Reconstruction method."),
    mesh: Path = typer.Option(None, "--mesh", help="Also write the mesh (.ply/.stl)."),
    tolerance_deg: float = typer.Option(10.0, "--tolerance-deg", help="Facet tolerance, °."),
    facet_method: str = typer.Option(
        "normals",
        "--facet-method",
        help="normals (mesh face areas; biased low, see --calibrate) | polyhedron "
        "(low-index polyhedron from the support distances; convex crystals only).",
    ),
    sigma_px: float = typer.Option(None, "--sigma-px", help=_SIGMA_HELP),
    calibrate: int = typer.Option(
        0, "--calibrate", help="Phantoms for bias calibration (0: none)."
    ),
    seed: int = typer.Option(None, "--seed", min=0, help="Random seed of the calibration."),
    pixel_size_A: float = typer.Option(None, "--pixel-size-A", help=_PIXEL_SIZE_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
) -> None:
    """Facet fractions ({100}/{110}/{111}/other) of a tilt series or volume; writes a table."""
    import numpy as np

    from perovstem.io import read_volume, save_mesh, save_table
    from perovstem.tomo import (
        METHODS,
        calibrate_facets,
        estimate_orientation,
        facet_fractions,
        mesh_sigma_px,
        reconstruct,
        surface_mesh,
        volume_noise,
    )
    from perovstem.tomo.facets import ROUGH_FACETS_NOISE

    # (--mesh ff.xyz was refused after the facet table and its .json were written)
    check_outputs(
        out,
        mesh,
        overwrite=overwrite,
        suffixes={"--out": (TABLE_SUFFIXES, out), "--mesh": (MESH_SUFFIXES, mesh)},
    )
    if facet_method not in ("normals", "polyhedron"):
        raise ParameterError(
            f"`--facet-method` must be 'normals' or 'polyhedron', got {facet_method!r}"
        )
    # every option checked before the (slow) reconstruction and calibration
    if not volume and method not in METHODS:
        raise ParameterError(f"`--method` must be one of {sorted(METHODS)}, got {method!r}")
    if not 0 < tolerance_deg < 45:  # NaN fails too
        raise ParameterError(f"`--tolerance-deg` must be in (0, 45), got {tolerance_deg}")
    if sigma_px is not None:
        check_positive("--sigma-px", sigma_px, allow_zero=True)
    check_int("--calibrate", calibrate, 0)
    if tilt_range_deg is not None and not volume:
        raise ParameterError(
            f"`--tilt-range-deg` {tilt_range_deg} is for --volume only (a tilt series' own "
            "angles give its range): leave it out"
        )
    if tilt_range_deg is not None and not 0.0 < tilt_range_deg <= 90.0:
        raise ParameterError(f"`--tilt-range-deg` must be in (0, 90], got {tilt_range_deg}")
    if facet_method == "polyhedron" and calibrate:
        raise ParameterError("`--calibrate` corrects the normals method; drop it with polyhedron")
    if volume:
        vol, voxel = read_volume(source, voxel_size_A=pixel_size_A)
        angles = None
        if calibrate and tilt_range_deg is None:
            raise ParameterError("`--calibrate` with `--volume` needs `--tilt-range-deg`")
        if tilt_range_deg is not None:  # checked above: NaN or 1e30 made a huge arange
            angles = np.arange(-tilt_range_deg, tilt_range_deg + 1e-9, 2.0)
    else:
        later: list[str] = []
        ts = _load_tilt(
            source, pixel_size_A, volume_option="--volume", axis_along_x=True, later=later
        )
        rec = reconstruct(ts, method=method)
        _warn_later(later)
        vol, voxel = rec.volume, rec.voxel_size_A
        angles = ts.angles_deg
        tilt_range_deg = float(np.max(np.abs(angles)))
    data_noise = volume_noise(vol)
    sigma_auto = sigma_px is None
    if sigma_auto:  # noisier volumes need more smoothing before meshing
        sigma_px = mesh_sigma_px(noise=data_noise)
    m = surface_mesh(vol, voxel_size_A=voxel, sigma_px=sigma_px)
    rot = estimate_orientation(m)
    cal = None
    if calibrate:
        cal = calibrate_facets(
            angles,
            orientation=rot,
            method=method,
            n_phantoms=calibrate,
            shape=vol.shape[1:],
            pixel_size_A=voxel,
            edge_A=1.05 * m.volume_A3 ** (1.0 / 3.0),  # same size as the measured NC
            tolerance_deg=tolerance_deg,
            sigma_px=sigma_px,
            rng=seed,
        )
    df = facet_fractions(
        m,
        orientation=rot,
        tolerance_deg=tolerance_deg,
        tilt_range_deg=tilt_range_deg,
        calibration=cal,
        method=facet_method,
    )
    df.attrs.update(
        volume_A3=m.volume_A3,
        surface_A2=m.area_A2,
        source=str(source),
        volume_noise=data_noise,
        sigma_px=float(sigma_px),
        sigma_px_from_noise=sigma_auto,
    )
    warn_noise = None
    if cal is None and data_noise > ROUGH_FACETS_NOISE:
        warn_noise = (
            f"WARNING: a noisy volume (relative noise {data_noise:.3g}, "
            "perovstem.tomo.volume_noise): on simulated crystals this noisy the facet "
            "fractions were off by up to 0.25 with the polyhedron method and 'other' took "
            f"about half of the surface with the normals method (this run: {facet_method}); "
            "read them as rough"
        )
    if cal is not None:
        # the phantoms' bias holds for data as noisy as they are; noisier data are more biased
        cal_noise = float(cal.settings.get("volume_noise", np.nan))
        df.attrs.update(calibration_volume_noise=cal_noise)
        if np.isfinite(data_noise) and np.isfinite(cal_noise) and data_noise > 1.5 * cal_noise:
            warn_noise = (
                f"WARNING: the volume is noisier than the calibration phantoms (relative noise "
                f"{data_noise:.3g} against {cal_noise:.3g}, perovstem.tomo.volume_noise): the "
                "calibrated fractions are still biased (towards 'other') and their errors too "
                "small; at 0.05 counts/Å a simulated crystal kept 54-56 % 'other' for 0 %"
            )
    from perovstem.tomo.surface import surface_on_box_faces

    # an object cut by the box is closed by the box faces (surface_mesh pads the volume)
    cut = {ax: f for ax, f in surface_on_box_faces(m, vol.shape, voxel).items() if f > 0.01}
    if cut:
        df.attrs["surface_on_box_faces"] = cut
    save_table(df, out, overwrite=overwrite)
    if mesh is not None:
        save_mesh(m.vertices_A, m.faces, mesh, overwrite=overwrite)
    if cal is not None:
        parts = ", ".join(
            f"{r.family}: {100 * r.fraction_corrected:.1f} ± {100 * r.fraction_err:.1f}%"
            for r in df.itertuples()
        )
        parts = f"calibrated ({cal.settings.get('n_phantoms', calibrate)} phantoms) {parts}"
    else:
        parts = ", ".join(f"{r.family}: {100 * r.fraction:.1f}%" for r in df.itertuples())
    typer.echo(f"{parts}; volume {m.volume_A3:.4g} Å³, surface {m.area_A2:.4g} Å² → {out}")
    how = ""
    if sigma_auto and np.isfinite(data_noise):
        how = f" (from the volume's relative noise {data_noise:.3g})"
    elif sigma_auto:  # "relative noise nan" for a crystal a few voxels across
        how = (
            " (the volume's noise could not be measured: no crystal interior 3 voxels from its "
            "surface; give --sigma-px to choose the smoothing)"
        )
    typer.echo(f"mesh smoothing σ = {sigma_px:.2f} voxels{how}")
    if cut:
        where = ", ".join(f"{100 * f:.0f} % on the {ax} faces" for ax, f in cut.items())
        typer.echo(
            f"WARNING: the object is cut by the volume's box ({where} of its surface): its "
            "volume and facet fractions are those of the cut piece; reconstruct a thicker "
            "volume (--thickness-px) or a field that holds the whole crystal"
        )
    if warn_noise:
        typer.echo(warn_noise)
    elif cal is None and facet_method == "normals":
        # documented in the help and docs/tomography.md; said where the numbers are read
        typer.echo(
            "note: uncalibrated normals fractions: rounded edges and the missing wedge move "
            "facet area into 'other' (largest family error 0.16-0.26 on held-out simulated "
            "crystals); --calibrate N corrects them, --facet-method polyhedron suits "
            "faceted crystals"
        )


def _sequence_files(paths: list[Path]) -> list[Path]:
    """Tilt-series files in time order: the arguments as given; a folder gives its files
    (supported suffixes, natural name order: t2 before t10); a quoted glob is expanded the
    same way."""
    import glob

    from perovstem.io import SUPPORTED_SUFFIXES
    from perovstem.io.read import _natural_key

    def natural(p: Path) -> list:
        return _natural_key(p.name)

    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = [q for q in p.iterdir() if q.suffix.lower() in SUPPORTED_SUFFIXES]
            if not found:
                raise ParameterError(f"folder {str(p)!r} holds no tilt-series files")
            out += sorted(found, key=natural)
        elif not p.exists() and any(c in str(p) for c in "*?["):
            found = [Path(q) for q in glob.glob(str(p))]
            if not found:
                raise ParameterError(f"{str(p)!r} matches no file")
            out += sorted(found, key=natural)
        elif not p.exists():
            raise ParameterError(f"tilt series {str(p)!r} does not exist")
        else:
            out.append(p)
    return out


def _float_list(value: str | None, option: str, n: int) -> list[float] | None:
    if value is None:
        return None
    try:
        vals = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ParameterError(f"`{option}` must be comma-separated numbers, got {value!r}") from None
    if len(vals) != n:
        raise ParameterError(f"`{option}` has {len(vals)} values for {n} tilt series: {value!r}")
    return vals


@tomo_app.command("sequence")
def sequence_cmd(
    series: list[Path] = typer.Argument(
        ...,
        help="Tilt series of one crystal in time order (≥ 2 files; or a folder / quoted glob, "
        "sorted by name with numbers in numeric order).",
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Table, one row per time point. Missing parent folders are created.",
    ),
    plot: Path = typer.Option(
        None, "--plot", help="Facets and volume vs dose/time figure (default: <OUT>.png)."
    ),
    no_plot: bool = typer.Option(False, "--no-plot", help="Do not write the figure."),
    volumes: Path = typer.Option(
        None, "--volumes", help="Folder for the reconstructions (<k>_<name>.mrc)."
    ),
    method: str = typer.Option("sirt", "--method", "-m", help="fbp|wbp|sirt|sart|cgls|tv|dart."),
    n_iter: int = typer.Option(100, "--n-iter", help="Iterations of the first time point."),
    n_iter_warm: int = typer.Option(
        None, "--n-iter-warm", help="Iterations after a warm start (default n-iter / 3)."
    ),
    no_warm_start: bool = typer.Option(
        False, "--no-warm-start", help="Start every time point from zero."
    ),
    align: bool = typer.Option(
        False,
        "--align/--no-align",
        help="Align every series first (as `tomo align`, with the first series' tilt axis for "
        "all; slow: projection matching reconstructs each series several times). Default: the "
        "series are already aligned.",
    ),
    facet_method: str = typer.Option(
        "normals",
        "--facet-method",
        help="normals (mesh face areas; edges count as 'other') | polyhedron (low-index "
        "polyhedron from the support distances; convex crystals only).",
    ),
    tolerance_deg: float = typer.Option(10.0, "--tolerance-deg", help="Facet tolerance, °."),
    sigma_px: float = typer.Option(None, "--sigma-px", help=_SIGMA_HELP),
    n_classes: int = typer.Option(
        3, "--n-classes", help="2: background/crystal; 3: + Pb clusters (cluster volume)."
    ),
    no_track: bool = typer.Option(
        False, "--no-track-orientation", help="Keep the first time point's lattice orientation."
    ),
    times_s: str = typer.Option(
        None, "--times-s", help="Time of every series, s, comma-separated (else from metadata)."
    ),
    doses: str = typer.Option(
        None,
        "--doses-e-per-A2",
        help="Cumulative dose of every series, e⁻/Å², comma-separated (else from metadata).",
    ),
    pixel_size_A: float = typer.Option(None, "--pixel-size-A", help=_PIXEL_SIZE_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
) -> None:
    """4-D tomography: facet fractions, volume and orientation of one crystal over time."""
    import numpy as np

    from perovstem.io import save_figure, save_table, save_volume
    from perovstem.tomo import METHODS, check_sequence, reconstruct_sequence

    if facet_method not in ("normals", "polyhedron"):
        raise ParameterError(
            f"`--facet-method` must be 'normals' or 'polyhedron', got {facet_method!r}"
        )
    if method not in METHODS:
        raise ParameterError(f"`--method` must be one of {sorted(METHODS)}, got {method!r}")
    for name, v, lo in (("--n-iter", n_iter, 1), ("--n-iter-warm", n_iter_warm, 1)):
        if v is not None and v < lo:
            raise ParameterError(f"`{name}` must be >= {lo}, got {v}")
    if n_classes not in (2, 3):
        raise ParameterError(f"`--n-classes` must be 2 or 3, got {n_classes}")
    if not 0 < tolerance_deg < 45:
        raise ParameterError(f"`--tolerance-deg` must be in (0, 45), got {tolerance_deg}")
    if sigma_px is not None:
        check_positive("--sigma-px", sigma_px, allow_zero=True)
    files = _sequence_files(series)
    if len(files) < 2:
        raise ParameterError(
            f"a 4-D sequence needs at least 2 tilt series, got {len(files)} "
            f"({', '.join(map(str, files))}); use `tomo facets` for one"
        )
    t_list = _float_list(times_s, "--times-s", len(files))
    if t_list is not None and not (
        all(math.isfinite(t) for t in t_list) and all(np.diff(t_list) > 0)
    ):
        # (10,5 was accepted: the series are given in time order, so their times increase)
        raise ParameterError(
            f"`--times-s` must be finite and increasing (the series in time order), got {times_s!r}"
        )
    d_list = _float_list(doses, "--doses-e-per-A2", len(files))
    for d in d_list or ():
        if not math.isfinite(d) or d < 0:
            raise ParameterError(f"`--doses-e-per-A2` must be finite and >= 0, got {d!r}")
        check_at_most(
            "--doses-e-per-A2",
            d,
            MAX_CUMULATIVE_DOSE_E_PER_A2,
            "e⁻/Å²",
            "the largest cumulative dose",
        )
    if d_list is not None and any(np.diff(d_list) < 0):
        raise ParameterError(  # cumulative: it cannot fall between time points
            f"`--doses-e-per-A2` (cumulative) must not decrease along the series, got {doses!r}"
        )
    plot_path = None if no_plot else (plot or out.with_suffix(".png"))
    vol_paths = (
        [volumes / f"{k:02d}_{data_stem(f)}.mrc" for k, f in enumerate(files)]
        if volumes is not None
        else []
    )
    check_outputs(out, plot_path, *vol_paths, overwrite=overwrite)
    # read and check every file before the (slow) reconstructions
    later: list[str] = []
    items = [_load_tilt(f, pixel_size_A, axis_along_x=not align, later=later) for f in files]
    _warn_later(later)
    check_sequence(items, names=[repr(str(f)) for f in files])
    for k, ts in enumerate(items):
        md = dict(ts.metadata or {})
        md["source"] = str(files[k])
        if t_list is not None:
            md["time_s"] = t_list[k]
        if d_list is not None:
            md["cumulative_dose_e_per_A2"] = d_list[k]
        items[k] = ts.replace(metadata=md)
    if align:
        from perovstem.tomo import align as align_series
        from perovstem.tomo import apply_alignment, preprocess

        # one tilt axis for all: the holder's axis does not change between time points, and
        # axes searched series by series differed by up to 7° on simulated series with the
        # same axis, which read as a lattice rotation of 5.7° at the last time point
        axis: bool | float = True
        for k, ts in enumerate(items):
            al = align_series(ts, tilt_axis=axis)
            axis = float(al.tilt_axis_deg)
            items[k] = apply_alignment(ts.replace(data=preprocess(ts.data)), al)
            typer.echo(
                f"aligned {files[k].name}: tilt axis {al.tilt_axis_deg:.2f}°, "
                f"max |shift| {abs(al.shifts_px).max():.1f} px"
            )

    def progress(k: int, row: dict) -> None:
        typer.echo(
            f"[{k + 1}/{len(items)}] {files[k].name}: volume {row['volume_A3']:.4g} Å³, "
            f"{{100}} {100 * row['frac_100']:.1f}%, {{110}} {100 * row['frac_110']:.1f}%, "
            f"{{111}} {100 * row['frac_111']:.1f}%, rotation {row['rotation_deg']:.1f}°"
        )

    kw = {} if method in ("fbp", "wbp") else {"n_iter": n_iter, "n_iter_warm": n_iter_warm}
    df, vols = reconstruct_sequence(
        items,
        method=method,
        warm_start=not no_warm_start,
        n_classes=n_classes,
        tolerance_deg=tolerance_deg,
        sigma_px=sigma_px,
        track_orientation=not no_track,
        facet_method=facet_method,
        return_volumes=volumes is not None,
        on_step=progress,
        **kw,
    )
    df.insert(1, "source", [str(f) for f in files])
    df.attrs.update(sources=[str(f) for f in files], aligned_here=align)
    save_table(df, out, overwrite=overwrite)
    written = [out]
    if plot_path is not None:
        from perovstem.plot.fourd import plot_facet_evolution

        axs = plot_facet_evolution(df, title=f"{len(df)} time points, {facet_method}")
        written.append(save_figure(axs[0].figure, plot_path, overwrite=overwrite))
    if vol_paths:
        volumes.mkdir(parents=True, exist_ok=True)
        for k, (v, p) in enumerate(zip(vols, vol_paths, strict=True)):
            save_volume(
                v,
                p,
                voxel_size_A=items[k].pixel_size_A,
                metadata={"method": method, "step": k, "source": str(files[k])},
                overwrite=overwrite,
            )
        written.append(volumes)
    first, last = df.iloc[0], df.iloc[-1]
    typer.echo(
        f"{len(df)} time points: volume {first.volume_A3:.4g} → {last.volume_A3:.4g} Å³ "
        f"({100 * (last.volume_A3 / first.volume_A3 - 1):+.1f}%); "
        + ", ".join(
            f"{{{f}}} {100 * first[f'frac_{f}']:.1f} → {100 * last[f'frac_{f}']:.1f}%"
            for f in ("100", "110", "111")
        )
        + f"; rotation {last.rotation_deg:.1f}° → {', '.join(map(str, written))}"
    )


def _register_simulate_tilt() -> None:
    try:
        from perovstem.cli.simulate import simulate_app
    except ImportError:  # pragma: no cover - simulate CLI not present
        return

    @simulate_app.command(
        "tilt",
        epilog=examples(
            "perovstem simulate tilt -o ts.npz --size-px 128 --edge-A 80 --seed 1",
        ),
    )
    def tilt_cmd(
        out: Path = typer.Option(
            ...,
            "--out",
            "-o",
            help="Tilt series (.npz, .mrc, .hspy ...). Missing parent folders are created.",
        ),
        truth: Path = typer.Option(None, "--truth", help="Truth JSON; default <out>_truth.json."),
        edge_A: float = typer.Option(70.0, "--edge-A", help="Cube edge, Å."),
        size: int = typer.Option(64, "--size-px", help="Detector size (square), px."),
        pixel_size_A: float = typer.Option(2.0, "--pixel-size-A", help="Pixel size, Å."),
        tilt_range_deg: float = typer.Option(70.0, "--tilt-range-deg", help="Max |tilt|, °."),
        step_deg: float = typer.Option(2.0, "--step-deg", help="Tilt step, °."),
        inclusions: int = typer.Option(2, "--inclusions", help="Number of Pb inclusions."),
        inclusion_radius_A: float = typer.Option(
            None,
            "--inclusion-radius-A",
            help="Radius of the Pb inclusions, Å (default: 6-10 Å, scaled down with a "
            "warning when they do not fit in the crystal).",
        ),
        counts_per_A: float = typer.Option(20.0, "--counts-per-A", help="Counts per Å path."),
        shift_sigma_px: float = typer.Option(0.0, "--shift-sigma-px", help="Drift step σ, px."),
        tilt_axis_deg: float = typer.Option(
            0.0,
            "--tilt-axis-deg",
            help="In-plane axis, °. Recorded in the truth JSON only: the series reads as a raw "
            "acquisition that records no axis (its file says 0°); find it with `tomo align`.",
        ),
        min_tilt_deg: float = typer.Option(
            None, "--min-tilt-deg", help="Most negative tilt, ° (asymmetric missing wedge)."
        ),
        scheme: str = typer.Option(
            "sequential", "--scheme", help="sequential | bidirectional | dose-symmetric."
        ),
        axis_offset_px: float = typer.Option(
            0.0,
            "--axis-offset-px",
            help="Tilt-axis offset from the centre, px (in the truth JSON only, as the axis).",
        ),
        no_noise: bool = typer.Option(False, "--no-noise", help="Noise-free projections."),
        seed: int = typer.Option(None, "--seed", min=0, help="Random seed."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    ) -> None:
        """Simulate a tilt series of a faceted NC with Pb inclusions; writes it and a truth JSON."""
        import numpy as np

        from perovstem.io import save_image, save_json
        from perovstem.simulate.tilt import nanocrystal_phantom, tilt_scheme, tilt_series

        if step_deg <= 0 or tilt_range_deg <= 0:
            raise ParameterError(
                f"`--step-deg` and `--tilt-range-deg` must be > 0, got {step_deg}, {tilt_range_deg}"
            )
        if min_tilt_deg is not None and not -90 <= min_tilt_deg < tilt_range_deg:
            raise ParameterError(
                f"`--min-tilt-deg` must be in [-90, {tilt_range_deg:g}) degrees (below "
                f"`--tilt-range-deg` {tilt_range_deg:g}), got {min_tilt_deg!r}"
            )
        check_positive("--counts-per-A", counts_per_A)
        check_at_most(
            "--counts-per-A",
            counts_per_A,
            MAX_COUNTS_PER_A,
            "counts/Å",
            "a pixel counts at most the electrons that hit it",
        )
        check_image_px((size, size), name="--size-px", why="the largest simulated projection")
        tpath = truth or out.with_name(data_stem(out) + "_truth.json")
        from perovstem.io.write import IMAGE_SUFFIXES

        check_outputs(
            out,
            tpath,
            overwrite=overwrite,
            suffixes={"--out": (IMAGE_SUFFIXES, out), "--truth": ((".json",), tpath)},
        )
        rng = np.random.default_rng(seed)
        flags = {
            "edge_A": "--edge-A",
            "inclusion_radius_A": "--inclusion-radius-A",
            "n_inclusions": "--inclusions",
            "pixel_size_A": "--pixel-size-A",
            "shape": "--size-px",
            "step_deg": "--step-deg",
            "max_tilt_deg": "--tilt-range-deg",
        }
        # a tilt step far below the range was built into millions of angles before the
        # stack size refused it (29 s)
        if step_deg > 0 and np.isfinite(tilt_range_deg) and np.isfinite(step_deg):
            check_stack_px(
                int(min(2 * abs(tilt_range_deg) / step_deg + 1, 1e15)),
                (size, size),
                names=("--step-deg", "--size-px"),
            )
        with warnings.catch_warnings(record=True) as caught, flag_names(flags):
            warnings.simplefilter("always")
            ph = nanocrystal_phantom(
                edge_A,
                n_inclusions=inclusions,
                inclusion_radius_A=inclusion_radius_A,
                rng=rng,
            )
            sch = tilt_scheme(tilt_range_deg, step_deg, min_tilt_deg=min_tilt_deg, scheme=scheme)
            check_stack_px(len(sch), (size, size), names=("--step-deg", "--size-px"))
            ts, tr = tilt_series(
                ph,
                sch["angle_deg"].to_numpy(),
                acquisition_order=sch["order"].to_numpy(),
                axis_offset_px=axis_offset_px,
                shape=(size, size),
                pixel_size_A=pixel_size_A,
                counts_per_A=counts_per_A,
                shift_sigma_px=shift_sigma_px,
                tilt_axis_deg=tilt_axis_deg,
                noise=not no_noise,
                rng=rng,
            )
        # a raw "UserWarning: ... (give `inclusion_radius_A` ...)" named the Python API
        print_warnings(caught, flags)
        save_image(ts, out, overwrite=overwrite)
        tj = {
            "shifts_px": tr["shifts_px"].tolist(),
            "tilt_axis_deg": tr["tilt_axis_deg"],
            "axis_offset_px": tr["axis_offset_px"],
            "acquisition_order": tr["acquisition_order"].tolist(),
            "missing_wedge_deg": sch.attrs["missing_wedge_deg"],
            "volume_A3": tr["volume_A3"],
            "surface_A2": tr["surface_A2"],
            "inclusion_volume_A3": tr["inclusion_volume_A3"],
            "facets": tr["facets"].to_dict(orient="list"),
            "orientation": ph.rotation.tolist(),
        }
        save_json(tj, tpath, overwrite=overwrite)
        typer.echo(f"tilt series {ts.shape} → {out}; truth → {tpath}")


_register_simulate_tilt()
