"""Bad option values and existing outputs: one error line naming the flag, exit 2, no output.

Each case here was accepted (or crashed with a traceback, or overwrote a file) before the
QA pass that added it.
"""

from __future__ import annotations

import pytest

from perovstem.cli.main import main


def _tilt(tmp_path, *extra):
    return ["simulate", "tilt", "-o", str(tmp_path / "ts.npz"), "--no-noise", *extra]


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--shift-sigma-px", "-1"),
        ("--shift-sigma-px", "nan"),
        ("--tilt-axis-deg", "nan"),
        ("--axis-offset-px", "inf"),
    ],
)
def test_simulate_tilt_refuses_bad_geometry(tmp_path, capsys, flag, value):
    assert main(_tilt(tmp_path, flag, value)) == 2
    err = capsys.readouterr().err
    assert flag in err and value in err
    assert not (tmp_path / "ts.npz").exists() and not (tmp_path / "ts_truth.json").exists()


def test_simulate_tilt_min_tilt_message_names_the_flags(tmp_path, capsys):
    assert main(_tilt(tmp_path, "--min-tilt-deg", "80")) == 2
    err = capsys.readouterr().err
    assert "--min-tilt-deg" in err and "--tilt-range-deg" in err and "70" in err
    assert "max_tilt_deg" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["simulate", "image", "-o", "{d}/i.tif"],
        ["simulate", "tilt", "-o", "{d}/t.npz"],
        ["model3d", "{d}/none.parquet"],
    ],
)
def test_negative_seed_is_a_usage_error_not_a_traceback(tmp_path, capsys, argv):
    argv = [a.format(d=tmp_path) for a in argv]
    assert main([*argv, "--seed", "-1"]) == 2
    assert "--seed" in capsys.readouterr().err


def test_simulate_image_thickness_needs_a_platelet(tmp_path, capsys):
    out = tmp_path / "i.tif"
    argv = ["simulate", "image", "-o", str(out), "--edge-A", "12", "--thickness-A", "-1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--thickness-A" in err and "platelet" in err
    assert not out.exists()


def test_simulate_image_does_not_overwrite_an_existing_truth_table(tmp_path, capsys):
    out, truth = tmp_path / "i.tif", tmp_path / "i_truth.parquet"
    truth.write_bytes(b"keep me")
    argv = ["simulate", "image", "-o", str(out), "--edge-A", "12", "--no-noise"]
    assert main(argv) == 2
    assert "i_truth.parquet" in capsys.readouterr().err
    assert truth.read_bytes() == b"keep me" and not out.exists()


def test_simulate_series_does_not_overwrite_existing_truth_tables(tmp_path, capsys):
    out, truth = tmp_path / "s.npz", tmp_path / "s_events.csv"
    truth.write_text("keep me")
    argv = ["simulate", "series", "-o", str(out), "--table-format", "csv"]
    assert main([*argv, "--frames", "1", "--edge-A", "12", "--no-noise"]) == 2
    assert "s_events.csv" in capsys.readouterr().err
    assert truth.read_text() == "keep me" and not out.exists()


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--cd-fraction", "2"], "--cd-fraction"),
        (["--cd-fraction", "0.3"], "--cd-fraction"),
        (["--f-bulk", "0.5"], "--f-bulk"),
        (["--termination", "PbBr2"], "--termination"),
        (["--hmm-model", "free"], "--hmm-model"),
        (["--columns", "--cd-fraction", "nan"], "--cd-fraction"),
    ],
)
def test_insitu_refuses_options_it_would_ignore(tmp_path, capsys, extra, flag):
    import numpy as np

    import perovstem as ps

    series = ps.io.save_image(
        ps.Series(np.ones((2, 16, 16), np.float32), 0.5, time_s=[0, 1]), tmp_path / "s.npz"
    )
    out = tmp_path / "out"
    assert main(["insitu", str(series), "-o", str(out), "--no-plots", *extra]) == 2
    err = capsys.readouterr().err
    assert flag in err and extra[-1] in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--cell", "cspbbr3", "--separation-A", "4"], "--separation-A"),
        (["--cell", "cspbbr3", "--n-types", "3"], "--n-types"),
        (["--positions", "{d}/p.csv", "--cell", "cspbbr3"], "--cell"),
        (["--positions", "{d}/p.csv", "--separation-A", "4"], "--separation-A"),
    ],
)
def test_atoms_fit_refuses_search_options_it_would_ignore(tmp_path, capsys, extra, flag):
    import numpy as np

    import perovstem as ps

    rng = np.random.default_rng(0)
    img = ps.io.save_image(ps.Image(rng.random((48, 48)), 0.3), tmp_path / "i.npz")
    (tmp_path / "p.csv").write_text("x_A,y_A,type\n3.0,3.0,Pb\n")
    out = tmp_path / "c.parquet"
    argv = ["atoms", "fit", str(img), "-o", str(out), *(e.format(d=tmp_path) for e in extra)]
    assert main(argv) == 2
    assert f"`{flag}`" in capsys.readouterr().err
    assert not out.exists()


