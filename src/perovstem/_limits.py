"""Upper ends of what an experiment (or a simulation of one) can mean.

A value beyond one of these is a unit mistake or a typo (``1e30``), and some of them stalled
a simulation for ever (the kinetic Monte Carlo at 1e17 e⁻/Å² per frame) or asked for 75 GiB
(a 100000 px image).  The public API, the command line and the pipeline share these
constants and :func:`check_at_most`, so that the three refuse the same values with the same
message (naming the parameter or the option, the value and the limit).
"""

from __future__ import annotations

__all__ = [
    "MAX_DOSE_E_PER_A2",
    "MAX_CUMULATIVE_DOSE_E_PER_A2",
    "MAX_TEMPERATURE_K",
    "MAX_KMC_TEMPERATURE_K",
    "MAX_KMC_FRAMES",
    "MAX_CURRENT_PA",
    "MAX_IMAGE_PX",
    "MAX_STACK_PX",
    "MAX_COUNTS_PER_A",
    "MAX_KMC_EVENTS",
    "MAX_GAIN_COUNTS_PER_E",
    "MAX_OFFSET_COUNTS",
    "MAX_SCAN_NOISE_PX",
    "check_at_most",
    "check_current_pA",
    "check_image_px",
]

MAX_DOSE_E_PER_A2 = 1e10
"""Largest dose of one frame (or one tilt-series step), e⁻/Å²; high-resolution STEM of
beam-hard crystals totals ~1e6-1e8."""

MAX_CUMULATIVE_DOSE_E_PER_A2 = 1e15
"""Largest cumulative dose, e⁻/Å²: 100000 frames (the most one kinetic Monte Carlo run
simulates) of :data:`MAX_DOSE_E_PER_A2`."""

MAX_TEMPERATURE_K = 2000.0
"""Largest temperature, K: MEMS heating chips reach ~1600 K; CsPbBr3 melts at ~840 K."""

MAX_KMC_TEMPERATURE_K = 900.0
"""Highest temperature the kinetic Monte Carlo accepts, K: a lattice model of solid CsPbBr3
(it melts at ≈ 840 K; a run at 1e6 K never ended)."""

MAX_KMC_FRAMES = 100_000
"""Most frames one kinetic Monte Carlo run simulates: 100× the 1000-frame series perovstem is
sized for (1e12 frames ran out of memory allocating the per-frame dose rates)."""

MAX_CURRENT_PA = 1e6
"""Largest probe current, pA (1 µA); STEM probes carry at most a few nA."""

MAX_IMAGE_PX = 8192
"""Largest side of a simulated image, px."""

MAX_STACK_PX = 2**31
"""Largest simulated tilt series, projections × pixels per projection (2.1e9 px: 17 GB as
float64); a 0.1° step at 8192² px would need 0.8 TB."""

MAX_COUNTS_PER_A = 1e10
"""Largest expected detector count per pixel per Å of path (tilt-series simulation): a pixel
counts at most the electrons that hit it, ≤ :data:`MAX_DOSE_E_PER_A2` per Å² (and numpy's
Poisson draw refuses means above ~1e19)."""

MAX_GAIN_COUNTS_PER_E = 1e6
"""Largest detector gain of a simulated image, counts per electron: counting detectors give
~1, analogue HAADF read-outs 1-1000 (1e30 made an image whose electrons no reader can
recover from float rounding)."""

MAX_OFFSET_COUNTS = 2.0**32
"""Largest detector offset of a simulated image (absolute), counts: the range of a 32-bit
read-out.  An offset of 1e30 counts (accepted before) buries the signal below the float
rounding of the written image: at 1e30 one float64 step is ~1e14 counts."""

MAX_SCAN_NOISE_PX = 100.0
"""Largest rms line jitter of a simulated image, px; a scanning microscope's is below a few
px (1e6 px was accepted, and shifted every line out of the frame)."""

MAX_KMC_EVENTS = 1e10
"""Largest number of kinetic Monte Carlo events one call may need (estimated before it
starts); the KMC's steps take 0.03-44 µs per estimated event (0.5-80 steps at the measured
0.06-0.55 µs each, :func:`perovstem.simulate.kmc.estimated_cpu_s`), so this is 5 minutes to
days of CPU time."""


def check_at_most(name: str, value: float | None, limit: float, unit: str, why: str) -> None:
    """Refuse ``value`` above ``limit`` (a unit mistake or a typo).

    Parameters
    ----------
    name : str
        The parameter (``dose_e_per_A2``) or command-line option (``--dose-e-per-A2``) that
        the message names.
    value : float or None
        The value given; ``None`` (not given) passes.
    limit : float
        Largest accepted value, in ``unit``.
    unit : str
        Unit shown after the value and the limit.
    why : str
        Why the limit is there (shown in brackets).

    Raises
    ------
    ParameterError
        ``value > limit``.
    """
    from perovstem.errors import ParameterError

    if value is not None and value > limit:
        raise ParameterError(
            f"`{name}` = {value:g} {unit} is above {limit:g} {unit} ({why}): a unit mistake?"
        )


def check_stack_px(
    n_images: int,
    shape: tuple[int, int],
    *,
    names: tuple[str, str] = ("angles_deg", "shape"),
    what: str = "projections",
    fix: str = "use fewer angles or a coarser pixel",
) -> None:
    """Refuse a simulated stack of ``n_images`` images of ``shape`` above
    :data:`MAX_STACK_PX` pixels in all (``names``: the parameters or options that set the
    count and the image size; ``what`` the images, ``fix`` what to do)."""
    from perovstem.errors import ParameterError

    total = int(n_images) * int(shape[0]) * int(shape[1])
    if total > MAX_STACK_PX:
        raise ParameterError(
            f"`{names[0]}` and `{names[1]}`: {int(n_images)} {what} of {int(shape[0])} × "
            f"{int(shape[1])} px = {total:.3g} px is above {MAX_STACK_PX:.3g} px "
            f"({MAX_STACK_PX * 8 / 1e9:.0f} GB as float64): {fix}"
        )


def check_current_pA(value: float | None, *, name: str = "current_pA") -> None:
    """Refuse a probe current above :data:`MAX_CURRENT_PA` (``name``: parameter or flag)."""
    check_at_most(name, value, MAX_CURRENT_PA, "pA", "a STEM probe carries nA")


def check_image_px(
    shape: tuple[int, int], *, name: str = "shape", why: str = "the largest simulated image"
) -> None:
    """Refuse a simulated image (or frame, or projection) with a side above
    :data:`MAX_IMAGE_PX` px (``name``: the parameter or flag that set it)."""
    check_at_most(name, max(int(shape[0]), int(shape[1])), MAX_IMAGE_PX, "px", why)
