"""Column scattering cross-sections (SCS) from the shipped abTEM calibration table.

The table ``data/scs_abtem.csv`` holds raw abTEM frozen-phonon results (see its header and
``benchmarks/calibrate_scs_abtem.py``): Voronoi-integrated SCS(N) of the [001] Pb–Br, Cs, Br,
Cd–Br (fully Cd-substituted) columns, of metallic fcc Pb [001] columns, and of isolated atoms,
for each beam energy.  HAADF SCS is *not* Z^n·N: channelling makes SCS(N) super-linear
(notes §3.3).  We therefore describe a column as

    SCS = Σ_atoms σ_atom · E_T(N_eq)

with σ_atom the isolated-atom SCS, T the reference column type (Pb–B site columns, Cs, Br,
metallic Pb), N_eq = Σσ_atom / σ_repeat the number of equivalent repeats and
E_T(N) = SCS_T(N) / (N σ_repeat) the channelling enhancement of the calibrated column.  Cd on
Pb sites mixes E_PbBr and E_CdBr linearly in the Cd fraction; metallic Pb atoms (Pb⁰) in a
column add their own SCS_Pb(n_Pb0) (additive approximation).  For mistilted crystals the
enhancement decays as 1 + (E − 1) exp(−(θ/θ_c)²), θ_c = 1° [estimate].

The Voronoi values of a periodic slab contain probe-tail cross-talk from the neighbouring
columns.  At load time they are *deconvolved* with the fast model's own PSF (solve
V = M·S per thickness, M the Voronoi overlap matrix of the PSF on the periodic cell), so that
rendering the table SCS with :func:`perovstem.simulate.haadf_image` and integrating Voronoi
cells gives back the abTEM numbers.  ``scs_A2`` of the truth table is therefore the total
(probe-integrated) cross-section of the column in isolation, E et al., Ultramicroscopy 133,
109 (2013).
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd

from perovstem._validation import check_choice, check_positive, check_range, refuse_text_numbers
from perovstem.errors import FileFormatError, ParameterError
from perovstem.simulate.probe import THERMAL_SIGMA_A, default_probe, psf_radial

__all__ = [
    "COLUMN_TYPES",
    "load_table",
    "atom_scs",
    "column_scs",
    "scs_table",
    "scs_library",
    "fast_model_voronoi",
    "MISTILT_THETA_C_DEG",
    "DETECTORS_MRAD",
]

COLUMN_TYPES = ("PbBr", "Cs", "Br", "Pb")
MISTILT_THETA_C_DEG = 1.0
A_CUBIC_A = 5.87
_REF_TYPES = ("PbBr", "CdBr", "Cs", "Br", "Pb")
# layers of (Pb, apical Br, edge Br, Cs) of a [001] crystal of t cells, minus t
_TERMINATION_LAYERS = {"mixed": (0, 0, 0, 0), "CsBr": (0, 1, 0, 1), "PbBr2": (1, 0, 1, 0)}
_REPEAT = {  # atoms per repeat of each reference column type
    "PbBr": {"Pb": 1, "Br": 1},
    "CdBr": {"Cd": 1, "Br": 1},
    "Cs": {"Cs": 1},
    "Br": {"Br": 1},
    "Pb": {"Pb": 1},
}


# one table per annular detector (inner, outer mrad), all of the same abTEM runs (every
# configuration was scanned onto both)
_TABLE_FILES = {(65.0, 200.0): "data/scs_abtem.csv", (65.0, 131.0): "data/scs_abtem_65-131.csv"}
#: annular detectors (inner, outer mrad) of the shipped calibration; the first is the default
DETECTORS_MRAD = tuple(_TABLE_FILES)


def nearest_detector(detector_mrad: Any, tolerance: float = 0.1) -> tuple[float, float] | None:
    """The calibrated detector whose inner and outer angles are both within ``tolerance``
    (relative) of ``detector_mrad``'s, else None."""
    inner, outer = (float(v) for v in detector_mrad)
    for d in DETECTORS_MRAD:
        if abs(inner - d[0]) <= tolerance * d[0] and abs(outer - d[1]) <= tolerance * d[1]:
            return d
    return None


