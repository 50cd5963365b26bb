"""Two dispatchers on one event store and a real nats-server: the device partitions are split
between them, each device's requests are written by the holder of its partition whichever
subject they came on, and a dispatcher stopped or cut off hands its partitions to the other
within seconds, with no request failing on a clean stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from nats.aio.client import Client

from baton_cli.localstack import Server
from baton_contracts.nats import (
    CANCEL_SUBJECT,
    PARTITIONS,
    SUBMIT_SUBJECT,
    CancelCommand,
    ExecutionReply,
    SubmitCommand,
    partition_of,
    partition_subject,
)
from baton_dispatcher.app import Dispatcher
from baton_dispatcher.partitions import PartitionKeeper
from baton_platform import leases
from baton_platform.requests import request_patiently
from baton_platform.settings import Settings
from tests.conftest import DEMO, eventually, service_settings

pytestmark = pytest.mark.integration

DEVICES = [f"dev-{i}" for i in range(32)]  # every partition has some


@pytest.fixture
def settings(nats_server: Server, tmp_path: Path) -> Settings:
    catalog = yaml.safe_load(DEMO.read_text())
    catalog["devices"] = [{"id": device, "type": "thermostat"} for device in DEVICES]
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog))
    return service_settings(nats_server, tmp_path, catalog_path=path)


class Recorded:
    """The devices whose submits a dispatcher's Writer stored."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        writer = dispatcher._writer
        assert writer is not None
        self.devices: list[str] = []
        submit = writer._submit_in_time  # what every submit subject's handler ends in

        def recording(command: SubmitCommand) -> ExecutionReply:
            self.devices.append(command.device_id)
            return submit(command)

        writer._submit_in_time = recording  # type: ignore[method-assign]


@pytest.fixture
async def two(settings: Settings) -> AsyncIterator[list[Dispatcher]]:
    dispatchers = [
        Dispatcher(settings.model_copy(update={"instance": name})) for name in ("one", "two")
    ]
    for dispatcher in dispatchers:
        await dispatcher.start()
    yield dispatchers
    for dispatcher in dispatchers:
        await dispatcher.stop()


def held(dispatcher: Dispatcher) -> list[int]:
    assert dispatcher._keeper is not None
    return dispatcher._keeper.held


async def split_evenly(dispatchers: list[Dispatcher]) -> bool:
    shares = [held(d) for d in dispatchers]
    return all(len(s) == PARTITIONS // len(dispatchers) for s in shares) and sorted(
        p for s in shares for p in s
    ) == list(range(PARTITIONS))


async def submit(nc: Client, subject: str, device: str) -> ExecutionReply:
    command = SubmitCommand(device_id=device, name="reboot")
    msg = await request_patiently(nc, subject, command.model_dump_json().encode(), 5.0)
    reply = ExecutionReply.model_validate_json(msg.data)
    assert reply.execution is not None, reply.problem
    return reply


async def test_the_partitions_are_split_and_each_device_is_written_by_its_holder(
    two: list[Dispatcher], nc: Client
) -> None:
    await eventually(lambda: split_evenly(two), timeout=15, what="8 partitions each")
    recorded = [Recorded(d) for d in two]
    for device in DEVICES:
        # Through the subject any dispatcher answers, and straight to the partition's.
        await submit(nc, SUBMIT_SUBJECT, device)
        await submit(nc, partition_subject(partition_of(device), "submit"), device)
    for dispatcher, record in zip(two, recorded, strict=True):
        mine = {d for d in DEVICES if partition_of(d) in held(dispatcher)}
        assert sorted(record.devices) == sorted(2 * list(mine))

    # A request naming an execution goes to its device's holder too.
    device = next(d for d in DEVICES if partition_of(d) in held(two[1]))
    execution = (await submit(nc, SUBMIT_SUBJECT, device)).execution
    assert execution is not None
    cancel = CancelCommand(execution_id=execution.id)
    msg = await nc.request(CANCEL_SUBJECT, cancel.model_dump_json().encode(), timeout=5)
    reply = ExecutionReply.model_validate_json(msg.data)
    assert reply.execution is not None and reply.execution.status == "CANCELED", reply


async def test_a_stopped_dispatcher_hands_its_partitions_over_and_no_request_fails(
    two: list[Dispatcher], nc: Client
) -> None:
    await eventually(lambda: split_evenly(two), timeout=15, what="8 partitions each")
    leaving, staying = two
    results: list[Any] = []

    async def load() -> None:
        for round_ in range(1000):
            device = DEVICES[round_ % len(DEVICES)]
            results.append(await submit(nc, SUBMIT_SUBJECT, device))
            if round_ > 20 and len(held(staying)) == PARTITIONS:
                return

    loading = asyncio.create_task(load())
    await eventually(lambda: _at_least(results, 10), what="load going")
    await leaving.stop()
    await asyncio.wait_for(loading, timeout=30)  # every submit was answered with an execution
    assert len(held(staying)) == PARTITIONS

    # Alone now, it keeps them all: the stopped one's member key is not counted while its
    # delete marker lasts (it was, and half the partitions went to nobody for seconds).
    keeper = staying._keeper
    assert keeper is not None
    steps = _Steps(keeper)
    await eventually(lambda: _at_least(steps.held_after, 2), timeout=3 * leases.RENEW_S + 5)
    assert steps.held_after == [PARTITIONS, PARTITIONS]


async def test_a_dispatcher_cut_off_from_nats_loses_its_partitions_to_the_other(
    two: list[Dispatcher], nc: Client
) -> None:
    await eventually(lambda: split_evenly(two), timeout=15, what="8 partitions each")
    lost, staying = two
    assert lost._nc is not None
    await lost._nc.close()  # as good as dead, as far as NATS knows

    async def all_moved() -> bool:
        return len(held(staying)) == PARTITIONS and not held(lost)

    await eventually(all_moved, timeout=leases.TTL_S + 3 * leases.RENEW_S + 5, what="taken over")
    for device in DEVICES:
        await submit(nc, SUBMIT_SUBJECT, device)


async def test_a_dispatcher_slow_to_start_partitions_keeps_those_it_holds_meanwhile(
    two: list[Dispatcher], nc: Client
) -> None:
    """Taking over a cut-off dispatcher's 8 partitions, each start taking most of a renewal
    period (a loaded cluster): the leases held are renewed between the starts, so none of
    the 8 lapses while the other 8 are taken."""
    await eventually(lambda: split_evenly(two), timeout=15, what="8 partitions each")
    lost, staying = two
    keeper = staying._keeper
    assert keeper is not None and lost._nc is not None
    own = held(staying)
    start = keeper._start

    async def slow(partition: int) -> None:
        await asyncio.sleep(leases.RENEW_S)
        await start(partition)

    keeper._start = slow
    await lost._nc.close()
    lowest = len(own)

    async def all_taken() -> bool:
        nonlocal lowest
        mine = held(staying)
        lowest = min(lowest, len([p for p in own if p in mine]))
        return len(mine) == PARTITIONS

    await eventually(all_taken, timeout=leases.TTL_S + 10 * leases.RENEW_S + 10, interval=0.02)
    assert lowest == len(own)  # not one of its own partitions went, even for a moment


async def _at_least(results: list[Any], n: int) -> bool:
    return len(results) >= n


class _Steps:
    """The partitions a keeper holds after each of its steps from now on."""

    def __init__(self, keeper: PartitionKeeper) -> None:
        self.held_after: list[int] = []
        step = keeper.step

        async def counted() -> None:
            await step()
            self.held_after.append(len(keeper.held))

        keeper.step = counted  # type: ignore[method-assign]
