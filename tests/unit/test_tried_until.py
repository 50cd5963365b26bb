"""`baton_platform.lifecycle.tried_until`: a call asked again after the errors it names,
until its time is up. Its uses: the restore's chunks and the stream look of
`stream_copy`, the first write to a new bucket (`nats._until_writable`), the setup of the
streams and buckets (`nats._answered`, only for the errors `when` picks)."""

from __future__ import annotations

import time

import pytest

from baton_platform.lifecycle import tried_until


class Late(Exception):
    """The answer that comes a moment late."""


class Calls:
    """Raises each of `errors` in turn, then returns how many calls it took."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.count = 0

    async def __call__(self) -> int:
        self.count += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.count


async def test_the_named_errors_are_asked_again_until_an_answer() -> None:
    calls = Calls(Late(), Late())
    assert await tried_until(calls, 5.0, Late) == 3


async def test_the_last_error_once_the_time_is_up() -> None:
    calls = Calls(*(Late(str(n)) for n in range(1000)))
    started = time.monotonic()
    with pytest.raises(Late):
        await tried_until(calls, 0.05, Late, pause=0.01)
    assert time.monotonic() - started >= 0.05
    assert 2 <= calls.count < 1000  # asked again, paused between


async def test_another_error_is_not_asked_again() -> None:
    calls = Calls(ValueError("wrong"), Late())
    with pytest.raises(ValueError, match="wrong"):
        await tried_until(calls, 5.0, Late)
    assert calls.count == 1


async def test_with_when_only_the_errors_it_picks_are_asked_again() -> None:
    def late_by_name(error: BaseException) -> bool:
        return str(error) == "late"

    calls = Calls(Late("late"), Late("refused"), Late("late"))
    with pytest.raises(Late, match="refused"):
        await tried_until(calls, 5.0, Late, when=late_by_name)
    assert calls.count == 2
