"""Poissonian–Gaussian detector noise model measured from the data (gain, offset, read noise).

A count image is ``y = gain·n + offset + ε`` with ``n`` Poisson electrons and ``ε`` Gaussian
read noise, so the pixel variance is linear in the expected level ``L = E[y]``::

    Var(y) = gain·(L − offset) + read² = gain·L + c,     c = read² − gain·offset

(the photon-transfer curve, J. R. Janesick, *Photon Transfer*, SPIE 2007; the
Poissonian–Gaussian model of A. Foi et al., IEEE Trans. Image Process. 17 (2008) 1737).
:func:`estimate_noise_model` measures ``Var`` against ``L`` and fits the line:

* one image: Haar diagonal detail coefficients of non-overlapping 2×2 blocks
  (``(y₀₀ − y₀₁ − y₁₀ + y₁₁)/2``, variance σ² for white noise, blind to any linear signal
  trend) against the block mean, only in blocks where the signal's own diagonal curvature
  (estimated from the pixels around the block) is small, as Foi et al. do with their
  smoothness mask; binned on a ring mean around the block (an instrument independent of the
  block's noise);
* a frame series: differences of consecutive (registered, or aligned here) frames,
  ``(y_k − y_{k+1})/√2``, which cancel the signal entirely where it does not change
  (Janesick's two-frame photon-transfer method); blocks whose surroundings changed are
  dropped.

Structure that the smoothness mask misses (columns narrower than a few pixels: coarse
sampling, high dose) adds variance growing with the level, so the slope exceeds the gain.
A single-image gain is refused when the 2×-subsampled image gives a larger one or the curve
bends upwards (structure variance ∝ L², shot noise ∝ L); a frame-difference gain when
adjacent difference pixels are correlated (the scene changed).  In-situ series
(:func:`measure_series_detector`) use aligned frame differences first.

The slope is the gain (image units per detected electron). Variance alone gives only the
intercept ``c``: offset and read noise are degenerate. They are bracketed by
``read² ≥ 0`` (offset ≥ −c/gain) and ``n ≥ 0`` (offset ≤ the darkest level of the field),
and the reported offset is the darkest level (a HAADF vacuum receives ~no electrons) when it
lies inside the bracket; pass ``offset=`` (measured with the beam blanked) to fix it. The
signal-dependent noise ``σ²(L) = gain·L + c`` needs only the gain and ``c``, not the split.

Correlated pixels (interpolated/resampled images, scan distortion correction, a slow detector
response along the fast scan) shrink the pixel-scale variance and bias a variance-based gain
low; the noise spectrum just below Nyquist is compared with the Nyquist corner (white noise:
equal) and the gain refused above ``1 + max_correlation``.
"""

from __future__ import annotations

import dataclasses
import warnings
import weakref
from typing import Any

import numpy as np
from scipy import ndimage

from perovstem._data import Image, Series
from perovstem._validation import refuse_text_numbers
from perovstem.errors import DataError, ParameterError

__all__ = ["NoiseModel", "estimate_noise_model"]


@dataclasses.dataclass(frozen=True)
class NoiseModel:
    """Measured detector noise model ``Var(y) = gain·L + intercept`` (image units).

    Attributes
    ----------
    gain, gain_err : float
        Slope of the variance against the level: image units (counts) per detected electron,
        with its 1σ error.
    intercept, intercept_err : float
        ``c = read² − gain·offset``, counts².
    offset : float
        Black level, counts (``offset_source`` says how it was fixed).
    offset_range : (float, float)
        Offsets consistent with ``read² ≥ 0`` and with no negative electrons in the darkest
        region, counts.
    read_noise : float
        Gaussian read noise σ for that offset, counts.
    identified : bool
        False when the data cannot identify the gain (see ``reasons``); the numbers are then
        informative only.
    reasons : tuple of str
        Why the gain is not identified (empty when it is).
    method : str
        ``"single-image"``, ``"frame-difference"`` or ``"single-image, n frames pooled"``.
    spectral_ratio : (float, float)
        Noise power just below Nyquist along the more correlated axis / at the Nyquist
        corner, ± 1σ: 1 for independent pixels (white noise), > 1 when neighbouring pixels
        are correlated.
    levels, variances, variance_errs : ndarray
        The binned photon-transfer curve (level, variance ± 1σ), for plotting.
    n_samples : int
        Detail coefficients (or difference pixels) used.
    quantum : float or None
        Spacing of the pixel values when they are all ``v0 + q·n`` (exact counts times an
        ADC step): a cross-check of the gain without read noise.
    gain_coarse : (float, float) or None
        Single-image methods: the gain ± 1σ measured again at 2× coarser sampling (every
        other pixel, the four phases pooled); shot noise gives the same gain at any
        sampling, structure leaking into the details does not (None for frame differences).
    """

    gain: float
    gain_err: float
    intercept: float
    intercept_err: float
    offset: float
    offset_range: tuple[float, float]
    offset_source: str
    read_noise: float
    identified: bool
    reasons: tuple[str, ...]
    method: str
    spectral_ratio: tuple[float, float]
    levels: np.ndarray = dataclasses.field(repr=False)
    variances: np.ndarray = dataclasses.field(repr=False)
    variance_errs: np.ndarray = dataclasses.field(repr=False)
    n_samples: int = 0
    quantum: float | None = None
    gain_coarse: tuple[float, float] | None = None

    def variance(self, level: Any) -> np.ndarray:
        """Pixel variance at the expected level(s) ``level`` (counts → counts²), ≥ 0."""
        return np.maximum(self.gain * np.asarray(level, float) + self.intercept, 0.0)

    def as_dict(self) -> dict[str, Any]:
        """Scalars only (JSON-serialisable)."""
        return {
            "gain": self.gain,
            "gain_err": self.gain_err,
            "intercept": self.intercept,
            "intercept_err": self.intercept_err,
            "offset": self.offset,
            "offset_range": list(self.offset_range),
            "offset_source": self.offset_source,
            "read_noise": self.read_noise,
            "identified": self.identified,
            "reasons": list(self.reasons),
            "method": self.method,
            "spectral_ratio": list(self.spectral_ratio),
            "n_samples": self.n_samples,
            "quantum": self.quantum,
            "gain_coarse": None if self.gain_coarse is None else list(self.gain_coarse),
        }

    def describe(self) -> str:
        """One line for warnings and logs."""
        s = (
            f"gain {self.gain:.4g} ± {self.gain_err:.2g} counts/e⁻, offset {self.offset:.4g} "
            f"({self.offset_source}; consistent range {self.offset_range[0]:.4g}–"
            f"{self.offset_range[1]:.4g}), read noise {self.read_noise:.3g} counts "
            f"[{self.method}]"
        )
        if not self.identified:
            s += " — NOT identified: " + "; ".join(self.reasons)
        return s


