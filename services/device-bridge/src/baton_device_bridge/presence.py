"""Presence and state in: a status or state message -> a `presence` / `state` report.

As with answers, the device is the one the **topic** names (mapped back to Baton's device id
through the catalog), never the payload.

Report ids. JetStream drops a report whose id it stored within its duplicate window, so an
id must be the same for a repeat of one message (QoS 1, or the bridge reading it again after
a restart) and differ for two changes, even when their bytes are equal: offline, online,
offline again must be three reports, not two.

- presence with a `connection` (docs/mqtt-contract.md): a digest of topic and payload. Each
  connection's `online` and its last will differ from each other and from every other
  connection's, so the id is stable per message and distinct per change.
- presence without one (the bare words), and state: the digest plus the time the bridge
  received it. A QoS 1 repeat then becomes a second report; that is harmless, since the
  dispatcher ignores a presence equal to the current one and a state that settles nothing.
  (A retained status the broker hands over again when the bridge subscribes is such a
  repeat too.)
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from baton_contracts.nats import PresenceReport, StateReport
from baton_contracts.profiles import DecodedPresence
from baton_device_bridge.wiring import Wiring


def _digest(topic: str, raw: bytes) -> str:
    return hashlib.sha256(topic.encode() + b"\0" + raw).hexdigest()[:32]


def _received(at: datetime) -> str:
    return str(round(at.timestamp() * 1_000_000))


def presence_report_id(
    device_id: str, topic: str, raw: bytes, connection: str | None, received_at: datetime
) -> str:
    if connection is not None:
        return f"presence:{device_id}:{_digest(topic, raw)}"
    return f"presence:{device_id}:{_received(received_at)}:{_digest(topic, raw)}"


def state_report_id(device_id: str, topic: str, raw: bytes, received_at: datetime) -> str:
    return f"state:{device_id}:{_received(received_at)}:{_digest(topic, raw)}"


def decode_presence_or_state(
    topic: str, raw: bytes, received_at: datetime, wiring: Wiring
) -> PresenceReport | StateReport | None:
    """The report for a status or state message; None when `topic` is neither. Raises
    MalformedWireError (`malformed-presence`, `malformed-state`) and UnknownWireDeviceError."""
    found = wiring.decode_presence_or_state(topic, raw)
    if found is None:
        return None
    device_id, said = found
    if isinstance(said, DecodedPresence):
        return PresenceReport(
            report_id=presence_report_id(device_id, topic, raw, said.connection, received_at),
            device_id=device_id,
            online=said.online,
            received_at=received_at,
        )
    return StateReport(
        report_id=state_report_id(device_id, topic, raw, received_at),
        device_id=device_id,
        state=said.state,
        received_at=received_at,
    )
