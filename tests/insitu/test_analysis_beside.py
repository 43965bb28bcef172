"""The drift registration runs in a thread beside the detection pass of analyze_series."""

from __future__ import annotations

import threading
import time

import pytest


@pytest.fixture(scope="module")
def small_series():
    from perovstem.simulate import degradation_kmc, insitu_series, nanocrystal

    tr = degradation_kmc(
        nanocrystal(edge_A=30.0, rng=0), n_frames=40, frame_time_s=1.0,
        dose_rate_e_per_A2_s=2e3, rng=1,
    )  # fmt: skip
    s, _ = insitu_series(tr, pixel_size_A=0.5, shape=(96, 96), drift_A_per_s=(0.3, -0.2), rng=2)
    return s


def _beside_alive() -> bool:
    return any(t.name == "perovstem-beside" and t.is_alive() for t in threading.enumerate())


def test_failing_detection_stops_the_registration_beside(small_series, monkeypatch):
    """An error in the detection pass reaches the caller at once; the registration thread
    stops at its next frame read instead of reading the rest of the series, and the BLAS
    thread limits are those from before the call."""
    from threadpoolctl import threadpool_info

    from perovstem.insitu import analysis

    real = analysis.detect_clusters
    seen = []

    def failing(img, **kw):
        seen.append(kw.get("frame"))
        if kw.get("frame") == 2:
            raise RuntimeError("detection failed on frame 2")
        return real(img, **kw)

    monkeypatch.setattr(analysis, "detect_clusters", failing)
    read = []
    real_iter = analysis.register_drift.__globals__["iter_frames"]

    def counting_iter(st, **kw):
        for k, f in real_iter(st, **kw):
            read.append(k)
            time.sleep(0.01)  # a slow reader: the registration is still running
            yield k, f

    monkeypatch.setitem(analysis.register_drift.__globals__, "iter_frames", counting_iter)
    before = sorted((i["internal_api"], i["num_threads"]) for i in threadpool_info())
    with pytest.raises(RuntimeError, match="frame 2"):
        analysis.analyze_series(small_series, n_workers=1, summary=False)
    assert not _beside_alive()
    assert 0 < len(read) < small_series.n_frames  # stopped part-way
    after = sorted((i["internal_api"], i["num_threads"]) for i in threadpool_info())
    assert after == before


def test_registration_error_is_raised_after_the_pass(monkeypatch, small_series):
    """A registration that fails beside the detection raises its own message (how to go
    on without drift correction), not a later error from missing drift."""
    from perovstem import DataError
    from perovstem.insitu import analysis

    def bad(*a, **k):
        raise DataError("no pair of frames above min_snr")

    monkeypatch.setattr(analysis, "register_drift", bad)
    with pytest.raises(DataError, match="register=False"):
        analysis.analyze_series(small_series, n_workers=1, summary=False)
    assert not _beside_alive()


def test_option_refused_before_the_pass_leaves_no_registration_running(small_series):
    """An option refused before the detection pass (br_loss without a dose) stops the call
    without a registration thread left reading the series or holding the BLAS limits."""
    from threadpoolctl import threadpool_info

    from perovstem import ParameterError
    from perovstem.insitu import analysis

    before = sorted((i["internal_api"], i["num_threads"]) for i in threadpool_info())
    no_dose = small_series.replace(dose_e_per_A2=None)
    with pytest.raises(ParameterError, match="br_loss"):
        analysis.analyze_series(no_dose, br_loss=True, summary=False)
    assert not _beside_alive()
    after = sorted((i["internal_api"], i["num_threads"]) for i in threadpool_info())
    assert after == before
