"""``perovstem run CONFIG``: run a TOML-described analysis (see perovstem.pipeline.config)."""

from __future__ import annotations

from pathlib import Path

import typer

from perovstem.cli._common import examples
from perovstem.cli.main import app


@app.command(
    epilog=examples(
        "perovstem run needle.toml --check",
        "perovstem run needle.toml -o needle-run --scheduler local:4",
        "perovstem run --list-steps",
    ),
)
def run(
    config: Path = typer.Argument(None, help="Analysis description (TOML).", show_default=False),
    out: Path = typer.Option(
        None,
        "--out",
        "-o",
        help="Run folder (default: <name>-run). Missing parent folders are created.",
    ),
    scheduler: str = typer.Option(
        None,
        "--scheduler",
        "-s",
        help="serial | auto | local | local:N | tcp://host:8786 (default: the file's "
        "\\[run] scheduler, else auto).",  # \\[: a literal bracket in rich markup
    ),
    workers: int = typer.Option(None, "--workers", "-w", help="LocalCluster workers."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    no_report: bool = typer.Option(False, "--no-report", help="Do not write report.html."),
    list_steps: bool = typer.Option(False, "--list-steps", help="List the available steps."),
    check: bool = typer.Option(False, "--check", help="Only validate the configuration."),
) -> None:
    """Run the analysis of CONFIG (TOML) into a run folder: tables, volumes, plots, report.html.

    Finished steps are reused when their inputs and parameters are unchanged.
    """
    from perovstem.errors import ParameterError

    if list_steps:
        from perovstem.pipeline import list_steps as _list

        for step in _list():
            avail = "" if step.available else "  [not available in this version]"
            typer.echo(f"{step.name}{avail}\n    {step.doc}")
            typer.echo(
                "    inputs: "
                + (
                    ", ".join(i + (" (list)" if i in step.list_inputs else "") for i in step.inputs)
                    or "-"
                )
                + "; "
                f"outputs: {', '.join(step.outputs) or '-'}"
            )
            for k, p in step.params.items():
                typer.echo(f"    {k} ({p.type_name}, default {p.default!r}): {p.doc}")
        return
    if config is None:
        raise ParameterError("missing CONFIG: give the analysis TOML file")
    from perovstem.pipeline import load_config, run_pipeline
    from perovstem.pipeline.executor import parse_scheduler

    if scheduler is not None:
        parse_scheduler(scheduler)
    if workers is not None and workers < 1:
        raise ParameterError(f"`--workers` must be >= 1, got {workers}")
    cfg = load_config(config)
    if out is not None:
        from perovstem.io._write import check_writable_place

        check_writable_place(out, what="--out", folder=True)
    if check:
        typer.echo(f"{config}: OK ({len(cfg.steps)} steps)")
        return
    result = run_pipeline(
        cfg,
        out=out,
        scheduler=scheduler,
        n_workers=workers,
        quiet=quiet,
        report=False if no_report else None,
    )
    if not quiet:
        typer.echo(f"run folder: {result.run_dir}")
        if result.report is not None:
            typer.echo(f"report: {result.report}")


@app.command(
    epilog=examples(
        "perovstem report needle-run --title 'FIB needle'",
    ),
)
def report(
    run_dir: Path = typer.Argument(..., help="A run folder written by `perovstem run`."),
    out: Path = typer.Option(
        None,
        "--out",
        "-o",
        help="HTML file (default: RUN_DIR/report.html). Missing parent folders are created.",
    ),
    title: str = typer.Option(None, "--title", help="Report title (default: the run title)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
) -> None:
    """Write (again) the self-contained HTML report of a run folder (RUN_DIR/report.html)."""
    from perovstem.errors import FileFormatError
    from perovstem.report import write_report

    if not Path(run_dir).exists():
        raise FileFormatError(f"RUN_DIR {str(run_dir)!r} does not exist")
    path = write_report(run_dir, out=out, title=title, overwrite=overwrite)
    typer.echo(f"report: {path}")
