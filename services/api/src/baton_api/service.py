"""What the v1 routes do, between the gateway (writes) and the views (reads).

Writes go to the dispatcher; the answer is then held back (briefly) until the views include
the write, so a client's next GET sees what it just did (read-your-writes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from baton_api.auth import Identity
from baton_api.gateway import CommandGateway
from baton_api.problems import ProblemError, problem
from baton_api.projector import ProjectionRunner
from baton_contracts.nats import (
    CancelCommand,
    DeleteCommand,
    ExecutionReply,
    ExecutionState,
    PurgeCommand,
    RetryCommand,
    SubmitCommand,
)
from baton_domain.application import chosen_id
from baton_domain.statuses import ExecutionStatus
from baton_views import ExecutionFilter, ExecutionPage, ExecutionView, ExecutionViews, Order

READ_YOUR_WRITES_TIMEOUT = 2.0
DEFAULT_CANCEL_REASON = "canceled by request"
PURGE_BATCH = 1000
PENDING_CACHE_TENANTS = 10_000
# A dispatcher's answer with one of these: the execution has not ended (a status this api
# does not know may mean it has).
UNENDED = frozenset(s.value for s in ExecutionStatus if not s.is_terminal)


@dataclass(frozen=True)
class Submitted:
    execution: ExecutionView | ExecutionState
    created: bool


class ExecutionService:
    def __init__(
        self,
        gateway: CommandGateway,
        views: ExecutionViews,
        runner: ProjectionRunner,
        store_position: Callable[[], int | None] | None = None,
        max_pending: int = 0,
    ) -> None:
        self._max_pending = max_pending  # per tenant; 0: no cap
        # Per tenant: (the views' position, its PENDING count read at that position).
        self._pending: dict[str, tuple[int, int]] = {}
        self._gateway = gateway
        self._views = views
        self._runner = runner
        self._store_position = store_position

    async def submit(
        self, command: SubmitCommand, wait: float | None, with_log: bool = False
    ) -> Submitted:
        """Submit; with `wait`, answer once the execution ended or `wait` s have passed.

        The execution id is fixed here, before the dispatcher is asked, so an answer that
        never comes still leaves the client an execution to look up (docs/api.md, 503).
        `wait` waits on the views after the dispatcher answered, never holding it. The
        execution is watched from before it is stored, so a new one costs a single read of
        the views, once it ended or `wait` ran out (`ProjectionRunner.watching`); `with_log`
        has the waited-for view carry its log, for answers that show it."""
        command = await self._planned(command)
        if not wait:
            state = await self._written(await self._gateway.submit(command))
            return Submitted(state.execution, state.created)
        assert command.execution_id is not None
        # The execution stored is the one asked for, or the submit is refused: the
        # dispatcher keeps a requester's id (`RequestCommand.stream_id`).
        with self._runner.watching(command.execution_id) as watch:
            state = await self._written(await self._gateway.submit(command))
            unended = state.created and state.execution.status in UNENDED
            ended = await watch.until_terminal(wait, with_log, unended=unended)
        if ended is not None:
            return Submitted(ended, state.created)
        return Submitted(state.execution, state.created)

    async def forward(self, command: SubmitCommand) -> ExecutionReply:
        """A submit from a NATS client bound to a tenant: the tenant's cap, then the
        dispatcher; its reply as it is, or the problem (as a reply too). Answered once the
        views include it, as over HTTP, so the next submit's cap counts it."""
        try:
            reply = await self._sent(command)
        except ProblemError as exc:
            return ExecutionReply(problem=exc.problem)
        if reply.position is not None:
            await self._runner.wait_for_position(reply.position, READ_YOUR_WRITES_TIMEOUT)
        return reply

    async def _sent(self, command: SubmitCommand) -> ExecutionReply:
        """The tenant's cap, the execution id fixed, then the dispatcher asked: its reply."""
        return await self._gateway.submit(await self._planned(command))

    async def _planned(self, command: SubmitCommand) -> SubmitCommand:
        """The tenant's cap checked, and the command with its execution id fixed."""
        await self._admit(command.tenant)
        if command.execution_id is None:
            planned = chosen_id(command.principal, command.idempotency_key)
            command = command.model_copy(update={"execution_id": planned})
        return command

    async def cancel(self, execution_id: UUID, reason: str | None, by: Identity) -> ExecutionState:
        command = CancelCommand(
            execution_id=execution_id,
            reason=reason or DEFAULT_CANCEL_REASON,
            principal=by.principal,
            tenant=by.tenant,
        )
        return (await self._written(await self._gateway.cancel(command))).execution

    async def retry(
        self, execution_id: UUID, by: Identity, source: str, idempotency_key: str | None = None
    ) -> Submitted:
        """A new execution of the same command; both are linked to each other. Its id is
        fixed here, as a submit's is: a retry whose answer was lost can be looked up, and one
        asked again finds the retry it made (`created` False)."""
        await self._admit(by.tenant)
        command = RetryCommand(
            execution_id=execution_id,
            retry_id=chosen_id(by.principal, idempotency_key),
            idempotency_key=idempotency_key,
            principal=by.principal,
            tenant=by.tenant,
            source=source,
        )
        written = await self._written(await self._gateway.retry(command))
        return Submitted(written.execution, written.created)

    async def delete(self, execution_id: UUID, reason: str, by: Identity) -> None:
        command = DeleteCommand(
            execution_id=execution_id, reason=reason, principal=by.principal, tenant=by.tenant
        )
        await self._written(await self._gateway.delete(command))

    async def purge(
        self,
        cutoff: datetime,
        reason: str,
        principal: str,
        ephemeral_only: bool = False,
        tenant: str | None = None,
    ) -> int:
        """Delete every execution (or every ephemeral one) of `tenant` (None: of every
        tenant) created before `cutoff`; returns how many. `principal`: who asked, recorded
        on every `Deleted`."""
        deleted = 0
        while ids := await asyncio.to_thread(
            self._views.ids_created_before, cutoff, PURGE_BATCH, ephemeral_only, tenant
        ):
            purge = PurgeCommand(
                execution_ids=ids, reason=reason, principal=principal, tenant=tenant
            )
            reply = await self._gateway.purge(purge)
            if reply.problem is not None:
                raise ProblemError(reply.problem)
            if reply.position is None:
                break  # the views still list executions the store has deleted: stop, not loop
            deleted += reply.deleted
            await self._runner.wait_for_position(reply.position, READ_YOUR_WRITES_TIMEOUT)
        return deleted

    async def get(self, execution_id: UUID, with_log: bool, tenant: str) -> ExecutionView:
        """The execution, if it is `tenant`'s: another tenant's is not found, like a missing
        one."""
        seen = self._runner.position
        execution = await asyncio.to_thread(self._views.get, execution_id, with_log, tenant)
        if execution is None and await self._caught_up(seen):
            # The views lagged behind the store: a 404 must mean "not stored", since a
            # client settles an unknown outcome with it.
            execution = await asyncio.to_thread(self._views.get, execution_id, with_log, tenant)
        if execution is None:
            raise ProblemError(
                problem(
                    404,
                    "execution-not-found",
                    f"execution {execution_id} does not exist",
                    title="Execution not found",
                )
            )
        return execution

    async def list(
        self,
        where: ExecutionFilter,
        order: Order,
        limit: int,
        cursor: str | None = None,
        offset: int = 0,
    ) -> ExecutionPage:
        return await asyncio.to_thread(self._views.list, where, order, limit, cursor, offset)

    async def _admit(self, tenant: str) -> None:
        """429 tenant-busy while the tenant has its cap of PENDING commands. Read from the
        views (one counter lookup, at most once per position of theirs), so commands stored
        in the last moment before it may be missed: a cap against runaway clients, not an
        exact quota."""
        if not self._max_pending:
            return
        pending = await self._pending_of(tenant)
        if pending >= self._max_pending:
            detail = (
                f"{pending} commands of this tenant are waiting to be sent (the cap is "
                f"{self._max_pending}); try again once some have gone out"
            )
            raise ProblemError(problem(429, "tenant-busy", detail), {"Retry-After": "1"})

    async def _pending_of(self, tenant: str) -> int:
        """The tenant's PENDING count, read again only once the views have moved: under
        load several submits meet between two projection steps, and the count cannot
        have changed in between."""
        position = self._runner.position
        known = self._pending.get(tenant)
        if known is not None and known[0] == position:
            return known[1]
        pending = await asyncio.to_thread(self._views.pending, tenant)
        if len(self._pending) >= PENDING_CACHE_TENANTS:
            self._pending.clear()  # many tenants: forget them all rather than grow
        self._pending[tenant] = (position, pending)
        return pending

    async def _caught_up(self, seen: int) -> bool:
        """Wait until the views include everything stored now; whether they moved past
        `seen`, the position before a read that found nothing (the projection may have
        caught up between that read and now: then it is worth reading again too)."""
        if self._store_position is None:
            return False
        position = await asyncio.to_thread(self._store_position) or 0
        if self._runner.position < position:
            await self._runner.wait_for_position(position, READ_YOUR_WRITES_TIMEOUT)
        return self._runner.position > seen

    async def _written(self, reply: ExecutionReply) -> _Written:
        if reply.problem is not None:
            raise ProblemError(reply.problem)
        if reply.execution is None:
            raise RuntimeError("the dispatcher replied with neither an execution nor a problem")
        if reply.position is not None:
            await self._runner.wait_for_position(reply.position, READ_YOUR_WRITES_TIMEOUT)
        return _Written(reply.execution, reply.created)


@dataclass(frozen=True)
class _Written:
    execution: ExecutionState
    created: bool
