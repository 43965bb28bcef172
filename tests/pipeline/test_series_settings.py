"""An in-situ series' settings given in [inputs]: dose, frame time, holder log, temperature.

Before: the pipeline took a series only as its file recorded it (no dose, frame time or
holder log could be given: a DM recording without a probe current had no dose, so no atom
counts, and no temperature from its heating log); `perovstem insitu` had these options.
"""

from __future__ import annotations

import numpy as np
import pytest

from perovstem import Series
from perovstem.errors import FileFormatError, ParameterError, PerovstemError
from perovstem.io import read_table, save_image
from perovstem.pipeline import load_config, run_pipeline


def _digiheater(path, start=100.0):
    """A DigiHeater log on the holder PC's clock: 12:00:00 local, +20 K/s from ``start`` °C."""
    lines = [
        "01/03/'24 11:58\tDigiheater 3.1",
        "R0=100.0\ta=0.0039\tb=-5.8e-7\tc=0.0",
        "delta_t=0.5",
        "sample\ttime\tTset[C]\tTmeas[C]\tRheat[ohm]\tVheat[V]\tIheat[mA]\tPheat [mW]\tc",
    ]
    for i in range(40):
        tm = start + 10.0 * i
        lines.append(f"{i}\t12:00:{0.5 * i:06.3f}\t{tm}\t{tm:.3f}\t1\t1\t1\t1\t0")
    path.write_text("\n".join(lines) + "\n")
    return path


def _series(path, **metadata):
    # no dose, no time stamps (a DM recording without probe current, a tif stack)
    data = np.random.default_rng(0).poisson(50.0, size=(5, 16, 16)).astype(np.float32)
    save_image(Series(data, 0.5, metadata=metadata), path)
    return path


def _config(tmp_path, series_options):
    cfg = tmp_path / "a.toml"
    cfg.write_text(
        "[run]\nreport = false\n[inputs]\n"
        f'series = {{ path = "s.npz", {series_options} }}\n'
        '[[step]]\nrun = "series.frames"\nid = "frames"\n'
    )
    return cfg


def _frames(tmp_path, options, out="run"):
    res = run_pipeline(_config(tmp_path, options), out=tmp_path / out, quiet=True)
    return res, read_table(tmp_path / out / "tables" / "frames.frames.parquet")


def test_dose_frame_time_and_log_given_to_a_series(tmp_path):
    _series(tmp_path / "s.npz")
    _digiheater(tmp_path / "heating.log")
    opts = 'dose_e_per_A2 = 500.0, frame_time_s = 1.0, conditions = "heating.log", '
    res, frames = _frames(tmp_path, opts + "time_offset_s = 2.0")
    assert res.status("frames") == "ran"
    np.testing.assert_allclose(frames["dose_e_per_A2"], 500.0)
    np.testing.assert_allclose(frames["cumulative_dose_e_per_A2"], 500.0 * np.arange(1, 6))
    np.testing.assert_allclose(frames["time_s"], np.arange(5.0))
    # each frame's temperature averaged over its 1 s (before: sampled at its start, 10 K
    # low on this ramp): 2.5 s into a +20 K/s ramp from 373 K
    np.testing.assert_allclose(
        frames["temperature_K"], 373.15 + 20 * (2.5 + np.arange(5)), atol=0.1
    )
    # the same again: cached; a changed log (same name): the series is read again
    res = run_pipeline(
        _config(tmp_path, opts + "time_offset_s = 2.0"), out=tmp_path / "run", quiet=True
    )
    assert res.status("frames") == "cached"
    _digiheater(tmp_path / "heating.log", start=50.0)
    res = run_pipeline(
        _config(tmp_path, opts + "time_offset_s = 2.0"), out=tmp_path / "run", quiet=True
    )
    assert res.status("frames") == "ran"
    frames = read_table(tmp_path / "run" / "tables" / "frames.frames.parquet")
    np.testing.assert_allclose(
        frames["temperature_K"], 323.15 + 20 * (2.5 + np.arange(5)), atol=0.1
    )


@pytest.mark.parametrize("zone", ["UTC+01:00", None])
def test_log_placed_by_the_clocks_or_said(tmp_path, zone):
    # first frame acquired 11:00:02 UTC = 12:00:02 on the holder PC: 2 s into the log
    md = {"acquisition_start_utc": "2024-03-01T11:00:02+00:00"}
    if zone:
        md["acquisition_time_zone"] = zone
    _series(tmp_path / "s.npz", **md)
    _digiheater(tmp_path / "heating.log")
    opts = 'dose_e_per_A2 = 500.0, frame_time_s = 1.0, conditions = "heating.log"'
    with pytest.warns(UserWarning) as rec:
        _, frames = _frames(tmp_path, opts)
    said = " ".join(str(w.message) for w in rec)
    shift = 2.0 if zone else 0.0
    want = 373.15 + 20 * (shift + 0.5 + np.arange(5))
    np.testing.assert_allclose(frames["temperature_K"], want, atol=0.1)
    if zone:
        assert "[inputs] series" in said and "2.0 s of the log, from the two clocks" in said
    else:
        assert "placed at the log's time 0" in said and "`log_utc_offset_h`" in said


