"""Smoke-and-content tests of the counting figures (Agg backend)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from perovstem.atoms import fit_hmm, gmm_sweep  # noqa: E402
from perovstem.errors import DataError  # noqa: E402
from perovstem.plot.counting import (  # noqa: E402
    plot_criteria,
    plot_gmm,
    plot_hmm_paths,
    plot_loss_rates,
)


def test_counting_plots():
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    n = rng.integers(1, 6, 300)
    x = np.abs(n + rng.normal(0, 0.12, n.size))
    sw = gmm_sweep(x, max_components=8)
    ax = plot_criteria(sw)
    assert len(ax.get_lines()) >= 4  # 3 curves + minima/selection
    ax = plot_gmm(x, sw.fit(sw.selected))
    assert len(ax.get_lines()) == sw.selected + 1
    lib = np.arange(1, 12) * 1.0
    h = np.repeat(rng.integers(5, 10, 20)[None, :], 6, axis=0)
    h[3:, :5] -= 1
    res = fit_hmm(h + rng.normal(0, 0.1, h.shape), lib, model="dose", dose_e_per_A2=1e4)
    ax = plot_hmm_paths(res, dose_e_per_A2=1e4)
    assert ax.get_xlabel().startswith("cumulative dose")
    ax = plot_loss_rates(res)
    assert ax.get_ylabel().startswith("atoms lost")
    free = fit_hmm(h + rng.normal(0, 0.1, h.shape), lib)
    with pytest.raises(DataError, match="loss rates"):
        plot_loss_rates(free)
    plt.close("all")
