"""Audit devices: one request entry and one response entry per call, in a keyed chain.

Every entry names the HMAC-SHA256 of the line before it under the audit chain key of a
keyring term (``prev_hash`` = ``hmac-sha256:v<term>:<hex>``, see audit_chain.py), so a
line edited or deleted breaks the chain at the next line and, unlike a plain hash, whoever
can edit the log cannot recompute the MACs after it. Every ``CHECKPOINT_EVERY`` entries,
every ``CHECKPOINT_SECONDS`` (the periodic job), when a device is disabled or verified and
at shutdown, the chain's position and last MAC are recorded in storage: a log cut short
then fails verification too. Secret values (passwords, tokens, secret IDs, anything in
request or response data) are replaced by ``hmac-sha256:<hex>`` under the install's audit
key, as Vault does; an operator finds a known value with ``sys/audit-hash``. Vault's rule
holds: when no enabled device can record an entry, the request fails rather than go
unaudited.

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
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from broker.exceptions import AuditFailed, InvalidRequest, NotFound, PermissionDenied
from broker.models import AuditDevice
from broker.server.batching import GroupCommit
from broker.server.security.audit_chain import (
    ChainHead,
    ChainKeys,
    Checkpoint,
    head_after,
    render_line,
    verify_lines,
)
from broker.server.security.audit_files import FileSink, prepare_file
from broker.server.storage.audit import AuditStore

log = logging.getLogger(__name__)
DEVICE_TYPES = ("file", "table")
#: A chain records a checkpoint after this many entries since its last one...
CHECKPOINT_EVERY = 256
#: ...or, with at least one new entry, once this many seconds have passed (the periodic
#: job checks as often, so a quiet tail is covered too).
CHECKPOINT_SECONDS = 10.0


class _Sink(Protocol):
    @property
    def target(self) -> str: ...

    async def write(self, lines: Sequence[str]) -> None: ...

    async def last_line(self) -> str | None: ...


class TableSink:
    def __init__(self, store: AuditStore, device: str, node_id: str) -> None:
        self._store = store
        self._device = device
        self._node_id = node_id

    @property
    def target(self) -> str:
        return table_target(self._device)

    async def last_line(self) -> str | None:
        return await self._store.last_audit_entry(self._device, self._node_id)

    async def write(self, lines: Sequence[str]) -> None:
        await self._store.insert_audit_entries(self._device, self._node_id, lines)


def table_target(device: str) -> str:
    """What a table device's checkpoints name as their target."""
    return f"table:{device}"


def _checkpoint(row: tuple[str, int, str, str]) -> Checkpoint:
    return Checkpoint(*row)


