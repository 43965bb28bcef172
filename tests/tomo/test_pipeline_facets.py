"""The facet method of the pipeline steps (tomo.facets, tomo.facet_change) via run_pipeline."""

from __future__ import annotations

import numpy as np
import pandas as pd

from perovstem.pipeline import run_pipeline

CONFIG = """
[run]
name = "facet-methods"
seed = 3
on_error = "continue"
[[step]]
run = "simulate.tilt_series"
id = "tilt"
size_px = 40
pixel_size_A = 2.5
angle_step_deg = 5.0
[[step]]
run = "tomo.reconstruct"
id = "rec_before"
inputs = { tilt = "tilt.before" }
n_iter = 30
view3d = false
[[step]]
run = "tomo.reconstruct"
id = "rec_after"
inputs = { tilt = "tilt.after" }
n_iter = 30
view3d = false
[[step]]
run = "tomo.facets"
id = "normals_before"
inputs = { volume = "rec_before.volume", voxel_size_A = "rec_before.voxel_size_A", tilt = "tilt.before" }
view3d = false
[[step]]
run = "tomo.facets"
id = "poly_before"
inputs = { volume = "rec_before.volume", voxel_size_A = "rec_before.voxel_size_A", tilt = "tilt.before" }
method = "polyhedron"
view3d = false
[[step]]
run = "tomo.facets"
id = "poly_after"
inputs = { volume = "rec_after.volume", voxel_size_A = "rec_after.voxel_size_A", tilt = "tilt.after" }
method = "polyhedron"
view3d = false
[[step]]
run = "tomo.facet_change"
id = "change"
inputs = { before = "poly_before.facets", after = "poly_after.facets" }
[[step]]
run = "tomo.facet_change"
id = "mixed"
inputs = { before = "normals_before.facets", after = "poly_after.facets" }
"""


def test_facets_method_through_the_pipeline(tmp_path):
    cfg = tmp_path / "facets.toml"
    cfg.write_text(CONFIG)
    r = run_pipeline(cfg, out=tmp_path / "run", quiet=True, scheduler="serial", report=False)
    status = {s.id: s.status for s in r.steps}
    msgs = {s.id: s.message for s in r.steps}
    for sid in ("tilt", "rec_before", "rec_after", "normals_before", "poly_before", "change"):
        assert status[sid] == "ran", (sid, msgs[sid])

    def table(ref: str) -> pd.DataFrame:
        return pd.read_parquet(tmp_path / "run" / "tables" / f"{ref}.parquet")

    truth = table("tilt.truth")
    normals, poly = table("normals_before.facets"), table("poly_before.facets")
    assert normals.attrs["method"] == "normals" and poly.attrs["method"] == "polyhedron"
    assert len(poly.attrs["convexity"]) >= 1
    # a clean reconstruction: measured noise recorded, the default σ = 1 kept
    assert 0 < poly.attrs["volume_noise"] < 0.4 and poly.attrs["sigma_px"] == 1.0
    fam = ["100", "110", "111"]
    true_frac = truth.loc[0, [f"frac_{f}" for f in fam]].to_numpy(float)

    def err(df: pd.DataFrame) -> float:
        return float(np.max(np.abs(df.set_index("family").loc[fam, "fraction"] - true_frac)))

    # the polyhedron has no edge/rounded "other" area and, on this sharply faceted phantom,
    # recovers the family fractions far better than the face-normal areas (measured: largest
    # family error 0.061 vs 0.149, orientation estimated from the mesh)
    p_other = float(poly.set_index("family").loc["other", "fraction"])
    assert p_other == 0.0
    assert err(poly) < 0.5 * err(normals), (err(poly), err(normals))

    change = table("change.change")
    assert list(change["family"]) == [*fam, "other"]
    np.testing.assert_allclose(change["fraction_before"], poly["fraction"])
    # mixing methods is refused with an error that names both
    assert status["mixed"] == "failed"
    assert "'normals'" in msgs["mixed"] and "'polyhedron'" in msgs["mixed"]


