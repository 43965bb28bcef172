"""``atoms.count``: the simulated library's surface termination."""

from __future__ import annotations

import tomllib

import numpy as np

from perovstem.io import read_table
from perovstem.pipeline import parse_config, run_pipeline


def _count(tmp_path, termination):
    text = f"""
[run]
name = "t"
seed = 3
report = false
[[step]]
run = "simulate.nanocrystal"
id = "nc"
edge_A = 30.0
view3d = false
[[step]]
run = "simulate.haadf"
id = "haadf"
inputs = {{ atoms = "nc.atoms" }}
pixel_size_A = 0.3
dose_e_per_A2 = 20000.0
[[step]]
run = "atoms.fit"
inputs = {{ image = "haadf.image", positions = "haadf.truth" }}
[[step]]
run = "atoms.count"
method = "library"
library_termination = "{termination}"
"""
    cfg = parse_config(tomllib.loads(text), source="t.toml", text=text)
    run_pipeline(cfg, out=tmp_path / termination, quiet=True, scheduler="serial")
    return read_table(tmp_path / termination / "tables" / "count.counts.parquet")


def test_count_step_library_termination(tmp_path):
    """library_termination reaches scs_library: with CsBr faces a Pb-Br column of n Pb
    holds n + 1 Br, so every library value it is compared with is higher than the "mixed"
    (default, earlier) library's for the same count.  Old code: no such parameter."""
    mixed, csbr = _count(tmp_path, "mixed"), _count(tmp_path, "CsBr")
    assert csbr.attrs["library"]["termination"] == "CsBr"
    from perovstem.simulate import scs_library

    pb = (csbr["type"] == "PbBr").to_numpy()
    n = csbr["n_atoms"].to_numpy(float)[pb].astype(int)
    lib_c = scs_library("PbBr", 40, termination="CsBr")["scs_A2"].to_numpy()
    lib_m = scs_library("PbBr", 40)["scs_A2"].to_numpy()
    np.testing.assert_allclose(csbr["scs_library"].to_numpy(float)[pb], lib_c[n])
    assert (lib_c[n] > lib_m[n]).all()
    assert mixed.attrs["library"]["termination"] == "mixed"
