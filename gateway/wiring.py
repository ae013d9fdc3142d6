"""The app factory's helper: the services built from `Settings`, once, and wired together.

    Uploads ─┬─ Removal, Finals        (the services take UploadRules, never Settings)
             ├─ UploadKeys ── Reader ── Pools
             ├─ Leases
             └─ Writes ─┬─ UploadKeys, Leases
                        └─ WriterSlots, ReceiveBudget, Pools
    Authenticator ─┬─ RequestRate
                   ├─ OidcVerifier ── JwksCache   (when GATEWAY_OIDC_ISSUER is set)
                   └─ BruteForceGuard
    Grants ── access.Policy          (who may do what; every route asks)
    Audit (appends, checkpoints) ── Removal, and the app's AuditMiddleware
    Hooks (when GATEWAY_HOOK_URL / GATEWAY_PRE_CREATE_HOOK_URL are set): CompletionEvents
          ── UploadKeys, Finals; PreCreateHook ── Uploads; Deliverer (the outbox's sender);
          one httpx client for them
    one Runner (the thread pools) under all of them

Nothing here picks an implementation: the store, catalog and keys come in ready.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from gateway import access
from gateway.auditing import Audit
from gateway.auth import Authenticator
from gateway.bruteforce import AuthFailureHook, BruteForceGuard, FailureLimit
from gateway.buffers import Pools, SizedBuffers
from gateway.catalog.base import Catalog
from gateway.config import Settings
from gateway.finals import Finals
from gateway.grants import Grants
from gateway.hooks.delivery import Deliverer, DeliveryPolicy
from gateway.hooks.events import CompletionEvents
from gateway.hooks.http import new_client
from gateway.hooks.precreate import PreCreateHook
from gateway.keys.base import KeyProvider
from gateway.leases import Leases, lease_signals
from gateway.limits import ReceiveBudget, RequestRate, WriterSlots
from gateway.memtrim import Trimmer, glibc_mmap_threshold, glibc_trim
from gateway.oidc import JwksCache, OidcConfig, OidcVerifier, fetch_json
from gateway.reader import Reader
from gateway.receipts import Receipts
from gateway.removal import Removal
from gateway.rules import UploadRules
from gateway.runner import Runner
from gateway.store.base import ObjectStore
from gateway.suites import BY_NAME
from gateway.upload_keys import UploadKeys
from gateway.uploads import Uploads
from gateway.writes import Writes


@dataclass(frozen=True)
class Services:
    """What one app shares between its requests; `close` in the reverse of `start`."""

    runner: Runner
    leases: Leases
    reader: Reader
    uploads: Uploads
    removal: Removal
    finals: Finals
    auth: Authenticator
    grants: Grants
    audit: Audit
    deliverer: Deliverer | None = None  # sends the hooks' outbox (GATEWAY_HOOK_URL)
    hook_client: httpx.AsyncClient | None = None
    trimmer: Trimmer | None = None  # gives freed large buffers back to the system

    async def start(self) -> None:
        self.leases.start()
        await self.uploads.start()
        self.removal.start()
        self.audit.start()
        if self.deliverer is not None:
            self.deliverer.start()
        if self.trimmer is not None:
            self.trimmer.start()

    async def close(self) -> None:
        await self.uploads.close()
        await self.removal.close()
        await self.audit.close()  # checkpoints the head: shutdown leaves no tail unsigned
        if self.deliverer is not None:
            await self.deliverer.close()
        if self.hook_client is not None:
            await self.hook_client.aclose()
        self.leases.close()
        self.runner.close()
        if self.trimmer is not None:
            self.trimmer.close()


def upload_rules(settings: Settings) -> UploadRules:
    return UploadRules(
        segment_size=settings.segment_size,
        max_size=settings.max_size,
        upload_ttl=settings.upload_ttl,
        store_name="s3" if settings.uses_s3 else "folder",
        max_open_uploads=settings.max_open_uploads,
        max_open_bytes=settings.max_open_bytes,
        max_partials=settings.max_concat_parts,
        pipeline_depth=settings.pipeline_depth,
        tail_merge_after=settings.tail_merge_after,
        reap_interval=settings.reap_interval,
        retention_days=settings.retention_days,
        suite=BY_NAME[settings.crypto_suite].id,
    )


def writer_slots(settings: Settings) -> WriterSlots:
    """Writers per principal, with a share kept for principals holding none.

    On S3 each writer also holds whole records (segment-sized buffers) while they are
    sealed and sent: there the writer count bounds that memory.
    """
    writers, reserved = settings.max_writers, settings.reserved_writers
    if settings.uses_s3 and settings.s3_max_writers < writers:
        # The reserve keeps its share of the slots.
        reserved = -(-reserved * settings.s3_max_writers // writers)
        writers = settings.s3_max_writers
    return WriterSlots(
        writers,
        reserved=reserved,
        per_principal=settings.max_writers_per_principal,
        wait=settings.acquire_timeout,
    )


def oidc_verifier(settings: Settings, runner: Runner) -> OidcVerifier | None:
    config = OidcConfig.from_settings(settings)
    if config is None:
        return None

    async def fetch(url: str) -> object:
        return await runner.io(fetch_json, url, config.timeout)

    return OidcVerifier(config, JwksCache(config, fetch))


def brute_force_guard(settings: Settings) -> BruteForceGuard:
    burst, rate = settings.auth_failure_burst, settings.auth_failure_rate
    return BruteForceGuard(FailureLimit(burst, rate), FailureLimit(burst, rate))


def build_services(
    settings: Settings,
    *,
    store: ObjectStore,
    catalog: Catalog,
    keys: KeyProvider,
    clock: Callable[[], float] = time.time,
    on_auth_failure: AuthFailureHook | None = None,
) -> Services:
    rules = upload_rules(settings)
    runner = Runner(settings.io_threads, settings.sealing_threads)
    if settings.malloc_mmap_threshold:
        glibc_mmap_threshold(settings.malloc_mmap_threshold)  # for the whole process
    trimmer = Trimmer(glibc_trim())
    leases = Leases(
        catalog,
        runner,
        ttl=settings.lease_ttl,
        acquire_timeout=settings.acquire_timeout,
        network_timeout=settings.network_timeout,
        min_rate=settings.min_receive_rate,
        rate_window=settings.receive_rate_window,
        clock=clock,
        signals=lease_signals(catalog),
    )
    # Buffers for records written and read, shared by PATCHes and downloads.
    pools = Pools(
        keep=2 * settings.pipeline_depth + 2, sized=SizedBuffers(released=trimmer.released)
    )
    reader = Reader(store, catalog, keys, pools=pools)
    audit = Audit(
        catalog,
        keys=keys,
        runner=runner,
        checkpoint_seconds=settings.audit_checkpoint_seconds,
        clock=clock,
    )
    removal = Removal(
        rules,
        store=store,
        catalog=catalog,
        runner=runner,
        leases=leases,
        receipts=Receipts(keys),
        audit=audit,
        clock=clock,
    )
    hooks = Hooks.of(settings, catalog, runner, clock)
    finals = Finals(
        rules,
        store=store,
        catalog=catalog,
        keys=keys,
        runner=runner,
        events=hooks.events,
        clock=clock,
    )
    upload_keys = UploadKeys(
        store=store,
        catalog=catalog,
        keys=keys,
        runner=runner,
        reader=reader,
        store_name=rules.store_name,
        retention_days=rules.retention_days,
        events=hooks.events,
        clock=clock,
    )
    writes = Writes(
        rules,
        store=store,
        catalog=catalog,
        runner=runner,
        leases=leases,
        upload_keys=upload_keys,
        writers=writer_slots(settings),
        budget=ReceiveBudget(settings.receive_budget),
        pools=pools,
        clock=clock,
    )
    uploads = Uploads(
        rules,
        store=store,
        catalog=catalog,
        keys=keys,
        runner=runner,
        leases=leases,
        upload_keys=upload_keys,
        writes=writes,
        removal=removal,
        finals=finals,
        pre_create=hooks.pre_create,
        clock=clock,
    )
    rate = RequestRate(settings.request_rate, settings.request_burst)
    auth = Authenticator(
        catalog,
        runner,
        rate,
        oidc=oidc_verifier(settings, runner),
        guard=brute_force_guard(settings),
        on_failure=on_auth_failure,
        clock=clock,
    )
    grants = Grants(catalog, runner, access_policy(settings), clock=clock)
    return Services(
        runner,
        leases,
        reader,
        uploads,
        removal,
        finals,
        auth,
        grants,
        audit,
        deliverer=hooks.deliverer,
        hook_client=hooks.client,
        trimmer=trimmer,
    )


@dataclass(frozen=True)
class Hooks:
    """The notifications' parts the settings ask for (none without hook URLs)."""

    client: httpx.AsyncClient | None = None
    events: CompletionEvents | None = None
    deliverer: Deliverer | None = None
    pre_create: PreCreateHook | None = None

    @classmethod
    def of(
        cls, settings: Settings, catalog: Catalog, runner: Runner, clock: Callable[[], float]
    ) -> Hooks:
        targets = settings.hook_urls
        if not targets and not settings.pre_create_hook_url:
            return cls()
        secret = settings.hook_key()
        client = new_client(settings.hook_timeout)
        deliverer = None
        if targets:
            policy = DeliveryPolicy(
                timeout=settings.hook_timeout,
                max_attempts=settings.hook_max_attempts,
                backoff_base=settings.hook_backoff_base,
                backoff_max=settings.hook_backoff_max,
                poll_interval=settings.hook_poll_interval,
            )
            deliverer = Deliverer(
                catalog, runner, secret=secret, policy=policy, client=client, clock=clock
            )
        pre_create = None
        if settings.pre_create_hook_url:
            pre_create = PreCreateHook(
                settings.pre_create_hook_url, secret=secret, client=client, clock=clock
            )
        events = CompletionEvents(targets, clock) if targets else None
        return cls(client, events, deliverer, pre_create)


def access_policy(settings: Settings) -> access.Policy:
    return access.Policy(
        readers_see_tenant=settings.readers_see_tenant, mfa_for=settings.mfa_actions
    )
