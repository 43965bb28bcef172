"""Bad configurations are rejected before any work, with the key and the line named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from perovstem import Series
from perovstem.cli.main import main
from perovstem.errors import FileFormatError, ParameterError
from perovstem.pipeline import get_step, load_config, run_pipeline

PLUGIN = '[run]\nname = "t"\nplugins = ["_steps_for_tests"]\n'


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "a.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_valid_config_resolves_wiring_and_defaults(tmp_path):
    cfg = load_config(
        _write(
            tmp_path,
            PLUGIN
            + """
[[step]]
run = "test.make_series"
id = "gen"
n_frames = 5

[[step]]
run = "series.frame_stats"
plot = false
""",
        )
    )
    assert [s.id for s in cfg.steps] == ["gen", "frame_stats"]
    assert cfg.steps[0].params == {"n_frames": 5, "size": 24}
    assert cfg.steps[1].wiring == {"series": "gen.series"}
    assert cfg.name == "t"


@pytest.mark.parametrize(
    ("body", "line", "needle"),
    [
        ('[[step]]\nrun = "series.fram_stats"\n', 6, "unknown step `series.fram_stats`"),
        ('[[step]]\nrun = "test.make_series"\nn_frame = 3\n', 7, "did you mean `n_frames`"),
        (
            '[[step]]\nrun = "test.make_series"\nn_frames = "many"\n',
            7,
            "`n_frames` must be an integer",
        ),
        ('[[step]]\nrun = "test.make_series"\nn_frames = 0\n', 7, "`n_frames` must be >= 1"),
        (
            '[[step]]\nrun = "test.make_series"\nn_frames = 2.5\n',
            7,
            "`n_frames` must be an integer",
        ),
        ('[[step]]\nrun = "series.frame_stats"\n', 5, "needs input `series`"),
        (
            '[[step]]\nrun = "test.make_series"\n[[step]]\nrun = "series.frame_stats"\n'
            'inputs = { series = "nope.series" }\n',
            9,
            "names no earlier step output",
        ),
        (
            '[[step]]\nrun = "test.make_series"\nid = "a"\n[[step]]\nrun = "test.make_series"\n'
            'id = "a"\n',
            10,
            "duplicate step id `a`",
        ),
    ],
)
def test_bad_step_names_key_and_line(tmp_path, body, line, needle):
    p = _write(tmp_path, PLUGIN + "\n" + body)
    with pytest.raises(ParameterError) as exc:
        load_config(p)
    msg = str(exc.value)
    assert needle in msg
    assert f"line {line}" in msg, msg
    assert str(p) in msg


def test_bad_run_keys(tmp_path):
    with pytest.raises(ParameterError, match=r"line 2: \[run\]: `\[run\] seed` must be an integer"):
        load_config(_write(tmp_path, '[run]\nseed = "x"\n[[step]]\nrun = "series.frames"\n'))
    with pytest.raises(ParameterError, match="unknown key `sched`"):
        load_config(_write(tmp_path, '[run]\nsched = "local"\n'))
    with pytest.raises(ParameterError, match="`\\[run\\] scheduler` must be"):
        load_config(_write(tmp_path, '[run]\nscheduler = "cluster"\n'))
    with pytest.raises(ParameterError, match=r"unknown section `\[steps\]`.*\[\[step\]\]"):
        load_config(_write(tmp_path, '[steps]\nrun = "x"\n'))
    with pytest.raises(ParameterError, match="cannot import plugin module `no_such_mod`"):
        load_config(_write(tmp_path, '[run]\nplugins = ["no_such_mod"]\n'))
    with pytest.raises(ParameterError, match="no \\[\\[step\\]\\]"):
        load_config(_write(tmp_path, '[run]\nname = "x"\n'))
    # the name makes the default run folder "<name>-run": "study/2024 batch" made nested
    # folders, "../x" one outside the configuration's folder
    for name in ("study/2024 batch", "../x"):
        with pytest.raises(ParameterError, match="a name without '/'"):
            load_config(_write(tmp_path, f'[run]\nname = "{name}"\n'))


def test_missing_input_file_and_bad_toml(tmp_path):
    p = _write(tmp_path, '[inputs]\nseries = "missing.npz"\n[[step]]\nrun = "series.frames"\n')
    with pytest.raises(
        FileFormatError, match=r"line 2: \[inputs\] series: input file .*missing.npz"
    ):
        load_config(p)
    p = _write(tmp_path, "[run\nname = 1\n")
    with pytest.raises(FileFormatError, match="invalid TOML.*line 1"):
        load_config(p)
    with pytest.raises(FileFormatError, match="does not exist"):
        load_config(tmp_path / "nothere.toml")


def test_unavailable_step_is_an_error_unless_continue(tmp_path, monkeypatch):
    step = get_step("series.frames")
    monkeypatch.setattr(type(step), "missing_requirements", lambda self: ["perovstem.nothing:x"])
    body = '[[step]]\nrun = "series.frames"\ninputs = { series = "s" }\n'
    np.savez(tmp_path / "s.npz", data=np.zeros((2, 4, 4)))
    head = '[inputs]\ns = "s.npz"\n'
    with pytest.raises(ParameterError, match="not available in this version"):
        load_config(_write(tmp_path, head + body))
    cfg = load_config(_write(tmp_path, '[run]\non_error = "continue"\n' + head + body))
    assert len(cfg.steps) == 1


def test_errors_come_before_any_work(tmp_path, capsys):
    """A config error in the last step leaves no run folder behind (nothing was computed)."""
    p = _write(
        tmp_path,
        PLUGIN
        + """
