"""Steps that simulate data with known ground truth (perovstem.simulate)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from perovstem._limits import (
    MAX_DOSE_E_PER_A2,
    MAX_IMAGE_PX,
    MAX_KMC_FRAMES,
    MAX_KMC_TEMPERATURE_K,
    check_stack_px,
)
from perovstem.errors import ParameterError
from perovstem.pipeline.registry import Kind, Param, Upstream, UpstreamOf, api, register_step
from perovstem.simulate.kmc_params import ATMOSPHERES, KineticParameters

NANOCRYSTAL = "perovstem.simulate:nanocrystal"
COMPOSITION = "perovstem.simulate:composition"
HAADF = "perovstem.simulate:haadf_image|perovstem.simulate.haadf:haadf_image"
KMC = "perovstem.simulate:degradation_kmc|perovstem.simulate.kmc:degradation_kmc"
SERIES = "perovstem.simulate:insitu_series|perovstem.simulate.series:insitu_series"
PHANTOM = "perovstem.simulate:nanocrystal_phantom|perovstem.simulate.tilt:nanocrystal_phantom"
DEG_TILT = (
    "perovstem.simulate:degradation_tilt_series|perovstem.simulate.tilt:degradation_tilt_series"
)


def _atoms_plot3d(
    ctx: Any, atoms: Any, name: str, title: str, caption: str, section: str = "facets"
) -> None:
    from perovstem.report.plot3d import atoms_figure

    sym = atoms.get_chemical_symbols()
    groups = list(sym)
    if "label" in atoms.arrays:
        lab = atoms.arrays["label"]
        groups = [
            ("Pb⁰ cluster" if lab[i] == 2 else "Pb⁰ adatom" if lab[i] == 1 else s)
            for i, s in enumerate(sym)
        ]
    ctx.plot3d(
        name,
        atoms_figure(atoms.positions, sym, groups=groups, title=title),
        title=title,
        caption=caption,
        section=section,
    )


#: largest crystal (edge, Å) that `perovstem run --check` builds to estimate a KMC run's
#: cost (0.2 s at 100 Å); a larger one is counted from two built ones (:func:`_crystal_counts`)
_CHECK_BUILD_MAX_EDGE_A = 120.0


def _crystal_counts(p: dict[str, Any]) -> tuple[dict[str, int], str]:
    """:func:`perovstem.simulate.kmc.crystal_counts` of the crystal of ``simulate.nanocrystal``
    with parameters ``p``, and ``"about "`` when extrapolated.

    Up to :data:`_CHECK_BUILD_MAX_EDGE_A` the crystal is built and counted; a larger one
    (building a 400 Å cube takes seconds) from crystals of the same kind built at 3/4 of
    and at that edge, each count extrapolated as a power of the edge, ``c(L) = c(L₁)·
    (L/L₁)^k`` with ``k`` from the two (≈ 3 for the host atoms of a cube, ≈ 2 for its
    surface Br; a platelet's fixed thickness gives lower powers).  Measured against built
    crystals of 160 and 200 Å (cube, cuboid, platelet): within 10 %.
    """
    from perovstem.simulate import kmc

    edge = float(p["edge_A"])
    if edge <= _CHECK_BUILD_MAX_EDGE_A:
        return kmc.crystal_counts(_build_nanocrystal(p, rng=0)), ""
    l1 = _CHECK_BUILD_MAX_EDGE_A
    l0 = 0.75 * l1
    c0 = kmc.crystal_counts(_build_nanocrystal({**p, "edge_A": l0}, rng=0))
    c1 = kmc.crystal_counts(_build_nanocrystal({**p, "edge_A": l1}, rng=0))
    out = {}
    for key, v1 in c1.items():
        v0 = c0[key]
        if v0 > 0 and v1 > 0:
            k = np.log(v1 / v0) / np.log(l1 / l0)
            out[key] = int(round(v1 * (edge / l1) ** k))
        else:
            out[key] = int(v1)
    return out, "about "


def _kmc_run_check(
    params: dict[str, Any], upstream: dict[str, UpstreamOf], temperatures: list[float]
) -> None:
    """The frame dose and the event estimate of the KMC runs of a step (one per temperature).

    The crystal is known when ``atoms`` comes from ``simulate.nanocrystal``: it is built
    and counted as :func:`perovstem.simulate.degradation_kmc` counts it (above
    :data:`_CHECK_BUILD_MAX_EDGE_A` extrapolated from two built ones, :func:`_crystal_counts`),
    so the same runs are refused; a crystal read from a file is checked when the step runs.
    """
    from perovstem.simulate import kmc

    kmc.check_frame_dose(params["dose_rate_e_per_A2_s"], params["frame_time_s"])
    up = upstream.get("atoms")
    nc = up.find("simulate.nanocrystal") if isinstance(up, Upstream) else None
    if nc is None:
        return
    p = nc.params
    crystal, about = _crystal_counts(p)
    for t in temperatures:
        n_events = kmc.estimated_events(
            crystal,
            n_frames=params["n_frames"],
            frame_time_s=params["frame_time_s"],
            dose_rate_e_per_A2_s=params["dose_rate_e_per_A2_s"],
            temperature_K=t,
        )
        request = (
            f"`n_frames` = {params['n_frames']} frames of `frame_time_s` = "
            f"{params['frame_time_s']:g} s at `dose_rate_e_per_A2_s` = "
            f"{params['dose_rate_e_per_A2_s']:g} e⁻/Å²/s and `temperature_K` = {t:g} K on the "
            f"crystal of `simulate.nanocrystal` (`edge_A` = {p['edge_A']:g} Å, {p['shape']}: "
            f"{about}{crystal['n_host']} host atoms)"
        )
        kmc.refuse_costly_run(n_events, request)
        lo, hi = kmc.estimated_cpu_s(crystal, n_events, n_frames=params["n_frames"])
        if hi > _WARN_KMC_CPU_S:
            warnings.warn(
                f"the kinetic Monte Carlo run of {request} may take up to {_duration(hi)} of "
                f"CPU time (at least {_duration(lo)}; measured runs took 1-140 times the "
                "lower value): lower `n_frames`, `frame_time_s` or `temperature_K` for a "
                "shorter run",
                UserWarning,
                stacklevel=2,
            )


#: `perovstem run --check` warns when a KMC run may take more CPU time than this, s
#: (the highest value of :func:`perovstem.simulate.kmc.estimated_cpu_s`)
_WARN_KMC_CPU_S = 3600.0


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.2g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"


def _check_kmc(params: dict[str, Any], upstream: dict[str, UpstreamOf]) -> None:
    _kmc_run_check(params, upstream, [params["temperature_K"]])


def _check_heating(params: dict[str, Any], upstream: dict[str, UpstreamOf]) -> None:
    _kmc_run_check(params, upstream, [float(t) for t in params["temperatures_K"]])


def _check_image_of_crystal(
    params: dict[str, Any], upstream: dict[str, UpstreamOf], input_name: str, what: str
) -> None:
    """An image sized to the crystal of ``simulate.nanocrystal`` (up the chain of
    ``input_name``) at ``pixel_size_A``: refused above MAX_IMAGE_PX a side (its projection
    is at least ``edge_A`` wide, margins aside)."""
    up = upstream.get(input_name)
    nc = up.find("simulate.nanocrystal") if isinstance(up, Upstream) else None
    if nc is None:
        return
    edge, px = float(nc.params["edge_A"]), float(params["pixel_size_A"])
    side = int(edge / px)
    if side > MAX_IMAGE_PX:
        raise ParameterError(
            f"`pixel_size_A` = {px:g} Å for the crystal of `simulate.nanocrystal` (`edge_A` = "
            f"{edge:g} Å) makes {what} of more than {side} px a side, above {MAX_IMAGE_PX} px "
            f"(the largest simulated image): give a larger `pixel_size_A` or a smaller `edge_A`"
        )


def _check_haadf(params: dict[str, Any], upstream: dict[str, UpstreamOf]) -> None:
    _check_image_of_crystal(params, upstream, "atoms", "an image")


def _check_insitu_series(params: dict[str, Any], upstream: dict[str, UpstreamOf]) -> None:
    _check_image_of_crystal(params, upstream, "trajectory", "frames")


def _check_tilt_series(params: dict[str, Any], upstream: dict[str, UpstreamOf]) -> None:
    lo, hi, step = params["angle_min_deg"], params["angle_max_deg"], params["angle_step_deg"]
    if not lo < hi:
        raise ParameterError(
            f"`angle_min_deg` = {lo:g}° must be below `angle_max_deg` = {hi:g}° (the tilt "
            "range: no angle lies in it)"
        )
    if step > hi - lo:
        raise ParameterError(
            f"`angle_step_deg` = {step:g}° is wider than the tilt range `angle_min_deg` = "
            f"{lo:g}° to `angle_max_deg` = {hi:g}° ({hi - lo:g}°): one projection, no tilt "
            "series"
        )
    n_angles = np.arange(lo, hi + 1e-9, step).size  # as the step makes them
    check_stack_px(n_angles, (params["size_px"],) * 2, names=("angle_step_deg", "size_px"))


#: the simulator's truth table (perovstem.simulate.haadf_image): every column; it has the
#: true `scs_A2`, not a fitted `scs`
HAADF_TRUTH_KIND = Kind(
    "table",
    (
        "x_A",
        "y_A",
        "type",
        "n_atoms",
        "n_Pb",
        "n_Cd",
        "n_Br",
        "n_Cs",
        "scs_A2",
        "n_Pb0",
        "cluster_id",
        "thermal_sigma_A",
        "z_min_A",
        "z_max_A",
    ),
    may_have=(),
)


def _build_nanocrystal(p: dict[str, Any], *, rng: Any) -> Any:
    """The ``simulate.nanocrystal`` step's crystal from its parameters ``p`` (the step
    and the KMC cost check of a step downstream build the same one)."""
    return api(NANOCRYSTAL)(
        p["edge_A"],
        shape=p["shape"],
        phase=p["phase"],
        termination=p["termination"],
        cd_fraction=p["cd_fraction"],
        zone_axis=p["zone_axis"],
        rng=rng,
    )


@register_step(
    "simulate.nanocrystal",
    outputs=("atoms",),
    output_kinds={"atoms": Kind("atoms")},
    params={
        "edge_A": Param(float, 40.0, "edge length, Å", min=5.0, max=400.0),
        "shape": Param(
            str, "cube", "cube, cuboid or platelet", choices=("cube", "cuboid", "platelet")
        ),
        "phase": Param(str, "cubic", "cubic or orthorhombic", choices=("cubic", "orthorhombic")),
        "termination": Param(str, "CsBr", "surface termination", choices=("CsBr", "PbBr2")),
        "cd_fraction": Param(float, 0.0, "Cd fraction x on B sites", min=0.0, max=1.0),
        "zone_axis": Param(str, "001", "zone axis along the beam", choices=("001", "011", "111")),
        "view3d": Param(bool, True, "embed an interactive 3-D view in the report"),
    },
    requires=(NANOCRYSTAL,),
    section="mechanism",
    doc="Build a CsCd_xPb_{1-x}Br3 nanocrystal (ASE atoms, ground truth).",
)
def simulate_nanocrystal(ctx: Any) -> dict[str, Any]:
    p = ctx.params
    atoms = _build_nanocrystal(p, rng=ctx.rng())
    try:
        comp = api(COMPOSITION)(atoms)
        ctx.text(
            f"Simulated nanocrystal: {comp.get('formula', len(atoms))}, edge "
            f"{p['edge_A']:g} Å, {p['phase']} phase, {p['termination']}-terminated, "
            f"x(Cd) = {p['cd_fraction']:g}.",
            title="Simulated nanocrystal",
        )
    except (ImportError, AttributeError):
        pass
    if p["view3d"]:
        _atoms_plot3d(
            ctx,
            atoms,
            "model",
            "Pristine nanocrystal (simulated)",
            "Atomic model before irradiation (ground truth of the demo).",
        )
    return {"atoms": atoms}


@register_step(
    "simulate.haadf",
    input_kinds={"atoms": Kind("atoms", source="the `atoms` output of simulate.nanocrystal")},
    inputs=("atoms",),
    outputs=("image", "truth"),
    output_kinds={"image": Kind("image"), "truth": HAADF_TRUTH_KIND},
    params={
        "pixel_size_A": Param(float, 0.25, "pixel size, Å", min=0.01, max=5.0),
        "dose_e_per_A2": Param(float, 1e4, "electron dose, e⁻/Å²", min=1.0, max=MAX_DOSE_E_PER_A2),
        "voltage_kV": Param(float, 300.0, "accelerating voltage, kV", choices=(200.0, 300.0)),
        "probe_sigma_A": Param(float, None, "probe σ, Å (default: simulator default)", min=0.0),
        "outer_mrad": Param(
            float,
            200.0,
            "outer angle of the 65 mrad annular detector, mrad (the calibrated 200 or 131)",
            choices=(200.0, 131.0),
        ),
    },
    check_together=_check_haadf,
    requires=(HAADF,),
    section="counting",
    doc="Simulate a HAADF-STEM image of the nanocrystal with Poisson noise.",
)
def simulate_haadf(ctx: Any, atoms: Any) -> dict[str, Any]:
    haadf_image = api(HAADF)
    p = ctx.params
    kw = {} if p["probe_sigma_A"] is None else {"probe_sigma_A": p["probe_sigma_A"]}
    image, truth = haadf_image(
        atoms,
        pixel_size_A=p["pixel_size_A"],
        dose_e_per_A2=p["dose_e_per_A2"],
        voltage_kV=p["voltage_kV"],
        detector_mrad=(65.0, p["outer_mrad"]),
        rng=ctx.rng(),
        **kw,
    )
    from perovstem.plot.overview import plot_image

    ax = plot_image(
        image.data, pixel_size_A=image.pixel_size_A, title=f"HAADF, {p['dose_e_per_A2']:g} e⁻/Å²"
    )
    ctx.figure(
        "image",
        ax.figure,
        title="Simulated HAADF image",
        caption=f"{image.shape[0]}×{image.shape[1]} px at {image.pixel_size_A:g} Å/px.",
    )
    return {"image": image, "truth": truth}


@register_step(
    "simulate.kmc",
    input_kinds={"atoms": Kind("atoms", source="the `atoms` output of simulate.nanocrystal")},
    inputs=("atoms",),
    outputs=("trajectory", "frames", "clusters", "final"),
    output_kinds={
        "trajectory": Kind("trajectory"),
        "frames": Kind("table", ("frame",)),
        "clusters": Kind("table", ("frame",)),
        "final": Kind("atoms"),
    },
    params={
        "n_frames": Param(int, 40, "number of frames", min=2, max=MAX_KMC_FRAMES),
        "frame_time_s": Param(float, 1.0, "frame time, s", min=1e-6),
        # (the kinetic Monte Carlo never ended at 1e17 e⁻/Å² per frame)
        "dose_rate_e_per_A2_s": Param(float, 100.0, "dose rate, e⁻/Å²/s", min=0.0, max=1e9),
        "temperature_K": Param(float, 300.0, "temperature, K", min=1.0, max=MAX_KMC_TEMPERATURE_K),
        "atmosphere": Param(
            str,
            "vacuum",
            "gas around the crystal: O2, H2O and air (both) strip Br at a rate ∝ pressure; N2 and Ar are inert like vacuum",
            choices=ATMOSPHERES,
        ),
        "orphaned_br_leave": Param(
            bool,
            False,
            "a Br whose last cation neighbour has gone leaves with it (physical; off: such Br "
            "stay and are imaged, as the analyses were validated)",
        ),
    },
    check_together=_check_kmc,
    requires=(KMC,),
    section="kinetics",
    doc="Kinetic Monte Carlo of beam-induced Br loss and Pb⁰ cluster formation (ground truth).",
)
def simulate_kmc(ctx: Any, atoms: Any) -> dict[str, Any]:
    degradation_kmc = api(KMC)
    p = ctx.params
    traj = degradation_kmc(
        atoms,
        n_frames=p["n_frames"],
        frame_time_s=p["frame_time_s"],
        dose_rate_e_per_A2_s=p["dose_rate_e_per_A2_s"],
        temperature_K=p["temperature_K"],
        atmosphere=p["atmosphere"],
        **({"params": KineticParameters(orphaned_br_leave=True)} if p["orphaned_br_leave"] else {}),
        rng=ctx.rng(),
    )
    frames = traj.frame_table.copy()
    frames["dose_rate_e_per_A2_s"] = p["dose_rate_e_per_A2_s"]
    frames.attrs["source"] = "simulate.degradation_kmc (ground truth)"
    final = traj.atoms(traj.n_frames - 1)
    _atoms_plot3d(
        ctx,
        final,
        "final",
        f"After {p['dose_rate_e_per_A2_s']:g} e⁻/Å²/s "
        f"× {p['n_frames'] * p['frame_time_s']:g} s (simulated)",
        "Atomic model at the end of the KMC run: Pb⁰ clusters highlighted.",
        section="kinetics",
    )
    from perovstem.plot.overview import plot_xy

    cols = [c for c in ("n_clusters", "n_Pb0") if c in frames.columns]
    if cols:
        ax = plot_xy(
            frames,
            "cumulative_dose_e_per_A2",
            cols,
            marker=".",
            ylabel="number",
            title=f"{p['dose_rate_e_per_A2_s']:g} e⁻/Å²/s (truth)",
        )
        ctx.figure(
            "clusters",
            ax.figure,
            title="Simulated Pb⁰ clusters",
            caption="Ground truth of the KMC run: clusters and Pb⁰ atoms vs dose.",
        )
    return {"trajectory": traj, "frames": frames, "clusters": traj.clusters.copy(), "final": final}


@register_step(
    "simulate.insitu_series",
    inputs=("trajectory",),
    input_kinds={
        "trajectory": Kind("trajectory", source="the `trajectory` output of simulate.kmc")
    },
    outputs=("series", "truth"),
    output_kinds={
        "series": Kind("series"),
        "truth": Kind("tables", ("drift", "clusters", "frames", "events")),
    },
    params={
        "pixel_size_A": Param(float, 0.5, "pixel size, Å", min=0.01, max=10.0),
        "drift_A_per_s": Param(
            list,
            [0.0, 0.0],
            "specimen drift (vx, vy) = (along x, along y), Å/s",
            item_type=float,
            length=2,
        ),
        "probe_sigma_A": Param(float, None, "probe σ, Å (default: simulator default)", min=0.0),
    },
    check_together=_check_insitu_series,
    requires=(SERIES,),
    section="kinetics",
    doc="Render a KMC trajectory as an in-situ HAADF series (drift, noise, dose per frame).",
)
def simulate_insitu_series(ctx: Any, trajectory: Any) -> dict[str, Any]:
    insitu_series = api(SERIES)
    p = ctx.params
    kw = {} if p["probe_sigma_A"] is None else {"probe_sigma_A": p["probe_sigma_A"]}
    series, truth = insitu_series(
        trajectory,
        pixel_size_A=p["pixel_size_A"],
        drift_A_per_s=tuple(p["drift_A_per_s"]),
        rng=ctx.rng(),
        **kw,
    )
    return {"series": series, "truth": {k: v for k, v in truth.items() if hasattr(v, "columns")}}


@register_step(
    "simulate.heating",
    input_kinds={"atoms": Kind("atoms", source="the `atoms` output of simulate.nanocrystal")},
    inputs=("atoms",),
    outputs=("frames",),
    output_kinds={"frames": Kind("table", ("frame",))},
    params={
        "temperatures_K": Param(
            list,
            [300.0, 350.0, 400.0, 450.0],
            "temperatures, K",
            item_type=float,
            min=1.0,
            max=MAX_KMC_TEMPERATURE_K,
        ),
        "n_frames": Param(int, 20, "frames per temperature", min=2, max=MAX_KMC_FRAMES),
        "frame_time_s": Param(float, 1.0, "frame time, s", min=1e-6),
        "dose_rate_e_per_A2_s": Param(
            float, 20.0, "dose rate during heating, e⁻/Å²/s", min=0.0, max=1e9
        ),
    },
    check_together=_check_heating,
    requires=(KMC,),
    section="kinetics",
    doc="Heating series: independent KMC runs of the pristine NC at each temperature.",
)
def simulate_heating(ctx: Any, atoms: Any) -> dict[str, Any]:
    import pandas as pd

    degradation_kmc = api(KMC)
    p = ctx.params
    temps = [float(t) for t in p["temperatures_K"]]
    tables = []
    for k, t in enumerate(ctx.track(temps, total=len(temps), description="temperatures")):
        traj = degradation_kmc(
            atoms,
            n_frames=p["n_frames"],
            frame_time_s=p["frame_time_s"],
            dose_rate_e_per_A2_s=p["dose_rate_e_per_A2_s"],
            temperature_K=t,
            rng=ctx.rng(k),
        )
        tab = traj.frame_table.copy()
        tab["temperature_K"] = t
        tables.append(tab)
    frames = pd.concat(tables, ignore_index=True)
    frames.attrs["source"] = "simulate.degradation_kmc heating series (ground truth)"
    return {"frames": frames}


@register_step(
    "simulate.tilt_series",
    outputs=("before", "after", "truth"),
    output_kinds={"before": Kind("tilt"), "after": Kind("tilt"), "truth": Kind("table")},
    params={
        "edge_A": Param(float, 60.0, "phantom edge length, Å", min=5.0),
        # the phantom faces recede 2e-4 Å per e⁻/Å² (simulate.degradation_phantoms): 1e5 left a
        # 60 Å crystal 3 % of its volume and the demo's 26 Å one 0.6 %
        "dose_e_per_A2": Param(
            float,
            1e4,
            "dose between the two tilt series, e⁻/Å²",
            min=0.0,
            max=MAX_DOSE_E_PER_A2,
        ),
        "angle_min_deg": Param(float, -70.0, "first tilt angle, degrees", min=-90.0, max=90.0),
        "angle_max_deg": Param(float, 70.0, "last tilt angle, degrees", min=-90.0, max=90.0),
        "angle_step_deg": Param(float, 5.0, "tilt increment, degrees", min=0.1),
        "size_px": Param(int, 96, "detector size (square), px", min=16, max=MAX_IMAGE_PX),
        "pixel_size_A": Param(float, 1.0, "pixel size, Å", min=0.05),
    },
    check_together=_check_tilt_series,
    requires=(PHANTOM, DEG_TILT),
    section="facets",
    doc="Tilt series of a faceted NC phantom with Pb inclusions before and after a dose.",
)
def simulate_tilt_series(ctx: Any) -> dict[str, Any]:
    nanocrystal_phantom, degradation_tilt_series = api(PHANTOM), api(DEG_TILT)
    p = ctx.params
    angles = np.arange(p["angle_min_deg"], p["angle_max_deg"] + 1e-9, p["angle_step_deg"])
    rng = ctx.rng()
    obj = nanocrystal_phantom(p["edge_A"], rng=rng)
    series, truth = degradation_tilt_series(
        obj,
        2,
        angles,
        dose_per_step_e_per_A2=p["dose_e_per_A2"],
        shape=(p["size_px"], p["size_px"]),
        pixel_size_A=p["pixel_size_A"],
        rng=rng,
    )
    ctx.table("truth", truth, title="Phantom ground truth (before / after)")
    return {"before": series[0], "after": series[-1], "truth": truth}
