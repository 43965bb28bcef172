from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _insitu_kmc import degrading_frames, kmc_imaged
from _reference_kernels import reference_opening

from perovstem import CalibrationError, DataError, ParameterError
from perovstem._data import Image
from perovstem.insitu import (
    CLUSTER_COLUMNS,
    atoms_from_scs,
    cluster_scs_library,
    detect_clusters,
    estimate_lattice,
    match_objects,
    projected_objects,
    score_detections,
)

PB_A = 4.95


def _radius(n):
    return (3 * np.asarray(n, float) * PB_A**3 / (16 * np.pi)) ** (1 / 3)


def _truth_clusters(truth: pd.DataFrame) -> pd.DataFrame:
    """Projected truth objects of per-atom truth (``n_Pb0`` column)."""
    return projected_objects(truth, count_column="n_Pb0")


_match = match_objects


def _score_frame(det, truth, field_A):
    """(tp, fp, fn, [(rel. count error, inside)]) for >= 10-atom truth objects.

    A detection on a smaller truth object is neither a hit nor a false positive, nor is a
    second detection inside an object made of several overlapping clusters (it resolved
    them); such an object's count is the sum of its detections.  "inside": the object's
    disc + 3 Å lies in the field of view (a cluster cut by the frame edge cannot be
    counted)."""
    sc = score_detections(det, _truth_clusters(truth))
    big = sc["objects"]
    out = []
    for (i, _), n_det in zip(sc["pairs"], sc["n_atoms"], strict=True):
        x, y, n = big.loc[i, ["x_A", "y_A", "n_atoms"]]
        inside = min(x, y, field_A - x, field_A - y) - _radius(n) > 3.0
        out.append((n_det / n - 1, inside))
    return sc["tp"], sc["fp"], sc["fn"], out


def test_cluster_library_monotone_and_inverse():
    lib = cluster_scs_library(300)
    s = lib["scs_A2"].to_numpy()
    assert s[0] == 0 and np.all(np.diff(s) >= 0)
    # per-atom SCS between the single-atom value and the channelling-enhanced column value
    per_atom = s[100] / 100
    assert 0.009 < per_atom < 0.02
    n = np.array([10, 57, 250])
    np.testing.assert_allclose(atoms_from_scs(lib["scs_A2"].to_numpy()[n], lib), n, atol=1)
    # a scalar SCS gives a scalar count (inside and beyond the library)
    assert float(atoms_from_scs(lib["scs_A2"].iloc[57], lib)) == pytest.approx(57, abs=1)
    assert float(atoms_from_scs(2 * lib["scs_A2"].iloc[-1], lib)) > 300
    with pytest.raises(ParameterError, match="max_atoms"):
        cluster_scs_library(0)


def test_lattice_estimate_on_simulated_crystal():
    from perovstem.simulate import nanocrystal
    from perovstem.simulate.haadf import haadf_image

    img, _ = haadf_image(
        nanocrystal(edge_A=40.0, rng=0), pixel_size_A=0.4, dose_e_per_A2=2e4, rng=0
    )
    a, ang, strength = estimate_lattice(img.data, 0.4)
    assert a == pytest.approx(5.87, rel=0.01)
    assert min(ang, 90 - ang) < 1.0
    assert strength > 20


@pytest.mark.parametrize(
    "px, seeds, rotate",
    [(0.4, range(200, 216), False), (0.5, range(400, 424), False), (0.4, range(600, 624), True)],
)
def test_clusters_detected_and_counted_on_simulated_frames(px, seeds, rotate):
    """Simulator frames (fast HAADF model, abTEM-calibrated SCS, Moffat PSF tail, Poisson
    noise): clusters of 10-150 atoms at corners, edges and faces of a 4 nm crystal (in
    projection beside, touching or on top of it), doses 5e3-1e5 e/Å², many seeds; the
    third set rotates the crystal in the image plane by 3, 17, 30 or 45°, with detector
    gain 2 and offset 50 counts."""
    from perovstem.simulate import add_pb_cluster, nanocrystal
    from perovstem.simulate.haadf import haadf_image

    tp = fp = fn = 0
    res = []
    shape = (192, 192) if px == 0.4 else (160, 160)
    for seed in seeds:
        rng = np.random.default_rng(seed)
        at = nanocrystal(edge_A=40.0, rng=seed)
        for n in rng.choice([10, 15, 25, 40, 80, 150], 4, replace=False):
            site = str(rng.choice(["corner", "edge", "face"]))
            at = add_pb_cluster(at, int(n), site=site, rng=rng)
        det_kw = {}
        if rotate:
            at.rotate([3.0, 17.0, 30.0, 45.0][seed % 4], "z", center="COM")
            det_kw = {"gain": 2.0, "offset": 50.0}
        dose = float(rng.choice([5e3, 2e4, 1e5]))
        img, truth = haadf_image(
            at,
            pixel_size_A=px,
            shape=shape,
            center_A=(0, 0),
            dose_e_per_A2=dose,
            rng=seed,
            **det_kw,
        )
        det = detect_clusters(img, frame=seed)
        assert (det["frame"] == seed).all()
        a, b, c, r = _score_frame(det, truth, (shape[0] - 1) * px)
        tp, fp, fn = tp + a, fp + b, fn + c
        res += r
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    assert precision >= 0.95, precision
    assert recall >= 0.95, recall
    rel = np.array([r for r, inside in res if inside])
    assert len(rel) >= 40
    assert abs(np.median(rel)) < 0.04
    # measured 0.90 (0.4 Å) and 0.86 (0.5 Å); 0.70 and 0.55 before the line-element
    # background, the plateau-confined bias and the aperture counts
    assert np.mean(np.abs(rel) < 0.15) >= 0.82, np.mean(np.abs(rel) < 0.15)


