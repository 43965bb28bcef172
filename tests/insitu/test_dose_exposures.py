"""Dose bookkeeping of series whose frames have unequal exposure times (issue #7).

Each frame's dose is I·t_k/(e·A) for its own exposure t_k, and its dose rate is the dose
over that exposure: one beam current is one dose rate, however long each frame was.  The
frame files are written by mrcfile (a vendor-style FEI header, built field by field here)
and by perovstem's own writers; the conditions are checked through ``mechanism_summary``
and the ``perovstem insitu`` command.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

import perovstem as ps
from perovstem import DataError, Series
from perovstem.insitu import E_CHARGE_C, assign_dose, dose_table

EXPOSURES = [
    [1.0, 2.0, 4.0, 1.0],  # the FEI series of issue #7
    [0.5, 3.0, 1.0, 2.0, 0.25],
    [2.0, 2.0, 1.0],  # two equal then a shorter one: the last frame was read wrong
]


def _flux(current_pA, shape, px):
    """I/(e·A) of a scanned field, e⁻/Å²/s."""
    return current_pA * 1e-12 / (E_CHARGE_C * shape[0] * shape[1] * px * px)


@pytest.mark.parametrize("exposures", EXPOSURES)
@pytest.mark.parametrize(("current_pA", "px"), [(20.0, 4.0), (55.0, 2.5)])
@pytest.mark.parametrize("stamped", [True, False])
def test_current_gives_each_frame_its_own_dose_and_one_rate(exposures, current_pA, px, stamped):
    et = np.asarray(exposures)
    t = np.concatenate([[0.0], np.cumsum(et[:-1])])  # frames back to back
    s = Series(
        np.zeros((et.size, 32, 48), np.float32),
        px,
        time_s=t if stamped else None,
        metadata={"exposure_time_s": et.tolist()},
    )
    out = assign_dose(s, current_pA=current_pA)
    flux = _flux(current_pA, (32, 48), px)
    # old code: every frame got the median exposure's dose
    np.testing.assert_allclose(out.dose_e_per_A2, flux * et, rtol=1e-12)
    np.testing.assert_allclose(out.cumulative_dose_e_per_A2, flux * np.cumsum(et), rtol=1e-12)
    np.testing.assert_allclose(out.time_s, t, atol=1e-12)  # stamped, or back to back
    tab = dose_table(out)
    np.testing.assert_allclose(tab["dose_rate_e_per_A2_s"], flux, rtol=1e-12)
    assert tab.attrs["dose_rate_rule"] == "dose / exposure"
    assert tab.attrs["dose"]["exposure_s"] == pytest.approx(et.tolist())


@pytest.mark.parametrize("exposures", EXPOSURES)
def test_recorded_dose_last_frame_rate_from_its_exposure(exposures):
    """The dose per frame recorded (5000 e⁻/Å²/s × t_k), frames back to back: every rate is
    5000; the interval rule gave the last frame dose/previous interval (1250 for 1/2/4/1 s)."""
    et = np.asarray(exposures)
    t = np.concatenate([[0.0], np.cumsum(et[:-1])])
    s = Series(
        np.zeros((et.size, 16, 16), np.float32),
        0.5,
        time_s=t,
        dose_e_per_A2=5000.0 * et,
        metadata={"exposure_time_s": et.tolist()},
    )
    np.testing.assert_allclose(s.dose_rate_e_per_A2_s, 5000.0, rtol=1e-12)  # file's record
    out = assign_dose(s)
    np.testing.assert_allclose(dose_table(out)["dose_rate_e_per_A2_s"], 5000.0, rtol=1e-12)
    # without the exposures the interval rule stays (the last frame: the previous interval)
    bare = s.replace(metadata={})
    expect = 5000.0 * et / np.append(et[:-1], et[-2])
    np.testing.assert_allclose(bare.dose_rate_e_per_A2_s, expect, rtol=1e-12)
    assert bare.dose_rate_rule == "dose / frame interval"


def test_bad_exposure_records_are_named():
    s = Series(np.zeros((3, 8, 8)), 0.5, metadata={"exposure_time_s": [1.0, 2.0]})
    with pytest.raises(DataError, match=r"exposure_time_s'\] has 2 values for 3 frames"):
        assign_dose(s, current_pA=20.0)
    # 0 = not recorded: the frame time must then be given, as before
    s0 = s.replace(metadata={"exposure_time_s": [0.0, 0.0, 0.0]})
    with pytest.raises(DataError, match="time stamps"):
        assign_dose(s0, dose_e_per_A2=10.0)


def _old_fei_mrc(path, exposures, *, px_m=2e-10, shape=(24, 24)):
    """An FEI (Xplore3D/TIA) stack: 128-byte float32 records a_tilt, b_tilt, x/y/z stage,
    x/y shift, defocus, exp_time, mean_int, tilt_axis, pixel size (m), magnification, HT
    (V), binning, applied defocus; 1024 records (the vendor's fixed block)."""
    import mrcfile

    n = len(exposures)
    rec = np.zeros((1024, 32), "<f4")
    rec[:n, 8] = exposures
    rec[:n, 11] = px_m
    rec[:n, 12] = 1e6
    rec[:n, 13] = 300e3
    rec[:n, 14] = 1
    rng = np.random.default_rng(len(exposures))
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(rng.poisson(50, (n, *shape)).astype(np.float32))
        m.set_extended_header(np.frombuffer(rec.tobytes(), dtype="V1"))


def _fei1_mrc(path, exposures, *, px_m=2e-10, shape=(24, 24)):
    """A vendor FEI1 stack with the exposure of each image in "Integration time" (s) and
    real dates (days since 1899-12-30) 0.5 s after each exposure's end."""
    import mrcfile
    from mrcfile.dtypes import get_ext_header_dtype

    et = np.asarray(exposures, float)
    n = et.size
    dt = get_ext_header_dtype(b"FEI1", "<")
    rec = np.zeros(n, dtype=dt)
    rec["Metadata size"] = dt.itemsize
    rec["Application"] = b"Velox"
    rec["Pixel size X"] = rec["Pixel size Y"] = px_m
    start = np.concatenate([[0.0], np.cumsum(et[:-1] + 0.5)])
    rec["Timestamp"] = 46000.0 + start / 86400
    rec["Integration time"] = et
    rec["Bitmask 1"] = (1 << 0) | (1 << 3) | (1 << 14) | (1 << 15)
    rec["Bitmask 2"] = 1 << 16
    rng = np.random.default_rng(n)
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(rng.poisson(50, (n, *shape)).astype(np.float32))
        m.set_extended_header(rec)
        m.header.exttyp = b"FEI1"
    return start


@pytest.mark.parametrize("exposures", EXPOSURES[:2])
@pytest.mark.parametrize("kind", ["fei", "fei1"])
def test_fei_mrc_exposures_reach_dose_and_rate(tmp_path, exposures, kind):
    p = tmp_path / f"{kind}.mrc"
    if kind == "fei":
        _old_fei_mrc(p, exposures)
    else:
        start = _fei1_mrc(p, exposures)
    s = ps.load(p)
    assert isinstance(s, Series)
    assert s.metadata["exposure_time_s"] == pytest.approx(exposures)  # was only in "fei"
    out = assign_dose(s, current_pA=30.0)
    flux = _flux(30.0, (24, 24), 2.0)
    np.testing.assert_allclose(out.dose_e_per_A2, flux * np.asarray(exposures), rtol=1e-5)
    tab = dose_table(out)
    np.testing.assert_allclose(tab["dose_rate_e_per_A2_s"], flux, rtol=1e-5)
    if kind == "fei1":  # recorded time stamps (with 0.5 s gaps) are kept
        np.testing.assert_allclose(out.time_s, start, atol=1e-3)


@pytest.mark.parametrize("suffix", [".mrc", ".npz", ".hspy", ".zarr", ".tif"])
def test_own_writers_keep_the_exposures(tmp_path, suffix):
    et = np.asarray(EXPOSURES[0])
    s = Series(
        np.random.default_rng(0).poisson(40, (4, 20, 20)).astype(np.float32),
        0.4,
        time_s=np.concatenate([[0.0], np.cumsum(et[:-1])]),
        metadata={"exposure_time_s": et.tolist()},
    )
    s = assign_dose(s, current_pA=12.0)
    p = tmp_path / f"s{suffix}"
    ps.io.save_image(s, p)
    back = ps.load(p)
    np.testing.assert_allclose(back.dose_e_per_A2, s.dose_e_per_A2, rtol=1e-5)
    np.testing.assert_allclose(back.dose_rate_e_per_A2_s, _flux(12.0, (20, 20), 0.4), rtol=1e-5)
    assert back.dose_rate_rule == "dose / exposure"


@pytest.mark.parametrize("seed", [0, 1])
def test_unequal_exposures_at_one_current_are_one_condition(seed):
    from perovstem.quantify.mechanism import mechanism_summary

    rng = np.random.default_rng(seed)
    et = np.tile(rng.choice([0.5, 1.0, 2.0, 4.0], 4, replace=False), 4)
    t = np.concatenate([[0.0], np.cumsum(et[:-1])])  # recorded stamps, back to back
    s = Series(np.zeros((et.size, 64, 64), np.float32), 4.0, time_s=t)
    s = assign_dose(s.replace(metadata={"exposure_time_s": et}), current_pA=20.0)
    flux = _flux(20.0, (64, 64), 4.0)
    np.testing.assert_allclose(s.dose_e_per_A2, flux * et, rtol=1e-12)
    f = s.frames_table()
    left, n_br = 4000, []
    for d in f["dose_e_per_A2"]:
        left -= rng.binomial(left, 1 - np.exp(-d / 3e4))
        n_br.append(left + 500)
    f["n_Br"] = n_br
    f["temperature_K"] = 300.0
    summ = mechanism_summary(f, ci="wald")
    assert len(summ.attrs["conditions"]) == 1  # interval rule: one per exposure length
    assert summ.attrs["conditions"][0]["dose_rate_e_per_A2_s"] == pytest.approx(flux)


@pytest.fixture(scope="module")
def unequal_mrc(tmp_path_factory):
    """A KMC series imaged frame by frame at its dose 4·10³ e⁻/Å²/s × t_k (t_k = 1/2/4/1 s
    twice), written as FEI1 .mrc by perovstem with each frame's exposure and dose."""
    from perovstem.io import save_image
    from perovstem.simulate import degradation_kmc, insitu_series, nanocrystal

    et = np.array([1.0, 2.0, 4.0, 1.0, 1.0, 2.0, 4.0, 1.0])
    tr = degradation_kmc(
        nanocrystal(edge_A=30.0, rng=0),
        n_frames=et.size,
        frame_time_s=1.0,
        dose_rate_e_per_A2_s=4e3 * et,  # the dose of each frame as its exposure gives it
        temperature_K=300.0,
        rng=5,
    )
    s, _ = insitu_series(tr, pixel_size_A=0.5, drift_A_per_s=(0.3, 0.1), rng=5)
    t = np.concatenate([[0.0], np.cumsum(et[:-1])])
    s = s.replace(
        time_s=t,
        metadata={"exposure_time_s": et.tolist(), "gain": 1.0, "offset": 0.0},
    )
    p = tmp_path_factory.mktemp("unequal") / "series.mrc"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # gain/offset are not kept in .mrc
        save_image(s, p)
    return p, et, s.shape[1:]


@pytest.mark.parametrize("current", [True, False])
def test_cli_insitu_unequal_exposures(unequal_mrc, tmp_path, current):
    """``perovstem insitu`` on the FEI1 .mrc: with --current-pA (dose from the exposures) or
    with the file's dose, frames.csv has dose 4·10³ × t_k and one dose rate, and the kinetic
    summary is not split into conditions."""
    from perovstem.cli.main import main

    path, et, shape = unequal_mrc
    area = shape[0] * shape[1] * 0.25
    pa = 4e3 * E_CHARGE_C * area * 1e12  # the current whose flux is 4·10³ e⁻/Å²/s
    out = tmp_path / "out"
    args = ["insitu", str(path), "--out", str(out), "--table-format", "csv", "--no-plots"]
    args += ["--ci", "wald", "--gain", "1", "--offset", "0"]
    if current:
        args += ["--current-pA", f"{pa:.12g}"]
    assert main(args) == 0
    frames = pd.read_csv(out / "frames.csv")
    np.testing.assert_allclose(frames["dose_e_per_A2"], 4e3 * et, rtol=1e-5)
    np.testing.assert_allclose(frames["dose_rate_e_per_A2_s"], 4e3, rtol=1e-5)
    summ = json.loads((out / "summary.json").read_text())
    assert summ["dose_rate_rule"] == "dose / exposure"
    assert not any("splits the series" in n for n in summ["notes"]), summ["notes"]


def test_dm_style_stack_rate_is_the_scan_flux(tmp_path):
    """A stack whose metadata carry DM's probe current and dwell time (RosettaSciIO's
    ``TEM.beam_current`` nA, ``TEM.dwell_time`` s), frames 2 s apart: the file's dose
    I·t_dwell/(e·Δx²) over the scan's beam-on time (dwell × pixels) is the flux I/(e·A);
    the interval rule gave dose / 2 s."""
    from rsciio.hspy import file_writer

    axes = [
        {"name": "time", "size": 3, "scale": 2.0, "offset": 0, "units": "s", "navigate": True},
        {"name": "y", "size": 30, "scale": 0.02, "offset": 0, "units": "nm", "navigate": False},
        {"name": "x", "size": 40, "scale": 0.02, "offset": 0, "units": "nm", "navigate": False},
    ]
    md = {
        "General": {"title": "HAADF"},
        "Signal": {"signal_type": ""},
        "Acquisition_instrument": {"TEM": {"beam_current": 0.05, "dwell_time": 4e-6}},
    }
    p = tmp_path / "dm.hspy"
    data = np.random.default_rng(2).random((3, 30, 40)).astype(np.float32)
    file_writer(
        str(p),
        {
            "data": data,
            "axes": axes,
            "metadata": md,
            "original_metadata": {},
            "tmp_parameters": {},
            "attributes": {"_lazy": False},
            "package_info": {"name": "hyperspy", "version": "2.0"},
            "learning_results": {},
            "models": {},
        },
    )
    s = ps.load(p)
    assert isinstance(s, Series)
    np.testing.assert_allclose(s.dose_e_per_A2, 0.05e-9 * 4e-6 / (E_CHARGE_C * 0.04))
    flux = _flux(50.0, (30, 40), 0.2)
    np.testing.assert_allclose(s.dose_rate_e_per_A2_s, flux, rtol=1e-9)
    assert s.dose_rate_rule == "dose / exposure"
    np.testing.assert_allclose(dose_table(assign_dose(s))["dose_rate_e_per_A2_s"], flux)


@pytest.mark.parametrize(
    ("raw", "n", "want", "error"),
    [
        ([1.0, 2.0, 4.0], 3, [1.0, 2.0, 4.0], None),
        (2.5, 4, [2.5] * 4, None),
        ([0.0, 0.0], 2, None, None),  # not recorded
        ([1.0, np.nan, 2.0], 3, None, None),
        (None, 3, None, None),
        ([1.0, 2.0], 3, None, r"exposure_time_s'\] has 2 values for 3 frames"),
        ([1.0, 2.0, 3.0, 4.0], 5, None, r"has 4 values for 5 frames"),
        ("fast", 2, None, r"exposure_time_s'\] must be numbers \(s\), got 'fast'"),
    ],
)
def test_one_exposure_parser_strict_for_dose_lenient_for_series(raw, n, want, error):
    # assign_dose (strict) and Series.exposure_s (lenient) read exposure_time_s with one
    # parser: the same result where the record is usable; where it is not one per frame or
    # not numbers, the dose bookkeeping names the field and the value, the property says None
    from perovstem._data import per_frame_exposures

    lenient = per_frame_exposures(raw, n, strict=False)
    s = Series(np.zeros((n, 8, 8)), 0.5, metadata={"exposure_time_s": raw})
    if want is None:
        assert lenient is None and s.exposure_s is None
    else:
        np.testing.assert_array_equal(lenient, want)
        np.testing.assert_array_equal(s.exposure_s, want)
    if error is None:
        strict = per_frame_exposures(raw, n, strict=True)
        assert (strict is None) == (want is None)
        if want is not None:
            np.testing.assert_array_equal(strict, want)
    else:
        with pytest.raises(DataError, match=error):
            per_frame_exposures(raw, n, strict=True)
        with pytest.raises(DataError, match=error):
            assign_dose(s, current_pA=20.0)


def _fei1_stem_mrc(path, n, dwell_s, frame_s, *, shape=(16, 20), byte_order="<"):
    """A vendor FEI1 STEM stack with "Dwell time" and "Frame time" (s; Bitmask 3 bits 15
    and 16, field layout of mrcfile.dtypes) and no Integration time."""
    import mrcfile
    from mrcfile.dtypes import get_ext_header_dtype

    dt = get_ext_header_dtype(b"FEI1", byte_order)
    rec = np.zeros(n, dtype=dt)
    rec["Metadata size"] = dt.itemsize
    rec["Application"] = b"Velox"
    rec["Pixel size X"] = rec["Pixel size Y"] = 1.5e-10
    rec["Dwell time"] = dwell_s
    rec["Frame time"] = frame_s
    rec["Bitmask 1"] = (1 << 3) | (1 << 14) | (1 << 15)
    rec["Bitmask 3"] = (1 << 15) | (1 << 16)
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.random.default_rng(n).poisson(30, (n, *shape)).astype(np.float32))
        m.set_extended_header(rec)
        m.header.exttyp = b"FEI1"


