"""CLI: perovstem simulate tilt → tomo align → tomo reconstruct → tomo facets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from perovstem.cli.main import main


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    d = tmp_path_factory.mktemp("tomo_cli")
    ts = d / "ts.npz"
    rc = main(
        [
            "simulate",
            "tilt",
            "--out",
            str(ts),
            "--size",
            "40",
            "--pixel-size-A",
            "2.5",
            "--edge-A",
            "60",
            "--step-deg",
            "4",
            "--shift-sigma-px",
            "1.0",
            "--seed",
            "3",
        ]
    )
    assert rc == 0
    return d, ts


def test_simulate_tilt_writes_truth(simulated):
    d, ts = simulated
    truth = json.loads((d / "ts_truth.json").read_text())
    assert len(truth["shifts_px"]) == 36
    assert truth["volume_A3"] > 0


def test_align_reconstruct_facets_chain(simulated):
    from perovstem.io import load, read_table, read_volume

    d, ts = simulated
    al = d / "aligned.npz"
    assert (
        main(
            ["tomo", "align", str(ts), "--out", str(al), "--tilt-axis", "0", "--matching-iter", "1"]
        )
        == 0
    )
    shifts = read_table(d / "aligned_shifts.csv")
    assert list(shifts.columns) == ["angle_deg", "dy_px", "dx_px"]
    assert load(al).tilt_axis_deg == 0.0
    vol = d / "vol.mrc"
    assert main(["tomo", "reconstruct", str(al), "--out", str(vol), "--n-iter", "30"]) == 0
    v, voxel = read_volume(vol)
    assert v.shape == (40, 40, 40) and voxel == pytest.approx(2.5)
    truth = json.loads((d / "ts_truth.json").read_text())
    from perovstem.tomo import multi_otsu_thresholds

    level = multi_otsu_thresholds(v, n_classes=3)[0]
    assert np.count_nonzero(v > level) * voxel**3 == pytest.approx(truth["volume_A3"], rel=0.2)
    out = d / "facets.csv"
    mesh = d / "mesh.ply"
    assert (
        main(
            [
                "tomo",
                "facets",
                str(vol),
                "--volume",
                "--tilt-range-deg",
                "70",
                "--out",
                str(out),
                "--mesh",
                str(mesh),
            ]
        )
        == 0
    )
    ff = read_table(out)
    assert ff.fraction.sum() == pytest.approx(1.0)
    assert mesh.stat().st_size > 0


def test_cli_bad_input(simulated, tmp_path):
    d, ts = simulated
    assert (
        main(
            ["tomo", "reconstruct", str(ts), "--out", str(tmp_path / "v.mrc"), "--method", "magic"]
        )
        == 2
    )
    assert (
        main(
            ["tomo", "align", str(ts), "--out", str(tmp_path / "a.npz"), "--tilt-axis", "sideways"]
        )
        == 2
    )
    assert main(["simulate", "tilt", "--out", str(tmp_path / "x.npz"), "--step-deg", "0"]) == 2
    # a negative number of refinement rounds is refused before any work
    a = ["tomo", "align", str(ts), "--out", str(tmp_path / "b.npz"), "--axis-refine", "-1"]
    assert main(a) == 2


def test_cli_bad_bin_names_the_flag(simulated, tmp_path, capsys):
    _, ts = simulated
    out = tmp_path / "v.mrc"
    assert main(["tomo", "reconstruct", str(ts), "--out", str(out), "--bin", "1000"]) == 2
    assert "`--bin` 1000" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("suffix", [".vti", ".tif", ".zarr"])
def test_reconstruct_exports(simulated, tmp_path, suffix):
    from perovstem.io import read_volume

    d, ts = simulated
    out = tmp_path / f"v{suffix}"
    assert (
        main(["tomo", "reconstruct", str(ts), "--out", str(out), "--method", "fbp", "--bin", "2"])
        == 0
    )
    v, voxel = read_volume(out)
    assert v.shape == (20, 20, 20) and voxel == pytest.approx(5.0)


def test_facets_from_tilt_series_with_calibration(simulated, tmp_path):
    from perovstem.io import read_table

    d, ts = simulated
    al = tmp_path / "al.npz"
    assert (
        main(
            ["tomo", "align", str(ts), "--out", str(al), "--tilt-axis", "0", "--matching-iter", "0"]
        )
        == 0
    )
    out = tmp_path / "f.parquet"
    assert (
        main(["tomo", "facets", str(al), "--out", str(out), "--calibrate", "2", "--seed", "1"]) == 0
    )
    ff = read_table(out)
    assert {"fraction_corrected", "fraction_err", "missing_wedge"} <= set(ff.columns)
    assert np.all((ff.fraction_corrected >= 0) & (ff.fraction_corrected <= 1))


def test_calibration_on_less_noisy_phantoms_is_said(tmp_path, capsys):
    # phantoms at 20 counts/Å calibrated a 0.05 counts/Å series: "other" 54 ± 0.8 % after
    # the correction (truth 0 %), said nowhere; the printed line showed the raw fractions
    from perovstem.io import read_table
    from perovstem.tomo import volume_noise

    noise = {}
    for counts in ("20", "0.05"):
        ts = tmp_path / f"t{counts}.npz"
        argv = ["simulate", "tilt", "--out", str(ts), "--size-px", "40", "--pixel-size-A", "2.5"]
        assert main([*argv, "--edge-A", "60", "--counts-per-A", counts, "--seed", "3"]) == 0
        out = tmp_path / f"f{counts}.parquet"
        capsys.readouterr()
        assert main(["tomo", "facets", str(ts), "-o", str(out), "--calibrate", "2"]) == 0
        said = " ".join(capsys.readouterr().out.split())
        assert said.startswith("calibrated (2 phantoms) 100: ") and " ± " in said
        assert ("noisier than the calibration phantoms" in said) == (counts == "0.05"), said
        a = read_table(out).attrs
        noise[counts] = a["volume_noise"]
        assert a["calibration_volume_noise"] > 0
    assert noise["0.05"] > 2 * noise["20"]
    assert np.isnan(volume_noise(np.zeros((8, 8, 8))))


def test_uncalibrated_noisy_volume_is_meshed_smoother_and_said(tmp_path, capsys):
    # a 0.05 counts/Å series was meshed at σ = 1 like a clean one (polyhedron off by up to
    # 0.38, normals 'other' ~70 %) and nothing said the fractions were rough
    from perovstem.io import read_table

    said = {}
    for counts in ("20", "0.05"):
        ts = tmp_path / f"t{counts}.npz"
        argv = ["simulate", "tilt", "--out", str(ts), "--size-px", "40", "--pixel-size-A", "2.5"]
        assert main([*argv, "--edge-A", "60", "--counts-per-A", counts, "--seed", "5"]) == 0
        for extra in ([], ["--sigma-px", "1"]):
            out = tmp_path / f"f{counts}{len(extra)}.parquet"
            capsys.readouterr()
            argv = ["tomo", "facets", str(ts), "-o", str(out), "--facet-method", "polyhedron"]
            assert main([*argv, *extra]) == 0
            said[counts, bool(extra)] = " ".join(capsys.readouterr().out.split())
            a = read_table(out).attrs
            assert a["sigma_px_from_noise"] is (not extra)
            assert (a["sigma_px"] == 1.0) is (bool(extra) or counts == "20"), a
    assert "σ = 1.00 voxels (from the volume's relative noise" in said["20", False]
    assert "WARNING" not in said["20", False]
    assert "σ = 1.00 voxels" in said["20", True] and "(from" not in said["20", True]
    for given in (False, True):
        assert "WARNING: a noisy volume (relative noise" in said["0.05", given]
        assert "fractions were off by up to 0.25 with the polyhedron method" in said["0.05", given]
    assert "σ = 1.00 voxels" not in said["0.05", False]


def test_existing_outputs_are_kept_without_overwrite(simulated, tmp_path, capsys):
    # align/reconstruct/facets/simulate tilt silently replaced existing files (a facet
    # table once overwrote a column table); now they refuse before computing anything
    d, ts = simulated
    keep = tmp_path / "keep.npz"
    keep.write_bytes(b"precious")
    table = tmp_path / "keep.csv"
    table.write_text("precious\n")
    cmds = [
        ["tomo", "align", str(ts), "--out", str(keep), "--matching-iter", "0"],
        ["tomo", "reconstruct", str(ts), "--out", str(keep), "--method", "fbp"],
        ["tomo", "facets", str(ts), "--out", str(table), "--method", "fbp"],
        ["simulate", "tilt", "--out", str(keep), "--size", "16", "--step-deg", "20"],
    ]
    for cmd in cmds:
        capsys.readouterr()
        assert main(cmd) == 2, cmd
        err = capsys.readouterr().err
        assert "exists" in err and "--overwrite" in err and "Traceback" not in err
    assert keep.read_bytes() == b"precious" and table.read_text() == "precious\n"
    out = tmp_path / "v.npz"
    assert main(["tomo", "reconstruct", str(ts), "--out", str(out), "-m", "fbp", "--bin", "4"]) == 0
    assert main(["tomo", "reconstruct", str(ts), "--out", str(out), "-m", "fbp", "--bin", "4"]) == 2
    assert (
        main(
            [
                "tomo",
                "reconstruct",
                str(ts),
                "-o",
                str(out),
                "-m",
                "fbp",
                "--bin",
                "4",
                "--overwrite",
            ]
        )
        == 0
    )


def test_facets_absurd_tilt_range_is_an_error(simulated, tmp_path, capsys):
    # 1e30 made np.arange allocate an impossible array (traceback)
    from perovstem.io import save_volume

    vol = save_volume(np.ones((8, 8, 8)), tmp_path / "v.npz", voxel_size_A=2.0)
    for bad in ("1e30", "nan", "0"):
        cmd = ["tomo", "facets", str(vol), "--volume", "--tilt-range-deg", bad]
        assert main([*cmd, "--out", str(tmp_path / "f.csv"), "--calibrate", "2"]) == 2
        assert "--tilt-range-deg" in capsys.readouterr().err


def test_reconstruct_n_iter_with_a_direct_method_is_an_error(simulated, tmp_path, capsys):
    # --n-iter was silently dropped for fbp/wbp
    d, ts = simulated
    cmd = ["tomo", "reconstruct", str(ts), "-o", str(tmp_path / "v.npz"), "-m", "fbp"]
    assert main([*cmd, "--n-iter", "5"]) == 2
    assert "--n-iter does not apply to --method fbp" in capsys.readouterr().err


def test_facets_polyhedron_method(simulated, tmp_path, capsys):
    """`--facet-method polyhedron` is closer to the truth than the mesh normals on the
    simulated NC; with `--calibrate` it is refused (the calibration is for the normals)."""
    from perovstem.io import read_table

    d, ts = simulated
    truth = json.loads((d / "ts_truth.json").read_text())
    t = np.array(truth["facets"]["fraction"])
    err = {}
    for m in ("normals", "polyhedron"):
        out = tmp_path / f"f_{m}.csv"
        assert main(["tomo", "facets", str(ts), "--out", str(out), "--facet-method", m]) == 0
        err[m] = np.abs(read_table(out).fraction.to_numpy() - t).max()
    assert err["polyhedron"] < err["normals"]
    bad = ["tomo", "facets", str(ts), "--out", str(tmp_path / "x.csv")]
    assert main([*bad, "--facet-method", "polyhedron", "--calibrate", "2"]) == 2
    assert main([*bad, "--facet-method", "wulff"]) == 2
    assert "facet-method" in capsys.readouterr().err


def test_align_reports_the_tilt_axis_error(simulated, tmp_path, capsys):
    # `tomo align` printed the tilt axis without an uncertainty; now the standard error of
    # the re-projection axis is printed and stored in the shift table and the aligned series
    from perovstem.io import load, read_table

    d, ts = simulated
    out = tmp_path / "a.npz"
    capsys.readouterr()
    assert main(["tomo", "align", str(ts), "--out", str(out), "--matching-iter", "0"]) == 0
    printed = capsys.readouterr().out
    err = read_table(tmp_path / "a_shifts.csv").attrs["tilt_axis_err_deg"]
    assert 0.0 < err < 5.0
    assert f"± {err:.2f}°" in printed
    assert load(out).metadata["alignment"]["tilt_axis_err_deg"] == err


def test_series_with_its_axis_off_x_names_tomo_align(tmp_path, capsys):
    # a file whose metadata put the tilt axis off x (ETSpy's aligned needle: -2.79°) was
    # refused with "run perovstem.tomo.apply_alignment first", a Python function
    from perovstem.io import save_image
    from perovstem.simulate.tilt import nanocrystal_phantom, tilt_series

    ph = nanocrystal_phantom(40.0, n_inclusions=0, rng=0)
    ts, _ = tilt_series(
        ph,
        np.arange(-60.0, 61.0, 6.0),
        shape=(32, 32),
        pixel_size_A=2.5,
        tilt_axis_deg=4.0,
        rng=1,
    )
    ts = ts.replace(tilt_axis_deg=4.0)  # as a file that records its axis
    files = [save_image(ts, tmp_path / f"t{k}.npz") for k in range(2)]
    for argv in (
        ["tomo", "reconstruct", str(files[0]), "-o", str(tmp_path / "v.mrc")],
        ["tomo", "facets", str(files[0]), "-o", str(tmp_path / "f.parquet")],
        ["tomo", "sequence", *map(str, files), "-o", str(tmp_path / "s.parquet")],
    ):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = " ".join(capsys.readouterr().err.split())
        assert "t0.npz" in err and "tilt axis is at 4°" in err, err
        assert "`perovstem tomo align`" in err and "--tilt-axis 4" in err
    assert not any((tmp_path / n).exists() for n in ("v.mrc", "f.parquet", "s.parquet"))
    al = tmp_path / "al.npz"
    argv = ["tomo", "align", str(files[0]), "-o", str(al), "--tilt-axis", "4"]
    assert main([*argv, "--matching-iter", "0"]) == 0
    assert main(["tomo", "reconstruct", str(al), "-o", str(tmp_path / "v.mrc")]) == 0


def test_reconstructing_a_series_without_an_alignment_is_said(simulated, tmp_path, capsys):
    """A raw (drifted) series went through reconstruct without a word (the audit's drift
    of 3 px: surface 2.5x the truth); it is now said, and not for the aligned series."""
    _, ts = simulated
    vol = tmp_path / "raw.mrc"
    assert main(["tomo", "reconstruct", str(ts), "-o", str(vol), "--n-iter", "5"]) == 0
    assert "records no alignment" in capsys.readouterr().err
    al = tmp_path / "al.npz"
    argv = ["tomo", "align", str(ts), "-o", str(al), "--tilt-axis", "0", "--matching-iter", "0"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["tomo", "reconstruct", str(al), "-o", str(tmp_path / "al.mrc"), "--n-iter",
                 "5"]) == 0  # fmt: skip
    assert "records no alignment" not in capsys.readouterr().err


def test_align_refuses_too_few_directions_and_radians_are_said(tmp_path, capsys):
    """A one-frame series was "aligned" (axis 0.14°, exit 0); angles in radians (±1.22)
    were aligned and reconstructed as degrees without a word."""
    from perovstem import TiltSeries
    from perovstem.io import save_image

    rng = np.random.default_rng(0)
    one = tmp_path / "one.npz"
    save_image(TiltSeries(rng.random((1, 32, 32), dtype=np.float32), [0.0], 2.0), one)
    assert main(["tomo", "align", str(one), "-o", str(tmp_path / "a.npz")]) == 2
    assert "1 distinct projection direction" in capsys.readouterr().err
    rad = tmp_path / "rad.npz"
    ang = np.deg2rad(np.arange(-70.0, 71.0, 10.0))
    save_image(TiltSeries(rng.random((ang.size, 32, 32), dtype=np.float32), ang, 2.0), rad)
    argv = ["tomo", "align", str(rad), "-o", str(tmp_path / "b.npz"), "--matching-iter", "0"]
    assert main([*argv, "--tilt-axis", "0"]) == 0
    assert "radians? perovstem reads tilt angles in degrees" in capsys.readouterr().err


def test_facets_of_a_crystal_too_small_for_its_noise_say_so(tmp_path, capsys):
    """A crystal 7 voxels across has no interior 3 voxels from its surface: its noise is not
    measurable, and the line said "from the volume's relative noise nan"."""
    from perovstem.io import save_volume

    v = np.zeros((32, 32, 32), np.float32)
    v[12:19, 12:19, 12:19] = 1.0
    vol = tmp_path / "small.mrc"
    save_volume(v, vol, voxel_size_A=2.0)
    out = tmp_path / "f.csv"
    assert main(["tomo", "facets", str(vol), "--volume", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "noise could not be measured" in said and "nan" not in said


def test_uncalibrated_normals_fractions_carry_their_bias_note(tmp_path, capsys):
    """The normals method's bias was in the help and the docs only; the run that prints
    the fractions says it (not with the polyhedron method, which needs no calibration)."""
    from perovstem.io import save_volume

    v = np.zeros((40, 40, 40), np.float32)
    v[10:30, 10:30, 10:30] = 1.0
    vol = tmp_path / "cube.mrc"
    save_volume(v, vol, voxel_size_A=2.0)
    assert main(["tomo", "facets", str(vol), "--volume", "--out", str(tmp_path / "n.csv")]) == 0
    assert "note: uncalibrated normals fractions" in capsys.readouterr().out
    poly = ["--facet-method", "polyhedron", "--out", str(tmp_path / "p.csv")]
    assert main(["tomo", "facets", str(vol), "--volume", *poly]) == 0
    assert "uncalibrated normals" not in capsys.readouterr().out


def test_facets_say_when_the_object_is_cut_by_the_volume_box(tmp_path, capsys):
    """Audit: a crystal filling z 0-39 of a 40-voxel reconstruction gave {100} 60 % for 69 %
    (the box closes the cut surface) without a word."""
    from perovstem.io import read_table, save_volume

    vol = np.zeros((48, 48, 48), np.float32)
    vol[12:36, 12:36, 12:36] = 1.0
    vol += np.random.default_rng(0).normal(0, 0.02, vol.shape).astype(np.float32)
    for name, v in (("whole", vol), ("cut", vol[18:30])):  # the cut one: z through the box
        save_volume(v, tmp_path / f"{name}.npz", voxel_size_A=2.0)
        out = tmp_path / f"{name}.csv"
        argv = ["tomo", "facets", str(tmp_path / f"{name}.npz"), "--volume", "-o", str(out)]
        assert main([*argv, "--facet-method", "polyhedron"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        cut = read_table(out).attrs.get("surface_on_box_faces")
        if name == "cut":
            assert "cut by the volume's box" in text and "on the z faces" in text, text
            assert cut["z"] > 0.2 and "x" not in cut and "y" not in cut
        else:
            assert "cut by the volume's box" not in text and cut is None
