-- Two storage tiers behind one interface: each of a scan's four images records where its bytes
-- live, 'postgres' (the bytea column, as before) or 's3' (the images bucket, under
-- scans/<owner_id>/<sha256>: the key follows from the row, never from the file name). An S3 image
-- keeps its hash and its size here, so ETag, 304, HEAD and the scan JSON never ask S3.
-- ADD COLUMN with a constant default is a catalogue change: no table rewrite, no TOAST touched.

ALTER TABLE scans
    ADD COLUMN original_storage  TEXT NOT NULL DEFAULT 'postgres',
    ADD COLUMN preview_storage   TEXT NOT NULL DEFAULT 'postgres',
    ADD COLUMN annotated_storage TEXT NOT NULL DEFAULT 'postgres',
    ADD COLUMN thumbnail_storage TEXT NOT NULL DEFAULT 'postgres',
    -- Bytes of an image in S3 (octet_length() of the column tells it for one in PostgreSQL).
    ADD COLUMN original_size  BIGINT,
    ADD COLUMN preview_size   BIGINT,
    ADD COLUMN annotated_size BIGINT,
    ADD COLUMN thumbnail_size BIGINT;

ALTER TABLE scans
    ALTER COLUMN original_image_data DROP NOT NULL,
    ALTER COLUMN annotated_image_data DROP NOT NULL,
    ALTER COLUMN thumbnail_image_data DROP NOT NULL,
    DROP CONSTRAINT scans_preview_present;

-- Exactly one place holds an image's bytes: the column, or S3 with its size here.
ALTER TABLE scans
    ADD CONSTRAINT scans_original_tier CHECK (
        (original_storage = 'postgres' AND original_image_data IS NOT NULL AND original_size IS NULL)
        OR (original_storage = 's3' AND original_image_data IS NULL AND original_size >= 0)),
    ADD CONSTRAINT scans_annotated_tier CHECK (
        (annotated_storage = 'postgres' AND annotated_image_data IS NOT NULL AND annotated_size IS NULL)
        OR (annotated_storage = 's3' AND annotated_image_data IS NULL AND annotated_size >= 0)),
    ADD CONSTRAINT scans_thumbnail_tier CHECK (
        (thumbnail_storage = 'postgres' AND thumbnail_image_data IS NOT NULL AND thumbnail_size IS NULL)
        OR (thumbnail_storage = 's3' AND thumbnail_image_data IS NULL AND thumbnail_size >= 0)),
    -- The preview may be absent (scans from before 004: the PNG or JPEG original stands in).
    ADD CONSTRAINT scans_preview_tier CHECK (
        (preview_storage = 'postgres' AND preview_size IS NULL
            AND (preview_image_data IS NULL) = (preview_hash IS NULL))
        OR (preview_storage = 's3' AND preview_image_data IS NULL AND preview_hash IS NOT NULL
            AND preview_size >= 0)),
    ADD CONSTRAINT scans_preview_present CHECK (
        preview_hash IS NOT NULL OR content_type IN ('image/png', 'image/jpeg'));

