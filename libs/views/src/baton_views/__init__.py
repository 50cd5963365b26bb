"""Baton's execution views: SQLite read models projected from the event store.

`ExecutionViews` holds the rows and their projection position; `read_events` reads the
event store's notification log; `rebuild` is `baton replay`.
"""

from baton_platform.mapping import read_events
from baton_views.changes import CHANGES_PAGE, Change, ChangeFilter
from baton_views.queries import (
    COUNT_LIMIT,
    DEFAULT_LIMIT,
    MAX_LIMIT,
    ExecutionFilter,
    ExecutionPage,
    ExecutionView,
    InvalidQueryError,
    LogEntry,
    Order,
)
from baton_views.replay import rebuild
from baton_views.views import ExecutionViews

__all__ = [
    "CHANGES_PAGE",
    "COUNT_LIMIT",
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "Change",
    "ChangeFilter",
    "ExecutionFilter",
    "ExecutionPage",
    "ExecutionView",
    "ExecutionViews",
    "InvalidQueryError",
    "LogEntry",
    "Order",
    "read_events",
    "rebuild",
]
