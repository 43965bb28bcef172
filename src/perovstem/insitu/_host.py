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
