from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import pytest
from _insitu_kmc import kmc_imaged

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


def _registered(s, truth):
    """``register_drift`` of a simulator series: (table, true drift from frame 0, error per
    frame in px, reliable mask)."""
    t = truth["drift"][["dy_px", "dx_px"]].to_numpy()
    t = t - t[0]
    df = register_drift(s)
    err = np.hypot(*(df[["dy_px", "dx_px"]].to_numpy() - t).T)
    return df, t, err, df["drift_reliable"].to_numpy()


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


def _vanishing_crystal(phi, edge_A, seed, n_frames=24, params=None):
    """KMC series of a crystal that is destroyed part-way (simulator truth: host Pb count)."""

    tr, s, truth = kmc_imaged(
        edge_A,
        rate=phi,
        temperature_K=300.0,
        seed=seed,
        crystal_seed=0,
        n_frames=n_frames,
        params=params,
        pixel_size_A=0.5,
        drift_A_per_s=(0.8, -0.5),
        jitter_A=0.3,
        rng=seed + 1,
    )
    t = truth["drift"][["dy_px", "dx_px"]].to_numpy()
    host = truth["frames"]["n_Pb_host"].to_numpy(float)
    return s, t - t[0], host / host[0]


@pytest.mark.parametrize(("phi", "edge_A", "seed"), [(3e3, 40.0, 1), (5e3, 30.0, 3)])
def test_crystal_vanishing_halfway_is_flagged(phi, edge_A, seed):
    s, truth, host = _vanishing_crystal(phi, edge_A, seed)
    gone = host == 0
    assert 4 <= gone.sum() <= 20  # the crystal disappears within the series
    df = register_drift(s)
    rel = df["drift_reliable"].to_numpy()
    err = np.hypot(*(df[["dy_px", "dx_px"]].to_numpy() - truth).T)
    # frames with most of the crystal left are registered and trusted, within 0.1 px
    assert rel[host >= 0.5].all()
    assert np.sqrt(np.mean(err[rel] ** 2)) < 0.1
    assert err[rel].max() < 0.15
    # once only mobile clusters are left, nothing is reported as reliable
    assert not rel[gone].any()
    assert (df.loc[gone, "drift_flag"] != "").all()
    assert df.attrs["n_unreliable"] == int((~rel).sum())
    assert df.attrs["unreliable_frames"] == np.flatnonzero(~rel).tolist()
    # no silent wrong number: every frame off by more than 0.25 px is flagged, and the
    # reported uncertainty of the flagged frames grows along the stretch
    assert not rel[err > 0.25].any()
    e_unrel = df.loc[~rel, "dy_err_px"].to_numpy()
    assert e_unrel[-1] >= e_unrel[0]
    # ... and covers the actual error of the flagged frames (inf: step not testable).
    # (An earlier check wanted every flagged frame's dy error >= 0.25 px; on the
    # CPU-independent noise seed 3's first flagged frame reports 0.197 px (0.28 px in
    # total) for an actual error of 0.13 px: honest, so only the coverage is asserted.)
    rep = np.hypot(df["dy_err_px"], df["dx_err_px"]).to_numpy()
    assert np.all(err[~rel] <= rep[~rel])
    assert np.all(rep[~rel] >= 0.25)


def test_crystal_vanishing_more_seeds_has_no_silent_frame():
    """Once the crystal has (nearly) vanished, frames of hopping clusters were rescued by the
    group-wise registration and reported reliable 5-24 px off (seeds 7, 9, 11; frames with
    0-21 % of the host Pb left): their group-wise measurement rests on a series mean of
    cluster frames aligned on chained drifts, and the smoothed track, unconstrained where
    the neighbouring frames' content failed, cannot check it.  Such a frame must now agree
    with its running-reference measurement (the reference's shared drift taken out), and a
    flagged frame's error must cover its actual error.  Seeds 7-13 were used to develop
    the check; seeds 17, 19, 29, 31 are held out (31: one frame 0.27 px off reported
    reliable on the old code)."""
    silent, uncovered = [], []
    for phi, edge_A, seed in [
        (5e3, 30.0, 7),
        (3e3, 40.0, 9),
        (5e3, 30.0, 11),
        (3e3, 40.0, 13),
        (3e3, 40.0, 17),
        (5e3, 30.0, 19),
        (3e3, 40.0, 29),
        (5e3, 30.0, 31),
    ]:
        s, truth, _ = _vanishing_crystal(phi, edge_A, seed)
        df = register_drift(s)
        err = np.hypot(*(df[["dy_px", "dx_px"]].to_numpy() - truth).T)
        rel = df["drift_reliable"].to_numpy()
        rep = np.hypot(df["dy_err_px"], df["dx_err_px"]).to_numpy()
        silent += [
            (seed, int(k), round(float(err[k]), 2)) for k in np.flatnonzero(rel & (err > 0.25))
        ]
        uncovered += [(seed, int(k)) for k in np.flatnonzero(~rel & (err > rep))]
    assert silent == [], silent
    assert uncovered == [], uncovered


