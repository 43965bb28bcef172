"""Run a validated analysis: resumable, serial or on dask.distributed, with provenance.

Run folder layout::

    <out>/
      perovstem-run.json      identity of the run (name, creation time)
      config.toml             the configuration as given
      provenance.json         versions, machine, parameters, input checksums, step log
      tables/<id>.<output>.parquet   every table produced (df.attrs kept)
      volumes/<id>.<output>.mrc      3-D arrays (via perovstem.io.save_volume when present)
      arrays/<id>.<output>.npy       other numeric arrays
      plots/<id>.<name>.png          figures (also embedded in the report)
      report.html                    the self-contained report
      .cache/<id>/                   step outputs + done.json (resume bookkeeping)

A step is *done* when ``.cache/<id>/done.json`` exists and records the same key: a hash of the
step name and version, its validated parameters, its seed and the keys of its inputs (file
checksums for file inputs, upstream keys for step outputs).  ``done.json`` is written last and
atomically, so a run killed at any instant resumes at the first unfinished step; a changed
parameter re-runs that step and everything downstream of it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import re
import sys
import time
import traceback
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perovstem.errors import OutputExistsError, PerovstemError
from perovstem.pipeline.config import LOAD_OPTIONS, SERIES_OPTIONS, Config, StepSpec, load_config
from perovstem.pipeline.context import StepContext
from perovstem.pipeline.executor import Executor

__all__ = ["run_pipeline", "RunResult", "StepResult", "RUN_MARKER"]

RUN_MARKER = "perovstem-run.json"
# [inputs] files read as tables (io.read_table) rather than images
TABLE_SUFFIXES = (".parquet", ".csv")
_VERSION_PACKAGES = (
    "numpy",
    "scipy",
    "pandas",
    "pyarrow",
    "numba",
    "dask",
    "distributed",
    "scikit-image",
    "ase",
    "matplotlib",
    "plotly",
    "jinja2",
    "rosettasciio",
    "zarr",
    "mrcfile",
    "trackpy",
    "laptrack",
    "abtem",
    "astra-toolbox",
)


@dataclass
class StepResult:
    """Outcome of one step: ``status`` in ran / cached / unavailable / skipped / failed."""

    id: str
    step: str
    status: str
    key: str = ""
    wall_s: float = 0.0
    message: str = ""
    outputs: list[str] = field(default_factory=list)
    report_items: list[dict[str, Any]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    section: str = ""
    doc: str = ""
    note: str = ""
    warnings: list[str] = field(default_factory=list)


@dataclass
class RunResult:
    """What :func:`run_pipeline` returns."""

    run_dir: Path
    steps: list[StepResult]
    report: Path | None
    scheduler: str
    wall_s: float

    def status(self, step_id: str) -> str:
        return next(s.status for s in self.steps if s.id == step_id)

    @property
    def tables(self) -> list[Path]:
        return sorted((self.run_dir / "tables").glob("*.parquet"))


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _versions() -> dict[str, str]:
    from importlib import metadata

    import perovstem

    out = {"python": sys.version.split()[0], "perovstem": perovstem.__version__}
    for name in _VERSION_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _step_seed(run_seed: int, step_id: str) -> int:
    import numpy as np

    ss = np.random.SeedSequence([int(run_seed), zlib.crc32(step_id.encode())])
    return int(ss.generate_state(1, dtype=np.uint64)[0])


def _prepare_run_dir(out: Path, config: Config) -> None:
    from perovstem.io.runstore import dir_is_empty, read_json, write_json

    marker = out / RUN_MARKER
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output folder {str(out)!r} is a file")
    if not dir_is_empty(out):
        if not marker.is_file():
            raise OutputExistsError(
                f"output folder {str(out)!r} is not empty and holds no perovstem run; "
                "choose another --out"
            )
        info = read_json(marker)
        if info.get("name") != config.name:
            raise OutputExistsError(
                f"output folder {str(out)!r} holds another run ({info.get('name')!r}, not "
                f"{config.name!r}); it is never overwritten: choose another --out"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json(marker, {"name": config.name, "created_utc": _now(), "format": 1})


class _Artefacts:
    """Artefact values by reference, loaded from the cache on first use."""

    def __init__(self, config: Config, run_dir: Path) -> None:
        self.config = config
        self.run_dir = run_dir
        self.values: dict[str, Any] = {}
        self.keys: dict[str, str] = {}
        self.where: dict[str, tuple[Path, str]] = {}
        self.input_info: dict[str, dict[str, Any]] = {}

    def get(self, ref: str) -> Any:
        if ref in self.values:
            return self.values[ref]
        if ref in self.config.inputs:
            value = self._load_input(ref)
        else:
            from perovstem.io.runstore import read_artefact

            folder, name = self.where[ref]
            value = read_artefact(folder, name)
        self.values[ref] = value
        return value

    def _load_input(self, ref: str) -> Any:
        """Read an [inputs] file; its warnings are re-raised (the step that first uses it
        records them) and kept with the input's provenance."""
        from perovstem._data import TiltSeries
        from perovstem.errors import CalibrationError
        from perovstem.io import load
        from perovstem.io.read import radian_angles_note

        spec = self.config.inputs[ref]
        where = f"[inputs] {ref}" + (f" (line {spec.line})" if spec.line else "")
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            try:
                if spec.path.suffix.lower() in TABLE_SUFFIXES and not spec.options:
                    # a table (start positions, a fit of an earlier run, StatSTEM coordinates)
                    from perovstem.io import read_table

                    value = read_table(spec.path)
                else:
                    opts = {k: v for k, v in spec.options.items() if k in LOAD_OPTIONS}
                    value = load(spec.path, **opts)
                    value = _series_settings(value, spec, where)
                    if isinstance(value, TiltSeries):  # (said by the tomo commands too)
                        note = radian_angles_note(value.angles_deg, where)
                        if note:
                            warnings.warn(note, UserWarning, stacklevel=2)
            except CalibrationError as exc:
                if "pixel_size" in spec.options:
                    raise
                raise CalibrationError(
                    f"{exc}; in the analysis file: {where}: "
                    f'{ref} = {{ path = "{spec.path.name}", pixel_size = <Å> }}'
                ) from exc
            given = spec.options.get("pixel_size")
            if given is not None:
                pick = {k: v for k, v in spec.options.items() if k in ("kind", "signal")}
                _check_pixel_size_override(spec.path, float(given), where, **pick)
        self.input_info[ref] = _describe(value)
        texts = _warning_texts(rec)
        if texts:
            self.input_info[ref]["warnings"] = texts
        for w in rec:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return value


