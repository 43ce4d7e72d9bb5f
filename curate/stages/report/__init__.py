"""Report: one self-contained HTML page about a version (and a training run): what every stage did and why.

The contract of ``curate report`` (an output: it writes one file, it commits nothing); the report's code is
``curate.report``. Without ``out`` the page is ``ws.report_file()`` (``<workspace>/report.html``); without ``run``
it shows the run the pipeline's train step made, else the newest run under ``ws.models_dir()`` trained on the
version. In a pipeline (``ctx.reuse``) a report recorded in the previous run's journal for the same version, run
and file, untouched since, is returned as it is (``cached``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate.stage import OUTPUT, Context, Stage, cli


@dataclass(frozen=True)
class ReportConfig:
    """Settings of ``curate report`` (a pipeline's ``report`` step).

    Attributes:
        out: The HTML file to write, its folder created (default WORKSPACE/report.html).
        run: A training run folder (curate train --out); default: the run the pipeline's train step made, else the
            newest run in WORKSPACE/models trained on the version.
        max_gallery: At most this many thumbnails per gallery, sampled or worst first.
        seed: Seed of the sampled galleries; same seed, same page.
        human_error: Human-level error (0.02 = 2%) that avoidable bias is measured against (default: 0).
        tags: CSV of error-analysis tags: sample_id (or source) and cause (several joined by ';'), counted per cause
            and per class, beside any review_tags the version carries.
    """

    out: str | None = field(default=None, metadata=cli("--out", "-o"))
    run: str | None = field(default=None, metadata=cli("--run"))
    max_gallery: int = 48
    seed: int = 0
    human_error: float | None = None
    tags: str | None = field(default=None, metadata=cli("--tags"))


def _unchanged(ctx: Context, vid: str, out: Path, asked: str | None) -> dict[str, Any] | None:
    """The previous run's result when it reported on the same version and run into ``out``, untouched since."""
    prev = ctx.previous or {}
    rec = prev.get("result", {})
    if not (ctx.reuse and out.exists() and prev.get("version") == vid):
        return None
    if (rec.get("path"), rec.get("requested"), rec.get("mtime_ns")) != (str(out), asked, out.stat().st_mtime_ns):
        return None
    return {"version": vid, "path": str(out), "run": rec.get("run"), "requested": asked, "mtime_ns": rec["mtime_ns"],
            "cached": True}  # fmt: skip


def run(ctx: Context, cfg: ReportConfig) -> dict[str, Any]:
    """Write the report of the chosen version (HEAD by default)."""
    from curate.report import write_report

    ws = ctx.ws
    vid = ws.resolve(ctx.version())
    out = Path(cfg.out) if cfg.out else ws.report_file()
    run_dir = cfg.run or ctx.outputs.get("run")
    asked = str(run_dir) if run_dir else None
    done = _unchanged(ctx, vid, out, asked)
    if done is not None:
        return done
    res = write_report(ws, out, version=vid, run=Path(run_dir) if run_dir else None, max_gallery=cfg.max_gallery,
                       seed=cfg.seed, progress=ctx.progress, human_error=cfg.human_error,
                       tags=Path(cfg.tags) if cfg.tags else None)  # fmt: skip
    if not ctx.reuse:
        return res
    return {**res, "version": vid, "requested": asked, "mtime_ns": out.stat().st_mtime_ns, "cached": False}


def summary(res: dict[str, Any]) -> str:
    """``report of VERSION -> PATH (SIZE, N thumbnails)``; ``-> PATH`` for a report reused by a pipeline."""
    if "bytes" not in res:
        return f"-> {res.get('path', '')}"
    from curate.cli.common import human_bytes

    return f"report of {res['version']} -> {res['path']} ({human_bytes(res['bytes'])}, {res['images']:,} thumbnails)"


def details(res: dict[str, Any]) -> list[str]:
    """The sections written, the largest error gap, the top tagged cause, what could not be shown."""
    if "sections" not in res:
        return []
    out = [f"sections: {', '.join(res['sections'])}"]
    if res.get("diagnosis"):
        from curate.learn.gaps import summary_line

        out.append(summary_line(res["diagnosis"]))
    if res.get("causes"):
        c = res["causes"]
        top = c["causes"][0]
        out.append(f"causes: {c['tagged']:,} tagged rows; top cause {top['cause']} ({top['rows']:,}, {100 * top['share']:.1f}%)")
    return out + [f"not shown: {sid}: {why}" for sid, why in res["omitted"].items()]


STAGE = Stage(
    "report",
    ReportConfig,
    run,
    kind=OUTPUT,
    doc="""Write one self-contained HTML page about a version: what every stage did and why.

    Sections: the lineage of versions with counts in and out per stage; classes per split before and after
    balancing; excluded samples by stage and reason with thumbnails; duplicate groups side by side; label issues
    (given vs suggested label, worst first); outliers; the normalization histogram; pseudo-label rounds; and the
    training run's curves, confusion matrices and worst errors; the run's train / train-dev / dev / test errors with
    the largest gap (avoidable bias, variance, data mismatch) named; and tagged errors counted by cause.
    Images and plots are embedded, nothing is fetched; galleries are sampled, so the file stays small for any
    dataset size.

    Examples:

        curate report -o report.html
        curate report --version 3 -o v3.html
        curate report --run models/fm -o fm.html --max-gallery 24
        curate report --human-error 0.02 --tags worst100.csv
    """,
    summary=summary,
    details=details,
    panel="Reports",
)
