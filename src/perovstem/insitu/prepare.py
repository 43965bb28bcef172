"""An in-situ series made ready for :func:`perovstem.insitu.analyze_series` from the
experiment's settings: dose, frame times, detector, holder log, temperature, beam energy.

The command line (``perovstem insitu``) and the pipeline's ``[inputs]`` options give the
same settings; both go through :func:`prepare_series`, which says in its notes what it
replaced or could not do, with the option names of its caller.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from perovstem._data import Series
from perovstem.errors import DataError, ParameterError

__all__ = ["prepare_series"]


class _Names(dict):
    """Option name → its spelling in the caller's messages; a name not given is itself."""

    def __missing__(self, key: str) -> str:
        return key


def prepare_series(
    series: Series,
    *,
    dose_e_per_A2: float | None = None,
    current_pA: float | None = None,
    dwell_us: float | None = None,
    frame_time_s: float | None = None,
    conditions: str | Path | pd.DataFrame | None = None,
    time_offset_s: float | None = None,
    log_utc_offset_h: float | None = None,
    temperature_K: float | None = None,
    voltage_kV: float | None = None,
    detector_mrad: Any = None,
    gain: float | str | None = None,
    offset: float | None = None,
    what: str = "the series",
    names: dict[str, str] | None = None,
) -> tuple[Series, list[str]]:
    """Give a series the dose, times, conditions and imaging settings of its experiment.

    Values given here replace the file's (a replaced record is said in the notes); a
    setting the analysis needs and lacks is said too.

    Parameters
    ----------
    series : Series
        As read (:func:`perovstem.io.load`).
    dose_e_per_A2 : float, optional
        Dose per frame, e⁻/Å² (replaces the file's).
    current_pA, dwell_us : float, optional
        Probe current (pA) and pixel dwell time (µs): the dose per frame
        (:func:`perovstem.insitu.assign_dose`).
    frame_time_s : float, optional
        Frame interval, s, for a series without time stamps (does not replace stamps).
    conditions : path or DataFrame, optional
        Holder log (:func:`perovstem.io.holder_logs.read_holder_log`): temperature,
        pressure and other channels averaged over each frame.
    time_offset_s : float, optional
        Log time of the series' ``t = 0``, s; default from the two clocks
        (:func:`perovstem.insitu.time_offset_from_clocks`), else 0 (said).
    log_utc_offset_h : float, optional
        UTC offset of the holder PC's clock, h, for the clock alignment.
    temperature_K : float, optional
        Specimen temperature of the whole series, K (not with ``conditions``).
    voltage_kV : float, optional
        Beam energy, kV (replaces the file's high tension).
    detector_mrad : (inner, outer), optional
        Annular detector, mrad (replaces the file's).
    gain, offset : float, optional
        Detector counts per electron and counts of no signal (replace the file's);
        ``gain="auto"`` measures both from the first frames' shot noise
        (:func:`perovstem.atoms.noise.measure_series_detector`; a given offset is kept).
    what : str
        The series in messages (its file).
    names : dict, optional
        Option name → how the caller spells it in messages (e.g. ``"--dose-e-per-A2"``).

    Returns
    -------
    series : Series
    notes : list of str
    """
    from perovstem.insitu.dose import assign_dose

    n = _Names(names or {})
    notes: list[str] = []
    s = series
    if isinstance(gain, str):  # "auto" (the callers parse the option)
        from perovstem.atoms.noise import measure_series_detector

        nm = measure_series_detector(s, f"{n['gain']} auto")
        gain = nm.gain
        if offset is None:
            offset = nm.offset
        notes.append(
            f"detector measured from the frames' shot noise ({n['gain']} auto): {nm.describe()}"
        )
    det = {k: float(v) for k, v in (("gain", gain), ("offset", offset)) if v is not None}
    if det:
        s = s.replace(metadata={**s.metadata, **det})
    dose, current = dose_e_per_A2, current_pA
    if s.dose_e_per_A2 is not None and (dose is not None or current is not None):
        d = np.asarray(s.dose_e_per_A2, float)
        notes.append(
            f"the file's dose per frame ({d.min():.4g}–{d.max():.4g} e⁻/Å²) is replaced by "
            f"{n['dose_e_per_A2'] if dose is not None else n['current_pA']}"
        )
    if s.time_s is not None and frame_time_s is not None and s.n_frames > 1:
        notes.append(
            f"{n['frame_time_s']} does not replace the file's time stamps (median interval "
            f"{float(np.median(np.diff(np.asarray(s.time_s, float)))):.4g} s)"
        )
    if dose is not None or current is not None or s.dose_e_per_A2 is None:
        if dose is None and current is None:
            notes.append("no dose information: kinetics use the frame index, no atom counts")
            if s.time_s is None and frame_time_s is not None:
                s = s.replace(time_s=np.arange(s.n_frames) * float(frame_time_s))
        else:
            if s.time_s is None and frame_time_s is None and s.exposure_s is None:
                raise ParameterError(
                    f"{what} has no frame time stamps: give {n['frame_time_s']} (frame "
                    f"interval, s) with {n['dose_e_per_A2']}/{n['current_pA']}"
                )
            s = assign_dose(
                s,
                dose_e_per_A2=dose,
                current_pA=current,
                dwell_us=dwell_us,
                frame_time_s=frame_time_s,
            )
    elif s.time_s is None and frame_time_s is not None:
        s = assign_dose(s, frame_time_s=frame_time_s)
    if s.time_s is None:
        notes.append(
            f"no frame time stamps (none in the file, no {n['frame_time_s']}): results per "
            "second (the cluster hop rate, the frames' time_s) are not measured; give "
            f"{n['frame_time_s']}"
        )
    if conditions is not None:
        s = _with_log(s, conditions, time_offset_s, log_utc_offset_h, what, n, notes)
    if temperature_K is not None:
        if s.temperature_K is not None:
            t_file = np.asarray(s.temperature_K, float)
            notes.append(
                f"the file's temperature ({np.nanmin(t_file):.4g}–{np.nanmax(t_file):.4g} K) "
                f"is replaced by {n['temperature_K']} {temperature_K:g}"
            )
        s = s.replace(temperature_K=np.full(s.n_frames, float(temperature_K)))
    if voltage_kV is not None:
        from perovstem._data import voltage_kV_of

        kv_file = voltage_kV_of(s.metadata)
        if kv_file is not None and abs(kv_file - voltage_kV) > 1e-6:
            notes.append(
                f"the file's beam energy ({kv_file:g} kV) is replaced by {n['voltage_kV']} "
                f"{voltage_kV:g}"
            )
        md = {k: v for k, v in s.metadata.items() if k != "high_tension_kV"}
        s = s.replace(metadata={**md, "voltage_kV": float(voltage_kV)})
    if detector_mrad is not None:
        s = s.replace(metadata={**s.metadata, "detector_mrad": [float(v) for v in detector_mrad]})
    return s, notes


