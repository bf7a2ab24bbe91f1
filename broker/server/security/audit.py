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
import errno
import hashlib
import json
import logging
import os
import stat
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from broker.exceptions import AuditFailed, InvalidRequest, NotFound, PermissionDenied
from broker.models import AuditDevice
from broker.server.batching import GroupCommit
from broker.server.storage.store import Storage

log = logging.getLogger(__name__)
DEVICE_TYPES = ("file", "table")
GENESIS = "0" * 64
#: Keys whose values stay readable in the audit log: identifiers, never secrets.
_PLAIN_KEYS = frozenset(
    {"lease_id", "request_id", "accessor", "policies", "token_policies", "lease_duration"}
)


def line_hash(line: str) -> str:
    return hashlib.sha256(line.encode()).hexdigest()


def render_line(entry: Mapping[str, Any], prev_hash: str) -> str:
    """One JSON line. ``json.dumps`` escapes every control character and, with
    ``ensure_ascii``, every non-ASCII one (U+2028 too): no value, however a client spells
    it, can end the line or its string early."""
    return json.dumps({**entry, "prev_hash": prev_hash}, separators=(",", ":"), default=str)


def hash_values(value: Any, hmac: Callable[[str], str], key: str = "") -> Any:
    """Every string leaf replaced by its HMAC, but for the identifier keys above."""
    if isinstance(value, Mapping):
        return {k: hash_values(v, hmac, k) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [hash_values(v, hmac, key) for v in value]
    if isinstance(value, str) and value and key not in _PLAIN_KEYS:
        return hmac(value)
    return value


@dataclass(frozen=True, slots=True)
class ChainBreak:
    line_number: int
    reason: str


def verify_lines(lines: Iterator[str]) -> tuple[int, ChainBreak | None]:
    """(entries checked, first break or None). The first entry's ``prev_hash`` is taken as
    given: a file may continue a chain begun in a rotated-away file."""
    previous: str | None = None
    count = 0
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\n")
        if not line:
            continue
        try:
            entry = json.loads(line)
            prev = entry["prev_hash"]
        except (ValueError, KeyError, TypeError):
            return count, ChainBreak(number, "not an audit entry (unparseable or no prev_hash)")
        if previous is not None and prev != line_hash(previous):
            return count, ChainBreak(
                number,
                "prev_hash does not match the line before: that line or this one "
                "was edited, or lines between them were removed",
            )
        previous = line
        count += 1
    return count, None


class _Sink(Protocol):
    async def write(self, lines: Sequence[str]) -> None: ...

    async def head(self) -> str: ...


def resolve_file_path(target: str, allowed_dirs: Sequence[str]) -> str:
    """The real location ``target`` writes to, if it lies inside one of ``allowed_dirs``.

    Why: whoever may enable an audit device chooses where the broker appends lines, and a
    line holds text the caller controls (the request path); pointed at a shell profile or a
    cron file, that is code execution as the broker's user (Vault's CVE-2025-6000). Every
    symlink and ``..`` is resolved first, so neither leads out of the allowed directories.
    """
    if not os.path.isabs(target):
        raise InvalidRequest(f"file_path must be an absolute path or stdout, not {target!r}")
    if not allowed_dirs:
        raise InvalidRequest(
            "file audit devices are disabled: the server setting audit_file_dirs (the "
            "directories they may write in) is empty; use file_path=stdout or a table device"
        )
    try:
        real = os.path.realpath(target)
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"file_path {target!r} cannot be resolved") from exc
    for directory in allowed_dirs:
        root = os.path.realpath(directory)
        if real != root and os.path.commonpath([real, root]) == root:
            return real
    raise InvalidRequest(
        f"file_path {target!r} is outside the directories allowed by the server setting "
        "audit_file_dirs"
    )


#: Opening never follows a symlink in the last component, never blocks on a FIFO, and the
#: descriptor is not inherited by anything the broker starts.
_OPEN_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _check_opened(fd: int, target: str) -> None:
    """A file device writes only to a regular file that nothing would execute."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise InvalidRequest(f"{target} is not a regular file")
    if info.st_mode & 0o111:
        raise InvalidRequest(f"{target} is executable; an audit log must not be")


def _last_line(fd: int) -> str:
    """The file's last non-empty line (read from at most its last MiB)."""
    size = os.fstat(fd).st_size
    start = max(0, size - 1_048_576)
    chunks = []
    while start < size:
        chunk = os.pread(fd, size - start, start)
        if not chunk:
            break
        chunks.append(chunk)
        start += len(chunk)
    text = b"".join(chunks).decode(errors="replace").rstrip()
    return text.rsplit("\n", 1)[-1]


def _is_audit_entry(line: str) -> bool:
    try:
        entry = json.loads(line)
    except ValueError:
        return False
    return isinstance(entry, dict) and isinstance(entry.get("prev_hash"), str)


