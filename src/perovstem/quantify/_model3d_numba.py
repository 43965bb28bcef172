"""Numba kernel of the constrained lattice-gas Monte Carlo (see :mod:`perovstem.quantify.model3d`)."""
# ruff: noqa: NPY002  (numba kernels: the legacy RNG is seeded per chain from the caller's Generator)

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _field(s, occ, indptr, nbr, eij):
    """Interaction energy of site ``s`` with the occupied sites of other columns."""
    e = 0.0
    for p in range(indptr[s], indptr[s + 1]):
        if occ[nbr[p]]:
            e += eij[p]
    return e


@njit(cache=True)
def _set_column(c, b, L, occ, col_start, col_nslot, stride, val):
    """Set occupancy of column ``c``'s run (start slot b, L atoms, stride) to ``val``."""
    base = col_start[c]
    for k in range(L):
        s = b + stride[c] * k
        occ[base + s] = val


@njit(cache=True)
def _in_run(s, b, L, st):
    return s >= b and s <= b + st * (L - 1) and (s - b) % st == 0


@njit(cache=True)
def _delta(c, b, L, nb, nL, occ, col_start, stride, indptr, nbr, eij, charge, ext):
    """Energy and charge change when column c's run goes from (b, L) to (nb, nL)."""
    st = stride[c]
    base = col_start[c]
    lo = min(b, nb)
    hi = max(b + st * (L - 1), nb + st * (nL - 1))
    de = 0.0
    dq = 0.0
    for s in range(lo, hi + 1):
        a_old = _in_run(s, b, L, st)
        a_new = _in_run(s, nb, nL, st)
        if a_old == a_new:
            continue
        g = base + s
        f = _field(g, occ, indptr, nbr, eij) + ext[g]
        if a_new:
            de += f
            dq += charge[g]
        else:
            de -= f
            dq -= charge[g]
    return de, dq


@njit(cache=True)
def lattice_gas_mc(
    b0,
    n0,
    unit_len,
    cap,
    stride,
    slide_step,
    col_start,
    col_nslot,
    indptr,
    nbr,
    eij,
    charge,
    ext,
    logprior,
    n_min,
    n_max,
    charge_weight,
    t_start,
    t_end,
    n_sweeps,
    seed,
):
    """One annealed Metropolis chain.  Returns final b (run start slot), n (count), energy, Q.

    A column ``c`` with count ``n`` occupies ``L = unit_len[c] * n + cap[c]`` atoms on slots
    ``b, b + stride, ...``.  Moves: slide the run by ``±slide_step[c]`` slots, or change ``n``
    by ±1 at either end (only where ``n_max > n_min``) with log prior ``logprior[c, n - n_min]``
    and a charge-neutrality penalty ``charge_weight * Q^2``.
    """
    np.random.seed(seed)
    C = b0.size
    b = b0.copy()
    n = n0.copy()
    occ = np.zeros(charge.size, dtype=np.bool_)
    Q = 0.0
    for c in range(C):
        L = unit_len[c] * n[c] + cap[c]
        _set_column(c, b[c], L, occ, col_start, col_nslot, stride, True)
        for k in range(L):
            Q += charge[col_start[c] + b[c] + stride[c] * k]
    E = 0.0
    for s in range(charge.size):
        if occ[s]:
            E += 0.5 * _field(s, occ, indptr, nbr, eij) + ext[s]
    n_moves = n_sweeps * C
    for it in range(n_moves):
        frac = it / max(n_moves - 1, 1)
        T = t_start * (t_end / t_start) ** frac
        c = np.random.randint(C)
        L = unit_len[c] * n[c] + cap[c]
        nb = b[c]
        nn = n[c]
        can_count = n_max[c] > n_min[c]
        if not can_count or np.random.random() < 0.5:
            nb = b[c] + (slide_step[c] if np.random.random() < 0.5 else -slide_step[c])
        else:
            nn = n[c] + (1 if np.random.random() < 0.5 else -1)
            if nn < n_min[c] or nn > n_max[c] or nn < 0:
                continue
            if np.random.random() < 0.5:  # change at the bottom end
                nb = b[c] - stride[c] * unit_len[c] * (nn - n[c])
        nL = unit_len[c] * nn + cap[c]
        if nL <= 0 or nb < 0 or nb + stride[c] * (nL - 1) >= col_nslot[c]:
            continue
        dE, dQ = _delta(c, b[c], L, nb, nL, occ, col_start, stride, indptr, nbr, eij, charge, ext)
        dpen = charge_weight * ((Q + dQ) ** 2 - Q * Q)
        dlp = 0.0
        if nn != n[c]:
            dlp = logprior[c, nn - n_min[c]] - logprior[c, n[c] - n_min[c]]
        a = -(dE + dpen) / T + dlp
        if a >= 0 or np.random.random() < np.exp(a):
            _set_column(c, b[c], L, occ, col_start, col_nslot, stride, False)
            _set_column(c, nb, nL, occ, col_start, col_nslot, stride, True)
            b[c] = nb
            n[c] = nn
            E += dE
            Q += dQ
    return b, n, E, Q


@njit(cache=True)
def run_chains(
    b0,
    n0,
    unit_len,
    cap,
    stride,
    slide_step,
    col_start,
    col_nslot,
    indptr,
    nbr,
    eij,
    charge,
    ext,
    logprior,
    n_min,
    n_max,
    charge_weight,
    t_start,
    t_end,
    n_sweeps,
    seeds,
):
    """Independent chains; returns b (M, C), n (M, C), energy (M,), charge (M,)."""
    M = seeds.size
    C = b0.size
    B = np.empty((M, C), dtype=np.int64)
    N = np.empty((M, C), dtype=np.int64)
    E = np.empty(M)
    Q = np.empty(M)
    for m in range(M):
        bb, nn, e, q = lattice_gas_mc(
            b0,
            n0,
            unit_len,
            cap,
            stride,
            slide_step,
            col_start,
            col_nslot,
            indptr,
            nbr,
            eij,
            charge,
            ext,
            logprior,
            n_min,
            n_max,
            charge_weight,
            t_start,
            t_end,
            n_sweeps,
            seeds[m],
        )
        B[m] = bb
        N[m] = nn
        E[m] = e
        Q[m] = q
    return B, N, E, Q
