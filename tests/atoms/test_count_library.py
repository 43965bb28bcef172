"""Tests of library and hybrid atom counting."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from perovstem.atoms.library import as_library, count_hybrid, count_library, fit_hybrid
from perovstem.errors import DataError, ParameterError


def _library(max_atoms=20):
    n = np.arange(1, max_atoms + 1)
    # sub-linear (channelling-like) SCS vs thickness, in Å^2
    return pd.DataFrame({"n_atoms": n, "scs_A2": 0.0160 * n - 0.00012 * n**2})


def _columns(lib, rng, n_cols=600, scale=1.0, sigma=0.003, nmax=12):
    n = rng.integers(1, nmax + 1, n_cols)
    v = lib.set_index("n_atoms").loc[n, "scs_A2"].to_numpy()
    return n, np.abs(scale * v + rng.normal(0, sigma, n_cols))


def test_as_library_forms():
    lib = _library(5)
    n, v = as_library(lib)
    assert n.tolist() == [1, 2, 3, 4, 5]
    n2, v2 = as_library(lib["scs_A2"].to_numpy())
    assert np.array_equal(n, n2) and np.allclose(v, v2)
    n3, _ = as_library(np.column_stack([n[::-1], v[::-1]]))
    assert n3.tolist() == [1, 2, 3, 4, 5]
    with pytest.raises(ParameterError, match="Cs"):
        as_library({"PbBr": lib}, column_type="Cs")
    with pytest.raises(DataError, match="n_atoms"):
        as_library(pd.DataFrame({"scs": [1.0]}))


@pytest.mark.parametrize("seed", [0, 1])
def test_library_counting_nearest(seed):
    rng = np.random.default_rng(seed)
    lib = _library()
    n, x = _columns(lib, rng, sigma=0.002)
    res = count_library(x, lib)
    assert np.mean(res["n_atoms"].to_numpy() == n) > 0.97
    # with CRLB-like errors the posterior is given and mostly confident
    res2 = count_library(x, lib, scs_err=np.full(x.size, 0.002))
    assert np.array_equal(res2["n_atoms"], res["n_atoms"])
    assert res2["p_n_atoms"].between(0, 1).all()
    assert res2["p_n_atoms"].mean() > 0.9
    # empty column allowed
    z = count_library([0.0005, 0.016], lib)
    assert z["n_atoms"].tolist() == [0, 1]


def test_library_miscalibrated_fails_hybrid_recovers():
    rng = np.random.default_rng(4)
    lib = _library()
    n, x = _columns(lib, rng, scale=0.93, sigma=0.0015)  # 7 % detector mismatch
    lib_only = np.mean(count_library(x, lib)["n_atoms"].to_numpy() == n)
    hyb = count_hybrid(x, lib)
    exact = np.mean(hyb["n_atoms"].to_numpy() == n)
    assert exact > 0.97
    assert exact > lib_only + 0.1
    info = hyb.attrs["counting"]["all"]
    assert info["scale"] == pytest.approx(0.93, abs=0.01)
    assert info["width"] == pytest.approx(0.0015, rel=0.15)


def test_hybrid_per_type_dict_library():
    rng = np.random.default_rng(9)
    lib_pb = _library()
    lib_cs = pd.DataFrame({"n_atoms": np.arange(1, 21), "scs_A2": 0.0049 * np.arange(1, 21)})
    n1, x1 = _columns(lib_pb, rng, n_cols=300, sigma=0.0015)
    n2, x2 = _columns(lib_cs, rng, n_cols=300, sigma=0.0006)
    df = pd.DataFrame({"scs_A2": np.r_[x1, x2], "type": ["PbBr"] * 300 + ["Cs"] * 300})
    res = count_hybrid(df, {"PbBr": lib_pb, "Cs": lib_cs})
    assert np.mean(res["n_atoms"].to_numpy() == np.r_[n1, n2]) > 0.95
    f = fit_hybrid(x2, lib_cs, fit_scale=False)
    assert f.scale == 1.0 and f.converged


def test_library_bad_input():
    lib = _library()
    with pytest.raises(DataError, match="negative"):
        count_library([0.1, -0.2], lib)
    with pytest.raises(DataError, match="empty"):
        count_library([], lib)
    with pytest.raises(DataError, match="scs_err"):
        count_library([0.1, 0.2], lib, scs_err=[0.1, 0.0])
    with pytest.raises(ParameterError, match="library"):
        count_library([0.1], "nonsense")


# --- fitted-SCS library (atoms.fitted_library) ----------------------------------------------


def test_slab_atoms_column_contents():
    """Column contents of the library slabs for both terminations (counting units)."""
    from perovstem.atoms.fitted_library import slab_atoms
    from perovstem.simulate.columns import project_columns

    for term, (pb, br_ap, br_eq, cs) in (("CsBr", (4, 5, 4, 5)), ("PbBr2", (5, 4, 5, 4))):
        cols, _ = project_columns(slab_atoms(3, 4, termination=term))
        by = {t: g for t, g in cols.groupby("type")}
        assert len(by["PbBr"]) == 9 and len(by["Br"]) == 24 and len(by["Cs"]) == 16
        assert (by["PbBr"]["n_Pb"] == pb).all() and (by["PbBr"]["n_Br"] == br_ap).all()
        assert (by["Br"]["n_Br"] == br_eq).all() and (by["Cs"]["n_Cs"] == cs).all()
    one = project_columns(slab_atoms(2, 0))[0]  # a single CsBr layer
    assert set(one["type"]) == {"Cs", "Br"} and (one["n_atoms"] == 1).all()


def _fit_like_analysis(img, sites):
    """The per-frame estimator of analyze_series: widths at the sites, then held."""
    from perovstem.atoms import fit_columns
    from perovstem.atoms.fitted_library import type_widths

    rho = type_widths(img, sites)
    fit = fit_columns(
        img, sites, width="fixed", rho_A=rho, fit_positions=False, joint=False, parallel=False
    )
    return fit["scs"].to_numpy(float)


@pytest.mark.parametrize(
    ("edge", "probe", "seed"), [(30.0, 0.30, 1), (40.0, 0.36, 2)], ids=["30A-0.30", "40A-0.36"]
)
def test_fitted_library_counts_unseen_crystals(edge, probe, seed):
    """The fitted library counts crystals it was not built from, without bias.

    No inverse crime: the library is built from slabs with the default probe (σ 0.33 Å);
    the test images are cube nanocrystals (builder, neutralised surfaces) of two sizes
    imaged with other probes and noise seeds.  Counting the fitted cross-sections against
    the tabulated total cross-sections instead is biased low (the Gaussian misses part of
    the probe tail) by a type-dependent amount.
    """
    from perovstem.atoms import normalize_image
    from perovstem.atoms.fitted_library import fitted_scs_library
    from perovstem.simulate import haadf_image, nanocrystal, scs_library

    dose = 4e3
    img, truth = haadf_image(
        nanocrystal(edge, rng=seed),
        pixel_size_A=0.5,
        dose_e_per_A2=dose,
        probe_sigma_A=probe,
        rng=seed,
    )
    cols = truth[truth["type"].isin(["PbBr", "Br", "Cs"])].reset_index(drop=True)
    t = cols["type"].to_numpy()
    n = np.where(t == "PbBr", cols["n_Pb"], np.where(t == "Br", cols["n_Br"], cols["n_Cs"]))
    scs = _fit_like_analysis(normalize_image(img), cols[["x_A", "y_A", "type"]])
    lib = fitted_scs_library(
        12,
        pixel_size_A=0.5,
        dose_e_per_A2=dose,
        shape=img.data.shape,
        n_cells=int(round(edge / 5.87)),
    )
    tab = {k: scs_library(k, 12) for k in lib}
    df = pd.DataFrame({"scs_A2": np.clip(scs, 0, None), "type": t})
    bias_fit = {}
    bias_tab = {}
    for L, out in ((lib, bias_fit), (tab, bias_tab)):
        c = count_library(df, L)["n_atoms"].to_numpy()
        for k in lib:
            m = t == k
            out[k] = float(np.mean(c[m] - n[m]))
    for k in lib:  # within a third of an atom on average, every column type
        assert abs(bias_fit[k]) < 0.35, (k, bias_fit)
    assert np.mean(np.abs(list(bias_fit.values()))) < 0.5 * np.mean(np.abs(list(bias_tab.values())))


def test_fitted_library_table_and_cache():
    from perovstem.atoms.fitted_library import LIBRARY_TYPES, fitted_scs_library

    lib = fitted_scs_library(6, pixel_size_A=0.5, n_cells=4)
    assert set(lib) == set(LIBRARY_TYPES)
    for df in lib.values():
        assert df["n_atoms"].tolist() == list(range(7))
        assert df["scs_A2"].iloc[0] == 0.0 and np.all(np.diff(df["scs_A2"]) > 0)
        assert df.attrs["source"] == "fitted" and df.attrs["width"] == "series"
    # per atom the Pb–B column (Pb + Br) is brightest, the Br column faintest
    assert lib["PbBr"]["scs_A2"][3] > lib["Cs"]["scs_A2"][3] > lib["Br"]["scs_A2"][3]
    lib["Br"].loc[1, "scs_A2"] = -1.0  # callers get copies: the cache is not changed
    again = fitted_scs_library(6, pixel_size_A=0.5, n_cells=4)
    assert again["Br"]["scs_A2"][1] > 0


def test_fitted_library_bad_input():
    from perovstem.atoms.fitted_library import fitted_scs_library, slab_atoms

    with pytest.raises(ParameterError, match="termination"):
        fitted_scs_library(5, pixel_size_A=0.5, termination="PbI2")
    with pytest.raises(ParameterError, match="n_cells"):
        fitted_scs_library(5, pixel_size_A=0.5, n_cells=1)
    with pytest.raises(ParameterError, match="pixel_size_A"):
        fitted_scs_library(5, pixel_size_A=0.0)
    with pytest.raises(ParameterError, match="rng"):
        fitted_scs_library(5, pixel_size_A=0.5, rng=np.random.default_rng(0))
    with pytest.raises(ParameterError, match="width"):
        fitted_scs_library(5, pixel_size_A=0.5, width="joint")
    with pytest.raises(ParameterError, match="thickness"):
        slab_atoms(3, -1)


def _cube_like_table(rng, pb_scale, cs_scale, n_pb=10):
    """Pb-Br columns of one thickness (a cube) and Cs columns of several (its CsBr faces)."""
    lib_pb = _library(30)
    lib_cs = pd.DataFrame({"n_atoms": np.arange(1, 31), "scs_A2": 0.0049 * np.arange(1, 31)})
    v_pb = lib_pb.set_index("n_atoms").loc[n_pb, "scs_A2"]
    x1 = pb_scale * v_pb + rng.normal(0, 0.003, 100)
    n2 = rng.choice([n_pb - 4, n_pb - 2, n_pb - 1, n_pb, n_pb + 1], 120)
    x2 = cs_scale * 0.0049 * n2 + rng.normal(0, 0.0008, 120)
    df = pd.DataFrame({"scs_A2": np.r_[x1, x2], "type": ["PbBr"] * 100 + ["Cs"] * 120})
    return df, np.r_[np.full(100, n_pb), n2], {"PbBr": lib_pb, "Cs": lib_cs}


@pytest.mark.parametrize("pb_scale,cs_scale", [(0.93, 0.91), (1.02, 1.0), (0.88, 0.9)])
def test_hybrid_single_thickness_type_takes_the_scale_of_the_others(pb_scale, cs_scale):
    """A cube has one Pb-Br thickness: c L_n fits that lone cluster for several n, and the
    scale grid used to settle on one of them arbitrarily (all columns off by +-1 or 2)."""
    df, n, lib = _cube_like_table(np.random.default_rng(3), pb_scale, cs_scale)
    res = count_hybrid(df, lib)
    got = res["n_atoms"].to_numpy()
    assert np.array_equal(got[:100], n[:100])  # Pb-Br: all 10
    assert np.mean(got[100:] == n[100:]) > 0.95  # Cs: shot noise allows a few misses
    info = res.attrs["counting"]
    assert info["PbBr"]["scale"] == pytest.approx(pb_scale, rel=0.02)
    assert info["Cs"]["scale_identifiable"] and not info["PbBr"]["scale_identifiable"]


def test_hybrid_counts_simulated_cube_image():
    """Image -> fit -> hybrid counting of a pristine 60 Å cube (10 cells, CsBr faces)."""
    from perovstem.atoms import fit_columns, normalize_image
    from perovstem.simulate import haadf_image, nanocrystal, scs_library

    img, truth = haadf_image(nanocrystal(60.0, rng=10), dose_e_per_A2=5e4, rng=10)
    fit = fit_columns(normalize_image(img), truth[["x_A", "y_A", "type"]])
    sel = fit["type"].isin(["PbBr", "Cs"]).to_numpy()
    lib = {t: scs_library(t, 30) for t in ("PbBr", "Cs")}
    res = count_hybrid(fit[sel], lib)
    truth = truth[sel]
    for t in ("PbBr", "Cs"):
        m = (truth["type"] == t).to_numpy()
        exact = np.mean(res["n_atoms"].to_numpy()[m] == truth["n_atoms"].to_numpy()[m])
        assert exact >= 0.98, (t, exact)


def test_hybrid_scale_prior_bad_input():
    df, _, lib = _cube_like_table(np.random.default_rng(0), 1.0, 1.0)
    for kw in ({"scale_spread": 0.0}, {"scale_sd": -1.0}, {"scale_spread": float("nan")}):
        with pytest.raises(ParameterError, match=next(iter(kw))):
            count_hybrid(df, lib, **kw)


def test_unnormalised_cross_sections_are_refused_with_a_library():
    """Raw-count SCS against a library in Å² were counted silently at the bound of the
    scale range (every column 17-20 atoms)."""
    lib = _library(20)
    x = 1000 * lib["scs_A2"].to_numpy()[np.tile([3, 4, 5, 6], 10)]
    from perovstem.atoms.count import count_atoms
    from perovstem.atoms.hmm import fit_hmm

    for call in (
        lambda: count_atoms(x, library=lib),
        lambda: count_hybrid(x, lib),
        lambda: fit_hmm(x.reshape(4, 10), lib),
    ):
        with pytest.raises(DataError, match="do not match the library.*normalised"):
            call()


def test_scs_library_termination_layers():
    """``termination`` adds the atoms of the extra surface layer: CsBr faces give a Pb-Br
    column of n Pb n + 1 Br, PbBr2 faces n - 1 Br; the Voronoi library also moves the
    neighbours' counts.  "mixed" (the default) is the earlier library."""
    from perovstem.errors import ParameterError
    from perovstem.simulate import scs_library
    from perovstem.simulate.scs import column_scs

    n = np.arange(1, 9).astype(float)
    z = np.zeros_like(n)
    for term, dbr in (("mixed", 0), ("CsBr", 1), ("PbBr2", -1)):
        lib = scs_library("PbBr", 8, termination=term)
        assert lib.attrs["termination"] == term
        np.testing.assert_allclose(lib["scs_A2"].to_numpy()[1:], column_scs(n, z, n + dbr, z))
        assert lib["scs_A2"].iloc[0] == 0.0
    # the total SCS of single-species columns do not depend on the surfaces ...
    for t in ("Cs", "Br"):
        np.testing.assert_array_equal(
            scs_library(t, 8, termination="CsBr")["scs_A2"], scs_library(t, 8)["scs_A2"]
        )
    # ... but their Voronoi cells do: a Cs column of n atoms in a CsBr-terminated crystal has
    # Pb-Br neighbours of n - 1 Pb (less cross-talk), in a PbBr2-terminated one of n + 1 Pb
    cs = {
        t: scs_library("Cs", 8, integration="voronoi", termination=t)["scs_A2"].to_numpy()[1:]
        for t in ("CsBr", "mixed", "PbBr2")
    }
    assert (cs["CsBr"] < cs["mixed"]).all() and (cs["mixed"] < cs["PbBr2"]).all()
    with pytest.raises(ParameterError, match="termination"):
        scs_library("PbBr", 8, termination="Cs")


