"""Several in-situ series as one study: the mechanism table across their conditions.

An Arrhenius study images crystals at several temperatures (and dose rates), often more
than one crystal (field) per temperature: with the demo's dose per frame one field of
20 frames gives the Pb⁰-diffusion activation energy to about ±0.04 eV RMS, two fields
±0.02 eV (``docs/insitu.md``, kinetics).  :func:`analyze_series` analyses one series;
:func:`combine_series` puts the per-frame tables and cluster tracks of several analysed
series together: the per-frame processes are fitted per series, the hop rate of each
condition pools the tracks of all series under it, and the activation energy and dose-rate
dependence come out across the conditions
(:func:`perovstem.quantify.mechanism.mechanism_summary` with ``field``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from perovstem._validation import (
    check_choice,
    check_positive,
    check_range,
    item_names,
    refuse_text_numbers,
)
from perovstem.errors import DataError
from perovstem.insitu.tracking import mobility_tracks

__all__ = ["combine_series", "hop_tracks"]

#: condition columns of a frames table that the hop rate's tracks take per frame
CONDITION_COLUMNS = ("temperature_K", "dose_rate_e_per_A2_s", "gas")


def hop_tracks(
    tracks: pd.DataFrame,
    frames: pd.DataFrame,
    *,
    how: str = "strict",
    max_step_A: float = 8.0,
) -> tuple[pd.DataFrame | None, dict[str, Any], str | None]:
    """The tracks a series' cluster hop rate is measured on.

    ``"strict"``: the detections tracked again with cheap ends and births
    (:func:`~perovstem.insitu.tracking.mobility_tracks`), refusing the unlikely links the
    lineage keeps for merges; ``"lineage"``: ``track_id`` as it is.  Frames whose drift is
    unreliable (``frames.drift_reliable`` False) are left out (a hop measured through an
    unreliable drift is not a hop), and each detection takes its frame's conditions
    (temperature, dose rate, gas) from ``frames``.

    Parameters
    ----------
    tracks : DataFrame
        The series' tracked detections (``clusters`` of :func:`analyze_series`).
    frames : DataFrame
        Its per-frame table (``frame`` and the condition columns present).
    how : {"strict", "lineage"}
        Which tracks.
    max_step_A : float
        The tracker's largest link, Å.

    Returns
    -------
    tracks : DataFrame or None
        None when there is no detection, no cluster has an atom count (no dose:
        Γ₁ = Γ_c·n^(4/3) needs sizes in atoms) or no detection is left.
    linked : dict
        How the tracks were linked (``attrs["mobility_tracks"]`` of the strict tracks, or
        ``{"tracks": "lineage"}``).
    note : str or None
        Why there are no tracks, where that is worth saying.
    """
    refuse_text_numbers(locals())
    check_choice("how", how, ("strict", "lineage"))
    check_positive("max_step_A", max_step_A)
    linked: dict[str, Any] = {"tracks": "lineage"}
    if not len(tracks):
        return None, linked, None
    if "n_atoms" not in tracks or not tracks["n_atoms"].notna().any():
        return None, linked, "no atom counts (no dose): cluster mobility not measured"
    out = tracks
    if how == "strict":
        # tracked again on every frame, then cut where the drift is unreliable
        out = mobility_tracks(tracks, max_step_A=max_step_A)
        linked = dict(out.attrs["mobility_tracks"])
    if "drift_reliable" in frames:
        bad = frames.loc[~frames["drift_reliable"].astype(bool), "frame"]
        out = out[~out["frame"].isin(bad)]
    if not len(out):
        return None, linked, None
    cond = [c for c in CONDITION_COLUMNS if c in frames]  # each hop in its frame's condition
    out = out.drop(columns=[c for c in cond if c in out]).merge(
        frames[["frame", *cond]], on="frame", how="left"
    )
    return out, linked, None


def _tables(result: Any, name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(frames, clusters) of an :class:`InsituResult` or a mapping of its tables."""
    if isinstance(result, Mapping):
        frames, clusters = result.get("frames"), result.get("clusters")
    else:
        frames, clusters = getattr(result, "frames", None), getattr(result, "clusters", None)
    for what, t, cols in (
        ("frames", frames, ("frame", "skipped")),
        ("clusters", clusters, ("frame", "x_A", "y_A", "track_id")),
    ):
        if not isinstance(t, pd.DataFrame):
            raise DataError(
                f"{name}: no {what} table (give analyze_series results or their tables "
                "`frames` and `clusters`)"
            )
        missing = [c for c in cols if c not in t]
        if missing:
            raise DataError(f"{name}: the {what} table lacks the columns {missing}")
    return frames, clusters


