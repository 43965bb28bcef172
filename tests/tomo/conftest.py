"""Simulated tilt series shared by the tomography tests (small, fast)."""

from __future__ import annotations

import numpy as np
import pytest

from perovstem.simulate.tilt import nanocrystal_phantom, tilt_series

ANGLES_70 = np.arange(-70.0, 71.0, 2.0)


def make_case(
    seed: int,
    *,
    n: int = 48,
    px: float = 2.5,
    edge: float = 60.0,
    step: float = 2.0,
    tilt: float = 70.0,
    counts: float = 20.0,
):
    ph = nanocrystal_phantom(edge, rng=seed, inclusion_radius_A=(5.0, 8.0))
    ang = np.arange(-tilt, tilt + 1e-9, step)
    ts, tr = tilt_series(
        ph,
        ang,
        shape=(n, n),
        pixel_size_A=px,
        counts_per_A=counts,
        truth_volume=True,
        rng=seed + 100,
    )
    # truth in reconstruction units: counts per voxel length
    tr["volume_counts"] = tr["volume"] * counts * px
    return ph, ts, tr


@pytest.fixture(scope="session")
def case_a():
    return make_case(1)


@pytest.fixture(scope="session")
def case_b():
    return make_case(2, n=40, px=3.0, step=3.0, tilt=60.0, counts=10.0)