def prepare_image(
    image: Any,
    *,
    dose_e_per_A2: float | None = None,
    current_pA: float | None = None,
    dwell_us: float | None = None,
    gain: float | str | None = None,
    offset: float | None = None,
    voltage_kV: float | None = None,
    detector_mrad: Any = None,
    what: str = "the image",
    names: dict[str, str] | None = None,
) -> tuple[Any, list[str]]:
    """One image with the settings its file lacks (as :func:`prepare_series` for a series).

    The dose is ``dose_e_per_A2`` or the probe's ``current_pA`` × ``dwell_us`` per pixel
    area; ``gain`` (counts per electron, or ``"auto"``: measured from the image's shot
    noise, :func:`perovstem.atoms.noise.auto_detector`), ``offset`` (counts of no signal),
    ``voltage_kV`` and ``detector_mrad`` go into its metadata.

    Returns
    -------
    image : Image
    notes : list of str
        What replaced the file's own values, and a measured detector.
    """
    from perovstem._data import voltage_kV_of
    from perovstem.io.read import dose_per_frame

    n = {k: f"`{k}`" for k in ("dose_e_per_A2", "current_pA", "dwell_us", "gain", "voltage_kV")}
    n.update(names or {})
    notes: list[str] = []
    img = image
    md = dict(img.metadata)
    if gain == "auto":
        from perovstem.atoms.noise import auto_detector

        nm = auto_detector(img, what=f"{n['gain']} auto")
        md.update(gain=nm.gain, noise_model=nm.as_dict())
        if offset is None:
            md["offset"] = nm.offset
        notes.append(f"detector measured from the image's shot noise: {nm.describe()}")
    elif gain is not None:
        md["gain"] = float(gain)
    if offset is not None:
        md["offset"] = float(offset)
    if voltage_kV is not None:
        kv_file = voltage_kV_of(md)
        if kv_file is not None and abs(kv_file - voltage_kV) > 1e-6:
            notes.append(
                f"the file's beam energy ({kv_file:g} kV) is replaced by {n['voltage_kV']} "
                f"{voltage_kV:g}"
            )
        md.pop("high_tension_kV", None)
        md["voltage_kV"] = float(voltage_kV)
    if detector_mrad is not None:
        md["detector_mrad"] = [float(v) for v in detector_mrad]
    dose = dose_e_per_A2
    if dose is None and (current_pA is not None or dwell_us is not None):
        if current_pA is None or dwell_us is None:
            raise ParameterError(
                f"{what}: the dose of one image from the probe needs both {n['current_pA']} "
                f"and {n['dwell_us']}"
            )
        dose = dose_per_frame(current_pA * 1e-12, dwell_us * 1e-6, img.pixel_size_A)
    if dose is not None:
        if img.dose_e_per_A2 is not None and abs(img.dose_e_per_A2 - dose) > 1e-6 * dose:
            notes.append(
                f"the file's dose ({img.dose_e_per_A2:.4g} e⁻/Å²) is replaced by {dose:.4g} e⁻/Å²"
            )
        img = img.replace(dose_e_per_A2=float(dose))
    return img.replace(metadata=md), notes


