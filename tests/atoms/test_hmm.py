"""Tests of hidden-Markov time-series atom counting."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from perovstem.atoms.hmm import (
    PoissonLossTransitions,
    _forward_backward_log,
    _log_emission,
    _poisson_loss_logA,
    fit_hmm,
    forward_backward,
    viterbi,
)
from perovstem.errors import DataError, ParameterError

NN = np.arange(1, 31)
LIB_TRUE = 0.0150 * NN - 0.00006 * NN**2  # channelling-like curvature


def _loss_series(seed, n_cols=150, n_frames=20, dose=5e4, sigma=0.003, scale=0.97):
    rng = np.random.default_rng(seed)
    lam = rng.uniform(2e-6, 8e-6, n_cols)  # atoms per e/A^2
    h = np.empty((n_frames, n_cols), int)
    h[0] = rng.integers(12, 21, n_cols)
    for t in range(1, n_frames):
        h[t] = np.maximum(h[t - 1] - rng.poisson(lam * dose), 1)
    obs = scale * LIB_TRUE[h - 1] + rng.normal(0, sigma, h.shape)
    return h, obs, lam


def _brute_force_map(logB, log_init, logA):
    """argmax over all K^T paths of one column (T small)."""
    T, K = logB.shape
    paths = np.array(list(itertools.product(range(K), repeat=T)))
    lp = log_init[paths[:, 0]] + logB[0, paths[:, 0]]
    for t in range(1, T):
        lp = lp + logA[paths[:, t - 1], paths[:, t]] + logB[t, paths[:, t]]
    return paths[np.argmax(lp)], lp.max()


def test_scaled_forward_backward_equals_log_space():
    rng = np.random.default_rng(0)
    T, N, K = 6, 9, 7
    logB = rng.normal(0, 30, (T, N, K))
    A = rng.dirichlet(np.ones(K), K)
    A[0, 3] = 0.0
    A /= A.sum(1, keepdims=True)
    li = np.log(rng.dirichlet(np.ones(K)))
    with np.errstate(divide="ignore"):
        mu = rng.uniform(0, 2, (T - 1, N))
        counts = np.arange(3, 10)
        lazy = PoissonLossTransitions(mu, counts)
        full = _poisson_loss_logA(mu, counts)
        assert np.allclose(np.exp(full[2]), lazy.prob(2))
        drop = (counts[:, None] - counts[None, :]).astype(float)
        for logA in (np.log(A), full, lazy):
            a = forward_backward(logB, li, logA, drop=drop)
            b = _forward_backward_log(logB, li, logA)
            assert np.allclose(a[0], b[0], atol=1e-10)
            assert np.allclose(a[1], b[1], atol=1e-8)
            assert np.allclose(a[3], b[3], rtol=1e-10)
            if b[2] is not None:  # per-step transitions: expected drop from the full xi
                assert np.allclose(a[2], np.einsum("tnij,ij->tn", b[2], drop), atol=1e-8)


def test_scaled_forward_backward_survives_impossible_observations():
    """A column whose counts rise under the loss model underflows the scaled pass; the
    result must still equal the log-space reference (no NaN, no overflow warning)."""
    rng = np.random.default_rng(3)
    T, N, K = 8, 5, 12
    lib = 0.01 * np.arange(1, K + 1)
    h = np.tile(np.arange(K - 1, K - 1 - T, -1), (N, 1)).T  # losing one atom per frame
    h[4:, 2] = K - 1  # column 2 jumps back to the top: impossible under "loss"
    obs = lib[h] + rng.normal(0, 2e-4, h.shape)
    logB = _log_emission(obs, lib, 2e-4)
    i, j = np.indices((K, K))
    with np.errstate(divide="ignore"):
        logA = np.log(np.where(j <= i, 1.0, 0.0) / np.arange(1, K + 1)[:, None])
        li = np.log(np.full(K, 1.0 / K))
        mu = np.full((T - 1, N), 1.0)
        counts = np.arange(1, K + 1)
        drop = (counts[:, None] - counts[None, :]).astype(float)
        for A in (logA, PoissonLossTransitions(mu, counts)):
            with np.errstate(over="raise", invalid="raise"):
                a = forward_backward(logB, li, A, drop=drop)
            b = _forward_backward_log(
                logB,
                li,
                A if not isinstance(A, np.ndarray) else np.broadcast_to(A, (T - 1, N, K, K)),
            )
            assert np.isfinite(a[0]).all() and np.isfinite(a[3]).all()
            assert np.allclose(a[0], b[0], atol=1e-8)
            assert np.allclose(a[1], b[1], atol=1e-6)
            assert np.allclose(a[3], b[3], rtol=1e-10)
            assert np.allclose(a[2], np.einsum("tnij,ij->tn", b[2], drop), atol=1e-6)


def test_viterbi_equals_brute_force():
    rng = np.random.default_rng(1)
    T, N, K = 5, 4, 5
    logB = rng.normal(0, 3, (T, N, K))
    logA = np.log(rng.dirichlet(np.ones(K), K))
    li = np.log(rng.dirichlet(np.ones(K)))
    path, lp = viterbi(logB, li, logA)
    for n in range(N):
        p, best = _brute_force_map(logB[:, n], li, logA)
        assert np.array_equal(path[:, n], p)
        assert lp[n] == pytest.approx(best)


def test_poisson_loss_matrix_is_stochastic_and_monotone():
    A = np.exp(_poisson_loss_logA(np.array([0.0, 0.5, 3.0]), np.arange(1, 9)))
    assert np.allclose(A.sum(-1), 1.0)
    assert np.all(np.triu(A, 1) == 0)  # never gains atoms
    assert np.allclose(A[0], np.eye(8))
    assert A[1, 5, 4] == pytest.approx(0.5 * np.exp(-0.5))


@pytest.mark.parametrize("seed", [3, 4])
def test_dose_model_recovers_loss_rates(seed):
    h, obs, lam = _loss_series(seed)
    dose = 5e4
    res = fit_hmm(obs, LIB_TRUE, model="dose", dose_e_per_A2=dose)
    assert res.converged
    assert res.scale == pytest.approx(0.97, abs=0.005)
    assert np.mean(res.n_atoms == h) > 0.97
    assert np.all(np.diff(res.n_atoms, axis=0) <= 0)
    # per-column loss rate vs the realised truth (atoms lost / dose)
    total = dose * (h.shape[0] - 1)
    real = (h[0] - h[-1]) / total
    ok = real * total >= 3
    rel = np.abs(res.loss_rate[ok] - real[ok]) / real[ok]
    assert np.mean(rel <= 0.10) >= 0.9
    assert np.median(rel) < 0.05
    # errors are honest: |est - truth| < 3 sigma for nearly all columns
    assert np.mean(np.abs(res.loss_rate - real) < 3 * res.loss_rate_err) > 0.95
    # population rate vs the simulation parameter (truncation at 1 atom lowers it a little)
    assert res.loss_rate.mean() == pytest.approx(lam.mean(), rel=0.10)
    ct = res.column_table()
    assert {"loss_rate_per_e_A2", "loss_rate_err_per_e_A2", "atoms_lost"} <= set(ct.columns)


def test_shared_rate_and_loss_model():
    h, obs, lam = _loss_series(5, n_cols=80, n_frames=15)
    res = fit_hmm(obs, LIB_TRUE, model="dose", dose_e_per_A2=5e4, rate="shared")
    assert np.ptp(res.loss_rate) == 0
    real = (h[0] - h[-1]).sum() / (80 * 5e4 * 14)
    assert res.loss_rate[0] == pytest.approx(real, rel=0.1)
    loss = fit_hmm(obs, LIB_TRUE, model="loss", dose_e_per_A2=5e4)
    assert np.all(np.triu(loss.transition, 1) == 0)
    assert np.all(np.diff(loss.n_atoms, axis=0) <= 0)
    assert np.mean(loss.n_atoms == h) > 0.95


def test_free_model_random_walk_counts():
    rng = np.random.default_rng(8)
    T, N = 8, 120
    h = np.empty((T, N), int)
    h[0] = rng.integers(4, 10, N)
    for t in range(1, T):
        h[t] = np.clip(h[t - 1] + rng.choice([-1, 0, 1], N, p=[0.1, 0.8, 0.1]), 1, 12)
    sigma = 0.0075  # too noisy for frame-by-frame counting
    obs = LIB_TRUE[h - 1] + rng.normal(0, sigma, h.shape)
    frame_wise = np.argmin(np.abs(obs[:, :, None] - LIB_TRUE[None, None, :15]), axis=2) + 1
    res = fit_hmm(obs, LIB_TRUE, max_states=15, max_step=1)
    assert res.converged
    hmm_exact = np.mean(res.n_atoms == h)
    assert hmm_exact > np.mean(frame_wise == h) + 0.05
    diag = np.diag(res.transition)[3:10]
    assert np.all(diag > 0.6)
    tab = res.table(obs)
    assert len(tab) == T * N and tab["p_n_atoms"].between(0, 1).all()


def test_bad_input():
    with pytest.raises(DataError, match="2 frames"):
        fit_hmm(np.ones((1, 5)), LIB_TRUE)
    with pytest.raises(DataError, match="2-D"):
        fit_hmm(np.ones(5), LIB_TRUE)
    with pytest.raises(DataError, match=">= 0"):
        fit_hmm(-np.ones((3, 5)), LIB_TRUE)


def test_emptied_columns_with_slightly_negative_scs():
    # a column emptied under the beam is fitted with SCS ≈ 0 ± noise: a few slightly negative
    # values were refused ("`scs` must be >= 0, got minimum -0.000319" on a real fit series);
    # they are observations of the lowest state
    rng = np.random.default_rng(3)
    import pandas as pd

    scs = np.r_[0.0, LIB_TRUE]
    lib = pd.DataFrame({"n_atoms": np.arange(scs.size), "scs_A2": scs})
    truth = np.repeat(np.array([[4, 3, 2, 1, 0, 0]]).T, 8, axis=1)  # (frames, columns)
    obs = scs[truth] + rng.normal(0, 0.1 * scs[1], truth.shape)
    assert (obs < 0).any()
    res = fit_hmm(obs, lib)
    assert (res.n_atoms == truth).mean() > 0.95
    with pytest.raises(ParameterError, match="dose_e_per_A2"):
        fit_hmm(np.ones((3, 5)), LIB_TRUE, model="dose")
    with pytest.raises(ParameterError, match="model"):
        fit_hmm(np.ones((3, 5)), LIB_TRUE, model="gain")
    # a negative band forbade every transition: NaN EM, exit 0
    with pytest.raises(ParameterError, match=r"max_step.*-1"):
        fit_hmm(np.ones((3, 5)), LIB_TRUE, max_step=-1)


def test_example_hmm_converged_reference(statstem_data):
    """Converged reference: the EM optimum is reached from several random starts, and the
    Viterbi paths equal the exhaustive MAP over all 15^5 paths (checked for some columns)."""
    d = np.load(statstem_data / "npz" / "example_HMM_input.npz")
    obs = d["O_scs_frames_by_columns"]
    lib = d["libraries_scs"]
    G = int(d["G_max_atoms"])
    elapsed = np.inf
    for _ in range(3):  # best of 3 in CPU time: robust to a busy, shared CI machine
        t0 = time.process_time()
        res = fit_hmm(obs, lib, max_states=G)
        elapsed = min(elapsed, time.process_time() - t0)
    assert res.converged
    assert elapsed <= 1.0
    # 1) a much tighter EM convergence from the same (StatSTEM) start gives the same paths
    tight = fit_hmm(obs, lib, max_states=G, tol=1e-15, max_iter=20000)
    assert tight.converged and tight.loglik >= res.loglik - 1e-9
    assert np.array_equal(tight.n_atoms, res.n_atoms)
    # 2) perturbed starts near the physical prior (c ~ 1): none finds a better optimum, and all
    #    that reach it give identical counts.  (Far starts, c ~ 0.83, reach other, self-similar
    #    optima with different absolute counts: the library prior c ~ 1 resolves those.)
    rng = np.random.default_rng(0)
    w0 = (obs.max() - obs.min()) / (2 * G)
    reached = 0
    for _ in range(6):
        init = {
            "scale": rng.uniform(0.97, 1.03),
            "width": w0 * rng.uniform(0.5, 2.0),
            "transition": rng.dirichlet(np.full(G, 5.0), G),
            "initial": rng.dirichlet(np.full(G, 5.0)),
        }
        alt = fit_hmm(obs, lib, max_states=G, init=init)
        assert alt.loglik <= tight.loglik + 1e-3
        if alt.loglik > tight.loglik - 0.01:
            reached += 1
            assert np.array_equal(alt.n_atoms, res.n_atoms)
    assert reached >= 2
    # 3) Viterbi paths are the exhaustive MAP over all 15^5 paths
    logB = _log_emission(obs, res.scale * res.library, res.width)
    with np.errstate(divide="ignore"):
        la, li = np.log(res.transition), np.log(res.initial)
    for n in (0, 57, 116):
        p, _ = _brute_force_map(logB[:, n], li, la)
        assert np.array_equal(res.states[p], res.n_atoms[:, n])


def test_gmm_states_without_library():
    """Tracking with GMM locations as states (no simulations): relative counts are right."""
    h, obs, _ = _loss_series(6, n_cols=120, n_frames=10, sigma=0.0025)
    res = fit_hmm(obs, "gmm", model="loss")
    offset = np.round(np.median(res.n_atoms - h))
    assert np.mean(res.n_atoms - offset == h) > 0.9
    assert res.scale == 1.0
    assert np.all(np.diff(res.n_atoms, axis=0) <= 0)


@pytest.mark.parametrize("scale,n0", [(0.93, 10), (0.91, 8)])
def test_miscalibrated_scale_is_found_from_the_pooled_frames(scale, n0):
    """Gaussian-fit SCS are 5-10 % below the probe-integrated library.  EM from StatSTEM's
    c = 1 settled on the self-similar optimum with every count one low (< 2 % exact); the
    pooled frames span several thicknesses and identify the scale."""
    from perovstem.simulate import scs_library

    lib = scs_library("PbBr", 30)
    L = lib.set_index("n_atoms")["scs_A2"]
    rng = np.random.default_rng(11)
    T, N = 10, 80
    h = np.empty((T, N), int)
    h[0] = n0
    for t in range(1, T):
        h[t] = np.maximum(h[t - 1] - rng.poisson(0.1, N), 1)
    obs = scale * L.loc[h.ravel()].to_numpy().reshape(T, N) + rng.normal(0, 0.004, (T, N))
    res = fit_hmm(obs, lib, model="loss")
    assert res.scale == pytest.approx(scale, rel=0.01)
    assert np.mean(res.n_atoms == h) > 0.98
    # the pooled thicknesses decide the reading (seeds 0-5: P(0) 0.96-1.0)
    assert not res.offset_ambiguous and res.offset_probability[0] > 0.9


@pytest.mark.parametrize("seed", [0, 1])
def test_flat_series_reports_the_offset_probability(seed):
    """A flat crystal (Pb-Br columns of 9 atoms, nothing lost, 7 % below the total-SCS
    library) is read n or n - 1 alike: fit_hmm reports P(d) and flags it as count_atoms
    does (seeds 0-5: every count one low, P(0) 0.42-0.44, flagged); with the known
    calibration as scale_prior the start is the most probable reading and the counts are
    exact, P(0) 0.993-0.994.  Old code: no offset_probability, nothing flagged, and no
    way to give the calibration."""
    from perovstem.simulate import scs_library

    lib = scs_library("PbBr", 30)
    L = lib.set_index("n_atoms")["scs_A2"]
    rng = np.random.default_rng(seed)
    obs = 0.93 * L.loc[9] + rng.normal(0, 0.004, (10, 80))
    with pytest.warns(UserWarning, match=r"fit_hmm: the counts of type\(s\) all columns P = "):
        res = fit_hmm(obs, lib, model="loss")
    p0 = res.offset_probability.get(0, 0.0)
    assert res.offset_ambiguous and 0.2 < p0 < 0.8, res.offset_probability
    assert sum(res.offset_probability.values()) == pytest.approx(1.0)
    summ = res.summary()
    assert summ["offset_ambiguous"] and summ["scale_prior"]["source"] == "default"
    res = fit_hmm(obs, lib, model="loss", scale_prior=(0.93, 0.02))
    assert not res.offset_ambiguous and res.offset_probability[0] > 0.97
    assert np.mean(res.n_atoms == 9) > 0.99
    with pytest.raises(ParameterError, match="scale_prior"):
        fit_hmm(obs, lib, scale_prior=(0.0, 0.1))


def _one_thickness_series(seed, n0=9, n_frames=4, n_cols=30, sigma=0.003, col_sd=0.002):
    """Every column ``n0`` atoms in every frame; persistent column offsets (edges) of
    ``col_sd`` on top of the frame noise ``sigma``."""
    rng = np.random.default_rng(seed)
    bias = rng.normal(0.0, col_sd, n_cols)
    return LIB_TRUE[n0 - 1] + bias + rng.normal(0.0, sigma, (n_frames, n_cols))


def test_frame_noise_from_consecutive_frames():
    """The MAD of frame-to-frame differences is the noise of one SCS: persistent column
    offsets cancel, losses (one-sided) are ignored: 0.88-1.15 of the truth on 32 series of
    8-20 frames, one thickness and loss series with a loss in up to half of the
    differences."""
    from perovstem.atoms.hmm import frame_noise

    ratios = [
        frame_noise(_one_thickness_series(s, n_frames=8, n_cols=60)) / 0.003 for s in range(4)
    ]
    ratios += [frame_noise(_loss_series(s, n_cols=60, n_frames=8)[1]) / 0.003 for s in range(4)]
    ratios += [frame_noise(_loss_series(s, n_frames=20, dose=1e5)[1]) / 0.003 for s in range(4)]
    assert all(0.8 < r < 1.25 for r in ratios), ratios
    assert frame_noise(np.ones((1, 5))) is None and frame_noise(np.ones((3, 5))) is None


def test_gmm_states_refuse_a_series_of_one_thickness():
    """A series whose columns all hold one count (nothing lost; 4 frames of 30 columns): the
    GMM of all frames used to split it into 4-13 states of noise (seeds 0-5), which the HMM
    then tracked as spurious losses.  With the frame noise as the sweep's errors it is one
    level, refused with a message: measured 11 of 12 seeds (the frame noise of 90
    differences reads 0.74-1.08 of the truth); 8 frames of 60 columns, seeds 1-8: 3-22
    states before, one level in 8 of 8."""
    refused = 0
    for seed in range(6):
        try:
            fit_hmm(_one_thickness_series(seed), "gmm", model="loss")
        except DataError as e:
            assert "one count level" in str(e)
            refused += 1
    assert refused >= 5, refused