-- S3 objects that may have lost (or never got) their row: the keys of a deleted scan's S3 images
-- (the trigger below), of an image moved back to PostgreSQL, and of a write to S3 whose row was
-- not committed (a failed or killed upload or move records its keys here first). The cleanup job
-- deletes each object that no scan refers to and then the row; an object a scan refers to again
-- (the same owner uploaded the same file) only loses its row here. Every write that makes a scan
-- refer to a key, and every delete of an object, holds pg_advisory_xact_lock on the key
-- (shared/storage.py), so a delete never races the write of a new reference.
CREATE TABLE storage_orphans (
    key   TEXT PRIMARY KEY CHECK (key ~ '^(scans/[0-9]+/[0-9a-f]{64}|uploads/[A-Za-z0-9_-]{16,64})$'),
    since TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX storage_orphans_since_idx ON storage_orphans (since);

-- Which of a row's images are in S3, by key. Used by the trigger and by the orphan check.
CREATE FUNCTION scan_s3_keys(s scans) RETURNS TEXT[] LANGUAGE sql IMMUTABLE AS $$
    SELECT array_remove(ARRAY[
        CASE WHEN s.original_storage = 's3' THEN 'scans/' || s.owner_id || '/' || s.file_hash END,
        CASE WHEN s.preview_storage = 's3' THEN 'scans/' || s.owner_id || '/' || s.preview_hash END,
        CASE WHEN s.annotated_storage = 's3' THEN 'scans/' || s.owner_id || '/' || s.annotated_hash END,
        CASE WHEN s.thumbnail_storage = 's3' THEN 'scans/' || s.owner_id || '/' || s.thumbnail_hash END
    ], NULL)
$$;

-- Every way a scan goes (DELETE of the scan, or of its owner by cascade) leaves its S3 keys here.
CREATE FUNCTION scans_keep_s3_orphans() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO storage_orphans (key)
    SELECT unnest(scan_s3_keys(OLD))
    ON CONFLICT (key) DO NOTHING;
    RETURN NULL;
END;
$$;
CREATE TRIGGER scans_s3_orphans AFTER DELETE ON scans FOR EACH ROW
    WHEN (OLD.original_storage = 's3' OR OLD.preview_storage = 's3'
          OR OLD.annotated_storage = 's3' OR OLD.thumbnail_storage = 's3')
    EXECUTE FUNCTION scans_keep_s3_orphans();

-- Does any scan still refer to this S3 key? (owner and hash are in the key.)
CREATE FUNCTION s3_key_in_use(p_owner_id BIGINT, p_sha256 TEXT) RETURNS BOOLEAN LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT FROM scans s
         WHERE s.owner_id = p_owner_id
           AND ((s.file_hash = p_sha256 AND s.original_storage = 's3')
             OR (s.preview_hash = p_sha256 AND s.preview_storage = 's3')
             OR (s.annotated_hash = p_sha256 AND s.annotated_storage = 's3')
             OR (s.thumbnail_hash = p_sha256 AND s.thumbnail_storage = 's3')))
$$;

-- read_scan_image() of 005, tier-aware: it also says where the bytes are ('postgres' or 's3') and
-- sends bytes only for a PostgreSQL image; for an S3 one the caller fetches them (or redirects).
-- Sizes are bigint: S3 images are not bound by bytea's 1 GB (an image in PostgreSQL is, hence the
-- int casts of its span).
DROP FUNCTION read_scan_image(TEXT, TEXT, TEXT, BOOLEAN, BOOLEAN, BIGINT, BIGINT, TEXT, TEXT[], TEXT, TEXT, TEXT);
CREATE FUNCTION read_scan_image(
    p_token_hash    TEXT,
    p_scan_id       TEXT,
    p_image_type    TEXT,
    p_with_data     BOOLEAN,
    p_ranged        BOOLEAN,
    p_start         BIGINT,
    p_stop          BIGINT,
    p_if_range      TEXT,
    p_if_none_match TEXT[],
    p_known_sha256  TEXT,
    p_source_ip     TEXT,
    p_request_id    TEXT
) RETURNS TABLE (
    reader       BIGINT,
    content_type TEXT,
    sha256       TEXT,
    size         BIGINT,
    status       INTEGER,
    first        BIGINT,
    stop         BIGINT,
    storage      TEXT,
    data         BYTEA
) LANGUAGE plpgsql AS $$
DECLARE
    v_ranged BOOLEAN;
    v_kind   TEXT;
