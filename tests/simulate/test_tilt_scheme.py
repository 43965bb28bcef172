"""Tilt schemes (missing wedge, dose-symmetric order), tilt-axis geometry, voxel and structure
phantoms, and the 4-D truth of a degradation trajectory."""

from __future__ import annotations

import numpy as np
import pytest

from perovstem.errors import ParameterError
from perovstem.simulate.tilt import (
    atoms_to_volume,
    degradation_tilt_series,
    nanocrystal_phantom,
    tilt_scheme,
    tilt_series,
)


def _sequence(df):
    return df.sort_values("order")["angle_deg"].tolist()


def test_scheme_orders():
    ds = tilt_scheme(6.0, 2.0, scheme="dose-symmetric", group_size=2)
    assert ds["angle_deg"].tolist() == [-6, -4, -2, 0, 2, 4, 6]
    # Hagen et al. 2017: 0, +, −, −, +, +, −
    assert _sequence(ds) == [0, 2, -2, -4, 4, 6, -6]
    assert _sequence(tilt_scheme(6.0, 2.0, scheme="dose-symmetric", group_size=1)) == [
        0,
        2,
        -2,
        4,
        -4,
        6,
        -6,
    ]
    assert _sequence(tilt_scheme(6.0, 2.0, scheme="sequential")) == [-6, -4, -2, 0, 2, 4, 6]
    assert _sequence(tilt_scheme(6.0, 2.0, scheme="bidirectional")) == [0, 2, 4, 6, -2, -4, -6]
    # a branch that runs out first: the rest of the other branch follows
    asym = tilt_scheme(8.0, 2.0, min_tilt_deg=-2.0, scheme="dose-symmetric")
    assert _sequence(asym) == [0, 2, -2, 4, 6, 8]
    for df in (ds, asym):
        assert sorted(df["order"]) == list(range(len(df)))


@pytest.mark.parametrize(("lo", "hi", "step"), [(-70, 70, 2), (-60, 72, 3), (-45, 60, 1.5)])
def test_missing_wedge_and_low_tilts_first(lo, hi, step):
    ds = tilt_scheme(hi, step, min_tilt_deg=lo, scheme="dose-symmetric")
    sq = tilt_scheme(hi, step, min_tilt_deg=lo, scheme="sequential")
    for df in (ds, sq):
        a = df["angle_deg"].to_numpy()
        assert np.allclose(np.diff(a), step)
        assert a.min() >= lo - 1e-9 and a.max() <= hi + 1e-9
        assert df.attrs["missing_wedge_deg"] == pytest.approx(180 - (a.max() - a.min()))
    # dose-symmetric: every projection within ±20° is recorded before any beyond ±30°
    a, o = ds["angle_deg"].to_numpy(), ds["order"].to_numpy()
    assert o[np.abs(a) <= 20].max() < o[np.abs(a) > 30].min()
    # ... and the low tilts get less accumulated dose than in a sequential scheme
    low = np.abs(a) <= 10
    assert o[low].mean() < 0.5 * sq["order"].to_numpy()[low].mean()


@pytest.mark.parametrize(
    ("kw", "word"),
    [
        ({"step_deg": 0.0}, "step_deg"),
        ({"max_tilt_deg": 95.0}, "max_tilt_deg"),
        ({"min_tilt_deg": 80.0}, "min_tilt_deg"),
        ({"scheme": "random"}, "scheme"),
        ({"group_size": 0}, "group_size"),
        ({"max_tilt_deg": 1.0, "step_deg": 5.0}, "fewer than two"),
    ],
)
def test_bad_scheme_parameters(kw, word):
    with pytest.raises(ParameterError, match=word):
        tilt_scheme(**kw)


