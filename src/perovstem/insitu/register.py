"""Rigid drift registration of in-situ series by sub-pixel phase correlation.

Each frame is Fourier transformed once (windowed, low-pass weighted) and correlated with the
``max_lag`` frames before it.  The integer peak of the (generalised) phase correlation is
refined with the matrix-multiply upsampled DFT of Guizar-Sicairos, Thurman & Fienup,
Opt. Lett. 33, 156 (2008), doi:10.1364/OL.33.000156.  The pairwise shifts are then combined
into one cumulative drift per frame by robust weighted least squares (iteratively reweighted,
Tukey biweight), which rejects outlier pairs (e.g. a frame with a scan glitch or a jump),
the multi-reference idea of MotionCor2 (Zheng et al., Nat. Methods 14, 331 (2017)).

In :func:`register_drift` the integer peak comes from the whitened correlation, but the
sub-pixel peak from the Wiener-weighted plain cross-correlation (the reference's spectrum
shrunk by ``max(0, 1 - N/P(k))``, :func:`_wiener`): at low counts per pixel the whitened
peak is dominated by the high-frequency noise of the (running) reference.  The precision
of every reference-based shift is measured from the frame itself by a checkerboard split of
its pixels into two independent halves (the one-image split of Koho et al., Nat. Commun.
10, 3103 (2019)); it weights the rows of the least-squares solve and corrects the
sub-field rigidity test for shot noise.  A lattice-period jump is detected by comparing
the lattice registration with the crystal-outline registration (a gradient correlation
low-passed to remove the strongest lattice reflection), and a jump by a lattice alias (a
period, or half a cell diagonal when the brightest sublattice changes) by comparing the
registration with the straight-line drift track of the reliable frames: a registration far
off the track while the correlation has a comparable peak on it is re-measured there and
flagged (:func:`_track_alias`).

When the running reference cannot register some frames reliably (e.g. at ~1 e⁻ per pixel
per frame, or after a drift of the running reference), :func:`register_drift` (with
``groupwise="auto"``) registers every frame against the mean of all frames aligned on the
current estimates (leave-one-out, 2 further streamed passes) and smooths the shifts along
time with a Rauch–Tung–Striebel smoother (position/velocity random walk + white jitter,
process noise by maximum marginal likelihood), the group-wise registration of Jones et al.,
Adv. Struct. Chem. Imaging 1, 8 (2015) and Savitzky et al., Ultramicroscopy 191, 56 (2018)
(:mod:`perovstem.insitu._groupwise`).

Memory use is independent of the series length: only ``max_lag`` spectra and (group-wise)
two aligned sums are held.

Cost: each frame is Fourier transformed once; its checkerboard-half spectrum is read from
that spectrum (``(F(k) + F(k + (M/2, N/2))) / 2``, no second FFT), and its whitened
spectrum ``F/|F|^p`` and Wiener weight are computed once and reused by every correlation
it enters (the whitening ``R/|R|^p`` of a cross-spectrum ``R = conj(A) B`` factorises).
The element-wise chains are fused numba kernels (:mod:`perovstem.insitu._reg_kernels`)
and the sub-pixel DFT kernels cached; the correlations with the previous frames and the
anchor and outline checks run in one helper thread beside the rigidity test.  The
results equal those of the plain numpy chains to float32 rounding (drift within 2e-4 px,
same flags, on the 100-frame benchmark series).  Measured on those series (1024²,
interleaved with the previous code, 2 shared cores at load 9-11): 0.18 → 0.14 s CPU per
frame at 350 e⁻/Å² per frame (wall 0.52 → 0.40 s), 0.29 → 0.23 s CPU with the group-wise
passes at 35 e⁻/Å² (wall 1.01 → 0.70 s); the full-size inverse FFTs of the whitened
correlations (integer peak and SNR), about 6 per frame, are now the largest part.

Sign convention: ``dy_px, dx_px`` of frame ``k`` is the position of the specimen in frame
``k`` minus its position in frame 0, i.e. a feature at pixel ``(i, j)`` in frame 0 appears at
``(i + dy, j + dx)`` in frame ``k``.  :func:`apply_drift` shifts frame ``k`` by ``-d_k``.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import scipy.fft as sfft
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy import ndimage

from perovstem._data import Series
from perovstem._validation import check_positive, check_range, refuse_text_numbers
from perovstem.errors import DataError, ParameterError
from perovstem.insitu._frames import (
    frame_quality,
    frame_shape_of,
    frame_stack,
    iter_frames,
    single_blas_thread,
)
from perovstem.insitu._reg_kernels import (
    block_energy,
    box5,
    checker_alias_mean,
    cross_weighted,
    cross_white,
    cross_whiten,
    power,
    ramp_multiply,
    whitened,
    wiener_weight,
)

__all__ = [
    "phase_correlate",
    "register_drift",
    "apply_drift",
    "correct_scan_distortion",
    "measure_line_jitter",
]

_WORKERS = 2
_TLS = threading.local()


def _workers() -> int:
    """FFT threads of the calling thread (1 in the helper thread of :func:`register_drift`,
    which runs beside the main one)."""
    return getattr(_TLS, "workers", _WORKERS)


#: flags about a frame's own content (kept by the group-wise registration); the others
#: (running-reference drift, chain imprecision or inconsistency, weak correlation with the
#: running reference, too few sub-fields correlating with the noisy running reference) are
#: failures of the chain that the group-wise registration replaces (the rigidity is then
#: tested against the series mean)
_CONTENT_FLAGS = (
    "non-rigid",
    "lattice-period ambiguity",
    "drift-track alias",
    "reference and pairwise estimates disagree",
    "reference-based estimate unconfirmed",
)
#: a strong pair that disagrees with the reference-based estimate by more than
#: max(_SITE_JUMP_PX, _SITE_JUMP_TOL x the agreement tolerance) px, while the best pair
#: agrees, sits on another lattice site (not noise): the frame is flagged
_SITE_JUMP_PX = 1.0
_SITE_JUMP_TOL = 4.0
#: ... and when that pair's correlation at its own peak exceeds its value at the shift the
#: reference implies by at least this fraction of the peak height (above the median): the
#: pair clearly prefers another site.  A noisy pair at low dose that picks a neighbouring
#: lattice period by chance has both nearly equal (0.03-0.16 on the 120-frame 35-50
#: e⁻/Å² series of test_register_groupwise; 0.22-0.42 on the sublattice jumps of
#: CsCd0.2 series whose Pb columns were reduced)
_SITE_JUMP_MARGIN = 0.2
#: errors (px) at or above this are reported as infinite (an untestable chained step)
_UNBOUNDED_PX = 1e149

#: flags of frames whose reference-based estimate may sit a lattice period or a sublattice
#: off (not merely imprecise, as a non-rigid one): such a frame cannot vouch for a later
#: frame's estimate in the reference/pair agreement test
_SITE_FLAGS = _CONTENT_FLAGS[1:]


@lru_cache(maxsize=8)
def _window(shape: tuple[int, int], alpha: float) -> np.ndarray:
    from scipy.signal.windows import tukey

    wy = tukey(shape[0], alpha) if alpha > 0 else np.ones(shape[0])
    wx = tukey(shape[1], alpha) if alpha > 0 else np.ones(shape[1])
    return np.outer(wy, wx).astype(np.float32)


@lru_cache(maxsize=8)
def _freqs(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    return sfft.fftfreq(shape[0]).astype(np.float32), sfft.rfftfreq(shape[1]).astype(np.float32)


@lru_cache(maxsize=8)
def _lowpass(shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    ky, kx = _freqs(shape)
    k2 = ky[:, None] ** 2 + kx[None, :] ** 2
    w = np.exp(-2.0 * np.pi**2 * sigma_px**2 * k2) if sigma_px > 0 else np.ones_like(k2)
    # Hermitian weights of the half spectrum: interior columns count twice.
    h = np.full(kx.size, 2.0, dtype=np.float32)
    h[0] = 1.0
    if shape[1] % 2 == 0:
        h[-1] = 1.0
    return (w * h[None, :]).astype(np.float32)


@lru_cache(maxsize=8)
def _gauss_lowpass(shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """The Gaussian low-pass of :func:`_lowpass` without the Hermitian weights (what the
    inverse rfft takes), float32."""
    ky, kx = _freqs(shape)
    k2 = ky[:, None] ** 2 + kx[None, :] ** 2
    w = np.exp(-2.0 * np.pi**2 * sigma_px**2 * k2) if sigma_px > 0 else np.ones_like(k2)
    return w.astype(np.float32)


@lru_cache(maxsize=8)
def _hermitian(shape: tuple[int, int]) -> np.ndarray:
    """Hermitian weights of the half spectrum's columns (interior columns count twice)."""
    h = np.full(shape[1] // 2 + 1, 2.0, dtype=np.float32)
    h[0] = 1.0
    if shape[1] % 2 == 0:
        h[-1] = 1.0
    return h


def _ramp_vectors(shape: tuple[int, int], sy: float, sx: float) -> tuple[np.ndarray, np.ndarray]:
    ky, kx = _freqs(shape)
    ey = np.exp(2j * np.pi * ky.astype(np.float64) * sy).astype(np.complex64)
    ex = np.exp(2j * np.pi * kx.astype(np.float64) * sx).astype(np.complex64)
    return ey, ex


def _shift_spectrum(spec: np.ndarray, shape: tuple[int, int], sy: float, sx: float) -> np.ndarray:
    """``spec · _phase_ramp(shape, sy, sx)`` in one pass (no outer product formed)."""
    return ramp_multiply(spec, *_ramp_vectors(shape, sy, sx))


def _phase_ramp(shape: tuple[int, int], sy: float, sx: float) -> np.ndarray:
    """``exp(2πi (ky·sy + kx·sx))`` on the half spectrum (separable: two vectors, one outer
    product), complex64."""
    ky, kx = _freqs(shape)
    ey = np.exp(2j * np.pi * ky.astype(np.float64) * sy).astype(np.complex64)
    ex = np.exp(2j * np.pi * kx.astype(np.float64) * sx).astype(np.complex64)
    return np.outer(ey, ex)


@lru_cache(maxsize=8)
def _k2(shape: tuple[int, int]) -> np.ndarray:
    ky, kx = _freqs(shape)
    return ky[:, None] ** 2 + kx[None, :] ** 2


def _spectrum(frame: np.ndarray, alpha: float, *, half: bool = False) -> np.ndarray:
    """Half spectrum of the windowed, mean-free frame; with ``half`` of its even checkerboard
    pixels only (``(i + j)`` even), the independent half of a single-image split (the
    one-image split of Koho et al., Nat. Commun. 10, 3103 (2019))."""
    f = np.asarray(frame, dtype=np.float32)
    f = (f - np.float32(f.mean())) * _window(f.shape, alpha)
    if half:
        f = f * _checker(f.shape)
    return sfft.rfft2(f, workers=_workers())


@lru_cache(maxsize=8)
def _alias_index(shape: tuple[int, int]) -> np.ndarray:
    return (-(np.arange(shape[0]) + shape[0] // 2)) % shape[0]


def _checker_half(spec: np.ndarray, shape: tuple[int, int]) -> np.ndarray | None:
    """Half spectrum of the even checkerboard pixels (:func:`_spectrum` with ``half``) from
    the frame's full half spectrum, without another FFT: masking by ``(1 + (-1)^(i+j)) / 2``
    gives ``(F(k) + F(k + (M/2, N/2))) / 2``, the second term read from the half spectrum
    by Hermitian symmetry.  None for odd shapes (use :func:`_spectrum`)."""
    m, n = shape
    if m % 2 or n % 2:
        return None
    # F(ky + M/2, kx + N/2) = conj(F(-ky - M/2, N/2 - kx)), kx = 0 .. N/2
    return checker_alias_mean(spec, _alias_index(shape))


def _half_spectrum(
    frame: np.ndarray, spec: np.ndarray, alpha: float, shape: tuple[int, int]
) -> np.ndarray:
    """The checkerboard-half spectrum of ``frame`` whose :func:`_spectrum` is ``spec``."""
    h = _checker_half(spec, shape)
    return _spectrum(frame, alpha, half=True) if h is None else h


@lru_cache(maxsize=8)
def _checker(shape: tuple[int, int]) -> np.ndarray:
    return ((np.add.outer(np.arange(shape[0]), np.arange(shape[1])) % 2) == 0).astype(np.float32)


@lru_cache(maxsize=8)
def _outer_band(shape: tuple[int, int]) -> np.ndarray:
    """Mask of the half spectrum beyond 0.4 cycles/px (noise-dominated for sampled images)."""
    ky, kx = _freqs(shape)
    return (ky[:, None] ** 2 + kx[None, :] ** 2) > 0.16


def _wiener(spec: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Wiener shrinkage ``max(0, 1 - N/P(k))`` of a half spectrum, float32.

    ``P(k)`` is the power ``|F(k)|²`` averaged over 5 × 5 neighbouring frequencies and ``N``
    the white-noise power, the median power beyond 0.4 cycles/px divided by ln 2 (the median
    of an exponential distribution).  Multiplying the cross-spectrum by the weight of the
    reference correlates the moving frame with the Wiener estimate of the noise-free
    reference, the matched filter of shift estimation under white (e.g. shot) noise
    (Wiener, *Extrapolation, Interpolation and Smoothing of Stationary Time Series*, 1949;
    the registration form: Pratt, IEEE Trans. Aerosp. Electron. Syst. 10, 353 (1974)).
    """
    p = power(spec)
    idx = _outer_band_sample(shape)
    # (a subsample of the band is enough for the median)
    noise = float(np.median(p.ravel()[idx])) / np.log(2.0) if idx.size else 0.0
    return wiener_weight(box5(p), noise)


@lru_cache(maxsize=8)
def _outer_band_sample(shape: tuple[int, int]) -> np.ndarray:
    """Flat indices of every 7th frequency of :func:`_outer_band` (row-major order)."""
    return np.flatnonzero(_outer_band(shape))[::7]


class _Corr(NamedTuple):
    """One correlation: shift (px), peak SNR, split-half precision and the weighting used for
    the sub-pixel peak ("whitened" or "wiener")."""

    dy: float
    dx: float
    snr: float
    sigma_px: float = float("nan")
    refine: str = "whitened"


def _peak_margin(
    fa: np.ndarray,
    fb: np.ndarray,
    shape: tuple[int, int],
    own: tuple[float, float],
    alt: tuple[float, float],
    *,
    whitening: float,
    sigma_px: float,
) -> float:
    """How much higher the whitened, low-passed correlation of b against a is at the
    shift ``own`` than at ``alt`` (nearest pixels), in units of the correlation's
    background standard deviation (the unit of the peak SNR)."""
    h, _ = cross_whiten(fa, fb, _gauss_lowpass(shape, sigma_px), whitening)
    c = sfft.irfft2(h, s=shape, workers=_workers())
    m, n = shape
    sub = c[:: max(1, m // 128), :: max(1, n // 128)]
    v_own = c[int(np.rint(own[0])) % m, int(np.rint(own[1])) % n]
    v_alt = c[int(np.rint(alt[0])) % m, int(np.rint(alt[1])) % n]
    return float(v_own - v_alt) / (float(v_own - np.median(sub)) + 1e-30)


def _int_peak(c: np.ndarray, max_shift_px: float | None) -> tuple[int, int, float, float]:
    """Integer peak ``(sy, sx)`` of a circular correlation, its value and SNR."""
    m, n = c.shape
    if max_shift_px is not None:
        iy = np.minimum(np.arange(m), m - np.arange(m))
        ix = np.minimum(np.arange(n), n - np.arange(n))
        mask = (iy[:, None] > max_shift_px) | (ix[None, :] > max_shift_px)
        c = np.where(mask, -np.inf, c)
    py, px = divmod(int(np.argmax(c)), n)
    peak = float(c[py, px])
    sub = c[:: max(1, m // 128), :: max(1, n // 128)]  # background statistics on a subsample
    sub = sub[np.isfinite(sub)]
    snr = (peak - float(np.median(sub))) / (float(sub.std()) + 1e-30)
    return (py - m if py > m // 2 else py), (px - n if px > n // 2 else px), peak, snr


def _whiten(r: np.ndarray, p: float) -> np.ndarray:
    if p <= 0:
        return r
    ar = np.abs(r)
    return r / (ar**p + np.float32(1e-12) * float(ar.max() + 1e-30))


def _correlate_spectra(
    fa: np.ndarray,
    fb: np.ndarray,
    shape: tuple[int, int],
    *,
    whitening: float,
    sigma_px: float,
    upsample: int,
    max_shift_px: float | None,
    wa: np.ndarray | None = None,
    fb_half: np.ndarray | None = None,
    refine: str = "whitened",
    white: tuple[np.ndarray, np.ndarray] | None = None,
) -> _Corr:
    """Shift of b relative to a (peak of sum_r a(r) b(r+s)) and the peak SNR.

    The integer peak and the SNR come from the whitened, low-passed correlation.  With
    ``wa`` (the :func:`_wiener` weight of ``fa``) the sub-pixel peak is refined on the
    whitened correlation (``refine="whitened"``) or on the Wiener-weighted plain
    cross-correlation (``"wiener"``, far less noisy at low dose).  With ``fb_half`` (the
    spectrum of one checkerboard half of b's pixels) the two halves are registered
    separately around the peak; their difference gives the standard error per axis of the
    shift, ``sigma_px`` (``|s₁ - s₂| / √8``: each half has half the counts).
    ``white``: the :func:`~perovstem.insitu._reg_kernels.whitened` spectra of a and b, if
    already computed (the whitening ``R/|R|^p`` of the cross-spectrum factorises).
    """
    # (the half spectra below lack the Hermitian weights: the inverse rfft wants them so,
    # and :func:`_upsampled_peak` applies them with ``weighted=False``)
    lp = _gauss_lowpass(shape, sigma_px)
    use_w = wa is not None and upsample > 1 and refine == "wiener"
    if white is None:
        white = (whitened(fa, whitening), whitened(fb, whitening))
    h, wfull = cross_white(white[0], white[1], lp, fa, fb, wa if use_w else None)
    sy, sx, _, snr = _int_peak(sfft.irfft2(h, s=shape, workers=_workers()), max_shift_px)
    if upsample <= 1:
        return _Corr(float(sy), float(sx), float(snr))
    up = {"weighted": False}
    if wa is None:
        sy, sx = _upsampled_peak(h, shape, float(sy), float(sx), upsample, **up)
        return _Corr(float(sy), float(sx), float(snr))
    if refine == "wiener":
        full = wfull
        halves = None
        if fb_half is not None:
            h1 = cross_weighted(fa, wa, fb_half)
            halves = (h1, full - h1)
    else:
        full = h
        halves = None
        if fb_half is not None:
            halves = (
                cross_whiten(fa, fb_half, lp, whitening)[0],
                cross_whiten(fa, fb - fb_half, lp, whitening)[0],
            )
    y, x = _upsampled_peak(full, shape, float(sy), float(sx), upsample, **up)
    sig = float("nan")
    if halves is not None:
        a = _upsampled_peak(halves[0], shape, y, x, upsample, **up)
        b = _upsampled_peak(halves[1], shape, y, x, upsample, **up)
        sig = float(np.hypot(a[0] - b[0], a[1] - b[1])) / np.sqrt(8.0)
    return _Corr(float(y), float(x), float(snr), sig, refine)


def _outline_shift(
    fa: np.ndarray,
    fb: np.ndarray,
    shape: tuple[int, int],
    max_shift_px: float | None,
    *,
    recent: np.ndarray | None = None,
) -> tuple[float, float, float]:
    """Integer shift of b relative to a from the low-frequency (crystal outline) content only.

    The strongest lattice reflection of ``fa`` is the maximum of ``|k|² |F(k)|²`` (the
    ``|k|²`` factor flattens the outline's decay) beyond two cycles per field; the
    correlation is low-passed with a Gaussian of ``0.7 / |k_L|`` px, which suppresses that
    lattice period by e⁻¹⁰, so its peak cannot sit one lattice period off.  The images'
    gradients are correlated (cross-spectrum × ``|k|²``; gradient correlation, Argyriou &
    Vlachos, Electron. Lett. 39, 980 (2003)): the plain correlation of a mean-free crystal
    is a ramp as wide as the crystal, whose apex the window and any change of the outline
    (a degrading surface) move by more than half a lattice period when the crystal fills
    most of the field; the gradient correlation peaks as narrowly as the low-pass, located
    by the edges themselves.  ``recent``: a spectrum of the same reference frame whose
    outline is correlated with b instead of a's (the lattice period still comes from
    ``fa``): the mean of the last few reference frames, whose outline is b's when a
    crystal changes faster than the running reference follows.  Returns the shift
    ``(dy, dx)`` and the lattice period ``1/|k_L|``, px.
    """
    k2 = _k2(shape)
    p = power(fa) * k2
    p[k2 < (2.0 / min(shape)) ** 2] = 0.0
    period = 1.0 / float(np.sqrt(k2.flat[int(np.argmax(p))]))
    c = sfft.irfft2(
        cross_weighted(fa if recent is None else recent, _outline_lowpass(shape, period), fb),
        s=shape,
        workers=_workers(),
    )
    oy, ox, _, _ = _int_peak(c, max_shift_px)
    return float(oy), float(ox), period


@lru_cache(maxsize=8)
def _outline_lowpass(shape: tuple[int, int], period: float) -> np.ndarray:
    """The gradient-correlation low-pass of :func:`_outline_shift` for a lattice period
    (px): ``exp(-2π² (0.7 period)² k²) · |k|²``, float32 (cached: the strongest
    reflection of a series keeps its period, so the same few arrays serve every frame)."""
    ky, kx = _freqs(shape)
    a = 2.0 * np.pi**2 * (0.7 * period) ** 2
    lp = np.outer(np.exp(-a * ky**2), np.exp(-a * kx**2)).astype(np.float32) * _k2(shape)
    lp.setflags(write=False)
    return lp


def _anchor_disagreement(
    anchor: tuple[np.ndarray, np.ndarray, np.ndarray],
    spec: np.ndarray,
    shape: tuple[int, int],
    shift: tuple[float, float],
    corr_kw: dict[str, Any],
    spec_white: np.ndarray,
) -> float:
    """Distance (px) between ``shift`` (against the running reference, frame-0 coordinates)
    and the shift against the frozen early-frame reference ``(spectrum, Wiener weight,
    whitened spectrum)``; ``spec_white``: the frame's whitened spectrum."""
    c = _correlate_spectra(
        anchor[0],
        spec,
        shape,
        wa=anchor[1],
        refine="wiener",
        white=(anchor[2], spec_white),
        **corr_kw,
    )
    return float(np.hypot(c.dy - shift[0], c.dx - shift[1]))


def _outline_jump(
    fa: np.ndarray,
    fb: np.ndarray,
    shape: tuple[int, int],
    shift: tuple[float, float],
    max_shift_px: float | None,
    *,
    recent: np.ndarray | None = None,
) -> float:
    """Distance (px) of ``shift`` from the outline registration when it exceeds half a
    lattice period and 2 px (a neighbouring lattice period was picked), else 0.

    ``recent``: the mean spectrum of the last :data:`_OUTLINE_RECENT` frames of the
    running reference ``fa`` (aligned as in it); b's outline is registered to it
    (:func:`_outline_shift`), the lattice period taken from ``fa``.  A crystal that loses
    most of its volume within the reference window leaves the full reference's outline
    that of the old crystal: against it the outline of frame 20 of the degrading 45 Å
    crystal (``test_degrading_outline…``) peaked 8-13 px from its true shift."""
    oy, ox, period = _outline_shift(fa, fb, shape, max_shift_px, recent=recent)
    dist = float(np.hypot(shift[0] - oy, shift[1] - ox))
    return dist if dist > max(0.5 * period, 2.0) else 0.0


#: the reference frames (the most recent ones) whose outline the outline check registers
#: a frame to (:func:`_outline_jump`); only where they lie among the frame's last
#: 2 x _OUTLINE_RECENT frames (else the whole running reference's outline: after a run of
#: flagged frames, e.g. a crystal gone and clusters hopping, the last reference frames
#: show a content no more like the frame's than the whole reference's is)
_OUTLINE_RECENT = 4

#: the drift-track check (:func:`_track_alias`): reliable frames the linear track is fitted
#: to (the last ones), the deviation from it that makes a frame suspect (px, and in units
#: of the prediction's standard error) and the largest margin (fraction of the peak height
#: above the median) by which the registration may prefer its own site over the
#: correlation's local peak near the track for the two to count as rival sites
_TRACK_FRAMES = 8
_TRACK_MIN_PX = 2.0
_TRACK_Z = 5.0
_TRACK_ALIAS_MARGIN = 0.5


def _track_prediction(hist: list[tuple[int, np.ndarray]], k: int) -> tuple[np.ndarray, float]:
    """Drift of frame ``k`` predicted by a straight line (constant velocity) fitted to the
    provisional drifts ``hist`` [(frame, (dy, dx))] of the last reliable frames, and its
    standard error per axis (px): the residual scatter of the fit (pooled over both axes,
    at least 0.1 px) times the prediction factor ``sqrt(1 + 1/n + (k - t̄)²/S_tt)``."""
    t = np.array([j for j, _ in hist], float)
    y = np.array([v for _, v in hist], float)
    tm, ym = t.mean(), y.mean(axis=0)
    stt = float(np.sum((t - tm) ** 2))
    slope = ((t - tm) @ (y - ym)) / stt
    fit = ym + np.outer(t - tm, slope)
    s2 = float(np.sum((y - fit) ** 2)) / (2.0 * (len(t) - 2)) if len(t) > 2 else 0.0
    s = max(np.sqrt(s2), 0.1)
    pred = ym + (k - tm) * slope
    return pred, s * float(np.sqrt(1.0 + 1.0 / len(t) + (k - tm) ** 2 / stt))


def _on_track(
    shift: tuple[float, float], hist: list[tuple[int, np.ndarray]], k: int, jump_px: float
) -> bool:
    """Whether the drift track of the reliable frames (:func:`_track_prediction`, >= 3
    frames) supports ``shift`` against a rival registration ``jump_px`` away: ``shift``
    lies within max(:data:`_TRACK_MIN_PX`, 3σ) of the track and that radius is less than
    half ``jump_px`` (the rival, e.g. a crystal-outline registration thrown off by a
    changing outline, is then off the track)."""
    if len(hist) < 3:
        return False
    pred, sig = _track_prediction(hist, k)
    near = max(_TRACK_MIN_PX, 3.0 * sig)
    return near < 0.5 * jump_px and float(np.hypot(*(np.asarray(shift) - pred))) <= near


def _track_alias(
    ref: np.ndarray,
    spec: np.ndarray,
    shape: tuple[int, int],
    shift: tuple[float, float],
    hist: list[tuple[int, np.ndarray]],
    k: int,
    *,
    whitening: float,
    sigma_px: float,
    upsample: int,
) -> tuple[float, float, float] | None:
    """Rival site of a registration that jumps off the drift track of the reliable frames.

    When the registration ``shift`` of frame ``k`` against the reference lies more than
    max(:data:`_TRACK_MIN_PX`, :data:`_TRACK_Z` σ) from the straight-line track of the
    last reliable frames (:func:`_track_prediction`), the whitened correlation is searched
    for local maxima within max(4, 5σ) px of the track and nearer to it than half the
    deviation.  Such a peak at least half as high above the median as the chosen one
    (:data:`_TRACK_ALIAS_MARGIN`; the nearest to the track when there are several) is a
    rival site: the two differ by a lattice alias (a lattice period, or half a cell
    diagonal when the brightest sublattice has changed, e.g. the Pb columns of an alloyed
    crystal reduced, the Cs sublattice now the brightest), and continuity of the drift
    favours the one on the track.  A real jump of the specimen has no correlation peak near the old track.
    Returns the rival site (refined as the registration is: Wiener-weighted sub-pixel peak,
    px) and its distance from ``shift``, or None.
    """
    if len(hist) < 3:
        return None
    pred, sig = _track_prediction(hist, k)
    dev = float(np.hypot(shift[0] - pred[0], shift[1] - pred[1]))
    if dev <= max(_TRACK_MIN_PX, _TRACK_Z * sig):
        return None
    radius = min(max(4.0, 5.0 * sig), 0.25 * min(shape))
    h, _ = cross_whiten(ref, spec, _gauss_lowpass(shape, sigma_px), whitening)
    c = sfft.irfft2(h, s=shape, workers=_workers())
    m, n = shape
    med = float(np.median(c[:: max(1, m // 128), :: max(1, n // 128)]))
    v_own = float(c[int(np.rint(shift[0])) % m, int(np.rint(shift[1])) % n])
    # local maxima of the correlation within ``radius`` of the track, at least half as high
    # above the median as the chosen peak; the nearest to the track is the rival site
    r = int(np.ceil(radius))
    gy = np.arange(int(np.rint(pred[0])) - r, int(np.rint(pred[0])) + r + 1)
    gx = np.arange(int(np.rint(pred[1])) - r, int(np.rint(pred[1])) + r + 1)
    win = c[np.ix_(gy % m, gx % n)]
    is_max = ndimage.maximum_filter(win, 3, mode="nearest") == win
    is_max[[0, -1], :] = is_max[:, [0, -1]] = False  # the border: no peak seen
    yy, xx = np.meshgrid(gy, gx, indexing="ij")
    dist = np.hypot(yy - pred[0], xx - pred[1])
    ok = (
        is_max
        & (dist <= radius)
        & (dist < 0.5 * dev)
        & (v_own - win <= _TRACK_ALIAS_MARGIN * (v_own - med))
    )
    if not ok.any():
        return None  # no rival peak near the track: a real jump, or noise
    best = np.flatnonzero(ok.ravel())[int(np.argmin(dist[ok]))]
    cy, cx = float(yy.flat[best]), float(xx.flat[best])
    # the rival site refined like the registration itself (Wiener-weighted sub-pixel peak)
    g = cross_weighted(ref, _wiener(ref, shape), spec)
    cy, cx = _upsampled_peak(g, shape, np.round(cy), np.round(cx), upsample, weighted=False)
    return float(cy), float(cx), float(np.hypot(shift[0] - cy, shift[1] - cx))


@lru_cache(maxsize=16)
def _dft_grid(shape: tuple[int, int], upsample: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Offsets (px) of the fine grid of :func:`_upsampled_peak` and their DFT kernels
    ``exp(2πi·off·ky)`` (rows) and ``exp(2πi·kx·off)`` (columns), complex64."""
    ky, kx = _freqs(shape)
    half = int(np.ceil(1.5 * upsample))
    off = np.arange(-half, half + 1, dtype=np.float64) / upsample
    ey = np.exp(2j * np.pi * np.outer(off, ky.astype(np.float64))).astype(np.complex64)
    ex = np.exp(2j * np.pi * np.outer(kx.astype(np.float64), off)).astype(np.complex64)
    return off, ey, ex


def _upsampled_peak(
    h: np.ndarray,
    shape: tuple[int, int],
    sy0: float,
    sx0: float,
    upsample: int,
    *,
    weighted: bool = True,
) -> tuple[float, float]:
    """Refine the peak on a 1/upsample grid over +-1.5 px by a matrix-multiply DFT.

    ``h``: half spectrum of the correlation, with the Hermitian column weights
    (``weighted``) or without them (applied here).  The kernels are the cached grid
    offsets' times the ramps to ``(sy0, sx0)``: ``exp(2πi k (s0 + off))``.
    """
    off, ey0, ex0 = _dft_grid(shape, int(upsample))
    vy, vx = _ramp_vectors(shape, sy0, sx0)
    if not weighted:
        vx = vx * _hermitian(shape)
    gy, gx = sy0 + off, sx0 + off
    ey = ey0 * vy[None, :]
    ex = ex0 * vx[:, None]
    c = np.real(ey @ h @ ex)
    iy, ix = np.unravel_index(int(np.argmax(c)), c.shape)
    # parabolic interpolation on the fine grid
    dy = dx = 0.0
    if 0 < iy < c.shape[0] - 1:
        a, b, d = c[iy - 1, ix], c[iy, ix], c[iy + 1, ix]
        den = a - 2 * b + d
        dy = 0.5 * (a - d) / den if den < 0 else 0.0
    if 0 < ix < c.shape[1] - 1:
        a, b, d = c[iy, ix - 1], c[iy, ix], c[iy, ix + 1]
        den = a - 2 * b + d
        dx = 0.5 * (a - d) / den if den < 0 else 0.0
    return gy[iy] + dy / upsample, gx[ix] + dx / upsample


def _rigidity_flag(n_sub: int, nonrigid_px: float, tol_px: float, counted: str) -> str:
    """Flag of a frame's rigidity test ("" when it passed): fewer than two sub-fields
    correlate (``counted`` says how many, against what), or their shifts differ from the
    whole-field shift by more than ``tol_px``."""
    if n_sub < 2:
        return f"rigidity not verifiable: {counted}"
    if nonrigid_px > tol_px:
        return (
            f"non-rigid motion: sub-field shifts differ by {nonrigid_px:.2g} px "
            f"(> {tol_px:g}) from the whole-field shift"
        )
    return ""


def _subfield_disagreement(
    ref_spec: np.ndarray,
    frame: np.ndarray,
    shape: tuple[int, int],
    shift: tuple[float, float],
    *,
    tiles: int,
    min_snr: float,
    corr: dict[str, Any],
    noise_free_below: float = np.inf,
) -> tuple[float, float, int]:
    """Rigidity test: how far the sub-field shifts lie from the whole-field shift.

    The reference (a half spectrum in the coordinates of ``frame`` minus ``shift``) is moved
    by ``shift``; the box that holds the reference's structure (its local signal energy above
    the median, > 1/4 of the maximum; at least ``32 × tiles`` px a side) is cut into
    ``tiles × tiles`` sub-fields in both images, and each pair of sub-fields is
    phase-correlated.  For a rigid specimen every sub-field that carries signal
    (peak SNR >= ``min_snr``) gives the same, zero, residual shift within its noise; moving
    objects (hopping clusters on a featureless support) give sub-field shifts that scatter.
    The noise of each sub-field shift is measured by a checkerboard split of its pixels
    (:func:`_correlate_spectra`): ``|s|² - 2σ²`` has zero mean for a rigid sub-field, so
    ``sqrt(max(0, median(|s|² - 2σ²)))`` estimates the non-rigid displacement free of the
    shot noise that made the plain median distance flag rigid frames at low dose.
    The split is made only when the plain median distance exceeds ``noise_free_below``
    (e.g. the tolerance; the plain median is returned otherwise, an upper bound).
    Returns that noise-corrected displacement, the plain median distance (px; NaN with fewer
    than two usable sub-fields) and the number of usable sub-fields.
    """
    ky, kx = _freqs(shape)
    ref = sfft.irfft2(
        _shift_spectrum(ref_spec, shape, -shift[0], -shift[1]), s=shape, workers=_workers()
    )
    f = np.asarray(frame, dtype=np.float32)
    f = (f - np.float32(f.mean())) * _window(shape, corr["window_alpha"])
    (y0, y1), (x0, x1) = _structure_box(ref, tiles)
    ty, tx = (y1 - y0) // tiles, (x1 - x0) // tiles
    opts = {
        "whitening": corr["whitening"],
        "sigma_px": corr["sigma_px"],
        "upsample": corr["upsample"],
        "max_shift_px": None,
        "refine": corr.get("refine", "whitened"),
    }
    used, dev = [], []
    for i in range(tiles):
        for j in range(tiles):
            sl = (
                slice(y0 + i * ty, y0 + (i + 1) * ty),
                slice(x0 + j * tx, x0 + (j + 1) * tx),
            )
            a, b = ref[sl], f[sl]
            if frame_quality(a) or frame_quality(b):
                continue
            sa, sb = _spectrum(a, corr["window_alpha"]), _spectrum(b, corr["window_alpha"])
            wa = _wiener(sa, (ty, tx))
            c = _correlate_spectra(sa, sb, (ty, tx), wa=wa, **opts)
            if c.snr >= min_snr:
                used.append((sa, sb, wa, b))
                dev.append(float(np.hypot(c.dy, c.dx)))
    if len(dev) < 2:
        return float("nan"), float("nan"), len(dev)
    raw = float(np.median(dev))
    if raw <= noise_free_below:
        # the plain median bounds the noise-corrected value: no need to split
        return raw, raw, len(dev)
    excess = []
    for sa, sb, wa, b in used:
        half = _half_spectrum(b, sb, corr["window_alpha"], (ty, tx))
        c = _correlate_spectra(sa, sb, (ty, tx), wa=wa, fb_half=half, **opts)
        excess.append(c.dy**2 + c.dx**2 - 2.0 * np.nan_to_num(c.sigma_px) ** 2)
    return float(np.sqrt(max(0.0, np.median(excess)))), raw, len(dev)


def _structure_box(img: np.ndarray, tiles: int, min_tile: int = 32) -> tuple:
    """Bounding box ``((y0, y1), (x0, x1))`` of the structured part of an image, px."""
    m, n = img.shape
    b = max(1, min(m, n) // 128)
    mb, nb = m // b, n // b
    e = block_energy(img, b)
    e = ndimage.uniform_filter(e, 3)
    e = np.clip(e - np.median(e), 0, None)
    out = []
    for axis, size, nblk in ((1, m, mb), (0, n, nb)):
        prof = e.max(axis=axis)
        hit = np.flatnonzero(prof > 0.25 * prof.max()) if prof.max() > 0 else np.arange(nblk)
        lo, hi = int(hit[0]) * b - b, (int(hit[-1]) + 1) * b + b
        need = min(size, tiles * min_tile)
        if hi - lo < need:
            c = (lo + hi) // 2
            lo, hi = c - need // 2, c - need // 2 + need
        lo, hi = max(0, lo), min(size, hi)
        if hi - lo < need:
            lo, hi = (0, need) if lo == 0 else (size - need, size)
        out.append((lo, hi))
    return tuple(out)


def _check_options(upsample: int, whitening: float, smooth_px: float, window_alpha: float) -> None:
    if int(upsample) != upsample or upsample < 1 or upsample > 1000:
        raise ParameterError(f"`upsample` must be an integer in [1, 1000], got {upsample!r}")
    check_range("whitening", whitening, 0.0, 1.0)
    check_positive("smooth_px", smooth_px, allow_zero=True)
    check_range("window_alpha", window_alpha, 0.0, 1.0)


def phase_correlate(
    reference: np.ndarray,
    moving: np.ndarray,
    *,
    upsample: int = 20,
    whitening: float = 0.3,
    smooth_px: float = 1.0,
    window_alpha: float = 0.25,
    max_shift_px: float | None = None,
) -> tuple[float, float, float]:
    """Sub-pixel shift of ``moving`` relative to ``reference`` by phase correlation.

    Parameters
    ----------
    reference, moving : (M, N) array_like
        Two frames of the same shape.
    upsample : int
        Sub-pixel refinement factor (precision ≈ 1/upsample px before parabolic refinement).
    whitening : float
        Exponent ``p`` of the spectral normalisation ``R/|R|^p``: 1 is pure phase correlation,
        0 plain cross-correlation; intermediate values are robust at low dose.
    smooth_px : float
        Gaussian low-pass of the correlation, px (suppresses shot noise at high frequency).
    window_alpha : float
        Tukey window taper fraction (0: none), removes edge discontinuities.
    max_shift_px : float, optional
        Largest shift searched, px.

    Returns
    -------
    dy_px, dx_px : float
        A feature at ``(i, j)`` in ``reference`` is at ``(i + dy, j + dx)`` in ``moving``.
    peak_snr : float
        Height of the correlation peak above the median in units of its standard deviation.
    """
    refuse_text_numbers(locals())
    _check_options(upsample, whitening, smooth_px, window_alpha)
    a = np.asarray(reference)
    b = np.asarray(moving)
    if a.ndim != 2 or a.shape != b.shape:
        raise DataError(
            f"`reference` and `moving` must be 2-D of equal shape, got {a.shape} and {b.shape}"
        )
    for name, f in (("reference", a), ("moving", b)):
        why = frame_quality(f)
        if why:
            raise DataError(f"`{name}` is unusable: {why}")
    c = _correlate_spectra(
        _spectrum(a, window_alpha),
        _spectrum(b, window_alpha),
        a.shape,
        whitening=whitening,
        sigma_px=smooth_px,
        upsample=int(upsample),
        max_shift_px=max_shift_px,
    )
    return c.dy, c.dx, c.snr


#: share of the sub-field disagreement (``nonrigid_px``) added in quadrature to the drift
#: error per axis: 1/√4 for the 2×2 sub-fields whose mean the whole-field shift is (scaled
#: to 1/subfields for other ``subfields``).  On 8
#: simulated degrading series (100–3000 e⁻/Å² per frame; 4 used to check the value, 4 held
#: out) the least-squares error alone covered 0.33 / 0.42 of the frame errors at 1σ and
#: 0.62 / 0.72 at 2σ (per axis, reliable frames), with this term 0.67 / 0.69 and 0.94 / 0.92;
#: on 4 smaller fields (384–448 px, the test's) 0.24–0.50 → 0.83–0.89 at 1σ: conservative
#: there, since the plain sub-field median also holds the sub-fields' shot noise
CONTENT_ERR_SCALE = 0.5


def _robust_solve(
    n: int,
    pairs: np.ndarray,
    valid: np.ndarray,
    threshold: float,
    floor: float = 0.01,
    n_iter: int = 20,
    extra: tuple[list, list, list, np.ndarray, np.ndarray] | None = None,
    row_weight: np.ndarray | None = None,
    row_sigma: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Cumulative drift from pairwise shifts by IRLS with Tukey weights.

    ``pairs`` rows: (a, b, dy, dx, snr).  ``row_weight`` (one per pair and extra row) scales
    the rows; rows with weight > 1 (anchors) are left out of the residual scale.
    ``row_sigma`` (px, one per pair and extra row): the expected noise of each row; rows
    are then standardised (weighted least squares) and the returned scale is in units of
    ``row_sigma`` (about 1 when the noise model holds).  Returns drift (n, 2), its standard
    error (n, 2), per-pair outlier flag and the robust residual scale (px, or units of
    ``row_sigma``).
    """
    a = pairs[:, 0].astype(int)
    b = pairs[:, 1].astype(int)
    meas = pairs[:, 2:4]
    p = len(pairs)
    rows = np.repeat(np.arange(p), 2)
    cols = np.column_stack([a, b]).ravel()
    vals = np.tile([-1.0, 1.0], p)
    A = sp.csr_matrix((vals, (rows, cols)), shape=(p, n))
    if extra is not None and len(extra[3]):
        # running-reference rows: d_k - mean(d_j in window) = measured
        er, ec, ev, emeas, evalid = extra
        A = sp.vstack([A, sp.csr_matrix((ev, (er, ec)), shape=(len(emeas), n))]).tocsr()
        meas = np.vstack([meas, emeas])
        valid = np.concatenate([valid, evalid])
    a0 = 1.0  # the anchor d_0 = 0 weighs as much as a typical row
    if row_sigma is not None:
        rs = np.asarray(row_sigma, float)
        A = sp.diags(1.0 / rs) @ A
        meas = meas / rs[:, None]
        a0 = 1.0 / float(np.median(rs[valid])) if valid.any() else 1.0
        floor = floor * a0
    # weak first-difference prior: frames without measurements are linearly interpolated
    reg = sp.diags([-np.ones(n - 1), np.ones(n - 1)], [0, 1], shape=(n - 1, n)).tocsr()
    lam = 1e-6
    rw = np.ones(len(valid)) if row_weight is None else np.asarray(row_weight, float)
    w = np.where(valid, rw, 0.0)
    in_scale = valid & (rw <= 1.0)
    scale = 0.05
    anchor = sp.csr_matrix(([a0], ([0], [0])), shape=(1, n))
    for _ in range(n_iter):
        W = sp.diags(w)
        N = (A.T @ W @ A + lam * (reg.T @ reg) + anchor.T @ anchor).tocsc()
        rhs = A.T @ (w[:, None] * meas)
        d = np.column_stack([spla.spsolve(N, rhs[:, 0]), spla.spsolve(N, rhs[:, 1])])
        res = np.hypot(*(meas - A @ d).T)
        if in_scale.sum() >= 3:
            # |r| of a 2-D Gaussian residual is Rayleigh: median = sigma * sqrt(2 ln 2);
            # the median over all valid pairs is robust to < 50 % outliers.
            scale = max(float(np.median(res[in_scale])) / 1.1774, floor)
        c = threshold * scale
        w_new = np.where(valid & (res < c), rw * (1 - (res / c) ** 2) ** 2, 0.0)
        if np.allclose(w_new, w, atol=1e-4):
            w = w_new
            break
        w = w_new
    d = d - d[0]
    outlier = valid & (res >= threshold * scale)
    # standard errors: scale^2 * diag(N^-1) (dense inverse only for moderate lengths)
    if n <= 3000:
        W = sp.diags(np.where(w > 0, rw, 0.0))
        N = (A.T @ W @ A + lam * (reg.T @ reg) + anchor.T @ anchor).toarray()
        var = np.clip(np.diag(np.linalg.inv(N)), 0, None)
        err = np.sqrt(var)[:, None] * scale * np.ones((1, 2))
    else:
        err = np.full((n, 2), np.nan)
    return d, err, outlier[:p], scale


def register_drift(
    series: Any,
    *,
    max_lag: int = 3,
    upsample: int = 20,
    whitening: float = 0.3,
    smooth_px: float = 1.0,
    window_alpha: float = 0.25,
    max_shift_px: float | None = None,
    outlier_threshold: float = 4.0,
    min_snr: float = 5.0,
    reference_window: int = 16,
    reliable_tol_px: float = 0.25,
    subfields: int = 2,
    pixel_size_A: float | None = None,
    groupwise: str = "auto",
    groupwise_iter: int = 2,
) -> pd.DataFrame:
    """Cumulative rigid drift of every frame of an in-situ series.

    Each frame is phase-correlated with the ``max_lag`` previous usable frames; the pairwise
    shifts are combined by robust least squares (see module docstring).  Unusable frames
    (NaN/inf, constant or all-zero) are skipped, reported, and their drift interpolated.

    Parameters
    ----------
    series : Series, (T, M, N) array (numpy, dask, zarr) or sequence of (M, N) arrays
        Frames; streamed, never loaded all at once.
    max_lag : int
        Number of previous frames each frame is registered to (1: plain chain).
    upsample, whitening, smooth_px, window_alpha, max_shift_px
        Phase-correlation options, see :func:`phase_correlate`.
    outlier_threshold : float
        Pair shifts whose residual exceeds this many robust standard deviations are rejected.
    min_snr : float
        Pairs with a correlation peak SNR below this are discarded before the solve.
    reference_window : int
        Each frame is also registered to the running average of the last
        ``reference_window`` frames aligned on frame 0 (their provisional drift): at low dose
        the averaged reference has √W less noise, so chained errors grow far more slowly.
        0 disables.
    reliable_tol_px : float
        Tolerance of the reliability tests, px: a frame's drift is *reliable* when its
        correlation with the reference (the running reference, or the previous frame when
        ``reference_window`` is 0) has a peak SNR >= ``min_snr``, the ``subfields²``
        sub-fields of the frame agree with the whole-field shift (median distance
        <= ``reliable_tol_px``, at least two sub-fields above ``min_snr``: the specimen moves
        rigidly), and the reference-based estimate agrees within ``reliable_tol_px`` with
        the pairwise one from at least one of the ``max_lag`` previous frames (their
        provisional drift plus the pair shift).  A previous frame flagged for a
        lattice-period ambiguity or a reference/pair disagreement does not count (its own
        estimate may sit on another lattice site); a frame whose strong pairs all lead to
        such frames is flagged "reference-based estimate unconfirmed".  A frame is also
        flagged when one strong pair from a frame that can vouch lands a lattice site away
        from the reference-based estimate (> max(1 px, 4 x the agreement tolerance)) and
        clearly prefers that site (its correlation there exceeds the value at the
        reference-implied shift by >= 20 % of its peak height): the column contrast has
        changed between the frames (e.g. the Pb columns of an alloyed crystal reduced, the
        Cs sublattice half a cell diagonal away now the brightest), so the reference and
        pairs from frames of the old contrast may agree on the wrong site.
    subfields : int
        Sub-fields per axis of the rigidity test (>= 2).
    pixel_size_A : float, optional
        Pixel size, Å (taken from a :class:`Series`); adds ``dy_A, dx_A`` columns.
    groupwise : {"auto", "always", "never"}
        Group-wise registration of the frames the running reference could not register
        reliably ("auto": run when at least one usable frame is unreliable; "always"; or
        "never").  See Notes.
    groupwise_iter : int
        Measuring passes of the group-wise registration (each a streamed pass over the
        series; the first builds the mean from the running-reference estimates).

    Returns
    -------
    drift : DataFrame
        One row per frame: ``frame, dy_px, dx_px, dy_err_px, dx_err_px, [dy_A, dx_A],
        n_pairs, n_outlier_pairs, peak_snr, ref_snr, nonrigid_px,
        pair_ref_disagreement_px, drift_reliable, drift_flag, skipped, reason,
        ref_sigma_px, anchor_disagreement_px``.
        ``peak_snr``/``ref_snr``: correlation peak height above the median of the correlation
        in units of its standard deviation, against the previous frame / the running
        reference; ``nonrigid_px``: the sub-field disagreement above (noise-corrected by
        the sub-fields' split-half errors when the plain median exceeds
        ``reliable_tol_px``); ``ref_sigma_px``: standard error per axis of the
        reference-based shift from the frame's checkerboard split (pooled over the last 16
        frames; it sees the frame's noise, not the reference's nor systematic errors);
        ``anchor_disagreement_px``: distance between the shift against the running
        reference and that against the first full reference, frozen (the anchor);
        ``drift_flag``: why a frame is unreliable ("" when reliable).  ``attrs`` carries
        ``residual_rms_px`` (robust scale of the pair residuals), ``n_skipped``,
        ``n_unreliable``, ``unreliable_frames``, ``groupwise`` (whether the group-wise
        registration ran) and the options.  When it ran, also the columns ``gw_snr`` (peak
        SNR against the leave-one-out series mean), ``gw_sigma_px`` (standard error per
        axis of that measurement: split halves plus the systematic term, NaN for frames
        left out) and ``gw_z`` (2-D standardised
        distance of the measurement from the smoothed track; NaN for frames left out), and
        ``attrs`` ``groupwise_process_var_px2`` (per axis: position and velocity random-walk
        and jitter variances per frame, px²), ``groupwise_n_outliers``,
        ``groupwise_sigma_limit_px``, ``groupwise_systematic_px`` (see Notes).

    Notes
    -----
    The drift of the reliable frames is solved from the measurements among reliable frames
    only (pairs and running-reference rows), and only reliable frames enter the running
    reference, so a stretch without rigid content (e.g. after the crystal has gone, only
    mobile clusters on a featureless support) cannot drag the reference or the reliable
    frames with it; a reliable frame with a measurement off that solution by more than
    max(``reliable_tol_px``, ``outlier_threshold`` robust σ) is flagged and the solve repeated.
    The least-squares rows are weighted by their split-half noise (a reference row by the
    frame's, a pair row by √3 × the larger of its two frames'), and the gross-contradiction
    threshold of each row is max(``reliable_tol_px``, ``outlier_threshold`` × its robust
    noise); the pair-vs-reference agreement test likewise allows 4√3 split-half σ.
    A frame whose lattice registration lies more than half a lattice period (and 2 px) from
    its crystal-outline registration is flagged (lattice-period ambiguity); its chained
    step is unbounded.  The outline flag is not raised when the straight-line drift track
    of the last 8 reliable frames (>= 3) supports the lattice registration (within
    max(2 px, 3σ) of it, less than half the distance to the outline registration).
    Drift-track alias check: a frame whose reference registration passed the other tests
    but lies more than max(2 px, 5σ) from that track, while the correlation has a local
    peak near the track (within max(4 px, 5σ), nearer than half the deviation) at least half
    as high above the median as the chosen one, is flagged "drift-track alias" (the two
    peaks differ by a lattice alias: a period, or half a cell diagonal when the brightest
    sublattice changes, e.g. the Pb columns of an alloyed crystal reduced, the Cs sublattice
    half a cell diagonal away then the brightest; a real jump of the specimen leaves no peak
    near the old track).  Its reference measurement is moved to the site on the track, the
    site extends the track, its pairs that land nearer the rejected site are left out, and
    if its final drift is still more than 1 px from the track's site its error is raised
    to the distance to the farther of the two sites.
    A running reference inherits the errors of the frames it averages and nothing pulls
    it back, so over hundreds of frames it can drift (0.28 px over the last 100 of a
    1000-frame benchmark series); every frame is therefore also registered to the first
    full reference, frozen (the anchor; Wiener-weighted), and flagged when the two
    estimates differ by more than ``reliable_tol_px / 2``.
    Known limitation: late in a short series of a small, degrading crystal (reference,
    anchor and pairs agree) a reliable frame can be 0.25-0.36 px off (3 of 6 test seeds,
    1-2 frames of 40).  Unreliable frames are then chained from their pairwise
    shifts (and, when they passed the per-frame tests, their reference rows), with the
    reliable frames held fixed, and flagged; their ``dy_err_px, dx_err_px`` add, to the
    least-squares error, the sub-field disagreement of every unreliable step since the last
    reliable frame in quadrature (the sub-field disagreement of the frame against the previous
    one, at least ``reliable_tol_px``; infinite when that cannot be tested): an uncertainty
    that grows along the unreliable stretch; it is indicative only.
    Every frame's ``dy_err_px, dx_err_px`` finally adds ``CONTENT_ERR_SCALE`` (½) ×
    ``nonrigid_px`` in quadrature: content that changes between frames moves the
    correlation peak, an error the residuals and the split-half noise do not see (without
    it the errors covered 33–42 % of the frames at 1σ on simulated degrading series).

    Group-wise registration (``groupwise``): every usable frame is measured against the sum
    of all other usable frames, each moved by its current drift (first pass: Wiener-weighted
    sub-pixel peak against the sum built during the running-reference pass; last pass:
    maximum Poisson likelihood of the frame's counts against the raw-frame sum rebuilt from
    those measurements, within 3 px of their smoothed track), with its standard error from
    the same estimator on the frame's checkerboard split halves (pooled over neighbouring
    frames; against the simulator truth the measurement error is 1.0-1.15 of it on the
    35 e⁻/Å² per frame benchmark series).  The split halves see the shot noise only, not
    a frame's content differing from the series mean (a degrading crystal, moving
    clusters: ~0.05 px on late frames at 350 e⁻/Å² per frame, 3 x the split-half error);
    where at least 8 frames were also registered reliably by the running reference, the
    scatter of the two estimates' difference beyond their claimed errors is added to every
    group-wise measurement as a systematic error (all of it charged to the group-wise
    side: conservative).  A Rauch–Tung–Striebel smoother (Rauch, Tung & Striebel, AIAA J. 3, 1445
    (1965)) with a position + velocity random walk plus white per-frame jitter (variances
    by maximum marginal likelihood of the innovations) gives each frame the posterior
    estimate and error of its position; a measurement more than 3.5σ (2-D) from the
    smoothed track (e.g. a lattice-period jump) is rejected and the frame takes the track
    and is flagged.  Jitter is real motion: it is followed, not smoothed away, and a frame
    is reliable only when its 2-D posterior error (including the error of the frame-0
    gauge) is at most ``reliable_tol_px / 2.5`` (a Gaussian error then exceeds
    ``reliable_tol_px`` with probability ≤ e^-6.25 = 0.2 %).
    Frames that the running reference registered reliably keep their drift when the two
    estimates agree (within max(``reliable_tol_px``/2, the 1 % point of the combined
    error); the group-wise solution is moved onto them by its weighted mean offset);
    otherwise they are flagged: with the group-wise drift when the two differ by less than
    max(1 px, 4 ``reliable_tol_px``), with the running-reference drift (which passed every
    test, the series mean may blend two column contrasts) when by more, a lattice site.
    Every frame the group-wise registration flags reports an error per axis of at least
    the distance between the two estimates.  A frame that the running reference measured
    but could not vouch for (inconsistent, imprecise, rigidity tested against the series
    mean only) and whose track the smoother cannot check (a neighbouring frame without a
    group-wise measurement) is reliable only when its group-wise estimate agrees with its
    running-reference measurement as a reliable frame's must (max(``reliable_tol_px``/2,
    the 1 % point of the two errors)), after taking out the difference the frames within
    8 frames share (the running reference's own slow drift); otherwise it is flagged, with
    an error reaching the chained estimate's error bound (crystals destroyed part-way:
    cluster-only frames had been rescued 5-24 px off with ~0.1 px posterior errors).
    A frame between two frames whose content failed a test is flagged too, with an error
    of at least ``reliable_tol_px``: both its registrations rest on the content that its
    neighbours show moving (a crystal truly destroyed, only hopping clusters left: one
    such frame was reported reliable 19 px off, the two estimates 0.19 px apart).
    Frames whose content failed a test (non-rigid motion,
    lattice-period ambiguity, rigidity not verifiable, pair/reference disagreement; the
    rigidity of frames never tested is tested against the series mean) keep their chained
    drift and its growing uncertainty.  Measured on the 1000-frame benchmark series
    (1024², 0.2 Å px, 8 nm cube, 0.25 px white jitter per frame): at 35 e⁻/Å² per frame
    (1.4 e⁻ per pixel) 939 frames reliable (running reference alone: 1) at 0.066 px rms,
    none off by > 0.25 px, all frames 0.10 px (0.60); at 350 e⁻/Å² 973 reliable (903) at
    0.036 px (0.040), all frames 0.036 px (0.052), for 0.22 s per frame (0.11) on this
    machine (before the fused kernels; see the module docstring for the cost now).  With white jitter the error against frame 0 includes the error of frame 0
    itself (common to all frames, ~0.045 px per axis at 35 e⁻/Å²): a series whose frame 0
    is measured unluckily can have a frame off by slightly more than ``reliable_tol_px``
    reported reliable (1 of 198 frames, 0.28 px, in the first 200 frames of that series
    registered alone).

    Raises
    ------
    DataError
        Frames of different shapes, fewer than one usable frame, or no pair above ``min_snr``.
    ParameterError
        Bad option values (named in the message).
    """
    refuse_text_numbers(locals())
    _check_options(upsample, whitening, smooth_px, window_alpha)
    if int(max_lag) != max_lag or max_lag < 1:
        raise ParameterError(f"`max_lag` must be an integer >= 1, got {max_lag!r}")
    check_positive("outlier_threshold", outlier_threshold)
    check_positive("min_snr", min_snr, allow_zero=True)
    check_positive("reliable_tol_px", reliable_tol_px)
    if int(subfields) != subfields or subfields < 2:
        raise ParameterError(f"`subfields` must be an integer >= 2, got {subfields!r}")
    if groupwise not in ("auto", "always", "never"):
        raise ParameterError(f"`groupwise` must be 'auto', 'always' or 'never', got {groupwise!r}")
    if int(groupwise_iter) != groupwise_iter or groupwise_iter < 1:
        raise ParameterError(f"`groupwise_iter` must be an integer >= 1, got {groupwise_iter!r}")
    base_kw = {"whitening": whitening, "sigma_px": smooth_px, "upsample": int(upsample)}
    # sub-field correlations (their "refine" is set per frame) and whole-frame correlations
    corr_opts = {**base_kw, "window_alpha": window_alpha}
    corr_kw = {**base_kw, "max_shift_px": max_shift_px}
    sub_kw = {"tiles": int(subfields), "min_snr": min_snr, "corr": corr_opts}
    if isinstance(series, Series) and pixel_size_A is None:
        pixel_size_A = series.pixel_size_A
    st = frame_stack(series)
    n = len(st)
    shape: tuple[int, int] | None = None
    # (frame, spectrum, Wiener weight, whitened spectrum) of the last max_lag usable frames
    recent: deque[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = deque(maxlen=int(max_lag))
    ref_buf: deque = deque()
    ref_sum: np.ndarray | None = None
    prov: dict[int, np.ndarray | None] = {}
    ref_rows: list[int] = []
    ref_cols: list[int] = []
    ref_vals: list[float] = []
    ref_meas: list[tuple[float, float]] = []
    ref_snr: list[float] = []
    pairs: list[tuple[int, int, float, float, float]] = []
    reasons: dict[int, str] = {}
    snr_prev = np.full(n, np.nan)
    snr_ref = np.full(n, np.nan)
    nonrigid = np.full(n, np.nan)
    disagree = np.full(n, np.nan)
    step_unc = np.full(n, np.nan)
    sig_ref = np.full(n, np.nan)
    anchor_dev = np.full(n, np.nan)
    alias_px = np.full(n, np.nan)
    rejected: dict[int, np.ndarray] = {}  # the off-track site of a drift-track alias
    on_track: dict[int, np.ndarray] = {}  # ... and its rival site on the track
    track: deque[tuple[int, np.ndarray]] = deque(maxlen=_TRACK_FRAMES)
    anchor: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    sig_hist: deque[float] = deque(maxlen=16)
    flags: dict[int, str] = {}
    ref_frame: list[int] = []
    first_usable: int | None = None
    gw_result: dict[str, Any] | None = None
    gw_sum: np.ndarray | None = None
    gw_align = np.zeros((n, 2))
    gw_in = np.zeros(n, bool)
    last_prov: int | None = None

    def _take_track_site(
        k: int, shift: tuple[float, float], alias: tuple[float, float, float], mean_prov
    ) -> np.ndarray:
        """Frame ``k``'s reference measurement moved from ``shift`` to the rival site on
        the drift track (:func:`_track_alias`): its row and provisional drift; the site
        extends the track (a stretch of frames of a new contrast is followed with an
        up-to-date velocity); the pairs that land on the rejected site are dropped below,
        and the reported error covers both sites if the final drift leaves the track."""
        alias_px[k] = alias[2]
        rejected[k] = np.array(shift, float)
        on_track[k] = np.array(alias[:2], float)
        ref_meas[-1] = (alias[0] - mean_prov[0], alias[1] - mean_prov[1])
        prov[k] = on_track[k].copy()
        track.append((k, on_track[k].copy()))
        return on_track[k].copy()

    def _pair_job(
        earlier: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]],
        spec: np.ndarray,
        spec_white: np.ndarray,
        refine: str,
        shift: tuple[float, float] | None = None,
        anchor: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
        ref: np.ndarray | None = None,
        ref_recent: list[np.ndarray] | None = None,
    ) -> tuple[list[_Corr], np.ndarray, float, float]:
        """The frame's correlations with the ``max_lag`` previous frames (latest first), its
        Wiener weight and, with ``shift`` (its shift against the running reference ``ref``),
        its distance from the shift against the anchor (NaN without) and from the
        crystal-outline registration (:func:`_outline_jump`, the outline of the mean of
        ``ref_recent``, the last few reference frames, where given; NaN without): independent of
        the rigidity test against the running reference, they run in the helper thread
        meanwhile (one FFT thread there)."""
        _TLS.workers = 1
        dis = oj = float("nan")
        if shift is not None and ref is not None:
            rec = None if ref_recent is None else sum(ref_recent) / len(ref_recent)
            oj = _outline_jump(ref, spec, shape, shift, max_shift_px, recent=rec)
        if shift is not None and anchor is not None:
            dis = _anchor_disagreement(anchor, spec, shape, shift, corr_kw, spec_white)
        out = [
            _correlate_spectra(
                fa, spec, shape, **corr_kw, wa=wa, refine=refine, white=(fa_white, spec_white)
            )
            for _, fa, wa, fa_white in reversed(earlier)
        ]
        return out, _wiener(spec, shape), dis, oj

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="register_drift")
    with single_blas_thread(), pool:
        for k, frame in iter_frames(st):
            if shape is None:
                shape = frame.shape
            elif frame.shape != shape:
                raise DataError(f"frame {k} has shape {frame.shape}, frame 0 has {shape}")
            why = frame_quality(frame)
            if why:
                reasons[k] = why
                continue
            spec = _spectrum(frame, window_alpha)
            spec_white = whitened(spec, whitening)
            if first_usable is None:
                first_usable = k
            ref_est: np.ndarray | None = None
            corr_opts["refine"] = "whitened"
            job: Future | None = None
            if ref_buf:
                # absolute measurement against the running reference (frame-0 coordinates)
                ref = ref_sum / len(ref_buf)
                c = _correlate_spectra(
                    ref,
                    spec,
                    shape,
                    **corr_kw,
                    wa=_wiener(ref, shape),
                    fb_half=_half_spectrum(frame, spec, window_alpha, shape),
                    refine="wiener",
                    white=(whitened(ref, whitening), spec_white),
                )
                dy, dx, snr = c.dy, c.dx, c.snr
                # the frame's noise regime decides the weighting of its pairs and sub-fields
                corr_opts["refine"] = c.refine
                # the pairs and the anchor meanwhile in the helper thread
                job = pool.submit(
                    _pair_job,
                    list(recent),
                    spec,
                    spec_white,
                    c.refine,
                    (dy, dx) if snr >= min_snr else None,
                    anchor,
                    ref,
                    # (the outline of the last reference frames, where they are recent)
                    [e[1] for e in list(ref_buf)[-_OUTLINE_RECENT:]]
                    if len(ref_buf) > _OUTLINE_RECENT
                    and ref_buf[-_OUTLINE_RECENT][0] >= k - 2 * _OUTLINE_RECENT
                    else None,
                )
                if snr >= min_snr and np.isfinite(c.sigma_px):
                    sig_hist.append(c.sigma_px**2)
                    # one split is a 2-degree-of-freedom estimate: pool the recent frames
                    # (median of chi2_2/2 is ln 2); a frame's own estimate counts when it is
                    # an outlier (P < 1e-4 under the pooled noise, e.g. a glitch)
                    pooled = float(np.median(sig_hist)) / np.log(2)
                    own = c.sigma_px**2
                    sig_ref[k] = np.sqrt(own if own > 9.2 * pooled else pooled)
                js = [jb for jb, _, _ in ref_buf]
                mean_prov = np.mean([prov[jb] for jb in js], axis=0)
                ridx = len(ref_meas)
                ref_rows.extend([ridx] * (len(js) + 1))
                ref_cols.extend([k, *js])
                ref_vals.extend([1.0, *([-1.0 / len(js)] * len(js))])
                ref_meas.append((dy - mean_prov[0], dx - mean_prov[1]))
                ref_snr.append(snr)
                ref_frame.append(k)
                snr_ref[k] = snr
                prov[k] = np.array([dy, dx]) if snr >= min_snr else None
                ref_est = np.array([dy, dx])
                sub_res = None
                if snr >= min_snr:
                    # the rigidity test, while the helper thread checks the outline and the
                    # anchor: it counts unless they flag the frame (rare)
                    sub_res = _subfield_disagreement(
                        ref, frame, shape, (dy, dx), **sub_kw, noise_free_below=reliable_tol_px
                    )
                if snr < min_snr:
                    flags[k] = f"weak correlation with the reference (SNR {snr:.3g} < {min_snr:g})"
                elif (oj := job.result()[3]) > 0 and not _on_track((dy, dx), list(track), k, oj):
                    flags[k] = (
                        f"lattice-period ambiguity: the lattice registration is {oj:.3g} px "
                        "from the crystal-outline registration (> half a lattice period)"
                    )
                else:
                    anchor_dis = job.result()[2]
                    if anchor is not None:
                        anchor_dev[k] = anchor_dis
                    if anchor is not None and anchor_dis > 0.5 * reliable_tol_px:
                        # a slow drift of the running reference (each reference inherits
                        # the error of the frames it averages; nothing pulls it back)
                        flags[k] = (
                            f"reference drift: the running reference and the early-frame "
                            f"anchor disagree by {anchor_dis:.2g} px "
                            f"(> {0.5 * reliable_tol_px:g})"
                        )
                        sub_res = None
                if k not in flags and sub_res is not None:
                    nonrigid[k], _, n_sub = sub_res
                    why = _rigidity_flag(
                        n_sub,
                        nonrigid[k],
                        reliable_tol_px,
                        f"{n_sub} of {int(subfields) ** 2} sub-fields correlate with the reference",
                    )
                    if why:
                        flags[k] = why
                    elif (
                        alias := _track_alias(ref, spec, shape, (dy, dx), list(track), k, **base_kw)
                    ) is not None:
                        # the site on the track is taken as the frame's measurement (its row
                        # and provisional drift); the pairs that land on the rejected site are
                        # dropped below, and the reported error covers both sites if the
                        # chained solution does not follow the track
                        dy, dx = ref_est = _take_track_site(k, (dy, dx), alias, mean_prov)
                        flags[k] = (
                            f"drift-track alias: the registration is {alias[2]:.3g} px from a "
                            f"rival correlation peak on the drift track of the reliable frames "
                            f"(lattice period or sublattice)"
                        )
            elif k == first_usable:
                prov[k] = np.zeros(2)
            else:
                prov[k] = None
            if job is None:
                job = pool.submit(_pair_job, list(recent), spec, spec_white, corr_opts["refine"])
            pair_corr, spec_w, _, _ = job.result()
            raw_k = float("nan")
            blocked = False  # a strong pair whose earlier frame cannot vouch (content flag)
            # the largest disagreement with a strong pair from a frame that can vouch, and
            # that frame: a site-sized one means the lattice registrations are ambiguous
            worst: tuple = (0.0, -1, None, (0.0, 0.0), (0.0, 0.0))
            for j, (ka, fa, _, _) in enumerate(reversed(recent)):
                dy, dx, snr, *_ = pair_corr[j]
                row_snr = snr
                if (
                    k in rejected
                    and prov.get(ka) is not None
                    and (ka not in flags or ka in rejected)
                ):
                    # a pair that lands nearer the rejected site of a drift-track alias than
                    # the site on the track (e.g. from a frame of the old column contrast)
                    # is left out of the solve
                    imp = prov[ka] + [dy, dx]
                    if np.hypot(*(imp - rejected[k])) < np.hypot(*(imp - prov[k])):
                        row_snr = -np.inf
                pairs.append((ka, k, dy, dx, row_snr))
                if j == 0:
                    snr_prev[k] = snr
                    if prov.get(k) is None and prov.get(ka) is not None and snr >= min_snr:
                        prov[k] = prov[ka] + np.array([dy, dx])
                    if not reference_window and k != first_usable:
                        # no running reference: test the rigidity against the previous frame
                        if snr < min_snr:
                            flags[k] = (
                                f"weak correlation with the previous frame "
                                f"(SNR {snr:.3g} < {min_snr:g})"
                            )
                        else:
                            nonrigid[k], raw_k, n_sub = _subfield_disagreement(
                                fa,
                                frame,
                                shape,
                                (dy, dx),
                                **sub_kw,
                                noise_free_below=reliable_tol_px,
                            )
                            if n_sub < 2 or nonrigid[k] > reliable_tol_px:
                                flags[k] = (
                                    f"non-rigid motion or too little structure: sub-field "
                                    f"disagreement {nonrigid[k]:.2g} px, {n_sub} usable "
                                    "sub-fields"
                                )
                    if "ambiguity" in flags.get(k, ""):
                        # a step that may have picked another lattice period is unbounded
                        step_unc[k] = np.inf
                    elif k in flags and snr >= min_snr:
                        # uncertainty of the chained step: rigidity against the previous frame
                        step_unc[k] = (
                            raw_k
                            if not reference_window
                            else _subfield_disagreement(fa, frame, shape, (dy, dx), **sub_kw)[1]
                        )
                if ref_est is not None and prov.get(ka) is not None and snr >= min_snr:
                    if flags.get(ka, "").startswith(_SITE_FLAGS):
                        blocked = True
                        continue
                    # reference-based vs pairwise estimate; the best-agreeing earlier frame
                    # counts (one bad predecessor does not condemn the frame), but not one
                    # whose own estimate may sit on another lattice site (_SITE_FLAGS):
                    # registered to the same wrong site (e.g. Pb-free frames of an alloyed
                    # crystal against a reference of Pb-bright ones, half a cell off) it
                    # would vouch for the frame's wrong estimate
                    dis = float(np.hypot(*(ref_est - prov[ka] - [dy, dx])))
                    disagree[k] = np.fmin(disagree[k], dis)
                    if dis > worst[0]:
                        alt = ref_est - prov[ka]
                        worst = (dis, ka, fa, (dy, dx), (float(alt[0]), float(alt[1])))
            # a pair shift carries the noise of two frames and a noisy template: at low dose
            # the agreement is tested against 4 sigma of it (about sqrt(3) x the split-half
            # error of the reference-based estimate), never more strictly than the tolerance
            dis_tol = max(reliable_tol_px, 4.0 * np.sqrt(3.0) * np.nan_to_num(sig_ref[k]))
            if k not in flags and blocked and np.isnan(disagree[k]):
                flags[k] = (
                    "reference-based estimate unconfirmed: its pairs link it only to frames "
                    "whose own estimates may be a lattice period or sublattice off "
                    "(lattice-period ambiguity or a reference/pair disagreement)"
                )
            margin = 0.0
            if k not in flags and worst[0] > max(_SITE_JUMP_PX, _SITE_JUMP_TOL * dis_tol):
                # (computed only here: one more correlation, for the rare site-sized ones)
                margin = _peak_margin(
                    worst[2],
                    spec,
                    shape,
                    worst[3],
                    worst[4],
                    whitening=whitening,
                    sigma_px=smooth_px,
                )
            if margin >= _SITE_JUMP_MARGIN:
                # one strong pair from a frame that vouches lands a lattice site away from
                # the reference-based estimate while another agrees with it: the frames'
                # column contrast has changed (e.g. Pb columns of an alloyed crystal reduced,
                # the Cs sublattice now the brightest; the projected sublattices are half a
                # cell diagonal apart and equal in geometry), and reference and pairs from
                # frames of the old contrast agree on the wrong site
                flags[k] = (
                    f"reference and pairwise estimates disagree by a lattice site: the pair "
                    f"from frame {worst[1]} is {worst[0]:.2g} px off and prefers its own site by "
                    f"{margin:.0%} of its peak (sublattice or "
                    "lattice-period ambiguity)"
                )
            if k not in flags and disagree[k] > dis_tol:
                flags[k] = (
                    f"reference and pairwise estimates disagree by "
                    f"{disagree[k]:.2g} px (> {dis_tol:.2g})"
                )
            if k != first_usable and not recent and k not in flags:
                flags[k] = "no previous usable frame to register to"
            recent.append((k, spec, spec_w, spec_white))
            if groupwise != "never":
                # pass 0 of the group-wise registration: the series summed on the
                # provisional drift (the last known one where there is none)
                a_k = prov.get(k)
                if a_k is None:
                    a_k = gw_align[last_prov] if last_prov is not None else np.zeros(2)
                else:
                    last_prov = k
                gw_align[k] = a_k
                gw_in[k] = True
                term = _shift_spectrum(spec, shape, a_k[0], a_k[1])
                if gw_sum is None:
                    gw_sum = term
                else:
                    gw_sum += term
            if reference_window and prov.get(k) is not None and k not in flags:
                aligned = _shift_spectrum(spec, shape, prov[k][0], prov[k][1])
                ref_buf.append((k, aligned, None))
                track.append((k, prov[k].copy()))
                if ref_sum is None:
                    ref_sum = aligned.copy()
                else:
                    ref_sum += aligned
                if len(ref_buf) > reference_window:
                    _, old_spec, _ = ref_buf.popleft()
                    ref_sum -= old_spec
                if anchor is None and len(ref_buf) == reference_window:
                    # the first full reference, frozen: a long-baseline check of the chain
                    a_spec = ref_sum / len(ref_buf)
                    anchor = (a_spec, _wiener(a_spec, shape), whitened(a_spec, whitening))
    # frames that failed a per-frame test (a drift-track alias keeps its reference row: it
    # was re-measured on the site the drift track supports)
    online = np.array(sorted(set(flags) - set(rejected)), int)
    n_good = n - len(reasons)
    if n_good < 1:
        raise DataError(f"no usable frame in `series` ({n} frames, all skipped: {reasons})")
    scale_px: float | None = None
    first = min(set(range(n)) - set(reasons))  # the anchor: drift 0 by definition
    if n_good == 1 or not pairs:
        d = np.zeros((n, 2))
        err = np.zeros((n, 2))
        outlier = np.zeros(0, bool)
        scale = np.nan
        parr = np.zeros((0, 5))
    else:
        parr = np.asarray(pairs, dtype=float)
        valid = parr[:, 4] >= min_snr
        if not valid.any():
            raise DataError(
                f"no frame pair correlates above `min_snr`={min_snr} "
                f"(best peak SNR {parr[:, 4].max():.2g}); frames too noisy or unrelated"
            )
        rel = np.array([k not in reasons and k not in flags for k in range(n)])
        pa = parr[:, 0].astype(int)
        pb = parr[:, 1].astype(int)
        # stage A: reliable frames from the measurements among reliable frames only; a
        # reliable frame whose rows contradict the solution grossly (e.g. a lattice-period
        # jump that the online tests could not see) is flagged and the solve repeated
        floor = max(0.01, 0.25 / upsample)
        ref_ok = np.asarray(ref_snr) >= min_snr
        if ref_meas:
            ref_m = np.asarray(ref_meas, float)
            ref_e = sp.csr_matrix((ref_vals, (ref_rows, ref_cols)), shape=(len(ref_meas), n))
            ref_abs = abs(ref_e)
        # noise model of the rows from the split-half errors: a reference row carries the
        # frame's error, a pair row the noise of two frames and of a noisy template (about
        # sqrt(3) x the larger of the two frames' split-half errors)
        row_sig = None
        if np.isfinite(sig_ref).any():
            s_f = np.where(np.isfinite(sig_ref), sig_ref, np.nanmedian(sig_ref))
            s_f = np.maximum(s_f, floor)
            row_sig = np.concatenate(
                [np.sqrt(3.0) * np.maximum(s_f[pa], s_f[pb]), s_f[np.asarray(ref_frame, int)]]
            )
        for _ in range(4):
            extra = None
            if ref_meas:
                ref_valid = ref_ok & ~((ref_abs @ (~rel).astype(float)) > 0)
                extra = (ref_rows, ref_cols, ref_vals, ref_m, ref_valid)
            valid_a = valid & rel[pa] & rel[pb]
            if not (valid_a.any() or (extra is not None and extra[4].any())):
                d, err, outlier, scale = (
                    np.zeros((n, 2)),
                    np.zeros((n, 2)),
                    valid & False,
                    np.nan,
                )
                break
            rsig = None if row_sig is None else row_sig[: len(parr) + len(ref_meas)]
            d, err, outlier, scale = _robust_solve(
                n,
                parr,
                valid_a,
                float(outlier_threshold),
                floor=floor,
                extra=extra,
                row_sigma=rsig,
            )
            # a measurement off the solution by more than max(tolerance, threshold x its
            # robust noise) contradicts it grossly
            gross_rows = np.maximum(
                float(reliable_tol_px),
                float(outlier_threshold) * scale * (1.0 if rsig is None else rsig),
            )
            if rsig is not None:
                scale_px = scale * float(np.median(rsig))
            res_p = np.hypot(*(parr[:, 2:4] - (d[pb] - d[pa])).T)
            bad = np.zeros(n, bool)
            g_p = gross_rows if rsig is None else gross_rows[: len(parr)]
            hit = valid_a & (res_p > g_p)
            bad[pa[hit]] = True
            bad[pb[hit]] = True
            if ref_meas:
                res_r = np.hypot(*(ref_m - ref_e @ d).T)
                rf = np.asarray(ref_frame, int)
                g_r = gross_rows if rsig is None else gross_rows[len(parr) :]
                bad[rf[ref_valid & (res_r > g_r)]] = True
            bad &= rel
            bad[first] = False
            # precision test: a reliable frame's least-squares standard error must support
            # the tolerance (3 sigma <= reliable_tol_px); a frame linked to the first frame
            # only through flagged frames (e.g. reliable frames after an inconsistent
            # stretch) has an unconstrained solution and a huge error
            imprecise = rel & ~bad & (3.0 * np.max(err, axis=1) > reliable_tol_px)
            imprecise[first] = False
            if not (bad.any() or imprecise.any()):
                break
            for k in np.flatnonzero(bad):
                flags[int(k)] = (
                    f"inconsistent with the other reliable frames (a measurement off the "
                    f"solution by > max({reliable_tol_px:g} px, {outlier_threshold:g} x its "
                    "robust noise))"
                )
            for k in np.flatnonzero(imprecise):
                flags[int(k)] = (
                    f"imprecise: standard error {np.max(err[k]):.2g} px "
                    f"(3 sigma > {reliable_tol_px:g} px; not linked to the reliable frames)"
                )
            bad |= imprecise
            rel &= ~bad
        # anchor to the first usable frame
        d = d - d[first]
        unrel = np.flatnonzero(~rel & ~np.isin(np.arange(n), list(reasons)))
        valid_b = valid & ~(rel[pa] & rel[pb])
        if len(unrel) and valid_b.any():
            # stage B: unreliable frames chained from their pair shifts, reliable ones fixed
            # and from their running-reference rows (an absolute measurement each: far
            # better than a chain of pairs at low dose)
            fixed = np.flatnonzero(rel)
            m_fix = len(fixed)
            n_ref = len(ref_meas)
            if n_ref:
                # (not for frames that failed a per-frame test: their reference shift is
                # suspect, they stay chained from their pairs)
                rf = np.asarray(ref_frame, int)
                ref_b = ref_ok & np.isin(rf, unrel) & ~np.isin(rf, online)
                extra_b = (
                    [*ref_rows, *range(n_ref, n_ref + m_fix)],
                    [*ref_cols, *fixed],
                    [*ref_vals, *([1.0] * m_fix)],
                    np.vstack([ref_m, d[fixed]]),
                    np.concatenate([ref_b, np.ones(m_fix, bool)]),
                )
            else:
                extra_b = (
                    list(range(m_fix)),
                    list(fixed),
                    [1.0] * m_fix,
                    d[fixed],
                    np.ones(m_fix, bool),
                )
            weights = np.concatenate([np.ones(len(parr) + n_ref), np.full(m_fix, 1e4)])
            rsig_b = None
            if row_sig is not None:
                rsig_b = np.concatenate([row_sig, np.full(m_fix, float(np.median(row_sig)))])
            d_b, err_b, out_b, _ = _robust_solve(
                n,
                parr,
                valid_b,
                float(outlier_threshold),
                floor=floor,
                extra=extra_b,
                row_weight=weights,
                row_sigma=rsig_b,
            )
            d_b = d_b - d_b[first]
            d[unrel] = d_b[unrel]
            err[unrel] = err_b[unrel]
            outlier = np.where(valid_b, out_b, outlier)
        # grow the error of unreliable frames with the non-rigidity of every unreliable step
        # a step whose rigidity cannot be tested (fewer than two sub-fields correlate, or no
        # pair above min_snr) has an unbounded uncertainty: the error becomes inf until the
        # next reliable frame
        step = np.fmax(np.nan_to_num(step_unc, nan=np.inf), reliable_tol_px)
        acc = 0.0
        for k in range(n):
            if rel[k]:
                acc = 0.0
            elif k not in reasons:
                acc = acc + float(np.square(np.float64(min(step[k], 10 * _UNBOUNDED_PX))))
                err[k] = np.sqrt(err[k] ** 2 + acc)
        usable = ~np.isin(np.arange(n), list(reasons))
        n_unrel_usable = int((usable & ~rel).sum())
        if usable.sum() >= 4 and (
            groupwise == "always" or (groupwise == "auto" and n_unrel_usable > 0)
        ):
            from perovstem.insitu._groupwise import refine_drift

            # each frame's measurement against the running reference in the gauge of d
            # (the group-wise registration checks the frames it rescues against it)
            ref_abs = np.full((n, 2), np.nan)
            if ref_meas:
                rf = np.asarray(ref_frame, int)
                est = ref_m + d[rf] - ref_e @ d
                ref_abs[rf[ref_ok]] = est[ref_ok]
            with single_blas_thread():
                gw = refine_drift(
                    st,
                    usable=usable,
                    drift=d,
                    drift_err=err,
                    reliable0=rel,
                    keep_flags={
                        k: why for k, why in flags.items() if why.startswith(_CONTENT_FLAGS)
                    },
                    nonrigid=nonrigid,
                    init=(gw_sum, gw_align, gw_in) if gw_sum is not None else None,
                    n_iter=int(groupwise_iter),
                    window_alpha=window_alpha,
                    corr_kw=corr_kw,
                    sub_kw=sub_kw,
                    min_snr=min_snr,
                    reliable_tol_px=float(reliable_tol_px),
                    first=first,
                    ref_est=ref_abs,
                    ref_sigma=sig_ref,
                )
            gw_result = gw
            d, err, nonrigid = gw["d"], gw["err"], gw["nonrigid"]
            flags = gw["flags"]
    n_pairs = np.zeros(n, int)
    n_out = np.zeros(n, int)
    for i, (ka, kb) in enumerate(parr[:, :2].astype(int)):
        n_pairs[ka] += 1
        n_pairs[kb] += 1
        if outlier[i]:
            n_out[ka] += 1
            n_out[kb] += 1
    # content that changes between frames (a degrading crystal, hopping clusters) moves the
    # correlation peak: neither the residuals of the solve nor the split-half noise see it.
    # Its size per sub-field is the sub-field disagreement; the whole-field estimate
    # averages the 2×2 sub-fields, so it keeps about half of it per axis.  The anchor frame
    # (drift 0 by definition) keeps its error
    # (1/subfields for subfields × subfields of them: CONTENT_ERR_SCALE at the default 2)
    content = (
        CONTENT_ERR_SCALE * (2.0 / int(subfields)) * np.nan_to_num(np.asarray(nonrigid, float))
    )
    content[first] = 0.0
    err = np.hypot(err, content[:, None])
    for k, site in on_track.items():
        # a drift-track alias whose final drift left the site on the track (more than 1 px
        # away): the reported error covers both rival sites
        if k in flags and np.hypot(*(d[k] - site)) > 1.0:
            far = max(np.hypot(*(d[k] - site)), np.hypot(*(d[k] - rejected[k])))
            err[k] = np.maximum(err[k], far)
    # the growing error of an untestable step is accumulated with a finite stand-in
    # (1e150 px per step, no overflow); it is reported as what it means: unbounded
    err[err >= _UNBOUNDED_PX] = np.inf
    df = pd.DataFrame(
        {
            "frame": np.arange(n),
            "dy_px": d[:, 0],
            "dx_px": d[:, 1],
            "dy_err_px": err[:, 0],
            "dx_err_px": err[:, 1],
        }
    )
    if pixel_size_A is not None:
        df["dy_A"] = df["dy_px"] * pixel_size_A
        df["dx_A"] = df["dx_px"] * pixel_size_A
    df["n_pairs"] = n_pairs
    df["n_outlier_pairs"] = n_out
    df["peak_snr"] = snr_prev
    df["ref_snr"] = snr_ref
    df["nonrigid_px"] = nonrigid
    df["pair_ref_disagreement_px"] = disagree
    df["ref_sigma_px"] = sig_ref
    df["anchor_disagreement_px"] = anchor_dev
    if gw_result is not None:
        for col, val in gw_result["columns"].items():
            df[col] = val
    flag = [f"skipped: {reasons[k]}" if k in reasons else flags.get(k, "") for k in range(n)]
    df["drift_reliable"] = [f == "" for f in flag]
    df["drift_flag"] = flag
    df["skipped"] = df["frame"].isin(list(reasons))
    df["reason"] = [reasons.get(k, "") for k in range(n)]
    # a skipped frame's drift is interpolated: its error is at least the neighbours' step
    df.attrs.update(
        {
            "residual_rms_px": float(scale if scale_px is None else scale_px),
            "n_skipped": len(reasons),
            "skipped_frames": sorted(reasons),
            "n_unreliable": int((~df["drift_reliable"]).sum()),
            "unreliable_frames": df.loc[~df["drift_reliable"], "frame"].tolist(),
            "reliable_tol_px": float(reliable_tol_px),
            "max_lag": int(max_lag),
            "upsample": int(upsample),
            "method": "phase correlation (Guizar-Sicairos 2008) + robust multi-lag LSQ"
            + (
                "; group-wise: leave-one-out series mean + RTS smoother"
                if gw_result is not None
                else ""
            ),
            "groupwise": gw_result is not None,
            "convention": "feature at (i, j) in frame 0 is at (i+dy, j+dx) in frame k",
        }
    )
    if gw_result is not None:
        df.attrs.update(gw_result["attrs"])
    if pixel_size_A is not None:
        df.attrs["pixel_size_A"] = float(pixel_size_A)
    return df


def _shift_block(
    block: np.ndarray, shifts: np.ndarray, order: int, mode: str, method: str = "fourier"
) -> np.ndarray:
    from perovstem.insitu.analysis import shift_frame  # analysis imports this module

    out = np.empty(block.shape, dtype=np.float32)
    for i in range(block.shape[0]):
        f = block[i].astype(np.float32)
        if not np.all(np.isfinite(f)):
            out[i] = f
            continue
        if method == "fourier":
            out[i] = shift_frame(f, -shifts[i])
        else:
            out[i] = ndimage.shift(f, -shifts[i], order=order, mode=mode)
    return out


def _loo_reference(total: np.ndarray, frame: np.ndarray, n_use: int) -> np.ndarray:
    """Mean of the other frames (leave-one-out); the frame itself when it is the only one."""
    if n_use <= 1:
        return np.asarray(frame, dtype=float)
    return (total - frame) / (n_use - 1)


def apply_drift(
    series: Any,
    drift: pd.DataFrame,
    *,
    method: str = "fourier",
    order: int = 3,
    mode: str = "nearest",
    scan_correction: bool = False,
    band_rows: int = 8,
    smooth_rows: float = 4.0,
    max_shift_px: float = 3.0,
) -> Any:
    """Shift every frame by minus its drift (lazy for dask input), optionally removing scan
    line jitter.

    Parameters
    ----------
    series : Series or (T, M, N) array
        The raw series (not modified).
    drift : DataFrame
        Output of :func:`register_drift` (columns ``dy_px, dx_px``, one row per frame).
    method : {"fourier", "spline"}
        "fourier" (default): :func:`perovstem.insitu.shift_frame` — whole pixels moved
        exactly, the sub-pixel rest by a Fourier phase ramp, so the shot noise keeps its
        variance and white spectrum (what :func:`analyze_series` does before fitting
        columns or counting clusters); "spline": :func:`scipy.ndimage.shift` with
        ``order`` and ``mode``, which low-pass filters the noise (a cubic spline at ½ px
        leaves 0.57 of its variance), biasing noise estimates and error bars.
    order : int
        Spline interpolation order (0–5; ``method="spline"``).
    mode : str
        Edge handling of :func:`scipy.ndimage.shift` (``method="spline"``).
    scan_correction : bool
        After the rigid alignment, remove each frame's fast-scan line jitter with
        :func:`correct_scan_distortion` against the mean of the other aligned usable frames
        (leave-one-out, so a frame's own jitter does not bias its reference; one extra pass
        over a lazy series).  Frames skipped by the registration are left as they
        are.
    band_rows, smooth_rows, max_shift_px
        Options of :func:`correct_scan_distortion`.

    Returns
    -------
    Series or ndarray or dask array
        Same kind as the input, float32, frames aligned on frame 0.  A Series records
        ``metadata["drift_corrected"]`` and, with ``scan_correction``,
        ``metadata["scan_correction"]`` (options; for eager input also the rms line offset
        removed per frame, px).
    """
    refuse_text_numbers(locals())
    if method not in ("fourier", "spline"):
        raise ParameterError(f"`method` must be 'fourier' or 'spline', got {method!r}")
    if int(order) != order or not 0 <= order <= 5:
        raise ParameterError(f"`order` must be an integer in [0, 5], got {order!r}")
    st = frame_stack(series)
    n = len(st)
    for col in ("dy_px", "dx_px"):
        if col not in drift.columns:
            raise DataError(f"`drift` lacks column {col!r} (got {list(drift.columns)})")
    if len(drift) != n:
        raise DataError(f"`drift` has {len(drift)} rows but the series has {n} frames")
    shifts = drift[["dy_px", "dx_px"]].to_numpy(float)
    if not np.all(np.isfinite(shifts)):
        raise DataError("`drift` contains non-finite shifts")
    skipped = drift["skipped"].to_numpy(bool) if "skipped" in drift.columns else np.zeros(n, bool)
    scan_info: dict[str, Any] | None = None
    if scan_correction:
        m_rows = frame_shape_of(st)[0]
        if int(band_rows) != band_rows or not 1 <= band_rows <= m_rows:
            raise ParameterError(
                f"`band_rows` must be an integer in [1, {m_rows}], got {band_rows!r}"
            )
        check_positive("max_shift_px", max_shift_px)
        check_positive("smooth_rows", smooth_rows, allow_zero=True)
        scan_info = {
            "band_rows": int(band_rows),
            "smooth_rows": float(smooth_rows),
            "max_shift_px": float(max_shift_px),
        }
    scan_kw = {"band_rows": band_rows, "smooth_rows": smooth_rows, "max_shift_px": max_shift_px}
    if hasattr(st, "dask"):
        import dask.array as da

        st32 = st.astype(np.float32)

        def _f(block: np.ndarray, block_info: Any = None) -> np.ndarray:
            k0 = block_info[0]["array-location"][0][0]
            return _shift_block(block, shifts[k0 : k0 + block.shape[0]], order, mode, method)

        out = da.map_blocks(_f, st32.rechunk({1: -1, 2: -1}), dtype=np.float32)
        if scan_correction:
            use = np.flatnonzero(~skipped)
            total = np.asarray(out[use].sum(axis=0, dtype=np.float64).compute())
            n_use = len(use)

            def _g(block: np.ndarray, block_info: Any = None) -> np.ndarray:
                k0 = block_info[0]["array-location"][0][0]
                res = block.copy()
                for i in range(block.shape[0]):
                    if not skipped[k0 + i] and np.all(np.isfinite(block[i])):
                        ref = _loo_reference(total, block[i], n_use)
                        res[i] = correct_scan_distortion(block[i], ref, **scan_kw)[0]
                return res

            out = da.map_blocks(_g, out, dtype=np.float32)
    else:
        arr = np.stack([np.asarray(f) for f in st]) if not hasattr(st, "shape") else st
        out = _shift_block(np.asarray(arr), shifts, order, mode, method)
        if scan_correction:
            use = np.flatnonzero(~skipped)
            total = out[use].sum(axis=0, dtype=np.float64)
            rms = np.full(n, np.nan)
            for k in use:
                if np.all(np.isfinite(out[k])):
                    ref = _loo_reference(total, out[k], len(use))
                    corr, dxr = correct_scan_distortion(out[k], ref, **scan_kw)
                    out[k] = corr
                    rms[k] = float(np.sqrt(np.mean(dxr**2)))
            assert scan_info is not None
            scan_info["rms_line_offset_px"] = rms.tolist()
    if isinstance(series, Series):
        md = dict(series.metadata)
        md["drift_corrected"] = True
        if scan_info is not None:
            md["scan_correction"] = scan_info
        return series.replace(data=out, metadata=md)
    return out


def correct_scan_distortion(
    frame: np.ndarray,
    reference: np.ndarray,
    *,
    band_rows: int = 8,
    max_shift_px: float = 3.0,
    smooth_rows: float = 4.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Correct line-to-line (fast-scan) jitter of a STEM frame against a reference.

    The frame is cut into bands of ``band_rows`` scan lines; each band's x offset relative to
    the same band of ``reference`` (e.g. the drift-corrected mean of the series) is measured by
    1-D cross-correlation with parabolic sub-pixel refinement, smoothed along the slow scan
    direction, interpolated to every line, and removed (bands whose reference has under 20 %
    of the largest band contrast, e.g. vacuum, take interpolated offsets).  This is the
    row-jitter part of the non-rigid correction of Ophus, Ciston & Nelson, Ultramicroscopy
    162, 1 (2016), doi:10.1016/j.ultramic.2015.12.002 (without their orthogonal-scan pairs).

    Parameters
    ----------
    frame, reference : (M, N) array_like
        Distorted frame and undistorted reference of the same shape.
    band_rows : int
        Scan lines per band (more: less noise, less resolution along y).
    max_shift_px : float
        Largest line offset searched, px.
    smooth_rows : float
        Gaussian smoothing of the offsets along y, in bands.

    Returns
    -------
    corrected : (M, N) ndarray
        Frame with the line offsets removed.
    dx_rows_px : (M,) ndarray
        Estimated x offset of every scan line, px.
    """
    refuse_text_numbers(locals())
    f = np.asarray(frame, dtype=float)
    r = np.asarray(reference, dtype=float)
    if f.ndim != 2 or f.shape != r.shape:
        raise DataError(
            f"`frame` and `reference` must be 2-D of equal shape, got {f.shape}, {r.shape}"
        )
    for name, a in (("frame", f), ("reference", r)):
        why = frame_quality(a)
        if why:
            raise DataError(f"`{name}` is unusable: {why}")
    if int(band_rows) != band_rows or band_rows < 1 or band_rows > f.shape[0]:
        raise ParameterError(
            f"`band_rows` must be an integer in [1, {f.shape[0]}], got {band_rows!r}"
        )
    check_positive("max_shift_px", max_shift_px)
    check_positive("smooth_rows", smooth_rows, allow_zero=True)
    m, n = f.shape
    nb = m // band_rows
    centres = (np.arange(nb) + 0.5) * band_rows - 0.5
    offs = np.zeros(nb)
    lag = int(np.ceil(max_shift_px))
    # bands without structure along x (vacuum, support) carry no offset information: their
    # offsets are interpolated from the structured bands instead of fitted to noise
    contrast = np.array([r[b * band_rows : (b + 1) * band_rows].mean(0).std() for b in range(nb)])
    usable = contrast > 0.2 * np.max(contrast) if np.max(contrast) > 0 else np.ones(nb, bool)
    for b in range(nb):
        sl = slice(b * band_rows, (b + 1) * band_rows)
        fb = f[sl].mean(0)
        rb = r[sl].mean(0)
        fb = fb - fb.mean()
        rb = rb - rb.mean()
        cc = np.array(
            [
                np.dot(rb[max(0, -s) : n - max(0, s)], fb[max(0, s) : n - max(0, -s)])
                for s in range(-lag, lag + 1)
            ]
        )
        i = int(np.argmax(cc))
        dx = float(i - lag)
        if 0 < i < len(cc) - 1:
            den = cc[i - 1] - 2 * cc[i] + cc[i + 1]
            if den < 0:
                dx += 0.5 * (cc[i - 1] - cc[i + 1]) / den
        offs[b] = dx
    if nb > 1 and usable.any() and not usable.all():
        offs = np.interp(centres, centres[usable], offs[usable])
    if smooth_rows > 0 and nb > 1:
        offs = ndimage.gaussian_filter1d(offs, smooth_rows, mode="nearest")
    dx_rows = np.interp(np.arange(m), centres, offs) if nb > 1 else np.full(m, offs[0])
    x = np.arange(n, dtype=float)
    out = np.empty_like(f)
    for i in range(m):
        out[i] = np.interp(x + dx_rows[i], x, f[i])
    return out, dx_rows


def _row_offsets(f: np.ndarray, r: np.ndarray, lag: int) -> np.ndarray:
    """x offset (px) of every row of ``f`` against the same row of ``r``: 1-D
    cross-correlation over ±``lag`` px with parabolic sub-pixel refinement (all rows at once)."""
    m, n = f.shape
    fb = f - f.mean(axis=1, keepdims=True)
    rb = r - r.mean(axis=1, keepdims=True)
    cc = np.stack(
        [
            np.einsum(
                "ij,ij->i", rb[:, max(0, -s) : n - max(0, s)], fb[:, max(0, s) : n - max(0, -s)]
            )
            for s in range(-lag, lag + 1)
        ],
        axis=1,
    )
    i = np.argmax(cc, axis=1)
    dx = (i - lag).astype(float)
    inner = (i > 0) & (i < 2 * lag)
    rows = np.flatnonzero(inner)
    a, b, c = cc[rows, i[rows] - 1], cc[rows, i[rows]], cc[rows, i[rows] + 1]
    den = a - 2 * b + c
    ok = den < 0
    dx[rows[ok]] += 0.5 * (a[ok] - c[ok]) / den[ok]
    return dx


# A part's line offsets that scatter by more than this (px) beyond what the parts share are
# not locked on the structure (a uniform pick within the ±3 px search has an sd of 1.7 px;
# aliased lattices at 2 Å/px with 1 px of jitter: 1.1–2.2 px): the frame is not measured.
LINE_PART_SCATTER_MAX_PX = 1.0


def _detrended(d: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Line offsets ``d`` at lines ``y`` less their straight line (residual drift, shear)."""
    return d - np.polyval(np.polyfit(y, d, 1), y)


def _shared_line_offset(f: np.ndarray, r: np.ndarray, lag: int) -> tuple[float, float]:
    """rms x offset (px) that the left and right parts of the scan lines of ``f`` share
    against ``r`` (sqrt of the covariance of the parts' detrended offsets, split at the
    column that halves the reference's structure) and the rms of the parts' offsets beyond
    it; the first NaN where the second exceeds ``LINE_PART_SCATTER_MAX_PX``, both NaN with
    < 8 lines structured in both parts."""
    w = np.abs(r - np.median(r)).sum(axis=0)
    cum = np.cumsum(w)
    if cum[-1] <= 0:
        return float("nan"), float("nan")
    n = f.shape[1]
    cut = int(np.clip(np.searchsorted(cum, 0.5 * cum[-1]), min(8, n // 2), n - min(8, n // 2)))
    parts = (slice(0, cut), slice(cut, n))
    con = [r[:, p].std(axis=1) for p in parts]
    use = np.logical_and.reduce([c > 0.2 * c.max() if c.max() > 0 else c > 0 for c in con])
    if use.sum() < 8:
        return float("nan"), float("nan")
    y = np.flatnonzero(use).astype(float)
    dl, dr = (_detrended(_row_offsets(f[:, p], r[:, p], lag)[use], y) for p in parts)
    cov = float(np.mean(dl * dr))
    scatter = float(np.sqrt(max(0.5 * float(np.mean(dl**2) + np.mean(dr**2)) - cov, 0.0)))
    if scatter > LINE_PART_SCATTER_MAX_PX:
        return float("nan"), scatter
    return float(np.sqrt(max(cov, 0.0))), scatter


def measure_line_jitter(
    series: Any,
    drift: pd.DataFrame,
    *,
    max_frames: int = 16,
    max_shift_px: float = 3.0,
) -> pd.DataFrame:
    """Fast-scan line jitter of the frames of a registered series: the offset that the two
    parts of every scan line share.

    Up to ``max_frames`` usable frames (evenly spread) are aligned on ``drift``; each is
    compared line by line with the leave-one-out mean of the others (1-D cross-correlation
    of every scan line with the same line of the mean, the row-wise offsets of Ophus,
    Ciston & Nelson, Ultramicroscopy 162, 1 (2016), measured per line).  On the lines with
    structure (reference contrast ≥ 20 % of the largest) the offsets, less a straight line
    (a residual drift or a shear within the frame), scatter by the jitter and by errors of
    the measurement: shot noise, and the frame's own content (clusters that moved, a crystal
    that changed, a lattice aliased by coarse pixels) differing from the mean of the others.
    A scan-line displacement moves the whole line, so the jitter is what the left and right
    parts of the line (split where the structure is halved) share: its variance is the
    covariance of their offsets, to which errors that differ between the parts add nothing
    (the split-half comparison of a shared signal, as in the Fourier ring correlation of
    Harauz & van Heel, Optik 73, 146 (1986)).  The earlier estimate (full-line offsets less
    the shot noise of the even- and odd-column halves; Koho et al., Nat. Commun. 10, 3103
    (2019)) read the content changes as jitter (0.5–1.5 px on single frames of jitter-free
    simulated series: a degrading platelet, a 4 nm cube at 3·10⁴ e⁻/Å² per frame, 1 and
    2 Å/px) and missed 0.5–1 px of jitter at 1 Å/px, where the half-sampled lines alias.
    The shot noise of one line's offset (those halves) is still reported.

    Parameters
    ----------
    series : Series or (T, M, N) array_like
        The raw frames.
    drift : DataFrame
        From :func:`register_drift` (``dy_px, dx_px``; ``skipped`` frames are left out).
    max_frames : int
        Frames measured (≥ 3; the reference of each is the mean of the others).
    max_shift_px : float
        Largest line offset searched, px.

    Returns
    -------
    DataFrame
        One row per measured frame: ``frame``, ``line_jitter_px`` (rms line offset shared
        by the two parts of the lines, px; NaN where fewer than 8 lines have structure in
        both parts, or where the parts' offsets scatter by more than 1 px beyond what they
        share: not locked on the structure, e.g. an aliased lattice at 2 Å/px),
        ``line_noise_px`` (rms shot noise of one line's offset, from the even- and
        odd-column halves, px), ``line_lag1_corr`` (correlation of the offsets of
        neighbouring lines: ≈ 0.2-0.6 for line-to-line jitter, > 0.9 for a smooth
        distortion), ``line_part_scatter_px`` (rms of the parts' offsets beyond what they
        share: the errors of one part's offsets, px).  Empty when fewer than 3 frames are
        usable.  A distortion slower than the crystal's height is mostly taken as the shear
        (straight line) and not counted.
    """
    refuse_text_numbers(locals())
    if int(max_frames) != max_frames or max_frames < 3:
        raise ParameterError(f"`max_frames` must be an integer >= 3, got {max_frames!r}")
    check_positive("max_shift_px", max_shift_px)
    st = frame_stack(series)
    n = len(st)
    if len(drift) != n:
        raise DataError(f"`drift` has {len(drift)} rows but the series has {n} frames")
    cols = ["frame", "line_jitter_px", "line_noise_px", "line_lag1_corr", "line_part_scatter_px"]
    skipped = drift["skipped"].to_numpy(bool) if "skipped" in drift.columns else np.zeros(n, bool)
    cand = np.flatnonzero(~skipped)
    if len(cand) > max_frames:
        cand = cand[np.unique(np.rint(np.linspace(0, len(cand) - 1, int(max_frames))).astype(int))]
    frames = {}
    for k in cand:
        f = np.asarray(st[int(k)], dtype=np.float32)
        if np.all(np.isfinite(f)) and not frame_quality(f):
            frames[int(k)] = f
    if len(frames) < 3:
        return pd.DataFrame(columns=cols)
    ks = np.array(sorted(frames))
    shifts = drift[["dy_px", "dx_px"]].to_numpy(float)[ks]
    a = _shift_block(np.stack([frames[k] for k in ks]), shifts, 3, "nearest").astype(float)
    total = a.sum(axis=0)
    lag = int(np.ceil(max_shift_px))
    rows = []
    for i, k in enumerate(ks):
        f = a[i]
        r = _loo_reference(total, f, len(ks))
        con = r.std(axis=1)
        use = con > 0.2 * con.max() if con.max() > 0 else np.zeros(len(con), bool)
        if use.sum() < 8:
            rows.append((k, np.nan, np.nan, np.nan, np.nan))
            continue
        y = np.flatnonzero(use).astype(float)
        d = _detrended(_row_offsets(f, r, lag)[use], y)
        # the halves have half the sampling: offsets in their pixels, x 2
        de = 2.0 * _row_offsets(f[:, 0::2], r[:, 0::2], max(1, lag // 2 + 1))[use]
        do = 2.0 * _row_offsets(f[:, 1::2], r[:, 1::2], max(1, lag // 2 + 1))[use]
        # var(de - do) = 2 var(half), the full-line estimate has about half of var(half)
        noise2 = float(np.mean((de - do - np.mean(de - do)) ** 2)) / 4.0
        nb = np.diff(y) == 1  # neighbouring lines
        rho = float(np.corrcoef(d[:-1][nb], d[1:][nb])[0, 1]) if nb.sum() >= 4 else float("nan")
        jit, scatter = _shared_line_offset(f, r, lag)
        rows.append((k, jit, np.sqrt(noise2), rho, scatter))
    return pd.DataFrame(rows, columns=cols)
