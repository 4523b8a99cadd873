"""OHIF against a DICOMweb root: `python -m scripts.web.ohif --port 3001 --upstream http://127.0.0.1:3000
--dicomweb-root /api/v1/dicomweb` (`make ohif`). Fetches and prunes OHIF on first use (.data/ohif/).

OHIF_TOKEN (an environment variable, so it stays out of the process list): a bearer token added to
forwarded requests that carry none, for the study list at / (OHIF itself sends one only on viewer
routes opened with ?token=)."""

from __future__ import annotations

import argparse
import os
import sys

from scripts.web.ohif import dist
from scripts.web.ohif.server import OhifApp, listen, proxied_prefixes, serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.web.ohif", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3001, help="0: any free port (the banner names it)")
    parser.add_argument("--upstream", default="http://127.0.0.1:3000", help="where the API and DICOMweb root are")
    parser.add_argument("--dicomweb-root", default="/api/v1/dicomweb", help="a path on the upstream")
    parser.add_argument(
        "--proxy",
        action="append",
        default=[],
        metavar="PREFIX",
        help="another path prefix to forward (/api/ and the root's first segment always are)",
    )
    parser.add_argument("--no-access-log", action="store_true", help="no line per request on stderr")
    args = parser.parse_args(argv)
    try:
        root = dist.prepare()
        app = OhifApp(
            root,
            dicomweb_root=args.dicomweb_root.rstrip("/"),
            upstream=args.upstream,
            prefixes=proxied_prefixes(args.dicomweb_root, tuple(args.proxy)),
            token=os.environ.get("OHIF_TOKEN", "").strip() or None,
            access_log=not args.no_access_log,
        )
    except (RuntimeError, ValueError) as problem:
        print(f"ohif: {problem}", file=sys.stderr)
        return 2
    sock = listen(args.host, args.port)
    port = sock.getsockname()[1]
    forwarded = ", ".join(app.prefixes)
    with_token = " with OHIF_TOKEN where a request has none" if app.authorization else ""
    print(
        f"OHIF {dist.VERSION} on http://{args.host}:{port}/ (DICOMweb root {args.dicomweb_root}; "
        f"{forwarded} forwarded to {args.upstream}{with_token})",
        flush=True,
    )
    serve(app, sock)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
