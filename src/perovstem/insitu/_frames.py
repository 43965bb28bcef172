"""Frame access for in-situ series: stream frames from numpy, dask or Zarr without loading all.

A series may be a :class:`perovstem.Series`, a ``(T, M, N)`` numpy/dask/zarr array, or a
sequence of 2-D frames.  :func:`iter_frames` yields ``(k, frame)`` one frame at a time (dask
chunks are computed block by block), so memory does not grow with the series length.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from typing import Any

import numpy as np
import pandas as pd

from perovstem._data import Series
from perovstem._validation import refuse_text_numbers
from perovstem.errors import DataError, ParameterError

__all__ = [
    "frame_stack",
    "iter_frames",
    "n_frames_of",
    "frame_shape_of",
    "frame_quality",
    "single_blas_thread",
]


class FramesCancelled(Exception):
    """Raised by :func:`iter_frames` when the reading context was cancelled (a pass that
    runs beside another one, e.g. the drift registration beside the detection pass of
    :func:`perovstem.insitu.analyze_series`, stops when that one fails)."""


# the cancel flag of the current context: a pass started in a copied context
# (contextvars.copy_context().run) sees the flag its starter sets
_CANCEL: ContextVar[threading.Event | None] = ContextVar("perovstem_frames_cancel", default=None)


def cancellable() -> threading.Event:
    """A cancel flag for the frame reads of the current context (set it to stop them)."""
    ev = threading.Event()
    _CANCEL.set(ev)
    return ev


def _check_cancel() -> None:
    ev = _CANCEL.get()
    if ev is not None and ev.is_set():
        raise FramesCancelled("frame reading cancelled")


def single_blas_thread() -> Any:
    """Context limiting BLAS to one thread (small matrix products of the registration spin
    otherwise; the frame loop is parallelised at a coarser level)."""
    try:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(1, user_api="blas")
    except ImportError:  # pragma: no cover - optional
        import contextlib

        return contextlib.nullcontext()


def _is_lazy(a: Any) -> bool:
    return hasattr(a, "dask") and hasattr(a, "compute")


def frame_stack(series: Any) -> Any:
    """Return the ``(T, M, N)`` frame container of ``series`` (not copied).

    Parameters
    ----------
    series : Series, (T, M, N) array_like or sequence of (M, N) arrays
        The in-situ series.

    Returns
    -------
    stack : array or sequence
        Indexable by frame; ``len(stack) == T``.

    Raises
    ------
    DataError
        Frames of different shapes, wrong dimensionality or an empty series.
    """
    if isinstance(series, Series):
        return series.data
    if hasattr(series, "shape") and hasattr(series, "ndim"):
        if series.ndim != 3:
            raise DataError(f"`series` must be (T, M, N), got shape {tuple(series.shape)}")
        if series.shape[0] == 0:
            raise DataError("`series` has no frames")
        return series
    if isinstance(series, Sequence):
        if len(series) == 0:
            raise DataError("`series` has no frames")
        shape0 = np.shape(series[0])
        if len(shape0) != 2:
            raise DataError(f"frame 0 of `series` must be 2-D, got shape {shape0}")
        for k, f in enumerate(series):
            if np.shape(f) != shape0:
                raise DataError(
                    f"frames of `series` differ in shape: frame 0 is {shape0}, "
                    f"frame {k} is {np.shape(f)}"
                )
        return series
    raise DataError(
        f"`series` must be a Series, a 3-D array or a list of frames, got {type(series)}"
    )


def n_frames_of(series: Any) -> int:
    """Number of frames ``T`` of a series."""
    return len(frame_stack(series))


def frame_shape_of(series: Any) -> tuple[int, int]:
    """Frame shape ``(M, N)`` of a series."""
    st = frame_stack(series)
    return tuple(np.shape(st[0])) if not hasattr(st, "shape") else tuple(st.shape[1:])


def iter_frames(series: Any, *, block: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(k, frame)`` for every frame, streaming lazy data block by block.

    Parameters
    ----------
    series : Series, (T, M, N) array or sequence of (M, N) arrays
        The series.
    block : int, optional
        Number of frames computed at once for dask input (default: the dask chunk size
        along the frame axis, at most 16).

    Yields
    ------
    k : int
        Frame index.
    frame : (M, N) ndarray
        Frame data (a view for numpy input; never modify it).
    """
    refuse_text_numbers(locals())
    st = frame_stack(series)
    n = len(st)
    if _is_lazy(st):
        if block is None:
            block = int(max(1, min(16, st.chunks[0][0])))
        if block < 1:
            raise ParameterError(f"`block` must be >= 1, got {block}")
        for k0 in range(0, n, block):
            try:
                chunk = np.asarray(st[k0 : k0 + block].compute())
            except (OSError, ValueError, RuntimeError) as exc:
                # a lazily read file that is cut short or damaged past its header
                src = getattr(series, "metadata", {}).get("source", "the series")
                raise DataError(
                    f"{src!r}: frames {k0}-{min(k0 + block, n) - 1} cannot be read "
                    f"({type(exc).__name__}: {str(exc)[:200]}); truncated or corrupted file?"
                ) from None
            for i in range(chunk.shape[0]):
                _check_cancel()
                yield k0 + i, chunk[i]
    else:
        for k in range(n):
            _check_cancel()
            yield k, np.asarray(st[k])


