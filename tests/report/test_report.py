"""The HTML report: self-contained, escaped, sections and figures; opened in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest

from perovstem.cli.main import main
from perovstem.errors import FileFormatError, OutputExistsError
from perovstem.report import SECTIONS, render_report, write_report
from perovstem.report.plot3d import atoms_figure, mesh_figure, volume_figure

EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def _png() -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _provenance(with_3d: bool = True) -> tuple[dict, dict]:
    items = [
        {
            "kind": "figure",
            "name": "f",
            "step": "a",
            "section": "counting",
            "title": "Fig " + EVIL,
            "caption": EVIL,
            "path": "plots/a.f.png",
        },
        {
            "kind": "metric",
            "name": "m",
            "step": "a",
            "section": "mechanism",
            "title": "D_Br",
            "caption": "first order",
            "value": 1234.6,
            "err": 56.7,
            "unit": "e⁻/Å²",
        },
        {
            "kind": "table",
            "name": "t",
            "step": "a",
            "section": "kinetics",
            "title": "T",
            "caption": "",
            "columns": ["model", "aicc"],
            "rows": [[EVIL, "1.0"]],
            "n_rows": 30,
        },
        {
            "kind": "text",
            "name": "n",
            "step": "a",
            "section": "facets",
            "title": "",
            "text": "metadata: " + EVIL,
        },
    ]
    assets = {"plots/a.f.png": _png()}
    if with_3d:
        fig = atoms_figure(np.random.default_rng(0).normal(size=(20, 3)), ["Pb"] * 10 + ["Br"] * 10)
        items.append(
            {
                "kind": "plot3d",
                "name": "v",
                "step": "a",
                "section": "facets",
                "title": "3D",
                "caption": "",
                "path": "plots/a.v.plotly.json",
            }
        )
        assets["plots/a.v.plotly.json"] = fig.to_json().encode()
    prov = {
        "run": "r" + EVIL,
        "title": "T",
        "seed": 3,
        "scheduler": "serial",
        "wall_s": 1.0,
        "started_utc": "s",
        "finished_utc": "f",
        "config_sha256": "0" * 64,
        "machine": {"platform": EVIL, "cpu_count": 2},
        "versions": {"perovstem": "0.1.0", "numpy": "2"},
        "inputs": {
            "img": {"path": "/data/" + EVIL + ".dm4", "sha256": "ab" * 32, "size_bytes": 10}
        },
        "steps": [
            {
                "id": "a",
                "step": "x.y",
                "status": "ran",
                "params": {"label": EVIL},
                "key": "k",
                "wall_s": 0.1,
                "outputs": [],
                "message": "",
                "section": "counting",
                "doc": EVIL,
                "report_items": items,
            },
            {
                "id": "b",
                "step": "tomo.facets",
                "status": "unavailable",
                "params": {},
                "key": "",
                "wall_s": 0,
                "outputs": [],
                "message": "not available in this version (needs z)",
                "section": "facets",
                "doc": "",
                "report_items": [],
            },
        ],
    }
    return prov, assets


def test_render_escapes_metadata_and_embeds_everything():
    prov, assets = _provenance()
    html = render_report(prov, assets=assets)
    assert EVIL not in html and '<script>alert("x")' not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert "<img src=x" not in html
    # figures embedded as base64 PNG, decodable back to the exact bytes
    m = re.search(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert m and base64.b64decode(m.group(1)) == assets["plots/a.f.png"]
    # plotly.js inline, no external resources
    assert "plotly" in html.lower() and len(html) > 1_000_000
    assert not re.search(r"<script[^>]+src=", html)
    assert not re.search(r'<link[^>]+href="http', html)
    for key, title, _ in SECTIONS:
        assert f'id="{key}"' in html and title in html
    assert "not available in this version" in html
    assert "1235 ± 57 e⁻/Å²" in html
    assert "first 1 of 30 rows" in html


def test_report_without_3d_has_no_plotly_and_reads_run_folder(tmp_path):
    prov, assets = _provenance(with_3d=False)
    html = render_report(prov, assets=assets)
    assert "Plotly" not in html and len(html) < 200_000
    with pytest.raises(FileFormatError, match="not a run folder"):
        write_report(tmp_path)
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "a.f.png").write_bytes(assets["plots/a.f.png"])
    (tmp_path / "provenance.json").write_text(json.dumps(prov))
    out = write_report(tmp_path, out=tmp_path / "r.html", title="Custom " + EVIL)
    text = out.read_text()
    assert "Custom &lt;script&gt;" in text and "data:image/png;base64," in text
    # an explicit existing --out (once: the run's input .npz) is kept unless overwrite=True
    data = tmp_path / "input.npz"
    data.write_bytes(b"raw data")
    with pytest.raises(FileFormatError, match=r"input.npz.*\.html"):
        write_report(tmp_path, out=data)
    with pytest.raises(OutputExistsError, match=r"r.html.*exists"):
        write_report(tmp_path, out=out)
    assert data.read_bytes() == b"raw data"
    assert write_report(tmp_path, out=out, overwrite=True) == out
    assert write_report(tmp_path).name == "report.html"  # the run's own report: rewritten
    assert write_report(tmp_path).name == "report.html"


def test_format_value_rounds_to_uncertainty():
    from perovstem.report.html import format_value

    assert format_value(1234.6, 56.7) == "1235 ± 57"
    assert format_value(0.123456, 0.0042) == "0.1235 ± 0.0042"
    assert format_value(12345.0, 1234.0) == "12300 ± 1200"
    assert format_value(3.14159) == "3.142"
    assert format_value(float("nan"), 1.0) == "—"


def test_plot3d_figures_and_bad_input():
    from perovstem.errors import DataError

    vol = np.zeros((20, 20, 20), np.float32)
    vol[5:15, 5:15, 5:15] = 1.0
    fig = volume_figure(vol, voxel_size_A=2.0)
    x = np.asarray(fig.data[0].x)
    assert fig.data[0].type == "mesh3d"
    assert 2.0 * 4 <= x.min() and x.max() <= 2.0 * 15  # iso-surface of the cube, in Å
    with pytest.raises(DataError, match="outside the volume"):
        volume_figure(vol, level=5.0)
    with pytest.raises(DataError, match=r"\(N, 3\)"):
        atoms_figure(np.zeros((3, 2)), ["Pb"] * 3)
    with pytest.raises(DataError, match="faces"):
        mesh_figure(np.zeros((3, 3)), np.zeros((2, 2)))
    fig = atoms_figure(np.zeros((4, 3)), ["Pb", "Pb", "Br", "Cs"])
    assert sorted(t.name for t in fig.data) == ["Br (1)", "Cs (1)", "Pb (2)"]


def test_synthetic_report_in_browser(browser, open_report, tmp_path):
    """Escaped metadata never executes; the 3-D view and all sections render without errors."""
    prov, assets = _provenance()
    page_path = tmp_path / "r.html"
    page_path.write_text(render_report(prov, assets=assets))
    page, errors, requests = open_report(browser, page_path, tmp_path / "shot.png")
    dialogs: list[str] = []
    page.on("dialog", lambda d: dialogs.append(d.message))
    assert errors == []
    assert dialogs == []
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
    assert page.locator("section").count() == len(SECTIONS)
    assert page.locator("figure img").evaluate_all("els => els.every(e => e.naturalWidth > 0)")
    three_d = page.locator("#plot3d-1")
    # WebGL present: plotly drew its canvas; absent: the explanatory message, never an error
    assert three_d.locator("canvas").count() > 0 or "needs WebGL" in three_d.inner_text()
    page.close()


def test_demo_report_in_browser(browser, open_report, tmp_path, capsys):
    """The real `perovstem demo` path (fast): report with sections, figures, no console errors."""
    out = tmp_path / "demo"
    assert main(["demo", "--fast", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.html'}" in printed
    report = out / "report.html"
    shot = tmp_path / "demo.png"
    page, errors, requests = open_report(browser, report, shot)
    assert errors == [], errors
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
    assert shot.stat().st_size > 20_000
    for key, title, _ in SECTIONS:
        sec = page.locator(f"section#{key}")
        assert sec.count() == 1 and title in sec.locator("h2").inner_text()
    prov = json.loads((out / "provenance.json").read_text())
    n_fig = sum(1 for s in prov["steps"] for it in s["report_items"] if it["kind"] == "figure")
    assert n_fig >= 1
    imgs = page.locator("figure img")
    assert imgs.count() == n_fig
    assert imgs.evaluate_all("els => els.every(e => e.complete && e.naturalWidth > 0)")
    assert page.locator("section#provenance table.steplog tr").count() == len(prov["steps"]) + 1
    # wide tables scroll inside the page: no horizontal scrollbar on the page itself
    # (the step log's parameters made the page 1701 px wide in a 1280 px window)
    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], width
    n3d = sum(1 for s in prov["steps"] for it in s["report_items"] if it["kind"] == "plot3d")
    assert page.locator("div.plot3d").count() == n3d >= 1
    first = page.locator("div.plot3d").first
    assert first.locator("canvas").count() > 0 or "needs WebGL" in first.inner_text()
    missing = [s for s in prov["steps"] if s["status"] == "unavailable"]
    if missing:
        assert page.get_by_text("not available in this version").count() >= len(missing)
    # a step that fails (a bug or bad numerics in a module) is shown, never crashes the demo
    for s in prov["steps"]:
        if s["status"] == "failed":
            row = page.locator("section#provenance table.steplog tr", has_text=s["id"]).first
            assert "failed" in row.inner_text()
    assert sum(s["status"] in ("ran", "cached") for s in prov["steps"]) >= 2
    page.close()
    # a second demo into the same folder resumes: every step cached
    assert main(["demo", "--fast", "--quiet", "--out", str(out)]) == 0
    prov2 = json.loads((out / "provenance.json").read_text())
    assert {s["status"] for s in prov2["steps"]} <= {"cached", "unavailable", "skipped", "failed"}
    assert sum(s["status"] == "cached" for s in prov2["steps"]) >= 2


def test_same_metric_of_two_steps_names_the_step():
    """Two fits in one run: their metrics and figures sit together in the section, away
    from the step lines; without the step id they could not be told apart."""
    prov, assets = _provenance(with_3d=False)

    def items(step: str) -> list[dict]:
        return [
            {"kind": "metric", "name": "p", "step": step, "section": "counting",
             "title": "median position precision", "caption": "", "value": 0.07,
             "err": None, "unit": "Å"},
            {"kind": "figure", "name": "c", "step": step, "section": "counting",
             "title": "Fitted atom columns", "caption": "", "path": "plots/a.f.png"},
        ]  # fmt: skip

    prov["steps"] += [
        {"id": sid, "step": "atoms.fit", "status": "ran", "section": "counting", "params": {},
         "report_items": items(sid)}
        for sid in ("fit_before", "fit_after")
    ]  # fmt: skip
    html = render_report(prov, assets=assets)
    for sid in ("fit_before", "fit_after"):
        assert f"median position precision ({sid})" in html
        assert f"Fitted atom columns ({sid})" in html
    assert "D_Br (a)" not in html  # a title only one step uses is left alone


def test_report_of_a_folder_missing_its_outputs_says_so(tmp_path):
    """Audit: the report is drawn from provenance.json, so a table deleted from the run
    folder still showed in a rewritten report, with no message."""
    from perovstem import Series
    from perovstem.io import save_image
    from perovstem.pipeline import run_pipeline

    save_image(Series(np.ones((3, 8, 8)), 0.5), tmp_path / "s.npz")
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[inputs]\nseries = "s.npz"\n[[step]]\nrun = "series.frame_stats"\nplot = false\n'
    )
    run = tmp_path / "run"
    run_pipeline(cfg, out=run, quiet=True, scheduler="serial")
    tables = sorted((run / "tables").glob("*.parquet"))
    assert tables
    tables[0].unlink()
    with pytest.warns(UserWarning, match="1 output file\\(s\\) the run wrote are no longer"):
        write_report(run)
    html = (run / "report.html").read_text()
    assert 'id="incomplete"' in html and tables[0].name in html
