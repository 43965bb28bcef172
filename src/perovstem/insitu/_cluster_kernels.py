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


@njit(cache=True, nogil=True, inline="always")
def _at(src, kk, t, cval):  # pragma: no cover - compiled
    """``src[kk, t]``, ``cval`` for rows outside ``src``."""
    return src[kk, t] if 0 <= kk < src.shape[0] else cval


@njit(cache=True, nogil=True)
def _vhgw_lanes(src, size, h, cval, is_max, g, r, out, t0, t1, oo=0):  # pragma: no cover - compiled
    """``out[k, t] = min (max) of src[k − h : k − h + size, t]`` (rows outside ``src`` =
    ``cval``) for every row ``k`` of ``out`` and the lanes ``t0 ≤ t < t1``: van Herk /
    Gil–Werman forward and backward running extrema within blocks of ``size`` rows.
    ``g`` and ``r`` (at least ``2·size`` rows, ``t1 − t0`` lanes; lane ``t`` in column
    ``t − t0``) hold the forward extrema of two consecutive blocks (rolling) and the
    backward extrema of one: the output rows of a block need its backward extrema and the
    forward ones of the same and the next block, so the buffers stay in cache whatever the
    image height (a whole-height buffer per pass made the kernel memory-bound).  Lane
    ``t`` is written to column ``t − oo`` of ``out``.  The lanes are contiguous, so the
    inner loops vectorise."""
    n_out = out.shape[0]
    nb = (n_out + size - 1) // size + 1  # blocks of the padded lane touched by the output
    for bi in range(nb):
        s = bi * size
        gs = (bi % 2) * size  # rolling slot of this block's forward extrema
        for t in range(t0, t1):
            g[gs, t - t0] = _at(src, s - h, t, cval)
        for k in range(1, size):
            for t in range(t0, t1):
                g[gs + k, t - t0] = _pick(
                    _at(src, s + k - h, t, cval), g[gs + k - 1, t - t0], is_max
                )
        if bi == 0:
            continue
        # the previous block's output rows: backward extrema of that block, then
        # out[k] = pick(r[k], g[k + size − 1]) (g of the previous or of this block)
        ps = s - size
        e = size - 1
        for t in range(t0, t1):
            r[e, t - t0] = _at(src, ps + e - h, t, cval)
        for k in range(e - 1, -1, -1):
            for t in range(t0, t1):
                r[k, t - t0] = _pick(_at(src, ps + k - h, t, cval), r[k + 1, t - t0], is_max)
        pg = ((bi - 1) % 2) * size
        for k in range(size):
            ko = ps + k
            if ko >= n_out:
                break
            kg = k + size - 1  # row of g within the two blocks (previous block first)
            row = pg + kg if kg < size else gs + kg - size
            for t in range(t0, t1):
                out[ko, t - oo] = _pick(r[k, t - t0], g[row, t - t0], is_max)


#: lanes per strip of the column-wise (axis 0) pass: its buffers (2 + 1 blocks of
#: ``size`` rows × this many doubles) stay in the L2 cache
_COL_LANES = 64


