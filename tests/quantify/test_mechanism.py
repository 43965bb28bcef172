from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from perovstem.quantify.mechanism import SUMMARY_COLUMNS, mechanism_summary, summary_lines


def _frames(rng, phi, temp, j, d_br, n=40, dose=2e3):
    d = np.arange(1, n + 1) * dose
    n_br = np.empty(n)
    left = 4000
    for k in range(n):
        left -= rng.binomial(left, 1 - np.exp(-dose / d_br))
        n_br[k] = left + 500
    births = np.cumsum(rng.poisson(j * dose, n))
    return pd.DataFrame(
        {
            "frame": np.arange(n),
            "cumulative_dose_e_per_A2": d,
            "dose_rate_e_per_A2_s": phi,
            "temperature_K": temp,
            "gas": "vacuum",
            "n_Br": n_br,
            "cumulative_births": births,
        }
    )


def test_summary_recovers_parameters_per_condition():
    rng = np.random.default_rng(0)
    ea = 0.3
    conds = [(1e3, 300.0), (1e4, 300.0), (1e3, 260.0), (1e3, 330.0)]
    frames = []
    for phi, t in conds:
        j = 5e-3 * np.exp(-ea / 8.617e-5 * (1 / t - 1 / 300.0))
        frames.append(_frames(rng, phi, t, j, 3e4))
    s = mechanism_summary(pd.concat(frames, ignore_index=True))
    assert list(s.columns) == SUMMARY_COLUMNS
    br = s[s.process == "br_loss"]
    assert len(br) == 4
    first = br[br.selected_model == "br_first_order"]
    assert len(first) >= 3  # nested two-pool model may win once by chance
    assert np.all(np.abs(first.value / 3e4 - 1) < 0.1)
    assert np.mean((br.ci_low <= 3e4) & (3e4 <= br.ci_high)) >= 0.75
    nuc = s[s.process == "nucleation"]
    assert (nuc.selected_model == "nucleation_constant").sum() >= 3
    # births-based rows say what they measure (censored by detection and merging)
    assert nuc.text.str.contains("detectable-cluster births").all()
    rate = s[s.process == "dose_rate"]
    assert len(rate) == 1 and rate.selected_model.iloc[0] == "dose_controlled"
    temp = s[s.process == "temperature"]
    assert len(temp) == 1
    assert abs(temp.value.iloc[0] - ea) < 0.05
    assert all(isinstance(t, str) and t for t in s.text)


def test_summary_records_condition_keys():
    rng = np.random.default_rng(1)
    f = pd.concat(
        [_frames(rng, 1e3, 300.0, 5e-3, 3e4).assign(series=k) for k in (0, 1)], ignore_index=True
    )
    s = mechanism_summary(f)
    conds = s.attrs["conditions"]
    assert [c["series"] for c in conds] == [0, 1]
    assert set(s["condition"]) <= {-1, 0, 1}


def test_summary_lines_name_the_condition_of_each_row():
    # `perovstem insitu` / `kinetics` printed the texts alone: three "br_loss: ..." lines
    # of a series held at 260, 300 and 330 K could not be told apart
    rng = np.random.default_rng(3)
    frames = [_frames(rng, 1e3, t, 5e-3, 3e4) for t in (260.0, 300.0, 330.0)]
    s = mechanism_summary(pd.concat(frames, ignore_index=True))
    lines = summary_lines(s)
    br = [ln for ln in lines if "] br_loss:" in ln]
    assert [ln.split("]")[0] for ln in br] == ["[260 K", "[300 K", "[330 K"]
    across = s[s["condition"] < 0]
    assert len(across) and all(any(ln == t for ln in lines) for t in across["text"])
    # one condition: no labels
    one = summary_lines(mechanism_summary(frames[0]))
    assert one and not any(ln.startswith("[") for ln in one)
    # the same text under many conditions (a ramp: one frame each) is one line
    ramp = pd.concat(
        [
            f.iloc[:1].assign(temperature_K=t)
            for f, t in zip(frames * 3, range(300, 390, 10), strict=True)
        ],
        ignore_index=True,
    )
    rs = mechanism_summary(ramp)
    rl = summary_lines(rs)
    assert len(rl) < len(rs)
    assert any(
        ln.startswith("[300 K; 310 K; 320 K; ... (9 conditions)] nucleation: not fitted")
        for ln in rl
    ), rl
    assert summary_lines(pd.DataFrame()) == []


