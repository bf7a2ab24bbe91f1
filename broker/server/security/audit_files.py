"""File audit devices: where one may write, and appending to it without being redirected.

Whoever may enable an audit device chooses where the broker appends lines that hold text
the caller controls; pointed at a shell profile or a cron file that is code execution as
the broker's user (Vault's CVE-2025-6000). So a file device writes only inside the
``audit_file_dirs`` directories, to a regular, non-executable file that is new or already
an audit log, opened from the allowed directory down without following any symlink.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import sys
from collections.abc import Sequence

from broker.exceptions import InvalidRequest

log = logging.getLogger(__name__)


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
    return _allowed_location(target, allowed_dirs)[0]


def _allowed_location(target: str, allowed_dirs: Sequence[str]) -> tuple[str, str]:
    """(real path, the allowed directory it lies in), or a 400."""
    try:
        real = os.path.realpath(target)
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"file_path {target!r} cannot be resolved") from exc
    for directory in allowed_dirs:
        root = os.path.realpath(directory)
        if real != root and os.path.commonpath([real, root]) == root:
            return real, root
    raise InvalidRequest(
        f"file_path {target!r} is outside the directories allowed by the server setting "
        "audit_file_dirs"
    )


def open_beneath(target: str, allowed_dirs: Sequence[str], flags: int, mode: int = 0o600) -> int:
    """Open ``target`` without leaving its allowed directory between check and open.

    ``realpath`` decides where the path leads, but a directory on the way could be swapped
    for a symlink right after; so the file is opened from the allowed directory down, one
    component at a time relative to the previous one (``openat``), none of them followed if
    it is a symlink. A swap then fails the open instead of redirecting it."""
    resolve_file_path(target, allowed_dirs)  # absolute, allowed: the enable-time 400s
    real, root = _allowed_location(target, allowed_dirs)
    parts = os.path.relpath(real, root).split(os.sep)
    dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            below = os.open(
                part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd
            )
            os.close(dir_fd)
            dir_fd = below
        return os.open(parts[-1], flags | _OPEN_FLAGS, mode, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


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
    if os.path.islink(target):
        raise InvalidRequest(f"cannot open {target}: it is a symbolic link")
    try:
        os.close(open_beneath(target, allowed_dirs, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
        return True
    except FileExistsError:
        pass
    except OSError as exc:
        raise InvalidRequest(f"cannot create {target}: {exc.strerror}") from exc
    try:
        fd = open_beneath(target, allowed_dirs, os.O_RDWR | os.O_APPEND)
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

    @property
    def target(self) -> str:
        """What checkpoints name: the file's real path (as ``broker audit verify`` finds
        it on the host), or ``stdout``."""
        return self._path if self._path == "stdout" else os.path.realpath(self._path)

    async def last_line(self) -> str | None:
        return self._read_last_line()

    def _open(self, flags: int) -> int:
        try:
            return open_beneath(self._path, self._dirs, flags)
        except InvalidRequest as exc:
            if not self._refusal_logged:  # once, not at every request
                log.error("audit file %s refused: %s", self._path, exc.message)
                self._refusal_logged = True
            raise

    def _read_last_line(self) -> str | None:
        """The file's last line: the chain continues from it across restarts."""
        if self._path == "stdout":
            return None
        try:
            fd = self._open(os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            _check_opened(fd, self._path)
            tail = _last_line(fd)
        finally:
            os.close(fd)
        return tail or None

    def read_lines(self) -> list[str]:
        """The whole file, for the server's verification: opened the way writes are (inside
        ``audit_file_dirs``, no symlink), so verifying reads only an audit log."""
        if self._path == "stdout":
            raise InvalidRequest("a device writing to stdout has no file to verify")
        try:
            fd = self._open(os.O_RDONLY)
        except FileNotFoundError as exc:
            raise InvalidRequest(f"{self._path} does not exist") from exc
        except OSError as exc:
            raise InvalidRequest(f"cannot open {self._path}: {exc.strerror}") from exc
        try:
            _check_opened(fd, self._path)
            with os.fdopen(os.dup(fd), "rb") as fh:
                data = fh.read()
        finally:
            os.close(fd)
        return data.decode(errors="replace").splitlines()

    async def write(self, lines: Sequence[str]) -> None:
        self._append(lines)

    def _append(self, lines: Sequence[str]) -> None:
        """One write(2) with O_APPEND: lines of one batch stay together and in order."""
        text = "".join(line + "\n" for line in lines)
        if self._path == "stdout":
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        fd = self._open(os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            _check_opened(fd, self._path)
            os.write(fd, text.encode())
        finally:
            os.close(fd)
