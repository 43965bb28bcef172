"""Read and validate a TOML analysis description.

Format (paths are relative to the TOML file)::

    [run]
    name = "dose-rate-study"     # identifies the run; default: the file name
    seed = 0                     # master seed; every step gets its own stream
    scheduler = "auto"           # serial | auto | local | local:N | tcp://host:8786
    on_error = "stop"            # stop | continue (failed step reported, run goes on)
    title = "CsPbBr3 NC, 300 kV" # report title
    plugins = ["mylab.steps"]    # extra modules registering steps (optional)

    [inputs]
    series = "insitu_0001.emd"                       # loaded with perovstem.io.load
    image = { path = "frame.dm4", pixel_size = 0.21 } # options passed to load()

    [[step]]
    run = "insitu.detect"        # registered step (``perovstem run --list-steps``)
    id = "detect"                # optional; outputs are named "<id>.<output>"
    inputs = { series = "series" }  # optional explicit wiring (else by name)
    threshold = 3.0              # step parameters, checked against the step's schema

Everything is validated before any work starts; errors name the file, the line and the key.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import os
import re
import sys
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from perovstem._limits import MAX_TEMPERATURE_K
from perovstem.errors import FileFormatError, ParameterError
from perovstem.pipeline.registry import Step, Upstream, get_step

__all__ = ["InputSpec", "StepSpec", "Config", "load_config", "parse_config", "to_toml"]

_RUN_KEYS = {"name", "seed", "scheduler", "on_error", "title", "plugins", "workers", "report"}
_STEP_RESERVED = {"run", "id", "inputs", "enabled", "note"}


@dataclass(frozen=True)
class InputSpec:
    """A file input: artefact ``name`` loaded from ``path`` with ``options``."""

    name: str
    path: Path
    options: dict[str, Any] = field(default_factory=dict)
    line: int | None = None
    conditions_path: Path | None = None  # the `conditions` log, resolved


@dataclass(frozen=True)
class StepSpec:
    """One configured step: which registered step, its id, parameters and input wiring.

    ``wiring`` maps each step input to an artefact reference: ``"<step id>.<output>"`` or
    the name of a file input; a list input (:attr:`Step.list_inputs`) maps to a list of
    references.  Missing optional inputs map to ``None``.
    """

    id: str
    step: Step
    params: dict[str, Any]
    wiring: dict[str, str | list[str] | None]
    index: int
    line: int | None = None
    note: str = ""

    @property
    def outputs(self) -> list[str]:
        return [f"{self.id}.{o}" for o in self.step.outputs]


@dataclass(frozen=True)
class Config:
    """A validated analysis description."""

    name: str
    steps: list[StepSpec]
    inputs: dict[str, InputSpec] = field(default_factory=dict)
    seed: int = 0
    scheduler: str = "auto"
    workers: int | None = None
    on_error: str = "stop"
    title: str = "perovstem analysis"
    report: bool = True
    plugins: tuple[str, ...] = ()
    source: Path | None = None
    text: str = ""
    #: warnings about the configuration itself (an unused [inputs] entry), as texts: printed
    #: when it is read, and kept in provenance.json and the report
    warnings: tuple[str, ...] = ()

    def step(self, step_id: str) -> StepSpec:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise ParameterError(f"no step with id `{step_id}` in the configuration")


class _Lines:
    """Line numbers of keys in a TOML text (tomllib does not report them)."""

    _header = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\]?\s*(#.*)?$")
    _key = re.compile(r"^\s*([A-Za-z0-9_\-]+|\"[^\"]*\")\s*=")

    def __init__(self, text: str) -> None:
        self.map: dict[tuple[str, int, str | None], int] = {}
        table, idx = "", 0
        counts: dict[str, int] = {}
        for n, line in enumerate(text.splitlines(), start=1):
            m = self._header.match(line)
            if m:
                table = m.group(2).strip().strip("\"'")
                if m.group(1) == "[[":
                    counts[table] = counts.get(table, 0) + 1
                    idx = counts[table] - 1
                else:
                    idx = 0
                self.map.setdefault((table, idx, None), n)
                continue
            k = self._key.match(line)
            if k:
                self.map.setdefault((table, idx, k.group(1).strip('"')), n)

    def get(self, table: str, key: str | None = None, index: int = 0) -> int | None:
        return self.map.get((table, index, key)) or self.map.get((table, index, None))


def _import_plugin(mod: str, base_dir: Path) -> None:
    """Import a plugin module; one beside the configuration file (``mylab_steps.py`` next to
    the TOML, as the README's example has it) is found without PYTHONPATH (it was "No
    module named 'mylab_steps'").  Its folder then stays on the module path, also of dask
    workers started later (through PYTHONPATH), which import the plugin's functions."""
    try:
        _import_current(mod)
        return
    except ModuleNotFoundError as exc:
        top = mod.split(".")[0]
        here = Path(base_dir).resolve()
        beside = (here / f"{top}.py").is_file() or (here / top / "__init__.py").is_file()
        if exc.name != top or not beside:
            raise
    sys.path.insert(0, str(here))
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join([str(here), *paths])
    _import_current(mod)


# source digest of each plugin module when it was (re)imported
_PLUGIN_SOURCES: dict[str, str] = {}


def _import_current(mod: str) -> None:
    """Import ``mod``, or re-import it where its source file changed since it was imported
    in this process (a plugin edited between two runs of one session: its old functions
    ran under the cache key of the new code)."""

    def digest(m: Any) -> str | None:
        f = getattr(m, "__file__", None)
        return hashlib.sha256(Path(f).read_bytes()).hexdigest() if f and Path(f).is_file() else None

    old = sys.modules.get(mod)
    if old is not None and mod in _PLUGIN_SOURCES and digest(old) != _PLUGIN_SOURCES[mod]:
        # its bytecode cache goes first: it is validated by the source's whole-second mtime
        # and size, so an edit within the second of the last import would be read stale
        Path(importlib.util.cache_from_source(old.__file__)).unlink(missing_ok=True)
        module = importlib.reload(old)
    else:
        module = importlib.import_module(mod)
    if (d := digest(module)) is not None:
        _PLUGIN_SOURCES[mod] = d


def _where(source: str, line: int | None, what: str) -> str:
    loc = f"{source}" + (f" line {line}" if line else "")
    return f"{loc}: {what}: "


def _check_run_value(key: str, value: Any, where: str) -> Any:
    def bad(expect: str) -> ParameterError:
        return ParameterError(f"{where}`[run] {key}` must be {expect}, got {value!r}")

    if key in ("name", "title"):
        if not isinstance(value, str) or not value.strip():
            raise bad("a non-empty string")
        if key == "name" and (any(c in value for c in "/\\\0") or value.strip() in (".", "..")):
            # the default run folder is "<name>-run": a "/" or ".." made nested folders or
            # one outside the configuration's folder
            raise bad("a name without '/', '\\' or '..' (it names the run folder)")
    elif key == "seed":
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise bad("an integer >= 0")
    elif key == "scheduler":
        if not isinstance(value, str) or not _valid_scheduler(value):
            raise bad("'serial', 'auto', 'local', 'local:N' or a 'tcp://host:port' address")
    elif key == "on_error":
        if value not in ("stop", "continue"):
            raise bad("'stop' or 'continue'")
    elif key == "workers":
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise bad("an integer >= 1")
    elif key == "report":
        if not isinstance(value, bool):
            raise bad("true or false")
    elif key == "plugins":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad("a list of module names")
    return value


def _valid_scheduler(value: str) -> bool:
    if value in ("serial", "auto", "local"):
        return True
    if re.fullmatch(r"local:[1-9][0-9]*", value):
        return True
    return bool(re.fullmatch(r"(tcp|tls|inproc|ucx)://\S+", value))


def parse_config(
    data: dict[str, Any],
    *,
    base_dir: str | Path = ".",
    source: str = "<config>",
    text: str = "",
    check_files: bool = True,
    allow_unavailable: bool | None = None,
) -> Config:
    """Validate a configuration mapping (as read from TOML) and build a :class:`Config`.

    Parameters
    ----------
    data : dict
        The parsed TOML document.
    base_dir : path
        Folder against which relative input paths are resolved.
    source : str
        File name used in error messages.
    text : str
        The raw TOML text (for line numbers in error messages).
    check_files : bool
        Check that input files exist.
    allow_unavailable : bool, optional
        Accept steps whose sub-package is missing in this version (they are reported as
        not available).  Default: only when ``on_error = "continue"``.

    Raises
    ------
    ParameterError
        Unknown section, key or step, wrong type, unresolved input wiring.
    FileFormatError
        An input file does not exist.
    """
    lines = _Lines(text)
    base_dir = Path(base_dir)
    if not isinstance(data, dict):
        raise ParameterError(f"{source}: the configuration must be a TOML table")
    for key in data:
        if key not in ("run", "inputs", "step"):
            line = lines.get(key)
            hint = " (steps are written as [[step]] tables)" if key == "steps" else ""
            raise ParameterError(
                f"{_where(source, line, 'top level')}unknown section `[{key}]`{hint}; "
                "expected [run], [inputs] and [[step]]"
            )
    run = data.get("run", {})
    if not isinstance(run, dict):
        raise ParameterError(f"{source}: `run` must be a table ([run])")
    for key, value in run.items():
        w = _where(source, lines.get("run", key), "[run]")
        if key not in _RUN_KEYS:
            raise ParameterError(
                f"{w}unknown key `{key}`; known keys: {', '.join(sorted(_RUN_KEYS))}"
            )
        _check_run_value(key, value, w)
    plugins = tuple(run.get("plugins", ()))
    for mod in plugins:
        try:
            _import_plugin(mod, base_dir)
        except ImportError as exc:
            raise ParameterError(
                f"{_where(source, lines.get('run', 'plugins'), '[run]')}cannot import plugin "
                f"module `{mod}`: {exc}"
            ) from None
        except Exception as exc:  # the plugin's own code failed (a bug, a missing setting)
            raise ParameterError(
                f"{_where(source, lines.get('run', 'plugins'), '[run]')}plugin module `{mod}` "
                f"failed while being imported{_where_raised(exc)}: {type(exc).__name__}: {exc}"
            ) from exc
    on_error = run.get("on_error", "stop")
    if allow_unavailable is None:
        allow_unavailable = on_error == "continue"

    # ---- inputs
    inputs: dict[str, InputSpec] = {}
    raw_inputs = data.get("inputs", {})
    if not isinstance(raw_inputs, dict):
        raise ParameterError(f"{source}: `inputs` must be a table ([inputs])")
    for name, spec in raw_inputs.items():
        line = lines.get("inputs", name)
        w = _where(source, line, f"[inputs] {name}")
        if isinstance(spec, str):
            path, options = spec, {}
        elif isinstance(spec, dict) and isinstance(spec.get("path"), str):
            options = {k: v for k, v in spec.items() if k != "path"}
            path = spec["path"]
            for k, v in options.items():
                _check_input_option(w, k, v)
        else:
            raise ParameterError(
                f'{w}must be a file path or a table {{ path = "...", pixel_size = ... }}, '
                f"got {spec!r}"
            )
        p = Path(path)
        if not p.is_absolute():
            p = base_dir / p
        from perovstem.pipeline.runner import TABLE_SUFFIXES

        if p.suffix.lower() in TABLE_SUFFIXES and options:
            # (with any option a table was read as an image, and refused as one)
            raise ParameterError(
                f"{w}a table file ({p.suffix}) is read as it is and takes no options, got "
                f"{', '.join(sorted(options))}"
            )
        if check_files and not p.exists():
            raise FileFormatError(f"{w}input file {str(p)!r} does not exist")
        log = _check_series_options(w, options, base_dir, check_files)
        if check_files:
            # a folder, an empty or an unreadable file passed `--check` and failed only when
            # the first step using it ran
            from perovstem.io._folder import _frame_files
            from perovstem.io.read import _check_path

            try:
                if p.is_dir() and p.suffix != ".zarr":
                    _frame_files(p)  # a folder of frame files (a Gatan In-Situ dataset) is a series
                else:
                    _check_path(p)
            except FileFormatError as exc:
                msg = str(exc).replace(", not an image file", ", not a file")
                raise FileFormatError(f"{w}input file {msg}") from None
        inputs[name] = InputSpec(name=name, path=p, options=options, line=line, conditions_path=log)

    # ---- steps
    raw_steps = data.get("step", [])
    if isinstance(raw_steps, dict):
        raise ParameterError(f"{source}: steps are written as [[step]] (array of tables)")
    if not raw_steps:
        raise ParameterError(f"{source}: no [[step]] given; nothing to run")
    steps: list[StepSpec] = []
    produced: dict[str, str] = {}  # plain output name -> latest artefact reference
    shadowed: dict[str, tuple[str, str]] = {}  # [inputs] name -> (step id, output it took)
    all_refs: set[str] = set()
    ids: set[str] = set()
    upstreams: dict[str, dict[str, Any]] = {}  # step id -> its inputs' producers
    for i, raw in enumerate(raw_steps):
        hline = lines.get("step", None, i)
        if not isinstance(raw, dict) or "run" not in raw:
            keys = list(raw) if isinstance(raw, dict) else []
            near = difflib.get_close_matches("run", keys, n=1, cutoff=0.6)
            hint = f"; `{near[0]}` given: a typo?" if near else ""  # ("runn" said only "missing")
            raise ParameterError(
                f"{_where(source, hline, f'[[step]] #{i + 1}')}missing key `run` (the step "
                f"name){hint}"
            )
        if not isinstance(raw["run"], str):
            raise ParameterError(
                f"{_where(source, lines.get('step', 'run', i), f'[[step]] #{i + 1}')}"
                f"`run` must be a step name, got {raw['run']!r}"
            )
        try:
            step = get_step(raw["run"])
        except ParameterError as exc:
            raise ParameterError(
                f"{_where(source, lines.get('step', 'run', i), f'[[step]] #{i + 1}')}{exc}"
            ) from None
        sid = raw.get("id")
        if sid is None:
            sid = base = step.name.split(".")[-1]
            k = 2
            while sid in ids:
                sid, k = f"{base}_{k}", k + 1
        label = f"[[step]] #{i + 1} ({step.name})"
        if not isinstance(sid, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*", sid):
            raise ParameterError(
                f"{_where(source, lines.get('step', 'id', i), label)}`id` must be a simple "
                f"name (letters, digits, _ or -), got {sid!r}"
            )
        if sid in ids:
            raise ParameterError(
                f"{_where(source, lines.get('step', 'id', i) or hline, label)}duplicate step id "
                f"`{sid}`; give each [[step]] a distinct `id`"
            )
        enabled = raw.get("enabled", True)
        if not isinstance(enabled, bool):  # "no" (a string) ran the step
            raise ParameterError(
                f"{_where(source, lines.get('step', 'enabled', i) or hline, label)}`enabled` "
                f"must be true or false, got {enabled!r}"
            )
        if enabled is False:
            continue
        if not allow_unavailable:
            missing = step.missing_requirements()
            if missing:
                raise ParameterError(
                    f"{_where(source, lines.get('step', 'run', i), label)}step `{step.name}` is "
                    f"not available in this version (needs {', '.join(missing)})"
                )
        params_raw = {k: v for k, v in raw.items() if k not in _STEP_RESERVED}
        for k in params_raw:  # unknown keys first, with their own line
            if k not in step.params:
                try:
                    step.resolve_params({k: params_raw[k]})
                except ParameterError as exc:
                    raise ParameterError(
                        f"{_where(source, lines.get('step', k, i), label)}{exc}"
                    ) from None
        try:
            params = step.resolve_params(params_raw)
        except ParameterError as exc:
            bad = next((k for k in params_raw if f"`{k}`" in str(exc)), None)
            raise ParameterError(
                f"{_where(source, lines.get('step', bad, i) if bad else hline, label)}{exc}"
            ) from None
        explicit = raw.get("inputs", {})
        if not isinstance(explicit, dict) or not all(
            isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))
            for v in explicit.values()
        ):
            raise ParameterError(
                f"{_where(source, lines.get('step', 'inputs', i), label)}`inputs` must be a "
                f"table of artefact names, got {explicit!r}"
            )
        wiring: dict[str, str | list[str] | None] = {}
        all_inputs = list(step.inputs) + [o for o in step.optional_inputs if o not in step.inputs]
        for key in explicit:
            if key not in all_inputs:
                raise ParameterError(
                    f"{_where(source, lines.get('step', 'inputs', i), label)}step "
                    f"`{step.name}` has no input `{key}`; its inputs: {', '.join(all_inputs)}"
                )
        for name in all_inputs:
            ref = explicit.get(name)
            if isinstance(ref, list):
                wl = lines.get("step", "inputs", i)
                if name not in step.list_inputs:
                    raise ParameterError(
                        f"{_where(source, wl, label)}input `{name}` takes one artefact, got the "
                        f"list {ref!r}"
                    )
                if not ref:
                    raise ParameterError(
                        f"{_where(source, wl, label)}input `{name}` is an empty list"
                    )
                refs = []
                for r in ref:
                    rr = _resolve_ref(r, all_refs, inputs, steps)
                    if rr is None:
                        known = sorted(all_refs | set(inputs))
                        raise ParameterError(
                            f"{_where(source, wl, label)}input `{name}`: {r!r} names no earlier "
                            f"step output or [inputs] entry; known: {', '.join(known) or 'none'}"
                        )
                    refs.append(rr)
                wiring[name] = refs
                continue
            if ref is not None:
                ref = _resolve_ref(ref, all_refs, inputs, steps)
                if ref is None:
                    known = sorted(all_refs | set(inputs))
                    raise ParameterError(
                        f"{_where(source, lines.get('step', 'inputs', i), label)}input `{name}` "
                        f"= {explicit[name]!r} names no earlier step output or [inputs] entry; "
                        f"known: {', '.join(known) or 'none'}"
                    )
            else:
                ref = produced.get(name) or (name if name in inputs else None)
                if name in produced and name in inputs:
                    shadowed.setdefault(name, (sid, produced[name]))
            if ref is None and name not in step.optional_inputs:
                later = _later_producer(raw_steps, i, name)
                order = (
                    f"; step #{later[0] + 1} ({later[1]}) produces it but comes later: move "
                    f"it before this one"
                    if later
                    else ""
                )
                near = difflib.get_close_matches(name, list(inputs), n=1, cutoff=0.6)
                if near and not order:
                    order = f"; [inputs] has `{near[0]}`: a typo?"
                raise ParameterError(
                    f"{_where(source, hline, label)}needs input `{name}`, produced by no earlier "
                    f"step and not in [inputs]{order}; add it to [inputs] or wire it with "
                    f'`inputs = {{ {name} = "<step id>.<output>" }}`'
                )
            wiring[name] = [ref] if ref is not None and name in step.list_inputs else ref
        bad = _wiring_kind_problem(step, wiring, inputs, steps, params)
        if bad is not None:
            wl = lines.get("step", "inputs", i) if bad[0] in explicit else None
            raise ParameterError(f"{_where(source, wl or hline, label)}{bad[1]}")
        # parameters absurd only together (a frame dose, a KMC run of hours): the step's
        # own check, with the producers of its inputs (the crystal a KMC run starts from)
        upstream = {n: _upstream_of(r, steps, upstreams) for n, r in wiring.items()}
        try:
            if step.check_together is not None:  # (the label names the step)
                step.check_together(params, upstream)
        except ParameterError as exc:
            bad_key = next((k for k in params_raw if f"`{k}`" in str(exc)), None)
            wl = lines.get("step", bad_key, i) if bad_key else None
            raise ParameterError(f"{_where(source, wl or hline, label)}{exc}") from None
        upstreams[sid] = upstream
        ids.add(sid)
        note = raw.get("note", "")
        if not isinstance(note, str):
            raise ParameterError(
                f"{_where(source, lines.get('step', 'note', i), label)}`note` must be a string, "
                f"got {note!r}"
            )
        spec = StepSpec(
            id=sid, step=step, params=params, wiring=wiring, index=i, line=hline, note=note
        )
        steps.append(spec)
        for o in step.outputs:
            produced[o] = f"{sid}.{o}"
            all_refs.add(f"{sid}.{o}")
    used = set()
    for st in steps:
        for r in st.wiring.values():
            used.update(r if isinstance(r, list) else [r])
    said: list[str] = []  # the configuration's warnings, kept for provenance and report
    for name_ in sorted(set(inputs) - used):
        # (a misspelt name, e.g. `imgae = "a.tif"`, left the file out without a word: the
        # step read another input or failed for a missing one)
        why = (
            f"no step uses it (a step takes the input of its own name, or one wired with "
            f'`inputs = {{ <name> = "{name_}" }}`)'
        )
        if name_ in shadowed:
            # an earlier step's output of the same name wins over the file: said, not silent
            sid_, ref_ = shadowed[name_]
            why = (
                f"no step uses it: step `{sid_}` takes `{ref_}`, the earlier step output of "
                f"that name, which comes before an [inputs] entry; wire the file with "
                f'`inputs = {{ {name_} = "{name_}" }}` in that step'
            )
        said.append(f"{_where(source, inputs[name_].line, f'[inputs] {name_}')}{why}")
        warnings.warn(said[-1], UserWarning, stacklevel=2)
    name = run.get("name") or (Path(source).stem if source != "<config>" else "analysis")
    workers = run.get("workers")
    return Config(
        name=name,
        steps=steps,
        inputs=inputs,
        seed=int(run.get("seed", 0)),
        scheduler=run.get("scheduler", "auto"),
        workers=workers,
        on_error=on_error,
        title=run.get("title", name),
        report=bool(run.get("report", True)),
        plugins=plugins,
        source=Path(source) if source != "<config>" else None,
        text=text,
        warnings=tuple(said),
    )


