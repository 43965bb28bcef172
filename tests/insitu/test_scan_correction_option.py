"""apply_drift(..., scan_correction=True): rigid drift plus per-frame scan-line jitter."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from perovstem import DataError, ParameterError, Series
from perovstem.insitu import apply_drift, correct_scan_distortion, register_drift


def _jittered_series(synth, n, seed, amp):
    """Lattice frames with a random-walk drift and a smooth, frame-specific line jitter."""
    rng = np.random.default_rng(seed)
    shape = (112, 112)
    pos = synth.lattice_positions(20, 92, 7.3)
    drift = np.cumsum(rng.normal(0, 0.8, (n, 2)), 0)
    drift -= drift[0]
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    frames, clean, jit = [], [], []
    for k in range(n):
        ph, per = rng.uniform(0, 2 * np.pi), rng.uniform(10, 16)
        j = amp * np.sin(np.arange(shape[0]) / per + ph)
        g = np.zeros(shape)
        for y, x in pos + drift[k]:
            g += 20.0 * np.exp(-((yy - y) ** 2 + (xx - j[:, None] - x) ** 2) / (2 * 1.4**2))
        frames.append(rng.poisson(40.0 * (2.0 + g)))
        clean.append(40.0 * (2.0 + synth.render_frame(shape, pos, np.full(len(pos), 20.0), 1.4, 0)))
        jit.append(j)
    return np.array(frames, float), np.array(clean), np.array(jit), drift


@pytest.mark.parametrize(("seed", "amp"), [(0, 1.2), (1, 0.8)])
def test_scan_correction_removes_line_jitter_after_rigid_alignment(synth, seed, amp):
    frames, clean, jit, _ = _jittered_series(synth, 6, seed, amp)
    df = register_drift(frames)
    rigid = apply_drift(Series(frames, 0.5), df)
    both = apply_drift(Series(frames, 0.5), df, scan_correction=True, band_rows=4, smooth_rows=1.0)
    inner = (slice(24, -24), slice(24, -24))
    err_r = np.mean([np.abs(rigid.data[k] - clean[0])[inner].mean() for k in range(6)])
    err_s = np.mean([np.abs(both.data[k] - clean[0])[inner].mean() for k in range(6)])
    assert err_s < 0.75 * err_r
    # the line offsets removed follow the jitter put in, relative to the series mean (a
    # self-referenced correction cannot see the common part) and to the frame's own mean
    # offset over the rows with structure (taken by the rigid registration: vacuum rows carry
    # no position information), row by row over the rows with structure
    rel = (jit - jit.mean(axis=0))[:, 20:92]
    rel = rel - rel.mean(axis=1, keepdims=True)
    total = rigid.data.sum(axis=0, dtype=np.float64)
    rms = []
    for k in range(6):
        ref = (total - rigid.data[k]) / 5
        _, dx_rows = correct_scan_distortion(rigid.data[k], ref, band_rows=4, smooth_rows=1.0)
        assert np.sqrt(np.mean((dx_rows[20:92] - rel[k]) ** 2)) < 0.25
        rms.append(np.sqrt(np.mean(dx_rows**2)))
    # ... and the metadata records their rms per frame
    rec = np.asarray(both.metadata["scan_correction"]["rms_line_offset_px"])
    np.testing.assert_allclose(rec, rms, atol=1e-3)
    assert both.metadata["drift_corrected"]
    # lazy input: same frames
    lazy = apply_drift(
        Series(da.from_array(frames, chunks=(2, 112, 112)), 0.5),
        df,
        scan_correction=True,
        band_rows=4,
        smooth_rows=1.0,
    )
    np.testing.assert_allclose(np.asarray(lazy.data.compute()), both.data, atol=1e-3)


def test_scan_correction_bad_options_and_skipped_frames(synth):
    frames, _, _, _ = _jittered_series(synth, 4, 2, 1.0)
    frames[2] = np.nan  # a corrupted frame: skipped by the registration, left untouched
    df = register_drift(frames)
    assert df["skipped"].tolist() == [False, False, True, False]
    out = apply_drift(frames, df, scan_correction=True)
    assert np.all(np.isnan(out[2])) and np.all(np.isfinite(out[[0, 1, 3]]))
    with pytest.raises(ParameterError, match="band_rows"):
        apply_drift(frames, df, scan_correction=True, band_rows=0)
    with pytest.raises(ParameterError, match="max_shift_px"):
        apply_drift(frames, df, scan_correction=True, max_shift_px=-1.0)
    with pytest.raises(DataError, match="rows"):
        apply_drift(frames, df.iloc[:2], scan_correction=True)
