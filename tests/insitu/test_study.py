"""Several analysed series as one study: `combine_series`, `mechanism_summary(field=)`,
`pool_field_tracks` and the `perovstem kinetics` command."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from perovstem.errors import DataError, ParameterError

TEMPERATURES_K = (250.0, 272.0, 297.0)
N_FRAMES = 16


@pytest.fixture(scope="module")
def study(diffusion_field):
    """Two fields (crystals, seeds 1 and 2) at each of three temperatures, 16 frames each
    (``diffusion_field``: Pb clusters diffusing on a 4 nm crystal, ~1 hop per frame),
    analysed."""
    from perovstem.insitu import analyze_series

    series, results = {}, {}
    for t in TEMPERATURES_K:
        for seed in (1, 2):
            name = f"f{seed}_{t:g}K"
            p, series[name], _ = diffusion_field(t, seed, N_FRAMES)
            results[name] = analyze_series(series[name], crystal=False, phase_check=False)
    return p, series, results


def _mob(summary):
    return summary[(summary["process"] == "mobility") & summary["value"].notna()].sort_values(
        "temperature_K"
    )


def _ea(summary):
    r = summary[(summary["param"] == "Ea_eV") & (summary["observable"] == "Gamma1_per_s")]
    assert len(r) == 1, summary[["process", "param", "value"]]
    return r.iloc[0]


def test_one_series_gives_the_summary_of_its_analysis(study):
    """``combine_series`` of one analysed series reproduces ``analyze_series``'s own
    mechanism table (per-frame fits and hop rate: same tracks, options and bootstrap)."""
    from perovstem.insitu import combine_series

    _, _, results = study
    res = results["f1_272K"]
    c = combine_series([res], names=["f1_272K"])
    cols = ["process", "param", "value", "ci_low", "ci_high", "n_points", "text"]
    own = res.summary[res.summary["condition"] >= 0][cols].reset_index(drop=True)
    mine = c[c["condition"] >= 0][cols].reset_index(drop=True)
    pd.testing.assert_frame_equal(mine, own, check_exact=True)
    assert "mobility" in set(mine["process"])
    assert set(c.loc[c["process"] != "mobility", "field"]) == {"f1_272K"}


def test_fields_of_a_condition_pool_into_one_hop_rate(study):
    """Two fields per temperature: one hop rate per temperature on both fields' steps (the
    same as pooling their hop tracks by hand), per-frame fits per field, and an activation
    energy whose interval is narrower than either single field's."""
    from perovstem.insitu import combine_series, hop_tracks
    from perovstem.quantify import cluster_hop_rate, pool_field_tracks

    p, series, results = study
    names = list(results)
    c = combine_series(list(results.values()), names=names)
    mob = _mob(c)
    assert list(mob["temperature_K"]) == list(TEMPERATURES_K)
    for (_, row), t in zip(mob.iterrows(), TEMPERATURES_K, strict=True):
        a, b = f"f1_{t:g}K", f"f2_{t:g}K"
        assert row["field"] == f"{a}+{b}"
        alone = [_mob(combine_series([results[n]], names=[n])) for n in (a, b)]
        assert row["n_points"] == sum(int(m["n_points"].iloc[0]) for m in alone)
        tracks = [
            hop_tracks(results[n].clusters, results[n].frames, max_step_A=8.0)[0] for n in (a, b)
        ]
        dt = float(np.median(np.diff(series[a].time_s)))
        ref = cluster_hop_rate(pool_field_tracks(tracks), frame_time_s=dt, max_step_A=8.0, rng=0)
        assert row["value"] == pytest.approx(ref["rate_per_s"], rel=1e-12)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx(
            (ref["ci_low"], ref["ci_high"]), rel=1e-12
        )
    per_frame = c[(c["condition"] >= 0) & (c["process"] != "mobility")]
    assert set(per_frame["field"]) == set(names)  # every field's own per-frame fits
    ea2 = _ea(c)
    widths = []
    for seed in (1, 2):
        one = [n for n in names if n.startswith(f"f{seed}_")]
        e1 = _ea(combine_series([results[n] for n in one], names=one))
        widths.append(e1["ci_high"] - e1["ci_low"])
    assert ea2["ci_high"] - ea2["ci_low"] < min(widths)
    # measured: Ea = 0.603 [0.510, 0.695] eV from the two fields, 0.607 [0.472, 0.741] and
    # 0.621 [0.491, 0.751] from each alone (truth 0.62)
    assert ea2["ci_low"] <= p.hop_activation_eV <= ea2["ci_high"]
    assert abs(ea2["value"] - p.hop_activation_eV) < 0.08