def test_reconstruct_step_on_a_series_with_its_axis_off_x_names_tomo_align(tmp_path):
    from perovstem.io import save_image
    from perovstem.simulate.tilt import nanocrystal_phantom, tilt_series

    ph = nanocrystal_phantom(40.0, n_inclusions=0, rng=0)
    ts, _ = tilt_series(ph, np.arange(-60.0, 61.0, 6.0), shape=(32, 32), pixel_size_A=2.5, rng=1)
    f = save_image(ts.replace(tilt_axis_deg=-2.5), tmp_path / "t.npz")
    cfg = tmp_path / "axis.toml"
    cfg.write_text(
        f'[run]\nname = "axis"\non_error = "continue"\n[inputs]\ntilt = "{f}"\n'
        '[[step]]\nrun = "tomo.reconstruct"\nn_iter = 5\nview3d = false\n'
        '[[step]]\nrun = "tomo.sequence"\ninputs = { series = ["tilt", "tilt"] }\n'
    )
    r = run_pipeline(cfg, out=tmp_path / "run", quiet=True, scheduler="serial", report=False)
    rec, seq = r.steps
    assert rec.status == "failed" and seq.status == "failed"
    assert "-2.5°" in rec.message and "put a tomo.align step before" in rec.message
    assert "`series[0]`" in seq.message and "-2.5°" in seq.message
    assert "`align = true`" in seq.message


class _FacetsContext:
    """A bare context for the ``tomo.facets`` step (report texts kept)."""

    step_id = "facets"

    def __init__(self, **params):
        self.params = {"voxel_size_A": None, "tolerance_deg": 10.0, "sigma_px": None}
        self.params |= {"method": "polyhedron", "label": "", "view3d": False, **params}
        self.texts: list[str] = []

    def table(self, *args, **kwargs):
        pass

    def text(self, text, **kwargs):
        self.texts.append(text)


def test_facets_step_smooths_a_noisy_volume_and_says_it_is_rough():
    from perovstem.pipeline.steps.tomo import tomo_facets
    from perovstem.simulate.tilt import nanocrystal_phantom, tilt_series
    from perovstem.tomo import reconstruct

    ph = nanocrystal_phantom(60.0, n_inclusions=0, rng=2)
    ang = np.arange(-70.0, 71.0, 3.0)
    for counts, noisy in ((20.0, False), (0.05, True)):
        ts, _ = tilt_series(ph, ang, shape=(40, 40), pixel_size_A=2.5, counts_per_A=counts, rng=2)
        vol = reconstruct(ts, n_iter=60).volume
        ctx = _FacetsContext()
        f = tomo_facets(ctx, vol, voxel_size_A=2.5)["facets"]
        assert (f.attrs["volume_noise"] > 0.7) is noisy
        assert (f.attrs["sigma_px"] > 1.2) is noisy
        assert bool(ctx.texts) is noisy and all("read them as rough" in t for t in ctx.texts)
        fixed = tomo_facets(_FacetsContext(sigma_px=1.0), vol, voxel_size_A=2.5)["facets"]
        assert fixed.attrs["sigma_px"] == 1.0


def test_facet_change_of_volumes_meshed_with_different_smoothing_is_said():
    import pandas as pd

    from perovstem.pipeline.steps.tomo import tomo_facet_change

    def facets(sigma):
        df = pd.DataFrame(
            {"family": ["100", "110", "111", "other"], "fraction": [0.6, 0.2, 0.1, 0.1]}
        )
        df.attrs.update(method="polyhedron", sigma_px=sigma)
        return df

    class Ctx(_FacetsContext):
        def figure(self, *args, **kwargs):
            pass

    for sa, said in ((1.0, False), (1.05, False), (1.7, True)):
        ctx = Ctx()
        tomo_facet_change(ctx, facets(1.0), facets(sa))
        assert bool(ctx.texts) is said, ctx.texts
        assert all("different smoothing (σ = 1.00 before, 1.70 after" in t for t in ctx.texts)
