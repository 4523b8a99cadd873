"""The code every function shares, one package per concern; lower packages never import higher ones
(import-linter contracts in pyproject.toml, run by `make lint`; docs/architecture.md draws it):

    http     HTTP for the Lambda functions (FastAPI and Starlette, the image responses and cache)
    jobs     ops jobs: cleanup, tiering
    scans    uploads, image reads for a request, the scan JSON
    storage  the S3 tier: tiers, the images bucket, key locks and the orphan list
    imaging  decode, analyze and render an upload (numpy, Pillow, pydicom: the upload function only)
    auth     passwords, sessions, tokens, the login throttle, signed URLs, the origin lock
    db       the PostgreSQL connection and every request-path query
    core     settings, secrets, errors, logs and metrics
"""
