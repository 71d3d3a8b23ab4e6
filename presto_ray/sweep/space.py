"""Reading a sweep's search-space file: YAML -> a pydantic model, with errors that name the file and
the key (shared by the layer-drop and loss-weight sweeps)."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from presto_ray.config import ConfigError

M = TypeVar("M", bound=BaseModel)


def error_message(error: dict) -> str:
    """A pydantic error's text, without the "Value error, " prefix of our own checks."""
    return str(error["ctx"]["error"]) if error["type"] == "value_error" else error["msg"]


def load_space_file(path: str | Path, model: type[M]) -> M:
    """The space in ``path`` validated as ``model``; ConfigError (a ValueError) naming the file and
    each unknown or invalid key."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"search space file '{file}' not found")
    try:
        tree = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{file}: not valid YAML: {err}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{file}: the top level must be a mapping of keys")
    try:
        return model.model_validate(tree)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"])
            problems.append(f"unknown key '{key}'" if e["type"] == "extra_forbidden"
                            else f"key '{key}': {error_message(e)}" if key else error_message(e))
        raise ConfigError(f"{file}: {'; '.join(problems)}") from None
