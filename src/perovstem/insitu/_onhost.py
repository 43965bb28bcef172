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

import numpy as np


def on_d_below(
    counts_prev: np.ndarray, n_of: Callable[[np.ndarray], np.ndarray], min_atoms: float
) -> np.ndarray:
    """Clusters counted on ``D`` whose count with the previous annulus (the segments'
    pixels all left out; ``counts_prev``, raw-map counts times the registry factor, NaN
    for clusters not counted on ``D``) holds fewer than ``min_atoms`` atoms (``n_of``:
    counts → atoms): they are not reported, as before the annulus kept the cluster's own
    segment."""
    out = np.zeros(len(counts_prev), bool)
    ok = np.isfinite(counts_prev)
    out[ok] = n_of(np.clip(counts_prev[ok], 0, None)) < min_atoms
    return out
