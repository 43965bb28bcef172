"""The KMC cost check of ``perovstem run --check``: crystals above 120 Å are counted (they
were not checked at all), the CPU-time range of :func:`perovstem.simulate.kmc.estimated_cpu_s`
holds for runs it was not set on, and a long hot run is flagged with that range."""

from __future__ import annotations

import time

import pytest

from perovstem.cli.main import main
from perovstem.errors import ParameterError
from perovstem.pipeline import get_step, load_config

NC = (
    '[[step]]\nrun = "simulate.nanocrystal"\nedge_A = {edge}\nshape = "{shape}"\nview3d = false\n\n'
)
KMC = (
    '[[step]]\nrun = "simulate.kmc"\nn_frames = {nf}\nframe_time_s = {ft}\n'
    "dose_rate_e_per_A2_s = 100.0\ntemperature_K = {t}\n"
)


@pytest.mark.parametrize(("edge", "shape"), [(160.0, "cube"), (160.0, "platelet")])
def test_large_crystal_counts_extrapolated_within_ten_percent(edge, shape):
    from perovstem.pipeline.steps.simulate import _crystal_counts
    from perovstem.simulate import kmc, nanocrystal

    p = get_step("simulate.nanocrystal").resolve_params({"edge_A": edge, "shape": shape})
    est, about = _crystal_counts(p)
    built = kmc.crystal_counts(nanocrystal(edge, shape=shape, rng=0))
    assert about == "about "
    for key in ("n_host", "n_br_surface", "n_pb"):
        assert est[key] == pytest.approx(built[key], rel=0.1), key


def test_large_crystal_run_is_refused_at_check(tmp_path, capsys):
    # 100 000 frames of 20 s at 800 K on a 300 Å cube: ~1.7e10 events from below; before,
    # a crystal above 120 Å was not checked and the run was refused only when it started
    cfg = tmp_path / "a.toml"
    cfg.write_text(NC.format(edge=300.0, shape="cube") + KMC.format(nf=100000, ft=20.0, t=800.0))
    assert main(["run", str(cfg), "--check"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "kinetic Monte Carlo events" in err and "about" in err and "`edge_A` = 300 Å" in err
    with pytest.raises(ParameterError, match="kinetic Monte Carlo events"):
        load_config(cfg)


def test_long_hot_run_is_flagged_short_run_is_not(tmp_path, capsys):
    # 1000 frames of 10 s at 600 K on a 40 Å cube: at least 23 s, up to ~9 h of CPU
    hot = tmp_path / "hot.toml"
    hot.write_text(NC.format(edge=40.0, shape="cube") + KMC.format(nf=1000, ft=10.0, t=600.0))
    assert main(["run", str(hot), "--check"]) == 0  # a warning, not a refusal
    err = " ".join(capsys.readouterr().err.split())
    assert "WARNING: the kinetic Monte Carlo run of `n_frames` = 1000" in err, err
    assert "may take up to" in err and "at least" in err and "`temperature_K` = 600 K" in err
    # the same on a 300 Å cube (not checked before): 10 000 frames at 800 K
    big = tmp_path / "big.toml"
    big.write_text(NC.format(edge=300.0, shape="cube") + KMC.format(nf=10000, ft=10.0, t=800.0))
    assert main(["run", str(big), "--check"]) == 0
    assert "may take up to" in capsys.readouterr().err
    # at most 14 min (450 K: measured 4.4 s CPU on seed 7) and 300 K, 40 frames
    for t, nf in ((450.0, 1000), (300.0, 40)):
        short = tmp_path / "short.toml"
        short.write_text(NC.format(edge=40.0, shape="cube") + KMC.format(nf=nf, ft=10.0, t=t))
        assert main(["run", str(short), "--check"]) == 0
        assert "WARNING" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("edge", "temp", "phi", "n_frames"),
    # configurations not among the runs the cost constants were measured on
    [(30.0, 390.0, 500.0, 10), (22.0, 430.0, 200.0, 10), (40.0, 340.0, 2000.0, 8)],
)
def test_cpu_time_within_the_estimated_range(edge, temp, phi, n_frames):
    from perovstem.simulate import degradation_kmc, kmc, nanocrystal

    atoms = nanocrystal(edge, rng=0)
    kw = dict(n_frames=n_frames, frame_time_s=1.0, dose_rate_e_per_A2_s=phi, temperature_K=temp)
    degradation_kmc(
        nanocrystal(15.0, rng=0),
        n_frames=2,
        frame_time_s=1.0,
        dose_rate_e_per_A2_s=100.0,
        temperature_K=300.0,
        rng=0,
    )  # compiled
    crystal = kmc.crystal_counts(atoms)
    events = kmc.estimated_events(crystal, **kw)
    lo, hi = kmc.estimated_cpu_s(crystal, events, n_frames=n_frames)
    t0 = time.process_time()
    tr = degradation_kmc(atoms, rng=11, **kw)
    cpu = time.process_time() - t0
    assert lo <= cpu <= hi, (lo, cpu, hi)
    steps = int(tr.frame_table["n_steps"].sum())
    # (no lower bound on the steps: a small low-dose run can take none, e.g. 20 Å, 350 K,
    # 300 e⁻/Å²/s, 5 frames: 0 steps against 3.8e4 estimated; its CPU time is the setup)
    assert steps <= 80.0 * events, (events, steps)
