"""How long a frozen database takes to answer: the time budget's figures (issue 18 moved them here
from tests/test_time_budget.py, which asserts only the bound that matters, before the timeout).

The database is frozen by the tests' TCP proxy (tests/db_proxy.py): every socket stays open, nothing
comes back, as with a server stopped by SIGSTOP. Each figure is the median of a few runs, in seconds.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Callable

from shared import db
from shared.core import config
from shared.core.errors import DatabaseUnavailable

RUNS = 3
# Each answer must come before its function's timeout (the 3 s function's 503: under 3 s).
TARGETS = {"time_budget_503_3s_function_warm_s": 3.0, "time_budget_503_3s_function_cold_s": 3.0}


def _invoke_seconds(path: str, token: str, function_timeout_s: int) -> tuple[int, float]:
    from scripts.dev.localgw.events import LambdaContext, build_event
    from tests.lambda_client import LambdaClient

    client = LambdaClient()
    found = client.gateway.match("GET", path)
    assert found is not None
    route, params = found
    event = build_event(
        method="GET",
        raw_path=path,
        raw_query="",
        headers=[("host", client.host), ("authorization", f"Bearer {token}")],
        body=b"",
        source_ip="203.0.113.9",
        route=route,
        path_params=params,
    )
    context = LambdaContext(dataclasses.replace(route, timeout_s=function_timeout_s), "req-bench-budget")
    started = time.monotonic()
    raw = client.gateway._handler(route)(event, context)
    return int(raw["statusCode"]), time.monotonic() - started


def _with_env(**values: str) -> Callable[[], None]:
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    config.get_settings.cache_clear()

    def restore() -> None:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        config.get_settings.cache_clear()

    return restore


def time_budget_figures(url: str, token: str) -> dict[str, object]:
    """Seconds from a request to its 503 with the database frozen: a 3 s function, warm and cold (the
    budget ends 0.5 s before the timeout: ~2.5 s); DB_TIMEOUT_SECONDS=5 in a 15 s function (the
    statement and the reconnect share the 5 s: ~5 s, not 10); and a script outside any invocation
    with DB_TIMEOUT_SECONDS=1 (the statement and the reconnect each wait it: ~2 s)."""
    from tests.db_proxy import FreezableProxy

    samples: dict[str, list[float]] = {
        "time_budget_503_3s_function_warm_s": [],
        "time_budget_503_3s_function_cold_s": [],
        "time_budget_503_db_timeout_5_s": [],
        "time_budget_script_two_waits_of_1_s": [],
    }
    for _ in range(RUNS):
        for label, function_timeout_s, warm, db_timeout in (
            ("time_budget_503_3s_function_warm_s", 3, True, "5"),
            ("time_budget_503_3s_function_cold_s", 3, False, "5"),
            ("time_budget_503_db_timeout_5_s", 15, True, "5"),
        ):
            proxy = FreezableProxy(config.parse_database_url(url))
            restore = _with_env(DATABASE_URL=proxy.url(), DB_TIMEOUT_SECONDS=db_timeout)
            db.close_connection()
            try:
                if warm:
                    assert _invoke_seconds("/api/v1/scans", token, 10)[0] == 200
                proxy.freeze()
                status, seconds = _invoke_seconds("/api/v1/scans", token, function_timeout_s)
                assert status == 503, status
                samples[label].append(seconds)
            finally:
                proxy.thaw()
                db.close_connection()
                proxy.close()
                restore()
        proxy = FreezableProxy(config.parse_database_url(url))
        restore = _with_env(DATABASE_URL=proxy.url(), DB_TIMEOUT_SECONDS="1")
        db.close_connection()
        try:
            db.call(lambda con: con.run("SELECT 1"))
            proxy.freeze()
            started = time.monotonic()
            try:
                db.call(lambda con: con.run("SELECT 1"))
            except DatabaseUnavailable:
                samples["time_budget_script_two_waits_of_1_s"].append(time.monotonic() - started)
            else:
                raise AssertionError("a frozen database answered")
        finally:
            proxy.thaw()
            db.close_connection()
            proxy.close()
            restore()
    return {label: round(statistics.median(values), 2) for label, values in samples.items()}
