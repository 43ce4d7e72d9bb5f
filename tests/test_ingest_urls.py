"""``curate ingest`` of a manifest with http(s) URLs: the crawler's fetch path, not a second one.

Every server is a ``crawl_sites.Site`` on a loopback address that the test starts: loopback is refused unless
``allow_private`` / ``allow_hosts`` let it through, which several tests check on purpose. Nothing asserts speed:
concurrency is proven by a server that answers only once several requests wait at the same time.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from crawl_sites import Site, drip, redirect, static

from curate.errors import TooManyErrors

METADATA_URLS = (
    "http://169.254.169.254/latest/meta-data/iam.png",
    "http://[fd00:ec2::254]/latest/meta-data/x.png",
    "http://169.254.170.2/v2/credentials.png",
)


def _manifest(tmp_path, urls: list[str]):  # noqa: ANN202
    path = tmp_path / "urls.csv"
    path.write_text("url,label\n" + "".join(f"{u},l{i % 2}\n" for i, u in enumerate(urls)))
    return path


def _rows(ws) -> dict[str, dict]:  # noqa: ANN001
    return {r["source"]: r for r in ws.samples().to_pylist()}


def test_loopback_urls_are_refused_by_default(tmp_path, workspace, ingest, png_bytes):
    with Site({f"/{i}.png": static(png_bytes(i)) for i in range(20)}) as site:
        man = _manifest(tmp_path, [site.url(f"/{i}.png") for i in range(20)])
        with pytest.raises(TooManyErrors, match="refused=20"):
            ingest(workspace, man)
        ingest(workspace, man, max_error_fraction=1)
        assert sum(site.hits.values()) == 0, "nothing is sent to a refused address, robots.txt included"
    rows = _rows(workspace)
    assert len(rows) == 20
    assert {(r["status"], r["excluded_by"], r["reason"]) for r in rows.values()} == {("excluded", "ingest", "refused")}
    assert all("loopback" in r["error"] and "--allow-private" in r["error"] for r in rows.values())


def test_allow_private_fetches_and_robots_txt_is_obeyed(tmp_path, workspace, ingest, png_bytes):
    routes = {
        "/robots.txt": static(b"User-agent: *\nDisallow: /private/\n", "text/plain"),
        "/a.png": static(png_bytes(1)),
        "/b.png": static(png_bytes(2)),
        "/private/c.png": static(png_bytes(3)),
    }
    with Site(routes) as site:
        urls = [site.url(p) for p in ("/a.png", "/b.png", "/private/c.png", "/a.png")]
        # robots is the site's wish, not a failure: 1 of 4 excluded must not trip the default error limit
        ingest(workspace, _manifest(tmp_path, urls), allow_private=True)
        assert site.hits["/private/c.png"] == 0 and site.hits["/robots.txt"] == 1
    rows = _rows(workspace)
    assert [(rows[u]["status"], rows[u]["reason"], rows[u]["label"]) for u in urls[:3]] == [
        ("ok", None, "l0"),
        ("ok", None, "l1"),
        ("excluded", "robots", "l0"),
    ]
    assert rows[urls[0]]["extra_labels"] == ["l1"], "the same URL twice is the same bytes: one row, two places"


def test_redirect_from_an_allowed_host_to_loopback_is_refused(tmp_path, workspace, ingest, png_bytes):
    # 127.0.0.1 is exempt (allow_hosts), as a public host would be; the redirect target 127.0.0.2 is loopback
    # and is refused on that hop even though a server there would answer.
    with Site({"/x.png": static(png_bytes(1))}, host="127.0.0.2") as inner:
        with Site({"/go.png": redirect(inner.url("/x.png")), "/ok.png": static(png_bytes(2))}) as outer:
            man = _manifest(tmp_path, [outer.url("/go.png"), outer.url("/ok.png")])
            ingest(workspace, man, allow_hosts=("127.0.0.1",), max_error_fraction=1)
            assert outer.hits["/go.png"] == 1
        assert sum(inner.hits.values()) == 0
    rows = _rows(workspace)
    go, ok = rows[outer.url("/go.png")], rows[outer.url("/ok.png")]
    assert (go["reason"], ok["status"]) == ("refused", "ok")
    assert "127.0.0.2 is a loopback address" in go["error"]


def test_cloud_metadata_is_refused_even_with_allow_private_and_never_connected(tmp_path, workspace, ingest, png_bytes, monkeypatch):
    connected: list[str] = []
    real = asyncio.open_connection

    async def spy(host, port, **kw):  # noqa: ANN001, ANN003, ANN202 - every socket the fetcher opens goes here
        connected.append(host)
        return await real(host, port, **kw)

    monkeypatch.setattr(asyncio, "open_connection", spy)
    with Site({"/meta.png": redirect(METADATA_URLS[0]), "/ok.png": static(png_bytes(1))}) as site:
        urls = [*METADATA_URLS, site.url("/meta.png"), site.url("/ok.png")]
        ingest(workspace, _manifest(tmp_path, urls), allow_private=True, max_error_fraction=1)
    rows = _rows(workspace)
    for url in urls[:-1]:
        assert rows[url]["reason"] == "refused" and "cloud metadata" in rows[url]["error"], url
    assert rows[site.url("/ok.png")]["status"] == "ok"
    assert set(connected) == {"127.0.0.1"}, "no connection to a metadata address was even tried"


def test_proxy_from_the_environment_is_not_used(tmp_path, workspace, ingest, png_bytes, monkeypatch):
    with Site({}) as proxy, Site({"/a.png": static(png_bytes(1))}) as site:
        for var in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(var, proxy.url(""))
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        urls = [site.url("/a.png"), METADATA_URLS[0]]
        ingest(workspace, _manifest(tmp_path, urls), allow_private=True, max_error_fraction=1)
        assert sum(proxy.hits.values()) == 0, dict(proxy.hits)
        assert site.hits["/a.png"] == 1
    rows = _rows(workspace)
    assert (rows[urls[0]]["status"], rows[urls[1]]["reason"]) == ("ok", "refused")


def test_timeout_is_a_deadline_for_the_whole_url(tmp_path, workspace, ingest):
    # One byte every 0.5 s of 40 promised: 20 s to finish, each read well inside any per-read timeout. The 3 s
    # deadline ends it in the first attempt and leaves no time for a retry (the old fetch read it to the end).
    with Site({"/drip.png": drip(total=40, every=0.5)}) as site:
        t0 = time.monotonic()
        ingest(workspace, _manifest(tmp_path, [site.url("/drip.png")]), allow_private=True, timeout=3, max_error_fraction=1)
        wall = time.monotonic() - t0
        assert site.hits["/drip.png"] == 1, "no retry starts that could not finish within the deadline"
    row = _rows(workspace)[site.url("/drip.png")]
    assert row["reason"] == "timeout" and "deadline of 3s" in row["error"]
    assert wall < 15, "generous: the deadline is 3 s; reading the drip to its end takes 20 s"


def _together(barrier: threading.Barrier, body: bytes, gauge: dict[str, int] | None = None):  # noqa: ANN202
    """A route that answers only once ``barrier.parties`` requests wait at the same time (503 if they never do)."""

    def route(h):  # noqa: ANN001, ANN202
        if gauge is not None:
            with h.site.lock:
                gauge["now"] += 1
                gauge["max"] = max(gauge["max"], gauge["now"])
        try:
            barrier.wait()
            ok = True
        except threading.BrokenBarrierError:
            ok = False
        if gauge is not None:
            with h.site.lock:  # before the answer: the client cannot send its next request before this
                gauge["now"] -= 1
        h.send(body) if ok else h.send(b"never together", "text/plain", status=503)

    return route


def test_urls_are_fetched_concurrently_by_default(tmp_path, workspace, ingest, png_bytes):
    # The barrier gives up before the client would (timeout 90): a request abandoned by a client timeout and then
    # retried must not make up a pair with its own retry.
    n = 4  # the default --per-host
    barrier = threading.Barrier(n, timeout=30)
    with Site({f"/{i}.png": _together(barrier, png_bytes(i)) for i in range(n)}) as site:
        ingest(workspace, _manifest(tmp_path, [site.url(f"/{i}.png") for i in range(n)]), allow_private=True, timeout=90)
    assert not barrier.broken
    assert {r["status"] for r in _rows(workspace).values()} == {"ok"}


def test_per_host_limit_holds_and_is_used(tmp_path, workspace, ingest, png_bytes):
    barrier, gauge = threading.Barrier(2, timeout=30), {"now": 0, "max": 0}
    with Site({f"/{i}.png": _together(barrier, png_bytes(i), gauge) for i in range(8)}) as site:
        urls = [site.url(f"/{i}.png") for i in range(8)]
        ingest(workspace, _manifest(tmp_path, urls), allow_private=True, per_host=2, concurrency=16, timeout=90)
    assert not barrier.broken and gauge["max"] == 2, "requests came in pairs, never three at once"
    assert {r["status"] for r in _rows(workspace).values()} == {"ok"}


def test_cli_ingest_has_the_crawl_network_options(tmp_path, png_bytes, monkeypatch):
    from typer.testing import CliRunner

    from curate.cli import app

    monkeypatch.delenv("CURATE_CONFIG", raising=False)
    with Site({"/a.png": static(png_bytes(1))}) as site:
        man = _manifest(tmp_path, [site.url("/a.png")])
        args = ["ingest", str(man), "--workspace", str(tmp_path / "ws"), "--json", "--allow-private", "--ignore-robots"]
        args += ["--concurrency", "2", "--per-host", "1", "--timeout", "20"]
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
        assert site.hits["/robots.txt"] == 0 and site.hits["/a.png"] == 1
    assert json.loads(res.output)["stats"]["summary"]["included"] == 1
    bad = CliRunner().invoke(app, ["ingest", str(man), "--workspace", str(tmp_path / "ws2"), "--concurrency", "0"])
    assert bad.exit_code == 2 and "--concurrency must be positive" in bad.output