def prepare_file(target: str, allowed_dirs: Sequence[str]) -> bool:
    """Check a new file device's target and create it (mode 0600) if it does not exist;
    True if it was created here. An existing file is taken only when it is a regular,
    non-executable file that is empty or ends with a broker audit entry: the device then
    continues that log, and appends to nothing else (a profile, a crontab, a config)."""
    resolve_file_path(target, allowed_dirs)
    try:
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, 0o600))
        return True
    except FileExistsError:
        pass
    except OSError as exc:
        raise InvalidRequest(f"cannot create {target}: {exc.strerror}") from exc
    try:
        fd = os.open(target, os.O_RDWR | os.O_APPEND | _OPEN_FLAGS)
    except OSError as exc:
        reason = "it is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        raise InvalidRequest(f"cannot open {target}: {reason}") from exc
    try:
        _check_opened(fd, target)
        last = _last_line(fd)
    finally:
        os.close(fd)
    if last and not _is_audit_entry(last):
        raise InvalidRequest(
            f"{target} exists and is not a broker audit log; choose a new file or an empty one"
        )
    return False


class FileSink:
    """JSON lines appended to a file (or stdout). The location is checked again at every
    open, against the settings of this server: a device stored by an older version, or a
    row edited in storage, cannot make this node write outside ``audit_file_dirs``."""

    def __init__(self, path: str, allowed_dirs: Sequence[str] = ()) -> None:
        self._path = path
        self._dirs = tuple(allowed_dirs)
        self._refusal_logged = False

    async def head(self) -> str:
        return self._read_head()

    def _checked_path(self) -> str:
        try:
            resolve_file_path(self._path, self._dirs)
        except InvalidRequest as exc:
            if not self._refusal_logged:  # once, not at every request
                log.error("audit file %s refused: %s", self._path, exc.message)
                self._refusal_logged = True
            raise
        return self._path

    def _read_head(self) -> str:
        """The hash of the file's last line: the chain continues across restarts."""
        if self._path == "stdout":
            return GENESIS
        try:
            fd = os.open(self._checked_path(), os.O_RDONLY | _OPEN_FLAGS)
        except FileNotFoundError:
            return GENESIS
        try:
            _check_opened(fd, self._path)
            tail = _last_line(fd)
        finally:
            os.close(fd)
        return line_hash(tail) if tail else GENESIS

    async def write(self, lines: Sequence[str]) -> None:
        self._append(lines)

    def _append(self, lines: Sequence[str]) -> None:
        """One write(2) with O_APPEND: lines of one batch stay together and in order."""
        text = "".join(line + "\n" for line in lines)
        if self._path == "stdout":
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | _OPEN_FLAGS
        fd = os.open(self._checked_path(), flags, 0o600)
        try:
            _check_opened(fd, self._path)
            os.write(fd, text.encode())
        finally:
            os.close(fd)


class TableSink:
    def __init__(self, storage: Storage, device: str, node_id: str) -> None:
        self._storage = storage
        self._device = device
        self._node_id = node_id

    async def head(self) -> str:
        last = await self._storage.last_audit_entry(self._device, self._node_id)
        return line_hash(last) if last else GENESIS

    async def write(self, lines: Sequence[str]) -> None:
        await self._storage.insert_audit_entries(self._device, self._node_id, lines)


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
        storage: Storage,
        node_id: str,
        file_dirs: Sequence[str] = (),
        api_creation: bool = True,
    ) -> None:
        self._storage = storage
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
        return self._storage.barrier.audit_hmac(value)

    async def refresh(self) -> None:
        devices = await self._storage.list_audit_devices()
        chains = {}
        for device in devices:
            chains[device.path] = self._chains.get(device.path) or _Chain(self._sink(device))
        self._chains = chains

    def _sink(self, device: AuditDevice) -> _Sink:
        if device.type == "file":
            return FileSink(device.options.get("file_path", "stdout"), self._file_dirs)
        return TableSink(self._storage, device.path, self._node_id)

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
            inserted = await self._storage.insert_audit_device(device)
        finally:
            if created and not inserted:  # a refused request leaves no file behind
                os.unlink(options["file_path"])
        if not inserted:
            raise InvalidRequest(f"path already in use: {path}")
        await self._changed()

    async def disable(self, path: str) -> None:
        await self._storage.delete_audit_device(path.strip("/"))
        await self._changed()

    async def list(self) -> list[AuditDevice]:
        return await self._storage.list_audit_devices()

    async def _changed(self) -> None:
        await self.refresh()
        await self._storage.notify_auth_changed("audit")

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
        devices = {d.path: d for d in await self._storage.list_audit_devices()}
        if devices.get(path.strip("/")) is None:
            raise NotFound()
        by_node: dict[str, list[str]] = {}
        for node_id, line in await self._storage.audit_entries(path.strip("/")):
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
