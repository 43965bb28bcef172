"""Absurd parameters of the Python API: a ParameterError naming the parameter and value.

Each case raised a bare ValueError/OverflowError from ``int(nan)``/``int(inf)``, passed
NaN silently (a NaN compares False with every bound), or failed only after the slow part.
"""

from __future__ import annotations

import numpy as np
import pytest

from perovstem import Image
from perovstem.errors import ParameterError


@pytest.fixture(scope="module")
def tilt():
    from perovstem.simulate.tilt import nanocrystal_phantom, tilt_series

    ph = nanocrystal_phantom(40.0, rng=1)
    ts, _ = tilt_series(ph, np.arange(-60.0, 61.0, 15.0), shape=(32, 32), pixel_size_A=2.0, rng=0)
    return ts


@pytest.mark.parametrize(
    ("kw", "name"),
    [({"bin_factor": np.nan}, "bin_factor"), ({"bin_factor": 2.5}, "bin_factor")],
)
def test_align_checks_bin_factor_first(tilt, kw, name):
    from perovstem.tomo import align

    with pytest.raises(ParameterError, match=f"`{name}`.*{kw[name]!r}"):
        align(tilt, **kw)


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"n_classes": np.nan}, "n_classes"),
        ({"n_classes": np.inf}, "n_classes"),
        ({"sigma_px": np.nan}, "sigma_px"),
        ({"sigma_px": np.inf}, "sigma_px"),
    ],
)
def test_segment_bad_parameters(kw, name):
    from perovstem.tomo import segment

    vol = np.random.default_rng(0).random((8, 8, 8))
    with pytest.raises(ParameterError, match=f"`{name}`"):
        segment(vol, **kw)


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"smooth_A": np.nan}, "smooth_A"),
        ({"smooth_A": np.inf}, "smooth_A"),
        ({"min_atoms": np.nan}, "min_atoms"),
        ({"frame": 1.5}, "frame"),
        ({"frame": np.nan}, "frame"),
    ],
)
def test_detect_clusters_bad_parameters(kw, name):
    from perovstem.insitu import detect_clusters

    img = Image(np.random.default_rng(0).poisson(20.0, (48, 48)).astype(float), 0.5)
    with pytest.raises(ParameterError, match=f"`{name}`"):
        detect_clusters(img, **kw)


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"n_types": np.nan}, "n_types"),
        ({"cell": "cspbbr3_001", "presence_fraction": np.nan}, "presence_fraction"),
    ],
)
def test_find_columns_bad_parameters(kw, name):
    from perovstem.atoms import cspbbr3_001_cell, find_columns

    if "cell" in kw:
        kw = {**kw, "cell": cspbbr3_001_cell()}
    img = Image(np.random.default_rng(0).poisson(20.0, (64, 64)).astype(float), 0.25)
    with pytest.raises(ParameterError, match=f"`{name}`"):
        find_columns(img, **kw)


@pytest.mark.parametrize("azimuth", [np.nan, np.inf])
def test_nanocrystal_mistilt_azimuth_must_be_finite(azimuth):
    # NaN was accepted and made every atom position NaN (with a mistilt)
    from perovstem.simulate import nanocrystal

    with pytest.raises(ParameterError, match="`mistilt_azimuth_deg`"):
        nanocrystal(12.0, mistilt_deg=2.0, mistilt_azimuth_deg=azimuth, rng=0)


@pytest.mark.parametrize("px", [0.3, np.nan, "x"])
def test_pixel_size_given_with_an_image_must_agree(px):
    """``find_columns(img, pixel_size_A=0.3)`` on a 0.25 Å Image silently used 0.25 Å (a
    user recalibrating this way got the old calibration)."""
    from perovstem.atoms import find_columns, fit_columns, map_columns

    img = Image(np.random.default_rng(0).poisson(5.0, (32, 32)).astype(float), 0.25)
    # text is refused as text (refuse_text_numbers), before it is compared with the Image's
    expect = (
        r"`pixel_size_A` must be a number, got 'x'"
        if isinstance(px, str)
        else r"`pixel_size_A` = .*disagrees.*0\.25 Å"
    )
    for func in (find_columns, map_columns):
        with pytest.raises(ParameterError, match=expect):
            func(img, pixel_size_A=px)
    with pytest.raises(ParameterError, match="pixel_size_A"):
        fit_columns(img, np.array([[4.0, 4.0]]), pixel_size_A=px)
    # the same value is accepted
    assert len(find_columns(img, pixel_size_A=0.25).columns) > 0