def _check_detector(detector_mrad: Any) -> tuple[float, float]:
    """``detector_mrad`` as one of :data:`DETECTORS_MRAD` (a hashable tuple)."""
    try:
        inner, outer = (float(v) for v in detector_mrad)
    except (TypeError, ValueError):
        inner = outer = float("nan")
    for det in DETECTORS_MRAD:
        if abs(inner - det[0]) < 1e-6 and abs(outer - det[1]) < 1e-6:
            return det
    raise ParameterError(
        f"`detector_mrad` must be one of the calibrated detectors "
        f"{[list(d) for d in DETECTORS_MRAD]} (inner, outer mrad), got {detector_mrad!r}"
    )


@functools.lru_cache(maxsize=4)
def load_table(detector_mrad: tuple[float, float] = (65.0, 200.0)) -> pd.DataFrame:
    """The raw abTEM calibration table (of the 65–200 mrad detector unless another of
    :data:`DETECTORS_MRAD` is asked for).

    Columns: voltage_kV, semiangle_mrad, inner_mrad, outer_mrad, column_type, n, repeat_A,
    scs_voronoi_A2 (Å²), se_A2 (standard error over frozen-phonon configurations, Å²),
    configs, ndiv (points per cell edge of the Voronoi integration grid; 0 where the value is
    a total).  Conditions and the run are documented in the CSV header, ``data/README.md``
    and ``benchmarks/results/calibrate_scs_abtem.json``.
    """
    name = _TABLE_FILES[_check_detector(detector_mrad)]
    try:
        ref = resources.files("perovstem.simulate").joinpath(name)
        with ref.open("r") as fh:
            df = pd.read_csv(fh, comment="#")
    except (OSError, pd.errors.ParserError) as exc:  # pragma: no cover - packaging error
        raise FileFormatError(f"cannot read the shipped SCS table {name}: {exc}") from None
    return df


def voltages() -> list[float]:
    """Beam energies (kV) available in the shipped table."""
    return sorted(float(v) for v in load_table()["voltage_kV"].unique())


def _check_voltage(voltage_kV: float) -> float:
    v = check_positive("voltage_kV", voltage_kV)
    avail = voltages()
    for a in avail:
        if abs(a - v) < 1e-6:
            return a
    raise ParameterError(
        f"`voltage_kV` must be one of the calibrated energies {avail} kV, got {voltage_kV!r}"
    )


@functools.lru_cache(maxsize=8)
def atom_scs(
    voltage_kV: float = 300.0, detector_mrad: tuple[float, float] = (65.0, 200.0)
) -> dict[str, float]:
    """Isolated-atom SCS (Å²) of Pb, Cd, Cs, Br at ``voltage_kV`` on the detector
    ``detector_mrad`` (one of :data:`DETECTORS_MRAD`; default 65–200 mrad HAADF)."""
    v = _check_voltage(voltage_kV)
    t = load_table(_check_detector(detector_mrad))
    t = t[(t["voltage_kV"] == v) & t["column_type"].str.startswith("atom_")]
    out = {r.column_type[5:]: float(r.scs_voronoi_A2) for r in t.itertuples()}
    out["Pb0"] = out["Pb"]
    return out


