"""Library (simulation-based) and hybrid atom counting.

*Library counting* assigns each column the number of atoms whose simulated cross-section is
nearest (LeBeau et al., Nano Lett. 10 (2010) 4405; E et al., Ultramicroscopy 133 (2013) 109;
StatSTEM's ``matchLib``).  *Hybrid counting* follows De wael et al., Ultramicroscopy 177 (2017)
69: a Gaussian mixture whose component locations are the library values times one common
scale ``c`` (absorbing detector-normalisation mismatch), with one shared width and free
proportions, estimated by EM; counts are the maximum-posterior components.  The same
emission model is used by the time-series HMM (:mod:`perovstem.atoms.hmm`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from perovstem._validation import refuse_text_numbers
from perovstem.atoms.count import (
    _as_scs,
    _check_scale_prior,
    _fallback_scales,
    _identifiable,
    _offset_mixture,
    _scale_penalty,
    _scale_posterior,
    _shared_scale_choice,
    _table_input,
    _warn_offset,
)
from perovstem.errors import DataError, ParameterError

__all__ = [
    "as_library",
    "count_library",
    "count_hybrid",
    "HybridFit",
    "fit_hybrid",
    "start_scale_from_types",
]


def as_library(
    library: Any,
    *,
    column_type: str | None = None,
    max_atoms: int = 60,
    voltage_kV: float = 300.0,
    integration: str = "total",
    termination: str = "mixed",
    cd_fraction: float = 0.0,
    detector_mrad: tuple[float, float] = (65.0, 200.0),
) -> tuple[np.ndarray, np.ndarray]:
    """Normalise a SCS library to ``(n_atoms, scs)`` arrays sorted by ``n_atoms``.

    Parameters
    ----------
    library : DataFrame, ndarray, dict or "simulate"
        ``DataFrame[n_atoms, scs_A2]`` (or columns ``n_atoms, scs``); an ``(n, 2)`` array
        ``(n_atoms, scs)``; a 1-D array of SCS for 1, 2, ... atoms (StatSTEM's ``.txt``
        libraries); a dict ``{type: library}`` (then ``column_type`` picks one); or the string
        ``"simulate"`` to take :func:`perovstem.simulate.scs_library` for ``column_type``.
    column_type : str, optional
    max_atoms : int
        Library length when simulating.
    voltage_kV : float
        Beam energy when simulating.
    integration : {"total", "voronoi"}
        Which simulated SCS ``"simulate"`` takes (see
        :func:`perovstem.simulate.scs_library`): the column's total cross-section, or its
        Voronoi-cell SCS inside a crystal (to match :func:`perovstem.atoms.voronoi_intensities`).
    termination : {"mixed", "CsBr", "PbBr2"}
        Surface layers of the crystal that ``"simulate"`` assumes (see
        :func:`perovstem.simulate.scs_library`; ``"CsBr"`` for usual CsPbBr₃ nanocrystals,
        ``"mixed"`` = one CsBr and one PbBr₂ face, every column the same number of layers).
    cd_fraction : float
        Cd fraction x on the B sites that ``"simulate"`` assumes (0 … 1; it lowers the Pb–Br
        cross-sections and, with Voronoi integration, the cross-talk into the other types).
    detector_mrad : (inner, outer)
        Annular detector when simulating (one of
        :data:`perovstem.simulate.scs.DETECTORS_MRAD`).

    Returns
    -------
    n_atoms : ndarray of int, shape (L,)
    scs : ndarray of float, shape (L,)
    """
    refuse_text_numbers(locals())
    if isinstance(library, dict):
        if column_type not in library:
            raise ParameterError(
                f"`library` has no entry for column type {column_type!r}; has {sorted(library)}"
            )
        library = library[column_type]
    if isinstance(library, str):
        if library != "simulate":
            raise ParameterError(
                f"`library` must be a table, an array or 'simulate', got {library!r}"
            )
        from perovstem.simulate import scs_library

        library = scs_library(
            column_type or "PbBr",
            max_atoms,
            voltage_kV=voltage_kV,
            integration=integration,
            termination=termination,
            cd_fraction=cd_fraction,
            detector_mrad=detector_mrad,
        )
    elif termination != "mixed" or cd_fraction != 0:
        # a user library fixes its own composition; silently ignoring these would count
        # with a library the user did not ask for
        raise ParameterError(
            f"`termination` ({termination!r}) and `cd_fraction` ({cd_fraction!r}) only apply "
            "to library='simulate'; build the library with them instead "
            "(perovstem.simulate.scs_library)"
        )
    if isinstance(library, pd.DataFrame):
        scol = next((c for c in ("scs_A2", "scs") if c in library.columns), None)
        if scol is None or "n_atoms" not in library.columns:
            raise DataError(
                f"`library` table needs columns 'n_atoms' and 'scs_A2', got {list(library.columns)}"
            )
        n = library["n_atoms"].to_numpy()
        v = library[scol].to_numpy(dtype=float)
    else:
        a = np.asarray(library, dtype=float)
        if a.ndim == 1:
            n, v = np.arange(1, a.size + 1), a
        elif a.ndim == 2 and a.shape[1] == 2:
            n, v = a[:, 0], a[:, 1]
        else:
            raise DataError(f"`library` must be 1-D or (n, 2), got shape {a.shape}")
    if v.size == 0:
        raise DataError("`library` is empty")
    if not np.all(np.isfinite(v)) or (v < 0).any():
        raise DataError("`library` SCS values must be finite and >= 0")
    if np.any(np.asarray(n) != np.round(n)):
        raise DataError("`library` n_atoms must be integers")
    n = np.asarray(np.round(n), dtype=np.int64)
    o = np.argsort(n)
    return n[o], v[o]


def _simulate_conditions(df: pd.DataFrame) -> dict[str, Any]:
    """The beam energy and detector ``library="simulate"`` takes for a table: those of its
    image where ``atoms fit`` recorded them (attrs ``voltage_kV``, ``detector_mrad``; the
    calibrated detector nearest the image's), else 300 kV and 65–200 mrad.  Before, the
    API's "simulate" took 300 kV and 65–200 mrad whatever the image (the CLI did not)."""
    from perovstem._data import voltage_kV_of
    from perovstem.atoms._conditions import library_detector

    kv = voltage_kV_of(df.attrs)
    return {"voltage_kV": 300.0 if kv is None else kv, "detector_mrad": library_detector(df.attrs)}


def _simulate_integration(df: pd.DataFrame) -> str:
    """``library="simulate"`` takes the SCS that the table's estimator measures: Voronoi-cell
    sums (:func:`perovstem.atoms.voronoi_intensities`) include the neighbours' cross-talk of
    a crystal, so they are compared with the Voronoi library, everything else with the total
    column cross-section."""
    return "voronoi" if df.attrs.get("scs_estimator") == "voronoi" else "total"


def _with_zero(n: np.ndarray, v: np.ndarray, include_zero: bool) -> tuple[np.ndarray, np.ndarray]:
    if include_zero and 0 not in n:
        return np.concatenate([[0], n]), np.concatenate([[0.0], v])
    return n, v


def count_library(
    scs: Any,
    library: Any,
    *,
    types: Any = None,
    scs_err: Any = None,
    include_zero: bool = True,
    scale: float = 1.0,
    termination: str = "mixed",
    cd_fraction: float = 0.0,
) -> pd.DataFrame:
    """Count atoms by the nearest simulated cross-section.

    Parameters
    ----------
    scs : array_like, shape (N,), or DataFrame
        Cross-sections (Å², i.e. normalised to the incident beam, for simulated libraries),
        or a table with ``scs``/``scs_A2`` and optionally ``type`` and ``scs_err``.
    library : see :func:`as_library`; a dict gives one library per column type.
        ``"simulate"`` takes :func:`perovstem.simulate.scs_library` with the integration
        that matches the table: ``integration="voronoi"`` for a table from
        :func:`perovstem.atoms.voronoi_intensities` (``attrs["scs_estimator"] ==
        "voronoi"``), the total cross-section otherwise.
    types : array_like of str, optional
    scs_err : array_like, shape (N,), optional
        Standard errors of the SCS (e.g. from the CRLB).  When given, each column also gets a
        posterior over counts (flat prior, Gaussian likelihood) and its mean/std.
    include_zero : bool
        Allow empty columns (prepend ``L_0 = 0``, as StatSTEM does).
    scale : float
        Multiply the library by this factor (detector normalisation).
    termination, cd_fraction : str, float
        Crystal surfaces and Cd fraction of a ``"simulate"`` library (see
        :func:`as_library`).  CsBr-terminated columns counted with the default ``"mixed"``
        library read ~0.15 Pb step high (Voronoi SCS, abTEM multislice).

    Returns
    -------
    DataFrame
        Input table plus ``n_atoms``, ``scs_library`` and, with errors, ``p_n_atoms``,
        ``n_atoms_mean``, ``n_atoms_std``.
    """
    refuse_text_numbers(locals())
    df, x, t = _table_input(scs, types)
    if scs_err is None and isinstance(scs, pd.DataFrame):
        for c in ("scs_err", "scs_err_A2"):
            if c in scs.columns:
                scs_err = scs[c].to_numpy()
    err = None
    if scs_err is not None:
        err = np.asarray(scs_err, dtype=float).ravel()
        if err.size != x.size or not np.all(np.isfinite(err)) or (err <= 0).any():
            raise DataError(f"`scs_err` must be {x.size} finite values > 0")
    out = df.copy()
    n_at = np.zeros(x.size, np.int64)
    lib_v = np.zeros(x.size)
    pmap = np.full(x.size, np.nan)
    mean = np.full(x.size, np.nan)
    std = np.full(x.size, np.nan)
    integ = _simulate_integration(df)
    for typ in pd.unique(t):
        sel = t == typ
        n, v = as_library(
            library,
            column_type=None if typ == "all" else typ,
            integration=integ,
            termination=termination,
            cd_fraction=cd_fraction,
            **_simulate_conditions(df),
        )
        n, v = _with_zero(n, v, include_zero)
        v = v * scale
        xs = x[sel]
        j = np.argmin((xs[:, None] - v[None, :]) ** 2, axis=1)
        n_at[sel] = n[j]
        lib_v[sel] = v[j]
        if err is not None:
            ll = -0.5 * ((xs[:, None] - v[None, :]) / err[sel][:, None]) ** 2
            ll -= ll.max(axis=1, keepdims=True)
            p = np.exp(ll)
            p /= p.sum(axis=1, keepdims=True)
            pmap[sel] = p[np.arange(xs.size), j]
            m = p @ n
            mean[sel] = m
            std[sel] = np.sqrt(np.maximum(p @ n**2 - m**2, 0))
    out["n_atoms"] = n_at
    out["scs_library"] = lib_v
    if err is not None:
        out["p_n_atoms"] = pmap
        out["n_atoms_mean"] = mean
        out["n_atoms_std"] = std
    out.attrs = dict(df.attrs)
    out.attrs["counting"] = {
        "method": "library",
        "scale": float(scale),
        "include_zero": bool(include_zero),
        **_simulate_info(library, termination, cd_fraction),
    }
    return out


def _simulate_info(library: Any, termination: str, cd_fraction: float) -> dict[str, Any]:
    """The assumptions of a ``"simulate"`` library, for the table's attrs."""
    if isinstance(library, str):
        return {"termination": termination, "cd_fraction": float(cd_fraction)}
    return {}


class HybridFit:
    """Result of :func:`fit_hybrid`: states, scale, width, proportions and posteriors."""

    def __init__(self, n_atoms, library, scale, width, proportions, nll, n_iter, converged):
        self.n_atoms = n_atoms
        self.library = library
        self.scale = float(scale)
        self.width = float(width)
        self.proportions = proportions
        self.nll = float(nll)
        self.n_iter = int(n_iter)
        self.converged = bool(converged)

    @property
    def means(self) -> np.ndarray:
        """Component locations ``c * L_n``."""
        return self.scale * self.library

    def posterior(self, scs: Any) -> np.ndarray:
        """Posterior over the library states, shape (N, L)."""
        x = _as_scs(scs)
        with np.errstate(divide="ignore"):
            lp = (
                np.log(self.proportions)[None, :]
                - 0.5 * ((x[:, None] - self.means[None, :]) / self.width) ** 2
            )
        lp -= lp.max(axis=1, keepdims=True)
        p = np.exp(lp)
        return p / p.sum(axis=1, keepdims=True)


def fit_hybrid(
    scs: Any,
    library: Any,
    *,
    include_zero: bool = False,
    fit_scale: bool = True,
    scale_range: tuple[float, float] = (0.8, 1.25),
    scale_step: float = 0.01,
    scale_sd: float = 0.1,
    max_iter: int = 2000,
    tol: float = 1e-10,
) -> HybridFit:
    """Fit the hybrid mixture ``sum_n pi_n N(c L_n, sigma^2)`` to one column type by EM.

    M-step (closed form): ``pi_n = <tau_n>``, ``c = sum tau V L / sum tau L^2``,
    ``sigma^2 = sum tau (V - c L)^2 / N`` (De wael et al. 2017; De wael et al. 2020).

    Parameters
    ----------
    scs : array_like, shape (N,)
    library : see :func:`as_library` (one type).
    include_zero : bool
        Include the empty-column state ``L_0 = 0``.
    fit_scale : bool
        Estimate ``c``; if False, ``c = 1`` (pure library with a fitted width and priors).
    scale_range, scale_step : tuple, float
        ``c`` is searched on a grid over ``scale_range`` (short EM runs), then refined by EM
        inside the range.
        A (nearly) linear library is self-similar (``c L_n ~ (c/2) L_2n``), so ``c`` is only
        identifiable near the prior value 1; keep the range narrow.
    scale_sd : float
        Log-sd of a weak log-normal prior on ``c`` around 1 (a calibrated library).  It only
        decides between scale optima of nearly equal likelihood: with one or two column
        thicknesses ``c L_n`` fits the data equally well for several ``n``.

    Returns
    -------
    HybridFit
    """
    refuse_text_numbers(locals())
    x = _as_scs(scs)
    if x.size < 2:
        raise ParameterError(f"hybrid counting needs at least 2 columns, got {x.size}")
    n, v = as_library(library)
    n, v = _with_zero(n, v, include_zero)
    if fit_scale:
        cands = _scale_candidates(x, v, scale_range, scale_step, tol)
        c0 = cands[int(np.argmin([nll + _scale_penalty(c, 1.0, scale_sd) for c, nll in cands]))][0]
    else:
        c0 = 1.0
    return _hybrid_final(
        x, n, v, c0, fit_scale, max_iter=max_iter, tol=tol, bounds=tuple(scale_range)
    )


def _hybrid_final(x, n, v, c0, fit_scale, *, max_iter, tol, bounds=None) -> HybridFit:
    c, sigma, pi, _, nll, it, conv = _hybrid_em(
        x, v, c0, fit_scale, max_iter=max_iter, tol=tol, bounds=bounds
    )
    return HybridFit(n, v, c, sigma, pi, nll, it, conv)


def _check_units(x: np.ndarray, v: np.ndarray, lo: float, hi: float) -> None:
    """Refuse cross-sections that no scale in [lo, hi] brings onto the library.

    Raw-count cross-sections (an image that was not normalised) against a library in Å² were
    counted silently at the bound of the scale range (all columns 17-20 atoms, say).
    """
    med = float(np.median(x))
    vmax, vmin = float(v.max()), float(v[v > 0].min()) if np.any(v > 0) else 0.0
    if med > 1.5 * hi * vmax or med < 0.5 * lo * vmin:
        raise DataError(
            f"the cross-sections (median {med:.4g}) do not match the library "
            f"({vmin:.4g} … {vmax:.4g}) for any scale in [{lo:g}, {hi:g}]: a simulated "
            "library is in Å² of the incident beam, so the image must be normalised "
            "(perovstem.atoms.normalize_image) before fitting"
        )


def _scale_candidates(
    x: np.ndarray, v: np.ndarray, scale_range: tuple[float, float], scale_step: float, tol: float
) -> list[tuple[float, float]]:
    """Local optima ``(c, nll)`` of the hybrid likelihood over the scale, from a grid of starts.

    c is only identifiable near the prior value 1 (a linear library is self-similar), so a
    bounded grid is scanned with short EM runs.  Several optima with nearly equal likelihood
    are the rule when a type has one or two thicknesses (``c L_n`` fits a lone cluster for
    every n), so all of them are returned for the caller to choose with a prior.
    """
    lo, hi = scale_range
    if not (0 < lo <= 1 <= hi):
        raise ParameterError(f"`scale_range` must satisfy 0 < lo <= 1 <= hi, got {scale_range!r}")
    _check_units(x, v, lo, hi)
    grid = np.unique(np.r_[np.arange(lo, hi + 1e-12, scale_step), 1.0])
    out: list[tuple[float, float]] = []
    for c0 in grid:
        r = _hybrid_em(x, v, c0, True, max_iter=25, tol=tol, bounds=(lo, hi))
        out.append((float(r[0]), float(r[4])))
    return out


def _hybrid_em(x, v, c, fit_scale, *, max_iter, tol, bounds=None):
    """EM for the hybrid mixture from scale ``c`` (nearest-library start for the width).

    ``bounds``: the scale stays in ``[lo, hi]`` (the M-step's maximiser clipped: the
    likelihood is unimodal in ``c`` for fixed responsibilities, so this is the constrained
    M-step).  Without it a start at the edge of ``scale_range`` drifted out of the range."""
    L = v.size
    j = np.argmin((x[:, None] - c * v[None, :]) ** 2, axis=1)
    sigma = max(float(np.sqrt(np.mean((x - c * v[j]) ** 2))), 1e-3 * float(np.ptp(v) or 1.0) / L)
    pi = np.bincount(j, minlength=L) + 0.5
    pi = pi / pi.sum()
    nll_old = np.inf
    nll = np.inf
    conv = False
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007
        with np.errstate(divide="ignore"):
            lp = np.log(pi)[None, :] - 0.5 * ((x[:, None] - c * v[None, :]) / sigma) ** 2
        m = lp.max(axis=1, keepdims=True)
        lse = np.log(np.exp(lp - m).sum(axis=1)) + m[:, 0]
        nll = -float(np.sum(lse - np.log(sigma) - 0.5 * np.log(2 * np.pi)))
        tau = np.exp(lp - lse[:, None])
        if np.isfinite(nll_old) and abs(nll - nll_old) <= tol * abs(nll):
            conv = True
            break
        nll_old = nll
        pi = tau.mean(axis=0)
        if fit_scale:
            den = float(np.sum(tau @ (v * v)))
            if den > 0:
                c = float(np.sum(tau * x[:, None] * v[None, :])) / den
                if bounds is not None:
                    c = float(np.clip(c, *bounds))
        sigma = float(np.sqrt(np.sum(tau * (x[:, None] - c * v[None, :]) ** 2) / x.size))
        sigma = max(sigma, 1e-9 * float(np.ptp(x) or 1.0))
    return c, sigma, pi, tau, nll, it, conv


def count_hybrid(
    scs: Any,
    library: Any,
    *,
    types: Any = None,
    include_zero: bool = False,
    fit_scale: bool = True,
    scale_spread: float = 0.03,
    scale_sd: float | None = None,
    termination: str = "mixed",
    cd_fraction: float = 0.0,
) -> pd.DataFrame:
    """Hybrid statistics/simulation atom counting (De wael et al., Ultramicroscopy 177 (2017) 69).

    Parameters
    ----------
    scs : array_like, shape (N,), or DataFrame (``scs``/``scs_A2``, optional ``type``)
    library : see :func:`as_library`; a dict gives one library per column type
        (``"simulate"``: as in :func:`count_library`).
    types : array_like of str, optional
    include_zero, fit_scale : bool
        See :func:`fit_hybrid`.
    scale_spread : float
        Log-sd of the scales of the column types about their common value.  Each type has its
        own scale ``c_t``, but the normalisation error is shared by all types of one image,
        so ``log c_t ~ N(log c0, scale_spread^2)``.  A type whose thicknesses do not fix its
        scale (a cube has one Pb-Br thickness, and ``c L_n`` then fits for several ``n``)
        takes it from the other types instead of from an arbitrary optimum.
    scale_sd : float, optional
        Log-sd of the prior of ``c0`` around 1, see :func:`fit_hybrid`; default as
        :func:`~perovstem.atoms.count_atoms`' ``scale_prior``: 0.03 for a library measured
        with the data's estimator (:func:`~perovstem.atoms.fitted_scs_library`), else 0.1.
    termination, cd_fraction : str, float
        Crystal surfaces and Cd fraction of a ``"simulate"`` library (see :func:`as_library`).

    Returns
    -------
    DataFrame
        Input plus ``n_atoms``, ``p_n_atoms``, ``n_atoms_mean``, ``n_atoms_std``;
        ``attrs["counting"][type]`` holds ``scale``, ``width``, the proportions and
        ``scale_identifiable`` (False when another scale, hence other counts, fits the
        cross-sections of this type about as well, or when the best scale sits on a bound
        of 0.8-1.25; such a type's scale then starts from the mean of the types that
        identify theirs and may move only ``scale_spread`` from it (none: the prior's):
        ``scale_from``), and ``count_shift_vs_calibrated`` (mean count minus the count of
        the nearest library value at c = 1; for Voronoi sums a shift of 0.5 atom or more
        warns: on thin columns a normalisation error and a count shift fit alike).
        With ``fit_scale`` also ``offset_probability`` ``{d: P(d)}``, the probability
        that every column of the type is ``d`` atoms more than ``n_atoms``, and
        ``offset_ambiguous`` (``P(0) < 0.9``, with a warning) and ``scale_prior``, as
        :func:`~perovstem.atoms.count_atoms` reports them: each optimum of the scale
        likelihood is one reading of the counts, weighed by its likelihood and the scale
        prior; ``n_atoms_mean``/``n_atoms_std`` are those of the mixture over ``d`` and
        ``p_n_atoms`` is multiplied by ``P(0)``.
    """
    refuse_text_numbers(locals())
    prior_from = "user"
    if scale_sd is None:
        _, scale_sd, prior_from = _check_scale_prior(None, library)
    for name, val in (("scale_spread", scale_spread), ("scale_sd", scale_sd)):
        if not (isinstance(val, (int, float)) and np.isfinite(val) and val > 0):
            raise ParameterError(f"`{name}` must be a number > 0, got {val!r}")
    df, x, t = _table_input(scs, types)
    out = df.copy()
    n_at = np.zeros(x.size, np.int64)
    pmap = np.zeros(x.size)
    mean = np.zeros(x.size)
    std = np.zeros(x.size)
    info: dict[str, Any] = {}
    shift: dict[str, float] = {}
    ambiguous: dict[str, float] = {}
    integ = _simulate_integration(df)
    libs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    cands: dict[str, list[tuple[float, float]]] = {}
    for typ in pd.unique(t):
        sel = t == typ
        if sel.sum() < 2:
            raise ParameterError(
                f"hybrid counting needs at least 2 columns of type {typ!r}, got {sel.sum()}"
            )
        n, v = as_library(
            library,
            column_type=None if typ == "all" else typ,
            integration=integ,
            termination=termination,
            cd_fraction=cd_fraction,
            **_simulate_conditions(df),
        )
        libs[typ] = _with_zero(n, v, include_zero)
        if fit_scale:
            cands[typ] = _scale_candidates(x[sel], libs[typ][1], (0.8, 1.25), 0.01, 1e-10)
    bounds = (0.8, 1.25)
    if fit_scale:
        pick, c_common = _shared_scale_choice(cands, scale_spread, scale_sd)
        # each scale optimum is one reading of the counts: their posterior (count_atoms')
        spost = _scale_posterior(cands, scale_spread, scale_sd)
        ident = {typ: _identifiable(cands[typ], pick[typ], bounds=bounds) for typ in cands}
        start, windows, source = _fallback_scales(
            pick, ident, bounds, scale_spread, reference=1.0 if integ == "voronoi" else None
        )
        _warn_unidentified(
            ident, source, "count_hybrid", gaussian=integ != "voronoi" and "rho_A" in df
        )
    for typ in pd.unique(t):
        sel = t == typ
        n, v = libs[typ]
        fit = _hybrid_final(
            x[sel],
            n,
            v,
            start[typ] if fit_scale else 1.0,
            fit_scale,
            max_iter=2000,
            tol=1e-10,
            bounds=windows[typ] if fit_scale else bounds,
        )
        p = fit.posterior(x[sel])
        j = np.argmax(p, axis=1)
        n_at[sel] = fit.n_atoms[j]
        pmap[sel] = p[np.arange(j.size), j]
        m = p @ fit.n_atoms
        var = np.maximum(p @ fit.n_atoms**2 - m**2, 0)
        off: dict[str, Any] = {}
        if fit_scale:
            off, p0, m, var = _offset_mixture(spost[typ], x[sel], (n, v), fit.n_atoms[j], m, var)
            pmap[sel] *= p0
            if off["offset_ambiguous"]:
                ambiguous[str(typ)] = p0
            off["scale_prior"] = {"center": 1.0, "log_sd": float(scale_sd), "source": prior_from}
        mean[sel] = m
        std[sel] = np.sqrt(np.maximum(var, 0))
        # counts at the calibrated scale (c = 1, nearest library value): a free scale that
        # moves a whole type by half an atom or more is the self-similar alternative
        # c L_n ~ c' L_(n+-1), which thin columns do not tell apart from c ~ 1
        j1 = np.argmin(np.abs(x[sel][:, None] - v[None, :]), axis=1)
        shift[str(typ)] = float(np.mean(fit.n_atoms[j] - n[j1]))
        info[str(typ)] = {
            "scale": fit.scale,
            "width": fit.width,
            "n_atoms": fit.n_atoms.tolist(),
            "proportions": fit.proportions.tolist(),
            "converged": fit.converged,
            "count_shift_vs_calibrated": shift[str(typ)],
            "scale_identifiable": bool(ident[typ]) if fit_scale else True,
            **({"scale_from": source[typ]} if fit_scale else {}),
            **off,
        }
    if fit_scale and integ == "voronoi":
        _warn_shifted(shift, "count_hybrid")
    _warn_offset(ambiguous, "count_hybrid", "attrs['counting'][type]['offset_probability']")
    out["n_atoms"] = n_at
    out["p_n_atoms"] = pmap
    out["n_atoms_mean"] = mean
    out["n_atoms_std"] = std
    out.attrs = dict(df.attrs)
    out.attrs["counting"] = {
        "method": "hybrid",
        **info,
        **_simulate_info(library, termination, cd_fraction),
    }
    if fit_scale:
        out.attrs["counting"]["common_scale"] = c_common
    return out


def _warn_shifted(shift: dict[str, float], what: str, limit: float = 0.5) -> None:
    """Warn when the free scale moves a type's counts by ``limit`` atoms or more on average
    from the calibrated library's (c = 1).  On thin columns (1-7 atoms, abTEM multislice)
    the hybrid likelihood preferred c ~ n/(n+1), every column one atom high, and flagged
    that scale identified; the data cannot tell a normalisation error from a count shift.
    Only for Voronoi sums of a normalised image (callers check): they carry no model
    deficit, whereas Gaussian-fit SCS sit 5-25 % below the total library by construction
    and a scale of 0.8-0.95 is then expected."""
    big = {t: d for t, d in shift.items() if abs(d) >= limit}
    if big:
        import warnings

        txt = ", ".join(f"{t} {d:+.2f}" for t, d in big.items())
        warnings.warn(
            f"{what}: the fitted library scale moves the counts from those of the calibrated "
            f"library (c = 1) by {txt} atoms per column on average "
            "(attrs['counting'][type]['count_shift_vs_calibrated']).  A scale away from 1 is "
            "a normalisation error or the same data read one atom up or down (c L_n ~ c' "
            "L_(n+-1)); thin columns do not tell these apart.  On a normalised image with a "
            "calibrated library, count_library at the fixed scale is the safer reading",
            UserWarning,
            stacklevel=3,
        )


def _warn_unidentified(
    ident: dict[str, bool], source: dict[str, str], what: str, *, gaussian: bool = False
) -> None:
    """One warning when no column type identifies the library scale (the counts then rest
    on the calibrated library's c ~ 1); ``gaussian``: the cross-sections are Gaussian-column
    volumes, whose shape dependence is then named."""
    bad = [t for t, ok in ident.items() if not ok]
    if bad and len(bad) == len(ident):
        import warnings

        shape = (
            ".  Gaussian-column cross-sections depend on the peak shape: on multislice images "
            "(abTEM, session-32 audit) they read 0.76-0.87 of the library and the counts ~1 "
            "atom low; Voronoi sums (`atoms fit --scs voronoi`) do not depend on it"
            if gaussian
            else ""
        )
        warnings.warn(
            f"{what}: no column type's cross-sections identify the library scale (another "
            "scale, hence other counts, fits about as well, or the best scale is at a bound "
            "of the range); the counts rest on the prior of the scale "
            f"(attrs['counting'][type]['scale_identifiable'] is False){shape}",
            UserWarning,
            stacklevel=3,
        )


def start_scale_from_types(table: pd.DataFrame, library: dict, column_type: str) -> float | None:
    """Scale ``c`` of ``column_type`` in one frame, tied to the other column types.

    Starting value for :func:`perovstem.atoms.fit_hmm` (``init={"scale": c}``): the columns
    of a pristine cube have one Pb-Br thickness, and when none is lost the frames cannot tell
    ``c L_n`` from ``c' L_(n-1)``; the Cs columns (several thicknesses) fix the scale through
    the shared prior of :func:`count_hybrid`.

    Parameters
    ----------
    table : DataFrame
        One frame's columns: ``scs`` (or ``scs_A2``) and ``type``.
    library : dict
        One library per type (see :func:`as_library`); types without one are ignored.
    column_type : str

    Returns
    -------
    float or None
        None when the table has no other typed columns with a library, or counting fails.
    """
    from perovstem.errors import PerovstemError

    if "type" not in table.columns:
        return None
    col = next((c for c in ("scs", "scs_A2") if c in table.columns), None)
    types = table["type"].astype(str)
    keep = types.isin(list(library)).to_numpy()
    if col is None or column_type not in set(types[keep]) or len(set(types[keep])) < 2:
        return None
    x = table[col].to_numpy(float)
    keep = keep & np.isfinite(x) & (x > 0)
    import warnings

    try:
        # only a start value: the caller's own counting decides and reports the scale
        # (count_hybrid's identifiability warnings here named a step that never counted)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="count_hybrid:", category=UserWarning)
            res = count_hybrid(
                pd.DataFrame({"scs": x[keep], "type": types[keep].to_numpy()}), library
            )
    except PerovstemError:
        return None
    return float(res.attrs["counting"][column_type]["scale"])
