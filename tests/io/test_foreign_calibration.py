"""Calibration of files written by other programs (ImageJ/Fiji, OME, HyperSpy)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

import perovstem as ps
from perovstem.errors import CalibrationError

A = np.random.default_rng(0).random((30, 40)).astype(np.float32)


@pytest.mark.parametrize(
    ("unit", "size"),
    [("nm", 0.02), ("micron", 2e-5), ("\\u00B5m", 2e-5), ("\\u00C5", 0.2)],
)
def test_imagej_tif_calibration_is_read(tmp_path, unit, size):
    # ImageJ stores the unit in its description (non-ASCII as Java escapes); rsciio drops it
    p = tmp_path / "ij.tif"
    tifffile.imwrite(p, A, imagej=True, resolution=(1 / size, 1 / size), metadata={"unit": unit})
    img = ps.load(p)
    assert img.pixel_size_A == pytest.approx(0.2, rel=1e-6)


def test_imagej_tif_stack_calibration_is_read(tmp_path):
    p = tmp_path / "stack.tif"
    data = np.stack([A] * 3)
    tifffile.imwrite(
        p, data, imagej=True, resolution=(50.0, 50.0), metadata={"unit": "nm", "axes": "TYX"}
    )
    s = ps.load(p)
    assert s.data.shape == (3, 30, 40)
    assert s.pixel_size_A == pytest.approx(0.2, rel=1e-6)


def test_ome_tif_calibration_is_read(tmp_path):
    p = tmp_path / "img.ome.tif"
    md = {"axes": "YX", "PhysicalSizeX": 0.02, "PhysicalSizeXUnit": "nm"}
    md |= {"PhysicalSizeY": 0.02, "PhysicalSizeYUnit": "nm"}
    tifffile.imwrite(p, A, ome=True, metadata=md)
    assert ps.load(p).pixel_size_A == pytest.approx(0.2, rel=1e-6)


def test_non_square_pixels_are_refused_not_silently_squared(tmp_path):
    p = tmp_path / "aniso.tif"
    tifffile.imwrite(p, A, imagej=True, resolution=(50.0, 25.0), metadata={"unit": "nm"})
    with pytest.raises(CalibrationError, match="non-square pixels.*0.2 Å in x.*0.4 Å in y"):
        ps.load(p)
    # the user can still take responsibility for one size
    assert ps.load(p, pixel_size=0.2).pixel_size_A == 0.2


def test_uncalibrated_imagej_tif_still_refused(tmp_path):
    p = tmp_path / "plain.tif"
    tifffile.imwrite(p, A, imagej=True)
    with pytest.raises(CalibrationError, match="pixel_size"):
        ps.load(p)


def _hspy(path, data, axes):
    from rsciio.hspy import file_writer

    file_writer(
        str(path),
        {
            "data": data,
            "axes": axes,
            "metadata": {"General": {"title": "HAADF"}, "Signal": {"signal_type": ""}},
            "original_metadata": {},
            "tmp_parameters": {},
            "attributes": {"_lazy": False},
            "package_info": {"name": "hyperspy", "version": "2.0"},
            "learning_results": {},
            "models": {},
        },
    )


def _sig_axes(scale_y=0.02, scale_x=0.02):
    return [
        {"name": "y", "size": 30, "scale": scale_y, "offset": 0, "units": "nm", "navigate": False},
        {"name": "x", "size": 40, "scale": scale_x, "offset": 0, "units": "nm", "navigate": False},
    ]


@pytest.mark.parametrize(
    ("units", "scale", "offset", "attr", "expected"),
    [
        ("µs", 200.0, 0.0, "time_s", [0, 2e-4, 4e-4, 6e-4]),
        ("h", 0.5, 0.0, "time_s", [0, 1800, 3600, 5400]),
        ("rad", np.pi / 12, -np.pi / 6, "angles_deg", [-30, -15, 0, 15]),
    ],
)
def test_hspy_navigation_units_are_converted(tmp_path, units, scale, offset, attr, expected):
    nav = {"name": "n", "size": 4, "scale": scale, "offset": offset, "units": units}
    p = tmp_path / "s.hspy"
    _hspy(p, np.stack([A] * 4), [{**nav, "navigate": True}, *_sig_axes()])
    s = ps.load(p)
    assert s.pixel_size_A == pytest.approx(0.2)
    np.testing.assert_allclose(getattr(s, attr), expected, atol=1e-9)


def test_hspy_non_square_pixels_refused(tmp_path):
    p = tmp_path / "a.hspy"
    _hspy(p, A, _sig_axes(scale_y=0.03))
    with pytest.raises(CalibrationError, match="non-square"):
        ps.load(p)


def test_mrc_non_square_pixels_refused(tmp_path):
    import mrcfile

    p = tmp_path / "a.mrc"
    with mrcfile.new(p) as m:
        m.set_data(np.stack([A] * 3))
        m.voxel_size = (2.0, 3.0, 2.0)
    with pytest.raises(CalibrationError, match="non-square pixels.*2 Å in x.*3 Å in y"):
        ps.load(p)
    assert ps.load(p, pixel_size=2.0).pixel_size_A == 2.0


@pytest.mark.parametrize(("tunit", "factor"), [(None, 1.0), ("ms", 1e-3), ("min", 60.0)])
def test_imagej_stack_frame_interval_gives_times(tmp_path, tunit, factor):
    p = tmp_path / "series.tif"
    md = {"unit": "nm", "axes": "TYX", "finterval": 0.5}
    if tunit is not None:
        md["tunit"] = tunit
    tifffile.imwrite(p, np.stack([A] * 4), imagej=True, resolution=(50.0, 50.0), metadata=md)
    s = ps.load(p)
    np.testing.assert_allclose(s.time_s, 0.5 * factor * np.arange(4))


@pytest.mark.parametrize("ome", [False, True])
def test_channel_stack_tif_is_not_read_as_a_series(tmp_path, ome):
    from perovstem.errors import DataError

    p = tmp_path / ("c.ome.tif" if ome else "c.tif")
    data = np.stack([A] * 3)
    if ome:
        tifffile.imwrite(p, data, ome=True, metadata={"axes": "CYX"})
    else:
        tifffile.imwrite(
            p, data, imagej=True, resolution=(50.0, 50.0), metadata={"unit": "nm", "axes": "CYX"}
        )
    with pytest.raises(DataError, match="3 channels"):
        ps.load(p, pixel_size=0.2)


@pytest.mark.parametrize("n", [3, 4, 5])
@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
def test_small_tif_stack_without_metadata_is_a_series_not_rgb(tmp_path, n, dtype):
    # tifffile tags a plain (3 | 4, M, N) array as RGB(A) with separate sample planes
    p = tmp_path / f"stack{n}.tif"
    data = (np.random.default_rng(n).random((n, 30, 40)) * 1000).astype(dtype)
    tifffile.imwrite(p, data, metadata=None)
    s = ps.load(p, pixel_size=0.2)
    assert s.data.shape == (n, 30, 40)
    np.testing.assert_array_equal(np.asarray(s.data), data.astype(np.asarray(s.data).dtype))


@pytest.mark.parametrize("planar", ["contig", "separate"])
def test_rgb_colour_tif_is_refused_as_colour(tmp_path, planar):
    from perovstem.errors import DataError

    p = tmp_path / "colour.tif"
    rgb = (np.random.default_rng(0).random((30, 40, 3)) * 255).astype(np.uint8)
    if planar == "separate":
        rgb = np.moveaxis(rgb, -1, 0)
    tifffile.imwrite(p, rgb, photometric="rgb", planarconfig=planar)
    with pytest.raises(DataError, match="RGB colour image"):
        ps.load(p, pixel_size=0.2)
