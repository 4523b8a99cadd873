-- DICOMweb (DICOM PS3.18): every DICOM SOP instance an owner holds, indexed for QIDO-RS and described
-- once for WADO-RS, so that no request parses a stored file again (re-reading every file of a series
-- per metadata request is what makes Orthanc's series metadata slow).
--
-- An image (an instance our imaging pipeline analyzed and rendered) is a scan: its bytes (in
-- PostgreSQL or S3) and its renderings stay in that row, and deleting the scan deletes its instance
-- here. Any other object a study brings (a dose report, key objects, presentation states, a
-- segmentation, RT objects) keeps its file in this table, byte for byte, and is never a scan.
--
-- Patient data: the QIDO-RS keys below (patient name, ID, birth date, sex; study date, time,
-- accession number, descriptions, referring physician) are what an owner searches their own files
-- by, as their original files hold them. They are read only by DICOMweb requests of that owner;
-- never by the REST API's scan JSON (which selects its columns by name), logs, metrics, audit rows
-- or renderings.
CREATE TABLE dicom_instances (
    id                       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner_id                 BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    scan_id                  TEXT UNIQUE REFERENCES scans (id) ON DELETE CASCADE,
    object_data              BYTEA,
    object_hash              CHAR(64),
    object_size              BIGINT,
    study_instance_uid       TEXT NOT NULL CHECK (length(study_instance_uid) BETWEEN 1 AND 64),
    series_instance_uid      TEXT NOT NULL CHECK (length(series_instance_uid) BETWEEN 1 AND 64),
    sop_instance_uid         TEXT NOT NULL CHECK (length(sop_instance_uid) BETWEEN 1 AND 64),
    sop_class_uid            TEXT NOT NULL CHECK (length(sop_class_uid) BETWEEN 1 AND 64),
    transfer_syntax_uid      TEXT NOT NULL CHECK (length(transfer_syntax_uid) BETWEEN 1 AND 64),
    -- QIDO-RS keys, UTF-8 as the file wrote them (decoded with its SpecificCharacterSet).
    patient_name             TEXT,
    patient_id               TEXT,
    issuer_of_patient_id     TEXT,
    patient_birth_date       TEXT,
    patient_sex              TEXT,
    study_date               TEXT,
    study_time               TEXT,
    timezone_offset_from_utc TEXT,
    accession_number         TEXT,
    study_id                 TEXT,
    study_description        TEXT,
    referring_physician_name TEXT,
    modality                 TEXT,
    series_number            INTEGER,
    series_description       TEXT,
    instance_number          INTEGER,
    rows                     INTEGER,
    columns                  INTEGER,
    number_of_frames         INTEGER NOT NULL CHECK (number_of_frames >= 0),
    -- Person names matched case-insensitively: each component group upper-cased.
    patient_name_keys        TEXT[] NOT NULL DEFAULT '{}',
    referring_physician_keys TEXT[] NOT NULL DEFAULT '{}',
    -- WADO-RS: the instance's DICOM JSON (PS3.18 F.2) without bulk data inline; the byte ranges of
    -- its bulk data elements in the stored file ({"<path>": [offset, length]}); the byte ranges of
    -- each frame's fragments ([[[offset, length], ...], ...], NULL when frames are not byte ranges of
    -- the stored file: deflated, big endian, bits packed across frames).
    metadata                 TEXT NOT NULL,
    bulk_data                JSONB NOT NULL DEFAULT '{}',
    frames                   JSONB,
    created_at               TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    -- Exactly one place holds the file: the scan, or this row.
    CONSTRAINT dicom_instances_one_place CHECK (
        (scan_id IS NULL) = (object_data IS NOT NULL AND object_hash IS NOT NULL AND object_size IS NOT NULL)
        AND (scan_id IS NULL OR (object_data IS NULL AND object_hash IS NULL AND object_size IS NULL))
    ),
    -- An owner never holds two instances with one SOP Instance UID (DUPLICATE_SOP_POLICY decides
    -- whether a second one is refused or replaces the first).
    CONSTRAINT dicom_instances_owner_sop_key UNIQUE (owner_id, sop_instance_uid)
);

