"""`perovstem info` and `perovstem convert`."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import perovstem as ps
from perovstem.cli.main import main


def test_info_tilt_series(tomo_data, capsys):
    assert main(["info", str(tomo_data / "etspy_needle" / "HAADF.mrc")]) == 0
    out = capsys.readouterr().out
    assert "TiltSeries" in out and "33.6 Å" in out and "-76 … 76°" in out


def test_info_series_shows_dose_and_conditions(tmp_path, capsys):
    s = ps.Series(
        np.ones((3, 8, 8), np.float32),
        0.5,
        time_s=[0, 1, 2],
        dose_e_per_A2=100.0,
        temperature_K=[300, 350, 400],
        gas="O2",
    )
    p = ps.io.save_image(s, tmp_path / "s.npz")
    assert main(["info", str(p)]) == 0
    out = capsys.readouterr().out
    assert "300 e⁻/Å²" in out and "300 … 400 K" in out and "O2" in out


def test_convert_keeps_calibration_and_refuses_to_overwrite(tmp_path, tomo_data, capsys):
    src = tomo_data / "etspy_needle" / "HAADF.mrc"
    dst = tmp_path / "needle.zarr"
    assert main(["convert", str(src), str(dst)]) == 0
    assert main(["convert", str(src), str(dst)]) == 2
    assert "already exists" in capsys.readouterr().err
    back = ps.load(dst)
    np.testing.assert_allclose(back.angles_deg, np.arange(-76, 77, 2))
    assert back.pixel_size_A == pytest.approx(33.6, rel=1e-6)
    assert main(["convert", str(src), str(src)]) == 2


def test_cli_help_runs_as_a_program():
    r = subprocess.run(
        [sys.executable, "-m", "perovstem.cli.main", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0
    for cmd in ("info", "convert", "demo"):
        assert cmd in r.stdout


def test_import_is_light():
    code = (
        "import sys, perovstem; heavy = [m for m in ('dask', 'matplotlib', 'numba', 'rsciio', "
        "'pandas', 'scipy') if m in sys.modules]; print(heavy)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["atoms", "nosuchcommand"], "No such command"),
        (["model3d", "x.npz"], "Missing"),
        (["insitu", "x.npz", "--max-lag", "three"], "Invalid value for '--max-lag'"),
    ],
)
def test_usage_errors_exit_2_without_traceback(argv, fragment, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


@pytest.mark.parametrize("flag", ["--pixel-size-A", "--pixel-size"])
def test_pixel_size_flag_and_its_old_spelling(tmp_path, capsys, flag):
    p = tmp_path / "raw.npz"
    np.savez(p, frame=np.ones((8, 8), np.float32))  # no calibration in the file
    assert main(["info", str(p)]) == 2
    said = capsys.readouterr()
    assert "--pixel-size-A" in said.err  # the error names the documented flag
    # what the file holds is still shown (info refused to show anything without a calibration)
    out = " ".join(said.out.split())
    assert "8 × 8" in out and "float32" in out and "none usable in the file" in out
    assert "field of view" not in out
    assert main(["info", str(p), flag, "0.42"]) == 0
    assert "0.42 Å" in capsys.readouterr().out
    dst = tmp_path / "out.npz"
    assert main(["convert", str(p), str(dst), flag, "0.42"]) == 0
    assert ps.load(dst).pixel_size_A == pytest.approx(0.42)


def test_tomo_commands_take_a_pixel_size(tmp_path):
    ts = ps.TiltSeries(np.ones((3, 8, 8), np.float32), [-30, 0, 30], 1.0)
    p = ps.io.save_image(ts, tmp_path / "t.mrc")
    out = tmp_path / "v.npz"
    args = ["tomo", "reconstruct", str(p), "-o", str(out), "--method", "fbp"]
    assert main([*args, "--pixel-size-A", "2.5"]) == 0
    assert ps.io.read_volume(out)[1] == pytest.approx(2.5)


def test_errors_name_the_flag_the_user_gave(tmp_path, capsys):
    # library `pixel_size` (load) fed by insitu's --pixel-size-A
    p = ps.io.save_image(ps.Series(np.ones((2, 8, 8), np.float32), 0.5), tmp_path / "x.npz")
    assert main(["insitu", str(p), "--pixel-size-A", "-1"]) == 2
    err = capsys.readouterr().err
    assert "`--pixel-size-A` must be" in err and "-1" in err and "`pixel_size`" not in err
    # same name: simulate series --edge-A → nanocrystal(edge_A)
    argv = ["simulate", "series", "-o", str(tmp_path / "s.npz"), "--edge-A=-3"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "`--edge-A` must be finite and > 0, got -3.0" in err


def test_flag_wording_leaves_names_the_user_did_not_give():
    from perovstem.cli.main import flag_wording

    msg = "`pixel_size_A` must be finite and > 0, got 0.0"
    assert flag_wording(msg, ["simulate", "series", "-o", "s.npz"]) == msg  # from a default
    assert flag_wording(msg, ["simulate", "series", "--pixel-size-A", "0"]).startswith(
        "`--pixel-size-A` must"
    )
    assert flag_wording("`n_iter` bad", ["tomo", "reconstruct", "t.npz", "--n-iter", "0"]) == (
        "`--n-iter` bad"
    )


def test_derived_output_names_keep_dots_in_the_stem(tmp_path):
    # "nc0.1.tif" and "nc0.3.tif" both named their truth "nc0_truth.parquet" (the name was
    # cut at its first dot), so the second simulation was refused or overwrote the first
    from perovstem.cli._common import data_stem

    for x in ("0.1", "0.3"):
        img = tmp_path / f"nc{x}.tif"
        assert main(["simulate", "image", "-o", str(img), "--edge-A", "20", "--seed", "1"]) == 0
        assert (tmp_path / f"nc{x}_truth.parquet").exists()
    assert data_stem("a.ome.tif") == "a" and data_stem("run.v2.zarr") == "run.v2"
    assert data_stem("noext") == "noext" and data_stem(".hidden") == ".hidden"


def test_info_shows_a_holder_log_and_a_table(tmp_path, capsys):
    # was "unsupported file type '.log' ... its content is text, not a .log file"
    import pandas as pd

    lines = [
        "01/03/'24 11:58\tDigiheater 3.1",
        "R0=100.0\ta=0.0039\tb=-5.8e-7\tc=0.0",
        "delta_t=0.5",
        "sample\ttime\tTset[C]\tTmeas[C]\tRheat[ohm]\tVheat[V]\tIheat[mA]\tPheat [mW]\tc",
    ]
    lines += [f"{i}\t12:00:{0.5 * i:06.3f}\t50\t{50 + i:.3f}\t1\t1\t1\t1\t0" for i in range(6)]
    (tmp_path / "heating.log").write_text("\n".join(lines) + "\n")
    assert main(["info", str(tmp_path / "heating.log")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "holder log (rsciio.dens)" in out and "6, 0 … 2.5 s" in out
    assert "2024-03-01T12:00:00 (holder PC's clock)" in out  # to align it with a series
    assert "temperature_K │ 323.15 … 328.15" in out
    pd.DataFrame({"x_A": [1.0, 2.0], "n_atoms": [3, 4]}).to_parquet(tmp_path / "t.parquet")
    assert main(["info", str(tmp_path / "t.parquet")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "table" in out and "rows │ 2" in out and "x_A, n_atoms" in out


def test_info_shows_the_detector_gain_or_that_it_is_not_recorded(tmp_path, capsys):
    """`info` showed neither gain nor offset, though --normalize and every Pb⁰ count use
    them (assumed 1 and 0 when absent)."""
    import numpy as np

    import perovstem as ps
    from perovstem.cli.main import main
    from perovstem.io import save_image

    with_gain = tmp_path / "g.npz"
    save_image(ps.Image(np.ones((8, 8)), 0.5, metadata={"gain": 4.0, "offset": 100.0}), with_gain)
    bare = tmp_path / "b.npz"
    save_image(ps.Image(np.ones((8, 8)), 0.5), bare)
    assert main(["info", str(with_gain)]) == 0
    assert "gain 4 counts/e⁻, offset 100 counts" in capsys.readouterr().out
    assert main(["info", str(bare)]) == 0
    assert "not recorded (assumed 1, offset 0)" in capsys.readouterr().out
