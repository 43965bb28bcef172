"""The Python examples of README.md and docs/*.md run as written.

File names of the examples stand for the reader's data; they are replaced by small simulated
files (each replaced name must still be in the example, so a renamed example fails here
instead of silently testing nothing), and the sizes of the slow examples are scaled down the
same way. The README's "Quantify an image" example has its own test (tests/test_readme_api.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import perovstem as ps

REPO = Path(__file__).resolve().parents[2]


def _python_blocks(doc: str) -> list[str]:
    text = (REPO / doc).read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, re.S)


def _block(doc: str, first_line: str) -> str:
    """The python block of ``doc`` whose first line starts with ``first_line``."""
    blocks = [b for b in _python_blocks(doc) if b.lstrip().startswith(first_line)]
    assert len(blocks) == 1, f"{doc}: no single python block starting {first_line!r}"
    return blocks[0]


def _substitute(code: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in code, f"the example no longer contains {old!r}"
        code = code.replace(old, new)
    return code


def _run(code: str, where: str, ns: dict | None = None) -> dict:
    ns = {} if ns is None else ns
    exec(compile(code, where, "exec"), ns)
    return ns


@pytest.fixture(scope="module")
def small_image(tmp_path_factory):
    """A simulated 20 Å CsPbBr3 cube (calibrated tif) and its truth."""
    from perovstem import simulate

    img, truth = simulate.haadf_image(simulate.nanocrystal(20.0, rng=0), dose_e_per_A2=5e4, rng=1)
    path = ps.io.save_image(img, tmp_path_factory.mktemp("img") / "frame.tif")
    return path, truth


def test_readme_first_look(tmp_path, monkeypatch, small_image, capsys):
    ts = ps.TiltSeries(np.ones((3, 16, 16), np.float32), [-30.0, 0.0, 30.0], 2.0)
    ps.io.save_image(ts, tmp_path / "ts.mrc")
    s = ps.Series(np.ones((3, 16, 16), np.float32), 0.5, time_s=[0.0, 1.0, 2.0])
    s = s.replace(dose_e_per_A2=np.full(3, 100.0))
    ps.io.save_image(s, tmp_path / "s.zarr")
    (tmp_path / "insitu_frames").mkdir()  # one file per frame
    for k in range(3):
        ps.io.save_image(s.frame(k), tmp_path / "insitu_frames" / f"frame_{k}.tif")
    for k in range(8):  # a Gatan In-Situ dataset, 2 frames per second
        sec = tmp_path / "Insitu_001" / "Hour_00" / "Minute_00" / f"Second_{k // 2:02d}"
        sec.mkdir(parents=True, exist_ok=True)
        frame = ps.Image(np.full((16, 16), k, np.float32), 0.5)
        ps.io.save_image(frame, sec / f"Hour_00_Minute_00_Second_{k // 2:02d}_Frame_{k % 2}.tif")
    monkeypatch.chdir(tmp_path)
    code = _substitute(
        _block("README.md", "import perovstem as ps"),
        {
            '"my_haadf.dm4"': repr(str(small_image[0])),
            '"tilt_series.mrc"': '"ts.mrc"',
            '"insitu.emd"': '"s.zarr"',
        },
    )
    ns = _run(code, "README.md: A first look")
    assert ns["img"].pixel_size_A == pytest.approx(0.25)
    assert ns["frames"].data.shape == (3, 16, 16) and ns["frames"].pixel_size_A == 0.5
    np.testing.assert_array_equal(np.asarray(ns["gms"].data[:, 0, 0]), np.arange(8))
    np.testing.assert_allclose(ns["gms"].time_s, 0.5 * np.arange(8))
    out = capsys.readouterr().out
    assert "cumulative_dose_e_per_A2" in out or "dose_e_per_A2" in out
    back = ps.load(tmp_path / "tilt_series.zarr")
    assert isinstance(back, ps.TiltSeries)
    np.testing.assert_allclose(back.angles_deg, [-30.0, 0.0, 30.0])
    # "writes ... never overwrite an input file"
    with pytest.raises(ps.PerovstemError, match="input"):
        ps.io.save_image(ns["ts"], tmp_path / "ts.mrc")


def test_atoms_workflow_and_voronoi_examples(small_image):
    path, truth = small_image
    code = _substitute(
        _block("docs/atoms.md", "from perovstem.io import load"),
        {'"frame.dm4"': repr(str(path))},
    )
    ns = _run(code, "docs/atoms.md: Workflow")
    df, truth_xy = ns["df"], truth[["x_A", "y_A"]].to_numpy()
    d = np.hypot(*(df[["x_A", "y_A"]].to_numpy()[:, None] - truth_xy[None]).transpose(2, 0, 1))
    assert len(df) == len(truth) and np.all(d.min(axis=1) < 0.2)  # every column found and fit
    assert ns["strain"].shape[0] == len(df)
    ns = _run(_block("docs/atoms.md", "from perovstem.atoms import count_library"), "atoms.md", ns)
    counts = ns["counts"]
    assert {"type", "scs", "n_atoms"} <= set(counts.columns)
    pb = counts[counts["type"] == "PbBr"]
    true_pb = truth.loc[truth["type"] == "PbBr", "n_atoms"]
    assert abs(np.median(pb["n_atoms"]) - np.median(true_pb)) <= 1


def test_kmc_example_scaled_down():
    code = _substitute(
        _block("docs/kmc.md", "from perovstem.simulate import"),
        {"nanocrystal(80.0)": "nanocrystal(30.0)", "n_frames=100": "n_frames=4"},
    )
    ns = _run(code, "docs/kmc.md")
    series, truth = ns["series"], ns["truth"]
    assert series.n_frames == 4 and series.pixel_size_A == pytest.approx(0.5)
    assert {"drift", "clusters", "frames", "events"} <= set(truth)
    np.testing.assert_allclose(series.dose_e_per_A2, 2e3)  # 2e3 e⁻/Å²/s × 1 s


@pytest.mark.slow
def test_insitu_python_example(tmp_path, monkeypatch):
    from perovstem.simulate import degradation_kmc, insitu_series, nanocrystal

    traj = degradation_kmc(
        nanocrystal(30.0, rng=1), n_frames=4, frame_time_s=1.0, dose_rate_e_per_A2_s=2e3, rng=1
    )
    series, _ = insitu_series(traj, pixel_size_A=0.5, rng=2)
    ps.io.save_image(series, tmp_path / "s.zarr")
    (tmp_path / "T.csv").write_text("time_s,temperature_K\n0,300\n10,300\n")
    monkeypatch.chdir(tmp_path)
    code = _substitute(
        _block("docs/insitu.md", "import perovstem as ps"),
        {'"series.emd"': '"s.zarr"', '"log.csv"': '"T.csv"'},
    )
    ns = _run(code, "docs/insitu.md: Python")
    res = ns["res"]
    assert len(res.frames) == 4 and np.allclose(res.frames["temperature_K"], 300.0)
    assert "scan_rms_line_offset_px" in res.frames  # scan_correction=True
    assert np.isfinite(res.br_loss.D_Br_e_per_A2) and res.br_loss.D_Br_e_per_A2 > 0


def test_pipeline_reference_example_validates():
    """docs/pipeline.md's annotated file is valid against the step registry (its plugin
    module is the README's example and not installed here)."""
    import tomllib

    from perovstem.pipeline.config import parse_config

    text = (REPO / "docs" / "pipeline.md").read_text(encoding="utf-8")
    block = re.findall(r"```toml\n(.*?)```", text, re.S)[0]
    data = tomllib.loads(block)
    assert data["run"].pop("plugins") == ["mylab_steps"]
    cfg = parse_config(data, source="pipeline.md", text=block, check_files=False)
    assert [s.step.name for s in cfg.steps] == ["insitu.register"]
    assert cfg.steps[0].params["max_lag"] == 3 and cfg.steps[0].wiring == {"series": "series"}
    assert {"series", "image", "tilt", "haadf"} <= set(cfg.inputs)
