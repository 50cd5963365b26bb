"""A device type's wire settings as the catalog checks them: whether its profile can use
them, a device's MQTT topics, and whether two tenants' devices would share one.

The profiles are the wire contracts' code (`baton_contracts.profiles`), which the domain
does not import: whoever changes the catalog passes the profiles' own rules in as
`WireRules` (baton_platform.commands).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from baton_domain.catalog import Device, DeviceType


class WireRules(Protocol):
    def check(self, device_type: DeviceType) -> None:
        """Raise ValueError, saying why, when the type's profile cannot use its wire settings
        (its own or its commands')."""

    def topics(self, device: Device, device_type: DeviceType) -> Iterable[str]:
        """Every topic and topic filter `device` uses on the broker in its type's profile:
        the requests and cancels it subscribes to, the answers, status and state it
        publishes (none for settings the profile cannot use). A filter holds `+` for a level
        that varies (an execution id), never as its first level; none holds `#`."""


_Node = dict[str, "_Node"]


class TopicIndex:
    """Topics and `+` filters, asked which of them shares a topic with a topic or filter.

    Two share a topic when some topic matches both: as many levels, and each level equal,
    or `+` in either. A tree of levels finds that without comparing every pair."""

    def __init__(self, topics: Iterable[str] = ()) -> None:
        self._roots: dict[int, _Node] = {}  # by number of levels: `+` is one level
        self._topic_at: dict[int, str] = {}  # a leaf (by id) -> the topic that ends there
        for topic in topics:
            self.add(topic)

    def __bool__(self) -> bool:
        return bool(self._roots)

    def add(self, topic: str) -> None:
        levels = topic.split("/")
        node = self._roots.setdefault(len(levels), {})
        for level in levels:
            node = node.setdefault(level, {})
        self._topic_at.setdefault(id(node), topic)

    def shares(self, topic: str) -> bool:
        return self.shared(topic) is not None

    def shared(self, topic: str) -> str | None:
        """One of the index's topics sharing a topic with `topic`, or None."""
        levels = topic.split("/")
        root = self._roots.get(len(levels))
        nodes = [] if root is None else [root]
        for level in levels:
            if level == "+":
                nodes = [child for node in nodes for child in node.values()]
            else:
                nodes = [node[key] for node in nodes for key in (level, "+") if key in node]
            if not nodes:
                return None
        return self._topic_at[id(nodes[0])]
