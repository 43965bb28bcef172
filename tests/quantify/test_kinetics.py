from __future__ import annotations

import warnings

import numpy as np
import pytest

from perovstem import DataError, ParameterError
from perovstem.quantify.kinetics import (
    K_B_EV_PER_K,
    compare_models,
    fit_arrhenius,
    fit_dose_rate_dependence,
    fit_model,
)


def _br_atoms(rng, d_br, *, n_surface=600, n_bulk=0, d_bulk=None, n_frames=40, dose=5e3):
    """Stochastic desorption of independent Br atoms (binomial per frame), not the fitted curve."""
    doses = np.arange(1, n_frames + 1) * dose
    ns, nb = n_surface, n_bulk
    out = []
    for _ in range(n_frames):
        ns -= rng.binomial(ns, 1 - np.exp(-dose / d_br))
        if nb:
            nb -= rng.binomial(nb, 1 - np.exp(-dose / d_bulk))
        out.append(ns + nb)
    return doses, np.asarray(out, float)


@pytest.mark.parametrize("d_br", [1.5e4, 3e4, 8e4])
def test_br_first_order_recovered_with_honest_ci(d_br):
    hits = 0
    n_rep = 12
    for seed in range(n_rep):
        rng = np.random.default_rng(seed)
        x, y = _br_atoms(rng, d_br, n_surface=3000, n_frames=int(6 * d_br / 5e3))
        y = y + 200  # non-desorbing Br background (N_inf)
        # exact atom counts: a monotone random process, fitted through its increments
        r = fit_model(x, y, "br_first_order", likelihood="poisson", cumulative=True)
        assert r.params["D_Br_e_per_A2"] == pytest.approx(d_br, rel=0.10)
        hits += r.ci_low["D_Br_e_per_A2"] <= d_br <= r.ci_high["D_Br_e_per_A2"]
    # 95 % intervals: at least 9 of 12 must cover (P(fewer) < 1 % for honest intervals)
    assert hits >= 9


def test_model_selection_br_loss():
    rng = np.random.default_rng(1)
    x, y = _br_atoms(rng, 1e4, n_surface=800, n_bulk=1500, d_bulk=1.5e5, n_frames=60)
    tab, fits = compare_models(x, y, "br_loss")
    assert tab.loc[0, "model"] == "br_two_pool"
    f = fits["br_two_pool"]
    assert f.params["D_surface_e_per_A2"] == pytest.approx(1e4, rel=0.15)
    assert f.params["D_bulk_e_per_A2"] == pytest.approx(1.5e5, rel=0.15)
    picked = []
    for seed in range(6):
        x, y = _br_atoms(np.random.default_rng(seed), 3e4, n_frames=40)
        t, _ = compare_models(x, y + 100, ["br_first_order", "br_second_order", "br_linear"])
        picked.append(t.loc[0, "model"])
    assert picked.count("br_first_order") >= 5
    assert np.isclose(tab["weight"].sum(), 1.0)


def _births(rng, x, rate_fn):
    lam = np.diff(rate_fn(x), prepend=0.0)
    return np.cumsum(rng.poisson(np.clip(lam, 0, None))).astype(float)


def test_nucleation_rate_recovered_and_selected():
    x = np.linspace(2e3, 2e5, 60)
    j, d0 = 1e-2, 2e4
    hits = 0
    for seed in range(10):
        y = _births(np.random.default_rng(seed), x, lambda d: j * np.clip(d - d0, 0, None))
        r = fit_model(x, y, "nucleation_constant", likelihood="poisson", cumulative=True)
        assert r.params["J_per_e_per_A2"] == pytest.approx(j, rel=0.10)
        hits += r.ci_low["J_per_e_per_A2"] <= j <= r.ci_high["J_per_e_per_A2"]
    assert hits >= 8
    sat = _births(
        np.random.default_rng(5), x, lambda d: 40 * (1 - np.exp(-1e-3 * np.clip(d, 0, None) / 40))
    )
    t, _ = compare_models(x, sat, "nucleation", likelihood="poisson", cumulative=True)
    assert t.loc[0, "model"] == "nucleation_saturating"


