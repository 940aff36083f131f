"""The server's log: set up once at start-up (`setup`), in one of two formats, and the one
line per request that each front door writes (`request`).

Formats (`lens serve --log-format`), on stderr, for every logger of the process (lens's,
grpc's, uvicorn's), errors and their tracebacks included:
- `text`: `TIME LEVEL LOGGER: MESSAGE key=value ...`, one line a record (a traceback follows
  on the lines after it), for a person at a terminal;
- `json`: one JSON object a line: `time` (ISO 8601, UTC, milliseconds), `level`, `logger`,
  `message`, the record's structured fields, and `exception` (the traceback, one string)
  where there is one; for a log pipeline.

A record's structured fields ride on it as `extra=fields(...)`. A record written while a
request is handled carries that request's `request_id` too, so the boundary's line about an
error and the request's own line share it.

Requests: each front door (`lens_server.services.calls` for gRPC, `lens_server.http.metering`
for HTTP) writes one line per request on the `lens.requests` logger: at info, or at debug for
the calls that need no key (health, reflection, readiness, metrics scrapes, the schema), so
that probes do not fill the log. Its fields: `request_id` (the client's `x-request-id` where
it sent a usable one, else made here), `transport`, `method` (the gRPC method, or the HTTP
method and route template, never the path a client sent), `model` (NAME:VERSION, where a
version served the request), `inputs` (embedded for it), `status` (the gRPC code name, or the
HTTP status), `duration_ms`, `client` (the API key's entry, as `key keys.txt:3`, never the key;
else the peer address) and `peer`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TextIO

from lens_server.config import LOG_FORMATS
from lens_server.metrics import current_call

if TYPE_CHECKING:
    from lens_server.metrics import Call

# The header (HTTP) and metadata key (gRPC) a request id travels in, both ways.
REQUEST_ID = "x-request-id"
# A client's request id is used when it is 1..128 printable ASCII characters, no spaces;
# anything else is ignored and an id made instead (it goes into every line of the request).
_USABLE_ID = re.compile(r"[!-~]{1,128}")

REQUESTS = logging.getLogger("lens.requests")
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

# Where a record's structured fields ride (`extra=fields(...)`).
_FIELDS = "lens_fields"


def setup(level: str = "info", format: str = "text", stream: TextIO | None = None) -> None:
    """Every log record of the process to `stream` (stderr) in `format`, from `level` up;
    replaces what handlers the root logger had. ValueError names a level or format that is
    neither of those known."""
    if level.lower() not in LEVELS:
        raise ValueError(f"log level {level!r}: use one of {', '.join(LEVELS)}")
    if format not in LOG_FORMATS:
        raise ValueError(f"log format {format!r}: use one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS[level.lower()])


def fields(**values: Any) -> dict[str, Any]:
    """`extra=` for a log call: its structured fields (JSON values)."""
    return {_FIELDS: values}


def request_id(sent: str | bytes | None) -> str:
    """The id of a request: `sent` (its `x-request-id`) where usable, else a new random
    uuid4 as 32 hex digits."""
    if isinstance(sent, bytes):
        sent = sent.decode("latin-1")
    if sent and _USABLE_ID.fullmatch(sent):
        return sent
    # uuid.uuid4().hex, at a fifth of its cost: the random bytes with its version and variant.
    made = bytearray(os.urandom(16))
    made[6] = made[6] & 0x0F | 0x40
    made[8] = made[8] & 0x3F | 0x80
    return made.hex()


def request(
    call: Call,
    transport: str,
    method: str,
    status: str | int,
    seconds: float,
    peer: str,
    quiet: bool = False,
) -> None:
    """The one line of a finished request (at debug where `quiet`: probes and scrapes)."""
    level = logging.DEBUG if quiet else logging.INFO
    if not REQUESTS.isEnabledFor(level):
        return
    values: dict[str, Any] = {
        "request_id": call.request_id,
        "transport": transport,
        "method": method,
    }
    if call.model:
        values["model"] = f"{call.model}:{call.version}"
    values["inputs"] = call.inputs
    values["status"] = status
    values["duration_ms"] = round(seconds * 1000, 3)
    values["client"] = call.client or peer
    values["peer"] = peer
    REQUESTS.handle(_request_record(level, values))


# What every request line's record holds but its time, level and fields. Copied, not made by
# `REQUESTS.log`, which looks up the caller's file and line in the stack and the thread and
# process (the event loop's, the same for every line): half a line's cost, and no line shows
# them.
_RECORD = logging.LogRecord(REQUESTS.name, logging.INFO, "", 0, "request", None, None).__dict__
_STARTED = time.time()


def _request_record(level: int, values: dict[str, Any]) -> logging.LogRecord:
    record = logging.LogRecord.__new__(logging.LogRecord)
    record.__dict__.update(_RECORD)
    now = time.time()
    record.created, record.msecs = now, (now - int(now)) * 1000
    record.relativeCreated = (now - _STARTED) * 1000
    record.levelno, record.levelname = level, logging.getLevelName(level)
    setattr(record, _FIELDS, values)
    return record


def _fields_of(record: logging.LogRecord) -> Mapping[str, Any]:
    values: Mapping[str, Any] = getattr(record, _FIELDS, None) or {}
    if "request_id" not in values and (call := current_call()) is not None and call.request_id:
        values = {"request_id": call.request_id, **values}
    return values


_second: list[Any] = [-1, ""]  # the last second formatted, and its text


def _utc(record: logging.LogRecord) -> str:
    second = int(record.created)
    if second != _second[0]:  # formatted once a second, not once a line
        _second[:] = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{_second[1]}.{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    """`TIME LEVEL LOGGER: MESSAGE key=value ...`; a value with a space, quote or `=` in it
    (or none) is written as a JSON string, so a line splits back into its fields."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_utc(record)} {record.levelname} {record.name}: {record.getMessage()}"
        values = _fields_of(record)
        if values:
            line += " " + " ".join(f"{k}={_text_value(v)}" for k, v in values.items())
        if record.exc_info or record.exc_text or record.stack_info:
            line += "\n" + self._trace(record)
        return line

    def _trace(self, record: logging.LogRecord) -> str:
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        parts = [record.exc_text or "", self.formatStack(record.stack_info or "")]
        return "\n".join(p for p in parts if p)


def _text_value(value: Any) -> str:
    if isinstance(value, int | float):
        return str(value)
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if not text or _QUOTED(text):
        return json.dumps(text)
    return text


_QUOTED = re.compile(r'[\s"=]').search  # what a text value is quoted for


class JsonFormatter(TextFormatter):
    """One JSON object a record: time, level, logger, message, its fields, `exception`."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": _utc(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        document.update(_fields_of(record))
        if record.exc_info or record.exc_text or record.stack_info:
            document["exception"] = self._trace(record)
        return _JSON.encode(document)


_JSON = json.JSONEncoder(default=str)
