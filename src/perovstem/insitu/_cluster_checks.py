"""Acceptance checks of cluster candidates in :func:`perovstem.insitu.detect_clusters`.

Crystal pieces in the vacuum (step 4c of :mod:`perovstem.insitu.clusters`)
--------------------------------------------------------------------------
A degrading crystal breaks up: pieces of the host smaller than the background element
(32 Å) are left in the vacuum, the opening does not see them, and they reach the
detection threshold on the plateau excess ``E``.  Where the frame has no host reference
(the crystal is gone or covered) every segment reads Pb-like, so the host-free map ``D``
does not flag them either (KMC tuning series 41–46 and 51–54: 4 of the 35 false
detections; held-out series 61–68: 9 of 22).  Such a piece still shows the host's column
pattern: Pb–Br, Cs and Br columns on the 5.9 Å cell, i.e. fringes at the first host
reflections {100} (5.9 Å) and {110} (4.2 Å), whatever its composition.  A Pb⁰ cluster is
fcc Pb (2.48 Å columns along [001], d₁₁₁ = 2.86 Å): its own image has little power at
those reflections (only the leakage of its compact envelope).

The *fringe contrast* of a disc is the amplitude of the frame at the four first host
reflections relative to its mean, ``L = sqrt(Σ_g |Σ_disc I(r) e^{-2πi g·r}|²) / Σ_disc I``
(a local Fourier coefficient, as in geometric-phase analysis, Hÿtch et al.,
Ultramicroscopy 74, 131 (1998), but without its phase, so that it needs no reference
lattice and no host in the frame).  On the tuning series (default probe, 0.5 Å pixels)
6 Å discs of the crystal plateau read 0.70–0.84 (median per frame); in discs of the
equal-volume radius + 1 Å (≥ 4 Å) true clusters counted on ``E`` with no plateau pixel
within the disc + :data:`HOST_CONTRAST_VACUUM_GAP_A` read at most 0.37 (48, frames with a
plateau) and 0.53 (254, frames whose crystal has broken into pieces: no plateau at all,
host fragments next to clusters), the crystal pieces 0.61–0.72.  Such a detection with
``L ≥`` :data:`HOST_CONTRAST_VACUUM` is dropped.

Not tested: detections near the crystal plateau — a small cluster on a thick intact
crystal keeps most of the host's contrast (12–20-atom fcc clusters on a perfect 4 nm
crystal, fast HAADF model: 0.62–1.04, against 0.76–0.98 for the host patches of degrading
crystals, so no level separates them there) — and counts on ``D`` (they keep the fringes
of the host that was removed from them: a cluster on a crystal piece).

The contrast depends on the probe (its transfer at 4.2–5.9 Å) and on the column ratios;
:data:`HOST_CONTRAST_VACUUM` was set for the simulator's default probe (a wider probe
lowers both the pieces' and the clusters' contrast: to be re-measured for another probe).

Host patches on the crystal plateau (step 4d)
---------------------------------------------
On the plateau of a degrading crystal the false detections are patches of thicker or less
damaged host (tuning series 41–46 at 280 K: 14 of 24, median 16 atoms).  Two checks use
the frame's own host as reference rather than a fixed level: :func:`host_texture_sigma`
(the cell-to-cell variance of the excess over intact host beyond the shot noise, added to
the noise of the peak test), and :func:`host_patch_on_plateau`: a cluster dilutes the
host's fringe contrast by its share of the disc's intensity, ``L = L_h (1 − f)``, a
host patch keeps ``L_h`` (:func:`plateau_contrast` measures ``L_h`` and its spread on
the plateau away from the detections).
"""

from __future__ import annotations

import numpy as np

from perovstem._robust import robust_sd

