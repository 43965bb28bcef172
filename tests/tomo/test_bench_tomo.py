"""benchmarks/bench_tomo.py runs with the ASTRA comparison switched off."""


def test_no_astra_slices_skips_the_astra_ratio(bench_module):
    # `--astra-slices 0` divided by zero (time per ASTRA slice over 0 slices)
    res = bench_module("bench_tomo").run_main(16, 2, 0)
    assert res["slices"] == []
    assert res["peer_astra"]["skipped"] == "--astra-slices 0"
    assert "time_astra_1core_cpu_over_ours_cpu" not in res["ratio"]
    # the ratios that do not need ASTRA are still reported
    assert res["ratio"]["error_tv_over_sirt_ours"] > 0
