"""Service identity on NATS (docs/security.md): every NATS attack that used to work on an
open nats-server is refused by the server now, and does no harm.

The dispatcher runs as its own user; attackers are the other users (the tenant client, the
least trusted, and each service outside its role) and anonymous clients. The test itself
watches with `ops`, which may do everything."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import nats
import nats.errors
import pytest
import yaml
from litestar import Litestar
from litestar.testing import AsyncTestClient
from nats.aio.client import Client
from nats.aio.msg import Msg

from baton_api.app import create_app
from baton_cli.localstack import Server, cluster_ports, find_binary, wait_for_healthy
from baton_cli.nats_setup import write_cluster_configs
from baton_cli.processes import start_process
from baton_contracts.nats import (
    CATALOG_CHANGE_SUBJECT,
    CATALOG_GET_SUBJECT,
    DEADLINE_SUBJECT,
    DELETE_SUBJECT,
    EVENTS_STREAM,
    EVENTS_WILDCARD,
    LEASES_BUCKET,
    PROJECTION_LEASE,
    PURGE_SUBJECT,
    RELAY_LEASE,
    REPORTS_STREAM,
    SCHEDULER_LEASE,
    SUBMIT_SUBJECT,
    TENANT_SUBMIT_SUBJECT,
    CatalogQuery,
    CatalogReply,
    DeviceReport,
    ExecutionReply,
    LifecycleEvent,
    PresenceReport,
    event_subject,
    report_subject,
    watermark_subject,
)
from baton_dispatcher.app import Dispatcher
from baton_domain.application import idempotent_execution_id
from baton_platform.metrics import REJECTED_MESSAGES
from baton_platform.nats import connect, ensure_bucket, ensure_streams, identity
from baton_platform.nats_access import (
    API,
    DEVICE_BRIDGE,
    DISPATCHER,
    TIMEOUT_SCHEDULER,
    inbox_prefix,
    tenant_user,
)
from baton_platform.settings import Settings
from tests.conftest import eventually, service_settings

pytestmark = pytest.mark.integration

TENANT = tenant_user("default")
DEVICE = "demo-thermostat-1"
REFUSED_WITHIN = 5.0


class Caller:
    """A NATS client connected as one user, keeping what the server refused it."""

    def __init__(self, client: Client, refusals: list[str]) -> None:
        self.client = client
        self.refusals = refusals

    async def refused(self, what: str) -> None:
        """Wait until the server has refused `what` (a subject) to this client."""

        async def seen() -> bool:
            return any(f'"{what.lower()}"' in r for r in self.refusals)

        await eventually(seen, timeout=REFUSED_WITHIN, what=f"{what} refused")

    async def publish_refused(self, subject: str, body: bytes = b"{}") -> None:
        await self.client.publish(subject, body)
        await self.client.flush()
        await self.refused(subject)

    async def request_refused(self, subject: str, body: bytes = b"{}") -> None:
        """A request the server refuses gets no answer: nobody ever saw it."""
        with pytest.raises(nats.errors.TimeoutError):
            await self.client.request(subject, body, timeout=1)
        await self.refused(subject)


async def connect_as(server: Server, user: str) -> Caller:
    refusals: list[str] = []

    async def on_error(exc: Exception) -> None:
        refusals.append(str(exc).lower())

    client = await nats.connect(
        server.url,
        user=user,
        password=server.passwords[user],
        inbox_prefix=inbox_prefix(user),
        error_cb=on_error,
        allow_reconnect=False,
    )
    return Caller(client, refusals)


@pytest.fixture
async def dispatcher(nats_server: Server, tmp_path: Path) -> AsyncIterator[Dispatcher]:
    service = Dispatcher(service_settings(nats_server, tmp_path))
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
async def api(
    nats_server: Server, tmp_path: Path, dispatcher: Dispatcher
) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """The api in this process, as its own NATS user, on the dispatcher's store: it answers
    tenant clients, and caps each tenant at 1 pending command."""
    settings = service_settings(
        nats_server, tmp_path, admin_api_keys="owner-key", max_waiting_per_tenant=1
    )
    async with AsyncTestClient(app=create_app(settings)) as client:

        async def ready() -> bool:
            return (await client.get("/ready")).status_code == 200

        await eventually(ready, what="the api ready")
        yield client


@pytest.fixture
async def callers(nats_server: Server) -> AsyncIterator[dict[str, Caller]]:
    users = [TENANT, API, DISPATCHER, DEVICE_BRIDGE, TIMEOUT_SCHEDULER]
    connected = {user: await connect_as(nats_server, user) for user in users}
    yield connected
    for caller in connected.values():
        await caller.client.close()


def now() -> datetime:
    return datetime.now(UTC)


def forged_success(execution_id: object) -> bytes:
    return (
        DeviceReport(
            kind="answer",
            report_id=f"forged-{uuid4()}",
            device_id=DEVICE,
            execution_id=execution_id,
            status="SUCCEEDED",
            received_at=now(),
        )
        .model_dump_json()
        .encode()
    )


async def test_no_one_connects_without_a_user_and_its_password(nats_server: Server) -> None:
    with pytest.raises(nats.errors.Error):
        await nats.connect(nats_server.url, allow_reconnect=False, connect_timeout=2)
    with pytest.raises(nats.errors.Error):
        await nats.connect(
            nats_server.url,
            user=DISPATCHER,
            password="guessed",
            allow_reconnect=False,
            connect_timeout=2,
        )


async def test_a_forged_report_or_presence_is_refused_and_never_stored(
    nats_server: Server, nc: Client, callers: dict[str, Caller]
) -> None:
    """Only the device-bridge publishes reports: a forged SUCCEEDED or `offline` from anyone
    else never reaches BATON_REPORTS, so the dispatcher never applies it."""
    presence = PresenceReport(report_id="forged", device_id=DEVICE, online=False, received_at=now())
    for user in (TENANT, API, DISPATCHER, TIMEOUT_SCHEDULER):
        caller = callers[user]
        await caller.publish_refused(report_subject(DEVICE), forged_success(uuid4()))
        await caller.publish_refused(
            report_subject(f"other-{user}"), presence.model_dump_json().encode()
        )
    info = await nc.jetstream().stream_info(REPORTS_STREAM)
    assert info.state.messages == 0


@pytest.mark.usefixtures("dispatcher")
async def test_only_the_api_and_a_tenant_client_submit_and_only_the_dispatcher_answers(
    nc: Client, callers: dict[str, Caller]
) -> None:
    forged = b'{"device_id": "demo-thermostat-1", "name": "reboot", "principal": "admin"}'
    # The trusted subject takes the principal from the message: a tenant client may not use it.
    await callers[TENANT].request_refused(SUBMIT_SUBJECT, forged)
    # Nor another tenant's subject.
    await callers[TENANT].request_refused(TENANT_SUBMIT_SUBJECT.format(tenant="acme"), forged)
    # Only the dispatcher takes requests: anyone else answering submits is refused.
    for user in (TENANT, API, DEVICE_BRIDGE, TIMEOUT_SCHEDULER):
        await callers[user].client.subscribe(SUBMIT_SUBJECT, queue="baton-dispatcher")
        await callers[user].refused(SUBMIT_SUBJECT)

    reply = await callers[API].client.request(SUBMIT_SUBJECT, forged, timeout=5)
    assert ExecutionReply.model_validate_json(reply.data).created


@pytest.mark.usefixtures("api")
async def test_a_tenant_client_submits_for_its_own_tenant_only_under_its_own_name(
    nc: Client, callers: dict[str, Caller]
) -> None:
    tenant = callers[TENANT]
    body = (
        b'{"device_id": "demo-thermostat-1", "name": "reboot", "tenant": "acme",'
        b' "principal": "admin"}'
    )
    msg = await tenant.client.request(TENANT_SUBMIT_SUBJECT.format(tenant="default"), body, 5)
    reply = ExecutionReply.model_validate_json(msg.data)
    assert reply.execution is not None, reply.problem
    execution_id = reply.execution.id

    async def requested() -> LifecycleEvent | None:
        js = nc.jetstream()
        info = await js.stream_info(EVENTS_STREAM)
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            got = await js.get_msg(EVENTS_STREAM, seq=seq)
            event = LifecycleEvent.model_validate_json(got.data or b"")
            if event.execution_id == execution_id and event.type == "Requested":
                return event
        return None

    event = await eventually(requested, what="the Requested event relayed")
    assert event.data["requested_by"] == "nats:default"
    assert event.data["tenant"] == "default"

    # The tenant's cap (1 pending here) holds for its NATS clients too: the first is still
    # PENDING (no bridge runs), so the next is refused and nothing is stored.
    again = await tenant.client.request(TENANT_SUBMIT_SUBJECT.format(tenant="default"), body, 5)
    refused = ExecutionReply.model_validate_json(again.data)
    assert refused.execution is None and refused.problem is not None
    assert refused.problem.code == "tenant-busy"


@pytest.mark.usefixtures("dispatcher")
async def test_the_catalog_and_executions_change_only_through_the_api_or_ops(
    nc: Client, callers: dict[str, Caller]
) -> None:
    remove = b'{"op": "remove-device", "device_id": "demo-thermostat-1"}'
    delete = f'{{"execution_id": "{uuid4()}"}}'.encode()
    purge = f'{{"execution_ids": ["{uuid4()}"]}}'.encode()
    for user in (TENANT, DEVICE_BRIDGE, TIMEOUT_SCHEDULER):
        await callers[user].request_refused(CATALOG_CHANGE_SUBJECT, remove)
        await callers[user].request_refused(DELETE_SUBJECT, delete)
        await callers[user].request_refused(PURGE_SUBJECT, purge)
    reply = await nc.request(CATALOG_GET_SUBJECT, b"{}", timeout=5)
    document = CatalogReply.model_validate_json(reply.data).document or {}
    assert DEVICE in {device["id"] for device in document["devices"]}


@pytest.mark.usefixtures("dispatcher")
async def test_every_tenants_catalog_is_read_by_the_trusted_services_only(
    callers: dict[str, Caller],
) -> None:
    """The bridge asks for the whole catalog (`tenant: null`) to wire every tenant's devices;
    a tenant's client, or a service with no use for it, is refused the subject itself."""
    whole = CatalogQuery(tenant=None).model_dump_json().encode()
    for user in (TENANT, TIMEOUT_SCHEDULER):
        await callers[user].request_refused(CATALOG_GET_SUBJECT, whole)
    reply = await callers[DEVICE_BRIDGE].client.request(CATALOG_GET_SUBJECT, whole, timeout=5)
    document = CatalogReply.model_validate_json(reply.data).document or {}
    assert DEVICE in {device["id"] for device in document["devices"]}


