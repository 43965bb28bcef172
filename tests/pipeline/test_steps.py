"""Built-in steps chained on simulated data (ground truth), without the demo's shortcuts."""

from __future__ import annotations

import tomllib

import numpy as np
import pytest

from perovstem.io import read_table
from perovstem.pipeline import get_step, parse_config, run_pipeline

NEEDED = ("simulate.nanocrystal", "simulate.haadf", "atoms.fit", "atoms.count")


@pytest.mark.parametrize("seed", [1, 7])
def test_find_fit_count_on_simulated_image(tmp_path, seed):
    """Columns found without the truth positions, fitted and counted; counts exact.

    The cube has one Pb-Br thickness, so the Pb-Br scale of the hybrid mixture is fixed
    by the Cs columns (a free per-type scale counted every Pb-Br column wrong)."""
    if not all(get_step(n).available for n in NEEDED):
        pytest.skip("simulate/atoms steps not available in this version")
    text = f"""
[run]
name = "image"
seed = {seed}
[[step]]
run = "simulate.nanocrystal"
edge_A = 30.0
view3d = false
[[step]]
run = "simulate.haadf"
pixel_size_A = 0.25
dose_e_per_A2 = 50000.0
[[step]]
run = "atoms.fit"
[[step]]
run = "atoms.count"
method = "hybrid"
inputs = {{ columns = "fit.columns", truth = "haadf.truth" }}
"""
    cfg = parse_config(tomllib.loads(text), source="image.toml", text=text)
    r = run_pipeline(cfg, out=tmp_path / "run", quiet=True, scheduler="serial")
    assert [s.status for s in r.steps] == ["ran"] * 4, [s.message for s in r.steps]
    counts = read_table(tmp_path / "run" / "tables" / "count.counts.parquet")
    truth = read_table(tmp_path / "run" / "tables" / "haadf.truth.parquet")
    # the finder found the Pb-Br and Cs columns of the truth (within 0.5 Å)
    for t in ("PbBr", "Cs"):
        assert (counts["type"] == t).sum() == (truth["type"] == t).sum()
    for t in ("PbBr", "Cs"):
        c = counts[counts["type"] == t]
        assert c["n_atoms_truth"].notna().all()
        exact = np.mean(c["n_atoms"].to_numpy(float) == c["n_atoms_truth"].to_numpy(float))
        assert exact >= 0.95, (t, exact)


@pytest.mark.parametrize("seed", [1, 3])
def test_br_loss_step_feeds_mechanism_from_images(tmp_path, seed):
    """quantify.br_loss on an imaged KMC series (CsPbBr3, 5·10³ e⁻/Å²/s, 6 frames): the
    mechanism table's Br-loss row is the image-derived hazard fit, within 10 % of the
    simulator's D_Br (3·10⁴ e⁻/Å²), and the step's params feed quantify.dose_rate."""
    needed = ("simulate.kmc", "simulate.insitu_series", "quantify.br_loss", "quantify.mechanism")
    if not all(get_step(n).available for n in needed):
        pytest.skip("simulate/quantify steps not available in this version")
    text = f"""
[run]
name = "br"
seed = {seed}
[[step]]
run = "simulate.nanocrystal"
id = "nc"
edge_A = 40.0
view3d = false
[[step]]
run = "simulate.kmc"
id = "kmc"
inputs = {{ atoms = "nc.atoms" }}
n_frames = 6
dose_rate_e_per_A2_s = 5000.0
[[step]]
run = "simulate.insitu_series"
id = "series"
inputs = {{ trajectory = "kmc.trajectory" }}
drift_A_per_s = [0.3, -0.2]
[[step]]
run = "quantify.br_loss"
id = "br"
inputs = {{ series = "series.series", truth = "kmc.frames" }}
[[step]]
run = "quantify.mechanism"
id = "mech"
inputs = {{ frames_a = "br.frames" }}
sources = ["images"]
"""
    cfg = parse_config(tomllib.loads(text), source="br.toml", text=text)
    r = run_pipeline(cfg, out=tmp_path / "run", quiet=True, scheduler="serial")
    assert [s.status for s in r.steps] == ["ran"] * 5, [s.message for s in r.steps]
    tables = tmp_path / "run" / "tables"
    params = read_table(tables / "br.params.parquet")
    assert params["param"].tolist() == ["D_Br_e_per_A2"]
    d, sd = float(params["value"].iloc[0]), float(params["stderr"].iloc[0])
    assert abs(d / 3e4 - 1) < 0.10 and 0 < sd < 0.2 * d
    summ = read_table(tables / "mech.summary.parquet")
    row = summ[summ["process"] == "br_loss"].iloc[0]
    assert row["selected_model"] == "br_exposed_hazard" and row["source"] == "images"
    assert abs(row["value"] / 3e4 - 1) < 0.10
    assert row["ci_low"] < 3e4 < row["ci_high"]


