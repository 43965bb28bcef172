"""Atom-column detection: peaks, lattice estimation and sublattice-aware detection from a cell.

* :func:`find_peaks` — Gaussian-smoothed local maxima with a minimum separation and an
  automatic noise-based threshold (sub-pixel by a 3×3 quadratic fit).
* :func:`estimate_lattice` — the two shortest strong lattice vectors from the image's power
  spectrum (FFT), refined on the peaks.
* :func:`find_columns` — with a projected unit cell: fit the lattice on the brightest
  sublattice, place every site of the cell, keep the sites where a column is present (adds
  columns the peak finder missed, drops spurious peaks between sites), types from the cell;
  without a cell: peaks typed by intensity (k-means in 1-D).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import cKDTree

from perovstem._data import Image
from perovstem._robust import robust_sd
from perovstem._validation import check_int, check_positive, check_range, refuse_text_numbers
from perovstem.atoms._inputs import as_image, px_to_A
from perovstem.atoms.cell import ProjectedCell
from perovstem.atoms.noise import NoiseModel, estimate_noise_model, value_step
from perovstem.errors import DataError, ParameterError

__all__ = ["find_peaks", "estimate_lattice", "find_columns", "fit_lattice_vectors"]


# σ of (image − Gaussian(1 px) smoothed image) per σ of the pixel noise
_SMOOTH_K = np.sqrt(1.0 - 2.0 / (2 * np.pi) + 1.0 / (4 * np.pi))


def _robust_noise(img: np.ndarray, sm: np.ndarray | None = None) -> float:
    """Pixel noise σ: MAD of (image − Gaussian(1 px) smoothed image) over the darker half.

    The darker half avoids the column peaks, where curvature of the signal would inflate the
    estimate; the factor corrects for the smoothing (var(d) = σ²(1 − 2w₀ + Σw²)).  Returns
    1e-12 when the darker half is (nearly) constant, e.g. a zero-count vacuum: see
    :func:`_pixel_noise`.  ``sm``: that smoothed image, when the caller has it.
    """
    if sm is None:
        sm = ndimage.gaussian_filter(img, 1.0, mode="nearest")
    d = (img - sm)[sm <= np.median(sm)]
    return robust_sd(d) / _SMOOTH_K or 1e-12


def _pixel_noise(img: np.ndarray) -> float:
    """Pixel noise σ, also for count data with an empty (zero-count) vacuum.

    :func:`_robust_noise` unless more than half of the darker half is one value v0 (a
    zero-count vacuum, low dose, counting detectors): its MAD is then 0 and every stray count
    would pass the threshold.  For counts (all values ``v0 + q·n``, q the gain) the Poisson
    σ = √(q·(mean − v0)) is then used, the mean taken over the pixels with signal within the
    1 px smoothing footprint (free of the column curvature that inflates a residual spread).
    Other data with a constant darker half (noise-free simulations, interpolated counts) keep
    the darker-half estimate, 1e-12.
    """
    sm = ndimage.gaussian_filter(img, 1.0, mode="nearest")
    v = img[sm <= np.median(sm)]
    if np.median(np.abs(v - np.median(v))) > 0:
        return _robust_noise(img, sm)
    v0 = float(np.median(v))
    sig = np.abs(sm - v0) > 1e-9 * (float(np.ptp(img)) or 1.0)
    q = value_step(np.unique(np.r_[v0, img[sig]])) if np.count_nonzero(sig) >= 2 else None
    if q is None:
        return 1e-12
    return float(np.sqrt(q * max(float(np.mean(img[sig])) - v0, 0.0))) or 1e-12


def find_peaks(
    image: Image | np.ndarray,
    *,
    separation_A: float | None = None,
    sigma_A: float | None = None,
    threshold: float | None = None,
    min_snr: float = 5.0,
    pixel_size_A: float | None = None,
    pixel_noise: float | None = None,
    noise_model: NoiseModel | str | None = None,
) -> pd.DataFrame:
    """Local maxima of the Gaussian-smoothed image, at least ``separation_A`` apart.

    Parameters
    ----------
    image : Image or (M, N) ndarray
    separation_A : float, optional
        Minimum distance between peaks, Å (default: 0.6 × the shortest lattice vector of
        :func:`estimate_lattice`).
    sigma_A : float, optional
        Smoothing σ, Å (default separation/6, at least 0.5 px).
    threshold : float, optional
        Minimum smoothed height above the background (image units).  Default: ``min_snr``
        times the noise of the smoothed image.
    min_snr : float
        Used for the default threshold.
    pixel_size_A : float, optional
        Pixel size, Å (from the Image when omitted).
    pixel_noise : float, optional
        Pixel noise σ of the image (image units) when already known; default: a robust
        estimate (MAD of the image minus its 1 px smoothing over the darker half).
    noise_model : NoiseModel or "auto", optional
        Signal-dependent noise ``σ²(L) = gain·L + c`` of raw counts
        (:func:`perovstem.atoms.estimate_noise_model`; ``"auto"`` measures it on this
        image).  The default threshold then becomes ``min_snr`` times the noise of the
        smoothed image at the *local background level* around each candidate (the darkest
        smoothed level within ``separation_A``): shot noise on a bright background is
        several times the vacuum's, and a threshold set by the vacuum lets its fluctuations
        through.  ``"auto"`` falls back to the constant ``pixel_noise`` (same
        local-background test) with a warning when the image cannot identify the gain.
        Ignored when ``threshold`` is given.

    Returns
    -------
    DataFrame
        ``x_A, y_A, height`` (smoothed height above the background), sorted by height.
    """
    refuse_text_numbers(locals())
    img = as_image(image, pixel_size_A)
    data = np.asarray(img.data, dtype=float)
    dx = img.pixel_size_A
    if separation_A is None:
        vec = estimate_lattice(img)
        separation_A = 0.6 * float(np.min(np.linalg.norm(vec, axis=1)))
    sep = check_positive("separation_A", separation_A) / dx
    if sep < 1.0:
        raise ParameterError(
            f"`separation_A` must be at least one pixel ({dx} Å), got {separation_A!r}"
        )
    if sep > max(data.shape):
        # a search disk larger than the field of view cannot separate two peaks (and an
        # absurd value would allocate a disk footprint of that many pixels)
        raise ParameterError(
            f"`separation_A` must be smaller than the image ({max(data.shape) * dx:.4g} Å), "
            f"got {separation_A!r}"
        )
    if sigma_A is not None:
        check_positive("sigma_A", sigma_A)  # a negative σ was silently replaced by 0.5 px
    if threshold is None and not (np.isfinite(min_snr) and min_snr >= 0):
        # NaN made every comparison false: no peaks, no error
        raise ParameterError(f"`min_snr` must be finite and >= 0, got {min_snr!r}")
    sig = max(0.5, (sigma_A / dx) if sigma_A is not None else sep / 6.0)
    sm = ndimage.gaussian_filter(data, sig, mode="nearest")
    bg = float(np.percentile(sm, 5))
    model = _noise_model(img, noise_model) if threshold is None else None
    if model is not None:
        if model == "flat":  # "auto" without an identified gain: a constant pixel noise
            if pixel_noise is None:
                pixel_noise = _pixel_noise(data)
            model = None
        where, thr = _ring_candidates(sm, sep, sig, min_snr, model, pixel_noise)
    else:
        if pixel_noise is None:
            pixel_noise = _pixel_noise(data)
        else:
            check_positive("pixel_noise", pixel_noise)
        noise = pixel_noise / (2.0 * np.sqrt(np.pi) * sig)  # σ of the smoothed image
        thr = float(threshold) if threshold is not None else min_snr * noise
        where = sm - bg > thr
    # only pixels above the threshold are tested (a flat, e.g. zero-count, vacuum is a
    # plateau of candidates that would otherwise all be tested against the whole disk)
    peak = _disk_maxima(sm, sep, where=where)
    peak[[0, -1], :] = False
    peak[:, [0, -1]] = False
    ii, jj = np.nonzero(peak)
    if ii.size == 0:
        return pd.DataFrame({"x_A": [], "y_A": [], "height": []})
    # sub-pixel: quadratic through the 3x3 neighbourhood
    c = sm[ii, jj]
    dxp = 0.5 * (sm[ii, jj + 1] - sm[ii, jj - 1])
    dyp = 0.5 * (sm[ii + 1, jj] - sm[ii - 1, jj])
    dxx = sm[ii, jj + 1] - 2 * c + sm[ii, jj - 1]
    dyy = sm[ii + 1, jj] - 2 * c + sm[ii - 1, jj]
    ox = np.where(dxx < 0, -dxp / np.where(dxx < 0, dxx, -1), 0.0).clip(-0.5, 0.5)
    oy = np.where(dyy < 0, -dyp / np.where(dyy < 0, dyy, -1), 0.0).clip(-0.5, 0.5)
    xy = px_to_A(np.column_stack([jj + ox, ii + oy]), img)
    # plateaus can give several equal maxima: keep one per separation disk
    order = np.argsort(-c, kind="stable")
    xy, c = xy[order], c[order]
    keep = np.ones(len(c), dtype=bool)
    tree = cKDTree(xy)
    for a, b in tree.query_pairs(0.999 * sep * dx):
        if keep[a] and keep[b]:
            keep[max(a, b)] = False
    df = pd.DataFrame({"x_A": xy[keep, 0], "y_A": xy[keep, 1], "height": c[keep] - bg})
    df.attrs.update(
        separation_A=float(sep * dx), sigma_A=float(sig * dx), threshold=thr, pixel_size_A=dx
    )
    if isinstance(model, NoiseModel):
        df.attrs["noise_model"] = model.as_dict()
    return df.reset_index(drop=True)


def _ring_candidates(
    sm: np.ndarray,
    sep: float,
    sig: float,
    min_snr: float,
    model: NoiseModel | None,
    pixel_noise: float | None,
) -> tuple[np.ndarray, float]:
    """Candidate mask of the signal-dependent threshold, and its median threshold.

    With ``model`` None the pixel noise is the constant ``pixel_noise`` (no skew term).

    A peak must stand out of its *local* background — the median of the smoothed image on a
    ring of radius max(sep/2, 2·sig) around it (a column's tail there is ~10 % of its height;
    a step or a ridge, bright on one side, is not a peak) — by ``min_snr`` × the noise of
    the smoothed image at that background level, the null hypothesis "no peak here":
    ``Σw²·σ²(L) ≈ σ²(L)/(4π·sig²)`` for the Gaussian smoothing, ×√1.1 for the noise of a
    16-point ring median.  A global background lets every noise maximum of a bright flat
    region (support, thick crystal) pass, and a vacuum σ under-rates its shot noise.
    """
    ny, nx = sm.shape
    pad = np.pad(sm, 1, mode="edge")
    c = pad[1:-1, 1:-1]
    cand = (
        (c >= pad[:-2, 1:-1]) & (c >= pad[2:, 1:-1]) & (c >= pad[1:-1, :-2]) & (c >= pad[1:-1, 2:])
    )
    ii, jj = np.nonzero(cand)
    r = max(sep / 2.0, 2.0 * sig)
    ang = np.arange(16) * (2.0 * np.pi / 16)
    oy = np.round(r * np.sin(ang)).astype(int)
    ox = np.round(r * np.cos(ang)).astype(int)
    ring = sm[np.clip(ii[:, None] + oy, 0, ny - 1), np.clip(jj[:, None] + ox, 0, nx - 1)]
    local_bg = np.median(ring, axis=1)
    # electrons per pixel of the background, at least one in the smoothing footprint (a
    # near-empty vacuum still shows single electrons)
    if model is None:
        thr = np.full(local_bg.shape, min_snr * float(pixel_noise) * np.sqrt(1.1))
        thr /= 2.0 * np.sqrt(np.pi) * sig
    else:
        g = model.gain
        lam = np.maximum((local_bg - model.offset) / g, 1.0 / (4.0 * np.pi * sig * sig))
        read2 = max(float(model.variance(model.offset)), 0.0)
        var = g * g * lam + read2
        thr = min_snr * np.sqrt(1.1 * var) / (2.0 * np.sqrt(np.pi) * sig)
        # shot noise is skewed (a single electron in a near-empty vacuum is a "5σ" peak):
        # Cornish–Fisher term of the z-quantile, (z² − 1)/6 · κ₃/κ₂; for the smoothed
        # counts κ₃/κ₂ = gain·Σw³/Σw² = gain/(3π·sig²) times the shot-noise share
        shot = g * g * lam / var
        thr = thr + (min_snr**2 - 1.0) / 6.0 * shot * g / (3.0 * np.pi * sig * sig)
    where = np.zeros(sm.shape, bool)
    where[ii, jj] = sm[ii, jj] - local_bg > thr
    return where, float(np.median(thr)) if thr.size else 0.0


def _noise_model(img: Image, noise_model: Any) -> NoiseModel | str | None:
    """The NoiseModel of ``noise_model`` (None, a NoiseModel or "auto"); "flat" when "auto"
    cannot identify the gain (the local-background test then uses a constant noise)."""
    if noise_model is None or isinstance(noise_model, NoiseModel):
        return noise_model
    if not (isinstance(noise_model, str) and noise_model == "auto"):
        raise ParameterError(
            f"`noise_model` must be a NoiseModel, 'auto' or None, got {noise_model!r}"
        )
    try:
        nm = estimate_noise_model(img)
    except DataError as exc:
        warnings.warn(
            f"find_peaks: noise_model='auto' could not measure the noise ({exc}); using a "
            "constant pixel noise against the local background",
            UserWarning,
            stacklevel=3,
        )
        return "flat"
    if not nm.identified:
        warnings.warn(
            f"find_peaks: noise_model='auto' not identified ({'; '.join(nm.reasons)}); using "
            "a constant pixel noise against the local background",
            UserWarning,
            stacklevel=3,
        )
        return "flat"
    return nm


def _disk_maxima(sm: np.ndarray, sep: float, where: np.ndarray | None = None) -> np.ndarray:
    """``sm == maximum_filter(sm, disk of radius sep, mode="nearest")`` (``& where`` when
    given), computed only at the pixels that are maxima of their 4-neighbourhood (contained in
    every disk of radius ≥ 1): the same mask as the full disk filter, at a fraction of its
    cost."""
    ny, nx = sm.shape
    pad = np.pad(sm, 1, mode="edge")
    c = pad[1:-1, 1:-1]
    cand = (
        (c >= pad[:-2, 1:-1]) & (c >= pad[2:, 1:-1]) & (c >= pad[1:-1, :-2]) & (c >= pad[1:-1, 2:])
    )
    if where is not None:
        cand &= where
    ii, jj = np.nonzero(cand)
    v = sm[ii, jj]
    r = int(np.floor(sep))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    d2 = dy * dy + dx * dx
    inside = (d2 <= sep * sep) & (d2 > 0)
    # nearest offsets first, dropping rejected candidates as we go: almost every candidate
    # (noise maxima in vacuum) is rejected by a close neighbour, so the cost no longer grows
    # as (disk area × candidates) — 70 s → < 1 s on a 1232² image at 0.05 Å/px
    order = np.argsort(d2[inside], kind="stable")
    for oy, ox in zip(dy[inside][order], dx[inside][order], strict=True):
        keep = sm[np.clip(ii + oy, 0, ny - 1), np.clip(jj + ox, 0, nx - 1)] <= v  # "nearest"
        if not keep.all():
            ii, jj, v = ii[keep], jj[keep], v[keep]
            if ii.size == 0:
                break
    out = np.zeros(sm.shape, dtype=bool)
    out[ii, jj] = True
    return out


def estimate_lattice(image: Image | np.ndarray, *, pixel_size_A: float | None = None) -> np.ndarray:
    """Two shortest strong, non-collinear lattice vectors from the power spectrum, Å.

    Peaks of the windowed power spectrum relative to its radial median (whitened), at least
    8 % of the strongest; the two lowest non-collinear spatial frequencies give the basis.

    Returns
    -------
    (2, 2) ndarray
        Rows are real-space lattice vectors ``(x, y)`` in Å.

    Raises
    ------
    DataError
        No periodicity found.
    """
    refuse_text_numbers(locals())
    img = as_image(image, pixel_size_A)
    data = np.asarray(img.data, dtype=float)
    ny, nx = data.shape
    win = np.outer(np.hanning(ny), np.hanning(nx))
    f = np.fft.fftshift(np.abs(np.fft.fft2((data - data.mean()) * win)) ** 2)
    f = ndimage.gaussian_filter(f, 0.7)
    cy, cx = ny // 2, nx // 2
    ky = (np.arange(ny) - cy) / ny
    kx = (np.arange(nx) - cx) / nx
    kk = np.hypot(*np.meshgrid(ky, kx, indexing="ij"))
    # Bragg spots are sharp excesses over the smooth radial spectrum: divided by the radial
    # median, a particle's envelope, other particles and the vacuum edge (the strongest
    # low-frequency power of a nanoparticle image: a "21 Å lattice" on StatSTEM's Pb
    # particle) no longer outrank the lattice reflections
    rbin = np.round(kk * min(ny, nx)).astype(int)
    radial = np.asarray(ndimage.median(f, labels=rbin, index=np.arange(rbin.max() + 1)))
    f = f / np.maximum(radial[rbin], np.finfo(float).tiny)
    f[kk < 3.0 / min(ny, nx)] = 0.0  # DC and slow background
    mx = ndimage.maximum_filter(f, size=5)
    pk = (f == mx) & (f > 0)
    ii, jj = np.nonzero(pk)
    p = f[ii, jj]
    strong = p >= 0.08 * p.max() if p.size else p.astype(bool)
    ii, jj = ii[strong], jj[strong]
    if ii.size < 2:
        raise DataError("no lattice periodicity found in the image power spectrum")
    kv = np.column_stack([kx[jj], ky[ii]])  # cycles per pixel, (kx, ky)
    kv = kv[kv[:, 1] > 0 | ((kv[:, 1] == 0) & (kv[:, 0] > 0))] if kv.shape[0] > 2 else kv
    ln = np.linalg.norm(kv, axis=1)
    order = np.argsort(ln)
    k1 = kv[order[0]]
    k2 = None
    for o in order[1:]:
        c = abs(np.dot(k1, kv[o])) / (ln[order[0]] * ln[o])
        if c < 0.9:
            k2 = kv[o]
            break
    if k2 is None:
        raise DataError("only one lattice direction found in the image power spectrum")
    real = np.linalg.inv(np.vstack([k1, k2])).T  # rows: real-space vectors in px
    return _reduce_basis(real * img.pixel_size_A)


def _reduce_basis(v: np.ndarray) -> np.ndarray:
    """Lagrange–Gauss reduction of a 2-D lattice basis (shortest, most orthogonal pair)."""
    a, b = np.array(v[0], float), np.array(v[1], float)
    for _ in range(100):
        if a @ a > b @ b:
            a, b = b, a
        m = np.round((a @ b) / (a @ a))
        if m == 0:
            break
        b = b - m * a
    return np.vstack([a, b])


_NONE = np.iinfo(np.int64).min  # index of a point the lattice fit did not reach
# a lattice this far (relative) from the cell's is reported: calibration or wrong cell
LATTICE_SCALE_WARN = 0.03
# the residual field of the reference columns is used when its variance exceeds this many
# times the variance its localisation noise alone would give
FIELD_SIGNIFICANCE = 3.0
# several crystals in one field: a further lattice needs this many indexed reference peaks
MIN_GRAIN_PEAKS = 12
MAX_GRAINS = 8
# the cell does not explain the image (wrong zone axis or cell, :func:`_cell_match`) when more
# than this share of the peaks among the found columns lies off every site of the fitted
# lattice (measured: 0.00 on matched cells, 0.32–0.82 for CsPbBr3 [011] ↔ [001]) ...
CELL_OFF_SITE_SHARE = 0.2
# ... (a peak this close to a site is on it whatever the cell's shortest distance: two
# columns 0.8 Å apart, γ-CsPbI3 [1-10], give one peak between them)
CELL_SITE_TOL_A = 0.5
# ... or when the fitted lattice's b/a differs from the cell's by more than this factor, or
# its angle by more than CELL_ANGLE_DEG (matched cells: ≤ 1.1 %, ≤ 2°, real scan distortion
# included; a CsPbBr3 [001] image fitted with the [011] cell: b/a 1.41 × the cell's)
CELL_SHAPE_TOL = 0.1
CELL_ANGLE_DEG = 6.0
# the lattice √1.5 × nearer the cell's scale is taken when it explains this share of the peak
# pairs the best scale explains (:func:`_explained_scale`; [011] below 10³ e⁻/Å²: the best
# was the 1.22 × larger rectangle of the Pb + Cs–Br union in 6 of 48 held-out images)
ALIAS_SCALE_TIE = 0.75
# the fitted origin is put on another sublattice of the reference's shape when the summed
# mean contrast of all types grows by more than this fraction (:func:`_place_grain`)
ALIAS_MARGIN = 0.1


def fit_lattice_vectors(
    xy_A: np.ndarray, vectors_A: np.ndarray, origin_A: np.ndarray, *, tol: float = 0.25
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares lattice ``origin + h·a + k·b`` through points, indexed by growth.

    The point nearest ``origin_A`` gets (0, 0); every indexed point predicts its four
    neighbours (±a, ±b) and the point nearest a prediction, within ``tol`` × the shorter
    vector, takes that index (front by front, the closest prediction winning a contested
    point); then origin and vectors are fitted by least squares and the growth is repeated
    with them.  Unlike rounding the fractional coordinates of every point, which aliases a
    point n cells away to n ± 1 once n × (relative vector error) exceeds ``tol`` (a 10 %
    calibration error: beyond 2–3 cells), growth needs the vectors right to ``tol`` over
    one cell only, and follows a bent or scan-distorted lattice.

    Returns
    -------
    origin_A : (2,) ndarray
    vectors_A : (2, 2) ndarray
        Rows a, b, Å.
    hk : (N, 2) int ndarray
        Index of each point; ``np.iinfo(np.int64).min`` for points the growth did not reach
        (spurious peaks off the lattice, another grain).
    """
    refuse_text_numbers(locals())
    xy = np.asarray(xy_A, float).reshape(-1, 2)
    vec = np.asarray(vectors_A, float)
    org = np.asarray(origin_A, float)
    hk = np.full((len(xy), 2), _NONE, dtype=np.int64)
    if len(xy) == 0:
        return org, vec, hk
    tree = cKDTree(xy)
    steps = np.array([[1, 0], [-1, 0], [0, 1], [0, -1]], dtype=np.int64)
    for _ in range(2):
        hk = _grow_index(xy, tree, vec, org, steps, tol)
        ok = hk[:, 0] != _NONE
        if ok.sum() < 3:
            break
        a_mat = np.column_stack([np.ones(ok.sum()), hk[ok]])
        sol, _, rank, _ = np.linalg.lstsq(a_mat, xy[ok], rcond=None)
        if rank < 3:  # all indexed points on one line: keep the given vectors
            break
        moved = float(np.abs(sol[1:3] - vec).max())
        org, vec = sol[0], sol[1:3]
        # a second growth only when the vectors moved enough to index other points
        if moved < 0.02 * tol * float(np.min(np.linalg.norm(vec, axis=1))):
            break
    return org, vec, hk


