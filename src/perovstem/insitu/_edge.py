"""Crystal-edge handling of :func:`perovstem.insitu.detect_clusters`.

Host contrast of a crowded or small plateau
-------------------------------------------
The host-patch test on the crystal plateau (step 4d of :mod:`perovstem.insitu.clusters`)
compares a detection's fringe contrast with the frame's own host contrast ``L_h``,
sampled in 6 Å discs on a grid of one disc diameter whose discs lie on the plateau and
clear of every detection (:func:`perovstem.insitu._cluster_checks.plateau_contrast`).
On a small or degrading crystal whose plateau is covered by detections that grid leaves
fewer than :data:`~perovstem.insitu._cluster_checks.HOST_PLATEAU_MIN_SAMPLES` discs,
``L_h`` is undefined and the test is skipped for the whole frame: the remnants of thicker
host at the crystal edge then pass (KMC tuning series 51–54: 5 of the 7 false detections,
all within 7 Å of the crystal edge, in frames without a reference).  The same discs on
a grid of half that spacing (neighbouring discs overlap by half, so the samples are not
independent, but their median and spread still describe the host's contrast) find a
reference in most of those frames; the test is unchanged where the sparse grid already
has one.  The overlapping discs hold about a quarter as many independent samples, so
their spread is a rough estimate: it is doubled (:data:`DENSE_SPREAD_FACTOR`; with the
spread as measured, 280 K series lost as many true clusters as false ones were removed:
KMC seeds 311–318, AVX2 mode, tp / fp 660 / 24 → 654 / 20; doubled on tune and tune280
only, where a true cluster at 3.9 or 6.7 spreads was lost and the remnants lay at 3.3–15).
"""

from __future__ import annotations

import numpy as np

from perovstem.insitu import _cluster_checks as cc

# the spread of a reference from the grid of one disc radius is multiplied by this factor:
# neighbouring discs overlap by half, so its n samples hold about n/4 independent ones
# and their spread is a rougher estimate (module notes)
DENSE_SPREAD_FACTOR = 2.0


def host_contrast_reference(
    frame: np.ndarray,
    plateau: np.ndarray,
    *,
    radius_px: float,
    a_px: float,
    angle_deg: float,
    avoid_x_px: np.ndarray,
    avoid_y_px: np.ndarray,
    avoid_r_px: np.ndarray,
) -> tuple[float, float, int]:
    """The frame's host fringe contrast ``(median, spread, samples)`` for the host-patch
    test: :func:`perovstem.insitu._cluster_checks.plateau_contrast` on its grid of one
    disc diameter, else (fewer than
    :data:`~perovstem.insitu._cluster_checks.HOST_PLATEAU_MIN_SAMPLES` discs) on a grid
    of one disc radius (module notes).

    Parameters
    ----------
    frame : (M, N) ndarray
        Frame in counts above the detector offset.
    plateau : (M, N) ndarray of bool
        Crystal plateau of the background map.
    radius_px : float
        Radius of the sample discs, pixels.
    a_px, angle_deg : float
        Host cell (pixels) and the orientation of its first axis (degrees from x).
    avoid_x_px, avoid_y_px, avoid_r_px : ndarray
        Discs (column, row, radius; pixels) the samples keep clear of (the detections).

    Returns
    -------
    tuple of (float, float, int)
        Median and robust spread of the contrast, number of samples; NaN, NaN where
        neither grid has enough.
    """
    kw = {
        "radius_px": radius_px,
        "a_px": a_px,
        "angle_deg": angle_deg,
        "avoid_x_px": avoid_x_px,
        "avoid_y_px": avoid_y_px,
        "avoid_r_px": avoid_r_px,
    }
    lh, sd, n = cc.plateau_contrast(frame, plateau, **kw)
    if np.isfinite(lh) or n >= cc.HOST_PLATEAU_MIN_SAMPLES:
        return lh, sd, n
    lh, sd, n = cc.plateau_contrast(frame, plateau, step_px=float(radius_px), **kw)
    return lh, DENSE_SPREAD_FACTOR * sd, n