def test_pooled_hop_rates_equal_the_pipeline_mechanism_step(study, tmp_path):
    """The library's pooling gives the hop rates of the ``quantify.mechanism`` step
    (validated by ``bench_kinetics``) given the same fields as ``tracks_<k>``/``tracks_<k>2``
    (the step relinks the detections strictly, as ``hop_tracks``)."""
    from perovstem.insitu import combine_series
    from perovstem.pipeline import run_pipeline

    _, _, results = study
    wiring, tables = [], {}
    for k, t in zip("abc", TEMPERATURES_K, strict=True):
        a, b = results[f"f1_{t:g}K"], results[f"f2_{t:g}K"]
        assert a.frames["drift_reliable"].all() and b.frames["drift_reliable"].all()
        tables[f"frames_{k}"] = a.frames[~a.frames["skipped"]]
        tables[f"tracks_{k}"] = a.clusters
        tables[f"tracks_{k}2"] = b.clusters
    for n, df in tables.items():
        df.to_parquet(tmp_path / f"{n}.parquet")
        wiring.append(f'{n} = "{n}"')
    cfg = tmp_path / "m.toml"
    cfg.write_text(
        "[run]\nreport = false\n[inputs]\n"
        + "".join(f'{n} = "{n}.parquet"\n' for n in tables)
        + '[[step]]\nrun = "quantify.mechanism"\nid = "m"\n'
        + f"inputs = {{ {', '.join(wiring)} }}\n"
    )
    run_pipeline(cfg, out=tmp_path / "run", scheduler="serial", quiet=True)
    step = pd.read_parquet(tmp_path / "run" / "tables" / "m.summary.parquet")
    # the step's report shows the hop rates against temperature
    assert (tmp_path / "run" / "plots" / "m.hop_rates.png").stat().st_size > 1000
    names = [f"f{s}_{t:g}K" for t in TEMPERATURES_K for s in (1, 2)]
    mine = combine_series([results[n] for n in names], names=names)
    np.testing.assert_allclose(_mob(mine)["value"], _mob(step)["value"], rtol=1e-12)
    assert list(_mob(mine)["n_points"]) == list(_mob(step)["n_points"])


def test_field_option_and_pooling_refuse_what_they_cannot_do():
    from perovstem.quantify import pool_field_tracks
    from perovstem.quantify.mechanism import mechanism_summary

    rng = np.random.default_rng(0)
    frames, tracks = [], []
    for f, dt in (("a", 1.0), ("b", 1.5)):  # one condition, different frame times
        frames.append(
            pd.DataFrame(
                {
                    "frame": np.arange(10),
                    "time_s": np.arange(10) * dt,
                    "cumulative_dose_e_per_A2": np.arange(1, 11) * 100.0,
                    "temperature_K": 300.0,
                    "f": f,
                }
            )
        )
        for tid in range(3):
            xy = np.cumsum(rng.normal(0, 3, (10, 2)), axis=0)
            tracks.append(
                pd.DataFrame(
                    {
                        "frame": np.arange(10),
                        "x_A": xy[:, 0],
                        "y_A": xy[:, 1],
                        "track_id": tid,
                        "n_atoms": 20.0,
                        "temperature_K": 300.0,
                        "f": f,
                    }
                )
            )
    frames, tracks = pd.concat(frames), pd.concat(tracks)
    # fields of one condition with different frame times: each step with its own Δt
    # (moment estimator Σ|Δr|² / Σ (2/3)a²n^(-4/3)Δt; localisation error 0)
    s = mechanism_summary(frames, tracks=tracks, field="f", ci="wald")
    mob = s[s["process"] == "mobility"]
    assert len(mob) == 1 and mob["field"].iloc[0] == "a+b"
    d2, c = 0.0, 0.0
    for (_f, _tid), g in tracks.groupby(["f", "track_id"]):
        dt = 1.0 if _f == "a" else 1.5
        d2 += float(np.sum(np.diff(g["x_A"]) ** 2 + np.diff(g["y_A"]) ** 2))
        c += (len(g) - 1) * (2 / 3) * 5.87**2 * 20.0 ** (-4 / 3) * dt
    assert mob["value"].iloc[0] == pytest.approx(d2 / c, rel=1e-12)
    with pytest.raises(ParameterError, match="also in `by`"):
        mechanism_summary(frames, by=("temperature_K", "f"), field="f")
    with pytest.raises(DataError, match=r"'f' \(`field`\) has 1 missing value"):
        mechanism_summary(
            frames.assign(f=frames["f"].where(np.arange(len(frames)) != 3)), field="f"
        )
    with pytest.raises(DataError, match="'g' is not a column of `frames`"):
        mechanism_summary(frames, field="g")
    with pytest.raises(DataError, match="'f' is not a column of `tracks`"):
        mechanism_summary(frames, tracks=tracks.drop(columns="f"), field="f")
    text_ids = tracks.assign(track_id="p")
    with pytest.raises(DataError, match="second: track_id must be numbers"):
        pool_field_tracks([tracks, text_ids], names=["first", "second"])
    pooled = pool_field_tracks([tracks, tracks])
    assert pooled["track_id"].nunique() == 2 * tracks["track_id"].nunique()


