"""Mechanism lines of a series whose host is not a [001] projection say so themselves.

Before: `perovstem insitu` on a [111] crystal printed "nucleation: ...", "growth: ..." and
"mobility: Γ₁ = 164 s⁻¹" as results, and only a note printed after them said that host
columns were counted as Pb⁰ clusters; `perovstem kinetics` of such a run said nothing.
"""

from __future__ import annotations

import json

from perovstem.cli.main import main


def test_cluster_rows_of_a_111_series_are_marked(tmp_path, capsys):
    series = tmp_path / "s111.zarr"
    argv = ["simulate", "series", "-o", str(series), "--frames", "8", "--edge-A", "40"]
    assert main([*argv, "--zone-axis", "111", "--seed", "3"]) == 0
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(["insitu", str(series), "-o", str(out), "--no-plots", "--columns"]) == 0
    lines = json.loads((out / "summary.json").read_text())["mechanisms"]
    marked = [ln for ln in lines if ln.startswith("UNRELIABLE (host not a [001] projection")]
    plain = [ln for ln in lines if ln not in marked]
    assert any("nucleation:" in ln for ln in marked), lines
    # the crystal's own intensity loss does not rest on the clusters
    assert plain and all(ln.startswith("mass_loss:") for ln in plain), plain
    said = " ".join(capsys.readouterr().out.split())
    assert "UNRELIABLE" in said and "the per-column atom counts (columns, atoms lost)" in said
    # the column width is measured on a [001] host's reflections: not said on this one
    assert "shows columns of σ" not in said
    assert main(["kinetics", str(out), "-o", str(tmp_path / "kin")]) == 0
    notes = json.loads((tmp_path / "kin" / "summary.json").read_text())["notes"]
    assert any("the host is not a [001] projection" in n for n in notes), notes


def test_pipeline_cluster_step_says_a_non_001_host():
    # the `insitu.clusters` step counted the host columns of a [111] crystal as Pb0 with no
    # word (analyze_series had the note since session 9, the pipeline step did not)
    from _insitu_kmc import ClusterStepContext

    from perovstem.pipeline.steps import insitu as steps
    from perovstem.simulate import degradation_kmc, insitu_series, nanocrystal

    step = getattr(steps.insitu_clusters, "__wrapped__", steps.insitu_clusters)
    for zone, said in (("111", True), ("001", False)):
        at = nanocrystal(edge_A=40, zone_axis=zone, rng=1)
        tr = degradation_kmc(at, n_frames=3, frame_time_s=1.0, dose_rate_e_per_A2_s=5e3, rng=1)
        s, _ = insitu_series(tr, pixel_size_A=0.5, rng=1)
        ctx = ClusterStepContext()
        counts = step(ctx, s)["counts"]
        texts = [t for t in ctx.texts if "not a square projection" in t]
        assert bool(texts) is said and ("host_not_001" in counts.attrs) is said, ctx.texts
        # no column width (and its note) from a [001] measurement on another projection
        assert ("column_sigma_A" in counts.attrs) is not said
