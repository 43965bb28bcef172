"""One KMC + rendering recipe shared by the in-situ tests (not collected: no test_ prefix)."""

from __future__ import annotations


def kmc_imaged(
    edge_A,
    *,
    rate,
    seed,
    temperature_K=300.0,
    n_frames=12,
    crystal_seed=None,
    params=None,
    **imaging,
):
    """KMC trajectory of a builder cube and its rendered series: ``(trajectory, series, truth)``.

    ``imaging`` goes to :func:`perovstem.simulate.insitu_series` (pixel size, drift, jitter,
    probe, ``rng``); the crystal is built with ``crystal_seed`` (default ``seed``); ``params``
    are the KMC's :class:`~perovstem.simulate.KineticParameters` (default when None).
    """
    from perovstem.simulate import degradation_kmc, insitu_series, nanocrystal

    at = nanocrystal(edge_A=edge_A, rng=seed if crystal_seed is None else crystal_seed)
    tr = degradation_kmc(
        at,
        n_frames=n_frames,
        frame_time_s=1.0,
        dose_rate_e_per_A2_s=rate,
        temperature_K=temperature_K,
        rng=seed,
        **({} if params is None else {"params": params}),
    )
    s, truth = insitu_series(tr, **imaging)
    return tr, s, truth