def test_termination_needs_a_simulated_library():
    from perovstem.atoms import count_hybrid
    from perovstem.errors import ParameterError
    from perovstem.simulate import scs_library

    lib = scs_library("PbBr", 20)
    x = lib["scs_A2"].to_numpy()[[3, 3, 4, 4, 5]]
    with pytest.raises(ParameterError, match="termination"):
        count_library(x, lib, termination="CsBr")
    with pytest.raises(ParameterError, match="cd_fraction"):
        count_hybrid(x, lib, cd_fraction=0.2)
    # with "simulate" the library follows them (CsBr: one more Br per Pb-Br column)
    y = scs_library("PbBr", 20, termination="CsBr")["scs_A2"].to_numpy()[[3, 3, 4, 4, 5]]
    c = count_library(y, "simulate", types=["PbBr"] * 5, termination="CsBr")
    np.testing.assert_array_equal(c["n_atoms"], [3, 3, 4, 4, 5])
    np.testing.assert_array_equal(c["scs_library"], y)
    c0 = count_library(y, "simulate", types=["PbBr"] * 5)
    assert (c0["scs_library"].to_numpy() < y).all()


def _flat_table(rng, pb_scale, cs_scale, fitted=False, n_pb=9):
    """A one-thickness cube: Pb-Br columns of ``n_pb`` atoms, Cs of ``n_pb + 1``, at the
    given scales of the library (c L_9 ~ c' L_8 with c' ~ 1.12 c: n and n - 1 fit alike)."""
    lib = {"PbBr": _library(20), "Cs": pd.DataFrame({"n_atoms": np.arange(1, 21)})}
    lib["Cs"]["scs_A2"] = 0.0049 * lib["Cs"]["n_atoms"]
    if fitted:
        for t in lib.values():
            t.attrs["source"] = "fitted"
    rows = []
    for t, n, c, sd in (("PbBr", n_pb, pb_scale, 0.004), ("Cs", n_pb + 1, cs_scale, 0.0008)):
        v = lib[t].set_index("n_atoms").loc[n, "scs_A2"]
        rows.append(pd.DataFrame({"scs_A2": c * v + rng.normal(0, sd, 100), "type": t}))
    return pd.concat(rows, ignore_index=True), lib


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hybrid_reports_the_offset_probability_of_a_flat_crystal(seed):
    """count_hybrid reports P(d) (every column d atoms more) as count_atoms does: a flat
    crystal 7-8 % below a total-SCS library is read n or n - 1 about equally (seeds 0-7,
    both CPU modes: P(0) 0.39-0.42, both types flagged, n_atoms_std >= 0.84, the counts
    one low in 7 of 8 seeds, as count_atoms reads them); at the scale of a fitted library
    (prior (1, 0.03)) 9/10-atom columns are just decided (P(0) 0.91-0.93) and 5/6-atom
    ones (readings 20 % apart) surely (P(0) >= 0.9995, >= 99 % exact).  Old code: no
    offset_probability, nothing flagged."""
    df, lib = _flat_table(np.random.default_rng(seed), 0.93, 0.92)
    with pytest.warns(UserWarning, match=r"count_hybrid: the counts of type\(s\) PbBr P = "):
        res = count_hybrid(df, lib)
    for t in ("PbBr", "Cs"):
        info = res.attrs["counting"][t]
        p0 = info["offset_probability"].get(0, 0.0)
        assert info["offset_ambiguous"] and 0.2 < p0 < 0.8, info["offset_probability"]
        assert sum(info["offset_probability"].values()) == pytest.approx(1.0)
        assert info["scale_prior"] == {"center": 1.0, "log_sd": 0.1, "source": "default"}
        m = (res["type"] == t).to_numpy()
        assert res["n_atoms_std"].to_numpy()[m].min() >= 0.5
        assert (res["p_n_atoms"].to_numpy()[m] <= p0 + 1e-12).all()
    df, lib = _flat_table(np.random.default_rng(seed), 1.0, 1.0, fitted=True, n_pb=5)
    res = count_hybrid(df, lib)
    for t, n in (("PbBr", 5), ("Cs", 6)):
        info = res.attrs["counting"][t]
        assert not info["offset_ambiguous"] and info["offset_probability"][0] >= 0.999, info
        assert info["scale_prior"]["source"] == "fitted library"
        assert np.mean(res.loc[res["type"] == t, "n_atoms"] == n) >= 0.98


