"""Step parameters that are absurd only together are refused when the configuration is
validated (``load_config``, ``perovstem run --check``): one message naming the step, the
parameters and their values, exit 2, nothing written.  Before, each parameter was checked
alone and the combination failed only when the step ran (after the steps before it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from perovstem.cli.main import main
from perovstem.errors import ParameterError
from perovstem.pipeline import load_config

NC = '[[step]]\nrun = "simulate.nanocrystal"\nedge_A = {edge}\nview3d = false\n\n'

CASES = {
    # a frame dose of 1e11 e⁻/Å² (each value within its own bounds)
    "frame_dose": (
        NC.format(edge=30.0)
        + '[[step]]\nrun = "simulate.kmc"\nn_frames = 10\nframe_time_s = 100.0\n'
        "dose_rate_e_per_A2_s = 1e9\n",
        "simulate.kmc",
        ["`dose_rate_e_per_A2_s` × `frame_time_s` = 1e+11", "1e+09", "frame time 100 s"],
    ),
    # hours of kinetic Monte Carlo: 1000 frames of 10 s at 800 K on a 40 Å cube
    "kmc_cost": (
        NC.format(edge=40.0)
        + '[[step]]\nrun = "simulate.kmc"\nn_frames = 1000\nframe_time_s = 10.0\n'
        "dose_rate_e_per_A2_s = 100.0\ntemperature_K = 800.0\n",
        "simulate.kmc",
        [
            "kinetic Monte Carlo events",
            "`n_frames` = 1000",
            "`temperature_K` = 800 K",
            "`edge_A` = 40 Å",
        ],
    ),
    # the same in a heating series: only its 800 K run is too long
    "heating_cost": (
        NC.format(edge=40.0)
        + '[[step]]\nrun = "simulate.heating"\ntemperatures_K = [300.0, 800.0]\n'
        "n_frames = 1000\nframe_time_s = 10.0\ndose_rate_e_per_A2_s = 100.0\n",
        "simulate.heating",
        ["kinetic Monte Carlo events", "`temperature_K` = 800 K", "`n_frames` = 1000"],
    ),
    # a 15000 px image of the 300 Å crystal
    "haadf_size": (
        NC.format(edge=300.0) + '[[step]]\nrun = "simulate.haadf"\npixel_size_A = 0.02\n',
        "simulate.haadf",
        ["`pixel_size_A` = 0.02 Å", "`edge_A` = 300 Å", "8192 px"],
    ),
    "series_size": (
        NC.format(edge=300.0) + '[[step]]\nrun = "simulate.kmc"\nn_frames = 2\n\n'
        '[[step]]\nrun = "simulate.insitu_series"\npixel_size_A = 0.02\n',
        "simulate.insitu_series",
        ["`pixel_size_A` = 0.02 Å", "`edge_A` = 300 Å", "8192 px"],
    ),
    # an empty tilt series ("`angles_deg` is empty" when the step ran)
    "tilt_order": (
        '[[step]]\nrun = "simulate.tilt_series"\nangle_min_deg = 60.0\nangle_max_deg = -60.0\n',
        "simulate.tilt_series",
        ["`angle_min_deg` = 60°", "`angle_max_deg` = -60°"],
    ),
    "tilt_step": (
        '[[step]]\nrun = "simulate.tilt_series"\nangle_min_deg = -10.0\nangle_max_deg = 10.0\n'
        "angle_step_deg = 30.0\n",
        "simulate.tilt_series",
        ["`angle_step_deg` = 30°", "`angle_min_deg` = -10°", "`angle_max_deg` = 10°"],
    ),
}


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "a.toml"
    p.write_text(text, encoding="utf-8")
    return p


@pytest.mark.parametrize("case", sorted(CASES))
def test_run_check_refuses_the_combination(tmp_path, capsys, monkeypatch, case):
    text, step, fragments = CASES[case]
    cfg = _write(tmp_path, text)
    out = tmp_path / "new" / "run"
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(cfg), "--check", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"({step})" in err, err
    for f in fragments:
        assert f in err, (f, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.toml"]  # nothing written
    # the API refuses the same when the configuration is loaded
    with pytest.raises(ParameterError) as info:
        load_config(cfg)
    assert f"({step})" in str(info.value) and fragments[0] in str(info.value)


def test_a_run_refuses_before_the_first_step(tmp_path, capsys):
    # without --check too: the 40 Å crystal is not built into a run folder first
    cfg = _write(tmp_path, CASES["kmc_cost"][0])
    out = tmp_path / "run"
    assert main(["run", str(cfg), "-o", str(out), "--quiet"]) == 2
    assert "kinetic Monte Carlo events" in capsys.readouterr().err
    assert not out.exists()


def test_ordinary_runs_pass(tmp_path):
    # the defaults, a hot heating series and an image of a large crystal at a fine pixel
    text = (
        NC.format(edge=120.0) + '[[step]]\nrun = "simulate.haadf"\npixel_size_A = 0.05\n\n'
        '[[step]]\nrun = "simulate.kmc"\n\n'
        '[[step]]\nrun = "simulate.heating"\ntemperatures_K = [300.0, 450.0, 600.0]\n\n'
        '[[step]]\nrun = "simulate.insitu_series"\n\n'
        '[[step]]\nrun = "simulate.tilt_series"\nangle_min_deg = -5.0\nangle_max_deg = 5.0\n'
        "angle_step_deg = 10.0\n"
    )
    cfg = load_config(_write(tmp_path, text))
    assert len(cfg.steps) == 6


def test_the_step_estimate_is_the_one_the_kmc_refuses_on(monkeypatch):
    # run --check builds the crystal of simulate.nanocrystal and counts it as
    # degradation_kmc does, so it refuses exactly the runs the simulation would
    from perovstem.simulate import degradation_kmc, kmc, nanocrystal

    seen = []
    real = kmc._estimated_events
    monkeypatch.setattr(
        kmc, "_estimated_events", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1]
    )
    for edge, shape, term in ((20.0, "cube", "CsBr"), (25.0, "platelet", "PbBr2")):
        atoms = nanocrystal(edge, shape=shape, termination=term, rng=0)
        kw = dict(n_frames=3, frame_time_s=2.0, dose_rate_e_per_A2_s=300.0, temperature_K=310.0)
        degradation_kmc(atoms, rng=1, **kw)
        mine = kmc.estimated_events(kmc.crystal_counts(atoms), **kw)
        assert mine == pytest.approx(seen[-1], rel=1e-12)


def test_step_hook_names_the_step():
    from perovstem.pipeline import get_step

    step = get_step("simulate.kmc")
    params = step.resolve_params({"frame_time_s": 100.0, "dose_rate_e_per_A2_s": 1e9})
    with pytest.raises(ParameterError, match=r"^step `simulate.kmc`: `dose_rate_e_per_A2_s`"):
        step.check_params_together(params)
    step.check_params_together(step.resolve_params({}))  # the defaults pass


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        ("times_s = [0.0, 60.0, 120.0]\n", ["`times_s` = [0.0, 60.0, 120.0]", "2 tilt series"]),
        (
            "doses_e_per_A2 = [0.0]\n",
            ["`doses_e_per_A2` = [0.0] holds 1 values for the 2 tilt series"],
        ),
    ],
    ids=["times", "doses"],
)
def test_sequence_times_and_doses_match_the_wired_series(tmp_path, capsys, extra, fragments):
    # a wrong count failed only when the step ran, after the series had been read or made
    import numpy as np

    from perovstem._data import TiltSeries
    from perovstem.io import save_image

    rng = np.random.default_rng(0)
    for k in range(2):
        ts = TiltSeries(rng.random((5, 16, 16)), np.linspace(-60, 60, 5), 2.0)
        save_image(ts, tmp_path / f"t{k}.npz")
    cfg = _write(
        tmp_path,
        '[inputs]\nt0 = "t0.npz"\nt1 = "t1.npz"\n\n[[step]]\nrun = "tomo.sequence"\n'
        'inputs = { series = ["t0", "t1"] }\n' + extra,
    )
    assert main(["run", str(cfg), "--check"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "(tomo.sequence)" in err, err
    for f in fragments:
        assert f in err, (f, err)
    ok = _write(tmp_path, cfg.read_text().replace(extra, "times_s = [0.0, 60.0]\n"))
    assert main(["run", str(ok), "--check"]) == 0


def test_unknown_atmosphere_is_refused_at_check(tmp_path: Path, capsys):
    """`simulate.kmc`'s gas is checked against the simulator's list when the file is read
    (it reached `degradation_kmc` only when the step ran)."""
    cfg = tmp_path / "gas.toml"
    cfg.write_text(
        NC.format(edge=30.0) + '[[step]]\nrun = "simulate.kmc"\natmosphere = "argon"\n',
        encoding="utf-8",
    )
    with pytest.raises(ParameterError, match=r"`atmosphere` must be one of .*'Ar'.*'argon'"):
        load_config(cfg, check_files=False)
    assert main(["run", "--check", str(cfg)]) == 2
    assert "simulate.kmc" in capsys.readouterr().err


def test_tilt_series_stack_size_is_refused_at_check(tmp_path: Path, capsys):
    """0.1° steps at 8192² px: every value within its own bounds, 0.75 TB together."""
    cfg = tmp_path / "tilt.toml"
    cfg.write_text(
        '[[step]]\nrun = "simulate.tilt_series"\nangle_step_deg = 0.1\nsize_px = 8192\n',
        encoding="utf-8",
    )
    with pytest.raises(ParameterError, match=r"`angle_step_deg` and `size_px`: 1401 projections"):
        load_config(cfg, check_files=False)
    assert main(["run", "--check", str(cfg)]) == 2
    assert "simulate.tilt_series" in capsys.readouterr().err
