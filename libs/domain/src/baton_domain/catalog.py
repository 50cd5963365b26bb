"""The device catalog: device types declare commands (params schema, default TTL, aliases,
delivery policy, wire settings); devices have a type, a hardware id and labels.

Loaded from YAML. Requests are checked here, so the same rules hold for HTTP and NATS.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from baton_domain.errors import FieldError, InvalidCommand, UnknownDevice
from baton_domain.params_schema import ParamsSchema
from baton_domain.tenants import DEFAULT_TENANT

DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"
NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_.-]{0,127}$"
# Device-type names show up in URLs, logs and exports: plain words, like command names.
DEVICE_TYPE_PATTERN = r"^[A-Za-z][A-Za-z0-9_.-]{0,127}$"
DeviceTypeName = Annotated[str, StringConstraints(pattern=DEVICE_TYPE_PATTERN)]
# Validation context key of a change (HTTP, NATS, import): only a change has its device-type
# names checked, so a catalog stored before they were stays readable by every service.
CHANGE = "change"
MAX_TTL_SECONDS = 7 * 24 * 3600
DEFAULT_TTL_SECONDS = 30

# How the device-bridge speaks to a device type over MQTT (docs/wire-profiles.md).
WireProfile = Literal["baton", "emqx-fleets", "aws-iot-commands", "raw-mapped"]
# parallel: every command goes out at once; one-at-a-time: the next when the previous ended.
DeliveryPolicy = Literal["parallel", "one-at-a-time"]


class CatalogError(ValueError):
    """The catalog file itself is wrong; raised at load time, never at request time."""


class VerificationRule(BaseModel):
    """The device state the command should cause, e.g. `charging == true` within 60 s."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str = Field(min_length=1, description="a key of the device's reported state")
    equals: Any = Field(description="the value it must report")
    within: int = Field(
        default=60, ge=1, le=MAX_TTL_SECONDS, description="seconds from the request"
    )


class CommandSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    params: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object"},
        description="JSON Schema (2020-12) the command's params must satisfy",
    )
    ttl: int | None = Field(
        default=None, ge=1, le=MAX_TTL_SECONDS, description="default TTL, seconds"
    )
    description: str = ""
    aliases: list[str] = Field(
        default_factory=list, description="other names a request may use for this command"
    )
    cooldown: int = Field(
        default=0,
        ge=0,
        le=MAX_TTL_SECONDS,
        description="seconds after one execution of this command on a device before the next",
    )
    verification: VerificationRule | None = None
    delivery: DeliveryPolicy | None = Field(
        default=None, description="overrides the device type's delivery policy"
    )
    wire: dict[str, Any] = Field(
        default_factory=dict,
        description="settings of the device type's wire profile for this command "
        "(raw-mapped: `payload`, the exact bytes sent)",
    )

    @cached_property
    def params_schema(self) -> ParamsSchema:
        """The params' schema, compiled once per spec rather than once per request."""
        return ParamsSchema(self.params)

    @field_validator("params")
    @classmethod
    def _schema_is_valid(cls, schema: dict[str, Any]) -> dict[str, Any]:
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            raise ValueError(f"not a valid JSON Schema: {exc.message}") from exc
        return schema