def test_truly_vanishing_crystal_has_no_silent_frame():
    """Once the crystal has truly gone (orphaned Br leaving with their last cation,
    ``KineticParameters(orphaned_br_leave=True)``), a frame of hopping clusters only, between
    two frames whose content failed the rigidity tests, was reported reliable 19 px off
    (seed 19, frame 18): its group-wise and running-reference registrations agreed (0.19 px)
    on the same moving content.  The default simulator leaves a cation-free Br lattice that
    still registers, which hid it.  Such a frame is now flagged."""
    from perovstem.simulate import KineticParameters

    s, truth, host = _vanishing_crystal(
        5e3, 30.0, 19, params=KineticParameters(orphaned_br_leave=True)
    )
    assert (host[-10:] == 0).all()  # the crystal is gone for the last 10 frames
    df = register_drift(s)
    err = np.hypot(*(df[["dy_px", "dx_px"]].to_numpy() - truth).T)
    rel = df["drift_reliable"].to_numpy()
    silent = np.flatnonzero(rel & (err > 0.25))
    assert silent.size == 0, [(int(k), round(float(err[k]), 2)) for k in silent]
    assert rel[host >= 0.5].all()  # the frames with most of the crystal left stay trusted
    rep = np.hypot(df["dy_err_px"], df["dx_err_px"]).to_numpy()
    assert np.all(err[~rel] <= rep[~rel])  # a flagged frame's error covers its actual error


def test_mobile_clusters_only_flagged():
    # the frames after the crystal has gone: only hopping Pb clusters on the support
    s, truth, host = _vanishing_crystal(5e3, 30.0, 3, n_frames=30)
    k0 = int(np.argmax(host == 0))
    frames = np.asarray(s.data)[k0:]
    t = truth[k0:] - truth[k0]
    df = register_drift(frames)
    rel = df["drift_reliable"].to_numpy()
    assert rel[0] and not rel[1:].any()  # only the reference frame itself
    err = np.hypot(*(df[["dy_px", "dx_px"]].to_numpy() - t).T)
    assert err.max() > 1.0  # the rigid model really fails here (the test is not vacuous)
    assert df.attrs["n_unreliable"] == len(frames) - 1


def test_reliability_without_running_reference(synth):
    frames, truth = synth.drifting_series(12, counts=3.0, rng=7)
    df = register_drift(frames, reference_window=0)
    assert df["drift_reliable"].all()
    assert _rms(df, truth) < 0.1
    # a frame of pure noise cannot be trusted, the others still are
    frames = frames.copy()
    frames[6] = np.random.default_rng(1).poisson(np.full((96, 96), 40.0))
    for rw in (0, 16):
        df = register_drift(frames, reference_window=rw)
        assert not df.loc[6, "drift_reliable"] and df.loc[6, "drift_flag"]
        keep = np.arange(12) != 6
        assert df["drift_reliable"].to_numpy()[keep].sum() >= 9
        est = df[["dy_px", "dx_px"]].to_numpy()
        assert np.sqrt(np.mean((est[keep] - truth[keep]) ** 2)) < 0.1


def test_reliability_options_checked(synth):
    frames, _ = synth.drifting_series(3, rng=0)
    with pytest.raises(ParameterError, match="subfields"):
        register_drift(frames, subfields=1)
    with pytest.raises(ParameterError, match="reliable_tol_px"):
        register_drift(frames, reliable_tol_px=0.0)


def test_analyze_series_reports_unreliable_drift():
    from perovstem.insitu import analyze_series

    s, truth, host = _vanishing_crystal(5e3, 30.0, 3, n_frames=16)
    res = analyze_series(s, summary=False, phase_check=False)
    f = res.frames
    assert "drift_reliable" in f and "drift_flag" in f
    # the 2-D drift error of register_drift is carried into the frames table
    np.testing.assert_allclose(
        f["drift_err_px"], np.hypot(res.drift["dy_err_px"], res.drift["dx_err_px"])
    )
    n_bad = int((~f["drift_reliable"]).sum())
    assert n_bad >= int((host == 0).sum()) > 0
    assert not f.loc[host == 0, "drift_reliable"].any()
    assert any(f"drift unreliable in {n_bad} of 16 frames" in t for t in res.notes)


def test_mobility_fit_leaves_unreliable_frames_out(monkeypatch):
    import pandas as pd

    import perovstem.quantify.mechanism as mech
    from perovstem.insitu import analyze_series

    seen = {}

    def spy(frames, **kw):
        seen["tracks"] = kw.get("tracks")
        return pd.DataFrame()

    monkeypatch.setattr(mech, "mechanism_summary", spy)
    s, _, host = _vanishing_crystal(5e3, 30.0, 3, n_frames=16)
    res = analyze_series(s, phase_check=False)
    bad = set(res.frames.index[~res.frames["drift_reliable"]])
    assert bad and len(res.clusters) > 0
    assert bad & set(res.clusters["frame"])  # clusters were tracked through those frames
    t = seen["tracks"]
    assert t is None or not (bad & set(t["frame"]))
    assert "mobility fit leaves those frames out" in " ".join(res.notes)