def test_clusters_on_support_without_crystal(synth):
    # Gaussian blobs on an empty support (model independent of the simulator): SCS is the
    # integrated excess over gain*dose
    shape, px, dose, gain = (128, 128), 0.5, 1e4, 2.0
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    true = [(30.0, 40.0, 0.5), (90.0, 70.0, 1.2), (50.0, 100.0, 0.25)]  # y_px, x_px, SCS Å²
    img = np.full(shape, 0.002 * gain * dose * px**2)
    for y, x, scs in true:
        s = 4.0
        img += (
            gain
            * dose
            * scs
            * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * s**2))
            / (2 * np.pi * s**2)
        )
    rng = np.random.default_rng(0)
    obs = gain * rng.poisson(img / gain)
    det = detect_clusters(
        obs, pixel_size_A=px, dose_e_per_A2=dose, gain=gain, lattice_A=5.87, lattice_angle_deg=0
    )
    assert len(det) == 3
    for y, x, scs in true:
        i = int(np.argmin(np.hypot(det["y_px"] - y, det["x_px"] - x)))
        assert det["scs_A2"].iloc[i] == pytest.approx(scs, rel=0.1)
        assert abs(det["scs_A2"].iloc[i] - scs) < 4 * det["scs_err_A2"].iloc[i] + 0.05 * scs


def test_detect_clusters_bad_input():
    with pytest.raises(CalibrationError, match="pixel_size_A"):
        detect_clusters(np.ones((32, 32)))
    bad = np.ones((32, 32))
    bad[3, 3] = np.nan
    with pytest.raises(DataError, match="non-finite"):
        detect_clusters(bad, pixel_size_A=0.5)
    with pytest.raises(ParameterError, match="threshold_sigma"):
        detect_clusters(np.ones((32, 32)), pixel_size_A=0.5, threshold_sigma=-1)
    with pytest.raises(ParameterError, match="aperture_A"):
        detect_clusters(np.ones((32, 32)), pixel_size_A=0.5, aperture_A=-2.0)
    # a blanked frame: no lattice to estimate (was a bare "cannot convert NaN" ValueError)
    with pytest.raises(DataError, match="constant image"):
        detect_clusters(np.zeros((64, 64)), pixel_size_A=0.5)
    # no dose: detection only, SCS and counts NaN
    det = detect_clusters(
        np.random.default_rng(0).poisson(5.0, (64, 64)).astype(float), pixel_size_A=0.5
    )
    assert det.empty or det["n_atoms"].isna().all()


def test_empty_frame_keeps_numeric_columns():
    """A frame without clusters gives a typed empty table: concatenated with frames that
    have clusters, positions and counts stay numeric (object columns broke np.hypot in
    matching and tracking)."""
    rng = np.random.default_rng(3)
    empty = detect_clusters(
        Image(rng.poisson(50.0, (96, 96)).astype(float), 0.5, dose_e_per_A2=1e3)
    )
    assert empty.empty
    assert list(empty.columns) == CLUSTER_COLUMNS
    assert all(np.issubdtype(t, np.number) or np.issubdtype(t, np.bool_) for t in empty.dtypes)
    full = pd.DataFrame({c: [1.0] for c in CLUSTER_COLUMNS}).astype({"host_ok": bool})
    both = pd.concat([empty, full], ignore_index=True)
    assert both["x_A"].dtype == np.float64 and both["n_atoms"].dtype == np.float64


def test_host_island_is_not_a_cluster():
    """A less-damaged island of host on a degraded crystal is an excess over the background
    like a cluster; the host-lattice and compactness tests must not count it as Pb."""
    from perovstem.simulate import nanocrystal
    from perovstem.simulate.haadf import haadf_image

    for seed in (0, 1):
        at = nanocrystal(edge_A=40.0, rng=seed)
        pos = at.get_positions()
        c = pos.mean(axis=0)
        top = pos[:, 2] > c[2] + 8.0  # top three layers lost ...
        island = (np.abs(pos[:, 0] - c[0] + 6) < 7) & (np.abs(pos[:, 1] - c[1] - 4) < 7)
        img, _ = haadf_image(
            at[~top | island],  # ... except a 14 Å island
            pixel_size_A=0.4,
            shape=(192, 192),
            center_A=(0, 0),
            dose_e_per_A2=5e4,
            rng=seed,
        )
        plain = detect_clusters(img, host_test=False, compact_test=False)
        assert plain["n_atoms"].max() > 20  # the island is a significant excess ...
        det = detect_clusters(img)
        assert det.empty, det[["x_A", "y_A", "n_atoms", "host_fraction"]]  # ... but no Pb
        assert 0.1 < det.attrs["host_empty_site_ratio"] < 0.5


