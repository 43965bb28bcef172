"""Parameters of the degradation kinetic Monte Carlo (:func:`degradation_kmc`).

Every default comes from the parameter table of ``notes/physics_simulation.md`` §1.3 and
is labelled there; most are *estimates* (no dose threshold was copied from a paper), so
they are meant to be tuned.  The sources are given per field below.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from perovstem.errors import ParameterError

__all__ = [
    "KineticParameters",
    "BOLTZMANN_EV_PER_K",
    "ATMOSPHERES",
    "BR_COORDINATION_FACE",
    "BR_COORDINATION_MAX",
]

#: Boltzmann constant, eV/K (CODATA 2018).
BOLTZMANN_EV_PER_K = 8.617333262e-5

#: Atmospheres understood by the gas channel.  ``"vacuum"``, ``"N2"`` and ``"Ar"`` are inert.
ATMOSPHERES = ("vacuum", "N2", "Ar", "O2", "H2O", "air")

#: Coordination ``q`` of a Br on a flat {100} face of a CsBr-terminated crystal (reference of
#: the thermal Br-desorption energy).  ``q`` = host B (Pb/Cd) sites in the 3×3×3 node blocks
#: around the two B-lattice nodes the Br bridges (each block without its own centre): 52 in
#: the bulk, 26 for an outer Br of a {100} face, 17 at an edge, 11 at a corner.
BR_COORDINATION_FACE = 26
#: Largest ``q`` (bulk Br).
BR_COORDINATION_MAX = 52


@dataclass(frozen=True)
class KineticParameters:
    """Rate constants and switches of the degradation kinetic Monte Carlo.

    Mechanisms (notes §1.3, "minimal dose-driven kinetic scheme"):

    1. **Br desorption** (radiolysis, Dang et al., ACS Nano 11, 2124 (2017)): each surface
       Br leaves at rate ``φ / D_Br`` (s⁻¹, φ the dose rate in e⁻/Å²/s), i.e. with the
       first-order survival ``exp(−D / D_Br)`` against dose ``D``; a bulk Br (all six host
       neighbours present) at ``bulk_to_surface_ratio · φ / D_Br``.
    2. **Reduction**: for every ``br_per_pb0`` Br desorbed, the host Pb²⁺ next to the last
       lost Br with the fewest Br left becomes a Pb⁰ adatom (charge balance, 2 Br⁻ ↔ 2e⁻).
    3. **Diffusion** of Pb⁰ on the surface sites of the pseudo-cubic B-site lattice (one
       hop = one lattice vector), total rate per adatom
       ``Γ = ν₀·exp(−E_a / k_B T) + k_beam·φ`` (s⁻¹), split over six directions.
    4. **Nucleation** when an adatom arrives next to ``critical_nucleus − 1`` other adatoms
       (26-neighbourhood), accepted with a site-dependent probability that favours corners
       and edges (low host coordination).  **Growth**: an adatom within
       ``capture_radius_A`` of a cluster's surface joins it.  **Coalescence**: two clusters
       whose compact-fcc spheres come within ``contact_gap_A`` merge into a new cluster
       (Smoluchowski); clusters also hop with rate ``Γ·cluster_mobility·n^(−α)``.
    5. **Shrinkage**: a Cs with no Br or no B neighbour left, and a Cd with no Br left,
       leave the crystal (the unit is exhausted).
    6. **Gas channel** (moisture / oxygen; arXiv:1803.00848, Yu et al., Langmuir 2018):
       CsBr stripping, 2 CsPbBr₃ → CsPb₂Br₅ + CsBr, removes a surface Cs together with one
       of its Br at rate ``strip_rate · p / p_ref`` per surface Cs while the host Cs/B
       ratio exceeds ``min_cs_per_b`` (0.5 = CsPb₂Br₅).  The same CsBr loss also runs
       thermally (Arrhenius, significant from ≈ 500 K).
    7. **Thermal Br desorption** (heat alone, in addition to the beam term): a Br of
       coordination ``q`` (see :data:`BR_COORDINATION_FACE`) leaves at
       ``ν_Br·exp(−max(E_Br + ε_q·(q − 26), 0) / k_B T)`` s⁻¹, times
       ``bulk_to_surface_ratio`` for a bulk Br.  Low-coordinated Br at corners and edges go
       first, so thermal degradation starts at the edges and proceeds inwards (Luo et al.,
       J. Phys. Chem. C 127, 11632 (2023)).  Reduction follows as for beam-driven loss.
    8. **Pb⁰ detachment from clusters** (Ostwald ripening): a cluster of ``n`` atoms loses
       one atom at ``ν_d·n^(2/3)·exp(−max(E_d − β·n^(−1/3), 0) / k_B T)`` s⁻¹ (``n^(2/3)``
       ∝ surface sites; ``β·n^(−1/3)`` the Gibbs–Thomson excess chemical potential
       ``2γΩ/R``), so small clusters shrink faster than large ones.  The atom becomes an
       adatom on a free surface node just outside the cluster's capture shell and may
       re-attach anywhere; a cluster that falls below ``critical_nucleus`` atoms dissolves
       into adatoms (a ``"death"`` event).
    9. **Low-temperature regime** (Dang et al., ACS Omega 2017): below
       ``low_temperature_K`` (233 K, −40 °C) Pb⁰ does not move (no thermal or beam hops,
       no cluster migration, no detachment) and no cluster nucleates; Br loss then leaves
       the reduced Pb⁰ in place and the crystal empties from the inside (voids).

    Attributes
    ----------
    D_Br_e_per_A2 : float
        Characteristic Br-desorption dose of a surface Br, e⁻/Å² (1/σ_Br).  Default
        3×10⁴ [estimate, notes §1.3; σ_Br ≈ 10⁻⁵–10⁻⁴ Å²].
    bulk_to_surface_ratio : float
        Bulk/surface desorption-rate ratio, default 0.1 [estimate].
    br_per_pb0 : int
        Br desorbed per Pb²⁺ reduced, default 2 (stoichiometry).
    hop_prefactor_per_s : float
        Attempt frequency ν₀, s⁻¹, default 10¹³ [estimate].
    hop_activation_eV : float
        Activation energy E_a of Pb⁰ hops, eV, default 0.62 (Γ ≈ 0.4 s⁻¹ at 233 K,
        ≈ 400 s⁻¹ at 300 K), so that hops per frame ≲ 1 at 233 K and ≫ 1 at 293 K ("no Pb particles below −40 °C", Dang et al., ACS Omega 2017).
    beam_hop_per_e_A2 : float
        Beam-enhanced hops per e⁻/Å² (k_beam, Å²/e⁻), default 10⁻⁵ [estimate; notes range
        0–10⁻³].
    critical_nucleus : int
        Adatoms needed to nucleate a cluster, default 3 [estimate, range 2–4 (notes 1–13)].
    nucleation_probability_corner, nucleation_probability_edge, nucleation_probability_face : float
        Acceptance probability of a nucleation attempt at a corner (≤ 4 host B sites among
        the 26 neighbours of the site), edge (5–7) or face/step site (≥ 8); defaults
        1, 0.1, 0.01 (corners ×100 vs faces, notes range ×10–100) [estimate].
    capture_radius_A : float
        An adatom joins a cluster when it is within ``R(n) + capture_radius_A`` of its
        centre, Å; default 3.0.
    contact_gap_A : float
        Clusters merge when ``|c₁ − c₂| ≤ R₁ + R₂ + contact_gap_A``, Å; default 0.5.
    cluster_mobility : float
        Cluster hop rate relative to Γ for a monomer; default 1 [estimate].
    cluster_mobility_exponent : float
        α in ``n^(−α)`` (4/3: periphery diffusion), default 4/3.
    pb_lattice_A : float
        fcc Pb lattice constant, Å (4.95, [known]).  Cluster radius
        ``R(n) = (3 n a³ / 16π)^(1/3)``.
    strip_rate_H2O_per_s, strip_rate_O2_per_s : float
        CsBr-stripping rate per surface Cs at ``reference_pressure_Pa``, s⁻¹; defaults
        0.02 (H₂O) and 0.002 (O₂) [estimate]; ``"air"`` adds both.
    reference_pressure_Pa : float
        Pressure at which the strip rates apply, Pa (default 100).
    min_cs_per_b : float
        Stripping stops when host Cs/(Pb+Cd) falls to this ratio (0.5 = CsPb₂Br₅).
    thermal_strip_prefactor_per_s, thermal_strip_activation_eV : float
        Thermal CsBr loss per surface Cs, ``ν·exp(−E/k_B T)`` s⁻¹ (same CsPbBr₃ → CsPb₂Br₅
        channel, in any atmosphere), defaults 10¹³ s⁻¹ and 1.5 eV: ≈ 10⁻¹² s⁻¹ at 300 K,
        ≈ 0.01 s⁻¹ at 500 K, ≈ 0.2 s⁻¹ at 550 K [estimate; CsPb₂Br₅ appears on heating NCs to
        500 K, Tenailleau et al., Nanoscale Adv. 1, 147 (2019)].
    thermal_Br_prefactor_per_s : float
        Attempt frequency ν_Br of thermal Br desorption, s⁻¹, default 10¹³ [estimate,
        typical phonon frequency].
    thermal_Br_activation_eV : float
        E_Br, activation energy of thermal desorption of a Br on a flat {100} face
        (``q`` = 26), eV; default 1.50 [estimate]: 1.6×10⁻¹³ s⁻¹ at 293 K (negligible
        during a series), 1.6×10⁻⁴ s⁻¹ at 450 K (corners 7.6×10⁻³ s⁻¹), 7.6×10⁻³ s⁻¹ at
        500 K (corners 0.25 s⁻¹), chosen so that heat alone degrades NCs from ≈ 450–500 K (secondary phases on heating to 500 K, Tenailleau et
        al., Nanoscale Adv. 1, 147 (2019); thermal degradation front from the edges, Luo
        et al. 2023).
    thermal_Br_coordination_eV : float
        ε_q, change of the activation energy per host B site of the coordination ``q``,
        eV; default 0.01 [estimate]: an edge Br (``q`` = 17) is 0.09 eV and a corner Br
        (``q`` = 11) 0.15 eV below a face Br, i.e. ×8 and ×30 faster at 500 K; a bulk Br
        (``q`` = 52) 0.26 eV above (and ×``bulk_to_surface_ratio``).
    detach_prefactor_per_s : float
        ν_d, attempt frequency of Pb⁰ detachment per surface site of a cluster, s⁻¹,
        default 10¹³ [estimate].
    detach_activation_eV : float
        E_d, detachment energy from a large (flat) Pb cluster surface onto the host, eV;
        default 1.75 [estimate; below the cohesive energy of Pb, 2.03 eV [known], because
        the adatom binds to the host].
    detach_gibbs_thomson_eV : float
        β = 2γΩ/R₁, Gibbs–Thomson coefficient, eV; the barrier of a cluster of ``n`` atoms
        is lowered by ``β·n^(−1/3)``.  Default 1.0 [estimate; the continuum value with
        γ(Pb) ≈ 0.6 J/m² [known] and Ω = a³/4 = 30.3 Å³ is ≈ 1.2 eV].  With the defaults a
        3-atom cluster loses an atom every ≈ 3×10⁴ s at 300 K (negligible), once per second
        at 400 K and ≈ 500 times per second at 500 K; a 200-atom cluster 0.04 times per
        second at 500 K.
    low_temperature_K : float
        Below this temperature Pb⁰ is immobile and no clusters nucleate, K; default 233
        ("no Pb particles below −40 °C", Dang et al., ACS Omega 2017, doi:10.1021/acsomega.7b01009).
    enable_desorption, enable_diffusion, enable_nucleation, enable_cluster_migration, enable_shrinkage, enable_gas, enable_thermal_csbr_loss, enable_thermal_desorption, enable_detachment, enable_low_temperature_regime : bool
        Switch each mechanism on or off (all on by default; the gas channel only acts in
        a reactive atmosphere).  ``enable_desorption`` is the beam-driven Br desorption,
        ``enable_thermal_desorption`` the thermal one.
    orphaned_br_leave : bool
        With shrinkage on, a host Br whose last cation neighbour (B site or Cs) has gone
        leaves with it (counted in the frame table's ``n_Br_orphaned``); default False.  A
        Br⁻ with no cation cannot stay bound, so True is the physical choice, but the image
        analyses were validated without it: with False such Br stay and desorb later at
        the beam rate (default 60 Å cube at 5·10³ e⁻/Å²/s: 7 % of the Br at frame 5, and from
        frame 8 a cation-free lattice of 1245 Br that the images still show), each feeding
        Pb reduction.  The per-ion constant ``D_Br_e_per_A2`` is recovered by
        Σ desorbed / Σ exposure either way; a first-order fit of n_Br(D) with True measures
        the crystal's faster effective loss (0.32-0.36 × D_Br on equal-rate cubes).
    """

    D_Br_e_per_A2: float = 3.0e4
    bulk_to_surface_ratio: float = 0.1
    br_per_pb0: int = 2
    hop_prefactor_per_s: float = 1.0e13
    hop_activation_eV: float = 0.62
    beam_hop_per_e_A2: float = 1.0e-5
    critical_nucleus: int = 3
    nucleation_probability_corner: float = 1.0
    nucleation_probability_edge: float = 0.1
    nucleation_probability_face: float = 0.01
    capture_radius_A: float = 3.0
    contact_gap_A: float = 0.5
    cluster_mobility: float = 1.0
    cluster_mobility_exponent: float = 4.0 / 3.0
    pb_lattice_A: float = 4.95
    strip_rate_H2O_per_s: float = 0.02
    strip_rate_O2_per_s: float = 0.002
    reference_pressure_Pa: float = 100.0
    min_cs_per_b: float = 0.5
    thermal_strip_prefactor_per_s: float = 1.0e13
    thermal_strip_activation_eV: float = 1.5
    thermal_Br_prefactor_per_s: float = 1.0e13
    thermal_Br_activation_eV: float = 1.50
    thermal_Br_coordination_eV: float = 0.01
    detach_prefactor_per_s: float = 1.0e13
    detach_activation_eV: float = 1.75
    detach_gibbs_thomson_eV: float = 1.0
    low_temperature_K: float = 233.0
    enable_desorption: bool = True
    enable_diffusion: bool = True
    enable_nucleation: bool = True
    enable_cluster_migration: bool = True
    enable_shrinkage: bool = True
    enable_gas: bool = True
    enable_thermal_csbr_loss: bool = True
    enable_thermal_desorption: bool = True
    enable_detachment: bool = True
    enable_low_temperature_regime: bool = True
    orphaned_br_leave: bool = False

    def __post_init__(self) -> None:
        positive = ("D_Br_e_per_A2", "hop_prefactor_per_s", "pb_lattice_A", "reference_pressure_Pa")
        non_negative = (
            "bulk_to_surface_ratio",
            "hop_activation_eV",
            "beam_hop_per_e_A2",
            "capture_radius_A",
            "contact_gap_A",
            "cluster_mobility",
            "cluster_mobility_exponent",
            "strip_rate_H2O_per_s",
            "strip_rate_O2_per_s",
            "min_cs_per_b",
            "thermal_strip_prefactor_per_s",
            "thermal_strip_activation_eV",
            "thermal_Br_prefactor_per_s",
            "thermal_Br_activation_eV",
            "thermal_Br_coordination_eV",
            "detach_prefactor_per_s",
            "detach_activation_eV",
            "detach_gibbs_thomson_eV",
            "low_temperature_K",
        )
        for name in positive + non_negative:
            value = getattr(self, name)
            try:
                v = float(value)
            except (TypeError, ValueError):
                raise ParameterError(
                    f"KineticParameters.{name} must be a number, got {value!r}"
                ) from None
            if not math.isfinite(v) or v < 0 or (v == 0 and name in positive):
                bound = "> 0" if name in positive else ">= 0"
                raise ParameterError(
                    f"KineticParameters.{name} must be finite and {bound}, got {value!r}"
                )
        for name in ("br_per_pb0", "critical_nucleus"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or int(value) < 1:
                raise ParameterError(
                    f"KineticParameters.{name} must be an integer >= 1, got {value!r}"
                )
        for name in (
            "nucleation_probability_corner",
            "nucleation_probability_edge",
            "nucleation_probability_face",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0.0 <= float(value) <= 1.0):
                raise ParameterError(
                    f"KineticParameters.{name} must be a probability in [0, 1], got {value!r}"
                )

    # ------------------------------------------------------------------ derived rates
    def is_cold(self, temperature_K: float) -> bool:
        """True in the low-temperature regime (switch on and ``T < low_temperature_K``)."""
        return bool(
            self.enable_low_temperature_regime and float(temperature_K) < self.low_temperature_K
        )

    def hop_rate_per_s(self, temperature_K: float, dose_rate_e_per_A2_s: float) -> float:
        """Total hop rate Γ of one Pb⁰ adatom, s⁻¹: ``ν₀·exp(−E_a/k_B T) + k_beam·φ``
        (0 in the low-temperature regime)."""
        if not self.enable_diffusion or self.is_cold(temperature_K):
            return 0.0
        thermal = self.hop_prefactor_per_s * math.exp(
            -self.hop_activation_eV / (BOLTZMANN_EV_PER_K * float(temperature_K))
        )
        return thermal + self.beam_hop_per_e_A2 * float(dose_rate_e_per_A2_s)

    def desorption_rate_per_s(self, dose_rate_e_per_A2_s: float, *, surface: bool = True) -> float:
        """Desorption rate of one Br, s⁻¹ (``φ/D_Br``, times the bulk ratio for bulk Br)."""
        if not self.enable_desorption:
            return 0.0
        r = float(dose_rate_e_per_A2_s) / self.D_Br_e_per_A2
        return r if surface else r * self.bulk_to_surface_ratio

    def thermal_desorption_rate_per_s(
        self,
        temperature_K: float,
        coordination: Any = BR_COORDINATION_FACE,
        *,
        surface: bool = True,
    ) -> Any:
        """Thermal desorption rate of one Br of coordination ``q``, s⁻¹.

        ``ν_Br·exp(−max(E_Br + ε_q·(q − 26), 0) / k_B T)``, times ``bulk_to_surface_ratio``
        for a bulk Br (``surface=False``); 0 when the channel is switched off.  ``q`` may be
        an array.
        """
        import numpy as np

        q = np.asarray(coordination, dtype=float)
        if not self.enable_thermal_desorption:
            return np.zeros_like(q) if q.ndim else 0.0
        e = np.maximum(
            self.thermal_Br_activation_eV
            + self.thermal_Br_coordination_eV * (q - BR_COORDINATION_FACE),
            0.0,
        )
        r = self.thermal_Br_prefactor_per_s * np.exp(
            -e / (BOLTZMANN_EV_PER_K * float(temperature_K))
        )
        if not surface:
            r = r * self.bulk_to_surface_ratio
        return r if q.ndim else float(r)

    def detachment_rate_per_s(self, n_atoms: Any, temperature_K: float) -> Any:
        """Rate at which a Pb cluster of ``n_atoms`` atoms loses one atom, s⁻¹.

        ``ν_d·n^(2/3)·exp(−max(E_d − β·n^(−1/3), 0) / k_B T)``; 0 when detachment is off,
        in the low-temperature regime, or without diffusion.  ``n_atoms`` may be an array
        (entries < 1 give 0).
        """
        import numpy as np

        n = np.asarray(n_atoms, dtype=float)
        if not self.enable_detachment or not self.enable_diffusion or self.is_cold(temperature_K):
            return np.zeros_like(n) if n.ndim else 0.0
        safe = np.maximum(n, 1.0)
        e = np.maximum(
            self.detach_activation_eV - self.detach_gibbs_thomson_eV * safe ** (-1.0 / 3.0), 0.0
        )
        r = (
            self.detach_prefactor_per_s
            * safe ** (2.0 / 3.0)
            * np.exp(-e / (BOLTZMANN_EV_PER_K * float(temperature_K)))
        )
        r = np.where(n >= 1.0, r, 0.0)
        return r if n.ndim else float(r)

    def strip_rate_per_s(
        self, atmosphere: str, pressure_Pa: float | None, temperature_K: float | None = None
    ) -> float:
        """CsBr-loss rate per surface Cs, s⁻¹: gas channel (``atmosphere`` at ``pressure_Pa``)
        plus the thermal channel at ``temperature_K`` (omitted when None)."""
        rate = 0.0
        if self.enable_thermal_csbr_loss and temperature_K is not None:
            rate += self.thermal_strip_prefactor_per_s * math.exp(
                -self.thermal_strip_activation_eV / (BOLTZMANN_EV_PER_K * float(temperature_K))
            )
        if not self.enable_gas or atmosphere in ("vacuum", "N2", "Ar"):
            return rate
        p = self.reference_pressure_Pa if pressure_Pa is None else float(pressure_Pa)
        base = {
            "H2O": self.strip_rate_H2O_per_s,
            "O2": self.strip_rate_O2_per_s,
            "air": self.strip_rate_H2O_per_s + self.strip_rate_O2_per_s,
        }[atmosphere]
        return rate + base * p / self.reference_pressure_Pa

    def cluster_radius_A(self, n_atoms: Any) -> Any:
        """Radius of a compact fcc Pb cluster of ``n_atoms`` atoms, Å (sphere of equal volume)."""
        import numpy as np

        return (3.0 * np.asarray(n_atoms, dtype=float) * self.pb_lattice_A**3 / (16.0 * np.pi)) ** (
            1.0 / 3.0
        )

    def replace(self, **changes: Any) -> KineticParameters:
        """Return a copy with some fields replaced."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict of all fields (for metadata and provenance)."""
        return dataclasses.asdict(self)
