"""NATS request/reply edges: decode, one call, encode; the same for every service that
answers requests (the dispatcher, and the api for clients bound to a tenant).

A message that does not fit its model, is too large, or whose handling fails is answered
with a problem and counted in `baton_rejected_messages_total{service, reason}`: a requester
is never left without an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from opentelemetry.trace import SpanKind
from pydantic import BaseModel, ValidationError

from baton_contracts.nats import (
    MAX_COMMAND_BYTES,
    TENANT_SUBMIT_SUBJECT,
    FieldProblem,
    Problem,
    SubmitCommand,
)
from baton_platform import tracing
from baton_platform.lifecycle import cancel_and_wait
from baton_platform.logs import about
from baton_platform.metrics import REJECTED_MESSAGES
from baton_platform.nats_access import INBOX_ROOT, inbox_prefix, tenant_user

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
Refuse = Callable[[Problem], BaseModel]
Bind = Callable[[str, M], M]
# Where the tenant is in a tenant client's submit subject.
TENANT_TOKEN = TENANT_SUBMIT_SUBJECT.split(".").index("{tenant}")


ReplyPrefix = Callable[[str], str]


def any_inbox(_subject: str) -> str:
    return INBOX_ROOT


def answers_to(msg: Msg, service: str, verb: str, prefix: ReplyPrefix) -> bool:
    """Whether a request may be handled and answered: it has no reply subject, or one under
    `prefix(msg.subject)`, an inbox of whoever may send on that subject.

    A responder may publish its answer wherever the requester's reply subject says
    (nats-server's `allow_responses` checks nothing else, and a deny rule does not stop a
    reply), so a reply subject naming a stream's subject or a lease's key would have this
    service write there on the requester's behalf: a tenant client forging a lifecycle event,
    or taking a lease from the service that holds it. Such a request is dropped unhandled
    (it can only be forged), logged and counted."""
    if not msg.reply or msg.reply.startswith(prefix(msg.subject)):
        return True
    REJECTED_MESSAGES.labels(service=service, reason=f"foreign-reply-{verb}").inc()
    log.warning(
        "dropped a request on %s: its reply subject %r is not its sender's inbox",
        msg.subject,
        msg.reply,
    )
    return False


def failed(service: str) -> Problem:
    """A bug or a store failure while handling a request; whether it stored anything is not
    known here, so the answer does not say."""
    return Problem(
        status=500,
        title="Internal error",
        detail=f"the {service} failed on this request; it has been logged",
        code="internal-error",
    )


def invalid_message(exc: ValidationError) -> Problem:
    return Problem(
        status=422,
        title="Invalid message",
        detail="the request does not match the message schema",
        code="invalid-message",
        errors=[
            FieldProblem(field=".".join(str(p) for p in err["loc"]) or "(body)", reason=err["msg"])
            for err in exc.errors()
        ],
    )


def too_large(size: int) -> Problem:
    return Problem(
        status=413,
        title="Payload too large",
        detail=f"the request is {size} bytes; the limit is {MAX_COMMAND_BYTES} bytes",
        code="payload-too-large",
    )


# How long a stopping service waits for the requests it has in hand to be answered.
DRAIN_S = 10.0
# How often a request no one answered is sent again (see `request_patiently`).
NO_RESPONDERS_RETRY_S = 0.1
LAST_TRY_S = 1.0


async def request_patiently(
    nc: Client, subject: str, payload: bytes, within: float, resend_after: float | None = None
) -> Msg:
    """A request that, `within` seconds, waits for someone to answer `subject`: a partition
    moving between two dispatchers, or every dispatcher restarting, has no one on it for a
    moment. NATS says at once when no one listens, and then nothing was received, so sending
    it again is safe. NoRespondersError once the time is up; a TimeoutError when it was
    received and not answered in time. The current trace context travels in its headers.

    `resend_after`: for a request the receiver applies once however often it comes (a submit
    naming its execution id), sent again when no answer came after that many seconds. In a
    cluster, one sent while its subject moves between two dispatchers on different nodes
    can be lost without a word: routed to the node of the one that just unsubscribed (seen
    in a rolling restart: an answer never came, and the client got `outcome-unknown`)."""
    deadline = time.monotonic() + within
    # The caller's trace goes on with whoever answers (no headers at all when not traced).
    headers = tracing.inject()
    while True:
        remaining = deadline - time.monotonic()
        # The last try waits for all the time left, however long.
        last = resend_after is None or remaining - resend_after < LAST_TRY_S
        wait = remaining if last or resend_after is None else resend_after
        sent_at = time.monotonic()
        try:
            if headers:
                return await nc.request(subject, payload, timeout=wait, headers=headers)
            return await nc.request(subject, payload, timeout=wait)
        except NoRespondersError:
            # The last try keeps a useful time: one sent with almost none left would time
            # out under load before even "no responders" is back, and then say "unknown".
            if time.monotonic() + NO_RESPONDERS_RETRY_S + LAST_TRY_S >= deadline:
                raise
            await asyncio.sleep(NO_RESPONDERS_RETRY_S)
        except NatsTimeoutError:
            # Only a request that went unanswered for its whole wait may have been lost.
            if last or time.monotonic() - sent_at < 0.9 * wait:
                raise
            log.info("no answer on %s after %.1f s; sending it again", subject, wait)


class RequestEdges:
    """A service's request/reply subjects, on one NATS connection, in its queue group.

    A plain nats-py subscription in the dispatchers' queue group per subject, not FastStream's:
    measured here, FastStream's subscriber cost ~0.4-0.7 ms of CPU per request (dependency
    injection, middleware, its logging) against ~0.08 ms for the same request/reply on
    nats-py, more than the dispatcher's own work for a submit (docs/architecture.md)."""

    def __init__(self, nc: Client, service: str, queue: str, concurrent: int = 256) -> None:
        self._nc = nc
        self._service = service
        self._queue = queue
        self._concurrent = concurrent
        self._subs: list[Subscription] = []
        self._running: set[asyncio.Task[None]] = set()

    async def serve(
        self,
        subject: str,
        model: type[M],
        handle: Callable[[M], Awaitable[BaseModel]],
        refuse: Callable[[Problem], BaseModel],
        concurrent: int | None = None,
        bind: Bind[M] | None = None,
        replies: ReplyPrefix = any_inbox,
    ) -> Subscription:
        """Answer `subject`: decode, one call, encode.

        Up to `concurrent` requests of the subject are in hand at once, so those that arrive
        together meet in the Writer's queue and share one group commit; with 1, they are
        answered one by one in the order they came.

        A message that does not fit `model` is answered `refuse(problem)` and counted; so is a
        request the Writer fails on (logged): a requester is never left without an answer.
        `bind(subject, command)`, when given, sets what the subject decides on the command.
        `replies(subject)`: the prefix a request's reply subject must have (`answers_to`).
        Returns the subscription, for `unserve`."""
        concurrent = concurrent or self._concurrent
        gate = asyncio.Semaphore(concurrent)
        service = self._service
        verb = subject.rsplit(".", 1)[-1]

        async def answer(msg: Msg) -> None:
            if not answers_to(msg, service, verb, replies):
                return
            async with gate:
                bound = None if bind is None else functools.partial(bind, msg.subject)
                parent = tracing.extract(msg.headers)
                with tracing.span(f"{service} {verb}", SpanKind.SERVER, parent):
                    reply = await answer_request(
                        service, msg.data, subject, verb, model, handle, refuse, bound
                    )
            if msg.reply:
                await msg.respond(reply)

        async def arrived(msg: Msg) -> None:
            if concurrent == 1:
                await answer(msg)  # nats-py calls back one message at a time, in order
                return
            task = asyncio.create_task(answer(msg))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

        sub = await self._nc.subscribe(subject, queue=self._queue, cb=arrived)
        self._subs.append(sub)
        return sub

    async def unserve(self, sub: Subscription) -> None:
        """Stop taking requests on one subject; those in hand are still answered."""
        if sub not in self._subs:
            return  # stopped already
        self._subs.remove(sub)
        with contextlib.suppress(Exception):  # the connection may be closing
            # Not a bare unsubscribe: a request the server sent before it saw that would
            # be dropped here, unanswered. drain() waits for the server to confirm, then
            # hands what arrived meanwhile to `arrived` like any other.
            await sub.drain()  # type: ignore[no-untyped-call]

    async def drain(self, within: float = DRAIN_S) -> None:
        """Take no more requests, and answer those in hand (for up to `within` seconds):
        a clean stop leaves no requester waiting for an answer that will not come."""
        for sub in list(self._subs):
            await self.unserve(sub)
        if self._running:
            await asyncio.wait(set(self._running), timeout=within)

    async def stop(self) -> None:
        for sub in list(self._subs):
            await self.unserve(sub)
        for task in list(self._running):
            await cancel_and_wait(task)


