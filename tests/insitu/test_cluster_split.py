"""Model-based split of touching Pb clusters in detect_clusters (``split=True``): touching
compact clusters are separated and counted, isolated elongated clusters are not split, and
recall on degrading crystals (KMC series on seeds not used to set the split) improves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _insitu_kmc import degrading_frames, fcc_cluster
from test_clusters import _radius, _score_frame

from perovstem.insitu import detect_clusters


def _with_clusters(at, clusters):
    """``at`` plus Pb clusters (positions arrays), each with its own cluster_id."""
    from ase import Atoms

    out = at
    for cl in clusters:
        n = len(cl)
        new = Atoms(["Pb"] * n, positions=cl)
        cid = max(int(out.arrays["cluster_id"].max()) + 1, 0)
        extra = {
            "label": np.full(n, 2),
            "cluster_id": np.full(n, cid),
            "sublattice": np.full(n, 3),
            "site_index": np.full((n, 3), -1),
        }
        for k in out.arrays:
            if k in ("numbers", "positions"):
                continue
            v = extra.get(k, np.zeros((n, *out.arrays[k].shape[1:]), out.arrays[k].dtype))
            new.set_array(k, v.astype(out.arrays[k].dtype))
        out = out + new
    return out


def _frame(seed, sizes, *, where, dose, gap_A=1.5, aspect=1.0, px=0.5):
    """A 4 nm crystal with Pb clusters of ``sizes`` atoms in a row along a random in-plane
    direction, ``gap_A`` between their equal-volume spheres (touching), beside the crystal
    (``where="beside"``) or on its top face; returns the image and the truth table."""
    from perovstem.simulate import nanocrystal
    from perovstem.simulate.haadf import haadf_image

    rng = np.random.default_rng(seed)
    at = nanocrystal(edge_A=40.0, rng=seed)
    pos = at.get_positions()
    c, half = pos.mean(0), (pos.max(0) - pos.min(0)) / 2
    ang = rng.uniform(0, np.pi)
    u = np.array([np.cos(ang), np.sin(ang), 0.0])
    r = _radius(np.asarray(sizes))
    offs = np.r_[0.0, np.cumsum(r[:-1] + r[1:] + gap_A)]
    offs -= offs.mean()
    cls = [fcc_cluster(int(n), rng, aspect, ang) + o * u for n, o in zip(sizes, offs, strict=True)]
    ext = max(np.abs(cl[:, 0]).max() for cl in cls)
    if where == "beside":
        shift = c + [half[0] + ext + 4.0, rng.uniform(-5, 5), 0.0]
    else:
        shift = c + [rng.uniform(-4, 4), rng.uniform(-4, 4), half[2] + 8.0]
    img, truth = haadf_image(
        _with_clusters(at, [cl + shift for cl in cls]),
        pixel_size_A=px,
        shape=(int(100 / px),) * 2,
        center_A=(0, 0),
        dose_e_per_A2=dose,
        rng=seed,
    )
    return img, truth


# six pairs (atoms), each beside the crystal and on its top face
PAIRS = [(25, 40), (40, 40), (30, 80), (20, 60), (60, 60), (15, 30)]


@pytest.mark.parametrize("px", [0.5, 0.25])
def test_touching_pairs_split_and_counted(px):
    """Two compact clusters whose equal-volume spheres are 0.2 Å apart (touching in
    projection), beside or on a crystal at 5e3 e/Å²: each is detected and counted.
    Before the blob markers (``insitu/_markers.py``) the marker watershed left 5 of 12
    pairs in one detection at 0.5 Å and the split recovered two (watershed 7, split 9 of
    12; 0.25 Å 9 -> 10; AVX2 kernels 6 -> 7 and 7 -> 8).  With them the smaller cluster
    of every pair gets its own marker: 12 of 12 with and without the split, at both pixel
    sizes and in both CPU modes (AVX-512 and AVX2), each part within 30 % of its truth.
    The split must never merge what the markers separated, and a split segment keeps
    its count."""
    sep_w = sep_s = 0
    for seed, sizes in enumerate(PAIRS):
        for where in ("beside", "on"):
            img, truth = _frame(seed, sizes, where=where, dose=5e3, gap_A=0.2, px=px)
            t = truth[truth["cluster_id"] >= 0]
            cx, cy = t["x_A"].mean(), t["y_A"].mean()
            near = {}
            for sp in (False, True):
                det = detect_clusters(img, split=sp)
                near[sp] = det[np.hypot(det["x_A"] - cx, det["y_A"] - cy) < 25.0]
            sep_w += len(near[False]) == 2
            sep_s += len(near[True]) == 2
            # the split never merges what the watershed separated
            assert len(near[True]) >= len(near[False]), (seed, where)
            if len(near[False]) == 1 and len(near[True]) == 2:
                parts = near[True]["n_atoms"].to_numpy()
                whole = near[False]["n_atoms"].iloc[0]
                assert parts.sum() == pytest.approx(whole, rel=0.1), (seed, where, parts, whole)
            if len(near[True]) == 2:
                # each part matched to the nearer truth cluster: within 30 % of its size
                for _, d in near[True].iterrows():
                    g = t.groupby("cluster_id")
                    cen = g[["x_A", "y_A"]].mean()  # truth rows are columns
                    k = int(np.argmin(np.hypot(cen["x_A"] - d["x_A"], cen["y_A"] - d["y_A"])))
                    n_true = g["n_Pb0"].sum().iloc[k]
                    assert d["n_atoms"] == pytest.approx(n_true, rel=0.3), (seed, where, d)
    assert sep_s >= 11, (sep_w, sep_s)
    assert sep_w >= 11, (sep_w, sep_s)


@pytest.mark.parametrize("where", ["beside", "on"])
def test_isolated_elongated_cluster_not_split(where):
    """A single fcc cluster of aspect ratio 2 in the image plane (20-150 atoms) beside or on
    a crystal, at 2e3 and 5e3 e/Å²: one detection, as with the watershed alone (a single
    elongated projected ellipsoid is the one-cluster alternative of the split test).
    Measured on seeds 10-21 (bench_clusters): 0 of 48 split, compact spheres 0 of 48; here
    seeds 30-35, fresh.

    The count of a 20-atom cluster at 2e3 e/Å² scatters by about ±10 % with the shot-noise
    realisation ("on", seeds 30-41, n / truth: 0.75-1.01 before the CPU-independent noise,
    0.74-1.12 after; seed 34, 20 atoms, reads 22.3), so the library bias is checked on the
    mean ratio over the seeds and each seed only against a gross miscount."""
    ratios = []
    for seed in range(30, 36):
        rng = np.random.default_rng(seed)
        n = int(rng.choice([20, 40, 80, 150]))
        dose = (2e3, 5e3)[seed % 2]
        img, truth = _single(seed, n, where=where, dose=dose, aspect=2.0)
        t = truth[truth["cluster_id"] >= 0]
        det = detect_clusters(img)
        near = det[np.hypot(det["x_A"] - t["x_A"].mean(), det["y_A"] - t["y_A"].mean()) < 15.0]
        assert len(near) == 1, (seed, n, where, near)
        ratios.append(near["n_atoms"].iloc[0] / n)
        assert 0.6 < ratios[-1] < 1.25, (seed, n, near["n_atoms"].iloc[0])
    # compact-cluster library on an elongated cluster: -16...-10 % (bench_clusters)
    assert 0.7 < np.mean(ratios) < 1.1, ratios


def _single(seed, n, *, where, dose, aspect):
    """One fcc cluster of ``n`` atoms and in-plane aspect ratio ``aspect``: :func:`_frame`
    with a single cluster."""
    from perovstem.simulate import nanocrystal
    from perovstem.simulate.haadf import haadf_image

    rng = np.random.default_rng(seed + 1000)
    at = nanocrystal(edge_A=40.0, rng=seed)
    pos = at.get_positions()
    c, half = pos.mean(0), (pos.max(0) - pos.min(0)) / 2
    cl = fcc_cluster(n, rng, aspect, rng.uniform(0, np.pi))
    if where == "beside":
        shift = c + [half[0] + np.abs(cl[:, 0]).max() + 4.0, rng.uniform(-10, 10), 0.0]
    else:
        shift = c + [rng.uniform(-8, 8), rng.uniform(-8, 8), half[2] + 6.0]
    return haadf_image(
        _with_clusters(at, [cl + shift]),
        pixel_size_A=0.5,
        shape=(180, 180),
        center_A=(0, 0),
        dose_e_per_A2=dose,
        rng=seed,
    )


@pytest.mark.slow
def test_split_recall_on_degrading_crystal_kmc():
    """KMC series at 280 K and 6e3 e/Å²/s (5.5 and 4 nm crystals, seeds 141-144, not used
    to set the split), scored per frame against the projected truth objects: the split
    recovers touching clusters the watershed counted with a neighbour without losing
    precision or count accuracy.  First measured on seeds 141/143: recall 0.883 -> 0.913;
    on two CPU realisations of the same series the gain is smaller and sits on seed 144:
    true positives (no split -> split) per seed 141 / 143 / 142 / 144 are 113 -> 113,
    73 -> 73, 98 -> 98, 76 -> 78 (AVX-512) and 115 -> 116, 73 -> 73, 98 -> 98, 75 -> 78
    (AVX2 mode) of 124 / 80 / 113 / 81; pooled recall 0.905 -> 0.910 and 0.907 -> 0.917,
    precision 0.963 -> 0.960 and 0.953 -> 0.953, >= 10-atom counts within 15 % 0.680 ->
    0.688 and 0.662 -> 0.677.  With the blob markers (``insitu/_markers.py``) the marker
    watershed already separates them: tp / fp / fn no split -> split 378 / 23 / 20 -> 378
    / 24 / 20 (AVX-512, recall 0.950) and 376 / 25 / 22 -> 376 / 26 / 22 (AVX2, 0.945),
    within 15 % 0.712 -> 0.709 and 0.731 -> 0.739; the split must not lose any of it."""
    tot = {False: np.zeros(3), True: np.zeros(3)}
    errs = {False: [], True: []}
    for edge, seed in ((55.0, 141), (40.0, 143), (55.0, 142), (40.0, 144)):
        images, truths, kw, field, _ = degrading_frames(
            edge, rate=6e3, temperature_K=280.0, seed=seed
        )
        for img, tk in zip(images, truths, strict=True):
            for sp in (False, True):
                det = detect_clusters(img, split=sp, **kw)
                a, b, c, out = _score_frame(det, tk, field)
                tot[sp] += (a, b, c)
                errs[sp] += [e for e, inside in out if inside]
    (tp0, fp0, fn0), (tp1, fp1, fn1) = tot[False], tot[True]
    recall0, recall1 = tp0 / (tp0 + fn0), tp1 / (tp1 + fn1)
    prec0, prec1 = tp0 / (tp0 + fp0), tp1 / (tp1 + fp1)
    assert recall1 >= recall0, (tot[False], tot[True])
    assert recall1 >= 0.93, (tot[False], tot[True])
    assert prec1 >= prec0 - 0.01, (prec0, prec1)
    w0, w1 = (np.mean(np.abs(errs[sp]) < 0.15) for sp in (False, True))
    # the split no longer adds detections here (the markers separate these pairs), so
    # split vs no split differs by single clusters (0.712 -> 0.709 AVX-512, 0.731 ->
    # 0.739 AVX2): the split-mode counts are held to above the pre-marker split's (0.684
    # AVX-512 / 0.677 AVX2 measured on these series)
    assert w1 >= 0.69, (w0, w1)


def test_dome_model_sum_jacobian_and_sphere_spectrum():
    """The split's cluster profile: the analytic projected-sphere spectrum equals the FFT of
    a finely rendered sqrt(R² − r²) disc, the blurred model keeps the amplitude (sum), and
    the analytic Jacobian equals finite differences (position, log amplitude with the
    radius following it)."""
    from perovstem.insitu.clusters import _ball_spectrum, _DomeGrid

    # spectrum: render a sphere of R = 12 px on 512², compare along k_x
    n, r = 512, 12.0
    yy, xx = np.mgrid[:n, :n] - n // 2
    t = np.sqrt(np.clip(r * r - yy**2 - xx**2, 0, None))
    f = np.fft.fft2(np.fft.ifftshift(t / t.sum())).real[0, :40]
    q = 2 * np.pi * np.fft.fftfreq(n)[:40] * r
    np.testing.assert_allclose(_ball_spectrum(q), f, atol=0.01)

    g = _DomeGrid((22, 26), 2, 8, 11.7, 7.0, 1.0, 6.0)
    comps = np.array([[18.0, 20.0, 500.0], [25.0, 31.0, 200.0]])

    def rad(a):
        return 0.8 * np.cbrt(a)

    mod, jac = g.model(comps, rad(comps[:, 2]), 0.2, jac=True)
    assert mod.sum() * 4 == pytest.approx(700.0, rel=0.01)
    for i in range(2):
        for k in range(3):
            c = comps.copy()
            h = 1e-4 if k < 2 else 1e-5
            if k < 2:
                c[i, k] += h
            else:
                c[i, 2] *= np.exp(h)
            num = (g.model(c, rad(c[:, 2]), 0.2)[0] - mod) / h
            err = np.abs(num - jac[3 * i + k]).max() / np.abs(jac[3 * i + k]).max()
            assert err < 1e-3, (i, k, err)
    # derivative by the tail share
    num = (g.model(comps, rad(comps[:, 2]), 0.2 + 1e-6)[0] - mod) / 1e-6
    np.testing.assert_allclose(num, jac[-1], atol=1e-6 * np.abs(mod).max() + 1e-9)


def _dome_reference(g, comps, radii, tail):
    """The split profile by NumPy alone: np.interp of the sphere spectrum, phase ramps,
    filter and one irfft2 on the grid (the pre-numba construction)."""
    from scipy import fft as sfft

    from perovstem.insitu.clusters import _BALL_B, _BALL_Q

    off = g.pad * g.st
    spec = 0
    for (y, x, amp), r in zip(comps, radii, strict=True):
        ph = amp * np.exp(-2j * np.pi * (g.ky * (y + off) + g.kx * (x + off)))
        spec = spec + np.interp(g.q * r, _BALL_Q, _BALL_B, right=0.0) * ph
    out = sfft.irfft2(spec * (g.filt + tail * g.dfilt), s=g.full)
    return out[g.pad : g.pad + g.shape[0], g.pad : g.pad + g.shape[1]]


def test_split_fit_kernels_match_numpy_reference():
    """The compiled spectra of the split fits equal the NumPy construction (spheres and
    ellipsoids; a stack of ellipsoid parameter sets equals one-by-one evaluation), the
    batched forward-difference Jacobian equals scipy's "2-point" one, and a fit stopped
    early below a bound returns a χ² below it exactly when the full fit ends below it."""
    from scipy.optimize._numdiff import approx_derivative

    from perovstem.insitu.clusters import (
        _BALL_B,
        _BALL_Q,
        _DomeGrid,
        _ellipse_model,
        _fit_domes,
        _forward_jacobian,
    )

    g = _DomeGrid((22, 26), 2, 8, 11.7, 7.0, 1.0, 6.0)
    comps = np.array([[18.0, 20.0, 500.0], [25.0, 31.4, 200.0]])
    radii = 0.8 * np.cbrt(comps[:, 2])
    mod, _ = g.model(comps, radii, 0.2)
    ref = _dome_reference(g, comps, radii, 0.2)
    np.testing.assert_allclose(mod, ref, rtol=0, atol=1e-12 * np.abs(ref).max())

    # ellipsoid: np.interp of the spectrum at the stretched, rotated q
    def ell_ref(y, x, amp, r, eta, th, tail):
        from scipy import fft as sfft

        off = g.pad * g.st
        ku = g.kx * np.cos(th) + g.ky * np.sin(th)
        kv = -g.kx * np.sin(th) + g.ky * np.cos(th)
        q = 2 * np.pi * r * np.hypot(ku * np.exp(eta / 2), kv * np.exp(-eta / 2))
        ph = amp * np.exp(-2j * np.pi * (g.ky * (y + off) + g.kx * (x + off)))
        spec = np.interp(q, _BALL_Q, _BALL_B, right=0.0) * ph * (g.filt + tail * g.dfilt)
        out = sfft.irfft2(spec, s=g.full)
        return out[g.pad : g.pad + g.shape[0], g.pad : g.pad + g.shape[1]]

    pars = np.array(
        [[20.0, 24.0, 700.0, 6.5, 0.7, 0.4, 0.1], [15.2, 30.1, 300.0, 4.0, -0.3, 2.0, 0.3]]
    )
    stack = _ellipse_model(g, *pars.T)
    for k, p in enumerate(pars):
        one = _ellipse_model(g, *p)
        r = ell_ref(*p)
        np.testing.assert_allclose(one, r, rtol=0, atol=1e-12 * np.abs(r).max())
        np.testing.assert_allclose(stack[k], one, rtol=0, atol=1e-13 * np.abs(r).max())

    # forward differences: the same steps and values as scipy's "2-point" scheme
    def resids(pp):
        y, x, la, eta, th, tail, lev = pp.T
        return (
            _ellipse_model(g, y, x, np.exp(la), 0.8 * np.cbrt(np.exp(la)), eta, th, tail)[
                :, 5:15, 6:18
            ].reshape(len(pp), -1)
            - lev[:, None]
        )

    p0 = np.array([20.0, 24.0, np.log(700.0), 0.5, 0.4, 0.1, 0.0])
    j = _forward_jacobian(resids, p0)
    j_ref = approx_derivative(lambda p: resids(p[None])[0], p0, method="2-point")
    np.testing.assert_allclose(j, j_ref, rtol=1e-9, atol=1e-9 * np.abs(j_ref).max())

    # early stop: one dome plus noise; the full fit's chi2 decides against bounds just
    # above and below it, the stopped fit must decide the same
    rng = np.random.default_rng(3)
    sw = np.full(g.shape, 0.05)
    ew = g.model(np.array([[20.0, 24.0, 600.0]]), [0.8 * np.cbrt(600.0)], 0.1)[0]
    ew = ew + rng.normal(0, 0.05, g.shape)
    use = np.ones(g.shape, bool)
    init = np.array([[21.0, 23.0, 450.0]])

    def rad(a):
        return 0.8 * np.cbrt(np.clip(a, 0, None))

    chi, c = _fit_domes(ew, sw, use, init, rad, g)
    for bound in (chi * 1.01, chi * 0.99, chi * 3.0):
        chi_s, _ = _fit_domes(ew, sw, use, init, rad, g, stop_below=bound * (1 - 2e-4))
        assert (chi_s < bound) == (chi < bound), (bound, chi, chi_s)
    # a bound never reached leaves the fit unchanged
    chi_n, c_n = _fit_domes(ew, sw, use, init, rad, g, stop_below=0.5 * chi)
    assert chi_n == chi
    np.testing.assert_array_equal(c_n, c)


def test_cluster_radius_of_counts_compiled_equals_numpy():
    """The compiled radius of the split fits (counts → atoms by the library → equal-volume
    radius) equals the NumPy path value for value, below, inside and beyond the library,
    at 0, for negative and NaN counts."""
    from perovstem.insitu.clusters import _counts_to_atoms, _default_library, _fcc_radius_A

    f = _counts_to_atoms(_default_library(), 123.4)
    top = f.c[-1] * 123.4
    rng = np.random.default_rng(0)
    a = np.r_[rng.uniform(-100, 1.5 * top, 5000), 0.0, -1.0, top, 1.5 * top, f.c[5] * 123.4]
    a = np.r_[a, np.nan, 1e-300]
    ref = _fcc_radius_A(f(np.clip(a, 0, None))) / 0.2
    np.testing.assert_array_equal(f.radius_px(a, 0.2), ref)
    assert np.all(np.diff(ref[:5000][np.argsort(a[:5000])]) >= 0)  # monotone in the counts


def test_split_refuses_a_dome_centred_off_its_segment():
    """``tests/data/split_offsegment_dome.npz``: the fit window of one segment (excess,
    its error, labels 1 = the segment, 2 = neighbours; float32) of frame 7 of the KMC
    series of ``test_counts_of_a_frame_do_not_depend_on_where_the_series_starts`` in its
    AVX2 realisation (lattice angle 89.95°, 4000 e/Å², gain 1).  The two-dome fit put the
    second dome 51 px beyond the window's edge (62 px outside the frame), owning no
    pixel of the segment and 60 % of its counts: the excess sloping across the window,
    not a touching cluster.  The segment was then reported as a 47.8-atom one-pixel
    cluster outside the frame and its own part dropped (Pb0 of the frame 231), while at
    89.975° it was not split (260).  Both domes of a split must sit on the segment."""
    from perovstem.insitu.clusters import _counts_to_atoms, _default_library, _split_segments

    z = np.load(Path(__file__).resolve().parents[1] / "data" / "split_offsegment_dome.npz")
    px, a_px, angle, penalty = z["kw"]
    lab = z["labels"].astype(np.int32)
    out = _split_segments(
        z["e"].astype(float),
        z["sig"].astype(float),
        lab,
        np.array([True, False]),
        z["tot"],
        n_of=_counts_to_atoms(_default_library(), 4000.0),
        px=float(px),
        a_px=float(a_px),
        angle_deg=float(angle),
        penalty=float(penalty),
    )
    for sp in out.values():  # a split, if any, has both domes on the segment
        y, x = np.rint(sp["comps"][:, :2]).astype(int).T
        inside = (y >= 0) & (y < lab.shape[0]) & (x >= 0) & (x < lab.shape[1])
        assert inside.all(), sp["comps"]
        assert (lab[y, x] == 1).all(), sp["comps"]
        assert all((sp["assign"] == j).any() for j in range(len(y)))


def test_two_dome_fits_stay_in_the_segment_box(monkeypatch):
    """The two-dome fits of the segment of ``tests/data/split_offsegment_dome.npz`` keep
    both centres inside the segment's bounding box (bounded parameters, ``_fit_domes``
    ``box``).  Unbounded (the old fit), the start with an 80/20 division runs away on
    this window in both CPU modes (AVX-512 and AVX2 alike): a dome at (146.8, 3.9) px in
    a 100 × 86 window, χ² 3922 against 4931 for the in-box optimum (it then fails the
    on-segment test and the segment stays whole; in the KMC frame the window was cut
    from, a dome 62 px outside the frame).  Every dome the fits return must lie on the
    segment's box, whatever their start."""
    import perovstem.insitu.clusters as C

    z = np.load(Path(__file__).resolve().parents[1] / "data" / "split_offsegment_dome.npz")
    px, a_px, angle, penalty = z["kw"]
    lab = z["labels"].astype(np.int32)
    fits = []
    fit = C._fit_domes

    def spy(*args, **kw):
        chi, c = fit(*args, **kw)
        if len(args[3]) == 2:
            fits.append(c[:, :2].copy())
        return chi, c

    monkeypatch.setattr(C, "_fit_domes", spy)
    C._split_segments(
        z["e"].astype(float),
        z["sig"].astype(float),
        lab,
        np.array([True, False]),
        z["tot"],
        n_of=C._counts_to_atoms(C._default_library(), 4000.0),
        px=float(px),
        a_px=float(a_px),
        angle_deg=float(angle),
        penalty=float(penalty),
    )
    assert fits, "the segment was not fitted with two domes"
    # the fit window starts ceil(a/2) + a//4 frame pixels before the segment (clipped at 0)
    yy, xx = np.nonzero(lab == 1)
    pad = int(np.ceil(a_px / 2)) + max(1, int(a_px // 4))
    y0, x0 = max(0, yy.min() - pad), max(0, xx.min() - pad)
    for c in fits:
        y, x = c[:, 0] + y0, c[:, 1] + x0
        assert ((y >= yy.min()) & (y <= yy.max())).all(), (c, y0, yy.min(), yy.max())
        assert ((x >= xx.min()) & (x <= xx.max())).all(), (c, x0, xx.min(), xx.max())


def test_host_ratio_beside_and_on_a_crystal():
    """``host_ratio`` (host counts under a count's aperture per count of the cluster) is
    small for a cluster beside a 4 nm crystal and well above 1 on top of it, where the
    count had the whole crystal thickness under it (measured, seeds 1-3 of the bench
    construction: 0.02-0.2 beside, 2.1-4.4 on top; here seeds 40 / 41: 0.022 / 0.071
    beside, 2.18 / 2.93 on top)."""
    for seed, n in ((40, 150), (41, 80)):
        ratio = {}
        for where in ("beside", "on"):
            img, truth = _single(seed, n, where=where, dose=5e3, aspect=1.0)
            t = truth[truth["cluster_id"] >= 0]
            det = detect_clusters(img)
            d = det.iloc[int(np.argmin(np.hypot(det["x_A"] - t["x_A"].mean(),
                                                det["y_A"] - t["y_A"].mean())))]  # fmt: skip
            assert d["n_atoms"] == pytest.approx(n, rel=0.15), (seed, where, d["n_atoms"])
            ratio[where] = d["host_ratio"]
        assert ratio["beside"] < 0.1, (seed, ratio)
        assert ratio["on"] > 1.0, (seed, ratio)
