"""Detector noise model (gain, offset, read noise) measured from the shot noise."""

from __future__ import annotations

import itertools
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from perovstem import Image
from perovstem.atoms import estimate_noise_model, find_peaks, normalize_image
from perovstem.errors import DataError, ParameterError

from ._synth import render


def _columns_image(seed, *, gain, offset, read, amp=60.0, n=160, dx=0.25, support=None):
    """3×3 columns (amplitude ``amp`` electrons/px) in a vacuum, optionally a flat bright
    support of ``support`` electrons/px on the right third; counts = gain·Poisson + offset
    + N(0, read²)."""
    rng = np.random.default_rng(seed)
    c = np.array([(12.0 + 5.87 * i, 12.0 + 5.87 * j) for i in range(3) for j in range(3)])
    lam = render((n, n), c[:, 0] / dx, c[:, 1] / dx, np.full(len(c), amp), np.full(len(c), 2.0))
    if support is not None:
        lam[:, 115:] += support
    img = gain * rng.poisson(lam) + offset + rng.normal(0.0, read, lam.shape)
    return img, c, dx


@pytest.fixture(scope="module")
def crystal():
    """A 34 Å cube at 0.15 Å/px: the probe spans several pixels, so the pixel-scale details
    are shot noise (at 0.3 Å/px the columns leak into them: see
    test_structure_in_the_details_is_not_taken_for_shot_noise)."""
    import perovstem.simulate as sim

    atoms = sim.nanocrystal(34.0, rng=3)
    img, _ = sim.haadf_image(
        atoms, pixel_size_A=0.15, dose_e_per_A2=1e4, gain=5.0, offset=300.0, read_noise=2.0, rng=7
    )
    return atoms, img


def test_gain_offset_read_noise_of_a_simulated_crystal(crystal):
    """Gain 5, offset 300, read noise 2 at 10⁴ e⁻/Å² (simulator's columns, PSF tails); the
    gain at 2× coarser sampling agrees."""
    _, img = crystal
    nm = estimate_noise_model(img)
    assert nm.identified, nm.reasons
    assert nm.gain == pytest.approx(5.0, rel=0.1)
    assert abs(nm.gain - 5.0) < 3.0 * nm.gain_err + 0.1
    lo, hi = nm.offset_range
    assert lo - 2.0 < 300.0 < hi + 0.5
    assert nm.offset == pytest.approx(300.0, abs=1.0)
    assert nm.read_noise == pytest.approx(2.0, abs=0.6)
    # the photon-transfer curve: the variance of the brightest bin is far above the vacuum's
    assert nm.variances[np.argmax(nm.levels)] > 10 * nm.variances[np.argmin(nm.levels)]
    assert nm.spectral_ratio[0] == pytest.approx(1.0, abs=0.35)
    assert nm.gain_coarse[0] == pytest.approx(5.0, rel=0.15)


def test_frame_differences_give_the_gain_of_a_series(crystal):
    import perovstem.simulate as sim

    atoms, _ = crystal
    frames = np.stack(
        [
            sim.haadf_image(
                atoms,
                pixel_size_A=0.3,
                dose_e_per_A2=1e4,
                gain=5.0,
                offset=300.0,
                read_noise=2.0,
                rng=20 + k,
            )[0].data
            for k in range(3)
        ]
    )
    nm = estimate_noise_model(frames)
    assert nm.method == "frame-difference" and nm.identified
    assert nm.gain == pytest.approx(5.0, rel=0.05)
    assert nm.read_noise == pytest.approx(2.0, abs=0.5)


def test_known_offset_resolves_the_degeneracy(crystal):
    _, img = crystal
    nm = estimate_noise_model(img, offset=300.0)
    assert nm.offset == 300.0 and nm.offset_source == "given"
    assert nm.read_noise == pytest.approx(2.0, abs=0.6)


@pytest.mark.parametrize(("gain", "offset", "read"), [(2.0, 50.0, 0.0), (8.0, 1000.0, 5.0)])
def test_gain_on_columns_over_a_smooth_thickness_profile(gain, offset, read):
    """Columns on a broad, smoothly varying background (0–300 e⁻/px) — not the simulator."""
    rng = np.random.default_rng(5)
    n = 200
    yy, xx = np.mgrid[0:n, 0:n]
    lam = 300.0 * np.exp(-((xx - 100.0) ** 2 + (yy - 100.0) ** 2) / (2 * 45.0**2))
    g = np.arange(10.0, n - 5, 20.0)
    gx, gy = np.meshgrid(g, g)
    lam += render((n, n), gx.ravel(), gy.ravel(), np.full(gx.size, 80.0), np.full(gx.size, 2.0))
    img = gain * rng.poisson(lam) + offset + rng.normal(0.0, read, lam.shape)
    nm = estimate_noise_model(img)
    assert nm.identified, nm.reasons
    assert nm.gain == pytest.approx(gain, rel=0.1)