async def answer_request(
    service: str,
    body: bytes,
    subject: str,
    verb: str,
    model: type[M],
    handle: Callable[[M], Awaitable[BaseModel]],
    refuse: Callable[[Problem], BaseModel],
    bind: Callable[[M], M] | None = None,
) -> bytes:
    if len(body) > MAX_COMMAND_BYTES:
        # Stored, it would make events NATS cannot carry: the relay would stop on them.
        REJECTED_MESSAGES.labels(service=service, reason=f"oversized-{verb}").inc()
        return refuse(too_large(len(body))).model_dump_json().encode()
    try:
        command = model.model_validate_json(body)
        if bind is not None:
            command = bind(command)
    except ValidationError as exc:
        REJECTED_MESSAGES.labels(service=service, reason=f"invalid-{verb}").inc()
        return refuse(invalid_message(exc)).model_dump_json().encode()
    execution_id = getattr(command, "execution_id", None)
    tracing.tag(execution_id)
    with about(execution_id):
        try:
            reply = await handle(command)
        except Exception:
            log.exception("%s failed", subject)
            REJECTED_MESSAGES.labels(service=service, reason=f"{verb}-failed").inc()
            # What to GET before a retry.
            problem = failed(service).model_copy(update={"execution_id": execution_id})
            return refuse(problem).model_dump_json().encode()
    return reply.model_dump_json().encode()


def tenant_inbox(subject: str) -> str:
    """Where a tenant client's submit may be answered: its own user's inbox, the only one
    it may read (a tenant's subject is published by that tenant's user alone)."""
    return f"{inbox_prefix(tenant_user(_tenant_of(subject)))}."


def tenant_submit(subject: str, command: SubmitCommand) -> SubmitCommand:
    """A tenant client's submit: its tenant is the subject's (its NATS user may publish there
    only), whatever the message says, and so is who asked (`nats:<tenant>`)."""
    tenant = _tenant_of(subject)
    bound = {"tenant": tenant, "principal": f"nats:{tenant}"}
    return SubmitCommand.model_validate({**command.model_dump(), **bound})


def _tenant_of(subject: str) -> str:
    """The tenant of a tenant client's submit subject."""
    return subject.split(".")[TENANT_TOKEN]
