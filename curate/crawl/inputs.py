"""What to crawl: URL lists (txt, CSV, Parquet, JSONL), seeds, and the ``--label-from`` rules.

A URL list gives images directly: a ``.txt`` file has one URL per line (blank lines and ``#`` comments skipped);
CSV / Parquet / JSONL manifests have a URL column (``--url-col``, else the first of ``url``, ``image_url``,
``img_url``, ``uri``, ``link``, ``src``), an optional label column (``--label-col``, else ``label``, ``class`` ...)
and keep their other columns. Seeds are pages to start from, ``URL`` or ``LABEL=URL``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from curate.errors import CurateError, UsageError

URL_CANDIDATES = ("url", "image_url", "img_url", "uri", "link", "src")
_SEED_LABEL = re.compile(r"^([^=:/?#]+)=(\w[\w+.-]*://.+)$")


@dataclass(frozen=True)
class Entry:
    """One line of a URL list: the URL as written, its label, origin split, other columns (JSON) and place."""

    url: str
    label: str | None
    origin_split: str | None
    extra: str | None
    where: str


def parse_seed(text: str) -> tuple[str | None, str]:
    """``"cats=https://x/cats/"`` -> ``("cats", "https://x/cats/")``; a plain URL has no label."""
    m = _SEED_LABEL.match(text.strip())
    return (m.group(1).strip(), m.group(2)) if m else (None, text.strip())


class LabelRule:
    """``--label-from``: ``dir:K`` (the K-th folder of the image URL's path, 0-based, negative from the end),
    ``regex:PATTERN`` (group ``label``, else group 1, else the match, searched in the image URL) or ``seed``
    (the seed's ``LABEL=``, else the last folder of the seed URL, else its host).

    Raises:
        UsageError: an unknown form, a K that is not an integer, or a pattern that does not compile.
    """

    def __init__(self, spec: str) -> None:
        self.spec = spec
        kind, _, arg = spec.partition(":")
        self.kind = kind.strip().lower()
        self.index = 0
        self.pattern: re.Pattern[str] | None = None
        if self.kind == "dir":
            try:
                self.index = int(arg)
            except ValueError:
                raise UsageError(f"--label-from {spec!r}: dir:K needs an integer K (0 = first folder, -1 = last)") from None
        elif self.kind == "regex":
            try:
                self.pattern = re.compile(arg)
            except re.error as exc:
                raise UsageError(f"--label-from {spec!r}: bad regular expression ({exc})") from None
        elif self.kind != "seed" or arg:
            raise UsageError(f"--label-from {spec!r}: use dir:K, regex:PATTERN or seed")

    def label(self, url: str, seed_url: str | None = None, seed_label: str | None = None) -> str | None:
        if self.kind == "seed":
            if seed_label or seed_url is None:
                return seed_label
            parts = urlsplit(seed_url)
            dirs = [d for d in unquote(parts.path).split("/") if d]
            return dirs[-1] if dirs else parts.hostname
        if self.kind == "dir":
            dirs = [d for d in unquote(urlsplit(url).path).split("/")[:-1] if d]
            try:
                return dirs[self.index]
            except IndexError:
                return None
        assert self.pattern is not None
        m = self.pattern.search(url)
        if m is None:
            return None
        if "label" in self.pattern.groupindex:
            return m.group("label")
        return m.group(1) if self.pattern.groups else m.group(0)


def list_format(path: Path) -> str:
    """``txt``, ``csv``, ``parquet`` or ``jsonl`` from the file name (anything else is read as text)."""
    name = path.name.lower()
    for fmt, suffixes in (("csv", (".csv", ".tsv")), ("parquet", (".parquet", ".pq")), ("jsonl", (".jsonl", ".ndjson", ".json"))):
        if name.endswith(suffixes):
            return fmt
    return "txt"


def _columns(path: Path, fmt: str) -> list[str]:
    try:
        if fmt == "csv":
            import pyarrow.csv as pacsv

            delim = "\t" if path.suffix.lower() == ".tsv" else ","
            return pacsv.open_csv(path, parse_options=pacsv.ParseOptions(delimiter=delim)).schema.names
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).schema_arrow.names
        with open(path, encoding="utf-8-sig") as fh:
            first = next((line for line in fh if line.strip()), None)
        return list(json.loads(first).keys()) if first else []
    except Exception as exc:  # noqa: BLE001 - pyarrow / json raise several types for unreadable files
        raise CurateError(
            f"{path}: cannot read the {fmt} URL list ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from None


def list_path(path: str | Path) -> Path:
    """The resolved path of a URL list.

    Raises:
        CurateError: it is not a file.
    """
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        from curate.sources.readfile import not_regular

        why = "no such file"
        if resolved.exists():
            why = (not_regular(resolved.stat().st_mode) or ("", "not a regular file"))[1] + ", not a file"
        raise CurateError(f"{path}: {why}", hint="give a .txt/.csv/.parquet/.jsonl list of URLs, or --seed URL")
    return resolved


class UrlList:
    """The entries of a URL list file, read lazily; ``total`` is known up front.

    Raises:
        CurateError: the file is missing or unreadable, or has no URL column.
    """

    def __init__(self, path: str | Path, *, url_col: str | None = None, label_col: str | None = None) -> None:
        self.path = list_path(path)
        self.fmt = list_format(self.path)
        self.url_col = self.label_col = None
        if self.fmt != "txt":
            cols = _columns(self.path, self.fmt)
            lower = {c.lower(): c for c in cols}
            self.url_col = url_col or next((lower[c] for c in URL_CANDIDATES if c in lower), None)
            if self.url_col is None or self.url_col not in cols:
                raise CurateError(
                    f"{path}: no URL column {url_col or ''!s}".rstrip() + f" (columns: {', '.join(cols) or 'none'})",
                    hint="name it with --url-col",
                )
            self.label_col = label_col
        self.total = self._count()

    def _count(self) -> int:
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(self.path).metadata.num_rows
        return sum(1 for _ in self.entries())

    def entries(self) -> Iterator[Entry]:
        if self.fmt == "txt":
            with open(self.path, encoding="utf-8-sig", errors="replace") as fh:
                for lineno, line in enumerate(fh, 1):
                    text = line.strip()
                    if text and not text.startswith("#"):
                        yield Entry(text, None, None, None, f"{self.path}:{lineno}")
            return
        from curate.sources import SourceOptions
        from curate.sources.manifest import ManifestSource

        src = ManifestSource(self.path, self.fmt, SourceOptions(path_col=self.url_col, label_col=self.label_col))
        for i, item in enumerate(src.items(), 1):
            # ManifestSource turns a non-URL into a local path: for a crawl that is a URL it cannot fetch.
            ref = item.get("url") or item.get("path") or ""
            where = item["source"] if not item.get("url") else f"{self.path}:row {i}"
            yield Entry(ref, item.get("label"), item.get("origin_split"), item.get("extra"), where)
