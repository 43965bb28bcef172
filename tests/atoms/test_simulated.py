"""Accuracy on simulated CsPbBr3 [001] nanocrystals (perovstem.simulate): the images have a
Gaussian core plus a broad Moffat probe tail per column, Poisson noise, and are analysed with
a different model (Gaussian columns + tail by FFT), from detection onwards."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from perovstem.atoms import cspbbr3_001_cell, find_columns, fit_columns, normalize_image

CASES = [(0, 2e4, 40.0), (1, 5e3, 35.0), (2, 1e5, 40.0)]


@pytest.fixture(scope="module")
def fits():
    import perovstem.simulate as sim

    out = []
    for seed, dose, edge in CASES:
        atoms = sim.nanocrystal(edge, rng=seed)
        img, truth = sim.haadf_image(atoms, pixel_size_A=0.3, dose_e_per_A2=dose, rng=seed + 10)
        cols = find_columns(img, cell=cspbbr3_001_cell())
        df = fit_columns(normalize_image(img), cols, noise="poisson", psf_tail="auto")
        _, idx = cKDTree(truth[["x_A", "y_A"]].to_numpy()).query(df[["x_A", "y_A"]].to_numpy())
        out.append((df, truth.iloc[idx].reset_index(drop=True), dose))
    return out


@pytest.mark.parametrize("ctype", ["PbBr", "Cs"])
def test_position_rms_within_1p1_crlb(fits, ctype):
    err2, bound2 = [], []
    for df, tr, _ in fits:
        m = (df.type == ctype).to_numpy()
        assert df.converged[m].all()
        e2 = ((df.x_A - tr.x_A) ** 2 + (df.y_A - tr.y_A) ** 2)[m]
        b2 = (df.x_err_A**2 + df.y_err_A**2)[m]
        # every image on its own: within the sampling scatter of an RMS over ~50-100 columns
        assert np.sqrt(e2.mean() / b2.mean()) < 1.25
        err2.append(e2)
        bound2.append(b2)
    ratio = np.sqrt(np.concatenate(err2).mean() / np.concatenate(bound2).mean())
    assert 0.8 < ratio <= 1.1


@pytest.mark.parametrize("ctype", ["PbBr", "Cs"])
def test_scs_bias_below_one_percent(fits, ctype):
    rel = np.concatenate(
        [(df.scs / tr.scs_A2 - 1)[(df.type == ctype).to_numpy()] for df, tr, _ in fits]
    )
    assert abs(rel.mean()) < 0.01
    # and the reported SCS errors describe the scatter at one dose
    df, tr, _ = fits[2]
    m = (df.type == ctype).to_numpy()
    z = ((df.scs - tr.scs_A2) / df.scs_err)[m]
    assert 0.6 < z.std() < 1.6


def test_br_columns_reported(fits):
    # weak Br columns between the bright ones: fitted jointly, reported separately
    for df, tr, _ in fits:
        m = (df.type == "Br").to_numpy()
        e2 = ((df.x_A - tr.x_A) ** 2 + (df.y_A - tr.y_A) ** 2)[m]
        assert np.sqrt(e2.mean() / (df.x_err_A**2 + df.y_err_A**2)[m].mean()) < 1.3
        assert abs(np.median(df.scs[m] / tr.scs_A2[m]) - 1) < 0.05


def test_without_tail_model_gaussian_volume_is_low():
    import perovstem.simulate as sim

    atoms = sim.nanocrystal(30.0, rng=5)
    img, truth = sim.haadf_image(atoms, pixel_size_A=0.3, dose_e_per_A2=5e4, rng=6)
    cols = find_columns(img, cell=cspbbr3_001_cell())
    df = fit_columns(normalize_image(img), cols, noise="poisson")
    _, idx = cKDTree(truth[["x_A", "y_A"]].to_numpy()).query(df[["x_A", "y_A"]].to_numpy())
    r = df.scs.to_numpy() / truth.scs_A2.to_numpy()[idx]
    pb = (df.type == "PbBr").to_numpy()
    # the Gaussian volume misses part of the 16 % probe tail: a documented, consistent deficit
    assert 0.85 < np.median(r[pb]) < 0.97
