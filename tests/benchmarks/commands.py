"""Baton's command benchmark: `make bench` (or `python -m tests.benchmarks.commands`).

Starts the whole stack (nats-server, the MQTT broker, the four services, the simulator) in
a temporary directory on free loopback ports, then measures, in the same run:

- floors: a bare NATS request/reply round trip, a bare MQTT QoS 1 round trip through the
  same broker, a JetStream publish on the same (fsyncing) server, and the event store's
  write rate (one execution per transaction);
- latency: one command at a time, `POST ...?wait=` until SUCCEEDED (p50/p95/p99);
- throughput: many commands submitted at once, until every one has SUCCEEDED.

It prints the figures and their ratios to the floors. Nothing here asserts a speed: the
numbers depend on the machine; compare runs on the same one.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import nats

from baton_cli.localstack import Stack
from baton_contracts.mqtt import SOCKET_OPTIONS
from baton_domain.application import Executions, RequestCommand
from baton_domain.catalog import Catalog
from baton_platform.eventstore import event_store_env
from baton_platform.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT / "deploy" / "catalog" / "demo.yaml"
KEY = "bench-key"
DEVICES = [f"demo-thermostat-{n}" for n in range(1, 6)]


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {
        "p50": pick(0.50),
        "p95": pick(0.95),
        "p99": pick(0.99),
        "mean": statistics.mean(ordered),
    }


def ms(value: float) -> str:
    return f"{value * 1000:.1f} ms"


# --- floors --------------------------------------------------------------------------------


async def nats_round_trip(url: str, n: int) -> list[float]:
    nc = await nats.connect(url)
    try:

        async def echo(msg: Any) -> None:
            await msg.respond(msg.data)

        await nc.subscribe("bench.echo", cb=echo)
        samples = []
        for _ in range(n):
            start = time.perf_counter()
            await nc.request("bench.echo", b"x" * 200, timeout=5)
            samples.append(time.perf_counter() - start)
        return samples
    finally:
        await nc.close()


async def mqtt_round_trip(port: int, protocol: str, n: int) -> list[float]:
    version = aiomqtt.ProtocolVersion.V5 if protocol == "5" else aiomqtt.ProtocolVersion.V311
    async with aiomqtt.Client(
        "127.0.0.1", port, protocol=version, identifier="bench", socket_options=SOCKET_OPTIONS
    ) as client:
        await client.subscribe("bench/echo", qos=1)
        samples = []
        messages = client.messages
        for _ in range(n):
            start = time.perf_counter()
            await client.publish("bench/echo", b"x" * 200, qos=1)
            await anext(messages)
            samples.append(time.perf_counter() - start)
        return samples


async def jetstream_publish(url: str, n: int) -> list[float]:
    """One JetStream publish until its ack, on the stack's server (which fsyncs every write:
    `sync_interval: always`, docs/architecture.md): what storing one report costs at least."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="BENCH_FLOOR", subjects=["bench.floor"])
        samples = []
        for _ in range(n):
            start = time.perf_counter()
            await js.publish("bench.floor", b"x" * 300)
            samples.append(time.perf_counter() - start)
        await js.delete_stream("BENCH_FLOOR")
        return samples
    finally:
        await nc.close()


def store_write_rate(directory: Path, n: int) -> float:
    """Requests stored per second on one device, one transaction each (Requested,
    Dispatched and the device queue's Admitted)."""
    env = {
        **event_store_env(Settings(data_dir=directory)),  # as the dispatcher opens it
        "SQLITE_DBNAME": str(directory / "b.db"),
    }
    app = Executions(Catalog.from_yaml(CATALOG), env=env)
    command = RequestCommand("demo-thermostat-1", "reboot", {}, None)
    start = time.perf_counter()
    for _ in range(n):
        app.request(command)
    elapsed = time.perf_counter() - start
    app.close()
    return n / elapsed


# --- Baton ---------------------------------------------------------------------------------


async def latency(client: httpx.AsyncClient, n: int) -> list[float]:
    samples = []
    for i in range(n):
        start = time.perf_counter()
        response = await client.post(
            f"/v1/devices/{DEVICES[i % len(DEVICES)]}/commands",
            params={"wait": 10},
            json={"name": "set_temperature", "params": {"value": 20}},
        )
        samples.append(time.perf_counter() - start)
        if response.json().get("status") != "SUCCEEDED":
            raise RuntimeError(f"command did not succeed: {response.text}")
    return samples