def test_pipeline_mechanism_labels_each_row_with_its_source(tmp_path):
    import tomllib

    from perovstem.io import read_table
    from perovstem.pipeline import get_step, parse_config, run_pipeline

    if not all(get_step(n).available for n in ("simulate.kmc", "quantify.mechanism")):
        pytest.skip("simulate/quantify steps not available in this version")
    text = """
[run]
name = "mech"
seed = 3
[[step]]
run = "simulate.nanocrystal"
edge_A = 30.0
view3d = false
[[step]]
run = "simulate.kmc"
id = "a"
n_frames = 10
dose_rate_e_per_A2_s = 3000.0
[[step]]
run = "simulate.kmc"
id = "b"
n_frames = 10
dose_rate_e_per_A2_s = 1000.0
inputs = { atoms = "nanocrystal.atoms" }
[[step]]
run = "quantify.mechanism"
inputs = { frames_a = "a.frames", frames_b = "b.frames" }
sources = ["truth A", "truth B"]
"""
    cfg = parse_config(tomllib.loads(text), source="m.toml", text=text)
    r = run_pipeline(cfg, out=tmp_path / "run", quiet=True, scheduler="serial")
    assert all(s.status == "ran" for s in r.steps), [s.message for s in r.steps]
    summ = read_table(tmp_path / "run" / "tables" / "mechanism.summary.parquet")
    br = summ[summ["process"] == "br_loss"].sort_values("dose_rate_e_per_A2_s")
    assert list(br["source"]) == ["truth B", "truth A"]


def test_pipeline_mechanism_names_the_gas_where_conditions_differ_by_it(tmp_path):
    """Audit: conditions told apart by their gas only were all labelled "[272 K, 1197.6
    e⁻/Å²/s]" in the report, with no gas column: which row is which?"""
    import tomllib

    from perovstem.pipeline import parse_config, run_pipeline

    text = """
[run]
name = "gas"
seed = 3
report = false
[[step]]
run = "simulate.nanocrystal"
edge_A = 30.0
view3d = false
[[step]]
run = "simulate.kmc"
id = "a"
n_frames = 8
[[step]]
run = "simulate.kmc"
id = "b"
n_frames = 8
atmosphere = "O2"
inputs = { atoms = "nanocrystal.atoms" }
[[step]]
run = "quantify.mechanism"
id = "m"
inputs = { frames_a = "a.frames", frames_b = "b.frames" }
"""
    cfg = parse_config(tomllib.loads(text), source="g.toml", text=text)
    r = run_pipeline(cfg, out=tmp_path / "run", quiet=True, scheduler="serial")
    step = next(s for s in r.steps if s.id == "m")
    assert step.status == "ran", step.message
    texts = [i.get("text", "") for i in step.report_items if i.get("kind") == "text"]
    assert any(", O2] " in t for t in texts) and any(", vacuum] " in t for t in texts), texts
    table = next(i for i in step.report_items if i.get("kind") == "table")
    assert "gas" in str(table)


def test_temperature_row_uses_one_dose_rate_or_says_rates_differ():
    """Nucleation vs temperature: restricted to one dose rate when it has ≥ 3 temperatures;
    with a different dose rate at every temperature the row says they are confounded."""
    rng = np.random.default_rng(2)
    ea = 0.3

    def j(t):
        return 5e-3 * np.exp(-ea / 8.617e-5 * (1 / t - 1 / 300.0))

    mixed = [(1e3, 260.0), (2e3, 300.0), (4e3, 330.0)]
    f = pd.concat([_frames(rng, phi, t, j(t), 3e4) for phi, t in mixed], ignore_index=True)
    row = mechanism_summary(f, ci="wald").query("process == 'temperature'").iloc[0]
    assert "confounded" in row["text"] and "confounded" in row["mechanism"]
    same = [(1e3, 260.0), (1e3, 300.0), (1e3, 330.0), (8e3, 300.0)]
    f = pd.concat([_frames(rng, phi, t, j(t), 3e4) for phi, t in same], ignore_index=True)
    row = mechanism_summary(f, ci="wald").query("process == 'temperature'").iloc[0]
    assert "at 1000 e⁻/Å²/s" in row["text"] and row["n_points"] == 3
    assert abs(row["value"] - ea) < 0.08


