"""The floors: what the pieces under Baton cost on this machine, one operation at a time,
measured on the same servers the stack runs on.

- a bare NATS request/reply round trip;
- a bare MQTT QoS 1 round trip through the broker (publish, receive it back);
- an MQTT round trip to a simulated device: a command request published straight on its
  request topic, until its SUCCEEDED answer comes back (broker + simulator, no Baton);
- a JetStream publish until acknowledged (the server fsyncs every write);
- an HTTP request to the api that does nothing (`GET /health`: uvicorn + Litestar);
- the event store's write rate for a succeeding command's events (history.write_commands),
  one command per transaction and many.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import aiomqtt
import nats

from baton_contracts.mqtt import (
    RESPONSE_FILTER,
    SOCKET_OPTIONS,
    CommandRequest,
    DeviceAnswer,
    parse_execution_topic,
    request_topic,
)
from tests.benchmarks.history import COMMAND
from tests.benchmarks.lean_http import LeanClient

Round = Callable[[], Awaitable[None]]

PAYLOAD = b"x" * 200


async def timed(round_trip: Round, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await round_trip()
        samples.append(time.perf_counter() - start)
    return samples


async def nats_round_trip(url: str, n: int) -> list[float]:
    nc = await nats.connect(url)
    try:

        async def echo(msg: Any) -> None:
            await msg.respond(msg.data)

        await nc.subscribe("bench.echo", cb=echo)

        async def once() -> None:
            await nc.request("bench.echo", PAYLOAD, timeout=5)

        return await timed(once, n)
    finally:
        await nc.close()


# (username, password) of an account that may use every device topic: the stack's simulator.
Login = tuple[str, str]


def _mqtt_client(port: int, protocol: str, identifier: str, login: Login) -> aiomqtt.Client:
    version = aiomqtt.ProtocolVersion.V5 if protocol == "5" else aiomqtt.ProtocolVersion.V311
    username, password = login
    return aiomqtt.Client(
        "127.0.0.1",
        port,
        protocol=version,
        identifier=identifier,
        username=username,
        password=password,
        socket_options=SOCKET_OPTIONS,
    )


async def mqtt_round_trip(port: int, protocol: str, n: int, login: Login) -> list[float]:
    async with _mqtt_client(port, protocol, "bench-echo", login) as client:
        await client.subscribe("bench/echo", qos=1)
        messages = client.messages

        async def once() -> None:
            await client.publish("bench/echo", PAYLOAD, qos=1)
            await anext(messages)

        return await timed(once, n)


async def device_round_trip(
    port: int, protocol: str, devices: list[str], n: int, login: Login
) -> list[float]:
    """A command request to a simulated device (round robin over `devices`) until its
    SUCCEEDED answer: the MQTT part of a command's path, without Baton."""
    async with _mqtt_client(port, protocol, "bench-device", login) as client:
        await client.subscribe(RESPONSE_FILTER, qos=1)
        messages = client.messages
        turn = iter(range(n))
        name, params = COMMAND

        async def once() -> None:
            device = devices[next(turn) % len(devices)]
            request = CommandRequest(
                execution_id=uuid4(),
                name=name,
                params=params,
                deadline=datetime.now(UTC) + timedelta(seconds=30),
            )
            topic = request_topic(device, request.execution_id)
            await client.publish(topic, request.model_dump_json().encode(), qos=1)
            async for message in messages:
                parsed = parse_execution_topic(message.topic.value)
                if parsed is None or parsed[1] != str(request.execution_id):
                    continue
                if DeviceAnswer.model_validate_json(bytes(message.payload)).status == "SUCCEEDED":
                    return

        return await timed(once, n)


async def jetstream_publish(url: str, n: int) -> list[float]:
    """One JetStream publish until its ack, on the stack's server (which fsyncs every write:
    `sync_interval: always`, docs/architecture.md): what storing one report costs at least."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="BENCH_FLOOR", subjects=["bench.floor"])

        async def once() -> None:
            await js.publish("bench.floor", b"x" * 300)

        samples = await timed(once, n)
        await js.delete_stream("BENCH_FLOOR")
        return samples
    finally:
        await nc.close()


async def http_round_trip(client: LeanClient, n: int) -> list[float]:
    """`GET /health` with the load generator's own client."""

    async def once() -> None:
        status, _ = await client.request("GET", "/health")
        if status != 200:
            raise RuntimeError(f"/health answered {status}")

    return await timed(once, n)
