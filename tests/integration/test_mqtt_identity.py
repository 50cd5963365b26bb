"""Device identity on MQTT (issue 8, item 6): every attack that worked on the open broker now
fails to do harm, on both brokers, with the accounts a stack's broker starts with.

Each negative check ends on a marker: something allowed, sent after the attack through the
same path, whose arrival shows that anything the attack got through would have arrived too.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import aiomqtt
import pytest

from baton_api.credentials import AccountsUnavailableError
from baton_api.dynsec import DynsecAccounts
from baton_api.natsreload import ReloadedAccounts
from baton_cli.localstack import (
    Server,
    find_binary,
    free_port,
    start_mosquitto,
    start_nats,
)
from baton_contracts.accounts import (
    BRIDGE_USERNAME,
    bridge_client_id,
    device_topics,
    device_username,
)
from baton_contracts.mqtt import CommandRequest, request_topic, tls_context
from baton_platform.mqtt_accounts import MqttAccount, StackAccounts
from baton_platform.settings import Settings
from baton_simulator import READY_LINE, Access, run_simulator
from tests.certificates import make_ca
from tests.conftest import DEMO, eventually
from tests.integration.conftest import PROFILES_CATALOG

pytestmark = pytest.mark.integration

ROOT = "baton/v1/devices"
EXECUTION = "4b0c6a1e-5d1f-4e8f-9a55-0c2f0c7e1a10"


def protocol_of(broker: Server) -> aiomqtt.ProtocolVersion:
    v5 = broker.extra["protocol"] == "5"
    return aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311


def start_secured(kind: str, workdir: Path, catalog: Path) -> tuple[Server, StackAccounts]:
    """A broker as a stack starts it: its accounts only (the catalog's devices' too)."""
    accounts = StackAccounts.new("test", catalog)
    if kind == "mosquitto":
        if find_binary("mosquitto") is None:
            pytest.skip("Mosquitto is not installed (deploy/local/install-broker.sh)")
        return start_mosquitto(workdir, accounts=accounts.every), accounts
    port = free_port()
    nats = start_nats(workdir, mqtt_port=port, mqtt_accounts=accounts)
    protocol = {"protocol": "3.1.1"}
    return Server("nats-mqtt", nats.proc, f"mqtt://127.0.0.1:{port}", port, protocol), accounts


@pytest.fixture(params=["mosquitto", "nats"])
def secured(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Server, StackAccounts]]:
    server, accounts = start_secured(request.param, tmp_path / "broker", DEMO)
    yield server, accounts
    server.stop()


@pytest.fixture(params=["mosquitto", "nats"])
def secured_profiles(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Server, StackAccounts]]:
    """The same, with a device of every wire profile (deploy/catalog/profiles.yaml)."""
    server, accounts = start_secured(request.param, tmp_path / "broker", PROFILES_CATALOG)
    yield server, accounts
    server.stop()


def connect(
    broker: Server,
    account: MqttAccount | None,
    identifier: str | None = None,
    password: str | None = None,
) -> aiomqtt.Client:
    """A client of `account` (None: anonymous), by default with its own client id."""
    return aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        protocol=protocol_of(broker),
        username=account.username if account else None,
        password=password or (account.password if account else None),
        identifier=identifier or (account.client_id if account else None),
    )


async def refused(client: aiomqtt.Client) -> bool:
    try:
        async with client:
            return False
    except aiomqtt.MqttError:
        return True


@asynccontextmanager
async def listening(
    client: aiomqtt.Client, *filters: str
) -> AsyncIterator[list[tuple[str, bytes]]]:
    """`client` subscribed to `filters`; what it receives is appended to the yielded list."""
    received: list[tuple[str, bytes]] = []
    async with client:
        for topic_filter in filters:
            await client.subscribe(topic_filter, qos=1)

        async def collect() -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                received.append((str(message.topic), message.payload))

        task = asyncio.create_task(collect())
        try:
            yield received
        finally:
            task.cancel()


async def publish_as(
    broker: Server, account: MqttAccount, topic: str, payload: bytes, retain: bool = False
) -> None:
    """Publish once as `account`; a broker may refuse it silently or close the connection."""
    try:
        async with connect(broker, account) as client:
            await client.publish(topic, payload, qos=1, retain=retain)
    except aiomqtt.MqttError:
        pass  # nats-server may close a connection that published where it may not


def topics_of(received: list[tuple[str, bytes]]) -> list[str]:
    return [topic for topic, _ in received]


async def arrived(received: list[tuple[str, bytes]], topic: str) -> None:
    """Wait for the marker: a message on `topic`, sent after the attack."""

    async def probe() -> bool:
        return topic in topics_of(received)

    await eventually(probe, what=f"a message on {topic}")


async def answers_the_bridge_receives(
    broker: Server,
    bridge: MqttAccount,
    attacker: MqttAccount,
    forged: str,
    own: str,
    answers: str = f"{ROOT}/+/executions/+/response",
) -> list[str]:
    """The topics of what reaches the bridge, subscribed to `answers`, when `attacker` answers
    on `forged`, then on its `own` answer topic (the marker)."""
    async with listening(connect(broker, bridge), answers) as got:
        await publish_as(broker, attacker, forged, b'{"status": "SUCCEEDED"}')
        await publish_as(broker, attacker, own, b'{"status": "STARTED"}')
        await arrived(got, own)
    return topics_of(got)


async def test_no_anonymous_client_and_no_wrong_password_is_admitted(
    secured: tuple[Server, StackAccounts],
) -> None:
    broker, accounts = secured
    assert await refused(connect(broker, None, identifier="anonymous"))
    assert await refused(connect(broker, accounts.bridge, password="not-the-password"))
    assert not await refused(connect(broker, accounts.bridge))


async def test_a_device_subscribed_to_everything_receives_only_its_own(
    secured: tuple[Server, StackAccounts],
) -> None:
    broker, accounts = secured
    mine, other = accounts.device("demo-thermostat-1"), "demo-thermostat-2"
    own = f"{ROOT}/demo-thermostat-1/executions/{EXECUTION}/request"
    async with (
        listening(
            connect(broker, mine), "#", f"{ROOT}/demo-thermostat-1/executions/+/request"
        ) as got,
        connect(broker, accounts.bridge) as bridge,
    ):
        await bridge.publish(f"{ROOT}/{other}/executions/{EXECUTION}/request", b"x", qos=1)
        await publish_as(broker, accounts.device(other), f"{ROOT}/{other}/status", b"online")
        await bridge.publish(own, b"mine", qos=1)
        await arrived(got, own)
    assert topics_of(got) == [own]


async def test_a_device_cannot_answer_for_another_device(
    secured: tuple[Server, StackAccounts],
) -> None:
    """The forged SUCCEEDED for demo-silent-1 never reaches the bridge."""
    broker, accounts = secured
    own = f"{ROOT}/demo-thermostat-1/executions/{EXECUTION}/response"
    forged = f"{ROOT}/demo-silent-1/executions/{EXECUTION}/response"
    got = await answers_the_bridge_receives(
        broker, accounts.bridge, accounts.device("demo-thermostat-1"), forged, own
    )
    assert got == [own]


FLEETS = "$emqx/commands/things"


@pytest.mark.parametrize(
    ("attacker", "forged", "own", "answers"),
    [
        (
            "fleets-thermo-1",
            f"{FLEETS}/fleets-silent-1/executions/{EXECUTION}/response",
            f"{FLEETS}/FLEETS-T1/executions/{EXECUTION}/response",
            f"{FLEETS}/+/executions/+/response",
        ),
        ("iotee-1", "iotee/dev/OTHER1/rls/ack", "iotee/dev/ABC123/rls/ack", "iotee/dev/+/rls/ack"),
    ],
)
async def test_a_device_of_another_profile_cannot_answer_for_another_device(
    secured_profiles: tuple[Server, StackAccounts],
    attacker: str,
    forged: str,
    own: str,
    answers: str,
) -> None:
    """EMQX Fleets and raw payload tables, as Baton's own: only on its own topics."""
    broker, accounts = secured_profiles
    device = accounts.device(attacker)
    got = await answers_the_bridge_receives(broker, accounts.bridge, device, forged, own, answers)
    assert got == [own]


