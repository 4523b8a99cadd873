-- Accounts, sessions and scan metadata. Image storage comes in 002.

CREATE TABLE users (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE CHECK (length(username) BETWEEN 1 AND 64),
    password_hash TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A session is found by the SHA-256 of its bearer token; the token itself is never stored.
CREATE TABLE sessions (
    token_hash CHAR(64) PRIMARY KEY,
    user_id    BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX sessions_user_id_idx ON sessions (user_id);
CREATE INDEX sessions_expires_at_idx ON sessions (expires_at);

CREATE TABLE scans (
    id           TEXT PRIMARY KEY CHECK (id ~ '^scan_[A-Za-z0-9_-]{16,}$'),
    owner_id     BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    filename     TEXT NOT NULL,
    content_type TEXT NOT NULL CHECK (content_type IN ('image/png', 'image/jpeg')),
    width        INTEGER NOT NULL CHECK (width > 0),
    height       INTEGER NOT NULL CHECK (height > 0),
    results      JSONB NOT NULL,
    -- clock_timestamp, not now(): rows inserted in one transaction still sort by insertion.
    created_at   TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
-- Listing is per owner, newest first, with keyset pagination on (created_at, id).
CREATE INDEX scans_owner_created_idx ON scans (owner_id, created_at DESC, id DESC);
