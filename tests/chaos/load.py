"""The chaos run's clients: an open-loop load of commands over the HTTP API and over NATS,
each with its own Idempotency-Key, sent again with the same key after any error or
timeout until Baton answers with the execution (or `give_up` seconds pass).

What a well-behaved client does: it never drops a command it was not told the outcome
of, and a retry with the same key is always safe (docs/api.md, "What a 503 means").
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import nats
from nats.aio.client import Client
from nats.errors import Error as NatsError

from baton_api.auth import principal_of
from baton_contracts.nats import SUBMIT_SUBJECT, ExecutionReply, SubmitCommand
from baton_domain.application import idempotent_execution_id
from tests.chaos.verdict import Submission

NATS_PRINCIPAL = "chaos"
REQUEST_TIMEOUT = 5.0  # as the api's own (BATON_REQUEST_TIMEOUT)
ANSWER_BY_SHARE = 0.8  # as the api sets `answer_by` (baton_api.gateway)
RETRY_MIN, RETRY_MAX = 0.2, 2.0

# What the load asks of the devices (the thermostat's behaviour, baton_simulator.behaviours):
# each answers differently, so the final status says which answer was recorded.
COMMANDS = (
    ("set_temperature", 0.55),  # STARTED, SUCCEEDED
    ("reboot", 0.20),  # STARTED, IN_PROGRESS, SUCCEEDED
    ("self_test", 0.15),  # STARTED, FAILED
    ("factory_reset", 0.10),  # REJECTED
)


@dataclass(frozen=True)
class Mix:
    """Which devices get commands: `devices` answer, `silent` ones never do (their
    executions time out), a command for a silent one `silent_share` of the time."""

    devices: list[str]
    silent: list[str]
    silent_share: float
    ttl_min: int
    ttl_max: int
    nats_share: float


class Load:
    def __init__(
        self,
        api_url: str,
        api_key: str,
        nats_url: str | list[str],
        mix: Mix,
        rng: random.Random,
        run_id: str,
        give_up: float,
    ) -> None:
        self.api_url = api_url
        self.api_key = api_key
        self.nats_url = nats_url
        self.mix = mix
        self.rng = rng
        self.run_id = run_id
        self.give_up = give_up
        self.submissions: list[Submission] = []
        self.connection_errors = 0
        self._http_principal = principal_of(api_key)
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None
        self._nc: Client | None = None

    async def __aenter__(self) -> Load:
        self._http = httpx.AsyncClient(
            base_url=self.api_url,
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=REQUEST_TIMEOUT + 5,
            limits=httpx.Limits(max_connections=200),
        )
        self._nc = await nats.connect(
            self.nats_url if isinstance(self.nats_url, list) else [self.nats_url],
            name="baton-chaos-load",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
            error_cb=self._connection_error,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()
        if self._nc is not None:
            await self._nc.close()

    async def run(self, rate: float, duration: Callable[[], float]) -> None:
        """Start a command every 1/`rate` s for `duration()` s, asked again before each
        (open loop: a slow answer does not slow the load), then wait until each was
        accepted, refused or given up."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        n = 0
        while (due := start + n / rate) < start + duration():
            await asyncio.sleep(max(0.0, due - loop.time()))
            task = asyncio.create_task(self._submit(self._next(n)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            n += 1
        await asyncio.gather(*list(self._tasks))

    async def _connection_error(self, exc: Exception) -> None:
        # nats-py logs each with a traceback by default; the restarts are the point here.
        self.connection_errors += 1

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def _next(self, n: int) -> Submission:
        mix, rng = self.mix, self.rng
        silent = mix.silent and rng.random() < mix.silent_share
        device = rng.choice(mix.silent if silent else mix.devices)
        name = rng.choices([c for c, _ in COMMANDS], [w for _, w in COMMANDS])[0]
        params: dict[str, Any] = {"value": rng.randint(5, 35)} if name == "set_temperature" else {}
        channel = "nats" if rng.random() < mix.nats_share else "http"
        key = f"chaos-{self.run_id}-{n:06d}"
        principal = NATS_PRINCIPAL if channel == "nats" else self._http_principal
        submission = Submission(
            key=key,
            channel=channel,
            device_id=device,
            name=name,
            params=params,
            ttl=rng.randint(mix.ttl_min, mix.ttl_max),
            execution_id=str(idempotent_execution_id(principal, key)),
        )
        self.submissions.append(submission)
        return submission

    async def _submit(self, sub: Submission) -> None:
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self.give_up
        send = self._http_once if sub.channel == "http" else self._nats_once
        sub.first_try = datetime.now(UTC)
        backoff = RETRY_MIN
        while loop.time() < give_up_at:
            sub.attempts += 1
            wait = await send(sub)
            if sub.accepted or sub.refused is not None:
                return
            await asyncio.sleep(wait if wait is not None else backoff)
            backoff = min(backoff * 2, RETRY_MAX)

    def _accept(self, sub: Submission, execution_id: str) -> None:
        sub.answered_ids.add(execution_id)
        sub.accepted_at = datetime.now(UTC)

    async def _http_once(self, sub: Submission) -> float | None:
        """One POST; returns how long to wait before the next try (None: the backoff)."""
        assert self._http is not None
        body = {"name": sub.name, "params": sub.params, "ttl": sub.ttl}
        try:
            response = await self._http.post(
                f"/v1/devices/{sub.device_id}/commands",
                json=body,
                headers={"Idempotency-Key": sub.key},
            )
        except httpx.HTTPError as exc:
            sub.errors[f"http {type(exc).__name__}"] += 1
            return None
        if response.status_code in (200, 201):
            self._accept(sub, str(response.json()["id"]))
            return None
        code = _problem_code(response)
        why = f"http {response.status_code} {code}"
        if response.status_code in (429, 503) or response.status_code >= 500:
            sub.errors[why] += 1
            return _retry_after(response.headers.get("Retry-After"))
        sub.refused = f"{why}: {response.text[:300]}"
        return None

    async def _nats_once(self, sub: Submission) -> float | None:
        assert self._nc is not None
        answer_by = datetime.now(UTC) + timedelta(seconds=REQUEST_TIMEOUT * ANSWER_BY_SHARE)
        command = SubmitCommand(
            device_id=sub.device_id,
            name=sub.name,
            params=sub.params,
            ttl=sub.ttl,
            idempotency_key=sub.key,
            answer_by=answer_by,
            principal=NATS_PRINCIPAL,
            source="nats",
        )
        try:
            message = await self._nc.request(
                SUBMIT_SUBJECT, command.model_dump_json().encode(), timeout=REQUEST_TIMEOUT
            )
        except (NatsError, TimeoutError) as exc:
            sub.errors[f"nats {type(exc).__name__}"] += 1
            return None
        reply = ExecutionReply.model_validate_json(message.data)
        if reply.execution is not None:
            self._accept(sub, str(reply.execution.id))
            return None
        problem = reply.problem
        if problem is None:
            sub.refused = f"nats: neither execution nor problem: {message.data[:300]!r}"
            return None
        why = f"nats {problem.status} {problem.code}"
        if problem.status in (429, 503) or problem.status >= 500:
            sub.errors[why] += 1
            return None if problem.retry_after is None else min(problem.retry_after, RETRY_MAX)
        sub.refused = f"{why}: {problem.detail}"
        return None


def _problem_code(response: httpx.Response) -> str:
    try:
        return str(response.json().get("code", ""))
    except ValueError:
        return ""


def _retry_after(value: str | None) -> float | None:
    try:
        return None if value is None else min(float(value), RETRY_MAX)
    except ValueError:
        return None
