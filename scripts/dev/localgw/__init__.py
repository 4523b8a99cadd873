"""The local API Gateway (HTTP API, payload format 2.0) for the Lambda handlers named in serverless.yml:
`python -m scripts.dev.localgw [--port 3000] [--workers N] ...` (`make run` starts it too).

One module per concern; each imports only modules listed above it:

    routes.py      serverless.yml -> Route per httpApi event; how a request finds its route
    events.py      the AWS-exact v2.0 event and the Lambda context (what tests and benchmarks import)
    responses.py   an HTTP response as a tuple, and the project's one JSON error shape
    containers.py  each function's containers (timeouts, lost containers), Lambda's payload limits and
                   the result's shape, and Gateway, which routes an event to its function
    cors.py        CORS as HTTP API applies provider.httpApi.cors
    cdn.py         the Cache-Control CloudFront gives viewers on a path (infra/web.yml's policies)
    hosts.py       the Host names the gateway answers
    static.py      /openapi.json, /docs and the web app (web/) at /, local only
    server.py      uvicorn (h11): the ASGI app, connection limits, the server and its worker processes
    __main__.py    the command line

Nothing is imported here: `import scripts.dev.localgw.events` loads neither uvicorn nor h11.
"""
