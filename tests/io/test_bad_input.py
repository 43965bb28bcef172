"""Bad files give one clear PerovstemError naming the file (and the CLI exits 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import perovstem as ps
from perovstem.cli.main import main
from perovstem.errors import CalibrationError, DataError, FileFormatError, PerovstemError

FORMATS = Path(__file__).resolve().parents[1] / "data" / "formats"


def _truncated_dm3(tmp_path: Path) -> Path:
    data = (FORMATS / "haadf_calibrated.dm3").read_bytes()
    p = tmp_path / "truncated.dm3"
    p.write_bytes(data[: len(data) // 3])
    return p


def _truncated_mrc(tmp_path: Path) -> Path:
    import mrcfile

    src = tmp_path / "ok.mrc"
    with mrcfile.new(src) as m:
        m.set_data(np.zeros((3, 32, 32), np.float32))
        m.voxel_size = 2.0
    p = tmp_path / "truncated.mrc"
    p.write_bytes(src.read_bytes()[: 1024 + 32 * 32 * 4])
    return p


def _cases(tmp_path: Path) -> dict[str, tuple[Path, type, str]]:
    empty = tmp_path / "empty.dm3"
    empty.write_bytes(b"")
    txt = tmp_path / "notes.dm3"
    txt.write_text("this is a text file, not a DigitalMicrograph image\n" * 20)
    folder = tmp_path / "folder.tif"
    folder.mkdir()
    nan = tmp_path / "nan.npz"
    arr = np.ones((8, 8))
    arr[2, 3] = np.nan
    np.savez(nan, obs=arr, dx_angstrom=0.2)
    oned = tmp_path / "line.npz"
    np.savez(oned, obs=np.ones(16), dx_angstrom=0.2)
    undefined = tmp_path / "undefined.tif"
    import tifffile

    tifffile.imwrite(undefined, np.ones((8, 8), np.float32))
    return {
        "empty": (empty, FileFormatError, "empty"),
        "truncated dm3": (_truncated_dm3(tmp_path), FileFormatError, "truncated.dm3"),
        "truncated mrc": (_truncated_mrc(tmp_path), FileFormatError, "truncated"),
        "txt renamed dm3": (txt, FileFormatError, "notes.dm3"),
        "directory": (folder, FileFormatError, "directory"),
        "missing": (tmp_path / "nope.emd", FileFormatError, "no such file"),
        "nan": (nan, DataError, "NaN"),
        "1-D": (oned, DataError, "2-D image or a 3-D stack"),
        "undefined units": (undefined, CalibrationError, "pixel_size"),
        "unknown suffix": (txt.rename(tmp_path / "notes.xyz"), FileFormatError, ".xyz"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "empty",
        "truncated dm3",
        "truncated mrc",
        "txt renamed dm3",
        "directory",
        "missing",
        "nan",
        "1-D",
        "undefined units",
        "unknown suffix",
    ],
)
def test_bad_file_raises_clear_error_and_cli_exits_2(tmp_path, capsys, case):
    path, exc, fragment = _cases(tmp_path)[case]
    with pytest.raises(exc) as info:
        ps.load(path)
    assert isinstance(info.value, PerovstemError)
    assert fragment in str(info.value)
    assert path.name in str(info.value) or case == "unknown suffix"
    capsys.readouterr()
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:")
    assert "Traceback" not in err


def test_bad_pixel_size_parameter(tmp_path):
    p = tmp_path / "x.npz"
    np.savez(p, obs=np.ones((4, 4)), dx_angstrom=0.2)
    with pytest.raises(ps.ParameterError, match="pixel_size.*-1"):
        ps.load(p, pixel_size=-1)
    for bad in (float("nan"), 1e30):  # 1e30 Å was accepted
        with pytest.raises(ps.ParameterError, match="pixel_size"):
            ps.load(p, pixel_size=bad)


def test_data_model_rejects_bad_arrays():
    with pytest.raises(DataError, match="2-D"):
        ps.Image(np.ones(5), 1.0)
    with pytest.raises(DataError, match="empty"):
        ps.Image(np.ones((0, 5)), 1.0)
    with pytest.raises(ps.ParameterError, match="pixel_size_A"):
        ps.Image(np.ones((4, 4)), 0.0)
    with pytest.raises(ps.ParameterError, match="angles_deg"):
        ps.TiltSeries(np.ones((3, 4, 4)), [0, 10], 1.0)
    with pytest.raises(ps.ParameterError, match="duplicate"):
        ps.TiltSeries(np.ones((3, 4, 4)), [0, 10, 10], 1.0)
    with pytest.raises(ps.ParameterError, match="dose_e_per_A2"):
        ps.Series(np.ones((2, 4, 4)), 1.0, dose_e_per_A2=[-1, 1])


def _truncated_tif_stack(tmp_path: Path) -> Path:
    import tifffile

    src = tmp_path / "stack.tif"
    tifffile.imwrite(src, np.random.default_rng(0).poisson(50, (5, 64, 64)).astype(np.float32))
    p = tmp_path / "truncated_stack.tif"
    p.write_bytes(src.read_bytes()[:3000])  # the header and part of the first frame
    return p


def test_truncated_tif_stack_read_lazily_names_the_file(tmp_path, capsys):
    # RosettaSciIO opens a tif stack lazily without reading its data: the cut-off data
    # block must still be reported at load time, not as a numpy/mmap error later on
    p = _truncated_tif_stack(tmp_path)
    with pytest.raises(FileFormatError, match="truncated_stack.tif.*truncated or corrupted"):
        ps.load(p, lazy=True, pixel_size=0.5)
    capsys.readouterr()
    assert main(["insitu", str(p), "--pixel-size-A", "0.5", "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "truncated_stack.tif" in err
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_truncated_perovstem_tif_names_the_file(tmp_path):
    src = ps.io.save_image(ps.Series(np.ones((4, 64, 64), np.float32), 0.5), tmp_path / "s.tif")
    p = tmp_path / "cut.tif"
    p.write_bytes(src.read_bytes()[:-20000])
    with pytest.raises(FileFormatError, match="cut.tif.*truncated or corrupted"):
        ps.load(p)


def test_unreadable_lazy_frames_raise_data_error_naming_the_source():
    import dask.array as da

    from perovstem.insitu._frames import iter_frames

    def bad_block(x):
        raise OSError("mmap length is greater than file size")

    st = da.zeros((6, 8, 8), chunks=(2, 8, 8)).map_blocks(bad_block, dtype=float)
    s = ps.Series(st, 0.5, metadata={"source": "run7.emd"})
    with pytest.raises(DataError, match=r"'run7.emd': frames 0-1 cannot be read.*OSError"):
        list(iter_frames(s))


def test_unwritable_output_folder_names_the_path(tmp_path, capsys, monkeypatch):
    # chmod does not stop root (CI containers), so make the temporary file creation fail
    # the way a read-only folder does
    import tempfile

    src = ps.io.save_image(ps.Image(np.ones((16, 16)), 0.5), tmp_path / "in.npz")
    out = tmp_path / "ro" / "out.npz"
    out.parent.mkdir()

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(FileFormatError, match=r"ro/out.npz.*not writable.*Permission denied"):
        ps.io.save_image(ps.Image(np.ones((16, 16)), 0.5), out)
    capsys.readouterr()
    assert main(["convert", str(src), str(out)]) == 2
    err = capsys.readouterr().err
    assert "not writable" in err and "Traceback" not in err
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("case", ["text", "image", "cut", "flat"])
def test_read_volume_bad_files_name_the_file(tmp_path, case):
    # were a numpy pickle ValueError / KeyError('voxel_size_A') traceback
    from perovstem.io import read_volume, save_volume

    p = tmp_path / f"{case}.npz"
    if case == "text":
        p.write_text("not a volume\n" * 5)
    elif case == "image":
        ps.io.save_image(ps.Image(np.ones((8, 8)), 0.5), p)
    elif case == "cut":
        good = save_volume(np.ones((8, 8, 8)), tmp_path / "good.npz", voxel_size_A=2.0)
        p.write_bytes(Path(good).read_bytes()[:200])
    else:
        save_volume(np.ones((8, 8, 8)), tmp_path / "v.mrc", voxel_size_A=2.0)
        ps.io.save_image(ps.Image(np.ones((8, 8), np.float32), 0.5), tmp_path / "flat.mrc")
        p = tmp_path / "flat.mrc"
    with pytest.raises(FileFormatError, match=rf"{p.name}.*(not a volume|3-D)"):
        read_volume(p)


def test_save_mesh_refuses_faces_beyond_the_vertices(tmp_path):
    v = np.zeros((3, 3))
    with pytest.raises(DataError, match=r"faces index vertices 0…5, but there are 3"):
        ps.io.save_mesh(v, [[0, 1, 5]], tmp_path / "m.ply")
    with pytest.raises(DataError, match="non-finite"):
        ps.io.save_mesh(np.full((3, 3), np.nan), [[0, 1, 2]], tmp_path / "m.ply")
    assert not (tmp_path / "m.ply").exists()


def test_save_image_to_a_directory_or_without_extension_says_so(tmp_path):
    img = ps.Image(np.zeros((8, 8)), 0.5)
    (tmp_path / "d").mkdir()
    with pytest.raises(FileFormatError, match="is a directory"):
        ps.io.save_image(img, tmp_path / "d")
    with pytest.raises(FileFormatError, match="no file extension"):
        ps.io.save_image(img, tmp_path / "noext")


def _tiff_bytes(tmp_path: Path) -> bytes:
    import tifffile

    p = tmp_path / "src.tif"
    tifffile.imwrite(p, np.ones((8, 8), np.float32))
    return p.read_bytes()


def _hdf5_bytes(tmp_path: Path) -> bytes:
    import h5py

    p = tmp_path / "src.h5"
    with h5py.File(p, "w") as f:
        f["data"] = np.ones((4, 4))
    return p.read_bytes()


@pytest.mark.parametrize(
    ("content", "suffix", "family", "rename"),
    [
        ("dm3", ".emd", "a DigitalMicrograph file, not .emd", ".dm3 or .dm4"),
        ("dm3", ".tif", "a DigitalMicrograph file, not .tif", ".dm3 or .dm4"),
        ("tif", ".dm4", "a TIFF file, not .dm4", ".tif or .tiff"),
        ("tif", ".mrc", "a TIFF file, not .mrc", ".tif or .tiff"),
        ("hdf5", ".dm3", "an HDF5 (Velox emd or HyperSpy hspy) file, not .dm3", ".emd or .hspy"),
        ("ser", ".hspy", "a TIA ser file, not .hspy", ".ser"),
    ],
)
def test_wrong_extension_names_what_the_content_is(
    tmp_path, capsys, content, suffix, family, rename
):
    """A file renamed to another format's extension said only "not a readable emd file
    (OSError: ... file signature not found)", as if it were damaged."""
    data = {
        "dm3": lambda: (FORMATS / "haadf_calibrated.dm3").read_bytes(),
        "tif": lambda: _tiff_bytes(tmp_path),
        "hdf5": lambda: _hdf5_bytes(tmp_path),
        "ser": lambda: (FORMATS / "128x128-TEM_search_1.ser").read_bytes(),
    }[content]()
    p = tmp_path / f"renamed{suffix}"
    p.write_bytes(data)
    with pytest.raises(FileFormatError) as info:
        ps.load(p)
    msg = str(info.value)
    assert msg.startswith(f"{str(p)!r}: ") and f"its content is {family}: wrong extension?" in msg
    assert f"(rename it to {rename}" in msg
    assert main(["info", str(p)]) == 2
    assert "wrong extension?" in capsys.readouterr().err


