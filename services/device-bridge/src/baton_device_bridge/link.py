"""The bridge's one MQTT connection: a reconnect loop, answers in, commands out.

aiomqtt has no automatic reconnect, so `run` is the loop: connect, subscribe to the answer,
status and state topics of every wire profile the catalog uses, hand each message to
`on_answer`, and on `MqttError` wait (capped backoff) and connect again. The connected
client is shared: `publish` sends on it from the events consumer while `run` reads from it.

The session is persistent (fixed client id, no clean start, a long session expiry on MQTT
5): the broker keeps the subscription and queues the QoS 1 answers sent while the bridge is
away, and delivers them when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from baton_contracts.accounts import bridge_client_id
from baton_contracts.mqtt import RESPONSE_FILTER, SOCKET_OPTIONS, is_probe_topic, tls_context
from baton_device_bridge.lanes import Lanes
from baton_platform.metrics import REJECTED_MESSAGES
from baton_platform.settings import Settings

log = logging.getLogger(__name__)

SERVICE = "device-bridge"
# How long the broker keeps the bridge's session (and its queued answers) while it is away.
SESSION_EXPIRY_S = 7 * 24 * 3600

AnswerHandler = Callable[[str, bytes], Awaitable[None]]


def _refused(code: object) -> bool:
    """A SUBACK failure: 0x80 on 3.1.1, any reason code of 0x80 and above on 5."""
    value = getattr(code, "value", code)
    return isinstance(value, int) and value >= 0x80


class MqttUnavailableError(Exception):
    """Not connected, or the connection broke before the broker acknowledged a publish."""


class MqttNotConnectedError(MqttUnavailableError):
    """Not connected: nothing was written, so the broker cannot have taken the message."""


class _Session:
    """One live connection: the client, and an event set when it is lost."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.lost = asyncio.Event()


