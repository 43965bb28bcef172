"""Numba kernels of the parallel-beam, single-axis strip (area) projector.

Layout (see :mod:`perovstem.tomo.projector`): the volume is ``vol[k, i, j]`` (z, y, x), the
projections are ``proj[a, r, j]`` (angle, detector row, x).  The tilt axis is x, so every
``j`` is an independent 2-D slice.  The system-matrix weights of one (angle, voxel) pair are
the same for all slices; they are tabulated once (``lo``, ``w``) and applied to contiguous
runs of slices, so the inner loops are vectorised over x and the table cost is shared by all
slices ("all slices batched in one operator").

The strip model is the exact area overlap of a square voxel with a detector bin (the
footprint is the convolution of two boxes of widths ``|cos θ|`` and ``|sin θ|``), as in the
"strip" projector of ASTRA (van Aarle et al., Ultramicroscopy 157, 35 (2015)) and the
area-integral model of Siddon-type strip projectors.  Each voxel hits at most 3 bins.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, uintp

__all__ = ["strip_table", "forward", "backward", "sirt_update"]


@njit(cache=True)
def _trap_cdf(t: float, w1: float, w2: float, h: float, d: float) -> float:
    """CDF at ``t`` of the sum of two centred uniforms of widths ``w1 <= w2`` (h, d: see caller)."""
    if t <= -h:
        return 0.0
    if t >= h:
        return 1.0
    if t <= -d:
        return (t + h) * (t + h) / (2.0 * w1 * w2)
    if t >= d:
        return 1.0 - (h - t) * (h - t) / (2.0 * w1 * w2)
    return w1 / (2.0 * w2) + (t + d) / w2


@njit(cache=True, parallel=True)
def strip_table(cos_t, sin_t, offset_px, nz, ny, n_det):
    """Weights of the strip projector for every (angle, z, y).

    Parameters
    ----------
    cos_t, sin_t : (A,) float64
        Cosine and sine of the tilt angles.
    offset_px : (A,) float64
        Detector coordinate of the rotation axis minus the detector centre, per angle, pixels.
    nz, ny, n_det : int
        Volume thickness, volume height (rows) and detector rows.

    Returns
    -------
    lo : (A, nz, ny) int32
        First of the three detector rows the voxel hits (clamped into ``[0, n_det - 3]``).
    w : (A, nz, ny, 3) float32
        Weights of rows ``lo, lo+1, lo+2`` (zero outside the detector).
    """
    na = cos_t.shape[0]
    lo = np.zeros((na, nz, ny), dtype=np.int32)
    w = np.zeros((na, nz, ny, 3), dtype=np.float32)
    cz = (nz - 1) / 2.0
    cy = (ny - 1) / 2.0
    cd = (n_det - 1) / 2.0
    for a in prange(na):
        c = cos_t[a]
        s = sin_t[a]
        ac = abs(c)
        as_ = abs(s)
        w1 = min(ac, as_)
        w2 = max(ac, as_)
        h = 0.5 * (w1 + w2)
        d = 0.5 * (w2 - w1)
        for k in range(nz):
            z = k - cz
            for i in range(ny):
                u = (i - cy) * c + z * s + cd + offset_px[a]
                b0 = int(np.floor(u + 0.5))
                bl = b0 - 1
                start = min(max(bl, 0), n_det - 3)
                lo[a, k, i] = start
                f_prev = 0.0
                for m in range(3):
                    b = bl + m
                    edge = b + 0.5 - u
                    f = _trap_cdf(edge, w1, w2, h, d) if m < 2 else 1.0
                    wt = f - f_prev
                    f_prev = f
                    if 0 <= b < n_det:
                        off = b - start
                        if 0 <= off < 3:
                            w[a, k, i, off] += wt
    return lo, w


@njit(cache=True, parallel=True, fastmath=True, boundscheck=False)
def forward(vol, lo, w, n_det, block, group):
    """``proj = A @ vol`` for all slices.  vol (nz, ny, nx) float32 -> proj (A, n_det, nx).

    Tasks are (x block, group of angles): the projections of one group stay in cache while
    the volume streams once per group.  Unsigned indices let LLVM vectorise the x loops.
    """
    nz, ny, nx = vol.shape
    na = lo.shape[0]
    proj = np.zeros((na, n_det, nx), dtype=np.float32)
    pf = proj.reshape(-1)
    vf = vol.reshape(-1)
    nblk = (nx + block - 1) // block
    ngrp = (na + group - 1) // group
    for t in prange(nblk * ngrp):
        bj = t // ngrp
        g = t % ngrp
        j0 = bj * block
        nb = uintp(min(nx, j0 + block) - j0)
        a0 = g * group
        a1 = min(na, a0 + group)
        for k in range(nz):
            for i in range(ny):
                vb = uintp((k * ny + i) * nx + j0)
                for a in range(a0, a1):
                    pb = uintp((a * n_det + lo[a, k, i]) * nx + j0)
                    pb1 = pb + uintp(nx)
                    pb2 = pb1 + uintp(nx)
                    w0 = w[a, k, i, 0]
                    w1 = w[a, k, i, 1]
                    w2 = w[a, k, i, 2]
                    for j in range(nb):
                        x = vf[vb + j]
                        pf[pb + j] += w0 * x
                        pf[pb1 + j] += w1 * x
                        pf[pb2 + j] += w2 * x
    return proj


@njit(cache=True, parallel=True, fastmath=True, boundscheck=False)
def backward(proj, lo, w, nz, ny, block, group, kchunk):
    """``vol = A.T @ proj`` for all slices.  proj (A, n_det, nx) -> vol (nz, ny, nx) float32.

    Tasks are (x block, chunk of z rows); within a task angles are visited in groups so the
    projections of a group stay in cache.
    """
    na, n_det, nx = proj.shape
    vol = np.zeros((nz, ny, nx), dtype=np.float32)
    pf = proj.reshape(-1)
    vf = vol.reshape(-1)
    nblk = (nx + block - 1) // block
    nkc = (nz + kchunk - 1) // kchunk
    for t in prange(nblk * nkc):
        bj = t // nkc
        kc = t % nkc
        j0 = bj * block
        nb = uintp(min(nx, j0 + block) - j0)
        k0 = kc * kchunk
        k1 = min(nz, k0 + kchunk)
        for a0 in range(0, na, group):
            a1 = min(na, a0 + group)
            for k in range(k0, k1):
                for i in range(ny):
                    vb = uintp((k * ny + i) * nx + j0)
                    for a in range(a0, a1):
                        pb = uintp((a * n_det + lo[a, k, i]) * nx + j0)
                        pb1 = pb + uintp(nx)
                        pb2 = pb1 + uintp(nx)
                        w0 = w[a, k, i, 0]
                        w1 = w[a, k, i, 1]
                        w2 = w[a, k, i, 2]
                        for j in range(nb):
                            vf[vb + j] += w0 * pf[pb + j] + w1 * pf[pb1 + j] + w2 * pf[pb2 + j]
    return vol


@njit(cache=True, parallel=True, fastmath=True, boundscheck=False)
def sirt_update(x, upd, c, nonneg):
    """In place ``x = max(x + c·upd, 0)`` with ``c`` of shape (nz, ny, 1) or (nz, ny, nx)."""
    nz, ny, nx = x.shape
    full = c.shape[2] == nx and nx > 1
    for k in prange(nz):
        for i in range(ny):
            for j in range(nx):
                cc = c[k, i, j] if full else c[k, i, 0]
                v = x[k, i, j] + cc * upd[k, i, j]
                if nonneg and v < 0:
                    v = 0.0
                x[k, i, j] = v
