"""Watershed markers and centroids of :func:`perovstem.insitu.detect_clusters` (private).

Step 3 of the module notes of :mod:`perovstem.insitu.clusters` splits the significant
pixels by a marker watershed on the smoothed significance map ``zs``.  Two things cost
the 10–20-atom clusters of 280 K series (the ``offset`` and part of the small misses of
``benchmarks/bench_clusters.py``):

* a small cluster 8–15 Å from a larger one sits on that one's flank in ``zs``: it is no
  local maximum (or is suppressed within ``min_separation_A``), gets no marker and its
  pixels (and atoms) go to the neighbour;
* a segment that follows the low-level excess of a crystal plateau (hundreds of Å²)
  puts its excess-weighted centroid between the clusters it holds.

Blob markers (:func:`blob_markers`): local maxima of the scale-normalised Laplacian of
Gaussian of the significance map (Lindeberg, IJCV 30, 79 (1998)) at the scale of the
smallest scored cluster (:data:`BLOB_ATOMS` atoms, :func:`blob_scale_A`: the projected
sphere's second moment R²/5 plus the unit-cell average's a²/12) are added where the
smoothed map is significant, and where the new marker's equal-volume disc does not
overlap (by more than :data:`BLOB_OVERLAP`) that of a marker already there and lies
beyond that marker's radius + a :data:`BLOB_ATOMS` radius: an overlap is one projected
object (a larger cluster's surface texture or end, not a neighbour); a blob marker holds
at most :data:`BLOB_MAX_ATOMS`.  In a component that received a blob marker the watershed
floods ``-zs`` minus :data:`BLOB_FLOOD_WEIGHT` × that response, so that a blob marker on
a neighbour's flank keeps the pixels of its own blob.

Centroids (:func:`refine_centroids`): the excess-weighted mean over the pixels of the
segment within :data:`CENTROID_RADIUS_A` of the current centre, started at the marker and
iterated (a mean shift with a flat kernel, Comaniciu & Meer, IEEE PAMI 24, 603 (2002)).

Constants set on the tuning series of ``bench_clusters`` (``tune280`` 41–46, ``tune``
51–54); see ``detect_clusters``' module notes for the figures.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

PB_FCC_A = 4.95
# the blob scale is matched to a cluster of this many atoms (the smallest scored one)
BLOB_ATOMS = 10.0
# threshold of the scale-normalised LoG response of the significance map (noise sigmas)
BLOB_THRESHOLD = 4.0
# blob maxima are at least this far apart and from the markers already there, Å
BLOB_MIN_SEPARATION_A = 4.0
# a blob marker is dropped when its centre is closer to another marker than this share
# of the sum of their equal-volume radii (overlapping projected discs: one object)
BLOB_OVERLAP = 0.8
# a blob marker holds at most this many atoms (a larger blob is a part of a larger
# cluster, which has its own marker)
BLOB_MAX_ATOMS = 40.0
# markers farther than this from every blob candidate are not measured (they could
# reject it only with an equal-volume radius above ~20 Å, ~20 000 atoms, far beyond the
# largest cluster the background element keeps)
MARKER_REACH_A = 20.0
# weight of the blob response in the watershed's flooding surface (-zs - w * response)
BLOB_FLOOD_WEIGHT = 3.0
# centroid: flat-kernel mean shift from the marker, a few iterations, of radius the
# segment's equal-volume radius + CENTROID_MARGIN_A, at least CENTROID_RADIUS_A (the whole
# of a large or elongated cluster, not one end of it)
CENTROID_RADIUS_A = 5.0
CENTROID_MARGIN_A = 2.0
CENTROID_ITERATIONS = 3


def _fcc_radius_A(n: np.ndarray) -> np.ndarray:
    """Equal-volume radius of a compact fcc Pb cluster of ``n`` atoms, Å."""
    return (3.0 * np.clip(n, 0, None) * PB_FCC_A**3 / (16.0 * np.pi)) ** (1.0 / 3.0)


def blob_scale_A(lattice_A: float, n_atoms: float = BLOB_ATOMS) -> float:
    """Gaussian scale (Å) matched to a compact cluster of ``n_atoms`` in the cell-averaged
    map: the projected sphere's second moment per axis, R²/5 (R the equal-volume radius),
    plus the variance of the unit-cell box average, ``lattice_A``²/12."""
    r = float(_fcc_radius_A(np.array([n_atoms]))[0])
    return float(np.sqrt(r * r / 5.0 + lattice_A**2 / 12.0))


def blob_response(
    z: np.ndarray, sigma_px: float, *, zs: np.ndarray | None = None, zs_sigma_px: float = 0.0
) -> np.ndarray:
    """Scale-normalised LoG blob response ``-σ² ∇²(G_σ * z)`` (σ in pixels), float32.

    With ``zs`` = ``G_σ₀ * z`` already at hand (σ₀ = ``zs_sigma_px`` < σ), ``G_σ * z`` is
    ``G_s * zs`` with s² = σ² − σ₀² (Gaussian semigroup): a shorter kernel."""
    s = float(sigma_px)
    if zs is not None and 0.0 < zs_sigma_px < s:
        g = ndimage.gaussian_filter(zs, np.sqrt(s * s - zs_sigma_px**2), truncate=3.0)
        return -(s * s) * ndimage.laplace(g)
    return -(s * s) * ndimage.gaussian_laplace(np.asarray(z, np.float32), s, truncate=3.0)


def disc_radius_A(
    e: np.ndarray,
    pos: np.ndarray,
    *,
    px: float,
    n_of: Callable[[np.ndarray], np.ndarray],
    iters: int = 4,
) -> np.ndarray:
    """Equal-volume radius (Å) of the excess ``e`` around each ``pos`` (row, col) pixel.

    Disc photometry: the sum of ``e`` within R + 2 Å minus the median of a 2 Å ring around
    it (R from the previous pass; a 6 Å disc at first), turned into atoms by ``n_of`` (counts →
    atoms) and into R; ``iters`` passes."""
    mm, nn = e.shape
    pos = np.asarray(pos, int).reshape(-1, 2)
    rad = np.full(len(pos), 6.0)  # disc radius of the first pass, Å
    for _ in range(iters):
        tot = np.zeros(len(pos))
        for i, (y, x) in enumerate(pos):
            rho = rad[i]
            h = int(np.ceil((rho + 2.0) / px)) + 1
            i0, i1, j0, j1 = max(0, y - h), min(mm, y + h + 1), max(0, x - h), min(nn, x + h + 1)
            yy, xx = np.ogrid[i0:i1, j0:j1]
            d = np.hypot(yy - y, xx - x) * px
            w = e[i0:i1, j0:j1]
            ring = (d > rho) & (d <= rho + 2.0)
            bg = float(np.median(w[ring])) if ring.any() else 0.0
            tot[i] = float((w[d <= rho] - bg).sum())
        rad = _fcc_radius_A(n_of(np.clip(tot, 0, None))) + 2.0
    return rad - 2.0


def blob_markers(
    response: np.ndarray,
    zs: np.ndarray,
    mask: np.ndarray,
    peaks: np.ndarray,
    *,
    e: np.ndarray,
    px: float,
    threshold_sigma: float,
    n_of: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """Watershed markers ``peaks`` (row, col) with the blob markers added (module notes).

    Local maxima of ``response`` (:func:`blob_response` of the significance map) at least
    :data:`BLOB_THRESHOLD` high and :data:`BLOB_MIN_SEPARATION_A` apart, on ``mask`` where
    the smoothed significance ``zs`` reaches ``threshold_sigma``, and that far from every
    marker in ``peaks``, are taken in decreasing response when their equal-volume disc
    (:func:`disc_radius_A` on the excess ``e``) keeps :data:`BLOB_OVERLAP` × (R₁ + R₂)
    from every marker kept so far and lies beyond that marker's radius + the radius of a
    :data:`BLOB_ATOMS` cluster.  The markers of ``peaks`` come first, unchanged."""
    from skimage.feature import peak_local_max

    peaks = np.asarray(peaks, int).reshape(-1, 2)
    md = max(1, int(round(BLOB_MIN_SEPARATION_A / px)))
    pk = peak_local_max(response, min_distance=md, threshold_abs=BLOB_THRESHOLD,
                        exclude_border=False)  # fmt: skip
    if len(pk):
        pk = pk[mask[tuple(pk.T)] & (zs[tuple(pk.T)] >= threshold_sigma)]
    if len(pk) and len(peaks):
        d = np.hypot(pk[:, None, 0] - peaks[None, :, 0], pk[:, None, 1] - peaks[None, :, 1])
        pk = pk[d.min(1) * px >= BLOB_MIN_SEPARATION_A]
    if not len(pk):
        return peaks
    pk = pk[np.argsort(-response[tuple(pk.T)], kind="stable")]
    allp = np.concatenate([peaks, pk])
    r_max = float(_fcc_radius_A(np.array([BLOB_MAX_ATOMS]))[0])
    r_min = float(_fcc_radius_A(np.array([BLOB_ATOMS]))[0])
    # radii measured when first needed (the same for every caller order): a candidate is
    # tested against the kept markers nearest first and dropped at the first overlap; a
    # marker farther than MARKER_REACH_A cannot reject it
    r = np.full(len(allp), np.nan)

    def radius(j: int) -> float:
        if np.isnan(r[j]):
            r[j] = disc_radius_A(e, allp[j : j + 1], px=px, n_of=n_of)[0]
        return float(r[j])

    acc = list(range(len(peaks)))
    for i in range(len(peaks), len(allp)):
        if radius(i) > r_max:
            continue
        d = np.hypot(allp[acc, 0] - allp[i, 0], allp[acc, 1] - allp[i, 1]) * px
        ok = True
        for j in np.argsort(d, kind="stable"):
            if d[j] >= MARKER_REACH_A:
                break
            rj = radius(acc[j])
            if d[j] < BLOB_OVERLAP * (rj + r[i]) or d[j] < rj + r_min:
                ok = False
                break
        if ok:
            acc.append(i)
    return allp[acc]


def refine_centroids(
    lab: np.ndarray,
    yy: np.ndarray,
    xx: np.ndarray,
    w: np.ndarray,
    start_y: np.ndarray,
    start_x: np.ndarray,
    *,
    radius_px: float | np.ndarray,
    iters: int = CENTROID_ITERATIONS,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted centroids of segments 1 … k from the pixels near their centre.

    ``lab`` (1-based segment of each pixel), ``yy``, ``xx`` (its row, col) and ``w`` (its
    non-negative weight) list the segment pixels; ``start_y``, ``start_x`` (k,) the start
    (the marker).  Each pass takes the weighted mean of the segment's pixels within
    ``radius_px`` (scalar or per segment) of the current centre (flat-kernel mean
    shift); a segment without
    weight there keeps its centre.  Returns (cy, cx) in the pixel frame of ``yy``/``xx``."""
    k = len(start_y)
    cy, cx = np.asarray(start_y, float).copy(), np.asarray(start_x, float).copy()
    i = lab - 1
    r2 = np.broadcast_to(np.asarray(radius_px, float) ** 2, (k,))[i]
    for _ in range(iters):
        dy, dx = yy - cy[i], xx - cx[i]
        near = dy * dy + dx * dx <= r2
        wn = np.where(near, w, 0.0)
        ws = np.bincount(i, weights=wn, minlength=k)
        ok = ws > 0
        den = np.where(ok, ws, 1.0)
        cy = np.where(ok, np.bincount(i, weights=wn * yy, minlength=k) / den, cy)
        cx = np.where(ok, np.bincount(i, weights=wn * xx, minlength=k) / den, cx)
    return cy, cx
