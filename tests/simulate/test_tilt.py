"""Tests of the analytic nanocrystal phantom and the tilt-series simulator."""

from __future__ import annotations

import numpy as np
import pytest

from perovstem.errors import ParameterError
from perovstem.simulate.tilt import (
    degradation_phantoms,
    degradation_tilt_series,
    nanocrystal_phantom,
    rotation_from_euler,
    tilt_series,
)

ANG = np.arange(-70.0, 71.0, 10.0)


def test_cube_truth_is_analytic():
    # r110, r111 above sqrt(2), sqrt(3): a pure cube of edge 40 Å
    ph = nanocrystal_phantom(40.0, r110=1.5, r111=1.8, n_inclusions=0, orientation_deg=(0, 0, 0))
    t = ph.truth()
    assert t["volume_A3"] == pytest.approx(40.0**3, rel=1e-9)
    assert t["surface_A2"] == pytest.approx(6 * 40.0**2, rel=1e-9)
    f = t["facets"].set_index("family")["fraction"]
    assert f["100"] == pytest.approx(1.0)
    assert f["110"] == pytest.approx(0.0) and f["111"] == pytest.approx(0.0)


def test_truth_volume_is_the_occupied_volume():
    """A void (density-0 inclusion) is not part of the object and a Pb sphere protruding
    from a face is: the truth volume was the host polyhedron's convex hull either way."""
    a = 40.0
    ph = nanocrystal_phantom(a, r110=1.5, r111=1.8, n_inclusions=0, orientation_deg=(0, 0, 0))
    void = ph.replace(inclusions=np.array([[0.0, 0.0, 0.0, 10.0, 0.0]]))
    t = void.truth()
    assert t["host_volume_A3"] == pytest.approx(a**3, rel=1e-9)
    v_sphere = 4 / 3 * np.pi * 10.0**3
    assert t["volume_A3"] == pytest.approx(a**3 - v_sphere, abs=0.005 * v_sphere)
    # a Pb sphere centred on the +x face: half of it lies outside the cube
    bump = ph.replace(inclusions=np.array([[a / 2, 0.0, 0.0, 6.0, 2.5]]))
    v6 = 4 / 3 * np.pi * 6.0**3
    assert bump.truth()["volume_A3"] == pytest.approx(a**3 + v6 / 2, abs=0.005 * v6)
    # the voxel occupancy of the hollow cube agrees with it (partial-volume voxels count
    # by their occupied fraction: the host density is 1)
    vox = void.voxelize((24, 24, 24), 2.0)
    assert float(vox.sum()) * 8.0 == pytest.approx(t["volume_A3"], rel=0.01)
    _, df = degradation_phantoms(void, 2, rng=0)
    assert df.volume_A3.iloc[0] == pytest.approx(t["volume_A3"])
    assert df.host_volume_A3.iloc[0] == pytest.approx(a**3)


@pytest.mark.parametrize("seed", [0, 1])
def test_voxelized_volume_matches_analytic(seed):
    ph = nanocrystal_phantom(50.0, rng=seed)
    v = ph.voxelize((40, 40, 40), 2.0)
    mass = float(v.sum()) * 2.0**3
    inc = ph.inclusions
    truth = ph.truth()["volume_A3"] + float(
        np.sum((inc[:, 4] - 1.0) * 4 / 3 * np.pi * inc[:, 3] ** 3)
    )
    assert mass == pytest.approx(truth, rel=0.01)


@pytest.mark.parametrize("seed,angles", [(2, ANG), (3, np.array([-45.0, 0.0, 33.0, 61.0]))])
def test_projections_conserve_mass(seed, angles):
    """Every projection integrates to the same total mass (exact line integrals)."""
    ph = nanocrystal_phantom(40.0, rng=seed)
    ts, tr = tilt_series(
        ph, angles, shape=(48, 48), pixel_size_A=1.5, counts_per_A=1.0, noise=False, supersample=2
    )
    inc = ph.inclusions
    mass = tr["volume_A3"] + float(np.sum((inc[:, 4] - 1.0) * 4 / 3 * np.pi * inc[:, 3] ** 3))
    sums = ts.data.sum(axis=(1, 2)) * 1.5**2
    np.testing.assert_allclose(sums, mass, rtol=5e-3)


