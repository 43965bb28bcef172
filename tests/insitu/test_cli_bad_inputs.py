"""Bad in-situ inputs on the command line: one clear message, or the skipped frame said.

Before: a blank or zero-dose frame in the middle of a series was left out silently (a row of
the frames table, an index in summary.json); a series whose every frame has zero dose
stopped with "every frame of the series is unusable (6 frames)"; ``--dose-e-per-A2 0`` was
refused naming the Python API's ``allow_zero_dose=True``; a multi-page tif whose pages
differ in size was "6 images and none is titled HAADF ... --signal" (an option `insitu`
does not have); a file without time stamps lost the per-second results without a word.
"""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from perovstem.cli.main import main

_FAST = ["--ci", "wald", "--no-register", "--no-plots"]


def _frames(n=5):
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:48, :48]
    lattice = 5 + 20 * (np.cos(2 * np.pi * x / 6.0) * np.cos(2 * np.pi * y / 6.0)) ** 2
    return rng.poisson(np.broadcast_to(lattice, (n, 48, 48))).astype(float)


def _series(path, data=None, **kw):
    from perovstem._data import Series
    from perovstem.io import save_image

    data = _frames() if data is None else data
    n = len(data)
    kw = {"time_s": np.arange(float(n)), "dose_e_per_A2": np.full(n, 500.0), **kw}
    save_image(Series(data, 0.5, **kw), path)
    return path


def _run(capsys, *argv):
    rc = main(["insitu", *map(str, argv), *_FAST])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.mark.parametrize(
    ("what", "reason"),
    [("blank", "constant frame (all pixels = 0.0)"), ("dose", "zero dose (beam blanked)")],
)
def test_a_bad_frame_in_the_middle_is_reported_as_skipped(tmp_path, capsys, what, reason):
    data = _frames()
    dose = np.full(5, 500.0)
    if what == "blank":
        data[2] = 0.0
    else:
        dose[2] = 0.0
    p = _series(tmp_path / "s.npz", data, dose_e_per_A2=dose)
    rc, out, err = _run(capsys, p, "-o", tmp_path / "o")
    assert rc == 0, err
    text = " ".join(out.split())
    assert f"note: 1 of 5 frames skipped (frame 2: {reason}" in text, out
    # no lost output: every table and the summary are written, the frame marked
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["skipped_frames"] == [2]
    from perovstem.io import read_table

    frames = read_table(tmp_path / "o" / "frames.parquet")
    assert frames["skipped"].tolist() == [False, False, True, False, False]


def test_every_frame_at_zero_dose_names_the_reason(tmp_path, capsys):
    p = _series(tmp_path / "s.npz", dose_e_per_A2=np.zeros(5))
    rc, out, err = _run(capsys, p, "-o", tmp_path / "o")
    assert rc == 2
    text = " ".join(err.split())
    assert "every frame of the series is unusable (5 frames): zero dose" in text, err
    assert "(frames 0-4)" in text, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flag", ["--dose-e-per-A2", "--current-pA"])
def test_zero_dose_option_is_refused_naming_the_flag(tmp_path, capsys, flag):
    p = _series(tmp_path / "s.npz")
    extra = ["--dwell-us", "5"] if flag == "--current-pA" else []
    rc, out, err = _run(capsys, p, "-o", tmp_path / "o", flag, "0", *extra)
    assert rc == 2
    assert f"`{flag}` must be > 0, got 0" in " ".join(err.split()), err
    assert "allow_zero_dose" not in err
    assert not (tmp_path / "o").exists()


def test_frames_of_different_shapes_are_named(tmp_path, capsys):
    import tifffile

    data = _frames(4).astype(np.float32)
    with tifffile.TiffWriter(tmp_path / "s.tif") as tw:
        for k in range(4):
            tw.write(data[k] if k != 2 else data[k][:40, :44])
    rc, out, err = _run(
        capsys, tmp_path / "s.tif", "--pixel-size-A", "0.5", "--dose-e-per-A2", "500",
        "--frame-time-s", "1",
    )  # fmt: skip
    assert rc == 2
    text = " ".join(err.split())
    assert "4 frames of different shapes (48×48 px: pages 0, 1, 3; 40×44 px: page 2;" in text, err
    assert "HAADF" not in text and "--signal" not in text