def test_combine_series_bad_input_names_the_series(study):
    from perovstem.insitu import combine_series

    _, _, results = study
    a, b = results["f1_250K"], results["f1_297K"]
    with pytest.raises(ParameterError, match=r"unique: \['x'\]"):
        combine_series([a, b], names=["x", "x"])
    with pytest.raises(ParameterError, match="2 entries for 1 series"):
        combine_series([a], names=["x", "y"])
    with pytest.raises(DataError, match="y: no clusters table"):
        combine_series([a, {"frames": b.frames}], names=["x", "y"])
    no_t = {"frames": b.frames.drop(columns="temperature_K"), "clusters": b.clusters}
    with pytest.raises(DataError, match="y: no temperature_K"):
        combine_series([a, no_t], names=["x", "y"])
    gap = {
        "frames": b.frames.assign(
            temperature_K=b.frames["temperature_K"].where(b.frames["frame"] != 3)
        ),
        "clusters": b.clusters,
    }
    with pytest.raises(DataError, match="y: no temperature_K in 1 of its 16 frames"):
        combine_series([a, gap], names=["x", "y"])
    with pytest.raises(DataError, match="no series to combine"):
        combine_series([])
    # no temperature anywhere: said, the two series are one condition (one pooled hop rate)
    bare = [
        {"frames": r.frames.drop(columns="temperature_K"), "clusters": r.clusters}
        for r in (results["f1_272K"], results["f2_272K"])
    ]
    c = combine_series(bare, names=["x", "y"], ci="wald")
    assert any("no series records a temperature" in n for n in c.attrs["notes"])
    assert list(_mob(c)["field"]) == ["x+y"]
    # a field without detections (or without atom counts) adds no steps: the mobility row
    # names only the fields it pooled
    empty = {"frames": bare[1]["frames"], "clusters": bare[1]["clusters"].iloc[:0]}
    c = combine_series([bare[0], empty], names=["x", "y"], ci="wald")
    alone = combine_series([bare[0]], names=["x"], ci="wald")
    assert list(_mob(c)["field"]) == ["x"]
    assert _mob(c)["value"].tolist() == _mob(alone)["value"].tolist()