BEGIN
    IF p_token_hash IS NOT NULL THEN
        SELECT s.user_id INTO reader FROM sessions s WHERE s.token_hash = p_token_hash AND s.expires_at > now();
        IF NOT FOUND THEN
            RETURN;
        END IF;
    END IF;
    -- A scan without a preview (from before 004) shows its PNG or JPEG original in its place.
    SELECT sc.owner_id, m.kind, m.m_content_type, m.m_sha256, m.m_size, m.m_storage
      INTO reader, v_kind, content_type, sha256, size, storage
      FROM scans sc,
           LATERAL (VALUES
               ('original', sc.content_type, sc.file_hash,
                COALESCE(sc.original_size, octet_length(sc.original_image_data)), sc.original_storage),
               ('preview', 'image/jpeg', sc.preview_hash,
                COALESCE(sc.preview_size, octet_length(sc.preview_image_data)), sc.preview_storage),
               ('annotated', 'image/jpeg', sc.annotated_hash,
                COALESCE(sc.annotated_size, octet_length(sc.annotated_image_data)), sc.annotated_storage),
               ('thumbnail', 'image/jpeg', sc.thumbnail_hash,
                COALESCE(sc.thumbnail_size, octet_length(sc.thumbnail_image_data)), sc.thumbnail_storage)
           ) AS m (kind, m_content_type, m_sha256, m_size, m_storage)
     WHERE sc.id = p_scan_id AND (p_token_hash IS NULL OR sc.owner_id = reader)
       AND m.kind = CASE WHEN p_image_type = 'preview' AND sc.preview_hash IS NULL THEN 'original'
                         ELSE p_image_type END;
    IF NOT FOUND OR size IS NULL THEN
        content_type := NULL; sha256 := NULL; size := NULL; storage := NULL;
        RETURN NEXT;
        RETURN;
    END IF;
    v_ranged := p_ranged AND (p_if_range IS NULL OR p_if_range = '"' || sha256 || '"');
    first := 0;
    stop := size;
    IF v_ranged THEN
        first := least(CASE WHEN p_start < 0 THEN greatest(size + p_start, 0) ELSE p_start END, size);
        stop := least(COALESCE(p_stop, size), size);
    END IF;
    status := CASE WHEN '*' = ANY(p_if_none_match) OR sha256 = ANY(p_if_none_match) THEN 304
                   WHEN v_ranged AND first >= stop THEN 416
                   WHEN v_ranged THEN 206
                   ELSE 200 END;
    IF status <> 416 THEN
        PERFORM set_config('synchronous_commit', 'off', true);
        INSERT INTO audit_events (user_id, action, scan_id, image_type, via, status, source_ip, request_id)
        VALUES (reader, 'image.read', p_scan_id, p_image_type,
                CASE WHEN p_token_hash IS NULL THEN 'signature' ELSE 'token' END,
                status, p_source_ip, p_request_id);
    END IF;
    -- Each statement of this (volatile) function sees what was committed when it started: a move
    -- to S3 (shared/tiering.py) may commit between the SELECT above and this one. So this one reads
    -- the tier again with the bytes: an image moved meanwhile comes back as 's3' without bytes, and
    -- the caller reads the object (written and verified before that commit). A move back to
    -- PostgreSQL leaves its object for the cleanup job (an hour at least), for readers that saw 's3'.
    IF p_with_data AND status IN (200, 206) AND storage = 'postgres' AND sha256 IS DISTINCT FROM p_known_sha256 THEN
        SELECT substring(CASE v_kind
                   WHEN 'original' THEN sc.original_image_data
                   WHEN 'preview' THEN sc.preview_image_data
                   WHEN 'annotated' THEN sc.annotated_image_data
                   WHEN 'thumbnail' THEN sc.thumbnail_image_data END
               FROM CAST(first + 1 AS integer) FOR CAST(stop - first AS integer)),
               CASE v_kind
                   WHEN 'original' THEN sc.original_storage
                   WHEN 'preview' THEN sc.preview_storage
                   WHEN 'annotated' THEN sc.annotated_storage
                   WHEN 'thumbnail' THEN sc.thumbnail_storage END
          INTO data, storage
          FROM scans sc WHERE sc.id = p_scan_id;
    END IF;
    RETURN NEXT;
END;
$$;