@pytest.mark.parametrize(
    ("options", "error", "expect"),
    [
        ('temperature_K = 300.0, conditions = "heating.log"', ParameterError,
         "`temperature_K` and `conditions` both give the temperature"),
        ("log_utc_offset_h = 1.0", ParameterError, "places a holder log: give `conditions`"),
        ('conditions = "heating.log", time_offset_s = 1.0, log_utc_offset_h = 1.0',
         ParameterError, "both place the holder log"),
        ('conditions = "missing.log"', FileFormatError, "`conditions` log"),
        ("dose_e_per_A2 = -5.0", ParameterError, "option `dose_e_per_A2` must be a positive"),
        ("voltage_kV = 120.0", ParameterError, "must be 200 or 300"),
        ("detector_mrad = [200.0, 65.0]", ParameterError, "0 ≤ inner < outer"),
        ('kind = "image", temperature_K = 300.0', ParameterError, "set an in-situ series"),
    ],
)  # fmt: skip
def test_bad_series_settings_are_refused_before_anything_runs(tmp_path, options, error, expect):
    _series(tmp_path / "s.npz")
    _digiheater(tmp_path / "heating.log")
    with pytest.raises(error, match=None) as info:
        load_config(_config(tmp_path, options))
    assert expect in str(info.value), str(info.value)
    assert "[inputs] series" in str(info.value)


def test_series_settings_on_an_image_file_are_refused_naming_it(tmp_path):
    from perovstem import Image

    save_image(Image(np.ones((16, 16)), 0.5), tmp_path / "s.npz")
    with pytest.raises(PerovstemError) as info:
        _frames(tmp_path, "dose_e_per_A2 = 5.0, temperature_K = 300.0")
    msg = str(info.value)
    assert "temperature_K set an in-situ series" in msg and "holds one image" in msg, msg
    # a dose alone is an image's setting (atoms.fit normalises with it): the wiring says
    # that the image is not the series the step needs
    with pytest.raises(PerovstemError) as info:
        _frames(tmp_path, "dose_e_per_A2 = 5.0")
    assert "an Image (16×16)" in str(info.value) and "must be a perovstem Series" in str(info.value)


def test_a_gatan_in_situ_folder_is_a_series_input(tmp_path):
    # GMS In-Situ frames (DM3, own sub-second stamps, 7.5 frames/s): a folder input was
    # refused ("is a directory, not a file") though perovstem.io.load reads it
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent.parent / "io"))
    from test_gms_insitu_folders import _gms_dm3

    _, truth = _gms_dm3(tmp_path / "Insitu_001", 12, fps=7.5)
    cfg = tmp_path / "a.toml"
    cfg.write_text(
        "[run]\nreport = false\n[inputs]\n"
        'series = { path = "Insitu_001", dose_e_per_A2 = 50.0 }\n'
        '[[step]]\nrun = "series.frames"\nid = "frames"\n'
    )
    run_pipeline(cfg, out=tmp_path / "run", quiet=True)
    frames = read_table(tmp_path / "run" / "tables" / "frames.frames.parquet")
    np.testing.assert_allclose(frames["time_s"], truth, atol=1e-5)
    np.testing.assert_allclose(frames["dose_rate_e_per_A2_s"], 50.0 * 7.5, rtol=1e-3)


def test_gain_auto_measures_the_detector_of_a_series_input(tmp_path):
    # a raw series (5 counts per electron over an offset of 100): `gain = "auto"` measures
    # both from the frames' shot noise, as `perovstem insitu --gain auto`
    # (a blob with a 12 px lattice in a near-empty vacuum: the levels span 0.02-225 e⁻/px)
    rng = np.random.default_rng(4)
    y, x = np.mgrid[:96, :96]
    lam = 150.0 * np.exp(-((x - 48.0) ** 2 + (y - 48.0) ** 2) / (2 * 18.0**2))
    lam = 0.02 + lam * (
        1 + 0.5 * (np.cos(2 * np.pi * x / 12.0) * np.cos(2 * np.pi * y / 12.0)) ** 2
    )
    data = 5.0 * rng.poisson(np.broadcast_to(lam, (4, 96, 96))).astype(float) + 100.0
    save_image(Series(data, 0.5, time_s=np.arange(4.0)), tmp_path / "s.npz")
    with pytest.warns(UserWarning, match=r"shot noise \(`gain` auto\)") as rec:
        _frames(tmp_path, 'dose_e_per_A2 = 500.0, gain = "auto"')
    said = next(str(w.message) for w in rec if "auto" in str(w.message))
    import re

    g = float(re.search(r"gain ([0-9.]+)", said).group(1))
    assert abs(g - 5.0) < 0.5, said
    with pytest.raises(ParameterError, match=r'or "auto"'):
        load_config(_config(tmp_path, 'gain = "x"'))


