"""Logs and metrics the AWS way (Powertools): one JSON line per request, and EMF metrics on stdout.

Each HTTP function's Lambda entry point (shared.http.entry.lambda_handler, and
lambda_handler_for_base64_bodies for the images function) is wrapped by `observed`.
After every invocation it logs one line at INFO (route template, status, latency, request ids, cold
start) and flushes that invocation's counters as one Embedded Metric Format document, which
CloudWatch turns into metrics. Our stdlib loggers (shared.*, functions.*) and Mangum's print through
the same Powertools JSON handler, one line per record.

Never logged: headers (tokens), query strings (URL signatures), bodies and filenames, the raw path
(the route template says where), and exception messages, which can carry patient data or SQL values:
a traceback keeps its frames and the exception's type.

Log level: POWERTOOLS_LOG_LEVEL (or LOG_LEVEL), default INFO; Powertools reads it.

LOG_FORMAT: `json` (the default, and what a deployed function prints) or `text`, which the local
gateway (`make run`) sets unless told otherwise: records as readable lines, and no request line or EMF
document per invocation (the gateway prints one readable line per request instead).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable, Collection, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.logging import Logger
from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

if TYPE_CHECKING:
    from logging import _SysExcInfoType

SERVICE = "ctscan-store"
NAMESPACE = "CtScanStore"  # set here: POWERTOOLS_METRICS_NAMESPACE need not be

# The counters (EMF metric names); dimensions: service and function_name.
UPLOADS = "Uploads"
DUPLICATE_UPLOADS = "DuplicateUploads"
IMAGE_BYTES_SERVED = "ImageBytesServed"
CLIENT_ERRORS = "Responses4xx"
SERVER_ERRORS = "Responses5xx"
# An exception our own decode code raised (a defect), answered 500 instead of passing for a damaged file.
DECODE_DEFECTS = "DecodeDefects"

# Our loggers, printed as JSON at the service's level. Mangum's from WARNING only: at INFO it logs
# every request with its raw path.
OUR_LOGGERS = frozenset({"shared", "functions"})
LIBRARY_LOGGERS = frozenset({"mangum"})

LambdaHandler = Callable[[dict[str, Any], Any], dict[str, Any]]

# One metric set per thread: the local gateway runs concurrent invocations in threads of one
# process, and Powertools' Metrics shares its set across instances. Reused, not made per request
# (making one costs ~30 µs); every flush empties it.
_thread_metrics = threading.local()
# Counters code deep in a request adds to (count()); a list per invocation, shared by the threads and
# tasks of that invocation (they copy the context, and with it the same list).
_invocation_counters: ContextVar[list[str] | None] = ContextVar("invocation_counters", default=None)


def count(name: str) -> None:
    """Add 1 to counter `name` in the current invocation's metrics; outside an invocation, nothing."""
    counters = _invocation_counters.get()
    if counters is not None:
        counters.append(name)


def text_logs() -> bool:
    """LOG_FORMAT=text: readable lines, for a person at a terminal (the local gateway's default)."""
    return os.environ.get("LOG_FORMAT", "").strip().lower() == "text"


class _Formatter(LambdaPowertoolsFormatter):
    """Powertools' JSON record, except that a traceback keeps its frames and type, never the message;
    with LOG_FORMAT=text, `LEVEL logger: message` and that traceback."""

    def format(self, record: logging.LogRecord) -> str:
        if not text_logs():
            return super().format(record)
        line = f"{record.levelname} {record.name}: {record.getMessage()}"
        return line + "\n" + self.formatException(record.exc_info) if record.exc_info else line

    def formatException(self, ei: _SysExcInfoType) -> str:
        kind, _, trace = ei
        if kind is None:
            return ""
        return "Traceback (most recent call last):\n" + "".join(traceback.format_tb(trace)) + kind.__name__


# serialize_stacktrace=False: Powertools' structured stack_trace would carry the exception's message.
logger = Logger(service=SERVICE, logger_formatter=_Formatter(utc=True, serialize_stacktrace=False))


