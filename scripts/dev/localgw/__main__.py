"""Local API Gateway (HTTP API, payload format 2.0) for the Lambda handlers named in serverless.yml."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from scripts.dev.localgw import lines
from scripts.dev.localgw.server import (
    PROJECT_ROOT,
    GatewayServer,
    default_workers,
    listening_socket,
    make_server,
    serve,
    serve_in_workers,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.dev.localgw", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "3000")))
    parser.add_argument("--containers", type=int, default=4, help="concurrent requests per function and worker")
    parser.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("LOCALGW_WORKERS", "0")) or default_workers(),
        help="gateway processes sharing the port (default: LOCALGW_WORKERS, else up to 2 by CPU count)",
    )
    parser.add_argument("--config", type=Path, default=PROJECT_ROOT / "serverless.yml")
    parser.add_argument("--stage", default="dev", help="whose params (CORS origins) to use")
    parser.add_argument("--no-access-log", action="store_true", help="no line per request on stderr")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    # One readable line per request here, unless LOG_FORMAT=json asks for what a deployed function
    # prints (its JSON log line and EMF metrics, shared.core.observability).
    log_format = os.environ.setdefault("LOG_FORMAT", "text").strip().lower()
    if log_format not in ("text", "json"):
        parser.error(f"LOG_FORMAT must be text or json, not {log_format!r}")
    # Lambda sends a function's output to CloudWatch line by line; so do we, into a pipe too, each
    # line as each request ends and whole, whichever worker process or container thread writes it.
    lines.install()
    listener = listening_socket((args.host, args.port), GatewayServer.request_queue_size)

    def make(sock: socket.socket) -> GatewayServer:
        made = make_server(
            args.host,
            args.port,
            serverless_yml=args.config,
            containers=args.containers,
            stage=args.stage,
            listener=sock,
        )
        made.access_log = not args.no_access_log
        return made

    server = make(listener)
    workers = f", {args.workers} worker processes" if args.workers > 1 else ""
    print(f"Local gateway on http://{args.host}:{server.server_address[1]}{workers}")
    for route in server.gateway.routes:
        print(f"  {route.route_key:<56} -> {route.function_name}")
    print(f"  {'GET /openapi.json, GET /docs':<56} -> the gateway (local only)")
    print(f"  {'GET /, GET /config.json and the files of web/':<56} -> the web app: http://{args.host}:{args.port}/")
    sys.stdout.flush()
    if args.workers == 1:
        serve(server)
        return 0
    return serve_in_workers(make, listener, args.workers)


if __name__ == "__main__":
    sys.exit(main())
