"""Joint fit of the host columns and a cluster under an aperture (private; issue #7,
session 17 oracle, not used by :func:`~perovstem.insitu.detect_clusters`).

A cluster on the crystal is counted on maps (``E``, ``D``) that assume one host model for
the whole frame; the host under the aperture is 2.6–11 times the cluster's mass and its
cell-to-cell variation is the limit of those counts.  Here the host under and around the
cluster is modelled column by column instead: one peak per host column on the [001]
CsPbBr3 grid (spacing a/2, positions from the frame's lattice and the window's own
(2 0)/(0 2) fringe phase, Hÿtch et al., Ultramicroscopy 74, 131 (1998)), each with its
own amplitude, plus the cluster and a constant, fitted by weighted linear least squares
on the counts (the column-amplitude model of statistical parameter estimation, van Aert
et al., Ultramicroscopy 104, 107 (2005), with the cluster as one more component; the
error is the Cramér–Rao bound of the weighted fit, inflated by the reduced χ²).

The peak profile is *not* the simulator's (Gaussian core plus Moffat tail): it is a
Gaussian core plus a broad Gaussian, with its three shape parameters fitted on crystal
windows away from the clusters (:func:`fit_profile`).

The simulator renders a cluster as the fcc Pb sites (a = 4.95 Å, cube-on-cube with the
host) around its own centroid: in projection a 2.475 Å column grid parallel to the
host's 2.93 Å grid (moiré period ≈ 16 Å), at an arbitrary registry, its atoms never
moved onto the host columns.  A smooth ball for the cluster (``template="ball"``) is
separated from the columns only by its share between them, which depends on that
registry (the r_c of the D counts).  ``template="fcc"`` models the cluster's own columns:
the grid of 2.475 Å columns inside the ball, each weighted by its thickness (or by the
Pb-column SCS of its length, ``column_scs``), one amplitude for all of them; its
registry is scanned over one cell (``n_offsets``²) with the host eliminated (Schur
complement) and the best χ² kept.  The cluster's columns that fall on host sites are
degenerate with those amplitudes one by one, not as a whole: the template ties them to
the columns between the sites.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Profile:
    """Column profile: Gaussian core (σ ``core_A``) plus a fraction ``tail`` in a
    Gaussian of σ ``tail_A`` (unit integral over the plane, 1/Å²)."""

    core_A: float
    tail: float
    tail_A: float

    def __call__(self, r2: np.ndarray) -> np.ndarray:
        c, t = self.core_A**2, self.tail_A**2
        return (1.0 - self.tail) * np.exp(-0.5 * r2 / c) / (2 * np.pi * c) + self.tail * np.exp(
            -0.5 * r2 / t
        ) / (2 * np.pi * t)


def pb_column_scs() -> tuple[np.ndarray, np.ndarray]:
    """(n_atoms, scs_A2) of a metallic Pb column (the abTEM-calibrated library of
    :func:`perovstem.simulate.scs_library`, the one the cluster library is built on)."""
    from perovstem.simulate.scs import scs_library

    lib = scs_library("Pb", 40)
    return lib["n_atoms"].to_numpy(float), lib["scs_A2"].to_numpy(float)


def _axes(angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    t = np.radians(angle_deg)
    return np.array([np.cos(t), np.sin(t)]), np.array([-np.sin(t), np.cos(t)])


def column_sites(
    img: np.ndarray,
    y0: float,
    x0: float,
    *,
    a_px: float,
    angle_deg: float,
    use: np.ndarray,
    margin_px: float,
    return_index: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Host column positions (row, col; pixels of ``img``) on the a/2 grid whose phase is
    the window's own (2 0)/(0 2) fringe phase over the pixels ``use`` (the cluster left
    out); ``(y0, x0)`` is the window origin in frame pixels (returned positions are window
    pixels), sites up to ``margin_px`` outside the window are kept.  ``return_index``: also
    the sites' integer grid indices (k, 2) along the two lattice axes (same sublattice:
    both indices of equal parity)."""
    mm, nn = img.shape
    yy, xx = np.mgrid[0:mm, 0:nn].astype(float)
    e1, e2 = _axes(angle_deg)
    # fractional coordinates in frame pixels (the grid phase is a frame property)
    gx, gy = xx + x0, yy + y0
    u = (e1[0] * gx + e1[1] * gy) / (a_px / 2)
    v = (e2[0] * gx + e2[1] * gy) / (a_px / 2)
    w = np.where(use, img - img[use].mean(), 0.0)
    # a peak at u = n + c gives the phase -2 pi c
    pu = -np.angle(np.sum(w * np.exp(-2j * np.pi * u))) / (2 * np.pi)
    pv = -np.angle(np.sum(w * np.exp(-2j * np.pi * v))) / (2 * np.pi)
    # corners of the window (+ margin) in (u, v)
    cy = np.array([-margin_px, -margin_px, mm + margin_px, mm + margin_px]) + y0
    cx = np.array([-margin_px, nn + margin_px, -margin_px, nn + margin_px]) + x0
    cu = (e1[0] * cx + e1[1] * cy) / (a_px / 2)
    cv = (e2[0] * cx + e2[1] * cy) / (a_px / 2)
    iu = np.arange(np.floor(cu.min()) - 1, np.ceil(cu.max()) + 2) + pu
    iv = np.arange(np.floor(cv.min()) - 1, np.ceil(cv.max()) + 2) + pv
    uu, vv = np.meshgrid(iu, iv, indexing="ij")
    # back to frame pixels: r = (a/2) (u e1 + v e2)
    fx = (a_px / 2) * (uu * e1[0] + vv * e2[0]) - x0
    fy = (a_px / 2) * (uu * e1[1] + vv * e2[1]) - y0
    keep = (
        (fx >= -margin_px)
        & (fx <= nn - 1 + margin_px)
        & (fy >= -margin_px)
        & (fy <= mm - 1 + margin_px)
    )
    pos = np.column_stack([fy[keep], fx[keep]])
    if return_index:
        ku, kv = np.meshgrid(np.arange(len(iu)), np.arange(len(iv)), indexing="ij")
        return pos, np.column_stack([ku[keep], kv[keep]])
    return pos