def _series_settings(value: Any, spec: Any, where: str) -> Any:
    """The [inputs] series settings (dose, frame time, holder log, temperature, ...)
    given to the series by :func:`perovstem.insitu.prepare_series`; its notes become
    warnings of the input (kept with its provenance)."""
    from perovstem._data import Image, Series
    from perovstem.errors import DataError
    from perovstem.pipeline.config import IMAGE_SETTINGS

    given = {k: v for k, v in spec.options.items() if k in SERIES_OPTIONS}
    if not given:
        return value
    if isinstance(value, Image) and set(given) <= IMAGE_SETTINGS:
        from perovstem.insitu.prepare import prepare_image

        value, notes = prepare_image(
            value, **given, what=repr(str(spec.path)), names={k: f"`{k}`" for k in given}
        )
        for note in notes:
            warnings.warn(f"{where}: {note}", UserWarning, stacklevel=2)
        return value
    if not isinstance(value, Series):
        extra = sorted(set(given) - IMAGE_SETTINGS) if isinstance(value, Image) else list(given)
        raise DataError(
            f"{where}: {', '.join(extra)} set an in-situ series; {str(spec.path)!r} holds "
            f"one {type(value).__name__.lower()}"
        )
    from perovstem.insitu.prepare import prepare_series

    if "conditions" in given:
        given["conditions"] = spec.conditions_path
    value, notes = prepare_series(
        value, **given, what=repr(str(spec.path)), names={k: f"`{k}`" for k in SERIES_OPTIONS}
    )
    for note in notes:
        warnings.warn(f"{where}: {note}", UserWarning, stacklevel=2)
    return value


def _check_pixel_size_override(path: Path, given_A: float, where: str, **load_kw: Any) -> None:
    """Warn when ``pixel_size`` in [inputs] replaces a file calibration that disagrees.

    The usual cause is a value in nm (or pm) written where Å is expected: every length,
    area and dose per Å² downstream is then off by a power of 10 without any error."""
    from perovstem.io import load

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            file_A = float(load(path, lazy=True, **load_kw).pixel_size_A)
    except Exception:  # no calibration in the file (that is why it was given), or unreadable
        return
    ratio = given_A / file_A
    if abs(ratio - 1.0) <= 0.02:
        return
    hint = ""
    for factor, unit in ((0.1, "nm"), (100.0, "pm")):
        if abs(ratio / factor - 1.0) <= 0.05:
            hint = f" (×{ratio:.3g}: a value in {unit}? pixel_size is in Å)"
    warnings.warn(
        f"{where}: pixel_size = {given_A:.6g} Å replaces the file's calibration "
        f"{file_A:.6g} Å{hint}; every length, area and dose per Å² follows it",
        UserWarning,
        stacklevel=2,
    )


