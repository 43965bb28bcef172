"""Tomographic reconstruction: FBP/WBP, SIRT, SART/OS-SIRT, CGLS, TV (Chambolle–Pock), DART.

All algorithms work on the whole volume at once through :class:`~perovstem.tomo.projector.Projector`
(matrix-free strip model, all slices batched, numba threads).  Geometry and axis conventions are
those of :mod:`perovstem.tomo.projector`: tilt axis along image x, volume ``(nz, ny, nx)``.

Choosing the number of iterations
---------------------------------
SIRT/SART/CGLS are semi-convergent on noisy data: the error to the truth first falls, then
rises as noise is fitted.  SIRT with non-negativity is stable over a wide range (50–200
iterations for typical HAADF tilt series; 100 is the default, as in the benchmark); CGLS
converges ~5× faster and must be stopped early (default 20).  Pass ``noise_sigma`` (standard
deviation of one projection pixel, data units) to stop by Morozov's discrepancy principle: the
iteration stops once ``‖Ax − b‖ ≤ tau · noise_sigma · sqrt(m)``.  TV and DART regularise
explicitly and are run for a fixed number of iterations.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from perovstem._data import TiltSeries
from perovstem._robust import robust_sd
from perovstem._validation import refuse_text_numbers
from perovstem.errors import DataError, ParameterError
from perovstem.tomo import _kernels
from perovstem.tomo.projector import Projector, check_angles

__all__ = [
    "Reconstruction",
    "reconstruct",
    "fbp",
    "sirt",
    "sart",
    "sirt_dual_axis",
    "cgls",
    "tv_reconstruct",
    "dart",
    "estimate_noise_sigma",
    "METHODS",
]

METHODS = ("fbp", "wbp", "sirt", "sart", "cgls", "tv", "dart")


@dataclass
class Reconstruction:
    """A reconstructed volume.

    Attributes
    ----------
    volume : (nz, ny, nx) ndarray, float32
        Reconstructed density (data units per voxel length), z = beam at 0° tilt, x = tilt axis.
    voxel_size_A : float
        Voxel edge, Å.
    method : str
        Algorithm name.
    n_iter : int
        Iterations actually run (0 for FBP).
    residuals : (n_iter,) ndarray
        Relative data residual ``‖Ax − b‖ / ‖b‖`` after each iteration.
    params : dict
        Algorithm parameters (for provenance).
    """

    volume: np.ndarray
    voxel_size_A: float
    method: str
    n_iter: int = 0
    residuals: np.ndarray = field(default_factory=lambda: np.zeros(0))
    params: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- input handling
MIN_DIRECTIONS = 3


def _check_directions(ang: np.ndarray) -> None:
    """Refuse tilt sets with fewer than ``MIN_DIRECTIONS`` projection directions.

    θ and θ ± 180° are one direction (parallel beam: mirror-image projections). One
    direction carries no depth information; two cannot tell two objects from their
    diagonal "ghost" pair (both give the same pair of projections), so any volume from them
    is an artefact of the algorithm. Three is a floor against that, not a quality bound:
    resolution d over a diameter D needs about πD/d directions (Crowther et al., Proc. R.
    Soc. A 317, 319, 1970).
    """
    dirs = np.unique(np.round(np.mod(ang, 180.0), 6) % 180.0)
    if dirs.size < MIN_DIRECTIONS:
        raise ParameterError(
            f"`angles_deg` {ang.tolist()} give {dirs.size} distinct projection "
            f"direction(s) (angles 180° apart are one); reconstruction needs at least "
            f"{MIN_DIRECTIONS}: one projection has no depth information and two cannot tell "
            "two objects from their diagonal ghost pair"
        )


def _prepare(
    data: Any, angles_deg: Any = None, *, thickness_px: int | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """Return (projections float32 (A, M, N), angles, pixel size) from a TiltSeries or array."""
    px = 1.0
    if isinstance(data, TiltSeries):
        if abs(float(data.tilt_axis_deg)) > 1e-6:
            raise ParameterError(
                f"`tilt_axis_deg` must be 0 (axis along image x) for reconstruction, got "
                f"{data.tilt_axis_deg}; run perovstem.tomo.apply_alignment first"
            )
        angles = data.angles_deg if angles_deg is None else angles_deg
        px = float(data.pixel_size_A)
        arr = np.asarray(data.data)
    else:
        if angles_deg is None:
            raise ParameterError("`angles_deg` is required when `data` is an array")
        arr = np.asarray(data)
        angles = angles_deg
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise DataError(f"projections must be (A, M, N), got shape {arr.shape}")
    ang = check_angles(angles, arr.shape[0])
    _check_directions(ang)
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr).all(axis=(1, 2))).ravel().tolist()
        raise DataError(f"projections contain NaN/inf values (projections {bad})")
    if arr.shape[1] < 3:
        raise DataError(f"projections need >= 3 detector rows, got shape {arr.shape}")
    if thickness_px is not None and int(thickness_px) < 1:
        raise ParameterError(f"`thickness_px` must be >= 1, got {thickness_px}")
    if thickness_px is not None and int(thickness_px) > 4 * max(arr.shape[1:]):
        # a volume much thicker than the field of view is never meant (1e9 ran out of memory)
        raise ParameterError(
            f"`thickness_px` must be at most 4 × the projection size ({4 * max(arr.shape[1:])} "
            f"px for {arr.shape[1]}×{arr.shape[2]} projections), got {thickness_px}"
        )
    return np.ascontiguousarray(arr, dtype=np.float32), ang, px


def _projector(proj: np.ndarray, ang: np.ndarray, thickness_px: int | None, offset_px) -> Projector:
    _, m, n = proj.shape
    nz = int(thickness_px) if thickness_px is not None else m
    return Projector(ang, (nz, m, n), n_det=m, offset_px=offset_px)


def _x0(x0: Any, shape: tuple[int, int, int]) -> np.ndarray:
    if x0 is None:
        return np.zeros(shape, dtype=np.float32)
    x = np.array(x0, dtype=np.float32, copy=True)
    if x.shape != shape:
        raise ParameterError(f"`x0` must have shape {shape}, got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise DataError("`x0` contains NaN/inf")
    return x


def _check_iter(n_iter: int, name: str = "n_iter") -> int:
    if int(n_iter) != n_iter or n_iter < 1:
        raise ParameterError(f"`{name}` must be a positive integer, got {n_iter!r}")
    return int(n_iter)


def estimate_noise_sigma(projections: np.ndarray) -> float:
    """Robust noise standard deviation of projection pixels on the object (data units).

    Median absolute deviation of the second difference along the tilt axis (x), scaled for
    Gaussian noise (``σ = 1.4826·MAD/√6``; Donoho & Johnstone, Biometrika 81, 425 (1994)),
    over pixels brighter than 10 % of the 99.9th percentile (empty vacuum pixels of
    Poisson data would give σ = 0).  Smooth structure is suppressed by the second difference.
    """
    refuse_text_numbers(locals())
    p = np.asarray(projections, dtype=np.float64)
    if p.shape[-1] < 3:
        return robust_sd(p)
    d2 = p[..., 2:] - 2 * p[..., 1:-1] + p[..., :-2]
    hi = np.percentile(p, 99.9)
    lo = np.percentile(p, 0.1)
    sel = p[..., 1:-1] > lo + 0.1 * (hi - lo)
    if np.count_nonzero(sel) < 100:
        sel = np.ones_like(sel)
    d = d2[sel]
    return float(robust_sd(d) / np.sqrt(6.0))


# --------------------------------------------------------------------------- FBP / WBP
_FILTERS = ("ram-lak", "shepp-logan", "cosine", "hann", "hamming")


def _angle_weights(ang_deg: np.ndarray) -> np.ndarray:
    """Angular integration weights (radians) for non-uniform sampling (WBP)."""
    order = np.argsort(ang_deg)
    th = np.deg2rad(ang_deg[order])
    if th.size == 1:
        w = np.array([np.pi])
    else:
        mid = 0.5 * (th[1:] + th[:-1])
        edges = np.concatenate([[th[0] - (mid[0] - th[0])], mid, [th[-1] + (th[-1] - mid[-1])]])
        w = np.diff(edges)
    out = np.empty_like(w)
    out[order] = w
    return out


def _ramp(n: int, filter_name: str) -> np.ndarray:
    """Frequency response of the discrete ramp filter (Kak & Slaney 1988, eq. 61) × window."""
    size = max(64, int(2 ** np.ceil(np.log2(2 * n))))
    k = np.concatenate([np.arange(1, size // 2 + 1, 2), np.arange(size // 2 - 1, 0, -2)])
    h = np.zeros(size)
    h[0] = 0.25
    h[1::2] = -1.0 / (np.pi * k) ** 2
    filt = np.real(np.fft.fft(h))
    freq = np.fft.fftfreq(size)
    if filter_name == "shepp-logan":
        filt *= np.sinc(freq)
    elif filter_name == "cosine":
        filt *= np.cos(np.pi * freq)
    elif filter_name == "hann":
        filt *= 0.5 + 0.5 * np.cos(2 * np.pi * freq)
    elif filter_name == "hamming":
        filt *= 0.54 + 0.46 * np.cos(2 * np.pi * freq)
    return filt


def fbp(
    data: Any,
    angles_deg: Any = None,
    *,
    filter_name: str = "ram-lak",
    thickness_px: int | None = None,
    offset_px: float = 0.0,
    nonneg: bool = False,
) -> Reconstruction:
    """Filtered (weighted) back-projection.

    Each projection row is convolved with the band-limited ramp filter (Kak & Slaney,
    *Principles of Computerized Tomographic Imaging*, 1988, ch. 3) times an optional window,
    weighted by its angular interval (weighted back-projection for non-uniform/limited tilt
    ranges, Radermacher 1992) and back-projected with the strip model.

    Parameters
    ----------
    data : TiltSeries or (A, M, N) array
        Projections; tilt axis along x.
    angles_deg : (A,) array_like, optional
        Required for arrays.
    filter_name : {"ram-lak", "shepp-logan", "cosine", "hann", "hamming"}
    thickness_px : int, optional
        Volume thickness ``nz`` (default M).
    offset_px : float
        Rotation-axis position relative to the detector centre, pixels.
    nonneg : bool
        Clip negative densities.

    Returns
    -------
    Reconstruction
    """
    refuse_text_numbers(locals())
    if filter_name not in _FILTERS:
        raise ParameterError(f"`filter_name` must be one of {_FILTERS}, got {filter_name!r}")
    proj, ang, px = _prepare(data, angles_deg, thickness_px=thickness_px)
    op = _projector(proj, ang, thickness_px, offset_px)
    a, m, n = proj.shape
    filt = _ramp(m, filter_name)
    size = filt.size
    spec = np.fft.rfft(proj, n=size, axis=1)
    spec *= filt[: size // 2 + 1][None, :, None]
    q = np.fft.irfft(spec, n=size, axis=1)[:, :m, :]
    q *= _angle_weights(ang)[:, None, None]
    vol = op.backward(q.astype(np.float32))
    if nonneg:
        np.maximum(vol, 0, out=vol)
    return Reconstruction(vol, px, "fbp", 0, params={"filter_name": filter_name})


# --------------------------------------------------------------------------- SIRT / SART
def _inv(x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    out = np.zeros_like(x)
    np.divide(1.0, x, out=out, where=x > eps)
    return out


def sirt(
    data: Any,
    angles_deg: Any = None,
    *,
    n_iter: int = 100,
    nonneg: bool = True,
    relaxation: float = 1.0,
    n_subsets: int = 1,
    x0: Any = None,
    mask: np.ndarray | None = None,
    thickness_px: int | None = None,
    offset_px: float = 0.0,
    noise_sigma: float | None = None,
    tau: float = 1.0,
    rng: Any = None,
    _projector_obj: Projector | None = None,
) -> Reconstruction:
    """SIRT (Gilbert 1972) in the row/column-normalised form, optionally with ordered subsets.

    ``x ← P₊[x + λ C Aᵀ R (b − A x)]`` with ``R = 1/(A·1)`` and ``C = 1/(Aᵀ·1)`` (the SIRT of
    ASTRA, van Aarle et al. 2015).  With ``n_subsets > 1`` the angles are split into
    interleaved subsets updated in turn (OS-SIRT); ``n_subsets = A`` is SART (Andersen & Kak,
    Ultrason. Imaging 6, 81 (1984)).

    Parameters
    ----------
    data : TiltSeries or (A, M, N) array
    angles_deg : (A,) array_like, optional
    n_iter : int
        Full sweeps over the data.
    nonneg : bool
        Project onto ``x ≥ 0`` after each update.
    relaxation : float
        λ in (0, 2).
    n_subsets : int
        1 = SIRT; A = SART.
    x0 : (nz, M, N) array_like, optional
        Starting volume (warm start, e.g. the previous time point of a 4-D series).
    mask : (nz, M, N) bool array, optional
        Voxels allowed to change (others stay at ``x0``); used by DART.
    thickness_px, offset_px : see :func:`fbp`.
    noise_sigma : float, optional
        Pixel noise σ (data units); enables the discrepancy-principle early stop.
    tau : float
        Discrepancy safety factor.
    rng : seed or Generator
        Order of the subsets.

    Returns
    -------
    Reconstruction
    """
    refuse_text_numbers(locals())
    n_iter = _check_iter(n_iter)
    if not 0 < relaxation < 2:
        raise ParameterError(f"`relaxation` must be in (0, 2), got {relaxation}")
    proj, ang, px = _prepare(data, angles_deg, thickness_px=thickness_px)
    op = _projector_obj or _projector(proj, ang, thickness_px, offset_px)
    n_subsets = int(n_subsets)
    if not 1 <= n_subsets <= ang.size:
        raise ParameterError(f"`n_subsets` must be in [1, {ang.size}], got {n_subsets}")
    x = _x0(x0, op.volume_shape)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != x.shape:
            raise ParameterError(f"`mask` must have shape {x.shape}, got {mask.shape}")
    gen = np.random.default_rng(rng)
    subsets = [np.arange(s, ang.size, n_subsets) for s in range(n_subsets)]
    ops = [op] if n_subsets == 1 else [op.subset(s) for s in subsets]
    rs = [_inv(o.row_sums()) for o in ops]
    cs = [(relaxation * _inv(o.col_sums())) for o in ops]
    bnorm = float(np.linalg.norm(proj)) or 1.0
    target = None if noise_sigma is None else tau * float(noise_sigma) * np.sqrt(proj.size)
    res_hist = []
    it_done = 0
    for it in range(n_iter):
        order = gen.permutation(n_subsets) if n_subsets > 1 else [0]
        rnorm2 = 0.0
        for s in order:
            o = ops[s]
            b = proj if n_subsets == 1 else proj[subsets[s]]
            r = b - o.forward(x)
            rnorm2 += float(np.vdot(r, r))
            r *= rs[s]
            upd = o.backward(r)
            if mask is not None:
                upd *= mask
            _kernels.sirt_update(x, upd, cs[s], bool(nonneg))
        it_done = it + 1
        # residual of the state before the last sweep (cheap); exact for SIRT
        res_hist.append(np.sqrt(rnorm2) / bnorm)
        if target is not None and np.sqrt(rnorm2) <= target:
            break
    name = "sirt" if n_subsets == 1 else ("sart" if n_subsets == ang.size else "os-sirt")
    return Reconstruction(
        x,
        px,
        name,
        it_done,
        np.asarray(res_hist),
        params={"nonneg": nonneg, "relaxation": relaxation, "n_subsets": n_subsets},
    )


def sirt_dual_axis(
    series_a: Any,
    series_b: Any,
    *,
    angles_a_deg: Any = None,
    angles_b_deg: Any = None,
    specimen_rotation_deg: float = 90.0,
    n_iter: int = 100,
    nonneg: bool = True,
    relaxation: float = 1.0,
    x0: Any = None,
) -> Reconstruction:
    """Joint SIRT of a dual-axis tilt series (two single-axis series, specimen turned by ±90°).

    Series ``b`` was recorded after rotating the specimen in-plane by
    ``specimen_rotation_deg`` (+90: counter-clockwise seen along the beam, lab ``Rz(+90°)``);
    both are aligned with their own tilt axis along image x.  The volume is the frame of
    series ``a``; series ``b`` sees it rotated by ``np.rot90`` in the (y, x) plane.  Dual-axis
    acquisition shrinks the missing wedge to a missing pyramid (Penczek et al.,
    Ultramicroscopy 60, 393 (1995); Arslan et al., Ultramicroscopy 106, 994 (2006)).  The
    SIRT normalisation uses the summed row/column sums of both operators.

    Raises
    ------
    DataError
        Non-square projections (the rotated volume must fit both geometries) or series of
        different image shapes.
    """
    refuse_text_numbers(locals())
    n_iter = _check_iter(n_iter)
    pa, anga, px = _prepare(series_a, angles_a_deg)
    pb, angb, _ = _prepare(series_b, angles_b_deg)
    if pa.shape[1] != pa.shape[2]:
        raise DataError(f"dual-axis needs square projections, got {pa.shape[1]}×{pa.shape[2]}")
    if pb.shape[1:] != pa.shape[1:]:
        raise DataError(f"series_b images {pb.shape[1:]} differ from series_a {pa.shape[1:]}")
    if specimen_rotation_deg not in (90, -90, 90.0, -90.0):
        raise ParameterError(
            f"`specimen_rotation_deg` must be +90 or -90, got {specimen_rotation_deg}"
        )
    if not 0 < relaxation < 2:
        raise ParameterError(f"`relaxation` must be in (0, 2), got {relaxation}")
    k = -1 if specimen_rotation_deg > 0 else 1
    m = pa.shape[1]
    shape = (m, m, m)
    op_a = Projector(anga, shape)
    op_b = Projector(angb, shape)

    def rot(v: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.rot90(v, k, axes=(1, 2)))

    def unrot(v: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.rot90(v, -k, axes=(1, 2)))

    r_a = _inv(op_a.row_sums())
    r_b = _inv(op_b.row_sums())
    cs = np.broadcast_to(op_a.col_sums(), shape) + unrot(np.broadcast_to(op_b.col_sums(), shape))
    c = relaxation * _inv(np.ascontiguousarray(cs, dtype=np.float32))
    x = _x0(x0, shape)
    bnorm = float(np.sqrt(np.vdot(pa, pa) + np.vdot(pb, pb))) or 1.0
    res = []
    for _ in range(n_iter):
        ra = pa - op_a.forward(x)
        rb = pb - op_b.forward(rot(x))
        res.append(float(np.sqrt(np.vdot(ra, ra) + np.vdot(rb, rb))) / bnorm)
        upd = op_a.backward(ra * r_a) + unrot(op_b.backward(rb * r_b))
        x += c * upd
        if nonneg:
            np.maximum(x, 0, out=x)
    return Reconstruction(
        x,
        px,
        "sirt-dual-axis",
        n_iter,
        np.asarray(res),
        params={"nonneg": nonneg, "specimen_rotation_deg": float(specimen_rotation_deg)},
    )


def sart(data: Any, angles_deg: Any = None, *, n_iter: int = 10, **kwargs: Any) -> Reconstruction:
    """SART (Andersen & Kak 1984): SIRT with one projection per sub-iteration.

    Converges in far fewer sweeps than SIRT (default 10); see :func:`sirt` for parameters.
    """
    refuse_text_numbers(locals())
    proj = data.data if isinstance(data, TiltSeries) else np.asarray(data)
    return sirt(data, angles_deg, n_iter=n_iter, n_subsets=int(proj.shape[0]), **kwargs)


# --------------------------------------------------------------------------- CGLS
def cgls(
    data: Any,
    angles_deg: Any = None,
    *,
    n_iter: int = 20,
    x0: Any = None,
    thickness_px: int | None = None,
    offset_px: float = 0.0,
    noise_sigma: float | None = None,
    tau: float = 1.0,
) -> Reconstruction:
    """Conjugate gradients on the normal equations (Hestenes & Stiefel 1952; CGLS form of
    Björck, *Numerical Methods for Least Squares Problems*, 1996).

    Fast but noise-amplifying: stop early (``n_iter`` ≈ 10–30) or give ``noise_sigma`` for the
    discrepancy principle.  No non-negativity (use SIRT/TV for that).
    """
    refuse_text_numbers(locals())
    n_iter = _check_iter(n_iter)
    proj, ang, px = _prepare(data, angles_deg, thickness_px=thickness_px)
    op = _projector(proj, ang, thickness_px, offset_px)
    x = _x0(x0, op.volume_shape).astype(np.float64)
    r = (proj - op.forward(x)).astype(np.float64)
    s = op.backward(r).astype(np.float64)
    p = s.copy()
    gamma = float(np.vdot(s, s))
    bnorm = float(np.linalg.norm(proj)) or 1.0
    target = None if noise_sigma is None else tau * float(noise_sigma) * np.sqrt(proj.size)
    res_hist = []
    it_done = 0
    for it in range(n_iter):
        q = op.forward(p).astype(np.float64)
        qq = float(np.vdot(q, q))
        if qq <= 0 or gamma <= 0:
            break
        alpha = gamma / qq
        x += alpha * p
        r -= alpha * q
        rn = float(np.linalg.norm(r))
        res_hist.append(rn / bnorm)
        it_done = it + 1
        if target is not None and rn <= target:
            break
        s = op.backward(r).astype(np.float64)
        gamma_new = float(np.vdot(s, s))
        p *= gamma_new / gamma
        p += s
        gamma = gamma_new
    return Reconstruction(x.astype(np.float32), px, "cgls", it_done, np.asarray(res_hist))


# --------------------------------------------------------------------------- TV (Chambolle–Pock)
def _grad(x: np.ndarray) -> np.ndarray:
    g = np.zeros((3, *x.shape), dtype=np.float32)
    g[0, :-1] = x[1:] - x[:-1]
    g[1, :, :-1] = x[:, 1:] - x[:, :-1]
    g[2, :, :, :-1] = x[:, :, 1:] - x[:, :, :-1]
    return g


def _div(q: np.ndarray) -> np.ndarray:
    """Negative adjoint of :func:`_grad` (``⟨∇x, q⟩ = −⟨x, div q⟩``)."""
    d = np.zeros(q.shape[1:], dtype=np.float32)
    d[:-1] += q[0, :-1]
    d[1:] -= q[0, :-1]
    d[:, :-1] += q[1, :, :-1]
    d[:, 1:] -= q[1, :, :-1]
    d[:, :, :-1] += q[2, :, :, :-1]
    d[:, :, 1:] -= q[2, :, :, :-1]
    return d


def tv_reconstruct(
    data: Any,
    angles_deg: Any = None,
    *,
    tv_weight: float = 0.5,
    n_iter: int = 100,
    nonneg: bool = True,
    x0: Any = None,
    thickness_px: int | None = None,
    offset_px: float = 0.0,
    noise_sigma: float | None = None,
) -> Reconstruction:
    """Total-variation regularised reconstruction by the preconditioned primal–dual algorithm.

    Solves ``min_x ½‖Ax − b‖² + μ TV(x)`` (isotropic 3-D TV, ``x ≥ 0`` optional) with the
    Chambolle–Pock algorithm (J. Math. Imaging Vis. 40, 120 (2011)) and the diagonal
    preconditioning of Pock & Chambolle (ICCV 2011): ``σ_data = 1/(A·1)``, ``σ_TV = 1/2``,
    ``τ = 1/(Aᵀ·1 + 6)``, which needs no operator-norm estimate.

    Parameters
    ----------
    tv_weight : float
        Dimensionless strength; ``μ = tv_weight · √A · σ̂`` where σ̂ is the projection noise
        (``noise_sigma`` or :func:`estimate_noise_sigma`) and A the number of projections, so
        the TV gradient balances the back-projected noise.  0.3–1 works for HAADF data of
        piecewise-constant nanocrystals (default 0.5; larger = smoother).
    n_iter : int
        Primal–dual iterations (fixed).  Stronger TV converges more slowly: on a 128³
        nanocrystal phantom (71 tilts, ±70°) the error relative to SIRT-100 is 0.47 after 100
        iterations at weight 0.5, but 0.75 after 100 and 0.45 after 200 at weight 1.
    """
    refuse_text_numbers(locals())
    n_iter = _check_iter(n_iter)
    if not np.isfinite(tv_weight) or tv_weight < 0:
        raise ParameterError(f"`tv_weight` must be finite and >= 0, got {tv_weight}")
    proj, ang, px = _prepare(data, angles_deg, thickness_px=thickness_px)
    op = _projector(proj, ang, thickness_px, offset_px)
    sigma_n = float(noise_sigma) if noise_sigma is not None else estimate_noise_sigma(proj)
    mu = float(tv_weight) * np.sqrt(ang.size) * max(sigma_n, 1e-12)
    sig_d = _inv(op.row_sums())
    tau = 1.0 / (op.col_sums() + 6.0)
    x = _x0(x0, op.volume_shape)
    xbar = x.copy()
    p = np.zeros(proj.shape, dtype=np.float32)
    q = np.zeros((3, *x.shape), dtype=np.float32)
    bnorm = float(np.linalg.norm(proj)) or 1.0
    res_hist = []
    for _ in range(n_iter):
        r = op.forward(xbar) - proj
        res_hist.append(float(np.linalg.norm(r)) / bnorm)
        p += sig_d * r
        p /= 1.0 + sig_d
        q += 0.5 * _grad(xbar)
        if mu > 0:
            nrm = np.sqrt((q * q).sum(axis=0)) / mu
            np.maximum(nrm, 1.0, out=nrm)
            q /= nrm
        else:
            q[:] = 0
        x_new = x - tau * (op.backward(p) - _div(q))
        if nonneg:
            np.maximum(x_new, 0, out=x_new)
        xbar = 2 * x_new - x
        x = x_new
    return Reconstruction(
        x.astype(np.float32),
        px,
        "tv",
        n_iter,
        np.asarray(res_hist),
        params={"tv_weight": tv_weight, "mu": mu, "noise_sigma": sigma_n, "nonneg": nonneg},
    )


# --------------------------------------------------------------------------- DART
def dart(
    data: Any,
    angles_deg: Any = None,
    *,
    grey_levels: Any = None,
    n_classes: int = 2,
    n_iter: int = 20,
    n_sirt: int = 10,
    n_init: int = 100,
    fix_probability: float = 0.85,
    smoothing: float = 0.5,
    thickness_px: int | None = None,
    offset_px: float = 0.0,
    rng: Any = None,
) -> Reconstruction:
    """Discrete algebraic reconstruction (DART; Batenburg & Sijbers, IEEE TIP 20, 2542 (2011)).

    Start from SIRT (``n_init`` iterations, non-negative), then repeat: segment to the grey
    levels; free the boundary voxels (a neighbour in another class) plus a random
    ``1 − fix_probability`` fraction of the rest; run ``n_sirt`` SIRT iterations on the free
    voxels with the fixed ones held; smooth the free voxels (3×3×3 mean, weight
    ``smoothing``).  Grey levels are given (``grey_levels``, data units per voxel, background
    first) or estimated by multi-Otsu on the SIRT volume (class means).

    Returns
    -------
    Reconstruction
        ``volume`` is the final *segmented* volume (values = grey levels);
        ``params["labels"]`` the class label volume, ``params["grey_levels"]`` the levels.
    """
    refuse_text_numbers(locals())
    from scipy import ndimage

    n_iter = _check_iter(n_iter)
    n_sirt = _check_iter(n_sirt, "n_sirt")
    if not 0 <= fix_probability <= 1:
        raise ParameterError(f"`fix_probability` must be in [0, 1], got {fix_probability}")
    gen = np.random.default_rng(rng)
    proj, ang, px = _prepare(data, angles_deg, thickness_px=thickness_px)
    op = _projector(proj, ang, thickness_px, offset_px)
    x = sirt(proj, ang, n_iter=n_init, nonneg=True, _projector_obj=op).volume
    if grey_levels is None:
        from perovstem.tomo.segment import multi_otsu_thresholds

        th = multi_otsu_thresholds(x, n_classes=n_classes)
        lab = np.digitize(x, th)
        levels = np.array(
            [x[lab == c].mean() if np.any(lab == c) else 0.0 for c in range(n_classes)]
        )
        levels[0] = 0.0
    else:
        levels = np.sort(np.asarray(grey_levels, dtype=float).ravel())
        if levels.size < 2 or not np.all(np.isfinite(levels)):
            raise ParameterError(f"`grey_levels` needs >= 2 finite values, got {grey_levels}")
    thr = 0.5 * (levels[1:] + levels[:-1])
    res_hist = []
    for _ in range(n_iter):
        lab = np.digitize(x, thr)
        seg = levels[lab].astype(np.float32)
        mx = ndimage.maximum_filter(lab, size=3)
        mn = ndimage.minimum_filter(lab, size=3)
        free = (mx != mn) | (gen.random(lab.shape) > fix_probability)
        xs = np.where(free, x, seg).astype(np.float32)
        r = sirt(proj, ang, n_iter=n_sirt, nonneg=True, x0=xs, mask=free, _projector_obj=op)
        x = r.volume
        res_hist.append(r.residuals[-1])
        if smoothing > 0:
            sm = ndimage.uniform_filter(x, size=3)
            x = np.where(free, (1 - smoothing) * x + smoothing * sm, x).astype(np.float32)
    lab = np.digitize(x, thr)
    seg = levels[lab].astype(np.float32)
    return Reconstruction(
        seg,
        px,
        "dart",
        n_iter,
        np.asarray(res_hist),
        params={"grey_levels": levels.tolist(), "labels": lab.astype(np.uint8), "continuous": x},
    )


# --------------------------------------------------------------------------- front door
def reconstruct(
    tilt_series: Any,
    *,
    method: str = "sirt",
    angles_deg: Any = None,
    backend: str = "numba",
    **kwargs: Any,
) -> Reconstruction:
    """Reconstruct a tilt series (front door to every algorithm and backend).

    Parameters
    ----------
    tilt_series : TiltSeries or (A, M, N) array
        Aligned projections with the tilt axis along image x (see :func:`perovstem.tomo.align`).
    method : {"fbp", "wbp", "sirt", "sart", "cgls", "tv", "dart"}
    angles_deg : (A,) array_like, optional
        Needed when ``tilt_series`` is an array.
    backend : {"numba", "astra", "cupy"}
        ``"astra"`` runs ASTRA's 2-D algorithms slice by slice (CPU, or CUDA when ASTRA has
        it); needs the ``astra`` extra; supports ``fbp`` and ``sirt``/``sart``/``cgls``.
        ``"cupy"`` runs SIRT on a CUDA GPU (needs ``cupy``; method ``sirt`` only).
    **kwargs
        Passed to the algorithm (``n_iter``, ``nonneg``, ``tv_weight``, ``x0`` ...).
    """
    refuse_text_numbers(locals())
    if method not in METHODS:
        raise ParameterError(f"`method` must be one of {METHODS}, got {method!r}")
    if backend not in ("numba", "astra", "cupy"):
        raise ParameterError(f"`backend` must be 'numba', 'astra' or 'cupy', got {backend!r}")
    if backend == "cupy":
        if method != "sirt":
            raise ParameterError(f"the cupy backend supports method='sirt' only, got {method!r}")
        from perovstem.tomo.backends import cupy_sirt

        return cupy_sirt(tilt_series, angles_deg, **kwargs)
    if backend == "astra":
        from perovstem.tomo.backends import astra_reconstruct

        return astra_reconstruct(tilt_series, angles_deg, method=method, **kwargs)
    fn = {
        "fbp": fbp,
        "wbp": fbp,
        "sirt": sirt,
        "sart": sart,
        "cgls": cgls,
        "tv": tv_reconstruct,
        "dart": dart,
    }[method]
    rec = fn(tilt_series, angles_deg, **kwargs)
    if method == "wbp":  # weighted back-projection is this FBP: named as asked
        rec = dataclasses.replace(rec, method="wbp", params={**rec.params, "as": "fbp"})
    return rec