def test_edited_side_file_reruns_and_a_run_folder_inside_its_input_caches(tmp_path):
    """An edited .rawtlt (angles corrected) left the step cached on the old angles: the
    input's key hashed the .mrc only.  And a run folder inside its input folder of frames
    changed that folder's digest at every run, so nothing ever came from the cache."""
    from perovstem import Image, TiltSeries
    from perovstem.io import save_image

    ang = np.array([-40.0, -20, 0, 20, 40])
    save_image(TiltSeries(np.ones((5, 16, 16), np.float32), ang, 2.0), tmp_path / "t.mrc")
    cfg = tmp_path / "t.toml"
    cfg.write_text(
        '[run]\nreport = false\n[inputs]\ntilt = "t.mrc"\n'
        '[[step]]\nrun = "tomo.bin"\nid = "b"\nfactor = 2\n'
    )
    assert run_pipeline(cfg, out=tmp_path / "run", quiet=True).status("b") == "ran"
    assert run_pipeline(cfg, out=tmp_path / "run", quiet=True).status("b") == "cached"
    (tmp_path / "t.rawtlt").write_text("\n".join(f"{a / 2:g}" for a in ang))
    with pytest.warns(UserWarning, match="its tilt angles replace"):
        res = run_pipeline(cfg, out=tmp_path / "run", quiet=True)
    assert res.status("b") == "ran"
    frames = tmp_path / "frames"
    for i in range(3):
        save_image(Image(np.full((16, 16), i + 1.0, np.float32), 0.5), frames / f"f_{i}.tif")
    cfg2 = tmp_path / "s.toml"
    cfg2.write_text(
        '[run]\nreport = false\n[inputs]\nseries = { path = "frames", dose_e_per_A2 = 100.0, frame_time_s = 1.0 }\n'
        '[[step]]\nrun = "series.frames"\nid = "frames"\n'
    )
    inside = frames / "analysis"
    assert run_pipeline(cfg2, out=inside, quiet=True).status("frames") == "ran"
    assert run_pipeline(cfg2, out=inside, quiet=True).status("frames") == "cached"


def test_an_image_input_takes_its_dose_and_detector(tmp_path):
    """A single image without a dose (a tif, StatSTEM .mat, a dose-less dm4) could not be
    normalised in a pipeline: `dose_e_per_A2` made the input a series ("a file read as a
    Series") and atoms.fit has no dose.  An image takes the dose (or current × dwell),
    gain, offset, beam energy and detector; settings of a series only are refused."""
    from perovstem.io import save_image
    from perovstem.simulate import nanocrystal
    from perovstem.simulate.haadf import haadf_image

    img, _ = haadf_image(nanocrystal(20.0, rng=1), pixel_size_A=0.25, dose_e_per_A2=5e3, rng=1)
    save_image(img.replace(dose_e_per_A2=None), tmp_path / "a.tif")
    fits = {}
    for tag, opts in (
        ("dose", "dose_e_per_A2 = 5000.0, gain = 1.0, offset = 0.0"),
        ("probe", "current_pA = 50.0, dwell_us = 1.0, gain = 1.0, offset = 0.0"),
    ):
        cfg = tmp_path / f"{tag}.toml"
        cfg.write_text(
            f'[run]\nreport = false\n[inputs]\nimage = {{ path = "a.tif", {opts} }}\n'
            '[[step]]\nrun = "atoms.fit"\nid = "fit"\ncell = "cspbbr3_001"\n'
        )
        res = run_pipeline(cfg, out=tmp_path / tag, quiet=True)
        assert res.status("fit") == "ran"
        fits[tag] = read_table(tmp_path / tag / "tables" / "fit.columns.parquet")
        assert fits[tag].attrs["scs_units"].startswith("fraction")
    # 50 pA × 1 µs / e / (0.25 Å)² = 4993.2 e⁻/Å²: the cross-sections scale with 1/dose
    dose = 50e-12 * 1e-6 / 1.602176634e-19 / 0.25**2
    np.testing.assert_allclose(fits["probe"]["scs"] * dose, fits["dose"]["scs"] * 5000.0, rtol=1e-4)
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        '[run]\nreport = false\n[inputs]\nimage = { path = "a.tif", dose_e_per_A2 = 5000.0, '
        'temperature_K = 300.0 }\n[[step]]\nrun = "atoms.fit"\nid = "fit"\ncell = "cspbbr3_001"\n'
    )
    with pytest.raises(PerovstemError, match="temperature_K"):
        run_pipeline(cfg, out=tmp_path / "bad", quiet=True)