def _describe(obj: Any, max_items: int = 24) -> dict[str, Any]:
    """Short, JSON-safe description of a loaded input (kind, shape, calibration, metadata)."""
    info: dict[str, Any] = {"kind": type(obj).__name__}
    for attr in ("shape", "pixel_size_A", "dose_e_per_A2", "n_frames", "n_angles"):
        v = getattr(obj, attr, None)
        if v is None or callable(v):
            continue
        try:
            import numpy as np

            a = np.asarray(v)
            info[attr] = a.tolist() if a.size <= 8 else f"{a.size} values"
        except Exception:  # pragma: no cover - exotic attribute
            info[attr] = repr(v)[:80]
    info.update(_acquisition(obj))
    md = getattr(obj, "metadata", None)
    if isinstance(md, dict):
        flat: dict[str, str] = {}

        def walk(d: dict, prefix: str) -> None:
            # the scalars of a level before its nested tables: a simulator's 20 kmc_params.*
            # entries crowded out everything after them
            for k, v in d.items():
                if len(flat) < max_items and (isinstance(v, str | int | float | bool) or v is None):
                    flat[f"{prefix}{k}"] = str(v)[:200]
            for k, v in d.items():
                if len(flat) < max_items and isinstance(v, dict):
                    walk(v, f"{prefix}{k}.")

        walk(md, "")
        info["metadata"] = flat
    return info


def _acquisition(obj: Any) -> dict[str, str]:
    """The conditions of a loaded input a reader of the report looks for first (beam
    energy, temperature, gas, pressure, frame times, dose, tilt range), as text."""
    import numpy as np

    from perovstem._data import Image, Series, TiltSeries, voltage_kV_of

    out: dict[str, str] = {}
    if not isinstance(obj, Image | Series | TiltSeries):  # (a table has such columns)
        return out
    kv = voltage_kV_of(getattr(obj, "metadata", None))
    if kv is not None:
        out["beam energy"] = f"{kv:g} kV"

    def span(v: Any, unit: str) -> str | None:
        try:
            a = np.asarray(v, float).ravel()
        except (TypeError, ValueError):
            return None
        a = a[np.isfinite(a)]
        if not a.size:
            return None
        lo, hi = float(a.min()), float(a.max())
        return f"{lo:.4g} {unit}" if np.isclose(lo, hi) else f"{lo:.4g} … {hi:.4g} {unit}"

    for attr, label, unit in (
        ("temperature_K", "temperature", "K"),
        ("pressure_Pa", "pressure", "Pa"),
        ("time_s", "time", "s"),
        ("angles_deg", "tilt angles", "°"),
    ):
        v = getattr(obj, attr, None)
        text = None if v is None or callable(v) else span(v, unit)
        if text:
            out[label] = text
    if getattr(obj, "gas", None):
        out["gas"] = str(obj.gas)
    if hasattr(obj, "cumulative_dose_e_per_A2") and getattr(obj, "dose_e_per_A2", None) is not None:
        out["cumulative dose"] = f"{float(obj.cumulative_dose_e_per_A2[-1]):.4g} e⁻/Å²"
    return out


def _publish(value: Any, run_dir: Path, ref: str, attrs: dict[str, Any]) -> list[str]:
    """Write the public copy of an output (tables, volumes, arrays); return relative paths."""
    import numpy as np
    import pandas as pd

    from perovstem.io.runstore import remove_tree, write_bytes, write_table

    written: list[str] = []
    if isinstance(value, pd.DataFrame):
        rel = Path("tables") / f"{ref}.parquet"
        df = value.copy(deep=False)
        df.attrs = {**dict(value.attrs), "perovstem_artefact": ref, **attrs}
        write_table(df, run_dir / rel)
        written.append(str(rel))
    elif (
        isinstance(value, dict)
        and value
        and all(isinstance(v, pd.DataFrame) for v in value.values())
    ):
        for k, v in value.items():
            written += _publish(v, run_dir, f"{ref}.{k}", attrs)
    elif isinstance(value, np.ndarray) and value.dtype.kind in "biuf" and value.ndim == 3:
        rel = Path("volumes") / f"{ref}.mrc"
        try:
            from perovstem.io import save_volume

            remove_tree(run_dir / rel)
            save_volume(value, run_dir / rel, voxel_size_A=float(attrs.get("voxel_size_A", 1.0)))
            written.append(str(rel))
        except (ImportError, PerovstemError, TypeError):
            rel = Path("arrays") / f"{ref}.npy"
            buf = __import__("io").BytesIO()
            np.save(buf, value, allow_pickle=False)
            write_bytes(run_dir / rel, buf.getvalue())
            written.append(str(rel))
    elif isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        rel = Path("arrays") / f"{ref}.npy"
        buf = __import__("io").BytesIO()
        np.save(buf, value, allow_pickle=False)
        write_bytes(run_dir / rel, buf.getvalue())
        written.append(str(rel))
    return written


