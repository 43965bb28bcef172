"""Atomic-structure files: XYZ (extended, with per-atom arrays) and CIF via ASE, written atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from perovstem.errors import DataError, FileFormatError, ParameterError
from perovstem.io._write import atomic_path

__all__ = ["save_structure", "read_structure", "STRUCTURE_SUFFIXES"]

STRUCTURE_SUFFIXES = {
    ".xyz": "extxyz",
    ".extxyz": "extxyz",
    ".cif": "cif",
    ".pdb": "proteindatabank",
}


def save_structure(atoms: Any, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Write an ``ase.Atoms`` model to ``.xyz`` (extended XYZ), ``.cif`` or ``.pdb``.

    Extended XYZ keeps the per-atom arrays (``label``, ``column``, occupation probabilities)
    and ``atoms.info``; CIF writes positions in a vacuum box around the particle (P1).

    Parameters
    ----------
    atoms : ase.Atoms
    path : path-like
        Output file; the suffix selects the format.
    overwrite : bool
        Replace an existing file (never a protected input).

    Returns
    -------
    Path
    """
    from ase import Atoms
    from ase.io import write

    if not isinstance(atoms, Atoms):
        raise DataError(f"`atoms` must be an ase.Atoms, got {type(atoms).__name__}")
    if len(atoms) == 0:
        raise DataError("`atoms` is empty: nothing to write")
    path = Path(path)
    fmt = STRUCTURE_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise ParameterError(
            f"unsupported structure file suffix {path.suffix!r} for {path}; "
            f"use one of {sorted(STRUCTURE_SUFFIXES)}"
        )
    out = atoms.copy()
    if fmt != "extxyz" and not out.cell.any():
        # a box 10 Å larger than the particle, particle centred
        pos = out.get_positions()
        span = pos.max(0) - pos.min(0) + 10.0
        out.set_cell(span)
        out.set_positions(pos - pos.min(0) + 5.0)
        out.pbc = False
    if fmt == "extxyz":
        out.info = {k: v for k, v in out.info.items() if isinstance(v, (int, float, str, bool))}
    with atomic_path(path, overwrite=overwrite) as tmp:
        write(str(tmp), out, format=fmt)
    return path


def read_structure(path: str | os.PathLike):
    """Read a structure file (any format ASE knows) into ``ase.Atoms``."""
    from ase.io import read

    p = Path(path)
    if not p.is_file():
        raise FileFormatError(f"structure file {p} does not exist")
    try:
        fmt = STRUCTURE_SUFFIXES.get(p.suffix.lower())
        return read(str(p), format=fmt)
    except Exception as exc:  # ASE raises many kinds
        raise FileFormatError(f"cannot read structure file {p}: {exc}") from None
