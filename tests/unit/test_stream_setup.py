"""Setting up the streams asks JetStream again while it cannot answer yet (a cluster
electing its meta leader, or one just formed that does not count every node online yet),
and not when it answers no. The real cluster's case: tests/integration/test_nats_cluster.py."""

from __future__ import annotations

from typing import Any

import nats.errors
import pytest
from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from nats.js.errors import APIError, ServiceUnavailableError

from baton_platform import nats as platform_nats
from baton_platform.nats import STREAMS, ensure_streams

NO_PEERS = APIError(
    code=500, err_code=10005, description="no suitable peers for placement, peer offline"
)


class StandInJetStream:
    """Answers add_stream with `errors` first, in turn, then makes the stream."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.asked = 0
        self.made: list[str] = []

    async def add_stream(self, config: StreamConfig) -> None:
        self.asked += 1
        if self.errors:
            raise self.errors.pop(0)
        assert config.name is not None
        self.made.append(config.name)


def as_jetstream(stand_in: StandInJetStream) -> JetStreamContext:
    jetstream: Any = stand_in
    return jetstream  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform_nats, "STREAM_WAIT_S", 0.01)


@pytest.mark.parametrize(
    "not_yet",
    [nats.errors.TimeoutError(), ServiceUnavailableError(code=503), NO_PEERS],
    ids=["no answer", "503", "no peers for placement"],
)
async def test_what_cannot_be_answered_yet_is_asked_again(
    not_yet: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    js = StandInJetStream(not_yet, not_yet, not_yet)
    await ensure_streams(as_jetstream(js), replicas=3)
    assert js.made == [config.name for config in STREAMS]
    assert js.asked == len(STREAMS) + 3
    told = [r for r in caplog.records if "no answer from JetStream" in r.getMessage()]
    assert len(told) == 1  # once for the three


async def test_a_refusal_is_not_asked_again() -> None:
    refused = APIError(code=500, err_code=10074, description="insufficient resources")
    js = StandInJetStream(refused)
    with pytest.raises(APIError) as raised:
        await ensure_streams(as_jetstream(js), replicas=3)
    assert raised.value is refused
    assert js.asked == 1


async def test_it_gives_up_after_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform_nats, "SETUP_WITHIN_S", 0.1)
    js = StandInJetStream(*[nats.errors.TimeoutError() for _ in range(1000)])
    with pytest.raises(nats.errors.TimeoutError):
        await ensure_streams(as_jetstream(js), replicas=3)
    assert 1 < js.asked < 1000
