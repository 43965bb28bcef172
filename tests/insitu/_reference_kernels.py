"""Reference forms of detect_clusters' compiled kernels, for the tests that compare them
(test_clusters.py, test_speed_kernels.py)."""

from __future__ import annotations

import numpy as np


def reference_opening(m, side, noise_scale):
    """The line/square opening written with scipy.ndimage 1-D filters (previous code)."""
    from scipy import ndimage

    low = float(np.min(m))
    kw = {"size": side, "mode": "constant", "cval": low}
    ero_x = ndimage.minimum_filter1d(m, axis=1, **kw)
    ero_y = ndimage.minimum_filter1d(m, axis=0, **kw)
    line = np.minimum(
        ndimage.maximum_filter1d(ero_x, axis=1, **kw),
        ndimage.maximum_filter1d(ero_y, axis=0, **kw),
    )
    if noise_scale <= 0:
        return line
    sq = ndimage.minimum_filter1d(ero_x, axis=0, **kw)
    sq = ndimage.maximum_filter1d(ndimage.maximum_filter1d(sq, axis=0, **kw), axis=1, **kw)
    return np.minimum(line, sq + 3.0 * np.sqrt(noise_scale * np.clip(sq, 0, None)))