def _ball_image(shape, cy: float, cx: float, r_px: float, sub: int = 4) -> np.ndarray:
    """Projected ball of radius ``r_px`` (thickness ∝ sqrt(R² − r²)) centred at (cy, cx)
    on the pixels of ``shape``, sub-pixel averaged, unit sum."""
    mm, nn = shape
    s = (np.arange(sub) + 0.5) / sub - 0.5
    yy = (np.arange(mm)[:, None] + s[None, :]).ravel()
    xx = (np.arange(nn)[:, None] + s[None, :]).ravel()
    t = np.sqrt(np.clip(r_px**2 - (yy[:, None] - cy) ** 2 - (xx[None, :] - cx) ** 2, 0, None))
    t = t.reshape(mm, sub, nn, sub).mean(axis=(1, 3))
    if t.sum() <= 0:
        t[int(np.clip(round(cy), 0, mm - 1)), int(np.clip(round(cx), 0, nn - 1))] = 1.0
    return t / t.sum()


def _blur(img: np.ndarray, profile: Profile, px: float) -> np.ndarray:
    """``img`` convolved with ``profile`` sampled at pixel centres (kernel × px²)."""
    from scipy.signal import fftconvolve

    h = int(np.ceil(4 * profile.tail_A / px))
    k = np.arange(-h, h + 1) * px
    ker = profile(k[:, None] ** 2 + k[None, :] ** 2) * px * px
    return fftconvolve(img, ker, mode="same")


def _fcc_template(shape, cy, cx, r_px, oy, ox, *, angle_deg, px, profile, pb_a_A, column_scs=None):
    """Image of a compact fcc Pb cluster viewed along [001], cube-on-cube with the host:
    its projected columns on the square grid of spacing ``pb_a_A``/2 (rotated by
    ``angle_deg``) shifted by (oy, ox) pixels from (cy, cx), each weighted by the ball's
    thickness sqrt(R² − d²) there (or, with ``column_scs`` ((n,), (scs,)) the SCS of a Pb
    column of 2 sqrt(R² − d²)/a atoms, channelling included), blurred by ``profile``; unit
    total."""
    e1, e2 = _axes(angle_deg)
    step = pb_a_A / 2 / px
    h = int(np.ceil(r_px / step)) + 2
    k = np.arange(-h, h + 1)
    ku, kv = np.meshgrid(k, k, indexing="ij")
    ys = cy + oy + step * (ku * e1[1] + kv * e2[1])
    xs = cx + ox + step * (ku * e1[0] + kv * e2[0])
    t = np.sqrt(np.clip(r_px**2 - (ys - cy) ** 2 - (xs - cx) ** 2, 0, None)).ravel()
    m = t > 0
    if column_scs is not None:
        t = np.interp(2 * t * px / pb_a_A, column_scs[0], column_scs[1])
    if not m.any():
        t = np.ones(1)
        ys, xs, m = np.array([cy]), np.array([cx]), np.ones(1, bool)
    ys, xs, t = ys.ravel()[m], xs.ravel()[m], t[m] / t[m].sum()
    mm, nn = shape
    yy = np.arange(mm, dtype=float)[:, None, None]
    xx = np.arange(nn, dtype=float)[None, :, None]
    r2 = ((yy - ys) ** 2 + (xx - xs) ** 2) * px * px
    return (profile(r2) * t).sum(axis=-1) * px * px


