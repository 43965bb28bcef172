"""``perovstem atoms fit`` end to end, the overlay plot and HyperSpy markers."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from perovstem.cli.main import main


@pytest.fixture(scope="module")
def sim_image(tmp_path_factory):
    import perovstem.simulate as sim
    from perovstem.io import save_image

    atoms = sim.nanocrystal(30.0, rng=0)
    img, truth = sim.haadf_image(atoms, pixel_size_A=0.3, dose_e_per_A2=2e4, rng=2)
    p = tmp_path_factory.mktemp("img") / "nc.npz"
    save_image(img, p)
    return p, img, truth


def test_cli_fit_with_cell(sim_image, tmp_path):
    from perovstem.io import read_table

    path, img, truth = sim_image
    out = tmp_path / "cols.parquet"
    rc = main(
        [
            "atoms",
            "fit",
            str(path),
            "--cell",
            "cspbbr3",
            "--out",
            str(out),
            "--normalize",
            "--noise",
            "poisson",
        ]
    )
    assert rc == 0
    df = read_table(out)
    assert (tmp_path / "cols.png").stat().st_size > 10_000
    assert set(df.type) == {"PbBr", "Br", "Cs"}
    assert len(df) == len(truth)
    assert df.attrs["noise"] == "poisson"
    # normalised: PbBr cross-sections in Å² close to the simulator's (Gaussian core volume)
    pb = df[df.type == "PbBr"].scs.median()
    tr = truth[truth.type == "PbBr"].scs_A2.median()
    assert 0.85 < pb / tr < 1.05
    # existing output is refused without --overwrite (exit 2, one line)
    assert main(["atoms", "fit", str(path), "--cell", "cspbbr3", "--out", str(out)]) == 2


def test_cli_bad_input(sim_image, tmp_path):
    path, _, _ = sim_image
    assert (
        main(
            [
                "atoms",
                "fit",
                str(path),
                "--cell",
                "perovskite",
                "--out",
                str(tmp_path / "a.parquet"),
            ]
        )
        == 2
    )
    assert main(["atoms", "fit", str(tmp_path / "missing.npz")]) == 2
    assert (
        main(
            [
                "atoms",
                "fit",
                str(path),
                "--cell",
                "cspbbr3",
                "--width",
                "bogus",
                "--out",
                str(tmp_path / "b.parquet"),
            ]
        )
        == 2
    )
    # --frame on a single image was silently ignored (exit 0)
    cmd = ["atoms", "fit", str(path), "--frame", "3", "--out", str(tmp_path / "c.parquet")]
    assert main(cmd) == 2
    assert not (tmp_path / "c.parquet").exists()


def test_plots_and_markers(sim_image):
    from perovstem.atoms import find_columns, fit_columns, to_hyperspy
    from perovstem.atoms.cell import cspbbr3_001_cell
    from perovstem.plot.atoms import plot_columns, plot_scs_histogram, plot_strain_map

    _, img, _ = sim_image
    cols = find_columns(img, cell=cspbbr3_001_cell())
    df = fit_columns(img, cols)
    ax = plot_columns(img, df, show_errors=True)
    assert len(ax.collections) == 3
    ax2 = plot_scs_histogram(df)
    assert len(ax2.patches) > 0
    from perovstem.atoms import fit_lattice, lattice_strain

    st = lattice_strain(fit_lattice(df, cspbbr3_001_cell()))
    assert np.isfinite(st.eps_xx).sum() > 10
    plot_strain_map(st)
    pytest.importorskip("hyperspy")
    mk = to_hyperspy(df)
    assert len(mk) == 3
    sig = to_hyperspy(df, img)
    assert sig.data.shape == img.shape


def test_cli_fit_two_crystals_says_so(tmp_path, capsys):
    # two crystals turned 30° to each other: every column fitted, each crystal a grain
    from perovstem.io import read_table, save_image

    from .test_find import _two_crystals

    img, truth, _ = _two_crystals(30.0, (62.0, 0.0), seed=1)
    path = tmp_path / "two.npz"
    save_image(img, path)
    out = tmp_path / "cols.parquet"
    assert main(["atoms", "fit", str(path), "--cell", "cspbbr3", "--out", str(out)]) == 0
    assert "in 2 crystals" in " ".join(capsys.readouterr().out.split())
    df = read_table(out)
    assert len(df) == len(truth)
    assert sorted(df["grain"].value_counts().tolist()) == [225, 225]


def test_cli_fit_normalize_takes_the_dose_of_an_image_without_one(sim_image, tmp_path, capsys):
    """A raw image without a recorded dose could not be normalised from the command line
    (the error named the Python parameter, and atoms fit had no dose option).  Now
    --dose-e-per-A2 gives it: the same cross-sections as the file that records it; without
    it the error names the file and the option."""
    from perovstem.io import read_table, save_image

    path, img, _ = sim_image
    bare = tmp_path / "bare.npz"
    save_image(img.replace(dose_e_per_A2=None), bare)
    base = ["atoms", "fit", "--cell", "cspbbr3", "--normalize"]
    assert main([*base[:2], str(bare), *base[2:], "-o", str(tmp_path / "x.parquet")]) == 2
    err = capsys.readouterr().err
    assert "bare.npz" in err and "--dose-e-per-A2" in err, err
    ok = tmp_path / "given.parquet"
    assert main([*base[:2], str(bare), *base[2:], "--dose-e-per-A2", "2e4", "-o", str(ok)]) == 0
    ref = tmp_path / "ref.parquet"
    assert main([*base[:2], str(path), *base[2:], "-o", str(ref)]) == 0
    np.testing.assert_allclose(read_table(ok)["scs"], read_table(ref)["scs"], rtol=1e-9)
    assert main([*base[:2], str(bare), "--cell", "cspbbr3", "--dose-e-per-A2", "2e4", "-o",
                 str(tmp_path / "y.parquet")]) == 2  # fmt: skip
    assert "add --normalize" in capsys.readouterr().err


def test_cli_messages_that_name_what_the_user_gave(sim_image, tmp_path, capsys):
    """Three messages that named the wrong thing: a pixel size too coarse for the cell
    said "`separation_A` must be at least one pixel" (a parameter the user never gave); an
    inverted image was fitted, "70 % of pixels saturated"; an existing output did not name
    --overwrite."""
    from perovstem.io import save_image

    path, img, _ = sim_image
    out = tmp_path / "c.parquet"
    argv = ["atoms", "fit", str(path), "--cell", "cspbbr3", "-o", str(out)]
    assert main([*argv, "--pixel-size-A", "2.5"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "pixel size (2.5 Å) does not resolve the columns" in err and "separation_A" not in err
    neg = tmp_path / "neg.npz"
    save_image(img.replace(data=-img.data), neg)
    assert main(["atoms", "fit", str(neg), "--cell", "cspbbr3", "--normalize", "-o",
                 str(out)]) == 2  # fmt: skip
    assert "no counts above the offset" in capsys.readouterr().err
    assert main(argv) == 0
    assert main(["convert", str(path), str(out.with_suffix(".tif"))]) == 0
    assert main(["convert", str(path), str(out.with_suffix(".tif"))]) == 2
    assert "--overwrite" in capsys.readouterr().err
