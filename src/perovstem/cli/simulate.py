"""``perovstem simulate ...``: ground-truth data from :mod:`perovstem.simulate`.

The sub-app :data:`simulate_app` is registered on the main app as ``simulate``; other modules
add their commands to it (``series``, ``tilt``) with ``@simulate_app.command()``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from perovstem.cli._common import (
    MAX_DOSE_E_PER_A2,
    check_at_most,
    data_stem,
    detector_pair,
    examples,
)
from perovstem.cli.main import app

simulate_app = typer.Typer(
    name="simulate",
    help="Simulate nanocrystals, HAADF images, in-situ series and tilt series with ground truth.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(simulate_app, name="simulate")


#: Python parameters of the crystal and its Pb clusters -> the options of `simulate image`
CRYSTAL_FLAGS = {
    "shape": "--shape",
    "edge_A": "--edge-A",
    "thickness_A": "--thickness-A",
    "cd_fraction": "--cd-fraction",
    "mistilt_deg": "--mistilt-deg",
    "site": "--cluster-site",
    "n_atoms": "--pb-cluster",
}
#: ... and of the image (its `shape` is the field in pixels)
IMAGE_FLAGS = {
    "shape": "--size-px",
    "pixel_size_A": "--pixel-size-A",
    "drift_A": "--drift-A",
    "dose_e_per_A2": "--dose-e-per-A2",
    "voltage_kV": "--voltage-kV",
    "detector_mrad": "--detector-mrad",
    "scan_noise_px": "--scan-noise-px",
}


def check_thickness_flag(thickness_A: float | None, shape: str) -> None:
    """Refuse `--thickness-A` without `--shape platelet` in the options' own terms (the
    library's message names `shape='platelet'`); shared by `simulate image` and `series`."""
    if thickness_A is not None and shape != "platelet":
        from perovstem.errors import ParameterError

        raise ParameterError(
            f"`--thickness-A` applies to --shape platelet only, got --thickness-A "
            f"{thickness_A:g} with --shape {shape}"
        )


def _truth_path(out: Path, truth: Path | None) -> Path:
    if truth is not None:
        return truth
    return out.with_name(data_stem(out) + "_truth.parquet")