async def test_only_the_dispatcher_publishes_lifecycle_events_and_only_the_scheduler_deadlines(
    nc: Client, callers: dict[str, Caller]
) -> None:
    succeeded = event_subject(uuid4(), "Succeeded")
    for user in (TENANT, API, DEVICE_BRIDGE, TIMEOUT_SCHEDULER):
        await callers[user].publish_refused(succeeded, b"{}")
    for user in (TENANT, API, DEVICE_BRIDGE):
        await callers[user].request_refused(
            DEADLINE_SUBJECT, f'{{"execution_id": "{uuid4()}"}}'.encode()
        )
    for user in (TENANT, API, DISPATCHER, TIMEOUT_SCHEDULER):
        await callers[user].publish_refused(watermark_subject("forged"), b"{}")
    info = await nc.jetstream().stream_info(EVENTS_STREAM)
    assert info.state.messages == 0


async def test_lifecycle_events_replies_and_streams_are_unreadable_without_the_right(
    nats_server: Server, nc: Client, callers: dict[str, Caller]
) -> None:
    tenant = callers[TENANT]
    received: list[bytes] = []

    async def got(msg: Msg) -> None:
        received.append(msg.data)

    for subject in (EVENTS_WILDCARD, "_INBOX.>", f"{inbox_prefix(API)}.>", ">"):
        await tenant.client.subscribe(subject, cb=got)
        await tenant.refused(subject)
    for subject in ("$JS.API.STREAM.NAMES", "$JS.API.STREAM.LIST", "$JS.API.INFO"):
        await tenant.request_refused(subject)
    await tenant.request_refused(f"$JS.API.STREAM.INFO.{EVENTS_STREAM}")
    await tenant.request_refused(f"$JS.API.CONSUMER.CREATE.{EVENTS_STREAM}.snoop")
    await tenant.request_refused(f"$JS.API.STREAM.DELETE.{EVENTS_STREAM}")
    # What a refused subscription would have received goes by unseen.
    await nc.publish(event_subject(uuid4(), "Requested"), b"secret")
    await nc.flush()
    await tenant.client.flush()
    await asyncio.sleep(0)  # let a delivered message, if any, reach the callback
    assert received == []