# fringe contrast at the first host reflections above which a detection counted on the
# plain excess with no crystal plateau within its disc + HOST_CONTRAST_VACUUM_GAP_A is a
# crystal piece (tuning series: true clusters at most 0.53, crystal pieces 0.61-0.72)
HOST_CONTRAST_VACUUM = 0.6
HOST_CONTRAST_VACUUM_GAP_A = 3.0
# disc of the contrast: equal-volume radius + this margin (Å), at least HOST_CONTRAST_MIN_R_A
HOST_CONTRAST_MARGIN_A = 1.0
HOST_CONTRAST_MIN_R_A = 4.0
# host patches on the plateau: the frame's host contrast is sampled in discs of this
# radius (Å), at most HOST_PLATEAU_SAMPLES of them, at least HOST_PLATEAU_MIN_SAMPLES
HOST_PLATEAU_R_A = 6.0
HOST_PLATEAU_SAMPLES = 64
HOST_PLATEAU_MIN_SAMPLES = 5
# a detection on the plateau is a host patch when its contrast exceeds the cluster
# prediction L_h (1 - f) by this many spreads of the host's contrast (and is nearer L_h)
HOST_PATCH_SIGMA = 3.0


def host_reflections(a_px: float, angle_deg: float) -> np.ndarray:
    """The four first reflections of a square host lattice, (4, 2) as ``(gx, gy)`` in
    cycles per pixel: (10), (01), (11), (1-1) of a cell of ``a_px`` pixels whose first
    axis is at ``angle_deg`` from the x axis (the convention of
    :func:`perovstem.insitu.lattice.unit_cell_average`)."""
    t = np.radians(angle_deg)
    e1 = np.array([np.cos(t), np.sin(t)]) / a_px
    e2 = np.array([-np.sin(t), np.cos(t)]) / a_px
    return np.stack([e1, e2, e1 + e2, e1 - e2])


def host_fringe_contrast(
    frame: np.ndarray,
    x_px: np.ndarray,
    y_px: np.ndarray,
    radius_px: np.ndarray,
    *,
    a_px: float,
    angle_deg: float,
    inner_px: np.ndarray | None = None,
) -> np.ndarray:
    """Fringe contrast of the host lattice in discs (or rings) of a frame.

    Parameters
    ----------
    frame : (M, N) ndarray
        Frame in counts above the detector offset.
    x_px, y_px : ndarray
        Disc centres (column, row), pixels.
    radius_px : ndarray
        Disc radii, pixels.
    a_px : float
        Host cell (pixels).
    angle_deg : float
        Orientation of the host's first axis from the x axis, degrees.
    inner_px : ndarray, optional
        Inner radii (pixels): rings ``inner_px < r ≤ radius_px`` instead of discs.

    Returns
    -------
    ndarray
        ``L = sqrt(Σ_g |Σ_disc I e^{-2πi g·r}|²) / Σ_disc I`` over the four first host
        reflections (:func:`host_reflections`); NaN where the disc holds no positive
        intensity or lies outside the frame.
    """
    g = host_reflections(a_px, angle_deg)
    inner = -1.0 if inner_px is None else np.asarray(inner_px, float)
    x_px, y_px, radius_px, inner = np.broadcast_arrays(
        np.asarray(x_px, float), np.asarray(y_px, float), np.asarray(radius_px, float), inner
    )
    m, n = frame.shape
    out = np.full(x_px.shape, np.nan)
    pts = zip(x_px.flat, y_px.flat, radius_px.flat, inner.flat, strict=True)
    for k, (x, y, r, r0) in enumerate(pts):
        win = _window((m, n), x, y, r)
        if win is None:
            continue
        i0, i1, j0, j1 = win
        yy, xx = np.mgrid[i0:i1, j0:j1]
        rr = np.hypot(yy - y, xx - x)
        disc = (rr <= r) & (rr > r0)
        v = frame[i0:i1, j0:j1][disc]
        tot = float(v.sum())
        if not tot > 0:
            continue
        phase = np.exp(-2j * np.pi * (g[:, :1] * xx[disc][None] + g[:, 1:] * yy[disc][None]))
        amp = np.abs(phase @ v)
        out.flat[k] = float(np.sqrt(np.sum(amp**2))) / tot
    return out


