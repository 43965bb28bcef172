"""One call for a whole in-situ series: register, detect, track, bookkeeping, kinetics.

Two streaming passes over the frames (registration; then shift + detection + crystal metrics
per frame), so memory does not grow with the number of frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from perovstem._data import Image, Series, imaging_angles_of, voltage_kV_of
from perovstem._validation import check_choice, refuse_text_numbers
from perovstem.errors import DataError, ParameterError
from perovstem.insitu._frames import (
    frame_quality,
    incomplete_scans,
    iter_frames,
    single_blas_thread,
    trailing_constant_rows,
)
from perovstem.insitu._host import HostReference
from perovstem.insitu.clusters import CLUSTER_COLUMNS, detect_clusters
from perovstem.insitu.lattice import (
    FOURFOLD_MIN,
    column_width,
    estimate_lattice,
    fourfold_ratio,
    host_cell,
)
from perovstem.insitu.nanocrystal import _segment_objects, area_noise, fft_phase_check
from perovstem.insitu.register import phase_correlate, register_drift
from perovstem.insitu.study import hop_tracks as _hop_tracks
from perovstem.insitu.tracking import (
    lineage_events,
    track_clusters,
)

__all__ = ["InsituResult", "analyze_series", "pb0_falls_later", "shift_frame"]


def _condition_text(cond: dict[str, Any]) -> str:
    """``temperature_K 300, dose_rate_e_per_A2_s 200`` for a summary condition's keys."""
    return ", ".join(
        f"{c} {v:.4g}" if isinstance(v, float) else f"{c} {v}" for c, v in cond.items()
    )


def shift_frame(frame: np.ndarray, shift_px: Any) -> np.ndarray:
    """Shift a frame by ``shift_px`` = (dy, dx) pixels: integer part exact, fraction by FFT.

    The whole-pixel part moves the data (edge pixels replicated, as ``mode="nearest"``);
    the sub-pixel remainder (|·| ≤ ½ px) is a Fourier phase ramp
    (:func:`scipy.ndimage.fourier_shift` on the real FFT), which only wraps that fraction
    of a pixel across the border.  Unlike a cubic-spline shift it does not low-pass filter:
    the shot noise keeps its white spectrum in every frame whatever the drift, so the
    per-frame column fit carries the same noise bias as on unshifted images (the fitted
    SCS library, :mod:`perovstem.atoms.fitted_library`), and it is faster (≈ 2 real FFTs).

    Parameters
    ----------
    frame : (M, N) ndarray
    shift_px : (2,) array_like
        (dy, dx) in pixels; the content moves by +shift.

    Returns
    -------
    ndarray
        float64, (M, N).
    """
    refuse_text_numbers(locals())
    from scipy import fft

    f = np.asarray(frame, dtype=float)
    s = np.asarray(shift_px, dtype=float).reshape(2)
    whole = np.round(s).astype(int)
    frac = s - whole
    if np.any(whole):
        f = ndimage.shift(f, whole, order=0, mode="nearest")
    if not np.any(frac):
        return f
    spec = fft.rfft2(f)
    spec = ndimage.fourier_shift(spec, frac, n=f.shape[1], axis=1)
    return fft.irfft2(spec, s=f.shape)


#: run the drift registration beside the detection pass (clusters then detected on the raw
#: frames, positions moved to frame-0 coordinates); False: register first, detect on the
#: shifted frames
REGISTER_BESIDE = True
# mechanism-summary observables that do not rest on the Pb-cluster detection (the host's Br
# and intensity): on a host that is not a [001] projection the other rows are unreliable
HOST_OBSERVABLES = ("n_Br", "n_Br_lost_image", "integrated_counts", "k_Br_per_s")


def _register(series: Series, max_lag: int) -> pd.DataFrame:
    """:func:`register_drift` of the series, its DataError saying how to go on without."""
    try:
        return register_drift(series, max_lag=max_lag)
    except DataError as exc:
        # e.g. a featureless or pure-noise series: say how to go on without drift
        raise DataError(
            f"{exc}; if the frames need no drift correction, pass register=False "
            "(perovstem insitu --no-register)"
        ) from exc


class _Beside:
    """``fn(*args)`` run in a thread beside the caller's work: under the caller's
    one-thread BLAS limit (entered here, in the calling thread, and left once the thread is
    joined, so the limits are restored in order) and with a cancel flag on its frame
    reads (:func:`perovstem.insitu._frames.iter_frames`), so that a failing caller does not
    leave it reading the rest of the series."""

    def __init__(self, fn: Any, *args: Any) -> None:
        import contextvars
        import threading

        from perovstem.insitu._frames import cancellable

        self._blas: Any = single_blas_thread()
        self._blas.__enter__()
        ctx = contextvars.copy_context()
        self._cancel = ctx.run(cancellable)
        self._out: dict[str, Any] = {}

        def run() -> None:
            try:
                self._out["value"] = ctx.run(fn, *args)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                self._out["error"] = exc

        self._thread = threading.Thread(target=run, name="perovstem-beside", daemon=True)
        self._thread.start()

    def _join(self) -> None:
        self._thread.join()
        if self._blas is not None:
            self._blas.__exit__(None, None, None)
            self._blas = None

    def result(self) -> Any:
        """Wait for the thread; its value, or its exception raised here."""
        self._join()
        if "error" in self._out:
            raise self._out["error"]
        return self._out["value"]

    def cancel(self) -> None:
        """Stop the thread at its next frame read and wait for it."""
        self._cancel.set()
        self._join()


class _cancel_on_error:  # noqa: N801 - used as a context manager
    """Cancel a :class:`_Beside` run when the block raises."""

    def __init__(self, run: _Beside | None) -> None:
        self.run = run

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: Any, exc: Any, tb: Any) -> None:
        if typ is not None and self.run is not None:
            self.run.cancel()


def _to_frame0(dets: list[pd.DataFrame], shifts: np.ndarray, px: float) -> None:
    """Move cluster positions measured on raw frames into frame-0 coordinates (in place):
    frame k's content sits at its frame-0 position plus the drift ``shifts[k]`` (dy, dx)."""
    for d in dets:
        if not len(d):
            continue
        k = int(d["frame"].iloc[0])
        d["y_px"] = d["y_px"] - shifts[k, 0]
        d["x_px"] = d["x_px"] - shifts[k, 1]
        d["y_A"] = d["y_px"] * px
        d["x_A"] = d["x_px"] * px


def _jitter_notes(jitter: dict[str, Any] | None, scan_correction: bool) -> list[str]:
    """The notes on fast-scan line jitter: frames where it could not be measured (most of
    them), and the jitter measured (none below LINE_JITTER_NOTE_PX)."""
    notes: list[str] = []
    unlocked = 0 if jitter is None else jitter["unlocked"]
    if unlocked >= 3 and 2 * unlocked > jitter["tried"]:
        notes.append(
            f"fast-scan line jitter could not be measured on {jitter['unlocked']} of "
            f"{jitter['tried']} frames (column line_jitter_px NaN): the line offsets of the "
            "left and right parts of the frame disagree by more than 1 px rms, so they are "
            "not locked on the structure (e.g. a lattice aliased by coarse pixels, or a "
            "crystal that changes faster than the frames); jitter there, if any, is not said"
        )
    if jitter is not None and jitter["median_px"] > LINE_JITTER_NOTE_PX:
        notes.append(
            f"fast-scan line jitter {jitter['median_px']:.2g} px rms (median of "
            f"{jitter['n']} frames, measured against the mean of the others; column "
            "line_jitter_px): Pb⁰ counts are unreliable (KMC 4 nm cubes with 1 px white line "
            "jitter: first-frame totals 1.5-3.7x the truth, 0.7-1.5x without jitter)"
            + (
                "; the scan correction reduces but does not remove the excess (0.8-2.1x "
                "per line at 1 px)"
                if scan_correction
                else "; scan_correction=True corrects it in part"
            )
        )
    return notes


@dataclass
class InsituResult:
    """Tables produced by :func:`analyze_series` (all pandas DataFrames).

    Attributes
    ----------
    frames : per-frame bookkeeping (time, dose, cumulative dose, conditions,
        ``second_object_area_A2`` (the next largest bright object, Å²: the crystal
        columns follow the largest only; a note when it is large in the first frames),
        ``integrated_counts`` of the crystal in detected electrons (offset removed, divided
        by ``metadata["gain"]`` when given), ``crystal_at_border`` (the outline reaches
        the frame border: area and intensity also change with the field; a note), drift
        ``dy_px, dx_px`` with ``drift_reliable``/``drift_flag`` and ``drift_err_px``, the
        2-D standard error ``hypot(dy_err_px, dx_err_px)`` of :func:`register_drift`, px;
        crystal area/shrinkage/voids/phase, cluster number/atoms/mean size, births,
        merges (``n_merges``: confident coalescences only; ``n_merges_uncertain``: merges
        with a brief noise-level parent, :func:`track_clusters`); ``host_model``, the cluster host-model state of the frame (``host_reference_used``: its empty-site ratio carried from the earlier frames that measured one, where clusters cover the crystal, right after such a frame or where the host lattice is still seen; ``host_lattice_power``: the frame's host-lattice power per dose² relative to the first frame's, where the frame alone was ``"no_reference"``; ``host_flag``: why its clusters were flagged ``host_ok`` False where the lattice is seen but no ratio could be carried), and ``n_clusters_host_flagged``/``n_Pb0_host_flagged``, the clusters
        and atoms among them whose host background could not be modelled, ``host_ok``
        False in ``clusters``); ``n_Pb0_err`` (1σ of the Pb⁰ total: the clusters'
        ``n_atoms_err`` in quadrature), ``n_Pb0_err_stat`` (frame-to-frame 1σ of the Pb⁰
        total) and
        ``Pb0_falls_later`` (:func:`pb0_falls_later`: the total exceeds a later frame's by
        more than 3σ, an over-count or Pb leaving the field; a note), ``Pb0_dip``
        (:func:`pb0_dips`: a one-frame fall below both neighbours, an under-count; a note);
        ``crystal_cluster_share``, the share of the segmented crystal's signal that the
        clusters on it account for — when it is ≥ 0.7 in the first frames the field holds
        no nanocrystal and the crystal columns are NaN (a note).
    drift : output of :func:`register_drift`.
    clusters : detections with ``track_id``.
    lineage : one row per track (:func:`track_clusters`).
    events : births, merges, deaths with dose (:func:`lineage_events`).
    summary : mechanism table (:func:`perovstem.quantify.mechanism.mechanism_summary`).
    columns : per atomic column (only with ``columns=True``): ``column, type, x_A, y_A,
        n_atoms_first, n_atoms_last, atoms_lost, atoms_lost_mean, atoms_lost_std`` (+ loss
        rate per e⁻/Å² when doses are known) from the hidden-Markov Viterbi paths;
        ``attrs["frames"]`` lists the analysed frames (frames with an unreliable drift are
        left out, with a note), ``n_atoms_last`` is the last of them.
    column_counts : long table ``frame, column, type, x_A, y_A, scs_A2, n_atoms,
        n_atoms_mean, n_atoms_std`` (only with ``columns=True``).
    br_loss : :class:`perovstem.quantify.br_loss.BrLossResult` of the image-derived Br loss
        (only with ``br_loss=True`` and when it could be fitted); its per-frame table is
        written as ``br_loss``.
    notes : list of str
        What could not be done and why (e.g. the image-derived Br loss on a series with a
        skipped frame; the number of frames whose drift is unreliable).
    """

    frames: pd.DataFrame
    drift: pd.DataFrame
    clusters: pd.DataFrame
    lineage: pd.DataFrame
    events: pd.DataFrame
    summary: pd.DataFrame
    skipped: list[int] = field(default_factory=list)
    columns: pd.DataFrame | None = None
    column_counts: pd.DataFrame | None = None
    br_loss: Any = None
    notes: list[str] = field(default_factory=list)

    #: every table :meth:`tables` can return, in order (the CLI refuses or replaces an
    #: earlier run by these names, before any analysis)
    TABLE_NAMES = (
        "frames", "drift", "clusters", "lineage", "events", "summary",
        "columns", "column_counts", "br_loss",
    )  # fmt: skip

    def tables(self) -> dict[str, pd.DataFrame]:
        """All tables by name (for writing); ``columns``/``column_counts`` when computed."""
        found = {
            "br_loss": None if self.br_loss is None else self.br_loss.frames,
            **{n: getattr(self, n) for n in self.TABLE_NAMES if n != "br_loss"},
        }
        return {n: found[n] for n in self.TABLE_NAMES if found[n] is not None}


