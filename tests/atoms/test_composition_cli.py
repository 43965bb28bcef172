"""``perovstem atoms composition``: the Cd fraction of a counted column table.

Before: the composition estimate existed in Python and as a pipeline step only; a user of
the command line had no way to it.  Checked on images of the fast simulator, whose column
cross-sections come from the same abTEM-calibrated column model the estimate uses (not an
independent check; the pipeline step's tests and docs/counting.md hold the rest).
"""

from __future__ import annotations

import pytest

from perovstem.cli.main import main
from perovstem.io import read_table


def _counted(tmp_path, x, seed, edge=40, dose=1e4):
    img = tmp_path / f"nc{x}.tif"
    argv = ["simulate", "image", "-o", str(img), "--edge-A", str(edge), "--cd-fraction", str(x)]
    assert main([*argv, "--dose-e-per-A2", str(dose), "--seed", str(seed)]) == 0
    cols = tmp_path / f"f{x}.parquet"
    assert (
        main(["atoms", "fit", str(img), "--cell", "cspbbr3", "--normalize", "-o", str(cols)]) == 0
    )
    counts = tmp_path / f"c{x}.parquet"
    argv = ["atoms", "count", str(cols), "--library", "simulate", "--method", "hybrid"]
    assert main([*argv, "--termination", "CsBr", "-o", str(counts)]) == 0
    return cols, counts


@pytest.mark.parametrize("x,seed", [(0.0, 21), (0.3, 22)])
def test_cli_composition_recovers_x(tmp_path, capsys, x, seed):
    # measured (session 27, seeds 11, 32 images: x 0-0.5, 40/80 Å, 10⁴/5·10⁴ e⁻/Å², CsBr and
    # PbBr2 faces): 31 of 32 intervals cover, |x̂ − x| ≤ 0.028
    _, counts = _counted(tmp_path, x, seed)
    out = tmp_path / "cd.parquet"
    capsys.readouterr()
    assert main(["atoms", "composition", str(counts), "-o", str(out)]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert said.startswith("x(Cd) = ") and "thickness: Cs neighbours" in said
    assert "from the Cs library counting" in said
    cd = read_table(out)
    lo, hi = cd.attrs["x_ci"]
    # the interval covers; a 40 Å cube at 10⁴ e⁻/Å² has ~60 usable Pb-Br columns: σ ≈ 0.04
    assert lo <= x <= hi and cd.attrs["x_err"] < 0.05, cd.attrs
    assert {"x_A", "y_A"} <= set(cd.columns) and len(cd) > 20
    if x == 0.0:
        assert hi < 0.02


def test_cli_composition_refusals_and_the_counted_thickness(tmp_path, capsys):
    cols, counts = _counted(tmp_path, 0.3, 23)
    out = tmp_path / "cd.parquet"
    assert main(["atoms", "composition", str(cols), "-o", str(out)]) == 2  # not counted
    assert "has no 'n_atoms': count it first" in capsys.readouterr().err and not out.exists()
    # a table fitted in detector counts (no --normalize) is not in the model's Å²
    raw = read_table(counts)
    raw.attrs["scs_units"] = "counts·Å²"
    from perovstem.io import save_table

    save_table(raw, tmp_path / "raw.parquet")
    assert main(["atoms", "composition", str(tmp_path / "raw.parquet"), "-o", str(out)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "raw.parquet" in err and "perovstem atoms fit --normalize" in err and not out.exists()
    assert main(["atoms", "composition", str(counts), "-o", str(out), "--confidence", "1.5"]) == 2
    assert "--confidence" in capsys.readouterr().err
    argv = ["atoms", "composition", str(counts), "-o", str(out), "--thickness-from", "counted"]
    assert main(argv) == 0
    said = " ".join(capsys.readouterr().out.split())
    # Cd lowers the Pb-Br cross-sections that then count fewer cells: x reads low, said
    assert "thickness: counted" in said and "WARNING: the thickness was counted" in said
    assert main(["atoms", "composition", str(counts), "-o", str(out)]) == 2  # exists
    assert "--overwrite" in capsys.readouterr().err
    # the thickness of another measurement (here the simulation's truth: cells per column)
    truth = tmp_path / "nc0.3_truth.parquet"
    argv = ["atoms", "composition", str(counts), "-o", str(out), "--overwrite"]
    assert main([*argv, "--thickness", str(truth)]) == 0
    assert "thickness: given" in " ".join(capsys.readouterr().out.split())
    lo, hi = read_table(out).attrs["x_ci"]
    assert lo <= 0.3 <= hi


def test_cli_composition_of_a_tiny_crystal_says_why_and_how_little(tmp_path, capsys):
    """A 12 Å crystal: every counted Pb-Br column was left out because its Cs neighbours
    disagree, and the refusal said "no counted Pb-Br columns" (it had four).  It now says
    why and how to give the thickness; the counted-thickness estimate that follows rests on
    a handful of columns, which a warning says, and its line keeps the interval without a
    ± that contradicts it."""
    _, counts = _counted(tmp_path, 0.0, 8, edge=12)
    out = tmp_path / "cd.parquet"
    table = read_table(counts)
    n_pb = int(((table["type"] == "PbBr") & table["n_atoms"].notna()).sum())
    assert main(["atoms", "composition", str(counts), "-o", str(out)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"all {n_pb} counted Pb-Br columns were left out" in err, err
    assert "--thickness-from counted" in err and "--thickness" in err
    assert main(["atoms", "composition", str(counts), "-o", str(out), "--thickness-from",
                 "counted"]) == 0  # fmt: skip
    said = " ".join(capsys.readouterr().out.split())
    assert f"WARNING: x rests on {n_pb} Pb-Br column(s)" in said, said
    attrs = read_table(out).attrs
    x, (lo, hi) = attrs["x"], attrs["x_ci"]
    symmetric = abs((hi - x) - (x - lo)) <= 0.5 * (hi - lo)
    assert (" ± " in said.split("[")[0]) == symmetric, said
