"""Presence and state on the wire, shared by the profiles (docs/wire-profiles.md).

A device says it is online or offline on its **status topic**: one retained message, which it
publishes on connect (`online`) and sets as its MQTT last will (`offline`), so the broker
announces an unclean disconnect for it. The body, in every profile:

    {"online": true, "connection": "1763822431123456"}

`connection` (optional, 1-128 characters) names the connection: the `online` message and the
last will of one connection carry the same one, a new connection a new one (the connect time
is enough). It makes each presence change a distinct message, so the bridge can give a QoS 1
repeat the same report id and two changes different ones. The bare words `online` and
`offline` are accepted too (a device without a connection id).

A device reports its **state** (what verification compares with) as a JSON object on its
state topic, where its profile has one (only `baton` so far).

Each profile has its topic templates as data: `{wire_id}` stands for the device's id on the
wire (one whole topic level). Codecs are pure, as everywhere in this package.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from baton_contracts.profiles.base import (
    DecodedPresence,
    DecodedState,
    MalformedWireError,
    WireMessage,
    WireSettings,
)
from baton_contracts.profiles.json_body import load_json, load_model

PLACEHOLDER = "{wire_id}"
MAX_STATUS_BYTES = 1024


class StatusBody(BaseModel):
    """Device -> Baton, on its status topic (retained, QoS 1)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    online: StrictBool
    connection: str | None = Field(default=None, min_length=1, max_length=128)


@dataclass(frozen=True)
class DeviceTopic:
    """A per-device topic such as `baton/v1/devices/{wire_id}/status`, as data."""

    template: str

    def __post_init__(self) -> None:
        levels = self.template.split("/")
        if levels.count(PLACEHOLDER) != 1 or self.template.count("{") != 1:
            raise ValueError(f"{self.template!r}: must hold {PLACEHOLDER} once, as a topic level")
        if any(c in self.template for c in "+#"):
            raise ValueError(f"{self.template!r}: must not hold MQTT wildcards")

    def topic(self, wire_id: str) -> str:
        return self.template.replace(PLACEHOLDER, wire_id)

    @property
    def filter(self) -> str:
        return self.topic("+")

    def wire_id(self, topic: str) -> str | None:
        """The wire id `topic` names, or None when it is not this topic (or not a valid id)."""
        before, after = self.template.split(PLACEHOLDER)
        pattern = f"^{re.escape(before)}([A-Za-z0-9][A-Za-z0-9_-]{{0,127}}){re.escape(after)}$"
        found = re.match(pattern, topic)
        return None if found is None else found.group(1)


def decode_status_body(wire_id: str, payload: bytes) -> DecodedPresence:
    if len(payload) > MAX_STATUS_BYTES:
        raise MalformedWireError("malformed-presence", f"{len(payload)} bytes: too long")
    word = payload.strip()
    if word in (b"online", b"offline"):
        return DecodedPresence(wire_id, word == b"online", None)
    body = load_model(payload, StatusBody, "malformed-presence")
    return DecodedPresence(wire_id, body.online, body.connection)


def encode_status_body(online: bool, connection: str | None) -> bytes:
    return (
        StatusBody(online=online, connection=connection).model_dump_json(exclude_none=True).encode()
    )


def decode_state_body(wire_id: str, payload: bytes) -> DecodedState:
    state = load_json(payload, "malformed-state")
    if not isinstance(state, dict):
        raise MalformedWireError("malformed-state", "not a JSON object")
    return DecodedState(wire_id, state)


def encode_state_body(state: dict[str, Any]) -> bytes:
    return json.dumps(state, separators=(",", ":"), sort_keys=True).encode()


class PresenceTopics:
    """The presence and state half of a codec, from its topic templates (None: not spoken).

    The profiles with fixed topics (baton, emqx-fleets, aws-iot-commands) inherit it and set
    `status_topic` / `state_topic` as data; raw-mapped builds its own from the type's wire
    settings."""

    status_topic: DeviceTopic | None = None
    state_topic: DeviceTopic | None = None

    def status_filters(self, type_wire: WireSettings) -> list[str]:
        return [] if self.status_topic is None else [self.status_topic.filter]

    def state_filters(self, type_wire: WireSettings) -> list[str]:
        return [] if self.state_topic is None else [self.state_topic.filter]

    def presence_topics(self, wire_id: str) -> list[str]:
        """The device's own status and state topics (where it publishes them)."""
        return [t.topic(wire_id) for t in (self.status_topic, self.state_topic) if t is not None]

    def decode_status(
        self, topic: str, payload: bytes, type_wire: WireSettings
    ) -> DecodedPresence | None:
        """None: not this profile's status topic. Raises MalformedWireError for a bad body."""
        wire_id = None if self.status_topic is None else self.status_topic.wire_id(topic)
        return None if wire_id is None else decode_status_body(wire_id, payload)

    def decode_state(
        self, topic: str, payload: bytes, type_wire: WireSettings
    ) -> DecodedState | None:
        wire_id = None if self.state_topic is None else self.state_topic.wire_id(topic)
        return None if wire_id is None else decode_state_body(wire_id, payload)

    def encode_status(
        self, wire_id: str, online: bool, connection: str | None, type_wire: WireSettings
    ) -> WireMessage | None:
        if self.status_topic is None:
            return None
        return WireMessage(self.status_topic.topic(wire_id), encode_status_body(online, connection))

    def encode_state(
        self, wire_id: str, state: dict[str, Any], type_wire: WireSettings
    ) -> WireMessage | None:
        if self.state_topic is None:
            return None
        return WireMessage(self.state_topic.topic(wire_id), encode_state_body(state))
