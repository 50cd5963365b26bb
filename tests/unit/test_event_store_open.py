"""Opening the event store at start: two processes creating a new store at once race, and the
one that loses tries again rather than exiting (baton_platform.eventstore.open_executions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from eventsourcing.persistence import ProgrammingError

from baton_platform import eventstore
from baton_platform.settings import Settings


class RacingExecutions:
    """Stands for the application: its first `failures` constructions fail with `error`."""

    made = 0

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error

    def __call__(self, *_args: Any, **_kwargs: Any) -> str:
        RacingExecutions.made += 1
        if RacingExecutions.made <= self.failures:
            raise self.error
        return "opened"


@pytest.fixture(autouse=True)
def _count_from_zero() -> None:
    RacingExecutions.made = 0


def test_a_table_another_process_created_meanwhile_is_tried_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Seen with two dispatcher replicas starting on a new PostgreSQL database: both ran
    `CREATE TABLE IF NOT EXISTS`, and one was told the relation already exists."""
    lost = ProgrammingError('relation "executions_events" already exists')
    monkeypatch.setattr(eventstore, "Executions", RacingExecutions(2, lost))
    assert eventstore.open_executions(Settings(data_dir=tmp_path)) == "opened"  # type: ignore[comparison-overlap]
    assert RacingExecutions.made == 3


def test_any_other_programming_error_is_raised_at_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    wrong = ProgrammingError('column "nope" does not exist')
    monkeypatch.setattr(eventstore, "Executions", RacingExecutions(1, wrong))
    with pytest.raises(ProgrammingError, match="does not exist"):
        eventstore.open_executions(Settings(data_dir=tmp_path))
    assert RacingExecutions.made == 1
