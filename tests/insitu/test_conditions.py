from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from perovstem import DataError, FileFormatError, Series
from perovstem.insitu import attach_conditions, interpolate_conditions
from perovstem.io.holder_logs import conditions_from_signals, read_holder_log


def test_rsciio_style_channels_converted():
    sigs = [
        {
            "data": np.array([25.0, 125.0, 225.0]),
            "axes": [{"scale": 10.0, "offset": 0.0, "units": "s"}],
            "metadata": {"General": {"title": "Temperature (°C)", "date": "2024-01-01"}},
        },
        {
            "data": np.array([1.0, 2.0, 3.0]),
            "axes": [{"axis": [0.0, 10.0, 20.0], "units": "s"}],
            "metadata": {"Signal": {"quantity": "Pressure (mbar)"}},
        },
    ]
    df = conditions_from_signals(sigs)
    np.testing.assert_allclose(df["temperature_K"], [298.15, 398.15, 498.15])
    np.testing.assert_allclose(df["pressure_Pa"], [100.0, 200.0, 300.0])
    assert df.attrs["start_time"] == "2024-01-01"


def test_csv_log_interpolated_and_averaged(tmp_path):
    t = np.arange(0, 101, 5.0)
    log = pd.DataFrame({"time_s": t, "temperature_C": 20 + 2 * t, "pressure_mbar": 1.0})
    p = tmp_path / "heating.csv"
    log.to_csv(p, index=False)
    df = read_holder_log(p)
    assert df.attrs["reader"] == "csv"
    np.testing.assert_allclose(df["temperature_K"], 293.15 + 2 * t)
    np.testing.assert_allclose(df["pressure_Pa"], 100.0)
    c = interpolate_conditions(df, [0.0, 12.5, 30.0], time_offset_s=10.0)
    np.testing.assert_allclose(c["temperature_K"], 293.15 + 2 * np.array([10, 22.5, 40]))
    # frame averages of a linear ramp = value at the frame centre
    c2 = interpolate_conditions(df, [0.0, 12.5], time_offset_s=10.0, frame_time_s=3.0)
    np.testing.assert_allclose(c2["temperature_K"], 293.15 + 2 * np.array([11.5, 24.0]))
    s = Series(np.ones((3, 8, 8)), 0.5, time_s=[0.0, 12.5, 30.0])
    s2 = attach_conditions(s, df, time_offset_s=10.0)
    np.testing.assert_allclose(s2.temperature_K, c["temperature_K"])
    np.testing.assert_allclose(s2.pressure_Pa, 100.0)
    assert s.temperature_K is None


def test_bad_logs(tmp_path):
    with pytest.raises(FileFormatError, match="does not exist"):
        read_holder_log(tmp_path / "none.csv")
    p = tmp_path / "bad.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(FileFormatError, match="time column"):
        read_holder_log(p)
    log = pd.DataFrame({"time_s": [0.0, 10.0], "temperature_K": [300.0, 310.0]})
    with pytest.raises(DataError, match="outside the log"):
        interpolate_conditions(log, [0.0, 5.0, 30.0])
    with pytest.raises(DataError, match="missing"):
        interpolate_conditions(log, [0.0, np.nan])
    with pytest.raises(DataError, match="time stamps"):
        attach_conditions(Series(np.ones((2, 4, 4)), 1.0), log)


def test_attach_conditions_averages_over_the_recorded_frame_time():
    # a heating ramp (10 K/s) and 1 s frames whose length the file records
    # (metadata['frame_time_s'], as the simulator and MRC FEI headers do): the
    # temperature was sampled at each frame start, 5 K below the frame's mean
    log = pd.DataFrame({"time_s": np.arange(0.0, 10.01, 0.5), "temperature_K": 300.0})
    log["temperature_K"] += 10.0 * log["time_s"]
    s = Series(np.zeros((4, 8, 8)), 0.5, time_s=np.arange(4.0), metadata={"frame_time_s": 1.0})
    got = attach_conditions(s, log).temperature_K
    np.testing.assert_allclose(got, 305.0 + 10.0 * np.arange(4))
    # without a recorded frame time the frame start is sampled, as before
    s0 = s.replace(metadata={})
    np.testing.assert_allclose(attach_conditions(s0, log).temperature_K, 300.0 + 10 * np.arange(4))


