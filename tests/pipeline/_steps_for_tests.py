"""Test-only pipeline steps (a plugin module, loaded through ``[run] plugins``).

``test.make_series`` draws a random in-situ series from the step seed; ``test.noisy_sum``
maps a per-frame function that uses one random stream per frame (so scheduler-independence of
the seeds is tested); ``test.slow`` sleeps per frame so that a run can be killed mid-way.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from perovstem import Series
from perovstem.pipeline import Param, register_step


@register_step(
    "test.make_series",
    outputs=("series",),
    params={"n_frames": Param(int, 20, "frames", min=1), "size": Param(int, 24, "px", min=4)},
)
def make_series(ctx: Any) -> dict[str, Any]:
    rng = ctx.rng()
    n, m = ctx.params["n_frames"], ctx.params["size"]
    data = rng.poisson(50.0, size=(n, m, m)).astype(np.float32)
    return {"series": Series(data, 0.5, dose_e_per_A2=10.0, time_s=np.arange(n, dtype=float))}


def _noisy(item: tuple[int, int, np.ndarray, float]) -> dict[str, float]:
    k, seed, frame, delay = item
    if delay:
        time.sleep(delay)
    rng = np.random.default_rng(seed)
    return {"frame": k, "value": float(frame.sum() + rng.normal())}


@register_step(
    "test.noisy_sum",
    inputs=("series",),
    outputs=("table",),
    params={"delay_s": Param(float, 0.0, "sleep per frame, s", min=0.0)},
)
def noisy_sum(ctx: Any, series: Any) -> dict[str, Any]:
    import pandas as pd

    seeds = ctx.item_seeds(series.n_frames)
    items = [
        (k, seeds[k], np.asarray(series.data[k]), ctx.params["delay_s"])
        for k in range(series.n_frames)
    ]
    return {"table": pd.DataFrame(ctx.map(_noisy, items, description="noisy sums"))}


@register_step("test.warns", inputs=("series",), outputs=("table",))
def warns(ctx: Any, series: Any) -> dict[str, Any]:
    import warnings

    import pandas as pd

    for _ in range(3):  # one text, raised repeatedly (e.g. once per frame)
        warnings.warn("pixel size disagrees with the cell by -10 %", UserWarning, stacklevel=1)
    warnings.warn("detector gain unknown <assumed 1>", RuntimeWarning, stacklevel=1)
    return {"table": pd.DataFrame({"n": [series.n_frames]})}


@register_step("test.warns_per_frame", inputs=("series",), outputs=("table",))
def warns_per_frame(ctx: Any, series: Any) -> dict[str, Any]:
    import warnings

    import pandas as pd

    for k in range(series.n_frames):  # the same warning with each frame's estimate
        warnings.warn(
            f"gain unknown; measured {0.06 + 0.001 * k:.4f} counts/e⁻", UserWarning, stacklevel=1
        )
    warnings.warn("frame 3 of 9 skipped: empty", RuntimeWarning, stacklevel=1)
    return {"table": pd.DataFrame({"n": [series.n_frames]})}


def _warn_item(k: int) -> int:
    import warnings

    if k == 2:
        warnings.warn(f"frame {k}: no drift estimate", UserWarning, stacklevel=1)
    return k * k


@register_step("test.map_warns", inputs=("series",), outputs=("table",))
def map_warns(ctx: Any, series: Any) -> dict[str, Any]:
    import pandas as pd

    return {"table": pd.DataFrame({"sq": ctx.map(_warn_item, range(series.n_frames))})}


@register_step(
    "test.list_sizes",
    inputs=("items",),
    list_inputs=("items",),
    outputs=("sizes",),
    params={},
)
def list_sizes(ctx: Any, items: Any) -> dict[str, Any]:
    """A list input: one row per item, in the wired order."""
    import pandas as pd

    assert isinstance(items, list)
    return {"sizes": pd.DataFrame({"n_frames": [len(s.data) for s in items]})}