def test_br_loss_step_termination(tmp_path):
    """A PbBr2-terminated crystal measured with the default CsBr template reads D_Br high
    (uinsitu3: +22…+52 %); the step's `termination` takes the PbBr2 template (before: no
    such parameter, the report said "CsBr-terminated" whatever the crystal)."""
    needed = ("simulate.kmc", "simulate.insitu_series", "quantify.br_loss")
    if not all(get_step(n).available for n in needed):
        pytest.skip("simulate/quantify steps not available in this version")
    est = {}
    for term in ("CsBr", "PbBr2"):
        text = f"""
[run]
name = "br_{term}"
seed = 1
[[step]]
run = "simulate.nanocrystal"
id = "nc"
edge_A = 40.0
termination = "PbBr2"
view3d = false
[[step]]
run = "simulate.kmc"
id = "kmc"
inputs = {{ atoms = "nc.atoms" }}
n_frames = 6
dose_rate_e_per_A2_s = 5000.0
[[step]]
run = "simulate.insitu_series"
id = "series"
inputs = {{ trajectory = "kmc.trajectory" }}
[[step]]
run = "quantify.br_loss"
id = "br"
inputs = {{ series = "series.series" }}
termination = "{term}"
"""
        cfg = parse_config(tomllib.loads(text), source="br.toml", text=text)
        r = run_pipeline(cfg, out=tmp_path / term, quiet=True, scheduler="serial")
        assert [s.status for s in r.steps] == ["ran"] * 4, [s.message for s in r.steps]
        params = read_table(tmp_path / term / "tables" / "br.params.parquet")
        est[term] = float(params["value"].iloc[0])
        report = (tmp_path / term / "report.html").read_text(encoding="utf-8")
        assert f"{term}-terminated cuboid" in report
    err = {k: abs(v / 3e4 - 1) for k, v in est.items()}
    assert err["PbBr2"] < err["CsBr"], est


@pytest.mark.parametrize("method", ["gmm", "hybrid"])
def test_composition_is_calibrated_by_the_counting_scale(tmp_path, method):
    """atoms.composition takes the cross-section scale c from the Cs counting.  With the
    default method (gmm + library) the scale was not in the counts' attrs, c = 1 was used
    silently and x came out 0.47 for a realised 0.33 (fits are ~9 % below the library)."""
    needed = NEEDED + ("atoms.composition",)
    if not all(get_step(n).available for n in needed):
        pytest.skip("simulate/atoms steps not available in this version")
    text = f"""
[run]
name = "comp"
seed = 3
report = false
[[step]]
run = "simulate.nanocrystal"
id = "nc"
edge_A = 48.0
cd_fraction = 0.3
view3d = false
[[step]]
run = "simulate.haadf"
id = "haadf"
inputs = {{ atoms = "nc.atoms" }}
pixel_size_A = 0.25
dose_e_per_A2 = 50000.0
[[step]]
run = "atoms.fit"
id = "fit"
inputs = {{ image = "haadf.image", positions = "haadf.truth" }}
[[step]]
run = "atoms.count"
id = "count"
inputs = {{ columns = "fit.columns" }}
method = "{method}"
library_cd_fraction = 0.3
[[step]]
run = "atoms.composition"
id = "composition"
inputs = {{ counts = "count.counts", thickness = "haadf.truth" }}
"""
    cfg = parse_config(tomllib.loads(text), source="comp.toml", text=text)
    r = run_pipeline(cfg, out=tmp_path / "run", quiet=True, scheduler="serial")
    assert [s.status for s in r.steps] == ["ran"] * 5, [s.message for s in r.steps]
    truth = read_table(tmp_path / "run" / "tables" / "haadf.truth.parquet")
    pb = truth[truth["type"] == "PbBr"]
    real_x = pb["n_Cd"].sum() / pb["n_atoms"].sum()
    cols = read_table(tmp_path / "run" / "tables" / "composition.columns.parquet")
    lo, hi = cols.attrs["x_ci"]
    assert abs(cols.attrs["x"] - real_x) < 0.03, (cols.attrs["x"], real_x)
    assert lo <= real_x <= hi


def test_fit_tables_of_two_identical_runs_are_byte_identical(tmp_path):
    """The fit's wall-clock time was stored in the table attrs: atoms.fit and every table
    downstream differed between two runs of the same analysis (and after a resume)."""
    if not all(get_step(n).available for n in NEEDED):
        pytest.skip("simulate/atoms steps not available in this version")
    text = """
[run]
name = "same"
seed = 2
report = false
[[step]]
run = "simulate.nanocrystal"
edge_A = 24.0
view3d = false
[[step]]
run = "simulate.haadf"
pixel_size_A = 0.3
dose_e_per_A2 = 50000.0
[[step]]
run = "atoms.fit"
inputs = { image = "haadf.image", positions = "haadf.truth" }
"""
    cfg = parse_config(tomllib.loads(text), source="same.toml", text=text)
    for out in ("a", "b"):
        run_pipeline(cfg, out=tmp_path / out, quiet=True, scheduler="serial")
    a = (tmp_path / "a" / "tables" / "fit.columns.parquet").read_bytes()
    assert a == (tmp_path / "b" / "tables" / "fit.columns.parquet").read_bytes()


