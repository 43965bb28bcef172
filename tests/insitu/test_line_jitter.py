"""Fast-scan line jitter: measured per frame (noise-corrected), said by analyze_series,
corrected per scan line when it is line-to-line jitter."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _insitu_kmc import kmc_imaged

from perovstem import ParameterError
from perovstem.insitu import analyze_series, measure_line_jitter, register_drift


def _white_jitter_frames(synth, amp, seed, n=6, counts=40.0):
    """Lattice frames with a random drift and white (line-to-line) x jitter of rms ``amp``
    px, rendered analytically per line (no interpolation)."""
    rng = np.random.default_rng(seed)
    shape = (96, 96)
    pos = synth.lattice_positions(16, 80, 7.3)
    drift = np.cumsum(rng.normal(0, 0.7, (n, 2)), 0)
    drift -= drift[0]
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    frames = []
    for k in range(n):
        j = rng.normal(0, amp, shape[0]) if amp > 0 else np.zeros(shape[0])
        g = np.zeros(shape)
        for y, x in pos + drift[k]:
            g += 20.0 * np.exp(-((yy - y) ** 2 + (xx - j[:, None] - x) ** 2) / (2 * 1.4**2))
        frames.append(rng.poisson(counts * (2.0 + g)).astype(float))
    return np.array(frames), drift


@pytest.mark.parametrize(("amp", "seed"), [(0.0, 1), (0.5, 2), (1.0, 3)])
def test_measured_line_jitter_follows_the_truth(synth, amp, seed):
    frames, drift = _white_jitter_frames(synth, amp, seed)
    df = pd.DataFrame({"dy_px": drift[:, 0], "dx_px": drift[:, 1]})
    tab = measure_line_jitter(frames, df)
    assert len(tab) == 6
    med = float(np.median(tab["line_jitter_px"]))
    # relative to the mean of the other frames, whose own jitter blurs but does not move it
    assert med == pytest.approx(amp, abs=0.1 + 0.15 * amp)
    if amp > 0:
        # line-to-line: neighbouring lines do not share their offsets
        assert np.median(tab["line_lag1_corr"]) < 0.5
    # the measurement noise is small at these counts and is not counted as jitter
    assert np.all(tab["line_noise_px"] < 0.2)


def test_smooth_distortion_correlates_between_lines(synth):
    rng = np.random.default_rng(4)
    frames, drift = _white_jitter_frames(synth, 0.0, 4)
    x = np.arange(frames.shape[2], dtype=float)
    for k in range(len(frames)):
        j = np.sin(np.arange(frames.shape[1]) / rng.uniform(10, 16) + rng.uniform(0, 6.3))
        for i in range(frames.shape[1]):
            frames[k, i] = np.interp(x - j[i], x, frames[k, i])
    df = pd.DataFrame({"dy_px": drift[:, 0], "dx_px": drift[:, 1]})
    tab = measure_line_jitter(frames, df)
    # a slow distortion (period ~80 lines over the 64 lines with structure) is largely
    # taken as a shear (the straight line removed): what stays correlates between lines
    assert np.median(tab["line_jitter_px"]) > 0.1
    assert np.median(tab["line_lag1_corr"]) > 0.8


def test_measure_line_jitter_bad_input(synth):
    frames, drift = _white_jitter_frames(synth, 0.0, 5, n=3)
    df = pd.DataFrame({"dy_px": drift[:, 0], "dx_px": drift[:, 1]})
    with pytest.raises(ParameterError, match="max_frames"):
        measure_line_jitter(frames, df, max_frames=2)
    with pytest.raises(ParameterError, match="max_shift_px"):
        measure_line_jitter(frames, df, max_shift_px=0)
    assert measure_line_jitter(frames[:2], df.iloc[:2]).empty  # < 3 frames: nothing measured


def test_analyze_series_says_line_jitter_and_corrects_it_per_line():
    # KMC 4 nm cube, 8 frames at 3·10³ e⁻/Å²/s, white fast-scan jitter of 1 px rms per
    # line: the Pb⁰ totals read 1.4-5.8x the truth (median 1.9; 0.7-1.5x without
    # jitter) and nothing said so.  The jitter is now measured and said; the scan
    # correction runs per line (the default bands of 8 smoothed lines removed nothing) and
    # brings the totals closer.  Held-out seeds (tuned on 1-2).  The correction is partial
    # and one seed's 7 frames are a small sample whose KMC realisation depends on the CPU
    # (median |log ratio| of frames 1-7, plain -> corrected: seed 3 0.61 -> 0.26 on one
    # AVX-512 machine, 0.67 -> 0.43 with AVX2 kernels, 0.38 -> 0.33 on an AMD Zen 5; seed
    # 4 0.66 -> 0.50, 0.52 -> 0.17 on the Zen 5; seed 6 there 0.28 -> 0.30), so the test
    # pools the frames of seeds 3-5 (Zen 5: 0.55 -> 0.27) and asks for a median
    # improvement by at least a fifth; the jitter read (1 px true) is pooled the same way.
    err_plain, err_fixed, jitter_px = [], [], []
    for seed in (3, 4, 5):
        _, s, truth = kmc_imaged(
            40.0,
            rate=3e3,
            seed=seed,
            n_frames=8,
            pixel_size_A=0.5,
            drift_A_per_s=(0.8, -0.5),
            jitter_A=0.3,
            scan_noise_px=1.0,
            rng=seed,
        )
        tcl = truth["clusters"]
        true_pb0 = tcl[tcl.in_view].groupby("frame")["n_atoms"].sum().reindex(range(8)).to_numpy()
        plain = analyze_series(s, summary=False, phase_check=False)
        assert any("line jitter" in n and "unreliable" in n for n in plain.notes), plain.notes
        jitter_px.extend(plain.frames["line_jitter_px"])
        fixed = analyze_series(s, summary=False, phase_check=False, scan_correction=True)
        assert any("per scan line" in n for n in fixed.notes)
        for res, out in ((plain, err_plain), (fixed, err_fixed)):
            out.extend(np.abs(np.log(res.frames["n_Pb0_detected"].to_numpy()[1:] / true_pb0[1:])))
    # the measured jitter, pooled (per seed on the Zen 5: 0.91 / 1.19 / 1.00 px, seed 4
    # with AVX2 kernels 1.30 px: the crystal's own line-to-line content adds to it)
    assert np.nanmedian(jitter_px) == pytest.approx(1.0, abs=0.25)
    assert np.median(err_fixed) < 0.8 * np.median(err_plain), (
        np.median(err_fixed),
        np.median(err_plain),
    )


def test_no_line_jitter_note_without_jitter():
    seed = 3
    _, s, _ = kmc_imaged(
        40.0,
        rate=3e3,
        seed=seed,
        n_frames=6,
        pixel_size_A=0.5,
        drift_A_per_s=(0.8, -0.5),
        jitter_A=0.3,
        rng=seed,
    )
    res = analyze_series(s, summary=False, phase_check=False)
    assert not any("line jitter" in n for n in res.notes)
    assert np.nanmax(res.frames["line_jitter_px"]) < 0.1
    df = register_drift(s)
    assert measure_line_jitter(s, df)["line_jitter_px"].max() < 0.1


def _simulated(seed, *, shape="cube", edge_A=60.0, pixel_size_A=0.5, rate=5e3, scan_px=0.0):
    """A jitter-free (or white-jittered) simulated series of 8 frames; one generator for the
    crystal, the KMC and the imaging, as `perovstem simulate series --seed`."""
    from perovstem.simulate import degradation_kmc, insitu_series, nanocrystal

    rng = np.random.default_rng(seed)
    atoms = nanocrystal(edge_A, shape=shape, rng=rng)
    traj = degradation_kmc(atoms, n_frames=8, frame_time_s=1.0, dose_rate_e_per_A2_s=rate, rng=rng)
    s, _ = insitu_series(traj, pixel_size_A=pixel_size_A, scan_noise_px=scan_px, rng=rng)
    return s


@pytest.mark.parametrize(
    ("seed", "kind"),
    [(3, "px2"), (4, "dose3e4"), (5, "dose3e4"), (6, "dose3e4"), (3, "platelet")],
)
def test_content_changes_are_not_read_as_line_jitter(seed, kind):
    # Jitter-free series whose frames differ from the mean of the others by their content:
    # a 10 nm cube at 2 Å/px (aliased lattice), a 4 nm cube losing its lattice at 3·10⁴
    # e⁻/Å² per frame, a degrading platelet.  The full-line offsets less the even/odd shot
    # noise read 0.74 px (median; 2 Å/px, seed 3), 0.55-0.57 px (3·10⁴, seeds 4-6), up to
    # 0.63 px on single platelet frames, and said "line jitter ... unreliable".  What the
    # two parts of the lines share reads 0.00-0.28 px (median) on these and on seeds 11-14
    # (the note is said above 0.4 px).
    kw = {
        "px2": {"edge_A": 100.0, "pixel_size_A": 2.0},
        "dose3e4": {"edge_A": 40.0, "rate": 3e4},
        "platelet": {"shape": "platelet"},
    }[kind]
    s = _simulated(seed, **kw)
    tab = measure_line_jitter(s, register_drift(s))
    jit = tab["line_jitter_px"].to_numpy(float)
    assert np.isfinite(jit).sum() >= 3
    assert np.nanmedian(jit) < 0.35
    if kind == "platelet":
        assert np.nanmax(jit) < 0.3
    res = analyze_series(s, summary=False, phase_check=False)
    assert not any("line jitter" in n and "unreliable" in n for n in res.notes), res.notes


@pytest.mark.parametrize("seed", [3, 4])
def test_line_jitter_measured_at_1A_pixels(seed):
    # 1 Å/px with 0.5 px of white jitter: the even/odd-column halves sample at 2 Å/px and
    # alias, so the earlier noise estimate took everything (read 0.00 px on seeds 3-6);
    # the two parts of the lines read 0.46-0.49 (seeds 3-6) and 0.45-0.54 (11-14)
    s = _simulated(seed, pixel_size_A=1.0, scan_px=0.5)
    tab = measure_line_jitter(s, register_drift(s))
    assert np.nanmedian(tab["line_jitter_px"]) == pytest.approx(0.5, abs=0.1)
    # and without jitter, nothing
    s0 = _simulated(seed, pixel_size_A=1.0)
    assert np.nanmedian(measure_line_jitter(s0, register_drift(s0))["line_jitter_px"]) < 0.05


def test_unmeasurable_line_jitter_is_said():
    # 2 Å/px with 0.5 px of jitter: the line offsets lock on the aliased lattice (parts
    # scatter 1.1-2.2 px beyond what they share) and the jitter cannot be read.  The earlier
    # estimate did not follow it either: 1.2-1.7 px for 0.5 px of jitter, 0.9-1.5 px for
    # 1 px (seeds 3-6 and 11-14).  Now the frames are not measured, and that is said.
    s = _simulated(3, edge_A=100.0, pixel_size_A=2.0, scan_px=0.5)
    tab = measure_line_jitter(s, register_drift(s))
    assert (tab["line_part_scatter_px"] > 1.0).sum() > len(tab) / 2
    assert np.isnan(tab.loc[tab["line_part_scatter_px"] > 1.0, "line_jitter_px"]).all()
    res = analyze_series(s, summary=False, phase_check=False)
    assert any("could not be measured" in n for n in res.notes), res.notes
    assert not any("line jitter" in n and "unreliable" in n for n in res.notes)
