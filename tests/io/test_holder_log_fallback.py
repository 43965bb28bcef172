"""Holder logs that RosettaSciIO's readers turn down and the plain-CSV path reads: time units
from the column name or the Protochips notes, Impulse exports without their metadata log."""

from __future__ import annotations

import numpy as np
import pytest

from perovstem import FileFormatError
from perovstem.io.holder_logs import read_holder_log

pytest.importorskip("rsciio")

T = np.array([0.0, 0.5, 1.0, 1.7, 2.0, 2.5, 3.0]) + 7.787  # Impulse starts logging late


def _impulse_csv(folder, with_metadata):
    folder.mkdir()
    # "0; 0; 0" is how Impulse writes its MixValve state; it misled the delimiter sniffer
    lines = ["TimeStamp,Experiment time,Temperature Measured,MixValve,Pin Measured"]
    lines += [f"10:00:{x:06.3f},{x},{100 + 20 * x:.3f},0; 0; 0,3.1" for x in T]
    p = folder / "run_1_Synchronized data.csv"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if with_metadata:
        (folder / "run_1_Metadata.log").write_text(
            "Experiment date, 2024-03-01\nExperiment time, 10:00:00\nSample, CsPbBr3\n"
        )
    return p


def test_impulse_export_without_metadata_log_reads_like_with_it(tmp_path):
    # old code: no time column found (or, sniffed, every column shifted by one)
    full = read_holder_log(_impulse_csv(tmp_path / "a", True))
    bare = read_holder_log(_impulse_csv(tmp_path / "b", False))
    assert full.attrs["reader"] == "rsciio.impulse" and bare.attrs["reader"] == "csv"
    np.testing.assert_allclose(bare["time_s"], T - T[0])
    np.testing.assert_allclose(bare["time_s"], full["time_s"])
    assert bare.attrs["log_t0_s"] == pytest.approx(full.attrs["log_t0_s"])
    np.testing.assert_allclose(bare["temperature_K"], 373.15 + 20 * T, atol=1e-3)


def test_protochips_style_log_in_milliseconds_is_converted(tmp_path):
    # a Protochips layout the rsciio reader turns down (no header block) falls back to CSV;
    # old code read its millisecond column as seconds (396 ms → 396 s)
    p = tmp_path / "protochips_like.csv"
    rows = ["Time, Notes, Channel A Current", "0, Time units = Milliseconds, 0"]
    rows += [f"{t}, , 0.018" for t in (147, 196, 296, 396)]
    p.write_text("\n".join(rows) + "\n")
    df = read_holder_log(p)
    assert df.attrs["reader"] == "csv"
    np.testing.assert_allclose(df["time_s"], [0, 0.147, 0.196, 0.296, 0.396])


@pytest.mark.parametrize(("name", "factor"), [("time_ms", 1e-3), ("Time (min)", 60.0)])
def test_time_unit_in_the_column_name(tmp_path, name, factor):
    p = tmp_path / "log.csv"
    p.write_text(f"{name},temperature_C\n0,25\n2,30\n5,35\n")
    df = read_holder_log(p)
    np.testing.assert_allclose(df["time_s"], np.array([0, 2, 5]) * factor)
    np.testing.assert_allclose(df["temperature_K"], [298.15, 303.15, 308.15])


def test_header_only_log_is_refused(tmp_path):
    # old code: an empty table, then an IndexError when put onto frames
    p = tmp_path / "empty.csv"
    p.write_text("Time, Test, Channel A Temperature\n")
    with pytest.raises(FileFormatError, match=r"empty\.csv.*no data rows"):
        read_holder_log(p)


def test_clock_time_of_time_zero_for_dens_and_impulse(tmp_path):
    # DigiHeater: header "16/04/'15 13:53", first sample 13:54:37.68 on a since-midnight
    # clock; start_time + log_t0_s would put t = 0 at 03:47 the next day
    lines = [
        "16/04/'15 13:53\tDigiheater 3.1",
        "R0=100.0\ta=0.0039\tb=-5.8e-7\tc=0.0",
        "delta_t=0.5",
        "sample\ttime\tTset[C]\tTmeas[C]\tRheat[ohm]\tVheat[V]\tIheat[mA]\tPheat [mW]\tc",
    ]
    for i in range(6):
        lines.append(f"{i}\t13:54:{37.68 + 0.5 * i:06.3f}\t50\t50.0\t1\t1\t1\t1\t0")
    p = tmp_path / "heating.log"
    p.write_text("\n".join(lines) + "\n")
    df = read_holder_log(p)
    assert df.attrs["reader"] == "rsciio.dens"
    assert df.attrs["start_time"] == "2015-04-16T13:53:00"
    t0 = np.datetime64(df.attrs["t0_time"])
    assert abs(t0 - np.datetime64("2015-04-16T13:54:37.680")) < np.timedelta64(2, "ms")
    # Impulse writes its date day first: 06-08-2021 is 6 August (old: "06-08-2021T10:00:00")
    folder = tmp_path / "imp"
    p = _impulse_csv(folder, True)
    (folder / "run_1_Metadata.log").write_text(
        "Experiment date, 06-08-2021\nExperiment time, 10:00:00\nSample, CsPbBr3\n"
    )
    df = read_holder_log(p)
    assert df.attrs["start_time"] == "2021-08-06T10:00:00"
    assert np.datetime64(df.attrs["t0_time"]) == np.datetime64("2021-08-06T10:00:07.787")


