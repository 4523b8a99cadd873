-- Uploads past 4.5 MB: POST /api/v1/scans/uploads answers a presigned S3 POST for the key
-- uploads/<id> (chosen here, never from the file name) and records the upload; the client posts the
-- file to S3; POST /api/v1/scans/uploads/<id>/complete analyzes it and deletes the row in the
-- transaction that inserts the scan. A row is the only record of a staged object: the cleanup job
-- deletes expired rows and their objects uploads/<id> (and the bucket's lifecycle rule expires
-- uploads/ after two days, should both be missed).
CREATE TABLE uploads (
    id         TEXT PRIMARY KEY CHECK (id ~ '^upl_[A-Za-z0-9_-]{16,}$'),
    owner_id   BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    -- As an upload's filename: the display-safe last path part, at most 255 characters.
    filename   TEXT NOT NULL CHECK (length(filename) BETWEEN 1 AND 255),
    -- The most bytes the presigned POST's content-length-range lets through (the declared size).
    max_bytes  BIGINT NOT NULL CHECK (max_bytes > 0),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX uploads_expires_at_idx ON uploads (expires_at);
