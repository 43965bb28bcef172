"""When numba's worker threads pay off, and a scope with a given thread count.

Numba's OpenMP workers spin-wait at every parallel region: on a busy machine a threaded
kernel is several times slower than the serial one, and for small kernels the hand-off costs
more than it saves even on an idle machine.  The thread count changes only the speed of the
kernels that use these helpers, never their result (each output element is summed in the
same order by whichever thread owns it).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

__all__ = ["spare_core", "numba_threads"]


def spare_core() -> bool:
    """True when a second core is idle: 1-min load average ≤ cores − ½ and, where
    ``/proc/loadavg`` exists, at most cores − 1 runnable tasks right now (median of three
    samples 2 ms apart; this process is one of them).

    Numba's OpenMP workers spin-wait; on a busy machine the threaded sweep is 2–3× slower
    than the serial one, on an idle 2-core machine ~1.4× faster.  The choice changes only the
    speed, never the result.
    """
    ncpu = os.cpu_count() or 1
    if ncpu < 2:
        return False
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - not on POSIX
        return True
    if load > ncpu - 0.5:
        return False
    running = []
    for t in range(3):
        try:
            with open("/proc/loadavg") as fh:
                running.append(int(fh.read().split()[3].split("/")[0]))
        except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
            return True
        if t < 2:
            time.sleep(0.002)
    return sorted(running)[1] <= ncpu - 1


@contextlib.contextmanager
def numba_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` numba threads (``None``: unchanged), then restore the count."""
    if n is None:
        yield
        return
    import numba

    n0 = numba.get_num_threads()
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        numba.set_num_threads(n0)
