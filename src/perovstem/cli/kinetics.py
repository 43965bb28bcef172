"""``perovstem kinetics RUN_DIR...``: one mechanism table from several ``perovstem insitu`` runs.

Reads the ``frames`` and ``clusters`` tables of each output folder, combines them with
:func:`perovstem.insitu.combine_series` (per-frame fits per series, hop rates pooled per
condition, activation energy and dose-rate dependence across conditions) and writes the
table, a ``summary.json`` and an Arrhenius figure of the hop rates.
"""

from __future__ import annotations

from pathlib import Path

import typer

from perovstem.cli._common import examples
from perovstem.cli.main import app
from perovstem.errors import FileFormatError, OutputExistsError, ParameterError

#: files this command writes into --out
OUTPUT_NAMES = (
    "mechanism.parquet",
    "mechanism.csv",
    "mechanism.csv.json",
    "summary.json",
    "hop_rates.png",
)


def _table_files(run: Path) -> dict[str, Path]:
    """The ``frames`` and ``clusters`` table files of a ``perovstem insitu`` output folder."""
    if not run.is_dir():
        raise FileFormatError(
            f"{str(run)!r} is not a folder: give the output folders of `perovstem insitu` "
            "(one per series)"
        )
    files = {}
    for name in ("frames", "clusters"):
        found = [
            run / f"{name}.{ext}" for ext in ("parquet", "csv") if (run / f"{name}.{ext}").is_file()
        ]
        if not found:
            raise FileFormatError(
                f"{str(run)!r} has no {name}.parquet or {name}.csv: is it an output folder "
                "of `perovstem insitu`?"
            )
        files[name] = found[0]
    if not (run / "summary.json").is_file():
        # `perovstem insitu` writes summary.json last: its tables may be of a killed run
        raise FileFormatError(
            f"{str(run)!r} has its tables but no summary.json: `perovstem insitu` did not "
            "finish there (interrupted?); run it again"
        )
    return files


def _run_tables(run: Path) -> dict[str, object]:
    """The ``frames`` and ``clusters`` tables and the ``summary`` of a ``perovstem insitu``
    output folder."""
    import json

    from perovstem.io import read_table

    tables: dict[str, object] = {k: read_table(f) for k, f in _table_files(run).items()}
    try:
        tables["summary"] = json.loads((run / "summary.json").read_text())
    except (OSError, ValueError) as exc:
        raise FileFormatError(f"{str(run / 'summary.json')!r}: not readable ({exc})") from None
    return tables


def _same_runs(runs: list[Path]) -> list[tuple[Path, Path]]:
    """Pairs of RUN folders whose frames and clusters tables are byte-identical: a copied
    run counted twice (it doubled a condition's steps and narrowed its interval)."""
    from perovstem.io.runstore import sha256_file

    seen: dict[tuple[str, ...], Path] = {}
    pairs = []
    for r in runs:
        key = tuple(sha256_file(f) for f in _table_files(r).values())
        if key in seen:
            pairs.append((seen[key], r))
        else:
            seen[key] = r
    return pairs


def _beam_energy_note(runs: list[Path], tables: list[dict[str, object]]) -> str | None:
    """A note when the runs were recorded at different beam energies (or some without one):
    the conditions are told apart by temperature, dose rate and gas, not by the energy."""
    kv = {}
    for r, t in zip(runs, tables, strict=True):
        v = (t.get("summary") or {}).get("voltage_kV")
        kv[str(r.name)] = None if v is None else float(v)
    if len({v for v in kv.values()}) <= 1:
        return None
    parts = ", ".join(f"{n}: {'not recorded' if v is None else f'{v:g} kV'}" for n, v in kv.items())
    return (
        f"the runs differ in beam energy ({parts}): the beam's effects (Br loss, nucleation, "
        "hops) depend on it, but series of one temperature, dose rate and gas are pooled as "
        "one condition whatever their energy; combine runs of one energy"
    )