def test_cumulative_gives_wider_ci_than_naive():
    x = np.linspace(2e3, 2e5, 60)
    y = _births(np.random.default_rng(3), x, lambda d: 3e-4 * d)
    good = fit_model(x, y, "nucleation_constant", likelihood="poisson", cumulative=True)
    naive = fit_model(x, y, "nucleation_constant", likelihood="poisson")
    w_good = good.ci_high["J_per_e_per_A2"] - good.ci_low["J_per_e_per_A2"]
    w_naive = naive.ci_high["J_per_e_per_A2"] - naive.ci_low["J_per_e_per_A2"]
    assert w_good > 2 * w_naive


@pytest.mark.parametrize(
    ("m", "name"), [(3, "growth_supply_m3"), (2, "growth_diffusion_m2"), (1, "growth_reaction_m1")]
)
def test_growth_law_selected(m, name):
    rng = np.random.default_rng(m)
    x = np.linspace(0, 1e5, 40)
    r0 = 3.0
    k = (12.0**m - r0**m) / 1e5
    r = (r0**m + k * x) ** (1 / m) + rng.normal(0, 0.1, x.size)
    tab, fits = compare_models(
        x, r, ["growth_supply_m3", "growth_diffusion_m2", "growth_reaction_m1"]
    )
    assert tab.loc[0, "model"] == name
    free = fit_model(x, r, "growth_power")
    assert free.ci_low["m"] <= m <= free.ci_high["m"]


def test_smoluchowski_vs_first_order():
    rng = np.random.default_rng(2)
    x = np.linspace(0, 3e5, 50)
    n = rng.poisson(60 / (1 + 0.5 * 1e-6 * 60 * x)).astype(float)
    tab, fits = compare_models(x, n, "coalescence", likelihood="poisson")
    assert tab.loc[0, "model"] == "coalescence_smoluchowski"
    f = fits["coalescence_smoluchowski"]
    assert f.ci_low["K_coal"] <= 1e-6 <= f.ci_high["K_coal"]


@pytest.mark.parametrize("ea", [0.45, 0.65, 0.85])
def test_arrhenius_ea_within_0p05_ev(ea):
    temps = np.array([233.0, 253.0, 273.0, 293.0, 313.0, 333.0])
    hits = 0
    for seed in range(10):
        rng = np.random.default_rng(seed)
        k = 1e12 * np.exp(-ea / (K_B_EV_PER_K * temps))
        kobs = k * np.exp(rng.normal(0, 0.08, temps.size))
        r = fit_arrhenius(temps, kobs, rate_err=0.08 * kobs)
        assert abs(r.params["Ea_eV"] - ea) < 0.05
        hits += r.ci_low["Ea_eV"] <= ea <= r.ci_high["Ea_eV"]
        assert r.extra["A"] > 0
    assert hits >= 8


def test_dose_rate_dependence_selects_mechanism():
    rng = np.random.default_rng(0)
    phi = np.array([1e3, 3e3, 1e4, 3e4, 1e5])
    dose_ctrl = 2e-4 * phi * np.exp(rng.normal(0, 0.05, 5))
    tab, fits = fit_dose_rate_dependence(phi, dose_ctrl, rate_err=0.05 * dose_ctrl)
    assert tab.loc[0, "model"] == "dose_controlled"
    p = fits["power_law"]
    assert p.ci_low["alpha"] <= 1.0 <= p.ci_high["alpha"]
    thermal = 0.3 * np.exp(rng.normal(0, 0.05, 5))
    tab, _ = fit_dose_rate_dependence(phi, thermal, rate_err=0.05 * thermal)
    assert tab.loc[0, "model"] == "time_controlled"


def test_bootstrap_agrees_with_profile():
    rng = np.random.default_rng(7)
    x, y = _br_atoms(rng, 3e4, n_frames=36)
    p = fit_model(x, y, "br_first_order", ci="profile")
    b = fit_model(x, y, "br_first_order", ci="bootstrap", n_boot=100, rng=1)
    wp = p.ci_high["D_Br_e_per_A2"] - p.ci_low["D_Br_e_per_A2"]
    wb = b.ci_high["D_Br_e_per_A2"] - b.ci_low["D_Br_e_per_A2"]
    assert 0.5 < wb / wp < 2.0
    assert p.to_frame().shape[0] == 3
    np.testing.assert_allclose(
        p.predict(x), fit_model(x, y, "br_first_order", ci="none").predict(x)
    )


