from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from perovstem import CalibrationError, ParameterError, Series
from perovstem.insitu import fft_phase_check, nanocrystal_metrics, segment_nanocrystal


@pytest.fixture(scope="module")
def sim():
    from perovstem.simulate import add_pb_cluster, nanocrystal
    from perovstem.simulate.haadf import haadf_image

    def image(atoms, seed=0, dose=2e4):
        img, _ = haadf_image(
            atoms,
            pixel_size_A=0.4,
            shape=(192, 192),
            center_A=(0, 0),
            dose_e_per_A2=dose,
            rng=seed,
        )
        return img

    return nanocrystal, add_pb_cluster, image


@pytest.mark.parametrize("edge", [30.0, 45.0])
def test_projected_area_of_cube(sim, edge):
    nanocrystal, _, image = sim
    at = nanocrystal(edge_A=edge, rng=0)
    crystal, voids, _ = segment_nanocrystal(image(at))
    pos = at.get_positions()
    w, h = np.ptp(pos[:, 0]), np.ptp(pos[:, 1])
    area = crystal.sum() * 0.16
    # between the column-centre box and the box grown by half a cell
    assert w * h < area < (w + 5.87 / 2) * (h + 5.87 / 2) * 1.05
    assert voids.sum() == 0


def test_void_and_shrinkage_over_series(sim):
    nanocrystal, _, image = sim
    frames = []
    for edge in (45.0, 40.0, 35.0):
        frames.append(image(nanocrystal(edge_A=edge, rng=0)).data)
    at = nanocrystal(edge_A=45.0, rng=0)
    pos = at.get_positions()
    c = pos.mean(0)
    del at[np.flatnonzero(np.hypot(pos[:, 0] - c[0], pos[:, 1] - c[1]) < 9.0)]
    frames.append(image(at).data)
    frames.insert(2, np.full_like(frames[0], np.nan))  # corrupted frame in the middle
    df = nanocrystal_metrics(Series(np.asarray(frames), 0.4))
    assert df.loc[2, "skipped"] and "non-finite" in df.loc[2, "reason"]
    s = df.loc[[0, 1, 3], "shrinkage"].to_numpy()
    expected = 1 - (np.array([45.0, 40.0, 35.0]) / 45.0) ** 2
    np.testing.assert_allclose(s, expected, atol=0.06)
    assert df.loc[4, "n_voids"] == 1
    # void resolution is one unit cell: area between the blurred and the true hole
    assert np.pi * (9.0 - 5.87 / 2) ** 2 * 0.6 < df.loc[4, "void_area_A2"] < np.pi * 9.0**2
    assert (df.loc[[0, 1, 3], "phase"] == "CsPbBr3").all()


def test_integrated_counts_are_detected_electrons(sim):
    """A detector gain and offset (in the Series' metadata) change the raw counts, not the
    crystal's signal: integrated_counts used to sum the raw counts (offset x area added,
    gain multiplied in)."""
    nanocrystal, _, image = sim
    frames = np.asarray([image(nanocrystal(edge_A=e, rng=0)).data for e in (40.0, 35.0)])
    plain = nanocrystal_metrics(Series(frames, 0.4), phase_check=False)
    det = Series(3.0 * frames + 100.0, 0.4, metadata={"gain": 3.0, "offset": 100.0})
    scaled = nanocrystal_metrics(det, phase_check=False)
    np.testing.assert_allclose(scaled["area_A2"], plain["area_A2"])
    np.testing.assert_allclose(scaled["integrated_counts"], plain["integrated_counts"], rtol=1e-9)


