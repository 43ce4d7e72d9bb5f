"""httpcore's network backend for the crawler: connections opened only to addresses the ``AddressGuard`` allows.

Imported only when a crawl runs (``curate.crawl.transport._backend_class``), so that httpcore stays out of
``curate --help``.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import httpcore

from curate.crawl.netsafety import AddressGuard, RefusedAddress


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

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None) -> Any:
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
    """Resolve and check the host of every new connection, then connect to a checked address; ``only``: the
    one host this backend may connect to at all (a proxy's)."""

    def __init__(self, guard: AddressGuard, only: str | None = None) -> None:
        self.guard, self.only = guard, only

    async def connect_tcp(
        self, host: str, port: int, timeout: float | None = None, local_address: str | None = None, socket_options: Any = None
    ) -> Any:
        if self.only is not None and host != self.only:
            raise RefusedAddress(f"{host}: only the proxy {self.only} is connected to")
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
