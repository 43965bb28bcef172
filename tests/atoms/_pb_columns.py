"""Fitted cross-sections of simulated metallic Pb columns (shared by the ladder-counting tests
and ``benchmarks/bench_count_ladder.py``; no pytest import)."""

from __future__ import annotations

import warnings

import numpy as np

A_PB = 4.95  # fcc Pb lattice constant, Å


def pb_column_scs(n: np.ndarray, dose: float, rng: np.random.Generator, *, with_err: bool = False):
    """Fitted SCS and true counts of isolated-ish [001] Pb columns of ``n`` atoms each.

    The columns sit on a square grid (fcc [001] spacing); the image is the fast HAADF model
    at 0.25 Å pixels with Poisson noise at ``dose`` (e⁻/Å², drawn from ``rng``), measured by
    ``fit_columns`` at the true positions.  Columns with a non-positive SCS are dropped.
    ``with_err``: also the fit's ``scs_err`` (same draws).
    """
    from ase import Atoms

    from perovstem.atoms import fit_columns
    from perovstem.simulate import haadf_image

    side = int(np.ceil(np.sqrt(n.size)))
    ij = np.array([(i, j) for i in range(side) for j in range(side)])[: n.size]
    xy = ij * A_PB / np.sqrt(2)
    pos = [
        (x, y, (2 * m + (i + j) % 2) * A_PB / 2)
        for (x, y), k, (i, j) in zip(xy, n, ij, strict=True)
        for m in range(k)
    ]
    atoms = Atoms("Pb" * len(pos), positions=pos)
    atoms.arrays["label"] = np.ones(len(atoms), int)  # metallic Pb columns
    img, truth = haadf_image(atoms, dose_e_per_A2=dose, rng=rng, pixel_size_A=0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = fit_columns(img, truth[["x_A", "y_A"]])
    x, n_true = df["scs"].to_numpy(), truth["n_atoms"].to_numpy()
    keep = x > 0
    if with_err:
        return x[keep], n_true[keep], df["scs_err"].to_numpy()[keep]
    return x[keep], n_true[keep]
