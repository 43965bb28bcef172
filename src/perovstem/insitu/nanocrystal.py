"""Nanocrystal outline, projected area, shrinkage and voids; FFT phase check.

The crystal is segmented on the unit-cell averaged frame (:func:`unit_cell_average`, so the
atomic-column contrast does not fragment the outline) by Otsu's threshold (Otsu, IEEE Trans.
SMC 9, 62 (1979)); holes enclosed by the crystal are voids.  The phase check compares the
power of the reflections of pseudo-cubic CsPbBr₃ (d₁₀₀ 5.87, d₁₁₀ 4.15, d₂₀₀ 2.935 Å) with
those of fcc Pb (d₂₀₀ 2.475, d₂₂₀ 1.750 Å; [001] zone) in the frame's power spectrum
(notes/physics_simulation.md §1.2, §2.1).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from perovstem._data import Image
from perovstem._validation import check_image, check_positive, refuse_text_numbers
from perovstem.errors import CalibrationError, DataError, ParameterError
from perovstem.insitu._frames import frame_quality, iter_frames
from perovstem.insitu.lattice import unit_cell_average

__all__ = [
    "segment_nanocrystal",
    "nanocrystal_metrics",
    "fft_phase_check",
    "area_noise",
    "area_change",
    "PHASE_SPACINGS_A",
]

#: Characteristic spacings (Å) used by :func:`fft_phase_check`.
PHASE_SPACINGS_A: dict[str, dict[str, float]] = {
    "CsPbBr3": {"100": 5.87, "110": 4.151, "200": 2.935},
    "Pb": {"200": 2.475, "220": 1.750},
}

#: Reflections reported in ``ratios`` but not used to call a phase present: the CsPbBr₃ 200
#: (2.935 Å) annulus holds the Pb 111 (4.95/√3 = 2.858 Å) at the default 3 % tolerance, and
#: Pb clusters alone in vacuum (multislice) lit it at 72–393× the median: "CsPbBr3+Pb"
#: without any perovskite.  The 100 and 110 are resolved wherever the 200 is.
_NOT_DECISIVE = {("CsPbBr3", "200")}


def _px(image: Any, pixel_size_A: float | None) -> tuple[np.ndarray, float]:
    if isinstance(image, Image):
        return np.asarray(image.data), image.pixel_size_A if pixel_size_A is None else pixel_size_A
    if pixel_size_A is None:
        raise CalibrationError("`pixel_size_A` is needed (the image carries no calibration)")
    return np.asarray(image), float(pixel_size_A)


def segment_nanocrystal(
    image: Any,
    *,
    pixel_size_A: float | None = None,
    lattice_A: float = 5.87,
    threshold: float | None = None,
    min_void_area_A2: float = 20.0,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Mask of the nanocrystal (largest bright object) and of its voids.

    Parameters
    ----------
    image : Image or (M, N) array_like
        HAADF frame.
    pixel_size_A : float, optional
        Pixel size, Å (from the Image when omitted).
    lattice_A : float
        Host lattice spacing used for the unit-cell average, Å.
    threshold : float, optional
        Threshold on the unit-cell averaged frame (default: Otsu).
    min_void_area_A2 : float
        Smallest hole counted as a void, Å².

    Returns
    -------
    crystal : (M, N) bool ndarray
        The crystal including its voids (filled outline).
    voids : (M, N) bool ndarray
        Enclosed holes of at least ``min_void_area_A2``.
    threshold : float
        The threshold used.
    """
    refuse_text_numbers(locals())
    filled, voids, threshold, _ = _segment_objects(
        image, pixel_size_A, lattice_A, threshold, min_void_area_A2
    )
    return filled, voids, threshold


def _segment_objects(
    image: Any,
    pixel_size_A: float | None,
    lattice_A: float,
    threshold: float | None,
    min_void_area_A2: float,
) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """:func:`segment_nanocrystal` and the areas (Å², largest first) of every bright
    object above the threshold (the crystal's own, without its holes, first)."""
    data, px = _px(image, pixel_size_A)
    a = check_image("image", data)
    check_positive("pixel_size_A", px)
    check_positive("lattice_A", lattice_A)
    m = unit_cell_average(a, lattice_A / px, smooth_px=0.5 * lattice_A / px)
    if threshold is None:
        from skimage.filters import threshold_otsu

        threshold = float(threshold_otsu(m))
    fg = m > threshold
    lab, n = ndimage.label(fg)
    if n == 0:
        z = np.zeros(a.shape, bool)
        return z, z, float(threshold), np.zeros(0)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:].astype(float)  # pixels per object
    body = lab == (1 + int(np.argmax(sizes)))
    filled = _fill_holes(body)
    holes = filled & ~body
    hl, nh = ndimage.label(holes)
    voids = np.zeros(a.shape, bool)
    if nh:
        hs = np.bincount(hl.ravel(), minlength=nh + 1)[1:] * px * px
        keep = np.flatnonzero(hs >= min_void_area_A2) + 1
        voids = np.isin(hl, keep)
    return filled, voids, float(threshold), np.sort(sizes)[::-1] * px * px


