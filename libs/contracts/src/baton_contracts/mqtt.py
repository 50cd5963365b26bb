"""Baton's own MQTT wire profile (docs/mqtt-contract.md)."""

from __future__ import annotations

import socket
import ssl
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

TOPIC_ROOT = "baton/v1/devices"
RESPONSE_FILTER = f"{TOPIC_ROOT}/+/executions/+/response"
# Per device, `{wire_id}` = its id: online/offline (retained, also its last will), its state.
STATUS_TEMPLATE = f"{TOPIC_ROOT}/{{wire_id}}/status"
STATE_TEMPLATE = f"{TOPIC_ROOT}/{{wire_id}}/state"
# Every Baton MQTT client (bridge, simulator) turns Nagle's algorithm off: with it, each
# small QoS 1 publish waited ~40 ms for the delayed ACK of the previous one (measured by
# `make bench`: a bare QoS 1 round trip took 44 ms with it, well under 1 ms without).
SOCKET_OPTIONS = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)


def tls_context(tls: bool, ca_file: Path | None) -> ssl.SSLContext | None:
    """How a Baton MQTT client (bridge, simulator) speaks TLS (mqtts): not at all, or checking
    the broker's certificate and host name against `ca_file` (None: the system's CAs)."""
    if not tls:
        return None
    return ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)


AnswerStatusWord = Literal["STARTED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED"]
# The topic level a device-bridge's probes carry where its subscription has a wildcard: no
# device goes by it, and the bridge takes every message with such a level for a probe.
PROBE_LEVEL = "_baton_probe_"


def execution_topic(device_id: str, execution_id: UUID | str, leaf: str) -> str:
    return f"{TOPIC_ROOT}/{device_id}/executions/{execution_id}/{leaf}"


def request_topic(device_id: str, execution_id: UUID | str) -> str:
    return execution_topic(device_id, execution_id, "request")


def response_topic(device_id: str, execution_id: UUID | str) -> str:
    return execution_topic(device_id, execution_id, "response")


def cancel_topic(device_id: str, execution_id: UUID | str) -> str:
    return execution_topic(device_id, execution_id, "cancel")


def device_filters(device_id: str) -> list[str]:
    """What a device subscribes to: its requests and cancellations."""
    return [
        f"{TOPIC_ROOT}/{device_id}/executions/+/request",
        f"{TOPIC_ROOT}/{device_id}/executions/+/cancel",
    ]


def parse_execution_topic(topic: str) -> tuple[str, str, str] | None:
    """`baton/v1/devices/{device}/executions/{execution}/{leaf}` -> (device, execution, leaf)."""
    parts = topic.split("/")
    if len(parts) != 7 or "/".join(parts[:3]) != TOPIC_ROOT or parts[4] != "executions":
        return None
    return parts[3], parts[5], parts[6]


def probe_topic(topic_filter: str) -> str | None:
    """The topic a bridge probes its subscription `topic_filter` on: the filter with each
    wildcard level replaced by PROBE_LEVEL (None for a filter without one: any topic it
    matches is a device's own)."""
    levels = topic_filter.split("/")
    if not any(level in ("+", "#") for level in levels):
        return None
    return "/".join(PROBE_LEVEL if level in ("+", "#") else level for level in levels)


def is_probe_topic(topic: str) -> bool:
    return PROBE_LEVEL in topic.split("/")


class MqttModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CommandRequest(MqttModel):
    """Baton -> device, on .../request (QoS 1)."""

    execution_id: UUID
    name: str
    params: dict[str, Any]
    deadline: datetime


class CancelRequest(MqttModel):
    """Baton -> device, on .../cancel (QoS 1)."""

    execution_id: UUID
    reason: str


class DeviceAnswer(MqttModel):
    """Device -> Baton, on .../response (QoS 1)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    status: AnswerStatusWord
    payload: dict[str, Any] = Field(default_factory=dict)
    # Unique per answer of one execution. MQTT QoS 1 may deliver an answer twice; with an
    # id the repeat is recorded once. Without one the bridge derives it from the bytes, so
    # two identical answers (say, the same progress twice) are then recorded once.
    answer_id: str | None = Field(default=None, min_length=1, max_length=128)


class BridgeProbe(MqttModel):
    """Device-bridge -> itself, through the broker (QoS 1), on probe_topic(filter) of each of
    its subscriptions: back in the bridge, it shows that whatever the broker queued for the
    bridge before it has been handled (docs/architecture.md, "Deadlines and answers")."""

    bridge: str  # BATON_INSTANCE of the bridge that sent it; others ignore it
    # Drawn by each bridge process. A process killed with a probe unhandled leaves it in the
    # session, ahead of what the broker queued after it; the next process of the same
    # instance counts its rounds from 1 again and must not take that probe for its own.
    process: str
    round: int