class MqttLink:
    def __init__(
        self,
        settings: Settings,
        on_answer: AnswerHandler,
        reconnect_cap: float = 5.0,
        connect_wait: float = 2.0,
        publish_timeout: float = 10.0,
        answer_filters: list[str] | None = None,
        probe_filters: list[str] | None = None,
        fence: Callable[[], bool] | None = None,
    ) -> None:
        self.settings = settings
        # Whether it may connect now (a bridge slot: while its lease is held here). Asked
        # before every connect, so a process that lost its slot (frozen past its lease, then
        # resumed) does not connect again and push the slot's new runner off its session.
        self._fence = fence
        # The answer (and status and state) topics of every wire profile the catalog uses
        # (Baton's own answers by default).
        self.answer_filters = answer_filters if answer_filters is not None else [RESPONSE_FILTER]
        # Where the watermark's probes travel: the answer filters themselves, or a replica's
        # own topic (baton_device_bridge.replicas), also subscribed to.
        self._probe_filters = probe_filters
        # Its account's client id (bound to it on Mosquitto; a secret where a broker cannot
        # bind one); by default one made of the instance's name.
        self.identifier = settings.mqtt_client_id or bridge_client_id(settings.instance)
        self._on_answer = on_answer
        self._reconnect_cap = reconnect_cap
        self._connect_wait = connect_wait
        self._publish_timeout = publish_timeout
        self._session: _Session | None = None
        self.connected = asyncio.Event()  # set while connected and subscribed
        self._lanes = Lanes()  # messages in hand: concurrent across topics, in order within
        # Which connection this is (1, 2, ...), since when (time.monotonic()), and whether
        # the broker had kept a session for it: the watermark reasons about all three.
        self.connection = 0
        self.connected_since = 0.0
        self.resumed = False
        self._session_present = True  # until a CONNACK says otherwise

    @property
    def probe_filters(self) -> list[str]:
        return self._probe_filters if self._probe_filters is not None else self.answer_filters

    @property
    def v5(self) -> bool:
        return self.settings.mqtt_protocol == "5"

    # --- commands out -----------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        payload: bytes,
        expiry: int | None = None,
        trace: Mapping[str, str] | None = None,
    ) -> None:
        """Publish with QoS 1; returns once the broker acknowledged it (PUBACK).

        Raises MqttNotConnectedError when not connected within `connect_wait` (nothing was
        sent), MqttUnavailableError when the connection is lost before the PUBACK (the broker
        may have taken it): the caller must then try again later. `trace` goes as MQTT 5
        user properties (none on 3.1.1, which has no place for it).
        """
        session = await self._current()
        properties = None
        if self.v5 and (expiry is not None or trace):
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if expiry is not None:
                properties.MessageExpiryInterval = expiry
            if trace:  # W3C trace context as user properties (docs/mqtt-contract.md)
                properties.UserProperty = list(trace.items())
        sending = asyncio.ensure_future(
            session.client.publish(
                topic, payload, qos=1, properties=properties, timeout=self._publish_timeout
            )
        )
        # Its failure after the loss below is nobody's to hear: retrieved, not logged.
        sending.add_done_callback(lambda done: done.cancelled() or done.exception())
        # A PUBACK lost with the connection would only show as a timeout: stop at the loss.
        lost = asyncio.ensure_future(session.lost.wait())
        try:
            await asyncio.wait({sending, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not sending.done():
                sending.cancel()
        if not sending.done() or sending.cancelled():
            raise MqttUnavailableError("connection lost before the broker took the message")
        try:
            sending.result()
        except aiomqtt.MqttError as exc:
            raise MqttUnavailableError(str(exc) or type(exc).__name__) from exc

    async def _current(self) -> _Session:
        if self._session is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.connected.wait(), self._connect_wait)
        session = self._session
        if session is None:
            raise MqttNotConnectedError("not connected to the MQTT broker")
        return session

    # --- the connection and answers in --------------------------------------------------------

    def _client(self) -> aiomqtt.Client:
        s = self.settings
        session_expiry = None
        if self.v5:
            # Without it an MQTT 5 session ends at disconnect, clean start or not.
            session_expiry = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            session_expiry.SessionExpiryInterval = SESSION_EXPIRY_S
        client = aiomqtt.Client(
            s.mqtt_host,
            s.mqtt_port,
            username=s.mqtt_username,
            password=s.mqtt_password.get_secret_value() if s.mqtt_password else None,
            identifier=self.identifier,
            tls_context=tls_context(s.mqtt_tls, s.mqtt_ca_file),
            logger=logging.getLogger("baton_device_bridge.mqtt"),
            protocol=aiomqtt.ProtocolVersion.V5 if self.v5 else aiomqtt.ProtocolVersion.V311,
            # The persistent session: `clean_session` on 3.1.1, `clean_start` on 5 (aiomqtt's
            # default starts clean on the first connect). paho refuses each on the other.
            clean_session=None if self.v5 else False,
            clean_start=False if self.v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=session_expiry,
            socket_options=SOCKET_OPTIONS,
        )
        # Both directions share this client and calls pile up while the broker is slow; the
        # default threshold (10) would log a warning for every call beyond it.
        client.pending_calls_threshold = 10_000
        # aiomqtt acknowledges a QoS 1 message as soon as it arrives, which loses the answer
        # if the bridge dies before JetStream stored its report. paho can leave the PUBACK to
        # us; aiomqtt has no public switch for it, so reach its paho client (a private
        # attribute: re-check on every aiomqtt upgrade). Must be set before connecting.
        client._client.manual_ack_set(True)
        # Whether the broker resumed a session (CONNACK's session-present flag): aiomqtt
        # drops it, so listen in on paho's callback, the same private client as above.
        on_connect = client._client.on_connect
        assert on_connect is not None, "aiomqtt sets it when it builds the client"

        def remember_session(*args: Any) -> None:
            flags = args[2] if len(args) > 2 else None
            self._session_present = bool(getattr(flags, "session_present", True))
            on_connect(*args)

        client._client.on_connect = remember_session
        return client

    async def follow(self, filters: list[str]) -> None:
        """Subscribe to `filters` from now on (the catalog changed); the ones new to the
        live session are subscribed at once, all of them on every reconnect."""
        new = [f for f in filters if f not in self.answer_filters]
        self.answer_filters = list(dict.fromkeys([*self.answer_filters, *filters]))
        session = self._session
        if session is None:
            return  # the next connect subscribes to them all
        for topic_filter in new:
            try:
                await session.client.subscribe(topic_filter, qos=1)
            except aiomqtt.MqttError as exc:  # the loop reconnects and subscribes then
                log.warning("could not subscribe to %s yet: %s", topic_filter, exc)

    def _wanted(self) -> list[str]:
        return list(dict.fromkeys([*self.answer_filters, *(self._probe_filters or [])]))

    async def run(self) -> None:
        """Connect, consume, reconnect: until cancelled."""
        try:
            await self._connected_loop()
        finally:
            await self._lanes.close()

    async def _connected_loop(self) -> None:
        failures = 0
        while True:
            if self._fence is not None and not self._fence():
                log.warning(
                    "not connecting to MQTT as %s: no longer this process's", self.identifier
                )
                await asyncio.sleep(self._reconnect_cap)
                continue
            try:
                client = self._client()
                async with client:
                    # Until none is left: `follow` adds filters meanwhile (a catalog change)
                    # and leaves them to this loop while the session is not yet shared.
                    subscribed: set[str] = set()
                    while pending := [f for f in self._wanted() if f not in subscribed]:
                        for topic_filter in pending:
                            granted = await client.subscribe(topic_filter, qos=1)
                            if any(_refused(code) for code in granted):
                                raise aiomqtt.MqttError(f"subscription to {topic_filter} refused")
                            subscribed.add(topic_filter)
                    self._session = _Session(client)
                    self.connection += 1
                    self.connected_since = time.monotonic()
                    self.resumed = self._session_present
                    self.connected.set()
                    log.info(
                        "connected to MQTT %s:%d (MQTT %s) as %s",
                        self.settings.mqtt_host,
                        self.settings.mqtt_port,
                        self.settings.mqtt_protocol,
                        self.identifier,
                    )
                    failures = 0
                    async for message in client.messages:
                        work = functools.partial(self._answer, client, message)
                        topic = str(message.topic)
                        if is_probe_topic(topic):
                            await self._lanes.barrier(work)  # after all before it is stored
                        else:
                            await self._lanes.submit(topic, work)
            except aiomqtt.MqttError as exc:
                failures += 1
                # Once per outage at warning level; the retries that follow at debug.
                level = logging.WARNING if failures == 1 else logging.DEBUG
                log.log(
                    level,
                    "MQTT connection lost or refused (%s) for account %s; reconnecting",
                    exc,
                    self.settings.mqtt_username or "(anonymous)",
                )
            except Exception:
                # A bug or a surprise from paho: the loop must not die quietly with it, or the
                # bridge would run on with no MQTT at all. Loud, then retried like an outage.
                failures += 1
                log.exception("MQTT loop failed; reconnecting")
            finally:
                self.connected.clear()
                if self._session is not None:
                    self._session.lost.set()
                    self._session = None
            await asyncio.sleep(min(0.1 * 2 ** (failures - 1), self._reconnect_cap))

    async def _answer(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        topic = str(message.topic)
        payload = message.payload
        raw = payload if isinstance(payload, bytes) else str(payload).encode()
        try:
            await self._on_answer(topic, raw)
        except Exception:
            # A bug, not bad input (that is dropped by the handler): never stop the loop on it,
            # and do not have the broker hand the same message back forever either.
            REJECTED_MESSAGES.labels(service=SERVICE, reason="bridge-error").inc()
            log.exception("could not handle a message on %s; dropped", topic)
        # Only now, with the report stored (or the message dropped), may the broker forget
        # it. QoS 0 needs no ack; paho ignores it. See `_client` for why this is manual.
        client._client.ack(message.mid, message.qos)
