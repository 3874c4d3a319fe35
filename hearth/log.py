"""Structured logging: JSON lines when not on a TTY, the session id on every line, never a secret."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
import time
from collections.abc import Iterator
from typing import Any

_session: contextvars.ContextVar[str | None] = contextvars.ContextVar("hearth_session", default=None)
_STD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_REDACT = ("token", "secret", "key", "password", "authorization", "credential")


@contextlib.contextmanager
def bind_session(session_id: str) -> Iterator[None]:
    """Every log line inside carries `session_id`."""
    reset = _session.set(session_id)
    try:
        yield
    finally:
        _session.reset(reset)


_TOKEN_RE = re.compile(r"((?:token|key|secret)=)[^&\s\"']+", re.IGNORECASE)


class RedactFilter(logging.Filter):
    """Removes token values from messages of loggers we do not own (uvicorn logs WebSocket URLs with the query)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = tuple(_TOKEN_RE.sub(r"\1<redacted>", a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = _TOKEN_RE.sub(r"\1<redacted>", record.msg)
        return True


class ClientNoiseFilter(logging.Filter):
    """uvicorn logs a viewer's invalid UTF-8 text frame as an ERROR with a traceback (then closes it with 1007, as it
    should): a client's garbage is not a controller error, and must not let any client flood the error log."""

    MESSAGES = frozenset({"Invalid UTF-8 sequence received from client."})

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and record.getMessage() in self.MESSAGES:
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
        return True


def install_redaction() -> None:
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "websockets", "httpx"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactFilter) for f in logger.filters):
            logger.addFilter(RedactFilter())
    errors = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, ClientNoiseFilter) for f in errors.filters):
        errors.addFilter(ClientNoiseFilter())


class _SessionFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "session_id"):
            record.session_id = _session.get()
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in vars(record).items():
        if k in _STD or k.startswith("_"):
            continue
        out[k] = "<redacted>" if any(word in k.lower() for word in _REDACT) else v
    return out


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        body.update(_extras(record))
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = _extras(record)
        sid = extras.pop("session_id", None)
        head = time.strftime("%H:%M:%S", time.localtime(record.created))
        tail = " ".join(f"{k}={v}" for k, v in extras.items())
        line = f"{head} {record.levelname[0]} {record.name}{f' [{sid[:8]}]' if sid else ''}: {record.getMessage()}"
        if tail:
            line += f" ({tail})"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(level: str = "INFO", json_lines: bool | None = None) -> None:
    """Configure the root logger once: JSON when stderr is not a TTY (or when asked)."""
    use_json = (not sys.stderr.isatty()) if json_lines is None else json_lines
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    handler.addFilter(_SessionFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    handler.addFilter(RedactFilter())
    root.setLevel(level)
    install_redaction()
    for noisy in ("uvicorn.access", "httpx", "pyroute2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
