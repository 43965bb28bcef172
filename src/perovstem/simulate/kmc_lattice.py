"""Lattice bookkeeping of the degradation KMC: host neighbour graph and adatom site grid.

The host (label 0) atoms of an ``ase.Atoms`` nanocrystal are mapped onto the pseudo-cubic
perovskite lattice: the B sites (Pb, Cd) define three lattice vectors (least-squares fit,
so any zone-axis orientation, mistilt or orthorhombic tilt pattern works), Br–B, Br–Cs and
Cs–B neighbour pairs come from distance cut-offs in units of the pseudo-cubic constant
``a``, and the Pb⁰ adatoms live on the nodes of the B-site lattice (spacing ``a``) that are
not occupied by a host B atom.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from perovstem.errors import DataError

__all__ = ["HostLattice", "build_lattice", "simple_cube"]

KIND_CS, KIND_PB, KIND_CD, KIND_BR = 0, 1, 2, 3
_SYMBOL_KIND = {"Cs": KIND_CS, "Pb": KIND_PB, "Cd": KIND_CD, "Br": KIND_BR}
_KIND_SYMBOL = np.array(["Cs", "Pb", "Cd", "Br"])
_MARGIN = 3  # empty node layers around the B-site bounding box


@dataclass(frozen=True, eq=False)
class HostLattice:
    """Static lattice data of one nanocrystal (arrays are read-only after construction).

    Attributes
    ----------
    pos_A : (H, 3) float
        Host atom positions, Å.
    kind : (H,) int8
        0 Cs, 1 Pb, 2 Cd, 3 Br.
    nb_ptr, nb_idx : int64
        CSR adjacency of the Br–B, Br–Cs and Cs–B neighbour pairs (symmetric).
    node_of : (H,) int64
        Node index of a B atom, −1 for Cs and Br.
    grid_shape : (3,) int
        Node grid size; node ``(i, j, k)`` has flat index ``(i·ny + j)·nz + k``.
    node_pos_A : (G, 3) float
        Ideal node positions ``origin + (i, j, k)·M``, Å.
    node_out : (G, 3) float
        Unit vector from the nanocrystal centroid to the node (outward direction).
    node_border : (G,) bool
        Outermost node layer (never entered).
    lattice_A : (3, 3) float
        Rows are the pseudo-cubic lattice vectors, Å.
    a_A : float
        Mean pseudo-cubic lattice constant, Å.
    rotation : (3, 3) float
        Orthogonal matrix closest to ``lattice_A / a`` (crystal → lab frame, rows).
    centroid_A : (3,) float
        Centroid of the initial host, Å.
    """

    pos_A: np.ndarray
    kind: np.ndarray
    nb_ptr: np.ndarray
    nb_idx: np.ndarray
    node_of: np.ndarray
    grid_shape: tuple[int, int, int]
    node_pos_A: np.ndarray
    node_out: np.ndarray
    node_border: np.ndarray
    lattice_A: np.ndarray
    a_A: float
    rotation: np.ndarray
    centroid_A: np.ndarray

    @property
    def n_host(self) -> int:
        return int(self.kind.size)

    @property
    def symbols(self) -> np.ndarray:
        return _KIND_SYMBOL[self.kind]

    def node_index(self, ijk: np.ndarray) -> np.ndarray:
        """Flat node index of integer grid coordinates ``(…, 3)``."""
        nx, ny, nz = self.grid_shape
        ijk = np.asarray(ijk)
        return (ijk[..., 0] * ny + ijk[..., 1]) * nz + ijk[..., 2]

    def nearest_node(self, xyz_A: np.ndarray) -> np.ndarray:
        """Flat index of the node nearest to each position ``(…, 3)`` Å (clipped to the grid)."""
        frac = (np.asarray(xyz_A, dtype=float) - self.node_pos_A[0]) @ np.linalg.inv(self.lattice_A)
        ijk = np.rint(frac).astype(np.int64)
        ijk = np.clip(ijk, 1, np.asarray(self.grid_shape) - 2)
        return self.node_index(ijk)


def _fit_lattice(b_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Least-squares pseudo-cubic lattice of the B sites: (origin, M rows, ijk, a)."""
    from scipy.spatial import cKDTree

    if len(b_pos) < 2:
        raise DataError(f"the nanocrystal needs at least 2 B sites (Pb/Cd), got {len(b_pos)}")
    tree = cKDTree(b_pos)
    d, _ = tree.query(b_pos, k=2)
    a = float(np.median(d[:, 1]))
    centre = b_pos.mean(axis=0)
    i0 = int(np.argmin(np.linalg.norm(b_pos - centre, axis=1)))
    idx = tree.query_ball_point(b_pos[i0], 1.25 * a)
    vecs = b_pos[idx] - b_pos[i0]
    vecs = vecs[np.linalg.norm(vecs, axis=1) > 0.5 * a]
    if len(vecs) == 0:
        raise DataError("cannot find neighbouring B sites to define the perovskite lattice")
    v1 = vecs[0]
    cos = np.abs(vecs @ v1) / (np.linalg.norm(vecs, axis=1) * np.linalg.norm(v1))
    cand = vecs[cos < 0.3]
    if len(cand):
        v2 = cand[0]
    else:  # plate one cell thick in this direction: take an orthogonal guess
        v2 = np.cross(v1, [0.0, 0.0, 1.0] if abs(v1[2]) < 0.9 * a else [1.0, 0.0, 0.0])
        v2 *= a / np.linalg.norm(v2)
    n3 = np.cross(v1, v2)
    n3 /= np.linalg.norm(n3)
    cos3 = np.abs(vecs @ n3) / np.linalg.norm(vecs, axis=1)
    v3 = vecs[np.argmax(cos3)] if cos3.max() > 0.9 else n3 * a
    m = np.array([v1, v2, v3], dtype=float)
    origin = b_pos[i0]
    for _ in range(2):  # refine by least squares on all sites
        ijk = np.rint((b_pos - origin) @ np.linalg.inv(m)).astype(np.int64)
        design = np.hstack([np.ones((len(b_pos), 1)), ijk.astype(float)])
        coef, *_ = np.linalg.lstsq(design, b_pos, rcond=None)
        if np.linalg.matrix_rank(design) == 4:
            origin, m = coef[0], coef[1:]
    ijk = np.rint((b_pos - origin) @ np.linalg.inv(m)).astype(np.int64)
    resid = np.linalg.norm(origin + ijk @ m - b_pos, axis=1)
    if resid.max() > 0.3 * a:
        raise DataError(
            f"B sites (Pb/Cd) are not on a pseudo-cubic perovskite lattice: max deviation "
            f"{resid.max():.2f} Å for a = {a:.2f} Å"
        )
    if len(np.unique(ijk, axis=0)) != len(ijk):
        raise DataError("two B sites (Pb/Cd) map onto the same lattice node")
    return origin, m, ijk, a


