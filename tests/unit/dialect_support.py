"""What the dialect tests share: the seeds catalog over the in-memory stand-ins (as in
test_api.py), a clock the tests can move forward, and helpers that drive an execution on."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from litestar.testing import TestClient

from baton_api.inmemory import InMemoryGateway
from baton_domain.application import Executions
from baton_domain.catalog import Catalog
from baton_domain.statuses import AnswerStatus
from tests.unit.test_api import ADMIN_KEY, KEY, assert_problem, client_for, poll

SEEDS = Path(__file__).resolve().parents[2] / "deploy" / "catalog" / "seeds.yaml"

__all__ = [
    "ADMIN_KEY",
    "KEY",
    "Clock",
    "Stand",
    "assert_problem",
    "poll",
]


@dataclass
class Clock:
    """Real time, shifted by `offset` (to reach deadlines and make old executions)."""

    offset: timedelta = field(default_factory=timedelta)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@dataclass
class Stand:
    """The api over the stand-ins, and the hands that play the device."""

    client: TestClient[Any]
    executions: Executions
    gateway: InMemoryGateway
    clock: Clock

    def published(self, execution_id: str) -> None:
        self.executions.record_published(UUID(execution_id))

    def answer(
        self,
        execution_id: str,
        status: AnswerStatus,
        payload: dict[str, Any] | None = None,
        received_at: datetime | None = None,
    ) -> None:
        execution = self.executions.get(UUID(execution_id))
        self.executions.record_answer(
            UUID(execution_id),
            execution.device_id,
            f"r-{uuid4()}",
            status,
            payload or {},
            received_at or self.clock(),
        )

    def time_out(self, execution_id: str) -> None:
        execution = self.executions.get(UUID(execution_id))
        self.clock.offset += execution.deadline - self.clock() + timedelta(seconds=1)
        self.executions.reach_deadline(UUID(execution_id))

    def until(self, probe: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Poll (the views follow the store a moment later) until `probe` is truthy."""
        return poll(probe, timeout)


def seeds_executions(clock: Clock) -> Executions:
    return Executions(
        Catalog.from_yaml(SEEDS), env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, clock=clock
    )


def stand_with(
    tmp_path: Path, gateway_type: type[InMemoryGateway] = InMemoryGateway
) -> Iterator[Stand]:
    clock = Clock()
    gateway = gateway_type(seeds_executions(clock))
    with client_for(tmp_path, gateway) as client:
        yield Stand(client, gateway.executions, gateway, clock)


@pytest.fixture
def stand(tmp_path: Path) -> Iterator[Stand]:
    yield from stand_with(tmp_path)