class DeviceType(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    commands: dict[str, CommandSpec] = Field(default_factory=dict)
    description: str = ""
    ttl: int = Field(
        default=DEFAULT_TTL_SECONDS,
        ge=1,
        le=MAX_TTL_SECONDS,
        description="default TTL of its commands, seconds",
    )
    allow_undeclared: bool = Field(
        default=False,
        description="accept command names the type does not declare (params unchecked)",
    )
    delivery: DeliveryPolicy = "parallel"
    wire_profile: WireProfile = "baton"
    wire: dict[str, Any] = Field(
        default_factory=dict,
        description="settings of the wire profile (raw-mapped: `topic`, with {hardware_id})",
    )
    tenant: str = Field(default=DEFAULT_TENANT, description="whose it is (set by Baton)")

    def model_post_init(self, _context: Any) -> None:
        seen: dict[str, str] = {}
        for name, spec in self.commands.items():
            for alias in [name, *spec.aliases]:
                if alias in seen:
                    raise ValueError(f"command name {alias!r} is used by {seen[alias]!r} too")
                seen[alias] = name

    def command(self, name: str) -> tuple[str, CommandSpec] | None:
        """The declared command called `name` or aliased so: (manifest name, spec)."""
        if name in self.commands:
            return name, self.commands[name]
        for manifest_name, spec in self.commands.items():
            if name in spec.aliases:
                return manifest_name, spec
        return None


class Device(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=DEVICE_ID_PATTERN)
    type: str
    hardware_id: str | None = Field(
        default=None,
        pattern=DEVICE_ID_PATTERN,
        description="the id the device itself uses on the wire (defaults to `id`)",
    )
    labels: dict[str, str] = Field(default_factory=dict)
    tenant: str = Field(default=DEFAULT_TENANT, description="whose it is (set by Baton)")

    @property
    def wire_id(self) -> str:
        return self.hardware_id or self.id


class ResolvedCommand(BaseModel):
    """A request the catalog accepted: what the dispatcher records."""

    model_config = ConfigDict(frozen=True)

    device: Device
    name: str  # the manifest name: the declared name, whatever alias the request used
    requested_name: str  # as the request said it
    params: dict[str, Any]
    ttl: int
    cooldown: int = 0
    verification: VerificationRule | None = None
    delivery: DeliveryPolicy = "parallel"


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    device_types: dict[str, DeviceType] = Field(default_factory=dict)
    devices: list[Device] = Field(default_factory=list)

    @field_validator("device_types")
    @classmethod
    def _names_are_valid(
        cls, device_types: dict[str, DeviceType], info: ValidationInfo
    ) -> dict[str, DeviceType]:
        # Not a key pattern: a catalog stored before names were checked must stay readable,
        # or one old name would stop every service that loads it.
        if (info.context or {}).get(CHANGE):
            for name in device_types:
                if re.fullmatch(DEVICE_TYPE_PATTERN, name) is None:
                    raise ValueError(f"device type name {name!r} must match {DEVICE_TYPE_PATTERN}")
        return device_types

    def model_post_init(self, _context: Any) -> None:
        seen: set[str] = set()
        for device in self.devices:
            device_type = self.device_types.get(device.type)
            # A type of another tenant is one this device's tenant does not know.
            if device_type is None or device_type.tenant != device.tenant:
                raise CatalogError(f"device {device.id!r} has unknown type {device.type!r}")
            if device.id in seen:
                raise CatalogError(f"device {device.id!r} is declared twice")
            seen.add(device.id)

    @classmethod
    def from_yaml(cls, path: Path) -> Catalog:
        try:
            raw = yaml.safe_load(path.read_text()) or {}
            return cls.model_validate(raw)
        except (OSError, yaml.YAMLError, ValidationError) as exc:
            raise CatalogError(f"cannot load catalog {path}: {exc}") from exc

    def device(self, device_id: str, tenant: str | None = None) -> Device:
        """The device; UnknownDevice if there is none, or (with `tenant`) it is another's."""
        for device in self.devices:
            if device.id == device_id and tenant in (None, device.tenant):
                return device
        raise UnknownDevice(device_id)

    def of(self, tenant: str) -> Catalog:
        """The part of the catalog `tenant` sees: its own device types and devices."""
        return Catalog.model_construct(
            device_types={n: t for n, t in self.device_types.items() if t.tenant == tenant},
            devices=[d for d in self.devices if d.tenant == tenant],
        )

    def resolve(
        self,
        device_id: str,
        name: str,
        params: dict[str, Any],
        ttl: int | None,
        tenant: str | None = None,
    ) -> ResolvedCommand:
        """Check a request against the device's type; raise a domain error naming each field."""
        device = self.device(device_id, tenant)
        device_type = self.device_types[device.type]
        found = device_type.command(name)
        if found is None:
            if device_type.allow_undeclared:
                return ResolvedCommand(
                    device=device,
                    name=name,
                    requested_name=name,
                    params=params,
                    ttl=ttl or device_type.ttl,
                    delivery=device_type.delivery,
                )
            known = ", ".join(sorted(device_type.commands)) or "none"
            raise InvalidCommand(
                f"unknown command {name!r} for device type {device.type!r}",
                [FieldError("name", f"must be one of: {known}")],
            )
        manifest_name, spec = found
        errors = spec.params_schema.errors(params)
        if errors:
            raise InvalidCommand(f"invalid params for command {name!r}", errors)
        return ResolvedCommand(
            device=device,
            name=manifest_name,
            requested_name=name,
            params=params,
            ttl=ttl or spec.ttl or device_type.ttl,
            cooldown=spec.cooldown,
            verification=spec.verification,
            delivery=spec.delivery or device_type.delivery,
        )
