"""Do an image's probe and detector match those of the simulated cross-section library?

The shipped library (:mod:`perovstem.simulate.scs`) is abTEM multislice for one probe
semi-angle (20 mrad) and two annular detectors (65–200 and 65–131 mrad).  Column
cross-sections scale with both: in the same abTEM runs, an outer angle of 131 instead of
200 mrad multiplied every CsPbBr₃ column's cross-section by 0.83–0.86 at 300 kV, nearly
independent of thickness (Pb–Br 0.833–0.834, Cs 0.845, Br 0.856).  Counting scales the library by a fitted factor, but on crystals of a
few thicknesses the data cannot tell that factor from a whole-atom offset of every count
(c·L_n ≈ c'·L_(n±1)); its prior then decides, and a mismatch reads every column wrong by
the same whole number of atoms (measured: the cross-sections of a 60 Å crystal with three
terraces ×0.83 read 0.96 atoms thin on average, ×0.7 2.5 thin, ×1.45 1.0 thick; a 50 Å
cube −1.0, −3.0, +3.5), with no warning from the counting.
"""

from __future__ import annotations

from typing import Any

from perovstem._data import imaging_angles_of

#: relative difference of a semi-angle or detector angle above which the library's
#: absolute scale is not the image's (the 131/200 mrad outer angles: 0.83–0.86)
TOLERANCE = 0.1


def library_detector(metadata: dict | None) -> tuple[float, float]:
    """The calibrated detector (inner, outer mrad) for an image's or series' metadata: the
    one within 10 % of its ``detector_mrad``, else 65–200 mrad (also when not recorded)."""
    return tuple(library_conditions(metadata or {})[0]["library"]["detector_mrad"])


def library_conditions(
    attrs: dict,
    *,
    semiangle_mrad: float | None = None,
    detector_mrad: tuple[float, float] | None = None,
) -> tuple[dict[str, Any], str | None]:
    """The library that matches an image's probe and detector, and a warning when none does.

    Parameters
    ----------
    attrs : dict
        Attributes of a column table (``atoms fit`` records the image's ``semiangle_mrad``
        and ``detector_mrad`` where its file gives them).
    semiangle_mrad, detector_mrad : optional
        Given by the user; they replace the table's.

    Returns
    -------
    (dict, str or None)
        ``{"image": ..., "library": {"semiangle_mrad", "detector_mrad"}, "matches": bool or
        None}``: the library's detector is the calibrated one (of
        :data:`perovstem.simulate.scs.DETECTORS_MRAD`) within 10 % of the image's, else the
        first; ``matches`` None when the image's angles are not known.  The warning is None
        when they match or are not known.
    """
    from perovstem.simulate.scs import DETECTORS_MRAD, load_table, nearest_detector

    image = imaging_angles_of(attrs)
    if semiangle_mrad is not None:
        image["semiangle_mrad"] = float(semiangle_mrad)
    if detector_mrad is not None:
        image["detector_mrad"] = [float(v) for v in detector_mrad]
    lib_semi = float(load_table()["semiangle_mrad"].iloc[0])
    chosen = DETECTORS_MRAD[0]
    off = []
    near = None
    if "semiangle_mrad" in image:
        a = image["semiangle_mrad"]
        if abs(a - lib_semi) > TOLERANCE * lib_semi:
            off.append(f"a {a:.3g} mrad probe (library {lib_semi:.3g})")
    if "detector_mrad" in image:
        i, o = image["detector_mrad"]
        near = nearest_detector((i, o), TOLERANCE)
        if near is not None:
            chosen = near
        else:
            libs = " or ".join(f"{d[0]:.3g}–{d[1]:.3g}" for d in DETECTORS_MRAD)
            off.append(f"a {i:.3g}–{o:.3g} mrad detector (libraries {libs})")
    known = bool(image)
    info = {
        "image": image,
        "library": {"semiangle_mrad": lib_semi, "detector_mrad": list(chosen)},
        "matches": (not off) if known else None,
        # the library's detector is the image's (None: the image's is not known)
        "detector_matches": near is not None if "detector_mrad" in image else None,
    }
    if not off:
        return info, None
    return info, (
        f"the image was recorded with {' and '.join(off)}: the cross-sections of the "
        "simulated libraries are not the image's (abTEM: an outer angle of 131 instead of "
        "200 mrad scales every column by 0.83-0.86), so counts made with them are off by "
        "that scale"
    )


#: what `atoms count` adds to the note of :func:`library_conditions`
COUNT_REMEDY = (
    "; on crystals of a few thicknesses all by the same whole number of atoms, with no "
    "other warning (×0.83 read a 60 Å crystal one atom thin). For absolute counts give a "
    "library simulated at these angles (--library TABLE of type, n_atoms, scs_A2, e.g. from "
    "perovstem.simulate.haadf_image_multislice or StatSTEM); the Gaussian mixture without "
    "--library gives the counts' differences only."
)


#: said where the image's detector is not known (most dm3/dm4 and tif files)
UNKNOWN_DETECTOR_NOTE = (
    "the image's detector is not recorded: the library assumes a 65-200 mrad HAADF "
    "detector; if yours differs, counts may all be off by whole atoms (a 65-131 mrad image "
    "read 0.87 atoms thin per column); give --detector-mrad INNER,OUTER"
)
