"""The KMC series of a ``bench_clusters.py`` case, set up as the host-bias benchmarks use it.

Shared by ``bench_masked_host_bias.py`` and ``bench_onhost_ceiling.py`` (both wrote it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "insitu"))

from _insitu_kmc import noise_free_parts  # noqa: E402

import bench_clusters as bc  # noqa: E402
from perovstem.insitu import estimate_lattice  # noqa: E402


def kmc_series(seed: int, c: dict) -> tuple:
    """12 imaged KMC frames of case ``c`` (seed ``seed``; drift (0.8, -0.5) Å/s, 0.3 Å
    jitter) → ``(tr, s, truth, render, data, la, ang, a_px)``: the trajectory, the series,
    the truth tables, the noise-free renderer, the frames as float, the lattice (Å, deg)
    of frame 0 and the lattice parameter in px."""
    px = c["px"]
    tr, s, truth = bc.kmc_imaged(
        c["edge"], rate=c["rate"], temperature_K=c["temp"], seed=seed, n_frames=12,
        pixel_size_A=px, drift_A_per_s=(0.8, -0.5), jitter_A=0.3, rng=seed,
    )  # fmt: skip
    render = noise_free_parts(tr, s, pixel_size_A=px, seed=seed)
    data = np.asarray(s.data, float)
    la, ang, _ = estimate_lattice(data[0], px)
    return tr, s, truth, render, data, la, ang, la / px