def test_no_time_stamps_is_said(tmp_path, capsys):
    p = _series(tmp_path / "s.npz", time_s=None)
    rc, out, err = _run(capsys, p, "-o", tmp_path / "o")
    assert rc == 0, err
    assert "note: no frame time stamps" in " ".join(out.split()), out


def _log(path, t, temperature):
    pd.DataFrame({"time_s": t, "temperature_K": temperature}).to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    ("cells", "shown"),
    [
        (["300"] * 5 + ["ERR"] + ["301"] * 8, "'ERR' in 1 of 14 data row(s), first [5]"),
        # every cell text: the channel was dropped and the series had no temperature
        (["300 K"] * 14, "'300 K' in 14 of 14 data row(s)"),
    ],
)
def test_conditions_log_with_text_in_a_numeric_column(tmp_path, capsys, cells, shown):
    p = _series(tmp_path / "s.npz")
    log = _log(tmp_path / "T.csv", np.arange(0, 7.0, 0.5), cells)
    rc, out, err = _run(capsys, p, "-o", tmp_path / "o", "--conditions", log)
    assert rc == 2
    text = " ".join(err.split())
    assert f"{str(log)!r}: not a vendor log" in text, err
    assert "as CSV, column 'temperature_K' holds text where numbers are expected" in text
    assert shown in text, err
    assert not (tmp_path / "o").exists()


def test_conditions_log_missing_reading_and_good_log(tmp_path, capsys):
    # an empty cell / NaN is a missing reading (not text): the other samples are used
    p = _series(tmp_path / "s.npz")
    log = _log(tmp_path / "T.csv", np.arange(0, 7.0, 0.5), [300.0] * 5 + [np.nan] + [302.0] * 8)
    rc, out, err = _run(capsys, p, "-o", tmp_path / "o", "--conditions", log)
    assert rc == 0, err
    from perovstem.io import read_table

    temp = read_table(tmp_path / "o" / "frames.parquet")["temperature_K"].to_numpy()
    assert np.all(np.isfinite(temp)) and temp[0] == 300.0 and temp[-1] == 302.0


@pytest.mark.parametrize(
    ("t0", "bad"), [(100.0, "[0, 1, 2, 3, 4]"), (0.0, "[3, 4]")], ids=["late", "short"]
)
def test_conditions_log_not_covering_the_series(tmp_path, capsys, t0, bad):
    p = _series(tmp_path / "s.npz")
    t = t0 + np.arange(0, 2.0 if t0 == 0 else 7.0, 0.5)
    log = _log(tmp_path / "T.csv", t, np.full(t.size, 300.0))
    rc, out, err = _run(capsys, p, "-o", tmp_path / "o", "--conditions", log)
    assert rc == 2
    text = " ".join(err.split())
    assert f"--conditions {str(log)!r}: frame(s) {bad} lie outside the log" in text, err
    assert "the frames 0.0–4.0 s with `--time-offset-s` = 0" in text, err
    assert not (tmp_path / "o").exists()


def test_conditions_without_time_stamps_names_the_option(tmp_path, capsys):
    p = _series(tmp_path / "s.npz", time_s=None)
    log = _log(tmp_path / "T.csv", np.arange(0, 7.0, 0.5), np.full(14, 300.0))
    rc, out, err = _run(capsys, p, "-o", tmp_path / "o", "--conditions", log)
    assert rc == 2
    assert "give --frame-time-s" in " ".join(err.split()) and "assign_dose" not in err


