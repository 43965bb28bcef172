"""Shot noise at absurd doses: the normal limit instead of a numpy error."""

from __future__ import annotations

import numpy as np
import pytest

from perovstem.errors import ParameterError
from perovstem.simulate._noise import shot_noise


def test_poisson_below_the_limit_is_numpys_stream():
    lam = np.full((8, 8), 3.5)
    a = shot_noise(lam, np.random.default_rng(4))
    b = np.random.default_rng(4).poisson(lam).astype(float)
    np.testing.assert_array_equal(a, b)  # seeded simulations are unchanged


def test_huge_means_use_the_normal_limit():
    lam = np.array([5.0, 1e20, 1e25])
    out = shot_noise(np.tile(lam, (4000, 1)), np.random.default_rng(0))
    assert np.all(out[:, 0] == np.round(out[:, 0]))  # still Poisson counts where small
    rel = out[:, 1:] / lam[1:] - 1.0
    # N(λ, λ): relative spread 1/sqrt(λ) (1e-10, 3e-13), mean unbiased
    np.testing.assert_allclose(rel.std(axis=0), 1 / np.sqrt(lam[1:]), rtol=0.1)
    with pytest.raises(ParameterError, match="not finite"):
        shot_noise(np.array([np.inf]), np.random.default_rng(0))


def test_haadf_image_at_a_huge_dose_runs_and_an_absurd_one_is_refused():
    """Shot noise stays finite at the largest dose the API accepts (1e10 e⁻/Å², 2.5e9
    electrons per 0.5 Å pixel); 1e30 is refused naming the parameter (it used to run)."""
    from perovstem.simulate import haadf_image, nanocrystal

    crystal = nanocrystal(edge_A=20.0, rng=0)
    img, _ = haadf_image(crystal, pixel_size_A=0.5, dose_e_per_A2=1e10, rng=1)
    assert np.all(np.isfinite(img.data)) and img.data.max() > 0
    with pytest.raises(ParameterError, match="dose_e_per_A2"):
        haadf_image(crystal, pixel_size_A=0.5, dose_e_per_A2=1e30, rng=1)