def _window(shape: tuple[int, int], x: float, y: float, r: float):
    """Rows ``i0:i1`` and columns ``j0:j1`` of an image of ``shape`` that hold the disc of
    radius ``r`` px around ``(x, y)`` (column, row) with a pixel of margin; None if off
    the image."""
    h = int(np.ceil(r)) + 1
    i0, i1 = max(0, int(np.floor(y)) - h), min(shape[0], int(np.floor(y)) + h + 2)
    j0, j1 = max(0, int(np.floor(x)) - h), min(shape[1], int(np.floor(x)) + h + 2)
    return None if i0 >= i1 or j0 >= j1 else (i0, i1, j0, j1)


def near_mask(
    mask: np.ndarray, x_px: np.ndarray, y_px: np.ndarray, radius_px: np.ndarray
) -> np.ndarray:
    """Whether any True pixel of ``mask`` lies within ``radius_px`` of each point
    ``(x_px, y_px)`` (column, row)."""
    x_px, y_px, radius_px = np.broadcast_arrays(
        np.asarray(x_px, float), np.asarray(y_px, float), np.asarray(radius_px, float)
    )
    m, n = mask.shape
    out = np.zeros(x_px.shape, bool)
    for k, (x, y, r) in enumerate(zip(x_px.flat, y_px.flat, radius_px.flat, strict=True)):
        win = _window((m, n), x, y, r)
        if win is None:
            continue
        i0, i1, j0, j1 = win
        yy, xx = np.mgrid[i0:i1, j0:j1]
        sub = mask[i0:i1, j0:j1]
        out.flat[k] = bool(np.any(sub & (np.hypot(yy - y, xx - x) <= r)))
    return out


def host_texture_sigma(
    v: np.ndarray,
    noise: np.ndarray,
    crystal: np.ndarray,
    exclude: np.ndarray,
    *,
    step: int = 1,
    n_min: int = 100,
) -> float:
    """Per-pixel standard deviation of a cell-averaged map over the host beyond its
    shot noise (the host texture of a degrading crystal).

    Parameters
    ----------
    v : (M, N) ndarray
        Cell-averaged map (the plateau excess ``E`` or the host-free ``D``), counts.
    noise : (M, N) ndarray
        Its shot-noise standard deviation per pixel, counts.
    crystal, exclude : (M, N) ndarray of bool
        Host pixels; pixels left out (the segments).
    step : int
        Sampling step, pixels (the map is smooth over a quarter cell).
    n_min : int
        Fewest samples (at ``step`` 1; scaled by ``step²``) for an estimate.

    Returns
    -------
    float
        ``sqrt(max(0, s² − median(noise²)))`` with ``s`` the robust standard deviation
        (1.4826 MAD) of ``v`` over ``crystal & ~exclude``; 0 with too few samples.
    """
    sub = (slice(None, None, step), slice(None, None, step))
    ref = crystal[sub] & ~exclude[sub]
    if ref.sum() < max(16, int(np.ceil(n_min / step**2))):
        return 0.0
    vv = v[sub][ref]
    s = robust_sd(vv)
    nn = float(np.median(noise[sub][ref] ** 2))
    return float(np.sqrt(max(0.0, s * s - nn)))