@pytest.mark.parametrize(
    ("lo", "hi", "shape", "counts"), [(10, 50, 128, 3.0), (130, 170, 200, 0.5)]
)
def test_small_offcentre_crystal_stays_reliable(synth, lo, hi, shape, counts):
    # the rigidity test works on the structured part of the field, not fixed quadrants
    rng = np.random.default_rng(lo)
    pos = synth.lattice_positions(lo, hi, 7.3)
    drift = np.cumsum(rng.normal(0, 0.7, (10, 2)), 0)
    drift -= drift[0]
    amp = np.full(len(pos), 20.0)
    frames = np.array(
        [rng.poisson(counts * synth.render_frame((shape, shape), pos + d, amp, 1.4)) for d in drift]
    )
    df = register_drift(frames)
    assert df["drift_reliable"].all(), df["drift_flag"].tolist()
    assert _rms(df, drift) < 0.1


# Seeds whose 0.25 px precision on the reliable frames fails on some realisations of the
# (chaotic) KMC series: the realisation depends on the CPU's SIMD kernels (numpy exp/log,
# numba target).  Max error of a reliable frame (frame) measured on seeds 5-20, AVX-512
# (native) / AVX2 (NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL AVX512_SPR",
# NUMBA_CPU_NAME=haswell): seed 5 0.27 (9) / 0.19, 6 0.19 / 0.25, 9 0.30 (6) / 0.28 (6),
# 10 0.33 (9) / 0.32 (9), 13 0.27 (3) / 0.24, 11 0.22 / 0.24, 18 0.22 / 0.02, the other nine
# <= 0.14 in both; 6 of 32 realisations exceed 0.25, none exceeds 0.33.  On the previous
# (AVX2) machines only seed 10 did (0.26 px).
_JITTER_EDGE_SEEDS = {
    5: "AVX-512 realisation: frame 9 reported reliable 0.27 px off",
    9: "AVX-512 realisation: frame 6 reliable 0.30 px off, and frame 8, flagged non-rigid, "
    "is a lattice period off (11.8 px) with a reported error of 1.6 px; AVX2 realisation: "
    "frame 6 reliable 0.28 px off",
    10: "frame 9 reported reliable 0.26-0.33 px off on every realisation seen",
    13: "AVX-512 realisation: frame 3 reported reliable 0.27 px off",
}


@pytest.mark.parametrize("seed", [5, 6, 7, 8, 9, 10, 11, 12, 13, 14])
def test_scan_line_jitter_no_silent_error(seed):
    # strong fast-scan line jitter (1 px, smooth along y) makes frames non-rigid; a lone
    # reference estimate can then lock onto a neighbouring lattice period (11.7 px at
    # 0.5 Å/px; seeds 7 and 12 had 7-12 px jumps, now flagged by the outline check).  Such
    # frames must be flagged (hard, every seed), and no reliable frame may be more than
    # 0.25 px off: known limitation, the whole-field shift of a non-rigid frame can pass
    # every test 0.26-0.33 px off (see _JITTER_EDGE_SEEDS; those seeds xfail on that part).
    s, truth, _ = _vanishing_crystal(1.5e3, 40.0, 1, n_frames=12)
    rng = np.random.default_rng(seed)
    data = np.array(s.data, float)
    m, n = data.shape[1:]
    x = np.arange(n, dtype=float)
    for k in range(len(data)):
        j = np.sin(np.arange(m) / rng.uniform(10, 16) + rng.uniform(0, 2 * np.pi))
        for i in range(m):
            data[k, i] = np.interp(x - j[i], x, data[k, i])
    df = register_drift(data)
    rel = df["drift_reliable"].to_numpy()
    err = np.hypot(*(df[["dy_px", "dx_px"]].to_numpy() - truth).T)
    # no lattice-period (or any > 1 px) error passes as reliable; measured max 0.33 px
    assert not (rel & (err > 1.0)).any(), np.round(err[rel], 2)
    assert (~rel).any()  # the jitter is detected as non-rigid motion
    rep = np.hypot(df["dy_err_px"], df["dx_err_px"]).to_numpy()
    precise = not (rel & (err > 0.25)).any()
    covered = np.all(err[~rel] <= rep[~rel])
    if seed in _JITTER_EDGE_SEEDS and not (precise and covered):
        pytest.xfail(f"known limitation, seed {seed}: {_JITTER_EDGE_SEEDS[seed]}")
    assert precise, np.round(err[rel], 2)
    assert covered, (np.round(err[~rel], 2), np.round(rep[~rel], 2))