_PUBLIC = ("tables", "volumes", "arrays", "plots")
_PUBLIC_SUFFIXES = (".parquet", ".mrc", ".npy", ".png", ".json")


def _prune_public(run_dir: Path, results: list[StepResult]) -> None:
    """Remove public files that this run's steps did not produce.

    A rerun into the same folder with a step removed, re-parametrised to make no figure, or
    failed/skipped after a changed input left the earlier run's table next to the new ones,
    not in provenance.json and possibly computed from another input file.  Kept: every
    output of a ran or cached step and every file a report item of this run refers to."""
    keep: set[str] = set()
    for r in results:
        if r.status in ("ran", "cached"):
            keep.update(Path(p).as_posix() for p in r.outputs)
        keep.update(Path(it["path"]).as_posix() for it in r.report_items if it.get("path"))
    for folder in _PUBLIC:
        root = run_dir / folder
        if not root.is_dir():
            continue
        for f in root.iterdir():
            rel = f"{folder}/{f.name}"
            if f.is_file() and f.suffix in _PUBLIC_SUFFIXES and rel not in keep:
                f.unlink()


def run_pipeline(
    config: Config | str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    scheduler: Any = None,
    n_workers: int | None = None,
    processes: bool = True,
    quiet: bool = False,
    report: bool | None = None,
) -> RunResult:
    """Run an analysis (a :class:`Config` or a TOML path) into a run folder.

    Parameters
    ----------
    config : Config or path
        The validated configuration or its TOML file.
    out : path, optional
        Run folder (default: ``<name>-run`` next to the TOML file, or in the working
        directory).  A folder holding another run, or unrelated files, is refused.
    scheduler : str or distributed.Client, optional
        Overrides ``[run] scheduler``: ``"serial"``, ``"auto"``, ``"local"``, ``"local:N"``,
        a scheduler address, or a Client (used as is, never closed).
    n_workers : int, optional
        LocalCluster workers (overrides ``[run] workers``).
    processes : bool
        LocalCluster workers are processes (True) or threads.
    quiet : bool
        No progress bars or messages.
    report : bool, optional
        Write ``report.html`` (default ``[run] report``, true).

    Returns
    -------
    RunResult
        Run folder, per-step results, report path.

    Raises
    ------
    PerovstemError
        Bad configuration (before any work), occupied output folder, or the error of a failed
        step when ``on_error = "stop"``.
    """
    t_start = time.perf_counter()
    if not isinstance(config, Config):
        config = load_config(config)
    if out is None:
        base = config.source.resolve().parent if config.source else Path.cwd()
        out = base / f"{config.name}-run"
    run_dir = Path(out)
    sched = scheduler if scheduler is not None else config.scheduler
    executor = Executor(sched, n_workers=n_workers or config.workers, processes=processes)
    if executor.kind == "address":
        executor.client()  # a scheduler that cannot be reached is said before any step runs
    from perovstem.io.runstore import acquire_lock, release_lock

    try:
        _prepare_run_dir(run_dir, config)
        lock = acquire_lock(run_dir)
    except BaseException:
        executor.close()  # (the client connected above)
        raise
    try:
        return _run_locked(config, run_dir, executor, quiet, report, t_start)
    finally:
        release_lock(lock)
        executor.close()


