"""Joint Gaussian model of atom columns: least-squares / Poisson-ML fit with Fisher errors.

Model (De Backer et al., Ultramicroscopy 171 (2016) 104, "StatSTEM")::

    f(x, y) = B(x, y) + Σ_k η_k exp(−[(x − x_k)² + (y − y_k)²] / (2 ρ_k²)),   r ≤ c·ρ_k

with ``ρ_k`` shared by a column type (default), free per column, or fixed, and a background
``B`` that is constant (as StatSTEM), planar or a 2nd-order polynomial.  The scattering
cross-section is the Gaussian volume ``SCS_k = 2π η_k ρ_k²`` (image units × Å²).

Algorithm (ours): all parameters are fitted *jointly* — the model of every column is always
present in the residual image, so overlapping columns are fitted together, not in independent
windows.  The optimiser is a block Gauss–Seidel Levenberg–Marquardt scheme: each column's
(x, y, η[, ρ]) takes a damped Gauss–Newton step against the current residual (Newton, with
the column's exact Hessian, in the sweeps-only path; accepted only if the global SSE
decreases), columns far apart are updated in parallel (numba), the shared
widths take a Schur-complement Gauss–Newton step with line search, and the background is
re-solved linearly after each sweep.  The fixed point is the stationary point of the full
joint objective.  Cost per sweep is O(N·(c ρ/dx)²), i.e. linear in the number of columns.

With ``noise="poisson"`` the weights are ``1/Var`` from the current model (iteratively
reweighted least squares), whose fixed point solves the Poisson maximum-likelihood score
equations (quasi-likelihood with a fitted variance v = a + b·μ when the detector gain is
unknown); standard errors are then the Cramér–Rao bound at the estimate.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from perovstem._data import Image, imaging_angles_of, voltage_kV_of
from perovstem._threads import spare_core
from perovstem._validation import (
    check_choice,
    check_positive,
    refuse_text_numbers,
    warn,
    warning_transparent,
)
from perovstem.atoms._inputs import as_image, as_positions, px_to_A, saturation_note
from perovstem.atoms.normalize import poisson_variance_model
from perovstem.errors import CalibrationError, DataError, ParameterError

__all__ = ["fit_columns", "model_image", "background_basis", "FIT_COLUMNS"]

_log = logging.getLogger("perovstem.atoms")

FIT_COLUMNS = [
    "x_A",
    "y_A",
    "type",
    "rho_A",
    "eta",
    "scs",
    "x_err_A",
    "y_err_A",
    "rho_err_A",
    "eta_err",
    "scs_err",
    "converged",
]

_BACKGROUNDS = ("constant", "planar", "poly2", "none")
_WIDTHS = ("type", "column", "fixed")
_NOISES = ("gaussian", "poisson")
_IRLS_MAX_STAGES = 30  # outer reweighting stages of the Poisson fit (joint estimator)
# a known detector's variance: warning when the residuals are this far off (factor)
_DISPERSION_TOLERATED = 2.0
_MIN_ELECTRONS_PER_COLUMN = 50.0  # below: linearised errors too small (warning)
_IRLS_FREE_SWEEPS = 40  # Poisson: sweeps reweighted one by one before the staged restart


def background_basis(shape: tuple[int, int], model: str) -> np.ndarray:
    """Basis images of the background model, shape ``(n_terms, M, N)``.

    Coordinates are scaled to [−1, 1] over the image so the polynomial is well conditioned.
    """
    ny, nx = shape
    if model == "none":
        return np.zeros((0, ny, nx))
    v, u = np.meshgrid(
        np.linspace(-1.0, 1.0, ny) if ny > 1 else np.zeros(1),
        np.linspace(-1.0, 1.0, nx) if nx > 1 else np.zeros(1),
        indexing="ij",
    )
    terms = [np.ones((ny, nx))]
    if model in ("planar", "poly2"):
        terms += [u, v]
    if model == "poly2":
        terms += [u * u, u * v, v * v]
    return np.stack(terms)


def _rho_start(xy_px: np.ndarray, shape: tuple[int, int]) -> float:
    """ρ₀ = ¼ of the median nearest-neighbour distance (StatSTEM uses ¼ of the mean)."""
    if xy_px.shape[0] >= 2:
        d, _ = cKDTree(xy_px).query(xy_px, k=2)
        r = 0.25 * float(np.median(d[:, 1]))
    else:
        r = 0.05 * min(shape)
    return float(np.clip(r, 0.7, 0.1 * max(shape)))


def _rho_from_log_curvature(
    sig: np.ndarray,
    ii: np.ndarray,
    jj: np.ndarray,
    rho0: np.ndarray,
    tid: np.ndarray,
    nt: int,
    box_var: float = 0.0,
) -> np.ndarray:
    """Starting width per type from the log-intensity curvature at the column pixels.

    For a Gaussian ``ln f(p + s) + ln f(p − s) − 2 ln f(p) = −s²/ρ²`` along each axis, exactly
    and whatever the sub-pixel offset of the peak; the median over the columns of a type (both
    axes, step ``s ≈ ρ₀/2``) is a robust start that saves the sweeps a width far from the
    truth costs (ρ may change by at most ×1.25 per step).  Kept within [0.6, 1.6]·ρ₀.
    ``box_var`` (px²): variance per axis of a smoothing already applied to ``sig``, removed
    in quadrature (ρ² = ρ_eff² − box_var, at least (ρ_eff/2)²).
    """
    ny, nx = sig.shape
    out = rho0.copy()
    for t in range(nt):
        m = tid == t
        r0 = float(np.median(rho0[m]))
        st = max(1, int(round(0.5 * r0)))
        vals = []
        for di, dj in ((st, 0), (0, st)):
            ok = m & (ii - di >= 0) & (ii + di < ny) & (jj - dj >= 0) & (jj + dj < nx)
            c = sig[ii[ok], jj[ok]]
            p = sig[ii[ok] + di, jj[ok] + dj]
            q = sig[ii[ok] - di, jj[ok] - dj]
            good = (c > 0) & (p > 0) & (q > 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                curv = np.log(p[good]) + np.log(q[good]) - 2.0 * np.log(c[good])
            vals.append(curv)
        curv = np.concatenate(vals)
        curv = curv[curv < 0]
        if curv.size < 5:
            continue
        r = st / np.sqrt(-float(np.median(curv)))
        r = float(np.sqrt(max(r * r - box_var, 0.25 * r * r)))
        out[m] = float(np.clip(r, 0.6 * r0, 1.6 * r0))
    return out


def _cells(x: np.ndarray, y: np.ndarray, size: float):
    """Group columns into square cells of ``size`` px and 4 colours (2×2 checkerboard)."""
    cx = np.floor(x / size).astype(np.int64)
    cy = np.floor(y / size).astype(np.int64)
    cx -= cx.min()
    cy -= cy.min()
    ncx = int(cx.max()) + 1
    cid = cy * ncx + cx
    order = np.lexsort((x, y, cid))  # cells in id order, raster order inside a cell
    ucells, start = np.unique(cid[order], return_index=True)
    cell_ptr = np.append(start, order.size).astype(np.int64)
    colour = (ucells % ncx) % 2 + 2 * ((ucells // ncx) % 2)
    corder = np.argsort(colour, kind="stable")
    colour_cells = corder.astype(np.int64)
    counts = np.bincount(colour, minlength=4)
    colour_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return cell_ptr, order.astype(np.int64), colour_ptr, colour_cells


def _var_floor(data: np.ndarray, o: float) -> float:
    sig = data - o
    pos = sig[sig > 0]
    return max(1e-12, 1e-3 * float(np.median(pos))) if pos.size else 1.0


def _resolve_rho(rho_A: Any, tnames: list[str], width: str, start_px: float, dx: float):
    """Starting width per type (px)."""
    out = {}
    if rho_A is None:
        if width == "fixed":
            raise ParameterError("`rho_A` is required when `width='fixed'`, got None")
        return {t: start_px for t in tnames}
    if isinstance(rho_A, dict):
        unknown = [k for k in rho_A if str(k) not in tnames]
        if unknown:
            raise ParameterError(
                f"`rho_A` names unknown column type(s) {unknown}; the columns have types {tnames}"
            )
        for t in tnames:
            if t in rho_A:
                out[t] = check_positive(f"rho_A[{t!r}]", rho_A[t]) / dx
            elif width == "fixed":
                raise ParameterError(
                    f"`rho_A` has no width for column type {t!r} (width='fixed'); got keys "
                    f"{list(rho_A)}"
                )
            else:
                out[t] = start_px
        return out
    v = check_positive("rho_A", rho_A) / dx
    return {t: v for t in tnames}


# the one rule for when numba's workers pay off (shared with the tomography kernels)
_spare_core = spare_core


def _keep_numba_threads(func):
    """Restore numba's (thread-local) thread count after ``func``, which may lower it."""

    @functools.wraps(func)
    @warning_transparent  # fit_columns' warnings name the caller's line, not this one
    def wrapper(*args, **kwargs):
        import numba

        n0 = numba.get_num_threads()
        try:
            return func(*args, **kwargs)
        finally:
            numba.set_num_threads(n0)

    return wrapper


