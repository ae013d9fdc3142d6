"""The processes a run starts and stops: gateways (one, or a cluster on PostgreSQL), and
SeaweedFS for an S3 store. Built on the test suite's helpers; everything binds
127.0.0.1 on free ports and is stopped by PID."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from gateway import auth
from gateway.catalog.base import Catalog, Principal
from gateway.catalog.sqlite import SQLiteCatalog
from tests.server import GatewayProcess, S3Target

if TYPE_CHECKING:  # imported when needed: PostgreSQL and S3 are optional
    from tests.postgres import PostgresServer
    from tests.s3server import SeaweedS3


class Stack:
    def __init__(self, *, store: str, instances: int, env: dict[str, str]) -> None:
        if instances > 1 and store != "s3":
            raise ValueError("--instances above 1 needs --store s3 (one store for all)")
        self.store = store
        self.instances = instances
        self.env = env
        self.root = Path(tempfile.mkdtemp(prefix="gateway-load-"))
        self.gateways: list[GatewayProcess] = []
        self.catalog_url = ""
        self._weed: SeaweedS3 | None = None
        self._postgres: PostgresServer | None = None

    def start(self) -> Stack:
        target: S3Target | None = None
        if self.store == "s3":
            from tests.s3server import SeaweedS3

            weed = SeaweedS3(self.root / "weed")
            self._weed = weed
            weed.start()
            target = S3Target(weed.endpoint, weed.access_key, weed.secret_key, "load")
        env = {"GATEWAY_PUBLIC_URL": "", "GATEWAY_LOG_LEVEL": "warning", **self.env}
        if self.instances > 1:
            from tests.cluster import Cluster
            from tests.postgres import start_postgres

            postgres = start_postgres()
            self._postgres = postgres
            self.catalog_url = postgres.dsn(postgres.create_database())
            assert target is not None
            cluster = Cluster(self.root, self.catalog_url, target)
            self.gateways = cluster.start(self.instances, **env).gateways
        else:
            gateway = GatewayProcess(self.root / "gateway", env=env, s3=target)
            self.gateways = [gateway.start()]
        return self

    @property
    def hosts(self) -> list[str]:
        return [g.url for g in self.gateways]

    @property
    def weed(self) -> SeaweedS3 | None:
        """The S3 server, with --store s3."""
        return self._weed

    @property
    def pids(self) -> list[int]:
        return [g.proc.pid for g in self.gateways if g.proc is not None]

    def tokens(self, count: int) -> list[str]:
        """`count` API keys, one principal each (as many phones have a key each)."""
        catalog: Catalog
        if self.catalog_url:
            from gateway.catalog.postgres import PostgresCatalog

            catalog = PostgresCatalog(self.catalog_url)
        else:
            catalog = SQLiteCatalog(self.gateways[0].data_dir / "catalog.sqlite3")
        try:
            return [
                auth.mint_token(catalog, Principal(f"load-{i:04d}", "load")) for i in range(count)
            ]
        finally:
            catalog.close()

    def logs(self) -> str:
        return "\n".join(g.log()[-4000:] for g in self.gateways)

    def stop(self) -> None:
        for gateway in self.gateways:
            gateway.stop()
        if self._postgres is not None:
            self._postgres.stop()
        if self._weed is not None:
            self._weed.close()
        shutil.rmtree(self.root, ignore_errors=True)
