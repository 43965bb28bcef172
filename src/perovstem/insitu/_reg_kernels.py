"""Fused element-wise kernels of the drift registration (:mod:`perovstem.insitu.register`).

Each kernel does in one pass over a half spectrum what a chain of numpy operations did with
several temporaries (cross-spectrum, spectral whitening, low-pass, Wiener weighting, phase
ramps); the arithmetic is the same, in single precision as before, so the results agree
with the numpy chain to float32 rounding.  Serial (no numba threads): the registration
runs beside the per-frame workers of :func:`perovstem.insitu.analyze_series`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = [
    "block_energy",
    "box5",
    "checker_alias_mean",
    "cross_white",
    "cross_weighted",
    "cross_whiten",
    "power",
    "ramp_multiply",
    "whitened",
    "wiener_weight",
]


@njit(cache=True, fastmath=True, boundscheck=False, nogil=True)
def _cross_whiten(
    fa: np.ndarray,
    fb: np.ndarray,
    lp: np.ndarray,
    p: float,
    wa: np.ndarray,
    use_wa: bool,
    out_h: np.ndarray,
    out_w: np.ndarray,
) -> None:
    m, n = fa.shape
    amax2 = np.float32(0.0)
    for i in range(m):
        for j in range(n):
            a = fa[i, j]
            b = fb[i, j]
            re = a.real * b.real + a.imag * b.imag
            im = a.real * b.imag - a.imag * b.real
            out_h[i, j] = complex(re, im)
            q = re * re + im * im
            if q > amax2:
                amax2 = q
    eps = np.float32(1e-12 * (np.sqrt(np.float64(amax2)) + 1e-30))
    hp = np.float32(0.5 * p)
    for i in range(m):
        for j in range(n):
            r = out_h[i, j]
            if use_wa:
                out_w[i, j] = r * wa[i, j]
            if p > 0:
                q = r.real * r.real + r.imag * r.imag
                d = q**hp + eps
                out_h[i, j] = r * (lp[i, j] / d)
            else:
                out_h[i, j] = r * lp[i, j]


def cross_whiten(
    fa: np.ndarray, fb: np.ndarray, lp: np.ndarray, p: float, wa: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """``R / (|R|^p + 1e-12 max|R|) · lp`` with ``R = conj(fa)·fb`` (complex64) and, with
    ``wa``, the Wiener-weighted cross-spectrum ``R · wa``."""
    fa = np.ascontiguousarray(fa, dtype=np.complex64)
    fb = np.ascontiguousarray(fb, dtype=np.complex64)
    out_h = np.empty(fa.shape, np.complex64)
    if wa is None:
        out_w = np.empty((1, 1), np.complex64)
        _cross_whiten(fa, fb, lp, float(p), lp, False, out_h, out_w)
        return out_h, None
    out_w = np.empty(fa.shape, np.complex64)
    wa = np.ascontiguousarray(wa, dtype=np.float32)
    _cross_whiten(fa, fb, lp, float(p), wa, True, out_h, out_w)
    return out_h, out_w


@njit(cache=True, fastmath=True, boundscheck=False, nogil=True)
def _cross_weighted(fa: np.ndarray, w: np.ndarray, fb: np.ndarray, out: np.ndarray) -> None:
    m, n = fa.shape
    for i in range(m):
        for j in range(n):
            out[i, j] = np.conj(fa[i, j]) * fb[i, j] * w[i, j]


def cross_weighted(fa: np.ndarray, w: np.ndarray, fb: np.ndarray) -> np.ndarray:
    """``conj(fa) · fb · w``, complex64."""
    out = np.empty(fa.shape, np.complex64)
    _cross_weighted(
        np.ascontiguousarray(fa, dtype=np.complex64),
        np.ascontiguousarray(w, dtype=np.float32),
        np.ascontiguousarray(fb, dtype=np.complex64),
        out,
    )
    return out


@njit(cache=True, fastmath=True, boundscheck=False, nogil=True)
def _ramp_multiply(spec: np.ndarray, ey: np.ndarray, ex: np.ndarray, out: np.ndarray) -> None:
    m, n = spec.shape
    for i in range(m):
        e = ey[i]
        for j in range(n):
            out[i, j] = spec[i, j] * (e * ex[j])


def ramp_multiply(spec: np.ndarray, ey: np.ndarray, ex: np.ndarray) -> np.ndarray:
    """``spec · (ey ⊗ ex)`` (a separable phase ramp) without forming the outer product;
    complex64 for a complex64 ``spec``, complex128 otherwise."""
    dt = np.complex64 if spec.dtype == np.complex64 else np.complex128
    spec = np.ascontiguousarray(spec, dtype=dt)
    out = np.empty(spec.shape, dt)
    _ramp_multiply(spec, ey.astype(dt), ex.astype(dt), out)
    return out


@njit(cache=True, fastmath=True, boundscheck=False, nogil=True)
def _power(spec: np.ndarray, out: np.ndarray) -> None:
    m, n = spec.shape
    for i in range(m):
        for j in range(n):
            z = spec[i, j]
            out[i, j] = z.real * z.real + z.imag * z.imag


@njit(cache=True, fastmath=True, boundscheck=False, nogil=True)
def _shrink(ps: np.ndarray, noise: float, out: np.ndarray) -> None:
    m, n = ps.shape
    nz = np.float32(noise)
    for i in range(m):
        for j in range(n):
            v = np.float32(1.0) - nz / max(ps[i, j], np.float32(1e-30))
            out[i, j] = min(max(v, np.float32(0.0)), np.float32(1.0))


def power(spec: np.ndarray) -> np.ndarray:
    """``|spec|²``, float32."""
    spec = np.ascontiguousarray(spec, dtype=np.complex64)
    out = np.empty(spec.shape, np.float32)
    _power(spec, out)
    return out


def wiener_weight(ps: np.ndarray, noise: float) -> np.ndarray:
    """``clip(1 - noise / max(ps, 1e-30), 0, 1)``, float32."""
    out = np.empty(ps.shape, np.float32)
    _shrink(np.ascontiguousarray(ps, dtype=np.float32), float(noise), out)
    return out


@njit(cache=True, fastmath=True, boundscheck=False, nogil=True)
def _whitened(f: np.ndarray, p: float, out: np.ndarray) -> None:
    m, n = f.shape
    hp = np.float32(0.5 * p)
    amax2 = np.float32(0.0)
    for i in range(m):
        for j in range(n):
            z = f[i, j]
            q = z.real * z.real + z.imag * z.imag
            if q > amax2:
                amax2 = q
    # |f|^p + 1e-6 max|f|^p: the product of two such factors is |R|^p (R = conj(a) b)
    # up to terms at 1e-6 of the largest, the regularisation of the whitening
    eps = np.float32(1e-6 * np.float64(amax2) ** np.float64(hp) + 1e-30)
    for i in range(m):
        for j in range(n):
            z = f[i, j]
            q = z.real * z.real + z.imag * z.imag
            out[i, j] = z / (q**hp + eps)


def whitened(f: np.ndarray, p: float) -> np.ndarray:
    """``f / (|f|^p + 1e-6 max|f|^p)``, complex64: the spectral whitening ``R / |R|^p`` of a
    cross-spectrum ``R = conj(a) b`` factorises into the whitened spectra of ``a`` and
    ``b``, computed once per spectrum instead of once per pair (no power per pair)."""
    f = np.ascontiguousarray(f, dtype=np.complex64)
    out = np.empty(f.shape, np.complex64)
    if p <= 0:
        out[...] = f
        return out
    _whitened(f, float(p), out)
    return out


@njit(cache=True, fastmath=True, boundscheck=False, nogil=True)
def _cross_white(
    wa_: np.ndarray,
    wb_: np.ndarray,
    lp: np.ndarray,
    fa: np.ndarray,
    fb: np.ndarray,
    w: np.ndarray,
    use_w: bool,
    out_h: np.ndarray,
    out_w: np.ndarray,
) -> None:
    m, n = fa.shape
    for i in range(m):
        for j in range(n):
            out_h[i, j] = np.conj(wa_[i, j]) * wb_[i, j] * lp[i, j]
            if use_w:
                out_w[i, j] = np.conj(fa[i, j]) * fb[i, j] * w[i, j]


def cross_white(
    white_a: np.ndarray,
    white_b: np.ndarray,
    lp: np.ndarray,
    fa: np.ndarray,
    fb: np.ndarray,
    wa: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The whitened, low-passed cross-spectrum ``conj(white_a) · white_b · lp`` (whitened
    spectra of :func:`whitened`) and, with ``wa``, the Wiener-weighted one
    ``conj(fa) · fb · wa``; complex64, one pass."""
    out_h = np.empty(fa.shape, np.complex64)
    args = [np.ascontiguousarray(x, dtype=np.complex64) for x in (white_a, white_b)]
    fa = np.ascontiguousarray(fa, dtype=np.complex64)
    fb = np.ascontiguousarray(fb, dtype=np.complex64)
    if wa is None:
        _cross_white(*args, lp, fa, fb, lp, False, out_h, out_h)
        return out_h, None
    out_w = np.empty(fa.shape, np.complex64)
    _cross_white(*args, lp, fa, fb, np.ascontiguousarray(wa, np.float32), True, out_h, out_w)
    return out_h, out_w


