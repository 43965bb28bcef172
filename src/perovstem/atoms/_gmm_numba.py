"""Numba kernels for the equal-width Gaussian-mixture EM (imported lazily by ``count``)."""

from __future__ import annotations

import numpy as np
from numba import njit

_HALF_LOG2PI = 0.5 * np.log(2.0 * np.pi)


@njit(cache=True)
def _em_one(x, w, mu0, sigma0, pi0, degree, max_iter, tol, min_sigma, nll_shift):
    """EM for one candidate on weighted, standardised data.

    x, w (n,); mu0, pi0 (k,); returns mu, sigma, pi, nll, n_iter, converged.  The NLL is
    evaluated at the returned parameters.  Convergence: relative NLL change < tol.
    ``degree`` 0: free means; ``degree`` d >= 1: the means follow a polynomial of degree d in
    the component index (d = 1: equally spaced), fitted in the M-step by weighted least squares.
    """
    n = x.size
    k = mu0.size
    # nll_shift = W log(scale) restores the NLL of the unstandardised data, so that the
    # relative tolerance means the same as on the original scale (StatSTEM/fitgmdist)
    mu = mu0.copy()
    pi = pi0.copy()
    sigma = sigma0
    wsum = 0.0
    sxx = 0.0
    for i in range(n):
        wsum += w[i]
        sxx += w[i] * x[i] * x[i]
    lp = np.empty(k)
    nk = np.empty(k)
    sx = np.empty(k)
    logpi = np.empty(k)
    nll_old = np.inf
    nll = np.inf
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        for j in range(k):
            nk[j] = 0.0
            sx[j] = 0.0
            logpi[j] = np.log(pi[j]) if pi[j] > 0 else -np.inf
        inv = 1.0 / sigma
        c0 = -np.log(sigma) - _HALF_LOG2PI
        nll = 0.0
        for i in range(n):
            xi = x[i]
            m = -np.inf
            for j in range(k):
                z = (xi - mu[j]) * inv
                v = logpi[j] - 0.5 * z * z
                lp[j] = v
                if v > m:
                    m = v
            s = 0.0
            for j in range(k):
                d = lp[j] - m
                e = np.exp(d) if d > -40.0 else 0.0
                lp[j] = e
                s += e
            nll -= w[i] * (m + np.log(s) + c0)
            f = w[i] / s
            for j in range(k):
                t = lp[j] * f
                nk[j] += t
                sx[j] += t * xi
        if np.isfinite(nll_old) and abs(nll - nll_old) <= tol * abs(nll + nll_shift):
            converged = True
            break
        if it == max_iter:
            break
        nll_old = nll
        # M-step
        for j in range(k):
            pi[j] = nk[j] / wsum
        if degree > 0 and k > degree + 1:
            _ladder_means(nk, sx, degree, mu)
        else:
            for j in range(k):
                if nk[j] > 1e-300:
                    mu[j] = sx[j] / nk[j]
        var = sxx
        for j in range(k):
            var += -2.0 * mu[j] * sx[j] + mu[j] * mu[j] * nk[j]
        var /= wsum
        sigma = np.sqrt(var) if var > 0 else 0.0
        if sigma < min_sigma:
            sigma = min_sigma
    return mu, sigma, pi, nll, it, converged


@njit(cache=True)
def solve_augmented(a, tol):
    """Solve the (q, q + 1) augmented system ``a = [A | b]`` by Gaussian elimination with
    partial pivoting, in place.  Returns ``(ok, x)``; ``ok`` is False (x zeros) when a
    pivot's magnitude is ``<= tol`` (singular for the caller's scale).  Serves the GMM
    ladder means here and the ladder mixture's Newton steps (``_ladder_numba``)."""
    q = a.shape[0]
    for c in range(q):
        piv = c
        for r in range(c + 1, q):
            if abs(a[r, c]) > abs(a[piv, c]):
                piv = r
        if abs(a[piv, c]) <= tol:
            return False, np.zeros(q)
        if piv != c:
            for m in range(q + 1):
                tmp = a[c, m]
                a[c, m] = a[piv, m]
                a[piv, m] = tmp
        for r in range(c + 1, q):
            f = a[r, c] / a[c, c]
            for m in range(c, q + 1):
                a[r, m] -= f * a[c, m]
    x = np.zeros(q)
    for c in range(q - 1, -1, -1):
        v = a[c, q]
        for m in range(c + 1, q):
            v -= a[c, m] * x[m]
        x[c] = v / a[c, c]
    return True, x


@njit(cache=True)
def _ladder_means(nk, sx, degree, mu):
    """M-step of the ladder mixture: means ``mu_j = sum_p b_p t_j^p``, ``t_j = j / (k - 1)``.

    Minimises ``sum_ij tau_ij (x_i - mu_j)^2``, i.e. the normal equations
    ``(sum_j nk_j phi_j phi_j^T) b = sum_j sx_j phi_j``, solved by Gaussian elimination with
    partial pivoting; ``mu`` is left unchanged when the system is singular (too few occupied
    components for the degree).
    """
    k = nk.size
    q = degree + 1
    a = np.zeros((q, q + 1))
    phi = np.empty(q)
    for j in range(k):
        t = j / (k - 1.0)
        v = 1.0
        for p in range(q):
            phi[p] = v
            v *= t
        for p in range(q):
            for r in range(q):
                a[p, r] += nk[j] * phi[p] * phi[r]
            a[p, q] += sx[j] * phi[p]
    scale = 0.0
    for p in range(q):
        scale = max(scale, abs(a[p, p]))
    ok, b = solve_augmented(a, 1e-12 * scale)
    if not ok:
        return
    for j in range(k):
        t = j / (k - 1.0)
        v = 1.0
        m = 0.0
        for p in range(q):
            m += b[p] * v
            v *= t
        mu[j] = m


@njit(cache=True)
def em_batch(x, w, mu0, sigma0, pi0, degree, max_iter, tol, min_sigma, nll_shift):
    """Run :func:`_em_one` for C candidates: mu0, pi0 (C,k), sigma0 (C,)."""
    C, k = mu0.shape
    mu = np.empty((C, k))
    pi = np.empty((C, k))
    sigma = np.empty(C)
    nll = np.empty(C)
    n_iter = np.empty(C, dtype=np.int64)
    conv = np.empty(C, dtype=np.bool_)
    for c in range(C):
        m, s, p, v, it, cv = _em_one(
            x, w, mu0[c], sigma0[c], pi0[c], degree, max_iter, tol, min_sigma, nll_shift
        )
        mu[c] = m
        sigma[c] = s
        pi[c] = p
        nll[c] = v
        n_iter[c] = it
        conv[c] = cv
    return mu, sigma, pi, nll, n_iter, conv
