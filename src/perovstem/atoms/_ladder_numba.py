"""Numba kernels of the smooth ladder mixture (imported lazily by ``perovstem.atoms.ladder``).

Component ``k`` of ``K`` has mean ``mu_k`` on a polynomial in ``k`` (a ladder with a slowly
varying step), log-variance on a polynomial in ``k`` (SCS noise grows with thickness) and
weight ``softmax(Phi beta)_k`` with ``Phi`` a low-degree polynomial basis in ``k`` (smooth
count distribution).  EM as an ECM: weighted least squares for the means (given the
variances), Newton steps for the log-variance and weight coefficients (both convex
sub-problems, with step halving so that each M-step does not decrease the expected
complete-data log-likelihood).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from perovstem.atoms._gmm_numba import solve_augmented

_HALF_LOG2PI = 0.5 * np.log(2.0 * np.pi)


@njit(cache=True)
def _basis(k, deg):
    """Polynomial basis ``t^p``, ``t = 2j/(k-1) - 1`` in [-1, 1]; shape (k, deg + 1)."""
    phi = np.empty((k, deg + 1))
    for j in range(k):
        t = 2.0 * j / (k - 1.0) - 1.0 if k > 1 else 0.0
        v = 1.0
        for p in range(deg + 1):
            phi[j, p] = v
            v *= t
    return phi


#: a pivot below 1e-300 is singular (``solve_augmented`` refuses pivots <= its tol)
_SINGULAR = np.nextafter(1e-300, 0.0)


@njit(cache=True)
def _solve(a, b):
    """Solve ``a x = b`` (small, symmetric positive definite) by Gaussian elimination;
    zeros when singular."""
    q = b.size
    m = np.empty((q, q + 1))
    for i in range(q):
        for j in range(q):
            m[i, j] = a[i, j]
        m[i, q] = b[i]
    return solve_augmented(m, _SINGULAR)[1]


@njit(cache=True)
def _basis_means(a, b, phim, mu):
    """Means ``mu = Phi_m c`` minimising ``sum_j a_j mu_j^2 - 2 b_j mu_j`` (weighted LS);
    ``mu`` is left unchanged when the normal equations are singular."""
    k, q = phim.shape
    h = np.zeros((q, q))
    g = np.zeros(q)
    for j in range(k):
        for p in range(q):
            g[p] += b[j] * phim[j, p]
            for r in range(q):
                h[p, r] += a[j] * phim[j, p] * phim[j, r]
    scale = 0.0
    for p in range(q):
        scale = max(scale, h[p, p])
    if not scale > 0:
        return
    for p in range(q):
        h[p, p] += 1e-12 * scale
    c = _solve(h, g)
    for j in range(k):
        v = 0.0
        for p in range(q):
            v += phim[j, p] * c[p]
        mu[j] = v


@njit(cache=True)
def _logvar_cost(gam, psi, nk, sk, lo):
    k = nk.size
    f = 0.0
    for j in range(k):
        eta = 0.0
        for p in range(gam.size):
            eta += psi[j, p] * gam[p]
        if eta < lo:
            eta = lo
        f += 0.5 * (nk[j] * eta + sk[j] * np.exp(-eta))
    return f


@njit(cache=True)
def _logvar_step(gam, psi, nk, sk, lo, n_newton):
    """Newton steps on ``F = 1/2 sum_j nk_j eta_j + S_j exp(-eta_j)``, ``eta = Psi gam``."""
    k, q = psi.shape
    f0 = _logvar_cost(gam, psi, nk, sk, lo)
    for _ in range(n_newton):
        g = np.zeros(q)
        h = np.zeros((q, q))
        for j in range(k):
            eta = 0.0
            for p in range(q):
                eta += psi[j, p] * gam[p]
            e = sk[j] * np.exp(-eta)
            for p in range(q):
                g[p] += 0.5 * (nk[j] - e) * psi[j, p]
                for r in range(q):
                    h[p, r] += 0.5 * e * psi[j, p] * psi[j, r]
        for p in range(q):
            h[p, p] += 1e-9 * (1.0 + h[p, p])
        d = _solve(h, g)
        step = 1.0
        ok = False
        new = gam.copy()
        for _ls in range(30):
            for p in range(q):
                new[p] = gam[p] - step * d[p]
            f1 = _logvar_cost(new, psi, nk, sk, lo)
            if f1 <= f0:
                ok = True
                break
            step *= 0.5
        if not ok:
            break
        gam[:] = new
        if f0 - f1 < 1e-12 * (abs(f0) + 1.0):
            break
        f0 = f1
    return gam


@njit(cache=True)
def _weight_cost(beta, phi, nk):
    k = nk.size
    eta = phi @ beta
    m = eta.max()
    s = 0.0
    for j in range(k):
        s += np.exp(eta[j] - m)
    lse = m + np.log(s)
    f = 0.0
    for j in range(k):
        f -= nk[j] * (eta[j] - lse)
    return f


@njit(cache=True)
def _weight_step(beta, phi, nk, n_newton):
    """Newton steps on the multinomial NLL ``-sum_j nk_j log softmax(Phi beta)_j``."""
    k, q = phi.shape
    tot = nk.sum()
    f0 = _weight_cost(beta, phi, nk)
    for _ in range(n_newton):
        eta = phi @ beta
        m = eta.max()
        pi = np.exp(eta - m)
        pi /= pi.sum()
        g = np.zeros(q)
        mp = np.zeros(q)
        for j in range(k):
            for p in range(q):
                g[p] += (tot * pi[j] - nk[j]) * phi[j, p]
                mp[p] += pi[j] * phi[j, p]
        h = np.zeros((q, q))
        for j in range(k):
            for p in range(q):
                for r in range(q):
                    h[p, r] += tot * pi[j] * phi[j, p] * phi[j, r]
        for p in range(q):
            for r in range(q):
                h[p, r] -= tot * mp[p] * mp[r]
        for p in range(q):
            h[p, p] += 1e-9 * tot + 1e-12
        d = _solve(h, g)
        step = 1.0
        ok = False
        new = beta.copy()
        for _ls in range(30):
            for p in range(q):
                new[p] = beta[p] - step * d[p]
            f1 = _weight_cost(new, phi, nk)
            if f1 <= f0:
                ok = True
                break
            step *= 0.5
        if not ok:
            break
        beta[:] = new
        if f0 - f1 < 1e-12 * (abs(f0) + 1.0):
            break
        f0 = f1
    return beta


@njit(cache=True)
def ladder_em(x, w, mu0, gam0, beta0, phim, max_iter, tol, min_logvar, nll_shift, n_newton):
    """ECM for one start of the smooth ladder mixture on weighted, standardised data.

    x, w (n,); mu0 (k,); gam0 log-variance coefficients (vdeg + 1,); beta0 weight
    coefficients (wdeg + 1,).  ``phim`` (k, q): basis of the means in the component index
    (free means when ``q >= k``).  Returns mu, logvar (k,), pi (k,), gam, beta,
    nll, n_iter, converged; the NLL is evaluated at the returned parameters.
    """
    n = x.size
    k = mu0.size
    mu = mu0.copy()
    gam = gam0.copy()
    beta = beta0.copy()
    psi = _basis(k, gam.size - 1)
    phi = _basis(k, beta.size - 1)
    lp = np.empty(k)
    nk = np.empty(k)
    sx = np.empty(k)
    sxx = np.empty(k)
    lv = np.empty(k)
    logpi = np.empty(k)
    nll_old = np.inf
    nll = np.inf
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        eta = phi @ beta
        m0 = eta.max()
        s0 = 0.0
        for j in range(k):
            s0 += np.exp(eta[j] - m0)
        for j in range(k):
            logpi[j] = eta[j] - m0 - np.log(s0)
            v = 0.0
            for p in range(gam.size):
                v += psi[j, p] * gam[p]
            lv[j] = v if v > min_logvar else min_logvar
            nk[j] = 0.0
            sx[j] = 0.0
            sxx[j] = 0.0
        nll = 0.0
        for i in range(n):
            xi = x[i]
            m = -np.inf
            for j in range(k):
                z = xi - mu[j]
                v = logpi[j] - 0.5 * lv[j] - 0.5 * z * z * np.exp(-lv[j])
                lp[j] = v
                if v > m:
                    m = v
            s = 0.0
            for j in range(k):
                d = lp[j] - m
                e = np.exp(d) if d > -40.0 else 0.0
                lp[j] = e
                s += e
            if not (s > 0.0 and np.isfinite(m)):
                # parameters ran to NaN/overflow (degenerate fit, e.g. one level split
                # into a comb): no likelihood; the caller drops this start
                nll = np.inf
                break
            nll -= w[i] * (m + np.log(s) - _HALF_LOG2PI)
            f = w[i] / s
            for j in range(k):
                t = lp[j] * f
                nk[j] += t
                sx[j] += t * xi
                sxx[j] += t * xi * xi
        if not np.isfinite(nll):
            break
        if np.isfinite(nll_old) and abs(nll - nll_old) <= tol * abs(nll + nll_shift):
            converged = True
            break
        if it == max_iter:
            break
        nll_old = nll
        # means: weighted least squares on the ladder basis, weights 1 / variance
        if k > phim.shape[1]:
            a = np.empty(k)
            b = np.empty(k)
            for j in range(k):
                iv = np.exp(-lv[j])
                a[j] = nk[j] * iv
                b[j] = sx[j] * iv
            _basis_means(a, b, phim, mu)
        else:
            for j in range(k):
                if nk[j] > 1e-300:
                    mu[j] = sx[j] / nk[j]
        # log-variances
        sk = np.empty(k)
        for j in range(k):
            v = sxx[j] - 2.0 * mu[j] * sx[j] + mu[j] * mu[j] * nk[j]
            sk[j] = v if v > 0 else 0.0
        gam = _logvar_step(gam, psi, nk, sk, min_logvar, n_newton)
        # weights
        beta = _weight_step(beta, phi, nk, n_newton)
    eta = phi @ beta
    m0 = eta.max()
    pi = np.exp(eta - m0)
    pi /= pi.sum()
    for j in range(k):
        v = 0.0
        for p in range(gam.size):
            v += psi[j, p] * gam[p]
        lv[j] = v if v > min_logvar else min_logvar
    return mu, lv.copy(), pi, gam, beta, nll, it, converged


@njit(cache=True)
def ladder_em_batch(x, w, mu0, gam0, beta0, phim, max_iter, tol, min_logvar, nll_shift, n_newton):
    """:func:`ladder_em` for C starts: mu0 (C,k), gam0 (C,vq), beta0 (C,wq)."""
    C, k = mu0.shape
    mu = np.empty((C, k))
    lv = np.empty((C, k))
    pi = np.empty((C, k))
    gam = np.empty_like(gam0)
    beta = np.empty_like(beta0)
    nll = np.empty(C)
    n_iter = np.empty(C, dtype=np.int64)
    conv = np.empty(C, dtype=np.bool_)
    for c in range(C):
        r = ladder_em(
            x, w, mu0[c], gam0[c], beta0[c], phim, max_iter, tol, min_logvar, nll_shift, n_newton
        )
        mu[c], lv[c], pi[c], gam[c], beta[c], nll[c], n_iter[c], conv[c] = r
    return mu, lv, pi, gam, beta, nll, n_iter, conv
