"""Model-free column intensities: sums over Voronoi cells."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from perovstem._data import Image
from perovstem._validation import refuse_text_numbers
from perovstem.atoms._inputs import as_image, as_positions
from perovstem.atoms.normalize import poisson_variance_model

__all__ = ["voronoi_intensities"]


def voronoi_intensities(
    image: Image | np.ndarray,
    positions: Any,
    *,
    background: float = 0.0,
    max_radius_A: float | None = None,
    pixel_size_A: float | None = None,
) -> pd.DataFrame:
    """Integrated intensity of each column over its Voronoi cell (model-free SCS).

    Every pixel is assigned to the nearest column (within ``max_radius_A``); the cell sum of
    ``(pixel − background)·dx²`` is the column's integrated intensity in image units·Å²
    (Å² on a normalised image; E et al., Ultramicroscopy 133 (2013) 109; Van Aert et al.,
    Ultramicroscopy 109 (2009) 1236).  Cells cut by the image border or by ``max_radius_A``
    are flagged (``edge``).  The error assumes Poisson statistics of the image's variance model
    (:func:`perovstem.atoms.normalize.poisson_variance_model`).

    Parameters
    ----------
    image : Image or ndarray
    positions : DataFrame (``x_A, y_A``) or (N, 2) array, Å
    background : float
        Level subtracted from every pixel (image units).
    max_radius_A : float, optional
        Pixels farther than this from every column belong to no cell (default: 0.75 × the
        largest nearest-neighbour distance).

    Returns
    -------
    DataFrame
        ``x_A, y_A[, type], intensity, intensity_err, scs, scs_err, n_pixels, edge``
        (``type`` copied from ``positions``; ``scs``/``scs_err`` = ``intensity``/
        ``intensity_err``, so the table goes straight into
        :func:`perovstem.atoms.count_library`, whose ``library="simulate"`` then takes the
        Voronoi library: ``attrs["scs_estimator"] = "voronoi"``).

    Notes
    -----
    On a normalised image (:func:`perovstem.atoms.normalize_image`, background 0) of a
    crystal that fills the field, the cells partition all the scattered intensity, so the
    sums are the Voronoi SCS that :func:`perovstem.simulate.scs_library` tabulates with
    ``integration="voronoi"`` (periodic-slab multislice).  A Gaussian fit with a free
    constant background is not comparable with either library there: the background takes
    the probe tails and the diffuse scattering between the columns (a third of the
    intensity on a 4-cell abTEM slab; docs/atoms.md, counting).
    """
    refuse_text_numbers(locals())
    img = as_image(image, pixel_size_A)
    xy, _ = as_positions(positions, img)
    data = np.asarray(img.data, dtype=float)
    dx = img.pixel_size_A
    ny, nx = data.shape
    pix = (xy - np.asarray(img.origin_A)) / dx
    tree = cKDTree(pix)
    if max_radius_A is None:
        if len(pix) > 1:
            d, _ = tree.query(pix, k=2)
            rmax = 0.75 * float(d[:, 1].max())
        else:
            rmax = float(max(ny, nx))
    else:
        rmax = float(max_radius_A) / dx
    yy, xx = np.mgrid[0:ny, 0:nx]
    dist, lab = tree.query(np.column_stack([xx.ravel(), yy.ravel()]), distance_upper_bound=rmax)
    ok = np.isfinite(dist)
    lab_ok = lab[ok]
    n = len(pix)
    vals = data.ravel()[ok] - float(background)
    inten = np.bincount(lab_ok, weights=vals, minlength=n) * dx * dx
    npx = np.bincount(lab_ok, minlength=n)
    s, o, _ = poisson_variance_model(img)
    var = s * np.maximum(data.ravel()[ok] - o, 0.0)
    err = np.sqrt(np.bincount(lab_ok, weights=var, minlength=n)) * dx * dx
    border = np.zeros(ny * nx, dtype=bool).reshape(ny, nx)
    border[[0, -1], :] = True
    border[:, [0, -1]] = True
    touches = np.bincount(lab_ok, weights=border.ravel()[ok], minlength=n) > 0
    # a cell limited by the radius has pixels at distance close to rmax
    far = np.bincount(lab_ok, weights=(dist[ok] > 0.95 * rmax), minlength=n) > 0
    cols: dict[str, Any] = {"x_A": xy[:, 0], "y_A": xy[:, 1]}
    if isinstance(positions, pd.DataFrame) and "type" in positions.columns:
        cols["type"] = positions["type"].astype(str).to_numpy()
    out = pd.DataFrame(
        {
            **cols,
            "intensity": inten,
            "intensity_err": err,
            "scs": inten,
            "scs_err": err,
            "n_pixels": npx,
            "edge": touches | far,
        }
    )
    out.attrs.update(
        pixel_size_A=dx,
        background=float(background),
        max_radius_A=rmax * dx,
        scs_estimator="voronoi",
        normalized=bool(img.metadata.get("normalized", False)),
    )
    return out
