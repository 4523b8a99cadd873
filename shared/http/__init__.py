"""HTTP for the Lambda functions: from API Gateway's event to our calls and back.

    entry            Lambda entry points (Mangum, origin lock, database budget, logs and metrics)
    errors           the JSON error shape and the domain-error -> status map
    image_responses  Range, If-None-Match and the image response of the images function
    image_cache      a warm container's memory of the images it served
    app              FastAPI: the app factory, the owner dependency, multipart uploads
    schemas          the JSON shapes as Pydantic models, for openapi.json

This file imports nothing: the images function is plain Starlette and imports entry, errors,
image_responses and image_cache alone; FastAPI and Pydantic load only with app and schemas
(an import-linter contract in pyproject.toml and tests/test_images.py hold it so).
"""
