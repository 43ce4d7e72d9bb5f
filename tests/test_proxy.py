"""``--proxy``: URL rows fetched through an http proxy, only when asked, with every target still checked here.

The proxy is a ``crawl_sites.Site`` on 127.0.0.1: a request through a proxy names the absolute URL, so the site's
``hits`` are keyed by the full target URL, and it answers itself. The target is a Site on 127.0.0.2 with the
same image: a request that went direct shows up there instead. 127.0.0.2 stands in for a public host
(``allow_hosts``); the proxy's own loopback address needs no flag.
"""

from __future__ import annotations

import json

import pytest
from crawl_sites import Site, redirect, static
from test_ingest_urls import METADATA_URLS, _manifest, _rows

from curate.errors import UsageError

PROXY_VARS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy")


@pytest.fixture
def sites(png_bytes, monkeypatch):  # noqa: ANN001, ANN201 - (proxy, target, image URL)
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    with Site({"/a.png": static(png_bytes(1))}, host="127.0.0.2") as target:
        url = target.url("/a.png")
        with Site({url: static(png_bytes(1))}) as proxy:
            yield proxy, target, url


def test_proxy_flag_sends_requests_through_the_proxy(tmp_path, workspace, ingest, sites):
    proxy, target, url = sites
    ingest(workspace, _manifest(tmp_path, [url]), allow_hosts=("127.0.0.2",), proxy=proxy.url(""))
    assert proxy.hits[url] == 1 and proxy.hits[target.url("/robots.txt")] == 1, dict(proxy.hits)
    assert sum(target.hits.values()) == 0
    assert _rows(workspace)[url]["status"] == "ok"


def test_environment_proxy_only_with_proxy_env(tmp_path, workspace, ingest, sites, monkeypatch):
    proxy, target, url = sites
    monkeypatch.setenv("HTTP_PROXY", proxy.url(""))
    ingest(workspace, _manifest(tmp_path, [url]), allow_hosts=("127.0.0.2",), ignore_robots=True)
    assert (sum(proxy.hits.values()), target.hits["/a.png"]) == (0, 1), "no --proxy: the environment is ignored"
    ingest(workspace, _manifest(tmp_path, [url]), allow_hosts=("127.0.0.2",), ignore_robots=True, proxy="env")
    assert (proxy.hits[url], target.hits["/a.png"]) == (1, 1)
    monkeypatch.setenv("NO_PROXY", "127.0.0.2")
    ingest(workspace, _manifest(tmp_path, [url]), allow_hosts=("127.0.0.2",), ignore_robots=True, proxy="env")
    assert (proxy.hits[url], target.hits["/a.png"]) == (1, 2), "NO_PROXY hosts go direct"


def test_metadata_targets_are_refused_and_never_reach_the_proxy(tmp_path, workspace, ingest, sites):
    proxy, _, _ = sites
    names = ["http://metadata.google.internal/computeMetadata/v1/token.png", "http://Metadata.Google.Internal./x.png"]
    urls = [*METADATA_URLS, *names]
    ingest(workspace, _manifest(tmp_path, urls), allow_private=True, proxy=proxy.url(""), max_error_fraction=1)
    assert sum(proxy.hits.values()) == 0, dict(proxy.hits)
    rows = _rows(workspace)
    for url in urls:
        assert rows[url]["reason"] == "refused" and "cloud metadata" in rows[url]["error"], (url, rows[url]["error"])


def test_redirect_to_a_private_address_through_the_proxy_is_refused(tmp_path, workspace, ingest, sites):
    proxy, _, url = sites
    go, inner = "http://127.0.0.2:9/go.png", "http://127.0.0.3:9/x.png"
    proxy.routes[go] = redirect(inner)
    ingest(workspace, _manifest(tmp_path, [go, url]), allow_hosts=("127.0.0.2",), proxy=proxy.url(""), max_error_fraction=1)
    assert (proxy.hits[go], proxy.hits[inner]) == (1, 0)
    rows = _rows(workspace)
    assert (rows[go]["reason"], rows[url]["status"]) == ("refused", "ok")
    assert "127.0.0.3 is a loopback address" in rows[go]["error"]


def test_bad_proxy_settings_fail_before_fetching(tmp_path, workspace, ingest, sites):
    proxy, target, url = sites
    man = _manifest(tmp_path, [url])
    for value, match in (
        ("socks5://127.0.0.1:1080", "http:// or https://"),
        ("http://user:secret@127.0.0.1:3128", "no credentials"),
        ("env", "none of HTTP_PROXY"),
    ):
        with pytest.raises(UsageError, match=match) as err:
            ingest(workspace, man, allow_hosts=("127.0.0.2",), proxy=value)
        assert "secret" not in str(err.value)
    assert sum(proxy.hits.values()) + sum(target.hits.values()) == 0


def test_cli_crawl_and_ingest_take_proxy(tmp_path, sites, monkeypatch):
    from typer.testing import CliRunner

    from curate.cli import app

    proxy, target, url = sites
    monkeypatch.delenv("CURATE_CONFIG", raising=False)
    (tmp_path / "urls.txt").write_text(url + "\n")
    common = ["--json", "--allow-host", "127.0.0.2", "--ignore-robots", "--proxy", proxy.url("")]
    for args in (["crawl", str(tmp_path / "urls.txt")], ["ingest", str(_manifest(tmp_path, [url]))]):
        res = CliRunner().invoke(app, [*args, "--workspace", str(tmp_path / args[0]), *common])
        assert res.exit_code == 0, res.output
        assert json.loads(res.output)["stats"]["summary"]["included"] == 1
    assert (proxy.hits[url], sum(target.hits.values())) == (2, 0)
    bad = CliRunner().invoke(app, ["ingest", str(tmp_path / "urls.csv"), "--workspace", str(tmp_path / "x"), "--proxy", "ftp://p"])
    assert bad.exit_code == 2 and "--proxy 'ftp://p'" in bad.output


def test_proxy_pool_connects_to_the_proxy_host_only():
    import asyncio

    from curate.crawl.netsafety import AddressGuard, RefusedAddress
    from curate.crawl.transport import _backend_class

    backend = _backend_class()(AddressGuard(allow_hosts=("127.0.0.1",)), only="127.0.0.1")
    with pytest.raises(RefusedAddress, match="only the proxy 127.0.0.1"):
        asyncio.run(backend.connect_tcp("127.0.0.2", 80))
