"""Cramér–Rao lower bound of column positions and cross-sections under Poisson noise."""

from __future__ import annotations

import numpy as np
import pandas as pd

from perovstem._validation import check_positive, refuse_text_numbers
from perovstem.errors import DataError, ParameterError

__all__ = ["crlb"]


def crlb(
    columns: pd.DataFrame,
    shape: tuple[int, int],
    pixel_size_A: float,
    *,
    dose_e_per_A2: float | None = None,
    background: float = 0.0,
    gain: float = 1.0,
    offset: float = 0.0,
    origin_A: tuple[float, float] = (0.0, 0.0),
    cutoff_rho: float = 4.0,
    width_known: bool = True,
) -> pd.DataFrame:
    """Cramér–Rao lower bound of (x, y, η, SCS[, ρ]) for every column of a Gaussian model.

    The expected image is ``μ = B + Σ η g`` (:func:`perovstem.atoms.model_image`), observed
    with Poisson noise.  Two unit conventions:

    * ``dose_e_per_A2`` given: η and ``background`` are fractions of the incident beam
      (normalised image) and Var = μ/(dose·dx²);
    * otherwise η and ``background`` are detector counts with Var = gain·(μ − offset).

    The Fisher information ``F = Σ_p ∇μ_p ∇μ_pᵀ / Var_p`` (e.g. van den Bos, *Parameter
    Estimation for Scientists and Engineers*, 2007; applied to HAADF columns by
    De Backer et al., Ultramicroscopy 134 (2013) 23) is assembled over each column and its
    overlapping neighbours (so close neighbours raise the bound) and inverted.

    Parameters
    ----------
    columns : DataFrame
        ``x_A, y_A, rho_A, eta`` per column (true or fitted values).
    shape : (M, N)
        Image size in pixels.
    pixel_size_A : float
    width_known : bool
        True: ρ is known (shared by many columns, as in the default fit); False: ρ is a free
        parameter of each column (adds ``rho_crlb_A``).

    Returns
    -------
    DataFrame
        ``x_crlb_A, y_crlb_A, eta_crlb, scs_crlb`` (+ ``rho_crlb_A``), one row per column, in
        the order of ``columns``.
    """
    refuse_text_numbers(locals())
    from perovstem.atoms import _kernels as K
    from perovstem.atoms.fit import fisher_covariance

    dx = check_positive("pixel_size_A", pixel_size_A)
    for c in ("x_A", "y_A", "rho_A", "eta"):
        if c not in columns.columns:
            raise DataError(f"`columns` needs column {c!r}, got {list(columns.columns)}")
    if len(columns) == 0:
        raise DataError("`columns` is empty")
    rho = columns["rho_A"].to_numpy(float) / dx
    if np.any(~(rho > 0)):
        raise ParameterError(f"`rho_A` must be > 0, got min {float(np.min(rho)) * dx!r}")
    x = np.ascontiguousarray((columns["x_A"].to_numpy(float) - origin_A[0]) / dx)
    y = np.ascontiguousarray((columns["y_A"].to_numpy(float) - origin_A[1]) / dx)
    eta = columns["eta"].to_numpy(float)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y)) and np.all(np.isfinite(eta))):
        raise DataError("`columns` contains non-finite positions or amplitudes")
    try:
        ny, nx = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise ParameterError(f"`shape` must be (rows, cols), got {shape!r}") from None
    if ny < 1 or nx < 1:
        raise ParameterError(f"`shape` must be at least (1, 1), got {shape!r}")
    out_of = (x < -0.5) | (x > nx - 0.5) | (y < -0.5) | (y > ny - 0.5)
    if out_of.any():
        i = int(np.flatnonzero(out_of)[0])
        raise DataError(
            f"{int(out_of.sum())} column position(s) lie outside the {ny}×{nx} image "
            f"(first: #{i} at x_A={columns['x_A'].iloc[i]:.3f}, y_A={columns['y_A'].iloc[i]:.3f})"
        )
    mu = np.full((ny, nx), float(background))
    K.add_columns(mu, x, y, eta, rho, float(cutoff_rho), 1.0)
    if dose_e_per_A2 is not None:
        s = 1.0 / (check_positive("dose_e_per_A2", dose_e_per_A2) * dx * dx)
        var = s * mu
    else:
        var = check_positive("gain", gain) * (mu - float(offset))
    floor = 1e-9 * float(np.max(var)) if np.max(var) > 0 else 1e-12
    w = 1.0 / np.maximum(var, floor)
    cov = fisher_covariance(mu.shape, w, x, y, eta, rho, float(cutoff_rho), not width_known)
    rho_A = rho * dx
    out = pd.DataFrame(
        {
            "x_crlb_A": np.sqrt(cov[:, 0, 0]) * dx,
            "y_crlb_A": np.sqrt(cov[:, 1, 1]) * dx,
            "eta_crlb": np.sqrt(cov[:, 2, 2]),
        },
        index=columns.index,
    )
    ds_de = 2 * np.pi * rho_A**2
    if width_known:
        out["scs_crlb"] = ds_de * out["eta_crlb"]
    else:
        ds_dr = 4 * np.pi * eta * rho_A
        var_s = (
            ds_de**2 * cov[:, 2, 2]
            + ds_dr**2 * cov[:, 3, 3] * dx * dx
            + (2 * ds_de * ds_dr * cov[:, 2, 3] * dx)
        )
        out["scs_crlb"] = np.sqrt(np.maximum(var_s, 0))
        out["rho_crlb_A"] = np.sqrt(cov[:, 3, 3]) * dx
    out.attrs.update(pixel_size_A=dx, noise="poisson", width_known=width_known)
    return out
