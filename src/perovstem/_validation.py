"""Small input checks shared by all sub-packages (messages name parameter and value)."""

from __future__ import annotations

import inspect
import sys
import warnings
from collections.abc import Callable
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
        types = {t.strip() for t in ann.split("|")}
        if types <= _NUMBER_TYPES and types & {"int", "float"}:
            positional = p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            out[p.name] = i if positional else None
    return out


# code object of a checked function -> (its name, its number-annotated parameters)
_TEXT_CHECKED: dict[Any, tuple[str, tuple[str, ...]]] = {}


def _numbers_of(code: Any, globs: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    """The function of ``code`` among a module's globals (through decorators) and its
    number-annotated parameters."""
    for obj in list(globs.values()):
        f = obj
        for _ in range(8):  # through decorators that keep __wrapped__
            if inspect.isfunction(f) and f.__code__ is code:
                return f.__name__, tuple(_number_params(f))
            f = getattr(f, "__wrapped__", None)
            if f is None:
                break
    return code.co_name, ()


def refuse_text_numbers(values: dict[str, Any]) -> None:
    """Refuse text for the calling function's parameters annotated as a plain number.

    Called as the first statement of a public function, ``refuse_text_numbers(locals())``.
    ``detect_clusters(img, min_atoms="10")`` raised ``TypeError: '<' not supported between
    instances of 'str' and 'int'`` from deep inside (or, where a helper parsed it with
    ``float()``, silently accepted it); now every such parameter raises
    :class:`ParameterError` naming the function, the parameter and the value.  Parameters
    whose annotation allows anything else (``float | str`` for "auto", arrays, sequences)
    are left to the function.  (A call, not a wrapping decorator: a wrapper frame would
    become the location of every warning the function issues with ``stacklevel=2``.)
    """
    frame = sys._getframe(1)
    try:
        entry = _TEXT_CHECKED.get(frame.f_code)
        if entry is None:
            entry = _TEXT_CHECKED[frame.f_code] = _numbers_of(frame.f_code, frame.f_globals)
    finally:
        del frame
    name, params = entry
    for p in params:
        value = values.get(p)
        if isinstance(value, (str, bytes, np.str_)):
            raise ParameterError(f"{name}: `{p}` must be a number, got {value!r} (text)")


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


def warn(message: str, category: type[Warning] = UserWarning, *, stacklevel: int = 2) -> None:
    """:func:`warnings.warn` whose ``stacklevel`` does not count the frames of wrappers
    marked with :func:`warning_transparent` (nor stops on one)."""
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
