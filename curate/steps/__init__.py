"""The step registry: every stage name a pipeline may list, mapped to its settings and the function that runs it.

A step function ``fn(ws, cfg, ctx) -> dict`` runs one stage on a workspace with a resolved config and returns the
dict ``curate <stage> --json`` prints. The Typer commands and ``curate run`` call the same functions, so a stage
behaves the same whichever way it is started. Entries name their objects as ``"module:attribute"`` strings and are
imported only when used: ``curate --help`` must not import torch through ``TrainConfig``.

Adding a stage to pipelines is one call (a 3-line registration)::

    register(Step("pseudolabel", config="curate.stages.pseudolabel:PseudolabelConfig",
                  run="curate.steps.selftraining:pseudolabel_step", check="curate.stages.pseudolabel:check_config"))
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from curate.errors import UsageError
from curate.pipeline import HEAD

#: Step kinds. ``source`` commits a version from outside inputs, ``stage`` commits a child of the version it is
#: given, ``output`` reads a version and writes files (shards, a model, a report) without committing one.
SOURCE, STAGE, OUTPUT = "source", "stage", "output"


def _quiet(_text: str) -> None:
    return None


@dataclass
class StepContext:
    """How a step runs, beyond its settings.

    Attributes:
        workers: processes for per-sample work (None: one per core).
        progress: progress bars on stderr (off for ``--json``).
        log: where a step's own running commentary goes (training epochs); silent by default.
        base: the version a stage builds on or an output step reads; ``HEAD`` (default): the workspace's HEAD;
            None: nothing yet (only a source step can start there).
        reuse: pipeline mode: return work that already exists (same inputs and settings) instead of redoing it.
        options: the step's settings that are not part of its stage config (``Step.options``).
        outputs: what earlier steps of the same pipeline produced, e.g. ``{"run": <train run folder>}``.
        previous: this step's record in the previous run's journal (pipeline mode), for steps with no other proof.
    """

    workers: int | None = None
    progress: bool = True
    log: Callable[[str], None] = _quiet
    base: str | None = HEAD
    reuse: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    previous: dict[str, Any] | None = None

    def n_workers(self) -> int:
        """``workers``, or one per core."""
        from curate.executors.local import default_workers

        return self.workers or default_workers()

    def bar(self, description: str) -> Callable[[int | None], Any]:
        """A ``progress(total)`` factory for stage functions (a rich bar on stderr, or a no-op)."""
        from curate.ui import progress

        return lambda total: progress(description, total, enabled=self.progress)

    def version(self) -> str | None:
        """The version reference an output step reads (None: HEAD)."""
        return None if self.base == HEAD else self.base


@dataclass(frozen=True)
class Step:
    """One registry entry.

    Attributes:
        name: the stage name used in pipeline files (``stage = "dedupe"``).
        config: ``"module:Class"`` of the stage's Config dataclass (defaults < pipeline file < ``--set``).
        run: ``"module:function"``: ``fn(ws, cfg, ctx) -> dict``.
        check: ``"module:function"`` raising ``UsageError`` for impossible settings, called before any step runs.
        prepare: ``"module:function"`` turning file values into what the Config takes (``"80:10:10"`` ratios).
        summary: ``"module:function"``: result dict -> one short line for the pipeline table.
        kind: ``source``, ``stage`` or ``output`` (see the module constants).
        options: settings of the step that are not part of the stage config (not in its cache key): name -> type.
        workers: ``curate run --workers`` applies (as the ``workers`` option or config field).
    """

    name: str
    config: str
    run: str
    check: str | None = None
    prepare: str | None = None
    summary: str | None = None
    kind: str = STAGE
    options: dict[str, type] = field(default_factory=dict)
    workers: bool = False

    def load(self, attr: str) -> Any:
        """Import the object one of the ``"module:attribute"`` fields names (None when unset)."""
        target = getattr(self, attr)
        if target is None:
            return None
        module, _, name = target.partition(":")
        return getattr(importlib.import_module(module), name)

    def config_fields(self) -> dict[str, Any]:
        """Field name -> type hint of the Config dataclass."""
        cls = self.load("config")
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


STEPS: dict[str, Step] = {}


def register(step: Step) -> Step:
    """Add (or replace) a registry entry; returns it."""
    STEPS[step.name] = step
    return step


def get(name: str) -> Step:
    """The entry of a stage name.

    Raises:
        UsageError: no such stage (the message lists the known ones).
    """
    if name not in STEPS:
        raise UsageError(f"unknown stage {name!r}; known: {', '.join(STEPS)}")
    return STEPS[name]


_W = {"workers": int}
_S, _C = "curate.steps.sources", "curate.steps.curation"
register(Step("ingest", "curate.stages.ingest:IngestConfig", f"{_S}:ingest_step", prepare=f"{_S}:prepare_ingest",
              summary=f"{_S}:summary", kind=SOURCE, options=_W, workers=True))  # fmt: skip
register(Step("crawl", "curate.stages.crawl:CrawlConfig", f"{_S}:crawl_step", check="curate.stages.crawl:check_config",
              prepare=f"{_S}:prepare_crawl", summary=f"{_S}:summary", kind=SOURCE, workers=True))  # fmt: skip
register(Step("dedupe", "curate.stages.dedupe:DedupeConfig", f"{_C}:dedupe_step", check="curate.stages.dedupe:check_config",
              summary=f"{_C}:summary", options=_W, workers=True))  # fmt: skip
register(Step("clean", "curate.stages.clean:CleanConfig", f"{_C}:clean_step", check="curate.stages.clean:check_config",
              summary=f"{_C}:summary", options={**_W, "review_out": str}, workers=True))  # fmt: skip
register(Step("balance", "curate.stages.balance:BalanceConfig", f"{_C}:balance_step", check="curate.stages.balance:check_config",
              summary=f"{_C}:summary", options=_W, workers=True))  # fmt: skip
register(Step("augment", "curate.stages.augment:AugmentConfig", f"{_C}:augment_step", check="curate.stages.augment:check_config",
              summary=f"{_C}:summary", options=_W, workers=True))  # fmt: skip
register(Step("filter", "curate.stages.filter:FilterConfig", f"{_C}:filter_step", check="curate.stages.filter:check_config",
              summary=f"{_C}:summary"))  # fmt: skip
register(Step("pseudolabel", "curate.stages.pseudolabel:PseudolabelConfig", "curate.steps.selftraining:pseudolabel_step",
              check="curate.stages.pseudolabel:check_config", summary="curate.steps.selftraining:summary",
              options={**_W, "pool": str}, workers=True))  # fmt: skip


def legacy_stages() -> list[Any]:
    """The entries not yet declared as a ``curate.stage.Stage`` by their module, as Stages whose ``run`` commits by
    itself (``run.legacy``): transitional, while the stages move to the one contract (issue 15)."""
    from curate.stage import Option, Stage, no_progress

    out = []
    for step in STEPS.values():

        def run(ctx: Any, cfg: Any, _step: Step = step) -> dict[str, Any]:
            sctx = StepContext(workers=ctx.workers, progress=ctx.progress is not no_progress, log=ctx.log, base=ctx.base,
                               reuse=ctx.reuse, options=ctx.options, outputs=ctx.outputs, previous=ctx.previous)  # fmt: skip
            return _step.load("run")(ctx.ws, cfg, sctx)

        run.legacy = True  # type: ignore[attr-defined]
        options = tuple(Option(k, t, "") for k, t in step.options.items())
        out.append(Stage(step.name, step.load("config"), run, kind=step.kind, summary=step.load("summary"),  # type: ignore[arg-type]
                         check=step.load("check"), prepare=step.load("prepare"), options=options, workers=step.workers))  # fmt: skip
    return out
