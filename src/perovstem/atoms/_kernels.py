"""Numba kernels of the Gaussian column model (internal; pixel units throughout).

Coordinates are in pixels with pixel (row i, column j) centred at ``(x, y) = (j, i)``.
Every column ``k`` is ``eta[k]·exp(−r²/(2·rho[k]²))`` truncated at ``r > cut·rho[k]``
(``cut > 0``), or on StatSTEM's square section of half-width ``|cut|·rho[k]`` (``cut < 0``).
The residual image ``res = data − model`` is kept up to date in place by the block steps,
so that every local step sees the current model of all neighbouring columns (this is what
makes the Gauss–Seidel scheme converge to the *joint* least-squares optimum).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, nogil=True, inline="always")
def _exp1d(c, lo, hi, inv):
    """``exp(−(t − c)²·inv/2)`` for integer ``t = lo … hi`` (separable Gaussian factor).

    ``exp(−r²/2ρ²) = e_x(j)·e_y(i)``: 1-D factors cost O(w + h) exponentials per column
    instead of O(w·h).
    """
    out = np.empty(hi - lo + 1)
    for t in range(lo, hi + 1):
        d = t - c
        out[t - lo] = np.exp(-0.5 * d * d * inv)
    return out


@njit(cache=True, nogil=True, inline="always")
def _span(c, r, cut, n):
    """Pixel index range ``[lo, hi]`` (clipped to ``0 … n−1``) of a column's support on one axis.

    ``cut > 0``: disk of radius ``cut·r`` (its bounding range).  ``cut < 0``: StatSTEM's square
    section ``round(c ∓ |cut|·r)`` (v2.1 ``getGa``/``combinedGauss``: the Gaussian is evaluated
    on every pixel of that square, corners included), with MATLAB's half-away rounding.
    """
    if cut < 0.0:
        h = -cut * r
        lo = int(np.floor(c - h + 0.5))
        hi = int(np.floor(c + h + 0.5))
    else:
        h = cut * r
        lo = int(np.floor(c - h))
        hi = int(np.ceil(c + h))
    return max(0, lo), min(n - 1, hi)


@njit(cache=True, nogil=True, inline="always")
def _rc2(r, cut):
    """Squared truncation radius (infinite for the square support, ``cut < 0``)."""
    if cut < 0.0:
        return np.inf
    return cut * cut * r * r


@njit(cache=True, nogil=True)
def add_columns(img, x, y, eta, rho, cut, sign):
    """``img += sign · Σ_k eta_k g_k`` (truncated Gaussians), in place."""
    ny, nx = img.shape
    for k in range(x.shape[0]):
        xk = x[k]
        yk = y[k]
        rk = rho[k]
        rc2 = _rc2(rk, cut)
        inv = 1.0 / (2.0 * rk * rk)
        j0, j1 = _span(xk, rk, cut, nx)
        i0, i1 = _span(yk, rk, cut, ny)
        a = sign * eta[k]
        if i1 < i0 or j1 < j0:
            continue
        ex = _exp1d(xk, j0, j1, 2.0 * inv)
        ey = _exp1d(yk, i0, i1, 2.0 * inv)
        for i in range(i0, i1 + 1):
            dy = i - yk
            ay = a * ey[i - i0]
            for j in range(j0, j1 + 1):
                dx = j - xk
                r2 = dx * dx + dy * dy
                if r2 <= rc2:
                    img[i, j] += ay * ex[j - j0]


@njit(cache=True, nogil=True)
def _solve_small(a, b):
    """Solve the small dense SPD-ish system ``a x = b`` by Gaussian elimination (pivoting)."""
    n = b.shape[0]
    m = a.copy()
    v = b.copy()
    for c in range(n):
        p = c
        best = abs(m[c, c])
        for r in range(c + 1, n):
            if abs(m[r, c]) > best:
                best = abs(m[r, c])
                p = r
        if best < 1e-300:
            return v * 0.0, False
        if p != c:
            for q in range(n):
                t = m[c, q]
                m[c, q] = m[p, q]
                m[p, q] = t
            t = v[c]
            v[c] = v[p]
            v[p] = t
        for r in range(c + 1, n):
            f = m[r, c] / m[c, c]
            for q in range(c, n):
                m[r, q] -= f * m[c, q]
            v[r] -= f * v[c]
    out = np.zeros(n)
    for c in range(n - 1, -1, -1):
        s = v[c]
        for q in range(c + 1, n):
            s -= m[c, q] * out[q]
        out[c] = s / m[c, c]
    return out, True


@njit(cache=True, nogil=True)
def _solve_multi(a, b):
    """Solve ``a X = b`` for several right-hand sides ``b`` (n, m), partial pivoting."""
    n = a.shape[0]
    m_rhs = b.shape[1]
    m = a.copy()
    v = b.copy()
    for c in range(n):
        p = c
        best = abs(m[c, c])
        for r in range(c + 1, n):
            if abs(m[r, c]) > best:
                best = abs(m[r, c])
                p = r
        if best < 1e-300:
            return v * 0.0, False
        if p != c:
            for q in range(n):
                t = m[c, q]
                m[c, q] = m[p, q]
                m[p, q] = t
            for q in range(m_rhs):
                t = v[c, q]
                v[c, q] = v[p, q]
                v[p, q] = t
        inv = 1.0 / m[c, c]
        for r in range(c + 1, n):
            f = m[r, c] * inv
            if f == 0.0:
                continue
            for q in range(c, n):
                m[r, q] -= f * m[c, q]
            for q in range(m_rhs):
                v[r, q] -= f * v[c, q]
    out = np.zeros((n, m_rhs))
    for c in range(n - 1, -1, -1):
        for q in range(m_rhs):
            s = v[c, q]
            for t in range(c + 1, n):
                s -= m[c, t] * out[t, q]
            out[c, q] = s / m[c, c]
    return out, True


@njit(cache=True, nogil=True, inline="always")
def _newton_matrix(h, ek, rk, b0, b1, b2, b3, sxx, sxy, syy, sxr, syr, srr, free_rho, fix_pos):
    """``h −= Σ w r ∇²f`` in place: the Gauss–Newton block ``JᵀWJ`` of one column becomes the
    exact Hessian (Newton matrix) of ½·SSE in (x, y, η[, ρ]), f = η·g.

    ``b_p = Σ w r ∂f/∂p`` and the residual-weighted moments ``s.. = Σ w r g·(dx², dx·dy, dy²,
    dx·r², dy·r², r⁴)``, with ``∂²f/∂η² = 0`` and ``∂²f/∂η∂θ = ∂g/∂θ = b_θ/η``.

    Gauss–Newton alone drops this residual term, which for weak, noisy columns (η of a few
    noise σ) is a sizeable fraction of JᵀWJ: the steps then overshoot and alternate in sign,
    converging only linearly (rate ~0.4 for the Br columns of the CsPbBr3 benchmark scene).
    """
    inv = 1.0 / (rk * rk)
    inv2 = inv * inv
    inv3 = inv / rk
    if not fix_pos:
        rxx = ek * (sxx * inv2 - b2 * inv)
        rxy = ek * sxy * inv2
        ryy = ek * (syy * inv2 - b2 * inv)
        h[0, 0] -= rxx
        h[0, 1] -= rxy
        h[1, 0] -= rxy
        h[1, 1] -= ryy
        h[0, 2] -= b0 / ek
        h[2, 0] -= b0 / ek
        h[1, 2] -= b1 / ek
        h[2, 1] -= b1 / ek
    if free_rho:
        # Σ w r η g r² (r²/ρ⁶ − 3/ρ⁴) and Σ w r η g dx (r²/ρ⁵ − 2/ρ³)
        rrr = ek * srr * inv3 * inv3 - 3.0 * b3 / rk
        h[3, 3] -= rrr
        h[2, 3] -= b3 / ek
        h[3, 2] -= b3 / ek
        if not fix_pos:
            inv5 = inv3 * inv
            rxr = ek * sxr * inv5 - 2.0 * b0 / rk
            ryr = ek * syr * inv5 - 2.0 * b1 / rk
            h[0, 3] -= rxr
            h[3, 0] -= rxr
            h[1, 3] -= ryr
            h[3, 1] -= ryr


@njit(cache=True, nogil=True)
def _pos_def(m):
    """True when the small symmetric matrix ``m`` is positive definite (LDLᵀ pivots > 0)."""
    n = m.shape[0]
    t = m.copy()
    for c in range(n):
        if not t[c, c] > 0.0:
            return False
        inv = 1.0 / t[c, c]
        for r in range(c + 1, n):
            f = t[r, c] * inv
            for q in range(c, n):
                t[r, q] -= f * t[c, q]
    return True


@njit(cache=True, nogil=True)
def column_step(
    res,
    w,
    k,
    x,
    y,
    eta,
    rho,
    cut,
    free_rho,
    lam,
    max_shift,
    rho_min,
    rho_max,
    x0,
    y0,
    lim,
    fix_pos,
    box_half,
    tiny=0.0,
    newton=False,
):
    """One damped Gauss–Newton (Levenberg–Marquardt) step on column ``k``.

    Parameters of column ``k`` are (x, y, eta[, rho]); all other columns stay fixed through
    ``res``.  The step is accepted only if the weighted SSE over the column's box decreases,
    which equals the decrease of the global SSE; ``res`` is then updated in place.

    ``fix_pos`` keeps (x, y) fixed.  ``box_half > 0`` restricts the fit (normal equations and
    the SSE test) to a square box of that half-width around the rounded position, as in
    StatSTEM's segmented scheme (De Backer et al. 2016); the model is still updated everywhere.

    ``newton``: use the exact Hessian of the column block where it is positive definite
    (see ``_newton_matrix``) instead of JᵀWJ (disk truncation only, not with ``box_half``).

    ``tiny > 0``: a rejected step that would move the column by < ``tiny`` px (and change its
    width by < ``tiny`` px) ends the step as converged, ``(0.0, True)``: such steps fail only
    on the truncation edges of the model, and more damping cannot help (it cost up to ten
    SSE evaluations per column in the last sweeps).

    Returns ``(shift_px, accepted)``.
    """
    ny, nx = res.shape
    ic = np.round(y0[k])
    jc = np.round(x0[k])
    use_box = box_half > 0.0
    xk = x[k]
    yk = y[k]
    ek = eta[k]
    rk = rho[k]
    npar = 4 if free_rho else 3
    acut = abs(cut)
    rbox = acut * rk * (1.25 if free_rho else 1.0) + max_shift + 1.0
    j0 = max(0, int(np.floor(xk - rbox)))
    j1 = min(nx - 1, int(np.ceil(xk + rbox)))
    i0 = max(0, int(np.floor(yk - rbox)))
    i1 = min(ny - 1, int(np.ceil(yk + rbox)))
    a = np.zeros((npar, npar))
    b = np.zeros(npar)
    rc2 = _rc2(rk, cut)
    inv = 1.0 / (rk * rk)
    inv3 = inv / rk
    hb = i1 - i0 + 1
    wb = j1 - j0 + 1
    if hb <= 0 or wb <= 0:
        return 0.0, False
    ex = _exp1d(xk, j0, j1, inv)
    ey = _exp1d(yk, i0, i1, inv)
    # pixels of the old disk (old and new Gaussians are recomputed from their separable
    # factors where needed: no per-column image buffers)
    oj0, oj1 = _span(xk, rk, cut, nx)
    oi0, oi1 = _span(yk, rk, cut, ny)
    oj0 = max(j0, oj0)
    oj1 = min(j1, oj1)
    oi0 = max(i0, oi0)
    oi1 = min(i1, oi1)
    b0 = b1 = b2 = b3 = 0.0
    a00 = a01 = a02 = a03 = a11 = a12 = a13 = a22 = a23 = a33 = 0.0
    # residual-weighted second moments for the exact (Newton) Hessian of the column block
    sxx = sxy = syy = sxr = syr = srr = 0.0
    newton = newton and cut > 0.0 and not use_box
    for i in range(oi0, oi1 + 1):
        dy = i - yk
        eyi = ey[i - i0]
        for j in range(oj0, oj1 + 1):
            dx = j - xk
            r2 = dx * dx + dy * dy
            if r2 > rc2:
                continue
            g = eyi * ex[j - j0]
            if use_box and (abs(i - ic) > box_half or abs(j - jc) > box_half):
                continue
            wij = w[i, j]
            rij = res[i, j]
            eg = ek * g
            j0_ = eg * dx * inv
            j1_ = eg * dy * inv
            if fix_pos:
                j0_ = 0.0
                j1_ = 0.0
            j3_ = eg * r2 * inv3 if free_rho else 0.0
            # scalar accumulators (upper triangle of JᵀWJ and JᵀWr): no inner loops
            w0 = wij * j0_
            w1 = wij * j1_
            w2 = wij * g
            w3 = wij * j3_
            b0 += w0 * rij
            b1 += w1 * rij
            b2 += w2 * rij
            b3 += w3 * rij
            a00 += w0 * j0_
            a01 += w0 * j1_
            a02 += w0 * g
            a03 += w0 * j3_
            a11 += w1 * j1_
            a12 += w1 * g
            a13 += w1 * j3_
            a22 += w2 * g
            a23 += w2 * j3_
            a33 += w3 * j3_
            if newton:
                q = w2 * rij
                qx = q * dx
                qy = q * dy
                sxx += qx * dx
                sxy += qx * dy
                syy += qy * dy
                if free_rho:
                    sxr += qx * r2
                    syr += qy * r2
                    srr += q * r2 * r2
    a[0, 0] = a00
    a[0, 1] = a[1, 0] = a01
    a[0, 2] = a[2, 0] = a02
    a[1, 1] = a11
    a[1, 2] = a[2, 1] = a12
    a[2, 2] = a22
    b[0] = b0
    b[1] = b1
    b[2] = b2
    if free_rho:
        a[0, 3] = a[3, 0] = a03
        a[1, 3] = a[3, 1] = a13
        a[2, 3] = a[3, 2] = a23
        a[3, 3] = a33
        b[3] = b3
    if a[2, 2] <= 0.0:
        return 0.0, False
    if fix_pos:
        a[0, 0] = 1.0
        a[1, 1] = 1.0
    # Newton matrix h = JᵀWJ − Σ w r ∇²f (see _newton_matrix): quadratic local convergence
    # also for weak columns.  Used only where the damped matrix is positive definite (else
    # the Gauss–Newton matrix), so every step is a descent direction; the SSE test decides.
    use_h = newton and ek != 0.0
    h = a.copy()
    if use_h:
        _newton_matrix(h, ek, rk, b0, b1, b2, b3, sxx, sxy, syy, sxr, syr, srr, free_rho, fix_pos)
    for _attempt in range(10):
        m = h.copy()
        for p in range(npar):
            m[p, p] += lam[k] * a[p, p] + 1e-12 * a[p, p]
        if use_h and not _pos_def(m):
            m = a.copy()
            for p in range(npar):
                m[p, p] += lam[k] * a[p, p] + 1e-12 * a[p, p]
        d, ok = _solve_small(m, b)
        if not ok:
            lam[k] *= 10.0
            continue
        if use_box:  # damped like StatSTEM's neighbour updates (alpha = 0.5)
            for p in range(npar):
                d[p] *= 0.5
        sx = d[0]
        sy = d[1]
        s = np.sqrt(sx * sx + sy * sy)
        if s > max_shift:
            sx *= max_shift / s
            sy *= max_shift / s
        nxk = xk + sx
        nyk = yk + sy
        ddx = nxk - x0[k]
        ddy = nyk - y0[k]
        dd = np.sqrt(ddx * ddx + ddy * ddy)
        if dd > lim[k]:
            nxk = x0[k] + ddx * lim[k] / dd
            nyk = y0[k] + ddy * lim[k] / dd
            sx = nxk - xk
            sy = nyk - yk
        nek = ek + d[2]
        nrk = rk
        if free_rho:
            nrk = min(max(rk + d[3], 0.8 * rk, rho_min), 1.25 * rk, rho_max)
        nrc2 = _rc2(nrk, cut)
        ninv = 1.0 / (nrk * nrk)
        # change of the weighted SSE = sum over pixels touched by the old or new Gaussian
        dsse = 0.0
        nex = _exp1d(nxk, j0, j1, ninv)
        ney = _exp1d(nyk, i0, i1, ninv)
        # only pixels of the old or the new disk change (union of their bounding boxes)
        nj0, nj1 = _span(nxk, nrk, cut, nx)
        ni0, ni1 = _span(nyk, nrk, cut, ny)
        uj0 = max(j0, min(oj0, nj0))
        uj1 = min(j1, max(oj1, nj1))
        ui0 = max(i0, min(oi0, ni0))
        ui1 = min(i1, max(oi1, ni1))
        # disk model: the SSE change is taken for untruncated Gaussians.  Near convergence a
        # step of ~1e-3 px lowers the SSE less than pixels crossing the truncation circle
        # change it (a ~exp(−cut²/2)·η step), which would reject good Gauss–Newton steps at
        # random and stall the damping; the smooth test accepts them
        smooth = cut > 0.0 and not use_box
        for i in range(ui0, ui1 + 1):
            ndy = i - nyk
            neyi = ney[i - i0]
            oeyi = ey[i - i0]
            ody = i - yk
            inbox_i = not use_box or abs(i - ic) <= box_half
            for j in range(uj0, uj1 + 1):
                if not inbox_i or (use_box and abs(j - jc) > box_half):
                    continue
                rij = res[i, j]
                gs = neyi * nex[j - j0]
                go = oeyi * ex[j - j0]
                if smooth:
                    dls = ek * go - nek * gs
                    dsse += w[i, j] * dls * (2.0 * rij + dls)
                else:
                    ndx = j - nxk
                    odx = j - xk
                    gn = 0.0
                    if ndx * ndx + ndy * ndy <= nrc2 and nj0 <= j <= nj1 and ni0 <= i <= ni1:
                        gn = gs
                    if odx * odx + ody * ody > rc2 or j < oj0 or j > oj1 or i < oi0 or i > oi1:
                        go = 0.0
                    dlt = ek * go - nek * gn
                    if dlt != 0.0:
                        dsse += w[i, j] * dlt * (2.0 * rij + dlt)
        if dsse <= 0.0:
            for i in range(ui0, ui1 + 1):
                ndy = i - nyk
                ody = i - yk
                neyi = ney[i - i0]
                oeyi = ey[i - i0]
                oin = i >= oi0 and i <= oi1
                nin = i >= ni0 and i <= ni1
                for j in range(uj0, uj1 + 1):
                    ndx = j - nxk
                    odx = j - xk
                    d = 0.0
                    if oin and j >= oj0 and j <= oj1 and odx * odx + ody * ody <= rc2:
                        d += ek * oeyi * ex[j - j0]
                    if nin and j >= nj0 and j <= nj1 and ndx * ndx + ndy * ndy <= nrc2:
                        d -= nek * neyi * nex[j - j0]
                    res[i, j] += d
            x[k] = nxk
            y[k] = nyk
            eta[k] = nek
            rho[k] = nrk
            lam[k] = max(lam[k] / 3.0, 1e-9)
            return np.sqrt(sx * sx + sy * sy), True
        if tiny > 0.0 and not fix_pos and sx * sx + sy * sy < tiny * tiny and abs(nrk - rk) < tiny:
            return 0.0, True
        lam[k] *= 5.0
    return 0.0, False


@njit(cache=True)
def sweep_serial(
    res,
    w,
    x,
    y,
    eta,
    rho,
    cut,
    free_rho,
    lam,
    max_shift,
    rho_min,
    rho_max,
    order,
    shifts,
    accepted,
    x0,
    y0,
    lim,
    fix_pos=False,
    box_half=0.0,
    active=None,
    tiny=0.0,
    newton=False,
):
    """One serial Gauss–Seidel sweep over the columns in ``order`` (``active``: only these)."""
    for m in range(order.shape[0]):
        k = order[m]
        if active is not None and not active[k]:
            continue
        s, ok = column_step(
            res,
            w,
            k,
            x,
            y,
            eta,
            rho,
            cut,
            free_rho,
            lam,
            max_shift,
            rho_min,
            rho_max,
            x0,
            y0,
            lim,
            fix_pos,
            box_half,
            tiny,
            newton,
        )
        shifts[k] = s
        accepted[k] = ok


@njit(cache=True, parallel=True)
def sweep(
    res,
    w,
    x,
    y,
    eta,
    rho,
    cut,
    free_rho,
    lam,
    max_shift,
    rho_min,
    rho_max,
    cell_ptr,
    cell_cols,
    colour_ptr,
    colour_cells,
    shifts,
    accepted,
    x0,
    y0,
    lim,
    fix_pos=False,
    box_half=0.0,
    active=None,
    tiny=0.0,
    newton=False,
):
    """One Gauss–Seidel sweep over all columns, parallel over non-touching cells.

    ``active`` (bool, optional): visit only these columns (the others keep their last shift).

    Cells of one colour are at least one cell apart and a cell is wider than two column
    boxes, so the boxes updated concurrently never overlap (no write races on ``res``).
    """
    for c in range(colour_ptr.shape[0] - 1):
        c0 = colour_ptr[c]
        n = colour_ptr[c + 1] - c0
        for t in prange(n):
            cell = colour_cells[c0 + t]
            for m in range(cell_ptr[cell], cell_ptr[cell + 1]):
                k = cell_cols[m]
                if active is not None and not active[k]:
                    continue
                s, ok = column_step(
                    res,
                    w,
                    k,
                    x,
                    y,
                    eta,
                    rho,
                    cut,
                    free_rho,
                    lam,
                    max_shift,
                    rho_min,
                    rho_max,
                    x0,
                    y0,
                    lim,
                    fix_pos,
                    box_half,
                    tiny,
                    newton,
                )
                shifts[k] = s
                accepted[k] = ok


@njit(cache=True)
def rho_derivative_images(shape, x, y, eta, rho, cut, tid, nt):
    """∂model/∂ρ_t images for widths shared by type, shape ``(nt, M, N)``."""
    ny, nx = shape[0], shape[1]
    out = np.zeros((nt, ny, nx))
    for k in range(x.shape[0]):
        xk = x[k]
        yk = y[k]
        rk = rho[k]
        rc2 = _rc2(rk, cut)
        inv = 1.0 / (rk * rk)
        j0, j1 = _span(xk, rk, cut, nx)
        i0, i1 = _span(yk, rk, cut, ny)
        t = tid[k]
        if i1 < i0 or j1 < j0:
            continue
        ex = _exp1d(xk, j0, j1, inv)
        ey = _exp1d(yk, i0, i1, inv)
        for i in range(i0, i1 + 1):
            dy = i - yk
            eyi = eta[k] * ey[i - i0] * inv / rk
            for j in range(j0, j1 + 1):
                dx = j - xk
                r2 = dx * dx + dy * dy
                if r2 <= rc2:
                    out[t, i, j] += eyi * ex[j - j0] * r2
    return out


@njit(cache=True, parallel=True)
def global_schur_terms(res, w, x, y, eta, rho, cut, gimg, free_rho=False, const_g=False):
    """Block-diagonal Schur complement for the global parameters (shared ρ, background).

    ``gimg`` (ng, M, N) holds ∂model/∂θ_g for each global parameter.  For column k with local
    parameters p = (x, y, eta[, rho]): A_k = J_kᵀWJ_k, G_k = J_kᵀW·gimg, g_k = J_kᵀW·res.
    Returns ``(S_sub, r_sub, ainv_g (n, npar), ainv_G (n, npar, ng))`` with
    ``S_sub = Σ G_kᵀA_k⁻¹G_k`` and ``r_sub = Σ G_kᵀA_k⁻¹g_k``; the reduced system is
    ``(C − S_sub) δθ = h − r_sub``.  With ``free_rho`` the per-column width is a local
    parameter, so the background step accounts for the widths' response (without it the
    background and free widths converge only linearly, by alternation).  ``const_g``: the
    only global parameter is a constant background (``gimg`` all ones, not read).
    """
    n = x.shape[0]
    ny, nx = res.shape
    ng = gimg.shape[0]
    npar = 4 if free_rho else 3
    s_k = np.zeros((n, ng, ng))
    r_k = np.zeros((n, ng))
    ainv_g = np.zeros((n, npar))
    ainv_G = np.zeros((n, npar, ng))
    for k in prange(n):
        xk = x[k]
        yk = y[k]
        ek = eta[k]
        rk = rho[k]
        rc2 = _rc2(rk, cut)
        inv = 1.0 / (rk * rk)
        inv3 = inv / rk
        j0, j1 = _span(xk, rk, cut, nx)
        i0, i1 = _span(yk, rk, cut, ny)
        a = np.zeros((npar, npar))
        gk = np.zeros(npar)
        Gk = np.zeros((npar, ng))
        if i1 < i0 or j1 < j0:
            continue
        ex = _exp1d(xk, j0, j1, inv)
        ey = _exp1d(yk, i0, i1, inv)
        g0 = g1 = g2 = g3 = 0.0
        a00 = a01 = a02 = a03 = a11 = a12 = a13 = a22 = a23 = a33 = 0.0
        for i in range(i0, i1 + 1):
            dy = i - yk
            eyi = ey[i - i0]
            for j in range(j0, j1 + 1):
                dx = j - xk
                r2 = dx * dx + dy * dy
                if r2 > rc2:
                    continue
                gg = eyi * ex[j - j0]
                eg = ek * gg
                jx = eg * dx * inv
                jy = eg * dy * inv
                jr = eg * r2 * inv3 if free_rho else 0.0
                wij = w[i, j]
                rij = res[i, j]
                w0 = wij * jx
                w1 = wij * jy
                w2 = wij * gg
                w3 = wij * jr
                g0 += w0 * rij
                g1 += w1 * rij
                g2 += w2 * rij
                g3 += w3 * rij
                a00 += w0 * jx
                a01 += w0 * jy
                a02 += w0 * gg
                a03 += w0 * jr
                a11 += w1 * jy
                a12 += w1 * gg
                a13 += w1 * jr
                a22 += w2 * gg
                a23 += w2 * jr
                a33 += w3 * jr
                for q in range(ng):
                    gq = 1.0 if const_g else gimg[q, i, j]
                    Gk[0, q] += w0 * gq
                    Gk[1, q] += w1 * gq
                    Gk[2, q] += w2 * gq
                    if free_rho:
                        Gk[3, q] += w3 * gq
        a[0, 0] = a00
        a[0, 1] = a[1, 0] = a01
        a[0, 2] = a[2, 0] = a02
        a[1, 1] = a11
        a[1, 2] = a[2, 1] = a12
        a[2, 2] = a22
        gk[0] = g0
        gk[1] = g1
        gk[2] = g2
        if free_rho:
            a[0, 3] = a[3, 0] = a03
            a[1, 3] = a[3, 1] = a13
            a[2, 3] = a[3, 2] = a23
            a[3, 3] = a33
            gk[3] = g3
        for p in range(npar):
            a[p, p] *= 1.0 + 1e-12
        v, ok = _solve_small(a, gk)
        if not ok:
            continue
        for p in range(npar):
            ainv_g[k, p] = v[p]
        for q in range(ng):
            col, ok2 = _solve_small(a, Gk[:, q].copy())
            if not ok2:
                continue
            for p in range(npar):
                ainv_G[k, p, q] = col[p]
        for q in range(ng):
            for p in range(npar):
                r_k[k, q] += Gk[p, q] * v[p]
                for q2 in range(ng):
                    s_k[k, q, q2] += Gk[p, q] * ainv_G[k, p, q2]
    s_sub = np.zeros((ng, ng))
    r_sub = np.zeros(ng)
    for k in range(n):  # fixed-order reduction: deterministic for any thread count
        for q in range(ng):
            r_sub[q] += r_k[k, q]
            for q2 in range(ng):
                s_sub[q, q2] += s_k[k, q, q2]
    return s_sub, r_sub, ainv_g, ainv_G


@njit(cache=True, parallel=True)
def fisher_blocks(shape, w, x, y, eta, rho, cut, free_rho, pair_i, pair_j):
    """Fisher-information blocks ``F_ij = Σ_p w_p ∂μ_p/∂θ_i ∂μ_p/∂θ_jᵀ`` for column pairs.

    ``θ_k = (x, y, eta[, rho])``; only pixels inside both truncation disks contribute.
    Returns an array ``(n_pairs, npar, npar)``.
    """
    ny, nx = shape[0], shape[1]
    npar = 4 if free_rho else 3
    npairs = pair_i.shape[0]
    out = np.zeros((npairs, npar, npar))
    for t in prange(npairs):
        a = pair_i[t]
        b = pair_j[t]
        ra2 = _rc2(rho[a], cut)
        rb2 = _rc2(rho[b], cut)
        ja0, ja1 = _span(x[a], rho[a], cut, nx)
        jb0, jb1 = _span(x[b], rho[b], cut, nx)
        ia0, ia1 = _span(y[a], rho[a], cut, ny)
        ib0, ib1 = _span(y[b], rho[b], cut, ny)
        j0 = max(ja0, jb0)
        j1 = min(ja1, jb1)
        i0 = max(ia0, ib0)
        i1 = min(ia1, ib1)
        ja = np.zeros(npar)
        jb = np.zeros(npar)
        inva = 1.0 / (rho[a] * rho[a])
        invb = 1.0 / (rho[b] * rho[b])
        if i1 < i0 or j1 < j0:
            continue
        exa = _exp1d(x[a], j0, j1, inva)
        eya = _exp1d(y[a], i0, i1, inva)
        exb = _exp1d(x[b], j0, j1, invb)
        eyb = _exp1d(y[b], i0, i1, invb)
        for i in range(i0, i1 + 1):
            dya = i - y[a]
            dyb = i - y[b]
            for j in range(j0, j1 + 1):
                dxa = j - x[a]
                dxb = j - x[b]
                r2a = dxa * dxa + dya * dya
                r2b = dxb * dxb + dyb * dyb
                if r2a > ra2 or r2b > rb2:
                    continue
                ga = eya[i - i0] * exa[j - j0]
                gb = eyb[i - i0] * exb[j - j0]
                ja[0] = eta[a] * ga * dxa * inva
                ja[1] = eta[a] * ga * dya * inva
                ja[2] = ga
                jb[0] = eta[b] * gb * dxb * invb
                jb[1] = eta[b] * gb * dyb * invb
                jb[2] = gb
                if free_rho:
                    ja[3] = eta[a] * ga * r2a * inva / rho[a]
                    jb[3] = eta[b] * gb * r2b * invb / rho[b]
                wij = w[i, j]
                for p in range(npar):
                    for q in range(npar):
                        out[t, p, q] += wij * ja[p] * jb[q]
    return out


@njit(cache=True, nogil=True)
def column_leverage(shape, x, y, eta, rho, cut, free_rho, minv):
    """Pixel leverage ``h_p = Σ_k J_kp M_k⁻¹ J_kpᵀ``: each column's hat-matrix diagonal on its
    own truncation disk, ``minv`` the inverses of its own Fisher blocks (unit weights, from
    :func:`fisher_blocks`; zeros for a column to skip).  Returns an image."""
    ny, nx = shape[0], shape[1]
    npar = 4 if free_rho else 3
    h = np.zeros((ny, nx))
    jk = np.zeros(npar)
    for k in range(x.shape[0]):
        r2c = _rc2(rho[k], cut)
        j0, j1 = _span(x[k], rho[k], cut, nx)
        i0, i1 = _span(y[k], rho[k], cut, ny)
        if i1 < i0 or j1 < j0:
            continue
        inv = 1.0 / (rho[k] * rho[k])
        ex = _exp1d(x[k], j0, j1, inv)
        ey = _exp1d(y[k], i0, i1, inv)
        for i in range(i0, i1 + 1):
            dy = i - y[k]
            for j in range(j0, j1 + 1):
                dx = j - x[k]
                r2 = dx * dx + dy * dy
                if r2 > r2c:
                    continue
                g = ey[i - i0] * ex[j - j0]
                jk[0] = eta[k] * g * dx * inv
                jk[1] = eta[k] * g * dy * inv
                jk[2] = g
                if free_rho:
                    jk[3] = eta[k] * g * r2 * inv / rho[k]
                acc = 0.0
                for p in range(npar):
                    for q in range(npar):
                        acc += jk[p] * minv[k, p, q] * jk[q]
                h[i, j] += acc
    return h


@njit(cache=True, parallel=True)
def local_covariance(blocks, nb_ptr, nb_idx, nb_block, npar):
    """Marginal covariance of each column from its Fisher matrix with its direct neighbours.

    ``nb_ptr/nb_idx`` is a CSR list of neighbours (self included, sorted) and ``nb_block[m]``
    the index into ``blocks`` of pair (k, nb_idx[m]) (transposed when negative − 1).
    The local Fisher matrix over {k} ∪ neighbours is assembled from the pair blocks
    (neighbour–neighbour blocks looked up by binary search) and inverted; the column's own
    block of the inverse is returned, shape ``(n, npar, npar)``.
    """
    n = nb_ptr.shape[0] - 1
    out = np.full((n, npar, npar), np.nan)
    for k in prange(n):
        s0 = nb_ptr[k]
        s1 = nb_ptr[k + 1]
        m = s1 - s0
        dim = m * npar
        f = np.zeros((dim, dim))
        for u in range(m):
            a = nb_idx[s0 + u]
            for v in range(m):
                bcol = nb_idx[s0 + v]
                # find pair (a, bcol) in a's neighbour list
                lo = nb_ptr[a]
                hi = nb_ptr[a + 1] - 1
                pos = -1
                while lo <= hi:
                    mid = (lo + hi) // 2
                    if nb_idx[mid] == bcol:
                        pos = mid
                        break
                    elif nb_idx[mid] < bcol:
                        lo = mid + 1
                    else:
                        hi = mid - 1
                if pos < 0:
                    continue
                code = nb_block[pos]
                if code >= 0:
                    for p in range(npar):
                        for q in range(npar):
                            f[u * npar + p, v * npar + q] = blocks[code, p, q]
                else:
                    code = -code - 1
                    for p in range(npar):
                        for q in range(npar):
                            f[u * npar + p, v * npar + q] = blocks[code, q, p]
        # the column itself is at position `self_pos` in its own list
        self_pos = 0
        for u in range(m):
            if nb_idx[s0 + u] == k:
                self_pos = u
        scale = np.zeros(dim)
        okd = True
        for p in range(dim):
            if f[p, p] <= 0.0:
                okd = False
                break
            scale[p] = 1.0 / np.sqrt(f[p, p])
        if not okd:
            continue
        for p in range(dim):
            for q in range(dim):
                f[p, q] *= scale[p] * scale[q]
        e = np.zeros((dim, npar))
        for p in range(npar):
            e[self_pos * npar + p, p] = 1.0
        cols, ok = _solve_multi(f, e)  # one elimination for the npar right-hand sides
        if not ok:
            continue
        for p in range(npar):
            for q in range(npar):
                out[k, q, p] = (
                    cols[self_pos * npar + q, p]
                    * scale[self_pos * npar + q]
                    * scale[self_pos * npar + p]
                )
    return out


@njit(cache=True, parallel=True)
def column_gradient_terms(res, w, x, y, eta, rho, cut, free_rho, gimg):
    """Per-column gradient ``g_k = J_kᵀW·res`` (n, npar) and coupling ``G_k = J_kᵀW·gimg``
    (n, npar, ng) with the global parameters whose derivative images are ``gimg``."""
    n = x.shape[0]
    ny, nx = res.shape
    ng = gimg.shape[0]
    npar = 4 if free_rho else 3
    gout = np.zeros((n, npar))
    Gout = np.zeros((n, npar, ng))
    for k in prange(n):
        jac = np.zeros(npar)
        xk = x[k]
        yk = y[k]
        ek = eta[k]
        rk = rho[k]
        rc2 = _rc2(rk, cut)
        inv = 1.0 / (rk * rk)
        j0, j1 = _span(xk, rk, cut, nx)
        i0, i1 = _span(yk, rk, cut, ny)
        if i1 < i0 or j1 < j0:
            continue
        ex = _exp1d(xk, j0, j1, inv)
        ey = _exp1d(yk, i0, i1, inv)
        for i in range(i0, i1 + 1):
            dy = i - yk
            eyi = ey[i - i0]
            for j in range(j0, j1 + 1):
                dx = j - xk
                r2 = dx * dx + dy * dy
                if r2 > rc2:
                    continue
                gg = eyi * ex[j - j0]
                eg = ek * gg
                jac[0] = eg * dx * inv
                jac[1] = eg * dy * inv
                jac[2] = gg
                if free_rho:
                    jac[3] = eg * r2 * inv / rk
                wij = w[i, j]
                rij = res[i, j]
                for p in range(npar):
                    wj = wij * jac[p]
                    gout[k, p] += wj * rij
                    for q in range(ng):
                        Gout[k, p, q] += wj * gimg[q, i, j]
    return gout, Gout


@njit(cache=True, nogil=True)
def wsse(w, r, unit):
    """Weighted sum of squares ``Σ w r²`` (``unit``: all weights 1), serial.

    A plain loop instead of BLAS: multi-threaded BLAS on these memory-bound reductions only
    adds thread hand-offs (and is much slower on a loaded machine).
    """
    rf = r.ravel()
    s = 0.0
    if unit:
        for p in range(rf.shape[0]):
            s += rf[p] * rf[p]
    else:
        wf = w.ravel()
        for p in range(rf.shape[0]):
            s += wf[p] * rf[p] * rf[p]
    return s


@njit(cache=True, nogil=True)
def weighted_gram(gimg, w, r, unit):
    """``C = Gᵀ W G`` (ng, ng) and ``h = Gᵀ W r`` (ng,) for derivative images ``gimg``
    (ng, M, N), pixel weights ``w`` and residual ``r`` (M, N), serial."""
    ng = gimg.shape[0]
    gf = gimg.reshape((ng, -1))
    rf = r.ravel()
    wf = w.ravel()
    c = np.zeros((ng, ng))
    h = np.zeros(ng)
    for p in range(rf.shape[0]):
        wp = 1.0 if unit else wf[p]
        for a in range(ng):
            wa = wp * gf[a, p]
            h[a] += wa * rf[p]
            for b in range(a, ng):
                c[a, b] += wa * gf[b, p]
    for a in range(ng):
        for b in range(a):
            c[a, b] = c[b, a]
    return c, h


@njit(cache=True, nogil=True)
def lincomb(coef, basis):
    """``Σ_t coef_t basis_t`` for basis images (nb, M, N), serial."""
    nb = basis.shape[0]
    out = np.zeros(basis.shape[1:])
    of = out.ravel()
    bf = basis.reshape((nb, -1))
    for t in range(nb):
        c = coef[t]
        for p in range(of.shape[0]):
            of[p] += c * bf[t, p]
    return out


@njit(cache=True, nogil=True)
def wdot2(w, r, d, unit):
    """``(Σ w r d, Σ w d²)`` over all pixels (``unit``: all weights 1), serial."""
    rf = r.ravel()
    df = d.ravel()
    wf = w.ravel()
    b = 0.0
    c = 0.0
    for p in range(rf.shape[0]):
        wd = df[p] if unit else wf[p] * df[p]
        b += wd * rf[p]
        c += wd * df[p]
    return b, c


@njit(cache=True, nogil=True)
def axpy_image(r, d, a):
    """New image ``r + a·d`` in one pass."""
    out = np.empty_like(r)
    of = out.ravel()
    rf = r.ravel()
    df = d.ravel()
    for p in range(rf.shape[0]):
        of[p] = rf[p] + a * df[p]
    return out


@njit(cache=True, nogil=True)
def eta_pass(res, w, x, y, eta, rho, cut, order):
    """One Gauss–Seidel pass over the amplitudes only (positions and widths fixed).

    η is linear: each column takes its exact least-squares update
    ``δη = Σ w g r / Σ w g²`` against the current residual (no line search needed), and
    ``res`` is updated in place.
    """
    ny, nx = res.shape
    for m in range(order.shape[0]):
        k = order[m]
        xk = x[k]
        yk = y[k]
        rk = rho[k]
        rc2 = _rc2(rk, cut)
        inv = 1.0 / (rk * rk)
        j0, j1 = _span(xk, rk, cut, nx)
        i0, i1 = _span(yk, rk, cut, ny)
        if i1 < i0 or j1 < j0:
            continue
        ex = _exp1d(xk, j0, j1, inv)
        ey = _exp1d(yk, i0, i1, inv)
        num = 0.0
        den = 0.0
        for i in range(i0, i1 + 1):
            dy = i - yk
            eyi = ey[i - i0]
            for j in range(j0, j1 + 1):
                dx = j - xk
                if dx * dx + dy * dy > rc2:
                    continue
                g = eyi * ex[j - j0]
                wg = w[i, j] * g
                num += wg * res[i, j]
                den += wg * g
        if den <= 0.0:
            continue
        d = num / den
        eta[k] += d
        for i in range(i0, i1 + 1):
            dy = i - yk
            a = d * ey[i - i0]
            for j in range(j0, j1 + 1):
                dx = j - xk
                if dx * dx + dy * dy <= rc2:
                    res[i, j] -= a * ex[j - j0]
