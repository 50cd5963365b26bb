"""One simulated device: its own MQTT connection, the device side of a wire profile, a
behaviour.

The device subscribes to its profile's request (and cancel) topics, reads what arrives with
the profile's codec (the one the device-bridge writes with), runs each request's script in a
task of its own (so a slow reboot does not hold up anything else), and answers in its
profile's words. aiomqtt does not reconnect by itself, so `run` is a reconnect loop with a
capped backoff; the session is persistent, so the broker keeps requests published while the
device is away and hands them over when it comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from baton_contracts.mqtt import SOCKET_OPTIONS, CommandRequest, tls_context
from baton_contracts.profiles import (
    DeviceCancel,
    DeviceRequest,
    MalformedWireError,
    codec_for,
)
from baton_simulator.behaviours import Action, Behaviour, plan
from baton_simulator.journal import Journal, Outcome

log = logging.getLogger("baton_simulator")

PROTOCOLS = {"5": aiomqtt.ProtocolVersion.V5, "3.1.1": aiomqtt.ProtocolVersion.V311}
# MQTT 5 ends a session when its connection closes unless CONNECT says how long to keep it.
SESSION_EXPIRY_S = 3600
PUBLISH_TIMEOUT_S = 10.0
PUBLISH_RETRY_S = 0.2
# How long a device leaving cleanly waits to say it is offline.
STATUS_TIMEOUT_S = 2.0
# What a request without a deadline on the wire (aws-iot-commands, raw-mapped) is given.
NO_DEADLINE = timedelta(days=1)


@dataclass(frozen=True)
class DeviceWire:
    """How a device speaks: its wire profile, the id it goes by there, and its type's (and
    each command's) wire settings from the catalog."""

    wire_id: str
    profile: str = "baton"
    type_wire: Mapping[str, Any] = field(default_factory=dict)
    commands_wire: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Access:
    """How the simulator gets into the broker: its account (docs/security.md) and TLS."""

    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: Path | None = None  # None: the system's CAs


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    protocol: str  # "5" or "3.1.1"
    access: Access = Access()

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"MQTT protocol must be 5 or 3.1.1, not {self.protocol!r}")

    def client(self, identifier: str, will: aiomqtt.Will | None = None) -> aiomqtt.Client:
        """A client that keeps its session across reconnects; the broker publishes `will`
        if the connection ends without a DISCONNECT."""
        session: dict[str, Any] = {"clean_session": False}
        if self.protocol == "5":
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = SESSION_EXPIRY_S
            session = {"clean_start": False, "properties": properties}
        client = aiomqtt.Client(
            self.host,
            self.port,
            identifier=identifier,
            username=self.access.username,
            password=self.access.password,
            tls_context=tls_context(self.access.tls, self.access.ca_file),
            socket_options=SOCKET_OPTIONS,
            protocol=PROTOCOLS[self.protocol],
            will=will,
            **session,
        )
        # Answers of many executions are published concurrently; the default (10) only warns.
        client.pending_calls_threshold = 10_000
        return client


