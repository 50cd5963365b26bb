"""One simulated device: its own MQTT connection, Baton's device-side contract, a behaviour.

The device subscribes to its request and cancel topics, runs each request's script in a task
of its own (so a slow reboot does not hold up anything else), and answers on the execution's
response topic. aiomqtt does not reconnect by itself, so `run` is a reconnect loop with a
capped backoff; the session is persistent, so the broker keeps requests published while the
device is away and hands them over when it comes back.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError

from baton_contracts.mqtt import (
    SOCKET_OPTIONS,
    CancelRequest,
    CommandRequest,
    device_filters,
    parse_execution_topic,
    response_topic,
)
from baton_simulator.behaviours import Action, Behaviour, plan

log = logging.getLogger("baton_simulator")

PROTOCOLS = {"5": aiomqtt.ProtocolVersion.V5, "3.1.1": aiomqtt.ProtocolVersion.V311}
# MQTT 5 ends a session when its connection closes unless CONNECT says how long to keep it.
SESSION_EXPIRY_S = 3600
PUBLISH_TIMEOUT_S = 10.0
PUBLISH_RETRY_S = 0.2


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    protocol: str  # "5" or "3.1.1"

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"MQTT protocol must be 5 or 3.1.1, not {self.protocol!r}")

    def client(self, identifier: str) -> aiomqtt.Client:
        """A client that keeps its session across reconnects."""
        if self.protocol == "5":
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = SESSION_EXPIRY_S
            client = aiomqtt.Client(
                self.host,
                self.port,
                identifier=identifier,
                socket_options=SOCKET_OPTIONS,
                protocol=PROTOCOLS["5"],
                clean_start=False,
                properties=properties,
            )
        else:
            client = aiomqtt.Client(
                self.host,
                self.port,
                identifier=identifier,
                socket_options=SOCKET_OPTIONS,
                protocol=PROTOCOLS["3.1.1"],
                clean_session=False,
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
    ) -> None:
        self.device_id = device_id
        self.behaviour = behaviour
        self.broker = broker
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._seen = RecentIds(remember)
        self._running: dict[str, asyncio.Task[None]] = {}
        self._client: aiomqtt.Client | None = None
        self._online = asyncio.Event()
        self._drop = asyncio.Event()  # set by a go-offline step
        self._offline_until = 0.0

    # --- the connection ----------------------------------------------------------------------

    async def run(self) -> None:
        """Stay connected and answer requests until cancelled."""
        backoff = self.backoff_initial
        in_outage = False
        try:
            while True:
                await self._stay_offline()
                try:
                    async with self.broker.client(f"baton-sim-{self.device_id}") as client:
                        await client.subscribe([(f, 1) for f in device_filters(self.device_id)])
                        self._client = client
                        self._online.set()
                        log.info("%s online%s", self.device_id, " again" if in_outage else "")
                        in_outage, backoff = False, self.backoff_initial
                        await self._serve(client)
                        continue  # a go-offline step dropped the connection on purpose
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
        parsed = parse_execution_topic(topic)
        if parsed is None or parsed[0] != self.device_id:
            log.warning("%s ignores a message on %s", self.device_id, topic)
            return
        _, execution_id, leaf = parsed
        if not isinstance(payload, bytes | bytearray | str):
            log.warning("%s ignores a non-text payload on %s", self.device_id, topic)
            return
        try:
            if leaf == "request":
                self._on_request(execution_id, CommandRequest.model_validate_json(payload))
            elif leaf == "cancel":
                self._on_cancel(execution_id, CancelRequest.model_validate_json(payload))
        except ValidationError as exc:
            log.warning("%s ignores a bad %s on %s: %s", self.device_id, leaf, topic, exc)
        except Exception:  # a simulator bug must not take the device off the broker
            log.exception("%s failed to handle a message on %s", self.device_id, topic)

    def _on_request(self, execution_id: str, request: CommandRequest) -> None:
        if str(request.execution_id) != execution_id:
            log.warning(
                "%s ignores a request for %s on the topic of %s",
                self.device_id,
                request.execution_id,
                execution_id,
            )
            return
        if execution_id in self._seen:
            log.info("%s ignores a repeated request for %s", self.device_id, execution_id)
            return
        self._seen.add(execution_id)
        if request.deadline <= datetime.now(UTC):
            # Kept by a session (no message expiry on MQTT 3.1.1) past its deadline: Baton has
            # ended it already, so a real device must not act on it either.
            log.info("%s ignores %s: its deadline has passed", self.device_id, execution_id)
            return
        actions = plan(self.behaviour, request)
        if not actions:
            return
        task = asyncio.create_task(self._perform(execution_id, actions))
        self._running[execution_id] = task
        task.add_done_callback(lambda _: self._running.pop(execution_id, None))

    def _on_cancel(self, execution_id: str, cancel: CancelRequest) -> None:
        # Remembered as handled, so a request that arrives after its cancel does not run.
        self._seen.add(execution_id)
        task = self._running.pop(execution_id, None)
        if task is not None:
            task.cancel()
            log.info("%s canceled %s: %s", self.device_id, execution_id, cancel.reason)

    async def _perform(self, execution_id: str, actions: list[Action]) -> None:
        topic = response_topic(self.device_id, execution_id)
        try:
            for action in actions:
                if action.delay > 0:
                    await asyncio.sleep(action.delay)
                if action.answer is not None:
                    await self._publish(topic, action.answer.model_dump_json().encode())
                if action.offline_for > 0:
                    self.go_offline(action.offline_for)
        except Exception:
            log.exception("%s failed while running %s", self.device_id, execution_id)

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
