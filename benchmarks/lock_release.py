"""How long a lease takes to change hands between two gateways sharing PostgreSQL.

    python benchmarks/lock_release.py [--rounds 20] [--poll 5.0] [--no-signals] [--dsn URL]

Two `Leases`, each on its own `PostgresCatalog` and runner (two gateways), on one
database: a PostgreSQL server of its own (tests/postgres.py) unless --dsn names one.
Each round, one gateway holds an upload with a writer waiting for body bytes, and the
other asks for it; the time is from the ask to the lease, the holder having stopped,
let go and the waiter retried. Rounds alternate the two directions. Prints each time,
then the median and the worst. With --no-signals only polling hands the lease over
(the holder sees the request at its next renewal, every --poll seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.catalog.postgres import PostgresCatalog
from gateway.leases import Leases, StopReason
from gateway.runner import Runner
from tests.postgres import start_postgres
from tests.test_leases_postgres import silent_writer


class Side:
    """One gateway's catalog, runner and leases."""

    def __init__(self, dsn: str, poll: float, signals: bool) -> None:
        self.catalog = PostgresCatalog(dsn)
        self.runner = Runner(2)
        self.leases = Leases(
            self.catalog,
            self.runner,
            ttl=30.0,
            acquire_timeout=3 * poll,
            network_timeout=60.0,
            poll_interval=poll,
            stale_after=4 * poll,
            signals=self.catalog.lease_signals() if signals else None,
        )

    def close(self) -> None:
        self.leases.close()
        self.runner.close()
        self.catalog.close()


async def hand_over(holder: Side, taker: Side, upload_id: str) -> float:
    holding = asyncio.Event()
    writer = asyncio.create_task(silent_writer(holder.leases, upload_id, holding))
    await holding.wait()
    started = time.monotonic()
    lease = await taker.leases.acquire(upload_id)
    took = time.monotonic() - started
    if await writer != StopReason.RELEASED:
        raise RuntimeError("the holder did not stop for the release request")
    await taker.leases.release(lease)
    return took


async def run(dsn: str, rounds: int, poll: float, signals: bool) -> list[float]:
    one, two = Side(dsn, poll, signals), Side(dsn, poll, signals)
    try:
        one.leases.start()
        two.leases.start()
        await asyncio.sleep(0.5)  # the listeners connect
        times = []
        for i in range(rounds):
            holder, taker = (one, two) if i % 2 == 0 else (two, one)
            times.append(await hand_over(holder, taker, f"bench-{i}"))
            print(f"round {i + 1:3d}: {times[-1] * 1000:8.1f} ms", flush=True)
        return times
    finally:
        one.close()
        two.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--poll", type=float, default=5.0, help="poll_interval, seconds")
    parser.add_argument("--no-signals", action="store_true", help="polling only")
    parser.add_argument("--dsn", help="a postgresql:// URL of an empty database")
    args = parser.parse_args()
    signals = not args.no_signals
    if args.dsn:
        times = asyncio.run(run(args.dsn, args.rounds, args.poll, signals))
    else:
        server = start_postgres()
        try:
            times = asyncio.run(run(server.dsn(), args.rounds, args.poll, signals))
        finally:
            server.stop()
    how = "polling only" if args.no_signals else "LISTEN/NOTIFY"
    print(
        f"{how}, poll {args.poll} s, {len(times)} hand-overs: "
        f"median {statistics.median(times) * 1000:.1f} ms, worst {max(times) * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
