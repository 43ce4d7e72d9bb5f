"""CSV / Parquet / JSONL manifests: one row per image with a path (relative to the manifest) or URL column.

Columns are resolved before any work starts, so a wrong ``--path-col`` fails in milliseconds with the list of
columns the file does have. JSONL is strictly one object per line: a JSON array, a blank line in the middle
or a broken line fails with the line number. A list or object in the path, label or split column (a
multi-label or structured label) fails with the line or row and the value instead of becoming a class like
``"['bag', 'dark']"``.
"""

from __future__ import annotations

import io
import json
import math
import posixpath
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from curate.errors import CurateError
from curate.remote import is_remote, join, open_input, scheme
from curate.sources import Source, SourceOptions

PATH_CANDIDATES = ("path", "filepath", "file_path", "file", "filename", "image", "image_path", "url", "image_url", "uri")
LABEL_CANDIDATES = ("label", "class", "category", "target", "class_name")
SPLIT_CANDIDATES = ("split",)


def _pick(
    columns: list[str], given: str | None, candidates: tuple[str, ...], what: str, path: Path | str, *, required: bool
) -> str | None:
    if given is not None:
        if given not in columns:
            raise CurateError(
                f"{path}: no column {given!r} for the {what} (columns: {', '.join(columns) or 'none'})",
                hint=f"pass the right --{what}-col",
            )
        return given
    lower = {c.lower(): c for c in columns}
    for cand in candidates:
        if cand in lower:
            return lower[cand]
    if required:
        raise CurateError(
            f"{path}: no {what} column found (columns: {', '.join(columns) or 'none'}; looked for {', '.join(candidates)})",
            hint=f"name it with --{what}-col",
        )
    return None


