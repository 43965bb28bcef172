"""Bad inputs to every command: one error line naming the file or option and the value,
exit status 2, no traceback, no output written (QA sweep uqa15).

Cases marked "new" failed before that sweep (a traceback, a message naming neither the file
nor the option, a stalled simulation, an absurd value accepted, the analysis run before a
typo in ``-o`` was found); the others guard what already worked.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from _refusals import assert_refused, pbbr_columns

from perovstem.cli.main import main

FORMATS = Path(__file__).resolve().parents[1] / "data" / "formats"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Tiny good and bad files of every kind a command reads."""
    import tifffile

    from perovstem._data import Image, Series, TiltSeries
    from perovstem.io import save_image, save_table

    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:48, :48]
    lattice = 5 + 20 * (np.cos(2 * np.pi * x / 6.0) * np.cos(2 * np.pi * y / 6.0)) ** 2
    img = Image(rng.poisson(lattice).astype(np.float32), 0.5)
    save_image(img, d / "good.tif")
    ts = TiltSeries(rng.random((5, 16, 16)), np.linspace(-60, 60, 5), 2.0)
    save_image(ts, d / "ts.npz")
    save_image(ts.replace(data=np.ones((5, 16, 16))), d / "const_ts.npz")
    save_image(Series(np.full((3, 48, 48), 5.0), 0.5, time_s=np.arange(3.0)), d / "const_s.npz")

    def cut(src: Path, name: str) -> None:
        b = src.read_bytes()
        (d / name).write_bytes(b[: len(b) // 2])

    cut(FORMATS / "haadf_calibrated.dm3", "trunc.dm3")
    cut(FORMATS / "uncalibrated.dm4", "trunc.dm4")
    cut(FORMATS / "ncem_example_image.emd", "trunc.emd")
    cut(FORMATS / "128x128-TEM_search_1.ser", "trunc.ser")
    cut(d / "good.tif", "trunc.tif")
    for ext in ("mrc", "hspy"):
        save_image(img, d / f"good.{ext}")
        cut(d / f"good.{ext}", f"trunc.{ext}")
    from PIL import Image as Picture

    Picture.fromarray(np.zeros((8, 8), np.uint8)).save(d / "picture.png")
    shutil.copy(d / "picture.png", d / "png_as.dm4")
    (d / "text_as.mrc").write_text("x,y\n1,2\n" * 40)
    bad = img.data.copy()
    bad[3, 3] = np.nan
    np.savez(d / "nan.npz", obs=bad, dx_angstrom=0.5)
    bad[3, 3] = np.inf
    np.savez(d / "inf.npz", obs=bad, dx_angstrom=0.5)
    np.savez(d / "zero.npz", obs=np.zeros((0, 0)), dx_angstrom=0.5)
    np.savez(d / "const.npz", obs=np.full((48, 48), 7.0), dx_angstrom=0.5)
    np.savez(d / "negpx.npz", obs=img.data, dx_angstrom=-0.5)
    tifffile.imwrite(d / "nocal.tif", img.data)
    # column tables
    cols = pbbr_columns(rng)
    save_table(cols, d / "cols.csv")
    t = cols.astype({"scs": object})
    t.loc[2, "scs"] = "abc"
    t.to_csv(d / "text.csv", index=False)
    cols.iloc[:0].to_csv(d / "empty.csv", index=False)
    c = cols.copy()
    c.loc[[1, 4], "x_A"] = np.nan
    c.to_csv(d / "nanxy.csv", index=False)
    c = cols.copy()
    c.loc[[0, 1, 2], "scs"] = np.inf
    c.to_csv(d / "infscs.csv", index=False)
    n = cols.assign(n_atoms=1)
    n = n.astype({"n_atoms": object})
    n.loc[5, "n_atoms"] = "three"
    n.to_csv(d / "text_counts.csv", index=False)
    return d


def _check(capsys, argv, d, *fragments, out=None, o=None):
    text = assert_refused(capsys, argv, d, o, *fragments)
    if out is not None:
        assert not (d / out).exists()
    return text


# ------------------------------------------------------------------- image files, every reader
# one command per way of reading (lazy, eager, the atoms/insitu/tomo loaders, several files);
# atoms map, tomo align and tomo facets read as atoms fit and tomo reconstruct do
_READERS = {
    "info": ["info", "{d}/%s"],
    "convert": ["convert", "{d}/%s", "{o}/c.npz"],
    "atoms fit": ["atoms", "fit", "{d}/%s", "-o", "{o}/c.parquet"],
    "insitu": ["insitu", "{d}/%s", "-o", "{o}/ins", "--no-plots"],
    "tomo reconstruct": ["tomo", "reconstruct", "{d}/%s", "-o", "{o}/v.mrc"],
    "tomo sequence": ["tomo", "sequence", "{d}/ts.npz", "{d}/%s", "-o", "{o}/q.csv"],
}
_BAD_IMAGES = {  # file: what the message must say besides the file name
    # new: "truncated ... or damaged" said (.ser: "setting an array element with a sequence")
    "trunc.dm3": "a DigitalMicrograph file should (25255 bytes): truncated",
    "trunc.dm4": "a DigitalMicrograph file should (13326 bytes): truncated",
    "trunc.emd": "an HDF5 (Velox emd or HyperSpy hspy) file should (8552 bytes): truncated",
    "trunc.ser": "a TIA ser file should (32841 bytes): truncated",
    "trunc.mrc": "truncated",
    "trunc.tif": "truncated or corrupted tif",
    "trunc.hspy": "truncated file",
    "png_as.dm4": "its content is a PNG picture, not a .dm4 file",  # new
    "text_as.mrc": "its content is text, not a .mrc file",  # new
    "nan.npz": "1 NaN/inf value(s)",
    "inf.npz": "1 NaN/inf value(s)",
    "zero.npz": "is empty, got shape (0, 0)",  # new: the file was not named
    "negpx.npz": "pixel size -0.5 Å",
    "nocal.tif": "--pixel-size-A",
}


@pytest.mark.parametrize("name", list(_BAD_IMAGES))
@pytest.mark.parametrize("command", list(_READERS))
def test_bad_image_files(files, tmp_path, capsys, command, name):
    argv = [a % name if "%s" in a else a for a in _READERS[command]]
    _check(capsys, argv, files, f"'{{d}}/{name}'", _BAD_IMAGES[name], o=tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("command", ["fit", "map"])
def test_constant_image_is_named(files, tmp_path, capsys, command):
    # new: "no lattice periodicity found in the image power spectrum" (fit) and "`image` is
    # constant" (map), neither naming the file
    argv = ["atoms", command, "{d}/const.npz", "-o", "{o}/c.csv"]
    _check(capsys, argv, files, "'{d}/const.npz'", "every pixel is 7", o=tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("command", ["reconstruct", "facets"])
def test_constant_tilt_series_is_said(files, tmp_path, capsys, command):
    # new: an empty volume and a facet table were written without a word (a constant
    # series still runs: it is what a blank acquisition gives, and the tests' smoke input)
    out = tmp_path / ("v.mrc" if command == "reconstruct" else "f.csv")
    main(["tomo", command, str(files / "const_ts.npz"), "-o", str(out), "-m", "fbp"])
    err = " ".join(capsys.readouterr().err.split())
    assert f"WARNING: '{files / 'const_ts.npz'}': every pixel of every projection is 1:" in err
    assert "Traceback" not in err


def test_constant_insitu_series_is_named(files, tmp_path, capsys):
    # new: "every frame of the series is unusable" without the file
    argv = ["insitu", "{d}/const_s.npz", "-o", "{o}/i", "--dose-e-per-A2", "10"]
    _check(capsys, argv, files, "'{d}/const_s.npz'", "all pixels = 5", o=tmp_path)
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------ table files
@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        # new: a traceback (could not convert string to float: 'abc')
        (
            ["atoms", "count", "{d}/text.csv"],
            ["'{d}/text.csv'", "column 'scs' holds text", "'abc'"],
        ),
        (["atoms", "strain", "{d}/text.csv"], ["'{d}/text.csv'", "column 'scs' holds text"]),
        (
            ["atoms", "track", "{d}/cols.csv", "{d}/text.csv"],
            ["'{d}/text.csv'", "column 'scs' holds text", "first [2]"],
        ),
        (["model3d", "{d}/text_counts.csv"], ["'{d}/text_counts.csv'", "'n_atoms'", "'three'"]),
        # new: "no column has a cross-section above 3 standard errors"
        (["atoms", "count", "{d}/empty.csv"], ["'{d}/empty.csv'", "has no rows"]),
        (["atoms", "strain", "{d}/empty.csv"], ["'{d}/empty.csv'", "has no rows"]),
        # new: a traceback from scipy (data must be finite)
        (
            ["atoms", "strain", "{d}/nanxy.csv"],
            ["'{d}/nanxy.csv'", "'x_A' has 2 NaN/inf", "[1, 4]"],
        ),
        # new: the file was not named
        (["atoms", "count", "{d}/infscs.csv"], ["'{d}/infscs.csv'", "3 non-finite"]),
        (["model3d", "{d}/cols.csv"], ["'{d}/cols.csv'", "the table lacks column(s) ['n_atoms']"]),
        (["atoms", "count", "{d}/picture.png"], ["'{d}/picture.png'", ".parquet or .csv"]),
        (["atoms", "count", "{d}/good.tif"], ["'{d}/good.tif'", ".parquet or .csv"]),
        (["model3d", "{d}/nope.csv"], ["no such table file", "'{d}/nope.csv'"]),
    ],
)
def test_bad_tables(files, tmp_path, capsys, argv, fragments):
    out = {"model3d": "m.xyz"}.get(argv[0], "t.parquet")
    text = _check(capsys, [*argv, "-o", f"{{o}}/{out}"], files, *fragments, o=tmp_path)
    assert "`columns`" not in text and "`scs` table" not in text
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------ absurd option values
@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        # new: accepted (an image of 1e30 counts per Å²)
        (["simulate", "image", "--dose-e-per-A2", "1e30"], ["`--dose-e-per-A2` = 1e+30"]),
        # new: numpy's MemoryError (75 GiB) with a traceback
        (["simulate", "image", "--size-px", "100000"], ["`--size-px` = 100000 px"]),
        # new: the kinetic Monte Carlo never ended
        (["simulate", "series", "--dose-rate-e-per-A2-s", "1e30"], ["`--dose-rate-e-per-A2-s`"]),
        (["simulate", "series", "--temperature-K", "-5"], ["`--temperature-K`", "-5"]),
        # new: accepted
        (["simulate", "series", "--temperature-K", "1e5"], ["`--temperature-K` = 100000 K"]),
        (["simulate", "series", "--temperature-end-K", "5e4"], ["`--temperature-end-K` = 50000"]),
        (["simulate", "image", "--pixel-size-A", "-0.2"], ["`--pixel-size-A`", "-0.2"]),
        (["simulate", "tilt", "--tilt-range-deg", "100"], ["`--tilt-range-deg`", "100"]),
        (["info", "{d}/good.tif", "--pixel-size-A", "-1"], ["`--pixel-size-A`", "-1"]),
        (["atoms", "fit", "{d}/good.tif", "--pixel-size-A", "1e30"], ["`--pixel-size-A`", "1e+30"]),
        (["atoms", "count", "{d}/cols.csv", "-k", "-3"], ["`-k`", "-3"]),
        # new: accepted
        (["insitu", "{d}/good.tif", "--dose-e-per-A2", "1e30"], ["`--dose-e-per-A2` = 1e+30"]),
        (["insitu", "{d}/good.tif", "--current-pA", "1e9"], ["`--current-pA` = 1e+09 pA"]),
        (["tomo", "reconstruct", "{d}/ts.npz", "--bin", "0"], ["`--bin`", "0"]),
        (["tomo", "align", "{d}/ts.npz", "--tilt-axis", "nan"], ["`--tilt-axis`", "nan"]),
    ],
)
def test_absurd_values(files, tmp_path, capsys, argv, fragments):
    out = {"insitu": ["-o", "{o}/ins"], "info": []}.get(argv[0], ["-o", "{o}/o.npz"])
    _check(capsys, [*argv, *out], files, *fragments, o=tmp_path)
    assert not any(tmp_path.iterdir())