async def throughput(client: httpx.AsyncClient, n: int, concurrency: int) -> tuple[float, float]:
    """(seconds to accept all n, seconds until all n SUCCEEDED)."""
    before = await client.get("/v1/executions", params={"status": "SUCCEEDED", "limit": 1})
    done_before = before.json()["total_count"]
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            response = await client.post(
                f"/v1/devices/{DEVICES[i % len(DEVICES)]}/commands",
                json={"name": "set_temperature", "params": {"value": 21}},
            )
            response.raise_for_status()

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    accepted = time.perf_counter() - start
    deadline = start + 300
    while time.perf_counter() < deadline:
        page = await client.get("/v1/executions", params={"status": "SUCCEEDED", "limit": 1})
        if page.json()["total_count"] - done_before >= n:
            return accepted, time.perf_counter() - start
        await asyncio.sleep(0.05)
    raise RuntimeError(f"not all {n} commands succeeded within 300 s")


async def measure(stack: Stack, args: argparse.Namespace, scratch: Path) -> None:
    nats_rtt = percentiles(await nats_round_trip(stack.nats_url, args.floor_samples))
    mqtt_rtt = percentiles(
        await mqtt_round_trip(stack.mqtt_port or 0, stack.mqtt_protocol, args.floor_samples)
    )
    js_publish = percentiles(await jetstream_publish(stack.nats_url, args.floor_samples))
    store_rate = await asyncio.to_thread(store_write_rate, scratch, args.store_samples)
    async with httpx.AsyncClient(
        base_url=stack.api_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60
    ) as client:
        await latency(client, 5)  # warm-up: connections, caches
        e2e = percentiles(await latency(client, args.latency_samples))
        accepted, finished = await throughput(client, args.commands, args.concurrency)

    floor = nats_rtt["p50"] + mqtt_rtt["p50"]
    rate = args.commands / finished
    print(
        f"\nBaton benchmark ({stack.broker} MQTT {stack.mqtt_protocol}, SQLite, 1 of each service)"
    )
    print("floors")
    print(f"  NATS request/reply     p50 {ms(nats_rtt['p50'])}  p99 {ms(nats_rtt['p99'])}")
    print(f"  MQTT QoS 1 round trip  p50 {ms(mqtt_rtt['p50'])}  p99 {ms(mqtt_rtt['p99'])}")
    print(
        f"  JetStream publish      p50 {ms(js_publish['p50'])}  p99 {ms(js_publish['p99'])}"
        "  (fsync each write)"
    )
    print(f"  event store writes     {store_rate:.0f} requests/s (3 events, 1 transaction each)")
    print(f"latency, one command at a time ({args.latency_samples} x set_temperature, wait=10)")
    print(
        f"  submit -> SUCCEEDED    p50 {ms(e2e['p50'])}  p95 {ms(e2e['p95'])}  "
        f"p99 {ms(e2e['p99'])}  mean {ms(e2e['mean'])}"
    )
    print(f"  ratio to the floor (NATS p50 + MQTT p50 = {ms(floor)}): {e2e['p50'] / floor:.1f}x")
    print(f"throughput ({args.commands} commands, {args.concurrency} in flight over HTTP)")
    print(f"  accepted in {accepted:.2f} s ({args.commands / accepted:.0f}/s)")
    print(f"  all SUCCEEDED in {finished:.2f} s: {rate:.0f} commands/s, ~{rate * 7:.0f} events/s")
    print(f"  ratio to the store's write floor: {rate / store_rate:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--latency-samples", type=int, default=100)
    parser.add_argument("--floor-samples", type=int, default=300)
    parser.add_argument("--store-samples", type=int, default=500)
    parser.add_argument("--broker", choices=["mosquitto", "nats"], default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="baton-bench-") as tmp:
        data = Path(tmp)
        extra = {"broker": args.broker} if args.broker else {}
        stack = Stack(data_dir=data / "stack", api_key=KEY, catalog=CATALOG, **extra)
        try:
            stack.start_all()
            _wait_ready(stack)
            asyncio.run(measure(stack, args, data))
        finally:
            stack.stop_all()


def _wait_ready(stack: Stack, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{stack.api_url}/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the stack did not become ready; logs in {stack.log_dir}")


if __name__ == "__main__":
    main()
