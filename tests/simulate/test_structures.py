"""Nanocrystal structures: stoichiometry, charge, Cd/vacancy statistics, geometry, clusters."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from perovstem.errors import ParameterError
from perovstem.simulate import add_pb_cluster, composition, nanocrystal, project_columns
from perovstem.simulate.structures import A_CUBIC_A, CD_VEGARD_SLOPE


@pytest.mark.parametrize("n", [2, 3, 5])
def test_ideal_stoichiometry_and_charge(n):
    a = nanocrystal(n * A_CUBIC_A, termination="CsBr", neutral=False)
    c = composition(a)
    assert (c["n_Cs"], c["n_Pb"], c["n_Br"]) == ((n + 1) ** 3, n**3, 3 * n**2 * (n + 1))
    assert c["charge_e"] == 3 * n + 1
    b = nanocrystal(n * A_CUBIC_A, termination="PbBr2", neutral=False)
    c = composition(b)
    assert (c["n_Cs"], c["n_Pb"], c["n_Br"]) == (n**3, (n + 1) ** 3, 3 * n * (n + 1) ** 2)
    assert c["charge_e"] == 3 * n + 2


@pytest.mark.parametrize(
    "kw",
    [
        {"termination": "CsBr"},
        {"termination": "PbBr2"},
        {"shape": "cuboid"},
        {"shape": "platelet", "thickness_A": 18.0},
        {"phase": "orthorhombic", "termination": "PbBr2"},
        {"edge_A": (30.0, 40.0, 50.0), "shape": "cuboid"},
    ],
)
def test_neutral_nanocrystals_are_charge_balanced(kw):
    kw = {"edge_A": 40.0, **kw}
    a = nanocrystal(rng=3, **kw)
    c = composition(a)
    assert c["charge_e"] == 0 == a.info["charge_e"]
    # removing/adding only surface ions: bulk stoichiometry CsPbBr3 is kept to O(surface)
    assert 2.5 < c["n_Br"] / c["n_Pb"] < 3.7
    assert np.all(a.arrays["label"] == 0) and np.all(a.arrays["cluster_id"] == -1)


def test_geometry_octahedra_and_neutralised_sites():
    a = nanocrystal(5 * A_CUBIC_A, termination="CsBr", rng=0)
    sym = np.array(a.get_chemical_symbols())
    pos = a.get_positions()
    pb, br, cs = pos[sym == "Pb"], pos[sym == "Br"], pos[sym == "Cs"]
    # every Pb has a full octahedron of 6 Br at a/2 (CsBr termination)
    n6 = cKDTree(br).query_ball_point(pb, A_CUBIC_A / 2 + 0.01, return_length=True)
    assert np.all(n6 == 6)
    d, _ = cKDTree(pb).query(br)
    assert np.allclose(d, A_CUBIC_A / 2)
    # the removed Cs (3n+1 = 16) are the least coordinated ones: all 8 corners are gone
    ext = pos.max(axis=0)
    corners = np.all(np.isclose(np.abs(cs), ext), axis=1)
    assert not corners.any()


def test_orthorhombic_tilts_move_br_off_the_pb_pb_line():
    a = nanocrystal(4 * 5.83, phase="orthorhombic", rng=0)
    sym = np.array(a.get_chemical_symbols())
    pos = a.get_positions()
    pb, br = pos[sym == "Pb"], pos[sym == "Br"]
    d, i = cKDTree(pb).query(br, k=2)
    inner = d[:, 1] < 3.5  # bridging Br (two Pb neighbours)
    mid = 0.5 * (pb[i[inner, 0]] + pb[i[inner, 1]])
    off = np.linalg.norm(br[inner] - mid, axis=1)
    # a⁻b⁺a⁻ tilt of 8° -> 0.3-0.5 Å displacements (notes §2.1), Pb–Br ≈ 2.95 Å
    assert 0.3 < np.median(off) < 0.6
    assert 2.9 < np.median(d[inner, 0]) < 3.0
    assert a.info["a_pc_A"] == pytest.approx((8.244 / 2**0.5, 11.735 / 2, 8.198 / 2**0.5))


@pytest.mark.parametrize("x", [0.05, 0.1, 0.3])
def test_cd_fraction_within_binomial_error(x):
    z = []
    for seed in range(4):
        a = nanocrystal(12 * A_CUBIC_A, cd_fraction=x, rng=seed)
        c = composition(a)
        nb = c["n_Pb"] + c["n_Cd"]
        z.append((c["n_Cd"] - x * nb) / np.sqrt(nb * x * (1 - x)))
        assert c["charge_e"] == 0
    z = np.array(z)
    assert np.all(np.abs(z) < 4.0)
    assert abs(z.mean()) < 4.0 / 2  # mean of 4 standard normals: sd 0.5
    assert len(set(np.round(z, 6))) == 4  # different seeds, different draws
    # Vegard contraction
    assert a.info["a_pc_A"][0] == pytest.approx(A_CUBIC_A * (1 - CD_VEGARD_SLOPE * x))


def test_br_vacancies_binomial_and_charge():
    full = composition(nanocrystal(10 * A_CUBIC_A, rng=0))
    a = nanocrystal(10 * A_CUBIC_A, br_vacancy_fraction=0.2, rng=1)
    c = composition(a)
    nv = full["n_Br"] - c["n_Br"]
    p = 0.2
    assert abs(nv - p * full["n_Br"]) < 4 * np.sqrt(full["n_Br"] * p * (1 - p))
    assert c["charge_e"] == nv


def test_reproducible_with_seed():
    a = nanocrystal(40, cd_fraction=0.2, br_vacancy_fraction=0.1, rng=7)
    b = nanocrystal(40, cd_fraction=0.2, br_vacancy_fraction=0.1, rng=7)
    assert a.get_chemical_symbols() == b.get_chemical_symbols()
    assert np.array_equal(a.get_positions(), b.get_positions())


@pytest.mark.parametrize("zone", ["001", "011", "111"])
def test_zone_axis_along_beam_and_mistilt(zone):
    a = nanocrystal(30, zone_axis=zone, mistilt_deg=0.0)
    u = np.array([int(c) for c in zone], dtype=float)
    beam = a.info["rotation"] @ (u / np.linalg.norm(u))
    assert np.allclose(beam, [0, 0, 1])
    b = nanocrystal(30, zone_axis=zone, mistilt_deg=2.0, mistilt_azimuth_deg=30.0)
    beam = b.info["rotation"] @ (u / np.linalg.norm(u))
    assert np.degrees(np.arccos(beam[2])) == pytest.approx(2.0)


def test_columns_of_001_and_011_projections():
    n = 4
    a = nanocrystal(n * A_CUBIC_A, neutral=False)
    cols, _ = project_columns(a)
    counts = cols["type"].value_counts().to_dict()
    assert counts == {"PbBr": n * n, "Cs": (n + 1) ** 2, "Br": 2 * n * (n + 1)}
    pbbr = cols[cols["type"] == "PbBr"]
    assert set(pbbr["n_atoms"]) == {n} and set(pbbr["n_Br"]) == {n + 1}
    # [011]: Pb-only, Br-only and mixed Cs–Br columns (notes §2.2)
    b = nanocrystal(n * A_CUBIC_A, zone_axis="011", neutral=False)
    types = set(project_columns(b)[0]["type"])
    assert {"Pb", "Br", "CsBr"} <= types
    # mistilt does not merge or split columns (grouping in the zone-aligned frame)
    c = nanocrystal(n * A_CUBIC_A, neutral=False, mistilt_deg=1.5)
    assert len(project_columns(c)[0]) == len(cols)


@pytest.mark.parametrize("site", ["corner", "edge", "face"])
def test_add_pb_cluster(site):
    a = nanocrystal(40, rng=0)
    before = a.copy()
    b = add_pb_cluster(a, 40, site=site, rng=1)
    assert len(a) == len(before) and np.array_equal(a.get_positions(), before.get_positions())
    assert len(b) == len(a) + 40
    cl = b.arrays["label"] == 2
    assert cl.sum() == 40 and set(b.arrays["cluster_id"][cl]) == {0}
    assert composition(b)["n_Pb0"] == 40 and composition(b)["charge_e"] == 0
    pc, ph = b.get_positions()[cl], b.get_positions()[~cl]
    dmin = cKDTree(ph).query(pc)[0].min()
    assert 2.9 < dmin < 3.3  # touching the surface at the contact distance
    nn = cKDTree(pc).query(pc, k=2)[0][:, 1]
    assert np.allclose(nn, 4.95 / np.sqrt(2))  # fcc Pb nearest neighbours
    # outside the NC along the outward normal(s) of the site
    lo, hi = ph.min(axis=0), ph.max(axis=0)
    outside = (pc.mean(axis=0) < lo) | (pc.mean(axis=0) > hi)
    assert outside.sum() == {"corner": 3, "edge": 2, "face": 1}[site]
    c = add_pb_cluster(b, 10, site=site, rng=2)
    assert set(c.arrays["cluster_id"][c.arrays["label"] == 2]) == {0, 1}


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"edge_A": 3.0}, ["edge_A", "3.0"]),
        ({"edge_A": -5.0}, ["edge_A", "-5.0"]),
        ({"cd_fraction": 1.5}, ["cd_fraction", "1.5"]),
        ({"cd_fraction": -0.1}, ["cd_fraction", "-0.1"]),
        ({"zone_axis": "123"}, ["zone_axis", "123"]),
        ({"shape": "sphere"}, ["shape", "sphere"]),
        ({"phase": "tetragonal"}, ["phase", "tetragonal"]),
        ({"termination": "Cs"}, ["termination", "'Cs'"]),
        ({"br_vacancy_fraction": 2.0}, ["br_vacancy_fraction", "2.0"]),
        ({"mistilt_deg": 40.0}, ["mistilt_deg", "40.0"]),
        ({"shape": "platelet", "thickness_A": 2.0}, ["edge_A", "thickness_A"]),
    ],
)
def test_bad_parameters_raise(kw, words):
    kw = {"edge_A": 30.0, **kw}
    with pytest.raises(ParameterError) as exc:
        nanocrystal(**kw)
    for w in words:
        assert w in str(exc.value)


def test_bad_cluster_parameters():
    a = nanocrystal(30)
    with pytest.raises(ParameterError, match="n_atoms"):
        add_pb_cluster(a, 0)
    with pytest.raises(ParameterError, match="site"):
        add_pb_cluster(a, 5, site="vertex")


def test_orthorhombic_columns_keep_displaced_br_in_their_column():
    n = 4
    cub, _ = project_columns(nanocrystal(n * A_CUBIC_A, neutral=False))
    ort, _ = project_columns(nanocrystal(n * 5.83, phase="orthorhombic", neutral=False))
    assert ort["type"].value_counts().to_dict() == cub["type"].value_counts().to_dict()
    assert ort["n_Br"].sum() == cub["n_Br"].sum()


def test_absurd_edge_is_refused_before_allocating():
    from perovstem.errors import ParameterError
    from perovstem.simulate import nanocrystal

    # 1e5 Å would need ~2.5e13 atoms (tens of TiB); the message names the parameter
    with pytest.raises(ParameterError, match=r"`edge_A` = 100000.0 .* atoms"):
        nanocrystal(edge_A=1e5)
    with pytest.raises(ParameterError, match="edge_A"):
        nanocrystal(edge_A=[40.0, 40.0, 1e6], shape="cuboid")
