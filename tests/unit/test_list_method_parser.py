"""The parser the broker's connections use: ``LIST`` is a method, framing is the parser's
alone, and no segmentation of the same bytes changes what it frames."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import BadHttpMethod

from broker.server.api.listmethod import ListMethodParser, VaultAppRunner

EMBEDDED = b"GET /v1/sys/seal-status HTTP/1.0\r\n\r\n"
BODY = b"".join(b"LIST a b" + b"x" * 8 for _ in range(4)) + EMBEDDED
ATTACK = (
    b"POST /v1/sys/policies/acl/p HTTP/1.1\r\nHost: h\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
)
LIST = b"LIST /v1/sys/policies/acl HTTP/1.1\r\nHost: h\r\nX-Vault-Token: t\r\n\r\n"
GET = b"GET /v1/sys/health HTTP/1.1\r\nHost: h\r\n\r\n"


def _parser() -> ListMethodParser:
    loop = asyncio.get_running_loop()
    return ListMethodParser(BaseProtocol(loop), loop, 2**16)


def _two_cuts(data: bytes) -> Iterator[list[bytes]]:
    for i in range(1, len(data)):
        yield [data[:i], data[i:]]


def _three_cuts(data: bytes) -> Iterator[list[bytes]]:
    for i in range(1, len(data)):
        for j in range(i + 1, len(data)):
            yield [data[:i], data[i:j], data[j:]]


async def _frame(segments: list[bytes]) -> list[tuple[str, str, bytes]]:
    """(method, path, body) of every request the segments frame."""
    parser = _parser()
    framed = []
    for segment in segments:
        messages, upgraded, tail = parser.feed_data(segment)
        assert not upgraded and not tail
        framed.extend(messages)
    out = []
    for message, payload in framed:
        body = await payload.read() if payload.is_eof() else b"<incomplete>"
        out.append((message.method, message.path, body))
    return out


async def test_a_body_of_list_lines_is_one_request_in_every_segmentation() -> None:
    expected = [("POST", "/v1/sys/policies/acl/p", BODY)]
    assert await _frame([ATTACK]) == expected
    assert await _frame([bytes([b]) for b in ATTACK]) == expected
    for segments in _two_cuts(ATTACK):
        assert await _frame(segments) == expected, segments


async def test_list_then_get_frame_alike_in_every_segmentation() -> None:
    data = LIST + GET
    expected = [("LIST", "/v1/sys/policies/acl", b""), ("GET", "/v1/sys/health", b"")]
    for segments in _three_cuts(data):
        assert await _frame(segments) == expected, segments


@pytest.mark.parametrize("method", [b"list", b"Get", b"FOO", b"PROPFIND", b"LISTX"])
async def test_methods_outside_the_broker_s_set_are_refused(method: bytes) -> None:
    with pytest.raises(BadHttpMethod):
        _parser().feed_data(method + b" / HTTP/1.1\r\nHost: h\r\n\r\n")


async def test_the_runner_s_connections_get_the_list_method_parser() -> None:
    """Fails if an aiohttp upgrade stops the swap from taking effect."""
    runner = VaultAppRunner(web.Application())
    await runner.setup()
    try:
        handler = runner.server()
        assert isinstance(handler._parser, ListMethodParser)
    finally:
        await runner.cleanup()
