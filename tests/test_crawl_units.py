"""The crawler's parts on their own: HTML parsing, URL normalisation, address classification (and its enforcement at
connect time), robots rules, label rules, the per-host frontier, the journal and the bounded gzip decoder."""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import json
import time

import pytest
from crawl_sites import Site, static

from curate.crawl import Task
from curate.crawl.fetcher import _Decoder, _retry_after, _Stop
from curate.crawl.frontier import Frontier
from curate.crawl.inputs import LabelRule, parse_seed
from curate.crawl.journal import Journal
from curate.crawl.links import is_image_url, largest_srcset, normalize_url, parse_page
from curate.crawl.netsafety import AddressGuard, RefusedAddress, address_problem, check_scheme
from curate.crawl.robots import RobotsCache, agent_token, x_robots_noai
from curate.crawl.transport import make_transport
from curate.errors import UsageError

# ---------------------------------------------------------------------------------------------- links


@pytest.mark.parametrize(
    ("raw", "base", "want"),
    [
        ("HTTP://Example.ORG:80/a/../b#frag", None, "http://example.org:80/a/../b".replace(":80", "")),
        ("https://example.org:443", None, "https://example.org/"),
        ("https://example.org:8443/x?q=1", None, "https://example.org:8443/x?q=1"),
        ("../img/a.png", "https://e.org/gallery/cats/", "https://e.org/gallery/img/a.png"),
        ("//cdn.e.org/a.png", "https://e.org/", "https://cdn.e.org/a.png"),
        ("mailto:me@e.org", None, None),
        ("javascript:void(0)", "https://e.org/", None),
        ("data:image/png;base64,AAAA", None, None),
        ("http://[::1]:8080/a", None, "http://[::1]:8080/a"),
        ("   ", None, None),
        ("http://e.org:99999/", None, None),
    ],
)
def test_normalize_url(raw, base, want):
    assert normalize_url(raw, base) == want


def test_srcset_picks_the_largest_candidate():
    assert largest_srcset("a.jpg 480w, b.jpg 1080w, c.jpg 800w") == "b.jpg"
    assert largest_srcset("a.jpg, b.jpg 2x, c.jpg 1.5x") == "b.jpg"
    assert largest_srcset("a.jpg 1x,b.jpg 3x") == "b.jpg"
    assert largest_srcset("") is None


def test_parse_page_finds_links_images_and_meta_robots():
    page = parse_page(
        """<html><head><base href="https://cdn.e.org/base/"><meta name="Robots" content="noindex, NoImageAI"></head>
        <body><img src="a.png"><img srcset="s.png 100w, l.png 900w"><img data-src="lazy.png">
        <picture><source srcset="p.webp 1x, p2.webp 2x"><source srcset="q.avif"><img src="fallback.png"></picture>
        <picture><img src="only.png"></picture>
        <a href="/page2">next</a><a href="photo.JPG?size=big#x">photo</a><area href="map.html">
        <a href="page2">again</a><a href="mailto:x@y">m</a><img src="a.png"><p>unclosed <b>tags""",
        "https://e.org/start",
    )
    base = "https://cdn.e.org/base/"
    assert page.images == [base + x for x in ("a.png", "l.png", "lazy.png", "p2.webp", "only.png", "photo.JPG?size=big")]
    assert page.links == ["https://cdn.e.org/page2", base + "map.html", base + "page2"]
    assert page.noai and not page.nofollow
    assert parse_page('<meta name="robots" content="nofollow"><a href="/x">x</a>', "http://e.org/").nofollow


def test_parse_page_survives_garbage():
    page = parse_page("<a href='/ok'>" + "<<<>>>&#xZZZ;<img src=" * 1000 + "\x00\xff", "http://e.org/")
    assert "http://e.org/ok" in page.links


def test_is_image_url():
    assert is_image_url("http://e.org/A.JPEG?x=1") and not is_image_url("http://e.org/a.png/page")


# ------------------------------------------------------------------------------------------ netsafety