def _design(shape, sites, profile: Profile, px: float, reach_px: float) -> np.ndarray:
    """Columns of the design matrix, one per host column site (unit integral each)."""
    mm, nn = shape
    yy, xx = np.mgrid[0:mm, 0:nn].astype(float)
    cols = np.empty((mm * nn, len(sites)))
    for j, (sy, sx) in enumerate(sites):
        r2 = ((yy - sy) ** 2 + (xx - sx) ** 2) * px * px
        g = profile(r2) * px * px
        g[r2 > (reach_px * px) ** 2] = 0.0
        cols[:, j] = g.ravel()
    return cols


def fit_window(
    electrons: np.ndarray,
    cy: float,
    cx: float,
    *,
    half_px: int,
    radius_px: float,
    others: np.ndarray,
    others_r: np.ndarray,
    a_px: float,
    angle_deg: float,
    px: float,
    profile: Profile,
    with_cluster: bool = True,
    reference: np.ndarray | None = None,
    template: str = "ball",
    n_offsets: int = 5,
    offsets: tuple[float, float] | None = None,
    pb_a_A: float = 4.95,
    column_scs: tuple[np.ndarray, np.ndarray] | None = None,
    radius_scales: tuple[float, ...] = (1.0,),
) -> dict:
    """Joint fit in the window of half-width ``half_px`` around (cy, cx) (frame pixels).

    Returns the cluster's total (electrons, the ball's amplitude: its image integrates to
    it over the plane), its standard error from the weighted least-squares covariance
    (Poisson variance from the model), the host columns' amplitudes and the reduced χ².
    ``others`` (k, 2) and ``others_r`` are further clusters in the window (row, col,
    radius px): each gets its own ball.  ``reference`` (default ``electrons``): the image
    whose fringes place the columns and whose model sets the weights (a decomposition of
    the frame into parts fits each part with the frame's sites and weights).
    """
    mm, nn = electrons.shape
    i0, i1 = max(0, int(cy) - half_px), min(mm, int(cy) + half_px + 1)
    j0, j1 = max(0, int(cx) - half_px), min(nn, int(cx) + half_px + 1)
    img = electrons[i0:i1, j0:j1]
    ref = img if reference is None else reference[i0:i1, j0:j1]
    sh = img.shape
    yy, xx = np.mgrid[0 : sh[0], 0 : sh[1]].astype(float)
    lc = (cy - i0, cx - j0)
    d = np.hypot(yy - lc[0], xx - lc[1])
    use = d > radius_px + 2.0 / px
    for (oy, ox), orad in zip(others, others_r, strict=True):
        use &= np.hypot(yy - (oy - i0), xx - (ox - j0)) > orad + 2.0 / px
    if use.sum() < 0.2 * use.size:
        use = d > radius_px
    sites = column_sites(
        ref, i0, j0, a_px=a_px, angle_deg=angle_deg, use=use, margin_px=3 * profile.tail_A / px
    )
    reach = 4 * profile.tail_A / px
    hc = _design(sh, sites, profile, px, reach)
    # sites whose peak hardly reaches into the window carry no information
    inside = hc.sum(axis=0) > 0.05
    sites, hc = sites[inside], hc[:, inside]
    cols = [hc]
    names = ["host"] * len(sites)
    balls = []
    if with_cluster:
        balls.append((lc, radius_px))
    for (oy, ox), orad in zip(others, others_r, strict=True):
        balls.append(((oy - i0, ox - j0), orad))
    for (by, bx), br in balls:
        ball = _blur(_ball_image(sh, by, bx, max(br, 0.5)), profile, px)
        cols.append(ball.ravel()[:, None])
    names += ["cluster"] * with_cluster + ["other"] * (len(balls) - with_cluster)
    cols.append(np.ones((img.size, 1)))
    names.append("const")
    a = np.hstack(cols)
    b = ref.ravel()
    # weights: Poisson variance of the data, then of the first model (normal equations:
    # the design is well conditioned, every column a distinct peak or ball)
    var = np.clip(b, 1.0, None)
    for it in range(3):
        if it == 2:
            if reference is None:
                break
            b = img.ravel()
        w = 1.0 / var
        ata = a.T @ (a * w[:, None])
        ata[np.diag_indices_from(ata)] += 1e-9 * np.mean(np.diag(ata))
        coef = np.linalg.lstsq(ata, a.T @ (b * w), rcond=None)[0]
        model = a @ coef
        var = np.clip(model, 1.0, None)
    w = 1.0 / var
    ata = a.T @ (a * w[:, None])
    r = (b - model) * np.sqrt(w)
    dof = max(1, len(b) - a.shape[1])
    chi2 = float(r @ r / dof)
    names = np.array(names)
    out = {"chi2": chi2, "host": coef[names == "host"], "sites": sites, "window": (i0, j0)}
    if with_cluster and template == "fcc":
        # the cluster's own columns: scan their registry over one cell of the 2.475 Å
        # grid, the host design eliminated (Schur complement), best by the χ² drop
        k = int(np.flatnonzero(names == "cluster")[0])
        hh = np.delete(a, k, axis=1)
        mh = hh.T @ (hh * w[:, None])
        mh[np.diag_indices_from(mh)] += 1e-9 * np.mean(np.diag(mh))
        mi = np.linalg.pinv(mh)
        ch = mi @ (hh.T @ (b * w))
        rh = b - hh @ ch
        step = pb_a_A / 2 / px
        grid = (np.arange(n_offsets) / n_offsets) * step
        if offsets is not None:
            cands = [offsets]
        else:
            cands = [(u, v, f) for u in grid for v in grid for f in radius_scales]
        e1, e2 = _axes(angle_deg)
        best = None
        for u, v, f in cands:
            oy, ox = u * e1[1] + v * e2[1], u * e1[0] + v * e2[0]
            t = _fcc_template(sh, lc[0], lc[1], radius_px * f, oy, ox, angle_deg=angle_deg,
                              px=px, profile=profile, pb_a_A=pb_a_A,
                              column_scs=column_scs).ravel()  # fmt: skip
            q = hh.T @ (t * w)
            sc = float(t @ (t * w) - q @ mi @ q)
            num = float(t @ (w * rh))
            if sc > 0 and (best is None or num * num / sc > best[0]):
                best = (num * num / sc, num / sc, np.sqrt(1.0 / sc), (u, v, f))
        out["cluster"] = best[1]
        out["cluster_err"] = float(best[2] * np.sqrt(max(chi2, 1.0)))
        out["offsets"] = best[3]
        return out
    if with_cluster:
        k = int(np.flatnonzero(names == "cluster")[0])
        # covariance of the weighted fit (Cramér–Rao bound for Poisson counts with the
        # model's variance), inflated by the reduced χ² when the model misses structure
        cov = np.linalg.pinv(ata)
        out["cluster"] = float(coef[k])
        out["cluster_err"] = float(np.sqrt(cov[k, k] * max(chi2, 1.0)))
    return out


