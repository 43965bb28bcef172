"""Absurd values and wrong files refused in the command line's own terms (uqa16): one line
naming the option or file and the value, exit status 2, nothing written.

Each case failed before: accepted (``simulate tilt --counts-per-A 1e30``, ``tomo sequence
--doses-e-per-A2 1e30``), a message naming a Python parameter the user never gave
(``atoms count`` with NaN cross-sections: "too few columns for `max_components`"), one
UnicodeDecodeError per reader tried (``--conditions`` pointing at a picture), or a kinetic
Monte Carlo that ran for hours (the pipeline's ``frame_time_s`` was not bounded).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from _refusals import assert_refused, pbbr_columns

from perovstem.cli.main import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from PIL import Image as Picture

    from perovstem._data import Series, TiltSeries
    from perovstem.io import save_image

    d = tmp_path_factory.mktemp("limits")
    rng = np.random.default_rng(0)
    save_image(TiltSeries(rng.random((5, 16, 16)), np.linspace(-60, 60, 5), 2.0), d / "ts.npz")
    save_image(Series(rng.random((3, 32, 32)), 0.5, time_s=np.arange(3.0)), d / "s.npz")
    Picture.fromarray(np.zeros((8, 8), np.uint8)).save(d / "picture.png")
    shutil.copy(d / "picture.png", d / "picture_as.csv")
    shutil.copy(d / "s.npz", d / "npz_as.log")
    cols = pbbr_columns(rng)
    c = cols.copy()
    c.loc[1:, "scs"] = np.nan  # one measured column
    c.to_csv(d / "nan15.csv", index=False)
    c = cols.copy()
    c.loc[6:, "scs"] = np.nan  # six measured columns
    c.to_csv(d / "nan10.csv", index=False)
    c = cols.copy()
    c.loc[:7, "type"] = "Cs"
    c.loc[1:7, "scs"] = np.nan  # one measured Cs column, eight PbBr
    c.to_csv(d / "nantype.csv", index=False)
    return d


def _check(capsys, argv, d, o, *fragments, absent=()):
    text = assert_refused(capsys, argv, d, o, *fragments, absent=absent)
    assert not any(o.iterdir())
    return text


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (
            ["simulate", "tilt", "-o", "{o}/t.npz", "--counts-per-A", "1e30"],
            ["`--counts-per-A` = 1e+30 counts/Å", "above 1e+10"],
        ),
        (["simulate", "tilt", "-o", "{o}/t.npz", "--counts-per-A", "-3"], ["`--counts-per-A`"]),
        # (a 298 GiB MemoryError, exit 1: the API's tilt_series had no image-size bound)
        (
            ["simulate", "tilt", "-o", "{o}/t.npz", "--size-px", "100000"],
            ["`--size-px` = 100000 px", "above 8192 px", "largest simulated projection"],
        ),
        # 1401 projections of 8192² px: 0.75 TB of float64 before the first projection
        (
            ["simulate", "tilt", "-o", "{o}/t.npz", "--size-px", "8192", "--step-deg", "0.1"],
            [
                "`--step-deg` and `--size-px`",
                "1401 projections of 8192 × 8192 px",
                "above 2.15e+09",
            ],
        ),
        # detector models no microscope has: accepted before (session 33), the offset of
        # -1e30 counts buried the image's electrons below its float rounding
        (
            ["simulate", "image", "-o", "{o}/i.npz", "--edge-A", "20", "--offset", "-1e30"],
            ["`--offset` = -1e+30 counts", "beyond ±4.29497e+09 counts"],
        ),
        (
            ["simulate", "image", "-o", "{o}/i.npz", "--edge-A", "20", "--gain", "1e30"],
            ["`--gain` = 1e+30 counts/e⁻", "above 1e+06"],
        ),
        (
            ["simulate", "image", "-o", "{o}/i.npz", "--edge-A", "20"] + ["--scan-noise-px", "1e6"],
            ["`--scan-noise-px` = 1e+06 px", "above 100 px"],
        ),
        # ... refused before the kinetic Monte Carlo runs (it took the whole run before)
        (
            ["simulate", "series", "-o", "{o}/s.zarr", "--edge-A", "20", "--frames", "2"]
            + ["--gain", "1e9"],
            ["`--gain` = 1e+09 counts/e⁻"],
        ),
        # a series of empty frames (cumulative dose 0) was written without a word
        (
            ["simulate", "series", "-o", "{o}/s.zarr", "--edge-A", "20", "--frames", "2"]
            + ["--dose-rate-e-per-A2-s", "0"],
            ["`--dose-rate-e-per-A2-s` must be > 0, got 0", "hold no electrons"],
        ),
        (
            ["simulate", "series", "-o", "{o}/s.zarr", "--edge-A", "20", "--frames", "2"]
            + ["--thickness-A", "12"],
            ["`--thickness-A` applies to --shape platelet only"],
        ),
        # a later output's suffix refused only after the work, beside the written first one
        # (audit: tomo align --shifts .xlsx after the 18 s alignment, tomo facets --mesh
        # .xyz beside the facet table, atoms track --columns-out .xlsx, reconstruct -o .xyz)
        (
            ["tomo", "align", "{d}/ts.npz", "-o", "{o}/a.npz", "--shifts", "{o}/s.xlsx"],
            ["`--shifts`", "s.xlsx", ".parquet or .csv"],
        ),
        (
            ["tomo", "reconstruct", "{d}/ts.npz", "-o", "{o}/v.xyz"],
            ["`--out`", "v.xyz", ".mrc"],
        ),
        (
            ["tomo", "facets", "{d}/ts.npz", "-o", "{o}/f.csv", "--mesh", "{o}/m.xyz"],
            ["`--mesh`", "m.xyz", ".ply"],
        ),
        (
            ["atoms", "track", "{d}/nan10.csv", "{d}/nan10.csv", "-o", "{o}/t.parquet"]
            + ["--columns-out", "{o}/c.xlsx"],
            ["`--columns-out`", "c.xlsx", ".parquet or .csv"],
        ),
        # tifffile's bare "max_denominator should be at least 1" (exit 1, no file named)
        (
            ["simulate", "image", "-o", "{o}/i.tif", "--edge-A", "20"] + ["--pixel-size-A", "0.01"],
            ["i.tif", "cannot record a pixel of 0.01 Å", ".npz"],
        ),
        (
            ["tomo", "sequence", "{d}/ts.npz", "{d}/ts.npz", "-o", "{o}/q.csv"]
            + ["--doses-e-per-A2", "0,1e30"],
            ["`--doses-e-per-A2` = 1e+30 e⁻/Å²", "above 1e+15"],
        ),
        (
            ["tomo", "sequence", "{d}/ts.npz", "{d}/ts.npz", "-o", "{o}/q.csv"]
            + ["--doses-e-per-A2", "0,nan"],
            ["`--doses-e-per-A2`", "nan"],
        ),
        # decreasing times and cumulative doses were accepted (audit)
        (
            ["tomo", "sequence", "{d}/ts.npz", "{d}/ts.npz", "-o", "{o}/q.csv"]
            + ["--times-s", "10,5"],
            ["`--times-s` must be finite and increasing", "'10,5'"],
        ),
        (
            ["tomo", "sequence", "{d}/ts.npz", "{d}/ts.npz", "-o", "{o}/q.csv"]
            + ["--doses-e-per-A2", "100,50"],
            ["`--doses-e-per-A2` (cumulative) must not decrease", "'100,50'"],
        ),
    ],
)
def test_absurd_simulation_and_dose_values(files, tmp_path, capsys, argv, fragments):
    _check(capsys, argv, files, tmp_path, *fragments)


@pytest.mark.parametrize(
    ("name", "extra", "fragments"),
    [
        (
            "nan15.csv",
            [],
            [
                "1 measured column(s) of type 'PbBr'",
                "15 of 16 columns not counted",
                "needs at least 2 columns",
                "--method library",
            ],
        ),
        (
            "nan10.csv",
            ["-k", "4"],
            ["6 measured column(s)", "`-k`/`--components` 4 needs at least 8", "at most 3"],
        ),
        ("nantype.csv", [], ["1 measured column(s) of type 'Cs'", "`--type PbBr`"]),
    ],
)
def test_count_with_unmeasured_columns_speaks_cli(files, tmp_path, capsys, name, extra, fragments):
    argv = ["atoms", "count", f"{{d}}/{name}", "-o", "{o}/c.csv", *extra]
    _check(capsys, argv, files, tmp_path, f"'{{d}}/{name}'", *fragments, absent=("max_components",))


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("picture.png", "its content is a PNG picture, not a holder log"),
        ("picture_as.csv", "its content is a PNG picture, not a holder log"),
        ("npz_as.log", "its content is a zip (.npz) file, not a holder log"),
    ],
)
def test_conditions_that_are_not_a_log(files, tmp_path, capsys, name, fragment):
    argv = ["insitu", "{d}/s.npz", "-o", "{o}/ins", "--no-plots", "--conditions", f"{{d}}/{name}"]
    _check(capsys, argv, files, tmp_path, f"'{{d}}/{name}'", fragment, absent=("UnicodeDecode",))


def test_pipeline_kmc_frame_dose_is_bounded(tmp_path, capsys, monkeypatch):
    # each value within its range; together 1e12 e⁻/Å² per frame (hours of Pb⁰ hops): the
    # simulation is replaced by a failing stand-in, so that a late refusal cannot hang
    from perovstem.simulate import kmc_core

    def work(*a, **k):
        raise AssertionError("the kinetic Monte Carlo started")

    monkeypatch.setattr(kmc_core, "run_interval", work)
    cfg = tmp_path / "study.toml"
    cfg.write_text(
        '[[step]]\nrun = "simulate.nanocrystal"\nedge_A = 20.0\n\n[[step]]\n'
        'run = "simulate.kmc"\ndose_rate_e_per_A2_s = 1e9\nframe_time_s = 1000.0\n'
    )
    out = tmp_path / "run"
    rc = main(["run", str(cfg), "-o", str(out)])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2, err
    assert "`dose_rate_e_per_A2_s` × `frame_time_s` = 1e+12 e⁻/Å²" in err, err
    assert "Traceback" not in err