async def test_a_device_cannot_send_a_request_to_another_device(
    secured: tuple[Server, StackAccounts],
) -> None:
    """No `set_temperature 35` Baton never sent: only the bridge may write requests."""
    broker, accounts = secured
    victim = accounts.device("demo-thermostat-2")
    requests = f"{ROOT}/demo-thermostat-2/executions/+/request"
    async with listening(connect(broker, victim), requests) as got:
        injected = f"{ROOT}/demo-thermostat-2/executions/{EXECUTION}/request"
        await publish_as(broker, accounts.device("demo-thermostat-1"), injected, b"35")
        async with connect(broker, accounts.bridge) as bridge:
            await bridge.publish(injected, b"from baton", qos=1)

        await arrived(got, injected)
    assert got == [(injected, b"from baton")]


async def test_a_device_cannot_say_another_device_is_offline(
    secured: tuple[Server, StackAccounts],
) -> None:
    broker, accounts = secured
    attacker = accounts.device("demo-thermostat-1")
    await publish_as(broker, attacker, f"{ROOT}/demo-silent-1/status", b"offline", retain=True)
    await publish_as(broker, attacker, f"{ROOT}/demo-thermostat-1/status", b"online", retain=True)
    async with listening(connect(broker, accounts.bridge), f"{ROOT}/+/status") as got:
        await arrived(got, f"{ROOT}/demo-thermostat-1/status")  # the attacker's own
    assert topics_of(got) == [f"{ROOT}/demo-thermostat-1/status"]


