"""CLI: ``perovstem atoms count --scale-prior`` and the offset-ambiguity line."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from perovstem.cli.main import main
from perovstem.io import read_table, save_table


def _cube_table(seed):
    """A one-thickness cube's cross-sections 7-8 % below the simulated total-SCS library
    (a Gaussian-fit deficit): Pb-Br 9 atoms, Cs 10 atoms."""
    from perovstem.simulate import scs_library

    rng = np.random.default_rng(seed)
    rows = []
    for t, n, scale, sd, size in (("PbBr", 9, 0.93, 0.004, 100), ("Cs", 10, 0.92, 0.0008, 120)):
        lib = scs_library(t, 20).set_index("n_atoms")["scs_A2"]
        rows.append(
            pd.DataFrame(
                {
                    "x_A": rng.uniform(0, 50, size),
                    "y_A": rng.uniform(0, 50, size),
                    "scs": scale * lib.loc[n] + rng.normal(0, sd, size),
                    "type": t,
                    "true_n": n,
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


@pytest.mark.parametrize("seed", [0, 1])
def test_cli_count_prints_offset_ambiguity_and_scale_prior_decides_it(tmp_path, capsys, seed):
    """Default prior: a flat crystal's counts are flagged (the readings n and n-1 fit about
    as well) and the command says so per type with P(0) and the ways out; with
    --scale-prior at the known calibration the counts are exact and not flagged.
    Old code: no --scale-prior option, no line."""
    df = _cube_table(seed)
    src = tmp_path / "cols.parquet"
    save_table(df, src)
    base = ["atoms", "count", str(src), "--library", "simulate", "--max-components", "10"]
    assert main([*base, "-o", str(tmp_path / "weak.parquet")]) == 0
    out = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    for t in ("PbBr", "Cs"):
        assert f"{t}: WARNING counts may all be offset by whole atoms: P(0) = 0." in out, out
    assert out.count("give --scale-prior CENTER,LOG_SD") == 2, out
    sure = tmp_path / "sure.parquet"
    assert main([*base, "-o", str(sure), "--scale-prior", "0.93,0.02"]) == 0
    assert "offset by whole atoms" not in capsys.readouterr().out
    res = read_table(sure)
    assert np.mean(res["n_atoms"].to_numpy() == df["true_n"].to_numpy()) > 0.95
    for t in ("PbBr", "Cs"):
        prior = res.attrs["counting"][t]["library_anchor"]["scale_prior"]
        assert prior == {"center": 0.93, "log_sd": 0.02, "source": "user"}


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--library", "simulate", "--scale-prior", "0.92"], ["--scale-prior", "'0.92'"]),
        (["--library", "simulate", "--scale-prior", "a,b"], ["--scale-prior", "'a,b'"]),
        (["--library", "simulate", "--scale-prior", "0,0.03"], ["--scale-prior", "'0,0.03'"]),
        (["--library", "simulate", "--scale-prior", "1,-0.1"], ["--scale-prior", "'1,-0.1'"]),
        (["--scale-prior", "0.92,0.03"], ["--scale-prior", "no --library"]),
        (["--method", "ladder", "--scale-prior", "0.92,0.03"], ["--scale-prior", "ladder"]),
        (
            ["--method", "hybrid", "--library", "simulate", "--scale-prior", "0.92,0.03"],
            ["--scale-prior", "hybrid"],
        ),
    ],
)
def test_cli_count_scale_prior_bad_input(tmp_path, capsys, extra, words):
    src = tmp_path / "cols.parquet"
    save_table(_cube_table(0), src)
    out = tmp_path / "o.parquet"
    assert main(["atoms", "count", str(src), "-o", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
    assert not out.exists()