def test_tilt_series_step_default_dose_leaves_a_crystal(tmp_path):
    """simulate.tilt_series defaulted to 1e5 e/A^2 between the series: the phantom's faces
    recede 2e-4 A per e/A^2, so 'after' was 3 % of a 60 A crystal and the facet evolution
    compared a crystal with its Pb remnant."""
    if not get_step("simulate.tilt_series").available:
        pytest.skip("simulate.tilt_series not available in this version")
    text = """
[run]
name = "tilt"
seed = 0
report = false
[[step]]
run = "simulate.tilt_series"
id = "tilt"
size_px = 24
pixel_size_A = 3.0
angle_step_deg = 20.0
"""
    cfg = parse_config(tomllib.loads(text), source="tilt.toml", text=text)
    run_pipeline(cfg, out=tmp_path / "run", quiet=True, scheduler="serial")
    truth = read_table(tmp_path / "run" / "tables" / "tilt.truth.parquet")
    assert truth["volume_A3"].iloc[1] > 0.4 * truth["volume_A3"].iloc[0]
    assert truth["inclusion_volume_A3"].iloc[1] < truth["volume_A3"].iloc[1]


@pytest.mark.parametrize("detector", [(65.0, 200.0), (65.0, 131.0)])
def test_series_hmm_counts_a_pristine_cube(tmp_path, detector):
    """atoms.series on 4 frames of a pristine 60 Å cube (all Pb-Br columns 10 cells, no
    loss): the frames cannot tell c L_10 from c' L_9 and EM from c = 1 counted every column
    9 in every frame.  The Cs columns of the first frame now fix the HMM's starting scale,
    and are the prior of its offset probability: not flagged (P(0) = 0.93 in both CPU
    modes; with the default prior (1, 0.1) the correct counts were flagged, P(0) = 0.36).
    On a 65-131 mrad detector the step takes that detector's library (it took the 65-200
    mrad, 300 kV one whatever the series)."""
    import perovstem as ps
    from perovstem.simulate import haadf_image, nanocrystal

    if not get_step("atoms.series").available:
        pytest.skip("atoms.series not available in this version")
    nc = nanocrystal(60.0, rng=4)
    frames = []
    for k in range(4):
        img, truth = haadf_image(
            nc, dose_e_per_A2=5e4, pixel_size_A=0.25, rng=100 + k, detector_mrad=detector
        )
        frames.append(img.data)
    series = ps.Series(
        np.array(frames),
        pixel_size_A=0.25,
        time_s=np.arange(4.0),
        dose_e_per_A2=np.full(4, 5e4),
        metadata=dict(img.metadata),
    )
    ps.io.save_image(series, tmp_path / "series.npz")
    text = f"""
[run]
name = "ser"
report = false
[inputs]
series = "{(tmp_path / "series.npz").as_posix()}"
[[step]]
run = "atoms.series"
hmm_model = "loss"
"""
    cfg = parse_config(tomllib.loads(text), source="s.toml", text=text)
    run_pipeline(cfg, out=tmp_path / "run", quiet=True, scheduler="serial")
    counts = read_table(tmp_path / "run" / "tables" / "series.counts.parquet")
    true_n = truth.loc[truth["type"] == "PbBr", "n_atoms"].unique()
    assert true_n.tolist() == [10]
    assert np.mean(counts["n_atoms"].to_numpy() == 10) > 0.98
    hmm = counts.attrs["hmm"]
    assert not hmm["offset_ambiguous"], hmm["offset_probability"]


def test_composition_without_thickness_takes_it_from_the_cs_neighbours(tmp_path):
    """Without a `thickness` input the Pb-Br thickness was counted from the same cross-sections
    that Cd lowers: on a 55 Å CsCd0.1Pb0.9Br3 cube x came out 0.25 (CI 0.22-0.28) for a
    realised 0.115.  By default it now comes from the neighbouring Cs columns (no Cd); the
    old way stays available (thickness_from = "counted") and its caption says it is
    degenerate."""
    if not all(get_step(n).available for n in NEEDED + ("atoms.composition",)):
        pytest.skip("simulate/atoms steps not available in this version")
    text = """
[run]
name = "nothick"
seed = 17
report = false
[[step]]
run = "simulate.nanocrystal"
id = "nc"
edge_A = 55.0
cd_fraction = 0.1
view3d = false
[[step]]
run = "simulate.haadf"
id = "haadf"
inputs = { atoms = "nc.atoms" }
pixel_size_A = 0.25
dose_e_per_A2 = 50000.0
[[step]]
run = "atoms.fit"
inputs = { image = "haadf.image", positions = "haadf.truth" }
[[step]]
run = "atoms.count"
library_cd_fraction = 0.1
[[step]]
run = "atoms.composition"
id = "composition"
inputs = { counts = "count.counts" }
[[step]]
run = "atoms.composition"
id = "counted"
inputs = { counts = "count.counts" }
thickness_from = "counted"
"""
    cfg = parse_config(tomllib.loads(text), source="nothick.toml", text=text)
    r = run_pipeline(cfg, out=tmp_path / "run", quiet=True, scheduler="serial")
    assert all(s.status == "ran" for s in r.steps), [s.message for s in r.steps]

    def caption(sid):
        return next(
            it["caption"]
            for s in r.steps
            if s.id == sid
            for it in s.report_items
            if it["kind"] == "metric"
        )

    truth = read_table(tmp_path / "run" / "tables" / "haadf.truth.parquet")
    pb = truth[truth["type"] == "PbBr"]
    real_x = pb["n_Cd"].sum() / pb["n_atoms"].sum()
    cols = read_table(tmp_path / "run" / "tables" / "composition.columns.parquet")
    assert cols.attrs["thickness_source"] == "Cs neighbours"
    assert "Cs neighbours thickness" in caption("composition")
    lo, hi = cols.attrs["x_ci"]
    assert abs(cols.attrs["x"] - real_x) < 0.03 and lo <= real_x <= hi, (cols.attrs, real_x)
    assert "counted thickness" in caption("counted") and "degenerate" in caption("counted")
    old = read_table(tmp_path / "run" / "tables" / "counted.columns.parquet")
    assert old.attrs["thickness_source"] == "counted"


