"""Benchmarks: `make bench` (main, with its DICOMweb section in dicomweb and its compression section
in compression), `make bench-scale` (scale), `make bench-large-upload` (large_upload), Orthanc as the
reference server they compare with (orthanc), and what they share (common: timing, synthetic images,
a fresh database, the local gateway in processes of its own, the report stream)."""