async def test_no_account_can_take_the_bridges_client_id(
    secured: tuple[Server, StackAccounts],
) -> None:
    broker, accounts = secured
    bridge_id = accounts.bridge.client_id
    # What an attacker could guess: the bridge's name, with the instance's or without.
    guesses = [bridge_client_id("test"), bridge_client_id("default"), BRIDGE_USERNAME]
    async with listening(connect(broker, accounts.bridge), f"{ROOT}/+/status") as got:
        for device in ("demo-thermostat-1", "demo-silent-1"):
            for guess in guesses:
                # Admitted or not, a connection under another id takes no one's session.
                await refused(connect(broker, accounts.device(device), guess))
            if broker.name == "mosquitto":
                # Bound to its account there: even its real id is refused to anyone else.
                # (nats-server cannot bind one: there the id's secret is the guard.)
                assert await refused(connect(broker, accounts.device(device), bridge_id))
        assert await refused(connect(broker, None, bridge_id))
        # Still connected: it receives what a device says after the attempt.
        own = f"{ROOT}/demo-thermostat-1/status"
        await publish_as(broker, accounts.device("demo-thermostat-1"), own, b"online")

        await arrived(got, own)


# --- credentials issued at run time (Mosquitto's dynamic security) ---------------------------


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[tuple[Server, StackAccounts]]:
    """Mosquitto with Baton's own accounts only: devices get theirs through the api."""
    if find_binary("mosquitto") is None:
        pytest.skip("Mosquitto is not installed (deploy/local/install-broker.sh)")
    accounts = StackAccounts.new("test")
    server = start_mosquitto(tmp_path / "mosquitto", accounts=accounts.every)
    yield server, accounts
    server.stop()


def admin_settings(broker: Server, accounts: StackAccounts) -> Settings:
    return Settings(
        mqtt_port=broker.port,
        mqtt_device_accounts="mosquitto-dynsec",
        mqtt_admin_username=accounts.admin.username,
        mqtt_admin_password=accounts.admin.password,
    )


async def issue(broker: Server, accounts: StackAccounts, device_id: str = "d1") -> MqttAccount:
    """Issue (or rotate) the account of a `baton` device as the api does."""
    issuer = DynsecAccounts(admin_settings(broker, accounts))
    topics = device_topics("baton", device_id, None, {})
    username = device_username(device_id)
    return MqttAccount(username, await issuer.issue(username, topics), username, topics)


