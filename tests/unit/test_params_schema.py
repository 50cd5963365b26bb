"""A command's params schema is written by a tenant's admin and run by the dispatcher on every
submit: its regexes run in linear time (RE2), its `$ref`s stay inside it (nothing fetched, no
file read), and a schema that needs more is refused when its device type is saved."""

from __future__ import annotations

import time
import urllib.request
from typing import Any

import pytest
from referencing.exceptions import Unresolvable

import baton_domain.params_schema as params_schema_module
from baton_domain.catalog import Catalog
from baton_domain.catalog_document import CatalogDocument, build, checked
from baton_domain.errors import InvalidCatalog, InvalidCommand
from baton_domain.params_schema import ParamsSchema
from baton_platform.commands import WIRE

CATASTROPHIC = "^(a+)+$"  # backtracking takes 2^n steps on "aaa…a!"
EVIL_INPUT = "a" * 5000 + "!"


def catalog_with(params: dict[str, Any]) -> dict[str, Any]:
    """A catalog document: one type `t` whose command `c` has these params, one device."""
    return {
        "device_types": {"t": {"commands": {"c": {"params": params}}}},
        "devices": [{"id": "d-1", "type": "t"}],
    }


def object_of(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


def refusal(document: dict[str, Any]) -> list[tuple[str, str]]:
    """The (field, reason) pairs a change bringing `document` is refused with."""
    with pytest.raises(InvalidCatalog) as caught:
        CatalogDocument({}).import_document(document, wire=WIRE)
    return [(e.field, e.reason) for e in caught.value.errors]


@pytest.mark.parametrize(
    ("params", "request_params", "field"),
    [
        (object_of(s={"type": "string", "pattern": CATASTROPHIC}), {"s": EVIL_INPUT}, "params.s"),
        (
            {"type": "object", "patternProperties": {CATASTROPHIC: {"type": "integer"}}},
            {EVIL_INPUT: "x", "a": "y"},
            "params.a",
        ),
        (
            {"patternProperties": {CATASTROPHIC: {}}, "additionalProperties": False},
            {EVIL_INPUT: 1},
            "params",
        ),
        ({"propertyNames": {"pattern": CATASTROPHIC}}, {EVIL_INPUT: 1}, "params"),
    ],
    ids=["pattern", "patternProperties", "additionalProperties", "propertyNames"],
)
def test_a_catastrophic_pattern_is_matched_in_linear_time(
    params: dict[str, Any], request_params: dict[str, Any], field: str
) -> None:
    catalog = checked(catalog_with(params), WIRE)  # RE2 runs it: nothing to refuse at save
    started = time.perf_counter()
    with pytest.raises(InvalidCommand) as caught:
        catalog.resolve("d-1", "c", request_params, None)
    assert time.perf_counter() - started < 0.5  # Python's re: longer than the universe's age
    assert field in [e.field for e in caught.value.errors]


def test_patterns_still_match_what_they_should() -> None:
    catalog = checked(
        catalog_with(object_of(s={"type": "string", "pattern": "^[a-f0-9]{4}$"})), WIRE
    )
    assert catalog.resolve("d-1", "c", {"s": "beef"}, None).params == {"s": "beef"}
    with pytest.raises(InvalidCommand, match="invalid params"):
        catalog.resolve("d-1", "c", {"s": "BEEF"}, None)
    # A lone surrogate (JSON allows "\ud800") is matched, not an error of the service.
    with pytest.raises(InvalidCommand, match="invalid params"):
        catalog.resolve("d-1", "c", {"s": "\ud800"}, None)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        (object_of(s={"pattern": r"^(a)\1$"}), "params.properties.s.pattern"),
        (object_of(s={"pattern": "^(?=a)"}), "params.properties.s.pattern"),
        ({"patternProperties": {"(?<!x)y": {}}}, "params.patternProperties.(?<!x)y"),
        ({"items": {"anyOf": [{"pattern": "(?!z)"}]}}, "params.items.anyOf.0.pattern"),
        (object_of(s={"pattern": "\ud800"}), "params.properties.s.pattern"),
    ],
    ids=["backreference", "lookahead", "patternProperties-lookbehind", "nested", "surrogate"],
)
def test_a_pattern_re2_cannot_run_is_refused_at_save_naming_the_field(
    params: dict[str, Any], field: str
) -> None:
    [(refused, reason)] = refusal(catalog_with(params))
    assert refused == f"device_types.t.commands.c.{field}"
    assert "not a pattern Baton can run" in reason


@pytest.mark.parametrize(
    "ref",
    [
        "http://127.0.0.1:29997/s.json",
        "file:///etc/passwd",
        "other.json#/$defs/x",
        "#/$defs/missing",
    ],
)
def test_a_ref_out_of_the_schema_is_refused_at_save(ref: str) -> None:
    [(refused, reason)] = refusal(catalog_with(object_of(v={"$ref": ref})))
    assert refused == "device_types.t.commands.c.params.properties.v.$ref"
    assert ref in reason


