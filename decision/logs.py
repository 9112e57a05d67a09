"""Log output: text for a terminal, JSON lines for a log pipeline (``--log-format``).

Every record is one line. In JSON a line carries ``ts``, ``level``, ``logger``, ``msg``
and, for request lines (logger ``decision.access``), their fields: ``method``,
``code``, ``duration_ms``, ``client``, ``peer`` and, for Decide, ``decision_id``
(the id the client got back, to join a decision with its outcome later). Tokens are
never logged.

Which requests are logged is ``--access-log-sample``: every request that fails, and
that fraction of the successful ones (default 0: none; 1: all).

In JSON, a serving process also turns what others write to its standard error into
JSON lines (``capture_stderr``): gRPC's C core prints its messages (a failed TLS
handshake, say) straight to file descriptor 2, bypassing Python's logging. File
descriptor 2 then is a pipe, read by a thread that logs each line, gRPC's as logger
``grpc`` (with its level and ``source``, the C file and line), anything else as logger
``stderr``; the log handler writes to a duplicate of the original descriptor 2, so
its own lines never come back through the pipe.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import sys
import threading
import time

ACCESS = "decision.access"
FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            out.update(fields)
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"), default=str)


class TextFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(name)s %(levelname)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return line


def configure(fmt: str = "text", level: int = logging.INFO,
              capture_stderr: bool = False) -> None:
    """Route the root logger to stderr in ``fmt``, replacing earlier handlers.

    With ``fmt="json"`` and ``capture_stderr`` (a serving process), whatever else is
    written to file descriptor 2 from then on (gRPC's C core, a stray traceback) is
    logged as JSON lines too (see the module's documentation)."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}, got {fmt!r}")
    captured = _capture_fd2() if fmt == "json" and capture_stderr else None
    if captured is not None:
        handler: logging.Handler = _QuietStreamHandler(captured)
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)


class _QuietStreamHandler(logging.StreamHandler):
    """A handler that drops a line it cannot write instead of printing the error to
    ``sys.stderr``: that is the captured descriptor 2, so the error would come back as
    a line to log, and fail again, without end."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


# gRPC C core (abseil) lines: "E1206 04:14:17.952803   28321 file.cc:2563] message"
_CORE_LINE = re.compile(r"^([IWEF])\d{4} \d{2}:\d{2}:\d{2}\.\d+\s+\d+ ([^\s\]]+:\d+)\] ?(.*)$")
_CORE_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR,
                "F": logging.CRITICAL}
_captured: tuple | None = None  # (stream on the original fd 2, reader thread, that fd)
_capture_lock = threading.Lock()


def _capture_fd2():
    """Point file descriptor 2 at a pipe read by a daemon thread that logs each line;
    return a text stream on a duplicate of the original descriptor 2, for the log
    handler. Once per process (a second call returns the same stream). None, and
    nothing changed, when there is no descriptor 2 (started with it closed)."""
    global _captured
    with _capture_lock:
        if _captured is not None:
            return _captured[0]
        try:
            sys.stderr.flush()
            original = os.dup(2)
        except (OSError, ValueError, AttributeError):
            return None
        os.set_inheritable(original, False)
        stream = open(original, "w", buffering=1, encoding="utf-8",  # noqa: SIM115 (kept)
                      errors="backslashreplace", closefd=True)
        read_fd, write_fd = os.pipe()
        os.set_inheritable(read_fd, False)
        os.dup2(write_fd, 2)  # fd 2 stays inheritable, as standard error is
        os.close(write_fd)
        reader = threading.Thread(target=_log_lines, args=(read_fd,), name="decision-stderr",
                                  daemon=True)
        reader.start()
        _captured = (stream, reader, original)
        atexit.register(_release_fd2)
        return stream


def _log_lines(read_fd: int) -> None:
    """Log each line written to the captured descriptor 2 until the pipe closes."""
    with open(read_fd, "rb", closefd=True) as pipe:
        for raw in pipe:
            line = raw.decode("utf-8", errors="backslashreplace").rstrip("\r\n")
            if line.strip():
                # never let the reader die: the pipe would fill up and block the writers
                with contextlib.suppress(Exception):
                    _log_line(line)


def _log_line(line: str) -> None:
    core = _CORE_LINE.match(line)
    if core is not None:
        logging.getLogger("grpc").log(_CORE_LEVELS[core[1]], "%s", core[3],
                                      extra={"fields": {"source": core[2]}})
    else:
        logging.getLogger("stderr").warning("%s", line)


RELEASE_WAIT_S = 2.0  # at exit: how long to wait for the lines still in the pipe


def _release_fd2() -> None:
    """At exit: put the original descriptor 2 back, so the pipe's last writer closes,
    and log the lines still in it (a fatal error printed just before exit)."""
    if _captured is None:
        return
    stream, reader, original = _captured
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os.dup2(original, 2)
    reader.join(RELEASE_WAIT_S)
    try:
        stream.flush()
    except (OSError, ValueError):
        pass
