-- What 002 left open: per-owner dedup, no half-written scans, fast conditional GETs,
-- and no futile compression of already-compressed images.

-- JPEG and PNG are already compressed: store them out of line, uncompressed, which also
-- makes substring reads cheap. Applies to values written from now on.
ALTER TABLE scans
    ALTER COLUMN original_image_data SET STORAGE EXTERNAL,
    ALTER COLUMN annotated_image_data SET STORAGE EXTERNAL,
    ALTER COLUMN thumbnail_image_data SET STORAGE EXTERNAL;

-- ETags of the derived images, so a 304 or HEAD never reads image bytes.
ALTER TABLE scans
    ADD COLUMN annotated_hash CHAR(64),
    ADD COLUMN thumbnail_hash CHAR(64);

UPDATE scans SET
    annotated_hash = encode(sha256(annotated_image_data), 'hex'),
    thumbnail_hash = encode(sha256(thumbnail_image_data), 'hex')
WHERE annotated_image_data IS NOT NULL AND thumbnail_image_data IS NOT NULL;

-- A scan is written whole or not at all.
ALTER TABLE scans
    ALTER COLUMN original_image_data SET NOT NULL,
    ALTER COLUMN annotated_image_data SET NOT NULL,
    ALTER COLUMN thumbnail_image_data SET NOT NULL,
    ALTER COLUMN file_hash SET NOT NULL,
    ALTER COLUMN annotated_hash SET NOT NULL,
    ALTER COLUMN thumbnail_hash SET NOT NULL,
    ADD CONSTRAINT scans_file_hash_hex CHECK (file_hash ~ '^[0-9a-f]{64}$');

-- Dedup is per owner, and must hold under concurrent uploads: the index decides the race.
ALTER TABLE scans ADD CONSTRAINT scans_owner_file_hash_key UNIQUE (owner_id, file_hash);
