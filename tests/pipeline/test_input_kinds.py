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
from perovstem.pipeline import run_pipeline


def _inputs(tmp_path):
    truth = pd.DataFrame({"x_A": [1.0, 5.0], "y_A": [1.0, 1.0], "n_atoms": [3, 4]})
    truth.to_csv(tmp_path / "truth.csv", index=False)
    fit = pd.DataFrame({"x_A": [1.0, 5.0], "y_A": [1.0, 1.0], "type": ["Cs"] * 2, "scs": [1.0] * 2})
    fit.to_csv(tmp_path / "fit.csv", index=False)
    data = np.random.default_rng(0).poisson(50.0, size=(16, 16)).astype(np.float32)
    save_image(Image(data, 0.5), tmp_path / "img.npz")


@pytest.mark.parametrize(
    ("step", "wire", "expect"),
    [
        # the simulator's truth table where the column fit is expected (KeyError: 'scs')
        ("atoms.count", 'columns = "truth"', "without column(s) scs"),
        # the column fit where counts are expected (KeyError: 'n_atoms')
        ("quantify.model3d", 'counts = "fit"', "without column(s) n_atoms"),
        # an image where a table is expected (AttributeError: no attribute 'columns')
        ("atoms.strain", 'columns = "img"', "an Image (16×16) (not a table)"),
        # a table where an image is expected
        ("atoms.map", 'image = "fit"', "must be a perovstem Image"),
        # a table where ase Atoms are expected (AttributeError)
        ("simulate.haadf", 'atoms = "truth"', "must be an ase Atoms model"),
        # an image where a tilt series is expected ("`angles_deg` is required")
        ("tomo.reconstruct", 'tilt = "img"', "must be a perovstem TiltSeries"),
        # an image where a series is expected (AttributeError: no attribute 'n_frames')
        ("insitu.clusters", 'series = "img"', "must be a perovstem Series"),
        # a table where a reconstruction is expected
        ("tomo.segment", 'volume = "fit"', "must be a 3-D numeric array"),
    ],
)
def test_wrong_kind_of_input_is_named_before_the_step_runs(tmp_path, step, wire, expect):
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
    assert msg.startswith(f"step `s` ({step}): input `{name}` is wired to [inputs] {ref}"), msg
    assert expect in msg, msg


def test_step_output_of_the_wrong_kind_names_the_output(tmp_path):
    cfg = tmp_path / "a.toml"
    cfg.write_text(
        '[run]\nreport = false\non_error = "continue"\n'
        '[[step]]\nrun = "simulate.nanocrystal"\nid = "nc"\nedge_A = 12.0\nview3d = false\n'
        '[[step]]\nrun = "atoms.count"\nid = "count"\ninputs = { columns = "nc.atoms" }\n'
    )
    r = run_pipeline(cfg, out=tmp_path / "run", scheduler="serial", quiet=True)
    assert [s.status for s in r.steps] == ["ran", "failed"]
    msg = r.steps[1].message
    assert msg.startswith("ParameterError: input `columns` is wired to `nc.atoms`, an ase Atoms")
    assert "a table with columns x_A, y_A, scs (the `columns` output of atoms.fit)" in msg


def test_kinds_of_a_plugin_step_are_checked_when_registered():
    from perovstem.pipeline.registry import Kind, register_step

    with pytest.raises(ParameterError, match="input_kinds"):
        register_step("test.kinds_typo", inputs=("series",), input_kinds={"serie": Kind("series")})
    with pytest.raises(ParameterError, match="`kind` must be one of"):
        Kind("dataframe")
