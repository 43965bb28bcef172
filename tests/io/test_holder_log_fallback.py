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
