"""Compression, measured (issue 10; `make bench`'s last section, or alone with
`.venv/bin/python -m scripts.bench.main --compression`): what PostgreSQL's TOAST compression and
lossless re-encoding would save on CT originals, and what they would cost the read path. Real files
from pydicom's test data (pydicom-data), phantom slices, and the PNG and JPEG kinds that do not
compress."""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from pydicom.uid import JPEGLosslessSV1

from scripts.bench.common import REPORT, ct_image, timed
from scripts.dev import phantom
from shared import db
from shared.core import config

COMPRESSION_READS = 30
COMPRESSION_INSERTS = 10
RANGE_BYTES = 65536


def compression_corpus() -> dict[str, bytes]:
    """Originals as a client would upload them, by label; test files pydicom-data lacks are left out."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    corpus: dict[str, bytes] = {}
    real = {
        "real_ct_512": "693_UNCR.dcm",  # a CT slice, 512x512, 16 bits allocated, uncompressed
        "real_ct_512_2frame": "eCT_Supplemental.dcm",  # an enhanced (multi-frame) CT, 2 x 512x512
        "real_ct_128": "CT_small.dcm",
        "real_mr_1024": "MR2_UNCR.dcm",  # not CT: a larger uncompressed greyscale slice for contrast
        "real_ct_512_j2k_lossless": "693_J2KR.dcm",  # the same CT slice as it came, JPEG 2000 lossless
    }
    for label, name in real.items():
        path = get_testdata_file(name)
        if path is not None:
            corpus[label] = Path(str(path)).read_bytes()
    corpus["phantom_ct_512"] = phantom.dicom_bytes(phantom.ct_slice_dataset(512, seed=8101))
    corpus["phantom_ct_512_4frame"] = phantom.dicom_bytes(phantom.ct_slice_dataset(512, frames=4, seed=8102))
    if "real_ct_512" in corpus:
        corpus["real_ct_512_png16"] = phantom.stored_png16(dcmread(io.BytesIO(corpus["real_ct_512"])))
    corpus["jpeg_512"] = ct_image(512, 8103, bits=8, fmt="JPEG")
    return corpus


def toast_methods(con: db.Connection) -> list[str]:
    """The TOAST compression methods this server was built with (lz4 is a build option: pgserver's lacks it)."""
    values = con.run("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")[0][0]
    return [str(v) for v in values]


def toast_figures(con: db.Connection, corpus: dict[str, bytes]) -> dict[str, object]:
    """Each original stored in a bench table as today (EXTERNAL: out of line, uncompressed) and with
    pglz and lz4 compression (EXTENDED): bytes stored, insert time, and the server's work to read it
    whole and to read 64 KiB near its end. get_byte() makes the server detoast (fetch and decompress)
    without sending the value: the bytes on the wire are the same whatever the storage."""
    methods = toast_methods(con)
    figures: dict[str, object] = {"toast_methods_built": "/".join(methods)}
    variants = ["external"] + [method for method in ("pglz", "lz4") if method in methods]
    if "lz4" not in methods:
        print("(this server has no lz4 TOAST compression; RDS PostgreSQL 16 has: DATABASE_URL=… for it)", file=REPORT)
    for variant in variants:
        table = f"bench_toast_{variant}"
        con.run(f"DROP TABLE IF EXISTS {table}")
        con.run(f"CREATE TABLE {table} (name TEXT, copy INTEGER, data BYTEA, PRIMARY KEY (name, copy))")
        if variant == "external":
            con.run(f"ALTER TABLE {table} ALTER COLUMN data SET STORAGE EXTERNAL")
        else:
            con.run(
                f"ALTER TABLE {table} ALTER COLUMN data SET STORAGE EXTENDED, "
                f"ALTER COLUMN data SET COMPRESSION {variant}"
            )
        for label, data in corpus.items():
            figures[f"toast:{variant}:{label}"] = toast_row(con, table, label, data)
        con.run(f"VACUUM {table}")
        toast = con.run(f"SELECT pg_total_relation_size(reltoastrelid) FROM pg_class WHERE oid = '{table}'::regclass")
        written = sum(map(len, corpus.values())) * (COMPRESSION_INSERTS + 1)
        figures[f"toast_relation_bytes:{variant}"] = f"{toast[0][0]} ({toast[0][0] / written:.0%} of the bytes written)"
        con.run(f"DROP TABLE {table}")
    return figures


def toast_row(con: db.Connection, table: str, label: str, data: bytes) -> str:
    """One original in one bench table: its stored size and method, insert p50, full and ranged read p50."""
    inserts = []
    for copy in range(COMPRESSION_INSERTS + 1):  # the first is warm-up
        start = time.perf_counter()
        con.run(f"INSERT INTO {table} VALUES (:name, :copy, :data)", name=label, copy=copy, data=data)
        inserts.append((time.perf_counter() - start) * 1000)
    where = "WHERE name = :name AND copy = 0"
    stored, method = con.run(
        f"SELECT pg_column_size(data), pg_column_compression(data) FROM {table} {where}", name=label
    )[0]
    full = timed(lambda: con.run(f"SELECT get_byte(data, 0) FROM {table} {where}", name=label), COMPRESSION_READS)
    first = max(len(data) - RANGE_BYTES - 1000, 0) + 1  # 64 KiB ending 1000 bytes before the end
    ranged_sql = f"SELECT get_byte(substring(data FROM :first FOR {RANGE_BYTES}), 0) FROM {table} {where}"
    ranged = timed(lambda: con.run(ranged_sql, first=first, name=label), COMPRESSION_READS)
    return (
        f"{stored} B {stored / len(data):.0%} {method or 'raw'} · insert {statistics.median(inserts[1:]):.2f}"
        f" · full {statistics.median(full):.3f} · 64 KiB at end {statistics.median(ranged):.3f} ms"
    )


def decode_pixels(encoded: bytes) -> None:
    """Every frame of a DICOM file decoded, as serving the original from a re-encoded copy would need
    (JPEG Lossless through imagecodecs, as the upload function decodes it; the rest through pydicom)."""
    from pydicom import dcmread
    from pydicom.encaps import generate_frames

    ds = dcmread(io.BytesIO(encoded))
    if ds.file_meta.TransferSyntaxUID == JPEGLosslessSV1:
        from imagecodecs import jpeg8_decode

        for frame in generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1))):
            jpeg8_decode(frame)
    else:
        ds.pixel_array  # noqa: B018 - decoding is the point