@njit(cache=True, nogil=True)
def _running_extremum(x, size, cval, is_max, axis):  # pragma: no cover - compiled
    """Running min (max) over ``size`` (odd) pixels along ``axis`` (0 or 1), centred,
    outside the image = ``cval``: :func:`scipy.ndimage.minimum_filter1d` /
    ``maximum_filter1d`` with ``mode="constant"``, bit for bit.

    Along axis 0 the columns of ``x`` are the lanes (vectorised across the row, no copy),
    in strips of :data:`_COL_LANES`; along axis 1 tiles of :data:`_ROW_LANES` rows are
    copied transposed into a small buffer whose lanes are those rows."""
    mm, nn = x.shape
    h = size // 2
    out = np.empty((mm, nn))
    if axis == 0:
        lanes = min(_COL_LANES, nn)
        g = np.empty((2 * size, lanes))
        r = np.empty((size, lanes))
        for t0 in range(0, nn, lanes):
            _vhgw_lanes(x, size, h, cval, is_max, g, r, out, t0, min(nn, t0 + lanes))
        return out
    lanes = _ROW_LANES
    buf = np.empty((nn, lanes))
    g = np.empty((2 * size, lanes))
    r = np.empty((size, lanes))
    res = np.empty((nn, lanes))
    for i0 in range(0, mm, lanes):
        nt = min(lanes, mm - i0)
        for t in range(nt):
            for k in range(nn):
                buf[k, t] = x[i0 + t, k]
        _vhgw_lanes(buf, size, h, cval, is_max, g, r, res, 0, lanes)
        for t in range(nt):
            for k in range(nn):
                out[i0 + t, k] = res[k, t]
    return out


# rows are filtered in tiles of this many (the lanes of a transposed copy)
_ROW_LANES = 32


@njit(cache=True, nogil=True)
def _rows_erode_dilate(x, size, cval):  # pragma: no cover - compiled
    """Row-wise (axis 1) running minimum of ``x`` and the running maximum of that, as two
    :func:`_running_extremum` calls, with one transposed copy of each tile of rows."""
    mm, nn = x.shape
    h = size // 2
    ero = np.empty((mm, nn))
    dil = np.empty((mm, nn))
    lanes = _ROW_LANES
    buf = np.empty((nn, lanes))
    g = np.empty((2 * size, lanes))
    r = np.empty((size, lanes))
    res = np.empty((nn, lanes))
    res2 = np.empty((nn, lanes))
    for i0 in range(0, mm, lanes):
        nt = min(lanes, mm - i0)
        for t in range(nt):
            for k in range(nn):
                buf[k, t] = x[i0 + t, k]
        _vhgw_lanes(buf, size, h, cval, False, g, r, res, 0, lanes)
        _vhgw_lanes(res, size, h, cval, True, g, r, res2, 0, lanes)
        for t in range(nt):
            for k in range(nn):
                ero[i0 + t, k] = res[k, t]
                dil[i0 + t, k] = res2[k, t]
    return ero, dil


@njit(cache=True, nogil=True)
def _cols_open(x, size, cval, first_max):  # pragma: no cover - compiled
    """Column-wise (axis 0) running minimum (maximum with ``first_max``) of ``x`` followed
    by the running maximum of that, strip by strip (the intermediate stays in cache): two
    :func:`_running_extremum` calls along axis 0."""
    mm, nn = x.shape
    h = size // 2
    out = np.empty((mm, nn))
    lanes = min(_COL_LANES, nn)
    g = np.empty((2 * size, lanes))
    r = np.empty((size, lanes))
    mid = np.empty((mm, lanes))
    for t0 in range(0, nn, lanes):
        t1 = min(nn, t0 + lanes)
        # the strip's first pass into ``mid`` (lane t in column t − t0), then the second
        # from ``mid``'s columns 0 … t1 − t0 into ``out``'s columns t0 … t1
        _vhgw_lanes(x, size, h, cval, first_max, g, r, mid, t0, t1, t0)
        _vhgw_lanes(mid, size, h, cval, True, g, r, out, 0, t1 - t0, -t0)
    return out


