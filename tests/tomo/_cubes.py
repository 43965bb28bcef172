"""The compact shifted cube tilt series of the alignment tests (shared by
``tests/tomo/test_align.py`` and ``benchmarks/bench_tomo.py``'s ``align`` timing; no pytest
import)."""

from __future__ import annotations

import numpy as np

from perovstem.simulate.tilt import nanocrystal_phantom, tilt_series


def clean_cube(seed: int, *, n: int = 48, axis: float = 0.0, shift: float = 0.0):
    """A 70 Å nanocrystal with one inclusion, tilted ±65° in 2.5° steps on an ``n``² field
    of 2 Å pixels; ``shift`` is the sd (px) of random per-tilt shifts, ``axis`` the tilt
    axis (°)."""
    ang = np.arange(-65.0, 65.1, 2.5)
    ph = nanocrystal_phantom(70.0, r110=3.0, r111=3.0, n_inclusions=1, rng=seed)
    sh = np.random.default_rng(seed + 1000).normal(0.0, shift, (ang.size, 2)) if shift else None
    ts, _ = tilt_series(
        ph,
        ang,
        shape=(n, n),
        pixel_size_A=2.0,
        counts_per_A=10.0,
        background=3.0,
        shifts_px=sh,
        tilt_axis_deg=axis,
        rng=seed + 1,
    )
    return ts
