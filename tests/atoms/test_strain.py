"""Strain maps: lattice frame, error propagation, ``perovstem atoms strain`` and the
``atoms.strain`` pipeline step.

Before: ε and ω only in the image axes and without errors, and no command or pipeline step
(``fit_lattice`` / ``lattice_strain`` were library functions only).
"""

from __future__ import annotations

import tomllib
import warnings

import numpy as np
import pandas as pd
import pytest

from perovstem.atoms import cspbbr3_001_cell, fit_lattice, lattice_strain

E = ["eps_xx", "eps_yy", "eps_xy", "omega_xy"]


def _columns(rot_deg, *, rng=None, n=(14, 12)):
    """CsPbBr3 [001] columns, +2 % along a beyond the middle and a bend, turned ``rot_deg``;
    with ``rng``: Gaussian position noise with the stated x_err_A, y_err_A."""
    h, k = np.meshgrid(np.arange(n[0]), np.arange(n[1]), indexing="ij")
    rows = []
    for t, (u, v) in [("PbBr", (0, 0)), ("Br", (0.5, 0)), ("Br", (0, 0.5)), ("Cs", (0.5, 0.5))]:
        x = (h.ravel() + u) * 5.87
        y = (k.ravel() + v) * 5.87
        x = x + 0.02 * 5.87 * np.maximum(h.ravel() + u - 7, 0)
        y = y + 0.01 * x * np.sin(y / 20)
        rows.append(pd.DataFrame({"x": x, "y": y, "type": t}))
    d = pd.concat(rows, ignore_index=True)
    c, s = np.cos(np.radians(rot_deg)), np.sin(np.radians(rot_deg))
    d["x_A"] = c * d.x - s * d.y + 100
    d["y_A"] = s * d.x + c * d.y + 100
    if rng is not None:
        sx = np.where(d.type == "Br", 0.05, 0.02)
        d["x_A"] += rng.normal(0, 1, len(d)) * sx
        d["y_A"] += rng.normal(0, 1, len(d)) * 1.5 * sx
        d["x_err_A"], d["y_err_A"] = sx, 1.5 * sx
    return d.drop(columns=["x", "y"])


def test_lattice_frame_is_independent_of_the_crystal_rotation():
    cell = cspbbr3_001_cell()
    ref = lattice_strain(fit_lattice(_columns(0.0), cell), frame="lab")[E].to_numpy()
    assert np.nanmax(ref[:, 0]) > 0.008  # the +2 % step is seen along a
    # at −65° the square cell's vector nearest +x (the convention for a) is the old b: the
    # lattice frame is the old one turned 90° (ε_xx ↔ ε_yy, ε_xy → −ε_xy, ω unchanged)
    turned = ref[:, [1, 0, 2, 3]] * [1, 1, -1, 1]
    for rot, want in ((30.0, ref), (-65.0, turned)):
        lat = lattice_strain(fit_lattice(_columns(rot), cell))[E].to_numpy()
        lab = lattice_strain(fit_lattice(_columns(rot), cell), frame="lab")[E].to_numpy()
        assert np.nanmax(np.abs(lat - want)) < 1e-3
        assert np.nanmax(np.abs(lab - ref)) > 5e-3  # image axes mix the components
    with pytest.raises(Exception, match="frame"):
        lattice_strain(fit_lattice(_columns(0.0), cell), frame="crystal")


def test_strain_errors_propagate_the_position_errors():
    # the spread of ε over 60 noise draws equals the propagated error (turned 30°, lattice
    # frame: the covariance of F is rotated, not only the variances)
    cell = cspbbr3_001_cell()
    rng = np.random.default_rng(4)
    draws, err = [], None
    for _ in range(60):
        st = lattice_strain(fit_lattice(_columns(30.0, rng=rng, n=(9, 8)), cell, rotation_deg=30.0))
        draws.append(st[E].to_numpy())
        err = st[[f"{e}_err" for e in E]].to_numpy()
    ratio = np.nanstd(np.array(draws), axis=0) / err
    assert np.allclose(np.nanmedian(ratio, axis=0), 1.0, atol=0.06), np.nanmedian(ratio, axis=0)


