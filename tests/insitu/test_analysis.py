from __future__ import annotations

import numpy as np
import pytest

from perovstem import ParameterError

_IMAGING = {"pixel_size_A": 0.5, "drift_A_per_s": (0.8, -0.5), "jitter_A": 0.3}


@pytest.fixture(scope="module")
def sim_runs(kmc_imaged):
    """(trajectory, series, truth) of a 4 nm cube at 1.5·10³ e⁻/Å²/s, 300 K and 3·10³, 260 K."""
    return [
        kmc_imaged(
            40.0, rate=phi, temperature_K=temp, seed=seed, crystal_seed=0, rng=seed, **_IMAGING
        )
        for phi, temp, seed in ((1.5e3, 300.0, 1), (3e3, 260.0, 2))
    ]


@pytest.fixture(scope="module")
def sim_series(sim_runs):
    return [(s, truth) for _, s, truth in sim_runs]


def test_simulator_drift_within_0p1_px(sim_series):
    from perovstem.insitu import register_drift

    for s, truth in sim_series:
        t = truth["drift"][["dy_px", "dx_px"]].to_numpy()
        t = t - t[0]
        e = register_drift(s)[["dy_px", "dx_px"]].to_numpy()
        assert np.sqrt(np.mean((e - t) ** 2)) < 0.1


@pytest.fixture(scope="module")
def analysed0(sim_series):
    from perovstem.insitu import analyze_series

    return analyze_series(sim_series[0][0], ci="wald")


def test_analyze_series_end_to_end(sim_series, analysed0):
    s, truth = sim_series[0]
    res = analysed0
    f = res.frames
    assert len(f) == s.n_frames
    np.testing.assert_allclose(f["cumulative_dose_e_per_A2"], s.cumulative_dose_e_per_A2)
    assert f["phase"].iloc[0] == "CsPbBr3"
    assert (f["area_A2"] > 0).all()
    # tracks and lineage are consistent
    assert set(res.clusters["track_id"]) == set(res.lineage["track_id"])
    assert set(res.events["kind"]) <= {
        "birth",
        "merge",
        "merge_uncertain",
        "death",
        "overlap",
        "separation",
        "unresolved",
    }
    assert {"process", "selected_model", "value", "ci_low", "ci_high"} <= set(res.summary.columns)
    assert set(res.tables()) == {"frames", "drift", "clusters", "lineage", "events", "summary"}
    assert f["n_Pb0_detected"].iloc[-1] > 0
    # host-model flags of detect_clusters reach the frames table, counted per frame
    flagged = ~res.clusters["host_ok"].astype(bool)
    per_frame = res.clusters[flagged].groupby("frame").size()
    got = f.set_index("frame")["n_clusters_host_flagged"]
    np.testing.assert_array_equal(got.reindex(per_frame.index), per_frame)
    assert (got.drop(per_frame.index) == 0).all()
    assert (f.loc[~f["skipped"], "host_model"] != "").all()


def test_cluster_positions_are_in_frame0_coordinates(sim_series, analysed0):
    """Clusters are detected on the raw frames while the drift is registered beside the
    detection pass; their positions are then moved into frame-0 coordinates: the clusters
    of >= 20 atoms in the frames that drifted > 3 Å sit near the truth positions minus the
    true drift since frame 0 (median distance 0.75 Å over 4 such series, 1.7 Å on the
    worst; uncorrected positions are ~9 Å off, wrongly signed ones ~18 Å)."""
    s, truth = sim_series[0]
    drift = truth["drift"][["dy_A", "dx_A"]].to_numpy()
    drift = drift - drift[0]
    tc = truth["clusters"]
    det = analysed0.clusters
    frames = [k for k in range(s.n_frames) if np.hypot(*drift[k]) > 3.0]
    assert len(frames) >= 4
    dists = []
    for k in frames:
        t = tc[(tc["frame"] == k) & (tc["n_atoms"] >= 20)]
        d = det[det["frame"] == k]
        if not len(t) or not len(d):
            continue
        ty = t["y_A"].to_numpy() - drift[k, 0]
        tx = t["x_A"].to_numpy() - drift[k, 1]
        dd = np.hypot(ty[:, None] - d["y_A"].to_numpy(), tx[:, None] - d["x_A"].to_numpy())
        dists += list(dd.min(axis=1))
    assert len(dists) >= 8
    assert np.median(dists) < 2.5 and np.mean(np.asarray(dists) < 3.0) >= 0.75


def test_detection_beside_the_registration_matches_detection_after_it(sim_series):
    """Detecting on the raw frames beside the registration (default) and on the
    registered frames after it (REGISTER_BESIDE False) find the same clusters at the same
    frame-0 positions (median 0.1-0.3 Å apart on 3 series) and Pb⁰ totals within 10 %.
    The sub-pixel Fourier shift of the registered frames is not neutral for detection:
    over 5 series (4 nm, 0.5 Å, 12 frames) Pb⁰ sums were 1-9 % higher and recall 0.01
    higher on shifted frames than on raw ones (integer shifts: same as raw); the detector
    is tuned and benchmarked on unshifted frames."""
    from perovstem.insitu import analysis

    s, _ = sim_series[1]
    beside = analysis.analyze_series(s, summary=False)
    try:
        analysis.REGISTER_BESIDE = False
        after = analysis.analyze_series(s, summary=False)
    finally:
        analysis.REGISTER_BESIDE = True
    a, b = beside.clusters, after.clusters
    dists, dn, n = [], 0, 0
    for k in range(s.n_frames):
        ak, bk = a[a["frame"] == k], b[b["frame"] == k]
        big = bk[bk["n_atoms"] >= 10]
        dn += abs(len(ak[ak["n_atoms"] >= 10]) - len(big))
        n += len(big)
        if len(ak) and len(big):
            dd = np.hypot(
                big["y_A"].to_numpy()[:, None] - ak["y_A"].to_numpy(),
                big["x_A"].to_numpy()[:, None] - ak["x_A"].to_numpy(),
            )
            dists += list(dd.min(axis=1))
    assert n >= 20 and dn <= 0.2 * n
    assert np.median(dists) < 0.5
    pa = beside.frames["n_Pb0_detected"].sum()
    pb = after.frames["n_Pb0_detected"].sum()
    assert abs(pa - pb) < 0.1 * pb