def analyze_series(
    series: Series,
    *,
    register: bool = True,
    max_lag: int = 3,
    detect: dict[str, Any] | None = None,
    track: dict[str, Any] | None = None,
    crystal: bool = True,
    phase_check: bool = True,
    summary: bool = True,
    lattice_A: float = 5.87,
    n_workers: int = 2,
    ci: str = "profile",
    columns: bool = False,
    column_options: dict[str, Any] | None = None,
    br_loss: bool = False,
    br_loss_options: dict[str, Any] | None = None,
    scan_correction: bool = False,
    scan_options: dict[str, Any] | None = None,
    hop_tracks: str = "strict",
) -> InsituResult:
    """Analyse an in-situ series end to end.

    Frames are skipped (``frames.skipped``/``reason``) when they hold non-finite pixels,
    are constant, have a zero dose, or their scan stopped part-way: a block of last rows
    of one value longer, by max(16 rows, 10 %), than the drift-corrected block of both
    neighbours (e.g. zeros after an aborted scan; vacuum rows of a zero-background
    detector are not taken for one; not tested with ``scan_correction``).

    Parameters
    ----------
    series : Series
        With dose per frame (see :func:`assign_dose`) for SCS/atom counts and dose axes;
        without dose, detection and tracking still run and kinetics use the frame index.
    register : bool
        Measure and correct rigid drift first.
    max_lag : int
        Frames each frame is registered to.
    detect, track : dict, optional
        Options of :func:`detect_clusters` and :func:`track_clusters`.
    hop_tracks : {"strict", "lineage"}
        Tracks of the cluster hop rate (Pb⁰ mobility) in the summary: ``"strict"`` (the
        detections tracked again by :func:`mobility_tracks`, as the ``quantify.mechanism``
        pipeline step does) or ``"lineage"`` (the tracks of the lineage, which keep
        unlikely links for merges); ``summary.attrs["mobility_tracks"]`` says which.
    crystal : bool
        Crystal outline, area, shrinkage and voids per frame.
    phase_check : bool
        FFT phase check per frame.
    summary : bool
        Fit and rank kinetic models (:func:`mechanism_summary`).
    lattice_A : float
        Host lattice spacing, Å.
    ci : {"profile", "bootstrap", "wald"}
        Confidence intervals of the kinetic fits.
    n_workers : int
        Threads for the per-frame detection pass (numpy/scipy release the GIL); frames are
        processed in blocks of ``2·n_workers`` so memory stays independent of the length.
        The drift registration (``register``) runs in one more thread beside that pass
        (without ``columns`` and ``scan_correction``, which need the aligned frames
        first): clusters and the crystal are measured on the raw frames and the cluster
        positions are moved into frame-0 coordinates by the drift afterwards
        (``REGISTER_BESIDE = False`` registers first and detects on the shifted frames;
        the sub-pixel Fourier shift is not neutral for detection: Pb⁰ sums 1-9 % higher
        on 5 small KMC series, recall +0.01; the detector is tuned on unshifted frames).
    columns : bool
        Also count the atoms of every atomic column through the series: columns are found
        on the first usable registered frames (their sum up to ``width_dose``; CsPbBr₃
        [001] cell: lattice sites), one Gaussian width per column type is measured there at
        the sites (:func:`perovstem.atoms.fitted_library.type_widths`: median of per-column
        widths);
        every registered frame is then fitted with widths and positions held (heights and
        background free; :func:`perovstem.atoms.fit_columns` on the normalised frame), and
        the cross-sections are counted per column type by a hidden Markov model
        (:func:`perovstem.atoms.fit_hmm`, Viterbi paths) against a *fitted-SCS library*
        (:func:`perovstem.atoms.fitted_library.fitted_scs_library`: the same fit applied to
        simulated slabs of 1 … ``max_states`` cells at the series' pixel size, frame size,
        dose per frame and beam energy, default probe) — giving the per-column atoms-lost table/map.
        Holding the widths removes the frame-to-frame scatter and the noise bias of a width
        re-fitted in every frame (a common-mode error of all columns of a type: ±3 % in ρ
        is ±6 % in SCS, a whole Br atom); the library measures the columns as the data are
        measured, so no scale needs fitting.  Needs the dose per frame (normalisation).
    column_options : dict, optional
        ``types`` (default ``("PbBr", "Br", "Cs")``), ``hmm_model`` (``"loss"``; or
        ``"free"``, ``"dose"``), ``max_states`` (20), ``cd_fraction`` (0.0, Pb–Br library),
        ``max_iter`` (fit sweeps per frame, 30), ``library`` (``"fitted"``, default;
        ``"table"``: the total cross-sections of :func:`perovstem.simulate.scs_library`, as
        before 2026-11-26; or ``{type: library}`` overriding the default per type),
        ``library_options`` (keywords of ``fitted_scs_library``: ``probe_sigma_A``,
        ``tail_fraction``, ``dose_e_per_A2``, ``voltage_kV``, ``termination``, ``n_cells``,
        ``n_realizations``, ``reference_thickness``, ``rng``), ``fit_scale`` (fit the HMM's emission scale; default
        False with the fitted library, True otherwise), ``width`` (``"series"``: widths
        from the first frames, held; ``"frame"``: re-fitted in every frame), ``width_dose``
        (4·10³ e⁻/Å²: the first usable frames are summed until their dose reaches this —
        at least one, at most 8 — to find the columns and measure the widths with less
        noise; the library measures its widths at the same dose), ``refine``
        (``"first"``: positions refined on the first frame, then held — for crystals whose
        columns are off the fitted lattice; ``"frame"``: in every frame; ``"none"``,
        default: the finder's lattice sites — refining on one noisy frame biases that
        frame's cross-sections up), ``positions`` (a DataFrame
        ``x_A, y_A, type`` in the registered frame instead of the column finder).
    br_loss : bool
        Measure the Br loss from the images (:func:`perovstem.quantify.br_loss_from_images`:
        total cross-section of every frame mapped onto a structural template) and merge its
        per-frame columns ``n_Br_lost_image, n_Br_exposed_image, n_Br_bulk_image,
        n_Br_lost_image_sd, f_bulk`` into ``frames``, so that the Br-loss row of the
        mechanism summary is the exposed-Br hazard fit of the image-derived loss
        (``D_Br_e_per_A2``, "beam-driven desorption of exposed Br") instead of a
        first-order fit of the crystal's integrated intensity.  Needs the dose per frame.
        Assumptions (not checked on the data): a CsPbBr₃ crystal in [001], CsBr-terminated
        cuboid; the whole crystal and all its Pb⁰ inside the field of view, with vacuum or
        support at the frame border (background); the first frame pristine; the
        bulk/surface desorption ratio ``f_bulk`` known (0.1 by default); no Cd or other
        alloying (the template is pure CsPbBr₃).  The total cross-section is a sum over
        the field of view and changes neither under a rigid shift nor under scan-line
        offsets, so the raw frames are used (the interpolation of registration would only
        replicate edge pixels into the border used as background).  A failure (e.g. a skipped frame
        or no crystal in frame 0) is reported in ``notes`` and the summary falls back to
        the intensity fit; frames after the first skipped frame are not used.
    br_loss_options : dict, optional
        Keyword options of :func:`~perovstem.quantify.br_loss_from_images` (``f_bulk``,
        ``level``, ``n_templates``, ``voltage_kV``, ``temperature_K``, ``border_px``,
        ``two_pass``, ``cd_fraction``, ``termination``, ``rng``); ``lattice_A`` is taken
        from this function.  Without ``termination`` a note says that CsBr-terminated
        facets were assumed.
    scan_correction : bool
        After the rigid alignment, remove the fast-scan line jitter of every frame
        (:func:`perovstem.insitu.apply_drift` with ``scan_correction=True``, against the
        mean of the other aligned frames).  Adds ``scan_rms_line_offset_px`` (rms line
        offset removed per frame, px; NaN for lazy input and skipped frames) to ``frames``.
        For an in-memory series the aligned frames are held in memory (float32).  Without
        ``band_rows``/``smooth_rows`` in ``scan_options``, measured line-to-line jitter
        (see below) is corrected per scan line (``band_rows=1, smooth_rows=0``; a note
        says so).  Independently of this option, a registered series has its line jitter
        measured on up to 16 frames (:func:`~perovstem.insitu.measure_line_jitter`,
        ``frames["line_jitter_px"]``); above ``LINE_JITTER_NOTE_PX`` a note says that the
        Pb⁰ counts are unreliable, and a note says when most frames could not be measured
        (line offsets not locked on the structure).
    scan_options : dict, optional
        ``band_rows``, ``smooth_rows``, ``max_shift_px`` of
        :func:`~perovstem.insitu.correct_scan_distortion`.

    Returns
    -------
    InsituResult
    """
    refuse_text_numbers(locals())
    if not isinstance(series, Series):
        raise ParameterError(f"`series` must be a perovstem Series, got {type(series).__name__}")
    # checked before any frame is read: a bad `ci` only failed inside every kinetic fit
    # (rows "not fitted: `ci` must be one of ...") after the whole series was analysed
    check_choice("ci", ci, ("profile", "bootstrap", "wald"))
    check_choice("hop_tracks", hop_tracks, ("strict", "lineage"))
    detect = dict(detect or {})
    track = dict(track or {})
    px = series.pixel_size_A
    # the frames' beam energy, probe and detector for the libraries of detect_clusters
    kv = voltage_kV_of(series.metadata)
    beam = {} if kv is None else {"voltage_kV": kv}
    beam.update(imaging_angles_of(series.metadata))
    n = series.n_frames
    # The drift registration runs beside the detection pass (both stream the frames and
    # are CPU-bound; the registration's single-threaded stretches leave a core to the
    # detection): clusters and crystal are then measured on the raw frames and the
    # cluster positions moved into frame-0 coordinates afterwards (a rigid shift changes
    # where a cluster is, not what is detected; no sub-pixel resampling of the counts).
    # Column fits and the scan correction need the aligned frames first.  (The thread is
    # started right before the pass: a bad option refused on the way must not leave it
    # running.)
    reg_beside: _Beside | None = None
    drift: pd.DataFrame | None = None
    beside = register and not columns and not scan_correction and REGISTER_BESIDE
    if register and not beside:
        drift = _register(series, max_lag)
    elif not register:
        drift = pd.DataFrame(
            {"frame": np.arange(n), "dy_px": 0.0, "dx_px": 0.0, "skipped": False, "reason": ""}
        )
    shifts = np.zeros((n, 2)) if drift is None else drift[["dy_px", "dx_px"]].to_numpy(float)
    # column fits sit at fixed positions: a frame registered through an unreliable drift
    # (e.g. a lattice-period jump) would read wrong cross-sections; it is used only if it
    # correlates with the column-finding reference within COLUMN_TOL_PX
    col_frame_ok = (
        drift["drift_reliable"].to_numpy(bool)
        if drift is not None and register and "drift_reliable" in drift
        else np.ones(n, bool)
    )
    dose = series.dose_e_per_A2
    if br_loss and dose is None:
        raise ParameterError(
            "`br_loss=True` needs the dose of every frame (total cross-section); "
            "use assign_dose first"
        )
    frames_src = series
    scan_rms: np.ndarray | None = None
    jitter = _line_jitter(series, drift) if register and drift is not None else None
    jitter_notes: list[str] = []
    if scan_correction:
        opts = dict(scan_options or {})
        if (
            jitter is not None
            and jitter["per_line"]
            and not {"band_rows", "smooth_rows"} & set(opts)
        ):
            # line-to-line jitter: bands of 8 smoothed lines average it away (the default,
            # made for smooth distortions, removed nothing of 1 px white jitter)
            opts.update(band_rows=1, smooth_rows=0.0)
            jitter_notes.append(
                "scan correction per scan line (band_rows=1, smooth_rows=0): the measured "
                "line offsets do not correlate between neighbouring lines"
            )
        frames_src, scan_rms = _scan_corrected(series, drift, register, opts)
        shifts = np.zeros_like(shifts)  # frames_src is already aligned
    gain = series.metadata.get("gain")
    offset = series.metadata.get("offset")
    notes: list[str] = _calibration_notes(series, gain, offset)
    notes += _dose_bound_notes(series, gain, offset, dose, px)
    if kv is None and series.dose_e_per_A2 is not None:
        notes.append(
            "no beam energy (series metadata 'voltage_kV' or the file's high tension, CLI "
            "--voltage-kV): the cross-section libraries (Pb⁰ atom counts, Br loss, column "
            "counts) are those of 300 kV; at 200 kV the columns scatter about 1.8x more, so "
            "Pb⁰ counts of a 200 kV series read about twice the truth"
        )
    from perovstem.atoms._conditions import library_conditions

    angles_note = library_conditions(series.metadata)[1]  # a probe or detector not calibrated
    if angles_note:
        notes.append(f"{angles_note} (the Pb⁰ atom counts, --columns)")
    n_cal = len(notes)  # (the line-jitter notes of a registration run beside go here)
    notes += _jitter_notes(jitter, scan_correction) + jitter_notes
    if px > COARSE_PIXEL_A:
        notes.append(
            f"pixel size {px:g} Å: Pb⁰ atom counts are validated on ≤ {COARSE_PIXEL_A:g} Å "
            "pixels; coarser sampling leaves host contrast that is counted as Pb⁰ (KMC "
            "cubes at 0.75-1 Å/px: Pb⁰ totals of the first frames 1.8-9x the truth)"
            + (
                "; at > 1 Å the pixel size does not resolve the lattice: the phase check "
                "assumes ≤ 1 Å pixels (bright particles are reported, not atoms)"
                if px > 1.0
                else ""
            )
        )
    dets, rows, skipped = [], [], []
    tails: dict[int, int] = {}  # constant rows at the end of each usable frame's scan
    angle: float | None = None
    fourfold: tuple[int, float, float] | None = None  # (frame, spacing Å, min(r, 1/r))
    columns_seen: tuple[int, float] | None = None  # (frame, host column σ Å)
    col_opts = _column_options(column_options) if columns else None
    if columns and dose is None:
        raise ParameterError(
            "`columns=True` needs the dose of every frame (to normalise the cross-sections); "
            "use assign_dose first"
        )
    col_pos: pd.DataFrame | None = None
    col_ref: Image | None = None
    if columns:
        ref = _reference_image(
            frames_src, shifts, register, dose, px, col_opts["width_dose"], col_frame_ok
        )
        col_pos = _find_column_positions(ref, gain, offset, col_opts, lattice_A)
        col_ref = ref
    col_scs: dict[int, np.ndarray] = {}
    col_checked: dict[int, float] = {}  # unreliable-drift frames: median column offset, px

    def process(
        k: int, fr: np.ndarray, host_ref: float | None = None
    ) -> tuple[pd.DataFrame | None, dict[str, Any]]:
        why = frame_quality(fr)
        if not why and dose is not None and not dose[k] > 0:
            # a frame recorded with the beam blanked (Series allows dose 0): nothing to
            # count against; detect_clusters refused it and the whole analysis stopped
            why = "zero dose (beam blanked): no cross-sections or atom counts"
        if why:
            return None, {"frame": k, "skipped": True, "reason": why}
        if not scan_correction:  # (aligned frames: shifted, their end rows replicated)
            tails[k] = trailing_constant_rows(fr)
        f = np.asarray(fr, float)
        if register and np.any(shifts[k] != 0):
            f = shift_frame(f, -shifts[k])
        img = Image(f, px, dose_e_per_A2=None if dose is None else float(dose[k]), metadata=beam)
        opts = {"lattice_A": lattice_A, "lattice_angle_deg": angle, **detect}
        if host_ref is not None and opts.get("host_reference") is None:
            opts["host_reference"] = host_ref
        d = detect_clusters(img, gain=gain, offset=offset, frame=k, **opts)
        row: dict[str, Any] = {"frame": k, "skipped": False, "reason": ""}
        row["host_model"] = str(d.attrs.get("host_model", ""))
        row["host_reference_used"] = bool(d.attrs.get("host_reference_used", False))
        if crystal:
            cmask, voids, _, objects = _segment_objects(f, px, lattice_A, None, 20.0)
            solid = cmask & ~voids
            row.update(
                area_A2=float(solid.sum()) * px * px,
                # the crystal metrics follow the largest bright object only
                second_object_area_A2=float(objects[1]) if objects.size > 1 else 0.0,
                void_area_A2=float(voids.sum()) * px * px,
                n_voids=int(ndimage.label(voids)[1]),
                # detected electrons (counts / gain): the detector gain is no property
                # of the crystal, so neither this nor the mass-loss rate may scale with it
                integrated_counts=float((f - (offset or 0.0))[cmask].sum()) / float(gain or 1.0),
                # part of the crystal may lie outside the field: its area and intensity
                # then change with the drift, not only with the degradation
                crystal_at_border=bool(
                    cmask[0].any() or cmask[-1].any() or cmask[:, 0].any() or cmask[:, -1].any()
                ),
                crystal_cluster_share=_cluster_share(cmask, d, f, float(offset or 0.0)),
            )
        if phase_check:
            row["phase"] = fft_phase_check(f, pixel_size_A=px)["phase"]
        if col_pos is not None:
            ok = col_frame_ok[k]
            if not ok:
                off = _column_offset_px(f, col_ref, lattice_A)
                ok = off <= COLUMN_TOL_PX
                col_checked[k] = off
            if ok:
                col_scs[k] = _column_scs(img, col_pos, gain, offset, col_opts)
        return d, row

    from concurrent.futures import ThreadPoolExecutor

    block: list[tuple[int, np.ndarray]] = []
    # the host's empty-site ratio carried into frames whose clusters cover the crystal
    # ("no_reference"): right after a frame that measured it, or where the host lattice
    # is still seen (the rule and its figures: _host.HostReference)
    host = HostReference(pixel_size_A=px)

    def flush(pool: Any) -> None:
        done = list(pool.map(lambda kf: process(*kf), block))
        for (k, fr), (d, row) in zip(block, done, strict=True):
            if d is not None:
                # (the frame's pixels only where the rule reads them: one copy fewer per frame)
                raw = np.asarray(fr, float) - float(offset or 0.0) if host.needs_frame(d) else None
                scale = None if dose is None else float(gain or 1.0) * float(dose[k])
                covered = row["host_model"] == "no_reference"
                kappa = host.reference(d, raw, scale=scale)
                if kappa is not None:
                    d, row = process(k, fr, kappa)
                d = host.update(d, raw, scale=scale)
                # (measured where the frame alone was "no_reference" only: one FFT each)
                row["host_lattice_power"] = host.lattice_power(raw, scale) if covered else np.nan
                row["host_flag"] = str(d.attrs.get("host_flag", ""))
            if d is None:
                skipped.append(row["frame"])
            else:
                dets.append(d)
            rows.append(row)
        block.clear()

    if beside:
        reg_beside = _Beside(_register, series, max_lag)
    with (
        _cancel_on_error(reg_beside),  # (first in, last out: the BLAS limits unwind in order)
        single_blas_thread(),
        ThreadPoolExecutor(max_workers=max(1, int(n_workers))) as pool,
    ):
        for k, fr in iter_frames(frames_src):
            if angle is None and not frame_quality(fr):
                # orientation of the host lattice from the first usable frame, kept for all
                try:
                    la, ang, strength = estimate_lattice(np.asarray(fr, float), px)
                    # the 110 of a damaged first frame is 45° off the cell axes
                    angle = host_cell(la, ang)[1] if strength >= 20 else 0.0
                    if strength >= 20:
                        r = fourfold_ratio(np.asarray(fr, float), px, la, ang)
                        if np.isfinite(r):
                            fourfold = (k, la, min(r, 1.0 / r) if r > 0 else 0.0)
                        cell_A = host_cell(la, ang)[0]
                        columns_seen = (k, column_width(np.asarray(fr, float), px, cell_A, angle))
                except DataError:
                    angle = 0.0
            block.append((k, fr))
            if len(block) >= 2 * max(1, int(n_workers)):
                flush(pool)
        if block:
            flush(pool)
    if reg_beside is not None:
        drift = reg_beside.result()
        shifts = drift[["dy_px", "dx_px"]].to_numpy(float)
        _to_frame0(dets, shifts, px)
        jitter = _line_jitter(series, drift)
        notes[n_cal:n_cal] = _jitter_notes(jitter, scan_correction)
    # a scan stopped part-way (its last rows one fill value) would enter with its crystal
    # and clusters cut: e.g. half the area and a third of the Pb0 of its neighbours
    for k, cut in incomplete_scans(tails, shifts[:, 0], n_rows=series.shape[1]).items():
        skipped.append(k)
        dets = [d for d in dets if not (len(d) and int(d["frame"].iloc[0]) == k)]
        col_scs.pop(k, None)
        for r in rows:
            if r["frame"] == k:
                r.clear()
                r.update(
                    frame=k,
                    skipped=True,
                    reason=f"incomplete scan: the last {cut} rows hold one value",
                )
    if len(skipped) == n:
        # why: a series recorded with the beam blanked (dose 0), or all frames blank, said
        # only "unusable"
        why: dict[str, list[int]] = {}
        for r in rows:
            if r.get("skipped"):
                why.setdefault(str(r.get("reason", "")), []).append(int(r["frame"]))
        text = "; ".join(
            f"{reason} (frame{'s' if len(ks) > 1 else ''} "
            + (
                f"{ks[0]}-{ks[-1]}"
                if len(ks) > 2 and ks == list(range(ks[0], ks[-1] + 1))
                else ", ".join(map(str, ks))
            )
            + ")"
            for reason, ks in why.items()
        )
        raise DataError(f"every frame of the series is unusable ({n} frames): {text}")
    det = pd.concat(dets, ignore_index=True) if dets else pd.DataFrame(columns=CLUSTER_COLUMNS)
    no_counts = not det["n_atoms"].notna().any()
    # without a dose the segment area (Å²) links clusters between frames; the lineage's
    # atoms come from n_atoms (NaN then), as in the pipeline step
    size = "area_A2" if no_counts else "n_atoms"
    tracks, lineage = track_clusters(det, size_column=size, **track)
    fr_tab = _frames_table(series, drift, pd.DataFrame(rows), tracks, lineage)
    if "crystal_cluster_share" in fr_tab:
        usable = ~fr_tab["skipped"].fillna(False).astype(bool)
        # the first frames decide: a crystal that turns into Pb clusters late in its
        # series is degradation, not an empty field
        share = fr_tab.loc[usable, "crystal_cluster_share"].dropna().iloc[:3]
        if len(share) and share.median() >= NO_CRYSTAL_CLUSTER_SHARE:
            # the brightest object is a Pb cluster: crystal metrics and the mass-loss row
            # would describe a crystal that is not there
            gone = [c for c in _CRYSTAL_COLUMNS if c in fr_tab]
            fr_tab[gone] = np.nan
            notes.append(
                f"no nanocrystal in the field: detected Pb clusters account for "
                f"{share.median():.0%} (median of the first {len(share)} frames; column "
                "crystal_cluster_share) of the brightest object's signal, so crystal area, "
                "shrinkage, voids and integrated intensity are left empty (NaN) and no "
                "mass-loss row is fitted; the clusters are counted as usual"
            )
    if "second_object_area_A2" in fr_tab and fr_tab["area_A2"].notna().any():
        usable = ~fr_tab["skipped"].fillna(False).astype(bool)
        early = fr_tab.loc[usable, ["area_A2", "second_object_area_A2"]].dropna().iloc[:3]
        share = (early["second_object_area_A2"] / early["area_A2"]).median()
        second = early["second_object_area_A2"].median()
        if len(early) and share >= SECOND_OBJECT_SHARE and second >= SECOND_OBJECT_MIN_A2:
            notes.append(
                f"the field holds a second bright object of {second:.4g} Å² beside the "
                f"crystal ({early['area_A2'].median():.4g} Å²; medians of the first "
                f"{len(early)} frames, column second_object_area_A2): e.g. another crystal. "
                "Crystal area, voids, shrinkage, integrated intensity and the "
                "mass-loss/Br-loss rows describe the largest object only, while clusters "
                "are detected and counted over the whole field"
            )
    note = _host_heavy_note(det)
    if note:
        notes.append(note)
    non_square = fourfold is not None and fourfold[2] < FOURFOLD_MIN
    if non_square:
        fr_tab.attrs["host_not_001"] = {"frame": int(fourfold[0]), "ratio": float(fourfold[2])}
        notes.append(_non_square_note(*fourfold, br_loss=bool(br_loss), columns=bool(columns)))
    if columns_seen is not None and not non_square:
        # (the width is measured from the 200 and 220 of a [001] cell: not on another zone)
        fr_tab.attrs["column_sigma_A"] = columns_seen[1]
        # (pixels coarser than COARSE_PIXEL_A have their note already)
        note = imaging_note(
            columns_seen[1], px, frame=columns_seen[0], sampling=px <= COARSE_PIXEL_A
        )
        if note:
            notes.append(note)
    if scan_rms is not None:
        fr_tab["scan_rms_line_offset_px"] = scan_rms
    if jitter is not None:
        fr_tab["line_jitter_px"] = jitter["per_frame"]
    n_unrel = int(drift.attrs.get("n_unreliable", 0))
    if "crystal_at_border" in fr_tab:
        edge = fr_tab.loc[fr_tab["crystal_at_border"].fillna(False).astype(bool), "frame"]
        if len(edge):
            notes.append(
                f"the crystal outline reaches the frame border in {len(edge)} of {n} frames "
                f"(first {int(edge.iloc[0])}; column crystal_at_border): its area, integrated "
                "intensity and the mass-loss/Br-loss rows there include crystal leaving or "
                "entering the field, not only degradation"
            )
    if "Pb0_falls_later" in fr_tab and fr_tab["Pb0_falls_later"].any():
        hi = fr_tab.loc[fr_tab["Pb0_falls_later"], "frame"].to_numpy()
        notes.append(
            f"the Pb⁰ total of {hi.size} of {n} frames (first {int(hi[0])}; column "
            f"Pb0_falls_later) exceeds a later frame's by more than {PB0_FALL_SIGMA:g} σ of "
            "the frame-to-frame errors (n_Pb0_err_stat): Pb⁰ formed by Br loss does not "
            "revert, so read those totals as over-counts (damaged host counted as clusters, "
            "most often on small crystals late in a series) or Pb leaving the field"
        )
    if "Pb0_dip" in fr_tab and fr_tab["Pb0_dip"].any():
        lo = fr_tab.loc[fr_tab["Pb0_dip"], "frame"].to_numpy()
        notes.append(
            f"the Pb⁰ total of {lo.size} of {n} frames (first {int(lo[0])}; column Pb0_dip) "
            f"falls more than {PB0_FALL_SIGMA:g} σ below the frame before it and the frame "
            "after it is back: Pb⁰ does not revert, so read those totals as under-counts "
            "(a cluster missed or counted low in that frame)"
        )
    used = fr_tab.get("host_reference_used")
    covered = fr_tab["host_model"].eq("no_reference") if "host_model" in fr_tab else None
    if used is not None and covered is not None:
        covered = covered | used.fillna(False).astype(bool)
    if covered is not None and covered.any():
        hr = fr_tab.loc[covered, "frame"]
        notes.append(
            f"in {hr.size} of {n} frames (first {int(hr.iloc[0])}; columns host_model, "
            "host_reference_used) clusters cover the crystal, so the host's empty-site "
            "ratio could not be measured there (carried from the earlier frames into a "
            "frame right after one that measured it or whose host lattice is still seen, "
            "column host_lattice_power: host_reference_used); host remnants "
            "that lost their lattice are counted as Pb⁰ in those frames (KMC 3 nm crystals "
            "with 11-41 host Pb left: 1.1-2.1x the true Pb⁰; about 1 once the host is gone)"
        )
    if "host_flag" in fr_tab and fr_tab["host_flag"].fillna("").astype(bool).any():
        hf = fr_tab.loc[fr_tab["host_flag"].fillna("").astype(bool), "frame"]
        notes.append(
            f"in {hf.size} of {n} frames (first {int(hf.iloc[0])}; column host_flag) clusters "
            "cover the crystal while its host lattice is still seen (host_lattice_power), "
            "and no earlier frame measured the host's empty-site ratio to carry: their "
            "clusters are flagged host_ok False (host Pb may be counted as Pb⁰)"
        )
    if register and n_unrel:
        bad = drift.loc[~drift["drift_reliable"], "frame"].to_numpy()
        notes.append(
            f"drift unreliable in {n_unrel} of {n} frames (first {int(bad[0])}, last "
            f"{int(bad[-1])}; column drift_reliable/drift_flag gives the reason: e.g. no "
            "rigid structure to register to (crystal gone, mobile clusters only), non-rigid "
            "motion, or a drift error above the reliability limit at low dose); their "
            "drift carries the error in drift_err_px (chained, growing uncertainty where "
            "the frame's content failed a test), positions there carry that error, and the "
            "mobility fit leaves those frames out"
        )
    if register and drift.attrs.get("groupwise"):
        notes.append(
            "drift of the frames the running reference could not register reliably from the "
            "group-wise registration (each frame against the mean of all frames, RTS "
            "smoother; register_drift(groupwise=...))"
        )
    br_res = None
    if br_loss:
        br_res, note = _image_br_loss(series, skipped, lattice_A, br_loss_options)
        if note:
            notes.append(note)
        if br_res is not None:
            fr_tab = fr_tab.merge(br_res.frame_columns(), on="frame", how="left")
    events = lineage_events(lineage, fr_tab)
    if summary:
        from perovstem.quantify.mechanism import CONDITION_TOLERANCE, mechanism_summary

        x = (
            "cumulative_dose_e_per_A2"
            if fr_tab["cumulative_dose_e_per_A2"].notna().all()
            else "frame"
        )
        usable = fr_tab[~fr_tab["skipped"]]
        max_step = float(track.get("max_step_A", 8.0))
        mob = {"max_step_A": max_step, "rng": 0}
        mob_tracks, linked, note = _hop_tracks(tracks, fr_tab, how=hop_tracks, max_step_A=max_step)
        if note:
            notes.append(note)
        summ = mechanism_summary(usable, x=x, ci=ci, tracks=mob_tracks, mobility=mob)
        if non_square and not summ.empty:
            # host columns counted as Pb0 (the note above): every row built on the clusters
            # says so itself, so that a line read without the notes is not taken as a result
            on_clusters = ~summ["observable"].isin(HOST_OBSERVABLES)
            summ["text"] = summ["text"].where(
                ~on_clusters | summ["text"].isna(),
                "UNRELIABLE (host not a [001] projection, see the notes): " + summ["text"],
            )
            summ["host_not_001"] = on_clusters
        if len(usable) < 2:
            notes.append(
                f"{len(usable)} usable frame{'' if len(usable) == 1 else 's'}: no kinetic "
                "summary (rates, tracks and drift need two frames or more); the frame's "
                "crystal and clusters are in the tables"
            )
        if mob_tracks is not None:
            summ.attrs["mobility_tracks"] = linked
            measured = (
                (summ["process"] == "mobility") & summ["value"].notna()
                if {"process", "value"} <= set(summ.columns)
                else pd.Series(dtype=bool)
            )
            if linked.get("tracks") != "lineage" and measured.any():
                from perovstem.insitu.tracking import STRICT_HOP_RATE_NOTE

                notes.append(STRICT_HOP_RATE_NOTE)
        conds = summ.attrs.get("conditions", [])
        if len(conds) > 1:  # one series split into several conditions: say how and why
            notes.append(
                f"the kinetic summary splits the series into {len(conds)} conditions "
                f"({'; '.join(_condition_text(d) for d in conds[:6])}"
                f"{'; ...' if len(conds) > 6 else ''}): temperatures > "
                f"{CONDITION_TOLERANCE['temperature_K'][1]:g} K or dose rates ("
                f"{series.dose_rate_rule or 'dose per frame / frame interval'}) > "
                f"{100 * CONDITION_TOLERANCE['dose_rate_e_per_A2_s'][1]:g} % apart; a "
                "condition with < 5 frames gets no fit"
                + (
                    " (non-uniform frame intervals change the dose rate when the exposures "
                    "are not recorded)"
                    if series.dose_rate_rule != "dose / exposure"
                    else ""
                )
            )
    else:
        summ = pd.DataFrame()
    col_tab = col_counts = None
    if columns:
        col_tab, col_counts = _count_columns(series, col_pos, col_scs, col_opts, lattice_A)
        left_out = sorted(k for k, v in col_checked.items() if v > COLUMN_TOL_PX)
        kept = sorted(k for k, v in col_checked.items() if v <= COLUMN_TOL_PX)
        col_tab.attrs["drift_checked_frames"] = {
            int(k): col_checked[k] for k in sorted(col_checked)
        }
        if left_out:
            notes.append(
                f"column counts leave out {len(left_out)} frame(s) with an unreliable drift "
                f"> {COLUMN_TOL_PX} px off the column reference ({left_out[:10]}); "
                f"n_atoms_last is frame {col_tab.attrs['frames'][-1]}"
            )
        if kept:
            notes.append(
                f"column counts use {len(kept)} frame(s) with an unreliable drift that "
                f"correlate with the column reference within {COLUMN_TOL_PX} px ({kept[:10]})"
            )
    for t in (fr_tab, drift, tracks, lineage, events, summ, col_tab, col_counts):
        if t is not None:
            t.attrs["pixel_size_A"] = px
    return InsituResult(
        fr_tab, drift, tracks, lineage, events, summ, skipped, col_tab, col_counts, br_res, notes
    )