class _Chain:
    """One device's writer: entries are chained in submission order and written in that
    order (group commit keeps order); a failed write makes the head be re-read. What has
    been written (``_written``) is what checkpoints record."""

    def __init__(
        self,
        sink: _Sink,
        keys: ChainKeys,
        record: Callable[[_Sink, ChainHead], Awaitable[None]],
    ) -> None:
        self._sink = sink
        self._keys = keys
        self._record = record
        self._head: ChainHead | None = None
        self._head_lock = asyncio.Lock()  # one read of the head, however many callers wait
        self._writes: GroupCommit[str, None] = GroupCommit(self._flush)
        self._written: ChainHead | None = None
        self._checkpointed: tuple[str, int] | None = None
        self._checkpointed_at = time.monotonic()
        self._checkpoint_lock = asyncio.Lock()

    @property
    def sink(self) -> _Sink:
        return self._sink

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
                    self._head = head_after(await self._sink.last_line(), self._keys)
        # No await between reading the head and advancing it: entries chain in order.
        head = self._head
        line = render_line(entry, head.chain, head.seq + 1, head.tag)
        written = ChainHead(head.chain, head.seq + 1, self._keys.tag(line))
        self._head = written
        await self._writes.submit(line)
        # Written, and (group commit keeps order) so is everything chained before it.
        last = self._written
        if last is None or last.chain != written.chain or written.seq > last.seq:
            self._written = written
        if self._due() and not self._checkpoint_lock.locked():
            await self.checkpoint()

    def _due(self) -> bool:
        written, done = self._written, self._checkpointed
        if written is None or (written.chain, written.seq) == done:
            return False
        if done is None or done[0] != written.chain:
            return True
        return (
            written.seq - done[1] >= CHECKPOINT_EVERY
            or time.monotonic() - self._checkpointed_at >= CHECKPOINT_SECONDS
        )

    async def checkpoint(self, force: bool = True) -> None:
        """Record how far the chain has been written; a failure is logged, not raised
        (the entries themselves are written: the next checkpoint covers them)."""
        async with self._checkpoint_lock:
            if not (self._due() if not force else self._written is not None):
                return
            written = self._written
            if written is None or (written.chain, written.seq) == self._checkpointed:
                return
            try:
                await self._record(self._sink, written)
            except Exception as exc:  # the entries are written: never fail the request
                log.warning("audit checkpoint not recorded: %s", type(exc).__name__)
                return
            self._checkpointed = (written.chain, written.seq)
            self._checkpointed_at = time.monotonic()


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
        self._keys = ChainKeys(store.barrier)
        #: Devices enabled with ``hmac_accessor=false``: token accessors stay readable.
        self._plain_accessor: frozenset[str] = frozenset()
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
            chains[device.path] = self._chains.get(device.path) or _Chain(
                self._sink(device), self._keys, self._record_checkpoint(device.path)
            )
        dropped = [chain for path, chain in self._chains.items() if path not in chains]
        self._chains = chains
        for chain in dropped:  # disabled on another node: record how far this one got
            await chain.checkpoint()
        self._plain_accessor = frozenset(
            d.path for d in devices if not hmac_accessor_option(d.options)
        )

    def _sink(self, device: AuditDevice) -> _Sink:
        if device.type == "file":
            return FileSink(device.options.get("file_path", "stdout"), self._file_dirs)
        return TableSink(self._store, device.path, self._node_id)

    async def enable(
        self,
        path: str,
        type_: str,
        description: str,
        options: dict[str, str],
        *,
        from_config: bool = False,
    ) -> None:
        """``from_config``: the server's declarative configuration enables the device, so
        ``allow_api_audit_creation`` does not apply. The setting keeps API callers from
        choosing where the audit trail goes; whoever writes the server's configuration
        already decides that (and ``audit_file_dirs`` still confines file devices)."""
        if not self._api_creation and not from_config:
            raise PermissionDenied(
                "audit devices cannot be enabled through the API: the server setting "
                "allow_api_audit_creation is false"
            )
        path = path.strip("/")
        if not path:
            raise InvalidRequest("audit device path is required")
        if type_ not in DEVICE_TYPES:
            raise InvalidRequest(f"unknown audit device type {type_!r}; use file or table")
        hmac_accessor_option(options)  # a 400 now if it is not a boolean
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
        chain = self._chains.get(path.strip("/"))
        if chain is not None:
            await chain.checkpoint()
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
        hashed: Mapping[str, Any] | None = None
        for path, chain in list(self._chains.items()):
            if path not in self._plain_accessor and hashed is None:
                hashed = hash_accessors(entry, self.hash_value)
            try:
                await chain.append(entry if path in self._plain_accessor else hashed or entry)
            except Exception as exc:
                failures += 1
                log.error("audit device %s failed: %s", path, type(exc).__name__)
        if failures == len(self._chains):
            raise AuditFailed()

    def _record_checkpoint(self, device: str) -> Callable[[_Sink, ChainHead], Awaitable[None]]:
        async def record(sink: _Sink, head: ChainHead) -> None:
            await self._store.insert_audit_checkpoint(
                head.chain, head.seq, device, self._node_id, sink.target, head.tag
            )

        return record

    async def checkpoint(self) -> None:
        """Record every chain's position (the periodic job, and shutdown): a tail written
        since the last checkpoint is covered from now on."""
        for chain in list(self._chains.values()):
            await chain.checkpoint()

    async def checkpoint_due(self) -> None:
        """The periodic job: only the chains with entries older than the interval."""
        for chain in list(self._chains.values()):
            await chain.checkpoint(force=False)

    async def verify(self, path: str) -> dict[str, Any]:
        """Check a device's log with the audit chain key and the checkpoints in storage:
        a table device's chain per node, a file device's file on this node's host."""
        path = path.strip("/")
        device = next((d for d in await self._store.list_audit_devices() if d.path == path), None)
        if device is None:
            raise NotFound()
        chain = self._chains.get(path)
        if chain is not None:
            # What this process wrote is recorded first, so a tail removed since the last
            # checkpoint is caught as well.
            await chain.checkpoint()
        if device.type == "file":
            return {"file": await self._verify_file(device)}
        return {"nodes": await self._verify_table(path)}

    async def _verify_file(self, device: AuditDevice) -> dict[str, Any]:
        sink = FileSink(device.options.get("file_path", "stdout"), self._file_dirs)
        lines = await asyncio.to_thread(sink.read_lines)
        checkpoints = [
            _checkpoint(row) for row in await self._store.audit_checkpoints_of_target(sink.target)
        ]
        latest = await self._store.latest_audit_checkpoint(sink.target, self._node_id)
        report = await asyncio.to_thread(
            verify_lines,
            lines,
            self._keys,
            checkpoints,
            None if latest is None else _checkpoint(latest),
        )
        return {"path": device.options.get("file_path", ""), "node": self._node_id} | (
            report.as_dict()
        )

    async def _verify_table(self, path: str) -> dict[str, Any]:
        """The chains of a table device, per node."""
        by_node: dict[str, list[str]] = {}
        for node_id, line in await self._store.audit_entries(path):
            by_node.setdefault(node_id, []).append(line)
        target = table_target(path)
        checkpoints = [
            _checkpoint(row) for row in await self._store.audit_checkpoints_of_target(target)
        ]
        report = {}
        for node_id, lines in by_node.items():
            latest = await self._store.latest_audit_checkpoint(target, node_id)
            result = await asyncio.to_thread(
                verify_lines,
                lines,
                self._keys,
                checkpoints,
                None if latest is None else _checkpoint(latest),
            )
            report[node_id] = result.as_dict()
        return report


_TRUE = ("true", "1", "t", "yes")
_FALSE = ("false", "0", "f", "no")


def hmac_accessor_option(options: Mapping[str, Any]) -> bool:
    """A device's ``hmac_accessor`` option: true unless set false (Vault's default). A
    token accessor is not the token, but it can look the token up and revoke it, so the
    log does not hand it to whoever reads the log; ``sys/audit-hash`` finds a known one."""
    value = str(options.get("hmac_accessor", "true")).strip().lower()
    if value not in _TRUE + _FALSE:
        raise InvalidRequest("hmac_accessor: expected a boolean")
    return value in _TRUE


def hash_accessors(value: Any, hmac: Callable[[str], str], key: str = "") -> Any:
    """``value`` with every ``accessor`` (left readable by the value hashing) hashed."""
    if isinstance(value, Mapping):
        return {k: hash_accessors(v, hmac, k) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [hash_accessors(v, hmac, key) for v in value]
    if key == "accessor" and isinstance(value, str) and value:
        return hmac(value)
    return value


def now_text() -> str:
    return dt.datetime.now(dt.UTC).isoformat()
