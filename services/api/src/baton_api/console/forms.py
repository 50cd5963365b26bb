"""A command's params form, generated from its JSON Schema, and the params read back.

Each top-level property becomes one input whose HTML constraints (required, min, max,
minlength, maxlength, pattern, a select for an enum) let the browser check what is cheap to
check before sending; everything else (multipleOf, formats, combinators, nested objects) is
the server's to check, and its problem details are shown beside the input they name.
Objects and arrays are edited as JSON; a schema without properties that allows any, as one
JSON object.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from baton_contracts.nats import FieldProblem

PREFIX = "p."  # form names of params, apart from the form's own fields (ttl, _csrf)
WHOLE = "p.*"  # the one JSON field of a schema that lists no properties


@dataclass
class FormField:
    name: str  # the param's name ("" for WHOLE)
    input: str  # number | text | select | checkbox | json
    required: bool = False
    attrs: dict[str, str] = field(default_factory=dict)
    options: list[str] = field(default_factory=list)
    description: str = ""
    value: str = ""
    error: str | None = None

    @property
    def form_name(self) -> str:
        return PREFIX + self.name if self.name else WHOLE

    @property
    def html_id(self) -> str:
        return "param-" + (self.name or "all")


def fields_of(schema: dict[str, Any], values: dict[str, str] | None = None) -> list[FormField]:
    values = values or {}
    properties = schema.get("properties")
    if not isinstance(properties, dict) or not properties:
        if schema.get("additionalProperties") is False:
            return []
        return [FormField(name="", input="json", value=values.get(WHOLE, ""))]
    required = set(schema.get("required") or [])
    return [
        _field(name, spec if isinstance(spec, dict) else {}, name in required, values)
        for name, spec in properties.items()
    ]


def _field(name: str, spec: dict[str, Any], required: bool, values: dict[str, str]) -> FormField:
    kind = spec.get("type")
    made = FormField(name=name, input="json", required=required)
    made.description = str(spec.get("description", ""))
    made.value = values.get(PREFIX + name, _default(spec))
    if isinstance(spec.get("enum"), list) and all(isinstance(v, str) for v in spec["enum"]):
        made.input, made.options = "select", list(spec["enum"])
    elif kind in ("number", "integer"):
        made.input = "number"
        made.attrs["step"] = "1" if kind == "integer" else "any"
        for key, attr in (("minimum", "min"), ("maximum", "max")):
            if isinstance(spec.get(key), int | float):
                made.attrs[attr] = str(spec[key])
    elif kind == "string":
        made.input = "text"
        for key, attr in (("minLength", "minlength"), ("maxLength", "maxlength")):
            if isinstance(spec.get(key), int):
                made.attrs[attr] = str(spec[key])
        if isinstance(spec.get("pattern"), str):
            made.attrs["pattern"] = spec["pattern"]
    elif kind == "boolean":
        made.input, made.required = "checkbox", False  # unchecked is false, not missing
    return made


def _default(spec: dict[str, Any]) -> str:
    if "default" not in spec:
        return ""
    default = spec["default"]
    return default if isinstance(default, str) else json.dumps(default)


def params_of(
    schema: dict[str, Any], form: dict[str, str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The params the form says, and the fields that could not be read (name -> reason).
    A value of the wrong type is sent as it was typed: the server's schema names it."""
    params: dict[str, Any] = {}
    unreadable: dict[str, str] = {}
    for made in fields_of(schema):
        raw = form.get(made.form_name, "")
        if made.input == "checkbox":
            params[made.name] = raw in ("on", "true")
            continue
        if raw == "":
            continue  # left empty: absent (a required one is the schema's to name)
        if made.input == "number":
            params[made.name] = _number(raw)
        elif made.input == "json":
            try:
                value = json.loads(raw)
            except ValueError:
                unreadable[made.name] = "not valid JSON"
                continue
            if made.name:
                params[made.name] = value
            elif isinstance(value, dict):
                params = value
            else:
                unreadable[""] = "the params must be a JSON object"
        else:
            params[made.name] = raw
    return params, unreadable


def _number(raw: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def place_errors(fields: list[FormField], errors: list[FieldProblem]) -> list[str]:
    """Put each problem beside the input it names (`params.<name>...`); the rest are
    returned, for the form's own list."""
    by_name = {f.name: f for f in fields}
    rest = []
    for error in errors:
        parts = error.field.split(".")
        target = by_name.get(parts[1]) if parts[0] == "params" and len(parts) > 1 else None
        if target is None and parts[0] == "params" and "" in by_name:
            target = by_name[""]
        if target is None:
            rest.append(f"{error.field}: {error.reason}")
        else:
            target.error = error.reason if target.error is None else target.error
    return rest
