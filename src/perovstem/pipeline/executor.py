"""Serial or dask.distributed execution of per-frame / per-item work.

Library functions in perovstem never create a dask client.  The pipeline runner creates one
here, lazily, the first time a step maps work over enough items:

* ``"serial"``: everything in this process.
* ``"auto"`` (default): a :class:`distributed.LocalCluster` (one single-threaded worker
  process per core, at most 8) for maps over at least ``auto_min_items`` items on a machine
  with more than one core; serial otherwise.
* ``"local"`` / ``"local:N"``: always a LocalCluster (N workers).
* ``"tcp://host:8786"`` (any dask scheduler address): connect to an existing cluster, e.g. one
  started by ``dask-jobqueue`` on an HPC system (see the README tutorial).
* a ``distributed.Client`` object passed from Python: used as is (never closed here).

Results do not depend on the scheduler: items are mapped by a pure function, every item's
random stream is derived from the run seed and the item index (never from the worker), and
results are gathered in item order.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from perovstem.errors import ParameterError

#: seconds to wait for a dask scheduler given by its address (dask's default is 30)
_CONNECT_TIMEOUT_S = 10

__all__ = ["Executor", "local_cluster", "parse_scheduler"]


def parse_scheduler(scheduler: Any) -> tuple[str, int | None]:
    """Split a scheduler spec into ``(kind, n_workers)``; kind in serial/auto/local/address/client."""
    if scheduler is None:
        return "auto", None
    if not isinstance(scheduler, str):
        if hasattr(scheduler, "submit") and hasattr(scheduler, "gather"):
            return "client", None
        raise ParameterError(f"`scheduler` must be a string or a dask Client, got {scheduler!r}")
    s = scheduler.strip()
    if s in ("serial", "auto", "local"):
        return s, None
    if s.startswith("local:"):
        try:
            n = int(s.split(":", 1)[1])
        except ValueError:
            n = 0
        if n < 1:
            raise ParameterError(f"`scheduler` 'local:N' needs N >= 1, got {scheduler!r}")
        return "local", n
    if "://" in s:
        return "address", None
    raise ParameterError(
        f"`scheduler` must be 'serial', 'auto', 'local', 'local:N' or a scheduler address "
        f"like 'tcp://host:8786', got {scheduler!r}"
    )


def _apply_batch(
    func: Callable[..., Any], batch: Sequence[Any], *shared: Any, parent_pid: int = 0
) -> tuple[list[Any], list[tuple[type[Warning], str]]]:
    if os.getpid() == parent_pid:
        # thread workers of this process: the step's own warning capture sees them (and
        # catch_warnings is not thread-safe, so it is not entered here)
        return [func(item, *shared) for item in batch], []
    # in a worker process a warning only reaches the worker's log: bring it back with the
    # results so that the step records it (provenance, report) as in a serial run
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = [func(item, *shared) for item in batch]
    seen = dict.fromkeys((w.category, str(w.message)) for w in rec)
    return out, list(seen)


def _reraise_warnings(caught: Sequence[tuple[type[Warning], str]]) -> None:
    for category, message in caught:
        if not (isinstance(category, type) and issubclass(category, Warning)):
            category = UserWarning
        warnings.warn(message, category, stacklevel=3)


_MALLOC_TRIM = "MALLOC_TRIM_THRESHOLD_"


def local_cluster(n_workers: int, *, processes: bool = True) -> Any:
    """A :class:`distributed.LocalCluster` of ``n_workers`` single-threaded workers, as the
    pipeline starts one: without dask's ``MALLOC_TRIM_THRESHOLD_=65536`` in the worker
    processes' environment (``distributed.nanny.pre-spawn-environ``, nor inherited from
    this process): glibc's default allocator settings, as in a serial run.

    That setting turns off glibc's adaptive mmap threshold, so every array above 128 KiB
    is mapped and its pages faulted in afresh: the per-frame cluster detection of a
    48 Å crystal (224 × 210 px frames) then took 43 % more CPU time per frame (100
    frames, one process: 4.2-4.4 s instead of 3.0 s, 20x the page faults), and a warm
    2-worker cluster spent 1.7x the serial CPU time on the same frames.  Pass the
    same setting (``dask.config.set({"distributed.nanny.pre-spawn-environ.
    MALLOC_TRIM_THRESHOLD_": None})``) when starting a long-lived cluster yourself.
    """
    import dask

    from perovstem._optional import import_optional

    distributed = import_optional("distributed", extra="dask")
    # (a cluster started earlier in this process left the setting in os.environ, which
    # the worker processes inherit: it is taken out while they start, then put back)
    inherited = os.environ.pop(_MALLOC_TRIM, None)
    try:
        with dask.config.set({f"distributed.nanny.pre-spawn-environ.{_MALLOC_TRIM}": None}):
            return distributed.LocalCluster(
                n_workers=int(n_workers),
                threads_per_worker=1,
                processes=processes,
                dashboard_address=None,
                silence_logs=40,
            )
    finally:
        if inherited is not None:
            os.environ[_MALLOC_TRIM] = inherited


class Executor:
    """Maps a function over items, serially or on a dask.distributed cluster.

    Parameters
    ----------
    scheduler : str or distributed.Client
        See the module docstring.
    n_workers : int, optional
        Workers of a LocalCluster (default: number of cores, at most 8).
    processes : bool
        LocalCluster workers are processes (default) or threads of this process.
    auto_min_items : int
        Smallest map that ``"auto"`` sends to a cluster.
    """

    def __init__(
        self,
        scheduler: Any = "auto",
        *,
        n_workers: int | None = None,
        processes: bool = True,
        auto_min_items: int = 64,
    ) -> None:
        self.kind, n = parse_scheduler(scheduler)
        self._spec = scheduler
        self._given = scheduler if self.kind == "client" else None
        self.n_workers = n_workers or n
        self.processes = processes
        self.auto_min_items = auto_min_items
        self._client: Any = self._given
        self._cluster: Any = None
        # (object, its future) of the latest ``shared`` scattered: the next map with the
        # same object (a step's second pass over the series) does not send it again
        self._scattered: tuple[Any, Any] | None = None
        self.used_cluster = False

    # -- cluster management ------------------------------------------------------------
    def _want_cluster(self, n_items: int) -> bool:
        if self.kind == "serial" or n_items < 2:
            return False
        if self.kind == "auto":
            return n_items >= self.auto_min_items and (os.cpu_count() or 1) > 1
        return True

    def client(self) -> Any:
        """The dask client, created on first use (LocalCluster or address)."""
        if self._client is not None:
            return self._client
        from perovstem._optional import import_optional

        distributed = import_optional("distributed", extra="dask")
        if self.kind == "address":
            try:
                self._client = distributed.Client(
                    self._address, set_as_default=False, timeout=_CONNECT_TIMEOUT_S
                )
            except OSError as exc:  # (an "unexpected OSError", exit 1, after earlier steps)
                raise ParameterError(
                    f"cannot reach the dask scheduler {self._address!r} ({exc}); start it, or "
                    "give another --scheduler (serial, local, local:N)"
                ) from None
        else:
            n = self.n_workers or max(1, min(os.cpu_count() or 1, 8))
            self._cluster = local_cluster(n, processes=self.processes)
            self._client = distributed.Client(self._cluster, set_as_default=False)
        return self._client

    @property
    def _address(self) -> str:
        return str(self._spec)

    def describe(self) -> str:
        if self._client is None:
            return "serial" if self.kind in ("serial", "auto") else f"{self.kind} (not started)"
        try:
            info = self._client.scheduler_info()
            return f"dask {self.kind}: {len(info.get('workers', {}))} workers"
        except Exception:  # pragma: no cover - scheduler gone
            return f"dask {self.kind}"

    def close(self) -> None:
        """Close a client/cluster created here (a client given by the caller stays open)."""
        if self._client is not None and self._given is None:
            self._client.close()
            if self._cluster is not None:
                self._cluster.close()
        self._client = self._given
        self._cluster = None
        self._scattered = None

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- mapping -----------------------------------------------------------------------
    def map(
        self,
        func: Callable[..., Any],
        items: Sequence[Any],
        *,
        shared: Any = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[Any]:
        """``[func(item) for item in items]`` (or ``func(item, shared)``), in order.

        ``shared`` is an object every call needs (e.g. the whole series, with items being
        frame indices): on a cluster it is sent to each worker once (scattered) instead of
        with every task, so a lazy or large series is never copied per frame.
        ``progress(n_done)`` is called as items finish.  Items are sent in batches (about
        four per worker) to keep scheduling overhead small.
        """
        items = list(items)
        extra = () if shared is None else (shared,)
        if not self._want_cluster(len(items)):
            out = []
            for k, item in enumerate(items):
                out.append(func(item, *extra))
                if progress is not None:
                    progress(k + 1)
            return out
        client = self.client()
        self.used_cluster = True
        n_workers = max(1, len(client.scheduler_info().get("workers", {})) or 1)
        size = max(1, math.ceil(len(items) / (4 * n_workers)))
        batches = [items[i : i + size] for i in range(0, len(items), size)]
        if extra:
            if self._scattered is None or self._scattered[0] is not shared:
                self._scattered = None  # (the previous object's copies are released)
                self._scattered = (shared, client.scatter(shared, broadcast=True, hash=False))
            extra = (self._scattered[1],)
        pid = os.getpid()
        futures = [
            client.submit(_apply_batch, func, b, *extra, parent_pid=pid, pure=False)
            for b in batches
        ]
        results: list[Any] = []
        done = 0
        try:
            for fut, batch in zip(futures, batches, strict=True):  # gathered in item order
                got, caught = fut.result()
                _reraise_warnings(caught)
                results.append(got)
                done += len(batch)
                if progress is not None:
                    progress(done)
        finally:
            for fut in futures:
                fut.release()
        return [r for batch in results for r in batch]
