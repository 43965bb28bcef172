"""Shared pieces of the CLI bad-input tests (test_cli_bad_inputs_sweep.py, test_cli_limits.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from perovstem.cli.main import main


def pbbr_columns(rng: np.random.Generator) -> pd.DataFrame:
    """A 4 × 4 grid of Pb–Br columns (5.87 Å apart) with SCS and their errors."""
    return pd.DataFrame(
        {
            "x_A": np.tile(np.arange(4.0), 4) * 5.87,
            "y_A": np.repeat(np.arange(4.0), 4) * 5.87,
            "type": "PbBr",
            "scs": rng.normal(1.0, 0.02, 16),
            "scs_err": 0.01,
        }
    )


def assert_refused(capsys, argv, d, o, *fragments, absent=()) -> str:
    """Run the CLI on ``argv`` (``{d}``/``{o}`` filled in) and check the refusal: exit 2, one
    line, no traceback, every fragment in it and none of ``absent``.  Returns the message
    with its whitespace collapsed."""
    rc = main([a.format(d=d, o=o) for a in argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert "Traceback" not in err and len(lines) == 1, err
    text = " ".join(err.split())
    for f in fragments:
        assert f.format(d=d) in text, err
    for f in absent:
        assert f not in text, err
    return text
