"""What the deployment files' tests share: the BATON_* names a deployment may set."""

from __future__ import annotations

from baton_platform.settings import Settings


def unknown_settings(names: set[str]) -> set[str]:
    """The BATON_* names among `names` that no field of Settings reads."""
    known = {f"BATON_{name.upper()}" for name in Settings.model_fields}
    return {name for name in names if name.startswith("BATON_")} - known
