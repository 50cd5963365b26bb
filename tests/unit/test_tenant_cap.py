"""The tenant cap's count (`ExecutionService._admit`): read from the views, and read again
only once they have moved, since until then it cannot have changed."""

from __future__ import annotations

from typing import Any

import pytest

from baton_api.problems import ProblemError
from baton_api.service import ExecutionService


class Views:
    """The views' PENDING counter, counting its reads."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.reads = 0

    def pending(self, tenant: str) -> int:
        self.reads += 1
        return self.counts.get(tenant, 0)


class Runner:
    position = 7  # the views include every event up to here


def service(views: Views, runner: Runner, cap: int = 3) -> ExecutionService:
    gateway: Any = None  # `_admit` asks no dispatcher
    return ExecutionService(gateway, views, runner, max_pending=cap)  # type: ignore[arg-type]


async def test_submits_between_two_advances_of_the_views_share_one_read() -> None:
    views, runner = Views(), Runner()
    admitting = service(views, runner)
    for _ in range(5):
        await admitting._admit("default")
    assert views.reads == 1
    await admitting._admit("acme")  # another tenant: its own count
    assert views.reads == 2


async def test_once_the_views_moved_the_count_is_read_again_and_the_cap_holds() -> None:
    views, runner = Views(), Runner()
    admitting = service(views, runner, cap=3)
    await admitting._admit("default")
    views.counts["default"] = 3  # projected: three PENDING now
    runner.position = 8
    with pytest.raises(ProblemError) as refused:
        await admitting._admit("default")
    assert refused.value.problem.status == 429
    assert views.reads == 2
