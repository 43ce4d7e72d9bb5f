"""Typer commands generated from the stage contract: one per registered ``Stage``.

Each Config field becomes an ``Annotated`` option (``--field-name``; a ``bool`` is ``--flag/--no-flag``) whose help
is the field's text in the Config's ``Attributes:`` docstring section, followed by its default, which is written
once, in the dataclass. Every option defaults to None ("not given") so that settings resolve the same way as in a
pipeline: defaults < ``curate.toml`` < flags (``curate.config.command_config``), through the stage's ``prepare``
and the one coercer. The command runs the stage with ``curate.pipeline.execute`` and prints the stage's summary
(or, with ``--json``, the result).
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from curate.cli.common import DEFAULT_WS, DebugOpt, JsonOpt, VersionOpt, WorkspaceOpt, handle_errors, say
from curate.stage import OUTPUT, Option, Stage, field_help

_SCALARS = (bool, int, float, str)
_COMMON = ("workspace", "json_out", "debug", "version", "workers")


def cli_type(hint: Any) -> type | None:
    """The command-line type of a Config field: its scalar type, ``str`` for text that ``prepare`` or the coercer
    turns into the field's type (tuples, ``"64MB"``), None for fields set in files only (dicts, lists)."""
    if hint in _SCALARS:
        return hint
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return cli_type(args[0])
    if typing.get_origin(hint) is tuple or hint is Path:
        return str
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and all(a in _SCALARS for a in args):
        return str  # int | float, str | float: the coercer decides
    return None


def _default_text(f: dataclasses.Field[Any]) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if value is None or value == ():
        return ""
    if isinstance(value, tuple):
        value = ",".join(":".join(map(str, v)) if isinstance(v, tuple) else str(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def config_params(stage: Stage) -> list[inspect.Parameter]:
    """One keyword parameter per command-line field of ``stage.config``."""
    helps = field_help(stage.config)
    hints = stage.config_fields()
    params = []
    for f in dataclasses.fields(stage.config):
        meta = f.metadata.get("cli", {})
        typ = str if meta.get("text") else cli_type(hints[f.name])
        if meta.get("hidden") or typ is None:
            continue
        default = _default_text(f)
        text = helps.get(f.name, "") + (f" [default: {default}]" if default and default != "required" else "")
        metavar = meta.get("metavar")
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if meta.get("argument"):
            info: Any = typer.Argument(help=text, show_default=False, metavar=metavar or f.name.upper())
            if required:  # a missing SRC is typer's usage error (exit 2), as before
                params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[typ, info]))
                continue
        elif typ is bool:
            flag = (meta.get("flags") or (_flag(f.name),))[0]
            # a flag that is on by default needs its off form; one that is off by default reads better alone
            info = typer.Option(f"{flag}/--no-{flag[2:]}" if f.default is True else flag, help=text, show_default=False,
                                rich_help_panel=meta.get("panel"))  # fmt: skip
        else:
            info = typer.Option(*(meta.get("flags") or (_flag(f.name),)), help=text, show_default=False, metavar=metavar,
                                rich_help_panel=meta.get("panel"))  # fmt: skip
        if meta.get("multiple"):
            typ = list[typ]  # type: ignore[valid-type]
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Annotated[typ | None, info]))  # fmt: skip
    return params


def option_params(stage: Stage) -> list[inspect.Parameter]:
    """The stage's settings outside its Config, then ``--workers`` / ``--version`` where they apply."""
    params = []
    for o in stage.options:
        typ = cli_type(o.type) or str
        flags = o.flags or (_flag(o.name),)
        info = typer.Option(*flags, help=o.help, show_default=False)
        params.append(inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=o.default,
                                        annotation=Annotated[typ | None, info]))  # fmt: skip
    if stage.workers and "workers" not in stage.config_fields():
        info = typer.Option("--workers", "-j", help="Processes for per-sample work (default: one per core).")
        annotation = Annotated[int | None, info]
        params.append(inspect.Parameter("workers", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation))
    if stage.reads_version or stage.kind == OUTPUT:
        params.append(inspect.Parameter("version", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=VersionOpt))
    kw = inspect.Parameter.KEYWORD_ONLY
    params += [
        inspect.Parameter("workspace", kw, default=DEFAULT_WS, annotation=WorkspaceOpt),
        inspect.Parameter("json_out", kw, default=False, annotation=JsonOpt),
        inspect.Parameter("debug", kw, default=False, annotation=DebugOpt),
    ]
    return params


def run_command(stage: Stage, values: dict[str, Any]) -> None:
    """The body of every generated command: resolve the settings, run the stage, print its summary."""
    from curate.config import command_config
    from curate.pipeline import execute
    from curate.stage import HEAD, Context, rich_progress
    from curate.ui import emit_json
    from curate.workspace import Workspace

    json_out = values["json_out"]
    ws = Workspace(values["workspace"])
    fields = stage.config_fields()
    given = {k: v for k, v in values.items() if k in fields and v is not None and v not in ([], ())}  # empty: a repeatable not given
    if stage.prepare is not None:  # flags are text the way file values are ("80:10:10", "64MB")
        given = stage.prepare(given)
    cfg = command_config(stage.config, stage.name, ws.root, given, prepare=stage.prepare)
    options = {o.name: values.get(o.name) for o in stage.options}
    workers = cfg.workers if "workers" in fields else values.get("workers")
    ctx = Context(ws, base=values.get("version") or HEAD, workers=workers, progress=rich_progress(not json_out),
                  log=(lambda _s: None) if json_out else say, options=options)  # fmt: skip
    res = execute(stage, ctx, cfg)
    code = res.pop("exit_code", 0) if isinstance(res, dict) else 0
    if json_out:
        emit_json(res)
    else:
        human_summary(stage, res)
    if code:
        raise typer.Exit(code)


def human_summary(stage: Stage, res: dict[str, Any]) -> None:
    """``<stage> -> <version>[ (cached ...)]: <summary>`` for a version, the summary alone otherwise; then details."""
    line = stage.one_line(res)
    if "version" in res and "stats" in res and stage.kind != OUTPUT:
        cached = " (cached: same parent and settings)" if res.get("cached") else ""
        line = f"{stage.name} -> {res['version']}{cached}" + (f": {line}" if line else "")
    if line:
        say(line)
    for extra in stage.details(res) if stage.details is not None else []:
        say(f"  {extra}")


def build(stage: Stage) -> Callable[..., None]:
    """The Typer command function of ``stage`` (its signature carries the generated options)."""

    def command(**values: Any) -> None:
        run_command(stage, values)

    params = config_params(stage) + option_params(stage)
    taken = {p.name for p in params}
    shown = {f.name for f in dataclasses.fields(stage.config) if not f.metadata.get("cli", {}).get("hidden")}
    clash = taken & shown & set(_COMMON) - {"workers"}  # a hidden field (train's ``version``) is set by the runner
    if clash:
        raise RuntimeError(f"stage {stage.name}: Config fields {sorted(clash)} clash with the common options")
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__doc__ = inspect.cleandoc(stage.doc) if stage.doc else None
    command.__name__ = stage.name.replace("-", "_")
    return command


def register(app: typer.Typer, stage: Stage) -> None:
    """Add ``stage``'s generated command to ``app`` under the stage's help panel."""
    app.command(name=stage.name, rich_help_panel=stage.panel)(handle_errors(build(stage)))


__all__ = ["Option", "build", "cli_type", "register", "run_command"]
