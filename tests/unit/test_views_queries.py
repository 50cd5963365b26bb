"""Queries over the execution views: filters, order, keyset pages, total_count."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from baton_domain.application import Executions, RequestCommand
from baton_domain.catalog import Catalog
from baton_domain.statuses import AnswerStatus, ExecutionStatus
from baton_platform.sql import Database
from baton_views import ExecutionFilter, ExecutionViews, InvalidQueryError, Order, read_events

DEMO = Path(__file__).resolve().parents[2] / "deploy" / "catalog" / "demo.yaml"


@pytest.fixture
def app() -> Executions:
    return Executions(Catalog.from_yaml(DEMO), env={"PERSISTENCE_MODULE": "eventsourcing.popo"})


@pytest.fixture
def views(tmp_path: Path, app: Executions, database_url: str | None) -> ExecutionViews:
    """Twelve executions on three devices: every third one succeeded, every fourth canceled;
    in SQLite, or in PostgreSQL."""
    for i in range(12):
        device = f"demo-thermostat-{i % 3 + 1}"
        name = "reboot" if i % 2 else "self_test"
        execution_id = app.request(RequestCommand(device, name, {}, None)).execution.id
        if i % 3 == 0:
            app.record_published(execution_id)
            app.record_answer(
                execution_id, device, f"r{i}", AnswerStatus.SUCCEEDED, {}, datetime.now(UTC)
            )
        elif i % 4 == 1:
            app.cancel(execution_id, "test")
    where = tmp_path / "views.sqlite"
    views = ExecutionViews(
        where if database_url is None else Database(url=database_url, schema="views")
    )
    views.apply(read_events(app, 0, 1000))
    return views


def all_ids(
    views: ExecutionViews, where: ExecutionFilter, order: Order = "newest", limit: int = 5
) -> list[UUID]:
    """Walk every page; check total_count on each."""
    ids: list[UUID] = []
    cursor = None
    while True:
        page = views.list(where, order, limit, cursor)
        ids += [item.id for item in page.items]
        assert page.total_count == views.list(where, order, 500).total_count
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor


def test_newest_first_by_default_and_oldest_on_request(views: ExecutionViews) -> None:
    newest = views.list().items
    assert len(newest) == 12
    assert [(e.created_at, str(e.id)) for e in newest] == sorted(
        ((e.created_at, str(e.id)) for e in newest), reverse=True
    )
    assert [e.id for e in views.list(order="oldest").items] == [e.id for e in reversed(newest)]


@pytest.mark.parametrize("order", ["newest", "oldest"])
@pytest.mark.parametrize("limit", [1, 5, 12, 13])
def test_pages_cover_every_row_once(views: ExecutionViews, order: Order, limit: int) -> None:
    everything = [e.id for e in views.list(order=order, limit=500).items]
    assert all_ids(views, ExecutionFilter(), order, limit) == everything


def test_last_page_has_no_cursor(views: ExecutionViews) -> None:
    page = views.list(limit=12)
    assert (len(page.items), page.total_count, page.next_cursor) == (12, 12, None)
    page = views.list(limit=11)
    assert page.next_cursor is not None
    assert len(views.list(limit=11, cursor=page.next_cursor).items) == 1


def test_filters_combine(views: ExecutionViews) -> None:
    succeeded = views.list(ExecutionFilter(statuses=frozenset({ExecutionStatus.SUCCEEDED})))
    assert succeeded.total_count == 4
    assert {e.status for e in succeeded.items} == {ExecutionStatus.SUCCEEDED}

    ended = ExecutionFilter(
        statuses=frozenset({ExecutionStatus.SUCCEEDED, ExecutionStatus.CANCELED})
    )
    assert views.list(ended).total_count == 4 + 2  # i = 1, 5 canceled (9 succeeded)

    one_device = ExecutionFilter(device_id="demo-thermostat-2", name="reboot")
    page = views.list(one_device)
    assert page.total_count == 2  # i = 1, 7
    assert {(e.device_id, e.name) for e in page.items} == {("demo-thermostat-2", "reboot")}
    assert all_ids(views, one_device, limit=1) == [e.id for e in page.items]

    assert views.list(ExecutionFilter(device_id="nobody")).total_count == 0
    assert views.list(ExecutionFilter(name="self_test")).total_count == 6


def test_created_after_is_inclusive_and_created_before_exclusive(views: ExecutionViews) -> None:
    oldest_first = views.list(order="oldest").items
    pivot = oldest_first[4].created_at
    after = views.list(ExecutionFilter(created_after=pivot))
    before = views.list(ExecutionFilter(created_before=pivot))
    assert after.total_count + before.total_count == 12
    assert pivot in {e.created_at for e in after.items}
    assert all(e.created_at < pivot for e in before.items)


@pytest.mark.parametrize("cursor", ["%%%", "bm90LWpzb24", "WyJuZXdlc3QiLDEsMl0", ""])
def test_a_cursor_not_ours_is_refused(views: ExecutionViews, cursor: str) -> None:
    with pytest.raises(InvalidQueryError) as refused:
        views.list(cursor=cursor)
    assert refused.value.field == "cursor"


def test_a_cursor_for_the_other_order_is_refused(views: ExecutionViews) -> None:
    cursor = views.list(limit=2).next_cursor
    with pytest.raises(InvalidQueryError, match="order=newest"):
        views.list(order="oldest", cursor=cursor)


@pytest.mark.parametrize("limit", [0, 501])
def test_limit_out_of_range_is_refused(views: ExecutionViews, limit: int) -> None:
    with pytest.raises(InvalidQueryError, match="limit"):
        views.list(limit=limit)


def test_get_of_an_unknown_execution_is_none(views: ExecutionViews) -> None:
    assert views.get(uuid4()) is None
