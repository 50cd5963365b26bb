"""A command's params schema as Baton runs it (docs/security.md, "Params schemas").

A tenant's admin writes these schemas, and the dispatcher, the one writer of every tenant's
commands, runs one on each submit. So a schema must not be able to make that slow or reach
outside Baton: its regular expressions (`pattern`, `patternProperties`) run on RE2, in time
linear in the input, and its `$ref`s are resolved inside the schema itself, never fetched.
A schema that needs more (a backreference, a lookaround, another document) is refused when
its device type is saved; one stored before that rule refuses every submit instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import re2
from jsonschema import Draft202012Validator, ValidationError, validators
from referencing import Registry
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

from baton_domain.errors import FieldError

if TYPE_CHECKING:
    from referencing._core import Resolver  # what Registry.resolver_with_root returns

JSON = dict[str, Any]
Path = tuple[str, ...]
# Where in the schema (keywords and names from its root) and what is wrong there.
Problem = tuple[Path, str]

# The 2020-12 keywords whose value is a subschema, a list of them, or an object of them.
_ONE = frozenset(
    {
        "additionalProperties", "contains", "contentSchema", "else", "if", "items", "not",
        "propertyNames", "then", "unevaluatedItems", "unevaluatedProperties",
    }
)  # fmt: skip
_LIST = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_MAP = frozenset({"$defs", "definitions", "dependentSchemas", "patternProperties", "properties"})
_REFS = ("$ref", "$dynamicRef")

# Resolves nothing but the schema itself (and the specification's own meta-schemas): the
# library's default would fetch any other URI with urlopen, file:// included.
_NOTHING_TO_FETCH: Registry[Any] = Registry()


def _re2_options() -> Any:
    options = re2.Options()
    options.log_errors = False  # a refused pattern is reported to the caller, not on stderr
    return options


@lru_cache(maxsize=1024)
def _regex(pattern: str) -> Any:
    """The pattern compiled by RE2, once per process (a schema's patterns run on every
    submit); re2.error if RE2 cannot run it."""
    return re2.compile(pattern, _re2_options())


def _search(pattern: str, text: str) -> bool:
    # RE2 takes UTF-8; JSON may carry a lone surrogate ("\ud800"), which strict UTF-8 refuses.
    return _regex(pattern).search(text.encode("utf-8", "surrogatepass")) is not None


def _pattern(
    validator: Draft202012Validator, pattern: str, instance: Any, schema: JSON
) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Draft202012Validator, patterns: JSON, instance: Any, schema: JSON
) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(
    validator: Draft202012Validator, additional: Any, instance: Any, schema: JSON
) -> Iterator[Any]:
    # The library's own keyword matches patternProperties with `re`: hand it, instead, the
    # names already covered (declared, or matched by RE2) as plain properties.
    if validator.is_type(instance, "object") and "patternProperties" in schema:
        declared = schema.get("properties", {})
        covered = [
            key
            for key in instance
            if key in declared or any(_search(p, key) for p in schema["patternProperties"])
        ]
        schema = {"properties": dict.fromkeys(covered, True)}
    yield from Draft202012Validator.VALIDATORS["additionalProperties"](
        validator, additional, instance, schema
    )


# Draft 2020-12 with every keyword that runs a regex on the instance running RE2. `format` is
# not asserted (no format checker), so `format: regex` runs nothing.
ParamsValidator: type[Draft202012Validator] = validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator,
    {
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
    },
)


class ParamsSchema:
    """A command's params schema, compiled once: what is wrong with a request's params."""

    def __init__(self, schema: JSON) -> None:
        self.problems = schema_problems(schema)
        self._validator = ParamsValidator(schema, registry=_NOTHING_TO_FETCH)

    def errors(self, params: Any) -> list[FieldError]:
        """Each error of `params`, naming its field; [] when they are valid."""
        if self.problems:
            # Stored before these schemas were checked: running it could be slow or fail.
            where, reason = self.problems[0]
            return [
                FieldError(
                    "params",
                    f"this command's params schema cannot be used ({_dotted(where)}: "
                    f"{reason}); an admin must replace its device type",
                )
            ]
        try:
            found = sorted(
                self._validator.iter_errors(params), key=lambda e: list(map(str, e.absolute_path))
            )
        except RecursionError:
            # A `$ref` that comes back to where it started without descending into the params
            # (`{"$ref": "#"}`) never ends: refused as the schema's fault, not a crash.
            return [
                FieldError(
                    "params",
                    "this command's params schema refers to itself without end; "
                    "an admin must replace its device type",
                )
            ]
        return [
            FieldError(_dotted(("params", *map(str, e.absolute_path))), e.message) for e in found
        ]


def schema_problems(schema: JSON) -> list[Problem]:
    """Why Baton would not run `schema` (a valid 2020-12 schema); [] when it would."""
    resource = DRAFT202012.create_resource(schema)
    found = list(_subschemas(schema, (), _NOTHING_TO_FETCH.resolver_with_root(resource)))
    problems = [p for path, sub, resolver in found for p in _problems_of(sub, path, resolver)]
    return problems + _unevaluated_beside_patterns([(path, sub) for path, sub, _ in found])


def _subschemas(
    schema: Any, path: Path, resolver: Resolver[Any]
) -> Iterator[tuple[Path, JSON, Resolver[Any]]]:
    """Every subschema with its path and the resolver its `$ref`s are resolved with (one
    with an `$id` is the base of its own)."""
    if not isinstance(schema, dict):
        return  # true, false: nothing to run
    resolver = resolver.in_subresource(DRAFT202012.create_resource(schema))
    yield path, schema, resolver
    for keyword, value in schema.items():
        for where, sub in _children(keyword, value):
            yield from _subschemas(sub, (*path, keyword, *where), resolver)


def _children(keyword: str, value: Any) -> Iterator[tuple[Path, Any]]:
    if keyword in _ONE:
        yield (), value
    elif keyword in _LIST and isinstance(value, list):
        yield from (((str(i),), sub) for i, sub in enumerate(value))
    elif keyword in _MAP and isinstance(value, Mapping):
        yield from (((str(name),), sub) for name, sub in value.items())


def _problems_of(schema: JSON, path: Path, resolver: Resolver[Any]) -> Iterator[Problem]:
    pattern = schema.get("pattern")
    if isinstance(pattern, str) and (reason := _re2_refusal(pattern)):
        yield (*path, "pattern"), reason
    for key in schema.get("patternProperties") or {}:
        if reason := _re2_refusal(key):
            yield (*path, "patternProperties", key), reason
    for keyword in _REFS:
        ref = schema.get(keyword)
        if isinstance(ref, str) and (reason := _ref_refusal(ref, resolver)):
            yield (*path, keyword), reason


def _re2_refusal(pattern: str) -> str | None:
    try:
        _regex(pattern)
    except UnicodeEncodeError:
        return f"{pattern!r} is not a pattern Baton can run: it holds a lone surrogate"
    except re2.error as exc:
        detail = exc.args[0].decode(errors="replace") if exc.args else "not RE2 syntax"
        return (
            f"{pattern!r} is not a pattern Baton can run ({detail}): patterns are RE2, "
            "without backreferences or lookarounds"
        )
    return None


def _ref_refusal(ref: str, resolver: Resolver[Any]) -> str | None:
    if not ref.startswith("#"):
        return f"{ref!r} is not in this schema: a $ref must start with '#' (nothing is fetched)"
    try:
        resolver.lookup(ref)
    except Unresolvable:
        return f"{ref!r} points to nothing in this schema"
    return None


def _unevaluated_beside_patterns(found: list[tuple[Path, JSON]]) -> list[Problem]:
    # The library finds what unevaluatedProperties leaves out by matching patternProperties
    # with `re`, which RE2 cannot replace there: the two are not used together.
    if not any("patternProperties" in sub for _, sub in found):
        return []
    return [
        ((*path, "unevaluatedProperties"), "cannot be used in a schema with patternProperties")
        for path, sub in found
        if "unevaluatedProperties" in sub
    ]


def _dotted(path: Path) -> str:
    return ".".join(path) or "params"
