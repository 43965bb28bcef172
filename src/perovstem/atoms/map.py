"""How many atom columns does a low-dose image hold? Maximum a posteriori model order.

At doses where a beam-sensitive crystal survives, a weak column, a single atom or two close
columns are not clearly above the shot noise, and any peak threshold either misses them or
adds noise peaks. The MAP rule of Fatermans et al. (*Phys. Rev. Lett.* **121**, 056101
(2018); *Ultramicroscopy* **201**, 81 (2019)) instead compares models with N = 0, 1, 2, …
Gaussian columns by their posterior probability, the Laplace approximation of the evidence
with uniform priors on the positions and heights:

    P(N | w) ∝ N! (4π)^{3N/2} (Δx Δy Δη)^{−N} exp(−χ²_N / 2) det(H_N)^{−1/2}

with χ² weighted by the Poisson variance of the counts w and H_N = 2 JᵀJ the Hessian of χ²
at the least-squares fit (positions x, y in pixels, heights η; a common width ρ and
background ζ). Columns are added one at a time where the residual's matched filter gains most
χ², every addition is followed by a joint refit, and the search stops once log₁₀ P has fallen
``stop_drop`` below its maximum (StatSTEM's rule, ``functions/@inputStatSTEM/MAP.m``,
described in ``shared/notes/statstem.md`` §1.3; implemented here from the papers).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, signal, sparse
from scipy.special import gammaln

from perovstem._data import Image
from perovstem._validation import check_positive, refuse_text_numbers
from perovstem.atoms._inputs import A_to_px, as_image, as_positions, px_to_A
from perovstem.errors import DataError, ParameterError

__all__ = ["MapResult", "map_columns"]

_TRUNCATE = 5.0  # Gaussian support radius, ρ
FAINT_FRACTION = 0.05  # selected columns fainter than this × the 90th percentile are reported
_MAX_PIXELS = 1024 * 1024
_MIN_SIDE = 8  # px
_RHO_MIN_PX = 0.5  # lower bound of the common column width, px


@dataclass
class MapResult:
    """Outcome of :func:`map_columns`.

    Attributes
    ----------
    columns : DataFrame
        The selected model: ``x_A, y_A, eta, rho_A, scs`` (SCS = 2πηρ², image units × Å²)
        and ``order`` (1 = first column added; start columns first).  ``attrs``: ``zeta``
        (background), ``rho_A``, ``n_columns``, ``detection_limit_counts`` and
        ``detection_limit_scs``: the integrated intensity (image units; × Å² for the SCS)
        of the faintest isolated column that this image's noise lets the rule add, about
        (NaN: not estimated).  Fainter columns are not missed by mistake: the data cannot
        tell them from the shot noise.  On isolated simulated columns (3 backgrounds, widths
        and pixel sizes; 144 images) 1 of 91 below 0.8× the limit was found, 14 of 20 at
        0.8–1.25× and 32 of 33 above 1.25×.
    models : DataFrame
        One row per model order tried: ``n_columns, chi2, log_det_hessian, log10_posterior,
        probability`` (relative to the tried models, summing to 1).
    """

    columns: pd.DataFrame
    models: pd.DataFrame

    @property
    def n_columns(self) -> int:
        """Selected number of columns (the maximum a posteriori order)."""
        return int(len(self.columns))


def map_columns(
    image: Image | np.ndarray,
    *,
    start: pd.DataFrame | np.ndarray | None = None,
    max_columns: int = 50,
    min_columns: int | None = None,
    rho_A: float | None = None,
    eta_range: tuple[float, float] | None = None,
    stop_drop: float = 1.0,
    min_distance_A: float = 1.0,
    variance_floor: float | None = None,
    pixel_size_A: float | None = None,
) -> MapResult:
    """Select the number of atom columns by their posterior probability (MAP rule).

    Parameters
    ----------
    image : Image or (M, N) ndarray
        Raw counts (or counts × a constant: the weights are 1/w, as in StatSTEM).
    start : DataFrame or (K, 2) array, optional
        Columns to start from (``x_A, y_A``, Å), e.g. from :func:`find_peaks`; default none.
    max_columns : int
        Largest model order tried.
    min_columns : int, optional
        Columns added before the stopping rule applies (default: the start columns).
    rho_A : float, optional
        Starting common width ρ, Å (default 0.5 Å); refined in every fit.
    eta_range : (float, float), optional
        Uniform prior range of the heights (default 0 to the image maximum, as StatSTEM).
        The model is Gaussian columns; a real probe has tails, and at doses where their
        misfit is significant faint extra columns next to bright ones raise the posterior
        (a warning says so).  A lower bound of about half the weakest expected column
        (e.g. half a single atom's height) removes them: measured on non-Gaussian columns
        (Gaussian core + Lorentzian tail), the right order in 2 / 8 and 0 / 8 images at the
        two higher doses with a zero bound, 8 / 8 at every dose with such a bound.
    stop_drop : float
        Stop once log₁₀ P is this far below the best order found (StatSTEM: 1).
    min_distance_A : float
        A new column is not placed closer than this to an existing one, Å (0: anywhere, as
        StatSTEM).  A probe that is not Gaussian leaves a ring of residual around bright
        columns that a "shoulder" column would fit at high dose; projected columns of a
        crystal are ≥ ~1.1 Å apart.
    variance_floor : float, optional
        Smallest pixel variance (default: the smallest positive pixel value), so that
        zero-count pixels keep a finite weight.
    pixel_size_A : float, optional
        Needed for a bare array.

    Returns
    -------
    MapResult
        ``columns`` of the selected order and the ``models`` table.

    Raises
    ------
    DataError
        Image with negative values, no positive pixel, non-finite or constant, smaller than
        8×8 px or too large (crop it: the method refits every column at every step).
    ParameterError
        Absurd ``max_columns``, ``rho_A``, ``eta_range`` or ``stop_drop``.
    """
    refuse_text_numbers(locals())
    img = as_image(image, pixel_size_A)
    w = np.asarray(img.data, dtype=float)
    if w.ndim != 2:
        raise DataError(f"`image` must be 2-D, got shape {w.shape}")
    if w.size > _MAX_PIXELS:
        raise DataError(
            f"`image` has {w.size} pixels (> {_MAX_PIXELS}): the MAP search refits every "
            "column at each step; crop the region of interest first"
        )
    if np.any(w < 0):
        raise DataError(
            f"`image` has negative values (min {w.min():.4g}): the Poisson weights need raw "
            "counts (or counts × a constant), not a background-subtracted image"
        )
    if not np.any(w > 0):
        raise DataError("`image` has no positive pixel: nothing to detect")
    if int(max_columns) < 1 or int(max_columns) > 2000:
        raise ParameterError(f"`max_columns` must be in [1, 2000], got {max_columns!r}")
    check_positive("stop_drop", stop_drop)
    dx = img.pixel_size_A
    rho0 = check_positive("rho_A", rho_A) / dx if rho_A is not None else 0.5 / dx
    if eta_range is None:
        eta_range = (0.0, float(w.max()))
    e_lo, e_hi = (float(v) for v in eta_range)
    if not (np.isfinite(e_lo) and np.isfinite(e_hi) and 0 <= e_lo < e_hi):
        raise ParameterError(f"`eta_range` must be 0 <= low < high, got {eta_range!r}")
    if min(w.shape) < _MIN_SIDE:
        raise DataError(
            f"`image` must be at least {_MIN_SIDE}×{_MIN_SIDE} px (a column spans several "
            f"pixels), got shape {w.shape}"
        )
    if not np.isfinite(w).all():
        raise DataError(f"`image` has {int((~np.isfinite(w)).sum())} non-finite pixel(s)")
    if w.min() == w.max():
        raise DataError(
            f"`image` is constant (every pixel = {w.flat[0]:g}): no column can be told from "
            "the background"
        )
    floor = (
        check_positive("variance_floor", variance_floor)
        if variance_floor is not None
        else float(w[w > 0].min())
    )
    inv_sigma = 1.0 / np.sqrt(np.maximum(w, floor))
    ny, nx = w.shape
    if start is not None:
        xy0_A, _ = as_positions(start, img, allow_empty=True)
        xy = A_to_px(xy0_A, img)
    else:
        xy = np.zeros((0, 2))
    model = _Model(
        w,
        inv_sigma,
        (e_lo, e_hi),
        check_positive("min_distance_A", min_distance_A, allow_zero=True) / dx,
    )
    # the start: its columns (or none) on a background at the median level
    eta = np.full(len(xy), max(float(np.median(w)) * 0.5, e_lo + 1e-6 * (e_hi - e_lo)))
    theta = model.pack(xy, eta, rho0, float(np.median(w)) if len(xy) == 0 else float(w.min()))
    theta = model.fit(theta)
    n_min = len(xy) if min_columns is None else int(min_columns)
    log_prior_area = np.log((nx * ny) * (e_hi - e_lo))  # Δx Δy in pixels, Δη
    rows: list[dict[str, float]] = []
    fits: list[np.ndarray] = []
    while True:
        chi2, logdet = model.chi2(theta), model.log_det_hessian(theta)
        n = model.n_columns(theta)
        log_p = (
            gammaln(n + 1)
            + 1.5 * n * np.log(4 * np.pi)
            - n * log_prior_area
            - chi2 / 2
            - logdet / 2
        )
        rows.append(
            {
                "n_columns": n,
                "chi2": chi2,
                "log_det_hessian": logdet,
                "log10_posterior": log_p / np.log(10),
            }
        )
        fits.append(theta.copy())
        best = max(r["log10_posterior"] for r in rows)
        if n >= int(max_columns) or (n >= n_min and rows[-1]["log10_posterior"] < best - stop_drop):
            break
        new = model.best_new_column(theta)
        if new is None:  # no position improves χ² with a height inside the prior
            break
        theta = model.fit(model.add(theta, *new))
    models = pd.DataFrame(rows)
    lp = models["log10_posterior"].to_numpy() * np.log(10)
    models["probability"] = np.exp(lp - lp.max()) / np.exp(lp - lp.max()).sum()
    k = int(np.argmax(lp))
    xy_s, eta_s, rho_s, zeta_s = model.unpack(fits[k])
    xy_A = px_to_A(xy_s, img) if len(xy_s) else np.zeros((0, 2))
    cols = pd.DataFrame(
        {
            "x_A": xy_A[:, 0],
            "y_A": xy_A[:, 1],
            "eta": eta_s,
            "rho_A": rho_s * dx,
            "scs": 2 * np.pi * eta_s * (rho_s * dx) ** 2,
            "order": np.arange(1, len(eta_s) + 1),
        }
    )
    cols.attrs.update(
        pixel_size_A=dx,
        zeta=float(zeta_s),
        rho_A=float(rho_s * dx),
        n_columns=len(cols),
        method="MAP model order (Fatermans et al. 2018), perovstem",
    )
    n_lim = _detection_limit(
        rho_s,
        zeta_s,
        floor,
        log_prior_area - np.log(len(cols) + 1),
        (e_lo, e_hi),
        first=len(cols) == 0,
    )
    cols.attrs.update(
        detection_limit_counts=n_lim,
        detection_limit_scs=n_lim * dx * dx,
    )
    models.attrs.update(selected=len(cols), pixel_size_A=dx)
    if len(cols) >= 2 and e_lo == 0.0:
        faint = cols["eta"].to_numpy() < FAINT_FRACTION * float(np.percentile(cols["eta"], 90))
        if faint.any():
            warnings.warn(
                f"map_columns: {int(faint.sum())} of {len(cols)} selected columns have heights "
                f"below {FAINT_FRACTION:.0%} of the bright columns': at this dose a probe "
                "that is not Gaussian leaves residual that extra faint columns fit; if they "
                "are not atoms, set `eta_range` to start at about half the height of the "
                "weakest column you expect (e.g. half a single atom)",
                UserWarning,
                stacklevel=2,
            )
    return MapResult(cols, models)


def _detection_limit(
    rho: float,
    zeta: float,
    floor: float,
    log_prior: float,
    eta_range: tuple[float, float],
    *,
    first: bool,
) -> float:
    """Integrated intensity (image units × px²) of the faintest isolated column that raises
    the posterior: the MAP rule's detection limit in this image.

    A column of total intensity N (height η = N / 2πρ², width ``rho`` px) on the background
    ``zeta`` lowers χ² by E[Δχ²] = Σ E[(2(w − ζ)ηg − η²g²) / max(w, floor)] + 3 (the three
    fitted parameters absorb noise), with the counts w Poisson in units of ``floor`` (the
    weights are the data's own, which lowers the gain at a few counts per pixel); it costs,
    in ln P, the prior volume ``log_prior`` (ln ΔxΔyΔη − ln(n+1)) less 1.5 ln 4π plus half
    the ln det of its Fisher block (x, y, η; + ρ for the ``first`` column, the width being
    no parameter of a flat image).  Returns the smallest N above the height prior's lower
    end where the expected gain pays the cost (NaN if none): a column near the limit is
    found in some images and not in others, one well above it in nearly all.
    """
    from scipy import stats

    rad = int(np.ceil(_TRUNCATE * rho))
    oy, ox = np.mgrid[-rad : rad + 1, -rad : rad + 1].astype(float)
    r2 = ox * ox + oy * oy
    g = np.exp(-r2 / (2 * rho * rho)).ravel()
    ox, oy, r2 = ox.ravel(), oy.ravel(), r2.ravel()
    cost0 = log_prior - 1.5 * np.log(4 * np.pi)
    # heights up to far above the image maximum: a column brighter than the height prior
    # of this image would have raised that maximum (the prior volume cost stays this image's)
    n_hi = 2 * np.pi * rho * rho * 1e3 * max(eta_range[1], floor, zeta)
    k = np.arange(0, 64)[:, None]  # counts (units of floor) of the pixels summed exactly
    grid = np.geomspace(n_hi * 1e-4, n_hi, 321)
    margin = np.full(grid.size, -np.inf)
    for i, n in enumerate(grid):
        eta = n / (2 * np.pi * rho * rho)
        if eta <= eta_range[0]:
            continue
        a = eta * g
        lam = (zeta + a) / floor
        w = np.maximum(k, 1) * floor  # max(w, floor) for w = k·floor
        pmf = stats.poisson.pmf(k, lam[None, :])
        exact = np.sum(pmf * (2 * (k * floor - zeta) * a - a * a) / w, axis=0)
        gain = np.where(lam < 30, exact, a * a / np.maximum(zeta + a, floor)).sum() + 3.0
        iv = 1.0 / np.maximum(zeta + a, floor)
        jac = [a * ox / rho**2, a * oy / rho**2, g] + ([a * r2 / rho**3] if first else [])
        fisher = 2.0 * np.array([[np.sum(u * v * iv) for v in jac] for u in jac])
        sign, logdet = np.linalg.slogdet(fisher)
        if sign > 0:
            margin[i] = gain / 2 - logdet / 2 - cost0
    # faint heights: det H → 0 and the Laplace approximation fails (the margin rises again
    # towards N → 0); the limit is the first crossing above the lowest margin
    valid = np.isfinite(margin)
    if not valid.any():
        return float("nan")
    i0 = int(np.argmin(np.where(valid, margin, np.inf)))
    up = np.flatnonzero(valid[i0:] & (margin[i0:] > 0))
    return float(grid[i0 + up[0]]) if up.size else float("nan")


class _Model:
    """Common-width Gaussian columns on a constant background, Poisson-weighted residuals.

    Parameter vector: ``[x_1, y_1, η_1, …, x_N, y_N, η_N, ρ, ζ]`` in pixels / image units.
    """

    def __init__(
        self,
        w: np.ndarray,
        inv_sigma: np.ndarray,
        eta_range: tuple[float, float],
        min_distance: float = 0.0,
    ):
        self.w = w
        self.min_distance = min_distance
        self.inv_sigma = inv_sigma
        self.shape = w.shape
        self.eta_range = eta_range

    @staticmethod
    def n_columns(theta: np.ndarray) -> int:
        return (len(theta) - 2) // 3

    @staticmethod
    def pack(xy: np.ndarray, eta: np.ndarray, rho: float, zeta: float) -> np.ndarray:
        per = np.column_stack([xy, eta]).ravel() if len(eta) else np.zeros(0)
        return np.concatenate([per, [rho, zeta]])

    def unpack(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
        per = theta[:-2].reshape(-1, 3)
        return per[:, :2], per[:, 2], float(theta[-2]), float(theta[-1])

    def add(self, theta: np.ndarray, x: float, y: float, eta: float) -> np.ndarray:
        return np.concatenate([theta[:-2], [x, y, eta], theta[-2:]])

    def _patches(self, theta: np.ndarray):
        """Per column: flat pixel indices of its support and (g, dx, dy, r²) there."""
        xy, _, rho, _ = self.unpack(theta)
        ny, nx = self.shape
        rad = int(np.ceil(_TRUNCATE * rho))
        oy, ox = np.mgrid[-rad : rad + 1, -rad : rad + 1]
        out = []
        for x, y in xy:
            cx, cy = int(round(x)), int(round(y))
            px, py = cx + ox.ravel(), cy + oy.ravel()
            inside = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
            px, py = px[inside], py[inside]
            ddx, ddy = px - x, py - y
            r2 = ddx * ddx + ddy * ddy
            g = np.exp(-r2 / (2 * rho * rho))
            out.append((py * nx + px, g, ddx, ddy, r2))
        return out

    def image(self, theta: np.ndarray) -> np.ndarray:
        _, eta, _, zeta = self.unpack(theta)
        f = np.full(self.w.size, zeta)
        for (idx, g, *_), e in zip(self._patches(theta), eta, strict=True):
            np.add.at(f, idx, e * g)
        return f.reshape(self.shape)

    def residuals(self, theta: np.ndarray) -> np.ndarray:
        return ((self.w - self.image(theta)) * self.inv_sigma).ravel()

    def jacobian(self, theta: np.ndarray) -> sparse.csr_matrix:
        """Sparse Jacobian of the weighted model (rows: pixels)."""
        _, eta, rho, _ = self.unpack(theta)
        patches = self._patches(theta)
        n = len(patches)
        s = self.inv_sigma.ravel()
        rows, cols, vals = [], [], []
        drho = np.zeros(self.w.size)
        for i, ((idx, g, ddx, ddy, r2), e) in enumerate(zip(patches, eta, strict=True)):
            si = s[idx]
            rows += [idx, idx, idx]
            cols += [np.full(idx.size, 3 * i), np.full(idx.size, 3 * i + 1)]
            cols += [np.full(idx.size, 3 * i + 2)]
            vals += [e * g * ddx / rho**2 * si, e * g * ddy / rho**2 * si, g * si]
            np.add.at(drho, idx, e * g * r2 / rho**3)
        allpix = np.arange(self.w.size)
        rows += [allpix, allpix]
        cols += [np.full(self.w.size, 3 * n), np.full(self.w.size, 3 * n + 1)]
        vals += [drho * s, s]
        # the model's derivatives; residuals are data − model
        return -sparse.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
            shape=(self.w.size, 3 * n + 2),
        )

    def chi2(self, theta: np.ndarray) -> float:
        r = self.residuals(theta)
        return float(r @ r)

    def log_det_hessian(self, theta: np.ndarray) -> float:
        j = self.jacobian(theta)
        h = 2.0 * (j.T @ j).toarray()
        if self.n_columns(theta) == 0:  # the width is no parameter of a flat image
            h = h[-1:, -1:]
        sign, logdet = np.linalg.slogdet(h)
        return float(logdet) if sign > 0 else np.inf

    def bounds(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = self.n_columns(theta)
        ny, nx = self.shape
        lo_c = np.array([-0.5, -0.5, self.eta_range[0]])
        hi_c = np.array([nx - 0.5, ny - 0.5, self.eta_range[1]])
        # ζ within the data range (StatSTEM's prior: 0 to the image maximum)
        lo = np.concatenate([np.tile(lo_c, n), [_RHO_MIN_PX, 0.0]])
        hi = np.concatenate([np.tile(hi_c, n), [max(nx, ny) / 2.0, float(self.w.max())]])
        return lo, hi

    def fit(self, theta: np.ndarray) -> np.ndarray:
        if self.n_columns(theta) == 0:  # background only: weighted mean; the width stays
            iv2 = self.inv_sigma**2
            return np.array([theta[-2], float(np.sum(self.w * iv2) / np.sum(iv2))])
        lo, hi = self.bounds(theta)
        theta = np.clip(theta, lo + 1e-9 * (hi - lo), hi - 1e-9 * (hi - lo))
        res = optimize.least_squares(
            self.residuals,
            theta,
            jac=self.jacobian,
            bounds=(lo, hi),
            method="trf",
            tr_solver="lsmr",
            x_scale="jac",
            xtol=1e-8,
            ftol=1e-10,
            max_nfev=200,
        )
        return res.x

    def best_new_column(self, theta: np.ndarray) -> tuple[float, float, float] | None:
        """Position and height of the one column that lowers χ² most (matched filter).

        For a Gaussian of the current width at pixel p, the least-squares height is
        η̂ = Σ g r/σ² / Σ g²/σ² and the χ² gain (Σ g r/σ²)² / Σ g²/σ²: two FFT correlations.
        """
        _, _, rho, _ = self.unpack(theta)
        rad = int(np.ceil(_TRUNCATE * rho))
        oy, ox = np.mgrid[-rad : rad + 1, -rad : rad + 1]
        g = np.exp(-(ox * ox + oy * oy) / (2 * rho * rho))
        r = self.w - self.image(theta)
        iv = self.inv_sigma**2
        num = signal.fftconvolve(r * iv, g[::-1, ::-1], mode="same")
        den = signal.fftconvolve(iv, (g * g)[::-1, ::-1], mode="same")
        eta = num / np.maximum(den, 1e-300)
        gain = np.where((eta > self.eta_range[0]) & (eta < self.eta_range[1]), num * eta, 0.0)
        xy, *_ = self.unpack(theta)
        if len(xy) and self.min_distance > 0:
            # no column closer than min_distance to another: a misfit of the column shape
            # (the probe is not Gaussian) would otherwise be "explained" by a shoulder column
            yy, xx = np.ogrid[0 : self.shape[0], 0 : self.shape[1]]
            for x, y in xy:
                gain[(xx - x) ** 2 + (yy - y) ** 2 < self.min_distance**2] = 0.0
        if not np.any(gain > 0):
            return None
        i, j = np.unravel_index(int(np.argmax(gain)), gain.shape)
        return float(j), float(i), float(eta[i, j])
