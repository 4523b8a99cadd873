"""Pydantic models build their validators when first used, not when their class is defined.

Imported first by each FastAPI function's package (functions/<name>/__init__.py), before FastAPI is.
FastAPI defines ~60 pydantic models as it is imported (most of them its OpenAPI document's), and
shared.http.schemas ours, which describe responses for that document: a deployed function
(openapi_url=None) validates with a few request bodies at most, yet pydantic builds every model's
validator and serializer as its class is created, about a fifth of a FastAPI function's cold import
(make bench: cold_<function>_import_ms). `defer_build` is pydantic's own setting for putting that off
until a model is first used; set on BaseModel's config, every model defined afterwards inherits it
(a model's config is merged from its bases' at class creation). Behaviour is unchanged: a model
builds on its first validation, serialization or JSON schema (`make openapi` builds them all).
"""

from __future__ import annotations

import pydantic

pydantic.BaseModel.model_config["defer_build"] = True