@pytest.mark.parametrize(
    ("ip", "problem"),
    [
        ("8.8.8.8", None),
        ("2606:4700::1111", None),
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.1", "private"),
        ("172.16.5.5", "private"),
        ("fd12::1", "private"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("100.100.100.200", "cloud metadata"),
        ("100.64.0.1", "non-public"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("2002:7f00:1::", "loopback"),  # 6to4 wrapping 127.0.0.1
    ],
)
def test_address_classification(ip, problem):
    assert address_problem(ipaddress.ip_address(ip)) == problem


def test_check_scheme():
    assert check_scheme("https://e.org/x") == ("https", "e.org", 443)
    for bad in ("ftp://e.org/", "file:///etc/passwd", "/local/path", "http:///nohost", "http://e.org:x/"):
        with pytest.raises(RefusedAddress):
            check_scheme(bad)


def test_guard_rules():
    async def go() -> None:
        strict = AddressGuard()
        with pytest.raises(RefusedAddress, match="loopback"):
            await strict.resolve("localhost", 80)
        with pytest.raises(RefusedAddress, match="private"):
            await strict.check_url("http://10.0.0.1/")
        loose = AddressGuard(allow_private=True)
        assert await loose.resolve("127.0.0.1", 80) == ["127.0.0.1"]
        with pytest.raises(RefusedAddress, match="cloud metadata"):
            await loose.resolve("169.254.169.254", 80)
        exempt = AddressGuard(allow_hosts=["127.0.0.1"])
        assert await exempt.resolve("127.0.0.1", 80) == ["127.0.0.1"]
        with pytest.raises(RefusedAddress):
            await exempt.resolve("127.0.0.2", 80)

    asyncio.run(go())


def test_transport_refuses_at_connect_time_without_any_precheck(png_bytes):
    """The enforcing check: a plain request through the guarded transport never reaches a loopback server,
    whatever the caller checked before (this is what catches DNS rebinding and redirect hops)."""
    import httpx

    async def get(guard: AddressGuard, url: str) -> object:
        async with httpx.AsyncClient(transport=make_transport(guard, max_connections=2)) as client:
            return await client.get(url)

    with Site({"/a.png": static(png_bytes(1))}) as site:
        with pytest.raises(RefusedAddress, match="loopback"):
            asyncio.run(get(AddressGuard(), site.url("/a.png")))
        assert site.hits["/a.png"] == 0
        resp = asyncio.run(get(AddressGuard(allow_private=True), site.url("/a.png")))
        assert resp.status_code == 200 and site.hits["/a.png"] == 1


# --------------------------------------------------------------------------------------------- robots


def test_x_robots_tag_parsing():
    assert x_robots_noai(["noai"], "curate")
    assert x_robots_noai(["noindex, NoImageAI"], "curate")
    assert x_robots_noai(["googlebot: noindex", "curate: noai"], "curate")
    assert not x_robots_noai(["otherbot: noai"], "curate")
    assert not x_robots_noai(["max-image-preview: large", "noindex"], "curate")
    assert x_robots_noai(["*: noai"], "curate")
    assert agent_token("curate/0.1 (+x)") == "curate" and agent_token("MyBot") == "MyBot"


def test_robots_rules_are_read_once_per_origin():
    calls: list[str] = []

    async def fetch(url: str) -> tuple[str, int | None, str | None, str | None]:
        calls.append(url)
        await asyncio.sleep(0.01)
        if "down" in url:
            return "timeout", None, None, "ReadTimeout"
        if "none" in url:
            return "http_error", 404, None, "HTTP 404"
        return "ok", 200, "User-agent: curate\nDisallow: /private\nCrawl-delay: 99\n\nUser-agent: *\nDisallow: /\n", None

    async def go() -> None:
        rc = RobotsCache(fetch, "curate/1.0", max_delay=5)
        got = await asyncio.gather(*(rc.check(f"http://a.org/{p}") for p in ("x", "private/y", "z")))
        assert got[0] is None and got[1][0] == "robots" and got[2] is None
        assert rc.delay("http://a.org/x") == 5, "Crawl-delay capped"
        assert await rc.check("http://none.org/anything") is None, "4xx robots.txt: no rules"
        status, error = await rc.check("http://down.org/a")
        assert status == "timeout" and "robots.txt unreachable" in error
        other = RobotsCache(fetch, "otherbot/2")
        assert (await other.check("http://a.org/x"))[0] == "robots"

    asyncio.run(go())
    assert sorted(calls) == sorted(
        ["http://a.org/robots.txt", "http://none.org/robots.txt", "http://down.org/robots.txt"] + ["http://a.org/robots.txt"]
    )


def _robots_verdicts(text: str, agent: str, paths: list[str]) -> dict[str, bool]:
    """``{path: allowed}`` under robots.txt ``text`` for ``agent``, through RobotsCache as the crawler asks."""

    async def fetch(url: str) -> tuple[str, int | None, str | None, str | None]:
        return "ok", 200, text, None

    async def go() -> dict[str, bool]:
        rc = RobotsCache(fetch, agent)
        return {p: await rc.check(f"http://a.org{p}") is None for p in paths}

    return asyncio.run(go())


def test_robots_wildcards_and_end_anchor_follow_rfc_9309():
    text = "User-agent: *\nDisallow: /*.jpg$\nDisallow: /private*/\n"
    paths = ["/a/b.jpg", "/b.jpg?x=1", "/a.jpgx", "/a.png", "/private1/x.png", "/privatex", "/pub/x.png"]
    got = _robots_verdicts(text, "curate/1.0", paths)
    assert got == {
        "/a/b.jpg": False,  # `*` spans folders and `$` anchors the end
        "/b.jpg?x=1": True,  # `$`: the query string is part of the path matched
        "/a.jpgx": True,
        "/a.png": True,
        "/private1/x.png": False,
        "/privatex": True,  # `/private*/` needs the slash
        "/pub/x.png": True,
    }


def test_robots_longest_match_wins_and_agent_groups():
    text = (
        "User-agent: curate\nDisallow: /img/\nAllow: /img/public/\nDisallow: /img/public/*.tmp$\nCrawl-delay: 2\n\n"
        "User-agent: *\nDisallow: /\n"
    )
    got = _robots_verdicts(text, "curate/1.0 (+x)", ["/img/a.png", "/img/public/a.png", "/img/public/a.tmp", "/other.png"])
    assert got == {"/img/a.png": False, "/img/public/a.png": True, "/img/public/a.tmp": False, "/other.png": True}
    assert _robots_verdicts(text, "otherbot/2", ["/other.png"]) == {"/other.png": False}, "others get the * group"


# --------------------------------------------------------------------------------------------- inputs


def test_label_rules_and_seeds():
    url = "https://e.org/data/cats/tabby/001.jpg"
    assert LabelRule("dir:1").label(url) == "cats" and LabelRule("dir:-1").label(url) == "tabby"
    assert LabelRule("dir:9").label(url) is None
    assert LabelRule(r"regex:/data/(\w+)/").label(url) == "cats"
    assert LabelRule(r"regex:(?P<x>\d+)\.(?P<label>jpg)").label(url) == "jpg"
    assert LabelRule("regex:tabby").label(url) == "tabby"
    assert LabelRule("seed").label(url, "https://e.org/gallery/dogs/", None) == "dogs"
    assert LabelRule("seed").label(url, "https://e.org/", None) == "e.org"
    assert LabelRule("seed").label(url, "https://e.org/x/", "pets") == "pets"
    for bad in ("dir:x", "regex:(", "folder", "seed:1"):
        with pytest.raises(UsageError):
            LabelRule(bad)
    assert parse_seed("cats=https://e.org/c/") == ("cats", "https://e.org/c/")
    assert parse_seed("https://e.org/?a=b") == (None, "https://e.org/?a=b")
    assert parse_seed(" https://e.org/ ") == (None, "https://e.org/")


# ------------------------------------------------------------------------------------------- frontier


def test_frontier_limits_per_host_and_serves_other_hosts_meanwhile():
    async def go() -> list[str]:
        f = Frontier(per_host=2)
        for i in range(4):
            f.add(Task(f"http://a.org/{i}", "image"))
        f.add(Task("http://b.org/0", "image"))
        assert not f.add(Task("http://a.org/0", "image")) and f.repeated == 1
        got = [await f.get() for _ in range(3)]
        hosts = [t.url.split("/")[2] for t in got]
        assert sorted(hosts) == ["a.org", "a.org", "b.org"], "a.org is capped at 2 while b.org is served"
        waiter = asyncio.create_task(f.get())
        await asyncio.sleep(0.01)
        assert not waiter.done(), "a.org is full: the worker waits"
        f.done(got[0])
        nxt = await asyncio.wait_for(waiter, 1)
        return [t.url for t in got] + [nxt.url]

    urls = asyncio.run(go())
    assert len(set(urls)) == 4


def test_frontier_pause_and_end():
    async def go() -> None:
        f = Frontier(per_host=4)
        f.add(Task("http://a.org/1", "image"))
        f.pause("a.org", 0.2)
        t0 = time.monotonic()
        task = await f.get()
        assert time.monotonic() - t0 >= 0.19
        f.done(task)
        assert await f.get() is None, "nothing queued, nothing running: the end"
        lowered = Frontier(per_host=1)
        lowered.add(Task("http://a.org/p", "page", depth=3))
        lowered.add(Task("http://a.org/p", "page", depth=1))
        assert (await lowered.get()).depth == 1, "found again closer to the seed before it ran"

    asyncio.run(go())


def test_frontier_feed_is_read_lazily():
    consumed = []

    def feed():  # noqa: ANN202
        for i in range(100):
            consumed.append(i)
            yield Task(f"http://a.org/{i}", "image")

    async def go() -> int:
        f = Frontier(per_host=100, feed=feed(), lookahead=10)
        first = await f.get()
        assert len(consumed) <= 11
        n = 1
        f.done(first)
        while (t := await f.get()) is not None:
            n += 1
            f.done(t)
        return n

    assert asyncio.run(go()) == 100


# -------------------------------------------------------------------------------------------- journal


def test_journal_roundtrip_torn_line_and_missing_bytes(tmp_path):
    j = Journal(tmp_path / "c")
    assert j.open({"x": 1}, retry_failed=False) == "fresh"
    j.append({"url": "http://a/1", "status": "downloaded", "sample_id": "s1"}, b"one")
    j.append({"url": "http://a/2", "status": "http_error", "error": None})
    j.append({"url": "http://a/3", "status": "downloaded", "sample_id": "s3"}, b"three")
    j.close()
    # A torn last line, and a record whose bytes never reached the disk (offset past the end).
    with open(tmp_path / "c" / "journal.jsonl", "ab") as fh:
        fh.write(json.dumps({"url": "http://a/4", "status": "downloaded", "gen": 1, "offset": 999, "length": 5}).encode() + b"\n")
        fh.write(b'{"url": "http://a/5", "sta')
    again = Journal(tmp_path / "c")
    assert again.open({"x": 1}, retry_failed=False) == "resume"
    assert [r["url"] for r in again.current()] == ["http://a/1", "http://a/2", "http://a/3"] and again.resumed == 3
    assert "error" not in again.history["http://a/2"], "nulls are not written"
    with again.reader() as read:
        assert read(again.history["http://a/3"]) == b"three"
    again.mark_committed("000001-crawl")
    assert not again.bodies_path().exists()
    third = Journal(tmp_path / "c")
    assert third.open({"x": 1}, retry_failed=True) == "retry" and third.gen == 2 and third.current() == []
    assert len(third.history) == 3
    fresh = Journal(tmp_path / "c")
    fresh.meta = {**third.meta, "committed": True}
    fresh.mark_committed("000002-crawl")
    assert Journal(tmp_path / "c").open({"x": 1}, retry_failed=False) == "fresh"


# -------------------------------------------------------------------------------------------- fetcher


def test_gzip_decoder_output_is_bounded():
    bomb = gzip.compress(b"\0" * (20 << 20))
    dec = _Decoder("gzip")
    out = dec.feed(bomb, 1001)
    assert len(out) == 1001, "never more than asked for, however small the input"
    assert _Decoder("identity").feed(b"abc", 1) == b"abc"
    raw = __import__("zlib").compressobj(wbits=-15)
    data = raw.compress(b"hello") + raw.flush()
    assert _Decoder("deflate").feed(data, 100) == b"hello", "raw deflate without a zlib header"
    with pytest.raises(_Stop):
        _Decoder("br")
    with pytest.raises(_Stop):
        _Decoder("gzip, gzip")


def test_retry_after_parsing():
    assert _retry_after("7") == 7.0 and _retry_after(None) is None and _retry_after("soon") is None
    from email.utils import formatdate

    assert 8 <= _retry_after(formatdate(time.time() + 10, usegmt=True)) <= 10