-- A series in reading order (WADO-RS series metadata, QIDO-RS instances of a series) and the
-- instances of a study, by index range.
CREATE INDEX dicom_instances_series_idx ON dicom_instances (
    owner_id, study_instance_uid, series_instance_uid, (COALESCE(instance_number, 2147483647)), sop_instance_uid
);
CREATE INDEX dicom_instances_series_uid_idx ON dicom_instances (owner_id, series_instance_uid);
CREATE INDEX dicom_instances_patient_id_idx ON dicom_instances (owner_id, patient_id);
CREATE INDEX dicom_instances_accession_idx ON dicom_instances (owner_id, accession_number);
CREATE INDEX dicom_instances_study_date_idx ON dicom_instances (owner_id, study_date);

-- A viewer's token (OHIF takes its bearer token from the address, where it can end up in browser
-- history): it reads through DICOMweb only (GET), nothing else accepts it, and it ends with the
-- session that minted it (logout, password change, the session's expiry).
CREATE TABLE viewer_tokens (
    token_hash         CHAR(64) PRIMARY KEY,
    user_id            BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    session_token_hash CHAR(64) NOT NULL REFERENCES sessions (token_hash) ON DELETE CASCADE,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at         TIMESTAMPTZ NOT NULL
);
CREATE INDEX viewer_tokens_session_idx ON viewer_tokens (session_token_hash);
CREATE INDEX viewer_tokens_expires_at_idx ON viewer_tokens (expires_at);

-- The audit trail learns DICOMweb: stores, retrievals and deletes name their scans (or count their
-- objects) in `details`, and a search records its level, its result count and a keyed hash of each
-- query value (never the value: "who searched for this patient" is answered by hashing the name with
-- the same key), as IHE ATNA's Query event asks.
ALTER TABLE audit_events DROP CONSTRAINT audit_events_action_check;
ALTER TABLE audit_events ADD CONSTRAINT audit_events_action_check CHECK (action IN (
    'image.read', 'scan.delete',
    'login.success', 'login.failure', 'login.throttled',
    'logout', 'logout.all', 'password.change',
    'admin.create_user', 'admin.reset_password', 'admin.audit', 'admin.audit_search',
    'dicomweb.store', 'dicomweb.replace', 'dicomweb.retrieve', 'dicomweb.search', 'dicomweb.delete',
    'viewer_token.create'));
ALTER TABLE audit_events DROP CONSTRAINT audit_events_via_check;
ALTER TABLE audit_events ADD CONSTRAINT audit_events_via_check
    CHECK (via IN ('token', 'signature', 'password', 'admin', 'viewer_token'));
ALTER TABLE audit_events ADD COLUMN details JSONB;

-- Who a DICOMweb request acts for: the user of an unexpired session, or (for reads, p_viewer_ok) of
-- an unexpired viewer token; NULL otherwise.
CREATE FUNCTION dicomweb_reader(p_token_hash TEXT, p_viewer_ok BOOLEAN) RETURNS BIGINT
LANGUAGE sql STABLE AS $$
    SELECT COALESCE(
        (SELECT s.user_id FROM sessions s WHERE s.token_hash = p_token_hash AND s.expires_at > now()),
        (SELECT v.user_id FROM viewer_tokens v
          WHERE p_viewer_ok AND v.token_hash = p_token_hash AND v.expires_at > now()))
$$;

-- WADO-RS frames of one instance, authorised and audited in one call (OHIF asks for every slice of
-- a series, one request each: this is the hot path, as read_scan_image() is for the REST images).
-- No row: no such session or viewer token. Otherwise one row per requested frame, in the order
-- asked, or a single row whose status says why not: 404 (no such instance of this owner, or a frame
-- number past its frames), 409 (the frames are not byte ranges of the stored file: the caller has
-- them decoded where the codecs are). The bytes of each frame are its fragments' values joined; an
-- image in the S3 tier comes back without bytes and with its fragments, for the caller to read.
CREATE FUNCTION read_dicom_frames(
    p_token_hash TEXT,
    p_study      TEXT,
    p_series     TEXT,
    p_sop        TEXT,
    p_frames     INTEGER[],
    p_source_ip  TEXT,
    p_request_id TEXT,
    p_known_sha256 TEXT DEFAULT NULL
) RETURNS TABLE (
    reader              BIGINT,
    status              INTEGER,
    transfer_syntax_uid TEXT,
    sha256              TEXT,
    storage             TEXT,
    frame               INTEGER,
    fragments           JSONB,
    data                BYTEA
) LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    v_instance_id BIGINT;
    v_scan_id     TEXT;
    v_frames      JSONB;
    v_count       INTEGER;
BEGIN
    reader := dicomweb_reader(p_token_hash, true);
    IF reader IS NULL THEN
        RETURN;
    END IF;
    SELECT i.id, i.scan_id, i.frames, i.number_of_frames, i.transfer_syntax_uid,
           COALESCE(sc.file_hash, i.object_hash), COALESCE(sc.original_storage, 'postgres')
      INTO v_instance_id, v_scan_id, v_frames, v_count, transfer_syntax_uid, sha256, storage
      FROM dicom_instances i LEFT JOIN scans sc ON sc.id = i.scan_id
     WHERE i.owner_id = reader AND i.sop_instance_uid = p_sop
       AND i.study_instance_uid = p_study AND i.series_instance_uid = p_series;
    IF NOT FOUND OR cardinality(p_frames) = 0
       OR EXISTS (SELECT FROM unnest(p_frames) f WHERE f < 1 OR f > v_count) THEN
        status := 404;
        RETURN NEXT;
        RETURN;
    END IF;
    IF v_frames IS NULL THEN
        status := 409;
        RETURN NEXT;
        RETURN;
    END IF;
    status := 200;
    PERFORM set_config('synchronous_commit', 'off', true);
    INSERT INTO audit_events (user_id, action, scan_id, via, status, source_ip, request_id, details)
    VALUES (reader, 'dicomweb.retrieve', v_scan_id,
            CASE WHEN EXISTS (SELECT FROM sessions s WHERE s.token_hash = p_token_hash) THEN 'token'
                 ELSE 'viewer_token' END,
            200, p_source_ip, p_request_id,
            jsonb_build_object('level', 'frames', 'instances', 1, 'frames', cardinality(p_frames)));
    -- The tier is read again with the bytes (a move to S3 may commit between the two statements,
    -- as read_scan_image() explains): an image moved meanwhile comes back as 's3' without bytes.
    RETURN QUERY
        SELECT reader, 200, transfer_syntax_uid, sha256,
               COALESCE(sc.original_storage, 'postgres'),
               f.n, v_frames -> (f.n - 1),
               -- No bytes when the caller holds this file's frames already (its SHA-256 is the stored one).
               CASE WHEN COALESCE(sc.original_storage, 'postgres') = 'postgres'
                         AND sha256 IS DISTINCT FROM p_known_sha256 THEN
                   (SELECT string_agg(
                               substring(CASE WHEN i.scan_id IS NULL THEN i.object_data ELSE sc.original_image_data END
                                         FROM CAST(frag.value ->> 0 AS integer) + 1
                                         FOR CAST(frag.value ->> 1 AS integer)),
                               ''::bytea ORDER BY frag.ordinality)
                      FROM jsonb_array_elements(v_frames -> (f.n - 1)) WITH ORDINALITY AS frag)
               END
          FROM unnest(p_frames) WITH ORDINALITY AS f (n, position)
          JOIN dicom_instances i ON i.id = v_instance_id
          LEFT JOIN scans sc ON sc.id = i.scan_id
         ORDER BY f.position;
END;
$$;

-- "Who searched for this patient?" (the admin function's audit_search, make audit-search) looks a
-- search up by the keyed hash of one query value (shared.db.audit.find_searches: details -> 'keys'
-- @> {"PatientName": "<digest>"}). audit_events' own indexes (at; user_id, at) cannot answer that:
-- a patient's few searches among millions would be a backward walk of the whole trail, reading
-- every row's JSONB. This indexes each search's hashes alone (a handful of entries per row; not the
-- other actions, not the level or counts). fastupdate off: each search pays its few entries as it
-- is written, rather than one viewer's search now and then paying to merge a 4 MB pending list
-- (PostgreSQL's GIN tips: steady response time over update speed).
CREATE INDEX audit_events_search_keys_idx ON audit_events USING gin ((details -> 'keys') jsonb_path_ops)
    WITH (fastupdate = off)
    WHERE action = 'dicomweb.search';