@_keep_numba_threads
def fit_columns(
    image: Image | np.ndarray,
    positions: Any,
    *,
    types: Any = None,
    width: str = "type",
    rho_A: float | dict | None = None,
    background: str | float = "constant",
    noise: str = "gaussian",
    cutoff_rho: float | None = None,
    max_iter: int = 300,
    tol_px: float = 1e-4,
    tol_crlb: float = 0.05,
    max_shift_px: float = 1.0,
    pixel_size_A: float | None = None,
    parallel: bool | None = None,
    joint: bool | None = None,
    max_displacement_A: float | None = None,
    estimator: str | None = None,
    fit_positions: bool = True,
    psf_tail: dict | str | None = None,
    rng: Any = None,
    truncation: str | None = None,
) -> pd.DataFrame:
    """Fit the joint Gaussian column model to an image.

    Parameters
    ----------
    image : Image or (M, N) ndarray
        HAADF image (counts or normalised, see :func:`normalize_image`).
    positions : DataFrame with ``x_A, y_A[, type]`` or (N, 2) array, Å
        Starting positions (e.g. from :func:`find_columns`), image coordinates.
    types : (N,) array_like of str, optional
        Column types (default: the ``type`` column of ``positions``, else one type).
    width : {"type", "column", "fixed"}
        One ρ per column type (StatSTEM default), a free ρ per column, or ρ fixed at ``rho_A``.
    rho_A : float or dict, optional
        Starting (or fixed) width in Å, one value or ``{type: value}``; default ¼ of the median
        nearest-neighbour distance.
    background : {"constant", "planar", "poly2", "none"} or float
        Background model; a float fixes a constant background at that value.
    noise : {"gaussian", "poisson"}
        ``"gaussian"``: unweighted least squares (StatSTEM), errors scaled by the residual
        variance.  ``"poisson"``: Poisson maximum likelihood via reweighting with the pixel
        variance ``v = gain·(μ − offset) + read_noise²`` of a known detector (normalised
        image, or ``gain`` and ``offset`` in ``image.metadata``; errors = CRLB, with a
        warning when the residuals are > 2× off that variance); with the gain or offset
        unknown, quasi-likelihood with ``v = a + b·μ``
        fitted to the residuals (errors from that variance; ``attrs['variance_model']``).
    cutoff_rho : float, optional
        Truncation radius of each Gaussian in units of its ρ; default 4 (``truncation="disk"``)
        or 3 (``"square"``, StatSTEM).
    max_iter : int
        Maximum number of sweeps.
    tol_px : float
        Convergence when no column moves more than this (px) in a sweep and widths change
        by < 1e-6 (relative).
    tol_crlb : float
        Sweeps-only path (``joint=False``, the default for N > 2000): a column has converged
        when its last step is below ``max(tol_px, tol_crlb·σ_k)``, with ``σ_k ≈
        σ·sqrt(2/π)/η_k`` its position standard error (Cramér–Rao bound of an isolated
        Gaussian column in noise σ, px); the remaining error is then a few % of the
        statistical one.  Weak columns (large σ_k) otherwise cost many sweeps converging to
        1e-4 px.  0 disables it (every column to ``tol_px``).
    max_shift_px : float
        Largest position step per sweep (trust region), px.
    pixel_size_A : float, optional
        Needed only when ``image`` is a bare array.
    parallel : bool, optional
        Use numba threads (the current ``numba.get_num_threads()``) for the column sweeps and
        the Fisher blocks; ``False`` runs every kernel on one thread.  The result does not
        depend on it: the sweep always visits the columns in the same fixed order (cells of
        the start positions in 4 colours; columns of one colour never share pixels), so one
        thread and many give bit-identical results.  Default: threads when N ≥ 2000 and a
        core is idle (1-min load average ≤ cores − ½ and no other task runnable now) —
        spinning worker threads make a fit slower on a busy machine; this choice changes the
        speed only.
    joint : bool, optional
        Finish with exact joint (sparse) Levenberg–Marquardt steps over *all* parameters
        (default: N ≤ 2000); otherwise sweeps and Schur-complement steps for the shared widths
        and background only (same stationary point, slower convergence for heavy overlap).
    max_displacement_A : float, optional
        A column may move at most this far from its start (default: half the median
        nearest-neighbour distance), so two columns cannot collapse onto one peak.
    estimator : {"joint", "statstem"}, optional
        Default: ``"statstem"`` for images read from StatSTEM files (``image.metadata['format']
        == 'statstem'``, as set by :func:`perovstem.io.load_statstem`), so that StatSTEM
        inputs reproduce StatSTEM's results; ``"joint"`` otherwise (``df.attrs['estimator']``
        records the choice).
        ``"joint"``: all parameters at the joint (weighted) least-squares optimum.
        ``"statstem"``: reproduce StatSTEM's segmented estimator (De Backer et al. 2016) —
        widths fitted at the starting positions, then each column's position fitted in a
        square box of half-width round(d̄/dx)/2 px (d̄ = ceil of the mean nearest-neighbour
        distance in Å) with all other columns subtracted and η, background re-solved jointly
        after every sweep, then the widths refitted at the final positions, with StatSTEM's
        square-truncated Gaussians (``truncation="square"``, ``cutoff_rho=3``).  Use it to
        compare with StatSTEM results; its positions are not the least-squares optimum of
        StatSTEM's own model where columns overlap or the model misfits (docs/atoms.md).
    fit_positions : bool
        False keeps the positions at ``positions`` and fits only η, ρ and the background.
    psf_tail : dict or "auto", optional
        Broad probe tail around every column (fraction ``f`` of its intensity spread by a
        Moffat kernel ``(1 + r²/γ²)^−β`` truncated at ``radius_A``; keys ``fraction``,
        ``gamma_A``, ``beta``, ``radius_A``); ``"auto"`` takes them from
        ``image.metadata['psf']`` (simulated images).  Each column is then a Gaussian core of
        volume (1 − f)·SCS plus the tail, updated by FFT after every sweep, and ``scs`` is the
        total cross-section (core + tail).  Without it, ``scs`` is the Gaussian volume, which
        misses the part of the tail the background absorbs.
    rng : None
        Unused (the fit is deterministic); accepted for API uniformity.
    truncation : {"disk", "square"}, optional
        Support of each Gaussian: the disk ``r ≤ cutoff_rho·ρ`` (default for ``"joint"``) or
        StatSTEM's square of pixels ``round(x ∓ cutoff_rho·ρ)`` per axis (default for
        ``"statstem"``; StatSTEM v2.1 ``getGa``/``combinedGauss``, whose stored model images
        this reproduces to 1e-10).  The square support has a 1 % step at its edges, so
        joint least squares converges slowly with it; it is meant for StatSTEM parity.

    Returns
    -------
    DataFrame
        One row per column: ``x_A, y_A, type, rho_A, eta, scs`` (= 2π η ρ², image units·Å²)
        and standard errors ``x_err_A, y_err_A, rho_err_A, eta_err, scs_err`` from the Fisher
        information (column block of the inverse over the column and its overlapping
        neighbours; shared width and background treated as known except in ``rho_err_A`` and
        ``scs_err``), and ``converged``.  ``df.attrs`` holds ``pixel_size_A``, ``origin_A``,
        ``image_shape``, ``background`` (model and coefficients), ``width``,
        ``fit_positions``, ``dose_e_per_A2`` (the image's, None when unknown; what
        :func:`perovstem.atoms.fitted_library_for` needs), ``rho_A_by_type``, ``noise``,
        ``n_iter``, ``parallel``, ``sse``, ``sigma2``, ``cutoff_rho`` and, for ``"poisson"``,
        ``variance_model`` (kind ``"detector"``/``"fitted"``, slope, offset, const,
        dispersion φ = Σ r²/(1 − h) / Σ v).  The result depends on
        the inputs only (identical inputs give identical tables); the wall time goes to the
        ``perovstem.atoms`` logger (DEBUG).

    Raises
    ------
    DataError
        NaNs in the image or positions, no positions, positions outside the image.
    ParameterError
        Bad option values, ρ ≤ 0, unknown column types in ``rho_A``.
    """
    refuse_text_numbers(locals())
    t_start = time.perf_counter()
    img = as_image(image, pixel_size_A)
    check_choice("width", width, _WIDTHS)
    check_choice("noise", noise, _NOISES)
    if estimator is None:  # StatSTEM inputs: StatSTEM's model and estimator (see docs/atoms.md)
        estimator = "statstem" if _is_statstem_input(img) else "joint"
    check_choice("estimator", estimator, ("joint", "statstem"))
    if truncation is None:
        truncation = "square" if estimator == "statstem" else "disk"
    check_choice("truncation", truncation, ("disk", "square"))
    if cutoff_rho is None:
        cutoff_rho = 3.0 if truncation == "square" else 4.0
    cut_abs = check_positive("cutoff_rho", cutoff_rho)
    if cut_abs < 1.5:
        raise ParameterError(f"`cutoff_rho` must be >= 1.5 (units of rho), got {cutoff_rho!r}")
    # kernel convention: cut < 0 is the square support of half-width |cut|·ρ
    cut = -cut_abs if truncation == "square" else cut_abs
    cut_h = min(cut, 3.5) if cut > 0 else cut  # Hessian/Fisher blocks
    if int(max_iter) < 1:
        raise ParameterError(f"`max_iter` must be >= 1, got {max_iter!r}")
    tol = check_positive("tol_px", tol_px)
    tol_crlb = float(tol_crlb)
    if not (np.isfinite(tol_crlb) and tol_crlb >= 0.0):
        raise ParameterError(f"`tol_crlb` must be a finite number >= 0, got {tol_crlb!r}")
    max_shift = check_positive("max_shift_px", max_shift_px)
    fixed_bg = None
    if isinstance(background, int | float) and not isinstance(background, bool):
        fixed_bg = float(background)
        if not np.isfinite(fixed_bg):
            raise ParameterError(f"`background` must be finite, got {background!r}")
        bg_model = "none"
    else:
        bg_model = check_choice("background", background, _BACKGROUNDS)

    data = np.asarray(img.data, dtype=np.float64)
    sat = saturation_note(data)
    if sat is not None:
        warn(f"fit_columns: {sat}", UserWarning, stacklevel=2)
    dx = img.pixel_size_A
    tail = _resolve_tail(psf_tail, img)
    if tail is not None:
        tail_kernel_fft, tail_pad = _tail_fft(data.shape, dx, tail)
    xy_A, tarr = as_positions(positions, img, types=types)
    xy_px = (xy_A - np.asarray(img.origin_A)) / dx
    tnames = list(dict.fromkeys(tarr.tolist()))
    tid = np.array([tnames.index(t) for t in tarr], dtype=np.int64)
    n = xy_px.shape[0]
    rho_by_type = _resolve_rho(rho_A, tnames, width, _rho_start(xy_px, data.shape), dx)

    x = np.ascontiguousarray(xy_px[:, 0])
    y = np.ascontiguousarray(xy_px[:, 1])
    rho = np.array([rho_by_type[t] for t in tarr], dtype=np.float64)
    rho_max = 0.25 * max(data.shape)
    rho_min = 0.3

    from perovstem.atoms import _kernels as K

    # --- background and amplitude starting values
    basis = background_basis(data.shape, bg_model)
    nb = basis.shape[0]
    if fixed_bg is not None:
        bg_img = np.full(data.shape, fixed_bg)
        coef = np.zeros(0)
    elif nb:
        # pixels farther than 2.5 ρ from every column (one render, no distance transform)
        cover = np.zeros(data.shape)
        K.add_columns(cover, x, y, np.ones(n), np.full(n, float(np.median(rho))), 2.5, 1.0)
        mask = cover == 0.0
        vals = (
            data[mask]
            if mask.sum() > 10 * nb
            else np.sort(data.ravel())[: max(data.size // 10, nb)]
        )
        coef = np.zeros(nb)
        coef[0] = float(np.median(vals))
        bg_img = coef[0] * basis[0]
    else:
        bg_img = np.zeros(data.shape)
        coef = np.zeros(0)
    ii = np.clip(np.round(y).astype(int), 0, data.shape[0] - 1)
    jj = np.clip(np.round(x).astype(int), 0, data.shape[1] - 1)
    from scipy.ndimage import uniform_filter

    sm = uniform_filter(data, 3, mode="nearest")
    if rho_A is None and width == "column" and estimator == "joint":
        # on the 3×3-smoothed image (noise ÷3: the log of weak, noisy columns is biased — the
        # Br columns of the CsPbBr3 benchmark scene started at 2.3 px instead of 3.0 px); the
        # box adds its variance 2/3 px² per axis, removed in quadrature
        rho = _rho_from_log_curvature(sm - bg_img, ii, jj, rho, tid, len(tnames), 2.0 / 3.0)
    span = float(np.ptp(data)) or 1.0
    eta = np.maximum(sm[ii, jj] - bg_img[ii, jj], 1e-3 * span)
    # overlapping columns share the peak: scale down by the local sum of unit Gaussians
    tmp = np.zeros(data.shape)
    K.add_columns(tmp, x, y, np.ones(n), rho, cut, 1.0)
    eta = eta / np.maximum(tmp[ii, jj], 1.0)

    # --- weights
    vstate: dict[str, Any] = {}
    if noise == "poisson":
        vstate = _poisson_variance(img, data)
    w = np.ones(data.shape)
    uniform_w = [noise == "gaussian"]  # unit weights: skip the multiplications
    # Poisson weights: recomputed after every sweep; when that has not converged within
    # _IRLS_FREE_SWEEPS sweeps (joint estimator), the fit restarts with least squares and
    # goes on in stages with the weights frozen during a stage (outer IRLS loop below).
    # Not least squares first always: at a few electrons per pixel it collapses the widths
    # (100 e⁻/Å², 0.4 Å px: every type at the 0.3 px bound) and the stages stay there.
    irls_outer = noise == "poisson" and estimator == "joint"
    wstate = {"update": noise == "poisson"}

    def poisson_weights() -> np.ndarray:
        return 1.0 / _variance_of(data - res, vstate)

    tail_state = {"img": None}
    sp_order = np.lexsort((x, np.floor(y / 16.0)))
    sp_inv = np.argsort(sp_order)

    def tail_image() -> np.ndarray | None:
        if tail is None:
            return None
        vol = 2.0 * np.pi * eta * rho**2 * tail["fraction"] / (1.0 - tail["fraction"])
        return _tail_image(data.shape, x, y, vol, tail_kernel_fft, tail_pad)

    def rebuild() -> np.ndarray:
        r = data - bg_img
        K.add_columns(r, x, y, eta, rho, cut, -1.0)
        if tail is not None:
            tail_state["img"] = tail_image()
            r -= tail_state["img"]
        return r

    res = rebuild()
    if wstate["update"]:
        uniform_w[0] = False
        w = poisson_weights()
    lam = np.full(n, 1e-3)
    shifts = np.zeros(n)
    accepted = np.zeros(n, dtype=np.bool_)
    free_rho_col = width == "column"
    shared_rho = width == "type"
    converged = False
    it = 0
    if parallel is None:
        parallel = n >= 2000 and _spare_core()
    if not parallel:
        # one thread for every kernel: for small fits thread hand-offs cost more than they
        # save, and on a loaded machine idle-spinning workers slow the main thread down
        import numba

        numba.set_num_threads(1)
    if joint is None:
        joint = n <= 2000
    if max_displacement_A is None:
        max_disp_px = (
            0.5 * float(np.median(cKDTree(xy_px).query(xy_px, k=2)[0][:, 1]))
            if n > 1
            else float(max(data.shape))
        )
    else:
        max_disp_px = check_positive("max_displacement_A", max_displacement_A) / dx
    max_disp_scalar = float(max_disp_px)
    # A column may not leave the sampled field: beyond the border no pixel constrains its peak
    # and the fit trades height for an extrapolated tail (on a periodic abTEM multislice image
    # border columns ran 1.2 Å outside and their SCS grew 100-fold).  Per-column bound: the
    # distance to the outer pixel edge, at least 0.5 px.
    to_edge = np.minimum.reduce(
        [x + 0.5, data.shape[1] - 0.5 - x, y + 0.5, data.shape[0] - 0.5 - y]
    )
    max_disp_px = np.ascontiguousarray(np.minimum(max_disp_scalar, np.maximum(to_edge, 0.5)))
    fit_bg = bool(nb) and fixed_bg is None
    n_glob = (len(tnames) if shared_rho else 0) + (nb if fit_bg else 0)
    nt = len(tnames)

    const_bg = fit_bg and bg_model == "constant"

    def bg_image(c: np.ndarray) -> np.ndarray:
        """Background image for coefficients ``c``."""
        if const_bg:
            return np.full(data.shape, float(c[0]))
        return K.lincomb(c, basis)

    def global_images() -> np.ndarray:
        parts = []
        if shared_rho:
            parts.append(
                K.rho_derivative_images(np.array(data.shape), x, y, eta, rho, cut, tid, nt)
            )
        if fit_bg:
            parts.append(basis)
        return np.concatenate(parts)

    def global_system(res_: np.ndarray):
        gimg = global_images()
        const_g = const_bg and not shared_rho  # the only global parameter: constant background
        if const_g and uniform_w[0]:
            c_mat, h = np.array([[float(data.size)]]), np.array([float(res_.sum())])
        else:
            c_mat, h = K.weighted_gram(gimg, w, res_, uniform_w[0])
        o = sp_order  # columns in spatial order (cache-friendly), results back in input order
        s_sub, r_sub, ainv_g, ainv_G = K.global_schur_terms(
            res_, w, x[o], y[o], eta[o], rho[o], cut_h, gimg, free_rho_col, const_g
        )
        return c_mat - s_sub, h - r_sub, ainv_g[sp_inv], ainv_G[sp_inv]

    def _background_only_step(res_: np.ndarray):
        """Exact least-squares background update with every column fixed (always lowers
        the SSE; the next sweep lets the columns respond)."""
        nonlocal coef, bg_img
        if const_bg and uniform_w[0]:
            dc = np.array([float(res_.sum()) / data.size])
            dimg = None
        else:
            c_mat, h = K.weighted_gram(basis, w, res_, uniform_w[0])
            dc = np.linalg.lstsq(c_mat, h, rcond=None)[0]
            dimg = K.lincomb(dc, basis)
        coef = coef + dc
        if dimg is None:
            res_ -= dc[0]
            bg_img = bg_image(coef)
        else:
            res_ -= dimg
            bg_img = bg_img + dimg
        return res_, 0.0, 1.0

    def _background_line_step(res_: np.ndarray, ainv_G: np.ndarray):
        """Constant background with the columns' block response (δη, δρ per unit δb) as
        one search direction v; the step length is the Gauss–Newton minimum along v from the
        rendered ∂model/∂v (true curvature, overlaps included), then checked on the SSE."""
        nonlocal coef, bg_img
        deta_v = -ainv_G[:, 2, 0]
        drho_v = -ainv_G[:, 3, 0]
        o = sp_order
        # ∂model/∂v = 1 + Σ_k (δη_k g_k + η_k δρ_k ∂g_k/∂ρ)
        jv = K.rho_derivative_images(
            np.array(data.shape),
            x[o],
            y[o],
            (eta * drho_v)[o],
            rho[o],
            cut,
            np.zeros(n, np.int64),
            1,
        )[0]
        jv += 1.0
        K.add_columns(jv, x[o], y[o], deta_v[o], rho[o], cut, 1.0)
        b_lin, c_lin = K.wdot2(w, res_, jv, uniform_w[0])
        if not c_lin > 0.0:
            return _background_only_step(res_)
        cur = float(_wsse(w, res_, uniform_w[0]))
        rho0, eta0, coef0 = rho.copy(), eta.copy(), coef.copy()
        alpha = b_lin / c_lin
        for _ in range(2):
            d = np.clip(alpha * drho_v, -0.2 * rho0, 0.2 * rho0)
            rho[:] = np.clip(rho0 + d, rho_min, rho_max)
            eta[:] = eta0 + alpha * deta_v
            coef = coef0 + np.array([alpha])
            bg_img = bg_image(coef)
            trial = rebuild()
            if float(_wsse(w, trial, uniform_w[0])) <= cur:
                return trial, 0.0, 1.0
            alpha *= 0.25
        rho[:], eta[:] = rho0, eta0
        coef = coef0
        bg_img = bg_image(coef)
        return _background_only_step(res_)

    def _global_step(res_: np.ndarray):
        nonlocal coef, bg_img
        s_mat, rhs, ainv_g, ainv_G = global_system(res_)
        if free_rho_col and not np.all(np.linalg.eigvalsh(s_mat) > 0.0):
            # the block-diagonal Schur complement counts a pixel once per column whose
            # support covers it; where the supports overlap (dense lattices, e.g. CsPbBr3
            # with its Br columns) it can lose positive definiteness, and its step then
            # points uphill (every trial render would be rejected): search along the
            # background's response direction instead, with its true curvature
            if const_bg and n_glob == 1:
                return _background_line_step(res_, ainv_G)
            return _background_only_step(res_) if fit_bg else (res_, 0.0, 0.0)
        dtheta = np.linalg.lstsq(s_mat, rhs, rcond=None)[0]
        deta = ainv_g[:, 2] - ainv_G[:, 2, :] @ dtheta
        cur = float(_wsse(w, res_, uniform_w[0]))
        rho0, eta0, coef0 = rho.copy(), eta.copy(), coef.copy()
        # free widths are local parameters of the Schur blocks, so the background step comes
        # with each width's response (without it background and widths converge only
        # linearly, by alternation: 8-9 sweeps instead of 5 on the benchmark scene)
        drho_col = ainv_g[:, 3] - ainv_G[:, 3, :] @ dtheta if free_rho_col else None
        if not shared_rho and not free_rho_col and tail is None:
            # only linear parameters (eta, background) change: the SSE along the step D is the
            # parabola cur − 2αb + α²c, so take the full step if it decreases the SSE, else the
            # exact line minimum α = b/c — no re-render of the model
            dbg = K.lincomb(dtheta[n_glob - nb :], basis)
            dimg = dbg.copy()
            o = sp_order
            K.add_columns(dimg, x[o], y[o], deta[o], rho[o], cut, 1.0)
            b_lin, c_lin = K.wdot2(w, res_, dimg, uniform_w[0])
            if c_lin <= 0.0 or b_lin <= 0.0:
                return res_, 0.0, 0.0
            alpha = 1.0 if c_lin <= 2.0 * b_lin else b_lin / c_lin
            trial = K.axpy_image(res_, dimg, -alpha)
            eta[:] = eta0 + alpha * deta
            coef = coef0 + alpha * dtheta[n_glob - nb :]
            bg_img = bg_img + alpha * dbg
            return trial, 0.0, alpha
        alpha = 1.0
        # free widths: a rejected step is mostly truncation-edge noise near convergence; three
        # tries (1, 1/4, 1/16) waste fewer full-model renders than eight halvings
        n_try, shrink = (2, 0.125) if free_rho_col else (8, 0.5)
        for _ in range(n_try):
            if shared_rho:
                d = np.clip(alpha * dtheta[:nt][tid], -0.2 * rho0, 0.2 * rho0)
                rho[:] = np.clip(rho0 + d, rho_min, rho_max)
            elif drho_col is not None:
                d = np.clip(alpha * drho_col, -0.2 * rho0, 0.2 * rho0)
                rho[:] = np.clip(rho0 + d, rho_min, rho_max)
            eta[:] = eta0 + alpha * deta
            if fit_bg:
                coef = coef0 + alpha * dtheta[n_glob - nb :]
                bg_img = bg_image(coef)
            trial = rebuild()
            new = float(_wsse(w, trial, uniform_w[0]))
            if new <= cur:
                if not shared_rho:  # free widths: converged by the sweeps' position test
                    return trial, 0.0, alpha
                return trial, float(np.max(np.abs(rho - rho0) / rho0)), alpha
            alpha *= shrink
        rho[:] = rho0
        eta[:] = eta0
        if fit_bg:
            coef = coef0
            bg_img = bg_image(coef)
        if free_rho_col and const_bg and n_glob == 1:
            # the Schur step (block-diagonal curvature, local Jacobi steps) was rejected:
            # the response-direction step with the true curvature still moves the background
            return _background_line_step(res_, ainv_G)
        return res_, 0.0, 0.0

    npar = 4 if free_rho_col else 3
    x_start, y_start = x.copy(), y.copy()

    def overlap_pairs(cut_: float = cut_h) -> tuple[np.ndarray, np.ndarray]:
        rc_ = _reach(cut_, rho)
        tree_ = cKDTree(np.column_stack([x, y]))
        pr = tree_.query_pairs(2.0 * float(rc_.max()), output_type="ndarray")
        if pr.size:
            dd_ = np.hypot(x[pr[:, 0]] - x[pr[:, 1]], y[pr[:, 0]] - y[pr[:, 1]])
            pr = pr[dd_ < rc_[pr[:, 0]] + rc_[pr[:, 1]]]
        else:
            pr = np.zeros((0, 2), dtype=np.int64)
        return (
            np.concatenate([np.arange(n), pr[:, 0]]).astype(np.int64),
            np.concatenate([np.arange(n), pr[:, 1]]).astype(np.int64),
        )

    def joint_system(res_: np.ndarray):
        """Full sparse Gauss–Newton system H δ = g over all parameters."""
        from scipy import sparse

        p_i, p_j = overlap_pairs()
        blocks = K.fisher_blocks(
            np.array(data.shape, dtype=np.int64), w, x, y, eta, rho, cut_h, free_rho_col, p_i, p_j
        )
        rr = np.arange(npar)
        rows = (p_i[:, None, None] * npar + rr[None, :, None]) + 0 * rr[None, None, :]
        cols = (p_j[:, None, None] * npar + rr[None, None, :]) + 0 * rr[None, :, None]
        off = p_i != p_j
        r_all = [rows.ravel(), cols[off].ravel()]
        c_all = [cols.ravel(), rows[off].ravel()]
        v_all = [blocks.ravel(), blocks[off].ravel()]
        if n_glob:
            gimg = global_images()
            gk, Gk = K.column_gradient_terms(res_, w, x, y, eta, rho, cut, free_rho_col, gimg)
            c_mat, h = K.weighted_gram(gimg, w, res_, uniform_w[0])
            gr = (np.arange(n)[:, None, None] * npar + rr[None, :, None]) + 0 * np.arange(n_glob)[
                None, None, :
            ]
            gc = n * npar + np.arange(n_glob)[None, None, :] + 0 * gr
            r_all += [gr.ravel(), gc.ravel()]
            c_all += [gc.ravel(), gr.ravel()]
            v_all += [Gk.ravel(), Gk.ravel()]
            cg = n * npar + np.arange(n_glob)
            r_all.append(np.repeat(cg, n_glob))
            c_all.append(np.tile(cg, n_glob))
            v_all.append(c_mat.ravel())
            gvec = np.concatenate([gk.ravel(), h])
        else:
            gk, _ = K.column_gradient_terms(
                res_, w, x, y, eta, rho, cut, free_rho_col, np.zeros((0,) + data.shape)
            )
            gvec = gk.ravel()
        dim = n * npar + n_glob
        hmat = sparse.coo_matrix(
            (np.concatenate(v_all), (np.concatenate(r_all), np.concatenate(c_all))),
            shape=(dim, dim),
        ).tocsc()
        return hmat, gvec

    lam_joint = [1e-3]

    def _joint_step(res_: np.ndarray, fix_pos: bool = False, fix_rho: bool = False):
        from scipy import sparse

        nonlocal coef, bg_img
        if lam_joint[0] > 1e3:  # the last steps failed: restart the damping
            lam_joint[0] = 1e-3
        hmat, gvec = joint_system(res_)
        dim = hmat.shape[0]
        keep = np.ones(dim, dtype=bool)
        if fix_pos:
            keep[0 : n * npar : npar] = False
            keep[1 : n * npar : npar] = False
        else:  # columns held at the displacement bound keep their positions
            pinned = np.flatnonzero(np.hypot(x - x_start, y - y_start) >= max_disp_px * 0.999)
            keep[pinned * npar] = False
            keep[pinned * npar + 1] = False
        if fix_rho:
            if free_rho_col:
                keep[3 : n * npar : npar] = False
            if shared_rho:
                keep[n * npar : n * npar + nt] = False
        idx = np.flatnonzero(keep)
        if idx.size < dim:
            hmat = hmat[idx][:, idx]
            gsub = gvec[idx]
        else:
            gsub = gvec
        dg = hmat.diagonal()
        dg = np.where(dg > 0, dg, 1.0)
        cur = float(_wsse(w, res_, uniform_w[0]))
        x0, y0, rho0, eta0, coef0 = x.copy(), y.copy(), rho.copy(), eta.copy(), coef.copy()
        eta_tiny = 1e-7 * float(np.median(np.abs(eta))) + 1e-300
        for _ in range(8):
            amat = hmat + sparse.diags(lam_joint[0] * dg)
            d = np.zeros(dim)
            d[idx] = _solve_spd(amat, gsub)
            if not np.all(np.isfinite(d)):
                lam_joint[0] *= 10.0
                continue
            dc = d[: n * npar].reshape(n, npar)
            sh = np.hypot(dc[:, 0], dc[:, 1])
            f = np.minimum(1.0, max_shift / np.maximum(sh, 1e-300))
            x[:] = x0 + dc[:, 0] * f
            y[:] = y0 + dc[:, 1] * f
            disp = np.hypot(x - x_start, y - y_start)
            fct = np.minimum(1.0, max_disp_px / np.maximum(disp, 1e-300))
            x[:] = x_start + (x - x_start) * fct
            y[:] = y_start + (y - y_start) * fct
            sh = np.hypot(x - x0, y - y0)
            f = 1.0
            eta[:] = eta0 + dc[:, 2]
            if free_rho_col:
                rho[:] = np.clip(
                    rho0 + np.clip(dc[:, 3], -0.2 * rho0, 0.25 * rho0), rho_min, rho_max
                )
            k0 = n * npar
            if shared_rho:
                dt = d[k0 : k0 + nt][tid]
                rho[:] = np.clip(rho0 + np.clip(dt, -0.2 * rho0, 0.25 * rho0), rho_min, rho_max)
                k0 += nt
            if fit_bg:
                coef = coef0 + d[k0 : k0 + nb]
                bg_img = bg_image(coef)
            trial = rebuild()
            new = float(_wsse(w, trial, uniform_w[0]))
            if new <= cur:
                lam_joint[0] = max(lam_joint[0] / 3.0, 1e-9)
                fr = np.hypot(x - x_start, y - y_start) < max_disp_px * (1.0 - 1e-6)
                fr &= eta > 0.05 * float(np.median(np.abs(eta)))
                return (
                    trial,
                    float(np.max((sh * f)[fr], initial=0.0)),
                    float(np.max(np.abs(rho - rho0) / rho0)),
                )
            lam_joint[0] *= 4.0
            # a step this small that still raises the SSE only meets the truncation edges of
            # the Gaussians (the model is discontinuous at r = c·ρ): more damping cannot help
            tiny = (
                float(np.max(np.hypot(x - x0, y - y0), initial=0.0)) < 0.1 * tol
                and float(np.max(np.abs(rho - rho0) / rho0, initial=0.0)) < 1e-7
                and float(np.max(np.abs(eta - eta0), initial=0.0)) < eta_tiny
            )
            x[:], y[:], rho[:], eta[:] = x0, y0, rho0, eta0
            if fit_bg:
                coef = coef0
                bg_img = bg_image(coef)
            if tiny:
                break
        return res_, 0.0, 0.0

    order = np.lexsort((x, np.floor(y / 16.0))).astype(np.int64)
    # rejected column steps below tol/10 end as converged (joint estimator; StatSTEM's box
    # stage keeps its damping schedule)
    tiny_step = 0.1 * tol if estimator == "joint" else 0.0
    # Newton (exact Hessian) column steps where the sweeps alone converge the fit (no joint
    # LM finish, N > 2000 by default): Gauss–Newton steps of weak, noisy columns (η of a few
    # noise σ, e.g. the Br columns of CsPbBr3) overshoot and converge only linearly, and the
    # sweeps then stop short of the least-squares optimum.  The joint finish keeps its
    # Gauss–Newton sweeps (same results as before on the StatSTEM images).
    newton_steps = estimator == "joint" and not joint
    # per-column tolerance (tol_crlb): tol_px everywhere except in the sweeps-only path
    tol_col = np.full(n, tol)
    crlb_tol = newton_steps and tol_crlb > 0.0
    bg_state = {"ok": not (crlb_tol and fit_bg)}

    def eta_err_est() -> np.ndarray:
        """σ_η,k ≈ sqrt(s²/(π ρ_k² w_k)): amplitude error of an isolated column."""
        ic = np.clip(np.round(y).astype(np.int64), 0, data.shape[0] - 1)
        jc = np.clip(np.round(x).astype(np.int64), 0, data.shape[1] - 1)
        sse_ = float(_wsse(w, res, uniform_w[0]))
        s2 = sse_ / max(data.size - n * npar, 1) if uniform_w[0] else 1.0
        return np.sqrt(s2 / (np.pi * rho * rho * w[ic, jc]))

    def update_tol_col(sse_: float) -> None:
        """tol_col = max(tol_px, tol_crlb·σ_k), σ_k² = s²·2/(π η_k² w_k) (isolated column)."""
        if not crlb_tol:
            return
        ic = np.clip(np.round(y).astype(np.int64), 0, data.shape[0] - 1)
        jc = np.clip(np.round(x).astype(np.int64), 0, data.shape[1] - 1)
        s2 = sse_ / max(data.size - n * npar, 1) if uniform_w[0] else 1.0
        var = s2 * 2.0 / (np.pi * np.maximum(eta * eta, 1e-300) * w[ic, jc])
        tol_col[:] = np.maximum(tol, tol_crlb * np.sqrt(var))

    partition: dict[str, Any] = {"rbox": -1.0, "cells": None}

    def neighbour_pairs() -> tuple[np.ndarray, np.ndarray]:
        """Pairs of columns whose current models overlap."""
        pr = cKDTree(np.column_stack([x, y])).query_pairs(
            2.0 * float(_reach(cut, rho.max())) + 1.0, output_type="ndarray"
        )
        if not pr.size:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return pr[:, 0], pr[:, 1]

    def active_set(level: float = 0.1) -> np.ndarray:
        """Columns whose last step moved them ≥ level·tol (or failed), and their neighbours."""
        moving = (shifts >= level * tol_col) | ~accepted
        pa, pb = neighbour_pairs()
        act = moving.copy()
        act[pb[moving[pa]]] = True
        act[pa[moving[pb]]] = True
        return act

    def colour_partition():
        """Cells of the start positions, 4 colours; same-colour cells are ≥ one cell apart
        and a cell spans two column boxes plus twice the largest displacement, so concurrent
        column steps never touch the same pixels — for every sweep of the fit."""
        rbox = float(_reach(cut, rho.max())) * 1.25 + max_shift + 1.0
        if rbox > partition["rbox"]:
            partition["rbox"] = 1.1 * rbox
            size = 2.0 * partition["rbox"] + 2.0 + 2.0 * max_disp_scalar
            partition["cells"] = _cells(x_start, y_start, size)
        return partition["cells"]

    def iterate(
        max_it: int,
        *,
        fix_pos: bool = False,
        box_half: float = 0.0,
        fix_rho: bool = False,
        warm: bool = False,
    ) -> tuple[bool, int]:
        nonlocal res, w
        sse_prev = np.inf
        polish = warm  # a warm start (reweighting stage): joint steps from the first sweep
        for it_ in range(1, max_it + 1):
            # active set: after two sweeps, a column is skipped when its last step moved it
            # < tol/10 (and was accepted) and no overlapping neighbour moved more; skipped
            # columns keep that shift, so the convergence test still covers every column
            # (not in StatSTEM's box stage, which refits every column in every iteration)
            active = active_set() if it_ > 2 and not fix_pos and box_half <= 0.0 else None
            if estimator == "joint":
                # always the colour-ordered sweep: the same order (and result, bit for bit)
                # with one thread or many; `parallel` only sets the thread count
                cell_ptr, cell_cols, colour_ptr, colour_cells = colour_partition()
                # the sweep's arguments before the active set (same in both calls)
                lead = (
                    res,
                    w,
                    x,
                    y,
                    eta,
                    rho,
                    cut,
                    free_rho_col and not fix_rho,
                    lam,
                    max_shift,
                    rho_min,
                    rho_max,
                    cell_ptr,
                    cell_cols,
                    colour_ptr,
                    colour_cells,
                    shifts,
                    accepted,
                    x_start,
                    y_start,
                    max_disp_px,
                    fix_pos,
                    box_half,
                )
                K.sweep(*lead, active, tiny_step, newton_steps)
                # tail: when at most 5 % of the columns still move by ≥ tol, those and their
                # neighbours get up to 3 extra passes (coupled weak columns otherwise set the
                # number of sweeps, converging linearly)
                if active is not None and not fix_pos:
                    for _ in range(3):
                        n_str = int(np.count_nonzero(shifts >= tol_col))
                        if n_str == 0 or n_str > 0.05 * n:
                            break
                        straggle = active_set(1.0)
                        K.sweep(*lead, straggle, tiny_step, newton_steps)
            else:
                K.sweep_serial(
                    res,
                    w,
                    x,
                    y,
                    eta,
                    rho,
                    cut,
                    free_rho_col and not fix_rho,
                    lam,
                    max_shift,
                    rho_min,
                    rho_max,
                    order,
                    shifts,
                    accepted,
                    x_start,
                    y_start,
                    max_disp_px,
                    fix_pos,
                    box_half,
                    active,
                    tiny_step,
                    newton_steps,
                )
            drho = 0.0
            jshift = 0.0
            if box_half > 0:
                # StatSTEM re-solves eta and the background after every sweep: an exact sparse
                # solve every 8th sweep (32nd after 40), exact eta-only Gauss-Seidel passes
                # in between
                K.eta_pass(res, w, x, y, eta, rho, cut, order)
                if it_ % (8 if it_ <= 40 else 32) == 1 or float(shifts.max(initial=0.0)) < tol:
                    res, _, _ = _joint_step(res, fix_pos=True, fix_rho=True)
            elif joint and (polish or it_ > 10):
                # exact joint LM step on all parameters, once the cheap sweeps are close
                res, jshift, drho = _joint_step(res, fix_pos=fix_pos, fix_rho=fix_rho)
            elif (
                not shared_rho
                and not joint
                and bool(np.all(shifts < tol_col))
                and bg_state["ok"]
                and it_ > 1
                and n_glob
            ):
                pass  # converged sweep, free or fixed widths: the test below ends the fit
            elif n_glob and not fix_rho:
                coef_before = coef.copy()
                res, drho, alpha_g = _global_step(res)
                if crlb_tol and fit_bg:
                    # the background has converged when its last step was below tol_crlb
                    # times a column amplitude's error, σ_η ≈ σ/(√π ρ) (an isolated column;
                    # η takes up a background change about one to one)
                    dcoef = float(np.max(np.abs(coef - coef_before), initial=0.0))
                    bg_state["ok"] = dcoef < tol_crlb * float(np.median(eta_err_est()))
                if joint and alpha_g == 0.0:
                    polish = True  # the block-diagonal Schur step failed: go joint
            if tail is not None:  # probe tails of the updated columns (Jacobi update)
                new_tail = tail_image()
                res += tail_state["img"] - new_tail
                tail_state["img"] = new_tail
            if wstate["update"]:
                w = poisson_weights()
            sse = float(_wsse(w, res, uniform_w[0]))
            free = np.hypot(x - x_start, y - y_start) < max_disp_px * (1.0 - 1e-6)
            free &= eta > 0.05 * float(np.median(np.abs(eta)))  # unlocatable (empty) columns
            # (shifts in units of each column's tolerance, times tol_px: = shifts without
            # tol_crlb)
            moved = max(float((shifts * (tol / tol_col))[free].max(initial=0.0)), jshift)
            if not fix_pos:
                update_tol_col(sse)
            small_sse = abs(sse_prev - sse) <= 1e-10 * sse
            sse_prev = sse
            if joint and not polish and moved < 0.02 and drho < 1e-3:
                polish = True  # switch to joint steps
                continue
            # widths converged: shared widths to 1e-6 (relative); free widths, like positions,
            # to tol_px (a joint step and a sweep may trade ~1e-5 px across truncation edges)
            rho_ok = drho < 1e-6 or (free_rho_col and drho * float(rho.max()) < tol)
            rho_ok = rho_ok and bg_state["ok"]
            stalled = small_sse and moved < 10 * tol and rho_ok and it_ > 2
            if (moved < tol and rho_ok and (it_ > 1 or free_rho_col)) or stalled:
                if not fix_pos or small_sse:
                    if polish or not joint or box_half > 0 or stalled:
                        return True, it_
                    polish = True
        return False, max_it

    def refit_variance(lev: np.ndarray) -> None:
        """Unknown detector gain: v = a + b·μ fitted to the current residuals."""
        a_, b_, floor_ = _residual_variance_coefs(data - res, res, leverage=lev, haar=True)
        vstate.update(s=b_, o=0.0, c=a_, floor=floor_, fitted=True)

    def _irls_outer(conv: bool, it_total: int) -> tuple[bool, int]:
        """Poisson ML (quasi-likelihood with a fitted variance when the gain is unknown)
        from the least-squares restart (the per-sweep reweighting did not converge in
        _IRLS_FREE_SWEEPS sweeps) or, gain unknown, from the converged per-sweep fit: the
        weights 1/v(μ) are frozen during a stage, which the
        weighted least-squares steps converge quadratically, then recomputed from the new
        model, until a stage moves no column by more than its tolerance
        ``max(tol_px, tol_crlb·σ_k)`` (iteratively reweighted least squares as an outer
        loop; Fisher scoring, e.g. McCullagh & Nelder, *Generalized Linear Models*, 2nd ed.
        1989, §2.5).  Reweighting after every sweep never settled where the Gaussian model
        misfits: on a multislice field without vacuum (Pearson χ²/N ≈ 6) the shared width
        and the positions kept moving by 1e-3 px, 258 sweeps on 25 columns, and a 122-column
        field ran for minutes."""
        nonlocal w
        ic = np.clip(np.round(y).astype(np.int64), 0, data.shape[0] - 1)
        jc = np.clip(np.round(x).astype(np.int64), 0, data.shape[1] - 1)
        mu_w = data - res  # the model the weights are computed from
        damp, last_move = 1.0, np.inf
        for stage in range(_IRLS_MAX_STAGES):
            if vstate["kind"] == "fitted":
                refit_variance(_pixel_leverage(data.shape, x, y, eta, rho, cut_h, free_rho_col))
            w = 1.0 / _variance_of(mu_w, vstate)
            uniform_w[0] = False
            x0, y0, r0 = x.copy(), y.copy(), rho.copy()
            conv, k = iterate(int(max_iter), fix_pos=not fit_positions, warm=stage > 0)
            it_total += k
            with np.errstate(divide="ignore", invalid="ignore"):
                sig = np.sqrt(2.0 / (np.pi * np.maximum(eta * eta, 1e-300) * w[ic, jc]))
            tolk = np.maximum(tol, tol_crlb * np.nan_to_num(sig, nan=0.0))
            free_ = np.hypot(x - x_start, y - y_start) < max_disp_px * (1.0 - 1e-6)
            free_ &= eta > 0.05 * float(np.median(np.abs(eta)))
            dpos = np.hypot(x - x0, y - y0)
            drho_ = np.abs(rho - r0)
            move = float(np.max(dpos[free_] / tolk[free_], initial=0.0))
            if move > 0.5 * last_move:
                # not contracting (a weak column flipping between two optima whose weights
                # favour each other: a 2-cycle of 0.6 px on the multislice field): from now
                # on the weights follow the model half-way (averaged reweighting)
                damp = 0.5
            last_move = move
            mu_w = mu_w + damp * ((data - res) - mu_w)
            rho_ok_ = bool(np.all(drho_ < np.maximum(tol, 0.1 * tolk)))
            moving = free_ & (dpos >= tolk)
            if move < 1.0 and rho_ok_:
                unsettled[:] = False
                break
            # a few columns that keep cycling between optima even with averaged weights (a
            # weak Br column at the border of the multislice field: a 3-cycle of 0.4-1.7 px)
            # do not hold up the fit: stop, and mark them not converged
            unsettled[:] = moving
            if damp < 1.0 and stage >= 8 and rho_ok_ and moving.sum() <= max(1, 0.01 * n):
                break
        return conv, it_total

    unsettled = np.zeros(n, dtype=bool)  # columns the reweighting stages left moving
    if estimator == "statstem":
        if n > 1:
            dbar = float(np.ceil(np.mean(cKDTree(xy_A).query(xy_A, k=2)[0][:, 1])))
        else:
            dbar = float(np.ceil(0.25 * min(data.shape) * dx))
        box_half = float(np.round(dbar / dx) / 2.0)
        c1, i1 = iterate(int(max_iter), fix_pos=True)
        c2, i2 = iterate(int(max_iter), box_half=box_half, fix_rho=True)
        c3, i3 = iterate(int(max_iter), fix_pos=True)
        converged, it = c1 and c2 and c3, i1 + i2 + i3
    else:
        n0 = min(int(max_iter), _IRLS_FREE_SWEEPS) if irls_outer else int(max_iter)
        start_state = (x.copy(), y.copy(), eta.copy(), rho.copy(), coef.copy(), bg_img.copy())
        converged, it = iterate(n0, fix_pos=not fit_positions)
        if irls_outer:
            wstate["update"] = False
            if not converged and max_iter > n0:
                # the per-sweep reweighting oscillates (weak columns of a field the Gaussian
                # model misfits): restart, least squares first, then frozen-weight stages
                for arr, val in zip((x, y, eta, rho), start_state[:4], strict=True):
                    arr[:] = val
                coef, bg_img = start_state[4].copy(), start_state[5].copy()
                lam[:] = 1e-3
                shifts[:] = 0.0
                accepted[:] = False
                tol_col[:] = tol
                res = rebuild()
                uniform_w[0] = True
                w = np.ones(data.shape)
                converged, k0 = iterate(int(max_iter), fix_pos=not fit_positions)
                converged, it = _irls_outer(converged, it + k0)
            elif vstate["kind"] == "fitted":
                converged, it = _irls_outer(converged, it)

    # --- uncertainties from the Fisher information
    dispersion = None
    if noise == "poisson":
        # quasi-likelihood: the Fisher information of the variance model v(μ); the
        # dispersion φ = Σ r²/(1 − h) / Σ v (McCullagh & Nelder 1989, §9.2; h the pixel
        # leverage, HC2) is ≈ 1 when v is the image's variance; a wrong detector gain g'
        # scales v by g'/g and φ by g/g' (warning below).  Raw counts of an unknown gain
        # (the StatSTEM CsPbBr3 image: ~200 counts/e⁻) were given the errors of gain 1, 10×
        # too small; there v = a + b·μ is fitted to the residuals.
        lev = _pixel_leverage(data.shape, x, y, eta, rho, cut_h, free_rho_col)
        if vstate["kind"] == "fitted":
            refit_variance(lev)
        v_pix = _variance_of(data - res, vstate)
        w = 1.0 / v_pix
        uniform_w[0] = False
        dispersion = float(np.sum(res * res / (1.0 - lev)) / np.sum(v_pix))
        if vstate["kind"] == "detector" and not (
            1.0 / _DISPERSION_TOLERATED < dispersion < _DISPERSION_TOLERATED
        ):
            warn(
                f"fit_columns(noise='poisson'): the residuals are {dispersion:.3g}× the "
                f"variance of the detector model (gain {vstate['s']:.4g}, offset "
                f"{vstate['o']:.4g}): a wrong detector gain/offset in image.metadata (or "
                "normalisation), or a model that misfits the image (e.g. an unfitted probe "
                "tail at high dose: psf_tail=); the errors are the CRLB of the given "
                f"detector, × √{dispersion:.3g} if the gain is wrong (attrs['variance_model'])",
                UserWarning,
                stacklevel=2,
            )
    sse_w = float(_wsse(w, res, uniform_w[0]))
    n_par = n * (4 if free_rho_col else 3) + nb + (len(tnames) if shared_rho else 0)
    dof = max(data.size - n_par, 1)
    if noise == "gaussian":
        sigma2 = sse_w / dof
    else:
        # a known detector: the CRLB (with a warning when φ is off).  φ cannot tell a wrong
        # gain from model misfit, which grows as gain·dose (an unfitted probe tail: φ 1.35
        # at 10⁵ e⁻/Å² gain 1, 2.5 at gain 5; 1.06-1.10 with psf_tail) and which the spread
        # over noise draws does not show (errors scaled by φ: spread / error 0.6-0.74).
        # A fitted variance (Haar details of the residuals) is the noise without the misfit
        # that φ includes: its CRLB (scaled by φ: spread / error 0.52-0.91 at 10⁵ e⁻/Å²).
        sigma2 = 1.0
    npar = 4 if free_rho_col else 3
    cov = fisher_covariance(data.shape, w, x, y, eta, rho, cut_h, free_rho_col)
    if noise == "gaussian":
        # least squares on count data: the pixel variance grows with the signal, so one
        # image-wide σ² (most pixels dim) understates the errors of bright columns (Pb–Br
        # position errors 5× the reported ones at 2·10⁴ e⁻/Å²).  Each parameter's variance
        # takes the variance of the pixels that inform it (sandwich estimator with a
        # variance model v(μ) = a + b·μ fitted to the residuals; diagonal approximation)
        ls_coefs: dict = {}
        shot = _shot_noise_slope(img)
        factor = _effective_variance(
            data.shape, data - res, res, x, y, eta, rho, cut_h, free_rho_col, coefs=ls_coefs
        )
        slope = ls_coefs.get("b", 0.0)
        ls_dispersion = slope / shot if shot is not None and shot > 0 else None
        if ls_dispersion is not None and ls_dispersion > _DISPERSION_TOLERATED:
            # the residuals grow faster with the signal than the dose's shot noise: a misfit
            # of the peak shape (multislice peaks, probe tails at high dose), noise the dose
            # does not make (scan noise; an audit's one frozen-phonon configuration per
            # pixel: 21-23×), or a wrong dose.  Which one the residuals cannot tell: the
            # errors keep the residuals' variance (what repeated acquisitions would show
            # when it is noise; too wide when it is a misfit, a bias) and it is said
            warn(
                f"fit_columns: the residuals grow {ls_dispersion:.3g}× faster with the signal "
                "than the shot noise of the image's dose: the Gaussian columns misfit the "
                "peaks (a non-Gaussian probe or multislice peak shape, probe tails at high "
                "dose), the image holds noise the dose does not make (scan noise), or the "
                "dose is wrong.  The error bars include that variance (too wide where it is "
                "a misfit, which biases the cross-sections instead: Voronoi sums, "
                "scs='voronoi', do not depend on the peak shape) (attrs['variance_model'])",
                UserWarning,
                stacklevel=2,
            )
        cov *= factor
        if shot is not None and shot > 0:
            slope = shot  # electrons per column from the dose, not from a misfit
    else:
        cov *= sigma2
        slope = float(vstate["s"]) * (sigma2 if vstate["kind"] == "detector" else 1.0)
    with np.errstate(invalid="ignore"):  # an emptied column (η ≈ 0) has no position: NaN
        x_err = np.sqrt(cov[:, 0, 0]) * dx
        y_err = np.sqrt(cov[:, 1, 1]) * dx
    var_eta = cov[:, 2, 2]
    rho_A_arr = rho * dx
    if free_rho_col:
        var_rho = cov[:, 3, 3] * dx * dx
        cov_er = cov[:, 2, 3] * dx
        u = np.zeros(n)
    elif shared_rho:
        s_mat, _, _, ainv_G = global_system(res)
        cov_g = np.linalg.pinv(s_mat) * sigma2
        var_rho = np.array([cov_g[t, t] for t in tid]) * dx * dx
        u = -ainv_G[:, 2, :nt][np.arange(n), tid] / dx  # d eta / d rho_A at fixed data
        cov_er = u * var_rho
        var_eta = var_eta + u * u * var_rho
    else:
        var_rho = np.zeros(n)
        cov_er = np.zeros(n)
    tail_scale = 1.0 / (1.0 - tail["fraction"]) if tail is not None else 1.0
    scs = 2.0 * np.pi * eta * rho_A_arr**2 * tail_scale
    ds_de = 2.0 * np.pi * rho_A_arr**2 * tail_scale
    ds_dr = 4.0 * np.pi * eta * rho_A_arr * tail_scale
    var_scs = ds_de**2 * var_eta + ds_dr**2 * var_rho + 2.0 * ds_de * ds_dr * cov_er
    xy_out = px_to_A(np.column_stack([x, y]), img)
    finite = np.isfinite(x_err) & np.isfinite(y_err) & np.isfinite(var_eta)
    finite &= np.hypot(x - x_start, y - y_start) < max_disp_px * (1.0 - 1e-6)
    df = pd.DataFrame(
        {
            "x_A": xy_out[:, 0],
            "y_A": xy_out[:, 1],
            "type": np.asarray(tarr, dtype=object).astype(str),
            "rho_A": rho_A_arr,
            "eta": eta,
            "scs": scs,
            "x_err_A": x_err,
            "y_err_A": y_err,
            "rho_err_A": np.sqrt(np.maximum(var_rho, 0.0)),
            "eta_err": np.sqrt(np.maximum(var_eta, 0.0)),
            "scs_err": np.sqrt(np.maximum(var_scs, 0.0)),
            "converged": (np.full(n, converged) | (shifts < tol_col)) & finite & ~unsettled,
        }
    )
    if isinstance(positions, pd.DataFrame) and "grain" in positions.columns:
        # several crystals (find_columns): strain and unit-cell outputs need each its lattice
        df["grain"] = positions["grain"].to_numpy()
    # a fitted width below 0.4 px (the bound is 0.3 px) is a column the data do not
    # resolve (too few counts per column): a Gaussian that narrow lies inside one pixel,
    # and its η and SCS are not measured (dose 100 e⁻/Å², 0.4 Å pixels: the Br width
    # collapsed to 0.12 Å, SCS 2.5x low, 92 % of them "converged")
    collapsed = np.zeros(n, bool)
    rho_resolved = 0.4
    if width != "fixed":
        collapsed = rho < rho_resolved
        df.loc[collapsed, "converged"] = False
        if collapsed.any():
            bad = sorted(set(df["type"].to_numpy()[collapsed]))
            warn(
                # no count in the text: one warning per call site, not per frame of a series
                f"fit_columns: the fitted width of {'/'.join(bad)} columns (how many: "
                f"attrs['n_unresolved_width']) fell below {rho_resolved:g} px ({rho_resolved * dx:.3g} Å, "
                "inside one pixel): the data do not resolve them (too few counts), so their "
                "SCS are not measured; they are marked converged = False (fix the width: "
                "width='fixed', rho_A=...)",
                UserWarning,
                stacklevel=2,
            )
    # electrons per column: Gaussian volume (image units·px²) / variance slope (image units
    # per electron: the gain, or 1/(dose·dx²) normalised); below ~50 the estimate is no
    # longer linear in the noise and the errors are too small (measured, least squares,
    # 25 Å crystal, 0.3 Å px: spread / error 1.25-1.35 at 22 e⁻, 1.45-1.6 at 18 e⁻, NaN
    # errors at 4.5 e⁻; 1.0-1.1 at ≥ 67 e⁻)
    e_col = 2.0 * np.pi * eta * rho**2 / slope if slope > 0 else np.full(n, np.nan)
    # a type whose every column has no estimate (η or ρ non-finite: columns the fit emptied)
    # has none: NaN, without numpy's "All-NaN slice" RuntimeWarning (a line of our code that
    # reached the user's terminal)
    e_by_type = {}
    for i, t in enumerate(tnames):
        e_t = e_col[tid == i]
        e_t = e_t[np.isfinite(e_t)]
        e_by_type[t] = float(np.median(e_t)) if e_t.size else float("nan")
    low = sorted(t for t, v in e_by_type.items() if v < _MIN_ELECTRONS_PER_COLUMN)
    if low:
        warn(
            # no count in the text: one warning per call site, not per frame of a series
            f"fit_columns: {'/'.join(low)} columns hold a median of fewer than "
            f"{_MIN_ELECTRONS_PER_COLUMN:g} detected electrons (how many: "
            "attrs['electrons_per_column']): too few for the linearised error bars, which "
            "are then too small (1.3-1.6× at ~20 e⁻)",
            UserWarning,
            stacklevel=2,
        )
    units = img.metadata.get("units", "fraction" if img.metadata.get("normalized") else "counts")
    df.attrs.update(
        n_unresolved_width=int(collapsed.sum()),
        pixel_size_A=float(dx),
        origin_A=[float(v) for v in img.origin_A],
        image_shape=[int(v) for v in data.shape],
        background={
            "model": "fixed" if fixed_bg is not None else bg_model,
            "coefficients": [float(fixed_bg)] if fixed_bg is not None else coef.tolist(),
            "basis": "polynomial in u, v ∈ [−1, 1] across the image: 1, u, v, u², uv, v²",
        },
        width=width,
        fit_positions=bool(fit_positions),
        # the dose of the fitted image (a fitted SCS library needs it: the fit's noise bias)
        dose_e_per_A2=None if img.dose_e_per_A2 is None else float(img.dose_e_per_A2),
        # the beam energy of the image where its file says (a library must be simulated at
        # it: 200 kV columns scatter more than 300 kV ones, counts off by whole atoms)
        voltage_kV=voltage_kV_of(img.metadata),
        # probe semi-angle and detector range, mrad (the library's must match them too)
        **imaging_angles_of(img.metadata),
        rho_A_by_type={t: float(np.median(rho_A_arr[tid == i])) for i, t in enumerate(tnames)},
        noise=noise,
        estimator=estimator,
        psf_tail=tail,
        cutoff_rho=float(cut_abs),
        truncation=truncation,
        n_iter=int(it),
        parallel=bool(parallel),
        converged=bool(converged),
        sse=sse_w,
        sigma2=float(sigma2),
        scs_units=f"{units}·Å²",
        electrons_per_column=e_by_type,
        method="joint Gaussian model, block Gauss–Seidel LM (perovstem)",
    )
    if noise == "gaussian" and ls_coefs:
        df.attrs["variance_model"] = {
            "kind": ls_coefs.get("kind", "fitted to the residuals"),
            "formula": "v = const + slope·μ",
            "slope_fitted": float(ls_coefs.get("b", 0.0)),
            "const_fitted": float(ls_coefs.get("a", 0.0)),
            "slope_shot_noise": None if shot is None else float(shot),
            "dispersion": None if ls_dispersion is None else float(ls_dispersion),
        }
    if noise == "poisson":
        df.attrs["variance_model"] = {
            "kind": vstate["kind"],
            "formula": "v = slope·(μ − offset) + const",
            "slope": float(vstate["s"]),
            "offset": float(vstate["o"]),
            "const": float(vstate["c"]),
            "dispersion": float(dispersion),
        }
    _log.debug(
        "fit_columns: %d columns, %d sweeps, %.3f s", n, int(it), time.perf_counter() - t_start
    )
    return df


def _reach(cut: float, rho: Any) -> Any:
    """Largest distance (px) from a column centre at which its model is non-zero."""
    if cut > 0:
        return cut * rho
    return np.sqrt(2.0) * (-cut) * rho + 1.0


def _is_statstem_input(img: Image) -> bool:
    """True for images read from StatSTEM files (``perovstem.io.load_statstem``)."""
    return str(img.metadata.get("format", "")).lower() == "statstem"


def _wsse(w: np.ndarray, r: np.ndarray, unit: bool) -> float:
    """Weighted sum of squares Σ w r² (no weight multiplication when ``unit``)."""
    from perovstem.atoms import _kernels as K

    return float(K.wsse(w, r, bool(unit)))


def _solve_spd(amat, rhs: np.ndarray) -> np.ndarray:
    """Solve the damped normal equations: sparse LU for small systems, Jacobi-preconditioned
    conjugate gradients (SPD matrix, diagonally dominant blocks) for large ones."""
    from scipy.sparse.linalg import LinearOperator, cg, splu, spsolve

    dim = amat.shape[0]
    if dim <= 1500:
        # symmetric mode (ordering of A + Aᵀ, diagonal pivots): ~8× faster than the default
        # partial pivoting on these SPD block systems, same solution to rounding
        try:
            lu = splu(
                amat.tocsc(),
                permc_spec="MMD_AT_PLUS_A",
                diag_pivot_thresh=0.0,
                options={"SymmetricMode": True},
            )
            return lu.solve(rhs)
        except RuntimeError:  # exactly singular: let the caller raise the damping
            return spsolve(amat.tocsc(), rhs, permc_spec="MMD_AT_PLUS_A")
    a = amat.tocsr()
    dg = a.diagonal()
    dinv = 1.0 / np.where(dg > 0, dg, 1.0)
    m = LinearOperator((dim, dim), matvec=lambda v: dinv * v, dtype=float)
    sol, info = cg(a, rhs, M=m, rtol=1e-10, atol=0.0, maxiter=500)
    return sol if info >= 0 else np.full(dim, np.nan)


def _resolve_tail(psf_tail: Any, img: Image) -> dict | None:
    if psf_tail is None:
        return None
    if isinstance(psf_tail, str):
        if psf_tail != "auto":
            raise ParameterError(f"`psf_tail` must be a dict, 'auto' or None, got {psf_tail!r}")
        psf = img.metadata.get("psf")
        if not isinstance(psf, dict) or "tail_fraction" not in psf:
            raise ParameterError(
                "`psf_tail='auto'` needs image.metadata['psf'] with tail_fraction, tail_gamma_A,"
                " tail_beta, tail_radius_A (as written by perovstem.simulate)"
            )
        psf_tail = {
            "fraction": psf["tail_fraction"],
            "gamma_A": psf["tail_gamma_A"],
            "beta": psf["tail_beta"],
            "radius_A": psf["tail_radius_A"],
        }
    if not isinstance(psf_tail, dict):
        raise ParameterError(f"`psf_tail` must be a dict, 'auto' or None, got {psf_tail!r}")
    try:
        out = {k: float(psf_tail[k]) for k in ("fraction", "gamma_A", "beta", "radius_A")}
    except KeyError as exc:
        raise ParameterError(f"`psf_tail` lacks key {exc.args[0]!r}") from None
    if not 0.0 <= out["fraction"] < 0.9:
        raise ParameterError(f"`psf_tail['fraction']` must be in [0, 0.9), got {out['fraction']!r}")
    for k in ("gamma_A", "radius_A"):
        check_positive(f"psf_tail['{k}']", out[k])
    if out["beta"] <= 1.0:
        raise ParameterError(f"`psf_tail['beta']` must be > 1, got {out['beta']!r}")
    return out if out["fraction"] > 0 else None


def _tail_fft(shape: tuple[int, int], dx: float, tail: dict):
    """FFT of the truncated Moffat kernel normalised per pixel (sum = 1), on a padded grid."""
    from scipy import fft

    r = int(np.ceil(tail["radius_A"] / dx))
    ax = np.arange(-r, r + 1) * dx
    r2 = ax[:, None] ** 2 + ax[None, :] ** 2
    k = (1.0 + r2 / tail["gamma_A"] ** 2) ** (-tail["beta"])
    k[r2 > tail["radius_A"] ** 2] = 0.0
    k /= k.sum()
    pad = r + 2
    ps = (
        fft.next_fast_len(shape[0] + 2 * pad, real=True),
        fft.next_fast_len(shape[1] + 2 * pad, real=True),
    )
    full = np.zeros(ps)
    full[: r + 1, : r + 1] = k[r:, r:]
    full[: r + 1, -r:] = k[r:, :r]
    full[-r:, : r + 1] = k[:r, r:]
    full[-r:, -r:] = k[:r, :r]
    return fft.rfft2(full), pad


def _tail_image(shape, x, y, vol_px, kfft, pad) -> np.ndarray:
    """Σ_k vol_k · M(r − r_k) on the pixel grid (bilinear deposit, FFT convolution)."""
    from scipy import fft

    ps = (kfft.shape[0], (kfft.shape[1] - 1) * 2)
    grid = np.zeros(ps)
    xp = np.clip(x + pad, 0, ps[1] - 2)
    yp = np.clip(y + pad, 0, ps[0] - 2)
    j0 = np.floor(xp).astype(int)
    i0 = np.floor(yp).astype(int)
    fx = xp - j0
    fy = yp - i0
    np.add.at(grid, (i0, j0), vol_px * (1 - fx) * (1 - fy))
    np.add.at(grid, (i0, j0 + 1), vol_px * fx * (1 - fy))
    np.add.at(grid, (i0 + 1, j0), vol_px * (1 - fx) * fy)
    np.add.at(grid, (i0 + 1, j0 + 1), vol_px * fx * fy)
    conv = fft.irfft2(fft.rfft2(grid) * kfft, s=ps)
    return conv[pad : pad + shape[0], pad : pad + shape[1]]


def _residual_variance_model(
    mu: np.ndarray, res: np.ndarray, n_bins: int = 32, *, leverage: np.ndarray | None = None
) -> np.ndarray:
    """Pixel variance ``v = a + b·μ`` (Poisson–Gaussian: b the gain, a the read noise and
    offset) fitted to the squared residuals binned by model intensity μ; ``a`` alone when
    the residuals do not grow with the signal.  Returns v per pixel (floored at 5 % of the
    mean squared residual).  With ``leverage`` h the squared residuals are divided by
    1 − h (HC2, MacKinnon & White, J. Econometrics 29 (1985) 305): at 0.5 Å pixels the
    fitted columns absorbed a third of their pixels' noise and the errors were 1.4× small."""
    a, b, floor = _residual_variance_coefs(mu, res, n_bins, leverage=leverage)
    return np.maximum(a + b * mu, floor)


def _residual_variance_coefs(
    mu: np.ndarray,
    res: np.ndarray,
    n_bins: int = 32,
    *,
    leverage: np.ndarray | None = None,
    haar: bool = False,
) -> tuple[float, float, float]:
    """``(a, b, floor)`` of :func:`_residual_variance_model` (b = 0 when the residuals
    do not grow with μ).  ``haar``: the squared diagonal Haar details of 2×2 blocks of the
    (leverage-corrected) residuals, (r00 − r01 − r10 + r11)/2, against the block mean of μ
    instead of r² — white noise keeps its variance, a misfit smooth over 2 px cancels (the
    image's variance, not the model's misfit: Foi et al., IEEE TIP 17 (2008) 1737)."""
    if haar and min(mu.shape) >= 8:
        rr = res / np.sqrt(1.0 - leverage) if leverage is not None else res
        h0, h1 = (mu.shape[0] // 2) * 2, (mu.shape[1] // 2) * 2
        r4 = rr[:h0, :h1]
        d = 0.5 * (r4[0::2, 0::2] - r4[0::2, 1::2] - r4[1::2, 0::2] + r4[1::2, 1::2])
        m4 = mu[:h0, :h1]
        mb = 0.25 * (m4[0::2, 0::2] + m4[0::2, 1::2] + m4[1::2, 0::2] + m4[1::2, 1::2])
        return _residual_variance_coefs(mb, d, n_bins)
    m, r2 = mu.ravel(), res.ravel() ** 2
    if leverage is not None:
        r2 = r2 / (1.0 - leverage.ravel())
    mean_r2 = float(np.mean(r2))
    floor = 0.05 * mean_r2 if mean_r2 > 0 else 1e-300
    edges = np.unique(np.quantile(m, np.linspace(0.0, 1.0, n_bins + 1)))
    if edges.size < 3 or mean_r2 <= 0:
        return mean_r2, 0.0, floor
    k = np.clip(np.searchsorted(edges, m, side="right") - 1, 0, edges.size - 2)
    cnt = np.bincount(k, minlength=edges.size - 1).astype(float)
    ok = cnt > 0
    mb = np.bincount(k, m, minlength=edges.size - 1)[ok] / cnt[ok]
    vb = np.bincount(k, r2, minlength=edges.size - 1)[ok] / cnt[ok]
    a_mat = np.column_stack([np.ones(mb.size), mb]) * np.sqrt(cnt[ok])[:, None]
    (a, b), *_ = np.linalg.lstsq(a_mat, vb * np.sqrt(cnt[ok]), rcond=None)
    if not (np.isfinite(a) and np.isfinite(b)) or b <= 0:
        return mean_r2, 0.0, floor
    return float(a), float(b), floor


def _pixel_leverage(
    shape: tuple[int, int],
    x: np.ndarray,
    y: np.ndarray,
    eta: np.ndarray,
    rho: np.ndarray,
    cut: float,
    free_rho: bool,
) -> np.ndarray:
    """Pixel leverage h = J (JᵀJ)⁻¹ Jᵀ of each column's own (x, y, η[, ρ]) on its
    truncation disk, summed over columns and clipped to [0, 0.9] (overlaps, shared widths
    and the background neglected; unit weights)."""
    return _leverage_and_blocks(shape, x, y, eta, rho, cut, free_rho)[0]


def _leverage_and_blocks(shape, x, y, eta, rho, cut, free_rho):
    from perovstem.atoms import _kernels as K

    n = x.shape[0]
    own = np.arange(n, dtype=np.int64)
    args = (x, y, eta, rho, float(cut), free_rho, own, own)
    shp = np.array(shape, dtype=np.int64)
    f1 = K.fisher_blocks(shp, np.ones(shape), *args)
    # columns without a position (η = 0, non-finite) or a singular block add no leverage
    minv = np.zeros_like(f1)
    ok = np.isfinite(x) & np.isfinite(y) & (rho > 0) & (eta != 0)
    ok[ok] = np.abs(np.linalg.det(f1[ok])) > 1e-300
    minv[ok] = np.linalg.inv(f1[ok])
    lev = np.clip(K.column_leverage(shp, x, y, eta, rho, float(cut), free_rho, minv), 0.0, 0.9)
    return lev, f1, args, shp


def _shot_noise_slope(img: Image) -> float | None:
    """Variance per unit of signal of the image's shot noise, where the image says it: a
    normalised image with its dose (1/(dose·dx²)); None otherwise (counts of an assumed
    gain are no evidence)."""
    if not img.metadata.get("normalized"):
        return None
    try:
        s, _, _ = poisson_variance_model(img)
    except (CalibrationError, TypeError, ValueError):
        return None
    return s if np.isfinite(s) and s > 0 else None


def _poisson_variance(img: Image, data: np.ndarray) -> dict:
    """Pixel variance model of ``noise="poisson"``: ``v = s·(μ − o) + c``, floored.

    Known detector (normalised image with its dose, or ``gain`` and ``offset`` in the
    metadata): s = gain (1/(dose·dx²) normalised), o = offset, c = read noise² (metadata
    ``read_noise``, counts).  Otherwise ``kind="fitted"``: starts at gain 1, offset 0 and is
    replaced by v = a + b·μ fitted to the residuals (:func:`_residual_variance_coefs`).
    """
    meta = img.metadata
    read = meta.get("read_noise")
    if meta.get("normalized"):
        s, o, _ = poisson_variance_model(img)
        cpu = meta.get("normalization", {}).get("counts_per_unit")
        c = (float(read) / float(cpu)) ** 2 if read and cpu else 0.0
        kind = "detector"
    elif meta.get("gain") is not None and meta.get("offset") is not None:
        s, o = float(meta["gain"]), float(meta["offset"])
        c = float(read) ** 2 if read else 0.0
        kind = "detector"
    else:
        from perovstem.atoms.noise import describe_estimate

        missing = [k for k in ("gain", "offset") if meta.get(k) is None]
        warn(
            f"fit_columns, the Poisson variance model: detector {' and '.join(missing)} "
            "unknown (not in image.metadata); the pixel variance v = a + b·μ is fitted to the "
            "residuals instead of assuming gain = 1 (attrs['variance_model']); pass them in "
            "image.metadata (or normalise the image) for the detector's own variance"
            + describe_estimate(img),
            UserWarning,
            stacklevel=3,
        )
        s, o, c, kind = 1.0, 0.0, 0.0, "fitted"
    return {"kind": kind, "s": s, "o": o, "c": c, "floor": s * _var_floor(data, o)}


def _variance_of(mu: np.ndarray, vs: dict) -> np.ndarray:
    """Pixel variance of the model image ``mu`` under :func:`_poisson_variance`."""
    return np.maximum(vs["s"] * (mu - vs["o"]) + vs["c"], vs["floor"])


def _effective_variance(
    shape: tuple[int, int],
    mu: np.ndarray,
    res: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    eta: np.ndarray,
    rho: np.ndarray,
    cut: float,
    free_rho: bool,
    coefs: dict | None = None,
) -> np.ndarray:
    """Factor ``√(v_k v_l)`` per column and parameter pair, v_k = Σ J_k² v / Σ J_k² the
    pixel variance seen by parameter k (the sandwich covariance of least squares,
    (JᵀJ)⁻¹ JᵀVJ (JᵀJ)⁻¹, for an isolated column), shape ``(n, npar, npar)``.

    v is :func:`_residual_variance_model` of the model ``mu`` and residuals ``res``, the
    squared residuals corrected by the pixel leverage h = J (JᵀJ)⁻¹ Jᵀ of each column on
    its own truncation disk (overlaps, shared widths and background neglected): a fitted
    residual has E[r²] = v (1 − h), and on a column of few pixels the fit absorbs much of
    their noise."""
    from perovstem.atoms import _kernels as K

    lev, f1, args, shp = _leverage_and_blocks(shape, x, y, eta, rho, cut, free_rho)
    a, b, floor = _residual_variance_coefs(mu, res, leverage=lev)
    if coefs is not None:
        coefs.update(a=a, b=b)
    v = np.maximum(a + b * mu, floor)
    d1 = np.diagonal(f1, axis1=1, axis2=2)
    dv = np.diagonal(K.fisher_blocks(shp, np.ascontiguousarray(v, float), *args), axis1=1, axis2=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        ve = np.where(d1 > 0, dv / d1, np.nan)
    return np.sqrt(ve[:, :, None] * ve[:, None, :])


def fisher_covariance(
    shape: tuple[int, int],
    w: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    eta: np.ndarray,
    rho: np.ndarray,
    cut: float,
    free_rho: bool,
) -> np.ndarray:
    """Per-column inverse Fisher information ``(n, npar, npar)`` (pixel units).

    ``F = Σ_p w_p ∇μ_p ∇μ_pᵀ`` over θ_k = (x, y, η[, ρ]) of every column, with pixel weights
    ``w`` (1/variance).  Each column's covariance is the column's block of the inverse of F
    restricted to the column and all columns whose truncation disks overlap it.
    """
    from perovstem.atoms import _kernels as K

    n = x.shape[0]
    npar = 4 if free_rho else 3
    rc = _reach(cut, rho)
    if n > 1:
        tree = cKDTree(np.column_stack([x, y]))
        pairs = tree.query_pairs(2.0 * float(rc.max()), output_type="ndarray")
    else:
        pairs = np.zeros((0, 2), dtype=np.int64)
    if pairs.size:
        dd = np.hypot(x[pairs[:, 0]] - x[pairs[:, 1]], y[pairs[:, 0]] - y[pairs[:, 1]])
        pairs = pairs[dd < rc[pairs[:, 0]] + rc[pairs[:, 1]]]
    else:
        pairs = np.zeros((0, 2), dtype=np.int64)
    pi = np.concatenate([np.arange(n), pairs[:, 0]]).astype(np.int64)
    pj = np.concatenate([np.arange(n), pairs[:, 1]]).astype(np.int64)
    blocks = K.fisher_blocks(
        np.array(shape, dtype=np.int64), w, x, y, eta, rho, float(cut), free_rho, pi, pj
    )
    a_idx = np.concatenate([pi, pj[n:]])
    b_idx = np.concatenate([pj, pi[n:]])
    code = np.concatenate([np.arange(pi.size), -(np.arange(n, pi.size)) - 1])
    order = np.lexsort((b_idx, a_idx))
    a_idx, b_idx, code = a_idx[order], b_idx[order], code[order]
    nb_ptr = np.searchsorted(a_idx, np.arange(n + 1)).astype(np.int64)
    return K.local_covariance(blocks, nb_ptr, b_idx.astype(np.int64), code.astype(np.int64), npar)


def model_image(
    shape: tuple[int, int],
    columns: pd.DataFrame,
    pixel_size_A: float,
    *,
    background: float | np.ndarray = 0.0,
    origin_A: tuple[float, float] = (0.0, 0.0),
    cutoff_rho: float = 4.0,
    truncation: str = "disk",
) -> np.ndarray:
    """Render the Gaussian column model ``B + Σ η g`` on an (M, N) pixel grid.

    ``columns`` needs ``x_A, y_A, rho_A, eta``; ``background`` is a constant or an (M, N) image.
    ``truncation="disk"`` cuts each Gaussian at ``r > cutoff_rho·ρ``; ``"square"`` evaluates it
    on the square ``round(x ∓ cutoff_rho·ρ)`` × ``round(y ∓ cutoff_rho·ρ)`` (px), StatSTEM's
    model (use ``cutoff_rho=3``).
    """
    refuse_text_numbers(locals())
    check_choice("truncation", truncation, ("disk", "square"))
    dx = check_positive("pixel_size_A", pixel_size_A)
    for c in ("x_A", "y_A", "rho_A", "eta"):
        if c not in columns.columns:
            raise DataError(f"`columns` needs column {c!r}, got {list(columns.columns)}")
    rho = columns["rho_A"].to_numpy(float) / dx
    if np.any(~(rho > 0)):
        raise ParameterError(f"`rho_A` must be > 0 for every column, got min {rho.min() * dx!r}")
    out = np.zeros(tuple(int(s) for s in shape)) + background
    from perovstem.atoms import _kernels as K

    x = (columns["x_A"].to_numpy(float) - origin_A[0]) / dx
    y = (columns["y_A"].to_numpy(float) - origin_A[1]) / dx
    K.add_columns(
        out,
        np.ascontiguousarray(x),
        np.ascontiguousarray(y),
        columns["eta"].to_numpy(float),
        rho,
        -float(cutoff_rho) if truncation == "square" else float(cutoff_rho),
        1.0,
    )
    return out
