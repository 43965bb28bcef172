"""Reader of StatSTEM's projected-unit-cell text files (``Database/*.txt``).

Format (tab- or space-separated)::

    Database file for StatSTEM
    length_a    5.85
    length_b    5.85
    length_c    5.85
    angle_ab    90

    atoms   x   y
    Pb  0   0
    Cs  0.5 0.5

    zInfo
    Pb  0
    Cs  0.5
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from perovstem.errors import FileFormatError

__all__ = ["read_statstem_cell"]


def read_statstem_cell(
    path: str | os.PathLike,
    *,
    rename: dict[str, str] | None = None,
    merge_A: float | None = 0.5,
):
    """Read a StatSTEM projected unit cell into a :class:`perovstem.atoms.ProjectedCell`.

    Parameters
    ----------
    path : path-like
        The ``.txt`` file.
    rename : dict, optional
        Map of atom names to column types (e.g. ``{"Pb": "PbBr"}`` for CsPbBr3).
    merge_A : float or None
        The files list atoms; atoms whose projections lie within ``merge_A`` Å of each other
        (stacked along the beam, or split by octahedral tilts) form one column site, see
        :meth:`ProjectedCell.merged` (``n_atoms`` per site).  ``None`` keeps one site per
        listed atom.

    Raises
    ------
    FileFormatError
        Missing file, missing ``length_a/length_b/angle_ab`` or ``atoms`` section, bad numbers.
    """
    from perovstem.atoms.cell import ProjectedCell

    p = Path(path)
    if not p.is_file():
        raise FileFormatError(f"{p}: no such StatSTEM unit-cell file")
    try:
        lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise FileFormatError(f"{p}: cannot read ({exc})") from None
    params: dict[str, float] = {}
    atoms: list[tuple[str, float, float]] = []
    zinfo: list[float] = []
    section = "header"
    for n, raw in enumerate(lines, 1):
        parts = raw.split()
        if not parts:
            continue
        key = parts[0].lower()
        if key in ("atoms", "columns"):  # Au100, Ce100, Pt100 of StatSTEM's database: "columns"
            section = "atoms"
            continue
        if key == "zinfo":
            section = "z"
            continue
        try:
            if section == "header" and key in ("length_a", "length_b", "length_c", "angle_ab"):
                params[key] = float(parts[1])
            elif section == "atoms" and len(parts) >= 3:
                atoms.append((parts[0], float(parts[1]), float(parts[2])))
            elif section == "z" and len(parts) >= 2:
                zinfo.append(float(parts[1]))
        except ValueError:
            raise FileFormatError(f"{p}, line {n}: cannot parse numbers in {raw!r}") from None
    for k in ("length_a", "length_b", "angle_ab"):
        if k not in params:
            raise FileFormatError(f"{p}: not a StatSTEM unit-cell file (no '{k}' line)")
    if not atoms:
        raise FileFormatError(f"{p}: no 'atoms' (or 'columns') section with x/y fractions")
    rename = rename or {}
    sites = pd.DataFrame(
        {
            "type": [rename.get(a[0], a[0]) for a in atoms],
            "u": [a[1] for a in atoms],
            "v": [a[2] for a in atoms],
            "z": zinfo if len(zinfo) == len(atoms) else [0.0] * len(atoms),
        }
    )
    try:
        cell = ProjectedCell(
            params["length_a"],
            params["length_b"],
            params["angle_ab"],
            sites,
            c_A=params.get("length_c"),
            name=p.stem,
        )
    except Exception as exc:  # ParameterError / DataError from the cell
        raise FileFormatError(f"{p}: invalid unit cell ({exc})") from None
    return cell if merge_A is None else cell.merged(merge_A)
