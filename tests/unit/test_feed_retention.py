"""The change feed and the finished webhook deliveries are pruned after
BATON_CHANGE_RETENTION_DAYS, by the replica that writes the views only."""

# The views tests' fixtures are imported, and their names are then the tests' parameters.
# ruff: noqa: F811

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from baton_api.feed_retention import FeedRetention
from baton_api.webhooks.delivery import payload_body
from baton_api.webhooks.store import WebhookStore
from baton_domain.application import Executions
from baton_platform.sql import Database
from baton_views import ChangeFilter, ExecutionViews
from tests.unit.test_views import (  # noqa: F401  # fixtures
    Clock,
    app,
    clock,
    every_ending,
    place,
    project_all,
    views,
)


class Runner:
    def __init__(self, projecting: bool) -> None:
        self.projecting = projecting


async def test_only_the_projecting_replica_prunes_and_only_what_is_old(
    app: Executions, views: ExecutionViews, clock: Clock, tmp_path: Path
) -> None:
    every_ending(app, clock)
    project_all(app, views)
    feed = views.changes(ChangeFilter(tenant=None), 0, 1000)
    webhooks = WebhookStore(Database(path=tmp_path / "webhooks.sqlite"))
    # A week and a day after the last change: all of it is past a week's retention.
    later = datetime.fromisoformat(feed[-1].at) + timedelta(days=8)
    try:
        reader = FeedRetention(views, webhooks, Runner(False), 7, 60, clock=lambda: later)  # type: ignore[arg-type]
        assert await reader.sweep() == (0, 0)
        assert views.change_floor() == 0

        recent = FeedRetention(views, webhooks, Runner(True), 9, 60, clock=lambda: later)  # type: ignore[arg-type]
        assert await recent.sweep() == (0, 0)  # nine days kept: none is that old

        writer = FeedRetention(views, webhooks, Runner(True), 7, 60, clock=lambda: later)  # type: ignore[arg-type]
        assert await writer.sweep() == (len(feed), 0)
        assert views.changes(ChangeFilter(tenant=None), 0, 1000) == []
        assert views.change_floor() == feed[-1].position
    finally:
        webhooks.close()


async def test_a_webhook_sender_behind_the_pruned_feed_is_told_of(
    app: Executions,
    views: ExecutionViews,
    clock: Clock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    every_ending(app, clock)
    project_all(app, views)
    feed = views.changes(ChangeFilter(tenant=None), 0, 1000)
    webhooks = WebhookStore(Database(path=tmp_path / "webhooks.sqlite"))
    later = datetime.fromisoformat(feed[-1].at) + timedelta(days=8)
    try:
        webhooks.enqueue([], feed[0].position, payload_body)  # the sender got no further
        writer = FeedRetention(views, webhooks, Runner(True), 7, 60, clock=lambda: later)  # type: ignore[arg-type]
        await writer.sweep()
        told = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert told == [
            f"webhooks: changes {feed[0].position + 1}-{feed[-1].position} were pruned"
            " (BATON_CHANGE_RETENTION_DAYS) before they could be enqueued; they are not delivered"
        ]
        webhooks.enqueue([], feed[-1].position, payload_body)  # caught up: nothing to say
        caplog.clear()
        await writer.sweep()
        assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    finally:
        webhooks.close()