def test_pb0_on_degrading_crystals_kmc():
    """KMC degradation series (Br loss, Pb0 diffusion, nucleation, growth, coalescence on
    a 4 nm crystal that loses its host atoms) at several dose rates and temperatures: the
    Pb0 in detected clusters follows the truth once clusters have grown (host patches of
    the damaged crystal are not taken for Pb).  The per-frame ratios of the grown frames
    are pooled over the four series: one series has a single grown frame, and the first
    grown frame of a series scatters most (0.43 in AVX2 mode, 0.57 on AVX-512)."""
    from perovstem.insitu import analyze_series

    ratios = []
    for phi, temp, seed in ((1.5e3, 300.0, 5), (3e3, 260.0, 2), (3e3, 320.0, 8), (6e3, 300.0, 4)):
        tr, s, truth = kmc_imaged(
            40.0,
            rate=phi,
            temperature_K=temp,
            seed=seed,
            crystal_seed=0,
            n_frames=12,
            pixel_size_A=0.5,
            drift_A_per_s=(0.8, -0.5),
            jitter_A=0.3,
            rng=seed,
        )
        f = analyze_series(s, summary=False, phase_check=False, crystal=False).frames
        det = f["n_Pb0_detected"].to_numpy(float)
        true = truth["frames"]["n_cluster_atoms"].to_numpy(float)
        # last frame, measured: AVX-512 0.79-1.09, AVX2 mode 0.77-1.08
        assert 0.67 * true[-1] < det[-1] < 1.5 * true[-1], (phi, temp, det[-1], true[-1])
        grown = true >= 150
        ratios += list(det[grown] / true[grown])
    # frames with >= 150 cluster atoms (24 of them): measured ratios 0.57-1.49, 23 of 24
    # within 0.67-1.5, median 1.01 (AVX-512); 0.43-1.48, 23 of 24, median 1.03 (AVX2 mode);
    # extra seeds 6 and 3 (1.5e3 / 300 K, 3e3 / 260 K): 0.50-1.11 in both modes.  Before
    # the host-lattice test: 1.06-3.28, median 1.9
    ratios = np.array(ratios)
    assert len(ratios) >= 20, ratios
    assert np.all((ratios > 0.35) & (ratios < 1.6)), ratios
    assert np.mean((ratios > 0.67) & (ratios < 1.5)) >= 0.9, ratios
    assert 0.85 < np.median(ratios) < 1.2, ratios


# --- the compiled / vectorised kernels of detect_clusters equal their reference forms ---


@pytest.mark.parametrize(
    "shape, side", [((64, 64), 9), ((50, 37), 81), ((33, 70), 3), ((7, 5), 11)]
)
def test_lattice_opening_equals_ndimage_filters(shape, side):
    from perovstem.insitu.clusters import _lattice_opening

    rng = np.random.default_rng(side)
    m = rng.gamma(2.0, 1.0, shape) + np.where(rng.random(shape) < 0.05, 30.0, 0.0)
    for ns in (0.0, 0.3):
        np.testing.assert_array_equal(_lattice_opening(m, side, ns), reference_opening(m, side, ns))


@pytest.mark.parametrize(
    "shape", [(40, 23), (5, 61), (1, 1), (50, 17), (130, 70), (33, 200), (200, 129)]
)
def test_running_extremum_equals_ndimage_on_both_axes(shape):
    """The one van Herk / Gil-Werman helper serves rows and columns (column tiles, any
    width) with the ndimage result bit for bit, element longer than the image included;
    the last three shapes are wider than one 64-lane column strip of the cache-blocked
    passes, and the sizes straddle its block length."""
    from scipy import ndimage

    from perovstem.insitu._cluster_kernels import _running_extremum

    rng = np.random.default_rng(sum(shape))
    x = rng.normal(size=shape)
    for size in (1, 3, 5, 7, 31, 63, 65, 101, 301):
        for axis in (0, 1):
            for is_max, ref in (
                (False, ndimage.minimum_filter1d),
                (True, ndimage.maximum_filter1d),
            ):
                want = ref(x, size, axis=axis, mode="constant", cval=-0.5)
                got = _running_extremum(x, size, -0.5, is_max, axis)
                np.testing.assert_array_equal(got, want)


def test_finite_median_filter_equals_generic_filter():
    from scipy import ndimage

    from perovstem.insitu.clusters import _finite_median, _finite_median_filter

    rng = np.random.default_rng(3)
    v = rng.normal(size=(23, 31))
    v[rng.random(v.shape) < 0.4] = np.nan
    v[:6, :6] = np.nan  # windows without a finite value -> 0
    for size in (3, 4, 5):
        ref = ndimage.generic_filter(v, _finite_median, size=size, mode="nearest")
        np.testing.assert_array_equal(_finite_median_filter(v, size), ref)


def test_label_max_equals_maximum_at():
    from perovstem.insitu.clusters import _label_max

    rng = np.random.default_rng(4)
    lab = rng.integers(1, 9, 500)
    lab[lab == 5] = 6  # label 5 empty -> -inf
    val = rng.normal(size=500)
    ref = np.full(8, -np.inf)
    np.maximum.at(ref, lab - 1, val)
    np.testing.assert_array_equal(_label_max(lab, val, 8), ref)


