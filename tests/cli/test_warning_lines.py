"""Every warning a command raises prints as one ``WARNING: <message> (<category>)`` line.

Before: `perovstem atoms fit` on a low-dose image printed

    .../atoms/fit.py:244: UserWarning: fit_columns: the fitted width of ... columns ...
      return func(*args, **kwargs)
    .../atoms/fit.py:1315: RuntimeWarning: All-NaN slice encountered
      e_by_type = {t: float(np.nanmedian(e_col[tid == i])) for i, t in enumerate(tnames)}

(the location was the wrapper of ``fit_columns``, the RuntimeWarning a NaN median of
ours), and `atoms count` printed its "count levels merged?" warning twice: once as its own
line, once as the library's raw UserWarning.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from perovstem.cli.main import main

_LINE = re.compile(r"^WARNING: \S.* \((UserWarning|RuntimeWarning)\)$")
_RAW = re.compile(r"\.py:\d+: \w*Warning:|return func\(|Traceback")


def _cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    src = Path(__file__).resolve().parents[2] / "src"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("PYTHONWARNINGS", None)
    return subprocess.run(
        [sys.executable, "-m", "perovstem", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.fixture(scope="module")
def low_dose_image(tmp_path_factory):
    """A 15 Å crystal at 300 e⁻/Å²: every fitted width collapses below 0.4 px."""
    d = tmp_path_factory.mktemp("low")
    argv = ["simulate", "image", "-o", str(d / "low.tif"), "--edge-A", "15"]
    assert main([*argv, "--dose-e-per-A2", "300", "--seed", "1"]) == 0
    return d / "low.tif"


def test_atoms_fit_warnings_are_one_line_each(low_dose_image):
    out = low_dose_image.with_name("cols.parquet")
    r = _cli(
        "atoms", "fit", str(low_dose_image), "--cell", "cspbbr3", "-o", str(out), cwd=out.parent
    )
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines, "the low-dose fit warns (unresolved widths)"
    assert all(_LINE.match(line) for line in lines), r.stderr
    assert not _RAW.search(r.stderr), r.stderr
    assert any("fell below 0.4 px" in line for line in lines), r.stderr
    # numpy's "All-NaN slice" of our own median over columns without an estimate: gone
    assert "All-NaN" not in r.stderr
    assert len(lines) == len(set(lines))


def test_debug_flag_shows_the_full_form_at_the_callers_line(low_dose_image):
    out = low_dose_image.with_name("cols_v.parquet")
    argv = ["atoms", "fit", str(low_dose_image), "--cell", "cspbbr3", "-o", str(out)]
    r = _cli(*argv, "-v", cwd=out.parent)
    assert r.returncode == 0, r.stderr
    assert "UserWarning: fit_columns: the fitted width" in r.stderr, r.stderr
    # located at the command's call of fit_columns, not inside fit_columns' wrapper
    assert "return func(*args, **kwargs)" not in r.stderr
    assert re.search(r"cli[/\\]atoms\.py:\d+: UserWarning: fit_columns", r.stderr), r.stderr


def test_fit_columns_warning_names_the_callers_line(low_dose_image):
    """``fit_columns``' warnings (stacklevel=2) named its wrapper ``fit.py:244``."""
    from perovstem.atoms import fit_columns
    from perovstem.io import load, read_table

    truth = read_table(low_dose_image.with_name("low_truth.parquet"))
    with pytest.warns(UserWarning, match="fell below 0.4 px") as rec:
        fit_columns(load(low_dose_image), truth[["x_A", "y_A", "type"]])
    assert {Path(w.filename).name for w in rec if "fit_columns" in str(w.message)} == {
        Path(__file__).name
    }


def test_count_warning_is_printed_once(tmp_path, statstem_data):
    # StatSTEM's Pt/Ir particle without a library: the ladder check fails; the command's own
    # WARNING line (stdout) says it, the library's raw UserWarning no longer follows on stderr
    from perovstem.io import save_table

    ref = pd.read_csv(statstem_data / "csv" / "Example_PtIr_reference_fit.csv")
    src = tmp_path / "ptir.parquet"
    save_table(ref[["x_A", "y_A", "scs"]], src)
    r = _cli("atoms", "count", str(src), "-o", str(tmp_path / "o.parquet"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "WARNING counts may be too low" in r.stdout
    assert "may merge count levels" not in r.stderr, r.stderr
    assert not _RAW.search(r.stderr), r.stderr


def test_hook_one_line_once_flags_and_log_records(capsys):
    from perovstem.cli.main import warnings_as_lines

    argv = ["simulate", "tilt", "-o", "ts.npz", "--edge-A", "20"]
    with warnings_as_lines(argv):
        for _ in range(3):  # once, whatever the location
            warnings.warn("`edge_A` is small:\n  two  lines", UserWarning, stacklevel=1)
            warnings.warn("`edge_A` is small:\n  two  lines", UserWarning, stacklevel=2)
        with np.errstate(divide="warn"):
            np.log(np.zeros(1))
        logging.getLogger("distributed.worker").warning("worker %s lost", "w1")
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "WARNING: `--edge-A` is small: two lines (UserWarning)",
        "WARNING: divide by zero encountered in log (RuntimeWarning)",
        "WARNING: worker w1 lost (warning from distributed.worker)",
    ]
    # after the command: Python's own display again
    assert warnings.showwarning.__module__ == "warnings"


def test_debug_flag_is_accepted_anywhere_and_taken_off(tmp_path, capsys):
    for argv in (["--debug", "info", "nope.tif"], ["info", "nope.tif", "-v"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "nope.tif" in err and "No such option" not in err
