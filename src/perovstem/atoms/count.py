"""Statistical atom counting: Gaussian mixtures of cross-sections and the ICL criterion.

The scattering cross-sections (SCS) of the columns of one type are modelled as a mixture of
``k`` Gaussians with one shared width, as in StatSTEM (Van Aert et al., PRB 87 (2013) 064107;
De Backer et al., Ultramicroscopy 134 (2013) 23; De Backer et al., Ultramicroscopy 171 (2016)
104).  Component ``j`` (means sorted) is the column with ``first_count + j`` atoms.

Model-order selection uses the integrated classification likelihood (Biernacki et al., IEEE
TPAMI 22 (2000) 719) in StatSTEM's form

    ICL(k) = 2 NLL_k + 2 EN_k + p_k ln N,     EN_k = -sum_ij tau_ij ln tau_ij,

with ``p_k = 2k`` free parameters (k means, k-1 proportions, one width), so that the stored
StatSTEM curves are reproduced.  StatSTEM leaves the choice among ICL local minima to the user;
:func:`select_components` makes it automatic with a documented rule (the most *prominent*
interior local minimum, see there).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from perovstem._validation import refuse_text_numbers
from perovstem.errors import DataError, ParameterError

__all__ = [
    "GMMFit",
    "GMMSweep",
    "fit_gmm",
    "gmm_sweep",
    "select_components",
    "count_atoms",
    "single_atom_sensitivity",
    "ladder_check",
]

_LOG2PI = np.log(2.0 * np.pi)


# --------------------------------------------------------------------------- validation
def _as_scs(scs: Any, name: str = "scs") -> np.ndarray:
    """Return a 1-D float64 copy of ``scs`` after checking emptiness, finiteness and sign."""
    try:
        a = np.asarray(scs, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise DataError(f"`{name}` must be numeric, got {type(scs).__name__}") from None
    if a.size == 0:
        raise DataError(f"`{name}` is empty: no cross-sections to count")
    bad = ~np.isfinite(a)
    if bad.any():
        raise DataError(f"`{name}` contains {int(bad.sum())} non-finite value(s) out of {a.size}")
    if (a < 0).any():
        i = int(np.argmin(a))
        raise DataError(
            f"`{name}` must be >= 0 (cross-sections are positive); "
            f"{int((a < 0).sum())} negative value(s), e.g. {name}[{i}] = {a[i]:g}"
        )
    return a.copy()


def _check_k(name: str, k: Any, n: int) -> int:
    try:
        kk = int(k)
    except (TypeError, ValueError):
        raise ParameterError(f"`{name}` must be an integer, got {k!r}") from None
    if kk != k or kk < 1:
        raise ParameterError(f"`{name}` must be an integer >= 1, got {k!r}")
    if n < 2 * kk:
        raise ParameterError(
            f"too few columns for `{name}` = {kk} components: {n} column(s) given, need at "
            f"least {2 * kk} (two per component); lower `{name}`"
        )
    return kk


# --------------------------------------------------------------------------- results
class _PosteriorMixin:
    """``posterior`` and ``classify`` from a ``log_posterior(scs) -> (N, k)`` method (the
    GMM here and the ladder mixture of :mod:`.ladder`)."""

    def posterior(self, scs: Any) -> np.ndarray:
        """Posterior component probabilities, shape (N, k)."""
        return np.exp(self.log_posterior(scs))  # type: ignore[attr-defined]

    def classify(self, scs: Any) -> np.ndarray:
        """Index of the most probable component for each SCS, shape (N,)."""
        return np.argmax(self.log_posterior(scs), axis=1)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class GMMFit(_PosteriorMixin):
    """One fitted equal-width Gaussian mixture.

    Attributes
    ----------
    n_components : int
    means : ndarray, shape (k,)
        Component locations, sorted ascending (same unit as the SCS).
    width : float
        Shared standard deviation of all components.
    proportions : ndarray, shape (k,)
    nll : float
        Negative log-likelihood at the optimum.
    entropy : float
        Posterior classification entropy ``EN = -sum tau ln tau``.
    n_iter : int
    converged : bool
    equal_spacing : bool
    n_columns : int
    ladder_degree : int
        0 for free means, ``d >= 1`` when the means follow a polynomial of degree ``d`` in the
        component index (1 = equally spaced; see :func:`fit_gmm`).
    """

    n_components: int
    means: np.ndarray
    width: float
    proportions: np.ndarray
    nll: float
    entropy: float
    n_iter: int
    converged: bool
    equal_spacing: bool
    n_columns: int
    ladder_degree: int = 0

    @property
    def n_params(self) -> int:
        """Free parameters: means (k, or d+1 for a ladder of degree d), k-1 proportions, one
        width."""
        k = self.n_components
        deg = self.ladder_degree or (1 if self.equal_spacing else 0)
        n_mean = min(k, deg + 1) if deg else k
        return n_mean + (k - 1) + 1

    @property
    def icl(self) -> float:
        """Integrated classification likelihood, StatSTEM's ``2NLL + 2EN + 2k ln N``."""
        return 2 * self.nll + 2 * self.entropy + self._pen_icl

    @property
    def _pen_icl(self) -> float:
        # StatSTEM uses 2k ln N for the free-mean model; keep p ln N in general (p = 2k there).
        return self.n_params * np.log(self.n_columns)

    @property
    def bic(self) -> float:
        """Bayesian information criterion ``2NLL + p ln N``."""
        return 2 * self.nll + self.n_params * np.log(self.n_columns)

    @property
    def aic(self) -> float:
        """Akaike information criterion ``2NLL + 2p``."""
        return 2 * self.nll + 2 * self.n_params

    def log_posterior(self, scs: Any) -> np.ndarray:
        """Log posterior class probabilities, shape (N, k), for cross-sections ``scs``."""
        x = _as_scs(scs)
        lp = _log_joint(
            x[None, :], self.means[None, :], np.array([self.width]), self.proportions[None, :]
        )[0]
        return lp - _logsumexp(lp, axis=-1)[:, None]


@dataclass(frozen=True)
class GMMSweep:
    """Mixtures fitted for ``k = min_components ... max_components`` and their criteria.

    Attributes
    ----------
    fits : list of GMMFit
    table : DataFrame
        One row per ``k``: ``n_components, nll, entropy, icl, bic, aic, converged``.
    criterion : str
        The criterion used for the automatic choice (``"icl"``, ``"bic"`` or ``"aic"``).
    local_minima : list of int
        Interior local minima of the criterion curve (component numbers).
    prominences : dict
        Prominence of each local minimum (criterion units).
    selected : int
        Automatically selected component number (see :func:`select_components`).
    rule : str
        Human-readable statement of the rule that chose ``selected``.
    single_level_test : dict or None
        The one-level test of :func:`gmm_sweep` (``test`` "spread" or "shapiro-wilk", its
        statistic, ``rejected`` (one level rejected), ``levels`` (the k it chose, None when
        the rule's stands), ``reason``, ``interior_choice`` (the rule's k),
        ``criterion_above_k1``; the spread test, when passed, also ``resolved`` (the k of
        the fits with resolved levels), ``rms_error`` and ``min_gap_errors``), or None when
        it did not run (``rule="global"``, ``single_level=False``, no ``scs_err`` and no
        ``single_level_alpha``, or no ``scs_err`` and the rule chose k = 1).
    """

    fits: list[GMMFit]
    table: pd.DataFrame
    criterion: str
    local_minima: list[int]
    prominences: dict[int, float]
    selected: int
    rule: str = field(default="")
    single_level_test: dict[str, Any] | None = None

    def fit(self, k: int) -> GMMFit:
        """The fit with ``k`` components."""
        for f in self.fits:
            if f.n_components == k:
                return f
        ks = [f.n_components for f in self.fits]
        raise ParameterError(f"`n_components` = {k!r} was not fitted; available {ks[0]}..{ks[-1]}")


# --------------------------------------------------------------------------- EM core
def _logsumexp(a: np.ndarray, axis: int = -1) -> np.ndarray:
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return (np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True)) + m).squeeze(axis)


