"""Who may do what on the MQTT broker (docs/security.md, "Device identity on MQTT").

Every client of the broker has an account: Baton's own (the device-bridge, the simulator, the
api's broker-admin account) and one per device. A device's account may publish and subscribe
only on its own topics in its wire profile, computed here from the profile's codec, so the
broker's rules and what the bridge and the simulator speak cannot disagree. Every account is
bound to one client id (but the simulator's, which connects once per device it plays), so no
other account can take a session such as the bridge's.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from baton_contracts.profiles import ProfileSettingsError, WireSettings, codec_for, wire_id_of

ADMIN_USERNAME = "baton-admin"
BRIDGE_USERNAME = "baton-device-bridge"
SIMULATOR_USERNAME = "baton-simulator"
# Every device account's username (and client id) starts so; Baton's own never do, so no
# device id can name (and so replace) one of them.
DEVICE_PREFIX = "device-"
# The broker-admin account's topics (Mosquitto dynamic security's control API).
CONTROL_TOPICS = ("$CONTROL/dynamic-security/#",)
# Everything a device of any profile may use: `#` does not match topics that start with `$`.
EVERY_DEVICE_TOPIC = ("#", "$emqx/#", "$aws/#")
_DEVICE_DOLLAR_ROOTS = frozenset(t.split("/", 1)[0] for t in EVERY_DEVICE_TOPIC if t[0] == "$")


@dataclass(frozen=True)
class AccountTopics:
    """What an account may publish on and subscribe to (MQTT topics and filters)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]

    def same_as(self, other: AccountTopics) -> bool:
        """The same rights, in whatever order a broker lists them."""
        return set(self.publish) == set(other.publish) and set(self.subscribe) == set(
            other.subscribe
        )


def bridge_client_id(instance: str) -> str:
    return f"{BRIDGE_USERNAME}-{instance}"


def secret_bridge_client_id(instance: str) -> str:
    """A bridge's client id nobody can guess: on a broker that cannot bind a client id to an
    account (nats-server), knowing it is what it takes to push the bridge off the broker."""
    return f"{bridge_client_id(instance)}-{secrets.token_hex(16)}"


def device_username(device_id: str) -> str:
    """A device's account; it connects with this as its client id too."""
    return f"{DEVICE_PREFIX}{device_id}"


def device_topics(
    profile: str, device_id: str, hardware_id: str | None, type_wire: WireSettings
) -> AccountTopics:
    """A device's own topics in its profile (under the id it goes by there): it publishes its
    answers, status and state, and subscribes to its requests (and cancels). Raises
    ProfileSettingsError for settings the profile cannot use."""
    codec = codec_for(profile)
    wire_id = wire_id_of(profile, device_id, hardware_id)
    topics = AccountTopics(
        publish=tuple(codec.device_topics(wire_id, type_wire)),
        subscribe=tuple(codec.device_filters(wire_id, type_wire)),
    )
    for topic in (*topics.publish, *topics.subscribe):
        # However a profile came by it: a device account's rights never reach a topic no
        # device may use (the broker's control API above all: whoever may publish there
        # may make any account).
        if topic.startswith("$") and topic.split("/", 1)[0] not in _DEVICE_DOLLAR_ROOTS:
            raise ProfileSettingsError(f"{topic!r} is the broker's own topic, not a device's")
    return topics


# Baton's own accounts. The bridge publishes requests and cancels (and its probes on the
# device topics it subscribes to); the simulator plays every device. Raw-mapped topics are
# whatever the catalog says, and the catalog changes at run time, so both get every topic
# but the control API's.
BRIDGE_TOPICS = AccountTopics(publish=EVERY_DEVICE_TOPIC, subscribe=EVERY_DEVICE_TOPIC)
SIMULATOR_TOPICS = BRIDGE_TOPICS
ADMIN_TOPICS = AccountTopics(publish=CONTROL_TOPICS, subscribe=CONTROL_TOPICS)
