"""Analytic nanocrystal phantoms and HAADF tilt-series simulation (tomography ground truth).

The phantom is a faceted CsPbBr3-like nanocrystal: a convex polyhedron bounded by {100},
{110} and {111} planes of a cubic lattice in an arbitrary orientation, with spherical Pb
inclusions (metallic Pb clusters are brighter in HAADF).  Projections are *exact* line
integrals through the polyhedron and the spheres (ray/half-space clipping), averaged over
``supersample²`` rays per detector pixel (pixel-area integration), then drift shifts, an
in-plane tilt-axis rotation and a tilt-axis offset are applied analytically to the ray
positions and Poisson noise is drawn.  No voxel grid and no projector of
:mod:`perovstem.tomo` is used, so reconstructions tested against this truth are free of the
"inverse crime" (Kaipio & Somersalo, J. Comput. Appl. Math. 198, 493 (2007)).

Coordinates
-----------
Lab frame ``(x, y, z)`` in Å from the phantom centre: x = tilt axis = image columns, y = image
rows, z = beam direction at 0° tilt.  A projection at tilt θ integrates along
``d = (0, −sin θ, cos θ)``; the detector row coordinate is ``u = y cos θ + z sin θ``
(same convention as :class:`perovstem.tomo.projector.Projector`).  Voxel ``vol[k, i, j]``
of a truth volume sits at ``z = (k − (nz−1)/2)·dx``, ``y = (i − (ny−1)/2)·dx``,
``x = (j − (nx−1)/2)·dx``.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from numba import njit, prange

from perovstem._data import TiltSeries
from perovstem._limits import (
    MAX_COUNTS_PER_A,
    MAX_DOSE_E_PER_A2,
    check_at_most,
    check_image_px,
    check_stack_px,
)
from perovstem._validation import check_positive
from perovstem.errors import ParameterError
from perovstem.simulate._noise import shot_noise

__all__ = [
    "NanocrystalPhantom",
    "nanocrystal_phantom",
    "tilt_scheme",
    "atoms_to_volume",
    "tilt_series",
    "degradation_phantoms",
    "degradation_tilt_series",
    "facet_family_directions",
    "rotation_from_euler",
]

_FAMILIES = ("100", "110", "111")


def facet_family_directions() -> dict[str, np.ndarray]:
    """Unit normals of the {100} (6), {110} (12) and {111} (8) families, crystal frame."""
    out: dict[str, np.ndarray] = {}
    e = np.eye(3)
    out["100"] = np.concatenate([e, -e])
    v110 = []
    for i in range(3):
        for j in range(i + 1, 3):
            for si in (1, -1):
                for sj in (1, -1):
                    v = np.zeros(3)
                    v[i], v[j] = si, sj
                    v110.append(v / np.sqrt(2))
    out["110"] = np.array(v110)
    out["111"] = np.array(
        [[sx, sy, sz] for sx in (1, -1) for sy in (1, -1) for sz in (1, -1)], float
    ) / np.sqrt(3)
    return out


def rotation_from_euler(angles_deg: Any) -> np.ndarray:
    """Rotation matrix (crystal → lab) ``Rz(γ) Ry(β) Rx(α)`` from ``(α, β, γ)`` in degrees."""
    ax, ay, az = np.deg2rad(np.asarray(angles_deg, dtype=float))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True, eq=False)
class NanocrystalPhantom:
    """Analytic faceted nanocrystal with spherical inclusions.

    Attributes
    ----------
    half_edge_A : float
        Distance of the {100} planes from the centre, Å.
    r110, r111 : float
        Distances of the {110} and {111} planes relative to ``half_edge_A`` (a cube has
        ``r110 >= 2/√2·... `` i.e. no {110} facet when ``r110 >= √2`` and no {111} facet when
        ``r111 >= √3``).
    rotation : (3, 3) ndarray
        Crystal → lab rotation.
    density : float
        HAADF signal per Å of path through the host crystal (arbitrary units).
    inclusions : (K, 5) ndarray
        Rows ``(x_A, y_A, z_A, radius_A, density)`` in the lab frame (relative to the centre);
        ``density`` is absolute (replaces the host inside the sphere).
    centre_A : (3,) ndarray
        Lab position of the centre relative to the field-of-view centre, Å.
    """

    half_edge_A: float
    r110: float
    r111: float
    rotation: np.ndarray
    density: float = 1.0
    inclusions: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)))
    centre_A: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def replace(self, **changes: Any) -> NanocrystalPhantom:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ geometry
    def planes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Lab-frame outward unit normals (F, 3), distances (F,) Å and family index (F,)."""
        fam = facet_family_directions()
        ratios = {"100": 1.0, "110": self.r110, "111": self.r111}
        normals, dist, idx = [], [], []
        for f_i, name in enumerate(_FAMILIES):
            n = fam[name] @ self.rotation.T
            normals.append(n)
            dist.append(np.full(len(n), ratios[name] * self.half_edge_A))
            idx.append(np.full(len(n), f_i))
        return np.concatenate(normals), np.concatenate(dist), np.concatenate(idx)

    def vertices_A(self) -> np.ndarray:
        """Polyhedron vertices (lab frame, relative to the centre), Å."""
        from scipy.spatial import HalfspaceIntersection

        n, d, _ = self.planes()
        hs = np.hstack([n, -d[:, None]])
        v = HalfspaceIntersection(hs, np.zeros(3)).intersections
        return np.unique(np.round(v, 9), axis=0)

    def truth(self) -> dict[str, Any]:
        """Analytic truth: volume, surface and facet-family area fractions.

        Returns
        -------
        dict
            ``volume_A3`` (occupied volume: host polyhedron plus the parts of inclusions
            that protrude from it, minus empty inclusions (``density`` 0: voids) inside it;
            what a segmentation of the object measures), ``host_volume_A3`` (the
            polyhedron alone), ``surface_A2`` (of the polyhedron), ``inclusion_volume_A3``,
            ``facets`` (DataFrame: family, area_A2, fraction).
        """
        from scipy.spatial import ConvexHull

        hull = ConvexHull(self.vertices_A())
        tri = hull.points[hull.simplices]
        areas = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
        normals_c = hull.equations[:, :3] @ self.rotation  # lab → crystal
        fam = facet_family_directions()
        rows = []
        total = areas.sum()
        assigned = np.zeros(len(areas), bool)
        for name in _FAMILIES:
            cosmax = np.max(normals_c @ fam[name].T, axis=1)
            m = (cosmax > np.cos(np.deg2rad(1.0))) & ~assigned
            assigned |= m
            rows.append((name, float(areas[m].sum()), float(areas[m].sum() / total)))
        rows.append(("other", float(areas[~assigned].sum()), float(areas[~assigned].sum() / total)))
        inc = self.inclusions
        return {
            "volume_A3": _occupied_volume(self, float(hull.volume)),
            "host_volume_A3": float(hull.volume),
            "surface_A2": float(total),
            "inclusion_volume_A3": float(np.sum(4.0 / 3.0 * np.pi * inc[:, 3] ** 3)),
            "facets": pd.DataFrame(rows, columns=["family", "area_A2", "fraction"]),
        }

    # ------------------------------------------------------------------ sampling
    def voxelize(self, shape: Any, voxel_size_A: float, *, supersample: int = 3) -> np.ndarray:
        """Partial-volume density on a ``(nz, ny, nx)`` grid (voxel = ``voxel_size_A``).

        Voxels farther than half a diagonal from every surface take the exact value; the
        others are averaged over ``supersample³`` sub-points.
        """
        nz, ny, nx = (int(s) for s in shape)
        n, d, _ = self.planes()
        return _voxelize(
            nz,
            ny,
            nx,
            float(voxel_size_A),
            np.asarray(self.centre_A, float),
            n,
            d,
            float(self.density),
            np.asarray(self.inclusions, float).reshape(-1, 5),
            int(supersample),
        )