def reencoding_figures(corpus: dict[str, bytes]) -> dict[str, object]:
    """Lossless re-encodings of each uncompressed DICOM's pixel data (the encoders the upload function
    already ships), and zlib / zstd of the whole file: size, encode time, decode time. Also whether
    decoding the RLE file and writing it back in the original transfer syntax gives the original bytes."""
    import zlib

    from imagecodecs import zstd_decode, zstd_encode
    from pydicom import dcmread
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

    figures: dict[str, object] = {}
    for label, data in corpus.items():
        if not label.startswith(("real_", "phantom_")) or "png" in label or "j2k" in label:
            continue
        ds = dcmread(io.BytesIO(data))
        for name, syntax in (
            ("rle", RLELossless),
            ("jpegls", JPEGLSLossless),
            ("j2k", JPEG2000Lossless),
            ("jpeg_ll_sv1", JPEGLosslessSV1),
        ):
            try:
                encoded = phantom.dicom_bytes(ds, syntax)
            except Exception as error:  # an encoder that refuses this file is a figure too
                figures[f"reencode:{name}:{label}"] = f"refused ({type(error).__name__})"
                continue
            encode_ms = statistics.median(timed(lambda: phantom.dicom_bytes(ds, syntax), 3))  # noqa: B023
            decode_ms = statistics.median(timed(lambda: decode_pixels(encoded), 5))  # noqa: B023
            figures[f"reencode:{name}:{label}"] = (
                f"{len(encoded)} B ({len(encoded) / len(data):.0%}); enc {encode_ms:.1f} / dec {decode_ms:.1f} ms"
            )
            if name == "rle":
                rebuilt = dcmread(io.BytesIO(encoded))
                rebuilt.decompress(generate_instance_uid=False)
                rebuilt.file_meta.TransferSyntaxUID = ds.file_meta.TransferSyntaxUID
                out = io.BytesIO()
                rebuilt.save_as(out, enforce_file_format=True)
                figures[f"reencode:rle_rebuilt_identical:{label}"] = out.getvalue() == data
        codecs: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
            "zlib6": (lambda b: zlib.compress(b, 6), zlib.decompress),
            "zstd3": (lambda b: bytes(zstd_encode(b, level=3)), lambda b: bytes(zstd_decode(b))),
        }
        for name, (encode, decode) in codecs.items():
            packed = encode(data)
            encode_ms = statistics.median(timed(lambda: encode(data), 5))  # noqa: B023
            decode_ms = statistics.median(timed(lambda: decode(packed), 5))  # noqa: B023
            assert decode(packed) == data
            figures[f"whole_file:{name}:{label}"] = (
                f"{len(packed)} B ({len(packed) / len(data):.0%}); enc {encode_ms:.1f} / dec {decode_ms:.2f} ms"
            )
    return figures


def compression_figures(url: str) -> dict[str, object]:
    """The compression section: sizes of the corpus, TOAST variants, re-encodings."""
    corpus = compression_corpus()
    figures: dict[str, object] = {f"corpus_bytes:{label}": len(data) for label, data in corpus.items()}
    con = db.connect(config.parse_database_url(url), timeout=120)
    try:
        figures.update(toast_figures(con, corpus))
    finally:
        con.close()
    figures.update(reencoding_figures(corpus))
    return figures
