"""Tests of the streaming series writer (perovstem.io.series_stream) and its CLI use."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from perovstem.errors import FileFormatError, OutputExistsError, ParameterError
from perovstem.io import load, save_image
from perovstem.io.series_stream import save_series_streaming


@pytest.fixture(scope="module")
def lazy_series():
    from perovstem.simulate import degradation_kmc, insitu_series
    from perovstem.simulate.kmc_lattice import simple_cube

    sym, pos = simple_cube(4)
    tr = degradation_kmc(
        Atoms(symbols=list(sym), positions=pos),
        n_frames=5,
        frame_time_s=1.0,
        dose_rate_e_per_A2_s=2e3,
        temperature_K=[300, 310, 320, 330, 340],
        atmosphere="O2",
        pressure_Pa=20.0,
        rng=0,
    )
    s, _ = insitu_series(tr, lazy=True, rng=1)
    return s


def test_stream_equals_save_image(lazy_series, tmp_path):
    seen = []
    save_series_streaming(lazy_series, tmp_path / "a.zarr", progress=lambda k, n: seen.append(k))
    save_image(lazy_series, tmp_path / "b.zarr")
    a, b = load(tmp_path / "a.zarr"), load(tmp_path / "b.zarr")
    assert seen == list(range(5))
    np.testing.assert_array_equal(np.asarray(a.data), np.asarray(b.data))
    np.testing.assert_array_equal(np.asarray(a.data), lazy_series.data.compute())
    np.testing.assert_allclose(a.temperature_K, [300, 310, 320, 330, 340])
    assert a.gas == "O2" and np.all(a.pressure_Pa == 20.0)
    np.testing.assert_allclose(a.cumulative_dose_e_per_A2, lazy_series.cumulative_dose_e_per_A2)
    assert a.metadata["source"] == str(tmp_path / "a.zarr")
    assert a.metadata["original_source"] == "perovstem.simulate.insitu_series"


def test_stream_bad_input(lazy_series, tmp_path):
    with pytest.raises(FileFormatError, match="zarr"):
        save_series_streaming(lazy_series, tmp_path / "a.npz")
    with pytest.raises(ParameterError, match="Series"):
        save_series_streaming(np.zeros((2, 3, 3)), tmp_path / "a.zarr")
    save_series_streaming(lazy_series, tmp_path / "c.zarr")
    with pytest.raises(OutputExistsError):
        save_series_streaming(lazy_series, tmp_path / "c.zarr")


def test_cli_zarr_streams_same_frames_as_npz(tmp_path):
    from perovstem.cli.main import main

    args = [
        "simulate",
        "series",
        "--edge-A",
        "20",
        "--frames",
        "3",
        "--seed",
        "7",
        "--pixel-size-A",
        "1.0",
    ]
    assert main([*args, "-o", str(tmp_path / "s.zarr")]) == 0
    # same truth prefix "s": refused (it overwrote the first run's truth tables silently)
    assert main([*args, "-o", str(tmp_path / "s.npz")]) == 2
    assert main([*args, "-o", str(tmp_path / "s.npz"), "--truth", str(tmp_path / "n")]) == 0
    z, n = load(tmp_path / "s.zarr"), load(tmp_path / "s.npz")
    np.testing.assert_array_equal(np.asarray(z.data), np.asarray(n.data))
    assert (tmp_path / "s_clusters.parquet").exists() and (tmp_path / "n_clusters.parquet").exists()