@njit(cache=True, fastmath=True, boundscheck=False, nogil=True)
def _box5_nearest(p: np.ndarray, tmp: np.ndarray, out: np.ndarray) -> None:
    # 5 x 5 running mean, edges repeated ("nearest"); float64 sums
    m, n = p.shape
    for i in range(m):
        for j in range(n):
            s = 0.0
            for d in range(-2, 3):
                jj = min(max(j + d, 0), n - 1)
                s += p[i, jj]
            tmp[i, j] = s / 5.0
    for i in range(m):
        for j in range(n):
            out[i, j] = 0.0
        for d in range(-2, 3):
            ii = min(max(i + d, 0), m - 1)
            for j in range(n):
                out[i, j] += tmp[ii, j]
        for j in range(n):
            out[i, j] /= 5.0


def box5(p: np.ndarray) -> np.ndarray:
    """5 × 5 mean filter with ``mode="nearest"`` (:func:`scipy.ndimage.uniform_filter`),
    float32 in, float32 out."""
    p = np.ascontiguousarray(p, dtype=np.float32)
    tmp = np.empty(p.shape, np.float32)
    out = np.empty(p.shape, np.float32)
    _box5_nearest(p, tmp, out)
    return out


@njit(cache=True, fastmath=True, boundscheck=False, nogil=True)
def _block_energy(img: np.ndarray, b: int, out: np.ndarray) -> None:
    mb, nb = out.shape
    for i in range(mb):
        for j in range(nb):
            out[i, j] = 0.0
        for r in range(i * b, (i + 1) * b):
            for j in range(nb):
                s = 0.0
                for c in range(j * b, (j + 1) * b):
                    v = np.float64(img[r, c])
                    s += v * v
                out[i, j] += s
        for j in range(nb):
            out[i, j] /= b * b


