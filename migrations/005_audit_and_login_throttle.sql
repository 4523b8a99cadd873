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
