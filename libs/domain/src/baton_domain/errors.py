"""Domain errors. Each boundary translates them once (HTTP problems, NATS error replies)."""

from __future__ import annotations

from dataclasses import dataclass, field


class DomainError(Exception):
    """Base class: something the caller asked for is not allowed; nothing was changed."""

    code = "domain-error"


class IllegalTransition(DomainError):
    code = "illegal-transition"

    def __init__(self, status: str, action: str) -> None:
        super().__init__(f"cannot {action} an execution that is {status}")
        self.status = status
        self.action = action


class ExecutionNotFound(DomainError):
    code = "execution-not-found"

    def __init__(self, execution_id: object) -> None:
        super().__init__(f"execution {execution_id} does not exist")
        self.execution_id = execution_id


class ExecutionDeleted(ExecutionNotFound):
    """It existed and was deleted: not found for every caller, the stream keeps it."""


class UnknownDevice(DomainError):
    code = "unknown-device"

    def __init__(self, device_id: str) -> None:
        super().__init__(f"device {device_id!r} is not in the catalog")
        self.device_id = device_id


@dataclass(frozen=True)
class FieldError:
    """One reason a request was refused, located by a JSON-pointer-like path."""

    field: str
    reason: str


@dataclass
class InvalidCommand(DomainError):
    """The command name is unknown for the device's type, or its params break the schema."""

    message: str
    errors: list[FieldError] = field(default_factory=list)
    code = "invalid-command"

    def __post_init__(self) -> None:
        super().__init__(self.message)


class IdempotencyConflict(DomainError):
    code = "idempotency-conflict"

    def __init__(self, key: str, deleted: bool = False) -> None:
        # A deleted execution's key stays used (a repeat must not run the command again),
        # whatever the repeat holds: say so rather than call the request different.
        used = "by an execution since deleted" if deleted else "with a different request"
        super().__init__(f"idempotency key {key!r} was already used {used}")
        self.key = key


class WriteConflict(DomainError):
    """Other writers changed the same streams each time this request tried to store itself;
    nothing of it was stored, and trying again later may well succeed."""

    code = "write-conflict"

    def __init__(self, attempts: int) -> None:
        super().__init__(
            f"the request met a concurrent write {attempts} times; nothing was stored, retry"
        )
        self.remaining = 1.0


class WrongDevice(DomainError):
    """A device answered for an execution that belongs to another device."""

    code = "wrong-device"

    def __init__(self, execution_device: str, answering_device: str) -> None:
        super().__init__(
            f"device {answering_device!r} answered for an execution of {execution_device!r}"
        )
        self.execution_device = execution_device
        self.answering_device = answering_device


class AnswerLogFull(DomainError):
    """An execution's response log holds as many answers as it may, and this one would not
    change its status."""

    code = "answer-log-full"

    def __init__(self, execution_id: object, entries: int) -> None:
        super().__init__(
            f"execution {execution_id} holds {entries} answers, the most one may: an answer "
            "that does not change its status is not recorded"
        )


class DeadlineNotReached(DomainError):
    code = "deadline-not-reached"

    def __init__(self) -> None:
        super().__init__("the execution's deadline has not passed yet")


class CooldownActive(DomainError):
    """The same command ran on this device too recently (its `cooldown`)."""

    code = "cooldown-active"

    def __init__(self, device_id: str, name: str, remaining: float) -> None:
        super().__init__(
            f"{name!r} ran on {device_id!r} less than its cooldown ago; "
            f"it may run again in {remaining:.1f} s (or ignore the cooldown)"
        )
        self.remaining = remaining


class QueueFull(DomainError):
    """The device already has as many commands waiting for it as allowed.

    While it is online (busy) they go out as those before them end: worth asking again in a
    second. Offline, they go out when it reconnects, which nothing here can tell: no time to
    retry (`remaining` None: no `Retry-After`), and the message says why."""

    code = "queue-full"

    def __init__(self, device_id: str, limit: int, online: bool = True) -> None:
        if online:
            said = f"device {device_id!r} is busy and already has {limit} commands waiting; "
            said += "try again later"
        else:
            said = f"device {device_id!r} is offline and already has {limit} commands waiting, "
            said += "which go out when it reconnects; try again once it is back online"
        super().__init__(said)
        self.remaining = 1.0 if online else None


@dataclass
class InvalidCatalog(DomainError):
    """A catalog change (or import) that would make the catalog invalid; names each field."""

    message: str
    errors: list[FieldError] = field(default_factory=list)
    code = "invalid-catalog"

    def __post_init__(self) -> None:
        super().__init__(self.message)


class CatalogConflict(DomainError):
    code = "catalog-conflict"


class UnknownDeviceType(DomainError):
    code = "unknown-device-type"

    def __init__(self, name: str) -> None:
        super().__init__(f"device type {name!r} is not in the catalog")
        self.name = name
