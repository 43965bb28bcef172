"""Counts of clusters on the crystal measured on the host-free map (private; step 5 of
:mod:`perovstem.insitu.clusters`).

A cluster is counted on the host-free map ``D`` because its segment on the excess map
``E`` holds host excess: a patch of thicker or less damaged host around the cluster that
the background opening left (the segment follows it beyond the aperture).  The
aperture's annulus used to leave out every segment pixel, the cluster's own included, so
on ``D`` its median came from the host *away* from that patch.  ``D`` cancels the host
only as far as the local empty-site ratio is the frame's ``kappa_h``; on a degrading
crystal the ratio falls with the host's thickness, so ``D`` of the host reads negative in
proportion to the host's mass, more on the thicker patch under and around the cluster
than on the thinner host beyond it: the annulus median sat above the host level under the
aperture and the counts on ``D`` read low (KMC series, deep on the crystal: median −0.13
tune280, −0.36 held-out 61–68; the noise-free host alone read −0.13 of the cluster's mass
in the median with that annulus, −0.04 with its own segment in it).  On ``D`` the cluster's
own segment beyond the aperture is host level like any other pixel of the annulus, so
the annulus keeps it (other segments stay out: their clusters are in ``D`` too).  This
is the annulus of aperture photometry, whose sky must sample the background next to the
source (Howell, PASP 101, 616 (1989); Stetson, PASP 99, 191 (1987)).

The detection (whether the segment is reported at all, ``min_atoms``) stays on the count
with the previous annulus: the higher, unbiased counts on ``D`` also lift host patches
whose count on ``D`` was ≈ 0 above ``min_atoms`` (precision −0.03…+0.005 on the tuning
and held-out series when the new count decided), as the registry correction of step 4b
stays out of the significance test.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def recount_on_d(
    aperture_counts: Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]],
    counts: tuple[np.ndarray, np.ndarray, np.ndarray],
    on_d: np.ndarray,
    keep: np.ndarray,
    d_count: np.ndarray,
    args: tuple,
    kwargs: dict[str, Any],
    *,
    n_of: Callable[[np.ndarray], np.ndarray] | None,
    min_atoms: float,
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """Re-count the clusters ``keep & on_d`` on ``D`` with their own segment in the annulus.

    Parameters
    ----------
    aperture_counts : callable
        :func:`perovstem.insitu.clusters._aperture_counts`.
    counts : tuple of ndarray
        ``(counts, shot-noise error, background error)`` of the first call (counts on the
        raw map scale, before the registry factor).
    on_d, keep : ndarray of bool
        Clusters counted on ``D``; clusters measured.
    d_count : ndarray
        Registry factor each count on ``D`` is multiplied by (step 5).
    args, kwargs : tuple, dict
        The arguments of the first call (``which`` is the 8th positional argument).
    n_of : callable or None
        Counts → atoms (``None`` without a dose: nothing is dropped).
    min_atoms : float
        Smallest reported cluster, atoms.

    Returns
    -------
    counts : tuple of ndarray
        The first call's arrays with the re-counted clusters replaced.
    low : ndarray of bool
        Clusters on ``D`` whose count with the previous annulus (times ``d_count``) is
        below ``min_atoms``: they are not reported, as before.
    """
    sel = keep & on_d
    low = np.zeros(len(sel), bool)
    if not sel.any():
        return counts, low
    tot0 = counts[0]
    if n_of is not None:
        ok = sel & np.isfinite(tot0)
        low[ok] = n_of(np.clip(tot0[ok] * d_count[ok], 0, None)) < min_atoms
    a = list(args)
    a[7] = sel
    new = aperture_counts(*a, **kwargs, ring_own=True)
    out = tuple(np.where(sel, n, o) for n, o in zip(new, counts, strict=True))
    return out, low  # type: ignore[return-value]
