"""Iso-surfaces of reconstructed volumes: marching cubes → triangle mesh in Å.

Mesh coordinates are lab-frame ``(x, y, z)`` in Å from the volume centre (x = tilt axis,
y = image rows, z = beam at 0°), the same frame as :mod:`perovstem.simulate.tilt`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from perovstem._validation import refuse_text_numbers
from perovstem.errors import DataError, ParameterError

__all__ = ["SurfaceMesh", "surface_mesh", "surface_on_box_faces"]


@dataclass
class SurfaceMesh:
    """Triangle mesh of an iso-surface.

    Attributes
    ----------
    vertices_A : (V, 3) ndarray
        Vertex positions ``(x, y, z)``, Å.
    faces : (F, 3) int ndarray
        Vertex indices per triangle (outward winding).
    normals : (F, 3) ndarray
        Outward unit face normals ``(x, y, z)``.
    areas_A2 : (F,) ndarray
        Face areas, Å².
    volume_A3 : float
        Enclosed volume, Å³ (mesh volume when watertight, else voxel count above level).
    level : float
        Iso-level used (data units).
    """

    vertices_A: np.ndarray
    faces: np.ndarray
    normals: np.ndarray
    areas_A2: np.ndarray
    volume_A3: float
    level: float

    @property
    def area_A2(self) -> float:
        """Total surface area, Å²."""
        return float(self.areas_A2.sum())


def surface_mesh(
    volume: Any,
    *,
    voxel_size_A: float = 1.0,
    level: float | None = None,
    sigma_px: float = 1.0,
    step_size: int = 1,
) -> SurfaceMesh:
    """Marching-cubes iso-surface (Lorensen & Cline 1987; Lewiner et al. 2003 via scikit-image).

    Parameters
    ----------
    volume : (nz, ny, nx) array
        Reconstruction (object bright).
    voxel_size_A : float
        Voxel edge, Å.
    level : float, optional
        Iso-level; default the Otsu threshold of the smoothed volume.
    sigma_px : float
        Gaussian smoothing before meshing, voxels (σ ≈ 1 gives smooth facet normals).
    step_size : int
        Marching-cubes step (coarser meshes for large volumes).

    Returns
    -------
    SurfaceMesh
    """
    refuse_text_numbers(locals())
    import trimesh
    from scipy import ndimage
    from skimage.measure import marching_cubes

    v = np.asarray(volume)
    if v.dtype.kind not in "biuf":  # text raised numpy's "could not convert" ValueError
        raise DataError(f"`volume` must be numeric, got dtype {v.dtype}")
    v = v.astype(np.float32, copy=False)
    if v.ndim != 3:
        raise DataError(f"`volume` must be 3-D, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise DataError("`volume` contains NaN/inf values")
    if not np.isfinite(voxel_size_A) or voxel_size_A <= 0:
        raise ParameterError(f"`voxel_size_A` must be > 0, got {voxel_size_A}")
    if not np.isfinite(sigma_px) or sigma_px < 0 or sigma_px > max(v.shape):
        # negative σ was silently read as 0; σ beyond the volume size smooths the NC away
        # (1e30 made scipy allocate an impossible kernel)
        raise ParameterError(
            f"`sigma_px` must be finite, >= 0 and at most the volume size ({max(v.shape)} "
            f"voxels), got {sigma_px}"
        )
    if sigma_px > 0:
        v = ndimage.gaussian_filter(v, sigma_px)
    if level is None:
        from perovstem.tomo.segment import otsu_threshold

        level = otsu_threshold(v)
    if not v.min() < level < v.max():
        raise ParameterError(f"`level` {level} is outside the volume range [{v.min()}, {v.max()}]")
    # pad so the surface is closed at the box faces
    vp = np.pad(v, 1, mode="constant", constant_values=min(float(v.min()), level - 1.0))
    verts, faces, _, _ = marching_cubes(vp, level=level, step_size=int(step_size))
    verts -= 1.0
    nz, ny, nx = v.shape
    xyz = np.stack(
        [
            (verts[:, 2] - (nx - 1) / 2.0),
            (verts[:, 1] - (ny - 1) / 2.0),
            (verts[:, 0] - (nz - 1) / 2.0),
        ],
        axis=1,
    ) * float(voxel_size_A)
    # (k,i,j) -> (x,y,z) swaps handedness: reverse the winding to keep it consistent
    faces = faces[:, ::-1].astype(np.int64)
    mesh = trimesh.Trimesh(xyz, faces, process=False)
    normals = np.asarray(mesh.face_normals, float)
    cen = np.asarray(mesh.triangles_center)
    # orient outward: normals must point down the density gradient
    gz, gy, gx = np.gradient(vp)
    idx = np.clip(np.round(verts[faces].mean(axis=1)).astype(int) + 1, 0, np.array(vp.shape) - 1)
    grad = np.stack(
        [gx[tuple(idx.T)], gy[tuple(idx.T)], gz[tuple(idx.T)]], axis=1
    )  # (x, y, z) order
    if np.sum(np.einsum("ij,ij->i", normals, grad)) > 0:
        faces = faces[:, ::-1]
        mesh = trimesh.Trimesh(xyz, faces, process=False)
        normals = np.asarray(mesh.face_normals, float)
    del cen
    areas = np.asarray(mesh.area_faces, float)
    if mesh.is_watertight:
        vol = abs(float(mesh.volume))
    else:
        vol = float(np.count_nonzero(v > level)) * float(voxel_size_A) ** 3
    return SurfaceMesh(xyz, faces, normals, areas, vol, float(level))


def surface_on_box_faces(
    mesh: SurfaceMesh, shape: tuple[int, int, int], voxel_size_A: float
) -> dict[str, float]:
    """Share of ``mesh``'s surface area that lies on the faces of the volume box.

    :func:`surface_mesh` closes an object cut by the box with the box faces (the volume is
    padded); that part of the surface is the cut, not the crystal.  Returns the share per
    axis (``"x"``, ``"y"``, ``"z"``) of the faces whose vertices all lie beyond the outermost
    voxel centres along that axis (audit: a crystal filling z 0-39 of a 40-voxel volume gave
    {100} 60 % for 69 %, without a word).
    """
    v = np.asarray(mesh.vertices_A, float) / float(voxel_size_A)
    nz, ny, nx = (int(n) for n in shape)
    half = {"x": (nx - 1) / 2.0, "y": (ny - 1) / 2.0, "z": (nz - 1) / 2.0}
    tri = v[np.asarray(mesh.faces)]  # (F, 3 vertices, 3 coords)
    total = float(np.sum(mesh.areas_A2)) or 1.0
    out = {}
    for k, ax in enumerate(("x", "y", "z")):
        on = np.all(np.abs(tri[:, :, k]) > half[ax] + 1e-6, axis=1)
        out[ax] = float(np.sum(np.asarray(mesh.areas_A2)[on]) / total)
    return out