def _upstream_of(
    ref: str | list[str] | None,
    steps: list[StepSpec],
    upstreams: dict[str, dict[str, Any]],
) -> Any:
    """The step producing the artefact ``ref`` (``"<id>.<output>"``), with its own
    producers; None for an [inputs] file or no wiring; a list (one per entry) for a list
    input."""
    if isinstance(ref, list):
        return [_upstream_of(r, steps, upstreams) for r in ref]
    if not isinstance(ref, str) or "." not in ref:
        return None
    sid, _, output = ref.rpartition(".")
    for spec in steps:
        if spec.id == sid:
            return Upstream(
                step=spec.step.name,
                output=output,
                params=dict(spec.params),
                inputs=dict(upstreams.get(sid, {})),
            )
    return None


def _resolve_ref(
    ref: str, all_refs: set[str], inputs: dict[str, InputSpec], steps: list[StepSpec]
) -> str | None:
    if ref in inputs:
        return ref
    if ref in all_refs:
        return ref
    # "<id>" alone for a step with a single output
    for s in steps:
        if s.id == ref and len(s.step.outputs) == 1:
            return f"{s.id}.{s.step.outputs[0]}"
    return None


# what an [inputs] file can be read as (perovstem.io.load: an Image, a Series or a TiltSeries;
# the `kind` option only decides how a 3-D stack is read, a 2-D file stays an Image)
_FILE_KINDS = {
    None: frozenset({"image", "series", "tilt"}),
    "image": frozenset({"image"}),
    "series": frozenset({"image", "series"}),
    "tilt": frozenset({"image", "tilt"}),
}


