"""Valid files laid out as instruments write them, which earlier rounds never read (uqa18):
a Velox emd of an EDS acquisition (images beside a spectrum stream), ..."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

import perovstem as ps
from perovstem.errors import DataError

A = (np.random.default_rng(2).poisson(200.0, (24, 32))).astype(np.uint16)


def _velox(path, images, *, spectrum_image=False, frame_time=None, angles=None):
    """A Velox (v11 layout) emd: one /Data/Image/<uuid> group per detector with its JSON
    metadata (pixel size in m, detector name, screen current, dwell time), the display
    labels, and optionally an EDS /Data/SpectrumImage stream group."""
    import h5py

    def js(d, n=1):
        b = np.frombuffer(json.dumps(d).encode(), np.uint8)
        a = np.zeros((b.size + 8, n), np.uint8)
        a[: b.size] = b[:, None]
        return a

    dets = {f"Detector-{i}": {"DetectorName": name} for i, (name, _, _) in enumerate(images)}
    if angles is not None:  # (semi-angle, inner, outer) in rad, as Velox writes them
        for d in dets.values():
            d["CollectionAngleRange"] = {"begin": str(angles[1]), "end": str(angles[2])}
    with h5py.File(path, "w") as f:
        f["Version"] = np.array([json.dumps({"format": "Velox", "version": "11"}).encode()])
        for i, (name, data, px_m) in enumerate(images):
            data = np.asarray(data)
            data = data[None] if data.ndim == 2 else data
            key = uuid.uuid4().hex
            g = f.create_group(f"Data/Image/{key}")
            # one chunk per frame, as Velox writes (RosettaSciIO's lazy reader needs chunks)
            g.create_dataset("Data", data=np.moveaxis(data, 0, 2), chunks=(*data.shape[1:], 1))
            scan = {"DwellTime": "2e-06"} | ({"FrameTime": str(frame_time)} if frame_time else {})
            om = {
                "BinaryResult": {
                    "PixelSize": {"width": str(px_m), "height": str(px_m)},
                    "PixelUnitX": "m",
                    "Offset": {"x": "0", "y": "0"},
                    "DetectorIndex": str(i),
                },
                "Detectors": dets,
                "Optics": {"LastMeasuredScreenCurrent": "5e-11"}
                | ({"BeamConvergence": str(angles[0])} if angles is not None else {}),
                "Scan": scan,
                "Acquisition": {"AcquisitionStartDatetime": {"DateTime": "1764290000"}},
                "CustomProperties": {},
            }
            g["Metadata"] = js(om, data.shape[0])
            ref = f"SharedProperties/ImageSeriesDataReference/{key}"
            f[ref] = np.array([json.dumps({"dataPath": g.name}).encode()])
            f[f"Displays/ImageDisplay/{key}"] = np.array(
                [json.dumps({"data": "/" + ref, "id": name}).encode()]
            )
        if spectrum_image:
            g = f.create_group(f"Data/SpectrumImage/{uuid.uuid4().hex}")
            g["Data"] = np.zeros((64, 1), np.uint16)


@pytest.fixture
def no_sparse(monkeypatch):
    """The optional package 'sparse' not installed (RosettaSciIO asks importlib for it)."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "sparse" else real(name, *a)
    )


@pytest.mark.parametrize("lazy", [False, True])
def test_velox_eds_acquisition_images_are_read_without_the_spectrum_package(
    tmp_path, no_sparse, lazy
):
    # old code: "RosettaSciIO needs the optional package 'sparse'" for every Velox file of an
    # EDS acquisition, although only its images are read (the stream is never decoded)
    p = tmp_path / "eds.emd"
    _velox(p, [("BF", 60000 - A, 2e-11), ("HAADF", A, 2e-11)], spectrum_image=True)
    img = ps.load(p, lazy=lazy)
    assert img.metadata["original"]["General"]["title"] == "HAADF"
    np.testing.assert_array_equal(np.asarray(img.data), A)
    assert img.pixel_size_A == pytest.approx(0.2)
    assert img.dose_e_per_A2 == pytest.approx(5e-11 * 2e-6 / 1.602176634e-19 / 0.04)
    bf = ps.load(p, signal="bf")
    np.testing.assert_array_equal(np.asarray(bf.data), 60000 - A)