def test_log_time_offset_from_velox_utc_start_and_the_holder_pc_zone(tmp_path):
    from datetime import UTC, datetime

    from rsciio.hspy import file_writer

    import perovstem as ps
    from perovstem import ParameterError
    from perovstem.insitu import attach_conditions
    from perovstem.io.holder_logs import log_time_offset_s

    # DigiHeater log on a CET (UTC+1) PC: first sample 12:00:00 local, 20 °C/s ramp
    lines = [
        "01/03/'24 11:58\tDigiheater 3.1",
        "R0=100.0\ta=0.0039\tb=-5.8e-7\tc=0.0",
        "delta_t=0.5",
        "sample\ttime\tTset[C]\tTmeas[C]\tRheat[ohm]\tVheat[V]\tIheat[mA]\tPheat [mW]\tc",
    ]
    for i in range(20):
        tm = 100.0 + 10.0 * i
        lines.append(f"{i}\t12:00:{0.5 * i:06.3f}\t{tm}\t{tm:.3f}\t1\t1\t1\t1\t0")
    p = tmp_path / "heating.log"
    p.write_text("\n".join(lines) + "\n")
    log = read_holder_log(p)
    # a Velox series whose first frame started at 11:00:02 UTC = 12:00:02 CET
    unix = datetime(2024, 3, 1, 11, 0, 2, tzinfo=UTC).timestamp()
    axes = [
        {"name": "Time", "size": 3, "scale": 1.0, "offset": 0, "units": "s", "navigate": True},
        {"name": "y", "size": 8, "scale": 0.02, "offset": 0, "units": "nm", "navigate": False},
        {"name": "x", "size": 8, "scale": 0.02, "offset": 0, "units": "nm", "navigate": False},
    ]
    om = {"Acquisition": {"AcquisitionStartDatetime": {"DateTime": str(int(unix))}}}
    h = tmp_path / "velox.hspy"
    file_writer(
        str(h),
        {
            "data": np.ones((3, 8, 8), np.float32),
            "axes": axes,
            "metadata": {"General": {"title": "HAADF"}, "Signal": {"signal_type": ""}},
            "original_metadata": om,
            "tmp_parameters": {},
            "attributes": {"_lazy": False},
            "package_info": {"name": "hyperspy", "version": "2.0"},
            "learning_results": {},
            "models": {},
        },
    )
    s = ps.load(h)
    assert s.metadata["acquisition_start_utc"] == "2024-03-01T11:00:02+00:00"
    off = log_time_offset_s(log, s.metadata["acquisition_start_utc"], log_utc_offset_h=1)
    assert off == pytest.approx(2.0, abs=1e-3)
    c = attach_conditions(s, log, time_offset_s=off)
    np.testing.assert_allclose(c.temperature_K, 373.15 + 20.0 * (2.0 + np.arange(3)), atol=0.05)
    with pytest.raises(ParameterError, match="UTC offset"):
        log_time_offset_s(log, "2024-03-01T11:00:02", log_utc_offset_h=1)
    with pytest.raises(ParameterError, match="log_utc_offset_h"):
        log_time_offset_s(log, s.metadata["acquisition_start_utc"], log_utc_offset_h=60)


@pytest.mark.parametrize("content", [b"", b"\n  \r\n\t\n"])
def test_blank_log_is_refused_not_a_hang(tmp_path, content):
    # RosettaSciIO's DENS reader looped forever on a blank file (`insitu --conditions` hung)
    import threading

    p = tmp_path / "log.csv"
    p.write_bytes(content)
    caught: list[BaseException] = []

    def read() -> None:
        try:
            read_holder_log(p)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            caught.append(exc)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "read_holder_log hangs on a blank file"
    assert isinstance(caught[0], FileFormatError) and "log.csv" in str(caught[0])
    assert "empty" in str(caught[0])


@pytest.mark.parametrize(
    ("times", "row", "what"),
    [
        ([0, 1, 2, 3, 0, 1, 2, 3], 4, "goes back"),  # a clock reset: two runs in one file
        ([0, 1, 3, 2, 4], 3, "goes back"),  # rows out of order
        ([0, 1, 1, 2], 2, "repeats"),
    ],
)
def test_log_whose_time_is_not_increasing_is_refused(tmp_path, times, row, what):
    # old code sorted the rows: a reset log's two runs interleaved into frame temperatures
    # that never happened (300 K then 400 K read 375, 350, 350, ... K)
    p = tmp_path / "reset.csv"
    temps = [300.0 if i < len(times) // 2 else 400.0 for i in range(len(times))]
    p.write_text(
        "time_s,temperature_K\n" + "".join(f"{t},{k}\n" for t, k in zip(times, temps, strict=True))
    )
    with pytest.raises(FileFormatError, match=rf"reset\.csv.*time {what} at data row {row}\b"):
        read_holder_log(p)