@app.command(
    "kinetics",
    epilog=examples(
        "perovstem kinetics s250_insitu s265_insitu s280_insitu s297_insitu -o study",
        "perovstem kinetics a_insitu b_insitu --name 250K-field1 --name 250K-field2",
    ),
)
def kinetics(
    runs: list[Path] = typer.Argument(
        ...,
        help="Output folders of `perovstem insitu`, one per series (several series under one "
        "condition are fields whose hop rates are pooled).",
    ),
    out: Path = typer.Option(
        None,
        "--out",
        "-o",
        help="Output folder (default: kinetics next to the first RUN). Missing parent "
        "folders are created.",
    ),
    name: list[str] = typer.Option(
        None,
        "--name",
        help="Name of each series in the table (one per RUN, in order; default: the folder names).",
    ),
    ci: str = typer.Option("profile", "--ci", help="Kinetic CIs: profile | bootstrap | wald."),
    table_format: str = typer.Option("parquet", "--table-format", help="parquet | csv."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write the hop-rate figure."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace the results of an earlier run in --out."
    ),
) -> None:
    """Combine several `perovstem insitu` runs into one mechanism table with Ea of Pb⁰ diffusion.

    Hop rates are pooled per condition; the activation energy and the dose-rate dependence
    come out across conditions. Each RUN is an output folder of `perovstem insitu`; its frames carry the series'
    temperature and dose rate (from the file or --conditions). Series of one condition are
    fields: their per-frame fits stay apart, their cluster tracks are pooled for the
    condition's hop rate (an activation energy within 0.05 eV needs about 200 hops per
    temperature: two fields of 20 frames at the demo's dose). Writes mechanism.parquet (or
    .csv), summary.json and hop_rates.png to --out.
    """
    from perovstem.cli._common import check_outputs, console
    from perovstem.insitu import combine_series
    from perovstem.io import save_figure, save_json, save_table
    from perovstem.io._write import check_writable_place
    from perovstem.quantify.mechanism import summary_lines

    if table_format not in ("parquet", "csv"):
        raise ParameterError(f"`--table-format` must be parquet or csv, got {table_format!r}")
    if ci not in ("profile", "bootstrap", "wald"):
        raise ParameterError(f"`--ci` must be profile, bootstrap or wald, got {ci!r}")
    names = list(name) if name else [r.name for r in runs]
    blank = [i + 1 for i, n in enumerate(names) if not str(n).strip()]
    if blank:
        raise ParameterError(f"`--name` {blank[0]} is empty: give each series a name")
    plus = [n for n in names if "+" in str(n)]
    if plus:  # pooled rows name their fields joined by '+': "a+b" read as two fields
        raise ParameterError(f"series name {plus[0]!r} holds '+', which joins pooled fields")
    if len(names) != len(runs):
        raise ParameterError(
            f"`--name` given {len(names)} times for {len(runs)} RUN folders: give one per RUN "
            "or none"
        )
    same = sorted({str(r) for r in runs if [x.resolve() for x in runs].count(r.resolve()) > 1})
    if same:
        raise ParameterError(f"RUN folder(s) {same} given twice: each series counts once")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ParameterError(
            f"series names {dup} repeat (folder names by default): give --name per RUN"
        )
    out = out or runs[0].resolve().parent / "kinetics"
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"`--out` {str(out)!r} is a file; give a folder")
    if out.resolve() in {r.resolve() for r in runs}:
        raise ParameterError(f"`--out` {str(out)!r} is one of the RUN folders: give another")
    held = [
        f"{n}.{e}"
        for n in ("frames", "clusters")
        for e in ("parquet", "csv")
        if (out / f"{n}.{e}").is_file()
    ]
    if held:
        # (--overwrite replaced that run's summary.json with this command's)
        raise OutputExistsError(
            f"`--out` {str(out)!r} holds a `perovstem insitu` run ({held[0]}); its "
            "summary.json would be replaced even with --overwrite: give another folder"
        )
    check_writable_place(out, what="--out", folder=True)
    table = out / f"mechanism.{table_format}"
    earlier = [out / n for n in OUTPUT_NAMES if (out / n).is_file()]
    check_outputs(*earlier, overwrite=overwrite)
    twice = _same_runs(runs)
    if twice:
        a, b = twice[0]
        raise ParameterError(
            f"RUN folders {str(a)!r} and {str(b)!r} hold identical frames and clusters tables "
            "(a copy of one run?): each series counts once"
        )
    tables = [_run_tables(r) for r in runs]
    summ = combine_series(
        [{k: t[k] for k in ("frames", "clusters")} for t in tables], names=names, ci=ci
    )
    energy = _beam_energy_note(runs, tables)
    if energy:
        summ.attrs.setdefault("notes", []).append(energy)
    out.mkdir(parents=True, exist_ok=True)
    written = [save_table(summ, table)]
    if table.with_suffix(".csv.json").is_file() and table_format == "csv":
        written.append(table.with_suffix(".csv.json"))  # the CSV's attrs, this run's
    if plots:
        from perovstem.plot.insitu import plot_hop_rates

        mob = summ[(summ["process"] == "mobility") & summ["value"].notna()]
        if mob["temperature_K"].notna().any():
            written.append(save_figure(plot_hop_rates(summ).figure, out / "hop_rates.png"))
    ea = summ[(summ["param"] == "Ea_eV") & (summ["observable"] == "Gamma1_per_s")]
    summary = {
        "runs": [str(r) for r in runs],
        "series": names,
        "conditions": summ.attrs.get("conditions", []),
        "n_frames": summ.attrs.get("n_frames", {}),
        "mobility_tracks": summ.attrs.get("mobility_tracks"),
        "pb0_diffusion_Ea_eV": None
        if ea.empty
        else {k: float(ea.iloc[0][k]) for k in ("value", "ci_low", "ci_high")},
        "mechanisms": summary_lines(summ),
        "notes": list(summ.attrs.get("notes", [])),
    }
    not_001 = [
        str(r) for r, t in zip(runs, tables, strict=True) if t["frames"].attrs.get("host_not_001")
    ]
    if not_001:  # (perovstem insitu marked their cluster rows; the combined rows are not)
        summary["notes"].append(
            f"{', '.join(not_001)}: the host is not a [001] projection (see its insitu notes): "
            "its clusters include host columns, so the nucleation, growth, coalescence and "
            "mobility rows it enters are not reliable"
        )
    written.append(save_json(summary, out / "summary.json"))
    kept = {Path(w).resolve() for w in written}
    for p in earlier:  # an earlier figure this run did not draw would mix two runs
        if p.resolve() not in kept:
            p.unlink(missing_ok=True)
    for line in summary["mechanisms"]:
        console.print(line)
    for n in summary["notes"]:
        console.print(f"note: {n}")
    console.print(f"wrote {len(written)} files to {out}")
