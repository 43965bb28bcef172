"""In-situ HAADF-STEM series of a degradation trajectory, with exact truth.

:func:`insitu_series` images every frame of a :class:`~perovstem.simulate.kmc.KMCTrajectory`
with the fast HAADF model (:func:`perovstem.simulate.haadf_image`) at the frame's own dose
(dose rate × frame time, the same dose that drove the kinetics), moves the sample by a
linear drift plus a random per-frame jitter, and returns a :class:`perovstem.Series`
carrying time stamps, per-frame dose, temperature, gas and pressure, together with truth
tables: the drift of every frame in pixels, every Pb cluster in image coordinates with its
number of atoms, and the frame table of the kinetics.  Frames can be produced lazily
(``lazy=True``: a dask array with one delayed task per frame; or :func:`iter_insitu_frames`),
so a 1000-frame series never has to sit in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from perovstem._data import Image, Series
from perovstem._validation import as_rng, check_positive, refuse_text_numbers
from perovstem.errors import ParameterError
from perovstem.simulate.haadf import MIN_FRAME_PX, check_auto_shape, check_frame_shape

__all__ = ["insitu_series", "iter_insitu_frames"]


def _pair(name: str, value: Any) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise ParameterError(f"`{name}` must be two numbers (x, y), got {value!r}") from None
    if a.shape != (2,) or not np.all(np.isfinite(a)):
        raise ParameterError(f"`{name}` must be two finite numbers (x, y), got {value!r}")
    return a


@dataclass(frozen=True)
class _Plan:
    """Everything needed to render frame ``k`` independently (picklable for dask)."""

    trajectory: Any
    pixel_size_A: float
    shape: tuple[int, int]
    center_A: tuple[float, float]
    shift_A: np.ndarray  # (T, 2) sample displacement (x, y) at the first scan line, Å
    scan_drift_A: tuple[float, float]  # in-frame drift (x, y) over one frame, Å
    seeds: tuple[np.random.SeedSequence, ...]
    image_kw: dict

    def render(self, k: int) -> tuple[Image, pd.DataFrame]:
        from perovstem.simulate.haadf import haadf_image

        tr = self.trajectory
        row = tr.frame_table.iloc[k]
        atoms = tr.atoms(k)
        atoms.positions[:, :2] += self.shift_A[k]
        dose = float(row["dose_e_per_A2"])
        t0 = float(row["time_s"])
        if dose > 0:
            img, cols = haadf_image(
                atoms,
                pixel_size_A=self.pixel_size_A,
                shape=self.shape,
                dose_e_per_A2=dose,
                center_A=self.center_A,
                drift_A=self.scan_drift_A,
                time_s=t0,
                rng=np.random.default_rng(self.seeds[k]),
                **self.image_kw,
            )
        else:  # beam blanked: nothing is detected
            off = float(self.image_kw.get("offset", 0.0))
            img = Image(np.full(self.shape, off), self.pixel_size_A, dose_e_per_A2=0.0, time_s=t0)
            cols = pd.DataFrame()
        img.metadata.update(
            {"frame": int(k), "time_s": t0, "sample_shift_A": tuple(self.shift_A[k])}
        )
        return img, cols

    def frame_data(self, k: int) -> np.ndarray:
        return self.render(k)[0].data


def _plan(
    trajectory: Any,
    *,
    pixel_size_A: float,
    shape: Any,
    drift_A_per_s: Any,
    jitter_A: float,
    scan_drift: bool,
    center_A: Any,
    margin_A: float,
    rng: Any,
    image_kw: dict,
) -> _Plan:
    from perovstem.simulate.kmc import KMCTrajectory

    if not isinstance(trajectory, KMCTrajectory):
        raise ParameterError(
            f"`trajectory` must be a KMCTrajectory (from degradation_kmc), got "
            f"{type(trajectory).__name__}"
        )
    dx = check_positive("pixel_size_A", pixel_size_A)
    v = _pair("drift_A_per_s", drift_A_per_s)
    jit = check_positive("jitter_A", jitter_A, allow_zero=True)
    check_positive("margin_A", margin_A, allow_zero=True)
    gen = as_rng(rng)
    ft = trajectory.frame_table
    n = len(ft)
    t0 = ft["time_s"].to_numpy(float)
    shift = t0[:, None] * v[None, :] + (gen.normal(0.0, jit, (n, 2)) if jit > 0 else 0.0)
    frame_time = float(trajectory.conditions["frame_time_s"])
    scan = tuple(float(s) for s in (v * frame_time if scan_drift else np.zeros(2)))
    # fixed field of view: centred on the initial crystal, large enough for the drift
    pos0 = trajectory.initial_atoms().get_positions()[:, :2]
    lo, hi = pos0.min(axis=0), pos0.max(axis=0)
    centre = 0.5 * (lo + hi) if center_A is None else _pair("center_A", center_A)
    if shape is None:  # symmetric about the centre; covers the crystal and every cluster
        cl = trajectory.clusters
        half = np.maximum(np.abs(hi - centre), np.abs(centre - lo))
        if len(cl):
            xy = cl[["x_A", "y_A"]].to_numpy(float)
            r = cl["radius_A"].to_numpy(float)[:, None]
            half = np.maximum(half, (np.abs(xy - centre) + r).max(axis=0))
        reach = np.abs(shift).max(axis=0) + np.abs(np.asarray(scan))
        ext = 2.0 * half + 2.0 * margin_A + 2.0 * reach
        nx, ny = (int(2 * np.ceil(e / dx / 2)) for e in ext)
        shape = (max(ny, MIN_FRAME_PX), max(nx, MIN_FRAME_PX))
        check_auto_shape(shape, dx, ext)
    else:
        shape = check_frame_shape(shape, dx)
    seeds = tuple(np.random.SeedSequence(int(gen.integers(0, 2**63))).spawn(n))
    return _Plan(
        trajectory=trajectory,
        pixel_size_A=dx,
        shape=shape,
        center_A=(float(centre[0]), float(centre[1])),
        shift_A=shift,
        scan_drift_A=scan,
        seeds=seeds,
        image_kw=image_kw,
    )


def _frame_block(block: np.ndarray, plan: _Plan) -> np.ndarray:
    """dask block function: render the frame whose index is in ``block`` (one element)."""
    return plan.frame_data(int(block[0]))[None]


def _origin(plan: _Plan) -> tuple[float, float]:
    m, n = plan.shape
    dx = plan.pixel_size_A
    return plan.center_A[0] - 0.5 * (n - 1) * dx, plan.center_A[1] - 0.5 * (m - 1) * dx


def _truth(plan: _Plan) -> dict[str, pd.DataFrame]:
    tr = plan.trajectory
    ft = tr.frame_table
    dx = plan.pixel_size_A
    ox, oy = _origin(plan)
    drift = pd.DataFrame(
        {
            "frame": ft["frame"].to_numpy(),
            "time_s": ft["time_s"].to_numpy(),
            "dy_px": plan.shift_A[:, 1] / dx,
            "dx_px": plan.shift_A[:, 0] / dx,
            "dy_A": plan.shift_A[:, 1],
            "dx_A": plan.shift_A[:, 0],
            "scan_dy_px": np.full(len(ft), plan.scan_drift_A[1] / dx),
            "scan_dx_px": np.full(len(ft), plan.scan_drift_A[0] / dx),
        }
    )
    drift.attrs["description"] = (
        "sample displacement at the first scan line of each frame relative to the undrifted "
        "sample (image_k(r) = sample(r - d_k)); scan_* is the extra in-frame drift reached at "
        "the last scan line"
    )
    cl = tr.clusters.copy()
    if len(cl):
        sx = plan.shift_A[cl["frame"].to_numpy(), 0]
        sy = plan.shift_A[cl["frame"].to_numpy(), 1]
        cl = cl.rename(columns={"x_A": "x_sample_A", "y_A": "y_sample_A"})
        cl["x_A"] = cl["x_sample_A"] + sx - ox
        cl["y_A"] = cl["y_sample_A"] + sy - oy
        cl["col_px"] = cl["x_A"] / dx
        cl["row_px"] = cl["y_A"] / dx
        m, n = plan.shape
        cl["in_view"] = (
            (cl["col_px"] >= -0.5)
            & (cl["col_px"] <= n - 0.5)
            & (cl["row_px"] >= -0.5)
            & (cl["row_px"] <= m - 0.5)
        )
        cl = cl[
            [
                "frame",
                "cluster_id",
                "x_A",
                "y_A",
                "n_atoms",
                "radius_A",
                "row_px",
                "col_px",
                "x_sample_A",
                "y_sample_A",
                "z_A",
                "in_view",
            ]
            + [c for c in ("n_hops", "hop_rate_per_s") if c in cl.columns]
        ]
    cl.attrs["description"] = (
        "Pb clusters at the end of each frame; x_A, y_A in image coordinates (pixel (i, j) "
        "centre at (j·dx, i·dx)), including the frame's drift"
    )
    frames = ft.copy()
    frames["gas"] = tr.conditions["atmosphere"]
    return {
        "drift": drift,
        "clusters": cl.reset_index(drop=True),
        "frames": frames,
        "events": tr.events.copy(),
    }


#: the arguments of insitu_series / iter_insitu_frames that go to haadf_image
_IMAGE_KEYS = (
    "voltage_kV",
    "gain",
    "offset",
    "probe_sigma_A",
    "scan_noise_px",
    "noise",
    "background",
    "read_noise",
    "detector_mrad",
)


def _image_kw(args: dict) -> dict:
    """The :func:`haadf_image` keywords among ``args`` (a caller's ``locals()``)."""
    kw = {k: args[k] for k in _IMAGE_KEYS if k in args}
    from perovstem.simulate.haadf import check_detector_response

    # before the frames are planned: a bad gain was refused by the first frame's haadf_image
    check_detector_response(
        **{
            k: kw[k]
            for k in ("gain", "offset", "scan_noise_px", "background", "read_noise")
            if k in kw
        }
    )
    kw["detector_mrad"] = tuple(float(v) for v in kw.get("detector_mrad", (65.0, 200.0)))
    return kw


def insitu_series(
    trajectory: Any,
    *,
    pixel_size_A: float = 0.5,
    shape: tuple[int, int] | None = None,
    drift_A_per_s: Any = (0.0, 0.0),
    jitter_A: float = 0.1,
    scan_drift: bool = False,
    center_A: Any = None,
    margin_A: float = 10.0,
    voltage_kV: float = 300.0,
    gain: float = 1.0,
    offset: float = 0.0,
    probe_sigma_A: float | None = None,
    scan_noise_px: float = 0.0,
    noise: bool = True,
    background: float = 0.0,
    read_noise: float = 0.0,
    detector_mrad: tuple[float, float] = (65.0, 200.0),
    lazy: bool = False,
    rng: Any = None,
) -> tuple[Series, dict[str, pd.DataFrame]]:
    """Image a degradation trajectory as an in-situ HAADF-STEM series with exact truth.

    Frame ``k`` shows the atoms of ``trajectory.atoms(k)`` (state at the end of the frame),
    imaged with :func:`perovstem.simulate.haadf_image` at the frame's dose
    ``φ_k·Δt`` (e⁻/Å², the dose that drove the kinetics; DESIGN §5), shifted by the sample
    drift ``d_k = v·t_k + ε_k`` (``t_k`` the frame start time, ``ε_k`` Gaussian jitter of
    rms ``jitter_A`` per axis).  The field of view is fixed in the lab frame.

    Parameters
    ----------
    trajectory : KMCTrajectory
        From :func:`perovstem.simulate.degradation_kmc`; its frame times, doses,
        temperatures (a ramp if it had one), atmosphere and pressure become the series'.
    pixel_size_A : float
        Pixel size, Å.
    shape : (M, N), optional
        Frame size, pixels; default: the initial crystal and every cluster of the
        trajectory, plus ``margin_A`` and the drift.
    drift_A_per_s : (vx, vy)
        Linear sample drift, Å/s, **x first** (as ``haadf_image``'s ``drift_A``).
    jitter_A : float
        rms random displacement added per frame and axis, Å.
    scan_drift : bool
        Also drift during the scan of each frame (``v·Δt`` reached at the last line, a
        shear); default False (rigid shift per frame).
    center_A : (x, y), optional
        Lab position at the image centre, Å; default the centre of the initial crystal.
    margin_A : float
        Vacuum margin when ``shape`` is None, Å.
    voltage_kV, gain, offset, probe_sigma_A, scan_noise_px, noise, background, read_noise
        Passed to :func:`haadf_image` for every frame.
    detector_mrad : (inner, outer)
        Annular detector (65–200 or 65–131 mrad), passed to :func:`haadf_image`.
    lazy : bool
        Return the frames as a dask array (one delayed task per frame, rendered on demand,
        reproducibly in any order) instead of a numpy stack.
    rng : None, int or numpy.random.Generator
        Random source for the jitter and the per-frame noise (each frame gets its own child
        seed, so lazy and eager series are identical).

    Returns
    -------
    series : Series
        ``(T, M, N)`` counts; ``time_s`` (frame start), ``dose_e_per_A2``,
        ``temperature_K``, ``pressure_Pa``, ``gas``; ``metadata`` holds the imaging and
        kinetic parameters, the lab origin of pixel (0, 0) and the drift.
    truth : dict of DataFrame
        ``"drift"``: ``frame, time_s, dy_px, dx_px, dy_A, dx_A, scan_dy_px, scan_dx_px``
        (sample displacement at the first scan line, image_k(r) = sample(r − d_k));
        ``"clusters"``: ``frame, cluster_id, x_A, y_A, n_atoms, radius_A, row_px, col_px,
        x_sample_A, y_sample_A, z_A, in_view, n_hops, hop_rate_per_s`` with ``x_A, y_A`` in
        image coordinates;
        ``"frames"``: the trajectory's frame table (+ ``gas``); ``"events"``: births and
        merges with parents.
    """
    refuse_text_numbers(locals())
    kw = _image_kw(locals())
    plan = _plan(
        trajectory,
        pixel_size_A=pixel_size_A,
        shape=shape,
        drift_A_per_s=drift_A_per_s,
        jitter_A=jitter_A,
        scan_drift=scan_drift,
        center_A=center_A,
        margin_A=margin_A,
        rng=rng,
        image_kw=kw,
    )
    n = trajectory.n_frames
    if lazy:
        import uuid

        import dask.array as da

        m_px, n_px = plan.shape
        data = da.map_blocks(
            _frame_block,
            da.arange(n, chunks=1),
            plan=plan,
            new_axis=[1, 2],
            chunks=((1,) * n, (m_px,), (n_px,)),
            dtype=np.float64,
            name=f"insitu-series-{uuid.uuid4().hex}",
        )
    else:
        data = np.empty((n, *plan.shape))
        for k in range(n):
            data[k] = plan.frame_data(k)
    ft = trajectory.frame_table
    pressure = trajectory.conditions["pressure_Pa"]
    ox, oy = _origin(plan)
    meta = {
        "source": "perovstem.simulate.insitu_series",
        "frame_time_s": float(trajectory.conditions["frame_time_s"]),
        "drift_A_per_s": tuple(float(x) for x in _pair("drift_A_per_s", drift_A_per_s)),
        "jitter_A": float(jitter_A),
        "scan_drift": bool(scan_drift),
        "center_A": plan.center_A,
        "lab_origin_A": (ox, oy),
        "kmc_params": trajectory.params.as_dict(),
        "kmc_seed": trajectory.conditions["seed"],
        "atmosphere": trajectory.conditions["atmosphere"],
        **{k: v for k, v in kw.items() if v is not None},
    }
    series = Series(
        data,
        plan.pixel_size_A,
        time_s=ft["time_s"].to_numpy(float),
        dose_e_per_A2=ft["dose_e_per_A2"].to_numpy(float),
        temperature_K=ft["temperature_K"].to_numpy(float),
        pressure_Pa=None if pressure is None else float(pressure),
        gas=trajectory.conditions["atmosphere"],
        initial_dose_e_per_A2=float(trajectory.conditions["initial_dose_e_per_A2"]),
        metadata=meta,
    )
    return series, _truth(plan)


def iter_insitu_frames(
    trajectory: Any,
    *,
    pixel_size_A: float = 0.5,
    shape: tuple[int, int] | None = None,
    drift_A_per_s: Any = (0.0, 0.0),
    jitter_A: float = 0.1,
    scan_drift: bool = False,
    center_A: Any = None,
    margin_A: float = 10.0,
    voltage_kV: float = 300.0,
    gain: float = 1.0,
    offset: float = 0.0,
    probe_sigma_A: float | None = None,
    scan_noise_px: float = 0.0,
    noise: bool = True,
    background: float = 0.0,
    read_noise: float = 0.0,
    detector_mrad: tuple[float, float] = (65.0, 200.0),
    rng: Any = None,
) -> Iterator[tuple[int, Image, pd.DataFrame]]:
    """Yield ``(k, Image, column_truth)`` frame by frame (same frames as :func:`insitu_series`).

    With the same arguments and ``rng`` the images equal those of :func:`insitu_series`;
    ``column_truth`` is the per-column truth table of :func:`haadf_image` for that frame
    (image coordinates, drift included).  Only one frame is in memory at a time.
    """
    refuse_text_numbers(locals())
    kw = _image_kw(locals())
    plan = _plan(
        trajectory,
        pixel_size_A=pixel_size_A,
        shape=shape,
        drift_A_per_s=drift_A_per_s,
        jitter_A=jitter_A,
        scan_drift=scan_drift,
        center_A=center_A,
        margin_A=margin_A,
        rng=rng,
        image_kw=kw,
    )
    for k in range(trajectory.n_frames):
        img, cols = plan.render(k)
        yield k, img, cols
