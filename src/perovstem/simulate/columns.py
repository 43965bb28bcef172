"""Group the atoms of a structure into the atomic columns seen along the beam (−z).

Columns are found in the *zone-aligned* frame: positions are rotated back by the mistilt
stored in ``atoms.info["mistilt_rotation"]`` (see :func:`perovstem.simulate.nanocrystal`), so
that a slightly mistilted crystal still has well-defined columns whose atoms project onto a
short streak in the image.  Atoms whose zone-aligned (x, y) lie within ``tol_A`` of each other
(transitively) form one column; the fast renderer draws the atoms of a column that do not
project onto one point (mistilt, octahedral tilts) individually.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from perovstem._validation import check_positive, refuse_text_numbers
from perovstem.errors import DataError

__all__ = ["project_columns", "column_type_name"]

_ORDER = ("Pb", "Cs", "Br")


def column_type_name(has_b: np.ndarray, has_cs: np.ndarray, has_br: np.ndarray) -> np.ndarray:
    """Column type from its composition: "PbBr", "Cs", "Br", "Pb", "CsBr", "CsPb", "CsPbBr".

    ``has_b`` counts Pb/Cd (host or metallic).  In [001] CsPbBr3 this gives exactly the
    contract types "PbBr", "Cs", "Br" and "Pb" (metallic columns).
    """
    names = np.array(["", "Br", "Cs", "CsBr", "Pb", "PbBr", "CsPb", "CsPbBr"], dtype=object)
    code = 4 * has_b.astype(int) + 2 * has_cs.astype(int) + has_br.astype(int)
    return names[code]


def project_columns(atoms, *, tol_A: float = 0.9) -> tuple[pd.DataFrame, np.ndarray]:
    """Find the atomic columns of ``atoms`` along the beam.

    Parameters
    ----------
    atoms : ase.Atoms
        Structure with the beam along −z (``label`` array optional: 0 host, ≥ 1 metallic Pb).
    tol_A : float
        Lateral tolerance for atoms to share a column, Å.  0.9 Å keeps the Br and apical-Br
        positions of orthorhombic (tilted-octahedra) CsPbBr3, displaced by ≈ 0.4 Å, in their
        [001] columns, while distinct columns are ≥ 2 Å apart along [001] and [011].

    Returns
    -------
    columns : DataFrame
        One row per column: ``x_A``, ``y_A`` (mean projected lab position of its atoms),
        ``type``, ``n_atoms`` (counting unit: cations Pb+Cd+Cs, or Br atoms in a Br-only
        column; for [001] Pb–Br columns this is the number of unit cells), ``n_Pb`` (all Pb,
        host and metallic), ``n_Cd``, ``n_Br``, ``n_Cs``, ``n_Pb0`` (metallic Pb),
        ``thermal_sigma_A`` (σ-weighted rms vibration, for the PSF core), ``z_min_A``,
        ``z_max_A``, ``cluster_id`` (−1 or the cluster the metallic atoms belong to).
    atom_column : (n_atoms,) int ndarray
        Column index of every atom.
    """
    refuse_text_numbers(locals())
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    from perovstem.simulate.probe import THERMAL_SIGMA_A

    tol = check_positive("tol_A", tol_A)
    n = len(atoms)
    if n == 0:
        raise DataError("`atoms` is empty: no columns to project")
    pos = atoms.get_positions()
    mis = np.asarray(atoms.info.get("mistilt_rotation", np.eye(3)), dtype=float)
    za = pos @ mis  # lab = M @ zone-aligned  ->  zone-aligned = lab @ M (row vectors)
    key2 = np.round(za[:, :2] / 1e-3).astype(np.int64)
    key2 -= key2.min(axis=0)
    key = key2[:, 0] * (int(key2[:, 1].max()) + 1) + key2[:, 1]
    _, first, inv = np.unique(key, return_index=True, return_inverse=True)
    inv = inv.ravel()
    uniq = key2[first]
    pts = uniq * 1e-3  # shifted frame: only distances matter here
    pairs = cKDTree(pts).query_pairs(tol, output_type="ndarray")
    g = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(pts), len(pts)))
    _, lab_u = connected_components(g, directed=False)
    col = lab_u[inv]
    ncol = int(col.max()) + 1

    z = np.asarray(atoms.numbers)
    label = np.asarray(atoms.arrays.get("label", np.zeros(n, dtype=int)))
    cid = np.asarray(atoms.arrays.get("cluster_id", np.full(n, -1)))
    metal = (label >= 1) & (z == 82)
    bad = set(np.unique(z)) - {82, 48, 55, 35}
    if bad:
        from ase.data import chemical_symbols

        raise DataError(
            "`atoms` holds species the HAADF model does not know: "
            f"{sorted(chemical_symbols[int(b)] for b in bad)}"
        )

    def count(mask):
        return np.bincount(col, weights=mask.astype(float), minlength=ncol)

    cnt = np.bincount(col, minlength=ncol).astype(float)
    n_pb = count(z == 82)
    n_cd = count(z == 48)
    n_br = count(z == 35)
    n_cs = count(z == 55)
    n_pb0 = count(metal)
    therm_z = np.zeros(83)
    for el, zz in (("Pb", 82), ("Cd", 48), ("Cs", 55), ("Br", 35)):
        therm_z[zz] = THERMAL_SIGMA_A[el]
    therm = np.where(metal, THERMAL_SIGMA_A["Pb0"], therm_z[z])
    wz = z.astype(float) ** 1.6
    th = np.sqrt(
        np.bincount(col, weights=wz * therm**2, minlength=ncol)
        / np.bincount(col, weights=wz, minlength=ncol)
    )
    x = np.bincount(col, weights=pos[:, 0], minlength=ncol) / cnt
    y = np.bincount(col, weights=pos[:, 1], minlength=ncol) / cnt
    zmin = np.full(ncol, np.inf)
    zmax = np.full(ncol, -np.inf)
    np.minimum.at(zmin, col, pos[:, 2])
    np.maximum.at(zmax, col, pos[:, 2])
    clus = np.full(ncol, -1, dtype=np.int64)
    has_cl = metal & (cid >= 0)
    if has_cl.any():
        clus[col[has_cl]] = cid[has_cl]
    ctype = column_type_name(n_pb + n_cd > 0, n_cs > 0, n_br > 0)
    cations = n_pb + n_cd + n_cs
    n_atoms = np.where(cations > 0, cations, n_br).astype(np.int64)
    df = pd.DataFrame(
        {
            "x_A": x,
            "y_A": y,
            "type": ctype.astype(str),
            "n_atoms": n_atoms,
            "n_Pb": n_pb.astype(np.int64),
            "n_Cd": n_cd.astype(np.int64),
            "n_Br": n_br.astype(np.int64),
            "n_Cs": n_cs.astype(np.int64),
            "n_Pb0": n_pb0.astype(np.int64),
            "thermal_sigma_A": th,
            "z_min_A": zmin,
            "z_max_A": zmax,
            "cluster_id": clus,
        }
    )
    return df, col
