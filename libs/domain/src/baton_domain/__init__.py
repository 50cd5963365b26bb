"""Baton's domain: the command-execution lifecycle and the device catalog.

Imports nothing but the standard library, pydantic, jsonschema (with referencing and
google-re2, to run a params schema safely), PyYAML and eventsourcing (see invariant 7 of
docs/architecture.md); services wrap it.
"""