def _same_lattice(fits: list, v: np.ndarray):
    """``(org, vec, hk)`` of an earlier fit whose lattice ``v`` only re-labels, else None.

    A rotation candidate that maps the fitted vectors onto themselves by an integer
    unimodular matrix U (a square cell turned by 90°, a mirrored basis) is the same lattice:
    its fit is U·vec with indices hk·U⁻¹, no new growth needed.
    """
    for _, org, vec, hk in fits:
        m = v @ np.linalg.inv(vec)
        u = np.round(m)
        if np.abs(m - u).max() < 0.1 and abs(round(float(np.linalg.det(u)))) == 1:
            ok = hk[:, 0] != _NONE
            new = np.full_like(hk, _NONE)
            new[ok] = np.round(hk[ok] @ np.linalg.inv(u)).astype(hk.dtype)
            return org, u @ vec, new
    return None


def _grow_index(
    xy: np.ndarray,
    tree: cKDTree,
    vec: np.ndarray,
    org: np.ndarray,
    steps: np.ndarray,
    tol: float,
) -> np.ndarray:
    """Lattice indices by breadth-first growth from the point nearest ``org``."""
    hk = np.full((len(xy), 2), _NONE, dtype=np.int64)
    reach = tol * float(np.min(np.linalg.norm(vec, axis=1)))
    start = int(tree.query(org)[1])
    hk[start] = 0
    front = np.array([start])
    step_xy = steps @ vec
    while front.size:
        pred = (xy[front][:, None, :] + step_xy[None]).reshape(-1, 2)
        d, q = tree.query(pred, distance_upper_bound=reach)
        ok = np.isfinite(d)
        src = np.repeat(front, len(steps))[ok]
        new = hk[src] + np.tile(steps, (len(front), 1))[ok]
        q, d = q[ok], d[ok]
        free = hk[q, 0] == _NONE
        q, d, new = q[free], d[free], new[free]
        order = np.argsort(d, kind="stable")
        q_u, first = np.unique(q[order], return_index=True)
        hk[q_u] = new[order][first]
        front = q_u
    return hk


