"""HEAD during a running PATCH: the offset follows what is durable, record by record.

A client (or a dashboard) that polls HEAD while a slow PATCH runs must see each
segment as soon as it is stored and recorded, not only once more segments have
arrived behind it; and asking must not disturb a PATCH whose bytes are flowing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from tests.conftest import read_stored
from tests.rawhttp import StreamingPatch
from tests.server import GatewayProcess
from tests.tushttp import create, head_offset, segment_size, upload_id

KiB = 1 << 10


def test_head_shows_a_stored_segment_while_the_patch_goes_on(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    server = gateway_factory(GATEWAY_SEGMENT_SIZE=str(256 * KiB))
    segment = segment_size(server)
    trickle = 20 * 8 * KiB  # sent slowly after the first segment, over about 5 s
    data = os.urandom(segment + 64 * KiB + trickle)
    url = create(server, len(data))
    # The first segment and a little more arrive at once; the rest (less than a
    # segment) trickles in, 8 KiB every 0.25 s: the PATCH is alive, only slow.
    sending = StreamingPatch(
        server, url, data, 0, slow_after=segment + 64 * KiB, chunk=8 * KiB, pause=0.25
    ).begin()
    assert sending.reached.wait(60)
    seen = []
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline and not sending.done.is_set():
        seen.append(head_offset(server, url))
        if seen[-1] >= segment:
            break
        time.sleep(0.25)
    # The first segment is durable a moment after its last byte came: HEAD says so
    # while the PATCH is still sending (with only one segment behind it).
    assert seen and seen[-1] == segment, (seen, sending.sent)
    assert not sending.done.is_set(), "the PATCH ended before HEAD saw its first segment"
    sending.join()
    # Polling HEAD did not interrupt the live PATCH.
    assert sending.response is not None, sending.error
    assert sending.response.status_code == 204, sending.response.text
    assert head_offset(server, url) == len(data)
    assert read_stored(server.data_dir, upload_id(url)) == data
