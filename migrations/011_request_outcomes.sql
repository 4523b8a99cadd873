-- Retried writes answer what the first attempt did (shared/db/outcomes.py). db.call repeats a
-- function after a network error; when the COMMIT went through and only its reply was lost, running
-- the write again would answer as if it had not (a delete 404, an upload "duplicate"). Each write
-- that must not run twice records, in its own transaction, its outcome under a key made once per
-- call; the retry finds it and answers it. A retry follows within seconds: the cleanup job removes
-- rows older than a day.
CREATE TABLE request_outcomes (
    key        UUID PRIMARY KEY,
    result     JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX request_outcomes_created_at_idx ON request_outcomes (created_at);
