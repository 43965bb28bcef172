"""Interactive 3-D views (plotly) for the report: atomic models and surface meshes.

The figures are plain :class:`plotly.graph_objects.Figure` objects; the report embeds them with
an inline copy of plotly.js, so the HTML opens without network access.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from perovstem.errors import DataError

__all__ = ["atoms_figure", "mesh_figure", "volume_figure"]

# Jmol-like colours of the elements that occur in CsPbBr3 / CsCd_xPb_{1-x}Br3 / Pb clusters.
_COLOURS = {"Cs": "#57178f", "Pb": "#575961", "Cd": "#ffd98f", "Br": "#a62929"}
_SIZES = {"Cs": 7, "Pb": 7, "Cd": 6, "Br": 4}
# metallic Pb (reduced Pb⁰) stands out from the host lattice
_GROUP_COLOURS = {"Pb⁰ cluster": "#ff7f0e", "Pb⁰ adatom": "#ffbb78"}


def _layout(title: str) -> dict[str, Any]:
    return dict(
        title=dict(text=title, x=0.02),
        margin=dict(l=0, r=0, t=36, b=0),
        scene=dict(
            xaxis_title="x (Å)", yaxis_title="y (Å)", zaxis_title="z (Å)", aspectmode="data"
        ),
        legend=dict(itemsizing="constant"),
    )


def atoms_figure(
    positions_A: Any,
    symbols: Sequence[str],
    *,
    groups: Sequence[str] | None = None,
    title: str = "atomic model",
    max_atoms: int = 20000,
) -> Any:
    """Scatter-3D figure of an atomic model, one trace per element (or per ``groups`` label).

    Parameters
    ----------
    positions_A : (N, 3) array_like
        Atom positions, Å.
    symbols : sequence of str, length N
        Chemical symbols.
    groups : sequence of str, optional
        Trace label per atom (e.g. ``"Pb cluster"`` vs ``"Pb host"``); default the symbol.
    title : str
        Figure title.
    max_atoms : int
        Larger models are thinned (every k-th atom) to keep the report small.

    Returns
    -------
    plotly.graph_objects.Figure
    """
    from perovstem._optional import import_optional

    go = import_optional("plotly.graph_objects", extra="report")
    pos = np.asarray(positions_A, dtype=float)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise DataError(f"`positions_A` must have shape (N, 3), got {pos.shape}")
    sym = np.asarray(list(symbols))
    if sym.shape[0] != pos.shape[0]:
        raise DataError(f"`symbols` has {sym.shape[0]} entries for {pos.shape[0]} positions")
    lab = sym if groups is None else np.asarray(list(groups))
    step = max(1, int(np.ceil(len(pos) / max_atoms)))
    pos, sym, lab = pos[::step], sym[::step], lab[::step]
    fig = go.Figure()
    for g in sorted(set(lab.tolist())):
        m = lab == g
        el = str(sym[m][0])
        fig.add_trace(
            go.Scatter3d(
                x=np.round(pos[m, 0], 2),
                y=np.round(pos[m, 1], 2),
                z=np.round(pos[m, 2], 2),
                mode="markers",
                name=f"{g} ({int(m.sum())})",
                marker=dict(
                    size=_SIZES.get(el, 5),
                    color=_GROUP_COLOURS.get(g, _COLOURS.get(el, "#3a7bd5")),
                    opacity=0.9,
                    line=dict(width=0),
                ),
            )
        )
    fig.update_layout(**_layout(title))
    return fig


def mesh_figure(
    vertices_A: Any,
    faces: Any,
    *,
    intensity: Any = None,
    title: str = "surface",
    name: str = "surface",
    colorscale: str = "Viridis",
) -> Any:
    """Mesh-3D figure of a triangulated surface (e.g. a segmented reconstruction).

    Parameters
    ----------
    vertices_A : (V, 3) array_like
        Vertex coordinates, Å.
    faces : (F, 3) array_like of int
        Triangle vertex indices.
    intensity : (V,) or (F,) array_like, optional
        Values colouring vertices or faces (e.g. facet label).

    Returns
    -------
    plotly.graph_objects.Figure
    """
    from perovstem._optional import import_optional

    go = import_optional("plotly.graph_objects", extra="report")
    v = np.asarray(vertices_A, dtype=float)
    f = np.asarray(faces, dtype=int)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
        raise DataError(f"need vertices (V, 3) and faces (F, 3), got {v.shape} and {f.shape}")
    kw: dict[str, Any] = {}
    if intensity is not None:
        val = np.asarray(intensity, dtype=float)
        kw = dict(
            intensity=val,
            colorscale=colorscale,
            intensitymode="cell" if len(val) == len(f) else "vertex",
        )
    else:
        kw = dict(color="#8fb3d9")
    fig = go.Figure(
        go.Mesh3d(
            x=v[:, 0],
            y=v[:, 1],
            z=v[:, 2],
            i=f[:, 0],
            j=f[:, 1],
            k=f[:, 2],
            name=name,
            opacity=1.0,
            flatshading=True,
            **kw,
        )
    )
    fig.update_layout(**_layout(title))
    return fig


def volume_figure(
    volume: Any,
    *,
    voxel_size_A: float = 1.0,
    level: float | None = None,
    title: str = "reconstruction",
    max_faces: int = 60000,
) -> Any:
    """Iso-surface (marching cubes, Lorensen & Cline 1987) of a volume as a Mesh-3D figure.

    Parameters
    ----------
    volume : (nz, ny, nx) array_like
        Density.
    voxel_size_A : float
        Voxel edge, Å.
    level : float, optional
        Iso-value (default: half of the 99.9th percentile).
    max_faces : int
        The volume is binned 2× until the mesh has at most this many triangles.

    Returns
    -------
    plotly.graph_objects.Figure
    """
    from skimage.measure import marching_cubes

    v = np.asarray(volume, dtype=np.float32)
    if v.ndim != 3:
        raise DataError(f"`volume` must be 3-D, got shape {v.shape}")
    lev = float(0.5 * np.percentile(v, 99.9)) if level is None else float(level)
    if not np.isfinite(lev) or lev <= v.min() or lev >= v.max():
        raise DataError(f"iso-level {lev!r} is outside the volume's range")
    step = 1
    while True:
        verts, faces, _, _ = marching_cubes(v, lev, step_size=step)
        if len(faces) <= max_faces or step >= 8:
            break
        step *= 2
    xyz = verts[:, ::-1] * voxel_size_A  # (z, y, x) -> (x, y, z)
    return mesh_figure(xyz, faces, intensity=xyz[:, 2], title=title, name="iso-surface")
