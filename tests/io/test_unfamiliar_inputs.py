"""Valid files laid out as instruments write them, which earlier rounds never read (uqa18):
a Velox emd of an EDS acquisition (images beside a spectrum stream), ..."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

import perovstem as ps

A = (np.random.default_rng(2).poisson(200.0, (24, 32))).astype(np.uint16)


def _velox(path, images, *, spectrum_image=False, frame_time=None):
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
                "Optics": {"LastMeasuredScreenCurrent": "5e-11"},
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