# --------------------------------------------- outputs: existing ones kept, unwritable places
_WRITERS = {
    "convert": ["convert", "{d}/good.tif", "%s"],
    "simulate image": ["simulate", "image", "-o", "%s", "--edge-A", "12", "--no-noise"],
    "simulate tilt": ["simulate", "tilt", "-o", "%s", "--size-px", "16", "--no-noise"],
    "atoms fit": ["atoms", "fit", "{d}/good.tif", "-o", "%s"],
    "atoms count": ["atoms", "count", "{d}/cols.csv", "-o", "%s"],
    "atoms strain": ["atoms", "strain", "{d}/cols.csv", "-o", "%s"],
    "tomo align": ["tomo", "align", "{d}/ts.npz", "-o", "%s"],
    "tomo reconstruct": ["tomo", "reconstruct", "{d}/ts.npz", "-o", "%s"],
    "tomo facets": ["tomo", "facets", "{d}/ts.npz", "-o", "%s"],
    "model3d": ["model3d", "{d}/cols.csv", "-o", "%s"],
}
_SUFFIX = {
    "atoms count": ".csv",
    "atoms strain": ".csv",
    "atoms fit": ".csv",
    "tomo facets": ".csv",
    "model3d": ".xyz",
    "atoms track": ".csv",  # (a table: an .npz output is refused for its suffix first)
}


