"""Logging: one line per event, as text or JSON, each carrying the request id of the HTTP
request it happened in (also returned as ``X-Request-Id`` and the body's ``request_id``).

Nothing here redacts: secrets are kept out of messages where they arise (engines redact
driver errors; passwords and tokens are never formatted into a log call), and a test scans
the logs of the whole suite for every password it issued.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from contextvars import ContextVar

REQUEST_ID: ContextVar[str] = ContextVar("broker_request_id", default="")


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", "-")
        if request_id != "-":
            event["request_id"] = request_id
        for key in ("method", "path", "route", "status", "duration_ms"):
            if hasattr(record, key):
                event[key] = getattr(record, key)
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def configure(level: str = "INFO", fmt: str = "text") -> None:
    if fmt not in ("text", "json"):
        raise ValueError("log format must be 'text' or 'json'")
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # APScheduler logs every run of the one-second sweep at INFO.
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, root.level))