def test_pb0_atoms_on_degrading_crystal(sim_series):
    from perovstem.insitu import analyze_series

    s, truth = sim_series[0]
    f = analyze_series(s, summary=False, phase_check=False).frames
    truth_end = truth["frames"]["n_cluster_atoms"].iloc[-1]
    assert 0.67 * truth_end < f["n_Pb0_detected"].iloc[-1] < 1.5 * truth_end


def test_analyze_series_carries_the_host_reference(kmc_imaged):
    """Frames whose clusters cover the crystal cannot measure the host's empty-site ratio
    alone ("no_reference": every segment Pb-like, host Pb counted as clusters); a frame
    right after one that measured it is detected again with the median ratio of the
    earlier frames, and so is a later one whose host lattice is still seen
    (``host_lattice_power`` >= HOST_LATTICE_MIN), and only such frames (once the host is
    gone, a carried ratio reads the registry of pure Pb clusters as host excess).  3 nm
    KMC crystals at 300 K; which late frames are "no_reference" depends on the KMC
    realisation (seed 73 on one AVX-512 machine, 74-76 on another), so four seeds are
    run and at least one carried frame is required; before, nothing was carried.  The
    frames carried for their lattice hold host Pb (seed 75 frames 8-9 here; before, only
    the frame right after a measured one was carried)."""
    from perovstem.insitu import analyze_series, detect_clusters
    from perovstem.insitu._host import HOST_LATTICE_MIN

    n_carried = 0
    for seed in (73, 74, 75, 76):
        _, s, truth = kmc_imaged(
            30.0, rate=3e3, temperature_K=300.0, seed=seed, n_frames=10, rng=seed, **_IMAGING
        )
        f = analyze_series(s, summary=False, phase_check=False, crystal=False).frames
        used = f["host_reference_used"].to_numpy(bool)
        model = f["host_model"].to_numpy(str)
        assert (model[used] == "lattice").all(), seed
        measured = (model == "lattice") & ~used
        after = np.r_[False, measured[:-1]]
        # right after a measured frame no frame stays without a host model ...
        assert not (after & (model == "no_reference")).any(), (seed, model, used)
        power = f["host_lattice_power"].to_numpy(float)
        seen = power >= HOST_LATTICE_MIN
        # ... nor where the host lattice is still clearly seen (the rule also wants the
        # power above the threshold by twice its noise: <= 0.0034 at these doses) ...
        assert not ((power >= 2 * HOST_LATTICE_MIN) & (model == "no_reference")).any(), seed
        # ... and only there is the ratio carried, into frames that still hold host Pb
        assert not (used & ~after & ~seen).any(), (seed, model, used, seen)
        assert (truth["frames"]["n_Pb_host"].to_numpy()[used & ~after] > 0).all(), seed
        n_carried += int(used.sum())
    assert n_carried >= 1
    with pytest.raises(ParameterError, match="host_reference.*0.7"):
        detect_clusters(np.ones((64, 64)), pixel_size_A=0.5, host_reference=0.7)


def _truth_column_counts(tr, s, truth, cols, k):
    """Host atoms of KMC frame ``k`` on each analysed column (registered-frame coordinates).

    Pb–Br columns are counted by their Pb (+Cd) atoms (the Pb dominates their
    cross-section), Br and Cs columns by their Br and Cs atoms; Pb⁰ adatoms and clusters
    (label ≠ 0) are not host atoms.
    """
    from scipy.spatial import cKDTree

    origin = np.asarray(s.metadata["lab_origin_A"], float)[:2]
    shift0 = truth["drift"][["dx_A", "dy_A"]].to_numpy()[0]
    a = tr.atoms(k)
    p = a.get_positions()[:, :2] + shift0 - origin
    sym = np.asarray(a.get_chemical_symbols())
    host = a.arrays["label"] == 0 if "label" in a.arrays else np.ones(len(a), bool)
    d, i = cKDTree(cols[["x_A", "y_A"]].to_numpy()).query(p)
    elements = {"PbBr": ("Pb", "Cd"), "Br": ("Br",), "Cs": ("Cs",)}
    want = np.array(
        [e in elements[t] for e, t in zip(sym, cols["type"].to_numpy()[i], strict=True)]
    )
    return np.bincount(i[host & want & (d < 1.2)], minlength=len(cols))


@pytest.fixture(scope="module")
def column_runs(sim_runs, kmc_imaged):
    """analyze_series(columns=True) on the 300 K series and on a second dose rate."""
    second = kmc_imaged(40.0, rate=5e3, seed=3, crystal_seed=0, rng=3, **_IMAGING)
    return [column_run(*run) for run in (sim_runs[0], second)]


def column_run(tr, s, truth):
    """``analyze_series(columns=True)`` and the truth counts of the first and last analysed
    frames: ``(result, n0, n1)``."""
    from perovstem.insitu import analyze_series

    res = analyze_series(s, columns=True, summary=False, phase_check=False, crystal=False)
    c = res.columns
    n0 = _truth_column_counts(tr, s, truth, c, 0)
    n1 = _truth_column_counts(tr, s, truth, c, c.attrs["frames"][-1])
    return res, n0, n1


def _br_within_one(res, n0, n1):
    """(Br columns whose atoms lost are within ±1 of the truth, Br columns)."""
    c = res.columns
    m = (c["type"] == "Br").to_numpy()
    err = c["atoms_lost"].to_numpy()[m] - (n0 - n1)[m]
    return int(np.sum(np.abs(err) <= 1)), int(m.sum())


