"""Tenants and roles: whose objects a caller may see, and what it may do with them.

Every device type, device and execution belongs to one tenant; a caller acts in its own
tenant only, and another tenant's object is answered exactly like a missing one. Within
its tenant a caller has one role; each role may do what the one before it may, and more.
"""

from __future__ import annotations

from enum import IntEnum

DEFAULT_TENANT = "default"


class Role(IntEnum):
    """Ordered: a role may do everything the roles below it may."""

    VIEWER = 1  # read: executions, the catalog
    OPERATOR = 2  # and send, cancel, retry commands
    ADMIN = 3  # and change the catalog, delete, purge, manage keys and device credentials
    OWNER = 4  # and manage tenants, and keys of any tenant (the platform's operator)

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, label: str) -> Role:
        """The role called `label` (`viewer`, ...); ValueError for any other."""
        try:
            return cls[label.upper()]
        except KeyError:
            raise ValueError(f"unknown role {label!r}") from None