#: most Pb inclusions a phantom may hold (hundreds already crowd a 20 nm crystal)
MAX_INCLUSIONS = 1000


def nanocrystal_phantom(
    edge_A: float = 80.0,
    *,
    r110: float = 1.25,
    r111: float = 1.40,
    orientation_deg: Any = None,
    n_inclusions: int = 2,
    inclusion_radius_A: Any = None,
    inclusion_density: float = 2.5,
    density: float = 1.0,
    centre_A: Any = (0.0, 0.0, 0.0),
    rng: Any = None,
) -> NanocrystalPhantom:
    """A faceted perovskite nanocrystal phantom with Pb inclusions.

    Parameters
    ----------
    edge_A : float
        Edge of the untruncated cube ({100} plane separation), Å.
    r110, r111 : float
        {110}/{111} plane distances relative to the {100} distance (``√2``/``√3`` or more:
        no such facets).  Defaults give {100} ≈ 60 %, {110} ≈ 25 %, {111} ≈ 15 % of the area.
    orientation_deg : (3,) array_like, optional
        Euler angles (crystal → lab, see :func:`rotation_from_euler`); random when None.
    n_inclusions : int
        Number of spherical Pb inclusions (placed inside, non-overlapping).
    inclusion_radius_A : (float, float) or float, optional
        Range of inclusion radii, Å.  Default (6, 10) Å, scaled down with a warning when
        ``n_inclusions`` of them do not fit in the crystal; given radii that do not fit are
        an error.
    inclusion_density, density : float
        HAADF signal per Å of Pb and of the host (Pb-rich clusters are brighter).
    centre_A : (3,) array_like
        Lab-frame centre offset, Å.
    rng : seed or Generator
    """
    gen = np.random.default_rng(rng)
    if not np.isfinite(edge_A) or edge_A <= 0:
        raise ParameterError(f"`edge_A` must be > 0 Å, got {edge_A}")
    if int(n_inclusions) != n_inclusions or n_inclusions < 0:
        raise ParameterError(f"`n_inclusions` must be an integer >= 0, got {n_inclusions!r}")
    if n_inclusions > MAX_INCLUSIONS:
        # (100000 were tried for 47 s before "could not place" was said)
        raise ParameterError(
            f"`n_inclusions` must be <= {MAX_INCLUSIONS} (Pb inclusions of a nanocrystal), got "
            f"{int(n_inclusions)}"
        )
    for name, v in (("density", density), ("inclusion_density", inclusion_density)):
        check_positive(name, v, allow_zero=True)
    if r110 <= 1.0 or r111 <= 1.0:
        raise ParameterError(f"`r110` and `r111` must be > 1, got {r110}, {r111}")
    if orientation_deg is None:
        from scipy.spatial.transform import Rotation

        rot = Rotation.random(random_state=gen.integers(2**31)).as_matrix()
    else:
        rot = rotation_from_euler(orientation_deg)
    a = edge_A / 2.0
    ph = NanocrystalPhantom(
        a,
        float(r110),
        float(r111),
        rot,
        float(density),
        np.zeros((0, 5)),
        np.asarray(centre_A, float),
    )
    n, d, _ = ph.planes()
    given = inclusion_radius_A is not None
    lo_r, hi_r = _inclusion_radii(inclusion_radius_A if given else (6.0, 10.0))
    k, rho = int(n_inclusions), float(inclusion_density)
    # first draw exactly as before (the same realisation for every seed that placed them)
    incl = _place_inclusions(gen, n, d, a, k, lo_r, hi_r, rho)
    for _ in range(20):  # a large first inclusion may leave no room: draw all of them again
        if len(incl) == k:
            break
        incl = _place_inclusions(gen, n, d, a, k, lo_r, hi_r, rho, batch=True)
    scale = 1.0
    while len(incl) < k and not given and hi_r * scale * 0.85 >= 1.0:
        scale *= 0.85  # the default radii are for larger crystals: smaller inclusions
        for _ in range(5):
            incl = _place_inclusions(gen, n, d, a, k, lo_r * scale, hi_r * scale, rho, batch=True)
            if len(incl) == k:
                break
    if len(incl) < k:
        what = "smaller `inclusion_radius_A`, " if given else ""
        raise ParameterError(
            f"could not place {k} inclusions (`n_inclusions`) of radius {lo_r * scale:.3g}-"
            f"{hi_r * scale:.3g} Å in a {edge_A:g} Å crystal (`edge_A`): give {what}fewer "
            "inclusions or a larger crystal"
        )
    if scale < 1.0:
        import warnings

        warnings.warn(
            f"{k} inclusions of the default radius {lo_r:g}-{hi_r:g} Å do not fit in a "
            f"{edge_A:g} Å crystal (`edge_A`): radii scaled by {scale:.2f} to "
            f"{lo_r * scale:.3g}-{hi_r * scale:.3g} Å (give `inclusion_radius_A`, fewer "
            "inclusions or a larger crystal to choose)",
            UserWarning,
            stacklevel=2,
        )
    return ph.replace(inclusions=np.array(incl, float).reshape(-1, 5))


def _inclusion_radii(value: Any) -> tuple[float, float]:
    """``(lo, hi)`` radii of the inclusions, Å (a number gives ``lo = hi``)."""
    try:
        r = np.asarray(value, dtype=float).ravel() if np.ndim(value) <= 1 else np.array([np.nan])
    except (TypeError, ValueError):
        r = np.array([np.nan])
    if r.size not in (1, 2) or not np.all(np.isfinite(r)) or np.any(r <= 0) or r[0] > r[-1]:
        raise ParameterError(
            "`inclusion_radius_A` must be a radius or a (min, max) range of radii > 0 Å, "
            f"got {value!r}"
        )
    return float(r[0]), float(r[-1])


def _place_inclusions(
    gen: np.random.Generator,
    n: np.ndarray,
    d: np.ndarray,
    a: float,
    k: int,
    lo_r: float,
    hi_r: float,
    density: float,
    *,
    batch: bool = False,
) -> list[list[float]]:
    """Up to ``k`` non-overlapping spheres inside the polyhedron ``n·x <= d`` (rejection).

    ``batch=False``: 10 000 sequential draws (the original order of random numbers);
    ``batch=True``: 2 000 candidates drawn at once and screened against the faces together.
    """
    incl: list[list[float]] = []

    def fits(c: np.ndarray, r: float) -> bool:
        return all(np.linalg.norm(c - np.array(q[:3])) >= r + q[3] + 2.0 for q in incl)

    if batch:
        r = gen.uniform(lo_r, hi_r, 2000)
        c = gen.uniform(-a, a, (2000, 3))
        inside = np.all(c @ n.T + r[:, None] + 1.0 <= d, axis=1)
        for ci, ri in zip(c[inside], r[inside], strict=True):
            if len(incl) == k:
                break
            if fits(ci, ri):
                incl.append([*ci, float(ri), density])
        return incl
    tries = 0
    while len(incl) < k and tries < 10000:
        tries += 1
        r0 = gen.uniform(lo_r, hi_r)
        c0 = gen.uniform(-a, a, 3)
        if np.any(n @ c0 + r0 + 1.0 > d):
            continue
        if fits(c0, r0):
            incl.append([*c0, r0, density])
    return incl


