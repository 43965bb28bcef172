"""Surface atoms and their facet type ({100}, {110}, {111}, other) in an atomic model.

As in Altantzis et al., Nano Lett. 19 (2019) 477 (facet percentages of Pt nanoparticles
from 3D atomic models), each surface atom (coordination below the bulk value) gets a local
surface normal, here the sum of the unit vectors towards its *missing* neighbours (equal to
minus the sum over its present ones, since a full shell sums to zero; cf. the
coordination-based surface classification of Jones et al., Nano Lett. 14 (2014) 6336).  The
normal is assigned to the nearest low-index family within ``angle_tol_deg``, otherwise to
"other".

Two lattices are built in: ``"perovskite"`` uses the cation sublattice (Pb/Cd and Cs, a
CsCl-type lattice: 8 neighbours at a√3/2 and 6 at a, bulk coordination 14) and ``"fcc"``
(metallic Pb clusters: 12 neighbours at a/√2).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from perovstem._validation import refuse_text_numbers
from perovstem.errors import DataError, ParameterError

__all__ = ["surface_facets", "facet_fractions", "FACETS"]

FACETS = ("100", "110", "111", "other")

_FAMILIES = {
    "100": np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], float),
    "110": np.array([[1, 1, 0], [1, -1, 0], [1, 0, 1], [1, 0, -1], [0, 1, 1], [0, 1, -1]], float)
    / np.sqrt(2),
    "111": np.array([[1, 1, 1], [1, 1, -1], [1, -1, 1], [-1, 1, 1]], float) / np.sqrt(3),
}

_CATIONS = {"Pb", "Cd", "Cs"}


def _positions(obj: Any, lattice: str) -> np.ndarray:
    if hasattr(obj, "get_positions"):  # ase.Atoms
        pos = obj.get_positions()
        sym = np.array(obj.get_chemical_symbols())
        if lattice == "perovskite":
            keep = np.isin(sym, list(_CATIONS))
            if "label" in obj.arrays:
                keep &= obj.arrays["label"] == 0
            pos = pos[keep]
        elif lattice == "fcc":
            keep = sym == "Pb"
            if "label" in obj.arrays:
                keep &= obj.arrays["label"] > 0
            pos = pos[keep]
        return pos
    pos = np.asarray(obj, dtype=float)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise DataError(f"positions must be an (N, 3) array or ase.Atoms, got shape {pos.shape}")
    return pos


def surface_facets(
    atoms: Any,
    *,
    lattice: str = "perovskite",
    lattice_A: float | None = None,
    angle_tol_deg: float = 15.0,
) -> pd.DataFrame:
    """Surface atoms with their coordination, local normal and facet family.

    Parameters
    ----------
    atoms : ase.Atoms or ndarray, shape (N, 3)
        Structure (cations or fcc Pb are selected from an ``ase.Atoms``) or positions in Å.
        Crystal axes must be along x, y, z (the [001] zone-axis frame).
    lattice : {"perovskite", "fcc"}
    lattice_A : float, optional
        Lattice parameter (default 5.87 Å perovskite, 4.95 Å fcc Pb).
    angle_tol_deg : float
        Largest angle between the normal and a family direction.

    Returns
    -------
    DataFrame
        One row per surface atom: ``index`` (into the selected positions), ``x_A, y_A, z_A``,
        ``coordination``, ``normal_x, normal_y, normal_z``, ``facet`` (one of
        :data:`FACETS`), ``angle_deg``.
    """
    refuse_text_numbers(locals())
    from scipy.spatial import cKDTree

    if lattice not in ("perovskite", "fcc"):
        raise ParameterError(f"`lattice` must be 'perovskite' or 'fcc', got {lattice!r}")
    a = float(lattice_A if lattice_A is not None else (5.87 if lattice == "perovskite" else 4.95))
    if not a > 0:
        raise ParameterError(f"`lattice_A` must be > 0, got {lattice_A!r}")
    pos = _positions(atoms, lattice)
    if pos.shape[0] == 0:
        raise DataError("no atoms of the requested lattice to analyse")
    if lattice == "perovskite":
        cut, full = 1.08 * a, 14
    else:
        cut, full = 0.85 * a, 12
    tree = cKDTree(pos)
    pairs = tree.query_pairs(cut, output_type="ndarray")
    n = pos.shape[0]
    coord = np.bincount(pairs.ravel(), minlength=n)
    vec = np.zeros((n, 3))
    if pairs.size:
        d = pos[pairs[:, 1]] - pos[pairs[:, 0]]
        u = d / np.linalg.norm(d, axis=1, keepdims=True)
        np.add.at(vec, pairs[:, 0], u)
        np.add.at(vec, pairs[:, 1], -u)
    surf = np.flatnonzero(coord < full)
    normal = -vec[surf]
    norm = np.linalg.norm(normal, axis=1)
    ok = norm > 1e-6
    normal[ok] /= norm[ok, None]
    best = np.full(surf.size, "other", dtype=object)
    best_ang = np.full(surf.size, 90.0)
    for name, dirs in _FAMILIES.items():
        cos = np.abs(normal @ dirs.T).max(axis=1)
        ang = np.degrees(np.arccos(np.clip(cos, -1, 1)))
        better = ok & (ang < best_ang)
        best_ang[better] = ang[better]
        best[better] = name
    best[best_ang > angle_tol_deg] = "other"
    return pd.DataFrame(
        {
            "index": surf,
            "x_A": pos[surf, 0],
            "y_A": pos[surf, 1],
            "z_A": pos[surf, 2],
            "coordination": coord[surf],
            "normal_x": normal[:, 0],
            "normal_y": normal[:, 1],
            "normal_z": normal[:, 2],
            "facet": best.astype(str),
            "angle_deg": best_ang,
        }
    )


def facet_fractions(atoms: Any, **kwargs: Any) -> dict[str, float]:
    """Fractions of surface atoms on {100}, {110}, {111} and other sites (sum 1).

    Parameters are those of :func:`surface_facets`.  Also returns ``n_surface``.
    """
    refuse_text_numbers(locals())
    df = surface_facets(atoms, **kwargs)
    n = len(df)
    out = {f: (float(np.mean(df["facet"] == f)) if n else 0.0) for f in FACETS}
    out["n_surface"] = n
    return out