def _run_locked(
    config: Config,
    run_dir: Path,
    executor: Executor,
    quiet: bool,
    report: bool | None,
    t_start: float,
) -> RunResult:

    from perovstem.io.runstore import (
        read_json,
        remove_tree,
        sha256_file,
        write_artefact,
        write_json,
        write_text,
    )

    started = _now()
    # until provenance.json is written again, the folder mixes this run's outputs with the
    # earlier run's: a report made meanwhile (a killed run) says so
    _mark_in_progress(run_dir, started)
    write_text(run_dir / "config.toml", config.text or "# configuration given from Python\n")
    arte = _Artefacts(config, run_dir)
    inputs_prov = {}
    from perovstem.io.read import side_files

    for name, spec in config.inputs.items():
        digest = sha256_file(spec.path, exclude=run_dir)
        key = {"sha256": digest, "options": spec.options}
        if spec.conditions_path is not None:  # the holder log's content, not its name only
            key["conditions_sha256"] = sha256_file(spec.conditions_path)
        # the side files the reader takes (tilt angles, SerialEM .mdoc, a table's attrs): an
        # edited .rawtlt left the old tomogram cached
        sides = {str(f): sha256_file(f) for f in side_files(spec.path)}
        if sides:
            key["side_files_sha256"] = sides
        arte.keys[name] = _hash(key)
        inputs_prov[name] = {
            "path": str(spec.path),
            "sha256": digest,
            "size_bytes": spec.path.stat().st_size if spec.path.is_file() else None,
            "options": spec.options,
            **({"side_files_sha256": sides} if sides else {}),
        }

    progress = None
    if not quiet:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(stderr=True)
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        progress.start()
        overall = progress.add_task(f"{config.name}", total=len(config.steps))

    def log(msg: str) -> None:
        if progress is not None:
            progress.console.print(msg, highlight=False)

    results: list[StepResult] = []
    unavailable: dict[str, str] = {}  # artefact ref -> reason it does not exist
    try:
        for spec in config.steps:
            if progress is not None:
                progress.update(overall, description=f"{config.name}: {spec.id} ({spec.step.name})")
            res = _run_one(
                spec,
                config,
                run_dir,
                arte,
                executor,
                progress,
                unavailable,
                write_artefact,
                read_json,
                write_json,
                remove_tree,
            )
            results.append(res)
            symbol = {"ran": "[green]✓[/]", "cached": "[cyan]↷[/]", "failed": "[red]✗[/]"}.get(
                res.status, "[yellow]–[/]"
            )
            extra = f" ({res.wall_s:.1f} s)" if res.status == "ran" else ""
            # escaped: "[inputs] series ..." is text, not console markup (it vanished)
            msg = f": {_escape_markup(res.message)}" if res.message else ""
            if res.warnings:  # shown in full when raised; a cached step only counts them
                n_w = len(res.warnings)
                msg += f" [yellow]{n_w} warning{'s' if n_w > 1 else ''} (in the report)[/]"
            log(f"{symbol} {spec.id} [dim]{spec.step.name}[/] {res.status}{extra}{msg}")
            if progress is not None:
                progress.advance(overall)
            if res.status == "failed" and config.on_error == "stop":
                raise _StepFailed(res)
    except _StepFailed as exc:
        _write_provenance(
            run_dir, config, results, inputs_prov, arte.input_info, started, executor, t_start
        )
        _prune_public(run_dir, results)
        executor.close()
        if progress is not None:
            progress.stop()
        if config.report if report is None else report:
            # the report of the failed run (its failed step and the tables still held):
            # the earlier run's report was left beside the new tables
            from perovstem.report import write_report

            with contextlib.suppress(Exception):  # the step's error is the one to give
                write_report(run_dir, title=config.title)
        err = exc.result.error
        if isinstance(err, PerovstemError):
            raise type(err)(f"step `{exc.result.id}` ({exc.result.step}): {err}") from err
        raise err from None
    finally:
        if progress is not None:
            progress.stop()
    sched_desc = executor.describe() if executor.used_cluster else "serial"
    executor.close()
    _write_provenance(
        run_dir,
        config,
        results,
        inputs_prov,
        arte.input_info,
        started,
        executor,
        t_start,
        sched_desc=sched_desc,
    )
    _prune_public(run_dir, results)
    report_path = None
    if config.report if report is None else report:
        from perovstem.report import write_report

        report_path = write_report(run_dir, title=config.title)
    elif (run_dir / "report.html").is_file() and not quiet:
        # (left as it was, it showed the earlier run's numbers beside the new tables)
        from rich.console import Console

        Console(stderr=True).print(
            "note: report.html is from an earlier run of this folder; `perovstem report "
            f"{_escape_markup(str(run_dir))}` writes this run's",
            highlight=False,
        )
    return RunResult(
        run_dir=run_dir,
        steps=results,
        report=report_path,
        scheduler=sched_desc,
        wall_s=time.perf_counter() - t_start,
    )


class _StepFailed(Exception):
    def __init__(self, result: StepResult) -> None:
        super().__init__(result.message)
        self.result = result


