"""Column finding: peaks, lattice, sublattice-aware detection on simulated CsPbBr3 [001]."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.spatial import cKDTree

from perovstem import Image
from perovstem.atoms import (
    ProjectedCell,
    cspbbr3_001_cell,
    estimate_lattice,
    find_columns,
    find_peaks,
)
from perovstem.errors import DataError, FileFormatError, ParameterError
from perovstem.io.statstem_db import read_statstem_cell

from ._synth import render


def _pr(found, truth, tol=1.0):
    if len(found) == 0:
        return 0.0, 0.0
    d, _ = cKDTree(found).query(truth)
    d2, _ = cKDTree(truth).query(found)
    return float(np.mean(d < tol)), float(np.mean(d2 < tol))


@pytest.fixture(scope="module")
def simulated():
    import perovstem.simulate as sim

    out = []
    for seed, dose, edge, term in [
        (0, 2e4, 40.0, "CsBr"),
        (1, 5e3, 35.0, "CsBr"),
        (2, 1e5, 46.0, "CsBr"),
        (6, 1e3, 40.0, "PbBr2"),
    ]:
        atoms = sim.nanocrystal(edge, rng=seed, termination=term)
        img, truth = sim.haadf_image(atoms, pixel_size_A=0.3, dose_e_per_A2=dose, rng=seed + 10)
        out.append((img, truth, dose))
    return out


def test_cell_detection_precision_recall(simulated):
    cell = cspbbr3_001_cell()
    for img, truth, dose in simulated:
        cols = find_columns(img, cell=cell)
        vec = np.asarray(cols.attrs["lattice_vectors_A"])
        assert np.linalg.norm(vec, axis=1) == pytest.approx([5.87, 5.87], rel=0.01)
        for t in ("PbBr", "Cs", "Br"):
            sel = truth.type == t
            if t == "Br":
                # A lone surface Br atom scatters ~0.002 Å² of the beam: at 10³ e⁻/Å² that is
                # ~2 expected electrons (Poisson P(0) ≈ 13 %), below any detection criterion.
                # Br recall is scored on columns with ≥ 3 expected electrons.
                sel &= truth.scs_A2 * dose >= 3.0
            tr = truth.loc[sel, ["x_A", "y_A"]].to_numpy()
            fo = cols.loc[cols.type == t, ["x_A", "y_A"]].to_numpy()
            recall, _ = _pr(fo, tr)
            # precision against every true column of the type (found lone Br are not false)
            _, precision = _pr(fo, truth.loc[truth.type == t, ["x_A", "y_A"]].to_numpy())
            if t == "Br":  # reported separately (weak columns); must still be mostly right
                assert recall > 0.95 and precision > 0.95, (dose, t, recall, precision)
            elif t == "Cs" and dose <= 1e3:
                # at 10³ e⁻/Å² one stray electron at an empty surface Cs site can pass the
                # presence test (a known limitation: test_no_stray_electron_cs_columns)
                n_false = round((1.0 - precision) * len(fo))
                assert recall >= 0.999 and n_false <= 1, (dose, t, recall, precision)
            else:
                assert recall >= 0.999 and precision >= 0.999, (dose, t, recall, precision)


@pytest.mark.xfail(
    strict=True,
    reason="known limitation: at 10³ e⁻/Å² a single stray electron at an empty surface Cs "
    "site of a PbBr2-terminated crystal gives a contrast of ~0.17–0.18 (noise-free: 0.01), "
    "just above the presence threshold 0.08 × the typical Cs contrast (~2.1); the noise "
    "floor of the site test is ~0 on a zero-count vacuum. Seeds 0–9: a false Cs column on "
    "seeds 0 and 6 (CPU-independent shot noise) and 0 and 5 (earlier noise), 1 of ~50 each",
)
def test_no_stray_electron_cs_columns():
    import perovstem.simulate as sim

    cell = cspbbr3_001_cell()
    n_false = n_found = 0
    for seed in range(10):
        atoms = sim.nanocrystal(40.0, rng=seed, termination="PbBr2")
        img, truth = sim.haadf_image(atoms, pixel_size_A=0.3, dose_e_per_A2=1e3, rng=seed + 10)
        cols = find_columns(img, cell=cell)
        fo = cols.loc[cols.type == "Cs", ["x_A", "y_A"]].to_numpy()
        d, _ = cKDTree(truth.loc[truth.type == "Cs", ["x_A", "y_A"]].to_numpy()).query(fo)
        n_false += int(np.sum(d >= 1.0))
        n_found += len(fo)
    assert n_false == 0, (n_false, n_found)


def test_peaks_and_lattice_on_synthetic_square():
    rng = np.random.default_rng(0)
    g = np.arange(6, 90, 7.0)
    gx, gy = np.meshgrid(g, g)
    lam = render(
        (96, 96),
        gx.ravel(),
        gy.ravel(),
        np.full(gx.size, 200.0),
        np.full(gx.size, 1.3),
        background=20.0,
    )
    img = Image(rng.poisson(lam).astype(float), 0.2)
    vec = estimate_lattice(img)
    assert sorted(np.linalg.norm(vec, axis=1)) == pytest.approx([1.4, 1.4], rel=0.03)
    pk = find_peaks(img)
    rec, prec = _pr(
        pk[["x_A", "y_A"]].to_numpy(), np.column_stack([gx.ravel(), gy.ravel()]) * 0.2, tol=0.1
    )
    assert rec == 1.0 and prec == 1.0
    # a known pixel noise (Poisson: sqrt of the mean) gives the same peaks; a bad one is refused
    pk2 = find_peaks(img, pixel_noise=float(np.sqrt(lam.mean())))
    assert len(pk2) == len(pk)
    with pytest.raises(ParameterError, match="pixel_noise"):
        find_peaks(img, pixel_noise=0.0)
    # intensity typing without a cell: two populations
    eta = np.where((np.arange(gx.size) % 2) == 0, 300.0, 90.0)
    lam2 = render((96, 96), gx.ravel(), gy.ravel(), eta, np.full(gx.size, 1.3))
    cols = find_columns(
        Image(rng.poisson(lam2 + 5).astype(float), 0.2),
        n_types=2,
        type_names=["heavy", "light"],
        separation_A=0.6,
    )
    m = cKDTree(np.column_stack([gx.ravel(), gy.ravel()]) * 0.2).query(
        cols[["x_A", "y_A"]].to_numpy()
    )[1]
    assert np.all((cols.type == "heavy").to_numpy() == (eta[m] == 300.0))


def test_statstem_database_reader(statstem_data):
    cell = read_statstem_cell(statstem_data / "database" / "CsPbBr3_100.txt", rename={"Pb": "PbBr"})
    assert cell.a_A == 5.85 and cell.types == ["PbBr", "Cs"]
    assert cell.sites.u.tolist() == [0.0, 0.5]
    assert cell.min_distance_A() == pytest.approx(5.85 / np.sqrt(2))
    path = statstem_data / "database" / "Pure_CsPbI3_gamma_phase_300K_1-10.txt"
    atoms = read_statstem_cell(path, merge_A=None)  # one site per listed atom
    assert len(atoms.sites) == 20 and set(atoms.types) == {"Pb", "Cs", "I"}
    assert atoms.b_A == 12.58
    # default: atoms < 0.5 Å apart in projection (tilt-split Pb and Cs pairs) are one column
    big = read_statstem_cell(path)
    assert len(big.sites) == 16 and big.sites.n_atoms.sum() == 20
    assert sorted(big.sites[big.sites.type != "I"].n_atoms) == [2, 2, 2, 2]
    assert big.min_distance_A() > 0.5
    # stacked atoms (same x, y, different zInfo) are one column
    stacked = read_statstem_cell(
        statstem_data / "database" / "Pure_CsPbI3_gamma_phase_300K_001.txt"
    )
    assert len(stacked.sites) == 2 and stacked.sites.n_atoms.tolist() == [2, 2]


def test_reader_and_cell_bad_input(tmp_path):
    with pytest.raises(FileFormatError, match="no such"):
        read_statstem_cell(tmp_path / "missing.txt")
    p = tmp_path / "bad.txt"
    p.write_text("Database file for StatSTEM\nlength_a\t5\n")
    with pytest.raises(FileFormatError, match="length_b"):
        read_statstem_cell(p)
    p.write_text("x\nlength_a 5\nlength_b 5\nangle_ab 90\natoms x y\nPb zero 0\n")
    with pytest.raises(FileFormatError, match="line 6"):
        read_statstem_cell(p)
    with pytest.raises(ParameterError, match="a_A"):
        ProjectedCell(0.0, 5.0, 90.0, pd.DataFrame({"type": ["a"], "u": [0], "v": [0]}))
    with pytest.raises(ParameterError, match="reference_type"):
        find_columns(
            Image(np.random.default_rng(0).random((40, 40)), 0.3),
            cell=cspbbr3_001_cell(),
            reference_type="Xe",
        )


def test_no_peaks_raises():
    flat = Image(np.full((64, 64), 7.0), 0.3)
    with pytest.raises(DataError, match="no atom columns"):
        find_columns(flat, separation_A=1.0)
    with pytest.raises(DataError):
        find_columns(flat, cell=cspbbr3_001_cell())


@pytest.mark.parametrize("sep", [1e30, 200.0])
def test_separation_larger_than_the_image_is_a_parameter_error(sep):
    # was a numpy "Maximum allowed size exceeded" traceback (1e30) or a huge footprint
    img = Image(np.random.default_rng(0).poisson(10.0, (32, 32)).astype(float), 0.5)
    with pytest.raises(ParameterError, match=r"separation_A.*smaller than the image.*16 Å"):
        find_peaks(img, separation_A=sep)
    with pytest.raises(ParameterError, match="separation_A"):
        find_columns(img, separation_A=sep)


def test_find_peaks_rejects_negative_sigma_and_nan_snr():
    # sigma_A=-1 was replaced by 0.5 px; min_snr=nan returned no peaks and no error
    img = Image(np.random.default_rng(0).poisson(10.0, (32, 32)).astype(float), 0.5)
    with pytest.raises(ParameterError, match=r"sigma_A.*-1"):
        find_peaks(img, separation_A=3.0, sigma_A=-1.0)
    with pytest.raises(ParameterError, match=r"min_snr.*nan"):
        find_peaks(img, separation_A=3.0, min_snr=float("nan"))


def test_find_peaks_fast_on_fine_sampling_with_a_zero_count_vacuum():
    """0.05 Å pixels, a few columns in a zero-count vacuum: every vacuum pixel is a plateau
    candidate of the disk-maximum test (radius ~90 px); this took ~70 s before."""
    import time

    from perovstem import Image
    from perovstem.atoms import find_peaks

    dx = 0.05
    yy, xx = np.mgrid[0:1000, 0:1000] * dx
    data = np.zeros((1000, 1000))
    centres = [(10.0 + 5.87 * i, 10.0 + 5.87 * j) for i in range(4) for j in range(4)]
    for cx, cy in centres:
        data += 100.0 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 0.4**2))
    t0 = time.perf_counter()
    pk = find_peaks(Image(data, dx), separation_A=0.75 * 5.87)
    assert time.perf_counter() - t0 < 10.0
    assert len(pk) == 16
    found = np.sort(pk[["x_A", "y_A"]].to_numpy(), axis=0)
    np.testing.assert_allclose(found, np.sort(np.array(centres), axis=0), atol=0.05)


@pytest.mark.parametrize(("gain", "offset"), [(1.0, 0.0), (7.3, 100.0)])
def test_noise_estimate_on_sparse_poisson_counts(gain, offset):
    """0.05–0.3 counts/px: most pixels share the zero-count value, so a MAD is 0 (it gave
    σ = 1e-12); the estimate must be within 1.5× of gain·√λ."""
    from perovstem.atoms.find import _pixel_noise

    rng = np.random.default_rng(11)
    for lam in (0.05, 0.1, 0.3):
        img = gain * rng.poisson(lam, (150, 150)).astype(float) + offset
        truth = gain * np.sqrt(lam)
        assert truth / 1.5 < _pixel_noise(img) < 1.5 * truth, lam


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_find_peaks_no_false_peaks_in_a_sparse_count_vacuum(seed):
    """Columns on a low halo (0.02–0.2 counts/px, a probe tail) in a zero-count vacuum: the
    stray counts of the halo were each a peak when the threshold was 0."""
    rng = np.random.default_rng(seed)
    dx, n = 0.25, 160
    c = [(12.0 + 5.87 * i, 12.0 + 5.87 * j) for i in range(3) for j in range(3)]
    xy = np.array(c) / dx
    lam = render((n, n), xy[:, 0], xy[:, 1], np.full(len(c), 15.0), np.full(len(c), 2.0))
    yy, xx = np.mgrid[0:n, 0:n] * dx
    r = np.hypot(xx - 17.87, yy - 17.87)
    lam += np.where(r < 16.0, 0.2 * np.exp(-r / 6.0), 0.0)
    img = rng.poisson(lam).astype(float)
    assert np.mean(img == 0) > 0.8
    pk = find_peaks(Image(img, dx), separation_A=0.6 * 5.87)
    rec, prec = _pr(pk[["x_A", "y_A"]].to_numpy(), np.array(c))
    assert rec == 1.0 and prec == 1.0, (rec, prec, len(pk))


def _recall(cols, truth_xy, t, tol=0.6):
    c = cols.loc[cols.type == t, ["x_A", "y_A"]].to_numpy()
    d, _ = cKDTree(c).query(truth_xy)
    return float(np.mean(d < tol))


@pytest.mark.parametrize("declared_A", [0.276, 0.33])
def test_cell_lattice_found_when_the_pixel_size_is_off(declared_A):
    # a 130 Å crystal (22 cells) imaged at 0.3 Å but calibrated 8 % low / 10 % high: rounding
    # the fractional coordinates on the cell's lattice aliased columns beyond a few cells
    # (PbBr recall 0.06 at 0.276 Å before); growth indexing at the measured scale finds all,
    # and the user is told the lattice disagrees with the cell
    import perovstem.simulate as sim

    img, truth = sim.haadf_image(
        sim.nanocrystal(130.0, rng=5), pixel_size_A=0.3, dose_e_per_A2=2e4, rng=15
    )
    im = Image(np.asarray(img.data), pixel_size_A=declared_A, metadata=dict(img.metadata))
    with pytest.warns(UserWarning, match="lattice in the image is") as rec:
        cols = find_columns(im, cell=cspbbr3_001_cell())
    scale = declared_A / 0.3
    assert cols.attrs["lattice_scale"] == pytest.approx(scale, rel=0.01)
    assert f"{scale:.3f}" in str(rec[0].message)
    assert "--cd-fraction" in str(rec[0].message)  # a Cd alloy's smaller lattice, named too
    for t in ("PbBr", "Cs"):
        xy = truth.loc[truth.type == t, ["x_A", "y_A"]].to_numpy() * declared_A / 0.3
        assert _recall(cols, xy, t) == 1.0


def test_cell_sites_follow_a_scan_distorted_lattice():
    # rows shifted by 0.75 Å·sin(2πy/L) (fast-scan distortion): a straight lattice put Cs
    # sites up to 0.75 Å off and lost 23 % of them (seed 3); the smoothed residual field
    # of the reference columns places every site
    import perovstem.simulate as sim

    img, truth = sim.haadf_image(
        sim.nanocrystal(70.0, rng=3), pixel_size_A=0.3, dose_e_per_A2=2e4, rng=13
    )
    data = np.asarray(img.data, float)
    ny, nx = data.shape
    amp, period = 2.5, 0.8 * ny  # px
    yy, xx = np.mgrid[0:ny, 0:nx].astype(float)
    warp = amp * np.sin(2 * np.pi * yy / period)
    from scipy import ndimage

    data = ndimage.map_coordinates(data, [yy, xx - warp], order=1, mode="nearest")
    cols = find_columns(Image(data, pixel_size_A=0.3), cell=cspbbr3_001_cell())
    for t in ("PbBr", "Cs"):
        xy = truth.loc[truth.type == t, ["x_A", "y_A"]].to_numpy()
        xy[:, 0] += 0.3 * amp * np.sin(2 * np.pi * (xy[:, 1] / 0.3) / period)
        assert _recall(cols, xy, t, tol=0.5) >= 0.98


def test_columns_and_strain_of_the_real_cspbbr3_image(statstem_data):
    # StatSTEM's CsPbBr3 example: the image's lattice is 0.89 × the 5.87 Å cell (calibration),
    # sheared by 2°.  Before: the finder placed a 5.8 Å lattice (most sites between columns)
    # and fit_lattice indexed 10 % of StatSTEM's columns (strain −8.7 % everywhere).
    from perovstem.atoms import fit_lattice, lattice_strain
    from perovstem.io import load_statstem

    ex = load_statstem(statstem_data / "npz" / "Example3_CsPbBr3.npz")
    ref = ex.reference
    with pytest.warns(UserWarning, match="lattice in the image is 0.89"):
        cols = find_columns(ex.image, cell=cspbbr3_001_cell())
    # StatSTEM's 415 hand-checked starting columns (measured 0.98 / 0.94)
    assert _recall(cols, ref.loc[ref.type == "PbBr", ["x_A", "y_A"]].to_numpy(), "PbBr", 0.5) > 0.95
    assert _recall(cols, ref.loc[ref.type == "Cs", ["x_A", "y_A"]].to_numpy(), "Cs", 0.5) > 0.9
    # strain map against StatSTEM's (another estimator and reference region): correlations
    # measured 0.89 / 0.83 / 0.84 / 0.86, 0.5–0.6 on 43 columns before
    cols_ref = ref.copy()
    cols_ref.attrs["pixel_size_A"] = ex.image.pixel_size_A
    with pytest.warns(UserWarning, match="lattice in the image"):
        ix = fit_lattice(cols_ref, cspbbr3_001_cell())
    assert (ix["site"] >= 0).all()
    st = lattice_strain(ix)
    raw = np.load(statstem_data / "npz" / "Example3_CsPbBr3.npz")
    for ours, theirs in [
        ("eps_xx", "strain_eps_xx"),
        ("eps_yy", "strain_eps_yy"),
        ("eps_xy", "strain_eps_xy"),
        ("omega_xy", "strain_omg_xy"),
    ]:
        assert np.corrcoef(st[ours].to_numpy(), raw[theirs])[0, 1] > 0.75
    # StatSTEM refers ε to its square cell, we to the fitted lattice (2° shear): ε_xy differed
    # by a constant (mean −0.0172, RMS 0.019); the lattice's mean shear is reported (−0.0173
    # ± 0.0003) and ours + it matches StatSTEM's (mean difference 2·10⁻⁵, RMS 0.008)
    shear = st.attrs["lattice_shear_xy"]
    assert st.attrs["lattice_shear_xy_err"] < 1e-3
    diff = raw["strain_eps_xy"] - (st["eps_xy"].to_numpy() + shear)
    assert abs(np.mean(raw["strain_eps_xy"] - st["eps_xy"].to_numpy())) > 0.01
    assert abs(np.mean(diff)) < 2e-3


@pytest.mark.parametrize(
    ("name", "min_recall"),
    # measured 0.785 / 0.857; before, 0.457 / 0.357 (lattice "21 Å" / "20.7 Å" from the
    # particle's envelope, so the peak separation was 2.6 / 2.0 Å)
    [("Example2_Pb", 0.75), ("Example_PtIr", 0.8)],
)
def test_lattice_and_peaks_on_real_nanoparticles(statstem_data, name, min_recall):
    from perovstem.io import load_statstem

    ex = load_statstem(statstem_data / "npz" / f"{name}.npz")
    vec = estimate_lattice(ex.image)
    assert np.linalg.norm(vec, axis=1).max() < 4.0  # atomic spacings, not the particle
    pk = find_peaks(ex.image)
    ref = ex.coordinates[["x_A", "y_A"]].to_numpy()
    d, _ = cKDTree(pk[["x_A", "y_A"]].to_numpy()).query(ref)
    assert np.mean(d < 0.6) >= min_recall


def test_every_statstem_database_cell_reads(statstem_data):
    # Au100, Ce100 and Pt100 name the site section "columns" (the others "atoms"): they were
    # refused as "no 'atoms' section"
    files = sorted((statstem_data / "database").glob("*.txt"))
    assert len(files) >= 17
    for f in files:
        cell = read_statstem_cell(f)
        assert len(cell.sites) >= 1 and cell.a_A > 0, f.name
    pt = read_statstem_cell(statstem_data / "database" / "Pt100.txt")
    assert pt.a_A == 3.9242 and pt.min_distance_A() == pytest.approx(3.9242 / 2)


def _two_crystals(rot_deg, shift_A, *, seed, edge_A=40.0, px=0.3, dose=2e4):
    from scipy.spatial.transform import Rotation

    import perovstem.simulate as sim

    a = sim.nanocrystal(edge_A, rng=seed)
    b = sim.nanocrystal(edge_A, rng=seed + 1)
    ca = a.positions.mean(axis=0)
    b.positions = (
        Rotation.from_euler("z", rot_deg, degrees=True).apply(b.positions - b.positions.mean(0))
        + ca
        + [*shift_A, 0.0]
    )
    img, truth = sim.haadf_image(a + b, pixel_size_A=px, dose_e_per_A2=dose, rng=seed + 10)
    second = truth["x_A"].to_numpy() > truth["x_A"].min() + edge_A + 0.5 * (shift_A[0] - edge_A)
    return img, truth, second


def _pr_type(cols, truth, t, which):
    found = cols.loc[cols.type == t, ["x_A", "y_A"]].to_numpy()
    tr = truth.loc[(truth.type == t).to_numpy() & which, ["x_A", "y_A"]].to_numpy()
    rec = float(np.mean(cKDTree(found).query(tr)[0] < 0.6))
    alltr = truth.loc[truth.type == t, ["x_A", "y_A"]].to_numpy()
    prec = float(np.mean(cKDTree(alltr).query(found)[0] < 0.6))
    return rec, prec


@pytest.mark.parametrize(
    ("rot", "shift", "seed"),
    [(30.0, (62.0, 0.0), 1), (17.0, (60.0, -7.0), 4), (0.0, (61.3, 2.1), 7)],
)
def test_two_crystals_in_the_field_each_on_its_own_lattice(rot, shift, seed):
    # one lattice fitted over the field put the second crystal's sites between its columns
    # (turned 30°: recall 0.13 and 28 % false columns); same orientation at an offset that is
    # no lattice vector: 0.98 recall.  Each crystal is now a grain with its own lattice.
    from perovstem.atoms import fit_lattice, lattice_strain, projected_unit_cell

    img, truth, second = _two_crystals(rot, shift, seed=seed)
    cols = find_columns(img, cell=cspbbr3_001_cell())
    assert cols["grain"].nunique() == 2
    # each crystal's in-plane rotation (mod 90° for the square cell)
    for r in (0.0, rot):
        dist = [abs((g["rotation_deg"] - r + 45.0) % 90.0 - 45.0) for g in cols.attrs["grains"]]
        assert min(dist) < 0.5, (r, cols.attrs["grains"])
    for t in ("PbBr", "Cs", "Br"):
        for which in (~second, second):
            rec, prec = _pr_type(cols, truth, t, which)
            assert rec == 1.0 and prec == 1.0, (t, rec, prec)
    # strain per grain: an unstrained simulated crystal has |ε| well below 1 % everywhere
    ix = fit_lattice(cols, cspbbr3_001_cell())
    assert len(ix.attrs["grains"]) == 2
    assert (ix["site"] >= 0).all()
    st = lattice_strain(ix)
    inner = st["n_neighbours"] >= 4
    assert np.nanmax(np.abs(st.loc[inner, ["eps_xx", "eps_yy", "eps_xy"]].to_numpy())) < 0.01
    pc = projected_unit_cell(ix, cspbbr3_001_cell())
    assert pc.a_A == pytest.approx(5.87, rel=0.005)
    du = pc.sites[["u", "v"]].to_numpy() - cspbbr3_001_cell().sites[["u", "v"]].to_numpy()
    assert np.all(np.abs((du + 0.5) % 1 - 0.5) < 0.01)


@pytest.mark.parametrize(("rot", "shift", "seed"), [(20.0, (41.0, 0.0), 1), (12.0, (36.0, 3.0), 1)])
def test_touching_crystals_each_on_its_own_lattice(rot, shift, seed):
    # a grain boundary: two 40 Å crystals touching (20° apart) or overlapping by 4 Å (12°).
    # The lattice growth stepped across the boundary and the refit gave one lattice between
    # the two that indexed both: one grain at 8.6° (+ two partial ones), recall 0.63-0.72 and
    # 16 % false columns; at 12° eight grains all at 5.2°.  Now 2 grains at 0° and rot,
    # recall 0.92-0.99 (columns where the crystals overlap in projection are mixed), no false
    # column
    img, truth, second = _two_crystals(rot, shift, seed=seed)
    cols = find_columns(img, cell=cspbbr3_001_cell())
    assert len(cols.attrs["grains"]) == 2
    for r in (0.0, rot):
        dist = [abs((g["rotation_deg"] - r + 45.0) % 90.0 - 45.0) for g in cols.attrs["grains"]]
        assert min(dist) < 0.3, (r, cols.attrs["grains"])
    for t in ("PbBr", "Cs", "Br"):
        for which in (~second, second):
            assert _pr_type(cols, truth, t, which)[0] >= 0.85, t
    # every column found is a column of the field (mixed ones where the crystals overlap)
    d = cKDTree(truth[["x_A", "y_A"]].to_numpy()).query(cols[["x_A", "y_A"]].to_numpy())[0]
    assert np.all(d < 0.6)


def test_thin_crystal_beside_a_thick_one_is_a_grain():
    # a 15 Å thick platelet (30 Å wide, turned 25°) beside a 50 Å cube: its Pb-Br columns
    # are below half the bright population set by the cube, so no lattice was fitted to them
    # and none of its 121 columns was found (3 crystals in the field: 2 grains, recall 0.80)
    from scipy.spatial.transform import Rotation

    import perovstem.simulate as sim

    parts = [
        (sim.nanocrystal(50.0, rng=1), 0.0, (-10.0, 0.0)),
        (sim.nanocrystal(30.0, shape="platelet", thickness_A=15.0, rng=2), 25.0, (50.0, -5.0)),
        (sim.nanocrystal(22.0, shape="platelet", thickness_A=45.0, rng=3), 60.0, (0.0, 45.0)),
    ]
    field = None
    for atoms, rot, shift in parts:
        p = atoms.positions - atoms.positions.mean(axis=0)
        atoms.positions = Rotation.from_euler("z", rot, degrees=True).apply(p) + [*shift, 0.0]
        field = atoms if field is None else field + atoms
    img, truth = sim.haadf_image(field, pixel_size_A=0.3, dose_e_per_A2=2e4, rng=10)
    cols = find_columns(img, cell=cspbbr3_001_cell())
    rots = sorted(round(g["rotation_deg"] % 90.0) % 90 for g in cols.attrs["grains"])
    assert rots == [0, 25, 60], cols.attrs["grains"]
    thin = (truth["x_A"] > truth["x_A"].min() + 60).to_numpy()
    for t in ("PbBr", "Cs", "Br"):
        for which in (thin, ~thin):
            rec, prec = _pr_type(cols, truth, t, which)
            assert rec == 1.0 and prec == 1.0, (t, rec, prec)


def test_one_crystal_is_one_grain():
    import perovstem.simulate as sim

    for seed in (2, 3):
        img, _ = sim.haadf_image(
            sim.nanocrystal(50.0, rng=seed), pixel_size_A=0.35, dose_e_per_A2=3e3, rng=seed
        )
        cols = find_columns(img, cell=cspbbr3_001_cell())
        assert (cols["grain"] == 0).all() and len(cols.attrs["grains"]) == 1


@pytest.mark.parametrize(("small", "rot", "shift", "seed"), [(12.0, 30.0, (48.0, 0.0), 2)])
def test_a_crystal_too_small_for_a_grain_keeps_its_own_peaks(small, rot, shift, seed):
    # a crystal of < 12 reference columns (3×3 cells) is no grain: the big grain's sites
    # were placed over it and passed the presence test between its columns (3–7 false
    # columns, its columns' recall 0.08–0.18).  Its unexplained peaks are now columns of
    # grain −1 (not indexed, typed by intensity) and the sites between them go
    import warnings

    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.transform import Rotation

    import perovstem.simulate as sim
    from perovstem.atoms import strain_analysis

    a = sim.nanocrystal(40.0, rng=seed)
    b = sim.nanocrystal(small, rng=seed + 1)
    ca = a.positions.mean(axis=0)
    b.positions = (
        Rotation.from_euler("z", rot, degrees=True).apply(b.positions - b.positions.mean(0))
        + ca
        + [*shift, 0.0]
    )
    img, truth = sim.haadf_image(a + b, pixel_size_A=0.3, dose_e_per_A2=2e4, rng=seed + 10)
    xt = truth[["x_A", "y_A"]].to_numpy()
    lab = fcluster(linkage(xt, "single"), 4.5, "distance")
    in_small = lab != np.bincount(lab).argmax()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cols = find_columns(img, cell=cspbbr3_001_cell())
    xf = cols[["x_A", "y_A"]].to_numpy()
    false = cKDTree(xt).query(xf)[0] > 0.6
    assert false.sum() <= 1, xf[false]  # measured 0-2 per field (3-7 before)
    assert np.mean(cKDTree(xf).query(xt[in_small])[0] < 0.6) > 0.4  # measured 0.51-0.6
    assert np.mean(cKDTree(xf).query(xt[~in_small])[0] < 0.6) > 0.99
    free = cols["grain"] == -1
    assert free.sum() >= 5 and (cols.loc[free, "site"] == -1).all()
    # typed on the small crystal's own intensity scale (on the big one's: all one class too
    # dim, accuracy 0.0); measured 0.75-0.92
    d, j = cKDTree(xt).query(xf[free.to_numpy()])
    assert np.mean(cols.loc[free, "type"].to_numpy() == truth["type"].to_numpy()[j]) > 0.6
    assert cols.attrs["n_unindexed"] == free.sum()
    # downstream: indexed per grain, the free columns left unindexed
    st, _ = strain_analysis(cols.assign(x_err_A=0.05, y_err_A=0.05), cspbbr3_001_cell())
    assert (st.loc[free.to_numpy(), "site"] == -1).all()
    assert (st.loc[~free.to_numpy(), "site"] >= 0).mean() > 0.99
