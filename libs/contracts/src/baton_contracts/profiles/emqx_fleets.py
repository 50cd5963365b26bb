"""Wire profile `emqx-fleets`: the device side of EMQX Fleets' commands (seed 001).

Request on `$emqx/commands/things/{thingName}/executions/{executionId}/request`, answer on
`.../response`. thingName is the device's wire id (its `hardware_id`, else its catalog id).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from baton_contracts.mqtt import AnswerStatusWord
from baton_contracts.profiles.base import (
    DecodedAnswer,
    DeviceCancel,
    DeviceRequest,
    MalformedWireError,
    OutgoingCommand,
    TopicId,
    WireMessage,
    WireSettings,
)
from baton_contracts.profiles.json_body import decode_response, load_model
from baton_contracts.profiles.presence import DeviceTopic, PresenceTopics

ROOT = "$emqx/commands/things"


class FleetsRequest(BaseModel):
    """Baton -> device, on .../request."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    commandId: str  # noqa: N815 - the wire's own spelling
    action: str
    params: dict[str, Any] = Field(default_factory=dict)
    timestamp: int  # unix seconds, when the bridge published it
    ttl: int  # seconds left before Baton gives up


class FleetsResponse(BaseModel):
    """Device -> Baton, on .../response. `result` becomes the report's payload."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    status: AnswerStatusWord
    result: dict[str, Any] = Field(default_factory=dict)


def topic(thing: str, execution: UUID | str, leaf: str) -> str:
    return f"{ROOT}/{thing}/executions/{execution}/{leaf}"


def _parse(topic_: str) -> tuple[str, str, str] | None:
    parts = topic_.split("/")
    if len(parts) != 7 or "/".join(parts[:3]) != ROOT or parts[4] != "executions":
        return None
    return parts[3], parts[5], parts[6]


class EmqxFleetsCodec(PresenceTopics):
    name = "emqx-fleets"
    # Whether answers name their execution; else the bridge attributes them itself.
    carries_execution_id = True
    topic_id: TopicId = "wire_id"
    # Baton's convention on a plain broker; EMQX itself announces connections as events
    # (`$SYS/brokers/+/clients/+/connected`), which the bridge does not read yet.
    status_topic = DeviceTopic(f"{ROOT}/{{wire_id}}/status")

    def check_settings(
        self, type_wire: WireSettings, commands_wire: Mapping[str, WireSettings]
    ) -> None:
        return None  # no settings

    def encode_request(self, command: OutgoingCommand) -> WireMessage:
        body = FleetsRequest(
            commandId=str(command.execution_id),
            action=command.name,
            params=command.params,
            timestamp=math.floor(command.now.timestamp()),
            ttl=command.ttl,
        )
        return WireMessage(
            topic(command.wire_id, command.execution_id, "request"),
            body.model_dump_json().encode(),
        )

    def encode_cancel(
        self, wire_id: str, execution_id: UUID, reason: str, type_wire: WireSettings
    ) -> WireMessage | None:
        return None  # Fleets defines no cancel message for a device

    def answer_filters(self, type_wire: WireSettings) -> list[str]:
        return [f"{ROOT}/+/executions/+/response"]

    def decode_answer(
        self, topic: str, payload: bytes, type_wire: WireSettings
    ) -> DecodedAnswer | None:
        found = decode_response(topic, payload, ROOT, _parse, FleetsResponse)
        if found is None:
            return None
        thing, execution_id, answer = found
        return DecodedAnswer(thing, execution_id, answer.status, dict(answer.result))

    def device_filters(self, wire_id: str, type_wire: WireSettings) -> list[str]:
        return [f"{ROOT}/{wire_id}/executions/+/request"]

    def device_topics(self, wire_id: str, type_wire: WireSettings) -> list[str]:
        return [f"{ROOT}/{wire_id}/executions/+/response", *self.presence_topics(wire_id)]

    def decode_request(
        self,
        topic: str,
        payload: bytes,
        wire_id: str,
        type_wire: WireSettings,
        commands_wire: Mapping[str, WireSettings],
    ) -> DeviceRequest | DeviceCancel:
        parsed = _parse(topic)
        if parsed is None or parsed[0] != wire_id or parsed[2] != "request":
            raise MalformedWireError("malformed-topic", f"not a topic of {wire_id}: {topic!r}")
        execution = parsed[1]
        body = load_model(payload, FleetsRequest, "malformed-request")
        if body.commandId != execution:
            raise MalformedWireError("malformed-request", "commandId differs from the topic")
        # Whole seconds both: allow the one lost in rounding `timestamp` down.
        deadline = datetime.fromtimestamp(body.timestamp + body.ttl + 1, UTC)
        return DeviceRequest(execution, body.action, dict(body.params), deadline)

    def encode_answer(
        self,
        wire_id: str,
        execution_key: str | None,
        status: AnswerStatusWord,
        payload: dict[str, Any],
        answer_id: str | None,
        type_wire: WireSettings,
    ) -> WireMessage | None:
        if execution_key is None:
            return None
        body = FleetsResponse(status=status, result=payload)
        return WireMessage(
            topic(wire_id, execution_key, "response"), body.model_dump_json().encode()
        )