@simulate_app.command(
    "image",
    epilog=examples(
        "perovstem simulate image -o nc.tif --edge-A 40 --dose-e-per-A2 5e4 --seed 1",
    ),
)
def image(
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Image file (.tif, .npz, .mrc, .zarr, .hspy). Missing parent folders are created.",
    ),
    truth: Path = typer.Option(
        None, "--truth", help="Truth table (.parquet/.csv); default <out>_truth.parquet."
    ),
    edge_A: float = typer.Option(80.0, "--edge-A", help="NC edge length, Å."),
    shape: str = typer.Option("cube", "--shape", help="cube | cuboid | platelet."),
    thickness_A: float = typer.Option(
        None, "--thickness-A", help="Platelet thickness, Å (default 30)."
    ),
    phase: str = typer.Option("cubic", "--phase", help="cubic | orthorhombic."),
    termination: str = typer.Option("CsBr", "--termination", help="CsBr | PbBr2."),
    cd_fraction: float = typer.Option(0.0, "--cd-fraction", help="Cd fraction x on Pb sites."),
    br_vacancy_fraction: float = typer.Option(0.0, "--br-vacancies", help="Br vacancy fraction."),
    cs_vacancy_fraction: float = typer.Option(0.0, "--cs-vacancies", help="Cs vacancy fraction."),
    pb_vacancy_fraction: float = typer.Option(0.0, "--pb-vacancies", help="Pb vacancy fraction."),
    zone_axis: str = typer.Option("001", "--zone-axis", help="001 | 011 | 111 (pseudo-cubic)."),
    mistilt_deg: float = typer.Option(0.0, "--mistilt-deg", help="Mistilt from the zone axis, °."),
    pb_cluster: list[int] = typer.Option(
        [], "--pb-cluster", help="Attach an fcc Pb cluster of N atoms (repeatable)."
    ),
    cluster_site: str = typer.Option("corner", "--cluster-site", help="corner | edge | face."),
    pixel_size_A: float = typer.Option(0.25, "--pixel-size-A", help="Pixel size, Å."),
    size: int = typer.Option(
        None, "--size-px", help="Square image size, px (default: fit the NC)."
    ),
    dose: float = typer.Option(1e4, "--dose-e-per-A2", help="Electron dose, e⁻/Å²."),
    voltage_kV: float = typer.Option(300.0, "--voltage-kV", help="300 or 200 kV."),
    detector_mrad: str = typer.Option(
        "65,200", "--detector-mrad", help="INNER,OUTER annular detector, mrad: 65,200 or 65,131."
    ),
    gain: float = typer.Option(1.0, "--gain", help="Detector counts per electron."),
    offset: float = typer.Option(0.0, "--offset", help="Detector offset, counts."),
    scan_noise_px: float = typer.Option(0.0, "--scan-noise-px", help="Line jitter rms, px."),
    drift_A: tuple[float, float] = typer.Option((0.0, 0.0), "--drift-A", help="Drift dx dy, Å."),
    no_noise: bool = typer.Option(False, "--no-noise", help="Noise-free expectation image."),
    seed: int = typer.Option(None, "--seed", min=0, help="Random seed (reproducible output)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing image."),
) -> None:
    """Simulate a HAADF-STEM image of a CsPbBr3 nanocrystal; writes it and its truth table."""
    import numpy as np

    from perovstem.cli._common import check_outputs, flag_names
    from perovstem.io import save_image, save_table
    from perovstem.io.write import IMAGE_SUFFIXES, TABLE_SUFFIXES
    from perovstem.simulate import add_pb_cluster, haadf_image, nanocrystal
    from perovstem.simulate.haadf import check_frame_shape
    from perovstem.simulate.structures import composition

    truth_path = _truth_path(out, truth)
    # both before any work: the truth table is an output too
    check_outputs(
        out,
        truth_path,
        overwrite=overwrite,
        suffixes={"--out": (IMAGE_SUFFIXES, out), "--truth": (TABLE_SUFFIXES, truth_path)},
    )
    check_thickness_flag(thickness_A, shape)
    if size is not None:  # before building the crystal
        check_frame_shape((size, size), pixel_size_A, name="--size-px")
    for n in pb_cluster:  # named by its flag, before building the crystal
        if n < 1:
            from perovstem.errors import ParameterError

            raise ParameterError(f"`--pb-cluster` must be a number of atoms >= 1, got {n}")
    check_at_most(
        "--dose-e-per-A2", dose, MAX_DOSE_E_PER_A2, "e⁻/Å²", "beyond any HAADF-STEM image"
    )
    rng = np.random.default_rng(seed)
    with flag_names(CRYSTAL_FLAGS):  # (`site` named the Python parameter of --cluster-site)
        atoms = nanocrystal(
            edge_A,
            shape=shape,
            phase=phase,
            termination=termination,
            cd_fraction=cd_fraction,
            br_vacancy_fraction=br_vacancy_fraction,
            cs_vacancy_fraction=cs_vacancy_fraction,
            pb_vacancy_fraction=pb_vacancy_fraction,
            zone_axis=zone_axis,
            mistilt_deg=mistilt_deg,
            thickness_A=thickness_A,
            rng=rng,
        )
        for n in pb_cluster:
            atoms = add_pb_cluster(atoms, n, site=cluster_site, rng=rng)
    with flag_names(IMAGE_FLAGS):
        img, table = haadf_image(
            atoms,
            pixel_size_A=pixel_size_A,
            shape=None if size is None else (size, size),
            dose_e_per_A2=dose,
            voltage_kV=voltage_kV,
            detector_mrad=detector_pair(detector_mrad),
            gain=gain,
            offset=offset,
            scan_noise_px=scan_noise_px,
            drift_A=drift_A,
            noise=not no_noise,
            rng=rng,
        )
    table.attrs["structure"] = {
        "edge_A": edge_A,
        "shape": shape,
        "phase": phase,
        "termination": termination,
        "cd_fraction": cd_fraction,
        # Cd is placed at random on the B sites: x = 0.1 gave 0.055 on 343 sites
        "cd_fraction_realised": composition(atoms)["cd_fraction"],
        "br_vacancy_fraction": br_vacancy_fraction,
        "cs_vacancy_fraction": cs_vacancy_fraction,
        "pb_vacancy_fraction": pb_vacancy_fraction,
        "zone_axis": zone_axis,
        "mistilt_deg": mistilt_deg,
        "pb_clusters": list(pb_cluster),
        "seed": seed,
        "n_atoms_total": len(atoms),
    }
    save_image(img, out, overwrite=overwrite)
    save_table(table, truth_path)
    typer.echo(f"image: {out} ({img.shape[0]}x{img.shape[1]} px, {len(table)} columns)")
    if table.attrs.get("n_columns_outside_field", 0):
        field = img.shape[1] * pixel_size_A
        typer.echo(
            f"note: the {field:.1f} Å field shows {len(table)} of "
            f"{len(table) + table.attrs['n_columns_outside_field']} columns of the "
            f"{edge_A:g} Å crystal (the truth table holds those in the field; "
            + (
                f"the drift of {np.hypot(*drift_A):.3g} Å over the frame moves the crystal out "
                "of it)"
                if np.hypot(*drift_A) > 0
                else "leave out --size-px to fit the crystal)"
            )
        )
    typer.echo(f"truth: {truth_path}")
