"""In-situ holder logs (heating / gas / liquid cells) as a condition table.

DENSsolutions (``.dat`` Impulse/Wildfire logs, ``.csv`` Impulse exports) and Protochips
(Fusion/Atmosphere ``.csv``) logs are read through RosettaSciIO's ``dens``, ``impulse`` and
``protochips`` plugins (the recorded time stamps of Protochips and Impulse logs replace the
uniform axes those readers extrapolate from the mean step); a plain CSV with a time column and
condition columns is read directly.  The result is one row per log sample:

``time_s`` (seconds from the log start), ``temperature_K``, ``pressure_Pa`` and any other
numeric channel, with the log start time (ISO string, if known) in ``attrs['start_time']``
and the clock time of ``time_s = 0`` (ISO, local time of the holder PC: no log records a
time zone) in ``attrs['t0_time']``; the two differ by the first sample's delay.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from perovstem.errors import FileFormatError

__all__ = ["read_holder_log", "conditions_from_signals", "log_time_offset_s"]

_PRESSURE_TO_PA = {
    "pa": 1.0,
    "mbar": 100.0,
    "bar": 1e5,
    "torr": 133.322368,
    "mtorr": 0.133322368,
    "mmhg": 133.322387,
    "kpa": 1e3,
    "hpa": 100.0,
    "atm": 101325.0,
    "psi": 6894.757293,
}
# (scale, offset) to K; units lower-cased, spaces dropped, a leading °/deg/degree(s)
# dropped ("Degrees C", "°C", "degC", "C")
_TEMPERATURE_TO_K = {
    "k": (1.0, 0.0),
    "kelvin": (1.0, 0.0),
    "c": (1.0, 273.15),
    "celsius": (1.0, 273.15),
    "f": (5.0 / 9.0, 273.15 - 32.0 * 5.0 / 9.0),
    "fahrenheit": (5.0 / 9.0, 273.15 - 32.0 * 5.0 / 9.0),
}


class _UnitError(ValueError):
    """A temperature or pressure channel in a unit perovstem does not convert."""


_PRIMARY_WORDS = {"holder", "sample", "chip", "cell", "measured", "meas", "actual", "heater"}


def _channel_name(title: str, units: str) -> tuple[str, float, float]:
    """Column name and a linear conversion (scale, offset) for a channel.

    Temperature and pressure channels are converted to K and Pa.  Only the channel of the
    sample itself ("Temperature", "Holder Temperature", "Pressure", "Holder Pressure", ...)
    is called ``temperature_K`` / ``pressure_Pa``; others keep their label as a prefix
    (e.g. the gas-supply "Tank1 Pressure" → ``tank1_pressure_Pa``), so that a supply-tank
    reading is never taken for the pressure at the sample.
    """
    t = title.lower()
    u = re.sub(r"\s+", "", (units or "").lower().replace("°", "deg").replace("º", "deg"))
    words = set(re.findall(r"[a-z0-9]+", t))
    slug = re.sub(r"[^0-9a-zA-Z]+", "_", title).strip("_").lower() or "channel"
    if "temp" in t:
        primary = not (words - _PRIMARY_WORDS - {"temperature", "temp", "tmeas"})
        name = "temperature_K" if primary else re.sub(r"_?temp(erature)?$", "", slug) + "_T_K"
        if not u:
            return name, 1.0, 273.15  # °C by default in holder logs
        base = re.sub(r"^(degrees|degree|deg)_?", "", u)
        if base not in _TEMPERATURE_TO_K:
            # (°F read as °C: 212 °F became 485 K)
            raise _UnitError(f"temperature unit {units!r} is not K, °C or °F")
        return name, *_TEMPERATURE_TO_K[base]
    if "press" in t:
        primary = not (words - _PRIMARY_WORDS - {"pressure", "press"})
        name = "pressure_Pa" if primary else f"{slug}_Pa"
        if not u:
            return name, 1.0, 0.0
        if u not in _PRESSURE_TO_PA:
            # (1 atm read as 1 Pa)
            raise _UnitError(
                f"pressure unit {units!r} is none of Pa, kPa, hPa, mbar, bar, Torr, mTorr, "
                "mmHg, atm, psi"
            )
        return name, _PRESSURE_TO_PA[u], 0.0
    return slug + (f"_{re.sub(r'[^0-9a-zA-Z]+', '', u)}" if u else ""), 1.0, 0.0


def conditions_from_signals(signals: list[dict[str, Any]]) -> pd.DataFrame:
    """Merge RosettaSciIO 1-D signal dicts (one per channel) into a condition table.

    Each dict needs ``data`` (1-D), ``axes`` (one time axis with ``scale``/``offset`` or an
    ``axis`` array, units s/min/h) and a title in ``metadata['General']['title']`` (used
    first, it names the channel, e.g. "Holder Pressure (Torr)") or
    ``metadata['Signal']['quantity']`` (e.g. ``"Temperature (°C)"``).  A Protochips log's
    recorded time stamps (``original_metadata['Protochips_header']['Time axis']``) replace
    the uniform axis that the reader extrapolates from the mean step.

    ``time_s`` counts from the earliest sample of the log; that sample's time on the log's
    own clock (e.g. seconds since midnight in DENSsolutions logs) is ``attrs['log_t0_s']``,
    and the start date/time (ISO) is ``attrs['start_time']`` when the log records it.
    """
    cols: dict[str, pd.Series] = {}
    start = None
    for sig in signals:
        data = np.asarray(sig.get("data"), float).ravel()
        axes = sig.get("axes") or [{}]
        ax = axes[0]
        om = (sig.get("original_metadata") or {}).get("Protochips_header", {}) or {}
        rec = om.get("Time axis") if isinstance(om, dict) else None
        if rec is not None and np.size(rec.get("value", [])) == data.size:
            t = np.asarray(rec["value"], float)
            tu = {"milliseconds": "ms", "seconds": "s"}.get(str(rec.get("units", "")).lower(), "s")
        elif "axis" in ax and ax["axis"] is not None:
            t = np.asarray(ax["axis"], float)
            tu = str(ax.get("units", "s")).lower()
        else:
            t = ax.get("offset", 0.0) + ax.get("scale", 1.0) * np.arange(data.size)
            tu = str(ax.get("units", "s")).lower()
        t = t * {"min": 60.0, "h": 3600.0, "ms": 1e-3}.get(tu, 1.0)
        md = sig.get("metadata", {}) or {}
        title = (
            md.get("General", {}).get("title") or md.get("Signal", {}).get("quantity") or "channel"
        )
        m = re.match(r"\s*(.*?)\s*\((.*)\)\s*$", str(title))
        label, units = (m.group(1), m.group(2)) if m else (str(title), "")
        try:
            name, scale, off = _channel_name(label, units)
        except _UnitError as exc:
            raise FileFormatError(f"channel {title!r}: {exc}") from None
        if t.size != data.size:
            raise FileFormatError(f"channel {title!r}: {t.size} times but {data.size} values")
        if name in cols:  # keep the first channel under the standard name
            name = f"{re.sub(r'[^0-9a-zA-Z]+', '_', label).strip('_').lower()}_{len(cols)}"
        cols[name] = pd.Series(data * scale + off, index=t)
        gen = md.get("General", {})
        if start is None and gen.get("date"):
            start = str(gen["date"]) + (f"T{gen['time']}" if gen.get("time") else "")
    if not cols:
        raise FileFormatError("the log holds no channel")
    df = pd.concat(cols, axis=1).sort_index()
    t0 = float(df.index.min())
    df.index = df.index - t0
    df.index.name = "time_s"
    df = df.reset_index()
    df.attrs["start_time"] = start
    df.attrs["log_t0_s"] = t0
    return df


@contextlib.contextmanager
def _quiet_rsciio():
    """Silence RosettaSciIO's warnings about the extrapolated Protochips time step (the
    recorded time stamps are used instead, see :func:`conditions_from_signals`)."""
    log = logging.getLogger("rsciio")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def _impulse_recorded_times(path: Path, signals: list[dict[str, Any]]) -> None:
    """Put the recorded "Experiment time" column of an Impulse log on every channel.

    RosettaSciIO's Impulse reader replaces the recorded times by a uniform axis with the mean
    step; logged intervals are not uniform, so the recorded times are restored here.
    """
    try:
        raw = pd.read_csv(path, usecols=["Experiment time"])
    except (ValueError, OSError, UnicodeDecodeError):
        return
    t = pd.to_numeric(raw["Experiment time"], errors="coerce").to_numpy(float)
    if not np.all(np.isfinite(t)):
        return
    for sig in signals:
        if np.size(sig.get("data")) == t.size and sig.get("axes"):
            sig["axes"] = [{**sig["axes"][0], "axis": t, "units": "s"}]


_TIME_UNITS_S = {
    "": 1.0, "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "ms": 1e-3, "msec": 1e-3, "millisecond": 1e-3, "milliseconds": 1e-3,
    "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
}  # fmt: skip
_TIME_COLUMN = re.compile(
    r"^(?:time|t|experiment[ _]time|elapsed(?:[ _]time)?)\s*[_(\[]?\s*([a-z]*)\s*[)\]]?$"
)


def _absolute_start(df: pd.DataFrame, plugin: str) -> None:
    """Put the clock time of ``time_s = 0`` in ``attrs['t0_time']`` and make
    ``attrs['start_time']`` ISO.

    The log clocks differ: a DENSsolutions DigiHeater log counts seconds since midnight of
    its header date (the header's hh:mm is *not* the clock's zero), Protochips and Impulse
    logs count from the start time in their header.  Impulse writes the date day first
    (``06-08-2021`` is 6 August, as RosettaSciIO's own reader parses it).  No vendor log
    carries a time zone: the times are the holder PC's local time.
    """
    start = df.attrs.get("start_time")
    if not start:
        return
    date, _, clock = str(start).partition("T")
    m = re.fullmatch(r"(\d{2})-(\d{2})-(\d{4})", date)
    if m:
        date = f"{m.group(3)}-{m.group(2)}-{m.group(1)}"
    try:
        stamp = pd.Timestamp(f"{date}T{clock}" if clock else date)
    except (ValueError, TypeError):
        return
    df.attrs["start_time"] = stamp.isoformat()
    zero = stamp.normalize() if plugin == "dens" else stamp
    t0 = zero + pd.Timedelta(seconds=float(df.attrs.get("log_t0_s") or 0.0))
    df.attrs["t0_time"] = t0.isoformat()


def _time_column(raw: pd.DataFrame) -> tuple[Any, float]:
    """The time column of a plain CSV log and its factor to seconds.

    The unit comes from the column name (``time_ms``, ``Time (min)``, ``Experiment time``
    is Impulse's seconds) or, for a bare ``Time``, from a Protochips-style note
    ``Time units = Milliseconds`` in the file (Protochips logs count in ms); otherwise s.
    """
    for c in raw.columns:
        m = _TIME_COLUMN.match(str(c).strip().lower())
        if m is None or m.group(1) not in _TIME_UNITS_S:
            continue
        scale = _TIME_UNITS_S[m.group(1)]
        if not m.group(1):
            for col in raw.columns:
                if pd.api.types.is_numeric_dtype(raw[col]):
                    continue
                note = (
                    raw[col]
                    .astype(str)
                    .str.extract(r"(?i)(?:time|test) units\s*=\s*([a-z]+)", expand=False)
                )
                unit = note.dropna().str.lower()
                if len(unit) and unit.iloc[0] in _TIME_UNITS_S:
                    scale = _TIME_UNITS_S[unit.iloc[0]]
                    break
        return c, scale
    return None, 1.0


def _blank(path: Path) -> bool:
    """True when the file holds nothing but whitespace (read until the first other byte)."""
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 16):
            if chunk.strip():
                return False
    return True


def read_holder_log(path: str | os.PathLike) -> pd.DataFrame:
    """Read a DENSsolutions / Protochips holder log or a plain CSV into a condition table.

    A plain CSV needs a time column: ``time_s``/``time``/``t`` (s), ``time_ms``, ``Time (min)``
    and the like, or Impulse's ``Experiment time`` (s, counted from the first sample as
    through RosettaSciIO); a bare ``Time`` in a Protochips-style file whose notes say
    ``Time units = Milliseconds`` is in ms.

    Parameters
    ----------
    path : path-like
        Log file.

    Returns
    -------
    DataFrame
        ``time_s`` and the channels (``temperature_K``, ``pressure_Pa``, ...).

    Raises
    ------
    FileFormatError
        Missing file, or no reader understands it (the message lists what was tried).
    """
    p = Path(path)
    if not p.is_file():
        raise FileFormatError(f"holder log {str(p)!r} does not exist")
    if _blank(p):  # RosettaSciIO's DENS reader loops forever on a blank file
        raise FileFormatError(
            f"holder log {str(p)!r} is empty ({p.stat().st_size} bytes, no text but blanks)"
        )
    from perovstem.io.read import _content_family

    fam = _content_family(p)
    if fam is not None and fam != "text":  # every holder log is text (CSV or key = value)
        # a picture listed one UnicodeDecodeError per reader tried
        article = "an" if fam.startswith(("HDF5", "MRC")) else "a"
        kind = fam if fam.endswith(("picture", "document")) else f"{fam} file"
        raise FileFormatError(
            f"holder log {str(p)!r}: its content is {article} {kind}, not a holder log (a "
            "text file: the DENSsolutions, Protochips or Impulse log, or a CSV with a time "
            "column)"
        )
    errors = []
    for plugin in ("protochips", "dens", "impulse"):
        try:
            mod = __import__(f"rsciio.{plugin}", fromlist=["file_reader"])
            with _quiet_rsciio():
                sigs = mod.file_reader(str(p))
            if plugin == "impulse":
                _impulse_recorded_times(p, sigs)
            df = conditions_from_signals(sigs)
            df.attrs["source"] = str(p)
            df.attrs["reader"] = f"rsciio.{plugin}"
            _absolute_start(df, plugin)
            return df
        except Exception as exc:  # noqa: BLE001 - try the next reader
            errors.append(f"{plugin}: {type(exc).__name__}")
    try:
        # comma first: the delimiter sniffer is misled by cells such as Impulse's "0; 0; 0"
        # and then shifts every column by one (the time read from the next channel)
        raw = pd.read_csv(p, comment="#", index_col=False)
        if raw.shape[1] < 2:
            raw = pd.read_csv(p, sep=None, engine="python", comment="#", index_col=False)
    except Exception as exc:  # noqa: BLE001
        raise FileFormatError(
            f"cannot read holder log {str(p)!r} ({'; '.join(errors)}; csv: {exc})"
        ) from None
    tcol, t_scale = _time_column(raw)
    if tcol is None:
        raise FileFormatError(
            f"holder log {str(p)!r}: not a vendor log ({'; '.join(errors)}) and, as CSV, no "
            f"time column (time_s/time/time_ms/'Experiment time'/...) among {list(raw.columns)}"
        )
    if len(raw) == 0:
        raise FileFormatError(f"holder log {str(p)!r}: has a header but no data rows")
    out = pd.DataFrame({"time_s": pd.to_numeric(raw[tcol], errors="coerce") * t_scale})
    if out["time_s"].isna().any():
        bad = out.index[out["time_s"].isna()].tolist()[:5]
        raise FileFormatError(
            f"holder log {str(p)!r}: not a vendor log ({'; '.join(errors)}) and, as CSV, "
            f"non-numeric time stamps in data row(s) {bad}"
        )
    # a logger's clock reset (two runs in one file) or rows out of order: sorting them
    # would interleave two experiments into temperatures that never happened
    step = np.diff(out["time_s"].to_numpy(float))
    if (step <= 0).any():
        i = int(np.flatnonzero(step <= 0)[0]) + 1
        t_prev, t_i = out["time_s"].iloc[i - 1], out["time_s"].iloc[i]
        raise FileFormatError(
            f"holder log {str(p)!r}: time {'repeats' if t_i == t_prev else 'goes back'} at "
            f"data row {i} (rows count from 0): {t_prev:g} s then {t_i:g} s in column "
            f"{str(tcol)!r}; the log must hold one run with increasing times (split a log "
            "whose clock was reset, and give the part of this series)"
        )
    used: dict[str, str] = {}
    for c in raw.columns:
        if c == tcol:
            continue
        s = pd.to_numeric(raw[c], errors="coerce")
        cname = str(c).strip()
        # "Temperature (Degrees C)", "pressure (mTorr)", "temperature_C", "Pressure Pa"
        m = re.match(r"(.*?)\s*\(([^)]*)\)\s*$", cname) or re.match(
            r"(.*?)[_ ]([A-Za-z°]+)$", cname
        )
        label, units = (m.group(1), m.group(2)) if m else (cname, "")
        try:
            try:
                name, scale, off = _channel_name(label, units)
            except _UnitError:
                if "(" in cname:
                    raise
                # a last word that is no unit ("Temperature Measured"): part of the name
                label, units = cname, ""
                name, scale, off = _channel_name(label, units)
        except _UnitError as exc:
            raise FileFormatError(
                f"holder log {str(p)!r}: column {cname!r}: {exc}; convert the column or name "
                "its unit (temperature_K, temperature_C, temperature_F, pressure_Pa, "
                "pressure_mbar, pressure_Torr, ...)"
            ) from None
        if not units and name in ("temperature_K", "pressure_Pa"):
            # (a bare "temperature" of 300 read as 573 K, a bare "pressure" as Pa, silently)
            assumed = "°C" if name == "temperature_K" else "Pa"
            warnings.warn(
                f"holder log {str(p)!r}: column {cname!r} names no unit: taken as {assumed}; "
                "name the unit in the column (e.g. temperature_K, temperature_C, "
                "pressure_Pa, pressure_mbar)",
                UserWarning,
                stacklevel=2,
            )
        # text in a channel of numbers ("300 K", "ERR", a decimal comma) became NaN and
        # the sample was dropped, or (every cell text) the whole channel: the series got
        # no temperature without a word.  A missing reading is an empty cell or NaN/NA.
        text = raw[c].notna().to_numpy() & s.isna().to_numpy()
        channel = name.endswith(("_K", "_Pa"))
        if text.any() and (s.notna().any() or channel):
            rows = np.flatnonzero(text)
            vals = list(dict.fromkeys(str(v) for v in raw[c].to_numpy()[rows]))[:3]
            raise FileFormatError(
                f"holder log {str(p)!r}: not a vendor log ({'; '.join(errors)}) and, as CSV, "
                f"column {cname!r} holds text where numbers are "
                f"expected ({', '.join(map(repr, vals))} in {rows.size} of {len(raw)} data "
                f"row(s), first {rows[:5].tolist()}; rows count from 0); write numbers only, "
                "the unit in the column name (e.g. temperature_C), a missing reading as an "
                "empty cell"
            )
        if s.notna().sum() == 0:
            continue
        if name in out:
            # two columns of one quantity (temperature_C and temperature_K): the first
            # keeps the standard name, as for the vendor logs, and the choice is said
            first = next((c0 for c0, n0 in used.items() if n0 == name), str(tcol))
            # named by its quantity and converted unit: 'temperature_C_2' held kelvins
            base, unit = name.rsplit("_", 1)
            other = f"{base}_{len(used) + 1}_{unit}"
            warnings.warn(
                f"holder log {str(p)!r}: columns {first!r} and {cname!r} both give {name}; "
                f"{first!r} is used (the other is kept as {other!r})",
                UserWarning,
                stacklevel=2,
            )
            name = other
        used[cname] = name
        out[name] = s * scale + off
    if str(tcol).strip().lower() == "experiment time":
        # an Impulse export without its metadata log: count from the first sample, as the
        # rsciio.impulse path does, so that one time_offset_s fits both ways of reading it
        t0 = float(out["time_s"].min())
        out["time_s"] -= t0
        out.attrs["log_t0_s"] = t0
    out.attrs["source"] = str(p)
    out.attrs["reader"] = "csv"
    return out.sort_values("time_s").reset_index(drop=True)


def log_time_offset_s(
    log: pd.DataFrame, acquisition_start_utc: str, *, log_utc_offset_h: float
) -> float:
    """``time_offset_s`` for :func:`perovstem.insitu.attach_conditions`: the log's
    ``time_s`` at the series' ``t = 0``.

    Parameters
    ----------
    log : DataFrame
        From :func:`read_holder_log`, with ``attrs['t0_time']`` (the holder PC's local clock
        time of ``time_s = 0``).
    acquisition_start_utc : str
        ISO time the first frame started, with its UTC offset (``Series.metadata
        ['acquisition_start_utc']`` of a Velox file).
    log_utc_offset_h : float
        UTC offset of the holder PC's clock, hours (e.g. +1 for CET, +2 for CEST, -5 for
        EST).  No holder log records it, and a wrong zone shifts the alignment by hours.

    Returns
    -------
    float
        Seconds.
    """
    from perovstem.errors import ParameterError

    t0 = log.attrs.get("t0_time") if isinstance(log, pd.DataFrame) else None
    if not t0:
        raise ParameterError(
            "`log` has no attrs['t0_time'] (the clock time of its time_s = 0); read it with "
            "read_holder_log from a log that records its start date, or give time_offset_s"
        )
    try:
        offset = float(log_utc_offset_h)
    except (TypeError, ValueError):
        offset = float("nan")
    if not (np.isfinite(offset) and -14 <= offset <= 14):
        raise ParameterError(
            f"`log_utc_offset_h` must be within -14…14 h, got {log_utc_offset_h!r}"
        )
    start = pd.Timestamp(acquisition_start_utc)
    if start.tzinfo is None:
        raise ParameterError(
            f"`acquisition_start_utc` must carry its UTC offset (e.g. '+00:00'), got "
            f"{acquisition_start_utc!r}"
        )
    log0_utc = pd.Timestamp(t0).tz_localize(None) - pd.Timedelta(hours=offset)
    return float((start.tz_convert("UTC").tz_localize(None) - log0_utc).total_seconds())
