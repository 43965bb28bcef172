"""Joint fit of the host columns and a cluster on the crystal (issue #7,
:mod:`perovstem.insitu._jointhost`): a damaged CsPbBr3 cube (15 % Cs, Pb and Br
vacancies, so every column has its own mass) with and without a compact fcc Pb cluster on
top, imaged with the fast HAADF model (Gaussian core + Moffat tail, shot noise) and fitted
with Gaussian-core + Gaussian-tail columns whose shape is fitted on the same frame away
from the cluster (not the simulator's profile)."""

from __future__ import annotations

import numpy as np
import pytest
from _insitu_kmc import fcc_cluster

PX = 0.5
DOSE = 3000.0
SHAPE = (110, 110)


@pytest.fixture(scope="module")
def crystal():
    """The damaged cube and its column profile, fitted once on three crystal windows of its
    image without a cluster (as the bench fits it once per series)."""
    from perovstem.insitu import _jointhost as jh
    from perovstem.simulate import nanocrystal

    host = nanocrystal(edge_A=40.0, rng=0, pb_vacancy_fraction=0.15,
                       br_vacancy_fraction=0.15, cs_vacancy_fraction=0.15)  # fmt: skip
    e, _, _ = _frame(host, 0, 0)
    c = 0.5 * (SHAPE[0] - 1)
    wins = np.array([[c - 22, c - 22], [c + 22, c - 22], [c - 22, c + 22]], float)
    prof = jh.fit_profile(e, wins, half_px=12, a_px=5.87 / PX, angle_deg=0.0, px=PX)
    return host, prof


def _frame(host, seed, n):
    """(electrons, (cy, cx) in pixels, rng) of ``host`` with a compact cluster of ``n``
    atoms (none for 0) at a random place 0-6 Å from the crystal's centre, 3 Å above it."""
    from ase import Atoms

    from perovstem.simulate.haadf import haadf_image

    rng = np.random.default_rng(seed)
    pos = host.get_positions()
    c0 = 0.5 * (pos[:, :2].min(0) + pos[:, :2].max(0))
    where = c0 + rng.uniform(-6, 6, 2)
    atoms = host.copy()
    if n:
        top = np.r_[where, pos[:, 2].max() + 3.0]
        atoms += Atoms(["Pb"] * n, positions=fcc_cluster(n, rng) + top)
    img, _ = haadf_image(atoms, pixel_size_A=PX, dose_e_per_A2=DOSE, center_A=tuple(c0),
                         shape=SHAPE, rng=seed)  # fmt: skip
    o = c0 - 0.5 * (SHAPE[0] - 1) * PX
    return np.asarray(img.data, float), ((where[1] - o[1]) / PX, (where[0] - o[0]) / PX), rng


def _count(crystal, seed, n, template="fcc"):
    """The joint fit's count (atoms, signed) of the cluster of ``n`` atoms (0: the host
    alone at a 20-atom aperture), centre off by 0.5 Å rms and radius off by up to ±15 %
    (as from a detection)."""
    from perovstem.insitu import _jointhost as jh
    from perovstem.insitu.clusters import _default_library, _fcc_radius_A, atoms_from_scs

    host, prof = crystal
    e, (cy, cx), rng = _frame(host, seed, n)
    cy, cx = cy + rng.normal(0, 0.5 / PX), cx + rng.normal(0, 0.5 / PX)
    r_px = _fcc_radius_A(np.array([float(max(n, 20))]))[0] / PX * rng.uniform(0.85, 1.15)
    f = jh.fit_window(e, cy, cx, half_px=int(np.ceil(r_px + 9 / PX)), radius_px=r_px,
                      others=np.zeros((0, 2)), others_r=np.zeros(0), a_px=5.87 / PX,
                      angle_deg=0.0, px=PX, profile=prof, template=template,
                      column_scs=jh.pb_column_scs() if template == "fcc" else None)  # fmt: skip
    v = f["cluster"] / DOSE
    return float(np.sign(v) * atoms_from_scs(abs(v), _default_library())), f


@pytest.mark.slow
def test_joint_fit_reads_the_damaged_host_alone_as_no_cluster(crystal):
    """The host alone under a 20-atom aperture reads |n| < 2 atoms in every case (measured
    0.74, 1.18, -0.66 native; 0.74, 1.18, 1.02 AVX2 mode): each column's own amplitude
    takes its own damage.  A host model with one mass-to-empty-site ratio leaves ±20 % of
    such a cluster (docs/insitu_validation.md, session 14)."""
    got = [_count(crystal, s, 0)[0] for s in range(1, 4)]
    assert max(abs(g) for g in got) < 2.0, got


@pytest.mark.slow
def test_joint_fit_counts_clusters_on_the_crystal(crystal):
    """15-40-atom fcc Pb clusters on the damaged crystal (cube-on-cube, at random
    registries): the fcc-template joint fit is within 20 % for most cases (measured, both
    CPU modes: 8/9, median |error| 0.10); a smooth ball in its place (``template="ball"``,
    the cluster's own columns not modelled) gives 4/9 and 0.26 and fails both checks."""
    rows = [(n, s) for n in (15, 25, 40) for s in range(1, 4)]
    err = np.array([_count(crystal, s, n)[0] / n - 1 for n, s in rows])
    assert np.median(np.abs(err)) < 0.2, err
    assert np.mean(np.abs(err) < 0.2) >= 5 / 9, err