def estimate_noise_model(
    image: Image | Series | np.ndarray,
    *,
    offset: float | None = None,
    mask: np.ndarray | None = None,
    n_bins: int = 16,
    max_correlation: float = 0.5,
    min_gain_snr: float = 8.0,
    frames: str = "difference",
) -> NoiseModel:
    """Measure gain, offset and read noise from the noise of one image or a frame series.

    Fits the photon-transfer line ``Var(y) = gain·L + c`` (Janesick 2007; Foi et al., IEEE
    TIP 17 (2008) 1737): ``Var`` from Haar diagonal 2×2 details in smooth blocks of one image,
    or from differences of consecutive frames of a series, binned by the local level ``L``
    and fitted by weighted least squares (errors scaled by √χ²ᵣ when the line fits worse
    than its error bars).

    Parameters
    ----------
    image : Image, Series or ndarray
        Raw detector counts, (M, N) for one image or (T, M, N) for frames of the same field
        that are already registered (drift and beam damage between frames add variance and
        bias the gain high; register first, e.g. with :func:`perovstem.insitu.register_drift`).
    offset : float, optional
        Known black level, counts (beam blanked): resolves the offset/read-noise degeneracy.
    mask : (M, N) bool ndarray, optional
        Pixels to use (e.g. excluding a scale bar or saturated areas); default all.
    n_bins : int
        Level bins of the photon-transfer curve (≥ 3).
    max_correlation : float
        Largest excess of ``spectral_ratio`` over 1 accepted (0.5: simulated crystals with
        independent pixels measured 0.84–1.36, a 30 % detector lag along x 2.1–3.2, cubic
        or linear sub-pixel interpolation 7–32; a 15 % lag, 1.06–1.60, is not always caught
        and biases the gain ~40 % low);
        above it the gain is not identified (correlated pixels bias a variance-based gain
        low).
    min_gain_snr : float
        The gain must exceed this many standard errors to count as identified (8: a
        ≤ 12.5 % standard error; at 5, 2–3σ excursions gave identified gains 20–30 % off).
    frames : {"difference", "aligned", "pooled"}
        For a (T, M, N) input: differences of consecutive frames (registered frames of an
        unchanging field: cleanest); ``"aligned"``: the same after aligning each pair to the
        whole pixel by phase correlation and the sub-pixel remainder by a Fourier phase
        ramp (raw in-situ frames that drift); or the single-image samples of up to 8 evenly
        spaced frames pooled into one curve (the correlation check then uses the first).

    Returns
    -------
    NoiseModel
        Check ``identified`` (and ``reasons``) before using the gain.

    Raises
    ------
    ParameterError
        Bad options or an image of the wrong shape.
    DataError
        Too few usable pixels to fit the curve.

    Notes
    -----
    Offset/read-noise degeneracy: the variance gives only ``c = read² − gain·offset``.
    ``read² ≥ 0`` gives ``offset ≥ −c/gain``; no negative electrons gives ``offset ≤`` the
    darkest local level ``L_min``. Without ``offset=``, the offset is taken as ``L_min`` (the
    darkest 2 % of the field, a HAADF vacuum) when it lies within that bracket, otherwise
    ``−c/gain`` (zero read noise); a field without vacuum overestimates the offset by its
    darkest signal (``offset_source`` says which).
    """
    refuse_text_numbers(locals())
    if int(n_bins) < 3:
        raise ParameterError(f"`n_bins` must be >= 3, got {n_bins!r}")
    if not (np.isfinite(max_correlation) and 0 < max_correlation < 1):
        raise ParameterError(f"`max_correlation` must be in (0, 1), got {max_correlation!r}")
    if offset is not None and not np.isfinite(offset):
        raise ParameterError(f"`offset` must be finite, got {offset!r}")
    reasons: list[str] = []
    meta: dict[str, Any] = {}
    if isinstance(image, Image | Series):
        meta = dict(image.metadata)
        data = np.asarray(image.data, dtype=float)
    else:
        data = np.asarray(image)
        if data.dtype.kind not in "biuf":  # text raised numpy's "could not convert" ValueError
            raise DataError(f"`image` must be numeric, got dtype {data.dtype}")
        data = data.astype(float)
    if meta.get("normalized"):
        reasons.append(
            "the image is already normalised (metadata['normalized']): its noise scale is "
            "1/(dose·dx²), not a detector gain"
        )
    if data.ndim not in (2, 3) or min(data.shape[-2:]) < 16:
        raise ParameterError(
            f"`image` must be (M, N) or (T, M, N) with M, N >= 16, got shape {data.shape}"
        )
    if not np.all(np.isfinite(data)):
        raise ParameterError("`image` holds NaN or inf values")
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != data.shape[-2:]:
            raise ParameterError(
                f"`mask` must have the image shape {data.shape[-2:]}, got {mask.shape}"
            )
    if frames not in ("difference", "aligned", "pooled"):
        raise ParameterError(
            f"`frames` must be 'difference', 'aligned' or 'pooled', got {frames!r}"
        )
    series = data.ndim == 3 and data.shape[0] >= 2
    try:
        lev, var, key, method, series, img0, prod = _samples(
            data, mask, int(n_bins), series=series, frames=frames
        )
    except DataError as exc:
        # every 2×2 block is a sample: a small field has too few smooth ones to fit a line
        raise DataError(f"{exc} {_too_few_text(data)}") from None
    try:
        levels, variances, errs, (gain, c), cov, _ = _fit(lev, var, int(n_bins), key)
    except DataError as exc:
        raise DataError(f"{exc} {_too_few_text(data, lev.size)}") from None
    gain_err, c_err = (float(np.sqrt(max(cov[i, i], 0.0))) for i in range(2))
    coarse = None
    if prod is None:
        coarse = _structure_checks(
            data,
            mask,
            int(n_bins),
            (gain, gain_err),
            (levels, variances, errs),
            reasons,
            min_gain_snr,
        )
    else:
        _change_check(prod, var, reasons)
    # correlated pixels: the noise spectrum is no longer white (less power at Nyquist)
    if series:
        pairs = _aligned_pairs(data[:5], mask, align=frames == "aligned")
        noise_imgs = [a - b for a, b, _, _ in pairs]
        mask = None if frames == "aligned" else mask
    else:
        noise_imgs = [img0]
    ratio, ratio_err = _spectral_ratio(noise_imgs, mask)
    if np.isfinite(ratio) and ratio - 1.0 > max(max_correlation, 3.0 * ratio_err):
        reasons.append(
            f"neighbouring pixels are correlated: the noise power just below Nyquist is "
            f"{ratio:.2f} ± {ratio_err:.2f} × that at Nyquist (white noise: 1; "
            "interpolated/resampled data or a detector response spanning pixels); a "
            "variance-based gain is biased low"
        )
    if not (gain > min_gain_snr * gain_err) and gain > 2.0 * gain_err:
        # a rising but imprecise line: the error falls about as 1/√(samples) ∝ 1/√(pixels),
        # so this many times the field would reach min_gain_snr (a rough estimate: a larger
        # field usually spans more levels, a crystal interior does not)
        grow = (min_gain_snr * gain_err / gain) ** 2
        reasons.append(
            f"the field is too small to identify the gain: slope {gain:.3g} ± {gain_err:.2g} "
            f"(below {min_gain_snr:g}σ) {_frame_size_text(data, lev.size)}; about "
            f"{grow:.1f}× the pixels (≈ {_side_needed(data, grow)} px, or more frames) are "
            "needed, or pass the measured gain"
        )
    elif not (gain > min_gain_snr * gain_err):
        if _small_field(data):
            # on a field this small a shot-noise slope can fall within 2σ of 0: say so
            # rather than blame the data (20×20 crops of a 34 Å crystal at 10⁴ e⁻/Å², gain
            # 5: 10 of 160 realisations, e.g. slope 4.92 ± 2.5)
            reasons.append(
                f"the variance does not rise measurably with the level (slope {gain:.3g} ± "
                f"{gain_err:.2g}) {_too_few_text(data, lev.size)}"
            )
        else:
            reasons.append(
                f"the variance does not rise with the level (slope {gain:.3g} ± "
                f"{gain_err:.2g}): no shot noise is measurable (noise-free, denoised or "
                "read-noise-dominated data)"
            )
    q = _quantum(data)
    if q is None and not meta.get("normalized") and float(np.max(np.abs(data))) <= 1.5:
        # detector counts are integers times an ADC step; continuous values of at most
        # ~1 are a fraction of the incident beam (normalised, or a simulation's mean)
        reasons.append(
            "the values look normalised (continuous, |value| <= 1.5: a fraction of the beam): "
            "their noise scale is 1/(dose·dx²), not a detector gain; pass raw counts"
        )
    # offset bracket: read² >= 0  →  offset >= −c/gain ; electrons >= 0  →  offset <= L_min
    # the darkest level: the mean of the block means (unbiased) of the 2 % of blocks whose
    # surroundings are darkest (selected on the instrument, not on their own noise)
    dark = key <= np.quantile(key, 0.02)
    l_min = float(np.mean(lev[dark]))
    g = gain if gain > 0 else np.nan
    lo = -c / g
    lo_err = float(np.hypot(c_err / g, c * gain_err / g**2))
    if offset is not None:
        off, src = float(offset), "given"
    elif not np.isfinite(lo) or lo <= l_min + 2.0 * lo_err:
        off, src = l_min, "darkest field"
    else:
        off, src = lo, "zero read noise (the darkest level lies below −c/gain)"
    read = float(np.sqrt(max(gain * off + c, 0.0)))
    return NoiseModel(
        gain=float(gain),
        gain_err=gain_err,
        intercept=float(c),
        intercept_err=c_err,
        offset=float(off),
        offset_range=(float(lo), l_min),
        offset_source=src
        if src != "darkest field"
        else "darkest 2 % of the field (assumed to receive ~no electrons)",
        read_noise=read,
        identified=not reasons,
        reasons=tuple(reasons),
        method=method,
        spectral_ratio=(ratio, ratio_err),
        levels=levels,
        variances=variances,
        variance_errs=errs,
        n_samples=int(lev.size),
        quantum=q,
        gain_coarse=coarse,
    )