def _fill_holes(body: np.ndarray) -> np.ndarray:
    """:func:`scipy.ndimage.binary_fill_holes` of ``body``, computed on its bounding box
    plus one pixel: everything outside the box is background connected to the frame
    border (the box is convex), so the result is the same at a fraction of the cost for a
    crystal much smaller than the frame."""
    rows = np.flatnonzero(body.any(axis=1))
    cols = np.flatnonzero(body.any(axis=0))
    out = np.zeros(body.shape, bool)
    if rows.size == 0:
        return out
    r0, r1 = max(rows[0] - 1, 0), min(rows[-1] + 2, body.shape[0])
    c0, c1 = max(cols[0] - 1, 0), min(cols[-1] + 2, body.shape[1])
    out[r0:r1, c0:c1] = ndimage.binary_fill_holes(body[r0:r1, c0:c1])
    return out


@lru_cache(maxsize=8)
def _phase_annuli(
    shape: tuple[int, int], px: float, tolerance: float
) -> tuple[tuple[str, str, np.ndarray, np.ndarray, np.ndarray], ...]:
    """Flat indices into the half power spectrum of a frame of ``shape`` (M, N) of every
    reflection's annulus ``|k| d ∈ [1 − tol, 1 + tol]`` and of its wide annulus (±4 tol),
    with ``|k|`` of the annulus pixels, for the reflections resolved at ``px`` (d ≥ 2.2 px):
    the same for every frame of a series, so computed once."""
    ky = np.fft.fftfreq(shape[0], px)[:, None]
    kx = np.fft.rfftfreq(shape[1], px)[None, :]
    kr = np.hypot(ky, kx).ravel()
    out = []
    for phase, refl in PHASE_SPACINGS_A.items():
        for hkl, d in refl.items():
            if d < 2.2 * px:
                continue
            ring = np.flatnonzero((kr >= (1 - tolerance) / d) & (kr <= (1 + tolerance) / d))
            wide = np.flatnonzero((kr >= (1 - 4 * tolerance) / d) & (kr <= (1 + 4 * tolerance) / d))
            for x in (ring, wide):
                x.setflags(write=False)
            kr_ring = kr[ring]
            kr_ring.setflags(write=False)
            out.append((phase, hkl, ring, wide, kr_ring))
    return tuple(out)