@pytest.fixture(scope="module")
def tilt_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("tilt")
    argv = ["simulate", "tilt", "-o", str(d / "ts.npz"), "--size-px", "32", "--edge-A", "40"]
    assert main([*argv, "--step-deg", "10", "--no-noise", "--seed", "1"]) == 0
    return d / "ts.npz"


@pytest.mark.parametrize("method", ["sirt", "fbp"])
def test_tomo_reconstruct_refuses_tv_weight_without_tv(tilt_file, tmp_path, capsys, method):
    out = tmp_path / "v.npz"
    argv = ["tomo", "reconstruct", str(tilt_file), "-o", str(out), "-m", method]
    assert main([*argv, "--tv-weight", "-1"]) == 2
    err = capsys.readouterr().err
    assert "`--tv-weight` -1" in err and method in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--tolerance-deg", "nan"], "--tolerance-deg"),
        (["--sigma-px", "-1"], "--sigma-px"),
        (["--calibrate", "-1"], "--calibrate"),
        (["--tilt-range-deg", "60"], "--tilt-range-deg"),  # was ignored for a tilt series
        (["--method", "fourier"], "--method"),
    ],
)
def test_tomo_facets_checks_options_before_reconstructing(
    tilt_file, tmp_path, capsys, monkeypatch, extra, flag
):
    import perovstem.tomo

    def no_work(*a, **k):
        raise AssertionError("reconstructed before the options were checked")

    monkeypatch.setattr(perovstem.tomo, "reconstruct", no_work)
    out = tmp_path / "f.csv"
    assert main(["tomo", "facets", str(tilt_file), "-o", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert f"`{flag}`" in err and extra[-1] in err
    assert not out.exists()


def test_tomo_facets_of_a_volume_without_volume_option_says_so(tilt_file, tmp_path, capsys):
    # a volume given as SOURCE was refused as "not a tilt series" only
    vol = tmp_path / "v.mrc"
    assert main(["tomo", "reconstruct", str(tilt_file), "-o", str(vol), "-m", "fbp"]) == 0
    capsys.readouterr()
    out = tmp_path / "f.csv"
    assert main(["tomo", "facets", str(vol), "-o", str(out)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "is not a tilt series" in err and "give --volume" in err
    assert not out.exists()
    assert main(["tomo", "facets", str(vol), "-o", str(out), "--volume"]) == 0


def test_tomo_sequence_checks_sigma_before_reconstructing(tilt_file, tmp_path, capsys, monkeypatch):
    import perovstem.tomo

    def no_work(*a, **k):
        raise AssertionError("reconstructed before the options were checked")

    monkeypatch.setattr(perovstem.tomo, "reconstruct_sequence", no_work)
    out = tmp_path / "q.csv"
    argv = ["tomo", "sequence", str(tilt_file), str(tilt_file), "-o", str(out), "--no-plot"]
    assert main([*argv, "--sigma-px", "nan"]) == 2
    assert "`--sigma-px`" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "flag", "canonical"),
    [
        (["atoms", "count", "t.csv", "--criteria", "k.csv"], "--criteria", "--criteria-out"),
        (["model3d", "t.csv", "--sites=s.csv"], "--sites", "--sites-out"),
        (["model3d", "t.csv", "--summary", "j.json"], "--summary", "--summary-out"),
        (["atoms", "fit", "i.tif", "--overlay-out", "o.png"], "--overlay-out", "--overlay"),
        (["atoms", "map", "i.tif", "--models-out", "m.csv"], "--models-out", "--models"),
        (["atoms", "strain", "c.csv", "--plot-out", "p.png"], "--plot-out", "--plot"),
        (["tomo", "facets", "t.npz", "--mesh-out", "m.ply"], "--mesh-out", "--mesh"),
        (["tomo", "align", "t.npz", "--shifts-out", "s.csv"], "--shifts-out", "--shifts"),
        (["simulate", "tilt", "--truth-out", "t.json"], "--truth-out", "--truth"),
    ],
)
def test_side_outputs_take_either_spelling(argv, flag, canonical):
    # side outputs were --criteria-out/--sites-out/--summary-out on some commands and
    # --overlay/--models/--plot/--mesh/--shifts/--truth on others
    from perovstem.cli.main import canonical_argv

    new, typed = canonical_argv(argv)
    assert canonical in {t.split("=", 1)[0] for t in new} and typed == {canonical: flag}


def test_side_output_alias_runs(tmp_path):
    out = tmp_path / "t.npz"
    # a fixed seed: without one, 2 inclusions sometimes do not fit a 30 Å crystal (seed 3)
    argv = ["simulate", "tilt", "-o", str(out), "--no-noise", "--size-px", "40", "--seed", "1"]
    assert main([*argv, "--edge-A", "30", "--truth-out", str(tmp_path / "truth.json")]) == 0
    assert (tmp_path / "truth.json").is_file()


def test_simulate_series_temperature_ramp_names_the_value_given(tmp_path, capsys):
    """`--temperature-end-K inf` said "got nan" (np.linspace(300, inf) is NaN inside)."""
    out = tmp_path / "s.npz"
    argv = ["simulate", "series", "-o", str(out), "--frames", "2", "--edge-A", "12"]
    assert main([*argv, "--no-noise", "--temperature-end-K", "inf"]) == 2
    err = capsys.readouterr().err
    assert "`--temperature-end-K`" in err and "got inf" in err and "nan" not in err
    assert not out.exists()


def test_atoms_fit_cell_on_an_image_smaller_than_the_cell(tmp_path, capsys):
    """The message named `separation_A`, an option the user never gave (the cell sets it)."""
    import numpy as np

    import perovstem as ps

    rng = np.random.default_rng(0)
    img = ps.io.save_image(ps.Image(rng.poisson(50.0, (8, 8)) * 1.0, 0.3), tmp_path / "i.npz")
    out = tmp_path / "c.parquet"
    assert main(["atoms", "fit", str(img), "-o", str(out), "--cell", "cspbbr3"]) == 2
    err = capsys.readouterr().err
    assert "separation_A" not in err
    assert "8×8 px" in err and "`--cell`" in err and "5.87" in err
    assert not out.exists()


def test_tomo_align_without_projection_matching_prints_no_nan_residual(tilt_file, tmp_path, capsys):
    """`--matching-iter 0` (documented: skip projection matching) printed "residual nan"."""
    out = tmp_path / "a.npz"
    argv = ["tomo", "align", str(tilt_file), "-o", str(out), "--matching-iter", "0"]
    assert main([*argv, "--tilt-axis", "none"]) == 0
    printed = capsys.readouterr().out
    assert "nan" not in printed and "no projection matching" in printed
    assert out.exists()


def test_simulate_tilt_small_crystal_warning_is_one_line_naming_flags(tmp_path, capsys):
    """The radius warning printed as a raw ``UserWarning`` with a source line, naming the
    Python parameter `inclusion_radius_A` that the command line did not have."""
    assert main(_tilt(tmp_path, "--edge-A", "20", "--size-px", "32", "--seed", "0")) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("WARNING: 2 inclusions"), err
    assert "`--inclusion-radius-A`" in err and "`--edge-A`" in err
    assert lines[0].endswith("(UserWarning)") and "UserWarning:" not in err
    assert "inclusion_radius_A`" not in err
    # the option it names exists and takes the radius (no warning then)
    (tmp_path / "ts.npz").unlink()
    (tmp_path / "ts_truth.json").unlink()
    assert (
        main(_tilt(tmp_path, "--edge-A", "20", "--size-px", "32", "--inclusion-radius-A", "3")) == 0
    )
    assert "WARNING" not in capsys.readouterr().err


def test_insitu_out_that_is_a_file_is_refused_before_the_analysis(tmp_path, capsys):
    """`-o` naming an existing file ran the whole analysis, then died with a raw
    ``FileExistsError`` traceback (exit 1) when creating the folder."""
    import numpy as np

    from perovstem import Series
    from perovstem.io import save_image

    rng = np.random.default_rng(0)
    save_image(
        Series(rng.poisson(30.0, (3, 32, 32)).astype(float), 0.5, dose_e_per_A2=10.0),
        tmp_path / "s.npz",
    )
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    assert main(["insitu", str(tmp_path / "s.npz"), "-o", str(target), "--no-register"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: `--out`") and "notes.txt" in err and "is a file" in err
    assert target.read_text() == "keep me"


def test_ctrl_c_exits_130_and_says_interrupted(monkeypatch, tmp_path, capsys):
    """Typer turns Ctrl-C into Exit(130) and, outside standalone mode, returns the code:
    `main` ignored it and an interrupted `perovstem run` exited 0 without a word (a batch
    script's `&& next` went on)."""
    import numpy as np

    import perovstem
    import perovstem.io.read
    from perovstem.cli.main import main
    from perovstem.io import save_image

    p = tmp_path / "a.tif"
    save_image(perovstem.Image(np.ones((16, 16), np.float32), 0.5), p)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    for mod in (perovstem, perovstem.io, perovstem.io.read):
        monkeypatch.setattr(mod, "load", interrupted)
    assert main(["info", str(p)]) == 130
    assert "error: interrupted" in capsys.readouterr().err
