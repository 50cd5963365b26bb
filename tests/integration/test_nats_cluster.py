"""Baton's streams on a 3-node JetStream cluster: three copies of each, and writes and
deliveries that go on when one node is killed (the stream's leader, or the cluster's meta
leader), with the node back in step once it is started again.

Every node is a real nats-server on free loopback ports (`start_nats_cluster`), with the
users and permissions a single server has; nodes are killed with SIGKILL by their pid.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, PersistMode, StreamInfo
from nats.js.errors import ServiceUnavailableError
from typer.testing import CliRunner, Result

from baton_cli.localstack import (
    Server,
    meta_leader,
    node_healthy,
    start_nats_cluster,
    wait_for_healthy,
)
from baton_cli.main import app
from baton_contracts.nats import ACCESS_BUCKET, DEFAULT_TENANT, EVENTS_STREAM, LEASES_BUCKET
from baton_platform.leases import open_bucket
from baton_platform.nats import STREAMS, NatsIdentity, connect, ensure_bucket, ensure_streams
from baton_platform.nats_access import API, DISPATCHER, OPS, ensure_credentials, inbox_prefix
from baton_platform.stream_copy import Snapshot, StreamCopyError, copy_anew, take_snapshot
from tests.conftest import eventually

pytestmark = pytest.mark.integration

NODES = {"n1", "n2", "n3"}
BUCKET_STREAM = f"KV_{ACCESS_BUCKET}"
LEASES_STREAM = f"KV_{LEASES_BUCKET}"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[Server]]:
    passwords = ensure_credentials(tmp_path / "credentials.json", [DEFAULT_TENANT])
    servers = start_nats_cluster(tmp_path / "nats", 3, passwords=passwords)
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
async def ops(cluster: list[Server]) -> AsyncIterator[Client]:
    """A client that knows every node, as the services do, and reconnects quickly."""
    client = await nats.connect(
        [server.url_as(OPS) for server in cluster],
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
    )
    yield client
    await client.close()


def by_name(cluster: list[Server], name: str) -> Server:
    return next(server for server in cluster if server.name == name)


async def info(js: JetStreamContext, stream: str) -> StreamInfo | None:
    """The stream's info; None while the cluster cannot answer (a leader being elected)."""
    try:
        return await js.stream_info(stream)
    except nats.errors.Error:  # no leader yet: a timeout, no responders, a 503
        return None


async def replicated_on(js: JetStreamContext, stream: str, nodes: set[str]) -> StreamInfo | None:
    """The stream's info once it has a leader and every other node of `nodes` is a current
    replica of it (caught up); None before."""
    found = await info(js, stream)
    if found is None or found.cluster is None or found.cluster.leader is None:
        return None
    peers = {p.name for p in found.cluster.replicas or [] if p.current and not p.offline}
    return found if {found.cluster.leader, *peers} == nodes else None


