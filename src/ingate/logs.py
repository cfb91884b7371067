"""The process's logging, configured once: one handler on stderr, as text or as JSON lines.

`configure(level, fmt)` is what `ingate serve --log-level --log-format` calls. ingate's loggers
(`ingate.*`) and uvicorn's log at `level`; every other library logs at WARNING and above, so a
debug run does not print what a client library traces (headers, bodies).

A record may carry structured fields (`extra={"fields": {...}}`): JSON lines hold them as keys,
text lines append them as `key=value`. The access line (`ingate.access`, ingate.api.access) is
such a record. What ingate logs names requests, keys and rules by id and counts what was decided:
it never holds a prompt, a generated or withheld text, a PII value or a key (tests/test_leaks.py).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO, Any

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
OURS = ("ingate", "uvicorn")  # the loggers that follow --log-level; the rest stay at WARNING


def _ts(record: logging.LogRecord) -> str:
    t = time.gmtime(record.created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    f = getattr(record, "fields", None)
    return f if isinstance(f, dict) else {}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, then the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": _ts(record), "level": record.levelname.lower(), "logger": record.name,
                               "message": record.getMessage()}
        out |= _fields(record)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`TIME LEVEL LOGGER: message key=value ...`, a value with spaces or quotes JSON-quoted."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_ts(record)} {record.levelname} {record.name}: {record.getMessage()}"
        for k, v in _fields(record).items():
            s = v if isinstance(v, str) and v and not any(c in v for c in ' "=\n') else \
                json.dumps(v, ensure_ascii=False, default=str, separators=(",", ":"))
            line += f" {k}={s}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure(level: str = "info", fmt: str = "text", stream: IO[str] | None = None) -> logging.Handler:
    """Install ingate's handler on the root logger, replacing the one a previous call installed (so
    configuring twice never doubles a line). Returns the handler."""
    if level not in LEVELS:
        raise ValueError(f"log level {level!r}: one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: one of {', '.join(FORMATS)}")
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "ingate", False)]:
        root.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.ingate = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in OURS:
        logging.getLogger(name).setLevel(level.upper())
    return handler
