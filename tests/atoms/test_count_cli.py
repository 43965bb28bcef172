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


def test_cli_count_leaves_insignificant_columns_uncounted(tmp_path, capsys):
    # a fit without a cell puts "columns" on the support: negative or insignificant SCS.
    # They used to fail the whole count ("negative"); now they stay in the output, uncounted
    k, df = _scs_table()
    df["scs_err"] = 0.001
    df.loc[:4, "scs"] = -0.002  # on the vacuum
    df.loc[5:9, ["scs", "scs_err"]] = [0.002, 0.001]  # 2σ: not significant at 3σ
    src = tmp_path / "mixed.parquet"
    save_table(df, src)
    out = tmp_path / "o.parquet"
    assert main(["atoms", "count", str(src), "-o", str(out)]) == 0
    assert "10 of 400 columns not counted" in capsys.readouterr().out
    res = read_table(out)
    assert len(res) == 400 and res["counted"].tolist() == [False] * 10 + [True] * 390
    assert res["n_atoms"][:10].isna().all()
    assert np.mean(res["n_atoms"].to_numpy(float)[10:] == k[10:]) > 0.97
    # every column insignificant: nothing to count, exit 2
    df["scs"] = -0.01
    save_table(df, src, overwrite=True)
    assert main(["atoms", "count", str(src), "-o", str(tmp_path / "n.parquet")]) == 2
    assert "nothing to count" in capsys.readouterr().err


def test_cli_count_bad_input(tmp_path, capsys):
    _, df = _scs_table()
    src = tmp_path / "bad.parquet"
    save_table(df, src)
    assert main(["atoms", "count", str(src), "--min-significance", "nan"]) == 2
    assert "--min-significance" in capsys.readouterr().err
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


def test_cli_voronoi_scs_and_count_on_multislice(tmp_path, capsys):
    """``atoms fit --scs voronoi`` → ``atoms count --library simulate``: the Voronoi sums of
    the abTEM rough crystal (no vacuum, 1-4 cells) are counted with the Voronoi library (as
    ``count_library(voronoi_intensities(...), "simulate")``, 91 % exact); a CSV loses the
    table's mark without its sidecar, so ``--integration voronoi`` says it.  Old code: no
    ``--scs`` option (exit 2) and ``--library simulate`` always took the total-SCS library."""
    import warnings
    from pathlib import Path

    from scipy.signal import resample

    from perovstem._data import Image
    from perovstem.atoms import (
        count_library,
        cspbbr3_001_cell,
        find_columns,
        normalize_image,
        voronoi_intensities,
    )
    from perovstem.io import save_image

    d = np.load(Path(__file__).resolve().parents[1] / "data" / "multislice_counting.npz")
    box = float(d["rough__box_A"])
    n = int(round(box / 0.25))
    img = np.tile(
        resample(resample(d["rough__mean"].astype(float), n, axis=0), n, axis=1).T, (3, 3)
    )
    dx = box / n
    counts = np.random.default_rng(0).poisson(np.clip(img, 0, None) * 2e4 * dx * dx)
    im = Image(counts.astype(float), dx, dose_e_per_A2=2e4, metadata={"gain": 1.0, "offset": 0.0})
    path = tmp_path / "rough.npz"
    save_image(im, path)
    cols = tmp_path / "cols.parquet"
    args = ["atoms", "fit", str(path), "--cell", "cspbbr3", "--normalize", "-o", str(cols)]
    assert main([*args, "--scs", "voronoi"]) == 0
    v = read_table(cols)
    assert v.attrs["scs_estimator"] == "voronoi" and "n_pixels" in v.columns
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = voronoi_intensities(normalize_image(im), find_columns(im, cell=cspbbr3_001_cell()))
    np.testing.assert_allclose(v["scs"], ref["scs"], rtol=1e-9)
    capsys.readouterr()
    rc = main(["atoms", "count", str(cols), "--method", "library", "--library", "simulate"])
    assert rc == 0 and "voronoi SCS" in capsys.readouterr().out
    res = read_table(tmp_path / "cols_counts.parquet")
    np.testing.assert_array_equal(res["n_atoms"], count_library(ref, "simulate")["n_atoms"])
    # against the truth, columns 2 Å inside the field
    tx, ty = d["rough__truth_x"], d["rough__truth_y"]
    wrap = lambda q: (q + box / 2) % box - box / 2  # noqa: E731
    x, y = res["x_A"].to_numpy(), res["y_A"].to_numpy()
    dd = np.hypot(wrap(x[:, None] - tx), wrap(y[:, None] - ty))
    j = dd.argmin(1)
    inner = (np.minimum(x, y) > 2) & (np.maximum(x, y) < img.shape[0] * dx - 2)
    err = res["n_atoms"].to_numpy()[inner] - d["rough__truth_n"][j][inner]
    assert np.mean(err == 0) >= 0.85, np.mean(err == 0)
    # a CSV without its .json sidecar (edited elsewhere) has no attrs: "auto" falls back to
    # the total library, --integration voronoi restores the right one
    csv = tmp_path / "cols.csv"
    save_table(v, csv)
    (tmp_path / "cols.csv.json").unlink()
    o_auto, o_vor = tmp_path / "a.parquet", tmp_path / "b.parquet"
    base = ["atoms", "count", str(csv), "--method", "library", "--library", "simulate"]
    assert main([*base, "-o", str(o_auto)]) == 0
    assert main([*base, "-o", str(o_vor), "--integration", "voronoi"]) == 0
    np.testing.assert_array_equal(read_table(o_vor)["n_atoms"], res["n_atoms"])
    assert read_table(o_vor).attrs["counting"]["library_integration"] == "voronoi"
    assert read_table(o_auto).attrs["counting"]["library_integration"] == "total"
    assert main([*base, "-o", str(tmp_path / "c.csv"), "--integration", "gauss"]) == 2