def test_put_device_type_refuses_it_too_and_changes_nothing() -> None:
    document = CatalogDocument({})
    with pytest.raises(InvalidCatalog) as caught:
        document.put_device_type(
            "t", {"commands": {"c": {"params": {"$ref": "file:///x"}}}}, wire=WIRE
        )
    assert caught.value.errors[0].field == "device_types.t.commands.c.params.$ref"
    assert document.document == {}


def test_a_local_ref_is_accepted_and_enforced() -> None:
    params = {
        "type": "object",
        "properties": {"value": {"$ref": "#/$defs/celsius"}},
        "$defs": {"celsius": {"type": "number", "minimum": 5, "maximum": 30}},
    }
    catalog = checked(catalog_with(params), WIRE)
    assert catalog.resolve("d-1", "c", {"value": 21}, None).params == {"value": 21}
    with pytest.raises(InvalidCommand) as caught:
        catalog.resolve("d-1", "c", {"value": 99}, None)
    assert [(e.field, e.reason) for e in caught.value.errors] == [
        ("params.value", "99 is greater than the maximum of 30")
    ]


def test_a_schema_that_refers_to_itself_without_end_refuses_its_params_not_crashes() -> None:
    """`{"$ref": "#"}` comes back to itself without descending into the params: validating
    never ends. A recursive schema that does descend (a tree) still works."""
    endless = checked(catalog_with({"type": "object", "$ref": "#"}), WIRE)
    with pytest.raises(InvalidCommand) as caught:
        endless.resolve("d-1", "c", {"a": 1}, None)
    assert [e.field for e in caught.value.errors] == ["params"]
    assert "refers to itself" in caught.value.errors[0].reason
    tree = {"type": "object", "properties": {"child": {"$ref": "#"}, "n": {"type": "integer"}}}
    nested = checked(catalog_with(tree), WIRE)
    assert nested.resolve("d-1", "c", {"child": {"child": {"n": 1}}}, None).params
    with pytest.raises(InvalidCommand):
        nested.resolve("d-1", "c", {"child": {"child": {"n": "x"}}}, None)


def test_validation_opens_no_url_and_no_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """Even were the check at save out of the way, the validator has nothing to fetch with."""

    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"a params schema opened {args}")

    monkeypatch.setattr(urllib.request, "urlopen", never)
    monkeypatch.setattr(params_schema_module, "schema_problems", lambda schema: [])
    for ref in ("http://127.0.0.1:29997/s.json", "file:///etc/passwd"):
        schema = ParamsSchema({"$ref": ref})
        with pytest.raises(Unresolvable):
            schema.errors({})


def test_a_stored_schema_that_is_refused_now_is_read_and_refuses_its_submits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stored before the rule (or seeded from a file): every service still starts with it,
    other changes still go through, and its command answers why it cannot be used."""
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("fetched"))
    stored = catalog_with(object_of(s={"pattern": "^(?=a)"}, v={"$ref": "file:///etc/passwd"}))
    catalog = build(stored, stored=True)
    with pytest.raises(InvalidCommand) as caught:
        catalog.resolve("d-1", "c", {"s": "a"}, None)
    [error] = caught.value.errors
    assert error.field == "params"
    assert "params schema cannot be used (properties.s.pattern" in error.reason
    document = CatalogDocument(stored)
    document.put_device_type("lamp", {"commands": {"on": {}}}, wire=WIRE)
    assert set(document.catalog.device_types) == {"t", "lamp"}


def test_unevaluated_properties_beside_pattern_properties_is_refused() -> None:
    # The library decides what unevaluatedProperties leaves out with `re`, not RE2.
    params = {"allOf": [{"patternProperties": {"^x": {}}}], "unevaluatedProperties": False}
    [(refused, _)] = refusal(catalog_with(params))
    assert refused == "device_types.t.commands.c.params.unevaluatedProperties"
    checked(catalog_with({"unevaluatedProperties": False}), WIRE)  # alone, it is accepted


def test_a_catalog_of_such_schemas_is_checked_by_the_import_dry_run() -> None:
    from baton_cli.catalog import catalog_errors

    errors = catalog_errors(catalog_with(object_of(v={"$ref": "http://x/s.json"})))
    assert [field for field, _ in errors] == ["device_types.t.commands.c.params.properties.v.$ref"]


def test_the_demo_catalog_keeps_to_the_rules() -> None:
    from tests.unit.test_catalog import DEMO

    specs = Catalog.from_yaml(DEMO).device_types["thermostat"].commands.values()
    assert all(spec.params_schema.problems == [] for spec in specs)
