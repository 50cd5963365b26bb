"""The device catalog: device types declare commands (params schema, default TTL);
devices have a type.

Loaded from YAML. Requests are checked here, so the same rules hold for HTTP and NATS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from baton_domain.errors import FieldError, InvalidCommand, UnknownDevice

DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"
NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_.-]{0,127}$"
MAX_TTL_SECONDS = 7 * 24 * 3600


class CatalogError(ValueError):
    """The catalog file itself is wrong; raised at load time, never at request time."""


class CommandSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    params: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object"},
        description="JSON Schema (2020-12) the command's params must satisfy",
    )
    ttl: int = Field(default=30, ge=1, le=MAX_TTL_SECONDS, description="default TTL, seconds")
    description: str = ""

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


class Device(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=DEVICE_ID_PATTERN)
    type: str


class ResolvedCommand(BaseModel):
    """A request the catalog accepted: what the dispatcher records."""

    model_config = ConfigDict(frozen=True)

    device: Device
    name: str
    params: dict[str, Any]
    ttl: int


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    device_types: dict[str, DeviceType] = Field(default_factory=dict)
    devices: list[Device] = Field(default_factory=list)

    def model_post_init(self, _context: Any) -> None:
        seen: set[str] = set()
        for device in self.devices:
            if device.type not in self.device_types:
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

    def device(self, device_id: str) -> Device:
        for device in self.devices:
            if device.id == device_id:
                return device
        raise UnknownDevice(device_id)

    def resolve(
        self, device_id: str, name: str, params: dict[str, Any], ttl: int | None
    ) -> ResolvedCommand:
        """Check a request against the device's type; raise a domain error naming each field."""
        device = self.device(device_id)
        spec = self.device_types[device.type].commands.get(name)
        if spec is None:
            known = ", ".join(sorted(self.device_types[device.type].commands)) or "none"
            raise InvalidCommand(
                f"unknown command {name!r} for device type {device.type!r}",
                [FieldError("name", f"must be one of: {known}")],
            )
        errors = [
            FieldError(_pointer("params", list(err.absolute_path)), err.message)
            for err in sorted(
                Draft202012Validator(spec.params).iter_errors(params),
                key=lambda e: list(map(str, e.absolute_path)),
            )
        ]
        if errors:
            raise InvalidCommand(f"invalid params for command {name!r}", errors)
        return ResolvedCommand(device=device, name=name, params=params, ttl=ttl or spec.ttl)


def _pointer(root: str, path: list[Any]) -> str:
    return ".".join([root, *(str(p) for p in path)])
