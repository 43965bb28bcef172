"""Command line interface (typer). Only parses arguments, calls the public API, writes via io."""
