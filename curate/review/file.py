"""The review file of ``curate clean ... --review-out issues.html|csv``: every flagged sample, worst first.

- ``.csv``: every row, no images, for spreadsheets and scripts. Text cells that a spreadsheet would run as a formula
  (leading ``=``, ``+``, ``@``, tab, CR, or ``-`` not starting a number) get a leading ``'``: labels and paths come from
  users' files and URLs and are untrusted.
- ``.html`` (or ``.htm``): one self-contained page (inline CSS, images as base64 ``data:`` URIs, no script, nothing
  fetched) with the counts per issue and a table: thumbnail, given and suggested label, score, issue, source. Every
  text is HTML-escaped. Images beyond ``max_images`` are left out (their rows stay in the table, and the header says
  how many), so a 50,000-row report stays a file a browser opens.

Thumbnails are at most ``thumb`` px a side: larger images are downscaled (JPEG, DCT draft decode for big JPEGs) and
smaller ones are upscaled by a whole factor with nearest-neighbour sampling (PNG), so a 28x28 digit shows as crisp
3x3-pixel blocks instead of a blurred smear.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import html
import io
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import CurateError, UsageError

BASE_COLUMNS = ("sample_id", "source", "label", "suggested_label", "score", "issue")
REQUIRED = ("sample_id", "source", "label")
FETCH_CHUNK = 256
_FORMULA_START = ("=", "+", "@", "\t", "\r", "-")

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em;margin:0 0 .3em}
.summary{margin:.5em 0 1em;color:#444}
.counts span{display:inline-block;background:#eef;border-radius:4px;padding:1px 8px;margin:2px 4px 2px 0}
table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:middle}
th{position:sticky;top:0;background:#f6f6f6;white-space:nowrap}
th.sorted:after{content:" \\25B2";color:#888}
tr:nth-child(even) td{background:#fafafa}
td.img{width:1%;text-align:center}
td.img img{image-rendering:pixelated;border:1px solid #ccc;background:#fff}
td.num{font-variant-numeric:tabular-nums;text-align:right}
td.src,td.id{font-family:ui-monospace,monospace;font-size:12px;word-break:break-all}
.diff{color:#b00;font-weight:600}
.none{color:#999}
"""


def _text(value: Any) -> str:
    """A cell as plain text: '' for null, 4 significant digits for floats, lists joined by '; '."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if value != value else f"{value:.4g}"
    if isinstance(value, list | tuple):
        return "; ".join(_text(v) for v in value)
    return str(value)


def _csv_cell(value: Any) -> Any:
    """A CSV cell: full-precision numbers, '' for null/NaN, lists joined by '; ', formulas in text defused."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, list | tuple):
        value = _text(value)
    if not isinstance(value, str) or not value.startswith(_FORMULA_START):
        return value
    if value.startswith("-"):
        try:
            float(value)
            return value
        except ValueError:
            pass
    return "'" + value


def _ordered(rows: pa.Table, columns: Sequence[str]) -> tuple[pa.Table, list[str]]:
    """Rows sorted worst first (ascending ``score``, nulls and NaN last, ties in input order) and the columns to write."""
    missing = [c for c in (*REQUIRED, *columns) if c not in rows.column_names]
    if missing:
        raise CurateError(f"review rows lack column(s) {', '.join(missing)}; they have {', '.join(rows.column_names)}")
    if "score" in rows.column_names and rows.num_rows:
        # stable, nulls (and NaN) after numbers by default: equal scores keep the caller's order
        rows = rows.take(pc.sort_indices(rows, sort_keys=[("score", "ascending")]))
    names = [c for c in BASE_COLUMNS if c in rows.column_names]
    names += [c for c in dict.fromkeys(columns) if c not in names]
    return rows, names


