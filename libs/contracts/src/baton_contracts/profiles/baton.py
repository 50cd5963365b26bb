"""Wire profile `baton`: Baton's own JSON contract (docs/mqtt-contract.md).

The topics and bodies are those of baton_contracts.mqtt, unchanged; this module only puts
them behind the codec interface. The catalog id of the device goes on the topic.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from uuid import UUID

from baton_contracts.mqtt import (
    RESPONSE_FILTER,
    STATE_TEMPLATE,
    STATUS_TEMPLATE,
    TOPIC_ROOT,
    AnswerStatusWord,
    CancelRequest,
    CommandRequest,
    DeviceAnswer,
    cancel_topic,
    device_filters,
    parse_execution_topic,
    request_topic,
    response_topic,
)
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


class BatonCodec(PresenceTopics):
    name = "baton"
    # Whether answers name their execution; else the bridge attributes them itself.
    carries_execution_id = True
    topic_id: TopicId = "device_id"
    status_topic = DeviceTopic(STATUS_TEMPLATE)
    state_topic = DeviceTopic(STATE_TEMPLATE)

    def check_settings(
        self, type_wire: WireSettings, commands_wire: Mapping[str, WireSettings]
    ) -> None:
        return None  # no settings

    # --- Baton's side -------------------------------------------------------------------------

    def encode_request(self, command: OutgoingCommand) -> WireMessage:
        request = CommandRequest(
            execution_id=command.execution_id,
            name=command.name,
            params=command.params,
            deadline=command.deadline,
        )
        return WireMessage(
            request_topic(command.wire_id, command.execution_id),
            request.model_dump_json().encode(),
        )

    def encode_cancel(
        self, wire_id: str, execution_id: UUID, reason: str, type_wire: WireSettings
    ) -> WireMessage | None:
        cancel = CancelRequest(execution_id=execution_id, reason=reason)
        return WireMessage(cancel_topic(wire_id, execution_id), cancel.model_dump_json().encode())

    def answer_filters(self, type_wire: WireSettings) -> list[str]:
        return [RESPONSE_FILTER]

    def decode_answer(
        self, topic: str, payload: bytes, type_wire: WireSettings
    ) -> DecodedAnswer | None:
        found = decode_response(topic, payload, TOPIC_ROOT, parse_execution_topic, DeviceAnswer)
        if found is None:
            return None
        wire_id, execution_id, answer = found
        return DecodedAnswer(
            wire_id, execution_id, answer.status, dict(answer.payload), answer.answer_id
        )

    # --- the device's side --------------------------------------------------------------------

    def device_filters(self, wire_id: str, type_wire: WireSettings) -> list[str]:
        return device_filters(wire_id)

    def device_topics(self, wire_id: str, type_wire: WireSettings) -> list[str]:
        return [f"{TOPIC_ROOT}/{wire_id}/executions/+/response", *self.presence_topics(wire_id)]

    def decode_request(
        self,
        topic: str,
        payload: bytes,
        wire_id: str,
        type_wire: WireSettings,
        commands_wire: Mapping[str, WireSettings],
    ) -> DeviceRequest | DeviceCancel:
        parsed = parse_execution_topic(topic)
        if parsed is None or parsed[0] != wire_id or parsed[2] not in ("request", "cancel"):
            raise MalformedWireError("malformed-topic", f"not a topic of {wire_id}: {topic!r}")
        _, execution, leaf = parsed
        if leaf == "cancel":
            cancel = load_model(payload, CancelRequest, "malformed-request")
            if str(cancel.execution_id) != execution:
                raise MalformedWireError("malformed-request", "execution id differs from topic")
            return DeviceCancel(execution, cancel.reason)
        request = load_model(payload, CommandRequest, "malformed-request")
        if str(request.execution_id) != execution:
            raise MalformedWireError("malformed-request", "execution id differs from topic")
        return DeviceRequest(execution, request.name, dict(request.params), request.deadline)

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
        answer = DeviceAnswer(status=status, payload=payload, answer_id=answer_id)
        return WireMessage(
            response_topic(wire_id, execution_key), answer.model_dump_json().encode()
        )