#: imaging under which clusters on the crystal were validated (`bench_clusters`, issue #7):
#: host columns of σ ≈ 0.38 Å (probe 0.33 Å; :func:`~perovstem.insitu.lattice.
#: column_width`) sampled at 0.4–0.5 Å/px (σ ≥ 0.75 px).  Beyond these the on-crystal
#: precision fell on the held-out recipe (seeds 2001–2016): columns of 0.49 Å (probe 0.45)
#: or a 0.7 Å pixel (σ 0.55 px) and worse; see ``docs/insitu.md`` "Imaging conditions"
COLUMN_SIGMA_MAX_A = 0.43
COLUMN_SIGMA_MIN_PX = 0.65
IMAGING_NOTE_FIGURES = (
    "the precision of the detections on the crystal fell on simulated series (16 series "
    "each, `bench_clusters` imaging sets) from 0.91 (0.38 Å columns at 0.5 Å/px) to "
    "0.78–0.79 (0.49 Å columns, or 0.7 Å pixels), 0.56 (1 Å pixels) and 0.35 (0.62 Å "
    "columns, most of them flagged host_ok False)."
)


def imaging_note(
    sigma_A: float, pixel_size_A: float, *, frame: int = 0, sampling: bool = True
) -> str:
    """A note where the host columns' width ``sigma_A`` (Å, from
    :func:`~perovstem.insitu.lattice.column_width`) or, with ``sampling``, the pixel size
    lie outside the imaging under which on-crystal Pb-cluster detection was validated; ""
    inside it."""
    if not np.isfinite(sigma_A):
        if not sampling:
            return ""
        return (
            f"the host columns' width could not be measured on frame {frame} from its 200 "
            f"and 220 reflections (beyond the Nyquist frequency at {pixel_size_A:.3g} Å/px, "
            "or too weak): clusters on the crystal were validated for columns of σ ≈ 0.38 Å "
            "sampled at 0.4–0.5 Å/px only"
        )
    why = []
    if sigma_A > COLUMN_SIGMA_MAX_A:
        why.append(
            f"columns of σ = {sigma_A:.2f} Å (a wider probe or more blur than 0.33 Å, or a "
            "disordered lattice)"
        )
    if sampling and sigma_A / pixel_size_A < COLUMN_SIGMA_MIN_PX:
        why.append(
            f"{pixel_size_A:.3g} Å pixels ({sigma_A / pixel_size_A:.2f} px per column σ: "
            "the lattice is undersampled and its cell average keeps a moiré)"
        )
    if not why:
        return ""
    return (
        f"frame {frame} shows {' and '.join(why)}: Pb-cluster detection on the crystal was "
        "validated for columns of σ ≈ 0.38 Å sampled at 0.4–0.5 Å/px; under such imaging "
        f"{IMAGING_NOTE_FIGURES} Clusters in the vacuum beside the crystal are not affected. "
        "Read n_clusters, n_Pb0_detected and the cluster rows with that caveat"
    )


