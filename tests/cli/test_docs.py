"""The documentation and the command line agree: every ``perovstem ...`` command written in
README.md and docs/*.md (and in the commands' own examples) names existing commands and
options in their canonical spelling, the help texts survive rich markup, and the old option
spellings keep working without being shown."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from perovstem.cli._common import OPTION_ALIASES
from perovstem.cli.main import app, canonical_argv, main

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _click_root():
    from typer.main import get_command

    return get_command(app)


def _leaves(cmd=None, path=()):
    cmd = cmd or _click_root()
    subs = getattr(cmd, "commands", None)
    if subs is None:
        yield path, cmd
        return
    for name, sub in subs.items():
        yield from _leaves(sub, (*path, name))


def _doc_commands() -> list[tuple[str, str, bool]]:
    """(where, command line, complete) of every ``perovstem`` command in the docs: lines of
    code blocks (with ``\\`` continuations joined, comments dropped; complete commands) and
    inline code spans (may name a command without its arguments)."""
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for m in re.finditer(r"```(\w*)\n(.*?)```", text, re.S):
            if m.group(1) not in ("", "bash", "sh", "console"):
                continue
            body = m.group(2).replace("\\\n", " ")
            line0 = text[: m.start()].count("\n") + 2
            for k, line in enumerate(body.splitlines()):
                cmds = [c.strip() for c in re.split(r"&&|;", line.split(" #", 1)[0])]
                for c in cmds:
                    if c.startswith("perovstem "):
                        found.append((f"{doc.name}:{line0 + k}", c, True))
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        for m in re.finditer(r"`(perovstem [^`]*)`", prose):
            found.append((f"{doc.name}: `{m.group(1)}`", m.group(1), False))
    return found


def _check_command_line(line: str, complete: bool = True) -> list[str]:
    """Problems of one command line: unknown command, unknown or non-canonical option, and
    (``complete``) a required option left out."""
    # optional parts are written [--flag value]; alternatives a|b
    tokens = shlex.split(line.replace("[", " ").replace("]", " "))[1:]
    cmd, path = _click_root(), ["perovstem"]
    i = 0
    while getattr(cmd, "commands", None) is not None and i < len(tokens):
        tok = tokens[i]
        if tok.startswith("-"):
            break
        if "|" in tok:  # "tomo align|reconstruct|facets": each must exist
            missing = [t for t in tok.split("|") if t not in cmd.commands]
            return [f"no command {' '.join(path)} {t}" for t in missing]
        if tok not in cmd.commands:
            return [f"no command {' '.join(path)} {tok}"]
        cmd, path, i = cmd.commands[tok], [*path, tok], i + 1
    names = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
    problems = []
    for tok in tokens[i:]:
        flag = tok.split("=", 1)[0]
        if not flag.startswith("-") or re.fullmatch(r"-[\d.]+(e[+-]?\d+)?", flag):
            continue  # a value (negative numbers included)
        if flag in OPTION_ALIASES and flag not in names:
            problems.append(f"{' '.join(path)}: old spelling {flag}, use {OPTION_ALIASES[flag]}")
        elif flag not in names:
            problems.append(f"{' '.join(path)}: no option {flag}")
    given = {t.split("=", 1)[0] for t in tokens[i:]}
    if complete and "--help" not in given and not any("|" in t for t in tokens):
        for p in cmd.params:
            if p.param_type_name == "option" and p.required and not given & set(p.opts):
                problems.append(f"{' '.join(path)}: required {p.opts[0]} missing")
    return problems


def test_doc_commands_exist_with_canonical_options():
    lines = _doc_commands()
    assert len(lines) >= 20  # the extraction itself works
    problems = [
        f"{where}: {p}" for where, line, full in lines for p in _check_command_line(line, full)
    ]
    assert not problems, "\n".join(problems)


def test_command_examples_are_valid_and_fit_a_terminal():
    main_commands = {
        ("insitu",),
        ("run",),
        ("demo",),
        ("atoms", "fit"),
        ("atoms", "count"),
        ("simulate", "image"),
        ("simulate", "series"),
        ("simulate", "tilt"),
        ("tomo", "align"),
        ("tomo", "reconstruct"),
        ("tomo", "facets"),
    }
    with_examples = set()
    for path, cmd in _leaves():
        epilog = cmd.epilog or ""
        lines = [s.strip() for s in epilog.splitlines() if s.strip().startswith("perovstem ")]
        if lines:
            with_examples.add(path)
        for line in lines:
            assert line.split()[1 : 1 + len(path)] == list(path), (path, line)
            assert len(line) <= 76, line  # one line on an 80-column terminal
            assert _check_command_line(line) == [], line
    assert main_commands <= with_examples, main_commands - with_examples


def test_every_command_says_what_it_does_in_one_line():
    for path, cmd in _leaves():
        first = (cmd.help or "").strip().splitlines()[0]
        assert 20 < len(first) <= 96 and first.endswith("."), (path, first)


def test_help_texts_survive_rich_markup():
    """Typer renders help as rich markup: '[default: x]' or '[run]' would vanish."""
    from rich.text import Text

    texts = []
    for path, cmd in _leaves():
        texts += [(path, cmd.help or ""), (path, cmd.epilog or "")]
        texts += [(path, getattr(p, "help", None) or "") for p in cmd.params]
    for path, s in texts:
        s = s.replace("\b\n", "\n")  # click's no-rewrap marker
        assert Text.from_markup(s).plain == s.replace("\\[", "["), (path, s)


def test_old_option_spellings_are_rewritten_only_where_they_apply():
    args, typed = canonical_argv(["simulate", "image", "-o", "a.tif", "--size=64", "--dose", "5"])
    assert args == ["simulate", "image", "-o", "a.tif", "--size-px=64", "--dose-e-per-A2", "5"]
    assert typed == {"--size-px": "--size", "--dose-e-per-A2": "--dose"}
    # a command without the canonical option keeps the token (click then reports it)
    assert canonical_argv(["tomo", "align", "t.npz", "--size", "3"])[0][-2] == "--size"
    # after "--" nothing is an option
    assert canonical_argv(["info", "--", "--pixel-size"])[0] == ["info", "--", "--pixel-size"]


def test_old_option_spellings_are_not_shown_in_help(capsys):
    for path, cmd in _leaves():
        names = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
        assert not names & set(OPTION_ALIASES), (path, names & set(OPTION_ALIASES))
    assert main(["simulate", "image", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--size-px" in out and "--dose-e-per-A2" in out
    assert not re.search(r"--size(?![-\w])|--dose(?![-\w])", out)


@pytest.mark.parametrize(
    ("flag", "shown"),
    [("--size", "`--size`"), ("--size-px", "`--size-px`")],
)
def test_errors_name_the_spelling_typed(tmp_path, capsys, flag, shown):
    argv = ["simulate", "image", "-o", str(tmp_path / "a.tif"), flag, "3"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{shown} (3, 3) px is too small" in err


def test_old_spellings_still_run(tmp_path, capsys):
    out = tmp_path / "a.npz"
    argv = ["simulate", "image", "-o", str(out), "--edge-A", "12", "--no-noise"]
    assert main([*argv, "--size", "64", "--dose", "2e3", "--pixel-size", "0.3"]) == 0
    import perovstem as ps

    img = ps.load(out)
    assert img.data.shape == (64, 64) and img.pixel_size_A == pytest.approx(0.3)
    assert img.dose_e_per_A2 == pytest.approx(2e3)
    # atoms fit without a cell: --separation/--rho/--types are the old spellings
    cols = tmp_path / "c.parquet"
    fit = ["atoms", "fit", str(out), "-o", str(cols), "--overlay", str(tmp_path / "c.png")]
    assert main([*fit, "--separation", "-2"]) == 2
    assert "`--separation` must be" in capsys.readouterr().err
    assert main([*fit, "--separation-A", "-2"]) == 2
    assert "`--separation-A` must be" in capsys.readouterr().err


def test_insitu_dose_error_names_the_flag(tmp_path, capsys):
    import perovstem as ps

    s = ps.Series(np.ones((2, 16, 16), np.float32), 0.5, time_s=[0.0, 1.0])
    p = ps.io.save_image(s, tmp_path / "s.npz")
    assert main(["insitu", str(p), "--dose-e-per-A2", "-5", "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "`--dose-e-per-A2` is negative" in err and "-5" in err


@pytest.mark.parametrize(
    ("message", "argv", "expected"),
    [
        ("`n_components` must be >= 1", ["atoms", "count", "t.csv", "-k", "0"], "`-k` must"),
        ("`n_components` must be >= 1", ["atoms", "count", "t.csv", "--components=0"], "`--c"),
        (
            "`max_tilt_deg` must be in (0, 90]",
            ["simulate", "tilt", "-o", "t.npz", "--tilt-range-deg", "100"],
            "`--tilt-range-deg` must",
        ),
        (
            "`min_distance_A` must be >= 0",
            ["atoms", "map", "i.tif", "--min-distance-A", "-1"],
            "`--min-distance-A` must",
        ),
        ("`n_chains` must be > 0", ["model3d", "t.csv", "-o", "m.xyz", "--chains", "0"], "`--ch"),
        (
            "`temperature_K` must be > 0",
            ["simulate", "series", "-o", "s.zarr", "--temperature-end-K", "-1"],
            "`--temperature-end-K` must",
        ),
        (
            "`radius_A` must be a positive number of Å, got -1.0",
            ["atoms", "strain", "c.csv", "--radius-A", "-1"],
            "`--radius-A` must",
        ),
        (
            "`eta_range` must be 0 <= low < high, got (nan, 66.0)",
            ["atoms", "map", "i.tif", "--eta-min", "nan"],
            "`--eta-min` must",
        ),
        (
            "`shape` must be (M >= 3, N >= 1), got (0, 0)",
            ["simulate", "tilt", "-o", "t.npz", "--size-px", "0"],
            "`--size-px` must",
        ),
        (
            "`separation_A` must be > 0",
            ["atoms", "fit", "i.tif", "--separation", "-2"],
            "`--separation` must",
        ),
    ],
)
def test_errors_name_the_flag_for_library_parameter_names(message, argv, expected):
    from perovstem.cli.main import flag_wording

    assert flag_wording(message, argv).startswith(expected)


def test_flags_named_in_doc_prose_exist():
    """A flag quoted on its own in the text (`--gain`, `--f-bulk`) is an option of some
    command, in its canonical spelling."""
    options = {o for _, cmd in _leaves() for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
    problems = []
    for doc in DOCS:
        prose = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)
        for m in re.finditer(r"`(--[A-Za-z][\w-]*)", prose):
            if m.group(1) not in options:
                problems.append(f"{doc.name}: {m.group(1)}")
    assert not problems, problems
