"""A throwaway PostgreSQL cluster: dev mode's storage and demo target, and the tests'
password-checking server.

Binaries come from the ``pgserver`` wheel when it is installed and usable, else from the
machine (``/usr/lib/postgresql/*/bin``, ``pg_config --bindir``). The cluster checks
passwords (``scram-sha-256``), listens on loopback only and, because PostgreSQL refuses to
run as root, runs as ``nobody`` when started by root.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

from broker.server.secrets_gen import generate_password


def _world_usable(path: Path) -> bool:
    """True if a user with no special group can reach and run ``path``."""
    try:
        if not path.stat().st_mode & stat.S_IXOTH:
            return False
        return all(p.stat().st_mode & stat.S_IXOTH for p in path.parents)
    except OSError:
        return False


def find_bin_dir(need_world_access: bool) -> Path:
    candidates: list[Path] = []
    spec = importlib.util.find_spec("pgserver")
    if spec and spec.submodule_search_locations:
        candidates.append(Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin")
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True
            )
            candidates.append(Path(out.stdout.strip()))
    for candidate in candidates:
        postgres = candidate / "postgres"
        if postgres.is_file() and (candidate / "initdb").is_file():
            if need_world_access and not _world_usable(postgres):
                continue
            return candidate
    if need_world_access and candidates and (candidates[0] / "postgres").is_file():
        # Root, and the wheel sits where 'nobody' cannot reach (a checkout under /root):
        # a world-readable copy of pgserver's self-contained install, made once.
        return world_usable_copy(candidates[0].parent) / "bin"
    raise RuntimeError(
        "no PostgreSQL binaries found: install the 'pgserver' package or PostgreSQL's server "
        "package (initdb, pg_ctl)"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def world_usable_copy(install: Path) -> Path:
    """A copy of pgserver's ``install`` in the temp directory, readable and executable by
    everyone, made once and reused. The wheel's layout is kept (``pgserver/pginstall``
    beside ``pgserver.libs``): the binaries find their libraries through an rpath of
    ``$ORIGIN/../../../pgserver.libs``."""
    digest = hashlib.sha256(str(install.resolve()).encode()).hexdigest()[:12]
    target = Path(tempfile.gettempdir()) / f"broker-pginstall-v2-{digest}"  # v: copy layout
    copied_install = target / install.parent.name / install.name
    if (target / ".complete").exists():
        return copied_install
    staging = Path(tempfile.mkdtemp(prefix="broker-pginstall-staging-")) / "tree"
    shutil.copytree(install, staging / install.parent.name / install.name, symlinks=True)
    libs = install.parent.parent / f"{install.parent.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, staging / libs.name, symlinks=True)
    for path in [staging, *staging.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        executable = path.is_dir() or mode & stat.S_IXUSR
        path.chmod(
            mode | stat.S_IRGRP | stat.S_IROTH | (stat.S_IXGRP | stat.S_IXOTH if executable else 0)
        )
    (staging / ".complete").touch()
    with contextlib.suppress(OSError):  # another process made it first
        staging.rename(target)
    shutil.rmtree(staging.parent, ignore_errors=True)
    return copied_install


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedPostgres:
    def __init__(self, *, superuser_password: str | None = None, fsync: bool = False) -> None:
        """``fsync``: durable (survives ``pause()``); otherwise fast and lost on a crash."""
        self.user = "postgres"
        self.password = superuser_password or generate_password()
        self.host = "127.0.0.1"
        self.port = 0
        self._fsync = fsync
        self._root = Path(tempfile.mkdtemp(prefix="broker-pg-"))
        self._data = self._root / "data"
        self._run_as: pwd.struct_passwd | None = (
            pwd.getpwnam("nobody") if os.geteuid() == 0 else None
        )
        self._bin = find_bin_dir(need_world_access=self._run_as is not None)
        self._started = False

    @property
    def bin_dir(self) -> Path:
        """The binaries this cluster runs on (pg_dump of the same version is there)."""
        return self._bin

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        kwargs: dict[str, object] = {}
        if self._run_as is not None:
            kwargs = {"user": self._run_as.pw_uid, "group": self._run_as.pw_gid, "extra_groups": []}
        result = subprocess.run(
            [str(self._bin / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            cwd=self._root,
            check=False,
            **kwargs,  # type: ignore[call-overload]
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{args[0]} failed: {result.stderr.strip() or result.stdout.strip()}"
            )

    @classmethod
    def reap_orphans(cls) -> int:
        """Stop and remove embedded clusters whose owning process is gone (a dev server
        killed with SIGKILL cannot clean up after itself). Returns how many it removed."""
        reaped = 0
        for root in Path(tempfile.gettempdir()).glob("broker-pg-*"):
            try:
                owner = int((root / "owner.pid").read_text())
            except (OSError, ValueError):
                continue  # not ours, or still starting
            if _alive(owner):
                continue
            data = root / "data"
            if (data / "postmaster.pid").exists():
                bin_dir = find_bin_dir(need_world_access=os.geteuid() == 0)
                user = pwd.getpwnam("nobody") if os.geteuid() == 0 else None
                kwargs: dict[str, object] = (
                    {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
                )
                subprocess.run(
                    [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                    capture_output=True,
                    check=False,
                    **kwargs,  # type: ignore[call-overload]
                )
            shutil.rmtree(root, ignore_errors=True)
            reaped += 1
        return reaped

    def start(self) -> None:
        (self._root / "owner.pid").write_text(str(os.getpid()))
        pwfile = self._root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._run_as is not None:
            self._root.chmod(0o700)
            for path in (self._root, pwfile):
                os.chown(path, self._run_as.pw_uid, self._run_as.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self._data),
            "-U",
            self.user,
            "--auth=scram-sha-256",
            f"--pwfile={pwfile}",
            "-E",
            "UTF8",
            "--locale=C",
        )
        pwfile.unlink()
        for attempt in range(5):
            self.port = free_port()
            try:
                self._pg_ctl_start()
                break
            except RuntimeError:
                if attempt == 4:
                    raise
                time.sleep(0.2)
        self._started = True

    def _pg_ctl_start(self) -> None:
        options = (
            f"-c listen_addresses={self.host} -p {self.port} "
            f"-c unix_socket_directories={self._root} -c max_connections=300"
        )
        if not self._fsync:
            # Throwaway data: trade crash safety for speed. A cluster that must survive
            # pause() (an immediate stop) is created with fsync=True.
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        log = str(self._root / "log")
        self._run("pg_ctl", "-D", str(self._data), "-l", log, "-o", options, "-w", "start")

    def pause(self) -> None:
        """Stop the server abruptly (an outage), keeping its data and port for resume()."""
        self._run("pg_ctl", "-D", str(self._data), "-m", "immediate", "-w", "stop")

    def resume(self) -> None:
        self._pg_ctl_start()

    def stop(self) -> None:
        if self._started:
            with contextlib.suppress(RuntimeError):
                self._run("pg_ctl", "-D", str(self._data), "-m", "fast", "-w", "stop")
            self._started = False
        shutil.rmtree(self._root, ignore_errors=True)
