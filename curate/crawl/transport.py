"""The connection layer under httpx: asyncio sockets opened only to addresses ``netsafety`` allows.

``make_transport`` builds an ``httpx.AsyncHTTPTransport`` whose connection pool (httpcore) opens every connection
through ``GuardedBackend``: it resolves the hostname, checks every address with the ``AddressGuard`` and connects to
a checked IP (TLS still verifies the certificate against the hostname). A redirect to another host and a DNS answer
that changed since an earlier check (DNS rebinding) are therefore caught where it matters, on each new connection.

The streams are plain asyncio streams rather than httpcore's anyio backend: the crawler runs on asyncio anyway, and
on small images anyio's per-connection machinery (task groups for happy eyeballs, cancel scopes per read) cost about
a sixth of the crawler's CPU. Errors are raised as the httpcore exceptions the pool expects, which httpx maps to
its own (``httpx.ConnectTimeout``, ``httpx.ReadError`` ...).

With ``proxy`` (``--proxy URL`` or ``env``) requests go to an http(s) proxy, which resolves the target name itself.
The proxy pool may connect to the proxy's host only (its address may be private: a corporate proxy usually is);
the target is checked by the fetcher before each request and redirect hop (``AddressGuard.check_url``), which is
all curate can do: the proxy's own lookup may differ from ours (DNS rebinding), so use a proxy that enforces its
own egress rules. Environment proxies are read only for ``env``; NO_PROXY hosts then go direct, guarded as usual.
"""

from __future__ import annotations

import urllib.request
from typing import Any
from urllib.parse import urlsplit

from curate.crawl.netsafety import AddressGuard

ENV = "env"


def make_transport(guard: AddressGuard, *, max_connections: int, verify: bool = True, proxy: str | None = None) -> Any:
    """An ``httpx.AsyncHTTPTransport`` whose every connection goes through ``GuardedBackend(guard)``; with ``proxy``
    (a URL or ``env``, see ``proxy_routes``) a ``ProxyRouter`` over proxied transports and that direct one.

    httpx has no public hook for the network backend, so the transport's pool is replaced by an
    ``httpcore.AsyncConnectionPool`` (or ``AsyncHTTPProxy``) built the same way plus ``network_backend`` (public
    httpcore API). Environment proxies are off (``trust_env=False``) unless ``proxy`` is ``env``.
    """
    import httpcore
    import httpx

    ctx = httpx.create_ssl_context(verify=verify, trust_env=False)
    pool = {"max_connections": max_connections, "max_keepalive_connections": max_connections, "keepalive_expiry": 5.0}
    direct = httpx.AsyncHTTPTransport(trust_env=False)
    direct._pool = httpcore.AsyncConnectionPool(ssl_context=ctx, network_backend=_backend_class()(guard), **pool)  # noqa: SLF001
    if proxy is None:
        return direct
    routes, no_proxy = proxy_routes(proxy)
    via: dict[str, Any] = {}
    for url in set(routes.values()):
        p = httpx.Proxy(url)
        host = p.url.raw_host.decode("ascii")  # as httpcore names it to the backend
        via[url] = httpx.AsyncHTTPTransport(trust_env=False)
        via[url]._pool = httpcore.AsyncHTTPProxy(  # noqa: SLF001 - as above
            proxy_url=httpcore.URL(scheme=p.url.raw_scheme, host=p.url.raw_host, port=p.url.port, target=p.url.raw_path),
            proxy_auth=p.raw_auth,
            proxy_headers=p.headers.raw,
            ssl_context=ctx,
            # the proxy's address is allowed whatever it is; no other host can be connected to from this pool
            network_backend=_backend_class()(AddressGuard(allow_hosts=(host,)), only=host),
            **pool,
        )
    return ProxyRouter(direct, {scheme: via[url] for scheme, url in routes.items()}, no_proxy)


def proxy_routes(proxy: str) -> tuple[dict[str, str], str]:
    """``({"http": proxy URL, "https": proxy URL}, NO_PROXY)`` for ``--proxy``: a URL serves both schemes;
    ``env`` takes HTTP_PROXY / HTTPS_PROXY (ALL_PROXY for a scheme without one) and NO_PROXY from the environment.

    Raises:
        UsageError: not an http(s) proxy URL, credentials in ``--proxy`` (it is recorded with the version's
            settings: put them in HTTP_PROXY and use ``env``), or ``env`` with no proxy variable set.
    """
    from curate.errors import UsageError

    if proxy != ENV:
        url = _proxy_url(proxy, "--proxy")
        if "@" in urlsplit(url).netloc:
            raise UsageError("--proxy: no credentials in the URL (the version records it); set HTTP_PROXY and use --proxy env")
        return {"http": url, "https": url}, ""
    env = urllib.request.getproxies_environment()  # lower-case names first, as curl and httpx read them
    routes = {}
    for scheme in ("http", "https"):
        key = scheme if scheme in env else "all"
        if key in env:
            routes[scheme] = _proxy_url(env[key], f"{key.upper()}_PROXY")
    if not routes:
        raise UsageError("--proxy env: none of HTTP_PROXY, HTTPS_PROXY, ALL_PROXY is set")
    return routes, env.get("no", "")


def _proxy_url(url: str, what: str) -> str:
    from curate.errors import UsageError

    url = url.strip() if "://" in url else f"http://{url.strip()}"  # "proxy:3128" in a variable means http
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise UsageError(f"{what}: not a proxy URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        shown = f"{parts.scheme}://{parts.hostname or ''}{parts.path}"  # never the credentials
        raise UsageError(f"{what} {shown!r}: give an http:// or https:// proxy as scheme://host:port")
    return url


class ProxyRouter:
    """Send each request through its scheme's proxy transport, or ``direct`` when there is none or NO_PROXY names
    the host. The same two methods the fetcher uses of an ``httpx.AsyncHTTPTransport``, plus ``async with``."""

    def __init__(self, direct: Any, via: dict[str, Any], no_proxy: str) -> None:
        self.direct, self.via, self.no_proxy = direct, via, no_proxy

    async def handle_async_request(self, request: Any) -> Any:
        transport = self.via.get(request.url.scheme)
        if transport is None or (self.no_proxy and urllib.request.proxy_bypass_environment(request.url.host, {"no": self.no_proxy})):
            transport = self.direct
        return await transport.handle_async_request(request)

    async def aclose(self) -> None:
        for transport in {id(t): t for t in (self.direct, *self.via.values())}.values():
            await transport.aclose()

    async def __aenter__(self) -> ProxyRouter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _backend_class() -> type:
    """The guarded backend class, imported on first use: httpcore is loaded only when a crawl runs."""
    from curate.crawl.guarded import GuardedBackend

    return GuardedBackend
