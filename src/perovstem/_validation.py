"""Small input checks shared by all sub-packages (messages name parameter and value)."""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from perovstem.errors import DataError, ParameterError

__all__ = [
    "as_rng",
    "check_positive",
    "check_range",
    "check_int",
    "check_image",
    "check_choice",
    "check_finite",
    "refuse_text_numbers",
    "warn",
    "warning_transparent",
]


def as_rng(rng: Any = None) -> np.random.Generator:
    """Return a Generator following SPEC 7 (int seed, Generator or None)."""
    return np.random.default_rng(rng)


def _refuse_text(name: str, value: Any) -> None:
    """A number given as text ("10" from a form or a config file) is refused, not parsed."""
    if isinstance(value, (str, bytes, np.str_)):
        raise ParameterError(f"`{name}` must be a number, got {value!r} (text)")


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    """Raise :class:`ParameterError` unless ``value`` is a finite (non-)positive number."""
    _refuse_text(name, value)
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"`{name}` must be a number, got {value!r}") from None
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ParameterError(f"`{name}` must be finite and {bound}, got {value!r}")
    return v


def check_range(name: str, value: float, lo: float, hi: float) -> float:
    """Raise :class:`ParameterError` unless ``lo <= value <= hi``."""
    _refuse_text(name, value)
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"`{name}` must be a number, got {value!r}") from None
    if not (np.isfinite(v) and lo <= v <= hi):
        raise ParameterError(f"`{name}` must lie in [{lo}, {hi}], got {value!r}")
    return v


