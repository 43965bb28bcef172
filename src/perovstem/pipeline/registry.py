"""The registry of pipeline steps.

A step is a named, typed wrapper around calls to the public API: it declares the artefacts it
consumes, a parameter schema (types, defaults, allowed values), the artefacts it produces and
the public functions it needs.  Steps for a sub-package live in
``perovstem/pipeline/steps/<topic>.py`` and are registered with :func:`register_step`; a step
whose sub-package (or function) is missing in this version is reported as *not available*,
never crashes a run.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import math
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perovstem.errors import ParameterError

__all__ = [
    "Param",
    "Kind",
    "Upstream",
    "Step",
    "register_step",
    "get_step",
    "list_steps",
    "STEPS",
    "api",
    "describe_value",
]


def _find(candidate: str) -> Any:
    mod, _, attr = candidate.partition(":")
    try:
        m = importlib.import_module(mod)
    except Exception:  # missing, or broken in this installation: the step is not available
        return None
    if not attr:
        return m
    obj = getattr(m, attr, None)
    return None if isinstance(obj, types.ModuleType) else obj  # a sub-module of that name


def api(*requirements: str) -> Any:
    """The first importable public object among ``"module:attr"`` alternatives.

    Each argument may itself hold alternatives separated by ``|`` (the form used in
    :attr:`Step.requires`), e.g. ``"perovstem.atoms:count_atoms|perovstem.atoms.count:count_atoms"``
    while a sub-package has not re-exported a function yet.

    Raises
    ------
    OptionalDependencyError
        None of the alternatives exists in this version.
    """
    from perovstem.errors import OptionalDependencyError

    cands = [c for r in requirements for c in r.split("|")]
    for c in cands:
        obj = _find(c)
        if obj is not None:
            return obj
    raise OptionalDependencyError(f"not available in this version: {' or '.join(cands)}")


_TYPE_NAMES = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    dict: "table",
}


@dataclass(frozen=True)
class Param:
    """Schema of one step parameter.

    Parameters
    ----------
    type : type or tuple of types
        ``bool``, ``int``, ``float``, ``str``, ``list`` or ``dict`` (TOML types), or a tuple of
        them (e.g. ``(float, str)`` for "a number or 'auto'").  An integer is accepted where
        a float is expected; a bool is never accepted as a number.
    default : Any
        Value used when the configuration omits the parameter (``None``: optional, or
        required when ``required=True``).
    doc : str
        One-line description with units.
    choices : tuple, optional
        Allowed values.
    min, max : float, optional
        Inclusive bounds for numbers.
    required : bool
        The configuration must give a value.
    item_type : type, optional
        For a ``list``: the type of every element (``float`` accepts integers).
    length : int, optional
        For a ``list``: the number of elements it must have.
    """

    type: type | tuple[type, ...]
    default: Any = None
    doc: str = ""
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    required: bool = False
    item_type: type | None = None
    length: int | None = None

    @property
    def type_name(self) -> str:
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)

    def check(self, key: str, value: Any) -> Any:
        """Return ``value`` coerced to the schema type or raise :class:`ParameterError`."""
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        is_bool = isinstance(value, bool)
        ok = any(isinstance(value, t) and not (t in (int, float) and is_bool) for t in types)
        if not ok and float in types and isinstance(value, int) and not is_bool:
            value, ok = float(value), True
        if not ok and list in types and isinstance(value, tuple):
            value, ok = list(value), True
        if not ok:
            raise ParameterError(
                f"`{key}` must be {'an' if self.type_name[0] in 'aeiou' else 'a'} "
                f"{self.type_name}, got {value!r} ({type(value).__name__})"
            )
        if isinstance(value, float) and not math.isfinite(value):  # TOML nan/inf passed the bounds
            raise ParameterError(f"`{key}` must be a finite number, got {value!r}")
        if isinstance(value, list):
            value = self._check_items(key, value)
        if self.choices is not None and value not in self.choices:
            raise ParameterError(f"`{key}` must be one of {list(self.choices)}, got {value!r}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if self.min is not None and value < self.min:
                raise ParameterError(
                    f"`{key}` must be >= {self.min}, got {value!r}{self._unit_hint(key, value)}"
                )
            if self.max is not None and value > self.max:
                raise ParameterError(
                    f"`{key}` must be <= {self.max}, got {value!r}{self._unit_hint(key, value)}"
                )
        return value

    def _check_items(self, key: str, value: list) -> list:
        """Element types and length of a list value (["a", "b"] for a drift was accepted)."""
        if self.length is not None and len(value) != self.length:
            raise ParameterError(
                f"`{key}` must hold {self.length} values, got {len(value)}: {value!r}"
            )
        t = self.item_type
        if t is None:
            return value
        out = []
        for v in value:
            ok = isinstance(v, t) and not (t in (int, float) and isinstance(v, bool))
            if not ok and t is float and isinstance(v, int) and not isinstance(v, bool):
                v, ok = float(v), True
            if ok and isinstance(v, float) and not math.isfinite(v):
                ok = False
            if not ok:
                what = _TYPE_NAMES.get(t, t.__name__)
                raise ParameterError(
                    f"`{key}` must be an array of {'finite numbers' if t is float else what + 's'}, "
                    f"got {value!r} (element {v!r})"
                )
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                # the bounds hold for each element (temperatures_K = [300, -5] ran)
                if (self.min is not None and v < self.min) or (
                    self.max is not None and v > self.max
                ):
                    lo = "-∞" if self.min is None else f"{self.min:g}"
                    hi = "∞" if self.max is None else f"{self.max:g}"
                    raise ParameterError(
                        f"`{key}` elements must lie in [{lo}, {hi}], got {value!r} (element {v!r})"
                    )
            out.append(v)
        return out

    def _unit_hint(self, key: str, value: float) -> str:
        """Name the likely unit slip when the value × 10 (nm for Å) would be in range."""
        for suffix, unit, wrong, factor in (("_A", "Å", "nm", 10.0), ("_nm", "nm", "Å", 0.1)):
            if not key.endswith(suffix):
                continue
            v = value * factor
            if (self.min is None or v >= self.min) and (self.max is None or v <= self.max):
                return f" ({key} is in {unit}: {value!r} {wrong} = {v:.6g} {unit}?)"
        return ""


_KIND_NAMES = {
    "image": "a perovstem Image",
    "series": "a perovstem Series (in-situ frames)",
    "tilt": "a perovstem TiltSeries",
    "atoms": "an ase Atoms model",
    "volume": "a 3-D numeric array (a reconstruction)",
    "table": "a table",
    "tables": "a mapping of named tables",
    "trajectory": "a KMC trajectory (simulate.degradation_kmc)",
    "number": "a number",
}


def describe_value(value: Any) -> str:
    """What an artefact is, in words: kind, shape or columns (for error messages)."""
    import numpy as np

    from perovstem._data import Image, Series, TiltSeries

    name = type(value).__name__
    if hasattr(value, "columns") and hasattr(value, "iloc"):  # a DataFrame
        cols = [str(c) for c in value.columns]
        more = f", ... {len(cols) - 12} more" if len(cols) > 12 else ""
        return f"a table with columns [{', '.join(cols[:12])}{more}] ({len(value)} rows)"
    if isinstance(value, TiltSeries):
        return "a TiltSeries ({}×{}×{})".format(*value.shape)
    if isinstance(value, Series):
        return "a Series ({}×{}×{})".format(*value.shape)
    if isinstance(value, Image):
        return "an Image ({}×{})".format(*value.shape)
    if name == "Atoms" and hasattr(value, "get_chemical_symbols"):
        return f"an ase Atoms model ({len(value)} atoms)"
    if isinstance(value, np.ndarray):
        return f"a {value.ndim}-D {value.dtype} array ({'×'.join(map(str, value.shape))})"
    if isinstance(value, dict):
        return f"a mapping with keys {sorted(map(str, value))[:8]}"
    return f"a {name}"


@dataclass(frozen=True)
class Kind:
    """What a step input must be; checked before the step runs.

    The wiring of a configuration is by name, so without this a step given the wrong
    artefact (the simulator's truth table instead of the column fit, an image instead of a
    series) failed deep inside with ``KeyError: 'scs'`` or ``AttributeError``, naming
    neither the step nor its input.

    Parameters
    ----------
    kind : str
        ``image``, ``series``, ``tilt``, ``atoms``, ``volume``, ``table``, ``tables`` (a
        mapping of names to tables: a simulator's truth), ``trajectory`` (a KMC trajectory)
        or ``number``.
    columns : tuple of str
        Columns a table must have (for a step output: columns the table always has); for
        ``tables``, the names of the tables the mapping must hold.
    source : str
        Where such an artefact usually comes from (named in the message).
    may_have : tuple of str, optional
        For a step output: every column the table can have (beyond ``columns``, which it
        always has), so an input needing another column is refused when the configuration
        is validated.  ``None``: not known.
    param_columns : tuple of str
        For a step input: parameters of the step whose values name further columns the
        table must have (``x`` of quantify.mechanism: the independent-variable column).
    """

    kind: str
    columns: tuple[str, ...] = ()
    source: str = ""
    may_have: tuple[str, ...] | None = None
    param_columns: tuple[str, ...] = ()

    def needed_columns(self, params: dict[str, Any] | None = None) -> tuple[str, ...]:
        """:attr:`columns` and the columns the step's ``params`` name (``param_columns``)."""
        extra = [str((params or {}).get(p)) for p in self.param_columns if (params or {}).get(p)]
        return tuple(dict.fromkeys((*self.columns, *extra)))

    def __post_init__(self) -> None:
        if self.kind not in _KIND_NAMES:
            raise ParameterError(
                f"Kind: `kind` must be one of {sorted(_KIND_NAMES)}, got {self.kind!r}"
            )

    @property
    def expected(self) -> str:
        return self.expected_with()

    def expected_with(self, params: dict[str, Any] | None = None) -> str:
        """:attr:`expected`, naming the columns ``params`` add (:attr:`param_columns`)."""
        text = _KIND_NAMES[self.kind]
        cols = self.needed_columns(params)
        if cols:
            what = "tables" if self.kind == "tables" else "columns"
            text += f" with {what} {', '.join(cols)}"
        return text + (f" ({self.source})" if self.source else "")

    def problem(self, value: Any, params: dict[str, Any] | None = None) -> str | None:
        """``None`` when ``value`` is of this kind, else what is wrong with it (``params``:
        the step's, for :attr:`param_columns`)."""
        import numbers

        import numpy as np

        from perovstem._data import Image, Series, TiltSeries

        k = self.kind
        if k == "table":
            if not (hasattr(value, "columns") and hasattr(value, "iloc")):
                return "not a table"
            missing = [c for c in self.needed_columns(params) if c not in value.columns]
            return f"without column(s) {', '.join(missing)}" if missing else None
        if k == "tables":
            if not (
                isinstance(value, dict)
                and all(hasattr(v, "columns") and hasattr(v, "iloc") for v in value.values())
            ):
                return "not a mapping of tables"
            missing = [c for c in self.columns if c not in value]
            return f"without table(s) {', '.join(missing)}" if missing else None
        ok = {
            "image": lambda v: isinstance(v, Image),
            "series": lambda v: isinstance(v, Series) and not isinstance(v, TiltSeries),
            "tilt": lambda v: isinstance(v, TiltSeries),
            "atoms": lambda v: type(v).__name__ == "Atoms" and hasattr(v, "positions"),
            "trajectory": lambda v: (
                hasattr(v, "frame_table") and hasattr(v, "atoms") and hasattr(v, "n_frames")
            ),
            "volume": lambda v: (
                isinstance(v, np.ndarray) and v.ndim == 3 and v.dtype.kind in "biuf"
            ),
            "number": lambda v: (
                not isinstance(v, bool)
                and (isinstance(v, numbers.Real) or np.ndim(v) == 0)
                and np.asarray(v).dtype.kind in "iuf"
            ),
        }[k](value)
        return None if ok else "of another kind"

    def mismatch(
        self, declared: Kind | frozenset[str], params: dict[str, Any] | None = None
    ) -> str | None:
        """What is certainly wrong with an artefact declared as ``declared``, else ``None``.

        ``declared`` is the output kind a step declares, or the set of kinds an [inputs]
        file may be read as.  Used when a configuration is validated, before any step
        runs: only what is known then is refused (a table's columns only when its producer
        lists all of them); the rest is checked when the step starts (:meth:`problem`).
        """
        other = "not a table" if self.kind == "table" else "of another kind"
        if isinstance(declared, frozenset):
            return None if self.kind in declared else other
        if declared.kind != self.kind:
            return other
        if self.kind == "table" and declared.may_have is not None:
            known = (*declared.columns, *declared.may_have)
            missing = [c for c in self.needed_columns(params) if c not in known]
            if missing:
                return f"without column(s) {', '.join(missing)}"
        return None

    def describe(self) -> str:
        """The artefact this declares, in words (for messages)."""
        text = {
            "image": "an Image",
            "series": "a Series",
            "tilt": "a TiltSeries",
            "atoms": "an ase Atoms model",
            "volume": "a 3-D array",
            "table": "a table",
            "tables": "a mapping of tables",
            "trajectory": "a KMC trajectory",
            "number": "a number",
        }[self.kind]
        if self.kind == "table" and self.may_have is not None:
            text += f" with columns [{', '.join((*self.columns, *self.may_have))}]"
        return text


@dataclass(frozen=True)
class Upstream:
    """The step that produces an input, as known when a configuration is validated.

    Given to a step's ``check_together`` hook (see :class:`Step`), so that a combination
    that is absurd only with the producer's parameters (a KMC run on the crystal that
    ``simulate.nanocrystal`` builds) is refused by ``perovstem run --check``.

    Parameters
    ----------
    step : str
        Registry name of the producing step (``"simulate.nanocrystal"``).
    output : str
        Which of its outputs the input is.
    params : dict
        Its resolved parameters.
    inputs : dict of str to Upstream, list or None
        Its own inputs' producers (``None``: an ``[inputs]`` file or not wired; a list of
        them, one per entry, for a list input).
    """

    step: str
    output: str
    params: dict[str, Any]
    inputs: dict[str, UpstreamOf] = field(default_factory=dict)

    def find(self, step: str) -> Upstream | None:
        """This producer or the nearest one up the chain that is step ``step``, else None."""
        if self.step == step:
            return self
        for up in self.inputs.values():
            for u in up if isinstance(up, list) else [up]:
                hit = u.find(step) if u is not None else None
                if hit is not None:
                    return hit
        return None


#: what a step input comes from: its producer, None (a file, not wired) or, for a list
#: input, a list of those (one per entry)
UpstreamOf = Upstream | list[Upstream | None] | None

#: ``check_together(params, upstream)``: raises ParameterError on an absurd combination
CheckTogether = Callable[[dict[str, Any], dict[str, UpstreamOf]], None]


@dataclass(frozen=True)
class Step:
    """A registered pipeline step.

    Parameters
    ----------
    name : str
        Registry name, ``"<topic>.<action>"`` (e.g. ``"insitu.detect"``).
    func : callable
        ``func(ctx, **inputs) -> dict[str, Any]`` returning one value per declared output.
        ``ctx`` is a :class:`perovstem.pipeline.context.StepContext` (parameters, rng seed,
        ``ctx.map`` for per-frame work, figure and report helpers).
    inputs : tuple of str
        Names of the artefacts consumed (wired by name, or explicitly in the configuration).
    outputs : tuple of str
        Names of the artefacts produced.
    params : dict of str to Param
        Parameter schema.
    requires : tuple of str
        Public API needed, as ``"module"`` or ``"module:attribute"`` (alternatives separated
        by ``|``); the step is *not available* when one is missing.
    optional_inputs : tuple of str
        Inputs that may be absent (passed as ``None``).
    list_inputs : tuple of str
        Inputs that take a list of artefacts (e.g. the tilt series of a 4-D sequence), wired
        as ``inputs = { name = ["ref1", "ref2", ...] }``; the step receives a list of their
        values in that order (a single reference, or wiring by name, gives a list of one).
    input_kinds : dict of str to Kind
        What each input must be (checked against the producer's :attr:`output_kinds` when
        the configuration is validated, and against the value before the step runs;
        unlisted inputs are not checked).
    output_kinds : dict of str to Kind
        What each output is, where known in advance (unlisted outputs are unknown); the
        runner checks the produced value against it.
    section : str
        Report section the step contributes to.
    doc : str
        One-line description.
    version : str
        Bump when the step's behaviour changes, so cached results are recomputed.
    check_together : callable, optional
        ``check_together(params, upstream)``: refuses (:class:`ParameterError` naming the
        parameters and their values) a combination of the step's resolved ``params`` that
        is absurd only together (each value passes its own bounds), e.g. a dose rate × frame
        time above the largest frame dose.  ``upstream`` maps each input to the
        :class:`Upstream` step that produces it (``None``: an ``[inputs]`` file, or not
        wired).  Called when a configuration is validated (:func:`load_config`,
        ``perovstem run --check``), before any step runs; through
        :meth:`check_params_together`.
    """

    name: str
    func: Callable[..., dict[str, Any]]
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    params: dict[str, Param] = field(default_factory=dict)
    requires: tuple[str, ...] = ()
    optional_inputs: tuple[str, ...] = ()
    section: str = "mechanism"
    doc: str = ""
    version: str = "1"
    list_inputs: tuple[str, ...] = ()
    input_kinds: dict[str, Kind] = field(default_factory=dict)
    output_kinds: dict[str, Kind] = field(default_factory=dict)
    check_together: CheckTogether | None = None

    def check_params_together(
        self, params: dict[str, Any], upstream: dict[str, UpstreamOf] | None = None
    ) -> None:
        """Run the step's :attr:`check_together` hook on resolved ``params``.

        Raises
        ------
        ParameterError
            The combination is refused; the message starts with ``step `<name>`: ``.
        """
        if self.check_together is None:
            return
        try:
            self.check_together(params, dict(upstream or {}))
        except ParameterError as exc:
            raise ParameterError(f"step `{self.name}`: {exc}") from None

    def missing_requirements(self) -> list[str]:
        """The required modules/attributes that cannot be imported in this installation."""
        return [req for req in self.requires if all(_find(c) is None for c in req.split("|"))]

    @property
    def available(self) -> bool:
        return not self.missing_requirements()

    def code_digest(self) -> str | None:
        """SHA-256 of the source file of a plugin step's function (None for perovstem's own
        steps, whose ``version`` and the perovstem version key their code): an edited plugin
        must not leave the results of its old code cached."""
        module = getattr(self.func, "__module__", "") or ""
        if module == "perovstem" or module.startswith("perovstem."):
            return None
        try:
            src = inspect.getsourcefile(self.func)
        except TypeError:  # a built-in or C function: no file to read
            return None
        if not src or not Path(src).is_file():
            return None
        return hashlib.sha256(Path(src).read_bytes()).hexdigest()

    def resolve_params(self, given: dict[str, Any], *, where: str = "") -> dict[str, Any]:
        """Validate ``given`` against the schema and fill in defaults.

        Raises
        ------
        ParameterError
            Unknown key (with a suggestion), wrong type, value out of range or a missing
            required parameter; the message names the key (prefixed by ``where``).
        """
        import difflib

        out: dict[str, Any] = {}
        for key, value in given.items():
            if key not in self.params:
                close = difflib.get_close_matches(key, list(self.params), n=1)
                hint = f" (did you mean `{close[0]}`?)" if close else ""
                known = ", ".join(sorted(self.params)) or "none"
                raise ParameterError(
                    f"{where}unknown parameter `{key}` for step `{self.name}`{hint}; "
                    f"known parameters: {known}"
                )
            try:
                out[key] = self.params[key].check(key, value)
            except ParameterError as exc:
                raise ParameterError(f"{where}{exc}") from None
        for key, p in self.params.items():
            if key not in out:
                if p.required:
                    raise ParameterError(
                        f"{where}step `{self.name}` needs parameter `{key}` ({p.doc})"
                    )
                out[key] = p.default
        return out


STEPS: dict[str, Step] = {}


def register_step(
    name: str,
    *,
    inputs: tuple[str, ...] = (),
    outputs: tuple[str, ...] = (),
    params: dict[str, Param] | None = None,
    requires: tuple[str, ...] = (),
    optional_inputs: tuple[str, ...] = (),
    section: str = "mechanism",
    doc: str = "",
    version: str = "1",
    list_inputs: tuple[str, ...] = (),
    input_kinds: dict[str, Kind] | None = None,
    output_kinds: dict[str, Kind] | None = None,
    check_together: CheckTogether | None = None,
) -> Callable[[Callable[..., dict[str, Any]]], Callable[..., dict[str, Any]]]:
    """Decorator registering ``func(ctx, **inputs) -> dict`` as pipeline step ``name``."""

    for what, names in (("list_inputs", list_inputs), ("input_kinds", input_kinds or {})):
        unknown = [i for i in names if i not in inputs and i not in optional_inputs]
        if unknown:
            raise ParameterError(f"step `{name}`: {what} {unknown} are not among its inputs")
    unknown = [o for o in output_kinds or {} if o not in outputs]
    if unknown:
        raise ParameterError(f"step `{name}`: output_kinds {unknown} are not among its outputs")

    def deco(func: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        STEPS[name] = Step(
            name=name,
            func=func,
            inputs=tuple(inputs),
            outputs=tuple(outputs),
            params=dict(params or {}),
            requires=tuple(requires),
            optional_inputs=tuple(optional_inputs),
            section=section,
            doc=doc or ((func.__doc__ or "").strip().splitlines() or [""])[0],
            version=version,
            list_inputs=tuple(list_inputs),
            input_kinds=dict(input_kinds or {}),
            output_kinds=dict(output_kinds or {}),
            check_together=check_together,
        )
        return func

    return deco


def _load_builtin_steps() -> None:
    from perovstem.pipeline import steps  # noqa: F401  (registers on import)


def get_step(name: str) -> Step:
    """The registered step ``name`` (:class:`ParameterError` naming close matches if unknown)."""
    _load_builtin_steps()
    if name not in STEPS:
        import difflib

        close = difflib.get_close_matches(name, list(STEPS), n=3)
        hint = f" (did you mean {', '.join(f'`{c}`' for c in close)}?)" if close else ""
        raise ParameterError(f"unknown step `{name}`{hint}; run `perovstem run --list-steps`")
    return STEPS[name]


def list_steps() -> list[Step]:
    """All registered steps, sorted by name."""
    _load_builtin_steps()
    return [STEPS[k] for k in sorted(STEPS)]
