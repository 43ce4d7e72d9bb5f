"""The Python API: curate from a notebook or a script, with pandas in and out.

::

    import curate

    ws = curate.Workspace("data")
    ws.ingest("images/")                   # the same stage, settings and versions as `curate ingest images/`
    ws.run("dedupe", threshold=0.9)        # any registered stage, by name
    df = ws.samples(included=True)         # HEAD's sample table as a pandas DataFrame
    preview = ws.apply("split", df, ratios="80:10:10")  # a stage on an in-memory table; nothing committed

``run`` goes through the same runner as ``curate <stage>`` and ``curate run`` (``curate.pipeline.execute``): settings
resolve as the stage's defaults < ``curate.toml`` < the keyword settings, through the stage's ``prepare`` (so
``ratios="80:10:10"`` works as on the command line) and the one coercer; an unknown key raises ``UsageError``.
Stages are looked up in ``curate.registry``, so plugin stages work here too.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from curate.errors import UsageError
from curate.stage import HEAD, STAGE, Context, Stage, StageResult

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from curate.workspace import Workspace as CoreWorkspace

__all__ = ["Workspace", "describe"]


def describe(ws: CoreWorkspace, version: str | None = None) -> dict[str, Any]:
    """What ``curate show --json`` prints: ``{"version": <version.json>, "summary": <counts>, "leakage": ...}``.

    ``summary`` holds rows, included, excluded, per class, per split, per split and class, and excluded by
    ``stage:reason`` (``curate.summary.summarize``); ``leakage`` the duplicate groups crossing splits once the
    version has both ``dup_group`` and ``split`` (else None).
    """
    from curate.summary import summarize

    vid = ws.resolve(version)
    table = ws.samples(vid)
    leaks = None
    if "dup_group" in table.column_names and table.column("split").null_count < table.num_rows:
        from curate.stages.split.assign import leakage

        leaks = leakage(table)
    return {"version": ws.info(vid), "summary": summarize(table), "leakage": leaks}


class Workspace:
    """A curate workspace for notebooks and scripts (``curate.Workspace("data")``).

    Args:
        path: the workspace folder (created on the first commit), as ``--workspace`` on the command line.

    Attributes:
        core: the ``curate.workspace.Workspace`` underneath (paths, versions, blobs).
    """

    def __init__(self, path: str | os.PathLike[str] = "data") -> None:
        from curate.workspace import Workspace as CoreWorkspace

        self.core = CoreWorkspace(path)

    def __repr__(self) -> str:
        return f"curate.Workspace({self.core.location!r})"

    @property
    def head(self) -> str | None:
        """The current version id (None before the first version)."""
        return self.core.head()

    def versions(self) -> list[dict[str, Any]]:
        """Every version's ``version.json`` (id, stage, parent, config, created, counts), oldest first."""
        return [self.core.info(v) for v in self.core.version_ids()]

    def show(self, version: str | None = None) -> dict[str, Any]:
        """Counts of a version (default HEAD), as ``curate show --json``: see ``describe``."""
        return describe(self.core, version)

    def samples(self, version: str | None = None, *, columns: list[str] | None = None, included: bool = False) -> pd.DataFrame:
        """A version's sample table (default HEAD) as a pandas DataFrame: one row per sample, excluded rows too.

        Args:
            version: an id, a number or ``HEAD~N``.
            columns: only these columns (default: all).
            included: only the rows with ``status == "ok"`` (those export and train use).

        Raises:
            CurateError: an empty workspace or an unknown version.
        """
        read = None if columns is None else list(dict.fromkeys([*columns, *(["status"] if included else [])]))
        table = self.core.samples(version, columns=read)
        if included:
            from curate.schema import included as only_included

            table = only_included(table)
            if columns is not None:
                table = table.select(columns)
        return table.to_pandas()

    def run(self, stage: str, *, version: str | None = None, workers: int | None = None, **settings: Any) -> dict[str, Any]:
        """Run a registered stage as ``curate <stage>`` does, committing its version (HEAD moves there).

        Args:
            stage: the stage name (``curate.registry``).
            version: the version to build on or read (default HEAD).
            workers: processes for per-sample work (default one per core).
            settings: the stage's settings (its Config fields and options) by name; text works where the command
                line takes text (``ratios="80:10:10"``).

        Returns:
            The runner's dict, as ``curate <stage> --json``: ``{"version", "parent", "stage", "cached", "stats"}``
            for a committed (or reused) version, the stage's own dict for outputs and report-only modes.

        Raises:
            UsageError: an unknown stage, an unknown setting or a value of the wrong type.
        """
        from curate.pipeline import execute
        from curate.registry import get

        st = get(stage)
        cfg, ctx = self._prepare(st, version, workers, settings)
        return execute(st, ctx, cfg)

    def ingest(self, source: str | os.PathLike[str], **settings: Any) -> dict[str, Any]:
        """``run("ingest", source=source, **settings)``: a folder, manifest, idx file or archive as a new version."""
        return self.run("ingest", source=os.fspath(source), **settings)

    def apply(
        self, stage: str, data: pd.DataFrame | pa.Table, *, workers: int | None = None, **settings: Any
    ) -> pd.DataFrame | dict[str, Any]:
        """Run a stage on an in-memory sample table without committing anything; the new table as a DataFrame.

        ``data`` is a DataFrame (e.g. from ``samples()``) or a pyarrow Table with the sample columns the stage
        reads; stages that need pixels read them from this workspace's blobs by ``sample_id``/``pack``.

        Returns:
            The stage's new table (every row of ``data``, with the stage's columns and exclusions), or the dict
            of a report-only mode (``check=True``).

        Raises:
            UsageError: an unknown stage or setting, a stage that does not build a table from its parent (sources,
                outputs), or one not yet on the stage contract.
        """
        from curate.registry import get

        st = get(stage)
        if st.kind != STAGE or getattr(st.run, "legacy", False):
            raise UsageError(f"stage {st.name!r} cannot run on an in-memory table", hint=f"use Workspace.run({st.name!r})")
        cfg, ctx = self._prepare(st, None, workers, settings)
        ctx.data, ctx.parent = data, self.core.head()
        if st.check is not None:
            st.check(cfg)
        res = st.run(ctx, cfg)
        return res.table.to_pandas() if isinstance(res, StageResult) else res

    def _prepare(self, st: Stage, version: str | None, workers: int | None, settings: dict[str, Any]) -> tuple[Any, Context]:
        """The stage's Config (defaults < curate.toml < ``settings``) and a Context, as the generated command builds
        them (``curate.cli.stagecmd.run_command``)."""
        from curate.config import coerce, command_config

        name = st.name
        fields = st.config_fields()
        if workers is not None and "workers" in fields:
            settings = {**settings, "workers": workers}
        options = {o.name: o.default for o in st.options}
        given: dict[str, Any] = {}
        for key, value in settings.items():
            opt = st.option(key) if key not in fields else None
            if opt is not None:
                options[key] = coerce(value, opt.type, key, f"{name}()")
            elif key in fields:
                given[key] = value
            else:
                known = sorted({*fields, *(o.name for o in st.options), *(["workers"] if st.workers else [])})
                raise UsageError(f"{name}: unknown setting {key!r}; known: {', '.join(known)}")
        if st.prepare is not None:
            given = st.prepare(given)
        try:
            cfg = command_config(st.config, st.name, self.core.root, given, prepare=st.prepare)
        except TypeError as exc:  # a required setting without a value (ingest's source)
            missing = ", ".join(re.findall(r"'(\w+)'", str(exc))) or str(exc)
            raise UsageError(f"{name}: {missing} is required") from None
        if "workers" in fields:
            workers = cfg.workers
        elif workers is not None and st.option("workers") is not None:
            options["workers"] = workers
        return cfg, Context(self.core, base=version or HEAD, workers=workers, options=options)
