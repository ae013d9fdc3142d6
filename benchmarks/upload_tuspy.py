"""One upload with tuspy, timed; run in its own process by run.py.

    python benchmarks/upload_tuspy.py <endpoint> <file> <chunk size> '<headers JSON>'

Prints one JSON line: {"seconds": <elapsed, creation included>, "url": <upload URL>}.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tusclient import client


def main(argv: list[str]) -> int:
    endpoint, path, chunk = argv[0], argv[1], int(argv[2])
    headers = json.loads(argv[3]) if len(argv) > 3 else {}
    started = time.perf_counter()
    uploader = client.TusClient(endpoint, headers=headers).uploader(
        path, chunk_size=chunk, metadata={"filename": Path(path).name}
    )
    uploader.upload()
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "url": uploader.url}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
