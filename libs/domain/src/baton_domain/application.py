"""The Executions application: verb commands and get queries over CommandExecution streams.

Synchronous, like the eventsourcing library under it: services call it from a worker
thread, never from the event loop. Library errors become domain errors here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID, uuid4, uuid5

from eventsourcing.application import (
    AggregateNotFoundError,
    Application,
    ProcessingEvent,
    project_aggregate,
)
from eventsourcing.domain import Aggregate, DomainEventProtocol
from eventsourcing.persistence import IntegrityError, Recording

from baton_domain.catalog import Catalog, ResolvedCommand
from baton_domain.catalog_document import CATALOG_ID, CatalogDocument, document_of
from baton_domain.delivery import DeviceQueue, queue_id
from baton_domain.errors import (
    ExecutionDeleted,
    ExecutionNotFound,
    FieldError,
    IdempotencyConflict,
    InvalidCommand,
    WriteConflict,
)
from baton_domain.execution import CommandExecution
from baton_domain.group_commit import PROVISIONAL_POSITION, BatchResult, UnitOfWork
from baton_domain.statuses import AnswerStatus
from baton_domain.tenants import DEFAULT_TENANT

# Execution ids for idempotent requests are derived from the key, so a repeated request
# collides on the stream's first version and the store itself settles the race.
IDEMPOTENCY_NAMESPACE = UUID("6c6f5a2e-8d0b-4d4e-9a59-0a7e2b1a7c11")
CONFLICT_RETRIES = 3
DEFAULT_MAX_WAITING = 100
SNAPSHOT_INTERVAL = 50

Clock = Callable[[], datetime]
log = logging.getLogger(__name__)
T = TypeVar("T")
JSONDoc = dict[str, Any]


def utc_now() -> datetime:
    return datetime.now(UTC)


def idempotent_execution_id(principal: str, idempotency_key: str) -> UUID:
    """The execution id an idempotency key stands for (keys are scoped to their principal)."""
    return uuid5(IDEMPOTENCY_NAMESPACE, f"{principal}\x00{idempotency_key}")


@dataclass(frozen=True)
class RequestCommand:
    device_id: str
    name: str
    params: dict[str, Any]
    ttl: int | None
    idempotency_key: str | None = None
    principal: str = "anonymous"
    source: str = "api"
    tenant: str = DEFAULT_TENANT
    ephemeral: bool = False
    ignore_cooldown: bool = False
    # Chosen by the requester (the api fixes it before asking, so a lost answer can be
    # settled by a GET); a key, when there is one, decides the id instead.
    execution_id: UUID | None = None

    def fingerprint(self) -> str:
        body = {
            "device_id": self.device_id,
            "name": self.name,
            "params": self.params,
            "ttl": self.ttl,
            "ephemeral": self.ephemeral,
        }
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def repeatable(self) -> bool:
        """Whether a repeat of this request may find its execution already stored: any key
        that is not None is a key (the contracts refuse empty ones), and so is a chosen id."""
        return self.idempotency_key is not None or self.execution_id is not None

    def stream_id(self) -> UUID:
        return chosen_id(self.principal, self.idempotency_key, self.execution_id)


def chosen_id(
    principal: str, key: str | None, chosen: UUID | None = None, field: str = "execution_id"
) -> UUID:
    """A new execution's id: the key's, else the requester's choice (`field`), else a new
    one. A choice that is not the key's is refused. (The api fixes an id this way before it
    asks, so a request sent again with the same key meets the first attempt.)"""
    if key is not None:
        keyed = idempotent_execution_id(principal, key)
        if chosen not in (None, keyed):
            raise InvalidCommand(
                f"{field} does not match the idempotency key",
                [FieldError(field, f"with this idempotency key it is {keyed}")],
            )
        return keyed
    return chosen or uuid4()


@dataclass(frozen=True)
class Outcome:
    """What a command did: the execution after it, whether it changed, and the position of
    its last stored event in the notification log (for read-your-writes on the views)."""

    execution: CommandExecution
    changed: bool
    position: int | None
    created: bool = False


def _position(recordings: list[Recording[UUID]] | None) -> int | None:
    ids = [r.notification.id for r in recordings or [] if r.notification.id is not None]
    return max(ids) if ids else None


def _positions(recordings: list[Recording[UUID]]) -> dict[int, int]:
    """Notification id of each stored event, by the event object's identity."""
    return {
        id(r.domain_event): r.notification.id for r in recordings if r.notification.id is not None
    }


