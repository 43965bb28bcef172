"""perovstem.tomo.fourd: sequence checks and the surface threshold of reconstruct_sequence."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from perovstem._data import TiltSeries
from perovstem.errors import ParameterError
from perovstem.tomo import check_sequence, reconstruct_sequence


def _ts(n=8, angles=(-30.0, 0.0, 30.0), px=2.0, axis=0.0):
    return TiltSeries(np.ones((len(angles), n, n)), angles, px, tilt_axis_deg=axis)


def test_check_sequence_names_the_time_point_and_value():
    a = _ts()
    assert len(check_sequence([a, _ts()])) == 2
    cases = [
        (_ts(n=10), "has shape (3, 10, 10)"),
        (_ts(angles=(-30.0, 0.0, 31.0)), "tilt angle 31° at projection 2, expected 30°"),
        (_ts(px=2.5), "pixel size 2.5 Å, expected 2 Å"),
        (_ts(axis=3.0), "tilt axis 3°"),
        (np.ones((3, 8, 8)), "must be a TiltSeries, got ndarray"),
    ]
    for bad, needle in cases:
        with pytest.raises(ParameterError, match="b.mrc") as exc:
            check_sequence([a, bad], names=["a.mrc", "b.mrc"])
        assert needle in str(exc.value)
    with pytest.raises(ParameterError, match=r"`series\[1\]`"):
        reconstruct_sequence([a, _ts(n=10)])


def test_direct_method_surface_is_not_in_the_noise(sequence_files):
    """WBP volumes have negative lobes: the lower 3-class multi-Otsu threshold split them from
    the background and the surface enclosed 2.9x the crystal volume."""
    from perovstem.io import load

    _, files, truth = sequence_files
    series = [load(f) for f in files[:2]]
    df, _ = reconstruct_sequence(series, method="wbp", track_orientation=False)
    np.testing.assert_allclose(df.volume_A3, truth.volume_A3[:2], rtol=0.1)
    # the top class of a WBP volume is the crystal, not Pb clusters: no cluster volume
    assert np.isnan(df.cluster_volume_A3).all()


def test_small_inclusions_do_not_put_the_surface_in_the_blur(sequence_factory):
    """Tune seed 1: its two inclusions (1400 Å³ of 190 000) form no grey-level class of their
    own; the 3-class split was blur | crystal and the volume came out 16.5 % too large."""
    series, truth = sequence_factory(1, n_steps=1)
    df, _ = reconstruct_sequence(series, n_iter=60, track_orientation=False)
    assert df.volume_A3.iloc[0] == pytest.approx(truth.volume_A3.iloc[0], rel=0.05)
    assert np.isnan(df.cluster_volume_A3.iloc[0])


def test_dart_sequence_volume_is_the_crystal(sequence_factory):
    """A DART volume holds two grey levels; Otsu's histogram threshold sat on the first bin
    (0.1 of a 49.5 level) and the surface of the smoothed volume enclosed the blur: 1.80×
    and 1.85× the crystal volume on tune seeds 0 and 1 (0.982 / 1.014 now, SIRT 0.981 /
    0.987)."""
    series, truth = sequence_factory(1, n_steps=1)
    df, _ = reconstruct_sequence(series, method="dart", n_iter=5, track_orientation=False)
    assert df.volume_A3.iloc[0] == pytest.approx(truth.volume_A3.iloc[0], rel=0.05)


def test_otsu_threshold_of_a_discrete_volume_is_between_its_levels():
    """Otsu's criterion is flat between two data values: the threshold is the midpoint, not
    the lower level's bin (skimage returns 0.097 for a 0 / 49.5 volume)."""
    from perovstem.tomo.segment import multi_otsu_thresholds, otsu_threshold

    v = np.zeros((12, 12, 12), np.float32)
    v[3:9, 3:9, 3:9] = 49.5
    assert otsu_threshold(v) == pytest.approx(24.75)
    v[5:7, 5:7, 5:7] = 110.0
    np.testing.assert_allclose(multi_otsu_thresholds(v, n_classes=3), [24.75, 79.75])
    from skimage.filters import threshold_otsu

    noisy = v + np.random.default_rng(0).normal(0, 3, v.shape)
    # continuous data: the same class split as Otsu's histogram threshold
    assert ((noisy > otsu_threshold(noisy)) == (noisy > threshold_otsu(noisy))).all()