def _run_one(
    spec: StepSpec,
    config: Config,
    run_dir: Path,
    arte: _Artefacts,
    executor: Executor,
    progress: Any,
    unavailable: dict[str, str],
    write_artefact: Any,
    read_json: Any,
    write_json: Any,
    remove_tree: Any,
) -> StepResult:
    step = spec.step
    base = dict(
        id=spec.id,
        step=step.name,
        params=spec.params,
        section=step.section,
        doc=step.doc,
        note=spec.note,
    )
    missing = step.missing_requirements()
    if missing:
        for o in spec.outputs:
            unavailable[o] = f"step `{spec.id}` is not available in this version"
        return StepResult(
            **base,
            status="unavailable",
            message=f"not available in this version (needs {', '.join(missing)})",
        )
    for name, ref in spec.wiring.items():
        gone = [r for r in _refs(ref) if r in unavailable]  # any item of a list input
        if gone and name not in step.optional_inputs:
            for o in spec.outputs:
                unavailable[o] = f"input of `{spec.id}` missing"
            return StepResult(
                **base, status="skipped", message=f"input `{name}` missing: {unavailable[gone[0]]}"
            )
    wiring = {
        k: (None if (v is None or any(r in unavailable for r in _refs(v))) else v)
        for k, v in spec.wiring.items()
    }
    seed = _step_seed(config.seed, spec.id)
    key = _hash(
        {
            "step": step.name,
            "version": step.version,
            "params": spec.params,
            "seed": seed,
            "inputs": {
                k: (
                    None
                    if v is None
                    else [arte.keys[r] for r in v]
                    if isinstance(v, list)
                    else arte.keys[v]
                )
                for k, v in wiring.items()
            },
            "perovstem": _versions()["perovstem"],
            # a plugin's code (its module file): editing it re-runs the step
            **({"code_sha256": code} if (code := step.code_digest()) else {}),
        }
    )
    cache = run_dir / ".cache" / spec.id
    done = cache / "done.json"
    if done.is_file():
        try:
            info = read_json(done)
        except PerovstemError:
            info = {}
        # a public file pruned by a run without this step (or deleted by hand): run again
        intact = all((run_dir / f).is_file() for f in info.get("outputs", []))
        # so must the cached values be (a deleted one failed every later run: "missing")
        from perovstem.io.runstore import artefact_files

        intact = intact and all(artefact_files(cache, o) for o in step.outputs)
        if info.get("key") == key and intact:
            for o in step.outputs:
                ref = f"{spec.id}.{o}"
                arte.where[ref] = (cache, o)
                arte.keys[ref] = _hash({"step": key, "output": o})
            return StepResult(
                **base,
                status="cached",
                key=key,
                wall_s=info.get("wall_s", 0.0),
                outputs=info.get("outputs", []),
                report_items=info.get("report_items", []),
                warnings=info.get("warnings", []),
            )
        remove_tree(done)  # stale: never trust old outputs again, even if killed now
    ctx = StepContext(
        spec.id,
        spec.params,
        seed,
        run_dir=run_dir,
        section=step.section,
        executor=executor,
        progress=progress,
        inputs=wiring,
    )
    t0 = time.perf_counter()
    caught: list[warnings.WarningMessage] = []
    try:
        with _recorded_warnings(caught):  # also the warnings of reading an input file
            kwargs = {
                name: (
                    None
                    if ref is None
                    else [arte.get(r) for r in ref]
                    if isinstance(ref, list)
                    else arte.get(ref)
                )
                for name, ref in wiring.items()
            }
            _check_input_kinds(step, wiring, kwargs, arte, ctx.params)
            produced = step.func(ctx, **kwargs)
        if not isinstance(produced, dict):
            raise TypeError(f"step `{step.name}` returned {type(produced).__name__}, not a dict")
        missing_out = [o for o in step.outputs if o not in produced]
        if missing_out:
            raise TypeError(f"step `{step.name}` did not return outputs {missing_out}")
        _check_output_kinds(step, produced)
    except Exception as exc:
        for o in spec.outputs:
            unavailable[o] = f"step `{spec.id}` failed"
        msg = f"{type(exc).__name__}: {exc}" + _input_kind_hint(str(exc), wiring, arte)
        res = StepResult(
            **base,
            status="failed",
            key=key,
            wall_s=time.perf_counter() - t0,
            message=msg,
            report_items=ctx.report_items,
            warnings=_warning_texts(caught),
        )
        res.error = exc  # type: ignore[attr-defined]
        res.traceback = traceback.format_exc()  # type: ignore[attr-defined]
        return res
    files = list(ctx.files)
    attrs = {"perovstem_step": step.name, "perovstem_params": json.dumps(spec.params, default=str)}
    for o in step.outputs:
        ref = f"{spec.id}.{o}"
        value = produced[o]
        write_artefact(value, cache, o)
        arte.values[ref] = value
        arte.where[ref] = (cache, o)
        arte.keys[ref] = _hash({"step": key, "output": o})
        files += _publish(value, run_dir, ref, attrs)
    wall = time.perf_counter() - t0
    texts = _warning_texts(caught)
    write_json(
        done,
        {
            "key": key,
            "step": step.name,
            "id": spec.id,
            "params": spec.params,
            "seed": seed,
            "finished_utc": _now(),
            "wall_s": wall,
            "outputs": files,
            "report_items": ctx.report_items,
            "warnings": texts,
        },
    )
    return StepResult(
        **base,
        status="ran",
        key=key,
        wall_s=wall,
        outputs=files,
        report_items=ctx.report_items,
        warnings=texts,
    )


