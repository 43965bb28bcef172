"""Fitted-SCS libraries: the column-fit estimator applied to simulated columns of known size.

Library atom counting compares measured cross-sections with simulated ones (LeBeau et al.,
Nano Lett. 10 (2010) 4405; Van Aert et al., Phys. Rev. B 87 (2013) 064107; De Backer et al.,
Ultramicroscopy 134 (2013) 23 and 171 (2016) 104, StatSTEM).  The comparison is only
unbiased when both numbers come from the *same* measurement.  The tabulated library of
:func:`perovstem.simulate.scs_library` holds the total (probe-integrated) cross-section of a
column, whereas :func:`perovstem.atoms.fit_columns` without a probe-tail model measures the
volume of a Gaussian: it misses the part of the probe tail that the background absorbs,
picks up some of the neighbours' tails, and at low dose its shared width (and so the volume)
is biased low by the noise.  The three column types are affected differently, so one scale
factor per type does not close the gap, and a few-% mismatch makes the scale-fitting
counters settle on counts shifted by one (the library is nearly self-similar).

:func:`fitted_scs_library` removes the mismatch by construction: it renders CsPbBr₃ [001]
slabs of ``n`` = 1 … ``max_atoms`` cells with the package's image model
(:func:`perovstem.simulate.haadf_image`, probe with Moffat tail), at the pixel size, beam
energy and dose per frame of the data, normalises them like the data
(:func:`perovstem.atoms.normalize_image`), fits them as the analysis fits its frames
(widths per type measured once, robustly, then held) and tabulates the mean fitted
cross-section per column type.  The slabs are CsBr-terminated like the simulator's
nanocrystals (a Pb–Br column of n Pb holds n + 1 Br, a Cs column n + 1 Cs), about as wide as
the data's crystal and imaged in the data's field of view (the fitted background, and so
the cross-sections, depend on the vacuum around the crystal).  The probe is the default probe of the beam energy unless given — it is not
read from the data, so evaluating on images made with another probe is a fair test.

The defaults (widths measured once and held, positions held) repeat
:func:`perovstem.insitu.analyze_series`' fit.  A table of
:func:`perovstem.atoms.fit_columns` with its defaults (one width per type re-fitted in the
image, positions refined) needs ``width="frame"``, ``fit_positions=True`` and the image's
``dose_e_per_A2``: at 10³ e⁻/Å² that fit reads Cs columns 7 % below the noise-free library
(docs/counting.md).  :func:`fitted_library_for` reads all of it from the table.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pandas as pd

from perovstem._validation import check_choice, check_positive, refuse_text_numbers
from perovstem.errors import ParameterError
from perovstem.simulate.scs import _check_detector

__all__ = [
    "LIBRARY_TYPES",
    "fitted_library_for",
    "fitted_scs_library",
    "slab_atoms",
    "type_widths",
]

LIBRARY_TYPES = ("PbBr", "Br", "Cs")
"""Column types of the CsPbBr₃ [001] projection (:func:`perovstem.atoms.cspbbr3_001_cell`)."""


def slab_atoms(
    n_cells: int, thickness: int, *, termination: str = "CsBr", lattice_A: float = 5.87
) -> Any:
    """A CsPbBr₃ [001] slab of ``n_cells`` × ``n_cells`` cells and ``thickness`` cells deep.

    Cs columns sit on the (n+1)² cell corners (CsBr side facets), Pb–Br columns at the cell
    centres and Br columns on the cell edges, so the slab projects onto the sites of
    :func:`perovstem.atoms.cspbbr3_001_cell` (shifted by half a cell).  Along the beam the
    slab has ``thickness`` PbBr₂ layers between ``thickness + 1`` CsBr layers
    (``termination="CsBr"``, as :func:`perovstem.simulate.nanocrystal`'s default): Pb–Br
    columns hold ``thickness`` Pb and ``thickness + 1`` Br, Br columns ``thickness`` Br and
    Cs columns ``thickness + 1`` Cs; ``"PbBr2"`` swaps the layer counts (``thickness + 1``
    Pb, Br-column Br; ``thickness`` apical Br and Cs).

    Parameters
    ----------
    n_cells : int
        Cells per edge (≥ 1).
    thickness : int
        Cells along the beam (≥ 0; 0 is a single CsBr or PbBr₂ layer).
    termination : {"CsBr", "PbBr2"}
        Layer at the entrance and exit surfaces.
    lattice_A : float
        Cubic lattice parameter, Å.

    Returns
    -------
    ase.Atoms
        Beam along −z, no periodicity.
    """
    from ase import Atoms

    k = int(check_positive("n_cells", n_cells))
    n = int(check_positive("thickness", thickness, allow_zero=True))
    check_choice("termination", termination, ("CsBr", "PbBr2"))
    a = check_positive("lattice_A", lattice_A)
    g = np.arange(k + 1) * a
    h = (np.arange(k) + 0.5) * a
    corner = np.array([(x, y) for x in g for y in g])
    centre = np.array([(x, y) for x in h for y in h])
    edge = np.array([(x, y) for x in h for y in g] + [(x, y) for x in g for y in h])
    # layer heights: CsBr layers (Cs on corners, apical Br on centres), PbBr2 layers (Pb on
    # centres, Br on edges); the terminating layer type occurs thickness + 1 times
    n_csbr, n_pbbr2 = (n + 1, n) if termination == "CsBr" else (n, n + 1)
    z_csbr = (np.arange(n_csbr) + (0.0 if termination == "CsBr" else 0.5)) * a
    z_pbbr2 = (np.arange(n_pbbr2) + (0.5 if termination == "CsBr" else 0.0)) * a
    sym: list[str] = []
    pos: list[np.ndarray] = []
    for el, sites, z in (
        ("Cs", corner, z_csbr),
        ("Br", centre, z_csbr),
        ("Pb", centre, z_pbbr2),
        ("Br", edge, z_pbbr2),
    ):
        if z.size:
            pos.append(np.column_stack([np.repeat(sites, z.size, 0), np.tile(z, len(sites))]))
            sym += [el] * (len(sites) * z.size)
    return Atoms(sym, positions=np.vstack(pos))


def fitted_scs_library(
    max_atoms: int = 20,
    *,
    pixel_size_A: float,
    dose_e_per_A2: float | None = None,
    voltage_kV: float = 300.0,
    probe_sigma_A: float | None = None,
    tail_fraction: float | None = None,
    detector_mrad: tuple[float, float] = (65.0, 200.0),
    termination: str = "CsBr",
    lattice_A: float = 5.87,
    n_cells: int = 8,
    shape: tuple[int, int] | None = None,
    n_realizations: int = 4,
    reference_thickness: int = 8,
    width_dose_e_per_A2: float | None = None,
    width: str = "series",
    fit_positions: bool = False,
    max_iter: int = 30,
    rng: int = 0,
    vacuum: bool = True,
    noise: str = "gaussian",
) -> dict[str, pd.DataFrame]:
    """SCS library of the Gaussian column fit, one table per CsPbBr₃ [001] column type.

    For every thickness a slab of :func:`slab_atoms` is imaged with
    :func:`perovstem.simulate.haadf_image` (in a ``shape`` field of view), normalised with
    :func:`perovstem.atoms.normalize_image` and fitted at its column sites as
    :func:`perovstem.insitu.analyze_series` (``columns=True``) fits a frame: Gaussian
    columns, constant background, no probe-tail model; with ``width="series"`` the widths
    are first measured once per type (:func:`type_widths` on a ``reference_thickness``
    slab with Poisson noise at ``width_dose_e_per_A2``, averaged over ``n_realizations``)
    and then held, with ``"frame"`` re-fitted in every image.  The library value of ``n``
    atoms is the mean fitted ``scs`` over the columns of a type in the slab whose columns
    of that type hold ``n`` atoms (the counting units of
    :func:`perovstem.simulate.scs_library`: Pb–Br columns by their Pb); 0 atoms has SCS 0.

    Parameters
    ----------
    max_atoms : int
        Largest count in the library (≥ 1).
    pixel_size_A : float
        Pixel size of the data, Å.
    dose_e_per_A2 : float, optional
        Dose per frame of the data, e⁻/Å²: the library is then averaged over Poisson noise
        at this dose and carries the noise bias of the fit.  None: noise-free images.
    voltage_kV : float
        Beam energy (a calibrated one, 300 or 200 kV).
    detector_mrad : (inner, outer)
        Annular detector of the image, one of
        :data:`perovstem.simulate.scs.DETECTORS_MRAD`.
    probe_sigma_A, tail_fraction : float, optional
        Probe core σ (Å) and tail fraction; default the package's default probe at
        ``voltage_kV`` (:func:`perovstem.simulate.probe.default_probe`).
    termination : {"CsBr", "PbBr2"}
        Entrance/exit layers of the slab (see :func:`slab_atoms`).
    lattice_A : float
        Lattice parameter of the slab, Å.
    n_cells : int
        Slab size, cells per edge (≥ 2).
    shape : (int, int), optional
        Image size in pixels, the slab at its centre; default the slab plus a 10 Å vacuum
        margin.  Pass the frame size of the data: the constant background of the fit is
        set by the vacuum around the crystal, which holds the probe tails, so the fitted
        widths and cross-sections depend on how much vacuum the image shows.
    n_realizations : int
        Noise realisations averaged (ignored without ``dose_e_per_A2``).  With ``width =
        "series"`` and fixed positions the per-thickness fit is linear in the heights, so
        its expectation is the fit of the noise-free image (used); only the width
        estimate, which is biased by the noise, is averaged over realisations.
    reference_thickness : int
        Slab thickness (cells) on which the widths are estimated for ``width="series"``
        (the first frame of a series shows the whole crystal).
    width_dose_e_per_A2 : float, optional
        Dose of the image on which the widths are measured (``width="series"``), e⁻/Å²;
        default ``dose_e_per_A2``.  :func:`~perovstem.insitu.analyze_series` measures them
        on the sum of its first frames.
    width : {"series", "frame"}
        How the analysis treats the Gaussian width ρ of each type.  ``"series"``: ρ fitted
        once (positions fixed at the sites, one ρ per type) on a slab of
        ``reference_thickness`` cells, then held fixed in the fits of every thickness — as
        :func:`~perovstem.insitu.analyze_series` fixes ρ from the first frame.  ``"frame"``:
        ρ fitted in every image (then its noise bias and frame-to-frame scatter enter).
    fit_positions : bool
        Refine the column positions in the fit (as the analysis does or not).
    max_iter : int
        Fit sweeps, as in the analysis.
    rng : int
        Seed of the noise (the library is deterministic and cached per argument set).
    vacuum : bool
        True: the slab of ``n_cells`` sits in vacuum inside the ``shape`` field (a
        nanocrystal on vacuum).  False: the crystal fills the whole ``shape`` field (needs
        ``shape``; ``n_cells`` is then set to cover it) — for images without vacuum (a
        thin film, the inside of a large crystal), where the fitted constant background
        takes a much larger share of the intensity (probe tails and the diffuse
        scattering between columns) than beside a crystal on vacuum.
    noise : {"gaussian", "poisson"}
        The fit's noise model (:func:`~perovstem.atoms.fit_columns`' ``noise``): least
        squares, or Poisson maximum likelihood, whose Gaussian-column cross-sections are
        biased differently per type (the data's fit must be repeated as it was made).
        ``"poisson"`` needs ``dose_e_per_A2``.

    Returns
    -------
    dict of DataFrame
        ``{type: DataFrame[n_atoms, scs_A2, scs_sd_A2]}`` for ``"PbBr"``, ``"Br"``, ``"Cs"``
        with ``n_atoms`` = 0 … ``max_atoms``; ``scs_sd_A2`` is the spread of the fitted SCS
        over the slab's columns (edge against inner columns; and noise where noisy images
        are fitted), 0 for 0 atoms.  ``attrs`` hold the conditions and
        ``source = "fitted"``.  Fresh copies: callers may modify them.

    Raises
    ------
    ParameterError
        For a non-positive size, dose or count, or an unknown termination.
    """
    refuse_text_numbers(locals())
    m = int(check_positive("max_atoms", max_atoms))
    dx = check_positive("pixel_size_A", pixel_size_A)
    dose = None if dose_e_per_A2 is None else check_positive("dose_e_per_A2", dose_e_per_A2)
    check_choice("termination", termination, ("CsBr", "PbBr2"))
    check_choice("width", width, ("series", "frame"))
    if int(n_cells) < 2:
        raise ParameterError(f"`n_cells` must be >= 2, got {n_cells!r}")
    if int(reference_thickness) < 1:
        raise ParameterError(f"`reference_thickness` must be >= 1, got {reference_thickness!r}")
    if int(n_realizations) < 1:
        raise ParameterError(f"`n_realizations` must be >= 1, got {n_realizations!r}")
    if not isinstance(rng, (int, np.integer)):
        raise ParameterError(f"`rng` must be an int seed (the library is cached), got {rng!r}")
    if not isinstance(vacuum, (bool, np.bool_)):
        raise ParameterError(f"`vacuum` must be True or False, got {vacuum!r}")
    check_choice("noise", noise, ("gaussian", "poisson"))
    if noise == "poisson" and dose is None:
        raise ParameterError("`noise='poisson'` needs `dose_e_per_A2` (the electrons per pixel)")
    if not vacuum:
        if shape is None:
            raise ParameterError("`vacuum=False` needs `shape` (the field the crystal fills)")
        # a slab one cell wider than the field on every side: no vacuum anywhere in it
        n_cells = int(np.ceil(max(shape) * dx / lattice_A)) + 2
    key = (
        m,
        round(dx, 6),
        None if dose is None else float(f"{dose:.3g}"),
        float(voltage_kV),
        None if probe_sigma_A is None else float(probe_sigma_A),
        None if tail_fraction is None else float(tail_fraction),
        _check_detector(detector_mrad),
        termination,
        float(lattice_A),
        int(n_cells),
        None if shape is None else (int(shape[0]), int(shape[1])),
        int(n_realizations) if dose is not None else 1,
        int(reference_thickness),
        None
        if width_dose_e_per_A2 is None or dose is None
        else float(f"{check_positive('width_dose_e_per_A2', width_dose_e_per_A2):.3g}"),
        width,
        bool(fit_positions),
        int(max_iter),
        int(rng),
        bool(vacuum),
        str(noise),
    )
    tables = _cached_library(*key)
    return {t: df.copy() for t, df in tables.items()}


def with_cd_fraction(
    table: pd.DataFrame,
    column_type: str,
    cd_fraction: float,
    *,
    voltage_kV: float = 300.0,
    detector_mrad: tuple[float, float] = (65.0, 200.0),
) -> pd.DataFrame:
    """A fitted library of a Cd-alloyed crystal: the Pb–B values times the tabulated ratio.

    The slabs of :func:`fitted_scs_library` are pure CsPbBr₃; with a Cd fraction ``x`` on
    the Pb sites the Pb–B cross-section of ``n`` cells is scaled by
    ``scs_library("PbBr", cd_fraction=x) / scs_library("PbBr")`` at ``n`` (other types and
    ``x = 0``: unchanged).  Returns a copy.
    """
    out = table.copy()
    if column_type != "PbBr" or not cd_fraction:
        return out
    from perovstem.simulate import scs_library

    m = int(out["n_atoms"].max())
    kw = {"voltage_kV": voltage_kV, "detector_mrad": detector_mrad}
    pure = scs_library("PbBr", m, **kw)["scs_A2"].to_numpy()
    alloy = scs_library("PbBr", m, cd_fraction=cd_fraction, **kw)
    ratio = np.divide(alloy["scs_A2"].to_numpy(), pure, out=np.ones_like(pure), where=pure > 0)
    out["scs_A2"] = out["scs_A2"].to_numpy() * ratio[out["n_atoms"].to_numpy()]
    out.attrs["cd_fraction"] = float(cd_fraction)
    return out


def fitted_library_for(
    columns: pd.DataFrame,
    max_atoms: int = 20,
    *,
    types: Any = None,
    dose_e_per_A2: float | None = None,
    voltage_kV: float | None = None,
    detector_mrad: tuple[float, float] = (65.0, 200.0),
    termination: str = "CsBr",
    lattice_A: float = 5.87,
    cd_fraction: float = 0.0,
    n_realizations: int = 4,
    rng: int = 0,
) -> dict[str, pd.DataFrame]:
    """The :func:`fitted_scs_library` that matches a table of :func:`~perovstem.atoms.fit_columns`.

    The library must measure the slabs as the table's image was measured, or the counts
    of a type shift by whole atoms (docs/counting.md, "Offset ambiguity").  Its conditions
    are read from the table's ``attrs``: pixel size and image size (the fitted background
    depends on the vacuum in the field), the dose of the image (``dose_e_per_A2``; at
    10³ e⁻/Å² the noisy fit reads Cs columns 7 % and Pb–B 2.5 % below the noise-free
    one), the width treatment (``width="type"``: one width per type re-fitted in the image,
    ``width="frame"`` of the library) and whether positions were refined
    (``fit_positions``).  The slab has about as many cells per edge as the table has Pb–B
    columns (√N, 3–12), as :func:`perovstem.insitu.analyze_series` sizes it.

    Parameters
    ----------
    columns : DataFrame
        Output of :func:`~perovstem.atoms.fit_columns` on a normalised image (its
        ``attrs`` are needed: a CSV copy has none; parquet keeps them).
    max_atoms : int
        Largest count in the library.
    types : sequence of str, optional
        Column types to tabulate (default: those of the table that a CsPbBr₃ [001] slab
        has, :data:`LIBRARY_TYPES`).
    dose_e_per_A2 : float, optional
        Dose of the fitted image, e⁻/Å² (default ``attrs["dose_e_per_A2"]``).
    voltage_kV : float, optional
        Beam energy, kV (default ``attrs["voltage_kV"]``, the image's where its file said;
        300 without it).
    detector_mrad : (inner, outer)
        Annular detector of the image, one of
        :data:`perovstem.simulate.scs.DETECTORS_MRAD`.
    termination : {"CsBr", "PbBr2"}
        Faces of the slabs (see :func:`slab_atoms`).
    lattice_A : float
        Lattice parameter, Å.
    cd_fraction : float
        Cd fraction of the Pb–B columns (:func:`with_cd_fraction`).
    n_realizations : int
        Noise realisations per thickness.
    rng : int
        Seed of the library's noise (cached per argument set).

    Returns
    -------
    dict of DataFrame
        ``{type: DataFrame[n_atoms, scs_A2, scs_sd_A2]}`` as :func:`fitted_scs_library`.

    Raises
    ------
    DataError
        When the table lacks the attrs the library needs, or was not measured by a fit the
        library can reproduce (cross-sections not normalised, per-column or fixed widths, a
        non-constant background, a probe-tail model, Poisson fitting), naming the attr and
        its value.
    ParameterError
        For a type without a fitted library, or a bad option.
    """
    refuse_text_numbers(locals())
    from perovstem.errors import DataError

    a = columns.attrs if isinstance(columns, pd.DataFrame) else {}
    need = [k for k in ("pixel_size_A", "image_shape", "width") if a.get(k) is None]
    if need:
        raise DataError(
            f"a fitted library needs the conditions of the column fit, but the `columns` table "
            f"has no attrs {need} (the output of fit_columns has them; a CSV copy loses them, "
            "a parquet table keeps them)"
        )
    units = str(a.get("scs_units", "fraction"))
    if not units.startswith("fraction"):
        raise DataError(
            f"the cross-sections are in {units!r}, not in Å² of the incident beam: normalise "
            "the image before fitting, as the library's slabs are (`perovstem atoms fit "
            "--normalize`; perovstem.atoms.normalize_image)"
        )
    bad = []
    if a["width"] != "type":
        bad.append(f"width = {a['width']!r} (the library fits one width per type)")
    bg = a.get("background") or {}
    if isinstance(bg, dict) and bg.get("model", "constant") != "constant":
        bad.append(f"background = {bg.get('model')!r} (the library's is constant)")
    if a.get("psf_tail") is not None:
        bad.append("a psf_tail model (the library fits Gaussian columns only)")
    noise = str(a.get("noise", "gaussian"))
    if noise not in ("gaussian", "poisson"):
        bad.append(f"noise = {noise!r} (the library fits by least squares or Poisson likelihood)")
    if bad:
        raise DataError(
            "the `columns` table was fitted with " + "; ".join(bad) + ": a fitted library "
            "cannot reproduce that fit.  Fit with width='type', a constant background and "
            "Gaussian noise, or count with the tabulated library (perovstem.simulate."
            "scs_library)"
        )
    dose = dose_e_per_A2 if dose_e_per_A2 is not None else a.get("dose_e_per_A2")
    if dose is None:
        raise DataError(
            "a fitted library needs the dose of the fitted image (the fit's noise bias: at "
            "10^3 e/A^2 it reads Cs columns 7 % low): the `columns` table has no "
            "attrs['dose_e_per_A2']; give dose_e_per_A2"
        )
    present = (
        [str(t) for t in pd.unique(columns["type"].astype(str))]
        if "type" in columns.columns
        else []
    )
    want = [t for t in LIBRARY_TYPES if t in present] if types is None else list(types)
    unknown = [t for t in want if t not in LIBRARY_TYPES]
    if unknown or not want:
        raise ParameterError(
            f"no fitted library for the column types {unknown or present} (a CsPbBr3 [001] "
            f"slab has {list(LIBRARY_TYPES)})"
            + (
                "; a [011] or [111] fit is counted by the Gaussian mixture alone, without a library"
                if any(str(t).endswith(("_011", "_111")) for t in (unknown or present))
                else ""
            )
        )
    n_b = int((columns["type"].astype(str) == "PbBr").sum()) if present else 0
    n_cells = int(np.clip(np.rint(np.sqrt(n_b)), 3, 12)) if n_b else 8
    if voltage_kV is None:
        voltage_kV = float(a.get("voltage_kV") or 300.0)
    tabs = fitted_scs_library(
        max_atoms,
        pixel_size_A=float(a["pixel_size_A"]),
        dose_e_per_A2=float(dose),
        voltage_kV=voltage_kV,
        detector_mrad=detector_mrad,
        termination=termination,
        lattice_A=lattice_A,
        n_cells=n_cells,
        shape=(int(a["image_shape"][0]), int(a["image_shape"][1])),
        n_realizations=n_realizations,
        width="frame",
        fit_positions=bool(a.get("fit_positions", True)),
        rng=rng,
        noise=noise,  # (a Poisson fit was refused: its per-type bias is repeated now)
    )
    kw = {"voltage_kV": voltage_kV, "detector_mrad": detector_mrad}
    return {t: with_cd_fraction(tabs[t], t, cd_fraction, **kw) for t in want}


# counts of each column type in a slab of t cells: t + offset (see slab_atoms)
_COUNT_OFFSET = {"CsBr": {"PbBr": 0, "Br": 0, "Cs": 1}, "PbBr2": {"PbBr": 1, "Br": 1, "Cs": 0}}


@functools.lru_cache(maxsize=16)
def _cached_library(
    max_atoms: int,
    dx: float,
    dose: float | None,
    voltage_kV: float,
    probe_sigma_A: float | None,
    tail_fraction: float | None,
    detector_mrad: tuple[float, float],
    termination: str,
    lattice_A: float,
    n_cells: int,
    shape: tuple[int, int] | None,
    n_real: int,
    ref_thickness: int,
    width_dose: float | None,
    width: str,
    fit_positions: bool,
    max_iter: int,
    seed: int,
    vacuum: bool = True,
    noise: str = "gaussian",
) -> dict[str, pd.DataFrame]:
    gen = np.random.default_rng(seed)
    off = _COUNT_OFFSET[termination]
    vals = {t: np.zeros(max_atoms + 1) for t in LIBRARY_TYPES}
    sds = {t: np.zeros(max_atoms + 1) for t in LIBRARY_TYPES}
    imaging = {
        "pixel_size_A": dx,
        "voltage_kV": voltage_kV,
        "probe_sigma_A": probe_sigma_A,
        "tail_fraction": tail_fraction,
        "shape": shape,
        "detector_mrad": detector_mrad,
    }
    field_only = not vacuum

    def fits(thickness: int, fit_kw: dict[str, Any], noisy: bool) -> pd.DataFrame:
        atoms = slab_atoms(n_cells, thickness, termination=termination, lattice_A=lattice_A)
        d = dose if noisy else None
        runs = [
            _fit_slab(atoms, lattice_A, d, imaging, fit_kw, gen, field_only)
            for _ in range(n_real if d is not None else 1)
        ]
        return pd.concat(runs, ignore_index=True)

    fit_kw: dict[str, Any] = {"fit_positions": fit_positions, "max_iter": max_iter}
    if noise != "gaussian":
        fit_kw["noise"] = noise
    rho: dict[str, float] = {}
    if width == "series":  # ρ per type as the analysis takes it from its first frames
        atoms = slab_atoms(
            n_cells, min(max_atoms, ref_thickness), lattice_A=lattice_A, termination=termination
        )
        wd = dose if width_dose is None else width_dose
        runs = [
            _slab_image(atoms, lattice_A, wd, imaging, gen, field_only)
            for _ in range(n_real if dose is not None else 1)
        ]
        per_run = [type_widths(img, sites, max_iter=max_iter) for img, sites in runs]
        rho = {t: float(np.mean([r[t] for r in per_run])) for t in per_run[0]}
        fit_kw.update(width="fixed", rho_A=rho)
    # with widths and positions held the fit is linear in the heights: least squares is
    # unbiased and the noise-free image gives the expected fitted SCS exactly
    linear = width == "series" and not fit_positions and noise == "gaussian"
    for t in range(max_atoms + 1):
        want = {typ: t + o for typ, o in off.items() if 1 <= t + o <= max_atoms}
        if not want:
            continue
        f = fits(t, fit_kw, not linear)
        for typ, n in want.items():
            v = f.loc[f["type"] == typ, "scs"].to_numpy(float)
            vals[typ][n] = v.mean()
            sds[typ][n] = v.std(ddof=1) if v.size > 1 else 0.0
    attrs = {
        "source": "fitted",
        "estimator": "fit_columns (Gaussian columns, width per type, constant background"
        + (", Poisson likelihood)" if noise == "poisson" else ")"),
        "noise": noise,
        "dose_e_per_A2": dose,
        "termination": termination,
        "lattice_A": lattice_A,
        "n_cells": n_cells,
        "n_realizations": n_real,
        "width": width,
        "width_dose_e_per_A2": width_dose,
        "rho_A": rho,
        "fit_positions": fit_positions,
        "max_iter": max_iter,
        "vacuum": vacuum,
        **imaging,
    }
    out = {}
    for typ in LIBRARY_TYPES:
        df = pd.DataFrame(
            {"n_atoms": np.arange(max_atoms + 1), "scs_A2": vals[typ], "scs_sd_A2": sds[typ]}
        )
        df.attrs.update(attrs, column_type=typ)
        out[typ] = df
    return out


def type_widths(image: Any, sites: pd.DataFrame, *, max_iter: int = 30) -> dict[str, float]:
    """Gaussian width ρ (Å) of every column type: median of per-column widths at the sites.

    ``fit_columns(image, sites, width="column", fit_positions=False)``, then the median ρ
    of each type.  Positions held at the sites keep the noise from narrowing the widths
    (free positions follow noise peaks), and the median keeps a few disturbed columns (an
    unmodelled Pb⁰ atom beside a Br column) from widening the width of the whole type, as
    a least-squares width shared by the type would.

    Parameters
    ----------
    image : Image
        Normalised image (:func:`perovstem.atoms.normalize_image`).
    sites : DataFrame
        ``x_A, y_A, type``.
    max_iter : int
        Fit sweeps.

    Returns
    -------
    dict
        ``{type: ρ_A}``.
    """
    from perovstem.atoms.fit import fit_columns

    kw = {"max_iter": int(max_iter), "joint": False, "parallel": False}
    fit = fit_columns(image, sites, width="column", fit_positions=False, **kw)
    return {str(t): float(v) for t, v in fit.groupby("type")["rho_A"].median().items()}


def _slab_image(
    atoms: Any,
    lattice_A: float,
    dose: float | None,
    imaging: dict[str, Any],
    gen: np.random.Generator,
    field_only: bool = False,
) -> tuple[Any, pd.DataFrame]:
    """Normalised fast-model image of a slab and its column sites ``x_A, y_A, type``.

    Types by site: Cs on the cell corners, Pb–B at the cell centres, Br on the edges; empty
    sites are left out, and with ``field_only`` (a slab larger than the field) the sites
    outside the field (or closer than half a pixel to its border).
    """
    from perovstem.atoms.normalize import normalize_image
    from perovstem.simulate import haadf_image

    img, _ = haadf_image(
        atoms,
        dose_e_per_A2=1.0 if dose is None else dose,
        noise=dose is not None,
        rng=gen,
        **imaging,
    )
    xy = np.unique(np.round(atoms.positions[:, :2], 6), axis=0)
    i, j = np.rint(xy / (0.5 * lattice_A)).astype(int).T  # site indices in half cells
    typ = np.where(i % 2 == 0, np.where(j % 2 == 0, "Cs", "Br"), np.where(j % 2 == 0, "Br", "PbBr"))
    ox, oy = img.metadata["lab_origin_A"]
    sites = pd.DataFrame({"x_A": xy[:, 0] - ox, "y_A": xy[:, 1] - oy, "type": typ})
    if field_only:
        lx, ly = img.data.shape[1] * img.pixel_size_A, img.data.shape[0] * img.pixel_size_A
        h = 0.5 * img.pixel_size_A
        x, y = sites["x_A"], sites["y_A"]
        sites = sites[(x > h) & (x < lx - h) & (y > h) & (y < ly - h)].reset_index(drop=True)
    return normalize_image(img), sites


def _fit_slab(
    atoms: Any,
    lattice_A: float,
    dose: float | None,
    imaging: dict[str, Any],
    fit_kw: dict[str, Any],
    gen: np.random.Generator,
    field_only: bool = False,
) -> pd.DataFrame:
    """Image a slab and fit it as the analysis fits a frame: ``type, scs``."""
    from perovstem._validation import internal_fits
    from perovstem.atoms.fit import fit_columns

    img, sites = _slab_image(atoms, lattice_A, dose, imaging, gen, field_only)
    typ = sites["type"].to_numpy()
    if "rho_A" in fit_kw:  # fixed widths of the types present (a CsBr layer has no Br edge)
        fit_kw = {**fit_kw, "rho_A": {t: r for t, r in fit_kw["rho_A"].items() if t in typ}}
    with internal_fits():  # (a slab's misfit at high dose is not the user's)
        fit = fit_columns(img, sites, joint=False, parallel=False, **fit_kw)
    return pd.DataFrame({"type": typ, "scs": fit["scs"].to_numpy(float)})