@pytest.mark.parametrize("command", list(_WRITERS))
def test_existing_output_is_kept(files, capsys, command):
    target = files / f"keep{_SUFFIX.get(command, '.npz')}"
    target.write_bytes(b"earlier result")
    try:
        argv = [a % target if "%s" in a else a for a in _WRITERS[command]]
        _check(capsys, argv, files, str(target), "exists")
        assert target.read_bytes() == b"earlier result"
    finally:
        target.unlink()


@pytest.mark.parametrize(
    "command", [*_WRITERS, "insitu", "demo", "simulate series", "atoms map", "atoms track"]
)
def test_output_under_a_file_is_refused_before_any_work(files, capsys, monkeypatch, command):
    # new for insitu/demo (a NotADirectoryError traceback); the others found it only when
    # writing, after the analysis (tomo align: 21 s)
    import perovstem.cli.tomo as tomo

    def no_work(*a, **k):
        raise AssertionError("the analysis ran before the output place was checked")

    monkeypatch.setattr("perovstem.tomo.align_tilt_series", no_work, raising=False)
    monkeypatch.setattr(tomo, "align_tilt_series", no_work, raising=False)
    under = files / "picture.png" / f"x{_SUFFIX.get(command, '.npz')}"
    extra = {
        "insitu": ["insitu", "{d}/good.tif", "-o", str(under)],
        "demo": ["demo", "--fast", "-o", str(under)],
        "simulate series": ["simulate", "series", "-o", str(under), "-n", "1"],
        "atoms map": ["atoms", "map", "{d}/good.tif", "-o", str(under)],
        "atoms track": ["atoms", "track", "{d}/cols.csv", "{d}/cols.csv", "-o", str(under)],
    }
    argv = extra.get(command) or [a % under if "%s" in a else a for a in _WRITERS[command]]
    _check(capsys, argv, files, "cannot write", "'{d}/picture.png' is not a directory")