def rejected(service: str, reason: str) -> float:
    return float(REJECTED_MESSAGES.labels(service=service, reason=reason)._value.get())


async def watch(nc: Client, subjects: list[str]) -> list[str]:
    """What ops sees arrive on `subjects` from now on."""
    seen: list[str] = []

    async def got(msg: Msg) -> None:
        seen.append(msg.subject)

    for subject in subjects:
        await nc.subscribe(subject, cb=got)
    await nc.flush()
    return seen


async def test_a_tenant_client_cannot_have_the_api_answer_where_it_may_not_publish(
    nc: Client, callers: dict[str, Caller], api: AsyncTestClient[Litestar]
) -> None:
    """nats-server lets a responder publish its answer wherever the request's reply subject
    says: a forged reply subject would have the api write a lifecycle event, or take the
    relay's lease, for a tenant client. Such a request is dropped, counted, never handled."""
    forged_replies = [event_subject(uuid4(), "Succeeded"), f"$KV.{LEASES_BUCKET}.{RELAY_LEASE}"]
    seen = await watch(nc, forged_replies)
    tenant = callers[TENANT].client
    subject = TENANT_SUBMIT_SUBJECT.format(tenant="default")
    for number, reply in enumerate(forged_replies):
        before = rejected("api", "foreign-reply-submit")
        body = f'{{"device_id": "{DEVICE}", "name": "reboot", "idempotency_key": "f{number}"}}'
        await tenant.publish(subject, body.encode(), reply=reply)
        await tenant.flush()

        async def counted(mark: float = before) -> bool:
            return rejected("api", "foreign-reply-submit") == mark + 1

        await eventually(counted, what=f"the submit answering to {reply} dropped")
        execution_id = idempotent_execution_id("nats:default", f"f{number}")
        headers = {"Authorization": "Bearer owner-key"}
        assert (await api.get(f"/v1/executions/{execution_id}", headers=headers)).status_code == 404
    # Its own inbox is still answered, and only that went anywhere.
    msg = await tenant.request(
        subject, f'{{"device_id": "{DEVICE}", "name": "reboot"}}'.encode(), 5
    )
    assert ExecutionReply.model_validate_json(msg.data).execution is not None
    assert seen == []


