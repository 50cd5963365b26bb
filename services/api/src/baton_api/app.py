"""Composition root of the api: builds the Litestar app and everything it uses from Settings.

`create_app(settings)` is production (NATS gateway, SQLite event store and views);
tests pass `gateway` and `executions` stand-ins and get the same routes, auth and errors.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from litestar import Litestar, Router
from litestar.datastructures import State
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from baton_api import apidocs
from baton_api.access import AccessStore, InMemoryAccess, NatsAccess
from baton_api.access_log import log_access
from baton_api.auth import API_KEY_HEADER, ApiKeyMiddleware, caller
from baton_api.catalog import (
    CatalogController,
    CatalogService,
    DeviceController,
    DeviceTypeController,
)
from baton_api.console import console_routers
from baton_api.controllers import CommandController, ExecutionController, refuse_unknown_query
from baton_api.credentials import (
    CredentialController,
    CredentialService,
    DeviceAccounts,
    FixedAccounts,
)
from baton_api.dialects import dialect_routers
from baton_api.draining import close_while_draining
from baton_api.feed_retention import FeedRetention
from baton_api.gateway import CommandGateway, NatsGateway
from baton_api.head import serve_head
from baton_api.health import Check, HealthController
from baton_api.keys import AccessService, KeyController, TenantController
from baton_api.limits import MAX_BODY_BYTES
from baton_api.live import LiveController, LiveFeed
from baton_api.moved_accounts import MovedAccounts
from baton_api.nats_edge import serve_tenant_clients
from baton_api.nats_link import NatsLink
from baton_api.openapi import declare_problems
from baton_api.problems import problem_handler
from baton_api.projector import ProjectionRunner
from baton_api.retention import RetentionSweeper
from baton_api.schemas import request_body_plugin
from baton_api.service import ExecutionService
from baton_api.tokens import TokenVerifier
from baton_api.views_edge import announcer, hear_advances
from baton_api.webhooks.controller import WebhookController
from baton_api.webhooks.delivery import DeliveryPolicy, WebhookSender
from baton_api.webhooks.store import WebhookStore
from baton_contracts.nats import PROJECTION_LEASE
from baton_domain.application import Executions
from baton_platform import metrics
from baton_platform.eventstore import open_executions
from baton_platform.leases import hold, holder_name
from baton_platform.lifecycle import cancel_and_wait
from baton_platform.nats import identity
from baton_platform.nats_access import API
from baton_platform.rate_limits import RateLimits
from baton_platform.settings import Settings
from baton_views import ExecutionViews

log = logging.getLogger(__name__)

VERSION = "0.1.0"


@dataclass
class Parts:
    """What the routes use, and the background tasks that keep it current."""

    executions: Executions
    views: ExecutionViews
    runner: ProjectionRunner
    service: ExecutionService
    link: NatsLink | None
    sweeper: RetentionSweeper
    catalog_service: CatalogService
    access: AccessStore
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    lease: asyncio.Task[None] | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    nats_replicas: int = 1  # copies of the leases bucket (BATON_NATS_REPLICAS)
    # Set once the process is asked to stop: /ready says so while requests are still served
    # (BATON_API_DRAIN_SECONDS, __main__), so balancers send it no new connections.
    draining: bool = False
    live: LiveFeed | None = None
    loop: asyncio.AbstractEventLoop | None = None
    webhooks: WebhookStore | None = None
    sender: WebhookSender | None = None
    feed_retention: FeedRetention | None = None
    # Takes back the MQTT accounts every catalog change moved, whichever way it came (NATS).
    moved_accounts: MovedAccounts | None = None

    def end_streams(self) -> None:
        """End every live stream (from any thread): the server is stopping, and waits for
        open answers to finish; their clients resume elsewhere with Last-Event-ID."""
        if self.live is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(self.live.closing.set)

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.tasks.append(asyncio.create_task(self.runner.run(), name="projection"))
        if self.link is not None:
            self.tasks.append(asyncio.create_task(self.link.run(), name="nats-link"))
            self.lease = asyncio.create_task(self._hold_projection(), name="projection-lease")
            if self.moved_accounts is not None:
                following = self._follow_catalog(self.link, self.moved_accounts)
                self.tasks.append(asyncio.create_task(following, name="moved-accounts"))
        if isinstance(self.access, NatsAccess):
            self.tasks.append(asyncio.create_task(self.access.run(), name="access"))
        self.tasks.append(asyncio.create_task(self.sweeper.run(), name="retention"))
        if self.sender is not None:
            self.tasks.append(asyncio.create_task(self.sender.run(), name="webhooks"))
        if self.feed_retention is not None:
            self.tasks.append(asyncio.create_task(self.feed_retention.run(), name="feed-retention"))
        if metrics.serving():
            self.tasks.append(asyncio.create_task(self._sample_unfinished(), name="unfinished"))

    async def _sample_unfinished(self) -> None:
        """While this replica writes the views (one replica says them, from fresh views):
        the executions not ended per device type, every few seconds."""
        while True:
            try:
                if self.runner.projecting:
                    rows = await asyncio.to_thread(self.views.unfinished_by_device)
                    catalog = await asyncio.to_thread(lambda: self.executions.catalog)
                    types = {device.id: device.type for device in catalog.devices}
                    metrics.set_unfinished(metrics.unfinished_per_type(rows, types))
                else:
                    metrics.clear_unfinished()
            except Exception:  # the views or the store away: said again at the next round
                log.exception("could not read the executions per device type")
            await asyncio.sleep(metrics.SAMPLE_INTERVAL_S)

    async def _hold_projection(self) -> None:
        """Write the views while this replica holds lease `projection` (every replica
        reads them): a lone api takes it as soon as it reaches NATS."""
        assert self.link is not None
        client = await self.link.connected_client()
        link = self.link

        async def take() -> None:
            await link.follow_events(True)  # before: no event stored from now on is missed
            await self.runner.start_projecting()

        async def lose() -> None:
            await self.runner.stop_projecting()
            await link.follow_events(False)

        await hold(
            client.jetstream(),
            PROJECTION_LEASE,
            self.runner.name,
            take,
            lose,
            self.stopping,
            self.nats_replicas,
        )

    @staticmethod
    async def _follow_catalog(link: NatsLink, moved_accounts: MovedAccounts) -> None:
        client = await link.connected_client()
        await moved_accounts.start(client.jetstream())

    async def stop(self) -> None:
        # The lease is released (another replica projects at once) unless NATS is gone.
        self.stopping.set()
        if self.live is not None:
            self.live.closing.set()
        if self.lease is not None:
            await asyncio.wait({self.lease}, timeout=5)
            await cancel_and_wait(self.lease)
        # The projection finishes its step (it may be inside sqlite in a worker thread);
        # the NATS link and the retention sweep are cancelled (the views close under locks).
        self.runner.stop()
        for task in self.tasks[1:]:
            await cancel_and_wait(task)
        for task in self.tasks[:1]:
            await task  # the projection, stopping at its next step boundary
        if self.moved_accounts is not None:
            await self.moved_accounts.stop()
        if self.link is not None:
            await self.link.close()
        await asyncio.to_thread(self.views.close)
        if self.webhooks is not None:
            await asyncio.to_thread(self.webhooks.close)
        await asyncio.to_thread(self.executions.close)

    def checks(self) -> dict[str, Check]:
        async def nats() -> str | None:
            if self.link is None or self.link.connected:
                return None
            return "not connected"

        async def store() -> str | None:
            try:
                await asyncio.to_thread(self.views.position)
                await asyncio.to_thread(self.executions.recorder.max_notification_id)
            except Exception as exc:  # any failure means "not ready", with the reason
                return f"unreachable: {type(exc).__name__}"
            return None

        async def keys() -> str | None:
            # Until the bucket is read, managed keys would be refused as unknown.
            if isinstance(self.access, NatsAccess) and not self.access.loaded.is_set():
                return "managed keys not loaded yet"
            return None

        async def serving() -> str | None:
            return "stopping" if self.draining else None

        return {"nats": nats, "store": store, "keys": keys, "serving": serving}


def build_parts(
    settings: Settings,
    gateway: CommandGateway | None = None,
    executions: Executions | None = None,
    access: AccessStore | None = None,
    accounts: DeviceAccounts | None = None,
) -> Parts:
    executions = executions or open_executions(settings)
    views = ExecutionViews(settings.views_database)
    # With NATS, replicas: the holder of lease `projection` writes the views. Without
    # (tests' stand-in gateways), this lone process does.
    runner = ProjectionRunner(
        executions,
        views,
        settings.projection_poll_interval,
        name=holder_name("api", settings.instance),
        projecting=gateway is not None,
    )
    link = None
    if gateway is None:
        link = NatsLink(settings.nats_url, identity(settings, API), on_event=runner.event_stored)
        runner.announce_with(announcer(link))
        link.on_connected(lambda client: hear_advances(client, runner))
        gateway = NatsGateway(link, settings.request_timeout)
    service = ExecutionService(
        gateway,
        views,
        runner,
        executions.recorder.max_notification_id,
        max_pending=settings.max_waiting_per_tenant,
    )
    if link is not None:
        link.on_connected(lambda client: serve_tenant_clients(client, service))
    sweeper = RetentionSweeper(
        service, settings.ephemeral_retention_days, settings.retention_sweep_interval
    )
    if access is None:
        # Keys and tenants live in NATS (baton_api.access); without it, in this process.
        access = NatsAccess(link, settings.nats_replicas) if link is not None else InMemoryAccess()
    accounts = accounts or device_accounts(settings)
    catalog_service = CatalogService(executions, gateway, accounts)
    webhooks = WebhookStore(settings.webhooks_database)
    policy = DeliveryPolicy(
        max_attempts=settings.webhook_max_attempts,
        backoff_initial=settings.webhook_backoff_initial,
        backoff_max=settings.webhook_backoff_max,
        timeout=settings.webhook_timeout,
        targets=settings.webhook_targets,
    )
    return Parts(
        executions,
        views,
        runner,
        service,
        link,
        sweeper,
        catalog_service,
        access,
        nats_replicas=settings.nats_replicas,
        live=LiveFeed(
            views, runner, settings.live_keepalive, asyncio.Event(), settings.live_max_seconds
        ),
        webhooks=webhooks,
        sender=WebhookSender(
            webhooks, views, runner, policy, executions.recorder.max_notification_id
        ),
        feed_retention=FeedRetention(
            views,
            webhooks,
            runner,
            settings.change_retention_days,
            settings.retention_sweep_interval,
        ),
        moved_accounts=MovedAccounts(executions, accounts) if link is not None else None,
    )


def device_accounts(settings: Settings) -> DeviceAccounts:
    """Who issues device credentials on the MQTT broker (docs/security.md)."""
    if settings.mqtt_device_accounts == "mosquitto-dynsec":
        from baton_api.dynsec import DynsecAccounts

        return DynsecAccounts(settings)
    if settings.mqtt_device_accounts == "nats-reload":
        from baton_api.natsreload import ReloadedAccounts

        if settings.mqtt_accounts_file is None or settings.mqtt_nats_dir is None:
            raise ValueError("nats-reload needs BATON_MQTT_ACCOUNTS_FILE and BATON_MQTT_NATS_DIR")
        return ReloadedAccounts(settings.mqtt_accounts_file, settings.mqtt_nats_dir)
    return FixedAccounts()


def create_app(
    settings: Settings,
    gateway: CommandGateway | None = None,
    executions: Executions | None = None,
    access: AccessStore | None = None,
    accounts: DeviceAccounts | None = None,
) -> Litestar:
    keys = [key.get_secret_value() for key in settings.api_keys]
    admin_keys = [key.get_secret_value() for key in settings.admin_api_keys]
    if not keys and not admin_keys and not (settings.jwt_secret or settings.jwt_jwks_path):
        raise ValueError(
            "no API keys: set BATON_ADMIN_API_KEYS or BATON_API_KEYS (comma-separated)"
        )
    parts = build_parts(settings, gateway, executions, access, accounts)
    access_service = AccessService(parts.access)
    credentials = CredentialService(parts.catalog_service)
    tokens = TokenVerifier(
        secret=settings.jwt_secret.get_secret_value() if settings.jwt_secret else None,
        jwks_path=settings.jwt_jwks_path,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
        tenant_claim=settings.jwt_tenant_claim,
        role_claim=settings.jwt_role_claim,
    )

    @asynccontextmanager
    async def lifespan(_app: Litestar) -> AsyncIterator[None]:
        await parts.start()
        try:
            yield
        finally:
            await parts.stop()

    limits = RateLimits(settings.rate_limit, settings.rate_burst)
    key_check = {
        "keys": keys,
        "admin_keys": admin_keys,
        "limits": limits,
        "access": parts.access,
        "tokens": tokens,
    }
    auth = DefineMiddleware(ApiKeyMiddleware, **key_check)
    v1 = Router(
        "/v1",
        route_handlers=[
            CommandController,
            ExecutionController,
            CatalogController,
            DeviceTypeController,
            DeviceController,
            KeyController,
            TenantController,
            CredentialController,
            LiveController,
            WebhookController,
        ],
        middleware=[auth],
        guards=[refuse_unknown_query],  # a typo in a query is a 422 (controllers.py)
        security=[{"bearer": []}, {"apiKey": []}],
    )
    # The seed APIs' dialects (docs/dialects.md): same keys, same service, their own shapes,
    # the stored catalog (read in a worker thread: it is the event store).
    app = Litestar(
        state=State({"parts": parts}),
        route_handlers=[
            v1,
            *dialect_routers([auth], lambda: parts.executions.catalog),
            HealthController,
            *apidocs.routes(),  # /schema/asyncapi.json, the doc pages' assets
            # The web console (docs/console.md): the same keys and services, as pages.
            *console_routers(key_check, parts.executions.events_of),
        ],
        dependencies={
            "service": Provide(lambda: parts.service, sync_to_thread=False),
            "catalog_service": Provide(lambda: parts.catalog_service, sync_to_thread=False),
            "access_service": Provide(lambda: access_service, sync_to_thread=False),
            "caller": Provide(caller, sync_to_thread=False),
            "credential_service": Provide(lambda: credentials, sync_to_thread=False),
            "checks": Provide(parts.checks, sync_to_thread=False),
            "live": Provide(lambda: parts.live, sync_to_thread=False),
            "webhooks": Provide(lambda: parts.webhooks, sync_to_thread=False),
            "webhook_targets": Provide(lambda: settings.webhook_targets, sync_to_thread=False),
        },
        exception_handlers={Exception: problem_handler},
        plugins=[request_body_plugin()],  # strict request bodies (schemas.py)
        lifespan=[lifespan],
        openapi_config=_openapi(),
        request_max_body_size=MAX_BODY_BYTES,  # larger can never pass NATS: 413 (limits.py)
        debug=False,
        # Logging is the service's own (baton_platform.logs), the same line format everywhere.
        logging_config=None,
    )
    declare_problems(app)  # every operation's problem documents (openapi.py)
    # HEAD on every GET route (head.py); one access log line and span per request.
    return serve_head(log_access(close_while_draining(app, lambda: parts.draining)))


def _openapi() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="Baton",
        version=VERSION,
        description=(
            "Send commands to IoT devices and keep an exact, replayable record of every "
            "execution. Every error is an RFC 9457 problem document."
        ),
        path=apidocs.SCHEMA_PATH,
        render_plugins=apidocs.render_plugins(),  # served from the api's own assets
        components=Components(
            security_schemes={
                "bearer": SecurityScheme(type="http", scheme="bearer"),
                "apiKey": SecurityScheme(
                    type="apiKey", name=API_KEY_HEADER, security_scheme_in="header"
                ),
                "enapterToken": SecurityScheme(
                    type="apiKey", name="X-Enapter-Auth-Token", security_scheme_in="header"
                ),
            }
        ),
    )