@pytest.mark.parametrize(
    ("n", "dwell_s", "frame_s"), [(3, 2e-6, 0.8), (5, 5e-7, 0.25), (2, 1e-5, 4.0)]
)
def test_fei1_stem_dwell_and_frame_time_are_read_and_kept(tmp_path, n, dwell_s, frame_s):
    # FEI1 "Dwell time"/"Frame time" reach the series metadata (s, where the Velox/DM readers
    # put the dwell time) so the beam-on time of each frame is dwell × pixels; the .mrc
    # writer keeps them (it used to drop them with a warning)
    p = tmp_path / "stem.mrc"
    _fei1_stem_mrc(p, n, dwell_s, frame_s)
    s = ps.load(p)
    assert s.metadata["dwell_time_s"] == pytest.approx(dwell_s, rel=1e-6)
    assert s.metadata["frame_time_s"] == pytest.approx(frame_s, rel=1e-6)
    np.testing.assert_allclose(s.exposure_s, np.full(n, dwell_s * 16 * 20), rtol=1e-6)
    q = tmp_path / "back.mrc"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing dropped: no warning
        ps.io.save_image(s, q)
    back = ps.load(q)
    assert back.metadata["dwell_time_s"] == pytest.approx(dwell_s, rel=1e-6)
    assert back.metadata["frame_time_s"] == pytest.approx(frame_s, rel=1e-6)


def test_fei1_absurd_dwell_time_is_named(tmp_path):
    p = tmp_path / "bad.mrc"
    _fei1_stem_mrc(p, 3, 5.0, 0.8)
    with pytest.warns(UserWarning, match=r"bad\.mrc.*Dwell time of image 0 \(5\.0 s"):
        s = ps.load(p)
    assert "dwell_time_s" not in s.metadata and s.metadata["frame_time_s"] == pytest.approx(0.8)