@pytest.mark.usefixtures("dispatcher")
async def test_no_service_can_have_the_dispatcher_answer_where_it_may_not_publish(
    nc: Client, callers: dict[str, Caller]
) -> None:
    """The same for the dispatcher's requesters: its request/reply edges and the admin
    subjects (FastStream's) answer inboxes only."""
    lease = f"$KV.{LEASES_BUCKET}.{RELAY_LEASE}"
    seen = await watch(nc, [lease, event_subject(uuid4(), "Succeeded")])
    cases = [
        (DEVICE_BRIDGE, CATALOG_GET_SUBJECT, b"{}", "get", lease),
        (API, SUBMIT_SUBJECT, f'{{"device_id": "{DEVICE}", "name": "reboot"}}'.encode(), "submit",
         event_subject(uuid4(), "Succeeded")),
    ]  # fmt: skip
    for user, subject, body, verb, reply in cases:
        before = rejected("dispatcher", f"foreign-reply-{verb}")
        await callers[user].client.publish(subject, body, reply=reply)
        await callers[user].client.flush()

        async def counted(mark: float = before, reason: str = f"foreign-reply-{verb}") -> bool:
            return rejected("dispatcher", reason) == mark + 1

        await eventually(counted, what=f"{subject} answering to {reply} dropped")
    answered = await callers[DEVICE_BRIDGE].client.request(CATALOG_GET_SUBJECT, b"{}", timeout=5)
    assert CatalogReply.model_validate_json(answered.data).document
    assert seen == []


