-- What a hospital security review asks for: who read which image, and what stops password guessing.

-- The audit trail: one row per image read (200, 206, 304), scan delete, login (success, failure,
-- throttled), logout, password change and admin action. Never a token, password, file name or
-- patient data: ids, the action, the outcome and where the request came from. user_id has no
-- foreign key on purpose: the trail outlives the account. Rows older than AUDIT_RETENTION_DAYS
-- (default six years) are removed by the cleanup job; `at` is all it needs.
CREATE TABLE audit_events (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    user_id    BIGINT,
    action     TEXT NOT NULL CHECK (action IN (
                   'image.read', 'scan.delete',
                   'login.success', 'login.failure', 'login.throttled',
                   'logout', 'logout.all', 'password.change',
                   'admin.create_user', 'admin.reset_password', 'admin.audit')),
    scan_id    TEXT CHECK (length(scan_id) <= 64),
    image_type TEXT CHECK (image_type IN ('original', 'preview', 'annotated', 'thumbnail')),
    via        TEXT CHECK (via IN ('token', 'signature', 'password', 'admin')),
    status     SMALLINT NOT NULL CHECK (status BETWEEN 100 AND 599),
    source_ip  TEXT CHECK (length(source_ip) <= 64),
    request_id TEXT CHECK (length(request_id) <= 128)
);
CREATE INDEX audit_events_at_idx ON audit_events (at);
CREATE INDEX audit_events_user_at_idx ON audit_events (user_id, at);

-- Failed logins of the last 15 minutes, by username and by source IP. The username is kept only as
-- its SHA-256 (of the lower-cased name): what someone typed there may be a password.
CREATE TABLE login_failures (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    username_key CHAR(64) NOT NULL,
    source_ip    TEXT NOT NULL CHECK (length(source_ip) <= 64)
);
CREATE INDEX login_failures_username_at_idx ON login_failures (username_key, at);
CREATE INDEX login_failures_source_ip_at_idx ON login_failures (source_ip, at);

-- One image read, audited, in one call: the images function's whole database work for a request.
-- PL/pgSQL keeps the plans of its statements for the life of the connection, where the same SQL
-- sent as an unnamed statement was planned again on every request (~0.5 ms of a ~3 ms read), and
-- named prepared statements would pin client sessions on RDS Proxy. Returns no row for an unknown
-- or expired token; a row of NULLs (but the reader) when there is no such scan of its owner.
-- p_token_hash NULL means a URL signature already named this scan and type: the owner is the reader.
-- RFC 9110 order: If-None-Match (304), then Range when If-Range is absent or names the ETag
-- (strong compare), 416 for a range that starts past the end. substring() of a STORAGE EXTERNAL
-- bytea reads only the TOAST chunks of the span (the column is never assigned to a variable, which
-- would read it whole); the caller asks for the bytes in binary format, so they cross the wire once,
-- as themselves.
-- The audit row's commit does not wait for the WAL flush (synchronous_commit off for this one
-- transaction; the setting ends with it): the row is never half written, but a crash of the
-- database can lose the reads of its last ~0.6 s. Deletes, logins and admin actions are synchronous.
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
    size         INTEGER,
    status       INTEGER,
    first        INTEGER,
    stop         INTEGER,
    data         BYTEA
) LANGUAGE plpgsql AS $$
DECLARE
    v_ranged BOOLEAN;
BEGIN
    IF p_token_hash IS NOT NULL THEN
        SELECT s.user_id INTO reader FROM sessions s WHERE s.token_hash = p_token_hash AND s.expires_at > now();
        IF NOT FOUND THEN
            RETURN;
        END IF;
    END IF;
    SELECT sc.owner_id,
           CASE p_image_type
               WHEN 'original' THEN sc.content_type
               WHEN 'preview' THEN CASE WHEN sc.preview_image_data IS NULL THEN sc.content_type ELSE 'image/jpeg' END
               ELSE 'image/jpeg' END,
           CASE p_image_type
               WHEN 'original' THEN sc.file_hash
               WHEN 'preview' THEN COALESCE(sc.preview_hash, sc.file_hash)
               WHEN 'annotated' THEN sc.annotated_hash
               WHEN 'thumbnail' THEN sc.thumbnail_hash END,
           octet_length(CASE p_image_type
               WHEN 'original' THEN sc.original_image_data
               WHEN 'preview' THEN COALESCE(sc.preview_image_data, sc.original_image_data)
               WHEN 'annotated' THEN sc.annotated_image_data
               WHEN 'thumbnail' THEN sc.thumbnail_image_data END)
      INTO reader, content_type, sha256, size
      FROM scans sc
     WHERE sc.id = p_scan_id AND (p_token_hash IS NULL OR sc.owner_id = reader);
    IF NOT FOUND OR size IS NULL THEN
        content_type := NULL; sha256 := NULL; size := NULL;
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
    IF p_with_data AND status IN (200, 206) AND sha256 IS DISTINCT FROM p_known_sha256 THEN
        SELECT substring(CASE p_image_type
                   WHEN 'original' THEN sc.original_image_data
                   WHEN 'preview' THEN COALESCE(sc.preview_image_data, sc.original_image_data)
                   WHEN 'annotated' THEN sc.annotated_image_data
                   WHEN 'thumbnail' THEN sc.thumbnail_image_data END
               FROM first + 1 FOR stop - first)
          INTO data
          FROM scans sc WHERE sc.id = p_scan_id;
    END IF;
    RETURN NEXT;
END;
$$;