# --------------------------------------------------------------------------- numba kernels
@njit(cache=True)
def _chord(px, py, pz, dy, dz, n, d, cx, cy, cz):
    """Entry/exit parameters of the ray p + t·(0, dy, dz) through the polyhedron."""
    tmin = -1e30
    tmax = 1e30
    for f in range(n.shape[0]):
        nd = n[f, 1] * dy + n[f, 2] * dz
        npv = n[f, 0] * (px - cx) + n[f, 1] * (py - cy) + n[f, 2] * (pz - cz)
        if abs(nd) < 1e-12:
            if npv > d[f]:
                return 0.0, 0.0
        elif nd > 0:
            t = (d[f] - npv) / nd
            if t < tmax:
                tmax = t
        else:
            t = (d[f] - npv) / nd
            if t > tmin:
                tmin = t
    if tmax <= tmin:
        return 0.0, 0.0
    return tmin, tmax


@njit(cache=True, parallel=True)
def _project(xs, us, cos_t, sin_t, n, d, centre, rho, incl, out):
    """Line integrals for rays at lab x = xs[q], detector u = us[q] for every angle."""
    na = cos_t.shape[0]
    nq = xs.shape[1]
    cx, cy, cz = centre[0], centre[1], centre[2]
    for a in prange(na):
        c = cos_t[a]
        s = sin_t[a]
        for q in range(nq):
            px = xs[a, q]
            py = us[a, q] * c
            pz = us[a, q] * s
            dy = -s
            dz = c
            t0, t1 = _chord(px, py, pz, dy, dz, n, d, cx, cy, cz)
            val = rho * (t1 - t0)
            for m in range(incl.shape[0]):
                ox = px - cx - incl[m, 0]
                oy = py - cy - incl[m, 1]
                oz = pz - cz - incl[m, 2]
                bb = ox * 0.0 + oy * dy + oz * dz
                cc = ox * ox + oy * oy + oz * oz - incl[m, 3] ** 2
                disc = bb * bb - cc
                if disc > 0:
                    sq = np.sqrt(disc)
                    s0 = -bb - sq
                    s1 = -bb + sq
                    inside = max(0.0, min(s1, t1) - max(s0, t0))
                    val += incl[m, 4] * (s1 - s0) - rho * inside
            out[a, q] = val


@njit(cache=True)
def _density(x, y, z, n, d, rho, incl):
    for f in range(n.shape[0]):
        if n[f, 0] * x + n[f, 1] * y + n[f, 2] * z > d[f]:
            # outside the crystal: inclusions may still protrude
            for m in range(incl.shape[0]):
                r2 = (x - incl[m, 0]) ** 2 + (y - incl[m, 1]) ** 2 + (z - incl[m, 2]) ** 2
                if r2 <= incl[m, 3] ** 2:
                    return incl[m, 4]
            return 0.0
    for m in range(incl.shape[0]):
        r2 = (x - incl[m, 0]) ** 2 + (y - incl[m, 1]) ** 2 + (z - incl[m, 2]) ** 2
        if r2 <= incl[m, 3] ** 2:
            return incl[m, 4]
    return rho


@njit(cache=True, parallel=True)
def _voxelize(nz, ny, nx, dx, centre, n, d, rho, incl, ss):
    vol = np.zeros((nz, ny, nx), dtype=np.float32)
    half_diag = 0.5 * np.sqrt(3.0) * dx
    for k in prange(nz):
        z = (k - (nz - 1) / 2.0) * dx - centre[2]
        for i in range(ny):
            y = (i - (ny - 1) / 2.0) * dx - centre[1]
            for j in range(nx):
                x = (j - (nx - 1) / 2.0) * dx - centre[0]
                # signed distance to the polyhedron (max over planes) and to spheres
                sd = -1e30
                for f in range(n.shape[0]):
                    v = n[f, 0] * x + n[f, 1] * y + n[f, 2] * z - d[f]
                    if v > sd:
                        sd = v
                near = abs(sd) < half_diag
                for m in range(incl.shape[0]):
                    r = np.sqrt(
                        (x - incl[m, 0]) ** 2 + (y - incl[m, 1]) ** 2 + (z - incl[m, 2]) ** 2
                    )
                    if abs(r - incl[m, 3]) < half_diag:
                        near = True
                if not near:
                    vol[k, i, j] = _density(x, y, z, n, d, rho, incl)
                else:
                    acc = 0.0
                    for a in range(ss):
                        for b in range(ss):
                            for c in range(ss):
                                acc += _density(
                                    x + ((a + 0.5) / ss - 0.5) * dx,
                                    y + ((b + 0.5) / ss - 0.5) * dx,
                                    z + ((c + 0.5) / ss - 0.5) * dx,
                                    n,
                                    d,
                                    rho,
                                    incl,
                                )
                    vol[k, i, j] = acc / ss**3
    return vol


# --------------------------------------------------------------------------- tilt series

# --------------------------------------------------------------------------- tilt schemes
_SCHEMES = ("sequential", "bidirectional", "dose-symmetric")