def _frames(folder, n, *, stamps=None, shape=(24, 32), names="frame_{}.tif"):
    """One calibrated ImageJ tif per frame (0.5 Å pixels), frame i holding value 100 + i."""
    import tifffile

    folder.mkdir()
    for i in range(n):
        kw = {"datetime": stamps[i]} if stamps is not None else {}
        tifffile.imwrite(
            folder / names.format(i + 1),
            np.full(shape, 100 + i, np.uint16),
            imagej=True,
            resolution=(20.0, 20.0),
            metadata={"unit": "nm"},
            **kw,
        )
    return folder


def test_folder_of_frame_files_is_a_series_in_natural_order_with_file_times(tmp_path):
    # old code: "'frames' is a directory, not an image file" (in-situ software exports one
    # file per frame)
    import datetime as dt

    t0 = dt.datetime(2026, 11, 28, 1, 2, 3)
    p = _frames(
        tmp_path / "frames", 11, stamps=[t0 + dt.timedelta(seconds=3 * i) for i in range(11)]
    )
    s = ps.load(p)
    assert isinstance(s, ps.Series) and s.data.shape == (11, 24, 32)
    np.testing.assert_array_equal(s.data[:, 0, 0], 100 + np.arange(11))  # frame_2 before frame_10
    np.testing.assert_allclose(s.time_s, 3.0 * np.arange(11))
    assert s.pixel_size_A == pytest.approx(0.5)
    assert s.metadata["frame_files"][:3] == ["frame_1.tif", "frame_2.tif", "frame_3.tif"]


def test_folder_frames_without_usable_times_have_none(tmp_path):
    import datetime as dt

    assert ps.load(_frames(tmp_path / "none", 3)).time_s is None
    # stamps to the second, frames 0.5 s apart: ties would give zero time steps
    t0 = dt.datetime(2026, 11, 28, 1, 2, 3)
    p = _frames(
        tmp_path / "coarse", 3, stamps=[t0 + dt.timedelta(seconds=0.5 * i) for i in range(3)]
    )
    with pytest.warns(UserWarning, match=r"coarse.*time stamps do not increase.*frame_2\.tif"):
        s = ps.load(p)
    assert s.time_s is None and s.data.shape == (3, 24, 32)


def test_folder_that_is_not_one_series_is_refused_naming_the_files(tmp_path):
    from perovstem.errors import FileFormatError

    p = _frames(tmp_path / "mixed", 2)
    import tifffile

    tifffile.imwrite(
        p / "frame_3.tif",
        np.zeros((24, 30), np.uint16),
        imagej=True,
        resolution=(20.0, 20.0),
        metadata={"unit": "nm"},
    )
    with pytest.raises(DataError, match=r"mixed.*different shapes.*frame_1\.tif.*frame_3\.tif"):
        ps.load(p)
    (p / "frame_3.tif").unlink()
    (p / "notes.npz").write_bytes(b"")
    with pytest.raises(FileFormatError, match=r"mixed.*one kind of image file.*\.npz, \.tif"):
        ps.load(p)
    with pytest.raises(FileFormatError, match=r"is a directory holding no image files"):
        ps.load((tmp_path / "empty").mkdir() or tmp_path / "empty")


def test_cli_reads_a_folder_of_frames(tmp_path, capsys):
    from perovstem.cli.main import main

    p = _frames(tmp_path / "frames", 3)
    assert main(["info", str(p)]) == 0
    out = capsys.readouterr().out
    assert "Series" in out and "3 × 24 × 32" in out


def test_info_names_the_gap_of_a_tilt_series_with_a_missing_range(tmp_path, capsys):
    # old code: "-60 … 60° (41, step 2°)" for a series missing -30° … +10°
    import mrcfile

    from perovstem.cli.main import main

    angles = np.r_[np.arange(-60, -29, 2), np.arange(10, 61, 2)].astype(float)
    p = tmp_path / "gap.mrc"
    with mrcfile.new(p) as m:
        m.set_data(np.zeros((angles.size, 16, 16), np.float32))
        m.voxel_size = 2.0
    (tmp_path / "gap.rawtlt").write_text("\n".join(f"{a:g}" for a in angles))
    assert main(["info", str(p)]) == 0
    assert "-60 … 60° (42, steps 2–40°, largest gap -30 … 10°)" in capsys.readouterr().out


