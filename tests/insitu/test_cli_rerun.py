"""``perovstem insitu`` into a folder that holds an earlier run: refused, or replaced whole."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import numpy as np

from perovstem.cli.main import main


def _small_series(path):
    from perovstem._data import Series
    from perovstem.io import save_image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[:48, :48]
    lattice = 5 + 20 * (np.cos(2 * np.pi * x / 6.0) * np.cos(2 * np.pi * y / 6.0)) ** 2
    data = rng.poisson(np.broadcast_to(lattice, (4, 48, 48))).astype(float)
    s = Series(data, 0.5, time_s=np.arange(4.0), dose_e_per_A2=np.full(4, 500.0))
    save_image(s, path)
    return path


def test_rerun_into_an_earlier_output_folder(tmp_path, capsys):
    series = _small_series(tmp_path / "s.npz")
    out = tmp_path / "out"
    args = ["insitu", str(series), "--out", str(out), "--ci", "wald", "--no-register"]
    assert main([*args, "--table-format", "csv", "--no-plots"]) == 0
    first = json.loads((out / "summary.json").read_text())
    csv = sorted(p.name for p in out.glob("*.csv"))
    assert "frames.csv" in csv
    # a second run (other options) is refused before any work: nothing mixed or replaced
    capsys.readouterr()
    assert main([*args, "--table-format", "parquet", "--no-plots"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert not list(out.glob("*.parquet"))
    assert json.loads((out / "summary.json").read_text()) == first
    # --overwrite replaces the earlier run whole: no csv of the first run stays beside it
    assert main([*args, "--table-format", "parquet", "--no-plots", "--overwrite"]) == 0
    assert not list(out.glob("*.csv"))
    assert sorted(p.stem for p in out.glob("*.parquet")) == sorted(p[:-4] for p in csv)
    # files that are not perovstem outputs are left alone
    (out / "notes.txt").write_text("mine")
    assert main([*args, "--table-format", "csv", "--no-plots", "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine"


def test_dose_on_the_command_line_without_time_stamps(tmp_path, capsys):
    """A file without time stamps and --dose: the error names the CLI option to give
    (before: "pass `time_s` (one per frame) or `frame_time_s`", names of the Python API)."""
    from perovstem.io import load, save_image

    p = _small_series(tmp_path / "s.npz")
    bare = tmp_path / "bare.npz"
    save_image(load(p).replace(time_s=None, dose_e_per_A2=None), bare)
    out = tmp_path / "o"
    args = ["insitu", str(bare), "--out", str(out), "--no-register", "--no-plots"]
    assert main([*args, "--dose", "500"]) == 2
    err = capsys.readouterr().err
    assert "--frame-time-s" in err and "time_s` (one per frame)" not in err
    assert not out.exists()
    assert main([*args, "--dose", "500", "--frame-time-s", "2", "--ci", "wald"]) == 0
    assert (out / "summary.json").exists()


def test_options_that_meet_the_files_own_records_are_noted(tmp_path):
    """--dose on a file with its own per-frame dose replaces it, and --frame-time-s on a
    file with time stamps is not used for them: both were silent."""
    p = _small_series(tmp_path / "s.npz")  # 500 e⁻/Å² per frame, 1 s apart
    out = tmp_path / "o"
    args = ["insitu", str(p), "--out", str(out), "--no-register", "--no-plots", "--ci", "wald"]
    assert main([*args, "--dose", "800", "--frame-time-s", "2"]) == 0
    notes = json.loads((out / "summary.json").read_text())["notes"]
    assert any("500–500 e⁻/Å²) is replaced by --dose" in n for n in notes)
    assert any("--frame-time-s does not replace" in n and "1 s" in n for n in notes)
    import pandas as pd

    frames = pd.read_parquet(out / "frames.parquet")
    np.testing.assert_allclose(frames["dose_e_per_A2"], 800.0)
    np.testing.assert_allclose(frames["time_s"], np.arange(4.0))


def test_bad_ci_is_refused_before_any_work(tmp_path, capsys):
    """--ci foo ran the whole analysis and wrote every table with "not fitted: `ci` must be
    one of ..." in each kinetic row; now refused first, nothing written."""
    import pandas as pd
    import pytest

    from perovstem import ParameterError
    from perovstem.quantify.mechanism import mechanism_summary

    p = _small_series(tmp_path / "s.npz")
    out = tmp_path / "o"
    assert main(["insitu", str(p), "--out", str(out), "--no-register", "--ci", "foo"]) == 2
    assert "ci` must be one of" in capsys.readouterr().err
    assert not out.exists()
    frames = pd.DataFrame({"cumulative_dose_e_per_A2": np.arange(1.0, 7.0)})
    with pytest.raises(ParameterError, match="ci"):
        mechanism_summary(frames, ci="foo")


