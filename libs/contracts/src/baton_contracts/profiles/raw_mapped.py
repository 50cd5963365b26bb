"""Wire profile `raw-mapped` (iotee, seed 003): fixed topics, a payload table, no ids.

The request topic is the type's `wire.topic` with `{hardware_id}` filled in; the payload is
the command's `wire.payload`, sent as the exact text. Answers, where the type declares them,
are words on `wire.answer_topic`, mapped to Baton's statuses by the `wire.answers` table:

    wire:
      topic: "iotee/dev/{hardware_id}/rls"
      answer_topic: "iotee/dev/{hardware_id}/rls/ack"
      answers: {ack: STARTED, done: SUCCEEDED, err: FAILED}

Nothing on the wire names an execution: the bridge attributes an answer to the execution it
last published to that device (one command in flight per device). A device that gets a
payload several commands share runs the first one declared.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from baton_contracts.mqtt import PROBE_LEVEL, AnswerStatusWord
from baton_contracts.profiles.base import (
    DecodedAnswer,
    DecodedPresence,
    DecodedState,
    DeviceCancel,
    DeviceRequest,
    MalformedWireError,
    OutgoingCommand,
    ProfileSettingsError,
    TopicId,
    WireMessage,
    WireSettings,
    first_error,
)
from baton_contracts.profiles.presence import DeviceTopic, PresenceTopics

PLACEHOLDER = "{hardware_id}"
MAX_ANSWER_BYTES = 256


def _check_template(template: str) -> str:
    levels = template.split("/")
    if levels.count(PLACEHOLDER) != 1 or template.count("{") != 1:
        raise ValueError(f"must hold {PLACEHOLDER} once, as a whole topic level")
    if any(c in template for c in "+#"):
        raise ValueError("must not hold MQTT wildcards")
    # A topic starting with `$` is the broker's own: `$CONTROL/dynamic-security/v1` is
    # Mosquitto's account API, which a device given it as its answer topic could publish on
    # (and so make itself any account), `$SYS` its statistics, `$share` a shared
    # subscription. The bridge's probe level is its own too.
    if template.startswith("$"):
        raise ValueError("must not start with $ (topics the broker keeps for itself)")
    if PROBE_LEVEL in levels:
        raise ValueError(f"must not hold the level {PROBE_LEVEL} (the bridge's probes)")
    return template


class RawMappedType(BaseModel):
    """A device type's `wire` settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    topic: str
    answer_topic: str | None = None
    answers: dict[str, AnswerStatusWord] = Field(default_factory=dict)
    # Optional: where the device says it is online or offline (docs/wire-profiles.md).
    status_topic: str | None = None

    @field_validator("topic", "answer_topic", "status_topic")
    @classmethod
    def _templates(cls, value: str | None) -> str | None:
        return value if value is None else _check_template(value)


