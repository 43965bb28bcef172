"""Hidden-Markov-model atom counting over time series (frames x columns).

Model (De wael et al., PRL 124 (2020) 106105; De wael et al., Ultramicroscopy 219 (2020)
113131): the number of atoms ``h[t, n]`` of column ``n`` in frame ``t`` is a Markov chain; the
observed cross-section is ``obs[t, n] ~ N(c L[h], sigma^2)`` with library values ``L`` (simulated,
or GMM component locations), one scale ``c`` and one width ``sigma``.  Parameters are estimated
by Baum-Welch EM (log-space, forward-backward vectorised over columns), counts are Viterbi paths.

Transition models (``model=``):

``"free"``
    One time-homogeneous ``K x K`` matrix for all columns (StatSTEM's model), optionally banded
    to ``|Δn| <= max_step``.
``"loss"``
    Monotone, loss-only: like ``"free"`` but only ``Δn <= 0`` is allowed (beam damage).
``"dose"``
    Dose-dependent, loss-only: between frames ``t`` and ``t+1`` a column loses atoms as a Poisson
    process with ``lambda_n * D_t`` expected losses (``D_t`` the dose of frame ``t``), truncated
    at the smallest state.  ``lambda_n`` (atoms per e⁻/Å²) is estimated per column
    (``rate="column"``) or shared (``rate="shared"``) in the M-step,
    ``lambda = sum_t E[loss_t] / sum_t D_t`` (the Poisson-process MLE given the expected
    losses).  This is the extension for beam damage that StatSTEM lacks.

StatSTEM renormalises the emissions per observation before the forward-backward pass; that
multiplies each time step by a state-independent constant, so posteriors, EM updates and the
fixed point are identical to the exact Baum-Welch used here (only the reported log-likelihood
differs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import gammainc, gammaln, logsumexp, xlogy

from perovstem._validation import refuse_text_numbers
from perovstem.atoms.library import as_library
from perovstem.errors import DataError, ParameterError

__all__ = ["HMMResult", "fit_hmm", "viterbi", "forward_backward"]


# --------------------------------------------------------------------------- core algorithms
class PoissonLossTransitions:
    """Per-step, per-column zero-order Poisson loss transitions, built one step at a time.

    Between frames ``t`` and ``t+1`` column ``n`` loses ``d ~ Poisson(mu[t, n])`` atoms; drops
    below the lowest state are absorbed in it.  Storing the (T-1, N, K, K) matrices would
    cost T N K² memory; here only the (T-1, N, K) drop pmf is kept and each step's (N, K, K)
    matrix is gathered on demand.

    Parameters
    ----------
    mu : ndarray, shape (T-1, N)
        Expected losses per step and column.
    counts : ndarray of int, shape (K,)
        Consecutive atom numbers of the states.
    """

    def __init__(self, mu: np.ndarray, counts: np.ndarray) -> None:
        mu = np.asarray(mu, dtype=float)
        K = counts.size
        dd = np.arange(K)
        with np.errstate(divide="ignore", invalid="ignore"):
            lp = xlogy(dd, mu[..., None]) - mu[..., None] - gammaln(dd + 1)
        self.pmf = np.exp(lp)  # (T-1, N, K)
        # P(drop >= d) for d = 0..K-1 (regularised lower incomplete gamma)
        self.sf = np.where(dd == 0, 1.0, gammainc(np.maximum(dd, 1), mu[..., None]))
        d = counts[:, None] - counts[None, :]
        self._d = np.clip(d, 0, K - 1)
        self._neg = d < 0
        self._d0 = counts - counts[0]
        self.shape = mu.shape + (K, K)
        self.ndim = 4

    def prob(self, t: int) -> np.ndarray:
        """Transition probabilities of step t, shape (N, K, K)."""
        A = self.pmf[t][:, self._d]
        A[:, self._neg] = 0.0
        A[:, 1:, 0] = self.sf[t][:, self._d0[1:]]
        A[:, 0, 0] = 1.0
        return A

    def log(self, t: int) -> np.ndarray:
        """Log transition probabilities of step t, shape (N, K, K)."""
        with np.errstate(divide="ignore"):
            return np.log(self.prob(t))


def _trans_at(logA: Any, t: int) -> np.ndarray:
    """Log transitions of step t: (K,K) homogeneous, or (N,K,K) per column."""
    if isinstance(logA, PoissonLossTransitions):
        return logA.log(t)
    return logA if logA.ndim == 2 else logA[t]


def forward_backward(
    logB: np.ndarray, log_init: np.ndarray, logA: Any, *, drop: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """Scaled forward-backward for N independent chains (log-space inputs and likelihood).

    The emissions enter as ``exp(logB - max_k logB)`` per observation (so the largest is 1) and
    the recursions are normalised at every step (Rabiner, Proc. IEEE 77 (1989) 257); the
    log-likelihood is recovered exactly from the log normalisers.  This is as stable as a pure
    log-space pass and ~10x faster; :func:`_forward_backward_log` is the log-space reference.

    Parameters
    ----------
    logB : ndarray, shape (T, N, K)
        Log emission densities.
    log_init : ndarray, shape (K,)
    logA : ndarray (K, K) or (T-1, N, K, K), or PoissonLossTransitions
        Log transition matrices (rows: from-state).
    drop : ndarray, shape (K, K), optional
        A per-transition quantity (e.g. atoms lost ``n_i - n_j``) whose posterior expectation
        per step and column is returned.

    Returns
    -------
    gamma : ndarray, shape (T, N, K)
    xi_sum : ndarray, shape (K, K)
        Expected transition counts summed over frames and columns.
    exp_drop : ndarray, shape (T-1, N) or None
        Posterior expectation of ``drop`` per step and column (when ``drop`` is given).
    loglik : ndarray, shape (N,)
    """
    T, N, K = logB.shape
    mB = logB.max(axis=2, keepdims=True)
    B = np.maximum(np.exp(logB - mB), 1e-300)
    lazy = isinstance(logA, PoissonLossTransitions)
    homog = not lazy and logA.ndim == 2
    Afull = None if lazy else np.exp(logA)

    def P(t: int) -> np.ndarray:
        if lazy:
            return logA.prob(t)
        return Afull if homog else Afull[t]

    alpha = np.empty((T, N, K))
    beta = np.empty((T, N, K))
    cs = np.empty((T, N))
    # underflow of the scaling is detected below and those columns redone in log space
    with np.errstate(all="ignore"):
        a = np.exp(log_init)[None, :] * B[0]
        cs[0] = a.sum(1)
        alpha[0] = a / cs[0][:, None]
        for t in range(1, T):
            At = P(t - 1)
            a = (alpha[t - 1] @ At) if homog else np.einsum("ni,nij->nj", alpha[t - 1], At)
            a *= B[t]
            cs[t] = a.sum(1)
            alpha[t] = a / cs[t][:, None]
        beta[T - 1] = 1.0
        for t in range(T - 2, -1, -1):
            At = P(t)
            bb = B[t + 1] * beta[t + 1]
            b = (bb @ At.T) if homog else np.einsum("nij,nj->ni", At, bb)
            beta[t] = b / cs[t + 1][:, None]
        gamma = alpha * beta
        gamma /= gamma.sum(axis=2, keepdims=True)
        ll = np.log(cs).sum(0) + mB[:, :, 0].sum(0)
    # A column whose observation is (nearly) impossible under every reachable state (e.g. a
    # count that rises under the loss model) underflows the scaling: redo it in log space.
    bad = ~np.isfinite(gamma).all(axis=(0, 2)) | (cs < 1e-250).any(axis=0)
    good = ~bad
    xi_sum = np.zeros((K, K))
    exp_drop = None if drop is None else np.empty((T - 1, N))
    for t in range(T - 1):
        At = P(t)
        bb = B[t + 1][good] * beta[t + 1][good] / cs[t + 1][good][:, None]
        at = alpha[t][good]
        if homog:
            xs = At * (at.T @ bb)
            xi_sum += xs
            if drop is not None:
                x = at[:, :, None] * At[None] * bb[:, None, :]
                exp_drop[t, good] = np.einsum("nij,ij->n", x, drop)
        else:
            x = at[:, :, None] * At[good] * bb[:, None, :]
            xi_sum += x.sum(0)
            if drop is not None:
                exp_drop[t, good] = np.einsum("nij,ij->n", x, drop)
    if bad.any():
        g, _, xi_t, llb = _forward_backward_log(logB[:, bad], log_init, _columns(logA, bad, T))
        gamma[:, bad], ll[bad] = g, llb
        xi_sum += xi_t.sum(axis=(0, 1))
        if drop is not None:
            exp_drop[:, bad] = np.einsum("tnij,ij->tn", xi_t, drop)
    return gamma, xi_sum, exp_drop, ll


def _columns(logA: Any, sel: np.ndarray, T: int) -> Any:
    """Per-step log transitions of the columns ``sel`` (always 4-D, so xi_t is returned)."""
    if isinstance(logA, PoissonLossTransitions):
        sub = object.__new__(PoissonLossTransitions)
        sub.pmf, sub.sf = logA.pmf[:, sel], logA.sf[:, sel]
        sub._d, sub._neg, sub._d0 = logA._d, logA._neg, logA._d0
        sub.shape = sub.pmf.shape[:2] + logA.shape[2:]
        sub.ndim = 4
        return sub
    logA = np.asarray(logA)
    if logA.ndim == 2:
        K = logA.shape[0]
        return np.broadcast_to(logA, (max(T - 1, 0), int(sel.sum()), K, K))
    return logA[:, sel]


def _forward_backward_log(
    logB: np.ndarray, log_init: np.ndarray, logA: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Log-space forward-backward for N independent chains (reference implementation).

    Parameters
    ----------
    logB : ndarray, shape (T, N, K)
        Log emission densities.
    log_init : ndarray, shape (K,)
        Log initial-state probabilities.
    logA : ndarray, shape (K, K) or (T-1, N, K, K)
        Log transition matrices ``log P(h_{t+1}=j | h_t=i)`` (rows i).

    Returns
    -------
    gamma : ndarray, shape (T, N, K)
        Posterior state probabilities.
    xi_sum : ndarray, shape (K, K)
        Expected transition counts summed over frames and columns.
    xi_t : ndarray, shape (T-1, N, K, K) or None
        Per-step expected transitions (only for per-step ``logA``).
    loglik : ndarray, shape (N,)
        Log-likelihood of each column's series.
    """
    T, N, K = logB.shape
    la = np.empty((T, N, K))
    lb = np.zeros((T, N, K))
    la[0] = log_init[None, :] + logB[0]
    for t in range(1, T):
        A = _trans_at(logA, t - 1)
        la[t] = logsumexp(la[t - 1][:, :, None] + A, axis=1) + logB[t]
    ll = logsumexp(la[T - 1], axis=-1)
    for t in range(T - 2, -1, -1):
        A = _trans_at(logA, t)
        lb[t] = logsumexp(A + (logB[t + 1] + lb[t + 1])[:, None, :], axis=2)
    lg = la + lb - ll[None, :, None]
    gamma = np.exp(lg)
    xi_sum = np.zeros((K, K))
    xi_t = (
        None
        if (not isinstance(logA, PoissonLossTransitions) and logA.ndim == 2)
        else (np.empty((T - 1, N, K, K)))
    )
    for t in range(T - 1):
        A = _trans_at(logA, t)
        lx = la[t][:, :, None] + A + (logB[t + 1] + lb[t + 1])[:, None, :] - ll[:, None, None]
        x = np.exp(lx)
        xi_sum += x.sum(axis=0)
        if xi_t is not None:
            xi_t[t] = x
    return gamma, xi_sum, xi_t, ll


