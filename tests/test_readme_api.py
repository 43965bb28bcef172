"""The README's "Quantify an image" example runs and counts the simulated columns right."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def _block(title: str) -> str:
    text = README.read_text()
    section = text.split(f"## {title}", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_quantify_example_runs_and_counts(capsys):
    ns: dict = {}
    exec(compile(_block("Quantify an image (Python)"), "README.md", "exec"), ns)
    counts, truth = ns["counts"], ns["truth"]
    assert "n_atoms" in capsys.readouterr().out
    # match every counted Pb–Br / Cs column to its true column (nearest within 0.5 Å)
    sel = counts[counts["type"].isin(["PbBr", "Cs"])]  # Br columns are reported separately
    t = truth[truth["type"].isin(["PbBr", "Cs"])]
    d = np.hypot(
        sel["x_A"].to_numpy()[:, None] - t["x_A"].to_numpy()[None],
        sel["y_A"].to_numpy()[:, None] - t["y_A"].to_numpy()[None],
    )
    j = d.argmin(axis=1)
    assert np.all(d[np.arange(len(sel)), j] < 0.5)
    exact = np.mean(sel["n_atoms"].to_numpy() == t["n_atoms"].to_numpy()[j])
    assert exact >= 0.95