def _with_log(
    s: Series,
    conditions: Any,
    time_offset_s: float | None,
    log_utc_offset_h: float | None,
    what: str,
    n: dict[str, str],
    notes: list[str],
) -> Series:
    """``s`` with the holder log's channels, placed by the given offset or the clocks."""
    from perovstem.insitu.conditions import attach_conditions, time_offset_from_clocks
    from perovstem.io.holder_logs import read_holder_log

    log_name = (
        repr(str(conditions)) if not isinstance(conditions, pd.DataFrame) else "(a DataFrame)"
    )
    opt = f"{n['conditions']} {log_name}"
    if s.time_s is None:  # was "call assign_dose(time_s=...) first" (the Python API)
        raise ParameterError(
            f"{opt} needs the frames' time stamps and {what} has none: give "
            f"{n['frame_time_s']} (frame interval, s)"
        )
    log = conditions if isinstance(conditions, pd.DataFrame) else read_holder_log(conditions)
    if time_offset_s is None:
        time_offset_s, how = time_offset_from_clocks(s, log, log_utc_offset_h=log_utc_offset_h)
        if time_offset_s is None:
            time_offset_s = 0.0
            notes.append(
                f"{n['conditions']}: the first frame is placed at the log's time 0 ({how}); "
                f"give {n['time_offset_s']}"
                + (f" or {n['log_utc_offset_h']}" if "time zone" in how else "")
            )
        else:
            notes.append(
                f"{n['conditions']}: the first frame lies at {time_offset_s:.1f} s of the log, "
                f"from the two clocks ({how}); {n['time_offset_s']} overrides"
            )
    before = {c: getattr(s, c) for c in ("temperature_K", "pressure_Pa")}
    try:
        s = attach_conditions(s, log, time_offset_s=time_offset_s)
    except (DataError, ParameterError) as exc:  # name the file and the option
        # (a reading the series refuses, e.g. -5 K, is the log's: it was said without it)
        raise type(exc)(
            f"{opt}: " + str(exc).replace("`time_offset_s`", f"`{n['time_offset_s']}`")
        ) from None
    for c, unit in (("temperature_K", "K"), ("pressure_Pa", "Pa")):
        old, new = before[c], getattr(s, c)
        if old is not None and new is not None and c in log:
            # the log is the holder's record of the run: it wins, and the change is said
            o, v = np.asarray(old, float), np.asarray(new, float)
            notes.append(
                f"{n['conditions']}: the file's {c} ({np.nanmin(o):.4g}–{np.nanmax(o):.4g} "
                f"{unit}) is replaced by the log's ({np.nanmin(v):.4g}–{np.nanmax(v):.4g} {unit})"
            )
    md = dict(s.metadata)
    md["conditions_time_offset_s"] = float(time_offset_s)
    return s.replace(metadata=md)