def _voronoi_matrix(voltage_kV: float, n_div: int = 20) -> np.ndarray:
    """(4, 4) Voronoi overlap matrix of the fast PSF on the periodic [001] perovskite cell.

    Sites (Pb–Br, Br, Br, Cs) at (0, 0), (a/2, 0), (0, a/2), (a/2, a/2); M[c, c'] is the
    fraction of column c' (with all periodic images) collected in the Voronoi cell of c,
    sampled on the same n_div × n_div scan grid as the abTEM calibration.
    """
    a = A_CUBIC_A
    probe = default_probe(voltage_kV)
    sites = np.array([(0.0, 0.0), (a / 2, 0.0), (0.0, a / 2), (a / 2, a / 2)])
    therm = [
        THERMAL_SIGMA_A["Pb"],
        THERMAL_SIGMA_A["Br"],
        THERMAL_SIGMA_A["Br"],
        THERMAL_SIGMA_A["Cs"],
    ]
    g = np.arange(n_div) * a / n_div
    X, Y = np.meshgrid(g, g, indexing="ij")
    # Voronoi weights (ties shared), periodic
    d2 = np.full((4, n_div, n_div), np.inf)
    for s, (sx, sy) in enumerate(sites):
        for ox in (-a, 0.0, a):
            for oy in (-a, 0.0, a):
                d2[s] = np.minimum(d2[s], (X - sx - ox) ** 2 + (Y - sy - oy) ** 2)
    w = (d2 <= d2.min(axis=0) + 1e-9).astype(float)
    w /= w.sum(axis=0)
    reps = int(np.ceil(probe.tail_radius_A / a)) + 1
    m = np.zeros((4, 4))
    for c2, (sx, sy) in enumerate(sites):
        img = np.zeros_like(X)
        for i in range(-reps, reps + 1):
            for j in range(-reps, reps + 1):
                r = np.hypot(X - sx - i * a, Y - sy - j * a)
                img += psf_radial(r, probe, therm[c2])
        m[:, c2] = np.einsum("ij,sij->s", img, w) * (a / n_div) ** 2
    return m


