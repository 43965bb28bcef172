"""A pipeline on the real FEI HAADF tilt series (ETSpy test data): load, bin, align, reconstruct."""

from __future__ import annotations

import hashlib
import json

import pytest

from perovstem.pipeline import run_pipeline


@pytest.mark.shared
def test_real_tilt_series_pipeline(tomo_data, tmp_path):
    mrc = tomo_data / "etspy_needle" / "HAADF.mrc"
    cfg = tmp_path / "needle.toml"
    cfg.write_text(f"""
[run]
name = "needle"
title = "FIB needle <real data>"
[inputs]
tilt = "{mrc}"
[[step]]
run = "tomo.bin"
factor = 8
[[step]]
run = "tomo.align"
[[step]]
run = "tomo.reconstruct"
n_iter = 10
view3d = false
[[step]]
run = "tomo.segment"
n_classes = 2
""")
    r = run_pipeline(cfg, out=tmp_path / "run", quiet=True, scheduler="serial")
    assert [s.status for s in r.steps] == ["ran"] * 4, [s.message for s in r.steps]
    import mrcfile

    with mrcfile.open(tmp_path / "run" / "volumes" / "reconstruct.volume.mrc") as m:
        vol = m.data
    assert vol.ndim == 3 and vol.shape[1:] == (32, 32)  # 256 px binned x8
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert prov["inputs"]["tilt"]["sha256"] == hashlib.sha256(mrc.read_bytes()).hexdigest()
    vols = prov["steps"][-1]["report_items"]
    assert any(it["kind"] == "metric" and it["value"] > 0 for it in vols)
    html = r.report.read_text()
    assert "FIB needle &lt;real data&gt;" in html
