"""The registry of stages: what ``curate run``, the CLI, the report and the Python API know by name.

Built-in stages are listed once in ``_builtin`` (one line each, in the order of ``curate --help``). Stages from
other packages join through the ``curate.stages`` entry-point group (``[project.entry-points."curate.stages"]
shout = "mypkg.shout"``) or the ``CURATE_STAGES`` environment variable (comma-separated module names); either way
the module's ``STAGE`` is read, and a module that cannot be imported or has no ``STAGE`` is a one-line error.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from curate.errors import UsageError
from curate.stage import Stage

_STAGES: dict[str, Stage] | None = None
#: the entry-point group of stages from other packages
GROUP = "curate.stages"


def _builtin() -> list[ModuleType]:
    from curate.stages import (
        augment,
        balance,
        clean,
        crawl,
        dedupe,
        evaluate,
        export,
        filter,
        ingest,
        normalize,
        pseudolabel,
        report,
        split,
        train,
    )

    return [ingest, crawl, dedupe, clean, filter, split, balance, normalize, augment, pseudolabel, export, train, evaluate, report]


def _plugin_modules() -> list[str]:
    names = _entry_point_modules()
    names += [n.strip() for n in os.environ.get("CURATE_STAGES", "").split(",") if n.strip()]
    return names


def _entry_point_modules(group: str = GROUP) -> list[str]:
    """The module names of the ``group`` entry points of the installed distributions.

    ``importlib.metadata.entry_points`` builds a Distribution for each of the ~200 packages of a typical venv and
    took 52-90 ms, about a tenth of ``curate --help``; reading only the ``entry_points.txt`` files that name the
    group takes a few ms. Only a file that mentions the group is handed to ``importlib.metadata`` to parse.
    """
    import sys

    marker = f"[{group}]"
    found: list[str] = []
    for entry in sys.path:
        try:
            listing = [d for d in os.scandir(entry or ".") if d.name.endswith((".dist-info", ".egg-info"))]
        except OSError:  # a zip, a missing folder
            continue
        for dist in sorted(listing, key=lambda d: d.name):
            path = os.path.join(dist.path, "entry_points.txt")
            try:
                with open(path, encoding="utf-8") as fh:
                    text = fh.read()
            except OSError:
                continue
            if marker in text:
                from importlib.metadata import Distribution

                found += [ep.value for ep in Distribution.at(dist.path).entry_points.select(group=group)]
    return list(dict.fromkeys(found))


def _load_plugin(name: str) -> Stage:
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - any failure of a plugin import is the same one-line error
        raise UsageError(f"stage module {name!r} cannot be imported: {type(exc).__name__}: {exc}") from None
    stage = getattr(module, "STAGE", None)
    if not isinstance(stage, Stage):
        raise UsageError(f"stage module {name!r} has no STAGE = curate.stage.Stage(...)")
    return stage


def stages() -> dict[str, Stage]:
    """Every stage by name: the built-in ones, then plugins (which may not reuse a built-in name)."""
    global _STAGES
    if _STAGES is None:
        found: dict[str, Stage] = {}
        for stage in declared():
            if stage.name in found:
                raise UsageError(f"a stage module declares the stage name {stage.name!r}, which is taken")
            found[stage.name] = stage
        _STAGES = found
    return _STAGES


def declared() -> list[Stage]:
    """The declared stages in order: the built-in ones, then plugins (entry points, ``CURATE_STAGES``)."""
    return [m.STAGE for m in _builtin()] + [_load_plugin(name) for name in _plugin_modules()]


def get(name: str) -> Stage:
    """The stage of a name.

    Raises:
        UsageError: no such stage (the message lists the known ones).
    """
    found = stages()
    if name not in found:
        raise UsageError(f"unknown stage {name!r}; known: {', '.join(found)}")
    return found[name]


def reset() -> None:
    """Forget the loaded registry (tests that add a plugin stage through ``CURATE_STAGES``)."""
    global _STAGES
    _STAGES = None
