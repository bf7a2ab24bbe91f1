"""Vault's ``LIST`` verb cannot be used to smuggle requests.

The broker once rewrote every TCP segment that began ``LIST `` into ``GET ...?list=true``,
including segments in the middle of a request body; each rewrite grew the body, so the
``Content-Length`` framing shifted and the tail of the body was answered as a second
request (behind a proxy that reuses upstream connections, as another user's answer).
These tests talk raw HTTP over one TCP connection to a running broker and push the bytes
through in many segmentations; whatever the segmentation, the server must see exactly the
requests the bytes frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from dataclasses import dataclass

import pytest

from tests.conftest import TOKEN, RunningBroker

# Long enough that a segment written after it arrives in its own read on loopback.
SEGMENT_GAP = 0.01
# How long a silent connection is taken to have said all it will.
IDLE = 1.5

EMBEDDED = b"GET /v1/sys/seal-status HTTP/1.0\r\n\r\n"
LIST_PATH = "sys/policies/acl"


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        data: dict[str, object] = json.loads(self.body)
        return data


async def _connect(broker: RunningBroker) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, _, port = broker.settings.listen_address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


async def _send(writer: asyncio.StreamWriter, segments: list[bytes]) -> None:
    """Each segment its own write, with a pause between, so each is its own TCP segment."""
    for n, segment in enumerate(segments):
        if n:
            await asyncio.sleep(SEGMENT_GAP)
        writer.write(segment)
        await writer.drain()


async def _read_answer(reader: asyncio.StreamReader, idle: float = IDLE) -> Answer | None:
    """One HTTP response, or None when the server closes or stays silent."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), idle)
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionResetError):
        return None
    status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
    version, status, *_ = status_line.split(" ")
    assert version in ("HTTP/1.1", "HTTP/1.0"), status_line
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if int(status) in (204, 304):
        body = b""
    elif "content-length" in headers:
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), idle)
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await asyncio.wait_for(reader.readline(), idle)).split(b";")[0], 16)
            chunk = await asyncio.wait_for(reader.readexactly(size + 2), idle)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body = await asyncio.wait_for(reader.read(), idle)
    return Answer(int(status), headers, body)


async def _read_all(reader: asyncio.StreamReader) -> list[Answer]:
    answers = []
    while (answer := await _read_answer(reader)) is not None:
        answers.append(answer)
    return answers


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()