def test_label_argmax_matches_maximum_position():
    """The marker of a component without a peak sits at its maximum: the one-pass kernel
    gives scipy's maximum_position for every label (no ties in float data), -1 for an
    empty label."""
    from scipy import ndimage

    from perovstem.insitu._cluster_kernels import _label_argmax

    rng = np.random.default_rng(11)
    for _ in range(50):
        shape = tuple(rng.integers(3, 60, 2))
        lab, n = ndimage.label(rng.random(shape) > 0.5)
        if n == 0:
            continue
        z = rng.random(shape).astype(np.float32)
        idx = _label_argmax(lab.ravel(), z.ravel(), n + 1)
        ref = ndimage.maximum_position(z, lab, np.arange(1, n + 1))
        got = [tuple(int(v) for v in np.unravel_index(i, shape)) for i in idx[:n]]
        assert got == [tuple(int(v) for v in r) for r in ref]
        assert idx[n] == -1


def test_cell_average_matches_unit_cell_average(monkeypatch):
    """The cell average of detect_clusters (single-precision transforms, for speed) equals
    unit_cell_average (double) to ~1e-7 of the image's contrast, with the exact 2-cell
    padding and with the padding rounded up to a fast FFT length (large frames); its mean
    is kept (the mean is removed and restored in double precision), and the images of a
    stack are filtered independently.  The fast length moves the wrap-around of the
    filter: on this high-contrast lattice (a = 7.3 px, 17°) by < 2e-3 of the mean level
    (measured 8e-4; ~1e-6 on simulated 1024² in-situ frames)."""
    from perovstem.insitu import clusters, lattice, unit_cell_average

    rng = np.random.default_rng(5)

    def rows(n):  # separable Gaussian lattice profile
        c = np.arange(20, n - 20, 7.3)
        return np.exp(-((np.arange(n)[:, None] - c) ** 2) / (2 * 1.4**2)).sum(1)

    for shape in ((203, 197), (600, 530)):
        img = rng.poisson(3.0 * (2.0 + 20.0 * np.outer(rows(shape[0]), rows(shape[1]))))
        img = img.astype(float) + 1e4  # a large offset: the level must not cost precision
        tol = 1e-6 * np.ptp(img)  # single precision: ~1e-7 of the contrast measured
        for ang in (0.0, 17.0):
            monkeypatch.setattr(lattice, "_FAST_FFT_PAD", False)
            exact = unit_cell_average(img, 7.3, angle_deg=ang)
            ca = clusters._cell_average(img, 7.3, ang)
            assert ca.dtype == np.float64
            np.testing.assert_allclose(ca, exact, rtol=0, atol=tol)
            assert abs(ca.mean() - exact.mean()) < 0.1 * tol
            monkeypatch.setattr(lattice, "_FAST_FFT_PAD", True)
            ref = unit_cell_average(img, 7.3, angle_deg=ang)
            np.testing.assert_allclose(clusters._cell_average(img, 7.3, ang), ref, atol=tol)
            fast = clusters._cell_average(np.stack([img, 2 * img]), 7.3, ang)
            if shape[0] < lattice._FAST_FFT_MIN_SIDE:
                np.testing.assert_array_equal(ref, exact)
            else:
                assert 0 < np.abs(ref - exact).max() < 2e-3 * exact.mean()
            np.testing.assert_allclose(fast[1], 2 * fast[0], rtol=0, atol=2 * tol)
            np.testing.assert_array_equal(fast[0], clusters._cell_average(img[None], 7.3, ang)[0])


def test_cell_padding_fast_length():
    """>= 2 cells of reflect padding on every side, the padded side a fast FFT length on
    large frames (1024² at 0.2 Å/px: 1152, not 1142 = 2·571), exact 2 cells on small ones."""
    from scipy import fft as sfft

    from perovstem.insitu import lattice

    for shape, a_px in (((1024, 1024), 29.35), ((1024, 777), 19.57), ((2048, 1500), 11.74)):
        pads = lattice._cell_padding(shape, a_px)
        for n, (lo, hi) in zip(shape, pads, strict=True):
            assert lo >= 2 * a_px and hi >= lo
            assert n + lo + hi == sfft.next_fast_len(n + 2 * lo, real=True)
    assert lattice._cell_padding((1024, 1024), 29.35) == ((59, 69), (59, 69))
    assert lattice._cell_padding((200, 190), 7.3) == ((15, 15), (15, 15))


def test_fast_fft_padding_keeps_detections(monkeypatch):
    """detect_clusters on a simulated 1024² frame (0.2 Å, clusters on a 6 nm crystal) with
    the exact 2-cell padding and with the fast FFT length: the same clusters, counts within
    1e-4 relative (measured < 1e-5)."""
    from perovstem.insitu import lattice
    from perovstem.simulate import add_pb_cluster, nanocrystal
    from perovstem.simulate.haadf import haadf_image

    rng = np.random.default_rng(11)
    at = nanocrystal(edge_A=60.0, rng=11)
    for n in (25, 80, 150):
        at = add_pb_cluster(at, n, site=str(rng.choice(["corner", "edge", "face"])), rng=rng)
    img, _ = haadf_image(
        at, pixel_size_A=0.2, shape=(1024, 1024), center_A=(0, 0), dose_e_per_A2=2e4, rng=11
    )
    monkeypatch.setattr(lattice, "_FAST_FFT_PAD", False)
    ref = detect_clusters(img)
    monkeypatch.setattr(lattice, "_FAST_FFT_PAD", True)
    det = detect_clusters(img)
    assert len(det) == len(ref) >= 2
    np.testing.assert_allclose(det[["x_px", "y_px"]], ref[["x_px", "y_px"]], atol=1e-3)
    np.testing.assert_allclose(det["integrated_counts"], ref["integrated_counts"], rtol=1e-4)
    np.testing.assert_allclose(det["n_atoms"], ref["n_atoms"], rtol=1e-4)