def test_cube_projection_max_is_edge_length():
    ph = nanocrystal_phantom(30.0, r110=1.5, r111=1.8, n_inclusions=0, orientation_deg=(0, 0, 0))
    ts, _ = tilt_series(
        ph, [0.0], shape=(40, 40), pixel_size_A=1.0, counts_per_A=1.0, noise=False, supersample=1
    )
    assert ts.data.max() == pytest.approx(30.0, rel=1e-5)
    # at 45° the chord through the centre is edge·√2
    ts45, _ = tilt_series(
        ph, [45.0], shape=(41, 41), pixel_size_A=1.0, counts_per_A=1.0, noise=False, supersample=1
    )
    assert ts45.data.max() == pytest.approx(30.0 * np.sqrt(2), rel=0.02)


def test_shifts_move_content():
    ph = nanocrystal_phantom(30.0, rng=4)
    sh = np.zeros((len(ANG), 2))
    sh[:, 0] = 3.0
    sh[:, 1] = -2.0
    a, _ = tilt_series(ph, ANG, shape=(48, 48), noise=False)
    b, tr = tilt_series(ph, ANG, shape=(48, 48), noise=False, shifts_px=sh)
    np.testing.assert_allclose(b.data[:, 13:-13, 12:-14], a.data[:, 10:-16, 14:-12], atol=1e-3)
    np.testing.assert_array_equal(tr["shifts_px"], sh)


def test_poisson_noise_statistics():
    ph = nanocrystal_phantom(40.0, rng=5)
    clean, _ = tilt_series(
        ph, [0.0, 20.0], shape=(48, 48), counts_per_A=5.0, background=50.0, noise=False
    )
    noisy, _ = tilt_series(
        ph, [0.0, 20.0], shape=(48, 48), counts_per_A=5.0, background=50.0, rng=1
    )
    z = (noisy.data - clean.data) / np.sqrt(clean.data)
    assert abs(z.mean()) < 0.05
    assert z.std() == pytest.approx(1.0, abs=0.05)


def test_rotation_is_orthonormal():
    r = rotation_from_euler((10, 20, 30))
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)


def test_degradation_trajectory_is_monotonic():
    ph = nanocrystal_phantom(60.0, rng=6)
    phs, df = degradation_phantoms(ph, 4, dose_per_step_e_per_A2=2e4, rng=1)
    assert len(phs) == 4
    assert np.all(np.diff(df.volume_A3) < 0)
    assert np.all(np.diff(df.inclusion_volume_A3) > 0)
    assert np.all(np.diff(df.cumulative_dose_e_per_A2) > 0)
    # corners/edges erode: {100} share falls, rounding facets grow
    assert df.frac_100.iloc[-1] < df.frac_100.iloc[0]


@pytest.mark.parametrize("dose", [1e4, 1e5])
def test_degradation_conserves_pb(dose):
    """The Pb0 inclusions grow from the Pb of the crystal volume lost: at 1e5 e/A^2 per step
    the inclusions grew to 6x the volume of the whole initial crystal."""
    from perovstem.simulate.tilt import PB_VOLUME_PER_CRYSTAL_VOLUME

    ph = nanocrystal_phantom(60.0, rng=6)
    _, df = degradation_phantoms(
        ph, 3, dose_per_step_e_per_A2=dose, nucleation_per_dose=2e-4, rng=1
    )
    lost = df.host_volume_A3.iloc[0] - df.host_volume_A3.to_numpy()
    gained = df.inclusion_volume_A3.to_numpy() - df.inclusion_volume_A3.iloc[0]
    assert np.all(gained <= PB_VOLUME_PER_CRYSTAL_VOLUME * lost + 1e-6)
    assert gained[-1] > 0
    assert PB_VOLUME_PER_CRYSTAL_VOLUME == pytest.approx(0.15, abs=0.005)


def test_degradation_tilt_series_metadata():
    ph = nanocrystal_phantom(40.0, rng=7)
    series, df = degradation_tilt_series(ph, 2, ANG, shape=(32, 32), pixel_size_A=2.0, rng=0)
    assert [s.metadata["step"] for s in series] == [0, 1]
    assert series[1].metadata["cumulative_dose_e_per_A2"] == df.cumulative_dose_e_per_A2[1]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"edge_A": -1.0},
        {"edge_A": 40.0, "r110": 0.9},
        {"edge_A": 10.0, "n_inclusions": 5, "inclusion_radius_A": (8, 9)},
    ],
)
def test_bad_phantom_parameters(kwargs):
    with pytest.raises(ParameterError):
        nanocrystal_phantom(**kwargs)


