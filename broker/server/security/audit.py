"""Audit devices: one request entry and one response entry per call, hash-chained.

Every entry names the SHA-256 of the line before it (``prev_hash``), so a line edited or
deleted breaks the chain at the next line; ``broker audit verify`` finds the first break.
Secret values (passwords, tokens, secret IDs, anything in request or response data) are
replaced by ``hmac-sha256:<hex>`` under the install's audit key, as Vault does; an operator
finds a known value with ``sys/audit-hash``. Vault's rule holds: when no enabled device can
record an entry, the request fails rather than go unaudited.

Devices: ``file`` (JSON lines appended to a path, or ``stdout``) and ``table`` (rows in the
storage database, one chain per node since nodes write concurrently). A file device writes
only inside the directories of the ``audit_file_dirs`` setting, to a regular, non-executable
file that is new or already an audit log: otherwise a token allowed to enable devices could
append caller-controlled text to a shell profile (Vault's CVE-2025-6000).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from broker.exceptions import AuditFailed, InvalidRequest, NotFound, PermissionDenied
from broker.models import AuditDevice
from broker.server.batching import GroupCommit
from broker.server.security.audit_chain import (
    GENESIS,
    line_hash,
    render_line,
    verify_lines,
)
from broker.server.security.audit_files import FileSink, prepare_file
from broker.server.storage.audit import AuditStore

log = logging.getLogger(__name__)
DEVICE_TYPES = ("file", "table")


class _Sink(Protocol):
    async def write(self, lines: Sequence[str]) -> None: ...

    async def head(self) -> str: ...


class TableSink:
    def __init__(self, store: AuditStore, device: str, node_id: str) -> None:
        self._store = store
        self._device = device
        self._node_id = node_id

    async def head(self) -> str:
        last = await self._store.last_audit_entry(self._device, self._node_id)
        return line_hash(last) if last else GENESIS

    async def write(self, lines: Sequence[str]) -> None:
        await self._store.insert_audit_entries(self._device, self._node_id, lines)


class _Chain:
    """One device's writer: entries are chained in submission order and written in that
    order (group commit keeps order); a failed write makes the head be re-read."""

    def __init__(self, sink: _Sink) -> None:
        self._sink = sink
        self._head: str | None = None
        self._head_lock = asyncio.Lock()  # one read of the head, however many callers wait
        self._writes: GroupCommit[str, None] = GroupCommit(self._flush)

    async def _flush(self, lines: Sequence[str]) -> list[None]:
        try:
            await self._sink.write(lines)
        except BaseException:
            self._head = None
            raise
        return [None] * len(lines)

    async def append(self, entry: Mapping[str, Any]) -> None:
        if self._head is None:
            async with self._head_lock:
                if self._head is None:
                    self._head = await self._sink.head()
        # No await between reading the head and advancing it: entries chain in order.
        line = render_line(entry, self._head)
        self._head = line_hash(line)
        await self._writes.submit(line)


class Auditor:
    """The enabled devices of this node. ``file_dirs`` are the directories file devices may
    write in (the ``audit_file_dirs`` setting); with ``api_creation`` false, devices cannot
    be enabled through the API at all (OpenBao's ``unsafe_allow_api_audit_creation``)."""

    def __init__(
        self,
        store: AuditStore,
        node_id: str,
        file_dirs: Sequence[str] = (),
        api_creation: bool = True,
    ) -> None:
        self._store = store
        self._node_id = node_id
        self._chains: dict[str, _Chain] = {}
        self._file_dirs = tuple(d for d in file_dirs if os.path.isabs(d))
        for ignored in set(file_dirs) - set(self._file_dirs):
            log.warning("audit_file_dirs: ignoring %r, which is not an absolute path", ignored)
        self._api_creation = api_creation

    @property
    def enabled(self) -> bool:
        return bool(self._chains)

    def hash_value(self, value: str) -> str:
        """``hmac-sha256:<hex>`` under the install's audit key, as entries carry it."""
        return self._store.barrier.audit_hmac(value)

    async def refresh(self) -> None:
        devices = await self._store.list_audit_devices()
        chains = {}
        for device in devices:
            chains[device.path] = self._chains.get(device.path) or _Chain(self._sink(device))
        self._chains = chains

    def _sink(self, device: AuditDevice) -> _Sink:
        if device.type == "file":
            return FileSink(device.options.get("file_path", "stdout"), self._file_dirs)
        return TableSink(self._store, device.path, self._node_id)

    async def enable(
        self, path: str, type_: str, description: str, options: dict[str, str]
    ) -> None:
        if not self._api_creation:
            raise PermissionDenied(
                "audit devices cannot be enabled through the API: the server setting "
                "allow_api_audit_creation is false"
            )
        path = path.strip("/")
        if not path:
            raise InvalidRequest("audit device path is required")
        if type_ not in DEVICE_TYPES:
            raise InvalidRequest(f"unknown audit device type {type_!r}; use file or table")
        if type_ == "file":
            target = options.get("file_path") or options.get("path")
            if not target:
                raise InvalidRequest("file_path is required for a file audit device")
            options = {**options, "file_path": target}
            options.pop("path", None)
        created = False
        if type_ == "file" and options["file_path"] != "stdout":
            # Vault checks the device can write before enabling it; so does this, and that
            # the file is one an audit log may be (see prepare_file).
            created = prepare_file(options["file_path"], self._file_dirs)
        device = AuditDevice(path, type_, description, options)
        inserted = False
        try:
            inserted = await self._store.insert_audit_device(device)
        finally:
            if created and not inserted:  # a refused request leaves no file behind
                os.unlink(options["file_path"])
        if not inserted:
            raise InvalidRequest(f"path already in use: {path}")
        await self._changed()

    async def disable(self, path: str) -> None:
        await self._store.delete_audit_device(path.strip("/"))
        await self._changed()

    async def list(self) -> list[AuditDevice]:
        return await self._store.list_audit_devices()

    async def _changed(self) -> None:
        await self.refresh()
        await self._store.notify_devices_changed()

    async def record(self, entry: Mapping[str, Any]) -> None:
        """Write to every device; fail only when none could record it."""
        if not self._chains:
            return
        failures = 0
        for path, chain in list(self._chains.items()):
            try:
                await chain.append(entry)
            except Exception as exc:
                failures += 1
                log.error("audit device %s failed: %s", path, type(exc).__name__)
        if failures == len(self._chains):
            raise AuditFailed()

    async def verify_table(self, path: str) -> dict[str, Any]:
        """Check the chains of a table device, per node."""
        devices = {d.path: d for d in await self._store.list_audit_devices()}
        if devices.get(path.strip("/")) is None:
            raise NotFound()
        by_node: dict[str, list[str]] = {}
        for node_id, line in await self._store.audit_entries(path.strip("/")):
            by_node.setdefault(node_id, []).append(line)
        report = {}
        for node_id, lines in by_node.items():
            count, broken = verify_lines(iter(lines))
            report[node_id] = {
                "entries": count,
                "break": None if broken is None else broken.line_number,
                "reason": None if broken is None else broken.reason,
            }
        return report


def now_text() -> str:
    return dt.datetime.now(dt.UTC).isoformat()
