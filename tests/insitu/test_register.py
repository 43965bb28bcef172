from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from perovstem import DataError, ParameterError, Series
from perovstem.insitu import (
    apply_drift,
    correct_scan_distortion,
    phase_correlate,
    register_drift,
)


def _rms(df, truth):
    est = df[["dy_px", "dx_px"]].to_numpy()
    return float(np.sqrt(np.mean((est - truth) ** 2)))


def test_phase_correlate_sign_and_subpixel(synth):
    pos = synth.lattice_positions(20, 76, 7.3)
    a = synth.render_frame((96, 96), pos, np.full(len(pos), 20.0), 1.4)
    b = synth.render_frame((96, 96), pos + [1.3, -2.6], np.full(len(pos), 20.0), 1.4)
    dy, dx, snr = phase_correlate(a, b)
    assert dy == pytest.approx(1.3, abs=0.03)
    assert dx == pytest.approx(-2.6, abs=0.03)
    assert snr > 10


@pytest.mark.parametrize(("seed", "counts", "step"), [(0, 3.0, 0.7), (1, 0.5, 1.5), (2, 10.0, 0.3)])
def test_drift_recovered_within_0p1_px(synth, seed, counts, step):
    frames, truth = synth.drifting_series(16, counts=counts, step_px=step, rng=seed)
    df = register_drift(Series(frames, 0.5))
    assert _rms(df, truth) < 0.1
    assert "dy_A" in df and np.allclose(df["dy_A"], df["dy_px"] * 0.5)
    assert not df["skipped"].any()
    # reported errors are finite and of the right order (not absurdly small or large)
    assert np.all(np.isfinite(df["dy_err_px"]))
    assert df["dy_err_px"].iloc[1:].mean() < 0.2


def test_streamed_dask_equals_numpy(synth):
    frames, truth = synth.drifting_series(10, rng=3)
    lazy = da.from_array(frames, chunks=(3, 96, 96))
    d1 = register_drift(frames)
    d2 = register_drift(lazy)
    np.testing.assert_allclose(d1[["dy_px", "dx_px"]], d2[["dy_px", "dx_px"]], atol=1e-6)


@pytest.mark.parametrize("bad", ["nan", "zero"])
def test_corrupted_frame_is_skipped_and_reported(synth, bad):
    frames, truth = synth.drifting_series(12, rng=4)
    frames = frames.copy()
    if bad == "nan":
        frames[6, 10:20, 10:20] = np.nan
    else:
        frames[6] = 0.0
    df = register_drift(frames)
    assert df.loc[6, "skipped"]
    assert df.loc[6, "reason"] != ""
    assert df.attrs["skipped_frames"] == [6]
    keep = np.arange(12) != 6
    est = df[["dy_px", "dx_px"]].to_numpy()
    assert np.sqrt(np.mean((est[keep] - truth[keep]) ** 2)) < 0.1
    # interpolated drift of the skipped frame lies between its neighbours
    lo = np.minimum(est[5], est[7]) - 1e-6
    hi = np.maximum(est[5], est[7]) + 1e-6
    assert np.all((est[6] >= lo) & (est[6] <= hi))


def test_outlier_pair_rejected(synth):
    # frame 8 is replaced by a lattice shifted by a whole lattice period + noise jump:
    # a glitch frame; multi-lag robust solve must keep the others accurate.
    frames, truth = synth.drifting_series(16, rng=5)
    frames = frames.copy()
    rng = np.random.default_rng(0)
    frames[8] = rng.poisson(np.full((96, 96), 40.0))
    df = register_drift(frames, max_lag=3)
    keep = np.arange(16) != 8
    est = df[["dy_px", "dx_px"]].to_numpy()
    assert np.sqrt(np.mean((est[keep] - truth[keep]) ** 2)) < 0.1


def test_frames_of_different_shapes_raise():
    frames = [np.ones((32, 32)), np.ones((32, 32)), np.ones((32, 30))]
    with pytest.raises(DataError, match="frame 2"):
        register_drift(frames)