def block_energy(img: np.ndarray, b: int) -> np.ndarray:
    """Mean of ``img²`` over ``b × b`` blocks (the incomplete last ones left out), float32."""
    m, n = img.shape
    out = np.empty((m // b, n // b), np.float32)
    _block_energy(np.ascontiguousarray(img, dtype=np.float32), int(b), out)
    return out


@njit(cache=True, boundscheck=False, nogil=True)
def _checker_alias_mean(spec: np.ndarray, alias: np.ndarray, half, out: np.ndarray) -> None:
    # no fastmath: the same complex arithmetic as numpy's conj / add / multiply
    m, n = spec.shape
    for i in range(m):
        ai = alias[i]
        for j in range(n):
            out[i, j] = (np.conj(spec[ai, n - 1 - j]) + spec[i, j]) * half


def checker_alias_mean(spec: np.ndarray, alias: np.ndarray) -> np.ndarray:
    """``(conj(spec[alias][:, ::-1]) + spec) · 0.5`` in one pass (the checkerboard-half
    spectrum of :func:`perovstem.insitu.register._checker_half`), in the precision of
    ``spec`` (complex64 or complex128), as the numpy chain computes it."""
    dt = np.complex64 if spec.dtype == np.complex64 else np.complex128
    spec = np.ascontiguousarray(spec, dtype=dt)
    out = np.empty(spec.shape, dt)
    _checker_alias_mean(spec, np.ascontiguousarray(alias, dtype=np.int64), dt(0.5), out)
    return out
