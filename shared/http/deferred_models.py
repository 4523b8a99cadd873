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


def _without_pydantic_v1() -> None:
    """FastAPI asks of each route's annotations as the route is declared, and of every object it
    encodes, whether it is a pydantic.v1 model, and imports pydantic.v1 to find out: ~100 ms of every
    FastAPI function's cold start (python -X importtime), for a package nothing here uses. Until
    pydantic.v1 is imported nothing can be one of its models, so the answer is False without
    importing it; once something has imported it, FastAPI's own check answers. (FastAPI 0.165,
    pinned; tests/test_architecture.py fails if these functions move.)"""
    import sys

    import fastapi._compat
    import fastapi.encoders
    from fastapi._compat import shared

    is_class, is_instance = shared.is_pydantic_v1_model_class, shared.is_pydantic_v1_model_instance

    def is_pydantic_v1_model_class(cls: object) -> bool:
        return "pydantic.v1" in sys.modules and is_class(cls)

    def is_pydantic_v1_model_instance(obj: object) -> bool:
        return "pydantic.v1" in sys.modules and is_instance(obj)

    shared.is_pydantic_v1_model_class = is_pydantic_v1_model_class
    shared.is_pydantic_v1_model_instance = is_pydantic_v1_model_instance
    # The modules that imported the instance check by name (FastAPI's response encoder among them).
    for module in (fastapi._compat, fastapi.encoders):
        module.is_pydantic_v1_model_instance = is_pydantic_v1_model_instance  # type: ignore[attr-defined]


_without_pydantic_v1()
