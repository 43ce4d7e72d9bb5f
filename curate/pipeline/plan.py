"""Pipeline files: parse, apply ``--set``, and resolve and check every step's settings before anything runs.

A pipeline file is TOML with one ``[pipeline]`` table (``name``, ``description``, ``workspace``, ``seed``,
``workers``) and an ordered array of ``[[step]]`` tables, each ``stage = "<name>"`` plus that stage's settings
inline. Settings resolve as the stage Config's defaults < ``[pipeline] seed`` (for stages with a seed) < the step's
table < ``--set``. Every problem (unknown table, stage or key, a value of the wrong type, an impossible setting)
is a ``UsageError`` naming the file, the step and the key, raised before the first step starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate.config import coerce, resolve
from curate.errors import CurateError, UsageError
from curate.registry import get
from curate.stage import Stage
from curate.workspace import config_sha256

PIPELINE_KEYS: dict[str, Any] = {"name": str, "description": str, "workspace": str, "seed": int, "workers": int}
_SET = re.compile(r"^(?P<target>[a-z_]+)(?:#(?P<n>\d+))?\.(?P<key>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>.*)$", re.S)


@dataclass
class PlannedStep:
    """One step with its settings resolved and checked.

    Attributes:
        index: 1-based position in the file.
        label: the stage name, ``stage#N`` when the stage appears more than once.
        config: the stage's Config instance.
        options: the step's settings outside the config (``workers``, ``review_out`` ...).
        config_sha256: hash of the resolved config (what the journal records).
    """

    index: int
    label: str
    step: Stage
    config: Any
    options: dict[str, Any]
    config_sha256: str

    @property
    def stage(self) -> str:
        return self.step.name


@dataclass
class Plan:
    """A validated pipeline file."""

    path: Path
    name: str
    description: str
    workspace: str | None
    file_sha256: str
    steps: list[PlannedStep] = field(default_factory=list)


def parse_value(text: str) -> Any:
    """A ``--set`` value as a TOML value (``3``, ``0.5``, ``true``, ``"x"``, ``[1, 2]``), else the plain text."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_sets(items: list[str]) -> list[tuple[str, int | None, str, Any]]:
    """``["clean.folds=3", "export#2.out=x"]`` -> ``[(target, n or None, key, value), ...]``."""
    out = []
    for item in items:
        m = _SET.match(item.strip())
        if not m:
            raise UsageError(f"--set {item!r}: write STAGE.KEY=VALUE, STAGE#N.KEY=VALUE or pipeline.KEY=VALUE")
        out.append((m["target"], int(m["n"]) if m["n"] else None, m["key"], parse_value(m["value"])))
    return out


def load_plan(path: Path, sets: list[str] | None = None, *, workers: int | None = None) -> Plan:
    """Read, override and validate a pipeline file.

    Args:
        path: the ``.toml`` file.
        sets: ``--set`` items.
        workers: ``--workers``: the worker processes of every step that has them.

    Raises:
        UsageError: anything wrong with the file or the overrides (exit code 2).
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the pipeline file ({exc.strerror or exc})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: invalid TOML ({exc})") from None
    extra = sorted(set(data) - {"pipeline", "step"})
    if extra:
        raise UsageError(f"{path}: unknown top-level key(s) {', '.join(extra)}; a pipeline has a [pipeline] table and [[step]] tables")
    head = data.get("pipeline", {})
    steps = data.get("step")
    if not isinstance(head, dict) or not isinstance(steps, list) or not steps or not all(isinstance(s, dict) for s in steps):
        raise UsageError(f'{path}: needs a [pipeline] table and at least one [[step]] table with stage = "NAME"')
    overrides = parse_sets(sets or [])
    for target, _n, key, value in overrides:
        if target == "pipeline":
            head = {**head, key: value}
    for key, value in head.items():
        if key not in PIPELINE_KEYS:
            raise UsageError(f"{path}: [pipeline]: unknown key {key!r}; known: {', '.join(PIPELINE_KEYS)}")
        coerce(value, PIPELINE_KEYS[key], key, f"{path}: [pipeline]")
    stages = [s.get("stage") for s in steps]
    for target, n, key, _value in overrides:
        if target != "pipeline" and (stages.count(target) == 0 or (n is not None and not 1 <= n <= stages.count(target))):
            where = f"{target}#{n}" if n else target
            raise UsageError(f"--set {where}.{key}: {path} has no {where} step (steps: {', '.join(map(str, stages))})")
    plan = Plan(path, re.sub(r"[^A-Za-z0-9_.-]", "_", str(head.get("name") or path.stem)), head.get("description", ""),
                head.get("workspace"), hashlib.sha256(text.encode()).hexdigest())  # fmt: skip
    seen: dict[str, int] = {}
    for i, table in enumerate(steps, 1):
        stage = table.get("stage")
        if not isinstance(stage, str):
            raise UsageError(f'{path}: step {i}: needs stage = "NAME"')
        try:
            step = get(stage)
        except UsageError as exc:
            raise UsageError(f"{path}: step {i}: {exc.message}") from None
        seen[stage] = seen.get(stage, 0) + 1
        label = f"{stage}#{seen[stage]}" if stages.count(stage) > 1 else stage
        values = {k: v for k, v in table.items() if k != "stage"}
        if workers is not None and step.workers:
            values["workers"] = workers  # the file < --workers < --set
        for target, n, key, value in overrides:
            if target == stage and n in (None, seen[stage]):
                values[key] = value
        plan.steps.append(_plan_step(path, i, label, step, values, head))
    return plan


def _plan_step(path: Path, i: int, label: str, step: Stage, values: dict[str, Any], head: dict[str, Any]) -> PlannedStep:
    origin = f"{path}: step {i} ({label})"
    fields = step.config_fields()
    options: dict[str, Any] = {}
    if step.workers and "workers" in head and "workers" not in values:
        values = {**values, "workers": head["workers"]}
    if "seed" in fields and "seed" in head and "seed" not in values:
        values = {**values, "seed": head["seed"]}
    if step.workers and "workers" in values and "workers" not in fields:
        options["workers"] = coerce(values.pop("workers"), int, "workers", origin)
    for key in list(values):
        opt = step.option(key)
        if opt is not None:
            options[key] = coerce(values.pop(key), opt.type, key, origin)
    try:
        if step.prepare is not None:
            values = step.prepare(values)
        unknown = sorted(set(values) - set(fields))
        if unknown:
            known = sorted([*fields, *(o.name for o in step.options), *(["workers"] if step.workers else [])])
            raise UsageError(f"{origin}: unknown setting {unknown[0]!r}; known: {', '.join(sorted(set(known)))}")
        cfg = resolve(step.config, values, {}, origin=origin)
        if step.check is not None:
            step.check(cfg)
    except TypeError as exc:  # a required setting without a value (ingest's source)
        if "required" not in str(exc):
            raise
        missing = ", ".join(re.findall(r"'(\w+)'", str(exc))) or str(exc)
        raise UsageError(
            f"{origin}: {missing} is required", hint=f"set it in the file or with --set {step.name}.{missing}=..."
        ) from None
    except CurateError as exc:
        message = exc.message if exc.message.startswith(str(path)) else f"{origin}: {exc.message}"
        raise UsageError(message, hint=exc.hint) from None
    return PlannedStep(i, label, step, cfg, options, config_sha256(dataclasses.asdict(cfg)))
