"""Render the run report with jinja2 (templates shipped as package data)."""

from __future__ import annotations

import base64
import json
import os
import warnings
from pathlib import Path
from typing import Any

from perovstem.errors import FileFormatError, OutputExistsError

__all__ = ["SECTIONS", "render_report", "write_report", "format_value"]

#: Report sections in display order: (key, title, what a reader finds there).
SECTIONS: tuple[tuple[str, str, str], ...] = (
    (
        "mechanism",
        "Mechanism summary",
        "Key numbers of the degradation mechanism with their confidence intervals, and the data "
        "analysed.",
    ),
    (
        "counting",
        "Atom counting",
        "Column fitting, scattering cross-sections and atoms per column.",
    ),
    (
        "kinetics",
        "Cluster kinetics",
        "Pb-cluster nucleation, growth and coalescence versus cumulative dose, time and "
        "temperature; fitted rate laws.",
    ),
    (
        "facets",
        "Facet evolution",
        "Reconstruction, surface and facet fractions before and after degradation; 3-D view.",
    ),
    (
        "provenance",
        "Provenance",
        "Software versions, machine, parameters, input checksums and the step log.",
    ),
)
_SECTION_KEYS = {k for k, _, _ in SECTIONS}


def _safe_json(obj: Any) -> str:
    """JSON that can sit inside a <script> element (no ``</script>`` breaking out)."""
    text = json.dumps(obj, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def format_value(value: float | None, err: float | None = None) -> str:
    """``value ± err`` with the value rounded to the 2 significant digits of ``err``."""
    import math

    if value is None or not math.isfinite(value):
        return "—"
    if err is None or not math.isfinite(err) or err <= 0:
        return f"{value:.4g}"
    dec = 1 - int(math.floor(math.log10(err)))
    if dec > 0:
        return f"{value:.{dec}f} ± {err:.{dec}f}"
    q = 10 ** (-dec)
    return f"{round(value / q) * q:.0f} ± {round(err / q) * q:.0f}"


def _plotly_js() -> str:
    from perovstem._optional import import_optional

    plotly_offline = import_optional("plotly.offline", extra="report")
    return plotly_offline.get_plotlyjs()


def _name_by_step(sections: dict[str, dict[str, Any]]) -> None:
    """Name the step of metrics and figures whose title another step of the section shares.

    Metrics and figures are grouped per section, away from their step's line; two steps of
    one kind (two fits, two series) gave two 'median position precision' with nothing to
    tell which is which."""
    for sec in sections.values():
        for group in (sec["metrics"], sec["items"]):
            steps_by_title: dict[tuple[str, str], set[str]] = {}
            for it in group:
                steps_by_title.setdefault((it["kind"], it.get("title", "")), set()).add(
                    str(it.get("step", ""))
                )
            for it in group:
                step = str(it.get("step", ""))
                title = it.get("title", "")
                if len(steps_by_title[(it["kind"], title)]) > 1 and step not in title:
                    it["title"] = f"{title} ({step})" if title else f"({step})"


def render_report(
    provenance: dict[str, Any],
    *,
    assets: dict[str, bytes],
    title: str | None = None,
    run_dir_name: str = "",
    incomplete: str = "",
) -> str:
    """Render the report HTML from a provenance record and the referenced files.

    Parameters
    ----------
    provenance : dict
        Content of ``provenance.json`` written by :func:`perovstem.pipeline.run_pipeline`
        (``steps[*].report_items`` hold figures, tables, metrics and texts).
    assets : dict of str to bytes
        Files referenced by report items (relative path → content): PNG figures and plotly
        JSON figures.
    title : str, optional
        Report title (default: the run title).
    run_dir_name : str
        The run folder's name, shown with the files.
    incomplete : str
        A warning shown under the title (a later run of the folder did not finish).

    Returns
    -------
    str
        The complete, self-contained HTML document.
    """
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("perovstem.report", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    sections: dict[str, dict[str, Any]] = {
        k: {"key": k, "title": t, "intro": d, "steps": [], "items": [], "metrics": []}
        for k, t, d in SECTIONS
    }
    n3d = 0
    for step in provenance.get("steps", []):
        sec = step.get("section") or "mechanism"
        if sec not in _SECTION_KEYS or sec == "provenance":
            sec = "mechanism"
        sections[sec]["steps"].append(step)
        for item in step.get("report_items", []):
            isec = item.get("section") or sec
            if isec not in _SECTION_KEYS or isec == "provenance":
                isec = sec
            it = dict(item)
            if it["kind"] == "figure":
                data = assets.get(it["path"])
                if data is None:
                    continue
                it["src"] = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
            elif it["kind"] == "plot3d":
                data = assets.get(it["path"])
                if data is None:
                    continue
                n3d += 1
                it["div_id"] = f"plot3d-{n3d}"
                it["json"] = _safe_json(json.loads(data.decode("utf-8")))
            if it["kind"] == "metric":
                sections[isec]["metrics"].append(it)
            else:
                sections[isec]["items"].append(it)
    _name_by_step(sections)
    counts: dict[str, int] = {}
    for step in provenance.get("steps", []):
        counts[step.get("status", "?")] = counts.get(step.get("status", "?"), 0) + 1
    env.filters["pm"] = format_value
    template = env.get_template("report.html.j2")
    return template.render(
        title=title or provenance.get("title") or provenance.get("run", "perovstem report"),
        prov=provenance,
        sections=[sections[k] for k, _, _ in SECTIONS],
        status_counts=counts,
        plotly_js=_plotly_js() if n3d else "",
        run_dir_name=run_dir_name,
        safe_json=_safe_json,
        incomplete=incomplete,
    )


def _unfinished_run(run_dir: Path, prov: dict[str, Any]) -> str:
    """What to say when a run of ``run_dir`` started after ``provenance.json`` was written
    did not finish (killed): its steps rewrote some tables, the others and the step log are
    the earlier run's ("" otherwise)."""
    from perovstem.io.runstore import read_json
    from perovstem.pipeline.runner import RUN_MARKER

    try:
        started = read_json(run_dir / RUN_MARKER).get("in_progress_since_utc")
    except Exception:  # noqa: BLE001 - no marker or an unreadable one: nothing to say
        return ""
    if not started:
        return ""
    return (
        f"a run of this folder started {started} did not finish (interrupted): tables and "
        f"figures it rewrote sit beside those of the run that finished "
        f"{prov.get('finished_utc', '?')}, whose steps and parameters this report lists; "
        "run `perovstem run` again to complete it"
    )


def _missing_outputs(run_dir: Path, prov: dict[str, Any]) -> list[str]:
    """The public files provenance.json lists as a step's outputs that are not in the folder."""
    out = []
    for step in prov.get("steps", []):
        for rel in step.get("outputs", []) or []:
            if isinstance(rel, str) and not (run_dir / rel).is_file():
                out.append(rel)
    return out


def write_report(
    run_dir: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    title: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the self-contained HTML report of a run folder.

    Parameters
    ----------
    run_dir : path
        A run folder written by :func:`perovstem.pipeline.run_pipeline`.
    out : path, optional
        Output file (default ``<run_dir>/report.html``).
    title : str, optional
        Report title (default: the run title).
    overwrite : bool
        Replace an existing ``out``.  The default ``<run_dir>/report.html`` is the run's own
        report and is always rewritten.

    Returns
    -------
    Path
        The report file.

    Raises
    ------
    FileFormatError
        ``run_dir`` holds no ``provenance.json``, or ``out`` is not an ``.html`` file.
    OutputExistsError
        ``out`` exists and ``overwrite`` is false.
    """
    from perovstem.io.runstore import read_bytes, read_json, write_text

    run_dir = Path(run_dir)
    prov_path = run_dir / "provenance.json"
    if not prov_path.is_file():
        from perovstem.pipeline.runner import RUN_MARKER

        if (run_dir / RUN_MARKER).is_file():  # a first run killed before it finished
            raise FileFormatError(
                f"{str(run_dir)!r} holds a run that never finished (no provenance.json): run "
                "`perovstem run` again to complete it, then the report"
            )
        raise FileFormatError(f"{str(run_dir)!r} is not a run folder (no provenance.json)")
    if out is not None:
        # an explicit -o once replaced the run's input data file with HTML
        out = Path(out)
        if out.suffix.lower() not in (".html", ".htm"):
            raise FileFormatError(f"{str(out)!r}: the report is written as .html")
        own = (run_dir / "report.html").resolve()
        if out.exists() and not overwrite and out.resolve() != own:
            raise OutputExistsError(f"{str(out)!r} exists (use --overwrite)")
    prov = read_json(prov_path)
    incomplete = _unfinished_run(run_dir, prov)
    gone = _missing_outputs(run_dir, prov)
    if gone:
        # (the report is drawn from provenance: a deleted table still showed, without a word)
        shown = ", ".join(gone[:5]) + (f" and {len(gone) - 5} more" if len(gone) > 5 else "")
        incomplete = (incomplete + "; " if incomplete else "") + (
            f"{len(gone)} output file(s) the run wrote are no longer in the folder ({shown}): "
            "the report shows the run as it finished, not what the folder holds now"
        )
    if incomplete:
        warnings.warn(f"{str(run_dir)!r}: {incomplete}", UserWarning, stacklevel=2)
    assets: dict[str, bytes] = {}
    for step in prov.get("steps", []):
        for item in step.get("report_items", []):
            p = item.get("path")
            if p and (run_dir / p).is_file():
                assets[p] = read_bytes(run_dir / p)
    html = render_report(
        prov, assets=assets, title=title, run_dir_name=run_dir.name, incomplete=incomplete
    )
    target = Path(out) if out is not None else run_dir / "report.html"
    write_text(target, html)
    return target