def test_binary_file_that_no_reader_takes_is_a_clear_error_not_a_crash(tmp_path, capsys):
    # old code: UnicodeDecodeError from the content sniffing (CLI: "unexpected ... error",
    # exit 1) for a cut MRC header whose bytes are not UTF-8 (found on uqa13's trunc_hdr.mrc)
    from perovstem.cli.main import main
    from perovstem.errors import FileFormatError

    p = tmp_path / "cut.mrc"
    p.write_bytes(b"@" * 40 + b"\xf6" + b"\x01" * 159)
    with pytest.raises(FileFormatError, match=r"cut\.mrc"):
        ps.load(p)
    assert main(["info", str(p)]) == 2
    assert "cut.mrc" in capsys.readouterr().err


def test_velox_stack_without_frame_time_names_the_missing_entry_not_truncation(tmp_path):
    # old code: "... (KeyError: 'ExposureTime'); ... truncated (an interrupted copy?) or damaged"
    from perovstem.errors import FileFormatError

    p = tmp_path / "stack.emd"
    _velox(p, [("HAADF", np.stack([A, A, A]), 2e-11)])
    with pytest.raises(FileFormatError, match=r"stack\.emd.*needs the metadata entry 'Exp") as e:
        ps.load(p)
    assert "truncated" not in str(e.value)
    p2 = tmp_path / "stack_ft.emd"  # with the scan's frame time, as Velox writes STEM stacks
    _velox(p2, [("HAADF", np.stack([A, A, A]), 2e-11)], frame_time=2.0)
    np.testing.assert_allclose(ps.load(p2).time_s, [0.0, 2.0, 4.0])


