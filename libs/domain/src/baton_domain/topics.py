"""A device's MQTT topics, and whether two tenants' devices would share one.

A device's topics come from its type's wire profile. The profiles are the wire contracts'
code (`baton_contracts.profiles`), which the domain does not import: whoever changes the
catalog passes the profiles' own derivation in as `WireTopics` (baton_platform.commands).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from baton_domain.catalog import Device, DeviceType

# Every topic and topic filter a device uses on the broker in its type's wire profile: the
# requests and cancels it subscribes to, the answers, status and state it publishes. A
# filter holds `+` for a level that varies (an execution id), never as its first level
# (where MQTT's rule for `$` topics would matter); none holds `#`.
WireTopics = Callable[[Device, DeviceType], Iterable[str]]

_Node = dict[str, "_Node"]


class TopicIndex:
    """Topics and `+` filters, asked whether a topic or filter shares a topic with one.

    Two share a topic when some topic matches both: as many levels, and each level equal,
    or `+` in either. A tree of levels finds that without comparing every pair."""

    def __init__(self, topics: Iterable[str] = ()) -> None:
        self._roots: dict[int, _Node] = {}  # by number of levels: `+` is one level
        for topic in topics:
            self.add(topic)

    def __bool__(self) -> bool:
        return bool(self._roots)

    def add(self, topic: str) -> None:
        levels = topic.split("/")
        node = self._roots.setdefault(len(levels), {})
        for level in levels:
            node = node.setdefault(level, {})

    def shares(self, topic: str) -> bool:
        levels = topic.split("/")
        root = self._roots.get(len(levels))
        nodes = [] if root is None else [root]
        for level in levels:
            if level == "+":
                nodes = [child for node in nodes for child in node.values()]
            else:
                nodes = [node[key] for node in nodes for key in (level, "+") if key in node]
            if not nodes:
                return False
        return True
