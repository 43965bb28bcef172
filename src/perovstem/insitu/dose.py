"""Electron-dose bookkeeping of in-situ series.

STEM dose per frame (notes/physics_simulation.md §5)::

    D_frame = I · t_dwell / (e · Δx²)                        [e⁻/Å²]
            = I · t_frame · (1 − f_flyback) / (e · A_FOV)

dose rate φ = D_frame / t_exposure (the frame's beam-on time: dwell × pixels, or the recorded
exposure) in e⁻/Å²/s, = I/(e·A_FOV) for a scanned frame; D_frame / Δt (frame interval) only
when the exposure is not known.  Cumulative dose
D(k) = D_0 + Σ_{j ≤ k} D_frame(j) (dose received by the end of frame k).  Every degradation
curve is plotted against the cumulative dose, not the frame index.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from perovstem._data import Series, per_frame_exposures
from perovstem._limits import check_current_pA
from perovstem._validation import check_positive, check_range, refuse_text_numbers
from perovstem.errors import DataError, ParameterError

__all__ = ["E_CHARGE_C", "frame_dose", "assign_dose", "dose_table"]

E_CHARGE_C = 1.602176634e-19


def frame_dose(
    current_pA: float,
    pixel_size_A: float,
    *,
    dwell_us: float | None = None,
    frame_time_s: float | None = None,
    shape: tuple[int, int] | None = None,
    flyback_fraction: float = 0.0,
) -> float:
    """Dose of one STEM frame, e⁻/Å².

    Parameters
    ----------
    current_pA : float
        Probe current, pA (> 0).
    pixel_size_A : float
        Scan step, Å.
    dwell_us : float, optional
        Dwell time per pixel, µs.  Preferred when known.
    frame_time_s : float, optional
        Frame time, s (used with ``shape`` when ``dwell_us`` is not given).
    shape : (int, int), optional
        Frame shape ``(M, N)`` in pixels (needed with ``frame_time_s``).
    flyback_fraction : float
        Fraction of ``frame_time_s`` spent in flyback with the beam blanked (0–0.9).

    Returns
    -------
    float
        Dose per frame, e⁻/Å².
    """
    refuse_text_numbers(locals())
    i_A = check_positive("current_pA", current_pA) * 1e-12
    check_current_pA(current_pA)  # the bound the CLI's --current-pA has (one definition)
    dx = check_positive("pixel_size_A", pixel_size_A)
    if dwell_us is not None:
        t = check_positive("dwell_us", dwell_us) * 1e-6
        return i_A * t / (E_CHARGE_C * dx * dx)
    if frame_time_s is None:
        raise ParameterError("give `dwell_us` or `frame_time_s` (with `shape`) to compute the dose")
    tf = check_positive("frame_time_s", frame_time_s)
    if shape is None or len(shape) != 2 or min(shape) < 1:
        raise ParameterError(f"`shape` (M, N) is needed with `frame_time_s`, got {shape!r}")
    fb = check_range("flyback_fraction", flyback_fraction, 0.0, 0.9)
    area = shape[0] * shape[1] * dx * dx
    return i_A * tf * (1.0 - fb) / (E_CHARGE_C * area)


def _times(
    series: Series, time_s: Any, frame_time_s: float | None, exposure_s: np.ndarray | None = None
) -> tuple[np.ndarray, str]:
    n = series.n_frames
    if time_s is not None:
        t = np.asarray(time_s, dtype=float).ravel()
        src = "given"
    elif series.time_s is not None:
        t = np.asarray(series.time_s, dtype=float)
        src = "series"
    elif exposure_s is not None and np.ptp(exposure_s) > 0:
        # unequal recorded exposures, no time stamps: frames taken back to back
        t = np.concatenate([[0.0], np.cumsum(exposure_s[:-1])])
        src = "exposure_time_s"
    elif frame_time_s is not None:
        t = np.arange(n) * check_positive("frame_time_s", frame_time_s)
        src = "frame_time_s"
    else:
        raise DataError(
            "the series has no time stamps: pass `time_s` (one per frame) or `frame_time_s`"
        )
    if t.shape != (n,):
        raise DataError(f"`time_s` must have one value per frame ({n}), got {t.size}")
    bad = np.flatnonzero(~np.isfinite(t))
    if bad.size:
        raise DataError(f"time stamps missing (NaN/inf) for frame(s) {bad.tolist()}")
    if n > 1:
        dt = np.diff(t)
        nonpos = np.flatnonzero(dt <= 0)
        if nonpos.size:
            raise DataError(
                f"time stamps must increase strictly: frame(s) {(nonpos + 1).tolist()} "
                f"do not come after the previous frame (time_s={t[nonpos + 1].tolist()})"
            )
    return t, src


def _recorded_exposures(series: Series) -> np.ndarray | None:
    """``metadata["exposure_time_s"]`` as one value per frame, s (None when not usable)."""
    return per_frame_exposures(series.metadata["exposure_time_s"], series.n_frames, strict=True)


def assign_dose(
    series: Series,
    *,
    current_pA: float | None = None,
    dwell_us: float | None = None,
    frame_time_s: float | None = None,
    flyback_fraction: float = 0.0,
    dose_e_per_A2: Any = None,
    time_s: Any = None,
    initial_dose_e_per_A2: float | None = None,
    allow_zero_dose: bool = False,
) -> Series:
    """Return a copy of ``series`` with per-frame dose and time stamps filled in.

    Dose comes, in order of preference, from ``dose_e_per_A2`` (scalar or per frame), from the
    probe current (``current_pA`` with ``dwell_us``, or with the frame time from
    ``frame_time_s`` or the ``exposure_time_s`` metadata) or from the series itself.
    Recorded exposures (``metadata["exposure_time_s"]``, one per frame, as the FEI and
    SerialEM readers give them) set each frame's own dose, D_k = I·t_k(1 − f)/(e·A): with
    unequal exposures the frames differ in dose, not in dose rate.  Without time stamps,
    frames of unequal recorded exposures are taken as back to back.

    The beam-on time of each frame (the dwell time over the frame's pixels, the frame time
    less flyback, or the recorded exposures) goes to ``metadata["dose"]["exposure_s"]``,
    and the dose rate of a frame is its dose over that exposure
    (``metadata["dose"]["dose_rate_rule"] = "dose / exposure"``); when none is known it is
    the dose over the frame interval (``"dose / frame interval"``).

    Parameters
    ----------
    series : Series
        The in-situ series (not modified).
    current_pA, dwell_us, frame_time_s, flyback_fraction
        Beam and scan settings, see :func:`frame_dose`.
    dose_e_per_A2 : float or (T,) array_like, optional
        Known dose per frame, e⁻/Å².
    time_s : (T,) array_like, optional
        Frame time stamps, s (else the series' or ``arange(T) * frame_time_s``).
    initial_dose_e_per_A2 : float, optional
        Dose received before frame 0 (e.g. during focusing), e⁻/Å².
    allow_zero_dose : bool
        Accept frames of zero dose (beam blanked); otherwise zero dose is an error because it
        usually means "not recorded" (SerialEM writes ``ExposureDose = 0``).

    Returns
    -------
    Series
        With ``time_s``, ``dose_e_per_A2`` set and ``metadata['dose']`` describing the source.

    Raises
    ------
    DataError
        Missing or non-increasing time stamps, missing dose information, zero dose.
    ParameterError
        Non-positive current, dwell or frame time.
    """
    refuse_text_numbers(locals())
    if not isinstance(series, Series):
        raise ParameterError(f"`series` must be a perovstem Series, got {type(series).__name__}")
    n = series.n_frames
    # the recorded exposure of each frame (s): FEI/SerialEM headers (see perovstem.io)
    et = None
    if frame_time_s is None and dwell_us is None and "exposure_time_s" in series.metadata:
        et = _recorded_exposures(series)
        if et is not None:
            frame_time_s = float(np.median(et))
    fb = check_range("flyback_fraction", flyback_fraction, 0.0, 0.9)
    info: dict[str, Any] = {}
    if dose_e_per_A2 is not None:
        d = np.asarray(dose_e_per_A2, dtype=float)
        d = np.full(n, float(d)) if d.ndim == 0 else d.ravel()
        info["source"] = "given"
    elif current_pA is not None:
        # D ∝ each frame's own exposure: I·t_k(1 − f)/(e·A) (the same for every frame only
        # when the exposures are)
        d1 = frame_dose(
            current_pA,
            series.pixel_size_A,
            dwell_us=dwell_us,
            frame_time_s=frame_time_s,
            shape=series.shape[1:],
            flyback_fraction=flyback_fraction,
        )
        d = np.full(n, d1) if et is None else d1 * (et / frame_time_s)
        info.update(
            source="current",
            current_pA=float(current_pA),
            dwell_us=None if dwell_us is None else float(dwell_us),
            frame_time_s=None if frame_time_s is None else float(frame_time_s),
            flyback_fraction=float(flyback_fraction),
        )
        if et is not None:
            info["exposure_time_s"] = et.tolist()
    elif series.dose_e_per_A2 is not None:
        d = np.asarray(series.dose_e_per_A2, dtype=float)
        info["source"] = "series"
    else:
        raise DataError(
            "no dose information: pass `dose_e_per_A2`, or `current_pA` with `dwell_us` "
            "or `frame_time_s`"
        )
    if d.shape != (n,):
        raise DataError(f"`dose_e_per_A2` must have one value per frame ({n}), got {d.size}")
    bad = np.flatnonzero(~np.isfinite(d) | (d < 0))
    if bad.size:
        what = {"given": "`dose_e_per_A2`", "series": "the series' dose"}.get(
            info["source"], "dose"
        )
        raise DataError(
            f"{what} is negative or not finite for frame(s) {bad.tolist()[:20]}, "
            f"e.g. {d[bad[0]]:g} e⁻/Å²"
        )
    zero = np.flatnonzero(d == 0)
    if zero.size and not allow_zero_dose:
        raise DataError(
            f"dose is zero for frame(s) {zero.tolist()[:20]} (not recorded?); give the dose or "
            "the current, or pass allow_zero_dose=True for blanked frames"
        )
    if np.all(d == 0):
        raise DataError("dose is zero for every frame: nothing to plot against dose")
    # beam-on time of each frame, for the dose rate (Series.dose_rate_e_per_A2_s): the
    # dwell time over the frame's pixels, the frame time less flyback, or the recorded
    # exposures; None (not known: dose over the frame interval) otherwise
    m, nn = series.shape[1:]
    if info["source"] == "series" and dwell_us is None and frame_time_s is None:
        exposure = series.exposure_s  # the reader's record (exposures, dwell time)
    elif dwell_us is not None:
        exposure = np.full(n, check_positive("dwell_us", dwell_us) * 1e-6 * m * nn)
    elif et is not None:
        exposure = et * (1.0 - fb)
    elif frame_time_s is not None:
        exposure = np.full(n, check_positive("frame_time_s", frame_time_s) * (1.0 - fb))
    else:
        exposure = None
    info["exposure_s"] = None if exposure is None else exposure.tolist()
    # time stamps after the dose: a wrong dose is the first thing to report
    t, info["time_source"] = _times(series, time_s, frame_time_s, et)
    info["dose_rate_rule"] = "dose / exposure" if exposure is not None else "dose / frame interval"
    d0 = series.initial_dose_e_per_A2 if initial_dose_e_per_A2 is None else initial_dose_e_per_A2
    d0 = check_positive("initial_dose_e_per_A2", d0, allow_zero=True)
    md = dict(series.metadata)
    md["dose"] = info
    return series.replace(time_s=t, dose_e_per_A2=d, initial_dose_e_per_A2=d0, metadata=md)


def dose_table(series: Series) -> pd.DataFrame:
    """Per-frame bookkeeping table of a series with dose and time stamps.

    Returns
    -------
    DataFrame
        ``frame, time_s, dose_e_per_A2, cumulative_dose_e_per_A2, dose_rate_e_per_A2_s,
        temperature_K, pressure_Pa, gas``; ``attrs`` holds ``pixel_size_A``, the dose source
        and ``dose_rate_rule``: the dose rate is a frame's dose over its exposure (beam-on
        time) when known, else over the frame interval (the last frame: the previous
        interval); see :attr:`perovstem.Series.dose_rate_e_per_A2_s`.

    Raises
    ------
    DataError
        When the series has no dose or time stamps (call :func:`assign_dose` first).
    """
    refuse_text_numbers(locals())
    if not isinstance(series, Series):
        raise ParameterError(f"`series` must be a perovstem Series, got {type(series).__name__}")
    if series.dose_e_per_A2 is None:
        raise DataError("the series has no dose: call perovstem.insitu.assign_dose first")
    if series.time_s is None:
        raise DataError("the series has no time stamps: call perovstem.insitu.assign_dose first")
    df = series.frames_table()  # its attrs["dose_rate_rule"] says how the rate was computed
    df.attrs["pixel_size_A"] = series.pixel_size_A
    df.attrs["dose"] = dict(series.metadata.get("dose", {}))
    return df
