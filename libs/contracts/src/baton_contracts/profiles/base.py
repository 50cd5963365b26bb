"""What every wire profile provides, and the values that cross its boundary.

A profile is data plus a codec (docs/wire-profiles.md): the device-bridge encodes requests and
decodes answers with it, the simulator decodes requests and encodes answers with the same
codec, so the two sides cannot disagree. Codecs are pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol
from uuid import UUID

from baton_contracts.mqtt import AnswerStatusWord

ANSWER_STATUSES: frozenset[str] = frozenset(
    {"STARTED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED"}
)
# The catalog's device id pattern: it also keeps MQTT wildcards and separators out of topics.
WIRE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")

# Which of a device's ids goes on the wire: Baton's own profile has always used the catalog
# id; the others use the id the device itself knows (`hardware_id`, else the catalog id).
TopicId = Literal["device_id", "wire_id"]
MalformedReason = Literal[
    "malformed-topic",
    "malformed-answer",
    "malformed-request",
    "malformed-presence",
    "malformed-state",
]
WireSettings = Mapping[str, Any]


class MalformedWireError(ValueError):
    """A message the profile cannot read. `reason` is the metric label."""

    def __init__(self, reason: MalformedReason, detail: str) -> None:
        super().__init__(detail)
        self.reason: MalformedReason = reason


class ProfileSettingsError(ValueError):
    """A device type's wire settings do not fit its profile (a catalog error)."""


@dataclass(frozen=True)
class WireMessage:
    """One MQTT message (QoS 1)."""

    topic: str
    payload: bytes


@dataclass(frozen=True)
class OutgoingCommand:
    """Everything the bridge knows about a dispatched command, for the codec to pick from."""

    wire_id: str
    execution_id: UUID
    name: str  # the manifest name
    params: dict[str, Any]
    deadline: datetime
    ttl: int  # whole seconds left before the deadline (at least 1)
    now: datetime
    command_wire: WireSettings = field(default_factory=dict)
    type_wire: WireSettings = field(default_factory=dict)


@dataclass(frozen=True)
class DecodedAnswer:
    """A device answer as Baton reads it, whatever the profile."""

    wire_id: str
    execution_id: UUID | None  # None: the wire carries none (raw-mapped)
    status: AnswerStatusWord
    payload: dict[str, Any]
    answer_id: str | None = None


@dataclass(frozen=True)
class DecodedPresence:
    """A device's status message: online or offline."""

    wire_id: str
    online: bool
    connection: str | None  # None: the device sent none (bare words, or JSON without it)


@dataclass(frozen=True)
class DecodedState:
    """A device's reported state (a JSON object)."""

    wire_id: str
    state: dict[str, Any]


@dataclass(frozen=True)
class DeviceRequest:
    """A request as a device reads it (the simulator's side)."""

    execution_key: str | None  # the execution id as sent; None where the wire has none
    name: str
    params: dict[str, Any]
    deadline: datetime | None  # None where the wire carries none


@dataclass(frozen=True)
class DeviceCancel:
    execution_key: str
    reason: str


class Codec(Protocol):
    """One wire profile. Baton side: encode_request, encode_cancel, answer_filters,
    decode_answer, status_filters, decode_status, state_filters, decode_state. Device side:
    device_filters, device_topics, decode_request, encode_answer, encode_status,
    encode_state."""

    name: str
    topic_id: TopicId
    carries_execution_id: bool

    def check_settings(
        self, type_wire: WireSettings, commands_wire: Mapping[str, WireSettings]
    ) -> None:
        """Raise ProfileSettingsError when a type's settings cannot work."""

    def encode_request(self, command: OutgoingCommand) -> WireMessage: ...

    def encode_cancel(
        self, wire_id: str, execution_id: UUID, reason: str, type_wire: WireSettings
    ) -> WireMessage | None:
        """None: the profile has no way to tell a device to stop."""

    def answer_filters(self, type_wire: WireSettings) -> list[str]: ...

    def decode_answer(
        self, topic: str, payload: bytes, type_wire: WireSettings
    ) -> DecodedAnswer | None:
        """None: not an answer topic of this profile (with these settings). Raises
        MalformedWireError for one of its topics that cannot be read."""

    def status_filters(self, type_wire: WireSettings) -> list[str]:
        """Where devices say they are online or offline (none: the profile has no presence,
        its devices count as always online)."""

    def decode_status(
        self, topic: str, payload: bytes, type_wire: WireSettings
    ) -> DecodedPresence | None:
        """None: not a status topic of this profile. Raises MalformedWireError."""

    def state_filters(self, type_wire: WireSettings) -> list[str]: ...

    def decode_state(
        self, topic: str, payload: bytes, type_wire: WireSettings
    ) -> DecodedState | None:
        """None: not a state topic of this profile. Raises MalformedWireError."""

    def device_filters(self, wire_id: str, type_wire: WireSettings) -> list[str]: ...

    def device_topics(self, wire_id: str, type_wire: WireSettings) -> list[str]:
        """Every topic (or filter) the device `wire_id` publishes on: its answers, status and
        state. With device_filters, what the broker lets its account do."""

    def decode_request(
        self,
        topic: str,
        payload: bytes,
        wire_id: str,
        type_wire: WireSettings,
        commands_wire: Mapping[str, WireSettings],
    ) -> DeviceRequest | DeviceCancel: ...

    def encode_answer(
        self,
        wire_id: str,
        execution_key: str | None,
        status: AnswerStatusWord,
        payload: dict[str, Any],
        answer_id: str | None,
        type_wire: WireSettings,
    ) -> WireMessage | None:
        """None: the profile has no word for `status` (the device stays quiet)."""

    def encode_status(
        self, wire_id: str, online: bool, connection: str | None, type_wire: WireSettings
    ) -> WireMessage | None:
        """The retained status message (and, with online=False, the last will); None: the
        profile has no status topic."""

    def encode_state(
        self, wire_id: str, state: dict[str, Any], type_wire: WireSettings
    ) -> WireMessage | None:
        """None: the profile has no state topic."""


def first_error(exc: Exception) -> str:
    """A short description of a pydantic ValidationError (or anything else)."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        found = errors()
        if found:
            where = ".".join(str(p) for p in found[0]["loc"]) or "(body)"
            return f"{where}: {found[0]['msg']}"
    return str(exc)


def parse_uuid(text: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise MalformedWireError("malformed-topic", f"not an execution id: {text!r}") from None


def check_wire_id(wire_id: str) -> str:
    if not WIRE_ID.match(wire_id):
        raise MalformedWireError("malformed-topic", f"not a device id: {wire_id!r}")
    return wire_id