class RecentIds:
    """The last `limit` ids seen, oldest forgotten first."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._ids: dict[str, None] = {}

    def __contains__(self, item: object) -> bool:
        return item in self._ids

    def add(self, item: str) -> None:
        self._ids[item] = None
        if len(self._ids) > self._limit:
            del self._ids[next(iter(self._ids))]


class SimulatedDevice:
    def __init__(
        self,
        device_id: str,
        behaviour: Behaviour,
        broker: Broker,
        *,
        backoff_initial: float = 0.2,
        backoff_max: float = 5.0,
        remember: int = 10_000,
        wire: DeviceWire | None = None,
        connecting: asyncio.Semaphore | None = None,
        journal: Journal | None = None,
    ) -> None:
        """`connecting`: shared by a fleet, it bounds how many devices are between TCP
        connect and their `online` status at once, so a thousand devices starting (or coming
        back after a broker restart) arrive in batches rather than all at once. `journal`:
        where to write each request received and each answer the broker took."""
        self.device_id = device_id
        self.behaviour = behaviour
        self.broker = broker
        self.wire = wire or DeviceWire(device_id)
        self.codec = codec_for(self.wire.profile)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._seen = RecentIds(remember)
        self._running: dict[str, asyncio.Task[None]] = {}
        self._client: aiomqtt.Client | None = None
        self._online = asyncio.Event()
        self._drop = asyncio.Event()  # set by a go-offline step
        self._offline_until = 0.0
        self._connecting = connecting
        self._journal = journal

    # --- the connection ----------------------------------------------------------------------

    async def run(self) -> None:
        """Stay connected and answer requests until cancelled."""
        backoff = self.backoff_initial
        in_outage = False
        try:
            while True:
                await self._stay_offline()
                # Names this connection: its `online` and its last will carry the same one.
                connection = str(time.time_ns() // 1000)
                will = self._status(online=False, connection=connection)
                try:
                    async with contextlib.AsyncExitStack() as connected:
                        async with self._connecting or contextlib.nullcontext():
                            client = await connected.enter_async_context(
                                self.broker.client(f"baton-sim-{self.device_id}", will)
                            )
                            filters = self.codec.device_filters(
                                self.wire.wire_id, self.wire.type_wire
                            )
                            await client.subscribe([(f, 1) for f in filters])
                            online = self._status(online=True, connection=connection)
                            await self._say(client, online)
                        self._client = client
                        self._online.set()
                        log.info("%s online%s", self.device_id, " again" if in_outage else "")
                        in_outage, backoff = False, self.backoff_initial
                        try:
                            await self._serve(client)
                        except asyncio.CancelledError:
                            # A clean stop: say so before the DISCONNECT (the will is not sent).
                            await self._say(client, will, quietly=True)
                            raise
                        # A go-offline step drops the connection on purpose, cleanly too.
                        await self._say(client, will, quietly=True)
                        continue
                except aiomqtt.MqttError as exc:
                    if not in_outage:
                        log.warning(
                            "%s lost the broker at %s:%s (%s); reconnecting",
                            self.device_id,
                            self.broker.host,
                            self.broker.port,
                            exc,
                        )
                        in_outage = True
                finally:
                    self._online.clear()
                    self._client = None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.backoff_max)
        finally:
            await self._cancel_all()

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Receive until the connection fails (raises) or a go-offline step asks to drop."""
        receiving = asyncio.ensure_future(self._receive(client))
        dropping = asyncio.ensure_future(self._drop.wait())
        try:
            await asyncio.wait({receiving, dropping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (receiving, dropping):
                task.cancel()
            await asyncio.gather(receiving, dropping, return_exceptions=True)
        if not receiving.cancelled() and (error := receiving.exception()) is not None:
            raise error

    def _status(self, online: bool, connection: str) -> aiomqtt.Will | None:
        """The retained status message of this device (None: its profile has none)."""
        wire = self.wire
        message = self.codec.encode_status(wire.wire_id, online, connection, wire.type_wire)
        if message is None:
            return None
        return aiomqtt.Will(message.topic, message.payload, qos=1, retain=True)

    async def _say(
        self, client: aiomqtt.Client, status: aiomqtt.Will | None, quietly: bool = False
    ) -> None:
        """Publish a status message (retained, QoS 1). `quietly`: on the way out, where a
        broker that is gone already must not hold the device up (its will says it then)."""
        if status is None:
            return
        try:
            await client.publish(
                status.topic,
                status.payload,
                qos=1,
                retain=True,
                timeout=STATUS_TIMEOUT_S if quietly else PUBLISH_TIMEOUT_S,
            )
        except aiomqtt.MqttError:
            if not quietly:
                raise
            log.debug("%s could not say it is offline", self.device_id)

    async def _stay_offline(self) -> None:
        self._drop.clear()
        remaining = self._offline_until - asyncio.get_running_loop().time()
        if remaining > 0:
            log.info("%s offline for %.1f s", self.device_id, remaining)
            await asyncio.sleep(remaining)

    async def wait_online(self) -> None:
        await self._online.wait()

    def go_offline(self, seconds: float) -> None:
        """Leave the broker now and come back after `seconds`; answers wait until then."""
        loop_time = asyncio.get_running_loop().time()
        self._offline_until = max(self._offline_until, loop_time + seconds)
        self._online.clear()
        self._drop.set()

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            self.handle(message.topic.value, message.payload)

    # --- the contract --------------------------------------------------------------------------

    def handle(self, topic: str, payload: object) -> None:
        """One message on the device's topics; a bad one is logged and ignored."""
        if not isinstance(payload, bytes | bytearray | str):
            log.warning("%s ignores a non-text payload on %s", self.device_id, topic)
            return
        raw = payload.encode() if isinstance(payload, str) else bytes(payload)
        wire = self.wire
        try:
            incoming = self.codec.decode_request(
                topic, raw, wire.wire_id, wire.type_wire, wire.commands_wire
            )
        except MalformedWireError as exc:
            log.warning(
                "%s ignores a message on %s (%s): %s", self.device_id, topic, exc.reason, exc
            )
            return
        try:
            if isinstance(incoming, DeviceCancel):
                self._on_cancel(incoming)
            else:
                self._on_request(incoming)
        except Exception:  # a simulator bug must not take the device off the broker
            log.exception("%s failed to handle a message on %s", self.device_id, topic)

    def _on_request(self, incoming: DeviceRequest) -> None:
        key = incoming.execution_key
        now = datetime.now(UTC)
        if key is not None:
            if key in self._seen:
                log.info("%s ignores a repeated request for %s", self.device_id, key)
                self._note_received(key, incoming, "repeat")
                return
            self._seen.add(key)
            try:
                execution_id = UUID(key)
            except ValueError:
                log.warning("%s ignores a request for a bad execution id %r", self.device_id, key)
                return
        else:
            # Nothing on the wire names the execution (raw-mapped): every delivery runs.
            execution_id = uuid4()
        if incoming.deadline is not None and incoming.deadline <= now:
            # Kept by a session (no message expiry on MQTT 3.1.1) past its deadline: Baton has
            # ended it already, so a real device must not act on it either.
            log.info("%s ignores %s: its deadline has passed", self.device_id, key)
            self._note_received(key, incoming, "late")
            return
        self._note_received(key or str(execution_id), incoming, "run")
        request = CommandRequest(
            execution_id=execution_id,
            name=incoming.name,
            params=incoming.params,
            deadline=incoming.deadline or now + NO_DEADLINE,
        )
        actions = plan(self.behaviour, request)
        if not actions:
            return
        task_key = key or str(execution_id)
        task = asyncio.create_task(self._perform(key, actions))
        self._running[task_key] = task
        task.add_done_callback(lambda _: self._running.pop(task_key, None))

    def _note_received(self, key: str | None, incoming: DeviceRequest, outcome: Outcome) -> None:
        if self._journal is not None:
            self._journal.received(self.device_id, key, incoming.name, incoming.deadline, outcome)

    def _on_cancel(self, cancel: DeviceCancel) -> None:
        # Remembered as handled, so a request that arrives after its cancel does not run.
        execution_id = cancel.execution_key
        self._seen.add(execution_id)
        task = self._running.pop(execution_id, None)
        if task is not None:
            task.cancel()
            log.info("%s canceled %s: %s", self.device_id, execution_id, cancel.reason)

    async def _perform(self, execution_key: str | None, actions: list[Action]) -> None:
        wire = self.wire
        try:
            for action in actions:
                if action.delay > 0:
                    await asyncio.sleep(action.delay)
                if action.answer is not None:
                    answer = action.answer
                    message = self.codec.encode_answer(
                        wire.wire_id,
                        execution_key,
                        answer.status,
                        answer.payload,
                        answer.answer_id,
                        wire.type_wire,
                    )
                    if message is not None:  # the profile may have no word for it
                        tried_at = datetime.now(UTC)
                        await self._publish(message.topic, message.payload)
                        if self._journal is not None:
                            self._journal.answered(
                                self.device_id,
                                execution_key,
                                answer.status,
                                answer.answer_id,
                                tried_at,
                            )
                if action.state is not None:
                    reported = self.codec.encode_state(wire.wire_id, action.state, wire.type_wire)
                    if reported is not None:  # the profile may have no state topic
                        await self._publish(reported.topic, reported.payload)
                if action.offline_for > 0:
                    self.go_offline(action.offline_for)
        except Exception:
            log.exception("%s failed while running %s", self.device_id, execution_key)

    async def _publish(self, topic: str, payload: bytes) -> None:
        """Publish with QoS 1, waiting out a lost connection (answer ids make repeats safe)."""
        while True:
            await self._online.wait()
            client = self._client
            if client is None:  # pragma: no cover - `_online` and `_client` change together
                await asyncio.sleep(PUBLISH_RETRY_S)
                continue
            try:
                await client.publish(topic, payload, qos=1, timeout=PUBLISH_TIMEOUT_S)
            except aiomqtt.MqttError as exc:
                log.debug("%s will retry an answer on %s: %s", self.device_id, topic, exc)
                await asyncio.sleep(PUBLISH_RETRY_S)
            else:
                return

    async def _cancel_all(self) -> None:
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
