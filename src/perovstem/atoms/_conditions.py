"""Do an image's probe and detector match those of the simulated cross-section library?

The shipped library (:mod:`perovstem.simulate.scs`) is abTEM multislice for one probe
semi-angle and one annular detector.  Column cross-sections scale with both: in the same
abTEM runs, an outer angle of 131 instead of 200 mrad multiplied every CsPbBr₃ column's
cross-section by 0.83–0.86 at 300 kV, nearly independent of thickness (Pb–Br 0.833–0.834,
Cs 0.845, Br 0.856).  Counting scales the library by a fitted factor, but on crystals of a
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


def library_angles() -> dict[str, Any]:
    """Probe semi-angle and detector range (mrad) of the shipped cross-section library."""
    from perovstem.simulate.scs import load_table

    t = load_table()
    return {
        "semiangle_mrad": float(t["semiangle_mrad"].iloc[0]),
        "detector_mrad": [float(t["inner_mrad"].iloc[0]), float(t["outer_mrad"].iloc[0])],
    }


def library_conditions(
    attrs: dict,
    *,
    semiangle_mrad: float | None = None,
    detector_mrad: tuple[float, float] | None = None,
) -> tuple[dict[str, Any], str | None]:
    """The image's angles against the library's, and a warning text when they differ.

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
        ``{"image": ..., "library": ..., "matches": bool or None}`` (None: the image's
        angles are not known) and the warning (None when they match or are not known).
    """
    image = imaging_angles_of(attrs)
    if semiangle_mrad is not None:
        image["semiangle_mrad"] = float(semiangle_mrad)
    if detector_mrad is not None:
        image["detector_mrad"] = [float(v) for v in detector_mrad]
    lib = library_angles()
    off = []
    if "semiangle_mrad" in image:
        a, b = image["semiangle_mrad"], lib["semiangle_mrad"]
        if abs(a - b) > TOLERANCE * b:
            off.append(f"a {a:.3g} mrad probe (library {b:.3g})")
    if "detector_mrad" in image:
        (i, o), (li, lo) = image["detector_mrad"], lib["detector_mrad"]
        if abs(i - li) > TOLERANCE * li or abs(o - lo) > TOLERANCE * lo:
            off.append(f"a {i:.3g}–{o:.3g} mrad detector (library {li:.3g}–{lo:.3g})")
    known = bool(image)
    info = {"image": image, "library": lib, "matches": (not off) if known else None}
    if not off:
        return info, None
    return info, (
        f"the image was recorded with {' and '.join(off)}: the simulated library's absolute "
        "scale is not the image's, and on crystals of a few thicknesses the counts may all "
        "be off by the same whole number of atoms without any other warning (abTEM: an "
        "outer angle of 131 instead of 200 mrad scales every column by 0.83-0.86, which "
        "read a 60 Å crystal one atom thin). For absolute counts give a library simulated "
        "at these angles (--library TABLE of n_atoms, scs_A2, e.g. from "
        "perovstem.simulate.haadf_image_multislice or StatSTEM); the Gaussian mixture "
        "without --library gives the counts' differences only."
    )