def _input_file_kinds(spec: InputSpec) -> frozenset[str]:
    """The kinds of artefact an [inputs] file may become when it is read."""
    from perovstem.pipeline.runner import TABLE_SUFFIXES

    if spec.path.suffix.lower() in TABLE_SUFFIXES and not spec.options:
        return frozenset({"table"})
    given = {k for k in spec.options if k in SERIES_OPTIONS}
    if given and given <= IMAGE_SETTINGS and spec.options.get("kind") != "series":
        return frozenset({"image", "series"})  # a 2-D file is an image with its settings
    if given:
        return frozenset({"series"})
    return _FILE_KINDS.get(spec.options.get("kind"), _FILE_KINDS[None])


def _table_file_columns(path: Path) -> list[str] | None:
    """The column names of a .parquet/.csv table file, read from its header only (``None``
    when it cannot be read: reported when the file is loaded)."""
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            return [str(c) for c in pq.read_schema(path).names]
        if path.suffix.lower() == ".csv":
            import pandas as pd

            return [str(c) for c in pd.read_csv(path, nrows=0).columns]
    except Exception:  # noqa: BLE001 - an unreadable file is reported when it is read
        return None
    return None


def _wiring_kind_problem(
    step: Step,
    wiring: dict[str, str | list[str] | None],
    inputs: dict[str, InputSpec],
    steps: list[StepSpec],
    params: dict[str, Any] | None = None,
) -> tuple[str, str] | None:
    """``(input, message)`` for the first input wired to an artefact of the wrong kind.

    Known before any step runs: the kind an earlier step declares for its output
    (:attr:`Step.output_kinds`), what an [inputs] file can be read as, and the columns in
    the header of an [inputs] table file; a step 20 wired to the wrong artefact (or to a
    table without a column it needs) used to fail only after steps 1-19 had run.  What
    cannot be known yet (an undeclared output) is checked when the step starts.
    """
    by_id = {s.id: s for s in steps}
    for name, kind in step.input_kinds.items():
        ref = wiring.get(name)
        for r in [] if ref is None else ref if isinstance(ref, list) else [ref]:
            if r in inputs:
                declared: Any = _input_file_kinds(inputs[r])
                if kind.kind == "table" and declared == frozenset({"table"}):
                    need = kind.needed_columns(params)
                    cols = _table_file_columns(inputs[r].path) if need else None
                    missing = [c for c in need if cols is not None and c not in cols]
                    if missing:
                        more = f", ... {len(cols) - 20} more" if len(cols) > 20 else ""
                        return name, (
                            f"input `{name}` is wired to [inputs] {r} (the table file "
                            f"{str(inputs[r].path)!r}, without column(s) {', '.join(missing)}; "
                            f"its columns: {', '.join(cols[:20])}{more}); `{name}` must be "
                            f"{kind.expected_with(params)}"
                        )
                names = sorted(declared)
                kinds = [
                    {"image": "an Image", "series": "a Series", "tilt": "a TiltSeries"}[k]
                    for k in ("image", "series", "tilt")
                    if k in declared
                ]
                what = (
                    "a table file"
                    if names == ["table"]
                    else "a file read as "
                    + (", ".join(kinds[:-1]) + " or " if len(kinds) > 1 else "")
                    + kinds[-1]
                )
                series_only = sorted(
                    k for k in inputs[r].options if k in SERIES_OPTIONS and k not in IMAGE_SETTINGS
                )
                if names == ["series"] and series_only:  # say why it is read as a series
                    what += f" (its {', '.join(series_only)} set an in-situ series)"
                origin = f"[inputs] {r} ({inputs[r].path.name}), {what}"
            else:
                sid, _, out = r.partition(".")
                producer = by_id.get(sid)
                declared = producer.step.output_kinds.get(out) if producer else None
                if declared is None:
                    continue
                origin = (
                    f"`{r}`, {declared.describe()} (output `{out}` of step "
                    f"`{sid}`, {producer.step.name})"
                )
            why = kind.mismatch(declared, params)
            if why is None:
                continue
            return name, (
                f"input `{name}` is wired to {origin} ({why}); `{name}` must be "
                f"{kind.expected_with(params)}: wire it with "
                f'inputs = {{ {name} = "<step id>.<output>" }}'
            )
    return None


