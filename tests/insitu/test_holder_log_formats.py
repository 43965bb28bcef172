"""Holder logs in the vendors' own formats, read through RosettaSciIO and put onto frames.

The files are written here in the layout the RosettaSciIO readers parse (Protochips
Fusion/Atmosphere CSV, DENSsolutions DigiHeater log), so the real reader code runs.
"""

from __future__ import annotations

import numpy as np
import pytest

from perovstem import FileFormatError, Series
from perovstem.insitu import attach_conditions
from perovstem.io.holder_logs import read_holder_log

pytest.importorskip("rsciio")

# non-uniform logging interval (Protochips logs on change), milliseconds
_T_MS = np.array([0, 1000, 2500, 3000, 4000, 6000, 9000, 10000])


def _protochips_gas_csv(path, t_ms=_T_MS):
    lines = ["Time,Notes,Holder Temperature,Holder Pressure,Tank1 Pressure"]
    for meta in (
        "Time units = Milliseconds",
        "Temperature units = Degrees C",
        "Pressure units = Torr",
        "Date (yyyy.mm.dd) = 2024.03.01",
        "Time (hh:mm:ss.ms) = 10:00:00.000",
        "User = tester",
    ):
        lines.append(f"Metadata,{meta},,,")
    for t in t_ms:
        s = t / 1000.0
        lines.append(f"{t},,{25 + 10 * s:.4f},{1 + 0.5 * s:.4f},{700 - s:.4f}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _dens_log(path, n=12, dt=0.5, start_s=36000.0):
    lines = [
        "01/03/'24 10:00\tDigiheater 3.1",
        "R0=100.0\ta=0.0039\tb=-5.8e-7\tc=0.0",
        "delta_t=0.5",
        "sample\ttime\tTset[C]\tTmeas[C]\tRheat[ohm]\tVheat[V]\tIheat[mA]\tPheat [mW]\tc",
    ]
    for i in range(n):
        t = start_s + dt * i
        hh, rem = divmod(t, 3600)
        mm, ss = divmod(rem, 60)
        tm = 100.0 + 20.0 * i * dt  # linear ramp, 20 °C/s
        lines.append(f"{i}\t{int(hh):02d}:{int(mm):02d}:{ss:06.3f}\t{tm}\t{tm:.3f}\t1\t1\t1\t1\t0")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_protochips_gas_cell_log_through_rsciio(tmp_path):
    df = read_holder_log(_protochips_gas_csv(tmp_path / "atmosphere.csv"))
    assert df.attrs["reader"] == "rsciio.protochips"
    assert df.attrs["start_time"].startswith("2024-03-01T10:00:00")
    # the recorded (non-uniform) time stamps, not the reader's extrapolated uniform axis
    np.testing.assert_allclose(df["time_s"], _T_MS / 1000.0)
    s = _T_MS / 1000.0
    np.testing.assert_allclose(df["temperature_K"], 298.15 + 10 * s, atol=1e-3)
    # the pressure at the sample is the holder's, not the gas-supply tank's (Torr → Pa)
    np.testing.assert_allclose(df["pressure_Pa"], (1 + 0.5 * s) * 133.322368, rtol=1e-5)
    np.testing.assert_allclose(df["tank1_pressure_Pa"], (700 - s) * 133.322368, rtol=1e-5)
    # onto frames: linear ramps interpolate exactly, also between irregular samples
    ser = Series(np.ones((4, 8, 8)), 0.5, time_s=[0.0, 2.0, 4.5, 7.0])
    out = attach_conditions(ser, df, time_offset_s=1.0, frame_time_s=None)
    tq = np.array([1.0, 3.0, 5.5, 8.0])
    np.testing.assert_allclose(out.temperature_K, 298.15 + 10 * tq, atol=1e-3)
    np.testing.assert_allclose(out.pressure_Pa, (1 + 0.5 * tq) * 133.322368, rtol=1e-5)
    np.testing.assert_allclose(
        out.metadata["conditions"]["tank1_pressure_Pa"], (700 - tq) * 133.322368
    )


def test_dens_heating_log_through_rsciio(tmp_path):
    df = read_holder_log(_dens_log(tmp_path / "heating.log"))
    assert df.attrs["reader"] == "rsciio.dens"
    assert df.attrs["start_time"] == "2024-03-01T10:00:00"
    # time-of-day clock of the log → seconds from the first sample; the clock is kept
    assert df.attrs["log_t0_s"] == pytest.approx(36000.0, abs=1e-6)
    np.testing.assert_allclose(df["time_s"], 0.5 * np.arange(12), atol=1e-9)
    np.testing.assert_allclose(df["temperature_K"], 373.15 + 20 * df["time_s"], atol=1e-3)
    ser = Series(np.ones((3, 8, 8)), 0.5, time_s=[0.0, 1.0, 2.0])
    out = attach_conditions(ser, df, time_offset_s=2.0, frame_time_s=1.0)
    # frame averages of a linear ramp = value at the frame centre (t + 0.5 s)
    np.testing.assert_allclose(out.temperature_K, 373.15 + 20 * np.array([2.5, 3.5, 4.5]))
    assert out.metadata["conditions_source"].endswith("heating.log")


def test_unreadable_vendor_log_names_the_readers(tmp_path):
    p = tmp_path / "broken.csv"
    p.write_text("Time,Notes,Holder Temperature\nMetadata,garbage\n1,2\n")
    with pytest.raises(FileFormatError) as exc:
        read_holder_log(p)
    msg = str(exc.value)
    assert "broken.csv" in msg and "protochips" in msg and "dens" in msg


def test_dens_impulse_log_through_rsciio(tmp_path):
    # Impulse exports "<name>_Synchronized data.csv" next to "<name>_Metadata.log"
    t = np.array([0.0, 0.5, 1.0, 1.7, 2.0, 2.5, 3.0])  # logged irregularly
    lines = ["TimeStamp,Experiment time,Temperature (°C),Pressure (mbar),Heater power (mW)"]
    lines += [f"10:00:{x:06.3f},{x},{100 + 20 * x:.3f},{5 + x:.3f},1.0" for x in t]
    p = tmp_path / "run_1_Synchronized data.csv"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "run_1_Metadata.log").write_text(
        "Experiment date, 2024-03-01\nExperiment time, 10:00:00\nSample, CsPbBr3\n"
    )
    df = read_holder_log(p)
    assert df.attrs["reader"] == "rsciio.impulse"
    assert df.attrs["start_time"] == "2024-03-01T10:00:00"
    # the recorded times (1.7 s), not the reader's uniform 0.5 s grid
    np.testing.assert_allclose(df["time_s"], t)
    np.testing.assert_allclose(df["temperature_K"], 373.15 + 20 * t, atol=1e-3)
    np.testing.assert_allclose(df["pressure_Pa"], (5 + t) * 100.0, atol=1e-3)
    assert "heater_power_mw" in df
    c = attach_conditions(Series(np.ones((2, 4, 4)), 1.0, time_s=[0.0, 1.2]), df)
    np.testing.assert_allclose(c.temperature_K, 373.15 + 20 * np.array([0.0, 1.2]), atol=1e-3)
