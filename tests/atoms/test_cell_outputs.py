"""Sublattice-aware detection with a StatSTEM database cell, adding missing / dropping spurious
columns, the smooth (poly2) background, the measured projected unit cell, and the CLI with a
StatSTEM cell file."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from scipy.spatial import cKDTree

from perovstem import Image
from perovstem.atoms import (
    cspbbr3_001_cell,
    find_columns,
    find_peaks,
    fit_columns,
    fit_lattice,
    projected_unit_cell,
)
from perovstem.errors import DataError
from perovstem.io.statstem_db import read_statstem_cell

from ._synth import render


def _pr(found, truth, tol=1.0):
    d, _ = cKDTree(found).query(truth)
    d2, _ = cKDTree(truth).query(found)
    return float(np.mean(d < tol)), float(np.mean(d2 < tol))


@pytest.mark.parametrize(("seed", "dose", "edge"), [(3, 2e4, 40.0), (4, 3e3, 35.0)])
def test_statstem_database_cell_detects_pbbr_and_cs(statstem_data, seed, dose, edge):
    import perovstem.simulate as sim

    cell = read_statstem_cell(statstem_data / "database" / "CsPbBr3_100.txt", rename={"Pb": "PbBr"})
    atoms = sim.nanocrystal(edge, rng=seed)
    img, truth = sim.haadf_image(atoms, pixel_size_A=0.3, dose_e_per_A2=dose, rng=seed + 20)
    cols = find_columns(img, cell=cell)
    assert set(cols.type) == {"PbBr", "Cs"}  # the database cell has no Br site
    vec = np.asarray(cols.attrs["lattice_vectors_A"])
    # the file's a = 5.85 Å is refined to the image's 5.87 Å lattice
    assert np.linalg.norm(vec, axis=1) == pytest.approx([5.87, 5.87], rel=0.005)
    for t in ("PbBr", "Cs"):
        rec, prec = _pr(
            cols.loc[cols.type == t, ["x_A", "y_A"]].to_numpy(),
            truth.loc[truth.type == t, ["x_A", "y_A"]].to_numpy(),
        )
        assert rec >= 0.999 and prec >= 0.999, (t, rec, prec)


def _perovskite_image(rng, *, vacant=(), weak=(), blob=None, a_px=12.0, n=9):
    """PbBr at (0,0), Cs at (½,½) of a square cell, pixel 0.5 Å; returns image + truth."""
    rows = []
    for h in range(n):
        for k in range(n):
            rows.append(("PbBr", h, k, 8 + h * a_px, 8 + k * a_px, 900.0, 1.6))
            if h < n - 1 and k < n - 1:
                rows.append(("Cs", h, k, 8 + (h + 0.5) * a_px, 8 + (k + 0.5) * a_px, 400.0, 1.8))
    t = pd.DataFrame(rows, columns=["type", "h", "k", "x", "y", "eta", "rho"])
    for h, k in weak:
        t.loc[(t.type == "Cs") & (t.h == h) & (t.k == k), "eta"] = 120.0
    for h, k in vacant:
        t = t[~((t.type == "Cs") & (t.h == h) & (t.k == k))]
    size = int(16 + (n - 1) * a_px) + 1
    x, y, eta, rho = (t[c].to_numpy() for c in ("x", "y", "eta", "rho"))
    if blob is not None:  # a bright contamination spot away from every site
        x, y = np.r_[x, blob[0]], np.r_[y, blob[1]]
        eta, rho = np.r_[eta, 500.0], np.r_[rho, 1.5]
    lam = render((size, size), x, y, eta, rho, background=20.0)
    return Image(rng.poisson(lam).astype(float), 0.5), t.reset_index(drop=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cell_adds_weak_columns_and_drops_vacancies_and_spurious_peaks(seed):
    rng = np.random.default_rng(seed)
    vacant = [(1, 1), (4, 2), (6, 5)]
    weak = [(2, 6), (5, 5), (3, 0)]
    blob = (8 + 3.5 * 12, 8 + 4.0 * 12)  # off the PbBr/Cs sublattices (an empty Br site)
    img, truth = _perovskite_image(rng, vacant=vacant, weak=weak, blob=blob)
    # plain peak finding (separation below the blob–column distance) reports the blob
    pk = find_peaks(img, separation_A=1.5)
    d_blob = np.hypot(pk.x_A - blob[0] * 0.5, pk.y_A - blob[1] * 0.5)
    assert d_blob.min() < 0.5
    cell = cspbbr3_001_cell(6.0)
    cell = type(cell)(6.0, 6.0, 90.0, cell.sites[cell.sites.type != "Br"], name="PbBr+Cs")
    cols = find_columns(img, cell=cell)
    found = cols[["x_A", "y_A"]].to_numpy()
    tr = truth[["x", "y"]].to_numpy() * 0.5
    rec, prec = _pr(found, tr, tol=0.5)
    assert rec == 1.0 and prec == 1.0  # weak Cs kept, vacancies and blob not reported
    assert np.hypot(cols.x_A - blob[0] * 0.5, cols.y_A - blob[1] * 0.5).min() > 1.0
    for h, k in weak:
        xy = np.array([8 + (h + 0.5) * 12, 8 + (k + 0.5) * 12]) * 0.5
        assert np.hypot(*(found - xy).T).min() < 0.5
    # typed by the cell: every reported column has the type of its truth column
    i = cKDTree(tr).query(found)[1]
    assert np.array_equal(cols.type.to_numpy(), truth.type.to_numpy()[i])


@pytest.mark.parametrize("seed", [3, 4])
def test_smooth_poly2_background_is_absorbed(seed):
    rng = np.random.default_rng(seed)
    g = np.arange(10, 85, 9.0)
    gx, gy = np.meshgrid(g, g)
    x, y = gx.ravel(), gy.ravel()
    eta = np.full(x.size, 300.0)
    yy, xx = np.mgrid[0:90, 0:90].astype(float)
    u, v = xx / 44.5 - 1, yy / 44.5 - 1
    bg = 60.0 + 25.0 * u * u - 15.0 * u * v + 30.0 * v * v + 10.0 * u
    data = rng.poisson(render((90, 90), x, y, eta, np.full(x.size, 1.8)) + bg).astype(float)
    pos = np.column_stack([x + 0.2, y - 0.2])
    q = fit_columns(Image(data, 1.0), pos, background="poly2", noise="poisson")
    p = fit_columns(Image(data, 1.0), pos, background="planar", noise="poisson")
    scs_true = 2 * np.pi * 300.0 * 1.8**2
    bias_q = abs(np.median(q.scs) / scs_true - 1)
    bias_p = abs(np.median(p.scs) / scs_true - 1)
    assert bias_q < 0.01
    assert bias_p > 2 * bias_q
    c = np.asarray(q.attrs["background"]["coefficients"])
    np.testing.assert_allclose(c, [60.0, 10.0, 0.0, 25.0, -15.0, 30.0], atol=1.5)


def test_projected_unit_cell_recovers_site_shifts():
    a = 5.87
    rng = np.random.default_rng(5)
    rows = []
    for h in range(-6, 7):
        for k in range(-6, 7):
            rows.append(("PbBr", (h, k), 300.0 + rng.normal(0, 3)))
            rows.append(("Cs", (h + 0.5 + 0.03, k + 0.5 - 0.02), 120.0 + rng.normal(0, 3)))
    th = np.deg2rad(17.0)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    f = np.array([[1.02, 0.0], [0.0, 1.0]])  # a stretched by 2 %
    xy = np.array([r[1] for r in rows]) * a @ f.T @ rot.T + 60.0
    xy += rng.normal(0, 0.01, xy.shape)
    cols = pd.DataFrame(
        {
            "x_A": xy[:, 0],
            "y_A": xy[:, 1],
            "type": [r[0] for r in rows],
            "scs": [r[2] for r in rows],
        }
    )
    cell = cspbbr3_001_cell(a)
    pc = projected_unit_cell(fit_lattice(cols, cell), cell)
    assert pc.a_A == pytest.approx(1.02 * a, rel=1e-3)
    assert pc.b_A == pytest.approx(a, rel=1e-3)
    assert pc.angle_deg == pytest.approx(90.0, abs=0.05)
    s = pc.sites.set_index("type")
    cs = s.loc["Cs"]
    assert cs.u == pytest.approx(0.53, abs=0.002) and cs.v == pytest.approx(0.48, abs=0.002)
    assert abs(cs.u - 0.53) < 4 * cs.u_err + 1e-4
    assert cs.shift_x_A == pytest.approx(0.03 * 1.02 * a, abs=0.01)
    assert cs.n_columns == 169 and cs.scs_mean == pytest.approx(120.0, abs=1.0)
    pb = s.loc["PbBr"]
    assert abs((pb.u + 0.5) % 1 - 0.5) < 0.002  # fractions are wrapped into [0, 1)
    assert pb.scs_mean == pytest.approx(300.0, abs=1.0)
    assert s.loc["Br"].n_columns.min() == 0  # no Br columns given: sites kept, no values
    with pytest.raises(DataError, match="fit_lattice"):
        projected_unit_cell(cols, cell)


def test_projected_unit_cell_of_a_simulated_image():
    import perovstem.simulate as sim

    atoms = sim.nanocrystal(35.0, rng=8)
    img, _ = sim.haadf_image(atoms, pixel_size_A=0.3, dose_e_per_A2=2e4, rng=9)
    cell = cspbbr3_001_cell()
    df = fit_columns(img, find_columns(img, cell=cell))
    pc = projected_unit_cell(fit_lattice(df, cell), cell)
    assert pc.a_A == pytest.approx(5.87, rel=0.003) and pc.b_A == pytest.approx(5.87, rel=0.003)
    s = pc.sites
    for t, (u0, v0) in [("PbBr", (0.0, 0.0)), ("Cs", (0.5, 0.5))]:
        r = s[s.type == t].iloc[0]
        assert abs((r.u - u0 + 0.5) % 1 - 0.5) < 0.01 and abs((r.v - v0 + 0.5) % 1 - 0.5) < 0.01
    # SCS ordering of the sites follows Z: PbBr > Cs > Br
    m = s.groupby("type").scs_mean.mean()
    assert m["PbBr"] > m["Cs"] > m["Br"]


def test_cli_fit_with_statstem_cell_file(statstem_data, tmp_path):
    import perovstem.simulate as sim
    from perovstem.cli.main import main
    from perovstem.io import read_table, save_image

    atoms = sim.nanocrystal(30.0, rng=1)
    img, truth = sim.haadf_image(atoms, pixel_size_A=0.3, dose_e_per_A2=2e4, rng=3)
    p = tmp_path / "nc.npz"
    save_image(img, p)
    out = tmp_path / "cols.csv"
    cell = statstem_data / "database" / "CsPbBr3_100.txt"
    assert main(["atoms", "fit", str(p), "--cell", str(cell), "--out", str(out)]) == 0
    df = read_table(out)
    assert (tmp_path / "cols.png").stat().st_size > 5_000
    assert set(df.type) == {"Pb", "Cs"}  # the file's own type names
    n_truth = int(truth.type.isin(["PbBr", "Cs"]).sum())
    assert len(df) == n_truth
    assert df.converged.all()


def test_crlb_rejects_columns_outside_the_image_and_bad_shape():
    from perovstem.atoms import crlb
    from perovstem.errors import ParameterError

    cols = pd.DataFrame({"x_A": [3.0, 1e4], "y_A": [3.0, 2.0], "rho_A": 0.5, "eta": 1.0})
    with pytest.raises(DataError, match="outside"):
        crlb(cols, (30, 30), 0.3)
    with pytest.raises(ParameterError, match="shape"):
        crlb(cols.iloc[:1], (0, 30), 0.3)
    ok = crlb(cols.iloc[:1], (30, 30), 0.3, background=0.1)
    assert np.isfinite(ok.x_crlb_A).all()


_Z = {"Pb": 82, "Cs": 55, "I": 53}


def _cell_image(cell, *, rot_deg, hand, seed, n=(6, 4), dx=0.2, rho_A=0.45):
    """Gaussian columns at every site of a cell, weight n_atoms·Z^1.7, Poisson noise."""
    rng = np.random.default_rng(seed)
    vec = cell.vectors(rot_deg)
    vec[1] *= hand
    hk = np.array([(h, k) for h in range(n[0]) for k in range(n[1])], float)
    pos, types, w = [], [], []
    for _, st in cell.sites.iterrows():
        p = (hk + [st.u, st.v]) @ vec
        pos.append(p)
        types += [st.type] * len(p)
        w += [st.n_atoms * _Z[st.type] ** 1.7] * len(p)
    pos = np.vstack(pos)
    pos -= pos.min(axis=0) - 4.0
    w = np.asarray(w) / max(w) * 2000.0
    shape = (int(pos[:, 1].max() / dx + 20), int(pos[:, 0].max() / dx + 20))
    lam = render(
        shape, pos[:, 0] / dx, pos[:, 1] / dx, w, np.full(len(w), rho_A / dx), background=5.0
    )
    return Image(rng.poisson(lam).astype(float), dx), np.array(types), pos


@pytest.mark.parametrize(
    ("rot", "hand", "seed"), [(12.0, 1.0, 0), (-31.0, -1.0, 1), (75.0, 1.0, 2)]
)
def test_tilted_perovskite_database_cell_with_split_columns(statstem_data, rot, hand, seed):
    """γ-CsPbI3 [1-10]: 20 atoms, Pb sublattice with half the cell period, mirror images."""
    cell = read_statstem_cell(statstem_data / "database" / "Pure_CsPbI3_gamma_phase_300K_1-10.txt")
    img, types, pos = _cell_image(cell, rot_deg=rot, hand=hand, seed=seed)
    cols = find_columns(img, cell=cell, reference_type="Pb")
    found = cols[["x_A", "y_A"]].to_numpy()
    assert len(np.unique(np.round(found, 2), axis=0)) == len(found)  # no duplicate columns
    for t in ("Pb", "Cs", "I"):
        m = cols.type.to_numpy() == t
        rec, prec = _pr(found[m], pos[types == t], tol=0.3)
        if t == "I":  # weak columns 0.8 Å apart: every one found; at the crystal edge a site
            # next to a bright column may pass the presence test
            assert rec == 1.0 and prec > 0.85, (t, rec, prec)
        else:
            assert rec == 1.0 and prec == 1.0, (t, rec, prec)
    # the fitted lattice indexes every column and the measured cell reproduces the sites
    ix = fit_lattice(cols, cell, reference_type="Pb")
    inner = (cols.x_A > 6) & (cols.x_A < cols.x_A.max() - 6)
    assert (ix.site[inner] >= 0).all()
    pc = projected_unit_cell(ix, cell)
    assert pc.a_A == pytest.approx(cell.a_A, rel=0.005)
    assert pc.b_A == pytest.approx(cell.b_A, rel=0.005)
    du = pc.sites[["u", "v"]].to_numpy() - cell.sites[["u", "v"]].to_numpy()
    assert np.all(np.abs((du + 0.5) % 1 - 0.5) < 0.01)


def test_find_voronoi_bad_input():
    from perovstem.atoms import voronoi_intensities
    from perovstem.errors import ParameterError

    rng = np.random.default_rng(0)
    img, truth = _perovskite_image(rng)
    bad = img.data.copy()
    bad[10, 10] = np.nan
    for call in (
        lambda: find_columns(Image(bad, 0.5), separation_A=2.0),
        lambda: find_columns(Image(bad, 0.5), cell=cspbbr3_001_cell(6.0)),
        lambda: voronoi_intensities(Image(bad, 0.5), truth[["x", "y"]].to_numpy() * 0.5),
    ):
        with pytest.raises(DataError, match="non-finite"):
            call()
    with pytest.raises(DataError, match="outside the image"):
        voronoi_intensities(img, np.array([[1e4, 1e4], [3.0, 3.0], [6.0, 3.0]]))
    with pytest.raises(DataError, match="empty"):
        voronoi_intensities(img, np.zeros((0, 2)))
    with pytest.raises(ParameterError, match="separation_A"):
        find_columns(img, separation_A=-1.0)
    with pytest.raises(ParameterError, match="pixel_size_A"):
        find_columns(img.data)
