"""plot_facet_evolution / sequence_axis (perovstem.plot.fourd)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("matplotlib")

from perovstem.errors import DataError, ParameterError  # noqa: E402
from perovstem.plot.fourd import plot_facet_evolution, sequence_axis  # noqa: E402


def _table(**extra):
    t = pd.DataFrame(
        {
            "step": [0, 1, 2],
            "time_s": [0.0, 60.0, np.nan],
            "cumulative_dose_e_per_A2": [1e3, 2e3, 3e3],
            "volume_A3": [2e5, 1.7e5, 1.4e5],
            "cluster_volume_A3": [np.nan, 3e3, 4e3],
            "frac_100": [0.7, 0.6, 0.5],
            "frac_110": [0.2, 0.3, 0.4],
            "frac_111": [0.1, 0.1, 0.1],
            "frac_other": [0.0, 0.0, 0.0],
        }
    )
    return t.assign(**extra)


def test_axis_choice():
    t = _table()
    assert sequence_axis(t) == "cumulative_dose_e_per_A2"
    assert sequence_axis(t.drop(columns="cumulative_dose_e_per_A2")) == "step"  # a NaN time
    assert (
        sequence_axis(t.assign(time_s=[0.0, 1.0, 2.0]).drop(columns="cumulative_dose_e_per_A2"))
        == "time_s"
    )
    with pytest.raises(DataError, match="time_s"):
        sequence_axis(t, "time_s")
    with pytest.raises(ParameterError, match="`x`"):
        sequence_axis(t, "volume")


def test_facet_evolution_draws_facets_volume_truth_and_errors():
    t = _table(err_100=[0.05] * 3, err_110=[0.05] * 3, err_111=[0.05] * 3, err_other=[0.0] * 3)
    ax_f, ax_v = plot_facet_evolution(t, truth=_table(), title="x")
    # "other" is all zero (polyhedron method) and left out; 3 error-bar families
    assert len(ax_f.containers) == 3
    xs = ax_f.containers[0].lines[0].get_xdata()
    np.testing.assert_allclose(xs, [1e3, 2e3, 3e3])
    assert ax_v.get_xlabel() == "cumulative dose (e⁻/Å²)"
    # volume, clusters and truth; volumes in nm³
    assert len(ax_v.lines) == 3
    np.testing.assert_allclose(ax_v.lines[0].get_ydata(), [200.0, 170.0, 140.0])
    ax_f, _ = plot_facet_evolution(_table(frac_other=[0.1, 0.2, 0.3]), x="step")
    assert len(ax_f.lines) == 4
    with pytest.raises(DataError, match="frac_110"):
        plot_facet_evolution(_table().drop(columns="frac_110"))
