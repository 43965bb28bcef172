"""Fast quantitative HAADF-STEM images of atomic structures (and an abTEM reference path).

Model (notes/physics_simulation.md §3, §5)::

    I(r)   = Σ_columns SCS_c · g_c(r − r_c) + background          (fraction of the beam)
    counts = gain · Poisson(dose · dx² · I) + offset [+ read noise]

* SCS_c from the abTEM-calibrated thickness tables (:mod:`perovstem.simulate.scs`):
  channelling makes SCS super-linear in thickness and the column ratios are not Z^n.
* g_c is the normalised PSF of :mod:`perovstem.simulate.probe`: Gaussian core (probe ⊕ source
  ⊕ thermal smearing of that column) plus a broad Moffat tail — not a single Gaussian, and it
  gives the probe-tail cross-talk between neighbouring columns.
* A mistilted crystal is rendered atom by atom (each atom carries its share σ_atom/Σσ of the
  column SCS) so columns are smeared along the projected tilt direction, and the channelling
  enhancement is reduced.
* Scan distortions: per-line jitter along the fast-scan axis (``scan_noise_px``) and linear
  sample drift during the frame (``drift_A``).
* Shot noise: detected electrons per pixel are Poisson with mean dose·dx²·I (incoherent
  HAADF counting), then detector gain, offset and optional Gaussian read noise.

So a column's integrated counts / (gain · dose · dx²) is its SCS in Å² (docs/CONTRACTS.md).
Rendering splats each Gaussian core in a small window (numba) and adds the tail by one FFT
convolution of a bilinear deposit; a 512² frame of a 10 nm NC takes a few tens of ms.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from perovstem._data import Image
from perovstem._limits import (
    MAX_DOSE_E_PER_A2,
    MAX_GAIN_COUNTS_PER_E,
    MAX_IMAGE_PX,
    MAX_OFFSET_COUNTS,
    MAX_SCAN_NOISE_PX,
    check_at_most,
    check_image_px,
)
from perovstem._validation import as_rng, check_positive, refuse_text_numbers
from perovstem.errors import DataError, ParameterError
from perovstem.simulate._noise import shot_noise
from perovstem.simulate.columns import project_columns
from perovstem.simulate.probe import (
    THERMAL_SIGMA_A,
    ProbeModel,
    default_probe,
    electron_wavelength_A,
    moffat_kernel,
)
from perovstem.simulate.scs import (
    DETECTORS_MRAD,
    _check_detector,
    atom_scs,
    column_scs,
    nearest_detector,
)

__all__ = ["haadf_image", "haadf_image_multislice", "render_intensity", "electron_wavelength_A"]

TRUTH_COLUMNS = ["x_A", "y_A", "type", "n_atoms", "n_Pb", "n_Cd", "n_Br", "n_Cs", "scs_A2"]
_NSIG = 5.0


# Smallest frame worth simulating: the auto-sized frame's floor in pixels, and a field of
# view of two pseudo-cubic cells so that at least one full lattice period (a column and its
# neighbour of the same type) is inside the frame.
MIN_FRAME_PX = 8
MIN_FRAME_CELLS = 2


def check_frame_shape(shape: Any, pixel_size_A: float, *, name: str = "shape") -> tuple[int, int]:
    """Validate a frame size ``(rows, cols)`` in pixels for pixel size ``pixel_size_A`` (Å).

    Each side needs at least ``MIN_FRAME_PX`` pixels and ``MIN_FRAME_CELLS`` unit cells of
    the host lattice (a = 5.87 Å): a smaller frame holds no lattice period to image, count
    or register; and at most :data:`~perovstem._limits.MAX_IMAGE_PX`. ``name`` is the
    parameter (or command-line flag) named in the error.
    """
    from perovstem.simulate.structures import A_CUBIC_A

    pixel_size_A = check_positive("pixel_size_A", pixel_size_A)
    try:
        rows, cols = (int(v) for v in shape)
        ok = float(shape[0]) == rows and float(shape[1]) == cols
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ParameterError(f"`{name}` must be (rows, cols) in pixels, got {shape!r}")
    need_A = MIN_FRAME_CELLS * A_CUBIC_A
    need_px = max(MIN_FRAME_PX, int(np.ceil(need_A / pixel_size_A - 1e-9)))
    if min(rows, cols) < need_px:
        raise ParameterError(
            f"`{name}` ({rows}, {cols}) px is too small: at {pixel_size_A:g} Å/px a side needs "
            f">= {need_px} px (at least {MIN_FRAME_PX} px and {MIN_FRAME_CELLS} unit cells "
            f"= {need_A:.1f} Å, so that the frame holds a lattice period of the a = "
            f"{A_CUBIC_A} Å host)"
        )
    check_image_px((rows, cols), name=name)
    return rows, cols


def check_auto_shape(shape: tuple[int, int], pixel_size_A: float, extent_A: Any) -> None:
    """Refuse a frame sized to the specimen (``shape=None``) above
    :data:`~perovstem._limits.MAX_IMAGE_PX` a side: ``pixel_size_A`` is too small for the
    extent (a 400 Å crystal at 0.01 Å/px asked for a 40000 px image)."""
    if max(shape) > MAX_IMAGE_PX:
        ext = " × ".join(f"{float(e):.0f}" for e in extent_A)
        raise ParameterError(
            f"`pixel_size_A` = {pixel_size_A:g} Å would make a {shape[0]} × {shape[1]} px "
            f"image of the {ext} Å specimen (with its margin), above {MAX_IMAGE_PX} px a side "
            "(the largest simulated image): give a larger `pixel_size_A` or a `shape`"
        )


def check_detector_response(
    *,
    gain: float = 1.0,
    offset: float = 0.0,
    scan_noise_px: float = 0.0,
    background: float = 0.0,
    read_noise: float = 0.0,
) -> None:
    """Refuse a detector model no microscope has (a typo or a unit mistake), before any
    simulation: ``gain`` in (0, :data:`~perovstem._limits.MAX_GAIN_COUNTS_PER_E`] counts per
    electron, ``|offset|`` ≤ :data:`~perovstem._limits.MAX_OFFSET_COUNTS` counts,
    ``scan_noise_px`` in [0, :data:`~perovstem._limits.MAX_SCAN_NOISE_PX`] px, and
    ``background`` and ``read_noise`` finite and ≥ 0.  Shared by :func:`haadf_image` and the
    series simulators, so that a long kinetic Monte Carlo is not run before a bad ``gain``
    is refused."""
    check_positive("gain", gain)
    check_at_most(
        "gain", float(gain), MAX_GAIN_COUNTS_PER_E, "counts/e⁻", "beyond any detector read-out"
    )
    try:
        off = float(offset)
    except (TypeError, ValueError):
        raise ParameterError(f"`offset` must be a number, got {offset!r}") from None
    if not np.isfinite(off):
        raise ParameterError(f"`offset` must be finite, got {offset!r}")
    if abs(off) > MAX_OFFSET_COUNTS:
        raise ParameterError(
            f"`offset` = {off:g} counts is beyond ±{MAX_OFFSET_COUNTS:g} counts (the range of "
            "a 32-bit read-out; larger offsets bury the signal under the float rounding of the "
            "image): a unit mistake?"
        )
    check_positive("scan_noise_px", scan_noise_px, allow_zero=True)
    check_at_most(
        "scan_noise_px",
        float(scan_noise_px),
        MAX_SCAN_NOISE_PX,
        "px",
        "a scanning microscope's line jitter is below a few px",
    )
    check_positive("background", background, allow_zero=True)
    check_positive("read_noise", read_noise, allow_zero=True)


@functools.lru_cache(maxsize=16)
def _tail_fft(shape: tuple[int, int], pixel_size_A: float, probe: ProbeModel):
    from scipy import fft

    k = moffat_kernel(probe, pixel_size_A)
    r = k.shape[0] // 2
    full = np.zeros(shape)
    full[: r + 1, : r + 1] = k[r:, r:]
    full[: r + 1, -r:] = k[r:, :r]
    full[-r:, : r + 1] = k[:r, r:]
    full[-r:, -r:] = k[:r, :r]
    return fft.rfft2(full, workers=-1)


def render_intensity(
    y_px: np.ndarray,
    x_px: np.ndarray,
    scs_A2: np.ndarray,
    thermal_sigma_A: np.ndarray,
    shape: tuple[int, int],
    pixel_size_A: float,
    probe: ProbeModel,
    *,
    row_shift_px: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Noise-free HAADF intensity (fraction of the beam per probe position), (M, N).

    Parameters
    ----------
    y_px, x_px : (K,) ndarray
        Peak centres in pixel coordinates (row, column; pixel centres at integers).
    scs_A2 : (K,) ndarray
        Cross-section of every peak, Å².
    thermal_sigma_A : (K,) ndarray
        Thermal rms displacement of every peak, Å (widens the Gaussian core).
    shape : (M, N)
    pixel_size_A : float
    probe : ProbeModel
    row_shift_px : ((M,), (M,)) ndarrays, optional
        Per-scan-line sampling offsets (dy, dx) in pixels: pixel (i, j) is sampled at
        (i + dy[i], j + dx[i]).
    """
    refuse_text_numbers(locals())
    from scipy import fft
    from scipy.ndimage import map_coordinates

    from perovstem.simulate import _render

    m, n = shape
    dx = pixel_size_A
    y = np.ascontiguousarray(y_px, dtype=np.float64)
    x = np.ascontiguousarray(x_px, dtype=np.float64)
    amp = np.ascontiguousarray(scs_A2, dtype=np.float64) / dx**2
    if row_shift_px is None:
        sy = np.zeros(m)
        sx = np.zeros(m)
    else:
        sy = np.ascontiguousarray(row_shift_px[0], dtype=np.float64)
        sx = np.ascontiguousarray(row_shift_px[1], dtype=np.float64)
    sig = probe.core_sigma_A(thermal_sigma_A) / dx
    img = np.zeros((m, n))
    _render.splat_gaussians(
        img,
        y,
        x,
        amp * (1.0 - probe.tail_fraction),
        np.ascontiguousarray(sig, dtype=np.float64),
        sy,
        sx,
        _NSIG,
    )
    if probe.tail_fraction > 0:
        pad = int(np.ceil(probe.tail_radius_A / dx)) + 2
        ps = (fft.next_fast_len(m + 2 * pad, real=True), fft.next_fast_len(n + 2 * pad, real=True))
        grid = np.zeros(ps)
        _render.deposit_bilinear(grid, y + pad, x + pad, amp * probe.tail_fraction)
        tail = (
            fft.irfft2(fft.rfft2(grid, workers=-1) * _tail_fft(ps, dx, probe), s=ps, workers=-1)
            * dx**2
        )
        np.maximum(tail, 0.0, out=tail)  # FFT round-off
        if np.any(sy) or np.any(sx):
            ii, jj = np.meshgrid(
                np.arange(m, dtype=float), np.arange(n, dtype=float), indexing="ij"
            )
            coords = np.array([ii + sy[:, None] + pad, jj + sx[:, None] + pad])
            img += map_coordinates(tail, coords, order=1, mode="constant")
        else:
            img += tail[pad : pad + m, pad : pad + n]
    return img


