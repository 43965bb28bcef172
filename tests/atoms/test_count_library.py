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