def _kinetics_run(tmp_path, x: str, y: str, process: str):
    import json

    text = f"""
[run]
name = "kin"
plugins = ["_steps_for_tests"]
[[step]]
run = "test.make_series"
n_frames = 12
size = 8
[[step]]
run = "series.frames"
[[step]]
run = "quantify.kinetics"
process = "{process}"
x = "{x}"
y = "{y}"
"""
    cfg = parse_config(tomllib.loads(text), source="kin.toml", text=text)
    r = run_pipeline(cfg, out=tmp_path / "run", quiet=True, scheduler="serial", report=False)
    assert [s.status for s in r.steps] == ["ran"] * 3, [s.message for s in r.steps]
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
    return prov["steps"][-1]


def test_kinetics_on_a_constant_observable_selects_no_model(tmp_path):
    """A series in which nothing happens (no cluster ever nucleated): every model fits the
    constant, so the ranking only reflects parameter counts; it used to report 'nucleation is
    best described by nucleation_constant (Akaike weight 1.00)' and a 'rate' of noise."""
    if not get_step("quantify.kinetics").available:
        pytest.skip("quantify not available in this version")
    st = _kinetics_run(tmp_path, "cumulative_dose_e_per_A2", "dose_e_per_A2", "nucleation")
    assert any("is constant" in w for w in st["warnings"]), st["warnings"]
    texts = [it["text"] for it in st["report_items"] if it["kind"] == "text"]
    assert texts and not any("best described" in t for t in texts), texts
    assert not [it for it in st["report_items"] if it["kind"] == "metric"]


def test_kinetics_parameters_carry_the_unit_of_the_x_column(tmp_path):
    """Model parameters are named for x = dose (D0_e_per_A2, J_per_e_per_A2); fitted
    against time they are in s and 1/s. The metrics used to have no unit at all."""
    if not get_step("quantify.kinetics").available:
        pytest.skip("quantify not available in this version")
    st = _kinetics_run(tmp_path, "time_s", "cumulative_dose_e_per_A2", "nucleation")
    units = {
        it["title"].split(": ", 1)[1]: it["unit"]
        for it in st["report_items"]
        if it["kind"] == "metric"
    }
    assert units, st["report_items"]
    for name, unit in units.items():
        if name.endswith("_per_e_per_A2"):
            assert unit == "1/s", (name, unit)
        elif name.endswith("_e_per_A2"):
            assert unit == "s", (name, unit)
    assert any(u for u in units.values())


def test_atoms_steps_name_their_own_way_out(tmp_path):
    # a raw image without a dose: atoms.fit (normalize = true) and atoms.count (a library
    # for columns typed by intensity) named only library functions or a parameter of
    # scs_library; they now name the step parameter too
    from perovstem import Image
    from perovstem.errors import PerovstemError
    from perovstem.io import save_image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:80, 0:80] * 0.3
    lam = 50.0 + sum(
        400 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 0.5**2))
        for x in np.arange(3, 22, 5.87)
        for y in np.arange(3, 22, 5.87)
    )
    save_image(Image(rng.poisson(lam).astype(float), 0.3), tmp_path / "raw.hspy")
    head = '[run]\nname = "r"\n[inputs]\nimage = "raw.hspy"\n'
    (tmp_path / "a.toml").write_text(head + '[[step]]\nrun = "atoms.fit"\ncell = "none"\n')
    with pytest.raises(PerovstemError, match="set normalize = false"):
        run_pipeline(tmp_path / "a.toml", quiet=True, scheduler="serial")
    (tmp_path / "b.toml").write_text(
        head + '[[step]]\nrun = "atoms.fit"\ncell = "none"\nnormalize = false\n'
        '[[step]]\nrun = "atoms.count"\ntypes = ["type0"]\n'
    )
    with pytest.raises(PerovstemError, match="no simulated library .* library = false here"):
        run_pipeline(tmp_path / "b.toml", quiet=True, scheduler="serial")


