"""Several bridges side by side: each replica is the whole bridge for its share of the devices.

Why by device, and not MQTT 5 shared subscriptions (`$share/<group>/<filter>`): Mosquitto
hands each message of a shared subscription to the next member in turn, so a device's
STARTED can reach one replica and its SUCCEEDED another. MQTT carries no sequence number,
and the two replicas read and store at their own pace: nobody downstream can tell which of
the two the broker took first, so no re-ordering can give back the device's order (the
record would say `AnswerRecorded` where it said `Acknowledged`). And a shared member's
persistent session keeps receiving its turn of every device's messages while it is down.
So the devices fall into slots (`device_id`'s hash modulo the number of replicas), and
each slot has a persistent session of its own, subscribed to the topics of its devices
only: every message of a device travels through one session, in the order the broker took
it, as with a single bridge; and what a dead replica's session holds is its slot's devices'
messages, which whoever runs the slot next drains (baton_device_bridge.slots,
docs/operations.md, "Bridge replicas").

The watermark's probe then travels a topic of the slot's own (`probe_filter`), through
the same session as its devices' messages: on a broker that keeps one queue per session
(Mosquitto, EMQX), everything queued before it is handled when it is back. nats-server's
MQTT listener keeps one queue per subscription instead (one probe per subscription would
be one per device), so replicas need MQTT 5; a single bridge works on 3.1.1 as before.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, SecretStr, TypeAdapter, ValidationError

from baton_contracts.accounts import bridge_client_id
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
    if replicas > 1 and settings.bridge_slot_accounts is not None:
        accounts = read_slot_accounts(settings.bridge_slot_accounts)
        if len(accounts) < replicas:
            raise ReplicasError(
                f"BATON_BRIDGE_SLOT_ACCOUNTS={settings.bridge_slot_accounts} has "
                f"{len(accounts)} account(s); BATON_BRIDGE_REPLICAS={replicas} needs one a slot"
            )
    return Share(replicas, index)


def slot_name(slot: int) -> str:
    """What a slot's session, watermark and probe topic are named after, whoever runs it."""
    return f"slot-{slot}"


class SlotAccount(BaseModel):
    """One slot's MQTT account (BATON_BRIDGE_SLOT_ACCOUNTS): bound to its client id."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    username: str
    password: SecretStr
    client_id: str


def read_slot_accounts(path: Path) -> list[SlotAccount]:
    """Raises ReplicasError naming the file when it cannot be read."""
    try:
        return TypeAdapter(list[SlotAccount]).validate_python(json.loads(path.read_text()))
    except (OSError, ValueError, ValidationError) as exc:
        raise ReplicasError(f"BATON_BRIDGE_SLOT_ACCOUNTS={path}: {exc}") from None


def slot_settings(settings: Settings, slot: int) -> Settings:
    """The settings a process runs slot `slot` with: a lone bridge's are its own, unchanged
    (its instance names its session, durable and watermark as they always have). With
    replicas, the slot's name and MQTT identity, the same in whichever replica runs it."""
    if settings.bridge_replicas == 1:
        return settings
    update: dict[str, object] = {
        "instance": slot_name(slot),
        "bridge_replica": slot,
        "mqtt_client_id": bridge_client_id(slot_name(slot)),
    }
    if settings.bridge_slot_accounts is not None:
        accounts = read_slot_accounts(settings.bridge_slot_accounts)
        if slot >= len(accounts):
            raise ReplicasError(
                f"BATON_BRIDGE_SLOT_ACCOUNTS={settings.bridge_slot_accounts} has "
                f"{len(accounts)} account(s); slot {slot} needs one"
            )
        account = accounts[slot]
        update |= {
            "mqtt_username": account.username,
            "mqtt_password": account.password,
            "mqtt_client_id": account.client_id,
        }
    return settings.model_copy(update=update)


def probe_filter(instance: str) -> str:
    """The subscription a replica's watermark probes travel: its own, no device's."""
    return f"baton/v1/bridges/{instance}/+"
