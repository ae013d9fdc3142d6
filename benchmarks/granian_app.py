"""The gateway's app for Granian (benchmarks only): built as `gateway serve` builds a worker's.

    GATEWAY_DATA_DIR=... granian --interface asgi --factory --host 127.0.0.1 --port P \
        --workers 1 --loop uvloop --no-ws --working-dir benchmarks granian_app:app

Settings come from the GATEWAY_* variables (gateway.app.app_from_environment, what
`gateway serve --workers N` runs in each worker). Granian parses HTTP itself, so
nothing of gateway/connections.py (uvicorn's protocol with the gateway's connection
rules) is in the path; benchmarks/granian_edges.py checks what that changes.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from starlette.applications import Starlette  # noqa: E402

from gateway.app import app_from_environment  # noqa: E402


def app() -> Starlette:
    """The factory Granian calls once per worker (`--factory`)."""
    return app_from_environment()
