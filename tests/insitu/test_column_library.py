"""Per-column atom counting of analyze_series with the fitted-SCS library (no inverse crime).

The library (:func:`perovstem.atoms.fitted_library.fitted_scs_library`) is built from
slabs imaged with the default probe (σ 0.33 Å); the series here are 3 nm KMC
nanocrystals (builder cubes, not the library's slabs), imaged with other probes (0.30 and
0.37 Å), drift and jitter, and their own noise seeds.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_analysis import column_run

from perovstem import ParameterError


@pytest.fixture(scope="module")
def unseen_runs(kmc_imaged):
    out = []
    for rate, probe, seed, n_frames in ((5e3, 0.30, 24, 6), (4e3, 0.37, 25, 5)):
        tr, s, truth = kmc_imaged(
            30.0,
            rate=rate,
            seed=seed,
            n_frames=n_frames,
            pixel_size_A=0.5,
            drift_A_per_s=(0.5, 0.3),
            jitter_A=0.3,
            probe_sigma_A=probe,
            rng=seed + 100,
        )
        out.append(column_run(tr, s, truth))
    return out


def test_column_counts_with_fitted_library_on_unseen_series(unseen_runs):
    """First-frame counts, per-column losses and loss totals of every column type.

    Measured (seeds fixed), 5·10³ e⁻/Å²/s, probe 0.30 Å: first frame exact Pb–Br 0.79,
    Cs 0.89, Br 0.75; losses within ±1 1.00, 1.00, 0.83; totals 86/87, 105/110, 126/118
    over frames 0–4 — frame 5's drift is flagged and really 3 px off, so it is left out;
    counted through that wrong drift the Br losses were 246/152, ±1 0.38
    (tabulated library and per-frame widths, before, all 6 frames: ±1 0.90, 0.65, 0.38;
    totals 91, 157, 55).  4·10³ e⁻/Å²/s, probe 0.37 Å: first frame 0.78, 0.86, 0.83; ±1 1.00, 0.97, 0.90;
    totals 56/59, 46/45, 93/87.  Not tested: at 3·10³ e⁻/Å² per frame the Br losses are
    still under-counted (41/90 and 44/72 on two series; before 25/90 and 3/72).

    The KMC realisation depends on the CPU's numeric kernels, so the figures are pooled over
    the two series: on an AVX-512 machine first frame exact 0.74 / 0.88 / 0.71 (per series
    Pb–Br 0.69 and 0.79, Br 0.70 and 0.71), ±1 1.00 / 0.99 / 0.87, totals 147/146,
    152/155, 217/205; with AVX2 kernels 0.79 / 0.88 / 0.71 (Br per series 0.62 and 0.81),
    ±1 0.97 / 0.99 / 0.81, totals 153/167, 237/244, 208/239.  Br first-frame counts are
    the weakest (0.62–0.83 per series), hence their lower bound.
    """
    pooled: dict[str, list[np.ndarray]] = {}
    for res, n0, n1 in unseen_runs:
        c = res.columns
        assert c.attrs["hmm_model"] == "loss"
        # every frame with an unreliable drift is checked against the column reference and
        # counted only if it lies within 0.25 px of it; the result says which were left out
        bad = res.drift.loc[~res.drift["drift_reliable"], "frame"].tolist()
        checked = c.attrs["drift_checked_frames"]
        assert sorted(checked) == bad
        assert all((k in c.attrs["frames"]) == (v <= 0.25) for k, v in checked.items())
        # frames beyond 0.25 px of the column reference are left out and said so (on one
        # realisation frame 5 of the first series was registered 2.6-3 px off; on another it
        # was flagged but 0.22 px from the reference, so counted)
        left_out = [k for k, v in checked.items() if v > 0.25]
        if left_out:
            assert any(f"column counts leave out {len(left_out)} frame" in n for n in res.notes)
        lost = c["atoms_lost"].to_numpy()
        for typ in ("PbBr", "Cs", "Br"):
            m = (c["type"] == typ).to_numpy()
            assert m.sum() > 15
            got = np.c_[c["n_atoms_first"].to_numpy()[m], n0[m], lost[m], (n0 - n1)[m]]
            pooled.setdefault(typ, []).append(got)
    for typ, exact_min in (("PbBr", 0.7), ("Cs", 0.7), ("Br", 0.65)):
        first, true0, lost, true_lost = np.concatenate(pooled[typ]).T
        assert np.mean(first == true0) >= exact_min, typ
        assert np.mean(np.abs(lost - true_lost) <= 1) >= 0.8, typ
        assert lost.sum() == pytest.approx(true_lost.sum(), rel=0.15), typ


@pytest.fixture(scope="module")
def small_series():
    from perovstem.simulate import degradation_kmc, insitu_series, nanocrystal

    tr = degradation_kmc(
        nanocrystal(20.0, rng=1),
        n_frames=3,
        frame_time_s=1.0,
        dose_rate_e_per_A2_s=3e3,
        temperature_K=300.0,
        rng=1,
    )
    return insitu_series(tr, pixel_size_A=0.5, rng=1)[0]


def test_column_options_library_choices(small_series):
    from perovstem.insitu import analyze_series
    from perovstem.simulate import scs_library

    s = small_series
    kw = {"columns": True, "summary": False, "phase_check": False, "crystal": False}
    for opts, key in (
        ({"library": "abtem"}, "library"),
        ({"library_options": {"shape": (9, 9)}}, "library_options"),
        ({"refine": "all"}, "refine"),
        ({"width": "column"}, "width"),
    ):
        with pytest.raises(ParameterError, match=key):
            analyze_series(s, column_options=opts, **kw)
    # the tabulated library stays available, by name or as a user library
    tab = {t: scs_library(t, 20) for t in ("PbBr", "Br", "Cs")}
    a = analyze_series(s, column_options={"library": "table"}, **kw).columns
    b = analyze_series(s, column_options={"library": tab}, **kw).columns
    assert a["n_atoms_first"].tolist() == b["n_atoms_first"].tolist()
    # a column type without a fitted library needs one given
    with pytest.raises(ParameterError, match="PbI"):
        analyze_series(
            s,
            column_options={"types": ("PbBr", "PbI"), "positions": _with_type(a, "PbI")},
            **kw,
        )


def _with_type(cols, name):
    """The found columns with the Br ones renamed (a type the fitted library lacks)."""
    pos = cols[["x_A", "y_A", "type"]].copy()
    pos.loc[pos["type"] == "Br", "type"] = name
    return pos
