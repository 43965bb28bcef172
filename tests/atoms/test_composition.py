"""Tests of Cd/Pb composition from Pb-Br column cross-sections."""

from __future__ import annotations

import numpy as np
import pytest

from perovstem.atoms.composition import estimate_composition, thickness_from_neighbours
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


@pytest.mark.parametrize("x,seed", [(0.15, 9), (0.4, 8)])
def test_composition_with_thickness_from_cs_neighbours(x, seed):
    """Without a thickness input the Pb-Br thickness was counted from the same cross-sections
    that Cd lowers: these two cubes gave x = 0.22 (CI 0.19-0.25) for a realised 0.134 and
    0.53 (0.50-0.56) for 0.381.  The Cs neighbours (no Cd) fix the thickness; x must fall within its CI and
    within 0.03 of the realised fraction."""
    from perovstem.atoms import count_atoms, fit_columns, normalize_image
    from perovstem.simulate import haadf_image, nanocrystal, scs_library

    atoms = nanocrystal(55.0, cd_fraction=x, rng=seed)
    img, truth = haadf_image(atoms, dose_e_per_A2=5e4, pixel_size_A=0.25, rng=seed)
    fit = fit_columns(normalize_image(img), truth[["x_A", "y_A", "type"]])
    lib = {
        t: scs_library(t, 20, **({"cd_fraction": x} if t == "PbBr" else {})) for t in ("PbBr", "Cs")
    }
    cols = fit[fit["type"].isin(["PbBr", "Cs"])].reset_index(drop=True)
    counts = count_atoms(cols, max_components=20, criterion="icl", library=lib)
    scale = counts.attrs["counting"]["Cs"]["scale"]
    pb = cols["type"].to_numpy() == "PbBr"
    cs = ~pb
    th = thickness_from_neighbours(
        cols.loc[pb, ["x_A", "y_A"]].to_numpy(),
        cols.loc[cs, ["x_A", "y_A"]].to_numpy(),
        counts["n_atoms"].to_numpy(float)[cs],
    )
    ok = th["usable"].to_numpy()
    assert ok.mean() > 0.7  # only facet columns dropped
    cand = np.stack(th["n_cells_candidates"].to_numpy()[ok])
    r = estimate_composition(
        cols.loc[pb, "scs"].to_numpy()[ok],
        cand,
        n_cells_prior=np.stack(th["n_cells_prior"].to_numpy()[ok]),
        scs_err=cols.loc[pb, "scs_err"].to_numpy()[ok],
        excess_width=True,
        scale=scale,
    )
    t = truth[truth["type"] == "PbBr"]
    real_x = t["n_Cd"].sum() / t["n_atoms"].sum()
    assert abs(r.x - real_x) < 0.03, (r.x, real_x)
    assert r.x_ci[0] <= real_x <= r.x_ci[1], (r.x_ci, real_x)
    # the thickness came from Cs: Pb-Br columns one cell shorter (CsBr faces); all Pb-Br
    # columns of a cube have the same length
    true_n = np.unique(t["n_atoms"].to_numpy())
    assert true_n.size == 1
    assert np.mean(r.columns["n_cells"].to_numpy() == true_n[0]) > 0.9


def test_thickness_from_neighbours_lattice_with_a_step():
    """Square lattice: Cs at integer cells, Pb-Br at the cell centres; a one-cell step at
    x = 5 Å.  Pb-Br columns away from it get Cs - 1 with the neighbours' votes as prior;
    those on the step (neighbours disagree) are flagged unusable; the crystal edge too."""
    a = 5.87
    g = np.arange(8) * a
    cx, cy = np.meshgrid(g, g)
    cs_xy = np.c_[cx.ravel(), cy.ravel()]
    cs_n = np.where(cs_xy[:, 0] < 5 * a - 1, 10, 11).astype(float)
    px, py = np.meshgrid(g[:-1] + a / 2, g[:-1] + a / 2)
    pb_xy = np.c_[px.ravel(), py.ravel()]
    th = thickness_from_neighbours(pb_xy, cs_xy, cs_n)
    on_step = np.abs(pb_xy[:, 0] - 4.5 * a) < 1
    assert not th["usable"][on_step].any()
    assert th["usable"][~on_step].all()
    expected = np.where(pb_xy[:, 0] < 4.5 * a, 9, 10)
    assert np.array_equal(th["n_cells"][~on_step].to_numpy(), expected[~on_step])
    pr = np.stack(th["n_cells_prior"].to_numpy())
    assert np.allclose(pr.sum(1), 1)
    assert np.all(pr[~on_step, 1] > 0.85) and np.all(pr[~on_step, 0] > 0)
    # PbBr2-terminated: one cell longer; tolerating a spread of one keeps the step columns
    th2 = thickness_from_neighbours(pb_xy, cs_xy, cs_n, offset=1, max_spread=1)
    assert th2["usable"].all()
    assert np.array_equal(th2["n_cells"][~on_step].to_numpy(), expected[~on_step] + 2)
    p2 = np.stack(th2["n_cells_prior"].to_numpy())[on_step]
    assert np.allclose(p2[:, 0], p2[:, 1])  # two votes each side of the step
    # a column with neighbours missing (no Cs counted beyond the crystal) is unusable
    th3 = thickness_from_neighbours(pb_xy[:1], cs_xy[1:], cs_n[1:], min_neighbours=4)
    assert not th3["usable"].iloc[0]
    with pytest.raises(ParameterError, match="offset"):
        thickness_from_neighbours(pb_xy, cs_xy, cs_n, offset=2)
    with pytest.raises(DataError, match="reference_counts"):
        thickness_from_neighbours(pb_xy, cs_xy, cs_n[:-1])


def test_candidate_thickness_marginalised():
    """With the right thickness among candidates the marginal estimate agrees with the
    known-thickness one, and a pure crystal stays at 0 whatever the candidates' spread."""
    from perovstem.simulate import column_scs

    rng = np.random.default_rng(5)
    n = np.full(120, 9)
    m = rng.binomial(n, 0.2)
    v = column_scs(n - m, m, n + 1, 0) + rng.normal(0, 0.002, n.size)
    cand = n[:, None] + np.array([-1, 0, 1])[None, :]
    prior = np.tile([0.05, 0.9, 0.05], (n.size, 1))
    r1 = estimate_composition(v, n)
    r3 = estimate_composition(v, cand, n_cells_prior=prior)
    real = m.sum() / n.sum()
    assert abs(r3.x - r1.x) < 0.01 and r3.x_ci[0] <= real <= r3.x_ci[1]
    assert r3.x_ci[1] - r3.x_ci[0] >= r1.x_ci[1] - r1.x_ci[0] - 1e-6  # ambiguity widens
    assert np.mean(r3.columns["n_cells"] == 9) > 0.9
    v0 = column_scs(n, 0, n + 1, 0) + rng.normal(0, 0.002, n.size)
    r0 = estimate_composition(v0, cand, n_cells_prior=prior)
    assert r0.x < 0.005 and r0.x_ci[0] == 0.0
    with pytest.raises(DataError, match="n_cells_prior"):
        estimate_composition(v, cand)
    with pytest.raises(DataError, match="n_cells_prior"):
        estimate_composition(v, cand, n_cells_prior=prior[:, :2])