def test_cli_count_cd_fraction_and_termination(tmp_path, capsys):
    """``--cd-fraction`` / ``--termination`` reach the simulated library: Pb-Br columns of a
    Cd-alloyed (x = 0.3) CsBr-terminated crystal, 2-8 cells, 3 % noise, are counted exactly
    with the matching library; with x = 0 (the only choice of the old CLI) they read low
    (measured: bias -0.42 atom, 60 % exact).
    Old code: no such options (exit 2)."""
    from perovstem.simulate import scs_library

    rng = np.random.default_rng(4)
    k = rng.integers(2, 9, 200)
    lib = scs_library("PbBr", 20, cd_fraction=0.3, termination="CsBr")["scs_A2"].to_numpy()
    scs = lib[k] * (1 + rng.normal(0, 0.03, k.size) / np.sqrt(k))
    src = tmp_path / "cols.parquet"
    save_table(pd.DataFrame({"scs": scs, "type": "PbBr"}), src)
    base = ["atoms", "count", str(src), "--method", "library", "--library", "simulate"]
    o1, o0 = tmp_path / "x3.parquet", tmp_path / "x0.parquet"
    opts = ["--cd-fraction", "0.3", "--termination", "CsBr"]
    assert main([*base, "-o", str(o1), *opts]) == 0
    assert "CsBr termination, x(Cd) = 0.3" in capsys.readouterr().out
    assert main([*base, "-o", str(o0)]) == 0
    n1, n0 = read_table(o1)["n_atoms"].to_numpy(), read_table(o0)["n_atoms"].to_numpy()
    assert np.mean(n1 == k) > 0.95, np.mean(n1 == k)
    assert np.mean(n0 - k) < -0.3 and np.mean(n0 == k) < 0.7, (np.mean(n0 - k), np.mean(n0 == k))
    assert read_table(o1).attrs["counting"]["cd_fraction"] == 0.3
    # out of range, unknown termination, or with a library file: exit 2 naming the option
    assert main([*base, "-o", str(tmp_path / "b.csv"), "--cd-fraction", "1.5"]) == 2
    assert "--cd-fraction" in capsys.readouterr().err
    assert main([*base, "-o", str(tmp_path / "c.csv"), "--termination", "Cs"]) == 2
    libf = tmp_path / "lib.csv"
    save_table(pd.DataFrame({"n_atoms": np.arange(1, 21), "scs_A2": lib[1:]}), libf)
    bad = ["atoms", "count", str(src), "--library", str(libf), "--cd-fraction", "0.3"]
    assert main([*bad, "-o", str(tmp_path / "d.csv")]) == 2
    assert "--cd-fraction" in capsys.readouterr().err