@njit(cache=True, nogil=True)
def _line_square_opening(m, side, low, noise_scale):  # pragma: no cover - compiled
    """min(row, column openings) capped by the square opening + 3 noise σ (see
    ``clusters._lattice_opening``).  The same seven 1-D passes as before (row erosion and
    its dilation, column erosion and its dilation, and the square opening's column
    erosion and dilation of the row erosion, then its row dilation), fused pairwise so
    that each intermediate is produced and consumed in cache."""
    ero_x, dx = _rows_erode_dilate(m, side, low)
    dy = _cols_open(m, side, low, False)
    mm, nn = m.shape
    line = np.empty((mm, nn))
    for i in range(mm):
        for j in range(nn):
            a = dx[i, j]
            b = dy[i, j]
            line[i, j] = a if a < b else b
    if noise_scale <= 0:
        return line
    sq = _cols_open(ero_x, side, low, False)
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
        # block by block along the row (no integer division per pixel; the same order of
        # the sums)
        for bj in range(nb):
            acc = out[bi, bj]
            for x in range(bj * b, min(nn, (bj + 1) * b)):
                acc += img[y, x] * (c_y * cx[x])
            out[bi, bj] = acc
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
def _label_argmax(labels, values, k):  # pragma: no cover - compiled
    """Flat index of the first maximum of ``values`` in each label 1 … ``k`` (C order;
    -1 where empty; label 0 and labels > ``k`` ignored): what
    :func:`scipy.ndimage.maximum_position` returns, in one pass instead of a sort (among
    exactly equal maxima scipy's choice depends on its sort; this one is the first)."""
    best = np.full(k, -np.inf)
    idx = np.full(k, -1, np.int64)
    for i in range(labels.size):
        li = labels[i]
        if li < 1 or li > k:
            continue
        v = values[i]
        if idx[li - 1] < 0 or v > best[li - 1]:
            best[li - 1] = v
            idx[li - 1] = i
    return idx


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
    xb = np.empty(nn, np.int64)  # (no integer division per pixel)
    for x in range(nn):
        x1[x] = e1x * float(x)
        x2[x] = e2x * float(x)
        xb[x] = x // b
    for y in range(mm):
        yf = float(y)
        y1 = e1y * yf
        y2 = e2y * yf
        by = y // b
        for x in range(nn):
            u = (x1[x] + y1) / a_px + p1[by, xb[x]]
            v = (x2[x] + y2) / a_px + p2[by, xb[x]]
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


@njit(cache=True, nogil=True, inline="always")
def _interp_uniform(x, xp, fp):  # pragma: no cover - compiled
    """``np.interp(x, xp, fp, right=0.0)`` for a uniform table ``xp`` starting at 0 and
    ``x >= 0`` (same formula and bracketing, so the same value): the bracket is found by
    division instead of a binary search."""
    n = xp.size
    if x > xp[n - 1]:
        return 0.0
    if x == xp[n - 1]:
        return fp[n - 1]
    j = int(x / (xp[1] - xp[0]))
    if j > n - 2:
        j = n - 2
    if j < 0:
        j = 0
    while j > 0 and xp[j] > x:
        j -= 1
    while j < n - 2 and xp[j + 1] <= x:
        j += 1
    if xp[j] == x:
        return fp[j]
    return (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j]) * (x - xp[j]) + fp[j]


@njit(cache=True, nogil=True, inline="always")
def _ramp(k, y, out):  # pragma: no cover - compiled
    """``out = exp(−2πi k y)``, as ``np.exp(-2j * np.pi * k * y)`` (the same phase and
    cosine / sine, the same values)."""
    for i in range(k.size):
        th = (-2.0 * np.pi * k[i]) * y
        out[i] = complex(math.cos(th), math.sin(th))


