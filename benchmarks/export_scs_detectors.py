"""Write the 65–131 mrad abTEM cross-sections as a second shipped table.

The GPU calibration (``calibrate_scs_abtem.py``) computed every configuration's scan on two
annular detectors at once, 65–200 mrad (shipped as ``scs_abtem.csv``) and 65–131 mrad (kept
in ``results/calibrate_scs_abtem.json`` only).  65–131 mrad is the detector the CPU
multislice of the notes used (the outer angle Δx = 0.05 Å sampling allows at 300 kV), so
images from such a simulation, or from a microscope whose HAADF detector ends near 130 mrad,
need it.  This script writes ``src/perovstem/simulate/data/scs_abtem_65-131.csv`` from the
JSON in the format of the main table, and first checks that the same export of the
65–200 mrad entries gives the shipped table's numbers (so both tables come from one
procedure).  No abTEM needed::

    python benchmarks/export_scs_detectors.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "src" / "perovstem" / "simulate" / "data"
JSON = HERE / "results" / "calibrate_scs_abtem.json"
SHIPPED = DATA / "scs_abtem.csv"
OUT = DATA / "scs_abtem_65-131.csv"
# (run, key in the run, column_type in the table): Br and Cs come from the Pb-Br slabs
PARTS = (("PbBr", "PbBr"), ("PbBr", "Br"), ("PbBr", "Cs"), ("CdBr", "CdBr"), ("Pb", "Pb"))


def rows(runs: dict, detector: str) -> pd.DataFrame:
    out = []
    for kv in (300, 200):
        for run, key in PARTS:
            r = runs[f"{run}_{kv}"]
            v = r[detector][key]
            for i, n in enumerate(r["n"]):
                out.append(
                    {
                        "voltage_kV": kv,
                        "column_type": key,
                        "n": int(n),
                        "scs_voronoi_A2": float(v["mean"][i]),
                        "se_A2": float(v["se"][i]),
                        "configs": int(r["configs"]),
                    }
                )
        for el, s in runs[f"atoms_{kv}"][detector].items():
            out.append({"voltage_kV": kv, "column_type": f"atom_{el}", "scs_voronoi_A2": s})
    return pd.DataFrame(out)


def main() -> None:
    runs = json.loads(JSON.read_text())["abtem_runs"]
    shipped = pd.read_csv(SHIPPED, comment="#")
    key = ["voltage_kV", "column_type", "n"]
    check = rows(runs, "65-200mrad").merge(shipped, on=key, how="inner", suffixes=("", "_s"))
    rel = np.abs(check["scs_voronoi_A2"] / check["scs_voronoi_A2_s"] - 1)
    cols = shipped[~shipped["column_type"].str.startswith("atom_")]
    assert len(check) == len(cols), (len(check), len(cols))  # every column row, atoms aside
    assert rel.max() < 1e-5, rel.max()
    narrow = rows(runs, "65-131mrad")
    like = shipped.set_index(key)
    narrow = narrow.join(like[["semiangle_mrad", "repeat_A", "ndiv"]], on=key)
    atoms = narrow["column_type"].str.startswith("atom_")
    base = shipped[shipped["column_type"].str.startswith("atom_")].iloc[0]
    narrow.loc[atoms, ["semiangle_mrad", "repeat_A", "ndiv", "n"]] = [
        base["semiangle_mrad"],
        base["repeat_A"],
        base["ndiv"],
        base["n"],
    ]
    narrow.loc[atoms, ["se_A2", "configs"]] = [0.0, 1]
    narrow["inner_mrad"], narrow["outer_mrad"] = 65, 131
    narrow = narrow[list(shipped.columns)]
    head = [
        line.replace("HAADF 65-200 mrad", "HAADF 65-131 mrad (this table)")
        for line in SHIPPED.read_text().splitlines()
        if line.startswith("#")
    ]
    with OUT.open("w") as fh:
        fh.write(
            "# perovstem SCS calibration table, 65-131 mrad annular detector: the same abTEM\n"
            "# runs as scs_abtem.csv (every configuration was scanned onto both detectors), \n"
            "# exported from benchmarks/results/calibrate_scs_abtem.json by\n"
            "# benchmarks/export_scs_detectors.py (which first re-exports the 65-200 mrad rows\n"
            f"# and checks them against scs_abtem.csv: max relative difference {rel.max():.1e}).\n"
            "# Header of the main table, for the conditions:\n"
        )
        fh.writelines(f"{line}\n" for line in head)
        narrow.to_csv(fh, index=False, float_format="%.6g")
    print(f"wrote {OUT} ({len(narrow)} rows); 65-200 re-export max rel diff {rel.max():.1e}")


if __name__ == "__main__":
    main()