def _fast_size(n: int) -> int:
    """Smallest m >= n with prime factors 2, 3, 5 only (fast FFT grid sizes)."""
    m = max(int(n), 1)
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def _as_pair(name: str, value: Any) -> tuple[float, float]:
    try:
        a = np.asarray(value, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise ParameterError(f"`{name}` must be two numbers (x, y), got {value!r}") from None
    if a.shape != (2,) or not np.all(np.isfinite(a)):
        raise ParameterError(f"`{name}` must be two finite numbers (x, y), got {value!r}")
    return float(a[0]), float(a[1])


def haadf_image(
    atoms,
    *,
    pixel_size_A: float = 0.25,
    shape: tuple[int, int] | None = None,
    dose_e_per_A2: float = 1e4,
    voltage_kV: float = 300.0,
    probe_sigma_A: float | None = None,
    gain: float = 1.0,
    offset: float = 0.0,
    scan_noise_px: float = 0.0,
    noise: bool = True,
    rng: Any = None,
    drift_A: Sequence[float] = (0.0, 0.0),
    center_A: Sequence[float] | None = None,
    margin_A: float = 10.0,
    background: float = 0.0,
    read_noise: float = 0.0,
    tail_fraction: float | None = None,
    time_s: float | None = None,
    detector_mrad: tuple[float, float] = (65.0, 200.0),
):
    """Simulate a quantitative HAADF-STEM image of ``atoms`` and its ground truth.

    Parameters
    ----------
    atoms : ase.Atoms
        Structure with the beam along −z (e.g. from :func:`nanocrystal`); Pb, Cd, Cs, Br.
    pixel_size_A : float
        Scan step dx, Å.
    shape : (M, N), optional
        Image size in pixels; default: the projected structure plus ``margin_A`` on each side.
    dose_e_per_A2 : float
        Electron dose of the frame, e⁻/Å² (> 0).
    voltage_kV : float
        300 or 200 (calibrated energies; 20 mrad, HAADF 65–200 mrad).
    probe_sigma_A : float, optional
        Gaussian σ of the probe core, Å (default from λ/α and a 0.25 Å source).
    gain, offset : float
        Detector counts per detected electron and dark level.
    scan_noise_px : float
        rms per-line jitter of the fast-scan (x) position, pixels.
    noise : bool
        Add Poisson shot noise (and read noise); False returns the expectation.
    rng : None, int or Generator
    drift_A : (dx, dy)
        Sample drift accumulated over the frame, Å (linear in the scan line).
    center_A : (x, y), optional
        Lab (x, y) placed at the image centre; default the centre of the projected structure.
        Pass a fixed value for all frames of a series so that the field of view does not jump.
    margin_A : float
        Vacuum margin used when ``shape`` is None, Å.
    background : float
        Constant extra signal (fraction of the beam per probe position), e.g. a carbon support.
    read_noise : float
        Gaussian detector read noise, counts rms.
    tail_fraction : float, optional
        Fraction of the PSF in the broad tail (default 0.16; 0 gives Gaussian columns).
    time_s : float, optional
        Frame acquisition time stored on the Image.
    detector_mrad : (inner, outer)
        Annular detector, one of the calibrated ones
        (:data:`perovstem.simulate.scs.DETECTORS_MRAD`: 65–200 or 65–131 mrad).

    Returns
    -------
    image : Image
        Counts ``gain·Poisson(dose·dx²·I) + offset`` (float64, (M, N)); ``metadata`` holds
        ``gain``, ``offset``, ``voltage_kV``, ``probe_sigma_A`` and the PSF parameters.
    truth : DataFrame
        One row per column inside the field of view: ``x_A``, ``y_A`` (image coordinates, Å,
        pixel (i, j) centre at (j·dx, i·dx), without scan distortions), ``type``,
        ``n_atoms``, ``n_Pb``, ``n_Cd``, ``n_Br``, ``n_Cs``, ``scs_A2`` (true SCS, Å²), plus
        ``n_Pb0``, ``cluster_id``, ``thermal_sigma_A``, ``z_min_A``, ``z_max_A``.
    """
    refuse_text_numbers(locals())
    dx = check_positive("pixel_size_A", pixel_size_A)
    dose = check_positive("dose_e_per_A2", dose_e_per_A2)
    check_at_most("dose_e_per_A2", dose, MAX_DOSE_E_PER_A2, "e⁻/Å²", "the dose of one image")
    check_detector_response(
        gain=gain,
        offset=offset,
        scan_noise_px=scan_noise_px,
        background=background,
        read_noise=read_noise,
    )
    check_positive("margin_A", margin_A, allow_zero=True)
    drift = _as_pair("drift_A", drift_A)
    detector = _check_detector(detector_mrad)
    gen = as_rng(rng)
    probe = default_probe(
        voltage_kV,
        probe_sigma_A=probe_sigma_A,
        **({} if tail_fraction is None else {"tail_fraction": tail_fraction}),
    )
    if len(atoms) == 0:
        raise DataError("`atoms` is empty: nothing to image")
    cols, atom_col = project_columns(atoms)
    mistilt = float(atoms.info.get("mistilt_deg", 0.0))
    scs = column_scs(
        cols["n_Pb"] - cols["n_Pb0"],
        cols["n_Cd"],
        cols["n_Br"],
        cols["n_Cs"],
        cols["n_Pb0"],
        voltage_kV=voltage_kV,
        mistilt_deg=mistilt,
        detector_mrad=detector,
    )
    cols["scs_A2"] = scs

    pos = atoms.get_positions()
    if center_A is None:
        lo, hi = pos[:, :2].min(axis=0), pos[:, :2].max(axis=0)
        cx, cy = 0.5 * (lo + hi)
    else:
        cx, cy = _as_pair("center_A", center_A)
    if shape is None:
        ext = pos[:, :2].max(axis=0) - pos[:, :2].min(axis=0) + 2 * margin_A
        nx, ny = (int(2 * np.ceil(e / dx / 2)) for e in ext)
        shape = (max(ny, MIN_FRAME_PX), max(nx, MIN_FRAME_PX))
        check_auto_shape(shape, dx, ext)
    else:
        shape = check_frame_shape(shape, dx)
    m, n = shape
    ox = cx - 0.5 * (n - 1) * dx  # lab x of pixel column 0
    oy = cy - 0.5 * (m - 1) * dx

    # columns whose atoms do not project onto one point (mistilt, octahedral tilts, a
    # cluster atom merged into a host column) are rendered atom by atom: streaks/splits
    cx_col = cols["x_A"].to_numpy()
    cy_col = cols["y_A"].to_numpy()
    off = np.hypot(pos[:, 0] - cx_col[atom_col], pos[:, 1] - cy_col[atom_col])
    spread = np.zeros(len(cols))
    np.maximum.at(spread, atom_col, off)
    split = spread > 0.05
    w, px, py = scs[~split], cx_col[~split], cy_col[~split]
    pth = cols["thermal_sigma_A"].to_numpy()[~split]
    if split.any():
        at = np.flatnonzero(split[atom_col])
        z = np.asarray(atoms.numbers)[at]
        label = np.asarray(atoms.arrays.get("label", np.zeros(len(atoms), dtype=int)))[at]
        sig = atom_scs(voltage_kV, detector)
        s_z = np.zeros(83)
        t_z = np.zeros(83)
        for el, zz in (("Pb", 82), ("Cd", 48), ("Cs", 55), ("Br", 35)):
            s_z[zz] = sig[el]
            t_z[zz] = THERMAL_SIGMA_A[el]
        s_at = s_z[z]
        therm = np.where((label >= 1) & (z == 82), THERMAL_SIGMA_A["Pb0"], t_z[z])
        tot = np.bincount(atom_col[at], weights=s_at, minlength=len(cols))
        w_at = scs[atom_col[at]] * s_at / tot[atom_col[at]]
        w = np.concatenate([w, w_at])
        px = np.concatenate([px, pos[at, 0]])
        py = np.concatenate([py, pos[at, 1]])
        pth = np.concatenate([pth, therm])
    t_row = np.arange(m) / max(m - 1, 1)
    jitter = gen.normal(0.0, scan_noise_px, m) if scan_noise_px > 0 else np.zeros(m)
    row_shift = (-(drift[1] * t_row) / dx, jitter - drift[0] * t_row / dx)
    inten = render_intensity(
        (py - oy) / dx,
        (px - ox) / dx,
        np.asarray(w),
        np.asarray(pth),
        (m, n),
        dx,
        probe,
        row_shift_px=row_shift,
    )
    lam = dose * dx**2 * (inten + background)
    if noise:
        electrons = shot_noise(lam, gen)
        counts = gain * electrons + offset
        if read_noise > 0:
            counts += gen.normal(0.0, read_noise, counts.shape)
    else:
        counts = gain * lam + offset

    truth = cols.copy()
    truth["x_A"] = truth["x_A"] - ox
    truth["y_A"] = truth["y_A"] - oy
    # in the field where the scan meets the column: drifted by the time its row is scanned
    # (with --drift-A 100 0 the image held 11 % of the signal while every column counted in)
    # (row of a column: y' = y + dy·y'/H, H the scanned height)
    height = max((m - 1) * dx, 1e-12)
    seen_y = truth["y_A"].to_numpy() / max(1.0 - drift[1] / height, 1e-12)
    t_col = np.clip(seen_y / height, 0.0, 1.0)
    seen_x = truth["x_A"].to_numpy() + drift[0] * t_col
    seen_y = truth["y_A"].to_numpy() + drift[1] * t_col
    inside = (
        (seen_x >= -0.5 * dx)
        & (seen_x <= (n - 0.5) * dx)
        & (seen_y >= -0.5 * dx)
        & (seen_y <= (m - 0.5) * dx)
    )
    extra = ["n_Pb0", "cluster_id", "thermal_sigma_A", "z_min_A", "z_max_A"]
    truth = truth.loc[inside, TRUTH_COLUMNS + extra].reset_index(drop=True)
    meta = {
        "source": "perovstem.simulate.haadf_image",
        "gain": float(gain),
        "offset": float(offset),
        "voltage_kV": float(voltage_kV),
        "probe_sigma_A": probe.sigma_A,
        "psf": probe.as_dict(),
        "background": float(background),
        "read_noise": float(read_noise),
        "scan_noise_px": float(scan_noise_px),
        "drift_A": drift,
        "lab_origin_A": (float(ox), float(oy)),
        "mistilt_deg": mistilt,
        "detector_mrad": detector,
        "semiangle_mrad": 20.0,
        "noise": bool(noise),
    }
    image = Image(counts, dx, dose_e_per_A2=dose, time_s=time_s, metadata=meta)
    truth.attrs.update(
        {
            "pixel_size_A": dx,
            "dose_e_per_A2": dose,
            "voltage_kV": float(voltage_kV),
            "gain": float(gain),
            "offset": float(offset),
            "units": {"x_A": "Å", "y_A": "Å", "scs_A2": "Å²"},
            "n_atoms": "cations (Pb+Cd+Cs) per column, Br atoms for Br-only columns; "
            "unit cells for [001] Pb–Br columns",
            # a field smaller than the structure: the table holds the columns in the field
            "n_columns_outside_field": int((~inside).sum()),
        }
    )
    return image, truth


def haadf_image_multislice(
    atoms,
    *,
    pixel_size_A: float = 0.3,
    dose_e_per_A2: float | None = None,
    voltage_kV: float = 300.0,
    semiangle_mrad: float = 20.0,
    detector_mrad: tuple[float, float] = (65.0, 200.0),
    frozen_phonons: int = 4,
    sampling_A: float | None = None,
    margin_A: float = 5.0,
    gain: float = 1.0,
    offset: float = 0.0,
    rng: Any = None,
):
    """Reference HAADF image by abTEM frozen-phonon multislice (small validation cases).

    Needs the ``sim`` extra (abTEM; Madsen & Susi, Open Res. Europe 1, 24 (2021)).  Slow:
    about 0.1–0.5 s per probe position and configuration on a CPU.

    Parameters
    ----------
    atoms : ase.Atoms
        Beam along −z.
    pixel_size_A : float
        Scan step, Å.
    dose_e_per_A2 : float, optional
        If given, counts = gain·Poisson(dose·dx²·I) + offset; otherwise the image holds I,
        the detected fraction of the beam.
    voltage_kV, semiangle_mrad : float
    detector_mrad : (inner, outer)
    frozen_phonons : int
        Number of frozen-phonon configurations (rms displacements of
        :data:`perovstem.simulate.probe.THERMAL_SIGMA_A`).
    sampling_A : float, optional
        Potential sampling, Å (default: fine enough for the outer detector angle).
    margin_A : float
        Vacuum around the structure, Å.

    Returns
    -------
    image : Image
    truth : DataFrame
        As for :func:`haadf_image` (the SCS column is the fast model's table value).
    """
    refuse_text_numbers(locals())
    from perovstem._optional import import_optional

    abtem = import_optional("abtem", extra="sim")
    dx = check_positive("pixel_size_A", pixel_size_A)
    nfp = int(check_positive("frozen_phonons", frozen_phonons))
    inner, outer = (check_positive("detector_mrad", v) for v in detector_mrad)
    lam = electron_wavelength_A(voltage_kV)
    samp = sampling_A or 0.95 * (2.0 / 3.0) * lam / (2.0 * outer * 1e-3)
    gen = as_rng(rng)
    at = atoms.copy()
    pos = at.get_positions()
    lo, hi = pos.min(axis=0), pos.max(axis=0)
    ext = hi - lo + 2 * margin_A
    at.set_positions(pos - lo + margin_A)
    at.set_cell(ext)
    at.pbc = True
    sigmas = {s: THERMAL_SIGMA_A[s] for s in set(at.get_chemical_symbols())}
    source = (
        abtem.FrozenPhonons(at, num_configs=nfp, sigmas=sigmas, seed=int(gen.integers(2**31)))
        if nfp > 1
        else at
    )
    gpts = tuple(_fast_size(int(np.ceil(e / samp))) for e in ext[:2])
    nz = max(int(np.ceil(ext[2] / 1.0)), 1)
    pot = abtem.Potential(
        source,
        gpts=gpts,
        slice_thickness=(ext[2] / nz,) * nz,
        projection="infinite",
        parametrization="lobato",
    )
    probe = abtem.Probe(energy=voltage_kV * 1e3, semiangle_cutoff=semiangle_mrad)
    probe.grid.match(pot)
    scan = abtem.GridScan(start=(0, 0), end=(ext[0], ext[1]), sampling=dx)
    det = abtem.AnnularDetector(inner=inner, outer=outer)
    meas = probe.scan(pot, scan=scan, detectors=det).compute()
    arr = np.asarray(meas.array, dtype=float)
    while arr.ndim > 2:
        arr = arr.mean(axis=0)
    inten = arr.T  # abTEM scan axes are (x, y) -> image rows are y
    if dose_e_per_A2 is not None:
        dose = check_positive("dose_e_per_A2", dose_e_per_A2)
        data = gain * shot_noise(dose * dx**2 * inten, gen) + offset
    else:
        dose, data = None, inten
    sx = float(scan.sampling[0])
    cols, _ = project_columns(at)
    truth_detector = nearest_detector((inner, outer)) or DETECTORS_MRAD[0]
    cols["scs_A2"] = column_scs(
        cols["n_Pb"] - cols["n_Pb0"],
        cols["n_Cd"],
        cols["n_Br"],
        cols["n_Cs"],
        cols["n_Pb0"],
        voltage_kV=voltage_kV,
        mistilt_deg=float(atoms.info.get("mistilt_deg", 0.0)),
        # the truth table's cross-sections: the calibrated detector nearest this one
        detector_mrad=truth_detector,
    )
    meta = {
        "source": "abTEM multislice",
        "truth_scs_detector_mrad": list(truth_detector),
        "abtem_version": abtem.__version__,
        "voltage_kV": float(voltage_kV),
        "semiangle_mrad": float(semiangle_mrad),
        "detector_mrad": (inner, outer),
        "frozen_phonons": nfp,
        "sampling_A": samp,
        "gain": float(gain),
        "offset": float(offset),
        "units": "counts" if dose is not None else "fraction of beam",
    }
    image = Image(data, sx, dose_e_per_A2=dose, metadata=meta)
    extra = ["n_Pb0", "cluster_id", "thermal_sigma_A", "z_min_A", "z_max_A"]
    return image, cols[TRUTH_COLUMNS + extra]
