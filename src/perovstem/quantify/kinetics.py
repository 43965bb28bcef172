"""Kinetic models of beam-induced degradation, maximum-likelihood fitting, confidence intervals
and model selection.

Models (``x`` is cumulative dose in e⁻/Å² unless stated, see :data:`MODELS`):

* Br loss: first order ``N(D) = N∞ + (N0 − N∞)·exp(−D/D_Br)`` (electron-stimulated
  desorption with cross-section σ = 1/D_Br; Egerton, Micron 35, 399 (2004)), two pools
  (surface + bulk), second order, linear.
* Pb nucleation: cumulative births ``B(D) = J·(D − D0)₊`` (constant rate per dose), saturating
  (site exhaustion) and accelerating (∝ D²) alternatives; dose-rate dependence of the rate per
  second ``J_t = k·φ^α`` (α = 1: dose-controlled, α = 0: time-controlled).
* Growth of the cluster radius ``r(x) = (r0^m + K·x)^{1/m}`` with m = 3 (supply-limited or
  Ostwald/LSW ripening, Lifshitz & Slyozov 1961; Wagner 1961), m = 2 (diffusion-limited),
  m = 1 (interface/reaction-limited) and a free-exponent power law.
* Coalescence: constant-kernel Smoluchowski ``N(x) = N0/(1 + K·N0·x/2)`` (Smoluchowski 1917)
  against first-order loss and a constant number.
* Arrhenius ``k(T) = A·exp(−Ea/(k_B·T))`` (fit in log space, weighted).

Fitting is maximum likelihood (Gaussian with known or profiled σ, or Poisson for counts).
Confidence intervals come from the profile likelihood (Venzon & Moolgavkar, Appl. Stat. 37,
87 (1988)) or a bootstrap; models are ranked by AIC, AICc (Burnham & Anderson 2002) and BIC.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, special, stats

from perovstem._poisson import poisson_counts
from perovstem._validation import as_rng, check_choice, check_range, refuse_text_numbers
from perovstem.errors import DataError, ParameterError

__all__ = [
    "K_B_EV_PER_K",
    "KineticModel",
    "FitResult",
    "MODELS",
    "fit_model",
    "compare_models",
    "fit_arrhenius",
    "fit_dose_rate_dependence",
]

K_B_EV_PER_K = 8.617333262e-5
#: fit_arrhenius warns when every temperature is below this (K): likely °C, not K.
CELSIUS_SUSPECT_BELOW_K = 200.0


def _blas1(func: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``func`` with one BLAS thread: the many tiny products of the least-squares
    iterations otherwise pay the thread wake-up latency of a multi-threaded BLAS."""
    import functools

    @functools.wraps(func)
    def wrapper(*args: Any, **kw: Any) -> Any:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # pragma: no cover
            return func(*args, **kw)
        with threadpool_limits(1, user_api="blas"):
            return func(*args, **kw)

    return wrapper


@dataclass(frozen=True)
class KineticModel:
    """A named model ``y = f(x, *params)``.

    Attributes
    ----------
    name : str
        Identifier (``"br_first_order"`` ...).
    func : callable
        ``func(x, *params) -> y`` (vectorised).
    param_names : tuple of str
        Parameter names with units.
    guess : callable
        ``guess(x, y) -> p0``.
    bounds : (lower, upper)
        Parameter bounds (sequences, ``±inf`` allowed).
    process : str
        Which process it describes (``"br_loss"``, ``"nucleation"``, ``"growth"``, ...).
    mechanism : str
        One-line physical interpretation used in the summary table.
    """

    name: str
    func: Callable[..., np.ndarray]
    param_names: tuple[str, ...]
    guess: Callable[[np.ndarray, np.ndarray], Sequence[float]]
    bounds: tuple[Sequence[float], Sequence[float]]
    process: str
    mechanism: str


@dataclass(frozen=True)
class FitResult:
    """Result of :func:`fit_model`.

    Attributes
    ----------
    model : str
    params, stderr, ci_low, ci_high : dict[str, float]
        Estimates, asymptotic standard errors and confidence limits.
    level : float
        Confidence level of the intervals.
    ci_method : str
        ``"profile"``, ``"bootstrap"`` or ``"wald"``.
    loglik, aic, aicc, bic : float
        Maximised log-likelihood and information criteria (σ counted as a parameter when it
        was profiled).
    n_obs, n_params : int
    likelihood : str
    """

    model: str
    params: dict[str, float]
    stderr: dict[str, float]
    ci_low: dict[str, float]
    ci_high: dict[str, float]
    level: float
    ci_method: str
    loglik: float
    aic: float
    aicc: float
    bic: float
    n_obs: int
    n_params: int
    likelihood: str
    sigma: float = float("nan")
    extra: dict = field(default_factory=dict)
    func: Callable[..., np.ndarray] | None = field(default=None, repr=False, compare=False)

    def predict(self, x: Any) -> np.ndarray:
        """Model prediction at ``x``."""
        f = self.func if self.func is not None else MODELS[self.model].func
        return f(np.asarray(x, float), *self.params.values())

    def to_frame(self) -> pd.DataFrame:
        """One row per parameter: ``model, param, value, stderr, ci_low, ci_high``."""
        rows = [
            {
                "model": self.model,
                "param": p,
                "value": v,
                "stderr": self.stderr[p],
                "ci_low": self.ci_low[p],
                "ci_high": self.ci_high[p],
                "level": self.level,
                "ci_method": self.ci_method,
            }
            for p, v in self.params.items()
        ]
        return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- models
