"""Group commit: many commands applied in memory, their events stored in one transaction.

A store transaction costs the same for one event as for hundreds (its fsync dominates), so
the dispatcher hands the application every command that is waiting and stores them together.
Each command ("item") runs against the state the items before it left, held here in memory
(the overlay) until the commit; an item that raises leaves no trace in it, so a bad item
fails alone.
"""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from uuid import UUID

from eventsourcing.application import ProcessingEvent
from eventsourcing.domain import BaseAggregate, DomainEventProtocol

from baton_domain.catalog import Catalog

T = TypeVar("T")

# What a command reports as its position while its events wait for the commit: "something
# was stored". The real one comes with the item's BatchResult.
PROVISIONAL_POSITION = 0


@dataclass(frozen=True)
class BatchResult(Generic[T]):
    """One item of a batch: its value or its error, and the position of its last stored
    event (None when it stored nothing, or failed)."""

    value: T | None = None
    error: BaseException | None = None
    position: int | None = None

    def unwrap(self) -> T:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


class UnitOfWork:
    """The events and aggregates of the items applied so far, not yet stored."""

    def __init__(self) -> None:
        self.aggregates: dict[UUID, Any] = {}
        self.events: list[DomainEventProtocol[UUID]] = []
        self.item_events: list[list[DomainEventProtocol[UUID]]] = []
        self.catalog: Catalog | None = None  # the stored catalog, read once per batch
        self._pending: ProcessingEvent[UUID] | None = None

    def get(self, aggregate_id: UUID) -> Any | None:
        """A copy of the aggregate as an earlier item (or this one) left it, or None."""
        if self._pending is not None and aggregate_id in self._pending.aggregates:
            return deepcopy(self._pending.aggregates[aggregate_id])
        if aggregate_id in self.aggregates:
            return deepcopy(self.aggregates[aggregate_id])
        return None

    def collect(self, *objs: Any) -> None:
        """What the application's save does inside an item: keep, do not store."""
        pending = self._pending
        assert pending is not None, "save outside an item of the batch"
        for obj in objs:
            if isinstance(obj, BaseAggregate):
                # What the library's collect_events does for an aggregate, without its
                # two runtime-checkable protocol checks per object (2-3 % of a loaded
                # dispatcher's CPU).
                pending.events.extend(obj.collect_events())
                pending.aggregates[obj.id] = obj
            else:
                pending.collect_events(obj)

    @property
    def item_saved(self) -> bool:
        return self._pending is not None and bool(self._pending.events)

    def run(self, item: Callable[[], T]) -> tuple[T | None, BaseException | None]:
        """Apply one item; keep what it saved only if it returned."""
        self._pending = ProcessingEvent()
        try:
            value = item()
        except Exception as exc:
            self.item_events.append([])
            return None, exc
        else:
            self.aggregates.update(self._pending.aggregates)
            self.events.extend(self._pending.events)
            self.item_events.append(list(self._pending.events))
            return value, None
        finally:
            self._pending = None

    def processing_event(self) -> ProcessingEvent[UUID]:
        """Every kept event and the last state of each aggregate, as one save."""
        processing = ProcessingEvent[UUID]()
        processing.events = list(self.events)
        processing.aggregates = dict(self.aggregates)
        return processing