def _series_file(tmp_path, frames, pixel_size_A, metadata=None):
    import perovstem as ps
    from perovstem.io import save_image

    n = len(frames)
    s = ps.Series(
        np.array(frames, float),
        pixel_size_A=pixel_size_A,
        time_s=np.arange(float(n)),
        dose_e_per_A2=np.full(n, 2e4),
        metadata={"gain": 1.0, "offset": 0.0, **(metadata or {})},
    )
    save_image(s, tmp_path / "series.npz")
    return tmp_path / "series.npz"


def test_series_hmm_type_absent_lists_the_types_found(tmp_path):
    # old code fitted every frame, then said only "no columns of type 'Pb' were found"
    from perovstem.errors import DataError
    from perovstem.simulate import haadf_image, nanocrystal

    if not get_step("atoms.series").available:
        pytest.skip("atoms.series not available in this version")
    nc = nanocrystal(30.0, rng=0)
    frames, meta = [], {}
    for k in range(2):
        img, _ = haadf_image(nc, dose_e_per_A2=2e4, pixel_size_A=0.3, rng=10 + k)
        frames.append(img.data)
        meta = dict(img.metadata)
    path = _series_file(tmp_path, frames, 0.3, meta)
    text = f"""
[run]
name = "ser"
report = false
[inputs]
series = "{path.as_posix()}"
[[step]]
run = "atoms.series"
hmm_type = "Pb"
"""
    cfg = parse_config(tomllib.loads(text), source="s.toml", text=text)
    with pytest.raises(
        DataError, match=r"hmm_type = 'Pb' in the first frame .*'Cs' \(\d+ columns\).*'PbBr'"
    ) as exc:
        run_pipeline(cfg, out=tmp_path / "run", quiet=True, scheduler="serial")
    assert 'cell = "none"' in str(exc.value)


def test_series_cell_none_tracks_every_column_of_a_non_perovskite(tmp_path):
    # a square lattice of one column type (not CsPbBr3): old code had no `cell` option
    # (config error) and typed the columns with the CsPbBr3 cell
    if not get_step("atoms.series").available:
        pytest.skip("atoms.series not available in this version")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:80, 0:80] * 0.3
    sites = [(x, y) for x in np.arange(4.0, 21, 4.0) for y in np.arange(4.0, 21, 4.0)]
    lam = 50.0 + sum(
        120 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 0.5**2)) for x, y in sites
    )
    path = _series_file(tmp_path, [rng.poisson(lam) for _ in range(2)], 0.3)
    text = f"""
[run]
name = "ser"
report = false
[inputs]
series = "{path.as_posix()}"
[[step]]
run = "atoms.series"
cell = "none"
hmm_type = "Pb"
max_iter = 5
"""
    cfg = parse_config(tomllib.loads(text), source="s.toml", text=text)
    run_pipeline(cfg, out=tmp_path / "run", quiet=True, scheduler="serial")
    counts = read_table(tmp_path / "run" / "tables" / "series.counts.parquet")
    assert counts["column"].nunique() == len(sites)
    assert sorted(counts["frame"].unique()) == [0, 1]


@pytest.mark.parametrize(
    ("step", "extra", "expect"),
    [
        # "`y` = 'n_Pb' is not a column of the input table": which input, wired to what?
        ("quantify.kinetics", 'y = "n_Pb"', "has no column `y` = 'n_Pb'"),
        # a bare KeyError: 'temperature_K' / KeyError: 'n_Br'
        ("quantify.arrhenius", "", "has no column the temperatures 'temperature_K'"),
    ],
)
def test_missing_column_names_the_input_and_its_wiring(tmp_path, step, extra, expect):
    text = f"""
[run]
plugins = ["_steps_for_tests"]
on_error = "continue"
[[step]]
run = "test.make_series"
n_frames = 6
size = 8
[[step]]
run = "series.frame_stats"
id = "stats"
[[step]]
run = "{step}"
inputs = {{ frames = "stats.stats" }}
{extra}
"""
    cfg = parse_config(tomllib.loads(text), source="k.toml", text=text)
    r = run_pipeline(cfg, out=tmp_path / "run", quiet=True, scheduler="serial", report=False)
    last = r.steps[-1]
    assert last.status == "failed"
    assert last.message.startswith("ParameterError: input `frames` (wired to `stats.stats`) "), (
        last.message
    )
    assert expect in last.message and "its columns: frame" in last.message, last.message


