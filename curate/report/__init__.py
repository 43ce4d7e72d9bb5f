"""``curate report``: one self-contained HTML page about a dataset version and (optionally) a training run.

Sections, in page order: overview; lineage (every version back to the first with rows and included counts in ->
out, newly excluded by stage:reason); class distribution per split (before and after balancing when a balance
stage ran); excluded samples by stage and reason with sampled thumbnails; duplicate groups side by side; label
issues (given vs suggested label, worst first); outliers, low-quality and filtered images; the normalization
statistics and pixel histogram; pseudo-label rounds; the training run (curves, metrics, confusion matrices, the
most confident mistakes); bias / variance / data mismatch (the run's train, train-dev, dev and test errors against
an optional human-level error); error analysis by cause (tagged rows per cause and class). A section the workspace
has nothing for is listed at the end with what to run.

Size: thumbnails are at most 96 px a side and every gallery holds at most ``max_gallery`` images (a seeded sample,
or the worst first where there is an order), so the page stays small (well under 20 MB) however large the dataset.
The same workspace, run and seed give the same bytes: the page has no timestamp.

Modules: ``collect`` (overview, lineage, classes, excluded, duplicates), ``issues`` (label issues, flags,
normalization, pseudo-labels), ``training`` (the run), ``gallery`` (sampling, thumbnails), ``plots`` (matplotlib
-> PNG data URIs), ``html`` (escaping renderer).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curate.errors import CurateError, UsageError
from curate.schema import RESERVED
from curate.stage import Progress, no_progress

if TYPE_CHECKING:
    from curate.workspace import Workspace

#: Sample-table columns the sections read besides those the registered stages declare (``Stage.columns``, added by
#: ``_columns``): the reserved ones, and the review desk's (its versions are committed by ``curate review``, not by a
#: registered stage).
COLUMNS = (*RESERVED, "review_tags", "review_decision")


def _columns(ws: Workspace, vid: str) -> list[str]:
    names = ws.info(vid).get("columns")
    if not names:
        import pyarrow.parquet as pq

        first = sorted((ws.path(vid) / "samples").glob("part-*.parquet"))[0]
        names = pq.read_schema(first).names
    from curate.registry import declared

    wanted = dict.fromkeys([*COLUMNS, *(c for stage in declared() for c in stage.columns)])
    return [c for c in wanted if c in names]


def _check_writable(out: Path) -> None:
    """Fail before any work when ``out`` cannot be written (its folder is made when missing)."""
    if out.is_dir():
        raise CurateError(f"report output {out} is a folder", hint="pass a file name such as report.html", exit_code=2)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = out.parent / f".tmp-report-{os.getpid()}-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise CurateError(f"cannot write report {out}: {exc.strerror or exc}", hint="choose another -o path") from exc


def write_report(
    ws: Workspace,
    out: Path,
    *,
    version: str | None = None,
    run: Path | None = None,
    max_gallery: int = 48,
    seed: int = 0,
    models: Path | None = None,
    progress: Progress | None = None,
    human_error: float | None = None,
    tags: Path | None = None,
) -> dict[str, Any]:
    """Write the HTML report of ``version`` (default HEAD) of ``ws`` to ``out``.

    Args:
        ws: a ``curate.workspace.Workspace``.
        out: the HTML file; its folder is created; written to a temporary name and renamed into place.
        version: a version reference (``HEAD``, ``HEAD~1``, ``3``, ``000003-split``).
        run: a training run folder; None picks the newest run under ``models`` trained on the version, if any.
        max_gallery: most thumbnails per gallery (and per duplicate-group section).
        seed: the seed of the sampled galleries.
        models: where to look for runs when ``run`` is None (default ``ws.models_dir()``; when that folder does not
            exist, ``./models``, where ``curate train`` put its runs before the workspace held them).
        progress: ``progress(description, total)`` -> context manager yielding ``advance(n)`` (the CLI's bar).
        human_error: the human-level error (0..1) of the bias / variance / data-mismatch table; None: unknown.
        tags: a tags CSV (``curate.review.tags.read_tags_csv``), counted with the version's ``review_tags`` by cause.

    Returns:
        ``{"path", "bytes", "version", "run", "sections" (ids rendered), "omitted" (id -> why), "images",
        "images_failed", "seed", "max_gallery", "diagnosis" (bias / variance / mismatch, or None), "causes" (counts
        per cause and class, or None)}``, JSON-able.

    Raises:
        CurateError: empty workspace or unknown version, ``run`` missing or not a run, ``out`` not writable, a tags
            CSV that cannot be read or names a sample the version does not have.
        UsageError: a negative ``max_gallery``.
    """
    from curate import __version__
    from curate.report import analysis, collect, issues, training
    from curate.report.gallery import fill_thumbnails
    from curate.report.html import render

    out = Path(out)
    vid, run_dir, run_why = _resolve(ws, out, version, run, models, max_gallery, human_error)
    ctx = collect.Context(ws, vid, ws.samples(vid, columns=_columns(ws, vid)), ws.lineage(vid), max_gallery, seed)
    tagged, tag_source = _tags(ctx.table, tags)  # read before any work: a bad file fails at once
    builders: list[Callable[[collect.Context], dict[str, Any]]] = [
        collect.overview, collect.lineage, collect.classes, collect.excluded, collect.duplicates,
        issues.label_issues, issues.flagged, issues.normalization, issues.pseudolabels,
        lambda c: training.training(c, run_dir, run_why),
        lambda c: analysis.bias_variance(c, run_dir, human_error, run_why),
        lambda c: analysis.causes(c, tagged, tag_source),
    ]  # fmt: skip
    bar = progress or no_progress
    sections = []
    with bar("report sections", len(builders)) as advance:
        for build in builders:
            sections.append(build(ctx))
            advance(1)
    items = [it for s in sections for b in s["blocks"] for it in _items(b)]
    with bar("thumbnails", len({it["sample_id"] for it in items})) as advance:
        thumbs = fill_thumbnails(ws, items, advance=advance)
    page = render(
        f"curate report: {ws.root.name or ws.root} @ {vid}",
        f"workspace {ws.location}, version {vid}; curate {__version__}; galleries hold at most {max_gallery} images "
        f"(sampled with seed {seed} or worst first)",
        sections,
    )
    data = page.encode("utf-8")
    _write_atomically(out, data)
    where = {"path": str(out), "bytes": len(data), "version": vid, "run": str(run_dir) if run_dir is not None else None}
    return {**where, **_outline(sections), "images": thumbs["images"], "images_failed": thumbs["failed"], "seed": seed,
            "max_gallery": max_gallery}  # fmt: skip


def _outline(sections: list[dict[str, Any]]) -> dict[str, Any]:
    """The sections rendered and omitted (with why), and the diagnosis and cause counts when there are any."""
    return {
        "sections": [s["id"] for s in sections if not s.get("omitted")],
        "omitted": {s["id"]: s["omitted"] for s in sections if s.get("omitted")},
        "diagnosis": next((s["diagnosis"] for s in sections if "diagnosis" in s), None),
        "causes": next((s["counts"] for s in sections if "counts" in s), None),
    }


def _resolve(
    ws: Workspace, out: Path, version: str | None, run: Path | None, models: Path | None, max_gallery: int,
    human_error: float | None,
) -> tuple[str, Path | None, str]:
    """Check the settings and ``out``, resolve the version and find the run: ``(vid, run folder or None, why not)``."""
    from curate.report import training

    if max_gallery < 0:
        raise UsageError(f"--max-gallery must be >= 0, not {max_gallery}")
    if human_error is not None and not 0 <= human_error < 1:
        raise UsageError(f"--human-error {human_error}: give an error rate in [0, 1), e.g. 0.02 for 2%")
    vid = ws.resolve(version)
    if models is None:
        models = ws.models_dir() if ws.models_dir().is_dir() else training.LEGACY_MODELS
    run_dir, run_why = training.find_run(vid, Path(run) if run is not None else None, models)
    _check_writable(out)
    return vid, run_dir, run_why


def _write_atomically(out: Path, data: bytes) -> None:
    """Write to a temporary name beside ``out`` and rename it into place: a reader never sees half a report."""
    tmp = out.with_name(f".tmp-{os.getpid()}-{out.name}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, out)
    except OSError as exc:
        raise CurateError(f"cannot write report {out}: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _tags(table: Any, path: Path | None) -> tuple[dict[str, list[str]], str]:
    """sample_id -> causes from the version's ``review_tags`` and the CSV at ``path``, and a phrase naming the sources."""
    from curate.review.tags import TAGS_COLUMN, merge_tags, read_tags_csv, tags_from_table

    stored = tags_from_table(table)
    given = read_tags_csv(path, table) if path is not None else {}
    names = ([f"the {TAGS_COLUMN} column"] if stored else []) + ([str(path)] if path is not None else [])
    return merge_tags(stored, given), " and ".join(names) or "nowhere"


def _items(block: dict[str, Any]) -> list[dict[str, Any]]:
    if block["kind"] == "gallery":
        return list(block["items"])
    if block["kind"] == "groups":
        return [it for g in block["groups"] for it in g["items"]]
    return []


__all__ = ["write_report"]
