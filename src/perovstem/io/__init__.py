"""File input/output: the only part of perovstem that touches files.

Reading goes through RosettaSciIO (dm3/dm4, emd, ser/emi, tif, hspy), mrcfile (MRC with FEI
extended headers, SerialEM ``.mdoc``, ``.rawtlt``), numpy and zarr; writing is atomic
(temporary file + rename) and refuses to overwrite a file that was loaded as input.
"""

from perovstem.io._write import atomic_path, atomic_write, protect
from perovstem.io.read import SUPPORTED_SUFFIXES, load
from perovstem.io.statstem import StatSTEMExample, load_statstem, load_statstem_hmm
from perovstem.io.write import (
    read_table,
    read_volume,
    save_figure,
    save_image,
    save_json,
    save_mesh,
    save_table,
    save_volume,
)

__all__ = [
    "load",
    "SUPPORTED_SUFFIXES",
    "save_image",
    "save_table",
    "read_table",
    "save_volume",
    "read_volume",
    "save_mesh",
    "save_json",
    "save_figure",
    "atomic_write",
    "atomic_path",
    "protect",
    "load_statstem",
    "load_statstem_hmm",
    "StatSTEMExample",
]
