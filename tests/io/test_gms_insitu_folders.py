"""Gatan In-Situ datasets (``Hour_HH/Minute_MM/Second_SS/*.dm4``) and lazy frame folders.

Old code: such a dataset was "a directory holding no image files" (frames sit three
folders down), and a folder of frames was read whole into memory even with ``lazy=True``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

import perovstem as ps
from perovstem.errors import FileFormatError

T0 = dt.datetime(2026, 11, 28, 1, 59, 58, 400000)  # the recording starts inside a second


def _gms(root, n, *, fps, shape=(24, 32), stamps=True, start=T0):
    """A Gatan In-Situ dataset of ``n`` tif frames at ``fps``: frame k (value 100 + k,
    true time k / fps after the first) in the folder of the second it was recorded in,
    its own time stamp to the second only (as the frames' DataBar stamps)."""
    import tifffile

    truth = np.arange(n) / fps
    for k in range(n):
        t = start + dt.timedelta(seconds=float(truth[k]))
        day = dt.datetime(t.year, t.month, t.day)
        s = int((t - day).total_seconds())
        h, m, sec = s // 3600, s // 60 % 60, s % 60
        folder = root / f"Hour_{h:02d}" / f"Minute_{m:02d}" / f"Second_{sec:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        j = sum(1 for _ in folder.iterdir())
        kw = {"datetime": t.replace(microsecond=0)} if stamps else {}
        tifffile.imwrite(
            folder / f"Hour_{h:02d}_Minute_{m:02d}_Second_{sec:02d}_Frame_{j:04d}.tif",
            np.full(shape, 100 + k, np.uint16),
            imagej=True,
            resolution=(20.0, 20.0),
            metadata={"unit": "nm"},
            **kw,
        )
    return root, truth


@pytest.mark.parametrize("fps", [4.0, 7.5])
@pytest.mark.parametrize("stamps", [True, False])
def test_gms_dataset_is_one_series_in_time_order_with_times_from_its_folders(tmp_path, fps, stamps):
    # 3.5 s across a change of hour (01:59:58.4 -> 02:00:01.9): natural order of the
    # folders, frame times from the second each frame lies in and the frame order
    root, truth = _gms(tmp_path / "insitu_001", 27, fps=fps, stamps=stamps)
    s = ps.load(root)
    assert s.data.shape == (27, 24, 32)
    np.testing.assert_array_equal(s.data[:, 0, 0], 100 + np.arange(27))
    assert "Gatan In-Situ" in s.metadata["format"]
    assert s.metadata["frame_rate_hz"] == pytest.approx(fps, abs=0.5)
    assert "Hour/Minute/Second folders" in s.metadata["time_source"]
    # to about one frame period (the frame rate is found from the full seconds)
    assert np.all(np.diff(s.time_s) > 0)
    assert np.max(np.abs(s.time_s - truth)) <= 1.0 / fps
    assert abs(np.median(np.diff(s.time_s)) - 1.0 / fps) < 0.25 / fps
    # the same series read from any level of the dataset; an analysis folder beside the
    # recording (frames of other sizes) is not part of it
    (root / "analysis").mkdir()
    import tifffile

    tifffile.imwrite(root / "analysis" / "mean.tif", np.zeros((8, 8), np.uint16))
    if stamps:  # no full second in hour 1: no frame rate
        with pytest.warns(UserWarning, match="do not increase"):
            again = ps.load(root / "Hour_01")
    else:
        again = ps.load(root / "Hour_01")
        assert "no full second" in again.metadata["time_note"]
    assert again.time_s is None
    np.testing.assert_array_equal(again.data[:, 0, 0], 100 + np.flatnonzero(truth < 1.6))
    np.testing.assert_array_equal(ps.load(root).data, s.data)


def test_gms_dataset_without_a_full_second_has_no_frame_times(tmp_path):
    root, _ = _gms(tmp_path / "short", 5, fps=4.0, start=dt.datetime(2026, 1, 1, 0, 0, 0, 500000))
    with pytest.warns(UserWarning, match=r"do not increase.*--frame-time-s"):
        s = ps.load(root)
    assert s.time_s is None and s.data.shape[0] == 5
    # the same lazily, with the same warning
    with pytest.warns(UserWarning, match=r"do not increase"):
        assert ps.load(root, lazy=True).data.shape == (5, 24, 32)


def test_lazy_folder_reads_each_frame_when_computed(tmp_path, monkeypatch):
    root, _ = _gms(tmp_path / "lazy", 12, fps=4.0)
    eager = ps.load(root)
    s = ps.load(root, lazy=True)
    assert hasattr(s.data, "dask") and s.data.chunks[0] == (1,) * 12
    np.testing.assert_allclose(s.time_s, eager.time_s)
    # nothing of the frames is held: a frame is read from its file when it is computed
    from perovstem.io import _folder

    read = []
    real = _folder._read_frame
    monkeypatch.setattr(_folder, "_read_frame", lambda f, *a: read.append(f.name) or real(f, *a))
    s = ps.load(root, lazy=True)
    assert read == []
    np.testing.assert_array_equal(np.asarray(s.data[5]), eager.data[5])
    assert len(read) == 1 and "Frame" in read[0]
    np.testing.assert_array_equal(s.data.compute(), eager.data)


def test_folder_with_frames_one_level_down_names_the_subfolder(tmp_path):
    import tifffile

    (tmp_path / "run" / "frames").mkdir(parents=True)
    tifffile.imwrite(tmp_path / "run" / "frames" / "f1.tif", np.zeros((8, 8), np.uint16))
    with pytest.raises(FileFormatError, match=r"run'.*no image files.*subfolder\(s\) frames do"):
        ps.load(tmp_path / "run")


def test_cli_insitu_on_a_gms_dataset_runs_with_its_frame_times(tmp_path, capsys):
    import json

    import pandas as pd
    import tifffile

    from perovstem.cli.main import main

    # a drifting lattice, 4 frames/s, 2.25 s: drift and dose rate need the frame times
    root = tmp_path / "ds"
    rng = np.random.default_rng(3)
    y, x = np.mgrid[:64, :64].astype(float)
    n, fps = 10, 4.0
    for k in range(n):
        dx = 0.3 * k
        crystal = (np.abs(x - dx - 30) < 14) & (np.abs(y - 32) < 14)  # a crystal on vacuum
        lat = 5 + 20 * crystal * (np.cos(np.pi * (x - dx) / 6.0) * np.cos(np.pi * y / 6.0)) ** 2
        sec = 10 + int(0.5 + k / fps)  # starts at 10.5 s
        folder = root / "Hour_00" / "Minute_00" / f"Second_{sec:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        j = sum(1 for _ in folder.iterdir())
        tifffile.imwrite(
            folder / f"Hour_00_Minute_00_Second_{sec:02d}_Frame_{j:04d}.tif",
            rng.poisson(lat).astype(np.uint16),
            imagej=True,
            resolution=(20.0, 20.0),
            metadata={"unit": "nm"},
        )
    out = tmp_path / "out"
    args = ["insitu", str(root), "-o", str(out), "--dose-e-per-A2", "50"]
    assert main([*args, "--ci", "wald", "--no-plots", "--table-format", "csv"]) == 0
    frames = pd.read_csv(out / "frames.csv")
    np.testing.assert_allclose(frames["time_s"], np.arange(n) / fps, atol=1 / fps)
    assert frames["dose_rate_e_per_A2_s"].median() == pytest.approx(50 * fps, rel=0.05)
    drift = pd.read_csv(out / "drift.csv")
    assert abs(abs(drift["dx_px"].iloc[-1]) - 0.3 * (n - 1)) < 0.2
    assert json.loads((out / "summary.json").read_text())


def test_info_says_what_the_folder_is_and_where_its_times_come_from(tmp_path, capsys):
    from perovstem.cli.main import main

    root, _ = _gms(tmp_path / "ds", 14, fps=4.0, stamps=False)
    assert main(["info", str(root)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "14, Gatan In-Situ dataset" in out and "3.25 s" in out
    assert "Hour/Minute/Second folders" in out and "4 frames/s" in out


# DigitalMicrograph frames: GMS keeps each frame's acquisition time as a Windows FILETIME
# (DataBar.Acquisition Time (OS), 100 ns ticks since 1601, UTC); RosettaSciIO leaves it in
# the original metadata only, so it was never read and DM frames had no time stamps at all.
_DM3 = Path(__file__).parent.parent / "data" / "formats" / "haadf_calibrated.dm3"
_FT_OF_DM3 = 1.3116801150052632e17  # that file's own stamp, 2016-08-27 19:52:30.05 UTC


def _filetime(t: dt.datetime) -> float:
    """Windows FILETIME (100 ns ticks since 1601-01-01 UTC) of a naive UTC time."""
    return (t - dt.datetime(1601, 1, 1)).total_seconds() * 1e7


def _dm3_with_stamp(path, filetime):
    raw = _DM3.read_bytes()
    old = np.array([_FT_OF_DM3], "<f8").tobytes()
    assert raw.count(old) == 1  # the tag's value, stored once, little-endian
    path.write_bytes(raw.replace(old, np.array([filetime], "<f8").tobytes()))


def _gms_dm3(root, n, *, fps, same_stamp=False):
    truth = np.arange(n) / fps
    for k in range(n):
        t = T0 + dt.timedelta(seconds=float(truth[k]))
        folder = root / f"Hour_{t.hour:02d}" / f"Minute_{t.minute:02d}" / f"Second_{t.second:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        j = sum(1 for _ in folder.iterdir())
        stamp = _filetime(T0 if same_stamp else t)
        _dm3_with_stamp(folder / f"Frame_{j:04d}.dm3", stamp)
    return root, truth


def test_dm_acquisition_time_is_read_to_the_microsecond_with_the_pcs_zone():
    im = ps.load(_DM3)
    md = im.metadata
    # 1.3116801150052632e17 ticks = 2016-08-27 19:52:30.0526 UTC; the DataBar's local
    # "20:52:30" says the acquisition PC ran on UTC+1 (BST)
    t = dt.datetime.fromisoformat(md["acquisition_start_utc"])
    assert t.utcoffset() == dt.timedelta(0)
    assert abs(t.replace(tzinfo=None) - dt.datetime(2016, 8, 27, 19, 52, 30, 52632)) < (
        dt.timedelta(microseconds=2)
    )
    assert md["acquisition_time_zone"] == "UTC+01:00"
    assert md["acquisition_start"].startswith("2016-08-27T20:52:30.05")
    # a holder log written on the same PC (local clock) aligns from it
    import pandas as pd

    from perovstem.io.holder_logs import log_time_offset_s

    log = pd.DataFrame({"time_s": [0.0, 60.0], "temperature_K": [300.0, 300.0]})
    log.attrs["t0_time"] = "2016-08-27T20:52:00"
    assert log_time_offset_s(log, md["acquisition_start_utc"], log_utc_offset_h=1) == pytest.approx(
        30.0526, abs=1e-3
    )


def test_gms_dm_frames_take_their_own_subsecond_times(tmp_path, capsys):
    # 7.5 frames/s across a change of hour: the frames' FILETIMEs give the times exactly
    # (the folders alone: to about one frame period)
    root, truth = _gms_dm3(tmp_path / "dm", 27, fps=7.5)
    s = ps.load(root)
    assert s.metadata["time_source"] == "the frame files' time stamps"
    np.testing.assert_allclose(s.time_s, truth, atol=1e-5)
    assert s.metadata["acquisition_start_utc"].startswith("2026-11-28T01:59:58.4")
    # the frames' beam energy and dwell time are the series' (the libraries need the
    # energy; the folder used to keep only the time stamps)
    assert s.metadata["high_tension_kV"] == 200.0
    assert s.metadata["dwell_time_s"] == pytest.approx(1.4e-6)
    assert "frames_differ" not in s.metadata
    from perovstem.cli.main import main

    assert main(["info", str(root)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "2026-11-28 01:59:58.4" in out and "time stamps" in out


def test_gms_dm_frames_sharing_one_stamp_take_times_from_their_folders(tmp_path):
    # a recorder that writes the recording's start into every frame: no order in the
    # stamps, so the Second folders and the frame order give the times
    root, truth = _gms_dm3(tmp_path / "dm", 27, fps=7.5, same_stamp=True)
    s = ps.load(root)
    assert "Hour/Minute/Second folders" in s.metadata["time_source"]
    assert np.max(np.abs(s.time_s - truth)) <= 1 / 7.5


def test_dm_acquisition_time_from_the_other_tags_and_unset_values():
    from perovstem.io.read import _dm_acquisition_time

    def om(**tags):
        return {"ImageList": {"TagGroup0": {"ImageTags": tags}}}

    # K2/K3 sequences: the start in ms since 1970
    seq = {"Frame": {"Sequence": {"Acquisition Start Time (epoch)": 1.6655e12 + 250.0}}}
    got = _dm_acquisition_time(om(Acquisition=seq))
    assert got == {"acquisition_start_utc": "2022-10-11T14:53:20.250000+00:00"}
    # a 12-hour locale's clock string; US Eastern daylight time (UTC-4)
    bar = {"Acquisition Time (OS)": _filetime(dt.datetime(2022, 10, 11, 19, 53, 20)),
           "Acquisition Time": "3:53:20 PM"}  # fmt: skip
    got = _dm_acquisition_time(om(DataBar=bar))
    assert got["acquisition_time_zone"] == "UTC-04:00"
    assert got["acquisition_start"] == "2022-10-11T15:53:20-04:00"
    # an unset stamp (0 ticks = 1601) or a clock string of another instant: not used
    assert _dm_acquisition_time(om(DataBar={"Acquisition Time (OS)": 0.0})) == {}
    # an unset FILETIME beside a sequence start: the sequence start
    got = _dm_acquisition_time(om(DataBar={"Acquisition Time (OS)": 0.0}, Acquisition=seq))
    assert got == {"acquisition_start_utc": "2022-10-11T14:53:20.250000+00:00"}
    bar["Acquisition Time"] = "3:50:20 PM"
    assert "acquisition_time_zone" not in _dm_acquisition_time(om(DataBar=bar))


def test_instrument_entries_that_differ_between_frames_are_not_carried():
    from perovstem.io._folder import _same_in_every_frame

    rows = [
        {"high_tension_kV": 300.0, "magnification": 1e6, "detector_mrad": [65.0, 200.0]},
        {"high_tension_kV": 300.0, "magnification": 2e6, "detector_mrad": [65.0, 200.0]},
        {"high_tension_kV": None, "magnification": 2e6, "detector_mrad": [65.0, 200.0]},
    ]
    got = _same_in_every_frame(rows)
    assert got.pop("frames_differ") == ["high_tension_kV", "magnification"]
    assert got == {"detector_mrad": [65.0, 200.0]}
