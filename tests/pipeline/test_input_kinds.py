"""A step wired to an artefact of the wrong kind fails before it runs, naming the input.

The configuration wires steps by name, untyped; before the input kinds were declared
(:class:`perovstem.pipeline.registry.Kind`) such a step failed deep inside with
``KeyError: 'scs'`` or ``AttributeError: 'Image' object has no attribute 'n_frames'``,
naming neither the step's input nor what it was wired to.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from perovstem import Image
from perovstem.errors import ParameterError, PerovstemError
from perovstem.io import save_image
from perovstem.pipeline import load_config, run_pipeline


def _inputs(tmp_path):
    truth = pd.DataFrame({"x_A": [1.0, 5.0], "y_A": [1.0, 1.0], "n_atoms": [3, 4]})
    truth.to_csv(tmp_path / "truth.csv", index=False)
    fit = pd.DataFrame({"x_A": [1.0, 5.0], "y_A": [1.0, 1.0], "type": ["Cs"] * 2, "scs": [1.0] * 2})
    fit.to_csv(tmp_path / "fit.csv", index=False)
    data = np.random.default_rng(0).poisson(50.0, size=(16, 16)).astype(np.float32)
    save_image(Image(data, 0.5), tmp_path / "img.npz")


@pytest.mark.parametrize(
    ("step", "wire", "expect", "when"),
    [
        # the simulator's truth table where the column fit is expected (KeyError: 'scs');
        # a table file's header is read when the configuration is validated (it was read
        # only when the step started, after every earlier step had run)
        ("atoms.count", 'columns = "truth"', "without column(s) scs", "config"),
        # the column fit where counts are expected (KeyError: 'n_atoms')
        ("quantify.model3d", 'counts = "fit"', "without column(s) n_atoms", "config"),
        # an image where a table is expected (AttributeError: no attribute 'columns')
        ("atoms.strain", 'columns = "img"', "a Series or a TiltSeries (not a table)", "config"),
        # a table where an image is expected
        ("atoms.map", 'image = "fit"', "must be a perovstem Image", "config"),
        # a table where ase Atoms are expected (AttributeError)
        ("simulate.haadf", 'atoms = "truth"', "must be an ase Atoms model", "config"),
        # an image where a tilt series is expected ("`angles_deg` is required"); an image
        # file may hold a stack, read as a tilt series: known once it is read
        ("tomo.reconstruct", 'tilt = "img"', "must be a perovstem TiltSeries", "run"),
        # an image where a series is expected (AttributeError: no attribute 'n_frames')
        ("insitu.clusters", 'series = "img"', "must be a perovstem Series", "run"),
        # a table where a reconstruction is expected
        ("tomo.segment", 'volume = "fit"', "must be a 3-D numeric array", "config"),
    ],
)
def test_wrong_kind_of_input_is_named_before_the_step_runs(tmp_path, step, wire, expect, when):
    _inputs(tmp_path)
    name = wire.split(" =")[0]
    ref = wire.split('"')[1]
    cfg = tmp_path / "a.toml"
    cfg.write_text(
        '[run]\nreport = false\n[inputs]\ntruth = "truth.csv"\nfit = "fit.csv"\n'
        f'img = "img.npz"\n[[step]]\nrun = "{step}"\nid = "s"\ninputs = {{ {wire} }}\n'
    )
    with pytest.raises(PerovstemError) as info:
        run_pipeline(cfg, out=tmp_path / "run", scheduler="serial", quiet=True)
    msg = str(info.value)
    assert isinstance(info.value, ParameterError), msg
    if when == "run":
        assert msg.startswith(f"step `s` ({step}): input `{name}` is wired to [inputs] {ref}"), msg
    else:  # refused when the configuration is validated: nothing was run or written
        assert msg.startswith(
            f"{cfg} line 10: [[step]] #1 ({step}): input `{name}` is wired to [inputs] {ref} ("
        ), msg
        assert not (tmp_path / "run").exists()
    assert expect in msg, msg


def _miswired_third_step(tmp_path):
    """Two good steps, then a third wired to an output of the wrong kind."""
    cfg = tmp_path / "a.toml"
    cfg.write_text(
        "[run]\nreport = false\n"
        '[[step]]\nrun = "simulate.nanocrystal"\nid = "nc"\nedge_A = 12.0\nview3d = false\n'
        '[[step]]\nrun = "simulate.haadf"\nid = "haadf"\npixel_size_A = 0.5\n'
        '[[step]]\nrun = "atoms.count"\nid = "count"\n'
        'inputs = { columns = "haadf.truth" }\n'
    )
    return cfg


def test_wiring_is_checked_when_the_configuration_is_validated(tmp_path):
    # the simulator's truth table (true scs_A2, no fitted scs) wired as the column fit:
    # found by `--check`, not after the simulation steps have run
    cfg = _miswired_third_step(tmp_path)
    with pytest.raises(ParameterError) as info:
        load_config(cfg)
    msg = str(info.value)
    assert msg.startswith(
        f"{cfg} line 15: [[step]] #3 (atoms.count): input `columns` is wired to `haadf.truth`, "
        "a table with columns [x_A, y_A, type, n_atoms,"
    ), msg
    assert "(output `truth` of step `haadf`, simulate.haadf) (without column(s) scs)" in msg
    assert "`columns` must be a table with columns x_A, y_A, scs" in msg


def test_run_refuses_a_miswired_step_before_the_first_step_runs(tmp_path):
    cfg = _miswired_third_step(tmp_path)
    with pytest.raises(ParameterError, match=r"#3 \(atoms.count\): input `columns`"):
        run_pipeline(cfg, out=tmp_path / "run", scheduler="serial", quiet=True)
    assert not (tmp_path / "run").exists()  # steps 1 and 2 did not run


@pytest.mark.parametrize(
    ("wire", "expect"),
    [
        # ase Atoms where a table is expected
        ('{ columns = "nc.atoms" }', "`nc.atoms`, an ase Atoms model (output `atoms` of step "),
        # an Image where a table is expected
        ('{ columns = "haadf.image" }', "`haadf.image`, an Image (output `image` of step"),
    ],
)
def test_step_output_of_the_wrong_kind_names_the_output(tmp_path, wire, expect):
    cfg = tmp_path / "a.toml"
    cfg.write_text(
        '[run]\nreport = false\non_error = "continue"\n'
        '[[step]]\nrun = "simulate.nanocrystal"\nid = "nc"\nedge_A = 12.0\nview3d = false\n'
        '[[step]]\nrun = "simulate.haadf"\nid = "haadf"\n'
        f'[[step]]\nrun = "atoms.count"\nid = "count"\ninputs = {wire}\n'
    )
    with pytest.raises(ParameterError) as info:  # on_error = "continue" runs nothing either
        run_pipeline(cfg, out=tmp_path / "run", scheduler="serial", quiet=True)
    msg = str(info.value)
    assert expect in msg, msg
    assert "(not a table)" in msg, msg
    assert "a table with columns x_A, y_A, scs (the `columns` output of atoms.fit)" in msg


def test_check_option_reports_the_miswired_step(tmp_path, capsys):
    from perovstem.cli.main import main

    cfg = _miswired_third_step(tmp_path)
    assert main(["run", str(cfg), "--check"]) == 2
    out = capsys.readouterr()
    assert "[[step]] #3 (atoms.count): input `columns` is wired to `haadf.truth`" in out.err
    assert "OK" not in out.out


def test_an_output_of_unknown_kind_is_still_checked_when_the_step_starts(tmp_path):
    # test.make_series declares no output kinds: the wiring passes validation and the
    # step is refused when it starts, naming the input
    cfg = tmp_path / "a.toml"
    cfg.write_text(
        '[run]\nreport = false\non_error = "continue"\nplugins = ["_steps_for_tests"]\n'
        '[[step]]\nrun = "test.make_series"\nid = "mk"\n'
        '[[step]]\nrun = "atoms.count"\nid = "count"\ninputs = { columns = "mk.series" }\n'
    )
    load_config(cfg)
    r = run_pipeline(cfg, out=tmp_path / "run", scheduler="serial", quiet=True)
    assert [s.status for s in r.steps] == ["ran", "failed"]
    assert r.steps[1].message.startswith(
        "ParameterError: input `columns` is wired to `mk.series`, a Series"
    ), r.steps[1].message


def test_declared_output_kinds_match_what_the_wiring_accepts():
    """Every declared output kind is accepted by the inputs that the steps' own docs name as
    its consumers (no false refusal of a correct configuration)."""
    from perovstem.pipeline import list_steps

    steps = {s.name: s for s in list_steps()}
    good = [  # (producer, output, consumer, input): wirings the demo and the docs use
        ("atoms.fit", "columns", "atoms.count", "columns"),
        ("atoms.fit", "columns", "atoms.strain", "columns"),
        ("atoms.fit", "columns", "atoms.series", "positions"),
        ("atoms.count", "counts", "quantify.model3d", "counts"),
        ("atoms.map", "positions", "atoms.fit", "positions"),
        ("simulate.haadf", "image", "atoms.fit", "image"),
        ("simulate.nanocrystal", "atoms", "simulate.haadf", "atoms"),
        ("simulate.insitu_series", "series", "insitu.clusters", "series"),
        ("insitu.register", "series", "atoms.series", "series"),
        ("simulate.tilt_series", "before", "tomo.reconstruct", "tilt"),
        ("tomo.align", "tilt", "tomo.reconstruct", "tilt"),
        ("tomo.reconstruct", "volume", "tomo.facets", "volume"),
        ("tomo.reconstruct", "voxel_size_A", "tomo.segment", "voxel_size_A"),
        ("tomo.facets", "facets", "tomo.facet_change", "before"),
        ("simulate.kmc", "frames", "quantify.kinetics", "frames"),
        ("simulate.heating", "frames", "quantify.arrhenius", "frames"),
    ]
    for prod, out, cons, inp in good:
        declared = steps[prod].output_kinds[out]
        assert steps[cons].input_kinds[inp].mismatch(declared) is None, (prod, out, cons, inp)
    for name, step in steps.items():
        assert set(step.output_kinds) <= set(step.outputs), name


def test_a_step_returning_another_kind_than_declared_fails_naming_the_declaration(tmp_path):
    from perovstem.pipeline.registry import Kind, register_step

    @register_step("test.liar", outputs=("table",), output_kinds={"table": Kind("table")})
    def _liar(ctx):
        return {"table": np.zeros((2, 2, 2))}

    with pytest.raises(ParameterError, match="output_kinds"):
        register_step("test.kinds_typo2", outputs=("a",), output_kinds={"b": Kind("table")})
    cfg = tmp_path / "a.toml"
    cfg.write_text('[run]\nreport = false\non_error = "continue"\n[[step]]\nrun = "test.liar"\n')
    r = run_pipeline(cfg, out=tmp_path / "run", scheduler="serial", quiet=True)
    assert r.steps[0].status == "failed"
    assert "declares output `table` as a table but returned a 3-D float64 array" in (
        r.steps[0].message
    )


def test_kinds_of_a_plugin_step_are_checked_when_registered():
    from perovstem.pipeline.registry import Kind, register_step

    with pytest.raises(ParameterError, match="input_kinds"):
        register_step("test.kinds_typo", inputs=("series",), input_kinds={"serie": Kind("series")})
    with pytest.raises(ParameterError, match="`kind` must be one of"):
        Kind("dataframe")


def test_fit_columns_kind_lists_the_columns_fit_columns_writes():
    """The pipeline declares `atoms.fit`'s table without importing the fitting code (a
    light registry import); the two lists must not drift apart."""
    from perovstem.atoms.fit import FIT_COLUMNS
    from perovstem.pipeline.steps.atoms import FIT_COLUMNS_KIND

    assert FIT_COLUMNS_KIND.columns == tuple(FIT_COLUMNS)


# --- the KMC trajectory, the in-situ simulator's truth and quantify.mechanism's inputs were
# undeclared: a configuration wiring them wrongly passed `run --check`


def _kmc_config(tmp_path, tail):
    cfg = tmp_path / "k.toml"
    cfg.write_text(
        "[run]\nreport = false\n"
        '[[step]]\nrun = "simulate.nanocrystal"\nid = "nc"\nedge_A = 12.0\nview3d = false\n'
        '[[step]]\nrun = "simulate.kmc"\nid = "kmc"\nn_frames = 3\n' + tail
    )
    return cfg


@pytest.mark.parametrize(
    ("tail", "name", "origin", "expect"),
    [
        # the trajectory object where a per-frame table is expected
        (
            '[[step]]\nrun = "quantify.mechanism"\nid = "m"\n'
            'inputs = { frames_a = "kmc.trajectory" }\n',
            "frames_a",
            "`kmc.trajectory`, a KMC trajectory",
            "(not a table)",
        ),
        # the final atoms where the trajectory is expected
        (
            '[[step]]\nrun = "simulate.insitu_series"\nid = "s"\n'
            'inputs = { trajectory = "kmc.final" }\n',
            "trajectory",
            "`kmc.final`, an ase Atoms model",
            "must be a KMC trajectory",
        ),
        # the simulator's truth (a mapping of tables) where the cluster tracks are expected
        (
            '[[step]]\nrun = "simulate.insitu_series"\nid = "s"\n'
            '[[step]]\nrun = "quantify.mechanism"\nid = "m"\n'
            'inputs = { frames_a = "kmc.frames", tracks_a = "s.truth" }\n',
            "tracks_a",
            "`s.truth`, a mapping of tables",
            "with columns frame, x_A, y_A, track_id",
        ),
    ],
)
def test_kmc_and_mechanism_wiring_is_checked_at_validation(tmp_path, tail, name, origin, expect):
    cfg = _kmc_config(tmp_path, tail)
    with pytest.raises(ParameterError) as info:
        load_config(cfg)
    msg = str(info.value)
    assert f"input `{name}` is wired to {origin}" in msg and expect in msg, msg


def test_kmc_to_insitu_series_wiring_runs_and_its_outputs_are_of_the_declared_kinds(tmp_path):
    from perovstem.pipeline import list_steps

    cfg = _kmc_config(tmp_path, '[[step]]\nrun = "simulate.insitu_series"\nid = "s"\n')
    load_config(cfg)  # the demo's wiring is accepted
    steps = {s.name: s for s in list_steps()}
    kmc_out = steps["simulate.kmc"].output_kinds["trajectory"]
    assert steps["simulate.insitu_series"].input_kinds["trajectory"].mismatch(kmc_out) is None
    for k in "abcd":  # the wirings of the demo's mechanism and mobility steps
        frames_in = steps["quantify.mechanism"].input_kinds[f"frames_{k}"]
        for prod, out in (("simulate.kmc", "frames"), ("insitu.clusters", "counts")):
            assert frames_in.mismatch(steps[prod].output_kinds[out]) is None
        detections = steps["insitu.clusters"].output_kinds["detections"]
        assert steps["quantify.mechanism"].input_kinds[f"tracks_{k}"].mismatch(detections) is None
    # the values the steps produce are held to the declarations when they run
    from perovstem.pipeline import run_pipeline

    run_pipeline(cfg, out=tmp_path / "run", scheduler="serial", quiet=True)


def _mechanism_files(tmp_path, *, frames_cols, tracks_cols):
    n = 4
    pd.DataFrame({c: np.arange(n, dtype=float) for c in frames_cols}).to_csv(
        tmp_path / "frames.csv", index=False
    )
    pd.DataFrame({c: np.arange(n, dtype=float) for c in tracks_cols}).to_parquet(
        tmp_path / "tracks.parquet"
    )
    cfg = tmp_path / "m.toml"
    cfg.write_text(
        '[run]\nreport = false\n[inputs]\nframes = "frames.csv"\ntracks = "tracks.parquet"\n'
        '[[step]]\nrun = "simulate.nanocrystal"\nid = "nc"\nedge_A = 12.0\nview3d = false\n'
        '[[step]]\nrun = "quantify.mechanism"\nid = "m"\n'
        'inputs = { frames_a = "frames", tracks_a = "tracks" }\n'
    )
    return cfg


@pytest.mark.parametrize(
    ("frames_cols", "tracks_cols", "name", "file", "missing"),
    [
        # the x column (a parameter: cumulative dose by default) absent from the frames
        (
            ("frame", "time_s", "n_clusters"),
            ("frame", "x_A", "y_A", "track_id"),
            "frames_a",
            "frames.csv",
            "cumulative_dose_e_per_A2",
        ),
        # tracks without positions / track ids (a frames table given as tracks)
        (
            ("frame", "cumulative_dose_e_per_A2", "n_clusters"),
            ("frame", "x_A", "n_atoms"),
            "tracks_a",
            "tracks.parquet",
            "y_A, track_id",
        ),
    ],
)
def test_table_file_missing_columns_is_refused_before_step_1(
    tmp_path, frames_cols, tracks_cols, name, file, missing
):
    cfg = _mechanism_files(tmp_path, frames_cols=frames_cols, tracks_cols=tracks_cols)
    with pytest.raises(ParameterError) as info:
        run_pipeline(cfg, out=tmp_path / "run", scheduler="serial", quiet=True)
    msg = str(info.value)
    assert f"input `{name}` is wired to [inputs] {name.split('_')[0]}" in msg, msg
    assert str(tmp_path / file) in msg and f"without column(s) {missing}" in msg, msg
    assert not (tmp_path / "run").exists()  # refused before step 1 (nc) ran


def test_table_file_header_check_follows_the_x_parameter(tmp_path):
    cfg = _mechanism_files(
        tmp_path,
        frames_cols=("frame", "time_s", "n_clusters"),
        tracks_cols=("frame", "x_A", "y_A", "track_id"),
    )
    cfg.write_text(cfg.read_text() + 'x = "frame"\n')
    load_config(cfg)  # the frames have the column `x` names


def test_tables_and_trajectory_kinds():
    from perovstem.pipeline.registry import Kind

    truth = Kind("tables", ("drift", "clusters"))
    df = pd.DataFrame({"frame": [0]})
    assert truth.problem({"drift": df, "clusters": df, "events": df}) is None
    assert truth.problem({"drift": df}) == "without table(s) clusters"
    assert truth.problem(df) == "not a mapping of tables"
    assert Kind("trajectory").problem(df) == "of another kind"