@njit(cache=True, nogil=True)
def _dome_spectra(
    q, ky, kx, dky, dkx, filt, dfilt, ys, xs, amps, radii, tail, jac, tq, tb, tdb
):  # pragma: no cover - compiled
    """Spectrum of the sum of blurred projected spheres (``clusters._DomeGrid.model``):
    sphere ``c`` is ``B(q·radii[c]) · amps[c]·exp(−2πi (ky ys[c] + kx xs[c]))`` (centres
    in frame pixels from the padded grid's origin), times ``filt + tail·dfilt``; with
    ``jac`` also the derivatives by y, x and log amplitude of each sphere (``dky``, ``dkx``
    = −2πi k) and by ``tail``, shape (1 + (3k + 1)·jac, Fy, Fx).  ``B`` and ``B'`` by table
    interpolation (``tq``, ``tb``, ``tdb``)."""
    fy, fx = q.shape
    kk = amps.size
    ns = 1 + (3 * kk + 1) * jac
    spec = np.zeros((ns, fy, fx), np.complex128)
    ey = np.empty(fy, np.complex128)
    ex = np.empty(fx, np.complex128)
    for c in range(kk):
        r = radii[c]
        amp = amps[c]
        _ramp(ky, ys[c], ey)
        _ramp(kx, xs[c], ex)
        for i in range(fy):
            pa = amp * ey[i]
            for j in range(fx):
                ph = pa * ex[j]
                qr = q[i, j] * r
                b = _interp_uniform(qr, tq, tb) * ph
                spec[0, i, j] += b
                if jac:
                    spec[1 + 3 * c, i, j] = dky[i] * b
                    spec[2 + 3 * c, i, j] = dkx[j] * b
                    spec[3 + 3 * c, i, j] = b + _interp_uniform(qr, tq, tdb) * qr / 3.0 * ph
    for i in range(fy):
        for j in range(fx):
            fl = filt[i, j] + tail * dfilt[i, j]
            if jac:
                spec[ns - 1, i, j] = spec[0, i, j] * dfilt[i, j]
                for s in range(ns - 1):
                    spec[s, i, j] *= fl
            else:
                spec[0, i, j] *= fl
    return spec


@njit(cache=True, nogil=True)
def _ellipse_spectra(
    kx, ky, filt, dfilt, ys, xs, amps, radii, eta, theta, tail, tq, tb
):  # pragma: no cover - compiled
    """Spectra of blurred projected ellipsoids (``clusters._ellipse_model``), one per
    parameter set ``p``: in-plane semi-axes ``radii[p]·exp(±eta[p]/2)``, long axis at
    ``theta[p]``, amplitude ``amps[p]``, centre ``ys[p], xs[p]`` (frame pixels from the
    padded grid's origin), times ``filt + tail[p]·dfilt``; shape (P, Fy, Fx)."""
    fy = ky.size
    fx = kx.size
    npar = amps.size
    spec = np.empty((npar, fy, fx), np.complex128)
    ey = np.empty(fy, np.complex128)
    ex = np.empty(fx, np.complex128)
    tp = 2.0 * np.pi
    for p in range(npar):
        ct = math.cos(theta[p])
        st = math.sin(theta[p])
        eu = math.exp(eta[p] / 2)
        ev = math.exp(-eta[p] / 2)
        rr = tp * radii[p]
        amp = amps[p]
        _ramp(ky, ys[p], ey)
        _ramp(kx, xs[p], ex)
        for i in range(fy):
            pa = amp * ey[i]
            for j in range(fx):
                ku = kx[j] * ct + ky[i] * st
                kv = -kx[j] * st + ky[i] * ct
                a = ku * eu
                b = kv * ev
                qq = rr * math.sqrt(a * a + b * b)
                spec[p, i, j] = (
                    _interp_uniform(qq, tq, tb)
                    * (pa * ex[j])
                    * (filt[i, j] + tail[p] * dfilt[i, j])
                )
    return spec


@njit(cache=True, nogil=True)
def _shift_mean_kernel(cy, sy, cx, sx):  # pragma: no cover - compiled
    """(D_4(α) D_4(β) − D_2(α) D_2(β)) / 56 with D_n(θ) = 1 + 2 Σ_{l<=n} cos(lθ), the
    phases α (d = 0) and β (d = 1) split into k_y and k_x parts: ``cy[d, l − 1, i]`` =
    cos(l·α_y(i)), ``sy`` the sines, ``cx``, ``sx`` those of the k_x parts
    (cos(a + b) = cos a cos b − sin a sin b)."""
    fy = cy.shape[2]
    fx = cx.shape[2]
    out = np.empty((fy, fx))
    for i in range(fy):
        for j in range(fx):
            a = 1.0
            b = 1.0
            a2 = 1.0
            b2 = 1.0
            for ll in range(4):
                a += 2.0 * (cy[0, ll, i] * cx[0, ll, j] - sy[0, ll, i] * sx[0, ll, j])
                b += 2.0 * (cy[1, ll, i] * cx[1, ll, j] - sy[1, ll, i] * sx[1, ll, j])
                if ll == 1:
                    a2 = a
                    b2 = b
            out[i, j] = (a * b - a2 * b2) / 56.0
    return out