def _smuggling_post() -> tuple[bytes, list[bytes]]:
    """A POST whose body arrives as segments that each begin ``LIST `` and whose body ends
    with a complete request: the framing is one request, whatever a segment starts with."""
    body_segments = [b"LIST a b" + b"x" * 20 for _ in range(3)]
    body_segments.append(b"LIST a b" + b"y" * 20 + EMBEDDED)
    body = b"".join(body_segments)
    head = (
        b"POST /v1/sys/policies/acl/brkt-smuggle HTTP/1.1\r\n"
        b"Host: 127.0.0.1\r\n"
        b"X-Vault-Token: " + TOKEN.encode() + b"\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    return head, body_segments


def _split_every(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def _attack_segmentations() -> dict[str, list[bytes]]:
    head, body_segments = _smuggling_post()
    whole = head + b"".join(body_segments)
    return {
        "body-segments-begin-LIST": [head, *body_segments],
        "one-segment": [whole],
        "byte-by-byte": _split_every(whole, 1),
        "seven-byte-segments": _split_every(whole, 7),
        "head-and-body-glued-at-LIST": [head + body_segments[0], *body_segments[1:]],
    }


@pytest.mark.parametrize("name", list(_attack_segmentations()))
async def test_list_in_a_body_is_not_a_request(broker: RunningBroker, name: str) -> None:
    """The attack: one framed request must get exactly one answer, and the embedded
    ``GET sys/seal-status`` must never be answered."""
    segments = _attack_segmentations()[name]
    reader, writer = await _connect(broker)
    try:
        await _send(writer, segments)
        answers = await _read_all(reader)
    finally:
        await _close(writer)
    assert len(answers) == 1, [(a.status, a.body[:200]) for a in answers]
    assert answers[0].status == 400, answers[0].body
    assert b"sealed" not in answers[0].body
    # The refused body changed nothing.
    assert (await broker.http.read("sys/policies/acl/brkt-smuggle")).status == 404


def _list_request(path: str = LIST_PATH) -> bytes:
    return (
        f"LIST /v1/{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Vault-Token: {TOKEN}\r\n\r\n"
    ).encode()


def _get_request(path: str) -> bytes:
    return f"GET /v1/{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Vault-Token: {TOKEN}\r\n\r\n".encode()


def _assert_listed(answer: Answer | None) -> None:
    assert answer is not None
    assert answer.status == 200, answer.body
    data = answer.json()["data"]
    assert isinstance(data, dict)
    assert "default" in data["keys"], data


def _assert_health(answer: Answer | None) -> None:
    assert answer is not None
    assert answer.status == 200, answer.body
    assert answer.json()["sealed"] is False


async def test_list_split_at_every_offset_then_a_kept_alive_get(broker: RunningBroker) -> None:
    """A LIST request line cut anywhere across two segments is still a LIST, and the next
    request on the same connection is framed where it begins."""
    request = _list_request()
    reader, writer = await _connect(broker)
    try:
        for offset in range(1, len(request)):
            await _send(writer, [request[:offset], request[offset:]])
            _assert_listed(await _read_answer(reader))
            await _send(writer, [_get_request("sys/health")])
            _assert_health(await _read_answer(reader))
    finally:
        await _close(writer)


async def test_list_byte_by_byte(broker: RunningBroker) -> None:
    reader, writer = await _connect(broker)
    try:
        await _send(writer, _split_every(_list_request(), 1))
        _assert_listed(await _read_answer(reader))
    finally:
        await _close(writer)


@pytest.mark.parametrize("first", ["get", "list"])
async def test_list_pipelined_in_one_segment(broker: RunningBroker, first: str) -> None:
    """LIST behind (or ahead of) another request in the same segment: two answers, each
    the right one, in order."""
    get, listing = _get_request("sys/health"), _list_request()
    pair = get + listing if first == "get" else listing + get
    reader, writer = await _connect(broker)
    try:
        await _send(writer, [pair])
        answers = [await _read_answer(reader), await _read_answer(reader)]
    finally:
        await _close(writer)
    if first == "get":
        _assert_health(answers[0])
        _assert_listed(answers[1])
    else:
        _assert_listed(answers[0])
        _assert_health(answers[1])


async def test_list_after_a_post_body_on_a_kept_alive_connection(broker: RunningBroker) -> None:
    """A body that happens to end where a LIST begins, in the same segment: the LIST is a
    request of its own because the parser, not the segment, says where it starts."""
    body = b'{"policy": "path \\"x/*\\" { capabilities = [\\"read\\"] }"}'
    post = (
        b"POST /v1/sys/policies/acl/brkt-smuggle-ok HTTP/1.1\r\n"
        b"Host: 127.0.0.1\r\n"
        b"X-Vault-Token: " + TOKEN.encode() + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    reader, writer = await _connect(broker)
    try:
        await _send(writer, [post + _list_request()])
        written, listed = await _read_answer(reader), await _read_answer(reader)
    finally:
        await _close(writer)
    try:
        assert written is not None and written.status == 204, written
        _assert_listed(listed)
        assert listed is not None and "brkt-smuggle-ok" in listed.body.decode()
    finally:
        await broker.http.delete("sys/policies/acl/brkt-smuggle-ok")


@pytest.mark.parametrize("method", [b"list", b"Get", b"FOO", b"PROPFIND", b"LIST\t"])
async def test_unknown_or_odd_methods_are_refused_before_any_handler(
    broker: RunningBroker, method: bytes
) -> None:
    """Only the methods the broker knows get past the parser (unknown ones would otherwise
    reach the access log and the metrics' label sets)."""
    request = method + b" /v1/sys/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    reader, writer = await _connect(broker)
    try:
        await _send(writer, [request])
        answer = await _read_answer(reader)
    finally:
        await _close(writer)
    assert answer is not None and answer.status == 400, answer


async def test_hvac_style_list_still_works(broker: RunningBroker) -> None:
    """The aiohttp client's LIST, as the rest of the suite sends it."""
    reply = await broker.http.list(LIST_PATH)
    assert reply.status == 200, reply.body
    assert "default" in reply.data["keys"]
    # The GET ?list=true spelling Vault also accepts.
    reply = await broker.http.read(f"{LIST_PATH}?list=true")
    assert reply.status == 200, reply.body
    assert "default" in reply.data["keys"]
