"""Library-free counting with the smooth ladder mixture (``count_atoms(method="ladder")``).

The simulated images come from the fast HAADF model (metallic Pb columns, Poisson noise),
measured by ``fit_columns`` (``_pb_columns`` of ``test_count_ladder``): the SCS are not drawn
from the mixture that is fitted.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from perovstem.atoms import count_atoms
from perovstem.atoms.ladder import fit_ladder, ladder_sweep
from perovstem.errors import ParameterError

from .test_count_ladder import _pb_columns


def _count(x, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return count_atoms(x, **kw)


def test_ladder_resolves_levels_that_icl_merges():
    # 300 columns of 1-20 atoms at 1e4 e/Å² (SCS noise 0.1-0.45 of a step): ICL keeps 4
    # components (23 % of the atoms); the ladder finds the 20 levels.  The image
    # realisation depends on the CPU's numeric kernels: AVX-512 20 levels, 91 % exact,
    # total 1.002; AVX2 kernels 19 levels (two top levels joined), 83 % exact, total 0.990
    x, n = _pb_columns(31, 300, 20, 1e4)
    old = _count(x)
    assert old["n_atoms"].sum() < 0.3 * n.sum()
    res = _count(x, method="ladder")
    info = res.attrs["counting"]
    assert info["method"] == "ladder"
    assert info["all"]["n_components"] in (19, 20) and info["all"]["first_count"] == 1
    assert info["all"]["first_count_estimated"]
    c = res["n_atoms"].to_numpy()
    assert np.mean(c == n) > 0.8
    assert abs(c.sum() / n.sum() - 1) < 0.02
    # posterior summaries as for the GMM
    assert np.allclose(res["n_atoms_mean"], c, atol=1.0)
    assert (res["p_n_atoms"] > 0).all() and (res["p_n_atoms"] <= 1).all()
    # a given first count is used as is
    fixed = _count(x, method="ladder", first_count=3)
    assert fixed.attrs["counting"]["all"]["first_count"] == 3
    assert np.array_equal(fixed["n_atoms"].to_numpy(), c + 2)


def test_ladder_recovers_a_heteroscedastic_ladder():
    # levels with a channelling bend, widths growing with the count, smooth weights;
    # 6 and 7 atoms rare but present
    rng = np.random.default_rng(3)
    lev = np.arange(1, 15)
    mu = 10.0 * (lev - 0.5 + 0.5 * np.exp(-(lev - 1) / 2.0) - 0.5)
    sd = 0.6 + 0.15 * lev
    p = np.exp(-0.5 * ((lev - 9) / 4.0) ** 2)
    n = rng.choice(lev, 600, p=p / p.sum())
    x = mu[n - 1] + rng.normal(0, sd[n - 1])
    sw = ladder_sweep(x, max_levels=20)
    assert sw.selected == 14
    f = sw.fit(14)
    assert f.first_count == 1
    assert np.allclose(f.means, mu, atol=0.6)
    assert np.allclose(f.widths, sd, rtol=0.3)
    assert np.mean(f.counts[f.classify(x)] == n) > 0.9
    # a ladder at about half the step fits worse (BIC; its widths are 0.4 of its step, so
    # the guard alone would let it through)
    assert fit_ladder(x, 27).bic > f.bic + 10
    # the parameter count does not grow with the number of levels
    assert sw.fit(10).n_params == sw.fit(20).n_params == 3 + 1 + 3 + 4


def test_ladder_guard_rejects_a_comb_at_half_the_step():
    rng = np.random.default_rng(4)
    n = rng.integers(1, 9, 400)
    x = 5.0 * n + rng.normal(0, 0.4, n.size)
    f = fit_ladder(x, 15, first_count=1)  # one level between each pair of true ones
    assert f.empty_interior > 0 or f.min_step < 0.4 or f.resolution > 0.5
    sw = ladder_sweep(x, max_levels=16)
    assert sw.selected == 8
    assert np.array_equal(sw.fit(8).counts[sw.fit(8).classify(x)], n)


def test_ladder_options_are_checked():
    x = np.arange(1.0, 41.0)
    with pytest.raises(ParameterError, match="method"):
        count_atoms(x, method="ladders")
    lib = pd.DataFrame({"n_atoms": np.arange(1, 9), "scs": np.arange(1, 9) * 5.0})
    with pytest.raises(ParameterError, match="library"):
        count_atoms(x, method="ladder", library=lib)
    with pytest.raises(ParameterError, match="equal_spacing"):
        count_atoms(x, method="ladder", equal_spacing=True)
    with pytest.raises(ParameterError, match="first_count"):
        count_atoms(x, method="ladder", first_count=-1)
    with pytest.raises(ParameterError, match="mean_degree"):
        fit_ladder(x, 3, mean_degree=4)
    with pytest.raises(ParameterError, match="n_levels"):
        fit_ladder(x, 0)
    with pytest.raises(ParameterError, match="max_levels"):
        ladder_sweep(x, max_levels=1.5)
    from perovstem.errors import DataError

    with pytest.raises(DataError, match="at least 20 columns"):
        count_atoms(x[:19], method="ladder")
    # the GMM default first count is still 1
    assert count_atoms(x, n_components=2).attrs["counting"]["all"]["first_count"] == 1


def test_cli_count_ladder(tmp_path, capsys):
    from perovstem.cli.main import main
    from perovstem.io import read_table, save_table

    rng = np.random.default_rng(6)
    n = rng.integers(1, 9, 400)
    df = pd.DataFrame({"type": "PbBr", "scs": 5.0 * n + rng.normal(0, 0.4, n.size)})
    src = tmp_path / "cols.parquet"
    save_table(df, src)
    out, crit = tmp_path / "counts.parquet", tmp_path / "bic.csv"
    argv = ["atoms", "count", str(src), "-o", str(out), "--method", "ladder"]
    assert main([*argv, "--max-components", "12", "--criteria-out", str(crit)]) == 0
    res = read_table(out)
    assert res.attrs["counting"]["method"] == "ladder"
    assert np.array_equal(res["n_atoms"].to_numpy(), n)
    assert "PbBr: 400 columns" in capsys.readouterr().out
    assert pd.read_csv(crit)["n_levels"].max() == 12
    # a library-free method with a library: refused, naming both options
    bad = [*argv, "--overwrite", "--library", "simulate"]
    assert main(bad) != 0
    assert "--method ladder" in capsys.readouterr().err


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_thickness_is_not_read_as_a_comb_of_noise_levels(seed):
    """25 columns of one thickness (5-atom Pb-Br columns of a [001] cube, SCS scatter 4 %):
    the BIC sweep chose a 19-level comb whose narrow levels sat on the noise and counted
    134-147 atoms (pipeline seed 1).  Levels narrower than half the columns' own SCS error
    are refused, so no ladder passes: one level, with the warning that a ladder cannot
    count one thickness."""
    rng = np.random.default_rng(seed)
    err = np.full(25, 0.02)
    df = pd.DataFrame({"type": "PbBr", "scs": 0.5 + rng.normal(0, 1, 25) * err, "scs_err": err})
    with pytest.warns(UserWarning, match="one thickness only"):
        res = count_atoms(df, method="ladder")
    assert res["n_atoms"].nunique() == 1
    assert res.attrs["counting"]["PbBr"]["n_components"] == 1
    # a real ladder with the same errors is still resolved
    n = rng.integers(1, 9, 200)
    err = np.full(n.size, 0.02)
    df = pd.DataFrame({"type": "PbBr", "scs": 0.1 * n + rng.normal(0, 1, n.size) * err})
    df["scs_err"] = err
    res = _count(df, method="ladder")
    assert res.attrs["counting"]["PbBr"]["n_components"] == 8
    off = res["n_atoms"].to_numpy() - n  # the levels (the first count is a model matter)
    assert np.mean(off == np.median(off)) > 0.95
    with pytest.raises(ParameterError, match="min_width"):
        ladder_sweep(df["scs"].to_numpy(), min_width=np.nan)


def test_degenerate_ladder_start_is_dropped_not_a_crash():
    """A start whose parameters run to NaN left every component's density at zero and the
    numba E-step divided by it (ZeroDivisionError in the pipeline on a [001] cube); it now
    returns an infinite NLL, which the sweep never selects."""
    from perovstem.atoms._ladder_numba import ladder_em_batch
    from perovstem.atoms.ladder import _mean_basis

    x = np.linspace(-1.0, 1.0, 30)
    mu0 = np.full((1, 3), np.nan)
    g0, b0 = np.zeros((1, 3)), np.zeros((1, 3))
    r = ladder_em_batch(
        x, np.ones_like(x), mu0, g0, b0, _mean_basis(3, 2, 0.0), 20, 1e-7, -20.0, 0.0, 2
    )
    assert np.isinf(r[5][0])
