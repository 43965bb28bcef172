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


@pytest.mark.slow  # the fitted library: ~16 s per field size
@pytest.mark.parametrize("seed", [1, 2])
def test_cli_count_library_fitted(tmp_path, capsys, seed):
    """--library fitted counts against the library of the table's own fit (its pixel size,
    field and dose, 2e3 e/A^2 here): a 30 A cube's Pb-Br columns exact, not flagged (as the
    pipeline's library = "fitted": seeds 1-4 x 2 CPU modes exact).  Refused with the mixed
    termination and for a table without the fit's attrs (a CSV).  Old code: 'fitted' was
    read as a library file name."""
    from perovstem.atoms import fit_columns, normalize_image
    from perovstem.simulate import haadf_image, nanocrystal

    img, truth = haadf_image(
        nanocrystal(30.0, rng=seed), dose_e_per_A2=2e3, pixel_size_A=0.3, rng=seed
    )
    fit = fit_columns(normalize_image(img), truth[["x_A", "y_A", "type"]])
    fit["true_n"] = truth["n_atoms"].to_numpy()
    src = tmp_path / "cols.parquet"
    save_table(fit[fit["type"].isin(["PbBr", "Cs"])], src)
    out = tmp_path / "n.parquet"
    base = ["atoms", "count", str(src), "--library", "fitted", "--max-components", "10"]
    assert main([*base, "-o", str(out)]) == 2
    assert "--termination CsBr" in " ".join(capsys.readouterr().err.split())
    assert main([*base, "--termination", "CsBr", "-o", str(out)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "library: fitted" in text and "2000 e/A^2" in text, text
    res = read_table(out)
    pb = res[res["type"] == "PbBr"]
    assert np.mean(pb["n_atoms"].to_numpy() == pb["true_n"].to_numpy()) >= 0.95
    assert not res.attrs["counting"]["PbBr"]["library_anchor"]["offset_ambiguous"]
    csv = tmp_path / "cols.csv"
    fit.drop(columns=["true_n"]).to_csv(csv, index=False)
    assert main(["atoms", "count", str(csv), "--library", "fitted", "--termination", "CsBr"]) == 2
    assert "no attrs" in " ".join(capsys.readouterr().err.split())