async def test_each_service_writes_its_own_leases_only(
    nc: Client, callers: dict[str, Caller]
) -> None:
    """A service that could write another's lease could take that job from its holder."""
    await ensure_bucket(nc.jetstream(), LEASES_BUCKET, history=1)
    others = {
        DEVICE_BRIDGE: [RELAY_LEASE, "partition.3", PROJECTION_LEASE, SCHEDULER_LEASE],
        TIMEOUT_SCHEDULER: [RELAY_LEASE, "partition.3", "bridge.0"],
        API: [RELAY_LEASE, "dispatchers.x", SCHEDULER_LEASE],
        DISPATCHER: [PROJECTION_LEASE, "bridge.0", SCHEDULER_LEASE],
    }
    for user, keys in others.items():
        for key in keys:
            await callers[user].publish_refused(f"$KV.{LEASES_BUCKET}.{key}", b"taken")
    own = {DEVICE_BRIDGE: "bridge.0", TIMEOUT_SCHEDULER: SCHEDULER_LEASE, API: PROJECTION_LEASE}
    for user, key in own.items():
        acknowledged = await callers[user].client.request(
            f"$KV.{LEASES_BUCKET}.{key}", b"mine", timeout=5
        )
        assert b"error" not in acknowledged.data, acknowledged.data


def _server_log(server: Server) -> Path:
    return Path(server.extra["credentials"]).parent / "nats.log"  # start_baton_nats' workdir


async def test_the_server_logs_each_refusal(
    nats_server: Server, callers: dict[str, Caller]
) -> None:
    """Where an operator sees a refused client: nats-server's log names the user and subject."""
    await callers[TENANT].publish_refused(report_subject(DEVICE), b"{}")

    async def logged() -> bool:
        text = _server_log(nats_server).read_text()
        return "Violation" in text and report_subject(DEVICE) in text and TENANT in text

    await eventually(logged, what="the refusal in nats-server's log")


ROOT = Path(__file__).resolve().parents[2]


async def test_the_deployment_admits_baton_users_only(tmp_path: Path) -> None:
    """compose.yaml: `baton nats-setup --node ...` writes the users and each node's cluster
    block into deploy/nats/cluster.conf's copies, which the three nodes run with; every Baton
    service reads its password from there. The configs it writes, moved to loopback ports,
    form a JetStream cluster that admits the dispatcher and no one anonymous."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    command = services["nats-setup"]["command"]
    assert "/etc/baton-nats" in command
    nodes = [command[i + 1] for i, arg in enumerate(command) if arg == "--node"]
    for node in nodes:
        assert services[node]["command"] == ["-c", f"/etc/baton-nats/{node}.conf"]
    for name, service in services.items():
        env = service.get("environment") or {}
        if "BATON_NATS_URL" in env:
            assert env["BATON_NATS_CREDENTIALS"] == "/etc/baton-nats/credentials.json", name

    configs = write_cluster_configs(
        tmp_path / "auth", ROOT / "deploy/nats/cluster.conf", ["default"], nodes
    )
    ports = cluster_ports(len(nodes))
    servers = []
    binary = find_binary("nats-server")
    assert binary is not None
    for node, config, node_ports in zip(nodes, configs, ports, strict=True):
        text = config.read_text().replace("/data/jetstream", str(tmp_path / node))
        text = text.replace("0.0.0.0:4222", f"127.0.0.1:{node_ports.client}")
        text = text.replace("0.0.0.0:6222", f"127.0.0.1:{node_ports.route}")
        text = text.replace("0.0.0.0:8222", f"127.0.0.1:{node_ports.monitor}")
        for other, other_ports in zip(nodes, ports, strict=True):
            text = text.replace(f"@{other}:6222", f"@127.0.0.1:{other_ports.route}")
        config.write_text(text)
        proc = start_process([binary, "-c", str(config)], stderr=subprocess.DEVNULL)
        url = f"nats://127.0.0.1:{node_ports.client}"
        monitor = {"monitor": f"http://127.0.0.1:{node_ports.monitor}"}
        servers.append(Server(node, proc, url, node_ports.client, monitor))
    try:
        wait_for_healthy(servers)
        urls = [server.url for server in servers]
        with pytest.raises(nats.errors.Error):
            await nats.connect(urls[0], allow_reconnect=False, connect_timeout=2)
        credentials = tmp_path / "auth" / "credentials.json"
        settings = Settings(nats_url=",".join(urls), nats_credentials=credentials)
        client = await connect(settings.nats_url, "deploy-test", identity(settings, DISPATCHER))
        try:
            await ensure_streams(client.jetstream(), 3)  # what the dispatcher may do
        finally:
            await client.close()
    finally:
        for server in servers:
            server.stop()