def test_cli_track_total_loss_and_its_error(tmp_path, capsys):
    """``atoms track`` prints the atoms lost by all columns together with an error, and the
    loss rate of all columns with the right error: with ``--rate shared`` the per-column
    rates are one estimate, so their sum has N x (not sqrt(N) x) the per-column error.
    Old code: "loss r ± e (all columns)" with e = sqrt(sum err²), 1/sqrt(60) of the error
    of the 60-column sum for a shared rate, and no error on the atoms lost."""
    import re

    rng = np.random.default_rng(5)
    T, N, dose = 8, 60, 5e4
    nn = np.arange(1, 41)
    lib = pd.DataFrame({"n_atoms": nn, "scs_A2": 0.015 * nn - 0.00006 * nn**2})
    h = np.empty((T, N), int)
    h[0] = rng.integers(10, 16, N)
    for t in range(1, T):
        h[t] = np.maximum(h[t - 1] - rng.poisson(0.3, N), 1)
    obs = lib["scs_A2"].to_numpy()[h - 1] + rng.normal(0, 0.002, h.shape)
    big = pd.DataFrame(
        {
            "frame": np.repeat(np.arange(T), N),
            "column": np.tile(np.arange(N), T),
            "type": "PbBr",
            "scs": obs.ravel(),
        }
    )
    src = tmp_path / "frames.parquet"
    save_table(big, src)
    libp = tmp_path / "lib.parquet"
    save_table(lib, libp)
    percol = tmp_path / "percol.csv"
    args = ["atoms", "track", str(src), "-o", str(tmp_path / "t.parquet"), "--library"]
    args += [str(libp), "--model", "dose", "--rate", "shared", "--fixed-scale"]
    capsys.readouterr()
    assert main([*args, "--dose", str(dose), "--columns-out", str(percol)]) == 0
    text = " ".join(capsys.readouterr().out.split())  # the console wraps lines
    m = re.search(r"lost in total .*?: (\d+) \(posterior ([\d.]+) ± ([\d.]+)\)", text)
    assert m, text
    lost_true = int((h[0] - h[-1]).sum())
    assert abs(int(m.group(1)) - lost_true) <= 3
    assert abs(float(m.group(2)) - lost_true) <= 3 * float(m.group(3)) + 0.5
    r = re.search(r"all 60 columns together ([\d.e+-]+) ± ([\d.e+-]+) atoms per", text)
    assert r, text
    rate, err = float(r.group(1)), float(r.group(2))
    pc = read_table(percol)
    err_col = pc["loss_rate_err_per_e_A2"].to_numpy()
    np.testing.assert_allclose(err, N * err_col[0], rtol=0.05)  # printed to 2 digits
    assert err > 3 * np.sqrt(np.sum(err_col**2))
    # the truth (0.3 atoms per column per frame of 5e4 e⁻/Å²) within the error
    assert abs(rate - N * 0.3 / dose) < 3 * err, (rate, err, N * 0.3 / dose)