def test_refuses_what_cannot_identify_a_gain(crystal):
    import perovstem.simulate as sim

    atoms, img = crystal
    # noise-free data: no shot noise
    clean, _ = sim.haadf_image(
        atoms, pixel_size_A=0.3, dose_e_per_A2=1e4, gain=5.0, offset=300.0, noise=False
    )
    nm = estimate_noise_model(clean)
    assert not nm.identified and any("does not rise" in r for r in nm.reasons)
    # already normalised
    nm = estimate_noise_model(normalize_image(img))
    assert not nm.identified and "normalised" in nm.reasons[0]
    # ... also as a bare array (no metadata): continuous values of a fraction of the beam
    nm = estimate_noise_model(normalize_image(img).data)
    assert not nm.identified and any("look normalised" in r for r in nm.reasons)
    # sub-pixel interpolation (cubic) correlates neighbouring pixels and biases the gain low
    shifted = ndimage.shift(img.data, (0.3, 0.5), order=3, mode="nearest")
    nm = estimate_noise_model(shifted)
    assert nm.gain < 0.6 * 5.0  # the bias the check is there for
    assert not nm.identified and any("correlated" in r for r in nm.reasons)


def test_small_field_says_it_is_too_small_and_what_size_is_needed(crystal):
    """A crop too small for a shot-noise gain: old code said 'no shot noise is measurable
    (noise-free, denoised ...)' or 'too narrow a range of levels' without the field size.

    A 20×20 crop (100 blocks) either fails the fit (too few bins: a DataError) or gives a
    slope of a few σ, depending on the realisation (DataError on 109 of 160 crops: noise
    seeds 0-39 × 4 positions); with a slope under 2σ the old message blamed the data ('no
    shot noise is measurable', 10 of the 160, e.g. seed 5).  Every outcome must name the
    field and say it is too small."""
    _, img = crystal
    d = img.data
    r0, c0 = d.shape[0] // 2 - 24, d.shape[1] // 2 - 24
    nm = estimate_noise_model(d[r0 : r0 + 48, c0 : c0 + 48])
    assert not nm.identified
    (reason,) = nm.reasons
    m = re.search(r"too small .*48×48-pixel field.*≈ (\d+)×\1 px", reason)
    assert m, reason
    side = int(m.group(1))
    assert 48 < side <= min(d.shape)
    # the size it names is the right scale on the same image (a rough estimate: a crystal
    # interior spans few levels, so the error falls slower than 1/√pixels)
    big = min(2 * side, min(d.shape))
    r0, c0 = (d.shape[0] - big) // 2, (d.shape[1] - big) // 2
    assert estimate_noise_model(d[r0 : r0 + big, c0 : c0 + big]).identified
    import perovstem.simulate as sim

    atoms = crystal[0]
    for seed, big in itertools.product(range(8), (100, 108, 116)):
        d = sim.haadf_image(
            atoms, pixel_size_A=0.15, dose_e_per_A2=1e4, gain=5.0, offset=300.0,
            read_noise=2.0, rng=seed,
        )[0].data  # fmt: skip
        r0, c0 = (d.shape[0] - big) // 2, (d.shape[1] - big) // 2
        try:
            nm = estimate_noise_model(d[r0 : r0 + 20, c0 : c0 + 20])
        except DataError as exc:
            text = str(exc)
            assert re.search(r"20×20-pixel field.*too small.*64×64 px", text), text
        else:
            assert not nm.identified
            text = " ".join(nm.reasons)
        assert "20×20-pixel field" in text and "too small" in text, (seed, text)
        sides = [int(x) for x in re.findall(r"(\d+)×\1 px", text)]
        assert sides and all(48 < x <= min(d.shape) for x in sides), (seed, text)


def test_noise_free_multislice_means_are_refused():
    """Frozen-phonon mean images (fraction of the beam, no shot noise; abTEM multislice)."""
    z = np.load(Path(__file__).parents[1] / "data" / "multislice_pb_clusters.npz")
    names = [k for k in z.files if k.endswith("__mean")]
    assert names
    for name in names:
        try:
            nm = estimate_noise_model(z[name].astype(float))
        except DataError:
            continue
        assert not nm.identified, name


