"""Numba kernels of :mod:`perovstem.insitu.clusters` (per-frame hot loops).

* 1-D running minimum / maximum with a constant outside value: van Herk / Gil–Werman
  algorithm (van Herk, Pattern Recogn. Lett. 13, 517 (1992); Gil & Werman, IEEE PAMI 15,
  504 (1993)), three comparisons per pixel whatever the element length.  Min and max are
  exact, so the result equals :func:`scipy.ndimage.minimum_filter1d` /
  ``maximum_filter1d`` (``mode="constant"``, centred element of odd length) bit for bit.
* The fused tail of the plateau excess (bilinear up-sampling of the coarse bias and plateau
  level, as :func:`scipy.ndimage.zoom` with ``order=1``, and the bias removal).
* The empty-site mask of the host-lattice test (fringe phase → fractional cell coordinates).

All kernels release the GIL (frames are analysed in threads).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, inline="always")
def _pick(a, b, is_max):  # pragma: no cover - compiled
    """max(a, b) if ``is_max`` else min(a, b) (``b`` on ties)."""
    if is_max:
        return a if a > b else b
    return a if a < b else b


@njit(cache=True, nogil=True)
def _vhgw_line(buf, size, is_max, g, r, out, n):  # pragma: no cover - compiled
    """``out[k] = min (max) of buf[k : k + size]`` for ``k < n`` (van Herk / Gil–Werman:
    forward and backward running extrema within blocks of ``size``; ``buf`` holds whole
    blocks)."""
    for s in range(0, buf.size, size):
        acc = buf[s]
        g[s] = acc
        for k in range(s + 1, s + size):
            acc = _pick(buf[k], acc, is_max)
            g[k] = acc
        e = s + size - 1
        acc = buf[e]
        r[e] = acc
        for k in range(e - 1, s - 1, -1):
            acc = _pick(buf[k], acc, is_max)
            r[k] = acc
    for k in range(n):
        out[k] = _pick(r[k], g[k + size - 1], is_max)


# columns are filtered in tiles of this many (copied into contiguous line buffers, so
# the strided reads of one column share their cache lines with the next ones)
_COL_TILE = 16


@njit(cache=True, nogil=True)
def _running_extremum(x, size, cval, is_max, axis):  # pragma: no cover - compiled
    """Running min (max) over ``size`` (odd) pixels along ``axis`` (0 or 1), centred,
    outside the image = ``cval``: :func:`scipy.ndimage.minimum_filter1d` /
    ``maximum_filter1d`` with ``mode="constant"``, bit for bit."""
    mm, nn = x.shape
    n_lines, n_len = (mm, nn) if axis == 1 else (nn, mm)
    h = size // 2
    ln = ((n_len + 2 * h + size - 1) // size) * size
    tile = 1 if axis == 1 else _COL_TILE
    buf = np.empty((tile, ln))
    res = np.empty((tile, n_len))
    g = np.empty(ln)
    r = np.empty(ln)
    out = np.empty((mm, nn))
    for j0 in range(0, n_lines, tile):
        nt = min(tile, n_lines - j0)
        buf[:nt] = cval
        if axis == 1:
            buf[0, h : h + n_len] = x[j0]
        else:
            for k in range(n_len):
                for t in range(nt):
                    buf[t, h + k] = x[k, j0 + t]
        for t in range(nt):
            _vhgw_line(buf[t], size, is_max, g, r, res[t], n_len)
        if axis == 1:
            out[j0] = res[0]
        else:
            for k in range(n_len):
                for t in range(nt):
                    out[k, j0 + t] = res[t, k]
    return out


@njit(cache=True, nogil=True)
def _line_square_opening(m, side, low, noise_scale):  # pragma: no cover - compiled
    """min(row, column openings) capped by the square opening + 3 noise σ (see
    ``clusters._lattice_opening``)."""
    ero_x = _running_extremum(m, side, low, False, 1)
    ero_y = _running_extremum(m, side, low, False, 0)
    dx = _running_extremum(ero_x, side, low, True, 1)
    dy = _running_extremum(ero_y, side, low, True, 0)
    mm, nn = m.shape
    line = np.empty((mm, nn))
    for i in range(mm):
        for j in range(nn):
            a = dx[i, j]
            b = dy[i, j]
            line[i, j] = a if a < b else b
    if noise_scale <= 0:
        return line
    sq = _running_extremum(ero_x, side, low, False, 0)
    sq = _running_extremum(sq, side, low, True, 0)
    sq = _running_extremum(sq, side, low, True, 1)
    for i in range(mm):
        for j in range(nn):
            s = sq[i, j]
            c = s + 3.0 * math.sqrt(noise_scale * (s if s > 0.0 else 0.0))
            if c < line[i, j]:
                line[i, j] = c
    return line


@njit(cache=True, nogil=True)
def _lin_index(o, scale, n_in):  # pragma: no cover - compiled
    c = o * scale
    i0 = int(math.floor(c))
    if i0 > n_in - 1:
        i0 = n_in - 1
    if i0 < 0:
        i0 = 0
    f = c - i0
    i1 = i0 + 1 if i0 + 1 < n_in else n_in - 1
    return i0, i1, f


@njit(cache=True, nogil=True)
def _remove_bias(e, bg, small, top, sy, sx):  # pragma: no cover - compiled
    """``e - max(up(small), 0) * clip(bg / max(up(top), 1e-30), 0, 1)``, ``up`` the bilinear
    up-sampling of the coarse grid (output pixel ``o`` at coarse coordinate ``o·s``)."""
    mm, nn = e.shape
    s0, s1 = small.shape
    out = np.empty((mm, nn))
    jx0 = np.empty(nn, np.int64)
    jx1 = np.empty(nn, np.int64)
    fx = np.empty(nn)
    for j in range(nn):
        a, b, f = _lin_index(j, sx, s1)
        jx0[j] = a
        jx1[j] = b
        fx[j] = f
    for i in range(mm):
        iy0, iy1, fy = _lin_index(i, sy, s0)
        for j in range(nn):
            a0, a1, w = jx0[j], jx1[j], fx[j]
            b = (1.0 - fy) * ((1.0 - w) * small[iy0, a0] + w * small[iy0, a1]) + fy * (
                (1.0 - w) * small[iy1, a0] + w * small[iy1, a1]
            )
            t = (1.0 - fy) * ((1.0 - w) * top[iy0, a0] + w * top[iy0, a1]) + fy * (
                (1.0 - w) * top[iy1, a0] + w * top[iy1, a1]
            )
            if b < 0.0:
                b = 0.0
            if t < 1e-30:
                t = 1e-30
            r = bg[i, j] / t
            if r < 0.0:
                r = 0.0
            elif r > 1.0:
                r = 1.0
            out[i, j] = e[i, j] - b * r
    return out


@njit(cache=True, nogil=True)
def _demod_blocks(img, cy, cx, b, mb, nb):  # pragma: no cover - compiled
    """Block means (``b``×``b``, zero beyond the image) of ``img · cy[y] · cx[x]``."""
    mm, nn = img.shape
    out = np.zeros((mb, nb), np.complex128)
    for y in range(mm):
        bi = y // b
        c_y = cy[y]
        for x in range(nn):
            out[bi, x // b] += img[y, x] * (c_y * cx[x])
    inv = 1.0 / (b * b)
    for i in range(mb):
        for j in range(nb):
            out[i, j] = out[i, j] * inv
    return out


@njit(cache=True, nogil=True)
def _label_max(labels, values, k):  # pragma: no cover - compiled
    """``out[l - 1] = max(values[labels == l])`` (-inf where empty), as ``np.maximum.at``."""
    out = np.full(k, -np.inf)
    for i in range(labels.size):
        li = labels[i] - 1
        v = values[i]
        if v > out[li] or np.isnan(v):
            out[li] = v
    return out


@njit(cache=True, nogil=True)
def _empty_site_mask(ph1, ph2, b, e1x, e1y, e2x, e2y, a_px, radius_px, mm, nn):  # pragma: no cover
    """1 where the local fractional cell coordinates are within ``radius_px`` of
    (¼, ¼)-type sites (phases ``ph1``, ``ph2`` on the ``b``-binned grid, radians)."""
    w = np.empty((mm, nn))
    tp = 2.0 * np.pi
    a2 = a_px * a_px
    r2lo = radius_px * radius_px * (1.0 - 1e-9)
    r2hi = radius_px * radius_px * (1.0 + 1e-9)
    p1 = ph1 / tp
    p2 = ph2 / tp
    x1 = np.empty(nn)
    x2 = np.empty(nn)
    for x in range(nn):
        x1[x] = e1x * float(x)
        x2[x] = e2x * float(x)
    for y in range(mm):
        yf = float(y)
        y1 = e1y * yf
        y2 = e2y * yf
        by = y // b
        for x in range(nn):
            u = (x1[x] + y1) / a_px + p1[by, x // b]
            v = (x2[x] + y2) / a_px + p2[by, x // b]
            fu = u - math.floor(u)
            fv = v - math.floor(v)
            # fu % 0.5 for fu in [0, 1] (fu - 0.5 is exact there; fu == 1.0 after
            # rounding gives 0.5 instead of 0, the same distance 0.25)
            du = abs((fu - 0.5 if fu >= 0.5 else fu) - 0.25)
            dv = abs((fv - 0.5 if fv >= 0.5 else fv) - 0.25)
            # hypot only near the circle (the squared test decides everywhere else)
            d2 = (du * du + dv * dv) * a2
            if d2 < r2lo:
                w[y, x] = 1.0
            elif d2 > r2hi:
                w[y, x] = 0.0
            else:
                w[y, x] = 1.0 if math.hypot(du, dv) * a_px < radius_px else 0.0
    return w
