-- DICOM input: the file of record is stored as application/dicom, with a PHI-free index of the
-- attributes a viewer needs (geometry, series placement, how the pixels were encoded), and a
-- fourth rendering, the full-size preview a browser shows.

ALTER TABLE scans DROP CONSTRAINT scans_content_type_check;
ALTER TABLE scans ADD CONSTRAINT scans_content_type_check
    CHECK (content_type IN ('image/png', 'image/jpeg', 'application/dicom'));

-- Only identifiers and geometry: no names, IDs, dates, institutions, descriptions or private tags.
-- NULL for PNG and JPEG.
ALTER TABLE scans
    ADD COLUMN modality                   TEXT,
    ADD COLUMN study_instance_uid         TEXT,
    ADD COLUMN series_instance_uid        TEXT,
    ADD COLUMN sop_instance_uid           TEXT,
    ADD COLUMN instance_number            INTEGER,
    ADD COLUMN slice_position             DOUBLE PRECISION,
    ADD COLUMN pixel_spacing_mm           DOUBLE PRECISION[],
    ADD COLUMN slice_thickness_mm         DOUBLE PRECISION,
    ADD COLUMN rows                       INTEGER,
    ADD COLUMN columns                    INTEGER,
    ADD COLUMN frame_count                INTEGER,
    ADD COLUMN frame_analyzed             INTEGER,
    ADD COLUMN transfer_syntax_uid        TEXT,
    ADD COLUMN photometric_interpretation TEXT,
    ADD COLUMN bits_stored                SMALLINT,
    ADD CONSTRAINT scans_dicom_fields CHECK (
        (content_type = 'application/dicom') = (rows IS NOT NULL AND columns IS NOT NULL AND frame_count IS NOT NULL
            AND frame_analyzed IS NOT NULL AND transfer_syntax_uid IS NOT NULL
            AND photometric_interpretation IS NOT NULL AND bits_stored IS NOT NULL)
    ),
    ADD CONSTRAINT scans_frame_analyzed_range CHECK (frame_analyzed BETWEEN 1 AND frame_count),
    ADD CONSTRAINT scans_pixel_spacing_pair CHECK (pixel_spacing_mm IS NULL OR cardinality(pixel_spacing_mm) = 2);

-- The preview: a JPEG like the other renderings, already compressed, so stored out of line.
-- Scans stored before this migration have none; their PNG or JPEG original is what a browser
-- can show, and the images function serves it in the preview's place.
ALTER TABLE scans
    ADD COLUMN preview_image_data BYTEA,
    ADD COLUMN preview_hash       CHAR(64);
ALTER TABLE scans ALTER COLUMN preview_image_data SET STORAGE EXTERNAL;
ALTER TABLE scans ADD CONSTRAINT scans_preview_present CHECK (
    (preview_image_data IS NULL) = (preview_hash IS NULL)
    AND (preview_image_data IS NOT NULL OR content_type IN ('image/png', 'image/jpeg'))
);

-- Listing one series (or study) of an owner in reading order, by keyset: the sort keys are
-- expressions so that a missing instance number or position sorts last and still pages.
CREATE INDEX scans_owner_series_idx ON scans (
    owner_id, series_instance_uid,
    (COALESCE(instance_number, 2147483647)), (COALESCE(slice_position, 'Infinity'::float8)), id
) WHERE series_instance_uid IS NOT NULL;
CREATE INDEX scans_owner_study_idx ON scans (
    owner_id, study_instance_uid, (COALESCE(series_instance_uid, '')),
    (COALESCE(instance_number, 2147483647)), (COALESCE(slice_position, 'Infinity'::float8)), id
) WHERE study_instance_uid IS NOT NULL;
