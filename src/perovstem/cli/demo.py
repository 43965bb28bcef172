"""``perovstem demo``: the full study on built-in simulated data (owned by the pipeline work)."""

from __future__ import annotations

from pathlib import Path

import typer

from perovstem.cli._common import examples
from perovstem.cli.main import app


@app.command(
    epilog=examples(
        "perovstem demo",
        "perovstem demo --fast -o demo-fast",
    ),
)
def demo(
    out: Path = typer.Option(
        Path("perovstem-demo"),
        "--out",
        "-o",
        help="Output folder. Missing parent folders are created.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    fast: bool = typer.Option(False, "--fast", help="Smaller crystal, fewer frames (~1 min)."),
    scheduler: str = typer.Option(
        "auto", "--scheduler", "-s", help="serial | auto | local | local:N | tcp://host:8786."
    ),
) -> None:
    """Simulate a degradation study and analyse it with every module; writes OUT/report.html."""
    from perovstem.io._write import check_writable_place
    from perovstem.pipeline.demo import run_demo
    from perovstem.pipeline.executor import parse_scheduler

    parse_scheduler(scheduler)
    check_writable_place(out, what="--out", folder=True)
    report = run_demo(out, quiet=quiet, fast=fast, scheduler=scheduler)
    typer.echo(f"report: {report}")
