"""The one way the wire profiles read a JSON body: any bytes -> a JSON value Baton can carry
on, or MalformedWireError with the profile's reason (docs/mqtt-contract.md).

A device's bytes must never reach the bridge's loop as anything but a message or a counted
rejection. `json.loads` alone lets through what breaks later, far from the wire: deep
nesting (RecursionError), lone surrogates (the report cannot be encoded to JSON again),
`NaN`/`Infinity` and `1e400` (not JSON; silently `null` once re-encoded) and integers no
store keeps exactly. So: standard JSON (RFC 8259) in UTF-8, at most MAX_BYTES long,
MAX_DEPTH deep, finite numbers, integers of 64 bits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar
from uuid import UUID

from pydantic import BaseModel, ValidationError
from pydantic_core import from_json

from baton_contracts.profiles.base import (
    MalformedReason,
    MalformedWireError,
    check_wire_id,
    first_error,
    parse_uuid,
)

# A report must fit NATS's max payload (1 MiB by default) with room for its envelope.
MAX_BYTES = 256 * 1024
# Objects and arrays inside each other; a device's answer or state needs a handful.
MAX_DEPTH = 32
# Integers as SQLite and PostgreSQL (bigint) store them; beyond, they would turn into floats.
MIN_INT, MAX_INT = -(2**63), 2**63 - 1


def load_json(payload: bytes, reason: MalformedReason) -> Any:
    """The JSON value of `payload`; MalformedWireError(`reason`) for anything else."""
    if len(payload) > MAX_BYTES:
        raise MalformedWireError(reason, f"{len(payload)} bytes: longer than {MAX_BYTES}")
    try:
        # pydantic-core's parser: no recursion in Python, invalid UTF-8 and lone surrogates
        # refused, and NaN/Infinity refused with allow_inf_nan=False.
        value = from_json(payload, allow_inf_nan=False)
    except ValueError as exc:
        raise MalformedWireError(reason, f"not JSON: {exc}") from None
    problem = _problem(value)
    if problem is not None:
        raise MalformedWireError(reason, problem)
    return value


def _problem(value: Any) -> str | None:
    """What makes a parsed value unfit, walked without recursion; None when it is fine."""
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                return f"nested deeper than {MAX_DEPTH} levels"
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
        elif isinstance(item, bool):
            continue  # a bool is an int to Python, and always fine
        elif isinstance(item, int) and not MIN_INT <= item <= MAX_INT:
            return "an integer beyond 64 bits"
        elif isinstance(item, float) and not math.isfinite(item):
            return "a number out of range"
    return None


M = TypeVar("M", bound=BaseModel)


def load_model(payload: bytes, model: type[M], reason: MalformedReason) -> M:
    """`payload` read as `model`; MalformedWireError(`reason`) when it is not one."""
    value = load_json(payload, reason)
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise MalformedWireError(reason, first_error(exc)) from None


def decode_response(
    topic: str,
    payload: bytes,
    root: str,
    parse: Callable[[str], tuple[str, str, str] | None],
    model: type[M],
) -> tuple[str, UUID, M] | None:
    """The answer of a profile whose topics are `{root}/{wire id}/executions/{id}/response…`:
    (wire id, execution id, body), None for a topic outside `root`, MalformedWireError for
    a topic or body that is not what the profile says."""
    if not topic.startswith(f"{root}/"):
        return None
    parsed = parse(topic)
    if parsed is None or parsed[2] != "response":
        raise MalformedWireError("malformed-topic", f"not a response topic: {topic!r}")
    wire_id, execution, _ = parsed
    check_wire_id(wire_id)
    execution_id = parse_uuid(execution)
    return wire_id, execution_id, load_model(payload, model, "malformed-answer")