def test_drift_random_walk_follows_acquisition_order():
    sch = tilt_scheme(70.0, 2.0, scheme="dose-symmetric")
    ph = nanocrystal_phantom(20.0, n_inclusions=0, rng=0)
    steps_t, steps_a = [], []
    for seed in range(3):
        ts, tr = tilt_series(
            ph,
            sch["angle_deg"],
            acquisition_order=sch["order"].to_numpy(),
            shape=(8, 8),
            pixel_size_A=4.0,
            supersample=1,
            shift_sigma_px=0.5,
            noise=False,
            dose_e_per_A2=7100.0,
            rng=seed,
        )
        sh = tr["shifts_px"]
        steps_t.append(np.diff(sh[np.argsort(tr["acquisition_order"])], axis=0))
        steps_a.append(np.diff(sh, axis=0))  # neighbours in angle, far apart in time
    st, sa = np.concatenate(steps_t), np.concatenate(steps_a)
    assert np.std(st) == pytest.approx(0.5, rel=0.1)
    # angle neighbours are |Δorder| steps apart in time: variance σ²·<|Δorder|> (a walk)
    lag = np.abs(np.diff(tr["acquisition_order"])).mean()
    assert lag > 1.5  # sequential: exactly 1
    assert np.mean(sa**2) == pytest.approx(0.25 * lag, rel=0.25)
    cum = np.asarray(ts.metadata["cumulative_dose_at_projection_e_per_A2"])
    assert cum[np.argmin(np.abs(ts.angles_deg))] == pytest.approx(100.0)
    assert cum.max() == pytest.approx(7100.0)
    assert ts.metadata["missing_wedge_deg"] == pytest.approx(40.0)
    with pytest.raises(ParameterError, match="acquisition_order"):
        tilt_series(ph, [0.0, 10.0], shape=(8, 8), acquisition_order=[0, 0])


@pytest.mark.parametrize(("axis_deg", "offset_px"), [(0.0, 4.0), (30.0, -3.0), (-75.0, 2.5)])
def test_tilt_axis_direction_and_offset_move_the_centroid(axis_deg, offset_px):
    """The centroid of each projection follows the rotation about the displaced, rotated axis."""
    c = np.array([6.0, -5.0, 8.0])  # object centre (x along the axis, y, z), Å
    ph = nanocrystal_phantom(16.0, n_inclusions=0, orientation_deg=(0, 0, 0), centre_A=c)
    ang = np.array([-60.0, -20.0, 0.0, 35.0, 70.0])
    px = 1.0
    ts, _ = tilt_series(
        ph,
        ang,
        shape=(72, 72),
        pixel_size_A=px,
        supersample=3,
        counts_per_A=1.0,
        noise=False,
        tilt_axis_deg=axis_deg,
        axis_offset_px=offset_px,
    )
    rows, cols = np.mgrid[:72, :72] - 35.5
    th = np.deg2rad(ang)
    xo = np.full(ang.size, c[0] / px)  # along the axis
    yo = offset_px + (c[1] * np.cos(th) + c[2] * np.sin(th)) / px  # across the axis
    phi = -np.deg2rad(axis_deg)
    exp_col = np.cos(phi) * xo - np.sin(phi) * yo
    exp_row = np.sin(phi) * xo + np.cos(phi) * yo
    for k in range(ang.size):
        w = ts.data[k].astype(float)
        assert (w * cols).sum() / w.sum() == pytest.approx(exp_col[k], abs=0.05)
        assert (w * rows).sum() / w.sum() == pytest.approx(exp_row[k], abs=0.05)


def test_voxel_phantom_projections_match_the_analytic_ones():
    ph = nanocrystal_phantom(24.0, rng=3, inclusion_radius_A=(3.0, 4.0))
    ang = [-50.0, 0.0, 40.0]
    kw = {"shape": (32, 32), "pixel_size_A": 1.0, "counts_per_A": 1.0, "noise": False}
    exact, tr = tilt_series(ph, ang, **kw)
    vol = ph.voxelize((64, 64, 64), 0.5)
    vox, tv = tilt_series(vol, ang, voxel_size_A=0.5, **kw)
    assert tv["integral"] == pytest.approx(tr["integral"], rel=0.01)
    # independent line-integral routes agree pixel by pixel to the voxelisation error
    err = np.abs(vox.data - exact.data).mean() / exact.data.mean()
    assert err < 0.03
    np.testing.assert_allclose(vox.data.sum(axis=(1, 2)), tr["integral"], rtol=0.01)
    with pytest.raises(ParameterError, match="obj"):
        tilt_series(np.ones((4, 4)), ang, **kw)
    with pytest.raises(ParameterError, match="voxel_size_A"):
        tilt_series(vol, ang, voxel_size_A=-1.0, **kw)