async def publish(js: JetStreamContext, subject: str, msg_id: str, timeout: float = 20) -> None:
    """Publish until the stream acknowledges it, as Baton's publishers do: the same
    `Nats-Msg-Id` each time, so a publish stored but not acknowledged is not stored twice."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await js.publish(subject, msg_id.encode(), timeout=1, headers={"Nats-Msg-Id": msg_id})
            return
        except nats.errors.Error:  # no leader yet (no responders, 503, timeout)
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_the_cluster_comes_up_with_the_users_of_a_single_server(
    cluster: list[Server],
) -> None:
    assert {server.name for server in cluster} == NODES
    assert len({server.pid for server in cluster}) == 3
    assert all(node_healthy(server) for server in cluster)
    assert meta_leader(cluster) in NODES
    # The same authorization as one server: no user, no connection; a service's user may do
    # only what it may there (the api cannot publish lifecycle events).
    with pytest.raises(nats.errors.Error):
        await nats.connect(cluster[0].url, max_reconnect_attempts=0, allow_reconnect=False)
    refused: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        refused.append(exc)

    api = await nats.connect(
        cluster[1].url_as(API), inbox_prefix=inbox_prefix(API), error_cb=on_error
    )
    try:
        await api.publish("baton.v1.events.x.Requested", b"{}")
        await api.flush()
        await eventually(
            lambda: asyncio.sleep(0, refused), what="the api refused a lifecycle event"
        )
        assert "permissions violation" in str(refused[0]).lower()
    finally:
        await api.close()


async def test_every_stream_and_the_bucket_are_kept_on_all_three_nodes(
    cluster: list[Server], ops: Client
) -> None:
    js = ops.jetstream()
    await ensure_streams(js, replicas=3)
    await ensure_bucket(js, ACCESS_BUCKET, history=1, replicas=3)
    await open_bucket(js, replicas=3)
    for stream in [*(config.name for config in STREAMS), BUCKET_STREAM, LEASES_STREAM]:
        assert stream is not None
        found = await eventually(
            lambda stream=stream: replicated_on(js, stream, NODES),  # type: ignore[misc]
            timeout=20,
            what=f"{stream} on every node",
        )
        assert found.config.num_replicas == 3, stream
        assert found.cluster is not None and found.cluster.name == "baton"


async def test_streams_and_bucket_made_with_one_replica_are_scaled_to_three_in_place(
    cluster: list[Server], ops: Client
) -> None:
    """A stack that ran on one replica (BATON_NATS_REPLICAS=1) keeps its messages, its
    consumers' positions and its keys when the dispatcher and the api start with 3: they
    update the stream, and the server copies it to the other nodes."""
    urls = ",".join(server.url for server in cluster)
    passwords = cluster[0].passwords
    dispatcher = await connect(urls, "dispatcher", NatsIdentity(DISPATCHER, passwords[DISPATCHER]))
    api = await connect(urls, "api", NatsIdentity(API, passwords[API]))
    try:
        js = ops.jetstream()
        await ensure_streams(dispatcher.jetstream(), replicas=1)
        bucket = await ensure_bucket(api.jetstream(), ACCESS_BUCKET, history=1, replicas=1)
        # Writable from here at once (it waited for the stream's interest to reach this
        # node), and its probe, a write the stream refuses, stored nothing.
        assert (await js.stream_info(BUCKET_STREAM)).state.messages == 0
        await bucket.put("keys.k1", b"record")
        await open_bucket(dispatcher.jetstream(), replicas=1)
        for n in range(5):
            await publish(js, f"baton.v1.events.e{n}.Requested", f"m{n}")
        await js.add_consumer(
            EVENTS_STREAM,
            ConsumerConfig(durable_name="reader", ack_policy=AckPolicy.EXPLICIT),
        )
        reader = await js.pull_subscribe_bind("reader", stream=EVENTS_STREAM)
        first = await eventually(lambda: served(reader, 2), timeout=20, what="the first two")
        assert len(first) == 2
        for msg in first:
            await msg.ack_sync()
        before = await js.stream_info(EVENTS_STREAM)
        assert before.config.num_replicas == 1
        assert before.cluster is not None and not before.cluster.replicas

        # What the dispatcher and the api do at start with BATON_NATS_REPLICAS=3, each as
        # its own user (the api may change its bucket, nothing else). Tried again for a
        # while, as a supervisor starts a dispatcher again: the meta leader may not count
        # every node online yet (seen in CI: 10005 "no suitable peers for placement").
        await eventually(lambda: changed(dispatcher.jetstream()), timeout=20, what="scaled to 3")
        bucket = await ensure_bucket(api.jetstream(), ACCESS_BUCKET, history=1, replicas=3)
        await open_bucket(dispatcher.jetstream(), replicas=3)  # the leases, as any service

        events = await eventually(
            lambda: replicated_on(js, EVENTS_STREAM, NODES), timeout=20, what="events on 3"
        )
        assert events.config.num_replicas == 3
        assert events.state.messages == 5
        await eventually(
            lambda: replicated_on(js, BUCKET_STREAM, NODES), timeout=20, what="bucket on 3"
        )
        entry = await bucket.get("keys.k1")
        assert entry.value == b"record"
        leases = await eventually(
            lambda: replicated_on(js, LEASES_STREAM, NODES), timeout=20, what="leases on 3"
        )
        assert leases.config.num_replicas == 3
        assert leases.config.max_age == 6.0  # its time to live kept

        await eventually(
            lambda: consumer_led(js, "reader", 3), timeout=20, what="the consumer on three nodes"
        )
        # Its position kept: the next message it hands out is the third.
        [third] = await eventually(lambda: served(reader, 1), timeout=20, what="the third")
        assert third.data == b"m2"
    finally:
        await dispatcher.close()
        await api.close()


async def consumer_led(js: JetStreamContext, name: str, copies: int) -> bool:
    """Whether consumer `name` of the events stream has a leader and `copies` current
    copies: until then a fetch is answered 503 (no one serves it yet), and on the other
    nodes for a moment after (`served`)."""
    try:
        found = await js.consumer_info(EVENTS_STREAM, name)
    except nats.errors.Error:
        return False
    cluster_info = found.cluster
    if cluster_info is None or cluster_info.leader not in NODES:
        return False
    return len([p for p in cluster_info.replicas or [] if p.current]) == copies - 1


async def served(reader: JetStreamContext.PullSubscription, batch: int) -> list[Msg]:
    """Up to `batch` messages, or none while the consumer is not served on the node we are
    connected to: its interest reaches the other nodes over the routes a moment after its
    leader is elected, and a pull sent before that is answered 503 "no responders" (seen
    right after `consumer_led`) or not at all. Asked again, as a client would."""
    try:
        return await reader.fetch(batch, timeout=1)
    except (nats.errors.TimeoutError, ServiceUnavailableError):
        return []


async def test_events_made_for_one_server_are_replicated_by_the_command_the_start_names(
    cluster: list[Server], ops: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An events stream made with BATON_NATS_EVENTS_PERSIST=async cannot take 3 replicas
    in place (nats-server refuses it): the dispatcher's start stops on one line naming
    `baton nats-replicate-events`, which copies the stream anew with 3 replicas, its
    messages and its consumers' positions kept; the start then goes through."""
    js = ops.jetstream()
    await eventually(lambda: changed(js, 1, "async"), timeout=30, what="the streams made")
    assert (await js.stream_info(EVENTS_STREAM)).config.persist_mode == PersistMode.ASYNC
    for n in range(50):
        await publish(js, f"baton.v1.events.e{n}.Requested", f"m{n}")
    await js.add_consumer(
        EVENTS_STREAM, ConsumerConfig(durable_name="reader", ack_policy=AckPolicy.EXPLICIT)
    )
    await eventually(lambda: consumer_led(js, "reader", 1), what="the consumer led")
    reader = await js.pull_subscribe_bind("reader", stream=EVENTS_STREAM)
    first = await eventually(lambda: served(reader, 20), timeout=20, what="the first messages")
    assert len(first) == 20
    for msg in first:
        await msg.ack_sync()
    refused = r"persist mode async.*give it 3 replicas.*baton nats-replicate-events"
    with pytest.raises(RuntimeError, match=refused):
        await ensure_streams(js, replicas=3)
    kept = await js.stream_info(EVENTS_STREAM)
    assert kept.config.num_replicas == 1  # left as it was

    monkeypatch.setenv("BATON_NATS_URL", ",".join(server.url for server in cluster))
    monkeypatch.setenv("BATON_NATS_USER", OPS)
    monkeypatch.setenv("BATON_NATS_PASSWORD", cluster[0].passwords[OPS])
    command = ["nats-replicate-events", "--snapshot", str(tmp_path / "events.snapshot")]

    async def replicated() -> Result | None:
        # A cluster just started may not place three copies yet ("no suitable peers"): the
        # command then says to run it again, which finishes from the snapshot.
        done = await asyncio.to_thread(CliRunner().invoke, app, command)
        if done.exit_code:
            assert "run again to restore it from there" in done.output, done.output
            return None
        return done

    done = await eventually(replicated, timeout=30, what="the command done")
    assert "50 messages up to sequence 50, now with 3 replicas" in done.output
    events = await eventually(
        lambda: replicated_on(js, EVENTS_STREAM, NODES), timeout=20, what="events on 3"
    )
    assert events.config.persist_mode is None
    assert (events.state.messages, events.state.last_seq) == (50, 50)
    # The dispatcher's start, as it is (its requests may time out while the cluster is busy
    # placing the copies: `changed` tries again).
    await eventually(lambda: changed(js), timeout=30, what="the streams brought in line")
    await eventually(lambda: consumer_led(js, "reader", 3), timeout=20, what="reader on 3")
    reader = await js.pull_subscribe_bind("reader", stream=EVENTS_STREAM)
    [following] = await eventually(lambda: served(reader, 1), timeout=20, what="the next message")
    assert following.data == b"m20"  # its position kept
    again = await asyncio.to_thread(CliRunner().invoke, app, command)
    assert again.exit_code == 0, again.output
    assert "nothing to do" in again.output


