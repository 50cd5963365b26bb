"""Where the last `baton dev run` (`make run`) is: the settings a client of that stack needs.

`baton dev run` writes them to one file outside the repository (BATON_DEV_STATE, else
$XDG_STATE_HOME/baton/devstack.json, else ~/.local/state/baton/devstack.json), so `baton send`,
`baton simulate`, `baton events` ... reach that stack from any directory and whatever ports it
took. A BATON_* variable that is set always wins over the file: it only fills what is unset.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# What a client of the stack reads; the services' own settings stay out.
CLIENT_SETTINGS = (
    "BATON_API_URL",
    "BATON_API_KEY",
    "BATON_DATA_DIR",
    "BATON_DATABASE_URL",
    "BATON_CATALOG_PATH",
    "BATON_NATS_URL",
    "BATON_NATS_CREDENTIALS",
    "BATON_MQTT_HOST",
    "BATON_MQTT_PORT",
    "BATON_MQTT_PROTOCOL",
    "BATON_MQTT_USERNAME",
    "BATON_MQTT_PASSWORD",
    "BATON_MQTT_TLS",
    "BATON_MQTT_CA_FILE",
)


def state_path() -> Path:
    explicit = os.environ.get("BATON_DEV_STATE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "baton" / "devstack.json"


def write_state(env: dict[str, str], pid: int) -> Path:
    """Record the stack's client settings (mode 0600: they hold its keys and passwords)."""
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    settings = {key: env[key] for key in CLIENT_SETTINGS if key in env}
    tmp = path.with_suffix(".tmp")
    tmp.touch(mode=0o600)
    tmp.write_text(json.dumps({"pid": pid, "env": settings}, indent=2))
    tmp.replace(path)
    return path


def read_state() -> dict[str, str]:
    """The last dev stack's client settings ({} if none was recorded, or the file is bad)."""
    try:
        state = json.loads(state_path().read_text())
        env = state["env"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    if not isinstance(env, dict):
        return {}
    return {str(k): str(v) for k, v in env.items() if k in CLIENT_SETTINGS}


def forget_state(data_dir: Path) -> None:
    """Drop the record if it is of the stack whose data is in `data_dir` (wiped by reset)."""
    recorded = read_state().get("BATON_DATA_DIR")
    if recorded is not None and Path(recorded).resolve() == data_dir.resolve():
        state_path().unlink(missing_ok=True)


_filled: dict[str, str] = {}  # what apply_state took from the file, for messages


def apply_state() -> dict[str, str]:
    """Fill the unset BATON_* client settings from the last dev stack; what was filled."""
    filled = {k: v for k, v in read_state().items() if not os.environ.get(k)}
    os.environ.update(filled)
    _filled.clear()
    _filled.update(filled)
    return filled


def origin(setting: str) -> str:
    """Where a setting's value came from, for messages: the variable, or the state file."""
    if setting in _filled:
        return f"{setting} of the dev stack in {state_path()}"
    return setting if os.environ.get(setting) else f"{setting} unset: the default"