def test_hybrid_offset_probability_of_many_thicknesses():
    """Columns of 1-12 atoms identify the scale: the counts are not offset (P(0) ~ 1)."""
    lib = _library()
    n, x = _columns(lib, np.random.default_rng(5), scale=0.95)
    res = count_hybrid(x, lib)
    info = res.attrs["counting"]["all"]
    assert info["offset_probability"][0] > 0.99 and not info["offset_ambiguous"]
    assert np.mean(res["n_atoms"].to_numpy() == n) > 0.9


def test_unidentified_scale_of_gaussian_cross_sections_names_the_peak_shape():
    """Audit (abTEM multislice): Gaussian-column SCS read 0.76-0.87 of the library and the
    default chain counted ~1 atom low, with only "no column type's cross-sections identify
    the library scale".  For Gaussian-fit tables that warning now names the peak-shape
    dependence and the Voronoi path; for other tables it does not."""
    import warnings

    from perovstem.simulate import scs_library

    lib = scs_library("Cs", 12)
    one_level = float(lib.loc[lib["n_atoms"] == 6, "scs_A2"].iloc[0])
    rng = np.random.default_rng(0)
    table = pd.DataFrame(
        {"type": ["Cs"] * 30, "scs": one_level * (1 + 0.01 * rng.standard_normal(30))}
    )
    for with_rho, said in ((True, True), (False, False)):
        t = table.assign(rho_A=0.4) if with_rho else table
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            count_hybrid(t, {"Cs": lib})
        texts = [str(w.message) for w in caught if "identify the library scale" in str(w.message)]
        assert texts, [str(w.message) for w in caught]
        assert ("Voronoi sums (`atoms fit --scs voronoi`)" in texts[0]) is said
