from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from perovstem.cli.main import main


@pytest.fixture(scope="module")
def series_file(tmp_path_factory):
    from perovstem.io import save_image
    from perovstem.simulate import degradation_kmc, insitu_series, nanocrystal

    tr = degradation_kmc(
        nanocrystal(edge_A=35.0, rng=0),
        n_frames=8,
        frame_time_s=1.0,
        dose_rate_e_per_A2_s=4e3,
        temperature_K=300.0,
        rng=3,
    )
    s, _ = insitu_series(tr, pixel_size_A=0.5, drift_A_per_s=(0.5, 0.2), rng=3)
    p = tmp_path_factory.mktemp("insitu") / "series.npz"
    save_image(s, p)
    return p


def test_cli_insitu_writes_tables_plots_summary(series_file, tmp_path):
    log = tmp_path / "log.csv"
    pd.DataFrame({"time_s": np.arange(0, 20.0), "temperature_C": 27.0}).to_csv(log, index=False)
    out = tmp_path / "out"
    rc = main(
        [
            "insitu",
            str(series_file),
            "--conditions",
            str(log),
            "--out",
            str(out),
            "--table-format",
            "csv",
            "--ci",
            "wald",
            "--columns",
        ]
    )
    assert rc == 0
    for name in ("frames", "drift", "clusters", "lineage", "events", "summary", "columns"):
        assert (out / f"{name}.csv").exists()
    assert (out / "clusters_vs_dose.png").exists() and (out / "drift.png").exists()
    assert (out / "atoms_lost.png").exists()
    cols = pd.read_csv(out / "columns.csv")
    assert set(cols["type"]) == {"PbBr", "Br", "Cs"}
    np.testing.assert_array_equal(cols["atoms_lost"], cols["n_atoms_first"] - cols["n_atoms_last"])
    summ = json.loads((out / "summary.json").read_text())
    assert summ["n_frames"] == 8
    # the simulator's probe (0.33 Å): columns of 0.38 Å, the validated imaging (no note)
    assert 0.35 < summ["column_sigma_A"] < 0.43
    assert not any("validated for columns" in n for n in summ["notes"])
    assert (
        summ["atoms_lost"]["PbBr"]["atoms_lost"]
        == cols.loc[cols["type"] == "PbBr", "atoms_lost"].sum()
    )
    frames = pd.read_csv(out / "frames.csv")
    np.testing.assert_allclose(frames["temperature_K"], 300.15)
    assert frames["cumulative_dose_e_per_A2"].iloc[-1] == pytest.approx(8 * 4e3)


def test_cli_insitu_br_loss_and_scan_correction(series_file, tmp_path):
    """--br-loss: the summary's Br-loss row is D_Br of the image-derived exposed-Br hazard,
    within 10 % of the simulator's (3·10⁴ e⁻/Å²); --scan-correction adds the rms offsets."""
    out = tmp_path / "out"
    args = ["insitu", str(series_file), "--out", str(out), "--table-format", "csv"]
    rc = main([*args, "--ci", "wald", "--no-plots", "--br-loss", "--scan-correction"])
    assert rc == 0
    summ = pd.read_csv(out / "summary.csv")
    row = summ[summ["process"] == "br_loss"].iloc[0]
    assert row["observable"] == "n_Br_lost_image"
    assert row["param"] == "D_Br_e_per_A2"
    assert abs(row["value"] / 3e4 - 1) < 0.10
    assert row["ci_low"] < 3e4 < row["ci_high"]
    js = json.loads((out / "summary.json").read_text())
    assert any("exposed-Br hazard from images" in t for t in js["mechanisms"])
    assert abs(js["br_loss_from_images"]["D_Br_e_per_A2"] / 3e4 - 1) < 0.10
    frames = pd.read_csv(out / "frames.csv")
    assert {"n_Br_lost_image", "scan_rms_line_offset_px"} <= set(frames.columns)
    assert (out / "br_loss.csv").exists()


def test_cli_insitu_bad_input(tmp_path, series_file):
    assert main(["insitu", str(tmp_path / "missing.npz")]) == 2
    assert main(["insitu", str(series_file), "--dose", "0", "--out", str(tmp_path / "o")]) == 2
    assert main(["insitu", str(series_file), "--table-format", "xls"]) == 2


@pytest.mark.parametrize("value", ["-1", "0", "nan"])
def test_cli_insitu_rejects_bad_frame_time(tmp_path, series_file, capsys, value):
    # checked even where the series' own time stamps would make it unused
    out = tmp_path / "o"
    rc = main(["insitu", str(series_file), "--frame-time-s", value, "--out", str(out)])
    assert rc == 2
    assert f"--frame-time-s` must be finite and > 0, got {float(value)}" in capsys.readouterr().err
    assert not out.exists()


def test_plots_return_axes():
    from perovstem.plot import insitu as pl

    frames = pd.DataFrame(
        {
            "frame": range(5),
            "cumulative_dose_e_per_A2": np.arange(1, 6) * 1e3,
            "n_clusters": [0, 1, 3, 2, 2],
            "mean_cluster_atoms": [np.nan, 10, 12, 30, 35],
            "area_A2": [1600, 1550, 1500, 1400, 1300.0],
            "void_area_A2": 0.0,
        }
    )
    clusters = pd.DataFrame({"frame": [1, 2, 2, 2, 3, 3], "n_atoms": [10, 11, 12, 13, 30, 29.0]})
    lineage = pd.DataFrame(
        {
            "track_id": [0, 1, 2],
            "start_frame": [1, 2, 3],
            "end_frame": [2, 2, 4],
            "parents": [[], [], [0, 1]],
            "origin": ["nucleation", "nucleation", "merge"],
        }
    )
    drift = pd.DataFrame(
        {"dy_px": [0, 1, 2.0], "dx_px": [0, 0.5, 1.0], "skipped": [False, True, False]}
    )
    for ax in (
        pl.plot_cluster_kinetics(frames),
        pl.plot_size_distribution(clusters),
        pl.plot_lineage(lineage),
        pl.plot_crystal_area(frames),
        pl.plot_drift(drift),
    ):
        assert ax.has_data()
    cols = pd.DataFrame({"x_A": [0, 1.0], "y_A": [0, 1.0], "n_first": [8, 8], "n_last": [7, 5]})
    ax = pl.plot_atoms_lost_map(cols, first="n_first", last="n_last")
    np.testing.assert_allclose(ax.collections[0].get_array(), [1, 3])
    typed = pd.DataFrame(
        {
            "x_A": [0, 1.0, 2.0],
            "y_A": [0, 1.0, 0.0],
            "type": ["PbBr", "Br", "PbBr"],
            "n_atoms_first": [8, 8, 6],
            "n_atoms_last": [7, 5, 6],
        }
    )
    ax = pl.plot_atoms_lost_map(typed)
    np.testing.assert_allclose(ax.collections[0].get_array(), [1, 0])  # PbBr first
    np.testing.assert_allclose(ax.collections[1].get_array(), [3])
    ax = pl.plot_atoms_lost_map(typed, column_type="Br")
    assert len(ax.collections) == 1
    from matplotlib.figure import Figure

    ax0 = Figure().add_subplot()
    assert pl.plot_drift(drift, ax=ax0) is ax0
    from perovstem import DataError

    with pytest.raises(DataError, match="n_clusters"):
        pl.plot_cluster_kinetics(pd.DataFrame({"frame": [0]}))
