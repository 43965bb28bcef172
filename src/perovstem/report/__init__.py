"""Self-contained HTML reports of pipeline runs.

:func:`write_report` turns a run folder (``provenance.json`` + ``plots/``) into one HTML file
with every figure embedded as a base64 PNG and interactive 3-D views rendered by an inline
copy of plotly.js (no network access needed to open it).  All text coming from files,
metadata or parameters is HTML-escaped.
"""

from perovstem.report.html import SECTIONS, render_report, write_report

__all__ = ["write_report", "render_report", "SECTIONS"]
