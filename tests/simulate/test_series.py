"""Tests of the in-situ series simulation (perovstem.simulate.series) and its CLI."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from scipy import ndimage

from perovstem.errors import ParameterError
from perovstem.simulate.kmc import degradation_kmc
from perovstem.simulate.kmc_lattice import simple_cube
from perovstem.simulate.kmc_params import KineticParameters
from perovstem.simulate.series import insitu_series, iter_insitu_frames


def _cube(n: int) -> Atoms:
    sym, pos = simple_cube(n)
    return Atoms(symbols=list(sym), positions=pos)


@pytest.fixture(scope="module")
def traj():
    return degradation_kmc(
        _cube(6),
        n_frames=6,
        frame_time_s=2.0,
        dose_rate_e_per_A2_s=4e3,
        temperature_K=np.linspace(290.0, 340.0, 6),
        rng=5,
    )


@pytest.fixture(scope="module")
def quiet_traj():
    """Practically no kinetics (tiny dose rate): frames differ only by drift and dose."""
    return degradation_kmc(
        _cube(4),
        n_frames=4,
        frame_time_s=1.0,
        dose_rate_e_per_A2_s=[1e3, 2e3, 4e3, 1e3],
        params=KineticParameters(D_Br_e_per_A2=1e15),
        rng=0,
    )


def test_series_metadata_follow_trajectory(traj):
    s, truth = insitu_series(traj, pixel_size_A=0.6, rng=1)
    ft = traj.frame_table
    assert s.n_frames == 6
    np.testing.assert_allclose(s.time_s, np.arange(6) * 2.0)
    np.testing.assert_allclose(s.dose_e_per_A2, 8e3)
    np.testing.assert_allclose(s.cumulative_dose_e_per_A2, ft["cumulative_dose_e_per_A2"])
    np.testing.assert_allclose(s.temperature_K, np.linspace(290.0, 340.0, 6))
    assert s.gas == "vacuum"
    assert set(truth) >= {"drift", "clusters", "frames"}
    assert truth["frames"]["n_clusters"].equals(ft["n_clusters"])
    assert s.metadata["kmc_params"]["D_Br_e_per_A2"] == traj.params.D_Br_e_per_A2


def test_image_counts_scale_with_frame_dose(quiet_traj):
    s, _ = insitu_series(quiet_traj, pixel_size_A=0.5, jitter_A=0.0, noise=False, rng=0)
    totals = s.data.reshape(s.n_frames, -1).sum(axis=1)
    np.testing.assert_allclose(totals / totals[0], s.dose_e_per_A2 / s.dose_e_per_A2[0], rtol=1e-3)


@pytest.mark.parametrize(("v", "seed"), [((2.0, -1.0), 0), ((-0.7, 1.5), 1)])
def test_drift_truth_matches_image_shift(quiet_traj, v, seed):
    s, truth = insitu_series(
        quiet_traj, pixel_size_A=0.5, drift_A_per_s=v, jitter_A=0.3, noise=False, rng=seed
    )
    d = truth["drift"]
    t = d["time_s"].to_numpy()
    # displacement = v·t + jitter (rms 0.3 Å per axis)
    res_x = d["dx_A"].to_numpy() - v[0] * t
    res_y = d["dy_A"].to_numpy() - v[1] * t
    assert np.all(np.abs(res_x) < 1.5) and np.all(np.abs(res_y) < 1.5)
    assert np.std(np.concatenate([res_x, res_y])) > 0.05
    np.testing.assert_allclose(d["dx_px"], d["dx_A"] / 0.5)
    # intensity centroid of frame k minus frame 0 equals the truth drift difference (px)
    com = np.array([ndimage.center_of_mass(f) for f in s.data])  # (row, col)
    np.testing.assert_allclose(com[:, 1] - com[0, 1], d["dx_px"] - d["dx_px"][0], atol=0.05)
    np.testing.assert_allclose(com[:, 0] - com[0, 0], d["dy_px"] - d["dy_px"][0], atol=0.05)


def test_cluster_truth_in_image_coordinates(traj):
    v = (1.0, 0.5)
    frames = list(iter_insitu_frames(traj, pixel_size_A=0.6, drift_A_per_s=v, rng=2))
    s, truth = insitu_series(traj, pixel_size_A=0.6, drift_A_per_s=v, rng=2)
    ox, oy = s.metadata["lab_origin_A"]
    assert frames[0][1].metadata["lab_origin_A"] == pytest.approx((ox, oy))
    d = truth["drift"].set_index("frame")
    cl = truth["clusters"]
    k = traj.n_frames - 1
    ck = cl[cl["frame"] == k]
    assert len(ck) > 0
    # image coordinates = sample coordinates + drift of the frame − lab origin of pixel (0, 0)
    np.testing.assert_allclose(ck["x_A"] - ck["x_sample_A"], d.loc[k, "dx_A"] - ox)
    np.testing.assert_allclose(ck["y_A"] - ck["y_sample_A"], d.loc[k, "dy_A"] - oy)
    np.testing.assert_allclose(ck["col_px"], ck["x_A"] / 0.6)
    ref = traj.clusters[traj.clusters["frame"] == k].set_index("cluster_id")
    np.testing.assert_allclose(ck.set_index("cluster_id")["x_sample_A"], ref["x_A"])
    np.testing.assert_array_equal(ck.set_index("cluster_id")["n_atoms"], ref["n_atoms"])
    # the HAADF truth of the same frame puts the lab lattice at the same place
    cols = frames[k][2]
    metal = cols[(cols["n_Pb0"] > 0) & (cols["cluster_id"] >= 0)]
    assert set(metal["cluster_id"]) <= set(ck["cluster_id"])
    assert metal["n_Pb0"].sum() <= ck["n_atoms"].sum()
    cols0 = frames[0][2]
    pb = cols0[(cols0["type"] == "PbBr") & (cols0["n_Pb0"] == 0)]
    lab_x = pb["x_A"] - (d.loc[0, "dx_A"] - ox)
    lattice = (np.arange(6) - 2.5) * 5.87
    assert np.abs(lab_x.to_numpy()[:, None] - lattice[None]).min(axis=1).max() < 1e-6
    assert cl["in_view"].all()


def test_lazy_iter_and_eager_agree_and_reproducible(traj):
    s, t1 = insitu_series(traj, pixel_size_A=0.8, drift_A_per_s=(0.3, 0.1), rng=9)
    lz, t2 = insitu_series(traj, pixel_size_A=0.8, drift_A_per_s=(0.3, 0.1), rng=9, lazy=True)
    assert hasattr(lz.data, "dask")
    np.testing.assert_array_equal(lz.data[4].compute(), s.data[4])  # out of order
    np.testing.assert_array_equal(lz.data.compute(), s.data)
    assert t1["drift"].equals(t2["drift"])
    for k, img, _ in iter_insitu_frames(traj, pixel_size_A=0.8, drift_A_per_s=(0.3, 0.1), rng=9):
        np.testing.assert_array_equal(img.data, s.data[k])
        assert img.dose_e_per_A2 == pytest.approx(s.dose_e_per_A2[k])
    other, _ = insitu_series(traj, pixel_size_A=0.8, drift_A_per_s=(0.3, 0.1), rng=10)
    assert not np.array_equal(other.data, s.data)


def test_noise_is_poisson(quiet_traj):
    mean, _ = insitu_series(quiet_traj, pixel_size_A=0.5, jitter_A=0.0, noise=False, rng=0)
    noisy, _ = insitu_series(quiet_traj, pixel_size_A=0.5, jitter_A=0.0, gain=1.0, rng=0)
    lam = mean.data[2]
    resid = (noisy.data[2] - lam)[lam > 0.5]
    z = resid / np.sqrt(lam[lam > 0.5])
    assert abs(z.mean()) < 0.05 and z.var() == pytest.approx(1.0, abs=0.1)


def test_blanked_frames_and_gas():
    tr = degradation_kmc(
        _cube(4),
        n_frames=3,
        frame_time_s=1.0,
        dose_rate_e_per_A2_s=[1e3, 0.0, 1e3],
        atmosphere="H2O",
        pressure_Pa=50.0,
        rng=1,
    )
    s, truth = insitu_series(tr, pixel_size_A=1.0, offset=7.0, rng=0)
    assert s.dose_e_per_A2[1] == 0.0 and np.all(s.data[1] == 7.0)
    assert s.gas == "H2O" and np.all(s.pressure_Pa == 50.0)
    assert (truth["frames"]["gas"] == "H2O").all()


@pytest.mark.parametrize(
    ("kw", "word"),
    [
        (dict(pixel_size_A=0.0), "pixel_size_A"),
        (dict(drift_A_per_s=(1.0,)), "drift_A_per_s"),
        (dict(jitter_A=-1.0), "jitter_A"),
        (dict(shape=(1, 5)), "shape"),
    ],
)
def test_bad_parameters(traj, kw, word):
    with pytest.raises(ParameterError, match=word):
        insitu_series(traj, **kw)


def test_frame_smaller_than_two_unit_cells_is_refused(traj):
    # 12 px at 0.5 Å = 6 Å: one cell of the a = 5.87 Å host; 24 px (12 Å) is the least
    with pytest.raises(
        ParameterError, match=r"`shape` \(12, 12\) px is too small.*>= 24 px.*unit cells"
    ):
        insitu_series(traj, pixel_size_A=0.5, shape=(12, 12))
    s, _ = insitu_series(traj, pixel_size_A=0.5, shape=(24, 24), rng=0)
    assert s.shape[1:] == (24, 24)
    with pytest.raises(ParameterError, match=r"`shape`.*>= 8 px"):  # the pixel floor
        insitu_series(traj, pixel_size_A=4.0, shape=(4, 4))


def test_cli_series_refuses_a_tiny_frame(tmp_path, capsys):
    from perovstem.cli.main import main

    out = tmp_path / "s.npz"
    assert main(["simulate", "series", "-o", str(out), "--size", "2"]) == 2
    err = capsys.readouterr().err
    assert "`--size` (2, 2) px is too small" in err and "unit cells" in err
    assert not out.exists()


def test_bad_trajectory():
    with pytest.raises(ParameterError, match="trajectory"):
        insitu_series(np.zeros((3, 4, 4)))


def test_cli_series(tmp_path):
    from perovstem.cli.main import main
    from perovstem.io import load, read_table

    out = tmp_path / "s.npz"
    rc = main(
        [
            "simulate",
            "series",
            "-o",
            str(out),
            "--edge-A",
            "25",
            "--frames",
            "3",
            "--seed",
            "4",
            "--drift-A-per-s",
            "0.5",
            "0.2",
            "--temperature-end-K",
            "320",
            "--param",
            "D_Br_e_per_A2=2e4",
            "--param",
            "critical_nucleus=2",
            "--pixel-size-A",
            "0.8",
        ]
    )
    assert rc == 0
    s = load(out)
    assert s.n_frames == 3
    np.testing.assert_allclose(s.temperature_K, [300.0, 310.0, 320.0])
    fr = read_table(tmp_path / "s_frames.parquet")
    assert (
        fr.attrs["params"]["D_Br_e_per_A2"] == 2e4 and fr.attrs["params"]["critical_nucleus"] == 2
    )
    dr = read_table(tmp_path / "s_drift.parquet")
    assert len(dr) == 3 and "dx_px" in dr
    assert (tmp_path / "s_clusters.parquet").exists() and (tmp_path / "s_events.parquet").exists()
    # existing output is not overwritten; bad input gives exit 2
    assert main(["simulate", "series", "-o", str(out), "--frames", "2"]) == 2
    assert main(["simulate", "series", "-o", str(tmp_path / "b.npz"), "--dose-rate", "-1"]) == 2
    assert main(["simulate", "series", "-o", str(tmp_path / "b.npz"), "--atmosphere", "Mars"]) == 2
    assert main(["simulate", "series", "-o", str(tmp_path / "b.npz"), "--param", "x=1"]) == 2
    assert (
        main(
            ["simulate", "series", "-o", str(tmp_path / "b.npz"), "--param", "critical_nucleus=two"]
        )
        == 2
    )


def test_scan_drift_shears_by_truth(quiet_traj):
    kw = dict(pixel_size_A=0.5, jitter_A=0.0, noise=False, rng=0, shape=(120, 120))
    rigid, _ = insitu_series(quiet_traj, drift_A_per_s=(5.0, 0.0), scan_drift=False, **kw)
    shear, truth = insitu_series(quiet_traj, drift_A_per_s=(5.0, 0.0), scan_drift=True, **kw)
    total = truth["drift"]["scan_dx_px"].iloc[0]
    assert total == pytest.approx(5.0 * 1.0 / 0.5)
    j = np.arange(120)
    for r0 in (50, 60):
        rows = slice(r0, r0 + 10)
        a, b = rigid.data[0][rows], shear.data[0][rows]
        got = (b * j).sum() / b.sum() - (a * j).sum() / a.sum()
        assert got == pytest.approx(total * (r0 + 4.5) / 119, abs=0.3)
