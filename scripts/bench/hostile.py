"""The upload function's peak memory for the worst DICOM file of each hostile kind we can construct.

`make bench` runs it (its `upload_peak_mb_*` rows); alone: `python -m scripts.bench.main --hostile`.
Each file is small on disk and built here with pydicom and zlib:

    deflate_bomb      Deflated Explicit VR Little Endian, a 1000 MiB private OB of zeros in its header
    huge_frame        one JPEG 2000 frame of zeros as large as we decode (6320x6320 RGB, 16 bits a sample)
    many_fragments    encapsulated pixel data in 1,000,000 fragments
    ct_512            the baseline: an uncompressed 512x512 CT slice

Each goes through what the upload function does with a file before the database (decode, analysis,
renderings, the DICOMweb description) in a child process of its own, as in a fresh upload
container, with its address space capped (RLIMIT_AS) so that a file that would take the machine
down ends in a MemoryError instead. The figure is that child's peak RSS (VmHWM), imports included,
beside the upload function's memorySize in serverless.yml.
"""

from __future__ import annotations

import io
import json
import os
import re
import resource
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The child's address space: far above any figure we accept, far below what would hurt the machine.
ADDRESS_SPACE_LIMIT = 8 << 30
HUGE_SIDE = 6320  # 6320 x 6320 = 39.9 M pixels, under the default MAX_IMAGE_PIXELS of 40 M


def upload_memory_mb() -> int:
    """The upload function's memorySize in serverless.yml."""
    text = (ROOT / "serverless.yml").read_text()
    match = re.search(r"^  upload:\n(?:    .*\n)*?    memorySize: (\d+)", text, re.MULTILINE)
    if match is None:
        raise SystemExit("serverless.yml: no memorySize for the upload function")
    return int(match.group(1))


def _file_with_meta(dataset_bytes: bytes, transfer_syntax: str, sop_class: str, sop_instance: str) -> bytes:
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = transfer_syntax
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, sop_instance
    header = DicomBytesIO()
    header.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(header, meta)
    return header.getvalue() + dataset_bytes


def _explicit_little(ds: object) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)  # type: ignore[arg-type]
    return body.getvalue()


def deflate_bomb(private_bytes: int = 1000 << 20, *, size: int = 64) -> bytes:
    """A Deflated Explicit VR Little Endian CT slice whose header holds a private OB of private_bytes
    zeros (group 0009, before the pixel data): about 1 MB on disk per GB it inflates to."""
    from pydicom.dataset import Dataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from scripts.dev import phantom

    ds = phantom.ct_slice_dataset(size, seed=5)
    ds.add_new(0x00090010, "LO", "BOMB")
    before, after = Dataset(), Dataset()
    for element in ds:
        (before if element.tag <= 0x00090010 else after).add(element)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    private_header = struct.pack("<HH2sHI", 0x0009, 0x1000, b"OB", 0, private_bytes)
    parts = [compressor.compress(_explicit_little(before) + private_header)]
    zeros = bytes(1 << 20)
    for _ in range(private_bytes >> 20):
        parts.append(compressor.compress(zeros))
    parts.append(compressor.compress(bytes(private_bytes & ((1 << 20) - 1))))
    parts.append(compressor.compress(_explicit_little(after)))
    parts.append(compressor.flush())
    return _file_with_meta(b"".join(parts), DeflatedExplicitVRLittleEndian, ds.SOPClassUID, ds.SOPInstanceUID)


def _encapsulated_file(ds: object, transfer_syntax: str, items: bytes) -> bytes:
    """The dataset with its Pixel Data replaced by these encapsulated items (offset table first)."""
    ds.PixelData = b""  # type: ignore[attr-defined]
    body = _explicit_little(ds)
    tag = struct.pack("<HH", 0x7FE0, 0x0010)
    start = body.rindex(tag)
    pixel = tag + b"OB\x00\x00" + b"\xff\xff\xff\xff" + items + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return _file_with_meta(body[:start] + pixel, transfer_syntax, ds.SOPClassUID, ds.SOPInstanceUID)  # type: ignore[attr-defined]


def _item(value: bytes) -> bytes:
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(value)) + value