def _flickering_clusters(rng, *, n_clusters=24, box_A=100.0, n_frames=20, gamma1=1000.0):
    """Pb clusters hopping on the host lattice (Γ₁·n^(−4/3), 3-D hops of 5.87 Å seen in
    projection, reflected at the edges of a 100 Å field), a 20-atom cluster ~1 hop per
    frame.  Clusters near the detection limit flicker: one of n atoms is detected with
    probability (n − 6)/10 in each frame (8–16 atoms), so a track whose cluster is missed
    can take a neighbour detected for the first time, as on the demo's images (docs/insitu.md,
    kinetics).  Returns (exact tracks, detections with the true cluster ``tid``, frame time)."""
    import pandas as pd

    dirs = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])
    dt = 20 ** (4 / 3) / gamma1
    n = np.exp(rng.uniform(np.log(8), np.log(40), n_clusters)).round()
    pos = np.c_[rng.uniform(0, box_A, (n_clusters, 2)), np.zeros(n_clusters)]
    truth, det = [], []
    for f in range(n_frames):
        if f:
            for i in range(n_clusters):
                hops = rng.poisson(gamma1 * n[i] ** (-4 / 3) * dt)
                if hops:
                    pos[i] += 5.87 * dirs[rng.integers(0, 6, hops)].sum(0)
            pos[:, :2] = box_A - np.abs(box_A - np.abs(pos[:, :2]))
        seen = rng.random(n_clusters) < np.clip((n - 6.0) / 10.0, 0, 1)
        for i in range(n_clusters):
            truth.append((i, f, pos[i, 0], pos[i, 1], n[i]))
            if seen[i]:
                m = n[i] * (1 + 0.05 * rng.normal())
                xy = pos[i, :2] + rng.normal(0, 0.3, 2)
                det.append((f, xy[0], xy[1], m, 0.05 * m, i))
    exact = pd.DataFrame(truth, columns=["track_id", "frame", "x_A", "y_A", "n_atoms"])
    cols = ["frame", "x_A", "y_A", "n_atoms", "n_atoms_err", "tid"]
    return exact, pd.DataFrame(det, columns=cols), dt


def test_mechanism_diffusion_ea_from_strict_tracks_not_the_lineage_mislinks(tmp_path):
    """quantify.mechanism measures the hop rate on the detections tracked again with cheap
    ends and births (strict mobility tracks), not on the lineage tracks of insitu.clusters,
    whose links from a missed cluster to a neighbour detected for the first time make
    long steps that dominate Σ|Δr|² and scatter the Pb⁰ diffusion Ea.  Flickering
    clusters at 250/270/297 K (Ea 0.62 eV, ν₀ 10¹³ s⁻¹, ~1 hop per frame at every
    temperature).  Measured on seeds 0-13 (moment estimator): strict tracks 0.587-0.665 eV
    (14/14 within 0.05 eV, 14/14 intervals covering), lineage tracks 0.540-0.685 eV (10/14,
    12/14); before, the step used the lineage tracks (seeds 0-3, developed on, run here:
    RMS 0.047 against 0.017 eV; seeds 4-13 checked: 0.044 against 0.026 eV)."""
    import pandas as pd

    from perovstem.insitu import track_clusters
    from perovstem.quantify.kinetics import K_B_EV_PER_K

    if not get_step("quantify.mechanism").available:
        pytest.skip("quantify not available in this version")
    ea_true, temps, n_f = 0.62, (250.0, 270.0, 297.0), 20
    err = {"strict": [], "lineage": []}
    for seed in range(4):
        rng = np.random.default_rng(seed)
        wiring = []
        for k, temp in enumerate(temps):
            g1 = 1e13 * np.exp(-ea_true / (K_B_EV_PER_K * temp))
            _exact, det, dt = _flickering_clusters(rng, gamma1=g1, n_frames=n_f)
            # the lineage tracks, as insitu.clusters gives them
            tracks, _ = track_clusters(det.drop(columns="tid"), max_step_A=8.0)
            tracks.to_parquet(tmp_path / f"tracks{k}.parquet")
            pd.DataFrame(
                {
                    "frame": np.arange(n_f),
                    "time_s": np.arange(n_f) * dt,
                    "cumulative_dose_e_per_A2": np.arange(1, n_f + 1) * 1000.0,
                    "temperature_K": temp,
                }
            ).to_csv(tmp_path / f"frames{k}.csv", index=False)
            wiring.append((f"frames{k}.csv", f"tracks{k}.parquet"))
        for mode in err:
            cfg = tmp_path / "m.toml"
            cfg.write_text(
                "[run]\nreport = false\n[inputs]\n"
                + "".join(f'f{k} = "{f}"\nt{k} = "{t}"\n' for k, (f, t) in enumerate(wiring))
                + '[[step]]\nrun = "quantify.mechanism"\nid = "m"\ninputs = { '
                + ", ".join(
                    f'frames_{"abc"[k]} = "f{k}", tracks_{"abc"[k]} = "t{k}"' for k in range(3)
                )
                + " }\n"
                + ("" if mode == "strict" else 'mobility_tracks = "lineage"\n')
            )
            out = tmp_path / f"run_{seed}_{mode}"
            r = run_pipeline(cfg, out=out, scheduler="serial", quiet=True)
            assert [s.status for s in r.steps] == ["ran"], [s.message for s in r.steps]
            summ = read_table(out / "tables" / "m.summary.parquet")
            assert summ.attrs["mobility_tracks"]["tracks"] == mode, summ.attrs
            row = summ[(summ["process"] == "temperature") & (summ["observable"] == "Gamma1_per_s")]
            ea = row.iloc[0]
            err[mode].append(float(ea["value"]) - ea_true)
            if mode == "strict":
                assert abs(err[mode][-1]) < 0.05, (seed, err)
                assert ea["ci_low"] <= ea_true <= ea["ci_high"], (seed, ea)
    rms = {m: float(np.sqrt(np.mean(np.square(e)))) for m, e in err.items()}
    assert rms["strict"] < 0.035 and rms["strict"] < rms["lineage"], (rms, err)