_LATE_DRIFT = pytest.mark.xfail(
    # not strict: realisation-dependent (the chaotic KMC series changes with the CPU's SIMD
    # kernels).  On the AVX-512 realisation seed 4 passes (39 of 40 frames reliable, max
    # 0.16 px), on the AVX2-emulated one too (40 of 40, max 0.19 px)
    strict=False,
    reason="open problem: late in the series (crystal at ~1/5 of its Pb) one reliable frame "
    "is 0.36 px off, 5.7 x its split-half error, both reference and pairs agreeing; the "
    "group-wise registration (series mean) puts it 0.21 px off in the same direction, "
    "within its 1 % agreement bound, so it is the frame's content, not a drift of the "
    "running reference; 3 of the 6 seeds 2-7 show 1-2 such frames (max 0.27-0.36 px) "
    "among 36-40 reliable (previous machines' realisations; passes on the AVX-512 and "
    "AVX2-emulated ones)",
)


@pytest.mark.parametrize("seed", [2, 5, pytest.param(4, marks=_LATE_DRIFT)])
def test_no_silent_error_when_reliable_frames_lose_their_link(seed):
    # a small crystal degrading to ~1/5 of its Pb at 350 e⁻/Å² per frame: a stretch of
    # inconsistent frames used to cut the later reliable frames off frame 0, whose drift then
    # came out 6-30 px off yet "reliable"; now they are flagged as imprecise.  The
    # Wiener-weighted sub-pixel peak and the noise-corrected rigidity test keep most frames
    # reliable (the earlier version kept 17 and 6 of 40 for seeds 2 and 5)
    from perovstem.simulate import KineticParameters

    n = 40
    tr, s, truth = kmc_imaged(
        50.0,
        rate=350.0,
        temperature_K=300.0,
        seed=seed,
        crystal_seed=0,
        n_frames=n,
        params=KineticParameters(D_Br_e_per_A2=1.2e4),
        pixel_size_A=0.2,
        shape=(512, 512),
        drift_A_per_s=(0.2, -0.1),
        jitter_A=0.05,
        rng=seed + 1,
    )
    df, t, err, rel = _registered(s, truth)
    assert rel.sum() >= 30  # few false flags
    assert not (rel & (err > 0.25)).any(), np.round(err[rel], 2)
    rep = np.hypot(df["dy_err_px"], df["dx_err_px"]).to_numpy()
    assert np.all(err[~rel] <= rep[~rel])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_no_silent_sublattice_jump_when_pb_columns_vanish(seed):
    # a CsCd0.3Pb0.7Br3 crystal whose host Pb is all reduced by frame 4-5 (the Cs/Cd/Br
    # skeleton stays): the Pb-free frames' brightest columns are another sublattice, and
    # their registration against Pb-bright references lands half a cell diagonal off
    # (5.7 px each axis at 0.5 A/px), rigidly.  The last frame used to pass as reliable
    # 8 px off: an earlier frame flagged for the same ambiguity vouched for it in the
    # reference/pair agreement test (both on the wrong site).  Seed 2 (AVX-512 realisation):
    # frame 3 (38 of 194 Pb), registered right by the running reference, was flagged with
    # the group-wise estimate on the other sublattice reported (8.2 px off); seed 3 (same
    # realisation): frames 3 and 5-7 flagged "imprecise" 2-10 px off with 2 px reported
    # (the group-wise track followed the wrong sublattice).  Now every frame, flagged or
    # not, is within 0.09 px on seeds 1-8, both realisations (the drift-track alias check
    # re-measures the Pb-free frames on the site the track supports), but for one flagged
    # frame of seed 8 (AVX-512: 0.41 px off, covered by its error)
    from perovstem.simulate import degradation_kmc, insitu_series, nanocrystal

    at = nanocrystal(edge_A=40, cd_fraction=0.3, rng=seed)
    tr = degradation_kmc(at, n_frames=8, frame_time_s=1.0, dose_rate_e_per_A2_s=5e3, rng=seed)
    s, truth = insitu_series(
        tr, pixel_size_A=0.5, drift_A_per_s=(0.8, -0.5), jitter_A=0.3, rng=seed
    )
    assert truth["frames"]["n_Pb_host"].iloc[-1] == 0  # the Pb sublattice has gone
    df, _, err, rel = _registered(s, truth)
    assert not (rel & (err > 0.25)).any(), np.round(err, 2)
    # frames chained through steps whose rigidity cannot be tested: an unbounded error is
    # reported as inf (it read 2.2e150-2.6e150 px)
    rep = np.hypot(df["dy_err_px"], df["dx_err_px"]).to_numpy()
    assert np.all((rep < 1e3) | np.isinf(rep)), rep
    assert rel[:3].all(), df["drift_flag"].tolist()  # the Pb-bearing frames stay reliable
    # no wrong number, flagged or not (a flagged frame's error covers it)
    assert np.all(err < 0.25), np.round(err, 2)
    assert np.all(err[~rel] <= rep[~rel]), (np.round(err, 2), np.round(rep, 2))