def _pairs(tree_a, tree_b, r: float) -> np.ndarray:
    sm = tree_a.sparse_distance_matrix(tree_b, r, output_type="coo_matrix")
    return np.column_stack([sm.row, sm.col]).astype(np.int64)


def build_lattice(symbols: np.ndarray, pos_A: np.ndarray) -> HostLattice:
    """Build the :class:`HostLattice` of host atoms.

    Parameters
    ----------
    symbols : (H,) str
        Chemical symbols (Cs, Pb, Cd, Br only).
    pos_A : (H, 3) float
        Positions, Å.
    """
    from scipy.spatial import cKDTree

    symbols = np.asarray(symbols)
    bad = sorted(set(symbols.tolist()) - set(_SYMBOL_KIND))
    if bad:
        raise DataError(
            f"host atoms must be Cs, Pb, Cd or Br (label 0); found {bad}; label other atoms 1/2"
        )
    kind = np.array([_SYMBOL_KIND[s] for s in symbols], dtype=np.int8)
    pos = np.asarray(pos_A, dtype=float)
    is_b = (kind == KIND_PB) | (kind == KIND_CD)
    if not np.any(kind == KIND_BR):
        raise DataError("the nanocrystal has no Br atoms")
    b_idx = np.flatnonzero(is_b)
    origin, m, ijk, a = _fit_lattice(pos[b_idx])

    lo = ijk.min(axis=0) - _MARGIN
    hi = ijk.max(axis=0) + _MARGIN
    shape = tuple(int(v) for v in (hi - lo + 1))
    gi = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).reshape(
        -1, 3
    )
    node_pos = origin + (gi + lo) @ m
    border = np.any((gi == 0) | (gi == np.asarray(shape) - 1), axis=1)
    centroid = pos.mean(axis=0)
    out = node_pos - centroid
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    out = np.where(norm > 1e-9, out / np.where(norm > 0, norm, 1.0), np.array([0.0, 0.0, 1.0]))
    node_of = np.full(len(kind), -1, dtype=np.int64)
    rel = ijk - lo
    node_of[b_idx] = (rel[:, 0] * shape[1] + rel[:, 1]) * shape[2] + rel[:, 2]

    idx = {k: np.flatnonzero(kind == k) for k in range(4)}
    b_all = b_idx
    trees = {
        "br": cKDTree(pos[idx[KIND_BR]]),
        "b": cKDTree(pos[b_all]),
        "cs": cKDTree(pos[idx[KIND_CS]]) if len(idx[KIND_CS]) else None,
    }
    pairs = []
    p = _pairs(trees["br"], trees["b"], 0.75 * a)
    pairs.append(np.column_stack([idx[KIND_BR][p[:, 0]], b_all[p[:, 1]]]))
    if trees["cs"] is not None:
        p = _pairs(trees["br"], trees["cs"], 0.9 * a)
        pairs.append(np.column_stack([idx[KIND_BR][p[:, 0]], idx[KIND_CS][p[:, 1]]]))
        p = _pairs(trees["cs"], trees["b"], 1.2 * a)
        pairs.append(np.column_stack([idx[KIND_CS][p[:, 0]], b_all[p[:, 1]]]))
    pr = np.concatenate(pairs)
    both = np.concatenate([pr, pr[:, ::-1]])
    order = np.lexsort((both[:, 1], both[:, 0]))
    both = both[order]
    nb_ptr = np.zeros(len(kind) + 1, dtype=np.int64)
    np.add.at(nb_ptr, both[:, 0] + 1, 1)
    nb_ptr = np.cumsum(nb_ptr)
    nb_idx = np.ascontiguousarray(both[:, 1])

    u, _, vt = np.linalg.svd(m / a)
    rot = u @ vt
    return HostLattice(
        pos_A=pos,
        kind=kind,
        nb_ptr=nb_ptr,
        nb_idx=nb_idx,
        node_of=node_of,
        grid_shape=shape,
        node_pos_A=node_pos,
        node_out=out,
        node_border=border,
        lattice_A=m,
        a_A=float(np.mean(np.linalg.norm(m, axis=1))),
        rotation=rot,
        centroid_A=centroid,
    )


