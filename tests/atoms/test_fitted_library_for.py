"""``fitted_library_for``: the fitted-SCS library that matches a ``fit_columns`` table."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from perovstem.atoms import fitted_library_for
from perovstem.atoms.fitted_library import with_cd_fraction
from perovstem.errors import DataError, ParameterError


def _table(**attrs):
    """Nine Pb-Br and nine Cs columns with the attrs fit_columns writes."""
    df = pd.DataFrame(
        {
            "x_A": np.arange(18.0),
            "y_A": np.zeros(18),
            "scs": np.full(18, 0.05),
            "type": ["PbBr"] * 9 + ["Cs"] * 9,
        }
    )
    df.attrs.update(
        pixel_size_A=0.4,
        image_shape=[70, 72],
        width="type",
        fit_positions=True,
        dose_e_per_A2=3000.0,
        background={"model": "constant", "coefficients": [0.0]},
        noise="gaussian",
        psf_tail=None,
        scs_units="fraction·Å²",
    )
    df.attrs.update(attrs)
    return df


def test_fitted_library_for_reads_the_fit_conditions():
    """The library is made at the table's pixel size, field, dose, width treatment and
    position refinement, with a slab of about the crystal's size (9 Pb-Br columns: 3
    cells).  Old code: no such function (the pipeline had no fitted library)."""
    lib = fitted_library_for(_table(), 3)
    assert set(lib) == {"PbBr", "Cs"}
    a = lib["PbBr"].attrs
    assert a["source"] == "fitted" and a["pixel_size_A"] == 0.4 and a["shape"] == (70, 72)
    assert a["dose_e_per_A2"] == 3000.0 and a["width"] == "frame" and a["fit_positions"]
    assert a["n_cells"] == 3 and a["termination"] == "CsBr"
    assert list(lib["Cs"]["n_atoms"]) == [0, 1, 2, 3] and (lib["Cs"]["scs_A2"][1:] > 0).all()
    # a dose given wins over the table's; positions held in the fit are held in the library
    lib = fitted_library_for(_table(fit_positions=False), 3, dose_e_per_A2=2000.0, types=["Cs"])
    assert set(lib) == {"Cs"}
    assert lib["Cs"].attrs["dose_e_per_A2"] == 2000.0 and not lib["Cs"].attrs["fit_positions"]


@pytest.mark.parametrize(
    "attrs, match",
    [
        ({"image_shape": None}, r"no attrs \['image_shape'\].*CSV"),
        ({"dose_e_per_A2": None}, r"dose of the fitted image.*attrs\['dose_e_per_A2'\]"),
        ({"scs_units": "counts·Å²"}, r"in 'counts·Å²', not in Å² of the incident beam"),
        ({"width": "column"}, r"width = 'column'"),
        ({"background": {"model": "planar"}}, r"background = 'planar'"),
        ({"noise": "student"}, r"noise = 'student'"),
        ({"psf_tail": {"fraction": 0.2}}, r"psf_tail"),
    ],
)
def test_fitted_library_for_refuses_fits_it_cannot_reproduce(attrs, match):
    with pytest.raises(DataError, match=match):
        fitted_library_for(_table(**attrs), 3)


def test_poisson_fit_is_repeated_by_its_fitted_library():
    """A Poisson-likelihood fit was refused ("the library fits by least squares") although
    its Gaussian-column cross-sections are biased differently per type (50 Å cubes at 2·10⁴
    e⁻/Å²: Cs 0.94, Br 1.04 of the total SCS against 0.91 for all by least squares).  The
    library now fits its slabs as the data were fitted, and on a 4-cell cube imaged at
    2·10⁴ e⁻/Å² a Poisson fit counts as exactly as a least-squares one (session 32, 50 Å
    cubes, seeds 1-2: Cs exact 0.99/0.97 Poisson, 0.94/0.96 least squares; Pb-Br and Br
    1.00; at 2·10³ seeds 3-4: Cs 0.85/0.85 against 0.85/0.73)."""
    from scipy.spatial import cKDTree

    from perovstem.atoms import count_atoms, find_columns, fit_columns, normalize_image
    from perovstem.atoms.cell import cspbbr3_001_cell
    from perovstem.simulate import haadf_image, nanocrystal

    img, truth = haadf_image(
        nanocrystal(4 * 5.87, rng=0), pixel_size_A=0.4, dose_e_per_A2=2e4, rng=1
    )
    img = normalize_image(img)
    pos = find_columns(img, cell=cspbbr3_001_cell())
    fit = fit_columns(img, pos, noise="poisson")
    lib = fitted_library_for(fit, 8)
    assert lib["Cs"].attrs["noise"] == "poisson"
    assert "Poisson likelihood" in lib["Cs"].attrs["estimator"]
    counted = count_atoms(fit, library=lib)
    d, i = cKDTree(truth[["x_A", "y_A"]].to_numpy()).query(counted[["x_A", "y_A"]].to_numpy())
    t = truth.iloc[i].reset_index(drop=True)
    want = t["n_atoms"].to_numpy()
    assert np.all(d < 1.0)
    assert np.mean(counted["n_atoms"].to_numpy() == want) >= 0.9


def test_fitted_library_for_bad_types():
    with pytest.raises(ParameterError, match=r"no fitted library for the column types \['Pb'\]"):
        fitted_library_for(_table(), 3, types=["Pb"])


def test_with_cd_fraction_scales_pb_br_by_the_tabulated_ratio():
    """Cd on the Pb sites scales the Pb-Br values by scs_library's alloy / pure ratio at
    each count; other types are unchanged (analyze_series uses the same helper)."""
    from perovstem.simulate import scs_library

    tab = pd.DataFrame({"n_atoms": np.arange(6), "scs_A2": np.r_[0.0, np.arange(1.0, 6.0)]})
    out = with_cd_fraction(tab, "PbBr", 0.3)
    ratio = (
        scs_library("PbBr", 5, cd_fraction=0.3)["scs_A2"].to_numpy()[1:]
        / scs_library("PbBr", 5)["scs_A2"].to_numpy()[1:]
    )
    np.testing.assert_allclose(out["scs_A2"].to_numpy()[1:], tab["scs_A2"].to_numpy()[1:] * ratio)
    assert (ratio < 1).all() and out["scs_A2"].iloc[0] == 0.0
    assert with_cd_fraction(tab, "Cs", 0.3).equals(tab)
    assert tab["scs_A2"].iloc[1] == 1.0  # a copy


@pytest.mark.slow
def test_fitted_library_for_removes_the_low_dose_bias():
    """At 10^3 e/A^2 the Gaussian fit (one width per type re-fitted, positions refined) reads
    Cs columns some 5 % below the noise-free fitted library (widths held), which counted
    flat crystals one Cs atom low (docs/counting.md).  The library of the table's own fit
    (noisy slabs at the table's dose, same width and position treatment) reads them at
    ~1.  Measured, median over images of median(scs / L[n_true]), 30 A cube, 0.3 A px,
    seeds 1-12 (native): Cs 0.95 -> 1.01, Pb-Br 0.99 -> 1.03 (per image +-4 %: the width
    of one noisy image); 53 A cubes/wedges/rough, 0.25 A px, 48 images, both CPU modes:
    Cs 0.93 -> 0.98, Pb-Br 0.975 -> 0.99.  Old code: no fitted_library_for.

    Both the images and the library are noise realisations: one image's Cs ratio spreads
    ± 6 %, one library's shifts every image by up to ± 4 % (24 images, library seeds 0-3:
    Cs 0.99-1.04), so the median of 4 images with one library ranged 0.95-1.04 over seeds
    1-40 and failed the 3 % bound on 2 (new noise) or 3 (old noise) of 10 groups of 4.
    Pooled here over images 1-24 and library seeds 0-3: Cs 0.92 -> 1.018, Pb-Br 0.974 ->
    0.988 (with the noise of before commit db53202: Cs 0.93 -> 0.983, Pb-Br 0.989 -> 0.999)."""
    from perovstem.atoms import fit_columns, fitted_scs_library, normalize_image
    from perovstem.simulate import haadf_image, nanocrystal

    ratios: dict[str, list] = {"new": [], "old": []}
    for seed in range(1, 25):
        img, truth = haadf_image(
            nanocrystal(30.0, rng=seed), dose_e_per_A2=1e3, pixel_size_A=0.3, rng=seed
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # few electrons per column: expected at 10^3
            fit = fit_columns(normalize_image(img), truth[["x_A", "y_A", "type"]])
            assert fit.attrs["dose_e_per_A2"] == 1e3 and fit.attrs["fit_positions"]
            libs = {
                "new": [fitted_library_for(fit, 8, types=["PbBr", "Cs"], rng=r) for r in range(4)],
                "old": [
                    fitted_scs_library(8, pixel_size_A=0.3, shape=tuple(fit.attrs["image_shape"]))
                ],
            }
        for k, lib_list in libs.items():
            for lib in lib_list:
                r = []
                for t in ("PbBr", "Cs"):
                    m = (fit["type"] == t).to_numpy()
                    n = truth["n_atoms"].to_numpy()[m]
                    r.append(np.median(fit["scs"].to_numpy()[m] / lib[t]["scs_A2"].to_numpy()[n]))
                ratios[k].append(r)
    new, old = (np.median(np.array(ratios[k]), axis=0) for k in ("new", "old"))
    assert abs(new[1] - 1) <= 0.03 and old[1] <= 0.97, (new, old)  # Cs
    assert abs(new[0] - 1) <= 0.06, (new, old)  # Pb-Br