async def test_a_copy_stopped_after_the_delete_is_finished_from_its_snapshot(
    ops: Client, tmp_path: Path
) -> None:
    js = ops.jetstream()
    await eventually(lambda: changed(js, 1, "async"), timeout=30, what="the streams made")
    for n in range(10):
        await publish(js, f"baton.v1.events.e{n}.Requested", f"m{n}")
    snapshot = Snapshot(tmp_path / "events.snapshot")
    await take_snapshot(ops, EVENTS_STREAM, snapshot)
    await js.delete_stream(EVENTS_STREAM)  # where the copy stopped
    made = await copy_anew(ops, EVENTS_STREAM, snapshot, {"num_replicas": 3, "persist_mode": None})
    assert made["config"]["num_replicas"] == 3
    assert "persist_mode" not in made["config"]
    assert (made["state"]["messages"], made["state"]["last_seq"]) == (10, 10)
    await js.delete_stream(EVENTS_STREAM)
    with pytest.raises(StreamCopyError, match=r"does not exist and .* holds no copy"):
        await copy_anew(ops, EVENTS_STREAM, Snapshot(tmp_path / "none"), {})


async def changed(js: JetStreamContext, replicas: int = 3, events_persist: str = "default") -> bool:
    """Whether `ensure_streams` went through (not while no meta leader answers)."""
    try:
        await ensure_streams(js, replicas, events_persist)
    except nats.errors.Error:
        return False
    return True