def fit_profile(
    electrons: np.ndarray,
    centres: np.ndarray,
    *,
    half_px: int,
    a_px: float,
    angle_deg: float,
    px: float,
    start: Profile = Profile(0.45, 0.15, 1.5),
) -> Profile:
    """Profile shape fitted on cluster-free crystal windows (centres (k, 2), frame pixels):
    the three shape parameters by a bounded nonlinear least squares, the column
    amplitudes and the constant linear for every trial (variable projection)."""
    from scipy.optimize import minimize

    def cost(p):
        prof = Profile(p[0], p[1], p[2])
        s = 0.0
        for cy, cx in centres:
            f = fit_window(electrons, cy, cx, half_px=half_px, radius_px=0.0,
                           others=np.zeros((0, 2)), others_r=np.zeros(0), a_px=a_px,
                           angle_deg=angle_deg, px=px, profile=prof, with_cluster=False)  # fmt: skip
            s += f["chi2"]
        return s

    res = minimize(
        cost,
        np.array([start.core_A, start.tail, start.tail_A]),
        method="L-BFGS-B",
        bounds=[(0.2, 1.0), (0.0, 0.6), (0.8, 4.0)],
        options={"maxiter": 12, "eps": 1e-3},
    )
    return Profile(float(res.x[0]), float(res.x[1]), float(res.x[2]))