@pytest.mark.parametrize("seed", [13, 14, 15, 16, 20])
def test_sublattice_jump_of_alloyed_crystal_caught_by_the_recent_pair(seed):
    # CsCd0.2Pb0.8Br3: once its Pb is reduced (frame 5 on), the Cs sublattice is the
    # brightest and the running reference (Pb-bright frames) and the pairs from the older
    # frames agree on a registration half a cell diagonal off (8.2 px); only the pair from
    # the last Pb-bearing frame lands on the true site, and not always clearly (seed 15,
    # AVX-512: it preferred the true site by 10 % of its peak, < 20 %, and frame 5 was
    # reported reliable 8.1 px off; seed 14, both realisations: frames 5-7 reliable 8.1 px
    # off; seed 16, AVX-512: frames 5 and 7).  The drift-track alias check catches the
    # jump against the straight-line track of the reliable frames, re-measures the frame on
    # the rival correlation peak on the track and flags it.  Seed 15 also checks that the
    # group-wise smoother does not move Pb-bearing frames its own measurement confirms
    # (frames 2-4 had been put 1-4 px off, onto a straight-line track).  Measured on seeds
    # 11-20, both realisations: every frame within 0.10 px but one flagged frame of seed 19
    # (AVX-512, 2.6 px off, covered by its error); frame 4 of seed 14 (43 Pb)
    # stays flagged (lattice-period ambiguity: its outline registration lands 8 px off,
    # and the track of frames 0-3 is too uncertain to overrule it), value 0.05 px off
    from perovstem.simulate import degradation_kmc, insitu_series, nanocrystal

    at = nanocrystal(edge_A=40, cd_fraction=0.2, rng=seed)
    tr = degradation_kmc(at, n_frames=8, frame_time_s=1.0, dose_rate_e_per_A2_s=5e3, rng=seed)
    s, truth = insitu_series(
        tr, pixel_size_A=0.5, drift_A_per_s=(0.8, -0.5), jitter_A=0.3, rng=seed
    )
    assert truth["frames"]["n_Pb_host"].iloc[5:].eq(0).all()
    df, _, err, rel = _registered(s, truth)
    # the Pb-bearing frames stay reliable (at most one false flag)
    assert rel[:4].all() and rel[:5].sum() >= 4, df["drift_flag"].tolist()
    assert not (rel & (err > 0.25)).any(), np.round(err, 2)
    # no wrong number, flagged or not, and the flagged frames' errors cover it
    assert np.all(err < 0.25), np.round(err, 2)
    rep = np.hypot(df["dy_err_px"], df["dx_err_px"]).to_numpy()
    assert np.all(err[~rel] <= rep[~rel]), (np.round(err, 2), np.round(rep, 2))


@pytest.mark.parametrize("seed", [1, 2])
def test_slow_drift_low_counts_no_silent_error(seed):
    # 350 e⁻/Å² per frame (0.2 Å px, ~0.03 counts per crystal pixel) and a slow drift
    # (0.1 px per frame) with 0.25 px jitter: the whitened correlation's sub-pixel peak was
    # dominated by the running reference's high-frequency noise (seed 1: 4 of 30 frames
    # reported reliable but 0.26-0.35 px off); the Wiener-weighted refinement is not
    from perovstem.simulate import KineticParameters

    tr, s, truth = kmc_imaged(
        60.0,
        rate=350.0,
        temperature_K=300.0,
        seed=seed,
        crystal_seed=0,
        n_frames=30,
        params=KineticParameters(D_Br_e_per_A2=1e5),
        pixel_size_A=0.2,
        shape=(512, 512),
        drift_A_per_s=(0.02, -0.01),
        jitter_A=0.05,
        rng=seed + 1,
    )
    df, t, err, rel = _registered(s, truth)
    assert rel.sum() >= 27
    assert not (rel & (err > 0.25)).any(), np.round(err[rel], 2)
    assert _rms(df, t) < 0.1
    # the split-half error is reported and of the order of the actual error
    sig = df["ref_sigma_px"].to_numpy()[1:]
    assert np.all(np.isfinite(sig)) and 0.01 < np.median(sig) < 0.1


@pytest.mark.parametrize(("seed", "counts"), [(8, 3.0), (9, 0.5)])
def test_anchor_check_is_quiet_on_a_rigid_series(synth, seed, counts):
    # every frame after the first full running reference is also registered to that
    # reference frozen (the anchor, a long-baseline check of the chain); on a rigid series
    # the two agree within the noise and nothing is flagged
    frames, truth = synth.drifting_series(20, counts=counts, rng=seed)
    df = register_drift(frames, reference_window=4)
    dev = df["anchor_disagreement_px"].to_numpy()
    # (the anchor is frozen once frames 0-3 fill the window; frame 4 sees the same reference)
    assert np.isnan(dev[:4]).all() and np.isfinite(dev[4:]).all()
    assert dev[4:].max() < 0.125 and dev[8:].max() > 0
    assert df["drift_reliable"].all()
    assert _rms(df, truth) < 0.1
    sig = df["ref_sigma_px"].to_numpy()
    assert np.isfinite(sig[1:]).all() and np.all(sig[1:] < 0.1)


