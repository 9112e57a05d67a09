"""Log output: text for a terminal, JSON lines for a log pipeline (``--log-format``).

Every record is one line. In JSON a line carries ``ts``, ``level``, ``logger``, ``msg``
and, for request lines (logger ``decision.access``), their fields: ``method``,
``code``, ``duration_ms``, ``client``, ``peer`` and, for Decide, ``decision_id``
(the id the client got back, to join a decision with its outcome later). Tokens are
never logged.

Which requests are logged is ``--access-log-sample``: every request that fails, and
that fraction of the successful ones (default 0: none; 1: all).
"""

from __future__ import annotations

import json
import logging
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


def configure(fmt: str = "text", level: int = logging.INFO) -> None:
    """Route the root logger to stderr in ``fmt``, replacing earlier handlers."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}, got {fmt!r}")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
