"""Tests of the KMC truth plots (perovstem.plot.kmc)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from ase import Atoms

from perovstem.errors import DataError
from perovstem.plot.kmc import plot_cluster_histories, plot_kmc_fractions
from perovstem.simulate.kmc import degradation_kmc
from perovstem.simulate.kmc_lattice import simple_cube


@pytest.fixture(scope="module")
def traj():
    sym, pos = simple_cube(6)
    return degradation_kmc(
        Atoms(symbols=list(sym), positions=pos),
        n_frames=15,
        frame_time_s=1.0,
        dose_rate_e_per_A2_s=4e3,
        rng=3,
    )


def test_fractions_plot(traj):
    ax = plot_kmc_fractions(traj.frame_table, title="t")
    lines = ax.get_lines()
    assert len(lines) == 3
    br = lines[0].get_ydata()
    ft = traj.frame_table
    assert br[0] == 1.0
    np.testing.assert_allclose(br[1:], ft["n_Br"] / ft.attrs["initial"]["n_Br"])
    np.testing.assert_allclose(lines[1].get_ydata()[1:], ft["n_Pb0"] / 216)
    np.testing.assert_allclose(lines[0].get_xdata()[1:], ft["cumulative_dose_e_per_A2"])
    bare = pd.DataFrame(ft.to_dict("list"))  # no attrs["initial"]
    with pytest.raises(DataError, match="initial"):
        plot_kmc_fractions(bare)


def test_cluster_histories_plot(traj):
    ax = plot_cluster_histories(traj.clusters, traj.events, frame_table=traj.frame_table)
    n_ids = traj.clusters["cluster_id"].nunique()
    solid = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-"]
    dotted = [ln for ln in ax.get_lines() if ln.get_linestyle() == ":"]
    assert len(solid) == n_ids
    n_merges = int((traj.events["kind"] == "merge").sum())
    assert n_merges > 0 and 0 < len(dotted) <= 2 * n_merges
    assert ax.get_xlabel().startswith("cumulative dose")
    with pytest.raises(DataError, match="n_atoms"):
        plot_cluster_histories(traj.clusters.drop(columns=["n_atoms"]))
