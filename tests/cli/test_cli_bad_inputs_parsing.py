"""Command-line parsing and error display: `-v` as an option value, `--debug` tracebacks,
unexpected errors as one line.

Each case here failed before the QA pass (uqa15) that added it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from perovstem.cli import main as cli_main
from perovstem.cli.main import debug_flag, main


@pytest.mark.parametrize(
    ("argv", "kept"),
    [
        (["report", "run", "--title", "-v"], True),  # a title "-v"
        (["simulate", "tilt", "-o", "-v"], True),  # an output named "-v"
        (["simulate", "image", "--drift-A", "1", "-v", "-o", "x.tif"], True),  # 2 values
        (["simulate", "tilt", "--title-less", "-v"], False),  # not an option: the flag
        (["-v", "info", "x.tif"], False),
        (["info", "x.tif", "--pixel-size-A", "0.2", "--verbose"], False),
    ],
)
def test_debug_flag_never_takes_an_option_value(argv, kept):
    out, debug = debug_flag(argv)
    assert debug is not kept
    assert ("-v" in out or "--verbose" in out) is kept


def test_option_value_minus_v_reaches_the_option(tmp_path, capsys):
    # `--shift-sigma-px -v` used to lose its value ("requires an argument") and switch
    # --debug on; now click sees the value and names it
    argv = ["simulate", "tilt", "-o", str(tmp_path / "t.npz"), "--shift-sigma-px", "-v"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--shift-sigma-px" in err and "(got '-v')" in err
    assert "requires an argument" not in err
    assert not (tmp_path / "t.npz").exists()


@pytest.mark.parametrize("debug", [False, True])
def test_debug_shows_the_traceback_of_an_error(tmp_path, capsys, debug):
    missing = tmp_path / "nope.tif"
    argv = ["info", str(missing), *(["--debug"] if debug else [])]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[-1].startswith("error:") and "nope.tif" in lines[-1]
    assert ("Traceback (most recent call last)" in err) is debug
    assert ("FileFormatError" in err) is debug
    if not debug:
        assert len(lines) == 1


@pytest.mark.parametrize("debug", [False, True])
def test_unexpected_error_is_one_line_unless_debug(tmp_path, capsys, monkeypatch, debug):
    # a bug (not a PerovstemError) printed Python's traceback and no hint; now one line
    # naming it and how to get the traceback, exit status 1
    def boom(*a, **k):
        raise KeyError("frame_time_s")

    monkeypatch.setattr("perovstem.io.load", boom)
    src = tmp_path / "a.npz"
    src.write_bytes(b"")
    assert main(["info", str(src), *(["-v"] if debug else [])]) == cli_main.EXIT_INTERNAL == 1
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: unexpected KeyError: 'frame_time_s'")
    assert ("Traceback (most recent call last)" in err) is debug
    assert ("--debug" in lines[-1]) is not debug
    if not debug:
        assert len(lines) == 1


@pytest.mark.parametrize(
    ("extra", "shown"),
    [
        (["--size-px", "1.5"], "'1.5'"),
        (["--step-deg=abc"], "'abc'"),
        (["--counts-per-A", "1e3x"], "'1e3x'"),
    ],
)
def test_unreadable_option_value_is_named(tmp_path, capsys, extra, shown):
    # typer said "Input should be a valid number, unable to parse string as a number"
    # without the text it could not read
    assert main(["simulate", "tilt", "-o", str(tmp_path / "t.npz"), *extra]) == 2
    err = capsys.readouterr().err
    assert extra[0].split("=")[0] in err and f"(got {shown})" in err
    assert "Traceback" not in err


def _series(path, n=5):
    from perovstem._data import Series
    from perovstem.io import save_image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[:48, :48]
    lattice = 5 + 20 * (np.cos(2 * np.pi * x / 6.0) * np.cos(2 * np.pi * y / 6.0)) ** 2
    data = rng.poisson(np.broadcast_to(lattice, (n, 48, 48))).astype(float)
    t = np.arange(float(n))
    save_image(Series(data, 0.5, time_s=t, dose_e_per_A2=np.full(n, 500.0)), path)
    return path


def _log_with_a_gap(path, cell):
    temps = ["300"] * 4 + [cell] + ["302"] * 9
    rows = [f"{t:g},{v}" for t, v in zip(np.arange(0, 7.0, 0.5), temps, strict=True)]
    path.write_text("time_s,temperature_K\n" + "\n".join(rows) + "\n")
    return path


def test_conditions_log_missing_readings_are_said(tmp_path, capsys):
    # an `n/a` cell of the holder log was skipped and the frames around it got an
    # interpolated temperature without a word; now one WARNING line names the log, the
    # column, the data row and the frames
    series = _series(tmp_path / "s.npz")
    log = _log_with_a_gap(tmp_path / "T.csv", "n/a")
    argv = ["insitu", str(series), "-o", str(tmp_path / "o"), "--conditions", str(log)]
    assert main([*argv, "--ci", "wald", "--no-register", "--no-plots"]) == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "missing reading" in ln]
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("WARNING:") and str(log) in line and "'temperature_K'" in line
    # the reading at 2 s is missing; the frames are sampled at their start (the series has
    # no frame time): frame 2 (t = 2 s) lies between the readings at 1.5 and 2.5 s
    assert "data rows [4]" in line and "at log times 2 s" in line and "frame(s) (2)" in line


@pytest.mark.parametrize("cell", ["NA", "", "nan", "N/A"])
def test_every_missing_reading_spelling_is_said_for_the_frames_it_touches(tmp_path, cell):
    from perovstem.insitu import interpolate_conditions
    from perovstem.io.holder_logs import read_holder_log

    log = read_holder_log(_log_with_a_gap(tmp_path / "T.csv", cell))
    # averaged over 1 s frames: frames 1 (1-2 s) and 2 (2-3 s) overlap the gap 1.5-2.5 s
    with pytest.warns(UserWarning, match=r"missing reading.*2 frame\(s\) \(1, 2\)"):
        c = interpolate_conditions(log, np.arange(5.0), frame_time_s=1.0)
    assert np.all(np.isfinite(c["temperature_K"]))


def test_conditions_without_missing_readings_say_nothing(tmp_path):
    import warnings

    from perovstem.insitu import interpolate_conditions

    log = pd.DataFrame({"time_s": np.arange(0, 7.0, 0.5), "temperature_K": 300.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = interpolate_conditions(log, np.arange(5.0), frame_time_s=1.0)
    assert np.allclose(c["temperature_K"], 300.0)
    # a missing reading outside every frame's time span is not mentioned either
    log.loc[13, "temperature_K"] = np.nan  # 6.5 s, after the last frame (4-5 s)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        interpolate_conditions(log, np.arange(5.0), frame_time_s=1.0)


@pytest.mark.parametrize(
    ("argv", "message", "shown"),
    [
        (  # atoms/fit.py: the unresolved-width warning gave the Python call
            ["atoms", "fit", "x.tif"],
            "their SCS are not measured (fix the width: width='fixed', rho_A=...)",
            "their SCS are not measured (fix the width: `--width fixed`, `--rho-A ...`)",
        ),
        (  # tomo/align.py
            ["tomo", "align", "x.npz", "-o", "y.npz"],
            "inspect the reconstruction or pass tilt_axis='com' or a known angle",
            "inspect the reconstruction or pass `--tilt-axis com` or a known angle",
        ),
        (  # atoms/count.py
            ["atoms", "count", "x.csv"],
            "compare with a simulated library (library=...).",
            "compare with a simulated library (`--library ...`).",
        ),
        (  # atoms/normalize.py
            ["atoms", "fit", "x.tif"],
            "give gain=/offset= (measured on the detector)",
            "give `--gain`/`--offset` (measured on the detector)",
        ),
        (  # a library parameter fed by an option of another name (_FED_BY)
            ["atoms", "count", "x.csv"],
            "or n_components=3",
            "or `--components 3`",
        ),
        # left alone: a call written out, the Python spelling given on purpose, a keyword the
        # command has no option for
        (["atoms", "count", "x.csv"], "`count_atoms(method='ladder')`", None),
        (["info", "x.tif"], "(Python: pixel_size=; command line: --pixel-size-A)", None),
        (["info", "x.tif"], "pass width='fixed'", None),
    ],
)
def test_warnings_name_options_not_python_keywords(capsys, argv, message, shown):
    import warnings

    from perovstem.cli.main import warnings_as_lines

    with warnings_as_lines(argv):
        warnings.warn(message, UserWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert err == f"WARNING: {shown or message} (UserWarning)\n"
