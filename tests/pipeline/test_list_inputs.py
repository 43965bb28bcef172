"""List inputs (Step.list_inputs): ``inputs = { items = ["a.series", "b.series"] }``."""

from __future__ import annotations

import pandas as pd
import pytest

from perovstem.errors import ParameterError
from perovstem.pipeline import load_config, run_pipeline

HEAD = """[run]
name = "lists"
plugins = ["_steps_for_tests"]
[[step]]
run = "test.make_series"
id = "a"
n_frames = 3
size = 4
[[step]]
run = "test.make_series"
id = "b"
n_frames = 5
size = 4
"""


def _cfg(tmp_path, body):
    p = tmp_path / "a.toml"
    p.write_text(HEAD + body, encoding="utf-8")
    return p


def test_list_input_gets_the_values_in_order_and_is_cached(tmp_path):
    body = '[[step]]\nrun = "test.list_sizes"\nid = "s"\ninputs = {{ items = {} }}\n'
    cfg = _cfg(tmp_path, body.format('["b.series", "a", "b.series"]'))
    assert load_config(cfg).step("s").wiring == {"items": ["b.series", "a.series", "b.series"]}
    run = tmp_path / "run"
    r = run_pipeline(cfg, out=run, quiet=True, scheduler="serial", report=False)
    assert {s.id: s.status for s in r.steps}["s"] == "ran"
    sizes = pd.read_parquet(run / "tables" / "s.sizes.parquet")
    assert sizes.n_frames.tolist() == [5, 3, 5]
    r = run_pipeline(cfg, out=run, quiet=True, scheduler="serial", report=False)
    assert {s.id: s.status for s in r.steps}["s"] == "cached"
    # another order is another input: the step runs again
    cfg = _cfg(tmp_path, body.format('["a.series", "b.series"]'))
    r = run_pipeline(cfg, out=run, quiet=True, scheduler="serial", report=False)
    assert {s.id: s.status for s in r.steps}["s"] == "ran"
    assert pd.read_parquet(run / "tables" / "s.sizes.parquet").n_frames.tolist() == [3, 5]


def test_list_input_wired_by_name_is_a_list_of_one(tmp_path):
    cfg = load_config(
        _cfg(tmp_path, '[[step]]\nrun = "test.list_sizes"\ninputs = { items = "a" }\n')
    )
    assert cfg.steps[-1].wiring == {"items": ["a.series"]}


@pytest.mark.parametrize(
    "body,needle",
    [
        ('run = "test.list_sizes"\ninputs = { items = ["a.series", "c.series"] }', "'c.series'"),
        ('run = "test.list_sizes"\ninputs = { items = [] }', "`items` is an empty list"),
        ('run = "test.list_sizes"\ninputs = { items = ["a.series", 3] }', "table of artefact"),
        (
            'run = "test.noisy_sum"\ninputs = { series = ["a.series", "b.series"] }',
            "`series` takes one artefact",
        ),
    ],
)
def test_bad_list_wiring_names_the_input(tmp_path, body, needle):
    with pytest.raises(ParameterError, match="line 1[6-9]") as exc:
        load_config(_cfg(tmp_path, "[[step]]\n" + body + "\n"))
    assert needle in str(exc.value)