# fields of one condition whose gas pressures differ more than this factor are said: the
# pressure is not a condition column (1 and 1000 Pa of H2O were pooled without a word)
PRESSURE_FACTOR = 2.0


def _pressure_notes(frames: pd.DataFrame, conditions: list[dict[str, Any]]) -> list[str]:
    """Notes for the conditions whose fields were imaged at gas pressures more than
    :data:`PRESSURE_FACTOR` apart (median ``pressure_Pa`` of each series)."""
    if "pressure_Pa" not in frames or not frames["pressure_Pa"].notna().any():
        return []
    p = frames.groupby("series", sort=False)["pressure_Pa"].median()
    out = []
    for c in conditions:
        fields = [f for f in c.get("fields", []) if f in p.index and pd.notna(p[f])]
        vals = p[fields].sort_values()
        if len(vals) < 2:
            continue
        lo, hi = float(vals.min()), float(vals.max())
        if hi > PRESSURE_FACTOR * max(lo, 0.0) and hi > 0:
            each = ", ".join(f"{f}: {float(v):.3g} Pa" for f, v in vals.items())
            out.append(
                f"the fields of one condition differ in gas pressure ({each}): they are pooled "
                "as one condition (the pressure is not a condition column); combine series "
                "of one pressure, or analyse the pressures apart"
            )
    return out