def test_mass_loss_row_is_labelled_as_intensity_loss():
    rng = np.random.default_rng(3)
    f = _frames(rng, 1e3, 300.0, 5e-3, 3e4)
    f = f.drop(columns="n_Br").assign(integrated_counts=1e6 * np.exp(-f.index / 30.0) + 2e5)
    row = mechanism_summary(f, ci="wald").query("process == 'mass_loss'").iloc[0]
    assert "integrated intensity" in row["mechanism"] and "Br" not in row["mechanism"].split("(")[0]
    assert "integrated intensity" in row["text"]
    # its dose constant is the intensity's, not a Br desorption constant (audit: a mass-loss
    # "D_Br_e_per_A2" of 4.0e4 beside a true D_Br of 3e4 invited the comparison)
    assert not str(row["param"]).startswith("D_Br")
    if row["selected_model"] == "br_first_order":
        assert row["param"] == "D_intensity_e_per_A2" and "D_intensity_e_per_A2" in row["text"]


def test_survival_corrected_nucleation_rows():
    """NucleationRate columns replace the births fit: an identifiable J is reported as
    J_per_e_per_A2 and enters the dose-rate fit (J per dose constant -> dose-controlled); a
    non-identifiable one is a range that stays out of it."""
    from perovstem.quantify.nucleation import NucleationRate

    rng = np.random.default_rng(4)
    parts = []
    for i, (phi, ident) in enumerate([(1e3, True), (3e3, True), (1e4, False)]):
        j = 2e-3
        r = NucleationRate(
            J_per_e_per_A2=j * (1 + 0.02 * i),
            ci_low=0.8 * j,
            ci_high=1.2 * j if ident else 4 * j,
            identifiable=ident,
            survival=0.95 if ident else 0.5,
            survival_min=0.9 if ident else 0.25,
            survival_max=1.0,
            correction_uncertainty=0.05 if ident else 0.5,
            detector_ratio=1.0,
            elasticity=1.0 if ident else 0.1,
            n_births_detected=100.0,
            dose_e_per_A2=5e4,
            level=0.95,
            profile=pd.DataFrame(),
        )
        parts.append(_frames(rng, phi, 250.0, j, 3e4).assign(**r.frame_columns()))
    s = mechanism_summary(pd.concat(parts, ignore_index=True), ci="wald")
    nuc = s[s.process == "nucleation"].sort_values("dose_rate_e_per_A2_s")
    assert list(nuc.selected_model) == ["survival_corrected_births"] * 3
    assert list(nuc.observable) == ["births_detected"] * 3
    assert list(nuc.param) == ["J_per_e_per_A2", "J_per_e_per_A2", "J_range_per_e_per_A2"]
    assert nuc.value.iloc[1] == pytest.approx(2.04e-3)
    assert "NOT identifiable" in nuc.text.iloc[2] and "NOT" not in nuc.text.iloc[0]
    dr = s[(s.process == "dose_rate") & (s.observable == "J_per_s")]
    assert len(dr) == 1 and dr.n_points.iloc[0] == 2
    assert dr.selected_model.iloc[0] == "dose_controlled"


@pytest.mark.parametrize("thermal", [False, True])
def test_two_dose_rates_give_alpha_with_interval_and_verdict(thermal):
    # two dose rates only: AICc is undefined, so α = Δln J/Δln φ with propagated errors
    # is reported with its interval next to the verdict (dose-controlled α = 1, thermal α = 0)
    hits = 0
    for seed in range(4):
        rng = np.random.default_rng(100 + seed)
        parts = []
        for phi in (1e3, 1e4):
            j = 5e-3 * (1e3 / phi if thermal else 1.0)  # per e⁻/Å²
            parts.append(_frames(rng, phi, 300.0, j, 3e4, dose=2e3 if not thermal else 2e4))
        s = mechanism_summary(pd.concat(parts, ignore_index=True))
        dr = s[(s.process == "dose_rate") & (s.observable == "J_per_s")]
        assert len(dr) == 1 and dr.n_points.iloc[0] == 2
        truth = 0.0 if thermal else 1.0
        lo, a, hi = dr.ci_low.iloc[0], dr.value.iloc[0], dr.ci_high.iloc[0]
        assert np.isfinite([lo, a, hi]).all() and lo < a < hi
        assert abs(a - truth) < 0.2
        hits += lo <= truth <= hi
        want = "time_controlled" if thermal else "dose_controlled"
        assert dr.selected_model.iloc[0] == want
        assert f"alpha = {a:.3g}" in dr.text.iloc[0]
    assert hits >= 2