def tilt_scheme(
    max_tilt_deg: float = 70.0,
    step_deg: float = 2.0,
    *,
    min_tilt_deg: float | None = None,
    scheme: str = "dose-symmetric",
    group_size: int = 2,
    start_deg: float = 0.0,
) -> pd.DataFrame:
    """Tilt angles of an acquisition scheme and the order in which they are recorded.

    Parameters
    ----------
    max_tilt_deg : float
        Largest tilt, degrees (0 < ``max_tilt_deg`` ≤ 90).
    step_deg : float
        Angular increment, degrees (> 0).
    min_tilt_deg : float, optional
        Most negative tilt, degrees (default ``-max_tilt_deg``).  An asymmetric range
        (e.g. −60 … +70 when the holder shadows one side) widens the missing wedge.
    scheme : {"sequential", "bidirectional", "dose-symmetric"}
        ``sequential``: from ``min_tilt_deg`` to ``max_tilt_deg``.  ``bidirectional``: from
        the angle nearest ``start_deg`` to the positive end, then from the next lower angle
        to the negative end.  ``dose-symmetric``: start at the angle nearest ``start_deg``
        and alternate between the positive and the negative branch in groups of
        ``group_size`` angles, so that the low tilts, which carry most high-resolution
        information, receive the least accumulated dose (Hagen, Wan & Briggs,
        J. Struct. Biol. 197, 191 (2017)); the first excursion (to the positive side) takes
        one angle, as in that paper (0, +3, −3, −6, +6, +9, ... for ``group_size=2``).
    group_size : int
        Angles per excursion of the dose-symmetric scheme (≥ 1).
    start_deg : float
        Starting angle for ``bidirectional`` and ``dose-symmetric`` schemes, degrees.

    Returns
    -------
    DataFrame
        One row per projection, sorted by angle: ``angle_deg`` and ``order`` (0-based
        acquisition index).  ``attrs``: ``scheme``, ``step_deg``, ``tilt_range_deg``
        (min, max) and ``missing_wedge_deg`` = 180° − (max − min).

    Raises
    ------
    ParameterError
        Non-positive step, a range outside ±90°, an empty range, an unknown scheme or a
        bad group size.
    """
    if not np.isfinite(step_deg) or step_deg <= 0:
        raise ParameterError(f"`step_deg` must be > 0 degrees, got {step_deg!r}")
    if not np.isfinite(max_tilt_deg) or not 0 < max_tilt_deg <= 90:
        raise ParameterError(f"`max_tilt_deg` must be in (0, 90] degrees, got {max_tilt_deg!r}")
    lo = -float(max_tilt_deg) if min_tilt_deg is None else float(min_tilt_deg)
    if not np.isfinite(lo) or not -90 <= lo < max_tilt_deg:
        raise ParameterError(
            f"`min_tilt_deg` must be in [-90, {float(max_tilt_deg):g}) degrees (below the "
            f"largest tilt `max_tilt_deg`), got {min_tilt_deg!r}"
        )
    if scheme not in _SCHEMES:
        raise ParameterError(f"`scheme` must be one of {list(_SCHEMES)}, got {scheme!r}")
    if isinstance(group_size, bool) or int(group_size) != group_size or group_size < 1:
        raise ParameterError(f"`group_size` must be an integer >= 1, got {group_size!r}")
    hi = float(max_tilt_deg)
    # angles on the grid start + k·step inside [lo, hi] (so that start_deg is recorded)
    k0 = int(np.ceil((lo - start_deg) / step_deg - 1e-9))
    k1 = int(np.floor((hi - start_deg) / step_deg + 1e-9))
    if scheme == "sequential":
        k0 = 0
        k1 = int(np.floor((hi - lo) / step_deg + 1e-9))
        ang = lo + step_deg * np.arange(k0, k1 + 1)
    else:
        ang = start_deg + step_deg * np.arange(k0, k1 + 1)
    ang = np.round(ang, 9)
    if ang.size < 2:
        raise ParameterError(
            f"tilt range {lo}…{hi}° with step {step_deg}° gives fewer than two projections"
        )
    if scheme == "sequential":
        seq = list(range(ang.size))
    else:
        i0 = int(np.argmin(np.abs(ang - start_deg)))
        up = list(range(i0 + 1, ang.size))
        down = list(range(i0 - 1, -1, -1))
        if scheme == "bidirectional":
            seq = [i0, *up, *down]
        else:
            seq = [i0]
            side, take = 0, 1  # first excursion: one angle on the positive side
            branches = [up, down]
            while branches[0] or branches[1]:
                br = branches[side] if branches[side] else branches[1 - side]
                seq.extend(br[:take])
                del br[:take]
                side, take = 1 - side, int(group_size)
    order = np.empty(ang.size, dtype=np.int64)
    order[np.asarray(seq)] = np.arange(ang.size)
    df = pd.DataFrame({"angle_deg": ang, "order": order})
    df.attrs.update(
        scheme=scheme,
        step_deg=float(step_deg),
        tilt_range_deg=(float(ang.min()), float(ang.max())),
        missing_wedge_deg=float(180.0 - (ang.max() - ang.min())),
        group_size=int(group_size),
    )
    return df


_Z_OF = {"Cs": 55, "Pb": 82, "Cd": 48, "Br": 35, "I": 53, "Cl": 17, "O": 8}


def atoms_to_volume(
    atoms: Any,
    voxel_size_A: float,
    *,
    shape: Any = None,
    sigma_A: float = 0.5,
    z_exponent: float = 1.7,
) -> np.ndarray:
    """Voxel phantom of an atomic structure: Gaussian atoms weighted by Z^n (HAADF contrast).

    Each atom contributes ``Z**z_exponent`` (Rutherford-like HAADF Z-contrast, n ≈ 1.7;
    Hartel et al., Ultramicroscopy 63, 93 (1996)) spread as a normalised 3-D Gaussian of
    width ``sigma_A`` (thermal + probe smearing), so the volume integrates to
    ``volume.sum()·voxel_size_A³ = Σ Z**n`` (atoms inside the grid).

    Parameters
    ----------
    atoms : ase.Atoms
        Structure (lab frame, Å); the grid is centred on the atoms' bounding-box centre, as
        :func:`tilt_series` centres a voxel phantom on the tilt axis.
    voxel_size_A : float
        Voxel edge, Å.
    shape : (nz, ny, nx), optional
        Grid shape (default: bounding box + 4σ on each side).
    sigma_A : float
        Gaussian width of an atom, Å (> 0).
    z_exponent : float
        Exponent n of the Z-contrast weight.

    Returns
    -------
    volume : (nz, ny, nx) float64 ndarray
        Density per Å³ (voxel ``[k, i, j]`` at ``z, y, x`` as in the module docstring).
    """
    from scipy import ndimage

    if not np.isfinite(voxel_size_A) or voxel_size_A <= 0:
        raise ParameterError(f"`voxel_size_A` must be > 0 Å, got {voxel_size_A!r}")
    if not np.isfinite(sigma_A) or sigma_A <= 0:
        raise ParameterError(f"`sigma_A` must be > 0 Å, got {sigma_A!r}")
    pos = np.asarray(atoms.get_positions(), float)
    if len(pos) == 0:
        raise ParameterError("`atoms` is empty: nothing to voxelise")
    z = np.asarray(atoms.get_atomic_numbers(), float)
    w = z**z_exponent
    centre = 0.5 * (pos.min(axis=0) + pos.max(axis=0))
    rel = pos - centre  # (x, y, z)
    if shape is None:
        ext = np.abs(rel).max(axis=0) + 4 * sigma_A
        nx, ny, nz = (2 * np.ceil(ext / voxel_size_A).astype(int) + 1).tolist()
    else:
        nz, ny, nx = (int(v) for v in shape)
    vol = np.zeros((nz, ny, nx))
    idx = rel[:, ::-1] / voxel_size_A + (np.array([nz, ny, nx]) - 1) / 2.0  # (k, i, j)
    base = np.floor(idx).astype(int)
    frac = idx - base
    # trilinear deposit keeps the first moment exact, then a Gaussian blur
    for dk in (0, 1):
        for di in (0, 1):
            for dj in (0, 1):
                wt = (
                    w
                    * np.where(dk, frac[:, 0], 1 - frac[:, 0])
                    * np.where(di, frac[:, 1], 1 - frac[:, 1])
                    * np.where(dj, frac[:, 2], 1 - frac[:, 2])
                )
                k, i, j = base[:, 0] + dk, base[:, 1] + di, base[:, 2] + dj
                ok = (k >= 0) & (k < nz) & (i >= 0) & (i < ny) & (j >= 0) & (j < nx)
                np.add.at(vol, (k[ok], i[ok], j[ok]), wt[ok])
    vol = ndimage.gaussian_filter(vol, sigma_A / voxel_size_A, mode="constant")
    return vol / voxel_size_A**3


