"""Local development: `make run` (run), the database it uses (env, devdb), the local API gateway
(localgw/), synthetic CT DICOM for the tests and benchmarks (phantom) and `make sample` (sample)."""
