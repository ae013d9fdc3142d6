"""How fast a client switching gateway instances mid-PATCH gets its upload back.

    .venv/bin/python benchmarks/instance_switch.py              # 20 switches
    .venv/bin/python benchmarks/instance_switch.py --switches 50

Two gateways share a PostgreSQL catalog (a temp cluster, tests/postgres.py), one
SeaweedFS bucket and one keyring, as in tests/test_cluster.py. Each switch: a PATCH
of 3 MiB on one instance stalls after 1 MiB (the phone lost its network); 0.3 s later
the client HEADs the upload on the other instance and PATCHes the rest. Printed: the
HEAD's time to answer (the other instance let go, saved and the new one took the
upload: the lock release across instances) and HEAD + PATCH, median and worst. The
switches alternate direction. Everything runs on 127.0.0.1 and is stopped by PID.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import WORK, MiB, log

from tests.cluster import Cluster, switch_networks
from tests.postgres import start_postgres
from tests.s3server import SeaweedS3
from tests.server import S3Target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--switches", type=int, default=20)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    postgres = start_postgres()
    s3 = SeaweedS3()
    cluster: Cluster | None = None
    try:
        s3.start()
        database = postgres.create_database()
        target = S3Target(s3.endpoint, s3.access_key, s3.secret_key, s3.fresh_bucket("switch"))
        root = Path(tempfile.mkdtemp(prefix="switch-", dir=WORK))
        cluster = Cluster(root, postgres.dsn(database), target).start(2)
        data = os.urandom(3 * MiB)
        heads, totals = [], []
        for n in range(args.switches):
            old, new = (cluster[0], cluster[1]) if n % 2 == 0 else (cluster[1], cluster[0])
            switch = switch_networks(old, new, data)
            heads.append(switch.head)
            totals.append(switch.total)
            head_ms, total_ms = switch.head * 1000, switch.total * 1000
            log(f"switch {n + 1}: HEAD {head_ms:.0f} ms, + PATCH {total_ms:.0f} ms")
        print(f"instance switches: {len(heads)}")
        for name, values in (("HEAD answered", heads), ("HEAD + PATCH", totals)):
            print(
                f"  {name:14} median {statistics.median(values) * 1000:6.0f} ms"
                f"   worst {max(values) * 1000:6.0f} ms"
            )
    finally:
        if cluster is not None:
            cluster.stop()
        s3.close()
        postgres.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
