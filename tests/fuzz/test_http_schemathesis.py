"""Schemathesis against the api's own OpenAPI document, on a real stack (issue 6).

The app under test is the real one: `baton_cli.localstack.Stack` runs nats-server, an MQTT
broker, the dispatcher, the timeout scheduler, the device bridge, the api and the simulator
(every device of deploy/catalog/seeds.yaml, one per dialect's wire profile) as separate
processes, exactly as the end-to-end tests do. The in-memory stand-ins would miss what only
the real path shows (NATS payload limits, the dispatcher's replies, timeouts).

Every operation, the dialects included, is fuzzed with positive and negative data; the
operations that other operations link to are also walked statefully (schemathesis infers
the links from the document). Destructive admin operations (catalog writes, deletes,
purges) run against their own throwaway stack so they cannot wipe what the others use.

Each answer must pass `not_a_server_error`, `status_code_conformance`,
`content_type_conformance` and `response_schema_conformance`. Every failure is collected
with a curl reproducer and the test fails listing them all.

`BATON_FUZZ_CASES` sets the number of generated cases (default 1,500: well within two
minutes on two cores); `make fuzz` runs 20,000. Generation is derandomized: the same code
and the same document give the same cases.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.errors import InvalidSchema
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok, Result
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from baton_cli.localstack import Stack
from tests.e2e.conftest import API_KEY, ROOT, make_stack, running
from tests.fuzz.conftest import FuzzFigures

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(1800)]

CASES = int(os.environ.get("BATON_FUZZ_CASES", "1500"))
# Shares of the cases: per-operation fuzzing on the shared stack, stateful walks on it,
# and per-operation fuzzing of the destructive operations on their own stack.
SHARES = {"operations": 0.45, "known-devices": 0.2, "stateful": 0.15, "destructive": 0.2}
# Devices of seeds.yaml by the path parameter (and prefix) that names them: random ids mostly
# meet 404, so a share of the cases goes to real devices, deep into validation and submits.
KNOWN_DEVICES = {
    ("/v1/", "device_id"): "thermostat-001",
    ("/enapter/", "device_id"): "fecbbba0-79f2-4e9e-a6f0-69a310ab110b",
    ("/traxes/", "entity_id"): "8667fb97-68f2-485a-87c7-f3bdfa9482e1",
    ("/iotee/", "device_ref"): "ABC123",
}
STATEFUL_STEPS = 10
STATEFUL_SEED = 20261202
WALKS_PER_ROUND = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# The key in every header a dialect reads it from: a generated value of one of them (each
# is a security scheme of the document) must not replace the real key.
AUTH = {
    "Authorization": f"Bearer {API_KEY}",
    "X-API-Key": API_KEY,
    "X-Enapter-Auth-Token": API_KEY,
}
CATALOG = ROOT / "deploy/catalog/seeds.yaml"
REQUEST_TIMEOUT = 90  # above the longest answer the api may take (`wait` <= 60 s)
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
# Catalog writes: creating or replacing a type, a device or the whole catalog.
CATALOG_WRITE = re.compile(r"^/v1/(catalog|device-types|devices)(/\{[^}/]+\})?$")


def destructive(method: str, path: str) -> bool:
    """Operations that delete data or rewrite the catalog other operations rely on."""
    return (
        method == "DELETE"
        or path.endswith("/purge")
        or (method in ("PUT", "POST") and bool(CATALOG_WRITE.match(path)))
    )


def is_destructive(ctx: Any) -> bool:
    return destructive(ctx.operation.method.upper(), ctx.operation.path)


Operation = schemathesis.APIOperation[Any, Any, Any, Any]
Plan = tuple[Operation, GenerationMode, dict[str, str]]  # what to fuzz, how, on which path


@dataclass
class Failures:
    """Check failures, one per (operation, failure), each with a curl reproducer."""

    found: dict[tuple[str, str], str] = field(default_factory=dict)

    def add(self, operation: str, group: FailureGroup, curl: str) -> None:
        for failure in group.exceptions:
            key = (operation, failure.title)
            self.found.setdefault(key, f"{operation}: {failure.title}\n{failure.message}\n  {curl}")

    def report(self) -> str:
        return f"{len(self.found)} failure(s):\n\n" + "\n\n".join(self.found.values())


@dataclass
class Fuzzer:
    """Sends a case to the stack, checks the answer, records the figures and failures."""

    base_url: str
    figures: FuzzFigures
    failures: Failures = field(default_factory=Failures)
    session: requests.Session = field(default_factory=requests.Session)

    def kwargs(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "session": self.session,
            "headers": AUTH,
            "timeout": REQUEST_TIMEOUT,
        }

    def exchange(self, stage: str, case: schemathesis.Case[Any]) -> None:
        response = case.call(**self.kwargs())
        self.check(stage, case, response)

    def check(
        self, stage: str, case: schemathesis.Case[Any], response: schemathesis.Response
    ) -> None:
        self.figures.record(stage, case.operation.label, response.status_code)
        try:
            case.validate_response(response, checks=CHECKS, headers=AUTH)
        except FailureGroup as group:
            curl = case.as_curl_command(headers=AUTH)
            self.failures.add(case.operation.label, group, curl)


def settings(examples: int, **extra: Any) -> hypothesis.settings:
    return hypothesis.settings(
        max_examples=examples,
        derandomize=extra.pop("derandomize", True),  # a fixed seed: the same cases every run
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # failures are collected, not shrunk
        suppress_health_check=list(HealthCheck),
        print_blob=False,
        **extra,
    )


def ok(result: Result[Operation, InvalidSchema]) -> Operation:
    """The operation; one the schema could not be read into fails here, saying why."""
    assert isinstance(result, Ok), result.err()
    return result.ok()


def fuzz_operations(
    schema: schemathesis.BaseSchema, fuzzer: Fuzzer, budget: int, stage: str
) -> None:
    """Each operation in each mode, the budget shared out; what an operation cannot use
    (a route without parameters has few distinct cases) goes to the ones after it."""
    plans: list[Plan] = [
        (ok(result), mode, {}) for result in schema.get_all_operations() for mode in MODES
    ]
    fuzz_plans(plans, fuzzer, budget, stage)


def fuzz_known_devices(
    schema: schemathesis.BaseSchema, fuzzer: Fuzzer, budget: int, stage: str
) -> None:
    """Positive cases of every operation that names a device in its path, on a real one."""
    plans = []
    for result in schema.get_all_operations():
        operation = ok(result)
        for (prefix, name), device in KNOWN_DEVICES.items():
            if operation.path.startswith(prefix) and "{" + name + "}" in operation.path:
                plans.append((operation, GenerationMode.POSITIVE, {name: device}))
    assert len(plans) >= 8, [operation.label for operation, _, _ in plans]
    fuzz_plans(plans, fuzzer, budget, stage)


def fuzz_plans(
    plans: list[Plan],
    fuzzer: Fuzzer,
    budget: int,
    stage: str,
) -> None:
    before = fuzzer.figures.stages[stage]
    for index, (operation, mode, path_parameters) in enumerate(plans):
        used = fuzzer.figures.stages[stage] - before
        examples = max(1, math.ceil((budget - used) / (len(plans) - index)))

        @settings(examples)
        @given(
            case=operation.as_strategy(
                generation_mode=mode, path_parameters=path_parameters or None
            )
        )
        def run(case: schemathesis.Case[Any]) -> None:
            fuzzer.exchange(stage, case)

        try:
            run()
        except hypothesis.errors.Unsatisfiable:
            # Nothing of this operation can be made invalid (no parameters, no body).
            if mode is not GenerationMode.NEGATIVE:
                raise


def stateful_walks(schema: schemathesis.BaseSchema, fuzzer: Fuzzer, budget: int) -> None:
    """Sequences along the links schemathesis infers (list -> get -> cancel -> retry ...).

    Hypothesis explores by replaying the choices of earlier walks, and assumes the same
    choices draw the same data. Against a live stack they need not: a list answered later
    holds more executions, so a link drawn from it resolves differently, and Hypothesis stops
    the run with FlakyStrategyDefinition (seen at a few thousand cases). So the walks run in
    rounds of WALKS_PER_ROUND, each from its own fixed seed (reproducible, and different
    rounds walk differently); a round that meets that error has checked every step it ran
    (failures are collected per step, never raised) and ends there, the next round goes on,
    and the budget must still be reached."""
    workflow = schema.as_state_machine()
    before = fuzzer.figures.stages["stateful"]
    seed = STATEFUL_SEED
    while (left := budget - (fuzzer.figures.stages["stateful"] - before)) > 0:
        walks = min(WALKS_PER_ROUND, max(1, math.ceil(left / STATEFUL_STEPS)))

        class Walk(workflow):  # type: ignore[misc, valid-type]
            def get_call_kwargs(self, case: schemathesis.Case[Any]) -> dict[str, Any]:
                return fuzzer.kwargs()

            def validate_response(
                self, response: schemathesis.Response, case: schemathesis.Case[Any], **_: Any
            ) -> None:
                fuzzer.check("stateful", case, response)

        Walk._hypothesis_internal_use_seed = seed  # what @hypothesis.seed sets
        seed += 1
        try:
            Walk.run(
                settings=settings(walks, derandomize=False, stateful_step_count=STATEFUL_STEPS)
            )
        except hypothesis.errors.FlakyStrategyDefinition:
            fuzzer.figures.rounds_cut += 1
        if budget - (fuzzer.figures.stages["stateful"] - before) == left:
            return  # a round that ran nothing: the caller's budget check fails


def load_schema(stack: Stack, figures: FuzzFigures) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_url(f"{stack.api_url}/schema/openapi.json", timeout=30)
    figures.documented |= {ok(result).label for result in schema.get_all_operations()}
    return schema


@pytest.fixture
def fuzz_stack(tmp_path: Path) -> Iterator[Stack]:
    # Live streams end within a second (they would not end otherwise), and the webhooks
    # the fuzzer makes are sent to this machine only (their URLs are generated).
    live = {"BATON_LIVE_MAX_SECONDS": "1", "BATON_WEBHOOK_TARGETS": "loopback"}
    stack = make_stack(tmp_path, catalog=CATALOG, simulate_catalog=True, extra_env=live)
    with running(stack) as started:
        yield started


def assert_clean(fuzzer: Fuzzer, stage: str, budget: int) -> None:
    print("\n".join(fuzzer.figures.lines()))
    assert not fuzzer.failures.found, fuzzer.failures.report()
    assert fuzzer.figures.stages[stage] >= budget * 0.9, fuzzer.figures.stages


def test_every_operation_and_the_links_between_them(
    fuzz_stack: Stack, fuzz_figures: FuzzFigures
) -> None:
    schema = load_schema(fuzz_stack, fuzz_figures).exclude(func=is_destructive)
    fuzzer = Fuzzer(fuzz_stack.api_url, fuzz_figures)
    budget = int(CASES * SHARES["operations"])
    fuzz_operations(schema, fuzzer, budget, "operations")
    known_budget = int(CASES * SHARES["known-devices"])
    fuzz_known_devices(schema, fuzzer, known_budget, "known-devices")
    stateful_budget = int(CASES * SHARES["stateful"])
    stateful_walks(schema, fuzzer, stateful_budget)
    assert_clean(fuzzer, "operations", budget)
    assert fuzzer.figures.stages["known-devices"] >= known_budget * 0.9
    assert fuzzer.figures.stages["stateful"] >= stateful_budget // 2


def test_destructive_operations_on_their_own_stack(
    fuzz_stack: Stack, fuzz_figures: FuzzFigures
) -> None:
    schema = load_schema(fuzz_stack, fuzz_figures).include(func=is_destructive)
    operations = [ok(result).label for result in schema.get_all_operations()]
    assert "PUT /v1/catalog" in operations and "POST /iotee/commands/purge" in operations
    fuzzer = Fuzzer(fuzz_stack.api_url, fuzz_figures)
    budget = int(CASES * SHARES["destructive"])
    fuzz_operations(schema, fuzzer, budget, "destructive")
    assert_clean(fuzzer, "destructive", budget)


def test_every_documented_operation_was_fuzzed(fuzz_figures: FuzzFigures) -> None:
    """Runs after the two stages: together they covered the whole document."""
    if not fuzz_figures.documented:
        pytest.skip("the fuzz stages did not run")
    assert fuzz_figures.documented - fuzz_figures.operations == set()
