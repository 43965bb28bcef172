"""Run TOML-described analyses: resumable, serial or on dask.distributed, with provenance.

Public API
----------
- :func:`load_config` / :func:`parse_config` → :class:`Config` (validated before any work).
- :func:`run_pipeline` → :class:`RunResult` (run folder with tables, volumes, plots,
  ``provenance.json`` and ``report.html``).
- :func:`register_step`, :class:`Param`, :func:`list_steps`, :func:`get_step`: the step registry
  (add your own steps from a plugin module named in ``[run] plugins``).
- :func:`run_demo` (in :mod:`perovstem.pipeline.demo`): the built-in simulated study.
"""

from perovstem.pipeline.config import Config, StepSpec, load_config, parse_config
from perovstem.pipeline.context import StepContext, item_seeds
from perovstem.pipeline.executor import Executor
from perovstem.pipeline.registry import Param, Step, get_step, list_steps, register_step
from perovstem.pipeline.runner import RunResult, StepResult, run_pipeline

__all__ = [
    "Config",
    "StepSpec",
    "load_config",
    "parse_config",
    "StepContext",
    "item_seeds",
    "Executor",
    "Param",
    "Step",
    "get_step",
    "list_steps",
    "register_step",
    "RunResult",
    "StepResult",
    "run_pipeline",
    "run_demo",
]


def __getattr__(name: str):  # lazy: the demo pulls in the simulator
    if name == "run_demo":
        from perovstem.pipeline.demo import run_demo

        return run_demo
    raise AttributeError(name)
