"""Lattice outputs: column indexing, displacements from the fitted lattice, local strain.

Follows the approach of StatSTEM's strain mapping (Galindo et al., Ultramicroscopy 107 (2007)
1186 for the local deformation gradient; De Backer et al., Ultramicroscopy 171 (2016) 104):
the lattice is fitted by least squares to the columns of a reference type, every column is
indexed to the ideal position of the nearest site of the projected cell, the displacement is
fitted − ideal, and the local deformation gradient F is the least-squares map of the ideal
onto the measured neighbour vectors (neighbours within 1.1·max(a, b)).  The measured
projected unit cell is the average of every indexed column folded into one cell
(StatSTEM's "projected unit cell" output).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from perovstem._validation import refuse_text_numbers
from perovstem.atoms.cell import ProjectedCell
from perovstem.atoms.find import (
    _rotation_candidates,
    _scaled_cell,
    _sublattice_vectors,
    _warn_lattice_scale,
    fit_lattice_vectors,
)
from perovstem.errors import DataError, ParameterError

__all__ = [
    "fit_lattice",
    "lattice_strain",
    "projected_unit_cell",
    "strain_analysis",
    "unit_cell_table",
]

_NONE = np.iinfo(np.int64).min


def fit_lattice(
    columns: pd.DataFrame,
    cell: ProjectedCell,
    *,
    reference_type: str | None = None,
    rotation_deg: float | None = None,
) -> pd.DataFrame:
    """Index columns to a projected cell and measure their displacement from the lattice.

    Parameters
    ----------
    columns : DataFrame
        ``x_A, y_A, type`` (e.g. from :func:`fit_columns`).
    cell : ProjectedCell
    reference_type : str, optional
        Type whose columns define the lattice (default: the cell's first site type).
    rotation_deg : float, optional
        In-plane rotation of a, default estimated from the reference columns.

    Returns
    -------
    DataFrame
        Copy of ``columns`` with ``h, k, site, x_ideal_A, y_ideal_A, dx_A, dy_A``; columns that
        cannot be indexed have NaN ideal positions.  ``attrs``: ``lattice_vectors_A`` (2×2 rows
        a, b), ``lattice_origin_A``, ``lattice_vectors_err_A`` (standard errors) and
        ``a_A``, ``b_A``, ``angle_deg`` of the fitted lattice, ``angle_err_deg`` and its mean
        shear relative to the cell ``lattice_shear_xy`` ± ``lattice_shear_xy_err``
        (:func:`_lattice_shear`; lattice frame).  With a ``grain`` column
        (several crystals, :func:`find_columns`) each grain is indexed to its own lattice;
        ``attrs`` then describe the grain with the most columns and ``attrs["grains"]``
        lists each grain's lattice.
    """
    refuse_text_numbers(locals())
    for c in ("x_A", "y_A", "type"):
        if c not in columns.columns:
            raise DataError(f"`columns` needs column {c!r}, got {list(columns.columns)}")
    if "grain" in columns.columns and (
        columns["grain"].nunique() > 1 or (columns["grain"] < 0).any()
    ):
        return _fit_grains(columns, cell, reference_type=reference_type, rotation_deg=rotation_deg)
    ref = reference_type if reference_type is not None else cell.sites["type"].iloc[0]
    if ref not in cell.types:
        raise ParameterError(f"`reference_type` {ref!r} is not a type of the cell {cell.types}")
    m = (columns["type"].astype(str) == ref).to_numpy()
    if m.sum() < 3:
        present = sorted(set(columns["type"].astype(str)))
        if not set(present) & set(cell.types):
            raise DataError(
                f"the columns' types {present} are none of the cell's {list(cell.types)} "
                f"({cell.name}): the columns were found with another cell; give that cell "
                "(command line: --cell)"
            )
        raise DataError(
            f"need at least 3 columns of type {ref!r} to fit the lattice, got {m.sum()}"
        )
    xy = columns[["x_A", "y_A"]].to_numpy(float)
    xyr = xy[m]
    types = columns["type"].astype(str).to_numpy()
    ref_uv = cell.sites.loc[cell.sites["type"] == ref, ["u", "v"]].to_numpy(float)
    dmin_ref = cell.min_distance_A(ref)
    centre = xyr.mean(axis=0)
    o0 = xyr[np.argmin(np.linalg.norm(xyr - centre, axis=1))]
    cell_given = cell
    cell, scale = _scaled_cell(cell, ref_uv, xyr)  # a calibration off by a few %
    dmin_ref *= scale
    if rotation_deg is None:
        reach = 1.3 * max(cell.a_A, cell.b_A)
        expected = _sublattice_vectors(ref_uv, reach, cell)
        pr = cKDTree(xyr).query_pairs(reach, output_type="ndarray")
        dv = xyr[pr[:, 1]] - xyr[pr[:, 0]] if len(pr) else np.zeros((0, 2))
        tol_r = 0.12 * dmin_ref
        trials = [
            (h, r) for h in (1.0, -1.0) for r in _rotation_candidates(dv, expected, cell, h, tol_r)
        ]
        if not trials:
            raise DataError(
                f"no {ref!r} column pairs match the cell (a = {cell_given.a_A} Å): cannot fit the lattice"
            )
    else:
        trials = [(1.0, float(rotation_deg)), (-1.0, float(rotation_deg))]
    fits = []
    for hand, rot in trials:
        v = cell.vectors(rot)
        v[1] *= hand
        org, vec, hk = fit_lattice_vectors(xyr, v, o0)
        fits.append((int(np.sum(hk[:, 0] != _NONE)), org, vec, hk))
    best_n = max(f[0] for f in fits)
    if best_n < 2:
        raise DataError(
            f"no {ref!r} column pairs at a = {cell_given.a_A} Å: cannot fit the lattice"
        )
    tol = 0.3 * cell.min_distance_A()
    best = None
    # which reference site the fitted origin is, and the handedness: the choice that indexes
    # the most columns of every type (then the smallest residual)
    for n_ok, org, vec, hk in fits:
        if n_ok < 0.9 * best_n:
            continue
        for s0 in np.unique(np.round(ref_uv, 6), axis=0):
            idx = _index_to_sites(xy, types, cell, org, vec, s0)
            good = idx[0] <= tol
            # equivalent choices (a square sublattice) tie: a nearest to +x by convention
            key = (
                int(good.sum()),
                -round(float(np.median(idx[0][good])), 4) if good.any() else 0.0,
                -abs(float(np.degrees(np.arctan2(vec[0, 1], vec[0, 0])))),
            )
            if best is None or key > best[0]:
                best = (key, org, vec, hk, s0, idx)
    _, org, vec, hk, s0, (best_d, h_out, k_out, site_out, ideal) = best
    _warn_lattice_scale(vec, cell_given, ref, float(columns.attrs.get("pixel_size_A", np.nan)))
    ok = hk[:, 0] != _NONE
    # standard errors of the lattice parameters from the LS residuals
    a_mat = np.column_stack([np.ones(ok.sum()), hk[ok]])
    resid = xyr[ok] - a_mat @ np.vstack([org, vec])
    dof = max(2 * ok.sum() - 6, 1)
    s2 = float(np.sum(resid**2) / dof)
    cov = np.linalg.pinv(a_mat.T @ a_mat) * s2
    vec_err = np.sqrt(np.diag(cov))[1:3]
    out = columns.copy()
    bad = best_d > tol
    ideal[bad] = np.nan
    site_out[bad] = -1
    out["h"], out["k"], out["site"] = h_out, k_out, site_out
    out["x_ideal_A"], out["y_ideal_A"] = ideal[:, 0], ideal[:, 1]
    out["dx_A"], out["dy_A"] = xy[:, 0] - ideal[:, 0], xy[:, 1] - ideal[:, 1]
    a_len, b_len = np.linalg.norm(vec, axis=1)
    angle = float(np.rad2deg(np.arccos(np.dot(vec[0], vec[1]) / (a_len * b_len))))
    # covariance of (a_x, a_y, b_x, b_y): x and y fitted independently with one s²
    c_ab = cov[1:3, 1:3]
    cov4 = np.zeros((4, 4))
    cov4[np.ix_([0, 2], [0, 2])] = c_ab
    cov4[np.ix_([1, 3], [1, 3])] = c_ab
    shear = _lattice_shear(vec, cov4, cell_given)
    out.attrs = dict(columns.attrs)
    out.attrs.pop("grains", None)  # find_columns' lattices: replaced by this fit
    out.attrs.update(
        lattice_vectors_A=vec.tolist(),
        lattice_vectors_err_A=vec_err.tolist(),
        lattice_origin_A=org.tolist(),
        a_A=float(a_len),
        b_A=float(b_len),
        angle_deg=angle,
        **shear,
        reference_type=ref,
        reference_site_uv=[float(v) for v in s0],
        cell=cell.name,
    )
    return out


_SHEAR_KEYS = ("angle_deg", "angle_err_deg", "lattice_shear_xy", "lattice_shear_xy_err")


def _lattice_shear(vec: np.ndarray, cov4: np.ndarray, cell: ProjectedCell) -> dict[str, float]:
    """Angle of the fitted lattice and its mean shear relative to the cell, with errors.

    The fitted lattice absorbs the image's uniform shear (scan distortion, a sheared
    crystal), so the local ε_xy of :func:`lattice_strain` is relative to it; the mean shear
    is ε_xy = ½(F_xy + F_yx) of the F that maps the cell (scaled to the fitted a, lattice
    frame: x along a, the fitted handedness) onto the fitted vectors — ½·cos γ for a
    rectangular cell.  ε_xy + ``lattice_shear_xy`` is the shear relative to the cell's angle
    (StatSTEM's square reference cell for [001]).  Errors by linear propagation of ``cov4``,
    the covariance of ``(a_x, a_y, b_x, b_y)`` (Å²).

    Returns
    -------
    dict
        ``angle_err_deg``, ``lattice_shear_xy``, ``lattice_shear_xy_err``.
    """
    v0 = cell.vectors(0.0)

    def angle_shear(p: np.ndarray) -> np.ndarray:
        v = p.reshape(2, 2)
        th = np.arctan2(v[0, 1], v[0, 0])
        c, s_ = np.cos(th), np.sin(th)
        vl = v @ np.array([[c, -s_], [s_, c]])  # rows in the lattice frame (a along +x)
        ref = v0 * (np.linalg.norm(v[0]) / cell.a_A)
        if np.linalg.det(vl) < 0:  # a left-handed fit: the cell mirrored the same way
            ref = ref * [1.0, -1.0]
        f = vl.T @ np.linalg.inv(ref.T)  # F·a0 = a, F·b0 = b
        gam = np.arccos(np.dot(v[0], v[1]) / (np.linalg.norm(v[0]) * np.linalg.norm(v[1])))
        return np.array([np.degrees(gam), 0.5 * (f[0, 1] + f[1, 0])])

    p0 = np.asarray(vec, float).ravel()
    val = angle_shear(p0)
    jac = np.zeros((2, 4))
    step = 1e-6 * max(float(np.abs(p0).max()), 1.0)
    for i in range(4):
        d = np.zeros(4)
        d[i] = step
        jac[:, i] = (angle_shear(p0 + d) - angle_shear(p0 - d)) / (2 * step)
    err = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", jac, cov4, jac), 0.0))
    return {
        "angle_err_deg": float(err[0]),
        "lattice_shear_xy": float(val[1]),
        "lattice_shear_xy_err": float(err[1]),
    }


def _fit_grains(columns: pd.DataFrame, cell: ProjectedCell, **kw) -> pd.DataFrame:
    """:func:`fit_lattice` per grain, rows in the input order.

    Rows of grain −1 (peaks of a crystal too small for a lattice, :func:`find_columns`) are
    not indexed: ``site`` −1, NaN ideal positions and displacements.
    """
    parts, grains = [], []
    free = columns["grain"].to_numpy() < 0
    sizes = columns.loc[~free, "grain"].value_counts()
    if len(sizes) == 0:
        raise DataError("no column of `columns` is in a grain (all grain −1: not indexed)")
    for g in sizes.index:
        sub = columns[columns["grain"] == g]
        try:
            fit = fit_lattice(sub.drop(columns="grain"), cell, **kw)
        except DataError as err:
            raise DataError(f"grain {g}: {err}") from None
        fit["grain"] = g
        parts.append(fit)
        keys = ("lattice_vectors_A", "lattice_vectors_err_A", "lattice_origin_A", "a_A", "b_A")
        grains.append(
            {"grain": int(g), "reference_site_uv": fit.attrs["reference_site_uv"]}
            | {k: fit.attrs[k] for k in (*keys, *_SHEAR_KEYS)}
        )
    if free.any():
        un = columns[free].copy()
        un["h"], un["k"], un["site"] = 0, 0, -1
        for c in ("x_ideal_A", "y_ideal_A", "dx_A", "dy_A"):
            un[c] = np.nan
        parts.append(un)
    out = pd.concat(parts).loc[columns.index]
    out.attrs = dict(parts[0].attrs)
    out.attrs["grains"] = grains
    return out


def _index_to_sites(
    xy: np.ndarray,
    types: np.ndarray,
    cell: ProjectedCell,
    org: np.ndarray,
    vec: np.ndarray,
    s0: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Nearest site of the column's own type: (distance, h, k, site, ideal xy)."""
    fr = (xy - org) @ np.linalg.inv(vec) + s0  # fractional coordinates, cell origin at 0
    best_d = np.full(len(xy), np.inf)
    h_out = np.zeros(len(xy), int)
    k_out = np.zeros(len(xy), int)
    site_out = np.full(len(xy), -1)
    ideal = np.full((len(xy), 2), np.nan)
    for si, st in cell.sites.iterrows():
        cell_hk = np.round(fr - np.array([st.u, st.v]))
        pos = org + (cell_hk + np.array([st.u, st.v]) - s0) @ vec
        d = np.linalg.norm(pos - xy, axis=1)
        better = (d < best_d) & (types == st.type)
        best_d[better] = d[better]
        h_out[better], k_out[better] = cell_hk[better, 0], cell_hk[better, 1]
        site_out[better] = si
        ideal[better] = pos[better]
    return best_d, h_out, k_out, site_out, ideal


def lattice_strain(
    indexed: pd.DataFrame, *, radius_A: float | None = None, frame: str = "lattice"
) -> pd.DataFrame:
    """Local strain and rotation from the deformation gradient of each column's neighbourhood.

    For column i with neighbours j (within ``radius_A``, default 1.1·max(a, b)), F minimises
    Σ_j |(r_j − r_i) − F (R_j − R_i)|² (r measured, R ideal); then ε = ½(F + Fᵀ) − I and
    ω_xy = ½(F_xy − F_yx) (Galindo et al., Ultramicroscopy 107 (2007) 1186).  F is linear in
    the measured positions, so position standard errors (``x_err_A``, ``y_err_A``, e.g. the
    CRLB of :func:`fit_columns`) propagate exactly to ε and ω (columns taken as
    independent): ``eps_xx_err`` … ``omega_xy_err``.

    Parameters
    ----------
    indexed : DataFrame
        Output of :func:`fit_lattice`.
    radius_A : float, optional
        Neighbour radius, Å.
    frame : {"lattice", "lab"}
        Axes of ε and ω: x along the lattice vector a of the column's crystal (``"lattice"``,
        StatSTEM's convention: ε_xx is the strain along a whatever the crystal's in-plane
        rotation, and each grain uses its own a) or the image axes (``"lab"``).

    Returns
    -------
    DataFrame
        Copy with ``eps_xx, eps_yy, eps_xy, omega_xy`` and ``n_neighbours`` (NaN where fewer
        than 2 non-collinear neighbours), and their standard errors ``<name>_err`` when the
        input has ``x_err_A`` and ``y_err_A``; ``attrs["strain_frame"]``.
    """
    refuse_text_numbers(locals())
    for c in ("x_A", "y_A", "x_ideal_A", "y_ideal_A"):
        if c not in indexed.columns:
            raise DataError(f"`indexed` needs column {c!r} (run fit_lattice first)")
    if frame not in ("lattice", "lab"):
        raise ParameterError(f"`frame` must be 'lattice' or 'lab', got {frame!r}")
    ok = np.isfinite(indexed["x_ideal_A"].to_numpy())
    r = indexed[["x_A", "y_A"]].to_numpy(float)
    rid = indexed[["x_ideal_A", "y_ideal_A"]].to_numpy(float)
    vec = np.asarray(indexed.attrs.get("lattice_vectors_A", [[np.nan] * 2] * 2), float)
    if radius_A is None:
        radius_A = 1.1 * float(np.max(np.linalg.norm(vec, axis=1)))
        if not np.isfinite(radius_A):
            raise ParameterError("`radius_A` is required when the lattice vectors are unknown")
    elif not (np.isfinite(radius_A) and radius_A > 0):
        # a radius ≤ 0 left every column without neighbours: an all-NaN map, silently
        raise ParameterError(f"`radius_A` must be a positive number of Å, got {radius_A!r}")
    # a column's neighbours are in its own crystal (ideal positions of two grains are on
    # different lattices)
    grain = indexed["grain"].to_numpy() if "grain" in indexed.columns else np.zeros(len(r))
    rot = np.zeros(len(r))  # angle of a from the image x axis, per column (its grain's a)
    if frame == "lattice":
        grains = indexed.attrs.get("grains")
        if grains and "grain" in indexed.columns:
            for g in grains:
                a = np.asarray(g["lattice_vectors_A"], float)[0]
                rot[grain == g["grain"]] = np.arctan2(a[1], a[0])
        elif np.all(np.isfinite(vec)):
            rot[:] = np.arctan2(vec[0, 1], vec[0, 0])
        else:
            raise DataError("frame='lattice' needs the fitted lattice in attrs (fit_lattice)")
    idx = np.flatnonzero(ok)
    tree = cKDTree(rid[idx])
    out = indexed.copy()
    eps = np.full((len(r), 4), np.nan)
    nnb = np.zeros(len(r), int)
    has_err = {"x_err_A", "y_err_A"} <= set(indexed.columns)
    if not has_err and "contrast" in indexed.columns and "scs" not in indexed.columns:
        # find_columns puts every column on its lattice (+ a smoothed residual field): ε of
        # those positions is ~0 everywhere (|ε| < 1e-15 on a simulated crystal), not a map
        warnings.warn(
            "the columns look like find_columns output (lattice sites, not fitted positions): "
            "their strain is ~0 by construction; fit them first (fit_columns / "
            "'perovstem atoms fit')",
            UserWarning,
            stacklevel=2,
        )
    if has_err:
        sx2 = indexed["x_err_A"].to_numpy(float) ** 2
        sy2 = indexed["y_err_A"].to_numpy(float) ** 2
        eps_err = np.full((len(r), 4), np.nan)
    # (ε_xx, ε_yy, ε_xy, ω_xy) from vec(F) = (F_xx, F_xy, F_yx, F_yy), the identity removed
    jac = np.array([[1, 0, 0, 0], [0, 0, 0, 1], [0, 0.5, 0.5, 0], [0, 0.5, -0.5, 0]])
    for i in idx:
        nb = [
            idx[j]
            for j in tree.query_ball_point(rid[i], radius_A)
            if idx[j] != i and grain[idx[j]] == grain[i]
        ]
        nnb[i] = len(nb)
        if len(nb) < 2:
            continue
        dr = r[nb] - r[i]
        dR = rid[nb] - rid[i]
        if np.linalg.matrix_rank(dR) < 2:
            continue
        a_mat = np.linalg.pinv(dR)  # F^T = A (r_nb − r_i): linear in the positions
        f = (a_mat @ dr).T
        c, s_ = np.cos(rot[i]), np.sin(rot[i])
        rm = np.array([[c, -s_], [s_, c]])
        fl = rm.T @ f @ rm  # in the lattice frame (rm = identity for frame="lab")
        eps[i] = jac @ fl.ravel() - [1.0, 1.0, 0.0, 0.0]
        if has_err:
            # Cov of vec(F): F_xx = A0·dx, F_xy = A1·dx, F_yx = A0·dy, F_yy = A1·dy, and
            # cov(Σ_j u_j (x_j − x_i), Σ_j w_j (x_j − x_i)) = Σ_j u_j w_j σ_j² + Σu Σw σ_i²
            def cov2(s2: np.ndarray, i=i, nb=nb, a_mat=a_mat) -> np.ndarray:
                return a_mat * s2[nb] @ a_mat.T + np.outer(a_mat.sum(1), a_mat.sum(1)) * s2[i]

            cov = np.zeros((4, 4))
            cov[np.ix_([0, 1], [0, 1])] = cov2(sx2)
            cov[np.ix_([2, 3], [2, 3])] = cov2(sy2)
            m = np.kron(rm.T, rm.T)  # vec(Rᵀ F R) = (Rᵀ ⊗ Rᵀ) vec(F) for row-major vec
            jm = jac @ m
            eps_err[i] = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", jm, cov, jm), 0.0))
    out["eps_xx"], out["eps_yy"], out["eps_xy"], out["omega_xy"] = eps.T
    if has_err:
        for k, name in enumerate(("eps_xx", "eps_yy", "eps_xy", "omega_xy")):
            out[f"{name}_err"] = eps_err[:, k]
    out["n_neighbours"] = nnb
    out.attrs = dict(indexed.attrs)
    out.attrs["strain_radius_A"] = float(radius_A)
    out.attrs["strain_frame"] = frame
    return out


def projected_unit_cell(
    indexed: pd.DataFrame,
    cell: ProjectedCell,
    *,
    value_columns: tuple[str, ...] = ("scs", "eta", "rho_A"),
) -> ProjectedCell:
    """The measured projected unit cell: every indexed column folded into one cell.

    The fitted lattice (``a``, ``b``, angle of :func:`fit_lattice`) gives the cell; each
    site's position is the mean fractional position ``(u, v)`` of all columns indexed to it
    (their position minus the lattice translation ``h·a + k·b``), with its standard error;
    numeric per-column values (e.g. SCS) are averaged per site too.

    Parameters
    ----------
    indexed : DataFrame
        Output of :func:`fit_lattice` (``x_A, y_A, h, k, site`` and the lattice in ``attrs``).
    cell : ProjectedCell
        The cell used for the indexing.
    value_columns : tuple of str
        Columns averaged per site when present.

    Returns
    -------
    ProjectedCell
        ``a_A, b_A, angle_deg`` of the fitted lattice; ``sites`` holds ``type, u, v, z`` of the
        model cell's sites with the measured ``u, v`` and ``u_err, v_err`` (fractions),
        ``shift_x_A, shift_y_A`` (mean displacement from the ideal site, Å, lattice frame:
        x along a), ``n_columns`` and ``<value>_mean``, ``<value>_err`` for each value column.

    Raises
    ------
    DataError
        Not an output of :func:`fit_lattice`, or no column indexed.
    """
    refuse_text_numbers(locals())
    for c in ("x_A", "y_A", "site", "h", "k"):
        if c not in indexed.columns:
            raise DataError(f"`indexed` needs column {c!r} (run fit_lattice first)")
    vec = np.asarray(indexed.attrs.get("lattice_vectors_A", np.nan), float)
    org = np.asarray(indexed.attrs.get("lattice_origin_A", np.nan), float)
    if vec.shape != (2, 2) or org.shape != (2,) or not np.all(np.isfinite(vec)):
        raise DataError("`indexed` lacks the fitted lattice in attrs (run fit_lattice first)")
    site = indexed["site"].to_numpy()
    ok = site >= 0
    if not ok.any():
        raise DataError("no column of `indexed` is indexed to a site of the cell")
    ref = indexed.attrs.get("reference_type", cell.sites["type"].iloc[0])
    s0 = np.asarray(
        indexed.attrs.get(
            "reference_site_uv", cell.sites[cell.sites["type"] == ref][["u", "v"]].to_numpy()[0]
        ),
        float,
    )
    xy = indexed[["x_A", "y_A"]].to_numpy(float)
    fr = (xy - org) @ np.linalg.inv(vec) + s0 - indexed[["h", "k"]].to_numpy(float)
    if "grain" in indexed.columns and "grains" in indexed.attrs:
        # every crystal folded with its own lattice (the cell is that of the largest)
        gcol = indexed["grain"].to_numpy()
        for g in indexed.attrs["grains"]:
            m = gcol == g["grain"]
            v_g = np.asarray(g["lattice_vectors_A"], float)
            o_g = np.asarray(g["lattice_origin_A"], float)
            s_g = np.asarray(g["reference_site_uv"], float)
            hk_g = indexed.loc[m, ["h", "k"]].to_numpy(float)
            fr[m] = (xy[m] - o_g) @ np.linalg.inv(v_g) + s_g - hk_g
    a_len, b_len = np.linalg.norm(vec, axis=1)
    angle = float(np.rad2deg(np.arccos(np.dot(vec[0], vec[1]) / (a_len * b_len))))
    # lattice frame (x along a): displacement in Å from the fractional shift
    basis = ProjectedCell(a_len, b_len, angle, cell.sites.iloc[:1]).vectors(0.0)
    rows = []
    for si, st in cell.sites.iterrows():
        m = ok & (site == si)
        n = int(m.sum())
        row = {"type": st.type, "z": st.z, "n_columns": n}
        if n:
            du = fr[m] - np.array([st.u, st.v])
            mu = du.mean(axis=0)
            err = du.std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.full(2, np.nan)
            shift = mu @ basis
            row.update(
                u=st.u + mu[0],
                v=st.v + mu[1],
                u_err=err[0],
                v_err=err[1],
                shift_x_A=shift[0],
                shift_y_A=shift[1],
            )
        else:
            row.update(u=st.u, v=st.v, u_err=np.nan, v_err=np.nan)
            row.update(shift_x_A=np.nan, shift_y_A=np.nan)
        for c in value_columns:
            if c in indexed.columns and np.issubdtype(indexed[c].dtype, np.number):
                val = indexed[c].to_numpy(float)[m]
                val = val[np.isfinite(val)]
                row[f"{c}_mean"] = float(val.mean()) if val.size else np.nan
                row[f"{c}_err"] = (
                    float(val.std(ddof=1) / np.sqrt(val.size)) if val.size > 1 else np.nan
                )
        rows.append(row)
    sites = pd.DataFrame(rows)
    return ProjectedCell(
        a_len, b_len, angle, sites, c_A=cell.c_A, name=f"{cell.name} (measured)".strip()
    )


def strain_analysis(
    columns: pd.DataFrame,
    cell: ProjectedCell,
    *,
    reference_type: str | None = None,
    radius_A: float | None = None,
    frame: str = "lattice",
) -> tuple[pd.DataFrame, ProjectedCell]:
    """Lattice, displacements, local strain with errors and the measured projected cell.

    :func:`fit_lattice` → :func:`lattice_strain` → :func:`projected_unit_cell` (StatSTEM's
    strain-mapping outputs, Galindo et al. 2007; De Backer et al. 2016), each crystal
    (``grain`` column) on its own lattice.

    Parameters
    ----------
    columns : DataFrame
        Fitted columns ``x_A, y_A, type`` (+ ``x_err_A, y_err_A`` for strain errors, e.g.
        :func:`fit_columns` output).
    cell : ProjectedCell
    reference_type, radius_A, frame
        See :func:`fit_lattice` and :func:`lattice_strain`.

    Returns
    -------
    strain : DataFrame
        :func:`lattice_strain` output (``h, k, site, dx_A, dy_A, eps_*``, ``*_err``);
        ``attrs`` hold the fitted lattice (:func:`fit_lattice`) with its ``angle_deg`` ±
        ``angle_err_deg`` and mean shear ``lattice_shear_xy`` ± ``lattice_shear_xy_err``
        relative to the cell's angle: ε_xy is relative to the fitted lattice, which absorbs
        a uniform shear of the image; ε_xy + ``lattice_shear_xy`` compares with a strain
        map referred to the cell (StatSTEM's square reference cell).  Per crystal in
        ``attrs["grains"]``.  Columns whose fit did not converge (``converged`` False) are
        left out with a warning (``attrs["n_columns_unconverged"]``).
    unit_cell : ProjectedCell
        :func:`projected_unit_cell` of the indexed columns.
    """
    refuse_text_numbers(locals())
    n_left = 0
    if isinstance(columns, pd.DataFrame) and "converged" in columns:
        # a column whose fit did not converge has no position estimate, and its error
        # (up to 1e11 Å on a 500 e/Å² fit) spread into its neighbours' strain errors
        bad = ~columns["converged"].fillna(False).astype(bool).to_numpy()
        if bad.all():
            raise DataError(
                f"no column of the {len(columns)} converged in the fit (`converged` False): "
                "no positions to measure strain from; fit again (more dose, fewer columns)"
            )
        if bad.any():
            n_left = int(bad.sum())
            warnings.warn(
                f"strain_analysis: {n_left} of {len(columns)} columns did not converge in the "
                "fit (`converged` False) and are left out: their positions and errors are "
                "not estimates",
                UserWarning,
                stacklevel=2,
            )
            columns = columns[~bad].reset_index(drop=True)
    indexed = fit_lattice(columns, cell, reference_type=reference_type)
    strain = lattice_strain(indexed, radius_A=radius_A, frame=frame)
    strain.attrs["n_columns_unconverged"] = n_left
    return strain, projected_unit_cell(indexed, cell)


def unit_cell_table(unit_cell: ProjectedCell, *, lattice: Any = None) -> pd.DataFrame:
    """The measured projected cell as a table: one row per site, the cell's ``a_A, b_A,
    angle_deg`` in ``attrs`` and as columns (for writing to Parquet/CSV).

    Parameters
    ----------
    unit_cell : ProjectedCell
        :func:`projected_unit_cell` output.
    lattice : DataFrame or mapping, optional
        The :func:`strain_analysis` strain table (or its ``attrs``): adds the angle's
        standard error ``angle_err_deg`` (degrees) and the fitted lattice's mean shear
        ``lattice_shear_xy`` ± ``lattice_shear_xy_err`` relative to the cell's angle
        (:func:`fit_lattice`; local ε_xy + this = the shear relative to a square reference
        cell, StatSTEM's convention), as ``attrs`` and columns.
    """
    refuse_text_numbers(locals())
    t = unit_cell.sites.copy()
    t.insert(0, "site", np.arange(len(t)))
    t["a_A"], t["b_A"], t["angle_deg"] = unit_cell.a_A, unit_cell.b_A, unit_cell.angle_deg
    t.attrs.update(a_A=unit_cell.a_A, b_A=unit_cell.b_A, angle_deg=unit_cell.angle_deg)
    if lattice is not None:
        attrs = lattice.attrs if isinstance(lattice, pd.DataFrame) else dict(lattice)
        for k in _SHEAR_KEYS[1:]:
            if k in attrs:
                t[k] = float(attrs[k])
                t.attrs[k] = float(attrs[k])
    return t
