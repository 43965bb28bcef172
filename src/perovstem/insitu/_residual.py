"""Residual second look of the Pb-cluster detector (private; step 3d of
:mod:`perovstem.insitu.clusters`).

Crowded-field photometry finds the stars, fits and subtracts their profiles, and looks
again on the residual image for the fainter stars the bright ones hid (DAOPHOT's
find / fit / subtract / find loop, Stetson, PASP 99, 191 (1987)).  The cluster detector's
first pass loses a bright 10–40-atom cluster next to a detected neighbour 9–21 Å away in
two ways (issue #7, ``beside_detected`` misses, ``benchmarks/bench_cluster_misses.py``):
its pixels are flooded into the neighbour's watershed segment (no marker on the
neighbour's flank), or its own segment, cut short by the neighbour's, fails the
significance and size tests.  Here every kept detection is modelled by the blurred
projected sphere of step 3b (:class:`~perovstem.insitu.clusters._DomeGrid`), fitted to
its core (the disc of its radius + the aperture margin), the models are subtracted from
the map the detector counts on (the host-free excess on the crystal plateau, the plateau
excess ``E`` elsewhere), and local maxima of the smoothed residual significance within
:data:`RESIDUAL_REACH_A` of a detection and beyond its aperture are measured on the
residual (aperture photometry as step 5).  The noise of the residual is the map's own
(shot noise, floor, host texture on the plateau) plus the profile error of the
subtracted models (10 % of the model and 2 % of its peak, step 3b), so that a neighbour's
imperfect profile does not read as a cluster.  A candidate is kept under the first
pass's tests: smoothed peak significance ≥ ``threshold_sigma``, inside the hysteresis
mask, integrated count ≥ ``threshold_sigma`` × its error; the rows then pass the same
size, compactness and host-patch tests (``min_atoms``, steps 4c and 4d) as the first
pass's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from perovstem.insitu._markers import _fcc_radius_A

# a detection's neighbourhood searched on the residual, Å from its edge (the misses sit
# 9–21 Å from the neighbour's centre)
RESIDUAL_REACH_A = 25.0
# the model window reaches this far beyond the sphere's radius, Å (probe tail 3 Å, cell
# average: the model is < 1e-3 of its peak there)
MODEL_MARGIN_A = 12.0


def _fit_core(
    fmap: np.ndarray,
    sig: np.ndarray,
    y: float,
    x: float,
    r_px: float,
    core_px: float,
    margin_px: float,
    *,
    grid_of: Any,
    radius_of: Any,
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
    """Fit one blurred sphere (centre, amplitude, probe-tail share) to the disc of
    ``core_px`` around ``(y, x)``; returns the model's window, its model and the fitted
    ``(y, x, amplitude)`` in frame pixels, or None without data."""
    from scipy.optimize import least_squares

    mm, nn = fmap.shape
    h = int(np.ceil(r_px + margin_px)) + 1
    i0, i1 = max(0, int(y) - h), min(mm, int(y) + h + 2)
    j0, j1 = max(0, int(x) - h), min(nn, int(x) + h + 2)
    if i1 - i0 < 4 or j1 - j0 < 4:
        return None
    win = (slice(i0, i1), slice(j0, j1))
    yy, xx = np.mgrid[i0:i1, j0:j1]
    use = np.hypot(yy - y, xx - x) <= core_px
    if use.sum() < 8:
        return None
    ew, sw = fmap[win], sig[win]
    target, w = ew[use], 1.0 / sw[use]
    amp0 = float(np.clip(target, 0, None).sum())
    if amp0 <= 0:
        return None
    grid = grid_of(ew.shape)

    def unpack(p):
        c = np.array([[p[0], p[1], np.exp(min(p[2], 700.0))]])
        return c, float(np.clip(p[3], 0.0, 1.0))

    def resid(p):
        c, tail = unpack(p)
        mod, _ = grid.model(c, radius_of(c[:, 2]), tail)
        return (target - mod[use]) * w

    p0 = np.array([y - i0, x - j0, np.log(amp0), 0.1])
    r = least_squares(resid, p0, method="lm", x_scale="jac", max_nfev=60)
    c, tail = unpack(r.x)
    if not np.all(np.isfinite(c)) or c[0, 2] <= 0:
        return None
    mod, _ = grid.model(c, radius_of(c[:, 2]), tail)
    c[:, 0] += i0
    c[:, 1] += j0
    return win, mod, c[0]


def residual_look(
    fmap: np.ndarray,
    sig: np.ndarray,
    on_d: np.ndarray,
    raw: np.ndarray,
    mask: np.ndarray,
    ring_ok: np.ndarray,
    det_y_px: np.ndarray,
    det_x_px: np.ndarray,
    det_n: np.ndarray,
    *,
    px: float,
    a_px: float,
    angle_deg: float,
    g: float,
    n_of: Any,
    floor: float,
    noise_scale: float,
    threshold_sigma: float,
    min_separation_A: float,
    smooth_A: float,
    aperture_A: float,
    registry: float,
) -> list[tuple]:
    """Clusters found on the residual of the detections' models (module notes).

    Parameters
    ----------
    fmap, sig : (M, N) ndarray
        Map the detector counts on (counts per pixel: the host-free excess where ``on_d``,
        the plateau excess elsewhere) and its noise per pixel (shot noise, floor, host
        texture), counts.
    on_d : (M, N) ndarray of bool
        Pixels where ``fmap`` is the host-free map (its shot noise ``noise_scale`` × that
        of the frame; counts there carry the ``registry`` share).
    raw : (M, N) ndarray
        Frame minus offset (shot noise of the counts).
    mask : (M, N) ndarray of bool
        The first pass's hysteresis mask (a candidate lies on it).
    ring_ok : (M, N) ndarray of bool
        Pixels the background annulus may use (outside every first-pass segment).
    det_y_px, det_x_px, det_n : ndarray
        Kept detections: centre (pixels) and atoms.
    px, a_px, angle_deg : float
        Pixel size (Å), lattice spacing (pixels) and angle (degrees) of the cell average.
    g : float
        Gain (counts per electron).
    n_of : callable
        Counts → atoms (with ``radius_px(counts, px)``).
    floor : float
        Noise floor per pixel of the counts, counts.
    threshold_sigma, min_separation_A, smooth_A, aperture_A : float
        As in :func:`perovstem.insitu.detect_clusters`.
    registry : float
        Relative registry error of a count on the host-free map.

    Returns
    -------
    list of tuple
        Rows ``(x_px, y_px, npx, peak_excess, integrated_counts, err_counts,
        err_stat_counts, host_fraction, host_ok)`` as the detector's.
    """
    from skimage.feature import peak_local_max

    from perovstem.insitu.clusters import (
        SPLIT_PROBE_A,
        SPLIT_PROFILE_ERR,
        SPLIT_PROFILE_FLOOR,
        SPLIT_TAIL_A,
        _DomeGrid,
    )

    det_y_px = np.asarray(det_y_px, float)
    det_x_px = np.asarray(det_x_px, float)
    if det_y_px.size == 0:
        return []
    r_det = _fcc_radius_A(np.asarray(det_n, float))
    grids: dict[tuple[int, int], _DomeGrid] = {}
    pad = int(np.ceil(a_px)) + 2

    def grid_of(shape):
        gr = grids.get(shape)
        if gr is None:
            gr = grids[shape] = _DomeGrid(
                shape, 1, pad, a_px, angle_deg, SPLIT_PROBE_A / px, SPLIT_TAIL_A / px
            )
        return gr

    def radius_of(amp):
        return n_of.radius_px(amp, px)

    model = np.zeros(fmap.shape)
    var_prof = np.zeros(fmap.shape)
    for j in range(det_y_px.size):
        fit = _fit_core(
            fmap, sig, det_y_px[j], det_x_px[j], r_det[j] / px, (r_det[j] + aperture_A) / px,
            MODEL_MARGIN_A / px, grid_of=grid_of, radius_of=radius_of,
        )  # fmt: skip
        if fit is None:
            continue
        win, mod, _ = fit
        model[win] += mod
        top = float(mod.max())
        var_prof[win] += (SPLIT_PROFILE_FLOOR * top) ** 2 * (mod > 0.01 * top)
    resid = fmap - model
    sig_r = np.sqrt(sig * sig + (SPLIT_PROFILE_ERR * model) ** 2 + var_prof)
    # the neighbourhood of the detections (their edge + the reach), beyond their apertures
    mm, nn = fmap.shape
    reach = float(np.max(r_det)) + RESIDUAL_REACH_A
    h = int(np.ceil(reach / px)) + 2
    i0 = max(0, int(det_y_px.min()) - h)
    i1 = min(mm, int(det_y_px.max()) + h + 2)
    j0 = max(0, int(det_x_px.min()) - h)
    j1 = min(nn, int(det_x_px.max()) + h + 2)
    box = (slice(i0, i1), slice(j0, j1))
    zr = ndimage.gaussian_filter(
        (resid[box] / sig_r[box]).astype(np.float32), max(1.0, smooth_A / px), truncate=3.0
    )
    md = max(1, int(round(min_separation_A / px)))
    import os
    pk = peak_local_max(zr, min_distance=md, threshold_abs=threshold_sigma, exclude_border=False)
    if os.environ.get("RL_DEBUG"):
        for xa, ya in [tuple(map(float, q.split(":"))) for q in os.environ["RL_DEBUG"].split(",") if ":" in q]:
            yi, xi = int(round(ya / px)), int(round(xa / px))
            print("at", xa, ya, "zr", round(float(zr[yi - i0, xi - j0]), 2), "f", round(float(fmap[yi, xi]), 1),
                  "mod", round(float(model[yi, xi]), 1), "sig", round(float(sig[yi, xi]), 1),
                  "sigr", round(float(sig_r[yi, xi]), 1), "ond", bool(on_d[yi, xi]), "mask", bool(mask[yi, xi]))
        print("dets", np.c_[det_x_px * px, det_y_px * px, det_n].round(1).tolist())
    if not len(pk):
        return []
    pk = pk[np.argsort(-zr[tuple(pk.T)])]
    import os
    if os.environ.get("RL_DEBUG"):
        print("peaks", [(round((p[1] + j0) * px, 1), round((p[0] + i0) * px, 1), round(float(zr[tuple(p)]), 1), bool(mask[p[0] + i0, p[1] + j0])) for p in pk])
    cy, cx = pk[:, 0] + i0, pk[:, 1] + j0
    pk = pk[mask[cy, cx]]
    cy, cx = pk[:, 0] + i0, pk[:, 1] + j0
    rows: list[tuple] = []
    taken_y: list[float] = []
    taken_x: list[float] = []
    taken_r: list[float] = []
    for y, x in zip(cy, cx, strict=True):
        d_A = np.hypot(det_y_px - y, det_x_px - x) * px
        near = d_A - r_det
        if not np.any(near <= RESIDUAL_REACH_A):
            continue
        if np.any(d_A <= np.maximum(min_separation_A, r_det + aperture_A)):
            continue
        if taken_y and np.any(
            np.hypot(np.array(taken_y) - y, np.array(taken_x) - x) * px
            <= np.maximum(min_separation_A, np.array(taken_r) + aperture_A)
        ):
            continue
        on = bool(on_d[y, x])
        scale = noise_scale if on else 1.0
        # aperture photometry on the residual: radius from a first count in R0 + margin
        r_c = float(_fcc_radius_A(np.array([10.0]))[0])  # Å: a 10-atom cluster first
        res = None
        for _ in range(2):
            res = _photometry(resid, raw, model, ring_ok, y, x, r_c + aperture_A, px=px,
                              g=g, floor=floor, a_px=a_px)  # fmt: skip
            if res is None:
                break
            cnt = res[0]
            r_c = float(_fcc_radius_A(n_of(np.array([max(cnt, 0.0)])))[0])
        if res is None:
            continue
        cnt, err_shot, n_ap, peak, m_sum, yc, xc = res
        err_stat = err_shot * scale
        err_model = SPLIT_PROFILE_ERR * m_sum
        err_test = float(np.hypot(err_stat, err_model))
        import os
        if os.environ.get("RL_DEBUG"):
            print("cand", round(x * px, 1), round(y * px, 1), "z", round(float(zr[y - i0, x - j0]), 1),
                  "cnt", round(cnt), "err", round(err_stat), round(err_model), "on_d", on, "n",
                  round(float(n_of(np.array([max(cnt, 0.0)]))[0]), 1))
        if not cnt >= threshold_sigma * err_test:
            continue
        err = float(np.hypot(err_test, registry * cnt if on else 0.0))
        rows.append((xc, yc, n_ap, peak, cnt, err, err_stat, 1.0 if on else 0.0, True))
        taken_y.append(float(y))
        taken_x.append(float(x))
        taken_r.append(r_c)
    return rows


def _photometry(
    resid: np.ndarray,
    raw: np.ndarray,
    model: np.ndarray,
    ring_ok: np.ndarray,
    y: int,
    x: int,
    r_ap_A: float,
    *,
    px: float,
    g: float,
    floor: float,
    a_px: float,
    ring_A: float = 3.0,
) -> tuple[float, float, int, float, float, float, float] | None:
    """Aperture count of the residual around ``(y, x)``: disc of ``r_ap_A`` minus the
    median of the ring ``ring_A`` beyond it (pixels of ``ring_ok``; none with < 10
    pixels); returns the count, its shot-noise error, the disc's pixels, the residual's
    peak, the subtracted models' sum in the disc and the excess-weighted centroid."""
    mm, nn = resid.shape
    h = int(np.ceil((r_ap_A + ring_A) / px)) + 1
    i0, i1 = max(0, y - h), min(mm, y + h + 2)
    j0, j1 = max(0, x - h), min(nn, x + h + 2)
    yy, xx = np.mgrid[i0:i1, j0:j1]
    d = np.hypot(yy - y, xx - x) * px
    ap = d <= r_ap_A
    n_ap = int(ap.sum())
    if n_ap == 0:
        return None
    rw = resid[i0:i1, j0:j1]
    ring = (d > r_ap_A) & (d <= r_ap_A + ring_A) & ring_ok[i0:i1, j0:j1]
    bgl, bgl_err = 0.0, 0.0
    if ring.sum() >= 10:
        v = rw[ring]
        bgl = float(np.median(v))
        bgl_err = 1.2533 * float(np.std(v)) / np.sqrt(max(1.0, v.size / a_px**2))
    cnt = float(rw[ap].sum()) - bgl * n_ap
    rr = np.clip(raw[i0:i1, j0:j1][ap], 0, None)
    err = float(np.sqrt(g * rr.sum() + floor**2 * n_ap + (bgl_err * n_ap) ** 2))
    wv = np.clip(rw[ap] - bgl, 0, None)
    if wv.sum() > 0:
        yc = float(np.average(yy[ap], weights=wv))
        xc = float(np.average(xx[ap], weights=wv))
    else:
        yc, xc = float(y), float(x)
    return cnt, err, n_ap, float(rw[ap].max()), float(model[i0:i1, j0:j1][ap].sum()), yc, xc
