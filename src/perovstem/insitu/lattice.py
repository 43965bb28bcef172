"""Lattice periodicity of a frame: estimate from the FFT and a unit-cell averaging filter.

The unit-cell filter multiplies the spectrum by ``sinc(k·a₁)·sinc(k·a₂)`` (a box average
over one projected cell along the two lattice directions), whose zeros fall on every
reciprocal-lattice vector: the atomic-column contrast of the host disappears and what remains
is a projected "mass-thickness" map that preserves integrated intensities.  Bright objects
that do not share the host lattice (Pb clusters) and the crystal outline survive.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.fft as sfft

from perovstem._validation import check_image, check_positive, refuse_text_numbers
from perovstem.errors import DataError

__all__ = ["estimate_lattice", "fourfold_ratio", "unit_cell_average"]


def host_cell(spacing_A: float, angle_deg: float) -> tuple[float, float]:
    """Perovskite cell (Å) and its orientation (degrees, [0, 90)) from the strongest
    reflection of :func:`estimate_lattice`.

    A spacing shorter than a perovskite cell (5.6–6.3 Å) is a higher order: at 3.6–4.5 Å the
    cell's 110 (a/√2, 45° off the cell axes: on a damaged crystal it can outshine the 100),
    below that its 200 (a/2) or the fringes of a Pb cluster itself (2.9–3.0 Å on [001]
    clusters in vacuum).  Taken as the cell, they set the host model 45° off or at half the
    cell, and the host model then removed Pb⁰ as host (or kept host as Pb⁰).
    """
    if spacing_A >= 4.5:
        return float(spacing_A), float(angle_deg) % 90.0
    if spacing_A >= 3.6:
        return float(spacing_A) * float(np.sqrt(2.0)), (float(angle_deg) + 45.0) % 90.0
    return 2.0 * float(spacing_A), float(angle_deg) % 90.0


def estimate_lattice(
    image: np.ndarray,
    pixel_size_A: float,
    *,
    d_min_A: float = 3.0,
    d_max_A: float = 9.0,
) -> tuple[float, float, float]:
    """Dominant lattice spacing and orientation of a frame from its power spectrum.

    Parameters
    ----------
    image : (M, N) array_like
        Frame.
    pixel_size_A : float
        Pixel size, Å.
    d_min_A, d_max_A : float
        Range of spacings searched, Å (default brackets the 5.87 Å pseudo-cubic cell).

    Returns
    -------
    a_A : float
        Spacing of the strongest reflection in the range, Å.
    angle_deg : float
        Direction of its reciprocal vector from the image x axis, degrees, in [0, 90).
    strength : float
        Peak power over the median power in the same annulus (≫ 1 for a lattice).
    """
    refuse_text_numbers(locals())
    a = check_image("image", image)
    dx = check_positive("pixel_size_A", pixel_size_A)
    if not (0 < d_min_A < d_max_A):
        raise DataError(f"need 0 < d_min_A < d_max_A, got {d_min_A}, {d_max_A}")
    if not np.ptp(a) > 0:
        raise DataError(
            f"no lattice in a constant image (every pixel {float(a.flat[0])!r}): "
            "a blanked or dropped frame?"
        )
    return _lattice_from_power(_full_power(_windowed_rfft2(a), a.shape[1]), dx, d_min_A, d_max_A)


def _windowed_rfft2(a: np.ndarray) -> np.ndarray:
    """Half spectrum of the mean-free, Hann-windowed frame (the spectrum of
    :func:`estimate_lattice` and :func:`~perovstem.insitu.nanocrystal.fft_phase_check`)."""
    from scipy.signal.windows import hann

    m, n = a.shape
    w = np.outer(hann(m), hann(n))
    return sfft.rfft2((a - a.mean()) * w, workers=1)


def _full_power(half: np.ndarray, n: int) -> np.ndarray:
    """Full (M, N) power spectrum ``|F|²`` of a real frame of N columns from its half
    spectrum (M, N//2 + 1): the missing columns by Hermitian symmetry, F(-k) = conj F(k)."""
    m, nh = half.shape
    ph = half.real**2 + half.imag**2
    p = np.empty((m, n))
    p[:, :nh] = ph
    if n > nh:
        # column j > N/2 is column N - j of the half spectrum at row -i (views, no gather)
        p[0, nh:] = ph[0, n - nh : 0 : -1]
        p[1:, nh:] = ph[:0:-1, n - nh : 0 : -1]
    return p


#: a reflection at k/√2 or k/2 of the strongest one is taken as the primitive one (the
#: step down of :func:`estimate_lattice`) only with at least this share of the strongest
#: reflection's power.  The primitive steps that happen (the 100 under the 110 or the 200):
#: >= 0.04 on degrading KMC frames (0.5 Å px), >= 0.17 on simulated [001] crystals
#: (25–60 Å, 0.2–0.8 Å px, 3e2–3e4 e/Å², cubic and orthorhombic); the weak peak at the
#: ½½0 position (8.3 Å) that the multislice slab frames stepped on to: 0.001–0.002.
_STEP_MIN_POWER = 0.01


def _lattice_from_power(
    p: np.ndarray, dx: float, d_min_A: float, d_max_A: float
) -> tuple[float, float, float]:
    """:func:`estimate_lattice` on the full power spectrum ``p`` of the windowed frame."""
    m, n = p.shape
    ky = sfft.fftfreq(m, dx)[:, None]
    kx = sfft.fftfreq(n, dx)[None, :]
    kr = np.hypot(ky, kx)
    ring = (kr >= 1 / d_max_A) & (kr <= 1 / d_min_A)
    if not ring.any() or 1 / d_min_A > 0.5 / dx:
        raise DataError(
            f"spacings down to {d_min_A} Å are not resolved at {dx} Å/pixel (Nyquist {2 * dx} Å)"
        )
    med = float(np.median(p[ring])) + 1e-300

    def refine(iy: int, ix: int) -> tuple[float, float]:
        ys = (np.arange(iy - 1, iy + 2) % m)[:, None]
        xs = (np.arange(ix - 1, ix + 2) % n)[None, :]
        wgt = p[ys, xs]
        return (
            float((ky[ys, 0] * wgt).sum() / wgt.sum()),
            float((kx[0, xs] * wgt).sum() / wgt.sum()),
        )

    def power_at(kyv: float, kxv: float) -> float:
        iy = int(round(kyv * m * dx)) % m
        ix = int(round(kxv * n * dx)) % n
        ys = (np.arange(iy - 1, iy + 2) % m)[:, None]
        xs = (np.arange(ix - 1, ix + 2) % n)[None, :]
        return float(p[ys, xs].max())

    i = int(np.argmax(np.where(ring, p, 0.0)))
    kyc, kxc = refine(*divmod(i, n))
    strength = float(p.flat[i] / med)
    # the strongest reflection may be (110) or (200) of a square lattice: step down to the
    # primitive one when a significant reflection sits at k/√2 (±45°) or k/2 — significant
    # over the annulus (10 × its median) and against the strongest reflection
    # (_STEP_MIN_POWER of its power): on a noise-poor frame filled by the crystal the median
    # is tiny, and any weak sharp peak at the ½½0 position (a√2 = 8.3 Å at 45°; on the
    # multislice test field, a 3 × 3 tiling of a 5-cell frozen-phonon slab, the 29 Å
    # supercell's peaks, 1–2e-3 of the 110's power) took the 5.87 Å cell there
    p_min = max(10 * med, _STEP_MIN_POWER * float(p.flat[i]))
    for _ in range(3):
        cands = []
        c, s_ = np.cos(np.pi / 4), np.sin(np.pi / 4)
        for sgn in (1, -1):
            ky2 = (kyc * c + sgn * kxc * s_) / np.sqrt(2)
            kx2 = (kxc * c - sgn * kyc * s_) / np.sqrt(2)
            cands.append((ky2, kx2))
        cands.append((kyc / 2, kxc / 2))
        best = max(cands, key=lambda q: power_at(*q))
        if np.hypot(*best) < 1 / d_max_A or power_at(*best) < p_min:
            break
        iy = int(round(best[0] * m * dx)) % m
        ix = int(round(best[1] * n * dx)) % n
        kyc, kxc = refine(iy, ix)
    k = np.hypot(kyc, kxc)
    ang = float(np.degrees(np.arctan2(kyc, kxc))) % 90.0
    return 1.0 / k, ang, strength


#: below this min(r, 1/r) of :func:`fourfold_ratio` (r for the reflection of
#: :func:`estimate_lattice`) the host lattice is not the square [001] projection that the
#: cluster host model assumes.  KMC series, 8 frames, 0.2/0.5/0.8/1.2 Å px: [001] cube,
#: cuboid, platelet, Cd-alloyed: 0.32-1 on the first frame, >= 0.24 on every frame (the
#: crystal gone included); [011] cube: 0.005-0.01 on the first frame at 0.2-0.8 Å px, not
#: seen at 1.2 Å px (0.79: its 4.15 Å spacing is near the Nyquist limit)
FOURFOLD_MIN = 0.1


def fourfold_ratio(
    image: np.ndarray, pixel_size_A: float, spacing_A: float, angle_deg: float
) -> float:
    """Power of a lattice reflection turned by 90° over the power of the reflection.

    A square projected cell (a cubic or pseudo-cubic perovskite on [001]) has four-fold
    symmetric reflections, ratio ≈ 1 (a crystal outline that is not square changes the
    spot shapes, not their presence); a rectangular or oblique projection ([011]: a × a/√2;
    [111]: hexagonal) has no reflection at the turned position, ratio ≪ 1.  Each power is
    the largest of the 3 × 3 Fourier pixels around the spot (Hann-windowed frame).

    Parameters
    ----------
    image : (M, N) array_like
        Frame.
    pixel_size_A : float
        Pixel size, Å.
    spacing_A, angle_deg : float
        The reflection, e.g. the strongest one from :func:`estimate_lattice`: lattice-plane
        spacing, Å, and direction of its reciprocal vector from the x axis, degrees.

    Returns
    -------
    float
        P(k turned by 90°) / P(k); NaN when the reflection itself has no power.
    """
    refuse_text_numbers(locals())
    a = check_image("image", image)
    dx = check_positive("pixel_size_A", pixel_size_A)
    d = check_positive("spacing_A", spacing_A)
    m, n = a.shape
    p = _full_power(_windowed_rfft2(a), n)  # (the spectrum of estimate_lattice)

    def power(t_deg: float) -> float:
        t = np.radians(t_deg)
        iy = int(round(np.sin(t) / d * m * dx)) % m
        ix = int(round(np.cos(t) / d * n * dx)) % n
        ys = (np.arange(iy - 1, iy + 2) % m)[:, None]
        xs = (np.arange(ix - 1, ix + 2) % n)[None, :]
        return float(p[ys, xs].max())

    p0 = power(angle_deg)
    return power(angle_deg + 90.0) / p0 if p0 > 0 else float("nan")


def column_width(
    image: np.ndarray, pixel_size_A: float, lattice_A: float, angle_deg: float
) -> float:
    """Gaussian width of the projected host columns (probe and column together) from the
    damping of the host's 220 against its 200 reflections.

    Every column of the [001] perovskite cell (sites (0, 0), (½, 0), (0, ½), (½, ½))
    scatters in phase at the 200 and 220 reflections, so their amplitudes differ only by
    the columns' image: for Gaussian columns of σ the ratio is exp(−2π²σ²(|g₂₂₀|² −
    |g₂₀₀|²)) = exp(−8π²σ²/a²) whatever the column contents, thickness or damage, and a
    finite crystal shapes every reflection alike (the same shape transform).  (Incoherent
    HAADF imaging: the image is the projected object convolved with the probe intensity;
    Pennycook & Jesson, Ultramicroscopy 37, 14 (1991).)  The powers are summed over a disc
    around each of the four reflections of a family (Hann-windowed frame, the spectrum of
    :func:`estimate_lattice`) less the median power of a ring around it.  The STEM probe
    samples points: the width does not depend on the pixel size (0.379–0.385 Å at 0.3, 0.5
    and 0.7 Å/px on simulated frames of a 0.33 Å probe; 0.41–0.42 Å at 1 Å/px, where the
    aliased 440 reflections fall next to the 220).

    Parameters
    ----------
    image : (M, N) array_like
        Frame.
    pixel_size_A : float
        Pixel size, Å.
    lattice_A, angle_deg : float
        Host cell, Å, and the direction of its first axis from x, degrees.

    Returns
    -------
    float
        σ, Å; NaN where the 220 reflections lie beyond the Nyquist frequency or the
        ratio is not a damping (no clear lattice).
    """
    refuse_text_numbers(locals())
    a = check_image("image", image)
    dx = check_positive("pixel_size_A", pixel_size_A)
    cell = check_positive("lattice_A", lattice_A)
    m, n = a.shape
    t = np.radians(angle_deg)
    u = np.array([np.cos(t), np.sin(t)]) / cell  # reciprocal axes (x, y), 1/Å
    v = np.array([-np.sin(t), np.cos(t)]) / cell
    g22 = [2 * (u + v), 2 * (u - v), -2 * (u + v), -2 * (u - v)]
    if max(float(np.abs(g).max()) for g in g22) * dx >= 0.48:
        return float("nan")
    p = _full_power(_windowed_rfft2(a), n)
    ky = sfft.fftfreq(m, dx)[:, None]
    kx = sfft.fftfreq(n, dx)[None, :]
    # one disc radius for every reflection (the same share of each shape transform):
    # 2.5 Fourier pixels of the Hann-windowed frame, at least 6 % of the 100 spacing
    r = max(2.5 / (min(m, n) * dx), 0.06 / cell)

    def family(gs: list[np.ndarray]) -> float:
        tot = 0.0
        for gx, gy in gs:
            dist = np.hypot(kx - gx, ky - gy)
            ring = (dist >= 2 * r) & (dist < 3 * r)
            tot += float((p[dist < r] - np.median(p[ring])).sum())
        return tot

    p20 = family([2 * u, -2 * u, 2 * v, -2 * v])
    p22 = family(g22)
    if not (p20 > 0 and 0 < p22 < p20):
        return float("nan")
    # amplitude ratio sqrt(p22 / p20) = exp(-8 pi² s² / a²)
    return float(np.sqrt(-0.5 * np.log(p22 / p20) * cell**2 / (8 * np.pi**2)))


# the padded size of the unit-cell FFTs is rounded up to a fast FFT length when a padded
# side is >= _FAST_FFT_MIN_SIDE px (see _cell_padding); False reproduces the padding of
# 2 cells on each side exactly
_FAST_FFT_PAD = True
_FAST_FFT_MIN_SIDE = 512


def _cell_padding(shape: tuple[int, int], a_px: float) -> tuple[tuple[int, int], ...]:
    """Reflect padding ``((top, bottom), (left, right))`` of the unit-cell filter, px.

    At least 2 cells (``ceil(2 a_px)``) on every side.  A padded side of >=
    :data:`_FAST_FFT_MIN_SIDE` px is rounded up to ``scipy.fft.next_fast_len`` with the
    extra rows or columns on the far side: a 1024² frame at 0.2 Å/px (2 cells = 59 px) is
    padded to 1142 = 2·571 px, whose transforms are ~4× slower than those of 1152 px.  The
    padding moves where the periodic wrap-around of the filter lands (the sampled sinc is
    not a finite box): the map changes by ~1e-6 of its mean level on 1024² frames; on
    ~200² frames the change would reach 3e-3, and their transforms are cheap, so small
    frames keep the exact 2-cell padding.
    """
    pad = int(np.ceil(2 * a_px))
    out = []
    for n in shape:
        extra = 0
        if _FAST_FFT_PAD and n + 2 * pad >= _FAST_FFT_MIN_SIDE:
            extra = sfft.next_fast_len(n + 2 * pad, real=True) - (n + 2 * pad)
        out.append((pad, pad + extra))
    return tuple(out)


@lru_cache(maxsize=16)
def _cell_filter(
    shape: tuple[int, int], ap: float, angle_deg: float, smooth_px: float
) -> np.ndarray:
    """Half-plane spectrum filter of :func:`unit_cell_average` (cached: frames of a series
    share it)."""
    m, n = shape
    ky = sfft.fftfreq(m)[:, None]
    kx = sfft.rfftfreq(n)[None, :]
    t = np.radians(angle_deg)
    k1 = kx * np.cos(t) + ky * np.sin(t)
    k2 = -kx * np.sin(t) + ky * np.cos(t)
    filt = np.sinc(k1 * ap) * np.sinc(k2 * ap)
    if smooth_px > 0:
        filt = filt * np.exp(-2 * np.pi**2 * smooth_px**2 * (kx**2 + ky**2))
    filt.setflags(write=False)
    return filt


@lru_cache(maxsize=16)
def _cell_filter32(
    shape: tuple[int, int], ap: float, angle_deg: float, smooth_px: float
) -> np.ndarray:
    """:func:`_cell_filter` in single precision (for single-precision transforms).

    Built in one compiled pass (:func:`~perovstem.insitu._cluster_kernels.
    _cell_filter_kernel`) from 1-D sines and cosines (sin(a + b) = sin a cos b + cos a
    sin b, π a k₁ and π a k₂ being sums of a k_y and a k_x term) instead of two 2-D
    ``np.sinc`` maps: equal to ``_cell_filter(...).astype(np.float32)`` to float32
    rounding (≤ 1 unit in the last place, ≤ 1e-15 absolute near the zeros of the
    sincs), ~10× faster.  The detector's windows change shape from frame to frame, so
    the cache misses about once per frame of a series (102 builds in 100 frames; a
    1100² filter cost 26–36 ms before, as much as its transforms)."""
    from perovstem.insitu._cluster_kernels import _cell_filter_kernel

    m, n = shape
    ky = sfft.fftfreq(m)
    kx = sfft.rfftfreq(n)
    t = np.radians(angle_deg)
    c, s = np.pi * ap * np.cos(t), np.pi * ap * np.sin(t)

    def parts(k: np.ndarray, w: float) -> np.ndarray:
        a = w * k
        return np.stack([a, np.sin(a), np.cos(a)])

    if smooth_px > 0:
        w2 = -2 * np.pi**2 * smooth_px**2
        gy, gx = np.exp(w2 * ky**2), np.exp(w2 * kx**2)
    else:
        gy, gx = np.ones(m), np.ones(kx.size)
    filt = _cell_filter_kernel(parts(ky, s), parts(kx, c), parts(ky, c), parts(kx, -s), gy, gx)
    filt.setflags(write=False)
    return filt


def unit_cell_average(
    image: np.ndarray, a_px: float, *, angle_deg: float = 0.0, smooth_px: float = 0.0
) -> np.ndarray:
    """Average every pixel over one square projected unit cell (Fourier sinc filter).

    The frame is reflect-padded by >= 2 cells (to a fast FFT length for sides of >= 512 px)
    before the transform.

    Parameters
    ----------
    image : (M, N) array_like
        Frame.
    a_px : float
        Lattice spacing, pixels (> 1).
    angle_deg : float
        Direction of the first lattice vector from the x axis, degrees.
    smooth_px : float
        Extra Gaussian smoothing σ, pixels (applied in the same Fourier pass).

    Returns
    -------
    (M, N) ndarray
        Filtered frame (float64); sums over regions larger than a cell are preserved.
    """
    refuse_text_numbers(locals())
    a = check_image("image", image)
    ap = check_positive("a_px", a_px)
    (py, _), (px, _) = pads = _cell_padding(a.shape, ap)
    b = np.pad(a, pads, mode="reflect")
    filt = _cell_filter(b.shape, float(ap), float(angle_deg), float(smooth_px))
    from perovstem.insitu._cluster_kernels import irfft2_rows

    mean = b.mean()
    spec = sfft.rfft2(b - mean)
    spec *= filt
    # the inverse of the kept rows only (irfft2's values bit for bit)
    out = irfft2_rows(spec, b.shape, py, py + a.shape[0], overwrite=True)
    out += mean
    return out[:, px : px + a.shape[1]]