def _scaled_cell(
    cell: ProjectedCell, ref_uv: np.ndarray, xy: np.ndarray
) -> tuple[ProjectedCell, float]:
    """The cell scaled to the image's ``ref`` lattice (:func:`_lattice_scale`) and the scale."""
    reach = 1.3 * max(cell.a_A, cell.b_A)
    expected = _sublattice_vectors(ref_uv, reach, cell)
    pairs = cKDTree(xy).query_pairs(1.34 * reach, output_type="ndarray")
    dv = xy[pairs[:, 1]] - xy[pairs[:, 0]] if len(pairs) else np.zeros((0, 2))
    scale = _lattice_scale(dv, expected @ cell.vectors())
    if scale == 1.0:
        return cell, 1.0
    out = ProjectedCell(
        cell.a_A * scale, cell.b_A * scale, cell.angle_deg, cell.sites, cell.c_A, cell.name
    )
    return out, scale


def _warn_lattice_scale(vec: np.ndarray, cell: ProjectedCell, ref: str, dx: float) -> float:
    """Warn when the fitted lattice's area differs from the cell's beyond LATTICE_SCALE_WARN.

    Returns the linear scale (fitted / cell, from the cell areas).
    """
    area_fit = abs(float(np.linalg.det(vec)))
    area_cell = abs(float(np.linalg.det(cell.vectors())))
    scale = float(np.sqrt(area_fit / area_cell))
    if abs(scale - 1.0) > LATTICE_SCALE_WARN:
        a_fit, b_fit = np.linalg.norm(vec, axis=1)
        warnings.warn(
            f"the {ref!r} lattice in the image is {scale:.3f} × the cell's (a, b = "
            f"{a_fit:.3f}, {b_fit:.3f} Å in the image vs {cell.a_A:.3f}, {cell.b_A:.3f} Å): "
            f"the pixel size{f' ({dx:.5g} Å)' if np.isfinite(dx) else ''} or the cell "
            "parameter is off by "
            f"{100 * (scale - 1):+.1f} %, or the crystal is not the cell's (Cd on the Pb "
            "sites shrinks a CsPbBr3 lattice, 4 % at x = 0.5 in the simulator: count such a "
            "crystal with its Cd fraction, `atoms count --cd-fraction`); columns are placed "
            "on the lattice of the image",
            UserWarning,
            stacklevel=3,
        )
    return scale


def _lattice_scale(
    dv: np.ndarray, expected_A: np.ndarray, *, rel_tol: float = 0.03, bounds=(0.75, 1.33)
) -> float:
    """Scale s of the image's lattice relative to the cell, from peak-pair lengths.

    Counts the pair vectors whose length is within ``rel_tol`` of s × an expected length,
    over s in ``bounds`` (0.5 % steps, then refined); the best s, preferring the one nearest
    1 among near-ties (a pixel size or cell parameter off by a few % is common; the expected
    length set repeats at ratios such as √5/2 only for a few pairs).
    """
    if len(dv) == 0 or len(expected_A) == 0:
        return 1.0
    ln = np.sort(np.linalg.norm(dv, axis=1))
    ex = np.unique(np.round(np.linalg.norm(expected_A, axis=1), 6))

    def score(s: float) -> int:
        lo = np.searchsorted(ln, s * ex * (1 - rel_tol))
        hi = np.searchsorted(ln, s * ex * (1 + rel_tol))
        return int(np.sum(hi - lo))

    grid = np.exp(np.arange(np.log(bounds[0]), np.log(bounds[1]) + 1e-9, 0.005))
    sc = np.array([score(s) for s in grid])
    if sc.max() == 0:
        return 1.0
    near = grid[sc >= 0.9 * sc.max()]
    s0 = float(near[np.argmin(np.abs(np.log(near)))])
    fine = s0 * np.exp(np.arange(-0.006, 0.00601, 0.001))
    scf = np.array([score(s) for s in fine])
    return float(np.mean(fine[scf == scf.max()]))


def _explained_scale(
    xy: np.ndarray,
    uv: np.ndarray,
    cell: ProjectedCell,
    *,
    rel_tol: float = 0.03,
    bounds=(0.75, 1.33),
) -> float:
    """Scale s of the lattice of the sites ``uv`` that explains the largest share of the
    peak pairs shorter than s × 1.3 × the longer cell vector (within ``rel_tol``).

    Unlike the count of :func:`_lattice_scale`, a share does not grow with the range of
    pair lengths a larger s takes in, nor does a superlattice that explains only some of the
    short pairs (a ref-only lattice under ref + alias peaks) score well.  Near-ties (within 2
    % of the best share) go to the scale nearest 1, and so does the scale √1.5 × nearer 1
    when it explains ``ALIAS_SCALE_TIE`` of the best share: a rectangle of b/a = 1/√2
    (the [011] cell) turned 55° and √1.5 × larger lies on the lattice of its
    reference + alias union, and with few peaks (10²–3·10² e⁻/Å²) it can explain more.
    """
    reach = 1.3 * max(cell.a_A, cell.b_A)
    ex = _sublattice_vectors(uv, reach, cell) @ cell.vectors()
    ex = np.unique(np.round(np.linalg.norm(ex, axis=1), 6))
    pairs = cKDTree(xy).query_pairs(bounds[1] * reach, output_type="ndarray")
    if len(pairs) == 0 or len(ex) == 0:
        return 1.0
    ln = np.sort(np.linalg.norm(xy[pairs[:, 1]] - xy[pairs[:, 0]], axis=1))

    def share(s: float) -> float:
        n = np.searchsorted(ln, s * reach)
        if n < 10:
            return 0.0
        lo = np.searchsorted(ln, s * ex * (1 - rel_tol))
        hi = np.searchsorted(ln, s * ex * (1 + rel_tol))
        return float(np.sum(hi - lo)) / n

    grid = np.exp(np.arange(np.log(bounds[0]), np.log(bounds[1]) + 1e-9, 0.005))
    sc = np.array([share(s) for s in grid])
    if sc.max() == 0:
        return 1.0
    near = grid[sc >= 0.98 * sc.max()]
    s0 = float(near[np.argmin(np.abs(np.log(near)))])
    if ALIAS_SCALE_TIE > 0:
        # the √1.5 × larger lattice of the same shape nearly ties when few peaks sample the
        # union (below ~10³ e⁻/Å²; for the [011] cell: the a × a/√2 rectangle turned 55°
        # on the Pb + Cs–Br union); nearer 1 wins when it explains ALIAS_SCALE_TIE of it
        for r in (np.sqrt(1.5), 1 / np.sqrt(1.5)):
            alt = grid[np.abs(np.log(grid / (s0 / r))) <= rel_tol]
            if alt.size and abs(np.log(s0 / r)) < abs(np.log(s0)):
                sa = np.array([share(s) for s in alt])
                if sa.max() >= ALIAS_SCALE_TIE * share(s0):
                    s0 = float(alt[np.argmax(sa)])
                    break
    fine = s0 * np.exp(np.arange(-0.006, 0.00601, 0.001))
    scf = np.array([share(s) for s in fine])
    return float(np.mean(fine[scf == scf.max()]))


def _kmeans_1d(v: np.ndarray, k: int) -> np.ndarray:
    cent = np.quantile(v, (np.arange(k) + 0.5) / k)
    lab = np.zeros(v.size, dtype=int)
    for _ in range(50):
        lab = np.argmin(np.abs(v[:, None] - cent[None]), axis=1)
        new = np.array([v[lab == i].mean() if np.any(lab == i) else cent[i] for i in range(k)])
        if np.allclose(new, cent):
            break
        cent = new
    return np.argsort(np.argsort(-cent))[lab]  # 0 = brightest