def _check_input_kinds(
    step: Any,
    wiring: dict[str, Any],
    kwargs: dict[str, Any],
    arte: _Artefacts,
    params: dict[str, Any] | None = None,
) -> None:
    """Refuse an input that is not of the kind the step declares (before the step runs).

    The configuration wires steps by name, untyped: a step given the simulator's truth
    table instead of a column fit failed with ``KeyError: 'scs'``, one given an image
    instead of a series with ``AttributeError: 'Image' object has no attribute
    'n_frames'``; the message now names the input, what it is wired to and what it needs.
    """
    from perovstem.errors import ParameterError
    from perovstem.pipeline.registry import describe_value

    for name, kind in step.input_kinds.items():
        value, ref = kwargs.get(name), wiring.get(name)
        if value is None or ref is None:
            continue
        pairs = list(zip(ref, value, strict=False)) if isinstance(ref, list) else [(ref, value)]
        for r, v in pairs:
            why = kind.problem(v, params)
            if why is None:
                continue
            origin = f"[inputs] {r}" if r in arte.config.inputs else f"`{r}`"
            raise ParameterError(
                f"input `{name}` is wired to {origin}, {describe_value(v)} ({why}); "
                f"`{name}` must be {kind.expected_with(params)}: wire it with "
                f'inputs = {{ {name} = "<step id>.<output>" }}'
            )


def _check_output_kinds(step: Any, produced: dict[str, Any]) -> None:
    """Hold a step to its declared :attr:`~perovstem.pipeline.registry.Step.output_kinds`.

    Configurations are checked against the declarations before anything runs; a step whose
    output differs from what it declares is a bug in the step (not in the configuration),
    caught here rather than in a later step.
    """
    from perovstem.pipeline.registry import describe_value

    for name, kind in step.output_kinds.items():
        value = produced[name]
        why = kind.problem(value)
        if why is None and kind.kind == "table" and kind.may_have is not None:
            known = (*kind.columns, *kind.may_have)
            extra = [str(c) for c in value.columns if c not in known]
            why = f"with undeclared column(s) {', '.join(extra)}" if extra else None
        if why is not None:
            raise TypeError(
                f"step `{step.name}` declares output `{name}` as {kind.describe()} but returned "
                f"{describe_value(value)} ({why}): a bug in the step's output_kinds"
            )