# Structure tests of a single-image gain (tuned on simulated crystals, KMC frames and
# multislice images at 0.1–0.5 Å/px, 10²–10⁷ e⁻/Å², gain 1–20, seeds 0–1): the coarse-sampling
# gain must not exceed the gain by more than max(10 %, 2σ), and 2σ must be below 50 % of the
# gain (else the test could not see a 50 % leak); a variance curvature above 3σ and 10 % of
# the slope over the level range is structure.
_COARSE_TOL, _COARSE_SIGMA, _COARSE_POWER = 0.10, 2.0, 0.5
_CURVATURE_SIGMA, _CURVATURE_TOL = 3.0, 0.10

_STRUCTURE_ADVICE = (
    "pass the measured gain, or measure it from ≥ 2 frames of the same field (frame "
    "differences cancel the structure)"
)


def _structure_checks(
    data: np.ndarray,
    mask: np.ndarray | None,
    n_bins: int,
    fit: tuple[float, float],
    curve: tuple[np.ndarray, np.ndarray, np.ndarray],
    reasons: list[str],
    min_gain_snr: float,
) -> tuple[float, float] | None:
    """Tests that the single-image variance is shot noise, not unresolved structure; appends
    the reasons it is not.  Returns the gain ± 1σ at 2× coarser sampling (None when it
    cannot be measured).

    Signal structure that the smoothness mask misses (columns narrower than a few pixels,
    coarse sampling, high dose) adds variance that grows with the level, so the slope
    exceeds the gain.  Two consequences are tested, in the spirit of the photon-transfer
    linearity check (Janesick 2007) and of Foi et al.'s (2008) restriction to smooth data:

    * scale: every other pixel (the four 2×-subsampled phases, pooled) has the same shot
      noise per pixel, but the structure lies at twice the spatial frequency and leaks more
      into the details; shot noise gives the same gain, structure a larger one;
    * curvature: structure variance grows as the level squared (contrast × level), shot
      noise linearly: a significant quadratic term over the level range is structure.
    """
    gain, gain_err = fit
    frames = [data] if data.ndim == 2 else [data[k] for k in _pooled_frames(data.shape[0])]
    coarse = None
    try:
        parts = []
        for img in frames:
            m, n = (img.shape[0] // 2) * 2, (img.shape[1] // 2) * 2
            for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)):
                sub_mask = None if mask is None else mask[i:m:2, j:n:2]
                parts.append(_single_image_samples(img[i:m:2, j:n:2], sub_mask, n_bins))
        lev, var, key = (np.concatenate([p[i] for p in parts]) for i in range(3))
        p, cov = _fit(lev, var, n_bins, key)[3:5]
        coarse = (float(p[0]), float(np.sqrt(max(cov[0, 0], 0.0))))
    except DataError as exc:
        reasons.append(
            f"the gain could not be checked at 2× coarser sampling ({exc}): structure may "
            f"dominate the pixel variance; {_STRUCTURE_ADVICE}"
        )
    if coarse is not None and gain > 0:
        # one-sided: structure leaks more at the coarser sampling, never less
        excess = coarse[0] - gain
        band = _COARSE_SIGMA * np.hypot(gain_err, coarse[1])
        # (an imprecise gain is refused anyway, as too small a field)
        if band > _COARSE_POWER * gain and gain > min_gain_snr * gain_err:
            reasons.append(
                f"the gain cannot be confirmed at 2× coarser sampling: every other pixel gives "
                f"{coarse[0]:.3g} ± {coarse[1]:.2g}, all pixels {gain:.3g} ± {gain_err:.2g}, "
                f"too imprecise to exclude structure adding {_COARSE_POWER:.0%} to the "
                f"variance {_frame_size_text(data)}; use a larger field, or " + _STRUCTURE_ADVICE
            )
        elif excess > max(_COARSE_TOL * gain, band):
            reasons.append(
                f"structure adds to the pixel variance: every other pixel (2× coarser "
                f"sampling) gives gain {coarse[0]:.3g} ± {coarse[1]:.2g}, all pixels "
                f"{gain:.3g} ± {gain_err:.2g} (shot noise gives one gain at any sampling; "
                "expected at coarse sampling or high dose); " + _STRUCTURE_ADVICE
            )
    levels, variances, errs = curve
    if levels.size >= 4 and gain > 0:
        x = levels - levels.min()
        a = np.column_stack([x, np.ones_like(x), x * x])
        th, cv, _ = _wls(a, variances, errs)
        q, q_err = float(th[2]), float(np.sqrt(max(cv[2, 2], 0.0)))
        rel = q * float(x.max()) / gain
        if q > _CURVATURE_SIGMA * q_err and rel > _CURVATURE_TOL:
            reasons.append(
                f"the variance grows faster than linearly with the level (a quadratic term "
                f"{rel:.0%} of the slope at the brightest level, {q / q_err:.1f}σ): "
                "unresolved structure adds variance ∝ level², shot noise ∝ level; "
                + _STRUCTURE_ADVICE
            )
    return coarse


