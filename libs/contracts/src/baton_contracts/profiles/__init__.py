"""Wire profiles: how Baton speaks to a device type over MQTT (docs/wire-profiles.md).

`codec_for(profile)` gives the codec; the device-bridge and the simulator both use it.
"""

from __future__ import annotations

from collections.abc import Mapping

from baton_contracts.profiles.aws_iot_commands import AwsIotCommandsCodec
from baton_contracts.profiles.base import (
    Codec,
    DecodedAnswer,
    DecodedPresence,
    DecodedState,
    DeviceCancel,
    DeviceRequest,
    MalformedWireError,
    OutgoingCommand,
    ProfileSettingsError,
    WireMessage,
    WireSettings,
)
from baton_contracts.profiles.baton import BatonCodec
from baton_contracts.profiles.emqx_fleets import EmqxFleetsCodec
from baton_contracts.profiles.raw_mapped import RawMappedCodec

__all__ = [
    "CODECS",
    "Codec",
    "DecodedAnswer",
    "DecodedPresence",
    "DecodedState",
    "DeviceCancel",
    "DeviceRequest",
    "MalformedWireError",
    "OutgoingCommand",
    "ProfileSettingsError",
    "WireMessage",
    "WireSettings",
    "check_wire",
    "codec_for",
    "wire_id_of",
]

CODECS: Mapping[str, Codec] = {
    codec.name: codec
    for codec in (BatonCodec(), EmqxFleetsCodec(), AwsIotCommandsCodec(), RawMappedCodec())
}


def codec_for(profile: str) -> Codec:
    try:
        return CODECS[profile]
    except KeyError:
        raise ProfileSettingsError(f"unknown wire profile {profile!r}") from None


def wire_id_of(profile: str, device_id: str, hardware_id: str | None) -> str:
    """The id a device goes by on the wire in `profile`."""
    if codec_for(profile).topic_id == "device_id":
        return device_id
    return hardware_id or device_id


def check_wire(
    profile: str, type_wire: WireSettings, commands_wire: Mapping[str, WireSettings]
) -> None:
    """Raise ProfileSettingsError when `profile` cannot use a type's wire settings (its own,
    or its commands'): the catalog refuses such a type, the device-bridge wires none."""
    codec_for(profile).check_settings(type_wire, commands_wire)
