"""Built-in steps chained on simulated data (ground truth), without the demo's shortcuts."""

from __future__ import annotations

import tomllib

import numpy as np
import pytest

from perovstem.io import read_table
from perovstem.pipeline import get_step, parse_config, run_pipeline

NEEDED = ("simulate.nanocrystal", "simulate.haadf", "atoms.fit", "atoms.count")


@pytest.mark.parametrize("seed", [1, 7])
def test_find_fit_count_on_simulated_image(tmp_path, seed):
    """Columns found without the truth positions, fitted and counted; Cs counts exact."""
    if not all(get_step(n).available for n in NEEDED):
        pytest.skip("simulate/atoms steps not available in this version")
    text = f"""
[run]
name = "image"
seed = {seed}
[[step]]
run = "simulate.nanocrystal"
edge_A = 30.0
view3d = false
[[step]]
run = "simulate.haadf"
pixel_size_A = 0.25
dose_e_per_A2 = 50000.0
[[step]]
run = "atoms.fit"
[[step]]
run = "atoms.count"
method = "hybrid"
inputs = {{ columns = "fit.columns", truth = "haadf.truth" }}
"""
    cfg = parse_config(tomllib.loads(text), source="image.toml", text=text)
    r = run_pipeline(cfg, out=tmp_path / "run", quiet=True, scheduler="serial")
    assert [s.status for s in r.steps] == ["ran"] * 4, [s.message for s in r.steps]
    counts = read_table(tmp_path / "run" / "tables" / "count.counts.parquet")
    truth = read_table(tmp_path / "run" / "tables" / "haadf.truth.parquet")
    # the finder found the Pb-Br and Cs columns of the truth (within 0.5 Å)
    for t in ("PbBr", "Cs"):
        assert (counts["type"] == t).sum() == (truth["type"] == t).sum()
    cs = counts[counts["type"] == "Cs"]
    assert cs["n_atoms_truth"].notna().all()
    assert np.mean(cs["n_atoms"].to_numpy(float) == cs["n_atoms_truth"].to_numpy(float)) >= 0.95