async def collect(js: JetStreamContext, into: dict[str, int]) -> None:
    """A durable push consumer in a queue group, acknowledging each message after counting
    it, as the services' consumers do (`baton_platform.consumers`)."""

    async def handle(msg: Msg) -> None:
        into[msg.data.decode()] = into.get(msg.data.decode(), 0) + 1
        await msg.ack()

    await js.subscribe(
        "baton.v1.events.>",
        queue="readers",
        durable="readers",
        stream=EVENTS_STREAM,
        cb=handle,
        manual_ack=True,
        config=ConsumerConfig(ack_wait=2),
    )


@pytest.mark.parametrize("victim", ["stream leader", "meta leader"])
async def test_writes_and_deliveries_go_on_when_a_leader_is_killed_and_it_rejoins(
    cluster: list[Server], ops: Client, victim: str
) -> None:
    js = ops.jetstream()
    await ensure_streams(js, replicas=3)
    first = await eventually(
        lambda: replicated_on(js, EVENTS_STREAM, NODES), timeout=20, what="events on 3"
    )
    received: dict[str, int] = {}
    await collect(js, received)
    for n in range(20):
        await publish(js, f"baton.v1.events.e{n}.Requested", f"m{n}")
    await eventually(lambda: asyncio.sleep(0, len(received) == 20), what="the first 20")

    assert first.cluster is not None
    name = first.cluster.leader if victim == "stream leader" else meta_leader(cluster)
    assert name in NODES
    killed = by_name(cluster, name)
    killed.kill()
    survivors = [server for server in cluster if server is not killed]

    # Writes go on at once (retried while a new leader is elected, the same message id):
    # two of three copies are a quorum.
    for n in range(20, 40):
        await publish(js, f"baton.v1.events.e{n}.Requested", f"m{n}")
    everything = {f"m{n}" for n in range(40)}
    await eventually(
        lambda: asyncio.sleep(0, set(received) == everything),
        timeout=30,
        what="every message delivered with a node down",
    )
    during = await eventually(
        lambda: replicated_on(js, EVENTS_STREAM, {s.name for s in survivors}),
        timeout=20,
        what="a leader among the survivors",
    )
    assert during.cluster is not None and during.cluster.leader != name
    assert during.state.messages == 40  # each once: the retried publishes were deduplicated
    if victim == "meta leader":
        await eventually(
            lambda: asyncio.sleep(0, meta_leader(survivors) not in (None, name)),
            timeout=20,
            what="a new meta leader",
        )
        # Stream changes need the meta leader: what the dispatcher does at its start works
        # again (tried again for a while, as a supervisor starts a dispatcher again).
        await eventually(lambda: changed(js), timeout=20, what="streams updated")

    # Back with its store: it catches up and is a current replica again.
    await asyncio.to_thread(killed.restart)
    await asyncio.to_thread(wait_for_healthy, cluster)
    after = await eventually(
        lambda: replicated_on(js, EVENTS_STREAM, NODES), timeout=30, what="the node back in step"
    )
    assert after.state.messages == 40
    assert after.state.last_seq == 40
    # Delivered at least once each (a message whose ack was lost with the leader comes again).
    assert set(received) == everything
    assert all(count >= 1 for count in received.values())