def _non_square_note(
    frame: int, spacing_A: float, ratio: float, *, br_loss: bool, columns: bool = False
) -> str:
    """The note on a host lattice that is not a square [001] projection."""
    # the host model (cell average, empty lattice sites) is the square [001] cell: on
    # another projection the host columns survive it and are counted as Pb0
    return (
        f"the host lattice of frame {frame} is not a square projection (its "
        f"{spacing_A:.3g} Å reflection turned by 90° has {ratio:.2g} of its "
        "power or less, a [001] perovskite about 1): e.g. a [011] or [111] zone axis. "
        "Pb-cluster detection removes the host with the square [001] cell, so host "
        "columns are counted as Pb⁰ clusters: n_clusters, n_Pb0_detected, the cluster "
        "tables and the nucleation/growth/mobility rows are not reliable (drift, crystal "
        "area and intensity are not affected)"
        + (
            "; the image-derived Br loss maps the cross-section onto a [001] template "
            "(D_Br came out 23 % high on [011] and [111] KMC crystals)"
            if br_loss
            else ""
        )
        + (
            "; the per-column atom counts (columns, atoms lost) were fitted with the [001] "
            "cell and its libraries, and are not reliable either"
            if columns
            else ""
        )
    )


def imaging_check(frame: np.ndarray, pixel_size_A: float) -> tuple[float, float, str]:
    """The host lattice of one frame, as :func:`analyze_series` checks it, from one lattice
    estimate: its fourfold ratio (:func:`fourfold_ratio`, folded to ≤ 1), the host column
    width (Å) and a note.  Below ``FOURFOLD_MIN`` (not a [001] projection) the note is the
    one on such a host and the width NaN (it is measured on a [001] host's 200 and 220);
    else the :func:`imaging_note` on the width (pixel size included).  NaN, NaN, "" without
    a clear host lattice."""
    f = np.asarray(frame, float)
    try:
        la, ang, strength = estimate_lattice(f, pixel_size_A)
    except DataError:
        return float("nan"), float("nan"), ""
    if strength < 20:
        return float("nan"), float("nan"), ""
    r = fourfold_ratio(f, pixel_size_A, la, ang)
    r = (min(r, 1.0 / r) if r > 0 else 0.0) if np.isfinite(r) else float("nan")
    if r < FOURFOLD_MIN:
        return float(r), float("nan"), _non_square_note(0, la, r, br_loss=False)
    cell_A, angle = host_cell(la, ang)
    sigma = column_width(f, pixel_size_A, cell_A, angle)
    return float(r), sigma, imaging_note(sigma, pixel_size_A)


