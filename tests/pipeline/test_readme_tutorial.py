"""The README tutorial's analysis files and plugin example stay valid."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest

from perovstem.pipeline import parse_config, run_pipeline
from perovstem.pipeline.config import to_toml
from perovstem.pipeline.demo import demo_config

REPO = Path(__file__).resolve().parents[2]


def _tutorial() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert "## Tutorial" in text
    return text[text.index("## Tutorial") :]


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", _tutorial(), flags=re.S)


def test_tutorial_analysis_file_is_valid(shared_data):
    """The needle example validates against the registry with the real file present."""
    text = next(b for b in _blocks("toml") if "[[step]]" in b)
    cfg = parse_config(
        tomllib.loads(text), base_dir=REPO, source="README", text=text, check_files=True
    )
    assert [s.step.name for s in cfg.steps] == ["tomo.align", "tomo.reconstruct", "tomo.segment"]
    assert cfg.steps[1].wiring == {"tilt": "align.tilt"}
    assert (
        cfg.inputs["tilt"].path.resolve() == (shared_data / "tomo/etspy_needle/HAADF.mrc").resolve()
    )


def test_tutorial_plugin_step_runs(tmp_path, monkeypatch):
    code = next(b for b in _blocks("python") if "register_step" in b)
    (tmp_path / "mylab_steps.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("mylab_steps", None)
    text = """
[run]
plugins = ["mylab_steps", "_steps_for_tests"]
[[step]]
run = "test.make_series"
n_frames = 4
[[step]]
run = "mylab.mean_counts"
percentile = 50.0
"""
    cfg = parse_config(tomllib.loads(text), source="plugin.toml", text=text)
    r = run_pipeline(cfg, out=tmp_path / "run", quiet=True, scheduler="serial")
    assert r.status("mean_counts") == "ran"
    from perovstem.io import read_table

    t = read_table(tmp_path / "run" / "tables" / "mean_counts.table.parquet")
    assert list(t["frame"]) == [0, 1, 2, 3] and (t["p"] > 0).all()
    assert "percentiles" in (tmp_path / "run" / "report.html").read_text()


@pytest.mark.parametrize("fast", [True, False])
def test_demo_config_round_trips_through_toml(fast):
    data = demo_config(fast=fast)
    assert tomllib.loads(to_toml(data)) == data
    cfg = parse_config(tomllib.loads(to_toml(data)), source="demo.toml")
    assert cfg.on_error == "continue" and len(cfg.steps) == len(data["step"])


def test_docs_list_every_builtin_step():
    from perovstem.pipeline import list_steps

    text = (REPO / "docs" / "pipeline.md").read_text(encoding="utf-8")
    for step in list_steps():
        if step.func.__module__.startswith("perovstem.pipeline.steps"):
            assert f"### `{step.name}`" in text, step.name
            for key in step.params:
                assert f"`{key}`" in text, (step.name, key)
