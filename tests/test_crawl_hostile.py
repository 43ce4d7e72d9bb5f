"""The crawler against a hostile site on 127.0.0.1: every URL ends with the right status, within its time limit.

One crawl of a URL list covers the whole hostile catalogue (slow drip, hang, connection resets, 500 then 200,
429 with Retry-After, redirect loop and chain, wrong content type, HTML served as .jpg, gzip bomb, pixel bomb,
endless body, robots.txt disallow, X-Robots-Tag noai); the address checks get their own crawls, since the site
itself is on loopback and only ``--allow-private`` / ``--allow-host`` make it reachable at all.
"""

from __future__ import annotations

import io
import time

import pytest
from crawl_sites import Site, drip, endless, gzip_bomb, hang, html, redirect, reset, sequence, static

from curate.stages.crawl import CrawlConfig
from curate.workspace import Workspace
from tests.conftest import crawl

# generous enough that a normal answer never times out on a loaded 2-core machine, short enough to keep the file fast
TIMEOUT, READ, RETRIES, BACKOFF = 3.0, 1.5, 2, 0.05
MAX_BYTES = 256 << 10


def big_png() -> bytes:
    """200x200 pixels: over the test's max_pixels of 10,000 (the decompression-bomb guard), yet a tiny file."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (200, 200)).save(buf, format="PNG")
    return buf.getvalue()


def hostile_routes(png_bytes) -> dict[str, object]:
    ok = static(png_bytes(1))
    return {
        "/robots.txt": static(b"User-agent: *\nDisallow: /private/\n", "text/plain"),
        "/ok.png": ok,
        "/private/secret.png": static(png_bytes(2)),
        "/drip.png": drip(every=0.1),
        "/hang.png": hang(),
        "/reset-once.png": sequence(reset(), static(png_bytes(3))),
        "/reset-always.png": reset(),
        "/500-then-200.png": sequence(static(b"oops", "text/plain", status=500), static(png_bytes(4))),
        "/429.png": sequence(static(b"slow down", "text/plain", status=429, headers={"Retry-After": "1"}), static(png_bytes(5))),
        "/429-forever.png": static(b"", "text/plain", status=429, headers={"Retry-After": "3600"}),
        "/404.png": static(b"gone", "text/plain", status=404),
        "/loop-a.png": redirect("/loop-b.png"),
        "/loop-b.png": redirect("/loop-a.png"),
        "/hop1.png": redirect("/hop2.png", 301),
        "/hop2.png": redirect("/ok2.png", 307),
        "/ok2.png": static(png_bytes(6)),
        "/far1.png": redirect("/far2.png"),
        "/far2.png": redirect("/far3.png"),
        "/far3.png": redirect("/far4.png"),
        "/far4.png": redirect("/ok.png"),
        "/to-ftp.png": redirect("ftp://127.0.0.1/x.png"),
        "/wrong-type.png": static(png_bytes(7), "text/plain"),
        "/html-as.jpg": static(b"<!doctype html><html><body>not a picture</body></html>", "text/html"),
        "/html-lying.jpg": static(b"<!doctype html><html><body>not a picture</body></html>", "image/jpeg"),
        "/octet.png": static(png_bytes(8), "application/octet-stream"),
        "/truncated.png": static(png_bytes(9)[:-30]),
        "/gzip-bomb.png": gzip_bomb(),
        "/declared-huge.png": _declared_huge(),
        "/pixel-bomb.png": static(big_png()),
        "/endless.png": endless(),
        "/noai.png": static(png_bytes(10), headers={"X-Robots-Tag": "noai"}),
        "/noimageai.png": static(png_bytes(11), headers={"X-Robots-Tag": "noindex, noimageai"}),
        "/other-bot-noai.png": static(png_bytes(12), headers={"X-Robots-Tag": "otherbot: noai"}),
        "/page.html": html("<p>a page, not an image</p>"),
    }


def _declared_huge():  # noqa: ANN202
    def route(h):  # noqa: ANN001, ANN202
        h.send_response(200)
        h.send_header("Content-Type", "image/png")
        h.send_header("Content-Length", str(10 << 30))
        h.end_headers()
        h.close_connection = True

    return route


#: path -> (status, reason in the sample table or None when ok, HTTP status or None, server hits)
EXPECTED = {
    "/ok.png": ("downloaded", None, 200, 1),
    "/private/secret.png": ("robots", "robots", None, 0),
    "/drip.png": ("timeout", "timeout", None, RETRIES + 1),
    "/hang.png": ("timeout", "timeout", None, RETRIES + 1),
    "/reset-once.png": ("downloaded", None, 200, 2),
    "/reset-always.png": ("fetch_error", "fetch_error", None, RETRIES + 1),
    "/500-then-200.png": ("downloaded", None, 200, 2),
    "/429.png": ("downloaded", None, 200, 2),
    "/429-forever.png": ("http_error", "http_error", 429, 1),
    "/404.png": ("http_error", "http_error", 404, 1),
    "/loop-a.png": ("redirect_loop", "redirect_loop", 302, 1),
    "/hop1.png": ("downloaded", None, 200, 1),
    "/far1.png": ("too_many_redirects", "too_many_redirects", 302, 1),
    "/to-ftp.png": ("refused", "refused", 302, 1),
    "/wrong-type.png": ("not_an_image", "not_an_image", 200, 1),
    "/html-as.jpg": ("not_an_image", "not_an_image", 200, 1),
    "/html-lying.jpg": ("not_an_image", "not_an_image", 200, 1),
    "/octet.png": ("downloaded", None, 200, 1),
    "/truncated.png": ("truncated", "truncated", 200, 1),
    "/gzip-bomb.png": ("too_large", "too_large", 200, 1),
    "/declared-huge.png": ("too_large", "too_large", 200, 1),
    "/pixel-bomb.png": ("too_large", "too_large", 200, 1),
    "/endless.png": ("too_large", "too_large", 200, 1),
    "/noai.png": ("noai", "noai", 200, 1),
    "/noimageai.png": ("noai", "noai", 200, 1),
    "/other-bot-noai.png": ("downloaded", None, 200, 1),
    "/page.html": ("not_an_image", "not_an_image", 200, 1),
}


def hostile_config(urls: str, **kw: object) -> CrawlConfig:
    base = dict(
        urls=urls,
        allow_private=True,
        concurrency=32,
        per_host=32,
        timeout=TIMEOUT,
        read_timeout=READ,
        connect_timeout=1.0,
        retries=RETRIES,
        backoff=BACKOFF,
        max_retry_wait=3.0,
        max_redirects=2,
        max_bytes=MAX_BYTES,
        max_pixels=10_000,
        max_error_fraction=1.0,
        workers=1,  # one process: exact server hit counts (each worker reads robots.txt itself)
    )
    base.update(kw)
    return CrawlConfig(**base)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, png_bytes_module):
    """Crawl the whole catalogue once; the tests below read the outcome."""
    tmp = tmp_path_factory.mktemp("hostile")
    with Site(hostile_routes(png_bytes_module)) as site:
        lst = tmp / "urls.txt"
        lst.write_text("\n".join(site.url(p) for p in EXPECTED) + "\n")
        ws = Workspace(tmp / "ws")
        t0 = time.monotonic()
        res = crawl(ws, hostile_config(str(lst)))
        wall = time.monotonic() - t0
        hits, times = dict(site.hits), {k: list(v) for k, v in site.times.items()}
    rows = {r["source"].split(str(site.port), 1)[1]: r for r in ws.samples().to_pylist()}
    return {"res": res, "rows": rows, "hits": hits, "times": times, "wall": wall, "ws": ws}


@pytest.fixture(scope="module")
def png_bytes_module():
    from conftest import png_bytes

    return png_bytes


def test_every_url_ends_with_the_right_status(hostile):
    rows = hostile["rows"]
    assert set(rows) == set(EXPECTED), "every URL of the list has exactly one row"
    got = {p: (r["crawl_status"], r["reason"], r["http_status"]) for p, r in rows.items()}
    want = {p: e[:3] for p, e in EXPECTED.items()}
    assert got == want
    for p, r in rows.items():
        assert (r["status"] == "ok") == (EXPECTED[p][1] is None)
        if r["status"] == "excluded":
            assert r["excluded_by"] == "crawl" and r["error"], p


def test_server_hits_show_retries_and_no_extra_fetches(hostile):
    hits = hostile["hits"]
    assert {p: hits.get(p, 0) for p in EXPECTED} == {p: e[3] for p, e in EXPECTED.items()}
    assert hits["/robots.txt"] == 1, "robots.txt is read once per origin"
    assert hits["/loop-b.png"] == 1 and hits["/ok2.png"] == 1 and "/far4.png" not in hits


def test_nothing_hangs_past_its_timeout(hostile):
    rows = hostile["rows"]
    # Each attempt is bounded by the total timeout; retries add their backoff (at most 1.5 x 0.05 x 2^k).
    bound = (RETRIES + 1) * (TIMEOUT + 0.3) + sum(1.5 * BACKOFF * 2**k for k in range(RETRIES))
    for p, r in rows.items():
        if p != "/429.png":
            assert r["elapsed"] < bound, (p, r["elapsed"])
    assert rows["/drip.png"]["elapsed"] >= (RETRIES + 1) * TIMEOUT * 0.95, "the drip is cut by the total timeout"
    assert "total timeout" in rows["/drip.png"]["error"]
    assert "read" in rows["/hang.png"]["error"].lower()
    assert rows["/hang.png"]["elapsed"] < (RETRIES + 1) * (READ + 0.3) + 0.5
    assert hostile["wall"] < 30


def test_retry_after_is_honoured(hostile):
    t = hostile["times"]["/429.png"]
    assert len(t) == 2 and t[1] - t[0] >= 0.95, "the second request waits for Retry-After: 1"
    r = hostile["rows"]["/429-forever.png"]
    assert "Retry-After 3600s is longer than --max-retry-wait" in r["error"]
    # the 429 ends the URL at once; on a loaded machine an earlier attempt may have timed out first
    assert r["http_status"] == 429 and r["attempts"] in (1, 2)


def test_size_caps_and_bombs(hostile):
    rows = hostile["rows"]
    assert "Content-Encoding bomb" in rows["/gzip-bomb.png"]["error"]
    assert rows["/gzip-bomb.png"]["bytes_received"] < 200_000, "the bomb is stopped early, not fully read"
    assert "Content-Length" in rows["/declared-huge.png"]["error"]
    assert rows["/endless.png"]["bytes_received"] <= MAX_BYTES + (64 << 10) + 1024
    assert "decompression bomb" in rows["/pixel-bomb.png"]["error"]
    assert "Content-Type text/plain" in rows["/wrong-type.png"]["error"]
    assert "no image signature" in rows["/html-lying.jpg"]["error"]


def test_stats_and_crawl_log(hostile):
    import pyarrow.parquet as pq

    res, ws = hostile["res"], hostile["ws"]
    st = res["stats"]
    assert st["urls"] == len(EXPECTED) and st["fetched_now"] == len(EXPECTED)
    n_ok = sum(1 for e in EXPECTED.values() if e[1] is None)
    assert st["downloaded"] == n_ok and st["summary"]["included"] == n_ok
    log = pq.read_table(ws.state_path(res["version"], "crawl_log.parquet")).to_pylist()
    assert len(log) == len(EXPECTED) and {r["status"] for r in log} == {e[0] for e in EXPECTED.values()}


# ---------------------------------------------------------------------------------------- address checks
def _crawl_one(tmp_path, site, path, **kw):  # noqa: ANN001, ANN202
    lst = tmp_path / "one.txt"
    lst.write_text(site.url(path) + "\n")
    ws = Workspace(tmp_path / "ws")
    crawl(ws, hostile_config(str(lst), **kw))
    return ws.samples().to_pylist()[0]


def test_loopback_is_refused_without_allow_private(tmp_path, png_bytes):
    with Site({"/a.png": static(png_bytes(1))}) as site:
        row = _crawl_one(tmp_path, site, "/a.png", allow_private=False)
        assert site.hits["/a.png"] == 0 and site.hits["/robots.txt"] == 0, "nothing is sent to a refused address"
    assert row["crawl_status"] == "refused" and "loopback" in row["error"] and "--allow-private" in row["error"]


def test_localhost_name_is_resolved_and_refused(tmp_path, png_bytes):
    with Site({"/a.png": static(png_bytes(1))}) as site:
        lst = tmp_path / "one.txt"
        lst.write_text(f"http://localhost:{site.port}/a.png\n")
        ws = Workspace(tmp_path / "ws")
        crawl(ws, hostile_config(str(lst), allow_private=False))
        assert site.hits["/a.png"] == 0
    row = ws.samples().to_pylist()[0]
    assert row["crawl_status"] == "refused" and "localhost" in row["error"]


def test_redirect_to_private_address_is_refused_on_that_hop(tmp_path, png_bytes):
    # Only the test site itself is exempt (--allow-host); the redirect target 10.0.0.1 is private: refused
    # before any connection is tried (a connection to 10.0.0.1 would time out here instead).
    routes = {"/go.png": redirect("http://10.0.0.1/latest/x.png"), "/ok.png": static(png_bytes(1))}
    with Site(routes) as site:
        row = _crawl_one(tmp_path, site, "/go.png", allow_private=False, allow_hosts=("127.0.0.1",))
        assert site.hits["/go.png"] == 1
    assert row["crawl_status"] == "refused" and "10.0.0.1 is a private address" in row["error"]
    assert row["elapsed"] < 0.5


def test_redirect_to_cloud_metadata_is_refused_even_with_allow_private(tmp_path):
    with Site({"/meta.png": redirect("http://169.254.169.254/latest/meta-data/")}) as site:
        row = _crawl_one(tmp_path, site, "/meta.png", allow_private=True)
    assert row["crawl_status"] == "refused" and "cloud metadata" in row["error"]


def test_non_http_urls_are_refused(tmp_path):
    lst = tmp_path / "urls.txt"
    lst.write_text("ftp://example.org/a.png\nfile:///etc/passwd\nnot a url\n")
    ws = Workspace(tmp_path / "ws")
    crawl(ws, hostile_config(str(lst)))
    rows = ws.samples().to_pylist()
    assert [r["crawl_status"] for r in rows] == ["refused"] * 3
    assert all("not http or https" in r["error"] for r in rows)


def test_unreachable_robots_txt_blocks_the_site(tmp_path, png_bytes):
    routes = {"/robots.txt": static(b"down", "text/plain", status=503), "/a.png": static(png_bytes(1))}
    with Site(routes) as site:
        row = _crawl_one(tmp_path, site, "/a.png")
        assert site.hits["/a.png"] == 0
    # RFC 9309: a site whose robots.txt fails with 5xx gets nothing fetched; the status says the site failed.
    assert row["crawl_status"] == "http_error" and "robots.txt unreachable (HTTP 503)" in row["error"]


def test_ignore_robots_and_allow_noai(tmp_path, png_bytes):
    routes = {
        "/robots.txt": static(b"User-agent: *\nDisallow: /\n", "text/plain"),
        "/a.png": static(png_bytes(1), headers={"X-Robots-Tag": "noai"}),
    }
    with Site(routes) as site:
        row = _crawl_one(tmp_path, site, "/a.png", ignore_robots=True, allow_noai=True)
        assert site.hits["/robots.txt"] == 0
    assert row["crawl_status"] == "downloaded"


def test_deadline_bounds_a_url_across_retries(tmp_path, png_bytes_module):
    """``--deadline`` covers every attempt: a drip that would take (retries + 1) x timeout gets fewer attempts."""
    with Site({"/drip.png": drip(every=0.1)}) as site:
        lst = tmp_path / "urls.txt"
        lst.write_text(site.url("/drip.png") + "\n")
        ws = Workspace(tmp_path / "ws")
        crawl(ws, hostile_config(str(lst), deadline=TIMEOUT + 1.0, ignore_robots=True))
        hits = site.hits["/drip.png"]
    (row,) = ws.samples().to_pylist()
    assert row["reason"] == "timeout" and "deadline" in row["error"], row["error"]
    assert hits <= 2 < RETRIES + 1, "without a deadline each of the retries + 1 attempts runs its full timeout"