def plateau_contrast(
    frame: np.ndarray,
    plateau: np.ndarray,
    *,
    radius_px: float,
    a_px: float,
    angle_deg: float,
    avoid_x_px: np.ndarray | None = None,
    avoid_y_px: np.ndarray | None = None,
    avoid_r_px: np.ndarray | None = None,
    max_samples: int = HOST_PLATEAU_SAMPLES,
    step_px: float | None = None,
) -> tuple[float, float, int]:
    """Fringe contrast of the frame's own host: median and robust spread (1.4826 MAD) of
    :func:`host_fringe_contrast` in discs of ``radius_px`` on a grid of spacing
    2 ``radius_px`` whose centre and four points at ± ``radius_px`` along x and y lie on
    the ``plateau`` and that do not overlap the discs ``avoid_*`` (the detections: the
    segments of a degrading crystal can cover most of its plateau), at most
    ``max_samples`` of them evenly spread (``step_px``: another grid spacing, pixels;
    overlapping discs where it is below 2 ``radius_px``).  Returns ``(median, spread, samples)``; NaN with fewer than
    :data:`HOST_PLATEAU_MIN_SAMPLES` samples."""
    m, n = plateau.shape
    r = float(radius_px)
    ri = int(np.ceil(r))
    st = max(1, int(round(2 * r if step_px is None else step_px)))
    gy, gx = np.mgrid[ri : m - ri : st, ri : n - ri : st]
    gy, gx = gy.ravel(), gx.ravel()
    ok = np.ones(gy.shape, bool)
    for dy, dx in ((0, 0), (ri, 0), (-ri, 0), (0, ri), (0, -ri)):
        ok &= plateau[gy + dy, gx + dx]
    gy, gx = gy[ok], gx[ok]
    if avoid_x_px is not None and len(gy) and len(avoid_x_px):
        d = np.hypot(gy[:, None] - np.asarray(avoid_y_px, float)[None],
                     gx[:, None] - np.asarray(avoid_x_px, float)[None])  # fmt: skip
        far = np.all(d > r + np.asarray(avoid_r_px, float)[None], axis=1)
        gy, gx = gy[far], gx[far]
    if len(gy) < HOST_PLATEAU_MIN_SAMPLES:
        return np.nan, np.nan, len(gy)
    if len(gy) > max_samples:
        pick = np.linspace(0, len(gy) - 1, max_samples).round().astype(int)
        gy, gx = gy[pick], gx[pick]
    lc = host_fringe_contrast(frame, gx, gy, r, a_px=a_px, angle_deg=angle_deg)
    lc = lc[np.isfinite(lc)]
    if len(lc) < HOST_PLATEAU_MIN_SAMPLES:
        return np.nan, np.nan, len(lc)
    med = float(np.median(lc))
    return med, robust_sd(lc, med), len(lc)


def host_patch_on_plateau(
    contrast: np.ndarray,
    excess_share: np.ndarray,
    host_contrast: float,
    host_spread: float,
) -> np.ndarray:
    """Whether detections on the crystal plateau are host patches, from their fringe
    contrast (module notes, "Host patches on the crystal").

    A Pb cluster adds intensity without host fringes: a disc whose excess is the share
    ``f`` of its intensity reads ``L_c = L_h (1 − f)`` (``L_h`` the host's contrast); a
    patch of thicker or less damaged host reads ``L_h``.  True where the cluster
    hypothesis is rejected at :data:`HOST_PATCH_SIGMA` × ``host_spread`` (``L − L_c >``
    that) and ``L`` is nearer ``L_h`` than ``L_c``."""
    lc_ = host_contrast * (1.0 - np.clip(excess_share, 0.0, 1.0))
    lv = np.asarray(contrast, float)
    out = (lv - lc_ > HOST_PATCH_SIGMA * host_spread) & (
        np.abs(lv - host_contrast) < np.abs(lv - lc_)
    )
    return out & np.isfinite(lv)


def disc_sums(
    frame: np.ndarray, x_px: np.ndarray, y_px: np.ndarray, radius_px: np.ndarray
) -> np.ndarray:
    """Sum of ``frame`` in discs of ``radius_px`` around ``(x_px, y_px)`` (column, row);
    NaN off the frame."""
    x_px, y_px, radius_px = np.broadcast_arrays(
        np.asarray(x_px, float), np.asarray(y_px, float), np.asarray(radius_px, float)
    )
    out = np.full(x_px.shape, np.nan)
    for k, (x, y, r) in enumerate(zip(x_px.flat, y_px.flat, radius_px.flat, strict=True)):
        win = _window(frame.shape, x, y, r)
        if win is None:
            continue
        i0, i1, j0, j1 = win
        yy, xx = np.ogrid[i0:i1, j0:j1]
        out.flat[k] = float(frame[i0:i1, j0:j1][np.hypot(yy - y, xx - x) <= r].sum())
    return out
