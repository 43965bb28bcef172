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


def _models(
    fmap: np.ndarray,
    sig: np.ndarray,
    det_y_px: np.ndarray,
    det_x_px: np.ndarray,
    r_det_A: np.ndarray,
    *,
    px: float,
    aperture_A: float,
    grid_of: Any,
    radius_of: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Sum of the detections' fitted profiles on ``fmap`` and the variance of their
    profile error beyond the 10 % of the model (2 % of each profile's peak where it is
    above 1 % of that peak)."""
    from perovstem.insitu.clusters import SPLIT_PROFILE_FLOOR

    model = np.zeros(fmap.shape)
    var_prof = np.zeros(fmap.shape)
    for j in range(det_y_px.size):
        fit = _fit_core(
            fmap, sig, det_y_px[j], det_x_px[j], r_det_A[j] / px,
            (r_det_A[j] + aperture_A) / px, MODEL_MARGIN_A / px, grid_of=grid_of,
            radius_of=radius_of,
        )  # fmt: skip
        if fit is None:
            continue
        win, mod, _ = fit
        model[win] += mod
        top = float(mod.max())
        var_prof[win] += (SPLIT_PROFILE_FLOOR * top) ** 2 * (mod > 0.01 * top)
    return model, var_prof


def _pair_stat(
    fmap: np.ndarray,
    sig: np.ndarray,
    nb: tuple[float, float, float, float],
    cand: tuple[float, float, float, float],
    *,
    px: float,
    a_px: float,
    angle_deg: float,
    aperture_A: float,
    radius_of: Any,
) -> float:
    """Likelihood-ratio statistic of two clusters (the neighbour and the candidate)
    against one (a sphere or an ellipsoid of free aspect ratio and orientation) on the
    union of their apertures: the split's test of step 3b (χ² per cell, the same
    weights: shot noise plus the profile error).  ``nb``, ``cand``: ``(y, x, radius,
    amplitude)`` in frame pixels and counts."""
    from perovstem.insitu.clusters import (
        SPLIT_PROBE_A,
        SPLIT_PROFILE_ERR,
        SPLIT_PROFILE_FLOOR,
        SPLIT_TAIL_A,
        _DomeGrid,
        _fit_domes,
        _fit_ellipse,
    )

    st = max(1, int(a_px // 4))
    pad = int(np.ceil(a_px / st)) + 2
    per_cell = (a_px / st) ** 2
    aa = 0.8 * st if st > 1 else 0.0
    blur = float(np.hypot(SPLIT_PROBE_A / px, aa))
    ap = aperture_A / px
    mm, nn = fmap.shape
    ys = np.array([nb[0], cand[0]])
    xs = np.array([nb[1], cand[1]])
    rs = np.array([nb[2], cand[2]]) + ap
    y0 = max(0, int(np.floor((ys - rs).min())) - st)
    y1 = min(mm, int(np.ceil((ys + rs).max())) + st + 1)
    x0 = max(0, int(np.floor((xs - rs).min())) - st)
    x1 = min(nn, int(np.ceil((xs + rs).max())) + st + 1)
    ew = fmap[y0:y1, x0:x1]
    if aa > 0:
        ew = ndimage.gaussian_filter1d(ew, aa, axis=0, mode="nearest")[::st]
        ew = ndimage.gaussian_filter1d(ew, aa, axis=1, mode="nearest")[:, ::st]
    else:
        ew = ew.copy()
    sw = sig[y0:y1, x0:x1][::st, ::st]
    gy, gx = np.mgrid[0 : y1 - y0 : st, 0 : x1 - x0 : st]
    use = np.zeros(ew.shape, bool)
    for k in range(2):
        use |= np.hypot(gy - (ys[k] - y0), gx - (xs[k] - x0)) <= rs[k]
    if use.sum() < 12:
        return 0.0
    top = float(np.max(np.abs(ew[use])))
    sw = np.sqrt(sw**2 + (SPLIT_PROFILE_ERR * ew) ** 2 + (SPLIT_PROFILE_FLOOR * top) ** 2)
    grid = _DomeGrid(ew.shape, st, pad, a_px, angle_deg, blur, SPLIT_TAIL_A / px)
    one = np.array([[nb[0] - y0, nb[1] - x0, nb[3] + cand[3]]])
    chi1, c1 = _fit_domes(ew, sw, use, one, radius_of, grid)
    two = np.array([[nb[0] - y0, nb[1] - x0, nb[3]], [cand[0] - y0, cand[1] - x0, cand[3]]])
    box = np.array([[0.0, y1 - y0 - 1.0], [0.0, x1 - x0 - 1.0]])
    chi2, c2 = _fit_domes(ew, sw, use, two, radius_of, grid, box=box)
    if np.any(c2[:, 2] <= 0):
        return 0.0
    # the candidate's sphere stays at the candidate (not a second model of the neighbour)
    if np.hypot(c2[1, 0] - (cand[0] - y0), c2[1, 1] - (cand[1] - x0)) > max(cand[2], 2.0 / px):
        return 0.0
    th = float(np.arctan2(cand[0] - nb[0], cand[1] - nb[1]))
    chi_e = _fit_ellipse(ew, sw, use, np.r_[c1[0], th], radius_of, grid)
    return float((min(chi1, chi_e) - chi2) / per_cell)


def residual_look(
    e: np.ndarray,
    sig_e: np.ndarray,
    d: np.ndarray | None,
    sig_d: np.ndarray | None,
    on_d: np.ndarray,
    texture: np.ndarray,
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
    plateau_only: bool = True,
    pair_penalty: float | None = None,
) -> list[tuple]:
    """Clusters found on the residual of the detections' models (module notes).

    Parameters
    ----------
    e, sig_e : (M, N) ndarray
        Plateau excess ``E`` and its noise per pixel (shot noise, floor), counts.
    d, sig_d : (M, N) ndarray or None
        Host-free excess (valid where ``on_d``) and its noise, counts.
    on_d : (M, N) ndarray of bool
        Crystal-plateau pixels with a host-free map (there the host switch of step 4
        decides the map a candidate is counted on).
    texture : (M, N) ndarray
        Host texture of ``E`` per pixel (0 off the plateau), for the peak test (step 4d).
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
    noise_scale : float
        Shot noise of a count on ``d`` relative to one on ``e``.
    threshold_sigma, min_separation_A, smooth_A, aperture_A : float
        As in :func:`perovstem.insitu.detect_clusters`.
    registry : float
        Relative registry error of a count on the host-free map.
    plateau_only : bool
        Look only on the crystal plateau with a host-free map.

    Returns
    -------
    list of tuple
        Rows ``(x_px, y_px, npx, peak_excess, integrated_counts, err_counts,
        err_stat_counts, host_fraction, host_ok)`` as the detector's.
    """
    import os

    from skimage.feature import peak_local_max

    from perovstem.insitu.clusters import (
        SPLIT_PROBE_A,
        SPLIT_PROFILE_ERR,
        SPLIT_TAIL_A,
        _DomeGrid,
    )

    dbg = os.environ.get("RL_DEBUG")
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

    kw = {"px": px, "aperture_A": aperture_A, "grid_of": grid_of, "radius_of": radius_of}
    model_e, var_e = _models(e, sig_e, det_y_px, det_x_px, r_det, **kw)
    resid_e = e - model_e
    sig_re = np.sqrt(sig_e * sig_e + (SPLIT_PROFILE_ERR * model_e) ** 2 + var_e)
    model_d = resid_d = None
    if d is not None and on_d.any():
        model_d, var_d = _models(d, sig_d, det_y_px, det_x_px, r_det, **kw)
        resid_d = d - model_d
    # the neighbourhood of the detections (their edge + the reach), beyond their apertures
    mm, nn = e.shape
    reach = float(np.max(r_det)) + RESIDUAL_REACH_A
    h = int(np.ceil(reach / px)) + 2
    i0 = max(0, int(det_y_px.min()) - h)
    i1 = min(mm, int(det_y_px.max()) + h + 2)
    j0 = max(0, int(det_x_px.min()) - h)
    j1 = min(nn, int(det_x_px.max()) + h + 2)
    box = (slice(i0, i1), slice(j0, j1))
    # candidates as the first pass's markers: maxima of the smoothed significance of E
    zr = ndimage.gaussian_filter(
        (resid_e[box] / sig_re[box]).astype(np.float32), max(1.0, smooth_A / px), truncate=3.0
    )
    md = max(1, int(round(min_separation_A / px)))
    pk = peak_local_max(zr, min_distance=md, threshold_abs=threshold_sigma, exclude_border=False)
    if not len(pk):
        return []
    pk = pk[np.argsort(-zr[tuple(pk.T)])]
    cy, cx = pk[:, 0] + i0, pk[:, 1] + j0
    ok = mask[cy, cx]
    if plateau_only:
        ok &= on_d[cy, cx]
    cy, cx = cy[ok], cx[ok]
    zt = resid_e / np.sqrt(sig_re * sig_re + texture * texture)
    rows: list[tuple] = []
    taken: list[tuple[float, float, float]] = []
    r10 = float(_fcc_radius_A(np.array([10.0]))[0])  # Å: a 10-atom cluster first
    for y, x in zip(cy, cx, strict=True):
        d_A = np.hypot(det_y_px - y, det_x_px - x) * px
        if not np.any(d_A - r_det <= RESIDUAL_REACH_A):
            continue
        if np.any(d_A <= np.maximum(min_separation_A, r_det + aperture_A)):
            continue
        if any(
            np.hypot(ty - y, tx - x) * px <= max(min_separation_A, tr + aperture_A)
            for ty, tx, tr in taken
        ):
            continue
        on = bool(on_d[y, x]) and resid_d is not None

        def measure(res_map, mod_map, scale):
            r_c, out = r10, None
            for _ in range(2):
                out = _photometry(res_map, raw, mod_map, ring_ok, y, x, r_c + aperture_A,
                                  px=px, g=g, floor=floor, a_px=a_px)  # fmt: skip
                if out is None:
                    return None, r_c
                r_c = float(_fcc_radius_A(n_of(np.array([max(out[0], 0.0)])))[0])
            cnt, err_shot, n_ap, peak, m_sum, yc, xc = out
            err = float(np.hypot(err_shot * scale, SPLIT_PROFILE_ERR * m_sum))
            return (cnt, err, err_shot * scale, n_ap, peak, yc, xc), r_c

        me, r_c = measure(resid_e, model_e, 1.0)
        if me is None:
            continue
        # peak test (steps 3 and 4d): the residual's significance with the host texture
        yy, xx = np.ogrid[:mm, :nn]
        rp = max(2.0, r_c) / px
        ii0, ii1 = max(0, int(y - rp) - 1), min(mm, int(y + rp) + 2)
        jj0, jj1 = max(0, int(x - rp) - 1), min(nn, int(x + rp) + 2)
        disc = np.hypot(yy[ii0:ii1] - y, xx[:, jj0:jj1] - x) <= rp
        zpk = float(zt[ii0:ii1, jj0:jj1][disc].max())
        use = me
        hf = 0.0
        if on:
            md_, r_d = measure(resid_d, model_d, noise_scale)
            # the host switch of step 4: E above D by more than 1σ of the difference
            if md_ is not None and me[0] - md_[0] > np.hypot(me[1], md_[1]):
                use = md_
                hf = 1.0 - md_[0] / me[0] if me[0] > 0 else 1.0
                r_c = r_d
        cnt, err_test, err_stat, n_ap, peak, yc, xc = use
        if dbg:
            print("cand", round(x * px, 1), round(y * px, 1), "z", round(float(zr[y - i0, x - j0]), 1),
                  "zpk", round(zpk, 1), "E", round(me[0]), round(me[1]), "use", round(cnt), round(err_test),
                  "hf", round(hf, 2), "n", round(float(n_of(np.array([max(cnt, 0.0)]))[0]), 1))
        if zpk < threshold_sigma or not cnt >= threshold_sigma * err_test:
            continue
        # two clusters, not one elongated one: the split's test against the nearest
        # detection, on the map the candidate is counted on with the other detections'
        # models removed
        j = int(np.argmin(d_A))
        if hf > 0:
            fm, sg, mo = resid_d + model_d, sig_d, model_d
        else:
            fm, sg, mo = resid_e + model_e, sig_e, model_e
        if pair_penalty is not None:
            mj = _fit_core(
                fm, sg, det_y_px[j], det_x_px[j], r_det[j] / px, (r_det[j] + aperture_A) / px,
                MODEL_MARGIN_A / px, grid_of=grid_of, radius_of=radius_of,
            )  # fmt: skip
            if mj is None:
                continue
            others = mo.copy()
            others[mj[0]] -= mj[1]
            stat = _pair_stat(
                fm - others, sg, (det_y_px[j], det_x_px[j], r_det[j] / px, mj[2][2]),
                (yc, xc, r_c / px, max(cnt, 1.0)), px=px, a_px=a_px, angle_deg=angle_deg,
                aperture_A=aperture_A, radius_of=radius_of,
            )  # fmt: skip
            if dbg:
                print("   pair stat", round(stat, 1))
            if not stat > pair_penalty:
                continue
        err = float(np.hypot(err_test, registry * cnt if hf > 0 else 0.0))
        rows.append((xc, yc, n_ap, peak, cnt, err, err_stat, hf, True))
        taken.append((float(y), float(x), r_c))
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