def _two_still_clusters(tmp_path, n: int = 6):
    """Writes a per-frame table ``frames.csv`` (n frames of 1 s) to ``tmp_path`` and returns
    the detections of two still 20-atom clusters 30 Å apart in each frame."""
    import pandas as pd

    pd.DataFrame(
        {"frame": np.arange(n), "time_s": np.arange(n) * 1.0, "cumulative_dose_e_per_A2": 1.0}
    ).to_csv(tmp_path / "frames.csv", index=False)
    return pd.DataFrame(
        {
            "frame": np.repeat(np.arange(n), 2),
            "x_A": np.tile([10.0, 40.0], n),
            "y_A": 20.0,
            "n_atoms": 20.0,
            "track_id": np.tile([0, 1], n),
        }
    )


def test_mechanism_strict_tracks_bad_detections_name_the_input(tmp_path):
    """Detections the strict re-tracking cannot link (a NaN position) are refused naming
    the input and the way out (mobility_tracks = 'lineage')."""

    if not get_step("quantify.mechanism").available:
        pytest.skip("quantify not available in this version")
    det = _two_still_clusters(tmp_path)
    det.loc[3, "x_A"] = np.nan
    det.to_parquet(tmp_path / "tracks.parquet")
    cfg = tmp_path / "m.toml"
    cfg.write_text(
        '[run]\nreport = false\n[inputs]\nframes = "frames.csv"\ntracks = "tracks.parquet"\n'
        '[[step]]\nrun = "quantify.mechanism"\nid = "m"\n'
        'inputs = { frames_a = "frames", tracks_a = "tracks" }\n'
    )
    from perovstem import DataError

    with pytest.raises(DataError) as info:
        run_pipeline(cfg, out=tmp_path / "run", scheduler="serial", quiet=True)
    msg = str(info.value)
    assert "tracks_a" in msg and "non-finite" in msg and "mobility_tracks = 'lineage'" in msg, msg


