"""Tests of Cd/Pb composition from Pb-Br column cross-sections."""

from __future__ import annotations

import numpy as np
import pytest

from perovstem.atoms.composition import estimate_composition
from perovstem.errors import DataError, ParameterError


def _pbbr_truth(x, seed, edge_A=100.0):
    from perovstem.simulate import haadf_image, nanocrystal

    atoms = nanocrystal(edge_A, cd_fraction=x, rng=seed)
    img, truth = haadf_image(atoms, dose_e_per_A2=5e4, pixel_size_A=0.25, rng=seed)
    return img, truth, (truth["type"] == "PbBr").to_numpy()


@pytest.mark.parametrize("x,seed", [(0.05, 3), (0.08, 4)])
def test_composition_from_truth_scs_with_shot_noise(x, seed):
    """SCS = simulator truth + shot-noise-like error (sigma = 1.5 sqrt(SCS / dose))."""
    _, truth, m = _pbbr_truth(x, seed)
    pb = truth[m]
    n = pb["n_atoms"].to_numpy()
    real_x = pb["n_Cd"].sum() / n.sum()
    rng = np.random.default_rng(seed)
    err = 1.5 * np.sqrt(pb["scs_A2"].to_numpy() / 5e4)
    v = pb["scs_A2"].to_numpy() + rng.normal(0, err)
    for e in (err, None):
        r = estimate_composition(v, n, scs_err=e)
        assert abs(r.x - real_x) <= 0.01
        assert r.x_ci[0] <= real_x <= r.x_ci[1]
        assert 0 < r.x_err < 0.01
    cols = r.columns
    assert np.mean(cols["n_cd"].to_numpy() == pb["n_Cd"].to_numpy()) > 0.7
    assert np.all(cols["n_cd_std"] >= 0) and cols["p_n_cd"].between(0, 1).all()


def test_composition_image_fit_with_reference_calibration():
    """Acceptance: 10 nm NC, x <= 0.1, image -> fit -> composition within +-0.01.

    The Gaussian-fit SCS is a few % below the true SCS; as in an experiment, the scale is
    calibrated on a Cd-free reference crystal imaged and fitted the same way."""
    from perovstem.atoms import fit_columns, normalize_image
    from perovstem.simulate import column_scs

    def fitted(x, seed):
        img, truth, m = _pbbr_truth(x, seed)
        fit = fit_columns(normalize_image(img), truth[["x_A", "y_A", "type"]])
        return fit[m], truth[m]

    f0, t0 = fitted(0.0, 10)
    n0 = t0["n_atoms"].to_numpy()
    scale = float(np.median(f0["scs"].to_numpy() / column_scs(n0, 0, n0 + 1, 0)))
    assert 0.8 < scale < 1.05
    f, t = fitted(0.1, 1)
    n = t["n_atoms"].to_numpy()
    real_x = t["n_Cd"].sum() / n.sum()
    r = estimate_composition(f["scs"].to_numpy(), n, scale=scale)
    assert abs(r.x - real_x) <= 0.01
    assert r.x_ci[0] <= real_x <= r.x_ci[1]
    assert np.mean(r.columns["n_cd"].to_numpy() == t["n_Cd"].to_numpy()) > 0.7


def test_pure_crystal_gives_zero():
    n = np.full(50, 10)
    from perovstem.simulate import column_scs

    v = column_scs(n, 0, n + 1, 0) + np.random.default_rng(0).normal(0, 0.002, 50)
    r = estimate_composition(v, n)
    assert r.x < 0.005 and r.x_ci[0] == 0.0


def test_composition_bad_input():
    with pytest.raises(DataError, match="n_cells"):
        estimate_composition([0.1, 0.2], [3])
    with pytest.raises(DataError, match="n_cells"):
        estimate_composition([0.1, 0.2], [3, 0])
    with pytest.raises(DataError, match="negative"):
        estimate_composition([0.1, -0.2], [3, 3])
    with pytest.raises(DataError, match="empty"):
        estimate_composition([], [])
    with pytest.raises(ParameterError, match="scale"):
        estimate_composition([0.1], [3], scale=0)
    with pytest.raises(DataError, match="scs_err"):
        estimate_composition([0.1], [3], scs_err=[-1.0])
