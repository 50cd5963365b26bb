"""Wire profile `aws-iot-commands`: the device side of AWS IoT Commands' MQTT topics.

Request on `$aws/commands/things/{thingName}/executions/{executionId}/request/json`, status
updates on `.../response/json`. thingName is the device's wire id.

AWS leaves the request body to the command's author; Baton sends `{"name", "params"}` (the
execution id is in the topic; the deadline is the MQTT 5 message expiry). AWS has no
`STARTED`: a device says `IN_PROGRESS`. A device-reported `TIMED_OUT` becomes `FAILED`
(Baton's own timeout is the timeout-scheduler's to decide) with the reason in the payload.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal
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

ROOT = "$aws/commands/things"
AwsStatus = Literal["IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT"]
DEFAULT_REASON_CODE = "DEVICE_ERROR"


class AwsRequest(BaseModel):
    """Baton -> device, on .../request/json."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class StatusReason(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    reasonCode: str = Field(default=DEFAULT_REASON_CODE, max_length=64)  # noqa: N815
    reasonDescription: str = Field(default="", max_length=1024)  # noqa: N815


class AwsResponse(BaseModel):
    """Device -> Baton, on .../response/json."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    status: AwsStatus
    statusReason: StatusReason | None = None  # noqa: N815
    result: dict[str, Any] = Field(default_factory=dict)


def topic(thing: str, execution: UUID | str, leaf: str) -> str:
    return f"{ROOT}/{thing}/executions/{execution}/{leaf}/json"


def _parse(topic_: str) -> tuple[str, str, str] | None:
    parts = topic_.split("/")
    if (
        len(parts) != 8
        or "/".join(parts[:3]) != ROOT
        or parts[4] != "executions"
        or parts[7] != "json"
    ):
        return None
    return parts[3], parts[5], parts[6]


def to_baton(response: AwsResponse) -> tuple[AnswerStatusWord, dict[str, Any]]:
    """AWS's status and body -> Baton's status word and payload."""
    if response.status in ("IN_PROGRESS", "SUCCEEDED"):
        return response.status, dict(response.result)
    reason = response.statusReason or StatusReason()
    payload: dict[str, Any] = {"code": reason.reasonCode, "message": reason.reasonDescription}
    if response.result:
        payload["result"] = dict(response.result)
    if response.status == "TIMED_OUT":
        payload["device_status"] = "TIMED_OUT"
        return "FAILED", payload
    return response.status, payload


class AwsIotCommandsCodec(PresenceTopics):
    name = "aws-iot-commands"
    # Whether answers name their execution; else the bridge attributes them itself.
    carries_execution_id = True
    topic_id: TopicId = "wire_id"
    # Baton's convention on a plain broker; AWS IoT itself publishes lifecycle events
    # (`$aws/events/presence/connected/{clientId}`), which the bridge does not read yet.
    status_topic = DeviceTopic(f"{ROOT}/{{wire_id}}/status")

    def check_settings(
        self, type_wire: WireSettings, commands_wire: Mapping[str, WireSettings]
    ) -> None:
        return None  # no settings

    def encode_request(self, command: OutgoingCommand) -> WireMessage:
        body = AwsRequest(name=command.name, params=command.params)
        return WireMessage(
            topic(command.wire_id, command.execution_id, "request"),
            body.model_dump_json().encode(),
        )

    def encode_cancel(
        self, wire_id: str, execution_id: UUID, reason: str, type_wire: WireSettings
    ) -> WireMessage | None:
        return None  # AWS IoT Commands has no cancel topic for devices

    def answer_filters(self, type_wire: WireSettings) -> list[str]:
        return [f"{ROOT}/+/executions/+/response/json"]

    def decode_answer(
        self, topic: str, payload: bytes, type_wire: WireSettings
    ) -> DecodedAnswer | None:
        found = decode_response(topic, payload, ROOT, _parse, AwsResponse)
        if found is None:
            return None
        thing, execution_id, response = found
        status, body = to_baton(response)
        return DecodedAnswer(thing, execution_id, status, body)

    def device_filters(self, wire_id: str, type_wire: WireSettings) -> list[str]:
        return [f"{ROOT}/{wire_id}/executions/+/request/json"]

    def device_topics(self, wire_id: str, type_wire: WireSettings) -> list[str]:
        return [f"{ROOT}/{wire_id}/executions/+/response/json", *self.presence_topics(wire_id)]

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
        body = load_model(payload, AwsRequest, "malformed-request")
        return DeviceRequest(parsed[1], body.name, dict(body.params), None)

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
        if status in ("FAILED", "REJECTED"):
            reason = StatusReason(
                reasonCode=str(payload.get("code", DEFAULT_REASON_CODE)),
                reasonDescription=str(payload.get("message", "")),
            )
            response = AwsResponse(status=status, statusReason=reason)
        else:
            # AWS has no STARTED: a device that starts says IN_PROGRESS.
            aws_status: AwsStatus = "IN_PROGRESS" if status == "STARTED" else status
            response = AwsResponse(status=aws_status, result=payload)
        return WireMessage(
            topic(wire_id, execution_key, "response"),
            response.model_dump_json(exclude_none=True).encode(),
        )
