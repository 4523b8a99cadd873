"""Packaging: one Lambda zip per function (lambda_packages, run by infra/plugins/python-packages.js,
with the CPython 3.12 that find-lambda-python.sh finds), what `make package` built (package_report),
`make openapi` (openapi) and serverless.yml read as data (serverless_yml)."""