def _ray_positions(
    na: int,
    shape: tuple[int, int],
    supersample: int,
    sh: np.ndarray,
    tilt_axis_deg: float,
    axis_offset_px: float,
    pixel_size_A: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Object-frame ray coordinates (x along the tilt axis, u across it), Å, per projection."""
    m, nn = shape
    off = (np.arange(supersample) + 0.5) / supersample - 0.5
    rr = (np.arange(m) - (m - 1) / 2.0)[:, None] + off[None, :]
    cc = (np.arange(nn) - (nn - 1) / 2.0)[:, None] + off[None, :]
    yi, xi = np.meshgrid(rr.ravel(), cc.ravel(), indexing="ij")  # (m*ss, n*ss)
    phi = -np.deg2rad(tilt_axis_deg)  # CCW as displayed (row 0 on top) = towards -rows
    xs = np.empty((na, yi.size))
    us = np.empty((na, yi.size))
    for a in range(na):
        yy = yi - sh[a, 0]
        xx = xi - sh[a, 1]
        # image → object frame: undo the in-plane rotation of the tilt axis
        xo = np.cos(phi) * xx + np.sin(phi) * yy
        yo = -np.sin(phi) * xx + np.cos(phi) * yy
        xs[a] = xo.ravel() * pixel_size_A
        us[a] = (yo.ravel() - axis_offset_px) * pixel_size_A
    return xs, us


def _project_volume(
    vol: np.ndarray, voxel_A: float, xs: np.ndarray, us: np.ndarray, theta: np.ndarray
) -> np.ndarray:
    """Line integrals through a voxel volume (trilinear samples every half voxel)."""
    from scipy import ndimage

    nz, ny, nx = vol.shape
    half = 0.5 * voxel_A * np.sqrt(ny**2 + nz**2)
    dt = 0.5 * voxel_A
    ts = np.arange(-half, half + dt / 2, dt)
    cz, cy, cx = (nz - 1) / 2.0, (ny - 1) / 2.0, (nx - 1) / 2.0
    out = np.empty(xs.shape)
    for a, th in enumerate(theta):
        c, s = np.cos(th), np.sin(th)
        x = xs[a][:, None] + 0.0 * ts[None, :]
        y = us[a][:, None] * c - ts[None, :] * s
        z = us[a][:, None] * s + ts[None, :] * c
        coords = np.stack([z / voxel_A + cz, y / voxel_A + cy, x / voxel_A + cx])
        val = ndimage.map_coordinates(vol, coords.reshape(3, -1), order=1, mode="constant")
        out[a] = val.reshape(x.shape).sum(axis=1) * dt
    return out


def tilt_series(
    obj: Any,
    angles_deg: Any,
    *,
    shape: Any = (128, 128),
    pixel_size_A: float = 1.0,
    supersample: int = 2,
    counts_per_A: float = 10.0,
    background: float = 0.0,
    shifts_px: Any = None,
    shift_sigma_px: float = 0.0,
    tilt_axis_deg: float = 0.0,
    axis_offset_px: float = 0.0,
    noise: bool = True,
    truth_volume: bool = False,
    dose_e_per_A2: float | None = None,
    acquisition_order: Any = None,
    voxel_size_A: float | None = None,
    rng: Any = None,
) -> tuple[TiltSeries, dict[str, Any]]:
    """Simulate a HAADF-STEM tilt series of a phantom or a structure.

    Parameters
    ----------
    obj : NanocrystalPhantom, (nz, ny, nx) ndarray or ase.Atoms
        An analytic phantom (exact line integrals through polyhedron and spheres); a voxel
        phantom (density per Å of path, voxel ``voxel_size_A``, centred on the tilt axis;
        line integrals by trilinear sampling every half voxel); or an atomic structure,
        voxelised by :func:`atoms_to_volume` (Z^1.7-weighted Gaussian atoms).
    angles_deg : (A,) array_like
        Tilt angles, degrees (rotation about the tilt axis), e.g.
        ``tilt_scheme(...)["angle_deg"]``.  Projections are stored in this order.
    shape : (int, int)
        Detector ``(M, N)`` = (rows along y, columns along the tilt axis x).
    pixel_size_A : float
        Pixel (and truth voxel) size, Å.
    supersample : int
        Rays per pixel edge (pixel-area integration).
    counts_per_A : float
        Expected detector counts per pixel per Å of host path (density 1).
    background : float
        Constant expected counts added to every pixel (vacuum/support signal).
    shifts_px : (A, 2) array_like, optional
        True ``(dy, dx)`` displacement of each projection's content, pixels.
    shift_sigma_px : float
        When ``shifts_px`` is None: random-walk drift with this step σ, pixels (zero mean),
        accumulated in acquisition order.
    tilt_axis_deg : float
        In-plane direction of the tilt axis in the images, degrees from the image x axis,
        counter-clockwise as displayed with row 0 on top (towards −rows), as in TiltSeries.
    axis_offset_px : float
        Tilt-axis position along the image y direction relative to the image centre, px.
    noise : bool
        Poisson noise on the counts.
    truth_volume : bool
        Also return the truth ``(M, M, N)`` (z, y, x) volume on the pixel grid in
        ``truth["volume"]`` (analytic phantom: partial-volume voxelisation; voxel phantom or
        structure: the voxel density resampled onto that grid).
    dose_e_per_A2 : float, optional
        Dose of the whole tilt series, e⁻/Å² (metadata; with ``acquisition_order`` the
        cumulative dose at each projection is recorded too, equal doses per projection).
    acquisition_order : (A,) array_like of int, optional
        Acquisition index of each projection (``tilt_scheme(...)["order"]``, e.g. the
        dose-symmetric order); default: the order of ``angles_deg``.
    voxel_size_A : float, optional
        Voxel size of a voxel phantom (default ``pixel_size_A``) or of the voxelised
        structure (default ``min(pixel_size_A, 0.5)``), Å.
    rng : seed or Generator

    Returns
    -------
    tilt_series : TiltSeries
        Counts, ``(A, M, N)`` float32; metadata records the simulation parameters,
        ``acquisition_order`` and ``missing_wedge_deg``.
    truth : dict
        ``shifts_px`` (A, 2), ``tilt_axis_deg``, ``axis_offset_px``, ``acquisition_order``,
        ``integral`` (∫ density dV), ``fraction_outside_field`` (A,: the projected mass
        outside the field, warned about above 1 %), optionally ``volume``; for an analytic phantom also
        ``facets`` DataFrame, ``volume_A3`` (occupied), ``host_volume_A3``, ``surface_A2``,
        ``inclusion_volume_A3``.
    """
    from perovstem.tomo.projector import check_angles

    gen = np.random.default_rng(rng)
    ang = check_angles(angles_deg)
    m, nn = (int(v) for v in shape)
    if m < 3 or nn < 1:
        raise ParameterError(f"`shape` must be (M >= 3, N >= 1), got {shape}")
    check_image_px((m, nn), name="shape", why="the largest simulated projection")
    check_stack_px(ang.size, (m, nn))
    if supersample < 1:
        raise ParameterError(f"`supersample` must be >= 1, got {supersample}")
    if not np.isfinite(pixel_size_A) or pixel_size_A <= 0:
        raise ParameterError(f"`pixel_size_A` must be > 0, got {pixel_size_A}")
    if voxel_size_A is not None and (not np.isfinite(voxel_size_A) or voxel_size_A <= 0):
        raise ParameterError(f"`voxel_size_A` must be > 0 Å, got {voxel_size_A!r}")
    check_positive("counts_per_A", counts_per_A)
    check_positive("background", background, allow_zero=True)
    why = "a pixel counts at most the electrons that hit it"
    check_at_most("counts_per_A", float(counts_per_A), MAX_COUNTS_PER_A, "counts/Å", why)
    check_at_most("background", float(background), MAX_COUNTS_PER_A, "counts", why)
    if dose_e_per_A2 is not None:
        check_positive("dose_e_per_A2", dose_e_per_A2, allow_zero=True)
        check_at_most(
            "dose_e_per_A2",
            float(dose_e_per_A2),
            MAX_DOSE_E_PER_A2,
            "e⁻/Å²",
            "the dose of one tilt series",
        )
    check_positive("shift_sigma_px", shift_sigma_px, allow_zero=True)
    for name, value in (("tilt_axis_deg", tilt_axis_deg), ("axis_offset_px", axis_offset_px)):
        if not np.isfinite(float(value)):
            raise ParameterError(f"`{name}` must be finite, got {value!r}")
    na = ang.size
    if acquisition_order is None:
        order = np.arange(na)
    else:
        order = np.asarray(acquisition_order)
        if (
            order.shape != (na,)
            or not np.issubdtype(order.dtype, np.integer)
            or not np.array_equal(np.sort(order), np.arange(na))
        ):
            raise ParameterError(
                f"`acquisition_order` must be a permutation of 0…{na - 1}, got {order!r}"
            )
    if shifts_px is None:
        if shift_sigma_px > 0:
            steps = gen.normal(0.0, shift_sigma_px, (na, 2))
            walk = np.cumsum(steps, axis=0)  # in time (acquisition) order
            sh = walk[order]
            sh -= sh.mean(axis=0)
        else:
            sh = np.zeros((na, 2))
    else:
        sh = np.asarray(shifts_px, float)
        if sh.shape != (na, 2):
            raise ParameterError(f"`shifts_px` must have shape ({na}, 2), got {sh.shape}")
    if isinstance(obj, NanocrystalPhantom):
        # a crystal wider than the field in every direction: every projection is truncated
        field_A = min(m, nn) * float(pixel_size_A)
        if 2.0 * obj.half_edge_A > field_A:
            raise ParameterError(
                f"the crystal (edge {2.0 * obj.half_edge_A:g} Å) is wider than the field of "
                f"view ({m}×{nn} px of {pixel_size_A:g} Å = {field_A:g} Å); enlarge `shape` or "
                "`pixel_size_A`"
            )
    xs, us = _ray_positions(
        na, (m, nn), int(supersample), sh, tilt_axis_deg, axis_offset_px, pixel_size_A
    )
    th = np.deg2rad(ang)
    tr: dict[str, Any]
    if isinstance(obj, NanocrystalPhantom):
        n_, d_, _ = obj.planes()
        line = np.empty((na, xs.shape[1]))
        _project(
            xs,
            us,
            np.cos(th),
            np.sin(th),
            n_,
            d_,
            np.asarray(obj.centre_A, float),
            float(obj.density),
            np.asarray(obj.inclusions, float).reshape(-1, 5),
            line,
        )
        tr = obj.truth()
        tr["integral"] = _phantom_integral(obj, tr["host_volume_A3"])
        vox_obj, vsize = None, None
    else:
        if hasattr(obj, "get_positions"):  # ase.Atoms
            vsize = float(voxel_size_A) if voxel_size_A else min(float(pixel_size_A), 0.5)
            vox_obj = atoms_to_volume(obj, vsize)
        else:
            vox_obj = np.asarray(obj, dtype=float)
            if vox_obj.ndim != 3 or min(vox_obj.shape) < 1:
                raise ParameterError(
                    "`obj` must be a NanocrystalPhantom, a (nz, ny, nx) volume or ase.Atoms, "
                    f"got {type(obj).__name__} of shape {np.shape(obj)}"
                )
            if not np.all(np.isfinite(vox_obj)):
                raise ParameterError("`obj` volume contains non-finite values")
            vsize = float(voxel_size_A) if voxel_size_A else float(pixel_size_A)
        line = _project_volume(vox_obj, vsize, xs, us, th)
        tr = {"integral": float(vox_obj.sum() * vsize**3)}
    line = line.reshape(na, m, supersample, nn, supersample).mean(axis=(2, 4))
    # an object partly outside the field (a large crystal, an axis offset, drift) is cut in
    # some projections: its projected mass there falls short of ∫ density dV
    outside = np.zeros(na)
    if tr["integral"] > 0:
        outside = np.clip(
            1.0 - line.sum(axis=(1, 2)) * float(pixel_size_A) ** 2 / tr["integral"], 0.0, 1.0
        )
    cut = outside > 0.01
    if cut.any():
        worst = int(np.argmax(outside))
        warnings.warn(
            f"tilt_series: the object leaves the field of view in {int(cut.sum())} of {na} "
            f"projections (up to {100 * outside[worst]:.0f} % of its projected mass outside, "
            f"at {ang[worst]:g}°; field {m}×{nn} px of {float(pixel_size_A):g} Å, axis offset "
            f"{float(axis_offset_px):g} px, shifts up to {float(np.abs(sh).max(initial=0.0)):.3g} "
            "px): those projections are truncated; enlarge `shape` or `pixel_size_A`",
            UserWarning,
            stacklevel=2,
        )
    lam = counts_per_A * line + background
    data = shot_noise(lam, gen).astype(np.float32) if noise else lam.astype(np.float32)
    truth: dict[str, Any] = {
        "shifts_px": sh,
        "tilt_axis_deg": float(tilt_axis_deg),
        "axis_offset_px": float(axis_offset_px),
        "counts_per_A": float(counts_per_A),
        "background": float(background),
        "acquisition_order": order.copy(),
        "fraction_outside_field": outside,
        **tr,
    }
    if truth_volume:
        if vox_obj is None:
            truth["volume"] = obj.voxelize((m, m, nn), pixel_size_A)
        elif hasattr(obj, "get_positions"):  # atoms: voxelise again on the pixel grid
            truth["volume"] = atoms_to_volume(obj, pixel_size_A, shape=(m, m, nn))
        else:
            truth["volume"] = _resample_volume(vox_obj, vsize, (m, m, nn), pixel_size_A)
    span = float(ang.max() - ang.min())
    meta: dict[str, Any] = {
        "simulated": True,
        "counts_per_A": float(counts_per_A),
        "background": float(background),
        "dose_e_per_A2": dose_e_per_A2,
        "supersample": int(supersample),
        "acquisition_order": order.tolist(),
        "missing_wedge_deg": 180.0 - span if span <= 180.0 else 0.0,
    }
    if dose_e_per_A2 is not None:
        meta["cumulative_dose_at_projection_e_per_A2"] = (
            (order + 1) * float(dose_e_per_A2) / na
        ).tolist()
    ts = TiltSeries(data, ang, pixel_size_A, tilt_axis_deg=0.0, metadata=meta)
    return ts, truth


def _unit_ball_points() -> np.ndarray:
    """Fixed quadrature points filling the unit ball (64³ grid, ~137 000 points)."""
    g = (np.arange(64) + 0.5) / 64 * 2 - 1
    gx, gy, gz = np.meshgrid(g, g, g, indexing="ij")
    unit = np.column_stack([gx.ravel(), gy.ravel(), gz.ravel()])
    return unit[np.sum(unit**2, axis=1) <= 1.0]


def _occupied_volume(obj: NanocrystalPhantom, host_volume_A3: float) -> float:
    """Volume where the density is > 0: host ∪ dense inclusions, minus empty inclusions.

    Inside an inclusion the density is that of the first inclusion containing the point (as
    in :meth:`NanocrystalPhantom.voxelize`); every sphere's correction
    ``V·mean((occupied − in_host)/multiplicity)`` is a quadrature on fixed points (error
    < 0.5 % of the sphere volume), so overlapping spheres are counted once.
    """
    inc = np.asarray(obj.inclusions, float).reshape(-1, 5)
    if not len(inc):
        return float(host_volume_A3)
    n, d, _ = obj.planes()
    unit = _unit_ball_points()
    total = float(host_volume_A3)
    for x, y, z, r, _rho in inc:
        pts = unit * r + np.array([x, y, z])
        in_host = np.all(pts @ n.T <= d, axis=1)
        inside = np.sum((pts[:, None, :] - inc[None, :, :3]) ** 2, axis=2) <= inc[None, :, 3] ** 2
        first = np.argmax(inside, axis=1)  # every point lies in its own sphere at least
        occupied = inc[first, 4] > 0
        mult = inside.sum(axis=1)
        v = 4.0 / 3.0 * np.pi * r**3
        total += v * float(np.mean((occupied.astype(float) - in_host) / mult))
    return float(total)


def _phantom_integral(obj: NanocrystalPhantom, host_volume_A3: float) -> float:
    """∫ density dV of an analytic phantom whose inclusions may protrude from the host.

    A sphere adds ``density_inc·V_sphere − density_host·V(sphere ∩ host)``, as in the
    projector; the overlap volume is a quadrature on a fixed 64³ grid in the sphere's cube
    (error < 0.5 %).
    """
    inc = np.asarray(obj.inclusions, float).reshape(-1, 5)
    total = obj.density * host_volume_A3
    if not len(inc):
        return float(total)
    n, d, _ = obj.planes()
    unit = _unit_ball_points()
    for x, y, z, r, rho in inc:
        pts = unit * r + np.array([x, y, z])
        frac_in = np.mean(np.all(pts @ n.T <= d, axis=1))
        v = 4.0 / 3.0 * np.pi * r**3
        total += rho * v - obj.density * v * frac_in
    return float(total)


def _resample_volume(
    vol: np.ndarray, vsize: float, shape: tuple[int, int, int], out_A: float
) -> np.ndarray:
    """Density of a centred voxel volume on another centred grid (trilinear)."""
    from scipy import ndimage

    axes = [
        ((np.arange(n_out) - (n_out - 1) / 2.0) * out_A) / vsize + (n_in - 1) / 2.0
        for n_out, n_in in zip(shape, vol.shape, strict=True)
    ]
    kk, ii, jj = np.meshgrid(*axes, indexing="ij")
    return ndimage.map_coordinates(vol, [kk, ii, jj], order=1, mode="constant")


# --------------------------------------------------------------------------- 4-D truth
def _coalesce(inc: np.ndarray) -> tuple[np.ndarray, int]:
    """Merge touching spheres (volume-conserving) until none overlap; returns (inc, merges)."""
    inc = np.array(inc, float).reshape(-1, 5)
    merges = 0
    while len(inc) > 1:
        c, r = inc[:, :3], inc[:, 3]
        dist = np.linalg.norm(c[:, None] - c[None], axis=2)
        gap = dist - (r[:, None] + r[None])
        np.fill_diagonal(gap, np.inf)
        i, j = np.unravel_index(np.argmin(gap), gap.shape)
        if gap[i, j] >= 0:
            break
        vi, vj = r[i] ** 3, r[j] ** 3
        merged = np.r_[(c[i] * vi + c[j] * vj) / (vi + vj), (vi + vj) ** (1 / 3), inc[i, 4]]
        inc = np.vstack([np.delete(inc, [i, j], axis=0), merged])
        merges += 1
    return inc, merges


# Pb0 (fcc, a = 4.95 Å, 4 atoms per cell) made from CsPbBr3 (one Pb per 5.87³ Å³):
# volume of Pb metal per volume of crystal decomposed
PB_VOLUME_PER_CRYSTAL_VOLUME = (4.95**3 / 4) / 5.87**3


def _hull_volume(ph: NanocrystalPhantom) -> float:
    from scipy.spatial import ConvexHull

    return float(ConvexHull(ph.vertices_A()).volume)


def degradation_phantoms(
    obj: NanocrystalPhantom,
    n_steps: int,
    *,
    dose_per_step_e_per_A2: float = 1e4,
    shrink_A_per_dose: float = 2e-4,
    rounding_per_dose: float = 1.5e-5,
    growth_A3_per_dose: float = 0.5,
    nucleation_per_dose: float = 5e-5,
    new_radius_A: float = 3.0,
    rotation_deg_per_dose: float = 0.0,
    rotation_axis: Any = (0.0, 0.0, 1.0),
    rng: Any = None,
) -> tuple[list[NanocrystalPhantom], pd.DataFrame]:
    """A degradation trajectory: the crystal erodes and rounds while Pb inclusions grow.

    Simple phenomenological model of beam damage in CsPbBr3 (Br loss → Pb⁰ clusters that
    nucleate near the surface and grow; Dang et al., ACS Nano 11, 2124 (2017)): per step of
    dose D, the {100} planes recede by ``shrink_A_per_dose·D``; the {110}/{111} plane ratios
    decrease by ``rounding_per_dose·D`` (corners and edges erode first); every inclusion gains
    ``growth_A3_per_dose·D`` Å³; new clusters nucleate (Poisson, mean
    ``nucleation_per_dose·D``) just inside the surface.  Pb is conserved: growth and new
    nuclei of one step together take at most the Pb⁰ volume of the crystal lost in that step
    (``PB_VOLUME_PER_CRYSTAL_VOLUME`` ≈ 0.15 of it; growth is scaled down, nuclei dropped); touching inclusions coalesce into one
    sphere of the summed volume at their volume-weighted centre (so inclusions never overlap
    and projections, voxel truth and ``integral`` agree).  With ``rotation_deg_per_dose``
    the crystal also turns on the support (beam-induced rotation) by that many degrees per
    e⁻/Å² per step about the lab direction ``rotation_axis``, inclusions with it.

    Returns
    -------
    phantoms : list of NanocrystalPhantom, length ``n_steps``
    truth : DataFrame
        step, dose_e_per_A2, cumulative_dose_e_per_A2, volume_A3 (occupied volume, see
        :meth:`NanocrystalPhantom.truth`; what :func:`perovstem.tomo.reconstruct_sequence`
        measures), host_volume_A3 (the crystal polyhedron), surface_A2,
        inclusion_volume_A3, n_inclusions, n_coalescences (cumulative), rotation_deg
        (misorientation from the first step: the smallest rotation between the two lattice
        orientations, ≤ 62.8° by cubic symmetry), frac_100, frac_110, frac_111, frac_other.
    """
    gen = np.random.default_rng(rng)
    if int(n_steps) < 1:
        raise ParameterError(f"`n_steps` must be >= 1, got {n_steps}")
    check_positive("dose_per_step_e_per_A2", dose_per_step_e_per_A2, allow_zero=True)
    check_at_most(
        "dose_per_step_e_per_A2",
        float(dose_per_step_e_per_A2),
        MAX_DOSE_E_PER_A2,
        "e⁻/Å²",
        "the dose of one step",
    )
    if not np.isfinite(rotation_deg_per_dose):
        raise ParameterError(
            f"`rotation_deg_per_dose` must be finite, got {rotation_deg_per_dose!r}"
        )
    r_axis = np.asarray(rotation_axis, float).reshape(-1)
    if r_axis.shape != (3,) or not np.all(np.isfinite(r_axis)) or np.linalg.norm(r_axis) == 0:
        raise ParameterError(f"`rotation_axis` must be a non-zero 3-vector, got {rotation_axis!r}")
    r_axis = r_axis / np.linalg.norm(r_axis)
    out = [obj]
    cur = obj
    merges = [0]
    v_nucleus = 4 / 3 * np.pi * new_radius_A**3
    for _ in range(int(n_steps) - 1):
        dd = float(dose_per_step_e_per_A2)
        a = max(cur.half_edge_A - shrink_A_per_dose * dd, 0.2 * obj.half_edge_A)
        r110 = max(cur.r110 - rounding_per_dose * dd, 1.02)
        r111 = max(cur.r111 - rounding_per_dose * dd, 1.05)
        inc = np.array(cur.inclusions, float).reshape(-1, 5)
        nxt = cur.replace(half_edge_A=a, r110=r110, r111=r111, inclusions=inc)
        # Pb is conserved: the Pb0 added this step comes from the crystal volume lost
        # (unbounded growth made a 1e5 e/A^2 step turn a 17 000 A^3 crystal into a
        # 100 000 A^3 Pb sphere)
        budget = PB_VOLUME_PER_CRYSTAL_VOLUME * max(_hull_volume(cur) - _hull_volume(nxt), 0.0)
        if len(inc):
            want = growth_A3_per_dose * dd * len(inc)
            grow = growth_A3_per_dose * dd * min(1.0, budget / want) if want > 0 else 0.0
            budget -= grow * len(inc)
            vol = 4 / 3 * np.pi * inc[:, 3] ** 3 + grow
            inc[:, 3] = (vol * 3 / (4 * np.pi)) ** (1 / 3)
            nxt = nxt.replace(inclusions=inc)
        n, d, _ = nxt.planes()
        for _k in range(gen.poisson(nucleation_per_dose * dd)):
            if budget < v_nucleus:
                break
            budget -= v_nucleus
            for _t in range(200):
                c = gen.uniform(-a, a, 3)
                if np.all(n @ c + new_radius_A <= d) and np.any(n @ c + 2.5 * new_radius_A > d):
                    inc = np.vstack([inc, [*c, new_radius_A, inc[0, 4] if len(inc) else 2.5]])
                    break
        inc, n_merge = _coalesce(inc)
        merges.append(merges[-1] + n_merge)
        cur = nxt.replace(inclusions=inc)
        if rotation_deg_per_dose:
            from scipy.spatial.transform import Rotation

            turn = Rotation.from_rotvec(np.deg2rad(rotation_deg_per_dose * dd) * r_axis)
            inc = inc.copy()
            inc[:, :3] = turn.apply(inc[:, :3]) if len(inc) else inc[:, :3]
            cur = cur.replace(rotation=turn.as_matrix() @ cur.rotation, inclusions=inc)
        out.append(cur)
    rows = []
    from perovstem.tomo.facets import misorientation_deg

    for s, ph in enumerate(out):
        t = ph.truth()
        f = t["facets"].set_index("family")["fraction"]
        rows.append(
            {
                "step": s,
                "dose_e_per_A2": float(dose_per_step_e_per_A2),
                "cumulative_dose_e_per_A2": float(dose_per_step_e_per_A2) * (s + 1),
                "volume_A3": t["volume_A3"],
                "host_volume_A3": t["host_volume_A3"],
                "surface_A2": t["surface_A2"],
                "inclusion_volume_A3": t["inclusion_volume_A3"],
                "n_inclusions": len(ph.inclusions),
                "n_coalescences": merges[s],
                "rotation_deg": misorientation_deg(ph.rotation, obj.rotation),
                "frac_100": f["100"],
                "frac_110": f["110"],
                "frac_111": f["111"],
                "frac_other": f["other"],
            }
        )
    df = pd.DataFrame(rows)
    df.attrs["units"] = {"dose_e_per_A2": "e-/A^2", "volume_A3": "A^3", "surface_A2": "A^2"}
    return out, df


def degradation_tilt_series(
    obj: NanocrystalPhantom,
    n_steps: int,
    angles_deg: Any,
    *,
    dose_per_step_e_per_A2: float = 1e4,
    trajectory: dict | None = None,
    return_truth: bool = False,
    rng: Any = None,
    **kwargs: Any,
) -> tuple[list[TiltSeries], pd.DataFrame] | tuple[list[TiltSeries], pd.DataFrame, list[dict]]:
    """A sequence of tilt series along a degradation trajectory (4-D ground truth).

    ``trajectory`` holds keyword arguments of :func:`degradation_phantoms`; ``kwargs`` go to
    :func:`tilt_series` (shape, pixel size, noise, shifts, ``acquisition_order``,
    ``truth_volume`` ...).  Each TiltSeries carries ``metadata["step"]``,
    ``["dose_e_per_A2"]`` and ``["cumulative_dose_e_per_A2"]``.

    Parameters
    ----------
    return_truth : bool
        Also return the per-step truth dicts of :func:`tilt_series` (with ``truth_volume=True``
        in ``kwargs`` each holds the ground-truth ``volume`` of that step: the 4-D truth) and
        the phantom of each step under ``"phantom"``.

    Returns
    -------
    series : list of TiltSeries
    truth : DataFrame
        See :func:`degradation_phantoms`.
    step_truths : list of dict
        Only with ``return_truth=True``.
    """
    gen = np.random.default_rng(rng)
    phs, df = degradation_phantoms(
        obj, n_steps, dose_per_step_e_per_A2=dose_per_step_e_per_A2, rng=gen, **(trajectory or {})
    )
    series = []
    truths = []
    for s, ph in enumerate(phs):
        ts, tr = tilt_series(
            ph, angles_deg, rng=gen, dose_e_per_A2=dose_per_step_e_per_A2, **kwargs
        )
        md = dict(ts.metadata)
        md.update(
            step=s,
            dose_e_per_A2=float(dose_per_step_e_per_A2),
            cumulative_dose_e_per_A2=float(df.cumulative_dose_e_per_A2.iloc[s]),
        )
        series.append(ts.replace(metadata=md))
        tr["phantom"] = ph
        truths.append(tr)
    if return_truth:
        return series, df, truths
    return series, df