def test_clusters_on_degrading_crystal_kmc_frames():
    """Clusters forming on and next to a degrading 3.5-4 nm crystal (KMC series, three dose
    rates, two temperatures, four seeds), scored per raw frame against the truth clusters: host
    patches of the damaged crystal under and between the clusters are not taken as Pb."""
    tp = fp = fn = 0
    errs = []
    for edge, phi, temp, seed in (
        (40.0, 1.5e3, 300.0, 11),
        (40.0, 6e3, 320.0, 13),
        (40.0, 3e3, 320.0, 17),
        (35.0, 4.5e3, 260.0, 18),
    ):
        images, truths, kw, field, _ = degrading_frames(
            edge, rate=phi, temperature_K=temp, seed=seed
        )
        for img, tk in zip(images, truths, strict=True):
            det = detect_clusters(img, **kw)
            a, b, c, out = _score_frame(det, tk, field)
            tp, fp, fn = tp + a, fp + b, fn + c
            errs += [e for e, inside in out if inside]
    # measured: precision 140/153 = 0.92, recall 140/161 = 0.87, counts within 15 % 0.62
    # (0.92 / 0.88 / 0.58 before the host model counted clusters on host from the
    # host-free map; 0.86 / 0.89 with the host-lattice switch > 3 sigma and D < 0.6 E).
    # Two CPU realisations of the same series: AVX-512 0.925 / 135/161 = 0.839 / 0.67
    # (seed 18 misses 13 of 67), AVX2 mode 0.935 / 143/161 = 0.888 / 0.62
    assert tp / (tp + fp) > 0.89, (tp, fp, fn)
    assert tp / (tp + fn) > 0.82, (tp, fp, fn)
    errs = np.abs(errs)
    assert np.mean(errs < 0.15) >= 0.6, np.mean(errs < 0.15)


def test_persistent_clusters():
    from perovstem.insitu.clusters import persistent_clusters

    rng = np.random.default_rng(0)
    rows = []
    for k in range(6):
        # a cluster drifting 4 Å per frame from frame 1 on, one seen in frame 3 only, one
        # seen in frames 0 and 2 (not consecutive), and a noise hit per frame
        if k >= 1:
            rows.append((k, 20.0 + 4 * k, 30.0, "drift"))
        if k == 3:
            rows.append((k, 80.0, 80.0, "single"))
        if k in (0, 2):
            rows.append((k, 50.0, 10.0, "gap"))
        rows.append((k, *rng.uniform(100, 200, 2), "noise"))
    df = pd.DataFrame(rows, columns=["frame", "x_A", "y_A", "what"])
    df.attrs["x"] = 1
    out = persistent_clusters(df, min_frames=2, max_distance_A=5.0)
    assert set(out["what"]) == {"drift"} and len(out) == 5
    assert out.attrs == {"x": 1}
    assert len(persistent_clusters(df, min_frames=5, max_distance_A=5.0)) == 5
    assert persistent_clusters(df, min_frames=6, max_distance_A=5.0).empty
    assert len(persistent_clusters(df, min_frames=1)) == len(df)
    # displacements larger than max_distance_A break the chain
    assert persistent_clusters(df, min_frames=2, max_distance_A=3.0).empty
    with pytest.raises(ParameterError, match="min_frames"):
        persistent_clusters(df, min_frames=0)
    with pytest.raises(ParameterError, match="max_distance_A"):
        persistent_clusters(df, max_distance_A=-1.0)
    with pytest.raises(DataError, match="clusters"):
        persistent_clusters(df.drop(columns="x_A"))


def _coverage_rows(edge, phi, temp, seed, n_frames):
    """(|n - truth| / n_atoms_err, n_atoms_err / n, truth n) of the matched >= 10-atom
    projected truth objects of one KMC image series (several detections inside an object
    of overlapping clusters summed, errors in quadrature; objects cut by the edge left out)."""
    from perovstem._data import Image

    tr, s, truth = kmc_imaged(
        edge,
        rate=phi,
        temperature_K=temp,
        seed=seed,
        n_frames=n_frames,
        pixel_size_A=0.5,
        drift_A_per_s=(0.0, 0.0),
        jitter_A=0.0,
        rng=seed,
    )
    data = np.asarray(s.data, float)
    field = (data.shape[1] - 1) * 0.5
    tcl = truth["clusters"]
    out = []
    for k in range(2, len(data), 2):
        img = Image(data[k], 0.5, dose_e_per_A2=float(np.asarray(s.dose_e_per_A2)[k]))
        det = detect_clusters(img, gain=s.metadata["gain"], offset=s.metadata["offset"])
        tc = _truth_clusters(tcl[tcl["frame"] == k].rename(columns={"n_atoms": "n_Pb0"}))
        big = tc[tc["n_atoms"] >= 10].reset_index(drop=True)
        ok = _match(big, det)
        hit = {j for _, j in ok}
        parts: dict[int, list[int]] = {i: [j] for i, j in ok}
        for j in set(range(len(det))) - hit:
            db = np.hypot(big["x_A"] - det["x_A"].iloc[j], big["y_A"] - det["y_A"].iloc[j])
            inside_obj = (big["n_clusters"] > 1) & (db < _radius(big["n_atoms"]) + 2.0)
            i = int(np.argmin(np.where(inside_obj, db, np.inf)))
            if inside_obj.any() and i in parts:
                parts[i].append(j)
        for i, js in parts.items():
            x, y, n = big.loc[i, ["x_A", "y_A", "n_atoms"]]
            if min(x, y, field - x, field - y) - _radius(n) <= 3.0:
                continue
            nd = det["n_atoms"].iloc[js].sum()
            err = np.sqrt(np.sum(det["n_atoms_err"].iloc[js] ** 2))
            out.append((abs(nd - n) / err, err / nd, n))
    return out