def test_apply_drift_fourier_keeps_the_shot_noise_and_spline_option():
    """The default shift (whole pixels exact + Fourier phase ramp, as analyze_series does)
    keeps the noise variance of a flat Poisson frame at a ½-px drift (a cubic spline leaves
    ≈ 0.57 of it, which biases noise estimates and error bars downstream); a pure
    whole-pixel drift moves the data exactly; ``method="spline"`` is the old behaviour and
    a bad ``method`` is refused."""
    rng = np.random.default_rng(3)
    frames = rng.poisson(50.0, (2, 128, 128)).astype(float)
    df = pd.DataFrame({"frame": [0, 1], "dy_px": [0.0, 0.5], "dx_px": [0.0, 2.5]})
    inner = (slice(8, -8), slice(8, -8))
    var0 = frames[1][inner].var()
    four = apply_drift(frames, df)
    spl = apply_drift(frames, df, method="spline", order=3)
    assert four[1][inner].var() / var0 == pytest.approx(1.0, abs=0.05)
    assert spl[1][inner].var() / var0 < 0.7
    # both conserve the mean level (no bias), only the spline filters
    assert four[1][inner].mean() == pytest.approx(frames[1][inner].mean(), rel=2e-3)
    assert spl[1][inner].mean() == pytest.approx(frames[1][inner].mean(), rel=2e-3)
    whole = apply_drift(frames, df.assign(dy_px=[0.0, 3.0], dx_px=[0.0, -2.0]))
    np.testing.assert_allclose(whole[1][10:-10, 10:-10], frames[1][13:-7, 8:-12], atol=1e-3)
    with pytest.raises(ParameterError, match="method"):
        apply_drift(frames, df, method="cubic")


def test_reported_drift_errors_cover_the_truth():
    """The reported per-axis errors of reliable frames must be honest on degrading crystals:
    at least ~68 % of the frame errors within 1σ and ~95 % within 2σ, without being
    inflated into uselessness.  The least-squares error alone covered 24–50 % at 1σ and
    75–86 % at 2σ here (the changing content moves the correlation peak); with the
    sub-field disagreement term 83–89 % and 97–100 %.  Other seeds, sizes, doses and drifts
    than the series the term was checked on."""
    from perovstem.simulate import KineticParameters

    z = []
    for seed, edge, phi, drift in (
        (31, 60.0, 500.0, (0.25, -0.15)),
        (32, 70.0, 1200.0, (-0.1, 0.2)),
        (33, 60.0, 800.0, (0.1, 0.1)),
        (34, 70.0, 300.0, (0.2, -0.2)),
    ):
        tr, s, truth = kmc_imaged(
            edge,
            rate=phi,
            temperature_K=300.0,
            seed=seed,
            n_frames=30,
            params=KineticParameters(D_Br_e_per_A2=15 * phi),
            pixel_size_A=0.2,
            shape=(384, 384) if edge < 65 else (448, 448),
            drift_A_per_s=drift,
            jitter_A=0.06,
            rng=seed + 1,
        )
        df, t, _, rel = _registered(s, truth)
        e = df[["dy_px", "dx_px"]].to_numpy() - t
        rep = df[["dy_err_px", "dx_err_px"]].to_numpy()
        ok = rel & (np.arange(len(df)) > 0)
        assert ok.sum() >= 15
        z.append((np.abs(e) / rep)[ok].ravel())
    z = np.concatenate(z)
    assert 0.6 <= np.mean(z <= 1) <= 0.95, np.mean(z <= 1)
    assert np.mean(z <= 2) >= 0.9, np.mean(z <= 2)


def _degrading_45(*, seed: int, rng: int):
    """KMC series of a 45 Å crystal filling most of a 384² field (0.2 Å px) that degrades
    within 30 frames (600 e⁻/Å²/s, 305 K, D_Br 15 × the dose rate): (trajectory, series,
    truth) of :func:`kmc_imaged`."""
    from perovstem.simulate import KineticParameters

    return kmc_imaged(
        45.0,
        rate=600.0,
        temperature_K=305.0,
        seed=seed,
        n_frames=30,
        params=KineticParameters(D_Br_e_per_A2=15 * 600.0),
        pixel_size_A=0.2,
        shape=(384, 384),
        drift_A_per_s=(0.0, 0.25),
        jitter_A=0.06,
        rng=rng,
    )


