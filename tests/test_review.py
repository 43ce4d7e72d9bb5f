"""The review file (``curate.review.file.write_review``): CSV rows and order, a self-contained and escaped HTML page."""

from __future__ import annotations

import base64
import csv
import io
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from curate.errors import CurateError, UsageError
from curate.review.file import write_review

EVIL = "<script>alert('x')</script>"
VOID = {"meta", "img", "br", "hr", "input", "link"}


def encode(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def make_rows(n: int = 6) -> tuple[pa.Table, dict[str, bytes]]:
    """``n`` flagged rows with shuffled scores (one null), untrusted text, and their image bytes."""
    rng = np.random.default_rng(0)
    scores = [0.5, 0.1, None, 0.9, 0.05, 0.3, 0.7, 0.2][:n] + [0.95] * max(0, n - 8)
    ids = [f"{i:064x}" for i in range(n)]
    blobs = {sid: encode(rng.integers(0, 256, (28, 28), dtype=np.uint8)) for sid in ids}
    blobs[ids[1]] = encode(rng.integers(0, 256, (100, 200, 3), dtype=np.uint8), "JPEG")  # landscape photo
    rows = pa.table(
        {
            "sample_id": ids,
            "source": [f"/data/in & out/<img{i}>.png" for i in range(n)],
            "label": [EVIL if i == 0 else "=HYPERLINK(\"http://x\")" if i == 3 else "-1" if i == 5 else f"c{i % 3}" for i in range(n)],
            "suggested_label": [f"c{(i + 1) % 3}" if i % 2 else None for i in range(n)],
            "score": pa.array(scores, pa.float64()),
            "issue": ["label_issue" if i % 3 == 0 else "low_quality: dark,blurry" if i % 3 == 1 else "outlier" for i in range(n)],
            "ood_score": [float(i) / 10 for i in range(n)],
        }
    )
    return rows, blobs


def fetch(blobs: dict[str, bytes], calls: list[int] | None = None) -> Any:
    def get(ids: list[str]) -> dict[str, bytes]:
        if calls is not None:
            calls.append(len(ids))
        return {sid: blobs[sid] for sid in ids if sid in blobs}

    return get


class Page(HTMLParser):
    """Collects what the tests check: tag balance, images, resources, text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.rows = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "tr":
            self.rows += 1
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    @property
    def images(self) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == "img"]


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert not page.errors and not page.stack, (page.errors, page.stack)
    return page


def test_csv_has_every_row_worst_first(tmp_path: Path) -> None:
    rows, _ = make_rows()
    info = write_review(tmp_path / "issues.csv", rows, blobs=None, title="t", columns=["ood_score"])
    with open(tmp_path / "issues.csv", newline="", encoding="utf-8") as fh:
        got = list(csv.DictReader(fh))
    assert list(got[0]) == ["sample_id", "source", "label", "suggested_label", "score", "issue", "ood_score"]
    assert [r["score"] for r in got] == ["0.05", "0.1", "0.3", "0.5", "0.9", ""]  # ascending, null last
    assert info == {**info, "format": "csv", "rows": 6, "images": 0}
    by_id = {r["sample_id"]: r for r in got}
    ids = rows.column("sample_id").to_pylist()
    assert by_id[ids[0]]["label"] == EVIL  # CSV keeps text as is: it is not markup
    assert by_id[ids[3]]["label"].startswith("'=")  # but a formula is defused for spreadsheets
    assert by_id[ids[5]]["label"] == "-1"  # and a number stays a number
    assert by_id[ids[2]]["suggested_label"] == "" and by_id[ids[1]]["suggested_label"] == "c2"
    assert by_id[ids[4]]["source"] == "/data/in & out/<img4>.png"


def test_html_is_self_contained_escaped_and_counts_images(tmp_path: Path) -> None:
    rows, blobs = make_rows()
    path = tmp_path / "new" / "dir" / "issues.html"
    info = write_review(path, rows, blobs=fetch(blobs), title=f"Review {EVIL}", columns=["ood_score"])
    raw = path.read_text(encoding="utf-8")
    page = parse(path)
    assert info["images"] == 6 and len(page.images) == 6 and info["images_omitted"] == 0
    assert page.rows == 7  # header + 6
    # untrusted text is data, never markup; nothing is fetched from anywhere
    assert "<script" not in raw.lower() and all(t not in ("script", "link", "iframe", "object") for t, _ in page.tags)
    assert EVIL in "".join(page.text) and f"Review {EVIL}" in "".join(page.text)
    assert "&lt;img4&gt;" in raw and "/data/in &amp; out/" in raw
    for tag, attrs in page.tags:
        for key in ("src", "href"):
            assert attrs.get(key) is None or attrs[key].startswith("data:image/"), (tag, attrs)
    assert info["by_issue"]["label_issue"] == 2 and info["by_issue"]["low_quality:dark"] == 2
    assert "low_quality: 2" in "".join(page.text)


def test_thumbnails_upscale_tiny_images_with_whole_pixels(tmp_path: Path) -> None:
    rows, blobs = make_rows()
    write_review(tmp_path / "r.html", rows, blobs=fetch(blobs), title="t", thumb=96)
    page = parse(tmp_path / "r.html")
    sizes = sorted((int(a["width"] or 0), int(a["height"] or 0)) for a in page.images)
    assert sizes == [(84, 84)] * 5 + [(96, 48)]  # 28 px x3 (largest whole factor in 96); 200x100 fitted
    first = page.images[0]  # worst row: sample 4, a 28x28 PNG
    assert first["src"].startswith("data:image/png;base64,")
    thumb = np.asarray(Image.open(io.BytesIO(base64.b64decode(first["src"].split(",", 1)[1]))))
    original = np.asarray(Image.open(io.BytesIO(blobs[rows.column("sample_id")[4].as_py()])))
    assert np.array_equal(thumb[::3, ::3], original)  # nearest-neighbour: every pixel is a 3x3 block


def test_max_images_caps_thumbnails_but_keeps_rows(tmp_path: Path) -> None:
    rows, blobs = make_rows(10)
    calls: list[int] = []
    info = write_review(tmp_path / "r.html", rows, blobs=fetch(blobs, calls), title="t", max_images=3)
    page = parse(tmp_path / "r.html")
    assert info["images"] == 3 == len(page.images) and info["images_omitted"] == 7
    assert page.rows == 11 and sum(calls) == 3
    assert "7 rows beyond max_images=3" in "".join(page.text)


def test_missing_and_undecodable_images_are_counted_not_fatal(tmp_path: Path) -> None:
    rows, blobs = make_rows()
    ids = rows.column("sample_id").to_pylist()
    blobs[ids[0]] = b"not an image"
    del blobs[ids[1]]
    info = write_review(tmp_path / "r.html", rows, blobs=fetch(blobs), title="t")
    assert info["images"] == 4 and info["images_failed"] == 2
    assert len(parse(tmp_path / "r.html").images) == 4
    info = write_review(tmp_path / "none.html", rows, blobs=None, title="t")
    assert info["images"] == 0 and not parse(tmp_path / "none.html").images


def test_empty_rows_write_a_valid_page(tmp_path: Path) -> None:
    rows, _ = make_rows()
    info = write_review(tmp_path / "e.html", rows.slice(0, 0), blobs=fetch({}), title="nothing flagged")
    assert info["rows"] == 0 and parse(tmp_path / "e.html").rows == 1


@pytest.mark.parametrize("name", ["issues.txt", "issues", "issues.json"])
def test_unknown_extension_is_a_usage_error(tmp_path: Path, name: str) -> None:
    rows, _ = make_rows()
    with pytest.raises(UsageError, match=name):
        write_review(tmp_path / name, rows, blobs=None, title="t")
    assert not list(tmp_path.iterdir())


def test_missing_column_is_an_error(tmp_path: Path) -> None:
    rows, _ = make_rows()
    with pytest.raises(CurateError, match="nope"):
        write_review(tmp_path / "r.csv", rows, blobs=None, title="t", columns=["nope"])
    with pytest.raises(CurateError, match="source"):
        write_review(tmp_path / "r.csv", rows.drop_columns(["source"]), blobs=None, title="t")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_unwritable_target_is_a_curate_error(tmp_path: Path) -> None:
    rows, blobs = make_rows()
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(CurateError, match="cannot write review file"):
        write_review(tmp_path / "file" / "issues.htm", rows, blobs=fetch(blobs), title="t")