def _issue_counts(issues: list[Any]) -> dict[str, int]:
    """Counts per issue kind (text before ':'), plus ``kind:reason`` for comma lists after the colon."""
    counts: Counter[str] = Counter()
    for issue in issues:
        if issue is None:
            counts["(none)"] += 1
            continue
        kind, _, reasons = str(issue).partition(":")
        counts[kind.strip()] += 1
        for reason in filter(None, (r.strip() for r in reasons.split(","))):
            counts[f"{kind.strip()}:{reason}"] += 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def thumbnail_uri(data: bytes, thumb: int) -> tuple[str, int, int]:
    """A ``data:`` URI of the image fitted into ``thumb`` x ``thumb`` px, with its width and height.

    Larger images are downscaled (antialiased, JPEG q85); smaller ones are upscaled by the largest whole factor that
    fits, nearest-neighbour (PNG), so their pixels stay sharp squares. EXIF orientation applied, alpha dropped.
    """
    from PIL import Image, ImageOps

    im = Image.open(io.BytesIO(data))
    if im.format == "JPEG":
        im.draft(im.mode, (thumb, thumb))
    im = ImageOps.exif_transpose(im)
    im = im.convert("L") if im.mode in ("L", "LA", "1") else im.convert("RGB")
    w, h = im.size
    if max(w, h) <= thumb:
        f = max(1, thumb // max(w, h))
        im, fmt, mime = im.resize((w * f, h * f), Image.NEAREST), "PNG", "image/png"
    else:
        s = thumb / max(w, h)
        size = (max(1, round(w * s)), max(1, round(h * s)))
        im, fmt, mime = im.resize(size, Image.LANCZOS, reducing_gap=2.0), "JPEG", "image/jpeg"
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"quality": 85} if fmt == "JPEG" else {"optimize": True}))
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}", im.width, im.height


def _thumbs(ids: list[str], blobs: Callable[[list[str]], dict[str, bytes]], thumb: int) -> tuple[dict[str, tuple[str, int, int]], int]:
    """Thumbnails of ``ids`` (fetched in chunks to bound memory); returns them and how many could not be shown."""
    out: dict[str, tuple[str, int, int]] = {}
    failed = 0
    for start in range(0, len(ids), FETCH_CHUNK):
        chunk = ids[start : start + FETCH_CHUNK]
        got = blobs(chunk)
        for sid in chunk:
            data = got.get(sid)
            try:
                if data is None:
                    raise KeyError(sid)
                out[sid] = thumbnail_uri(data, thumb)
            except Exception:  # noqa: BLE001 - a bad or missing image costs its thumbnail, not the report
                failed += 1
    return out, failed


def _html(rows: pa.Table, names: list[str], thumbs: dict[str, tuple[str, int, int]], title: str, info: dict[str, Any]) -> str:
    esc = html.escape
    counts = "".join(f"<span>{esc(k)}: {v}</span>" for k, v in info["by_issue"].items() if ":" not in k)
    detail = [f"{esc(k)} {v}" for k, v in info["by_issue"].items() if ":" in k]
    notes = [f"{info['rows']} rows, worst first (ascending score)", f"{info['images']} images embedded"]
    if not info["with_images"]:
        notes.append("no image store was given")
    if info["images_omitted"]:
        notes.append(f"{info['images_omitted']} rows beyond max_images={info['max_images']} are listed without an image")
    if info["images_failed"]:
        notes.append(f"{info['images_failed']} images could not be read or decoded")
    # what a reviewer reads first, then where the file lives; the CSV keeps the plain column order
    names = [n for n in names if n not in ("source", "sample_id")] + ["source", "sample_id"]
    head = ["#", "image"] + names
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f'<div class="summary">{esc("; ".join(notes))}</div>',
        f'<div class="counts">{counts}</div>',
    ]
    if detail:
        out.append(f'<div class="summary">reasons: {", ".join(detail)}</div>')
    out.append("<table><thead><tr>")
    out += ['<th class="sorted">score</th>' if h == "score" else f"<th>{esc(h)}</th>" for h in head]
    out.append("</tr></thead><tbody>")
    cols = {n: rows.column(n).to_pylist() for n in names}
    for i in range(rows.num_rows):
        sid = cols["sample_id"][i]
        if sid in thumbs:
            uri, w, h = thumbs[sid]
            img = f'<img src="{uri}" width="{w}" height="{h}" alt="{esc(_text(cols["label"][i]))}">'
        else:
            img = '<span class="none">-</span>'
        cells = [f'<td class="num">{i + 1}</td>', f'<td class="img">{img}</td>']
        for n in names:
            value = cols[n][i]
            cls = "num" if isinstance(value, int | float) and not isinstance(value, bool) else ""
            if n == "source":
                cls = "src"
            elif n == "sample_id":
                cls = "id"
            elif n == "suggested_label" and value is not None and value != cols["label"][i]:
                cls = "diff"
            attr = f' class="{cls}"' if cls else ""
            cells.append(f"<td{attr}>{esc(_text(value))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></body></html>\n")
    return "\n".join(out)


