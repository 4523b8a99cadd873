"""`make sample`: write a small synthetic CT series to samples/ so every README example runs as written.

Nothing is downloaded: the phantom (scripts/dev/phantom.py) is a body of soft tissue and fat in air with
bone discs of known size and density, in Hounsfield units, as real DICOM files. Also writes
slice.png, the middle slice's stored values as a 16-bit PNG (what a viewer's raw export looks like),
and chest_cr.dcm, a 2,000 x 2,500 chest radiograph in JPEG Lossless SV1 (~3.2 MB; 10 MB decoded,
more than a Lambda response carries: the viewer fetches its frame as JPEG Lossless).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pydicom.uid import JPEGLosslessSV1

from scripts.dev.phantom import chest_cr_dataset, ct_series, dicom_bytes, stored_png16

SLICES = 5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.dev.sample",
        description=(__doc__ or "").split("\n\n", 1)[0],
    )
    parser.add_argument("folder", nargs="?", default="samples", help="where to write (default: samples)")
    target = Path(parser.parse_args(argv).folder)
    series_dir = target / "series"
    series_dir.mkdir(parents=True, exist_ok=True)
    slices = ct_series(SLICES, size=512)
    for dataset in slices:
        # A synthetic patient, so that DICOMweb searches by patient (README, "DICOMweb") find something.
        dataset.PatientName = "Phantom^Abdomen"
        dataset.PatientID = "PHANTOM-0001"
        number = int(dataset.InstanceNumber)
        # JPEG Lossless, the most common CT compression, for the first slice; the rest uncompressed.
        syntax = JPEGLosslessSV1 if number == 1 else dataset.file_meta.TransferSyntaxUID
        (series_dir / f"slice_{number:03d}.dcm").write_bytes(dicom_bytes(dataset, syntax))
    (target / "slice.png").write_bytes(stored_png16(slices[len(slices) // 2]))
    chest = target / "chest_cr.dcm"
    chest.write_bytes(dicom_bytes(chest_cr_dataset(), JPEGLosslessSV1))
    size = chest.stat().st_size
    print(f"wrote {SLICES} DICOM slices to {series_dir}/, {target / 'slice.png'} and {chest} ({size:,} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
