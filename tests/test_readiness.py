"""/healthz and /readyz on the app in this process, with the store injected by the test."""

from __future__ import annotations

from pathlib import Path

from gateway.keys.keyring import UNPROTECTED
from tests.fakes import MemoryStore
from tests.inprocess import async_app_client, build_app

ALL_OK = {"catalog": "ok", "store": "ok", "keys": "ok"}


async def test_readyz_names_the_part_that_is_not_usable(tmp_path: Path) -> None:
    store = MemoryStore()
    app, _ = build_app(tmp_path / "data", store=store)
    async with async_app_client(app) as client:
        ready = await client.get("/readyz")
        assert (ready.status_code, ready.json()) == (
            200,
            {"ready": True, "checks": ALL_OK, "warnings": [UNPROTECTED]},
        )
        store.down = True
        down = await client.get("/readyz")
        assert down.status_code == 503
        assert down.json() == {
            "ready": False,
            "checks": {**ALL_OK, "store": "failed: StoreUnavailable"},
            "warnings": [UNPROTECTED],
        }
        # Alive all the same: /healthz does not look at the store.
        health = await client.get("/healthz")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
