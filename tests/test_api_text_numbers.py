"""A number given as text to a public function is refused with a ParameterError.

Before: ``detect_clusters(img, min_atoms="10")`` raised ``TypeError: '<' not supported
between instances of 'str' and 'int'``, ``find_peaks(img, sigma_A="1")`` ``TypeError:
unsupported operand type(s) for /``, and where a helper parsed the value with ``float()``
(``find_columns(img, separation_A="3")``, ``fit_columns(..., max_iter="10")``) it was
silently accepted.  Found by a probe over every public function's numeric options.
"""

from __future__ import annotations

import importlib
import inspect

import numpy as np
import pytest

from perovstem._validation import check_int, check_positive, check_range
from perovstem.errors import ParameterError

_PACKAGES = (
    "perovstem.atoms",
    "perovstem.insitu",
    "perovstem.tomo",
    "perovstem.quantify",
    "perovstem.simulate",
)


def _number_params(func):
    """Parameters annotated as a plain number (``float``, ``int | None``) and their position."""
    out = {}
    for i, p in enumerate(inspect.signature(func).parameters.values()):
        ann = p.annotation.__name__ if isinstance(p.annotation, type) else p.annotation
        if not isinstance(ann, str):
            continue
        types = {t.strip() for t in ann.split("|")}
        if types <= {"int", "float", "None"} and types & {"int", "float"}:
            out[p.name] = i if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) else None
    return out


def _public_number_options():
    out = []
    for m in _PACKAGES:
        mod = importlib.import_module(m)
        names = getattr(mod, "__all__", None) or [n for n in dir(mod) if not n.startswith("_")]
        for name in names:
            f = getattr(mod, name)
            if not inspect.isfunction(f):
                continue
            for param, pos in _number_params(f).items():
                out.append(pytest.param(f, param, pos, id=f"{m}.{name}:{param}"))
    return out


_CASES = _public_number_options()


def test_the_probe_finds_the_numeric_options():
    assert len(_CASES) > 200  # ~100 public functions with number-annotated parameters


@pytest.mark.parametrize(("func", "param", "pos"), _CASES)
def test_text_for_a_number_is_refused_naming_the_parameter(func, param, pos):
    # every other argument is None: the text is refused before anything else is looked at
    sig = inspect.signature(func)
    required = [
        p.name
        for p in sig.parameters.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    kwonly = {
        p.name: None
        for p in sig.parameters.values()
        if p.default is p.empty and p.kind == p.KEYWORD_ONLY and p.name != param
    }
    args = [None] * len(required)
    kw = dict(kwonly)
    if pos is not None and pos < len(args):
        args[pos] = "10"
    else:
        kw[param] = "10"
    with pytest.raises(ParameterError) as info:
        result = func(*args, **kw)
        if inspect.isgenerator(result):  # a generator checks when it is first advanced
            next(result)
    assert f"`{param}` must be a number, got '10'" in str(info.value)


def test_detect_clusters_min_atoms_as_text():
    from perovstem import Image
    from perovstem.insitu import detect_clusters

    img = Image(np.random.default_rng(0).poisson(20.0, (32, 32)).astype(float), 0.5)
    with pytest.raises(ParameterError, match=r"detect_clusters: `min_atoms` must be a number"):
        detect_clusters(img, min_atoms="10")


@pytest.mark.parametrize(
    "check", [check_positive, check_int, lambda n, v: check_range(n, v, 0, 20)]
)
def test_shared_checks_refuse_text(check):
    # float("10") parsed it: a config or form value passed through unnoticed
    args = ("n", "10", 0) if check is check_int else ("n", "10")
    with pytest.raises(ParameterError, match=r"`n` must be"):
        check(*args)
