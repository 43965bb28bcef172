"""Tomography plots draw without error and respect the ax=None contract."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from perovstem.errors import DataError  # noqa: E402
from perovstem.plot.tomo import (  # noqa: E402
    plot_alignment,
    plot_facets,
    plot_orthoslices,
    plot_sequence,
)
from perovstem.tomo import Alignment  # noqa: E402


def test_plots():
    import matplotlib.pyplot as plt

    v = np.random.default_rng(0).random((6, 8, 10))
    axs = plot_orthoslices(v, voxel_size_A=2.0)
    assert len(axs) == 3 and axs[0].get_images()[0].get_array().shape == (8, 10)
    ang = np.arange(-60.0, 61.0, 30.0)
    al = Alignment(np.ones((5, 2)), -2.5)
    fig, ax = plt.subplots()
    assert plot_alignment(al, ang, reference_px=np.zeros((5, 2)), ax=ax) is ax
    assert len(ax.lines) == 4
    tab = pd.DataFrame(
        {
            "family": ["100", "110", "111", "other"],
            "fraction": [0.6, 0.2, 0.1, 0.1],
            "fraction_corrected": [0.62, 0.2, 0.1, 0.08],
            "fraction_err": [0.01] * 4,
            "missing_wedge": [True, False, False, False],
        }
    )
    assert len(plot_facets(tab, truth=tab).patches) == 8
    seq = pd.DataFrame(
        {
            "step": [0, 1],
            "cumulative_dose_e_per_A2": [1e4, 2e4],
            "frac_100": [0.6, 0.5],
            "frac_110": [0.2, 0.25],
            "frac_111": [0.1, 0.1],
            "frac_other": [0.1, 0.15],
            "volume_A3": [1e5, 9e4],
            "cluster_volume_A3": [1e3, 2e3],
        }
    )
    assert len(plot_sequence(seq).lines) == 4
    plt.close("all")
    with pytest.raises(DataError):
        plot_orthoslices(np.zeros((3, 3)))
