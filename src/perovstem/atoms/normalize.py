"""Detector normalisation: counts → fraction of the incident beam."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from perovstem._data import Image
from perovstem._validation import refuse_text_numbers
from perovstem.errors import CalibrationError, DataError, ParameterError

__all__ = ["normalize_image", "poisson_variance_model"]


def normalize_image(
    image: Image,
    *,
    dose_e_per_A2: float | None = None,
    gain: float | str | None = None,
    offset: float | None = None,
) -> Image:
    """Convert detector counts to the fraction of the incident beam per pixel.

    ``I = (counts − offset) / (gain · dose · dx²)``, the convention of the simulator
    (``docs/CONTRACTS.md``): a column's Gaussian volume fitted on ``I`` (``2π·η·ρ²``) is then
    its scattering cross-section in Å² (fraction of the beam × Å²; H. E et al.,
    Ultramicroscopy 133 (2013) 109; De Backer et al., Ultramicroscopy 171 (2016) 104).

    Parameters
    ----------
    image : Image
        Count image (M, N); ``image.dose_e_per_A2`` and ``metadata['gain'|'offset']`` are used
        unless given here.
    dose_e_per_A2 : float, optional
        Electron dose, e⁻/Å² (overrides ``image.dose_e_per_A2``).
    gain : float or "auto", optional
        Detector counts per detected electron (overrides the metadata; default 1 with a
        warning that quotes the gain measured from the image's shot noise).  ``"auto"``: use
        that measurement (:func:`perovstem.atoms.estimate_noise_model`; its offset too unless
        ``offset`` is given); a DataError when the image cannot identify the gain
        (normalised, interpolated or noise-free data).  The measured gain is the variance
        gain: a detector with pulse-height spread (scintillator/PMT) has a variance gain
        above its mean counts per electron (excess noise factor), so "auto" then
        underestimates the cross-sections by that factor.
    offset : float, optional
        Dark offset, counts (overrides the metadata; default 0).

    Returns
    -------
    Image
        New image with ``metadata['normalized'] = True`` and the factors used.
    """
    refuse_text_numbers(locals())
    if not isinstance(image, Image):
        raise ParameterError(f"`image` must be a perovstem Image, got {type(image).__name__}")
    if image.metadata.get("normalized"):
        return image
    dose = dose_e_per_A2 if dose_e_per_A2 is not None else image.dose_e_per_A2
    if dose is None:
        raise CalibrationError(
            "`dose_e_per_A2` is unknown (image.dose_e_per_A2 is None and none was given); "
            "needed to normalise counts to the incident beam"
        )
    dose = float(dose)
    if not np.isfinite(dose) or dose <= 0:
        raise ParameterError(f"`dose_e_per_A2` must be > 0, got {dose!r}")
    measured = None
    if isinstance(gain, str):
        if gain != "auto":
            raise ParameterError(f"`gain` must be a number or 'auto', got {gain!r}")
        from perovstem.atoms.noise import auto_detector

        measured = auto_detector(image, what="normalize_image")
        gain = measured.gain
        if offset is None:
            offset = measured.offset
    else:
        _warn_assumed_detector(image, gain, offset, "normalize_image", "the cross-sections are")
    g = float(gain if gain is not None else image.metadata.get("gain", 1.0))
    o = float(offset if offset is not None else image.metadata.get("offset", 0.0))
    if not np.isfinite(g) or g <= 0:
        raise ParameterError(f"`gain` must be > 0 counts per electron, got {g!r}")
    counts = np.asarray(image.data, dtype=float)
    top = float(np.nanmax(counts)) - o
    if not top > 0:
        # an inverted image (negated counts, or a bright-field one) was fitted with its
        # darkest columns taken for the brightest and "70 % of pixels saturated"
        raise DataError(
            f"the image holds no counts above the offset ({o:.4g}): its largest value is "
            f"{top + o:.4g}; an inverted (negated or bright-field) image, or a wrong offset"
        )
    _warn_offset_above_vacuum(counts, o, "normalize_image")
    scale = g * dose * image.pixel_size_A**2
    data = (counts - o) / scale
    meta = dict(image.metadata)
    meta.update(
        normalized=True,
        normalization={"gain": g, "offset": o, "dose_e_per_A2": dose, "counts_per_unit": scale},
    )
    if measured is not None:
        meta["normalization"]["noise_model"] = measured.as_dict()
    return image.replace(data=data, dose_e_per_A2=dose, metadata=meta)


def poisson_variance_model(image: Image) -> tuple[float, float, str]:
    """Return ``(s, o, units)`` such that Var(pixel) = s · (E[pixel] − o) under Poisson noise.

    Count images: ``s = gain`` (counts per electron), ``o = offset``. Normalised images
    (``metadata['normalized']``): ``s = 1/(dose·dx²)``, ``o = 0``.
    """
    meta: dict[str, Any] = image.metadata
    if meta.get("normalized"):
        norm = meta.get("normalization", {})
        dose = norm.get("dose_e_per_A2", image.dose_e_per_A2)
        if dose is None:
            raise CalibrationError("normalised image without dose: Poisson variance unknown")
        return 1.0 / (float(dose) * image.pixel_size_A**2), 0.0, "fraction"
    _warn_assumed_detector(
        image, None, None, "the Poisson variance model", "the weights and error bars are"
    )
    _warn_offset_above_vacuum(
        image.data, float(meta.get("offset", 0.0)), "the Poisson variance model"
    )
    return float(meta.get("gain", 1.0)), float(meta.get("offset", 0.0)), "counts"


# darkest share of the (locally averaged) image whose level is compared with the offset,
# and the margin in units of the pixels' noise there
_DARK_SHARE = 0.10
_DARK_MARGIN = 3.0


def _warn_offset_above_vacuum(counts: Any, offset: float, what: str) -> None:
    """Warn when ``offset`` lies above the image's darkest region by more than its noise.

    Counts below the offset are negative electron numbers: with the offset 50 counts above
    a simulated vacuum the Poisson weights of a fit made its position errors 26x too small
    (median |Δr|/σ 26.5), and every cross-section lost the offset's share.  The darkest
    region is the :data:`_DARK_SHARE` of the pixels darkest after a 5 × 5 mean (vacuum
    where the field has some; selecting raw pixels by value would keep only the low tail
    of the noise); its median is compared with the offset in units of its robust spread.
    """
    from scipy import ndimage

    a = np.asarray(counts, dtype=float)
    if a.ndim != 2 or min(a.shape) < 8 or not np.isfinite(offset) or not np.isfinite(a).all():
        return
    smooth = ndimage.uniform_filter(a, 5, mode="nearest")
    dark = smooth <= np.quantile(smooth, _DARK_SHARE)
    v = a[dark]
    level = float(np.median(v))
    noise = 1.4826 * float(np.median(np.abs(v - level)))
    if offset > level + _DARK_MARGIN * noise:
        warnings.warn(
            f"{what}: the offset ({offset:.4g} counts) lies above the image's darkest pixels "
            f"(the darkest {_DARK_SHARE:.0%} sit at {level:.4g} counts, pixel noise "
            f"{noise:.3g}): counts minus offset are negative there, so Poisson weights, "
            "error bars and cross-sections are wrong; give the detector's offset (its "
            "vacuum level) or 'gain auto' to measure it",
            UserWarning,
            stacklevel=3,
        )


def _warn_assumed_detector(image: Image, gain: Any, offset: Any, what: str, harm: str) -> None:
    """Warn when the detector gain/offset fall back to 1 and 0: files from a microscope rarely
    carry them, and a wrong gain scales every cross-section (or Poisson error) silently."""
    missing = [
        name
        for name, given in (("gain", gain), ("offset", offset))
        if given is None and image.metadata.get(name) is None
    ]
    if missing:
        from perovstem.atoms.noise import describe_estimate

        warnings.warn(
            f"{what}: detector {' and '.join(missing)} unknown (not in image.metadata and not "
            "given); assuming gain = 1 count per electron and offset = 0 counts. Pass "
            f"gain=/offset= (measured on the detector), otherwise {harm} wrong"
            + describe_estimate(image),
            UserWarning,
            stacklevel=3,
        )