def test_a_damaged_file_with_the_right_extension_gets_no_extension_hint(tmp_path):
    p = tmp_path / "cut.dm3"
    p.write_bytes((FORMATS / "haadf_calibrated.dm3").read_bytes()[:300])
    with pytest.raises(FileFormatError) as info:
        ps.load(p)
    assert "wrong extension" not in str(info.value)


def test_damaged_tif_header_prints_one_error_line(tmp_path):
    """tifffile logged "<TiffTag.fromfile> raised TiffFileError(...)" four times on stderr
    before perovstem's own one-line error."""
    import subprocess
    import sys

    p = tmp_path / "cut.tif"
    p.write_bytes(_tiff_bytes(tmp_path)[:200])
    r = subprocess.run(
        [sys.executable, "-m", "perovstem", "info", str(p)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "cut.tif" in lines[0], r.stderr


def test_unreadable_file_says_permission_denied(tmp_path, monkeypatch, capsys):
    """A file this user may not read was reported as "not a readable dm3 file
    (PermissionError ...)", a format problem.  (Root reads any file: the permission is
    simulated here; the next test uses a real one where the user is not root.)"""
    import os

    p = tmp_path / "locked.dm3"
    p.write_bytes((FORMATS / "haadf_calibrated.dm3").read_bytes())
    real = os.access
    monkeypatch.setattr(
        "perovstem.io.read.os.access",
        lambda path, mode, **kw: False if Path(path) == p else real(path, mode, **kw),
    )
    with pytest.raises(FileFormatError, match="permission denied"):
        ps.load(p)
    assert main(["info", str(p)]) == 2  # the command line checks it itself (click)
    err = capsys.readouterr().err
    assert "locked.dm3" in err and "is not readable" in err and "Traceback" not in err


@pytest.mark.skipif(
    not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() == 0,
    reason="root reads any file",
)
def test_unreadable_file_says_permission_denied_for_real(tmp_path):
    p = tmp_path / "locked.dm3"
    p.write_bytes((FORMATS / "haadf_calibrated.dm3").read_bytes())
    p.chmod(0)
    with pytest.raises(FileFormatError, match="permission denied"):
        ps.load(p)


def test_mrc_volume_of_another_program_needs_cubic_voxels_of_a_known_size(tmp_path, capsys):
    # an MRC volume with voxel 0 / 1 Å ("not set") was read at 1 Å, and one with 2 × 2 × 4 Å
    # voxels as 2 Å cubes, silently (volumes, areas and facet normals off)
    import mrcfile

    from perovstem.cli.main import main
    from perovstem.errors import CalibrationError
    from perovstem.io import read_volume, save_volume

    v = np.zeros((24, 24, 24), np.float32)
    v[6:18, 6:18, 6:18] = 1.0
    for name, size in (("unset.mrc", 0.0), ("one.mrc", 1.0), ("aniso.mrc", (2.0, 2.0, 4.0))):
        with mrcfile.new(tmp_path / name) as m:
            m.set_data(v)
            m.voxel_size = size
    for name, what in (("unset.mrc", "no usable voxel size"), ("one.mrc", "no usable voxel")):
        with pytest.raises(CalibrationError, match=rf"{name}.*{what}.*--pixel-size-A"):
            read_volume(tmp_path / name)
    with pytest.raises(CalibrationError, match=r"aniso.mrc.*2 × 2 × 4 Å.*not cubes"):
        read_volume(tmp_path / "aniso.mrc")
    assert read_volume(tmp_path / "aniso.mrc", voxel_size_A=3.0)[1] == 3.0  # given: used
    # perovstem's own 1 Å volume is trusted (it marks the voxel size as set)
    assert read_volume(save_volume(v, tmp_path / "ours.mrc", voxel_size_A=1.0))[1] == 1.0
    out = tmp_path / "f.parquet"
    argv = ["tomo", "facets", str(tmp_path / "unset.mrc"), "--volume", "-o", str(out)]
    assert main(argv) == 2
    assert "unset.mrc" in capsys.readouterr().err and not out.exists()
    assert main([*argv, "--pixel-size-A", "2.5"]) == 0
    from perovstem.io import read_table

    assert read_table(out).attrs["volume_A3"] == pytest.approx(12**3 * 2.5**3, rel=0.15)


def test_tif_volume_of_another_program(tmp_path):
    # a tif stack from ImageJ/Fiji (or without any calibration) was "not a volume written
    # by perovstem (KeyError ...)": now read with its ImageJ calibration, or refused naming
    # the option when it has none or its voxels are not cubes
    import tifffile

    from perovstem.errors import CalibrationError
    from perovstem.io import read_volume

    v = np.zeros((20, 24, 24), np.float32)
    v[5:15, 6:18, 6:18] = 1.0
    ij = {"unit": "nm", "axes": "ZYX"}
    tifffile.imwrite(tmp_path / "plain.tif", v)
    res = (1 / 0.25, 1 / 0.25)
    tifffile.imwrite(
        tmp_path / "ij.tif", v, imagej=True, resolution=res, metadata=ij | {"spacing": 0.25}
    )
    tifffile.imwrite(
        tmp_path / "z.tif", v, imagej=True, resolution=res, metadata=ij | {"spacing": 0.5}
    )
    vol, voxel = read_volume(tmp_path / "ij.tif")
    assert voxel == pytest.approx(2.5) and vol.shape == v.shape and vol.sum() == v.sum()
    with pytest.raises(CalibrationError, match=r"plain.tif.*no usable voxel size.*--pixel-size-A"):
        read_volume(tmp_path / "plain.tif")
    with pytest.raises(CalibrationError, match=r"z.tif.*2.5 × 2.5 × 5 Å.*not cubes"):
        read_volume(tmp_path / "z.tif")
    assert read_volume(tmp_path / "plain.tif", voxel_size_A=2.0)[1] == 2.0


def test_frame_in_another_format_is_warned_not_dropped_silently(tmp_path):
    """A folder of frame_000-002.tif and frame_003.npy read as 3 frames without a word;
    the .npy (named as the frames) is now named in a warning.  Companions that are not
    frames (notes.txt) and the frames themselves raise nothing."""
    import warnings

    import tifffile

    for i in range(3):
        tifffile.imwrite(tmp_path / f"frame_{i:03d}.tif", np.full((16, 16), i, np.float32))
    (tmp_path / "notes.txt").write_text("session notes")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ps.load(tmp_path, pixel_size=0.5).data.shape == (3, 16, 16)
    np.save(tmp_path / "frame_003.npy", np.zeros((16, 16)))
    with pytest.warns(UserWarning, match=r"1 file\(s\) named as the frames .*'frame_003\.npy'"):
        s = ps.load(tmp_path, pixel_size=0.5)
    assert s.data.shape == (3, 16, 16)


def test_bad_tilt_angle_and_nan_frame_are_located(tmp_path):
    """A NaN among 71 tilt angles printed all 71; a NaN frame of a stack said only how many
    values: both now name the index."""
    ang = np.arange(-70.0, 71.0, 2.0)
    ang[5] = np.nan
    with pytest.raises(ps.ParameterError, match=r"1 of 71 are not \(\[5\] nan"):
        ps.TiltSeries(np.ones((71, 8, 8), np.float32), ang, 2.0)
    stack = np.ones((6, 8, 8), np.float32)
    stack[3, 2, 2] = np.nan
    p = tmp_path / "stack.npz"
    from perovstem.io import save_image

    save_image(ps.Series(np.ones((6, 8, 8), np.float32), 1.0), p, overwrite=True)
    z = dict(np.load(p))
    z["data"] = stack
    np.savez(p, **z)
    with pytest.raises(DataError, match=r"in 1 of 6 frames \(frame\(s\) 3;"):
        ps.load(p)


def test_pixel_size_replacing_the_files_is_warned(tmp_path):
    """`convert --pixel-size-A 0.5` of a 0.25 Å file wrote a 0.5 Å file without a word
    (help: "if the input has none").  Replacing a calibration is now warned about; the same
    value, or a file without one, is not."""
    import warnings

    from perovstem.io import save_image

    p = tmp_path / "img.tif"
    save_image(ps.Image(np.ones((16, 16), np.float32), 0.25), p)
    with pytest.warns(
        UserWarning, match=r"pixel size given \(0\.5 Å\) replaces the file's \(0\.25"
    ):
        img = ps.load(p, pixel_size=0.5)
    assert img.pixel_size_A == 0.5 and img.metadata["pixel_size_file_A"] == 0.25
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ps.load(p, pixel_size=0.25).pixel_size_A == 0.25
    # a folder of frames says it once, not once per frame (nor again when a lazy frame is
    # read: dask reads them in threads, where a warnings filter of one thread was undone by
    # another's; 37 of 60 such reads of 16 frames let a frame's warning through)
    folder = tmp_path / "frames"
    for i in range(16):
        save_image(ps.Image(np.full((16, 16), i, np.float32), 0.25), folder / f"f_{i:02d}.tif")
    for _ in range(10):
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            s = ps.load(folder, pixel_size=0.5, lazy=True)
            np.asarray(s.data)
        said = [str(w.message) for w in rec if "replaces" in str(w.message)]
        assert len(said) == 1 and "replaces the frames' (0.25 Å)" in said[0], said
