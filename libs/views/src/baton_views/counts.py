"""The counters behind `total_count`: how many executions each list filter matches.

The projection keeps them in the transaction that changes the rows, so a count is a
lookup of at most 20 counter rows (10 statuses x ephemeral or not) however many
executions are stored. Each execution is counted four times in its tenant, once per
scope: every execution, its device, its command name, its device's command name. A list
filtered on a creation time is not covered; queries.py counts those rows, up to a bound.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import NamedTuple

from baton_domain.statuses import ExecutionStatus
from baton_platform.sql import Connection

_SCOPES = ((0, False, False), (1, True, False), (2, False, True), (3, True, True))
_UPSERT = (
    "INSERT INTO execution_counts (scope, tenant, device_id, name, status, ephemeral, n)"
    " VALUES {values}"
    " ON CONFLICT (scope, tenant, device_id, name, status, ephemeral)"
    " DO UPDATE SET n = execution_counts.n + excluded.n"
    " RETURNING scope, tenant, device_id, name, status, ephemeral, n"
)
_DROP_EMPTY = (
    "DELETE FROM execution_counts WHERE n = 0"
    " AND (scope, tenant, device_id, name, status, ephemeral) IN (VALUES {values})"
)


class Counted(NamedTuple):
    """Where a row of `executions` is counted."""

    tenant: str
    device_id: str
    name: str
    status: str
    ephemeral: int


class CountChanges:
    """The changes a batch of events makes to the counters, summed and written once.

    A command that goes PENDING -> SENT -> SUCCEEDED within one batch is one +1 at the end.
    """

    def __init__(self) -> None:
        self._changes: Counter[Counted] = Counter()

    def moved(self, before: Counted | None, after: Counted | None) -> None:
        """A row went from `before` to `after` (None: it did not exist, or no longer does)."""
        if before == after:
            return
        if before is not None:
            self._changes[before] -= 1
        if after is not None:
            self._changes[after] += 1

    def write(self, conn: Connection) -> None:
        rows: Counter[tuple[int, str, str, str, str, int]] = Counter()
        for (tenant, device_id, name, status, ephemeral), change in self._changes.items():
            for scope, by_device, by_name in _SCOPES:
                key = (scope, tenant, device_id if by_device else "", name if by_name else "")
                rows[(*key, status, ephemeral)] += change
        changed = [(*key, n) for key, n in rows.items() if n]
        after = conn.execute_values(_UPSERT, changed)
        # Only a decrease can leave a counter at zero; dropping those keeps a live view and
        # its rebuild byte for byte the same.
        conn.execute_values(_DROP_EMPTY, [tuple(row)[:6] for row in after if row[6] == 0])
        self._changes.clear()


def count(
    conn: Connection,
    tenant: str,
    device_id: str | None,
    name: str | None,
    statuses: Iterable[ExecutionStatus],
    ephemerals: Iterable[int],
) -> int:
    """Executions of this tenant, device and command name (None: any), with these statuses
    (none given: any) and these `ephemeral` values."""
    scope = (device_id is not None) + 2 * (name is not None)
    clauses = ["scope = ?", "tenant = ?", "device_id = ?", "name = ?"]
    values: list[str | int] = [scope, tenant, device_id or "", name or ""]
    wanted = sorted(s.value for s in statuses)
    if wanted:
        clauses.append(f"status IN ({', '.join('?' * len(wanted))})")
        values += wanted
    kinds = sorted(ephemerals)
    clauses.append(f"ephemeral IN ({', '.join('?' * len(kinds))})")
    values += kinds
    sql = f"SELECT COALESCE(SUM(n), 0) FROM execution_counts WHERE {' AND '.join(clauses)}"
    return int(conn.execute(sql, values).fetchone()[0])


def unfinished_by_device(conn: Connection) -> list[tuple[str, str, int]]:
    """(device id, status, how many) of every device's executions not yet ended, in every
    tenant: one range of the counters per status (scope 1), however many have ended."""
    statuses = sorted(s.value for s in ExecutionStatus if not s.is_terminal)
    rows = conn.execute(
        "SELECT device_id, status, SUM(n) FROM execution_counts"
        f" WHERE scope = 1 AND status IN ({', '.join('?' * len(statuses))})"
        " GROUP BY device_id, status",
        statuses,
    )
    return [(row[0], row[1], int(row[2])) for row in rows]


def tenants(conn: Connection) -> list[str]:
    """The tenants that have executions, in order: one range of the counters (scope 0),
    however many executions they have."""
    rows = conn.execute(
        "SELECT DISTINCT tenant FROM execution_counts WHERE scope = 0 ORDER BY tenant"
    )
    return [row[0] for row in rows]


def recount(conn: Connection) -> None:
    """Set every counter from the rows, in the caller's transaction (for rows written in
    bulk without the projection, such as the history benchmark's)."""
    conn.execute("DELETE FROM execution_counts")
    for scope, by_device, by_name in _SCOPES:
        device = "device_id" if by_device else "''"
        name = "name" if by_name else "''"
        keys = ["tenant", *(["device_id"] if by_device else []), *(["name"] if by_name else [])]
        conn.execute(
            "INSERT INTO execution_counts (scope, tenant, device_id, name, status, ephemeral, n)"
            f" SELECT {scope}, tenant, {device}, {name}, status, ephemeral, COUNT(*)"
            f" FROM executions GROUP BY {', '.join(keys)}, status, ephemeral"
        )