@functools.cache
def configure_logging() -> None:
    """Our stdlib loggers and Mangum's print through the Powertools handler (and only there: no duplicates)."""
    for name in OUR_LOGGERS | LIBRARY_LOGGERS:
        logging.getLogger(name)  # registered now, so that loggers created later inherit the setup
    copy_config_to_registered_loggers(source_logger=logger, include=set(OUR_LOGGERS))
    copy_config_to_registered_loggers(source_logger=logger, include=set(LIBRARY_LOGGERS), log_level=logging.WARNING)


def observed(
    handler: LambdaHandler,
    *,
    status_metrics: Mapping[int, str] | None = None,
    status_metric_routes: Collection[str] | None = None,
    bytes_metric: str | None = None,
) -> LambdaHandler:
    """An HTTP function's Lambda handler that logs one line per invocation and flushes its metrics once.

    status_metrics: the counter each response status adds 1 to (the upload function: 201 is an
    upload, 200 a duplicate), only for the route keys in status_metric_routes when given (a started
    presigned upload answers 201 too, but is not yet an upload). bytes_metric: the counter that sums
    the Content-Length of 200 and 206 responses to GET. Every function counts its 4xx and 5xx responses.
    """
    configure_logging()
    counted = dict(status_metrics or {})
    # Not Powertools' inject_lambda_context: it appends these keys to the one formatter a process
    # shares and tracks one cold start per process, while the local gateway runs every function, and
    # concurrent requests, in threads of one process. So the keys live in Powertools' thread-safe
    # (ContextVar) set, and each handler counts its own cold start.
    cold = True

    def invoke(event: dict[str, Any], context: Any) -> dict[str, Any]:
        nonlocal cold
        started = time.perf_counter()
        function_name = getattr(context, "function_name", None)
        logger.thread_safe_append_keys(
            cold_start=cold,
            function_name=function_name,
            function_request_id=getattr(context, "aws_request_id", None),
            correlation_id=(event.get("requestContext") or {}).get("requestId"),
        )
        cold = False
        result: dict[str, Any] | None = None
        counted_inside: list[str] = []
        context_token = _invocation_counters.set(counted_inside)
        try:
            result = handler(event, context)
            return result
        finally:
            # A handler that raises is a 500 at the gateway.
            status = int(result.get("statusCode", 500)) if result is not None else 500
            _invocation_counters.reset(context_token)
            if not text_logs():  # LOG_FORMAT=text: the local gateway prints the request's one readable line
                logger.info(
                    "request",
                    extra={
                        "route": event.get("routeKey"),
                        "status_code": status,
                        "latency_ms": round((time.perf_counter() - started) * 1000, 1),
                    },
                )
                in_scope = status_metric_routes is None or event.get("routeKey") in status_metric_routes
                counters = [counted[status]] if status in counted and in_scope else []
                if status >= 400:
                    counters.append(CLIENT_ERRORS if status < 500 else SERVER_ERRORS)
                counters += counted_inside
                served = _body_bytes(event, result) if bytes_metric and status in (200, 206) else 0
                _flush_metrics(function_name, counters, {bytes_metric: served} if bytes_metric and served else {})
            logger.thread_safe_clear_keys()

    return invoke


def _flush_metrics(function_name: str | None, counters: list[str], byte_counts: Mapping[str, int]) -> None:
    """One invocation's metrics as one EMF document on stdout; nothing when there are none."""
    if not counters and not byte_counts:
        return  # Powertools would only warn that there is nothing to publish
    metrics: EphemeralMetrics | None = getattr(_thread_metrics, "metrics", None)
    if metrics is None:
        metrics = _thread_metrics.metrics = EphemeralMetrics(namespace=NAMESPACE, service=SERVICE)
    if function_name:
        metrics.add_dimension(name="function_name", value=function_name)
    for name in counters:
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)
    for name, size in byte_counts.items():
        metrics.add_metric(name=name, unit=MetricUnit.Bytes, value=size)
    metrics.flush_metrics(raise_on_empty_metrics=False)


def _body_bytes(event: dict[str, Any], result: dict[str, Any] | None) -> int:
    """The body size a response declares (Content-Length); 0 for HEAD, which sends none."""
    method = ((event.get("requestContext") or {}).get("http") or {}).get("method")
    headers = (result or {}).get("headers") or {}
    declared = next((str(value) for name, value in headers.items() if name.lower() == "content-length"), "")
    return int(declared) if method != "HEAD" and declared.isdigit() else 0
