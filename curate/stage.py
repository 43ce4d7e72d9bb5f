"""The stage contract: one ``Stage`` value per stage module, read by the runner, the CLI, the report and the API.

A stage module declares, in one place, everything the rest of curate needs to know about it::

    @dataclass(frozen=True)
    class Config:
        \"\"\"Settings of ``curate shout``.

        Attributes:
            times: how often to shout (the help text of ``--times``).
        \"\"\"

        times: int = 2

    def run(ctx: Context, cfg: Config) -> StageResult:
        table = ctx.table()
        ...
        return StageResult(table, stats={"shouted": n})

    STAGE = Stage("shout", Config, run, doc="Shout at every sample.", columns={"shouted": "how loud (0..1)"},
                  summary=lambda res: f"{res['stats']['shouted']} shouted")

The runner (``curate.pipeline.execute``) resolves the parent, reuses a version made from the same parent and
settings, calls ``run`` under the workspace lock and commits what it returns; a stage never commits, never joins
paths under the workspace (``ctx.ws`` owns them) and never calls another stage. ``curate.registry`` lists the
stages; ``curate.cli.stagecmd`` builds each one's Typer command from its ``Config`` (field docs from the
``Attributes:`` section are the help text, defaults are written once, in the dataclass).

Stage modules keep their top-level imports light (no pyarrow, numpy or torch): the CLI imports every one of them
to build ``curate --help``, which must stay instant.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from curate.workspace import Workspace

#: ``source`` commits a version from outside inputs, ``stage`` commits a child of the version it is given,
#: ``output`` reads a version and writes files (shards, a model, a report) without committing one.
SOURCE, STAGE, OUTPUT = "source", "stage", "output"
Kind = Literal["source", "stage", "output"]
#: Build on the workspace's HEAD (the CLI); a pipeline passes its own position instead.
HEAD = "HEAD"

Advance = Callable[..., None]


class Progress(Protocol):
    """The one progress shape: ``with ctx.progress("signatures", total) as advance: advance(n)``."""

    def __call__(self, description: str, total: int | None) -> AbstractContextManager[Advance]: ...


@contextmanager
def no_progress(_description: str, _total: int | None) -> Iterator[Advance]:
    """A progress bar that shows nothing (``--json``, tests, library use)."""
    yield lambda n=1: None


class RichProgress:
    """Rich bars on stderr (``curate.ui``), shown when stderr is a terminal: the one shape, and named richer bars
    of their own shape for ``Context.bar`` (``crawl``: ``update(done, known, failed, bytes)``)."""

    def __call__(self, description: str, total: int | None) -> AbstractContextManager[Advance]:
        from curate.ui import progress

        return progress(description, total)

    def crawl(self, total: int | None) -> AbstractContextManager[Callable[[int, int | None, int, int], None]]:
        from curate.ui import crawl_progress

        return crawl_progress(total)


def rich_progress(enabled: bool = True) -> Progress:
    """A rich bar on stderr when ``enabled`` and stderr is a terminal (``curate.ui.progress``)."""
    return RichProgress() if enabled else no_progress


@dataclass
class StageResult:
    """What a stage's ``run`` hands to the runner to commit.

    Attributes:
        table: the full new sample table (every row of the parent plus new ones; nothing dropped).
        stats: counts in/out, excluded by reason, seconds; merged with a summary of ``table`` at commit.
        state: files for the version's ``state/`` folder, name -> bytes.
    """

    table: pa.Table
    stats: dict[str, Any] = field(default_factory=dict)
    state: dict[str, bytes] = field(default_factory=dict)


def _quiet(_text: str) -> None:
    return None


@dataclass
class Context:
    """How a stage runs, beyond its settings. One type for the CLI, pipelines, Ray and the Python API.

    Attributes:
        ws: the workspace; it owns every path (versions, packs, exports, models, runs, crawl journals).
        base: the version to build on or read: ``HEAD`` (default), a version id, or None (an empty start, for a
            source). The runner sets ``parent`` from it under the workspace lock.
        parent: the resolved parent version id (None before the first version); set by the runner.
        workers: processes for per-sample work (None: one per core).
        progress: the progress factory (``Progress``); silent by default.
        seed: the pipeline's seed (stages with a ``seed`` setting get it as their default).
        device: ``auto``, ``cpu``, ``cuda`` or ``mps`` for stages that run a model.
        log: a stage's running commentary (training epochs); silent by default.
        reuse: pipeline mode: return work that already exists (same inputs and settings) instead of redoing it.
        options: the stage's settings outside its Config (``Stage.options``): not part of the version's cache key.
        outputs: what earlier steps of the same pipeline produced, e.g. ``{"run": <train run folder>}``.
        previous: this step's record in the previous run's journal (pipeline mode).
        data: an in-memory parent table (the Python API's pandas DataFrame or pyarrow Table) used instead of reading
            ``parent``; ``table()`` hands it to the stage as a Table (``curate.tables.as_table``).
        scratch: values a stage's ``key`` computes and its ``run`` reuses (a loaded model), per call.
    """

    ws: Workspace
    base: str | None = HEAD
    parent: str | None = None
    workers: int | None = None
    progress: Progress = no_progress
    seed: int | None = None
    device: str = "auto"
    log: Callable[[str], None] = _quiet
    reuse: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    previous: dict[str, Any] | None = None
    data: pa.Table | pd.DataFrame | None = None
    scratch: dict[str, Any] = field(default_factory=dict)

    def table(self) -> pa.Table | None:
        """The parent's sample table (``data`` when given; None when there is no parent yet)."""
        if self.data is not None:
            from curate.tables import as_table

            return as_table(self.data)
        return self.ws.samples(self.parent) if self.parent else None

    def need_table(self) -> pa.Table:
        """The parent's table, or a one-line error when the workspace has no version yet."""
        from curate.errors import CurateError

        table = self.table()
        if table is None:
            raise CurateError("the workspace has no versions yet", hint="run `curate ingest SRC` first")
        return table

    def n_workers(self) -> int:
        """``workers``, or one per core."""
        from curate.executors.local import default_workers

        return self.workers or default_workers()

    def version(self) -> str | None:
        """The version reference an output stage reads (None: HEAD)."""
        return None if self.base == HEAD else self.base

    def bar(self, name: str, total: int | None) -> AbstractContextManager[Any] | None:
        """A richer bar of its own shape (``RichProgress.crawl``) when ``progress`` offers one, else None: the
        stage then reports through ``progress``."""
        make = getattr(self.progress, name, None)
        return make(total) if make is not None else None


@dataclass(frozen=True)
class Option:
    """A setting of a stage outside its Config: it changes what happens around the version, not the version.

    Attributes:
        name: the key in pipeline files and ``ctx.options``; ``--name-with-dashes`` on the command line.
        type: ``str``, ``int``, ``float``, ``bool`` (a flag) or ``str | None`` ...
        help: the help text.
        flags: the command-line spellings (default ``--name-with-dashes``).
        default: the value when not given.
    """

    name: str
    type: Any
    help: str
    flags: tuple[str, ...] = ()
    default: Any = None


def cli(
    *flags: str,
    argument: bool = False,
    hidden: bool = False,
    metavar: str | None = None,
    text: bool = False,
    multiple: bool = False,
    panel: str | None = None,
) -> dict[str, Any]:
    """``dataclasses.field`` metadata for a Config field's command-line form.

    Args:
        flags: spellings (``"--workers", "-j"``); default ``--field-name``. A bool field may name its off form
            (``"--ignore-robots/--respect-robots"``).
        argument: a positional argument instead of an option (ingest's ``SRC``).
        hidden: settable in files and with ``--set`` only.
        metavar: the placeholder shown in the help.
        text: taken as text on the command line for ``prepare`` to parse (``--max-bytes 64MB`` of an int field).
        multiple: a repeatable option (``--seed A --seed B``) of a tuple field.
        panel: the help panel the option is listed under (default: the common one).
    """
    return {"cli": {"flags": flags, "argument": argument, "hidden": hidden, "metavar": metavar, "text": text,
                    "multiple": multiple, "panel": panel}}  # fmt: skip


def _asdict(_ctx: Context, cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


@dataclass(frozen=True)
class Stage:
    """One stage, declared once by its module (``STAGE = Stage(...)``).

    Attributes:
        name: the command and pipeline name (``stage = "dedupe"``).
        config: the frozen Config dataclass: defaults < ``curate.toml`` < pipeline file < flags.
        run: ``run(ctx, cfg)``: a ``StageResult`` to commit, or (an output, or a report-only mode) a JSON-able
            dict returned as it is.
        kind: ``source``, ``stage`` or ``output``.
        doc: the command's help: a first line, then paragraphs and examples.
        columns: the columns the stage adds, name -> meaning (read by the report and the docs).
        summary: result dict -> one short line (the pipeline table, the command's summary).
        details: result dict -> further human lines the command prints under the summary.
        check: raises ``UsageError`` for impossible settings, before any work starts.
        prepare: file or command-line values -> Config values (``"80:10:10"`` ratios, ``"64MB"`` sizes).
        key: ``(ctx, cfg) -> dict``: the settings recorded in the version and its cache key (default: the Config).
        cacheable: ``(ctx, cfg) -> bool``: reuse a version made from the same parent and key (default: stages
            yes, sources no).
        fingerprint: sources: ``(ctx, cfg) -> (stats key, value)`` of the inputs outside the workspace; in a
            pipeline an existing version with the same settings and fingerprint is reused.
        finish: ``(ctx, cfg, result) -> result`` after the commit (or the cache hit): files about the version.
        before: ``(ctx, cfg) -> [(stage name, settings), ...]``: stages the runner runs (and commits) first, each on
            the previous one's version; the stage then builds on the last of them, whose results are in
            ``ctx.scratch["before"]`` by name (pseudolabel's ``--pool``: ingest, then dedupe).
        options: settings outside the Config (``Option``), in ``ctx.options``.
        workers: ``--workers`` applies (in pipelines too).
        reads_version: the command takes ``--version`` (outputs and report-only stages read a chosen version).
        panel: the ``curate --help`` panel.
    """

    name: str
    config: type
    run: Callable[[Context, Any], Any]
    kind: Kind = STAGE
    doc: str = ""
    columns: Mapping[str, str] = field(default_factory=dict)
    summary: Callable[[dict[str, Any]], str] | None = None
    details: Callable[[dict[str, Any]], list[str]] | None = None
    check: Callable[[Any], None] | None = None
    prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    key: Callable[[Context, Any], dict[str, Any]] = _asdict
    cacheable: Callable[[Context, Any], bool] | None = None
    fingerprint: Callable[[Context, Any], tuple[str, str]] | None = None
    finish: Callable[[Context, Any, dict[str, Any]], dict[str, Any]] | None = None
    before: Callable[[Context, Any], list[tuple[str, dict[str, Any]]]] | None = None
    options: tuple[Option, ...] = ()
    workers: bool = False
    reads_version: bool = False
    panel: str = "Stages"

    def is_cacheable(self, ctx: Context, cfg: Any) -> bool:
        """Whether a version made from the same parent and key may be reused."""
        if self.cacheable is not None:
            return self.cacheable(ctx, cfg)
        return self.kind == STAGE

    def config_fields(self) -> dict[str, Any]:
        """Field name -> type hint of the Config dataclass."""
        import typing

        hints = typing.get_type_hints(self.config)
        return {f.name: hints[f.name] for f in dataclasses.fields(self.config)}

    def option(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)

    def one_line(self, res: dict[str, Any]) -> str:
        """``summary(res)``, then, for a committed (or cached) version, its included and excluded counts; a stat the
        result lacks (a version made by an older curate) drops the summary, not the counts."""
        text = ""
        if self.summary is not None:
            try:
                text = self.summary(res)
            except (KeyError, TypeError, ValueError, IndexError):
                text = ""
        stats = res.get("stats")
        summ = stats.get("summary") if isinstance(stats, dict) else None
        if self.kind == OUTPUT or "version" not in res or not isinstance(summ, dict) or "included" not in summ:
            return text
        counts = f"{summ['included']:,} included, {summ.get('excluded', 0):,} excluded"
        return f"{text}; {counts}" if text else counts


_ATTR = re.compile(r"^(\s+)(\w+)(?: \([^)]*\))?:\s?(.*)$")


def field_help(cls: type) -> dict[str, str]:
    """Field name -> its text in the ``Attributes:`` section of ``cls``'s Google-style docstring.

    Continuation lines (indented deeper than the name) join the text; a blank line or a dedent ends it.
    """
    doc = cls.__doc__ or ""
    lines = doc.expandtabs().splitlines()
    out: dict[str, str] = {}
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Attributes:")
    except StopIteration:
        return out
    name, indent = None, None
    for line in lines[start + 1 :]:
        if not line.strip():
            name = None
            if out:
                break
            continue
        m = _ATTR.match(line)
        if m and (indent is None or len(m[1]) == indent):
            indent = len(m[1])
            name = m[2]
            out[name] = m[3].strip()
        elif name is not None and indent is not None and len(line) - len(line.lstrip()) > indent:
            out[name] = f"{out[name]} {line.strip()}"
        else:
            break
    return out
