"""kill -9 in the middle of a PATCH, restart on the same data dir, resume from HEAD.

After every kill the offset HEAD reports must be a point the client can resume from:
never more than the bytes the client handed to the socket, never less than what was
reported before, and the bytes below it exactly the ones that were sent — which only
the final byte-for-byte comparison of the decrypted upload can prove.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import time
from collections.abc import Callable

import pytest

from tests.conftest import read_stored, sha256
from tests.rawhttp import StreamingPatch
from tests.server import GatewayProcess
from tests.tushttp import create, error_code, head_offset, patch, upload_id

MiB = 1 << 20
# A killed holder's lease is taken over once it has not been renewed for
# min(lease_ttl, 5 s); a short ttl keeps the many-kill tests quick. The tests that
# run on defaults show the default recovery time.
QUICK = {"GATEWAY_LEASE_TTL": "2"}


def _kill_mid_body(
    server: GatewayProcess, url: str, data: bytes, offset: int, slow_after: int, delay: float
) -> int:
    """Stream data[offset:], kill -9 once `slow_after` bytes are out; return bytes sent."""
    stream = StreamingPatch(server, url, data, offset, slow_after=slow_after).begin()
    assert stream.reached.wait(60), "the body never got going"
    time.sleep(delay)
    assert not stream.done.is_set(), "the PATCH ended before the kill"
    server.kill()
    # Read only after the process is gone: nothing handed over later can have arrived.
    sent = stream.sent
    stream.join()
    assert stream.response is None, "a killed server cannot have answered"
    return sent


def _restart_and_resume_point(server: GatewayProcess, url: str, low: int, high: int) -> int:
    server.start()
    offset = head_offset(server, url)
    assert low <= offset <= high, f"HEAD says {offset}; stored at least {low}, sent {high}"
    assert head_offset(server, url) == offset, "the offset moved with nobody writing"
    return offset


@pytest.mark.slow
def test_kill_9_mid_patch_repeatedly_then_resume(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    """Five kills of a 48 MiB upload (1 MiB segments), each mid-body, some after a tail."""
    rng = random.Random(7)
    server = gateway_factory(GATEWAY_SEGMENT_SIZE=str(MiB), **QUICK)
    # Not a whole number of segments: the final record is shorter than the orphan
    # parts killed writers may have left beyond the recorded ones.
    data = os.urandom(48 * MiB + 12_345)
    url = create(server, len(data), **{"Upload-Metadata": "filename Y3Jhc2guYmlu"})
    offset = 0
    progressed = 0
    for round_ in range(5):
        if round_ % 2 == 1:
            # A whole PATCH that ends mid-segment first: the next body must pick up the
            # sealed tail piece, and the kill then lands while it is being extended.
            small = 777_777 + round_
            response = patch(server, url, data[offset : offset + small], offset)
            assert response.status_code == 204, response.text
            offset += small
            assert int(response.headers["Upload-Offset"]) == offset
        before = offset
        sent = _kill_mid_body(
            server,
            url,
            data,
            offset,
            slow_after=rng.randrange(3 * MiB, 9 * MiB),
            delay=rng.uniform(0.0, 0.15),
        )
        offset = _restart_and_resume_point(server, url, before, before + sent)
        progressed += offset > before
    # Progressive commits: a kill after several segments loses only those in flight.
    assert progressed >= 3, "hardly anything sent before a kill was kept"
    response = patch(server, url, data[offset:], offset)
    assert response.status_code == 204, response.text
    assert response.headers["Upload-Offset"] == str(len(data))
    assert head_offset(server, url) == len(data)
    assert sha256(read_stored(server.data_dir, upload_id(url))) == sha256(data)


@pytest.mark.slow
def test_kill_9_mid_patch_default_segment(gateway: GatewayProcess) -> None:
    """The default 8 MiB segment: a kill 20 MiB into one body keeps whole segments only."""
    data = os.urandom(40 * MiB + 5)
    url = create(gateway, len(data))
    sent = _kill_mid_body(gateway, url, data, 0, slow_after=20 * MiB, delay=0.05)
    offset = _restart_and_resume_point(gateway, url, 0, sent)
    response = patch(gateway, url, data[offset:], offset)
    assert response.status_code == 204, response.text
    assert sha256(read_stored(gateway.data_dir, upload_id(url))) == sha256(data)


def test_kill_9_around_completion(gateway_factory: Callable[..., GatewayProcess]) -> None:
    """Kills just as the last bytes arrive: the state after restart is whole either way.

    Depending on where the kill lands the upload is unfinished (resume it), or its
    offset equals its length and the next HEAD finishes what the crash cut short.
    """
    server = gateway_factory(GATEWAY_SEGMENT_SIZE="65536", **QUICK)
    rng = random.Random(11)
    for attempt in range(3):
        data = os.urandom(3 * MiB + 1001 * attempt)
        url = create(server, len(data))
        head_start = len(data) - 600_000
        assert patch(server, url, data[:head_start], 0).status_code == 204
        # The body ends right after `slow_after`; the kill lands around the end.
        stream = StreamingPatch(
            server, url, data, head_start, slow_after=600_000 - 65536, chunk=65536, pause=0.0
        ).begin()
        assert stream.reached.wait(60)
        time.sleep(rng.uniform(0.0, 0.03))
        server.kill()
        stream.join()
        server.start()
        offset = head_offset(server, url)
        assert head_start <= offset <= len(data)
        if offset < len(data):
            response = patch(server, url, data[offset:], offset)
            assert response.status_code == 204, response.text
            assert head_offset(server, url) == len(data)
        assert read_stored(server.data_dir, upload_id(url)) == data


def test_offset_after_kill_is_exact_and_garbage_cannot_shift_it(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    """Right after a kill, a PATCH at any other offset is refused, and the stored
    prefix is the sent prefix: finishing from HEAD's offset reproduces the file."""
    server = gateway_factory(GATEWAY_SEGMENT_SIZE="65536", **QUICK)
    data = os.urandom(12 * MiB + 17)
    url = create(server, len(data))
    sent = _kill_mid_body(server, url, data, 0, slow_after=5 * MiB, delay=0.05)
    offset = _restart_and_resume_point(server, url, 0, sent)
    for wrong in {0, offset + 1, sent} - {offset}:
        response = patch(server, url, data[wrong : wrong + 1000], wrong)
        assert response.status_code == 409, (wrong, offset, response.text)
        assert response.headers["Upload-Offset"] == str(offset)
    response = patch(server, url, data[offset:], offset)
    assert response.status_code == 204, response.text
    assert read_stored(server.data_dir, upload_id(url)) == data