[[step]]
run = "test.make_series"
[[step]]
run = "series.frame_stats"
plot = "yes"
""",
    )
    out = tmp_path / "run"
    assert main(["run", str(p), "--out", str(out), "--quiet"]) == 2
    assert not out.exists()
    assert "[[step]] #2" in capsys.readouterr().err  # markup-like text printed verbatim
    with pytest.raises(ParameterError, match="line 9.*`plot` must be a boolean"):
        run_pipeline(p, out=out, quiet=True)
    assert not out.exists()


def test_cli_list_steps_and_check(tmp_path, capsys):
    assert main(["run", "--list-steps"]) == 0
    listing = capsys.readouterr().out
    assert "series.frame_stats" in listing and "atoms.fit" in listing
    s = Series(np.ones((3, 4, 4)), 0.5)
    from perovstem.io import save_image

    save_image(s, tmp_path / "s.npz")
    p = _write(tmp_path, '[inputs]\nseries = "s.npz"\n[[step]]\nrun = "series.frames"\n')
    assert main(["run", str(p), "--check"]) == 0
    assert "OK (1 steps)" in capsys.readouterr().out
    assert main(["run", str(p), "--scheduler", "bogus"]) == 2
    assert main(["run"]) == 2


def test_step_note_is_kept_and_checked(tmp_path):
    cfg = load_config(
        _write(tmp_path, PLUGIN + '[[step]]\nrun = "test.make_series"\nnote = "hi <b>"\n')
    )
    assert cfg.steps[0].note == "hi <b>" and "note" not in cfg.steps[0].params
    r = run_pipeline(cfg, out=tmp_path / "r", quiet=True, scheduler="serial")
    html = (r.report).read_text()
    assert "Note: hi &lt;b&gt;" in html
    with pytest.raises(ParameterError, match="line 6.*`note` must be a string"):
        load_config(_write(tmp_path, PLUGIN + '[[step]]\nrun = "test.make_series"\nnote = 3\n'))


def test_broken_module_makes_step_unavailable_not_a_crash(tmp_path, monkeypatch):
    from perovstem.pipeline import Step

    (tmp_path / "broken_mod_xyz.py").write_text("raise RuntimeError('half-written module')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    step = Step(name="t.broken", func=lambda ctx: {}, requires=("broken_mod_xyz:f",))
    assert step.missing_requirements() == ["broken_mod_xyz:f"]
    assert not step.available


def test_wrong_step_order_names_the_later_producer(tmp_path):
    """atoms.count before atoms.fit: the error said only 'produced by no earlier step'."""
    import re

    p = tmp_path / "order.toml"
    p.write_text(
        '[run]\nplugins = ["_steps_for_tests"]\n'
        '[[step]]\nrun = "series.frames"\n[[step]]\nrun = "test.make_series"\n'
    )
    with pytest.raises(ParameterError) as exc:
        load_config(p)
    assert re.search(r"step #2 \(test.make_series\) produces it but comes later", str(exc.value))


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ('raise RuntimeError("needs the LAB_DB variable")\n', "RuntimeError"),
        ("def f(:\n", "SyntaxError"),
    ],
)
def test_plugin_that_fails_while_importing_is_a_clear_error(tmp_path, monkeypatch, code, kind):
    """A plugin whose own code raises (not ImportError) escaped as a bare traceback."""
    name = f"plugin_fails_{kind.lower()}"
    (tmp_path / f"{name}.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    p = tmp_path / "a.toml"
    p.write_text(f'[run]\nplugins = ["{name}"]\n[[step]]\nrun = "series.frames"\n')
    with pytest.raises(ParameterError) as exc:
        load_config(p, check_files=False)
    msg = str(exc.value)
    assert f"plugin module `{name}` failed while being imported" in msg and kind in msg
    assert f"{name}.py, line 1" in msg and "a.toml line 2" in msg


def test_length_in_nm_for_angstrom_is_named_in_the_range_error(tmp_path):
    p = tmp_path / "u.toml"
    p.write_text('[[step]]\nrun = "simulate.nanocrystal"\nedge_A = 4.0\n')  # 4 nm meant
    with pytest.raises(ParameterError) as exc:
        load_config(p)
    assert "`edge_A` must be >= 5.0, got 4.0 (edge_A is in Å: 4.0 nm = 40 Å?)" in str(exc.value)
    p.write_text('[[step]]\nrun = "simulate.nanocrystal"\nedge_A = 0.1\n')  # no unit explains it
    with pytest.raises(ParameterError) as exc:
        load_config(p)
    assert str(exc.value).endswith("got 0.1")


NC = '[[step]]\nrun = "simulate.nanocrystal"\nid = "nc"\nview3d = false\n'
KMC = '[[step]]\nrun = "simulate.kmc"\nid = "k"\n'


@pytest.mark.parametrize(
    ("body", "line", "needle"),
    [
        # TOML nan compared False with every bound: accepted
        (
            NC.replace("view3d", "edge_A = nan\nview3d"),
            6,
            "`edge_A` must be a finite number, got nan",
        ),
        # no upper bound: an infinite dose was accepted
        (NC + '[[step]]\nrun = "simulate.haadf"\ndose_e_per_A2 = inf\n', 9, "got inf"),
        # list elements were not checked: strings as a drift, one value for (vx, vy)
        (
            NC + KMC + '[[step]]\nrun = "simulate.insitu_series"\ndrift_A_per_s = ["a", "b"]\n',
            12,
            "`drift_A_per_s` must be an array of finite numbers, got ['a', 'b']",
        ),
        (
            NC + KMC + '[[step]]\nrun = "simulate.insitu_series"\ndrift_A_per_s = [1.0]\n',
            12,
            "`drift_A_per_s` must hold 2 values, got 1",
        ),
        (
            NC + '[[step]]\nrun = "simulate.heating"\ntemperatures_K = [300, nan]\n',
            9,
            "`temperatures_K` must be an array of finite numbers",
        ),
        # "no" (a non-empty string) ran the step
        (NC.replace("view3d", 'enabled = "no"\nview3d'), 6, "`enabled` must be true or false"),
    ],
)
def test_bad_values_inside_the_schema_types_are_refused(tmp_path, body, line, needle):
    with pytest.raises(ParameterError) as info:
        load_config(_write(tmp_path, '[run]\nname = "t"\n' + body))
    msg = str(info.value)
    assert f"a.toml line {line}:" in msg and needle in msg, msg


def test_list_parameter_of_integers_is_read_as_numbers(tmp_path):
    cfg = load_config(
        _write(tmp_path, NC + '[[step]]\nrun = "simulate.heating"\ntemperatures_K = [300, 400]\n')
    )
    assert cfg.steps[1].params["temperatures_K"] == [300.0, 400.0]


@pytest.mark.parametrize(
    ("make", "expect"),
    [
        # (a folder of frame files is a series: tests/pipeline/test_series_settings.py)
        (lambda p: p.mkdir(), "is a directory holding no image files"),
        (lambda p: p.write_bytes(b""), "is empty (0 bytes)"),
    ],
)
def test_an_unusable_input_file_is_refused_by_check(tmp_path, make, expect):
    """A folder without frame files or an empty file in [inputs] passed `perovstem run
    --check` (only existence was checked) and failed when the first step using it ran."""
    make(tmp_path / "frame.dm3")
    cfg = tmp_path / "a.toml"
    cfg.write_text(
        '[run]\nreport = false\n[inputs]\nimage = "frame.dm3"\n[[step]]\nrun = "atoms.fit"\n'
    )
    with pytest.raises(FileFormatError) as info:
        load_config(cfg)
    msg = str(info.value)
    assert msg.startswith(f"{cfg} line 4: [inputs] image: input file "), msg
    assert "frame.dm3" in msg and expect in msg, msg


@pytest.mark.parametrize("value", ["inf", "nan", "-0.5"])
def test_input_pixel_size_must_be_a_finite_positive_number(tmp_path, value):
    # `pixel_size = inf` passed the configuration check (only `> 0` was tested)
    from perovstem import Image
    from perovstem.io import save_image

    save_image(Image(np.ones((8, 8)), 0.5), tmp_path / "i.npz")
    cfg = tmp_path / "a.toml"
    cfg.write_text(
        f'[inputs]\nimage = {{ path = "i.npz", pixel_size = {value} }}\n'
        '[[step]]\nrun = "atoms.fit"\n'
    )
    with pytest.raises(ParameterError, match=r"option `pixel_size` must be a positive number, Å"):
        load_config(cfg)


def test_check_messages_name_the_typo_and_the_table_options(tmp_path):
    """`runn = ...` said only "missing key `run`"; a table input with an option was read
    as an image and refused as one ("read as an Image, a Series or a TiltSeries")."""
    with pytest.raises(ParameterError, match="missing key `run`.*`runn` given: a typo"):
        load_config(_write(tmp_path, '[[step]]\nrunn = "series.frames"\n'))
    (tmp_path / "truth.csv").write_text("x_A,y_A\n1,2\n")
    body = '[inputs]\npositions = { path = "truth.csv", lazy = false }\n[[step]]\nrun = "series.frames"\n'
    with pytest.raises(
        ParameterError, match=r"a table file \(.csv\) .* takes no options, got lazy"
    ):
        load_config(_write(tmp_path, body))


def test_report_of_a_killed_first_run_says_so(tmp_path):
    """A first run killed before provenance.json was written: `perovstem report` said "not a
    run folder" although the folder holds the run's marker."""
    from perovstem.errors import FileFormatError
    from perovstem.report import write_report

    (tmp_path / "perovstem-run.json").write_text('{"name": "r", "format": 1}')
    with pytest.raises(FileFormatError, match="holds a run that never finished"):
        write_report(tmp_path)
    with pytest.raises(FileFormatError, match="is not a run folder"):
        write_report(tmp_path / "nothing")