def test_jittered_time_stamps_and_logged_temperature_stay_one_condition():
    """A real series: frame intervals jitter by ~1 ms (dose rate D/Δt differs in the 4th
    digit) and the holder log's temperature by ~0.1 K; before, every frame became its own
    condition (no fits; with tracks a DataError).  Two real settings stay two conditions,
    and tracks are matched to them through their own (jittered) condition values."""
    rng = np.random.default_rng(3)
    a = _frames(rng, 1e3, 300.0, 5e-3, 3e4)
    b = _frames(rng, 1e4, 300.0, 5e-3, 3e4)
    for f in (a, b):
        f["dose_rate_e_per_A2_s"] *= 1 + rng.normal(0, 1e-3, len(f))
        f["temperature_K"] += rng.normal(0, 0.1, len(f))
    one = mechanism_summary(a, ci="wald")
    assert set(one["condition"]) == {0}
    br = one[one.process == "br_loss"]
    assert len(br) == 1 and abs(br.value.iloc[0] / 3e4 - 1) < 0.1
    b["frame"] += len(a)
    both = pd.concat([a, b], ignore_index=True)
    tracks = pd.DataFrame(
        {
            "frame": np.repeat(both["frame"].to_numpy(), 2),
            "track_id": np.tile([0, 1], len(both)),
            "x_A": np.tile([0.0, 20.0], len(both)) + rng.normal(0, 1.0, 2 * len(both)),
            "y_A": rng.normal(0, 1.0, 2 * len(both)),
            "n_atoms": 20,
            "dose_rate_e_per_A2_s": np.repeat(both["dose_rate_e_per_A2_s"].to_numpy(), 2),
        }
    )
    two = mechanism_summary(both, ci="wald", tracks=tracks)
    conds = two[two.condition >= 0]
    assert set(conds["condition"]) == {0, 1}
    assert sorted(conds.groupby("condition")["dose_rate_e_per_A2_s"].first()) == pytest.approx(
        [1e3, 1e4], rel=0.01
    )
    assert len(two.attrs["conditions"]) == 2


def test_parameters_per_frame_are_not_labelled_per_dose():
    """Without a dose (``x="frame"``, as analyze_series does) a rate per frame was
    labelled ``rate_per_e_per_A2`` / ``J_per_e_per_A2``: a unit mistake by the dose per frame."""
    rng = np.random.default_rng(4)
    f = _frames(rng, np.nan, 300.0, 5e-3, 3e4).drop(columns=["cumulative_dose_e_per_A2"])
    f["integrated_counts"] = 1e5 - 40.0 * f["frame"] + rng.normal(0, 5, len(f))
    f = f.drop(columns=["n_Br"])
    s = mechanism_summary(f, x="frame", ci="wald")
    fitted = s[s["param"].notna()]
    assert len(fitted) >= 2
    assert not fitted["param"].str.contains("e_per_A2").any()
    assert not fitted["text"].str.contains("e_per_A2").any()
    mass = s[s.process == "mass_loss"].iloc[0]
    assert mass["param"] == "fraction_lost_per_frame"
    assert mass["ci_low"] < 40.0 / 1e5 < mass["ci_high"]  # of the counts, lost per frame


def test_linear_mass_loss_rate_does_not_depend_on_the_gain():
    """The zero-order mass-loss rate was given in detector counts per e⁻/Å² (a gain of 7
    read 7x the rate); it is a fraction of the crystal's starting intensity per e⁻/Å²."""
    rng = np.random.default_rng(5)
    f = _frames(rng, 1e3, 300.0, 5e-3, 3e4).drop(columns="n_Br")
    f["integrated_counts"] = 1e5 - 0.5 * f["cumulative_dose_e_per_A2"] + rng.normal(0, 30, len(f))
    rows = []
    for gain in (1.0, 7.0):
        g = f.assign(integrated_counts=gain * f["integrated_counts"])
        m = mechanism_summary(g, ci="wald").query("process == 'mass_loss'").iloc[0]
        assert m["selected_model"] == "br_linear" and m["param"] == "fraction_lost_per_e_per_A2"
        rows.append(m)
    assert rows[1]["value"] == pytest.approx(rows[0]["value"], rel=1e-6)
    assert rows[0]["ci_low"] < 0.5 / 1e5 < rows[0]["ci_high"]
    assert "fraction_lost_per_e_per_A2 = 5" in rows[0]["text"]


