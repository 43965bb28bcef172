from __future__ import annotations

import numpy as np
import pytest

from perovstem import ParameterError


@pytest.fixture(scope="module")
def sim_series():
    from perovstem.simulate import degradation_kmc, insitu_series, nanocrystal

    out = []
    at = nanocrystal(edge_A=40.0, rng=0)
    for phi, temp, seed in ((1.5e3, 300.0, 1), (3e3, 260.0, 2)):
        tr = degradation_kmc(
            at,
            n_frames=12,
            frame_time_s=1.0,
            dose_rate_e_per_A2_s=phi,
            temperature_K=temp,
            rng=seed,
        )
        s, truth = insitu_series(
            tr, pixel_size_A=0.5, drift_A_per_s=(0.8, -0.5), jitter_A=0.3, rng=seed
        )
        out.append((s, truth))
    return out


def test_simulator_drift_within_0p1_px(sim_series):
    from perovstem.insitu import register_drift

    for s, truth in sim_series:
        t = truth["drift"][["dy_px", "dx_px"]].to_numpy()
        t = t - t[0]
        e = register_drift(s)[["dy_px", "dx_px"]].to_numpy()
        assert np.sqrt(np.mean((e - t) ** 2)) < 0.1


def test_analyze_series_end_to_end(sim_series):
    from perovstem.insitu import analyze_series

    s, truth = sim_series[0]
    res = analyze_series(s, ci="wald")
    f = res.frames
    assert len(f) == s.n_frames
    np.testing.assert_allclose(f["cumulative_dose_e_per_A2"], s.cumulative_dose_e_per_A2)
    assert f["phase"].iloc[0] == "CsPbBr3"
    assert (f["area_A2"] > 0).all()
    # tracks and lineage are consistent
    assert set(res.clusters["track_id"]) == set(res.lineage["track_id"])
    assert set(res.events["kind"]) <= {"birth", "merge", "death"}
    assert {"process", "selected_model", "value", "ci_low", "ci_high"} <= set(res.summary.columns)
    assert set(res.tables()) == {"frames", "drift", "clusters", "lineage", "events", "summary"}
    assert f["n_Pb0_detected"].iloc[-1] > 0


@pytest.mark.xfail(
    reason="known limitation: on a crystal that is itself losing atoms, host-intensity "
    "changes are partly taken for Pb clusters (Pb0 over-counted ~3x early in the series)",
    strict=False,
)
def test_pb0_atoms_on_degrading_crystal(sim_series):
    from perovstem.insitu import analyze_series

    s, truth = sim_series[0]
    f = analyze_series(s, summary=False, phase_check=False).frames
    truth_end = truth["frames"]["n_cluster_atoms"].iloc[-1]
    assert 0.67 * truth_end < f["n_Pb0_detected"].iloc[-1] < 1.5 * truth_end


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