@njit(cache=True, nogil=True)
def _sinc_sum(s_a, c_a, a, s_b, c_b, b):  # pragma: no cover - compiled
    """sin(u)/u of u = a + b from the sines and cosines of ``a`` and ``b``
    (sin(a + b) = sin a cos b + cos a sin b); ``math.sin(u)/u`` where |u| < 0.5 (there
    the sum's rounding would be a large part of sin u), 1 at u = 0 (``np.sinc``'s)."""
    u = a + b
    if u == 0.0:
        return 1.0
    if abs(u) < 0.5:
        return math.sin(u) / u
    return (s_a * c_b + c_a * s_b) / u


@njit(cache=True, nogil=True)
def _cell_filter_kernel(uy, ux, vy, vx, gy, gx):  # pragma: no cover - compiled
    """sinc(k₁a)·sinc(k₂a)·g_y·g_x on the (len(uy), len(ux)) rfft2 grid, float32.

    ``uy[0, i]``, ``ux[0, j]``: the k_y and k_x parts of π a k₁ (k₁ = k_x cos t +
    k_y sin t), ``uy[1]``, ``ux[1]`` their sines and ``uy[2]``, ``ux[2]`` their cosines;
    ``vy``, ``vx`` the same for π a k₂ (k₂ = −k_x sin t + k_y cos t); ``gy``, ``gx``
    the separable Gaussian factors (ones without smoothing).  Products in float64, one
    rounding to float32."""
    fy = uy.shape[1]
    fx = ux.shape[1]
    out = np.empty((fy, fx), np.float32)
    for i in range(fy):
        for j in range(fx):
            s1 = _sinc_sum(ux[1, j], ux[2, j], ux[0, j], uy[1, i], uy[2, i], uy[0, i])
            s2 = _sinc_sum(vx[1, j], vx[2, j], vx[0, j], vy[1, i], vy[2, i], vy[0, i])
            out[i, j] = np.float32(s1 * s2 * (gy[i] * gx[j]))
    return out


@njit(cache=True, nogil=True)
def _interp_sorted(x, xp, fp):  # pragma: no cover - compiled
    """``np.interp(x, xp, fp)`` for one value (increasing ``xp``; the same bracketing,
    special cases and formula)."""
    n = xp.size
    if x > xp[n - 1]:
        return fp[n - 1]
    if x < xp[0]:
        return fp[0]
    if x == xp[n - 1]:
        return fp[n - 1]
    lo = 0
    hi = n - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if xp[mid] <= x:
            lo = mid
        else:
            hi = mid
    if xp[lo] == x:
        return fp[lo]
    return (fp[lo + 1] - fp[lo]) / (xp[lo + 1] - xp[lo]) * (x - xp[lo]) + fp[lo]


@njit(cache=True, nogil=True)
def _cluster_volume_term(amps, scale, c, n, slope, a3, den):  # pragma: no cover - compiled
    """3 n a3 / den for clusters of integrated counts ``amps`` (n: atoms by the library,
    SCS ``c``, atoms ``n``, linear beyond its end with ``slope``; counts / ``scale`` = SCS)
    in the operation order of ``clusters._fcc_radius_A``, whose cube root (taken by the
    caller with NumPy's power, whose rounding libm's does not share) is the equal-volume
    radius (``clusters._CountsToAtoms.radius_px``)."""
    out = np.empty(amps.size)
    for i in range(amps.size):
        a = amps[i]
        if a < 0.0:
            a = 0.0
        s = a / scale
        if s > c[c.size - 1]:
            at = n[n.size - 1] + (s - c[c.size - 1]) * slope
        else:
            at = _interp_sorted(s, c, n)
        if not s > 0.0:
            at = 0.0
        if at < 0.0:
            at = 0.0
        out[i] = 3.0 * at * a3 / den
    return out


