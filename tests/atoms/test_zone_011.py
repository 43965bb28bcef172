"""The built-in CsPbBr₃ [011] cell: column finder, CLI and pipeline on [011] simulations.

Before: only the [001] cell was built in; a crystal imaged along [011] (≡ [110]) had no
sublattice-aware finder (``--cell cspbbr3`` fits a [001] lattice that does not exist there).
"""

from __future__ import annotations

import tomllib
import warnings

import numpy as np
import pytest
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from perovstem.atoms import cspbbr3_011_cell, find_columns
from perovstem.io import read_table, save_image

# the simulator's truth types for [011] columns; "Cs" columns (surface, no Br) sit on Cs-Br sites
TRUTH = {"Pb_011": ("Pb",), "Br_011": ("Br",), "CsBr_011": ("CsBr", "Cs")}


def _zone011(seed, edge_A, dose, px, rot_deg):
    import perovstem.simulate as sim

    at = sim.nanocrystal(edge_A, zone_axis="011", rng=seed)
    at.positions = Rotation.from_euler("z", rot_deg, degrees=True).apply(
        at.positions - at.positions.mean(axis=0)
    )
    return sim.haadf_image(at, pixel_size_A=px, dose_e_per_A2=dose, rng=seed + 5)


def _scores(cols, truth, t, thick_atoms=6):
    xt = truth.loc[truth.type.isin(TRUTH[t]), ["x_A", "y_A"]].to_numpy()
    thick = truth.loc[truth.type.isin(TRUTH[t]), "n_atoms"].to_numpy() >= thick_atoms
    xf = cols.loc[cols.type == t, ["x_A", "y_A"]].to_numpy()
    found = cKDTree(xf).query(xt)[0] < 0.6
    prec = float(np.mean(cKDTree(xt).query(xf)[0] < 0.6))
    return float(found.mean()), float(found[thick].mean()), prec


def test_cell_geometry():
    c = cspbbr3_011_cell(5.87)
    assert c.a_A == pytest.approx(5.87) and c.b_A == pytest.approx(5.87 / np.sqrt(2))
    assert c.c_A == pytest.approx(5.87 * np.sqrt(2))
    assert set(c.types) == {"Pb_011", "Br_011", "CsBr_011"}
    # Pb–Br 2.08 Å along b, Pb–(Cs–Br) 2.94 Å along a
    assert c.min_distance_A() == pytest.approx(5.87 / np.sqrt(2) / 2, rel=1e-6)


@pytest.mark.parametrize(
    ("seed", "edge", "dose", "px", "rot"),
    [(0, 40.0, 2e4, 0.3, 0.0), (1, 50.0, 3e3, 0.35, 20.0), (2, 35.0, 1e4, 0.25, -35.0)],
)
def test_find_columns_on_011_crystals(seed, edge, dose, px, rot):
    img, truth = _zone011(seed, edge, dose, px, rot)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the lattice matches the cell: no scale warning
        cols = find_columns(img, cell=cspbbr3_011_cell())
    assert (cols["grain"] == 0).all()
    for t in TRUTH:
        rec, rec_thick, prec = _scores(cols, truth, t)
        # every column of >= 6 atoms; thin edge columns (2-4 Br atoms at 3e3 e⁻/Å²: 8 of 162)
        # may be under the presence test
        assert rec_thick == 1.0 and rec > 0.94 and prec == 1.0, (t, rec, rec_thick, prec)