def test_atoms_lost_per_column_against_simulator_truth(column_runs, kmc_imaged):
    """Per-column atoms lost from the HMM Viterbi paths against the KMC's host atoms.

    The Br fraction within ±1 at 1.5e3 e⁻/Å²/s scatters with the realisation (seeds 1, 3-7:
    0.77-0.84 with the old noise, 0.73-0.85 with the CPU-independent noise, seed 1 0.729),
    so it is pooled over seeds 1, 3 and 4."""
    # measured (seeds fixed; fitted-SCS library, widths held from the first frames):
    # within ±1 Pb-Br 0.98 / 0.98, Cs 0.89 / 0.91, Br 0.84 / 0.70 (1.5e3 / 5e3 e⁻/Å²/s);
    # at 5e3 frames 7 and 11 are registered 0.37 / 0.53 px off (flagged, beyond 0.25 px of
    # the column reference) and are left out, so the losses run to frame 10: counted
    # through those drifts the Br figure read 0.77 (frames 0-11).  Before (tabulated
    # library, widths re-fitted per frame) 0.98 / 0.83, 0.91 / 0.73, 0.80 / 0.61
    need = {  # (low dose rate, high dose rate) fractions of columns within ±1
        "PbBr": (0.95, 0.95),
        "Cs": (0.85, 0.85),
        "Br": (0.75, 0.65),
    }
    for j, (res, n0, n1) in enumerate(column_runs):
        c = res.columns
        assert {"column", "type", "x_A", "y_A", "atoms_lost", "atoms_lost_std"} <= set(c)
        assert set(c["type"]) == {"PbBr", "Br", "Cs"} and len(c) > 200
        err = c["atoms_lost"].to_numpy() - (n0 - n1)
        for typ, lim in need.items():
            if typ == "Br" and j == 0:
                continue  # pooled over seeds below
            m = (c["type"] == typ).to_numpy()
            assert np.mean(np.abs(err[m]) <= 1) >= lim[j], typ
        # totals: Pb-Br 110/124, 306/315; at 5e3 Cs 474/488, Br 516/547 (to frame 10)
        lost = c["atoms_lost"].to_numpy()
        for typ in ("PbBr",) if j == 0 else ("PbBr", "Cs", "Br"):
            m = (c["type"] == typ).to_numpy()
            assert lost[m].sum() == pytest.approx((n0 - n1)[m].sum(), rel=0.15), typ
        # counts of the first frame: measured Pb-Br 0.84 / 0.77, Cs 0.89 / 0.95, Br 0.77 /
        # 0.67 (before Br 0.87 / 0.40: at 5e3 e⁻/Å² per frame +0.9 atom high)
        first = c["n_atoms_first"].to_numpy() == n0
        for typ, lim in (("PbBr", 0.75), ("Cs", 0.8), ("Br", 0.65)):
            assert np.mean(first[(c["type"] == typ).to_numpy()]) >= lim, typ
        cc = res.column_counts
        assert len(cc) == len(c) * len(c.attrs["frames"])
        assert set(c.attrs["frames"]) <= set(res.frames.loc[~res.frames["skipped"], "frame"])
        assert "columns" in res.tables() and "column_counts" in res.tables()
    runs = [column_runs[0]] + [
        column_run(
            *kmc_imaged(
                40.0, rate=1.5e3, temperature_K=300.0, seed=k, crystal_seed=0, rng=k, **_IMAGING
            )
        )
        for k in (3, 4)
    ]
    hit, tot = np.sum([_br_within_one(*r) for r in runs], axis=0)
    assert hit / tot >= need["Br"][0], (hit, tot)


def test_atoms_lost_needs_dose(sim_series):
    from perovstem.insitu import analyze_series

    s, _ = sim_series[0]
    with pytest.raises(ParameterError, match="dose"):
        analyze_series(s.replace(dose_e_per_A2=None), columns=True, summary=False)
    with pytest.raises(ParameterError, match="column_options"):
        analyze_series(s, columns=True, column_options={"bogus": 1})


