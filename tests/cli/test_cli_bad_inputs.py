"""Command-line parsing and error display: `-v` as an option value, `--debug` tracebacks,
unexpected errors as one line.

Each case here failed before the QA pass (uqa15) that added it.
"""

from __future__ import annotations

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