def masked_host(
    electrons: np.ndarray,
    cy: float,
    cx: float,
    *,
    half_px: int,
    mask_px: float,
    others: np.ndarray,
    others_r: np.ndarray,
    a_px: float,
    angle_deg: float,
    px: float,
    profile: Profile,
    smooth: float = 0.01,
    crystal: np.ndarray | None = None,
    parts: tuple[np.ndarray, ...] = (),
) -> tuple[tuple[int, int], list[np.ndarray]]:
    """Host model in the window of half-width ``half_px`` around (cy, cx) (frame pixels),
    fitted with the cluster's footprint masked out.

    The host columns of :func:`fit_window` (one amplitude per a/2 site, the fitted
    ``profile``) plus a constant are fitted by Poisson-weighted linear least squares on
    the pixels farther than ``mask_px`` from (cy, cx) and outside the discs of the other
    detections in the window (``others`` (k, 2) row, col; mask radii ``others_r``, px).
    The columns under the mask have no data: a smoothness prior ties every
    column to its four same-sublattice neighbours (sites one lattice vector a apart;
    penalty ``smooth`` × the median data information of a column × Σ (c_i − c_j)²:
    Tikhonov regularisation, Tikhonov & Arsenin 1977), so the masked columns take the
    membrane (harmonic) interpolation of the fitted ones around them, per sublattice.
    ``crystal`` (boolean map of the frame, the crystal plateau): columns are tied only to
    neighbours on the same side of the crystal edge, and those off the crystal are also
    pulled to zero (a masked cluster at a facet takes the crystal's columns, not the
    vacuum's).

    Returns the window origin (i0, j0) and the model (host columns + constant, electrons)
    on the whole window for ``electrons`` and, with the same sites, weights and mask (the
    fit is linear), for each image of ``parts`` (a decomposition of the frame).
    """
    mm, nn = electrons.shape
    i0, i1 = max(0, int(cy) - half_px), min(mm, int(cy) + half_px + 1)
    j0, j1 = max(0, int(cx) - half_px), min(nn, int(cx) + half_px + 1)
    img = electrons[i0:i1, j0:j1]
    sh = img.shape
    yy, xx = np.mgrid[0 : sh[0], 0 : sh[1]].astype(float)
    use = np.hypot(yy - (cy - i0), xx - (cx - j0)) > mask_px
    for (oy, ox), orad in zip(others, others_r, strict=True):
        use &= np.hypot(yy - (oy - i0), xx - (ox - j0)) > orad
    if use.sum() < 0.2 * use.size:
        raise ValueError(f"masked_host: {int(use.sum())} unmasked pixels of {use.size}")
    sites, idx = column_sites(
        img, i0, j0, a_px=a_px, angle_deg=angle_deg, use=use,
        margin_px=3 * profile.tail_A / px, return_index=True,
    )  # fmt: skip
    hc = _design(sh, sites, profile, px, 4 * profile.tail_A / px)
    inside = hc.sum(axis=0) > 0.05
    sites, idx, hc = sites[inside], idx[inside], hc[:, inside]
    ns = len(sites)
    a = np.hstack([hc, np.ones((img.size, 1))])
    # same-sublattice neighbour pairs (grid index steps of 2 along either axis)
    if crystal is None:
        on = np.ones(ns, bool)
    else:
        ri = np.clip(np.rint(sites[:, 0] + i0).astype(int), 0, mm - 1)
        rj = np.clip(np.rint(sites[:, 1] + j0).astype(int), 0, nn - 1)
        on = np.asarray(crystal, bool)[ri, rj]
    key = {(int(u), int(v)): n for n, (u, v) in enumerate(idx)}
    pairs = [
        (n, key[(u + du, v + dv)])
        for n, (u, v) in enumerate(idx)
        for du, dv in ((2, 0), (0, 2))
        if (u + du, v + dv) in key and on[n] == on[key[(u + du, v + dv)]]
    ]
    lap = np.zeros((a.shape[1], a.shape[1]))
    for p, q in pairs:
        lap[p, p] += 1.0
        lap[q, q] += 1.0
        lap[p, q] -= 1.0
        lap[q, p] -= 1.0
    lap[np.flatnonzero(~on), np.flatnonzero(~on)] += 1.0
    m = use.ravel()
    b = img.ravel()
    var = np.clip(b, 1.0, None)
    for _ in range(2):
        w = np.where(m, 1.0 / var, 0.0)
        ata = a.T @ (a * w[:, None])
        info = np.diag(ata)[:ns]
        lam = smooth * float(np.median(info[info > 0.5 * info.max()]))
        mat = ata + lam * lap
        mat[np.diag_indices_from(mat)] += 1e-9 * np.mean(np.diag(ata))
        coef = np.linalg.solve(mat, a.T @ (b * w))
        var = np.clip(a @ coef, 1.0, None)
    models = [(a @ coef).reshape(sh)]
    for part in parts:
        bp = part[i0:i1, j0:j1].ravel()
        models.append((a @ np.linalg.solve(mat, a.T @ (bp * w))).reshape(sh))
    return (i0, j0), models