class RawMappedCommand(BaseModel):
    """A command's `wire` settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    payload: str = Field(min_length=1)


def type_settings(type_wire: WireSettings) -> RawMappedType:
    try:
        return RawMappedType.model_validate(dict(type_wire))
    except ValidationError as exc:
        raise ProfileSettingsError(f"raw-mapped wire settings: {first_error(exc)}") from None


def command_payload(name: str, command_wire: WireSettings) -> str:
    try:
        return RawMappedCommand.model_validate(dict(command_wire)).payload
    except ValidationError as exc:
        detail = first_error(exc)
        raise ProfileSettingsError(f"command {name!r}: wire.payload {detail}") from None


def fill(template: str, hardware_id: str) -> str:
    return template.replace(PLACEHOLDER, hardware_id)


def _pattern(template: str) -> re.Pattern[str]:
    before, after = template.split(PLACEHOLDER)
    return re.compile(f"^{re.escape(before)}([A-Za-z0-9][A-Za-z0-9_-]{{0,127}}){re.escape(after)}$")


def command_for(text: str, commands_wire: Mapping[str, WireSettings]) -> str | None:
    """The first declared command whose payload is `text`."""
    for name, wire in commands_wire.items():
        if wire.get("payload") == text:
            return name
    return None


def _presence(type_wire: WireSettings) -> PresenceTopics:
    status = type_settings(type_wire).status_topic
    topics = PresenceTopics()
    if status is not None:
        topics.status_topic = DeviceTopic(status.replace(PLACEHOLDER, "{wire_id}"))
    return topics


class RawMappedCodec:
    name = "raw-mapped"
    # Whether answers name their execution; else the bridge attributes them itself.
    carries_execution_id = False
    topic_id: TopicId = "wire_id"

    def check_settings(
        self, type_wire: WireSettings, commands_wire: Mapping[str, WireSettings]
    ) -> None:
        type_settings(type_wire)
        for name, wire in commands_wire.items():
            command_payload(name, wire)

    def encode_request(self, command: OutgoingCommand) -> WireMessage:
        settings = type_settings(command.type_wire)
        payload = command_payload(command.name, command.command_wire)
        return WireMessage(fill(settings.topic, command.wire_id), payload.encode())

    def encode_cancel(
        self, wire_id: str, execution_id: UUID, reason: str, type_wire: WireSettings
    ) -> WireMessage | None:
        return None  # a payload table has no word for "stop"

    def answer_filters(self, type_wire: WireSettings) -> list[str]:
        settings = type_settings(type_wire)
        return [] if settings.answer_topic is None else [fill(settings.answer_topic, "+")]

    def decode_answer(
        self, topic: str, payload: bytes, type_wire: WireSettings
    ) -> DecodedAnswer | None:
        settings = type_settings(type_wire)
        if settings.answer_topic is None:
            return None
        found = _pattern(settings.answer_topic).match(topic)
        if found is None:
            return None
        if len(payload) > MAX_ANSWER_BYTES:
            raise MalformedWireError("malformed-answer", f"{len(payload)} bytes: too long")
        try:
            text = payload.decode().strip()
        except UnicodeDecodeError:
            raise MalformedWireError("malformed-answer", "not UTF-8 text") from None
        status = settings.answers.get(text)
        if status is None:
            known = ", ".join(sorted(settings.answers)) or "none"
            raise MalformedWireError("malformed-answer", f"unknown answer {text!r} (knows {known})")
        return DecodedAnswer(found.group(1), None, status, {"answer": text})

    def status_filters(self, type_wire: WireSettings) -> list[str]:
        return _presence(type_wire).status_filters(type_wire)

    def decode_status(
        self, topic: str, payload: bytes, type_wire: WireSettings
    ) -> DecodedPresence | None:
        return _presence(type_wire).decode_status(topic, payload, type_wire)

    def state_filters(self, type_wire: WireSettings) -> list[str]:
        return []  # no state topic (yet)

    def decode_state(
        self, topic: str, payload: bytes, type_wire: WireSettings
    ) -> DecodedState | None:
        return None

    def device_filters(self, wire_id: str, type_wire: WireSettings) -> list[str]:
        return [fill(type_settings(type_wire).topic, wire_id)]

    def device_topics(self, wire_id: str, type_wire: WireSettings) -> list[str]:
        answers = type_settings(type_wire).answer_topic
        own = [] if answers is None else [fill(answers, wire_id)]
        return [*own, *_presence(type_wire).presence_topics(wire_id)]

    def decode_request(
        self,
        topic: str,
        payload: bytes,
        wire_id: str,
        type_wire: WireSettings,
        commands_wire: Mapping[str, WireSettings],
    ) -> DeviceRequest | DeviceCancel:
        if topic != fill(type_settings(type_wire).topic, wire_id):
            raise MalformedWireError("malformed-topic", f"not a topic of {wire_id}: {topic!r}")
        try:
            text = payload.decode()
        except UnicodeDecodeError:
            raise MalformedWireError("malformed-request", "not UTF-8 text") from None
        name = command_for(text, commands_wire)
        if name is None:
            raise MalformedWireError("malformed-request", f"no command has payload {text!r}")
        return DeviceRequest(None, name, {}, None)

    def encode_answer(
        self,
        wire_id: str,
        execution_key: str | None,
        status: AnswerStatusWord,
        payload: dict[str, Any],
        answer_id: str | None,
        type_wire: WireSettings,
    ) -> WireMessage | None:
        settings = type_settings(type_wire)
        if settings.answer_topic is None:
            return None
        word = next((w for w, s in settings.answers.items() if s == status), None)
        if word is None:
            return None  # no word for it: the device says nothing
        return WireMessage(fill(settings.answer_topic, wire_id), word.encode())

    def encode_status(
        self, wire_id: str, online: bool, connection: str | None, type_wire: WireSettings
    ) -> WireMessage | None:
        return _presence(type_wire).encode_status(wire_id, online, connection, type_wire)

    def encode_state(
        self, wire_id: str, state: dict[str, Any], type_wire: WireSettings
    ) -> WireMessage | None:
        return None