def _where_raised(exc: BaseException) -> str:
    """' (file, line n)' of the innermost frame of a plugin's import error."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f" ({exc.filename}, line {exc.lineno})"
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    return f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""


def _later_producer(raw_steps: list[Any], i: int, name: str) -> tuple[int, str] | None:
    """The first step after #i whose outputs include `name` (a wrong step order)."""
    for j in range(i + 1, len(raw_steps)):
        raw = raw_steps[j]
        try:
            later = get_step(raw["run"])
        except Exception:  # reported when that step is validated
            continue
        if name in later.outputs:
            return j, str(raw["run"])
    return None


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and bool(np.isfinite(v))


def _positive(v: Any) -> bool:
    return _number(v) and v > 0


# options of perovstem.io.load an [inputs] entry may give (name -> check, what it takes)
_LOAD_INPUT_OPTIONS: dict[str, tuple[Any, str]] = {
    "pixel_size": (_positive, "a positive number, Å"),  # TOML inf passed the check
    "lazy": (lambda v: isinstance(v, bool), "true or false"),
    "kind": (
        lambda v: v in ("image", "series", "tilt"),
        '"image", "series" or "tilt" (how a 3-D stack is read)',
    ),
    "signal": (lambda v: isinstance(v, str) and v != "", "the title of the image to read"),
}
LOAD_OPTIONS = frozenset(_LOAD_INPUT_OPTIONS)


