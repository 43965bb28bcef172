"""benchmarks/bench_tomo.py runs with the ASTRA comparison switched off."""

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_tomo.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_tomo", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_no_astra_slices_skips_the_astra_ratio():
    # `--astra-slices 0` divided by zero (time per ASTRA slice over 0 slices)
    res = _bench().run_main(16, 2, 0)
    assert res["slices"] == []
    assert res["peer_astra"]["skipped"] == "--astra-slices 0"
    assert "time_astra_1core_cpu_over_ours_cpu" not in res["ratio"]
    # the ratios that do not need ASTRA are still reported
    assert res["ratio"]["error_tv_over_sirt_ours"] > 0
