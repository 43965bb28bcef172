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


def make_sequence(seed: int, *, n: int = 44, n_steps: int = 3, dose: float = 7.5e3):
    """A 4-D case: one 60 Å NC eroding (faces recede, edges/corners round: {100} → {110})
    over ``n_steps`` tilt series of ±70°/5°, ``n``×``n`` px at 2.5 Å; the truth table is
    :func:`perovstem.simulate.degradation_phantoms`'."""
    from perovstem.simulate.tilt import degradation_tilt_series

    rng = np.random.default_rng(seed)
    ph = nanocrystal_phantom(
        60.0,
        rng=seed,
        r110=rng.uniform(1.2, 1.35),
        r111=rng.uniform(1.35, 1.6),
        inclusion_radius_A=(5.0, 7.0),
    )
    return degradation_tilt_series(
        ph,
        n_steps,
        np.arange(-70.0, 71.0, 5.0),
        dose_per_step_e_per_A2=dose,
        trajectory={"nucleation_per_dose": 0.0, "growth_A3_per_dose": 0.1},
        shape=(n, n),
        pixel_size_A=2.5,
        counts_per_A=20,
        rng=seed,
    )


@pytest.fixture(scope="session")
def sequence_files(tmp_path_factory):
    """Seed-0 sequence (a tune seed) written as t0.npz … t2.npz; returns (folder, files, truth)."""
    from perovstem.io import save_image

    d = tmp_path_factory.mktemp("fourd")
    series, truth = make_sequence(0)
    files = []
    for k, ts in enumerate(series):
        files.append(save_image(ts, d / f"t{k}.npz"))
    return d, files, truth


@pytest.fixture(scope="session")
def sequence_factory():
    """:func:`make_sequence` (a fixture: ``import conftest`` is ambiguous across folders)."""
    return make_sequence