# frame differences: adjacent differences correlated by more than this (and 3σ) hold change
_CHANGE_CORRELATION = 0.05


def _change_check(prod: np.ndarray, var: np.ndarray, reasons: list[str]) -> None:
    """Appends a reason when the frame differences are not shot noise alone.

    Shot noise is independent between pixels, so adjacent differences are uncorrelated;
    what changed between the frames (beam damage, a moving cluster, a residual shift) is
    smooth over a few pixels and correlates them (cf. the autocorrelation-based noise
    estimate of Thong et al., Scanning 23 (2001) 328).  Its variance adds to the shot noise
    and biases the gain high.
    """
    total = float(np.sum(var))
    if prod.size < 30 or total <= 0:
        return
    rho = float(np.sum(prod)) / total
    rho_err = float(np.sqrt(np.sum(prod * prod))) / total
    if rho > max(_CHANGE_CORRELATION, 3.0 * rho_err):
        reasons.append(
            f"the frames differ by more than shot noise: adjacent pixels of the frame "
            f"differences are correlated ({rho:.2f} ± {rho_err:.2f}; shot noise: 0), so the "
            "scene changed between frames (beam damage, motion) or the frames are not "
            "registered; register the frames, use frames with less change, or pass the "
            "measured gain"
        )


def _pooled_frames(n: int, most: int = 8) -> np.ndarray:
    """Up to ``most`` evenly spaced frame indices of ``n``."""
    return np.unique(np.linspace(0, n - 1, min(most, n)).astype(int))


def _samples(
    data: np.ndarray, mask: np.ndarray | None, n_bins: int, *, series: bool, frames: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str, bool, np.ndarray, np.ndarray | None]:
    """Level, variance and instrument samples, the method, whether the correlation check
    uses frame differences, the frame it uses otherwise, and the frame differences'
    neighbour products (None for single images)."""
    img0 = data if data.ndim == 2 else data[0]
    if series and frames == "pooled":
        use = _pooled_frames(data.shape[0])
        parts = [_single_image_samples(data[k], mask, n_bins) for k in use]
        lev, var, key = (np.concatenate([p[i] for p in parts]) for i in range(3))
        # correlation check and dark level on the first frame
        return lev, var, key, f"single-image, {use.size} frames pooled", False, data[use[0]], None
    if series:
        pairs = _aligned_pairs(data, mask, align=frames == "aligned")
        lev, var, key, prod = _frame_difference_samples(pairs)
        method = "frame-difference" + (", aligned pairs" if frames == "aligned" else "")
        return lev, var, key, method, True, img0, prod
    lev, var, key = _single_image_samples(img0, mask, n_bins)
    return lev, var, key, "single-image", False, img0, None


