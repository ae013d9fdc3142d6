"""UploadKeys: a writing upload's unwrapped key kept between its PATCHes, and when not."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import upload_keys
from gateway.catalog.base import Upload
from gateway.catalog.sqlite import SQLiteCatalog
from gateway.errors import ERR, GatewayError
from gateway.keys.base import WrappedKey
from gateway.keys.keyring import LocalKeyring
from gateway.reader import Reader
from gateway.runner import Runner
from gateway.sealed import new_header
from gateway.suites import SUITE_AES256GCM, new_dek
from gateway.upload_keys import KEEP_KEY_FOR, UploadKeys
from tests.fakes import MemoryStore, upload_row


class CountingKeyring(LocalKeyring):
    """The local keyring, counting its unwraps."""

    unwraps = 0

    def unwrap(self, wrapped: WrappedKey, *, upload_id: str, dek_id: bytes) -> bytes:
        self.unwraps += 1
        return super().unwrap(wrapped, upload_id=upload_id, dek_id=dek_id)


class Monotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def keyring(tmp_path: Path) -> CountingKeyring:
    keys = CountingKeyring.open(tmp_path / "keyring.json")
    assert isinstance(keys, CountingKeyring)
    return keys


@pytest.fixture
def monotonic() -> Monotonic:
    return Monotonic()


@pytest.fixture
def service(tmp_path: Path, keyring: CountingKeyring, monotonic: Monotonic) -> Iterator[UploadKeys]:
    store, catalog, runner = MemoryStore(), SQLiteCatalog(tmp_path / "catalog.sqlite3"), Runner(1)
    yield UploadKeys(
        store=store,
        catalog=catalog,
        keys=keyring,
        runner=runner,
        reader=Reader(store, catalog, keyring),
        store_name="folder",
        monotonic=monotonic,
    )
    runner.close()
    catalog.close()


def new_upload(keys: LocalKeyring, upload_id: str = "u1") -> tuple[Upload, WrappedKey]:
    dek, dek_id = new_dek(SUITE_AES256GCM), os.urandom(16)
    header = new_header(
        dek, upload_id=upload_id, dek_id=dek_id, segment_size=1 << 20, plaintext_size=None
    )
    wrapped = keys.wrap(dek, upload_id=upload_id, dek_id=dek_id)
    return upload_row(upload_id, header=header.encode(), dek_id=dek_id), wrapped


def test_a_writing_uploads_key_is_unwrapped_once_while_kept(
    service: UploadKeys, keyring: CountingKeyring, monotonic: Monotonic
) -> None:
    upload, wrapped = new_upload(keyring)
    first = service.writing_sealer(upload, wrapped)
    monotonic.now += KEEP_KEY_FOR - 1
    assert service.writing_sealer(upload, wrapped) is first
    monotonic.now += KEEP_KEY_FOR - 1  # each use keeps it as long again
    assert service.writing_sealer(upload, wrapped) is first
    assert keyring.unwraps == 1
    assert service.holds_key(upload.id)


def test_a_kept_key_goes_after_its_time(
    service: UploadKeys, keyring: CountingKeyring, monotonic: Monotonic
) -> None:
    upload, wrapped = new_upload(keyring)
    first = service.writing_sealer(upload, wrapped)
    monotonic.now += KEEP_KEY_FOR
    other, other_wrapped = new_upload(keyring, "u2")
    service.writing_sealer(other, other_wrapped)  # any use drops what expired
    assert not service.holds_key(upload.id)
    assert service.writing_sealer(upload, wrapped) is not first
    assert keyring.unwraps == 3


def test_a_rewrapped_key_is_unwrapped_again(service: UploadKeys, keyring: CountingKeyring) -> None:
    upload, wrapped = new_upload(keyring)
    first = service.writing_sealer(upload, wrapped)
    rewrapped = keyring.rewrap(wrapped, upload_id=upload.id, dek_id=upload.dek_id)
    before = keyring.unwraps
    second = service.writing_sealer(upload, rewrapped)
    assert second is not first and keyring.unwraps == before + 1
    assert service.writing_sealer(upload, rewrapped) is second


def test_a_shredded_key_is_never_served_from_memory(
    service: UploadKeys, keyring: CountingKeyring
) -> None:
    upload, wrapped = new_upload(keyring)
    service.writing_sealer(upload, wrapped)
    with pytest.raises(GatewayError) as caught:
        service.writing_sealer(upload, None)
    assert caught.value.err is ERR.UPLOAD_GONE
    assert not service.holds_key(upload.id)


def test_forget_drops_the_key(service: UploadKeys, keyring: CountingKeyring) -> None:
    upload, wrapped = new_upload(keyring)
    service.writing_sealer(upload, wrapped)
    service.forget(upload.id)
    assert not service.holds_key(upload.id)
    service.writing_sealer(upload, wrapped)
    assert keyring.unwraps == 2


def test_other_uses_of_the_key_keep_nothing(service: UploadKeys, keyring: CountingKeyring) -> None:
    upload, wrapped = new_upload(keyring)
    service.sealer(upload, wrapped)
    assert not service.holds_key(upload.id)


def test_at_most_keys_kept_the_least_recently_used_go(
    service: UploadKeys, keyring: CountingKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upload_keys, "KEYS_KEPT", 2)
    uploads = [new_upload(keyring, f"u{i}") for i in range(3)]
    for upload, wrapped in uploads:
        service.writing_sealer(upload, wrapped)
    assert [service.holds_key(u.id) for u, _ in uploads] == [False, True, True]


async def test_kept_keys_expire_with_no_patch_to_come(
    service: UploadKeys,
    keyring: CountingKeyring,
    monotonic: Monotonic,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(upload_keys, "KEEP_KEY_FOR", 0.05)
    upload, wrapped = new_upload(keyring)
    service.writing_sealer(upload, wrapped)
    monotonic.now += 1
    await asyncio.sleep(0.1)
    assert not service.holds_key(upload.id)