def test_gain_and_offset_on_the_command_line(tmp_path):
    """A stack from another instrument has no gain/offset: the CLI had no way to give them
    (a ×5 + 100 stack of a KMC series: 750 Pb⁰ atoms in a first frame with none); now
    --gain/--offset reach the analysis, and without a gain a note says what was assumed."""
    import pandas as pd

    from perovstem.io import load, save_image

    p = _small_series(tmp_path / "s.npz")
    s = load(p)
    raw = tmp_path / "raw.npz"
    save_image(s.replace(data=np.asarray(s.data) * 5.0 + 100.0), raw)
    base = ["--no-register", "--no-plots", "--ci", "wald"]
    assert main(["insitu", str(p), "--out", str(tmp_path / "a"), *base]) == 0
    cli = ["insitu", str(raw), "--out", str(tmp_path / "b"), *base, "--gain", "5"]
    assert main([*cli, "--offset", "100"]) == 0
    a = pd.read_parquet(tmp_path / "a" / "frames.parquet")
    b = pd.read_parquet(tmp_path / "b" / "frames.parquet")
    np.testing.assert_allclose(b["integrated_counts"], a["integrated_counts"], rtol=1e-9)
    notes_a = json.loads((tmp_path / "a" / "summary.json").read_text())["notes"]
    notes_b = json.loads((tmp_path / "b" / "summary.json").read_text())["notes"]
    assert any("no detector gain" in n for n in notes_a)
    assert not any("no detector gain" in n for n in notes_b)
    assert main(["insitu", str(raw), "--out", str(tmp_path / "c"), *base, "--gain", "0"]) == 2


def test_every_output_name_is_known_before_the_analysis(tmp_path, monkeypatch):
    """`--overwrite` removes an earlier run by the names known before the analysis; a table
    or figure written under another name would stay beside the new run."""
    from types import SimpleNamespace

    import pandas as pd

    from perovstem.cli import insitu as cli
    from perovstem.insitu.analysis import InsituResult
    from perovstem.plot import insitu as pl

    df = pd.DataFrame({"a": [1.0]})
    full = InsituResult(
        *(df,) * 6, columns=df, column_counts=df, br_loss=SimpleNamespace(frames=df)
    )
    assert tuple(full.tables()) == InsituResult.TABLE_NAMES
    bare = InsituResult(*(df,) * 6)
    assert set(bare.tables()) < set(InsituResult.TABLE_NAMES)
    for name in ("cluster_kinetics", "drift", "lineage", "size_distribution", "crystal_area"):
        monkeypatch.setattr(pl, f"plot_{name}", lambda *a, **k: "ax")
    monkeypatch.setattr(pl, "plot_atoms_lost_map", lambda *a, **k: "ax")
    frames = pd.DataFrame({"area_A2": [1.0]})
    res = SimpleNamespace(frames=frames, drift=df, lineage=df, clusters=df, columns=df)
    assert tuple(cli._figures(res)) == cli.FIGURE_NAMES
    for n in [f"{t}.csv" for t in InsituResult.TABLE_NAMES] + ["drift.png", "summary.json"]:
        (tmp_path / n).write_text("x")
    assert len(cli._earlier_outputs(tmp_path)) == len(InsituResult.TABLE_NAMES) + 2


def test_temperature_on_the_command_line(tmp_path, capsys):
    """--temperature-K sets the series' temperature (a TIFF stack has none; `perovstem
    kinetics` needs it to tell conditions apart), replaces a file's own with a note, and is
    refused together with --conditions (both would give it) or beyond a holder's range."""
    import pandas as pd

    from perovstem._data import Series
    from perovstem.io import load, save_image

    p = _small_series(tmp_path / "s.npz")
    assert load(p).temperature_K is None
    out = tmp_path / "o"
    args = ["insitu", str(p), "--no-register", "--no-plots", "--ci", "wald"]
    assert main([*args, "--out", str(out), "--temperature-K", "265"]) == 0
    np.testing.assert_allclose(pd.read_parquet(out / "frames.parquet")["temperature_K"], 265.0)
    s = load(p)
    hot = tmp_path / "hot.npz"
    save_image(
        Series(
            s.data,
            0.5,
            time_s=s.time_s,
            dose_e_per_A2=s.dose_e_per_A2,
            temperature_K=np.full(4, 300.0),
        ),
        hot,
    )
    out2 = tmp_path / "o2"
    a2 = ["insitu", str(hot), "--no-register", "--no-plots", "--ci", "wald"]
    assert main([*a2, "--out", str(out2), "--temperature-K", "280"]) == 0
    notes = json.loads((out2 / "summary.json").read_text())["notes"]
    assert any("temperature (300–300 K) is replaced by --temperature-K 280" in n for n in notes)
    np.testing.assert_allclose(pd.read_parquet(out2 / "frames.parquet")["temperature_K"], 280.0)
    log = tmp_path / "T.csv"
    log.write_text("time_s,temperature_K\n0,300\n10,300\n")
    for extra, word in (
        (["--conditions", str(log)], "both give the temperature"),
        (["--temperature-K", "5000"], "--temperature-K"),
    ):
        argv = [*args, "--out", str(tmp_path / "o3"), *extra]
        if "--conditions" in extra:
            argv += ["--temperature-K", "265"]
        assert main(argv) != 0
        assert word in capsys.readouterr().err
        assert not (tmp_path / "o3").exists()


def test_uncalibrated_detector_is_noted(tmp_path, capsys):
    """--detector-mrad (or the file's) that no shipped library has is said in the notes."""
    series = _small_series(tmp_path / "s.npz")
    out = tmp_path / "out"
    args = ["insitu", str(series), "--out", str(out), "--ci", "wald", "--no-register"]
    assert main([*args, "--no-plots", "--detector-mrad", "50,180"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "a 50–180 mrad detector (libraries 65–200 or 65–131)" in text
    assert "Pb⁰ atom counts" in text
    assert main([*args, "--no-plots", "--overwrite", "--detector-mrad", "65,131"]) == 0
    assert "mrad detector (libraries" not in " ".join(capsys.readouterr().out.split())