@njit(cache=True, nogil=True, inline="always")
def _reflect(i, n):  # pragma: no cover - compiled
    """Source index of padded index ``i`` (``-n < i < 2n − 1``) under ``np.pad``'s
    ``mode="reflect"`` (edge not repeated)."""
    if i < 0:
        return -i
    if i >= n:
        return 2 * (n - 1) - i
    return i


@njit(cache=True, nogil=True)
def _centred_pad32(x, mean, top, bottom, left, right):  # pragma: no cover - compiled
    """``np.pad((x − mean).astype(np.float32), ((0, 0), (top, bottom), (left, right)),
    mode="reflect")`` for a (B, M, N) float64 stack and one mean per image, in one pass
    (no float64 or float32 temporaries).  Every pad must be < the side it pads."""
    nb, mm, nn = x.shape
    m2, n2 = mm + top + bottom, nn + left + right
    out = np.empty((nb, m2, n2), np.float32)
    cols = np.empty(n2, np.int64)
    for j in range(n2):
        cols[j] = _reflect(j - left, nn)
    for b in range(nb):
        mb = mean[b]
        for i in range(m2):
            si = _reflect(i - top, mm)
            for j in range(left):
                out[b, i, j] = np.float32(x[b, si, cols[j]] - mb)
            for j in range(nn):
                out[b, i, left + j] = np.float32(x[b, si, j] - mb)
            for j in range(left + nn, n2):
                out[b, i, j] = np.float32(x[b, si, cols[j]] - mb)
    return out


def centred_pad32(x: np.ndarray, mean: np.ndarray, pads: tuple) -> np.ndarray:
    """``np.pad((x - mean).astype(np.float32), pads, mode="reflect")`` on the last two axes
    of a float64 image or stack (``mean``: one value per image, keepdims), in one compiled
    pass (:func:`_centred_pad32`); ``np.pad`` where a pad reaches the side it pads.  The
    values are those of the numpy chain bit for bit (same float64 difference, same
    rounding to float32)."""
    (t, b), (le, r) = pads
    mm, nn = x.shape[-2:]
    if max(t, b) >= mm or max(le, r) >= nn:
        lead = ((0, 0),) * (x.ndim - 2)
        return np.pad((x - mean).astype(np.float32), (*lead, *pads), mode="reflect")
    out = _centred_pad32(
        np.ascontiguousarray(x.reshape(-1, mm, nn), dtype=float),
        np.ascontiguousarray(mean, dtype=float).reshape(-1),
        int(t),
        int(b),
        int(le),
        int(r),
    )
    return out.reshape(*x.shape[:-2], *out.shape[-2:])


@njit(cache=True, nogil=True)
def _crop_scale_add(a, py, px, mm, nn, c, fct):  # pragma: no cover - compiled
    """``(a[:, py:py + mm, px:px + nn] * fct).astype(float) + c[:, None, None]`` in one
    pass (the product in the precision of ``a``)."""
    nb = a.shape[0]
    out = np.empty((nb, mm, nn))
    for b in range(nb):
        cb = c[b]
        for i in range(mm):
            for j in range(nn):
                out[b, i, j] = np.float64(a[b, py + i, px + j] * fct) + cb
    return out