async def test_issued_credentials_work_on_the_devices_own_topics_only(
    mosquitto: tuple[Server, StackAccounts],
) -> None:
    broker, accounts = mosquitto
    device = await issue(broker, accounts)
    own = f"{ROOT}/d1/executions/{EXECUTION}/response"
    forged = f"{ROOT}/d2/executions/{EXECUTION}/response"
    assert await answers_the_bridge_receives(broker, accounts.bridge, device, forged, own) == [own]
    # Bound to its client id: it cannot be anyone else.
    assert await refused(connect(broker, device, identifier=accounts.bridge.client_id))


def watch_for_loss(connected: aiomqtt.Client) -> tuple[asyncio.Event, asyncio.Task[None]]:
    """An event set when the broker closes `connected`, and the task that watches it."""
    lost = asyncio.Event()

    async def watch() -> None:
        try:
            async for _ in connected.messages:
                pass
        except aiomqtt.MqttError:
            pass
        lost.set()

    return lost, asyncio.create_task(watch())


async def test_a_rotated_password_stops_working_within_a_second(
    mosquitto: tuple[Server, StackAccounts],
) -> None:
    broker, accounts = mosquitto
    old = await issue(broker, accounts)
    async with connect(broker, old) as connected:
        lost, watcher = watch_for_loss(connected)
        new = await issue(broker, accounts)
        rotated = asyncio.get_running_loop().time()
        # The connection made with the old password is closed, and it no longer connects.
        await asyncio.wait_for(lost.wait(), timeout=1.0)
        assert await refused(connect(broker, old))
        assert asyncio.get_running_loop().time() - rotated < 1.0
        watcher.cancel()
    assert new.password != old.password
    assert not await refused(connect(broker, new))


async def test_a_revoked_account_is_disconnected_and_refused(
    mosquitto: tuple[Server, StackAccounts],
) -> None:
    broker, accounts = mosquitto
    device = await issue(broker, accounts)
    async with connect(broker, device) as connected:
        lost, watcher = watch_for_loss(connected)
        await DynsecAccounts(admin_settings(broker, accounts)).revoke(device.username)
        await asyncio.wait_for(lost.wait(), timeout=1.0)
        watcher.cancel()
    assert await refused(connect(broker, device))
    # Revoking what is not there (again) is no error.
    await DynsecAccounts(admin_settings(broker, accounts)).revoke(device.username)


async def test_the_broker_says_which_topics_an_account_holds(
    mosquitto: tuple[Server, StackAccounts],
) -> None:
    # What the api compares with the device's topics now, to take back only stale accounts.
    broker, accounts = mosquitto
    admin = DynsecAccounts(admin_settings(broker, accounts))
    assert await admin.topics("device-d1") is None
    device = await issue(broker, accounts)
    held = await admin.topics(device.username)
    assert held is not None and held.same_as(device.topics)
    assert not held.same_as(device_topics("baton", "d2", None, {}))
    await admin.revoke(device.username)
    assert await admin.topics(device.username) is None


async def test_nats_server_issues_rotates_and_revokes_by_reloading(tmp_path: Path) -> None:
    """nats-server's users are fixed when it reads its files: the api rewrites them and has it
    read them again (SIGHUP). A rotated or revoked account is refused, and its connection
    closed, within a second; the new password works."""
    accounts = StackAccounts.new("test", DEMO)
    accounts_file = tmp_path / "accounts.json"
    accounts.save(accounts_file)
    port = free_port()
    server = start_nats(tmp_path / "nats-mqtt", mqtt_port=port, mqtt_accounts=accounts)
    broker = Server(
        "nats-mqtt", server.proc, f"mqtt://127.0.0.1:{port}", port, {"protocol": "3.1.1"}
    )
    issuer = ReloadedAccounts(accounts_file, tmp_path / "nats-mqtt")
    topics = device_topics("baton", "d9", None, {})

    async def account(password: str) -> MqttAccount:
        return MqttAccount("device-d9", password, "device-d9", topics)

    try:
        first = await account(await issuer.issue("device-d9", topics))

        async def admitted() -> bool:
            return not await refused(connect(broker, first))

        await eventually(admitted, timeout=1.0, what="the issued account admitted")
        async with connect(broker, first) as connected:
            lost, watcher = watch_for_loss(connected)
            second = await account(await issuer.issue("device-d9", topics))
            await asyncio.wait_for(lost.wait(), timeout=1.0)
            watcher.cancel()
        assert await refused(connect(broker, first))
        assert not await refused(connect(broker, second))
        assert StackAccounts.load(accounts_file).device("d9").password == second.password
        assert await issuer.topics("device-d9") == topics

        await issuer.revoke("device-d9")
        assert await issuer.topics("device-d9") is None

        async def gone() -> bool:
            return await refused(connect(broker, second))

        await eventually(gone, timeout=1.0, what="the revoked account refused")
        # The others are untouched by the reloads.
        assert not await refused(connect(broker, accounts.bridge))
    finally:
        server.stop()


