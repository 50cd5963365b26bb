"""A cheap deep copy for aggregates whose state is values in containers."""

from __future__ import annotations

import copy
from typing import Self


class ContainersCopied:
    """The library copies each cached aggregate before a command changes it, so a command
    that fails leaves the cache as stored. An aggregate that only ever replaces what it
    holds (ids, times, names, JSON taken as values) and changes nothing in place but its
    own lists and dicts is copied in full by copying those containers: far cheaper than
    `copy.deepcopy` of every id and time (measured: most of a request's time on a device
    with hundreds of executions in flight; 5 % of a dispatcher's CPU for executions)."""

    def __deepcopy__(self, memo: dict[int, object]) -> Self:
        clone = copy.copy(self)
        for name, value in vars(self).items():
            if isinstance(value, list | dict):
                setattr(clone, name, copy.copy(value))
        return clone