def test_kinetics_command_combines_insitu_runs(study, tmp_path, capsys):
    """`perovstem insitu` on three series files (one per temperature), then `perovstem
    kinetics` on the three output folders: the mechanism table, summary.json and the hop-rate
    figure; the table equals combine_series on the folders' tables; bad input is named."""
    from perovstem.cli.main import main
    from perovstem.insitu import combine_series
    from perovstem.io import read_table, save_image

    _, series, _ = study
    runs = []
    for t in TEMPERATURES_K:
        f = tmp_path / f"s{t:g}.npz"
        save_image(series[f"f1_{t:g}K"], f)
        assert main(["insitu", str(f), "--no-plots"]) == 0
        runs.append(tmp_path / f"s{t:g}_insitu")
    out = tmp_path / "study"
    assert main(["kinetics", *map(str, runs), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Pb⁰ diffusion: Ea =" in printed
    # the printed lines keep the series names in brackets as summary.json does (console
    # markup swallowed lowercase ones: "[s272_insitu]" vanished from the terminal)
    summary = json.loads((out / "summary.json").read_text())
    flat = " ".join(printed.split())  # (the terminal wraps long lines)
    assert all(" ".join(ln.split()) in flat for ln in summary["mechanisms"]), printed
    assert all(f"[{r.name}]" in flat for r in runs), printed
    table = read_table(out / "mechanism.parquet")
    tables = [{n: read_table(r / f"{n}.parquet") for n in ("frames", "clusters")} for r in runs]
    ref = combine_series(tables, names=[r.name for r in runs])
    pd.testing.assert_frame_equal(table, ref, check_exact=True, check_dtype=False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pb0_diffusion_Ea_eV"]["value"] == _ea(ref)["value"]
    assert summary["series"] == [r.name for r in runs]
    # each condition's hop rate says its temperature (the texts alone were alike)
    mob = [ln for ln in summary["mechanisms"] if "] mobility:" in ln]
    assert [ln.split(" K")[0] for ln in mob] == [f"[{t:g}" for t in TEMPERATURES_K], mob
    assert (out / "hop_rates.png").stat().st_size > 1000
    # a rerun does not overwrite without --overwrite; bad RUN folders are named
    assert main(["kinetics", *map(str, runs), "-o", str(out)]) != 0
    assert "exists (use --overwrite)" in capsys.readouterr().err
    for args, word in (
        ([str(runs[0]), str(tmp_path / "s250.npz")], "is not a folder"),
        ([str(runs[0]), str(tmp_path)], "has no frames.parquet or frames.csv"),
        ([str(runs[0]), str(runs[0])], "given twice"),
        ([str(runs[0]), str(runs[1]), "--name", "a"], "`--name` given 1 times for 2"),
        ([str(runs[0]), str(runs[1]), "-o", str(runs[1])], "is one of the RUN folders"),
        ([str(runs[0]), "--ci", "exact"], "`--ci` must be"),
    ):
        assert main(["kinetics", *args]) != 0, args
        assert word in capsys.readouterr().err.replace("\n", " "), word
    assert (out / "mechanism.parquet").is_file()  # nothing lost
    # --overwrite replaces the run whole: a CSV run keeps its attrs sidecar, drops the parquet
    argv = ["kinetics", *map(str, runs), "-o", str(out), "--table-format", "csv", "--overwrite"]
    assert main(argv) == 0 and main(argv) == 0  # the second run replaces the first's sidecar
    assert (out / "mechanism.csv").is_file() and (out / "mechanism.csv.json").is_file()
    assert not (out / "mechanism.parquet").exists()
    again = read_table(out / "mechanism.csv")
    assert again.attrs["series"] == [r.name for r in runs]


def test_kinetics_refuses_copies_unfinished_runs_and_an_insitu_out(study, tmp_path, capsys):
    """Audit: a copied run folder was counted twice (twice the steps, a narrower interval);
    a killed insitu run (no summary.json) was combined without a word; `-o` another insitu
    run with --overwrite replaced its summary.json; `--name ''` was taken.  Runs recorded at
    different beam energies are said (summary.json now records the energy)."""
    import shutil

    from perovstem.cli.main import main
    from perovstem.io import save_image

    _, series, _ = study
    runs = []
    for t in TEMPERATURES_K[:2]:
        f = tmp_path / f"s{t:g}.npz"
        save_image(series[f"f1_{t:g}K"], f)
        assert main(["insitu", str(f), "--no-plots"]) == 0
        runs.append(tmp_path / f"s{t:g}_insitu")
    assert json.loads((runs[0] / "summary.json").read_text())["voltage_kV"] is not None
    copy = tmp_path / "copy"
    shutil.copytree(runs[0], copy)
    killed = tmp_path / "killed"
    shutil.copytree(runs[1], killed)
    (killed / "summary.json").unlink()
    victim = tmp_path / "victim"
    shutil.copytree(runs[1], victim)
    before = (victim / "summary.json").read_bytes()
    capsys.readouterr()
    for args, word in (
        ([runs[0], copy, runs[1]], "hold identical frames and clusters tables"),
        ([runs[0], killed], "no summary.json: `perovstem insitu` did not finish"),
        ([*runs, "-o", victim, "--overwrite"], "holds a `perovstem insitu` run"),
        ([*runs, "--name", "a", "--name", " "], "`--name` 2 is empty"),
        ([*runs, "--name", "a+b", "--name", "c"], "holds '+', which joins pooled fields"),
    ):
        assert main(["kinetics", *map(str, args)]) == 2, args
        assert word in " ".join(capsys.readouterr().err.split()), word
    assert (victim / "summary.json").read_bytes() == before
    # one run at 200 kV (its summary's energy edited as a 200 kV run records it)
    s200 = json.loads((copy / "summary.json").read_text())
    s200["voltage_kV"] = 200.0
    (copy / "summary.json").write_text(json.dumps(s200))
    out = tmp_path / "k"
    assert main(["kinetics", str(copy), str(runs[1]), "-o", str(out), "--no-plots"]) == 0
    notes = json.loads((out / "summary.json").read_text())["notes"]
    assert any("differ in beam energy (copy: 200 kV, s272_insitu: 300 kV)" in n for n in notes)


def test_hop_rate_figure(study):
    """The Arrhenius figure: a point per temperature with its interval, Ea in the title; a
    table without hop rates is refused."""
    from perovstem.insitu import combine_series
    from perovstem.plot.insitu import plot_hop_rates

    _, _, results = study
    c = combine_series(list(results.values()), names=list(results))
    ax = plot_hop_rates(c)
    (line,) = [ln for ln in ax.get_lines() if ln.get_marker() == "o"]
    np.testing.assert_allclose(np.sort(line.get_ydata()), np.sort(_mob(c)["value"]))
    assert f"Ea = {_ea(c)['value']:.3f} eV" in ax.get_title()
    (fit,) = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-"]
    fx, fy = fit.get_xdata(), np.log(fit.get_ydata())
    assert (fy[-1] - fy[0]) / (fx[-1] - fx[0]) == pytest.approx(-_ea(c)["value"], rel=1e-9)
    with pytest.raises(DataError, match="no mobility row"):
        plot_hop_rates(c[c["process"] != "mobility"])


def test_fields_at_different_gas_pressures_are_said(study):
    """Audit: H2O at 1 and 1000 Pa (420 against 3 CsBr units stripped in the truth) were
    one condition without a word: the pressure is not a condition column, so it is said."""
    from perovstem.insitu import combine_series

    _, _, results = study
    tables = []
    for name, p_Pa in (("f1_272K", 1.0), ("f2_272K", 1000.0)):
        r = results[name]
        tables.append({"frames": r.frames.assign(pressure_Pa=p_Pa), "clusters": r.clusters})
    notes = combine_series(tables, names=["lo", "hi"]).attrs["notes"]
    assert any("differ in gas pressure (lo: 1 Pa, hi: 1e+03 Pa)" in n for n in notes), notes
    same = [
        {"frames": t["frames"].assign(pressure_Pa=1.0), "clusters": t["clusters"]} for t in tables
    ]
    assert not any("pressure" in n for n in combine_series(same, names=["a", "b"]).attrs["notes"])


def test_condition_without_clusters_says_mobility_not_measured(study):
    """Audit: a 225 K series (no Pb⁰ moves, no clusters form) had no mobility row at all,
    neither a rate nor why; it now says it was not measured and why."""
    from perovstem.insitu import combine_series

    _, _, results = study
    cold = results["f1_250K"]
    tables = [
        {"frames": cold.frames, "clusters": cold.clusters.iloc[0:0]},
        {"frames": results["f1_297K"].frames, "clusters": results["f1_297K"].clusters},
    ]
    out = combine_series(tables, names=["cold", "warm"])
    mob = out[out["process"] == "mobility"].sort_values("temperature_K")
    assert len(mob) == 2
    assert np.isnan(mob["value"].iloc[0]) and np.isfinite(mob["value"].iloc[1])
    assert "mobility: not measured: 0 cluster detection(s)" in mob["text"].iloc[0]


def test_hop_rates_of_strict_tracks_carry_their_bias_note(study):
    """Audit: Γ₁ intervals missed the simulator's rate in 2 of 6 single fields (strict tracks
    read 0.6–0.8 × the truth, documented) while the row presented Γ₁ as an absolute
    measurement; the notes now say so, for strict tracks only."""
    from perovstem.insitu import combine_series
    from perovstem.insitu.tracking import STRICT_HOP_RATE_NOTE

    _, _, results = study
    tables = [
        {"frames": results[n].frames, "clusters": results[n].clusters}
        for n in ("f1_250K", "f1_297K")
    ]
    assert STRICT_HOP_RATE_NOTE in combine_series(tables, names=["a", "b"]).attrs["notes"]
    lineage = combine_series(tables, names=["a", "b"], hop_tracks_how="lineage")
    assert STRICT_HOP_RATE_NOTE not in lineage.attrs["notes"]
