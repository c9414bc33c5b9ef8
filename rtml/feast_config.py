"""Feast's configuration for rtml's settings: what `feast` needs to work on ``feature_repo/``
with them. Kept apart from `rtml.feature_store` so that the stack and `rtml status` read it
without importing Feast or pandas."""

from __future__ import annotations

import json
from pathlib import Path

from rtml.settings import Settings


def feast_yaml_path(settings: Settings) -> Path:
    """The Feast repo's configuration for `settings`, written where the state is."""
    return settings.state / "feast" / "feature_store.yaml"


def feast_yaml(settings: Settings) -> str:
    """``feature_repo/feature_store.yaml`` with the settings' project, registry and Redis."""
    return (
        f"project: {settings.feast_project}\n"
        "provider: local\n"
        f"registry: {json.dumps(str(settings.feast_registry_path))}\n"
        "online_store:\n"
        "  type: redis\n"
        f"  connection_string: {json.dumps(settings.feast_redis_connection)}\n"
        "offline_store:\n"
        f"  type: {settings.offline_store}\n"
        "entity_key_serialization_version: 3\n"
    )


def feast_env(settings: Settings) -> dict[str, str]:
    """What `feast` needs to work on ``feature_repo/`` with `settings`: the state directory its
    definitions read the offline data from, and the configuration file (`feast_yaml`, written
    by `write_feast_yaml` before it runs)."""
    return {
        "RTML_STATE_DIR": str(settings.state),
        "FEAST_FS_YAML_FILE_PATH": str(feast_yaml_path(settings)),
    }


def write_feast_yaml(settings: Settings) -> Path:
    path = feast_yaml_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(feast_yaml(settings))
    return path