def test_unwritable_output_folder_is_refused_before_any_work(files, capsys, monkeypatch):
    # as root every folder is writable: the permission check itself is what is tested
    import os

    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if str(p) == str(files) else real(p, m))
    _check(
        capsys,
        ["tomo", "align", "{d}/ts.npz", "-o", "{d}/a.npz"],
        files,
        "cannot write '{d}/a.npz'",
        "'{d}' is not writable",
        out="a.npz",
    )


# ------------------------------------------------------------------------- the pipeline TOML
@pytest.mark.parametrize(
    ("step", "fragments"),
    [
        # new: accepted (the kinetic Monte Carlo then never ended)
        ('run = "simulate.kmc"\ndose_rate_e_per_A2_s = 1e30', ["`dose_rate_e_per_A2_s`", "1e+30"]),
        # new: accepted element by element
        ('run = "simulate.heating"\ntemperatures_K = [300.0, -5.0]', ["`temperatures_K`", "-5.0"]),
        (
            'run = "simulate.heating"\ntemperatures_K = [300.0, 1e5]',
            ["`temperatures_K`", "100000.0"],
        ),
        ('run = "simulate.kmc"\ntemperature_K = -5.0', ["`temperature_K`", "-5.0"]),
        ('run = "simulate.kmc"\nn_frames = "12"', ["`n_frames`", "'12'"]),
    ],
)
def test_pipeline_toml_absurd_values(tmp_path, capsys, step, fragments):
    cfg = tmp_path / "study.toml"
    cfg.write_text(f'[[step]]\nrun = "simulate.nanocrystal"\n\n[[step]]\n{step}\n')
    text = _check(capsys, ["run", str(cfg), "--check"], tmp_path, "study.toml", *fragments)
    assert "Traceback" not in text


def test_pipeline_output_under_a_file_is_refused_before_any_work(files, tmp_path, capsys):
    cfg = tmp_path / "study.toml"
    cfg.write_text('[[step]]\nrun = "simulate.nanocrystal"\n')
    _check(
        capsys,
        ["run", str(cfg), "-o", "{d}/picture.png/run"],
        files,
        "cannot write --out '{d}/picture.png/run'",
        "is not a directory",
    )