def test_cli_count_reports_merged_levels(tmp_path, capsys, statstem_data):
    # StatSTEM's Pt/Ir particle without a library: ICL keeps 4 components for 1-20 atoms;
    # the CLI says so (old code printed the counts only); --no-ladder-check turns it off
    ref = pd.read_csv(statstem_data / "csv" / "Example_PtIr_reference_fit.csv")
    src = tmp_path / "ptir.parquet"
    save_table(ref[["x_A", "y_A", "scs"]], src)
    out = tmp_path / "o.parquet"
    assert main(["atoms", "count", str(src), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "WARNING counts may be too low" in text and "overlap" in text
    chk = read_table(out).attrs["counting"]["all"]["ladder_check"]
    assert chk["ok"] is False and chk["overlap"] > 0.25
    out2 = tmp_path / "o2.parquet"
    assert main(["atoms", "count", str(src), "-o", str(out2), "--no-ladder-check"]) == 0
    assert "WARNING" not in capsys.readouterr().out
    assert read_table(out2).attrs["counting"]["all"]["ladder_check"] is None


def test_cli_count_says_why_unmeasured_columns_are_left_out(tmp_path, capsys):
    # columns the fit could not measure (NaN SCS, e.g. an unresolved width) were reported as
    # "not above 3 standard errors (peaks on the vacuum or support?)", the wrong reason
    k, df = _scs_table()
    df["scs_err"] = 0.001
    df.loc[:2, ["scs", "scs_err"]] = np.nan  # not measured
    df.loc[3:4, "scs"] = -0.002  # on the vacuum
    src = tmp_path / "nan.parquet"
    save_table(df, src)
    out = tmp_path / "o.parquet"
    assert main(["atoms", "count", str(src), "-o", str(out)]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "3 of 400 columns not counted: cross-section not measured" in said
    assert "2 of 400 columns not counted: cross-section not above 3 standard errors" in said
    res = read_table(out)
    assert res["counted"].tolist()[:5] == [False] * 5 and res["counted"][5:].all()


def test_track_prints_the_offset_ambiguity_of_a_flat_series(tmp_path, capsys):
    """atoms track says when every count may be offset (fit_hmm's offset_probability): a
    flat series of 9-atom Pb-Br columns 7 % below the library is read n or n - 1 alike
    (P(0) 0.42-0.44 over seeds 0-5 in fit_hmm), nothing lost.  Old code: no line."""
    from perovstem.simulate import scs_library

    lib = scs_library("PbBr", 30)
    libp = tmp_path / "lib.parquet"
    save_table(lib, libp)
    rng = np.random.default_rng(0)
    L = lib.set_index("n_atoms")["scs_A2"]
    paths = []
    for t in range(6):
        f = pd.DataFrame(
            {
                "column": np.arange(60),
                "type": "PbBr",
                "scs": 0.93 * L.loc[9] + rng.normal(0, 0.004, 60),
            }
        )
        p = tmp_path / f"flat{t}.parquet"
        save_table(f, p)
        paths.append(str(p))
    out = tmp_path / "t.parquet"
    assert main(["atoms", "track", *paths, "-o", str(out), "--library", str(libp)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "PbBr: WARNING counts may all be offset by whole atoms: P(0) = 0." in text, text
    assert read_table(out).attrs["hmm"]["offset_ambiguous"]


def test_cli_count_one_level_says_the_counts_mean_nothing(tmp_path, capsys):
    # columns of one thickness (a cube along [001]): one component, every column "1 atom"
    # (the first count) and "N columns, N atoms" was all the command said
    rng = np.random.default_rng(4)
    df = pd.DataFrame(
        {
            "x_A": rng.uniform(0, 100, 200),
            "y_A": rng.uniform(0, 100, 200),
            "type": "PbBr",
            "scs": 0.0146 * 10 + rng.normal(0, 0.0015, 200),
            "scs_err": 0.0015,  # the fit's error bars: the spread is the noise
        }
    )
    src = tmp_path / "cols.parquet"
    save_table(df, src)
    assert main(["atoms", "count", str(src), "-o", str(tmp_path / "c.parquet")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "k = 1" in out and "WARNING one count level only" in out
    assert "--library fitted" in out
    # several levels: no such warning
    _, df2 = _scs_table()
    save_table(df2, src, overwrite=True)
    assert main(["atoms", "count", str(src), "-o", str(tmp_path / "d.parquet")]) == 0
    assert "one count level" not in capsys.readouterr().out


def test_cli_count_library_at_the_images_voltage(tmp_path, capsys):
    # a 200 kV image counted with a 300 kV library: every count ~2x the truth, silently
    # (the library was always simulated at 300 kV).  `atoms fit` now records the image's
    # voltage and the libraries use it; measured on a 60 A cube: simulated library 13
    # (truth 14) at 200 kV against 27-28 at 300 kV, fitted library 14 against 25
    from scipy.spatial import cKDTree

    img = tmp_path / "nc.tif"
    argv = ["simulate", "image", "-o", str(img), "--edge-A", "30", "--voltage-kV", "200"]
    assert main([*argv, "--seed", "3"]) == 0
    cols = tmp_path / "cols.parquet"
    assert (
        main(["atoms", "fit", str(img), "--cell", "cspbbr3", "--normalize", "-o", str(cols)]) == 0
    )
    assert read_table(cols).attrs["voltage_kV"] == 200.0
    truth = read_table(tmp_path / "nc_truth.parquet")
    pbbr = truth[truth["type"] == "PbBr"]
    median = {}
    for extra in ([], ["--voltage-kV", "300"]):
        out = tmp_path / f"c{len(extra)}.parquet"
        capsys.readouterr()
        argv = ["atoms", "count", str(cols), "-o", str(out), "--library", "simulate"]
        assert main([*argv, "--termination", "CsBr", "--type", "PbBr", *extra]) == 0
        said = " ".join(capsys.readouterr().out.split())
        assert ("200 kV (the image's)" if not extra else "300 kV (--voltage-kV)") in said
        c = read_table(out)
        _, i = cKDTree(pbbr[["x_A", "y_A"]].to_numpy()).query(c[["x_A", "y_A"]].to_numpy())
        t = pbbr["n_atoms"].to_numpy()[i]
        median[len(extra)] = (
            float(np.median(c["n_atoms"] - t)),
            float(np.median(c["n_atoms"] / t)),
        )
    # 30 A cube, truth 5 atoms per Pb-Br column: 200 kV library 5, 300 kV library 8
    assert abs(median[0][0]) <= 1 and median[2][1] > 1.4, median
    assert (
        main(
            [
                "atoms",
                "count",
                str(cols),
                "-o",
                str(tmp_path / "x.parquet"),
                "--voltage-kV",
                "120",
                "--library",
                "simulate",
            ]
        )
        == 2
    )
    assert "200 or 300" in capsys.readouterr().err


def test_cli_simulated_library_on_a_count_fit_names_the_option(tmp_path, capsys):
    # the refusal named only the Python function (perovstem.atoms.normalize_image)
    img = tmp_path / "nc.tif"
    assert main(["simulate", "image", "-o", str(img), "--edge-A", "30", "--seed", "4"]) == 0
    cols = tmp_path / "cols.parquet"
    assert main(["atoms", "fit", str(img), "--cell", "cspbbr3", "-o", str(cols)]) == 0
    out = tmp_path / "c.parquet"
    capsys.readouterr()
    argv = ["atoms", "count", str(cols), "-o", str(out), "--library", "simulate"]
    assert main(argv) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "cols.parquet" in err and "'counts·Å²'" in err
    assert "perovstem atoms fit --normalize" in err and not out.exists()


def test_cli_library_counting_of_a_011_fit_says_what_counts_it(tmp_path, capsys):
    img = tmp_path / "nc.tif"
    argv = ["simulate", "image", "-o", str(img), "--edge-A", "30", "--zone-axis", "011"]
    assert main([*argv, "--seed", "4"]) == 0
    cols = tmp_path / "cols.parquet"
    argv = ["atoms", "fit", str(img), "--cell", "cspbbr3_011", "--normalize", "-o", str(cols)]
    assert main(argv) == 0
    for lib in (["simulate"], ["fitted", "--termination", "CsBr"]):
        capsys.readouterr()
        argv = ["atoms", "count", str(cols), "-o", str(tmp_path / "c.parquet"), "--library"]
        assert main([*argv, *lib]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert (
            "Pb_011" in err
            and "a [011] or [111] fit is counted by the Gaussian mixture alone" in err
        )
    assert main(["atoms", "count", str(cols), "-o", str(tmp_path / "c.parquet")]) == 0


def _frames_of_a_losing_lattice(tmp_path, seed=3, T=5, side=8):
    """Per-frame tables of PbBr columns on a 5.87 Å lattice losing atoms, each frame drifted
    by a few Å with position noise (independently fitted frames): paths and true counts."""
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2) * 5.87
    nn = np.arange(1, 41)
    lib = pd.DataFrame({"n_atoms": nn, "scs_A2": 0.015 * nn - 0.00006 * nn**2})
    h = np.empty((T, len(g)), int)
    h[0] = rng.integers(8, 14, len(g))
    for t in range(1, T):
        h[t] = np.maximum(h[t - 1] - rng.poisson(0.4, len(g)), 1)
    libp = tmp_path / "lib.parquet"
    save_table(lib, libp)
    paths = []
    for t in range(T):
        xy = g + np.array([1.3 * t, -0.8 * t]) + rng.normal(0, 0.15, g.shape)
        scs = lib["scs_A2"].to_numpy()[h[t] - 1] + rng.normal(0, 0.002, len(g))
        f = pd.DataFrame({"x_A": xy[:, 0], "y_A": xy[:, 1], "type": "PbBr", "scs": scs})
        f = f.iloc[rng.permutation(len(f))]  # each fit lists its columns in its own order
        f.attrs.update(dose_e_per_A2=5e4, frame=t, time_s=2.0 * t)
        paths.append(tmp_path / f"f{t}.parquet")
        save_table(f, paths[-1])
    return paths, h, g, libp


def test_track_matches_columns_by_position(tmp_path, capsys):
    """Audit: `atoms track` paired the columns of the frames by row order, never by x_A/y_A:
    independently fitted frames (rows up to 35 Å apart) were tracked as one column without
    a word.  Columns are now matched to the first frame's by position, after the frames'
    median shift (drift), within half their spacing, and refused otherwise."""
    paths, h, g, libp = _frames_of_a_losing_lattice(tmp_path)
    out = tmp_path / "t.parquet"
    argv = ["atoms", "track", *map(str, paths), "--library", str(libp), "--fixed-scale"]
    assert main([*argv, "--model", "loss", "-o", str(out)]) == 0
    res = read_table(out)
    first = read_table(paths[0])
    order = np.argsort(  # truth index of each first-table row
        np.hypot(*(first[["x_A", "y_A"]].to_numpy()[:, None] - g[None]).transpose(2, 0, 1)),
        axis=1,
    )[:, 0]
    got = res.pivot(index="frame", columns="column", values="n_atoms").to_numpy()
    assert np.mean(got == h[:, order]) > 0.95
    # frames whose columns are not the same set are refused, naming the table
    bad = read_table(paths[2])
    bad.iloc[0, bad.columns.get_loc("x_A")] += 20.0
    save_table(bad, tmp_path / "bad.parquet")
    capsys.readouterr()
    alt = [str(paths[0]), str(paths[1]), str(tmp_path / "bad.parquet")]
    rc = main(["atoms", "track", *alt, "--library", str(libp), "-o", str(tmp_path / "b.pq.csv")])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2 and "bad.parquet" in err and "of 64 PbBr columns have no column of" in err, err


def test_track_refuses_tables_out_of_time_order(tmp_path, capsys):
    """Audit: fit tables recorded no frame or time, so a glob sorting f10 before f2 (or the
    files given in reverse) scrambled time silently; `atoms fit --frame` now records both
    and `atoms track` refuses tables out of order."""
    paths, _, _, libp = _frames_of_a_losing_lattice(tmp_path, T=3)
    rev = [str(p) for p in paths[::-1]]
    rc = main(["atoms", "track", *rev, "--library", str(libp), "-o", str(tmp_path / "r.csv")])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2 and "not in acquisition order" in err and "4, 2, 0" in err, err
    assert not (tmp_path / "r.csv").exists()


def test_track_warns_when_the_columns_gain_atoms(tmp_path, capsys):
    """Audit: `--model free` reported "lost -17 (posterior -15.5 ± 3.2)", a 5σ gain of atoms
    under beam damage, without a word.  Here the frames' cross-section scale rises 6 % per
    frame on columns that keep their atoms."""
    rng = np.random.default_rng(5)
    nn = np.arange(1, 41)
    lib = pd.DataFrame({"n_atoms": nn, "scs_A2": 0.015 * nn - 0.00006 * nn**2})
    save_table(lib, tmp_path / "lib.parquet")
    h = rng.integers(6, 10, 60)
    paths = []
    for t in range(5):
        scs = 1.06**t * lib["scs_A2"].to_numpy()[h - 1] + rng.normal(0, 0.002, h.size)
        f = pd.DataFrame({"column": np.arange(h.size), "type": "PbBr", "scs": scs})
        paths.append(tmp_path / f"f{t}.parquet")
        save_table(f, paths[-1])
    base = ["atoms", "track", *map(str, paths), "--library", str(tmp_path / "lib.parquet")]
    assert main([*base, "--fixed-scale", "-o", str(tmp_path / "t.csv")]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "WARNING the columns gain" in text, text
    # steady columns: no warning
    paths = paths[:1] * 3
    assert main([*base[:2], *map(str, paths), *base[-2:], "-o", str(tmp_path / "s.csv")]) == 0
    assert "WARNING the columns gain" not in " ".join(capsys.readouterr().out.split())
