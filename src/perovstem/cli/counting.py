"""``perovstem atoms count`` and ``perovstem atoms track``: atom counting from SCS tables."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import typer

from perovstem.atoms._inputs import insignificant_columns, offset_summary, scs_column
from perovstem.cli._common import data_stem, detector_pair, examples
from perovstem.cli.atoms import atoms_app
from perovstem.errors import DataError, ParameterError

# texts of count_atoms / count_hybrid warnings that `atoms count` prints as its own WARNING
# lines (from res.attrs["counting"]): ladder_check not ok, offset_ambiguous
_REPORTED_BELOW = ("may merge count levels", "may all be offset by one atom")


def _default_out(table: Path, tag: str) -> Path:
    stem = data_stem(table)
    return table.with_name(f"{stem}_{tag}.parquet")


def _integration(choice: str, attrs: dict) -> str:
    """``--integration``: ``auto`` takes the Voronoi library for a table of Voronoi sums
    (``attrs["scs_estimator"]``, kept by Parquet and a CSV's .json sidecar), the total SCS otherwise."""
    if choice not in ("auto", "total", "voronoi"):
        raise ParameterError(f"--integration must be auto, total or voronoi, got {choice!r}")
    if choice != "auto":
        return choice
    return "voronoi" if attrs.get("scs_estimator") == "voronoi" else "total"


def need_normalised(path: Path, attrs: dict, model: str) -> None:
    """Refuse a column table fitted in detector counts (``attrs["scs_units"]``) for a
    ``model`` in Å² of the incident beam, naming the file and ``atoms fit --normalize``."""
    units = str(attrs.get("scs_units", "fraction"))
    if not units.startswith("fraction"):
        raise DataError(
            f"{str(path)!r}: the cross-sections are in {units!r}, not in Å² of the incident "
            f"beam as {model} is: refit with `perovstem atoms fit --normalize` (it needs the "
            "dose; add --gain auto when the file has no detector gain)"
        )


def _library_arg(
    spec: str | None,
    types: list[str],
    *,
    integration: str = "total",
    termination: str = "mixed",
    cd_fraction: float = 0.0,
    table: Any = None,
    max_atoms: int = 30,
    voltage_kV: float = 300.0,
    detector_mrad: tuple[float, float] = (65.0, 200.0),
):
    """``simulate`` → simulator libraries per type; ``fitted`` → the fitted-SCS library of
    the table's own fit (:func:`perovstem.atoms.fitted_library_for`); a file → one library
    table for all types."""
    if spec not in ("simulate", "fitted") and (termination != "mixed" or cd_fraction != 0):
        raise ParameterError(
            f"--termination ({termination}) and --cd-fraction ({cd_fraction:g}) only apply to "
            f"--library simulate or fitted, got --library {spec!r}"
        )
    if spec is None:
        return None
    if spec == "fitted":
        from perovstem.atoms import fitted_library_for

        if termination not in ("CsBr", "PbBr2"):
            raise ParameterError(
                "--library fitted renders slabs with CsBr or PbBr2 faces: give --termination "
                f"CsBr (the simulator's nanocrystals) or PbBr2, got --termination {termination}"
            )
        if types == ["all"]:
            raise ParameterError("--library fitted needs a table with a 'type' column")
        return fitted_library_for(
            table,
            max_atoms,
            types=types,
            termination=termination,
            cd_fraction=cd_fraction,
            voltage_kV=voltage_kV,
            detector_mrad=detector_mrad,
        )
    if spec == "simulate":
        from perovstem.simulate import scs_library

        known = {"PbBr", "Cs", "Br", "Pb"}
        bad = sorted(set(types) - known)
        if bad:
            raise ParameterError(
                f"--library simulate needs column types in {sorted(known)}, got {bad}"
                + (
                    " (the libraries are of [001] columns: a [011] or [111] fit is counted by "
                    "the Gaussian mixture alone, without --library)"
                    if any(t.endswith(("_011", "_111")) for t in bad)
                    else ""
                )
            )
        kw = {"integration": integration, "termination": termination, "cd_fraction": cd_fraction}
        kw |= {"voltage_kV": voltage_kV, "detector_mrad": detector_mrad}
        return {t: scs_library(t, 60, **kw) for t in types}
    from perovstem.io import read_table

    lib = read_table(spec)
    for col in ("n_atoms", "scs_A2"):
        if col not in lib.columns:
            raise DataError(
                f"--library {spec!r}: a library table needs columns n_atoms and scs_A2 "
                f"(and optionally type), got {list(lib.columns)}"
            )
    if "type" not in lib.columns:  # one library for every type
        return {t: lib for t in types} if types != ["all"] else lib
    have = sorted(lib["type"].astype(str).unique())
    missing = [t for t in types if t not in have]
    if missing:
        raise DataError(
            f"--library {spec!r} has libraries of the types {have}, not of {missing}: add "
            "them, or count only those with --type"
        )
    return {
        t: lib[lib["type"].astype(str) == t].drop(columns="type").reset_index(drop=True)
        for t in types
    }


def _voltage_arg(given: float | None, attrs: dict, library: str | None) -> tuple[float, str]:
    """The beam energy a simulated library is made at, kV, and where it came from: the
    option, the table's ``attrs['voltage_kV']`` (the image's, recorded by ``atoms fit``),
    or 300 (assumed).  Refused without a library to apply it to."""
    from perovstem.simulate.scs import _check_voltage

    if given is not None:
        if library not in ("simulate", "fitted"):
            raise ParameterError(
                f"--voltage-kV {given:g} only applies to --library simulate or fitted, got "
                f"--library {library!r}"
            )
        try:
            return _check_voltage(given), "--voltage-kV"
        except ParameterError:
            raise ParameterError(
                f"--voltage-kV must be 200 or 300 (the calibrated energies), got {given:g}"
            ) from None
    try:
        kv = float(attrs.get("voltage_kV"))
    except (TypeError, ValueError):
        return 300.0, "assumed: the table does not say, give --voltage-kV"
    if not (np.isfinite(kv) and kv > 0):
        return 300.0, "assumed: the table does not say, give --voltage-kV"
    if library in ("simulate", "fitted"):
        try:
            kv = _check_voltage(kv)
        except ParameterError:
            raise ParameterError(
                f"the table's image was recorded at {kv:g} kV (attrs['voltage_kV']), but the "
                "simulated libraries are calibrated at 200 and 300 kV only: count without "
                "--library, or give --voltage-kV to use one of them knowingly"
            ) from None
    return kv, "the image's"


def _scale_prior_arg(spec: str | None) -> tuple[float, float] | None:
    """``--scale-prior CENTER,LOG_SD`` → ``(center, log_sd)`` (None: count_atoms' default)."""
    if spec is None:
        return None
    parts = spec.split(",")
    try:
        c, sd = (float(v) for v in parts)
    except ValueError:
        c = sd = float("nan")
    if not (np.isfinite(c) and c > 0 and np.isfinite(sd) and sd > 0):
        raise ParameterError(
            "--scale-prior must be CENTER,LOG_SD with CENTER > 0 and LOG_SD > 0 (e.g. "
            f"0.92,0.03), got {spec!r}"
        )
    return c, sd


def _check_enough_columns(
    df: Any, table: Path, components: int | None, *, n_dropped: int, n_all: int
) -> None:
    """Refuse, in the terms of `atoms count`, a type with fewer measured columns than a
    Gaussian mixture needs: two per component (one component without `-k`)."""
    if "type" in df.columns:
        per_type = df["type"].astype(str).value_counts().sort_index()
    else:
        per_type = {"all": len(df)}
    need = 2 * (components if components is not None else 1)
    for typ, n in dict(per_type).items():
        if n >= need:
            continue
        what = f"{n} measured column(s)" + ("" if typ == "all" else f" of type {typ!r}")
        if n_dropped:
            what += f" ({n_dropped} of {n_all} columns not counted, see above)"
        others = [t for t in dict(per_type) if t != typ and dict(per_type)[t] >= need]
        if components is not None and n >= 2:
            fix = f"lower `-k`/`--components` to at most {n // 2}"
        elif others:
            fix = f"count the other types alone (`--type {' --type '.join(others)}`)"
        else:
            fix = "nothing a mixture can count: refit, or `--method library --library simulate`"
        need_txt = (
            f"`-k`/`--components` {components} needs at least {need} (two per component)"
            if components is not None
            else "a Gaussian mixture needs at least 2 columns"
        )
        raise DataError(f"{str(table)!r}: {what}; {need_txt}: {fix}")


@atoms_app.command(
    "count",
    epilog=examples(
        "perovstem atoms count nc_columns.parquet --method hybrid --library simulate",
        "perovstem atoms count nc_columns.parquet --type PbBr --criteria-out icl.csv",
        "perovstem atoms count nc.parquet --library simulate --scale-prior 0.92,0.03",
    ),
)
def count(
    table: Path = typer.Argument(
        ..., help="Column table with 'scs' (or 'scs_A2') and optionally 'type'."
    ),
    out: Path = typer.Option(
        None,
        "--out",
        "-o",
        help="Output table (.parquet/.csv). Missing parent folders are created.",
    ),
    method: str = typer.Option(
        "gmm",
        "--method",
        help="gmm | ladder | library | hybrid.  ladder: library-free smooth ladder mixture "
        "(levels by BIC with an over-split guard, first count estimated unless "
        "--first-count is given; docs/counting.md).",
    ),
    max_components: int = typer.Option(
        None, "--max-components", help="Largest k of the sweep (default 30)."
    ),
    components: int = typer.Option(None, "--components", "-k", help="Fix k (skip the choice)."),
    equal_spacing: bool = typer.Option(False, "--equal-spacing", help="Equally spaced means."),
    criterion: str = typer.Option("icl", "--criterion", help="icl | bic | aic."),
    rule: str = typer.Option("prominence", "--rule", help="prominence | first | global."),
    first_count: int = typer.Option(
        None,
        "--first-count",
        help="Atoms in the lowest component (default 1 for gmm, estimated for ladder).",
    ),
    check_ladder: bool = typer.Option(
        True,
        "--ladder-check/--no-ladder-check",
        help="Without a library: check that the components form an SCS ladder (merged count "
        "levels), and if ICL's k fails, take the lowest-ICL k that passes.",
    ),
    library: str = typer.Option(
        None,
        "--library",
        help="'simulate', 'fitted' (the library of the table's own fit, "
        "perovstem.atoms.fitted_library_for: slabs imaged at its pixel size, field and dose "
        "and fitted like it; needs the Parquet table of 'atoms fit' and --termination CsBr "
        "or PbBr2) or a table (n_atoms, scs_A2) file (with a 'type' column: one library "
        "per column type, e.g. from a multislice of the image's conditions).",
    ),
    integration: str = typer.Option(
        "auto",
        "--integration",
        help="Which SCS '--library simulate' tabulates: total (a column's own cross-section, "
        "Gaussian fits), voronoi (Voronoi-cell sums inside a crystal, 'atoms fit --scs "
        "voronoi'), or auto: voronoi for a table of Voronoi sums (Parquet and a CSV with "
        "its .json sidecar keep the mark; otherwise give it explicitly), total otherwise.",
    ),
    termination: str = typer.Option(
        "mixed",
        "--termination",
        help="Crystal surfaces '--library simulate' (or fitted) assumes: mixed (one CsBr and one PbBr2 "
        "face; every column the same number of layers), CsBr (usual for CsPbBr3 "
        "nanocrystals: Pb-Br columns hold one more Br), PbBr2.",
    ),
    cd_fraction: float = typer.Option(
        0.0,
        "--cd-fraction",
        help="Cd fraction x on the Pb sites '--library simulate' (or fitted) assumes (0-1): Cd lowers "
        "the Pb-Br cross-sections, so a Cd-alloyed crystal counted with x = 0 reads too few "
        "Pb-Br atoms (perovstem.atoms.fit_composition estimates x).",
    ),
    voltage_kV: float = typer.Option(
        None,
        "--voltage-kV",
        help="Beam energy '--library simulate' (or fitted) is simulated at, kV (300 or 200): "
        "default the image's, as 'atoms fit' recorded it, else 300 (said).  Columns scatter "
        "more at 200 kV: a 200 kV image counted with a 300 kV library reads far too many "
        "atoms.",
    ),
    semiangle_mrad: float = typer.Option(
        None,
        "--semiangle-mrad",
        help="Probe semi-angle of the image, mrad (default: as 'atoms fit' recorded it from "
        "the file). The simulated library is for 20 mrad; another is warned about.",
    ),
    detector_mrad: str = typer.Option(
        None,
        "--detector-mrad",
        help="INNER,OUTER: annular detector of the image, mrad (default: as 'atoms fit' "
        "recorded it from the file). The simulated library is for 65,200; another is warned "
        "about (counts may all be off by whole atoms).",
    ),
    scale_prior: str = typer.Option(
        None,
        "--scale-prior",
        help="CENTER,LOG_SD: prior on the common scale cross-section / library (--method gmm "
        "with --library), e.g. 0.92,0.03 when the calibration is known.  It decides whether "
        "a flat crystal's counts are n or n+-1; default 1,0.03 for a fitted library, 1,0.1 "
        "otherwise (docs/counting.md, Offset ambiguity).",
    ),
    column_type: list[str] = typer.Option(
        [], "--type", help="Count only these column types (repeatable)."
    ),
    criteria_out: Path = typer.Option(
        None, "--criteria-out", help="Write the ICL/BIC/AIC curves per type (.csv/.parquet)."
    ),
    min_significance: float = typer.Option(
        3.0,
        "--min-significance",
        help="Columns whose cross-section is not above this many standard errors (scs_err) "
        "are not counted (peaks on the vacuum or support); they stay in the output with "
        "counted = false.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
) -> None:
    """Count atoms per column from cross-sections (GMM + ICL, library, hybrid); writes a table."""
    import pandas as pd

    from perovstem.atoms import count_atoms, count_hybrid, count_library
    from perovstem.atoms._conditions import (
        COUNT_REMEDY,
        UNKNOWN_DETECTOR_NOTE,
        library_conditions,
    )
    from perovstem.cli._common import about_file, check_outputs, console, nonempty_table
    from perovstem.io import read_table, save_table

    if method not in ("gmm", "ladder", "library", "hybrid"):
        raise ParameterError(f"--method must be gmm, ladder, library or hybrid, got {method!r}")
    if method == "ladder" and library is not None:
        raise ParameterError(
            f"--method ladder is library-free; --library {library!r} needs --method gmm, "
            "library or hybrid"
        )
    prior = _scale_prior_arg(scale_prior)
    detector = None if detector_mrad is None else detector_pair(detector_mrad)
    if (semiangle_mrad is not None or detector is not None) and library not in (
        "simulate",
        "fitted",
    ):
        raise ParameterError(
            "--semiangle-mrad and --detector-mrad are checked against the simulated library: "
            f"they need --library simulate or fitted, got --library {library!r}"
        )
    if semiangle_mrad is not None and not (np.isfinite(semiangle_mrad) and semiangle_mrad > 0):
        raise ParameterError(f"--semiangle-mrad must be > 0, got {semiangle_mrad!r}")
    if prior is not None and (method != "gmm" or library is None):
        raise ParameterError(
            f"--scale-prior {scale_prior} is the prior of the library anchor: it needs "
            f"--method gmm with --library, got --method {method}"
            + ("" if library is not None else " and no --library")
        )
    if components is not None and max_components is not None:
        # -k skips the sweep that --max-components bounds: one of them would be ignored
        raise ParameterError(
            f"give either --components/-k (fixed k = {components}) or --max-components "
            f"(largest k of the sweep = {max_components}), not both"
        )
    out = out or _default_out(table, "counts")
    check_outputs(out, criteria_out, overwrite=overwrite)
    df = read_table(table)
    nonempty_table(df, table)
    if column_type:
        if "type" not in df.columns:
            raise DataError(f"{table}: --type given but the table has no 'type' column")
        known = sorted(df["type"].astype(str).unique())
        if not set(column_type) & set(known):
            raise ParameterError(
                f"--type {column_type} matches no column of {table}; types: {known}"
            )
        df = df[df["type"].astype(str).isin(column_type)]
    if not (np.isfinite(min_significance) and min_significance >= 0):
        raise ParameterError(f"--min-significance must be >= 0, got {min_significance!r}")
    full, weak = df, insignificant_columns(df, min_significance)
    if weak.all():
        raise DataError(
            f"{table}: no column has a cross-section above {min_significance:g} standard "
            "errors: nothing to count"
        )
    if weak.any():
        df = df[~weak]
        # a NaN cross-section was never measured (e.g. a width the data do not resolve):
        # not a peak on the vacuum, so it is named apart
        scs_col = scs_column(full)
        unmeasured = weak & ~np.isfinite(full[scs_col].to_numpy(float)) if scs_col else weak & False
        if unmeasured.any():
            console.print(
                f"{int(unmeasured.sum())} of {len(full)} columns not counted: cross-section "
                "not measured (NaN: the fit could not resolve them, see its warnings)"
            )
        low = weak & ~unmeasured
        if low.any():
            console.print(
                f"{int(low.sum())} of {len(full)} columns not counted: cross-section not "
                f"above {min_significance:g} standard errors (peaks on the vacuum or support?)"
            )
    types = sorted(df["type"].astype(str).unique()) if "type" in df.columns else ["all"]
    if method == "gmm":  # the API named its `max_components` here, an option not given
        _check_enough_columns(df, table, components, n_dropped=int(weak.sum()), n_all=len(full))
    integ = _integration(integration, df.attrs)
    if integration != "auto" and library != "simulate":
        raise ParameterError(
            f"--integration {integration} only applies to --library simulate, got --library "
            f"{library!r}"
        )
    if library == "simulate":  # (the counting's own units check names a Python function)
        need_normalised(table, df.attrs, "the simulated library")
    kv, kv_from = _voltage_arg(voltage_kV, df.attrs, library)
    # the calibrated detector nearest the image's (65-200 or 65-131 mrad), else 65-200 said
    angles, angles_note = library_conditions(
        df.attrs, semiangle_mrad=semiangle_mrad, detector_mrad=detector
    )
    lib_detector = tuple(angles["library"]["detector_mrad"])
    lib = _library_arg(
        library,
        types,
        integration=integ,
        termination=termination,
        cd_fraction=cd_fraction,
        table=df,
        max_atoms=components or max_components or 30,
        voltage_kV=kv,
        detector_mrad=lib_detector,
    )
    if method in ("library", "hybrid") and lib is None:
        raise ParameterError(
            f"--method {method} needs --library ('simulate', 'fitted' or a table file)"
        )
    # the library's "counts may be offset" and "count levels merged?" warnings: this command
    # prints them itself, below, naming its options (they printed twice, once as a raw
    # UserWarning with a source line); any other warning goes on to the CLI's warning lines
    with warnings.catch_warnings(record=True) as caught, about_file(table):
        if method == "ladder":
            res = count_atoms(
                df,
                n_components=components,
                **({} if max_components is None else {"max_components": max_components}),
                first_count=first_count,
                method="ladder",
            )
        elif method == "gmm":
            res = count_atoms(
                df,
                n_components=components,
                **({} if max_components is None else {"max_components": max_components}),
                equal_spacing=equal_spacing,
                criterion=criterion,
                rule=rule,
                first_count=first_count,
                check_ladder=check_ladder,
                library=lib,
                scale_prior=prior,
            )
        elif method == "library":
            res = count_library(df, lib)
        else:
            res = count_hybrid(df, lib)
    for w in caught:
        if not any(s in str(w.message) for s in _REPORTED_BELOW):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if library == "simulate":
        res.attrs.setdefault("counting", {}).update(
            library_integration=integ, termination=termination, cd_fraction=float(cd_fraction)
        )
    if library in ("simulate", "fitted"):  # both are made from the shipped abTEM tables
        res.attrs.setdefault("counting", {})["library_angles"] = angles
    else:
        angles_note = None
    if weak.any():  # every input row in the output, the uncounted ones marked
        whole = full.copy()
        for c in res.columns:
            if c not in whole.columns:
                whole[c] = pd.Series(np.nan, index=whole.index, dtype=res[c].dtype)
            whole.loc[~weak, c] = res[c].to_numpy()
        whole["counted"] = ~weak
        whole.attrs = dict(res.attrs)
        res = whole
    save_table(res, out, overwrite=overwrite)
    if angles_note:
        console.print(f"WARNING {angles_note}{COUNT_REMEDY}")
    elif library in ("simulate", "fitted") and angles["detector_matches"] is None:
        console.print(f"note: {UNKNOWN_DETECTOR_NOTE}")
    info = res.attrs.get("counting", {})
    counted = res[res["counted"]] if "counted" in res.columns else res
    for t in types:
        m = counted["type"].astype(str) == t if "type" in counted.columns else slice(None)
        sub = counted[m]
        extra = ""
        ti = info.get(t, {})
        if "n_components" in ti:
            extra = f", k = {ti['n_components']} ({ti.get('rule', '')}; minima {ti.get('local_minima')})"
        console.print(
            f"{t}: {len(sub)} columns, {int(sub['n_atoms'].sum())} atoms, "
            f"counts {int(sub['n_atoms'].min())}–{int(sub['n_atoms'].max())}{extra}"
        )
        if method == "gmm" and lib is None and ti.get("n_components") == 1:
            # one level: every column gets the first count, which then says nothing
            console.print(
                f"{t}: WARNING one count level only: every column is counted as the first "
                f"count ({first_count if first_count is not None else 1}, --first-count); "
                "columns of one thickness look alike in their cross-sections, which then "
                "cannot say how many atoms they hold. Count with --library fitted (the "
                "library of the table's own fit; fit with --normalize) or --library simulate."
            )
        anchor = ti.get("library_anchor") or ti  # count_atoms' anchor, count_hybrid's fields
        if anchor.get("offset_ambiguous"):
            console.print(
                f"{t}: WARNING counts may all be offset by whole atoms: "
                f"{offset_summary(anchor)}; n_atoms_std includes it). "
                + (
                    "Give --scale-prior CENTER,LOG_SD from a known calibration (the fitted "
                    "library's default prior is 1,0.03)."
                    if library == "fitted"
                    else "Count with --library fitted (the library of the table's own fit) "
                    "or give --scale-prior CENTER,LOG_SD from a known calibration."
                )
            )
        chk = ti.get("ladder_check")
        if chk and not chk.get("ok", True):
            # the components may not be single count levels (atoms.count.ladder_check)
            console.print(
                f"{t}: WARNING counts may be too low (count levels merged?): "
                + "; ".join(chk["messages"])
                + ". Use --library or check --criteria-out."
            )
    if criteria_out is not None and method in ("gmm", "ladder"):
        rows = []
        for t in types:
            cc = info.get(t, {}).get("criterion_curve", {})
            if cc:
                d = pd.DataFrame(cc)
                d.insert(0, "type", t)
                rows.append(d)
        if rows:
            save_table(pd.concat(rows, ignore_index=True), criteria_out, overwrite=overwrite)
    # the detector's source: the image's (recorded or given) when it matched one
    det = (
        f"{lib_detector[0]:g}–{lib_detector[1]:g} mrad"
        + {
            None: " (assumed)",
            True: " (the image's)",
            False: "",
        }[angles["detector_matches"]]
    )
    if library == "simulate":
        console.print(
            f"library: simulated, {integ} SCS, {termination} termination, x(Cd) = "
            f"{cd_fraction:g}, {kv:g} kV ({kv_from}), {det}"
        )
    elif library == "fitted":
        a = next(iter(lib.values())).attrs
        console.print(
            f"library: fitted (the table's fit repeated on simulated slabs at "
            f"{a['dose_e_per_A2']:g} e/A^2, {a['pixel_size_A']:g} A px), {termination} "
            f"termination, x(Cd) = {cd_fraction:g}, {kv:g} kV ({kv_from}), {det}"
        )
    console.print(f"wrote {out}")


def _check_time_order(frames: list, names: list) -> None:
    """Refuse tables given out of acquisition order where they record it (``atoms fit
    --frame`` writes the frame index and time; a glob sorts f10 before f2)."""
    import numpy as np

    for key in ("time_s", "frame"):
        vals = [f.attrs.get(key) for f in frames]
        if all(v is not None for v in vals):
            v = np.asarray(vals, float)
            if np.any(np.diff(v) <= 0):
                order = ", ".join(f"{x:g}" for x in v)
                raise DataError(
                    f"the tables are not in acquisition order: their {key} read {order} "
                    f"(give them in time order; {names[0]} … {names[-1]})"
                )
            return


def _match_by_position(sel: list, names: list, column_type: str) -> list:
    """Each frame's columns in the first frame's order, matched by position (nearest column
    after the median shift between the frames: drift), one to one and within half the
    columns' spacing.  Before, rows were paired by their order: independently fitted frames
    paired columns up to 35 Å apart, and the counts went with the wrong columns (audit)."""
    import numpy as np
    from scipy.spatial import cKDTree

    ref = sel[0][["x_A", "y_A"]].to_numpy(float)
    if len(ref) < 2:
        return sel
    spacing = float(np.median(cKDTree(ref).query(ref, k=2)[0][:, 1]))
    tol = 0.5 * spacing
    out = [sel[0]]
    for k in range(1, len(sel)):
        xy = sel[k][["x_A", "y_A"]].to_numpy(float)
        tree = cKDTree(xy)
        # the drift between the frames: the centroids' shift (the same columns in both), then
        # the median of the nearest pairs'
        shift = xy.mean(axis=0) - ref.mean(axis=0)
        for _ in range(3):
            _, j = tree.query(ref + shift)
            shift = shift + np.median(xy[j] - (ref + shift), axis=0)
        dist, j = tree.query(ref + shift)
        bad = dist > tol
        taken = np.bincount(j, minlength=len(xy))
        bad |= taken[j] > 1  # one column of the frame for two of the first
        if bad.any():
            raise DataError(
                f"{names[k]}: {int(bad.sum())} of {len(ref)} {column_type} columns have no column "
                f"of {names[0]} of their own within {tol:.2g} Å (half their spacing), after a "
                f"shift of ({shift[0]:.2g}, {shift[1]:.2g}) Å: not the same columns (fit every "
                "frame from one set of positions, `atoms fit --positions`, or give a 'column' id)"
            )
        out.append(sel[k].iloc[j])
    return out


@atoms_app.command(
    "track",
    epilog=examples(
        "perovstem atoms track f*_columns.parquet --type PbBr -o tracks.parquet",
    ),
)
def track(
    tables: list[Path] = typer.Argument(
        ...,
        help="One column table per frame, in acquisition order (the same columns: paired by a "
        "'column' id, else by x_A/y_A position after the frames' shift), or one table with a "
        "'frame' column.",
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Output long table (.parquet/.csv). Missing parent folders are created.",
    ),
    library: str = typer.Option(
        "simulate",
        "--library",
        help="'simulate', 'gmm' (states from a GMM of all frames) or a (n_atoms, scs_A2) file.",
    ),
    column_type: str = typer.Option(
        None, "--type", help="Column type to track (default: the only type present)."
    ),
    model: str = typer.Option("free", "--model", help="free | loss | dose."),
    dose: float = typer.Option(
        None,
        "--dose-e-per-A2",
        help="Dose per frame, e⁻/Å² (default: the tables' 'dose_e_per_A2').",
    ),
    max_states: int = typer.Option(None, "--max-states", help="Library entries used (G)."),
    max_step: int = typer.Option(None, "--max-step", help="Largest count change per frame."),
    include_zero: bool = typer.Option(False, "--include-zero", help="Allow empty columns."),
    rate: str = typer.Option("column", "--rate", help="column | shared (model dose)."),
    fixed_scale: bool = typer.Option(
        False, "--fixed-scale", help="Calibrated library: do not fit the emission scale c."
    ),
    columns_out: Path = typer.Option(
        None, "--columns-out", help="Per-column loss table (.parquet/.csv)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
) -> None:
    """Count atoms per column through frames (hidden Markov model); writes counts per frame."""
    import numpy as np

    from perovstem.atoms import fit_hmm
    from perovstem.atoms.library import as_library
    from perovstem.cli._common import check_outputs, console
    from perovstem.io import read_table, save_table
    from perovstem.io.write import TABLE_SUFFIXES

    # (a --columns-out .xlsx was refused after the track table was written)
    check_outputs(
        out,
        columns_out,
        overwrite=overwrite,
        suffixes={"--out": (TABLE_SUFFIXES, out), "--columns-out": (TABLE_SUFFIXES, columns_out)},
    )
    frames = [read_table(p) for p in tables]
    if len(frames) == 1 and "frame" in frames[0].columns:
        big = frames[0]
        frames = [g for _, g in big.groupby("frame", sort=True)]
    if len(frames) < 2:
        raise DataError("track needs at least 2 frames (several tables, or a 'frame' column)")
    col = next((c for c in ("scs", "scs_A2") if c in frames[0].columns), None)
    for i, f in enumerate(frames):
        if col is None or col not in f.columns:
            name = tables[i] if len(tables) == len(frames) else tables[0]
            raise DataError(
                f"{name}: needs an {col or 'scs'!r} column like the first table, "
                f"got {list(f.columns)[:8]}"
            )
    if column_type is None:
        present = sorted(frames[0]["type"].astype(str).unique()) if "type" in frames[0] else []
        if len(present) > 1:
            raise ParameterError(f"several column types {present}: choose one with --type")
        column_type = present[0] if present else "PbBr"
    elif "type" in frames[0].columns and column_type not in set(frames[0]["type"].astype(str)):
        present = sorted(frames[0]["type"].astype(str).unique())
        raise ParameterError(f"--type {column_type!r} matches no column; types: {present}")
    sel = [f[f["type"].astype(str) == column_type] if "type" in f.columns else f for f in frames]
    sizes = {len(f) for f in sel}
    if len(sizes) != 1:
        raise DataError(f"frames have different numbers of {column_type} columns: {sorted(sizes)}")
    names = (
        tables
        if len(tables) == len(frames)
        else [f"{tables[0]} frame {k}" for k in range(len(sel))]
    )
    if len(tables) == len(frames):
        _check_time_order(frames, names)
    if "column" in sel[0].columns:
        sel = [f.sort_values("column") for f in sel]
    elif all({"x_A", "y_A"} <= set(f.columns) for f in sel):
        sel = _match_by_position(sel, names, column_type)
    obs = np.stack([f[col].to_numpy(dtype=float) for f in sel])
    if dose is None:
        doses = [f.attrs.get("dose_e_per_A2") for f in frames]
        if all(d is not None for d in doses):
            dose_arr = np.asarray(doses, float)
        elif "dose_e_per_A2" in frames[0].columns:
            dose_arr = np.array([float(f["dose_e_per_A2"].iloc[0]) for f in frames])
        else:
            dose_arr = None
    else:
        dose_arr = np.full(len(frames), float(dose))
    if library == "gmm":
        lib_arg = "gmm"
    else:
        if library == "simulate":
            from perovstem.simulate import scs_library

            # the SCS the tables hold: Voronoi sums or total cross-sections; at the beam
            # energy of the fitted images where `atoms fit` recorded it
            integ = _integration("auto", frames[0].attrs)
            kv = _voltage_arg(None, frames[0].attrs, "simulate")[0]
            from perovstem.atoms._conditions import library_detector

            det = library_detector(frames[0].attrs)  # the fitted images' detector
            lib = scs_library(column_type, 60, integration=integ, voltage_kV=kv, detector_mrad=det)
        else:
            lib = read_table(library)
        n_lib, v_lib = as_library(lib)
        if not include_zero:
            keep = n_lib >= 1
            n_lib, v_lib = n_lib[keep], v_lib[keep]
        lib_arg = np.column_stack([n_lib, v_lib])
    init = None
    if library == "simulate" and not fixed_scale and column_type != "Cs":
        # a pristine cube's one Pb-Br thickness does not fix the scale; the Cs columns of the
        # first frame do (see start_scale_from_types)
        from perovstem.atoms.library import start_scale_from_types
        from perovstem.simulate import scs_library

        c0 = start_scale_from_types(
            frames[0],
            {
                t: scs_library(t, 60, integration=integ, voltage_kV=kv, detector_mrad=det)
                for t in (column_type, "Cs")
            },
            column_type,
        )
        init = None if c0 is None else {"scale": c0}
    res = fit_hmm(
        obs,
        lib_arg,
        init=init,
        model=model,
        dose_e_per_A2=dose_arr,
        max_states=max_states,
        include_zero=include_zero,
        max_step=max_step,
        rate=rate,
        fit_scale=not fixed_scale,
        # the Cs columns' scale is also the prior of the readings (offset_probability)
        **({} if init is None else {"scale_prior": (init["scale"], 0.03)}),
    )
    if res.offset_ambiguous:
        console.print(
            f"{column_type}: WARNING counts may all be offset by whole atoms: "
            f"{offset_summary({'offset_probability': res.offset_probability})}; the atoms "
            "lost are not affected). Count with a library measured by the data's own "
            "estimator (perovstem.atoms.fitted_scs_library)."
        )
    long = res.table(obs)
    long.insert(2, "type", column_type)
    save_table(long, out, overwrite=overwrite)
    percol = res.column_table()
    if columns_out is not None:
        save_table(percol, columns_out, overwrite=overwrite)
    tl = res.total_loss()
    msg = (
        f"{column_type}: {obs.shape[1]} columns × {obs.shape[0]} frames, model {model}, "
        f"{res.n_iter} EM cycles ({'converged' if res.converged else 'NOT converged'}), "
        f"atoms {int(res.n_atoms[0].sum())} → {int(res.n_atoms[-1].sum())}; "
        f"lost in total (all columns, first → last frame): {tl['atoms_lost']} "
        f"(posterior {tl['atoms_lost_mean']:.1f} ± {tl['atoms_lost_err']:.1f})"
    )
    if "loss_rate_per_e_A2" in tl:
        r, e = tl["loss_rate_per_e_A2"], tl["loss_rate_err_per_e_A2"]
        msg += (
            f"; loss rate of all {tl['n_columns']} columns together {r:.3g} ± {e:.2g} atoms "
            f"per e⁻/Å² ({r / tl['n_columns']:.3g} per column)"
        )
    console.print(msg)
    gain, gain_err = -tl["atoms_lost_mean"], tl["atoms_lost_err"]
    if gain > 0 and gain > 3.0 * gain_err:
        # (audit: --model free read "lost -17 (posterior -15.5 ± 3.2)" at 200 e⁻/Å²/s, the
        # frames' median cross-section wandering ±8 %, without a word)
        console.print(
            f"{column_type}: WARNING the columns gain {gain:.1f} ± {gain_err:.1f} atoms over "
            "the series: beam damage removes atoms; unless atoms are deposited, a rising "
            "reading is a cross-section scale that changes between the frames (dose or "
            "gain per frame, normalisation); check them, or use --model loss / dose"
        )
    console.print(f"wrote {out}")