def test_structure_projections_conserve_z_contrast_mass():
    from perovstem.simulate import nanocrystal

    atoms = nanocrystal(3 * 5.87, neutral=False)
    vol = atoms_to_volume(atoms, 0.5)
    w = (np.asarray(atoms.get_atomic_numbers(), float) ** 1.7).sum()
    assert vol.sum() * 0.5**3 == pytest.approx(w, rel=1e-6)
    ts, tr = tilt_series(
        atoms,
        [-30.0, 0.0, 45.0],
        shape=(48, 48),
        pixel_size_A=0.75,
        counts_per_A=1.0,
        noise=False,
        truth_volume=True,
    )
    np.testing.assert_allclose(ts.data.sum(axis=(1, 2)) * 0.75**2, w, rtol=0.01)
    assert tr["volume"].sum() * 0.75**3 == pytest.approx(w, rel=0.02)
    # at 0° the [001] columns are resolved: Pb–Br columns (Z-weighted) are the brightest spots
    img = ts.data[1]
    assert img.max() > 3 * np.median(img[img > 0.01 * img.max()])
    with pytest.raises(ParameterError, match="sigma_A"):
        atoms_to_volume(atoms, 0.5, sigma_A=0.0)


def test_degradation_trajectory_4d_truth():
    ph = nanocrystal_phantom(40.0, rng=2)
    sch = tilt_scheme(60.0, 15.0, scheme="dose-symmetric")
    series, df, truths = degradation_tilt_series(
        ph,
        3,
        sch["angle_deg"],
        dose_per_step_e_per_A2=1e4,
        trajectory={"nucleation_per_dose": 2e-4},
        return_truth=True,
        rng=1,
        shape=(36, 36),
        pixel_size_A=1.5,
        counts_per_A=1.0,
        noise=False,
        truth_volume=True,
        acquisition_order=sch["order"].to_numpy(),
    )
    assert len(series) == len(truths) == 3
    masses = []
    for s, (ts, tr) in enumerate(zip(series, truths, strict=True)):
        assert tr["volume"].shape == (36, 36, 36)
        assert tr["volume_A3"] == pytest.approx(df.volume_A3.iloc[s])
        m = tr["volume"].sum() * 1.5**3
        assert m == pytest.approx(tr["integral"], rel=0.02)
        # the projections of step s integrate to the truth volume of step s
        np.testing.assert_allclose(ts.data.sum(axis=(1, 2)) * 1.5**2, tr["integral"], rtol=0.01)
        assert ts.metadata["acquisition_order"] == sch["order"].tolist()
        masses.append(m)
    assert np.all(np.diff(df.volume_A3) < 0)
    assert np.all(np.diff([t["inclusion_volume_A3"] for t in truths]) > 0)
    assert df.n_coalescences.iloc[-1] >= 0
    # two-value return unchanged for existing callers
    out = degradation_tilt_series(ph, 2, [0.0, 30.0], shape=(16, 16), pixel_size_A=4.0, rng=0)
    assert len(out) == 2


def test_cli_simulate_tilt_scheme(tmp_path):
    import json

    from perovstem.cli.main import main
    from perovstem.io import load

    out = tmp_path / "ts.npz"
    args = ["simulate", "tilt", "-o", str(out), "--size", "24", "--pixel-size-A", "4"]
    args += ["--edge-A", "40", "--inclusions", "0", "--tilt-range-deg", "60"]
    args += ["--min-tilt-deg", "-40", "--step-deg", "10", "--scheme", "dose-symmetric"]
    args += ["--axis-offset-px", "1.5", "--seed", "0"]
    assert main(args) == 0
    ts = load(out)
    np.testing.assert_allclose(ts.angles_deg, np.arange(-40.0, 61.0, 10.0))
    truth = json.loads((tmp_path / "ts_truth.json").read_text())
    sch = tilt_scheme(60.0, 10.0, min_tilt_deg=-40.0, scheme="dose-symmetric")
    assert truth["acquisition_order"] == sch["order"].tolist()
    assert truth["missing_wedge_deg"] == pytest.approx(80.0)
    assert truth["axis_offset_px"] == 1.5
    bad = ["simulate", "tilt", "-o", str(tmp_path / "b.npz"), "--scheme", "spiral"]
    assert main(bad) == 2