def test_beam_energy_missing_is_said_and_given_by_the_option(tmp_path, capsys):
    # Pb⁰ atoms of a series without its beam energy were counted at 300 kV in silence
    f = _series(tmp_path / "s.npz", dose_e_per_A2=np.full(5, 500.0))
    rc, out, _ = _run(capsys, f, "-o", str(tmp_path / "a"))
    assert rc == 0 and "no beam energy" in out
    assert "no beam energy" in " ".join(
        json.loads((tmp_path / "a" / "summary.json").read_text())["notes"]
    )
    rc, out, _ = _run(capsys, f, "--voltage-kV", "200", "-o", str(tmp_path / "b"))
    assert rc == 0 and "no beam energy" not in out
    rc, _, err = _run(capsys, f, "--voltage-kV", "120")
    assert rc == 2 and "`--voltage-kV` must be 200 or 300" in err


def _digiheater(path, n=40):
    """A DigiHeater log on the holder PC's local clock: first sample 12:00:00, a 20 K/s
    ramp from 100 °C sampled every 0.5 s."""
    lines = [
        "01/03/'24 11:58\tDigiheater 3.1",
        "R0=100.0\ta=0.0039\tb=-5.8e-7\tc=0.0",
        "delta_t=0.5",
        "sample\ttime\tTset[C]\tTmeas[C]\tRheat[ohm]\tVheat[V]\tIheat[mA]\tPheat [mW]\tc",
    ]
    for i in range(n):
        tm = 100.0 + 10.0 * i
        lines.append(f"{i}\t12:00:{0.5 * i:06.3f}\t{tm}\t{tm:.3f}\t1\t1\t1\t1\t0")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("zone", ["UTC+01:00", None, "given"])
def test_conditions_are_aligned_by_the_two_clocks(tmp_path, capsys, zone):
    # the first frame acquired 11:00:02 UTC = 12:00:02 on the holder PC (UTC+1): 2 s into
    # the log. Old code put it at the log's first sample (40 K too cold on this ramp)
    md = {"acquisition_start_utc": "2024-03-01T11:00:02+00:00"}
    if zone not in (None, "given"):
        md["acquisition_time_zone"] = zone  # a DM file's DataBar clock gives it
    p = _series(tmp_path / "s.npz", metadata=md)
    log = _digiheater(tmp_path / "heating.log")
    extra = ["--log-utc-offset-h", "1"] if zone == "given" else []
    rc, out, err = _run(capsys, p, "-o", tmp_path / "o", "--conditions", log, *extra)
    assert rc == 0, err
    text = " ".join((out + err).split())
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    temp = pd.read_parquet(tmp_path / "o" / "frames.parquet")["temperature_K"].to_numpy()
    ramp = 373.15 + 20.0 * np.arange(5.0)  # the log's values at the frames' starts
    if zone is None:  # no zone for the holder PC's clock: said, the log's start taken
        assert summary["conditions_time_offset_s"] == 0.0
        assert "first frame is placed at the log's time 0" in text
        assert "holder PC's time zone is not known" in text and "--log-utc-offset-h" in text
        np.testing.assert_allclose(temp, ramp, atol=0.05)
    else:
        assert summary["conditions_time_offset_s"] == pytest.approx(2.0, abs=1e-3)
        assert "the first frame lies at 2.0 s of the log, from the two clocks" in text
        np.testing.assert_allclose(temp, ramp + 40.0, atol=0.05)


def test_log_zone_option_needs_a_log_and_excludes_a_given_offset(tmp_path, capsys):
    p = _series(tmp_path / "s.npz")
    rc, _, err = _run(capsys, p, "-o", tmp_path / "o", "--log-utc-offset-h", "1")
    assert rc == 2 and "give --conditions LOG with it" in " ".join(err.split())
    log = _digiheater(tmp_path / "heating.log")
    args = ["--conditions", log, "--log-utc-offset-h", "1", "--time-offset-s", "3"]
    rc, _, err = _run(capsys, p, "-o", tmp_path / "o", *args)
    assert rc == 2 and "both place the log: give one" in " ".join(err.split())
    rc, _, err = _run(
        capsys, p, "-o", tmp_path / "o", "--conditions", log, "--log-utc-offset-h", "30"
    )
    assert rc == 2 and "within -14…14 h, got 30" in " ".join(err.split())
    assert not (tmp_path / "o").exists()