def test_correlated_white_noise_is_flagged():
    """Pure read noise + a shot-noise ramp, with a 3-tap detector response along x."""
    rng = np.random.default_rng(4)
    lam = np.tile(np.linspace(1.0, 400.0, 200), (200, 1))
    img = 3.0 * rng.poisson(lam) + 100.0 + rng.normal(0, 2.0, lam.shape)
    ok = estimate_noise_model(img)
    assert ok.identified and ok.gain == pytest.approx(3.0, rel=0.05)
    assert ok.spectral_ratio[0] == pytest.approx(1.0, abs=0.2)
    lagged = ndimage.correlate1d(img, [0.3, 0.7, 0.0], axis=1, mode="nearest")
    bad = estimate_noise_model(lagged)
    assert not bad.identified and any("correlated" in r for r in bad.reasons)


def test_bad_input():
    img = np.random.default_rng(0).poisson(5.0, (64, 64)).astype(float)
    with pytest.raises(ParameterError, match="n_bins"):
        estimate_noise_model(img, n_bins=2)
    with pytest.raises(ParameterError, match="max_correlation"):
        estimate_noise_model(img, max_correlation=1.5)
    with pytest.raises(ParameterError, match="image"):
        estimate_noise_model(np.zeros((8, 8)))
    with pytest.raises(ParameterError, match="mask"):
        estimate_noise_model(img, mask=np.ones((3, 3), bool))
    with pytest.raises(ParameterError, match="offset"):
        estimate_noise_model(img, offset=float("nan"))
    with pytest.raises(DataError):
        estimate_noise_model(np.full((64, 64), 7.0))  # one level: no curve


def test_normalize_image_auto_gain(crystal):
    _, img = crystal
    raw = Image(img.data, img.pixel_size_A, dose_e_per_A2=img.dose_e_per_A2)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        normalize_image(raw)
    msg = str(rec[0].message)
    assert "measured from the image's shot noise: gain 4." in msg or "gain 5." in msg
    auto = normalize_image(raw, gain="auto")
    norm = auto.metadata["normalization"]
    assert norm["gain"] == pytest.approx(5.0, rel=0.1)
    assert norm["offset"] == pytest.approx(300.0, abs=1.0)
    assert norm["noise_model"]["identified"]
    truth = normalize_image(img)  # gain/offset from the simulator's metadata
    assert auto.data.sum() == pytest.approx(truth.data.sum(), rel=0.1)
    with pytest.raises(ParameterError, match="gain"):
        normalize_image(raw, gain="estimate")
    flat = Image(np.full((64, 64), 7.0), 0.3, dose_e_per_A2=1e3)
    with pytest.raises(DataError, match="gain='auto'"):
        normalize_image(flat, gain="auto")