def test_poisson_bootstrap_is_cpu_independent_with_residues_and_last_bits():
    """A seeded Poisson bootstrap interval must not depend on the last bits of the fitted
    means (numpy's exp/power kernels differ between AVX-512, AVX2 and scalar) nor on
    whether a mean is exactly 0 or a 1e-17 rounding residue: numpy's Poisson sampler
    draws no random number for a mean of 0 and one for any other, so the old
    ``rng.poisson(f)`` shifted every later replicate and gave another interval (as the
    image noise did before ``shot_noise``).  The means are now rounded and drawn from a
    child generator per replicate (:func:`perovstem._poisson.poisson_counts`)."""
    from perovstem.quantify.kinetics import KineticModel, _bootstrap_ci, _Problem

    exposure = np.tile([0.0, 1.0, 0.0, 2.5, 0.0, 4.0, 0.0, 1.5], 5)  # frames without beam
    x = np.arange(exposure.size, dtype=float)
    variants = {
        "exact": exposure,
        # the same exposure computed another way: 1e-17 residues where it is 0, the
        # others 1 ulp up or 2 ulp down
        "residue": np.where(
            exposure == 0.0,
            1e-17,
            np.where(
                np.arange(x.size) % 3 == 0,
                np.nextafter(np.nextafter(exposure, 0.0), 0.0),
                np.nextafter(exposure, np.inf),
            ),
        ),
    }

    def model(w):
        return KineticModel(
            "events_per_exposure",
            lambda xx, a: a * w[np.asarray(xx, int)],
            ("a",),
            lambda xx, yy: [max(float(yy.sum()) / float(w.sum()), 1e-3)],
            ([0.0], [np.inf]),
            "test",
            "events proportional to a known exposure",
        )

    for seed in (3, 4):
        y = np.random.default_rng(seed).poisson(6.0 * exposure).astype(float)
        fits = {
            k: fit_model(x, y, model(w), likelihood="poisson", ci="bootstrap", n_boot=60, rng=9)
            for k, w in variants.items()
        }
        a, b = fits["exact"], fits["residue"]
        assert a.params["a"] == pytest.approx(b.params["a"], rel=1e-6)
        assert (a.ci_low["a"], a.ci_high["a"]) == pytest.approx(
            (b.ci_low["a"], b.ci_high["a"]), rel=1e-6
        )
        assert a.ci_low["a"] < 6.0 * 1.3 and a.ci_high["a"] > 6.0 / 1.3
        # the caller's generator advances by one draw per replicate, whatever the means
        gens = {k: np.random.default_rng(seed) for k in variants}
        for k, w in variants.items():
            prob = _Problem(model(w), x, y, None, "poisson")
            _bootstrap_ci(prob, np.array([a.params["a"]]), 0.95, 30, gens[k])
        assert gens["exact"].integers(2**62) == gens["residue"].integers(2**62)


def test_bad_input_raises():
    x = np.linspace(0, 1, 10)
    with pytest.raises(DataError, match="same length"):
        fit_model(x, x[:-1], "br_linear")
    with pytest.raises(DataError, match="non-finite"):
        fit_model(x, np.r_[x[:-1], np.nan], "br_linear")
    with pytest.raises(DataError, match="at least"):
        fit_model(x[:3], x[:3], "br_two_pool")
    with pytest.raises(ParameterError, match="model"):
        fit_model(x, x, "no_such_model")
    with pytest.raises(ParameterError, match="likelihood"):
        fit_model(x, x, "br_linear", likelihood="cauchy")
    with pytest.raises(DataError, match="integer"):
        fit_model(x, x + 0.5, "br_linear", likelihood="poisson")
    with pytest.raises(DataError, match="monotonic"):
        fit_model(x, np.r_[1.0, 3.0, 2.0, x[3:] + 5], "nucleation_constant", cumulative=True)
    with pytest.raises(DataError, match="sigma"):
        fit_model(x, x, "br_linear", sigma=0.0)
    with pytest.raises(DataError, match="distinct temperatures"):
        fit_arrhenius([300, 300], [1.0, 2.0])
    with pytest.raises(DataError, match="rate"):
        fit_arrhenius([300, 320], [1.0, -2.0])
    with pytest.raises(DataError, match="dose_rate"):
        fit_dose_rate_dependence([1e3, 1e3], [1.0, 1.0])


