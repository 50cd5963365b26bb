"""The change feed of the views (`execution_changes`), which the SSE streams and the
webhooks read: one row per execution event in position order, what each execution is after
it, read a page at a time after a position with nothing missed or repeated, filtered, and
gone with a deleted execution. On SQLite and PostgreSQL (the `backend` fixture)."""

# The views tests' fixtures are imported, and their names are then the tests' parameters.
# ruff: noqa: F811

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from baton_domain.application import Executions
from baton_domain.statuses import ExecutionStatus
from baton_domain.tenants import DEFAULT_TENANT
from baton_views import Change, ChangeFilter, ExecutionViews, read_events
from baton_views.projection import NOT_EXECUTIONS
from tests.unit.test_views import (  # noqa: F401  # fixtures
    OTHER,
    Clock,
    app,
    clock,
    every_ending,
    in_two_tenants,
    place,
    project_all,
    views,
)

EVERY = ChangeFilter(tenant=None)


def read_all(views: ExecutionViews, where: ChangeFilter, page: int) -> list[Change]:
    """The whole feed, as a client resuming after its last position reads it."""
    found: list[Change] = []
    after = 0
    while changes := views.changes(where, after, page):
        found.extend(changes)
        after = changes[-1].position
    return found


def test_every_event_of_an_execution_is_a_change_in_order(
    app: Executions, views: ExecutionViews, clock: Clock
) -> None:
    ids = every_ending(app, clock)
    project_all(app, views, batch=3)

    feed = read_all(views, EVERY, page=1000)
    stored = [e for e in read_events(app, 0, 10_000) if e.type not in NOT_EXECUTIONS]
    kept = [e for e in stored if any(c.execution_id == e.execution_id for c in feed)]
    assert [(c.position, c.kind, c.seq) for c in feed] == [
        (e.notification_id, e.type, e.version) for e in kept
    ]
    for name, execution_id in ids.items():
        mine = [c for c in feed if c.execution_id == execution_id]
        assert [c.seq for c in mine] == list(range(1, len(mine) + 1)), name
        assert mine[0].kind == "Requested" and mine[0].status == ExecutionStatus.PENDING.value
        row = views.get(execution_id)
        assert row is not None and mine[-1].status == row.status.value, name
    # The deleted execution's changes went with it; the others' are all there.
    assert {c.execution_id for c in feed} == set(ids.values())


def test_reading_a_page_at_a_time_misses_and_repeats_nothing(
    app: Executions, views: ExecutionViews, clock: Clock
) -> None:
    every_ending(app, clock)
    project_all(app, views, batch=2)
    whole = read_all(views, EVERY, page=1000)
    for page in (1, 2, 7):
        assert read_all(views, EVERY, page) == whole
    middle = whole[len(whole) // 2].position
    assert views.changes(EVERY, middle, 1000) == [c for c in whole if c.position > middle]


def test_filters_and_tenants(app: Executions, views: ExecutionViews, clock: Clock) -> None:
    tenancy = in_two_tenants(app, clock)
    project_all(app, views, tenancy=tenancy)
    whole = read_all(views, EVERY, page=1000)

    def tenant_of(execution_id: UUID) -> str:
        return tenancy.of.get(execution_id, DEFAULT_TENANT)

    for tenant in (DEFAULT_TENANT, OTHER):
        mine = read_all(views, ChangeFilter(tenant=tenant), page=5)
        assert mine == [c for c in whole if tenant_of(c.execution_id) == tenant]
        assert mine and all(c.tenant == tenant for c in mine)
    ended = frozenset({"SUCCEEDED", "FAILED"})
    only = read_all(views, ChangeFilter(tenant=OTHER, statuses=ended, name="reboot"), page=2)
    assert only == [
        c
        for c in whole
        if tenant_of(c.execution_id) == OTHER and c.status in ended and c.name == "reboot"
    ]
    assert {c.status for c in only} == ended
    one = whole[0].execution_id
    assert read_all(views, ChangeFilter(tenant=None, execution_id=one), page=1) == [
        c for c in whole if c.execution_id == one
    ]
    assert read_all(views, ChangeFilter(tenant=OTHER, device_id="nobody"), page=9) == []


def test_pruning_deletes_the_oldest_changes_a_page_at_a_time_and_raises_the_floor(
    app: Executions, views: ExecutionViews, clock: Clock
) -> None:
    every_ending(app, clock)
    project_all(app, views, batch=3)
    whole = read_all(views, EVERY, page=1000)
    projected = views.position()
    assert views.change_floor() == 0
    # Older than the first change: nothing goes.
    assert views.prune_changes(datetime.fromisoformat(whole[0].at), limit=1000) == 0
    cutoff = datetime.fromisoformat(whole[len(whole) // 2].at)
    older = [c for c in whole if datetime.fromisoformat(c.at) < cutoff]
    assert older and len(older) < len(whole)

    assert views.prune_changes(cutoff, limit=2) == 2  # a page: called again for the rest
    assert views.change_floor() == whole[1].position
    while views.prune_changes(cutoff, limit=2) == 2:
        pass

    assert read_all(views, EVERY, page=1000) == whole[len(older) :]
    assert views.change_floor() == older[-1].position
    assert views.position() == projected  # the projection's own position untouched