def test_summary_conditions_of_a_real_log(sim_series):
    """Time stamps jittered by 1 ms and a logged temperature with 0.1 K noise that steps
    from 300 to 350 K half-way: two conditions, each hop matched to its frame's condition
    (before: every frame its own condition and a DataError about `tracks`)."""
    from perovstem.insitu import analyze_series

    s, _ = sim_series[0]
    rng = np.random.default_rng(0)
    n = s.n_frames
    temp = np.where(np.arange(n) < n // 2, 300.0, 350.0) + rng.normal(0, 0.1, n)
    js = s.replace(time_s=s.time_s + rng.normal(0, 1e-3, n), temperature_K=temp)
    res = analyze_series(js, ci="wald", phase_check=False)
    conds = res.summary[res.summary["condition"] >= 0]
    assert set(conds["condition"]) == {0, 1}
    assert sorted(conds.groupby("condition")["temperature_K"].first()) == pytest.approx(
        [300.0, 350.0], abs=0.5
    )
    # the split is said (a series with pauses otherwise got an empty summary silently)
    assert any("splits the series into 2 conditions" in n for n in res.notes)


def test_crystal_intensity_does_not_scale_with_detector_gain(sim_series):
    """The same frames recorded with gain 3 and offset 1000 (both in the metadata): the
    crystal's integrated intensity and the summary's mass-loss rate are unchanged (before:
    3× both, a number that depended on the detector setting)."""
    from perovstem.insitu import analyze_series

    s, _ = sim_series[1]
    md = {**s.metadata, "gain": 3.0, "offset": 1000.0}
    g3 = s.replace(data=np.asarray(s.data, float) * 3.0 + 1000.0, metadata=md)
    kw = {"register": False, "phase_check": False, "ci": "wald"}
    a, b = analyze_series(s, **kw), analyze_series(g3, **kw)
    np.testing.assert_allclose(b.frames["integrated_counts"], a.frames["integrated_counts"])
    ma = a.summary[a.summary["process"] == "mass_loss"]["value"].to_numpy(float)
    mb = b.summary[b.summary["process"] == "mass_loss"]["value"].to_numpy(float)
    assert len(ma) == 1
    np.testing.assert_allclose(mb, ma, rtol=1e-6)


def test_corrupted_frame_reported(sim_series):
    from perovstem.insitu import analyze_series

    s, _ = sim_series[1]
    data = np.array(s.data, float)
    data[5] = 0.0
    res = analyze_series(s.replace(data=data), summary=False, phase_check=False)
    assert res.skipped == [5]
    row = res.frames.loc[5]
    assert row["skipped"] and "constant" in row["reason"]
    assert np.isnan(row["n_clusters"])
    assert res.drift.loc[5, "skipped"]


def test_bad_input():
    from perovstem.insitu import analyze_series

    with pytest.raises(ParameterError, match="Series"):
        analyze_series(np.zeros((3, 8, 8)))


def test_unregistrable_series_says_how_to_go_on():
    """Frames of independent noise cannot be registered: the error says so and names the
    way to analyse them without drift correction."""
    from perovstem import DataError, Series
    from perovstem.insitu import analyze_series

    rng = np.random.default_rng(0)
    s = Series(rng.poisson(5.0, (4, 96, 96)).astype(float), 0.5, dose_e_per_A2=100.0)
    with pytest.raises(DataError, match="no frame pair correlates.*--no-register"):
        analyze_series(s)


# --- image-derived Br loss (quantify.br_loss) wired into analyze_series -------------------

D_BR_TRUE = 3e4  # KineticParameters default D_Br_e_per_A2 of the simulator


@pytest.fixture(scope="module", params=[(40.0, 5e3, 6, 1), (50.0, 5e3, 6, 3)], ids=str)
def br_series(request, kmc_imaged):
    """KMC series (two sizes, two seeds; cumulative dose 3·10⁴ e⁻/Å² ≈ D_Br) with drift."""
    edge, rate, nf, seed = request.param
    tr, s, _ = kmc_imaged(
        edge,
        rate=rate,
        seed=seed,
        n_frames=nf,
        pixel_size_A=0.5,
        drift_A_per_s=(0.3, -0.2),
        rng=seed + 100,
    )
    return s, tr.frame_table, seed


def test_analyze_series_br_loss_row_from_images(br_series):
    """The summary's Br-loss row is the exposed-Br hazard fit of the image-derived loss."""
    from perovstem.insitu import analyze_series

    s, ft, seed = br_series
    res = analyze_series(s, br_loss=True, br_loss_options={"rng": seed + 7}, ci="wald")
    f = res.frames
    assert {"n_Br_lost_image", "n_Br_exposed_image", "n_Br_bulk_image"} <= set(f.columns)
    # the image-derived cumulative loss follows the simulator's within 10 % at the end
    k = res.br_loss.info["n_frames_used"] - 1
    lost_true = ft["n_Br_desorbed"].iloc[: k + 1].sum()
    assert abs(f["n_Br_lost_image"].iloc[k] / lost_true - 1) < 0.10
    rows = res.summary[res.summary["process"] == "br_loss"]
    assert len(rows) == 1
    row = rows.iloc[0]
    assert row["observable"] == "n_Br_lost_image"
    assert row["selected_model"] == "br_exposed_hazard"
    assert row["param"] == "D_Br_e_per_A2"
    assert abs(row["value"] / D_BR_TRUE - 1) < 0.10
    assert row["ci_low"] < D_BR_TRUE < row["ci_high"]
    assert "br_loss" in res.tables()
    # the facet termination the templates assumed is said (not measured from the images)
    assert any("CsBr-terminated" in n for n in res.notes), res.notes
    # without the option: the row is the first-order intensity fit, not the image hazard
    off = analyze_series(s, br_loss=False, ci="wald", phase_check=False)
    assert "n_Br_lost_image" not in off.frames
    assert not (off.summary["selected_model"] == "br_exposed_hazard").any()


def test_analyze_series_br_loss_needs_dose_and_notes_failures(br_series):
    from perovstem.insitu import analyze_series

    s, _, _ = br_series
    with pytest.raises(ParameterError, match="dose"):
        analyze_series(s.replace(dose_e_per_A2=None), br_loss=True, summary=False)
    bad = np.array(s.data, float)
    bad[2] = np.nan  # an unusable frame before 5 usable ones: no image Br loss, a note
    res = analyze_series(s.replace(data=bad), br_loss=True, summary=False, phase_check=False)
    assert res.skipped == [2]
    assert res.br_loss is None
    assert any("frame 2" in n for n in res.notes)
    with pytest.raises(ParameterError, match="lattice_A"):
        analyze_series(s, br_loss=True, br_loss_options={"lattice_A": 6.0}, summary=False)


# --- scan-distortion correction pass-through ----------------------------------------------


def _row_jittered(s, amp, seed):
    """Shift the scan lines of every frame by a smooth, frame-specific x offset (px)."""
    rng = np.random.default_rng(seed)
    data = np.array(s.data, float)
    m, n = data.shape[1:]
    x = np.arange(n, dtype=float)
    jit = []
    for k in range(len(data)):
        j = amp * np.sin(np.arange(m) / rng.uniform(10, 16) + rng.uniform(0, 2 * np.pi))
        for i in range(m):
            data[k, i] = np.interp(x - j[i], x, data[k, i])
        jit.append(j)
    return s.replace(data=data), np.array(jit)


def test_analyze_series_scan_correction_reaches_apply_drift(sim_series):
    """With row jitter the rms line offset removed follows the jitter put in (relative to
    the series mean and the frame's own mean); without jitter it is small."""
    from perovstem.insitu import analyze_series

    s, _ = sim_series[0]
    opts = {"band_rows": 4, "smooth_rows": 1.0}
    kw = {"summary": False, "phase_check": False, "crystal": False}
    js, jit = _row_jittered(s, 1.0, 5)
    res = analyze_series(js, scan_correction=True, scan_options=opts, **kw)
    rms = res.frames["scan_rms_line_offset_px"].to_numpy()
    rel = jit - jit.mean(axis=0)
    rel = rel - rel.mean(axis=1, keepdims=True)
    m = s.shape[1]
    true_rms = np.sqrt(np.mean(rel[:, m // 4 : -m // 4] ** 2, axis=1))  # rows of the crystal
    assert np.median(np.abs(rms - true_rms)) < 0.25, (rms, true_rms)
    assert np.mean(rms) > 0.4
    clean = analyze_series(s, scan_correction=True, scan_options=opts, **kw)
    assert np.mean(clean.frames["scan_rms_line_offset_px"]) < 0.5 * np.mean(rms)
    plain = analyze_series(js, **kw)
    assert "scan_rms_line_offset_px" not in plain.frames
    with pytest.raises(ParameterError, match="scan_options"):
        analyze_series(s, scan_correction=True, scan_options={"bands": 3}, **kw)


def test_shift_frame_matches_spline_and_keeps_noise():
    """Integer + Fourier sub-pixel shift: same content as a cubic-spline shift, exact for
    whole pixels, and white noise keeps its variance (a spline shift by ½ px low-passes it
    to ~0.57), so the per-frame column fits see the noise the fitted library assumes."""
    from scipy import ndimage

    from perovstem.insitu.analysis import shift_frame

    y, x = np.mgrid[:128, :160]
    img = np.exp(-((x - 70.3) ** 2 + (y - 60.7) ** 2) / 40.0)
    img += 0.5 * np.exp(-((x - 100.0) ** 2 + (y - 40.0) ** 2) / 15.0)
    for s in ((0.3, -0.4), (5.6, -7.2), (-0.5, 0.5)):
        out = shift_frame(img, s)
        ref = ndimage.shift(img, s, order=3, mode="nearest")
        assert np.abs(out - ref).max() < 2e-3
        cy, cx = ((out * y).sum() / out.sum(), (out * x).sum() / out.sum())
        cy0, cx0 = ((img * y).sum() / img.sum(), (img * x).sum() / img.sum())
        assert cy - cy0 == pytest.approx(s[0], abs=1e-3)
        assert cx - cx0 == pytest.approx(s[1], abs=1e-3)
    assert np.array_equal(shift_frame(img, (3.0, -2.0))[3:, :-2], img[:-3, 2:])
    for seed in (0, 1):
        noise = np.random.default_rng(seed).normal(0.0, 1.0, (256, 256))
        inner = (slice(8, -8), slice(8, -8))
        assert np.var(shift_frame(noise, (0.5, 0.5))[inner]) == pytest.approx(1.0, abs=0.03)
        assert np.var(ndimage.shift(noise, (0.5, 0.5), order=3)[inner]) < 0.7


def test_without_dose_cluster_areas_are_not_reported_as_atoms(sim_series):
    """No dose: clusters are tracked by area (Å²), which must not appear as Pb⁰ atom counts
    nor scale the per-atom hop rate Γ₁ = Γ_c·n^(4/3) (it was 20× off through that)."""
    from perovstem.insitu import analyze_series

    s, _ = sim_series[0]
    res = analyze_series(s.replace(dose_e_per_A2=None), summary=True, ci="wald")
    fr = res.frames
    assert (fr["n_clusters"] > 0).any()
    assert fr.loc[fr["n_clusters"] > 0, "n_Pb0_detected"].isna().all()
    assert fr["mean_cluster_atoms"].isna().all()
    assert res.clusters["n_atoms"].isna().all()
    assert "mobility" not in set(res.summary["process"])
    assert any("mobility not measured" in n for n in res.notes)


def test_pipeline_cluster_step_without_dose_tracks_by_area(sim_series):
    """The ``insitu.clusters`` pipeline step on a series without dose: it stopped with
    "`clusters` has non-finite value(s) in n_atoms"; it must track by area and report the
    Pb⁰ atoms as unknown (NaN), not 0."""
    from _insitu_kmc import ClusterStepContext

    from perovstem.pipeline.steps import insitu as steps

    s, _ = sim_series[0]
    step = getattr(steps.insitu_clusters, "__wrapped__", steps.insitu_clusters)
    counts = step(ClusterStepContext(), s.replace(dose_e_per_A2=None))["counts"]
    assert (counts["n_clusters"] > 0).any()
    assert counts.loc[counts["n_clusters"] > 0, "n_Pb0_detected"].isna().all()
    assert "cumulative_births" in counts


def test_counts_of_a_frame_do_not_depend_on_where_the_series_starts(monkeypatch):
    """On a degraded frame the strongest reflection is the host's 110 (4.2 Å, 45° off the
    cell axes).  analyze_series took the host orientation from it raw when that frame came
    first: the same frame gave 371 Pb⁰ atoms analysed from there and 280 within the whole
    series (truth 157).  Now the 110 names the cell axes (lattice.host_cell).  A frame
    that takes the host's empty-site ratio from earlier frames (``host_reference_used``:
    its clusters cover the crystal) depends on that history by design (frame 6 here: 247
    Pb⁰ within the series, 264 analysed from there, truth 155; frame 7, whose host
    lattice is still seen, is carried too since the carry follows the lattice): the
    carry is switched off here, so that both frames compare.
    In the AVX2 realisation frame 7 read 260 within the series and 231 from frame 6: the
    lattice angle of the first frame (89.97° vs 89.87°) decided whether the two-dome split
    of one segment put a dome far outside the frame (test_cluster_split); such a split is
    refused now (260 at every angle 89.80-90.05°; 221 in both contexts natively)."""
    from perovstem.insitu import analyze_series, estimate_lattice
    from perovstem.insitu._host import HostReference
    from perovstem.insitu.lattice import host_cell
    from perovstem.simulate import degradation_kmc, insitu_series, nanocrystal

    tr = degradation_kmc(
        nanocrystal(edge_A=35.0, rng=0),
        n_frames=8,
        frame_time_s=1.0,
        dose_rate_e_per_A2_s=4e3,
        temperature_K=300.0,
        rng=3,
    )
    s, _ = insitu_series(tr, pixel_size_A=0.5, rng=3)
    data = np.asarray(s.data, float)
    a6, ang6, _ = estimate_lattice(data[6], 0.5)
    assert 3.6 < a6 < 4.5  # the premise: the 110 outshines the 100 on this frame
    cell, ang = host_cell(a6, ang6)
    assert cell == pytest.approx(5.9, abs=0.2)
    assert min(ang % 90, 90 - ang % 90) < 2.0  # the cell axes of frame 0 (0°/90°)
    kw = {"register": False, "summary": False, "phase_check": False, "crystal": False}
    monkeypatch.setattr(HostReference, "reference", lambda *a, **k: None)
    fw = analyze_series(s, **kw).frames.iloc[6:]
    whole = fw["n_Pb0_detected"].to_numpy()
    own = ~fw["host_reference_used"].to_numpy(bool)
    assert own.all()
    late = s.replace(
        data=data[6:],
        time_s=s.time_s[6:],
        dose_e_per_A2=s.dose_e_per_A2[6:],
        temperature_K=None,
    )
    got = analyze_series(late, **kw).frames["n_Pb0_detected"].to_numpy()
    np.testing.assert_allclose(got[own], whole[own], rtol=0.01)  # angle 89.87° vs 89.96°


def test_crystal_at_the_frame_border_is_said():
    """A field that cuts the crystal: its area and intensity change with the drift, not only
    with the degradation, and nothing said so.  Now a frames column and a note."""
    from perovstem.insitu import analyze_series
    from perovstem.simulate import degradation_kmc, insitu_series, nanocrystal

    tr = degradation_kmc(
        nanocrystal(edge_A=35.0, rng=0),
        n_frames=4,
        frame_time_s=1.0,
        dose_rate_e_per_A2_s=4e3,
        temperature_K=300.0,
        rng=3,
    )
    s, _ = insitu_series(tr, pixel_size_A=0.5, rng=3)
    kw = {"register": False, "summary": False, "phase_check": False}
    whole = analyze_series(s, **kw)
    assert not whole.frames["crystal_at_border"].any()
    assert not any("frame border" in n for n in whole.notes)
    cut = analyze_series(s.replace(data=np.asarray(s.data)[:, 60:, 60:].copy()), **kw)
    assert cut.frames["crystal_at_border"].all()
    assert any("reaches the frame border in 4 of 4 frames" in n for n in cut.notes)


@pytest.mark.parametrize(("zone", "said"), [("011", True), ("001", False)])
def test_non_square_host_lattice_is_said(zone, said):
    # cluster detection removes the host with the square [001] cell: on a [011] crystal
    # (projected cell a x a/sqrt2) the host columns survived it and were counted as Pb0
    # (about 500 atoms on a frame holding 12), with no note
    from perovstem.insitu import analyze_series
    from perovstem.simulate import degradation_kmc, insitu_series, nanocrystal

    at = nanocrystal(edge_A=40, zone_axis=zone, rng=1)
    tr = degradation_kmc(at, n_frames=3, frame_time_s=1.0, dose_rate_e_per_A2_s=5e3, rng=1)
    s, _ = insitu_series(tr, **_IMAGING, rng=1)
    res = analyze_series(s, summary=False, br_loss=said, br_loss_options={"rng": 1})
    notes = [n for n in res.notes if "not a square projection" in n]
    assert bool(notes) is said, res.notes
    # the image-derived Br loss also assumes [001] (D_Br 23 % high on [011])
    assert all("[001] template" in n for n in notes)


def test_fourfold_ratio_square_vs_rectangular_cell(synth):
    from perovstem.insitu import fourfold_ratio

    g = np.arange(8, 120, 11.7)
    sq = synth.render_frame((128, 128), np.c_[np.repeat(g, g.size), np.tile(g, g.size)],
                            np.full(g.size**2, 20.0), 1.2)  # fmt: skip
    gy = np.arange(8, 120, 11.7 / np.sqrt(2))
    rect = synth.render_frame(
        (128, 128), np.c_[np.repeat(gy, g.size), np.tile(g, gy.size)],
        np.full(gy.size * g.size, 20.0), 1.2,
    )  # fmt: skip
    # the (10) reflection of the 5.85 Å cell at 0.5 Å/px, along x
    assert 0.5 < fourfold_ratio(sq, 0.5, 5.85, 0.0) < 2.0
    assert fourfold_ratio(rect, 0.5, 5.85, 0.0) < 0.1


def test_missing_gain_and_offset_are_said_by_analyze_series():
    # integer frames with a detector zero level (gain 4, offset 2000) whose metadata were
    # lost: the shot-noise thresholds assume gain 1 and offset 0, and no cluster was found
    # on the first frames, with no note from the Python API (only the CLI said "gain")
    import dataclasses

    from perovstem.insitu import analyze_series
    from perovstem.simulate import degradation_kmc, insitu_series, nanocrystal

    at = nanocrystal(edge_A=40, rng=1)
    tr = degradation_kmc(at, n_frames=3, frame_time_s=1.0, dose_rate_e_per_A2_s=5e3, rng=1)
    s, _ = insitu_series(tr, **_IMAGING, gain=4.0, offset=2000.0, rng=1)
    s = dataclasses.replace(s, data=np.round(np.asarray(s.data)).astype(np.uint16))
    told = analyze_series(s, summary=False)
    assert not any("no detector" in n for n in told.notes)
    md = {k: v for k, v in s.metadata.items() if k not in ("gain", "offset")}
    res = analyze_series(dataclasses.replace(s, metadata=md), summary=False)
    (note,) = [n for n in res.notes if "no detector gain" in n]
    assert "no detector offset" in note


@pytest.mark.parametrize(("px", "said"), [(1.2, True), (0.8, True), (0.6, False)])
def test_coarse_pixels_are_said_by_analyze_series(px, said):
    # Pb0 totals of the first frames: 1.1-4.6x the truth at 1.2 Å/px (only the CLI said
    # so), 2.4-4x at 0.8 Å/px (nobody did)
    from perovstem.insitu import analyze_series
    from perovstem.simulate import degradation_kmc, insitu_series, nanocrystal

    at = nanocrystal(edge_A=40, rng=1)
    tr = degradation_kmc(at, n_frames=3, frame_time_s=1.0, dose_rate_e_per_A2_s=5e3, rng=1)
    s, _ = insitu_series(tr, **{**_IMAGING, "pixel_size_A": px}, rng=1)
    res = analyze_series(s, summary=False)
    assert any("are validated on" in n for n in res.notes) is said
    assert any("does not resolve the lattice" in n for n in res.notes) is (px > 1.0)


def test_zero_dose_frame_is_skipped_not_fatal():
    # a frame recorded with the beam blanked (dose 0, allowed by Series) stopped the whole
    # analysis after registration: detect_clusters refuses a zero dose
    import dataclasses

    from perovstem.insitu import analyze_series
    from perovstem.simulate import degradation_kmc, insitu_series, nanocrystal

    at = nanocrystal(edge_A=40, rng=1)
    tr = degradation_kmc(at, n_frames=4, frame_time_s=1.0, dose_rate_e_per_A2_s=5e3, rng=1)
    s, _ = insitu_series(tr, **_IMAGING, rng=1)
    dose = np.asarray(s.dose_e_per_A2, float).copy()
    dose[2] = 0.0
    res = analyze_series(dataclasses.replace(s, dose_e_per_A2=dose), summary=False)
    f = res.frames.set_index("frame")
    assert bool(f.loc[2, "skipped"]) and "zero dose" in f.loc[2, "reason"]
    assert not f.loc[[0, 1, 3], "skipped"].any()
    assert f.loc[[0, 1, 3], "n_Pb0_detected"].notna().all()


def test_single_frame_says_there_is_no_kinetic_summary():
    # one frame gave an empty summary and no word why
    from perovstem.insitu import analyze_series
    from perovstem.simulate import degradation_kmc, insitu_series, nanocrystal

    at = nanocrystal(edge_A=40, rng=1)
    for n in (1, 2):
        tr = degradation_kmc(at, n_frames=n, frame_time_s=1.0, dose_rate_e_per_A2_s=5e3, rng=1)
        s, _ = insitu_series(tr, **_IMAGING, rng=1)
        res = analyze_series(s)
        said = any("1 usable frame: no kinetic summary" in t for t in res.notes)
        assert said == (n == 1), res.notes
        assert len(res.frames) == n and res.frames["n_Pb0_detected"].notna().all()
        assert res.summary.empty == (n == 1)


def test_pb0_counts_use_the_series_beam_energy(kmc_imaged):
    # a 200 kV series was counted with the 300 kV cluster library: Pb⁰ totals of frames
    # 3-7 read 1.8-2.2x the truth (median, seeds 1-2), silently.  The frames now carry the
    # series' beam energy to detect_clusters (measured: 1.14-1.23x, as at 300 kV on these
    # small crystals); a series that does not say its energy gets a note.
    import dataclasses

    from perovstem.insitu import analyze_series, detect_clusters

    ratios, plain = [], None
    for seed in (1, 2):
        _, s, truth = kmc_imaged(
            40.0, rate=5e3, seed=seed, n_frames=8, pixel_size_A=0.5, voltage_kV=200.0, rng=seed
        )
        assert s.frame(3).metadata["voltage_kV"] == 200.0
        tc = truth["clusters"]
        tt = tc[tc.in_view].groupby("frame")["n_atoms"].sum().reindex(range(8)).to_numpy()
        res = analyze_series(s, summary=False, phase_check=False)
        ratios.extend(res.frames["n_Pb0_detected"].to_numpy()[3:] / tt[3:])
        assert not any("no beam energy" in n for n in res.notes)
        if plain is None:
            plain = dataclasses.replace(
                s, metadata={k: v for k, v in s.metadata.items() if k != "voltage_kV"}
            )
    assert 0.8 < np.median(ratios) < 1.4, ratios
    res = analyze_series(plain, summary=False, phase_check=False)
    assert any("no beam energy" in n and "--voltage-kV" in n for n in res.notes), res.notes
    # detect_clusters: the default library at the image's energy (Pb: ~1.8x the SCS)
    img = plain.frame(6)
    a = detect_clusters(img)
    b = detect_clusters(dataclasses.replace(img, metadata={"voltage_kV": 200.0}))
    assert len(a) > 3 and len(b) > 3  # (a cluster near the min_atoms cut may differ)
    assert 1.5 < a["n_atoms"].sum() / b["n_atoms"].sum() < 2.2


def test_pb0_counts_use_the_library_of_the_images_detector(kmc_imaged):
    # a frame of a 65-131 mrad detector (Pb columns x 0.83 in abTEM) was counted with the
    # 65-200 mrad cluster library: Pb atoms read ~17 % low.  detect_clusters now takes
    # the library of the frame's recorded detector.
    import dataclasses

    from perovstem.insitu import detect_clusters

    _, s, _ = kmc_imaged(40.0, rate=5e3, seed=1, n_frames=8, pixel_size_A=0.5, rng=1)
    img = s.frame(6)
    assert list(img.metadata["detector_mrad"]) == [65.0, 200.0]  # the simulator's own
    a = detect_clusters(img)
    narrow = {**img.metadata, "detector_mrad": [65.0, 131.0]}
    b = detect_clusters(dataclasses.replace(img, metadata=narrow))
    assert len(a) > 3 and len(b) > 3
    assert 1.1 < b["n_atoms"].sum() / a["n_atoms"].sum() < 1.3  # 1 / 0.83
    # analyze_series hands the series' detector to every frame
    from perovstem.insitu import analyze_series

    sub = dataclasses.replace(s, metadata={**s.metadata, "detector_mrad": [65.0, 131.0]})
    wide = analyze_series(s, summary=False, phase_check=False, register=False)
    narrow = analyze_series(sub, summary=False, phase_check=False, register=False)
    r = narrow.frames["n_Pb0_detected"].sum() / wide.frames["n_Pb0_detected"].sum()
    assert 1.1 < r < 1.3, r


def test_second_crystal_in_the_field_is_said():
    # two crystals (3.5 and 5 nm) in one field: the crystal columns followed the larger
    # only (area 3042 of ~4080 Å²) while the clusters of both were counted, with no note
    import dataclasses

    from perovstem.insitu import analyze_series
    from perovstem.simulate import degradation_kmc, insitu_series, nanocrystal

    renders = []
    for edge, seed, dx in ((35, 11, 35.0), (50, 12, -35.0)):
        tr = degradation_kmc(
            nanocrystal(edge_A=edge, rng=seed),
            n_frames=3,
            frame_time_s=1.0,
            dose_rate_e_per_A2_s=5e3,
            rng=seed,
        )
        c = tr.initial_atoms().get_positions()[:, :2].mean(axis=0)
        renders.append(
            insitu_series(
                tr, **_IMAGING, shape=(200, 360), center_A=(c[0] + dx, c[1]), noise=False, rng=1
            )[0]
        )
    lam = np.asarray(renders[0].data) + np.asarray(renders[1].data)
    data = np.random.default_rng(0).poisson(np.clip(lam, 0, None)).astype(float)
    res = analyze_series(dataclasses.replace(renders[0], data=data), summary=False)
    assert any("second bright object" in n for n in res.notes), res.notes
    assert (res.frames["second_object_area_A2"] > 600).all()
    alone = dataclasses.replace(
        renders[1], data=np.random.default_rng(0).poisson(np.asarray(renders[1].data)).astype(float)
    )
    assert not any("second bright object" in n for n in analyze_series(alone, summary=False).notes)


def test_incomplete_scan_is_skipped():
    # a frame whose scan stopped half-way (last rows 0) was analysed as it was: half the
    # crystal area and a third of the Pb0 of its neighbours, no flag
    import dataclasses

    from perovstem.insitu import analyze_series
    from perovstem.simulate import degradation_kmc, insitu_series, nanocrystal

    at = nanocrystal(edge_A=40, rng=1)
    tr = degradation_kmc(at, n_frames=4, frame_time_s=1.0, dose_rate_e_per_A2_s=5e3, rng=1)
    s, _ = insitu_series(tr, **_IMAGING, rng=1)
    whole = analyze_series(s, summary=False).frames
    assert not whole["skipped"].any()  # vacuum rows at 0 below the crystal are no cut
    data = np.array(s.data, float)
    data[2, data.shape[1] // 2 :] = 0.0
    f = analyze_series(dataclasses.replace(s, data=data), summary=False).frames
    assert bool(f.loc[2, "skipped"]) and "incomplete scan" in f.loc[2, "reason"]
    assert not f.loc[[0, 1, 3], "skipped"].any()
    # (the neighbours' drift, hence outline, moves by a few hundredths of a pixel)
    np.testing.assert_allclose(
        f.loc[[0, 1, 3], "area_A2"], whole.loc[[0, 1, 3], "area_A2"], rtol=0.01
    )


def test_incomplete_scans_against_neighbours_and_series():
    from perovstem.insitu._frames import incomplete_scans

    # a [011] series at 0.3 Å/px whose frame 6 has a cluster in the bottom vacuum (short
    # block): the last frame's normal block was taken for a cut scan
    tails = dict(enumerate([73, 72, 56, 72, 72, 69, 39, 94]))
    dy = np.array([0.0, -1.7, -5.1, -5.2, -7.9, -8.6, -10.2, -12.0])
    assert incomplete_scans(tails, dy, 394) == {}
    # a half-cut frame 3 registered 34 px off: with its own drift its cut was expected
    tails = dict(enumerate([73, 73, 61, 133, 47, 37, 24, 27]))
    dy = np.array([0.0, 6.6, 12.4, -34.2, 24.4, 30.0, 36.2, 41.7])
    assert incomplete_scans(tails, dy, 266) == {3: 133}


def test_hop_rate_from_strict_mobility_tracks(sim_series, analysed0):
    """The summary's cluster hop rate comes from the detections tracked again with strict
    links (:func:`mobility_tracks`, as the ``quantify.mechanism`` step does), not from the
    lineage's tracks, whose unlikely links (a track whose cluster went undetected taken on
    by a neighbour) carried most of Σ|Δr|² on the demo's mobility series; the summary says
    which tracks it used.  Before, ``analyze_series`` used the lineage's tracks."""
    from perovstem.insitu import analyze_series
    from perovstem.insitu.tracking import MOBILITY_LINK_COST, mobility_tracks
    from perovstem.quantify.mobility import cluster_hop_rate

    res = analysed0
    assert res.summary.attrs["mobility_tracks"] == {
        "tracks": "strict",
        "end_cost_nats": MOBILITY_LINK_COST,
        "birth_cost_nats": MOBILITY_LINK_COST,
        "max_step_A": 8.0,
    }
    row = res.summary[res.summary["process"] == "mobility"]
    assert len(row) == 1
    usable = res.frames.loc[~res.frames["skipped"], "frame"]
    bad = res.frames.loc[~res.frames["drift_reliable"], "frame"]
    t = mobility_tracks(res.clusters)
    assert t.attrs["mobility_tracks"] == res.summary.attrs["mobility_tracks"]
    other = mobility_tracks(res.clusters, max_step_A=6, link_cost=3)
    assert other.attrs["mobility_tracks"] == {
        "tracks": "strict", "end_cost_nats": 3.0, "birth_cost_nats": 3.0, "max_step_A": 6.0
    }  # fmt: skip
    t = t[t["frame"].isin(usable) & ~t["frame"].isin(bad)]
    dt = float(np.median(np.diff(res.frames["time_s"].to_numpy(float))))
    r = cluster_hop_rate(t, frame_time_s=dt, level=0.95, max_step_A=8.0, rng=0)
    assert row["value"].iloc[0] == pytest.approx(r["rate_per_s"], rel=1e-9)
    assert row["n_points"].iloc[0] == r["n_steps"]
    with pytest.raises(ParameterError, match="hop_tracks"):
        analyze_series(sim_series[0][0], hop_tracks="loose")


def test_pb0_counted_mostly_over_host_is_noted():
    """A 2-frame KMC series read 149 ± 25 Pb⁰ atoms for 82, every count over 2-9× more host
    than cluster (host_ratio), without a word; a series whose counts are mostly clear of
    the host (the demo's: 6-53 % of the atoms over host_ratio > 1) gets no note."""
    import pandas as pd

    from perovstem.insitu.analysis import HOST_HEAVY_SHARE, _host_heavy_note

    det = pd.DataFrame({"n_atoms": [30.0, 20.0, 10.0, np.nan], "host_ratio": [4.0, 2.0, 0.05, 9.0]})
    note = _host_heavy_note(det)  # 50 of 60 atoms: 83 %
    assert note is not None and note.startswith("83% of the counted Pb⁰ atoms (2 of 3 counts)")
    det.loc[0, "host_ratio"] = 0.5  # 20 of 60: 33 %
    assert 20 / 60 < HOST_HEAVY_SHARE and _host_heavy_note(det) is None
    assert _host_heavy_note(det.drop(columns="host_ratio")) is None
