"""``-o``/``--out`` creates the missing parent folders of what it names, and every command
that takes it says so in its help (uqa17: the parents were created silently)."""

from __future__ import annotations

from perovstem.cli.main import app, main


def _out_options():
    from typer.main import get_command

    def walk(cmd, path=()):
        subs = getattr(cmd, "commands", None)
        if subs is None:
            yield path, cmd
            return
        for name, sub in subs.items():
            yield from walk(sub, (*path, name))

    for path, cmd in walk(get_command(app)):
        for p in cmd.params:
            if "-o" in getattr(p, "opts", ()):
                yield " ".join(path), p


def test_every_out_option_says_missing_parents_are_created():
    found = list(_out_options())
    assert len(found) >= 17, [c for c, _ in found]
    for command, p in found:
        assert "Missing parent folders are created." in (p.help or ""), (command, p.help)


def test_a_file_output_creates_its_parents(tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "img.npz"
    argv = ["simulate", "image", "-o", str(out), "--edge-A", "20", "--seed", "1"]
    assert main(argv) == 0, capsys.readouterr().err
    assert out.is_file()


def test_a_folder_output_creates_its_parents(tmp_path, capsys):
    cfg = tmp_path / "a.toml"
    cfg.write_text(
        '[run]\nname = "t"\nreport = false\n\n'
        '[[step]]\nrun = "simulate.nanocrystal"\nedge_A = 12.0\nview3d = false\n',
        encoding="utf-8",
    )
    out = tmp_path / "new" / "deeper" / "run"
    assert main(["run", str(cfg), "-o", str(out), "--quiet"]) == 0, capsys.readouterr().err
    assert (out / "perovstem-run.json").is_file()