def test_log_replacing_the_files_temperature_is_said(tmp_path):
    """A series whose file records 280 K given a holder log at 301-315 K: the log's
    temperatures are taken (the holder's record of the run), and a note now says the
    file's were replaced (it did silently).  A log giving one quantity twice
    (temperature_C and temperature_K) uses the first column and says so (the last one
    silently won)."""
    from perovstem.insitu.prepare import prepare_series

    p = tmp_path / "log.csv"
    p.write_text("time_s,temperature_K\n0,301\n10,315\n")
    s = Series(np.ones((3, 8, 8)), 0.5, time_s=[0.0, 1.0, 2.0], temperature_K=280.0)
    out, notes = prepare_series(s, conditions=p, time_offset_s=0.0)
    np.testing.assert_allclose(out.temperature_K, [301.0, 302.4, 303.8])
    said = [x for x in notes if "the file's temperature_K (280–280 K) is replaced" in x]
    assert len(said) == 1 and "301–303.8 K" in said[0], notes
    # no note where the file recorded no temperature
    _, notes = prepare_series(s.replace(temperature_K=None), conditions=p, time_offset_s=0.0)
    assert not any("is replaced by the log's" in x for x in notes), notes
    both = tmp_path / "both.csv"
    both.write_text("time_s,temperature_C,temperature_K\n0,25,400\n10,25,400\n")
    with pytest.warns(UserWarning, match=r"'temperature_C' and 'temperature_K' both give"):
        log = read_holder_log(both)
    np.testing.assert_allclose(log["temperature_K"], 298.15)
    np.testing.assert_allclose(log["temperature_2_K"], 400.0)  # named by its unit in the table
    # a second time column (read as the time too) is kept apart, named after the first
    two = tmp_path / "two_times.csv"
    two.write_text("time_s,Time (s),temperature_K\n0,0,300\n1,1,301\n")
    with pytest.warns(UserWarning, match=r"'time_s' and 'Time \(s\)' both give time_s"):
        log = read_holder_log(two)
    np.testing.assert_allclose(log["temperature_K"], [300.0, 301.0])


def test_impossible_log_reading_names_the_log(tmp_path):
    """A log reading the series refuses (−5 K) was reported without the log's name."""
    from perovstem import ParameterError
    from perovstem.insitu.prepare import prepare_series

    p = tmp_path / "cold.csv"
    p.write_text("time_s,temperature_K\n0,-5\n10,-5\n")
    s = Series(np.ones((2, 8, 8)), 0.5, time_s=[0.0, 1.0])
    with pytest.raises(ParameterError, match=r"conditions '.*cold\.csv'.*got -5\.0"):
        prepare_series(s, conditions=p, time_offset_s=0.0)


@pytest.mark.parametrize(
    ("header", "row", "temperature_K", "pressure_Pa"),
    [
        ("time_s,temperature_F,pressure_atm", "0,212,1", 373.15, 101325.0),
        ("time_s,Temperature (°F),Pressure (mTorr)", "0,212,750", 373.15, 99.99),
        ("time_s,temperature_degC,pressure_psi", "0,100,14.6959", 373.15, 101325.0),
        ("time_s,Temperature (Degrees C),Pressure (mmHg)", "0,100,760", 373.15, 101325.0),
    ],
)
def test_holder_log_units_are_converted(tmp_path, header, row, temperature_K, pressure_Pa):
    """°F was read as °C (212 °F → 485 K) and atm, psi, mTorr as Pa (1 atm → 1 Pa)."""
    p = tmp_path / "log.csv"
    p.write_text(f"{header}\n{row}\n" + row.replace("0,", "10,", 1) + "\n")
    log = read_holder_log(p)
    np.testing.assert_allclose(log["temperature_K"], temperature_K, atol=1e-6)
    np.testing.assert_allclose(log["pressure_Pa"], pressure_Pa, rtol=1e-3)


def test_holder_log_unknown_or_missing_units_are_said(tmp_path):
    """An unknown unit is refused naming the column; a column without one is taken as °C
    (temperature) or Pa (pressure) with a warning (a bare 300 became 573 K silently)."""
    from perovstem.errors import FileFormatError

    p = tmp_path / "log.csv"
    p.write_text("time_s,Pressure (inHg),temperature_K\n0,29.9,300\n10,29.9,300\n")
    with pytest.raises(FileFormatError, match=r"column 'Pressure \(inHg\)': pressure unit 'inHg'"):
        read_holder_log(p)
    p.write_text("time_s,temperature,pressure\n0,300,760\n10,300,760\n")
    with pytest.warns(UserWarning) as rec:
        log = read_holder_log(p)
    said = " ".join(str(w.message) for w in rec)
    assert "column 'temperature' names no unit: taken as °C" in said
    assert "column 'pressure' names no unit: taken as Pa" in said
    np.testing.assert_allclose(log["temperature_K"], 573.15)
    # a last word that is no unit is part of the name, as before
    p.write_text("time_s,Temperature Measured\n0,100\n10,100\n")
    with pytest.warns(UserWarning, match="names no unit"):
        assert np.allclose(read_holder_log(p)["temperature_K"], 373.15)