def _pr(pk, c):
    xy = pk[["x_A", "y_A"]].to_numpy()
    if len(xy) == 0:
        return 0.0, 0
    d, _ = cKDTree(xy).query(c)
    d2, _ = cKDTree(c).query(xy)
    return float(np.mean(d < 1.0)), int(np.sum(d2 >= 1.0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_find_peaks_no_false_peaks_on_a_bright_support(seed):
    """A bright flat support (40 e⁻/px, gain 4, read noise 2) beside columns in vacuum: the
    vacuum-measured σ and the global background made 5–10 false peaks on the support."""
    img, c, dx = _columns_image(seed, gain=4.0, offset=200.0, read=2.0, amp=30.0, support=40.0)
    pk = find_peaks(Image(img, dx), separation_A=0.6 * 5.87, noise_model="auto")
    rec, false = _pr(pk, c)
    assert rec == 1.0 and false == 0, (rec, false)
    assert pk.attrs["noise_model"]["gain"] == pytest.approx(4.0, rel=0.15)


@pytest.mark.parametrize(("gain", "offset", "read"), [(1.0, 0.0, 0.0), (5.0, 300.0, 2.0)])
def test_find_peaks_no_peaks_in_structureless_noise(gain, offset, read):
    """A flat field (0.05–30 counts/px): no structure, so no peaks (the global-percentile
    background gave 2–18 per 150² px)."""
    rng = np.random.default_rng(3)
    for lam in (0.05, 3.0, 30.0):
        img = gain * rng.poisson(lam, (150, 150)) + offset + rng.normal(0, read, (150, 150))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a flat field cannot identify the gain
            pk = find_peaks(Image(img, 0.25), separation_A=3.5, noise_model="auto")
        assert len(pk) <= 1, (lam, len(pk))


def test_find_peaks_noise_model_keeps_the_columns_of_a_crystal(crystal):
    _, img = crystal
    cols = find_peaks(img, separation_A=0.6 * 5.87)
    new = find_peaks(img, separation_A=0.6 * 5.87, noise_model="auto")
    d, _ = cKDTree(new[["x_A", "y_A"]].to_numpy()).query(cols[["x_A", "y_A"]].to_numpy())
    assert np.mean(d < 0.5) > 0.97
    with pytest.raises(ParameterError, match="noise_model"):
        find_peaks(img, separation_A=3.5, noise_model="yes")


def _series_file(path, *, gain, offset, seed=0):
    """4 frames 96² px: a blob with a 12 px lattice in a near-empty vacuum (0.02 e⁻/px),
    Poisson counts × gain + offset."""
    from perovstem._data import Series
    from perovstem.io import save_image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:96, :96]
    lam = 150.0 * np.exp(-((x - 48.0) ** 2 + (y - 48.0) ** 2) / (2 * 18.0**2))
    lam = 0.02 + lam * (
        1 + 0.5 * (np.cos(2 * np.pi * x / 12.0) * np.cos(2 * np.pi * y / 12.0)) ** 2
    )
    data = gain * rng.poisson(np.broadcast_to(lam, (4, 96, 96))).astype(float) + offset
    s = Series(data, 0.5, time_s=np.arange(4.0), dose_e_per_A2=np.full(4, 500.0))
    save_image(s, path)
    return path


def test_insitu_cli_gain_auto(tmp_path):
    """--gain auto measures the gain of the raw frames: the detected electrons agree with
    the run given the true gain and offset; the note says what was measured."""
    import json

    import pandas as pd

    from perovstem.cli.main import main

    raw = _series_file(tmp_path / "raw.npz", gain=5.0, offset=100.0)
    base = ["--no-register", "--no-plots", "--ci", "wald"]
    assert (
        main(
            [
                "insitu",
                str(raw),
                "--out",
                str(tmp_path / "a"),
                *base,
                "--gain",
                "5",
                "--offset",
                "100",
            ]
        )
        == 0
    )
    assert main(["insitu", str(raw), "--out", str(tmp_path / "b"), *base, "--gain", "auto"]) == 0
    a = pd.read_parquet(tmp_path / "a" / "frames.parquet")
    b = pd.read_parquet(tmp_path / "b" / "frames.parquet")
    np.testing.assert_allclose(b["integrated_counts"], a["integrated_counts"], rtol=0.1)
    notes = json.loads((tmp_path / "b" / "summary.json").read_text())["notes"]
    assert any("--gain auto" in n and "gain 5." in n or "gain 4." in n for n in notes), notes
    assert main(["insitu", str(raw), "--out", str(tmp_path / "c"), *base, "--gain", "x"]) == 2
    # without a gain the note quotes the estimate
    assert main(["insitu", str(raw), "--out", str(tmp_path / "d"), *base]) == 0
    notes = json.loads((tmp_path / "d" / "summary.json").read_text())["notes"]
    assert any("no detector gain" in n and "measured from the frames" in n for n in notes)


def test_detect_clusters_gain_auto():
    from perovstem.insitu import detect_clusters

    rng = np.random.default_rng(2)
    y, x = np.mgrid[:192, :192]
    lam = 20.0 + 60.0 * np.exp(-((x - 96.0) ** 2 + (y - 96.0) ** 2) / (2 * 45.0**2))
    img = Image(3.0 * rng.poisson(lam) + 40.0, 0.5, dose_e_per_A2=500.0)
    with pytest.raises(ParameterError, match="gain"):
        detect_clusters(img, gain="maybe")
    with pytest.raises(DataError, match="gain='auto'"):
        detect_clusters(Image(np.full((64, 64), 5.0), 0.5), gain="auto")
    detect_clusters(img, gain="auto")  # runs with the measured gain


def test_unknown_gain_warning_measures_each_image_once(monkeypatch):
    """The unknown-gain warning quotes the gain measured from the shot noise; it was measured
    again on every normalize_image / fit_columns call on the same counts (~0.05 s each,
    most of normalize_image's time).  Now once per image array; a new array is measured."""
    import perovstem.atoms.noise as noise

    calls = []
    real = noise.estimate_noise_model

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(noise, "estimate_noise_model", counting)
    rng = np.random.default_rng(3)
    data = 3.0 * rng.poisson(40.0 + 20 * np.sin(np.arange(128) / 4)[None], (128, 128)) + 50
    im = Image(data, 0.3, dose_e_per_A2=1e4)
    texts = []
    for _ in range(3):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            normalize_image(im)
        texts.append(str(w[0].message))
    assert len(calls) == 1 and texts[0] == texts[1] == texts[2]
    assert "measured from the image's shot noise: gain" in texts[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        normalize_image(im.replace(data=data + 1.0))
    assert len(calls) == 2


@pytest.mark.parametrize(
    "seed",
    [
        pytest.param(
            0,
            marks=pytest.mark.xfail(
                strict=True,
                reason="known limitation: on this noise realisation the leak is as large "
                "at 2× coarser sampling (11.05 ± 1.77) as at full sampling (10.73 ± 1.30, "
                "8.3σ) and the curvature is not significant, so gain 10.7 (true 5) is "
                "identified; 1 of 30 realisations (nanocrystal seeds 0-9 × noise seeds "
                "+10/+20/+30; 0 of 30 with the old noise), another 1 of 30 (2 of 30 old) "
                "refused only as too small a field",
            ),
        ),
        1,
        2,
    ],
)
def test_structure_in_the_details_is_not_taken_for_shot_noise(seed):
    """0.5 Å/px at 10⁴ e⁻/Å²: the columns (probe σ ≈ 1 px) leak into the 2×2 details, so the
    variance grows faster with the level than shot noise does; old code reported gains of
    9.3, 13.1 and 11.1 (true 5) as identified.  Now refused, saying why and what to do."""
    import perovstem.simulate as sim

    atoms = sim.nanocrystal(30.0, rng=seed)
    img, _ = sim.haadf_image(
        atoms,
        pixel_size_A=0.5,
        dose_e_per_A2=1e4,
        gain=5.0,
        offset=100.0,
        read_noise=2.0,
        rng=seed + 10,
    )
    nm = estimate_noise_model(img)
    assert not nm.identified
    assert nm.gain_coarse[0] > 1.5 * 5.0  # the leak grows at the coarser sampling
    text = " ".join(nm.reasons)
    assert "structure" in text and "pass the measured gain" in text and "frames" in text
    raw = Image(img.data, img.pixel_size_A, dose_e_per_A2=img.dose_e_per_A2)
    with pytest.raises(DataError, match="gain='auto'.*structure"):
        normalize_image(raw, gain="auto")


def test_variance_growing_as_the_level_squared_is_not_shot_noise():
    """A ramp with a white 10 % texture (variance ∝ level², white at every sampling, so only
    the curvature of the photon-transfer curve shows it): old code took the slope for the
    gain (≈ 16 for a true 3) and called it identified."""
    rng = np.random.default_rng(6)
    ramp = np.tile(np.linspace(5.0, 2000.0, 256), (256, 1))
    lam = np.clip(ramp * (1.0 + 0.1 * rng.standard_normal(ramp.shape)), 0.0, None)
    nm = estimate_noise_model(3.0 * rng.poisson(lam) + 50.0)
    assert not nm.identified
    assert any("faster than linearly" in r for r in nm.reasons), nm.reasons
    # without the texture the same ramp is shot noise
    ok = estimate_noise_model(3.0 * rng.poisson(ramp) + 50.0)
    assert ok.identified and ok.gain == pytest.approx(3.0, rel=0.1)


def _kmc_series(seed, rate, **kw):
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "insitu"))
    from _insitu_kmc import kmc_imaged

    _, s, _ = kmc_imaged(
        34.0, rate=rate, seed=seed, n_frames=6, pixel_size_A=0.5, gain=5.0, offset=100.0,
        read_noise=2.0, rng=seed + 7, **kw,
    )  # fmt: skip
    return s


