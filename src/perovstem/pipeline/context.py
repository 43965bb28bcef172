"""What a step function sees: parameters, random streams, a mapper and report helpers."""

from __future__ import annotations

import io as _io
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["StepContext", "item_seeds"]


def item_seeds(seed: int, n: int) -> list[int]:
    """``n`` independent integer seeds derived from ``seed`` (same on any scheduler).

    Uses :class:`numpy.random.SeedSequence` spawning (O'Neill, PCG family), so item ``k`` gets
    the same stream whether items run serially, on threads or on remote workers.
    """
    children = np.random.SeedSequence(seed).spawn(n)
    return [int(c.generate_state(1, dtype=np.uint64)[0]) for c in children]


class StepContext:
    """Context passed as first argument to every step function.

    Attributes
    ----------
    step_id : str
        Id of the configured step (artefacts are named ``"<step_id>.<output>"``).
    params : dict
        Validated parameters (defaults filled in).
    seed : int
        Seed of this step's random stream (derived from the run seed and the step id).
    run_dir : Path
        The run folder.
    section : str
        Report section this step contributes to by default.
    """

    def __init__(
        self,
        step_id: str,
        params: dict[str, Any],
        seed: int,
        *,
        run_dir: Path,
        section: str,
        executor: Any,
        progress: Any = None,
        inputs: dict[str, Any] | None = None,
    ) -> None:
        self.step_id = step_id
        # input name -> the artefact reference(s) it is wired to (for messages)
        self.inputs = dict(inputs or {})
        self.params = dict(params)
        self.seed = int(seed)
        self.run_dir = Path(run_dir)
        self.section = section
        self._executor = executor
        self._progress = progress
        self.report_items: list[dict[str, Any]] = []
        self.files: list[str] = []

    def need_columns(self, name: str, table: Any, columns: dict[str, str]) -> None:
        """Refuse input table ``name`` unless it has ``columns`` (column -> why it is needed).

        A missing column named by a parameter (``y = "n_Br"``) used to raise a bare
        ``KeyError`` or a message naming "the input table"; this names the parameter, the
        input, what it is wired to and the columns it has.
        """
        from perovstem.errors import ParameterError

        missing = {c: why for c, why in columns.items() if c not in table.columns}
        if not missing:
            return
        ref = self.inputs.get(name)
        wired = f" (wired to `{ref}`)" if isinstance(ref, str) else ""
        what = "; ".join(f"{why} {c!r}" for c, why in missing.items())
        cols = [str(c) for c in table.columns]
        more = f", ... {len(cols) - 20} more" if len(cols) > 20 else ""
        raise ParameterError(
            f"input `{name}`{wired} has no column {what}; its columns: {', '.join(cols[:20])}{more}"
        )

    # -- randomness ---------------------------------------------------------------------
    def rng(self, offset: int = 0) -> np.random.Generator:
        """A Generator seeded from this step's seed (``offset`` gives further streams)."""
        return np.random.default_rng([self.seed, int(offset)])

    def item_seeds(self, n: int) -> list[int]:
        """One seed per mapped item, independent of the scheduler."""
        return item_seeds(self.seed, n)

    # -- execution ------------------------------------------------------------------------
    def map(
        self,
        func: Callable[..., Any],
        items: Sequence[Any],
        *,
        shared: Any = None,
        description: str = "",
    ) -> list[Any]:
        """``[func(x) for x in items]`` in order, on the run's scheduler (serial or dask).

        ``func`` must be a pure function of its item (pass seeds inside the items).  With
        ``shared`` (e.g. the series, items being frame indices) it is called as
        ``func(x, shared)`` and ``shared`` is sent to each dask worker only once.
        """
        items = list(items)
        task = None
        if self._progress is not None and len(items) > 1:
            task = self._progress.add_task(
                f"  {self.step_id}: {description or 'items'}", total=len(items)
            )

        def tick(n_done: int) -> None:
            if task is not None:
                self._progress.update(task, completed=n_done)

        try:
            return self._executor.map(func, items, shared=shared, progress=tick)
        except TypeError as exc:
            if "serializ" not in str(exc):
                raise
            # a function holding `ctx` (e.g. a lambda reading ctx.params) cannot be sent to
            # dask workers; it ended in "unexpected TypeError: Could not serialize LLGExpr"
            from perovstem.errors import ParameterError

            raise ParameterError(
                "the function given to ctx.map cannot be sent to the "
                f"dask workers ({str(exc)[:120]}): it must not hold `ctx` or another object "
                "that cannot be pickled; read what it needs first (q = ctx.params[...]) and "
                "use q in it"
            ) from None
        finally:
            if task is not None:
                self._progress.remove_task(task)

    def maps_serially(self, n_items: int) -> bool:
        """Whether :meth:`map` over ``n_items`` items runs in this process, in item order
        (serial scheduler, or ``"auto"`` below its cluster size): a step may then carry
        state from item to item instead of mapping a second pass."""
        executor = self._executor
        if executor is None:
            return True
        want = getattr(executor, "_want_cluster", None)
        return want is not None and not want(int(n_items))

    def track(
        self, iterable: Iterable[Any], *, total: int | None = None, description: str = ""
    ) -> Iterable[Any]:
        """Iterate with a progress bar (nothing shown with ``--quiet``)."""
        if self._progress is None:
            yield from iterable
            return
        task = self._progress.add_task(f"  {self.step_id}: {description}", total=total)
        try:
            for x in iterable:
                yield x
                self._progress.advance(task)
        finally:
            self._progress.remove_task(task)

    # -- report contributions -------------------------------------------------------------
    def _item(
        self, kind: str, name: str, *, section: str | None, title: str, caption: str, **data: Any
    ) -> None:
        self.report_items.append(
            {
                "kind": kind,
                "name": name,
                "step": self.step_id,
                "section": section or self.section,
                "title": title if (title or kind == "text") else name.replace("_", " "),
                "caption": caption,
                **data,
            }
        )

    def figure(
        self,
        name: str,
        fig: Any,
        *,
        title: str = "",
        caption: str = "",
        section: str | None = None,
        dpi: int = 110,
    ) -> Path:
        """Save a matplotlib figure as ``plots/<step_id>.<name>.png`` and add it to the report."""
        from perovstem.io.runstore import write_bytes

        buf = _io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        try:  # figures made with pyplot must be closed to free memory
            import matplotlib.pyplot as plt

            plt.close(fig)
        except Exception:  # pragma: no cover
            pass
        rel = Path("plots") / f"{self.step_id}.{name}.png"
        write_bytes(self.run_dir / rel, buf.getvalue())
        self.files.append(str(rel))
        self._item("figure", name, section=section, title=title, caption=caption, path=str(rel))
        return self.run_dir / rel

    def table(
        self,
        name: str,
        df: Any,
        *,
        title: str = "",
        caption: str = "",
        section: str | None = None,
        max_rows: int = 12,
        digits: int = 4,
    ) -> None:
        """Show (the first ``max_rows`` rows of) a DataFrame in the report."""
        head = df.head(max_rows)
        rows = []
        for rec in head.itertuples(index=False):
            row = []
            for v in rec:
                if v is None or (isinstance(v, float | np.floating) and np.isnan(v)):
                    row.append("—")  # not fitted / not known: the row's text says why
                elif isinstance(v, float | np.floating) and np.isinf(v):
                    row.append("∞" if v > 0 else "−∞")
                elif isinstance(v, float | np.floating):
                    row.append(f"{float(v):.{digits}g}")
                else:
                    row.append(str(v))
            rows.append(row)
        self._item(
            "table",
            name,
            section=section,
            title=title,
            caption=caption,
            columns=[str(c) for c in df.columns],
            rows=rows,
            n_rows=int(len(df)),
        )

    def metric(
        self,
        name: str,
        value: float,
        *,
        unit: str = "",
        err: float | None = None,
        section: str | None = None,
        caption: str = "",
    ) -> None:
        """Report one number with its uncertainty and unit (the mechanism summary)."""
        self._item(
            "metric",
            name,
            section=section,
            title=name,
            caption=caption,
            value=None if value is None else float(value),
            err=None if err is None else float(err),
            unit=unit,
        )

    def text(self, text: str, *, section: str | None = None, title: str = "") -> None:
        """A paragraph of plain text (escaped in the report)."""
        self._item("text", title or "note", section=section, title=title, caption="", text=text)

    def plot3d(
        self, name: str, fig: Any, *, title: str = "", caption: str = "", section: str | None = None
    ) -> None:
        """Embed an interactive plotly figure (stored as JSON, rendered with inline plotly.js)."""
        from perovstem.io.runstore import write_text

        rel = Path("plots") / f"{self.step_id}.{name}.plotly.json"
        write_text(self.run_dir / rel, fig.to_json())
        self.files.append(str(rel))
        self._item("plot3d", name, section=section, title=title, caption=caption, path=str(rel))
