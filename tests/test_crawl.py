"""``curate crawl`` against a normal site on 127.0.0.1: link following, labels, URL lists, versions and the CLI.

The site has known ground truth: which images each page shows, which bytes repeat, which URL is missing, so the
sample table after a crawl can be compared row by row with what a correct crawler must produce.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from crawl_sites import Site, html, static
from helpers import assert_one_error_line, sha256_bytes
from typer.testing import CliRunner

from curate.cli import app
from curate.stages.crawl import CrawlConfig
from curate.workspace import Workspace
from tests.conftest import crawl


def site_routes(png_bytes) -> dict[str, object]:
    """A gallery: / -> /cats/ and /dogs/ (-> /dogs/more/ -> /dogs/more/deeper/), /about/ on the side."""
    return {
        "/robots.txt": static(b"User-agent: *\nDisallow: /admin/\n", "text/plain"),
        "/": html(
            '<html><head><title>gallery</title></head><body><img src="/img/logo.png">'
            '<a href="/cats/">cats</a> <a href="dogs/#top">dogs</a> <a href="/admin/">admin</a>'
            '<a href="mailto:me@example.org">mail</a> <a href="javascript:void(0)">js</a>'
            '<a href="http://127.0.0.2:1/page">elsewhere</a></body></html>'
        ),
        "/cats/": html(
            '<img src="/img/cats/1.png" alt="one">'
            '<img srcset="/img/cats/2-small.png 100w, /img/cats/2.png 800w" src="/img/cats/2-small.png">'
            '<picture><source srcset="/img/cats/3.png 1x, /img/cats/3@2x.png 2x"><img src="/img/cats/3-fallback.png"></picture>'
            '<a href="/img/cats/4.png">full size</a>'
        ),
        "/dogs/": html(
            '<base href="/img/dogs/"><img src="1.png"><img src="missing.png"><img src="copy-of-cat.png"><a href="/dogs/more/">more</a>'
        ),
        "/dogs/more/": html('<img data-src="/img/dogs/2.png"><a href="/dogs/more/deeper/">deeper</a>'),
        "/dogs/more/deeper/": html('<img src="/img/dogs/3.png">'),
        "/admin/": html('<img src="/img/admin.png">'),
        "/img/logo.png": static(png_bytes(0)),
        "/img/cats/1.png": static(png_bytes(1)),
        "/img/cats/2.png": static(png_bytes(2)),
        "/img/cats/2-small.png": static(png_bytes(20)),
        "/img/cats/3@2x.png": static(png_bytes(3)),
        "/img/cats/4.png": static(png_bytes(4), "image/png; charset=binary"),
        "/img/dogs/1.png": static(png_bytes(5)),
        "/img/dogs/copy-of-cat.png": static(png_bytes(1)),
        "/img/dogs/2.png": static(png_bytes(6)),
        "/img/dogs/3.png": static(png_bytes(7)),
        "/img/admin.png": static(png_bytes(8)),
    }


@pytest.fixture
def site(png_bytes):
    with Site(site_routes(png_bytes)) as s:
        yield s


def seed_config(site: Site, **kw: object) -> CrawlConfig:
    base: dict[str, object] = dict(
        seeds=(site.url("/"),), allow_private=True, per_host=8, timeout=5.0, retries=1, backoff=0.05, max_error_fraction=1.0
    )
    base.update(kw)
    return CrawlConfig(**base)


def by_path(ws: Workspace, site: Site) -> dict[str, dict]:
    return {r["source"].split(str(site.port), 1)[1]: r for r in ws.samples().to_pylist()}


def test_follows_links_to_depth_and_collects_images(tmp_path, site, png_bytes):
    ws = Workspace(tmp_path / "ws")
    res = crawl(ws, seed_config(site, depth=2, label_from="dir:1"))
    rows = by_path(ws, site)
    # depth 2: / (0) -> /dogs/ (1) -> /dogs/more/ (2, its images yes, its links no); /admin/ is robots-disallowed.
    assert set(rows) == {
        "/img/logo.png", "/img/cats/1.png", "/img/cats/2.png", "/img/cats/3@2x.png", "/img/cats/4.png",
        "/img/dogs/1.png", "/img/dogs/missing.png", "/img/dogs/2.png",
    }  # fmt: skip
    assert "/dogs/more/deeper/" not in site.hits and "/img/cats/2-small.png" not in site.hits, "largest srcset candidate only"
    assert "/admin/" not in site.hits and "/img/admin.png" not in site.hits
    for path, r in rows.items():
        if path == "/img/dogs/missing.png":
            assert (r["status"], r["reason"], r["http_status"], r["excluded_by"]) == ("excluded", "http_error", 404, "crawl")
            continue
        assert r["status"] == "ok" and r["crawl_status"] == "downloaded" and (r["width"], r["height"]) == (16, 16)
        assert r["sample_id"] == sha256_bytes(png_bytes(int(_seed_of(path))))
        assert r["label"] == (None if path == "/img/logo.png" else path.split("/")[2])
        assert r["label_source"] == ("given" if r["label"] else None)
    # The same bytes under two URLs are one sample; the other URL is kept as a further source, deterministically
    # under the first URL in sorted order.
    cat = rows["/img/cats/1.png"]
    assert cat["extra_sources"] == [site.url("/img/dogs/copy-of-cat.png")] and cat["extra_labels"] == ["dogs"]
    assert rows["/img/dogs/2.png"]["page_url"] == site.url("/dogs/more/") and rows["/img/dogs/2.png"]["depth"] == 3
    st = res["stats"]
    assert (st["downloaded"], st["duplicates"], st["pages"], st["failed"]) == (7, 1, 4, 2)
    # /admin/ is disallowed; the page on 127.0.0.2:1 cannot even serve robots.txt (connection refused).
    assert st["by_status"]["robots"] == 1 and st["by_status"]["fetch_error"] == 1
    assert all(n == 1 for p, n in site.hits.items()), "every URL is fetched once"


def _seed_of(path: str) -> int:
    return {
        "/img/logo.png": 0, "/img/cats/1.png": 1, "/img/cats/2.png": 2, "/img/cats/3@2x.png": 3, "/img/cats/4.png": 4,
        "/img/dogs/1.png": 5, "/img/dogs/2.png": 6, "/img/dogs/3.png": 7,
    }[path]  # fmt: skip


def test_depth_zero_takes_only_the_seed_page(tmp_path, site):
    ws = Workspace(tmp_path / "ws")
    crawl(ws, seed_config(site, depth=0))
    assert set(by_path(ws, site)) == {"/img/logo.png"}
    assert set(site.hits) == {"/robots.txt", "/", "/img/logo.png"}


def test_include_exclude_and_label_from_seed(tmp_path, site):
    ws = Workspace(tmp_path / "ws")
    cfg = seed_config(site, seeds=(f"pets={site.url('/')}",), depth=3, exclude=r"/dogs/more/", label_from="seed")
    crawl(ws, cfg)
    rows = by_path(ws, site)
    assert "/img/dogs/2.png" not in rows and "/dogs/more/" not in site.hits
    assert {r["label"] for r in rows.values()} == {"pets"}
    ws2 = Workspace(tmp_path / "ws2")
    crawl(ws2, seed_config(site, depth=3, include=r"/(cats/|img/cats/)"))
    assert set(by_path(ws2, site)) == {"/img/cats/1.png", "/img/cats/2.png", "/img/cats/3@2x.png", "/img/cats/4.png"}


def test_label_from_regex(tmp_path, site):
    ws = Workspace(tmp_path / "ws")
    crawl(ws, seed_config(site, depth=1, label_from=r"regex:/img/(?P<label>[a-z]+)/\d"))
    labels = {p: r["label"] for p, r in by_path(ws, site).items()}
    assert labels["/img/cats/1.png"] == "cats" and labels["/img/dogs/1.png"] == "dogs" and labels["/img/logo.png"] is None


def test_url_lists_in_every_format_with_labels_and_extra_columns(tmp_path, site):
    paths = ["/img/cats/1.png", "/img/dogs/1.png", "/img/nope.png", "/img/cats/1.png"]
    df = pd.DataFrame({"url": [site.url(p) for p in paths], "label": ["cat", "dog", "x", "cat"], "license": ["cc0", "by", "?", "cc0"]})
    lists = {
        "csv": tmp_path / "l.csv",
        "parquet": tmp_path / "l.parquet",
        "jsonl": tmp_path / "l.jsonl",
    }
    df.to_csv(lists["csv"], index=False)
    df.to_parquet(lists["parquet"])
    lists["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in df.to_dict("records")))
    (tmp_path / "l.txt").write_text("# my list\n\n" + "\n".join(site.url(p) for p in paths) + "\n")
    lists["txt"] = tmp_path / "l.txt"
    for fmt, path in lists.items():
        ws = Workspace(tmp_path / f"ws-{fmt}")
        res = crawl(ws, CrawlConfig(urls=str(path), allow_private=True, max_error_fraction=1.0))
        rows = by_path(ws, site)
        assert set(rows) == {"/img/cats/1.png", "/img/dogs/1.png", "/img/nope.png"}, fmt
        assert res["stats"]["repeated_urls"] == 1
        if fmt != "txt":
            assert {p: r["label"] for p, r in rows.items()} == {
                "/img/cats/1.png": "cat",
                "/img/dogs/1.png": "dog",
                "/img/nope.png": "x",
            }
            assert rows["/img/dogs/1.png"]["license"] == "by"
        assert rows["/img/nope.png"]["reason"] == "http_error"
    assert site.hits["/img/cats/1.png"] == 4, "one fetch per crawl, the repeated line is not fetched again"


def test_workers_split_a_list_and_give_the_same_table(tmp_path, site):
    """Two worker processes fetch disjoint halves; the table equals the one-process table, row for row."""
    paths = [p for p in site_routes(lambda i: b"")][1:]  # every route but robots.txt: pages, images, a 404
    lst = tmp_path / "urls.txt"
    lst.write_text("".join(site.url(p) + "\n" for p in paths))
    tables = {}
    for workers in (1, 2):
        ws = Workspace(tmp_path / f"ws{workers}")
        res = crawl(ws, CrawlConfig(urls=str(lst), allow_private=True, max_error_fraction=1.0, workers=workers))
        assert res["stats"]["workers"] == workers and res["stats"]["urls"] == len(paths)
        tables[workers] = ws.samples().drop_columns(["elapsed", "pack", "attempts"]).to_pylist()
    assert tables[1] == tables[2]
    # Each URL once per crawl, whichever worker had it (/admin/ is disallowed by robots.txt: never).
    assert {p: site.hits.get(p, 0) for p in paths} == {p: 0 if p == "/admin/" else 2 for p in paths}
    assert site.hits["/robots.txt"] == 3, "read by the one process, then by each of the two workers"


def test_recrawl_replaces_failure_rows_and_keeps_one_row_per_url(tmp_path, site):
    ws = Workspace(tmp_path / "ws")
    first = crawl(ws, seed_config(site, depth=1))
    second = crawl(ws, seed_config(site, depth=1))
    assert second["stats"]["mode"] == "fresh" and second["stats"]["replaced_failed_rows"] == 1
    t = ws.samples()
    assert t.num_rows == first["stats"]["summary"]["rows"], "same bytes, same rows; the 404 placeholder is replaced"
    assert second["stats"]["new_samples"] == 1 and second["stats"]["downloaded"] == 0
    assert sorted(ws.samples("1").column("sample_id").to_pylist()) == sorted(t.column("sample_id").to_pylist())


def test_bad_settings_fail_before_any_fetch(tmp_path):
    from curate.errors import CurateError, UsageError

    ws = Workspace(tmp_path / "ws")
    for cfg, needle in [
        (CrawlConfig(), "nothing to crawl"),
        (CrawlConfig(urls="x.txt", seeds=("http://a/",)), "not both"),
        (CrawlConfig(seeds=("http://a/",), include="("), "bad regular expression"),
        (CrawlConfig(seeds=("http://a/",), label_from="folder:1"), "dir:K, regex:PATTERN or seed"),
        (CrawlConfig(seeds=("http://a/",), label_from="dir:x"), "integer K"),
        (CrawlConfig(urls="x.txt", label_from="seed"), "needs --seed"),
        (CrawlConfig(seeds=("http://a/",), concurrency=0), "must be positive"),
        (CrawlConfig(seeds=("http://a/",), workers=2), "only for a URL list"),
    ]:
        with pytest.raises(UsageError, match=needle):
            crawl(ws, cfg)
    with pytest.raises(CurateError, match="no such file"):
        crawl(ws, CrawlConfig(urls=str(tmp_path / "missing.txt")))
    (tmp_path / "cols.csv").write_text("path,label\na.png,x\n")
    with pytest.raises(CurateError, match=r"no URL column .*columns: path, label"):
        crawl(ws, CrawlConfig(urls=str(tmp_path / "cols.csv")))
    assert ws.head() is None


# ------------------------------------------------------------------------------------------------ CLI
@pytest.fixture
def _in_tmp(in_empty_tmp):
    """CLI tests run from an empty folder with no curate settings in the environment."""


def invoke(*args: object):  # noqa: ANN201
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.usefixtures("_in_tmp")
def test_cli_json_and_human_output(tmp_path, site):
    res = invoke("crawl", "--seed", site.url("/"), "--allow-private", "--max-error-fraction", "1", "-w", tmp_path / "ws", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["version"] == "000001-crawl" and out["stats"]["by_status"]["downloaded"] >= 4
    res = invoke("crawl", "--seed", site.url("/cats/"), "--depth", "0", "--allow-private", "-w", tmp_path / "ws")
    assert res.exit_code == 0, res.output
    assert "crawl (fresh): 5 URLs -> 0 downloaded, 4 duplicates, 1 pages, 0 failed" in res.stdout, "all in version 1 already"
    assert "version 000002-crawl (HEAD)" in res.stdout


@pytest.mark.usefixtures("_in_tmp")
@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        ([], 2, "nothing to crawl"),
        (["urls.txt", "--seed", "http://a/"], 2, "not both"),
        (["--seed", "http://a/", "--label-from", "nope"], 2, "--label-from"),
        (["--seed", "http://a/", "--max-bytes", "lots"], 2, "--max-bytes"),
        (["missing.txt"], 1, "missing.txt: no such file"),
        (["--seed", "http://127.0.0.1:9/", "--retry-failed"], 2, "no earlier crawl"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, args, code, needle):
    res = invoke("crawl", *args, "-w", tmp_path / "ws")
    assert res.exit_code == code, res.output
    assert needle in assert_one_error_line(res.stderr)


@pytest.mark.usefixtures("_in_tmp")
def test_cli_refuses_everything_without_allow_private_and_fails_the_stage(tmp_path, site):
    res = invoke("crawl", "--seed", site.url("/"), "-w", tmp_path / "ws")
    assert res.exit_code == 1
    line = assert_one_error_line(res.stderr)
    assert "1 of 1 URLs failed (refused=1)" in line and "nothing was committed" in line
    assert site.hits == {}
