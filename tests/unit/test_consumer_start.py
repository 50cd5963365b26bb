"""A durable consumer whose start fails (NATS has no stream leader for a few seconds after a
node failed: the request times out) tries again until it is subscribed, when its owner
starts it in the background (`patient`). One that gave up left a partition's reports unread
while its dispatcher held the partition (seen in the cluster chaos run: its devices'
executions stalled until the stack stopped)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from nats.js.errors import NotFoundError

from baton_platform import consumers
from baton_platform.consumers import DurableConsumer


class FlakyJetStream:
    """Times out the first `failures` subscriptions; records what each try asked for."""

    def __init__(self, failures: int, bound: bool = False) -> None:
        self.failures = failures
        self.bound = bound  # another process's subscription still on the consumer
        self.deleted = 0
        self.subscribed: list[dict[str, Any]] = []

    async def consumer_info(self, stream: str, name: str) -> Any:
        if not self.bound:
            raise NotFoundError()
        return SimpleNamespace(
            push_bound=True,
            ack_floor=SimpleNamespace(stream_seq=40),
            delivered=SimpleNamespace(stream_seq=45),
        )

    async def delete_consumer(self, stream: str, name: str) -> None:
        self.deleted += 1
        self.bound = False

    async def subscribe(self, *args: Any, **kwargs: Any) -> Any:
        if self.failures:
            self.failures -= 1
            raise TimeoutError("nats: timeout")
        self.subscribed.append(kwargs)
        return SimpleNamespace()


async def handle(msg: Any) -> None:
    return None


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consumers, "START_RETRY_S", 0.001)
    monkeypatch.setattr(consumers, "_sample_lag_while_running", lambda: None)


async def test_a_start_that_times_out_is_tried_again_until_subscribed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(consumers, "resume_in_order", _resumed(upto=[12, None, None]))
    consumer = DurableConsumer("REPORTS", "reports-9", ["baton.v1.reports.9.>"], handle)
    js = FlakyJetStream(failures=2)

    await consumer.start(js, patient=True)  # type: ignore[arg-type]

    assert len(js.subscribed) == 1
    assert sum("could not start" in r.getMessage() for r in caplog.records) == 2
    # The first try's reset brought back up to 12: later tries (nothing pending any more)
    # do not forget it.
    message = SimpleNamespace(
        metadata=SimpleNamespace(num_delivered=1, sequence=SimpleNamespace(stream=12))
    )
    assert consumer.delivered_before(message)  # type: ignore[arg-type]
    consumers._RUNNING.pop(("REPORTS", "reports-9"), None)


async def test_an_exclusive_consumer_taken_over_is_not_taken_over_again_on_a_retry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(consumers, "resume_in_order", _resumed(upto=[]))
    consumer = DurableConsumer("EVENTS", "bridge-1", ["baton.v1.events.>"], handle, exclusive=True)
    js = FlakyJetStream(failures=1, bound=True)

    await consumer.start(js, patient=True)  # type: ignore[arg-type]

    # Made anew from its ack floor once; the retry starts there too, not from the stream's
    # first message (a second look finds nobody bound, and would have started at the top).
    assert js.deleted == 1
    assert [s["config"].opt_start_seq for s in js.subscribed] == [41]
    consumers._RUNNING.pop(("EVENTS", "bridge-1"), None)


async def test_an_impatient_start_raises_for_its_owner_to_retry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Inside a lease's start: the lease is released and taken again later, never held
    # unrenewed while the consumer waits for NATS.
    monkeypatch.setattr(consumers, "resume_in_order", _resumed(upto=[None]))
    consumer = DurableConsumer("EVENTS", "deadlines", ["baton.v1.events.>"], handle)
    with pytest.raises(TimeoutError):
        await consumer.start(FlakyJetStream(failures=1))  # type: ignore[arg-type]
    assert not await consumer.caught_up()  # not started


def _resumed(upto: list[int | None]) -> Any:
    answers = iter(upto)

    async def resume_in_order(*args: Any) -> int | None:
        return next(answers)

    return resume_in_order
