"""What JSON can carry. A document read from YAML (`.nan`, `.inf`, a date) or by Python's
json module (`NaN`, `Infinity`, `1e400`) can hold values no JSON text can: they cannot be sent
to the API, stored as JSON, or read back by another client."""

from __future__ import annotations

import math
from typing import Any

from baton_domain.errors import FieldError

# bool is an int; float is checked for finiteness first.
JSON_SCALARS = (str, int, float, type(None))
NOT_FINITE = "must be a finite number, not {}: JSON has no NaN or infinity"


def json_faults(value: Any, path: str = "") -> list[FieldError]:
    """Each value in `value` that JSON cannot carry, by its dotted path under `path`, in the
    document's order. Walked without recursion: no nesting is too deep for it."""
    faults: list[FieldError] = []
    pending: list[tuple[str, Any]] = [(path, value)]
    while pending:
        where, item = pending.pop()
        if isinstance(item, dict | list):
            children = list(item.items() if isinstance(item, dict) else enumerate(item))
            faults += [
                FieldError(_at(where, k), f"its key {_not_json(k)}")
                for k, _ in children
                if _not_json(k)
            ]
            pending += reversed([(_at(where, k), child) for k, child in children])
        elif _not_json(item):
            faults.append(FieldError(where, _not_json(item)))
    return faults


def _at(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _not_json(value: Any) -> str:
    """Why a scalar (or a key) is not JSON; "" when it is."""
    if isinstance(value, float) and not math.isfinite(value):
        return NOT_FINITE.format(value)
    if isinstance(value, JSON_SCALARS):
        return ""
    return f"must be a JSON value, not a {type(value).__name__}"
