"""CLI: perovstem atoms count / atoms track."""

from __future__ import annotations

import numpy as np
import pandas as pd

from perovstem.cli.main import main
from perovstem.io import read_table, save_table


def _scs_table(seed=0, n=400):
    rng = np.random.default_rng(seed)
    k = rng.integers(1, 7, n)
    return k, pd.DataFrame(
        {
            "x_A": rng.uniform(0, 100, n),
            "y_A": rng.uniform(0, 100, n),
            "type": "PbBr",
            "scs": np.abs(0.0146 * k + rng.normal(0, 0.0015, n)),
        }
    )


def test_cli_count_gmm_and_hybrid(tmp_path):
    k, df = _scs_table()
    src = tmp_path / "cols.parquet"
    save_table(df, src)
    out = tmp_path / "counts.parquet"
    crit = tmp_path / "icl.csv"
    rc = main(
        [
            "atoms",
            "count",
            str(src),
            "-o",
            str(out),
            "--max-components",
            "12",
            "--criteria-out",
            str(crit),
        ]
    )
    assert rc == 0
    res = read_table(out)
    assert np.mean(res["n_atoms"].to_numpy() == k) > 0.97
    curve = read_table(crit)
    assert len(curve) == 12 and {"icl", "bic", "aic"} <= set(curve.columns)
    lib = tmp_path / "lib.csv"
    save_table(
        pd.DataFrame({"n_atoms": np.arange(1, 21), "scs_A2": 0.0146 * np.arange(1, 21)}), lib
    )
    out2 = tmp_path / "hyb.csv"
    assert (
        main(
            [
                "atoms",
                "count",
                str(src),
                "-o",
                str(out2),
                "--method",
                "hybrid",
                "--library",
                str(lib),
            ]
        )
        == 0
    )
    assert np.mean(read_table(out2)["n_atoms"].to_numpy() == k) > 0.97
    # refuses to overwrite without --overwrite, exit 2
    assert main(["atoms", "count", str(src), "-o", str(out)]) == 2


def test_cli_count_bad_input(tmp_path, capsys):
    _, df = _scs_table()
    df.loc[3, "scs"] = -1.0
    src = tmp_path / "bad.parquet"
    save_table(df, src)
    assert main(["atoms", "count", str(src), "-o", str(tmp_path / "o.parquet")]) == 2
    assert "negative" in capsys.readouterr().err
    empty = tmp_path / "empty.parquet"
    save_table(df.iloc[:0], empty)
    assert main(["atoms", "count", str(empty), "-o", str(tmp_path / "e.parquet")]) == 2
    assert main(["atoms", "count", str(src), "--method", "library"]) == 2