def _dose_bound_notes(
    series: Series, gain: Any, offset: Any, dose: np.ndarray | None, px: float
) -> list[str]:
    """A dose (or gain) too low for the frames' counts: the HAADF detector cannot count
    more electrons than hit the specimen.  The brightest 5 × 5-pixel region of the first
    usable frame, in detected electrons per incident electron (counts − offset) /
    (gain · dose · dx²), above 1 is impossible (thick crystals send ≲ 0.3 to the annular
    detector).  A series given 100 e⁻/Å² for frames recorded at 5000 read 5894 Pb⁰ atoms in
    a crystal of 1000 Pb, without a word."""
    if dose is None:
        return []
    from scipy import ndimage

    g = 1.0 if gain is None else float(gain)
    o = 0.0 if offset is None else float(offset)
    for k, fr in iter_frames(series):
        if frame_quality(fr) or not dose[k] > 0:
            continue
        a = np.asarray(fr, float) - o
        peak = float(ndimage.uniform_filter(a, 5, mode="nearest").max())
        ratio = peak / (g * float(dose[k]) * px * px)
        if ratio <= 1.0:
            return []
        return [
            f"frame {k}: its brightest region counts {ratio:.3g} detected electrons per "
            f"incident electron at the given dose ({float(dose[k]):.4g} e⁻/Å²) and gain "
            f"({g:g} counts/e⁻); a HAADF detector sees at most a fraction of the beam, so the "
            f"dose or the gain is at least {ratio:.3g}x too low and every Pb⁰ atom count "
            "(∝ 1/(gain·dose)) is that much too high: check the dose and --gain"
        ]
    return []


def _calibration_notes(series: Series, gain: Any, offset: Any) -> list[str]:
    """What was assumed for a detector gain or offset the series does not carry."""
    if gain is not None and offset is not None:
        return []
    from perovstem.atoms.noise import describe_series_estimate

    what = []
    if gain is None:
        # SCS = excess / (gain·dose): an unknown gain scales every atom count by 1/gain
        what.append(
            "no detector gain (series metadata 'gain', CLI --gain): counts are taken as "
            "detected electrons (gain 1); Pb⁰ atom counts scale with 1/gain"
        )
        cpe = series.metadata.get("counts_per_electron_in_file")
        if cpe is not None:
            # a camera property in SerialEM's .mdoc: not taken for a STEM detector's gain
            what.append(
                f"the SerialEM .mdoc records {series.metadata.get('counts_per_electron'):g} "
                f"counts per electron ({cpe:g} in this file's counts): a camera's; if these "
                f"frames are that camera's, give --gain {cpe:g} (a STEM detector's counts are "
                "not electrons: measure its gain with --gain auto)"
            )
    if offset is None:
        # the shot-noise variance is gain·(counts - offset): a zero level left in the
        # counts (integer detector frames) inflates it, and clusters are missed (a uint16
        # KMC series with offset 2000, gain 4: none found on the first two frames)
        what.append(
            "no detector offset (metadata 'offset', --offset): counts are taken as 0 for no "
            "signal; a zero level left in the counts (e.g. integer frames with an offset) "
            "makes the shot-noise detection thresholds too high, so clusters are missed, "
            "not only rescaled"
        )
    return ["; ".join(what) + describe_series_estimate(series)]


def _scan_corrected(
    series: Series, drift: pd.DataFrame, register: bool, opts: dict[str, Any] | None
) -> tuple[Series, np.ndarray]:
    """Rigidly aligned, scan-jitter-corrected series and the rms line offset per frame."""
    from perovstem.insitu.register import apply_drift

    allowed = {"band_rows", "smooth_rows", "max_shift_px"}
    opts = dict(opts or {})
    bad = set(opts) - allowed
    if bad:
        raise ParameterError(
            f"unknown key(s) {sorted(bad)} in `scan_options` (allowed: {sorted(allowed)})"
        )
    if not register:  # no drift: mark the unusable frames so they stay out of the reference
        bad_frames = [k for k, fr in iter_frames(series) if frame_quality(fr)]
        drift = drift.assign(skipped=drift["frame"].isin(bad_frames))
    out = apply_drift(series, drift, scan_correction=True, **opts)
    rms = out.metadata.get("scan_correction", {}).get("rms_line_offset_px")
    rms_a = np.full(series.n_frames, np.nan) if rms is None else np.asarray(rms, float)
    return out, rms_a