def _escape_markup(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _refs(ref: str | list[str] | None) -> list[str]:
    """The artefact references of one wired input (a list input has several)."""
    return [] if ref is None else list(ref) if isinstance(ref, list) else [ref]


def _input_kind_hint(
    message: str, wiring: dict[str, str | list[str] | None], arte: _Artefacts
) -> str:
    """Say what an input file was read as when a step refuses its kind.

    "`tilt_series` must be a TiltSeries, got Series" names neither the [inputs] entry nor
    how to read a stack otherwise (the `kind` option)."""
    hints = []
    for name, ref in ((n, r) for n, v in wiring.items() for r in _refs(v)):
        info = arte.input_info.get(ref)
        if info is None or not re.search(rf"\b{info['kind']}\b", message):
            continue
        spec = arte.config.inputs[ref]
        shape = "×".join(str(n) for n in info.get("shape", []))
        hints.append(
            f"input `{name}` is [inputs] {ref} = {spec.path.name!r}, read as a {info['kind']}"
            f"{f' ({shape})' if shape else ''}"
        )
    if not hints:
        return ""
    return (
        " (" + "; ".join(hints) + '; the [inputs] option kind = "image" | "series" | "tilt" '
        "chooses how a 3-D stack is read, or wire the step to another input)"
    )


@contextlib.contextmanager
def _recorded_warnings(caught: list[warnings.WarningMessage]):
    """Record every warning a step raises (for provenance and the report), then show each once.

    A step's warnings (an unknown detector gain, a lattice that disagrees with the cell's,
    ...) qualify its numbers, so they travel with the run instead of scrolling past on a
    terminal.  Those of dask worker processes come back through the executor's ``map``.
    """
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            caught.extend(rec)
    seen: set[tuple[type, str]] = set()
    for w in caught:  # shown as usual (the caller's filters apply), each text once
        key = (w.category, str(w.message))
        if key not in seen:
            seen.add(key)
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _warning_texts(caught: list[warnings.WarningMessage], limit: int = 20) -> list[str]:
    """Distinct warning texts in order, ``Category: message``, at most ``limit``.

    Texts that differ only in their numbers (the same warning raised once per frame with
    that frame's estimate) are kept once, with how many times and how many frames' values
    were folded into it: a 200-frame series otherwise filled the step's line with 20
    near-copies and hid any other warning behind "... and 180 more"."""
    groups: dict[str, list[str]] = {}
    for w in caught:
        text = f"{w.category.__name__}: {w.message}"
        shape = re.sub(r"[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?", "#", text)
        seen = groups.setdefault(shape, [])
        if text not in seen:
            seen.append(text)
    out = [
        t[0] if len(t) == 1 else f"{t[0]} [and {len(t) - 1} more like it with other values]"
        for t in groups.values()
    ]
    if len(out) > limit:
        out = out[:limit] + [f"... and {len(out) - limit} more warnings"]
    return out


def _mark_in_progress(run_dir: Path, started: str | None) -> None:
    """Record in the run marker that a run started at ``started`` (None: it finished)."""
    from perovstem.io.runstore import read_json, write_json

    marker = run_dir / RUN_MARKER
    info = read_json(marker) if marker.is_file() else {}
    if started is None:
        info.pop("in_progress_since_utc", None)
    else:
        info["in_progress_since_utc"] = started
    write_json(marker, info)


def _write_provenance(
    run_dir: Path,
    config: Config,
    results: list[StepResult],
    inputs_prov: dict[str, Any],
    input_info: dict[str, Any],
    started: str,
    executor: Executor,
    t_start: float,
    sched_desc: str | None = None,
) -> None:
    from perovstem.io.runstore import read_json, write_json

    # an input not read in this run (every step using it cached) keeps the record of how it
    # was read from the run that read it, where the file and its options are the same
    # (a fully cached rerun dropped the report's "Input … as read" table)
    input_info = dict(input_info)
    old_path = run_dir / "provenance.json"
    if old_path.is_file() and set(inputs_prov) - set(input_info):
        try:
            old = read_json(old_path).get("inputs", {})
        except PerovstemError:
            old = {}
        for k in set(inputs_prov) - set(input_info):
            o = old.get(k) or {}
            same = all(o.get(f) == inputs_prov[k].get(f) for f in ("sha256", "options"))
            if same and o.get("loaded") is not None:
                input_info[k] = o["loaded"]
    steps = []
    for r in results:
        d = {
            "id": r.id,
            "step": r.step,
            "status": r.status,
            "params": r.params,
            "key": r.key,
            "wall_s": round(r.wall_s, 3),
            "outputs": r.outputs,
            "message": r.message,
            "section": r.section,
            "doc": r.doc,
            "note": r.note,
        }
        tb = getattr(r, "traceback", None)
        if tb:
            d["traceback"] = tb
        d["report_items"] = r.report_items
        d["warnings"] = r.warnings
        steps.append(d)
    write_json(
        run_dir / "provenance.json",
        {
            "run": config.name,
            "title": config.title,
            "config_file": str(config.source) if config.source else None,
            "config_sha256": hashlib.sha256(config.text.encode()).hexdigest(),
            "config_warnings": list(config.warnings),
            "seed": config.seed,
            "scheduler": sched_desc or executor.describe(),
            "started_utc": started,
            "finished_utc": _now(),
            "wall_s": round(time.perf_counter() - t_start, 3),
            "machine": {
                "platform": platform.platform(),
                "cpu_count": os.cpu_count(),
                "processor": platform.processor(),
            },
            "versions": _versions(),
            "inputs": {
                k: {**v, **({"loaded": input_info[k]} if k in input_info else {})}
                for k, v in inputs_prov.items()
            },
            "steps": steps,
        },
    )
    _mark_in_progress(run_dir, None)  # the step log now describes the folder