def test_n_atoms_err_coverage_on_kmc_series():
    """n_atoms_err is an honest 1σ: on KMC image series (two temperatures, two dose rates,
    4-6 nm crystals; seeds used neither for the error model, set on seeds 201-218, nor for
    its check on 401-418) |n - truth| <= 2 n_atoms_err for ~90-95 % of the matched
    >= 10-atom clusters, without blanket inflation.  Shot noise alone (the error before)
    covered 55 % (claimed median 5 %: the host-model, background and counting-model errors
    were missing)."""
    rows = []
    for edge, phi, temp, seed in (
        (40.0, 6e3, 280.0, 501),
        (50.0, 1.5e3, 300.0, 502),
        (60.0, 3e3, 280.0, 503),
        (50.0, 6e3, 300.0, 504),
    ):
        rows += _coverage_rows(edge, phi, temp, seed, n_frames=14)
    z, rel, n = np.array(rows).T
    assert len(z) >= 150, len(z)
    cover = z <= 2.0
    # measured: 182 clusters, 0.918 covered (0.56 with shot noise only), per truth size
    # 10-30 / 30-80 / >= 80 atoms 0.95 / 0.89 / 0.90 (0.68 / 0.55 / 0.30); median err/n
    # 0.168 (0.049); the robust scatter of log(n / truth) on such series is 0.13-0.18.
    # Two CPU realisations: AVX-512 178 clusters, 0.933, per size 0.96 / 0.96 / 0.79 (22 of
    # 28 >= 80 atoms); AVX2 mode 177, 0.927, 0.95 / 0.95 / 0.82 (23 of 28): with ~28
    # large clusters one cluster moves the fraction by 0.036
    assert 0.85 <= cover.mean() <= 0.98, cover.mean()
    for lo, hi in ((10, 30), (30, 80), (80, np.inf)):
        sel = (n >= lo) & (n < hi)
        assert sel.sum() >= 20 and cover[sel].mean() >= 0.75, (lo, sel.sum(), cover[sel].mean())
    assert np.median(rel) <= 0.25, np.median(rel)


def test_n_atoms_err_stat_covers_frame_to_frame_changes():
    """n_atoms_err_stat is the part of the count error that is independent between frames:
    the counts of one truth cluster (>= 10 atoms, unchanged in the KMC) in consecutive
    frames differ by <= 2 sqrt(err1² + err2²) for ~90 % of the pairs (set on seeds
    201-218; 0.906 on 401-418), while n_atoms_err (mostly persistent terms) is wider.
    Shot noise alone covered 0.71 of the pairs on 401-418."""
    from perovstem.insitu import match_clusters

    out = []
    for edge, phi, temp, seed in ((50.0, 3e3, 280.0, 505), (50.0, 6e3, 300.0, 506)):
        tr, s, truth = kmc_imaged(
            edge,
            rate=phi,
            temperature_K=temp,
            seed=seed,
            n_frames=14,
            pixel_size_A=0.5,
            drift_A_per_s=(0.0, 0.0),
            jitter_A=0.0,
            rng=seed,
        )
        g, o = s.metadata["gain"], s.metadata["offset"]
        det = pd.concat(
            [detect_clusters(s.frame(k), gain=g, offset=o, frame=k) for k in range(4, 14)],
            ignore_index=True,
        )
        m = match_clusters(det, truth["clusters"])
        m = m[m["cluster_id"] >= 0].drop_duplicates(["frame", "cluster_id"])
        by = m.set_index(["frame", "cluster_id"])
        n_true = truth["clusters"].set_index(["frame", "cluster_id"])["n_atoms"]
        for f, c in by.index:
            if (f + 1, c) in by.index and n_true[(f, c)] == n_true.get((f + 1, c)) >= 10:
                a, b = by.loc[(f, c)], by.loc[(f + 1, c)]
                stat = np.hypot(a["n_atoms_err_stat"], b["n_atoms_err_stat"])
                tot = np.hypot(a["n_atoms_err"], b["n_atoms_err"])
                out.append((abs(b["n_atoms"] - a["n_atoms"]), stat, tot, a["n_atoms"]))
    dn, stat, tot, n = np.array(out).T
    assert len(dn) >= 60, len(dn)
    # measured: 85 pairs, 0.94 covered; median combined stat / n 0.089, total / n 0.19
    assert 0.82 <= np.mean(dn <= 2 * stat) <= 0.98, np.mean(dn <= 2 * stat)
    assert np.all(stat <= tot) and np.median(stat / n) < 0.7 * np.median(tot / n)


