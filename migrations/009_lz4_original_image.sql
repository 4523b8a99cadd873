-- Compression of the file of record, measured (`make bench`, compression rows; README "Compression"):
-- uncompressed DICOM is most of what a CT store holds, and lz4 TOAST compression stores a real
-- 512x512 CT slice in 52 % of its bytes and a real two-frame CT in 19 %, for ~0.2 ms more server
-- time to read it whole, and insert times within the noise (3.99 -> 4.66 ms for the slice, less
-- than uncompressed for 2 MB files, which write fewer bytes). A JPEG, a PNG or JPEG 2000 DICOM does not
-- compress: PostgreSQL tries (well under a millisecond for lz4) and keeps the value raw (or saves a
-- few bytes: 128 of a 107 KB JPEG 2000 DICOM), and reads of it stay as before. Served bytes are the stored bytes (compression is inside the storage), so the
-- original stays byte-identical, with the same SHA-256, ETag and octet_length().
--
-- What it costs: substring() of a compressed value decompresses from its start, so a Range read
-- near the end of a compressed original costs about a whole read on the server (~0.4 ms for a 512x512
-- slice, ~1 ms for 2 MB) instead of reading only its chunks. pglz was measured too and not taken:
-- smaller (46 %) but ~2.5x the insert time and 2-3.5x the read time of lz4.
--
-- Only the original: the preview, annotated and thumbnail renderings are JPEGs and stay EXTERNAL.
-- Only where the server has lz4 (a build option: RDS PostgreSQL 16 and Debian's packages have it,
-- the embedded pgserver used by `make run` has not): elsewhere the column stays EXTERNAL, which is
-- better than pglz. SET COMPRESSION and SET STORAGE change the catalogue only: values already stored
-- keep their form, values written from now on are compressed.
DO $$
BEGIN
    IF 'lz4' = ANY ((SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression')::TEXT[]) THEN
        ALTER TABLE scans
            ALTER COLUMN original_image_data SET STORAGE EXTENDED,
            ALTER COLUMN original_image_data SET COMPRESSION lz4;
    END IF;
END;
$$;
