"""``perovstem atoms ...``: atom-column commands (fit; count and track by the counting module).

The sub-app :data:`atoms_app` is registered on the main app as ``atoms``; other modules add
commands to it with ``@atoms_app.command()``.
"""

from __future__ import annotations

import typer

from perovstem.cli.main import app

atoms_app = typer.Typer(
    name="atoms",
    help="Atom columns: find, fit (Gaussian model, SCS, CRLB), count, track.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(atoms_app, name="atoms")
