"""The event store's PostgreSQL recorder: the library's, with each insert one statement.

eventsourcing's recorder stores a batch of events in a pipelined transaction of seven
commands (BEGIN, SET LOCAL lock_timeout, LOCK TABLE, NOTIFY, the INSERT, a sync, COMMIT).
Each command costs the writer a trip through psycopg's pipeline and the server a statement;
at 100 commands/s on PostgreSQL that path was a quarter of the dispatcher's CPU (py-spy).

Here the same steps run inside one server-side function, called by one prepared statement
in its own implicit transaction. The library has such a function too
(`POSTGRES_ENABLE_DB_FUNCTIONS`), but it does not take the table lock, and the lock is what
keeps notification ids in commit order: without it a reader tailing the log (the outbox
relay, the views' projection) could pass an id whose transaction commits after a higher one
and never see it. This one takes it, as the library's pipelined path does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import InterfaceError, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.utils import retry
from psycopg.sql import SQL, Identifier

# What `APPLICATION_RECORDER_TOPIC` names to eventsourcing's PostgreSQL factory.
TOPIC = f"{__name__}:OneStatementRecorder"


class OneStatementRecorder(PostgresApplicationRecorder):
    def __init__(
        self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events"
    ) -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        schema = Identifier(datastore.schema)
        function = f"baton_insert_events_{datastore.originator_id_type}"
        self._result_column = function
        # The events go in binary (%b): as text, psycopg writes each row of the array in
        # Python and each state as hex. Measured: 180 against 250 µs of the writer's CPU
        # for an insert of five events of 250 bytes (a PostgreSQL of the test harness).
        self._insert = SQL("SELECT * FROM {schema}.{function}((%b))").format(
            schema=schema, function=Identifier(function)
        )
        self._insert_bytes: bytes | None = None
        self._newest = SQL(
            "SELECT originator_version FROM {schema}.{table} WHERE originator_id = %s"
            " ORDER BY originator_version DESC LIMIT 1"
        ).format(schema=schema, table=Identifier(events_table_name))
        create = SQL(
            "CREATE OR REPLACE FUNCTION {schema}.{function}(events {schema}.{event}[]) "
            "RETURNS SETOF bigint LANGUAGE plpgsql AS $BODY$ "
            "BEGIN "
            "  SET LOCAL lock_timeout = '{lock_timeout}s'; "
            "  LOCK TABLE {schema}.{table} IN EXCLUSIVE MODE; "
            "  NOTIFY {channel}; "
            "  RETURN QUERY "
            "  INSERT INTO {schema}.{table} AS t (originator_id, originator_version, topic, state)"
            "  SELECT originator_id, originator_version, topic, state FROM unnest(events)"
            "  RETURNING notification_id; "
            "END; $BODY$"
        ).format(
            schema=schema,
            function=Identifier(function),
            event=Identifier(self.stored_event_type_name),
            lock_timeout=datastore.lock_timeout,
            table=Identifier(self.events_table_name),
            channel=Identifier(self.channel_name),
        )
        # In place of the library's function (created beside the table, after its type).
        self.sql_create_statements[self.create_insert_function_statement_index] = create

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int]:
        """Stores `stored_events` in one transaction; their notification ids, in order. Two
        events of one stream and version raise IntegrityError, and nothing is stored."""
        if not stored_events:
            return []
        rows = [
            self.construct_pg_stored_event(
                originator_id=e.originator_id,
                originator_version=e.originator_version,
                topic=e.topic,
                state=e.state,
            )
            for e in stored_events
        ]
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            if self._insert_bytes is None:
                # Once: psycopg renders a composed statement anew at each execute (its
                # identifiers quoted through libpq each time).
                self._insert_bytes = self._insert.as_bytes(conn)
            curs.execute(self._insert_bytes, (rows,), prepare=True)
            return [row[self._result_column] for row in curs.fetchall()]

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def newest_version(self, originator_id: UUID) -> int:
        """The version of a stream's newest event (0: none), read from the primary key's
        index alone. `select_events(desc=True, limit=1)` brings the event's state too, and
        the catalog's newest event holds the whole catalog (tens of kB, read once per
        batch of the dispatcher to see a change another dispatcher stored)."""
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._newest, (originator_id,), prepare=True)
            row = curs.fetchone()
            return int(row["originator_version"]) if row else 0
