"""In-situ conditions (temperature, pressure, ...) interpolated from a holder log onto frames."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from perovstem._data import Series
from perovstem._validation import refuse_text_numbers
from perovstem.errors import DataError, ParameterError

__all__ = ["interpolate_conditions", "attach_conditions", "time_offset_from_clocks"]


def interpolate_conditions(
    log: pd.DataFrame,
    time_s: Any,
    *,
    time_offset_s: float = 0.0,
    frame_time_s: float | None = None,
    tolerance_s: float = 1.0,
) -> pd.DataFrame:
    """Condition channels of a holder log at the frames' times.

    Parameters
    ----------
    log : DataFrame
        ``time_s`` and channels (from :func:`perovstem.io.holder_logs.read_holder_log`).
    time_s : (T,) array_like
        Frame start times, s, on the series clock.
    time_offset_s : float
        Log time of the series' ``t = 0`` (log clock − series clock), s.
    frame_time_s : float, optional
        When given, each channel is averaged over ``[t, t + frame_time_s]`` (trapezoid on the
        log samples plus the interpolated end points), else sampled at ``t + frame/2`` = t.
    tolerance_s : float
        Frames may lie at most this far outside the log's time span (no extrapolation).

    Returns
    -------
    DataFrame
        ``frame, time_s`` and one column per channel.

    Raises
    ------
    DataError
        Missing time column, NaN time stamps, or frames outside the log.
    """
    refuse_text_numbers(locals())
    if not isinstance(log, pd.DataFrame) or "time_s" not in log:
        raise DataError("`log` must be a DataFrame with a `time_s` column")
    t = np.asarray(time_s, float).ravel()
    if t.size == 0 or np.any(~np.isfinite(t)):
        raise DataError("frame time stamps are missing (NaN) or empty")
    lt = log["time_s"].to_numpy(float)
    if np.any(~np.isfinite(lt)) or np.any(np.diff(lt) < 0):
        raise DataError("log `time_s` must be finite and sorted")
    tq = t + float(time_offset_s)
    tend = tq + (float(frame_time_s) if frame_time_s else 0.0)
    out_lo = np.flatnonzero(tq < lt[0] - tolerance_s)
    out_hi = np.flatnonzero(tend > lt[-1] + tolerance_s)
    bad = np.union1d(out_lo, out_hi)
    if bad.size:
        raise DataError(
            f"frame(s) {bad.tolist()[:10]} lie outside the log: it covers {lt[0]:.1f}–"
            f"{lt[-1]:.1f} s of its clock, the frames {tq.min():.1f}–{tend.max():.1f} s with "
            f"`time_offset_s` = {time_offset_s:g} (the log time of the first frame's t = 0); "
            "not extrapolating"
        )
    res = {"frame": np.arange(t.size), "time_s": t}
    for c in log.columns:
        if c == "time_s" or not np.issubdtype(log[c].dtype, np.number):
            continue
        v = log[c].to_numpy(float)
        ok = np.isfinite(v)
        if ok.sum() < 1:
            continue
        _note_missing_readings(log, c, lt, ok, tq, tend)
        if frame_time_s:
            vals = []
            for a, b in zip(tq, tend, strict=True):
                inside = (lt > a) & (lt < b) & ok
                xs = np.r_[a, lt[inside], b]
                ys = np.interp(xs, lt[ok], v[ok])
                vals.append(np.trapezoid(ys, xs) / (b - a))
            res[c] = np.asarray(vals)
        else:
            res[c] = np.interp(tq, lt[ok], v[ok])
    return pd.DataFrame(res)


def _note_missing_readings(
    log: pd.DataFrame,
    column: str,
    lt: np.ndarray,
    ok: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
) -> None:
    """Warn when frames get a channel's value interpolated across missing readings.

    A missing reading (an empty, ``n/a``, ``NA`` or ``NaN`` cell of a CSV log) is skipped:
    the frames whose time span ``[start, end]`` (log clock, s) overlaps the gap between the
    readings around it get a value interpolated from those; the warning names the log, the
    column, the rows and the frames.
    """
    miss = np.flatnonzero(~ok)
    if miss.size == 0:
        return
    t_ok = lt[ok]
    # the readings around each missing one (the ends: the nearest reading, held constant)
    i = np.searchsorted(t_ok, lt[miss])
    lo = t_ok[np.clip(i - 1, 0, t_ok.size - 1)]
    hi = t_ok[np.clip(i, 0, t_ok.size - 1)]
    lo = np.where(i == 0, -np.inf, lo)
    hi = np.where(i == t_ok.size, np.inf, hi)
    hit = (start[:, None] < hi[None, :]) & (end[:, None] > lo[None, :])
    frames = np.flatnonzero(hit.any(axis=1))
    if frames.size == 0:
        return
    import warnings

    src = log.attrs.get("source")
    where = f"holder log {str(src)!r}" if src else "the holder log"
    shown = ", ".join(map(str, frames[:10].tolist())) + (" ..." if frames.size > 10 else "")
    warnings.warn(
        f"{where}: column {column!r} has {miss.size} missing reading(s) (empty, n/a or NaN "
        f"cells; data rows {miss[:5].tolist()}, at log times "
        f"{', '.join(f'{x:g}' for x in lt[miss][:5])} s); {frames.size} frame(s) "
        f"({shown}) get a value interpolated from the readings around them",
        UserWarning,
        stacklevel=3,
    )


def attach_conditions(series: Series, log: pd.DataFrame, **kw: Any) -> Series:
    """Copy of ``series`` with ``temperature_K`` / ``pressure_Pa`` from a holder log.

    Other channels go to ``metadata['conditions']``.  See :func:`interpolate_conditions`;
    its ``frame_time_s`` defaults to the frame time recorded by :func:`assign_dose` (or
    the median beam-on time it found), failing that ``metadata['frame_time_s']`` (each
    channel averaged over the frame), else the channels are sampled at the frame start.
    """
    refuse_text_numbers(locals())
    if not isinstance(series, Series):
        raise ParameterError(f"`series` must be a perovstem Series, got {type(series).__name__}")
    if series.time_s is None:
        raise DataError("the series has no time stamps: call assign_dose(time_s=...) first")
    # average each channel over the frame's exposure when its length is known (from
    # assign_dose, else a file's own frame time, e.g. the simulator's or an MRC FEI
    # header's): sampled at the frame start, a ramp's temperature lagged by half a frame
    # (5 K at 10 K/s and 1 s frames)
    dose = series.metadata.get("dose", {})
    fr = dose.get("frame_time_s")
    if fr is None and dose.get("exposure_s"):
        # the beam-on time assign_dose found (the frame time less flyback, the dwell time
        # over the frame's pixels, or the recorded exposures)
        fr = float(np.median(np.asarray(dose["exposure_s"], float)))
    if fr is None:
        fr = series.metadata.get("frame_time_s")
    fr = float(fr) if fr is not None and np.isfinite(float(fr)) and float(fr) > 0 else None
    kw.setdefault("frame_time_s", fr)
    c = interpolate_conditions(log, series.time_s, **kw)
    changes: dict[str, Any] = {}
    for name in ("temperature_K", "pressure_Pa"):
        if name in c:
            changes[name] = c[name].to_numpy()
    md = dict(series.metadata)
    md["conditions"] = {
        k: c[k].tolist() for k in c.columns if k not in ("frame", "time_s", *changes)
    }
    md["conditions_source"] = log.attrs.get("source")
    return series.replace(metadata=md, **changes)


def _zone_hours(zone: Any) -> float | None:
    """Hours east of UTC of a zone written ``UTC+01:00`` / ``UTC-04:30`` (else None)."""
    import re

    m = re.fullmatch(r"UTC([+-])(\d{2}):(\d{2})", str(zone or ""))
    if not m:
        return None
    return (1 if m.group(1) == "+" else -1) * (int(m.group(2)) + int(m.group(3)) / 60)


def time_offset_from_clocks(
    series: Series, log: pd.DataFrame, *, log_utc_offset_h: float | None = None
) -> tuple[float | None, str]:
    """``time_offset_s`` of :func:`attach_conditions` from the two clocks, where known.

    The series' file records when its first frame was acquired
    (``metadata['acquisition_start_utc']``: Velox, DigitalMicrograph) and the holder log
    the local clock time of its ``time_s = 0`` (``attrs['t0_time']``,
    :func:`perovstem.io.holder_logs.read_holder_log`).  No holder log records its time
    zone: it is ``log_utc_offset_h`` when given, else the acquisition PC's zone where the
    file records it (``metadata['acquisition_time_zone']``, DM files: the holder PC sits
    in the same laboratory).  The two PCs' clocks may still differ by their own error.

    Parameters
    ----------
    series : Series
        With ``time_s``; its ``time_s[0]`` is the first frame's acquisition start.
    log : DataFrame
        From :func:`perovstem.io.holder_logs.read_holder_log`.
    log_utc_offset_h : float, optional
        UTC offset of the holder PC's clock, hours.

    Returns
    -------
    offset : float or None
        Log time of the series' ``t = 0``, s; None when a clock or the zone is not known.
    text : str
        How the offset was found, or what is missing.
    """
    from perovstem.io.holder_logs import log_time_offset_s

    refuse_text_numbers(locals())
    md = series.metadata if isinstance(series, Series) else {}
    start = md.get("acquisition_start_utc")
    t0 = log.attrs.get("t0_time") if isinstance(log, pd.DataFrame) else None
    if not start or not t0:
        missing = " and ".join(
            w
            for w, ok in (("the series' acquisition time", start), ("the log's start time", t0))
            if not ok
        )
        return None, f"{missing} not recorded"
    t0 = pd.Timestamp(t0).round("ms").isoformat()  # shown: the float clock's last digits
    zone = md.get("acquisition_time_zone")
    hours = log_utc_offset_h if log_utc_offset_h is not None else _zone_hours(zone)
    if hours is None:
        return None, (
            f"the holder PC's time zone is not known (the series was acquired at {start} "
            f"UTC, the log's time 0 is {t0} on the holder PC's local clock)"
        )
    first = 0.0 if series.time_s is None else float(np.asarray(series.time_s, float)[0])
    off = log_time_offset_s(log, str(start), log_utc_offset_h=float(hours)) - first
    whose = "given" if log_utc_offset_h is not None else "the acquisition PC's"
    return off, (
        f"first frame acquired {start} UTC, log time 0 at {t0} on a clock at UTC"
        f"{float(hours):+g} h ({whose})"
    )
