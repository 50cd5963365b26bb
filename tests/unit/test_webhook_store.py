"""The webhooks' database (`WebhookStore`) on SQLite and PostgreSQL: a change is enqueued
once per webhook that wants it however often a round repeats, an attempt moves a pending
delivery only, and a webhook is its tenant's alone."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from baton_api.webhooks.controller import DeliveryOut, WebhookOut
from baton_api.webhooks.delivery import payload_body
from baton_api.webhooks.store import (
    DEAD,
    DELIVERED,
    PENDING,
    Attempt,
    Delivery,
    Webhook,
    WebhookStore,
)
from baton_contracts.webhooks import WebhookPayload
from baton_platform.sql import Database
from baton_views import Change


@pytest.fixture
def store(tmp_path: Path, database_url: str | None) -> Iterator[WebhookStore]:
    if database_url is None:
        made = WebhookStore(Database(path=tmp_path / "webhooks.sqlite"))
    else:
        made = WebhookStore(Database(url=database_url, schema="webhooks"))
    yield made
    made.close()


def change(position: int, status: str = "SUCCEEDED", tenant: str = "default") -> Change:
    return Change(
        position, tenant, UUID(int=position), "dev-1", "reboot", status,
        status.title(), 3, "2026-12-03T10:00:00.000000+00:00",
    )  # fmt: skip


def attempt(number: int, status: int | None) -> Attempt:
    return Attempt(number, "2026-12-03T10:00:01.000000+00:00", status, None, 12)


def test_each_change_is_enqueued_once_per_webhook_that_wants_it(store: WebhookStore) -> None:
    ended = store.create("default", "http://127.0.0.1:9/a", ["SUCCEEDED"], None, "k")
    every = store.create("default", "http://127.0.0.1:9/b", ["*"], "dev-1", "k")
    store.create("default", "http://127.0.0.1:9/c", ["*"], "dev-2", "k")  # another device
    store.create("acme", "http://127.0.0.1:9/d", ["*"], None, "k")  # another tenant
    changes = [change(1, "PENDING"), change(2, "SUCCEEDED")]

    assert store.position() is None
    assert store.enqueue(changes, 2, payload_body) == 3
    store.enqueue(changes, 2, payload_body)  # a round repeated: nothing more
    assert store.position() == 2

    due = store.due(now_ms=2**62, limit=100)
    assert sorted((hook.url, d.position) for d, hook in due) == [
        ("http://127.0.0.1:9/a", 2),
        ("http://127.0.0.1:9/b", 1),
        ("http://127.0.0.1:9/b", 2),
    ]
    body = WebhookPayload.model_validate_json(due[0][0].body)
    assert body.delivery_id == due[0][0].id and body.webhook_id == due[0][1].id
    assert store.counts(ended.id) == {PENDING: 1, DELIVERED: 0, DEAD: 0}
    assert store.counts(every.id) == {PENDING: 2, DELIVERED: 0, DEAD: 0}


def test_attempts_move_a_pending_delivery_only(store: WebhookStore) -> None:
    hook = store.create("default", "http://127.0.0.1:9/a", ["*"], None, "k")
    store.enqueue([change(5)], 5, payload_body)
    [(delivery, _)] = store.due(now_ms=2**62, limit=10)

    store.attempted(delivery, attempt(1, 500), PENDING, next_at=10**15)
    assert store.due(now_ms=10**15 - 1, limit=10) == []  # not due before its time
    assert store.next_due() == 10**15
    store.attempted(delivery, attempt(2, 200), DELIVERED, next_at=0)
    store.attempted(delivery, attempt(2, 500), DEAD, next_at=0)  # late, twice: no effect

    [logged] = store.deliveries(hook.id, None, 10)
    assert (logged.state, logged.attempts) == (DELIVERED, 2)
    assert [(a.attempt, a.status_code) for a in logged.log] == [(1, 500), (2, 200)]
    assert store.deliveries(hook.id, DEAD, 10) == []
    assert store.next_due() is None


def test_a_webhook_says_each_time_as_the_api_says_an_executions(store: WebhookStore) -> None:
    """UTC with `Z`, as `created_at` of an execution (docs/api.md): in the body it POSTs and
    in the answers about it and its deliveries, never `+00:00`."""
    hook = store.create("default", "http://127.0.0.1:9/a", ["*"], None, "k")
    store.enqueue([change(5)], 5, payload_body)
    [(delivery, _)] = store.due(now_ms=2**62, limit=10)
    store.attempted(delivery, attempt(1, 500), PENDING, next_at=1_796_292_001_250)

    assert json.loads(delivery.body)["at"] == "2026-12-03T10:00:00Z"
    [logged] = store.deliveries(hook.id, None, 10)
    shown = DeliveryOut.of(logged).model_dump(mode="json")  # as Litestar renders it
    assert shown["next_attempt_at"] == "2026-12-03T10:00:01.250000Z"
    assert shown["log"][0]["at"] == "2026-12-03T10:00:01Z"
    made = WebhookOut.of(hook, {}).model_dump(mode="json")["created_at"]
    for moment in (made, shown["created_at"], shown["updated_at"]):
        assert moment.endswith("Z") and datetime.fromisoformat(moment).tzinfo == UTC


def test_a_webhook_is_its_tenants_alone(store: WebhookStore) -> None:
    hook = store.create("default", "http://127.0.0.1:9/a", ["*"], None, "k")
    store.enqueue([change(7)], 7, payload_body)
    assert store.get(hook.id, "acme") is None and store.list("acme") == []
    assert not store.delete(hook.id, "acme")
    assert store.get(hook.id, "default") == hook
    assert store.delete(hook.id, "default")
    assert store.get(hook.id, None) is None and store.due(2**62, 10) == []
    assert store.next_due() is None

    # Deleted while a round makes its deliveries: none is kept for it.
    late = store.create("default", "http://127.0.0.1:9/b", ["*"], None, "k")

    def body_then_delete(hook: Webhook, made: Change, delivery_id: UUID) -> str:
        store.delete(late.id, "default")
        return payload_body(hook, made, delivery_id)

    assert store.enqueue([change(8)], 8, body_then_delete) == 0
    assert store.next_due() is None
    assert store.get(uuid4(), None) is None


def test_pruning_deletes_finished_deliveries_with_their_attempts_and_keeps_pending_ones(
    store: WebhookStore,
) -> None:
    hook = store.create("default", "http://127.0.0.1:9/a", ["*"], None, "k")
    store.enqueue([change(1), change(2), change(3)], 3, payload_body)
    delivered, dead, pending = (d for d, _ in sorted(store.due(2**62, 10), key=by_position))
    store.attempted(delivered, attempt(1, 200), DELIVERED, next_at=0)  # at 10:00:01
    store.attempted(dead, attempt(1, 500), DEAD, next_at=0)
    store.attempted(pending, attempt(1, 500), PENDING, next_at=10**15)

    assert store.prune("2026-12-03T10:00:01.000000+00:00") == 0  # not before: kept
    assert store.prune("2026-12-03T11:00:00.000000+00:00", limit=1) == 1  # a page
    assert store.prune("2026-12-03T11:00:00.000000+00:00") == 1
    [left] = store.deliveries(hook.id, None, 10)
    assert (left.id, left.state, len(left.log)) == (pending.id, PENDING, 1)
    assert store.counts(hook.id) == {PENDING: 1, DELIVERED: 0, DEAD: 0}


def by_position(found: tuple[Delivery, Webhook]) -> int:
    return found[0].position