# Told of every transaction once it is committed: its new events and the aggregates as they
# left them (the dispatcher's metrics, baton_platform.metrics). Only what a commit stored
# reaches it: a command that changed nothing, or a transaction that failed, does not.
Recorded = Callable[[Sequence[DomainEventProtocol[UUID]], Mapping[UUID, Any]], None]


class Executions(Application[UUID]):
    name = "Executions"
    # A device's queue and the catalog are long-lived streams read on every request: a
    # snapshot every so many events keeps loading them short (measured: without, a busy
    # device's queue made each request replay all its history, 2.8k -> 0.2k requests/s).
    snapshotting_intervals = {
        DeviceQueue: SNAPSHOT_INTERVAL,
        CatalogDocument: SNAPSHOT_INTERVAL,
    }

    def __init__(
        self,
        catalog: Catalog,
        env: Mapping[str, str] | None = None,
        clock: Clock = utc_now,
        max_waiting: int = DEFAULT_MAX_WAITING,
        on_recorded: Recorded | None = None,
    ) -> None:
        super().__init__(env=env)
        self.on_recorded = on_recorded
        self._seed_catalog = catalog
        self._cached_catalog: tuple[int, Catalog] | None = None
        self.clock = clock
        self.max_waiting = max_waiting
        # Per thread: a batch belongs to the writer thread that runs it; other threads (a
        # log line, a read on the event loop) see the application as stored.
        self._local = threading.local()

    @property
    def _batch(self) -> UnitOfWork | None:
        batch: UnitOfWork | None = getattr(self._local, "batch", None)
        return batch

    @_batch.setter
    def _batch(self, batch: UnitOfWork | None) -> None:
        self._local.batch = batch

    @property
    def _alone(self) -> list[Recording[UUID]] | None:
        alone: list[Recording[UUID]] | None = getattr(self._local, "alone", None)
        return alone

    @_alone.setter
    def _alone(self, alone: list[Recording[UUID]] | None) -> None:
        self._local.alone = alone

    # --- the catalog -------------------------------------------------------------------------

    @property
    def catalog(self) -> Catalog:
        """The stored catalog (managed data); the seed given at start until one is stored."""
        batch = self._batch
        if batch is not None and batch.catalog is not None:
            # Catalog changes never share a batch: one look at the store serves all of it.
            return batch.catalog
        catalog = self._catalog_at(self._catalog_version())
        if batch is not None:
            batch.catalog = catalog
        return catalog

    def _catalog_at(self, version: int) -> Catalog:
        if version == 0:
            return self._seed_catalog
        if self._cached_catalog is None or self._cached_catalog[0] != version:
            document: CatalogDocument = self.repository.get(CATALOG_ID)
            self._cached_catalog = (version, document.catalog)
        return self._cached_catalog[1]

    def seed_catalog(self) -> int | None:
        """Store the seed catalog if none is stored yet (first start); returns the position."""
        if self._catalog_version():
            return None
        try:
            return self._stored(self.save(CatalogDocument(document_of(self._seed_catalog))))
        except IntegrityError:  # another dispatcher, starting too, stored it first
            return None

    def change_catalog(self, change: Callable[[CatalogDocument], None]) -> tuple[JSONDoc, int]:
        """Apply one checked change to the stored catalog; returns (document, position)."""
        document = self._catalog_document()
        change(document)
        position = self._stored(self.save(document))
        assert position is not None
        return document.document, position

    def preview_catalog_change(
        self, change: Callable[[CatalogDocument], None]
    ) -> tuple[Catalog, Catalog]:
        """The stored catalog and the one `change` would leave, nothing stored; raises what
        the change would (the repository hands out a copy of what it caches)."""
        document = self._catalog_document()
        before = document.catalog
        change(document)
        return before, document.catalog

    def catalog_change_at(self, version: int) -> tuple[Catalog, Catalog]:
        """The stored catalog just before its event `version` and just after it, read back
        from the store (the first event, which starts the catalog: that one, twice)."""
        after: CatalogDocument = self.repository.get(CATALOG_ID, version=version)
        if version <= 1:
            return after.catalog, after.catalog
        before: CatalogDocument = self.repository.get(CATALOG_ID, version=version - 1)
        return before.catalog, after.catalog

    def _catalog_document(self) -> CatalogDocument:
        try:
            document: CatalogDocument = self.repository.get(CATALOG_ID)
        except AggregateNotFoundError:
            document = CatalogDocument(document_of(self._seed_catalog))
        return document

    def catalog_document(self, tenant: str | None = None) -> JSONDoc:
        """The stored catalog, or (with `tenant`) the part of it that tenant sees."""
        catalog = self.catalog
        return document_of(catalog if tenant is None else catalog.of(tenant))

    def _catalog_version(self) -> int:
        # The newest event of the catalog's stream: one indexed read, so every request
        # sees the catalog as stored without loading it again. A recorder that can read
        # the version alone does (PostgreSQL's: the event would bring the whole catalog).
        newest_version = getattr(self.recorder, "newest_version", None)
        if newest_version is not None:
            return int(newest_version(CATALOG_ID))
        newest = self.recorder.select_events(CATALOG_ID, desc=True, limit=1)
        return newest[0].originator_version if newest else 0

    # --- commands ---------------------------------------------------------------------------

    def request(self, command: RequestCommand) -> Outcome:
        execution_id = command.stream_id()
        used = command.idempotency_key if command.idempotency_key is not None else execution_id
        for attempt in range(CONFLICT_RETRIES):
            try:
                look = self._may_be_stored(command, execution_id, attempt)
                existing = self._find(execution_id) if look else None
            except ExecutionDeleted:  # its execution was deleted: the key stays used
                raise IdempotencyConflict(str(used), deleted=True) from None
            except ExecutionNotFound:
                existing = None
            if existing is not None:
                if (
                    existing.fingerprint != command.fingerprint()
                    or existing.tenant != command.tenant
                ):
                    raise IdempotencyConflict(str(used))
                return Outcome(existing, changed=False, position=None)
            execution, queue = self._admit(command, execution_id)
            try:
                recordings = self.save(execution, queue)
            except IntegrityError:
                # Another writer stored the same idempotent request, or moved this device's
                # queue, since we read them: look again.
                continue
            return Outcome(execution, changed=True, position=self._stored(recordings), created=True)
        # The transaction failed each time, so nothing of this request is stored.
        raise WriteConflict(CONFLICT_RETRIES)

    def _may_be_stored(self, command: RequestCommand, execution_id: UUID, attempt: int) -> bool:
        """Whether to look for the execution before writing it. A key is for repeating, so
        it looks. An id the requester chose without a key (the api's, for every submit) is
        stored already only when a lost answer is asked again, which is rare: its first
        attempt writes at once, and the store's refusal of a second first event of one
        stream (IntegrityError) sends it round again to look. That saves a read of the
        store per submit; a repeat costs its batch one failed transaction instead, unless
        this process stored or read the execution lately: then it is in the aggregate
        cache, and looking costs no read. That is the usual repeat: the api sends a submit
        again when no answer came within `RESEND_S`, which happens when this dispatcher is
        overloaded, and a batch failed and applied again item by item would only add to it."""
        if not command.repeatable:
            return False
        if command.idempotency_key is not None or attempt > 0:
            return True
        return self._in_batch(execution_id) or self._cached(execution_id)

    def _cached(self, aggregate_id: UUID) -> bool:
        cache = self.repository.cache
        if cache is None:
            return False
        try:
            cache.get(aggregate_id)
        except KeyError:
            return False
        return True

    def _in_batch(self, aggregate_id: UUID) -> bool:
        """Whether the batch being applied holds this aggregate (saved by an item before)."""
        return self._batch is not None and self._batch.get(aggregate_id) is not None

    def record_state(self, device_id: str, state: dict[str, Any], at: datetime) -> int | None:
        """A device's reported state; settles the verifications that wait for it.

        Returns the position of the last stored event, or None when nothing changed."""
        self.catalog.device(device_id)  # UnknownDevice for a device the catalog lacks
        queue = self._queue(device_id)
        verified: list[CommandExecution] = []
        for execution_id in list(queue.verifying):
            try:
                execution = self.get(execution_id)
            except ExecutionNotFound:  # deleted: nothing left to verify
                queue.stop_verifying(execution_id)
                continue
            if execution.check_state(state, at):
                verified.append(execution)
                queue.stop_verifying(execution_id)
        if not queue.pending_events:
            return None
        return self._stored(self.save(*verified, queue))

    def record_presence(self, device_id: str, online: bool, at: datetime) -> int | None:
        """The device went online or offline; online releases what waited for it.

        Returns the position of the last stored event, or None when nothing changed."""
        self.catalog.device(device_id)  # UnknownDevice for a device the catalog lacks
        queue = self._queue(device_id)
        if not queue.set_presence(online, at):
            return None
        released = self._release(queue)
        return self._stored(self.save(queue, *released))

    def retry(
        self,
        execution_id: UUID,
        principal: str,
        source: str,
        tenant: str | None = None,
        retry_id: UUID | None = None,
        idempotency_key: str | None = None,
    ) -> Outcome:
        """A new execution of the same command, linked both ways to the ended one.

        `retry_id` (the requester's choice) or `idempotency_key` (which decides it) make a
        repeat find the retry it made, as a submit's do, rather than retry once more."""
        new_id = chosen_id(principal, idempotency_key, retry_id, "retry_id")
        used = idempotency_key if idempotency_key is not None else str(new_id)
        repeatable = idempotency_key is not None or retry_id is not None
        for _attempt in range(CONFLICT_RETRIES):
            old = self.get(execution_id, tenant)
            if repeatable:
                try:
                    existing = self._find(new_id)
                except ExecutionDeleted:  # the retry was deleted: its key stays used
                    raise IdempotencyConflict(used, deleted=True) from None
                if existing is not None:
                    if existing.retry_of != old.id or existing.tenant != old.tenant:
                        raise IdempotencyConflict(used)
                    return Outcome(existing, changed=False, position=None)
            command = RequestCommand(
                tenant=old.tenant,
                device_id=old.device_id,
                name=old.requested_name,
                params=old.params,
                ttl=old.ttl,
                principal=principal,
                source=source,
                ephemeral=old.ephemeral,
            )
            old.record_retry(new_id, by=principal)  # the guard first: only an ended one
            new, queue = self._admit(command, new_id, retry_of=old.id)
            try:
                # One transaction: neither link exists without the other.
                recordings = self.save(new, old, queue)
            except IntegrityError:
                # The same retry stored by another writer, or the device's queue or the
                # old execution moved since we read them: look again.
                continue
            return Outcome(new, changed=True, position=self._stored(recordings), created=True)
        raise WriteConflict(CONFLICT_RETRIES)

    def delete(
        self, execution_id: UUID, reason: str, by: str | None = None, tenant: str | None = None
    ) -> Outcome:
        def _delete(execution: CommandExecution) -> bool:
            execution.delete(reason, by)
            return True

        return self._update(execution_id, _delete, tenant)

    def purge(
        self,
        execution_ids: list[UUID],
        reason: str,
        by: str | None = None,
        tenant: str | None = None,
    ) -> tuple[int, int | None]:
        """Delete every execution of `execution_ids` that still exists, in one transaction.

        Returns (how many were deleted, the position of the last stored event)."""
        found: list[CommandExecution] = []
        queues: dict[str, DeviceQueue] = {}
        for execution_id in execution_ids:
            try:
                execution = self.get(execution_id, tenant)
            except ExecutionNotFound:
                continue  # deleted meanwhile, or another tenant's: nothing to do
            execution.delete(reason, by)
            found.append(execution)
            queue = queues.get(execution.device_id) or self._queue(execution.device_id)
            if queue.finish(execution.id):
                queues[execution.device_id] = queue
        if not found:
            return 0, None
        released = [e for queue in queues.values() for e in self._release(queue)]
        return len(found), self._stored(self.save(*found, *queues.values(), *released))

    def record_published(self, execution_id: UUID) -> Outcome:
        return self._update(execution_id, lambda e: e.mark_published())

    def record_answer(
        self,
        execution_id: UUID,
        device_id: str,
        report_id: str,
        status: AnswerStatus,
        payload: dict[str, Any],
        received_at: datetime,
    ) -> Outcome:
        return self._update(
            execution_id,
            lambda e: e.record_answer(device_id, report_id, status, payload, received_at),
        )

    def reach_deadline(self, execution_id: UUID, kind: str = "execution") -> Outcome:
        """The execution's own deadline, or (kind `verification`) its verification's."""
        if kind == "verification":
            return self._update(execution_id, lambda e: e.reach_verification_deadline(self.clock()))
        return self._update(execution_id, lambda e: e.reach_deadline(self.clock()))

    def cancel(
        self, execution_id: UUID, reason: str, by: str | None = None, tenant: str | None = None
    ) -> Outcome:
        def _cancel(execution: CommandExecution) -> bool:
            execution.cancel(reason, by)
            return True

        return self._update(execution_id, _cancel, tenant)

    # --- queries ----------------------------------------------------------------------------

    def get(self, execution_id: UUID, tenant: str | None = None) -> CommandExecution:
        """The execution; a deleted one is not found (its stream still holds it all), nor
        is another tenant's when `tenant` is given (None: the services' own calls)."""
        try:
            execution: CommandExecution = self._load(execution_id)
        except AggregateNotFoundError:
            raise ExecutionNotFound(execution_id) from None
        if tenant is not None and execution.tenant != tenant:
            raise ExecutionNotFound(execution_id)
        if execution.deleted:
            raise ExecutionDeleted(execution_id)
        return execution

    def _find(self, execution_id: UUID) -> CommandExecution | None:
        """The execution, or None when nothing was ever stored under its id: for an id not
        used yet (the usual case: the api chose it just now) one indexed read, where loading
        would first look for a snapshot and then for its events."""
        if not self._in_batch(execution_id) and not self.recorder.select_events(
            execution_id, limit=1
        ):
            return None
        return self.get(execution_id)

    def device_of(self, execution_id: UUID) -> str | None:
        """The device an execution was requested for (None: there is no such execution),
        read from its first event as stored: nothing is cached, so any thread may ask about
        any execution, whoever writes it."""
        first = self.recorder.select_events(execution_id, limit=1)
        if not first:
            return None
        requested = self.mapper.to_domain_event(first[0])
        device_id = getattr(requested, "device_id", None)
        return device_id if isinstance(device_id, str) else None

    def committed(self, execution_id: UUID) -> CommandExecution:
        """The execution as its last commit left it, read from its stored events: neither
        the cache nor a batch in progress is looked at, so any thread may ask while the
        writer thread writes (a due deadline's first look, outside the writer's queue)."""
        execution = project_aggregate(None, self.repository.event_store.get(execution_id))
        if not isinstance(execution, CommandExecution):  # nothing stored, or not an execution
            raise ExecutionNotFound(execution_id)
        if execution.deleted:
            raise ExecutionDeleted(execution_id)
        return execution

    def forget_cached(self) -> None:
        """Drop every cached aggregate: this process may not have written some of them for a
        while (a dispatcher taking a device partition over from another)."""
        cache = self.repository.cache
        if cache is not None:
            self._forget(list(cache.cache))  # the library's clear() keeps the entries

    def queue_of(self, device_id: str) -> DeviceQueue:
        return self._queue(device_id)

    def events_of(self, execution_id: UUID) -> list[CommandExecution.Event]:
        events = list(self.repository.event_store.get(execution_id))
        if not events:
            raise ExecutionNotFound(execution_id)
        return events  # type: ignore[return-value]

    # --- group commit ------------------------------------------------------------------------

    def run_batch(self, items: Sequence[Callable[[], T]]) -> list[BatchResult[T]]:
        """Apply `items` in order, each on the state the ones before it left, and store all
        their events in one transaction.

        An item that raises stores nothing and leaves the others as they are. If the one
        transaction fails (another writer moved a stream meanwhile, or the store refused),
        nothing of it is stored and every item is applied again on its own, so each fails or
        succeeds alone."""
        batch = UnitOfWork()
        self._batch = batch
        try:
            ran = [batch.run(item) for item in items]
        finally:
            self._batch = None
        if not batch.events:
            return [BatchResult(value, error) for value, error in ran]
        processing = batch.processing_event()
        try:
            recordings = self._record(processing)
        except Exception:
            # Nothing of it is stored; the cache holds only what was read from the store,
            # unless another writer moved a stream since: read those again.
            self._forget(processing.aggregates)
            return [self._run_alone(item) for item in items]
        self._take_snapshots(processing)
        self._notify(recordings)
        stored = _positions(recordings)
        return [
            BatchResult(
                value,
                error,
                max((stored[id(e)] for e in events), default=None) if error is None else None,
            )
            for (value, error), events in zip(ran, batch.item_events, strict=True)
        ]

    def _run_alone(self, item: Callable[[], T]) -> BatchResult[T]:
        """One item in its own transaction(s), with the commands' own conflict retries."""
        self._alone = []
        try:
            value = item()
        except Exception as exc:
            return BatchResult(error=exc)
        finally:
            stored, self._alone = self._alone, None
        return BatchResult(value, position=_position(stored))

    def save(self, *objs: Any, **kwargs: Any) -> list[Recording[UUID]]:
        """Store now; inside `run_batch`, keep for the batch's one transaction instead."""
        if self._batch is not None:
            self._batch.collect(*objs)
            return []
        try:
            recordings = super().save(*objs, **kwargs)
        except IntegrityError:
            self._forget(getattr(obj, "id", None) for obj in objs)
            raise
        if self._alone is not None:
            self._alone.extend(recordings)
        return recordings

    def _record(self, processing_event: ProcessingEvent[UUID]) -> list[Recording[UUID]]:
        """Store (every save and every batch comes here), then tell `on_recorded`."""
        recordings = super()._record(processing_event)
        if self.on_recorded is not None:
            try:
                self.on_recorded(processing_event.events, processing_event.aggregates)
            except Exception:  # an observer's fault must not fail a stored write
                log.exception("on_recorded failed")
        return recordings

    def _forget(self, aggregate_ids: Iterable[UUID | None]) -> None:
        """Drop cached copies that a conflict showed stale: another writer moved the stream.
        (The dispatcher's cache is not brought up to date from the store on every read:
        baton_platform.eventstore.)"""
        cache = self.repository.cache
        if cache is None:
            return
        for aggregate_id in aggregate_ids:
            if aggregate_id is not None:
                with contextlib.suppress(KeyError):
                    cache.get(aggregate_id, evict=True)

    def _stored(self, recordings: list[Recording[UUID]]) -> int | None:
        """The position of what a command saved; inside a batch, PROVISIONAL_POSITION until
        the commit gives the real one."""
        if self._batch is not None:
            return PROVISIONAL_POSITION if self._batch.item_saved else None
        return _position(recordings)

    def _load(self, aggregate_id: UUID) -> Any:
        """The aggregate as stored, or as an earlier command of this batch left it."""
        if self._batch is not None:
            pending = self._batch.get(aggregate_id)
            if pending is not None:
                return pending
        return self.repository.get(aggregate_id)

    # --- plumbing ---------------------------------------------------------------------------

    def new_execution(
        self,
        command: RequestCommand,
        execution_id: UUID,
        now: datetime,
        retry_of: UUID | None = None,
    ) -> tuple[CommandExecution, ResolvedCommand]:
        """A new execution of `command` requested at `now`, checked against the catalog:
        Requested only, not yet admitted by its device's queue (`request` does both)."""
        resolved = self.catalog.resolve(
            command.device_id, command.name, command.params, command.ttl, command.tenant
        )
        execution = CommandExecution.requested_at(
            now,
            id=execution_id,
            device_id=resolved.device.id,
            device_type=resolved.device.type,
            name=resolved.name,
            params=resolved.params,
            ttl=resolved.ttl,
            deadline=now + timedelta(seconds=resolved.ttl),
            idempotency_key=command.idempotency_key,
            fingerprint=command.fingerprint() if command.repeatable else None,
            source=command.source,
            requested_name=resolved.requested_name,
            ephemeral=command.ephemeral,
            retry_of=retry_of,
            requested_by=command.principal,
            tenant=command.tenant,
        )
        rule = resolved.verification
        if rule is not None:
            execution.require_verification(
                rule.field, rule.equals, now + timedelta(seconds=rule.within)
            )
        return execution, resolved

    def _admit(
        self, command: RequestCommand, execution_id: UUID, retry_of: UUID | None = None
    ) -> tuple[CommandExecution, DeviceQueue]:
        """A new execution, admitted by its device's queue: dispatched now, or waiting."""
        now = self.clock()
        execution, resolved = self.new_execution(command, execution_id, now, retry_of)
        rule = resolved.verification
        queue = self._queue(resolved.device.id)
        if queue.admit(
            execution.id,
            resolved.name,
            now,
            resolved.delivery,
            resolved.cooldown,
            command.ignore_cooldown,
            self.max_waiting,
            verify=rule is not None,
        ):
            execution.dispatch()
        return execution, queue

    def _settle_queue(self, execution: CommandExecution) -> list[Aggregate]:
        """After a change: an ended execution leaves its device's queue (and the next one
        may go out), one no longer verifying stops listening to device states."""
        if not (execution.is_terminal or execution.verification is not None):
            return []  # a running execution without verification: its queue is unchanged
        queue = self._queue(execution.device_id)
        finished = execution.is_terminal and queue.finish(execution.id)
        verified = not execution.verifying and queue.stop_verifying(execution.id)
        if not (finished or verified):
            return []
        return [queue, *self._release(queue)]

    def _queue(self, device_id: str) -> DeviceQueue:
        try:
            queue: DeviceQueue = self._load(queue_id(device_id))
        except AggregateNotFoundError:
            return DeviceQueue(device_id)
        return queue

    def _release(self, queue: DeviceQueue) -> list[CommandExecution]:
        """Dispatch what may go out now from `queue`; returns the executions to save."""
        released = []
        for execution_id in queue.to_release():
            execution = self.get(execution_id)
            execution.dispatch()
            queue.release(execution_id)
            released.append(execution)
        return released

    def _update(
        self,
        execution_id: UUID,
        change: Callable[[CommandExecution], bool],
        tenant: str | None = None,
    ) -> Outcome:
        """Load, apply one domain method, save; retry when another writer got there first."""
        for attempt in range(CONFLICT_RETRIES):
            execution = self.get(execution_id, tenant)
            changed = change(execution)
            if not changed:
                return Outcome(execution, changed=False, position=None)
            others = self._settle_queue(execution)
            try:
                recordings = self.save(execution, *others)
            except IntegrityError:
                if attempt == CONFLICT_RETRIES - 1:
                    raise
                continue
            return Outcome(execution, changed=True, position=self._stored(recordings))
        raise AssertionError("unreachable")  # pragma: no cover
