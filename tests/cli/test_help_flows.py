"""Command help reads as flowing text in an 80-column terminal.

Old code: typer kept the docstrings' source line breaks after the first paragraph, so an
80-column terminal showed "... the dose-rate / dependence / come out across ..." (10 such
breaks over the commands).
"""

from __future__ import annotations

from typer.main import get_command

from perovstem.cli.main import _flowing, app, main


def _commands(cmd, path=()):
    subs = getattr(cmd, "commands", None)
    if subs is None:
        yield list(path)
        return
    for name, sub in subs.items():
        yield from _commands(sub, (*path, name))


def test_no_help_paragraph_breaks_mid_sentence_at_80_columns(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    paths = list(_commands(get_command(app)))
    assert len(paths) > 20 and ["atoms", "composition"] in paths
    broken = []
    for path in paths:
        assert main([*path, "--help"]) == 0
        lines = capsys.readouterr().out.splitlines()
        desc = []
        for line in lines[3:]:
            if line.startswith("╭"):
                break
            desc.append(line.strip())
        # a short line followed by more text of the same paragraph is a source line break
        broken += [
            f"{' '.join(path)}: {a!r}"
            for a, b in zip(desc, desc[1:], strict=False)
            if a and b and len(a) < 55 and not b.startswith("`")
        ]
    assert broken == []


def test_laid_out_paragraphs_keep_their_lines():
    text = "Summary.\n\nOne sentence\nthat flows.\n\nRun first:\n  perovstem demo\nthen this."
    assert _flowing(text) == (
        "Summary.\n\nOne sentence that flows.\n\nRun first:\n  perovstem demo\nthen this."
    )