def test_first_patch_after_kill_is_not_locked_out(gateway: GatewayProcess) -> None:
    """Regression: the killed process's lease used to block the upload for its whole
    30 s ttl, so the first PATCH after a restart waited 10 s and got 423 Locked.
    Default settings: the stale lease is taken over within seconds, inside one request."""
    data = os.urandom(6 * MiB)
    url = create(gateway, len(data))
    sent = _kill_mid_body(gateway, url, data, 0, slow_after=2 * MiB, delay=0.05)
    offset = _restart_and_resume_point(gateway, url, 0, sent)
    started = time.monotonic()
    response = patch(gateway, url, data[offset:], offset)
    elapsed = time.monotonic() - started
    assert response.status_code == 204, response.text
    assert elapsed < 8.0, f"resuming after a crash took {elapsed:.1f} s"
    assert read_stored(gateway.data_dir, upload_id(url)) == data


def test_kill_9_mid_checksummed_patch_records_nothing(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    """With Upload-Checksum nothing is recorded before the whole body verified: a kill
    mid-body leaves the offset where it was, even though segments were stored."""
    server = gateway_factory(GATEWAY_SEGMENT_SIZE="65536", **QUICK)
    data = os.urandom(6 * MiB + 3)
    url = create(server, len(data))
    first = 100_003
    assert patch(server, url, data[:first], 0).status_code == 204
    digest = base64.b64encode(hashlib.sha1(data[first:]).digest()).decode()
    stream = StreamingPatch(
        server, url, data, first, slow_after=3 * MiB, extra={"Upload-Checksum": f"sha1 {digest}"}
    ).begin()
    assert stream.reached.wait(60)
    time.sleep(0.1)
    server.kill()
    stream.join()
    server.start()
    assert head_offset(server, url) == first
    response = patch(server, url, data[first:], first)
    assert response.status_code == 204, response.text
    assert read_stored(server.data_dir, upload_id(url)) == data


def test_sigterm_mid_patch_saves_what_arrived(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    """A graceful stop mid-body: the writer stops reading, saves every byte it took in
    (tail included), answers 503 with that offset and lets go of its lease, so after the
    restart the client resumes at once from exactly that offset."""
    server = gateway_factory(GATEWAY_SEGMENT_SIZE="65536")
    data = os.urandom(8 * MiB + 999)
    url = create(server, len(data))
    stream = StreamingPatch(server, url, data, 0, slow_after=3 * MiB, pause=0.01).begin()
    assert stream.reached.wait(60)
    time.sleep(0.1)
    server.stop()
    stream.join()
    assert stream.response is not None, stream.error
    assert stream.response.status_code == 503, stream.response.text
    assert error_code(stream.response) == "ERR_SERVER_SHUTDOWN"
    saved = int(stream.response.headers["Upload-Offset"])
    assert 0 < saved <= stream.sent
    server.start()
    assert head_offset(server, url) == saved
    started = time.monotonic()
    response = patch(server, url, data[saved:], saved)
    assert response.status_code == 204, response.text
    assert time.monotonic() - started < 2.0, "the lease was not handed back on shutdown"
    assert read_stored(server.data_dir, upload_id(url)) == data
