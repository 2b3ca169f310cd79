#!/usr/bin/env python3
"""Write synthetic DICOM files with pydicom (tests and ``tools/bench_build.py``).

Each file is a complete Part 10 file (128-byte preamble, ``DICM``, meta header) holding one
image, with made-up patient identifiers (:data:`PHI`) so that tests can check that none of
them reaches a build. JPEG 2000 files are encoded with pylibjpeg-openjpeg.

Usage:
    python tools/make_dicom.py OUT_FOLDER --count 10 --side 1024 [--j2k]
"""

from __future__ import annotations

import argparse
import os
from typing import Sequence

import numpy as np

#: The made-up identifiers every generated file carries (none may appear in a build's output).
PHI = {"PatientName": "Doe^Jane^Quinn", "PatientID": "PID-8675309", "PatientBirthDate": "19610412",
       "StudyDate": "20240229", "SeriesDate": "20240229", "AcquisitionDate": "20240229",
       "InstitutionName": "Saint Elsewhere Hospital", "AccessionNumber": "ACC77123",
       "ReferringPhysicianName": "House^Gregory"}

_CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
_SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"


def dicom_dataset(pixels: np.ndarray, name: str = "x", *, photometric: str = "MONOCHROME2",
                  bits_stored: int | None = None, modality: str = "CR", view_position: str | None = "PA",
                  window: tuple[float, float] | None = None, rescale: tuple[float, float] | None = None,
                  voi_lut: Sequence[int] | None = None, voi_lut_first: int = 0, voi_lut_bits: int = 8):
    """A single-frame image dataset holding ``pixels`` (HxW uint8/uint16/int16, or HxWx3 uint8 RGB).

    Args:
        pixels: the stored values.
        name: makes the UIDs (deterministic per name).
        photometric: Photometric Interpretation.
        bits_stored: Bits Stored (default: all bits of the dtype).
        modality, view_position: Modality and View Position (None leaves View Position out).
        window: (center, width) or None.
        rescale: (slope, intercept) or None.
        voi_lut: VOI LUT entries (a VOI LUT Sequence of one item), first mapped value
            ``voi_lut_first``, ``voi_lut_bits`` bits per entry.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    colour = pixels.ndim == 3
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _SC_STORAGE if colour else _CR_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[name])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    for k, v in PHI.items():
        setattr(ds, k, v)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[name, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[name, "series"])
    ds.Modality = modality
    if view_position is not None:
        ds.ViewPosition = view_position
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored = bits, bits_stored or bits
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if voi_lut is not None:
        item = Dataset()
        item.LUTDescriptor = [len(voi_lut), voi_lut_first, voi_lut_bits]
        item.add_new(0x00283006, "OW", np.asarray(voi_lut, "<u2").tobytes())  # LUT Data
        ds.VOILUTSequence = [item]
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def write(path: str, ds, j2k: bool = False) -> str:
    """Write ``ds`` as a Part 10 file (JPEG 2000 lossless when ``j2k``); returns ``path``."""
    from pydicom import dcmwrite
    from pydicom.uid import JPEG2000Lossless

    if j2k:
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    dcmwrite(path, ds, enforce_file_format=True)
    return path


def xray16(seed: int, side: int, bits: int = 12) -> np.ndarray:
    """A deterministic fake chest X-ray, ``side`` x ``side`` uint16 using ``bits`` bits."""
    r = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    lungs = np.exp(-(((x - 0.32) / 0.14) ** 2 + ((y - 0.5) / 0.28) ** 2)) \
        + np.exp(-(((x - 0.68) / 0.14) ** 2 + ((y - 0.5) / 0.28) ** 2))
    ribs = 0.08 * np.sin(y * 60 + r.uniform(0, 6))
    a = 0.75 - 0.45 * lungs + ribs + r.normal(0, 0.02, (side, side))
    top = (1 << bits) - 1
    return np.clip(a * top, 0, top).astype(np.uint16)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--side", type=int, default=1024)
    ap.add_argument("--j2k", action="store_true", help="JPEG 2000 lossless instead of uncompressed")
    a = ap.parse_args(argv)
    for i in range(a.count):
        ds = dicom_dataset(xray16(i, a.side), f"img{i}", bits_stored=12, window=(2048, 4096))
        write(os.path.join(a.out, f"img{i:05d}.dcm"), ds, a.j2k)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