def test_unused_input_is_said(tmp_path):
    """A misspelt [inputs] name left its file out without a word: an optional input
    (`positons` for atoms.fit's `positions`) was simply not used, a required one was
    reported missing without naming the look-alike."""
    import warnings

    from perovstem.io import save_image

    save_image(Series(np.ones((3, 8, 8)), 0.5), tmp_path / "s.npz")
    save_image(ps_image(), tmp_path / "a.npz")
    (tmp_path / "p.csv").write_text("x_A,y_A\n1,2\n")
    fit = '[[step]]\nrun = "atoms.fit"\ncell = "none"\n'
    body = '[inputs]\nimage = "a.npz"\n{name} = "p.csv"\n' + fit
    with pytest.warns(UserWarning, match=r"\[inputs\] positons: no step uses it"):
        load_config(_write(tmp_path, body.format(name="positons")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config(_write(tmp_path, body.format(name="positions")))
    stats = '[inputs]\nseires = "s.npz"\n[[step]]\nrun = "series.frame_stats"\nplot = false\n'
    with pytest.raises(ParameterError, match="needs input `series`.*`seires`: a typo"):
        load_config(_write(tmp_path, stats))


def test_input_taken_by_an_earlier_output_of_its_name_is_said(tmp_path):
    """An [inputs] image named like an earlier step's output (`image` of simulate.haadf) was
    left out without a word: the fit read the simulated image.  The warning names the step
    and the output it took, and how to wire the file; wired so, no warning."""
    import warnings

    from perovstem.io import save_image

    save_image(ps_image(), tmp_path / "a.npz")
    body = (
        '[inputs]\nimage = "a.npz"\n' + NC + '[[step]]\nrun = "simulate.haadf"\nid = "sim"\n'
        '[[step]]\nrun = "atoms.fit"\nid = "fit"\ncell = "none"\n{wire}'
    )
    with pytest.warns(
        UserWarning,
        match=r"\[inputs\] image: no step uses it: step `fit` "
        r"takes `sim.image`.*inputs = \{ image = \"image\" \}",
    ):
        load_config(_write(tmp_path, body.format(wire="")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = load_config(_write(tmp_path, body.format(wire='inputs = { image = "image" }\n')))
    assert cfg.steps[-1].wiring["image"] == "image"


def ps_image():
    from perovstem import Image

    return Image(np.ones((16, 16), np.float32), 0.5)


def test_tilt_series_in_radians_is_said_by_info_and_the_pipeline(tmp_path, capsys):
    """Angles in radians (±1.22) were said only by the tomo commands: `perovstem info` showed
    them as degrees and a pipeline's tomo steps aligned and reconstructed them silently."""
    from perovstem import TiltSeries
    from perovstem.cli.main import main
    from perovstem.io import save_image
    from perovstem.pipeline import run_pipeline

    ang = np.deg2rad(np.arange(-70.0, 71.0, 10.0))
    data = np.random.default_rng(0).random((ang.size, 16, 16)).astype("f4")
    save_image(TiltSeries(data, ang, 2.0), tmp_path / "rad.npz")
    assert main(["info", str(tmp_path / "rad.npz")]) == 0
    shown = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "-1.222 … 1.222° (15, step 0.175°) — radians? read as degrees" in shown
    cfg = _write(
        tmp_path,
        '[run]\nreport = false\n[inputs]\ntilt = "rad.npz"\n'
        '[[step]]\nrun = "tomo.bin"\nfactor = 2\n',
    )
    with pytest.warns(UserWarning, match=r"\[inputs\] tilt.*radians\? perovstem reads tilt"):
        run_pipeline(cfg, out=tmp_path / "run", quiet=True, scheduler="serial")


def test_configuration_warnings_reach_provenance_and_report(tmp_path):
    """Audit: an unused [inputs] entry was warned about on the console only: the report and
    provenance.json, the run's record, did not say it."""
    from perovstem.io import save_image
    from perovstem.pipeline import run_pipeline

    save_image(Series(np.ones((3, 8, 8)), 0.5), tmp_path / "s.npz")
    cfg = _write(
        tmp_path,
        '[inputs]\nseries = "s.npz"\nunused_extra = "s.npz"\n'
        '[[step]]\nrun = "series.frame_stats"\nplot = false\n',
    )
    with pytest.warns(UserWarning, match="unused_extra: no step uses it"):
        run_pipeline(cfg, out=tmp_path / "run", quiet=True, scheduler="serial")
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert any("unused_extra: no step uses it" in w for w in prov["config_warnings"])
    html = (tmp_path / "run" / "report.html").read_text()
    assert "Configuration: " in html and "unused_extra: no step uses it" in html
