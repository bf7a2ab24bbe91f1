"""Vault's ``LIST`` verb, framed by one HTTP parser and never by rewriting bytes.

hvac, node-vault and the vault CLI send ``LIST /v1/...``. llhttp, aiohttp's C parser, knows
a fixed set of methods and answers 400 to ``LIST`` before any handler runs.

An earlier version rewrote every TCP segment that began ``LIST /path`` into
``GET /path?list=true`` before the C parser saw it. A segment boundary is not a request
boundary: segments inside a request body were rewritten too, each rewrite grew the body,
``Content-Length`` then ended the request early and the rest of the body was answered as a
request of its own (request smuggling: a reverse proxy that reuses upstream connections
hands that answer to another user), and a request line split across segments broke the
connection. A rewrite is only safe where the parser says a request begins, and the C
parser does not say.

So nothing is rewritten. Each connection's handler gets aiohttp's pure-Python request
parser instead of the C one (``ListMethodParser``): it accepts any RFC 9110 token as a
method and is strict for requests (CRLF only, no obs-fold, ``Transfer-Encoding`` with
``Content-Length`` refused), so ``LIST`` reaches the handler as ``request.method`` and one
parser alone decides where every request begins and ends. It is narrowed to aiohttp's
standard methods plus ``LIST``, exact case: anything else is a 400 before any handler (as
llhttp refuses what it does not know), so an invented method never reaches the access log
or grows the metrics' label sets.

Cost, measured on the 2-core box under other load: parsing a typical hvac GET takes
about 60 us in this parser against 12 us in llhttp (medians of 5 x 20,000); the broker
spends about 410 us of CPU per request on its cheapest authenticated path
(``auth/token/lookup-self``), where C parser, old rewrite and this parser measured 417,
407 and 410 us (medians of 5 x 3,000 requests): the difference is within the noise.

aiohttp offers no public hook for the parser, so two private attributes of its
``RequestHandler`` are used, ``_parser`` and ``_read_bufsize``; they are checked when this
module is imported, so an aiohttp that changes them fails at start-up with a clear error
rather than serving with the wrong parser.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from aiohttp import hdrs, web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    HttpProcessingError,
    LineTooLong,
)
from aiohttp.http_parser import HttpRequestParserPy, RawRequestMessage
from aiohttp.web_protocol import MAX_MSG_QUEUE_SIZE, RequestHandler, RequestPayloadError

#: aiohttp's standard methods plus Vault's ``LIST``; exact bytes, so ``list`` or ``Get`` is
#: refused as llhttp refuses it.
ACCEPTED_METHODS: Final[frozenset[bytes]] = frozenset(
    m.encode("ascii") for m in (*hdrs.METH_ALL, "LIST")
)

_PRIVATE_ATTRIBUTES: Final = (
    (BaseProtocol, "_parser"),
    (RequestHandler, "_read_bufsize"),
)


class AiohttpInternalsChanged(RuntimeError):
    """aiohttp no longer has the handler attributes ``broker.api.listmethod`` replaces;
    update that module for this aiohttp version."""


def _check_aiohttp_internals() -> None:
    for cls, name in _PRIVATE_ATTRIBUTES:
        if name not in getattr(cls, "__slots__", ()):
            raise AiohttpInternalsChanged(
                f"{AiohttpInternalsChanged.__doc__} (missing {cls.__name__}.{name})"
            )


_check_aiohttp_internals()


class ListMethodParser(HttpRequestParserPy):
    """aiohttp's pure-Python request parser, taking only ``ACCEPTED_METHODS``.

    Its refusals never quote the request: aiohttp's messages carry the offending line
    (``Got more than 8190 bytes when reading: b'X-Vault-Token: ...'``), and aiohttp both
    answers the 400 with that message and logs it. A header can hold a token or a
    password, so the message is replaced by one naming only what was wrong, and the
    original exception (with the bytes) is dropped rather than chained.
    """

    def feed_data(self, data: bytes, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().feed_data(data, *args, **kwargs)
        except BadHttpMethod:
            raise  # ours, from parse_message: at most 20 bytes of the method
        except LineTooLong:
            raise BadHttpMessage("Bad Request: a request line or header is too long") from None
        except HttpProcessingError as exc:
            raise BadHttpMessage(f"Bad Request: malformed request ({type(exc).__name__})") from None

    def parse_message(self, lines: list[bytes]) -> RawRequestMessage:
        method = lines[0].split(b" ", 1)[0]
        if method not in ACCEPTED_METHODS:
            raise BadHttpMethod(method[:20].decode("ascii", "replace"))
        return super().parse_message(lines)


def use_list_method_parser(
    handler: RequestHandler, loop: asyncio.AbstractEventLoop, auto_decompress: bool = True
) -> None:
    """Give a fresh connection handler a ``ListMethodParser`` with the limits aiohttp gave
    the parser it replaces, before any byte has been fed to that one. ``auto_decompress``
    is aiohttp's default; the broker's runner does not change it."""
    handler._parser = ListMethodParser(
        handler,
        loop,
        handler._read_bufsize,
        max_line_size=handler.max_line_size,
        max_field_size=handler.max_field_size,
        max_headers=handler.max_headers,
        payload_exception=RequestPayloadError,
        auto_decompress=auto_decompress,
        max_msg_queue_size=MAX_MSG_QUEUE_SIZE,
    )


class _ProtocolFactory:
    """What a site calls per accepted connection: aiohttp's own handler, re-parsered."""

    def __init__(self, server: web.Server) -> None:
        self._server = server

    def __call__(self) -> RequestHandler:
        handler = self._server()
        use_list_method_parser(handler, asyncio.get_running_loop())
        return handler

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


class VaultAppRunner(web.AppRunner):
    """An AppRunner whose sites accept Vault's ``LIST`` verb."""

    @property
    def server(self) -> Any:
        server = super().server
        return None if server is None else _ProtocolFactory(server)