def test_bad_tilt_parameters():
    ph = nanocrystal_phantom(30.0, rng=0)
    with pytest.raises(ParameterError, match="duplicate"):
        tilt_series(ph, [0.0, 0.0], shape=(32, 32))
    with pytest.raises(ParameterError, match="shifts_px"):
        tilt_series(ph, [0.0, 10.0], shape=(32, 32), shifts_px=np.zeros((3, 2)))
    with pytest.raises(ParameterError, match="pixel_size_A"):
        tilt_series(ph, [0.0], shape=(32, 32), pixel_size_A=0.0)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"counts_per_A": -1.0}, "counts_per_A"),
        ({"counts_per_A": float("nan")}, "counts_per_A"),
        ({"background": -5.0}, "background"),
        ({"pixel_size_A": 0.5}, "wider than the field of view"),  # 60 Å crystal, 32 Å field
    ],
)
def test_tilt_series_rejects_absurd_parameters(kwargs, fragment):
    ph = nanocrystal_phantom(60.0, n_inclusions=0, rng=0)
    opts = {"shape": (64, 64), "pixel_size_A": 2.0, **kwargs}
    with pytest.raises(ParameterError, match=fragment):
        tilt_series(ph, [0.0, 10.0], **opts)


def test_phantom_rejects_negative_inclusions_and_densities():
    with pytest.raises(ParameterError, match="n_inclusions"):
        nanocrystal_phantom(60.0, n_inclusions=-1)
    with pytest.raises(ParameterError, match="inclusion_density"):
        nanocrystal_phantom(60.0, inclusion_density=float("nan"))


def _inside_and_apart(ph) -> bool:
    n, d, _ = ph.planes()
    inc = ph.inclusions
    inside = np.all(n @ inc[:, :3].T + inc[:, 3] + 1.0 <= d[:, None] + 1e-9)
    gap = [
        np.linalg.norm(inc[i, :3] - inc[j, :3]) - inc[i, 3] - inc[j, 3]
        for i in range(len(inc))
        for j in range(i)
    ]
    return bool(inside and min(gap, default=2.0) >= 2.0 - 1e-9)


@pytest.mark.parametrize("seed", [3, 5, 7, 12, 14])
def test_inclusions_blocked_by_the_first_one_are_drawn_again(seed):
    """A large first inclusion near the centre of a 30 Å crystal left no room for the
    second: "could not place 2 inclusions" on 5 of 16 seeds (both CPU modes)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default radii fit: no scaling, no warning
        ph = nanocrystal_phantom(30.0, rng=seed)
    r = ph.inclusions[:, 3]
    assert len(r) == 2 and np.all((r >= 6.0) & (r <= 10.0))
    assert _inside_and_apart(ph)


def test_default_inclusions_are_scaled_down_for_a_small_crystal():
    with pytest.warns(UserWarning, match=r"radii scaled by 0\.\d+ to .* Å"):
        ph = nanocrystal_phantom(20.0, n_inclusions=2, rng=0)
    assert len(ph.inclusions) == 2 and ph.inclusions[:, 3].max() < 6.0
    assert _inside_and_apart(ph)


@pytest.mark.parametrize("radius", [(8.0, 9.0), (-1.0, 2.0), (5.0, 3.0), np.nan, "big"])
def test_given_inclusion_radii_that_cannot_be_used_are_named(radius):
    with pytest.raises(ParameterError, match="inclusion_radius_A"):
        nanocrystal_phantom(12.0, n_inclusions=3, inclusion_radius_A=radius, rng=0)


def test_object_leaving_the_field_is_warned_and_measured():
    """A 110 Å cube in a 128 Å field with the axis 15 px off centre was cut in every
    projection (its volume read 11 % low) without a word.  The projected mass outside the
    field is measured per projection (∫ density dV minus the field's sum) and warned about."""
    import warnings

    ang = np.arange(-60.0, 61.0, 10.0)
    opts = {"shape": (64, 64), "pixel_size_A": 2.0, "noise": False}
    inside = nanocrystal_phantom(60.0, n_inclusions=1, rng=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, tr = tilt_series(inside, ang, **opts)
    assert np.all(tr["fraction_outside_field"] < 0.002)
    big = nanocrystal_phantom(110.0, n_inclusions=1, rng=2)
    with pytest.warns(UserWarning, match=r"leaves the field of view in 13 of 13 projections"):
        _, tr = tilt_series(big, ang, axis_offset_px=15.0, **opts)
    lost = tr["fraction_outside_field"]
    # the offset moves the crystal 30 Å: at least the strip beyond the field edge is lost
    assert np.all(lost > 0.1) and np.all(lost < 0.6)
    # the same crystal centred loses less
    with pytest.warns(UserWarning, match="leaves the field of view"):
        _, tr0 = tilt_series(big, ang, **opts)
    assert np.all(tr0["fraction_outside_field"] < lost)
