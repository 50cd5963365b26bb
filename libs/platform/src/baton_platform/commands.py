"""Wire commands -> application calls -> wire replies: the one translation of the write side.

The dispatcher runs these on its writer thread; the api's in-memory gateway (tests) calls
them directly, so both answer exactly alike. Synchronous, like the eventsourcing library.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from baton_contracts.accounts import AccountTopics, device_topics
from baton_contracts.nats import (
    CancelCommand,
    CatalogChange,
    CatalogQuery,
    CatalogReply,
    DeleteCommand,
    ExecutionReply,
    PurgeCommand,
    PurgeReply,
    RetryCommand,
    SubmitCommand,
)
from baton_contracts.profiles import ProfileSettingsError, check_wire
from baton_domain.application import Executions, Outcome, RequestCommand
from baton_domain.catalog import Device, DeviceType
from baton_domain.catalog_document import CatalogDocument
from baton_domain.errors import DomainError, FieldError, InvalidCatalog
from baton_platform.mapping import execution_state
from baton_platform.problems import problem_for


class CommandHandlers:
    def __init__(self, executions: Executions) -> None:
        self.executions = executions

    def submit(self, command: SubmitCommand) -> ExecutionReply:
        request = RequestCommand(
            device_id=command.device_id,
            name=command.name,
            params=command.params,
            ttl=command.ttl,
            idempotency_key=command.idempotency_key,
            principal=command.principal,
            source=command.source,
            tenant=command.tenant,
            ephemeral=command.ephemeral,
            ignore_cooldown=command.ignore_cooldown,
            execution_id=command.execution_id,
        )
        return self._reply(lambda: self.executions.request(request))

    def cancel(self, command: CancelCommand) -> ExecutionReply:
        return self._reply(
            lambda: self.executions.cancel(
                command.execution_id, command.reason, command.principal, command.tenant
            )
        )

    def retry(self, command: RetryCommand) -> ExecutionReply:
        return self._reply(
            lambda: self.executions.retry(
                command.execution_id,
                command.principal,
                command.source,
                command.tenant,
                command.retry_id,
                command.idempotency_key,
            )
        )

    def delete(self, command: DeleteCommand) -> ExecutionReply:
        return self._reply(
            lambda: self.executions.delete(
                command.execution_id, command.reason, command.principal, command.tenant
            )
        )

    def purge(self, command: PurgeCommand) -> PurgeReply:
        try:
            deleted, position = self.executions.purge(
                command.execution_ids, command.reason, command.principal, command.tenant
            )
        except DomainError as exc:
            return PurgeReply(problem=problem_for(exc))
        return PurgeReply(deleted=deleted, position=position)

    def change_catalog(self, change: CatalogChange) -> CatalogReply:
        try:
            _document, position = self.executions.change_catalog(catalog_edit(change))
        except DomainError as exc:
            return CatalogReply(problem=problem_for(exc))
        # The caller sees its own tenant's part only, after the change as before it.
        document = self.executions.catalog_document(change.tenant)
        return CatalogReply(document=document, position=position)

    def get_catalog(self, query: CatalogQuery) -> CatalogReply:
        return CatalogReply(document=self.executions.catalog_document(query.tenant))

    @staticmethod
    def _reply(call: Callable[[], Outcome]) -> ExecutionReply:
        try:
            outcome = call()
        except DomainError as exc:
            return ExecutionReply(problem=problem_for(exc))
        return ExecutionReply(
            execution=execution_state(outcome.execution),
            position=outcome.position,
            created=outcome.created,
        )


def catalog_edit(change: CatalogChange) -> Callable[[CatalogDocument], None]:
    """The CatalogDocument method a change calls; InvalidCatalog if a field it needs is
    missing."""

    def need(field: str, value: Any) -> Any:
        if value is None:
            raise InvalidCatalog(
                f"{change.op} needs {field}", [FieldError(field, "required for " + change.op)]
            )
        return value

    tenant, by = change.tenant, change.principal
    if change.op == "import":
        document = need("document", change.document)
        return lambda catalog: catalog.import_document(document, tenant, by, wire=WIRE)
    if change.op == "create-device-type":
        name, definition = need("name", change.name), need("definition", change.definition)
        return lambda catalog: catalog.create_device_type(name, definition, tenant, by, wire=WIRE)
    if change.op == "put-device-type":
        name, definition = need("name", change.name), need("definition", change.definition)
        return lambda catalog: catalog.put_device_type(name, definition, tenant, by, wire=WIRE)
    if change.op == "remove-device-type":
        name = need("name", change.name)
        return lambda catalog: catalog.remove_device_type(name, tenant, by)
    if change.op == "create-device":
        device = need("device", change.device)
        return lambda catalog: catalog.create_device(device, tenant, by, wire=WIRE)
    if change.op == "put-device":
        device = need("device", change.device)
        return lambda catalog: catalog.put_device(device, tenant, by, wire=WIRE)
    device_id = need("device_id", change.device_id)
    return lambda catalog: catalog.remove_device(device_id, tenant, by)


class ProfileWire:
    """The wire profiles' rules, as the catalog checks a change against them
    (baton_domain.topics.WireRules): one derivation each, the profiles' own code."""

    def check(self, device_type: DeviceType) -> None:
        commands = {name: spec.wire for name, spec in device_type.commands.items()}
        try:
            check_wire(device_type.wire_profile, device_type.wire, commands)
        except ProfileSettingsError as exc:
            raise ValueError(str(exc)) from exc

    def account(self, device: Device, device_type: DeviceType) -> AccountTopics:
        """What its MQTT account may publish and subscribe to, where the bridge sends its
        requests and cancels and reads its answers, status and state
        (baton_contracts.accounts). Raises ProfileSettingsError for wire settings its
        profile cannot use (stored before the catalog checked them)."""
        return device_topics(
            device_type.wire_profile, device.id, device.hardware_id, device_type.wire
        )

    def topics(self, device: Device, device_type: DeviceType) -> list[str]:
        """Its account's topics (`account`), publish and subscribe alike.

        None for wire settings its profile cannot use: the bridge wires no such type, the
        api issues its devices no account, and the change that makes them usable has its
        devices' topics checked then."""
        try:
            topics = self.account(device, device_type)
        except ProfileSettingsError:
            return []
        return [*topics.publish, *topics.subscribe]


WIRE = ProfileWire()