def test_bad_options_raise(synth):
    frames, _ = synth.drifting_series(3, rng=0)
    with pytest.raises(ParameterError, match="max_lag"):
        register_drift(frames, max_lag=0)
    with pytest.raises(ParameterError, match="upsample"):
        register_drift(frames, upsample=0)
    with pytest.raises(ParameterError, match="whitening"):
        register_drift(frames, whitening=2.0)
    with pytest.raises(DataError, match="no usable frame"):
        register_drift(np.zeros((3, 16, 16)))


def test_apply_drift_aligns_frames(synth):
    frames, truth = synth.drifting_series(6, counts=50.0, step_px=1.5, rng=6)
    df = register_drift(frames)
    out = apply_drift(frames, df)
    inner = (slice(15, -15), slice(15, -15))
    before = np.mean([np.abs(frames[k][inner] - frames[0][inner]).mean() for k in range(1, 6)])
    after = np.mean([np.abs(out[k][inner] - out[0][inner]).mean() for k in range(1, 6)])
    assert after < 0.6 * before
    lazy = apply_drift(Series(da.from_array(frames, chunks=(2, 96, 96)), 0.5), df)
    assert lazy.metadata["drift_corrected"]
    np.testing.assert_allclose(np.asarray(lazy.data.compute()), out, atol=1e-3)
    with pytest.raises(DataError, match="rows"):
        apply_drift(frames, df.iloc[:3])


def test_scan_distortion_row_jitter_removed(synth):
    pos = synth.lattice_positions(8, 120, 7.3)
    ref = synth.render_frame((128, 128), pos, np.full(len(pos), 20.0), 1.4)
    # slowly varying line jitter (smooth in the slow-scan direction)
    jitter = 1.5 * np.sin(np.arange(128) / 12.0)
    yy, xx = np.mgrid[:128, :128].astype(float)
    g = np.zeros((128, 128))
    for y, x in pos:
        g += 20.0 * np.exp(-((yy - y) ** 2 + (xx - jitter[:, None] - x) ** 2) / (2 * 1.4**2))
    distorted = 2.0 + g
    corr, dx_rows = correct_scan_distortion(distorted, ref, band_rows=4, smooth_rows=1.0)
    inner = slice(10, -10)
    assert np.sqrt(np.mean((dx_rows[inner] - jitter[inner]) ** 2)) < 0.15
    assert (
        np.abs(corr - ref)[inner, inner].mean() < 0.3 * np.abs(distorted - ref)[inner, inner].mean()
    )
    with pytest.raises(DataError):
        correct_scan_distortion(distorted, ref[:-1])


def test_real_serialem_frames_register(tomo_data):
    from perovstem.io import load

    path = tomo_data / "etspy_serialem" / "test_000.mrc"
    if not path.exists():
        pytest.skip(f"{path} absent")
    s = load(path)
    assert s.n_frames == 2
    df = register_drift(s)
    # two consecutive frames of the same area: small drift, strong correlation
    assert df.loc[1, "peak_snr"] > 10
    assert abs(df.loc[1, "dy_px"]) < 20 and abs(df.loc[1, "dx_px"]) < 20
    assert df.attrs["pixel_size_A"] == pytest.approx(7.88)
    # cross-check against an independent integer-shift estimate (FFT cross-correlation)
    a = s.data[0].astype(float) - s.data[0].mean()
    b = s.data[1].astype(float) - s.data[1].mean()
    c = np.fft.ifft2(np.conj(np.fft.fft2(a)) * np.fft.fft2(b)).real
    iy, ix = np.unravel_index(np.argmax(c), c.shape)
    iy = iy - 1024 if iy > 512 else iy
    ix = ix - 1024 if ix > 512 else ix
    assert abs(df.loc[1, "dy_px"] - iy) <= 1.0
    assert abs(df.loc[1, "dx_px"] - ix) <= 1.0
