"""The connection layer under httpx: asyncio sockets opened only to addresses ``netsafety`` allows.

``make_transport`` builds an ``httpx.AsyncHTTPTransport`` whose connection pool (httpcore) opens every connection
through ``GuardedBackend``: it resolves the hostname, checks every address with the ``AddressGuard`` and connects to
a checked IP (TLS still verifies the certificate against the hostname). A redirect to another host and a DNS answer
that changed since an earlier check (DNS rebinding) are therefore caught where it matters, on each new connection.

The streams are plain asyncio streams rather than httpcore's anyio backend: the crawler runs on asyncio anyway, and
on small images anyio's per-connection machinery (task groups for happy eyeballs, cancel scopes per read) cost about
a sixth of the crawler's CPU. Errors are raised as the httpcore exceptions the pool expects, which httpx maps to
its own (``httpx.ConnectTimeout``, ``httpx.ReadError`` ...).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from curate.crawl.netsafety import AddressGuard, RefusedAddress


def make_transport(guard: AddressGuard, *, max_connections: int, verify: bool = True) -> Any:
    """An ``httpx.AsyncHTTPTransport`` whose every connection goes through ``GuardedBackend(guard)``.

    httpx has no public hook for the network backend, so the transport's pool is replaced by an
    ``httpcore.AsyncConnectionPool`` built the same way plus ``network_backend`` (public httpcore API). Environment
    proxies are off (``trust_env=False``): a proxy would receive the connection instead of the checked address.
    """
    import httpcore
    import httpx

    transport = httpx.AsyncHTTPTransport(trust_env=False)
    transport._pool = httpcore.AsyncConnectionPool(  # noqa: SLF001 - see the docstring
        ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=5.0,
        network_backend=_backend_class()(guard),
    )
    return transport


def _backend_class() -> type:
    """Build the backend and stream classes on first use: httpcore is imported only when a crawl runs."""
    global _BACKEND
    if _BACKEND is not None:
        return _BACKEND
    import httpcore

    class Stream(httpcore.AsyncNetworkStream):
        """One TCP (or TLS) connection on asyncio streams, raising httpcore's exceptions."""

        def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.reader, self.writer = reader, writer

        async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
            try:
                async with asyncio.timeout(timeout):
                    return await self.reader.read(max_bytes)
            except TimeoutError:
                raise httpcore.ReadTimeout(f"no data for {timeout}s") from None
            except OSError as exc:
                raise httpcore.ReadError(str(exc) or type(exc).__name__) from exc

        async def write(self, buffer: bytes, timeout: float | None = None) -> None:
            if not buffer:
                return
            try:
                self.writer.write(buffer)
                async with asyncio.timeout(timeout):
                    await self.writer.drain()
            except TimeoutError:
                raise httpcore.WriteTimeout(f"could not send for {timeout}s") from None
            except OSError as exc:
                raise httpcore.WriteError(str(exc) or type(exc).__name__) from exc

        async def aclose(self) -> None:
            self.writer.close()  # not wait_closed(): a peer that never acknowledges must not hold a worker

        async def start_tls(
            self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
        ) -> Any:
            try:
                async with asyncio.timeout(timeout):
                    await self.writer.start_tls(ssl_context, server_hostname=server_hostname)
            except TimeoutError:
                raise httpcore.ConnectTimeout(f"TLS handshake took more than {timeout}s") from None
            except (OSError, ssl.SSLError) as exc:
                raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
            return self

        def get_extra_info(self, info: str) -> Any:
            if info == "is_readable":  # asked of idle pooled connections: did the server close it meanwhile?
                return self.reader.at_eof() or self.writer.transport.is_closing()
            key = {"client_addr": "sockname", "server_addr": "peername"}.get(info, info)
            return self.writer.get_extra_info(key)

    class GuardedBackend(httpcore.AsyncNetworkBackend):
        """Resolve and check the host of every new connection, then connect to a checked address."""

        def __init__(self, guard: AddressGuard) -> None:
            self.guard = guard

        async def connect_tcp(
            self, host: str, port: int, timeout: float | None = None, local_address: str | None = None, socket_options: Any = None
        ) -> Any:
            try:
                ips = await self.guard.resolve(host, port)
            except OSError as exc:
                raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
            last: Exception | None = None
            for ip in ips:  # several A/AAAA records: try each in turn
                try:
                    async with asyncio.timeout(timeout):
                        local = (local_address, 0) if local_address else None
                        reader, writer = await asyncio.open_connection(ip, port, local_addr=local)
                    return Stream(reader, writer)
                except TimeoutError:
                    last = httpcore.ConnectTimeout(f"connect to {host} ({ip}) took more than {timeout}s")
                except OSError as exc:
                    last = httpcore.ConnectError(f"{host} ({ip}): {exc.strerror or exc}")
            raise last or httpcore.ConnectError(f"no address for {host}")

        async def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Any = None) -> Any:
            raise RefusedAddress("unix sockets are never contacted")

        async def sleep(self, seconds: float) -> None:
            await asyncio.sleep(seconds)

    _BACKEND = GuardedBackend
    return _BACKEND


_BACKEND: type | None = None
