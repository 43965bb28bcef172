"""CRLB, Voronoi intensities and lattice/strain outputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from perovstem import Image
from perovstem.atoms import (
    crlb,
    cspbbr3_001_cell,
    fit_columns,
    fit_lattice,
    lattice_strain,
    voronoi_intensities,
)
from perovstem.errors import DataError, ParameterError

from ._synth import lattice, render


def test_crlb_matches_monte_carlo_scatter_and_scaling():
    # Poisson CRLB of an isolated column vs the scatter of repeated Poisson-ML fits
    rho, eta, bg = 1.7, 300.0, 4.0
    truth = pd.DataFrame({"x_A": [15.3], "y_A": [14.6], "rho_A": [rho], "eta": [eta]})
    b = crlb(truth, (30, 30), 1.0, background=bg)
    lam = render((30, 30), [15.3], [14.6], [eta], [rho], background=bg)
    rng = np.random.default_rng(1)
    xs = []
    for _ in range(60):
        d = rng.poisson(lam).astype(float)
        f = fit_columns(
            Image(d, 1.0), [[15.0, 15.0]], noise="poisson", background=bg, width="fixed", rho_A=rho
        )
        xs.append(f.x_A.iloc[0])
    sd = np.std(xs)
    assert 0.75 < sd / b.x_crlb_A.iloc[0] < 1.3
    # 4x the dose (counts) halves the bound; a neighbour raises it
    b4 = crlb(truth.assign(eta=4 * eta), (30, 30), 1.0, background=4 * bg)
    assert b4.x_crlb_A.iloc[0] == pytest.approx(b.x_crlb_A.iloc[0] / 2, rel=1e-3)
    pair = pd.DataFrame({"x_A": [15.3, 18.3], "y_A": [14.6, 14.6], "rho_A": rho, "eta": eta})
    bp = crlb(pair, (30, 30), 1.0, background=bg)
    assert bp.x_crlb_A.iloc[0] > 1.2 * b.x_crlb_A.iloc[0]
    # normalised units: same bound when counts = dose·dx²·fraction
    dose = 2e3
    bn = crlb(truth.assign(eta=eta / dose), (30, 30), 1.0, background=bg / dose, dose_e_per_A2=dose)
    assert bn.x_crlb_A.iloc[0] == pytest.approx(b.x_crlb_A.iloc[0], rel=1e-6)
    bw = crlb(truth, (30, 30), 1.0, background=bg, width_known=False)
    assert bw.scs_crlb.iloc[0] > b.scs_crlb.iloc[0] and "rho_crlb_A" in bw
    with pytest.raises(ParameterError, match="rho_A"):
        crlb(truth.assign(rho_A=0.0), (30, 30), 1.0)
    with pytest.raises(DataError, match="empty"):
        crlb(truth.iloc[:0], (30, 30), 1.0)


def test_voronoi_integrates_cells():
    data, truth = lattice(0, n=8, spacing=10.0, rho=1.5, amp=500.0, background=0.0)
    lam = render(data.shape, truth.x_A, truth.y_A, truth.eta, truth.rho_A)
    v = voronoi_intensities(Image(lam, 1.0), truth[["x_A", "y_A"]].to_numpy())
    inner = ~v.edge.to_numpy()
    assert inner.sum() > 20
    # noise-free: cell sums equal the column volumes (neighbours' tails are tiny here)
    assert np.allclose(v.intensity[inner], truth.scs[inner], rtol=0.01)
    vn = voronoi_intensities(Image(data, 1.0), truth[["x_A", "y_A"]].to_numpy())
    z = (vn.intensity - v.intensity)[inner] / vn.intensity_err[inner]
    assert 0.6 < z.std() < 1.4


def test_lattice_displacement_and_strain():
    cell = cspbbr3_001_cell(5.87)
    a = 5.87
    rows = []
    rng = np.random.default_rng(0)
    for h in range(-6, 7):
        for k in range(-6, 7):
            for t, (u, v) in [("PbBr", (0, 0)), ("Cs", (0.5, 0.5))]:
                rows.append((t, (h + u) * a, (k + v) * a))
    df = pd.DataFrame(rows, columns=["type", "x_ideal", "y_ideal"])
    # uniform strain exx = 1 %, plus a rotation of 10 degrees, plus a Cs shift
    th = np.deg2rad(10)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    f = rot @ np.array([[1.01, 0.0], [0.0, 1.0]])
    p = df[["x_ideal", "y_ideal"]].to_numpy() @ f.T + np.array([50.0, 40.0])
    cs = (df.type == "Cs").to_numpy()
    p[cs] += np.array([0.1, 0.0]) @ rot.T  # polar displacement of Cs along rotated a
    p += rng.normal(0, 0.002, p.shape)
    cols = pd.DataFrame({"x_A": p[:, 0], "y_A": p[:, 1], "type": df.type})
    ix = fit_lattice(cols, cell)
    assert ix.attrs["a_A"] == pytest.approx(1.01 * a, rel=1e-3)
    assert ix.attrs["b_A"] == pytest.approx(a, rel=1e-3)
    assert np.isfinite(ix.x_ideal_A).all()
    disp = np.hypot(ix.dx_A, ix.dy_A)
    assert np.median(disp[cs]) == pytest.approx(0.1, abs=0.01)
    assert np.median(disp[~cs]) < 0.01
    st = lattice_strain(ix[~cs].reset_index(drop=True))
    # relative to the fitted (already strained) lattice the residual strain is ~0
    assert np.nanmedian(np.abs(st.eps_xx)) < 2e-3
    with pytest.raises(ParameterError, match="reference_type"):
        fit_lattice(cols, cell, reference_type="Au")
    with pytest.raises(DataError, match="at least 3"):
        fit_lattice(cols.iloc[:2], cell)


def test_local_strain_detects_a_strained_region():
    cell = cspbbr3_001_cell(5.87)
    a = 5.87
    hh, kk = np.meshgrid(np.arange(-8, 9), np.arange(-8, 9))
    p = np.column_stack([hh.ravel(), kk.ravel()]).astype(float) * a
    right = p[:, 0] > 10
    p[right, 0] = 10 + (p[right, 0] - 10) * 1.03  # 3 % tensile strain on the right side
    cols = pd.DataFrame({"x_A": p[:, 0] + 60, "y_A": p[:, 1] + 60, "type": "PbBr"})
    st = lattice_strain(fit_lattice(cols, cell))
    inner_right = p[:, 0] > 25
    inner_left = p[:, 0] < -5
    d = np.nanmedian(st.eps_xx[inner_right]) - np.nanmedian(st.eps_xx[inner_left])
    assert d == pytest.approx(0.03, abs=0.003)
    assert np.nanmedian(np.abs(st.eps_yy)) < 1e-3