def test_velox_probe_and_detector_angles_are_read(tmp_path, capsys):
    # old code: not read; a cross-section library must be made at them
    p = tmp_path / "haadf.emd"
    _velox(p, [("HAADF", np.ones((16, 16), np.uint16), 2e-11)], angles=(0.0245, 0.05, 0.18))
    img = ps.load(p)
    assert img.metadata["semiangle_mrad"] == pytest.approx(24.5)
    np.testing.assert_allclose(img.metadata["detector_mrad"], [50.0, 180.0])
    from perovstem.cli.main import main

    assert main(["info", str(p)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "probe semi-angle │ 24.5 mrad" in out and "detector │ 50–180 mrad" in out
    _velox(p := tmp_path / "bare.emd", [("HAADF", np.ones((16, 16), np.uint16), 2e-11)])
    assert "detector_mrad" not in ps.load(p).metadata


def test_side_file_angles_replacing_the_headers_are_said(tmp_path):
    """A .rawtlt beside an FEI-header stack replaced the header's angles silently, also in
    radians or from another series; a side file that agrees with the header is not warned
    about, and the angles' source is the file that gave them (the .mdoc overrode a .rawtlt
    while `angles_source` still named the .rawtlt)."""
    import warnings

    import perovstem as ps
    from perovstem.io import load, save_image

    ang = np.array([-40.0, -20.0, 0.0, 20.0, 40.0])
    p = tmp_path / "a.mrc"
    save_image(ps.TiltSeries(np.ones((5, 16, 16), np.float32), ang, 2.0), p)
    side = tmp_path / "a.rawtlt"
    side.write_text("\n".join(f"{a:.2f}" for a in ang))  # the same, rounded
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.allclose(load(p).angles_deg, ang)
    side.write_text("\n".join(f"{a:g}" for a in np.deg2rad(ang)))
    with pytest.warns(UserWarning, match=r"a\.rawtlt'?: its tilt angles replace those of the "):
        t = load(p)
    assert np.allclose(t.angles_deg, np.deg2rad(ang)) and t.metadata["angles_source"] == str(side)
    # a SerialEM .mdoc beside it overrides the .rawtlt, and says so where they differ
    side.write_text("\n".join(f"{a:g}" for a in ang))
    mdoc = tmp_path / "a.mrc.mdoc"
    mdoc.write_text(
        "PixelSpacing = 2\n\n"
        + "".join(f"[ZValue = {k}]\nTiltAngle = {a + 5:g}\n\n" for k, a in enumerate(ang))
    )
    with pytest.warns(UserWarning, match=r"mdoc'?: its tilt angles replace those of .*a\.rawtlt"):
        t = load(p)
    assert np.allclose(t.angles_deg, ang + 5) and t.metadata["angles_source"] == str(mdoc)


def test_hyperspy_data_axes_are_read_by_their_values(tmp_path):
    """HyperSpy non-uniform (data) axes carry their values, no scale: read with scale 1 and
    offset 0, a 0.02 nm image axis gave 10 Å pixels, tilts of -70…66° read 0…4°, and a
    non-uniform time axis 0, 1, 2 … s.  A uniform data axis is a scale; a non-uniform image
    axis and a functional axis are refused."""
    hs = pytest.importorskip("hyperspy.api")
    from perovstem.errors import CalibrationError, FileFormatError
    from perovstem.io import load

    st = np.random.default_rng(0).random((5, 16, 20)).astype("f4")

    def ax(name, **kw):
        return {"name": name, "units": "nm", "navigate": False, **kw}

    img = hs.signals.Signal2D(
        st[0], axes=[ax("y", axis=np.arange(16) * 0.02), ax("x", axis=np.arange(20) * 0.02)]
    )
    img.save(tmp_path / "xy.hspy")
    assert load(tmp_path / "xy.hspy").pixel_size_A == pytest.approx(0.2)
    tilts = np.array([-70.0, -40, -10, 25, 66])
    nav = {"name": "tilt", "units": "deg", "navigate": True, "axis": tilts}
    hs.signals.Signal2D(
        st, axes=[nav, ax("y", size=16, scale=0.02), ax("x", size=20, scale=0.02)]
    ).save(tmp_path / "tilt.hspy")
    assert np.allclose(load(tmp_path / "tilt.hspy").angles_deg, tilts)
    times = np.array([0.0, 0.7, 3.1, 10, 42.5])
    nav = {"name": "time", "units": "s", "navigate": True, "axis": times}
    hs.signals.Signal2D(
        st, axes=[nav, ax("y", size=16, scale=0.02), ax("x", size=20, scale=0.02)]
    ).save(tmp_path / "time.hspy")
    assert np.allclose(load(tmp_path / "time.hspy").time_s, times)
    bad = hs.signals.Signal2D(
        st[0], axes=[ax("y", axis=np.arange(16) ** 1.5 * 0.02), ax("x", axis=np.arange(20) * 0.02)]
    )
    bad.save(tmp_path / "bad.hspy")
    with pytest.raises(CalibrationError, match="image axis 'y' is not uniform"):
        load(tmp_path / "bad.hspy")
    fun = hs.signals.Signal2D(
        st,
        axes=[
            {"name": "time", "units": "s", "navigate": True, "size": 5},
            ax("y", size=16, scale=0.02),
            ax("x", size=20, scale=0.02),
        ],
    )
    fun.axes_manager[0].convert_to_functional_data_axis(expression="a*x**2", a=2.0)
    fun.save(tmp_path / "fun.hspy")
    with pytest.raises(FileFormatError, match="functional axis"):
        load(tmp_path / "fun.hspy")


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("kept", [0.5, 0.99])
def test_cut_imagej_stack_is_refused_not_read_as_one_image(tmp_path, lazy, kept):
    """A 6-frame ImageJ stack cut short (an interrupted copy) was read as one 128×128 image
    with exit 0: tifffile reads what is left and only logs the damage."""
    import tifffile

    from perovstem.errors import FileFormatError
    from perovstem.io import load

    p = tmp_path / "stack.tif"
    frames = np.random.default_rng(1).random((6, 64, 64)).astype("f4")
    meta = {"unit": "nm", "axes": "TYX", "finterval": 0.5}
    tifffile.imwrite(p, frames, imagej=True, resolution=(50, 50), metadata=meta)
    assert load(p, lazy=lazy).data.shape == (6, 64, 64)
    b = p.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(b[: int(len(b) * kept)])
    with pytest.raises(FileFormatError, match="announces 6 images, the file holds 1"):
        load(cut, lazy=lazy)


def test_mrc_tilt_series_outputs_are_checked_before_writing(tmp_path):
    """`convert X.ali Y.mrc` beside an old Y.rawtlt wrote Y.mrc, then refused the .rawtlt:
    the new stack was left with the old angles, which replaced its header's on reading.  And
    `convert X.ali X.mrc --overwrite` rewrote the input's own X.rawtlt."""
    import perovstem as ps
    from perovstem.cli.main import main
    from perovstem.io import save_image

    ang = np.array([-40.0, -20, 0, 20, 40])
    save_image(ps.TiltSeries(np.ones((5, 16, 16), np.float32), ang, 2.0), tmp_path / "ok.mrc")
    src = tmp_path / "X.ali"
    src.write_bytes((tmp_path / "ok.mrc").read_bytes())
    (tmp_path / "X.rawtlt").write_text("\n".join(f"{a:g}" for a in ang))
    old = tmp_path / "Y.rawtlt"
    old.write_text("1\n2\n3\n4\n5\n")
    assert main(["convert", str(src), str(tmp_path / "Y.mrc")]) == 2
    assert not (tmp_path / "Y.mrc").exists() and old.read_text() == "1\n2\n3\n4\n5\n"
    assert main(["convert", str(src), str(tmp_path / "X.mrc"), "--overwrite"]) == 2
    assert not (tmp_path / "X.mrc").exists()
    assert main(["convert", str(src), str(tmp_path / "Z.mrc")]) == 0
    assert np.allclose(ps.load(tmp_path / "Z.mrc").angles_deg, ang)


def _fei1_stack(path, fields, voxel=None):
    import mrcfile
    from mrcfile.dtypes import get_ext_header_dtype

    from perovstem.io._mrc import _FEI_BITS

    data = np.random.default_rng(1).random((5, 16, 20)).astype(np.float32)
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(data)
        if voxel is not None:
            m.voxel_size = voxel
        dt = get_ext_header_dtype(b"FEI1", m.header.mode.dtype.byteorder)
        rec = np.zeros(5, dtype=dt)
        rec["Metadata size"] = dt.itemsize
        masks = dict.fromkeys(("Bitmask 1", "Bitmask 2", "Bitmask 3", "Bitmask 4"), 0)
        for f, v in fields.items():
            rec[f] = v
            mk, b = _FEI_BITS[f]
            masks[mk] |= 1 << b
        for k, v in masks.items():
            rec[k] = v
        m.set_extended_header(rec)
        m.header.exttyp = b"FEI1"


def test_fei1_pixel_sizes_varying_or_non_square_are_refused(tmp_path):
    """Per-image FEI1 pixel sizes of 0.2 then 0.4 Å (a magnification changed) read as
    0.4 Å for all; a Y size of 0.4 Å beside X 0.2 Å read as square 0.2 Å (Y was not
    read); an FEI1 size replacing a disagreeing header voxel size is said."""
    import warnings

    from perovstem.errors import CalibrationError
    from perovstem.io import load

    t = 45000.5 + np.arange(5) * 2 / 86400
    _fei1_stack(
        tmp_path / "vary.mrc", {"Pixel size X": [2e-11, 2e-11, 4e-11, 4e-11, 4e-11], "Timestamp": t}
    )
    with pytest.raises(CalibrationError, match="pixel size changes between images"):
        load(tmp_path / "vary.mrc")
    _fei1_stack(
        tmp_path / "nonsq.mrc", {"Pixel size X": 2e-11, "Pixel size Y": 4e-11, "Timestamp": t}
    )
    with pytest.raises(CalibrationError, match=r"non-square pixels \(0.2 Å in x, 0.4 Å in y\)"):
        load(tmp_path / "nonsq.mrc")
    _fei1_stack(
        tmp_path / "ok.mrc",
        {"Pixel size X": 2e-11, "Pixel size Y": 2e-11, "Timestamp": t},
        voxel=0.2,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load(tmp_path / "ok.mrc").pixel_size_A == pytest.approx(0.2)
    _fei1_stack(
        tmp_path / "hdr.mrc",
        {"Pixel size X": 2e-11, "Pixel size Y": 2e-11, "Timestamp": t},
        voxel=0.4,
    )
    with pytest.warns(UserWarning, match=r"its pixel size \(0.2 Å\) replaces the MRC header's"):
        assert load(tmp_path / "hdr.mrc").pixel_size_A == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("PixelSpacing = 0.788 nm", "PixelSpacing"),
        ("PixelSpacing = abc", "PixelSpacing"),
        ("Voltage = abc", "Voltage"),
    ],
)
def test_mdoc_values_that_are_no_numbers_are_refused_naming_them(tmp_path, line, key):
    """A SerialEM .mdoc value that is not a number ended in a bare "could not convert
    string to float" (CLI: unexpected ValueError); a NaN tilt angle made the tilt series
    a frame series."""
    import mrcfile

    from perovstem.errors import FileFormatError
    from perovstem.io import load

    p = tmp_path / "s.mrc"
    with mrcfile.new(p) as m:
        m.set_data(np.ones((3, 8, 8), np.float32))
    body = "".join(f"[ZValue = {k}]\nTiltAngle = {a}\n\n" for k, a in enumerate((-30, 0, 30)))
    (tmp_path / "s.mrc.mdoc").write_text(f"{line}\n\n{body}")
    with pytest.raises(FileFormatError, match=rf"line 1: {key} = .* is not a finite number"):
        load(p)
    (tmp_path / "s.mrc.mdoc").write_text("PixelSpacing = 3.94\n\n" + body.replace("= 30", "= nan"))
    with pytest.raises(FileFormatError, match="TiltAngle = 'nan' is not a finite number"):
        load(p)


def test_mdoc_pixel_spacing_replaces_both_header_sizes(tmp_path):
    """The .mdoc's PixelSpacing replaced the header's x size only, so a header of 3.94 Å and
    an .mdoc of 7.88 Å was refused as "non-square pixels (7.88 Å in x, 3.94 Å in y)"."""
    import mrcfile

    from perovstem.io import load

    p = tmp_path / "s.mrc"
    with mrcfile.new(p) as m:
        m.set_data(np.ones((3, 8, 8), np.float32))
        m.voxel_size = 3.94
    body = "".join(f"[ZValue = {k}]\nTiltAngle = {a}\n\n" for k, a in enumerate((-30, 0, 30)))
    (tmp_path / "s.mrc.mdoc").write_text("PixelSpacing = 7.88\n\n" + body)
    with pytest.warns(UserWarning, match=r"pixel size \(7.88 Å\) replaces the MRC header's voxel"):
        assert load(p).pixel_size_A == pytest.approx(7.88)


def test_temperature_stack_axis_is_refused_not_a_crash(tmp_path):
    """A .hspy whose stack axis is in °C (a heating ramp) ended in "unexpected
    DimensionalityError": "degree" in degree_Celsius was taken for an angle."""
    hs = pytest.importorskip("hyperspy.api")
    from perovstem.errors import DataError
    from perovstem.io import load

    s = hs.signals.Signal2D(np.ones((3, 8, 8), np.float32))
    s.axes_manager[0].units = "degC"
    s.axes_manager[0].scale = 50.0
    s.axes_manager[1].units = s.axes_manager[2].units = "nm"
    s.axes_manager[1].scale = s.axes_manager[2].scale = 0.02
    s.save(tmp_path / "ramp.hspy")
    with pytest.raises(DataError, match="neither time"):
        load(tmp_path / "ramp.hspy")


def test_damaged_perovstem_and_statstem_files_are_named_not_crashes(tmp_path):
    """Hand-edited or damaged .npz/.zarr/.mat files (metadata without a pixel size, bad
    JSON, no data array, a StatSTEM dx as an array) ended in "unexpected KeyError /
    JSONDecodeError / TypeError"; a pixel size below 1 pm (metres typed for Å) was taken."""
    import json

    import perovstem as ps
    from perovstem.errors import FileFormatError, ParameterError
    from perovstem.io import load, save_image

    good = tmp_path / "good.npz"
    save_image(ps.Image(np.ones((8, 8), np.float32), 0.5), good)
    with np.load(good) as z:
        arrays = dict(z)
    key = next(k for k, v in arrays.items() if v.dtype.kind in "US" and k != "data")
    meta = json.loads(str(arrays[key]))
    broken = {
        "nopx": {
            **arrays,
            key: np.array(json.dumps({k: v for k, v in meta.items() if "size" not in k})),
        },
        "badjson": {**arrays, key: np.array("{not json")},
        "nodata": {k: v for k, v in arrays.items() if k != "data"},
    }
    for name, content in broken.items():
        np.savez(tmp_path / f"{name}.npz", **content)
        with pytest.raises(FileFormatError, match=rf"{name}.npz'?: damaged, or not the layout"):
            load(tmp_path / f"{name}.npz")
    with pytest.raises(ParameterError, match=r"from 0.01 \(1 pm\)"):
        load(good, pixel_size=2e-11)


def test_angle_sources_that_are_dropped_or_overridden_are_said(tmp_path):
    """An FEI1 Alpha tilt beyond ±90° dropped every angle (a tilt series read as a frame
    series) silently; HyperSpy/ETSpy Tomography.tilts of the wrong length were ignored, and
    tilts disagreeing with the stack axis won, both without a word."""
    from perovstem.io import load

    t = 45000.5 + np.arange(5) * 2 / 86400
    alpha = np.array([-60.0, -30, 0, 30, 95])
    _fei1_stack(
        tmp_path / "a.mrc",
        {"Pixel size X": 2e-11, "Pixel size Y": 2e-11, "Timestamp": t, "Alpha tilt": alpha},
    )
    with pytest.warns(UserWarning, match=r"Alpha tilt of image 4 is 95.0° \(beyond ±90°\)"):
        load(tmp_path / "a.mrc")
    hs = pytest.importorskip("hyperspy.api")
    for name, tilts, said in (
        ("short", np.linspace(-20, 20, 4), "hold 4 angles for 5 images: not used"),
        ("other", np.linspace(-20, 20, 5), r"replace the stack axis's angles \(-10…10°\)"),
    ):
        s = hs.signals.Signal2D(np.ones((5, 8, 8), np.float32))
        ax = s.axes_manager[0]
        ax.units, ax.scale, ax.offset = "deg", 5.0, -10.0
        for a in s.axes_manager.signal_axes:
            a.units, a.scale = "nm", 0.2
        s.metadata.set_item("Tomography.tilts", tilts)
        s.save(tmp_path / f"{name}.hspy")
        with pytest.warns(UserWarning, match=said):
            got = load(tmp_path / f"{name}.hspy").angles_deg
        assert np.allclose(got, np.linspace(-10, 10, 5) if name == "short" else tilts)


def test_imod_aligned_stack_takes_its_refined_tlt(tmp_path):
    """Beside an IMOD aligned .ali, the .tlt holds the angles tiltalign refined for it; the
    .rawtlt was always taken, silently.  Now the .ali takes its .tlt, and a .rawtlt that
    differs is said; a raw stack (.mrc/.st) keeps taking its .rawtlt."""
    import mrcfile

    from perovstem.io import load

    raw = np.array([-40.0, -20, 0, 20, 40])
    refined = raw + np.array([0.3, -0.2, 0.1, 0.4, -0.3])
    for name in ("a.ali", "a.mrc"):
        with mrcfile.new(tmp_path / name) as m:
            m.set_data(np.ones((5, 8, 8), np.float32))
            m.voxel_size = 2.0
    (tmp_path / "a.rawtlt").write_text("\n".join(f"{a:g}" for a in raw))
    (tmp_path / "a.tlt").write_text("\n".join(f"{a:g}" for a in refined))
    with pytest.warns(UserWarning, match=r"a\.tlt' gives the tilt angles; .*a\.rawtlt' beside"):
        assert np.allclose(load(tmp_path / "a.ali").angles_deg, refined)
    with pytest.warns(UserWarning, match=r"a\.rawtlt' gives the tilt angles"):
        assert np.allclose(load(tmp_path / "a.mrc").angles_deg, raw)


def test_frame_times_all_equal_are_not_used(tmp_path):
    """FEI1 stamps all equal (a writer that did not update them) gave every frame time 0,
    and per-second results came from no interval, silently."""
    from perovstem.io import load

    stamps = np.full(5, 45000.5)
    _fei1_stack(
        tmp_path / "eq.mrc", {"Pixel size X": 2e-11, "Pixel size Y": 2e-11, "Timestamp": stamps}
    )
    with pytest.warns(UserWarning, match="every frame has the same time stamp"):
        s = load(tmp_path / "eq.mrc")
    assert s.time_s is None
    t = 45000.5 + np.arange(5) * 2 / 86400
    _fei1_stack(tmp_path / "ok.mrc", {"Pixel size X": 2e-11, "Pixel size Y": 2e-11, "Timestamp": t})
    assert np.allclose(load(tmp_path / "ok.mrc").time_s, 2.0 * np.arange(5), atol=1e-3)


@pytest.mark.parametrize("lazy", [False, True])
def test_mrc_axis_order_is_followed_or_refused(tmp_path, lazy):
    """An MRC written with columns along y (mapc, mapr = 2, 1) was read untransposed; an
    order whose sections are not the images is refused."""
    import mrcfile

    from perovstem.errors import FileFormatError
    from perovstem.io import load

    img = np.arange(3 * 6 * 4, dtype=np.float32).reshape(3, 6, 4)
    with mrcfile.new(tmp_path / "n.mrc") as m:
        m.set_data(img)
        m.voxel_size = 2.0
    with mrcfile.new(tmp_path / "s.mrc") as m:
        m.set_data(np.ascontiguousarray(np.swapaxes(img, 1, 2)))
        m.voxel_size = 2.0
        m.header.mapc, m.header.mapr = 2, 1
    ref = np.asarray(load(tmp_path / "n.mrc", lazy=lazy).data)
    assert np.array_equal(np.asarray(load(tmp_path / "s.mrc", lazy=lazy).data), ref)
    with mrcfile.open(tmp_path / "s.mrc", mode="r+") as m:
        m.header.mapc, m.header.mapr, m.header.maps = 3, 1, 2
    with pytest.raises(FileFormatError, match=r"axis order mapc, mapr, maps = \(3, 1, 2\)"):
        load(tmp_path / "s.mrc", lazy=lazy)


def _berkeley_emd(path, first_axis, rng):
    from rsciio.emd import file_writer

    image_axis = {"size": 32, "scale": 0.05, "offset": 0.0, "units": "nm", "navigate": False}
    file_writer(
        str(path),
        {
            "data": rng.random((4, 32, 32)).astype("f4"),
            "axes": [
                {"size": 4, "navigate": False, **first_axis},
                {"name": "y", **image_axis},
                {"name": "x", **image_axis},
            ],
            "metadata": {"General": {"title": "stack"}, "Signal": {"signal_type": ""}},
            "original_metadata": {},
        },
    )


@pytest.mark.parametrize("lazy", [False, True])
def test_berkeley_emd_stack_is_a_series_or_tilt_series(tmp_path, lazy):
    """The Berkeley EMD reader marks no axis as a navigation axis: a frame series or tilt
    series in that format was refused as holding "no 2-D image signal".  Its first axis is
    the stack's when it is in time or angle units; three length axes are named a volume."""
    rng = np.random.default_rng(0)
    _berkeley_emd(
        tmp_path / "s.emd", {"name": "time", "scale": 2.0, "offset": 0.0, "units": "s"}, rng
    )
    s = ps.io.load(tmp_path / "s.emd", lazy=lazy)
    assert isinstance(s, ps.Series) and s.n_frames == 4
    assert s.pixel_size_A == pytest.approx(0.5)
    np.testing.assert_allclose(s.time_s, [0, 2, 4, 6])
    _berkeley_emd(
        tmp_path / "t.emd", {"name": "tilt", "scale": 10.0, "offset": -20.0, "units": "deg"}, rng
    )
    t = ps.io.load(tmp_path / "t.emd", lazy=lazy)
    assert isinstance(t, ps.TiltSeries)
    np.testing.assert_allclose(t.angles_deg, [-20, -10, 0, 10])
    _berkeley_emd(
        tmp_path / "v.emd", {"name": "z", "scale": 0.05, "offset": 0.0, "units": "nm"}, rng
    )
    with pytest.raises(DataError, match="a 3-D volume \\(three length axes\\)"):
        ps.io.load(tmp_path / "v.emd", lazy=lazy)


def test_hyperspy_image_axis_without_unit_takes_the_other_axis_unit(tmp_path):
    """A HyperSpy image with a unit on x only (0.05 nm) and a y scale of 0.1 without unit read
    as square 0.5 Å pixels, silently.  The unitless axis takes the other's unit (non-square:
    refused), an equal scale is square, and a never-calibrated scale of 1 is said."""
    hs = pytest.importorskip("hyperspy.api")
    from perovstem.errors import CalibrationError

    def save(name, y_scale, y_units, x_units="nm"):
        hs.signals.Signal2D(
            np.ones((16, 16), "f4"),
            axes=[
                {"name": "y", "size": 16, "scale": y_scale, "units": y_units},
                {"name": "x", "size": 16, "scale": 0.05, "units": x_units},
            ],
        ).save(tmp_path / name)
        return tmp_path / name

    with pytest.raises(CalibrationError, match="non-square pixels \\(0.5 Å in x, 1 Å in y\\)"):
        ps.io.load(save("a.hspy", 0.1, "<undefined>"))
    assert ps.io.load(save("b.hspy", 0.05, "")).pixel_size_A == pytest.approx(0.5)
    assert ps.io.load(save("c.hspy", 0.05, "nm", "<undefined>")).pixel_size_A == pytest.approx(0.5)
    with pytest.warns(UserWarning, match="axis 'y' has no calibration.*that of axis 'x', 0.5 Å"):
        assert ps.io.load(save("d.hspy", 1.0, "px")).pixel_size_A == pytest.approx(0.5)
