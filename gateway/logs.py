"""Structured logs: one JSON object per line, never tokens, keys or metadata values."""

from __future__ import annotations

import json
import logging
import time

# Attributes every LogRecord has; anything else came in through `extra=` and is ours.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key != "color_message":
                document[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            # The exception type and message only: a trace can quote request data.
            document["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
        return json.dumps(document, default=str)


def setup(level: str, *, json_lines: bool = True) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter() if json_lines else logging.Formatter("%(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's own access log would repeat ours without the ids; its error log stays.
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
