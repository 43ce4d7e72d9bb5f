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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from curate.errors import CurateError, UsageError

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
    """The ``[section]`` table of a TOML file (empty when there is no file or no such table).

    Raises:
        UsageError: invalid TOML, a section that is not a table, or a top-level key that is no command with
            settings (a typo such as ``[exprot]`` fails instead of being ignored).
    """
    if path is None:
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: invalid TOML ({exc})") from exc
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the settings file ({exc.strerror or exc})") from None
    from curate.registry import stages

    known = set(stages())
    unknown = sorted(set(data) - known)
    if unknown:
        raise UsageError(f"{path}: unknown section(s) [{'], ['.join(unknown)}]; known: {', '.join(sorted(known))}")
    value = data.get(section, {})
    if not isinstance(value, dict):
        raise UsageError(f"{path}: [{section}] must be a table")
    return value


def command_config(
    cls: type,
    section: str,
    workspace: Path,
    cli_values: dict[str, Any],
    *,
    prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> Any:
    """A command's settings: ``cls`` defaults < the ``[section]`` of ``curate.toml`` < the CLI values that are not None.

    ``prepare`` turns the file's values into ``cls`` fields first (the same function a pipeline step uses, e.g.
    ``shard_size = "256MB"`` -> ``shard_bytes``). Every command with settings goes through here, before any work.

    Raises:
        UsageError: an unknown key or a value of the wrong type, naming the file, the section and the key.
    """
    path = find_config_file(workspace)
    values = load_section(path, section)
    origin = f"{path} [{section}]" if path else f"[{section}]"
    if prepare is not None and values:
        try:
            values = prepare(values)
        except CurateError as exc:
            raise UsageError(f"{origin}: {exc.message}", hint=exc.hint) from None
    return resolve(cls, values, cli_values, origin=origin)


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
        merged[key] = coerce(value, hints[key], key, origin)
    return cls(**merged)


def type_name(hint: Any) -> str:
    """``int``, ``str | None``, ``tuple[str, ...]``: how an error message names a setting's type."""
    return getattr(hint, "__name__", None) if not typing.get_args(hint) else str(hint).replace("typing.", "")  # type: ignore[return-value]


_NO = object()


def _convert(value: Any, hint: Any) -> Any:
    """``value`` as ``hint`` when it is one (or losslessly stands for one), else ``_NO``."""
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None if type(None) in typing.get_args(hint) else _NO
        for arm in (a for a in typing.get_args(hint) if a is not type(None)):
            got = _convert(value, arm)
            if got is not _NO:
                return got
        return _NO
    if origin is tuple:
        if isinstance(value, str):  # "a,b" stands for ("a", "b") in files and on the command line
            return tuple(v.strip() for v in value.split(",") if v.strip())
        return tuple(value) if isinstance(value, list | tuple) else _NO
    if hint is bool:
        return value if isinstance(value, bool) else _NO
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO
    if hint is float:
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else _NO
    if hint is str:
        if isinstance(value, str | os.PathLike):
            return str(value)
        return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else _NO
    if origin in (list, dict) or hint in (list, dict):
        return value if isinstance(value, origin or hint) else _NO
    return value


def coerce(value: Any, hint: Any, key: str, origin: str) -> Any:
    """The one settings coercer (``curate.toml``, pipeline files, ``--set`` and CLI values): ``value`` checked
    against the type ``hint`` of a Config field, strictly (TOML values are typed: ``"3"`` is no int, ``1`` no bool),
    except that a number stands for a str, an int for a float and ``"a,b"`` for a tuple.

    Raises:
        UsageError: ``{origin}: {key} = {value!r} must be {type}``.
    """
    got = _convert(value, hint)
    if got is _NO:
        raise UsageError(f"{origin}: {key} = {value!r} must be {type_name(hint)}")
    return got


def size_setting(values: dict[str, Any], key: str = "max_bytes") -> dict[str, Any]:
    """A byte-size setting given as text (``max_bytes = "64MB"`` in a file, ``--max-bytes 64MB``) -> bytes; a number
    stays as it is. The ``prepare`` of the stages with such a setting (ingest, crawl).

    Raises:
        UsageError: text that is not a size.
    """
    text = values.get(key)
    if not isinstance(text, str):
        return values
    from curate.stages.export import parse_shard_size

    try:
        rows, nbytes = parse_shard_size(text)
    except CurateError:
        raise UsageError(f"--{key.replace('_', '-')} {text!r}: give a number of bytes or a size (64MB, 1GiB)") from None
    return {**values, key: nbytes if nbytes is not None else rows}
