"""A FastAPI app behind Mangum, as the real functions are, to check the gateway end to end."""

from __future__ import annotations

import hashlib

from fastapi import FastAPI, Request, Response
from mangum import Mangum

from tests.gateway_fixtures.echo import BINARY_PAYLOAD

app = FastAPI()


@app.post("/asgi/upload")
async def upload(request: Request) -> dict[str, object]:
    body = await request.body()
    return {
        "sha256": hashlib.sha256(body).hexdigest(),
        "length": len(body),
        "content_type": request.headers.get("content-type"),
        "scheme": request.url.scheme,
    }


@app.api_route("/asgi/image", methods=["GET", "HEAD"])
def image() -> Response:
    return Response(BINARY_PAYLOAD, media_type="image/png")


handler = Mangum(app, lifespan="off")