def fft_phase_check(
    image: Any,
    *,
    pixel_size_A: float | None = None,
    mask: np.ndarray | None = None,
    tolerance: float = 0.03,
    min_ratio: float = 8.0,
    min_fraction: float = 0.05,
) -> dict[str, Any]:
    """Which phases (CsPbBr₃ host, metallic Pb) show lattice reflections in a frame.

    For every characteristic spacing ``d`` the peak power in the annulus
    ``|k| ∈ [1/d·(1−tol), 1/d·(1+tol)]`` is divided by the median power of the annulus;
    a ratio ≥ ``min_ratio`` counts as present.  A phase is present when any of its
    reflections is (reflections beyond Nyquist are skipped), except the CsPbBr₃ 200, which
    the Pb 111 also lights (:data:`_NOT_DECISIVE`; it still sets the scale of
    ``min_fraction``).

    Parameters
    ----------
    image : Image or (M, N) array_like
    pixel_size_A : float, optional
    mask : (M, N) bool array_like, optional
        Region analysed (e.g. the crystal); outside is set to the mean, apodised.
    tolerance : float
        Relative half-width of each annulus.
    min_ratio : float
        Peak-to-median power ratio for a reflection to count.
    min_fraction : float
        A phase's strongest reflection must also reach this fraction of the strongest peak
        of all phases (the tails of strong peaks leak into neighbouring annuli); small
        clusters (≲ 100 atoms) are therefore not seen here — use :func:`detect_clusters`.

    Returns
    -------
    dict
        ``phase`` ("CsPbBr3", "Pb", "CsPbBr3+Pb" or "none"), ``ratios`` {phase: {hkl: ratio}},
        ``measured_d_A`` {phase: {hkl: d of the peak}}.
    """
    refuse_text_numbers(locals())
    data, px = _px(image, pixel_size_A)
    a = check_image("image", data)
    check_positive("pixel_size_A", px)
    check_positive("tolerance", tolerance)
    from perovstem.insitu.lattice import (
        _full_power,
        _lattice_from_power,
        _windowed_rfft2,
    )

    whole = _windowed_rfft2(a)  # the whole frame's spectrum (also the lattice estimate's)
    if mask is not None:
        mk = np.asarray(mask, bool)
        if mk.shape != a.shape:
            raise ParameterError(f"`mask` shape {mk.shape} differs from the image {a.shape}")
        from scipy.signal.windows import hann

        f = np.where(ndimage.binary_dilation(mk, iterations=2), a - a[mk].mean(), 0.0)
        f = f * np.outer(hann(a.shape[0]), hann(a.shape[1]))
        p = np.abs(np.fft.rfft2(f)) ** 2
    else:
        p = whole.real**2 + whole.imag**2
    ky = np.fft.fftfreq(a.shape[0], px)[:, None]
    kx = np.fft.rfftfreq(a.shape[1], px)[None, :]
    # pixels near host reflections (estimated lattice) are excluded from the other phases'
    # rings: the tails of strong host peaks must not pass for Pb reflections
    dk = max(1 / (a.shape[0] * px), 1 / (a.shape[1] * px))
    host_g = np.zeros((0, 2))
    try:  # (estimate_lattice's search on the spectrum already at hand)
        if not np.ptp(a) > 0:
            raise DataError("constant frame")
        ah, ang, strength = _lattice_from_power(_full_power(whole, a.shape[1]), px, 3.0, 9.0)
    except Exception:  # noqa: BLE001 - no lattice: nothing to exclude
        strength = 0.0
    if strength >= 20:
        t = np.radians(ang)
        u1 = np.array([np.cos(t), np.sin(t)]) / ah
        u2 = np.array([-np.sin(t), np.cos(t)]) / ah
        hk = np.arange(-8, 9)
        g = (hk[:, None, None] * u1 + hk[None, :, None] * u2).reshape(-1, 2)
        host_g = g[np.hypot(g[:, 0], g[:, 1]) > 0]

    def near_host(idx: np.ndarray) -> np.ndarray:
        """True for the spectrum pixels ``idx`` (flat) within 2.5 bins of a host reflection."""
        if host_g.size == 0:
            return np.zeros(idx.size, bool)
        iy, ix = np.divmod(idx, p.shape[1])
        kxs, kys = kx[0, ix], ky[iy, 0]
        # only reflections whose |g| lies within 2.5 bins of the selected radii can be near
        kr_s = np.hypot(kxs, kys)
        gr = np.hypot(host_g[:, 0], host_g[:, 1])
        g = host_g[(gr >= kr_s.min() - 2.5 * dk) & (gr <= kr_s.max() + 2.5 * dk)]
        if g.size == 0:
            return np.zeros(kxs.size, bool)
        dd = np.hypot(kxs[:, None] - g[None, :, 0], kys[:, None] - g[None, :, 1])
        return dd.min(1) < 2.5 * dk

    ratios: dict[str, dict[str, float]] = {ph: {} for ph in PHASE_SPACINGS_A}
    dmeas: dict[str, dict[str, float]] = {ph: {} for ph in PHASE_SPACINGS_A}
    peaks: dict[str, float] = {}
    top = 0.0
    pf = p.ravel()
    for phase, hkl, ring, wide, kr_ring in _phase_annuli(a.shape, float(px), float(tolerance)):
        if phase != "CsPbBr3":
            keep = ~near_host(ring)
            ring, kr_ring = ring[keep], kr_ring[keep]
        if ring.size < 4:
            continue
        pr = pf[ring]
        pk = float(pr.max())
        r = pk / (float(np.median(pf[wide])) + 1e-300)
        ratios[phase][hkl] = r
        dmeas[phase][hkl] = float(1 / kr_ring[np.argmax(pr)])
        if r >= min_ratio:
            top = max(top, pk)  # every reflection sets the leakage scale (min_fraction)
            if (phase, hkl) not in _NOT_DECISIVE:
                peaks[phase] = max(peaks.get(phase, 0.0), pk)

    present = [ph for ph in PHASE_SPACINGS_A if ph in peaks and peaks[ph] >= min_fraction * top]
    label = "+".join(present) if present else "none"
    return {"phase": label, "ratios": ratios, "measured_d_A": dmeas}


