-- idx_scans_file_hash (002) is covered by scans_owner_file_hash_key (003): every lookup by hash is
-- by owner and hash. Measured by `make bench-scale`, it was ~125 B a scan (~30 % of the scans
-- indexes' bytes), written on every upload for no reader.
DROP INDEX IF EXISTS idx_scans_file_hash;