def test_degrading_outline_does_not_fake_a_lattice_period_jump():
    """A 45 Å crystal filling most of a 384² field (0.2 Å px) degrades: its outline changes
    by about an atomic layer between the running reference and the frame.  The plain
    low-pass outline correlation (a ramp as wide as the crystal) then peaked 8-18 px away
    and flagged frames 17-18 "lattice-period ambiguity" although their lattice
    registration was right (13 of 30 frames flagged, 17 reliable, before session 7); the
    gradient correlation of the outline locates the edges.  A registration planted one
    lattice period off must still be flagged on the late frames (the old check passed some
    of them and flagged the true shift of frames 17-24)."""
    from perovstem.insitu.register import _outline_jump, _outline_shift, _spectrum

    tr, s, truth = _degrading_45(seed=47, rng=48)
    df, t, err, rel = _registered(s, truth)
    # no frame before 20 is flagged for a lattice-period ambiguity (frames 17-18 were,
    # 13 of 30 flagged, before session 7; from frame 20 the crystal is mostly gone and the
    # flag is right on most frames, 0.2-4 px off).  Which of frames 13-19 the group-wise
    # cross-check flags depends on the noise draw (17 and 18 reliable on the earlier
    # realisations; on the CPU-independent noise frame 17 is flagged "running-reference
    # and group-wise estimates disagree by 0.29 px"; rng 50/52/54 flag 18, 19 or 15-19),
    # so it is not asserted frame by frame.
    flags = df["drift_flag"].astype(str).tolist()
    assert not any("lattice-period" in f for f in flags[:20]), flags
    assert rel.sum() >= 18, flags
    # planted jumps: the frame against the mean of its 16 predecessors aligned on their true
    # drift (the running reference; its outline: the last 4 of them), at its true shift (no
    # flag) and one lattice period off (flagged).  Frame 20, where most of the crystal has
    # just gone, was left out before session 20 (ujump): against the 16-frame reference's outline
    # the check read a jump of 8-13 px at its true shift on rng 48/50/52 and missed a planted
    # jump; see test_outline_check_follows_a_crystal_vanishing_within_the_reference
    data = np.asarray(s.data, float)
    shape = data.shape[1:]
    for k in (17, 20, 23, 26, 29):
        ref, recent = _reference_and_recent(data, t, k)
        spec = _spectrum(data[k], 0.25)
        period = _outline_shift(ref, spec, shape, None)[2]
        assert 10 < period < 20  # the 2.95 Å (200) spacing at 0.2 Å px
        assert _outline_jump(ref, spec, shape, tuple(t[k]), None, recent=recent) == 0
        for jump in ((period, 0.0), (0.0, -period), (period, period)):
            oj = _outline_jump(ref, spec, shape, tuple(t[k] + jump), None, recent=recent)
            assert oj > 0, (k, jump)
    # coverage of the flagged frames (not covered before on either realisation: frames 16,
    # 0.29 px off with 0.14 px reported, AVX-512, and 24, 0.55 px with 0.42 px, AVX2): a
    # frame flagged by the group-wise registration reports at least the distance between
    # its group-wise and running-reference estimates
    rep = np.hypot(df["dy_err_px"], df["dx_err_px"]).to_numpy()
    assert np.all(err[~rel] <= rep[~rel]), (np.round(err, 2), np.round(rep, 2))
    # precision of the late (low-Pb) reliable frames: a known defect (cf. _LATE_DRIFT),
    # measured on both realisations of this machine
    if (rel & (err > 0.25)).any():
        pytest.xfail(
            "known defect: a late frame reported reliable 0.25-0.33 px off (frame 18, 17 % "
            "of its Pb, 0.29 px on the earlier AVX-512 and AVX2 realisations; one frame "
            "0.33 px on the CPU-independent noise; rng 50 of it had one 14 px off, now "
            "flagged, see test_degrading_crystal_gone_leaves_no_gross_silent_frame): "
            "rescued by the group-wise registration, whose posterior error (0.13-0.15 px) "
            "does not see the degrading crystal's content differing from the series mean; "
            "since session 20 combined with its running-reference measurement, frame 19 is "
            "still 0.31 px off: both measurements are off alike (the frame's content is "
            "displaced; cf. test_degrading_crystal_rescued_late_frames_use_their_...)"
        )


def _reference_and_recent(data, t, k, window=16, recent=4):
    """Spectra of the running reference of frame ``k`` (its ``window`` predecessors aligned
    on their true drift) and of the mean of the last ``recent`` of them."""
    from perovstem.insitu.register import _phase_ramp, _spectrum

    shape = data.shape[1:]
    al = [_spectrum(data[j], 0.25) * _phase_ramp(shape, *t[j]) for j in range(k - window, k)]
    return sum(al) / window, sum(al[-recent:]) / recent