@pytest.mark.parametrize("model", ["coalescence_smoluchowski", "number_first_order"])
def test_decay_models_on_zero_counts(model):
    """No cluster at all (every count 0): the guesses must not divide by zero."""
    x = np.linspace(0.0, 1e4, 10)
    r = fit_model(x, np.zeros(10), model, likelihood="poisson")
    assert r.params["N0"] == pytest.approx(0.0, abs=1e-6)
    tab, _ = compare_models(x, np.zeros(10), "coalescence", likelihood="poisson")
    assert (tab["status"] == "ok").all()


def test_compare_models_reports_a_numerically_failing_model():
    from perovstem.quantify.kinetics import KineticModel

    def explode(x, a):
        raise FloatingPointError("overflow in the model")

    bad = KineticModel("bad", explode, ("a",), lambda x, y: [1.0], ([0], [np.inf]), "br_loss", "")
    rng = np.random.default_rng(2)
    x, y = _br_atoms(rng, 3e4, n_frames=20)
    tab, fits = compare_models(x, y, ["br_first_order", bad, "br_linear"])
    assert list(tab["model"][:2]) == ["br_first_order", "br_linear"]
    row = tab[tab["model"] == "bad"].iloc[0]
    assert row["status"].startswith("failed: FloatingPointError") and row["weight"] == 0
    assert not row["selected"] and np.isnan(row["aicc"])
    assert "bad" not in fits and "bad" in tab.attrs["failed"]
    assert np.isclose(tab["weight"].sum(), 1.0)
    # bad options are still the caller's error
    with pytest.raises(ParameterError):
        compare_models(x, y, ["br_first_order", bad], likelihood="laplace")


def test_no_model_fitted_names_each_model_and_its_reason():
    # two frames of a series: every nucleation model lacks points; the message goes into a
    # report row, so it reads as text (it was the repr of a dict of "DataError: ..." strings)
    with pytest.raises(DataError) as err:
        compare_models([1e3, 2e3], [0.0, 1.0], "nucleation", likelihood="poisson", cumulative=True)
    msg = str(err.value)
    assert msg.startswith("no model could be fitted (")
    for name in ("nucleation_constant", "nucleation_saturating", "nucleation_accelerating"):
        assert msg.count(f"'{name}'") == 1
    assert "{" not in msg and "DataError" not in msg and "got 1" in msg


def test_arrhenius_warns_on_temperatures_that_look_like_celsius():
    """A heating run written in °C (25–100) would give Ea several times too small."""
    temps_c = np.array([25.0, 50.0, 75.0, 100.0])
    k = 1e6 * np.exp(-0.5 / (8.617333262e-5 * (temps_c + 273.15)))
    with pytest.warns(UserWarning, match="°C"):
        fit_arrhenius(temps_c, k)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = fit_arrhenius(temps_c + 273.15, k)
    assert abs(r.params["Ea_eV"] - 0.5) < 1e-6


def test_cumulative_births_conditioned_on_first_point():
    # 3 clusters already there at the first point and no births after: no nucleation.
    # Read as births since dose 0 the saturating model was selected with J > 0 and an
    # interval excluding 0 (a burst before the first point).
    x = np.linspace(2e3, 2e5, 20)
    t, fits = compare_models(
        x, np.full(20, 3.0), "nucleation", likelihood="poisson", cumulative=True
    )
    assert t.loc[0, "model"] != "nucleation_saturating"
    for name, key in (
        ("nucleation_constant", "J_per_e_per_A2"),
        ("nucleation_saturating", "J_per_e_per_A2"),
        ("nucleation_accelerating", "a_per_e2_per_A4"),
    ):
        assert fits[name].ci_low[key] == 0.0
        assert fits[name].n_obs == 19
    # the same clusters on top of a constant nucleation rate do not bias J
    j = 1e-2
    for seed in range(5):
        y = 30 + _births(np.random.default_rng(seed), x, lambda d: j * d)
        r = fit_model(x, y, "nucleation_constant", likelihood="poisson", cumulative=True)
        assert r.params["J_per_e_per_A2"] == pytest.approx(j, rel=0.15)