async def test_the_admin_account_cannot_read_or_write_device_topics(
    mosquitto: tuple[Server, StackAccounts],
) -> None:
    broker, accounts = mosquitto
    async with connect(broker, accounts.admin) as admin:
        granted = await admin.subscribe("#", qos=1)
    assert "Not authorized" in str(granted)


async def test_an_unreachable_broker_is_reported_not_raised(tmp_path: Path) -> None:
    settings = Settings(
        mqtt_port=free_port(),
        mqtt_device_accounts="mosquitto-dynsec",
        mqtt_admin_username="baton-admin",
        mqtt_admin_password="x",
    )
    with pytest.raises(AccountsUnavailableError, match="cannot reach"):
        await DynsecAccounts(settings, timeout=2).issue(
            "device-d1", device_topics("baton", "d1", None, {})
        )


# --- TLS (mqtts) -----------------------------------------------------------------------------


async def test_the_simulator_answers_over_tls_with_its_account(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if find_binary("mosquitto") is None:
        pytest.skip("Mosquitto is not installed (deploy/local/install-broker.sh)")
    files = make_ca(tmp_path / "tls")
    accounts = StackAccounts.new("test")
    tls_port = free_port()
    broker = start_mosquitto(tmp_path / "mosquitto", accounts=accounts.every, tls=(tls_port, files))
    stop = asyncio.Event()
    simulator = accounts.simulator
    access = Access(simulator.username, simulator.password, tls=True, ca_file=files.ca_file)
    caplog.set_level(logging.INFO, logger="baton_simulator")
    task = asyncio.create_task(
        run_simulator("localhost", tls_port, "5", ["demo-thermostat-1"], [], stop, access=access)
    )
    try:
        await eventually(lambda: _ready(task, caplog), what="the simulated device online")
        bridge = accounts.bridge
        context = tls_context(True, files.ca_file)
        async with aiomqtt.Client(
            "localhost",
            tls_port,
            username=bridge.username,
            password=bridge.password,
            identifier=bridge.client_id,
            tls_context=context,
            protocol=aiomqtt.ProtocolVersion.V5,
        ) as client:
            await client.subscribe(f"{ROOT}/demo-thermostat-1/executions/+/response", qos=1)
            request = CommandRequest(
                execution_id=UUID(EXECUTION),
                name="set_temperature",
                params={"value": 22},
                deadline=datetime.now(UTC) + timedelta(seconds=30),
            )
            await client.publish(
                request_topic("demo-thermostat-1", EXECUTION), request.model_dump_json(), qos=1
            )
            message = await asyncio.wait_for(anext(aiter(client.messages)), timeout=10)
        assert str(message.topic) == f"{ROOT}/demo-thermostat-1/executions/{EXECUTION}/response"
        # A client that does not trust the test's CA is refused the connection.
        untrusted = aiomqtt.Client(
            "localhost",
            tls_port,
            username=bridge.username,
            password=bridge.password,
            identifier=bridge.client_id,
            tls_context=ssl.create_default_context(),
        )
        assert await refused(untrusted)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=5)
        broker.stop()


async def _ready(task: asyncio.Task[None], caplog: pytest.LogCaptureFixture) -> bool:
    assert not task.done(), task
    return READY_LINE in caplog.text