def test_indistinguishable_models_are_said_to_be():
    """A constant cluster radius (clusters on a support that do not grow): every growth
    model fits equally (weights ≈ 1/3); the row said "supply-limited growth or Ostwald
    ripening" without saying that the next model is as good."""
    rng = np.random.default_rng(5)
    f = _frames(rng, 1e3, 300.0, 5e-3, 3e4).drop(columns=["n_Br", "cumulative_births"])
    f["mean_radius_A"] = 6.0 + rng.normal(0, 0.05, len(f))
    row = mechanism_summary(f, ci="wald")
    g = row[row.process == "growth"].iloc[0]
    assert g["delta_next"] < 2
    assert "not distinguished from" in g["text"] and "ΔAICc" in g["text"]
    # a clear winner is not flagged
    f["mean_radius_A"] = (6.0**3 + 2e-3 * f["cumulative_dose_e_per_A2"]) ** (1 / 3)
    f["mean_radius_A"] += rng.normal(0, 0.01, len(f))
    g = mechanism_summary(f, ci="wald").query("process == 'growth'").iloc[0]
    assert g["delta_next"] >= 2 and "not distinguished" not in g["text"]


def test_too_few_points_to_compare_models_is_said_not_selected():
    """With four frames every nucleation model's AICc is infinite: the first model in the
    table is only the first fitted.  The row said "constant nucleation rate ... (weight
    nan)" as if selected; it now says the models were not compared, and an unrecorded gas
    stays empty (it was written as "None")."""
    f = _frames(np.random.default_rng(3), 1e3, 300.0, 5e-3, 3e4, n=4).iloc[:, :-2]
    f["cumulative_births"] = [1, 3, 6, 8]
    f["gas"] = None
    row = mechanism_summary(f, ci="wald").query("process == 'nucleation'").iloc[0]
    assert not np.isfinite(row["weight"])
    assert "weight nan" not in row["text"]
    assert "not selected: 3 points are too few to compare the models" in row["text"], row["text"]
    assert row["mechanism"].startswith("not selected")
    assert row["gas"] == ""


def test_mobility_not_fitted_says_frames_left_out_for_drift():
    """At high dose the drift of 4 of 5 frames was unreliable and those frames are left out
    of the mobility fit: the row said only "no track has two consecutive frames" although
    16-22 clusters were tracked per frame."""
    from perovstem.quantify.mechanism import _mobility_row

    frames = pd.DataFrame(
        {"frame": range(5), "time_s": np.arange(5.0), "drift_reliable": [1, 0, 0, 0, 0]}
    ).astype({"drift_reliable": bool})
    # what reaches the fit: the tracks within the reliable frames (frame 0 only)
    tracks = pd.DataFrame(
        {"track_id": range(6), "frame": 0, "x_A": np.arange(6) * 20.0, "y_A": 0.0,
         "n_atoms": 30.0}
    )  # fmt: skip
    row, _ = _mobility_row([("a", frames, tracks)], 0.95, {})
    assert row["text"].startswith("mobility: not fitted: no track has two consecutive frames")
    assert "(4 of 5 frames are left out for an unreliable drift)" in row["text"], row["text"]


@pytest.mark.parametrize("n", [2, 4])
def test_series_too_short_for_a_process_says_so(n):
    """A 2-frame series' summary held a bare "not fitted: ..." nucleation line (which
    process?) and no mass-loss or growth row at all: each process now says it was not
    fitted and why; a series long enough fits them."""
    d = np.arange(1, n + 1) * 1e3
    g = pd.DataFrame(
        {
            "frame": np.arange(n),
            "cumulative_dose_e_per_A2": d,
            "dose_rate_e_per_A2_s": 1e3,
            "temperature_K": 300.0,
            "integrated_counts": 1e6 * np.exp(-d / 3e4),
            "mean_radius_A": 3.0 + 0.1 * np.arange(n),
            "cumulative_births": np.minimum(np.arange(n), 2),
        }
    )
    s = mechanism_summary(g)
    text = dict(zip(s["process"], s["text"], strict=True))
    assert text["mass_loss"] == (
        f"mass_loss: not fitted: {n} frames with the crystal's integrated counts; its "
        "models need at least 5"
    )
    assert text["growth"].startswith(f"growth: not fitted: {n} frames with a mean cluster")
    assert text["nucleation"].startswith(
        f"nucleation: not fitted: {min(n - 1, 2)} cluster birth(s)"
    )
    assert s["value"].isna().all()
    longer = mechanism_summary(
        pd.DataFrame(
            {
                "frame": np.arange(8),
                "cumulative_dose_e_per_A2": np.arange(1, 9) * 1e3,
                "dose_rate_e_per_A2_s": 1e3,
                "temperature_K": 300.0,
                "integrated_counts": 1e6 * np.exp(-np.arange(1, 9) * 1e3 / 3e4),
                "mean_radius_A": 3.0 + 0.1 * np.arange(8),
            }
        )
    )
    fitted = longer.set_index("process")
    assert np.isfinite(fitted.loc["mass_loss", "value"]) and np.isfinite(
        fitted.loc["growth", "value"]
    )


