"""Name resolution under an address policy, for recsink's outgoing HTTP clients (pulls,
webhooks): :class:`CheckedResolver` plugs into aiohttp's public
``TCPConnector(resolver=…)``. aiohttp connects to the addresses a resolver returns, so the
address checked is the address used (a name that changes to point elsewhere between a
check and the connection, DNS rebinding, gets nowhere). URLs with IP literals never reach
a resolver: their callers check those themselves."""

from __future__ import annotations

import socket
from collections.abc import Callable

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

#: ``check(host, port, address)``: raise an :class:`OSError` saying why ``address`` (text,
#: what ``host`` resolved to) may not be connected to on ``port``; return when it may.
Check = Callable[[str, int, str], None]


class CheckedResolver(AbstractResolver):
    """aiohttp's default resolver, keeping only the addresses ``check`` lets through. When
    it lets none through, the last refusal is raised (an :class:`OSError`, which aiohttp's
    connector passes on as its ``ClientConnectorError``'s ``os_error``), or
    ``error("<host> resolves to no address")`` when there was none to check."""

    def __init__(self, check: Check, error: type[OSError] = OSError) -> None:
        self._check = check
        self._error = error
        self._inner = aiohttp.DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        allowed: list[ResolveResult] = []
        refusal: OSError | None = None
        for result in await self._inner.resolve(host, port, family):
            try:
                self._check(host, port, result["host"])
            except OSError as exc:
                refusal = exc
            else:
                allowed.append(result)
        if not allowed:
            raise refusal or self._error(f"{host} resolves to no address")
        return allowed

    async def close(self) -> None:
        await self._inner.close()