def _log_joint(x: np.ndarray, mu: np.ndarray, sigma: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """log(pi_j N(x_i; mu_j, sigma)), x (C,N) or (1,N), mu (C,k), sigma (C,), pi (C,k) -> (C,N,k)."""
    s = sigma[:, None, None]
    z = (x[:, :, None] - mu[:, None, :]) / s
    with np.errstate(divide="ignore"):
        lpi = np.log(pi)[:, None, :]
    return lpi - 0.5 * z * z - np.log(s) - 0.5 * _LOG2PI


class _Data:
    """Standardised (and, for large N, histogram-compressed) data for the EM kernels."""

    def __init__(self, x: np.ndarray, *, bin_above: int, n_bins: int) -> None:
        self.x = x
        self.loc = float(np.mean(x))
        sd = float(np.std(x))
        self.scale = sd if sd > 0 else max(abs(self.loc), 1.0)
        z = (x - self.loc) / self.scale
        self.binned = x.size > bin_above
        if self.binned:
            # compress to bin means (not centres): exact sufficient statistics within a bin
            edges = np.linspace(z.min(), z.max(), n_bins + 1)
            b = np.clip(np.searchsorted(edges, z, side="right") - 1, 0, n_bins - 1)
            cnt = np.bincount(b, minlength=n_bins).astype(float)
            sm = np.bincount(b, weights=z, minlength=n_bins)
            keep = cnt > 0
            self.z = sm[keep] / cnt[keep]
            self.w = cnt[keep]
        else:
            self.z = z
            self.w = np.ones_like(z)

    def em(self, mu, sigma, pi, *, degree, max_iter, tol, min_sigma):
        """EM on standardised data; mu (C,k) and sigma (C,) in data units in and out."""
        from perovstem.atoms._gmm_numba import em_batch

        mu_z = np.ascontiguousarray((np.asarray(mu, float) - self.loc) / self.scale)
        s_z = np.ascontiguousarray(np.asarray(sigma, float) / self.scale)
        m, s, p, nll, it, conv = em_batch(
            self.z,
            self.w,
            mu_z,
            s_z,
            np.ascontiguousarray(np.asarray(pi, float)),
            int(degree),
            int(max_iter),
            float(tol),
            float(min_sigma / self.scale),
            float(self.w.sum() * np.log(self.scale)),
        )
        nll = nll + self.w.sum() * np.log(self.scale)
        return m * self.scale + self.loc, s * self.scale, p, nll, it, conv


def _nll_entropy(
    x: np.ndarray, mu: np.ndarray, sigma: float, pi: np.ndarray
) -> tuple[float, float]:
    """Exact NLL and posterior entropy of one mixture on the full data."""
    lj = _log_joint(x[None, :], mu[None, :], np.array([sigma]), pi[None, :])[0]
    lse = _logsumexp(lj, axis=-1)
    lt = lj - lse[:, None]
    fin = np.isfinite(lt)
    ent = -float(np.sum(np.exp(lt[fin]) * lt[fin]))
    return float(-lse.sum()), ent


def _make_fit(x, mu, sigma, pi, n_iter, converged, degree) -> GMMFit:
    order = np.argsort(mu)
    nll, ent = _nll_entropy(x, mu[order], float(sigma), pi[order])
    return GMMFit(
        n_components=int(mu.size),
        means=np.asarray(mu[order], dtype=float),
        width=float(sigma),
        proportions=np.asarray(pi[order], dtype=float),
        nll=float(nll),
        entropy=float(ent),
        n_iter=int(n_iter),
        converged=bool(converged),
        equal_spacing=degree == 1,
        n_columns=int(x.size),
        ladder_degree=int(degree),
    )


def _starts_from(prev: GMMFit | None, x: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """StatSTEM-like deterministic starts for ``k`` components.

    ``k = 1``: mean at the centre of the data range, width half the range.  ``k > 1``: one start
    per gap of the sorted ``k-1`` solution (the new mean halfway into the gap, the data extremes
    closing the outer gaps), proportions equal, width of the previous solution.
    """
    lo, hi = float(x.min()), float(x.max())
    rng_ = max(hi - lo, np.finfo(float).eps * max(abs(hi), 1.0))
    if k == 1 or prev is None:
        if k == 1:
            return np.array([[lo + rng_ / 2]]), np.array([rng_ / 2]), np.ones((1, 1))
        mu = np.linspace(lo, hi, k + 2)[1:-1][None, :]
        return mu, np.array([rng_ / (2 * k)]), np.full((1, k), 1.0 / k)
    m = np.sort(prev.means)
    edges = np.concatenate([[lo], m, [hi]])
    cand = []
    for g in range(k):
        new = 0.5 * (edges[g] + edges[g + 1])
        cand.append(np.sort(np.concatenate([m, [new]])))
    mu = np.array(cand)
    sigma = np.full(k, prev.width)
    pi = np.full((k, k), 1.0 / k)
    return mu, sigma, pi


def _with_ladder_starts(x, k, mu0, s0, p0):
    """Add evenly spaced starts between data quantiles (a ladder's natural guesses)."""
    q = [(0.0, 1.0), (0.01, 0.99), (0.03, 0.97)]
    lad = np.array([np.linspace(*np.quantile(x, ab), k) for ab in q])
    step = np.array([(m[-1] - m[0]) / (k - 1) for m in lad])
    mu = np.concatenate([mu0, lad])
    sg = np.concatenate([s0, np.maximum(step / 3, s0.min())])
    pi = np.concatenate([p0, np.full((len(q), k), 1.0 / k)])
    return mu, sg, pi


def fit_gmm(
    scs: Any,
    n_components: int,
    *,
    equal_spacing: bool = False,
    ladder_degree: int = 0,
    init_means: Any = None,
    max_iter: int = 1000,
    tol: float = 1e-8,
    bin_above: int = 4096,
    n_bins: int = 2048,
) -> GMMFit:
    """Fit one equal-width Gaussian mixture to cross-sections by EM.

    Parameters
    ----------
    scs : array_like, shape (N,)
        Scattering cross-sections of the columns (any unit, e.g. Å² or counts·Å²), all >= 0.
    n_components : int
        Number of components ``k``; needs ``N >= 2k``.
    equal_spacing : bool
        Constrain the means to ``mu_j = a + b j`` (one atom adds a constant SCS); the same as
        ``ladder_degree=1``.
    ladder_degree : int
        0 (default): free means.  ``d >= 1``: a *ladder* mixture, the means follow a
        polynomial of degree ``d`` in the component index, ``mu_j = sum_p b_p (j/(k-1))^p``
        (a smooth SCS(n) curve: channelling bends it, De Backer et al., Ultramicroscopy 134
        (2013) 23), fitted by EM with a weighted least-squares M-step.  Components may
        be empty (a count absent from the particle).
    init_means : array_like, shape (k,), optional
        Starting means; default is evenly spaced quantiles of the data.
    max_iter, tol : int, float
        EM stops after ``max_iter`` iterations or when the relative NLL change is below ``tol``.
    bin_above, n_bins : int
        For more than ``bin_above`` columns the EM runs on ``n_bins`` histogram bins (each
        represented by the mean of its values, weighted by its count); NLL, entropy and
        posteriors are then evaluated on the exact data.  The bin width is ~1/500 of the data
        standard deviation, far below any useful component width.

    Returns
    -------
    GMMFit
    """
    refuse_text_numbers(locals())
    x = _as_scs(scs)
    k = _check_k("n_components", n_components, x.size)
    degree = _check_degree(equal_spacing, ladder_degree)
    if init_means is None:
        mu0 = np.quantile(x, (np.arange(k) + 0.5) / k)[None, :]
    else:
        mu0 = np.sort(np.asarray(init_means, dtype=float).ravel())[None, :]
        if mu0.size != k:
            raise ParameterError(f"`init_means` must have {k} values, got {mu0.size}")
    spread = np.std(x) if k == 1 else max(np.min(np.diff(mu0[0])) / 2, np.std(x) / (2 * k))
    sigma0 = np.array([spread if spread > 0 else 1.0])
    pi0 = np.full((1, k), 1.0 / k)
    data = _Data(x, bin_above=bin_above, n_bins=n_bins)
    mu, sg, pi, _, it, cv = data.em(
        mu0,
        sigma0,
        pi0,
        degree=degree,
        max_iter=max_iter,
        tol=tol,
        min_sigma=_min_sigma(x),
    )
    return _make_fit(x, mu[0], sg[0], pi[0], it[0], cv[0], degree)


def _check_degree(equal_spacing: bool, ladder_degree: Any) -> int:
    """The polynomial degree of the component means (0 = free means)."""
    if isinstance(ladder_degree, bool) or not isinstance(ladder_degree, (int, np.integer)):
        raise ParameterError(f"`ladder_degree` must be an integer 0-3, got {ladder_degree!r}")
    if not 0 <= ladder_degree <= 3:
        raise ParameterError(f"`ladder_degree` must be an integer 0-3, got {ladder_degree!r}")
    if equal_spacing and ladder_degree not in (0, 1):
        raise ParameterError(
            f"`equal_spacing=True` is `ladder_degree=1`; got `ladder_degree` = {ladder_degree}"
        )
    return 1 if equal_spacing else int(ladder_degree)


def _min_sigma(x: np.ndarray) -> float:
    scale = float(np.ptp(x)) if x.size > 1 else 0.0
    scale = scale if scale > 0 else max(abs(float(x[0])), 1.0)
    return 1e-6 * scale


# --------------------------------------------------------------------------- selection
def select_components(
    values: Any,
    components: Any = None,
    *,
    rule: str = "prominence",
) -> tuple[int, list[int], dict[int, float], str]:
    """Choose the number of components from a criterion curve (ICL, BIC or AIC).

    Rules
    -----
    ``"prominence"`` (default)
        Among the *interior* local minima of the curve (``C(k) < C(k-1)`` and ``C(k) <= C(k+1)``;
        ``k = 1`` and the last ``k`` never count, since the curve is only sampled up to there),
        take the one with the largest topographic prominence: the height the curve must climb,
        on the lower of its two sides, before it reaches a lower value (or the end of the
        curve).  This picks the deepest, best-supported "valley" and ignores small wiggles.
        If there is no interior minimum, the global minimum is returned.
    ``"first"``
        The first interior local minimum whose prominence is at least 2 (a likelihood-ratio
        of e on the ICL scale) - the classic "first clear minimum".
    ``"global"``
        The global minimum of the curve.

    Returns
    -------
    selected : int
    local_minima : list of int
        All interior local minima (component numbers).
    prominences : dict
        ``{k: prominence}`` for each local minimum.
    rule_text : str
        The rule that was applied, in words (store it with the result).
    """
    refuse_text_numbers(locals())
    c = np.asarray(values, dtype=float).ravel()
    ks = np.arange(1, c.size + 1) if components is None else np.asarray(components).ravel()
    if c.size == 0:
        raise DataError("`values` (criterion curve) is empty")
    if rule not in ("prominence", "first", "global"):
        raise ParameterError(
            f"`rule` must be one of ['first', 'global', 'prominence'], got {rule!r}"
        )
    mins: list[int] = []
    prom: dict[int, float] = {}
    for i in range(1, c.size - 1):
        if c[i] < c[i - 1] and c[i] <= c[i + 1]:
            # left: climb until a strictly lower value or the start
            left = c[:i][::-1]
            lower = np.flatnonzero(left < c[i])
            lmax = left[: lower[0]].max() if lower.size else left.max()
            right = c[i + 1 :]
            lower = np.flatnonzero(right < c[i])
            rmax = right[: lower[0]].max() if lower.size else right.max()
            k = int(ks[i])
            mins.append(k)
            prom[k] = float(min(lmax, rmax) - c[i])
    if rule == "global" or not mins:
        sel = int(ks[int(np.argmin(c))])
        text = "global minimum of the criterion" + ("" if mins else " (no interior local minimum)")
        return sel, mins, prom, text
    if rule == "first":
        deep = [k for k in mins if prom[k] >= 2.0]
        sel = deep[0] if deep else max(mins, key=lambda k: prom[k])
        return sel, mins, prom, "first interior local minimum with prominence >= 2"
    sel = max(mins, key=lambda k: prom[k])
    return sel, mins, prom, "interior local minimum of largest prominence"


# --------------------------------------------------------------------------- sweep
def gmm_sweep(
    scs: Any,
    *,
    max_components: int = 30,
    min_components: int = 1,
    equal_spacing: bool = False,
    ladder_degree: int = 0,
    criterion: str = "icl",
    rule: str = "prominence",
    max_iter: int = 1000,
    tol: float = 1e-8,
    burn_in: int = 10,
    n_keep: int = 2,
    exhaustive_below: int = 200_000,
    bin_above: int = 4096,
    n_bins: int = 2048,
    single_level: bool = True,
    scs_err: Any = None,
    single_level_alpha: float | None = None,
) -> GMMSweep:
    """Fit equal-width mixtures for ``k = min_components ... max_components`` and select ``k``.

    Starts follow StatSTEM's deterministic scheme (one candidate per gap of the ``k-1``
    solution).  All candidates are iterated together (vectorised).  When
    ``N * k * n_candidates`` exceeds ``exhaustive_below``, all candidates run ``burn_in`` EM
    iterations and only the ``n_keep`` best continue to convergence (a documented shortcut
    that leaves the selected optimum unchanged in our tests); otherwise every candidate is
    converged, as StatSTEM does.

    Parameters
    ----------
    scs : array_like, shape (N,)
        Cross-sections of one column type (>= 0).
    max_components, min_components : int
        Range of ``k``; ``N >= 2 * max_components`` is required.
    equal_spacing : bool
        Equally spaced means (see :func:`fit_gmm`).
    ladder_degree : int
        Means on a polynomial of this degree in the component index (see :func:`fit_gmm`);
        a ladder also starts from evenly spaced means between data quantiles.
    criterion : {"icl", "bic", "aic"}
    rule : str
        Selection rule, see :func:`select_components`.
    max_iter, tol : int, float
        EM stopping rule per fit (relative NLL change, as ``fitgmdist``'s TolFun).
    single_level : bool
        One count level or several?  The rules skip ``k = 1`` (ICL's entropy term makes it
        the global minimum of most curves with overlapping levels: StatSTEM's Pb example
        has ICL(1) 128 below its k = 11), so on a crystal of one thickness they split one
        Gaussian into 2-17 components.  When ``scs_err`` is given and the variance of the
        SCS is at most twice the mean squared ``scs_err`` (an equal mixture of levels far
        enough apart to be separable, ``> 2 sigma``, would make it larger; Robertson &
        Fryer 1969), the rule's k is replaced by that of the lowest-BIC fit whose
        components are all resolved levels (means more than 2 rms errors apart, at least 5
        columns each; more levels need a BIC lower by 6): 1 for one thickness, 2 for one
        thickness and a resolved minority level (surface steps).  False: the rule alone.
        Not used with ``rule="global"``.  See :mod:`perovstem.atoms._one_level` and
        docs/counting.md.
    scs_err : array_like, shape (N,), optional
        Standard errors of the cross-sections (e.g. ``scs_err`` of
        :func:`perovstem.atoms.fit_columns`, Cramér-Rao bounds), for that test.  Without
        them the rule alone decides (unless ``single_level_alpha`` is given).
    single_level_alpha : float, optional
        Without ``scs_err``: take ``k = 1`` when the criterion is lower there than at the
        rule's choice and the Shapiro-Wilk test (Shapiro & Wilk 1965) does not reject one
        Gaussian at this level.  Off by default: it has little power on a few columns
        spread over many levels and took such sets to k = 1 (ladder bench: 27 + 22 runs;
        roofed nanocrystals: 6 of 24 type-runs; docs/counting.md).

    Returns
    -------
    GMMSweep
        ``single_level_test`` holds the test's result when it ran.
    """
    refuse_text_numbers(locals())
    x = _as_scs(scs)
    degree = _check_degree(equal_spacing, ladder_degree)
    kmax = _check_k("max_components", max_components, x.size)
    kmin = _check_k("min_components", min_components, x.size)
    if kmin > kmax:
        raise ParameterError(f"`min_components` = {kmin} must be <= `max_components` = {kmax}")
    if criterion not in ("icl", "bic", "aic"):
        raise ParameterError(f"`criterion` must be one of ['aic', 'bic', 'icl'], got {criterion!r}")
    if scs_err is not None:
        try:
            scs_err = np.asarray(scs_err, dtype=float).ravel()
        except (TypeError, ValueError):
            raise DataError(f"`scs_err` must be numeric, got {type(scs_err).__name__}") from None
        if scs_err.size != x.size:
            raise DataError(
                f"`scs_err` has {scs_err.size} values but `scs` has {x.size}: one error per "
                "cross-section"
            )
    if not isinstance(single_level, (bool, np.bool_)):
        raise ParameterError(f"`single_level` must be True or False, got {single_level!r}")
    if single_level_alpha is not None and not (
        isinstance(single_level_alpha, (int, float)) and 0 < single_level_alpha < 1
    ):
        raise ParameterError(
            f"`single_level_alpha` must be None or a number in (0, 1), got {single_level_alpha!r}"
        )
    sweep_kw = dict(
        degree=degree,
        max_iter=max_iter,
        tol=tol,
        burn_in=burn_in,
        n_keep=n_keep,
        exhaustive_below=exhaustive_below,
        bin_above=bin_above,
        n_bins=n_bins,
    )
    fits = _sweep_fits(x, kmax, kmin=kmin, **sweep_kw)
    table = pd.DataFrame(
        {
            "n_components": [f.n_components for f in fits],
            "nll": [f.nll for f in fits],
            "entropy": [f.entropy for f in fits],
            "icl": [f.icl for f in fits],
            "bic": [f.bic for f in fits],
            "aic": [f.aic for f in fits],
            "width": [f.width for f in fits],
            "n_iter": [f.n_iter for f in fits],
            "converged": [f.converged for f in fits],
        }
    )
    curve = table[criterion].to_numpy()
    sel, mins, prom, text = select_components(curve, table["n_components"].to_numpy(), rule=rule)
    test = None
    if single_level and rule != "global" and kmin == 1 and (sel > 1 or scs_err is not None):
        test = _single_level(x, scs_err, curve, sel, single_level_alpha, fits)
        if test is not None and test["levels"] is not None and test["levels"] != sel:
            text = f"k = {test['levels']} instead of k = {sel} ({text}): {test['reason']}"
            sel = test["levels"]
    table.attrs.update(
        {"criterion": criterion, "selected": sel, "local_minima": mins, "rule": text}
    )
    return GMMSweep(fits, table, criterion, mins, prom, sel, f"{criterion.upper()}: {text}", test)


def _single_level(
    x: np.ndarray,
    scs_err: Any,
    curve: np.ndarray,
    sel: int,
    alpha: float | None,
    fits: list[GMMFit],
) -> dict[str, Any] | None:
    """How many count levels may ``x`` hold, whatever the rule's ``sel``?

    With usable ``scs_err``: the spread test of :mod:`._one_level` (variance at most twice
    the columns' mean squared error), whatever the curve; when it passes, the levels are
    those of the lowest-BIC fit whose components are all resolved (more than 2 rms errors
    apart, at least 5 columns each; more levels need a BIC lower by 6;
    :func:`._one_level.resolved_choice`), 1 when no other is.  Otherwise, when ``alpha``
    is given, ``sel > 1`` and the criterion is lower at ``k = 1`` than at ``sel``: the
    Shapiro-Wilk test.  Returns the test's dict (``levels``:
    the k to take, or None when the rule's ``sel`` stands; ``rejected``: one level
    rejected; ``reason``) or None (no test).
    """
    from perovstem.atoms._one_level import one_gaussian_test, resolved_choice, spread_test

    test = None if scs_err is None else spread_test(x, scs_err)
    if test is not None:
        test["levels"] = None
        test["reason"] = (
            f"the SCS variance is {test['variance_ratio']:.3g}x the columns' mean squared "
            f"error (<= {test['limit']:g}: no two separable levels)"
        )
        if not test["rejected"]:
            # the spread bound is an equal-mixture argument: a minority level (a few %
            # of the columns, e.g. surface steps) well apart from the main one adds little
            # variance.  Levels no narrower than the errors decide (resolved_choice).
            res = resolved_choice(fits, scs_err)
            test.update(res)
            test["rejected"] = res["levels"] > 1
            if res["levels"] > 1:
                test["reason"] = (
                    f"the SCS variance is {test['variance_ratio']:.3g}x the columns' mean "
                    f"squared error (<= {test['limit']:g}), and the fit of resolved levels "
                    f"(> 2 rms errors apart, >= 5 columns each) of lowest BIC (by > 6 over "
                    f"fewer levels) has {res['levels']}"
                )
    elif alpha is not None and sel > 1 and curve[0] < curve[sel - 1]:
        test = one_gaussian_test(x, alpha=alpha)
        test["levels"] = None if test["rejected"] else 1
        test["reason"] = (
            f"the criterion is {curve[sel - 1] - curve[0]:.3g} lower at k = 1 and one "
            f"Gaussian is not rejected (Shapiro-Wilk p = {test['p_value']:.3g} >= {alpha:g})"
        )
    if test is not None:
        test["interior_choice"] = int(sel)
        test["criterion_above_k1"] = float(curve[sel - 1] - curve[0])
    return test


def _sweep_fits(
    x: np.ndarray,
    kmax: int,
    *,
    kmin: int = 1,
    degree: int,
    max_iter: int,
    tol: float,
    burn_in: int,
    n_keep: int,
    exhaustive_below: int,
    bin_above: int,
    n_bins: int,
) -> list[GMMFit]:
    """The best fit for each ``k = kmin ... kmax`` from StatSTEM's deterministic starts (the
    EM part of :func:`gmm_sweep`, without its input checks)."""
    data = _Data(x, bin_above=bin_above, n_bins=n_bins)
    fits: list[GMMFit] = []
    prev: GMMFit | None = None
    kw = dict(degree=degree, tol=tol, min_sigma=_min_sigma(x))
    for k in range(1, kmax + 1):
        mu0, s0, p0 = _starts_from(prev, x, k)
        if degree >= 2 and k > degree + 1:
            mu0, s0, p0 = _with_ladder_starts(x, k, mu0, s0, p0)
        C = mu0.shape[0]
        if C > n_keep and data.z.size * k * C > exhaustive_below:
            mu0, s0, p0, nll, _, _ = data.em(mu0, s0, p0, max_iter=burn_in, **kw)
            best = np.argsort(nll)[:n_keep]
            mu0, s0, p0 = mu0[best], s0[best], p0[best]
        mu, sg, pi, nll, it, cv = data.em(mu0, s0, p0, max_iter=max_iter, **kw)
        b = int(np.nanargmin(nll))
        prev = _make_fit(x, mu[b], sg[b], pi[b], it[b], cv[b], degree)
        if k >= kmin:
            fits.append(prev)
    return fits


# --------------------------------------------------------------------------- counting
def single_atom_sensitivity(fit: GMMFit) -> float:
    """Expected fraction of columns counted exactly, from the overlap of the fitted components.

    For each component the probability mass falling inside its own decision interval (between
    the Bayes boundaries with its neighbours) is integrated, weighted by the proportions (the
    quantity StatSTEM reports as "single-atom sensitivity").
    """
    refuse_text_numbers(locals())
    from scipy.stats import norm

    mu, s, p = fit.means, fit.width, fit.proportions
    if mu.size == 1:
        return 1.0
    # Bayes boundary between neighbours j, j+1 with equal widths
    d = np.diff(mu)
    b = (mu[:-1] + mu[1:]) / 2 + s * s * np.log(p[:-1] / p[1:]) / np.where(d > 0, d, np.inf)
    lo = np.concatenate([[-np.inf], b])
    hi = np.concatenate([b, [np.inf]])
    inside = norm.cdf((hi - mu) / s) - norm.cdf((lo - mu) / s)
    return float(np.sum(p * inside))


def ladder_check(
    fit: GMMFit,
    *,
    first_count: int = 1,
    max_overlap: float = 0.25,
    min_first_ratio: float = 0.45,
    max_first_ratio: float = 1.2,
    max_gap: float = 1.8,
) -> dict[str, Any]:
    """Check that the component means of a count mixture form an SCS ladder.

    Component ``j`` is read as ``first_count + j`` atoms; that holds only if every component
    is one count level.  ICL merges neighbouring levels when they overlap or hold few
    columns (Pt/Ir particle of StatSTEM: 140 columns of 1-20 atoms, 4 components).  The
    means of a merged fit still look like a ladder, but three things give it away
    (``d`` = the median increment between consecutive means):

    * **overlap** ``width / d > max_overlap``: a component holding ``m >= 2`` levels ``s``
      apart has ``width^2 >= (m^2 - 1) s^2 / 12`` and ``d = m s``, so ``width / d >= 0.25``
      whatever the noise; a mixture this wide cannot be told from a merged one.
    * **first level** ``r = mu_0 / (first_count d)``, the SCS per atom of the lowest
      component against the step of the ladder: one atom gives 0.6-1 of the step (the first
      atoms of a column channel less; Pb 0.64 in the fast model, 0.71 in StatSTEM's Pt/Ir
      library).  ``r < min_first_ratio``: the steps above are several atoms (levels merged
      above the thinnest ones, which are resolved first as their SCS noise is smallest).
      ``r > max_first_ratio``: the lowest component holds more than ``first_count`` atoms
      (the thinnest columns are absent or merged), every count is offset.  One atom is at
      most one step (a linear ladder through zero); two atoms read as one give 1.14-1.41
      in the abTEM table (Pb 1.34, Br of 30 cells 1.14) and 2 for a linear ladder, hence
      1.2 (it was 1.6, which let a Pb ladder starting at two atoms pass, every count one
      low).
    * **gap**: an increment over ``max_gap`` times the median of its neighbours (two on each
      side): a count level is missing between these components (merged into one of them,
      or absent from the particle).

    Thresholds were set on simulated images (fast model, Pb columns of 1-10/20/30 atoms,
    40-300 columns, 2e3-5e4 e/Å², tune seeds) and checked on held-out seeds; see
    ``docs/counting.md``.  A library (``count_atoms(..., library=...)``) fixes the counts
    independently of this check.

    Parameters
    ----------
    fit : GMMFit
        The mixture whose components are read as consecutive counts.
    first_count : int
        Atoms of the lowest component (0: the first-level check is skipped).
    max_overlap, min_first_ratio, max_first_ratio, max_gap : float
        Thresholds of the three checks.

    Returns
    -------
    dict
        ``ok`` (bool), ``overlap`` (width / d), ``first_ratio`` (r), ``gap_ratios`` (per
        increment), ``suspect`` (list of ``(j, j + 1)`` component pairs with a gap),
        ``messages`` (list of str, empty when ``ok``).
    """
    refuse_text_numbers(locals())
    _check_int_ge("first_count", first_count, 0)
    mu, k = np.asarray(fit.means, float), fit.n_components
    out: dict[str, Any] = {
        "ok": True,
        "overlap": None,
        "first_ratio": None,
        "gap_ratios": [],
        "suspect": [],
        "messages": [],
    }
    if k < 2:
        return out
    d = np.diff(mu)
    dm = float(np.median(d))
    if not dm > 0:
        return out
    ov = float(fit.width / dm)
    # first_count = 0 (a vacuum component): no SCS per atom to compare with
    r = float(mu[0] / (first_count * dm)) if first_count > 0 else None
    out["overlap"], out["first_ratio"] = ov, r
    msgs = []
    if ov > max_overlap:
        msgs.append(
            f"the components overlap (width / step = {ov:.2f} > {max_overlap:g}): a mixture this "
            "wide cannot be told from one whose components each hold two or more count levels"
        )
    if first_count == 0:
        pass
    elif r < min_first_ratio:
        msgs.append(
            f"the step between components ({dm:.4g}) is {1 / r:.1f}x the SCS per atom of the "
            f"lowest component ({mu[0] / first_count:.4g}): components above it likely hold "
            "several count levels"
        )
    elif r > max_first_ratio:
        msgs.append(
            f"the lowest component ({mu[0]:.4g}) is {r:.1f}x the step between components for "
            f"first_count = {first_count}: it likely holds more atoms (thinnest columns absent "
            "or merged); all counts would be offset"
        )
    if k >= 3:
        ratios = []
        for j in range(k - 1):
            nb = np.concatenate([d[max(0, j - 2) : j], d[j + 1 : j + 3]])
            m = float(np.median(nb))
            # neighbours that coincide (two components with one mean): no step to compare
            # with, an increment there is a gap (inf), none is not (NaN)
            ratios.append(float(d[j] / m) if m > 0 else (np.inf if d[j] > 0 else np.nan))
        out["gap_ratios"] = ratios
        sus = [(j, j + 1) for j, g in enumerate(ratios) if g > max_gap]
        out["suspect"] = [list(p) for p in sus]
        if sus:
            pairs = ", ".join(f"{a}-{b} (x{ratios[a]:.1f})" for a, b in sus)
            msgs.append(
                f"the increment between components {pairs} is over {max_gap:g}x its "
                "neighbours': a count level is missing there (merged, or absent from the "
                "particle)"
            )
    out["messages"] = msgs
    out["ok"] = not msgs
    return out


def _ladder_reselect(
    fit: GMMFit, sweep: GMMSweep, criterion: str, first_count: int, resolved: float = 0.2
) -> tuple[GMMFit, str | None, dict[str, Any]]:
    """The lowest-criterion ``k`` above the chosen one that forms a resolved SCS ladder.

    Taken only when the automatic choice fails :func:`ladder_check` (fits that pass are never
    changed).  Candidates have more components than the choice (merging is what is being
    undone; going down lost more runs than it fixed on the tune seeds), pass the check, and
    have ``width / step <= resolved`` (clearly resolved levels, a margin below the check's
    0.25: a borderline over-split fit of StatSTEM's Pb, k = 27 at 0.2497, is not taken).
    Returns ``(fit, rule text or None, check of the input fit)``.
    """
    first = ladder_check(fit, first_count=first_count)
    if first["ok"]:
        return fit, None, first
    crit = dict(zip(sweep.table["n_components"], sweep.table[criterion], strict=True))
    ok = []
    for f in sweep.fits:
        if f.n_components <= fit.n_components:
            continue
        chk = ladder_check(f, first_count=first_count)
        if chk["ok"] and chk["overlap"] is not None and chk["overlap"] <= resolved:
            ok.append(f)
    if not ok:
        return fit, None, first
    best = min(ok, key=lambda f: crit[f.n_components])
    text = (
        f"{criterion.upper()}: k = {fit.n_components} ({sweep.rule}) failed the ladder check; "
        f"lowest {criterion.upper()} among larger k that pass it with width / step <= {resolved:g}"
    )
    return best, text, first


def _table_input(scs: Any, types: Any) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    if isinstance(scs, pd.DataFrame):
        df = scs
        if len(df) == 0:
            raise DataError("`scs` table is empty: no columns to count")
        col = next((c for c in ("scs", "scs_A2") if c in df.columns), None)
        if col is None:
            raise DataError(f"`scs` table needs a 'scs' or 'scs_A2' column, got {list(df.columns)}")
        x = _as_scs(df[col].to_numpy(), name=col)
        if types is None:
            t = (
                df["type"].astype(str).to_numpy()
                if "type" in df.columns
                else np.full(len(df), "all")
            )
        else:
            t = np.asarray(types).astype(str).ravel()
            if t.size != x.size:
                raise DataError(
                    f"`types` has {t.size} entries but the `scs` table has {x.size} rows: it "
                    "gives the type of every column (to count some types only, select rows)"
                )
        return df, x, t
    x = _as_scs(scs)
    t = np.full(x.size, "all") if types is None else np.asarray(types).astype(str).ravel()
    if t.size != x.size:
        raise DataError(f"`types` has {t.size} entries but `scs` has {x.size}")
    return pd.DataFrame({"scs": x}), x, t


def _scale_penalty(c: float, ref: float, sd: float) -> float:
    """Negative log of a log-normal prior on the scale ``c`` around ``ref`` (log-sd ``sd``)."""
    return 0.5 * (np.log(c / ref) / sd) ** 2


def _shared_scale_choice(
    cands: dict[str, list[tuple[float, float]]], sd: float, sd0: float, center: float = 1.0
) -> tuple[dict[str, float], float]:
    """Choose one scale per type with a prior that ties the types together.

    ``log c_t ~ N(log c0, sd^2)`` and ``log c0 ~ N(log center, sd0^2)``: the detector normalisation and
    the Gaussian-model deficit are common to all column types of one image (simulated
    CsPbBr3 [001]: c of Pb-Br and Cs columns within 4 %), so a type whose scale the data do
    not identify (a cube: one Pb-Br thickness) takes the scale of the types that do.  For an
    identifiable type the likelihood is far steeper than the prior, which then hardly matters.
    """
    cs = np.concatenate([[c for c, _ in v] for v in cands.values()])
    grid = np.exp(np.linspace(np.log(cs.min()), np.log(cs.max()), 200))
    best, best_cost = 1.0, np.inf
    for c0 in grid:
        cost = _scale_penalty(c0, center, sd0)
        for v in cands.values():
            cost += min(nll + _scale_penalty(c, c0, sd) for c, nll in v)
        if cost < best_cost:
            best, best_cost = float(c0), cost
    pick = {
        t: v[int(np.argmin([nll + _scale_penalty(c, best, sd) for c, nll in v]))][0]
        for t, v in cands.items()
    }
    return pick, best


def _distinct_optima(cand: list[tuple[float, float]], tol: float = 0.003) -> np.ndarray:
    """The scale optima ``(c, nll)`` of :func:`~perovstem.atoms.library._scale_candidates`
    with the repeats (starts that converged to the same optimum, within ``tol`` in log c)
    merged, keeping the lowest NLL; shape (m, 2), sorted by scale."""
    a = np.array(sorted(cand), dtype=float).reshape(-1, 2)
    out: list[list[float]] = []
    for c, nll in a:
        if out and abs(np.log(c / out[-1][0])) < tol:
            out[-1][1] = min(out[-1][1], nll)
        else:
            out.append([c, nll])
    return np.array(out)


def _scale_posterior(
    cands: dict[str, list[tuple[float, float]]],
    spread: float,
    sd0: float,
    center: float = 1.0,
    n_grid: int = 600,
) -> dict[str, np.ndarray]:
    """Posterior probability of each scale optimum of each type, marginal over ``c0``.

    Hypothesis ``i`` of type ``t`` is the optimum ``c_ti`` of the hybrid likelihood (each
    optimum is one reading of the counts: ``c L_n ~ c' L_(n+-1)``).  Its evidence is
    approximated by its maximum likelihood (the optima are the same data at scales some
    10 % apart, their curvatures alike) times the prior of :func:`_shared_scale_choice`,
    ``log c_t ~ N(log c0, spread^2)``, ``log c0 ~ N(log center, sd0^2)``, and ``c0`` is
    integrated out on a grid (the other types enter through it).  Returns
    ``{type: array (m, 3)}`` of ``(c, nll, probability)`` rows (distinct optima).
    """
    opt = {t: _distinct_optima(v) for t, v in cands.items()}
    lc0 = np.linspace(np.log(center) - 5 * sd0, np.log(center) + 5 * sd0, n_grid)
    lprior = -0.5 * ((lc0 - np.log(center)) / sd0) ** 2

    def lnorm(lc: np.ndarray) -> np.ndarray:  # (m,) -> (m, G): log N(log c; log c0, spread)
        return -0.5 * ((lc[:, None] - lc0[None, :]) / spread) ** 2 - np.log(spread)

    terms = {}
    marg = {}
    for t, a in opt.items():
        terms[t] = (-(a[:, 1] - a[:, 1].min()))[:, None] + lnorm(np.log(a[:, 0]))
        marg[t] = _logsumexp(terms[t], axis=0)  # (G,)
    total = lprior + sum(marg.values())
    out = {}
    for t, a in opt.items():
        lp = _logsumexp(terms[t] + (total - marg[t])[None, :], axis=1)
        p = np.exp(lp - lp.max())
        out[t] = np.column_stack([a, p / p.sum()])
    return out


def _offset_probabilities(
    post: np.ndarray, xs: np.ndarray, lib: tuple[np.ndarray, np.ndarray], counts: np.ndarray
) -> dict[int, float]:
    """Probability of each whole-type count offset ``d`` against ``counts`` (per column).

    Each scale optimum ``c`` (rows ``(c, nll, p)`` of :func:`_scale_posterior`) reads every
    column as the library count nearest to ``scs / c``; its offset is the rounded mean
    difference to ``counts``.  The probabilities of the optima with the same offset add up.
    """
    n, v = lib
    keep = v > 0
    n, v = n[keep], v[keep]
    out: dict[int, float] = {}
    for c, _, p in post:
        j = np.argmin(np.abs(xs[:, None] / c - v[None, :]), axis=1)
        d = int(np.rint(np.mean(n[j] - counts)))
        out[d] = out.get(d, 0.0) + float(p)
    return dict(sorted(out.items()))


def _offset_mixture(
    post: np.ndarray,
    xs: np.ndarray,
    lib: tuple[np.ndarray, np.ndarray],
    counts: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
) -> tuple[dict[str, Any], float, np.ndarray, np.ndarray]:
    """The whole-type offset of ``counts`` and the moments mixed over it.

    ``P(d)`` from :func:`_offset_probabilities` (``post``: rows ``(c, nll, p)`` of
    :func:`_scale_posterior`); the counts' posterior ``mean`` and variance ``var`` become
    those of the mixture over ``d`` (``+ E d``, ``+ Var d``).  Returns the report fields
    ``{"offset_probability": {d: P(d)}, "offset_ambiguous": P(0) < 0.9}``, ``P(0)`` (the
    factor of the MAP count's probability) and the mixed mean and variance.  Shared by
    :func:`count_atoms`, :func:`~perovstem.atoms.count_hybrid` and
    :func:`~perovstem.atoms.fit_hmm`.
    """
    po = _offset_probabilities(post, xs, lib, counts)
    d = np.array(list(po), dtype=float)
    w = np.array(list(po.values()))
    p0 = float(po.get(0, 0.0))
    md = float(w @ d)
    info = {
        "offset_probability": {int(k): float(val) for k, val in po.items()},
        "offset_ambiguous": bool(p0 < _OFFSET_LEVEL),
    }
    return info, p0, mean + md, var + float(w @ d**2) - md**2


def _warn_offset(
    ambiguous: dict[str, float],
    what: str,
    where: str,
    std: str = "n_atoms_std includes the offset",
    stacklevel: int = 3,
) -> None:
    """One warning naming the types whose counts may all be offset (``{type: P(0)}``);
    ``where`` says where the probabilities are kept."""
    if not ambiguous:
        return
    txt = ", ".join(f"{k} P = {p:.2f}" for k, p in ambiguous.items())
    warnings.warn(
        f"{what}: the counts of type(s) {txt} may all be offset by one atom or "
        "more: another library scale reads them one atom up or down about as well "
        f"(one or few thicknesses cannot tell c L_n from c' L_(n+-1)); {std} "
        f"({where}).  A calibrated library (fitted_scs_library, or "
        "Voronoi sums with the Voronoi library) and `scale_prior` decide it",
        UserWarning,
        stacklevel=stacklevel,
    )


def _identifiable(
    cand: list[tuple[float, float]],
    chosen: float,
    margin: float = 2.0,
    bounds: tuple[float, float] | None = None,
) -> bool:
    """False when another optimum at a scale > 2 % away fits within ``margin`` in NLL, or
    when the chosen scale sits on a bound of the scanned range (the likelihood wants a
    scale outside the plausible range: the library does not describe these columns, or
    the counts are shifted, as on 1-4-atom multislice columns)."""
    if bounds is not None and (
        abs(np.log(chosen / bounds[0])) < 1e-3 or abs(np.log(chosen / bounds[1])) < 1e-3
    ):
        return False
    near = [nll for c, nll in cand if abs(np.log(c / chosen)) <= 0.02]
    if not near:
        return False
    best = min(near)
    return not any(abs(np.log(c / chosen)) > 0.02 and nll <= best + margin for c, nll in cand)


def _fallback_scales(
    chosen: dict[str, float],
    ident: dict[str, bool],
    bounds: tuple[float, float],
    spread: float,
    reference: float | None = None,
    reference_note: str = "calibrated library (Voronoi sums)",
) -> tuple[dict[str, float], dict[str, tuple[float, float]], dict[str, str]]:
    """Scales of the types whose own columns do not identify it.

    The normalisation is common to the column types of one image (the premise of
    :func:`_shared_scale_choice`), so such a type starts from the mean log scale of the
    types that identify theirs and may move only ``spread`` from it; when no type
    identifies a scale, the shared prior's choice is kept, except for an absolute
    measurement (``reference``: 1 for Voronoi sums of a normalised image, which carry no
    model deficit), which then stays near it.  Returns the start scales,
    the per-type bounds and a note per type on where the scale came from.
    """
    lo, hi = bounds
    good = [chosen[t] for t in chosen if ident[t]]
    start, win, note = {}, {}, {}
    src0 = ""
    if not good and reference is not None:
        # an absolute measurement (Voronoi sums of a normalised image) in the library's
        # units: without a type that identifies the scale, stay near the calibration
        good, src0 = [float(reference)], reference_note
    if not good:
        # nothing to borrow from: the shared prior's choice (a free scale near 1 is not
        # "calibrated": Gaussian-fit SCS sit 5-25 % below the library by construction)
        for t, c in chosen.items():
            start[t], win[t], note[t] = c, (lo, hi), "shared prior (no type identifies it)"
        return start, win, note
    c_id = float(np.exp(np.mean(np.log(good))))
    src = src0 or "types " + ", ".join(t for t in chosen if ident[t])
    for t, c in chosen.items():
        if ident[t]:
            start[t], win[t], note[t] = c, (lo, hi), "own columns"
        else:
            w = (max(lo, c_id * np.exp(-spread)), min(hi, c_id * np.exp(spread)))
            start[t], win[t], note[t] = float(np.clip(c_id, *w)), w, src
    return start, win, note


def _anchor_candidates(
    fit: GMMFit,
    n_cols: int,
    lib: tuple[np.ndarray, np.ndarray],
    typ: str,
    scale_range: tuple[float, float],
    step: float = 0.002,
) -> list[dict[str, Any]]:
    """Assignments of the mixture components to library counts, one per scale optimum.

    For a scale ``c`` each component mean goes to the nearest ``c L_n``; the counts must
    increase strictly but may skip values (a sphere or a symmetric particle has columns of
    every other thickness only).  The consecutive assignments (StatSTEM's reading of a
    mixture) are always candidates.  Each distinct assignment is refined by weighted least
    squares; its cost is the Gaussian NLL of the means,
    ``sum_j N pi_j (mu_j - c L_nj)^2 / (2 sigma^2)`` (means have errors sigma / sqrt(N pi_j)).
    A mixture with one or two components matches the library at several ``(counts, c)``:
    all of them are returned for :func:`_shared_scale_choice`.  ``lib`` is the type's
    ``(n_atoms, scs)`` library (:func:`perovstem.atoms.library.as_library`).
    """
    n, v = lib
    keep = v > 0
    n, v = n[keep], v[keep]
    mu = fit.means
    if n.size < mu.size:
        raise ParameterError(
            f"the library for type {typ!r} has {n.size} non-zero entries, fewer than the "
            f"{mu.size} mixture components"
        )
    w = n_cols * fit.proportions
    lo, hi = scale_range
    grid = np.arange(lo, hi + 1e-12, step)
    out: dict[tuple[int, ...], dict[str, Any]] = {}
    nearest = (np.argmin(np.abs(mu[:, None] - c * v[None, :]), axis=1) for c in grid)
    consecutive = (np.arange(o, o + mu.size) for o in range(n.size - mu.size + 1))
    for j in (*consecutive, *nearest):
        if np.any(np.diff(j) <= 0):
            continue
        key = tuple(int(i) for i in j)
        if key in out:
            continue
        L = v[j]
        cs = float(np.clip(np.sum(w * mu * L) / np.sum(w * L * L), lo, hi))
        r = mu - cs * L
        out[key] = {
            "counts": n[j].astype(np.int64),
            "scale": cs,
            "rms": float(np.sqrt(np.mean(r**2))),
            "cost": float(np.sum(w * r**2) / (2.0 * fit.width**2)),
        }
    return list(out.values())


def _check_int_ge(name: str, value: Any, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ParameterError(f"`{name}` must be an integer >= {lo}, got {value!r}")


def _check_count_options(n_components: Any, max_components: Any, first_count: Any) -> None:
    """Reject k < 1 and negative atom counts before any fit (they were clamped or used)."""
    for name, value in (("n_components", n_components), ("max_components", max_components)):
        if value is None:
            continue
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for key, v in items:
            _check_int_ge(name if key is None else f"{name}[{key!r}]", v, 1)
    if first_count is not None:
        _check_int_ge("first_count", first_count, 0)


_OFFSET_LEVEL = 0.9
"""A type's counts are flagged ``offset_ambiguous`` below this probability of no offset."""

_CALIBRATED_PRIOR = (1.0, 0.03)
"""Scale prior of a library measured with the data's own estimator (fitted_scs_library)."""

_DEFAULT_PRIOR = (1.0, 0.1)
"""Scale prior otherwise: Gaussian-fit SCS sit 5-25 % below a total-SCS library."""


def _check_scale_prior(scale_prior: Any, library: Any) -> tuple[float, float, str]:
    """``(center, log_sd, source)`` of the prior on the common library scale ``c0``."""
    if scale_prior is None:
        libs = list(library.values()) if isinstance(library, dict) else [library]
        fitted = bool(libs) and all(
            isinstance(v, pd.DataFrame) and v.attrs.get("source") == "fitted" for v in libs
        )
        if fitted:
            return (*_CALIBRATED_PRIOR, "fitted library")
        return (*_DEFAULT_PRIOR, "default")
    try:
        c, sd = (float(v) for v in scale_prior)
    except (TypeError, ValueError):
        raise ParameterError(
            f"`scale_prior` must be (center, log_sd), e.g. (1.0, 0.03), got {scale_prior!r}"
        ) from None
    if not (np.isfinite(c) and c > 0 and np.isfinite(sd) and sd > 0):
        raise ParameterError(f"`scale_prior` must be (center > 0, log_sd > 0), got {scale_prior!r}")
    return c, sd, "user"


def count_atoms(
    scs: Any,
    *,
    types: Any = None,
    n_components: int | dict[str, int] | None = None,
    max_components: int | dict[str, int] = 30,
    equal_spacing: bool = False,
    criterion: str = "icl",
    rule: str = "prominence",
    first_count: int | None = None,
    library: Any = None,
    scale_range: tuple[float, float] = (0.8, 1.25),
    library_tol: float = 1.5,
    scale_spread: float = 0.03,
    scale_prior: tuple[float, float] | None = None,
    max_iter: int = 1000,
    tol: float = 1e-8,
    termination: str = "mixed",
    cd_fraction: float = 0.0,
    check_ladder: bool = True,
    method: str = "gmm",
    single_level: bool = True,
    single_level_alpha: float | None = None,
) -> pd.DataFrame:
    """Count atoms per column by an equal-width Gaussian mixture of the cross-sections.

    Each column type is counted separately (Pb-Br and Cs columns have different SCS per atom).
    ``method="ladder"`` uses the smooth ladder mixture of :mod:`perovstem.atoms.ladder`
    instead (library-free; measured against the default in docs/counting.md).

    Parameters
    ----------
    scs : array_like, shape (N,), or DataFrame
        Cross-sections, or a table with a ``scs`` (or ``scs_A2``) column and optionally ``type``
        (e.g. the output of :func:`perovstem.atoms.fit_columns`).
    types : array_like of str, shape (N,), optional
        Column types (overrides the table's ``type``).
    n_components : int or dict, optional
        Fixed number of components (per type with a dict).  Default: chosen automatically from
        the ``criterion`` curve by ``rule`` (see :func:`select_components`).
    max_components : int or dict
        Largest ``k`` of the sweep (clipped to ``N // 2`` per type when a dict is not given).
    equal_spacing : bool
        Equally spaced component means.
    criterion, rule : str
        Model-order selection, see :func:`gmm_sweep`.
    first_count : int, optional
        Atoms in the lowest component (StatSTEM's offset + 1); default 1 for
        ``method="gmm"`` and estimated from the ladder for ``method="ladder"`` (see
        :func:`perovstem.atoms.ladder.fit_ladder`).  Ignored with ``library``.
    library : optional
        SCS library (see :func:`perovstem.atoms.library.as_library`; a dict per type, or
        ``"simulate"``).  A mixture only orders the columns; the library fixes the absolute
        count of the lowest component: the integer offset ``o`` and a scale
        ``c`` in ``scale_range`` minimising ``sum_j (mu_j - c L_{o+j})^2`` are chosen (the
        comparison of GMM locations with simulations of De wael et al. 2017).  With a library
        and no fixed ``n_components``, ``k`` is the lowest-criterion model whose anchored
        component locations match the library within ``library_tol`` component widths (rms);
        this rejects over-split mixtures that the ICL alone may prefer.  If no ``k`` qualifies,
        ``rule`` decides.  Components are matched to strictly increasing library counts that
        may skip values (a sphere has Cs columns of 3, 5 and 7 atoms only).
    scale_spread : float
        With a library: log-sd of the per-type scales about their common value.  A mixture
        of one or two components (a cube has one Pb-Br thickness) matches the library at
        several ``(count, c)``; the types share the normalisation, so such a type takes the
        scale of the others (``log c_t ~ N(log c0, scale_spread^2)``, ``log c0`` from
        ``scale_prior``).
        ``attrs["counting"][type]["library_anchor"]["scale_identifiable"]`` is False when the
        counts of a type rest on this prior.
    scale_prior : (float, float), optional
        With a library: ``(center, log_sd)`` of the prior ``log c0 ~ N(log center,
        log_sd^2)`` on the common scale (cross-section / library).  One or few thicknesses
        cannot tell ``c L_n`` from ``c' L_(n+-1)`` (c' ~ c n / (n+-1), 10-15 % away for
        n ~ 8): only this prior can, and only when ``log_sd`` is well below that.  Default
        ``(1, 0.03)`` for a library measured with the data's own estimator
        (:func:`perovstem.atoms.fitted_scs_library`, ``attrs["source"] == "fitted"``,
        c = 0.97-1.03 on simulated images; for a table of
        :func:`~perovstem.atoms.fit_columns` take
        :func:`perovstem.atoms.fitted_library_for`, which repeats its fit at its dose),
        otherwise ``(1, 0.1)``: Gaussian-fit
        cross-sections sit 5-25 % below a total-SCS library (7-9 % in the package's image
        model, 10-25 % on multislice images without vacuum), so the offset of a flat
        crystal is then often undecided (``offset_ambiguous``).  Give it when the
        calibration is known, e.g. ``(0.92, 0.03)``.
    termination, cd_fraction : str, float
        Crystal surfaces and Cd fraction of a ``library="simulate"`` (see
        :func:`perovstem.atoms.library.as_library`).
    check_ladder : bool
        Without a library: run :func:`ladder_check` on the chosen mixture.  When it fails and
        ``n_components`` is not fixed, ``k`` becomes the lowest-``criterion`` larger k of the
        sweep that passes the check with width / step <= 0.2 (the rule and ``ladder_check["reselected_from"]`` say so,
        with a warning); if none passes, the choice is kept and a warning is given.  On
        held-out simulated images this raised the correctly counted runs from 13 to 17 of 108
        (none lost; 17 to 20 on the CPU-independent noise) and left StatSTEM's Pb example at
        11 components.
    single_level, single_level_alpha : bool, float or None
        The one-level test of :func:`gmm_sweep`, with the table's ``scs_err`` column when it
        has one (a type of one thickness gets one component; before, the rule split it into
        2-17).  ``single_level_alpha`` adds the Shapiro-Wilk test for tables without
        errors (off by default).  The result is
        ``attrs["counting"][type]["single_level_test"]``.
    method : {"gmm", "ladder"}
        ``"gmm"`` (default): the mixture above.  ``"ladder"``: per type a smooth ladder
        mixture (means on a ladder with a slowly varying step, widths growing smoothly with
        the level, smooth weights; :func:`perovstem.atoms.ladder.ladder_sweep`), the number
        of levels by BIC with an over-split guard, the first count estimated unless
        ``first_count`` is given.  ``n_components`` / ``max_components`` are the number of
        levels; ``equal_spacing``, ``criterion``, ``rule`` and ``check_ladder`` do not apply
        and a ``library`` is refused.

    Returns
    -------
    DataFrame
        The input table (copied) plus ``n_atoms`` (MAP count), ``p_n_atoms`` (posterior
        probability of that count), ``n_atoms_mean`` and ``n_atoms_std`` (posterior mean and
        standard deviation), ``component`` (0-based).  ``df.attrs["counting"]`` holds per type
        the component number, means, width, proportions, the criterion table, local minima,
        the selection rule and the single-atom sensitivity; with a library also ``scale``
        (cross-section / library, as in :func:`perovstem.atoms.count_hybrid`); without a
        library ``ladder_check``, the result of :func:`ladder_check` (None with a library).
        With a library, ``library_anchor`` also holds ``offset_probability`` ``{d: P(d)}``,
        the probability that every column of the type is ``d`` atoms more than ``n_atoms``
        (each optimum of the scale likelihood is one reading of the counts; its evidence is
        its likelihood times the scale prior, the common scale integrated out),
        ``offset_ambiguous`` (``P(0) < 0.9``) and ``scale_prior``.  ``n_atoms_mean`` and
        ``n_atoms_std`` are those of the mixture over ``d`` (the std grows to ~0.5 when
        ``n`` and ``n+-1`` are equally likely) and ``p_n_atoms`` is multiplied by ``P(0)``.

    Warns
    -----
    UserWarning
        Without a library, when :func:`ladder_check` finds that the components may merge
        count levels (or that the lowest one is not ``first_count`` atoms), and when ``k``
        was re-selected because of it.  On held-out simulated images the check flagged 85 of
        the 91 ICL choices whose counts were wrong (total off by > 10 % or < 50 % exact) and
        none of the 13 correct ones; on the CPU-independent noise 68 of 86 and none of 17
        (tune and fresh seeds: 2 of 18 and 3 of 16 correct ones flagged; docs/counting.md).
        With a library, when a type's counts may all be offset (``offset_ambiguous``): on
        simulated images with a total-SCS library 45 of the 48 offset type-runs were
        flagged (docs/counting.md).
    """
    refuse_text_numbers(locals())
    _check_count_options(n_components, max_components, first_count)
    if method not in ("gmm", "ladder"):
        raise ParameterError(f"`method` must be 'gmm' or 'ladder', got {method!r}")
    if method == "ladder":
        if library is not None:
            raise ParameterError(
                "`method='ladder'` is library-free: give `library` with method='gmm' (the "
                "library fixes the counts) or drop it"
            )
        if equal_spacing:
            raise ParameterError("`equal_spacing` does not apply to `method='ladder'`")
        from perovstem.atoms.ladder import count_ladder

        df, x, t = _table_input(scs, types)
        return count_ladder(
            df,
            x,
            t,
            n_levels=n_components,
            max_levels=max_components,
            first_count=first_count,
        )
    if first_count is None:
        first_count = 1
    if not (
        isinstance(scale_spread, (int, float)) and np.isfinite(scale_spread) and scale_spread > 0
    ):
        raise ParameterError(f"`scale_spread` must be a number > 0, got {scale_spread!r}")
    df, x, t = _table_input(scs, types)
    prior_c, prior_sd, prior_from = _check_scale_prior(scale_prior, library)
    libs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if library is not None:
        from perovstem.atoms.library import _simulate_conditions, _simulate_integration, as_library

        # each type's library once (a sweep compares every k with it); "simulate" takes the
        # integration the table's SCS estimator measures (Voronoi sums or total SCS)
        integ = _simulate_integration(df)
        for typ in pd.unique(t):
            ct = None if typ == "all" else typ
            libs[typ] = as_library(
                library,
                column_type=ct,
                integration=integ,
                termination=termination,
                cd_fraction=cd_fraction,
                **_simulate_conditions(df),
            )
    out = df.copy()
    n_atoms = np.zeros(x.size, dtype=np.int64)
    p_map = np.zeros(x.size)
    mean = np.zeros(x.size)
    std = np.zeros(x.size)
    comp = np.zeros(x.size, dtype=np.int64)
    info: dict[str, Any] = {}
    fits: dict[str, tuple] = {}
    resel: dict[str, tuple[int, list[str]]] = {}
    cands: dict[str, list[dict[str, Any]]] = {}
    shift: dict[str, float] = {}
    ambiguous: dict[str, float] = {}
    err_all = df["scs_err"].to_numpy(float) if "scs_err" in df.columns else None
    for typ in pd.unique(t):
        sel = t == typ
        xs = x[sel]
        kfix = n_components.get(typ) if isinstance(n_components, dict) else n_components
        if kfix is not None:
            # StatSTEM-like deterministic starts need the k-1 ... 1 solutions
            sweep = gmm_sweep(
                xs,
                max_components=kfix,
                equal_spacing=equal_spacing,
                criterion=criterion,
                rule=rule,
                max_iter=max_iter,
                tol=tol,
                single_level=False,  # k is fixed: no choice to test
            )
            fit = sweep.fit(int(kfix))
        else:
            kmax = (
                max_components.get(typ, 30) if isinstance(max_components, dict) else max_components
            )
            if not isinstance(max_components, dict):
                kmax = max(1, min(int(kmax), xs.size // 2))
            sweep = gmm_sweep(
                xs,
                max_components=kmax,
                equal_spacing=equal_spacing,
                criterion=criterion,
                rule=rule,
                max_iter=max_iter,
                tol=tol,
                single_level=single_level,
                scs_err=None if err_all is None else err_all[sel],
                single_level_alpha=single_level_alpha,
            )
            fit = sweep.fit(sweep.selected)
        chosen = None
        if check_ladder and library is None and kfix is None:
            k0 = fit.n_components
            fit, chosen, first = _ladder_reselect(fit, sweep, criterion, first_count)
            if chosen is not None:
                resel[typ] = (k0, first["messages"])
                warnings.warn(
                    f"count_atoms, type {str(typ)!r}: the {criterion.upper()} choice k = {k0} "
                    "fails the ladder check (count levels merged?) - "
                    + "; ".join(first["messages"])
                    + f". Using k = {fit.n_components}, the lowest {criterion.upper()} k "
                    "that passes it; compare with a simulated library (library=...).",
                    UserWarning,
                    stacklevel=2,
                )
        fits[typ] = (sel, xs, fit, sweep, kfix, chosen)
    if library is not None:
        # the scale of each type from the hybrid likelihood of all its cross-sections (the
        # mixture means of small components are too noisy for it), tied across types
        from perovstem.atoms.library import _scale_candidates

        hyb = {
            typ: _scale_candidates(xs, libs[typ][1], scale_range, 0.01, 1e-10)
            for typ, (_, xs, *_rest) in fits.items()
        }
        pick, _ = _shared_scale_choice(hyb, scale_spread, prior_sd, prior_c)
        # each scale optimum is one reading of the counts (c L_n ~ c' L_(n+-1)): their
        # posterior under the calibration prior says how sure the counts' offset is
        spost = _scale_posterior(hyb, scale_spread, prior_sd, prior_c)
        ident = {t: _identifiable(hyb[t], pick[t], bounds=tuple(scale_range)) for t in hyb}
        reference, note = None, "calibrated library (Voronoi sums)"
        if df.attrs.get("scs_estimator") == "voronoi":
            reference = 1.0
        if prior_from != "default":
            reference, note = prior_c, f"scale prior ({prior_from})"
        c_ref, c_win, c_source = _fallback_scales(
            pick, ident, tuple(scale_range), scale_spread, reference=reference, reference_note=note
        )
        from perovstem.atoms.library import _warn_unidentified

        _warn_unidentified(
            ident,
            c_source,
            "count_atoms",
            gaussian=df.attrs.get("scs_estimator") not in ("voronoi",) and "rho_A" in df,
        )
    for typ, (sel, xs, fit, sweep, kfix, chosen_by) in list(fits.items()):
        if library is not None and kfix is None and library_tol > 0:
            # StatSTEM's tutorial compares GMM locations with simulations to pick the ICL
            # minimum; automatic version: the lowest-criterion k whose component locations
            # match the library at the type's scale (within 3 %) within `library_tol`
            # component widths (rms)
            ok = []
            n_lib = int(np.sum(libs[typ][1] > 0))
            for f in sweep.fits:
                if f.n_components > n_lib:
                    continue  # more components than library counts: cannot match it
                a = _anchor_candidates(f, xs.size, libs[typ], typ, scale_range)
                if any(
                    c["rms"] <= library_tol * f.width
                    and abs(np.log(c["scale"] / c_ref[typ])) <= 0.03
                    for c in a
                ):
                    ok.append(
                        (
                            float(
                                sweep.table.loc[
                                    f.n_components - sweep.fits[0].n_components, criterion
                                ]
                            ),
                            f.n_components,
                        )
                    )
            if ok:
                kbest = min(ok)[1]
                fit = sweep.fit(kbest)
                chosen_by = (
                    f"lowest {criterion.upper()} among k whose means match the library within "
                    f"{library_tol:g} widths (rms)"
                )
        fits[typ] = (sel, xs, fit, sweep, kfix, chosen_by)
        if library is not None:
            cands[typ] = _anchor_candidates(fit, xs.size, libs[typ], typ, scale_range)
    for typ, (sel, xs, fit, sweep, kfix, chosen_by) in fits.items():
        post = fit.posterior(xs)
        c = np.argmax(post, axis=1)
        anchor = None
        counts = first_count + np.arange(fit.n_components)
        if library is not None:
            pool = cands[typ]
            if not ident[typ]:
                # the type's own columns do not fix the scale: only assignments at (about)
                # the scale of the types that do (a mismatched library otherwise pulls the
                # anchor to a bound of the range, every count shifted)
                lo_w, hi_w = c_win[typ]
                near = [a for a in pool if lo_w - 1e-9 <= a["scale"] <= hi_w + 1e-9]
                pool = near or pool
            anchor = min(
                pool, key=lambda a: a["cost"] + _scale_penalty(a["scale"], c_ref[typ], 0.01)
            )
            counts = anchor["counts"]
            anchor = {
                "first_count": int(counts[0]),
                "counts": counts.tolist(),
                "scale": anchor["scale"],
                "rms": anchor["rms"],
                "scale_identifiable": bool(ident[typ]),
                "scale_from": c_source[typ],
            }
        fc = int(counts[0])
        if anchor is not None:
            # counts of the calibrated library (c = 1, nearest value), see count_hybrid
            nl, vl = libs[typ]
            j1 = np.argmin(np.abs(xs[:, None] - vl[None, :]), axis=1)
            shift[str(typ)] = float(np.mean(counts[c] - nl[j1]))
            anchor["count_shift_vs_calibrated"] = shift[str(typ)]
        n_atoms[sel] = counts[c]
        comp[sel] = c
        p_map[sel] = post[np.arange(xs.size), c]
        m = post @ counts
        v = np.maximum(post @ (counts**2) - m**2, 0.0)
        if anchor is not None:
            # the whole type read one atom up or down (another scale optimum): a shift d
            # of all columns with probability P(d); the counts' mean and variance take the
            # mixture over d, the MAP count's probability is that of d = 0
            off, p0, m, v = _offset_mixture(spost[typ], xs, libs[typ], counts[c], m, v)
            p_map[sel] *= p0
            anchor.update(off)
            anchor["scale_prior"] = {
                "center": prior_c,
                "log_sd": prior_sd,
                "source": prior_from,
            }
            if p0 < _OFFSET_LEVEL:
                ambiguous[str(typ)] = p0
        mean[sel] = m
        std[sel] = np.sqrt(v)
        check = None
        if anchor is None and check_ladder:
            # without a library the counts are the component indices: check the ladder
            check = ladder_check(fit, first_count=fc)
            if typ in resel:
                check["reselected_from"], check["reselected_because"] = resel[typ]
            if not check["ok"]:
                warnings.warn(
                    f"count_atoms, type {str(typ)!r}: {fit.n_components} components for "
                    f"{xs.size} columns may merge count levels (counts then too low) - "
                    + "; ".join(check["messages"])
                    + ". Compare with a simulated library (library=...) or check the "
                    "criterion curve (attrs['counting'][type]['ladder_check']).",
                    UserWarning,
                    stacklevel=2,
                )
        info[str(typ)] = {
            "n_components": fit.n_components,
            "ladder_check": check,
            "means": fit.means.tolist(),
            "width": fit.width,
            "proportions": fit.proportions.tolist(),
            "first_count": int(fc),
            "library_anchor": anchor,
            # calibration of the cross-sections against the library (as count_hybrid's)
            **({"scale": anchor["scale"]} if anchor is not None else {}),
            "single_atom_sensitivity": single_atom_sensitivity(fit),
            "criterion": criterion,
            "local_minima": [] if sweep is None else list(sweep.local_minima),
            "single_level_test": None if sweep is None else sweep.single_level_test,
            "rule": "fixed by user" if kfix is not None else (chosen_by or sweep.rule),
            "criterion_curve": (
                {}
                if sweep is None
                else {
                    k: sweep.table[k].tolist() for k in ("n_components", "icl", "bic", "aic", "nll")
                }
            ),
        }
    if shift and df.attrs.get("scs_estimator") == "voronoi":
        from perovstem.atoms.library import _warn_shifted

        _warn_shifted(shift, "count_atoms")
    _warn_offset(
        ambiguous,
        "count_atoms",
        "attrs['counting'][type]['library_anchor']['offset_probability']",
    )
    out["n_atoms"] = n_atoms
    out["p_n_atoms"] = p_map
    out["n_atoms_mean"] = mean
    out["n_atoms_std"] = std
    out["component"] = comp
    out.attrs = dict(df.attrs)
    out.attrs["counting"] = {"method": "gmm", **info}
    return out
