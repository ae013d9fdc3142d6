"""The upload client's backoff: growing pauses, Retry-After, giving up, stopping."""

from __future__ import annotations

import threading

import pytest

from gateway.client.http import Aborted, Backoff, Transient, UploadError


def test_transient_failures_are_retried_with_growing_pauses() -> None:
    pauses: list[float] = []
    calls: list[int] = []
    rereads: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise Transient("503 ERR_STORE_UNAVAILABLE")
        return "ok"

    backoff = Backoff(attempts=5, base=1.0, cap=3.0, sleep=pauses.append)
    assert backoff.run(flaky, before_retry=lambda: rereads.append(1)) == "ok"
    assert len(pauses) == len(rereads) == 3
    for pause, ceiling in zip(pauses, (1.0, 2.0, 3.0), strict=True):
        assert ceiling / 2 <= pause <= ceiling


def test_retry_after_is_honoured_up_to_the_cap() -> None:
    pauses: list[float] = []
    answers = [Transient("429", retry_after=2.0), Transient("429", retry_after=99.0)]

    def limited() -> int:
        if answers:
            raise answers.pop(0)
        return 1

    Backoff(attempts=3, base=0.1, cap=10.0, sleep=pauses.append).run(limited)
    assert pauses == [2.0, 10.0]


def test_it_gives_up_and_other_errors_are_not_retried() -> None:
    def down() -> None:
        raise Transient("PATCH failed: ConnectionError")

    with pytest.raises(UploadError, match="gave up after 2 retries"):
        Backoff(attempts=2, base=0.0, sleep=lambda _: None).run(down)

    def refused() -> None:
        raise UploadError("413 ERR_MAX_SIZE_EXCEEDED")

    with pytest.raises(UploadError, match="413"):
        Backoff(attempts=2, sleep=lambda _: pytest.fail("no pause")).run(refused)


def test_a_stopped_run_does_not_wait() -> None:
    stop = threading.Event()
    stop.set()
    with pytest.raises(Aborted):
        Backoff(attempts=3, base=60.0, stop=stop).run(lambda: (_ for _ in ()).throw(Transient("x")))