@pytest.mark.parametrize(("seed", "rng"), [(47, 50), (47, 60), (47, 66), (41, 48), (45, 50)])
def test_outline_check_follows_a_crystal_vanishing_within_the_reference(seed, rng):
    """The degrading 45 Å crystals of the test above lose most of their volume within the
    16 frames of the running reference (frames 19-22): the reference's outline is the old
    crystal's, and against it the outline of frames 20-25 peaked 7-32 px from their true
    shift (a false lattice-period jump on 12 of 56 frames 16-29 of rng 48-54 and 18 of
    112 of rng 56-70; a planted one-period jump missed on 9 and 15 of them).  The outline is
    now registered to the last 4 reference frames (largest distance from the true shift
    3.9 / 4.3 px on those two sets, 0 false jumps, 0 missed).  rng 48-54 of seed 47 were
    the development draws; rng 56-70 were looked at once the method was chosen, before the
    number of frames (any of 2-6 passes both sets); KMC seeds 41, 45 were held out."""
    from perovstem.insitu.register import _outline_jump, _outline_shift, _spectrum

    tr, s, truth = _degrading_45(seed=seed, rng=rng)
    t = truth["drift"][["dy_px", "dx_px"]].to_numpy()
    t = t - t[0]
    data = np.asarray(s.data, float)
    shape = data.shape[1:]
    for k in range(17, 30):
        ref, recent = _reference_and_recent(data, t, k)
        spec = _spectrum(data[k], 0.25)
        period = _outline_shift(ref, spec, shape, None)[2]
        assert _outline_jump(ref, spec, shape, tuple(t[k]), None, recent=recent) == 0, k
        for jump in ((period, 0.0), (-period, 0.0), (0.0, period), (0.0, -period)):
            oj = _outline_jump(ref, spec, shape, tuple(t[k] + jump), None, recent=recent)
            assert oj > 0, (k, jump)


@pytest.mark.parametrize("rng", [50, 58])
def test_degrading_crystal_gone_leaves_no_gross_silent_frame(rng):
    """The degrading 45 Å crystal of the test above, other noise draws: with ``rng=50`` frame
    26 (the crystal gone, only clusters left) was reported reliable 14.4 px off, rescued by
    the group-wise registration although its running-reference and anchor registrations
    disagreed by 29 px.  Its running-reference measurement, the reference's shared drift
    taken out, must now confirm it.  (Late frames 0.25-0.33 px off, cf. the xfail above,
    remain; ``rng=58`` was not looked at before the check was written.)"""
    tr, s, truth = _degrading_45(seed=47, rng=rng)
    df, t, err, rel = _registered(s, truth)
    assert rel.sum() >= 15
    assert err[rel].max() < 1.0, (np.flatnonzero(rel & (err > 1.0)), np.round(err, 2))
    rep = np.hypot(df["dy_err_px"], df["dx_err_px"]).to_numpy()
    assert np.all(err[~rel] <= rep[~rel]), (np.round(err, 2), np.round(rep, 2))


@pytest.mark.parametrize(("seed", "rng"), [(47, 50), (47, 72), (47, 78), (49, 48)])
def test_degrading_crystal_rescued_late_frames_use_their_reference_measurement(seed, rng):
    """Late frames of the degrading 45 Å crystals (12-30 % of the Pb left) that the running
    reference could not vouch for (the chained estimate crosses an untestable step) are
    rescued by the group-wise registration; its estimate rests on a series mean of the
    crystal's earlier content and was 0.29-0.34 px off on these draws (reported reliable
    with 0.11-0.17 px), while the running-reference measurement of such frames was the
    better one (55 rescued frames of the development series: 0.19 px RMS group-wise, 0.12
    px running reference).  The two are now combined by their errors.  On the 16
    development series (seed 47 rng 48-70 even, seeds 41/45 rng 48/50) silent frames 8 ->
    2; held out (rng 72-80 even, seed 43 rng 52, seed 49 rng 48) 5 -> 1; rng 50 is a
    development draw, 72, 78 and seed 49 held-out ones (all four fail on the old code)."""
    tr, s, truth = _degrading_45(seed=seed, rng=rng)
    df, t, err, rel = _registered(s, truth)
    assert rel.sum() >= 15
    assert not (rel & (err > 0.25)).any(), (np.flatnonzero(rel & (err > 0.25)), np.round(err, 2))
    rep = np.hypot(df["dy_err_px"], df["dx_err_px"]).to_numpy()
    assert np.all(err[~rel] <= rep[~rel]), (np.round(err, 2), np.round(rep, 2))


@pytest.mark.parametrize("shape", [(64, 96), (50, 70), (63, 64)])
def test_checkerboard_half_spectrum_without_a_second_fft(shape):
    # the half spectrum of the even checkerboard pixels is read from the frame's own
    # spectrum, (F(k) + F(k + (M/2, N/2))) / 2, for even shapes (odd ones: a second FFT)
    from perovstem.insitu.register import _checker, _half_spectrum, _spectrum

    f = np.random.default_rng(0).poisson(3.0, shape).astype(np.float32)
    spec = _spectrum(f, 0.25)
    w = np.asarray(f - f.mean(), np.float32) * _window_of(shape) * _checker(shape)
    want = np.fft.rfft2(w.astype(np.float64))
    got = _half_spectrum(f, spec, 0.25, shape)
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())


def _window_of(shape):
    from perovstem.insitu.register import _window

    return _window(shape, 0.25)