@functools.lru_cache(maxsize=8)
def _deconvolved(
    voltage_kV: float, detector_mrad: tuple[float, float] = (65.0, 200.0)
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per reference type: (n, SCS(n)) after removing the fast-model cross-talk."""
    v = _check_voltage(voltage_kV)
    t = load_table(detector_mrad)
    t = t[t["voltage_kV"] == v]
    raw = {
        ct: t[t["column_type"] == ct].sort_values("n")[["n", "scs_voronoi_A2"]].to_numpy()
        for ct in _REF_TYPES
        if (t["column_type"] == ct).any()
    }
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if {"PbBr", "Cs", "Br"} <= set(raw):
        pk = t[t["column_type"] == "PbBr"]
        n_div = int(pk["ndiv"].iloc[0]) if "ndiv" in pk.columns else 20
        minv = np.linalg.inv(_voronoi_matrix(v, n_div))
        n = raw["PbBr"][:, 0]
        cs = np.interp(n, raw["Cs"][:, 0], raw["Cs"][:, 1])
        br = np.interp(n, raw["Br"][:, 0], raw["Br"][:, 1])
        for key in ("PbBr", "CdBr"):
            if key not in raw:
                continue
            b = np.interp(n, raw[key][:, 0], raw[key][:, 1])
            s = minv @ np.vstack([b, br, br, cs])
            out[key] = (n, s[0])
            if key == "PbBr":
                out["Br"] = (n, 0.5 * (s[1] + s[2]))
                out["Cs"] = (n, s[3])
    if "Pb" in raw:  # equivalent columns: Voronoi integration is exact by symmetry
        out["Pb"] = (raw["Pb"][:, 0], raw["Pb"][:, 1])
    return out


def _enhancement(
    ref: str,
    n_eq: np.ndarray,
    voltage_kV: float,
    detector_mrad: tuple[float, float] = (65.0, 200.0),
) -> np.ndarray:
    """Channelling enhancement E_T(N) = SCS_T(N) / (N σ_repeat) at (fractional) N."""
    sig = atom_scs(voltage_kV, detector_mrad)
    rep = sum(sig[el] * k for el, k in _REPEAT[ref].items())
    tab = _deconvolved(voltage_kV, detector_mrad)
    if ref not in tab:
        ref_fallback = {"CdBr": "PbBr", "Pb": "PbBr"}.get(ref)
        if ref_fallback is None or ref_fallback not in tab:
            return np.ones_like(n_eq)
        # no calibration for this type: use the enhancement of the Pb–Br column
        return _enhancement(ref_fallback, n_eq, voltage_kV, detector_mrad)
    n, s = tab[ref]
    e = s / (n * rep)
    x = np.asarray(n_eq, dtype=float)
    out = np.interp(x, n, e)  # constant below n[0]
    hi = x > n[-1]
    if hi.any():  # beyond the table: SCS continues linearly with its last slope
        k = min(4, len(n) - 1)
        slope = (s[-1] - s[-1 - k]) / (n[-1] - n[-1 - k])
        out[hi] = (s[-1] + slope * (x[hi] - n[-1])) / (x[hi] * rep)
    return out


def column_scs(
    n_Pb: np.ndarray,
    n_Cd: np.ndarray,
    n_Br: np.ndarray,
    n_Cs: np.ndarray,
    n_Pb0: np.ndarray | None = None,
    *,
    voltage_kV: float = 300.0,
    mistilt_deg: float = 0.0,
    detector_mrad: tuple[float, float] = (65.0, 200.0),
) -> np.ndarray:
    """SCS (Å²) of columns of given composition (arrays broadcast together).

    Parameters
    ----------
    n_Pb, n_Cd, n_Br, n_Cs : array_like
        Host ions in each column (Pb²⁺, Cd²⁺, Br⁻, Cs⁺).
    n_Pb0 : array_like, optional
        Metallic Pb atoms (adatoms, clusters) in each column.
    voltage_kV : float
        A calibrated beam energy (see :func:`voltages`).
    mistilt_deg : float
        Crystal tilt away from the zone axis; reduces the channelling enhancement.
    detector_mrad : (inner, outer)
        Annular detector, one of :data:`DETECTORS_MRAD` (65–200 mrad, or 65–131 mrad: the
        same abTEM runs integrated to 131 mrad, ×0.82–0.86 per column).

    Returns
    -------
    ndarray
        SCS in Å² (fraction of the incident beam on the detector × Å²).
    """
    refuse_text_numbers(locals())
    v = _check_voltage(voltage_kV)
    det = _check_detector(detector_mrad)
    sig = atom_scs(v, det)
    pb, cd, br, cs = (np.asarray(a, dtype=float) for a in (n_Pb, n_Cd, n_Br, n_Cs))
    pb0 = np.zeros_like(pb) if n_Pb0 is None else np.asarray(n_Pb0, dtype=float)
    pb, cd, br, cs, pb0 = np.broadcast_arrays(pb, cd, br, cs, pb0)
    for name, arr in (("n_Pb", pb), ("n_Cd", cd), ("n_Br", br), ("n_Cs", cs), ("n_Pb0", pb0)):
        if np.any(arr < 0) or not np.all(np.isfinite(arr)):
            raise ParameterError(f"`{name}` must be finite and >= 0, got {arr[arr < 0][:3]!r}")
    damp = np.exp(-((float(mistilt_deg) / MISTILT_THETA_C_DEG) ** 2))

    def enh(ref, n_eq):
        e = _enhancement(ref, n_eq, v, det)
        return 1.0 + (e - 1.0) * damp

    host = pb * sig["Pb"] + cd * sig["Cd"] + br * sig["Br"] + cs * sig["Cs"]
    out = np.zeros(pb.shape)
    b = pb + cd
    f_cd = np.divide(cd, b, out=np.zeros_like(b), where=b > 0)
    isb = b > 0
    if isb.any():
        rep = (1 - f_cd[isb]) * sig["Pb"] + f_cd[isb] * sig["Cd"] + sig["Br"]
        n_eq = host[isb] / rep
        e = (1 - f_cd[isb]) * enh("PbBr", n_eq) + f_cd[isb] * enh("CdBr", n_eq)
        out[isb] = host[isb] * e
    iscs = ~isb & (cs > 0)
    if iscs.any():
        out[iscs] = host[iscs] * enh("Cs", host[iscs] / sig["Cs"])
    isbr = ~isb & ~iscs & (br > 0)
    if isbr.any():
        out[isbr] = host[isbr] * enh("Br", host[isbr] / sig["Br"])
    m = pb0 > 0
    if m.any():
        out[m] += pb0[m] * sig["Pb0"] * enh("Pb", pb0[m])
    return out


def scs_table(
    column_type: str,
    n_atoms,
    *,
    voltage_kV: float = 300.0,
    cd_fraction: float = 0.0,
    detector_mrad: tuple[float, float] = (65.0, 200.0),
) -> np.ndarray:
    """True SCS (Å²) of ideal [001] columns from the abTEM-calibrated table.

    Parameters
    ----------
    column_type : {"PbBr", "Cs", "Br", "Pb"}
        "PbBr": Pb/Cd–Br column of CsPbBr3 [001], ``n_atoms`` = unit cells (one B cation and
        one Br each); "Cs", "Br": single-species columns, one atom per cell; "Pb": metallic
        fcc Pb [001] column, one atom per 4.95 Å.
    n_atoms : int or array_like
        Counting unit per column (≥ 0; see above).
    voltage_kV : float
        Calibrated beam energy (300 or 200 kV).
    cd_fraction : float
        Cd fraction x on the B sites (only for "PbBr").
    detector_mrad : (inner, outer)
        Annular detector, one of :data:`DETECTORS_MRAD`.

    Returns
    -------
    ndarray
        SCS in Å², same shape as ``n_atoms`` (0 for 0 atoms).
    """
    refuse_text_numbers(locals())
    check_choice("column_type", column_type, COLUMN_TYPES)
    x = check_range("cd_fraction", cd_fraction, 0.0, 1.0)
    n = np.asarray(n_atoms, dtype=float)
    if np.any(n < 0) or not np.all(np.isfinite(n)):
        raise ParameterError(f"`n_atoms` must be finite and >= 0, got {n_atoms!r}")
    z = np.zeros_like(n)
    kw = {"voltage_kV": voltage_kV, "detector_mrad": detector_mrad}
    if column_type == "PbBr":
        return column_scs(n * (1 - x), n * x, n, z, **kw)
    if column_type == "Cs":
        return column_scs(z, z, z, n, **kw)
    if column_type == "Br":
        return column_scs(z, z, n, z, **kw)
    return column_scs(z, z, z, z, n, **kw)


def scs_library(
    column_type: str,
    max_atoms: int,
    *,
    voltage_kV: float = 300.0,
    cd_fraction: float = 0.0,
    integration: str = "total",
    termination: str = "mixed",
    detector_mrad: tuple[float, float] = (65.0, 200.0),
) -> pd.DataFrame:
    """Library of SCS against counts, 0 … ``max_atoms`` (StatSTEM-style library counting).

    Parameters
    ----------
    column_type : {"PbBr", "Cs", "Br", "Pb"}
        Column type (counting units as in :func:`scs_table`).
    max_atoms : int
        Largest count.
    voltage_kV : float
        Calibrated beam energy (300 or 200 kV).
    cd_fraction : float
        Cd fraction on the B sites ("PbBr" only).
    integration : {"total", "voronoi"}
        ``"total"``: the column's own probe-integrated cross-section (:func:`scs_table`, the
        table deconvolved of neighbour cross-talk) — what a Gaussian fit with a probe-tail
        model, or a column in vacuum, measures.  ``"voronoi"``: the Voronoi-cell SCS of the
        column inside a CsPbBr₃ [001] crystal of the same thickness (the abTEM periodic-slab
        numbers, cross-talk included), i.e. what
        :func:`perovstem.atoms.voronoi_intensities` measures on a normalised image of a
        crystal that fills the field (E et al., Ultramicroscopy 133 (2013) 109).  For
        "Pb" (metallic fcc columns) both are the same.
    termination : {"mixed", "CsBr", "PbBr2"}
        Which [001] layers end the crystal on its entrance and exit faces (ignored for "Pb").
        ``"CsBr"`` (both faces CsBr, usual for CsPbBr₃ nanocrystals and the default of
        :func:`perovstem.simulate.nanocrystal`): a crystal of ``t`` cells has ``t`` PbBr₂ and
        ``t + 1`` CsBr layers, so a Pb–Br column of ``n`` Pb holds ``n + 1`` Br (the apical
        Br sit in the CsBr layers) and a Cs column of ``n`` Cs sits in a crystal of
        ``n − 1`` cells.  ``"PbBr2"``: the reverse (``n`` Pb with ``n − 1`` Br; ``n`` Cs in
        ``n + 1`` PbBr₂ layers).  ``"mixed"`` (one face of each, the default, the earlier
        library): every column of a crystal holds the same number of layers.  Counts keep
        their units (Pb atoms, Cs atoms, Br atoms of the edge columns), so the offsets match
        :func:`perovstem.atoms.thickness_from_neighbours` (``offset`` −1, +1, 0).  The
        termination changes the total SCS of "PbBr" columns (their Br) and, with
        ``integration="voronoi"``, every type (the neighbours' counts).  ``n = 0`` is an
        empty column (SCS 0) for every termination.
    detector_mrad : (inner, outer)
        Annular detector of the image, one of :data:`DETECTORS_MRAD` (65–200 or 65–131
        mrad): cross-sections scale with it, and a library of another detector reads
        whole atoms off.

    Returns
    -------
    DataFrame
        Columns ``n_atoms`` (int) and ``scs_A2`` (float); attrs hold the conditions.
    """
    refuse_text_numbers(locals())
    m = int(check_positive("max_atoms", max_atoms))
    check_choice("integration", integration, ("total", "voronoi"))
    check_choice("termination", termination, tuple(_TERMINATION_LAYERS))
    n = np.arange(m + 1)
    if column_type != "Pb":
        check_choice("column_type", column_type, COLUMN_TYPES)
        x = check_range("cd_fraction", cd_fraction, 0.0, 1.0)
        # layers of each site (Pb, apical Br, edge Br, Cs) in the crystal that gives this
        # type n atoms: t = n − (the type's layers at t = 0)
        lay = np.array(_TERMINATION_LAYERS[termination])
        own = {"PbBr": 0, "Br": 2, "Cs": 3}[column_type]
        t = n.astype(float) - lay[own]
        pb, br_ap, br_edge, cs = (np.clip(t + d, 0.0, None) for d in lay)
        z = np.zeros_like(t)
        kw = {"voltage_kV": voltage_kV, "detector_mrad": detector_mrad}
        s_b = column_scs(pb * (1 - x), pb * x, br_ap, z, **kw)
        s_br = column_scs(z, z, br_edge, z, **kw)
        s_cs = column_scs(z, z, z, cs, **kw)
        if integration == "voronoi":
            v = _voronoi_matrix(_check_voltage(voltage_kV), 20) @ np.vstack([s_b, s_br, s_br, s_cs])
            scs = {"PbBr": v[0], "Br": 0.5 * (v[1] + v[2]), "Cs": v[3]}[column_type]
        else:
            scs = {"PbBr": s_b, "Br": s_br, "Cs": s_cs}[column_type]
        scs = np.where(n == 0, 0.0, scs)
    else:
        scs = scs_table(
            column_type,
            n,
            voltage_kV=voltage_kV,
            cd_fraction=cd_fraction,
            detector_mrad=detector_mrad,
        )
    df = pd.DataFrame({"n_atoms": n, "scs_A2": scs})
    df.attrs.update(
        {
            "column_type": column_type,
            "voltage_kV": float(voltage_kV),
            "semiangle_mrad": 20.0,
            "detector_mrad": _check_detector(detector_mrad),
            "cd_fraction": float(cd_fraction),
            "integration": integration,
            "termination": termination,
            "source": "abTEM frozen-phonon calibration (perovstem/simulate/"
            + _TABLE_FILES[_check_detector(detector_mrad)]
            + ")",
        }
    )
    return df


def fast_model_voronoi(
    column_type: str, n, *, voltage_kV: float = 300.0, n_div: int = 20
) -> np.ndarray:
    """Voronoi SCS that the fast model gives on the periodic [001] slab of ``n`` cells.

    The model ``M · S`` (PSF overlap × deconvolved table, interpolated through the
    composition model) — to compare with abTEM's Voronoi numbers on the same cells.
    """
    n = np.asarray(n, dtype=float)
    if column_type == "Pb":
        return scs_table("Pb", n, voltage_kV=voltage_kV)
    m = _voronoi_matrix(_check_voltage(voltage_kV), n_div)
    z = np.zeros_like(n)
    cd = column_type == "CdBr"
    s_b = column_scs(z if cd else n, n if cd else z, n, z, voltage_kV=voltage_kV)
    s_br = column_scs(z, z, n, z, voltage_kV=voltage_kV)
    s_cs = column_scs(z, z, z, n, voltage_kV=voltage_kV)
    v = m @ np.vstack([s_b, s_br, s_br, s_cs])
    return {"PbBr": v[0], "CdBr": v[0], "Br": 0.5 * (v[1] + v[2]), "Cs": v[3]}[column_type]