@pytest.mark.parametrize(
    ("series", "needle"),
    [
        ([], "`series` is empty"),  # returned [] and a 4-D reconstruction of nothing went on
        (_ts(), "must be a list of TiltSeries (one per time point), got TiltSeries"),
        (5, "must be a list of TiltSeries (one per time point), got int"),
    ],
)
def test_check_sequence_refuses_no_time_point(series, needle):
    with pytest.raises(ParameterError) as info:
        check_sequence(series)
    assert needle in str(info.value)


def test_sequence_smoothing_from_the_first_volume_kept_for_all():
    """A low-dose sequence is meshed with the smoothing its first volume's noise asks for,
    the same at every time point (a change of smoothing would read as a change of facets)."""
    from perovstem.simulate.tilt import degradation_tilt_series, nanocrystal_phantom
    from perovstem.tomo import mesh_sigma_px

    ph = nanocrystal_phantom(60.0, rng=7, r110=1.3, r111=1.5, inclusion_radius_A=(5.0, 7.0))
    series, _ = degradation_tilt_series(
        ph,
        2,
        np.arange(-70.0, 71.0, 5.0),
        dose_per_step_e_per_A2=7.5e3,
        trajectory={"nucleation_per_dose": 0.0, "growth_A3_per_dose": 0.1},
        shape=(40, 40),
        pixel_size_A=2.5,
        counts_per_A=0.05,
        rng=7,
    )
    df, _ = reconstruct_sequence(series, n_iter=60, facet_method="polyhedron")
    assert np.all(df.volume_noise > 0.5)
    assert df.attrs["sigma_px"] == pytest.approx(mesh_sigma_px(noise=df.volume_noise.iloc[0]))
    assert df.attrs["sigma_px"] > 1.2
    fixed, _ = reconstruct_sequence(series, n_iter=60, facet_method="polyhedron", sigma_px=1.0)
    assert fixed.attrs["sigma_px"] == 1.0
    np.testing.assert_allclose(fixed.volume_noise, df.volume_noise)


def test_sequence_noisier_than_its_calibration_is_said():
    # as `tomo facets --calibrate` (session 26): a calibration on 20 counts/Å phantoms does
    # not correct volumes at 0.05 counts/Å; reconstruct_sequence applied it silently
    from perovstem.simulate.tilt import degradation_tilt_series, nanocrystal_phantom
    from perovstem.tomo import calibrate_facets

    ang = np.arange(-70.0, 71.0, 5.0)
    ph = nanocrystal_phantom(60.0, rng=7, r110=1.3, r111=1.5, inclusion_radius_A=(5.0, 7.0))
    cal = calibrate_facets(ang, n_phantoms=2, shape=(40, 40), pixel_size_A=2.5, rng=1)
    for counts, noisy in ((20.0, False), (0.05, True)):
        series, _ = degradation_tilt_series(
            ph,
            2,
            ang,
            dose_per_step_e_per_A2=7.5e3,
            trajectory={"nucleation_per_dose": 0.0, "growth_A3_per_dose": 0.1},
            shape=(40, 40),
            pixel_size_A=2.5,
            counts_per_A=counts,
            rng=7,
        )
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            df, _ = reconstruct_sequence(series, n_iter=60, calibration=cal)
        said = [str(w.message) for w in rec if "noisier than the calibration" in str(w.message)]
        assert bool(said) is noisy, said
        assert np.isfinite(df["err_other"]).all()
