"""Projected unit cells (StatSTEM ``Database/*.txt`` model) and the built-in CsPbBr3 [001],
[011] and [111] cells."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from perovstem._validation import check_positive, check_range, refuse_text_numbers
from perovstem.errors import DataError

__all__ = ["ProjectedCell", "cspbbr3_001_cell", "cspbbr3_011_cell", "cspbbr3_111_cell"]


@dataclass(frozen=True, eq=False)
class ProjectedCell:
    """A 2-D projected unit cell: lattice lengths, angle and the columns it contains.

    Parameters
    ----------
    a_A, b_A : float
        In-plane lattice lengths, Å.
    angle_deg : float
        Angle between a and b, degrees.
    sites : DataFrame
        One row per column in the cell: ``type`` (str), fractional ``u, v`` in [0, 1) and the
        fractional depth ``z`` of its first atom (StatSTEM ``zInfo``; 0 if unknown).
    c_A : float, optional
        Repeat distance along the beam, Å (atoms per column = thickness / c_A).
    name : str
        Label.
    """

    a_A: float
    b_A: float
    angle_deg: float = 90.0
    sites: pd.DataFrame = field(default_factory=pd.DataFrame)
    c_A: float | None = None
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "a_A", check_positive("a_A", self.a_A))
        object.__setattr__(self, "b_A", check_positive("b_A", self.b_A))
        object.__setattr__(self, "angle_deg", check_range("angle_deg", self.angle_deg, 1, 179))
        s = pd.DataFrame(self.sites).copy()
        for col in ("type", "u", "v"):
            if col not in s.columns:
                raise DataError(f"`sites` needs columns type, u, v; got {list(s.columns)}")
        if len(s) == 0:
            raise DataError("`sites` is empty: a projected cell needs at least one column")
        if "z" not in s.columns:
            s["z"] = 0.0
        s["type"] = s["type"].astype(str)
        s["u"] = np.mod(s["u"].astype(float), 1.0)
        s["v"] = np.mod(s["v"].astype(float), 1.0)
        object.__setattr__(self, "sites", s.reset_index(drop=True))

    @property
    def types(self) -> list[str]:
        """Column types in order of first appearance."""
        return list(dict.fromkeys(self.sites["type"]))

    def vectors(self, rotation_deg: float = 0.0) -> np.ndarray:
        """Lattice vectors as rows ``[[ax, ay], [bx, by]]`` in Å, a rotated by ``rotation_deg``."""
        t = np.deg2rad(rotation_deg)
        g = np.deg2rad(self.angle_deg)
        a = self.a_A * np.array([np.cos(t), np.sin(t)])
        b = self.b_A * np.array([np.cos(t + g), np.sin(t + g)])
        return np.vstack([a, b])

    def merged(self, merge_A: float = 0.5) -> ProjectedCell:
        """Cell whose sites closer than ``merge_A`` (in projection, periodic) are one column.

        StatSTEM database files list *atoms* with their projected fractions and depth
        (``zInfo``): atoms stacked along the beam repeat the same (x, y), and octahedral tilts
        split a column into sub-ångström pairs that no HAADF probe resolves.  Sites are
        grouped by single linkage at ``merge_A``; a group becomes one site at its mean
        position with ``n_atoms`` (atoms per cell repeat), the smallest ``z`` and a type made
        of its distinct atom types in order of appearance (e.g. ``"Pb"`` or ``"PbI"``).

        Parameters
        ----------
        merge_A : float
            Merge distance, Å (≥ 0; 0 merges exact duplicates only).
        """
        from scipy.cluster.hierarchy import fcluster, linkage

        check_positive("merge_A", merge_A, allow_zero=True)
        s = self.sites
        n = len(s)
        if n == 1:
            out = s.copy()
            out["n_atoms"] = out.get("n_atoms", 1)
            return ProjectedCell(self.a_A, self.b_A, self.angle_deg, out, self.c_A, self.name)
        uv = s[["u", "v"]].to_numpy(float)
        vec = self.vectors()
        shifts = np.array([(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1)], dtype=float)
        dist = np.zeros((n, n))
        for p in range(n):
            d = (uv[None, :, :] - uv[p][None, None, :]) + shifts[:, None, :]
            dist[p] = np.linalg.norm(d @ vec, axis=2).min(axis=0)
        iu = np.triu_indices(n, 1)
        lab = fcluster(linkage(dist[iu], "single"), max(float(merge_A), 1e-9), "distance")
        rows = []
        counts = s["n_atoms"].to_numpy(int) if "n_atoms" in s.columns else np.ones(n, int)
        for k in dict.fromkeys(lab):  # groups in order of first appearance
            idx = np.flatnonzero(lab == k)
            ref = uv[idx[0]]
            # unwrap every member next to the first one before averaging
            d = uv[idx] - ref
            d -= np.round(d)
            mean = ref + d.mean(axis=0)
            types = list(dict.fromkeys(s["type"].iloc[idx]))
            rows.append(
                {
                    "type": "".join(types),
                    "u": mean[0],
                    "v": mean[1],
                    "z": float(s["z"].iloc[idx].min()),
                    "n_atoms": int(counts[idx].sum()),
                }
            )
        return ProjectedCell(
            self.a_A, self.b_A, self.angle_deg, pd.DataFrame(rows), self.c_A, self.name
        )

    def min_distance_A(self, type_: str | None = None) -> float:
        """Smallest distance between two columns (of one type, if given) in the infinite lattice."""
        s = self.sites if type_ is None else self.sites[self.sites["type"] == type_]
        uv = s[["u", "v"]].to_numpy()
        vec = self.vectors()
        best = np.inf
        shifts = np.array([(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1)], dtype=float)
        for p in range(len(uv)):
            for q in range(len(uv)):
                d = (uv[q] - uv[p])[None, :] + shifts
                if p == q:
                    d = d[np.any(d != 0, axis=1)]
                r = np.linalg.norm(d @ vec, axis=1)
                best = min(best, float(r.min()))
        return best


def cspbbr3_001_cell(a_A: float = 5.87) -> ProjectedCell:
    """Pseudo-cubic CsPbBr3 viewed along [001]: Pb–Br column at (0, 0), Br columns at
    (½, 0) and (0, ½), Cs column at (½, ½); column types ``"PbBr"``, ``"Br"``, ``"Cs"``.

    ``a_A`` defaults to the cubic high-temperature value 5.87 Å (DESIGN.md); the orthorhombic
    room-temperature cell projects to a ≈ 5.8–5.9 Å pseudo-cubic sub-cell.
    """
    refuse_text_numbers(locals())
    sites = pd.DataFrame(
        {
            "type": ["PbBr", "Br", "Br", "Cs"],
            "u": [0.0, 0.5, 0.0, 0.5],
            "v": [0.0, 0.0, 0.5, 0.5],
            "z": [0.0, 0.5, 0.5, 0.5],
        }
    )
    return ProjectedCell(a_A, a_A, 90.0, sites, c_A=a_A, name="CsPbBr3 [001] (pseudo-cubic)")


def cspbbr3_011_cell(a_A: float = 5.87) -> ProjectedCell:
    """Pseudo-cubic CsPbBr3 viewed along [011] (≡ [110]): a = a₀ along [100], b = a₀/√2
    along [01-1]; pure Pb column at (0, 0), pure Br column at (0, ½), mixed Cs–Br column at
    (½, 0); (½, ½) is empty.  Column types ``"Pb_011"``, ``"Br_011"``, ``"CsBr_011"``.

    Along the beam the columns repeat every a₀√2 (8.30 Å at a₀ = 5.87 Å): one Pb, one Br,
    or one Cs + one Br per repeat (``c_A``), so the Pb and Br columns are about half as
    dense as in [001] and channel differently; the zone-specific type names keep [001]
    cross-section libraries (:func:`perovstem.simulate.scs_library`) from being applied to
    them — count [011] columns with the Gaussian mixture or a library simulated for this
    zone.  The simulator's truth tables (``nanocrystal(zone_axis="011")``) call the same
    columns ``Pb``, ``Br`` and ``CsBr``.
    """
    refuse_text_numbers(locals())
    sites = pd.DataFrame(
        {
            "type": ["Pb_011", "Br_011", "CsBr_011"],
            "u": [0.0, 0.0, 0.5],
            "v": [0.0, 0.5, 0.0],
            "z": [0.0, 0.25, 0.0],
        }
    )
    return ProjectedCell(
        a_A,
        a_A / np.sqrt(2.0),
        90.0,
        sites,
        c_A=a_A * np.sqrt(2.0),
        name="CsPbBr3 [011] (pseudo-cubic)",
    )


def cspbbr3_111_cell(a_A: float = 5.87) -> ProjectedCell:
    """Pseudo-cubic CsPbBr3 viewed along [111]: a hexagonal cell, a = b = a₀√(2/3) (4.79 Å at
    a₀ = 5.87 Å), 120° apart (the projections of [100] and [010]); mixed Cs–Pb column at
    (0, 0), Br columns at (½, 0), (0, ½) and (½, ½).  Column types ``"CsPb_111"``,
    ``"Br_111"``.

    Cs (0, 0, 0) and Pb (½, ½, ½) differ by a vector along [111], so they share a column
    (alternating, a₀√3/2 apart); each of the three Br sites projects to the midpoint of a
    projected lattice vector (a kagome net, 2.40 Å from the Cs–Pb columns).  Along the beam
    the columns repeat every a₀√3 (10.17 Å, ``c_A``): one Cs + one Pb, or one Br, per repeat.
    As for [011], the zone-specific type names keep [001] cross-section libraries off these
    columns: count them with the Gaussian mixture.  The simulator's truth tables
    (``nanocrystal(zone_axis="111")``) call them ``CsPb`` and ``Br`` (and ``Cs`` for corner
    columns holding one Cs only).
    """
    refuse_text_numbers(locals())
    sites = pd.DataFrame(
        {
            "type": ["CsPb_111", "Br_111", "Br_111", "Br_111"],
            "u": [0.0, 0.5, 0.0, 0.5],
            "v": [0.0, 0.0, 0.5, 0.5],
            "z": [0.0, 1.0 / 6.0, 1.0 / 6.0, 1.0 / 6.0],
        }
    )
    side = a_A * np.sqrt(2.0 / 3.0)
    return ProjectedCell(
        side, side, 120.0, sites, c_A=a_A * np.sqrt(3.0), name="CsPbBr3 [111] (pseudo-cubic)"
    )