def frame_quality(frame: np.ndarray) -> str:
    """Return ``""`` for a usable frame, else the reason it is unusable.

    A frame is unusable when it holds NaN/inf values, is constant (e.g. all zero: a dropped
    or blanked frame) or is not 2-D numeric.
    """
    refuse_text_numbers(locals())
    a = np.asarray(frame)
    if a.ndim != 2 or a.dtype.kind not in "biuf":
        return f"not a 2-D numeric frame (shape {a.shape}, dtype {a.dtype})"
    if a.dtype.kind == "f":
        nbad = int(np.count_nonzero(~np.isfinite(a)))
        if nbad:
            return f"{nbad} non-finite pixel(s)"
    if a.size == 0 or float(a.max()) == float(a.min()):
        return f"constant frame (all pixels = {float(a.flat[0]) if a.size else 'n/a'})"
    return ""


def trailing_constant_rows(frame: np.ndarray) -> int:
    """Number of rows at the end of the scan (bottom) that all hold one and the same value.

    A scan stopped part-way leaves such a block (zeros, or the fill value of the
    exporter); vacuum on a noiseless or zero-background detector can too, so the count is
    only meaningful against the neighbouring frames (:func:`incomplete_scans`).
    """
    a = np.asarray(frame)
    if a.ndim != 2 or a.size == 0:
        return 0
    v = a[-1, 0]
    same = np.all(a == v, axis=1)
    if not same[-1]:
        return 0
    return int(np.argmin(same[::-1])) if not same.all() else int(a.shape[0])


def incomplete_scans(tail_rows: dict[int, int], dy_px: np.ndarray, n_rows: int) -> dict[int, int]:
    """Frames whose constant end-of-scan block is too long for their neighbours.

    ``tail_rows`` {frame: :func:`trailing_constant_rows`} of the usable frames, ``dy_px``
    (T,) their vertical drift (content moved down by dy: a vacuum band at the bottom
    shrinks by dy).  A frame is an incomplete scan when its block exceeds, by more than
    max(16 rows, 10 % of the rows), both the block expected from every usable neighbour
    (k ± 1, drift-corrected) and the drift-corrected median block of the series (a
    cluster wandering into the vacuum shortens one neighbour's block); the frame's drift
    is taken as the mean of its neighbours' (its own is suspect); returns
    {frame: rows in the block}.
    """
    margin = max(16, int(0.1 * n_rows))
    if not tail_rows:
        return {}
    dy = {k: float(dy_px[k]) for k in tail_rows}
    med = float(np.median([t + dy[j] for j, t in tail_rows.items()]))
    out: dict[int, int] = {}
    for k, t in tail_rows.items():
        nb = [j for j in (k - 1, k + 1) if j in tail_rows]
        if not nb:
            continue
        # the frame's own drift is not used: a cut frame registers wrongly (34-92 px off
        # on half-cut KMC frames), which moved its expected block along with it
        dy_k = float(np.mean([dy[j] for j in nb]))
        exp = [tail_rows[j] - (dy_k - dy[j]) for j in nb]
        if t > max(exp) + margin and t > med - dy_k + margin:
            out[k] = int(t)
    return out


def skipped_table(reasons: dict[int, str]) -> pd.DataFrame:
    """Table ``frame, reason`` of skipped frames."""
    return pd.DataFrame(
        {"frame": list(reasons.keys()), "reason": list(reasons.values())},
        columns=["frame", "reason"],
    )