def simple_cube(n_cells: int, a_A: float = 5.87) -> tuple[np.ndarray, np.ndarray]:
    """Cubic CsPbBr₃ cube with ``n_cells`` B sites per edge and a CsBr termination.

    A minimal stand-alone builder for tests and benchmarks of the KMC; the full structure
    builder is :func:`perovstem.simulate.nanocrystal`.

    Returns
    -------
    symbols : (H,) str
    positions_A : (H, 3) float
        Cs ``(n+1)³``, Pb ``n³``, Br ``3 n² (n+1)``; centred on the origin.
    """
    n = int(n_cells)
    r = np.arange(n)
    b = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3).astype(float)
    rc = np.arange(-1, n) + 0.5
    cs = np.stack(np.meshgrid(rc, rc, rc, indexing="ij"), -1).reshape(-1, 3)
    br = []
    for ax in range(3):
        grids = [r.astype(float)] * 3
        grids[ax] = rc
        br.append(np.stack(np.meshgrid(*grids, indexing="ij"), -1).reshape(-1, 3))
    br = np.concatenate(br)
    pos = np.concatenate([cs, b, br]) * a_A
    pos -= (n - 1) * a_A / 2
    sym = np.array(["Cs"] * len(cs) + ["Pb"] * len(b) + ["Br"] * len(br))
    return sym, pos