def _line_jitter(series: Series, drift: pd.DataFrame) -> dict[str, Any] | None:
    """Measured fast-scan line jitter (:func:`measure_line_jitter`): per-frame values (NaN
    where not measured), their median (NaN with < 3 measured), how many frames could not be
    measured because the line offsets were not locked on the structure, and whether it is
    line-to-line (white) jitter."""
    from perovstem.insitu.register import LINE_PART_SCATTER_MAX_PX, measure_line_jitter

    tab = measure_line_jitter(series, drift)
    if tab.empty:
        return None
    jit = tab["line_jitter_px"].to_numpy(float)
    ok = np.isfinite(jit)
    per = np.full(series.n_frames, np.nan)
    per[tab["frame"].to_numpy(int)] = jit
    med = float(np.median(jit[ok])) if ok.sum() >= 3 else float("nan")
    # the errors of a full line's offset: about those of a part (half the line) / sqrt 2
    scatter = tab["line_part_scatter_px"].to_numpy(float)
    noise = float(np.median(scatter[ok])) / np.sqrt(2.0) if ok.any() else float("nan")
    rho = float(np.nanmedian(tab["line_lag1_corr"])) if ok.any() else float("nan")
    return {
        "per_frame": per,
        "median_px": med,
        "n": int(ok.sum()),
        "tried": len(tab),
        "unlocked": int(np.sum(scatter > LINE_PART_SCATTER_MAX_PX)),
        # white jitter: neighbouring lines correlate at 0.2-0.6 (1 px, KMC series), a
        # smooth distortion (period of 10+ lines) at > 0.9
        "per_line": bool(med > 2.0 * noise and rho < LINE_JITTER_SMOOTH_CORR),
    }


def _image_br_loss(
    series: Series, skipped: list[int], lattice_A: float, opts: dict[str, Any] | None
) -> tuple[Any, str]:
    """:func:`br_loss_from_images` on the frames before the first skipped one; a note on failure."""
    from perovstem.quantify.br_loss import br_loss_from_images

    opts = dict(opts or {})
    if "lattice_A" in opts:
        raise ParameterError("`br_loss_options` must not set `lattice_A` (use `lattice_A`)")
    s = series
    if skipped:
        first = min(skipped)
        if first < 5:
            return None, (
                f"image-derived Br loss not computed: frame {first} is unusable and fewer than "
                "5 usable frames precede it"
            )

        def head(v: Any) -> Any:
            return None if v is None else np.asarray(v)[:first]

        s = series.replace(
            data=series.data[:first],
            time_s=head(series.time_s),
            dose_e_per_A2=head(series.dose_e_per_A2),
            temperature_K=head(series.temperature_K),
            pressure_Pa=head(series.pressure_Pa),
        )
    try:
        res = br_loss_from_images(s, lattice_A=lattice_A, **opts)
    except DataError as exc:  # bad options (ParameterError) are raised, data problems noted
        return None, f"image-derived Br loss not computed: {exc}"
    if skipped:
        res.info["note"] = f"frames from {min(skipped)} on (first unusable frame) not used"
    if "termination" not in opts:
        # the exposed Br per Br lost depends on the facets' outer layer, which the images
        # are not tested for: say which one the templates assumed
        return res, (
            "image-derived D_Br assumes CsBr-terminated {100} facets (not measured from the "
            "images; on PbBr2-terminated 5 nm cubes this template read D_Br 22-30 % high: "
            "give br_loss_options termination='PbBr2' / --termination PbBr2 if so)"
        )
    return res, ""


_COLUMN_DEFAULTS: dict[str, Any] = {
    "types": ("PbBr", "Br", "Cs"),
    "hmm_model": "loss",
    "max_states": 20,
    "cd_fraction": 0.0,
    "max_iter": 30,
    "library": "fitted",
    "library_options": None,
    "fit_scale": None,
    "refine": "none",
    "width": "series",
    "width_dose": 4e3,
    "positions": None,
}
_LIBRARY_OPTIONS = {
    "width_dose_e_per_A2",
    "reference_thickness",
    "termination",
    "dose_e_per_A2",
    "voltage_kV",
    "probe_sigma_A",
    "tail_fraction",
    "n_cells",
    "n_realizations",
    "rng",
}


def _column_options(opts: dict[str, Any] | None) -> dict[str, Any]:
    o = dict(_COLUMN_DEFAULTS)
    for key, v in (opts or {}).items():
        if key not in o:
            raise ParameterError(
                f"unknown key {key!r} in `column_options` (allowed: {sorted(_COLUMN_DEFAULTS)})"
            )
        o[key] = v
    if o["hmm_model"] not in ("free", "loss", "dose"):
        raise ParameterError(f"`column_options['hmm_model']` must be free/loss/dose, got {o!r}")
    o["types"] = tuple(o["types"])
    for key, allowed in (("refine", ("first", "frame", "none")), ("width", ("series", "frame"))):
        if o[key] not in allowed:
            raise ParameterError(
                f"`column_options[{key!r}]` must be one of {list(allowed)}, got {o[key]!r}"
            )
    if not (isinstance(o["width_dose"], (int, float)) and o["width_dose"] >= 0):
        raise ParameterError(
            f"`column_options['width_dose']` must be a dose >= 0 e⁻/Å², got {o['width_dose']!r}"
        )
    lib = o["library"]
    if lib is None:
        o["library"] = "fitted"
    elif isinstance(lib, str) and lib not in ("fitted", "table"):
        raise ParameterError(
            f"`column_options['library']` must be 'fitted', 'table' or {{type: library}}, "
            f"got {lib!r}"
        )
    elif not isinstance(lib, (str, dict)):
        raise ParameterError(
            f"`column_options['library']` must be 'fitted', 'table' or {{type: library}}, "
            f"got {type(lib).__name__}"
        )
    lo = dict(o["library_options"] or {})
    bad = set(lo) - _LIBRARY_OPTIONS
    if bad:
        raise ParameterError(
            f"unknown key(s) {sorted(bad)} in `column_options['library_options']` "
            f"(allowed: {sorted(_LIBRARY_OPTIONS)})"
        )
    o["library_options"] = lo
    if o["fit_scale"] is None:  # the fitted library is calibrated to the estimator
        o["fit_scale"] = o["library"] != "fitted"
    return o


def _column_library(
    series: Series,
    typ: str,
    frames: np.ndarray,
    opts: dict[str, Any],
    lattice_A: float,
    pos: pd.DataFrame,
) -> Any:
    """SCS library of one column type for the HMM (see ``column_options['library']``).

    Default ``"fitted"``: :func:`perovstem.atoms.fitted_library.fitted_scs_library` — the
    per-frame column fit (same width and position treatment) applied to simulated slabs at
    the series' pixel size, frame size, lattice parameter, beam energy
    (``metadata['voltage_kV']`` or ``['high_tension_kV']``, else 300 kV) and median dose per
    analysed frame, about as many cells per edge as the found crystal, default probe (not
    read from the data); with
    a Cd fraction the Pb–B library is scaled by the tabulated Cd/Pb ratio.
    ``"table"``: the total cross-sections of :func:`perovstem.simulate.scs_library`.
    """
    from perovstem.atoms.fitted_library import (
        LIBRARY_TYPES,
        fitted_scs_library,
        with_cd_fraction,
    )
    from perovstem.simulate import scs_library

    lib = opts["library"]
    if isinstance(lib, dict):
        if typ in lib:
            return lib[typ]
        lib = "fitted"
    m = int(opts["max_states"])
    kw = {"cd_fraction": opts["cd_fraction"]} if typ == "PbBr" else {}
    kv = voltage_kV_of(series.metadata) or 300.0  # the file's (high tension) or the simulator's
    from perovstem.atoms._conditions import library_detector

    kw["detector_mrad"] = library_detector(series.metadata)
    if lib == "table":
        return scs_library(typ, m, voltage_kV=kv, **kw)
    if typ not in LIBRARY_TYPES:
        raise ParameterError(
            f"no fitted library for column type {typ!r} (has {list(LIBRARY_TYPES)}); give "
            "`column_options['library']` = {type: library} or 'table'"
        )
    lo = dict(opts["library_options"])
    lo.setdefault("lattice_A", float(lattice_A))
    lo.setdefault("shape", tuple(int(v) for v in series.shape[1:]))
    # a slab of about the crystal's size: (cells per edge)² Pb–B columns
    n_b = int((pos["type"] == "PbBr").sum())
    lo.setdefault("n_cells", int(np.clip(np.rint(np.sqrt(n_b)), 3, 12)) if n_b else 8)
    lo["width"] = opts["width"]
    lo.setdefault("width_dose_e_per_A2", pos.attrs.get("width_dose_e_per_A2"))
    lo["fit_positions"] = opts["refine"] == "frame"
    lo.setdefault("voltage_kV", kv)
    lo.setdefault("detector_mrad", kw["detector_mrad"])
    lo.setdefault("dose_e_per_A2", float(np.median(np.asarray(series.dose_e_per_A2)[frames])))
    tab = fitted_scs_library(m, pixel_size_A=series.pixel_size_A, max_iter=opts["max_iter"], **lo)[
        typ
    ]
    return with_cd_fraction(
        tab,
        typ,
        kw.get("cd_fraction", 0.0),
        voltage_kV=lo["voltage_kV"],
        detector_mrad=lo["detector_mrad"],
    )


def _normalized(img: Image, gain: Any, offset: Any) -> Image:
    from perovstem.atoms import normalize_image

    return normalize_image(
        img,
        gain=None if gain is None else float(gain),
        offset=None if offset is None else float(offset),
    )


def _reference_image(
    frames: Any,
    shifts: np.ndarray,
    register: bool,
    dose: np.ndarray,
    px: float,
    target: float,
    use: np.ndarray,
) -> Image:
    """Sum of the first usable registered frames (``use``: reliable drift) until their dose
    reaches ``target``.

    At least one frame, at most 8 (the crystal changes).  ``metadata['n_frames']`` holds
    the number of frames summed (the offset to remove is that many times the frame offset).
    """
    total = None
    d = 0.0
    m = 0
    for k, fr in iter_frames(frames):
        if not use[k] or frame_quality(fr):
            continue
        f = np.asarray(fr, float)
        if register and np.any(shifts[k] != 0):
            f = shift_frame(f, -shifts[k])
        total = f if total is None else total + f
        d += float(dose[k])
        m += 1
        if d >= 0.99 * target or m >= 8:
            break
    if total is None:
        raise DataError("every frame of the series is unusable: no columns to count")
    return Image(total, px, dose_e_per_A2=d, metadata={"n_frames": m})


