-- Images live in PostgreSQL so they survive restarts and deployments (the original design).

ALTER TABLE scans
    ADD COLUMN original_image_data BYTEA,
    ADD COLUMN annotated_image_data BYTEA,
    ADD COLUMN thumbnail_image_data BYTEA,
    ADD COLUMN file_hash VARCHAR(64);

CREATE INDEX idx_scans_file_hash ON scans (file_hash);