def _detector(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(_number(x) for x in v) and 0 <= v[0] < v[1]


# settings of an in-situ series (perovstem.insitu.prepare_series; the options of
# `perovstem insitu`): a series file rarely records all of them
SERIES_OPTIONS: dict[str, tuple[Any, str]] = {
    "dose_e_per_A2": (_positive, "a positive number, e⁻/Å² per frame"),
    "current_pA": (_positive, "a positive number, pA (probe current)"),
    "dwell_us": (_positive, "a positive number, µs (pixel dwell time)"),
    "frame_time_s": (_positive, "a positive number, s (frame interval)"),
    "temperature_K": (
        lambda v: _positive(v) and v <= MAX_TEMPERATURE_K,
        f"a temperature in K, above 0 and at most {MAX_TEMPERATURE_K:g}",
    ),
    "voltage_kV": (
        lambda v: _number(v) and v in (200, 300),
        "200 or 300 (the calibrated cross-section libraries)",
    ),
    "detector_mrad": (_detector, "[inner, outer] in mrad, 0 ≤ inner < outer"),
    "gain": (
        lambda v: _positive(v) or v == "auto",
        'a positive number (detector counts per electron) or "auto" (from the shot noise)',
    ),
    "offset": (_number, "a finite number, detector counts of no signal"),
    "conditions": (
        lambda v: isinstance(v, str) and v != "",
        "the path of a holder log (DENSsolutions, Protochips or CSV)",
    ),
    "time_offset_s": (_number, "a finite number, s (log time of the first frame)"),
    "log_utc_offset_h": (
        lambda v: _number(v) and -14 <= v <= 14,
        "the holder PC's UTC offset, -14…14 h",
    ),
}
_INPUT_OPTIONS = {**_LOAD_INPUT_OPTIONS, **SERIES_OPTIONS}
# the settings that also apply to one image (perovstem.insitu.prepare_image; `perovstem
# atoms fit --dose-e-per-A2 --gain --offset`): a dose-less image could not be normalised
IMAGE_SETTINGS = frozenset(
    {"dose_e_per_A2", "current_pA", "dwell_us", "gain", "offset", "voltage_kV", "detector_mrad"}
)


def _check_series_options(
    where: str, options: dict[str, Any], base_dir: Path, check_files: bool
) -> Path | None:
    """Checks across an input's series settings; the `conditions` log resolved."""
    given = [k for k in options if k in SERIES_OPTIONS]
    if not given:
        return None
    image_ok = set(given) <= IMAGE_SETTINGS and options.get("kind") == "image"
    if options.get("kind") in ("image", "tilt") and not image_ok:
        raise ParameterError(
            f"{where}{', '.join(given)} set an in-situ series; kind = "
            f"{options['kind']!r} reads it as another kind"
        )
    pairs = (
        ("temperature_K", "conditions", "both give the temperature: give one"),
        ("time_offset_s", "log_utc_offset_h", "both place the holder log: give one"),
    )
    for a, b, why in pairs:
        if a in options and b in options:
            raise ParameterError(f"{where}`{a}` and `{b}` {why}")
    for k in ("time_offset_s", "log_utc_offset_h"):
        if k in options and "conditions" not in options:
            raise ParameterError(f"{where}`{k}` places a holder log: give `conditions` with it")
    if "conditions" not in options:
        return None
    log = Path(options["conditions"])
    if not log.is_absolute():
        log = base_dir / log
    if check_files and not log.is_file():
        raise FileFormatError(f"{where}`conditions` log {str(log)!r} does not exist")
    return log


def _check_input_option(where: str, key: str, value: Any) -> None:
    if key not in _INPUT_OPTIONS:
        raise ParameterError(
            f"{where}unknown option `{key}`; known: {', '.join(sorted(_INPUT_OPTIONS))}"
        )
    ok, what = _INPUT_OPTIONS[key]
    if not ok(value):
        raise ParameterError(f"{where}option `{key}` must be {what}, got {value!r}")


def load_config(path: str | Path, **kwargs: Any) -> Config:
    """Read, parse and validate a TOML analysis file (see the module docstring).

    Raises
    ------
    FileFormatError
        The file is missing or is not valid TOML (message with the line number).
    ParameterError
        Invalid content (message names the line and key).
    """
    p = Path(path)
    from perovstem.io.runstore import read_bytes

    if not p.is_file():
        raise FileFormatError(f"configuration file {str(p)!r} does not exist")
    try:
        text = read_bytes(p).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileFormatError(f"{p}: not a UTF-8 text file ({exc})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FileFormatError(f"{p}: invalid TOML: {exc}") from None
    return parse_config(data, base_dir=p.resolve().parent, source=str(p), text=text, **kwargs)


def _toml_value(v: Any) -> str:
    import json
    import math

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a valid TOML basic string
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise ParameterError(f"cannot write {v!r} ({type(v).__name__}) to TOML")


def _toml_key(k: str) -> str:
    import json

    return k if re.fullmatch(r"[A-Za-z0-9_\-]+", k) else json.dumps(k)


def to_toml(data: dict[str, Any]) -> str:
    """Write an analysis mapping (``[run]``, ``[inputs]``, ``[[step]]``) as TOML text.

    The inverse of :func:`tomllib.loads` for the value types a configuration uses (strings,
    numbers, booleans, lists, inline tables).
    """
    out: list[str] = []
    for section in ("run", "inputs"):
        if data.get(section):
            out.append(f"[{section}]")
            out += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in data[section].items()]
            out.append("")
    for step in data.get("step", []):
        out.append("[[step]]")
        out += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in step.items()]
        out.append("")
    return "\n".join(out)
