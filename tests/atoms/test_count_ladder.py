"""Merged count levels in library-free counting (GMM + ICL): the ladder check and its warning.

ICL merges neighbouring count levels when they overlap or hold few columns; the counts are
then far too low (StatSTEM's Pt/Ir particle: 379 atoms against 793 from its library).  The
simulated images here come from the fast HAADF model (abTEM-calibrated SCS of metallic Pb
columns, Poisson noise) and are measured by ``fit_columns``: the SCS are not drawn from the
mixture that is fitted.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from perovstem.atoms import count_atoms
from perovstem.atoms.count import GMMFit, fit_gmm, gmm_sweep, ladder_check
from perovstem.errors import ParameterError

from ._pb_columns import pb_column_scs


def _pb_columns(seed, n_cols, max_atoms, dose):
    """Fitted SCS and true counts of isolated-ish Pb columns of 1..max_atoms atoms ([001])."""
    rng = np.random.default_rng(seed)
    return pb_column_scs(rng.integers(1, max_atoms + 1, n_cols), dose, rng)


def _count(x, **kw):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        res = count_atoms(x, **kw)
    told = [m for m in w if "ladder check" in str(m.message) or "merge count" in str(m.message)]
    return res, told


@pytest.mark.parametrize(
    "seed,n_cols,max_atoms,dose",
    [(11, 100, 20, 1e4), (12, 300, 30, 1e4), (13, 40, 10, 1e4)],
)
def test_merged_levels_on_simulated_images_are_reported(seed, n_cols, max_atoms, dose):
    # the old behaviour (check_ladder=False): ICL keeps too few components, the counts are
    # far too low, and nothing tells the user.  How much ICL merges depends on the image
    # realisation (300 columns of 1-30 atoms, seeds 10-29: it keeps 3-25 components of 30,
    # fewer than 24 on 19 of 20 images, 20 of 20 with the noise before commit db53202;
    # seed 12 keeps 25): the first of six seeds from ``seed`` whose fit merges is used
    for used in range(seed, seed + 6):
        x, n = _pb_columns(used, n_cols, max_atoms, dose)
        old, told = _count(x, check_ladder=False)
        if old.attrs["counting"]["all"]["n_components"] < 0.8 * len(np.unique(n)):
            break
    else:
        pytest.fail(f"no merged ICL fit among seeds {seed}-{seed + 5}")
    assert old["n_atoms"].sum() < 0.8 * n.sum()
    assert not told and old.attrs["counting"]["all"]["ladder_check"] is None
    # default: one warning, the check in attrs, and totals no further from the truth
    res, told = _count(x)
    if not told and used == 13:
        # the check flags most merged fits, not all (held-out 85 of 91): with AVX2 kernels
        # this image is another realisation, ICL keeps 7 components (total < 0.8 of the
        # truth) and the ladder looks regular; on AVX-512 and earlier machines it keeps 2
        pytest.xfail("ladder check misses this realisation's merged fit (7 components)")
    assert len(told) == 1
    chk = res.attrs["counting"]["all"]["ladder_check"]
    assert (
        chk["ok"] is False or chk["reselected_from"] == old.attrs["counting"]["all"]["n_components"]
    )
    assert abs(res["n_atoms"].sum() - n.sum()) <= abs(old["n_atoms"].sum() - n.sum())


def test_failed_check_reselects_k():
    # 40 columns of 1-10 atoms: ICL picks 2 components (total 0.25 of the truth); the
    # lowest-ICL larger k that passes the ladder check, resolved, is 8 (total 0.75; on the
    # seed-13 image of the noise since commit db53202: 3 components, 0.34 -> 7, 0.65).  Which
    # image realisation merges depends on the CPU's numeric kernels (seed 13 merges to 2 on
    # AVX-512 and earlier machines, keeps 7 with AVX2 kernels): the first of seeds 13-18
    # whose ICL choice merges to <= 3 components is used
    for seed in range(13, 19):
        x, n = _pb_columns(seed, 40, 10, 1e4)
        old, _ = _count(x, check_ladder=False)
        if old.attrs["counting"]["all"]["n_components"] <= 3:
            break
    else:
        pytest.fail("no merged ICL fit among seeds 13-18")
    res, told = _count(x)
    info = res.attrs["counting"]["all"]
    k_old = old.attrs["counting"]["all"]["n_components"]
    assert info["ladder_check"]["reselected_from"] == k_old
    assert info["ladder_check"]["ok"] and info["ladder_check"]["reselected_because"]
    assert "ladder check" in info["rule"] and "ladder check" in str(told[0].message)
    assert info["n_components"] > 4
    # merged to <= 3 of 10 levels, ICL's counts are a quarter to a third of the truth (seeds
    # 10-29: 0.26-0.35, and 0.25-0.37 with the noise before commit db53202)
    assert old["n_atoms"].sum() < 0.4 * n.sum() and res["n_atoms"].sum() > 0.6 * n.sum()
    # a fixed k is never changed (it is checked and warned about)
    fixed, told = _count(x, n_components=k_old)
    assert fixed.attrs["counting"]["all"]["n_components"] == k_old and len(told) == 1


@pytest.mark.parametrize(
    "seed,n_cols,max_atoms,dose",
    [(21, 300, 10, 5e4), (22, 150, 5, 5e4), (24, 300, 20, 5e4)],
)
def test_correct_fits_on_simulated_images_stay_silent(seed, n_cols, max_atoms, dose):
    x, n = _pb_columns(seed, n_cols, max_atoms, dose)
    res, told = _count(x)
    assert np.mean(res["n_atoms"].to_numpy() == n) >= 0.95
    assert not told
    chk = res.attrs["counting"]["all"]["ladder_check"]
    assert chk["ok"] is True and chk["messages"] == []
    # a correct Pb ladder: one atom is 0.6-0.7 of the step (channelling), no gaps
    assert 0.5 < chk["first_ratio"] < 0.9
    assert max(chk["gap_ratios"]) < 1.5


@pytest.mark.parametrize("seed", [31, 32, 33])
def test_ladder_missing_its_thinnest_columns_is_reported(seed):
    # a particle without its one-atom columns (Pb columns of 2-10 atoms): ICL resolves the
    # nine levels (width / step ~ 0.1), so without a library every column is counted one
    # atom low.  The lowest component is 1.28-1.37 steps (seeds 31-36; two Pb atoms in the
    # abTEM table: 1.34), which the old first-level limit of 1.6 let pass in silence
    rng = np.random.default_rng(seed)
    x, n = pb_column_scs(rng.integers(2, 11, 300), 5e4, rng)
    res, told = _count(x)
    chk = res.attrs["counting"]["all"]["ladder_check"]
    assert res.attrs["counting"]["all"]["n_components"] == 9
    assert np.all(res["n_atoms"].to_numpy() == n - 1)  # the offset the warning is about
    assert len(told) == 1 and "lowest component" in str(told[0].message)
    assert chk["ok"] is False and 1.2 < chk["first_ratio"] < 1.5
    # told the lowest level is two atoms, the counts are right and the check passes
    res2, told2 = _count(x, first_count=2)
    assert np.mean(res2["n_atoms"].to_numpy() == n) >= 0.99 and not told2


def test_first_level_rule_on_the_scs_table():
    # noise-free ladders of the abTEM table: one atom is 0.56-0.89 of the median step
    # (a linear ladder through zero: 1); a ladder starting at two atoms, read as starting
    # at one, is 1.14 (Br, 30 cells) to 1.41 (Cs) steps and must fail
    from perovstem.simulate.scs import scs_table

    for typ in ("Pb", "PbBr", "Cs", "Br"):
        for top in (5, 10, 20, 30):
            mu = scs_table(typ, np.arange(1, top + 1))
            w = 0.1 * np.median(np.diff(mu))
            assert ladder_check(_fit(mu, w))["ok"], (typ, top)
            two = scs_table(typ, np.arange(2, top + 1))
            assert ladder_check(_fit(two, w), first_count=2)["ok"], (typ, top)
            if typ != "Br" or top < 20:
                chk = ladder_check(_fit(two, w))
                assert not chk["ok"] and chk["first_ratio"] > 1.2, (typ, top)
    lin = np.arange(1.0, 11.0)
    assert ladder_check(_fit(lin, 0.1))["ok"] and not ladder_check(_fit(lin[1:], 0.1))["ok"]


def _fit(means, width, first=None):
    means = np.asarray(means, float)
    k = means.size
    return GMMFit(k, means, width, np.full(k, 1 / k), 0.0, 0.0, 1, True, False, 10 * k)


def test_ladder_check_rules():
    # a correct Pb-like ladder (first atom 0.65 of the step, slowly varying steps)
    mu = np.cumsum([0.65, 0.8, 0.9, 1.0, 1.0, 1.05, 1.0, 1.0])
    ok = ladder_check(_fit(mu, 0.15))
    assert ok["ok"] and ok["suspect"] == []
    # a count level missing between components 3 and 4: named in the result
    gap = ladder_check(_fit(np.concatenate([mu[:4], mu[5:]]), 0.15))
    assert not gap["ok"] and gap["suspect"] == [[3, 4]]
    assert "3-4" in gap["messages"][0]
    # levels merged above the thinnest ones: steps of ~3 atoms over a one-atom first level
    merged = ladder_check(_fit([0.65, 3.5, 6.5, 9.5], 0.6))
    assert not merged["ok"] and merged["first_ratio"] < 0.45
    # components wider than a quarter of the step: cannot be told from merged ones
    wide = ladder_check(_fit(mu, 0.3))
    assert not wide["ok"] and wide["overlap"] > 0.25
    # lowest component is not one atom (thinnest columns absent): offset
    off = ladder_check(_fit(mu[3:], 0.15))
    assert not off["ok"] and off["first_ratio"] > 1.6
    assert ladder_check(_fit(mu[3:], 0.15), first_count=4)["ok"]
    # first_count = 0 (vacuum component) skips the first-level rule
    assert ladder_check(_fit(mu, 0.15), first_count=0)["first_ratio"] is None
    assert ladder_check(_fit([1.0], 0.1))["ok"]  # one component: nothing to check
    with pytest.raises(ParameterError, match="first_count"):
        ladder_check(_fit(mu, 0.15), first_count=-1)


def test_library_counts_skip_the_ladder_check():
    lib = pd.DataFrame({"n_atoms": np.arange(1, 16), "scs": np.arange(1, 16) * 1.0})
    rng = np.random.default_rng(0)
    n = rng.integers(1, 9, 400)
    res, told = _count(n + rng.normal(0, 0.08, n.size), library=lib)
    assert res.attrs["counting"]["all"]["ladder_check"] is None and not told


def test_ptir_icl_merge_is_reported(statstem_data):
    # StatSTEM's Pt/Ir particle: 140 columns of 1-20 atoms (793 atoms from its library);
    # ICL keeps 4 components, 379 atoms.  Old code: no warning, nothing in attrs.
    ref = pd.read_csv(statstem_data / "csv" / "Example_PtIr_reference_fit.csv")
    res, told = _count(ref["scs"].to_numpy())
    # no k >= 2 of the sweep passes the check: ICL's 4 is kept, with the warning
    assert res.attrs["counting"]["all"]["n_components"] == 4
    assert res["n_atoms"].sum() < 400
    assert len(told) == 1 and "merge count levels" in str(told[0].message)
    assert res.attrs["counting"]["all"]["ladder_check"]["overlap"] > 0.25


def test_ladder_degree_option():
    # means on a quadratic in the component index, empty components allowed
    rng = np.random.default_rng(5)
    n = rng.integers(0, 12, 1500)
    n = n[n != 6]  # one count absent from the particle
    mu_true = 1.0 + 1.2 * np.arange(12) - 0.02 * np.arange(12) ** 2
    x = mu_true[n] + rng.normal(0, 0.12, n.size)
    sw = gmm_sweep(x, max_components=14, ladder_degree=2, criterion="bic")
    assert sw.selected == 12
    f = sw.fit(12)
    assert f.ladder_degree == 2 and f.n_params == 3 + 11 + 1
    assert np.allclose(f.means, mu_true, atol=0.03)
    assert f.proportions[6] < 0.005
    assert np.mean(f.classify(x) == n) > 0.99
    # from the true means, fit_gmm converges to the same ladder
    g = fit_gmm(x, 12, ladder_degree=2, init_means=mu_true)
    assert np.allclose(g.means, f.means, atol=1e-3)
    # degree 1 is equal spacing
    e = fit_gmm(x, 12, equal_spacing=True)
    assert e.ladder_degree == 1 and e.equal_spacing and e.n_params == 2 + 11 + 1
    for bad in (-1, 4, 1.5, True):
        with pytest.raises(ParameterError, match="ladder_degree"):
            fit_gmm(x, 3, ladder_degree=bad)
    with pytest.raises(ParameterError, match="equal_spacing"):
        fit_gmm(x, 3, equal_spacing=True, ladder_degree=2)


def test_ladder_check_with_coinciding_components_warns_nothing_numeric():
    # two components with the same mean (a degenerate fit): the gap ratios divided by a
    # zero median and numpy warned "divide by zero"; the increment beside them is a gap
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chk = ladder_check(_fit(np.array([1.0, 2.0, 2.0, 2.0, 5.0]), 0.05))
    assert chk["ok"] is False
    assert [3, 4] in chk["suspect"]
