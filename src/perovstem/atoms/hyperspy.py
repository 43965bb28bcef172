"""HyperSpy interoperability: column tables as HyperSpy 2 markers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from perovstem._data import Image
from perovstem._validation import refuse_text_numbers
from perovstem.errors import DataError

__all__ = ["to_hyperspy"]

_COLOURS = ["red", "cyan", "orange", "lime", "magenta", "yellow"]


def to_hyperspy(columns: pd.DataFrame, image: Image | None = None, *, size: float = 8.0) -> Any:
    """Column positions as HyperSpy 2 ``Points`` markers (one per type), optionally on an image.

    Parameters
    ----------
    columns : DataFrame
        ``x_A, y_A[, type]`` in Å (calibrated axes, so markers line up with
        :meth:`perovstem.Image.to_hyperspy`).
    image : Image, optional
        If given, return its ``Signal2D`` with the markers added (permanent).

    Returns
    -------
    list of ``hyperspy.api.plot.markers.Points`` or ``Signal2D``
        Needs the ``hyperspy`` extra.
    """
    refuse_text_numbers(locals())
    from perovstem._optional import import_optional

    for c in ("x_A", "y_A"):
        if c not in columns.columns:
            raise DataError(f"`columns` needs {c!r}, got {list(columns.columns)}")
    hs = import_optional("hyperspy.api", extra="hyperspy")
    types = (
        columns["type"].astype(str) if "type" in columns else pd.Series(["column"] * len(columns))
    )
    markers = []
    for i, t in enumerate(dict.fromkeys(types)):
        m = (types == t).to_numpy()
        off = np.column_stack([columns.x_A.to_numpy()[m], columns.y_A.to_numpy()[m]])
        if image is not None:
            off = off - np.asarray(image.origin_A)  # Image.to_hyperspy axes start at 0
        markers.append(
            hs.plot.markers.Points(
                offsets=off, sizes=size, color=_COLOURS[i % len(_COLOURS)], facecolors="none"
            )
        )
    if image is None:
        return markers
    sig = image.to_hyperspy()
    for mk in markers:
        sig.add_marker(mk, permanent=True, plot_marker=False)
    return sig