def _exp(z: np.ndarray) -> np.ndarray:
    return np.exp(np.clip(z, -700, 700))


def _span(x: np.ndarray) -> float:
    s = float(np.ptp(x)) if x.size else 1.0
    return s if s > 0 else 1.0


def _g_first(x: np.ndarray, y: np.ndarray) -> list[float]:
    y0, y1 = float(y[: max(1, len(y) // 10)].mean()), float(y[-max(1, len(y) // 10) :].mean())
    inf = min(y1, y0) * 0.5
    # D at which the excess fell to 1/e
    exc = y - inf
    tgt = (y0 - inf) / np.e
    idx = np.flatnonzero(exc <= tgt)
    d = float(x[idx[0]]) if idx.size else _span(x)
    return [y0, max(inf, 0.0), max(d, _span(x) / 100)]


def _g_two(x: np.ndarray, y: np.ndarray) -> list[float]:
    y0, _, d = _g_first(x, y)
    return [y0, 0.5, d / 3, d * 3]


def _g_lin(x: np.ndarray, y: np.ndarray) -> list[float]:
    b, a = np.polyfit(x, y, 1)
    return [a, -b]


def _g_second(x: np.ndarray, y: np.ndarray) -> list[float]:
    y0, _, d = _g_first(x, y)
    return [y0, d]


def _g_nuc(x: np.ndarray, y: np.ndarray) -> list[float]:
    j = max(float(y[-1]) / _span(x), 1e-12)
    return [j, max(float(x.min()), 0.0)]


def _g_nuc_sat(x: np.ndarray, y: np.ndarray) -> list[float]:
    j, d0 = _g_nuc(x, y)
    return [2 * j, max(float(y.max()) * 1.2, 1e-6), d0]


def _g_nuc_acc(x: np.ndarray, y: np.ndarray) -> list[float]:
    return [max(float(y[-1]) / _span(x) ** 2, 1e-20), max(float(x.min()), 0.0)]


def _growth(m: float) -> Callable[..., np.ndarray]:
    def f(x: np.ndarray, r0: float, k: float) -> np.ndarray:
        return np.power(np.clip(r0**m + k * x, 1e-300, None), 1.0 / m)

    return f


def _g_growth(m: float) -> Callable[[np.ndarray, np.ndarray], list[float]]:
    def g(x: np.ndarray, y: np.ndarray) -> list[float]:
        yp = np.clip(y, 1e-9, None)
        k, c = np.polyfit(x, yp**m, 1)
        return [max(c, 1e-9) ** (1 / m), max(k, 1e-30)]

    return g


def _g_power(x: np.ndarray, y: np.ndarray) -> list[float]:
    r0, k = _g_growth(3.0)(x, y)
    return [r0, k, 3.0]


def _n0_guess(y: np.ndarray) -> float:
    """Initial number for the decay guesses; > 0 even when every count is zero."""
    n0 = float(y[0]) if y[0] > 0 else float(np.max(y))
    return n0 if n0 > 0 else 1e-3


def _g_smol(x: np.ndarray, y: np.ndarray) -> list[float]:
    n0 = _n0_guess(y)
    n1 = float(y[-1]) if y[-1] > 0 else n0 / 2
    k = max(2 * (n0 / max(n1, 1e-9) - 1) / (n0 * _span(x)), 1e-30)
    return [n0, k]


def _g_firstdecay(x: np.ndarray, y: np.ndarray) -> list[float]:
    n0 = _n0_guess(y)
    n1 = max(float(y[-1]), 1e-3 * n0)
    return [n0, max(np.log(n0 / n1) / _span(x), 1e-30)]


_INF = np.inf

MODELS: dict[str, KineticModel] = {
    m.name: m
    for m in [
        KineticModel(
            "br_first_order",
            lambda x, n0, ninf, d: ninf + (n0 - ninf) * _exp(-x / d),
            ("N0", "N_inf", "D_Br_e_per_A2"),
            _g_first,
            ([0, 0, 1e-12], [_INF, _INF, _INF]),
            "br_loss",
            "first-order electron-stimulated Br desorption",
        ),
        KineticModel(
            "br_two_pool",
            lambda x, n0, f, ds, db: n0 * (f * _exp(-x / ds) + (1 - f) * _exp(-x / db)),
            ("N0", "f_surface", "D_surface_e_per_A2", "D_bulk_e_per_A2"),
            _g_two,
            ([0, 0, 1e-12, 1e-12], [_INF, 1, _INF, _INF]),
            "br_loss",
            "Br desorption from a fast surface pool and a slow bulk pool",
        ),
        KineticModel(
            "br_second_order",
            lambda x, n0, d2: n0 / (1 + x / d2),
            ("N0", "D2_e_per_A2"),
            _g_second,
            ([0, 1e-12], [_INF, _INF]),
            "br_loss",
            "second-order (recombination-limited) Br loss",
        ),
        KineticModel(
            "br_linear",
            lambda x, n0, k: n0 - k * x,
            ("N0", "rate_per_e_per_A2"),
            _g_lin,
            ([-_INF, -_INF], [_INF, _INF]),
            "br_loss",
            "zero-order (constant-rate) Br loss",
        ),
        KineticModel(
            "nucleation_constant",
            lambda x, j, d0: j * np.clip(x - d0, 0, None),
            ("J_per_e_per_A2", "D0_e_per_A2"),
            _g_nuc,
            ([0, 0], [_INF, _INF]),
            "nucleation",
            "constant nucleation rate per unit dose after an incubation dose",
        ),
        KineticModel(
            "nucleation_saturating",
            lambda x, j, bmax, d0: bmax * (1 - _exp(-j * np.clip(x - d0, 0, None) / bmax)),
            ("J_per_e_per_A2", "B_max", "D0_e_per_A2"),
            _g_nuc_sat,
            ([0, 1e-9, 0], [_INF, _INF, _INF]),
            "nucleation",
            "nucleation on a finite number of sites (site exhaustion)",
        ),
        KineticModel(
            "nucleation_accelerating",
            lambda x, a, d0: a * np.clip(x - d0, 0, None) ** 2,
            ("a_per_e2_per_A4", "D0_e_per_A2"),
            _g_nuc_acc,
            ([0, 0], [_INF, _INF]),
            "nucleation",
            "nucleation rate rising linearly with dose (supersaturation build-up)",
        ),
        KineticModel(
            "growth_supply_m3",
            _growth(3.0),
            ("r0_A", "K_A3_per_x"),
            _g_growth(3.0),
            ([0, 0], [_INF, _INF]),
            "growth",
            "supply-limited growth or Ostwald ripening, r^3 linear in dose",
        ),
        KineticModel(
            "growth_diffusion_m2",
            _growth(2.0),
            ("r0_A", "K_A2_per_x"),
            _g_growth(2.0),
            ([0, 0], [_INF, _INF]),
            "growth",
            "diffusion-limited growth, r^2 linear in dose",
        ),
        KineticModel(
            "growth_reaction_m1",
            _growth(1.0),
            ("r0_A", "K_A_per_x"),
            _g_growth(1.0),
            ([0, 0], [_INF, _INF]),
            "growth",
            "interface (reaction)-limited growth, r linear in dose",
        ),
        KineticModel(
            "growth_power",
            lambda x, r0, k, m: np.power(np.clip(r0**m + k * x, 1e-300, None), 1.0 / m),
            ("r0_A", "K", "m"),
            _g_power,
            ([0, 0, 0.3], [_INF, _INF, 10.0]),
            "growth",
            "growth with free exponent r^m linear in dose",
        ),
        KineticModel(
            "coalescence_smoluchowski",
            lambda x, n0, k: n0 / (1 + 0.5 * k * n0 * x),
            ("N0", "K_coal"),
            _g_smol,
            ([0, 0], [_INF, _INF]),
            "coalescence",
            "constant-kernel Smoluchowski coalescence (number ~ 1/x)",
        ),
        KineticModel(
            "number_first_order",
            lambda x, n0, k: n0 * _exp(-k * x),
            ("N0", "k"),
            _g_firstdecay,
            ([0, 0], [_INF, _INF]),
            "coalescence",
            "first-order loss of clusters (dissolution)",
        ),
        KineticModel(
            "number_constant",
            lambda x, n0: np.full_like(np.asarray(x, float), n0),
            ("N0",),
            lambda x, y: [float(np.mean(y))],
            ([0], [_INF]),
            "coalescence",
            "constant number of clusters (no coalescence)",
        ),
    ]
}


# ----------------------------------------------------------------------------- likelihood
class _Problem:
    """Negative log-likelihood of one model on one data set."""

    def __init__(
        self,
        model: KineticModel,
        x: np.ndarray,
        y: np.ndarray,
        sigma: np.ndarray | None,
        likelihood: str,
        cumulative: bool = False,
    ) -> None:
        self.model, self.x, self.sigma, self.lik = model, x, sigma, likelihood
        self.cumulative = cumulative
        # cumulative counts (births, atoms left) are fitted through their (nearly
        # independent) increments, oriented so that they are >= 0
        self.sign = 1.0
        if cumulative and len(y) > 1 and y[-1] < y[0]:
            self.sign = -1.0
        self.y = self._incr(y) if cumulative else y
        # a non-decreasing count (births) is conditioned on its first value: what it holds
        # at the first point (clusters already there, or born before the analysed range)
        # has no known dose interval, so only the later increments enter the likelihood.
        # Read as births since dose 0 it made a constant curve (3, 3, 3, ...) a burst
        # before the first point: J > 0 with an interval excluding 0.  Atoms left
        # (non-increasing) keep their first value, the level N(x0).
        self.first = 1 if (cumulative and self.sign > 0 and len(y) > 1) else 0
        self.n = len(x) - self.first

    def _incr(self, v: np.ndarray) -> np.ndarray:
        d = np.diff(v, prepend=0.0)
        d[1:] *= self.sign
        return d

    def expected(self, p: np.ndarray) -> np.ndarray:
        f = self.model.func(self.x, *p)
        return self._incr(f) if self.cumulative else f

    def resid(self, p: np.ndarray) -> np.ndarray:
        f = self.expected(p)
        if self.lik == "poisson":
            f = np.clip(f, 1e-12, None)
            y = self.y
            with np.errstate(divide="ignore", invalid="ignore"):
                t = np.where(y > 0, y * np.log(y / f), 0.0) - (y - f)
            return (np.sign(y - f) * np.sqrt(np.clip(2 * t, 0, None)))[self.first :]
        r = self.y - f
        r = r / self.sigma if self.sigma is not None else r
        return r[self.first :]

    def nll(self, p: np.ndarray) -> float:
        r = self.resid(p)
        if not np.all(np.isfinite(r)):
            return np.inf
        s = float(r @ r)
        if self.lik == "poisson":
            # deviance/2 + saturated log-likelihood constant
            y = self.y[self.first :]
            with np.errstate(divide="ignore", invalid="ignore"):
                sat = np.sum(np.where(y > 0, y * np.log(y), 0.0) - y - special.gammaln(y + 1))
            return 0.5 * s - float(sat)
        if self.sigma is not None:
            return (
                0.5 * s
                + float(np.sum(np.log(self.sigma[self.first :])))
                + 0.5 * self.n * np.log(2 * np.pi)
            )
        s = max(s, 1e-300)
        return 0.5 * self.n * (np.log(2 * np.pi * s / self.n) + 1)

    def solve(
        self, p0: np.ndarray, fixed: dict[int, float] | None = None
    ) -> tuple[np.ndarray, float, Any]:
        fixed = fixed or {}
        lo = np.asarray(self.model.bounds[0], float)
        hi = np.asarray(self.model.bounds[1], float)
        free = np.array([i for i in range(len(p0)) if i not in fixed], int)
        full = np.asarray(p0, float).copy()
        for i, v in fixed.items():
            full[i] = v
        if free.size == 0:
            return full, self.nll(full), None

        def res(q: np.ndarray) -> np.ndarray:
            pp = full.copy()
            pp[free] = q
            r = self.resid(pp)
            return np.where(np.isfinite(r), r, 1e10)

        lf, hf = lo[free], hi[free]
        with np.errstate(invalid="ignore"):
            eps_l = np.where(np.isfinite(lf), 1e-9 * np.maximum(1, np.abs(lf)), 0.0)
            eps_h = np.where(np.isfinite(hf), 1e-9 * np.maximum(1, np.abs(hf)), 0.0)
        q0 = np.where(np.isfinite(full[free]), full[free], 0.0)
        q0 = np.where(q0 <= lf, lf + eps_l, q0)
        q0 = np.where(q0 >= hf, hf - eps_h, q0)
        sol = optimize.least_squares(
            res, q0, bounds=(lo[free], hi[free]), x_scale="jac", method="trf", max_nfev=2000
        )
        full[free] = sol.x
        return full, self.nll(full), sol


def _as_xy(x: Any, y: Any, sigma: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    x = np.asarray(x, float).ravel()
    y = np.asarray(y, float).ravel()
    if x.shape != y.shape:
        raise DataError(f"`x` and `y` must have the same length, got {x.size} and {y.size}")
    s = None
    if sigma is not None:
        s = np.asarray(sigma, float).ravel()
        if s.size == 1:
            s = np.full(x.size, float(s[0]))
        if s.shape != x.shape:
            raise DataError(f"`sigma` must have one value per point ({x.size}), got {s.size}")
        if not np.all(np.isfinite(s)) or np.any(s <= 0):
            raise DataError("`sigma` must be finite and > 0 for every point")
    bad = ~np.isfinite(x) | ~np.isfinite(y)
    if bad.any():
        raise DataError(f"`x`/`y` contain {int(bad.sum())} non-finite value(s)")
    return x, y, s


def _model(model: str | KineticModel) -> KineticModel:
    if isinstance(model, KineticModel):
        return model
    check_choice("model", model, MODELS)
    return MODELS[model]


@_blas1
def fit_model(
    x: Any,
    y: Any,
    model: str | KineticModel,
    *,
    sigma: Any = None,
    likelihood: str = "gaussian",
    ci: str = "profile",
    level: float = 0.95,
    n_boot: int = 200,
    p0: Sequence[float] | None = None,
    cumulative: bool = False,
    rng: Any = None,
) -> FitResult:
    """Maximum-likelihood fit of a kinetic model with confidence intervals.

    Parameters
    ----------
    x : (n,) array_like
        Independent variable (cumulative dose e⁻/Å², time s, 1/T ...).
    y : (n,) array_like
        Observations (atom numbers, counts, radii Å ...).
    model : str or KineticModel
        A key of :data:`MODELS` or a custom model.
    sigma : float or (n,) array_like, optional
        Known standard deviation of ``y`` (Gaussian likelihood).  If omitted, σ is estimated
        (profiled) and counted as a parameter in AIC/BIC.
    likelihood : {"gaussian", "poisson"}
        Poisson for raw counts (births, cluster numbers).
    ci : {"profile", "bootstrap", "wald", "none"}
        Confidence intervals: profile likelihood (default), parametric/residual bootstrap,
        or ±z·stderr.
    level : float
        Confidence level.
    n_boot : int
        Bootstrap replicates.
    p0 : sequence of float, optional
        Starting values (else the model's guess).
    cumulative : bool
        ``y`` is a cumulative count: births up to each frame (non-decreasing) or atoms left
        (non-increasing, e.g. exact Br counts).  The likelihood is evaluated on the
        increments, which are independent (Poisson process / binomial thinning), so the
        intervals are not falsely narrow as they are when a monotone random process is
        fitted point by point.  ``x`` must then be increasing.  A non-decreasing count is
        conditioned on its first value (clusters present at the first point have no known
        birth dose): only the increments after it are fitted, so a constant curve gives
        no nucleation, and ``n_obs`` is one less than the number of points.
    rng : int or Generator, optional
        Seed for the bootstrap.

    Returns
    -------
    FitResult

    Raises
    ------
    DataError
        Too few or non-finite data.
    ParameterError
        Unknown model, likelihood or CI method.
    """
    refuse_text_numbers(locals())
    m = _model(model)
    check_choice("likelihood", likelihood, ("gaussian", "poisson"))
    check_choice("ci", ci, ("profile", "bootstrap", "wald", "none"))
    check_range("level", level, 0.5, 0.9999)
    x, y, s = _as_xy(x, y, sigma)
    k = len(m.param_names)
    if cumulative:
        if np.any(np.diff(x) <= 0):
            raise DataError("`x` must increase strictly when `cumulative=True`")
        dy = np.diff(y)
        if y[0] < 0 or not (np.all(dy >= 0) or np.all(dy <= 0)):
            raise DataError(
                "cumulative `y` must be >= 0 and monotonic (non-decreasing or non-increasing)"
            )
    if likelihood == "poisson" and (np.any(y < 0) or np.any(y != np.round(y))):
        raise DataError("Poisson likelihood needs non-negative integer counts in `y`")
    prob = _Problem(m, x, y, s, likelihood, cumulative)
    n_extra = 1 if (likelihood == "gaussian" and s is None) else 0
    if prob.n < k + n_extra + 1:
        cond = " after the first (a cumulative count is conditioned on it)" if prob.first else ""
        raise DataError(
            f"model {m.name!r} has {k} parameters; need at least {k + n_extra + 1} points"
            f"{cond}, got {prob.n}"
        )
    starts = [np.asarray(p0 if p0 is not None else m.guess(x, y), float)]
    if starts[0].shape != (k,):
        raise ParameterError(f"`p0` must have {k} values for {m.name!r}, got {starts[0].size}")
    if p0 is None:
        # multi-start: each parameter scaled by 1/3 and 3 guards against poor local minima
        for i in range(k):
            for fac in (1 / 3, 3.0):
                st = starts[0].copy()
                st[i] = st[i] * fac if st[i] != 0 else fac - 1
                starts.append(st)
    best = None
    for st in starts:
        p, nll, sol = prob.solve(st)
        if best is None or nll < best[1] - 1e-9:
            best = (p, nll, sol)
    p_hat, nll_hat, sol = best
    if not np.isfinite(nll_hat):
        raise DataError(f"model {m.name!r} could not be fitted (non-finite likelihood)")
    # asymptotic covariance from the Jacobian of the (scaled) residuals
    stderr = np.full(k, np.nan)
    sig_hat = float("nan")
    if sol is not None:
        J = sol.jac
        dof = max(prob.n - k, 1)
        rss = float(sol.fun @ sol.fun)
        if likelihood == "gaussian" and s is None:
            sig_hat = np.sqrt(rss / dof)
            scale2 = rss / dof
        else:
            scale2 = 1.0
        # column scaling keeps J^T J well conditioned when parameters differ by decades
        free_p = p_hat if J.shape[1] == k else p_hat[: J.shape[1]]
        dsc = np.where(np.abs(free_p) > 0, np.abs(free_p), 1.0)
        Js = J * dsc[None, :]
        try:
            cov_s = np.linalg.inv(Js.T @ Js)
        except np.linalg.LinAlgError:
            cov_s = np.linalg.pinv(Js.T @ Js)
        cov = cov_s * np.outer(dsc, dsc) * scale2
        stderr = np.sqrt(np.clip(np.diag(cov), 0, None))
    n_par = k + n_extra
    loglik = -nll_hat
    aic = 2 * n_par - 2 * loglik
    aicc = aic + (
        2 * n_par * (n_par + 1) / (prob.n - n_par - 1) if prob.n - n_par - 1 > 0 else np.inf
    )
    bic = n_par * np.log(prob.n) - 2 * loglik
    lo = np.full(k, np.nan)
    hi = np.full(k, np.nan)
    z = stats.norm.ppf(0.5 + level / 2)
    if ci == "wald":
        lo, hi = p_hat - z * stderr, p_hat + z * stderr
    elif ci == "profile":
        lo, hi = _profile_ci(prob, p_hat, nll_hat, stderr, level)
    elif ci == "bootstrap":
        lo, hi = _bootstrap_ci(prob, p_hat, level, int(n_boot), as_rng(rng))
    names = m.param_names
    return FitResult(
        model=m.name,
        params=dict(zip(names, map(float, p_hat), strict=True)),
        stderr=dict(zip(names, map(float, stderr), strict=True)),
        ci_low=dict(zip(names, map(float, lo), strict=True)),
        ci_high=dict(zip(names, map(float, hi), strict=True)),
        level=float(level),
        ci_method=ci,
        loglik=float(loglik),
        aic=float(aic),
        aicc=float(aicc),
        bic=float(bic),
        n_obs=int(prob.n),
        n_params=int(n_par),
        likelihood=likelihood,
        sigma=float(sig_hat),
        func=m.func,
    )


def _profile_ci(
    prob: _Problem,
    p_hat: np.ndarray,
    nll_hat: float,
    stderr: np.ndarray,
    level: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Profile-likelihood interval of each parameter (2·ΔNLL = χ²₁ quantile)."""
    k = len(p_hat)
    q = stats.chi2.ppf(level, 1)
    lo_b = np.asarray(prob.model.bounds[0], float)
    hi_b = np.asarray(prob.model.bounds[1], float)
    lo = np.full(k, np.nan)
    hi = np.full(k, np.nan)
    for j in range(k):
        se = stderr[j]
        if not (np.isfinite(se) and se > 0):
            se = max(abs(p_hat[j]) * 0.1, 1e-6)
        cache: dict[float, np.ndarray] = {}

        def g(v: float, j: int = j, cache: dict = cache) -> float:
            start = p_hat.copy()
            if cache:  # warm start from the nearest evaluated point
                start = cache[min(cache, key=lambda u: abs(u - v))].copy()
            start[j] = v
            p, nll, _ = prob.solve(start, fixed={j: v})
            cache[v] = p
            return 2.0 * (nll - nll_hat) - q

        for side, bound, out in ((-1, lo_b[j], lo), (+1, hi_b[j], hi)):
            inner, step = float(p_hat[j]), float(se)
            out[j] = side * np.inf
            for _ in range(40):
                v = float(p_hat[j] + side * step)
                beyond = (side < 0 and v <= bound) or (side > 0 and v >= bound)
                if beyond:
                    v = float(bound)
                    if v == inner or g(v) < 0:
                        out[j] = v
                        break
                elif g(v) <= 0:
                    inner, step = v, step * 2.0
                    continue
                a, b = min(inner, v), max(inner, v)
                try:
                    out[j] = optimize.brentq(g, a, b, xtol=1e-10 * max(1.0, abs(v)), rtol=1e-7)
                except ValueError:
                    out[j] = v
                break
    return lo, hi


def _bootstrap_ci(
    prob: _Problem, p_hat: np.ndarray, level: float, n_boot: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile intervals: parametric (Poisson) or residual bootstrap (Gaussian).

    The Poisson replicates come from :func:`perovstem._poisson.poisson_counts` (means
    rounded to 20 significant bits, |mean| < 2⁻³⁰ set to 0, a child generator per
    replicate), so a seeded interval does not depend on the CPU's SIMD level.
    """
    if n_boot < 20:
        raise ParameterError(f"`n_boot` must be >= 20, got {n_boot}")
    f = prob.expected(p_hat)
    res = (prob.y - f)[prob.first :]
    out = []
    for _ in range(n_boot):
        if prob.lik == "poisson":
            # rounded means, residues → 0, one draw of rng per replicate: the same
            # interval on every CPU (the fitted means differ in the last bits between
            # numpy's SIMD kernels, and a mean of 1e-17 instead of 0 used to shift every
            # later Poisson draw)
            yb = poisson_counts(np.clip(f, 0, None), rng, what="bootstrap means")
        elif prob.sigma is not None:
            yb = f + rng.normal(0, prob.sigma)
        else:
            yb = f + rng.choice(res, size=f.size, replace=True)
        if prob.cumulative:
            yb = yb.copy()
            yb[1:] *= prob.sign
            yb = np.cumsum(yb)
        pb = _Problem(prob.model, prob.x, yb, prob.sigma, prob.lik, prob.cumulative)
        p, nll, _ = pb.solve(p_hat)
        if np.isfinite(nll):
            out.append(p)
    arr = np.asarray(out)
    a = (1 - level) / 2
    return np.quantile(arr, a, axis=0), np.quantile(arr, 1 - a, axis=0)


@_blas1
def compare_models(
    x: Any,
    y: Any,
    models: Sequence[str | KineticModel] | str,
    *,
    criterion: str = "aicc",
    **fit_kw: Any,
) -> tuple[pd.DataFrame, dict[str, FitResult]]:
    """Fit several models to the same data and rank them.

    Parameters
    ----------
    x, y : array_like
        Data as for :func:`fit_model`.
    models : sequence of str/KineticModel, or a process name
        Models to compare; a process name (``"br_loss"``, ``"nucleation"``, ``"growth"``,
        ``"coalescence"``) selects every model of that process.
    criterion : {"aic", "aicc", "bic"}
        Criterion for ``selected`` and the Akaike weights.
    **fit_kw
        Passed to :func:`fit_model`.

    Returns
    -------
    table : DataFrame
        ``model, process, n_params, loglik, aic, aicc, bic, delta, weight, selected,
        mechanism, status`` sorted by the criterion.  A model whose fit fails for a numeric
        reason (non-finite likelihood, overflow, singular matrix ...) is kept as a row at
        the end with NaN criteria, weight 0 and ``status = "failed: <reason>"`` (also in
        ``table.attrs['failed']``); the others are still compared.
    fits : dict[str, FitResult]
        The successful fits.

    Raises
    ------
    DataError
        When no model could be fitted.
    ParameterError
        Bad options (these are not per-model failures).
    """
    refuse_text_numbers(locals())
    check_choice("criterion", criterion, ("aic", "aicc", "bic"))
    if isinstance(models, str):
        procs = {m.process for m in MODELS.values()}
        check_choice("models", models, procs)
        models = [m for m in MODELS.values() if m.process == models]
    fits: dict[str, FitResult] = {}
    failed: dict[str, str] = {}
    kinds = {}
    for mm in models:
        m = _model(mm)
        kinds[m.name] = m
        try:
            fits[m.name] = fit_model(x, y, m, **fit_kw)
        except ParameterError:
            raise  # a bad option is the caller's error, the same for every model
        except (DataError, ArithmeticError, ValueError, np.linalg.LinAlgError, RuntimeError) as exc:
            # a model that cannot be fitted (non-finite likelihood, singular Jacobian,
            # overflow ...) is reported as failed; the comparison goes on with the others
            failed[m.name] = f"{type(exc).__name__}: {exc}"
    if not fits:
        # one reason per model, readable in a report row (a DataError names the model)
        why = "; ".join(
            v.removeprefix("DataError: ") if f"'{k}'" in v else f"{k}: {v}"
            for k, v in failed.items()
        )
        raise DataError(f"no model could be fitted ({why})")
    rows = [
        {
            "model": r.model,
            "process": kinds[r.model].process,
            "n_params": r.n_params,
            "loglik": r.loglik,
            "aic": r.aic,
            "aicc": r.aicc,
            "bic": r.bic,
            "mechanism": kinds[r.model].mechanism,
            "status": "ok",
        }
        for r in fits.values()
    ]
    t = pd.DataFrame(rows)
    # infinite AICc (too few points for the parameters) ranks last with weight 0
    crit = t[criterion].to_numpy(float)
    if np.isfinite(crit).any():
        t["delta"] = crit - crit[np.isfinite(crit)].min()
        w = np.where(np.isfinite(t["delta"]), np.exp(-0.5 * t["delta"].to_numpy()), 0.0)
        t["weight"] = w / w.sum()
    else:  # e.g. AICc with too few points for every model: weights undefined
        t["delta"] = np.nan
        t["weight"] = np.nan
    t = t.sort_values(criterion, kind="stable").reset_index(drop=True)
    t["selected"] = False
    t.loc[0, "selected"] = True
    if failed:  # failed models stay in the table (NaN criteria, weight 0, status = reason)
        fail = pd.DataFrame(
            [
                {
                    "model": name,
                    "process": kinds[name].process,
                    "n_params": len(kinds[name].param_names),
                    "mechanism": kinds[name].mechanism,
                    "status": f"failed: {why}",
                    "weight": 0.0,
                    "selected": False,
                }
                for name, why in failed.items()
            ]
        )
        t = pd.concat([t, fail], ignore_index=True)
    cols = [
        "model",
        "process",
        "n_params",
        "loglik",
        "aic",
        "aicc",
        "bic",
        "delta",
        "weight",
        "selected",
        "mechanism",
        "status",
    ]
    t = t[cols]
    t.attrs["criterion"] = criterion
    t.attrs["failed"] = failed
    return t, fits


def fit_arrhenius(
    temperature_K: Any,
    rate: Any,
    *,
    rate_err: Any = None,
    level: float = 0.95,
    ci: str = "profile",
    rng: Any = None,
) -> FitResult:
    """Arrhenius fit ``k = A·exp(−Ea/(k_B·T))`` of rates measured at several temperatures.

    Fitted as ``ln k = ln A − Ea·(1/(k_B·T))`` by weighted least squares (σ_ln k = σ_k/k when
    ``rate_err`` is given, else profiled), with profile-likelihood intervals.

    Parameters
    ----------
    temperature_K : (n,) array_like
        Temperatures, K (> 0).
    rate : (n,) array_like
        Rate constants (> 0) in any unit.
    rate_err : (n,) array_like, optional
        Standard errors of the rates.

    Returns
    -------
    FitResult
        Parameters ``ln_A`` and ``Ea_eV``; ``extra['A']`` holds the prefactor.
    """
    refuse_text_numbers(locals())
    t = np.asarray(temperature_K, float).ravel()
    k = np.asarray(rate, float).ravel()
    if t.shape != k.shape:
        raise DataError(f"`temperature_K` and `rate` differ in length: {t.size} vs {k.size}")
    if np.any(~np.isfinite(t)) or np.any(t <= 0):
        raise DataError(f"`temperature_K` must be finite and > 0 K, got {t.tolist()}")
    if np.any(~np.isfinite(k)) or np.any(k <= 0):
        raise DataError(f"`rate` must be finite and > 0, got {k.tolist()}")
    if np.unique(t).size < 2:
        raise DataError("an Arrhenius fit needs at least two distinct temperatures")
    if t.max() < CELSIUS_SUSPECT_BELOW_K:
        # Room-temperature and heating runs written in °C (20–150) read as a cryo series in
        # K and give an Ea several times too small; a real cryo series is possible, so warn.
        warnings.warn(
            f"`temperature_K` all below {CELSIUS_SUSPECT_BELOW_K:g} K "
            f"(range {t.min():g}–{t.max():g}): if these are °C, add 273.15",
            UserWarning,
            stacklevel=2,
        )
    sig = None
    if rate_err is not None:
        e = np.asarray(rate_err, float).ravel()
        if e.shape != k.shape or np.any(~np.isfinite(e)) or np.any(e <= 0):
            raise DataError("`rate_err` must be finite and > 0, one per rate")
        sig = e / k
    beta = 1.0 / (K_B_EV_PER_K * t)
    model = KineticModel(
        "arrhenius",
        lambda b, lna, ea: lna - ea * b,
        ("ln_A", "Ea_eV"),
        lambda b, y: list(np.polyfit(-b, y, 1)[::-1]),
        ([-_INF, -_INF], [_INF, _INF]),
        "temperature",
        "Arrhenius (thermally activated) rate",
    )
    r = fit_model(beta, np.log(k), model, sigma=sig, ci=ci, level=level, rng=rng)
    return dataclasses.replace(r, extra={"A": float(np.exp(r.params["ln_A"]))})


def fit_dose_rate_dependence(
    dose_rate_e_per_A2_s: Any,
    rate_per_s: Any,
    *,
    rate_err: Any = None,
    level: float = 0.95,
) -> tuple[pd.DataFrame, dict[str, FitResult]]:
    """Is a process dose-controlled or time-controlled?

    Compares ``J_t = J_D·φ`` (rate per second proportional to dose rate: constant yield per
    dose), ``J_t = J_0`` (independent of dose rate: thermal) and ``J_t = c·φ^α`` (free
    exponent), in log space.

    Parameters
    ----------
    dose_rate_e_per_A2_s : (n,) array_like
        Dose rates φ, e⁻/Å²/s (> 0, at least two distinct values).
    rate_per_s : (n,) array_like
        Measured rates per second (> 0).
    rate_err : (n,) array_like, optional
        Standard errors of the rates.

    Returns
    -------
    table, fits
        As :func:`compare_models` (models ``dose_controlled``, ``time_controlled``,
        ``power_law``; parameters ``ln_J_D``, ``ln_J0``, ``ln_c`` and ``alpha``).
    """
    refuse_text_numbers(locals())
    phi = np.asarray(dose_rate_e_per_A2_s, float).ravel()
    j = np.asarray(rate_per_s, float).ravel()
    if phi.shape != j.shape:
        raise DataError(f"`dose_rate_e_per_A2_s` and `rate_per_s` differ: {phi.size} vs {j.size}")
    if np.any(~np.isfinite(phi)) or np.any(phi <= 0) or np.unique(phi).size < 2:
        raise DataError("`dose_rate_e_per_A2_s` must be > 0 with at least two distinct values")
    if np.any(~np.isfinite(j)) or np.any(j <= 0):
        raise DataError(f"`rate_per_s` must be finite and > 0, got {j.tolist()}")
    sig = None
    if rate_err is not None:
        e = np.asarray(rate_err, float).ravel()
        if e.shape != j.shape or np.any(~np.isfinite(e)) or np.any(e <= 0):
            raise DataError("`rate_err` must be finite and > 0, one per rate")
        sig = e / j
    lp = np.log(phi)
    mods = [
        KineticModel(
            "dose_controlled",
            lambda u, a: a + u,
            ("ln_J_D",),
            lambda u, y: [float(np.mean(y - u))],
            ([-_INF], [_INF]),
            "dose_rate",
            "dose-controlled: constant yield per e⁻/Å² (radiolysis)",
        ),
        KineticModel(
            "time_controlled",
            lambda u, a: np.full_like(u, a),
            ("ln_J0",),
            lambda u, y: [float(np.mean(y))],
            ([-_INF], [_INF]),
            "dose_rate",
            "time-controlled: independent of dose rate (thermal)",
        ),
        KineticModel(
            "power_law",
            lambda u, a, al: a + al * u,
            ("ln_c", "alpha"),
            lambda u, y: list(np.polyfit(u, y, 1)[::-1]),
            ([-_INF, -_INF], [_INF, _INF]),
            "dose_rate",
            "power law in dose rate",
        ),
    ]
    return compare_models(lp, np.log(j), mods, sigma=sig, level=level)