def test_pb0_falls_later_compares_each_frame_with_every_later_one():
    from perovstem.insitu import pb0_falls_later

    n = np.array([10.0, 50.0, np.nan, 30.0, 33.0, 44.0])
    e = np.array([2.0, 3.0, 1.0, 3.0, 3.0, 3.0])
    # frame 1 (50) vs frames 3, 4 (30, 33): 20, 17 > 3·√18 ≈ 12.7; frame 4 vs 5 within
    # errors; the skipped frame (NaN) is neither flagged nor a reference
    assert pb0_falls_later(n, e).tolist() == [False, True, False, False, False, False]
    assert not pb0_falls_later(n, 10 * e).any()
    assert not pb0_falls_later(np.sort(n[np.isfinite(n)]), e[:5]).any()  # monotone: none


def test_an_isolated_pb0_dip_is_an_under_count_not_a_fall_of_the_frames_before():
    """A fall to frame 3 that frame 4 takes back (45 is within 3σ of 50): frame 3 is
    the outlier (a cluster missed or counted low), so frame 1 is not flagged as an
    over-count; frame 3 is a dip (KMC 3 nm crystal, seed 1, AMD AVX-512 realisation:
    51.7 / 40.9 / 71.6 for 50 / 66 / 75 true, the correct frame was flagged before).
    Two low frames in a row are not an isolated dip: the frame before them is flagged."""
    from perovstem.insitu import pb0_dips, pb0_falls_later

    n = np.array([10.0, 50.0, np.nan, 30.0, 45.0, 44.0])
    e = np.array([2.0, 3.0, 1.0, 3.0, 3.0, 3.0])
    assert pb0_dips(n, e).tolist() == [False, False, False, True, False, False]
    assert not pb0_falls_later(n, e).any()
    assert not pb0_dips(n, 10 * e).any()
    two_low = np.array([10.0, 50.0, 30.0, 31.0, 52.0, 55.0])
    e6 = np.full(6, 3.0)
    assert not pb0_dips(two_low, e6).any()
    assert pb0_falls_later(two_low, e6).tolist() == [False, True, False, False, False, False]
    # the last frame has no frame after it: a fall there stays a fall of the frames before
    last = np.array([10.0, 20.0, 50.0, 30.0])
    assert not pb0_dips(last, np.full(4, 3.0)).any()
    assert pb0_falls_later(last, np.full(4, 3.0)).tolist() == [False, False, True, False]


def test_pb0_falls_later_flags_the_whole_gradual_fall_not_only_its_peak():
    """An over-count that falls gradually: each frame is within 3 combined σ of the
    lowest later one except the peak, so the pairwise test flagged the peak only (KMC 3 nm
    crystal, seed 3, AVX2 realisation, frames 5-11: 1.73 / 1.60 / 1.34 x the true Pb0 in
    frames 7-9, only frame 8 flagged).  The run 7-11 cannot be non-decreasing (χ² of its
    pooled level p < 0.0027): its frames above the level are flagged too.  Monotone
    totals with honest errors: false flags as rare as with the pairwise test alone."""
    from perovstem.insitu import pb0_falls_later

    n = np.array([63.8, 87.5, 157.3, 163.7, 151.6, 132.3, 131.8])
    e = np.array([8.7, 5.5, 7.4, 7.9, 6.3, 5.6, 5.4])
    assert pb0_falls_later(n, e).tolist() == [False, False, True, True, True, False, False]
    rng = np.random.default_rng(0)
    t = np.arange(12.0)
    n_false = n_series = 0
    for truth in (10 * t, 150 * (1 - np.exp(-t / 3))):
        for _ in range(500):
            err = np.maximum(2.0, 0.08 * truth) * rng.uniform(0.7, 1.5, 12)
            flag = pb0_falls_later(truth + rng.normal(0, 1, 12) * err, err)
            n_false += int(flag.sum())
            n_series += 1
    # measured: 2 false frames in 12000 (the pairwise test alone: the same 2)
    assert n_false <= 0.002 * 12 * n_series, n_false