@pytest.mark.parametrize("seed", [0, 2])
def test_series_gain_from_aligned_frame_differences(seed):
    """A drifting KMC series (0.5 Å/px, 10³ e⁻/Å² per frame, gain 5, drift 0.8 Å/s, jitter
    0.3 Å): old code pooled single frames, whose details hold the columns (5.71, 5.98);
    differences of consecutive frames aligned by phase correlation cancel them (5.17, 5.33;
    tune seed 1: 5.57).  The realisation depends on the CPU's numeric kernels: on seeds 0-5
    with AVX-512 5.53, 5.43, 5.41, 5.30, 5.23, 5.28 and with AVX2 kernels 5.27, 5.11, 5.48,
    5.35, 5.15, 5.39 — a bias of +6 ± 3 % (largest +10.6 %), so the bound is 12 %, still
    below the old pooled estimate's +14…+20 %."""
    from perovstem.atoms.noise import measure_series_detector

    s = _kmc_series(seed, 1e3, drift_A_per_s=(0.8, -0.5), jitter_A=0.3)
    nm = measure_series_detector(s, "test")
    assert nm.method == "frame-difference, aligned pairs"
    assert nm.gain == pytest.approx(5.0, rel=0.12)


@pytest.mark.parametrize(
    ("nc_seed", "px", "dose", "gain", "offset", "base"),
    [
        (1, 0.3, 2e4, 2.5, 40.0, 50),
        (1, 0.3, 2e4, 2.5, 40.0, 60),
        (1, 0.3, 2e4, 2.5, 40.0, 70),
        (0, 0.15, 1e3, 5.0, 100.0, 100),
        (1, 0.5, 1e3, 5.0, 100.0, 103),
    ],
)
def test_aligned_gain_with_a_noise_free_vacuum(nc_seed, px, dose, gain, offset, base):
    """Three frames of an unchanging 30 Å cube without read noise: the vacuum is exactly the
    offset, and the sub-pixel phase ramp of the alignment leaves it a variance of ~1e-8 with
    an error of ~1e-8 next to crystal bins of error ~1.  Old code solved the
    photon-transfer line through a pseudo-inverse of the normal equations, whose weights
    span 10¹⁶, dropped the slope as rank-deficient and returned gain 3e-10 ± 2e-10 (frames
    50-52 at 0.3 Å/px; 60-62…110-112 gave 2.43-2.60), 2e-7 (0.15 Å/px) and 6e-10 (0.5 Å/px):
    17 of 24 such series (0.15-0.5 Å/px, 10²-10⁵ e⁻/Å²) collapsed."""
    import perovstem.simulate as sim

    nc = sim.nanocrystal(30.0, rng=nc_seed)
    frames = [
        sim.haadf_image(
            nc, pixel_size_A=px, dose_e_per_A2=dose, gain=gain, offset=offset, rng=base + k
        )[0].data
        for k in range(3)
    ]
    nm = estimate_noise_model(np.array(frames), frames="aligned")
    assert nm.identified, nm.reasons
    assert nm.gain == pytest.approx(gain, rel=0.1)


