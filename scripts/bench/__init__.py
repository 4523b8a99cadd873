"""Benchmarks: `make bench` (main), `make bench-scale` (scale), `make bench-large-upload` (large_upload),
and Orthanc as the reference server they compare with (orthanc)."""