def huge_frame(side: int = HUGE_SIDE, *, samples: int = 3, bits: int = 16) -> bytes:
    """One JPEG 2000 Lossless frame of zeros, side x side, RGB of 16-bit samples by default (the
    largest a frame may decode to): a few KB declaring 240 MB of pixels."""
    import numpy as np
    from imagecodecs import jpeg2k_encode
    from pydicom.uid import JPEG2000Lossless

    from scripts.dev import phantom

    ds = phantom.ct_slice_dataset(64, seed=6)
    ds.Rows = ds.Columns = side
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, min(bits, 24), min(bits, 24) - 1
    shape: tuple[int, ...] = (side, side)
    if samples == 3:
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        shape = (side, side, 3)
    zeros = np.zeros(shape, np.uint16 if bits == 16 else np.uint32)
    codestream = jpeg2k_encode(zeros, level=0, codecformat="J2K", reversible=True)
    return _encapsulated_file(ds, JPEG2000Lossless, _item(b"") + _item(bytes(codestream)))


def many_fragments(count: int = 1_000_000) -> bytes:
    """A 64x64 JPEG 2000 frame whose codestream is split over `count` fragments (2 bytes each, then empty)."""
    import numpy as np
    from imagecodecs import jpeg2k_encode
    from pydicom.uid import JPEG2000Lossless

    from scripts.dev import phantom

    ds = phantom.ct_slice_dataset(64, seed=8)
    values = np.frombuffer(ds.PixelData, np.uint16).reshape(64, 64)
    codestream = bytes(jpeg2k_encode(values, level=0, codecformat="J2K", reversible=True))
    if len(codestream) % 2:
        codestream += b"\x00"
    pieces = [codestream[i : i + 2] for i in range(0, len(codestream), 2)]
    pieces += [b""] * (count - len(pieces))
    items = io.BytesIO()
    items.write(_item(b""))
    for piece in pieces:
        items.write(_item(piece))
    return _encapsulated_file(ds, JPEG2000Lossless, items.getvalue())


def ct_512() -> bytes:
    from scripts.dev import phantom

    return phantom.dicom_bytes(phantom.ct_slice_dataset(512, seed=9))


KINDS: dict[str, Callable[[], bytes]] = {
    "deflate_bomb": deflate_bomb,
    "huge_frame": huge_frame,
    "many_fragments": many_fragments,
    "ct_512": ct_512,
}


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(path: str) -> int:
    """In the child: take the file through the upload function's steps before the database, print JSON."""
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))
    from shared import imaging
    from shared.core.errors import DomainError
    from shared.scans import instances

    data = Path(path).read_bytes()
    started = time.perf_counter()
    outcome = "accepted"
    try:
        analyzed = imaging.analyze_upload(data)
        if analyzed.dicom is not None:
            instances.describe(data)
    except DomainError as error:
        outcome = f"refused: {error.code}"
    except MemoryError:
        outcome = f"MemoryError (over the {ADDRESS_SPACE_LIMIT >> 20} MB address space cap)"
    seconds = time.perf_counter() - started
    print(json.dumps({"peak_mb": round(_peak_rss_mb(), 1), "outcome": outcome, "seconds": round(seconds, 2)}))
    return 0


def figures() -> dict[str, object]:
    """Per kind: the file's size, what the upload function answers, and its peak RSS in MB."""
    out: dict[str, object] = {"upload_memory_size_mb": upload_memory_mb()}
    with tempfile.TemporaryDirectory() as folder:
        for kind, build in KINDS.items():
            path = Path(folder) / f"{kind}.dcm"
            path.write_bytes(build())
            result = subprocess.run(
                [sys.executable, "-m", "scripts.bench.hostile", "--child", str(path)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                env={**os.environ, "POWERTOOLS_LOG_LEVEL": "ERROR"},
                timeout=600,
            )
            if result.returncode != 0:
                raise SystemExit(f"{kind}: the child failed\n{result.stderr}")
            outcome = json.loads(result.stdout.strip().splitlines()[-1])
            out[f"upload_peak_mb_{kind}"] = outcome["peak_mb"]
            out[f"upload_{kind}_file_kb"] = round(path.stat().st_size / 1024)
            out[f"upload_{kind}_answer"] = outcome["outcome"]
    return out


def targets(memory_mb: int) -> dict[str, float]:
    """Each peak at most half the function's memory: room for the request, the response and the renderings."""
    return {f"upload_peak_mb_{kind}": memory_mb / 2 for kind in KINDS}


def main() -> int:
    if sys.argv[1:2] == ["--child"]:
        return child(sys.argv[2])
    from scripts.bench.main import print_table

    print_table(figures())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
