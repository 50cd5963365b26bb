"""Whether the stream to copy is there (`baton_platform.stream_copy._there`): in a cluster a
look just after a delete may go unanswered (nats-server's meta leader leaves it to a
stream leader that has dropped the stream), so an unanswered look is asked again, and only
the answer decides. The cluster itself: tests/integration/test_nats_cluster.py."""

from __future__ import annotations

from typing import cast

import nats.errors
import pytest
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from baton_platform import stream_copy


class Looks:
    """A client whose stream looks give `answers` in turn (an exception is raised), and
    which records the timeout each look was given."""

    def __init__(self, *answers: object) -> None:
        self.answers = list(answers)
        self.timeouts: list[float] = []

    def jetstream(self, timeout: float) -> Looks:
        self.timeouts.append(timeout)
        return self

    async def stream_info(self, name: str) -> object:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


async def test_an_unanswered_look_is_asked_again_until_the_server_answers() -> None:
    gone = Looks(nats.errors.TimeoutError(), nats.errors.TimeoutError(), NotFoundError())
    assert not await stream_copy._there(cast(Client, gone), "BATON_EVENTS")
    assert gone.timeouts == [stream_copy.LOOK_S] * 3
    there = Looks(nats.errors.TimeoutError(), {"config": {}})
    assert await stream_copy._there(cast(Client, there), "BATON_EVENTS")


async def test_looks_unanswered_for_the_whole_answer_time_fail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stream_copy, "ANSWER_S", 0.0)
    silent = Looks(nats.errors.TimeoutError(), nats.errors.TimeoutError())
    with pytest.raises(nats.errors.TimeoutError):
        await stream_copy._there(cast(Client, silent), "BATON_EVENTS")
    assert len(silent.timeouts) == 1