def _find_column_positions(
    img: Image, gain: Any, offset: Any, opts: dict[str, Any], lattice_A: float
) -> pd.DataFrame:
    """Column positions (``x_A, y_A, type``) and widths on the reference image.

    ``img`` is the sum of the first usable registered frames (:func:`_reference_image`);
    ``attrs`` get ``rho_A`` (widths per type, or None) and ``width_dose_e_per_A2``.
    """
    offset = (offset or 0.0) * img.metadata.get("n_frames", 1)
    if opts["positions"] is not None:
        pos = pd.DataFrame(opts["positions"])
        if not {"x_A", "y_A", "type"} <= set(pos.columns):
            raise ParameterError("`column_options['positions']` needs columns x_A, y_A, type")
    else:
        from perovstem.atoms import cspbbr3_001_cell, find_columns

        pos = find_columns(_normalized(img, gain, offset), cell=cspbbr3_001_cell(lattice_A))
    pos = pos[pos["type"].isin(opts["types"])][["x_A", "y_A", "type"]]
    if len(pos) == 0:
        raise DataError(f"no atomic column of the types {opts['types']} found in the first frame")
    pos = pos.reset_index(drop=True)
    if opts["width"] == "frame" and opts["refine"] != "first":
        pos.attrs["rho_A"] = None
        return pos
    from perovstem.atoms import fit_columns

    norm = _normalized(img, gain, offset)
    kw = {"max_iter": int(opts["max_iter"]), "joint": False, "parallel": False}
    rho = None
    if opts["width"] == "series":  # robust width per type, at the sites (no noise chasing)
        from perovstem.atoms.fitted_library import type_widths

        rho = type_widths(norm, pos, max_iter=int(opts["max_iter"]))
    if opts["refine"] == "first":
        wkw = {"width": "fixed", "rho_A": rho} if rho else {}
        fit = fit_columns(norm, pos, **wkw, **kw)
        pos = pos.assign(x_A=fit["x_A"].to_numpy(), y_A=fit["y_A"].to_numpy())
    pos.attrs["rho_A"] = rho
    pos.attrs["width_dose_e_per_A2"] = img.dose_e_per_A2
    return pos


def _column_scs(
    img: Image, pos: pd.DataFrame, gain: Any, offset: Any, opts: dict[str, Any]
) -> np.ndarray:
    """Fitted SCS (Å²) of the columns ``pos`` in one registered frame."""
    from perovstem.atoms import fit_columns

    rho = pos.attrs.get("rho_A")
    kw = {"width": "fixed", "rho_A": rho} if rho else {}
    fit = fit_columns(
        _normalized(img, gain, offset),
        pos,
        max_iter=int(opts["max_iter"]),
        joint=False,
        parallel=False,
        fit_positions=opts["refine"] == "frame",
        **kw,
    )
    return fit["scs"].to_numpy(float)


#: largest residual shift (px) against the column-finding reference for a frame with an
#: unreliable drift to be counted (the registration tolerance of ``register_drift``)
COLUMN_TOL_PX = 0.25


def _column_offset_px(frame: np.ndarray, ref: Image, lattice_A: float) -> float:
    """Residual shift (px) of one registered frame against the column-finding reference.

    A direct check on the lattice of a frame whose drift is flagged unreliable: phase
    correlation with the summed first frames (:func:`phase_correlate`), searched within
    0.45 of a lattice period so that the nearest lattice registration is measured (a jump
    by a whole period cannot be seen this way; the drift flags report that case).
    """
    r = np.asarray(ref.data, float)
    dy, dx, _ = phase_correlate(r, frame, max_shift_px=0.45 * lattice_A / ref.pixel_size_A)
    return float(np.hypot(dy, dx))


