"""Steps of perovstem.atoms: column fitting and atom counting."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from perovstem.pipeline.registry import Kind, Param, api, register_step

#: a table of column positions (start positions of atoms.fit, atoms.series and atoms.map)
POSITIONS_KIND = Kind(
    "table", ("x_A", "y_A"), "atoms.map `positions`, atoms.fit `columns` or a CSV of x_A, y_A"
)

#: what atoms.fit returns (perovstem.atoms.fit_columns; `grain` when the positions have it):
#: every column, so a step needing another one (`n_atoms`) is refused at validation
#: (= `atoms.fit.FIT_COLUMNS`, written out to keep the registry import light; tested)
FIT_COLUMNS_KIND = Kind(
    "table",
    (
        "x_A",
        "y_A",
        "type",
        "rho_A",
        "eta",
        "scs",
        "x_err_A",
        "y_err_A",
        "rho_err_A",
        "eta_err",
        "scs_err",
        "converged",
    ),
    may_have=("grain",),
)

FIT = "perovstem.atoms:fit_columns|perovstem.atoms.fit:fit_columns"
NORMALIZE = "perovstem.atoms:normalize_image|perovstem.atoms.normalize:normalize_image"
FIND = "perovstem.atoms:find_columns|perovstem.atoms.find:find_columns"
CELL = "perovstem.atoms:cspbbr3_001_cell|perovstem.atoms.cell:cspbbr3_001_cell"
# the built-in projected cells by their step-parameter name (atoms.fit, atoms.strain)
CELLS = {
    "cspbbr3_001": CELL,
    "cspbbr3_011": "perovstem.atoms:cspbbr3_011_cell|perovstem.atoms.cell:cspbbr3_011_cell",
    "cspbbr3_111": "perovstem.atoms:cspbbr3_111_cell|perovstem.atoms.cell:cspbbr3_111_cell",
}
HMM = "perovstem.atoms:fit_hmm|perovstem.atoms.hmm:fit_hmm"
COUNT = "perovstem.atoms:count_atoms|perovstem.atoms.count:count_atoms"
COMPOSITION_FROM_COUNTS = (
    "perovstem.atoms:composition_from_counts|perovstem.atoms.composition:composition_from_counts"
)


_GAIN_DOC = (
    'detector counts per electron for the normalisation: a number (e.g. 2.5), "auto" '
    "(measured from the image's shot noise, perovstem.atoms.estimate_noise_model; an error "
    "when the image cannot identify it), or unset: the image metadata (gain 1 with a warning "
    "when missing)"
)


def _gain_option(value: float | str | None) -> dict[str, Any]:
    """normalize_image keywords for the ``gain`` parameter (None: the image metadata)."""
    from perovstem.atoms.noise import parse_gain

    g = parse_gain(value)
    return {} if g is None else {"gain": g}


@register_step(
    "atoms.fit",
    input_kinds={
        "image": Kind("image"),
        "positions": POSITIONS_KIND,
    },
    inputs=("image",),
    optional_inputs=("positions",),
    outputs=("columns",),
    output_kinds={"columns": FIT_COLUMNS_KIND},
    params={
        "normalize": Param(
            bool,
            True,
            "convert counts to fraction of the beam first (needs dose/gain/offset metadata)",
        ),
        "gain": Param((float, str), None, _GAIN_DOC, min=0.0),
        "width": Param(
            str,
            "type",
            "one width per type, per column, or fixed",
            choices=("type", "column", "fixed"),
        ),
        "background": Param(
            str, "constant", "background model", choices=("constant", "planar", "poly2", "none")
        ),
        "noise": Param(
            str, "gaussian", "least squares or Poisson ML", choices=("gaussian", "poisson")
        ),
        "cell": Param(
            str,
            "cspbbr3_001",
            "projected cell for the column finder when no positions are given "
            "(cspbbr3_011: the [011] zone, types Pb_011, Br_011, CsBr_011; cspbbr3_111: the "
            "[111] zone, types CsPb_111, Br_111)",
            choices=(*CELLS, "none"),
        ),
    },
    requires=(FIT, NORMALIZE),
    section="counting",
    doc="Joint Gaussian fit of all atom columns (positions, widths, cross-sections, CRLB errors).",
)
def atoms_fit(ctx: Any, image: Any, positions: Any = None) -> dict[str, Any]:
    p = ctx.params
    gain_kw = _gain_option(p["gain"])
    if gain_kw and not p["normalize"]:
        from perovstem.errors import ParameterError

        raise ParameterError("`gain` is used by the normalisation: set normalize = true")
    if p["normalize"]:
        from perovstem.errors import CalibrationError, DataError

        try:
            img = api(NORMALIZE)(image, **gain_kw)
        except (CalibrationError, DataError) as exc:  # the step's way out, besides the input
            raise type(exc)(
                f"{exc} (or set normalize = false: cross-sections in image units)"
            ) from None
    else:
        img = image
    if positions is None:  # find the columns, sublattice-aware for a CsPbBr3 cell
        cell = CELLS.get(p["cell"])
        positions = api(FIND)(img, cell=api(cell)() if cell else None)
        _refuse_other_zone(positions, p["cell"])
    # the crystal (grain) of each column travels to the table: strain per crystal
    cols = ["x_A", "y_A"] + [c for c in ("type", "grain") if c in positions.columns]
    columns = api(FIT)(
        img, positions[cols], width=p["width"], background=p["background"], noise=p["noise"]
    )
    if "cell_check" in positions.attrs:  # does the cell explain the image (find_columns)
        columns.attrs["cell_check"] = positions.attrs["cell_check"]
    from perovstem.plot.overview import plot_image

    ax = plot_image(
        img.data,
        pixel_size_A=img.pixel_size_A,
        points=columns[["x_A", "y_A"]].to_numpy(),
        title="fitted columns",
    )
    ctx.figure(
        "columns",
        ax.figure,
        title="Fitted atom columns",
        caption=f"{len(columns)} columns; {int(columns['converged'].sum())} converged.",
    )
    ctx.metric(
        "median position precision",
        float(np.nanmedian(columns["x_err_A"])) * 1.0,
        unit="Å",
        caption="median CRLB σ_x of the fitted columns",
        section="counting",
    )
    return {"columns": columns}


SCS_LIBRARY = "perovstem.simulate:scs_library|perovstem.simulate.scs:scs_library"
HYBRID = "perovstem.atoms:count_hybrid|perovstem.atoms.library:count_hybrid"
LIBRARY = "perovstem.atoms:count_library|perovstem.atoms.library:count_library"
START_SCALE = "perovstem.atoms.library:start_scale_from_types"


def _scale_prior_option(value: Any) -> tuple[float, float] | None:
    """``(center, log_sd)`` of the ``scale_prior`` step parameter (None: unset)."""
    from perovstem.errors import ParameterError

    if value is None:
        return None
    ok = (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    )
    if ok:
        c, sd = float(value[0]), float(value[1])
        ok = bool(np.isfinite(c) and c > 0 and np.isfinite(sd) and sd > 0)
    if not ok:
        raise ParameterError(
            "`scale_prior` must be [center, log_sd] with center > 0 and log_sd > 0 "
            f"(e.g. [0.92, 0.03]), got {value!r}"
        )
    return c, sd


def _offset_notes(ctx: Any, counting: dict[str, Any]) -> None:
    """A report note per type whose library-anchored counts may all be offset by whole
    atoms (count_atoms' ``library_anchor``, or count_hybrid's fields)."""
    for t, info in counting.items():
        if not isinstance(info, dict):
            continue
        anchor = info.get("library_anchor") or info
        if anchor.get("offset_ambiguous"):
            _offset_note(ctx, t, anchor)


def _offset_note(
    ctx: Any,
    t: str,
    anchor: dict[str, Any],
    *,
    std: str = "n_atoms_std includes the offset",
    way_out: str = "count with a library measured by the data's own estimator (library = "
    '"fitted", perovstem.atoms.fitted_scs_library) or set scale_prior = [center, log_sd] '
    "from a known calibration",
) -> None:
    """The report note of one type whose counts may all be offset (``offset_probability``)."""
    from perovstem.atoms._inputs import offset_summary

    ctx.text(
        f"{t} columns: the counts may all be offset by whole atoms, "
        f"{offset_summary(anchor)}): another library scale reads every column one "
        "atom up or down about as well (one or few thicknesses cannot tell c L_n from "
        f"c' L_(n+-1)); {std}.  To decide it, {way_out}.",
        section="counting",
    )


FITTED_LIBRARY = (
    "perovstem.atoms:fitted_library_for|perovstem.atoms.fitted_library:fitted_library_for"
)


def _fitted_library(
    columns: Any, p: dict[str, Any], detector_mrad: tuple[float, float] = (65.0, 200.0)
) -> dict[str, Any]:
    """``library = "fitted"``: the fitted-SCS library of the counted columns' own fit
    (:func:`perovstem.atoms.fitted_library_for`), refusing what it cannot reproduce."""
    from perovstem.errors import ParameterError

    if p["method"] == "ladder":
        raise ParameterError(
            "`library` = 'fitted' does not apply to method = 'ladder' (library-free): use "
            "method = 'gmm', 'hybrid' or 'library', or leave `library` out"
        )
    if p["library_termination"] not in ("CsBr", "PbBr2"):
        raise ParameterError(
            f"`library` = 'fitted' renders slabs with CsBr or PbBr2 faces, got "
            f"library_termination = {p['library_termination']!r}: set library_termination = "
            "'CsBr' (the simulator's nanocrystals) or 'PbBr2'"
        )
    from perovstem.atoms.fitted_library import LIBRARY_TYPES

    bad = [t for t in p["types"] if t not in LIBRARY_TYPES]
    if bad or "type" not in columns.columns:
        raise ParameterError(
            f"`library` = 'fitted' has CsPbBr3 [001] column types {list(LIBRARY_TYPES)} only, "
            f"got types = {p['types']}"
            + ("" if "type" in columns.columns else " and a `columns` table without `type`")
        )
    from perovstem.errors import DataError

    try:
        return api(FITTED_LIBRARY)(
            columns,
            p["max_components"],
            types=p["types"],
            voltage_kV=p["voltage_kV"],
            detector_mrad=detector_mrad,
            termination=p["library_termination"],
            cd_fraction=p["library_cd_fraction"],
        )
    except DataError as exc:
        raise DataError(
            f"`library` = 'fitted': {exc} (in the pipeline: the `columns` of atoms.fit with "
            "normalize = true and width = 'type'; or library = true)"
        ) from None


@register_step(
    "atoms.count",
    input_kinds={
        "columns": Kind("table", ("x_A", "y_A", "scs"), "the `columns` output of atoms.fit"),
        "truth": Kind("table"),
    },
    inputs=("columns",),
    optional_inputs=("truth",),
    outputs=("counts",),
    output_kinds={"counts": Kind("table", ("x_A", "y_A", "n_atoms"))},
    params={
        "types": Param(
            list,
            ["PbBr", "Cs"],
            "column types to count (others are kept, uncounted)",
            item_type=str,
        ),
        "method": Param(
            str,
            "gmm",
            "gmm: Gaussian mixture (ICL); ladder: library-free smooth ladder mixture "
            "(perovstem.atoms.ladder; levels by BIC, first count estimated; `library`, "
            "`voltage_kV`, `library_*` and `criterion` not used); hybrid: library counting "
            "with a fitted scale; library: nearest library cross-section",
            choices=("gmm", "ladder", "hybrid", "library"),
        ),
        "max_components": Param(
            int, 20, "largest number of GMM components (ladder levels with method = ladder)", min=1
        ),
        "criterion": Param(
            str, "icl", "order selection criterion (method = gmm)", choices=("icl", "aic", "bic")
        ),
        "scale_prior": Param(
            list,
            None,
            "[center, log_sd] of the prior on the common scale cross-section / library "
            "(method = gmm with a library; count_atoms' scale_prior): it decides whether "
            "a flat crystal's counts are n or n +- 1 (offset_ambiguous).  Unset: count_atoms' "
            "default, (1, 0.1) for the simulated library (Gaussian-fit cross-sections sit 5-25 "
            '% below it), (1, 0.03) with library = "fitted"; give it when the calibration is '
            "known, e.g. [0.92, 0.03]",
        ),
        "library": Param(
            (bool, str),
            True,
            "true: anchor the GMM on the simulated SCS library (scs_library; cross-sections "
            'must be in Å², i.e. normalised image); "fitted": on the library measured by the '
            "columns' own fit (perovstem.atoms.fitted_library_for: slabs imaged at the "
            "table's pixel size, field and dose, fitted with one width per type; needs the "
            "attrs of atoms.fit's `columns`, library_termination CsBr or PbBr2 and types of "
            "PbBr, Br, Cs); false: the Gaussian mixture alone",
            choices=(True, False, "fitted"),
        ),
        "voltage_kV": Param(float, 300.0, "accelerating voltage of the library, kV"),
        "detector_mrad": Param(
            list,
            None,
            "[inner, outer] annular detector of the image, mrad (default: as atoms.fit "
            "recorded it from the file; the library is that of 65-200 or 65-131 mrad)",
            item_type=float,
        ),
        "library_cd_fraction": Param(
            float,
            0.0,
            "Cd fraction of the Pb-Br library (nominal composition of an alloyed crystal)",
            min=0.0,
            max=1.0,
        ),
        "min_significance": Param(
            float,
            3.0,
            "columns whose cross-section is not above this many standard errors (scs_err) "
            "are not counted: peaks on the vacuum or support, not atom columns",
            min=0.0,
        ),
        "library_termination": Param(
            str,
            "mixed",
            "crystal faces the library assumes: mixed (every column the same number of "
            "layers), CsBr (usual for CsPbBr3 nanocrystals: one more Br per Pb-Br column) or "
            "PbBr2 (see perovstem.simulate.scs_library)",
            choices=("mixed", "CsBr", "PbBr2"),
        ),
    },
    requires=(COUNT,),
    section="counting",
    doc="Atoms per column from the cross-sections (Gaussian mixture, ICL order selection, "
    "optionally anchored on a simulated cross-section library, or on one measured by the "
    'columns\' own fit (library = "fitted"); or the library-free ladder '
    "mixture). A report note names each type whose library-anchored counts may all be "
    'offset by whole atoms (offset_ambiguous), with P(0) and the ways out (library = "fitted" '
    "or scale_prior).",
)
def atoms_count(ctx: Any, columns: Any, truth: Any = None) -> dict[str, Any]:
    import warnings

    from perovstem.atoms._conditions import UNKNOWN_DETECTOR_NOTE, library_conditions
    from perovstem.errors import ParameterError

    p = ctx.params
    prior = _scale_prior_option(p["scale_prior"])
    if prior is not None and (p["method"] != "gmm" or not p["library"]):
        raise ParameterError(
            f"`scale_prior` = {p['scale_prior']!r} is the prior of the library anchor: it needs "
            f"method = 'gmm' and a library (true or 'fitted'), got method = {p['method']!r}, library = "
            f"{str(p['library']).lower()}"
        )
    if p["method"] == "ladder" and p["criterion"] != "icl":
        raise ParameterError(
            f"`criterion` = {p['criterion']!r} does not apply to method = 'ladder' (its levels "
            "are chosen by BIC with an over-split guard): leave it out"
        )
    out = columns.reset_index(drop=True).copy()
    sel = (
        out["type"].isin(p["types"]).to_numpy()
        if "type" in out.columns
        else np.ones(len(out), bool)
    )
    if len(out) and not sel.any() and p["library"] != "fitted":  # (that one names the types)
        # ("`scs` table is empty" said nothing of why: a [011] fit's types are Pb_011, ...)
        present = sorted(set(out["type"].astype(str)))
        raise ParameterError(
            f"`types` = {p['types']!r} matches none of the columns' types {present}: set "
            "`types` to those to count"
            + (
                " (the libraries are of [001] columns: count [011] or [111] columns with "
                "library = false, the Gaussian mixture alone)"
                if any(t.endswith(("_011", "_111")) for t in present)
                else ""
            )
        )
    if "scs" in out.columns:
        from perovstem.atoms._inputs import insignificant_columns

        # a finder without a cell (or a user's start list) also puts "columns" on the
        # vacuum and the support; their fitted SCS is ~0 or negative (43 of 223 on
        # StatSTEM's Pb particle), which no counting model can take
        scs = out["scs"].to_numpy(float)
        weak = sel & insignificant_columns(out, p["min_significance"])
        if weak.any():
            sel = sel & ~weak
            out["counted"] = sel
            ctx.text(
                f"{int(weak.sum())} of {int(weak.sum() + sel.sum())} columns not counted: "
                f"cross-section not above {p['min_significance']:g} standard errors "
                f"(min {np.nanmin(scs[weak]):.4g} {out.attrs.get('scs_units', 'Å²')}); they "
                "are kept in the table with "
                "counted = False.",
                section="counting",
            )
    kw: dict[str, Any] = {}
    # the library of the image's detector (65-200 or 65-131 mrad; atoms.fit records it)
    given = p["detector_mrad"]
    if given is not None and not (len(given) == 2 and 0 <= given[0] < given[1]):
        raise ParameterError(
            f"`detector_mrad` must be [inner, outer] with 0 <= inner < outer, got {given!r}"
        )
    angles, angles_note = library_conditions(out.attrs, detector_mrad=given)
    detector = tuple(angles["library"]["detector_mrad"])
    uses_library = bool(p["library"]) and p["method"] != "ladder"
    if uses_library and angles["detector_matches"] is None:
        ctx.text(
            UNKNOWN_DETECTOR_NOTE.replace(
                "--detector-mrad INNER,OUTER", "detector_mrad = [inner, outer]"
            ),
            section="counting",
        )
    if uses_library and angles_note:
        warnings.warn(
            f"atoms.count: {angles_note}; on crystals of a few thicknesses all by the same "
            "whole number of atoms (library = false: the Gaussian mixture's differences only)",
            UserWarning,
            stacklevel=2,
        )
    if p["library"] == "fitted":
        kw["library"] = _fitted_library(out[sel], p, detector)
    elif p["library"] and p["method"] != "ladder" and "type" in out.columns:
        try:
            lib = api(SCS_LIBRARY)
            kw["library"] = {
                t: lib(
                    t,
                    p["max_components"],
                    voltage_kV=p["voltage_kV"],
                    termination=p["library_termination"],
                    detector_mrad=detector,
                    **({"cd_fraction": p["library_cd_fraction"]} if t == "PbBr" else {}),
                )
                for t in p["types"]
            }
        except ImportError:
            pass
        except ParameterError as exc:
            if "column_type" not in str(exc):
                raise
            raise ParameterError(
                f"no simulated library for the column types {p['types']} ({exc}); set "
                "library = false here (counts from the Gaussian mixture alone)"
            ) from None
    if prior is not None and "library" not in kw:
        raise ParameterError(
            f"`scale_prior` = {p['scale_prior']!r} needs the simulated library (typed columns "
            "and perovstem.simulate); leave it out"
        )
    if prior is not None:
        kw["scale_prior"] = prior
    if p["method"] == "ladder":
        counts = api(COUNT)(out[sel], max_components=p["max_components"], method="ladder")
        ctx.text(
            "Counted by the library-free ladder mixture (perovstem.atoms.ladder: levels by BIC "
            "with an over-split guard, first count estimated from the ladder); the library "
            "parameters are not used.",
            section="counting",
        )
    elif p["method"] == "gmm":
        from perovstem.errors import DataError

        try:
            counts = api(COUNT)(
                out[sel], max_components=p["max_components"], criterion=p["criterion"], **kw
            )
        except DataError as exc:
            if "library" not in kw or "normalis" not in str(exc):
                raise
            raise DataError(
                f"{exc}; in the pipeline: atoms.fit with normalize = true, or "
                "library = false here (counts from the Gaussian mixture alone)"
            ) from None
    else:
        if "library" not in kw:
            raise ParameterError(
                f"`method` = {p['method']!r} needs `library` = true and typed columns"
            )
        counts = api(HYBRID if p["method"] == "hybrid" else LIBRARY)(out[sel], kw["library"])
    for c in counts.columns:
        if c not in out.columns:
            out[c] = np.nan
            out.loc[sel, c] = counts[c].to_numpy()
    out.attrs.update(counts.attrs)
    _offset_notes(ctx, counts.attrs.get("counting", {}))
    if "library" in kw:
        out.attrs["library"] = {
            "source": "fitted" if p["library"] == "fitted" else "simulated",
            "termination": p["library_termination"],
            "cd_fraction": p["library_cd_fraction"],
            "detector_mrad": list(detector),
        }
        # as `atoms count` records it (atoms.composition models the same detector)
        out.attrs.setdefault("counting", {})["library_angles"] = angles
    if "n_atoms" in out.columns:
        out["n_atoms"] = out["n_atoms"].astype("Float64")
    if truth is not None and {"x_A", "y_A", "n_atoms"} <= set(truth.columns):
        from scipy.spatial import cKDTree

        d, k = cKDTree(truth[["x_A", "y_A"]].to_numpy()).query(out[["x_A", "y_A"]].to_numpy())
        ok = sel & (d < 0.5)
        true_n = truth["n_atoms"].to_numpy()[k]
        out["n_atoms_truth"] = np.where(d < 0.5, true_n, np.nan)
        for t in p["types"]:
            m = ok & (out["type"].to_numpy() == t)
            if m.any():
                exact = float(np.mean(out["n_atoms"].to_numpy(float)[m] == true_n[m]))
                ctx.metric(
                    f"counting accuracy, {t} columns",
                    100.0 * exact,
                    unit="%",
                    section="counting",
                    caption=f"{int(m.sum())} columns whose count equals the simulated "
                    "number of atoms",
                )
    from perovstem.plot.overview import plot_hist

    n = out["n_atoms"].to_numpy(float)[sel] if "n_atoms" in out.columns else None
    ax = plot_hist(
        out["scs"].to_numpy(float)[sel],
        groups=None if n is None else n.astype(int),
        xlabel="scattering cross-section (Å² when normalised)",
    )
    ctx.figure(
        "scs_histogram",
        ax.figure,
        title="Cross-section histogram",
        caption=f"{', '.join(p['types'])} columns, coloured by the assigned number of atoms.",
    )
    if n is not None:
        ctx.metric(
            "columns counted", int(sel.sum()), caption=", ".join(p["types"]), section="counting"
        )
    return {"counts": out}


@register_step(
    "atoms.composition",
    input_kinds={
        "counts": Kind(
            "table", ("x_A", "y_A", "type", "scs", "n_atoms"), "the `counts` output of atoms.count"
        )
    },
    inputs=("counts",),
    optional_inputs=("thickness",),
    outputs=("columns",),
    output_kinds={"columns": Kind("table", ("x_A", "y_A"))},
    params={
        "voltage_kV": Param(float, 300.0, "accelerating voltage, kV", min=10.0),
        "confidence": Param(float, 0.95, "confidence level of the interval", min=0.5, max=0.999),
        "truth_cd_fraction": Param(
            float, None, "known x (simulations): reported alongside", min=0.0, max=1.0
        ),
        "scale_from": Param(
            str,
            "Cs",
            "calibration factor c of the cross-sections: from the "
            "library counting of this Cd-free column type ('' = 1)",
        ),
        "thickness_from": Param(
            str,
            "Cs",
            "without a `thickness` input: cells per Pb-Br column from the counts of the "
            "four neighbouring Cs columns (Cd-free), or 'counted' from the Pb-Br "
            "cross-sections themselves (biased on an alloy: Cd reads as fewer cells)",
            choices=("Cs", "counted"),
        ),
        "termination": Param(
            str,
            "CsBr",
            "entrance/exit faces, for thickness_from = Cs: CsBr (Pb-Br column one cell "
            "shorter than its Cs neighbours), PbBr2 (one longer) or mixed (equal)",
            choices=("CsBr", "PbBr2", "mixed"),
        ),
    },
    requires=(COMPOSITION_FROM_COUNTS,),
    section="counting",
    doc="Cd per Pb-Br column and the overall Cd fraction x from the cross-sections "
    "(binomial-Gaussian mixture, profile-likelihood interval).",
)
def atoms_composition(ctx: Any, counts: Any, thickness: Any = None) -> dict[str, Any]:
    p = ctx.params
    out = api(COMPOSITION_FROM_COUNTS)(
        counts,
        thickness=thickness,
        thickness_from=p["thickness_from"],
        termination=p["termination"],
        scale_from=p["scale_from"],
        voltage_kV=p["voltage_kV"],
        confidence=p["confidence"],
    )
    res, source, n_dropped = out.result, out.thickness_source, out.n_dropped
    lo, hi = res.x_ci
    truth = "" if p["truth_cd_fraction"] is None else f"; simulated x = {p['truth_cd_fraction']:g}"
    ctx.metric(
        "Cd fraction x (B sites)",
        res.x,
        err=res.x_err,
        section="mechanism",
        caption=f"{100 * res.confidence:g} % CI [{lo:.3f}, {hi:.3f}] from "
        f"{out.n_columns} Pb-Br columns ({source} thickness"
        f"{f'; {n_dropped} left out (their Cs neighbours disagree)' if n_dropped else ''}"
        f"), scale c = {out.scale:.3f}"
        f"{'' if out.scale_source or not p['scale_from'] else ' (uncalibrated)'}{truth}"
        + (
            ". The thickness was counted from the same Pb-Br cross-sections, which Cd also "
            "lowers: on an alloy the two are degenerate and x can be off by more than its "
            "interval (simulated 55 Å cubes: 0.25 for 0.12); give `thickness` from another "
            "measurement"
            if source == "counted"  # x can also read 0 (a 60 Å cube of x = 0.3: 0.000)
            else ""
        ),
    )
    return {"columns": res.columns}


def _start_scale_from_cs(
    scs0: np.ndarray, pos: Any, p: dict, beam: dict | None = None
) -> dict | None:
    """HMM start: the tracked type's scale in the first frame, tied to the Cs columns
    (a pristine cube's single Pb-Br thickness does not fix it: EM from c = 1 counted every
    Pb-Br column of a simulated 60 Å cube 9 instead of 10 in every frame)."""
    t = p["hmm_type"]
    if "type" not in pos.columns or t == "Cs":
        return None
    lib = api(SCS_LIBRARY)
    libs = {
        c: lib(
            c,
            p["max_states"],
            **(beam or {}),
            **({"cd_fraction": p["library_cd_fraction"]} if c == "PbBr" else {}),
        )
        for c in (t, "Cs")
    }
    c = api(START_SCALE)(pd.DataFrame({"scs": scs0, "type": pos["type"].to_numpy()}), libs, t)
    return None if c is None else {"scale": c}


def _fit_frame(
    k: int, series: Any, *, positions: Any, max_iter: int, detector: dict[str, float]
) -> np.ndarray:
    """Cross-sections of the given columns in frame ``k`` (Å², normalised frame)."""
    image = _frame(series, k, detector)
    fit = api(FIT)(api(NORMALIZE)(image), positions, max_iter=max_iter, joint=False)
    return fit["scs"].to_numpy(float)


def _frame(series: Any, k: int, detector: dict[str, float]) -> Any:
    """Frame ``k`` with the series' metadata and the step's detector gain/offset."""
    image = series.frame(k)
    return image.replace(metadata={**(series.metadata or {}), **image.metadata, **detector})


def _series_detector(series: Any, gain: str | None) -> tuple[dict[str, float], str]:
    """The gain/offset for every frame, decided once per series (not per frame), and a note.

    ``"auto"``: measured on up to 8 frames pooled; unset and missing from the metadata:
    gain 1 / offset 0 with one warning for the whole series (normalize_image would warn and
    re-measure on every frame)."""
    import warnings

    from perovstem.atoms.noise import describe_series_estimate, measure_series_detector

    kw = _gain_option(gain)
    meta = series.metadata or {}
    if kw.get("gain") == "auto":
        nm = measure_series_detector(series, "atoms.series: gain='auto'")
        return {"gain": nm.gain, "offset": nm.offset}, f"detector measured: {nm.describe()}"
    det = {"gain": kw["gain"]} if kw else {}
    missing = [k for k in ("gain", "offset") if k not in det and meta.get(k) is None]
    if missing:
        warnings.warn(
            f"atoms.series: detector {' and '.join(missing)} unknown (not in the series "
            "metadata, `gain` not set); assuming gain = 1 count per electron and offset = 0 "
            'counts, otherwise the cross-sections and counts are wrong; set gain = "auto" '
            "or the measured value" + describe_series_estimate(series),
            UserWarning,
            stacklevel=2,
        )
        det.update({k: {"gain": 1.0, "offset": 0.0}[k] for k in missing})
    return det, ""


def _check_hmm_type(pos: Any, p: dict, *, given: bool) -> None:
    """Refuse, before fitting every frame, a tracked type that no column has, naming the
    types there are and the way out."""
    from perovstem.errors import DataError

    if "type" not in pos.columns or (pos["type"] == p["hmm_type"]).any():
        return
    found = pos["type"].astype(str).value_counts()
    listed = ", ".join(f"{t!r} ({n} columns)" for t, n in found.items()) or "none"
    where = "the `positions` input" if given else f"the first frame (cell = {p['cell']!r})"
    way_out = (
        "drop the `type` column of the positions to track every column"
        if given
        else 'set cell = "none" to track every column found'
    )
    raise DataError(
        f"no columns of type hmm_type = {p['hmm_type']!r} in {where}; the "
        f"column types there are {listed}; set hmm_type to one of them that has a library "
        f"(PbBr, Cs, Br, Pb), or {way_out}"
    )


def _refuse_other_zone(positions: Any, cell: str, fix: str | None = None) -> None:
    """Fail as `atoms fit` does when another built-in zone axis explains the image and
    ``cell`` does not (with only a warning in the report, the columns and types would be
    wrong).  ``fix``: what to do instead (default: set the suggested cell)."""
    from perovstem.atoms.find import _other_zone_error

    check = positions.attrs.get("cell_check") or {}
    name = {"cspbbr3": "cspbbr3_001"}.get(check.get("suggested"), check.get("suggested"))
    err = _other_zone_error(check, f"cell = {cell!r}", fix or f"set cell = {name!r}")
    if err is not None:
        raise err


@register_step(
    "atoms.series",
    input_kinds={
        "series": Kind("series"),
        "positions": POSITIONS_KIND,
    },
    inputs=("series",),
    optional_inputs=("positions",),
    outputs=("counts", "columns"),
    output_kinds={
        "counts": Kind("table", ("frame", "x_A", "y_A", "n_atoms")),
        "columns": Kind("table", ("x_A", "y_A")),
    },
    params={
        "frame_step": Param(int, 1, "analyse every n-th frame", min=1),
        "gain": Param((float, str), None, _GAIN_DOC, min=0.0),
        "max_iter": Param(
            int,
            30,
            "fit sweeps per frame (positions start from the column finder, so few are needed)",
            min=1,
        ),
        "hmm_type": Param(
            str,
            "PbBr",
            "column type tracked by the hidden Markov model (its simulated cross-section "
            "library, perovstem.simulate.scs_library)",
            choices=("PbBr", "Cs", "Br", "Pb"),
        ),
        "hmm_model": Param(
            str,
            "loss",
            "transition model: free, loss (atoms only leave) or "
            "dose (loss probability ∝ frame dose)",
            choices=("free", "loss", "dose"),
        ),
        "max_states": Param(int, 20, "largest number of atoms per column", min=2),
        "library_cd_fraction": Param(
            float, 0.0, "Cd fraction of the Pb-Br library", min=0.0, max=1.0
        ),
        "cell": Param(
            str,
            "cspbbr3_001",
            "projected cell for the column finder when no positions are given; none: "
            "columns found without a cell carry no type and all are tracked as `hmm_type` "
            "(e.g. Pb for a metallic particle)",
            choices=("cspbbr3_001", "none"),
        ),
    },
    requires=(FIT, NORMALIZE, HMM, SCS_LIBRARY),
    section="kinetics",
    doc="Atom counts of every column through an in-situ series: column fit per frame (mapped "
    "over frames) and a hidden Markov model of the counts; atoms lost per column per dose.",
)
def atoms_series(ctx: Any, series: Any, positions: Any = None) -> dict[str, Any]:
    import functools

    p = ctx.params
    positions_given = positions is not None
    frames = list(range(0, series.n_frames, p["frame_step"]))
    detector, det_note = _series_detector(series, p["gain"])
    if positions is None:
        first = _frame(series, frames[0], detector)
        if p["cell"] == "cspbbr3_001":
            positions = api(FIND)(api(NORMALIZE)(first), cell=api(CELL)())
            _refuse_other_zone(
                positions,
                p["cell"],
                "this step's libraries are of [001] columns: set cell = 'none' to track "
                "intensity classes, or give `positions`",
            )
        else:  # no cell: one intensity class ("type0"), not a chemical type
            positions = api(FIND)(api(NORMALIZE)(first), cell=None).drop(columns="type")
    pos = positions[["x_A", "y_A"] + (["type"] if "type" in positions.columns else [])]
    pos = pos.reset_index(drop=True)
    _check_hmm_type(pos, p, given=positions_given)
    scs = np.array(
        ctx.map(
            functools.partial(_fit_frame, positions=pos, max_iter=p["max_iter"], detector=detector),
            frames,
            shared=series,
            description="column fits",
        )
    )
    sel = (
        (pos["type"] == p["hmm_type"]).to_numpy()
        if "type" in pos.columns
        else np.ones(len(pos), bool)
    )
    # the library at the series' beam energy and detector (before: always 300 kV, 65-200)
    from perovstem._data import voltage_kV_of
    from perovstem.atoms._conditions import library_detector

    beam = {
        "voltage_kV": voltage_kV_of(series.metadata) or 300.0,
        "detector_mrad": library_detector(series.metadata),
    }
    lib = api(SCS_LIBRARY)(
        p["hmm_type"],
        p["max_states"],
        **beam,
        **({"cd_fraction": p["library_cd_fraction"]} if p["hmm_type"] == "PbBr" else {}),
    )
    dose = None
    if series.dose_e_per_A2 is not None:  # dose between analysed frames
        cum = series.cumulative_dose_e_per_A2[frames]
        dose = np.diff(np.r_[series.initial_dose_e_per_A2, cum])
    obs = scs[:, sel]
    n_neg = int(np.sum(obs < 0))  # emptied columns: SCS ≈ 0 measured with noise
    init = _start_scale_from_cs(scs[0], pos, p, beam)
    res = api(HMM)(
        np.clip(obs, 0.0, None),
        lib,
        model=p["hmm_model"],
        dose_e_per_A2=dose,
        init=init,
        # the Cs columns' scale is also the prior of the readings (offset_probability):
        # the types' scales are tied within 3 % (count_atoms' scale_spread)
        **({} if init is None else {"scale_prior": (init["scale"], 0.03)}),
    )
    counts = res.table(scs[:, sel])
    col_idx = np.flatnonzero(sel)
    counts["frame"] = np.asarray(frames)[counts["frame"].to_numpy()]
    counts["column"] = col_idx[counts["column"].to_numpy()]
    counts["x_A"] = pos["x_A"].to_numpy()[counts["column"].to_numpy()]
    counts["y_A"] = pos["y_A"].to_numpy()[counts["column"].to_numpy()]
    if series.cumulative_dose_e_per_A2 is not None:
        counts["cumulative_dose_e_per_A2"] = series.cumulative_dose_e_per_A2[counts["frame"]]
    columns = res.column_table()
    columns["column"] = col_idx[columns["column"].to_numpy()]
    columns["x_A"] = pos["x_A"].to_numpy()[columns["column"].to_numpy()]
    columns["y_A"] = pos["y_A"].to_numpy()[columns["column"].to_numpy()]
    per_frame = counts.groupby("frame", as_index=False).agg(
        n_atoms=("n_atoms", "sum"), n_atoms_mean=("n_atoms_mean", "sum")
    )
    if "cumulative_dose_e_per_A2" in counts.columns:
        per_frame["cumulative_dose_e_per_A2"] = series.cumulative_dose_e_per_A2[per_frame["frame"]]
    x = "cumulative_dose_e_per_A2" if "cumulative_dose_e_per_A2" in per_frame else "frame"
    from perovstem.plot.overview import plot_xy

    ax = plot_xy(
        per_frame,
        x,
        ["n_atoms", "n_atoms_mean"],
        marker=".",
        ylabel=f"atoms in {p['hmm_type']} columns",
    )
    ctx.figure(
        "atoms",
        ax.figure,
        title=f"Atoms in {p['hmm_type']} columns ({ctx.step_id})",
        caption=f"Hidden-Markov ({p['hmm_model']}) counts of {int(sel.sum())} columns "
        f"over {len(frames)} frames: Viterbi and posterior mean"
        + (f"; {n_neg} negative cross-sections (emptied columns) set to 0" if n_neg else "")
        + (f"; {det_note}." if det_note else "."),
    )
    tl = res.total_loss()
    ctx.metric(
        f"{p['hmm_type']} atoms lost ({ctx.step_id})",
        float(tl["atoms_lost"]),
        err=tl["atoms_lost_err"],
        section="kinetics",
        caption=f"first → last analysed frame, all {int(sel.sum())} columns together (Viterbi "
        f"counts; posterior mean {tl['atoms_lost_mean']:.1f}, ±1σ of the posterior)",
    )
    if "loss_rate_per_e_A2" in columns.columns:
        r = columns["loss_rate_per_e_A2"].to_numpy(float)
        e = columns["loss_rate_err_per_e_A2"].to_numpy(float)
        ok = np.isfinite(r) & np.isfinite(e)
        if ok.any():
            ctx.metric(
                f"atoms lost per column per dose ({ctx.step_id})",
                float(np.mean(r[ok])),
                err=float(np.sqrt(np.sum(e[ok] ** 2)) / ok.sum()),
                unit="per e⁻/Å²",
                section="mechanism",
                caption=f"mean over {int(ok.sum())} {p['hmm_type']} columns (HMM, ±1σ)",
            )
    counts.attrs["hmm"] = res.summary()
    if res.offset_ambiguous:
        _offset_note(
            ctx,
            p["hmm_type"],
            counts.attrs["hmm"],
            std="the atoms lost are not affected (a common offset cancels)",
            way_out="count with a library measured by the data's own estimator "
            "(perovstem.atoms.fitted_scs_library, as perovstem.insitu.analyze_series does)",
        )
    counts.attrs["detector"] = detector
    return {"counts": counts, "columns": columns}