def test_condition_levels_do_not_depend_on_the_other_series():
    """Levels counted from the lowest value grouped 271.9 K with 270.0 K and split it from
    272.1 K (0.2 K away) because a third series existed; values are now split at their
    largest gaps until every level is within the tolerance."""
    from perovstem.quantify.mechanism import _condition_levels

    _, med = _condition_levels(np.array([270.0, 271.9, 272.1]), "abs", 2.0)
    np.testing.assert_allclose(med, [270.0, 272.0])
    _, med = _condition_levels(np.array([271.9, 272.1]), "abs", 2.0)
    np.testing.assert_allclose(med, [272.0])
    # dose rates on a log scale: 109 and 111 (1.8 % apart) together, not 100 and 109
    _, med = _condition_levels(np.array([100.0, 109.0, 111.0, 300.0]), "rel", 0.1)
    np.testing.assert_allclose(med, [100.0, 110.0, 300.0])
    # no chaining along a ramp: every level at most 2 K wide
    starts, med = _condition_levels(np.arange(250.0, 262.0, 0.5), "abs", 2.0)
    v = np.arange(250.0, 262.0, 0.5)
    i = np.searchsorted(starts, v, side="right") - 1
    assert all(np.ptp(v[i == k]) <= 2.0 for k in range(starts.size))


def test_activation_energy_that_cannot_be_fitted_says_why():
    """Audit: hop rates at 0, 23 and 48 K (edited tables) gave no Ea row and no note: the
    Arrhenius fit's refusal was swallowed.  It is a 'not fitted' row naming the reason."""
    from perovstem.quantify.mechanism import _across

    mob = pd.DataFrame(
        {
            "condition": [0, 1, 2],
            "temperature_K": [0.0, 23.0, 48.0],
            "dose_rate_e_per_A2_s": [100.0] * 3,
            "gas": [""] * 3,
            "process": ["mobility"] * 3,
            "observable": ["cluster tracks"] * 3,
            "param": ["Gamma1_per_s"] * 3,
            "value": [1.0, 2.0, 4.0],
            "ci_low": [0.5, 1.0, 2.0],
            "ci_high": [2.0, 4.0, 8.0],
            "text": ["mobility: Γ₁"] * 3,
        }
    )
    rows = _across(mob, 0.95)
    bad = rows[(rows["process"] == "temperature") & (rows["observable"] == "Gamma1_per_s")]
    assert len(bad) == 1 and np.isnan(bad["value"].iloc[0])
    assert "temperature: not fitted" in bad["text"].iloc[0]
    assert "> 0 K" in bad["text"].iloc[0]


def test_nucleation_arrhenius_says_when_temperatures_selected_different_models():
    """Audit: the nucleation Ea row pooled the J of the constant-rate and the
    site-exhaustion models (the demo: 250/280 K one, 265/297 K the other) without a word."""
    from perovstem.quantify.mechanism import _across

    t = np.array([250.0, 265.0, 280.0, 297.0])
    j = 1e-3 * np.exp(-0.3 / (8.617e-5 * t)) / np.exp(-0.3 / (8.617e-5 * 297.0))
    rows = pd.DataFrame(
        {
            "condition": range(4),
            "process": "nucleation",
            "param": "J_per_e_per_A2",
            "temperature_K": t,
            "dose_rate_e_per_A2_s": 100.0,
            "value": j,
            "ci_low": 0.8 * j,
            "ci_high": 1.2 * j,
            "selected_model": [
                "nucleation_constant",
                "nucleation_saturating",
                "nucleation_constant",
                "nucleation_saturating",
            ],
        }
    )
    out = _across(rows, 0.95)
    row = out[out["observable"] == "J_per_e_per_A2"].iloc[0]
    assert row["value"] == pytest.approx(0.3, abs=0.05)
    for text in (row["mechanism"], row["text"]):
        assert "constant at 250, 280 K" in text and "site exhaustion at 265, 297 K" in text
    one = _across(rows.assign(selected_model="nucleation_constant"), 0.95)
    assert "selected" not in one[one["observable"] == "J_per_e_per_A2"].iloc[0]["text"]