def test_fft_phase_check(sim):
    nanocrystal, add_pb_cluster, image = sim
    at = nanocrystal(edge_A=30.0, rng=1)
    r = fft_phase_check(image(at))
    assert r["phase"] == "CsPbBr3"
    assert r["measured_d_A"]["CsPbBr3"]["110"] == pytest.approx(4.15, rel=0.04)
    for i in range(3):
        at = add_pb_cluster(at, 200, site="corner", rng=i)
    assert fft_phase_check(image(at))["phase"] == "CsPbBr3+Pb"
    pb = at[at.arrays["label"] == 2]
    r = fft_phase_check(image(pb))
    assert r["phase"] == "Pb"
    assert r["measured_d_A"]["Pb"]["200"] == pytest.approx(2.475, rel=0.04)


def test_bad_input():
    with pytest.raises(CalibrationError):
        segment_nanocrystal(np.ones((16, 16)))
    with pytest.raises(ParameterError, match="mask"):
        fft_phase_check(
            np.random.default_rng(0).random((32, 32)), pixel_size_A=0.5, mask=np.ones((8, 8), bool)
        )
    with pytest.raises(CalibrationError):
        nanocrystal_metrics(np.ones((2, 16, 16)))


def test_area_change_significance():
    import pandas as pd

    from perovstem.insitu import area_change, area_noise

    rng = np.random.default_rng(0)
    sig = 15.0
    # white noise on a linear trend: the second-difference estimate ignores the trend
    est = [area_noise(2000 - 10 * np.arange(40) + rng.normal(0, sig, 40)) for _ in range(20)]
    assert np.median(est) == pytest.approx(sig, rel=0.15)
    flat = pd.DataFrame({"area_A2": 2000 + rng.normal(0, sig, 12), "skipped": False})
    flat.loc[11, "area_A2"] = flat.loc[0, "area_A2"] + 5.0  # small apparent "growth"
    ch = area_change(flat)
    assert ch["verdict"] == "within noise" and not ch["significant"]
    assert ch["shrinkage"] < 0 and "no significant shrinkage" in ch["text"]
    shrink = pd.DataFrame({"area_A2": 2000 - 40 * np.arange(12) + rng.normal(0, sig, 12)})
    ch = area_change(shrink)
    assert ch["significant"] and ch["shrinkage"] == pytest.approx(440 / 2000, abs=0.03)
    assert ch["shrinkage_err"] == pytest.approx(np.sqrt(2) * sig / 2000, rel=0.6)
    with pytest.raises(ParameterError):
        area_change(pd.DataFrame({"area_A2": [1.0]}))


def test_fill_holes_on_bounding_box_equals_whole_frame_fill():
    """The crystal's holes are filled on its bounding box only (speed): same result as
    scipy's fill on the whole frame, for masks touching the border, with nested holes and
    with several objects."""
    from perovstem.insitu.nanocrystal import _fill_holes

    rng = np.random.default_rng(7)
    for t in range(200):
        m, n = rng.integers(6, 50, size=2)
        b = rng.random((m, n)) > rng.uniform(0.2, 0.8)
        if t % 2:
            b = ndimage.binary_opening(b)
        if t % 3 == 0:  # a ring with a hole, somewhere (possibly at the border)
            b[:] = False
            r0, c0 = rng.integers(0, m // 2), rng.integers(0, n // 2)
            b[r0 : r0 + 5, c0 : c0 + 5] = True
            b[r0 + 1 : r0 + 4, c0 + 1 : c0 + 4] = False
            b[r0 + 2, c0 + 2] = True
        assert np.array_equal(_fill_holes(b), ndimage.binary_fill_holes(b)), t


def test_full_power_spectrum_from_half_spectrum():
    """The lattice search's full power spectrum from the real FFT (Hermitian symmetry)
    equals |fft2|², even and odd sides."""
    import scipy.fft as sfft

    from perovstem.insitu.lattice import _full_power

    rng = np.random.default_rng(3)
    for m, n in [(8, 8), (7, 9), (16, 5), (33, 64), (5, 2), (6, 3), (1, 7)]:
        a = rng.random((m, n))
        ref = np.abs(sfft.fft2(a)) ** 2
        assert np.allclose(_full_power(sfft.rfft2(a), n), ref, rtol=1e-12, atol=1e-9), (m, n)
