"""Ops jobs: long, batched work that the ops functions and `make` targets run, never a request.

    cleanup   the nightly cleanup function: expired rows, S3 orphans and expired uploads, VACUUM
    tiering   moving existing images between PostgreSQL and S3 (the tiering function, make move-to-*)
    dicomweb_backfill  DICOMweb instances for the DICOM scans stored before migration 010 (the migrate
              function after the migrations, make migrate)
    deadline  the time a job has left before its Lambda ends

Each runs on a connection of its own with long timeouts and reports in JSON.
"""
