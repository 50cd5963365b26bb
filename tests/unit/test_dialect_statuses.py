"""The one status table of the dialects: complete, in each seed's own words, documented
as it is in code, and the dialect routes present in the OpenAPI document."""

from __future__ import annotations

from pathlib import Path

import pytest

from baton_api.dialects.statuses import (
    ENAPTER_ANSWER_STATES,
    STATUS_WORDS,
    known_words,
    markdown_table,
    statuses_for,
    word,
)
from baton_domain.statuses import AnswerStatus, ExecutionStatus
from tests.unit.dialect_support import Stand, stand

__all__ = ["stand"]

DOC = Path(__file__).resolve().parents[2] / "docs" / "dialects.md"

# The words each seed documents (000-003).
SEED_WORDS = {
    "enapter": {"NEW", "IN_PROGRESS", "SUCCESS", "ERROR", "TIMEOUT"},
    "fleets": {"SENT", "SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "CANCELED"},
    "traxes": {"Canceled", "Failed", "Pending", "Sent", "Succeeded", "Triggered"},
    "iotee": {"pending", "published", "failed", "acknowledged", "completed", "timeout"},
}


def test_every_status_has_a_word_in_every_dialect() -> None:
    assert set(STATUS_WORDS) == set(ExecutionStatus)
    assert set(ENAPTER_ANSWER_STATES) == set(AnswerStatus)
    assert set(ENAPTER_ANSWER_STATES.values()) == {"STARTED", "IN_PROGRESS", "SUCCEEDED", "ERROR"}


@pytest.mark.parametrize("dialect", ["enapter", "fleets", "traxes", "iotee"])
def test_the_words_are_the_seeds_own(dialect: str) -> None:
    assert set(known_words(dialect)) == SEED_WORDS[dialect]  # type: ignore[arg-type]


def test_words_and_their_inverse() -> None:
    assert word("iotee", "IN_PROGRESS") == "acknowledged"
    assert word("enapter", ExecutionStatus.EXPIRED) == "TIMEOUT"
    assert statuses_for("fleets", ["SENT"]) == {
        ExecutionStatus.PENDING,
        ExecutionStatus.SENT,
        ExecutionStatus.ACKNOWLEDGED,
        ExecutionStatus.IN_PROGRESS,
    }
    assert statuses_for("fleets", ["TIMED_OUT"]) == {
        ExecutionStatus.TIMED_OUT,
        ExecutionStatus.EXPIRED,
    }
    with pytest.raises(KeyError):
        statuses_for("fleets", ["DONE"])


def test_the_documented_table_is_the_code_table() -> None:
    assert markdown_table() in DOC.read_text()


def test_dialect_routes_are_in_the_openapi_document(stand: Stand) -> None:
    paths = stand.client.get("/schema/openapi.json").json()["paths"]
    for path in [
        "/traxes/v1/entities/{entity_id}/commands",
        "/fleets/api/v1/commands",
        "/fleets/api/v1/commands/{execution_id}",
        "/enapter/v3/devices/{device_id}/execute_command",
        "/enapter/v3/devices/{device_id}/command_executions/{execution_id}",
        "/iotee/devices/{device_ref}/commands",
        "/iotee/commands/purge",
    ]:
        assert path in paths, sorted(paths)