@pytest.mark.parametrize(
    ("wiring", "params", "word"),
    [
        ('frames_a = "frames", tracks_a2 = "tracks"', "", "tracks_a2 given without tracks_a"),
        (
            'frames_a = "frames", tracks_a = "tracks", tracks_a2 = "text_ids"',
            'mobility_tracks = "lineage"\n',
            "tracks_a2: track_id must be numbers",
        ),
        (
            'frames_a = "frames", tracks_a = "tracks", tracks_a2 = "nan_pos"',
            "",
            "tracks_a2: cannot track the detections again",
        ),
        # the list inputs: more tables than conditions, a wrong count or condition index
        (
            'condition_frames = ["frames"], condition_tracks = ["tracks", "tracks"]',
            "",
            "condition_tracks has 2 tables for 1 condition_frames; give `tracks_of`",
        ),
        (
            'condition_frames = ["frames"], condition_tracks = ["tracks", "tracks"]',
            "tracks_of = [0]\n",
            r"`tracks_of` = \[0\] has 1 entries for 2 condition_tracks",
        ),
        (
            'frames_a = "frames", condition_frames = ["frames"], condition_tracks = ["tracks"]',
            "tracks_of = [2]\n",
            r"`tracks_of` = \[2\]: entry 0 names condition 2, but there are 2 conditions",
        ),
        (
            'condition_frames = ["frames"], condition_tracks = ["tracks", "nan_pos"]',
            "tracks_of = [0, 0]\n",
            r"condition_tracks\[1\]: cannot track the detections again",
        ),
        (
            'condition_frames = ["frames"], condition_tracks = ["tracks", "text_ids"]',
            'tracks_of = [0, 0]\nmobility_tracks = "lineage"\n',
            r"condition_tracks\[1\]: track_id must be numbers",
        ),
    ],
)
def test_mechanism_second_field_bad_input_names_it(tmp_path, wiring, params, word):
    """A second field's tracks without the first's, with text track ids (pooled by id) or
    with positions the strict re-tracking refuses are refused naming ``tracks_a2``; the
    list inputs (``condition_frames``, ``condition_tracks``, ``tracks_of``) likewise name
    the table or parameter and its value."""

    if not get_step("quantify.mechanism").available:
        pytest.skip("quantify not available in this version")
    det = _two_still_clusters(tmp_path)
    det.to_parquet(tmp_path / "tracks.parquet")
    det.assign(track_id=np.tile(["p", "q"], len(det) // 2)).to_parquet(
        tmp_path / "text_ids.parquet"
    )
    bad = det.copy()
    bad.loc[3, "x_A"] = np.nan
    bad.to_parquet(tmp_path / "nan_pos.parquet")
    cfg = tmp_path / "m.toml"
    cfg.write_text(
        '[run]\nreport = false\n[inputs]\nframes = "frames.csv"\ntracks = "tracks.parquet"\n'
        'text_ids = "text_ids.parquet"\nnan_pos = "nan_pos.parquet"\n'
        '[[step]]\nrun = "quantify.mechanism"\nid = "m"\n' + params + f"inputs = {{ {wiring} }}\n"
    )
    from perovstem import DataError

    with pytest.raises(DataError, match=word):
        run_pipeline(cfg, out=tmp_path / "run", scheduler="serial", quiet=True)


def test_mechanism_step_link_cost_default_is_the_library_one():
    """The step's ``mobility_link_cost`` default (steps import no library module at import
    time, so it is a copy) is :data:`perovstem.insitu.tracking.MOBILITY_LINK_COST`."""
    from perovstem.insitu.tracking import MOBILITY_LINK_COST
    from perovstem.pipeline.registry import get_step

    assert get_step("quantify.mechanism").params["mobility_link_cost"].default == (
        MOBILITY_LINK_COST
    )


def test_mechanism_across_row_names_only_the_tables_it_used(tmp_path):
    """The Br-loss dose-rate row (k = φ/D_Br) uses the image-derived D_Br rows of the two
    beam series; a third table at the same temperature with only a first-order Br-loss fit
    (the demo's heating series, simulator truth) is not among its sources (the demo's row
    read "from images+simulator truth (heating series not imaged)")."""
    import pandas as pd

    if not get_step("quantify.mechanism").available:
        pytest.skip("quantify not available in this version")
    rng = np.random.default_rng(2)
    d_br = 3e4
    for k, phi in enumerate((1e3, 4e3)):  # dose-controlled Br loss: D_Br the same
        n_s, n_b, ne, nb, lost = 3000.0, 9000.0, [3000.0], [9000.0], [0.0]
        for _ in range(12):
            ls = rng.binomial(int(n_s), -np.expm1(-phi / d_br))
            lb = rng.binomial(int(n_b), -np.expm1(-0.1 * phi / d_br))
            n_s, n_b = n_s - ls + 0.3 * lb, n_b - lb - 0.3 * lb
            lost.append(lost[-1] + ls + lb)
            ne.append(n_s)
            nb.append(n_b)
        pd.DataFrame(
            {
                "frame": np.arange(13),
                "dose_e_per_A2": phi,
                "cumulative_dose_e_per_A2": phi * np.arange(1, 14),
                "n_Br_lost_image": lost,
                "n_Br_exposed_image": ne,
                "n_Br_bulk_image": nb,
                "dose_rate_e_per_A2_s": phi,
                "temperature_K": 300.0,
            }
        ).to_parquet(tmp_path / f"beam{k}.parquet")
    x = np.arange(1, 13) * 500.0
    pd.DataFrame(
        {
            "frame": np.arange(12),
            "cumulative_dose_e_per_A2": x,
            "n_Br": 3000 * np.exp(-x / d_br) + rng.normal(0, 5, 12),
            "dose_rate_e_per_A2_s": 500.0,
            "temperature_K": 300.0,
        }
    ).to_parquet(tmp_path / "heat.parquet")
    cfg = tmp_path / "m.toml"
    cfg.write_text(
        '[run]\nreport = false\n[inputs]\nbeam0 = "beam0.parquet"\nbeam1 = "beam1.parquet"\n'
        'heat = "heat.parquet"\n[[step]]\nrun = "quantify.mechanism"\nid = "m"\n'
        'sources = ["images", "images", "simulator truth"]\n'
        'inputs = { frames_a = "beam0", frames_b = "beam1", frames_c = "heat" }\n'
    )
    run_pipeline(cfg, out=tmp_path / "run", scheduler="serial", quiet=True)
    summ = read_table(tmp_path / "run" / "tables" / "m.summary.parquet")
    row = summ[summ["observable"] == "k_Br_per_s"].iloc[0]
    assert row["selected_model"] == "dose_controlled", row["text"]
    assert row["source"] == "images"
    assert set(summ.loc[summ["process"] == "br_loss", "source"]) == {"images", "simulator truth"}


@pytest.mark.parametrize("orphan", [False, True])
def test_kmc_step_orphaned_br_option(tmp_path, orphan):
    """`simulate.kmc` passes `orphaned_br_leave` to the simulator: off, a cation-free Br
    lattice is left once the crystal's cations are gone; on, no Br outlives them."""
    text = f"""
[run]
name = "orphan"
seed = 2
[[step]]
run = "simulate.nanocrystal"
edge_A = 30.0
view3d = false
[[step]]
run = "simulate.kmc"
n_frames = 16
dose_rate_e_per_A2_s = 5000.0
orphaned_br_leave = {str(orphan).lower()}
"""
    cfg = parse_config(tomllib.loads(text), source="orphan.toml")
    run_pipeline(cfg, out=tmp_path / "run", quiet=True, scheduler="serial", report=False)
    f = read_table(tmp_path / "run" / "tables" / "kmc.frames.parquet")
    ghost = (f["n_Br"] > 0) & (f["n_Pb_host"] + f["n_Cd"] + f["n_Cs"] == 0)
    if orphan:
        assert f["n_Br_orphaned"].sum() > 0 and not ghost.any()
    else:
        assert (f["n_Br_orphaned"] == 0).all() and ghost.any()