def _clean(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def _jsonl_rows(path: Path | str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)``; strict about the format, tolerant of trailing blank lines."""
    blank_at: int | None = None
    seen = False
    with io.TextIOWrapper(open_input(path), encoding="utf-8-sig") as fh:  # -sig: tolerate the BOM some Windows tools write
        for lineno, line in enumerate(fh, 1):
            stripped = line.strip()
            if not stripped:
                blank_at = blank_at or lineno
                continue
            # Before the blank-line check: blank lines then `[` is still a JSON array, and saying so is the fix.
            if not seen and stripped.startswith("["):
                raise CurateError(
                    f"{path}:{lineno}: the file is a JSON array; JSONL needs one JSON object per line",
                    hint="convert it, e.g. `jq -c '.[]' file.json > file.jsonl`",
                )
            if blank_at is not None:
                raise CurateError(f"{path}:{blank_at}: blank line inside a JSONL file", hint="remove the empty line")
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CurateError(f"{path}:{lineno}: broken JSON line ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise CurateError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            seen = True
            yield lineno, obj


def _scalar(value: Any, column: str, where: str) -> Any:
    """``value`` if it is one value; a list or object (multi-label, structured) fails, naming row and value."""
    if isinstance(value, list | tuple | dict):
        shown = json.dumps(value, default=str)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        kind = "an object" if isinstance(value, dict) else "a list"
        raise CurateError(
            f"{where}: {column!r} is {kind} ({shown}); curate takes one label per image",
            hint="multi-label and structured labels are not supported: give one class per row",
        )
    return value


class ManifestSource(Source):
    """Rows of a CSV, Parquet or JSONL manifest: a local ``Path`` or an fsspec URL (``s3://b/list.csv``).

    A relative path in a manifest on a bucket is a key under the manifest's folder, in the same bucket; a path
    that would leave the bucket, an absolute local path or a ``file://`` URL there becomes a row with reason
    ``outside_source``: a manifest from a bucket must not make ingest read this machine's files.
    """

    def __init__(self, path: Path | str, fmt: str, opts: SourceOptions) -> None:
        self.path = path
        self.fmt = fmt
        self.opts = opts
        columns = self._columns()
        self.path_col = _pick(columns, opts.path_col, PATH_CANDIDATES, "path", path, required=True)
        self.label_col = None if opts.unlabeled else _pick(columns, opts.label_col, LABEL_CANDIDATES, "label", path, required=False)
        self.split_col = _pick(columns, opts.split_col, SPLIT_CANDIDATES, "split", path, required=False)
        others = [c for c in columns if c not in (self.path_col, self.split_col)]
        if self.label_col is None and not opts.unlabeled and others and opts.ask_label:
            # A label column under another name ("labl", "y") would otherwise become unlabeled rows with the labels
            # tucked away in `extra`: ask instead of guessing.
            raise CurateError(
                f"{path}: no label column found (columns: {', '.join(columns)}; looked for {', '.join(LABEL_CANDIDATES)})",
                hint="name it with --label-col, or pass --unlabeled to ingest the rows without labels (other columns are kept)",
            )
        if fmt == "parquet":
            import pyarrow.parquet as pq

            with open_input(path) as fh:
                self.total = pq.ParquetFile(fh).metadata.num_rows

    def _tsv(self) -> bool:
        return str(self.path).lower().endswith(".tsv")

    def _columns(self) -> list[str]:
        try:
            if self.fmt == "csv":
                import pyarrow.csv as pacsv

                delim = "\t" if self._tsv() else ","
                with open_input(self.path) as fh:
                    return pacsv.open_csv(fh, parse_options=pacsv.ParseOptions(delimiter=delim)).schema.names
            if self.fmt == "parquet":
                import pyarrow.parquet as pq

                with open_input(self.path) as fh:
                    return pq.ParquetFile(fh).schema_arrow.names
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for unreadable files
            raise CurateError(f"{self.path}: cannot read {self.fmt} manifest ({str(exc).splitlines()[0]})") from exc
        for _, obj in _jsonl_rows(self.path):
            return list(obj.keys())
        raise CurateError(f"{self.path}: the manifest is empty")

    def _records(self) -> Iterator[tuple[int, dict[str, Any]]]:
        if self.fmt == "jsonl":
            yield from _jsonl_rows(self.path)
            return
        names = self._columns() if self.fmt == "csv" else []
        row = 1 if self.fmt == "csv" else 0  # CSV line 1 is the header
        with open_input(self.path) as fh:
            if self.fmt == "csv":
                import pyarrow as pa
                import pyarrow.csv as pacsv

                delim = "\t" if self._tsv() else ","
                # Every column as text: a label "01" must stay "01", and paths are never numbers.
                conv = pacsv.ConvertOptions(column_types={n: pa.string() for n in names})
                batches = iter(pacsv.open_csv(fh, parse_options=pacsv.ParseOptions(delimiter=delim), convert_options=conv))
            else:
                import pyarrow.parquet as pq

                batches = pq.ParquetFile(fh).iter_batches(batch_size=8192)
            try:
                for batch in batches:
                    for rec in batch.to_pylist():
                        row += 1
                        yield row, rec
            except Exception as exc:  # noqa: BLE001
                raise CurateError(f"{self.path}: cannot read row near {row + 1} ({str(exc).splitlines()[0]})") from exc

    def _place(self, ref: str) -> dict[str, Any]:
        """Where a row's bytes come from: ``url`` for http(s) (the crawler fetches it), else a local path or fsspec
        URL in ``path``, or the reason it is refused."""
        kind = scheme(ref)
        if kind in ("http", "https"):
            return {"source": ref, "url": ref}
        if isinstance(self.path, Path):  # a local manifest: local paths relative to it, file:// and bucket URLs
            if kind == "file":
                from curate.remote import local_path

                ref = local_path(ref)
            elif is_remote(ref):
                return {"source": ref, "path": ref}
            elif kind is not None:  # ftp:, data: ...: the crawler's fetch refuses it with reason unsupported_url
                return {"source": ref, "url": ref}
            p = Path(ref).expanduser()
            p = p if p.is_absolute() else self.path.parent / p
            return {"source": str(p), "path": str(p)}
        if is_remote(ref):
            return {"source": ref, "path": ref}
        if kind == "file":
            return {"source": ref, "pre_reason": "outside_source", "pre_error": "a manifest on a bucket may not name local files"}
        if kind is not None:
            return {"source": ref, "url": ref}
        target = None if ref.startswith(("/", "~", "\\")) else join(posixpath.dirname(self.path), ref)
        if target is None:
            why = "absolute local path" if ref.startswith(("/", "~", "\\")) else "the path leaves the manifest's bucket"
            return {"source": ref, "pre_reason": "outside_source", "pre_error": f"{why} in a manifest on a bucket"}
        return {"source": target, "path": target}

    def items(self) -> Iterator[dict]:
        used = {self.path_col, self.label_col, self.split_col}
        where = "line" if self.fmt in ("csv", "jsonl") else "row"
        for row, rec in self._records():
            at = f"{self.path}:{row}" if where == "line" else f"{self.path}: row {row}"
            ref = _clean(_scalar(rec.get(self.path_col), self.path_col, at))
            label = _clean(_scalar(rec.get(self.label_col), self.label_col, at)) if self.label_col else None
            split = (_clean(_scalar(rec.get(self.split_col), self.split_col, at)) if self.split_col else None) or self.opts.split_name
            item = {"label": label, "origin_split": split}
            other = {k: _clean(v) for k, v in rec.items() if k not in used}
            if other:
                item["extra"] = json.dumps(other)
            if ref is None:
                item.update(source=f"{self.path}:{where} {row}", pre_reason="missing", pre_error=f"empty {self.path_col!r}")
            else:
                item.update(self._place(ref))
            yield item