def test_photon_transfer_line_through_bins_of_very_different_precision():
    """The line's slope survives a bin 10⁸× more precise than the others (a noise-free
    vacuum); old code (pseudo-inverse of the normal equations) returned slope ~1e-9."""
    from perovstem.atoms.noise import _wls_line

    x = np.array([40.0, 40.0, 45.0, 50.0, 60.0, 80.0, 120.0])
    e = np.array([1e-8, 1e-8, 0.5, 1.0, 2.0, 4.0, 8.0])
    y = 2.5 * (x - 40.0) + np.array([0.0, 0.0, 0.3, -0.5, 1.0, -2.0, 3.0]) * e / e.max()
    p, cov, _ = _wls_line(x, y, e)
    assert p[0] == pytest.approx(2.5, rel=0.01)
    assert p[0] * 40.0 + p[1] == pytest.approx(0.0, abs=1e-6)  # through the precise bins
    assert 0 < cov[0, 0] < 0.1


def test_frames_that_changed_are_not_taken_for_shot_noise():
    """At 10⁴ e⁻/Å² per frame the KMC crystal loses ~15 % of its atoms per frame: the frame
    differences hold that change, not only shot noise; old code reported gain 65–80 (true
    5) as identified from them.  The series path says why neither method works."""
    from perovstem.atoms.noise import measure_series_detector

    s = _kmc_series(0, 1e4, drift_A_per_s=(0.0, 0.0), jitter_A=0.0)
    nm = estimate_noise_model(np.asarray(s.data, float))
    assert not nm.identified
    assert any("frames differ by more than shot noise" in r for r in nm.reasons), nm.reasons
    with pytest.raises(DataError, match=r"test: .*frame differences: .*single frames: .*"):
        measure_series_detector(s, "test")


def test_noise_model_of_text_is_a_data_error():
    # numpy's "could not convert string to float" ValueError named no parameter
    with pytest.raises(DataError, match="`image` must be numeric"):
        estimate_noise_model(np.full((32, 32), "7"))
