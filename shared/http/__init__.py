"""HTTP for the Lambda functions: from API Gateway's event to our calls and back.

    entry            Lambda entry points (Mangum, origin lock, database budget, logs and metrics)
    errors           the JSON error shape and the domain-error -> status map
    image_responses  Range, If-None-Match and the image response of the images function
    image_cache      a warm container's memory of the images it served
    plain            plain Starlette (scans): the app factory, the owner, FastAPI's parameter checks
    app              FastAPI: the app factory, the owner dependency, multipart uploads
    schemas          the JSON shapes as Pydantic models, for openapi.json

This file imports nothing: the images and scans functions are plain Starlette and import entry,
errors, image_responses, image_cache and plain alone; FastAPI and Pydantic load only with app and
schemas (an import-linter contract in pyproject.toml and tests/test_architecture.py hold it so).
"""
