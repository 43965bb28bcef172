"""Host-lattice model of :func:`perovstem.insitu.detect_clusters` (private).

The cell-averaged map ``M`` of a frame is host crystal plus Pb clusters.  In [001]
CsPbBr3 the empty sites of the host lattice (¼, ¼)… receive only probe tails, so the
intensity there, ``Q``, is a fixed fraction ``kappa_h`` of ``M`` for the host whatever its
thickness or damage, and ≈ ``M`` for incommensurate Pb (Hÿtch et al., Ultramicroscopy 74,
131 (1998) for the local lattice phase that places the sites).  ``D = (Q − kappa_h M) /
(1 − kappa_h)`` is a host-free map of the cluster mass: the host under a cluster is
measured column by column from the lattice instead of being predicted from its
neighbours (on KMC series of degrading crystals even the *exact* SCS of the neighbouring
host columns predicts the host under a 10–40-atom cluster within 15 % of the cluster's SCS
for only 63–73 % of the clusters: column damage is uneven).

``kappa_h`` is measured on host pixels *outside* the segments (clusters would pull it
towards 1); where no such reference exists although crystal is present, the host cannot
be separated and the segments that contain host are reported as unreliable instead of
being counted silently, unless the caller passes the ratio of an earlier frame of the
series (``kappa_ref``: clusters that cover a small crystal leave no host pixels away
from them, while the host's ratio is that of the earlier frames).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from perovstem._robust import robust_sd

# kappa_h of the host is ~0.3 (0.25–0.45 on damaged crystals); above this the "host"
# pixels are mostly incommensurate (Pb, support) and D is meaningless
KAPPA_MAX = 0.6


@dataclass
class HostModel:
    """Host-lattice model of one frame around the segments.

    Attributes
    ----------
    kappa_h : float
        Empty-site ratio of the host (NaN when not measurable).
    status : str
        ``"lattice"`` (host-free map available), ``"no_crystal"`` (no crystal plateau near
        the segments: nothing to model), ``"no_host"`` (the bright pixels outside the
        Pb-like segments are incommensurate, ``kappa_h`` ≥ :data:`KAPPA_MAX`: no host
        lattice left outside the clusters) or ``"no_reference"`` (too few bright pixels
        away from the Pb-like segments to measure ``kappa_h``: the crystal is gone or
        covered by clusters).
    window : tuple of slice
        Frame window of the maps below.
    d : ndarray or None
        Host-free cluster map ``D`` in the window (``"lattice"`` only).
    seg_kappa : ndarray
        Empty-site ratio ΣQ/ΣM of each segment (NaN where not computed).
    seg_small_host : ndarray of bool
        Segments within the aperture reach of a host crystal shorter than the background
        element along a lattice direction: the opening does not see such a crystal, so
        its intensity is in the excess map (late frames of a small degrading crystal).
    site_mask : ndarray or None
        Empty-site mask of the window (1 within a/4 of the (¼, ¼)-type sites;
        ``"lattice"`` only).
    site_mean : ndarray or None
        Cell average of ``site_mask`` (``"lattice"`` only).
    carried : bool
        ``kappa_h`` is the reference of an earlier frame (``kappa_ref``), not measured here.
    """

    kappa_h: float
    status: str
    window: tuple[slice, slice]
    d: np.ndarray | None
    seg_kappa: np.ndarray
    seg_small_host: np.ndarray
    site_mask: np.ndarray | None = None
    site_mean: np.ndarray | None = None
    carried: bool = False

    def d_texture(self, crystal: np.ndarray, segments: np.ndarray, step: int) -> float:
        """Robust spread (1.4826 × MAD) of the host-free map ``D`` over the ``crystal``
        pixels of the window outside the ``segments`` (both window-sized boolean maps),
        sampled every ``step`` px; NaN without ``D`` or with fewer than 16 such samples.

        ``D`` cancels the host only as far as its local empty-site ratio is ``kappa_h``:
        on a damaged host that ratio varies from cell to cell (pixel standard deviation
        ≈ 0.045 around ≈ 0.34 on KMC series), and this spread, with the shot noise of
        ``D``, is what a count on ``D`` carries from the host under the cluster."""
        if self.d is None:
            return float("nan")
        sub = (slice(None, None, step), slice(None, None, step))
        ref = self.d[sub][crystal[sub] & ~segments[sub]]
        if ref.size < 16:
            return float("nan")
        return robust_sd(ref)

    def reliable(self) -> np.ndarray:
        """Segments whose counts the host model supports: not next to a crystal smaller
        than the background element, and, without a host reference (``"no_host"``,
        ``"no_reference"``), not containing host lattice (ΣQ/ΣM < :data:`KAPPA_MAX`)."""
        ok = ~self.seg_small_host
        if self.status in ("no_host", "no_reference"):
            ok &= ~(self.seg_kappa < KAPPA_MAX)
        return ok


def host_model(
    raw: np.ndarray,
    m: np.ndarray,
    regions: np.ndarray,
    box: tuple[slice, slice],
    *,
    k: int,
    margin: int,
    reach: int,
    side: int,
    tilt_deg: float,
    a_px: float,
    angle_deg: float,
    level: float,
    kappa_ref: float | None = None,
) -> HostModel:
    """Measure the host-lattice model around the segments.

    Parameters
    ----------
    raw : (M, N) ndarray
        Frame minus offset, counts.
    m : (M, N) ndarray
        Cell-averaged map of ``raw``.
    regions : ndarray of int
        Segment labels 1 … ``k`` inside ``box``.
    box : tuple of slice
        Frame box of ``regions``.
    k : int
        Number of segments.
    margin : int
        Context around ``box``, px.
    reach : int
        Aperture radius beyond a segment (aperture and annulus), px.
    side : int
        Background element length, px.
    tilt_deg : float
        Lattice direction of the background element, degrees from x.
    a_px : float
        Host lattice spacing, px.
    angle_deg : float
        Host lattice orientation, degrees.
    level : float
        Plateau level of the frame (99.5th percentile of ``m``); crystal pixels are
        those above a quarter of it.
    kappa_ref : float, optional
        Empty-site ratio of the host measured on an earlier frame of the series.  Used
        where this frame has too few host pixels away from the Pb-like segments to
        measure its own (the ``"no_reference"`` case: clusters cover much of a small
        crystal); the model is then ``"lattice"`` with ``carried`` True.
    """
    from perovstem.insitu.clusters import _interstitial_mean

    r0, r1, c0, c1 = box[0].start, box[0].stop, box[1].start, box[1].stop
    w0, w1 = max(0, r0 - margin), min(m.shape[0], r1 + margin)
    v0, v1 = max(0, c0 - margin), min(m.shape[1], c1 + margin)
    win = (slice(w0, w1), slice(v0, v1))
    m_w = m[win]
    seg = np.zeros(m_w.shape, np.int32)
    seg[r0 - w0 : r1 - w0, c0 - v0 : c1 - v0] = regions
    crys = m_w > 0.25 * level
    none = HostModel(np.nan, "no_crystal", win, None, np.full(k, np.nan), np.zeros(k, bool))
    if crys.sum() <= 4 * a_px**2:  # no crystal (or support) plateau in the window
        return none
    q, site_w, site_mean = _interstitial_mean(raw[win], a_px, angle_deg, 0.25 * a_px)
    # per-segment ratio: ~kappa_h for host, ~1 for incommensurate Pb
    inner = (slice(r0 - w0, r1 - w0), slice(c0 - v0, c1 - v0))
    lab = regions.ravel()
    sq = np.bincount(lab, weights=q[inner].ravel(), minlength=k + 1)[1:]
    sm = np.bincount(lab, weights=m_w[inner].ravel(), minlength=k + 1)[1:]
    seg_kappa = np.where(sm > 0, sq / np.where(sm > 0, sm, 1.0), np.nan)
    # host reference: crystal pixels at least half a cell away from every Pb-like
    # segment (ΣQ/ΣM >= KAPPA_MAX; the cell average spreads a cluster by half a cell).
    # Segments of host patches stay in: on a damaged crystal they cover most of it.
    pb_like = np.r_[False, seg_kappa >= KAPPA_MAX]
    host = crys & ~_grow(pb_like[seg], int(np.ceil(a_px / 2))) if pb_like.any() else crys
    # the cell-averaged maps are smooth over a cell: a grid of a/4 samples them fully
    st = max(1, int(a_px // 4))
    sub = (slice(None, None, st), slice(None, None, st))
    kappa_h = np.nan
    if host.sum() > 4 * a_px**2:
        hs = host[sub]
        kappa_h = float(np.median(q[sub][hs] / np.maximum(m_w[sub][hs], 1e-30)))
    small = _small_host_segments(
        (crys & (q < KAPPA_MAX * m_w))[sub],
        seg[sub],
        k,
        reach=reach / st,
        side=side / st,
        tilt_deg=tilt_deg,
        min_px=4 * (a_px / st) ** 2,
    )
    carried = False
    if not np.isfinite(kappa_h):
        if kappa_ref is None or not np.isfinite(kappa_ref) or not 0 <= kappa_ref < KAPPA_MAX:
            return HostModel(kappa_h, "no_reference", win, None, seg_kappa, small)
        # the host lattice of the series is the same crystal: its empty-site ratio from
        # an earlier frame (0.29-0.40 over 8 frames of a degrading KMC series)
        kappa_h, carried = float(kappa_ref), True
    if kappa_h >= KAPPA_MAX:
        return HostModel(kappa_h, "no_host", win, None, seg_kappa, small)
    d = (q - kappa_h * m_w) / (1.0 - kappa_h)
    return HostModel(kappa_h, "lattice", win, d, seg_kappa, small, site_w, site_mean, carried)


def _grow(mask: np.ndarray, r: int) -> np.ndarray:
    """Dilation of a boolean mask by a (2r + 1)² square (two running maxima)."""
    u = mask.view(np.uint8) if mask.dtype == bool else mask.astype(np.uint8)
    u = ndimage.maximum_filter1d(u, 2 * r + 1, axis=0, mode="constant")
    return ndimage.maximum_filter1d(u, 2 * r + 1, axis=1, mode="constant") > 0


def _small_host_segments(
    host: np.ndarray,
    seg: np.ndarray,
    k: int,
    *,
    reach: float,
    side: float,
    tilt_deg: float,
    min_px: float,
) -> np.ndarray:
    """Segments within ``reach`` px of a host-crystal component whose extent along one of
    the lattice directions is below ``side`` px (the line opening removes it); components
    cut by the window edge are not judged.  Lengths in pixels of the (sub-sampled) maps."""
    lab, n = ndimage.label(host)
    out = np.zeros(k, bool)
    if n == 0:
        return out
    yy, xx = np.nonzero(lab)
    lv = lab[yy, xx]
    t = np.radians(tilt_deg)
    u = xx * np.cos(t) + yy * np.sin(t)
    v = -xx * np.sin(t) + yy * np.cos(t)
    size = np.bincount(lv, minlength=n + 1)
    small = np.zeros(n + 1, bool)
    for c in (u, v):
        lo = ndimage.minimum(c, lv, np.arange(1, n + 1))
        hi = ndimage.maximum(c, lv, np.arange(1, n + 1))
        small[1:] |= np.asarray(hi) - np.asarray(lo) + 1 < side
    small &= size >= min_px
    # a component cut by the window (or frame) edge may continue beyond it
    edge = np.unique(np.r_[lab[0], lab[-1], lab[:, 0], lab[:, -1]])
    small[edge] = False
    if not small.any():
        return out
    hit = np.unique(seg[_grow(small[lab], max(1, int(np.ceil(reach))))])
    out[hit[hit > 0] - 1] = True
    return out


# host-lattice power of a frame (dose-normalised, relative to the series' first frame)
# above which its host lattice is still seen: KMC series of 3-5.5 nm crystals (bench_clusters
# sets and seeds 71-78, 0.4-0.5 Å/px, 1.5e3-6e3 e/Å² per frame) read at most 0.0055 in the
# 91 frames whose host is gone and above 0.01 in 51 of 57 frames with 20-80 host Pb left
HOST_LATTICE_MIN = 0.01
# the first frame is the reference of that power only where its host lattice clearly
# stands above the noise (excess / expected noise power at the reflections): frames whose
# host is gone read up to 27 (Pb clusters' own structure; bench_clusters sets, 83 frames),
# frames with more than 80 host Pb 51-3700 (274 frames); frame 0 of 90 KMC series >= 80
HOST_LATTICE_SNR = 50.0


def host_lattice_power(
    frame: np.ndarray, *, pixel_size_A: float, lattice_A: float, angle_deg: float
) -> tuple[float, float, int]:
    """Power of the host lattice in a frame: the excess power at its eight first-order
    reflections (100 and 110 of the cell ``lattice_A`` at ``angle_deg``).

    The spectrum is that of :func:`~perovstem.insitu.estimate_lattice` (Hann window, mean
    removed).  Around each reflection, the bins within 4 % of ``|g|`` are summed less the
    noise expected there (the median power of the ±10 % annulus / ln 2: the mean of an
    exponential distribution), so a frame without the lattice reads ≈ 0 whatever its dose.
    Drift moves the lattice, not its reflections, so the frames of a series compare
    directly (divide by (gain · dose)² first: power scales with the signal squared).
    Pb clusters do not share the host lattice (fcc Pb, incommensurate) and add little.

    Parameters
    ----------
    frame : (M, N) ndarray
        Frame minus offset, counts.
    pixel_size_A, lattice_A, angle_deg : float
        Pixel size (Å), host cell (Å) and its orientation (degrees from x).

    Returns
    -------
    power : float
        Summed excess power, counts² (≥ 0).
    noise : float
        The noise power expected in the same bins, counts² (its standard deviation is
        ``noise / sqrt(n)`` for ``n`` bins: exponential power per bin).
    n : int
        Number of bins summed.
    """
    from scipy import fft as sfft

    from perovstem.insitu.lattice import _full_power, _windowed_rfft2

    f = np.asarray(frame, float)
    p = _full_power(_windowed_rfft2(f), f.shape[1])
    ky = sfft.fftfreq(f.shape[0], pixel_size_A)[:, None]
    kx = sfft.fftfreq(f.shape[1], pixel_size_A)[None, :]
    kr = np.hypot(kx, ky)
    total = expected = 0.0
    n_bins = 0
    for d, turn in ((lattice_A, 0.0), (lattice_A / np.sqrt(2.0), 45.0)):
        g = 1.0 / d
        ring = np.abs(kr - g) < 0.1 * g
        if not ring.any():  # beyond Nyquist (pixels coarser than half the spacing)
            continue
        noise = float(np.median(p[ring])) / np.log(2.0)
        for q in range(4):
            t = np.radians(angle_deg + turn + 90.0 * q)
            near = np.hypot(kx - g * np.cos(t), ky - g * np.sin(t)) < 0.04 * g
            total += float((p[near] - noise).sum())
            expected += noise * float(near.sum())
            n_bins += int(near.sum())
    return max(total, 0.0), expected, n_bins


class HostReference:
    """The host's empty-site ratio carried over a series: one rule for every path that
    detects clusters frame by frame (``analyze_series``, the ``insitu.clusters`` pipeline
    step, the benchmarks and tests).

    A frame whose clusters cover the crystal cannot measure kappa_h
    (``attrs["host_model"] == "no_reference"``: every segment reads Pb-like and host Pb is
    counted as clusters).  It is detected again with the median kappa_h of the earlier
    frames that measured one (:meth:`reference`)

    - right after a frame that measured it (session 9), or
    - where the host lattice is still seen: :func:`host_lattice_power` per (gain · dose)²
      at least :data:`HOST_LATTICE_MIN` of the series' first frame's (the first whose
      lattice stands clear of the noise, :data:`HOST_LATTICE_SNR`).

    Not further: where the host is gone, the carried ratio reads the registry of pure Pb
    clusters as host excess (``bench_clusters`` carried into every later frame: within
    15 % pooled 0.685 -> 0.665).  Only the first frame after a measured one could lose its
    host silently before (seed 76, 35 Å, 3e3 e⁻/Å²/s, 320 K, frame 9: 40 host Pb, 260 Pb⁰
    read for 175 true; host lattice power 0.04).  A ``"no_reference"`` frame whose host
    lattice is seen but that has no ratio to take (no earlier frame measured one) has its
    clusters flagged ``host_ok`` False (:meth:`update`).

    Use::

        ref = HostReference(pixel_size_A=px)
        for image in frames:  # in frame order
            raw = image.data - offset
            det = detect_clusters(image, ...)
            kappa = ref.reference(det, raw, scale=gain * dose)
            if kappa is not None:
                det = detect_clusters(image, ..., host_reference=kappa)
            det = ref.update(det, raw, scale=gain * dose)
    """

    def __init__(self, *, pixel_size_A: float) -> None:
        self.pixel_size_A = float(pixel_size_A)
        self.ratios: list[float] = []
        self.after_measured = False
        self.lattice: tuple[float, float] | None = None
        self.power0: float | None = None
        # (frame, scale, relative power, its sd) of the latest frame measured
        self._last: tuple[np.ndarray, float | None, float, float] | None = None

    def _power(
        self, frame: np.ndarray, scale: float | None, lattice: tuple[float, float]
    ) -> tuple[float, float, float]:
        """Host-lattice power of ``frame`` per ``scale``², its noise standard deviation
        (same units) and its ratio to the noise expected."""
        la, ang = lattice
        p, noise, n = host_lattice_power(
            frame, pixel_size_A=self.pixel_size_A, lattice_A=la, angle_deg=ang
        )
        s = 1.0 if scale is None or not np.isfinite(scale) or scale <= 0 else float(scale)
        sd = noise / np.sqrt(max(n, 1))
        return p / s**2, sd / s**2, p / noise if noise > 0 else float("inf")

    def lattice_power(self, frame: np.ndarray, scale: float | None = None) -> float:
        """Host-lattice power of ``frame`` (offset removed, counts) per ``scale``² (gain ·
        dose; None: constant dose) relative to that of the series' first frame whose host
        lattice stands clear of the noise (:data:`HOST_LATTICE_SNR`); NaN before it."""
        return self._relative(frame, scale)[0]

    def _relative(self, frame: np.ndarray, scale: float | None) -> tuple[float, float]:
        """(relative power, its noise standard deviation) of ``frame``, NaN before the
        reference frame; the latest frame's is kept (reference, update, table)."""
        if self.lattice is None or not self.power0:
            return float("nan"), float("nan")
        last = self._last
        if last is not None and last[0] is frame and last[1] == scale:
            return last[2], last[3]
        p, sd, _ = self._power(frame, scale, self.lattice)
        self._last = (frame, scale, p / self.power0, sd / self.power0)
        return p / self.power0, sd / self.power0

    def lattice_seen(self, frame: np.ndarray, scale: float | None = None) -> bool:
        """The host lattice is still seen in ``frame``: its relative power is at least
        :data:`HOST_LATTICE_MIN` by more than twice its noise standard deviation (KMC
        series at 1.5e3-6e3 e⁻/Å² per frame: 0.0001-0.0034 of the first frame's power,
        median 0.0005, 480 frames; at low dose the noise alone could reach the
        threshold)."""
        lp, sd = self._relative(frame, scale)
        return bool(lp - 2.0 * sd >= HOST_LATTICE_MIN)

    def needs_frame(self, detections: Any) -> bool:
        """Whether :meth:`reference` and :meth:`update` need the frame's pixels for these
        detections (no lattice reference yet, or a ``"no_reference"`` frame)."""
        return self.lattice is None or detections.attrs.get("host_model") == "no_reference"

    def reference(
        self, detections: Any, frame: np.ndarray | None, *, scale: float | None = None
    ) -> float | None:
        """kappa_h to detect this frame again with (``host_reference``), or None.

        ``detections``: the frame's detections without a reference; ``frame``: the frame
        minus offset (counts; may be None where :meth:`needs_frame` is False); ``scale``:
        gain · dose of the frame (None: constant)."""
        if detections.attrs.get("host_model") != "no_reference":
            return None
        return self.ratio_to_carry(frame, scale=scale)

    def ratio_to_carry(
        self, frame: np.ndarray | None, *, scale: float | None = None
    ) -> float | None:
        """kappa_h that :meth:`reference` gives this frame should it be ``"no_reference"``,
        or None: known before the frame is detected, so a serial pass detects every frame
        once with it (``host_reference`` is used only where the frame cannot measure its
        own ratio).  ``frame`` (minus offset, counts) is read only where no frame right
        before measured kappa_h (may be None otherwise)."""
        if not self.ratios:
            return None
        if self.after_measured or self.lattice_seen(frame, scale):
            return float(np.median(self.ratios))
        return None

    def update(
        self, detections: Any, frame: np.ndarray | None, *, scale: float | None = None
    ) -> Any:
        """Record the frame's final detections; returns them, with ``host_ok`` False and
        ``attrs["host_flag"]`` (the reason) on a ``"no_reference"`` frame whose host
        lattice is seen although no ratio could be carried into it.  ``frame`` may be
        None where :meth:`needs_frame` is False."""
        attrs = detections.attrs
        model = attrs.get("host_model", "")
        if (
            self.lattice is None
            and frame is not None
            and np.isfinite(attrs.get("lattice_A", np.nan))
        ):
            lattice = (float(attrs["lattice_A"]), float(attrs.get("lattice_angle_deg", 0.0)))
            power, _, snr = self._power(frame, scale, lattice)
            if snr >= HOST_LATTICE_SNR:  # the first frame whose host lattice is clear
                self.lattice, self.power0 = lattice, power
        measured = model == "lattice" and not attrs.get("host_reference_used", False)
        if measured:
            self.ratios.append(float(attrs["host_empty_site_ratio"]))
        self.after_measured = measured
        if model == "no_reference" and frame is not None and len(detections):
            ok = detections["host_ok"].to_numpy(bool)
            if ok.any() and self.lattice_seen(frame, scale):
                lp = self.lattice_power(frame, scale)
                from perovstem.insitu.clusters import UNSUPPORTED_REL_ERR

                detections = detections.copy()
                # the error term of a count the host model cannot support (step 5)
                n = detections["n_atoms"].to_numpy(float)
                err = detections["n_atoms_err"].to_numpy(float)
                detections["n_atoms_err"] = np.where(
                    ok, np.hypot(err, UNSUPPORTED_REL_ERR * n), err
                )
                detections["host_ok"] = False
                detections.attrs["host_flag"] = (
                    f"host lattice seen (power {lp:.3f} of the first frame's) but no "
                    "frame before measured the host's empty-site ratio: host Pb may be "
                    "counted as Pb⁰"
                )
        return detections
