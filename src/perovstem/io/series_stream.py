"""Streaming writer for long (lazy) in-situ series: one frame in memory at a time.

:func:`save_series_streaming` writes a :class:`~perovstem.Series` whose frames are a dask
array (e.g. ``insitu_series(..., lazy=True)``) to a ``.zarr`` group frame by frame, in the
same layout as :func:`perovstem.io.save_image` (array ``data`` chunked one frame per chunk,
calibration and per-frame conditions in ``attrs["perovstem"]``), so :func:`perovstem.io.load`
reads it back (lazily with ``lazy=True``).  The group is written to a temporary path and
renamed at the end (atomic).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from perovstem._data import Series
from perovstem.errors import FileFormatError, ParameterError
from perovstem.io._write import atomic_path

__all__ = ["save_series_streaming"]


def save_series_streaming(
    series: Series,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write ``series`` to ``path`` (``.zarr``) computing and storing one frame at a time.

    Parameters
    ----------
    series : Series
        Frames as a numpy or dask array ``(T, M, N)``.
    path : str or PathLike
        Output ``.zarr`` directory.
    overwrite : bool
        Replace an existing output (never an input registered with ``io.protect``).
    progress : callable, optional
        Called as ``progress(k, T)`` after frame ``k`` is written.

    Returns
    -------
    Path
        ``path``.
    """
    import zarr

    from perovstem.io.write import _meta_of, _per_frame_arrays

    if not isinstance(series, Series):
        raise ParameterError(f"`series` must be a Series, got {type(series).__name__}")
    path = Path(path)
    if path.suffix.lower() != ".zarr":
        raise FileFormatError(f"{str(path)!r}: streaming output is written as .zarr only")
    meta = _meta_of(series)
    frames = _per_frame_arrays(series)
    n, m, w = series.shape
    lazy = hasattr(series.data, "dask")
    dtype = np.dtype(series.data.dtype)
    with atomic_path(path, overwrite=overwrite) as tmp:
        g = zarr.open_group(str(tmp), mode="w")
        arr = g.create_array("data", shape=(n, m, w), dtype=dtype, chunks=(1, m, w))
        for k in range(n):
            frame = series.data[k]
            arr[k] = np.asarray(frame.compute() if lazy else frame, dtype=dtype)
            if progress is not None:
                progress(k, n)
        g.attrs["perovstem"] = {**meta, **{k: v.tolist() for k, v in frames.items()}}
    return path