def check_int(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    """Raise :class:`ParameterError` unless ``value`` is an integer in ``[lo, hi]``.

    Integral floats (``8.0``) are accepted; ``2.5``, booleans, NaN and strings are not, so a
    count is never truncated silently.
    """
    ok = not isinstance(value, (bool, np.bool_, str, bytes))
    try:
        v = int(value)
        ok = ok and float(value) == v
    except (TypeError, ValueError, OverflowError):
        ok = False
    if ok and v >= lo and (hi is None or v <= hi):
        return v
    bound = f">= {lo}" if hi is None else f"in [{lo}, {f'{hi:,}'.replace(',', ' ')}]"
    raise ParameterError(f"`{name}` must be an integer {bound}, got {value!r}")


def check_choice(name: str, value: Any, choices: Any) -> Any:
    """Raise :class:`ParameterError` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ParameterError(f"`{name}` must be one of {sorted(map(str, choices))}, got {value!r}")
    return value


def item_names(names: Any, n: int, *, default: str, what: str, unique: bool = False) -> list[str]:
    """``names`` of ``n`` items (``default`` + index where None): one per item, and unique
    where they label rows (a repeated name would merge two items)."""
    out = [f"{default} {i}" for i in range(n)] if names is None else [str(v) for v in names]
    if len(out) != n:
        raise ParameterError(f"`names` has {len(out)} entries for {n} {what}")
    dup = sorted({v for v in out if out.count(v) > 1}) if unique else []
    if dup:
        raise ParameterError(f"`names` must be unique: {dup} given more than once")
    return out


def check_finite(name: str, array: np.ndarray) -> np.ndarray:
    """Raise :class:`DataError` if ``array`` holds NaN or inf (counts them in the message)."""
    a = np.asarray(array)
    if a.dtype.kind in "fc":
        bad = ~np.isfinite(a)
        if bad.any():
            raise DataError(
                f"`{name}` contains {int(bad.sum())} non-finite value(s) (NaN/inf) out of {a.size}"
            )
    return a


def check_image(name: str, image: Any, *, ndim: int = 2, min_size: int = 2) -> np.ndarray:
    """Return ``image`` as a float64 array after checking dimensionality, size and finiteness."""
    a = np.asarray(image)
    if a.ndim != ndim:
        raise DataError(f"`{name}` must be {ndim}-D, got shape {a.shape}")
    if a.size == 0 or min(a.shape) < min_size:
        raise DataError(f"`{name}` is empty or too small, got shape {a.shape}")
    if a.dtype.kind not in "biuf":
        raise DataError(f"`{name}` must be numeric, got dtype {a.dtype}")
    a = a.astype(np.float64, copy=False)
    return check_finite(name, a)


# annotations (text, under ``from __future__ import annotations``) of a plain number
_NUMBER_TYPES = {"int", "float", "None"}
# a union member that holds numbers only: tuple[float, float], Sequence[float], ...
_NUMERIC_CONTAINER = re.compile(
    r"^(tuple|Sequence|list|np\.ndarray|NDArray)\[(int|float|np\.floating)"
    r"(, *(int|float|\.\.\.))*\]$"
)
# annotations of parameters that may take an iterator (not refused as one)
_ITERATOR_OK = ("Iterable", "Iterator", "Generator", "Callable", "IO")

# how text is checked for a parameter (see refuse_text_numbers)
PLAIN, NUMBER_OR_NAME, NUMBER_OR_OTHER, NO_TEXT_CHECK = "plain", "or-name", "or-other", ""


def _members(ann: str) -> set[str]:
    """The members of a union annotation (``"float | dict[str, int] | None"``), split at
    the top level only."""
    out, depth, cur = [], 0, ""
    for ch in ann:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "|" and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return set(out)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def _text_mode(ann: str, default: Any) -> str:
    """How text given for a parameter of annotation ``ann`` is checked.

    ``PLAIN``: a plain number (``float``, ``int | None``): any text is refused.
    ``NUMBER_OR_NAME``: a number or a named choice (``float | str``: ``"auto"``): text that
    reads as a number (``"12"``, ``"1e3"``, ``"nan"``) is refused, a name is left to the
    function.  ``NUMBER_OR_OTHER``: a number or something that is not text (``float |
    dict``, ``tuple[float, float]``, ``float | Sequence[float]``, and ``Any`` with a number
    or a tuple of numbers as default: a temperature or a ramp): any text is refused.
    """
    members = _members(ann)
    numeric = {m for m in members if m in ("int", "float") or _NUMERIC_CONTAINER.match(m)}
    if not numeric and ann == "Any":
        if _is_number(default) or (
            isinstance(default, tuple) and default and all(_is_number(v) for v in default)
        ):
            return NUMBER_OR_OTHER
        return NO_TEXT_CHECK
    if not numeric:
        return NO_TEXT_CHECK
    if members <= _NUMBER_TYPES:
        return PLAIN
    if "str" in members or any(m.startswith("Literal[") for m in members):
        return NUMBER_OR_NAME
    return NUMBER_OR_OTHER


def _number_params(func: Callable[..., Any]) -> dict[str, int | None]:
    """Parameters annotated as a plain number (``float``, ``int | None``, ...) and their
    position (``None``: keyword-only)."""
    out: dict[str, int | None] = {}
    for i, p in enumerate(inspect.signature(func).parameters.values()):
        ann = p.annotation
        if isinstance(ann, type):
            ann = ann.__name__
        if not isinstance(ann, str):
            continue
        if _text_mode(ann, p.default) == PLAIN:
            positional = p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            out[p.name] = i if positional else None
    return out


def _checked_params(func: Callable[..., Any]) -> tuple[tuple[str, str, bool], ...]:
    """``(name, text mode, iterator refused)`` of each named parameter of ``func``."""
    out = []
    for p in inspect.signature(func).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        ann = p.annotation
        if isinstance(ann, type):
            ann = ann.__name__
        ann = ann if isinstance(ann, str) else ""
        mode = _text_mode(ann, p.default) if ann else NO_TEXT_CHECK
        no_iter = not any(k in ann for k in _ITERATOR_OK)
        if mode or no_iter:
            out.append((p.name, mode, no_iter))
    return tuple(out)


# code object of a checked function -> (its name, its checked parameters)
_TEXT_CHECKED: dict[Any, tuple[str, tuple[tuple[str, str, bool], ...]]] = {}


def _numbers_of(code: Any, globs: dict[str, Any]) -> tuple[str, tuple[tuple[str, str, bool], ...]]:
    """The function of ``code`` among a module's globals (through decorators) and its
    checked parameters."""
    for obj in list(globs.values()):
        f = obj
        for _ in range(8):  # through decorators that keep __wrapped__
            if inspect.isfunction(f) and f.__code__ is code:
                return f.__name__, _checked_params(f)
            f = getattr(f, "__wrapped__", None)
            if f is None:
                break
    return code.co_name, ()


def _reads_as_number(text: Any) -> bool:
    try:
        float(text.decode() if isinstance(text, bytes) else text)
    except (TypeError, ValueError, UnicodeDecodeError):
        return False
    return True


def _is_iterator(value: Any) -> bool:
    """A generator, ``map``, ``zip``, ``iter(...)``: used up once read, and read by numpy as
    one object (``np.asarray(gen)`` is a 0-d object array); a file object is not one here."""
    return isinstance(value, Iterator) and not hasattr(value, "read")


def refuse_text_numbers(values: dict[str, Any]) -> None:
    """Refuse text given for a number, and an iterator given for an array, of the calling
    function's parameters.

    Called as the first statement of a public function, ``refuse_text_numbers(locals())``.
    ``detect_clusters(img, min_atoms="10")`` raised ``TypeError: '<' not supported between
    instances of 'str' and 'int'`` from deep inside (or, where a helper parsed it with
    ``float()``, silently accepted it); now every such parameter raises
    :class:`ParameterError` naming the function, the parameter and the value:

    * a plain number (``float``, ``int | None``): any text;
    * a number or a name (``float | str`` with ``"auto"``, ``bool | float | str``): text
      that reads as a number (``gain="12"`` was parsed by one function and refused as an
      unknown name by another); a name is the function's to check;
    * a number or anything but text (``float | dict``, ``tuple[float, float]``,
      ``float | Sequence[float]``, ``Any`` with a number as default): any text;
    * any parameter not annotated as an iterable or a callable: a generator or other
      iterator (``np.asarray`` reads it as one object; where a list is built from it, a
      second pass finds it empty).

    (A call, not a wrapping decorator: a wrapper frame would become the location of every
    warning the function issues with ``stacklevel=2``.)
    """
    frame = sys._getframe(1)
    try:
        entry = _TEXT_CHECKED.get(frame.f_code)
        if entry is None:
            entry = _TEXT_CHECKED[frame.f_code] = _numbers_of(frame.f_code, frame.f_globals)
    finally:
        del frame
    name, params = entry
    for p, mode, no_iter in params:
        value = values.get(p)
        if isinstance(value, (str, bytes, np.str_)):
            if mode in (PLAIN, NUMBER_OR_OTHER) or (
                mode == NUMBER_OR_NAME and _reads_as_number(value)
            ):
                raise ParameterError(f"{name}: `{p}` must be a number, got {value!r} (text)")
        elif no_iter and _is_iterator(value):
            raise ParameterError(
                f"{name}: `{p}` must be an array, a list or a table, got a "
                f"{type(value).__name__} (an iterator, read once and not as an array: "
                "pass list(...) or np.asarray(list(...)))"
            )


# code objects of wrappers (decorators) that warnings look through
_TRANSPARENT: set[Any] = set()


def warning_transparent(wrapper: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a decorator's ``wrapper`` as invisible to :func:`warn`'s ``stacklevel``.

    A wrapper adds a frame between a public function and its caller: a warning issued with
    ``stacklevel=2`` inside the function was reported at the wrapper's line
    (``fit.py:244: UserWarning: ...`` followed by ``return func(*args, **kwargs)``),
    not at the user's call.
    """
    _TRANSPARENT.add(wrapper.__code__)
    return wrapper


# set by :func:`internal_fits`: the fits of simulated references (a library's slabs) say
# nothing about the user's data; a context variable, as warnings filters are process-wide
# and not thread-safe (a folder read by dask threads let another thread's warning through)
_INTERNAL = contextvars.ContextVar("perovstem_internal_fits", default=False)


@contextlib.contextmanager
def internal_fits() -> Iterator[None]:
    """Within the block, :func:`warn` says nothing (in this thread or task only): for the
    fits of simulated reference images made inside a function, whose conditions are not
    the user's (a library slab at high dose misfitting the Gaussian columns)."""
    token = _INTERNAL.set(True)
    try:
        yield
    finally:
        _INTERNAL.reset(token)


def warn(message: str, category: type[Warning] = UserWarning, *, stacklevel: int = 2) -> None:
    """:func:`warnings.warn` whose ``stacklevel`` does not count the frames of wrappers
    marked with :func:`warning_transparent` (nor stops on one); silent within
    :func:`internal_fits`."""
    if _INTERNAL.get():
        return
    frame = sys._getframe(1)
    level = 2  # warnings.warn(stacklevel=2) is the frame calling this function
    todo = stacklevel - 1
    try:
        while frame.f_back is not None and (todo > 0 or frame.f_code in _TRANSPARENT):
            frame = frame.f_back
            level += 1
            if frame.f_code not in _TRANSPARENT:
                todo -= 1
    finally:
        del frame
    warnings.warn(message, category, stacklevel=level)
