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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from numba import njit, prange

from perovstem._data import TiltSeries
from perovstem.errors import ParameterError

__all__ = [
    "NanocrystalPhantom",
    "nanocrystal_phantom",
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
            ``volume_A3``, ``surface_A2``, ``inclusion_volume_A3``,
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
            "volume_A3": float(hull.volume),
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


def nanocrystal_phantom(
    edge_A: float = 80.0,
    *,
    r110: float = 1.25,
    r111: float = 1.40,
    orientation_deg: Any = None,
    n_inclusions: int = 2,
    inclusion_radius_A: Any = (6.0, 10.0),
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
    inclusion_radius_A : (float, float)
        Range of inclusion radii, Å.
    inclusion_density, density : float
        HAADF signal per Å of Pb and of the host (Pb-rich clusters are brighter).
    centre_A : (3,) array_like
        Lab-frame centre offset, Å.
    rng : seed or Generator
    """
    gen = np.random.default_rng(rng)
    if not np.isfinite(edge_A) or edge_A <= 0:
        raise ParameterError(f"`edge_A` must be > 0 Å, got {edge_A}")
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
    incl: list[list[float]] = []
    lo_r, hi_r = (float(v) for v in np.broadcast_to(np.asarray(inclusion_radius_A, float), (2,)))
    tries = 0
    while len(incl) < int(n_inclusions) and tries < 10000:
        tries += 1
        r = gen.uniform(lo_r, hi_r)
        c = gen.uniform(-a, a, 3)
        if np.any(n @ c + r + 1.0 > d):
            continue
        if any(np.linalg.norm(c - np.array(q[:3])) < r + q[3] + 2.0 for q in incl):
            continue
        incl.append([*c, r, float(inclusion_density)])
    if len(incl) < int(n_inclusions):
        raise ParameterError(
            f"could not place {n_inclusions} inclusions of radius {inclusion_radius_A} Å in a "
            f"{edge_A} Å crystal"
        )
    return ph.replace(inclusions=np.array(incl, float).reshape(-1, 5))


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
def tilt_series(
    obj: NanocrystalPhantom,
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
    rng: Any = None,
) -> tuple[TiltSeries, dict[str, Any]]:
    """Simulate a HAADF-STEM tilt series of an analytic phantom (exact line integrals).

    Parameters
    ----------
    obj : NanocrystalPhantom
    angles_deg : (A,) array_like
        Tilt angles, degrees (rotation about the tilt axis).
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
        When ``shifts_px`` is None: random-walk drift with this step σ, pixels (zero mean).
    tilt_axis_deg : float
        In-plane direction of the tilt axis in the images, degrees from the image x axis,
        counter-clockwise as displayed with row 0 on top (towards −rows), as in TiltSeries.
    axis_offset_px : float
        Tilt-axis position along the image y direction relative to the image centre, px.
    noise : bool
        Poisson noise on the counts.
    truth_volume : bool
        Also return the partial-volume truth ``(M, M, N)`` (z, y, x) in ``truth["volume"]``.
    dose_e_per_A2 : float, optional
        Stored in the metadata (dose of the whole tilt series).
    rng : seed or Generator

    Returns
    -------
    tilt_series : TiltSeries
        Counts, ``(A, M, N)`` float32; metadata records the simulation parameters.
    truth : dict
        ``shifts_px`` (A, 2), ``tilt_axis_deg``, ``axis_offset_px``, ``facets`` DataFrame,
        ``volume_A3``, ``surface_A2``, ``inclusion_volume_A3``, optionally ``volume``.
    """
    from perovstem.tomo.projector import check_angles

    gen = np.random.default_rng(rng)
    ang = check_angles(angles_deg)
    m, nn = (int(v) for v in shape)
    if m < 3 or nn < 1:
        raise ParameterError(f"`shape` must be (M >= 3, N >= 1), got {shape}")
    if supersample < 1:
        raise ParameterError(f"`supersample` must be >= 1, got {supersample}")
    if not np.isfinite(pixel_size_A) or pixel_size_A <= 0:
        raise ParameterError(f"`pixel_size_A` must be > 0, got {pixel_size_A}")
    na = ang.size
    if shifts_px is None:
        if shift_sigma_px > 0:
            steps = gen.normal(0.0, shift_sigma_px, (na, 2))
            sh = np.cumsum(steps, axis=0)
            sh -= sh.mean(axis=0)
        else:
            sh = np.zeros((na, 2))
    else:
        sh = np.asarray(shifts_px, float)
        if sh.shape != (na, 2):
            raise ParameterError(f"`shifts_px` must have shape ({na}, 2), got {sh.shape}")
    # sub-pixel sample positions in image pixel coordinates (relative to image centre)
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
    n_, d_, _ = obj.planes()
    th = np.deg2rad(ang)
    line = np.empty((na, yi.size))
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
    line = line.reshape(na, m, supersample, nn, supersample).mean(axis=(2, 4))
    lam = counts_per_A * line + background
    data = gen.poisson(lam).astype(np.float32) if noise else lam.astype(np.float32)
    tr = obj.truth()
    truth: dict[str, Any] = {
        "shifts_px": sh,
        "tilt_axis_deg": float(tilt_axis_deg),
        "axis_offset_px": float(axis_offset_px),
        "counts_per_A": float(counts_per_A),
        "background": float(background),
        **tr,
    }
    if truth_volume:
        truth["volume"] = obj.voxelize((m, m, nn), pixel_size_A)
    meta = {
        "simulated": True,
        "counts_per_A": float(counts_per_A),
        "background": float(background),
        "dose_e_per_A2": dose_e_per_A2,
        "supersample": int(supersample),
    }
    ts = TiltSeries(data, ang, pixel_size_A, tilt_axis_deg=0.0, metadata=meta)
    return ts, truth


# --------------------------------------------------------------------------- 4-D truth
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
    rng: Any = None,
) -> tuple[list[NanocrystalPhantom], pd.DataFrame]:
    """A degradation trajectory: the crystal erodes and rounds while Pb inclusions grow.

    Simple phenomenological model of beam damage in CsPbBr3 (Br loss → Pb⁰ clusters that
    nucleate near the surface and grow; Dang et al., ACS Nano 11, 2124 (2017)): per step of
    dose D, the {100} planes recede by ``shrink_A_per_dose·D``; the {110}/{111} plane ratios
    decrease by ``rounding_per_dose·D`` (corners and edges erode first); every inclusion gains
    ``growth_A3_per_dose·D`` Å³; new clusters nucleate (Poisson, mean
    ``nucleation_per_dose·D``) just inside the surface.

    Returns
    -------
    phantoms : list of NanocrystalPhantom, length ``n_steps``
    truth : DataFrame
        step, dose_e_per_A2, cumulative_dose_e_per_A2, volume_A3, surface_A2,
        inclusion_volume_A3, n_inclusions, frac_100, frac_110, frac_111, frac_other.
    """
    gen = np.random.default_rng(rng)
    if int(n_steps) < 1:
        raise ParameterError(f"`n_steps` must be >= 1, got {n_steps}")
    out = [obj]
    cur = obj
    for _ in range(int(n_steps) - 1):
        dd = float(dose_per_step_e_per_A2)
        a = max(cur.half_edge_A - shrink_A_per_dose * dd, 0.2 * obj.half_edge_A)
        r110 = max(cur.r110 - rounding_per_dose * dd, 1.02)
        r111 = max(cur.r111 - rounding_per_dose * dd, 1.05)
        inc = np.array(cur.inclusions, float).reshape(-1, 5)
        if len(inc):
            vol = 4 / 3 * np.pi * inc[:, 3] ** 3 + growth_A3_per_dose * dd
            inc[:, 3] = (vol * 3 / (4 * np.pi)) ** (1 / 3)
        nxt = cur.replace(half_edge_A=a, r110=r110, r111=r111, inclusions=inc)
        n, d, _ = nxt.planes()
        for _k in range(gen.poisson(nucleation_per_dose * dd)):
            for _t in range(200):
                c = gen.uniform(-a, a, 3)
                if np.all(n @ c + new_radius_A <= d) and np.any(n @ c + 2.5 * new_radius_A > d):
                    inc = np.vstack([inc, [*c, new_radius_A, inc[0, 4] if len(inc) else 2.5]])
                    break
        cur = nxt.replace(inclusions=inc)
        out.append(cur)
    rows = []
    for s, ph in enumerate(out):
        t = ph.truth()
        f = t["facets"].set_index("family")["fraction"]
        rows.append(
            {
                "step": s,
                "dose_e_per_A2": float(dose_per_step_e_per_A2),
                "cumulative_dose_e_per_A2": float(dose_per_step_e_per_A2) * (s + 1),
                "volume_A3": t["volume_A3"],
                "surface_A2": t["surface_A2"],
                "inclusion_volume_A3": t["inclusion_volume_A3"],
                "n_inclusions": len(ph.inclusions),
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
    rng: Any = None,
    **kwargs: Any,
) -> tuple[list[TiltSeries], pd.DataFrame]:
    """A sequence of tilt series along a degradation trajectory (4-D ground truth).

    ``trajectory`` holds keyword arguments of :func:`degradation_phantoms`; ``kwargs`` go to
    :func:`tilt_series` (shape, pixel size, noise, shifts ...).  Each TiltSeries carries
    ``metadata["step"]``, ``["dose_e_per_A2"]`` and ``["cumulative_dose_e_per_A2"]``.

    Returns
    -------
    series : list of TiltSeries
    truth : DataFrame
        See :func:`degradation_phantoms`.
    """
    gen = np.random.default_rng(rng)
    phs, df = degradation_phantoms(
        obj, n_steps, dose_per_step_e_per_A2=dose_per_step_e_per_A2, rng=gen, **(trajectory or {})
    )
    series = []
    for s, ph in enumerate(phs):
        ts, _ = tilt_series(ph, angles_deg, rng=gen, dose_e_per_A2=dose_per_step_e_per_A2, **kwargs)
        md = dict(ts.metadata)
        md.update(
            step=s,
            dose_e_per_A2=float(dose_per_step_e_per_A2),
            cumulative_dose_e_per_A2=float(df.cumulative_dose_e_per_A2.iloc[s]),
        )
        series.append(ts.replace(metadata=md))
    return series, df
