"""A dose (or gain) far too low for the frames' counts is said (issue: a series given
100 e⁻/Å² for frames recorded at 5000 read 5894 Pb⁰ atoms in a crystal of 1000 Pb)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def series():
    from perovstem.simulate import degradation_kmc, insitu_series, nanocrystal

    tr = degradation_kmc(
        nanocrystal(edge_A=30.0, rng=0), n_frames=4, frame_time_s=1.0,
        dose_rate_e_per_A2_s=2e3, rng=1,
    )  # fmt: skip
    s, _ = insitu_series(tr, pixel_size_A=0.5, shape=(96, 96), rng=2)
    return s


@pytest.mark.parametrize(("scale", "said"), [(1.0, False), (0.2, False), (1 / 200, True)])
def test_dose_too_low_for_the_counts_is_noted(series, scale, said):
    """The true dose and one 5x too low pass (the brightest region holds a few % of the
    incident electrons: only an impossible > 1 is said); one 200x too low is noted with
    its factor."""
    from perovstem.insitu import analyze_series

    dose = np.asarray(series.dose_e_per_A2, float) * scale
    res = analyze_series(series.replace(dose_e_per_A2=dose))
    notes = [n for n in res.notes if "detected electrons per incident electron" in n]
    assert len(notes) == int(said), res.notes
    if said:
        factor = float(notes[0].split("counts ")[1].split(" detected")[0])
        assert 1.0 < factor < 200 * 0.2, notes[0]  # the brightest region: a few % of the beam
        assert "dose or the gain is at least" in notes[0]