def test_pb0_over_count_on_a_small_degrading_crystal_is_flagged():
    """3 nm crystals late in their series: host remnants read as clusters give 1.1-2.1x
    the true Pb⁰ from frame 6-7 on, and the total then falls, which Pb⁰ from Br loss
    cannot do.  No such over-count goes unsaid: a frame above 1.3x is flagged
    ``Pb0_falls_later`` (a fall beyond the frame-to-frame errors) or is one whose
    clusters cover the crystal (host model ``"no_reference"`` or carried from the frame
    before, ``host_reference_used``: remnants that lost their lattice count as Pb⁰), each
    with a note; no frame within 1.2x is flagged.  Before, the ``"no_reference"`` frames
    had no note.  Measured (detected / true): seed 3 AVX-512 frame 6 carried 1.57 (2.12
    before), frames 7-9 1.86 / 1.59 / 1.40 "no_reference", no fall flag; AVX2 frames
    7-9 1.73 / 1.73 / 1.42 flagged (frame 7 carried); seed 1 frames 8, 9 flagged (1.99 /
    1.75, AVX2 2.05 / 1.72), frame 10 (1.48, AVX2 1.35) "no_reference"."""
    from perovstem.insitu import analyze_series

    n_flag = 0
    for seed in (3, 1):
        _, s, truth = kmc_imaged(
            30.0,
            rate=3e3,
            seed=seed,
            n_frames=12,
            pixel_size_A=0.5,
            drift_A_per_s=(0.8, -0.5),
            jitter_A=0.3,
            rng=seed,
        )
        res = analyze_series(s, summary=False, phase_check=False, crystal=False)
        f = res.frames
        true = truth["frames"]["n_cluster_atoms"].to_numpy()
        ratio = f["n_Pb0_detected"].to_numpy(float) / true
        flag = f["Pb0_falls_later"].to_numpy(bool)
        covered = f["host_reference_used"].to_numpy(bool) | (f["host_model"] == "no_reference")
        assert np.all(ratio[flag] > 1.3), (seed, flag, ratio)
        assert not flag[ratio < 1.2].any(), (seed, flag, ratio)
        # an excess within twice the frame's stated 1σ is said by its error bar (AVX2 mode,
        # seed 1 frame 2: 37 ± 15 for 27 true, four clusters of 7-11 atoms); the host
        # remnants above are 5-9σ over
        det, err = f["n_Pb0_detected"].to_numpy(float), f["n_Pb0_err"].to_numpy(float)
        stat = f["n_Pb0_err_stat"].to_numpy(float)
        assert np.all(err[det > 0] >= stat[det > 0] - 1e-9)  # total ⊇ frame-to-frame part
        said = flag | covered | (np.abs(det - true) <= 2.0 * err)
        assert np.all(said | ~(ratio > 1.3)), (seed, flag, covered, ratio, err)
        assert not flag.any() or any("Pb0_falls_later" in n for n in res.notes), seed
        assert not covered.any() or any("host_reference_used" in n for n in res.notes)
        n_flag += int(flag.sum())
    assert n_flag >= 2, n_flag


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frames_table_pb0_flags_find_the_dips_once(monkeypatch, seed):
    # the frames table's Pb0_falls_later and Pb0_dip columns come from one pb0_dips call
    # (pb0_falls_later ran it a second time) and equal the public functions' results
    from perovstem.insitu import analysis

    rng = np.random.default_rng(seed)
    n = np.cumsum(rng.uniform(0, 6, 40)) + rng.normal(0, 4, 40)
    n[rng.choice(40, 3, replace=False)] -= 30.0  # isolated dips
    n[5] = np.nan
    e = rng.uniform(1.0, 3.0, 40)
    want = (analysis.pb0_falls_later(n, e), analysis.pb0_dips(n, e))
    calls = []
    real = analysis.pb0_dips
    monkeypatch.setattr(analysis, "pb0_dips", lambda *a, **k: calls.append(1) or real(*a, **k))
    falls, dip = analysis._pb0_flags(n, e)
    assert len(calls) == 1
    assert dip.any() and falls.dtype == bool
    np.testing.assert_array_equal(falls, want[0])
    np.testing.assert_array_equal(dip, want[1])


def test_host_ratio_marks_the_counts_that_had_host_to_separate():
    """On degrading crystals (KMC series, seeds not used elsewhere) the counts of clusters
    with little host under their aperture (``host_ratio`` <= 0.1) are within 15 % of the
    truth far more often than those above 0.3, where the host of a damaged crystal had to
    be separated.  Measured on bench_clusters' series (seeds 1101-1160, 1301-1316): within
    15 % 0.93-0.94 at <= 0.1 (24-36 % of the objects), 0.43-0.56 at 0.3-1."""
    low, high = [], []
    for edge, phi, temp, seed in (
        (40.0, 3e3, 300.0, 701),
        (35.0, 6e3, 320.0, 702),
        (55.0, 3e3, 280.0, 703),
        (40.0, 1.5e3, 300.0, 704),
    ):
        images, truths, kw, field, _ = degrading_frames(
            edge, rate=phi, temperature_K=temp, seed=seed
        )
        for img, tk in zip(images, truths, strict=True):
            det = detect_clusters(img, **kw)
            sc = score_detections(det, _truth_clusters(tk))
            big = sc["objects"]
            for (i, j), n_det in zip(sc["pairs"], sc["n_atoms"], strict=True):
                x, y, n = big.loc[i, ["x_A", "y_A", "n_atoms"]]
                if min(x, y, field - x, field - y) - _radius(n) <= 3.0:
                    continue
                within = abs(n_det / n - 1) < 0.15
                r = det["host_ratio"].iloc[j]
                if r <= 0.1:
                    low.append(within)
                elif r > 0.3:
                    high.append(within)
    # measured: 40 of 44 within 15 % at <= 0.1 (0.91), 57 of 117 above 0.3 (0.49)
    assert len(low) >= 40 and len(high) >= 40, (len(low), len(high))
    assert np.mean(low) >= 0.85, np.mean(low)
    assert np.mean(high) <= 0.75, np.mean(high)
    assert np.mean(low) - np.mean(high) >= 0.2, (np.mean(low), np.mean(high))
