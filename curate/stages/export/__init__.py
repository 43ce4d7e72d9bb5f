"""Export: the included rows of a version as training shards (Parquet and/or WebDataset), one folder per format.

The contract of ``curate export`` (an output: it reads a version and writes files, it commits nothing). The work
is in ``curate.stages.export.write`` (shards, ``index.json``, ``dataset.json``) and ``curate.stages.export.sink``
(a local folder committed by rename, or a bucket). Without ``out`` the export goes to ``ws.export_dir(version)``.

In a pipeline (``ctx.reuse``) an export whose ``dataset.json`` names the same version, lineage and shard settings,
and whose every indexed shard is there with its size, is returned as it is (``cached``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from curate.errors import UsageError
from curate.stage import OUTPUT, Context, Stage, cli

FORMATS = ("parquet", "webdataset")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b)\s*$", re.I)


@dataclass(frozen=True)
class ExportConfig:
    """Settings of ``curate export``.

    Attributes:
        formats: Comma-separated: parquet,webdataset (in files: ``format`` or ``formats``, a list or that text).
        shard_size: Samples per shard (10000) or bytes per shard (256MB); one size sets both limits: a row count
            clears the byte limit and vice versa.
        shard_rows: at most this many samples per shard (None: no row limit).
        shard_bytes: at most about this many image bytes per shard (None: no byte limit).
        min_shards: At least this many shards per split when it has the rows (one per loader worker).
        out: Folder or bucket URL s3://b/prefix (default WORKSPACE/exports/VERSION).
        memory_bytes: image bytes held in memory at once while writing.
    """

    formats: tuple[str, ...] = field(default=FORMATS, metadata=cli("--format", "-f", metavar="FORMATS"))
    shard_size: str | None = field(default=None, metadata=cli(metavar="ROWS|SIZE"))
    shard_rows: int | None = field(default=10_000, metadata=cli(hidden=True))
    shard_bytes: int | None = field(default=None, metadata=cli(hidden=True))
    min_shards: int = 4
    out: str | None = field(default=None, metadata=cli("--out", "-o"))
    memory_bytes: int = field(default=512 << 20, metadata=cli(hidden=True))

    def __post_init__(self) -> None:
        # ``shard_size`` is how people write the two limits; it is spent here, so a Config never holds both forms
        # (flags drop None values, so ``prepare`` alone could not clear the other limit).
        if self.shard_size is not None:
            rows, nbytes = parse_shard_size(self.shard_size)
            object.__setattr__(self, "shard_rows", rows)
            object.__setattr__(self, "shard_bytes", nbytes)
            object.__setattr__(self, "shard_size", None)


def parse_shard_size(text: str) -> tuple[int | None, int | None]:
    """``"5000"`` -> (5000 rows, None); ``"256MB"``/``"1GiB"`` -> (None, bytes)."""
    text = str(text).strip()
    if text.isdigit() and int(text) > 0:
        return int(text), None
    m = _SIZE.match(text)
    if not m:
        # A value the user typed that is not a size: a user error (exit 1), like an unknown version.
        raise UsageError(f"--shard-size {text!r}: give a row count (5000) or a size (256MB, 1GiB)")
    unit = m.group(2).lower()
    power = "kmgt".index(unit[0]) + 1
    base = 1024 if "i" in unit else 1000
    return None, int(float(m.group(1)) * base**power)


def parse_formats(text: str) -> tuple[str, ...]:
    """``"parquet, webdataset"`` -> ``("parquet", "webdataset")``; unknown names are a usage error."""
    fmts = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise UsageError(f"--format {text!r}: choose from {', '.join(FORMATS)} (comma-separated)")
    return fmts


def prepare(values: dict[str, Any]) -> dict[str, Any]:
    """File and flag values -> ExportConfig fields: ``shard_size = "5000"`` / ``"256MB"`` checked (ExportConfig turns
    it into ``shard_rows`` / ``shard_bytes``); ``format`` (or ``formats``) ``= "parquet,webdataset"`` -> ``formats``."""
    values = dict(values)
    if values.get("shard_size") is not None:  # checked here, spent by ExportConfig (both limits at once)
        values["shard_size"] = str(values["shard_size"])
        parse_shard_size(values["shard_size"])
    for key in ("format", "formats"):
        fmt = values.pop(key, None)
        if fmt is not None:
            values["formats"] = parse_formats(fmt if isinstance(fmt, str) else ",".join(map(str, fmt)))
    return values


def check(cfg: ExportConfig) -> None:
    """Reject unknown shard formats, and shard sizes or a minimum shard count below 1 (exit code 2)."""
    bad = [f for f in cfg.formats if f not in FORMATS]
    if bad or not cfg.formats:
        raise UsageError(f"export formats {list(cfg.formats)}: choose from {', '.join(FORMATS)}")
    if any(v is not None and v < 1 for v in (cfg.shard_rows, cfg.shard_bytes, cfg.min_shards)):
        raise UsageError("shard_rows, shard_bytes and min_shards must be at least 1")


def run(ctx: Context, cfg: ExportConfig) -> dict[str, Any]:
    """Write the shards of the chosen version (HEAD by default); a pipeline reuses a finished identical export."""
    from curate.stages.export.write import export_version, finished_export

    ws = ctx.ws
    if ctx.reuse:
        done = finished_export(ws, ws.resolve(ctx.version()), cfg)
        if done is not None:
            return done
    with ws.writer():  # no commit, but a version must not be garbage-collected while it is read
        vid = ws.resolve(ctx.version())
        with ctx.progress("export", ws.info(vid)["included"]) as advance:
            res = export_version(ws, vid, cfg, advance=advance)
    return {**res, "cached": False} if ctx.reuse else res


def summary(res: dict[str, Any]) -> str:
    """``N shards, train 7,000, val 2,000 -> OUT`` (the pipeline table)."""
    return f"{res['shards']} shards, " + ", ".join(f"{s} {n:,}" for s, n in res["splits"].items()) + f" -> {res['out']}"


def details(res: dict[str, Any]) -> list[str]:
    """The command's line: version, formats, bytes and speed."""
    from curate.cli.common import human_bytes

    splits = ", ".join(f"{s} {n:,}" for s, n in res["splits"].items())
    return [f"export {res['version']} -> {res['out']}: {res['shards']} shards ({', '.join(res['formats'])}), {splits}; "
            f"{human_bytes(res['bytes'])} in {res['seconds']:.1f}s ({res['mb_per_s']} MB/s)"]  # fmt: skip


STAGE = Stage(
    "export",
    ExportConfig,
    run,
    kind=OUTPUT,
    doc="""Write the included rows of a version as training shards per split.

    Writes parquet/{split}-NNNNNN.parquet and/or webdataset/{split}-NNNNNN.tar (one folder per format, shards
    only, so `parquet/*.parquet` reads exactly the rows), index.json (file, rows, bytes, sha256) and dataset.json
    (classes, counts, lineage, normalization, image mode and channels). A version without splits exports as `all`.
    Exporting the same version twice gives byte-identical files. Settings may also come from [export] in curate.toml.

    Examples:

        curate export
        curate export --format webdataset --shard-size 256MB --out shards/
        curate export --out s3://bucket/datasets/v3      # credentials: AWS_* variables, ~/.aws, fsspec config
    """,
    summary=summary,
    details=details,
    check=check,
    prepare=prepare,
)