def combine_series(
    results: Sequence[Any],
    *,
    names: Sequence[str] | None = None,
    ci: str = "profile",
    level: float = 0.95,
    hop_tracks_how: str = "strict",
    max_step_A: float = 8.0,
) -> pd.DataFrame:
    """One mechanism table from several analysed in-situ series.

    Each series is one field (a crystal); its frames carry their conditions (temperature,
    dose rate, gas: from the file's metadata or a holder log, see
    :func:`perovstem.insitu.attach_conditions`).  Series whose conditions agree (within
    :data:`perovstem.quantify.mechanism.CONDITION_TOLERANCE`) are one condition: their
    per-frame processes (Br loss, nucleation, growth, ...) are fitted per series (plus one
    D_Br row pooling the series' image-derived Br losses, ``analyze_series(br_loss=True)``),
    their cluster tracks (:func:`hop_tracks`) are pooled for the condition's hop rate Γ₁; across
    conditions come the Arrhenius energy of Pb⁰ diffusion and the dose-rate dependence
    (:func:`perovstem.quantify.mechanism.mechanism_summary` with ``field="series"``).
    One series gives the mobility and per-frame rows of ``analyze_series(...).summary``.

    Parameters
    ----------
    results : sequence
        :class:`~perovstem.insitu.analysis.InsituResult` objects, or mappings with the
        tables ``frames`` and ``clusters`` (e.g. read back from ``perovstem insitu``
        output folders).
    names : sequence of str, optional
        The series' names (default ``series 0``, ``series 1``, ...), unique: the
        ``field`` column of the table.
    ci : {"profile", "bootstrap", "wald"}
        Interval method of the per-frame fits.
    level : float
        Confidence level.
    hop_tracks_how : {"strict", "lineage"}
        Tracks of the hop rate (:func:`hop_tracks`).
    max_step_A : float
        The tracker's largest link, Å (the hop rate's long-step diagnostic).

    Returns
    -------
    DataFrame
        The mechanism table (:data:`~perovstem.quantify.mechanism.SUMMARY_COLUMNS` and
        ``field``); ``attrs``: ``conditions`` (each condition's values and fields),
        ``x`` (the dose axis, or ``frame`` when a series has no dose), ``notes``.
    """
    from perovstem.quantify.mechanism import mechanism_summary

    refuse_text_numbers(locals())
    check_range("level", level, 0.5, 0.999)
    check_positive("max_step_A", max_step_A)
    results = list(results)
    if not results:
        raise DataError("no series to combine: give at least one analysed series")
    names = item_names(names, len(results), default="series", what="series", unique=True)
    check_choice("hop_tracks_how", hop_tracks_how, ("strict", "lineage"))
    frames_all, tracks_all, notes = [], [], []
    x = "cumulative_dose_e_per_A2"
    linked: dict[str, Any] = {"tracks": "lineage"}
    for name, res in zip(names, results, strict=True):
        frames, clusters = _tables(res, name)
        usable = frames[~frames["skipped"].fillna(False).astype(bool)]
        if not len(usable):
            raise DataError(f"{name}: every frame was skipped in its analysis")
        frames_all.append(usable.assign(series=name))
        if x not in frames or not frames[x].notna().all():
            x = "frame"  # (as analyze_series: the dose axis only where every frame has one)
        t, how_linked, note = hop_tracks(
            clusters, frames, how=hop_tracks_how, max_step_A=max_step_A
        )
        if note:
            notes.append(f"{name}: {note}")
        if t is not None:
            linked = how_linked
            tracks_all.append(t.assign(series=name))
    frames = pd.concat(frames_all, ignore_index=True)
    if x == "frame":
        notes.append("a series has no dose: the per-frame fits use the frame index")
    how_to = {
        "temperature_K": "its temperature (the file's, perovstem insitu --temperature-K or "
        "--conditions)",
        "dose_rate_e_per_A2_s": "its dose (the file's, or perovstem insitu "
        "--dose-e-per-A2/--current-pA with frame times)",
    }
    for c, fix in how_to.items():
        if c not in frames or not frames[c].isna().any() or frames[c].isna().all():
            continue
        missing = frames[c].isna().groupby(frames["series"], sort=False)
        part = [(n, int(m.sum()), len(m)) for n, m in missing if 0 < m.sum() < len(m)]
        if part:  # a frame without its condition would be a condition of its own
            n, k, m = part[0]
            raise DataError(f"{n}: no {c} in {k} of its {m} frames: give every frame {fix}")
        lack = [n for n, m in missing if m.all()]
        raise DataError(
            f"{', '.join(lack)}: no {c} (the other series have one): give each series "
            f"{fix}, or leave the series out"
        )
    if "temperature_K" not in frames or frames["temperature_K"].isna().all():
        notes.append(
            "no series records a temperature: series of one dose rate are one condition "
            "(their hop rates pooled); give each series its temperature (perovstem insitu "
            "--temperature-K or --conditions) to tell temperatures apart"
        )
    kw: dict[str, Any] = {}
    if tracks_all:
        kw = {
            "tracks": pd.concat(tracks_all, ignore_index=True),
            "mobility": {"max_step_A": float(max_step_A), "rng": 0},
        }
    out = mechanism_summary(frames, x=x, ci=ci, level=level, field="series", **kw)
    if tracks_all:
        out.attrs["mobility_tracks"] = linked
    mob = out[(out["process"] == "mobility") & out["value"].notna()]
    if tracks_all and linked.get("tracks") != "lineage" and len(mob):
        from perovstem.insitu.tracking import STRICT_HOP_RATE_NOTE

        notes.append(STRICT_HOP_RATE_NOTE)
    n_t = mob["temperature_K"].nunique()
    if n_t < 3:
        notes.append(
            f"hop rates at {n_t} temperature(s): the activation energy of Pb⁰ diffusion "
            "needs three or more (two parameters, and a check of the Arrhenius line)"
        )
    notes += _pressure_notes(frames, out.attrs.get("conditions", []))
    out.attrs["notes"] = notes
    out.attrs["series"] = list(names)
    out.attrs["n_frames"] = {n: int((frames["series"] == n).sum()) for n in names}
    return out
