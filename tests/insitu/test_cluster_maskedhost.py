"""Host columns fitted with the cluster masked out, then aperture photometry of the
residual (issue #7, session 18 oracle, :func:`perovstem.insitu._jointhost.masked_host`):
the damaged CsPbBr3 cube of ``test_cluster_jointhost.py`` (15 % Cs, Pb and Br vacancies)
with and without a compact fcc Pb cluster on top, fast HAADF model (Gaussian core + Moffat
tail, shot noise), columns fitted with a Gaussian core + Gaussian tail whose shape is
fitted on the same frame away from the cluster (not the simulator's profile)."""

from __future__ import annotations

import numpy as np
import pytest
from test_cluster_jointhost import DOSE, PX, SHAPE, _frame

A_PX = 5.87 / PX


@pytest.fixture(scope="module")
def crystal():
    from perovstem.insitu import _jointhost as jh
    from perovstem.simulate import nanocrystal

    host = nanocrystal(edge_A=40.0, rng=0, pb_vacancy_fraction=0.15,
                       br_vacancy_fraction=0.15, cs_vacancy_fraction=0.15)  # fmt: skip
    e, _, _ = _frame(host, 0, 0)
    c = 0.5 * (SHAPE[0] - 1)
    wins = np.array([[c - 22, c - 22], [c + 22, c - 22], [c - 22, c + 22]], float)
    prof = jh.fit_profile(e, wins, half_px=12, a_px=A_PX, angle_deg=0.0, px=PX)
    return host, prof


def _count(crystal, seed, n, *, mask=True):
    """Atoms (signed) in the aperture (R + 3 Å, ring median of the next 3 Å subtracted) on
    the cell average of the frame minus its masked host model; the host alone (n = 0) at
    a 20-atom aperture.  ``mask=False``: the same fit with nothing masked."""
    from perovstem.insitu import _jointhost as jh
    from perovstem.insitu.clusters import (
        _cell_average,
        _default_library,
        _fcc_radius_A,
        atoms_from_scs,
    )

    host, prof = crystal
    e, (cy, cx), _ = _frame(host, seed, n)
    r = _fcc_radius_A(np.array([float(max(n, 20))]))[0] / PX
    (i0, j0), (m,) = jh.masked_host(
        e, cy, cx, half_px=int(np.ceil(r + 18 / PX)), mask_px=r + 2 / PX if mask else 1e-3,
        others=np.zeros((0, 2)), others_r=np.zeros(0), a_px=A_PX, angle_deg=0.0, px=PX,
        profile=prof,
    )  # fmt: skip
    h, w = m.shape
    full = np.zeros(e.shape)
    full[i0 : i0 + h, j0 : j0 + w] = e[i0 : i0 + h, j0 : j0 + w] - m
    res = _cell_average(full[None], A_PX, 0.0)[0][i0 : i0 + h, j0 : j0 + w]
    yy, xx = np.mgrid[0:h, 0:w]
    d = np.hypot(yy - (cy - i0), xx - (cx - j0))
    ap, ring = d <= r + 3 / PX, (d > r + 3 / PX) & (d <= r + 6 / PX)
    v = (res[ap].sum() - np.median(res[ring]) * ap.sum()) / DOSE
    return float(np.sign(v) * atoms_from_scs(abs(v), _default_library()))


@pytest.mark.slow
def test_masked_host_reads_the_damaged_host_alone_as_few_atoms(crystal):
    """The host alone under a masked 20-atom aperture reads |n| < 8 atoms (measured 3.9,
    −1.3, −5.2): the masked columns take their neighbours' amplitudes, not their own
    damage, so this scatter (±25 % of a 20-atom cluster) is the method's floor."""
    got = [_count(crystal, s, 0) for s in range(1, 4)]
    assert max(abs(g) for g in got) < 8.0, got


@pytest.mark.slow
def test_masked_host_leaves_the_cluster_in_the_residual(crystal):
    """15–40-atom clusters: the masked fit leaves them in the residual (measured median
    |error| 0.16, 7/9 within 20 %); the same fit without the mask takes about half of
    each cluster into its host columns (0.3–0.5 of n read) and fails."""
    rows = [(n, s) for n in (15, 25, 40) for s in range(1, 4)]
    err = np.array([_count(crystal, s, n) / n - 1 for n, s in rows])
    assert np.median(np.abs(err)) < 0.25, err
    assert np.mean(np.abs(err) < 0.2) >= 5 / 9, err
    # without the mask the host columns absorb the cluster
    err0 = np.array([_count(crystal, s, n, mask=False) / n - 1 for n, s in rows[::3]])
    assert np.all(err0 < -0.3), err0
