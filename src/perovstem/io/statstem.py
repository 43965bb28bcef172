"""The StatSTEM example files (``../shared/data/statstem``), converted to perovstem conventions.

StatSTEM puts pixel (row i, column k) at ``x = k·dx`` with k starting at 1; perovstem puts
pixel (i, j) at ``x = j·dx`` with j starting at 0.  Coordinates are converted here, once:
``x_perovstem = x_statstem − dx`` (same for y).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from perovstem._data import Image, Series
from perovstem.errors import FileFormatError
from perovstem.io._write import protect

__all__ = ["StatSTEMExample", "load_statstem", "load_statstem_hmm"]


@dataclass
class StatSTEMExample:
    """A StatSTEM example: the image, the starting coordinates and (if present) the reference.

    Attributes
    ----------
    image : Image
    coordinates : DataFrame
        Starting coordinates ``x_A, y_A, type`` (perovstem convention).
    reference : DataFrame or None
        StatSTEM's fitted columns ``x_A, y_A, type, rho_A, eta, scs`` (perovstem convention).
    background : float or None
        StatSTEM's fitted constant background ζ.
    extra : dict
        Every other array of the file (counts, GMM results, strain, ...), unconverted except
        coordinate arrays whose name ends in ``xy_angstrom`` (shifted to the 0-based grid).
    """

    image: Image
    coordinates: Any
    reference: Any = None
    background: float | None = None
    extra: dict = field(default_factory=dict)


def _types(idx: np.ndarray, names: np.ndarray) -> np.ndarray:
    names = [str(n) for n in np.atleast_1d(names)]
    names = ["PbBr" if n == "Pb" and "Cs" in names else n for n in names]
    return np.array([names[int(i) - 1] for i in np.atleast_1d(idx)])


def load_statstem(path: str | os.PathLike) -> StatSTEMExample:
    """Load a converted StatSTEM example ``.npz`` (keys documented in the data README)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"no such file: {str(path)!r}")
    try:
        with np.load(path, allow_pickle=False) as z:
            f = {k: z[k] for k in z.files}
    except Exception as exc:
        raise FileFormatError(f"{str(path)!r}: not a readable .npz ({exc})") from None
    if "obs" not in f or "dx_angstrom" not in f:
        raise FileFormatError(f"{str(path)!r}: not a StatSTEM example (no 'obs'/'dx_angstrom')")
    dx = float(f["dx_angstrom"])
    protect(path)
    image = Image(
        np.asarray(f["obs"], dtype=float), dx, metadata={"source": str(path), "format": "statstem"}
    )
    names = f.get("type_names", np.array(["1"]))
    coords = None
    if "input_coordinates_xy_angstrom" in f:
        xy = f["input_coordinates_xy_angstrom"] - dx
        types = _types(f.get("input_types", np.ones(len(xy))), names)
        coords = pd.DataFrame({"x_A": xy[:, 0], "y_A": xy[:, 1], "type": types})
    ref = None
    if "ref_xy_angstrom" in f:
        xy = f["ref_xy_angstrom"] - dx
        ref = pd.DataFrame(
            {
                "x_A": xy[:, 0],
                "y_A": xy[:, 1],
                "type": _types(f.get("ref_types", np.ones(len(xy))), names),
                "rho_A": f["ref_rho_angstrom"],
                "eta": f["ref_eta"],
                # the MAP output stores no SCS: the Gaussian volume 2πηρ² (README)
                "scs": f.get("ref_scs", 2 * np.pi * f["ref_eta"] * f["ref_rho_angstrom"] ** 2),
            }
        )
        ref.attrs["pixel_size_A"] = dx
    used = {
        "obs",
        "dx_angstrom",
        "input_coordinates_xy_angstrom",
        "input_types",
        "ref_xy_angstrom",
        "ref_types",
        "ref_rho_angstrom",
        "ref_eta",
        "ref_scs",
        "ref_zeta",
    }
    extra = {}
    for k, v in f.items():
        if k in used:
            continue
        extra[k] = v - dx if k.endswith("xy_angstrom") else v
    bg = float(f["ref_zeta"]) if "ref_zeta" in f else None
    return StatSTEMExample(
        image=image, coordinates=coords, reference=ref, background=bg, extra=extra
    )


def load_statstem_hmm(path: str | os.PathLike, *, pixel_size_A: float = 0.125) -> dict[str, Any]:
    """Load StatSTEM's ``example_HMM_input.npz``.

    Returns a dict with ``series`` (:class:`Series` of ``obs_T``), ``scs`` (frames × columns),
    ``library_scs``, ``max_atoms`` and ``coordinates`` (frames × columns × 3, converted to the
    0-based grid). The file stores no pixel size; the StatSTEM example uses 0.125 Å.
    """
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"no such file: {str(path)!r}")
    with np.load(path, allow_pickle=False) as z:
        f = {k: z[k] for k in z.files}
    if "O_scs_frames_by_columns" not in f:
        raise FileFormatError(
            f"{str(path)!r}: not a StatSTEM HMM input (no O_scs_frames_by_columns)"
        )
    protect(path)
    obs = np.asarray(f["obs_T"], dtype=float)
    if obs.ndim == 3 and obs.shape[0] != f["O_scs_frames_by_columns"].shape[0]:
        obs = np.moveaxis(obs, -1, 0)
    coords = np.asarray(f["coordinates_T"], dtype=float)
    out = {
        "series": Series(obs, pixel_size_A, metadata={"source": str(path), "format": "statstem"}),
        "scs": np.asarray(f["O_scs_frames_by_columns"], dtype=float),
        "library_scs": np.asarray(f["libraries_scs"], dtype=float).ravel(),
        "max_atoms": int(np.asarray(f["G_max_atoms"]).ravel()[0]),
        "coordinates": coords,
    }
    return out