def _count_columns(
    series: Series,
    pos: pd.DataFrame | None,
    scs: dict[int, np.ndarray],
    opts: dict[str, Any],
    lattice_A: float,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """HMM counts per column type over the usable frames; atoms lost per column."""
    from perovstem.atoms import fit_hmm

    frames = np.array(sorted(scs))
    if pos is None or frames.size < 2:
        raise DataError("column counting needs at least two usable frames")
    obs_all = np.vstack([scs[k] for k in frames])
    cum = series.cumulative_dose_e_per_A2
    # dose received between consecutive analysed frames (skipped frames included)
    dose = np.diff(np.r_[series.initial_dose_e_per_A2, cum[frames]])
    tabs, longs = [], []
    for typ in opts["types"]:
        sel = (pos["type"] == typ).to_numpy()
        if not sel.any():
            continue
        lib = _column_library(series, typ, frames, opts, lattice_A, pos)
        obs = np.clip(obs_all[:, sel], 0.0, None)  # emptied columns: SCS ≈ 0 with noise
        res = fit_hmm(
            obs, lib, model=opts["hmm_model"], dose_e_per_A2=dose, fit_scale=opts["fit_scale"]
        )
        idx = np.flatnonzero(sel)
        ct = res.column_table()
        sd = res.n_atoms_std
        ct["atoms_lost_std"] = np.sqrt(sd[0] ** 2 + sd[-1] ** 2)
        ct["column"] = idx[ct["column"].to_numpy()]
        ct.insert(1, "type", typ)
        ct.insert(2, "x_A", pos["x_A"].to_numpy()[idx])
        ct.insert(3, "y_A", pos["y_A"].to_numpy()[idx])
        ct.attrs = {}
        tabs.append(ct)
        lt = res.table(obs_all[:, sel]).rename(columns={"scs": "scs_A2"})
        lt["frame"] = frames[lt["frame"].to_numpy()]
        lt["column"] = idx[lt["column"].to_numpy()]
        lt["type"] = typ
        lt["x_A"] = pos["x_A"].to_numpy()[lt["column"].to_numpy()]
        lt["y_A"] = pos["y_A"].to_numpy()[lt["column"].to_numpy()]
        lt.attrs = {}
        longs.append(lt)
    if not tabs:
        raise DataError(f"no atomic column of the types {opts['types']} was found")
    col_tab = pd.concat(tabs, ignore_index=True).sort_values("column").reset_index(drop=True)
    cols = ["frame", "column", "type", "x_A", "y_A", "scs_A2", "n_atoms", "n_atoms_mean"]
    cols += ["n_atoms_std", "p_n_atoms"]
    counts = pd.concat(longs, ignore_index=True)[cols]
    counts = counts.sort_values(["frame", "column"]).reset_index(drop=True)
    col_tab.attrs["hmm_model"] = opts["hmm_model"]
    col_tab.attrs["frames"] = frames.tolist()
    return col_tab, counts


#: the "crystal" of a field is taken for Pb clusters (no nanocrystal in the field) when the
#: clusters centred on it account for at least this share of its signal in the first frames
#: (measured: 0.97-1.0 for multislice clusters on a support, 0.00-0.05 on the first frames
#: of KMC crystals, which reach 0.9-1.0 only once fully turned into Pb)
NO_CRYSTAL_CLUSTER_SHARE = 0.7


def _cluster_share(
    crystal: np.ndarray, clusters: pd.DataFrame, f: np.ndarray, offset: float
) -> float:
    """Share of the crystal segment's signal above the support (median outside it) that
    the clusters centred on it account for (their background-subtracted counts)."""
    outside = f[~crystal]
    level = float(np.median(outside)) if outside.size else offset
    total = float((f - level)[crystal].sum())
    if not crystal.any() or total <= 0:
        return np.nan
    if len(clusters) == 0:
        return 0.0
    iy = np.clip(np.round(clusters["y_px"].to_numpy(float)), 0, f.shape[0] - 1).astype(int)
    ix = np.clip(np.round(clusters["x_px"].to_numpy(float)), 0, f.shape[1] - 1).astype(int)
    on = crystal[iy, ix]
    return float(np.nansum(clusters["integrated_counts"].to_numpy(float)[on])) / total


#: the Pb⁰ atoms are said to be counted mostly over host when at least this share of them
#: comes from counts with host_ratio > 1 (more host counts under the aperture than cluster
#: counts).  The demo's series read 0.06-0.53; a 2-frame KMC series whose 3-8-atom clusters
#: sat on the crystal read 1.0 (149 ± 25 Pb⁰ for 82)
HOST_HEAVY_SHARE = 0.75


def _host_heavy_note(det: pd.DataFrame) -> str | None:
    """A note when most Pb⁰ atoms were counted over more host than cluster (issue #7)."""
    if "host_ratio" not in det or "n_atoms" not in det:
        return None
    n = det["n_atoms"].to_numpy(float)
    ok = np.isfinite(n) & (n > 0)
    if not ok.any():
        return None
    heavy = ok & (det["host_ratio"].to_numpy(float) > 1.0)
    share = float(n[heavy].sum() / n[ok].sum())
    if share < HOST_HEAVY_SHARE:
        return None
    return (
        f"{share:.0%} of the counted Pb⁰ atoms ({int(heavy.sum())} of {int(ok.sum())} "
        "counts) lie over more host than cluster (clusters column host_ratio > 1): on "
        "simulated series such counts were within 15 % of the truth for 37-43 % of the "
        "clusters (92-93 % at host_ratio <= 0.1; benchmarks/bench_clusters.py), so read "
        "the Pb⁰ totals as rough"
    )


_CRYSTAL_COLUMNS = (
    "area_A2", "void_area_A2", "n_voids", "integrated_counts", "shrinkage", "shrinkage_err",
    "crystal_at_border", "second_object_area_A2",
)  # fmt: skip

#: pixel size (Å) above which the Pb⁰ atom counts are said to be unvalidated: median
#: n_Pb0_detected / truth of the first three frames of 4 nm KMC cubes (seeds 1-3 tune,
#: 4-6 held out; frames > 1.5x of 24): 0.4 Å 0, 0.5 Å 3 / 1, 0.6 Å 1, 0.7 Å 3 / 3,
#: 0.75 Å 7, 0.8 Å 8 / 7, 0.9 Å 11, 1.0 Å 9
COARSE_PIXEL_A = 0.7

#: a second bright object of at least this share of the crystal's area (and
#: SECOND_OBJECT_MIN_A2) in the first frames is said: on single KMC crystals (cube, cuboid,
#: platelet, Cd-alloyed, [011], rotated; 0.2-1.2 Å px) the share is <= 0.011 there (it
#: reaches 0.5-0.99 late, when a crystal breaks up, so only the first 3 frames count); a
#: 3 nm crystal beside a 4 nm one: 0.53
SECOND_OBJECT_SHARE = 0.2
SECOND_OBJECT_MIN_A2 = 200.0

#: measured fast-scan line jitter (median rms, px) above which the Pb⁰ counts are said
#: to be unreliable: KMC 4 nm cubes (0.5 Å px, 3·10³ e⁻/Å²/s, seeds 1-2) with white line
#: jitter of 0, 0.25, 0.5 and 1 px rms (measured 0.02-0.04 / ~0.25 / ~0.5 / 0.8-1.2 px):
#: Pb⁰ / truth of the first four frames 0.67-1.5 / 0.74-3.0 / 0.37-2.3 / 0.94-3.7
LINE_JITTER_NOTE_PX = 0.4
#: line offsets correlating between neighbouring lines above this are a smooth distortion
#: (the banded, smoothed scan correction); below, line-to-line jitter (per line)
LINE_JITTER_SMOOTH_CORR = 0.8

#: Pb⁰ totals falling by more than this many combined frame-to-frame σ are flagged
PB0_FALL_SIGMA = 3.0


def _frame_quadrature(tracks: pd.DataFrame, column: str, frames: pd.Series) -> np.ndarray:
    """Per frame of ``frames``, the clusters' ``column`` added in quadrature (NaN skipped,
    0 for a frame without clusters): the 1σ of the frame's Pb⁰ total."""
    var = (tracks[column] ** 2).groupby(tracks["frame"]).sum()
    return np.sqrt(var.reindex(frames, fill_value=0.0).to_numpy())


def _pb0_arrays(n_pb0: Any, err_stat: Any) -> tuple[np.ndarray, np.ndarray]:
    """Pb⁰ totals and their 1σ per frame as float arrays of one length."""
    n = np.asarray(n_pb0, float)
    e = np.asarray(err_stat, float)
    if n.shape != e.shape or n.ndim != 1:
        raise DataError(f"`n_pb0` and `err_stat` must be 1-D of one length: {n.shape}, {e.shape}")
    return n, e


def pb0_falls_later(n_pb0: Any, err_stat: Any, *, n_sigma: float = PB0_FALL_SIGMA) -> np.ndarray:
    """Frames whose Pb⁰ total exceeds a later frame's by more than its errors allow.

    Metallic Pb formed by Br loss stays in the crystal's field (it clusters, it does not
    revert), so a total that falls later by more than ``n_sigma`` combined frame-to-frame
    standard errors is an over-count in that frame (damaged host read as clusters) or Pb
    leaving the field — either way the total should not be read at face value.

    Two tests, either flags a frame: (1) a later frame has
    ``n_j < n_k − n_sigma·√(σ_k² + σ_j²)``; (2) the totals of a run of frames cannot be
    non-decreasing: the weighted isotonic (non-decreasing) fit pools them into one
    level (pool-adjacent-violators; Barlow et al., *Statistical Inference under Order
    Restrictions*, Wiley 1972) whose χ² about that level has a p-value below that of
    ``n_sigma`` (two-sided normal); the frames of such a run above the level are flagged.
    (2) catches the frames around the peak of an over-count that falls gradually — each
    within ``n_sigma`` of the lowest later frame, together not (KMC 3 nm crystal, seed 3,
    AVX2 realisation, frames 7-11: 157, 164, 152, 132, 132 ± 5-8 atoms for 91-124 true;
    (1) flags frame 8 only, (2) frames 7-9).  On monotone totals with honest errors (1)
    and (2) together give as many false flags as (1) alone (2 frames in 12 000).

    A fall can also be an under-count of the later frame.  A frame that falls below its
    previous frame by more than ``n_sigma`` while the next frame is back within
    ``n_sigma`` of that previous frame is an isolated dip (:func:`pb0_dips`): the total
    before it is confirmed by the frame after it, so the dip is left out of both tests
    and does not flag the frames before it (KMC 3 nm crystal, seed 1, AMD AVX-512
    realisation: frame 4 read 51.7 ± 2.3 for 50 true, frame 5 40.9 ± 2.0 for 66 true,
    frame 6 71.6; frame 4 was flagged before).  The last frame has no frame after it and
    is never a dip.

    Parameters
    ----------
    n_pb0 : (n_frames,) array_like
        Detected Pb⁰ atoms per frame (NaN for skipped frames, ignored).
    err_stat : (n_frames,) array_like
        Their frame-to-frame 1σ (``n_atoms_err_stat`` of the clusters in quadrature), atoms.
    n_sigma : float
        Threshold in combined σ (3: one comparison per later frame, so a 2σ threshold
        would fire by chance on long series).

    Returns
    -------
    (n_frames,) bool array
        True where a later frame has ``n_j < n_k − n_sigma·√(σ_k² + σ_j²)`` or the frame
        is above the level of a run that cannot be non-decreasing.
    """
    refuse_text_numbers(locals())
    n, e = _pb0_arrays(n_pb0, err_stat)
    return _pb0_falls(n, e, pb0_dips(n, e, n_sigma=n_sigma), n_sigma=n_sigma)


def _pb0_flags(n_pb0: Any, err_stat: Any) -> tuple[np.ndarray, np.ndarray]:
    """(:func:`pb0_falls_later`, :func:`pb0_dips`) of one frames table, the dips found once."""
    n, e = _pb0_arrays(n_pb0, err_stat)
    dip = pb0_dips(n, e)
    return _pb0_falls(n, e, dip, n_sigma=PB0_FALL_SIGMA), dip


def _pb0_falls(n: np.ndarray, e: np.ndarray, dip: np.ndarray, *, n_sigma: float) -> np.ndarray:
    """:func:`pb0_falls_later` of checked arrays, given their :func:`pb0_dips` ``dip``."""
    from scipy import stats
    from scipy.optimize import isotonic_regression

    ok = np.isfinite(n) & np.isfinite(e)
    # an isolated dip is an under-count of its own frame: not a reference for the others
    ok &= ~dip
    flag = np.zeros(n.size, bool)
    for k in np.flatnonzero(ok):
        later = ok.copy()
        later[: k + 1] = False
        if later.any():
            tol = n_sigma * np.sqrt(e[k] ** 2 + e[later] ** 2)
            flag[k] = bool(np.any(n[later] < n[k] - tol))
    idx = np.flatnonzero(ok & (e > 0))
    if idx.size >= 2:
        v, w = n[idx], 1.0 / e[idx] ** 2
        fit = isotonic_regression(v, weights=w)
        p_max = 2.0 * stats.norm.sf(n_sigma)
        b = fit.blocks
        for lo, hi in zip(b[:-1], b[1:], strict=True):
            if hi - lo < 2:
                continue
            chi2 = float(np.sum(w[lo:hi] * (v[lo:hi] - fit.x[lo]) ** 2))
            if stats.chi2.sf(chi2, hi - lo - 1) < p_max:
                flag[idx[lo:hi]] |= v[lo:hi] > fit.x[lo]
    return flag


def pb0_dips(n_pb0: Any, err_stat: Any, *, n_sigma: float = PB0_FALL_SIGMA) -> np.ndarray:
    """Frames whose Pb⁰ total dips below both neighbours: an under-count of that frame.

    Pb⁰ formed by Br loss does not revert, so a frame ``j`` whose total falls below the
    previous valid frame ``p`` by more than ``n_sigma·√(σ_p² + σ_j²)`` while the next
    valid frame ``q`` is not below ``p`` by that much (``n_q ≥ n_p −
    n_sigma·√(σ_p² + σ_q²)``) is a one-frame under-count (a cluster missed or counted low
    in that frame), not an over-count of the frames before it.  The first and last valid
    frames are never dips (one neighbour only).

    Parameters
    ----------
    n_pb0 : (n_frames,) array_like
        Detected Pb⁰ atoms per frame (NaN for skipped frames, ignored).
    err_stat : (n_frames,) array_like
        Their frame-to-frame 1σ, atoms.
    n_sigma : float
        Threshold in combined σ.

    Returns
    -------
    (n_frames,) bool array
    """
    refuse_text_numbers(locals())
    n, e = _pb0_arrays(n_pb0, err_stat)
    idx = np.flatnonzero(np.isfinite(n) & np.isfinite(e))
    dip = np.zeros(n.size, bool)
    for p, j, q in zip(idx[:-2], idx[1:-1], idx[2:], strict=True):
        falls = n[j] < n[p] - n_sigma * np.hypot(e[p], e[j])
        back = n[q] >= n[p] - n_sigma * np.hypot(e[p], e[q])
        dip[j] = bool(falls and back)
    return dip


def _frames_table(
    series: Series,
    drift: pd.DataFrame,
    per_frame: pd.DataFrame,
    tracks: pd.DataFrame,
    lineage: pd.DataFrame,
) -> pd.DataFrame:
    base = series.frames_table()
    if series.dose_e_per_A2 is None:
        base["cumulative_dose_e_per_A2"] = np.nan
    out = base.merge(per_frame, on="frame", how="left")
    out.attrs["dose_rate_rule"] = base.attrs.get("dose_rate_rule")
    if "host_reference_used" in out:  # skipped frames: no detection, nothing carried
        out["host_reference_used"] = out["host_reference_used"].astype("boolean").fillna(False)
        out["host_reference_used"] = out["host_reference_used"].astype(bool)
    if "host_flag" in out:
        out["host_flag"] = out["host_flag"].fillna("").astype(str)
    out["dy_px"] = drift["dy_px"].to_numpy()
    out["dx_px"] = drift["dx_px"].to_numpy()
    if "drift_reliable" in drift:
        out["drift_reliable"] = drift["drift_reliable"].to_numpy(bool)
        out["drift_flag"] = drift["drift_flag"].to_numpy()
    if "dy_err_px" in drift:
        out["drift_err_px"] = np.hypot(drift["dy_err_px"], drift["dx_err_px"]).to_numpy()
    if "area_A2" in out:
        a0 = out.loc[~out["skipped"], "area_A2"]
        first = float(a0.iloc[0]) if len(a0) else np.nan
        out["shrinkage"] = 1 - out["area_A2"] / first
        out["shrinkage_err"] = np.sqrt(2.0) * area_noise(a0.to_numpy(float)) / first
    g = tracks.groupby("frame")
    idx = out["frame"]
    out["n_clusters"] = g.size().reindex(idx, fill_value=0).to_numpy()
    # min_count: clusters without atom counts (no dose) give NaN, not 0 atoms
    out["n_Pb0_detected"] = g["n_atoms"].sum(min_count=1).reindex(idx, fill_value=0).to_numpy()
    if "host_ok" in tracks:
        # clusters whose host background the host model cannot support (detect_clusters'
        # ``host_ok``): counted, but said per frame so totals are read with that caveat
        bad = tracks[~tracks["host_ok"].astype(bool)].groupby("frame")
        out["n_clusters_host_flagged"] = bad.size().reindex(idx, fill_value=0).to_numpy()
        out["n_Pb0_host_flagged"] = (
            bad["n_atoms"].sum(min_count=1).reindex(idx, fill_value=0).to_numpy()
        )
    if "n_atoms_err" in tracks:
        # the total's error bar, so that a reader of the frames table can tell an
        # over-count within the stated uncertainty from one beyond it
        out["n_Pb0_err"] = _frame_quadrature(tracks, "n_atoms_err", idx)
        out.loc[out["n_Pb0_detected"].isna(), "n_Pb0_err"] = np.nan
    if "n_atoms_err_stat" in tracks:
        out["n_Pb0_err_stat"] = _frame_quadrature(tracks, "n_atoms_err_stat", idx)
        kept = out["n_Pb0_detected"].where(~out["skipped"].fillna(False).astype(bool))
        out["Pb0_falls_later"], out["Pb0_dip"] = _pb0_flags(kept, out["n_Pb0_err_stat"])
    out["mean_cluster_atoms"] = g["n_atoms"].mean().reindex(idx).to_numpy()
    out["mean_radius_A"] = (
        g["radius_A"].mean().reindex(idx).to_numpy() if "radius_A" in tracks else np.nan
    )
    births = lineage[lineage["origin"] == "nucleation"].groupby("start_frame").size()
    merges = lineage[lineage["origin"] == "merge"].groupby("start_frame").size()
    out["n_births"] = births.reindex(idx, fill_value=0).to_numpy()
    out["n_merges"] = merges.reindex(idx, fill_value=0).to_numpy()
    # merges with a brief noise-level parent (track_clusters' min_parent_significance):
    # said per frame, not counted as coalescences
    unsure = lineage[lineage["origin"] == "merge_uncertain"].groupby("start_frame").size()
    out["n_merges_uncertain"] = unsure.reindex(idx, fill_value=0).to_numpy()
    out["cumulative_births"] = np.cumsum(out["n_births"].to_numpy())
    out.loc[out["skipped"].fillna(False).astype(bool), ["n_clusters", "n_Pb0_detected"]] = np.nan
    return out
