"""The data model: calibrated images, in-situ series and tilt series.

All three are light dataclasses holding a numpy or lazy dask array plus calibration in the
units of DESIGN.md (Å, s, e⁻/Å², K, Pa, degrees).  Pixel (row i, column j) has its centre at
``x = x0_A + j·pixel_size_A``, ``y = y0_A + i·pixel_size_A`` (0-based).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from perovstem.errors import DataError, ParameterError

__all__ = ["Image", "Series", "TiltSeries"]


def _is_lazy(a: Any) -> bool:
    return hasattr(a, "dask") and hasattr(a, "compute")


def _as_array(name: str, data: Any, ndim: int) -> Any:
    if not _is_lazy(data):
        data = np.asarray(data)
    if data.ndim != ndim:
        raise DataError(f"`{name}` must be {ndim}-D, got shape {tuple(data.shape)}")
    if 0 in data.shape:
        raise DataError(f"`{name}` is empty, got shape {tuple(data.shape)}")
    if np.dtype(data.dtype).kind not in "biuf":
        raise DataError(f"`{name}` must be numeric, got dtype {data.dtype}")
    return data


def _check_pixel_size(value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"`pixel_size_A` must be a number in Å, got {value!r}") from None
    if not np.isfinite(v) or v <= 0:
        raise ParameterError(f"`pixel_size_A` must be finite and > 0 Å, got {value!r}")
    return v


# metadata-borne numbers: unit and the smallest sensible value ((bound, inclusive)); a file's
# "x", NaN, inf or negative dose used to pass into the object and surface far downstream
_LIMITS: dict[str, tuple[str, float, bool]] = {
    # time stamps may be negative: time zero is often a trigger (heating, gas, beam on)
    # with frames recorded before it
    "time_s": ("s", -np.inf, False),
    "dose_e_per_A2": ("e⁻/Å²", 0.0, True),
    "initial_dose_e_per_A2": ("e⁻/Å²", 0.0, True),
    "temperature_K": ("K", 0.0, False),
    "pressure_Pa": ("Pa", 0.0, True),
}


def _bound_text(name: str) -> str:
    unit, lo, inclusive = _LIMITS[name]
    if not np.isfinite(lo):
        return f"finite ({unit})"
    return f"finite and {'>=' if inclusive else '>'} {lo:g} {unit}"


def _check_values(name: str, value: Any, *, per_frame: bool = False) -> np.ndarray:
    """``value`` as a float array after checking it against :data:`_LIMITS` (``name``)."""
    what = "numbers" if per_frame else "a number"
    try:
        if isinstance(value, (str, bytes)) or np.asarray(value).dtype.kind in "USV":
            raise TypeError  # text ("10" from a header) is refused, not parsed
        a = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ParameterError(
            f"`{name}` must be {what} in {_LIMITS[name][0]}, got {value!r}"
        ) from None
    _, lo, inclusive = _LIMITS[name]
    bad = ~np.isfinite(a) | ((a < lo) if inclusive else (a <= lo))
    if bad.any():
        if a.ndim:
            k = int(np.flatnonzero(bad.ravel())[0])
            got = f"{float(a.ravel()[k])!r} (frame {k})"
        else:
            got = repr(value)
        raise ParameterError(f"`{name}` must be {_bound_text(name)}, got {got}")
    return a


def _check_scalar(name: str, value: Any) -> float | None:
    """A checked float (``None`` stays ``None``) for a single-valued metadata number."""
    if value is None:
        return None
    a = _check_values(name, value)
    if a.size != 1:
        raise ParameterError(f"`{name}` must be a single number, got shape {a.shape}")
    return float(a.ravel()[0])


def _per_frame(name: str, value: Any, n: int, *, allow_none: bool = True) -> np.ndarray | None:
    if value is None:
        if allow_none:
            return None
        raise ParameterError(f"`{name}` is required")
    a = _check_values(name, value, per_frame=True)
    if a.ndim == 0:
        a = np.full(n, float(a))
    if a.shape != (n,):
        raise ParameterError(f"`{name}` must have one value per frame ({n}), got shape {a.shape}")
    return a


def _hyperspy_axes(shape: tuple[int, ...], pixel_size_A: float, nav: list[dict]) -> list[dict]:
    ny, nx = shape[-2:]
    return [
        *nav,
        {
            "name": "y",
            "size": ny,
            "scale": pixel_size_A,
            "offset": 0.0,
            "units": "Å",
            "navigate": False,
        },
        {
            "name": "x",
            "size": nx,
            "scale": pixel_size_A,
            "offset": 0.0,
            "units": "Å",
            "navigate": False,
        },
    ]


def _repr(obj: Any, extra: str = "") -> str:
    lazy = " lazy" if _is_lazy(obj.data) else ""
    shape = "×".join(map(str, obj.data.shape))
    return (
        f"<{type(obj).__name__} {shape} {obj.data.dtype}{lazy}, {obj.pixel_size_A:.4g} Å/px{extra}>"
    )


@dataclass(frozen=True, eq=False, repr=False)
class Image:
    """A calibrated 2-D image.

    Parameters
    ----------
    data : (M, N) array_like
        Pixel values (detector counts or normalised intensity).
    pixel_size_A : float
        Pixel size, Å.
    dose_e_per_A2 : float, optional
        Electron dose of this acquisition, e⁻/Å².
    time_s : float, optional
        Acquisition (frame) time, s.
    origin_A : (float, float)
        ``(x0, y0)`` of pixel (0, 0), Å.
    metadata : dict
        Free-form metadata (microscope, detector, source file, ...).
    """

    data: Any
    pixel_size_A: float
    dose_e_per_A2: float | None = None
    time_s: float | None = None
    origin_A: tuple[float, float] = (0.0, 0.0)
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", _as_array("data", self.data, 2))
        object.__setattr__(self, "pixel_size_A", _check_pixel_size(self.pixel_size_A))
        for name in ("dose_e_per_A2", "time_s"):
            object.__setattr__(self, name, _check_scalar(name, getattr(self, name)))

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.data.shape)

    def __repr__(self) -> str:
        dose = "" if self.dose_e_per_A2 is None else f", {self.dose_e_per_A2:.4g} e⁻/Å²"
        return _repr(self, dose)

    @property
    def extent_A(self) -> tuple[float, float]:
        """Field of view ``(width, height)`` in Å."""
        return (self.shape[1] * self.pixel_size_A, self.shape[0] * self.pixel_size_A)

    def replace(self, **changes: Any) -> Image:
        """Return a copy with some fields replaced (the original is untouched)."""
        return dataclasses.replace(self, **changes)

    def to_hyperspy(self) -> Any:
        """Return a HyperSpy ``Signal2D`` with calibrated axes (needs the `hyperspy` extra)."""
        from perovstem._optional import import_optional

        hs = import_optional("hyperspy.api", extra="hyperspy")
        sig = hs.signals.Signal2D(self.data, axes=_hyperspy_axes(self.shape, self.pixel_size_A, []))
        if self.dose_e_per_A2 is not None:
            sig.metadata.set_item("Acquisition_instrument.TEM.dose_e_per_A2", self.dose_e_per_A2)
        return sig

    @classmethod
    def from_hyperspy(cls, signal: Any) -> Image:
        """Build an :class:`Image` from a 2-D HyperSpy signal (axis units converted to Å)."""
        obj = from_hyperspy(signal)
        if not isinstance(obj, cls):
            raise DataError(f"expected a 2-D signal, got {type(obj).__name__}")
        return obj

    def to_xarray(self) -> Any:
        """Return an ``xarray.DataArray`` with coordinates in Å."""
        from perovstem._optional import import_optional

        xr = import_optional("xarray", extra="hyperspy")
        ny, nx = self.shape
        return xr.DataArray(
            self.data,
            dims=("y", "x"),
            coords={
                "y": self.origin_A[1] + np.arange(ny) * self.pixel_size_A,
                "x": self.origin_A[0] + np.arange(nx) * self.pixel_size_A,
            },
            attrs={"units": "Å", "dose_e_per_A2": self.dose_e_per_A2},
        )


def voltage_kV_of(metadata: dict | None) -> float | None:
    """Beam energy of an image or series, kV, from its metadata (``voltage_kV`` as the
    simulator writes it, ``high_tension_kV`` as the readers take it from a file), or None.
    Cross-section libraries must be made at it: columns scatter ≈ 1.8× more at 200 kV than
    at 300 kV."""
    for key in ("voltage_kV", "high_tension_kV"):
        try:
            v = float((metadata or {})[key])
        except (KeyError, TypeError, ValueError):
            continue
        if np.isfinite(v) and v > 0:
            return v
    return None


def imaging_angles_of(metadata: dict | None) -> dict[str, Any]:
    """Probe semi-angle (``semiangle_mrad``) and annular detector (``detector_mrad``,
    [inner, outer]) of an image from its metadata, where recorded (the readers take them
    from the file, the simulators write their own).  Cross-section libraries are made for
    one set of them."""
    md = metadata or {}
    out: dict[str, Any] = {}
    try:
        a = float(md["semiangle_mrad"])
        if np.isfinite(a) and a > 0:
            out["semiangle_mrad"] = a
    except (KeyError, TypeError, ValueError):
        pass
    try:
        inner, outer = (float(v) for v in md["detector_mrad"])
        if np.isfinite(outer) and 0 <= inner < outer:
            out["detector_mrad"] = [inner, outer]
    except (KeyError, TypeError, ValueError):
        pass
    return out


@dataclass(frozen=True, eq=False, repr=False)
class Series:
    """An in-situ time series of calibrated frames.

    Parameters
    ----------
    data : (T, M, N) array_like or dask array
        Frames.
    pixel_size_A : float
        Pixel size, Å.
    time_s : (T,) array_like, optional
        Frame start time, s (defaults to the frame index times ``frame_time_s`` when known).
    dose_e_per_A2 : (T,) array_like or float, optional
        Dose of each frame, e⁻/Å².
    temperature_K, pressure_Pa : (T,) array_like or float, optional
        In-situ conditions interpolated onto frames.
    gas : str, optional
        Atmosphere (``"vacuum"``, ``"O2"``, ``"H2O"``, ...).
    initial_dose_e_per_A2 : float
        Dose received before the first frame, e⁻/Å².
    metadata : dict
        Free-form metadata.
    """

    data: Any
    pixel_size_A: float
    time_s: Any = None
    dose_e_per_A2: Any = None
    temperature_K: Any = None
    pressure_Pa: Any = None
    gas: str | None = None
    initial_dose_e_per_A2: float = 0.0
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", _as_array("data", self.data, 3))
        object.__setattr__(self, "pixel_size_A", _check_pixel_size(self.pixel_size_A))
        n = self.data.shape[0]
        for name in ("time_s", "dose_e_per_A2", "temperature_K", "pressure_Pa"):
            object.__setattr__(self, name, _per_frame(name, getattr(self, name), n))
        object.__setattr__(
            self,
            "initial_dose_e_per_A2",
            _check_scalar(
                "initial_dose_e_per_A2",
                0.0 if self.initial_dose_e_per_A2 is None else self.initial_dose_e_per_A2,
            ),
        )
        if self.gas is not None and not isinstance(self.gas, str):
            raise ParameterError(f"`gas` must be a string, got {self.gas!r}")
        if self.time_s is not None and np.any(np.diff(self.time_s) < 0):
            raise ParameterError("`time_s` must be non-decreasing over frames")

    def __repr__(self) -> str:
        cum = self.cumulative_dose_e_per_A2
        dose = "" if cum is None else f", total {cum[-1]:.4g} e⁻/Å²"
        return _repr(self, dose)

    @property
    def n_frames(self) -> int:
        return int(self.data.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)

    @property
    def cumulative_dose_e_per_A2(self) -> np.ndarray | None:
        """Dose received by the end of each frame, e⁻/Å²."""
        if self.dose_e_per_A2 is None:
            return None
        return self.initial_dose_e_per_A2 + np.cumsum(self.dose_e_per_A2)

    @property
    def exposure_s(self) -> np.ndarray | None:
        """Beam-on time of each frame, s, when the metadata record it; else None.

        In order: ``metadata["dose"]["exposure_s"]`` (set by
        :func:`perovstem.insitu.assign_dose`; ``None`` there means "not known"), the
        reader's ``metadata["exposure_time_s"]`` (one value, or one per frame) and
        ``metadata["dwell_time_s"]`` × the pixels of a frame (STEM).  Values that are not
        finite and positive, or not one per frame, count as unknown.
        """
        md = self.metadata if isinstance(self.metadata, dict) else {}
        dose_md = md.get("dose")
        if isinstance(dose_md, dict) and "exposure_s" in dose_md:
            e = dose_md["exposure_s"]
        elif md.get("exposure_time_s") is not None:
            e = md["exposure_time_s"]
        elif md.get("dwell_time_s") is not None:
            try:
                e = np.asarray(md["dwell_time_s"], dtype=float) * (
                    self.data.shape[1] * self.data.shape[2]
                )
            except (TypeError, ValueError):
                return None
        else:
            return None
        return per_frame_exposures(e, self.n_frames, strict=False)

    @property
    def dose_rate_rule(self) -> str | None:
        """How :attr:`dose_rate_e_per_A2_s` is computed: ``"dose / exposure"`` (the beam-on
        time of each frame is known, :attr:`exposure_s`), ``"dose / frame interval"`` (the
        last frame: the previous interval) or None (no dose rate)."""
        if self.dose_e_per_A2 is None:
            return None
        if self.exposure_s is not None:
            return "dose / exposure"
        if self.time_s is None or self.n_frames < 2:
            return None
        return "dose / frame interval"

    @property
    def dose_rate_e_per_A2_s(self) -> np.ndarray | None:
        """Dose rate per frame, e⁻/Å²/s (:attr:`dose_rate_rule`).

        The dose of a frame over its exposure (beam-on time, :attr:`exposure_s`) when that
        is known: unequal exposures at one beam current give one dose rate.  Otherwise the
        dose over the interval to the next frame's start, the last frame taking the
        previous interval.
        """
        if self.dose_e_per_A2 is None:
            return None
        exp = self.exposure_s
        if exp is not None:
            return np.asarray(self.dose_e_per_A2, dtype=float) / exp
        if self.time_s is None or self.n_frames < 2:
            return None
        dt = np.diff(self.time_s)
        dt = np.append(dt, dt[-1])
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(dt > 0, self.dose_e_per_A2 / dt, np.nan)

    def frame(self, k: int) -> Image:
        """Frame ``k`` as an :class:`Image` (computed if lazy)."""
        if not -self.n_frames <= k < self.n_frames:
            raise ParameterError(f"frame index `k` out of range [0, {self.n_frames}), got {k}")
        d = self.data[k]
        if _is_lazy(d):
            d = d.compute()
        return Image(
            d,
            self.pixel_size_A,
            dose_e_per_A2=None if self.dose_e_per_A2 is None else float(self.dose_e_per_A2[k]),
            time_s=None if self.time_s is None else float(self.time_s[k]),
            # the beam energy, probe and detector go with the frame (cross-section
            # libraries depend on them)
            metadata={
                "frame": int(k) % self.n_frames,
                **({} if (kv := voltage_kV_of(self.metadata)) is None else {"voltage_kV": kv}),
                **imaging_angles_of(self.metadata),
                # ... and so does the detector's calibration: `atoms fit --frame` of a series
                # with gain 4 normalised as if uncalibrated, cross-sections 4× (audit)
                **{
                    key: self.metadata[key]
                    for key in ("gain", "offset")
                    if self.metadata.get(key) is not None
                },
            },
        )

    def frames_table(self) -> Any:
        """Per-frame bookkeeping as a DataFrame (frame, time_s, dose, cumulative dose, conditions).

        ``attrs["dose_rate_rule"]`` says how the dose rate was computed
        (:attr:`dose_rate_rule`).
        """
        import pandas as pd

        n = self.n_frames
        cols: dict[str, Any] = {"frame": np.arange(n)}
        cols["time_s"] = self.time_s if self.time_s is not None else np.full(n, np.nan)
        for name, val in (
            ("dose_e_per_A2", self.dose_e_per_A2),
            ("cumulative_dose_e_per_A2", self.cumulative_dose_e_per_A2),
            ("dose_rate_e_per_A2_s", self.dose_rate_e_per_A2_s),
            ("temperature_K", self.temperature_K),
            ("pressure_Pa", self.pressure_Pa),
        ):
            cols[name] = val if val is not None else np.full(n, np.nan)
        cols["gas"] = [self.gas] * n
        df = pd.DataFrame(cols)
        df.attrs["dose_rate_rule"] = self.dose_rate_rule
        return df

    def replace(self, **changes: Any) -> Series:
        """Return a copy with some fields replaced."""
        return dataclasses.replace(self, **changes)

    def to_hyperspy(self) -> Any:
        """Return a HyperSpy ``Signal2D`` (lazy when the data are dask)."""
        from perovstem._optional import import_optional

        hs = import_optional("hyperspy.api", extra="hyperspy")
        nav_axis = {
            "name": "frame",
            "size": self.n_frames,
            "scale": 1.0,
            "offset": 0.0,
            "units": "",
            "navigate": True,
        }
        t = self.time_s
        if t is not None and self.n_frames > 1 and np.allclose(np.diff(t), t[1] - t[0]):
            nav_axis.update(name="time", scale=float(t[1] - t[0]), offset=float(t[0]), units="s")
        axes = _hyperspy_axes(self.shape, self.pixel_size_A, [nav_axis])
        sig = hs.signals.Signal2D(self.data, axes=axes)
        if _is_lazy(self.data):
            sig = sig.as_lazy()
        for name in ("dose_e_per_A2", "temperature_K", "pressure_Pa", "time_s"):
            val = getattr(self, name)
            if val is not None:
                sig.metadata.set_item(f"perovstem.{name}", np.asarray(val))
        if self.gas:
            sig.metadata.set_item("perovstem.gas", self.gas)
        return sig


@dataclass(frozen=True, eq=False, repr=False)
class TiltSeries:
    """A single-axis tilt series.

    Parameters
    ----------
    data : (A, M, N) array_like
        Projections, one per tilt angle.
    angles_deg : (A,) array_like
        Tilt angles, degrees.
    pixel_size_A : float
        Pixel size, Å.
    tilt_axis_deg : float
        In-plane direction of the tilt axis, degrees counter-clockwise from the image x axis
        (0: the axis runs along x, so ``data[:, :, j]`` is the sinogram of slice ``j``).
    shifts_px : (A, 2) array_like, optional
        Known or applied ``(dy, dx)`` shifts per projection, pixels.
    metadata : dict
        Free-form metadata.
    """

    data: Any
    angles_deg: Any
    pixel_size_A: float
    tilt_axis_deg: float = 0.0
    shifts_px: Any = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", _as_array("data", self.data, 3))
        object.__setattr__(self, "pixel_size_A", _check_pixel_size(self.pixel_size_A))
        try:
            ang = np.asarray(self.angles_deg, dtype=float).ravel()
        except (TypeError, ValueError):
            raise ParameterError(
                f"`angles_deg` must be numbers (degrees), got {self.angles_deg!r}"
            ) from None
        n = self.data.shape[0]
        if ang.shape != (n,):
            raise ParameterError(
                f"`angles_deg` must have one angle per projection ({n}), got {ang.size}"
            )
        if not np.all(np.isfinite(ang)) or np.any(np.abs(ang) > 180):
            bad = np.flatnonzero(~(np.isfinite(ang) & (np.abs(ang) <= 180.0)))
            shown = ", ".join(f"[{i}] {ang[i]:g}" for i in bad[:5]) + (" …" * (bad.size > 5))
            raise ParameterError(
                f"`angles_deg` must be finite degrees in [-180, 180]: {bad.size} of {ang.size} "
                f"are not ({shown}; angles count from 0)"
            )
        uniq, counts = np.unique(np.round(ang, 6), return_counts=True)
        if np.any(counts > 1):
            raise ParameterError(f"`angles_deg` has duplicate angles: {uniq[counts > 1].tolist()}")
        object.__setattr__(self, "angles_deg", ang)
        try:
            axis = float(self.tilt_axis_deg)
        except (TypeError, ValueError):
            axis = float("nan")
        if not np.isfinite(axis):
            raise ParameterError(
                f"`tilt_axis_deg` must be a finite number of degrees, got {self.tilt_axis_deg!r}"
            )
        object.__setattr__(self, "tilt_axis_deg", axis)
        if self.shifts_px is not None:
            s = np.asarray(self.shifts_px, dtype=float)
            if s.shape != (n, 2):
                raise ParameterError(f"`shifts_px` must have shape ({n}, 2), got {s.shape}")
            object.__setattr__(self, "shifts_px", s)

    def __repr__(self) -> str:
        a = self.angles_deg
        return _repr(self, f", {a.min():.4g}…{a.max():.4g}°, axis {self.tilt_axis_deg:.3g}°")

    @property
    def n_angles(self) -> int:
        return int(self.data.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)

    def replace(self, **changes: Any) -> TiltSeries:
        """Return a copy with some fields replaced."""
        return dataclasses.replace(self, **changes)

    def to_hyperspy(self) -> Any:
        """Return a HyperSpy ``Signal2D`` with a tilt navigation axis."""
        from perovstem._optional import import_optional

        hs = import_optional("hyperspy.api", extra="hyperspy")
        nav = [
            {
                "name": "tilt",
                "size": self.n_angles,
                "scale": 1.0,
                "offset": 0.0,
                "units": "degrees",
                "navigate": True,
            }
        ]
        sig = hs.signals.Signal2D(
            self.data, axes=_hyperspy_axes(self.shape, self.pixel_size_A, nav)
        )
        sig.metadata.set_item("Tomography.tilts", self.angles_deg)
        sig.metadata.set_item("Tomography.tiltaxis", self.tilt_axis_deg)
        if self.shifts_px is not None:
            sig.metadata.set_item("Tomography.shifts", self.shifts_px)
        return sig


def from_hyperspy(signal: Any) -> Image | Series | TiltSeries:
    """Build an :class:`Image`, :class:`Series` or :class:`TiltSeries` from a HyperSpy signal."""
    from perovstem.io._units import length_to_A

    sig_axes = signal.axes_manager.signal_axes
    if len(sig_axes) != 2:
        raise DataError(f"expected a 2-D signal, got {len(sig_axes)} signal axes")
    ax = sig_axes[0]
    px = length_to_A(ax.scale, ax.units, what="hyperspy signal axis")
    data = signal.data
    md = signal.metadata.as_dictionary()
    tomo = md.get("Tomography", {})
    dose = md.get("Acquisition_instrument", {}).get("TEM", {}).get("dose_e_per_A2")
    if data.ndim == 2:
        return Image(data, px, dose_e_per_A2=dose, metadata=md)
    if data.ndim == 3 and "tilts" in tomo:
        return TiltSeries(
            data,
            tomo["tilts"],
            px,
            tilt_axis_deg=float(tomo.get("tiltaxis", 0.0)),
            shifts_px=tomo.get("shifts"),
            metadata=md,
        )
    if data.ndim == 3:
        own = md.get("perovstem", {})
        nav = signal.axes_manager.navigation_axes[0]
        time_s = own.get("time_s")
        if time_s is None and str(nav.units) == "s":
            time_s = nav.offset + nav.scale * np.arange(data.shape[0])
        return Series(
            data,
            px,
            time_s=time_s,
            dose_e_per_A2=own.get("dose_e_per_A2", dose),
            temperature_K=own.get("temperature_K"),
            pressure_Pa=own.get("pressure_Pa"),
            gas=own.get("gas"),
            metadata=md,
        )
    raise DataError(f"cannot map a signal of shape {data.shape} to Image/Series/TiltSeries")


def per_frame_exposures(
    raw: Any, n_frames: int, *, strict: bool, name: str = "metadata['exposure_time_s']"
) -> np.ndarray | None:
    """Recorded exposures as one value per frame, s; None when not recorded.

    ``raw`` is one value (every frame) or one per frame.  Values that are not all finite
    and positive (0 or NaN: not recorded) give None.  Values that are not numbers, or not
    one per frame, give None too unless ``strict``, which raises :class:`DataError` naming
    ``name`` and the value instead (which exposure belongs to which frame is unknown).
    """
    if raw is None:
        return None
    try:
        et = np.atleast_1d(np.asarray(raw, dtype=float)).ravel()
    except (TypeError, ValueError):
        if strict:
            raise DataError(f"{name} must be numbers (s), got {raw!r:.80}") from None
        return None
    if et.size == 0 or not (np.all(np.isfinite(et)) and np.all(et > 0)):
        return None  # not recorded (0 or NaN): the frame time must be given
    if et.size == 1:
        return np.full(n_frames, float(et[0]))
    if et.size != n_frames:
        if strict:
            raise DataError(
                f"{name} has {et.size} values for {n_frames} frames: which "
                "exposure belongs to which frame is unknown; give `frame_time_s` or `dwell_us`"
            )
        return None
    return et
