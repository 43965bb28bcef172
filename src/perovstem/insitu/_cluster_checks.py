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
"""

from __future__ import annotations

import numpy as np

# fringe contrast at the first host reflections above which a detection counted on the
# plain excess with no crystal plateau within its disc + HOST_CONTRAST_VACUUM_GAP_A is a
# crystal piece (tuning series: true clusters at most 0.53, crystal pieces 0.61-0.72)
HOST_CONTRAST_VACUUM = 0.6
HOST_CONTRAST_VACUUM_GAP_A = 3.0
# disc of the contrast: equal-volume radius + this margin (Å), at least HOST_CONTRAST_MIN_R_A
HOST_CONTRAST_MARGIN_A = 1.0
HOST_CONTRAST_MIN_R_A = 4.0


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