def write_review(
    path: str | Path,
    rows: pa.Table,
    *,
    blobs: Callable[[list[str]], dict[str, bytes]] | None,
    title: str,
    columns: Sequence[str] = (),
    max_images: int = 2000,
    thumb: int = 96,
) -> dict[str, Any]:
    """Write the review file for ``rows``, worst first; the format follows the extension of ``path``.

    Args:
        path: ``*.csv`` or ``*.html``/``*.htm``; missing parent folders are created; written via a temporary file and
            renamed, so an interrupted run never leaves half a file.
        rows: at least ``sample_id``, ``source``, ``label``; optional ``suggested_label``, ``score`` (lower = worse),
            ``issue`` (e.g. ``label_issue``, ``outlier``, ``low_quality: dark,blurry``).
        blobs: ``ids -> {sample_id: image bytes}`` (called with at most ``FETCH_CHUNK`` ids at a time); None writes
            no images. Not used for CSV.
        title: the page heading (HTML).
        columns: further columns of ``rows`` to write after the standard ones.
        max_images: at most this many thumbnails (the worst rows); later rows are listed without one.
        thumb: the thumbnail box in px.

    Returns:
        ``{"path", "format", "rows", "images", "images_omitted", "images_failed", "max_images", "with_images",
        "by_issue"}``: ``images`` embedded, ``images_omitted`` rows beyond ``max_images``, ``images_failed`` missing
        or undecodable; ``by_issue`` counts rows per issue kind and per ``kind:reason`` (``low_quality:dark``).

    Raises:
        UsageError: an extension other than .csv/.html/.htm, or a bad ``max_images``/``thumb``.
        CurateError: a required or requested column is missing, or the file cannot be written.
    """
    path = Path(path)
    fmt = {".csv": "csv", ".html": "html", ".htm": "html"}.get(path.suffix.lower())
    if fmt is None:
        raise UsageError(f"review file {path}: unknown extension {path.suffix or '(none)'!r}", hint="use a .csv or .html file name")
    if max_images < 0 or thumb < 1:
        raise UsageError(f"review file {path}: max_images must be >= 0 and thumb >= 1 (got {max_images}, {thumb})")
    rows, names = _ordered(rows, columns)
    issues = rows.column("issue").to_pylist() if "issue" in rows.column_names else []
    info: dict[str, Any] = {"path": str(path), "format": fmt, "rows": rows.num_rows, "images": 0, "images_omitted": 0}
    info.update({"images_failed": 0, "max_images": max_images, "with_images": fmt == "html" and blobs is not None})
    info["by_issue"] = _issue_counts(issues)
    thumbs: dict[str, tuple[str, int, int]] = {}
    if fmt == "html" and blobs is not None:  # before opening the file: a blob-store error is not a write error
        thumbs, info["images_failed"] = _thumbs(rows.column("sample_id").to_pylist()[:max_images], blobs, thumb)
        info["images_omitted"] = max(0, rows.num_rows - max_images)
    info["images"] = len(thumbs)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "csv":
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                writer.writerow(names)
                cols = [rows.column(n).to_pylist() for n in names]
                for i in range(rows.num_rows):
                    writer.writerow([_csv_cell(c[i]) for c in cols])
        else:
            tmp.write_text(_html(rows, names, thumbs, title, info), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise CurateError(f"cannot write review file {path}: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(OSError):  # gone after the rename, or never made (parent is not a folder)
            tmp.unlink()
    return info
