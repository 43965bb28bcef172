"""Library-free atom counting with a smooth *ladder* mixture of cross-sections.

The scattering cross-sections (SCS) of columns of ``n = n_0 ... n_0 + K - 1`` atoms are
modelled as a mixture of ``K`` Gaussians whose

* means lie on a ladder with a slowly varying step, ``mu_k = sum_p b_p (k / (K-1))^p +
  c exp(-k / bend)`` (degree ``mean_degree``, default 2; the decaying term follows the
  shorter first steps of a heavy column, where channelling builds up: SCS(n) is not linear
  in n, De Backer et al., Ultramicroscopy 134 (2013) 23);
* log-variances are a polynomial in ``k`` (degree ``width_degree``, default 2: Poisson and
  fit noise grow with the thickness);
* weights are ``softmax`` of a polynomial in ``k`` (degree ``weight_degree``, default 4: a
  smooth distribution of column lengths).

The parameter count does not grow with ``K``: unlike the free-weight mixture of StatSTEM
(Van Aert et al., PRB 87 (2013) 064107), where each extra level costs a mean and a weight
in ICL/BIC and neighbouring levels are merged when they overlap or hold few columns, a comb
with the right step is rewarded here.  ``K`` is chosen by BIC (Schwarz, Ann. Stat. 6 (1978)
461) among fits that pass an over-split guard (median width over local step, no
near-empty level between occupied ones, no step much below the median).  The count of the lowest level ``n_0`` is not
identified by any library-free mixture; it is taken from the ratio of the lowest mean to the
median step (the first atoms of a heavy column add 0.6-0.75 of a later step), see
:func:`fit_ladder`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from perovstem.atoms.count import _PosteriorMixin
from perovstem.errors import ParameterError

__all__ = [
    "LadderFit",
    "LadderSweep",
    "fit_ladder",
    "ladder_sweep",
]  # count_ladder: via count_atoms


@dataclass(frozen=True)
class LadderFit(_PosteriorMixin):
    """One fitted smooth ladder mixture (levels sorted by mean).

    Attributes
    ----------
    n_levels : int
        Number of levels ``K``.
    means, widths, proportions : ndarray, shape (K,)
        Level means and standard deviations (SCS units) and weights.
    nll, entropy : float
        Negative log-likelihood and posterior classification entropy at the optimum.
    n_params : int
        Free parameters (means, log-variance and weight coefficients).
    n_columns : int
    n_iter : int
    converged : bool
    first_count : int
        Atoms of the lowest level (estimated, or given).
    resolution : float
        Median over levels of width / local step (the over-split guard's measure).
    empty_interior : int
        Levels holding fewer than ``min_occupancy`` columns (sum of posterior
        probabilities) between two that hold 5 or more each.
    min_step : float
        Smallest step over the median step (-1 when the means do not increase).
    """

    n_levels: int
    means: np.ndarray
    widths: np.ndarray
    proportions: np.ndarray
    nll: float
    entropy: float
    n_params: int
    n_columns: int
    n_iter: int
    converged: bool
    first_count: int
    resolution: float
    empty_interior: int
    min_step: float = 1.0

    @property
    def bic(self) -> float:
        """Bayesian information criterion ``2 NLL + p ln N``."""
        return 2 * self.nll + self.n_params * np.log(self.n_columns)

    @property
    def icl(self) -> float:
        """Integrated classification likelihood (BIC-type) ``2 NLL + 2 EN + p ln N``."""
        return self.bic + 2 * self.entropy

    @property
    def counts(self) -> np.ndarray:
        """Atoms of each level, ``first_count + k``."""
        return self.first_count + np.arange(self.n_levels)

    def log_posterior(self, scs: Any) -> np.ndarray:
        """Log posterior level probabilities, shape (N, K)."""
        x = np.asarray(scs, dtype=float).ravel()
        lj = _log_joint(x, self.means, self.widths, self.proportions)
        m = lj.max(axis=1, keepdims=True)
        return lj - (m + np.log(np.exp(lj - m).sum(axis=1, keepdims=True)))


@dataclass(frozen=True)
class LadderSweep:
    """Ladder fits for ``K = 1 ... max_levels``, the BIC table and the choice.

    Attributes
    ----------
    fits : list of LadderFit
    table : DataFrame
        One row per ``K``: ``n_levels, nll, bic, icl, resolution, empty_interior, min_step,
        first_count, guard_ok``.
    selected : int
        The chosen ``K``: lowest BIC among fits that pass the over-split guard.
    rule : str
    """

    fits: list[LadderFit]
    table: pd.DataFrame
    selected: int
    rule: str = field(default="")

    def fit(self, k: int) -> LadderFit:
        """The fit with ``k`` levels."""
        for f in self.fits:
            if f.n_levels == k:
                return f
        raise ParameterError(f"`n_levels` = {k!r} was not fitted")


def _log_joint(x: np.ndarray, mu: np.ndarray, sd: np.ndarray, pi: np.ndarray) -> np.ndarray:
    z = (x[:, None] - mu[None, :]) / sd[None, :]
    with np.errstate(divide="ignore"):
        return np.log(pi)[None, :] - 0.5 * z * z - np.log(sd)[None, :] - 0.5 * np.log(2 * np.pi)


def _first_count(mu: np.ndarray, zero_count: float) -> int:
    """Atoms of the lowest level: ``n_0 = round(mu_0 / d + zero_count)``, ``d`` the median step.

    A straight ladder with the median step through the lowest level reaches zero SCS at
    ``zero_count`` atoms: the first atoms of a heavy column add less than a full step
    (channelling).
    """
    if mu.size < 2:
        return 1
    d = float(np.median(np.diff(mu)))
    if not d > 0:
        return 1
    return max(1, int(np.floor(mu[0] / d + zero_count + 0.5)))


def _guard(mu, sd, occupancy, min_occupancy, full):
    """Resolution (median width / local step), empty interior levels (posterior occupancy
    below ``min_occupancy`` columns with both neighbours holding ``full`` or more), smallest
    step / median step (negative when the means are not increasing)."""
    k = mu.size
    if k < 2:
        return 0.0, 0, 1.0
    d = np.diff(mu)
    if not np.all(d > 0):
        return np.inf, 0, -1.0
    loc = np.concatenate([[d[0]], 0.5 * (d[:-1] + d[1:]), [d[-1]]])
    res = float(np.median(sd / loc))
    o = np.asarray(occupancy, float)
    empty = 0
    if k >= 3:
        nb = np.minimum(o[:-2], o[2:])
        empty = int(np.sum((o[1:-1] < min_occupancy) & (nb >= full)))
    return res, empty, float(d.min() / np.median(d))


class _Std:
    def __init__(self, x: np.ndarray) -> None:
        self.x = x
        self.loc = float(np.mean(x))
        sd = float(np.std(x))
        self.scale = sd if sd > 0 else max(abs(self.loc), 1.0)
        self.z = (x - self.loc) / self.scale
        self.w = np.ones_like(self.z)


def _starts(z: np.ndarray, k: int, vq: int, wq: int, prev: tuple | None = None):
    """Starting means, log-variance and weight coefficients, shape (C, k), (C, vq), (C, wq).

    Ladders between data quantiles, straight and with shortened first steps (the
    channelling bend), each with equal widths and with variance growing with the level
    (Poisson-like); plus the ``k - 1`` solution extended by one level at either end.
    """
    if k == 1:
        mu = np.array([[float(np.mean(z))]])
        gam = np.zeros((1, vq))
        gam[0, 0] = np.log(max(float(np.var(z)), 1e-6))
        return mu, gam, np.zeros((1, wq))
    j = np.arange(k, dtype=float)
    shapes = [j, j - (1.0 - np.exp(-j / 2.0))]
    lads, steps = [], []
    for q in [(0.0, 1.0), (0.01, 0.99)]:
        lo, hi = np.quantile(z, q)
        for u in shapes:
            lads.append(lo + (hi - lo) * u / u[-1])
            steps.append((hi - lo) / u[-1])
    lads, steps = np.array(lads), np.array(steps)
    gam = np.zeros((2 * len(lads), vq))
    gam[:, 0] = np.tile(np.log(np.maximum(steps / 3, 1e-3) ** 2), 2)
    if vq > 1:
        gam[len(lads) :, 1] = 0.5 * np.log(k + 1.0)
    mu = np.concatenate([lads, lads])
    if prev is not None and prev[0].size == k - 1 and k >= 3:
        pm, pg = prev
        d = np.diff(pm)
        up = np.concatenate([pm, [pm[-1] + d[-1]]])
        down = np.concatenate([[pm[0] - d[0]], pm])
        g = np.zeros(vq)
        g[0] = np.log(max(float(np.median(pg)) ** 2, 1e-6))
        mu = np.concatenate([mu, up[None], down[None]])
        gam = np.concatenate([gam, g[None], g[None]])
    return mu, gam, np.zeros((mu.shape[0], wq))


def _degrees(k: int, mean_degree: int, width_degree: int, weight_degree: int):
    md = min(mean_degree, k - 1)
    vq = min(width_degree, k - 1) + 1
    wq = min(weight_degree, k - 1) + 1
    return md, vq, wq


def _mean_basis(k: int, degree: int, bend: float) -> np.ndarray:
    """Basis of the level means: ``(j / (K-1))^p``, p <= degree, and ``exp(-j / bend)``.

    The decaying term is the channelling deficit of the first atoms of a heavy column (the
    first steps of SCS(n) are ~0.6-0.7 of the later ones over a few atoms, a bend that a
    low-degree polynomial over 10-30 levels does not follow); ``bend = 0`` leaves it out.
    """
    j = np.arange(k, dtype=float)
    t = j / max(k - 1, 1)
    cols = [t**p for p in range(degree + 1)]
    if bend > 0 and k > degree + 2:
        cols.append(np.exp(-j / bend))
    return np.ascontiguousarray(np.stack(cols, axis=1)[:, : max(1, min(len(cols), k))])


def _fit_k(
    data, k, degrees, *, max_iter, tol, burn_in, n_newton, min_logvar, bend, n_keep=2, prev=None
):
    from perovstem.atoms._ladder_numba import ladder_em_batch

    md, vq, wq = _degrees(k, *degrees)
    phim = _mean_basis(k, md, bend)
    mu0, g0, b0 = _starts(data.z, k, vq, wq, prev)
    shift = float(data.w.sum() * np.log(data.scale))
    args = (phim, burn_in, tol, min_logvar, shift, n_newton)
    if mu0.shape[0] > n_keep:
        mu, _, _, g, b, nll, _, _ = ladder_em_batch(data.z, data.w, mu0, g0, b0, *args)
        i = np.argsort(np.where(np.isfinite(nll), nll, np.inf))[:n_keep]
        mu0, g0, b0 = mu[i], g[i], b[i]
    mu, lv, pi, _, _, nll, it, cv = ladder_em_batch(
        data.z, data.w, mu0, g0, b0, phim, max_iter, tol, min_logvar, shift, n_newton
    )
    n_par = min(phim.shape[1], k) + vq + (wq - 1)
    i = int(np.nanargmin(nll))
    o = np.argsort(mu[i])
    with np.errstate(over="ignore", invalid="ignore"):  # a degenerate start (nll inf)
        z_fit = (mu[i][o], np.exp(0.5 * lv[i][o]))
        mu = mu[i] * data.scale + data.loc
        sd = np.exp(0.5 * lv[i]) * data.scale
    return mu, sd, pi[i], float(nll[i] + shift), n_par, int(it[i]), bool(cv[i]), z_fit


def _make(x, mu, sd, pi, n_par, it, cv, *, first_count, zero_count, min_occupancy):
    order = np.argsort(mu, kind="stable")
    mu, sd, pi = mu[order], sd[order], pi[order]
    lj = _log_joint(x, mu, sd, pi)
    m = lj.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(lj - m).sum(axis=1))
    lt = lj - lse[:, None]
    fin = np.isfinite(lt)
    ent = -float(np.sum(np.exp(lt[fin]) * lt[fin]))
    res, empty, dmin = _guard(mu, sd, np.exp(lt).sum(axis=0), min_occupancy, 5.0)
    fc = _first_count(mu, zero_count) if first_count is None else int(first_count)
    return LadderFit(
        n_levels=int(mu.size),
        means=mu,
        widths=sd,
        proportions=pi,
        nll=float(-lse.sum()),
        entropy=ent,
        n_params=int(n_par),
        n_columns=int(x.size),
        n_iter=it,
        converged=cv,
        first_count=fc,
        resolution=res,
        empty_interior=empty,
        min_step=dmin,
    )


def _check_deg(name: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
        raise ParameterError(f"`{name}` must be an integer {lo}-{hi}, got {v!r}")
    return int(v)


def _check_degrees(mean_degree: Any, width_degree: Any, weight_degree: Any) -> tuple[int, ...]:
    """Polynomial degrees of the means, log-widths and weights, checked."""
    return (
        _check_deg("mean_degree", mean_degree, 0, 3),
        _check_deg("width_degree", width_degree, 0, 3),
        _check_deg("weight_degree", weight_degree, 0, 6),
    )


def _check_first(first_count: Any) -> int | None:
    if first_count is None:
        return None
    if isinstance(first_count, bool) or not isinstance(first_count, (int, np.integer)):
        raise ParameterError(f"`first_count` must be None or an integer >= 0, got {first_count!r}")
    if first_count < 0:
        raise ParameterError(f"`first_count` must be None or an integer >= 0, got {first_count!r}")
    return int(first_count)


def fit_ladder(
    scs: Any,
    n_levels: int,
    *,
    mean_degree: int = 2,
    width_degree: int = 2,
    weight_degree: int = 4,
    first_count: int | None = None,
    zero_count: float = 0.45,
    bend: float = 2.0,
    min_occupancy: float = 0.5,
    max_iter: int = 500,
    tol: float = 1e-7,
) -> LadderFit:
    """Fit a smooth ladder mixture with ``n_levels`` levels by EM.

    Parameters
    ----------
    scs : array_like, shape (N,)
        Cross-sections of one column type (any unit), finite and >= 0.
    n_levels : int
        Number of levels ``K >= 1`` (may exceed ``N / 2``: the parameter count is fixed).
    mean_degree, width_degree, weight_degree : int
        Polynomial degrees (in the level index) of the means (0-3), of the log-variances
        (0-3) and of the log-weights (0-6); each is clipped to ``K - 1``.
    first_count : int, optional
        Atoms of the lowest level.  Default: estimated as ``round(mu_0 / d + zero_count)``
        with ``d`` the median step (no library-free mixture identifies it for certain).
    zero_count : float
        Count at which a straight ladder with the median step through the lowest level
        reaches zero SCS.  0.45 reads a linear ladder through zero (SCS = n d) and one whose
        first atom gives 0.55-1 of a step (0.6-0.75 in our abTEM table, 0.71 in StatSTEM's
        Pt/Ir library) right for a lowest level of 1 or 2 atoms.  Over the first 3-5 atoms of a
        heavy column the deficit grows (fast-model Pb: SCS(n) ~ d (n - 1.1)), so a lowest
        level of 3 or more atoms may be read one low (0.7 gained 2 correct runs of 108 on
        the tune seeds of ``benchmarks/bench_count_ladder.py`` and misreads a linear ladder).
    bend : float
        Decay length (levels) of the channelling term of the means; 0 for none.
    min_occupancy : float
        A level holding fewer columns than this (sum of posterior probabilities) between two
        that hold 5 or more each counts as empty for the over-split guard
        (:attr:`LadderFit.empty_interior`; the smooth weights cannot vanish on a level, the
        data can).  A count that is truly absent between well-filled ones (a particle with
        only odd Cs columns) is read as an over-split: use a library there.
    max_iter, tol : int, float
        EM stops after ``max_iter`` iterations or at a relative NLL change below ``tol``.

    Returns
    -------
    LadderFit
    """
    from perovstem.atoms.count import _as_scs

    x = _as_scs(scs)
    k = _check_deg("n_levels", n_levels, 1, 10_000)
    degrees = _check_degrees(mean_degree, width_degree, weight_degree)
    fc = _check_first(first_count)
    data = _Std(x)
    mu, sd, pi, _, n_par, it, cv, _ = _fit_k(
        data,
        k,
        degrees,
        max_iter=max_iter,
        tol=tol,
        burn_in=30,
        n_newton=2,
        min_logvar=np.log(1e-12),
        bend=bend,
    )
    return _make(
        x,
        mu,
        sd,
        pi,
        n_par,
        it,
        cv,
        first_count=fc,
        zero_count=zero_count,
        min_occupancy=min_occupancy,
    )


def ladder_sweep(
    scs: Any,
    *,
    max_levels: int = 30,
    mean_degree: int = 2,
    width_degree: int = 2,
    weight_degree: int = 4,
    first_count: int | None = None,
    zero_count: float = 0.45,
    bend: float = 2.0,
    max_resolution: float = 0.5,
    min_step: float = 0.4,
    min_occupancy: float = 0.5,
    min_width: float | None = None,
    max_iter: int = 500,
    tol: float = 1e-7,
) -> LadderSweep:
    """Fit ladders for ``K = 1 ... max_levels`` and choose ``K`` by BIC with an over-split guard.

    The guard rejects a fit

    * whose median width / local step exceeds ``max_resolution`` (levels less than two
      widths apart are not resolved: a finer ladder describes the same smooth density);
    * with a near-empty level (fewer than ``min_occupancy`` columns) between two
      well-filled ones (a comb at a fraction of the true step);
    * whose smallest step is below ``min_step`` times the median step, or whose means do
      not increase (a level squeezed in between two others);
    * whose median level width is below ``min_width`` (SCS units; ``count_atoms`` passes
      half the median ``scs_err`` of the type): a count level cannot be narrower than the
      precision of each column's own cross-section, so such levels resolve the noise (25
      columns of one thickness, 5 atoms, were read as a 19-level comb counting 134-147);
    * whose likelihood is not finite (a degenerate start).

    ``K = 1`` always passes.  See :func:`fit_ladder` for the other parameters.

    Returns
    -------
    LadderSweep
    """
    from perovstem.atoms.count import _as_scs

    x = _as_scs(scs)
    kmax = _check_deg("max_levels", max_levels, 1, 10_000)
    degrees = _check_degrees(mean_degree, width_degree, weight_degree)
    fc = _check_first(first_count)
    data = _Std(x)
    fits = []
    prev = None
    for k in range(1, kmax + 1):
        mu, sd, pi, _, n_par, it, cv, prev = _fit_k(
            data,
            k,
            degrees,
            max_iter=max_iter,
            tol=tol,
            burn_in=30,
            n_newton=2,
            min_logvar=np.log(1e-12),
            bend=bend,
            prev=prev,
        )
        fits.append(
            _make(
                x,
                mu,
                sd,
                pi,
                n_par,
                it,
                cv,
                first_count=fc,
                zero_count=zero_count,
                min_occupancy=min_occupancy,
            )
        )
    if min_width is not None and not (np.isfinite(min_width) and min_width >= 0):
        from perovstem.errors import ParameterError

        raise ParameterError(f"`min_width` must be a finite number >= 0, got {min_width!r}")
    ok = [
        f.n_levels == 1
        or (
            np.isfinite(f.bic)
            and f.resolution <= max_resolution
            and f.empty_interior == 0
            and f.min_step >= min_step
            and (min_width is None or float(np.median(f.widths)) >= min_width)
        )
        for f in fits
    ]
    table = pd.DataFrame(
        {
            "n_levels": [f.n_levels for f in fits],
            "nll": [f.nll for f in fits],
            "bic": [f.bic for f in fits],
            "icl": [f.icl for f in fits],
            "resolution": [f.resolution for f in fits],
            "empty_interior": [f.empty_interior for f in fits],
            "min_step": [f.min_step for f in fits],
            "first_count": [f.first_count for f in fits],
            "guard_ok": ok,
        }
    )
    cand = table[table["guard_ok"]]
    sel = int(cand["n_levels"].iloc[int(np.argmin(cand["bic"].to_numpy()))])
    rule = (
        f"lowest BIC among ladders with width / step <= {max_resolution:g}, no empty "
        f"interior level and steps >= {min_step:g} of the median"
    )
    return LadderSweep(fits, table, sel, rule)


_MIN_COLUMNS = 20  # twice the largest parameter count (3 + 1 mean, 3 width, 4 weight)


def _min_width(err: np.ndarray) -> float | None:
    """Half the median standard error of the columns' cross-sections (None if unknown)."""
    e = err[np.isfinite(err) & (err > 0)]
    return 0.5 * float(np.median(e)) if e.size else None