def _sublattice_vectors(ref_uv: np.ndarray, reach_A: float, cell: ProjectedCell) -> np.ndarray:
    """Fractional neighbour vectors of the reference sublattice shorter than ``reach_A``."""
    vec0 = cell.vectors(0.0)
    hk = np.array([(h, k) for h in range(-3, 4) for k in range(-3, 4)], dtype=float)
    d = (ref_uv[None, :, None, :] - ref_uv[:, None, None, :]) + hk[None, None, :, :]
    d = np.unique(np.round(d.reshape(-1, 2), 9), axis=0)
    ln = np.linalg.norm(d @ vec0, axis=1)
    return d[(ln > 1e-6) & (ln < reach_A)]


def _rotation_candidates(
    dv: np.ndarray,
    expected: np.ndarray,
    cell: ProjectedCell,
    hand: float,
    tol: float,
    *,
    rel: float = 0.7,
    max_candidates: int = 8,
) -> list[float]:
    """In-plane rotations (deg) that map most peak-pair vectors onto sublattice vectors.

    Every local maximum of the match count over 0–360° (0.5° grid, refined to 0.05°) that
    reaches ``rel`` of the best is returned, best first: a reference sublattice that is
    (nearly) square although the cell is not, or that is symmetric under a rotation the cell
    lacks, matches at several rotations, and the other sites decide between them.
    """
    if len(dv) == 0 or len(expected) == 0:
        return []
    tree = cKDTree(dv)

    def score(theta: float) -> int:
        v = cell.vectors(theta)
        v[1] *= hand
        return int(np.sum(tree.query_ball_point(expected @ v, tol, return_length=True) > 0))

    grid = np.arange(0.0, 360.0, 0.5)
    sc = np.array([score(t) for t in grid])
    if sc.max() == 0:
        return []
    peak = (sc >= np.roll(sc, 1)) & (sc >= np.roll(sc, -1)) & (sc >= rel * sc.max())
    order = np.argsort(-sc[peak], kind="stable")
    out: list[tuple[int, float]] = []
    for t0 in grid[peak][order]:
        if any(abs((t0 - t + 180.0) % 360.0 - 180.0) < 2.0 for _, t in out):
            continue
        fine = np.arange(t0 - 0.5, t0 + 0.5001, 0.05)
        scf = np.array([score(t) for t in fine])
        out.append((int(scf.max()), float(np.mean(fine[scf == scf.max()]))))
        if len(out) >= max_candidates:
            break
    out.sort(key=lambda c: -c[0])
    return [t for _, t in out]


