"""Structure geometry not covered elsewhere: [111] projection, platelet and cuboid sizes,
epitaxial (cube-on-cube) Pb clusters on a tilted crystal."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from perovstem.simulate import add_pb_cluster, composition, nanocrystal, project_columns
from perovstem.simulate.structures import A_CUBIC_A, A_PB_FCC_A


@pytest.mark.parametrize("n", [3, 4])
def test_111_projection_columns(n):
    a = nanocrystal(n * A_CUBIC_A, zone_axis="111", neutral=False)
    cols, _ = project_columns(a)
    assert cols["n_atoms"].sum() == len(a)
    # along [111] Cs and Pb alternate in mixed columns; Br columns are pure
    assert set(cols["type"]) <= {"CsPb", "Cs", "Pb", "Br"} and "CsPb" in set(cols["type"])
    mixed = cols[cols["type"] == "CsPb"]
    assert np.all(np.abs(mixed["n_Cs"] - mixed["n_Pb"]) <= 1)
    br = cols[cols["type"] == "Br"]
    assert np.all(br["n_Br"] == br["n_atoms"])
    # projected spacings: cation columns a·√(2/3), Br columns a/√6 from a cation column
    cat = cols[cols["type"] != "Br"][["x_A", "y_A"]].to_numpy()
    d, _ = cKDTree(cat).query(cat, k=2)
    assert np.median(d[:, 1]) == pytest.approx(A_CUBIC_A * np.sqrt(2 / 3), rel=1e-6)
    d, _ = cKDTree(cat).query(br[["x_A", "y_A"]].to_numpy())
    assert np.median(d) == pytest.approx(A_CUBIC_A / np.sqrt(6), rel=1e-6)


@pytest.mark.parametrize(("thickness", "nz"), [(12.0, 2), (18.0, 3), (30.0, 5)])
def test_platelet_thickness_and_cuboid_edges(thickness, nz):
    p = nanocrystal(60.0, shape="platelet", thickness_A=thickness, rng=0)
    assert p.info["n_cells"] == (10, 10, nz)
    z = p.get_positions()[:, 2]
    sym = np.array(p.get_chemical_symbols())
    # Pb planes span (nz − 1)·a along the beam for a CsBr-terminated platelet
    assert np.ptp(z[sym == "Pb"]) == pytest.approx((nz - 1) * A_CUBIC_A, abs=1e-6)
    c = nanocrystal(60.0, shape="cuboid", rng=0)
    assert c.info["n_cells"] == (10, 15, 10)
    assert composition(p)["charge_e"] == 0 == composition(c)["charge_e"]


@pytest.mark.parametrize("zone", ["011", "111"])
def test_pb_cluster_is_cube_on_cube_with_the_tilted_host(zone):
    a = nanocrystal(40.0, zone_axis=zone, mistilt_deg=1.0, rng=0)
    b = add_pb_cluster(a, 60, site="face", rng=3)
    cl = b.arrays["label"] == 2
    rot = np.asarray(a.info["rotation"])
    pc = b.get_positions()[cl] @ rot  # lab → crystal frame
    i, j = np.array(list(cKDTree(pc).query_pairs(A_PB_FCC_A / np.sqrt(2) + 0.05))).T
    v = (pc[j] - pc[i]) / (A_PB_FCC_A / np.sqrt(2))
    # every fcc nearest-neighbour bond is a crystal <110> vector of the host
    assert np.allclose(np.sort(np.abs(v), axis=1), [0, 1 / np.sqrt(2), 1 / np.sqrt(2)], atol=1e-6)
    assert len(v) > 100


@pytest.mark.parametrize(("fcs", "fpb"), [(0.1, 0.0), (0.0, 0.05), (0.2, 0.1)])
def test_cs_and_pb_vacancies_binomial_charge_and_columns(fcs, fpb):
    full = nanocrystal(8 * A_CUBIC_A, rng=0)
    cf = composition(full)
    cols_full, _ = project_columns(full)
    for seed in (1, 2):
        a = nanocrystal(8 * A_CUBIC_A, cs_vacancy_fraction=fcs, pb_vacancy_fraction=fpb, rng=seed)
        c = composition(a)
        n_cs, n_pb = cf["n_Cs"] - c["n_Cs"], cf["n_Pb"] - c["n_Pb"]
        for nv, f, n in ((n_cs, fcs, cf["n_Cs"]), (n_pb, fpb, cf["n_Pb"])):
            assert abs(nv - f * n) <= 4 * np.sqrt(n * f * (1 - f)) + 1e-9
        assert (n_cs > 0) == (fcs > 0) and (n_pb > 0) == (fpb > 0)
        assert c["n_Br"] == cf["n_Br"]  # only the requested sublattices lose atoms
        assert c["charge_e"] == -n_cs - 2 * n_pb == a.info["charge_e"]
        # the projection sees the vacancies: same columns, fewer atoms in them
        cols, _ = project_columns(a)
        assert len(cols) <= len(cols_full)
        assert cols["n_Cs"].sum() == c["n_Cs"] and cols["n_Pb"].sum() == c["n_Pb"]


def test_vacancy_parameters_raise():
    from perovstem.errors import ParameterError

    with pytest.raises(ParameterError, match="cs_vacancy_fraction"):
        nanocrystal(30.0, cs_vacancy_fraction=1.5)
    with pytest.raises(ParameterError, match="pb_vacancy_fraction"):
        nanocrystal(30.0, pb_vacancy_fraction=-0.1)
    with pytest.raises(ParameterError, match="leaves no Pb"):
        nanocrystal(12.0, pb_vacancy_fraction=1.0, rng=0)


def test_cli_simulate_image_with_vacancies_writes_truth(tmp_path):
    from perovstem.cli.main import main
    from perovstem.io import read_table

    out = tmp_path / "v.npz"
    base = ["simulate", "image", "-o", str(out), "--edge-A", "30", "--seed", "4", "--no-noise"]
    assert main([*base, "--cs-vacancies", "0.3", "--pb-vacancies", "0.2"]) == 0
    t = read_table(tmp_path / "v_truth.parquet")
    # the truth table counts the atoms that are left
    full = composition(nanocrystal(30.0, rng=0))
    assert t["n_Cs"].sum() < full["n_Cs"] and t["n_Pb"].sum() < full["n_Pb"]
    assert t.attrs["structure"]["cs_vacancy_fraction"] == 0.3
    assert 0.1 < 1 - t["n_Cs"].sum() / full["n_Cs"] < 0.5
    assert 0.05 < 1 - t["n_Pb"].sum() / full["n_Pb"] < 0.4
    assert main([*base, "--overwrite", "--pb-vacancies", "2"]) == 2