def viterbi(
    logB: np.ndarray, log_init: np.ndarray, logA: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Most probable state paths (Viterbi, log-space), vectorised over columns.

    Parameters
    ----------
    logB, log_init, logA : see :func:`forward_backward`.

    Returns
    -------
    path : ndarray of int, shape (T, N)
        State indices.
    log_prob : ndarray, shape (N,)
        Log joint probability of each path with the observations.
    """
    T, N, K = logB.shape
    delta = log_init[None, :] + logB[0]
    bp = np.empty((T, N, K), dtype=np.int64)
    for t in range(1, T):
        s = delta[:, :, None] + _trans_at(logA, t - 1)
        bp[t] = np.argmax(s, axis=1)
        delta = np.take_along_axis(s, bp[t][:, None, :], axis=1)[:, 0, :] + logB[t]
    path = np.empty((T, N), dtype=np.int64)
    path[T - 1] = np.argmax(delta, axis=1)
    lp = delta[np.arange(N), path[T - 1]]
    for t in range(T - 1, 0, -1):
        path[t - 1] = bp[t][np.arange(N), path[t]]
    return path, lp


def _log_emission(obs: np.ndarray, means: np.ndarray, sigma: float) -> np.ndarray:
    z = (obs[:, :, None] - means[None, None, :]) / sigma
    return -0.5 * z * z - np.log(sigma) - 0.5 * np.log(2 * np.pi)


def _poisson_loss_logA(mu: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """log P(j | i) for zero-order Poisson loss: mu (...,) expected losses -> (..., K, K).

    ``counts`` are the (consecutive) atom numbers of the states.  Drops below the lowest state
    are absorbed in it.
    """
    K = counts.size
    d = counts[:, None] - counts[None, :]  # drop i -> j
    mu = np.asarray(mu, dtype=float)[..., None, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        lp = xlogy(d, mu) - mu - gammaln(np.maximum(d, 0) + 1)
    lp = np.where(d < 0, -np.inf, lp)
    # absorbing lowest state: P(drop >= d_i0) = P_lower_gamma(d_i0, mu) (regularised)
    d0 = (counts - counts[0]).astype(float)  # drop needed to reach the lowest state
    with np.errstate(divide="ignore"):
        tail = np.log(gammainc(np.maximum(d0[1:], 1.0), mu[..., 0]))  # (..., K-1)
    lp = lp.copy()
    lp[..., 1:, 0] = tail
    lp[..., 0, 0] = 0.0
    return np.broadcast_to(lp, mu.shape[:-2] + (K, K)).copy()


# --------------------------------------------------------------------------- result
@dataclass(frozen=True)
class HMMResult:
    """Result of :func:`fit_hmm`.

    Attributes
    ----------
    n_atoms : ndarray of int, shape (T, N)
        Viterbi counts per frame and column.
    n_atoms_mean, n_atoms_std : ndarray, shape (T, N)
        Posterior mean and standard deviation of the counts.
    posterior : ndarray, shape (T, N, K)
        Posterior state probabilities.
    states : ndarray of int, shape (K,)
        Atom numbers of the hidden states.
    library : ndarray, shape (K,)
        Library SCS of the states (before scaling).
    transition : ndarray, shape (K, K) or None
        Homogeneous transition matrix (``"free"``/``"loss"``).
    initial : ndarray, shape (K,)
    scale, width : float
        Emission scale ``c`` and width ``sigma``.
    offset_probability : dict or None
        ``{d: P(d)}``, the probability that every count is ``d`` atoms more than
        ``n_atoms`` (another reading of the scale, ``c L_n ~ c' L_(n+-1)``), as
        :func:`~perovstem.atoms.count_atoms` reports it; None for ``library="gmm"`` and
        with ``fit_scale=False`` (the scale is then the caller's calibration).
        Unlike :func:`~perovstem.atoms.count_atoms`' ``n_atoms_std``, the HMM's posterior
        moments do not include it: a common offset cancels in the atoms lost and the loss
        rates, whose errors they give.
    offset_ambiguous : bool or None
        ``P(0) < 0.9`` (a warning is given).
    scale_prior : dict or None
        ``center``, ``log_sd`` and ``source`` of the scale prior that weighs the readings.
    loss_rate, loss_rate_err : ndarray, shape (N,) or None
        Atoms lost per column per unit dose (per e⁻/Å²) and standard error, when doses are known.
        With ``rate="shared"`` every column has the same rate and error, and the errors are
        one error (fully correlated): use :meth:`total_loss` for sums over columns.
    loglik : float
    n_iter : int
    converged : bool
    model : str
    """

    n_atoms: np.ndarray
    n_atoms_mean: np.ndarray
    n_atoms_std: np.ndarray
    posterior: np.ndarray
    states: np.ndarray
    library: np.ndarray
    transition: np.ndarray | None
    initial: np.ndarray
    scale: float
    width: float
    loss_rate: np.ndarray | None
    loss_rate_err: np.ndarray | None
    loglik: float
    n_iter: int
    converged: bool
    model: str
    loss_rate_total_err: float | None = None
    offset_probability: dict[int, float] | None = None
    offset_ambiguous: bool | None = None
    scale_prior: dict[str, Any] | None = None

    def table(self, scs: Any = None) -> pd.DataFrame:
        """Long table: ``frame, column, n_atoms, n_atoms_mean, n_atoms_std, p_n_atoms`` (+ ``scs``)."""
        T, N = self.n_atoms.shape
        idx = np.searchsorted(self.states, self.n_atoms)
        p = np.take_along_axis(self.posterior, idx[:, :, None], axis=2)[:, :, 0]
        df = pd.DataFrame(
            {
                "frame": np.repeat(np.arange(T), N),
                "column": np.tile(np.arange(N), T),
                "n_atoms": self.n_atoms.ravel(),
                "n_atoms_mean": self.n_atoms_mean.ravel(),
                "n_atoms_std": self.n_atoms_std.ravel(),
                "p_n_atoms": p.ravel(),
            }
        )
        if scs is not None:
            df["scs"] = np.asarray(scs, dtype=float).ravel()
        df.attrs["hmm"] = self.summary()
        return df

    def column_table(self) -> pd.DataFrame:
        """Per column: first/last counts, atoms lost and loss rate per e⁻/Å² with error."""
        first, last = self.n_atoms[0], self.n_atoms[-1]
        df = pd.DataFrame(
            {
                "column": np.arange(first.size),
                "n_atoms_first": first,
                "n_atoms_last": last,
                "atoms_lost": first - last,
                "atoms_lost_mean": self.n_atoms_mean[0] - self.n_atoms_mean[-1],
            }
        )
        if self.loss_rate is not None:
            df["loss_rate_per_e_A2"] = self.loss_rate
            df["loss_rate_err_per_e_A2"] = self.loss_rate_err
        df.attrs["hmm"] = self.summary()
        return df

    def total_loss(self) -> dict[str, Any]:
        """Atoms lost by all columns together from the first to the last frame.

        Returns
        -------
        dict
            ``n_columns``; ``atoms_lost`` (Viterbi counts), ``atoms_lost_mean`` and
            ``atoms_lost_err`` (posterior mean and standard error: the first and last frames'
            posterior count variances summed over columns, neglecting their positive
            correlation along a column, so an upper bound); with doses also
            ``loss_rate_per_e_A2`` and ``loss_rate_err_per_e_A2``: atoms lost per e⁻/Å² by
            all columns together (the sum of the per-column rates), whose error counts a
            shared rate's error once per column (fully correlated), not in quadrature.
        """
        first, last = self.n_atoms[0], self.n_atoms[-1]
        sd0, sd1 = self.n_atoms_std[0], self.n_atoms_std[-1]
        out: dict[str, Any] = {
            "n_columns": int(first.size),
            "atoms_lost": int(np.sum(first - last)),
            "atoms_lost_mean": float(np.sum(self.n_atoms_mean[0] - self.n_atoms_mean[-1])),
            "atoms_lost_err": float(np.sqrt(np.sum(sd0**2 + sd1**2))),
        }
        if self.loss_rate is not None:
            out["loss_rate_per_e_A2"] = float(np.sum(self.loss_rate))
            out["loss_rate_err_per_e_A2"] = float(
                self.loss_rate_total_err
                if self.loss_rate_total_err is not None
                else np.sqrt(np.sum(self.loss_rate_err**2))
            )
        return out

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable summary (stored in ``df.attrs``)."""
        return {
            "model": self.model,
            "states": self.states.tolist(),
            "scale": self.scale,
            "width": self.width,
            "loglik": self.loglik,
            "n_iter": self.n_iter,
            "converged": self.converged,
            "transition": None if self.transition is None else self.transition.tolist(),
            "initial": self.initial.tolist(),
            "offset_probability": self.offset_probability,
            "offset_ambiguous": self.offset_ambiguous,
            "scale_prior": self.scale_prior,
        }


# --------------------------------------------------------------------------- fitting
def _check_obs(obs: Any) -> np.ndarray:
    try:
        a = np.array(obs, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(
            f"`scs` must be a numeric (frames, columns) array, got {type(obs).__name__}"
        ) from None
    if a.ndim != 2 or a.size == 0:
        raise DataError(
            f"`scs` must be a non-empty 2-D (frames, columns) array, got shape {a.shape}"
        )
    if a.shape[0] < 2:
        raise DataError(f"`scs` needs at least 2 frames for an HMM, got {a.shape[0]}")
    if not np.all(np.isfinite(a)):
        raise DataError(f"`scs` contains {int((~np.isfinite(a)).sum())} non-finite value(s)")
    # a fitted SCS scatters about 0 on a column emptied under the beam: slightly negative
    # values are observations (Gaussian emissions), not bad input; mostly negative ones are
    # a sign or background error
    if np.mean(a < 0) > 0.5 or np.median(a) <= 0:
        raise DataError(
            f"`scs` must be >= 0 for most columns, got {int((a < 0).sum())} of {a.size} "
            f"negative (median {np.median(a):g}): a sign or background error?"
        )
    return a


def _scale_scan(
    obs: np.ndarray, L: np.ndarray, n_max: int = 4096
) -> tuple[list[tuple[float, float]], float]:
    """Optima ``(c, nll)`` of the hybrid likelihood of all frames (at most ``n_max``
    quantiles of the observations) and the weight that scales their NLL to one frame's
    worth of columns: the frames see the same columns, so their likelihoods are not
    independent evidence on the scale (T frames would make every reading T times surer)."""
    from perovstem.atoms.library import _scale_candidates

    x = np.sort(obs.ravel())
    if x.size > n_max:
        x = x[np.linspace(0, x.size - 1, n_max).astype(np.int64)]
    return _scale_candidates(x, L, (0.8, 1.25), 0.01, 1e-10), obs.shape[1] / x.size


def _start_scale(
    obs: np.ndarray, L: np.ndarray, cands: list[tuple[float, float]] | None = None
) -> float:
    """Starting emission scale: the best optimum of the hybrid likelihood of all frames.

    StatSTEM starts EM at ``c = 1``.  The library is nearly self-similar, so EM then settles on
    the optimum nearest 1, which for a miscalibration of a few % is the one with every count
    shifted by one (Gaussian-model SCS are 5-10 % below the probe-integrated library).  The
    pooled cross-sections of all frames usually span several thicknesses, where the optima
    differ clearly in likelihood; they are scanned as in :func:`perovstem.atoms.fit_hybrid`
    (same weak prior around 1), on at most ``n_max`` quantiles of the observations.  When
    another optimum fits about as well (within 2 in NLL), the scan does not identify the
    scale and StatSTEM's ``c = 1`` is kept.
    """
    from perovstem.atoms.count import _identifiable, _scale_penalty

    if cands is None:
        cands = _scale_scan(obs, L)[0]
    best = min(cands, key=lambda cn: cn[1] + _scale_penalty(cn[0], 1.0, 0.1))[0]
    # a flat profile (StatSTEM's HMM example) says nothing: keep StatSTEM's start there
    return best if _identifiable(cands, best) else 1.0


def frame_noise(scs: Any) -> float | None:
    """Noise of one cross-section from the differences between consecutive frames.

    The frames of a series see the same columns, so ``d = scs[t + 1] - scs[t]`` is the
    difference of two independent noise draws, ``N(0, 2 sigma^2)``, except where a column changed.  A loss
    makes ``d`` negative, a gain positive, so each half of ``d`` is half-normal with median
    ``0.6745 sqrt(2) sigma`` where it holds no changes: ``sigma`` is taken from the
    smaller of the two medians, or from the median of ``|d|`` when the two agree within
    their sampling spread (a median, like the MAD of Rousseeuw & Croux, JASA 88 (1993)
    1273, ignores a minority of changes; the one-sided halves also ignore a majority of
    losses: the plain MAD read 1.3-1.7 sigma on series with a loss in a quarter of the
    differences).  Persistent differences between columns (edge columns, a thickness
    gradient) are not noise and are not included.

    Parameters
    ----------
    scs : array_like, shape (T, N)
        Cross-sections, frame by column.

    Returns
    -------
    float or None
        The standard deviation (same unit as ``scs``); None for fewer than two frames or
        no spread in the differences.
    """
    obs = np.asarray(scs, dtype=float)
    if obs.ndim != 2 or obs.shape[0] < 2:
        return None
    d = np.diff(obs, axis=0).ravel()
    d = d[np.isfinite(d)]
    up, down = d[d > 0], -d[d < 0]
    if up.size < 2 or down.size < 2:
        return None
    # each half of N(0, 2 sigma^2) is half-normal, median 0.6745 sqrt(2) sigma; losses
    # (gains) contaminate only the lower (upper) half.  Halves that agree within twice
    # the spread of the log ratio of two sample medians (1.65 / sqrt(n)) are pooled (the
    # smaller of two noisy medians is biased low on a few frames), else the smaller taken
    m_up, m_down = float(np.median(up)), float(np.median(down))
    if m_up <= 0 or m_down <= 0:
        return None
    agree = abs(np.log(m_up / m_down)) < 2 * 1.65 / np.sqrt(min(up.size, down.size))
    m = float(np.median(np.abs(d))) if agree else min(m_up, m_down)
    sigma = m / (0.6745 * np.sqrt(2.0))
    return sigma if sigma > 0 else None


def fit_hmm(
    scs: Any,
    library: Any,
    *,
    model: str = "free",
    dose_e_per_A2: Any = None,
    max_states: int | None = None,
    include_zero: bool | None = None,
    max_step: int | None = None,
    rate: str = "column",
    fit_scale: bool = True,
    init: dict[str, Any] | None = None,
    max_iter: int = 5000,
    tol: float = 1e-12,
    scale_prior: tuple[float, float] | None = None,
) -> HMMResult:
    """Fit a hidden Markov model to cross-sections over frames and decode the counts.

    Parameters
    ----------
    scs : array_like, shape (T, N)
        Cross-sections, frame ``t`` by column ``n`` (same columns in every frame).
    library : see :func:`perovstem.atoms.library.as_library`, or ``"gmm"``
        SCS of 1, 2, ... atoms (simulated or GMM locations).  If its first value is 0 (or
        ``include_zero``), an empty-column state is included.  ``"gmm"``: the states are the
        component locations of an equal-width GMM of all frames (k by ICL; relative counts
        1, 2, ... unless anchored to a library later), with the scale fixed.  The GMM's
        one-level test (:func:`~perovstem.atoms.count.gmm_sweep`, ``scs_err``) uses the
        noise of the frame-to-frame differences (:func:`frame_noise`), so a series of one
        thickness is refused (DataError) rather than split into states of noise.
    model : {"free", "loss", "dose"}
        Transition model (see module docstring).
    dose_e_per_A2 : float or array_like, shape (T,), optional
        Dose of each frame (e⁻/Å²).  Required for ``"dose"``; for the others it turns the count
        change into a loss rate per unit dose.
    max_states : int, optional
        Use only the first ``max_states`` library entries (StatSTEM's ``G``).
    include_zero : bool, optional
        Add a 0-atom state (default: only when the library starts with 0).
    max_step : int, optional
        Band the free/loss matrix to ``|Δn| <= max_step`` per frame.
    rate : {"column", "shared"}
        Per-column or one shared loss rate for ``"dose"``.
    fit_scale : bool
        Estimate the emission scale ``c`` (else ``c = 1``).  The library is nearly
        self-similar (``c L_n ~ c' L_{n-1}`` with ``c' ~ c n/(n-1)``), so for thick columns a
        few-% miscalibration can make EM settle on counts shifted by one (loss rates stay
        right).  EM therefore starts from the best scale optimum of the hybrid likelihood of
        all frames (a grid scan, as :func:`perovstem.atoms.fit_hybrid`) when that scan
        identifies the scale, else from 1.  With a
        calibrated library (normalised images) ``fit_scale=False`` is safest.
    init : dict, optional
        Starting values: ``scale``, ``width``, ``transition`` (K,K), ``initial`` (K,),
        ``loss_rate`` (float or (N,)).  Defaults follow StatSTEM except the scale (above):
        ``sigma = (max obs - min obs) / (2K)``, uniform ``pi`` and ``A`` (over allowed moves).
    max_iter, tol : int, float
        EM stops when ``|ΔLL / LL| < tol`` or after ``max_iter`` cycles.
    scale_prior : (float, float), optional
        ``(center, log_sd)`` of the prior on the scale that weighs the readings of the
        counts (``offset_probability``), as :func:`~perovstem.atoms.count_atoms`' (default
        ``(1, 0.03)`` for a library made by
        :func:`~perovstem.atoms.fitted_scs_library`, else ``(1, 0.1)``).  The optima of
        the hybrid likelihood of all frames (the start scan, its NLL scaled to one frame:
        the frames see the same columns) are the readings; each is weighed by its
        likelihood and the prior.  Given (or with a fitted library) and ``fit_scale``, EM
        starts from the most probable reading.  ``init["scale"]`` is a start, not a prior.

    Returns
    -------
    HMMResult

    Warns
    -----
    UserWarning
        When the counts may all be offset (``offset_ambiguous``, ``P(0) < 0.9``).
    """
    refuse_text_numbers(locals())
    from perovstem.atoms.count import _check_scale_prior

    prior_c, prior_sd, prior_from = _check_scale_prior(scale_prior, library)
    obs = _check_obs(scs)
    T, N = obs.shape
    if model not in ("free", "loss", "dose"):
        raise ParameterError(f"`model` must be one of ['dose', 'free', 'loss'], got {model!r}")
    if rate not in ("column", "shared"):
        raise ParameterError(f"`rate` must be 'column' or 'shared', got {rate!r}")
    if max_step is not None and (
        isinstance(max_step, bool) or not isinstance(max_step, (int, np.integer)) or max_step < 0
    ):
        # a negative band forbids every transition: the EM ran on NaN and exited 0
        raise ParameterError(f"`max_step` must be an integer >= 0, got {max_step!r}")
    gmm_states = False
    if isinstance(library, str) and library == "gmm":
        # no simulations: the states are the components of an equal-width GMM of all frames
        # (k by ICL), counted 1, 2, ... from the lowest; the scale is then fixed
        from perovstem.atoms.count import gmm_sweep

        # the frames see the same columns: their differences give the SCS noise, so the
        # sweep's one-level test can tell one thickness from several (gmm_sweep, scs_err)
        kmax = max(1, min(30, obs.size // 2))
        noise = frame_noise(obs)
        err = None if noise is None else np.full(obs.size, noise)
        sw = gmm_sweep(obs.ravel(), max_components=kmax, scs_err=err)
        means = sw.fit(sw.selected).means
        if means.size < 2:
            why = "" if sw.single_level_test is None else f" ({sw.single_level_test['reason']})"
            raise DataError(
                f"the GMM of the SCS of all frames has a single component{why}: one count "
                "level, nothing to track"
            )
        library = np.column_stack([np.arange(1, means.size + 1), means])
        fit_scale = False
        gmm_states = True
    n_lib, L = as_library(library)
    if max_states is not None:
        if int(max_states) < 2:
            raise ParameterError(f"`max_states` must be >= 2, got {max_states!r}")
        n_lib, L = n_lib[: int(max_states)], L[: int(max_states)]
    if include_zero is None:
        include_zero = False
    if include_zero and n_lib[0] != 0:
        n_lib, L = np.r_[0, n_lib], np.r_[0.0, L]
    K = L.size
    if K < 2:
        raise ParameterError(f"the library must have at least 2 states, got {K}")
    if np.any(np.diff(n_lib) != 1):
        raise DataError("library atom numbers must be consecutive (1, 2, 3, ...)")
    dose = None
    if dose_e_per_A2 is not None:
        dose = np.broadcast_to(np.asarray(dose_e_per_A2, dtype=float), (T,)).copy()
        if not np.all(np.isfinite(dose)) or (dose < 0).any():
            raise ParameterError(f"`dose_e_per_A2` must be finite and >= 0, got {dose_e_per_A2!r}")
    if model == "dose" and (dose is None or dose[:-1].sum() <= 0):
        raise ParameterError("`dose_e_per_A2` (> 0) is required for model='dose'")
    init = dict(init or {})

    # the readings are assessed where the scale is fitted (fixed: the caller's calibration)
    scan = None if gmm_states or not fit_scale else _scale_scan(obs, L)
    post = None
    if scan is not None:
        from perovstem.atoms.count import _scale_posterior

        # the readings of the counts (scale optima) weighed by the prior: P(offset) below
        cands = [(cc, nll * scan[1]) for cc, nll in scan[0]]
        post = _scale_posterior({"all": cands}, 0.03, prior_sd, prior_c)["all"]
    if "scale" in init or not fit_scale:
        c = float(init.get("scale", 1.0))
    elif prior_from != "default":
        # a calibration (scale_prior, fitted library): start at the most probable reading
        c = float(post[int(np.argmax(post[:, 2])), 0])
    else:
        c = _start_scale(obs, L, scan[0])
    sigma = float(init.get("width", (obs.max() - obs.min()) / (2 * K)))
    if not sigma > 0:
        sigma = max(float(np.std(obs)), 1e-12)
    pi = np.asarray(init.get("initial", np.full(K, 1.0 / K)), dtype=float)
    i, j = np.indices((K, K))
    allowed = np.ones((K, K), bool)
    if model == "loss":
        allowed &= j <= i
    if max_step is not None:
        allowed &= np.abs(i - j) <= int(max_step)
    A = np.asarray(init.get("transition", allowed / allowed.sum(1, keepdims=True)), dtype=float)
    A = np.where(allowed, A, 0.0)
    A /= A.sum(1, keepdims=True)
    D = None if dose is None else dose[:-1]
    lam = None
    if model == "dose":
        lam0 = init.get("loss_rate", 1.0 / D.sum())
        lam = np.broadcast_to(np.asarray(lam0, float), (N,)).copy()

    drop = (n_lib[:, None] - n_lib[None, :]).astype(float) if model == "dose" else None

    def trans_log() -> Any:
        if model == "dose":
            return PoissonLossTransitions(D[:, None] * lam[None, :], n_lib)  # (T-1, N) losses
        with np.errstate(divide="ignore"):
            return np.log(A)

    ll_old = -np.inf
    conv = False
    it = 0
    logA = trans_log()
    for it in range(1, max_iter + 1):  # noqa: B007
        logB = _log_emission(obs, c * L, sigma)
        with np.errstate(divide="ignore"):
            lpi = np.log(pi)
        gamma, xi_sum, exp_loss, ll_n = forward_backward(logB, lpi, logA, drop=drop)
        ll = float(ll_n.sum())
        if np.isfinite(ll_old) and abs((ll - ll_old) / ll) < tol:
            conv = True
            break
        ll_old = ll
        # M-step
        pi = gamma[0].sum(0)
        pi /= pi.sum()
        if model == "dose":
            if rate == "column":
                lam = exp_loss.sum(0) / D.sum()
            else:
                lam = np.full(N, exp_loss.sum() / (N * D.sum()))
        else:
            A = xi_sum / np.maximum(xi_sum.sum(1, keepdims=True), 1e-300)
            empty = xi_sum.sum(1) <= 1e-300
            if empty.any():
                A[empty] = (allowed / allowed.sum(1, keepdims=True))[empty]
        gl = gamma * L[None, None, :]
        if fit_scale:
            c = float(np.sum(gl * obs[:, :, None]) / np.sum(gl * L[None, None, :]))
        sigma = float(
            np.sqrt(np.sum(gamma * (obs[:, :, None] - c * L[None, None, :]) ** 2) / gamma.sum())
        )
        sigma = max(sigma, 1e-12 * float(np.ptp(L)))
        logA = trans_log()

    logB = _log_emission(obs, c * L, sigma)
    with np.errstate(divide="ignore"):
        lpi = np.log(pi)
    gamma, _, exp_loss, ll_n = forward_backward(logB, lpi, logA, drop=drop)
    path, _ = viterbi(logB, lpi, logA)
    counts = n_lib[path]
    m = gamma @ n_lib
    sd = np.sqrt(np.maximum(gamma @ (n_lib**2) - m**2, 0.0))
    rate_v = rate_e = rate_tot_e = None
    if dose is not None and D.sum() > 0:
        tot = D.sum()
        if model == "dose":
            loss = exp_loss.sum(0)
            rate_v = lam.copy()
        else:
            loss = m[0] - m[-1]
            rate_v = loss / tot
        # Poisson-process uncertainty of the rate plus the posterior count uncertainty
        var = np.maximum(loss, 0.0) + sd[0] ** 2 + sd[-1] ** 2
        if model == "dose" and rate == "shared":
            var = np.full(N, (np.maximum(loss, 0).sum() + np.sum(sd[0] ** 2 + sd[-1] ** 2)) / N**2)
        rate_e = np.sqrt(var) / tot
        # the sum over columns: independent column rates add in quadrature; a shared rate's
        # error is one error for all columns (N x the per-column error, not sqrt(N) x)
        var_tot = np.maximum(loss, 0.0).sum() + np.sum(sd[0] ** 2 + sd[-1] ** 2)
        rate_tot_e = float(np.sqrt(var_tot) / tot)
    off: dict[str, Any] = {"offset_probability": None, "offset_ambiguous": None}
    prior = None
    if post is not None:
        # every count read one atom up or down (another scale optimum): P(d) of the whole
        # series as count_atoms gives it.  The posterior moments stay the HMM's: a common
        # offset cancels in the losses, whose errors they give
        from perovstem.atoms.count import _offset_mixture, _warn_offset

        flat = np.zeros(counts.size)
        off, p0, _, _ = _offset_mixture(post, obs.ravel(), (n_lib, L), counts.ravel(), flat, flat)
        prior = {"center": prior_c, "log_sd": prior_sd, "source": prior_from}
        if off["offset_ambiguous"]:
            _warn_offset(
                {"all columns": p0},
                "fit_hmm",
                "HMMResult.offset_probability",
                std="n_atoms_std does not include it (it cancels in the atoms lost)",
            )
    return HMMResult(
        n_atoms=counts,
        n_atoms_mean=m,
        n_atoms_std=sd,
        posterior=gamma,
        states=n_lib.copy(),
        library=L.copy(),
        transition=None if model == "dose" else A,
        initial=pi,
        scale=c,
        width=sigma,
        loss_rate=rate_v,
        loss_rate_err=rate_e,
        loglik=float(ll_n.sum()),
        n_iter=it,
        converged=conv,
        model=model,
        loss_rate_total_err=rate_tot_e,
        offset_probability=off["offset_probability"],
        offset_ambiguous=off["offset_ambiguous"],
        scale_prior=prior,
    )
