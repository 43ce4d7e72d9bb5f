"""Settings resolution: dataclass defaults < ``curate.toml`` (or a pipeline file) < CLI flags.

A config file has one table per stage (``[ingest]``, ``[export]`` ...). Unknown keys fail before any work
starts, naming the file and the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from curate.errors import UsageError

CONFIG_NAME = "curate.toml"


def find_config_file(workspace: Path) -> Path | None:
    """``$CURATE_CONFIG``, else ``./curate.toml``, else ``<workspace>/curate.toml``, else None."""
    env = os.environ.get("CURATE_CONFIG")
    if env:
        path = Path(env)
        if not path.exists():
            raise UsageError(f"CURATE_CONFIG={env}: no such file")
        return path
    for cand in (Path.cwd() / CONFIG_NAME, workspace / CONFIG_NAME):
        if cand.exists():
            return cand
    return None


def load_section(path: Path | None, section: str) -> dict[str, Any]:
    """The ``[section]`` table of a TOML file (empty when there is no file or no such table)."""
    if path is None:
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: invalid TOML ({exc})") from exc
    value = data.get(section, {})
    if not isinstance(value, dict):
        raise UsageError(f"{path}: [{section}] must be a table")
    return value


def resolve(cls: type, file_values: dict[str, Any], cli_values: dict[str, Any], *, origin: str = "config") -> Any:
    """Build ``cls`` (a dataclass) from defaults, then ``file_values``, then the CLI values that are not None.

    Raises:
        UsageError: a key that ``cls`` does not have, or a value of the wrong type.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(file_values) - set(fields))
    if unknown:
        raise UsageError(f"{origin}: unknown setting(s) {', '.join(unknown)} for {cls.__name__}; known: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    merged: dict[str, Any] = {}
    for key, value in {**file_values, **{k: v for k, v in cli_values.items() if v is not None}}.items():
        if key not in fields:
            raise UsageError(f"unknown setting {key!r} for {cls.__name__}")
        merged[key] = _coerce(value, hints[key], key, origin)
    return cls(**merged)


def _coerce(value: Any, hint: Any, key: str, origin: str) -> Any:
    target = hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        target = next(a for a in typing.get_args(hint) if a is not type(None))
    if value is None:
        return None
    if typing.get_origin(target) is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        return tuple(value)
    try:
        if target is bool and isinstance(value, str):
            return value.lower() in ("1", "true", "yes", "on")
        if target in (int, float, str, bool):
            return target(value)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{origin}: {key} = {value!r} is not a valid {target.__name__}") from exc
    return value