def test_cli_count_refuses_k_with_max_components(tmp_path, capsys):
    _, df = _scs_table()
    src = tmp_path / "scs.parquet"
    save_table(df, src)
    out = tmp_path / "o.parquet"
    argv = ["atoms", "count", str(src), "-o", str(out), "-k", "4", "--max-components", "12"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--components/-k" in err and "--max-components" in err and "not both" in err
    assert not out.exists()  # refused before any work


def test_cli_track_dose_model(tmp_path):
    rng = np.random.default_rng(1)
    T, N = 8, 60
    nn = np.arange(1, 41)
    lib = pd.DataFrame({"n_atoms": nn, "scs_A2": 0.015 * nn - 0.00006 * nn**2})
    h = np.empty((T, N), int)
    h[0] = rng.integers(10, 16, N)
    for t in range(1, T):
        h[t] = np.maximum(h[t - 1] - rng.poisson(0.3, N), 1)
    obs = lib["scs_A2"].to_numpy()[h - 1] + rng.normal(0, 0.002, h.shape)
    paths = []
    for t in range(T):
        f = pd.DataFrame({"column": np.arange(N), "type": "PbBr", "scs": obs[t]})
        f.attrs["dose_e_per_A2"] = 5e4
        p = tmp_path / f"frame{t}.parquet"
        save_table(f, p)
        paths.append(str(p))
    libp = tmp_path / "lib.parquet"
    save_table(lib, libp)
    out = tmp_path / "track.parquet"
    cols = tmp_path / "percol.csv"
    rc = main(
        [
            "atoms",
            "track",
            *paths,
            "-o",
            str(out),
            "--library",
            str(libp),
            "--model",
            "dose",
            "--columns-out",
            str(cols),
            "--fixed-scale",
        ]
    )
    assert rc == 0
    res = read_table(out)
    assert len(res) == T * N
    got = res.pivot(index="frame", columns="column", values="n_atoms").to_numpy()
    assert np.mean(got == h) > 0.95
    pc = read_table(cols)
    assert "loss_rate_per_e_A2" in pc.columns
    assert main(["atoms", "track", paths[0], "-o", str(tmp_path / "x.parquet")]) == 2
    out3 = tmp_path / "gmm.csv"
    assert (
        main(["atoms", "track", *paths, "-o", str(out3), "--library", "gmm", "--model", "loss"])
        == 0
    )
    rel = read_table(out3).pivot(index="frame", columns="column", values="n_atoms").to_numpy()
    assert np.mean(rel - np.round(np.median(rel - h)) == h) > 0.9


def test_count_and_track_refuse_existing_side_outputs_first(tmp_path, capsys):
    # the main table used to be written before --criteria-out/--columns-out was refused
    t = tmp_path / "cols.csv"
    save_table(pd.DataFrame({"scs": np.linspace(1.0, 10.0, 40)}), t)
    side = tmp_path / "side.csv"
    side.write_text("keep\n")
    out = tmp_path / "o.csv"
    assert main(["atoms", "count", str(t), "-o", str(out), "--criteria-out", str(side)]) == 2
    cmd = ["atoms", "track", str(t), str(t), "-o", str(out), "--columns-out", str(side)]
    assert main([*cmd, "--library", "gmm"]) == 2
    assert "side.csv" in capsys.readouterr().err
    assert not out.exists() and side.read_text() == "keep\n"


def test_count_and_track_name_a_missing_type_and_a_bad_table(tmp_path, capsys):
    t = tmp_path / "cols.csv"
    save_table(pd.DataFrame({"scs": np.linspace(1.0, 10.0, 40), "type": "PbBr"}), t)
    bad = tmp_path / "notes.csv"
    bad.write_text("just text\n")
    o = str(tmp_path / "o.csv")
    assert main(["atoms", "count", str(t), "-o", o, "--type", "Cs"]) == 2
    assert "--type ['Cs'] matches no column" in capsys.readouterr().err  # was "table is empty"
    assert main(["atoms", "track", str(t), str(t), "-o", o, "--type", "Cs"]) == 2
    assert "--type 'Cs' matches no column" in capsys.readouterr().err  # was "shape (2, 0)"
    assert main(["atoms", "track", str(t), str(bad), "-o", o, "--library", "gmm"]) == 2
    assert "notes.csv: needs an 'scs' column" in capsys.readouterr().err  # was a count mismatch


def test_cli_track_pristine_cube_scale_from_cs_columns(tmp_path):
    """`atoms track --type PbBr` on per-frame fit tables of a pristine 60 Å cube (one Pb-Br
    thickness, no loss): EM from c = 1 counted every column 9 instead of 10; the Cs columns
    of the first table now fix the starting scale."""
    from perovstem.atoms import fit_columns, normalize_image
    from perovstem.simulate import haadf_image, nanocrystal

    nc = nanocrystal(60.0, rng=4)
    paths = []
    for k in range(3):
        img, truth = haadf_image(nc, dose_e_per_A2=5e4, rng=100 + k)
        fit = fit_columns(normalize_image(img), truth[["x_A", "y_A", "type"]])
        paths.append(tmp_path / f"f{k}.csv")
        fit[["x_A", "y_A", "type", "scs"]].to_csv(paths[-1], index=False)
    out = tmp_path / "track.csv"
    assert main(["atoms", "track", *map(str, paths), "-o", str(out), "--type", "PbBr"]) == 0
    res = pd.read_csv(out)
    assert (truth.loc[truth["type"] == "PbBr", "n_atoms"] == 10).all()
    assert np.mean(res["n_atoms"].to_numpy() == 10) > 0.98
