"""Group-wise drift registration of low-dose in-situ series (used by :func:`register_drift`).

A frame at ~1 e⁻ per pixel cannot be registered reliably to another frame or to a short
running average, but it can to the mean of the whole series aligned on the current drift
estimates: a reference with √T less noise.  This is the group-wise (all-frames) idea of
non-rigid/rigid registration of low-dose STEM series (Jones et al., Adv. Struct. Chem.
Imaging 1, 8 (2015), doi:10.1186/s40679-015-0008-4; Savitzky et al., Ultramicroscopy 191,
56 (2018), doi:10.1016/j.ultramic.2018.04.008).  The steps:

1. the reference is the sum of all usable frames' spectra, each moved by its current drift
   (streamed: only the running sum is held; the first sum is built during the running-
   reference pass of :func:`register_drift`); each frame is measured against that sum less
   its own contribution (leave-one-out, so its own noise cannot pull the peak), with the
   Wiener-weighted sub-pixel peak of :mod:`perovstem.insitu.register`, and the sum is
   rebuilt with these measurements;
2. in the last pass (``n_iter`` >= 2) each frame is measured by the Poisson log-likelihood
   of its counts, ``Σ_r f(r) log λ(r - s)`` (the maximum-likelihood shift for shot noise),
   with ``λ`` the Wiener-filtered leave-one-out sum of the raw frames clipped below at its
   mean, within 3 px of the smoothed track of the previous pass: on the 35 e⁻/Å² per frame
   benchmark series (~3000 counts per 1024² frame) it has 0.046 px per-axis error against
   0.057 px for the Wiener-weighted correlation;
3. each measurement's standard error comes from the same estimator on the frame's two
   checkerboard halves (``E|s₁ - s₂|² = 8σ²``; the one-image split of Koho et al., Nat.
   Commun. 10, 3103 (2019)), pooled over neighbouring frames;
4. a Rauch–Tung–Striebel smoother (Rauch, Tung & Striebel, AIAA J. 3, 1445 (1965)) runs
   along time on each axis, with a drift model of position + velocity (random walk of
   both) plus white per-frame jitter (real motion of the specimen between frames, e.g.
   stage vibration); the three process variances are estimated by maximising the marginal
   likelihood of the innovations.  The estimate of a frame combines its measurement with
   the smoothed track in proportion to jitter and measurement variances, with its
   posterior standard error; measurements more than ``gate`` σ from the track (leave-one-
   out residual, e.g. a lattice-period jump) are rejected and the frame takes the track
   (its error then includes the full jitter variance).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.fft as sfft
from scipy import optimize

from perovstem.insitu._frames import iter_frames

__all__ = ["groupwise_measure", "rts_drift"]


def _local_peak(
    h: np.ndarray, shape: tuple[int, int], prior: tuple[float, float], upsample: int, radius: int
) -> tuple[float, float, float]:
    """Peak of the correlation with half spectrum ``h`` within ``radius`` px of ``prior``:
    integer grid by a matrix-multiply DFT, then :func:`_upsampled_peak`.  Returns the
    shift and the contrast of the peak over the window (max minus median over std)."""
    from perovstem.insitu.register import _freqs, _upsampled_peak

    ky, kx = _freqs(shape)
    off = np.arange(-radius, radius + 1, dtype=np.float64)
    gy, gx = np.round(prior[0]) + off, np.round(prior[1]) + off
    ey = np.exp(2j * np.pi * np.outer(gy, ky)).astype(np.complex64)
    ex = np.exp(2j * np.pi * np.outer(kx, gx)).astype(np.complex64)
    c = np.real(ey @ h @ ex)
    iy, ix = np.unravel_index(int(np.argmax(c)), c.shape)
    y, x = _upsampled_peak(h, shape, float(gy[iy]), float(gx[ix]), upsample)
    return y, x, float((c.max() - np.median(c)) / (c.std() + 1e-30))


def _half_shape(spec: np.ndarray) -> tuple[int, int]:
    """Frame shape of an rfft2 half spectrum (even width)."""
    return spec.shape[0], 2 * (spec.shape[1] - 1)


def _poisson_measure(
    frame: np.ndarray,
    raw_sum: np.ndarray,
    raw_w: np.ndarray,
    own_align: np.ndarray | None,
    centre: np.ndarray,
    upsample: int,
) -> tuple[float, float, float]:
    """Shift of ``frame`` by the Poisson log-likelihood ``Σ_r f(r) log λ(r - s)`` of its
    counts, with ``λ`` the Wiener-filtered sum of the other frames (``raw_sum`` less the
    frame's own term moved by ``own_align``), clipped below at its mean (the template's
    faint part is poorly known); the peak within 3 px of ``centre``.  Returns the shift and
    the squared split-half difference (2-D, px²) of the same estimator on the frame's two
    checkerboard halves."""
    from perovstem.insitu.register import (
        _checker,
        _checker_half,
        _lowpass,
        _shift_spectrum,
        _upsampled_peak,
    )

    f = np.asarray(frame, np.float32)
    shape = f.shape
    spec = sfft.rfft2(f, workers=2)
    ref = raw_sum
    if own_align is not None:
        ref = raw_sum - _shift_spectrum(spec, shape, own_align[0], own_align[1])
    lam = sfft.irfft2((ref * raw_w).astype(np.complex64), s=shape, workers=2)
    t = np.log(np.maximum(lam, max(float(lam.mean()), 1e-30))).astype(np.float32)
    g = np.conj(sfft.rfft2(t - np.float32(t.mean()), workers=2)) * _lowpass(shape, 0.0)
    y, x, _ = _local_peak(g * spec, shape, (float(centre[0]), float(centre[1])), upsample, 3)
    half = _checker_half(spec, shape)
    if half is None:
        half = sfft.rfft2(f * _checker(shape), workers=2)
    a = _upsampled_peak(g * half, shape, y, x, upsample)
    b = _upsampled_peak(g * (spec - half), shape, y, x, upsample)
    return y, x, (a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2


def _split_var(split2: np.ndarray, window: int = 31) -> np.ndarray:
    """Variance per axis (px²) of each frame's shift from the checkerboard split-half
    differences ``|s₁ - s₂|²`` (2-D, px²): ``E|s₁ - s₂|² = 8σ²`` (each half has half the
    counts); one split has 2 degrees of freedom, so the frames within ``window`` are pooled
    (running mean, outliers capped); a frame's own value counts when it is an outlier
    (P < 10⁻⁴ under the pooled noise, e.g. a glitch)."""
    n = len(split2)
    ok = np.isfinite(split2)
    out = np.full(n, np.inf)
    if not ok.any():
        return out
    idx = np.flatnonzero(ok)
    vals = split2[ok]
    # (at most a quarter of the series: the noise changes as the crystal degrades)
    w = int(min(window, max(5, len(vals) // 4), len(vals)))
    # windows of full length, shifted inwards at the ends
    win = np.lib.stride_tricks.sliding_window_view(vals, w)
    # the mean of the window (heavy-tailed noise counts), with the values beyond the P = 10⁻⁴
    # point of the window's median-based χ²₂ scale (glitches, frames without structure)
    # capped there so one such frame cannot inflate its neighbours
    cap = 9.2 * np.median(win, axis=1, keepdims=True) / np.log(2.0)
    pooled = np.mean(np.minimum(win, cap), axis=1) / 8.0
    pooled = pooled[np.clip(np.arange(len(vals)) - w // 2, 0, len(vals) - w)]
    own = vals / 8.0
    out[idx] = np.where(own > 9.2 * pooled, own, pooled)
    return out


def groupwise_measure(
    st: Any,
    usable: np.ndarray,
    drift0: np.ndarray,
    *,
    n_iter: int,
    window_alpha: float,
    corr_kw: dict[str, Any],
    min_snr: float,
    init: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    track: Any = None,
    last_pass: Any = None,
    poisson: bool = True,
) -> dict[str, Any]:
    """Measure every usable frame against the leave-one-out aligned sum of the series.

    ``drift0`` (T, 2): the starting estimates (e.g. the drift of :func:`register_drift`),
    px.  ``init``: an aligned sum already accumulated ``(sum, alignment (T, 2), in_sum
    (T,) bool)``; otherwise pass 0 sums the usable frames moved by ``drift0``.  Every
    following pass measures each frame against the sum less its own term and builds the
    next sum with the new measurements (frames whose measurement is weak, below
    ``min_snr``, or more than 3 px from their previous alignment keep it).  The first
    measuring pass searches the whole field (whitened integer peak); later passes search
    within 3 px of ``track(meas, snr)`` (a callable giving the current best (T, 2)
    estimates, e.g. the smoothed track), else of the previous measurement.  With
    ``poisson`` (and ``n_iter`` >= 2) the last pass uses the Poisson log-likelihood of the
    frame's counts against the raw-frame sum of the previous pass (:func:`_poisson_measure`).
    The last pass also registers the two checkerboard halves of every frame (noise of the
    measurement) and calls ``last_pass(k, frame, ref, shift)`` if given (e.g. a rigidity
    test; ``ref()`` returns the windowed leave-one-out sum, half spectrum).

    Returns a dict: ``meas`` (T, 2) shifts, ``var`` (T, 2) variances (px², inf where not
    measured), ``snr`` (T,), ``split_dev2`` (T,) squared split-half differences (px²).
    """
    from perovstem.insitu.register import (
        _correlate_spectra,
        _half_spectrum,
        _lowpass,
        _shift_spectrum,
        _spectrum,
        _upsampled_peak,
        _wiener,
    )

    n = len(usable)
    meas = np.full((n, 2), np.nan)
    snr = np.full(n, np.nan)
    split2 = np.full(n, np.nan)
    up = int(corr_kw["upsample"])
    if init is not None:
        ref_sum, align, in_sum = init
        align = np.asarray(align, float).copy()
        in_sum = np.asarray(in_sum, bool).copy()
        passes = range(1, n_iter + 1)
    else:
        ref_sum, align, in_sum = None, np.asarray(drift0, float).copy(), np.zeros(n, bool)
        passes = range(0, n_iter + 1)
    centre = None
    raw_sum: np.ndarray | None = None
    raw_w: np.ndarray | None = None
    for it in passes:
        last = it == n_iter
        wiener_ref = None
        new_sum: np.ndarray | None = None
        new_raw: np.ndarray | None = None
        new_align = np.asarray(drift0, float).copy()
        new_in = np.zeros(n, bool)
        if it >= 2:
            centre = track(meas, snr) if track is not None else meas.copy()
        ml = last and poisson and raw_sum is not None
        for k, frame in iter_frames(st):
            if not usable[k]:
                continue
            if ml:
                y, x, split2[k] = _poisson_measure(
                    frame, raw_sum, raw_w, align[k] if in_sum[k] else None, centre[k], up
                )
                meas[k] = (y, x)
                if last_pass is not None:

                    def _ref(
                        k: int = k,
                        frame: np.ndarray = frame,
                        rs: np.ndarray = ref_sum,
                        al: np.ndarray = align,
                        ins: np.ndarray = in_sum,
                    ) -> np.ndarray:
                        # the windowed leave-one-out sum (only when the callback needs it)
                        spec = _spectrum(frame, window_alpha)
                        own = _shift_spectrum(spec, frame.shape, al[k, 0], al[k, 1])
                        return (rs - own if ins[k] else rs).astype(np.complex64)

                    last_pass(k, frame, _ref, (y, x))
                continue
            spec = _spectrum(frame, window_alpha)
            if ref_sum is not None:
                if wiener_ref is None:
                    # the Wiener weight of the whole sum (one frame's share changes it little)
                    wiener_ref = _wiener(ref_sum.astype(np.complex64), frame.shape)
                ref = ref_sum
                if in_sum[k]:
                    ref = ref_sum - _shift_spectrum(spec, frame.shape, align[k, 0], align[k, 1])
                ref = ref.astype(np.complex64)
                g = np.conj(ref) * wiener_ref if last or centre is not None else None
                if centre is None or not np.all(np.isfinite(centre[k])):
                    c = _correlate_spectra(
                        ref, spec, frame.shape, **corr_kw, wa=wiener_ref, refine="wiener"
                    )
                    y, x, s_k = c.dy, c.dx, c.snr
                else:
                    hw = _lowpass(frame.shape, 0.0)
                    y, x, _ = _local_peak(g * spec * hw, frame.shape, tuple(centre[k]), up, 3)
                    s_k = snr[k]
                meas[k] = (y, x)
                snr[k] = s_k
                if last:
                    hw = _lowpass(frame.shape, 0.0)
                    half = _half_spectrum(frame, spec, window_alpha, frame.shape)
                    a = _upsampled_peak(g * half * hw, frame.shape, y, x, up)
                    b = _upsampled_peak(g * (spec - half) * hw, frame.shape, y, x, up)
                    split2[k] = (a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2
                    if last_pass is not None:
                        last_pass(k, frame, lambda ref=ref: ref, (y, x))
                ok = s_k >= min_snr and np.hypot(y - align[k, 0], x - align[k, 1]) < 3
                new_align[k] = (y, x) if ok else align[k]
            if not last:
                term = _shift_spectrum(spec, frame.shape, new_align[k, 0], new_align[k, 1])
                if new_sum is None:
                    new_sum = term.astype(np.complex128)
                else:
                    new_sum += term
                new_in[k] = True
                if poisson and it == n_iter - 1:
                    # the sum of the raw frames (no window, counts) for the Poisson template
                    rterm = _shift_spectrum(
                        sfft.rfft2(np.asarray(frame, np.float32), workers=2),
                        frame.shape,
                        new_align[k, 0],
                        new_align[k, 1],
                    )
                    if new_raw is None:
                        new_raw = rterm.astype(np.complex128)
                    else:
                        new_raw += rterm
        if not last:
            ref_sum, align, in_sum = new_sum, new_align, new_in
            if new_raw is not None:
                raw_sum = new_raw
                raw_w = _wiener(raw_sum.astype(np.complex64), _half_shape(raw_sum))
    var = _split_var(split2)
    var = np.where(np.isfinite(meas[:, 0]) & (snr >= min_snr), var, np.inf)
    return {"meas": meas, "var": np.column_stack([var, var]), "snr": snr, "split_dev2": split2}


#: variance (px²) of the diffuse initial state of :func:`_kf`
_KF_PRIOR_VAR = 1e8
#: the filter's variances carry an absolute rounding error of order ``_KF_PRIOR_VAR`` x the
#: float64 epsilon (2e-8 px²; R - P_s of the frames of an 8-frame series read -4e-9 to
#: 5e-9 px² where it is ~0): a residual variance below this is numerically zero
_KF_VAR_RESOLUTION = 1e-7


def _kf(
    m: np.ndarray, r: np.ndarray, qp: float, qv: float, qj: float, smooth: bool
) -> tuple[float, np.ndarray | None, np.ndarray | None]:
    """Kalman filter (and RTS smoother) of a position + velocity random walk observed with
    noise ``r + qj``; returns the log-likelihood of the innovations (the first two, which
    fix the diffuse initial state, left out) and the smoothed position mean and variance.
    Frames with ``r = inf`` are not observed."""
    n = len(m)
    big = _KF_PRIOR_VAR
    x0, x1 = 0.0, 0.0
    p00, p01, p11 = big, 0.0, big
    ll = 0.0
    n_obs = 0
    if smooth:
        fx = np.empty((n, 2))
        fp = np.empty((n, 3))
        px_ = np.empty((n, 2))
        pp = np.empty((n, 3))
    for k in range(n):
        if k > 0:
            # predict: x = F x, P = F P F' + Q, F = [[1, 1], [0, 1]]
            x0 = x0 + x1
            p00, p01, p11 = p00 + 2 * p01 + p11 + qp, p01 + p11, p11 + qv
        if smooth:
            px_[k] = (x0, x1)
            pp[k] = (p00, p01, p11)
        rk = r[k]
        if np.isfinite(rk):
            s = p00 + rk + qj
            v = m[k] - x0
            k0, k1 = p00 / s, p01 / s
            x0, x1 = x0 + k0 * v, x1 + k1 * v
            p00, p01, p11 = p00 - k0 * p00, p01 - k0 * p01, p11 - k1 * p01
            if n_obs >= 2:
                ll -= 0.5 * (np.log(2 * np.pi * s) + v * v / s)
            n_obs += 1
        if smooth:
            fx[k] = (x0, x1)
            fp[k] = (p00, p01, p11)
    if not smooth:
        return ll, None, None
    mu = np.empty(n)
    var = np.empty(n)
    sx0, sx1 = x0, x1
    s00, s01, s11 = p00, p01, p11
    mu[-1], var[-1] = sx0, s00
    for k in range(n - 2, -1, -1):
        a00, a01, a11 = fp[k]
        b00, b01, b11 = pp[k + 1]
        # C = P_f F' P_pred^-1 (2 x 2)
        det = b00 * b11 - b01 * b01
        if det <= 0:
            det = 1e-300
        # P_f F' = [[a00 + a01, a01], [a01 + a11, a11]]
        f00, f01, f10, f11 = a00 + a01, a01, a01 + a11, a11
        i00, i01, i11 = b11 / det, -b01 / det, b00 / det
        c00 = f00 * i00 + f01 * i01
        c01 = f00 * i01 + f01 * i11
        c10 = f10 * i00 + f11 * i01
        c11 = f10 * i01 + f11 * i11
        d0 = sx0 - px_[k + 1, 0]
        d1 = sx1 - px_[k + 1, 1]
        nx0 = fx[k, 0] + c00 * d0 + c01 * d1
        nx1 = fx[k, 1] + c10 * d0 + c11 * d1
        e00, e01, e11 = s00 - b00, s01 - b01, s11 - b11
        # P_s = P_f + C (P_s' - P_pred) C'
        t00 = c00 * e00 + c01 * e01
        t01 = c00 * e01 + c01 * e11
        t10 = c10 * e00 + c11 * e01
        t11 = c10 * e01 + c11 * e11
        n00 = a00 + t00 * c00 + t01 * c01
        n01 = a01 + t00 * c10 + t01 * c11
        n11 = a11 + t10 * c10 + t11 * c11
        sx0, sx1, s00, s01, s11 = nx0, nx1, n00, n01, n11
        mu[k], var[k] = sx0, max(s00, 0.0)
    return ll, mu, var


def _fit_process_noise(m: np.ndarray, r: np.ndarray) -> tuple[float, float, float]:
    """Maximum marginal likelihood of ``(q_p, q_v, q_j)`` (px², per frame) for one axis."""
    obs = np.isfinite(r)
    if obs.sum() < 4:
        return 1e-4, 1e-6, 0.0
    scale = float(np.nanmedian(r[obs]))
    dm = np.diff(m[obs])
    s0 = max(float(np.var(dm)) if len(dm) > 1 else scale, 1e-8)

    def nll(th: np.ndarray) -> float:
        qp, qv, qj = np.exp(th)
        ll, _, _ = _kf(m, r, qp, qv, qj, smooth=False)
        return -ll

    best = None
    for start in (
        np.log([0.1 * s0, 1e-4 * s0, 0.3 * s0]),
        np.log([1e-3 * scale, 1e-6 * scale, 1e-2 * scale]),
    ):
        res = optimize.minimize(
            nll,
            start,
            method="Nelder-Mead",
            options={"xatol": 0.05, "fatol": 1e-3, "maxiter": 400},
        )
        if best is None or res.fun < best.fun:
            best = res
    assert best is not None
    qp, qv, qj = np.exp(np.clip(best.x, -60, 20))
    # variances far below a part in 10⁴ of the measurement noise are numerically zero
    floor = 1e-8 * scale
    return max(qp, floor), max(qv, floor * 1e-2), qj if qj > 1e-4 * scale else 0.0


def rts_drift(
    m: np.ndarray, var: np.ndarray, *, gate: float = 3.5, n_rounds: int = 4
) -> dict[str, np.ndarray]:
    """Smoothed drift of measurements ``m`` (T, 2) with variances ``var`` (T, 2) (inf: no
    measurement): position/velocity random walk + white jitter per axis, process noise by
    maximum marginal likelihood, outliers beyond ``gate`` (2-D, in σ of the leave-one-out
    residual) rejected iteratively.  Returns ``d`` (T, 2) estimates, ``err`` (T, 2)
    posterior standard errors, ``track`` (T, 2) the smoothed position without the jitter,
    ``z`` (T,) standardised 2-D residual, ``outlier`` (T,) bool and ``q`` (2, 3)."""
    m = np.asarray(m, float)
    var = np.asarray(var, float)
    n = len(m)
    use = np.all(np.isfinite(var), axis=1) & np.all(np.isfinite(m), axis=1)
    outlier = np.zeros(n, bool)
    q = np.zeros((2, 3))
    # chi² (2 dof) threshold of the gate
    thr = gate**2
    for _ in range(n_rounds):
        ok = use & ~outlier
        mu = np.zeros((n, 2))
        pv = np.zeros((n, 2))
        z2 = np.zeros(n)
        for ax in range(2):
            r = np.where(ok, var[:, ax], np.inf)
            mm = np.where(ok, m[:, ax], 0.0)
            q[ax] = _fit_process_noise(mm, r)
            _, mu[:, ax], pv[:, ax] = _kf(mm, r, *q[ax], smooth=True)
            rr = var[:, ax] + q[ax, 2]
            # residual variance: observed frames R - P_s, rejected ones R + P_s
            den = np.where(ok, rr - pv[:, ax], rr + pv[:, ax])
            res = np.where(use, m[:, ax] - mu[:, ax], 0.0)
            # (floored at the filter's resolution: a residual variance R - P_s that cancels
            # to rounding noise made a frame on the track an outlier by 10³ σ)
            z2 += res**2 / np.maximum(den, np.maximum(1e-12 * rr, _KF_VAR_RESOLUTION))
        new = use & (z2 > thr)
        # only the worst offenders at a time, so one jump cannot condemn its neighbours
        if ok.any() and np.array_equal(new, outlier):
            break
        outlier = new
    d = np.empty((n, 2))
    err = np.empty((n, 2))
    for ax in range(2):
        qj = q[ax, 2]
        obs = use & ~outlier
        r = np.where(obs, var[:, ax], 0.0)
        a = np.where(obs, qj / np.where(obs, qj + r, 1.0), 0.0)
        d[:, ax] = (1 - a) * mu[:, ax] + a * np.where(obs, m[:, ax], 0.0)
        e2 = np.where(obs, (1 - a) ** 2 * pv[:, ax] + a * r, pv[:, ax] + qj)
        err[:, ax] = np.sqrt(e2)
    return {
        "d": d,
        "err": err,
        "track": mu,
        "z": np.sqrt(z2),
        "outlier": outlier,
        "q": q,
    }


#: a frame is reliable when its 2-D posterior error is at most ``reliable_tol_px`` / this
#: (P(|error| > tol) = exp(-factor²) for a Gaussian error: 2·10⁻³ at the limit)
SIGMA_LIMIT_FACTOR = 2.5
#: smallest disagreement (px) between a running-reference and a group-wise estimate taken
#: as a lattice-site ambiguity (with 4 x ``reliable_tol_px``), not a precision matter
SITE_PX = 1.0


#: frames on either side whose shared running-reference/group-wise difference is taken as
#: the running reference's own drift (:func:`refine_drift`)
BIAS_FRAMES = 8


def refine_drift(
    st: Any,
    *,
    usable: np.ndarray,
    drift: np.ndarray,
    drift_err: np.ndarray,
    reliable0: np.ndarray,
    keep_flags: dict[int, str],
    nonrigid: np.ndarray,
    init: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    n_iter: int,
    window_alpha: float,
    corr_kw: dict[str, Any],
    sub_kw: dict[str, Any],
    min_snr: float,
    reliable_tol_px: float,
    first: int,
    ref_est: np.ndarray | None = None,
    ref_sigma: np.ndarray | None = None,
) -> dict[str, Any]:
    """Group-wise drift of the usable frames (module docstring) from the starting ``drift``.

    ``keep_flags`` {frame: reason}: frames whose content failed a test of
    :func:`register_drift` (non-rigid, lattice-period ambiguity, ...): they stay flagged
    with their ``drift``/``drift_err`` and are left out of the smoother.  ``nonrigid`` (T,):
    the sub-field disagreement against the running reference (NaN: not tested); frames
    without a passing value are tested again in the last pass against the leave-one-out
    series mean; those that fail it (or cannot be tested) are treated like ``keep_flags``.
    Frames whose measurement is weak or an outlier of the smoothed track take the track.
    ``ref_est`` (T, 2): each frame's measurement against the running reference in the gauge
    of ``drift`` (NaN: none above ``min_snr``), ``ref_sigma`` (T,) its split-half error per
    axis: a frame that ``reliable0`` leaves out is reliable only when its group-wise
    estimate agrees with that measurement within the gate of the reliable frames.
    Returns ``d``, ``err`` (T, 2), ``flags`` {frame: reason}, ``nonrigid``, per-frame
    ``columns`` and ``attrs``.
    """
    from perovstem.insitu.register import _rigidity_flag, _subfield_disagreement

    n = len(usable)
    nonrigid = np.asarray(nonrigid, float).copy()
    n_sub = np.full(n, -1)
    kept = np.isin(np.arange(n), list(keep_flags))
    retest = usable & ~kept & ~(nonrigid <= reliable_tol_px)
    sub = {**sub_kw, "corr": {**sub_kw["corr"], "refine": "wiener"}}

    def _rigidity(k: int, frame: np.ndarray, ref: Any, shift: tuple) -> None:
        if retest[k]:
            nonrigid[k], _, n_sub[k] = _subfield_disagreement(
                ref(), frame, frame.shape, shift, **sub, noise_free_below=reliable_tol_px
            )

    def _track(meas: np.ndarray, snr: np.ndarray) -> np.ndarray:
        v = np.where(np.isfinite(meas) & (snr[:, None] >= min_snr) & ~kept[:, None], 0.01, np.inf)
        return rts_drift(np.nan_to_num(meas), v)["d"]

    g = groupwise_measure(
        st,
        usable,
        drift,
        n_iter=n_iter,
        window_alpha=window_alpha,
        corr_kw=corr_kw,
        min_snr=min_snr,
        init=init,
        track=_track,
        last_pass=_rigidity,
    )
    flags: dict[int, str] = dict(keep_flags)
    for k in np.flatnonzero(retest):
        if k == first:
            continue
        why = _rigidity_flag(
            n_sub[k],
            nonrigid[k],
            reliable_tol_px,
            f"{max(n_sub[k], 0)} sub-fields correlate with the series mean",
        )
        if why:
            flags[k] = why
    content = np.isin(np.arange(n), list(flags))
    content[first] = False
    # the measurement noise from the split halves of the frames with rigid content only
    split2 = np.where(content | ~usable, np.nan, g["split_dev2"])
    v1 = np.where(np.isfinite(g["meas"][:, 0]) & (g["snr"] >= min_snr), _split_var(split2), np.inf)
    var = np.where(content[:, None], np.inf, np.column_stack([v1, v1]))
    drift = np.asarray(drift, float)
    drift_err = np.asarray(drift_err, float)
    sys_var = 0.0
    for attempt in range(2):
        r = rts_drift(g["meas"], var + sys_var)
        # gauge: frame ``first`` (drift 0 by definition); the frames that register_drift
        # found reliable keep their drift where the two estimates agree within max(tol/2,
        # the 1 % point of their combined error), and are flagged otherwise
        rel0 = np.asarray(reliable0, bool) & usable & ~content & ~r["outlier"]
        off = drift[first] - r["d"][first]
        var_off = r["err"][first] ** 2
        dev = np.hypot(*(drift - r["d"] - off).T)
        # |difference|² / (per-axis variance) is χ²₂: beyond 9.2 (P = 1 %)
        s2 = np.sum(r["err"] ** 2 + var_off + drift_err**2, axis=1)
        cmp = rel0.copy()
        cmp[first] = False
        if attempt or cmp.sum() < 8:
            break
        # the split halves see the shot noise only, not a frame's content differing from
        # the series mean (a degrading crystal, moving clusters): where both estimates
        # exist, the scatter of their difference beyond the claimed errors (median of χ²₂
        # is 2 ln 2) is added to every group-wise measurement as a systematic error
        excess = float(np.median(dev[cmp] ** 2)) / (2.0 * np.log(2.0)) - float(
            np.median(s2[cmp] / 2.0)
        )
        if excess <= 0:
            break
        sys_var = excess
    tol_k = np.maximum(0.5 * reliable_tol_px, np.sqrt(9.2 * s2 / 2.0))
    disagree = rel0 & (dev > tol_k)
    disagree[first] = False
    d = r["d"] + off
    err = np.sqrt(r["err"] ** 2 + var_off)
    # frames that register_drift found reliable and that agree keep its drift and error;
    # so does one whose own group-wise measurement confirms it (two independent
    # registrations within tol/2) where the smoothed track does not: on a short series the
    # track's process noise is poorly determined and its outlier gate can reject good
    # frames (a CsCd0.2 series: frames 2-4 moved 1-4 px onto a straight-line track)
    m = np.asarray(g["meas"], float)
    meas_dev = np.hypot(*(drift - m - (drift[first] - m[first])).T)
    confirmed = (
        np.asarray(reliable0, bool)
        & usable
        & ~content
        & (g["snr"] >= min_snr)
        & (np.nan_to_num(meas_dev, nan=np.inf) <= 0.5 * reliable_tol_px)
    )
    keep = (rel0 & ~disagree) | confirmed
    d[keep] = drift[keep]
    err[keep] = drift_err[keep]
    # a site-sized disagreement (a lattice period or sublattice apart, > max(1 px, 4 x tol))
    # with a running-reference estimate that passed every test of register_drift (rigidity,
    # pair agreement, outline, drift track) is no evidence that the group-wise one is right:
    # the series mean blends frames of different column contrast (e.g. an alloyed crystal
    # before and after its Pb columns are reduced) and its correlation can peak on the other
    # sublattice (CsCd0.3 seed 2: 8.2 px).  The running-reference drift is kept, flagged,
    # with an error that reaches the group-wise estimate
    site = disagree & ~keep & (dev > max(SITE_PX, 4.0 * reliable_tol_px))
    d[site] = drift[site]
    err[site] = np.maximum(drift_err[site], dev[site, None])
    # frames whose content failed a test keep the chained drift of register_drift and its
    # growing uncertainty
    d[content] = drift[content]
    err[content] = drift_err[content]
    d = d - d[first]
    err[first] = 0.0
    sig2d = np.hypot(err[:, 0], err[:, 1])
    limit = reliable_tol_px / SIGMA_LIMIT_FACTOR
    # a frame the running reference could not vouch for (failed a test of the solve, e.g.
    # inconsistent or imprecise, or its rigidity was tested against the series mean only)
    # but that it did measure: the two registrations of the frame must agree as those of
    # the reliable frames must (max(tol/2, the 1 % point of their combined error)).  The
    # posterior error sees neither the frame's content differing from the series mean nor
    # a track left unconstrained by neighbouring frames whose content failed (crystals
    # destroyed part-way: frames 0.3-6 px off with ~0.1 px posterior error)
    dev_r = np.full(n, np.nan)
    second = np.zeros(n, bool)
    if ref_est is not None:
        r_sig = np.nan_to_num(np.asarray(ref_sigma, float), nan=0.0)
        diff = np.asarray(ref_est, float) - d
        # a running reference drifts slowly (it inherits the errors of the frames it
        # averages): the difference its neighbours share is its drift, not the frame's
        own = usable & ~content & np.all(np.isfinite(diff), axis=1)
        bias = np.zeros((n, 2))
        # (and how well that shared drift describes the neighbours: the robust variance per
        # axis of their differences about it, px²; inf with fewer than 3 neighbours)
        spread = np.full(n, np.inf)
        for k in np.flatnonzero(own):
            j = np.flatnonzero(own[max(0, k - BIAS_FRAMES) : k + BIAS_FRAMES + 1])
            j = j + max(0, k - BIAS_FRAMES)
            j = j[j != k]
            if len(j) >= 3:
                bias[k] = np.median(diff[j], axis=0)
                mad = np.median(np.abs(diff[j] - bias[k]), axis=0)
                spread[k] = float(np.mean((1.4826 * mad) ** 2))
        dev_r = np.hypot(*(diff - bias).T)
        s2r = np.sum(err**2, axis=1) + 2.0 * r_sig**2
        gate_r = np.maximum(0.5 * reliable_tol_px, np.sqrt(9.2 * s2r / 2.0))
        # (only where the smoothed track cannot check the frame: a neighbouring frame
        # without a group-wise measurement on either side)
        measured = usable & ~content & np.isfinite(var[:, 0])
        nb = np.zeros(n, bool)
        nb[1:] |= ~measured[:-1]
        nb[:-1] |= ~measured[1:]
        nb[0] = nb[-1] = True
        second = ~np.asarray(reliable0, bool) & usable & ~content & nb & (dev_r > gate_r)
        second[first] = False
    # a frame between two frames whose content failed the rigidity tests (moving clusters
    # after the crystal has gone) has nothing left to check its registrations against: its
    # group-wise and running-reference measurements both rest on the same moving content
    # and can agree on a wrong shift (a clusters-only frame of a crystal destroyed for real
    # reported reliable 19 px off, both estimates within 0.19 px of each other)
    failed = content | ~usable
    isolated = np.zeros(n, bool)
    isolated[1:-1] = failed[:-2] & failed[2:]
    isolated &= usable & ~content
    isolated[first] = False
    keep &= ~isolated
    for k in np.flatnonzero(usable & ~content & ~keep):
        if k == first:
            continue
        if isolated[k]:
            flags[k] = (
                "both neighbouring frames failed the rigidity tests (moving content): the "
                "frame's registrations cannot be checked; drift reported, its error reaches "
                "the chained estimate's error bound"
            )
            # (at least the tolerance: nothing vouches for it within that)
            err[k] = np.maximum(
                err[k],
                np.maximum(np.nan_to_num(dev[k], nan=np.inf) + drift_err[k], reliable_tol_px),
            )
            continue
        if not g["snr"][k] >= min_snr:
            flags[k] = (
                f"weak correlation with the series mean (SNR {g['snr'][k]:.3g} < "
                f"{min_snr:g}); drift from the smoothed track"
            )
        elif r["outlier"][k]:
            flags[k] = (
                f"measurement {r['z'][k]:.3g} sigma from the smoothed drift track (e.g. a "
                "lattice-period jump); drift from the track"
            )
        elif site[k]:
            flags[k] = (
                f"running-reference and group-wise estimates disagree by {dev[k]:.2g} px (a "
                "lattice site); running-reference drift reported, its error reaches the "
                "group-wise estimate"
            )
        elif disagree[k]:
            flags[k] = (
                f"running-reference and group-wise estimates disagree by {dev[k]:.2g} px; "
                "group-wise drift reported"
            )
            err[k] = np.maximum(err[k], dev[k])
        elif second[k]:
            flags[k] = (
                f"group-wise estimate and the frame's running-reference measurement disagree "
                f"by {dev_r[k]:.2g} px (content not explained by the series mean); group-wise "
                "drift reported, its error reaches the chained estimate's error bound"
            )
            # neither registration is trusted: the group-wise estimate lies within its
            # distance from the chained estimate plus that one's error (unbounded when
            # the chain crosses a step whose rigidity could not be tested)
            err[k] = np.maximum(err[k], np.nan_to_num(dev[k], nan=np.inf) + drift_err[k])
        elif sig2d[k] > limit:
            flags[k] = f"imprecise: posterior error {sig2d[k]:.2g} px (> {limit:.2g})"
        else:
            flags.pop(k, None)
        if k in flags and np.isfinite(dev_r[k]):
            err[k] = np.maximum(err[k], dev_r[k])
        if k in flags and np.isfinite(dev[k]):
            # a flagged frame's error covers the spread of the two estimates: the group-wise
            # posterior sees neither a frame's content differing from the series mean nor a
            # poorly determined track, and the running-reference (chained) estimate is the
            # other measurement of the same frame (CsCd0.3 seed 8, AVX-512: frame 4 reported
            # 0.36 px, 0.41 px off, with the chained estimate 0.01 px off, 0.39 px away)
            err[k] = np.maximum(err[k], dev[k])
    if ref_est is not None:
        # a frame rescued by the group-wise registration (reliable here, not for the running
        # reference) has two measurements: the group-wise estimate and its running-reference
        # measurement (the reference's shared drift taken out); they are combined by their
        # errors (inverse variance; the latter's split-half error plus the spread of its
        # neighbours about the shared drift, which holds the reference's own error).  The
        # series mean behind the former blends a degrading crystal's earlier content (55
        # rescued late frames of 16 series of 45 A crystals: 0.19 px RMS vs 0.12 px for the
        # running reference); the reported error stays the group-wise one, the larger: the
        # two share the frame's own content change
        rescued = (
            ~np.asarray(reliable0, bool) & usable & ~content & own & (r_sig > 0) & (spread < np.inf)
        )
        rescued &= ~np.isin(np.arange(n), list(flags))
        rescued[first] = False
        for k in np.flatnonzero(rescued):
            wg = 1.0 / np.maximum(err[k], 1e-6) ** 2
            wr = 1.0 / (r_sig[k] ** 2 + spread[k])
            d[k] = (wg * d[k] + wr * (np.asarray(ref_est[k], float) - bias[k])) / (wg + wr)
    return {
        "d": d,
        "err": err,
        "flags": flags,
        "nonrigid": nonrigid,
        "columns": {
            "gw_snr": g["snr"],
            "gw_sigma_px": np.where(np.isfinite(v1) & ~content, np.sqrt(v1 + sys_var), np.nan),
            "gw_z": np.where(content, np.nan, r["z"]),
        },
        "attrs": {
            "groupwise_iter": int(n_iter),
            "groupwise_process_var_px2": {
                ax: {"position": float(q[0]), "velocity": float(q[1]), "jitter": float(q[2])}
                for ax, q in zip(("y", "x"), r["q"], strict=True)
            },
            "groupwise_n_outliers": int(r["outlier"].sum()),
            "groupwise_sigma_limit_px": float(limit),
            "groupwise_systematic_px": float(np.sqrt(sys_var)),
        },
    }