def _place_sites(
    cell: ProjectedCell,
    org: np.ndarray,
    vec: np.ndarray,
    s0: np.ndarray,
    img: Image,
    shape: tuple[int, int],
    field: Any = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Every site of the cell inside the image, the origin being reference site ``s0``.

    ``field`` (from :func:`_residual_field`) adds the smooth departure of the measured
    reference columns from the straight lattice at each site's fractional index.
    """
    ny, nx = shape
    corners = px_to_A(np.array([[0, 0], [nx - 1, 0], [0, ny - 1], [nx - 1, ny - 1]], float), img)
    fr = (corners - org) @ np.linalg.inv(vec)
    h0, k0 = np.floor(fr.min(axis=0)) - 1
    h1, k1 = np.ceil(fr.max(axis=0)) + 1
    hh, kk = np.meshgrid(np.arange(h0, h1 + 1), np.arange(k0, k1 + 1), indexing="ij")
    hh, kk = hh.ravel(), kk.ravel()
    rows = []
    for si, site in cell.sites.iterrows():
        duv = np.array([site.u, site.v]) - s0
        frac = np.column_stack([hh, kk]) + duv
        pos = org + frac @ vec
        if field is not None:
            pos = pos + field(frac)
        rows.append(
            pd.DataFrame(
                {
                    "x_A": pos[:, 0],
                    "y_A": pos[:, 1],
                    "type": site.type,
                    "h": hh.astype(int),
                    "k": kk.astype(int),
                    "site": si,
                }
            )
        )
    cand = pd.concat(rows, ignore_index=True)
    pxy = (cand[["x_A", "y_A"]].to_numpy() - np.asarray(img.origin_A)) / img.pixel_size_A
    inside = (pxy[:, 0] >= 0) & (pxy[:, 0] <= nx - 1) & (pxy[:, 1] >= 0) & (pxy[:, 1] <= ny - 1)
    return cand[inside].reset_index(drop=True), pxy[inside]


def _residual_field(
    xy: np.ndarray, hk: np.ndarray, org: np.ndarray, vec: np.ndarray, *, sigma_cells: float = 1.0
):
    """Smooth displacement of the indexed points from the fitted straight lattice.

    Normalised convolution (Knutsson & Westin, CVPR 1993) of the residuals on the (h, k)
    grid with a Gaussian of ``sigma_cells``: scan distortion, drift during the scan and
    bending move columns by up to an ångström across a field while a straight lattice is
    off by a fraction of that within a few cells.  Cells without indexed points nearby take
    the nearest smoothed value.  Returns ``f(frac (N, 2)) -> (N, 2)`` Å, or None when fewer
    than 9 points are indexed or the field is not above its localisation noise (a straight
    lattice: then the fitted lattice alone places the sites).
    """
    ok = hk[:, 0] != _NONE
    if ok.sum() < 9:
        return None
    h = hk[ok]
    res = xy[ok] - (org + h @ vec)
    pad = int(np.ceil(3 * sigma_cells)) + 1
    lo = h.min(axis=0) - pad
    shape = tuple(h.max(axis=0) - lo + pad + 1)
    num = np.zeros((2, *shape))
    den = np.zeros(shape)
    ij = tuple((h - lo).T)
    np.add.at(den, ij, 1.0)
    for c in range(2):
        np.add.at(num[c], ij, res[:, c])
    den_s = ndimage.gaussian_filter(den, sigma_cells, mode="constant")
    num_s = [ndimage.gaussian_filter(num[c], sigma_cells, mode="constant") for c in range(2)]
    valid = den_s > 0.05
    near = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    grid = np.stack([np.where(valid, n / np.where(valid, den_s, 1.0), 0.0) for n in num_s])
    grid = grid[(slice(None), *near)]
    # only a distortion above the localisation noise is applied: on a straight lattice the
    # smoothed field is noise (of variance σ²/n_eff, n_eff = 4πσ_cells² points) that would
    # move weak sites off their columns
    at = grid[(slice(None), *ij)].T
    sig2 = float(np.mean((res - at) ** 2))
    n_eff = 4 * np.pi * sigma_cells**2
    if float(np.mean(at**2)) < FIELD_SIGNIFICANCE * sig2 / n_eff:
        return None

    def field(frac: np.ndarray) -> np.ndarray:
        coords = (np.asarray(frac, float) - lo).T
        return np.column_stack(
            [ndimage.map_coordinates(grid[c], coords, order=1, mode="nearest") for c in range(2)]
        )

    return field


def find_columns(
    image: Image | np.ndarray,
    *,
    cell: ProjectedCell | None = None,
    reference_type: str | None = None,
    separation_A: float | None = None,
    n_types: int = 1,
    type_names: list[str] | None = None,
    min_snr: float = 5.0,
    presence_fraction: float = 0.08,
    pixel_size_A: float | None = None,
    check_cell: bool = True,
) -> pd.DataFrame:
    """Find atom columns, sublattice-aware when a projected unit cell is given.

    Parameters
    ----------
    image : Image or (M, N) ndarray
    cell : ProjectedCell, optional
        Projected unit cell (e.g. :func:`cspbbr3_001_cell` or
        :func:`perovstem.io.statstem_db.read_statstem_cell`).  Its lattice is fitted to the
        peaks of ``reference_type`` (default: the first site of the cell, the brightest
        column), every site is placed, and a site is kept when its local contrast reaches
        ``presence_fraction`` of the typical contrast of that type (so missing columns are
        added and spurious peaks between sites dropped).  The cell's a, b set the separation.
    reference_type : str, optional
        Column type of the cell used to fit the lattice.
    separation_A : float, optional
        Peak separation when no cell is given (default from :func:`estimate_lattice`).
    n_types, type_names
        Without a cell: split the peaks into ``n_types`` intensity classes (brightest first),
        named ``type_names`` (default ``"type0"``, ...).
    min_snr : float
        Peak-finding threshold in noise units.
    presence_fraction : float
        Fraction of a type's typical contrast a site needs to count as a column.
    check_cell : bool
        With a cell: warn when the cell does not explain the image (:func:`_cell_match`:
        more than ``CELL_OFF_SITE_SHARE`` of the peaks among the found columns off every
        site, or a fitted lattice of another shape — e.g. a CsPbBr3 crystal seen along
        [011] fitted with the [001] cell) and, for a CsPbBr3 cell, try the other built-in
        zone axes ([001], [011], [111], in that order) and name the first that explains the
        image (no lattice-scale warning then).  The columns are those of the given cell
        either way (never relabelled).  The measures are in ``attrs["cell_check"]`` also
        when False (which only skips the warning and the other searches).

    Returns
    -------
    DataFrame
        ``x_A, y_A, type, contrast`` (+ ``h, k, site, grain`` with a cell); ``df.attrs``
        holds the fitted ``lattice_vectors_A`` and ``lattice_origin_A`` when a cell is used.
        Columns of a crystal too small for a lattice (:func:`_unindexed_crystals`) have
        ``grain`` −1 and ``site`` −1 (not indexed, typed by intensity);
        ``attrs["n_unindexed"]`` counts them.  With a cell whose other sublattices are
        translates of the reference one (:func:`_alias_types`, the [011] cell) the
        origin is decided by the geometry (the cell's empty position), not by which
        column is the brightest (Cd-alloyed [011]: Cs–Br outshines Pb).
        ``attrs["cell_check"]``: does the cell explain the image (``check_cell``): the
        cell's name, ``matches`` (bool), ``off_site_share`` and ``n_peaks``, the fitted
        lattice's ``shape_ratio`` (b/a over the cell's) and ``angle_diff_deg``, and when
        another built-in zone axis was tried, ``alternative`` (its name, CLI value and the
        same measures) and ``suggested`` (its CLI value when it matches, else None).

    Raises
    ------
    DataError
        No peaks found.
    ParameterError
        ``reference_type`` not in the cell, bad ``n_types``.
    """
    refuse_text_numbers(locals())
    img = as_image(image, pixel_size_A)
    data = np.asarray(img.data, dtype=float)
    dx = img.pixel_size_A
    if cell is None:
        n_types = check_int("n_types", n_types, 1)  # int(nan) raised a bare ValueError
        pk = find_peaks(img, separation_A=separation_A, min_snr=min_snr)
        if len(pk) == 0:
            raise DataError("no atom columns found (no peaks above the threshold)")
        names = type_names or [f"type{i}" for i in range(int(n_types))]
        if len(names) != int(n_types):
            raise ParameterError(f"`type_names` must have {n_types} names, got {names!r}")
        lab = (
            _kmeans_1d(pk["height"].to_numpy(), int(n_types))
            if n_types > 1
            else np.zeros(len(pk), int)
        )
        out = pd.DataFrame(
            {
                "x_A": pk.x_A,
                "y_A": pk.y_A,
                "type": np.array(names, dtype=object)[lab],
                "contrast": pk.height,
            }
        )
        out.attrs.update(pixel_size_A=dx, separation_A=pk.attrs["separation_A"])
        return out

    check_range("presence_fraction", presence_fraction, 0.0, 1.0)  # NaN kept every site
    ref = reference_type if reference_type is not None else cell.sites["type"].iloc[0]
    if ref not in cell.types:
        raise ParameterError(
            f"`reference_type` {ref!r} is not a column type of the cell {cell.types}"
        )
    dmin_ref = cell.min_distance_A(ref)
    # the peaks must not merge a reference column with a neighbour of a sublattice of the
    # same shape (_alias_types), which may be as bright (Cs–Br beside Cd-alloyed Pb in
    # [011], 2.9 Å apart: a 3.1 Å separation kept the brighter of each pair, a checkerboard
    # fitted as a lattice 1.2 × too large); a neighbour closer than 0.6 × the reference
    # spacing (a bonded one: Pb–Br 2.1 Å in [011]) is not separated
    sep_A = 0.75 * dmin_ref
    close = []
    for t in _alias_types(cell, ref):
        d_t = _type_distance(cell, ref, t)
        if 0.6 * dmin_ref <= d_t < sep_A / 0.9:
            close.append(t)
            sep_A = min(sep_A, 0.9 * d_t)
    ny, nx = data.shape
    if max(ny, nx) * dx < max(sep_A, cell.a_A, cell.b_A):
        # find_peaks named its own `separation_A`, which the user never gave (the cell sets it)
        raise DataError(
            f"`image` ({ny}×{nx} px = {ny * dx:.3g}×{nx * dx:.3g} Å) is smaller than one "
            f"projected unit cell of `cell` ({cell.a_A:.3g}×{cell.b_A:.3g} Å): the column "
            "search with a cell needs an image of several cells (is `pixel_size_A` in Å?)"
        )
    d_all = cell.min_distance_A()
    if 0.75 * d_all < dx:
        # the column search then failed in find_peaks, naming its `separation_A`, which the
        # user never gave (the cell sets it)
        raise DataError(
            f"the pixel size ({dx:.4g} Å) does not resolve the columns of `cell` (the "
            f"nearest ones are {d_all:.3g} Å apart: pixels below {0.75 * d_all:.3g} Å are "
            "needed; is `pixel_size_A` in Å?)"
        )
    pk = find_peaks(img, separation_A=sep_A, min_snr=min_snr)
    if len(pk) < 3:
        raise DataError(f"no atom columns found: only {len(pk)} peak(s) above the threshold")
    xy = pk[["x_A", "y_A"]].to_numpy()
    # keep the brightest population (the reference sublattice)
    hgt = pk.height.to_numpy()
    bright = hgt >= 0.5 * np.median(hgt[hgt >= np.quantile(hgt, 0.5)])
    xyb = xy[bright]
    ref_uv = cell.sites.loc[cell.sites["type"] == ref, ["u", "v"]].to_numpy(float)
    # the lattice is fitted on the sublattice these peaks sample: the reference sites and
    # those of the alias types the separation keeps apart (Pb and Cs–Br in [011])
    fit_uv = cell.sites.loc[cell.sites["type"].isin([ref, *close]), ["u", "v"]].to_numpy(float)
    grains = _find_grains(xyb, cell, ref, fit_uv, dmin_ref, ref_uv)
    # a thinner crystal beside a thick one: its reference columns fall below the bright
    # threshold set by the thick one (a 15 Å platelet beside a 50 Å cube was not found at
    # all).  Peaks farther than a cell from every grain's reference columns are searched again
    # with their own threshold (they are not the other sublattices of a found grain)
    reach = max(cell.a_A, cell.b_A) * max(g["cell"].a_A / cell.a_A for g in grains)
    d_own = cKDTree(np.vstack([xyb[g["own"]] for g in grains])).query(xy)[0]
    rest = np.flatnonzero(~bright & (d_own > reach))
    if len(rest) >= MIN_GRAIN_PEAKS and len(grains) < MAX_GRAINS:
        hr = hgt[rest]
        xy2 = xy[rest[hr >= 0.5 * np.median(hr[hr >= np.quantile(hr, 0.5)])]]
        try:
            more = _find_grains(xy2, cell, ref, fit_uv, dmin_ref, ref_uv) if len(xy2) >= 3 else []
        except DataError:  # no lattice in them (noise, an amorphous or other phase)
            more = []
        more = [g for g in more if len(g["own"]) >= MIN_GRAIN_PEAKS]
        for g in more:
            # the dimmer part of a found grain (its reference columns under the bright
            # threshold: a Cd-alloyed [011] crystal at 3·10³ e⁻/Å² was two grains on one
            # lattice, recall 0.74–0.82) widens that grain, as in _find_grains
            same = next(
                (
                    h
                    for h in grains
                    if _continues(
                        h,
                        g["best"],
                        xy2[g["own"]],
                        fit_uv,
                        0.2 * dmin_ref * h["cell"].a_A / cell.a_A,
                    )
                ),
                None,
            )
            if same is not None:
                same["own"] = np.union1d(same["own"], g["own"] + len(xyb))
            elif len(grains) < MAX_GRAINS:
                g["own"] = g["own"] + len(xyb)
                grains.append(g)
        xyb = np.vstack([xyb, xy2])
        grains.sort(key=lambda g: -len(g["own"]))
    # local contrast: mean in a small disk minus the image background
    dmin = grains[0]["cell"].min_distance_A()
    r_in = max(1.0, 0.2 * dmin / dx)
    sm = ndimage.gaussian_filter(data, max(0.5, r_in / 2))
    bg = float(np.percentile(sm, 5))
    # the site test keeps the darker-half MAD (1e-12 on a zero-count vacuum, when
    # presence_fraction alone decides): at a known lattice site it is no search, and the
    # count-data σ of _pixel_noise would drop Br columns of a few electrons that the
    # presence criterion finds (Br recall 0.46 instead of > 0.95 at 10³ e⁻/Å², tests)
    noise = _robust_noise(data) / (2.0 * np.sqrt(np.pi) * max(0.5, r_in / 2))
    # with several grains each places its sites only where its own reference columns are
    # the nearest ones (within one cell): one lattice over the whole field puts sites
    # between the columns of a differently oriented crystal, and they pass the presence test
    owner = None
    if len(grains) > 1:
        own_xy = np.vstack([xyb[g["own"]] for g in grains])
        own_lab = np.concatenate([np.full(len(g["own"]), i) for i, g in enumerate(grains)])
        owner = (cKDTree(own_xy), own_lab)
    tables, placed, sites_all = [], [], []
    for gi, g in enumerate(grains):
        region = None
        if owner is not None:
            reach_g = max(g["cell"].a_A, g["cell"].b_A)

            def region(pts: np.ndarray, gi=gi, reach_g=reach_g) -> np.ndarray:
                d, j = owner[0].query(pts)
                return (owner[1][j] == gi) & (d <= reach_g)

        org, vec, cand, con = _place_grain(
            g["fits"], g["pts"], g["cell"], ref, ref_uv, img, data.shape, sm, bg, region
        )
        keep = _present_sites(cand, con, cell.types, presence_fraction, min_snr * noise)
        t = cand[keep].copy()
        t["contrast"] = con[keep]
        t["grain"] = gi
        tables.append(t)
        sites_all.append(cand[["x_A", "y_A"]].to_numpy())
        placed.append((org, vec, int(len(g["own"]))))
    out = pd.concat(tables, ignore_index=True)
    if len(out) == 0:
        raise DataError("no atom columns found at the sites of the cell")
    spacing = dmin_ref * grains[0]["cell"].a_A / cell.a_A
    own_xy = np.vstack([xyb[g["own"]] for g in grains])
    reach_own = max(grains[0]["cell"].a_A, grains[0]["cell"].b_A)

    fine_cache: list[np.ndarray] = []

    def fine_peaks() -> np.ndarray:
        if not fine_cache:
            p = find_peaks(img, separation_A=0.75 * dmin, min_snr=min_snr)
            fine_cache.append(p[["x_A", "y_A"]].to_numpy())
        return fine_cache[0]

    out, n_free = _unindexed_crystals(
        out,
        xy,
        np.vstack(sites_all),
        own_xy,
        reach_own,
        dmin,
        spacing,
        sm,
        bg,
        img,
        cell.types,
        fine_peaks,
        ref,
    )
    org, vec, _ = placed[0]
    # the scale of the lattice against the cell; warned about below, after the cell check
    lattice_scale = float(np.sqrt(abs(np.linalg.det(vec)) / abs(np.linalg.det(cell.vectors()))))
    fp = (
        fine_cache[0]
        if fine_cache
        else _peaks_near(img, out[["x_A", "y_A"]].to_numpy(), reach_own, 0.75 * dmin, pk, min_snr)
    )
    fp_px = (fp - np.asarray(img.origin_A)) / dx
    match = _cell_match(
        fp,
        np.clip(ndimage.map_coordinates(sm, [fp_px[:, 1], fp_px[:, 0]], order=1) - bg, 0, None),
        np.vstack(sites_all),
        out.loc[out["grain"] >= 0, ["x_A", "y_A"]].to_numpy(),
        reach_own,
        dmin,
        vec,
        cell,
    )
    out.attrs.update(
        pixel_size_A=dx,
        lattice_vectors_A=vec.tolist(),
        lattice_origin_A=org.tolist(),
        lattice_scale=lattice_scale,
        cell=cell.name,
        reference_type=ref,
        n_unindexed=n_free,
        grains=[
            {
                "grain": i,
                "lattice_vectors_A": v.tolist(),
                "lattice_origin_A": o.tolist(),
                "rotation_deg": float(np.degrees(np.arctan2(v[0, 1], v[0, 0]))),
                "n_reference_peaks": n,
            }
            for i, (o, v, n) in enumerate(placed)
        ],
        cell_check=match,
    )
    if check_cell and not match["matches"]:
        _warn_cell_mismatch(
            img,
            cell,
            match,
            reference_type=reference_type,
            min_snr=min_snr,
            presence_fraction=presence_fraction,
        )
    if not match.get("suggested"):
        # a crystal seen along another zone axis (named above) explains a lattice of another
        # scale; "the pixel size is off by -16.6 %" misled there
        _warn_lattice_scale(vec, cell, ref, dx)
    return out


def _peaks_near(
    img: Image, centres: np.ndarray, reach: float, sep_A: float, pk: pd.DataFrame, min_snr: float
) -> np.ndarray:
    """Peaks at ``sep_A`` within ``reach`` (plus the smoothing) of ``centres``, searched on
    that part of the image only, with the pixel noise of the whole image's search ``pk``
    (so the threshold is the one a search of the whole image would use; a crystal in a
    mostly empty 1024² frame: 0.2 s for the whole image).  Positions in Å."""
    dx = img.pixel_size_A
    sig_px = pk.attrs["sigma_A"] / dx
    thr = pk.attrs["threshold"]
    if len(centres) == 0 or not (min_snr > 0 and thr > 0):
        p = find_peaks(img, separation_A=sep_A, min_snr=min_snr)
        return p[["x_A", "y_A"]].to_numpy()
    # pixel noise of the whole image from the search's threshold (min_snr σ of the image
    # smoothed by sig_px, find_peaks); the margin keeps the crop's edges (the smoothing
    # and the excluded border pixels) farther than `reach` from every centre
    noise = thr / min_snr * 2.0 * np.sqrt(np.pi) * sig_px
    margin = reach / dx + 4.0 * max(0.5, sep_A / dx / 6.0) + 2.0
    ij = (centres - np.asarray(img.origin_A)) / dx
    ny, nx = img.data.shape
    c0, r0 = np.maximum(np.floor(ij.min(axis=0) - margin).astype(int), 0)
    c1 = min(int(np.ceil(ij[:, 0].max() + margin)) + 1, nx)
    r1 = min(int(np.ceil(ij[:, 1].max() + margin)) + 1, ny)
    sub = Image(
        np.asarray(img.data)[r0:r1, c0:c1],
        dx,
        origin_A=(img.origin_A[0] + c0 * dx, img.origin_A[1] + r0 * dx),
    )
    p = find_peaks(sub, separation_A=sep_A, min_snr=min_snr, pixel_noise=noise)
    return p[["x_A", "y_A"]].to_numpy()


def _cell_match(
    peaks: np.ndarray,
    contrast: np.ndarray,
    sites: np.ndarray,
    columns: np.ndarray,
    reach: float,
    dmin: float,
    vec: np.ndarray,
    cell: ProjectedCell,
) -> dict[str, Any]:
    """Does the projected cell explain the image?  Two measures of the fitted lattice.

    * ``off_site_share``: of the ``peaks`` (the fine search at 0.75 × ``dmin``, the fitted
      cell's shortest column distance) within ``reach`` (one cell) of a found column of a
      grain, the share farther than 0.3 × ``dmin`` from every placed ``site`` of the
      lattice (those of all grains, present or not); judged from ``MIN_GRAIN_PEAKS``
      peaks on.  A matched cell has a site at every
      column of the crystal (0.00 on simulated CsPbBr3 [001] and [011] crystals, 10²–2·10⁴
      e⁻/Å², 0.1–0.4 Å/px, Cd-alloyed, and on StatSTEM's real [001] image); a cell of another
      zone axis leaves a share of the columns between its sites (CsPbBr3 [011] seen with the
      [001] cell: 0.32–0.54; [001] with the [011] cell: 0.48–0.82), the rule of
      :func:`_unindexed_crystals` (a peak farther than 0.3 × ``dmin`` from every site is
      not a column of the lattice).
    * ``shape_ratio`` (b/a of the fitted lattice over the cell's) and ``angle_diff_deg``:
      the lattice is fitted on the image's peaks with free vectors, so a cell whose
      sublattice fits the image only after a change of shape (the [011] cell's
      a × a/√2 on the square [001] lattice: b/a 1.41 × the cell's, every peak on a site)
      is a different lattice; scan distortion changes b/a by a few % and the angle by
      ~2° (StatSTEM's real CsPbBr3 image: 1.006, 1.97°).
    """
    a_fit, b_fit = np.linalg.norm(vec, axis=1)
    cos = abs(float(np.dot(vec[0], vec[1]))) / (a_fit * b_fit)
    angle = float(np.degrees(np.arccos(min(cos, 1.0))))
    cell_angle = min(cell.angle_deg, 180.0 - cell.angle_deg)
    shape = float((b_fit / a_fit) / (cell.b_A / cell.a_A))
    share, n = float("nan"), 0
    if len(peaks) and len(columns) and len(sites):
        inside = cKDTree(columns).query(peaks)[0] <= reach
        n = int(inside.sum())
        if n:
            off = cKDTree(sites).query(peaks[inside])[0] > max(0.3 * dmin, CELL_SITE_TOL_A)
            w = contrast[inside]
            share = float(np.sum(w[off]) / np.sum(w)) if np.sum(w) > 0 else float(np.mean(off))
    # a share of a few peaks says nothing (1 of 4 on a 25 Å crystal at 10² e⁻/Å²)
    off_sites = n >= MIN_GRAIN_PEAKS and share > CELL_OFF_SITE_SHARE
    off_shape = abs(np.log(shape)) > np.log1p(CELL_SHAPE_TOL)
    off_angle = abs(angle - cell_angle) > CELL_ANGLE_DEG
    return {
        "cell": cell.name,
        "matches": not (off_sites or off_shape or off_angle),
        "off_site_share": share,
        "n_peaks": n,
        "shape_ratio": shape,
        "angle_diff_deg": angle - cell_angle,
    }


# the built-in CsPbBr3 zone axes: their CLI names, cell functions and the others to try on a
# mismatch, most common first (cubes lie on {100} faces: [001], then [011], then [111])
_ZONES = {
    "[001]": ("cspbbr3", "cspbbr3_001_cell", ("[011]", "[111]")),
    "[011]": ("cspbbr3_011", "cspbbr3_011_cell", ("[001]", "[111]")),
    "[111]": ("cspbbr3_111", "cspbbr3_111_cell", ("[001]", "[011]")),
}


def _zone_cell(zone: str, a0: float) -> ProjectedCell:
    """The built-in CsPbBr3 cell of ``zone`` at pseudo-cubic lattice constant ``a0``, Å."""
    from perovstem.atoms import cell as cells

    return getattr(cells, _ZONES[zone][1])(a0)


def _zone_of(cell: ProjectedCell) -> str | None:
    """``"[001]"`` / ``"[011]"`` / ``"[111]"`` for a CsPbBr3 cell (built-in, or a database
    cell named CsPbBr3_100 / _001 / _011 / _110 / _111 ...), else None."""
    name = cell.name.lower().replace(" ", "")
    if "cspbbr3" not in name:
        return None
    tail = name.rsplit("cspbbr3", 1)[-1]
    if "[111]" in name or "111" in tail:
        return "[111]"
    if "[011]" in name or "011" in tail or "110" in name:
        return "[011]"
    return "[001]"


def _describe(m: dict[str, Any]) -> str:
    share = m["off_site_share"]
    txt = (
        f"{share:.0%} of the {m['n_peaks']} peaks among its columns off its sites"
        if np.isfinite(share)
        else "no peaks to compare"
    )
    return (
        f"{txt}, fitted lattice b/a {m['shape_ratio']:.2f} × the cell's, angle "
        f"{abs(m['angle_diff_deg']):.1f}° off"
    )


def _other_zone_error(check: dict | None, given: str, fix: str, where: str = "") -> Any:
    """The error for a column search whose cell another built-in zone axis beats
    (``check["suggested"]``, :func:`_warn_cell_mismatch`), or None: its columns and types
    would be wrong (a [011] crystal with the [001] cell: 61 % of the columns right, all
    typed PbBr / Br / Cs).  ``given``: how the cell was given; ``fix``: what to do."""
    if not check or not check.get("suggested"):
        return None
    alt = check["alternative"]
    return DataError(
        f"{where}the cell {check['cell']!r} ({given}) does not explain the image "
        f"({_describe(check)}), the cell {alt['cell']!r} does ({_describe(alt)}): the "
        f"crystal looks to be seen along another zone axis; {fix}"
    )


def _warn_cell_mismatch(
    img: Image, cell: ProjectedCell, match: dict[str, Any], **options: Any
) -> None:
    """Warn that ``cell`` does not explain the image; for a CsPbBr3 cell try the other
    built-in zone axes in turn and name the first that does (``match["alternative"]``: the
    last one tried, ``match["suggested"]``: its CLI name)."""
    zone = _zone_of(cell)
    hint = ""
    match["suggested"] = None
    if zone is not None:
        # the pseudo-cubic a₀ of the cell: a of [001] and [011], a₀√(2/3) for [111]
        a0 = cell.a_A / np.sqrt(2.0 / 3.0) if zone == "[111]" else cell.a_A
        opts = dict(options)
        opts["reference_type"] = None  # the given cell's type names are not the other's
        tried = []
        for other in _ZONES[zone][2]:
            alt_cell = _zone_cell(other, a0)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    alt = find_columns(img, cell=alt_cell, check_cell=False, **opts)
                am = dict(alt.attrs["cell_check"])
            except (DataError, ParameterError) as err:
                am = {"cell": alt_cell.name, "matches": False, "error": str(err)}
            am["cli"] = _ZONES[other][0]
            match["alternative"] = am
            if am["matches"]:
                match["suggested"] = am["cli"]
                hint = (
                    f"; the CsPbBr3 {other} cell explains it ({_describe(am)}): the crystal "
                    f"looks to be seen along {other}: use {_ZONES[other][1]}() (CLI --cell "
                    f"{am['cli']})"
                )
                break
            tried.append(f"{other}: {am.get('error') or _describe(am)}")
        else:
            hint = f"; the other CsPbBr3 zone axes do not either ({'; '.join(tried)})"
    warnings.warn(
        f"the cell {cell.name!r} does not explain the image ({_describe(match)}): another "
        f"zone axis, phase or cell, or a failed lattice fit{hint}.  The columns returned are "
        "those of the given cell (types not relabelled)",
        UserWarning,
        stacklevel=3,
    )


def _unindexed_crystals(
    out: pd.DataFrame,
    peaks: np.ndarray,
    sites: np.ndarray,
    own: np.ndarray,
    reach: float,
    dmin: float,
    spacing: float,
    sm: np.ndarray,
    bg: float,
    img: Image,
    types: list,
    fine_peaks: Any = None,
    ref: str | None = None,
) -> tuple[pd.DataFrame, int]:
    """Columns of crystals too small to be a grain: their peaks, not a grain's sites.

    A crystal of fewer than ``MIN_GRAIN_PEAKS`` reference columns (3×3 cells) gets no
    lattice, and the sites of a grain's lattice that fall on it pass the presence test
    between its columns (a 12–15 Å crystal beside a 40 Å one: 3–7 false columns, recall of
    its columns 0.08–0.18).  Peaks that no grain explains — farther than 0.3 × ``dmin``
    (the cell's shortest column distance) from every placed site, or farther than 0.15 ×
    ``dmin`` and than ``reach`` (a cell) from the grains' indexed reference peaks ``own``
    — in groups of at least 3 within
    1.3 × ``spacing`` (the reference spacing) of each other are such a crystal.  Its peaks —
    with those of ``fine_peaks()`` (a search at 0.75 × ``dmin``, for the dimmer columns
    between the reference ones) within ``spacing`` of them, unexplained as well — become
    columns of ``grain`` −1 (``site`` −1: not indexed, ``h, k`` 0), typed by
    intensity — the type whose median contrast among the kept columns, scaled so that the
    reference type ``ref`` matches the upper half of the crystal's own (coarse) peaks, is
    nearest.  A peak on
    a site the presence test dropped (a thin edge column) is not off the lattice and stays
    out; so does a lone noise peak.  A kept site goes when it has no peak of its own within
    0.3 × ``dmin`` and one of these columns is within 0.75 × ``dmin`` (between the small
    crystal's columns).  Placement is not blocked elsewhere: blocking every site farther than
    a cell from a grain's indexed peaks cost StatSTEM's Pb particle 0.81 → 0.64 of its
    columns (0.817 with this rule, as before; 1.0 × ``dmin`` instead of 0.75: 0.776).
    """
    from scipy.cluster.hierarchy import fcluster, linkage

    if len(peaks) < 3 or len(sites) == 0:
        return out, 0
    t_sites, t_own = cKDTree(sites), cKDTree(own)

    def unexplained(p: np.ndarray) -> np.ndarray:
        # on a site within 0.15 dmin, or within 0.3 dmin and a cell of the indexed peaks (a
        # dense cell has a site within 0.3 dmin of many points of a turned crystal)
        d = t_sites.query(p)[0]
        return (d > 0.3 * dmin) | ((d > 0.15 * dmin) & (t_own.query(p)[0] > reach))

    off = unexplained(peaks)
    if off.sum() < 3:
        return out, 0
    xy_off = peaks[off]
    lab = fcluster(linkage(xy_off, "single"), 1.3 * spacing, "distance")
    counts = np.bincount(lab)
    free = xy_off[counts[lab] >= 3]
    if len(free) == 0:
        return out, 0
    n_coarse = len(free)
    if fine_peaks is not None:
        fp = fine_peaks()
        if len(fp):
            t_free = cKDTree(free)
            near = t_free.query(fp)[0] < spacing
            new = t_free.query(fp)[0] > 0.5 * dmin
            free = np.vstack([free, fp[near & new & unexplained(fp)]])
    # a kept site without a peak of its own (within 0.3 dmin) and a free column within
    # 0.75 dmin lies in the small crystal, between its columns
    is_free = np.zeros(len(peaks), bool)
    is_free[np.flatnonzero(off)[counts[lab] >= 3]] = True
    kxy = out[["x_A", "y_A"]].to_numpy()
    own_peaks = peaks[~is_free]
    supported = (
        cKDTree(own_peaks).query(kxy)[0] <= 0.3 * dmin
        if len(own_peaks)
        else np.zeros(len(kxy), bool)
    )
    drop = ~supported & (cKDTree(free).query(kxy)[0] < 0.75 * dmin)
    pxy = (free - np.asarray(img.origin_A)) / img.pixel_size_A
    con = ndimage.map_coordinates(sm, [pxy[:, 1], pxy[:, 0]], order=1) - bg
    kept = out[~drop]
    med = {
        t: float(np.median(kept.loc[kept["type"] == t, "contrast"]))
        for t in types
        if (kept["type"] == t).any()
    }
    names = list(med)
    level = np.array([med[t] for t in names])
    # on the crystal's own intensity scale: its coarse peaks (the upper half of them) are
    # its reference columns (a 15 Å crystal beside a 40 Å one is 1/3 as bright: every
    # column typed one class too dim on the big crystal's scale)
    ref_t = ref if ref in med else names[int(np.argmax(level))]
    c0 = con[:n_coarse]
    c0 = c0[c0 >= np.median(c0)]
    if c0.size and np.median(c0) > 0 and med[ref_t] > 0:
        level = level * (float(np.median(c0)) / med[ref_t])
    typ = np.array(names, dtype=object)[np.argmin(np.abs(con[:, None] - level[None]), axis=1)]
    extra = pd.DataFrame(
        {
            "x_A": free[:, 0],
            "y_A": free[:, 1],
            "type": typ,
            "h": 0,
            "k": 0,
            "site": -1,
            "contrast": con,
            "grain": -1,
        }
    )
    res = pd.concat([kept, extra], ignore_index=True)
    res.attrs = dict(out.attrs)
    return res, len(free)


def _lattice_fits(
    xyb: np.ndarray,
    cell: ProjectedCell,
    ref_uv: np.ndarray,
    dmin_ref: float,
    o0: np.ndarray,
    own_uv: np.ndarray | None = None,
) -> tuple[ProjectedCell, list] | None:
    """Lattice fits of the cell to reference peaks ``xyb`` grown from ``o0``.

    ``ref_uv`` are the sites the peaks may sample; ``own_uv`` (default ``ref_uv``) those of
    the reference type alone when ``ref_uv`` adds alias sites (:func:`find_columns`).

    Returns the cell at the image's scale and the fits ``(n_indexed, org, vec, hk)`` that
    index at least 0.9 of the best one, or None when no peak pairs match the cell.
    """
    # the lattice in the image may be a few % off the cell (pixel size calibration, cell
    # parameter of another phase, thermal expansion): measure its scale first, then match
    # rotations and fit with the cell at that scale
    cell0 = cell
    if own_uv is None or len(own_uv) >= len(ref_uv):
        cell, scale = _scaled_cell(cell0, ref_uv, xyb)
    else:
        # peaks of the reference and alias sublattices together (Pb and Cs–Br in [011]):
        # counted on the pair lengths of the union, a lattice 1.36 × larger and turned 90°
        # matches better when only one sublattice gives peaks (Cs–Br at x = 0.5); on the
        # reference's alone, the 1.22 × larger centred lattice when both do.  The scale is
        # the one whose union explains the largest share of the peak pairs within its
        # reach (:func:`_explained_scale`).  It was taken only when the two counts
        # disagreed; below ~10³ e⁻/Å² both counts chose the √1.5 = 1.22 × larger
        # rectangle of the union (the [011] cell's shape turned 55°: its 5.08, 7.19 and
        # 8.8 Å pair lengths are union lengths, and a count grows with the longer pairs a
        # larger scale takes in), indexing a third of the columns
        scale = _explained_scale(xyb, ref_uv, cell0)
        cell = ProjectedCell(
            cell0.a_A * scale,
            cell0.b_A * scale,
            cell0.angle_deg,
            cell0.sites,
            cell0.c_A,
            cell0.name,
        )
    reach = 1.3 * max(cell.a_A, cell.b_A)
    expected = _sublattice_vectors(ref_uv, reach, cell)
    pairs = cKDTree(xyb).query_pairs(reach, output_type="ndarray")
    dv = xyb[pairs[:, 1]] - xyb[pairs[:, 0]] if len(pairs) else np.zeros((0, 2))
    tol = 0.12 * dmin_ref * scale
    # neighbour vectors of this orientation within tol_on: 0.6·tol (a lattice between two
    # crystals 12° apart matches both within tol) unless the peak positions are noisier
    # (σ from the second difference r_j + r_k − 2 r_i of opposite neighbours, which does
    # not depend on the orientation: Var = 6σ² per axis, median of χ²₂ = 2 ln 2)
    tol_on = 0.6 * tol
    if len(pairs):
        tree = cKDTree(xyb)
        src = np.concatenate([pairs[:, 0], pairs[:, 1]])
        dst = np.concatenate([pairs[:, 1], pairs[:, 0]])
        d2, _ = tree.query(2.0 * xyb[src] - xyb[dst], distance_upper_bound=tol)
        d2 = d2[np.isfinite(d2)]
        if d2.size >= 10:
            sig = float(np.sqrt(np.median(d2**2) / (6.0 * 2.0 * np.log(2.0))))
            tol_on = float(np.clip(3.0 * np.sqrt(2.0) * sig, 0.6 * tol, tol))
    fits: list = []
    for hand in (1.0, -1.0):
        for rot in _rotation_candidates(dv, expected, cell, hand, tol):
            v = cell.vectors(rot)
            v[1] *= hand
            same = _same_lattice(fits, v)
            if same is None:
                same = fit_lattice_vectors(xyb, v, o0)
                # a growth that indexed many peaks with no neighbour along this orientation
                # stepped into a touching crystal (a prediction within 0.25 cell of one of
                # its columns), and the least-squares refit gave one lattice between the
                # two that indexes both (two 40 Å crystals touching, 20° apart: one grain at
                # 8.6°, recall 0.63-0.72): when such a peak is off the fitted lattice, grow
                # again over the oriented peaks only (an unmatched peak on the lattice, a
                # noisy one at 10² e⁻/Å², keeps the plain growth)
                on = _oriented(xyb, pairs, dv, expected @ v, tol_on)
                org, vec, hk = same
                off = (hk[:, 0] != _NONE) & ~on
                miss = np.linalg.norm(xyb[off] - org - hk[off] @ vec, axis=1)
                if np.any(miss > tol):
                    org, vec, hk_on = fit_lattice_vectors(xyb[on], v, o0)
                    hk = np.full((len(xyb), 2), _NONE, dtype=np.int64)
                    hk[on] = hk_on
                    same = (org, vec, hk)
            org, vec, hk = same
            fits.append((int(np.sum(hk[:, 0] != _NONE)), org, vec, hk))
    if not fits or max(f[0] for f in fits) < 2:
        return None
    best_n = max(f[0] for f in fits)
    return cell, [f for f in fits if f[0] >= 0.9 * best_n]


def _oriented(
    xy: np.ndarray, pairs: np.ndarray, dv: np.ndarray, expected_A: np.ndarray, tol: float
) -> np.ndarray:
    """Points with a neighbour at one of the ``expected_A`` vectors (within ``tol``, Å):
    the points of a crystal in this orientation (a column of a crystal turned 8° more has
    none but by chance, ~2 % per neighbour at tol = 0.4 Å)."""
    if len(pairs) == 0:
        return np.zeros(len(xy), bool)
    d, _ = cKDTree(expected_A).query(dv, distance_upper_bound=tol)
    m = np.isfinite(d)
    # at least one neighbour at a lattice vector of this orientation
    n_match = np.zeros(len(xy))
    np.add.at(n_match, pairs[m, 0], 1.0)
    np.add.at(n_match, pairs[m, 1], 1.0)
    return n_match >= 1


def _find_grains(
    xyb: np.ndarray,
    cell: ProjectedCell,
    ref: str,
    ref_uv: np.ndarray,
    dmin_ref: float,
    own_uv: np.ndarray | None = None,
) -> list[dict]:
    """Crystal grains of the field: one lattice fit after another on the reference peaks.

    The first lattice grows from the peak nearest the centre of the peaks.  Peaks on a
    site of the grain's lattice within a cell of its indexed peaks belong to it (its other
    sublattices, reference columns the growth did not reach); if at least
    ``MIN_GRAIN_PEAKS`` peaks are left, a
    lattice is grown from the left peak with the most neighbours at the reference spacing
    (another crystal in the field, or one turned on its support), up to ``MAX_GRAINS``.

    Returns dicts ``cell`` (at the grain's scale), ``fits`` (for :func:`_place_grain`),
    ``pts`` (the peaks the fits index) and ``own`` (indices into ``xyb`` of the grain's
    indexed peaks), largest first.
    """
    centre = xyb.mean(axis=0)
    o0 = xyb[np.argmin(np.linalg.norm(xyb - centre, axis=1))]
    first = _lattice_fits(xyb, cell, ref_uv, dmin_ref, o0, own_uv)
    n_first = 0 if first is None else max(f[0] for f in first[1])
    if n_first < MIN_GRAIN_PEAKS <= len(xyb):
        # the centre peak is off the lattice (a Br peak beside a dim Cd-rich Pb column in
        # Cd-alloyed [011]: one peak indexed, "no peak pairs match"): grow from the peak
        # with the most neighbours at the reference spacing instead
        n_near = cKDTree(xyb).query_ball_point(xyb, 1.15 * dmin_ref, return_length=True)
        o1 = xyb[int(np.argmax(n_near))]
        second = _lattice_fits(xyb, cell, ref_uv, dmin_ref, o1, own_uv)
        if second is not None and max(f[0] for f in second[1]) > n_first:
            first = second
    if first is None:
        zone = _zone_of(cell)
        other = (
            " (the zone axis: for CsPbBr3 seen along "
            + " or ".join(f"{z} use --cell {_ZONES[z][0]}" for z in _ZONES[zone][2])
            + ")"
            if zone is not None
            else ""
        )
        raise DataError(
            f"could not fit the cell lattice: no peak pairs match the {ref!r} sublattice of the "
            f"cell (a = {cell.a_A:.3f} Å, b = {cell.b_A:.3f} Å; found {len(xyb)} reference "
            f"peaks); check the pixel size and the cell{other}"
        )
    grains: list[dict] = []
    free = np.ones(len(xyb), bool)
    idx = np.arange(len(xyb))
    res = first
    while res is not None:
        cell_g, fits = res
        best = max(fits, key=lambda f: f[0])
        own = idx[best[3][:, 0] != _NONE]
        if grains and len(own) < MIN_GRAIN_PEAKS:
            break
        same = next(
            (
                g
                for g in grains
                if _continues(
                    g,
                    best,
                    xyb[own],
                    ref_uv,
                    0.2 * dmin_ref * g["cell"].a_A / cell.a_A,
                )
            ),
            None,
        )
        if same is None:
            same = {"cell": cell_g, "fits": fits, "best": best, "own": own, "pts": xyb[idx]}
            grains.append(same)
        else:
            # columns of a known grain the growth did not reach (a distorted or cut
            # lattice): they widen its region, its lattice places their sites
            same["own"] = np.union1d(same["own"], own)
            free[own] = False
        free &= ~_on_grain(xyb, xyb[same["own"]], same["best"], same["cell"], ref_uv)
        if len(grains) >= MAX_GRAINS or free.sum() < MIN_GRAIN_PEAKS:
            break
        idx = np.flatnonzero(free)
        sub = xyb[idx]
        spacing = dmin_ref * cell_g.a_A / cell.a_A
        n_near = cKDTree(sub).query_ball_point(sub, 1.15 * spacing, return_length=True)
        res = _lattice_fits(sub, cell, ref_uv, dmin_ref, sub[int(np.argmax(n_near))], own_uv)
    grains.sort(key=lambda g: -len(g["own"]))
    return grains


def _continues(grain: dict, fit: tuple, pts: np.ndarray, ref_uv: np.ndarray, tol_A: float) -> bool:
    """Whether a new lattice fit is ``grain``'s lattice: the same vectors up to an integer
    relabelling and its points (median) within ``tol_A`` of the grain's reference sites (a
    separate crystal in the same orientation sits at another offset)."""
    _, org, vec, _ = grain["best"]
    m = fit[2] @ np.linalg.inv(vec)
    u = np.round(m)
    if np.abs(m - u).max() > 0.05 or abs(round(float(np.linalg.det(u)))) != 1:
        return False
    offsets = np.unique(np.round((ref_uv[:, None, :] - ref_uv[None]).reshape(-1, 2), 6), axis=0)
    frac = (pts - org) @ np.linalg.inv(vec)
    d = np.full(len(pts), np.inf)
    for o in offsets:
        r = frac - o
        d = np.minimum(d, np.linalg.norm((r - np.round(r)) @ vec, axis=1))
    return float(np.median(d)) <= tol_A


def _on_grain(
    xy: np.ndarray, own: np.ndarray, fit: tuple, cell: ProjectedCell, ref_uv: np.ndarray
) -> np.ndarray:
    """Points within 0.25 × the closest site distance of a site of the grain's lattice
    (any site, the origin being any reference site) and within one cell of its peaks."""
    _, org, vec, _ = fit
    sites = cell.sites[["u", "v"]].to_numpy(float)
    offsets = np.unique(np.round((sites[:, None, :] - ref_uv[None]).reshape(-1, 2), 6), axis=0)
    frac = (xy - org) @ np.linalg.inv(vec)
    near = np.zeros(len(xy), bool)
    tol = 0.25 * cell.min_distance_A()
    for o in offsets:
        r = frac - o
        d = np.linalg.norm((r - np.round(r)) @ vec, axis=1)
        near |= d <= tol
    d_own, _ = cKDTree(own).query(xy)
    return near & (d_own <= max(cell.a_A, cell.b_A))


def _place_grain(
    fits: list,
    pts: np.ndarray,
    cell: ProjectedCell,
    ref: str,
    ref_uv: np.ndarray,
    img: Image,
    shape: tuple[int, int],
    sm: np.ndarray,
    bg: float,
    region: Any = None,
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame, np.ndarray]:
    """The placement of the cell's sites on one grain's lattice that the image supports.

    The fitted origin is *a* reference column: which reference site of the cell it is, and
    the handedness, are chosen by the contrast at the other sites (a sublattice with a
    smaller period than the cell, or a mirror-symmetric one, cannot tell them apart).

    The peaks may also be another sublattice of the same shape (:func:`_alias_types`): in
    CsCd_xPb_(1-x)Br_3 [011] the Pb columns are dimmer than the Cs–Br columns from
    x ≈ 0.3 on, and the brightest peaks are the Cs–Br sublattice.  The placement with the
    fitted origin on such a site replaces the reference one when the summed mean contrast
    of *all* types beats it by ``ALIAS_MARGIN``: that sum leaves out the contrast at the
    cell's empty position ((½, ½) in [011]), so the geometry (the one position without a
    column) decides, not which column is the brightest.  Cells without such an alias
    ([001]) keep the reference (brightest) assignment.  ``pts`` are the reference peaks the fits
    index; ``region(xy) -> bool`` limits the sites to the grain.  Returns ``org`` (a
    reference site of the placement), ``vec`` and the candidate sites with their local
    contrast.
    """
    others = [t for t in cell.types if t != ref]

    def total(cand: pd.DataFrame, con: np.ndarray, types: list) -> float:
        ty = cand["type"].to_numpy()
        return sum(float(np.mean(con[ty == t])) for t in types if (ty == t).any())

    def candidates(s0_list: np.ndarray):
        for _, org, vec, hk in fits:
            field = _residual_field(pts, hk, org, vec)
            for s0 in s0_list:
                cand, pxy = _place_sites(cell, org, vec, s0, img, shape, field)
                if region is not None:
                    inside = region(cand[["x_A", "y_A"]].to_numpy())
                    cand, pxy = cand[inside].reset_index(drop=True), pxy[inside]
                con = ndimage.map_coordinates(sm, [pxy[:, 1], pxy[:, 0]], order=1) - bg
                # the fitted origin ``org`` is site s0: the reference site of this placement
                org_ref = org + (ref_uv[0] - s0) @ vec
                yield org_ref, vec, cand, con

    best = None
    for org, vec, cand, con in candidates(np.unique(np.round(ref_uv, 6), axis=0)):
        score = total(cand, con, others)
        ang = abs(float(np.degrees(np.arctan2(vec[0, 1], vec[0, 0]))))
        # equivalent placements (within 2 % of the contrast) tie: a nearest to +x
        if (
            best is None
            or score > best[0] + 0.02 * abs(best[0]) + 1e-12
            or (score >= best[0] - 0.02 * abs(best[0]) and ang < best[1] - 1e-6)
        ):
            best = (score, ang, org, vec, cand, con)
    _, _, org, vec, cand, con = best
    alias = _alias_types(cell, ref)
    if alias:
        best_total = total(cand, con, cell.types)
        s_alias = cell.sites.loc[cell.sites["type"].isin(alias), ["u", "v"]].to_numpy(float)
        for o2, v2, c2, k2 in candidates(np.unique(np.round(s_alias, 6), axis=0)):
            t2 = total(c2, k2, cell.types)
            # a clearly larger sum: the cell's empty position left out
            if t2 > (1.0 + ALIAS_MARGIN) * best_total + 1e-12:
                best_total, org, vec, cand, con = t2, o2, v2, c2, k2
    return org, vec, cand, con


def _type_distance(cell: ProjectedCell, t1: str, t2: str) -> float:
    """Shortest projected distance between a column of type ``t1`` and one of ``t2``, Å."""
    s = cell.sites
    uv1 = s.loc[s["type"] == t1, ["u", "v"]].to_numpy(float)
    uv2 = s.loc[s["type"] == t2, ["u", "v"]].to_numpy(float)
    shifts = np.array([(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1)], dtype=float)
    d = (uv2[None, :, None, :] - uv1[:, None, None, :]) + shifts[None, None]
    return float(np.linalg.norm(d.reshape(-1, 2) @ cell.vectors(), axis=1).min())


def _alias_types(cell: ProjectedCell, ref: str) -> list[str]:
    """Other column types whose sublattice is a translate of the reference one, when that
    translation does not map the cell's columns onto themselves.

    Peaks of such a type fit the reference lattice as well (Cs–Br and Br in [011]), and the
    geometry tells the two assignments apart: the translate moves the cell's empty position
    (½, ½) of [011] onto a column.  Cs and Pb–Br in [001] are not aliases: the translation
    (½, ½) maps the four columns of the cell onto each other, and only the brightness (the
    reference type is the brightest) can tell them apart.
    """
    s = cell.sites
    uv_all = s[["u", "v"]].to_numpy(float)

    def same_set(p: np.ndarray, q: np.ndarray) -> bool:
        if len(p) != len(q):
            return False
        d = p[:, None, :] - q[None, :, :]
        m = np.all(np.abs(d - np.round(d)) < 1e-6, axis=2)
        return bool(m.any(axis=1).all() and m.any(axis=0).all())

    ref_uv = s.loc[s["type"] == ref, ["u", "v"]].to_numpy(float)
    out = []
    for t in cell.types:
        if t == ref:
            continue
        uv = s.loc[s["type"] == t, ["u", "v"]].to_numpy(float)
        for i in range(len(uv)):
            shift = uv[i] - ref_uv[0]
            if same_set(ref_uv + shift, uv) and not same_set(uv_all + shift, uv_all):
                out.append(t)
                break
    return out


def _present_sites(
    cand: pd.DataFrame, con: np.ndarray, types: list, presence_fraction: float, floor: float
) -> np.ndarray:
    """Sites whose contrast reaches ``presence_fraction`` of their type's populated sites."""
    keep = np.zeros(len(cand), bool)
    for t in types:
        m = (cand["type"] == t).to_numpy()
        c = con[m]
        if c.size == 0:
            continue
        top = c[c >= 0.5 * np.quantile(c, 0.98)]  # the populated sites of this type
        typical = float(np.median(top))
        keep[m] = c > max(presence_fraction * typical, floor)
    return keep