# A field of fewer 2×2 blocks than this (under 64×64 px) is too small for a single-image
# gain: on a simulated crystal at 10⁴ e⁻/Å², a 48² crop gave slope 2.4σ, 64² 5.9σ
_SMALL_FIELD_BLOCKS = 1024


def _frame_size_text(data: np.ndarray, n_samples: int | None = None) -> str:
    """``(a M×N-pixel field: n usable of m 2×2-block samples)`` for a message."""
    m, n = data.shape[-2:]
    k = data.shape[0] if data.ndim == 3 else 1
    of = f"{n_samples} usable of " if n_samples is not None else ""
    frames = f" × {k} frames" if k > 1 else ""
    return f"(a {m}×{n}-pixel field{frames}: {of}{k * (m // 2) * (n // 2)} 2×2-block samples)"


def _blocks(data: np.ndarray) -> int:
    """2×2 blocks of all frames of ``data``."""
    m, n = data.shape[-2:]
    return (data.shape[0] if data.ndim == 3 else 1) * (m // 2) * (n // 2)


def _small_field(data: np.ndarray) -> bool:
    """Fewer 2×2 blocks than :data:`_SMALL_FIELD_BLOCKS` (under 64×64 px)."""
    return _blocks(data) < _SMALL_FIELD_BLOCKS


def _too_few_text(data: np.ndarray, n_samples: int | None = None) -> str:
    """The field behind a failed fit, and what to do about it."""
    blocks = _blocks(data)
    text = _frame_size_text(data, n_samples)
    if blocks < _SMALL_FIELD_BLOCKS:
        return (
            f"{text}: too small a field for a shot-noise estimate (≥ 64×64 px needed); pass "
            "the measured gain, or use a larger field or more frames"
        )
    if n_samples is not None and n_samples < 0.05 * blocks:
        return (
            f"{text}: almost no block is smooth enough (the field is nearly all structure); "
            "pass the measured gain, or include vacuum or flat areas"
        )
    return text


def _side_needed(data: np.ndarray, grow: float) -> str:
    """Side of a square field with ``grow`` times the pixels of one frame of ``data``."""
    m, n = data.shape[-2:]
    side = int(np.ceil(np.sqrt(grow * m * n) / 2.0) * 2)
    return f"{side}×{side}"


def _haar_hh(a: np.ndarray) -> np.ndarray:
    """Diagonal Haar detail of non-overlapping 2×2 blocks (variance σ² for white noise)."""
    m, n = (a.shape[0] // 2) * 2, (a.shape[1] // 2) * 2
    a = a[:m, :n]
    return 0.5 * (a[0::2, 0::2] - a[0::2, 1::2] - a[1::2, 0::2] + a[1::2, 1::2])


def _ring_offsets(half: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Offsets (row, col) from a 2×2 block's first pixel, their (y, x) from the block centre,
    and the mask of the block's own four pixels."""
    u = np.arange(-half + 1, half + 1)
    uu, vv = np.meshgrid(u, u, indexing="ij")
    y, x = uu - 0.5, vv - 0.5
    return (
        np.column_stack([uu.ravel(), vv.ravel()]),
        np.column_stack([y.ravel(), x.ravel()]),
        ((np.abs(x) < 1) & (np.abs(y) < 1)).ravel(),
    )


def _curvature_kernel(sigma: float = 1.0, half: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Taps (offsets, weights) estimating the diagonal Haar detail of the *signal* at a 2×2
    block from the pixels around it, the block's own four pixels excluded (so the estimate is
    independent of the block's noise and selecting on it does not bias the variance)."""
    offs, yx, own = _ring_offsets(half)
    y, x = yx[:, 0], yx[:, 1]
    w = x * y * np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    w[own] = 0.0
    w /= np.sum(w * x * y)  # exact for f = a·x·y: Σ w f = a
    return offs, 0.5 * w  # the diagonal detail of a·x·y is a/2


def _level_kernel(sigma: float = 1.5, half: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Taps of a Gaussian local mean around a 2×2 block without the block's own pixels: an
    instrument for the level, independent of the block's noise (binning on the block's own
    noisy mean would flatten the curve: regression dilution)."""
    offs, yx, own = _ring_offsets(half)
    w = np.exp(-(yx[:, 0] ** 2 + yx[:, 1] ** 2) / (2 * sigma * sigma))
    w[own] = 0.0
    return offs, w / w.sum()


def _block_filter(img: np.ndarray, taps: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """``Σ w·img[2I + du, 2J + dv]`` at every 2×2 block (I, J) (reflecting borders)."""
    offs, w = taps
    half = int(np.max(np.abs(offs))) + 1
    pad = np.pad(img, half, mode="reflect")
    m, n = img.shape[0] // 2, img.shape[1] // 2
    out = np.zeros((m, n))
    for (du, dv), wk in zip(offs, w, strict=True):
        if wk != 0.0:
            r0, c0 = half + du, half + dv
            out += wk * pad[r0 : r0 + 2 * m : 2, c0 : c0 + 2 * n : 2]
    return out


def _block_mean(a: np.ndarray) -> np.ndarray:
    m, n = (a.shape[0] // 2) * 2, (a.shape[1] // 2) * 2
    a = a[:m, :n]
    return 0.25 * (a[0::2, 0::2] + a[0::2, 1::2] + a[1::2, 0::2] + a[1::2, 1::2])


def _single_image_samples(
    img: np.ndarray, mask: np.ndarray | None, n_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Level (2×2 block mean), squared diagonal detail and level instrument of smooth blocks.

    The block mean is the level: it is the Haar approximation of the same four pixels,
    orthogonal to the detail, and unlike a smoothed level it is not pulled down at narrow
    column peaks.  Smooth blocks: the signal's detail estimated from the surrounding pixels
    (:func:`_curvature_kernel`) is below √0.02 of the noise σ of a first fit at the block's level.
    """
    d = _haar_hh(img)
    level = _block_mean(img)
    key = _block_filter(img, _level_kernel())
    ok = np.ones(d.shape, bool)
    if mask is not None:
        ok &= _block_mean(mask.astype(float)) == 1.0
    p = _fit(level[ok], d[ok] ** 2, n_bins, key[ok])[3]
    model = np.maximum(p[0] * key + p[1], 0.0)
    ok &= _block_filter(img, _curvature_kernel()) ** 2 <= 0.02 * model
    return level[ok], d[ok] ** 2, key[ok]


def _frame_difference_samples(
    pairs: list[tuple[np.ndarray, np.ndarray, tuple[float, float], np.ndarray | None]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Level, squared half-difference and neighbour product of frame pairs, 2×2 blocks.

    ``((y_k − y_{k+1})/√2)²`` averaged over a 2×2 block (four independent pixels for white
    noise) against the block mean of the two frames.  Dropped: blocks where the mean frame's
    gradient would turn the pair's residual misregistration (its sub-pixel remainder
    ``(ry, rx)`` plus 0.1 px) into more than 5 % of the variance, and blocks whose
    surroundings (an 8×8 ring without the block) hold more than 1.5× the fitted noise
    variance — the scene changed there (beam damage, a moving cluster, a misaligned edge).
    ``pairs``: (frame k, frame k+1, residual shift px, mask or None).  The neighbour
    product is the mean of the four products of edge-adjacent differences in the block:
    zero on average for shot noise, positive where the frames differ coherently.
    """
    offs, _, own = _ring_offsets(4)
    ring = (offs, np.where(own, 0.0, 1.0 / np.count_nonzero(~own)))
    levs, vars_, keys, prods = [], [], [], []
    for a, b, (ry, rx), mask in pairs:
        diff = (a - b) / np.sqrt(2.0)
        mean = 0.5 * (a + b)
        level = _block_mean(mean)
        key = _block_filter(mean, _level_kernel())
        v = _block_mean(diff * diff)
        m2, n2 = (diff.shape[0] // 2) * 2, (diff.shape[1] // 2) * 2
        d00, d01 = diff[0:m2:2, 0:n2:2], diff[0:m2:2, 1:n2:2]
        d10, d11 = diff[1:m2:2, 0:n2:2], diff[1:m2:2, 1:n2:2]
        prod = 0.25 * (d00 * d01 + d10 * d11 + d00 * d10 + d01 * d11)
        gy, gx = np.gradient(ndimage.gaussian_filter(mean, 1.0, mode="nearest"))
        g2 = _block_mean(((abs(rx) + 0.1) * gx) ** 2 + ((abs(ry) + 0.1) * gy) ** 2)
        ok = np.ones(level.shape, bool)
        if mask is not None:
            ok &= _block_mean(mask.astype(float)) == 1.0
        around = _block_filter(diff * diff, ring)
        for _ in range(2):  # the change mask needs the noise model, and the model the mask
            p = _fit(level[ok], v[ok], 8, key[ok])[3]
            model = np.maximum(p[0] * key + p[1], 1e-300)
            ok &= (g2 <= 0.05 * model) & (around <= _CHANGE_TOL * model)
        levs.append(level[ok])
        vars_.append(v[ok])
        keys.append(key[ok])
        prods.append(prod[ok])
    return tuple(np.concatenate(x) for x in (levs, vars_, keys, prods))  # type: ignore[return-value]


# surroundings of a difference block with more than this × the noise variance have changed
# (≈ 2.7σ for the 60 ring pixels of pure noise)
_CHANGE_TOL = 1.5


def _aligned_pairs(
    frames: np.ndarray, mask: np.ndarray | None, align: bool
) -> list[tuple[np.ndarray, np.ndarray, tuple[float, float], np.ndarray | None]]:
    """Consecutive frame pairs, each aligned to the whole pixel when ``align`` (phase
    correlation, :func:`perovstem.insitu.phase_correlate`; cropped to the overlap, no
    interpolation, which would correlate the pixels' noise), with the sub-pixel remainder."""
    out = []
    for k in range(frames.shape[0] - 1):
        a, b = frames[k], frames[k + 1]
        if not align:
            out.append((a, b, (0.0, 0.0), mask))
            continue
        from perovstem.insitu.register import phase_correlate

        dy, dx, _ = phase_correlate(a, b, max_shift_px=0.25 * min(a.shape))
        iy, ix = int(round(dy)), int(round(dx))
        m, n = a.shape
        ra, ca = slice(max(0, -iy), m - max(0, iy)), slice(max(0, -ix), n - max(0, ix))
        rb, cb = slice(max(0, iy), m - max(0, -iy)), slice(max(0, ix), n - max(0, -ix))
        if min(m - abs(iy), n - abs(ix)) < 16:
            continue
        a, b = a[ra, ca], b[rb, cb]
        sub = None if mask is None else mask[ra, ca] & mask[rb, cb]
        # the sub-pixel remainder by a Fourier phase ramp: unitary, so the shot noise stays
        # white with its variance (an interpolating shift would correlate the pixels); the
        # few pixels it wraps across the border are cropped
        b = np.fft.irfft2(
            ndimage.fourier_shift(np.fft.rfft2(b), (iy - dy, ix - dx), n=b.shape[1]), b.shape
        )
        e = 3
        a, b = a[e:-e, e:-e], b[e:-e, e:-e]
        sub = None if sub is None else sub[e:-e, e:-e]
        if min(a.shape) < 16:
            continue
        out.append((a, b, (0.0, 0.0), sub))
    if not out:
        raise DataError("no pair of frames overlaps after alignment")
    return out


def _fit(
    lev: np.ndarray, var: np.ndarray, n_bins: int, key: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Photon-transfer line through the binned curve; refitted once with 5σ outliers
    (relative to the first line, at least 5 gains: single counts at a tiny level are no
    outliers) dropped.  Returns levels, variances, errors, (gain, c), covariance, χ²ᵣ."""
    if lev.size < 30:
        raise DataError(f"too few smooth samples ({lev.size}) to measure the noise")
    curve = _binned_curve(lev, var, n_bins, key)
    if curve[0].size < 3:
        raise DataError("the data span too narrow a range of levels to fit a gain")
    p, cov, chi = _wls_line(*curve)
    expected = np.maximum(p[0] * np.maximum(key, lev) + p[1], max(p[0], 0.0) ** 2)
    curve = _binned_curve(lev, var, n_bins, key, expected=expected)
    if curve[0].size < 3:
        raise DataError("the data span too narrow a range of levels to fit a gain")
    p, cov, chi = _wls_line(*curve)
    return curve[0], curve[1], curve[2], p, cov, chi


def _spectral_ratio(imgs: list[np.ndarray], mask: np.ndarray | None) -> tuple[float, float]:
    """Noise power just below Nyquist along one axis over that at the Nyquist corner, ± 1σ.

    Independent pixels have a flat (white) noise spectrum whatever their level; pixels
    correlated by interpolation or a detector response spanning pixels (along the fast
    scan) lose power towards Nyquist.  Both bands lie beyond 0.40 cycles/px along the other
    axis, where a probe of σ ≳ 1 px leaves no signal: median periodogram over
    kx ∈ [0.20, 0.33], |ky| ≥ 0.40 (and the transposed band) over the median at
    |kx|, |ky| ≥ 0.40; the larger of the two axes is returned.  Medians of exponential
    periodogram ordinates, error ×2 for the neighbours a Hann window correlates.
    """
    pa, pbx, pby = [], [], []
    for img in imgs:
        x = np.asarray(img, float)
        if mask is not None:
            x = np.where(mask, x, np.median(x[mask]))
        x = x - ndimage.gaussian_filter(x, 4.0, mode="nearest")  # slow signal out
        m, n = x.shape
        win = np.outer(np.hanning(m), np.hanning(n))
        p = np.abs(np.fft.fft2(x * win)) ** 2
        ky = np.abs(np.fft.fftfreq(m))[:, None] + np.zeros((1, n))
        kx = np.abs(np.fft.fftfreq(n))[None, :] + np.zeros((m, 1))
        pa.append(p[(kx >= 0.4) & (ky >= 0.4)])
        pbx.append(p[(kx >= 0.2) & (kx <= 0.33) & (ky >= 0.4)])
        pby.append(p[(ky >= 0.2) & (ky <= 0.33) & (kx >= 0.4)])
    a = np.concatenate(pa)
    if a.size < 50 or np.median(a) <= 0:
        return float("nan"), float("nan")
    best = (float("nan"), float("nan"))
    for b in (np.concatenate(pbx), np.concatenate(pby)):
        if b.size < 50:
            continue
        ratio = float(np.median(b) / np.median(a))
        err = 2.0 * ratio * float(np.hypot(1 / np.sqrt(a.size), 1 / np.sqrt(b.size))) / np.log(2)
        if not np.isfinite(best[0]) or ratio > best[0]:
            best = (ratio, err)
    return best


def _binned_curve(
    lev: np.ndarray,
    var: np.ndarray,
    n_bins: int,
    key: np.ndarray,
    expected: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bins of the level instrument ``key`` → mean level, mean variance, standard error.

    Binned on ``key`` (a local mean independent of the sample's own noise), averaged on
    ``lev`` (the sample's unbiased level): the mean level of a bin is then unbiased, where
    binning on ``lev`` itself would spread a constant-level vacuum over a range of levels
    and flatten the fitted slope (regression dilution).

    Bin edges are the union of equal-count and equal-width edges (a HAADF field is mostly
    vacuum: equal counts alone would lump the whole crystal into one wide bin), adjacent bins
    merged until each holds enough samples.  With ``expected`` (the variance of a first fit
    at each sample), squared details above 25× it (5σ: hot pixels, leftover edges) are
    dropped and it floors the bins' errors.
    """
    n = lev.size
    edges = np.unique(
        np.concatenate(
            [
                np.quantile(key, np.linspace(0, 1, n_bins + 1)),
                np.linspace(key.min(), key.max(), n_bins + 1),
            ]
        )
    )
    if edges.size < 2:  # one level only
        return np.zeros(0), np.zeros(0), np.zeros(0)
    idx = np.clip(np.searchsorted(edges, key, side="right") - 1, 0, edges.size - 2)
    counts = np.bincount(idx, minlength=edges.size - 1)
    min_count = max(30, n // (4 * n_bins))
    group = np.zeros(counts.size, int)
    g, acc = 0, 0
    for i, c in enumerate(counts):
        group[i] = g
        acc += c
        if acc >= min_count:
            g, acc = g + 1, 0
    if acc and g > 0:  # a short last group joins the previous one
        group[group == g] = g - 1
    gid = group[idx]
    keep = np.ones(n, bool) if expected is None else var <= 25.0 * np.maximum(expected, 1e-300)
    out_l, out_v, out_e = [], [], []
    for b in range(int(gid.max()) + 1):
        sel = (gid == b) & keep
        if np.count_nonzero(sel) < 10:
            continue
        vk = var[sel]
        out_l.append(float(np.mean(lev[sel])))
        out_v.append(float(np.mean(vk)))
        err = float(np.std(vk, ddof=1) / np.sqrt(vk.size))
        if expected is not None:
            # a low sample also has a low spread: an empirical error alone would give the
            # bins that came out low the larger weight (a downward bias of the slope); the
            # first line's Gaussian error 2·E[σ⁴]/n is a floor independent of the sample
            err = max(err, float(np.sqrt(2.0 * np.mean(expected[sel] ** 2) / vk.size)))
        out_e.append(err)
    levels, variances, errs = (np.array(x) for x in (out_l, out_v, out_e))
    # a bin of exact zeros (zero-count vacuum without read noise) has error 0: floor it so
    # that it does not take all the weight
    pos = errs[errs > 0]
    floor = 0.1 * float(np.min(pos)) if pos.size else 1.0
    return levels, variances, np.maximum(errs, floor)


def _wls_line(x: np.ndarray, y: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    return _wls(np.column_stack([x, np.ones_like(x)]), y, e)


def _wls(a: np.ndarray, y: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Weighted least squares ``y ≈ a·p`` (errors ``e``): p, covariance scaled by χ²ᵣ when
    above 1, χ²ᵣ.

    Solved on the whitened rows ``a/e`` by QR (their condition number, not its square): a
    noise-free vacuum bin (variance and error ~1e-8, the residue of a sub-pixel phase ramp)
    next to crystal bins of error ~1 squares to weights 10¹⁶ apart, and a pseudo-inverse of
    the normal equations then dropped the slope direction as rank-deficient (gain 3e-10 on
    three frames of a simulated crystal whose true gain is 2.5).
    """
    aw = a / e[:, None]
    q, rr = np.linalg.qr(aw)
    rinv = np.linalg.pinv(rr)
    p = rinv @ (q.T @ (y / e))
    cov = rinv @ rinv.T
    r = (y - a @ p) / e
    dof = max(y.size - a.shape[1], 1)
    chi2r = float(r @ r) / dof
    return p, cov * max(chi2r, 1.0), chi2r


def _quantum(data: np.ndarray) -> float | None:
    """ADC step when every value is ``v0 + q·n`` (else None); cheap on a subsample."""
    v = np.unique(data.ravel()[:: max(1, data.size // 200_000)])
    if v.size < 3 or v.size > 50_000:
        return None
    return value_step(v)


def value_step(v: np.ndarray) -> float | None:
    """Spacing ``q`` when the sorted unique values ``v`` are all ``v[0] + q·n`` (counts
    times a gain on an offset), else None."""
    step = np.diff(v)
    tol = 1e-6 * (float(np.ptp(v)) or 1.0)
    step = step[step > tol]
    if step.size == 0:
        return None
    q = float(step.min())
    n = (v - v[0]) / q
    return q if np.all(np.abs(n - np.round(n)) < 1e-3) else None


def _identified(estimate: Any, what: str) -> NoiseModel:
    """``estimate()`` (an :func:`estimate_noise_model` call) or a DataError naming ``what``
    and the reason when the data do not identify the detector gain."""
    try:
        nm = estimate()
    except DataError as exc:
        raise DataError(f"{what}: could not measure the detector gain: {exc}") from exc
    if not nm.identified:
        raise DataError(
            f"{what}: the data cannot identify the detector gain ({nm.describe()}); pass the "
            "measured gain"
        )
    return nm


def parse_gain(value: Any, *, name: str = "gain") -> float | str | None:
    """A "detector gain" option: None (not given), ``"auto"`` or a number > 0 (counts/e⁻).

    One parser for the command line (``--gain``) and the pipeline (``gain``), which take a
    number or the word "auto"; anything else is a ParameterError naming ``name``.
    """
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        g = float(value)
    except (TypeError, ValueError):
        g = float("nan")
    if not (np.isfinite(g) and g > 0):
        raise ParameterError(f"`{name}` must be a number > 0 or 'auto', got {value!r}")
    return g


def auto_detector(image: Image, *, what: str) -> NoiseModel:
    """Detector model of ``image`` for a ``gain="auto"`` option (DataError when the gain is
    not identified)."""
    return _identified(lambda: estimate_noise_model(image), f"{what}: gain='auto'")


def _series_frames(series: Series, n: int = 6) -> np.ndarray:
    """The first ``n`` consecutive frames of a (possibly lazy) series, as floats."""
    return np.stack(
        [np.asarray(series.data[k], dtype=float) for k in range(min(n, series.n_frames))]
    )


def _series_estimate(frames: np.ndarray) -> tuple[NoiseModel | None, list[str]]:
    """Detector model of raw in-situ frames: differences of consecutive frames aligned to
    the whole pixel (structure cancels; drift does not enter), else the single-image
    samples of the frames pooled; the first identified one, or None and why neither is."""
    why = []
    if frames.shape[0] >= 2:
        try:
            nm = estimate_noise_model(frames, frames="aligned")
            if nm.identified:
                return nm, []
            why.append("frame differences: " + "; ".join(nm.reasons))
        except DataError as exc:
            why.append(f"frame differences: {exc}")
    try:
        nm = estimate_noise_model(frames, frames="pooled")
        if nm.identified:
            return nm, []
        why.append("single frames: " + "; ".join(nm.reasons))
    except DataError as exc:
        why.append(f"single frames: {exc}")
    return None, why


def measure_series_detector(series: Series, what: str) -> NoiseModel:
    """Detector model of a raw in-situ series from its first ≤ 6 frames (aligned frame
    differences, else single frames pooled); DataError naming ``what`` when neither
    identifies the gain."""
    nm, why = _series_estimate(_series_frames(series))
    if nm is None:
        raise DataError(
            f"{what}: the frames cannot identify the detector gain ({' | '.join(why)}); pass "
            "the measured gain"
        )
    return nm


def describe_series_estimate(series: Series) -> str:
    """The series estimate for a note ('' when it cannot be measured)."""
    try:
        nm, _ = _series_estimate(_crop(_series_frames(series, 4)))
    except (DataError, ParameterError):
        return ""
    if nm is None:
        return " (the frames' shot noise does not identify the gain)"
    return f" (measured from the frames' shot noise: {nm.describe()})"


def _crop(a: np.ndarray, n: int = 512) -> np.ndarray:
    """Central ≤ n×n crop of the last two axes (a warning's estimate must stay cheap)."""
    m0, m1 = a.shape[-2:]
    r0, c0 = max((m0 - n) // 2, 0), max((m1 - n) // 2, 0)
    return a[..., r0 : r0 + n, c0 : c0 + n]


# describe_estimate's text per image array: id -> (weak reference, shape and dtype, text).
# The unknown-gain warning is raised by every normalize_image / fit_columns /
# voronoi_intensities call on the same counts; the estimate is measured once per array.
_DESCRIBED: dict[int, tuple[Any, tuple, str]] = {}


def describe_estimate(image: Image) -> str:
    """The estimated model for a warning text ('' when it cannot be measured); measured on
    a central 512² crop at most (~0.05 s), once per image array (cached by identity: an
    array changed in place keeps its first description)."""
    data = image.data
    key = (tuple(np.shape(data)), str(getattr(data, "dtype", "")))
    hit = _DESCRIBED.get(id(data))
    if hit is not None and hit[0]() is data and hit[1] == key:
        return hit[2]
    text = _describe_estimate(image)
    try:
        ref = weakref.ref(data)
    except TypeError:  # not weak-referenceable (a list): not cached
        return text
    while len(_DESCRIBED) >= 16:
        _DESCRIBED.pop(next(iter(_DESCRIBED)))
    _DESCRIBED[id(data)] = (ref, key, text)
    return text


def _describe_estimate(image: Image) -> str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = _crop(np.asarray(image.data, dtype=float))
            nm = estimate_noise_model(
                image.replace(data=data) if data.shape != image.data.shape else image
            )
    except (DataError, ParameterError):
        return ""
    return f" (measured from the image's shot noise: {nm.describe()})"