def nanocrystal_metrics(
    series: Any,
    *,
    pixel_size_A: float | None = None,
    lattice_A: float = 5.87,
    phase_check: bool = True,
    min_void_area_A2: float = 20.0,
) -> pd.DataFrame:
    """Per-frame nanocrystal metrics of a (drift-corrected) series.

    Parameters
    ----------
    series : Series, (T, M, N) array or sequence of frames
        Streamed frame by frame.
    pixel_size_A : float, optional
        Pixel size, Å (from a Series when omitted).
    lattice_A : float
        Host lattice spacing, Å.
    phase_check : bool
        Run :func:`fft_phase_check` on each frame.
    min_void_area_A2 : float
        Smallest void, Å².

    Returns
    -------
    DataFrame
        ``frame, area_A2, perimeter_A, equivalent_diameter_A, shrinkage, shrinkage_err,
        void_area_A2, n_voids, centroid_x_A, centroid_y_A, integrated_counts, phase, skipped,
        reason``; ``integrated_counts`` is the crystal's signal in detected electrons (the
        Series' metadata ``offset`` removed and divided by its ``gain``, as in
        :func:`~perovstem.insitu.analyze_series`); ``shrinkage = 1 − area/area(first usable frame)`` and ``shrinkage_err`` its
        1σ segmentation noise (:func:`area_noise`; NaN with fewer than 4 usable frames).
        Use :func:`area_change` for a significance-checked final value.
    """
    refuse_text_numbers(locals())
    from perovstem._data import Series

    if isinstance(series, Series) and pixel_size_A is None:
        pixel_size_A = series.pixel_size_A
    if pixel_size_A is None:
        raise CalibrationError("`pixel_size_A` is needed for a bare array series")
    px = check_positive("pixel_size_A", pixel_size_A)
    md = series.metadata if isinstance(series, Series) else {}
    offset = float(md.get("offset") or 0.0)  # a detector's offset and gain are no mass
    gain = float(md.get("gain") or 1.0)
    from skimage.measure import perimeter

    rows = []
    for k, fr in iter_frames(series):
        why = frame_quality(fr)
        if why:
            rows.append({"frame": k, "skipped": True, "reason": why})
            continue
        crystal, voids, _ = segment_nanocrystal(
            fr, pixel_size_A=px, lattice_A=lattice_A, min_void_area_A2=min_void_area_A2
        )
        solid = crystal & ~voids
        area = float(solid.sum()) * px * px
        yy, xx = np.nonzero(crystal)
        row = {
            "frame": k,
            "area_A2": area,
            "perimeter_A": float(perimeter(crystal)) * px,
            "equivalent_diameter_A": float(np.sqrt(4 * area / np.pi)),
            "void_area_A2": float(voids.sum()) * px * px,
            "n_voids": int(ndimage.label(voids)[1]),
            "centroid_x_A": float(xx.mean()) * px if xx.size else np.nan,
            "centroid_y_A": float(yy.mean()) * px if yy.size else np.nan,
            "integrated_counts": float((np.asarray(fr, float)[crystal] - offset).sum()) / gain,
            "skipped": False,
            "reason": "",
        }
        if phase_check:
            row["phase"] = fft_phase_check(fr, pixel_size_A=px)["phase"]
        rows.append(row)
    df = pd.DataFrame(rows)
    good = df.loc[~df["skipped"], "area_A2"] if "area_A2" in df else pd.Series(dtype=float)
    a0 = float(good.iloc[0]) if len(good) else np.nan
    df["shrinkage"] = 1 - df.get("area_A2", np.nan) / a0
    sig = area_noise(good.to_numpy(float))
    df["shrinkage_err"] = np.sqrt(2.0) * sig / a0
    cols = (
        [
            "frame",
            "area_A2",
            "perimeter_A",
            "equivalent_diameter_A",
            "shrinkage",
            "shrinkage_err",
            "void_area_A2",
            "n_voids",
            "centroid_x_A",
            "centroid_y_A",
            "integrated_counts",
        ]
        + (["phase"] if phase_check else [])
        + ["skipped", "reason"]
    )
    for c in cols:
        if c not in df:
            df[c] = np.nan
    df = df[cols]
    df.attrs.update({"pixel_size_A": px, "lattice_A": float(lattice_A)})
    return df


