"""Several bridges side by side: each replica is the whole bridge for its share of the devices.

Why by device, and not MQTT 5 shared subscriptions (`$share/<group>/<filter>`): Mosquitto
hands each message of a shared subscription to the next member in turn, so a device's
STARTED can reach one replica and its SUCCEEDED another. MQTT carries no sequence number,
and the two replicas read and store at their own pace: nobody downstream can tell which of
the two the broker took first, so no re-ordering can give back the device's order (the
record would say `AnswerRecorded` where it said `Acknowledged`). And a shared member's
persistent session keeps receiving its turn of every device's messages while it is down.
So each replica subscribes, on its own persistent session, to the topics of its own devices
only (`device_id`'s hash modulo the number of replicas): every message of a device travels
through one session, in the order the broker took it, as with a single bridge; and what a
dead replica's session holds is its own devices' messages, which it drains when it is back
(docs/operations.md, "Bridge replicas").

The watermark's probe then travels a topic of the replica's own (`probe_filter`), through
the same session as its devices' messages: on a broker that keeps one queue per session
(Mosquitto, EMQX), everything queued before it is handled when it is back. nats-server's
MQTT listener keeps one queue per subscription instead (one probe per subscription would
be one per device), so replicas need MQTT 5; a single bridge works on 3.1.1 as before.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from baton_contracts.mqtt import PROBE_LEVEL
from baton_platform.settings import Settings


class ReplicasError(ValueError):
    """Replica settings the bridge cannot work with: it refuses to start."""


@dataclass(frozen=True)
class Share:
    """This replica's share of the devices: `index` of `replicas`."""

    replicas: int = 1
    index: int = 0

    @property
    def alone(self) -> bool:
        return self.replicas == 1

    def owns(self, device_id: str) -> bool:
        if self.alone:
            return True
        digest = hashlib.sha256(device_id.encode()).digest()
        return int.from_bytes(digest[:8], "big") % self.replicas == self.index


def share_of(settings: Settings) -> Share:
    """The replica's share, or ReplicasError when the settings cannot work."""
    replicas, index = settings.bridge_replicas, settings.bridge_replica
    if index >= replicas:
        raise ReplicasError(
            f"BATON_BRIDGE_REPLICA={index} is not one of 0..{replicas - 1} "
            f"(BATON_BRIDGE_REPLICAS={replicas})"
        )
    if replicas > 1 and settings.mqtt_protocol != "5":
        raise ReplicasError(
            f"BATON_BRIDGE_REPLICAS={replicas} needs MQTT 5 (a broker with one queue per "
            "session, such as Mosquitto or EMQX); on MQTT 3.1.1 (nats-server's MQTT "
            "listener) run a single bridge"
        )
    if replicas > 1 and not _one_level(settings.instance):
        raise ReplicasError(
            f"BATON_INSTANCE={settings.instance!r} must be one MQTT topic level with replicas "
            "(no '/', '+', '#'): it names the replica's probe topic"
        )
    return Share(replicas, index)


def _one_level(name: str) -> bool:
    return bool(name) and not any(c in name for c in "/+#") and name != PROBE_LEVEL


def probe_filter(instance: str) -> str:
    """The subscription a replica's watermark probes travel: its own, no device's."""
    return f"baton/v1/bridges/{instance}/+"