def test_cli_and_pipeline_with_the_011_cell(tmp_path):
    from perovstem.cli.main import main
    from perovstem.pipeline import parse_config, run_pipeline

    img, truth = _zone011(0, 40.0, 2e4, 0.3, 0.0)
    path = tmp_path / "z011.npz"
    save_image(img, path)
    out = tmp_path / "cols.parquet"
    rc = main(["atoms", "fit", str(path), "--cell", "cspbbr3_011", "--out", str(out)])
    assert rc == 0
    cli = read_table(out)
    assert set(cli["type"]) == set(TRUTH)
    assert main(["atoms", "fit", str(path), "--cell", "cspbbr3_111", "-o", str(out)]) == 2
    text = f"""
[run]
name = "z"
report = false
[inputs]
image = "{path.as_posix()}"
[[step]]
run = "atoms.fit"
id = "fit"
cell = "cspbbr3_011"
normalize = false
"""
    cfg = parse_config(tomllib.loads(text), source="z.toml", text=text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_pipeline(cfg, out=tmp_path / "run", quiet=True, scheduler="serial")
    t = read_table(tmp_path / "run" / "tables" / "fit.columns.parquet")
    assert len(t) == len(cli) and set(t["type"]) == set(TRUTH)
    assert (t["grain"] == 0).all()
    # the columns missed are lone surface atoms: over seeds 0–11 of this crystal 30 of 115
    # one-atom Cs columns and 3 of 169 one-/two-atom Br columns (32/115 and 2/169 with the
    # earlier shot noise), none of >= 3 atoms; CsBr_011 recall 0.956–0.991 (0.947–0.991):
    # every column of >= 3 atoms is required, and the overall recall of the finder's test
    for ty in TRUTH:
        rec, rec3, prec = _scores(t, truth, ty, thick_atoms=3)
        assert rec3 == 1.0 and rec > 0.94 and prec == 1.0, (ty, rec, rec3, prec)


def _type_accuracy(cols, truth):
    """Share of the found columns (matched to a true column within 0.6 Å) typed right."""
    d, j = cKDTree(truth[["x_A", "y_A"]].to_numpy()).query(cols[["x_A", "y_A"]].to_numpy())
    tt = truth["type"].to_numpy()
    ok = np.array([tt[k] in TRUTH[t] for t, k in zip(cols["type"], j, strict=True)])
    return float(ok[d < 0.6].mean()), float(np.mean(d < 0.6))


@pytest.mark.parametrize(
    ("seed", "x", "dose", "rot"), [(3, 0.3, 2e4, 10.0), (4, 0.5, 3e3, -25.0), (0, 0.3, 3e3, 0.0)]
)
def test_cd_alloyed_011_origin_from_the_empty_site(seed, x, dose, rot):
    # with Cd on the B sites the Pb columns are dimmer than the Cs–Br columns: the brightest
    # peaks are a Cs–Br sublattice and the Pb_011 sites were placed on them (type accuracy
    # 0.0–0.31).  The origin is decided by the empty (½, ½) position of the [011] cell; the
    # peaks keep Pb and Cs–Br apart (2.9 Å), and the dimmer part of the crystal found on the
    # second search is the same grain (3·10³ e⁻/Å²: two grains on one lattice, recall 0.82)
    import perovstem.simulate as sim

    at = sim.nanocrystal(40.0, zone_axis="011", cd_fraction=x, rng=seed)
    at.positions = Rotation.from_euler("z", rot, degrees=True).apply(
        at.positions - at.positions.mean(axis=0)
    )
    img, truth = sim.haadf_image(at, pixel_size_A=0.3, dose_e_per_A2=dose, rng=seed + 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cols = find_columns(img, cell=cspbbr3_011_cell())
    acc, prec = _type_accuracy(cols, truth)
    assert acc > 0.98 and prec > 0.98, (acc, prec)
    for t in TRUTH:
        rec, rec_thick, _ = _scores(cols, truth, t)
        assert rec_thick > 0.95, (t, rec, rec_thick)


# (seed, edge Å, dose e⁻/Å², pixel Å, rotation °, Cd fraction, frame filled by the crystal)
_LOW_DOSE = [
    (600, 40.0, 2e2, 0.3, 10.0, 0.0, False),
    (601, 55.0, 3e2, 0.15, -30.0, 0.2, False),
    (602, 35.0, 2e2, 0.2, 25.0, 0.5, False),
    (603, 50.0, 3e2, 0.4, -5.0, 0.0, True),
    (604, 45.0, 2e2, 0.1, 40.0, 0.2, True),
    (605, 60.0, 3e2, 0.3, -40.0, 0.5, False),
]


@pytest.mark.parametrize("case", _LOW_DOSE, ids=lambda c: f"seed{c[0]}")
def test_011_lattice_at_low_dose(case):
    """At 10²–3·10² e⁻/Å² the [011] lattice came out 1.16–1.23 × the cell (26 of 48
    held-out images, seeds 500–547) with a third to half of the columns: few peaks sample
    the Pb + Cs–Br union (a/2 × b), whose √1.5 × larger rectangle of the cell's shape
    (turned 55°) then won the scale search (a count of matched pair lengths, growing with
    the longer pairs a larger scale takes in; the share of pairs explained was asked only
    when two counts disagreed, and with missing peaks it too can favour the larger one).
    Now the share decides, and the lattice √1.5 × nearer the cell is taken when it
    explains 0.75 of the best share: 0 of 48 off by > 10 %.  Seeds chosen before running
    them; the old code fails 600 and 605."""
    import perovstem.simulate as sim

    seed, edge, dose, px, rot, cd, fill = case
    at = sim.nanocrystal(edge, zone_axis="011", cd_fraction=cd, rng=seed)
    at.positions = Rotation.from_euler("z", rot, degrees=True).apply(
        at.positions - at.positions.mean(axis=0)
    )
    kw = {"shape": (int(0.8 * edge / px),) * 2} if fill else {}
    img, truth = sim.haadf_image(at, pixel_size_A=px, dose_e_per_A2=dose, rng=seed + 5, **kw)
    cell = cspbbr3_011_cell()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cols = find_columns(img, cell=cell)
    vec = np.asarray(cols.attrs["lattice_vectors_A"])
    scale = np.sqrt(abs(np.linalg.det(vec)) / (cell.a_A * cell.b_A))
    assert 0.93 < scale < 1.07, scale
    xt = truth[["x_A", "y_A"]].to_numpy()
    xf = cols[["x_A", "y_A"]].to_numpy()
    assert np.mean(cKDTree(xt).query(xf)[0] < 0.6) >= 0.8  # precision (0.83–0.93 before)
    # recall: 0.47–0.49 before on 600 and 605; now 0.76–0.99, but 0.38 for seed 602 (Cd 0.5, 35 Å) in the
    # AVX2 realisation: the dim Cd-rich columns at 2·10² e⁻/Å², not the lattice
    assert np.mean(cKDTree(xf).query(xt)[0] < 0.6) >= 0.3
