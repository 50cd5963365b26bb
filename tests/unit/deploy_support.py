"""What the deployment files' tests share: the BATON_* names a deployment may set."""

from __future__ import annotations

from baton_platform.settings import Settings

# Settings the deployment files set before the code that reads them is on this branch: the
# PostgreSQL stores. Each is accepted only while Settings lacks it; drop a name from here
# once Settings has it.
COMING_SETTINGS = {"BATON_DATABASE_URL"}


def unknown_settings(names: set[str]) -> set[str]:
    """The BATON_* names among `names` that no field of Settings reads."""
    known = {f"BATON_{name.upper()}" for name in Settings.model_fields} | COMING_SETTINGS
    return {name for name in names if name.startswith("BATON_")} - known
