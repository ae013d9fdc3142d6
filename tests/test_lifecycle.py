"""Data lifecycle in the services: deletion order, retention, legal holds, receipts.

In-memory store, real SQLite catalog and keyring, a fake clock."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from gateway import holds, jws, receipts
from gateway.catalog.base import Hold, Principal, Upload, UploadState
from gateway.catalog.sqlite import SQLiteCatalog
from gateway.config import Settings
from gateway.errors import ERR, GatewayError
from gateway.keys.keyring import LocalKeyring
from gateway.layout import manifest_keys
from gateway.removal import DAY, Removal
from gateway.store.base import StoreUnavailable
from gateway.wiring import Services, build_services
from tests.fakes import MemoryStore
from tests.test_uploads import Clock, body, catalog_reader
from tests.tushttp import catalog_files_holding

S = 64 * 1024
ME = Principal("alice", "t1")
RETENTION = 30


class Store(MemoryStore):
    """Deletes fail while `down`; each deletion notes whether the key was gone then."""

    def __init__(self) -> None:
        super().__init__()
        self.deleting_down = False
        self.key_gone_at_delete: list[bool] = []
        self.catalog: SQLiteCatalog | None = None

    def delete_prefix(self, prefix: str) -> None:
        assert self.catalog is not None
        upload = self.catalog.get_upload(prefix.rstrip("/"))
        if upload is not None:  # an upload's whole folder, not its tail pieces
            gone = self.catalog.wrapped_key(upload.dek_id) is None
            self.key_gone_at_delete.append(gone)
            if self.deleting_down:
                raise StoreUnavailable("injected failure")
        super().delete_prefix(prefix)


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
async def services(tmp_path: Path, store: Store, clock: Clock) -> AsyncIterator[Services]:
    settings = Settings(
        data_dir=tmp_path,
        segment_size=S,
        upload_ttl=100,
        acquire_timeout=3.0,
        retention_days=RETENTION,
    )
    catalog = SQLiteCatalog(tmp_path / "catalog.sqlite3")
    store.catalog = catalog
    built = build_services(
        settings,
        store=store,
        catalog=catalog,
        keys=LocalKeyring.open(tmp_path / "keyring.json"),
        clock=clock,
    )
    yield built
    await built.close()
    catalog.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def catalog_of(services: Services) -> SQLiteCatalog:
    catalog = services.uploads.catalog
    assert isinstance(catalog, SQLiteCatalog)
    return catalog


def public_keys(services: Services) -> dict[str, jws.PublicSigningKey]:
    return {k.kid: k for k in services.uploads.keys.public_signing_keys()}


async def complete(services: Services, size: int = 1000) -> Upload:
    upload = await services.uploads.create(ME, length=size, metadata="filename c3R1ZHk=")
    done, _ = await services.uploads.write(ME, upload.id, offset=0, body=body(os.urandom(size)))
    assert done.state == UploadState.COMPLETE
    return done


def reaped(reason: str) -> float:
    value = REGISTRY.get_sample_value("gateway_reaper_actions_total", {"reason": reason})
    return value or 0.0


def hold(services: Services, upload_id: str, case: str | None = "LIT-1") -> None:
    holds.place(catalog_of(services), upload_id, case=case, placed_by="t1/root", now=1.0)


# -- deletion order ---------------------------------------------------------------------


async def test_the_key_is_shredded_before_any_object_is_deleted(
    services: Services, store: Store, tmp_path: Path
) -> None:
    upload = await complete(services)
    wrapped = catalog_of(services).wrapped_key(upload.dek_id)
    assert wrapped is not None
    store.deleting_down = True
    with pytest.raises(GatewayError) as caught:
        await services.uploads.terminate(ME, upload.id)
    assert caught.value.err is ERR.STORE_UNAVAILABLE
    # The key went first, from the catalog's files too; the objects are still there.
    assert store.key_gone_at_delete == [True]
    assert catalog_files_holding(tmp_path, wrapped.blob) == []
    assert any(k.startswith(upload.id) for k in store.objects)
    got = catalog_of(services).get_upload(upload.id)
    assert got is not None and got.state == UploadState.TERMINATED
    assert catalog_of(services).removals_pending() == [upload.id]
    with pytest.raises(GatewayError) as gone:
        await services.uploads.get(ME, upload.id)
    assert gone.value.err is ERR.UPLOAD_NOT_FOUND
    # The store comes back: the reaper finishes the objects and the rows, with a receipt.
    store.deleting_down = False
    await services.removal.reap_once()
    assert not any(k.startswith(upload.id) for k in store.objects)
    assert catalog_of(services).get_upload(upload.id) is None
    stored = catalog_of(services).receipt(upload.id)
    assert stored is not None
    _, payload = receipts.verify(stored.jws, public_keys(services))
    assert payload["deleted_by"] == {"principal": "alice", "tenant": "t1"}
    assert payload["reason"] == "client"


async def test_a_repeated_delete_finishes_what_the_store_cut_short(
    services: Services, store: Store
) -> None:
    upload = await complete(services)
    store.deleting_down = True
    with pytest.raises(GatewayError):
        await services.uploads.terminate(ME, upload.id)
    store.deleting_down = False
    receipt = await services.uploads.terminate(ME, upload.id)
    assert receipt is not None
    assert not any(k.startswith(upload.id) for k in store.objects)
    _, payload = receipts.verify(receipt, public_keys(services))
    assert payload["upload_id"] == upload.id
    with pytest.raises(GatewayError) as again:
        await services.uploads.terminate(ME, upload.id)
    assert again.value.err is ERR.UPLOAD_NOT_FOUND


async def test_while_the_catalog_is_read_nothing_is_deleted_but_the_key_row(
    services: Services, store: Store, tmp_path: Path
) -> None:
    upload = await complete(services)
    with catalog_reader(tmp_path):
        with pytest.raises(GatewayError) as caught:
            await services.uploads.terminate(ME, upload.id)
        assert caught.value.err is ERR.KEY_SHRED_PENDING
        assert store.key_gone_at_delete == []  # objects wait for the shredding
    receipt = await services.uploads.terminate(ME, upload.id)
    assert receipt is not None and store.key_gone_at_delete == [True]


# -- receipts ---------------------------------------------------------------------------


async def test_a_delete_answers_a_signed_receipt(services: Services, store: Store) -> None:
    upload = await complete(services)
    manifest_jws = store.objects[manifest_keys(upload.id)[1]]
    wrapped = catalog_of(services).wrapped_key(upload.dek_id)
    assert wrapped is not None
    receipt = await services.uploads.terminate(ME, upload.id)
    assert receipt is not None
    kid, payload = receipts.verify(receipt, public_keys(services))
    assert kid == services.uploads.keys.signing_key().kid
    assert payload == {
        "receipt_version": 1,
        "upload_id": upload.id,
        "deleted_at": payload["deleted_at"],
        "deleted_by": {"principal": "alice", "tenant": "t1"},
        "reason": "client",
        "manifest_jws_sha256": hashlib.sha256(manifest_jws).hexdigest(),
        "dek_id": upload.dek_id.hex(),
        "kek_id": wrapped.kek_id,
        "kek_version": wrapped.kek_version,
        "key_destroyed": True,
        "objects_deleted": True,
    }
    assert payload["deleted_at"] == "1970-01-12T13:46:40.000000Z"  # the fake clock
    stored = catalog_of(services).receipt(upload.id)
    assert stored is not None and stored.jws == receipt
    assert "c3R1ZHk" not in receipt and "study" not in json.dumps(payload)


async def test_an_unfinished_upload_has_no_manifest_digest(services: Services) -> None:
    upload = await services.uploads.create(ME, length=S * 2, metadata=None)
    await services.uploads.write(ME, upload.id, offset=0, body=body(os.urandom(S + 5)))
    receipt = await services.uploads.terminate(ME, upload.id)
    assert receipt is not None
    _, payload = receipts.verify(receipt, public_keys(services))
    assert payload["manifest_jws_sha256"] is None


async def test_an_admin_deletes_any_owners_upload(services: Services) -> None:
    upload = await complete(services)
    receipt = await services.removal.delete_as_admin("cli:root", upload.id)
    assert receipt is not None
    _, payload = receipts.verify(receipt, public_keys(services))
    assert payload["deleted_by"] == {"admin": "cli:root"} and payload["reason"] == "admin"
    with pytest.raises(GatewayError) as caught:
        await services.removal.delete_as_admin("cli:root", upload.id)
    assert caught.value.err is ERR.UPLOAD_NOT_FOUND


# -- legal holds ------------------------------------------------------------------------


async def test_a_held_upload_cannot_be_deleted_by_anyone(
    services: Services, store: Store, clock: Clock
) -> None:
    upload = await complete(services)
    hold(services, upload.id)
    for attempt in (
        services.uploads.terminate(ME, upload.id),
        services.removal.delete_as_admin("cli:root", upload.id),
    ):
        with pytest.raises(GatewayError) as caught:
            await attempt
        assert caught.value.err is ERR.UPLOAD_ON_HOLD
        assert caught.value.status == 409
    # Someone else's DELETE learns nothing: 404 as for any upload not theirs.
    with pytest.raises(GatewayError) as other:
        await services.uploads.terminate(Principal("mallory", "t1"), upload.id)
    assert other.value.err is ERR.UPLOAD_NOT_FOUND
    clock.now += (RETENTION + 1) * DAY
    assert await services.removal.reap_once() == 0
    assert catalog_of(services).wrapped_key(upload.dek_id) is not None
    assert any(k.startswith(upload.id) for k in store.objects)
    # Released: deleted like any other.
    assert holds.release(catalog_of(services), upload.id)
    assert await services.uploads.terminate(ME, upload.id) is not None
    assert catalog_of(services).get_upload(upload.id) is None


async def test_expiry_skips_a_held_upload(services: Services, clock: Clock) -> None:
    upload = await services.uploads.create(ME, length=S * 2, metadata=None)
    await services.uploads.write(ME, upload.id, offset=0, body=body(os.urandom(S + 5)))
    hold(services, upload.id, case=None)
    clock.now += 101
    assert await services.removal.reap_once() == 0
    assert catalog_of(services).get_upload(upload.id) is not None
    with pytest.raises(GatewayError) as caught:  # past its expiry, held all the same
        await services.uploads.terminate(ME, upload.id)
    assert caught.value.err is ERR.UPLOAD_ON_HOLD
    holds.release(catalog_of(services), upload.id)
    assert await services.removal.reap_once() == 1
    assert catalog_of(services).get_upload(upload.id) is None
    stored = catalog_of(services).receipt(upload.id)
    assert stored is not None
    _, payload = receipts.verify(stored.jws, public_keys(services))
    assert (payload["reason"], payload["deleted_by"]) == ("expiry", {"reaper": "expiry"})


def test_a_case_reference_is_checked_strictly() -> None:
    for good in ("LIT-2026-0042", "a", "case:7/2026_b.c", "x" * 64):
        assert holds.check_case(good) == good
    for bad in ("", "John Doe", "-x", "x" * 65, "é", "a\nb", 7, ["x"]):
        with pytest.raises(GatewayError) as caught:
            holds.check_case(bad)
        assert caught.value.err is ERR.INVALID_CASE_REFERENCE


# -- retention --------------------------------------------------------------------------


async def test_retention_removes_complete_uploads_past_it(
    services: Services, store: Store, clock: Clock
) -> None:
    old = await complete(services)
    held = await complete(services)
    hold(services, held.id)
    clock.now += 10 * DAY
    young = await complete(services)
    clock.now += (RETENTION - 10) * DAY - 1
    assert await services.removal.reap_once() == 0
    clock.now += 1
    counted = reaped("retention")
    assert await services.removal.reap_once() == 1
    assert reaped("retention") == counted + 1
    assert catalog_of(services).get_upload(old.id) is None
    assert not any(k.startswith(old.id) for k in store.objects)
    for kept in (held, young):
        assert catalog_of(services).get_upload(kept.id) is not None
    stored = catalog_of(services).receipt(old.id)
    assert stored is not None
    _, payload = receipts.verify(stored.jws, public_keys(services))
    assert payload["reason"] == "retention"
    assert payload["deleted_by"] == {"reaper": "retention"}
    clock.now += 10 * DAY
    assert await services.removal.reap_once() == 1
    assert catalog_of(services).get_upload(young.id) is None
    assert catalog_of(services).get_upload(held.id) is not None


async def test_retention_goes_in_batches(services: Services, clock: Clock) -> None:
    uploads = [await complete(services, 10) for _ in range(5)]
    removal = services.removal
    batched = Removal(
        replace(removal._rules, retention_batch=2),
        store=removal._store,
        catalog=removal._catalog,
        runner=removal._runner,
        leases=removal._leases,
        receipts=removal._receipts,
        clock=clock,
    )
    clock.now += (RETENTION + 1) * DAY
    assert [await batched.reap_once() for _ in range(4)] == [2, 2, 1, 0]
    assert all(catalog_of(services).get_upload(u.id) is None for u in uploads)


async def test_the_manifest_states_the_retention(services: Services, clock: Clock) -> None:
    upload = await complete(services)
    signed = await services.uploads.signed_manifest(upload)
    _, raw = jws.verify(signed, typ="imgw-manifest+jws", keys=public_keys(services))
    document = json.loads(raw)
    assert document["retention"] == {
        "days": RETENTION,
        "delete_after": "1970-02-11T13:46:40.000000Z",  # the fake clock + 30 days
    }


async def test_retention_retires_a_partial_a_final_reads(
    services: Services, clock: Clock, store: Store
) -> None:
    uploads = services.uploads
    part = await uploads.create(ME, length=5, metadata=None, partial_concat="partial")
    await uploads.write(ME, part.id, offset=0, body=body(b"hello"))
    final = await uploads.create_final(
        ME, concat=f"final;/files/{part.id}", partial_ids=[part.id], metadata=None
    )
    hold(services, final.id)
    clock.now += (RETENTION + 1) * DAY
    assert await services.removal.reap_once() == 0
    # The partial is hidden, its bytes kept for the held final, which still reads.
    got = catalog_of(services).get_upload(part.id)
    assert got is not None and got.state == UploadState.TERMINATED
    assert catalog_of(services).wrapped_key(part.dek_id) is not None
    assert any(k.startswith(part.id) for k in store.objects)
    holds.release(catalog_of(services), final.id)
    assert await services.removal.reap_once() == 1
    for gone in (part.id, final.id):
        assert catalog_of(services).get_upload(gone) is None
        assert catalog_of(services).receipt(gone) is not None


def test_holds_describe_what_the_admin_api_answers() -> None:
    assert holds.describe("u", None) == {"upload_id": "u", "held": False}
    assert holds.describe("u", Hold("C-1", "t/root", 0.0)) == {
        "upload_id": "u",
        "held": True,
        "case": "C-1",
        "placed_by": "t/root",
        "placed_at": "1970-01-01T00:00:00.000000Z",
    }
