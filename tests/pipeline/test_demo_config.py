"""The demo's Pb⁰-diffusion design: two imaged fields per temperature (issue #7, Ea).

One field per temperature left the demo's Ea data-limited (RMS 0.042 eV, 17 of 24 seeds within
0.05 eV; two fields pooled: 0.022, 24 of 24; ``bench_kinetics``), so the demo images a second
crystal of the same kind at every mobility temperature and its mobility step pools both.
"""

import pytest

from perovstem.pipeline.demo import demo_config
from perovstem.pipeline.runner import _step_seed

CHAIN = ("kmc", "series", "register", "clusters")


def _upstream(steps: dict, sid: str) -> list[str]:
    """The ids of the mobility chain ending in step ``sid`` (clusters ← … ← kmc)."""
    out = [sid]
    while True:
        src = [v.split(".")[0] for v in steps[out[-1]].get("inputs", {}).values()]
        src = [v for v in src if v != "nc"]
        if not src:
            return out
        out.append(src[0])


@pytest.mark.parametrize("fast", [False, True])
def test_demo_images_two_fields_per_mobility_temperature(fast):
    cfg = demo_config(fast=fast, seed=3)
    steps = {s["id"]: s for s in cfg["step"]}
    assert len(steps) == len(cfg["step"])  # ids unique
    mob = steps["mobility"]["inputs"]
    slots = sorted(k[len("frames_") :] for k in mob if k.startswith("frames_"))
    assert len(slots) == (3 if fast else 4)
    for slot in slots:
        first = mob[f"tracks_{slot}"].split(".")[0]
        second = mob[f"tracks_{slot}2"].split(".")[0]
        assert mob[f"frames_{slot}"] == f"{first}.counts"
        a, b = _upstream(steps, first), _upstream(steps, second)
        # each field has its own full chain from the shared crystal: KMC, imaging,
        # registration, detection ...
        assert [steps[i]["run"].split(".")[-1] for i in a] == [
            "clusters", "register", "insitu_series", "kmc"
        ]  # fmt: skip
        assert not set(a) & set(b)
        assert steps[a[-1]]["inputs"] == steps[b[-1]]["inputs"] == {"atoms": "nc.atoms"}
        # ... with the same parameters (same temperature, frames, dose, drift) ...
        for i, j in zip(a, b, strict=True):
            assert steps[i]["run"] == steps[j]["run"]
            assert {k: v for k, v in steps[i].items() if k not in ("id", "inputs")} == {
                k: v for k, v in steps[j].items() if k not in ("id", "inputs")
            }
        # ... and its own random draws (the step seed derives from the step id)
        assert _step_seed(3, a[-1]) != _step_seed(3, b[-1])
        assert _step_seed(3, a[1]) != _step_seed(3, b[1])