async def test_two_nodes_down_refuse_writes_until_one_is_back(
    cluster: list[Server], ops: Client
) -> None:
    """2 of 3 copies must be up for an R3 stream to take a write: with one node left it
    answers nothing (a publish times out or finds no responder), and nothing is lost."""
    js = ops.jetstream()
    await ensure_streams(js, replicas=3)
    await eventually(lambda: replicated_on(js, EVENTS_STREAM, NODES), timeout=20, what="on 3")
    await publish(js, "baton.v1.events.a.Requested", "before")
    first, second, last = cluster
    first.kill()
    second.kill()
    with pytest.raises(nats.errors.Error):  # a timeout, or "no response from stream"
        await js.publish(
            "baton.v1.events.b.Requested", b"alone", timeout=2, headers={"Nats-Msg-Id": "alone"}
        )
    await asyncio.to_thread(second.restart)
    await publish(js, "baton.v1.events.c.Requested", "after", timeout=30)
    await asyncio.to_thread(first.restart)
    await asyncio.to_thread(wait_for_healthy, cluster)
    await eventually(lambda: replicated_on(js, EVENTS_STREAM, NODES), timeout=30)
    for subject, data in (("a", b"before"), ("c", b"after")):
        stored = await js.get_last_msg(EVENTS_STREAM, f"baton.v1.events.{subject}.Requested")
        assert stored.data == data
    assert last.running


async def test_setting_up_the_streams_waits_for_a_cluster_without_a_leader(
    cluster: list[Server], ops: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """The dispatcher's setup on a cluster with one node of three up (starting, or two
    lost) gets no answer or a 503 from JetStream: it asks again, and is done once a second
    node is back, not failed at the first timeout (nats-py's, 5 s) or 503."""
    first, second, _ = cluster
    first.kill()
    second.kill()
    setup = asyncio.create_task(ensure_streams(ops.jetstream(), replicas=3))

    async def told_to_wait() -> bool:
        return "no answer from JetStream creating stream" in caplog.text

    # Logged at its first timeout or 503, where it used to fail; it cannot end without a
    # leader.
    await eventually(told_to_wait, timeout=20, what="the setup told to wait")
    assert not setup.done()
    await asyncio.to_thread(second.restart)
    await asyncio.wait_for(setup, timeout=60)
    await asyncio.to_thread(first.restart)
    await asyncio.to_thread(wait_for_healthy, cluster)
    js = ops.jetstream()
    for config in STREAMS:
        assert config.name is not None
        found = await eventually(
            lambda name=config.name: replicated_on(js, name, NODES),  # type: ignore[misc]
            timeout=30,
            what=f"{config.name} on every node",
        )
        assert found.config.num_replicas == 3
