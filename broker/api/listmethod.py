"""Vault's ``LIST`` verb on aiohttp's fast C parser.

llhttp, aiohttp's C HTTP parser, knows a fixed set of methods and answers 400 to ``LIST``
before any handler runs; hvac, node-vault and the vault CLI send it. Forcing aiohttp's
pure-Python parser (``AIOHTTP_NO_EXTENSIONS``) fixes that but slows every request, so
instead each connection's protocol rewrites a request that starts with ``LIST /path``
into ``GET /path?list=true`` (Vault's own equivalent) before the C parser sees it.

Limit: a ``LIST`` pipelined behind another request in one TCP segment is not rewritten
and gets the parser's 400; no known client pipelines.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler


def rewrite_list_request(data: bytes) -> bytes:
    if not data.startswith(b"LIST "):
        return data
    end = data.find(b" ", 5)
    if end < 0:
        return data
    target = data[5:end]
    separator = b"&" if b"?" in target else b"?"
    return b"GET " + target + separator + b"list=true" + data[end:]


class ListRewritingProtocol(asyncio.Protocol):
    """Forwards every protocol event to aiohttp's handler, rewriting ``LIST`` on the way."""

    __slots__ = ("_inner",)

    def __init__(self, inner: RequestHandler) -> None:
        self._inner = inner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if data[:5] == b"LIST ":
            data = rewrite_list_request(data)
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        self._inner.eof_received()
        return None

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class _ProtocolFactory:
    def __init__(self, server: web.Server) -> None:
        self._server = server

    def __call__(self) -> ListRewritingProtocol:
        return ListRewritingProtocol(self._server())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


class VaultAppRunner(web.AppRunner):
    """An AppRunner whose sites accept Vault's ``LIST`` verb."""

    @property
    def server(self) -> Any:
        server = super().server
        return None if server is None else _ProtocolFactory(server)
