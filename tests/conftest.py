"""Shared fixtures: the ../shared/data folder (skipped cleanly when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[1]


def _shared_data() -> Path | None:
    env = os.environ.get("PEROVSTEM_SHARED_DATA")
    cand = Path(env) if env else _REPO.parent / "shared" / "data"
    return cand if cand.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ``../shared/data``; the test is skipped when it is absent."""
    path = _shared_data()
    if path is None:
        pytest.skip("../shared/data is absent (set PEROVSTEM_SHARED_DATA to point at it)")
    return path


@pytest.fixture(scope="session")
def statstem_data(shared_data: Path) -> Path:
    p = shared_data / "statstem"
    if not p.is_dir():
        pytest.skip(f"{p} is absent")
    return p


@pytest.fixture(scope="session")
def tomo_data(shared_data: Path) -> Path:
    p = shared_data / "tomo"
    if not p.is_dir():
        pytest.skip(f"{p} is absent")
    return p


@pytest.fixture(scope="session")
def bench_module():
    """``bench_module("bench_kinetics")``: the module ``benchmarks/<name>.py`` (the
    benchmarks are scripts, not a package), loaded once per session."""
    import importlib.util

    loaded: dict[str, object] = {}

    def load(name: str):
        if name not in loaded:
            path = _REPO / "benchmarks" / f"{name}.py"
            spec = importlib.util.spec_from_file_location(name, path)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            loaded[name] = mod
        return loaded[name]

    return load


@pytest.fixture(scope="session")
def diffusion_field():
    """``diffusion_field(temperature_K, seed, n_frames=24)``: ``(params, series, frame_time_s)``
    of Pb clusters diffusing on a 4 nm crystal, imaged (KMC + fast HAADF).

    The crystal (``seed``) carries 12 clusters of 12-29 atoms; only cluster diffusion runs
    (beam and thermal Br loss, Pb⁰ detachment off), so the mobility is the KMC's
    ``ν₀·exp(−E_a/k_B T)·n^(−4/3)`` hop rate.  The frame time is chosen so that a 20-atom
    cluster makes ~1 hop per frame (what an experimenter does to keep clusters trackable), at
    2000 e⁻/Å² per frame, with drift and 0.2 Å jitter; each seed is another field (crystal).
    """

    def make(temperature_K: float, seed: int, n_frames: int = 24):
        import numpy as np

        from perovstem.quantify.kinetics import K_B_EV_PER_K
        from perovstem.simulate import add_pb_cluster, degradation_kmc, insitu_series, nanocrystal
        from perovstem.simulate.kmc_params import KineticParameters

        p = KineticParameters(
            enable_desorption=False, enable_thermal_desorption=False, enable_detachment=False
        )
        rng = np.random.default_rng(seed)
        at = nanocrystal(edge_A=40.0, rng=seed)
        for i in range(12):
            site = ("corner", "edge", "face")[i % 3]
            at = add_pb_cluster(at, int(rng.integers(12, 30)), site=site, rng=rng)
        t = float(temperature_K)
        g1 = p.hop_prefactor_per_s * np.exp(-p.hop_activation_eV / (K_B_EV_PER_K * t))
        dt = 1.0 / (g1 * 20 ** (-4 / 3))
        tr = degradation_kmc(
            at,
            n_frames=n_frames,
            frame_time_s=dt,
            dose_rate_e_per_A2_s=2000.0 / dt,
            temperature_K=t,
            params=p,
            rng=seed + 100 * int(t),
        )
        drift = (0.3 / dt, -0.2 / dt)
        s, _ = insitu_series(
            tr, pixel_size_A=0.5, drift_A_per_s=drift, jitter_A=0.2, rng=seed + int(t)
        )
        return p, s, dt

    return make
