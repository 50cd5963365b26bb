"""The catalog seen from the wire: which codec, topic id and settings each device uses.

Built from the catalog at start and rebuilt in place on every catalog change. Outgoing, a
device id and type give a `Target`; incoming, a topic is tried against the answer side of
every (profile, settings) pair the catalog uses, and the wire id it names is mapped back to
Baton's device id.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from baton_contracts.profiles import (
    Codec,
    DecodedAnswer,
    DecodedPresence,
    DecodedState,
    MalformedWireError,
    ProfileSettingsError,
    WireSettings,
    check_wire,
    codec_for,
    wire_id_of,
)
from baton_device_bridge.replicas import Share
from baton_domain.catalog import Catalog, DeviceType

log = logging.getLogger(__name__)


class UnknownWireDeviceError(Exception):
    """A readable answer from a wire id no device of the catalog goes by."""


@dataclass(frozen=True)
class Target:
    """Where one device's messages go, and how they are written."""

    device_id: str
    wire_id: str
    codec: Codec
    device_type: DeviceType

    @property
    def type_wire(self) -> WireSettings:
        return self.device_type.wire

    def command_wire(self, name: str) -> WireSettings:
        found = self.device_type.command(name)
        return found[1].wire if found is not None else {}


@dataclass
class _Binding:
    """One (profile, type settings) pair and the devices that speak it, by wire id."""

    codec: Codec
    type_wire: Mapping[str, Any]
    devices: dict[str, str] = field(default_factory=dict)  # wire id -> device id


class Wiring:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._targets: dict[str, Target] = {}
        self._bindings: list[_Binding] = []
        self.load(catalog)

    def load(self, catalog: Catalog) -> None:
        """(Re)build from `catalog`, in place: every holder of this wiring sees the change.

        A device type whose wire settings its profile cannot use (stored before the catalog
        checked them) is left out, its devices with it, and said loudly: the rest is wired,
        so one tenant's type does not hold back every tenant's changes."""
        targets: dict[str, Target] = {}
        bindings: dict[tuple[str, str], _Binding] = {}
        unusable: set[str] = set()
        for type_name, device_type in catalog.device_types.items():
            commands = {name: spec.wire for name, spec in device_type.commands.items()}
            try:
                check_wire(device_type.wire_profile, device_type.wire, commands)
            except ProfileSettingsError as exc:
                unusable.add(type_name)
                log.error("device type %r not wired, nor its devices: %s", type_name, exc)
        for device in catalog.devices:
            if device.type in unusable:
                continue
            device_type = catalog.device_types[device.type]
            codec = codec_for(device_type.wire_profile)
            wire_id = wire_id_of(codec.name, device.id, device.hardware_id)
            targets[device.id] = Target(device.id, wire_id, codec, device_type)
            key = (codec.name, json.dumps(device_type.wire, sort_keys=True))
            binding = bindings.setdefault(key, _Binding(codec, device_type.wire))
            if wire_id in binding.devices:
                # Answers from it could not say which of the two spoke: the first keeps it.
                log.warning(
                    "device %s uses wire id %s of %s too",
                    device.id,
                    wire_id,
                    binding.devices[wire_id],
                )
                continue
            binding.devices[wire_id] = device.id
        self.catalog, self._targets, self._bindings = catalog, targets, list(bindings.values())

    def target(self, device_id: str) -> Target | None:
        return self._targets.get(device_id)

    @property
    def profiles(self) -> set[str]:
        return {binding.codec.name for binding in self._bindings}

    def answer_filters(self) -> list[str]:
        """Every topic filter Baton must subscribe to for the catalog's answers."""
        found: dict[str, None] = {}
        for binding in self._bindings:
            for topic_filter in binding.codec.answer_filters(binding.type_wire):
                found[topic_filter] = None
        return list(found)

    def device_filters(self, share: Share | None = None) -> list[str]:
        """Every filter the bridge subscribes to: answers, then presence and state. A replica
        (`share` of several) subscribes to the topics of its own devices only."""
        if share is not None and not share.alone:
            return self._own_filters(share)
        found: dict[str, None] = dict.fromkeys(self.answer_filters())
        for binding in self._bindings:
            for topic_filter in [
                *binding.codec.status_filters(binding.type_wire),
                *binding.codec.state_filters(binding.type_wire),
            ]:
                found[topic_filter] = None
        return list(found)

    def _own_filters(self, share: Share) -> list[str]:
        found: dict[str, None] = {}
        for binding in self._bindings:
            for wire_id, device_id in binding.devices.items():
                if share.owns(device_id):
                    found |= dict.fromkeys(binding.codec.device_topics(wire_id, binding.type_wire))
        return list(found)

    def decode_presence_or_state(
        self, topic: str, payload: bytes
    ) -> tuple[str, DecodedPresence | DecodedState] | None:
        """(Baton's device id, what it said) for a status or state topic of the catalog's
        profiles; None for any other topic. Raises MalformedWireError for a body its profile
        cannot read, UnknownWireDeviceError for a wire id nobody the catalog knows goes by."""
        problem: Exception | None = None
        for binding in self._bindings:
            codec, type_wire = binding.codec, binding.type_wire
            try:
                said: DecodedPresence | DecodedState | None = codec.decode_status(
                    topic, payload, type_wire
                ) or codec.decode_state(topic, payload, type_wire)
            except MalformedWireError as exc:
                problem = problem or exc
                continue
            if said is None:
                continue
            device_id = binding.devices.get(said.wire_id)
            if device_id is not None:
                return device_id, said
            problem = problem or UnknownWireDeviceError(
                f"no {codec.name} device goes by {said.wire_id!r}"
            )
        if problem is not None:
            raise problem
        return None

    def decode_answer(self, topic: str, payload: bytes) -> tuple[str, Codec, DecodedAnswer]:
        """(Baton's device id, its codec, the answer). Raises MalformedWireError for a topic
        no profile reads or a body its profile cannot read, UnknownWireDeviceError for a
        readable answer from nobody the catalog knows."""
        problem: Exception | None = None
        for binding in self._bindings:
            try:
                answer = binding.codec.decode_answer(topic, payload, binding.type_wire)
            except MalformedWireError as exc:
                problem = problem or exc
                continue
            if answer is None:
                continue
            device_id = binding.devices.get(answer.wire_id)
            if device_id is not None:
                return device_id, binding.codec, answer
            problem = problem or UnknownWireDeviceError(
                f"no {binding.codec.name} device goes by {answer.wire_id!r}"
            )
        if problem is None:
            problem = MalformedWireError("malformed-topic", f"not a response topic: {topic!r}")
        raise problem
