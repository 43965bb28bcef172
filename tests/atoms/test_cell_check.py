"""Does the projected cell explain the image?  ``find_columns(..., cell=...)`` checks it.

Before: a CsPbBr₃ crystal seen along [011] fitted with the default [001] cell gave ~60 % of
its columns, every one typed PbBr / Br / Cs, with no warning (and [001] with the [011] cell
alike).  Now the share of peaks among the found columns that lie off every site of the
fitted lattice, and the fitted lattice's shape (b/a, angle) against the cell's, are in
``attrs["cell_check"]``; a mismatch warns, and for a CsPbBr₃ cell the other built-in zone
axis is tried and named when it explains the image (the CLI then refuses).  The seeds here
are none of those the thresholds were chosen on (0–9, 20–43).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from perovstem import Image
from perovstem.atoms import cspbbr3_001_cell, cspbbr3_011_cell, cspbbr3_111_cell, find_columns
from perovstem.errors import DataError

CELLS = {"001": cspbbr3_001_cell, "011": cspbbr3_011_cell, "111": cspbbr3_111_cell}
CLI = {"001": "cspbbr3", "011": "cspbbr3_011", "111": "cspbbr3_111"}


def _crystal(zone, seed, edge_A, dose, px, rot_deg, cd, shape):
    import perovstem.simulate as sim

    at = sim.nanocrystal(edge_A, zone_axis=zone, cd_fraction=cd, rng=seed)
    at.positions = Rotation.from_euler("z", rot_deg, degrees=True).apply(
        at.positions - at.positions.mean(axis=0)
    )
    kw = {} if shape is None else {"shape": shape}  # a shape: the crystal fills the frame
    img, _ = sim.haadf_image(at, pixel_size_A=px, dose_e_per_A2=dose, rng=seed + 5, **kw)
    return img


def _find(img, cell):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        cols = find_columns(img, cell=cell)
    zone_warnings = [str(w.message) for w in rec if "does not explain the image" in str(w.message)]
    return cols, zone_warnings


# (image zone, seed, edge Å, dose e⁻/Å², pixel Å, rotation °, Cd fraction, frame shape)
WRONG = [
    ("011", 50, 40.0, 2e4, 0.3, 10.0, 0.0, None),
    ("011", 51, 50.0, 2e3, 0.2, -25.0, 0.2, None),
    ("011", 52, 60.0, 5e3, 0.4, 35.0, 0.0, (110, 110)),
    ("001", 53, 40.0, 1e4, 0.3, 5.0, 0.0, None),
    ("001", 54, 30.0, 5e2, 0.1, 40.0, 0.0, None),
    ("001", 55, 60.0, 1e3, 0.4, -20.0, 0.3, (100, 100)),
]


@pytest.mark.parametrize("case", WRONG, ids=lambda c: f"{c[0]}-seed{c[1]}")
def test_the_other_zone_axis_is_named(case):
    zone = case[0]
    other = "001" if zone == "011" else "011"
    img = _crystal(*case)
    try:
        cols, zw = _find(img, CELLS[other]())
    except DataError as err:
        # no lattice of the given cell in the image at all (seed 51 under AVX2 emulation,
        # where the AVX-512 build finds one and warns): the error names the other cell
        # (the error names every other built-in zone axis, this one among them)
        assert "could not fit the cell lattice" in str(err) and f"use --cell {CLI[zone]}" in str(
            err
        )
        return
    chk = cols.attrs["cell_check"]
    assert not chk["matches"], chk
    assert len(zw) == 1 and f"--cell {CLI[zone]})" in zw[0], zw
    assert "not relabelled" in zw[0]
    assert chk["suggested"] == CLI[zone] and chk["alternative"]["matches"], chk
    # the columns are still those of the given cell (never relabelled)
    assert set(cols.loc[cols["grain"] >= 0, "type"]) <= set(CELLS[other]().types)
    # the right cell passes
    right, zw = _find(img, CELLS[zone]())
    assert right.attrs["cell_check"]["matches"] and not zw, right.attrs["cell_check"]


MATCHED = [
    ("001", 56, 40.0, 1e2, 0.4, 15.0, 0.0, None),
    ("001", 57, 30.0, 3e2, 0.1, -30.0, 0.0, None),
    ("001", 58, 50.0, 1e3, 0.2, 40.0, 0.5, None),
    ("001", 59, 80.0, 2e4, 0.3, -5.0, 0.3, (150, 150)),
    ("001", 60, 25.0, 1e5, 0.25, 20.0, 0.0, None),
    # the [011] finder itself fails below ~10³ e⁻/Å² (a lattice 1.22 × the cell's, with the
    # scale warning): the check reports that too, so matched [011] is tested from 10³ on
    ("011", 61, 40.0, 1e3, 0.3, 25.0, 0.0, None),
    ("011", 62, 50.0, 1e4, 0.2, -40.0, 0.3, None),
    ("011", 63, 80.0, 3e3, 0.4, 10.0, 0.0, (110, 110)),
    ("011", 64, 35.0, 1e5, 0.25, 0.0, 0.5, None),
]


@pytest.mark.parametrize("case", MATCHED, ids=lambda c: f"{c[0]}-seed{c[1]}")
def test_no_alarm_on_the_right_cell(case):
    img = _crystal(*case)
    cols, zw = _find(img, CELLS[case[0]]())
    chk = cols.attrs["cell_check"]
    assert chk["matches"] and not zw, (chk, zw)
    assert chk["off_site_share"] < 0.1 and chk["n_peaks"] >= 12, chk
    assert "alternative" not in chk  # the other cell is tried on a mismatch only


def test_no_alarm_on_multislice_slabs_with_pb_clusters():
    # abTEM frozen-phonon images (an independent model) of a periodic 4-cell CsPbBr3 [001]
    # slab that fills the frame, bare and with epitaxial Pb clusters of 20–100 atoms on its
    # entrance or exit surface (off-site peaks: measured share ≤ 0.14)
    from pathlib import Path

    d = np.load(Path(__file__).resolve().parents[1] / "data" / "multislice_pb_clusters.npz")
    bare = d["slab_bare__mean"]
    rng = np.random.default_rng(7)
    names = [str(n) for n in d["names"] if str(n).startswith("slab")]
    assert len(names) >= 10
    for name in names:
        m = bare if name == "slab_bare" else bare + d[f"{name}__mean"]
        px = float(d[f"{name}__step_A"][0])
        for dose in (1e3, 1e5):
            img = Image(rng.poisson(m * dose * px**2).astype(float), pixel_size_A=px)
            cols, zw = _find(img, cspbbr3_001_cell())
            assert cols.attrs["cell_check"]["matches"] and not zw, (name, dose, zw)


def test_real_cspbbr3_image(statstem_data):
    # StatSTEM's real [001] CsPbBr₃ image (0.89 × the 5.87 Å cell, sheared 2°): the built-in
    # and the database [001] cells pass (share 0.00, b/a 1.006, angle 1.97°); the [011]
    # cell places every peak on a site only with a square lattice (b/a 1.41 × its own) and
    # is named wrong, the [001] cell suggested
    from perovstem.io import load_statstem
    from perovstem.io.statstem_db import read_statstem_cell

    ex = load_statstem(statstem_data / "npz" / "Example3_CsPbBr3.npz")
    db = read_statstem_cell(statstem_data / "database" / "CsPbBr3_100.txt", rename={"Pb": "PbBr"})
    for cell in (cspbbr3_001_cell(), db):
        cols, zw = _find(ex.image, cell)
        assert cols.attrs["cell_check"]["matches"] and not zw, cols.attrs["cell_check"]
    cols, zw = _find(ex.image, cspbbr3_011_cell())
    chk = cols.attrs["cell_check"]
    assert not chk["matches"] and chk["shape_ratio"] > 1.3, chk
    assert chk["suggested"] == "cspbbr3" and len(zw) == 1


def test_real_ptir_image_is_told_110_from_100(statstem_data):
    # StatSTEM's real Pt/Ir particle: its [110] database cell passes (share 0.01, b/a 1.01,
    # angle 1.3°; 0.86 of StatSTEM's 140 columns found), the [100] cell does not (angle
    # 9.7° off, lattice 1.15 × the cell's; 0.70 of StatSTEM's columns); no CsPbBr3 zone
    # is suggested for a cell of another material
    from perovstem.io import load_statstem
    from perovstem.io.statstem_db import read_statstem_cell

    ex = load_statstem(statstem_data / "npz" / "Example_PtIr.npz")
    cols, zw = _find(ex.image, read_statstem_cell(statstem_data / "database" / "Pt110.txt"))
    assert cols.attrs["cell_check"]["matches"] and not zw
    cols, zw = _find(ex.image, read_statstem_cell(statstem_data / "database" / "Pt100.txt"))
    chk = cols.attrs["cell_check"]
    assert not chk["matches"] and len(zw) == 1, chk
    assert "alternative" not in chk and chk["suggested"] is None


def test_cli_refuses_the_other_zone_and_writes_the_check(tmp_path):
    from perovstem.cli.main import main
    from perovstem.io import read_table, save_image

    img = _crystal(*WRONG[0])
    path = tmp_path / "z011.npz"
    save_image(img, path)
    out = tmp_path / "cols.parquet"
    assert main(["atoms", "fit", str(path), "--cell", "cspbbr3", "-o", str(out)]) == 2
    assert not out.exists()
    rc = main(
        ["atoms", "fit", str(path), "--cell", "cspbbr3_011", "-o", str(out), "--scs", "voronoi"]
    )
    assert rc == 0
    chk = read_table(out).attrs["cell_check"]
    assert chk["matches"] and chk["cell"].startswith("CsPbBr3 [011]")


def test_cli_refusal_message(tmp_path, capsys):
    from perovstem.cli.main import main
    from perovstem.io import save_image

    img = _crystal(*WRONG[3])  # [001] crystal, [011] cell
    path = tmp_path / "z001.npz"
    save_image(img, path)
    rc = main(["atoms", "fit", str(path), "--cell", "cspbbr3_011", "-o", str(tmp_path / "c.csv")])
    err = capsys.readouterr().err
    assert rc == 2 and "rerun with --cell cspbbr3" in err and "z001.npz" in err, err


def test_no_lattice_error_names_the_other_zone():
    # Cd-alloyed (x = 0.5) [011] crystals with the [001] cell: on some noise realisations
    # no peak pairs match the [001] cell's PbBr sublattice at all (DataError), on others a
    # lattice is fitted and the mismatch warns; either way the other cell is named (the
    # error once did not say which cell to try).  Which path a seed takes depends on the
    # noise: seeds 1–12 gave the error on 3 (3, 4, 9) with the CPU-independent shot noise,
    # on 4 of 1–10 (2, 3, 5, 6) with the earlier one, so the seeds are pooled
    n_err = 0
    for seed in range(1, 13):
        img = _crystal("011", seed, 40.0, 3e3, 0.3, -15.0, 0.5, None)
        try:
            cols, zw = _find(img, cspbbr3_001_cell())
        except DataError as err:
            assert "could not fit the cell lattice" in str(err), (seed, str(err))
            assert "[011] use --cell cspbbr3_011" in str(err), (seed, str(err))
            n_err += 1
            continue
        chk = cols.attrs["cell_check"]
        assert not chk["matches"] and chk["suggested"] == "cspbbr3_011", (seed, chk)
        assert len(zw) == 1 and "--cell cspbbr3_011)" in zw[0], (seed, zw)
    assert n_err >= 2  # the error path is exercised


# [111] (the [111] cell is new: before, such an image fitted with the [001] cell read as two
# crystals of PbBr/Br/Cs columns, with a warning that no built-in cell explained it).
# (image zone, given zone, seed, edge Å, dose e⁻/Å², pixel Å, rotation °, Cd, frame shape)
ZONE_111 = [
    ("111", "001", 70, 40.0, 1e2, 0.4, 15.0, 0.0, None),
    ("111", "011", 71, 30.0, 3e2, 0.1, -30.0, 0.0, None),
    ("111", "001", 72, 50.0, 1e3, 0.2, 40.0, 0.5, None),
    ("111", "011", 76, 60.0, 1e3, 0.4, -20.0, 0.3, (100, 100)),
    ("111", "001", 77, 50.0, 3e3, 0.5, 33.0, 0.0, None),
    ("001", "111", 53, 40.0, 1e4, 0.3, 5.0, 0.0, None),
    ("011", "111", 52, 60.0, 5e3, 0.4, 35.0, 0.0, (110, 110)),
]


@pytest.mark.parametrize("case", ZONE_111, ids=lambda c: f"{c[0]}-as-{c[1]}-seed{c[2]}")
def test_the_111_zone_is_found_and_named(case):
    zone, given = case[:2]
    img = _crystal(zone, *case[2:])
    right, zw = _find(img, CELLS[zone]())
    assert right.attrs["cell_check"]["matches"] and not zw, right.attrs["cell_check"]
    try:
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            cols = find_columns(img, cell=CELLS[given]())
        zw = [str(w.message) for w in rec if "does not explain the image" in str(w.message)]
    except DataError as err:  # no lattice of the given cell at all: the error names the cells
        assert "could not fit the cell lattice" in str(err) and f"--cell {CLI[zone]}" in str(err)
        return
    chk = cols.attrs["cell_check"]
    assert not chk["matches"] and chk["suggested"] == CLI[zone], chk
    assert len(zw) == 1 and f"--cell {CLI[zone]})" in zw[0], zw
    # the zone explains the other lattice scale: no "the pixel size is off by -17 %" beside it
    assert not any("lattice in the image is" in str(w.message) for w in rec), [
        str(w.message)[:80] for w in rec
    ]


@pytest.mark.parametrize("seed", [73, 74])
def test_111_columns_positions_and_types_against_the_truth(seed):
    """Fitted [111] columns sit on the true ones (Cs–Pb and Br columns told apart), and
    the measured projected cell is the hexagonal a₀√(2/3), 120° one."""
    from scipy.spatial import cKDTree

    import perovstem.simulate as sim
    from perovstem.atoms import fit_columns, strain_analysis

    at = sim.nanocrystal(50.0, zone_axis="111", rng=seed)
    img, truth = sim.haadf_image(at, pixel_size_A=0.25, dose_e_per_A2=1e4, rng=seed)
    cols = fit_columns(img, find_columns(img, cell=cspbbr3_111_cell()))
    d, i = cKDTree(truth[["x_A", "y_A"]].to_numpy()).query(cols[["x_A", "y_A"]].to_numpy())
    # half of a cube's [111] columns hold < 4 atoms (its corners and edges are thin in this
    # projection), so the errors are those of the fit's own error bars: |Δr| / |σ| has the
    # Rayleigh median 0.83 (measured 0.82 on seeds 73, 74, as for [001] crystals 0.82-0.84)
    z = d / np.hypot(cols["x_err_A"], cols["y_err_A"])
    assert 0.65 < np.median(z) < 1.0 and np.quantile(z, 0.95) < 2.1, np.quantile(z, [0.5, 0.95])
    true_type = truth["type"].to_numpy()[i]
    mixed = cols["type"].to_numpy() == "CsPb_111"
    assert np.median(d[mixed]) < 0.04  # the bright Cs–Pb columns (measured 0.024 Å)
    assert np.all(np.isin(true_type[mixed], ["CsPb", "Cs"])) and np.all(true_type[~mixed] == "Br")
    # most true columns found (the rest are the outermost, nearly empty ones)
    assert len(cols) > 0.9 * len(truth)
    st, uc = strain_analysis(cols, cspbbr3_111_cell())
    assert uc.a_A == pytest.approx(5.87 * np.sqrt(2 / 3), rel=0.005)
    assert uc.angle_deg == pytest.approx(120.0, abs=0.5)


def test_pipeline_fits_and_indexes_a_111_crystal(tmp_path):
    from perovstem.io import read_table
    from perovstem.pipeline import run_pipeline

    cfg = tmp_path / "z.toml"
    cfg.write_text(
        '[run]\nname = "z111"\nseed = 3\n'
        '[[step]]\nrun = "simulate.nanocrystal"\nid = "nc"\nedge_A = 40\nzone_axis = "111"\n'
        "view3d = false\n"
        '[[step]]\nrun = "simulate.haadf"\nid = "img"\ninputs = { atoms = "nc.atoms" }\n'
        '[[step]]\nrun = "atoms.fit"\nid = "fit"\ninputs = { image = "img.image" }\n'
        'cell = "cspbbr3_111"\n'
        '[[step]]\nrun = "atoms.strain"\nid = "strain"\ninputs = { columns = "fit.columns" }\n'
    )
    r = run_pipeline(cfg, out=tmp_path / "run", quiet=True, scheduler="serial", report=False)
    assert [s.status for s in r.steps] == ["ran"] * 4, [s.message for s in r.steps]
    cols = read_table(tmp_path / "run" / "tables" / "fit.columns.parquet")
    assert set(cols["type"]) == {"CsPb_111", "Br_111"}
    assert cols.attrs["cell_check"]["matches"]
    uc = read_table(tmp_path / "run" / "tables" / "strain.unit_cell.parquet")
    assert uc["angle_deg"].iloc[0] == pytest.approx(120.0, abs=1.0)


def test_pipeline_refuses_the_wrong_zone_and_names_the_types(tmp_path):
    # the pipeline's atoms.fit fitted a [011] crystal with the default [001] cell, with only
    # a warning in the report (the command line refuses); atoms.count then counted the
    # wrong columns, or ("`scs` table is empty") nothing with the right cell
    from perovstem.pipeline import run_pipeline

    def run(fit_extra: str, count_extra: str):
        cfg = tmp_path / "z.toml"
        cfg.write_text(
            '[run]\nname = "z011"\nseed = 3\non_error = "continue"\n'
            '[[step]]\nrun = "simulate.nanocrystal"\nid = "nc"\nedge_A = 40\n'
            'zone_axis = "011"\nview3d = false\n'
            '[[step]]\nrun = "simulate.haadf"\nid = "img"\ninputs = { atoms = "nc.atoms" }\n'
            '[[step]]\nrun = "atoms.fit"\nid = "fit"\ninputs = { image = "img.image" }\n'
            + fit_extra
            + '[[step]]\nrun = "atoms.count"\nid = "count"\ninputs = { columns = "fit.columns" }\n'
            + count_extra
        )
        out = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        r = run_pipeline(cfg, out=out, quiet=True, scheduler="serial", report=False)
        return {s.id: s for s in r.steps}

    steps = run("", "")
    assert steps["fit"].status == "failed" and "set cell = 'cspbbr3_011'" in steps["fit"].message
    steps = run('cell = "cspbbr3_011"\n', "")
    assert steps["fit"].status == "ran" and steps["count"].status == "failed"
    msg = steps["count"].message
    assert "matches none of the columns' types" in msg and "Pb_011" in msg
    assert "library = false" in msg
    steps = run('cell = "cspbbr3_011"\n', 'types = ["Pb_011", "CsBr_011"]\nlibrary = false\n')
    assert steps["count"].status == "ran", steps["count"].message


def test_pipeline_series_step_refuses_the_wrong_zone(tmp_path):
    # atoms.series found the columns of a [011] series with the [001] cell and tracked them
    # through the frames with the [001] library, with only a warning in the report
    from perovstem.pipeline import run_pipeline

    cfg = tmp_path / "s.toml"
    cfg.write_text(
        '[run]\nname = "s011"\nseed = 2\non_error = "continue"\n'
        '[[step]]\nrun = "simulate.nanocrystal"\nid = "nc"\nedge_A = 40\nzone_axis = "011"\n'
        "view3d = false\n"
        '[[step]]\nrun = "simulate.kmc"\nid = "kmc"\ninputs = { atoms = "nc.atoms" }\n'
        "n_frames = 3\n"
        '[[step]]\nrun = "simulate.insitu_series"\nid = "series"\n'
        'inputs = { trajectory = "kmc.trajectory" }\npixel_size_A = 0.4\n'
        '[[step]]\nrun = "atoms.series"\nid = "columns"\ninputs = { series = "series.series" }\n'
    )
    r = run_pipeline(cfg, out=tmp_path / "run", quiet=True, scheduler="serial", report=False)
    steps = {s.id: s for s in r.steps}
    assert steps["series"].status == "ran", steps["series"].message
    assert steps["columns"].status == "failed"
    assert "[011]" in steps["columns"].message and "set cell = 'none'" in steps["columns"].message