def count_ladder(
    df: pd.DataFrame,
    x: np.ndarray,
    types: np.ndarray,
    *,
    n_levels: int | dict[str, int] | None,
    max_levels: int | dict[str, int],
    first_count: int | None,
) -> pd.DataFrame:
    """Counts per column type from :func:`ladder_sweep` (``count_atoms(method="ladder")``).

    Returns a copy of ``df`` with ``n_atoms``, ``p_n_atoms``, ``n_atoms_mean``,
    ``n_atoms_std`` and ``component`` and ``attrs["counting"]`` per type (``method``
    ``"ladder"``, the levels, widths, weights, first count, the BIC table and the rule).
    Warns when the chosen ladder has a single level (no ladder resolved: the counts are
    then ``first_count`` for every column).
    """
    import warnings

    out = df.copy()
    n_atoms = np.zeros(x.size, dtype=np.int64)
    p_map = np.zeros(x.size)
    mean = np.zeros(x.size)
    std = np.zeros(x.size)
    comp = np.zeros(x.size, dtype=np.int64)
    info: dict[str, Any] = {}
    err = df["scs_err"].to_numpy(float) if "scs_err" in df.columns else None
    for typ in pd.unique(types):
        sel = types == typ
        xs = x[sel]
        if xs.size < _MIN_COLUMNS:
            from perovstem.errors import DataError

            raise DataError(
                f"count_atoms(method='ladder'): type {str(typ)!r} has {xs.size} columns; the "
                f"ladder mixture has up to 11 parameters and needs at least {_MIN_COLUMNS} "
                "columns per type (use method='gmm' or a library)"
            )
        kfix = n_levels.get(typ) if isinstance(n_levels, dict) else n_levels
        if kfix is not None:
            fit = fit_ladder(xs, int(kfix), first_count=first_count)
            sweep, rule = None, "fixed by user"
        else:
            kmax = max_levels.get(typ, 30) if isinstance(max_levels, dict) else max_levels
            sweep = ladder_sweep(
                xs,
                max_levels=int(kmax),
                first_count=first_count,
                min_width=None if err is None else _min_width(err[sel]),
            )
            fit, rule = sweep.fit(sweep.selected), sweep.rule
            if fit.n_levels == 1 and xs.size > 1:
                warnings.warn(
                    f"count_atoms(method='ladder'), type {str(typ)!r}: no ladder of count "
                    "levels passes the over-split guard (one thickness only, or noise too high for "
                    "the step?); every column gets the same count, which a ladder cannot "
                    "determine - use a simulated library (library=...)",
                    UserWarning,
                    stacklevel=3,
                )
        post = fit.posterior(xs)
        c = np.argmax(post, axis=1)
        counts = fit.counts
        n_atoms[sel] = counts[c]
        comp[sel] = c
        p_map[sel] = post[np.arange(xs.size), c]
        m = post @ counts
        mean[sel] = m
        std[sel] = np.sqrt(np.maximum(post @ (counts**2) - m**2, 0.0))
        info[str(typ)] = {
            "n_components": fit.n_levels,
            "means": fit.means.tolist(),
            "widths": fit.widths.tolist(),
            "width": float(np.median(fit.widths)),
            "proportions": fit.proportions.tolist(),
            "first_count": int(fit.first_count),
            "first_count_estimated": first_count is None,
            "resolution": fit.resolution,
            "criterion": "bic",
            "rule": rule,
            "ladder_check": None,
            "library_anchor": None,
            "criterion_curve": (
                {}
                if sweep is None
                else {k: sweep.table[k].tolist() for k in ("n_levels", "bic", "nll", "guard_ok")}
            ),
        }
    out["n_atoms"] = n_atoms
    out["p_n_atoms"] = p_map
    out["n_atoms_mean"] = mean
    out["n_atoms_std"] = std
    out["component"] = comp
    out.attrs = dict(df.attrs)
    out.attrs["counting"] = {"method": "ladder", **info}
    return out