def crop_restore(
    out: np.ndarray,
    py: int,
    px: int,
    mm: int,
    nn: int,
    level: np.ndarray,
    *,
    scale: float | None = None,
) -> np.ndarray:
    """``out[..., py:py + mm, px:px + nn].astype(float) + level`` (``level``: one float64
    value per image, keepdims) in one compiled pass (:func:`_crop_scale_add`), bit for bit.
    ``scale``: the crop is first multiplied by it in ``out``'s precision (the 1/(M N) of
    an unscaled inverse transform, :func:`irfft2_rows`); None is 1 (x·1 is exact)."""
    a = np.ascontiguousarray(out.reshape(-1, *out.shape[-2:]))
    lv = np.ascontiguousarray(level, dtype=float).reshape(-1)
    fct = a.dtype.type(1.0 if scale is None else scale)
    res = _crop_scale_add(a, int(py), int(px), int(mm), int(nn), lv, fct)
    return res.reshape(*out.shape[:-2], mm, nn)


def irfft2_rows(
    spec: np.ndarray,
    shape: tuple[int, int],
    r0: int,
    r1: int,
    *,
    scale: bool = True,
    overwrite: bool = False,
    workers: int = 2,
) -> np.ndarray | tuple[np.ndarray, float]:
    """Rows ``r0:r1`` of ``scipy.fft.irfft2(spec, s=shape)`` (last two axes), bit for bit.

    pocketfft's 2-D inverse is an unscaled complex transform along the rows axis, then
    the complex-to-real one along the last axis with the factor 1/(M N) (rounded from a
    ``long double`` to the data's precision) applied to its output.  The same two passes
    are run here as two 1-D transforms, the second on the wanted rows only; with
    ``scale=False`` the factor is returned instead of applied (``(rows, fct)``, for a
    fused crop, :func:`crop_restore`).  Half the time of ``irfft2`` on the detector's
    ~1000² single-precision maps (its multi-axis path is slower than the two 1-D passes),
    less when only part of the rows are kept.  ``overwrite``: ``spec`` may be destroyed.
    """
    from scipy import fft as sfft

    m, n = int(shape[0]), int(shape[1])
    cols = sfft.ifft(spec, axis=-2, norm="forward", overwrite_x=overwrite, workers=workers)
    rows = sfft.irfft(cols[..., r0:r1, :], n=n, axis=-1, norm="forward", workers=workers)
    fct = rows.dtype.type(np.longdouble(1) / np.longdouble(m * n))
    if not scale:
        return rows, fct
    rows *= fct
    return rows


@njit(cache=True, nogil=True)
def _expand_from_ft(lab, fy, fx, distance):  # pragma: no cover - compiled
    """Labels spread to every pixel whose nearest labelled pixel (``fy``, ``fx``: the
    Euclidean feature transform) lies within ``distance`` px; the distance computed as
    :func:`scipy.ndimage.distance_transform_edt` does (float64 squares, one sqrt)."""
    mm, nn = lab.shape
    out = np.zeros_like(lab)
    for i in range(mm):
        for j in range(nn):
            iy = fy[i, j]
            ix = fx[i, j]
            dy = np.float64(iy - i)
            dx = np.float64(ix - j)
            if math.sqrt(dy * dy + dx * dx) <= distance:
                out[i, j] = lab[iy, ix]
    return out


def expand_labels(labels: np.ndarray, distance: float) -> np.ndarray:
    """:func:`skimage.segmentation.expand_labels` of a 2-D label image (unit spacing), bit
    for bit: the same feature transform (:func:`scipy.ndimage.distance_transform_edt`, so
    the same nearest label where two are equally near), without its distance map, boolean
    masks and gathers (one compiled pass instead; ~half the time on 1024² frames)."""
    from scipy import ndimage

    lab = np.ascontiguousarray(labels)
    if lab.ndim != 2 or not lab.any():
        from skimage.segmentation import expand_labels as _sk

        return _sk(lab, distance=distance)
    ft = ndimage.distance_transform_edt(lab == 0, return_distances=False, return_indices=True)
    return _expand_from_ft(lab, ft[0], ft[1], float(distance))