@pytest.fixture(scope="module")
def two_crystal_columns(tmp_path_factory):
    from perovstem.atoms import find_columns, fit_columns
    from perovstem.io import save_table

    from .test_find import _two_crystals

    img, truth, _ = _two_crystals(30.0, (62.0, 0.0), seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cols = fit_columns(img, find_columns(img, cell=cspbbr3_001_cell()))
    path = tmp_path_factory.mktemp("s") / "cols.parquet"
    save_table(cols, path)
    return path, cols


def test_cli_strain(two_crystal_columns, tmp_path, capsys):
    from perovstem.cli.main import main
    from perovstem.io import read_table

    path, cols = two_crystal_columns
    out = tmp_path / "st.parquet"
    assert main(["atoms", "strain", str(path), "-o", str(out)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "450 of 450 columns indexed in 2 crystals" in text
    assert "mean shear of the lattice vs the cell" in text  # StatSTEM's square-cell frame
    st = read_table(out)
    # an unstrained simulated crystal: |ε| / propagated error is |N(0, 1)|-like (median
    # 0.67; measured 0.69-0.81, within 3σ 0.99).  Before the variance model of fit_columns'
    # least-squares errors: median 1.4-1.6, 8 % beyond 4σ (Pb-Br position errors 5x too small)
    z = np.abs(st[E].to_numpy()) / st[[f"{e}_err" for e in E]].to_numpy()
    assert np.all(np.nanmedian(z, axis=0) < 0.95) and np.nanmean(z < 3) > 0.97
    cell = pd.read_csv(tmp_path / "st_cell.csv")
    assert cell["a_A"].iloc[0] == pytest.approx(5.87, rel=0.002)
    # an unsheared simulated crystal: the lattice's mean shear is zero within its error
    assert abs(cell["lattice_shear_xy"].iloc[0]) < 4 * cell["lattice_shear_xy_err"].iloc[0]
    assert (tmp_path / "st.png").exists()
    assert main(["atoms", "strain", str(path), "-o", str(out)]) == 2  # exists: refused
    assert (
        main(["atoms", "strain", str(path), "-o", str(tmp_path / "x.parquet"), "--cell", "nacl"])
        == 2
    )


def test_pipeline_strain_step(two_crystal_columns, tmp_path):
    from perovstem.io import read_table
    from perovstem.pipeline import parse_config, run_pipeline

    path, cols = two_crystal_columns
    text = f"""
[run]
name = "s"
[inputs]
columns = "{path.as_posix()}"
[[step]]
run = "atoms.strain"
id = "strain"
"""
    cfg = parse_config(tomllib.loads(text), source="s.toml", text=text)
    r = run_pipeline(cfg, out=tmp_path / "run", quiet=True, scheduler="serial")
    assert [s.status for s in r.steps] == ["ran"], [s.message for s in r.steps]
    st = read_table(tmp_path / "run" / "tables" / "strain.strain.parquet")
    assert len(st) == len(cols) and (st["site"] >= 0).all()
    assert st.groupby("grain").size().tolist() == [225, 225]
    uc = read_table(tmp_path / "run" / "tables" / "strain.unit_cell.parquet")
    assert set(uc["type"]) == {"PbBr", "Br", "Cs"}
    html = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert "Strain maps" in html and "Measured projected unit cell" in html


def test_bad_radius_and_unfitted_columns_are_reported():
    # radius_A ≤ 0 gave an all-NaN map without a word; find_columns output (columns on their
    # lattice sites, no position errors) gave ε = 0 to 1e-15 everywhere, also silently
    import perovstem.simulate as sim
    from perovstem.atoms import find_columns
    from perovstem.errors import ParameterError

    cell = cspbbr3_001_cell()
    ix = fit_lattice(_columns(0.0), cell)
    for bad in (-1.0, 0.0, float("nan")):
        with pytest.raises(ParameterError, match="radius_A"):
            lattice_strain(ix, radius_A=bad)
    img, _ = sim.haadf_image(
        sim.nanocrystal(25.0, rng=1), pixel_size_A=0.3, dose_e_per_A2=2e4, rng=2
    )
    cols = find_columns(img, cell=cell)
    with pytest.warns(UserWarning, match="find_columns output"):
        st = lattice_strain(fit_lattice(cols, cell))
    assert np.nanmax(np.abs(st[E].to_numpy())) < 1e-9  # what the warning is about
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fitted-like columns (with errors): no warning
        lattice_strain(fit_lattice(_columns(0.0, rng=np.random.default_rng(1)), cell))


@pytest.mark.parametrize("rot", [0.0, 30.0, -65.0])
def test_mean_shear_of_the_fitted_lattice_is_reported(rot):
    # the fitted lattice absorbs a uniform shear (scan distortion): the local ε_xy is ~0
    # and was the only shear reported, so a map referred to the cell's square (StatSTEM)
    # differed by a constant (real CsPbBr3: 0.014).  The lattice's own mean shear is now in
    # attrs with its error, and ε_xy + lattice_shear_xy is the shear relative to the cell
    from perovstem.atoms import strain_analysis, unit_cell_table

    rng = np.random.default_rng(7)
    cell = cspbbr3_001_cell()
    h, k = np.meshgrid(np.arange(12), np.arange(11), indexing="ij")
    gam = 0.03  # simple shear x += γ·y: ε_xy = γ/2 in the lattice frame
    rows = []
    for t, (u, v) in [("PbBr", (0, 0)), ("Br", (0.5, 0)), ("Br", (0, 0.5)), ("Cs", (0.5, 0.5))]:
        y = (k.ravel() + v) * 5.87
        x = (h.ravel() + u) * 5.87 + gam * y
        rows.append(pd.DataFrame({"x": x, "y": y, "type": t}))
    d = pd.concat(rows, ignore_index=True)
    c, s = np.cos(np.radians(rot)), np.sin(np.radians(rot))
    sig = 0.03
    d["x_A"] = c * d.x - s * d.y + 80 + rng.normal(0, sig, len(d))
    d["y_A"] = s * d.x + c * d.y + 80 + rng.normal(0, sig, len(d))
    d["x_err_A"] = d["y_err_A"] = sig
    st, uc = strain_analysis(d.drop(columns=["x", "y"]), cell)
    assert abs(np.nanmedian(st["eps_xy"])) < 2e-3  # the lattice absorbed it
    # at -65° the lattice's a is the old b (ε_xy changes sign with the frame)
    want = gam / 2 if abs(rot) < 45 else -gam / 2
    shear, err = st.attrs["lattice_shear_xy"], st.attrs["lattice_shear_xy_err"]
    assert 0 < err < 2e-3 and abs(shear - want) < 4 * err, (shear, err, want)
    assert st.attrs["angle_err_deg"] > 0
    assert abs(st.attrs["angle_deg"] - 90.0) == pytest.approx(np.degrees(np.arctan(gam)), abs=0.1)
    t = unit_cell_table(uc, lattice=st)
    assert t.attrs["lattice_shear_xy"] == shear and (t["lattice_shear_xy_err"] == err).all()


def test_cli_strain_indexes_to_the_cell_of_the_fit(tmp_path, capsys):
    # a [011] fit read "need at least 3 columns of type 'PbBr', got 0": atoms strain always
    # took the [001] cell unless --cell was given again
    from perovstem.cli.main import main
    from perovstem.io import read_table

    img = tmp_path / "nc.tif"
    argv = ["simulate", "image", "-o", str(img), "--edge-A", "40", "--zone-axis", "011"]
    assert main([*argv, "--seed", "2"]) == 0
    cols = tmp_path / "cols.parquet"
    assert main(["atoms", "fit", str(img), "--cell", "cspbbr3_011", "-o", str(cols)]) == 0
    assert read_table(cols).attrs["cell_spec"] == "cspbbr3_011"
    capsys.readouterr()
    out = tmp_path / "st.parquet"
    assert main(["atoms", "strain", str(cols), "-o", str(out)]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "cell: cspbbr3_011 (the cell of the fit)" in said
    cell = pd.read_csv(tmp_path / "st_cell.csv")
    # the [011] projected cell: a along [100], b = a/√2 along [011]
    assert cell["a_A"].iloc[0] == pytest.approx(5.87, rel=0.01)
    assert cell["b_A"].iloc[0] == pytest.approx(5.87 / np.sqrt(2), rel=0.01)
    # the [001] cell given against that table: its types are named
    argv = ["atoms", "strain", str(cols), "-o", str(out), "--overwrite", "--cell", "cspbbr3"]
    assert main(argv) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "none of the cell's ['PbBr', 'Br', 'Cs']" in err and "Pb_011" in err
    # a table of an older fit (no cell_spec) still names its cell in cell_check
    old = read_table(cols)
    old.attrs.pop("cell_spec")
    from perovstem.io import save_table

    save_table(old, tmp_path / "old.parquet")
    argv = ["atoms", "strain", str(tmp_path / "old.parquet"), "-o", str(tmp_path / "o.parquet")]
    assert main(argv) == 0
    assert "cell: cspbbr3_011 (the fit's cell was 'CsPbBr3 [011]" in " ".join(
        capsys.readouterr().out.split()
    )
    # the pipeline step too: its default cell is the one whose types the table has
    from perovstem.pipeline import run_pipeline

    cfg = tmp_path / "s.toml"
    cfg.write_text(
        f'[run]\nname = "s"\n[inputs]\ncolumns = "{cols.as_posix()}"\n'
        '[[step]]\nrun = "atoms.strain"\nid = "strain"\n'
    )
    r = run_pipeline(cfg, out=tmp_path / "run", quiet=True, scheduler="serial", report=False)
    assert [s.status for s in r.steps] == ["ran"], [s.message for s in r.steps]
    uc = read_table(tmp_path / "run" / "tables" / "strain.unit_cell.parquet")
    assert set(uc["type"]) == {"Pb_011", "Br_011", "CsBr_011"}


def test_cli_strain_of_a_111_fit(tmp_path, capsys):
    from perovstem.cli.main import main

    img = tmp_path / "nc.tif"
    argv = ["simulate", "image", "-o", str(img), "--edge-A", "40", "--zone-axis", "111"]
    assert main([*argv, "--seed", "5"]) == 0
    cols = tmp_path / "cols.parquet"
    assert main(["atoms", "fit", str(img), "--cell", "cspbbr3", "-o", str(cols)]) == 2
    assert "rerun with --cell cspbbr3_111" in " ".join(capsys.readouterr().err.split())
    assert main(["atoms", "fit", str(img), "--cell", "cspbbr3_111", "-o", str(cols)]) == 0
    capsys.readouterr()
    assert main(["atoms", "strain", str(cols), "-o", str(tmp_path / "st.parquet")]) == 0
    assert "cell: cspbbr3_111 (the cell of the fit)" in " ".join(capsys.readouterr().out.split())
    cell = pd.read_csv(tmp_path / "st_cell.csv")
    assert cell["a_A"].iloc[0] == pytest.approx(5.87 * np.sqrt(2 / 3), rel=0.01)
    assert cell["angle_deg"].iloc[0] == pytest.approx(120.0, abs=1.0)


def test_unconverged_columns_are_left_out_of_the_strain(two_crystal_columns):
    """Columns whose fit did not converge carry no position estimate (a 500 e⁻/Å² fit:
    x_err_A up to 1.7e11 Å): the strain used them, and their errors spread into the
    neighbours' (eps_yy_err 2.7e6 beside 6e-6).  They are now left out with a warning:
    the result equals the strain of the converged columns alone."""
    from perovstem.atoms import strain_analysis
    from perovstem.errors import DataError

    _, cols = two_crystal_columns
    cell = cspbbr3_001_cell()
    cols = cols.copy()
    bad = np.zeros(len(cols), bool)
    bad[::9] = True
    cols["converged"] = ~bad
    cols.loc[bad, ["x_err_A", "y_err_A"]] = 1.7e11
    with pytest.warns(UserWarning, match=rf"{bad.sum()} of {len(cols)} columns did not converge"):
        st, _ = strain_analysis(cols, cell)
    assert st.attrs["n_columns_unconverged"] == bad.sum()
    errs = st[[f"{e}_err" for e in E]].to_numpy()
    assert np.nanmax(errs) < 0.1, np.nanmax(errs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref, _ = strain_analysis(cols[~bad].reset_index(drop=True), cell)
    pd.testing.assert_frame_equal(st, ref, check_like=True)
    with pytest.raises(DataError, match="no column of the .* converged"):
        strain_analysis(cols.assign(converged=False), cell)