def area_noise(areas: Any) -> float:
    """Frame-to-frame noise σ_A of a projected-area series (same unit as ``areas``).

    The segmentation noise is taken as white on top of a smooth trend, so the second
    differences ``A[k+1] − 2A[k] + A[k−1]`` have variance ``6σ_A²`` whatever the (locally
    linear) trend; σ_A is estimated robustly from their median absolute deviation
    (``1.4826·MAD/√6``).  NaN with fewer than 4 finite values.
    """
    refuse_text_numbers(locals())
    a = np.asarray(areas, float).ravel()
    a = a[np.isfinite(a)]
    if a.size < 4:
        return float("nan")
    d2 = a[2:] - 2 * a[1:-1] + a[:-2]
    mad = float(np.median(np.abs(d2 - np.median(d2))))
    if mad == 0:  # quantised areas with a few flips: fall back to the rms
        mad = float(np.sqrt(np.mean(d2**2))) / 1.4826
    return 1.4826 * mad / np.sqrt(6.0)


def area_change(metrics: pd.DataFrame, *, n_sigma: float = 2.0) -> dict[str, Any]:
    """Change of the projected crystal area over a series, with its uncertainty.

    Projected-area shrinkage is only physically meaningful when it exceeds the
    segmentation noise: a crystal does not grow under the beam, and a small negative
    "shrinkage" is noise.  The change between the first and the last usable frame,
    ``ΔA = A_last − A_first``, gets ``σ_ΔA = √2·σ_A`` (:func:`area_noise`); the shrinkage
    ``1 − A_last/A_first`` is called significant only when ``−ΔA > n_sigma·σ_ΔA``.

    Parameters
    ----------
    metrics : DataFrame
        With ``area_A2`` (and optionally ``skipped``), e.g. from :func:`nanocrystal_metrics`.
    n_sigma : float
        Significance threshold in units of σ_ΔA.

    Returns
    -------
    dict
        ``area_first_A2, area_last_A2, delta_area_A2, delta_area_err_A2, shrinkage,
        shrinkage_err, significant`` (bool: shrinkage beyond the noise), ``verdict``
        (``"shrinkage"``, ``"within noise"``, ``"area increase"`` (beyond the noise: check
        the segmentation) or ``"unknown"`` (too few frames for the noise)) and ``text``.
    """
    refuse_text_numbers(locals())
    check_positive("n_sigma", n_sigma)
    if "area_A2" not in metrics:
        raise ParameterError("`metrics` needs an `area_A2` column")
    m = metrics
    if "skipped" in m:
        m = m[~m["skipped"].fillna(False).astype(bool)]
    a = m["area_A2"].to_numpy(float)
    a = a[np.isfinite(a)]
    if a.size < 2:
        raise ParameterError(f"`metrics` needs at least 2 usable frames with an area, got {a.size}")
    sig = area_noise(a)
    d = float(a[-1] - a[0])
    err = float(np.sqrt(2.0) * sig)
    s, s_err = -d / float(a[0]), err / float(a[0])
    if not np.isfinite(err):
        verdict = "unknown"
    elif -d > n_sigma * err:
        verdict = "shrinkage"
    elif d > n_sigma * err:
        verdict = "area increase"
    else:
        verdict = "within noise"
    nm2 = 1e-2
    if verdict == "shrinkage":
        text = f"projected area shrank by {100 * s:.1f} ± {100 * s_err:.1f} % (1σ)"
    elif verdict == "within noise":
        text = (
            f"no significant shrinkage: ΔA = {d * nm2:+.2f} ± {err * nm2:.2f} nm² "
            f"(|ΔA| < {n_sigma:g}σ)"
        )
    elif verdict == "area increase":
        text = (
            f"projected area increased by {d * nm2:.2f} ± {err * nm2:.2f} nm² (> {n_sigma:g}σ): "
            "not a physical shrinkage, check the segmentation (e.g. clusters or support merged "
            "into the outline)"
        )
    else:
        text = f"ΔA = {d * nm2:+.2f} nm² (too few frames to estimate the noise)"
    return {
        "area_first_A2": float(a[0]),
        "area_last_A2": float(a[-1]),
        "delta_area_A2": d,
        "delta_area_err_A2": err,
        "shrinkage": s,
        "shrinkage_err": s_err,
        "significant": verdict == "shrinkage",
        "verdict": verdict,
        "text": text,
    }
